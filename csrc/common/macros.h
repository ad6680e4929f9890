// Small portability helpers shared by host and device code; no torch, no CUDA runtime.
#pragma once

#if defined(__CUDACC__)
#define LT_HOST_DEVICE __host__ __device__
#else
#define LT_HOST_DEVICE
#endif

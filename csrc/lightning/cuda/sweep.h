// Launching the decayed sweep (../sweep_params.h) on the GPU: one entry point that picks the
// compiled instantiation for the dtype and width of a / b.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "../sweep_params.h"

namespace lightning {

cudaError_t launch_sweep(const SweepParams& p, cudaStream_t stream);

// One explicit instantiation per (element type, width_ab bucket) lives in its own .cu so the
// build compiles them in parallel; `Elem` is float (exact FFMA path), __half or __nv_bfloat16.
template <typename Elem, int kWidthAB>
cudaError_t launch_sweep_for(const SweepParams& p, cudaStream_t stream);

}  // namespace lightning

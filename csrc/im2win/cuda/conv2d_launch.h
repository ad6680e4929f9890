// Host entry points of the im2win CUDA kernels (torch-free). The binding (conv2d.cpp)
// allocates `workspace` with at least the bytes the matching *_workspace_bytes call asks for.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>

#include "../conv2d_params.h"

namespace im2win {

size_t conv2d_fwd_workspace_bytes(const Conv2dParams& p);
cudaError_t conv2d_fwd_cuda(const Conv2dParams& p, void* workspace, cudaStream_t stream);

size_t conv2d_bwd_workspace_bytes(const Conv2dBwdParams& p);
cudaError_t conv2d_bwd_cuda(const Conv2dBwdParams& p, void* workspace, cudaStream_t stream);

cudaError_t im2win_cuda(const Im2winParams& p, cudaStream_t stream);

}  // namespace im2win

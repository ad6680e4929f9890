// Host entry points of the lightning CUDA kernels (torch-free); each returns the launch
// error, if any, and runs on `stream`.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "../attn_params.h"

namespace lightning {

// Scratch, in floats, that a call needs on the current device (sequence splitting when batch x
// heads is small; 0 otherwise): the caller allocates it and passes it in.
int64_t attn_fwd_cuda_workspace(const AttnParams& p);
int64_t attn_bwd_cuda_workspace(const AttnBwdParams& p);

cudaError_t attn_fwd_cuda(const AttnParams& p, float* workspace, cudaStream_t stream);
cudaError_t attn_bwd_cuda(const AttnBwdParams& p, float* workspace, cudaStream_t stream);
cudaError_t attn_decode_cuda(const AttnDecodeParams& p, cudaStream_t stream);

}  // namespace lightning

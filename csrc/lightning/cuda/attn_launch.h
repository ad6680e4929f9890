// Host entry points of the lightning CUDA kernels (torch-free); each returns the launch
// error, if any, and runs on `stream`.
#pragma once

#include <cuda_runtime_api.h>

#include "../attn_params.h"

namespace lightning {

cudaError_t attn_fwd_cuda(const AttnParams& p, cudaStream_t stream);
cudaError_t attn_bwd_cuda(const AttnBwdParams& p, cudaStream_t stream);
cudaError_t attn_decode_cuda(const AttnDecodeParams& p, cudaStream_t stream);

}  // namespace lightning

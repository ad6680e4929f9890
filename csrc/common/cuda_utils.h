// CUDA helpers for the binding files (compiled only WITH_CUDA). Only c10's light headers:
// ATen/cuda/CUDAContext.h pulls in cuSPARSE/cuBLAS headers that a bare toolkit may lack.
#pragma once

#include <c10/cuda/CUDAGraphsC10Utils.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/util/Exception.h>
#include <cuda_runtime_api.h>

namespace torch_utils {

inline cudaStream_t current_stream() { return c10::cuda::getCurrentCUDAStream().stream(); }

// Reading tensor values on the host synchronises, which a stream being captured into a CUDA
// graph must not do.
inline bool stream_is_capturing() {
  return c10::cuda::currentStreamCaptureStatusMayInitCtx() != c10::cuda::CaptureStatus::None;
}

inline void check_launch(cudaError_t err, const char* op) {
  TORCH_CHECK(err == cudaSuccess, op, ": CUDA kernel failed: ", cudaGetErrorString(err));
}

}  // namespace torch_utils

// Forward convolution: ForwardProblem (conv2d_problems.cuh) on the implicit GEMM, for every
// problem the channels-last kernels (conv2d_fwd_nhwc*.cu) do not take.
#include "conv2d_kernels.cuh"
#include "conv2d_problems.cuh"

namespace im2win {

cudaError_t conv2d_fwd_gemm(const Conv2dParams& p, GemmConfig config, cudaStream_t stream) {
  return dispatch_dtype(p.dtype, [&](auto type_tag) {
    using T = decltype(type_tag);
    return launch_implicit_gemm(make_forward_problem<T>(p), config, stream);
  });
}

}  // namespace im2win

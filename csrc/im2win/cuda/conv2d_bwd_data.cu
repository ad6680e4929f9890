// Input gradient: BwdDataProblem (conv2d_problems.cuh), a gather on the implicit GEMM, or
// the direct kernel (conv2d_bwd_data_direct.cu) for few channels per group.
#include "conv2d_kernels.cuh"
#include "conv2d_problems.cuh"

namespace im2win {

cudaError_t conv2d_bwd_data_gemm(const Conv2dBwdParams& b, cudaStream_t stream) {
  if (conv2d_bwd_data_direct_supported(b)) return conv2d_bwd_data_direct(b, stream);
  return dispatch_dtype(b.fwd.dtype, [&](auto type_tag) {
    using T = decltype(type_tag);
    const BwdDataProblem<T> problem = make_bwd_data_problem<T>(b);
    return launch_implicit_gemm(
        problem, choose_gemm_config(b.fwd.dtype, b.fwd.fp32_math, problem.M), stream);
  });
}

}  // namespace im2win

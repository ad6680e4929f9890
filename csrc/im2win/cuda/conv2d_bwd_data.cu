// Input gradient, in two of the forms the planner (conv2d_plan.cu) chooses among: a stride-1
// convolution as a forward convolution (conv2d_bwd_data_as_fwd, for the wgmma kernel),
// and BwdDataProblem (conv2d_problems.cuh), a gather on the implicit GEMM. The third is the
// direct kernel (conv2d_bwd_data_direct.cu) for few channels per group.
#include "conv2d_kernels.cuh"
#include "conv2d_problems.cuh"

namespace im2win {

bool conv2d_bwd_data_as_fwd(const Conv2dBwdParams& b, Conv2dParams& dgrad) {
  const Conv2dParams& p = b.fwd;
  if (p.groups != 1 || p.stride_h != 1 || p.stride_w != 1 ||
      b.grad_input == nullptr || int64_t(p.batch) * p.out_h * p.out_w == 0)
    return false;
  Conv2dParams t = p;
  t.in_channels = p.out_channels, t.in_h = p.out_h, t.in_w = p.out_w;
  t.out_channels = p.in_channels, t.out_h = p.in_h, t.out_w = p.in_w;
  t.pad_h = p.dilation_h * (p.kernel_h - 1) - p.pad_h;
  t.pad_w = p.dilation_w * (p.kernel_w - 1) - p.pad_w;
  if (t.pad_h < 0 || t.pad_w < 0) return false;
  t.input = b.grad_output, t.in_stride = b.grad_out_stride;
  // weight'[c][k][fh][fw] = weight[k][c][FH - 1 - fh][FW - 1 - fw]: a view with the first two
  // strides swapped and the tap strides negated, from the last tap.
  const NCHWStrides& w = p.w_stride;
  t.weight = static_cast<const unsigned char*>(p.weight) +
             ((p.kernel_h - 1) * w.h + (p.kernel_w - 1) * w.w) * element_bytes(p.dtype);
  t.w_stride = {w.c, w.n, -w.h, -w.w};
  t.bias = nullptr;
  t.output = b.grad_input, t.out_stride = b.grad_in_stride;
  dgrad = t;
  return true;
}

cudaError_t conv2d_bwd_data_gemm(const Conv2dBwdParams& b, GemmConfig config,
                                 cudaStream_t stream) {
  return dispatch_dtype(b.fwd.dtype, [&](auto type_tag) {
    using T = decltype(type_tag);
    return launch_implicit_gemm(make_bwd_data_problem<T>(b), config, stream);
  });
}

}  // namespace im2win

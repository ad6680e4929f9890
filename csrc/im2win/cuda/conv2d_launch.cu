// Public host entry points of the im2win convolution (conv2d_launch.h): each asks the
// planner (conv2d_plan.h) and carries out its plan, so the workspace query and the launch
// always agree.
#include "conv2d_kernels.cuh"
#include "conv2d_launch.h"
#include "conv2d_plan.h"

namespace im2win {
namespace {

cudaError_t run_fwd(const Conv2dParams& p, const FwdPlan& plan, void* workspace,
                    cudaStream_t stream) {
  switch (plan.kernel) {
    case FwdKernel::kNone: return cudaSuccess;
    case FwdKernel::kImplicitGemm: return conv2d_fwd_gemm(p, plan.gemm_config, stream);
    case FwdKernel::kNhwc16: return conv2d_fwd_nhwc(p, plan.tile_n, stream);
    case FwdKernel::kWgmma: return conv2d_fwd_wgmma(p, plan.tile_n, workspace, stream);
    default: return cudaErrorInvalidValue;
  }
}

cudaError_t run_bwd_data(const Conv2dBwdParams& b, const BwdPlan& plan, void* workspace,
                         cudaStream_t stream) {
  switch (plan.data) {
    case BwdDataKernel::kNone: return cudaSuccess;
    case BwdDataKernel::kAsFwd: return run_fwd(plan.data_as_fwd, plan.data_fwd, workspace, stream);
    case BwdDataKernel::kDirect: return conv2d_bwd_data_direct(b, stream);
    case BwdDataKernel::kImplicitGemm: return conv2d_bwd_data_gemm(b, plan.data_gemm_config, stream);
  }
  return cudaErrorInvalidValue;
}

cudaError_t run_bwd_weight(const Conv2dBwdParams& b, const BwdPlan& plan, void* workspace,
                           cudaStream_t stream) {
  const Conv2dParams& p = b.fwd;
  switch (plan.weight) {
    case BwdWeightKernel::kNone: return cudaSuccess;
    case BwdWeightKernel::kZero:
      return cudaMemsetAsync(b.grad_weight, 0,
                             size_t(p.out_channels) * (p.in_channels / p.groups) * p.kernel_h *
                                 p.kernel_w * element_bytes(p.dtype),
                             stream);
    case BwdWeightKernel::kImplicitGemm:
      return conv2d_bwd_weight_gemm(b, plan.weight_plan, workspace, stream);
  }
  return cudaErrorInvalidValue;
}

cudaError_t run_bwd_bias(const Conv2dBwdParams& b, const BwdPlan& plan, cudaStream_t stream) {
  switch (plan.bias) {
    case BwdBiasKernel::kNone: return cudaSuccess;
    case BwdBiasKernel::kZero:
      return cudaMemsetAsync(b.grad_bias, 0, size_t(b.fwd.out_channels) * element_bytes(b.fwd.dtype),
                             stream);
    case BwdBiasKernel::kReduce: return conv2d_bwd_bias(b, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace

size_t conv2d_fwd_workspace_bytes(const Conv2dParams& p) {
  return plan_conv2d_fwd(p, device_caps()).workspace_bytes;
}

cudaError_t conv2d_fwd_cuda(const Conv2dParams& p, void* workspace, cudaStream_t stream) {
  return run_fwd(p, plan_conv2d_fwd(p, device_caps()), workspace, stream);
}

size_t conv2d_bwd_workspace_bytes(const Conv2dBwdParams& b) {
  return plan_conv2d_bwd(b, device_caps()).workspace_bytes;
}

cudaError_t conv2d_bwd_cuda(const Conv2dBwdParams& b, void* workspace, cudaStream_t stream) {
  const BwdPlan plan = plan_conv2d_bwd(b, device_caps());
  if (!plan.supported) return cudaErrorInvalidValue;
  cudaError_t err = run_bwd_data(b, plan, workspace, stream);
  if (err == cudaSuccess) err = run_bwd_weight(b, plan, workspace, stream);
  if (err == cudaSuccess) err = run_bwd_bias(b, plan, stream);
  return err;
}

}  // namespace im2win

// The one place that decides, for a convolution and a pass, which kernel family runs, with
// which tile, and how much workspace it needs. The workspace query and the launch
// (conv2d_launch.cu) both follow the plan, so they can never disagree.
#pragma once

#include <cstddef>

#include "../conv2d_params.h"
#include "conv2d_problems.cuh"  // GemmConfig, WeightGradPlan

namespace im2win {

// What the current device can run. Asked once per device and cached: attribute queries
// only, no launch and no synchronisation, so an op call stays capturable in a CUDA graph.
struct DeviceCaps {
  bool wgmma = false;  // the binary has sm_90a code and the device runs it (compute 9.0)
  // The 16-bit forms of the wgmma forward: opt-in (IM2WIN_WGMMA_16BIT=1 in the environment)
  // until they have passed the CUDA tests on a Hopper GPU.
  bool wgmma_16bit = false;
};
DeviceCaps device_caps();

enum class FwdKernel {
  kUnsupported,   // sizes past the kernels' 32-bit index arithmetic, or an unknown dtype
  kNone,          // an empty output: nothing to launch
  kImplicitGemm,  // conv2d_fwd.cu: any layout, dtype and grouping
  kNhwc16,        // conv2d_fwd_nhwc.cu: fp16/bf16 channels_last, C % 8 == 0, one group
  kWgmma,         // conv2d_fwd_wgmma.cu: one group, on Hopper tensor cores
};

struct FwdPlan {
  FwdKernel kernel = FwdKernel::kUnsupported;
  GemmConfig gemm_config = GemmConfig::kMma;  // kImplicitGemm
  int tile_n = 0;                             // kNhwc16, kWgmma: output channels a block
  size_t workspace_bytes = 0;
};

enum class BwdDataKernel {
  kNone,          // grad_input not wanted, or empty
  kAsFwd,         // a forward convolution (stride 1, one group): data_fwd on data_as_fwd
  kDirect,        // conv2d_bwd_data_direct.cu: at most 4 input channels per group
  kImplicitGemm,  // conv2d_bwd_data.cu: a gather on the implicit GEMM
};
enum class BwdWeightKernel { kNone, kZero, kImplicitGemm };  // kZero: no output positions
enum class BwdBiasKernel { kNone, kZero, kReduce };

struct BwdPlan {
  bool supported = false;
  BwdDataKernel data = BwdDataKernel::kNone;
  Conv2dParams data_as_fwd{};  // kAsFwd: grad_input = this forward convolution's output
  FwdPlan data_fwd;            // kAsFwd: its plan
  GemmConfig data_gemm_config = GemmConfig::kMma;  // kImplicitGemm
  BwdWeightKernel weight = BwdWeightKernel::kNone;
  WeightGradPlan weight_plan;  // kImplicitGemm: split reduction over output positions
  BwdBiasKernel bias = BwdBiasKernel::kNone;
  // The input and the weight gradient run one after the other and share the workspace.
  size_t workspace_bytes = 0;
};

FwdPlan plan_conv2d_fwd(const Conv2dParams& p, const DeviceCaps& caps);
BwdPlan plan_conv2d_bwd(const Conv2dBwdParams& b, const DeviceCaps& caps);

}  // namespace im2win

// Host-only test of the kernel planner (conv2d_plan.h), needs no GPU: which family, tile and
// workspace each pass gets, with and without Hopper tensor cores, and that the public
// workspace queries follow the same plan. Which results the families compute is the job of
// conv2d_cuda_test (on a GPU) and conv2d_gather_host_test.
#include <algorithm>
#include <cstdio>
#include <string>

#include "../conv2d_kernels.cuh"
#include "../conv2d_launch.h"
#include "../conv2d_plan.h"
#include "conv2d_test_utils.cuh"

namespace im2win_test {
namespace {

using im2win::BwdBiasKernel;
using im2win::BwdDataKernel;
using im2win::BwdPlan;
using im2win::BwdWeightKernel;
using im2win::DeviceCaps;
using im2win::DType;
using im2win::Fp32Math;
using im2win::FwdKernel;
using im2win::FwdPlan;

int g_failures = 0;

void expect(bool ok, const std::string& what) {
  std::printf("  %-4s %s\n", ok ? "PASS" : "FAIL", what.c_str());
  g_failures += ok ? 0 : 1;
}

// Sizes and strides of a case, pointers at 16-byte aligned dummies (nothing is read).
Conv2dParams params(const ConvCase& cs, DType dtype, Fp32Math math = Fp32Math::kExact) {
  Conv2dParams p = conv_params(cs, dtype, math);
  alignas(16) static char dummy[16];
  p.input = p.weight = dummy;
  p.output = dummy;
  p.bias = cs.bias ? dummy : nullptr;
  return p;
}

Conv2dBwdParams bwd_params(const ConvCase& cs, DType dtype, bool grad_input = true) {
  Conv2dBwdParams b{};
  b.fwd = params(cs, dtype);
  b.grad_output = b.fwd.output;
  b.grad_out_stride = b.fwd.out_stride;
  b.grad_input = grad_input ? b.fwd.output : nullptr;
  b.grad_in_stride = b.fwd.in_stride;
  b.grad_weight = b.fwd.output;
  b.grad_bias = cs.bias ? b.fwd.output : nullptr;
  return b;
}

// Hopper with the 16-bit wgmma forms off (the default) and on, and any other GPU.
const DeviceCaps kHopper{true, false}, kHopper16{true, true}, kOther{false, false};

//                                  N   C   H   W    K  FH FW sh sw ph pw dh dw  g  bias  NHWC
const ConvCase k3x3 =     {"3x3",   2, 64, 14, 14, 128, 3, 3, 1, 1, 1, 1, 1, 1, 1, true, false};
const ConvCase k3x3Cl =   {"3x3",   2, 64, 14, 14, 128, 3, 3, 1, 1, 1, 1, 1, 1, 1, true, true};
const ConvCase kNarrow =  {"K64",   2, 64, 14, 14,  64, 3, 3, 1, 1, 1, 1, 1, 1, 1, false, true};
const ConvCase kFewSlices = {"C3",  2,  3, 20, 20,  64, 3, 3, 1, 1, 0, 0, 1, 1, 1, true, false};
const ConvCase kGroups =  {"g2",    2, 64, 14, 14, 128, 3, 3, 1, 1, 1, 1, 1, 1, 2, true, false};
const ConvCase kStem =    {"s2 C3", 2,  3, 32, 32,  64, 7, 7, 2, 2, 3, 3, 1, 1, 1, false, true};
const ConvCase kEmpty =   {"N0",    0,  8,  6,  6,  40, 3, 3, 1, 1, 1, 1, 1, 1, 1, true, false};

void test_forward() {
  std::printf("forward\n");
  Conv2dParams p = params(k3x3, DType::kFloat32);
  FwdPlan plan = im2win::plan_conv2d_fwd(p, kHopper);
  expect(plan.kernel == FwdKernel::kWgmma && plan.tile_n == 128 &&
             plan.workspace_bytes == im2win::conv2d_fwd_wgmma_workspace_bytes(p) &&
             plan.workspace_bytes > 0,
         "fp32 NCHW, one group, on Hopper: wgmma, 128 channels, its copies' workspace");
  plan = im2win::plan_conv2d_fwd(p, kOther);
  expect(plan.kernel == FwdKernel::kImplicitGemm && plan.workspace_bytes == 0 &&
             plan.gemm_config == im2win::choose_gemm_config(p.dtype, p.fp32_math, 128),
         "the same elsewhere: implicit GEMM, no workspace");
  p = params(kNarrow, DType::kFloat32, Fp32Math::kTF32);
  plan = im2win::plan_conv2d_fwd(p, kHopper);
  expect(plan.kernel == FwdKernel::kWgmma && plan.tile_n == 64, "K = 64: 64-wide tile");
  plan = im2win::plan_conv2d_fwd(params(kFewSlices, DType::kFloat32), kHopper);
  expect(plan.kernel == FwdKernel::kImplicitGemm, "C = 3, 3 x 3 (3 slices): implicit GEMM");
  plan = im2win::plan_conv2d_fwd(params(kGroups, DType::kFloat32), kHopper);
  expect(plan.kernel == FwdKernel::kImplicitGemm, "two groups: implicit GEMM");

  for (DType dtype : {DType::kFloat16, DType::kBFloat16}) {
    const std::string name = dtype == DType::kFloat16 ? "fp16" : "bf16";
    plan = im2win::plan_conv2d_fwd(params(k3x3Cl, dtype), kOther);
    expect(plan.kernel == FwdKernel::kNhwc16 && plan.tile_n == 128 && plan.workspace_bytes == 0,
           name + " channels_last, C % 8 == 0: the NHWC kernel");
    plan = im2win::plan_conv2d_fwd(params(kNarrow, dtype), kHopper);
    expect(plan.kernel == FwdKernel::kNhwc16 && plan.tile_n == 64, name + ", K = 64: 64 wide");
    plan = im2win::plan_conv2d_fwd(params(k3x3, dtype), kHopper);
    expect(plan.kernel == FwdKernel::kImplicitGemm, name + " NCHW: implicit GEMM");
    plan = im2win::plan_conv2d_fwd(params(kStem, dtype), kHopper);
    expect(plan.kernel == FwdKernel::kImplicitGemm, name + " channels_last, C = 3: implicit GEMM");
  }

  for (DType dtype : {DType::kFloat16, DType::kBFloat16}) {
    const std::string name = dtype == DType::kFloat16 ? "fp16" : "bf16";
    plan = im2win::plan_conv2d_fwd(params(k3x3Cl, dtype), kHopper16);
    expect(plan.kernel == FwdKernel::kWgmma && plan.tile_n == 128 && plan.workspace_bytes == 0,
           name + " channels_last with 16-bit wgmma: wgmma, no copies");
    const Conv2dParams nchw = params(k3x3, dtype);
    plan = im2win::plan_conv2d_fwd(nchw, kHopper16);
    // input 2 x 64 x 14 x 14 and weight 128 x 64 x 3 x 3 values, 2 bytes each, 256-aligned
    expect(plan.kernel == FwdKernel::kWgmma && plan.workspace_bytes == 50176 + 147456 &&
               plan.workspace_bytes == im2win::conv2d_fwd_wgmma_workspace_bytes(nchw),
           name + " NCHW with 16-bit wgmma: channels-last copies of input and weight");
    plan = im2win::plan_conv2d_fwd(params(kStem, dtype), kHopper16);
    expect(plan.kernel == FwdKernel::kWgmma, name + " 7 x 7, C = 3 (padded to 8, 8 taps a slice)");
    plan = im2win::plan_conv2d_fwd(params(kFewSlices, dtype), kHopper16);
    expect(plan.kernel == FwdKernel::kImplicitGemm, name + " C = 3, 3 x 3 (3 slices): implicit GEMM");
  }

  plan = im2win::plan_conv2d_fwd(params(kEmpty, DType::kFloat32), kHopper);
  expect(plan.kernel == FwdKernel::kNone && plan.workspace_bytes == 0, "empty batch: nothing");
  plan = im2win::plan_conv2d_fwd(params(k3x3, DType::kFloat64), kHopper);
  expect(plan.kernel == FwdKernel::kUnsupported, "fp64: unsupported");
  ConvCase huge = k3x3;
  huge.batch = 1 << 24;  // N * Ho * Wo past the 32-bit index range
  plan = im2win::plan_conv2d_fwd(params(huge, DType::kFloat32), kHopper);
  expect(plan.kernel == FwdKernel::kUnsupported, "2^24 x 14 x 14 positions: unsupported");
}

void test_backward() {
  std::printf("backward\n");
  Conv2dBwdParams b = bwd_params(k3x3, DType::kFloat32);
  BwdPlan plan = im2win::plan_conv2d_bwd(b, kHopper);
  const im2win::WeightGradPlan weight_plan(b.fwd);
  const Conv2dParams& t = plan.data_as_fwd;
  expect(plan.supported && plan.data == BwdDataKernel::kAsFwd &&
             plan.data_fwd.kernel == FwdKernel::kWgmma,
         "fp32 stride 1 on Hopper: grad_input as a forward convolution on wgmma");
  expect(t.in_channels == 128 && t.out_channels == 64 && t.in_h == 14 && t.out_h == 14 &&
             t.pad_h == 1 && t.pad_w == 1 && t.input == b.grad_output &&
             t.output == b.grad_input && t.bias == nullptr && t.w_stride.h < 0 &&
             t.w_stride.n == b.fwd.w_stride.c && t.w_stride.c == b.fwd.w_stride.n,
         "  its convolution: channels swapped, taps flipped, padding d (F - 1) - p");
  expect(plan.weight == BwdWeightKernel::kImplicitGemm &&
             plan.weight_plan.splits == weight_plan.splits &&
             plan.weight_plan.r_chunk == weight_plan.r_chunk && plan.bias == BwdBiasKernel::kReduce,
         "  weight gradient split as WeightGradPlan says, bias reduced");
  const size_t weight_bytes = weight_plan.workspace_bytes(b.fwd);
  expect(plan.workspace_bytes == std::max(plan.data_fwd.workspace_bytes, weight_bytes) &&
             plan.workspace_bytes > 0,
         "  one workspace, the larger of the two gradients' needs");

  plan = im2win::plan_conv2d_bwd(bwd_params(k3x3Cl, DType::kBFloat16), kHopper);
  expect(plan.data == BwdDataKernel::kImplicitGemm, "bf16 stride 1, 16-bit wgmma off: gather");
  plan = im2win::plan_conv2d_bwd(bwd_params(k3x3Cl, DType::kBFloat16), kHopper16);
  expect(plan.data == BwdDataKernel::kAsFwd && plan.data_fwd.kernel == FwdKernel::kWgmma &&
             plan.data_fwd.workspace_bytes > 0,
         "bf16 stride 1, 16-bit wgmma on: a forward convolution (flipped weight copied)");

  plan = im2win::plan_conv2d_bwd(b, kOther);
  expect(plan.data == BwdDataKernel::kImplicitGemm && plan.workspace_bytes == weight_bytes,
         "the same elsewhere: the gather on the implicit GEMM, the weight's workspace");
  plan = im2win::plan_conv2d_bwd(bwd_params(kStem, DType::kBFloat16), kHopper);
  expect(plan.data == BwdDataKernel::kDirect && plan.bias == BwdBiasKernel::kNone,
         "3 input channels, stride 2: the direct kernel; no bias, no bias gradient");
  plan = im2win::plan_conv2d_bwd(bwd_params(kGroups, DType::kFloat32), kHopper);
  expect(plan.data == BwdDataKernel::kImplicitGemm, "two groups: implicit GEMM");
  plan = im2win::plan_conv2d_bwd(bwd_params(k3x3, DType::kFloat32, false), kHopper);
  expect(plan.data == BwdDataKernel::kNone && plan.workspace_bytes == weight_bytes,
         "no grad_input wanted: none planned");
  plan = im2win::plan_conv2d_bwd(bwd_params(kEmpty, DType::kFloat32), kHopper);
  expect(plan.supported && plan.data == BwdDataKernel::kNone &&
             plan.weight == BwdWeightKernel::kZero && plan.bias == BwdBiasKernel::kZero &&
             plan.workspace_bytes == 0,
         "empty batch: zero weight and bias gradients, no workspace");
  plan = im2win::plan_conv2d_bwd(bwd_params(k3x3, DType::kFloat64), kHopper);
  expect(!plan.supported, "fp64: unsupported");
}

// The public queries ask the device (none here, or the GPU of a GPU machine) and must follow
// the plan for that device.
void test_public_queries() {
  std::printf("public workspace queries\n");
  const DeviceCaps caps = im2win::device_caps();
  bool same = true;
  for (const ConvCase& cs : conv_cases())
    for (DType dtype : {DType::kFloat32, DType::kFloat16, DType::kBFloat16}) {
      const Conv2dParams p = params(cs, dtype);
      same = same && im2win::conv2d_fwd_workspace_bytes(p) ==
                         im2win::plan_conv2d_fwd(p, caps).workspace_bytes;
      const Conv2dBwdParams b = bwd_params(cs, dtype);
      same = same && im2win::conv2d_bwd_workspace_bytes(b) ==
                         im2win::plan_conv2d_bwd(b, caps).workspace_bytes;
    }
  expect(same, std::string("every test-grid case equals its plan (wgmma ") +
                   (caps.wgmma ? "available)" : "not available)"));
}

}  // namespace
}  // namespace im2win_test

int main() {
  im2win_test::test_forward();
  im2win_test::test_backward();
  im2win_test::test_public_queries();
  std::printf("%s: %d failure(s)\n", im2win_test::g_failures ? "FAILED" : "OK",
              im2win_test::g_failures);
  return im2win_test::g_failures ? 1 : 0;
}

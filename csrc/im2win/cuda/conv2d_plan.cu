// The kernel planner (conv2d_plan.h): which family, tile and workspace for each pass.
#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <cstring>

#include "conv2d_kernels.cuh"
#include "conv2d_plan.h"

namespace im2win {
namespace {

// GEMM extents and offsets inside one sample are ints; the headroom covers a tile's overrun
// past the end of a range.
constexpr int64_t kMaxIndex = common::kMaxIntIndex;
constexpr int kMaxGroups = common::kMaxGridYZ;  // gridDim.z

bool fits(int64_t v) { return v >= 0 && v <= kMaxIndex; }

// Dtype, groups, GEMM extents, the weight, and the input's in-sample offsets.
bool shape_supported(const Conv2dParams& p) {
  if (p.dtype != DType::kFloat32 && p.dtype != DType::kFloat16 && p.dtype != DType::kBFloat16)
    return false;
  if (p.groups <= 0 || p.groups > kMaxGroups || p.in_channels % p.groups != 0 ||
      p.out_channels % p.groups != 0)
    return false;
  const int64_t c_per_group = p.in_channels / p.groups, k_per_group = p.out_channels / p.groups;
  const int64_t taps = int64_t(p.kernel_h) * p.kernel_w;
  return fits(int64_t(p.batch) * p.out_h * p.out_w) && fits(int64_t(p.batch) * p.in_h * p.in_w) &&
         fits(c_per_group * taps) && fits(k_per_group * taps) &&
         fits(p.out_channels * c_per_group * taps) &&
         fits(max_offset_in_sample(p.in_stride, p.in_channels, p.in_h, p.in_w));
}

// The forward's output (fwd.output, fwd.out_stride) plays no part in the backward.
bool bwd_supported(const Conv2dBwdParams& b) {
  const Conv2dParams& p = b.fwd;
  return shape_supported(p) &&
         fits(max_offset_in_sample(b.grad_out_stride, p.out_channels, p.out_h, p.out_w)) &&
         fits(max_offset_in_sample(b.grad_in_stride, p.in_channels, p.in_h, p.in_w));
}

int64_t output_positions(const Conv2dParams& p) { return int64_t(p.batch) * p.out_h * p.out_w; }

// 64 output channels or fewer: a 64-wide tile wastes none of its columns on them.
int channel_tile(const Conv2dParams& p) { return p.out_channels <= 64 ? 64 : 128; }

bool wgmma_takes(const Conv2dParams& p, const DeviceCaps& caps) {
  const bool dtype_ok = p.dtype == DType::kFloat32 ? caps.wgmma : caps.wgmma && caps.wgmma_16bit;
  return dtype_ok && conv2d_fwd_wgmma_supported(p);
}

// The forward's kernel for a problem the shape checks have passed.
FwdPlan plan_fwd_kernel(const Conv2dParams& p, const DeviceCaps& caps) {
  FwdPlan plan;
  if (output_positions(p) == 0 || p.out_channels == 0) {
    plan.kernel = FwdKernel::kNone;
  } else if (wgmma_takes(p, caps)) {
    plan.kernel = FwdKernel::kWgmma;
    plan.tile_n = channel_tile(p);
    plan.workspace_bytes = conv2d_fwd_wgmma_workspace_bytes(p);
  } else if (conv2d_fwd_nhwc_supported(p)) {
    plan.kernel = FwdKernel::kNhwc16;
    plan.tile_n = channel_tile(p);
  } else {
    plan.kernel = FwdKernel::kImplicitGemm;
    plan.gemm_config = choose_gemm_config(p.dtype, p.fp32_math, p.out_channels / p.groups);
  }
  return plan;
}

#ifdef IM2WIN_HAS_SM90A
constexpr bool kBuiltForSm90a = true;  // set by the build when the arch list has 9.0a
#else
constexpr bool kBuiltForSm90a = false;
#endif

constexpr int kMaxDevices = 64;
std::atomic<int> g_wgmma_by_device[kMaxDevices];  // 0 unknown, 1 no, 2 yes

bool wgmma_16bit_enabled() {
  static const bool enabled = [] {
    const char* v = std::getenv("IM2WIN_WGMMA_16BIT");
    return v != nullptr && std::strcmp(v, "1") == 0;
  }();
  return enabled;
}

}  // namespace

// An sm_90a binary runs on compute capability 9.0 exactly, and the driver prefers it there
// over any PTX; on every other device the kernels were compiled without wgmma.
DeviceCaps device_caps() {
  int device = 0;
  if (cudaGetDevice(&device) != cudaSuccess || device < 0 || device >= kMaxDevices) return {};
  int known = g_wgmma_by_device[device].load(std::memory_order_relaxed);
  if (known == 0) {
    int major = 0, minor = 0;
    const bool ok =
        cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device) == cudaSuccess &&
        cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device) == cudaSuccess;
    known = ok && kBuiltForSm90a && major == 9 && minor == 0 ? 2 : 1;
    g_wgmma_by_device[device].store(known, std::memory_order_relaxed);
  }
  return {known == 2, known == 2 && wgmma_16bit_enabled()};
}

FwdPlan plan_conv2d_fwd(const Conv2dParams& p, const DeviceCaps& caps) {
  const bool supported = shape_supported(p) &&
                         fits(max_offset_in_sample(p.out_stride, p.out_channels, p.out_h, p.out_w));
  return supported ? plan_fwd_kernel(p, caps) : FwdPlan{};
}

BwdPlan plan_conv2d_bwd(const Conv2dBwdParams& b, const DeviceCaps& caps) {
  BwdPlan plan;
  if (!bwd_supported(b)) return plan;
  plan.supported = true;
  const Conv2dParams& p = b.fwd;
  const bool no_positions = output_positions(p) == 0;  // every gradient sum is empty

  if (b.grad_input != nullptr && int64_t(p.batch) * p.in_h * p.in_w > 0) {
    Conv2dParams t;
    FwdPlan as_fwd;
    if (!no_positions && conv2d_bwd_data_as_fwd(b, t)) as_fwd = plan_conv2d_fwd(t, caps);
    if (as_fwd.kernel == FwdKernel::kWgmma) {
      plan.data = BwdDataKernel::kAsFwd;
      plan.data_as_fwd = t;
      plan.data_fwd = as_fwd;
    } else if (conv2d_bwd_data_direct_supported(b)) {
      plan.data = BwdDataKernel::kDirect;
    } else {
      plan.data = BwdDataKernel::kImplicitGemm;
      plan.data_gemm_config = choose_gemm_config(p.dtype, p.fp32_math, p.in_channels / p.groups);
    }
  }
  if (b.grad_weight != nullptr) {
    plan.weight = no_positions ? BwdWeightKernel::kZero : BwdWeightKernel::kImplicitGemm;
    if (!no_positions) plan.weight_plan = WeightGradPlan(p);
  }
  if (b.grad_bias != nullptr && p.out_channels > 0)
    plan.bias = no_positions ? BwdBiasKernel::kZero : BwdBiasKernel::kReduce;

  const size_t weight_bytes = plan.weight == BwdWeightKernel::kImplicitGemm
                                  ? plan.weight_plan.workspace_bytes(p) : 0;
  plan.workspace_bytes = std::max(plan.data_fwd.workspace_bytes, weight_bytes);
  return plan;
}

}  // namespace im2win

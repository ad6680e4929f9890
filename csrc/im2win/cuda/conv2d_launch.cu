// Public host entry points of the im2win convolution (conv2d_launch.h): check that the
// kernels' 32-bit index arithmetic covers the problem, handle empty problems, and call the
// per-family launchers (conv2d_kernels.cuh).
#include <algorithm>
#include <cstdint>

#include "conv2d_common.cuh"
#include "conv2d_kernels.cuh"
#include "conv2d_launch.h"

namespace im2win {
namespace {

// GEMM extents and offsets inside one sample are ints; the headroom covers a tile's overrun
// past the end of a range.
constexpr int64_t kMaxIndex = common::kMaxIntIndex;
constexpr int kMaxGroups = common::kMaxGridYZ;  // gridDim.z

bool fits(int64_t v) { return v >= 0 && v <= kMaxIndex; }

size_t element_size(DType dtype) { return dtype == DType::kFloat32 ? 4 : 2; }

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

bool supported(const Conv2dParams& p) {
  return shape_supported(p) &&
         fits(max_offset_in_sample(p.out_stride, p.out_channels, p.out_h, p.out_w));
}

// The forward's output (fwd.output, fwd.out_stride) plays no part in the backward.
bool supported(const Conv2dBwdParams& b) {
  const Conv2dParams& p = b.fwd;
  return shape_supported(p) &&
         fits(max_offset_in_sample(b.grad_out_stride, p.out_channels, p.out_h, p.out_w)) &&
         fits(max_offset_in_sample(b.grad_in_stride, p.in_channels, p.in_h, p.in_w));
}

int64_t output_positions(const Conv2dParams& p) { return int64_t(p.batch) * p.out_h * p.out_w; }

}  // namespace

// Windows stay on chip; only the fp32 wgmma kernel may want channels-last copies of NCHW
// tensors.
size_t conv2d_fwd_workspace_bytes(const Conv2dParams& p) {
  if (!supported(p) || output_positions(p) == 0 || p.out_channels == 0) return 0;
  return conv2d_fwd_nhwc_fp32_supported(p) ? conv2d_fwd_nhwc_fp32_workspace_bytes(p) : 0;
}

cudaError_t conv2d_fwd_cuda(const Conv2dParams& p, void* workspace, cudaStream_t stream) {
  if (!supported(p)) return cudaErrorInvalidValue;
  if (output_positions(p) == 0 || p.out_channels == 0) return cudaSuccess;
  if (conv2d_fwd_nhwc_fp32_supported(p)) return conv2d_fwd_nhwc_fp32(p, workspace, stream);
  if (conv2d_fwd_nhwc_supported(p)) return conv2d_fwd_nhwc(p, stream);
  return conv2d_fwd_gemm(p, stream);
}

// The input gradient and the weight gradient run one after the other: they share it.
size_t conv2d_bwd_workspace_bytes(const Conv2dBwdParams& b) {
  if (!supported(b) || output_positions(b.fwd) == 0) return 0;
  Conv2dParams dgrad;
  const size_t dgrad_bytes =
      conv2d_bwd_data_as_fwd(b, dgrad) ? conv2d_fwd_nhwc_fp32_workspace_bytes(dgrad) : 0;
  return std::max(dgrad_bytes, conv2d_bwd_weight_workspace_bytes(b));
}

cudaError_t conv2d_bwd_cuda(const Conv2dBwdParams& b, void* workspace, cudaStream_t stream) {
  const Conv2dParams& p = b.fwd;
  if (!supported(b)) return cudaErrorInvalidValue;
  const bool no_positions = output_positions(p) == 0;  // every gradient sum is empty
  cudaError_t err = cudaSuccess;
  Conv2dParams dgrad;
  if (b.grad_input != nullptr && int64_t(p.batch) * p.in_h * p.in_w > 0)
    err = conv2d_bwd_data_as_fwd(b, dgrad) ? conv2d_fwd_nhwc_fp32(dgrad, workspace, stream)
                                           : conv2d_bwd_data_gemm(b, stream);
  if (err == cudaSuccess && b.grad_weight != nullptr) {
    const size_t weight_bytes = size_t(p.out_channels) * (p.in_channels / p.groups) *
                                p.kernel_h * p.kernel_w * element_size(p.dtype);
    err = no_positions ? cudaMemsetAsync(b.grad_weight, 0, weight_bytes, stream)
                       : conv2d_bwd_weight_gemm(b, workspace, stream);
  }
  if (err == cudaSuccess && b.grad_bias != nullptr && p.out_channels > 0) {
    const size_t bias_bytes = size_t(p.out_channels) * element_size(p.dtype);
    err = no_positions ? cudaMemsetAsync(b.grad_bias, 0, bias_bytes, stream)
                       : conv2d_bwd_bias(b, stream);
  }
  return err;
}

}  // namespace im2win

// Torch-free description of one im2win::conv2d call, shared by the CPU and CUDA kernels.
//
// Tensors are addressed through strides so NCHW and channels_last (NHWC) need no copy:
// input[n][c][h][w] = input + n*in_stride.n + c*in_stride.c + h*in_stride.h + w*in_stride.w.
// The weight (K, C/groups, FH, FW) likewise through w_stride: contiguous or channels_last on
// CUDA, contiguous on the CPU.
#pragma once

#include <cstdint>

#include "../common/dtype.h"
#include "../common/limits.h"

namespace im2win {

using common::DType;

// Which arithmetic the GEMM may use for fp32 data: exact fp32 (FFMA or 3xTF32), or TF32
// tensor cores (torch.backends.cudnn.allow_tf32).
enum class Fp32Math { kExact, kTF32 };

struct NCHWStrides {
  int64_t n, c, h, w;  // in elements
};

struct Conv2dParams {
  DType dtype;
  Fp32Math fp32_math;
  int batch, in_channels, in_h, in_w;   // N, C, H, W
  int out_channels, kernel_h, kernel_w;  // K, FH, FW
  int out_h, out_w;                      // Ho, Wo
  int stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w;
  int groups;

  const void* input;   // (N, C, H, W) via in_stride
  const void* weight;  // (K, C/groups, FH, FW) via w_stride
  const void* bias;    // (K,) or nullptr
  void* output;        // (N, K, Ho, Wo) via out_stride
  NCHWStrides in_stride, out_stride, w_stride;
};

// Backward: grad_output (laid out like output) in; grad_input (laid out like input),
// grad_weight (contiguous, whatever the weight's layout) and grad_bias out, each nullptr when not wanted.
struct Conv2dBwdParams {
  Conv2dParams fwd;  // fwd.output unused
  const void* grad_output;
  NCHWStrides grad_out_stride;
  void* grad_input;
  NCHWStrides grad_in_stride;
  void* grad_weight;
  void* grad_bias;
};

// The window tensor Ihat[n][c][oh][w * FH + fh] = I[n][c][oh*s_h + fh*dil_h - p_h][w - p_w]
// (zero outside), w over the padded width Wp = W + 2 p_w; contiguous.
struct Im2winParams {
  DType dtype;
  int batch, channels, in_h, in_w, kernel_h, out_h, padded_w;
  int stride_h, pad_h, pad_w, dilation_h;
  const void* input;
  NCHWStrides in_stride;
  void* output;  // (N, C, Ho, Wp * FH)
};

}  // namespace im2win

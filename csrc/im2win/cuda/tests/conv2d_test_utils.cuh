// Shared by the im2win CUDA tests (no torch): the grid of convolution cases, a naive fp64
// reference convolution with its three gradients, strided packing of NCHW / NHWC tensors,
// and the relative-error check ||out - ref|| / ||ref|| (NaN never passes).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include "../../conv2d_params.h"
#include "../conv2d_common.cuh"

namespace im2win_test {

using im2win::Conv2dBwdParams;
using im2win::Conv2dParams;
using im2win::NCHWStrides;

struct ConvCase {
  const char* name;
  int batch, channels, in_h, in_w, out_channels, kernel_h, kernel_w;
  int stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w, groups;
  bool bias, channels_last;

  int out_h() const { return (in_h + 2 * pad_h - dilation_h * (kernel_h - 1) - 1) / stride_h + 1; }
  int out_w() const { return (in_w + 2 * pad_w - dilation_w * (kernel_w - 1) - 1) / stride_w + 1; }
  int c_per_group() const { return channels / groups; }
  int k_per_group() const { return out_channels / groups; }
  std::string describe() const {
    char buf[256];
    std::snprintf(buf, sizeof buf, "%s: N%d C%d %dx%d K%d %dx%d s%d,%d p%d,%d d%d,%d g%d%s%s",
                  name, batch, channels, in_h, in_w, out_channels, kernel_h, kernel_w, stride_h,
                  stride_w, pad_h, pad_w, dilation_h, dilation_w, groups, bias ? " bias" : "",
                  channels_last ? " NHWC" : "");
    return buf;
  }
};

// The grid: stride 1..4, padding, dilation, groups and depthwise, C < 8, K and C*FH*FW and
// N*Ho*Wo not multiples of any tile, Ho = 1, batch 1, 1x1 and 11x11, NCHW and NHWC, and
// sizes that reach every kernel configuration (M <= 32, M > 128, split reductions).
inline std::vector<ConvCase> conv_cases() {
  //        name               N   C   H   W    K  FH FW sh sw ph pw dh dw  g  bias   NHWC
  return {
      {"3x3 basic",           2, 40, 13, 13,  72, 3, 3, 1, 1, 1, 1, 1, 1, 1, true, false},
      {"3x3 basic",           2, 40, 13, 13,  72, 3, 3, 1, 1, 1, 1, 1, 1, 1, true, true},
      {"small K",             2, 16, 12, 12,  32, 3, 3, 1, 1, 1, 1, 1, 1, 1, false, false},
      {"K tail over 128",     2, 10,  9, 11, 130, 3, 3, 1, 1, 1, 1, 1, 1, 1, true, false},
      {"K tail over 128",     1, 10,  9, 11, 130, 3, 3, 1, 1, 1, 1, 1, 1, 1, true, true},
      {"11x11 s4 C3",         1,  3, 51, 51,  48, 11, 11, 4, 4, 2, 2, 1, 1, 1, true, false},
      {"11x11 s4 C3",         2,  3, 47, 47,  40, 11, 11, 4, 4, 0, 0, 1, 1, 1, false, true},
      {"7x7 s2 stem",         2,  3, 32, 32,  64, 7, 7, 2, 2, 3, 3, 1, 1, 1, false, true},
      {"1x1",                 2, 64,  9,  9,  48, 1, 1, 1, 1, 0, 0, 1, 1, 1, true, false},
      {"1x1 s2",              2, 72,  9,  8, 136, 1, 1, 2, 2, 0, 0, 1, 1, 1, false, true},
      {"dilation 2",          2,  8, 15, 15,  36, 3, 3, 1, 1, 2, 2, 2, 2, 1, true, false},
      {"dilation 3,2 NHWC",   1, 12, 16, 14,  40, 3, 3, 1, 2, 3, 2, 3, 2, 1, false, true},
      {"groups 4",            2, 64, 10, 10, 128, 3, 3, 1, 1, 1, 1, 1, 1, 4, true, false},
      {"groups 2 wide",       2, 48,  9,  9, 144, 3, 3, 1, 1, 1, 1, 1, 1, 2, true, true},
      {"depthwise",           2, 24, 14, 14,  24, 3, 3, 1, 1, 1, 1, 1, 1, 24, true, false},
      {"depthwise s2",        2, 24, 15, 15,  24, 3, 3, 2, 2, 1, 1, 1, 1, 24, false, true},
      {"depthwise x2",        1, 16, 11, 11,  32, 5, 5, 1, 1, 2, 2, 1, 1, 16, true, false},
      {"stride 3,2 rect",     2,  6, 20, 17,  40, 3, 5, 3, 2, 1, 2, 1, 1, 1, true, false},
      {"Ho = 1",              2, 20,  5,  9,  44, 5, 3, 1, 1, 0, 1, 1, 1, 1, true, false},
      {"Ho = Wo = 1",         3, 20,  7,  7,  40, 7, 7, 1, 1, 0, 0, 1, 1, 1, true, true},
      {"C = 1",               2,  1, 16, 16,  33, 3, 3, 1, 1, 1, 1, 1, 1, 1, true, false},
      {"patchify 4x4 s4",     1,  4, 17, 17,   8, 4, 4, 4, 4, 0, 0, 1, 1, 1, true, false},
      {"2x1 kernel",          2,  5,  8,  6,  36, 2, 1, 1, 1, 0, 0, 1, 1, 1, false, false},
      {"long reduction",      4, 16, 32, 32,  64, 3, 3, 1, 1, 1, 1, 1, 1, 1, true, false},
      {"long reduction",      4, 16, 32, 32,  64, 3, 3, 1, 1, 1, 1, 1, 1, 1, true, true},
      {"NHWC C24 K tail",     3, 24, 11, 13, 130, 3, 2, 2, 1, 1, 0, 1, 2, 1, true, true},
      {"NHWC K odd",          2, 32,  9,  9,  37, 3, 3, 1, 1, 1, 1, 1, 1, 1, false, true},
      {"wide M and C",        2, 144, 8,  8, 160, 3, 3, 1, 1, 1, 1, 1, 1, 1, false, false},
      {"empty batch",         0,  8,  6,  6,  40, 3, 3, 1, 1, 1, 1, 1, 1, 1, true, false},
  };
}

// Element strides of a dense (n, c, h, w) tensor in NCHW or NHWC memory order.
inline NCHWStrides dense_strides(int c, int h, int w, bool channels_last) {
  if (channels_last) return {int64_t(h) * w * c, 1, int64_t(w) * c, c};
  return {int64_t(c) * h * w, int64_t(h) * w, w, 1};
}

// A logical NCHW tensor of doubles (the reference's view of every operand).
struct Tensor4 {
  int n = 0, c = 0, h = 0, w = 0;
  std::vector<double> v;

  Tensor4() = default;
  Tensor4(int n_, int c_, int h_, int w_)
      : n(n_), c(c_), h(h_), w(w_), v(size_t(n_) * c_ * h_ * w_) {}
  double& at(int i, int j, int y, int x) { return v[((size_t(i) * c + j) * h + y) * w + x]; }
  double at(int i, int j, int y, int x) const { return v[((size_t(i) * c + j) * h + y) * w + x]; }
};

// Uniform in [-1, 1), already rounded to T so the reference sees exactly the kernel's inputs.
template <class T>
void fill_random(Tensor4& t, std::mt19937& rng) {
  std::uniform_real_distribution<float> dist(-1.f, 1.f);
  for (double& x : t.v) x = im2win::to_float(im2win::from_float<T>(dist(rng)));
}

// T buffer of t laid out with strides s (a dense buffer of t's size).
template <class T>
std::vector<T> pack(const Tensor4& t, const NCHWStrides& s) {
  std::vector<T> out(t.v.size());
  for (int i = 0; i < t.n; ++i)
    for (int j = 0; j < t.c; ++j)
      for (int y = 0; y < t.h; ++y)
        for (int x = 0; x < t.w; ++x)
          out[i * s.n + j * s.c + y * s.h + x * s.w] =
              im2win::from_float<T>(float(t.at(i, j, y, x)));
  return out;
}

template <class T>
Tensor4 unpack(const std::vector<T>& buf, int n, int c, int h, int w, const NCHWStrides& s) {
  Tensor4 t(n, c, h, w);
  for (int i = 0; i < n; ++i)
    for (int j = 0; j < c; ++j)
      for (int y = 0; y < h; ++y)
        for (int x = 0; x < w; ++x)
          t.at(i, j, y, x) = im2win::to_float(buf[i * s.n + j * s.c + y * s.h + x * s.w]);
  return t;
}

// ---- the fp64 reference --------------------------------------------------------------

struct ConvTensors {
  Tensor4 input, weight, bias, output;  // bias as (1, K, 1, 1)
  Tensor4 grad_out, grad_in, grad_weight, grad_bias;
};

// f(n, k, oh, ow, c_global, c_local, fh, fw, ih, iw) for every tap that lands inside the input.
template <class F>
void for_each_tap(const ConvCase& cs, F&& f) {
  const int Cg = cs.c_per_group(), Kg = cs.k_per_group();
  for (int n = 0; n < cs.batch; ++n)
    for (int k = 0; k < cs.out_channels; ++k)
      for (int oh = 0; oh < cs.out_h(); ++oh)
        for (int ow = 0; ow < cs.out_w(); ++ow)
          for (int c = 0; c < Cg; ++c)
            for (int fh = 0; fh < cs.kernel_h; ++fh)
              for (int fw = 0; fw < cs.kernel_w; ++fw) {
                const int ih = oh * cs.stride_h - cs.pad_h + fh * cs.dilation_h;
                const int iw = ow * cs.stride_w - cs.pad_w + fw * cs.dilation_w;
                if (ih < 0 || ih >= cs.in_h || iw < 0 || iw >= cs.in_w) continue;
                f(n, k, oh, ow, (k / Kg) * Cg + c, c, fh, fw, ih, iw);
              }
}

// Fills input, weight, bias, grad_out with random T-representable values and computes the
// reference output and gradients in fp64.
template <class T>
ConvTensors make_reference(const ConvCase& cs, std::mt19937& rng) {
  ConvTensors t;
  const int Ho = cs.out_h(), Wo = cs.out_w();
  t.input = Tensor4(cs.batch, cs.channels, cs.in_h, cs.in_w);
  t.weight = Tensor4(cs.out_channels, cs.c_per_group(), cs.kernel_h, cs.kernel_w);
  t.bias = Tensor4(1, cs.out_channels, 1, 1);
  t.grad_out = Tensor4(cs.batch, cs.out_channels, Ho, Wo);
  fill_random<T>(t.input, rng);
  fill_random<T>(t.weight, rng);
  fill_random<T>(t.bias, rng);
  fill_random<T>(t.grad_out, rng);
  if (!cs.bias) std::fill(t.bias.v.begin(), t.bias.v.end(), 0.0);

  t.output = Tensor4(cs.batch, cs.out_channels, Ho, Wo);
  t.grad_in = Tensor4(cs.batch, cs.channels, cs.in_h, cs.in_w);
  t.grad_weight = Tensor4(cs.out_channels, cs.c_per_group(), cs.kernel_h, cs.kernel_w);
  t.grad_bias = Tensor4(1, cs.out_channels, 1, 1);
  for (int n = 0; n < cs.batch; ++n)
    for (int k = 0; k < cs.out_channels; ++k)
      for (int oh = 0; oh < Ho; ++oh)
        for (int ow = 0; ow < Wo; ++ow) {
          t.output.at(n, k, oh, ow) = t.bias.at(0, k, 0, 0);
          t.grad_bias.at(0, k, 0, 0) += t.grad_out.at(n, k, oh, ow);
        }
  for_each_tap(cs, [&](int n, int k, int oh, int ow, int cg, int c, int fh, int fw, int ih,
                       int iw) {
    const double x = t.input.at(n, cg, ih, iw), w = t.weight.at(k, c, fh, fw);
    const double g = t.grad_out.at(n, k, oh, ow);
    t.output.at(n, k, oh, ow) += x * w;
    t.grad_in.at(n, cg, ih, iw) += g * w;
    t.grad_weight.at(k, c, fh, fw) += g * x;
  });
  return t;
}

// ||out - ref|| / ||ref||; NaN (an unwritten, poisoned element) gives NaN.
inline double relative_error(const Tensor4& out, const Tensor4& ref) {
  double diff = 0, norm = 0;
  for (size_t i = 0; i < ref.v.size(); ++i) {
    const double d = out.v[i] - ref.v[i];
    diff += d * d;
    norm += ref.v[i] * ref.v[i];
  }
  return norm > 0 ? std::sqrt(diff / norm) : std::sqrt(diff);
}

// Prints one line and returns whether err passes tol (NaN fails).
inline bool report(const std::string& what, double err, double tol) {
  const bool ok = err <= tol;  // false for NaN
  std::printf("  %-4s %-28s rel err %.3e (tol %.0e)\n", ok ? "PASS" : "FAIL", what.c_str(), err,
              tol);
  return ok;
}

// Params for a case; pointers are filled by the caller.
inline Conv2dParams conv_params(const ConvCase& cs, im2win::DType dtype, im2win::Fp32Math math) {
  Conv2dParams p{};
  p.dtype = dtype;
  p.fp32_math = math;
  p.batch = cs.batch, p.in_channels = cs.channels, p.in_h = cs.in_h, p.in_w = cs.in_w;
  p.out_channels = cs.out_channels, p.kernel_h = cs.kernel_h, p.kernel_w = cs.kernel_w;
  p.out_h = cs.out_h(), p.out_w = cs.out_w();
  p.stride_h = cs.stride_h, p.stride_w = cs.stride_w, p.pad_h = cs.pad_h, p.pad_w = cs.pad_w;
  p.dilation_h = cs.dilation_h, p.dilation_w = cs.dilation_w, p.groups = cs.groups;
  p.in_stride = dense_strides(cs.channels, cs.in_h, cs.in_w, cs.channels_last);
  p.out_stride = dense_strides(cs.out_channels, p.out_h, p.out_w, cs.channels_last);
  // a channels_last model has channels_last weights too; grad_weight is always contiguous
  p.w_stride = dense_strides(cs.c_per_group(), cs.kernel_h, cs.kernel_w, cs.channels_last);
  return p;
}

}  // namespace im2win_test

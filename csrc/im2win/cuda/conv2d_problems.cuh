// The three GEMMs of a convolution, as Problems for implicit_gemm.cuh. Each says, per
// group, which element of which tensor is A[m][r], B[r][n] and C[m][n]; the kernels own
// tiling and arithmetic. The index methods are __host__ __device__ so the host test
// (tests/conv2d_gather_host_test.cu) runs this exact index math against a naive convolution.
//
//   forward      out_g  (K_g x N*Ho*Wo) = Fhat_g (K_g x C_g*FW*FH) * Ihat_g (C_g*FW*FH x N*Ho*Wo)
//   grad input   dIn_g  (C_g x N*H*W)   = W_g^T  (C_g x K_g*FH*FW) * G_g    (K_g*FH*FW x N*H*W)
//   grad weight  dW_g   (K_g x C_g*FH*FW) = dOut_g (K_g x N*Ho*Wo) * Ihat_g^T (N*Ho*Wo x C_g*FH*FW)
#pragma once

#include <algorithm>

#include "conv2d_window.cuh"
#include "implicit_gemm.cuh"

namespace im2win {

// ---- forward ---------------------------------------------------------------------------
// Reduced in window order (c, fw, fh); Ihat is gathered straight from the input (no
// workspace), Fhat from the weight through its strides; bias added in the epilogue.
template <class T>
struct ForwardProblem : GemmShape {
  using Element = T;

  const T* input;   // (N, C, H, W) strided; at(): the group's first channel
  const T* weight;  // (K, C_g, FH, FW) strided
  const T* bias;    // (K,) or nullptr
  T* output;        // (N, K, Ho, Wo) strided
  InputWindows windows;
  PlaneDecoder out_positions;          // GEMM column -> (n, oh, ow)
  TapDecoder<TapOrder::kWindow> taps;  // reduction index -> (c, fh, fw)
  int64_t input_group_stride, output_group_stride;  // C_g * in.c, K_g * out.c
  NCHWStrides out_stride, w_stride;

  __host__ __device__ ForwardProblem at(int group, int /*split*/) const {
    ForwardProblem v = *this;
    v.input += group * input_group_stride;
    v.weight += int64_t(group) * M * w_stride.n;
    if (bias != nullptr) v.bias += group * M;
    v.output += group * output_group_stride;
    return v;
  }

  // A = Fhat: row m of the group's filters, reduction index r in window order.
  __host__ __device__ int a_k(int r) const {
    const TapIndex t = taps(r);
    return int(t.c * w_stride.c + t.fh * w_stride.h + t.fw * w_stride.w);
  }
  __host__ __device__ T a_load(int m, int filter_offset) const {
    return weight[m * int(w_stride.n) + filter_offset];
  }

  // B = Ihat: column n is an output position, row r a tap of its window.
  __host__ __device__ WindowOrigin<T> b_col(int n) const {
    return windows.origin(input, out_positions(n));
  }
  __host__ __device__ WindowTap b_k(int r) const { return windows.tap(taps(r)); }
  __host__ __device__ T b_load(const WindowTap& tap, const WindowOrigin<T>& origin) const {
    return windows.load(origin, tap);
  }

  // C = output (+ bias), rounded to T once.
  __host__ __device__ T* c_col(int n) const {
    const PlaneIndex o = out_positions(n);
    return output + o.n * out_stride.n + o.y * out_stride.h + o.x * out_stride.w;
  }
  __host__ __device__ void c_store(int m, T* column, float value) const {
    if (bias != nullptr) value += to_float(bias[m]);
    column[m * out_stride.c] = from_float<T>(value);
  }
};

template <class T>
ForwardProblem<T> make_forward_problem(const Conv2dParams& p) {
  ForwardProblem<T> f;
  const int c_per_group = p.in_channels / p.groups, k_per_group = p.out_channels / p.groups;
  f.M = k_per_group;
  f.N = p.batch * p.out_h * p.out_w;
  f.R = c_per_group * p.kernel_h * p.kernel_w;
  f.groups = p.groups;
  f.splits = 1;
  f.r_chunk = f.R;
  f.input = static_cast<const T*>(p.input);
  f.weight = static_cast<const T*>(p.weight);
  f.bias = static_cast<const T*>(p.bias);
  f.output = static_cast<T*>(p.output);
  f.windows = make_input_windows(p);
  f.out_positions = PlaneDecoder(p.out_h, p.out_w);
  f.taps = TapDecoder<TapOrder::kWindow>(p.kernel_h, p.kernel_w);
  f.input_group_stride = c_per_group * p.in_stride.c;
  f.output_group_stride = k_per_group * p.out_stride.c;
  f.out_stride = p.out_stride;
  f.w_stride = p.w_stride;
  return f;
}

// ---- input gradient --------------------------------------------------------------------
// A gather (no atomics): G[(k, fh, fw)][(n, ih, iw)] = grad_out[n][k][oh][ow] when tap
// (fh, fw) of output (oh, ow) lands on input (ih, iw), i.e. oh = (ih + p_h - fh*dil_h) / s_h
// exactly (likewise ow), and zero otherwise: the forward's GEMM on the transposed filter.
// At stride s only 1 in s_h*s_w of G's entries can be non-zero; they are still multiplied.
template <class T>
struct BwdDataProblem : GemmShape {
  using Element = T;

  const T* weight;    // (K, C_g, FH, FW) strided; at(): the group's first filter
  const T* grad_out;  // (N, K, Ho, Wo) strided; at(): the group's first channel
  T* grad_in;         // (N, C, H, W) strided
  PlaneDecoder in_positions;           // GEMM column -> (n, ih, iw)
  TapDecoder<TapOrder::kFilter> taps;  // reduction index -> (k, fh, fw)
  FastDivmod conv_stride_h, conv_stride_w;
  int out_h, out_w;
  int pad_h, pad_w, dilation_h, dilation_w;
  int64_t grad_out_group_stride, grad_in_group_stride;  // K_g * go.c, C_g * gi.c
  NCHWStrides go_stride, gi_stride, w_stride;
  int k_per_group;

  __host__ __device__ BwdDataProblem at(int group, int /*split*/) const {
    BwdDataProblem v = *this;
    v.weight += int64_t(group) * k_per_group * w_stride.n;
    v.grad_out += group * grad_out_group_stride;
    v.grad_in += group * grad_in_group_stride;
    return v;
  }

  // A = W^T: row m is input channel c, reduction index r = (k, fh, fw).
  __host__ __device__ int a_k(int r) const {
    const TapIndex t = taps(r);
    return int(t.c * w_stride.n + t.fh * w_stride.h + t.fw * w_stride.w);
  }
  __host__ __device__ T a_load(int m, int filter_offset) const {
    return weight[m * int(w_stride.c) + filter_offset];
  }

  // B = G: a column holds its padded input coordinate (ih + p_h, iw + p_w), a reduction row
  // its grad_out channel and dilated filter offset.
  __host__ __device__ WindowOrigin<T> b_col(int n) const {
    const PlaneIndex q = in_positions(n);
    return {grad_out + q.n * go_stride.n, q.y + pad_h, q.x + pad_w};
  }
  __host__ __device__ WindowTap b_k(int r) const {
    const TapIndex t = taps(r);
    return {int(t.c * go_stride.c), t.fh * dilation_h, t.fw * dilation_w};
  }
  __host__ __device__ T b_load(const WindowTap& tap, const WindowOrigin<T>& col) const {
    const int y = col.y0 - tap.dy, x = col.x0 - tap.dx;  // oh * s_h, ow * s_w if on the grid
    if (y < 0 || x < 0) return from_float<T>(0.f);
    int y_rem, x_rem;
    const int oh = conv_stride_h.divmod(y, y_rem), ow = conv_stride_w.divmod(x, x_rem);
    const bool hit = (y_rem | x_rem) == 0 && oh < out_h && ow < out_w;
    return hit ? col.sample[tap.channel_offset + oh * int(go_stride.h) + ow * int(go_stride.w)]
               : from_float<T>(0.f);
  }

  // C = grad_input, rounded to T once.
  __host__ __device__ T* c_col(int n) const {
    const PlaneIndex q = in_positions(n);
    return grad_in + q.n * gi_stride.n + q.y * gi_stride.h + q.x * gi_stride.w;
  }
  __host__ __device__ void c_store(int m, T* column, float value) const {
    column[m * gi_stride.c] = from_float<T>(value);
  }
};

template <class T>
BwdDataProblem<T> make_bwd_data_problem(const Conv2dBwdParams& b) {
  const Conv2dParams& p = b.fwd;
  BwdDataProblem<T> d;
  const int c_per_group = p.in_channels / p.groups, k_per_group = p.out_channels / p.groups;
  d.M = c_per_group;
  d.N = p.batch * p.in_h * p.in_w;
  d.R = k_per_group * p.kernel_h * p.kernel_w;
  d.groups = p.groups;
  d.splits = 1;
  d.r_chunk = d.R;
  d.weight = static_cast<const T*>(p.weight);
  d.grad_out = static_cast<const T*>(b.grad_output);
  d.grad_in = static_cast<T*>(b.grad_input);
  d.in_positions = PlaneDecoder(p.in_h, p.in_w);
  d.taps = TapDecoder<TapOrder::kFilter>(p.kernel_h, p.kernel_w);
  d.conv_stride_h = FastDivmod(p.stride_h);
  d.conv_stride_w = FastDivmod(p.stride_w);
  d.out_h = p.out_h;
  d.out_w = p.out_w;
  d.pad_h = p.pad_h;
  d.pad_w = p.pad_w;
  d.dilation_h = p.dilation_h;
  d.dilation_w = p.dilation_w;
  d.k_per_group = k_per_group;
  d.w_stride = p.w_stride;
  d.grad_out_group_stride = k_per_group * b.grad_out_stride.c;
  d.grad_in_group_stride = c_per_group * b.grad_in_stride.c;
  d.go_stride = b.grad_out_stride;
  d.gi_stride = b.grad_in_stride;
  return d;
}

// ---- weight gradient -------------------------------------------------------------------
// The forward's window gather with rows and columns swapped. The reduction runs over every
// output position and the output is small, so the reduction is split over blocks, each
// writing an fp32 partial tile that sum_splits_kernel adds in a fixed order (deterministic).
// Columns are in the weight's own (c, fh, fw) order: a partial row is a grad_weight row.
template <class T>
struct BwdWeightProblem : GemmShape {
  using Element = T;

  const T* input;     // (N, C, H, W) strided; at(): the group's first channel
  const T* grad_out;  // (N, K, Ho, Wo) strided; at(): the group's first channel
  float* partial;     // (groups, splits, K_g, C_g*FH*FW) fp32; at(): this block's slice
  InputWindows windows;
  PlaneDecoder out_positions;          // reduction index -> (n, oh, ow)
  TapDecoder<TapOrder::kFilter> taps;  // GEMM column -> (c, fh, fw)
  int64_t input_group_stride, grad_out_group_stride;  // C_g * in.c, K_g * go.c
  NCHWStrides go_stride;

  __host__ __device__ BwdWeightProblem at(int group, int split) const {
    BwdWeightProblem v = *this;
    v.input += group * input_group_stride;
    v.grad_out += group * grad_out_group_stride;
    v.partial += (int64_t(group) * splits + split) * M * N;
    return v;
  }

  // A = grad_out: row m is output channel k, reduction index r an output position.
  __host__ __device__ int64_t a_k(int r) const {
    const PlaneIndex o = out_positions(r);
    return o.n * go_stride.n + o.y * go_stride.h + o.x * go_stride.w;
  }
  __host__ __device__ T a_load(int m, int64_t position_offset) const {
    return grad_out[m * go_stride.c + position_offset];
  }

  // B = Ihat^T: column n is a filter tap, reduction row r the window of an output position.
  __host__ __device__ WindowTap b_col(int n) const { return windows.tap(taps(n)); }
  __host__ __device__ WindowOrigin<T> b_k(int r) const {
    return windows.origin(input, out_positions(r));
  }
  __host__ __device__ T b_load(const WindowOrigin<T>& origin, const WindowTap& tap) const {
    return windows.load(origin, tap);
  }

  // C = this split's fp32 partial sums.
  __host__ __device__ int c_col(int n) const { return n; }
  __host__ __device__ void c_store(int m, int n, float value) const {
    partial[int64_t(m) * N + n] = value;
  }
};

// How the weight-gradient reduction is split: enough blocks to fill a 132-SM GPU twice over
// (a fixed target rather than a device query, so the split, and with it the rounding, is
// the same on every device), each split at least kMinSplitLength output positions long so
// its tile's load and write-out stay small against its products, and no empty split.
struct WeightGradPlan {
  static constexpr int kTargetBlocks = 264;
  static constexpr int kMinSplitLength = 256;
  static constexpr int kMaxGridZ = common::kMaxGridYZ;

  GemmConfig config = GemmConfig::kMma;
  int splits = 1, r_chunk = 1;

  WeightGradPlan() = default;
  explicit WeightGradPlan(const Conv2dParams& p) {
    const int M = p.out_channels / p.groups;
    const int N = p.in_channels / p.groups * p.kernel_h * p.kernel_w;
    const int R = p.batch * p.out_h * p.out_w;
    config = choose_gemm_config(p.dtype, p.fp32_math, M);
    const TileExtent t = tile_extent(config);
    const int64_t tiles = int64_t(p.groups) * ceil_div(M, t.bm) * ceil_div(N, t.bn);
    int64_t want = (kTargetBlocks + tiles - 1) / tiles;
    want = std::min<int64_t>(want, ceil_div(R, kMinSplitLength));
    want = std::max<int64_t>(1, std::min<int64_t>(want, kMaxGridZ / p.groups));
    r_chunk = std::max(1, ceil_div(R, int(want)));
    splits = std::max(1, ceil_div(R, r_chunk));
  }

  size_t workspace_bytes(const Conv2dParams& p) const {
    return size_t(p.groups) * splits * (p.out_channels / p.groups) *
           (p.in_channels / p.groups) * p.kernel_h * p.kernel_w * sizeof(float);
  }
};

template <class T>
BwdWeightProblem<T> make_bwd_weight_problem(const Conv2dBwdParams& b, const WeightGradPlan& plan,
                                            float* partial) {
  const Conv2dParams& p = b.fwd;
  BwdWeightProblem<T> w;
  const int c_per_group = p.in_channels / p.groups, k_per_group = p.out_channels / p.groups;
  w.M = k_per_group;
  w.N = c_per_group * p.kernel_h * p.kernel_w;
  w.R = p.batch * p.out_h * p.out_w;
  w.groups = p.groups;
  w.splits = plan.splits;
  w.r_chunk = plan.r_chunk;
  w.input = static_cast<const T*>(p.input);
  w.grad_out = static_cast<const T*>(b.grad_output);
  w.partial = partial;
  w.windows = make_input_windows(p);
  w.out_positions = PlaneDecoder(p.out_h, p.out_w);
  w.taps = TapDecoder<TapOrder::kFilter>(p.kernel_h, p.kernel_w);
  w.input_group_stride = c_per_group * p.in_stride.c;
  w.grad_out_group_stride = k_per_group * b.grad_out_stride.c;
  w.go_stride = b.grad_out_stride;
  return w;
}

}  // namespace im2win

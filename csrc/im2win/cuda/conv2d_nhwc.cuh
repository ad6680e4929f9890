// The channels-last form of the im2win window, shared by the forward kernels on NHWC data
// (conv2d_fwd_nhwc.cu: fp16/bf16 on mma.sync; conv2d_fwd_wgmma.cu: every dtype on wgmma).
// Output position (n, oh, ow) reads its window in (fh, fw, c) order, c innermost, so every
// 16 bytes of channels of one tap are one run of the input (and of a (K, FH, FW, C)
// weight): windows go straight from the input into shared memory by 16-byte cp.async,
// never through a window tensor. The GEMM is
//   out[pos][k] = sum over r = (fh, fw, c) of window[pos][r] * weight[k][r],
// both operands K-major in shared memory, one slice of kSliceValues values at a time
// (kSliceChannels = 32 for mma.sync; one 128-byte line for wgmma: 32 fp32 or 64 16-bit
// values): the channels of one tap, or, when C divides the slice (a first layer's RGB padded
// to 4 or 8), kSliceValues / C neighbouring taps of one filter row, so that a small C does
// not leave most of each slice zero.
#pragma once

#include <cstdint>

#include "../../common/tile.cuh"
#include "conv2d_window.cuh"

namespace im2win {

constexpr int kNhwcThreads = 256;
constexpr int kSliceChannels = 32;  // values of one reduction slice on mma.sync

// 16-byte copies of T: elements in one, and copies in one slice row.
template <class T, int kSliceValues = kSliceChannels>
struct NhwcChunk {
  static constexpr int kElems = 16 / int(sizeof(T));
  static constexpr int kPerRow = kSliceValues / kElems;
  static constexpr int kRowStep = kNhwcThreads / kPerRow;  // rows apart of one thread's copies
};

// The convolution as the kernels see it: element strides (the input's and the weight's
// channel stride is 1), in-sample offsets in int (conv2d_launch.cu checks they fit).
template <class T>
struct NhwcConv {
  const T* input;   // (N, H, W, C)
  const T* weight;  // (K, FH, FW, C)
  const T* weight_small;  // like weight: the TF32 remainders of a split weight (3xTF32), or nullptr
  const T* bias;    // (K,) or nullptr
  T* output;        // (N, K, Ho, Wo) through the out_* strides
  int positions;    // N * Ho * Wo: the GEMM's rows
  int K, C, H, W, kernel_w;
  int stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w;
  int64_t in_n, out_n;  // sample strides
  int in_h, in_w, out_c, out_h, out_w, w_k, w_h, w_w;
  int slice_taps;   // taps of one filter row per slice: 1, or kSliceValues / C
  int slices;
  bool pair_store;  // channel stride 1 and K even: channels (k, k + 1) are one aligned word
  PlaneDecoder out_positions;
};

// How the reduction is cut: slices of slice_values channels of one tap, or, when C divides
// slice_values, of slice_taps = slice_values / C neighbouring taps of one filter row.
struct SlicePlan {
  int slice_taps, slices;
};
inline SlicePlan plan_slices(int C, int kernel_h, int kernel_w, int slice_values = kSliceChannels) {
  if (C < slice_values && slice_values % C == 0) {
    const int taps = slice_values / C;
    return {taps, kernel_h * ceil_div(kernel_w, taps)};
  }
  return {1, kernel_h * kernel_w * ceil_div(C, slice_values)};
}

// The reduction one slice at a time: the first tap (fh, fw), and the first channel c0 within
// it.
template <int kSliceValues = kSliceChannels>
struct SliceCursor {
  int fh = 0, fw = 0, c0 = 0;

  template <class T>
  __device__ void advance(const NhwcConv<T>& p) {
    if (p.slice_taps == 1) {
      c0 += kSliceValues;
      if (c0 < p.C) return;
      c0 = 0;
    }
    fw += p.slice_taps;
    if (fw >= p.kernel_w) {
      fw = 0;
      ++fh;
    }
  }
};

// One thread's share of every slice: 16-byte chunk `chunk` of kARows window rows (output
// positions) and kBRows filter rows, each kRowStep rows apart, stored through Layout (element
// offsets). The window origins are decoded once; a slice only adds its tap.
template <class T, int BM, int BN, class Layout, int kSliceValues = kSliceChannels>
struct NhwcCopier {
  using Chunk = NhwcChunk<T, kSliceValues>;
  static constexpr int kARows = BM / Chunk::kRowStep, kBRows = BN / Chunk::kRowStep;
  static_assert(kARows * Chunk::kRowStep == BM && kBRows * Chunk::kRowStep == BN,
                "tile rows must split evenly over the copying threads");

  int chunk, row0;
  int chunk_tap, chunk_c;   // the chunk's tap and channel relative to the slice's first ones
  const T* sample[kARows];  // the input sample of each window row
  int ih0[kARows], iw0[kARows];
  bool position_ok[kARows];

  __device__ NhwcCopier(const NhwcConv<T>& p, int m_block, int tid)
      : chunk(tid % Chunk::kPerRow), row0(tid / Chunk::kPerRow) {
    const int e = chunk * Chunk::kElems;  // the chunk's first value within a slice row
    chunk_tap = p.slice_taps == 1 ? 0 : e / p.C;
    chunk_c = p.slice_taps == 1 ? e : e % p.C;
#pragma unroll
    for (int i = 0; i < kARows; ++i) {
      const int m = m_block + row0 + i * Chunk::kRowStep;
      position_ok[i] = m < p.positions;
      const PlaneIndex o = p.out_positions(position_ok[i] ? m : 0);
      sample[i] = p.input + o.n * p.in_n;
      ih0[i] = o.y * p.stride_h - p.pad_h;
      iw0[i] = o.x * p.stride_w - p.pad_w;
    }
  }

  // Issues the copies of slice s into one stage (kSmallB: also weight_small's rows into
  // sB_small); padding, channel tails and rows past the tile's end are zero-filled without a
  // read.
  template <bool kSmallB = false>
  __device__ void copy(const NhwcConv<T>& p, const SliceCursor<kSliceValues>& s, int n_block,
                       T* sA, T* sB,
                       T* sB_small = nullptr) const {
    const int c = s.c0 + chunk_c, fw = s.fw + chunk_tap;
    const bool channel_ok = c < p.C && fw < p.kernel_w;
    const int dy = s.fh * p.dilation_h, dx = fw * p.dilation_w;
#pragma unroll
    for (int i = 0; i < kARows; ++i) {
      const int ih = ih0[i] + dy, iw = iw0[i] + dx;
      const bool ok = position_ok[i] && channel_ok && unsigned(ih) < unsigned(p.H) &&
                      unsigned(iw) < unsigned(p.W);
      const T* src = ok ? sample[i] + ih * p.in_h + iw * p.in_w + c : p.input;
      const int to = Layout::offset(row0 + i * Chunk::kRowStep, chunk * Chunk::kElems);
      tile::cp_async_16(sA + to, src, ok);
    }
    const int tap_offset = s.fh * p.w_h + fw * p.w_w + c;
#pragma unroll
    for (int j = 0; j < kBRows; ++j) {
      const int k = n_block + row0 + j * Chunk::kRowStep;
      const bool ok = channel_ok && k < p.K;
      const int offset = ok ? k * p.w_k + tap_offset : 0;
      const int to = Layout::offset(row0 + j * Chunk::kRowStep, chunk * Chunk::kElems);
      tile::cp_async_16(sB + to, p.weight + offset, ok);
      if constexpr (kSmallB) tile::cp_async_16(sB_small + to, p.weight_small + offset, ok);
    }
  }
};

// The problem of p with the input and weight read from `input` / `weight` (and
// `weight_small`) through the given strides (p's own tensors, or channels-last copies with
// `channels` >= C, zero past C), cut into slices of slice_values.
template <class T>
NhwcConv<T> make_nhwc_conv(const Conv2dParams& p, const void* input, const NCHWStrides& in_stride,
                           const void* weight, const NCHWStrides& w_stride,
                           const void* weight_small = nullptr, int channels = 0,
                           int slice_values = kSliceChannels) {
  NhwcConv<T> c;
  c.input = static_cast<const T*>(input);
  c.weight = static_cast<const T*>(weight);
  c.weight_small = static_cast<const T*>(weight_small);
  c.bias = static_cast<const T*>(p.bias);
  c.output = static_cast<T*>(p.output);
  c.positions = p.batch * p.out_h * p.out_w;
  c.K = p.out_channels, c.C = channels > 0 ? channels : p.in_channels;
  c.H = p.in_h, c.W = p.in_w, c.kernel_w = p.kernel_w;
  c.stride_h = p.stride_h, c.stride_w = p.stride_w, c.pad_h = p.pad_h, c.pad_w = p.pad_w;
  c.dilation_h = p.dilation_h, c.dilation_w = p.dilation_w;
  c.in_n = in_stride.n, c.out_n = p.out_stride.n;
  c.in_h = int(in_stride.h), c.in_w = int(in_stride.w);
  c.out_c = int(p.out_stride.c), c.out_h = int(p.out_stride.h), c.out_w = int(p.out_stride.w);
  c.w_k = int(w_stride.n), c.w_h = int(w_stride.h), c.w_w = int(w_stride.w);
  const SlicePlan plan = plan_slices(c.C, p.kernel_h, p.kernel_w, slice_values);
  c.slice_taps = plan.slice_taps, c.slices = plan.slices;
  c.pair_store = p.out_stride.c == 1 && p.out_channels % 2 == 0 &&
                 reinterpret_cast<uintptr_t>(p.output) % (2 * sizeof(T)) == 0 &&
                 p.out_stride.n % 2 == 0 && p.out_stride.h % 2 == 0 && p.out_stride.w % 2 == 0;
  c.out_positions = PlaneDecoder(p.out_h, p.out_w);
  return c;
}

// Whether a tensor with these strides and this base can be read in 16-byte chunks of T
// along its channels.
template <class T>
bool nhwc_chunked(const void* ptr, const NCHWStrides& s) {
  constexpr int kElems = NhwcChunk<T>::kElems;
  return reinterpret_cast<uintptr_t>(ptr) % 16 == 0 && s.c == 1 && s.n % kElems == 0 &&
         s.h % kElems == 0 && s.w % kElems == 0;
}

}  // namespace im2win

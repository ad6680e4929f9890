// Index decoding and the implicit im2win gather. The window tensor of the design,
//   Ihat[n][c][oh][w * FH + fh] = I[n][c][oh*s_h + fh*dil_h - p_h][w - p_w], w = ow*s_w + fw*dil_w,
// is never materialised: a GEMM operand element is an (output position, filter tap) pair,
// read straight from the input, zero in the padding.
#pragma once

#include <cstdint>

#include "conv2d_common.cuh"

namespace im2win {

// ---- flattened indices ---------------------------------------------------------------

// (sample, row, column) of a flattened position over a (batch, height, width) grid.
struct PlaneIndex {
  int n, y, x;
};

struct PlaneDecoder {
  FastDivmod plane, width;  // height * width, width

  PlaneDecoder() = default;
  PlaneDecoder(int height, int width) : plane(height * width), width(width) {}

  __host__ __device__ PlaneIndex operator()(int i) const {
    int rem, x;
    const int n = plane.divmod(i, rem);
    const int y = width.divmod(rem, x);
    return {n, y, x};
  }
};

// (channel, filter row, filter column) of a flattened reduction index.
struct TapIndex {
  int c, fh, fw;
};

// kWindow: (c, fw, fh), fh fastest, the paper's order in which one window is one
// contiguous run of Ihat. kFilter: (c, fh, fw), the weight's own (K, C, FH, FW) layout.
enum class TapOrder { kWindow, kFilter };

template <TapOrder kOrder>
struct TapDecoder {
  FastDivmod taps, inner;  // FH * FW, and FH (kWindow) or FW (kFilter)

  TapDecoder() = default;
  TapDecoder(int kernel_h, int kernel_w)
      : taps(kernel_h * kernel_w), inner(kOrder == TapOrder::kWindow ? kernel_h : kernel_w) {}

  __host__ __device__ TapIndex operator()(int r) const {
    int rem, fast;
    const int c = taps.divmod(r, rem);
    const int slow = inner.divmod(rem, fast);
    return kOrder == TapOrder::kWindow ? TapIndex{c, fast, slow} : TapIndex{c, slow, fast};
  }
};

// ---- the window gather ---------------------------------------------------------------

// Where the window of one output position starts: the sample's base (group channels
// included) and the top-left input coordinate, which may lie in the padding.
template <class T>
struct WindowOrigin {
  const T* sample;
  int y0, x0;
};

// One tap of a window: channel offset in elements and displacement from the origin.
struct WindowTap {
  int channel_offset, dy, dx;
};

// The input as the windows see it. In-sample strides are 32-bit (checked at launch).
struct InputWindows {
  int height, width;
  int64_t stride_n;
  int stride_c, stride_h, stride_w;
  int conv_stride_h, conv_stride_w, pad_h, pad_w, dilation_h, dilation_w;

  template <class T>
  __host__ __device__ WindowOrigin<T> origin(const T* input, PlaneIndex out) const {
    return {input + out.n * stride_n, out.y * conv_stride_h - pad_h, out.x * conv_stride_w - pad_w};
  }

  __host__ __device__ WindowTap tap(TapIndex t) const {
    return {t.c * stride_c, t.fh * dilation_h, t.fw * dilation_w};
  }

  // Ihat at (origin, tap): the input element, or zero in the padding.
  template <class T>
  __host__ __device__ T load(const WindowOrigin<T>& o, const WindowTap& t) const {
    const int y = o.y0 + t.dy, x = o.x0 + t.dx;
    const bool inside = unsigned(y) < unsigned(height) && unsigned(x) < unsigned(width);
    return inside ? o.sample[t.channel_offset + y * stride_h + x * stride_w] : from_float<T>(0.f);
  }
};

inline InputWindows make_input_windows(const Conv2dParams& p) {
  InputWindows w;
  w.height = p.in_h, w.width = p.in_w;
  w.stride_n = p.in_stride.n;
  w.stride_c = int(p.in_stride.c), w.stride_h = int(p.in_stride.h), w.stride_w = int(p.in_stride.w);
  w.conv_stride_h = p.stride_h, w.conv_stride_w = p.stride_w;
  w.pad_h = p.pad_h, w.pad_w = p.pad_w;
  w.dilation_h = p.dilation_h, w.dilation_w = p.dilation_w;
  return w;
}

}  // namespace im2win

// The im2win transform on the CPU: Ihat[n][c][oh][w*FH + fh] = I[n][c][oh*s + fh*d - p_h][w - p_w],
// zero where that falls into the padding. Each window-tensor row gathers the FH input rows
// one output row reads, interleaved so that a filter column of a window is FH adjacent values.
#include "conv2d_cpu.h"
#include "window_ops.h"

namespace im2win {
namespace {

template <typename T>
void im2win_plane(const Im2winParams& p, int64_t n, int64_t c) {
  const T* src = static_cast<const T*>(p.input) + n * p.in_stride.n + c * p.in_stride.c;
  const int64_t row_len = int64_t(p.padded_w) * p.kernel_h;
  T* dst = static_cast<T*>(p.output) + (n * p.channels + c) * p.out_h * row_len;
  for (int oh = 0; oh < p.out_h; ++oh) {
    T* row = dst + oh * row_len;
    for (int fh = 0; fh < p.kernel_h; ++fh) {
      const int h = oh * p.stride_h + fh * p.dilation_h - p.pad_h;
      const T* src_row = h >= 0 && h < p.in_h ? src + int64_t(h) * p.in_stride.h : nullptr;
      for (int w = 0; w < p.padded_w; ++w) {
        const int x = w - p.pad_w;
        row[int64_t(w) * p.kernel_h + fh] =
            src_row && x >= 0 && x < p.in_w ? src_row[int64_t(x) * p.in_stride.w] : T(0);
      }
    }
  }
}

}  // namespace

void im2win_cpu(const Im2winParams& p, int64_t begin, int64_t end) {
  cpu::with_compute_type(p.dtype, [&](auto zero) {
    using T = decltype(zero);
    for (int64_t item = begin; item < end; ++item)
      im2win_plane<T>(p, item / p.channels, item % p.channels);
  });
}

}  // namespace im2win

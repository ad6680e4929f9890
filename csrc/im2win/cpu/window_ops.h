// Pieces the CPU im2win kernels share: the float/double switch, the positions of a filter
// window in a row of the window tensor, and the lane-parallel products over blocks of
// kChannelBlock channels that make their inner loops SIMD loops.
#pragma once

#include <cstdint>

#include "../../common/macros.h"
#include "../conv2d_params.h"
#include "conv2d_cpu.h"

namespace im2win {
namespace cpu {

constexpr int kLanes = kChannelBlock;

// Calls fn(T{}) with T = double for kFloat64 and float otherwise (the binding hands the CPU
// kernels float or double only).
template <typename Fn>
LT_ALWAYS_INLINE void with_compute_type(DType dtype, Fn fn) {
  if (dtype == DType::kFloat64)
    fn(double{});
  else
    fn(float{});
}

// In a window-tensor row of width Wp*FH, filter column fw of the window of output column ow
// holds the FH values at (ow*stride_w + fw*dilation_w)*FH + fh: runs of FH values, adjacent
// to each other when there is no dilation.
struct WindowRuns {
  int count;         // runs per window (FW)
  int length;        // values per run (FH)
  int64_t gap;       // distance between the starts of two runs of one window
  int64_t next_col;  // distance between the windows of output columns ow and ow + 1
};

inline WindowRuns window_runs(const Conv2dParams& p) {
  return {p.kernel_w, p.kernel_h, int64_t(p.dilation_w) * p.kernel_h,
          int64_t(p.stride_w) * p.kernel_h};
}

// Calls fn(j, offset) for the FH*FW values of one window: j = fw*FH + fh is the value's
// index in a window-ordered filter, offset its distance from the window's start in the row.
template <typename Fn>
inline void for_each_window_value(const WindowRuns& r, Fn fn) {
  for (int run = 0; run < r.count; ++run)
    for (int i = 0; i < r.length; ++i) fn(run * r.length + i, run * r.gap + i);
}

// acc[l] += x * v[l] for every lane l.
template <typename T>
inline void lanes_fma(T* __restrict__ acc, T x, const T* __restrict__ v) {
#pragma omp simd
  for (int l = 0; l < kLanes; ++l) acc[l] += x * v[l];
}

// Filters in window order with the channels of a block as lanes:
// out[(a * FH*FW + fw*FH + fh) * kLanes + lane] = slice(a, lane)[fh * FW + fw], where
// slice(a, lane) is a (FH, FW) slice of the weight, or nullptr for a lane past the block
// (zero, so that lane computes nothing).
template <typename T, typename Slice>
void filters_as_lanes(int64_t count, int kernel_h, int kernel_w, Slice slice, T* out) {
  const int64_t window = int64_t(kernel_h) * kernel_w;
  for (int64_t a = 0; a < count; ++a)
    for (int lane = 0; lane < kLanes; ++lane) {
      const T* src = slice(a, lane);
      for (int fh = 0; fh < kernel_h; ++fh)
        for (int fw = 0; fw < kernel_w; ++fw)
          out[(a * window + fw * kernel_h + fh) * kLanes + lane] =
              src ? src[fh * kernel_w + fw] : T(0);
    }
}

}  // namespace cpu
}  // namespace im2win

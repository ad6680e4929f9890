// CPU forward and backward of im2win::conv2d over the window tensor (see conv2d_cpu.h).
// Each work item takes a block of kLanes channels of one group, and the innermost loops run
// over those channels: one window value times kLanes filter values is one SIMD multiply-add,
// with the filters re-laid out once per item as [window position][lane]. A window-tensor row
// holds the windows of all output columns of one output row, so it stays in cache while
// they are computed.
#include <algorithm>
#include <vector>

#include "../../common/macros.h"
#include "conv2d_cpu.h"
#include "window_ops.h"

namespace im2win {
namespace {

using cpu::kLanes;
using cpu::WindowRuns;

// The channels [first, first + count) of one group, count <= kLanes.
struct ChannelBlock {
  int64_t group, first, count;
};

// Sizes every kernel below needs, derived once from the Params.
struct Shape {
  int64_t group_in, group_out;  // C / groups, K / groups
  int64_t window;               // FH * FW: values per window and per filter slice
  int64_t row_len;              // Wp * FH: values per window-tensor row
  WindowRuns runs;

  explicit Shape(const Conv2dParams& p)
      : group_in(p.in_channels / p.groups),
        group_out(p.out_channels / p.groups),
        window(int64_t(p.kernel_h) * p.kernel_w),
        row_len(int64_t(p.in_w + 2 * p.pad_w) * p.kernel_h),
        runs(cpu::window_runs(p)) {}

  // Block b of channel_blocks(per_group * groups, groups).
  static ChannelBlock block(int64_t b, int64_t per_group) {
    const int64_t blocks_per_group = (per_group + kLanes - 1) / kLanes;
    const int64_t group = b / blocks_per_group, offset = b % blocks_per_group * kLanes;
    return {group, group * per_group + offset, std::min<int64_t>(kLanes, per_group - offset)};
  }

  // Row Ihat[n][c][oh] of a contiguous (N, C, Ho, Wp*FH) window tensor.
  template <typename T>
  const T* row(const T* window, const Conv2dParams& p, int64_t n, int64_t c, int64_t oh) const {
    return window + ((n * p.in_channels + c) * p.out_h + oh) * row_len;
  }
};

// to += from; from = 0
template <typename T>
void move_sums(std::vector<T>& from, std::vector<T>& to) {
  for (size_t i = 0; i < to.size(); ++i) to[i] += from[i];
  std::fill(from.begin(), from.end(), T(0));
}

// output[n][k] for the output channels k of block `ko`: at every output position, the
// window of each input channel of the group times the block's filters.
template <typename T>
LT_ALWAYS_INLINE void fwd_block(const Conv2dParams& p, const Shape& s, const T* window, int64_t n,
               ChannelBlock ko, std::vector<T>& filters) {
  const T* weight = static_cast<const T*>(p.weight);
  cpu::filters_as_lanes(s.group_in, p.kernel_h, p.kernel_w, [&](int64_t cl, int lane) {
    return lane < ko.count ? weight + ((ko.first + lane) * s.group_in + cl) * s.window : nullptr;
  }, filters.data());  // (Cg, FH*FW, kLanes)
  T bias[kLanes] = {};
  for (int lane = 0; p.bias && lane < ko.count; ++lane)
    bias[lane] = static_cast<const T*>(p.bias)[ko.first + lane];
  const int64_t c0 = ko.group * s.group_in;
  T* out = static_cast<T*>(p.output) + n * p.out_stride.n + ko.first * p.out_stride.c;
  // kCols output columns at a time: each filter vector loaded serves kCols windows.
  constexpr int kCols = 4;
  for (int oh = 0; oh < p.out_h; ++oh)
    for (int ow0 = 0; ow0 < p.out_w; ow0 += kCols) {
      const int cols = std::min<int>(kCols, p.out_w - ow0);
      T acc[kCols][kLanes];
      for (int col = 0; col < kCols; ++col) std::copy_n(bias, kLanes, acc[col]);
      for (int64_t cl = 0; cl < s.group_in; ++cl) {
        const T* win = s.row(window, p, n, c0 + cl, oh) + ow0 * s.runs.next_col;
        const T* f = filters.data() + cl * s.window * kLanes;
        if (cols == kCols) {
          cpu::for_each_window_value(s.runs, [&](int64_t j, int64_t offset) {
            for (int col = 0; col < kCols; ++col)
              cpu::lanes_fma(acc[col], win[col * s.runs.next_col + offset], f + j * kLanes);
          });
        } else {
          cpu::for_each_window_value(s.runs, [&](int64_t j, int64_t offset) {
            for (int col = 0; col < cols; ++col)
              cpu::lanes_fma(acc[col], win[col * s.runs.next_col + offset], f + j * kLanes);
          });
        }
      }
      for (int col = 0; col < cols; ++col)
        for (int lane = 0; lane < ko.count; ++lane)
          out[lane * p.out_stride.c + oh * p.out_stride.h + (ow0 + col) * p.out_stride.w] = acc[col][lane];
    }
}

// grad_input[n][c] for the input channels c of block `ci`: per output row, the gradient of
// every window, grad_out[k][oh][ow] * filter[k][c] summed over the group's output channels,
// is added into one window-tensor row per channel, which is then folded back onto the FH
// input rows it was gathered from (col2win).
template <typename T>
LT_ALWAYS_INLINE void bwd_input_block(const Conv2dBwdParams& b, const Shape& s, int64_t n, ChannelBlock ci,
                     std::vector<T>& filters, std::vector<T>& row_grad,
                     std::vector<T>& plane_grad) {
  const Conv2dParams& p = b.fwd;
  const T* weight = static_cast<const T*>(p.weight);
  const int64_t k0 = ci.group * s.group_out, cl0 = ci.first - ci.group * s.group_in;
  cpu::filters_as_lanes(s.group_out, p.kernel_h, p.kernel_w, [&](int64_t kk, int lane) {
    return lane < ci.count ? weight + ((k0 + kk) * s.group_in + cl0 + lane) * s.window : nullptr;
  }, filters.data());  // (Kg, FH*FW, kLanes)
  const int64_t plane = int64_t(p.in_h) * p.in_w;
  const T* grad_out = static_cast<const T*>(b.grad_output) + n * b.grad_out_stride.n;
  std::fill(plane_grad.begin(), plane_grad.end(), T(0));  // (kLanes, H, W)
  for (int oh = 0; oh < p.out_h; ++oh) {
    std::fill(row_grad.begin(), row_grad.end(), T(0));  // (Wp*FH, kLanes)
    for (int64_t kk = 0; kk < s.group_out; ++kk) {
      const T* g = grad_out + (k0 + kk) * b.grad_out_stride.c + oh * b.grad_out_stride.h;
      const T* f = filters.data() + kk * s.window * kLanes;
      for (int ow = 0; ow < p.out_w; ++ow) {
        const T grad = g[ow * b.grad_out_stride.w];
        T* win = row_grad.data() + ow * s.runs.next_col * kLanes;
        cpu::for_each_window_value(s.runs, [&](int64_t j, int64_t offset) {
          cpu::lanes_fma(win + offset * kLanes, grad, f + j * kLanes);
        });
      }
    }
    for (int fh = 0; fh < p.kernel_h; ++fh) {
      const int h = oh * p.stride_h + fh * p.dilation_h - p.pad_h;
      if (h < 0 || h >= p.in_h) continue;  // this part of the windows lies in the padding
      for (int x = 0; x < p.in_w; ++x) {
        const T* src = row_grad.data() + ((int64_t(x) + p.pad_w) * p.kernel_h + fh) * kLanes;
        for (int lane = 0; lane < ci.count; ++lane)
          plane_grad[lane * plane + int64_t(h) * p.in_w + x] += src[lane];
      }
    }
  }
  T* grad_in = static_cast<T*>(b.grad_input) + n * b.grad_in_stride.n;
  for (int lane = 0; lane < ci.count; ++lane)
    for (int h = 0; h < p.in_h; ++h)
      for (int x = 0; x < p.in_w; ++x)
        grad_in[(ci.first + lane) * b.grad_in_stride.c + h * b.grad_in_stride.h +
                x * b.grad_in_stride.w] = plane_grad[lane * plane + int64_t(h) * p.in_w + x];
}

// grad_weight[k] += sum over (n, oh, ow) of grad_out[n][k][oh][ow] * window(n, oh, ow) for
// the output channels k of block `ko`. These sums have N*Ho*Wo terms (millions in a real
// layer): they are summed per output row, the rows per image and the images last, so
// rounding grows with Wo + Ho + N rather than with their product.
template <typename T>
LT_ALWAYS_INLINE void bwd_weight_block(const Conv2dBwdParams& b, const Shape& s, const T* window, ChannelBlock ko,
                      std::vector<T>& row_grads, std::vector<T>& image_sum,
                      std::vector<T>& total_sum) {
  const Conv2dParams& p = b.fwd;
  const int64_t c0 = ko.group * s.group_in;
  std::fill(image_sum.begin(), image_sum.end(), T(0));  // (Cg, FH*FW, kLanes)
  std::fill(total_sum.begin(), total_sum.end(), T(0));
  for (int64_t n = 0; n < p.batch; ++n) {
    for (int oh = 0; oh < p.out_h; ++oh) {
      const T* g = static_cast<const T*>(b.grad_output) + n * b.grad_out_stride.n +
                   ko.first * b.grad_out_stride.c + oh * b.grad_out_stride.h;
      for (int ow = 0; ow < p.out_w; ++ow)  // (Wo, kLanes)
        for (int lane = 0; lane < kLanes; ++lane)
          row_grads[ow * kLanes + lane] =
              lane < ko.count ? g[lane * b.grad_out_stride.c + ow * b.grad_out_stride.w] : T(0);
      for (int64_t cl = 0; cl < s.group_in; ++cl) {
        const T* row = s.row(window, p, n, c0 + cl, oh);
        T* sum = image_sum.data() + cl * s.window * kLanes;
        cpu::for_each_window_value(s.runs, [&](int64_t j, int64_t offset) {
          T acc[kLanes] = {};
          for (int ow = 0; ow < p.out_w; ++ow)
            cpu::lanes_fma(acc, row[ow * s.runs.next_col + offset], row_grads.data() + ow * kLanes);
          for (int lane = 0; lane < kLanes; ++lane) sum[j * kLanes + lane] += acc[lane];
        });
      }
    }
    move_sums(image_sum, total_sum);
  }
  // Back from (Cg, fw*FH + fh, lane) to the weight's (K, Cg, FH, FW).
  T* grad_weight = static_cast<T*>(b.grad_weight);
  for (int lane = 0; lane < ko.count; ++lane)
    for (int64_t cl = 0; cl < s.group_in; ++cl)
      for (int fh = 0; fh < p.kernel_h; ++fh)
        for (int fw = 0; fw < p.kernel_w; ++fw)
          grad_weight[((ko.first + lane) * s.group_in + cl) * s.window + fh * p.kernel_w + fw] +=
              total_sum[(cl * s.window + fw * p.kernel_h + fh) * kLanes + lane];
}

// sum over (n, oh, ow) of grad_out[n][k][oh][ow], summed by rows and images as above.
template <typename T>
T grad_out_sum(const Conv2dBwdParams& b, int64_t k) {
  const Conv2dParams& p = b.fwd;
  T total = 0;
  for (int64_t n = 0; n < p.batch; ++n) {
    T image = 0;
    for (int oh = 0; oh < p.out_h; ++oh) {
      const T* g = static_cast<const T*>(b.grad_output) + n * b.grad_out_stride.n +
                   k * b.grad_out_stride.c + oh * b.grad_out_stride.h;
      T row = 0;
      for (int ow = 0; ow < p.out_w; ++ow) row += g[ow * b.grad_out_stride.w];
      image += row;
    }
    total += image;
  }
  return total;
}

}  // namespace

LT_CPU_CLONES void conv2d_fwd_cpu(const Conv2dParams& p, const void* window, int64_t begin, int64_t end) {
  cpu::with_compute_type(p.dtype, [&](auto zero) LT_ALWAYS_LAMBDA {
    using T = decltype(zero);
    const Shape s(p);
    const int64_t blocks = channel_blocks(p.out_channels, p.groups);
    std::vector<T> filters(s.group_in * s.window * kLanes);
    for (int64_t item = begin; item < end; ++item)
      fwd_block<T>(p, s, static_cast<const T*>(window), item / blocks,
                   Shape::block(item % blocks, s.group_out), filters);
  });
}

LT_CPU_CLONES void conv2d_bwd_input_cpu(const Conv2dBwdParams& b, int64_t begin, int64_t end) {
  cpu::with_compute_type(b.fwd.dtype, [&](auto zero) LT_ALWAYS_LAMBDA {
    using T = decltype(zero);
    const Shape s(b.fwd);
    const int64_t blocks = channel_blocks(b.fwd.in_channels, b.fwd.groups);
    std::vector<T> filters(s.group_out * s.window * kLanes), row_grad(s.row_len * kLanes),
        plane_grad(int64_t(kLanes) * b.fwd.in_h * b.fwd.in_w);
    for (int64_t item = begin; item < end; ++item)
      bwd_input_block<T>(b, s, item / blocks, Shape::block(item % blocks, s.group_in), filters,
                         row_grad, plane_grad);
  });
}

LT_CPU_CLONES void conv2d_bwd_weight_cpu(const Conv2dBwdParams& b, const void* window, int64_t begin,
                           int64_t end) {
  cpu::with_compute_type(b.fwd.dtype, [&](auto zero) LT_ALWAYS_LAMBDA {
    using T = decltype(zero);
    const Shape s(b.fwd);
    std::vector<T> row_grads(int64_t(b.fwd.out_w) * kLanes),
        image_sum(s.group_in * s.window * kLanes), total_sum(image_sum.size());
    for (int64_t item = begin; item < end; ++item)
      bwd_weight_block<T>(b, s, static_cast<const T*>(window), Shape::block(item, s.group_out),
                          row_grads, image_sum, total_sum);
  });
}

void conv2d_bwd_bias_cpu(const Conv2dBwdParams& b, int64_t begin, int64_t end) {
  cpu::with_compute_type(b.fwd.dtype, [&](auto zero) {
    using T = decltype(zero);
    for (int64_t k = begin; k < end; ++k) static_cast<T*>(b.grad_bias)[k] = grad_out_sum<T>(b, k);
  });
}

}  // namespace im2win

// CPU kernels of im2win::conv2d (torch-free), after the CPU im2win paper (arXiv 2306.14320):
// the input is first laid out as the window tensor of Im2winParams, in which the window of
// each output is a contiguous run (one run per filter column when dilated), and every output
// is then a dot product of a window with the filter in the same order. The kernels handle
// blocks of kChannelBlock channels of one group at once, the SIMD lanes of their inner
// loops. Data is float or double (the binding widens half types once); sums are kept in that
// type. Each call does the work items [begin, end) named beside it, so the binding can
// spread them over threads.
#pragma once

#include <cstdint>

#include "../conv2d_params.h"

namespace im2win {

constexpr int kChannelBlock = 8;

// Blocks of up to kChannelBlock channels, none spanning two groups, over `channels`
// channels split into `groups` groups (the blocks of group g come before those of g + 1).
inline int64_t channel_blocks(int64_t channels, int64_t groups) {
  return groups * ((channels / groups + kChannelBlock - 1) / kChannelBlock);
}

// The window tensor that the convolution p reads, for p's batch; `input` and `output` are
// p.input and nullptr (the caller supplies the window storage).
inline Im2winParams window_params(const Conv2dParams& p) {
  Im2winParams w;
  w.dtype = p.dtype;
  w.batch = p.batch;
  w.channels = p.in_channels;
  w.in_h = p.in_h;
  w.in_w = p.in_w;
  w.kernel_h = p.kernel_h;
  w.out_h = p.out_h;
  w.padded_w = p.in_w + 2 * p.pad_w;
  w.stride_h = p.stride_h;
  w.pad_h = p.pad_h;
  w.pad_w = p.pad_w;
  w.dilation_h = p.dilation_h;
  w.input = p.input;
  w.in_stride = p.in_stride;
  w.output = nullptr;
  return w;
}

// Items: (n, c) pairs, n-major; writes the Ho rows of Ihat[n][c].
void im2win_cpu(const Im2winParams& p, int64_t begin, int64_t end);

// Items: (n, block of output channels) pairs, n-major, channel_blocks(K, groups) blocks per
// image; writes those output planes. `window` is the window tensor of p's batch
// (window_params(p)), contiguous.
void conv2d_fwd_cpu(const Conv2dParams& p, const void* window, int64_t begin, int64_t end);

// Items: (n, block of input channels) pairs, n-major, channel_blocks(C, groups) blocks per
// image; writes those grad_input planes: the gradient of every window that reads a plane,
// scattered back onto the input (col2win). Needs no window tensor.
void conv2d_bwd_input_cpu(const Conv2dBwdParams& p, int64_t begin, int64_t end);

// Items: blocks of output channels (channel_blocks(K, groups) in all); ADDS the contribution
// of p's batch to their grad_weight, so the binding can feed a large batch in slices, each
// with its own window tensor.
void conv2d_bwd_weight_cpu(const Conv2dBwdParams& p, const void* window, int64_t begin,
                           int64_t end);

// Items: output channels k; writes grad_bias[k] = sum of grad_output[:, k].
void conv2d_bwd_bias_cpu(const Conv2dBwdParams& p, int64_t begin, int64_t end);

}  // namespace im2win

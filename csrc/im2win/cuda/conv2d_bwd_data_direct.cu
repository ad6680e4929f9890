// Input gradient for few channels per group (C_g <= 4: RGB stems, depthwise), without a GEMM.
// As a GEMM its M is C_g, so a 32-row tile would idle most of its rows, and at stride s only
// 1 in s_h * s_w of the gathered grad_out entries is non-zero. Here one thread owns one input
// position and all C_g channels of its group, and visits only the taps that reach an output:
//   grad_in[n][c][ih][iw] = sum over k, and (fh, fw) with oh = (ih + p_h - fh*d_h) / s_h exact
//                           and inside (likewise ow), of weight[k][c][fh][fw] grad_out[n][k][oh][ow].
// Whether tap fh can reach an output depends only on (ih + p_h) mod s_h, its phase; a block
// takes positions of one phase (blockIdx.z), so its threads skip the same taps (no divergence)
// and neighbouring threads read neighbouring outputs.
#include "conv2d_kernels.cuh"
#include "conv2d_window.cuh"

namespace im2win {
namespace {

constexpr int kThreads = 256;
constexpr int kMaxChannels = 4;

template <class T>
struct DirectBwdData {
  const T* weight;    // (K, C_g, FH, FW) via w_stride
  const T* grad_out;  // (N, K, Ho, Wo) via go
  T* grad_in;         // (N, C, H, W) via gi
  NCHWStrides w, go, gi;
  int batch, H, W, out_h, out_w, kernel_h, kernel_w;
  int stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w;
  int k_per_group;
  int phase_rows, phase_cols;  // ceil(H / s_h), ceil(W / s_w): positions of the largest phase
};

// The input rows (or columns) of one phase: first, first + s, ... below `size`.
struct PhaseLine {
  int first, count;
  __device__ PhaseLine(int phase, int pad, int stride, int size) {
    first = ((phase - pad) % stride + stride) % stride;
    count = first < size ? (size - 1 - first) / stride + 1 : 0;
  }
};

template <class T, int kChannels>
__global__ void __launch_bounds__(kThreads) conv2d_bwd_data_direct_kernel(const DirectBwdData<T> p) {
  const int phase_h = blockIdx.z / p.stride_w, phase_w = blockIdx.z % p.stride_w;
  const PhaseLine rows(phase_h, p.pad_h, p.stride_h, p.H), cols(phase_w, p.pad_w, p.stride_w, p.W);
  const int64_t index = int64_t(blockIdx.x) * kThreads + threadIdx.x;  // (n, row, col) of the phase
  if (index >= int64_t(p.batch) * rows.count * cols.count) return;
  const int col = int(index % cols.count);
  const int64_t rest = index / cols.count;
  const int row = int(rest % rows.count), n = int(rest / rows.count);
  const int ih = rows.first + row * p.stride_h, iw = cols.first + col * p.stride_w;
  const int group = blockIdx.y;

  const T* const go = p.grad_out + n * p.go.n + int64_t(group) * p.k_per_group * p.go.c;
  const T* const w = p.weight + int64_t(group) * p.k_per_group * p.w.n;
  float acc[kChannels] = {};
  for (int fh = 0; fh < p.kernel_h; ++fh) {
    const int y = ih + p.pad_h - fh * p.dilation_h;  // oh * s_h when the tap lands
    if ((fh * p.dilation_h) % p.stride_h != phase_h || y < 0) continue;
    const int oh = y / p.stride_h;
    if (oh >= p.out_h) continue;
    for (int fw = 0; fw < p.kernel_w; ++fw) {
      const int x = iw + p.pad_w - fw * p.dilation_w;
      if ((fw * p.dilation_w) % p.stride_w != phase_w || x < 0) continue;
      const int ow = x / p.stride_w;
      if (ow >= p.out_w) continue;
      const T* g = go + oh * p.go.h + ow * p.go.w;
      const T* wk = w + fh * p.w.h + fw * p.w.w;
      for (int k = 0; k < p.k_per_group; ++k, g += p.go.c, wk += p.w.n) {
        const float gv = to_float(*g);
#pragma unroll
        for (int c = 0; c < kChannels; ++c) acc[c] = fmaf(to_float(wk[c * p.w.c]), gv, acc[c]);
      }
    }
  }
  T* const gi = p.grad_in + n * p.gi.n + int64_t(group) * kChannels * p.gi.c + ih * p.gi.h + iw * p.gi.w;
#pragma unroll
  for (int c = 0; c < kChannels; ++c) gi[c * p.gi.c] = from_float<T>(acc[c]);
}

template <class T, int kChannels>
cudaError_t launch_direct(const DirectBwdData<T>& d, int phases, int groups, cudaStream_t stream) {
  const int64_t positions = int64_t(d.batch) * d.phase_rows * d.phase_cols;
  const dim3 grid(static_cast<unsigned>((positions + kThreads - 1) / kThreads), groups, phases);
  conv2d_bwd_data_direct_kernel<T, kChannels><<<grid, kThreads, 0, stream>>>(d);
  return cudaGetLastError();
}

}  // namespace

bool conv2d_bwd_data_direct_supported(const Conv2dBwdParams& b) {
  const Conv2dParams& p = b.fwd;
  const int64_t phases = int64_t(p.stride_h) * p.stride_w;
  const int64_t blocks = (int64_t(p.batch) * ceil_div(p.in_h, p.stride_h) * ceil_div(p.in_w, p.stride_w) +
                          kThreads - 1) / kThreads;
  return p.in_channels / p.groups <= kMaxChannels && phases <= common::kMaxGridYZ && blocks <= INT32_MAX;
}

cudaError_t conv2d_bwd_data_direct(const Conv2dBwdParams& b, cudaStream_t stream) {
  const Conv2dParams& p = b.fwd;
  return dispatch_dtype(p.dtype, [&](auto type_tag) -> cudaError_t {
    using T = decltype(type_tag);
    DirectBwdData<T> d;
    d.weight = static_cast<const T*>(p.weight);
    d.grad_out = static_cast<const T*>(b.grad_output);
    d.grad_in = static_cast<T*>(b.grad_input);
    d.w = p.w_stride, d.go = b.grad_out_stride, d.gi = b.grad_in_stride;
    d.batch = p.batch, d.H = p.in_h, d.W = p.in_w, d.out_h = p.out_h, d.out_w = p.out_w;
    d.kernel_h = p.kernel_h, d.kernel_w = p.kernel_w;
    d.stride_h = p.stride_h, d.stride_w = p.stride_w, d.pad_h = p.pad_h, d.pad_w = p.pad_w;
    d.dilation_h = p.dilation_h, d.dilation_w = p.dilation_w;
    d.k_per_group = p.out_channels / p.groups;
    d.phase_rows = ceil_div(p.in_h, p.stride_h), d.phase_cols = ceil_div(p.in_w, p.stride_w);
    const int phases = p.stride_h * p.stride_w;
    switch (p.in_channels / p.groups) {
      case 1: return launch_direct<T, 1>(d, phases, p.groups, stream);
      case 2: return launch_direct<T, 2>(d, phases, p.groups, stream);
      case 3: return launch_direct<T, 3>(d, phases, p.groups, stream);
      case 4: return launch_direct<T, 4>(d, phases, p.groups, stream);
      default: return cudaErrorInvalidValue;
    }
  });
}

}  // namespace im2win

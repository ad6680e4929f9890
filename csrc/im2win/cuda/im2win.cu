// The im2win transform itself (the exposed im2win::im2win op):
//   Ihat[n][c][oh][w * FH + fh] = I[n][c][oh*s_h + fh*dil_h - p_h][w - p_w], w < Wp = W + 2 p_w,
// zero outside the input. One block per output row (n, c, oh) at a time; consecutive threads
// write consecutive elements of the row (coalesced), and the reads of a warp fall on at most
// FH input rows, each a contiguous run along w.
#include <algorithm>

#include "conv2d_launch.h"
#include "conv2d_window.cuh"

namespace im2win {
namespace {

constexpr int kIm2winThreads = 256;

template <class T>
struct Im2winKernelParams {
  const T* input;  // (N, C, H, W) strided
  T* output;       // (N, C, Ho, Wp * FH) contiguous
  NCHWStrides in_stride;
  int in_h, in_w, row_length;  // row_length = Wp * FH
  int stride_h, pad_h, pad_w, dilation_h;
  int64_t rows;                 // N * C * Ho
  FastDivmod out_h, channels;   // row -> (n, c, oh)
  FastDivmod kernel_h;          // row element -> (w, fh)
};

template <class T>
__global__ void __launch_bounds__(kIm2winThreads) im2win_kernel(const Im2winKernelParams<T> p) {
  for (int64_t row = blockIdx.x; row < p.rows; row += gridDim.x) {
    int oh, c;
    const int n = p.channels.divmod(p.out_h.divmod(int(row), oh), c);
    const T* plane = p.input + n * p.in_stride.n + c * p.in_stride.c;
    T* out_row = p.output + row * p.row_length;
    for (int j = threadIdx.x; j < p.row_length; j += kIm2winThreads) {
      int fh;
      const int w = p.kernel_h.divmod(j, fh);
      const int ih = oh * p.stride_h + fh * p.dilation_h - p.pad_h, iw = w - p.pad_w;
      const bool inside = unsigned(ih) < unsigned(p.in_h) && unsigned(iw) < unsigned(p.in_w);
      out_row[j] = inside ? plane[ih * p.in_stride.h + iw * p.in_stride.w] : from_float<T>(0.f);
    }
  }
}

}  // namespace

cudaError_t im2win_cuda(const Im2winParams& p, cudaStream_t stream) {
  const int64_t rows = int64_t(p.batch) * p.channels * p.out_h;
  const int64_t row_length = int64_t(p.padded_w) * p.kernel_h;
  if (rows == 0 || row_length == 0) return cudaSuccess;
  if (rows > INT32_MAX || row_length > INT32_MAX) return cudaErrorInvalidValue;
  return dispatch_dtype(p.dtype, [&](auto type_tag) {
    using T = decltype(type_tag);
    const Im2winKernelParams<T> params{static_cast<const T*>(p.input),
                                       static_cast<T*>(p.output),
                                       p.in_stride,
                                       p.in_h,
                                       p.in_w,
                                       int(row_length),
                                       p.stride_h,
                                       p.pad_h,
                                       p.pad_w,
                                       p.dilation_h,
                                       rows,
                                       FastDivmod(p.out_h),
                                       FastDivmod(p.channels),
                                       FastDivmod(p.kernel_h)};
    const int blocks = int(std::min<int64_t>(rows, 1 << 20));
    im2win_kernel<T><<<blocks, kIm2winThreads, 0, stream>>>(params);
    return cudaGetLastError();
  });
}

}  // namespace im2win

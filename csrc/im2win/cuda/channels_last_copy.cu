// A strided (N, C, H, W) tensor copied into a contiguous channels-last (N, H, W, C_out) one
// (C_out >= C channels, zero past C), for
// the kernels that read windows in 16-byte runs of channels (conv2d_nhwc.cuh) when the
// caller's tensors are not; for fp32 weights optionally split on the way into TF32 big
// and small parts (3xTF32), once per call instead of once per block that reads them. One
// 32 x 32 (channels x pixels) tile per block goes through shared memory so that both the
// reads (along pixels) and the writes (along channels) are coalesced.
#include <algorithm>

#include "../../common/gemm_tile.cuh"
#include "conv2d_common.cuh"
#include "conv2d_kernels.cuh"

namespace im2win {
namespace {

constexpr int kTile = 32, kRowsPerPass = 8;
constexpr int kMaxGridZ = common::kMaxGridYZ;

// Where a value goes: dst as it is, or (kSplitTf32) its TF32 rounding to dst and, unless
// small is nullptr, the exact remainder to small.
template <class T, bool kSplitTf32>
struct ChannelsLastOut {
  T* dst;
  T* small;

  __device__ void store(int64_t i, T v) const {
    if constexpr (kSplitTf32) {
      const tile::Tf32Pair x = tile::split_tf32(v);
      dst[i] = __uint_as_float(x.big);
      if (small != nullptr) small[i] = __uint_as_float(x.small);
    } else {
      dst[i] = v;
    }
  }
};

template <class T, class Out>
__global__ void __launch_bounds__(kTile * kRowsPerPass)
    copy_to_channels_last_kernel(const T* __restrict__ src, NCHWStrides s, int N, int C, int H,
                                 FastDivmod width, int C_out, Out dst) {
  __shared__ T tile[kTile][kTile + 1];  // (channel, pixel); the pad spreads a column's banks
  const int pixels = H * width.divisor;
  const int p0 = blockIdx.x * kTile, c0 = blockIdx.y * kTile;
  for (int n = blockIdx.z; n < N; n += gridDim.z) {
    const T* const sample = src + n * s.n;
#pragma unroll
    for (int i = 0; i < kTile; i += kRowsPerPass) {
      const int c = c0 + threadIdx.y + i, pixel = p0 + threadIdx.x;
      if (c < C_out && pixel < pixels) {
        int x;
        const int y = width.divmod(pixel, x);
        tile[threadIdx.y + i][threadIdx.x] =
            c < C ? sample[c * s.c + y * s.h + x * s.w] : from_float<T>(0.f);
      }
    }
    __syncthreads();
    const int64_t out = int64_t(n) * pixels * C_out;
#pragma unroll
    for (int i = 0; i < kTile; i += kRowsPerPass) {
      const int pixel = p0 + threadIdx.y + i, c = c0 + threadIdx.x;
      if (c < C_out && pixel < pixels)
        dst.store(out + int64_t(pixel) * C_out + c, tile[threadIdx.x][threadIdx.y + i]);
    }
    __syncthreads();  // the tile is refilled for the next sample
  }
}

template <class T, class Out>
cudaError_t launch_copy(const T* src, const NCHWStrides& s, int N, int C, int H, int W, int C_out,
                        Out dst, cudaStream_t stream) {
  if (int64_t(N) * C_out * H * W == 0) return cudaSuccess;
  const dim3 grid(ceil_div(H * W, kTile), ceil_div(C_out, kTile), std::min(N, kMaxGridZ));
  const dim3 block(kTile, kRowsPerPass);
  copy_to_channels_last_kernel<T, Out>
      <<<grid, block, 0, stream>>>(src, s, N, C, H, FastDivmod(W), C_out, dst);
  return cudaGetLastError();
}

}  // namespace

template <class T>
cudaError_t copy_to_channels_last(const T* src, const NCHWStrides& s, int N, int C, int H, int W,
                                  int C_out, T* dst, cudaStream_t stream) {
  return launch_copy(src, s, N, C, H, W, C_out, ChannelsLastOut<T, false>{dst, nullptr}, stream);
}
template cudaError_t copy_to_channels_last(const float*, const NCHWStrides&, int, int, int, int,
                                           int, float*, cudaStream_t);
template cudaError_t copy_to_channels_last(const __half*, const NCHWStrides&, int, int, int, int,
                                           int, __half*, cudaStream_t);
template cudaError_t copy_to_channels_last(const __nv_bfloat16*, const NCHWStrides&, int, int,
                                           int, int, int, __nv_bfloat16*, cudaStream_t);

cudaError_t split_to_channels_last_tf32(const float* src, const NCHWStrides& s, int N, int C, int H,
                                        int W, int C_out, float* big, float* small,
                                        cudaStream_t stream) {
  return launch_copy(src, s, N, C, H, W, C_out, ChannelsLastOut<float, true>{big, small}, stream);
}

}  // namespace im2win

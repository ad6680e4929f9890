// Forward convolution of channels_last fp16/bf16 tensors on tensor cores (mma.sync): the
// channels-last im2win window of conv2d_nhwc.cuh, slices of 32 channels as 64-byte rows,
// with kStages - 1 slices in flight while one multiplies; the accumulator's neighbouring
// channels leave as one 32-bit word, since k is the output's innermost dimension.
#include <cstdint>
#include <type_traits>

#include "../../common/gemm_tile.cuh"
#include "../../common/tile.cuh"
#include "conv2d_kernels.cuh"
#include "conv2d_nhwc.cuh"

namespace im2win {
namespace {

constexpr int kThreads = kNhwcThreads;
constexpr int kStages = 4;

// BM output positions x BN output channels per CTA, 8 warps of WM x 32.
template <class T, int BN_>
struct NhwcTile {
  static constexpr int BM = 128, BN = BN_;
  static constexpr int kWarpsN = BN / 32, kWarpsM = 8 / kWarpsN;
  static constexpr int WM = BM / kWarpsM, WN = 32;
  using Layout = tile::SmemLayout<kSliceChannels>;  // rows padded to 40: ldmatrix conflict-free
  using Warp = tile::WarpMmaTile<T, WM, WN>;
  static constexpr int kAStage = Layout::elems(BM), kBStage = Layout::elems(BN);
  static constexpr int kSmemBytes = kStages * (kAStage + kBStage) * int(sizeof(T));
  static_assert(kWarpsM * kWarpsN == 8, "tile must split evenly over 8 warps");
};

template <class T, int BN>
__global__ void __launch_bounds__(kThreads) conv2d_fwd_nhwc_kernel(const NhwcConv<T> p) {
  using Tile = NhwcTile<T, BN>;
  using Layout = typename Tile::Layout;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  T* const sA = reinterpret_cast<T*>(smem_raw);  // (kStages, kAStage)
  T* const sB = sA + kStages * Tile::kAStage;    // (kStages, kBStage)

  const int m_block = blockIdx.x * Tile::BM, n_block = blockIdx.y * BN;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int wm = (warp % Tile::kWarpsM) * Tile::WM, wn = (warp / Tile::kWarpsM) * Tile::WN;

  const NhwcCopier<T, Tile::BM, BN, Layout> copier(p, m_block, threadIdx.x);
  SliceCursor<> next;  // the next slice to copy
  typename Tile::Warp acc;
  acc.zero();

  // Slices 0 .. kStages - 2 in flight; a group is committed even when empty so that
  // wait_group counts slices.
#pragma unroll
  for (int s = 0; s < kStages - 1; ++s) {
    if (s < p.slices) {
      copier.copy(p, next, n_block, sA + s * Tile::kAStage, sB + s * Tile::kBStage);
      next.advance(p);
    }
    tile::cp_async_commit();
  }
  for (int s = 0; s < p.slices; ++s) {
    tile::cp_async_wait<kStages - 2>();  // this thread's copies of slice s have landed
    __syncthreads();                     // everyone's; and slice s - 1's stage is free again
    const int ahead = s + kStages - 1;
    if (ahead < p.slices) {
      const int stage = ahead % kStages;
      copier.copy(p, next, n_block, sA + stage * Tile::kAStage, sB + stage * Tile::kBStage);
      next.advance(p);
    }
    tile::cp_async_commit();
    const int stage = s % kStages;
    acc.template mma_ABt<kSliceChannels, Layout, Layout>(sA + stage * Tile::kAStage,
                                                         sB + stage * Tile::kBStage, wm, wn, lane);
  }

  // Epilogue: row m of the tile is one output position, decoded once per row.
  using Warp = typename Tile::Warp;
#pragma unroll
  for (int mi = 0; mi < Warp::MI; ++mi)
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      const int m = m_block + wm + Warp::row(lane, mi, 2 * half);
      if (m >= p.positions) continue;
      const PlaneIndex o = p.out_positions(m);
      T* const out = p.output + o.n * p.out_n + o.y * p.out_h + o.x * p.out_w;
#pragma unroll
      for (int ni = 0; ni < Warp::NI; ++ni) {
        const int k = n_block + wn + Warp::col(lane, ni, 0);  // even; k + 1 is its neighbour
        if (k >= p.K) continue;
        const bool has_next = k + 1 < p.K;
        float v0 = acc.acc[mi][ni][2 * half], v1 = acc.acc[mi][ni][2 * half + 1];
        if (p.bias != nullptr) {
          v0 += to_float(p.bias[k]);
          if (has_next) v1 += to_float(p.bias[k + 1]);
        }
        if (p.pair_store && has_next) {
          *reinterpret_cast<uint32_t*>(out + k) = tile::pack_pair<T>(v0, v1);
        } else {
          out[k] = from_float<T>(v0);
          if (has_next) out[k + 1] = from_float<T>(v1);
        }
      }
    }
}

template <class T, int BN>
cudaError_t launch_nhwc(const Conv2dParams& p, cudaStream_t stream) {
  using Tile = NhwcTile<T, BN>;
  const auto kernel = conv2d_fwd_nhwc_kernel<T, BN>;
  const cudaError_t err =
      cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, Tile::kSmemBytes);
  if (err != cudaSuccess) return err;
  const NhwcConv<T> conv = make_nhwc_conv<T>(p, p.input, p.in_stride, p.weight, p.w_stride);
  const dim3 grid(ceil_div(conv.positions, Tile::BM), ceil_div(conv.K, BN));
  kernel<<<grid, kThreads, Tile::kSmemBytes, stream>>>(conv);
  return cudaGetLastError();
}

}  // namespace

bool conv2d_fwd_nhwc_supported(const Conv2dParams& p) {
  constexpr int kChunk = NhwcChunk<__half>::kElems;
  return (p.dtype == DType::kFloat16 || p.dtype == DType::kBFloat16) && p.groups == 1 &&
         p.in_channels % kChunk == 0 && p.out_stride.c == 1 &&
         nhwc_chunked<__half>(p.input, p.in_stride) && nhwc_chunked<__half>(p.weight, p.w_stride);
}

cudaError_t conv2d_fwd_nhwc(const Conv2dParams& p, int tile_n, cudaStream_t stream) {
  return dispatch_dtype(p.dtype, [&](auto type_tag) -> cudaError_t {
    using T = decltype(type_tag);
    if constexpr (std::is_same<T, float>::value) {
      return cudaErrorInvalidValue;
    } else {
      switch (tile_n) {
        case 64: return launch_nhwc<T, 64>(p, stream);
        case 128: return launch_nhwc<T, 128>(p, stream);
        default: return cudaErrorInvalidValue;
      }
    }
  });
}

}  // namespace im2win

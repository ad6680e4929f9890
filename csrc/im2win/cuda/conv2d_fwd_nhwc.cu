// Forward convolution of channels_last fp16/bf16 tensors on tensor cores: the channels-last
// form of the im2win window. Output position (n, oh, ow) reads its window in (fh, fw, c)
// order, c innermost, so every 8 channels of one tap are one 16-byte run of the input (and
// of a channels_last weight): windows go straight from the input into shared memory by
// cp.async, never through a window tensor. The GEMM is
//   out[pos][k] = sum over r = (fh, fw, c) of window[pos][r] * weight[k][r],
// both operands K-major in shared memory (slices of 32 channels, 64-byte rows), with
// kStages - 1 slices in flight while one multiplies; the accumulator's neighbouring channels
// leave as one 32-bit word, since k is the output's innermost dimension.
#include <cstdint>
#include <type_traits>

#include "../../common/gemm_tile.cuh"
#include "../../common/tile.cuh"
#include "conv2d_kernels.cuh"
#include "conv2d_window.cuh"

namespace im2win {
namespace {

constexpr int kThreads = 256;
constexpr int kStages = 4;
constexpr int kSliceChannels = 32;   // BK
constexpr int kChunk = 8;            // 16-bit elements in one 16-byte copy
constexpr int kChunksPerRow = kSliceChannels / kChunk;
constexpr int kRowStep = kThreads / kChunksPerRow;  // rows apart of one thread's copies

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
  static constexpr int kARows = BM / kRowStep, kBRows = BN / kRowStep;
  static_assert(kWarpsM * kWarpsN == 8 && kARows * kRowStep == BM && kBRows * kRowStep == BN,
                "tile must split evenly over 8 warps and the copying threads");
};

// The convolution as the kernel sees it: element strides (the channel stride is 1 for all
// three tensors), in-sample offsets in int (conv2d_launch.cu checks they fit).
template <class T>
struct NhwcConv {
  const T* input;   // (N, H, W, C)
  const T* weight;  // (K, FH, FW, C)
  const T* bias;    // (K,) or nullptr
  T* output;        // (N, Ho, Wo, K)
  int positions;    // N * Ho * Wo: the GEMM's rows
  int K, C, H, W, kernel_w;
  int stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w;
  int64_t in_n, out_n;  // sample strides
  int in_h, in_w, out_h, out_w, w_k, w_h, w_w;
  int slices;       // FH * FW * ceil(C / 32)
  bool pair_store;  // K even: channels (k, k + 1) are one aligned 32-bit word
  PlaneDecoder out_positions;
};

// The reduction one slice at a time: tap (fh, fw), and the first channel c0 within it.
struct SliceCursor {
  int fh = 0, fw = 0, c0 = 0;

  __device__ void advance(int channels, int kernel_w) {
    c0 += kSliceChannels;
    if (c0 < channels) return;
    c0 = 0;
    if (++fw == kernel_w) {
      fw = 0;
      ++fh;
    }
  }
};

// One thread's share of every slice: 16-byte chunk `chunk` of kARows window rows (output
// positions) and kBRows filter rows, each kRowStep rows apart. The window origins are
// decoded once; a slice only adds its tap.
template <class T, class Tile>
struct NhwcCopier {
  int chunk, row0;
  const T* sample[Tile::kARows];  // the input sample of each window row
  int ih0[Tile::kARows], iw0[Tile::kARows];
  bool position_ok[Tile::kARows];

  __device__ NhwcCopier(const NhwcConv<T>& p, int m_block, int tid)
      : chunk(tid % kChunksPerRow), row0(tid / kChunksPerRow) {
#pragma unroll
    for (int i = 0; i < Tile::kARows; ++i) {
      const int m = m_block + row0 + i * kRowStep;
      position_ok[i] = m < p.positions;
      const PlaneIndex o = p.out_positions(position_ok[i] ? m : 0);
      sample[i] = p.input + o.n * p.in_n;
      ih0[i] = o.y * p.stride_h - p.pad_h;
      iw0[i] = o.x * p.stride_w - p.pad_w;
    }
  }

  // Issues the copies of slice s into one stage; padding, channel tails and rows past the
  // tile's end are zero-filled without a read.
  __device__ void copy(const NhwcConv<T>& p, const SliceCursor& s, int n_block, T* sA, T* sB) const {
    using Layout = typename Tile::Layout;
    const int c = s.c0 + chunk * kChunk;
    const bool channel_ok = c < p.C;
    const int dy = s.fh * p.dilation_h, dx = s.fw * p.dilation_w;
#pragma unroll
    for (int i = 0; i < Tile::kARows; ++i) {
      const int ih = ih0[i] + dy, iw = iw0[i] + dx;
      const bool ok = position_ok[i] && channel_ok && unsigned(ih) < unsigned(p.H) &&
                      unsigned(iw) < unsigned(p.W);
      const T* src = ok ? sample[i] + ih * p.in_h + iw * p.in_w + c : p.input;
      tile::cp_async_16(sA + Layout::offset(row0 + i * kRowStep, chunk * kChunk), src, ok);
    }
    const int tap_offset = s.fh * p.w_h + s.fw * p.w_w + c;
#pragma unroll
    for (int j = 0; j < Tile::kBRows; ++j) {
      const int k = n_block + row0 + j * kRowStep;
      const bool ok = channel_ok && k < p.K;
      const T* src = ok ? p.weight + k * p.w_k + tap_offset : p.weight;
      tile::cp_async_16(sB + Layout::offset(row0 + j * kRowStep, chunk * kChunk), src, ok);
    }
  }
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

  const NhwcCopier<T, Tile> copier(p, m_block, threadIdx.x);
  SliceCursor next;  // the next slice to copy
  typename Tile::Warp acc;
  acc.zero();

  // Slices 0 .. kStages - 2 in flight; a group is committed even when empty so that
  // wait_group counts slices.
#pragma unroll
  for (int s = 0; s < kStages - 1; ++s) {
    if (s < p.slices) {
      copier.copy(p, next, n_block, sA + s * Tile::kAStage, sB + s * Tile::kBStage);
      next.advance(p.C, p.kernel_w);
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
      next.advance(p.C, p.kernel_w);
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

template <class T>
NhwcConv<T> make_nhwc_conv(const Conv2dParams& p) {
  NhwcConv<T> c;
  c.input = static_cast<const T*>(p.input);
  c.weight = static_cast<const T*>(p.weight);
  c.bias = static_cast<const T*>(p.bias);
  c.output = static_cast<T*>(p.output);
  c.positions = p.batch * p.out_h * p.out_w;
  c.K = p.out_channels, c.C = p.in_channels, c.H = p.in_h, c.W = p.in_w, c.kernel_w = p.kernel_w;
  c.stride_h = p.stride_h, c.stride_w = p.stride_w, c.pad_h = p.pad_h, c.pad_w = p.pad_w;
  c.dilation_h = p.dilation_h, c.dilation_w = p.dilation_w;
  c.in_n = p.in_stride.n, c.out_n = p.out_stride.n;
  c.in_h = int(p.in_stride.h), c.in_w = int(p.in_stride.w);
  c.out_h = int(p.out_stride.h), c.out_w = int(p.out_stride.w);
  c.w_k = int(p.w_stride.n), c.w_h = int(p.w_stride.h), c.w_w = int(p.w_stride.w);
  c.slices = p.kernel_h * p.kernel_w * ceil_div(p.in_channels, kSliceChannels);
  c.pair_store = p.out_channels % 2 == 0 && reinterpret_cast<uintptr_t>(p.output) % 4 == 0 &&
                 p.out_stride.n % 2 == 0 && p.out_stride.h % 2 == 0 && p.out_stride.w % 2 == 0;
  c.out_positions = PlaneDecoder(p.out_h, p.out_w);
  return c;
}

template <class T, int BN>
cudaError_t launch_nhwc(const Conv2dParams& p, cudaStream_t stream) {
  using Tile = NhwcTile<T, BN>;
  const auto kernel = conv2d_fwd_nhwc_kernel<T, BN>;
  const cudaError_t err =
      cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, Tile::kSmemBytes);
  if (err != cudaSuccess) return err;
  const NhwcConv<T> conv = make_nhwc_conv<T>(p);
  const dim3 grid(ceil_div(conv.positions, Tile::BM), ceil_div(conv.K, BN));
  kernel<<<grid, kThreads, Tile::kSmemBytes, stream>>>(conv);
  return cudaGetLastError();
}

bool aligned16(const void* ptr) { return reinterpret_cast<uintptr_t>(ptr) % 16 == 0; }
bool chunk_strides(const NCHWStrides& s) { return s.n % kChunk == 0 && s.h % kChunk == 0 && s.w % kChunk == 0; }

}  // namespace

bool conv2d_fwd_nhwc_supported(const Conv2dParams& p) {
  return (p.dtype == DType::kFloat16 || p.dtype == DType::kBFloat16) && p.groups == 1 &&
         p.in_channels % kChunk == 0 && p.in_stride.c == 1 && p.w_stride.c == 1 &&
         p.out_stride.c == 1 && chunk_strides(p.in_stride) && chunk_strides(p.w_stride) &&
         aligned16(p.input) && aligned16(p.weight);
}

cudaError_t conv2d_fwd_nhwc(const Conv2dParams& p, cudaStream_t stream) {
  // 64 output channels or fewer: a 64-wide tile wastes none of its columns on them.
  const bool narrow = p.out_channels <= 64;
  return dispatch_dtype(p.dtype, [&](auto type_tag) -> cudaError_t {
    using T = decltype(type_tag);
    if constexpr (std::is_same<T, float>::value) {
      return cudaErrorInvalidValue;
    } else {
      return narrow ? launch_nhwc<T, 64>(p, stream) : launch_nhwc<T, 128>(p, stream);
    }
  });
}

}  // namespace im2win

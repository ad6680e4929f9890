// Forward convolution on Hopper tensor cores (wgmma, sm_90a) for one group: the
// channels-last im2win window of conv2d_nhwc.cuh, in fp16, bf16, TF32, or exact fp32 as
// 3xTF32.
//
// A slice is one 128-byte line of the swizzled tile (32 fp32 or 64 16-bit values: channels
// of one tap, or taps of one filter row), cut into four k steps of 32 bytes (8 TF32 or 16
// 16-bit values), so shared-memory layout, copies, descriptors and register fragments are
// the same bytes for every dtype (wgmma.cuh).
//
// Before the GEMM, an input that is NCHW or whose C is not a whole number of 16-byte chunks
// is copied channels-last, with C padded (to 4, 8, 16 fp32 or 8, 16, 32 16-bit values when
// it is small: then a slice holds several taps; else to a whole chunk): two passes over the
// input buy 16-byte window copies with one address per tap instead of one per element. The
// weight is copied channels-last once per call when it cannot be read in chunks as it is,
// and always for fp32, where the copy splits it into TF32 big and small parts
// (channels_last_copy.cu).
//
// A block of 256 threads owns 128 output positions x BN output channels; each of its two
// warpgroups multiplies 64 of the positions. Per slice cp.async lands the raw windows and the
// weight (both parts for exact fp32) in a kStages ring; each warp reads its window rows into
// registers (ldmatrix), and its warpgroup issues one product per k step with A from
// registers and B from shared memory. Exact fp32 splits A in registers and issues small *
// big, big * small and big * big; tensor cores truncate as they accumulate (gemm_tile.cuh's
// 3xTF32 note), so it gathers a slice's twelve products in a fresh accumulator that reaches
// the sum by one ordinary add.
#include <cstdint>
#include <type_traits>

#include "../../common/gemm_tile.cuh"
#include "../../common/wgmma.cuh"
#include "conv2d_kernels.cuh"
#include "conv2d_nhwc.cuh"

namespace im2win {
namespace {

constexpr int kThreads = kNhwcThreads;  // two warpgroups
constexpr int kStages = 4;
constexpr int BM = 128;                 // output positions per block, 64 per warpgroup
constexpr int kWarpgroupRows = 64;
constexpr int kStepBytes = 32;          // one k step of every wgmma form used here

template <class T, int BN, bool kExact>
struct WgmmaTile {
  static_assert(!kExact || std::is_same<T, float>::value, "3xTF32 is for fp32 data");
  using Layout = tile::Sw128Layout<int(sizeof(T))>;
  using Mma = tile::Wgmma<T, BN>;
  static constexpr int kSliceValues = Layout::kCols;  // one 128-byte line
  // A stage: the windows (BM rows), the weight (BN rows) and, for exact fp32, the weight's
  // small parts (BN rows), each a whole number of 1024-byte atoms.
  static constexpr int kAElems = Layout::elems(BM), kBElems = Layout::elems(BN);
  static constexpr int kStageElems = kAElems + (kExact ? 2 : 1) * kBElems;
  static constexpr int kSmemBytes =  // + one atom to align the ring
      kStages * kStageElems * int(sizeof(T)) + Layout::kAtomBytes;
  static constexpr int kSteps = 128 / kStepBytes;  // k steps of one slice
  static constexpr int kStepWords = kStepBytes / 4;
  static_assert(kBElems * sizeof(T) % Layout::kAtomBytes == 0, "B must start on an atom");
};

// The ring's first byte rounded up to the swizzle atom: the dynamic shared window's base
// alignment is not promised.
template <class T>
__device__ T* align_to_atom(unsigned char* p) {
  constexpr uint32_t kAtom = tile::Sw128Fp32Layout::kAtomBytes;
  return reinterpret_cast<T*>(p + (kAtom - tile::smem_addr(p) % kAtom) % kAtom);
}

// Output channels (k, k + 1) of one position: one aligned store when pair_store allows.
template <class T>
__device__ void store_pair(T* out, int out_c, bool pair, float v0, float v1, bool has_next) {
  if (pair && has_next) {
    if constexpr (std::is_same<T, float>::value)
      *reinterpret_cast<float2*>(out) = make_float2(v0, v1);
    else
      *reinterpret_cast<uint32_t*>(out) = tile::pack_pair<T>(v0, v1);
  } else {
    out[0] = from_float<T>(v0);
    if (has_next) out[out_c] = from_float<T>(v1);
  }
}

template <class T, int BN, bool kExact>
__global__ void __launch_bounds__(kThreads, 1)
    conv2d_fwd_wgmma_kernel(const NhwcConv<T> p, int n_tiles) {
#if TILE_HAS_WGMMA
  using Tile = WgmmaTile<T, BN, kExact>;
  using Layout = typename Tile::Layout;
  using Mma = typename Tile::Mma;
  constexpr int kStageElems = Tile::kStageElems, kSteps = Tile::kSteps;
  extern __shared__ unsigned char smem_raw[];
  T* const ring = align_to_atom<T>(smem_raw);  // (kStages, kStageElems)

  const int m_block = (blockIdx.x / n_tiles) * BM, n_block = (blockIdx.x % n_tiles) * BN;
  const int warpgroup = threadIdx.x / 128, lane = threadIdx.x % 32;
  const int warp_rows = warpgroup * kWarpgroupRows + (threadIdx.x / 32) % 4 * 16;  // first A row
  const NhwcCopier<T, BM, BN, Layout, Tile::kSliceValues> copier(p, m_block, threadIdx.x);
  SliceCursor<Tile::kSliceValues> next;  // the next slice to copy
  auto copy_next = [&](T* stage) {
    copier.template copy<kExact>(p, next, n_block, stage, stage + Tile::kAElems,
                                 stage + Tile::kAElems + Tile::kBElems);
    next.advance(p);
  };

  float acc[Mma::kRegs];
  float fresh[Mma::kRegs];                         // exact fp32: the slice in flight's products
  uint32_t a_big[kSteps][4], a_small[kSteps][4];  // its window fragments, read by the tensor cores
#pragma unroll
  for (int i = 0; i < Mma::kRegs; ++i) acc[i] = 0.f;

  // Slices 0 .. kStages - 2 in flight; a group is committed even when empty so that
  // wait_group counts slices.
#pragma unroll
  for (int s = 0; s < kStages - 1; ++s) {
    if (s < p.slices) copy_next(ring + s * kStageElems);
    tile::cp_async_commit();
  }

  for (int s = 0; s < p.slices; ++s) {
    tile::cp_async_wait<kStages - 2>();  // this thread's copies of slice s have landed
    tile::wgmma_wait<0>();               // this warpgroup's products of slice s - 1 are done
    tile::wgmma_fence_registers(a_big);
    if constexpr (kExact) {
      tile::wgmma_fence_registers(a_small);
      tile::wgmma_fence_registers(fresh);
      if (s > 0) {
#pragma unroll
        for (int i = 0; i < Mma::kRegs; ++i) acc[i] += fresh[i];
      }
    }
    tile::fence_proxy_async();  // the landed weights are read by the tensor cores next
    __syncthreads();            // everyone's copies of s landed, everyone's products of s - 1 done

    const T* const stage = ring + (s % kStages) * kStageElems;
    const uint64_t b_big = tile::wgmma_desc_sw128(stage + Tile::kAElems);
#pragma unroll
    for (int k = 0; k < kSteps; ++k) {
      uint32_t raw[4];
      tile::load_a_sw128(raw, stage, warp_rows, Tile::kStepWords * k, lane);
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        if constexpr (std::is_same<T, float>::value) {  // TF32 operands: rounded, or split
          const tile::Tf32Pair x = tile::split_tf32(__uint_as_float(raw[i]));
          a_big[k][i] = x.big, a_small[k][i] = x.small;
        } else {
          a_big[k][i] = raw[i];
        }
      }
    }
    tile::wgmma_fence();
    if constexpr (kExact) {
      const uint64_t b_small = tile::wgmma_desc_sw128(stage + Tile::kAElems + Tile::kBElems);
#pragma unroll
      for (int k = 0; k < kSteps; ++k) {
        const uint64_t dk = k * tile::kWgmmaDescStep;
        Mma::mma(fresh, a_small[k], b_big + dk, k > 0);  // the first product overwrites
        Mma::mma(fresh, a_big[k], b_small + dk, 1);
        Mma::mma(fresh, a_big[k], b_big + dk, 1);
      }
    } else {
#pragma unroll
      for (int k = 0; k < kSteps; ++k)
        Mma::mma(acc, a_big[k], b_big + k * tile::kWgmmaDescStep, 1);
    }
    tile::wgmma_commit();

    // Slice s - 1's stage is free: every warpgroup passed the barrier after its products.
    const int ahead = s + kStages - 1;
    if (ahead < p.slices) copy_next(ring + (ahead % kStages) * kStageElems);
    tile::cp_async_commit();
  }
  tile::wgmma_wait<0>();
  if constexpr (kExact) {
    tile::wgmma_fence_registers(fresh);
    if (p.slices > 0) {
#pragma unroll
      for (int i = 0; i < Mma::kRegs; ++i) acc[i] += fresh[i];
    }
  } else {
    tile::wgmma_fence_registers(acc);
  }

  // Epilogue: thread (warp w of its warpgroup, lane g * 4 + t) holds rows 16 w + g and
  // 16 w + g + 8 of its warpgroup's 64, channel pairs 8 j + 2 t (wgmma.cuh).
  const int g = lane / 4, t = lane % 4;
#pragma unroll
  for (int half = 0; half < 2; ++half) {
    const int m = m_block + warp_rows + g + 8 * half;
    if (m >= p.positions) continue;
    const PlaneIndex o = p.out_positions(m);
    T* const out = p.output + o.n * p.out_n + o.y * p.out_h + o.x * p.out_w;
#pragma unroll
    for (int j = 0; j < BN / 8; ++j) {
      const int k = n_block + 8 * j + 2 * t;
      if (k >= p.K) continue;
      const bool has_next = k + 1 < p.K;
      float v0 = acc[4 * j + 2 * half], v1 = acc[4 * j + 2 * half + 1];
      if (p.bias != nullptr) {
        v0 += to_float(p.bias[k]);
        if (has_next) v1 += to_float(p.bias[k + 1]);
      }
      store_pair(out + k * p.out_c, p.out_c, p.pair_store, v0, v1, has_next);
    }
  }
#else
  __trap();  // never launched: device_caps() finds no sm_90a code for this device
#endif
}

template <class T, int BN, bool kExact>
cudaError_t launch_wgmma(const NhwcConv<T>& conv, cudaStream_t stream) {
  using Tile = WgmmaTile<T, BN, kExact>;
  const auto kernel = conv2d_fwd_wgmma_kernel<T, BN, kExact>;
  const cudaError_t err =
      cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, Tile::kSmemBytes);
  if (err != cudaSuccess) return err;
  const int n_tiles = ceil_div(conv.K, BN);
  // Blocks of one position tile are neighbours in launch order: its windows are read from
  // DRAM once and then from L2 by the blocks of the other channel tiles.
  const int blocks = ceil_div(conv.positions, BM) * n_tiles;
  kernel<<<blocks, kThreads, Tile::kSmemBytes, stream>>>(conv, n_tiles);
  return cudaGetLastError();
}

template <class T, bool kExact>
cudaError_t launch_wgmma(const NhwcConv<T>& conv, int tile_n, cudaStream_t stream) {
  switch (tile_n) {
    case 64: return launch_wgmma<T, 64, kExact>(conv, stream);
    case 128: return launch_wgmma<T, 128, kExact>(conv, stream);
    default: return cudaErrorInvalidValue;
  }
}

constexpr size_t kWorkspaceAlign = 256;
size_t aligned_bytes(int64_t elems, size_t elem_bytes) {
  const size_t bytes = size_t(elems) * elem_bytes;
  return (bytes + kWorkspaceAlign - 1) / kWorkspaceAlign * kWorkspaceAlign;
}

int chunk_elems(DType dtype) { return 16 / int(element_bytes(dtype)); }
int slice_values(DType dtype) { return 128 / int(element_bytes(dtype)); }

// Channels of the channels-last copies: a small C padded to 1, 2 or 4 chunks, which divide
// a slice (conv2d_nhwc.cuh packs taps then), else to a whole 16-byte chunk.
int padded_channels(const Conv2dParams& p) {
  const int C = p.in_channels, chunk = chunk_elems(p.dtype);
  if (C <= 4 * chunk) return C <= chunk ? chunk : C <= 2 * chunk ? 2 * chunk : 4 * chunk;
  return (C + chunk - 1) / chunk * chunk;
}
int64_t input_elems(const Conv2dParams& p) {
  return int64_t(p.batch) * padded_channels(p) * p.in_h * p.in_w;
}
int64_t weight_elems(const Conv2dParams& p) {
  return int64_t(p.out_channels) * padded_channels(p) * p.kernel_h * p.kernel_w;
}
// Whether a tensor of p's dtype can be read in 16-byte chunks along its channels as it is.
bool chunked(const Conv2dParams& p, const void* ptr, const NCHWStrides& s) {
  return p.dtype == DType::kFloat32 ? nhwc_chunked<float>(ptr, s) : nhwc_chunked<__half>(ptr, s);
}
bool input_needs_copy(const Conv2dParams& p) {
  return padded_channels(p) != p.in_channels || !chunked(p, p.input, p.in_stride);
}
// The weight's channels-last copies: fp32 always (the TF32 split: big, and small for exact
// fp32); 16-bit only where it cannot be read as it is.
int weight_copies(const Conv2dParams& p) {
  if (p.dtype == DType::kFloat32) return p.fp32_math == Fp32Math::kExact ? 2 : 1;
  return padded_channels(p) != p.in_channels || !chunked(p, p.weight, p.w_stride) ? 1 : 0;
}

NCHWStrides channels_last_strides(int C, int H, int W) {
  return {int64_t(H) * W * C, 1, int64_t(W) * C, C};
}

template <class T>
cudaError_t run_wgmma(const Conv2dParams& p, int tile_n, void* workspace, cudaStream_t stream) {
  unsigned char* free_space = static_cast<unsigned char*>(workspace);
  auto take = [&](int64_t elems) {
    T* const part = reinterpret_cast<T*>(free_space);
    free_space += aligned_bytes(elems, sizeof(T));
    return part;
  };
  const bool exact = std::is_same<T, float>::value && p.fp32_math == Fp32Math::kExact;
  const int C = padded_channels(p);
  cudaError_t err = cudaSuccess;
  const void* weight = p.weight;
  const T* w_small = nullptr;
  NCHWStrides w_stride = p.w_stride;
  if (weight_copies(p) > 0) {
    T* const w_big = take(weight_elems(p));
    T* const small = exact ? take(weight_elems(p)) : nullptr;
    const T* const src = static_cast<const T*>(p.weight);
    if constexpr (std::is_same<T, float>::value)
      err = split_to_channels_last_tf32(src, p.w_stride, p.out_channels, p.in_channels,
                                        p.kernel_h, p.kernel_w, C, w_big, small, stream);
    else
      err = copy_to_channels_last(src, p.w_stride, p.out_channels, p.in_channels, p.kernel_h,
                                  p.kernel_w, C, w_big, stream);
    weight = w_big, w_small = small, w_stride = channels_last_strides(C, p.kernel_h, p.kernel_w);
  }
  const void* input = p.input;
  NCHWStrides in_stride = p.in_stride;
  if (err == cudaSuccess && input_needs_copy(p)) {
    T* const copy = take(input_elems(p));
    err = copy_to_channels_last(static_cast<const T*>(p.input), p.in_stride, p.batch,
                                p.in_channels, p.in_h, p.in_w, C, copy, stream);
    input = copy, in_stride = channels_last_strides(C, p.in_h, p.in_w);
  }
  if (err != cudaSuccess) return err;
  const NhwcConv<T> conv = make_nhwc_conv<T>(p, input, in_stride, weight, w_stride, w_small, C,
                                             slice_values(p.dtype));
  if constexpr (std::is_same<T, float>::value) {
    if (exact) return launch_wgmma<T, true>(conv, tile_n, stream);
  }
  return launch_wgmma<T, false>(conv, tile_n, stream);
}

}  // namespace

// With a reduction of only a few slices the channels-last copies before the GEMM and the
// stores after it dominate, and the implicit GEMM, which copies nothing, is the faster path
// (the measurement is in benchmarks/NOTES.md).
constexpr int kMinSlices = 4;

bool conv2d_fwd_wgmma_supported(const Conv2dParams& p) {
  if (p.dtype != DType::kFloat32 && p.dtype != DType::kFloat16 && p.dtype != DType::kBFloat16)
    return false;
  if (p.groups != 1) return false;
  const int C = padded_channels(p);
  // In-sample offsets of the padded copies are ints, as everywhere (conv2d_plan.cu).
  return int64_t(C) * p.in_h * p.in_w < common::kMaxIntIndex &&
         plan_slices(C, p.kernel_h, p.kernel_w, slice_values(p.dtype)).slices >= kMinSlices;
}

// The weight's copies (weight_copies above), the input's copy if needed.
size_t conv2d_fwd_wgmma_workspace_bytes(const Conv2dParams& p) {
  const size_t elem = element_bytes(p.dtype);
  return (input_needs_copy(p) ? aligned_bytes(input_elems(p), elem) : 0) +
         weight_copies(p) * aligned_bytes(weight_elems(p), elem);
}

cudaError_t conv2d_fwd_wgmma(const Conv2dParams& p, int tile_n, void* workspace,
                             cudaStream_t stream) {
  return dispatch_dtype(p.dtype, [&](auto type_tag) {
    return run_wgmma<decltype(type_tag)>(p, tile_n, workspace, stream);
  });
}

}  // namespace im2win

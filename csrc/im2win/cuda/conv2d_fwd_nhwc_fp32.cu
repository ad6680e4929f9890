// Forward convolution of fp32 tensors on Hopper tensor cores (wgmma, sm_90a): the
// channels-last im2win window of conv2d_nhwc.cuh, exact fp32 as 3xTF32 or plain TF32.
//
// Before the GEMM, the weight is copied channels-last and split into TF32 big and small
// parts once per call (channels_last_copy.cu), and an NCHW input is copied channels-last:
// two passes over the input buy 16-byte window copies with one address per tap instead of
// one per element. Both copies pad C to a multiple of 4 (up to 16: to 4, 8 or 16, whose
// slices hold several taps), so any C takes this path.
//
// A block of 256 threads owns 128 output positions x BN output channels; each of its two
// warpgroups multiplies 64 of the positions. Per slice (32 values: channels of one tap, or
// taps of one filter row) cp.async lands the raw windows and both weight parts in a kStages
// ring; each warp reads its window rows into registers (ldmatrix), splits them there, and
// its warpgroup issues, per 8 values, small * big, big * small and big * big (3xTF32; TF32
// issues big * big alone) with A from registers and B from shared memory. Tensor cores
// truncate as they accumulate (gemm_tile.cuh's 3xTF32 note), so exact fp32 gathers a slice's
// twelve products in a fresh accumulator that reaches the sum by one ordinary add.
#include <atomic>
#include <cstdint>

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

template <int BN, bool kExact>
struct Fp32Tile {
  using Layout = tile::Sw128Fp32Layout;
  using Mma = tile::WgmmaTf32<BN>;
  // A stage: the windows (BM rows), the weight's big parts and, for exact fp32, its small
  // parts (BN rows each), each a whole number of 1024-byte atoms.
  static constexpr int kAElems = Layout::elems(BM), kBElems = Layout::elems(BN);
  static constexpr int kStageElems = kAElems + (kExact ? 2 : 1) * kBElems;
  static constexpr int kSmemBytes =  // + one atom to align the ring
      kStages * kStageElems * int(sizeof(float)) + Layout::kAtomBytes;
  static constexpr int kSteps = kSliceChannels / 8;  // k steps of one slice
  static_assert(kBElems * sizeof(float) % Layout::kAtomBytes == 0, "B must start on an atom");
};

// The ring's first byte rounded up to the swizzle atom: the dynamic shared window's base
// alignment is not promised.
__device__ float* align_to_atom(unsigned char* p) {
  constexpr uint32_t kAtom = tile::Sw128Fp32Layout::kAtomBytes;
  return reinterpret_cast<float*>(p + (kAtom - tile::smem_addr(p) % kAtom) % kAtom);
}

template <int BN, bool kExact>
__global__ void __launch_bounds__(kThreads, 1)
    conv2d_fwd_nhwc_fp32_kernel(const NhwcConv<float> p, int n_tiles) {
#if TILE_HAS_WGMMA
  using Tile = Fp32Tile<BN, kExact>;
  using Layout = typename Tile::Layout;
  using Mma = typename Tile::Mma;
  constexpr int kStageElems = Tile::kStageElems, kSteps = Tile::kSteps;
  extern __shared__ unsigned char smem_raw[];
  float* const ring = align_to_atom(smem_raw);  // (kStages, kStageElems)

  const int m_block = (blockIdx.x / n_tiles) * BM, n_block = (blockIdx.x % n_tiles) * BN;
  const int warpgroup = threadIdx.x / 128, lane = threadIdx.x % 32;
  const int warp_rows = warpgroup * kWarpgroupRows + (threadIdx.x / 32) % 4 * 16;  // first A row
  const NhwcCopier<float, BM, BN, Layout> copier(p, m_block, threadIdx.x);
  SliceCursor next;  // the next slice to copy
  auto copy_next = [&](float* stage) {
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

    const float* const stage = ring + (s % kStages) * kStageElems;
    const uint64_t b_big = tile::wgmma_desc_sw128(stage + Tile::kAElems);
#pragma unroll
    for (int k = 0; k < kSteps; ++k) {
      uint32_t raw[4];
      tile::load_a_tf32(raw, stage, warp_rows, 8 * k, lane);
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const tile::Tf32Pair x = tile::split_tf32(__uint_as_float(raw[i]));
        a_big[k][i] = x.big, a_small[k][i] = x.small;
      }
    }
    tile::wgmma_fence();
    if constexpr (kExact) {
      const uint64_t b_small = tile::wgmma_desc_sw128(stage + Tile::kAElems + Tile::kBElems);
#pragma unroll
      for (int k = 0; k < kSteps; ++k) {
        const uint64_t dk = k * tile::kWgmmaDescK8;
        Mma::mma(fresh, a_small[k], b_big + dk, k > 0);  // the first product overwrites
        Mma::mma(fresh, a_big[k], b_small + dk, 1);
        Mma::mma(fresh, a_big[k], b_big + dk, 1);
      }
    } else {
#pragma unroll
      for (int k = 0; k < kSteps; ++k) Mma::mma(acc, a_big[k], b_big + k * tile::kWgmmaDescK8, 1);
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
    float* const out = p.output + o.n * p.out_n + o.y * p.out_h + o.x * p.out_w;
#pragma unroll
    for (int j = 0; j < BN / 8; ++j) {
      const int k = n_block + 8 * j + 2 * t;
      if (k >= p.K) continue;
      const bool has_next = k + 1 < p.K;
      float v0 = acc[4 * j + 2 * half], v1 = acc[4 * j + 2 * half + 1];
      if (p.bias != nullptr) {
        v0 += p.bias[k];
        if (has_next) v1 += p.bias[k + 1];
      }
      if (p.pair_store && has_next) {
        *reinterpret_cast<float2*>(out + k) = make_float2(v0, v1);
      } else {
        out[k * p.out_c] = v0;
        if (has_next) out[(k + 1) * p.out_c] = v1;
      }
    }
  }
#else
  __trap();  // never launched: wgmma_compiled_in() said this binary has no sm_90a code
#endif
}

template <int BN, bool kExact>
cudaError_t launch_fp32(const NhwcConv<float>& conv, cudaStream_t stream) {
  using Tile = Fp32Tile<BN, kExact>;
  const auto kernel = conv2d_fwd_nhwc_fp32_kernel<BN, kExact>;
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

// ---- whether the loaded binary has the sm_90a kernels ---------------------------------

__device__ int g_wgmma_compiled_in;

__global__ void wgmma_probe_kernel() { g_wgmma_compiled_in = TILE_HAS_WGMMA; }

constexpr int kMaxDevices = 64;
std::atomic<int> g_wgmma_by_device[kMaxDevices];  // 0 unknown, 1 no, 2 yes

// One launch and one synchronous read per device and process: the driver picks the binary
// by the device, so only the device can say whether the sm_90a pass was built and chosen.
bool wgmma_compiled_in() {
  int device = 0;
  if (cudaGetDevice(&device) != cudaSuccess || device < 0 || device >= kMaxDevices) return false;
  int known = g_wgmma_by_device[device].load(std::memory_order_relaxed);
  if (known == 0) {
    int value = 0;
    wgmma_probe_kernel<<<1, 1>>>();
    const bool ok = cudaGetLastError() == cudaSuccess &&
                    cudaMemcpyFromSymbol(&value, g_wgmma_compiled_in, sizeof(int)) == cudaSuccess;
    known = ok && value == 1 ? 2 : 1;
    g_wgmma_by_device[device].store(known, std::memory_order_relaxed);
  }
  return known == 2;
}

constexpr size_t kWorkspaceAlign = 256;
size_t aligned_bytes(int64_t elems) {
  const size_t bytes = size_t(elems) * sizeof(float);
  return (bytes + kWorkspaceAlign - 1) / kWorkspaceAlign * kWorkspaceAlign;
}

// Channels of the channels-last copies: C up to 16 padded to 4, 8 or 16, which divide a
// slice (conv2d_nhwc.cuh packs taps then), else to a whole 16-byte chunk.
int padded_channels(int C) {
  if (C <= 16) return C <= 4 ? 4 : C <= 8 ? 8 : 16;
  constexpr int kElems = NhwcChunk<float>::kElems;
  return (C + kElems - 1) / kElems * kElems;
}
int64_t input_elems(const Conv2dParams& p) {
  return int64_t(p.batch) * padded_channels(p.in_channels) * p.in_h * p.in_w;
}
int64_t weight_elems(const Conv2dParams& p) {
  return int64_t(p.out_channels) * padded_channels(p.in_channels) * p.kernel_h * p.kernel_w;
}
bool input_needs_copy(const Conv2dParams& p) {
  return padded_channels(p.in_channels) != p.in_channels ||
         !nhwc_chunked<float>(p.input, p.in_stride);
}
int weight_parts(const Conv2dParams& p) { return p.fp32_math == Fp32Math::kExact ? 2 : 1; }

NCHWStrides channels_last_strides(int C, int H, int W) {
  return {int64_t(H) * W * C, 1, int64_t(W) * C, C};
}

}  // namespace

// With a reduction of only a few slices the channels-last copies before the GEMM and the
// stores after it dominate, and the implicit GEMM, which copies nothing, is the faster path
// (the measurement is in benchmarks/NOTES.md).
constexpr int kMinSlices = 4;

bool conv2d_fwd_nhwc_fp32_supported(const Conv2dParams& p) {
  if (p.dtype != DType::kFloat32 || p.groups != 1) return false;
  const int C = padded_channels(p.in_channels);
  // In-sample offsets of the padded copies are ints, as everywhere (conv2d_launch.cu).
  return int64_t(C) * p.in_h * p.in_w < INT32_MAX - 1024 &&
         plan_slices(C, p.kernel_h, p.kernel_w).slices >= kMinSlices && wgmma_compiled_in();
}

// The weight's parts always (big, and small for exact fp32), the input's copy if NCHW.
size_t conv2d_fwd_nhwc_fp32_workspace_bytes(const Conv2dParams& p) {
  return (input_needs_copy(p) ? aligned_bytes(input_elems(p)) : 0) +
         weight_parts(p) * aligned_bytes(weight_elems(p));
}

cudaError_t conv2d_fwd_nhwc_fp32(const Conv2dParams& p, void* workspace, cudaStream_t stream) {
  unsigned char* free_space = static_cast<unsigned char*>(workspace);
  auto take = [&](int64_t elems) {
    float* const part = reinterpret_cast<float*>(free_space);
    free_space += aligned_bytes(elems);
    return part;
  };
  const bool exact = p.fp32_math == Fp32Math::kExact;
  const int C = padded_channels(p.in_channels);
  float* const w_big = take(weight_elems(p));
  float* const w_small = exact ? take(weight_elems(p)) : nullptr;
  cudaError_t err = split_to_channels_last_tf32(static_cast<const float*>(p.weight), p.w_stride,
                                                p.out_channels, p.in_channels, p.kernel_h,
                                                p.kernel_w, C, w_big, w_small, stream);
  const void* input = p.input;
  NCHWStrides in_stride = p.in_stride;
  if (err == cudaSuccess && input_needs_copy(p)) {
    float* const copy = take(input_elems(p));
    err = copy_to_channels_last(static_cast<const float*>(p.input), p.in_stride, p.batch,
                                p.in_channels, p.in_h, p.in_w, C, copy, stream);
    input = copy, in_stride = channels_last_strides(C, p.in_h, p.in_w);
  }
  if (err != cudaSuccess) return err;
  const NhwcConv<float> conv = make_nhwc_conv<float>(
      p, input, in_stride, w_big, channels_last_strides(C, p.kernel_h, p.kernel_w), w_small, C);
  // 64 output channels or fewer: a 64-wide tile wastes none of its columns on them.
  if (p.out_channels <= 64)
    return exact ? launch_fp32<64, true>(conv, stream) : launch_fp32<64, false>(conv, stream);
  return exact ? launch_fp32<128, true>(conv, stream) : launch_fp32<128, false>(conv, stream);
}

}  // namespace im2win

// The implicit GEMM behind every im2win CUDA kernel (forward, input gradient, weight
// gradient): C_g (M x N) = A_g (M x R) B_g (R x N) for each group g, with both operands
// gathered from global memory on the fly by a Problem, staged through double-buffered shared
// memory, and multiplied either with fp32 FMAs (the paper's micro-kernel) or on tensor cores.
//
// A Problem (conv2d_problems.cuh has the three of a convolution) derives from GemmShape and
// provides
//   using Element;                                  // T of the tensors: float, __half, bf16
//   Problem at(int group, int split) const;         // the view of one block's group
//   AK a_k(int r) const;  T a_load(int m, const AK&) const;      // A[m][r], 0 <= m < M
//   BC b_col(int n) const;  BK b_k(int r) const;
//   T b_load(const BK&, const BC&) const;                        // B[r][n], zero in padding
//   CC c_col(int n) const;  void c_store(int m, const CC&, float) const;  // C[m][n]
// a_load and b_load are only called for r < R and m < M, n < N; the kernel zero-fills the rest.
#pragma once

#include <type_traits>
#include <utility>

#include "../../common/gemm_tile.cuh"
#include "conv2d_common.cuh"

namespace im2win {

// Extents of one batched GEMM. The reduction may be split into `splits` chunks of r_chunk
// (the weight gradient, whose reduction runs over every output position); blockIdx.z is
// group * splits + split.
struct GemmShape {
  int M, N, R;
  int groups;
  int splits;
  int r_chunk;
};

// ---- configurations (traits) ---------------------------------------------------------

// fp32 FMAs on a BM x BN x 8 tile, TM x TN per thread: exact fp32 and small-M problems (for
// fp16/bf16 it converts on the way into shared memory). A is stored transposed so a thread's
// rows are float4s.
template <int BM_, int BN_, int TM, int TN>
struct FfmaTraits {
  using SmemT = float;
  using Micro = tile::ThreadFfmaTile<BM_, BN_, TM, TN>;
  static constexpr int BM = BM_, BN = BN_, BK = 8;
  static constexpr int THREADS = Micro::THREADS;
  static constexpr int MIN_BLOCKS = 1;  // per SM, for __launch_bounds__
  // A^T rows padded by 4: a warp stores 8 k-rows x 4 m-columns per instruction, and the
  // pad spreads them over all 32 banks.
  static constexpr int LDA = BM + 4;
  static constexpr int LDB = BN;
  static constexpr int A_STAGE = BK * LDA;  // elements per pipeline stage
  static constexpr int B_STAGE = BK * LDB;

  __host__ __device__ static int a_offset(int m, int k) { return k * LDA + m; }
  __host__ __device__ static int b_offset(int k, int n) { return k * LDB + n; }
  template <class T>
  __host__ __device__ static float to_smem(T x) { return to_float(x); }

  struct Accumulator {
    Micro tile;

    __host__ __device__ void zero() { tile.zero(); }
    __host__ __device__ void multiply(const float* sA, const float* sB, int tid) {
      tile.template mma_AtB<BK, LDA, LDB>(sA, sB, tid / Micro::THREADS_N, tid % Micro::THREADS_N);
    }
    // f(tile row, tile column, value) for every accumulator of thread `tid`.
    template <class F>
    __host__ __device__ void for_each(int tid, F&& f) const {
      const int ty = tid / Micro::THREADS_N, tx = tid % Micro::THREADS_N;
TILE_UNROLL
      for (int j = 0; j < TN; ++j)
TILE_UNROLL
        for (int i = 0; i < TM; ++i) f(Micro::row(ty, i), Micro::col(tx, j), tile.acc[i][j]);
    }
  };
};

// Tensor cores (mma.sync) with fp32 accumulators; T = float means TF32, or with kSplit
// exact fp32 as 3xTF32 (shared memory then keeps the fp32 values). A k-slice is one 64-byte
// row per operand row: BK = 16 (fp32) or 32 (fp16/bf16).
template <class T, int BM_, int BN_, int WARPS_M, int WARPS_N, bool kSplit = false>
struct MmaTraits {
  static constexpr bool kTf32 = std::is_same<T, float>::value;
  using SmemT = T;
  static constexpr int BM = BM_, BN = BN_, BK = 64 / int(sizeof(T));
  static constexpr int THREADS = 32 * WARPS_M * WARPS_N;
  // 64-row tiles: two blocks an SM (registers capped at 128) hide each other's loads.
  static constexpr int MIN_BLOCKS = BM <= 64 ? 2 : 1;
  static constexpr int WM = BM / WARPS_M, WN = BN / WARPS_N;
  using Warp = tile::WarpMmaTile<T, WM, WN, kSplit>;
  // 16-bit: tile.cuh's layouts for ldmatrix (A rows padded to 40, B rows swizzled). TF32
  // reads 32-bit fragments instead, lane (g, t) at A[g][t] and B[t][g]: rows 20 and 136
  // floats apart put the 32 lanes of each load in 32 different banks.
  using LayoutA = std::conditional_t<kTf32, tile::PaddedLayout<BK + 4>, tile::SmemLayout<BK>>;
  using LayoutB = std::conditional_t<kTf32, tile::PaddedLayout<BN + 8>, tile::SmemLayout<BN>>;
  static constexpr int A_STAGE = LayoutA::elems(BM);  // (BM, BK) elements per pipeline stage
  static constexpr int B_STAGE = LayoutB::elems(BK);  // (BK, BN)

  __device__ static int a_offset(int m, int k) { return LayoutA::offset(m, k); }
  __device__ static int b_offset(int k, int n) { return LayoutB::offset(k, n); }
  __device__ static T to_smem(T x) {
    if constexpr (kTf32 && !kSplit)
      return tile::round_to_tf32(x);
    else
      return x;
  }

  struct Accumulator {
    Warp tile;

    __device__ void zero() { tile.zero(); }
    __device__ void multiply(const T* sA, const T* sB, int tid) {
      const int warp = tid / 32;
      tile.template mma_AB<BK, LayoutA, LayoutB>(sA, sB, (warp % WARPS_M) * WM,
                                                 (warp / WARPS_M) * WN, tid % 32);
    }
    template <class F>
    __device__ void for_each(int tid, F&& f) const {
      const int warp = tid / 32, lane = tid % 32;
      const int m0 = (warp % WARPS_M) * WM, n0 = (warp / WARPS_M) * WN;
#pragma unroll
      for (int ni = 0; ni < Warp::NI; ++ni)
#pragma unroll
        for (int c = 0; c < 4; ++c)
#pragma unroll
          for (int mi = 0; mi < Warp::MI; ++mi)
            f(m0 + Warp::row(lane, mi, c), n0 + Warp::col(lane, ni, c), tile.acc[mi][ni][c]);
    }
  };
};

using FfmaSmallTraits = FfmaTraits<32, 64, 4, 4>;  // 128 threads: M <= 32
// 8 warps of (BM / 2) x 32 on a BM x 128 tile; kSplit: exact fp32 as 3xTF32.
template <class T, int BM, bool kSplit = false>
using MmaTileTraits = MmaTraits<T, BM, 128, 2, 4, kSplit>;

// kMma*: 128-row tiles; the *Half ones 64 rows, for 32 < M <= 64 (K = 64 layers), where a
// 128-row tile would idle half its rows.
enum class GemmConfig { kFfmaSmall, kMma, kMmaHalf, kMma3xTf32, kMma3xTf32Half };

// The one chooser from a problem to a configuration. Exact fp32 with M > 32 runs as 3xTF32
// on tensor cores rather than on an FFMA tile like the paper's 128 x 128 one: three TF32
// products per step still outrun plain FMAs, at their accuracy (benchmarks/NOTES.md).
inline GemmConfig choose_gemm_config(DType dtype, Fp32Math math, int M) {
  if (M <= FfmaSmallTraits::BM) return GemmConfig::kFfmaSmall;  // a 64-row tile would idle
  const bool half = M <= 64;
  if (dtype == DType::kFloat32 && math == Fp32Math::kExact)
    return half ? GemmConfig::kMma3xTf32Half : GemmConfig::kMma3xTf32;
  return half ? GemmConfig::kMmaHalf : GemmConfig::kMma;
}

struct TileExtent {
  int bm, bn;
};

inline TileExtent tile_extent(GemmConfig config) {
  switch (config) {
    case GemmConfig::kFfmaSmall: return {FfmaSmallTraits::BM, FfmaSmallTraits::BN};
    case GemmConfig::kMmaHalf:
    case GemmConfig::kMma3xTf32Half: return {MmaTileTraits<float, 64>::BM, MmaTileTraits<float, 64>::BN};
    default: return {MmaTileTraits<float, 128>::BM, MmaTileTraits<float, 128>::BN};
  }
}

// ---- operand staging -----------------------------------------------------------------

// One BK-slice of both operands on its way global -> registers -> shared memory. Splitting
// the two halves lets the kernel issue the global reads of slice s + 1 before multiplying
// slice s (the paper's prefetch) and write them to the other shared stage afterwards.
//   A (BM x BK): thread reads reduction index tid % BK of rows tid / BK + i * A_ROW_STEP.
//   B (BK x BN): a warp reads 32 consecutive columns, i.e. neighbouring output positions
//   (coalesced at unit stride), of rows warp + j * B_ROW_STEP.
template <class Traits, class Problem>
struct OperandStage {
  using T = typename Problem::Element;
  using SmemT = typename Traits::SmemT;
  using BCol = decltype(std::declval<const Problem&>().b_col(0));
  static constexpr int BM = Traits::BM, BN = Traits::BN, BK = Traits::BK;
  static constexpr int THREADS = Traits::THREADS;
  static constexpr int A_ROW_STEP = THREADS / BK;
  static constexpr int A_ROWS = BM / A_ROW_STEP;
  static constexpr int B_ROW_STEP = THREADS / 32;
  static constexpr int B_ROWS = BK / B_ROW_STEP;
  static constexpr int B_COLS = BN / 32;
  static_assert(THREADS % BK == 0 && A_ROWS * A_ROW_STEP == BM, "A slice must split evenly");
  static_assert(B_ROWS * B_ROW_STEP == BK && B_COLS * 32 == BN, "B slice must split evenly");

  int m_block;                // first tile row in the GEMM
  int a_k, a_m;               // this thread's A column and first A row (tile coordinates)
  int b_k, b_n;               // this thread's first B row and first B column
  BCol b_cols[B_COLS];        // decoded B columns, fixed for the whole reduction
  bool b_col_valid[B_COLS];
  T rA[A_ROWS];               // (A_ROWS) registers of the slice in flight
  T rB[B_ROWS][B_COLS];       // (B_ROWS, B_COLS)

  __host__ __device__ OperandStage(const Problem& p, int m_block_, int n_block, int tid)
      : m_block(m_block_), a_k(tid % BK), a_m(tid / BK), b_k(tid / 32), b_n(tid % 32) {
TILE_UNROLL
    for (int j = 0; j < B_COLS; ++j) {
      const int n = n_block + b_n + j * 32;
      b_col_valid[j] = n < p.N;
      b_cols[j] = p.b_col(b_col_valid[j] ? n : 0);
    }
  }

  // Global -> registers: the slice starting at reduction index r0, zero from r_end on.
  __host__ __device__ void load(const Problem& p, int r0, int r_end) {
    const T zero = from_float<T>(0.f);
    {
      const int r = r0 + a_k;
      const bool r_valid = r < r_end;
      const auto ak = p.a_k(r_valid ? r : r0);
TILE_UNROLL
      for (int i = 0; i < A_ROWS; ++i) {
        const int m = m_block + a_m + i * A_ROW_STEP;
        rA[i] = r_valid && m < p.M ? p.a_load(m, ak) : zero;
      }
    }
TILE_UNROLL
    for (int i = 0; i < B_ROWS; ++i) {
      const int r = r0 + b_k + i * B_ROW_STEP;
      const bool r_valid = r < r_end;
      const auto bk = p.b_k(r_valid ? r : r0);
TILE_UNROLL
      for (int j = 0; j < B_COLS; ++j)
        rB[i][j] = r_valid && b_col_valid[j] ? p.b_load(bk, b_cols[j]) : zero;
    }
  }

  // Registers -> one shared-memory stage, in the configuration's layout and operand type.
  __host__ __device__ void store(SmemT* sA, SmemT* sB) const {
TILE_UNROLL
    for (int i = 0; i < A_ROWS; ++i)
      sA[Traits::a_offset(a_m + i * A_ROW_STEP, a_k)] = Traits::to_smem(rA[i]);
TILE_UNROLL
    for (int i = 0; i < B_ROWS; ++i)
TILE_UNROLL
      for (int j = 0; j < B_COLS; ++j)
        sB[Traits::b_offset(b_k + i * B_ROW_STEP, b_n + j * 32)] = Traits::to_smem(rB[i][j]);
  }
};

// ---- the kernel ----------------------------------------------------------------------

template <class Traits, class Problem>
__global__ void __launch_bounds__(Traits::THREADS, Traits::MIN_BLOCKS) implicit_gemm_kernel(const Problem problem) {
  using SmemT = typename Traits::SmemT;
  constexpr int BK = Traits::BK;
  // Two stages of A (A_STAGE) and B (B_STAGE): 6,400 B (FFMA 32x64),
  // 36,864 / 26,624 B (fp16/bf16 tensor cores, 128 / 64 rows), 37,888 / 27,648 B (TF32,
  // 3xTF32).
  constexpr int kSmemBytes = 2 * (Traits::A_STAGE + Traits::B_STAGE) * int(sizeof(SmemT));
  __shared__ __align__(16) unsigned char smem[kSmemBytes];
  SmemT* const sA = reinterpret_cast<SmemT*>(smem);  // (2, A_STAGE)
  SmemT* const sB = sA + 2 * Traits::A_STAGE;         // (2, B_STAGE)

  // Which tile of which group, and which chunk of the reduction, this block owns.
  const int group = blockIdx.z / problem.splits, split = blockIdx.z % problem.splits;
  const int m_block = blockIdx.y * Traits::BM, n_block = blockIdx.x * Traits::BN;
  const int r_begin = split * problem.r_chunk;
  const int r_end = r_begin + min(problem.R - r_begin, problem.r_chunk);
  const Problem p = problem.at(group, split);

  OperandStage<Traits, Problem> stage(p, m_block, n_block, threadIdx.x);
  typename Traits::Accumulator acc;
  acc.zero();

  stage.load(p, r_begin, r_end);
  stage.store(sA, sB);
  __syncthreads();

  int smem_pipe_read = 0;
  for (int r0 = r_begin; r0 < r_end; r0 += BK) {
    const int smem_pipe_write = smem_pipe_read ^ 1;
    const bool has_next = r0 + BK < r_end;
    // Prefetch: the next slice's global reads are in flight during this slice's products.
    if (has_next) stage.load(p, r0 + BK, r_end);
    // C += A B on this slice.
    acc.multiply(sA + smem_pipe_read * Traits::A_STAGE, sB + smem_pipe_read * Traits::B_STAGE,
                 threadIdx.x);
    // The other stage was last read before the previous barrier, so it is free.
    if (has_next) stage.store(sA + smem_pipe_write * Traits::A_STAGE,
                              sB + smem_pipe_write * Traits::B_STAGE);
    __syncthreads();
    smem_pipe_read = smem_pipe_write;
  }

  acc.for_each(threadIdx.x, [&](int row, int col, float value) {
    const int m = m_block + row, n = n_block + col;
    if (m < p.M && n < p.N) p.c_store(m, p.c_col(n), value);
  });
}

// ---- launch --------------------------------------------------------------------------

template <class Traits, class Problem>
cudaError_t launch_gemm_with(const Problem& p, cudaStream_t stream) {
  const dim3 grid(ceil_div(p.N, Traits::BN), ceil_div(p.M, Traits::BM), p.groups * p.splits);
  implicit_gemm_kernel<Traits, Problem><<<grid, Traits::THREADS, 0, stream>>>(p);
  return cudaGetLastError();
}

template <class Problem>
cudaError_t launch_implicit_gemm(const Problem& p, GemmConfig config, cudaStream_t stream) {
  using T = typename Problem::Element;
  if (p.M <= 0 || p.N <= 0 || p.R <= 0 || p.groups <= 0) return cudaSuccess;
  switch (config) {
    case GemmConfig::kFfmaSmall: return launch_gemm_with<FfmaSmallTraits>(p, stream);
    case GemmConfig::kMma: return launch_gemm_with<MmaTileTraits<T, 128>>(p, stream);
    case GemmConfig::kMmaHalf: return launch_gemm_with<MmaTileTraits<T, 64>>(p, stream);
    case GemmConfig::kMma3xTf32:
    case GemmConfig::kMma3xTf32Half:
      if constexpr (std::is_same<T, float>::value) {
        if (config == GemmConfig::kMma3xTf32Half) return launch_gemm_with<MmaTileTraits<float, 64, true>>(p, stream);
        return launch_gemm_with<MmaTileTraits<float, 128, true>>(p, stream);
      }
      return cudaErrorInvalidValue;
  }
  return cudaErrorInvalidValue;
}

}  // namespace im2win

// Products of shared-memory tiles into fp32 register accumulators, named after the math:
//   ThreadFfmaTile::mma_AtB  C (TM x TN per thread) += A B, A stored k-major (BK, BM) = A^T
//   WarpMmaTile::mma_AB      C (WM x WN per warp)   += A B, A stored (BM, BK), B (BK, BN)
// The 16-bit tensor-core atoms, fragment loaders and SmemLayout are tile.cuh's; the TF32
// atoms and a plain padded layout, which only these products use so far, are below. Shared
// layouts are template arguments (leading dimensions or layout types) so the padding or
// swizzle stays visible where the tile is declared.
#pragma once

#include <cstdint>
#include <type_traits>

#include "tile.cuh"

// `#pragma unroll` for loops in __host__ __device__ code: the host compiler does not know the
// pragma (and warns), the device compiler must see it.
#if defined(__CUDA_ARCH__)
#define TILE_UNROLL _Pragma("unroll")
#else
#define TILE_UNROLL
#endif

namespace tile {

// ---- TF32 atoms ----------------------------------------------------------------------
// m16n8k8 fragments, with g = lane / 4 and t = lane % 4 (PTX ISA):
//   A (16x8):  a0 = (g, t)  a1 = (g+8, t)  a2 = (g, t+4)  a3 = (g+8, t+4)
//   B (8x8):   b0 = (t, g)  b1 = (t+4, g);  C as for m16n8k16 (tile.cuh)

// c (16 x 8, fp32) += a (16 x 8) * b (8 x 8), operands are tf32 bit patterns.
__device__ __forceinline__ void mma_m16n8k8_tf32(float (&c)[4], const FragA& a, uint32_t b0,
                                                 uint32_t b1) {
  asm("mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 "
      "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a.x[0]), "r"(a.x[1]), "r"(a.x[2]), "r"(a.x[3]), "r"(b0), "r"(b1));
}

// fp32 -> tf32, rounded to nearest (ties away), as a float whose low 13 mantissa bits are
// zero. Rounding once here beats the truncation mma would otherwise apply.
__device__ __forceinline__ float round_to_tf32(float x) {
  uint32_t bits;
  asm("cvt.rna.tf32.f32 %0, %1;\n" : "=r"(bits) : "f"(x));
  return __uint_as_float(bits);
}

// x = big + small for 3xTF32: big is x rounded to tf32 on its bits (2 integer ops where
// cvt.rna adds an infinity test: that test was ~10% of the 3xTF32 kernel's instructions),
// small the exact fp32 remainder, passed whole: the mma reads its top 19 bits, a 2^-21
// relative error, modelled as no loss against rounding it. x = +-inf leaves small = NaN,
// as cvt.rna's split did.
struct Tf32Pair {
  uint32_t big, small;
};
__device__ __forceinline__ Tf32Pair split_tf32(float x) {
  const uint32_t big = (__float_as_uint(x) + 0x1000u) & 0xffffe000u;
  return {big, __float_as_uint(x - __uint_as_float(big))};
}

// A row-major tile with rows kRowStride elements apart, the padding chosen by the caller
// for its access pattern (the interface of tile::SmemLayout).
template <int kRowStride>
struct PaddedLayout {
  static constexpr int elems(int rows) { return rows * kRowStride; }
  __host__ __device__ static int offset(int row, int col) { return row * kRowStride + col; }
};

// ---- products ------------------------------------------------------------------------

// One thread's TM x TN block of a BM x BN tile computed with fp32 FMAs (the SGEMM
// micro-kernel). A thread owns TM / 4 bands of 4 rows and TN / 4 bands of 4 columns, the bands
// BM / (TM / 4) rows apart: threads of a warp then read adjacent float4s of a k-row of shared
// memory (no bank conflicts) and the reads per k are TM / 4 + TN / 4 float4 for TM * TN FMAs.
template <int BM, int BN, int TM, int TN>
struct ThreadFfmaTile {
  static_assert(TM % 4 == 0 && TN % 4 == 0, "float4 bands");
  static constexpr int THREADS_M = BM / TM;
  static constexpr int THREADS_N = BN / TN;
  static constexpr int THREADS = THREADS_M * THREADS_N;
  static_assert(THREADS_M * TM == BM && THREADS_N * TN == BN, "tile must split evenly");

  float acc[TM][TN];

  __host__ __device__ void zero() {
TILE_UNROLL
    for (int i = 0; i < TM; ++i)
TILE_UNROLL
      for (int j = 0; j < TN; ++j) acc[i][j] = 0.f;
  }

  // Tile row of acc[i][.] for thread row ty, tile column of acc[.][j] for thread column tx.
  __host__ __device__ static int row(int ty, int i) {
    return (i / 4) * (THREADS_M * 4) + ty * 4 + i % 4;
  }
  __host__ __device__ static int col(int tx, int j) {
    return (j / 4) * (THREADS_N * 4) + tx * 4 + j % 4;
  }

  // acc += A B over BK; sA is A^T (BK, LDA >= BM), sB is B (BK, LDB >= BN), both 16-byte
  // aligned with LDA, LDB multiples of 4.
  template <int BK, int LDA, int LDB>
  __host__ __device__ void mma_AtB(const float* sA, const float* sB, int ty, int tx) {
    static_assert(LDA % 4 == 0 && LDB % 4 == 0, "float4 rows");
TILE_UNROLL
    for (int k = 0; k < BK; ++k) {
      float rA[TM], rB[TN];  // (TM) and (TN) operands of this k
TILE_UNROLL
      for (int i = 0; i < TM; i += 4) {
        const float4 v = *reinterpret_cast<const float4*>(&sA[k * LDA + row(ty, i)]);
        rA[i] = v.x, rA[i + 1] = v.y, rA[i + 2] = v.z, rA[i + 3] = v.w;
      }
TILE_UNROLL
      for (int j = 0; j < TN; j += 4) {
        const float4 v = *reinterpret_cast<const float4*>(&sB[k * LDB + col(tx, j)]);
        rB[j] = v.x, rB[j + 1] = v.y, rB[j + 2] = v.z, rB[j + 3] = v.w;
      }
TILE_UNROLL
      for (int i = 0; i < TM; ++i)
TILE_UNROLL
        for (int j = 0; j < TN; ++j) acc[i][j] = fmaf(rA[i], rB[j], acc[i][j]);
    }
  }
};

// One warp's WM x WN fp32 accumulator on tensor cores. T is the shared-memory operand type:
// __half or __nv_bfloat16 (mma m16n8k16, fragments through ldmatrix) or float (mma m16n8k8,
// fragments through 32-bit shared loads: ldmatrix moves 16-bit halves) holding either tf32
// values or, with kSplit3xTf32, full fp32 values split into three tf32 products.
template <class T, int WM, int WN, bool kSplit3xTf32 = false>
struct WarpMmaTile {
  static constexpr bool kTf32 = std::is_same<T, float>::value;
  static_assert(kTf32 || !kSplit3xTf32, "3xTF32 splits fp32 operands");
  static constexpr int MI = WM / 16;  // mma tiles along m
  static constexpr int NI = WN / 8;   // mma tiles along n
  static constexpr int K_STEP = kTf32 ? 8 : 16;
  static_assert(MI * 16 == WM && NI * 8 == WN, "warp tile must be whole mma tiles");
  static_assert(kTf32 || NI % 2 == 0, "load_b_kn gives B for two n tiles at once");

  float acc[MI][NI][4];

  __device__ void zero() {
#pragma unroll
    for (int mi = 0; mi < MI; ++mi)
#pragma unroll
      for (int ni = 0; ni < NI; ++ni)
#pragma unroll
        for (int c = 0; c < 4; ++c) acc[mi][ni][c] = 0.f;
  }

  // Warp-tile row and column of acc[mi][ni][c] held by `lane` (the mma accumulator layout).
  __device__ static int row(int lane, int mi, int c) { return mi * 16 + lane / 4 + (c / 2) * 8; }
  __device__ static int col(int lane, int ni, int c) { return ni * 8 + (lane % 4) * 2 + c % 2; }

  // acc += A B over BK for the warp's rows [m0, m0 + WM) of sA (BM, BK) and columns
  // [n0, n0 + WN) of sB (BK, BN), both addressed through their layouts' offset(row, col).
  template <int BK, class LayoutA, class LayoutB>
  __device__ void mma_AB(const T* sA, const T* sB, int m0, int n0, int lane) {
    static_assert(BK % K_STEP == 0, "whole mma k steps");
    if constexpr (kTf32) {
      const int g = lane / 4, t = lane % 4;
#pragma unroll
      for (int k0 = 0; k0 < BK; k0 += K_STEP) {
        Tf32Pair rA[MI][4];  // (WM, K_STEP) fragments; .small unused without the split
#pragma unroll
        for (int mi = 0; mi < MI; ++mi) {
          const int m = m0 + mi * 16 + g;
          rA[mi][0] = tf32_operand(sA[LayoutA::offset(m, k0 + t)]);
          rA[mi][1] = tf32_operand(sA[LayoutA::offset(m + 8, k0 + t)]);
          rA[mi][2] = tf32_operand(sA[LayoutA::offset(m, k0 + t + 4)]);
          rA[mi][3] = tf32_operand(sA[LayoutA::offset(m + 8, k0 + t + 4)]);
        }
#pragma unroll
        for (int ni = 0; ni < NI; ++ni) {
          const int n = n0 + ni * 8 + g;
          const Tf32Pair b0 = tf32_operand(sB[LayoutB::offset(k0 + t, n)]);
          const Tf32Pair b1 = tf32_operand(sB[LayoutB::offset(k0 + t + 4, n)]);
#pragma unroll
          for (int mi = 0; mi < MI; ++mi) {
            const FragA big{{rA[mi][0].big, rA[mi][1].big, rA[mi][2].big, rA[mi][3].big}};
            if constexpr (kSplit3xTf32) {
              // Tensor cores round toward zero as they accumulate: over K ~ 1000 into one
              // accumulator that bias grows to a relative error of ~1e-5. Each k step's three
              // products (small ones first) go to a fresh accumulator that reaches acc
              // through a round-to-nearest add, which keeps the error near 3e-7.
              const FragA small{{rA[mi][0].small, rA[mi][1].small, rA[mi][2].small, rA[mi][3].small}};
              float step[4] = {0.f, 0.f, 0.f, 0.f};
              mma_m16n8k8_tf32(step, small, b0.big, b1.big);
              mma_m16n8k8_tf32(step, big, b0.small, b1.small);
              mma_m16n8k8_tf32(step, big, b0.big, b1.big);
#pragma unroll
              for (int r = 0; r < 4; ++r) acc[mi][ni][r] += step[r];
            } else {
              mma_m16n8k8_tf32(acc[mi][ni], big, b0.big, b1.big);
            }
          }
        }
      }
    } else {
      mma_16bit<BK, LayoutA>(sA, m0, lane, [&](int k0, int n) { return load_b_kn<LayoutB>(sB, k0, n0 + n, lane); });
    }
  }

  // acc += A B with B stored by columns, sBt[n][k] (both operands K-major, as channels-last
  // convolution tiles are): ldmatrix without transposition gives B's fragments. 16-bit only.
  template <int BK, class LayoutA, class LayoutBt>
  __device__ void mma_ABt(const T* sA, const T* sBt, int m0, int n0, int lane) {
    static_assert(!kTf32 && BK % K_STEP == 0, "16-bit operands, whole mma k steps");
    mma_16bit<BK, LayoutA>(sA, m0, lane, [&](int k0, int n) { return load_b_nk<LayoutBt>(sBt, n0 + n, k0, lane); });
  }

 private:
  // A shared fp32 value as an mma operand: already tf32 (rounded on its way into shared
  // memory), or split in two for 3xTF32.
  __device__ static Tf32Pair tf32_operand(float x) {
    if constexpr (kSplit3xTf32) return split_tf32(x);
    return {__float_as_uint(x), 0u};
  }

  // The 16-bit product over BK: A's fragments by ldmatrix, B's two n8 tiles at warp column n
  // from load_b(k0, n).
  template <int BK, class LayoutA, class LoadB>
  __device__ void mma_16bit(const T* sA, int m0, int lane, LoadB&& load_b) {
#pragma unroll
    for (int k0 = 0; k0 < BK; k0 += K_STEP) {
      FragA rA[MI];  // (WM, K_STEP) fragments
#pragma unroll
      for (int mi = 0; mi < MI; ++mi) rA[mi] = load_a<LayoutA>(sA, m0 + mi * 16, k0, lane);
#pragma unroll
      for (int nj = 0; nj < NI; nj += 2) {
        const FragB2 rB = load_b(k0, nj * 8);  // (K_STEP, 16)
#pragma unroll
        for (int mi = 0; mi < MI; ++mi) mma_16x16<T>(acc[mi][nj], acc[mi][nj + 1], rA[mi], rB);
      }
    }
  }
};

}  // namespace tile

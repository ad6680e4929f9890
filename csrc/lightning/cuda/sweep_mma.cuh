// The decayed sweep (sweep.h) on tensor cores for fp16 / bf16 inputs.
//
// One CTA owns one (sequence, head, slice of width_c) and walks the sequence in blocks of
// 64 rows. Its warps split by role, so the two halves of each block run side by side:
//   4 output warps: rows 16w..16w+15 of O_t, from a_t, b_t, c_t and S_{t-1};
//   4 state warps:  S_t = lambda^m S_{t-1} + ..., each holding kWidthAB/4 rows of the fp32
//                   state in registers for the whole sweep.
// Shared memory holds two stages of the a, b, c blocks (cp.async: block t+1 loads while t
// computes) and two 16-bit copies of S (the state warps write S_t while the output warps
// read S_{t-1}), so one barrier per block suffices.
#pragma once

#include "../../common/tile.cuh"
#include "sweep.h"
#include "sweep_common.cuh"

namespace lightning {

template <typename T, int kWidthAB_, int kSliceC_>
struct SweepMmaTraits {
  static constexpr int kWidthAB = kWidthAB_;  // a/b columns in shared memory (masked past width_ab)
  static constexpr int kSliceC = kSliceC_;    // columns of c / out / S per CTA
  static constexpr int kBlock = 64;           // rows per block
  static constexpr int kOutputWarps = 4;  // 16 rows of the block each
  static constexpr int kStateWarps = 4;   // kWidthAB / 4 rows of S each
  static constexpr int kThreads = (kOutputWarps + kStateWarps) * 32;
  using LayoutAB = tile::SmemLayout<kWidthAB>;  // a, b blocks
  using LayoutC = tile::SmemLayout<kSliceC>;    // c blocks and the 16-bit state
  static constexpr int kStateRowsPerWarp = kWidthAB / kStateWarps;
  static constexpr int kStateMTiles = kStateRowsPerWarp / 16;
  static constexpr int kCTiles = kSliceC / 8;  // n8 tiles across the slice

  // Shared memory, in elements of T (then the fp32 decay table).
  static constexpr int kStageA = LayoutAB::elems(kBlock);  // (kBlock, kWidthAB)
  static constexpr int kStageB = LayoutAB::elems(kBlock);  // (kBlock, kWidthAB)
  static constexpr int kStageC = LayoutC::elems(kBlock);   // (kBlock, kSliceC)
  static constexpr int kState = LayoutC::elems(kWidthAB);  // (kWidthAB, kSliceC)
  static constexpr size_t kSmemBytes =
      (2 * (kStageA + kStageB + kStageC + kState)) * sizeof(T) + (kBlock + 1) * sizeof(float);
  // Two CTAs per SM when their shared memory fits (228 KiB an SM, 1 KiB reserved a CTA):
  // with one barrier per block, the other CTA keeps the tensor cores busy meanwhile.
  static constexpr int kMinCtasPerSm = 2 * (kSmemBytes + 1024) <= 228 * 1024 ? 2 : 1;
  static_assert(kStateRowsPerWarp % 16 == 0 && kSliceC % 16 == 0, "tile shapes");
};

template <typename T, typename Tr>
struct SweepMmaSmem {
  T* a[2];
  T* b[2];
  T* c[2];
  T* state[2];
  float* decay;  // decay[i] = lambda^i, i in [0, kBlock]

  __device__ explicit SweepMmaSmem(char* base) {
    T* p = reinterpret_cast<T*>(base);
    for (int s = 0; s < 2; ++s) {
      a[s] = p, p += Tr::kStageA;
      b[s] = p, p += Tr::kStageB;
      c[s] = p, p += Tr::kStageC;
    }
    state[0] = p, p += Tr::kState;
    state[1] = p, p += Tr::kState;
    decay = reinterpret_cast<float*>(p);
  }
};

// Issues the cp.async copies of block `blk` of a, b and the c slice into one stage.
template <typename T, typename Tr>
__device__ __forceinline__ void load_block_async(const SweepParams& p, const SweepSeq& seq, int blk,
                                                 T* sa, T* sb, T* sc) {
  constexpr int kChunk = 8;  // elements per 16-byte copy
  constexpr int kAbChunks = Tr::kWidthAB / kChunk, kCChunks = Tr::kSliceC / kChunk;
  for (int i = threadIdx.x; i < Tr::kBlock * kAbChunks; i += Tr::kThreads) {
    const int r = i / kAbChunks, col = (i % kAbChunks) * kChunk;
    const int64_t tok = seq.token(blk, r);
    const bool ok = tok >= 0 && col < p.width_ab;
    tile::cp_async_16(sa + Tr::LayoutAB::offset(r, col), ok ? seq.row<T>(p.a, p.a_stride, tok) + col : p.a, ok);
    tile::cp_async_16(sb + Tr::LayoutAB::offset(r, col), ok ? seq.row<T>(p.b, p.b_stride, tok) + col : p.b, ok);
  }
  for (int i = threadIdx.x; i < Tr::kBlock * kCChunks; i += Tr::kThreads) {
    const int r = i / kCChunks, col = (i % kCChunks) * kChunk;
    const int64_t tok = seq.token(blk, r);
    const bool ok = tok >= 0 && seq.c0 + col < p.width_c;
    tile::cp_async_16(sc + Tr::LayoutC::offset(r, col), ok ? seq.row<T>(p.c, p.c_stride, tok) + seq.c0 + col : p.c, ok);
  }
  tile::cp_async_commit();
}

// The 16-bit copy of S that the next block's a S product reads.
template <typename T, typename Tr>
__device__ __forceinline__ void store_state_smem(const float (&rS)[Tr::kStateMTiles][Tr::kCTiles][4], T* s_state,
                                                 int s_row0, int lane) {
  const int g = lane / 4, t = lane % 4;
#pragma unroll
  for (int mt = 0; mt < Tr::kStateMTiles; ++mt)
#pragma unroll
    for (int n = 0; n < Tr::kCTiles; ++n) {
      const int i = s_row0 + mt * 16 + g, j = n * 8 + 2 * t;
      *reinterpret_cast<uint32_t*>(s_state + Tr::LayoutC::offset(i, j)) = tile::pack_pair<T>(rS[mt][n][0], rS[mt][n][1]);
      *reinterpret_cast<uint32_t*>(s_state + Tr::LayoutC::offset(i + 8, j)) = tile::pack_pair<T>(rS[mt][n][2], rS[mt][n][3]);
    }
}

// Output warps: O_t = diag(inter_scale * qd) (a_t S_{t-1}) + ((a_t b_t^T) * D) c_t for the
// 16 rows of warp `ow`, read from the 16-bit copy of S_{t-1} in s_state.
template <typename T, typename Tr>
__device__ __forceinline__ void sweep_output_rows(const SweepParams& p, const SweepSeq& seq, int blk, int m,
                                                  const T* sa, const T* sb, const T* sc, const T* s_state,
                                                  const float* decay, int ow, int lane) {
  using namespace tile;
  const int g = lane / 4, t = lane % 4, row0 = ow * 16;

  // ---- A = a_t b_t^T for the 16(ow+1) keys at or before these rows, and rO = a_t S,
  //      sharing the a fragments
  float rA[8][4] = {};
  float rO[Tr::kCTiles][4] = {};
  const int k_tiles = (p.width_ab + 15) / 16;
#pragma unroll 1
  for (int kt = 0; kt < k_tiles; ++kt) {  // columns past width_ab are zero: skipped
    const FragA fa = load_a<typename Tr::LayoutAB>(sa, row0, kt * 16, lane);
#pragma unroll
    for (int j = 0; j < 4; ++j)
      if (j <= ow) mma_16x16<T>(rA[2 * j], rA[2 * j + 1], fa, load_b_nk<typename Tr::LayoutAB>(sb, j * 16, kt * 16, lane));
#pragma unroll
    for (int n = 0; n < Tr::kCTiles / 2; ++n)
      mma_16x16<T>(rO[2 * n], rO[2 * n + 1], fa, load_b_kn<typename Tr::LayoutC>(s_state, kt * 16, n * 16, lane));
  }

  // ---- O = diag(inter_scale * qd) rO + ((A * D) c_t), out_scale folded into D
  const int r_lo = row0 + g, r_hi = r_lo + 8;
  const float inter_scale = static_cast<float>(p.inter_scale), out_scale = static_cast<float>(p.out_scale);
  const float qd_lo = inter_scale * seq.inter_decay(decay, r_lo), qd_hi = inter_scale * seq.inter_decay(decay, r_hi);
#pragma unroll
  for (int n = 0; n < Tr::kCTiles; ++n) {
    rO[n][0] *= qd_lo, rO[n][1] *= qd_lo;
    rO[n][2] *= qd_hi, rO[n][3] *= qd_hi;
  }
#pragma unroll
  for (int n = 0; n < 8; ++n) {
    const int c = n * 8 + 2 * t;
    rA[n][0] *= causal_decay(decay, out_scale, r_lo, c);
    rA[n][1] *= causal_decay(decay, out_scale, r_lo, c + 1);
    rA[n][2] *= causal_decay(decay, out_scale, r_hi, c);
    rA[n][3] *= causal_decay(decay, out_scale, r_hi, c + 1);
  }
#pragma unroll
  for (int j = 0; j < 4; ++j) {
    if (j > ow) continue;
    const FragA fa = acc_to_a<T>(rA[2 * j], rA[2 * j + 1]);
#pragma unroll
    for (int n = 0; n < Tr::kCTiles / 2; ++n)
      mma_16x16<T>(rO[2 * n], rO[2 * n + 1], fa, load_b_kn<typename Tr::LayoutC>(sc, j * 16, n * 16, lane));
  }
  T* out_lo = r_lo < m ? seq.row<T>(p.out, p.out_stride, seq.token(blk, r_lo)) : nullptr;
  T* out_hi = r_hi < m ? seq.row<T>(p.out, p.out_stride, seq.token(blk, r_hi)) : nullptr;
#pragma unroll
  for (int n = 0; n < Tr::kCTiles; ++n) {
    const int col = seq.c0 + n * 8 + 2 * t;
    if (col >= p.width_c) continue;
    if (out_lo) store_pair<T>(out_lo + col, rO[n][0], rO[n][1]);
    if (out_hi) store_pair<T>(out_hi + col, rO[n][2], rO[n][3]);
  }
}

// State warps: S_t = lambda^m S_{t-1} + state_scale * (diag(kd) b_t)^T c_t on this warp's
// rows of S (registers), kd[c] = lambda^(m-1-c).
template <typename T, typename Tr>
__device__ __forceinline__ void sweep_update_state(float (&rS)[Tr::kStateMTiles][Tr::kCTiles][4], const SweepParams& p,
                                                   const SweepSeq& seq, int m, const T* sb, const T* sc,
                                                   const float* decay, int s_row0, int lane) {
  using namespace tile;
  const int t = lane % 4;
  const float block_decay = decay[m], state_scale = static_cast<float>(p.state_scale);
#pragma unroll
  for (int mt = 0; mt < Tr::kStateMTiles; ++mt)
#pragma unroll
    for (int n = 0; n < Tr::kCTiles; ++n)
#pragma unroll
      for (int e = 0; e < 4; ++e) rS[mt][n][e] *= block_decay;
  if (s_row0 >= p.width_ab) return;  // rows past width_ab stay 0
#pragma unroll
  for (int kt = 0; kt < 4; ++kt) {
    if (kt * 16 >= m) break;
    const int key = kt * 16 + 2 * t;
    const float2 kd_lo = {seq.key_decay(decay, state_scale, m, key), seq.key_decay(decay, state_scale, m, key + 1)};
    const float2 kd_hi = {seq.key_decay(decay, state_scale, m, key + 8), seq.key_decay(decay, state_scale, m, key + 9)};
    FragA fb[Tr::kStateMTiles];
#pragma unroll
    for (int mt = 0; mt < Tr::kStateMTiles; ++mt) {
      fb[mt] = load_a_trans<typename Tr::LayoutAB>(sb, kt * 16, s_row0 + mt * 16, lane);
      scale_pairs<T>(fb[mt].x[0], kd_lo), scale_pairs<T>(fb[mt].x[1], kd_lo);
      scale_pairs<T>(fb[mt].x[2], kd_hi), scale_pairs<T>(fb[mt].x[3], kd_hi);
    }
#pragma unroll
    for (int n = 0; n < Tr::kCTiles / 2; ++n) {
      const FragB2 fc = load_b_kn<typename Tr::LayoutC>(sc, kt * 16, n * 16, lane);
#pragma unroll
      for (int mt = 0; mt < Tr::kStateMTiles; ++mt) mma_16x16<T>(rS[mt][2 * n], rS[mt][2 * n + 1], fb[mt], fc);
    }
  }
}

// Start of block `blk`: wait for its copies, meet every warp (so all are done with block
// blk-1 and S_{blk-1} is in smem.state[blk % 2]), then start copying block blk+1.
template <typename T, typename Tr>
__device__ __forceinline__ void begin_block(const SweepParams& p, const SweepSeq& seq, SweepMmaSmem<T, Tr>& smem, int blk) {
  tile::cp_async_wait<0>();
  tile::cta_barrier(Tr::kThreads);
  const int next = (blk + 1) % 2;
  if (blk + 1 < seq.num_blocks) load_block_async<T, Tr>(p, seq, blk + 1, smem.a[next], smem.b[next], smem.c[next]);
}

// The state warps' whole sweep: S stays in registers, warp w owning rows s_row0.. of it.
template <typename T, typename Tr>
__device__ __forceinline__ void run_state_warp(const SweepParams& p, const SweepSeq& seq, SweepMmaSmem<T, Tr>& smem,
                                               int s_row0, int lane) {
  float rS[Tr::kStateMTiles][Tr::kCTiles][4];
  for_state_fragments<Tr::kStateMTiles, Tr::kCTiles>(s_row0, lane, [&](int mt, int n, int e, int i, int j) {
    rS[mt][n][e] = seq.load_state(p, i, j);
  });
  store_state_smem<T, Tr>(rS, smem.state[0], s_row0, lane);
  for (int blk = 0; blk < seq.num_blocks; ++blk) {
    const int stage = blk % 2;
    begin_block(p, seq, smem, blk);
    sweep_update_state<T, Tr>(rS, p, seq, seq.rows_in_block(blk), smem.b[stage], smem.c[stage], smem.decay, s_row0,
                              lane);
    store_state_smem<T, Tr>(rS, smem.state[stage ^ 1], s_row0, lane);
  }
  if (p.final_state.ptr != nullptr)
    for_state_fragments<Tr::kStateMTiles, Tr::kCTiles>(s_row0, lane, [&](int mt, int n, int e, int i, int j) {
      seq.store_state(p, i, j, rS[mt][n][e]);
    });
}

template <typename T, typename Tr>
__device__ __forceinline__ void run_output_warp(const SweepParams& p, const SweepSeq& seq, SweepMmaSmem<T, Tr>& smem,
                                                int ow, int lane) {
  for (int blk = 0; blk < seq.num_blocks; ++blk) {
    const int stage = blk % 2;
    begin_block(p, seq, smem, blk);
    sweep_output_rows<T, Tr>(p, seq, blk, seq.rows_in_block(blk), smem.a[stage], smem.b[stage], smem.c[stage],
                             smem.state[stage], smem.decay, ow, lane);
  }
}

template <typename T, typename Tr>
__global__ void __launch_bounds__(Tr::kThreads, Tr::kMinCtasPerSm) sweep_mma_kernel(const __grid_constant__ SweepParams p) {
  extern __shared__ __align__(16) char smem_raw[];
  SweepMmaSmem<T, Tr> smem(smem_raw);
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const SweepSeq seq(p, Tr::kSliceC, Tr::kBlock);
  if (seq.length == 0) {
    copy_state_through(p, seq, Tr::kWidthAB, Tr::kSliceC);
    return;
  }
  fill_decay_table(p, seq.head, smem.decay, Tr::kBlock);
  load_block_async<T, Tr>(p, seq, 0, smem.a[0], smem.b[0], smem.c[0]);
  if (warp >= Tr::kOutputWarps)
    run_state_warp<T, Tr>(p, seq, smem, (warp - Tr::kOutputWarps) * Tr::kStateRowsPerWarp, lane);
  else
    run_output_warp<T, Tr>(p, seq, smem, warp, lane);
}

}  // namespace lightning

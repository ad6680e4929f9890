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
  static constexpr int kBlock = common::kLightningBlock;  // rows per block
  static constexpr int kOutputWarps = 4;  // 16 rows of the block each
  static constexpr int kStateWarps = 4;   // kWidthAB / 4 rows of S each
  static constexpr int kThreads = (kOutputWarps + kStateWarps) * 32;
  static_assert(kBlock == 16 * kOutputWarps, "each output warp owns 16 rows of the block");
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
  static constexpr int kOutDecay = kBlock + 16;  // see SweepMmaSmem::out_decay
  static constexpr int kKeyDecay = 2 * kBlock;   // see SweepMmaSmem::key_decay
  static constexpr size_t kSmemBytes =
      (2 * (kStageA + kStageB + kStageC + kState)) * sizeof(T) + (kOutDecay + kKeyDecay) * sizeof(float);
  // Two CTAs per SM when their shared memory fits (228 KiB an SM, 1 KiB reserved a CTA):
  // with one barrier per block, the other CTA keeps the tensor cores busy meanwhile.
  static constexpr int kMinCtasPerSm =
      common::kSweepCtasPerSm * (kSmemBytes + 1024) <= 228 * 1024 ? common::kSweepCtasPerSm : 1;
  static_assert(kStateRowsPerWarp % 16 == 0 && kSliceC % 16 == 0, "tile shapes");
};

// Two stages of [a | b | c], then two 16-bit copies of S, then the decay tables. Stages are
// picked by offset, not from an array of pointers (which a runtime index would put in local
// memory).
template <typename T, typename Tr>
struct SweepMmaSmem {
  static constexpr int kStage = Tr::kStageA + Tr::kStageB + Tr::kStageC;
  T* base;
  // The decay weights as tables indexed by a constant offset from a per-thread base, so
  // applying them costs a load and a multiply, with zeros where the mask drops a product:
  //   out_decay[16 + i] = out_scale * lambda^i  (i = r - c in [0, kBlock)), 0 for i in [-16, 0)
  //   key_decay[kBlock + i] = state_scale * lambda^(i + decay_shift)  (i = m - 1 - key),
  //                           0 for i < 0 (keys past the block's m rows)
  float* out_decay;
  float* key_decay;

  __device__ explicit SweepMmaSmem(char* raw) : base(reinterpret_cast<T*>(raw)) {
    out_decay = reinterpret_cast<float*>(base + 2 * (kStage + Tr::kState));
    key_decay = out_decay + Tr::kOutDecay;
  }
  __device__ T* a(int stage) const { return base + stage * kStage; }
  __device__ T* b(int stage) const { return a(stage) + Tr::kStageA; }
  __device__ T* c(int stage) const { return b(stage) + Tr::kStageB; }
  __device__ T* state(int stage) const { return base + 2 * kStage + stage * Tr::kState; }

  __device__ void fill_decay_tables(const SweepParams& p, const SweepSeq& seq) {
    const float out_scale = static_cast<float>(p.out_scale), state_scale = static_cast<float>(p.state_scale);
    for (int i = threadIdx.x; i < Tr::kOutDecay; i += Tr::kThreads)
      out_decay[i] = i < 16 ? 0.f : out_scale * seq.decay_pow(static_cast<float>(i - 16));
    for (int i = threadIdx.x; i < Tr::kKeyDecay; i += Tr::kThreads)
      key_decay[i] = i < Tr::kBlock ? 0.f : state_scale * seq.decay_pow(static_cast<float>(i - Tr::kBlock + seq.decay_shift));
  }
};

// The cp.async copies of a block, made by the state warps alone (the output warps have the
// longer per-block path). Each copying thread owns the same rows (every kRowStep-th from its
// first) and the same 16-byte column chunk of a, b and the c slice in every block, so moving
// on to the next block is one step per operand. When the chunks of an a/b row do not divide
// the copying threads (24 at width 192), the threads past whole rows copy no a/b, and the
// last pass stops at the block's end.
template <typename T, typename Tr>
struct BlockCopier {
  static constexpr int kThreads = Tr::kStateWarps * 32;
  static constexpr int kChunk = 8;  // elements per 16-byte copy
  static constexpr int kAbChunks = Tr::kWidthAB / kChunk, kAbRowStep = kThreads / kAbChunks;
  static constexpr int kAbPasses = (Tr::kBlock + kAbRowStep - 1) / kAbRowStep;
  static constexpr bool kAbRagged = Tr::kBlock % kAbRowStep != 0 || kThreads % kAbChunks != 0;
  static constexpr int kCChunks = Tr::kSliceC / kChunk, kCRowStep = kThreads / kCChunks;
  static_assert(kAbRowStep >= 1 && Tr::kWidthAB % kChunk == 0, "a/b copy plan");
  static_assert(kThreads % kCChunks == 0 && Tr::kBlock % kCRowStep == 0, "c copy plan");

  int row_ab, row_c;            // first row of each block this thread copies
  int col_ab, col_c;
  bool ab_cols_ok, c_cols_ok;   // this thread's columns lie inside width_ab / width_c
  bool ab_active;               // this thread copies a/b at all (not past the whole rows)
  bool copy_a;                  // a is read only for the output
  int64_t off_a, off_b, off_c;  // element offsets of those rows in the next block to copy

  // tid: the thread's index among the kThreads copying threads.
  __device__ BlockCopier(const SweepParams& p, const SweepSeq& seq, int tid) {
    col_ab = tid % kAbChunks * kChunk;
    col_c = tid % kCChunks * kChunk;
    row_ab = tid / kAbChunks;
    row_c = tid / kCChunks;
    ab_cols_ok = col_ab < p.width_ab;
    ab_active = tid < kAbRowStep * kAbChunks;
    c_cols_ok = seq.c0 + col_c < p.width_c;
    copy_a = p.out != nullptr;
    off_a = seq.row_offset(p.a_stride, row_ab) + col_ab;
    off_b = seq.row_offset(p.b_stride, row_ab) + col_ab;
    off_c = seq.row_offset(p.c_stride, row_c) + seq.c0 + col_c;
  }

  // Offset of (row + k * kRowStep, col) in a stage: steps of a multiple of 8 rows keep a
  // swizzled row's chunk order, so the offsets just add up.
  template <typename Layout, int kRowStep>
  __device__ __forceinline__ static int smem_offset(int row, int col, int k) {
    if constexpr (kRowStep % 8 == 0) return Layout::offset(row, col) + k * kRowStep * Layout::kRowStride;
    return Layout::offset(row + k * kRowStep, col);
  }

  // Starts the copies of block `blk` into one stage, for blk = 0, 1, 2, ... in turn; rows past
  // the sequence and columns past the data are zero-filled.
  __device__ __forceinline__ void issue(const SweepParams& p, const SweepSeq& seq, int blk, T* sa, T* sb, T* sc) {
    const int m = seq.rows_in_block(blk);
    const T* a = static_cast<const T*>(p.a);
    const T* b = static_cast<const T*>(p.b);
    const T* c = static_cast<const T*>(p.c);
    const T* pa = a + off_a;  // walks down this thread's rows (token order or reverse)
    const T* pb = b + off_b;
    const T* pc = c + off_c;
    const int64_t step_a = seq.dir * kAbRowStep * p.a_stride.n, step_b = seq.dir * kAbRowStep * p.b_stride.n;
    const int64_t step_c = seq.dir * kCRowStep * p.c_stride.n;
#pragma unroll
    for (int k = 0; k < kAbPasses; ++k, pa += step_a, pb += step_b) {
      const int row = row_ab + k * kAbRowStep;
      if (kAbRagged && (!ab_active || row >= Tr::kBlock)) continue;  // not a row of this stage
      const bool ok = ab_cols_ok && row < m;
      const int dst = smem_offset<typename Tr::LayoutAB, kAbRowStep>(row_ab, col_ab, k);
      if (copy_a) tile::cp_async_16(sa + dst, ok ? pa : a, ok);
      tile::cp_async_16(sb + dst, ok ? pb : b, ok);
    }
#pragma unroll
    for (int k = 0; k < Tr::kBlock / kCRowStep; ++k, pc += step_c) {
      const bool ok = c_cols_ok && row_c + k * kCRowStep < m;
      tile::cp_async_16(sc + smem_offset<typename Tr::LayoutC, kCRowStep>(row_c, col_c, k), ok ? pc : c, ok);
    }
    tile::cp_async_commit();
    const int block_rows = seq.dir * Tr::kBlock;
    off_a += block_rows * p.a_stride.n;
    off_b += block_rows * p.b_stride.n;
    off_c += block_rows * p.c_stride.n;
  }
};

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

// Output warps: O_t = diag(qd) (a_t S_{t-1}) + ((a_t b_t^T) * D) c_t for the 16 rows of warp
// `ow`, read from the 16-bit copy of S_{t-1} in s_state; qd (inter_scale lambda^(r+1), or
// lambda^r in reverse) is fixed per row, so the caller works it out once.
template <typename T, typename Tr>
__device__ __forceinline__ void sweep_output_rows(const SweepParams& p, const SweepSeq& seq, int blk, int m,
                                                  const T* sa, const T* sb, const T* sc, const T* s_state,
                                                  const float* out_decay, float qd_lo, float qd_hi, int ow, int lane) {
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

  // ---- O = diag(qd) rO + ((A * D) c_t). Element (r, c) of key tile j takes
  //      out_decay[16 + r - c]; with r = row0 + g (+8) and c = 16j + 2t (+1, +8) the offset from
  //      dtab below is a constant.
#pragma unroll
  for (int n = 0; n < Tr::kCTiles; ++n) {
    rO[n][0] *= qd_lo, rO[n][1] *= qd_lo;
    rO[n][2] *= qd_hi, rO[n][3] *= qd_hi;
  }
  const float* dtab = out_decay + 16 + row0 + g - 2 * t;
#pragma unroll
  for (int j = 0; j < 4; ++j) {
    if (j > ow) continue;
#pragma unroll
    for (int h = 0; h < 2; ++h) {  // the two n8 halves of the key tile
      float(&x)[4] = rA[2 * j + h];
      const int d = -16 * j - 8 * h;
      x[0] *= dtab[d], x[1] *= dtab[d - 1], x[2] *= dtab[d + 8], x[3] *= dtab[d + 7];
    }
    const FragA fa = acc_to_a<T>(rA[2 * j], rA[2 * j + 1]);
#pragma unroll
    for (int n = 0; n < Tr::kCTiles / 2; ++n)
      mma_16x16<T>(rO[2 * n], rO[2 * n + 1], fa, load_b_kn<typename Tr::LayoutC>(sc, j * 16, n * 16, lane));
  }
  const int r_lo = row0 + g;
  const bool lo_ok = r_lo < m, hi_ok = r_lo + 8 < m;
  T* out_lo = static_cast<T*>(p.out) + seq.row_offset(p.out_stride, static_cast<int64_t>(blk) * Tr::kBlock + r_lo) +
              seq.c0 + 2 * t;
  T* out_hi = out_lo + seq.dir * 8 * p.out_stride.n;
  const int cols_left = p.width_c - seq.c0 - 2 * t;
#pragma unroll
  for (int n = 0; n < Tr::kCTiles; ++n) {
    if (n * 8 >= cols_left) continue;
    if (lo_ok) store_pair<T>(out_lo + n * 8, rO[n][0], rO[n][1]);
    if (hi_ok) store_pair<T>(out_hi + n * 8, rO[n][2], rO[n][3]);
  }
}

// State warps: S_t = lambda^m S_{t-1} + state_scale * (diag(kd) b_t)^T c_t on this warp's
// rows of S (registers), kd[key] = lambda^(m-1-key) (lambda^(m-key) in reverse), both read
// from key_decay.
template <typename T, typename Tr>
__device__ __forceinline__ void sweep_update_state(float (&rS)[Tr::kStateMTiles][Tr::kCTiles][4], const SweepParams& p,
                                                   int m, float block_decay, const T* sb, const T* sc,
                                                   const float* key_decay, int s_row0, int lane) {
  using namespace tile;
  const int t = lane % 4;
#pragma unroll
  for (int mt = 0; mt < Tr::kStateMTiles; ++mt)
#pragma unroll
    for (int n = 0; n < Tr::kCTiles; ++n)
#pragma unroll
      for (int e = 0; e < 4; ++e) rS[mt][n][e] *= block_decay;
  if (s_row0 >= p.width_ab) return;  // rows past width_ab stay 0
  const float* ktab = key_decay + Tr::kBlock + m - 1 - 2 * t;  // kd[key] = ktab[2t - key]
#pragma unroll
  for (int kt = 0; kt < 4; ++kt) {
    if (kt * 16 >= m) break;
    const float2 kd_lo = {ktab[-16 * kt], ktab[-16 * kt - 1]};
    const float2 kd_hi = {ktab[-16 * kt - 8], ktab[-16 * kt - 9]};
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

// Start of block `blk`: wait for its copies and meet every warp, so all are done with block
// blk-1 and S_{blk-1} is in smem.state(blk % 2).
template <typename Tr>
__device__ __forceinline__ void begin_block() {
  tile::cp_async_wait<0>();
  tile::cta_barrier(Tr::kThreads);
}

// The state warps' whole sweep: S stays in registers, warp w owning rows s_row0.. of it.
// They also copy every block in: block blk+1 while block blk computes.
template <typename T, typename Tr>
__device__ __forceinline__ void run_state_warp(const SweepParams& p, const SweepSeq& seq, SweepMmaSmem<T, Tr>& smem,
                                               int s_row0, int lane) {
  BlockCopier<T, Tr> copier(p, seq, threadIdx.x - Tr::kOutputWarps * 32);
  copier.issue(p, seq, 0, smem.a(0), smem.b(0), smem.c(0));
  float rS[Tr::kStateMTiles][Tr::kCTiles][4];
  for_state_fragments<Tr::kStateMTiles, Tr::kCTiles>(s_row0, lane, [&](int mt, int n, int e, int i, int j) {
    rS[mt][n][e] = seq.load_state(p, i, j);
  });
  store_state_smem<T, Tr>(rS, smem.state(0), s_row0, lane);
  const float full_block_decay = seq.decay_pow(static_cast<float>(Tr::kBlock));
  for (int blk = 0; blk < seq.num_blocks; ++blk) {
    const int stage = blk % 2;
    begin_block<Tr>();
    if (blk + 1 < seq.num_blocks) copier.issue(p, seq, blk + 1, smem.a(stage ^ 1), smem.b(stage ^ 1), smem.c(stage ^ 1));
    const int m = seq.rows_in_block(blk);
    const float block_decay = m == Tr::kBlock ? full_block_decay : seq.decay_pow(static_cast<float>(m));
    sweep_update_state<T, Tr>(rS, p, m, block_decay, smem.b(stage), smem.c(stage), smem.key_decay, s_row0, lane);
    store_state_smem<T, Tr>(rS, smem.state(stage ^ 1), s_row0, lane);
  }
  if (seq.writes_final(p.final_state))
    for_state_fragments<Tr::kStateMTiles, Tr::kCTiles>(s_row0, lane, [&](int mt, int n, int e, int i, int j) {
      seq.store_state(p, i, j, rS[mt][n][e]);
    });
}

template <typename T, typename Tr>
__device__ __forceinline__ void run_output_warp(const SweepParams& p, const SweepSeq& seq, SweepMmaSmem<T, Tr>& smem,
                                                int ow, int lane) {
  // Forward sweeps start from the state before token 0, reaching row r through lambda^(r+1);
  // reverse ones from the gradient after the last token, through lambda^r.
  const float inter_scale = static_cast<float>(p.inter_scale);
  const int r_lo = ow * 16 + lane / 4;
  const float qd_lo = inter_scale * seq.decay_pow(static_cast<float>(r_lo + 1 - seq.decay_shift));
  const float qd_hi = inter_scale * seq.decay_pow(static_cast<float>(r_lo + 9 - seq.decay_shift));
  for (int blk = 0; blk < seq.num_blocks; ++blk) {
    const int stage = blk % 2;
    begin_block<Tr>();
    if (p.out == nullptr) continue;  // a state-only sweep: the output warps just keep step
    sweep_output_rows<T, Tr>(p, seq, blk, seq.rows_in_block(blk), smem.a(stage), smem.b(stage), smem.c(stage),
                             smem.state(stage), smem.out_decay, qd_lo, qd_hi, ow, lane);
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
  smem.fill_decay_tables(p, seq);  // read after the first block's barrier
  if (warp >= Tr::kOutputWarps)
    run_state_warp<T, Tr>(p, seq, smem, (warp - Tr::kOutputWarps) * Tr::kStateRowsPerWarp, lane);
  else
    run_output_warp<T, Tr>(p, seq, smem, warp, lane);
}

}  // namespace lightning

// The decayed sweep (sweep.h) in exact fp32 with plain FMA, for float inputs (the
// 1e-5 accuracy bar rules out 16-bit or TF32 tensor cores). Same tiling as the tensor-core
// kernel, smaller blocks (32 rows) and the state S in shared memory.
#pragma once

#include "sweep.h"
#include "sweep_common.cuh"

namespace lightning {

template <int kWidthAB_, int kSliceC_>
struct SweepFfmaTraits {
  static constexpr int kWidthAB = kWidthAB_;
  static constexpr int kSliceC = kSliceC_;
  static constexpr int kBlock = 32;
  static constexpr int kThreads = 256;
  static constexpr int kLdAB = kWidthAB + 1;  // odd strides: column walks hit distinct banks
  static constexpr int kLdC = kSliceC + 1;
  static constexpr int kLdP = kBlock + 1;
  static constexpr size_t kSmemFloats = 2 * kBlock * kLdAB      // a, b     (kBlock, kWidthAB)
                                        + kBlock * kLdC         // c        (kBlock, kSliceC)
                                        + kWidthAB * kSliceC    // S        (kWidthAB, kSliceC)
                                        + kBlock * kLdP         // P        (kBlock, kBlock)
                                        + kBlock + 1;           // decay
  static constexpr size_t kSmemBytes = kSmemFloats * sizeof(float);
  static_assert(kThreads % kSliceC == 0, "slice must divide the thread count");
  static_assert(common::kLightningBlock % kBlock == 0, "a split sweep's chunks (whole lightning blocks) are whole blocks here too");
};

template <typename Tr>
__device__ __forceinline__ void load_block_ffma(const SweepParams& p, const SweepSeq& seq, int blk, float* sa,
                                                float* sb, float* sc) {
  for (int x = threadIdx.x; x < Tr::kBlock * Tr::kWidthAB; x += Tr::kThreads) {
    const int r = x / Tr::kWidthAB, col = x % Tr::kWidthAB;
    const int64_t tok = seq.token(blk, r);
    const bool ok = tok >= 0 && col < p.width_ab;
    sa[r * Tr::kLdAB + col] = ok ? seq.row<const float>(p.a, p.a_stride, tok)[col] : 0.f;
    sb[r * Tr::kLdAB + col] = ok ? seq.row<const float>(p.b, p.b_stride, tok)[col] : 0.f;
  }
  for (int x = threadIdx.x; x < Tr::kBlock * Tr::kSliceC; x += Tr::kThreads) {
    const int r = x / Tr::kSliceC, col = x % Tr::kSliceC;
    const int64_t tok = seq.token(blk, r);
    const bool ok = tok >= 0 && seq.c0 + col < p.width_c;
    sc[r * Tr::kLdC + col] = ok ? seq.row<const float>(p.c, p.c_stride, tok)[seq.c0 + col] : 0.f;
  }
}

// out_t = diag(inter_scale * qd) (a_t S) + ((a_t b_t^T) * D) c_t, out_scale folded into D;
// every thread of the CTA calls it.
template <typename Tr>
__device__ void sweep_ffma_output(const SweepParams& p, const SweepSeq& seq, int blk, int m, const float* sa,
                                  const float* sb, const float* sc, const float* s_state, float* sp,
                                  const float* decay) {
  const int width = p.width_ab;
  const float out_scale = static_cast<float>(p.out_scale), inter_scale = static_cast<float>(p.inter_scale);
  const int j = threadIdx.x % Tr::kSliceC;
  constexpr int kRowStep = Tr::kThreads / Tr::kSliceC;
  // P = (a_t b_t^T) * D, with out_scale folded into D
  for (int x = threadIdx.x; x < Tr::kBlock * Tr::kBlock; x += Tr::kThreads) {
    const int r = x / Tr::kBlock, c = x % Tr::kBlock;
    float dot = 0.f;
    if (c <= r)
      for (int i = 0; i < width; ++i) dot = fmaf(sa[r * Tr::kLdAB + i], sb[c * Tr::kLdAB + i], dot);
    sp[r * Tr::kLdP + c] = dot * causal_decay(decay, out_scale, r, c);
  }
  __syncthreads();

  // out = diag(inter_scale * qd) (a_t S) + P c_t
  for (int r = threadIdx.x / Tr::kSliceC; r < m; r += kRowStep) {
    float inter = 0.f, intra = 0.f;
    for (int i = 0; i < width; ++i) inter = fmaf(sa[r * Tr::kLdAB + i], s_state[i * Tr::kSliceC + j], inter);
    for (int c = 0; c <= r; ++c) intra = fmaf(sp[r * Tr::kLdP + c], sc[c * Tr::kLdC + j], intra);
    if (seq.c0 + j < p.width_c)
      seq.row<float>(p.out, p.out_stride, seq.token(blk, r))[seq.c0 + j] = inter_scale * seq.inter_decay(decay, r) * inter + intra;
  }
}

template <typename Tr>
__global__ void __launch_bounds__(Tr::kThreads) sweep_ffma_kernel(const __grid_constant__ SweepParams p) {
  extern __shared__ __align__(16) char smem_raw[];
  float* sa = reinterpret_cast<float*>(smem_raw);        // (kBlock, kLdAB)
  float* sb = sa + Tr::kBlock * Tr::kLdAB;                // (kBlock, kLdAB)
  float* sc = sb + Tr::kBlock * Tr::kLdAB;                // (kBlock, kLdC)
  float* s_state = sc + Tr::kBlock * Tr::kLdC;            // (kWidthAB, kSliceC)
  float* sp = s_state + Tr::kWidthAB * Tr::kSliceC;       // (kBlock, kLdP)
  float* decay = sp + Tr::kBlock * Tr::kLdP;              // (kBlock + 1)
  const SweepSeq seq(p, Tr::kSliceC, Tr::kBlock);
  if (seq.length == 0) {
    copy_state_through(p, seq, Tr::kWidthAB, Tr::kSliceC);
    return;
  }
  const int width = p.width_ab;
  const float state_scale = static_cast<float>(p.state_scale);
  const int j = threadIdx.x % Tr::kSliceC;               // this thread's column of c / out / S
  constexpr int kRowStep = Tr::kThreads / Tr::kSliceC;

  fill_decay_table(seq, decay, Tr::kBlock);
  for (int i = threadIdx.x / Tr::kSliceC; i < Tr::kWidthAB; i += kRowStep)
    s_state[i * Tr::kSliceC + j] = seq.load_state(p, i, j);

  for (int blk = 0; blk < seq.num_blocks; ++blk) {
    const int m = seq.rows_in_block(blk);
    __syncthreads();  // the previous block's state update is done
    load_block_ffma<Tr>(p, seq, blk, sa, sb, sc);
    __syncthreads();

    if (p.out != nullptr) sweep_ffma_output<Tr>(p, seq, blk, m, sa, sb, sc, s_state, sp, decay);
    __syncthreads();  // every thread has read S

    // S = lambda^m S + state_scale * (diag(kd) b_t)^T c_t
    for (int i = threadIdx.x / Tr::kSliceC; i < width; i += kRowStep) {
      float update = 0.f;
      for (int c = 0; c < m; ++c)
        update = fmaf(seq.key_decay(decay, state_scale, m, c) * sb[c * Tr::kLdAB + i], sc[c * Tr::kLdC + j], update);
      s_state[i * Tr::kSliceC + j] = decay[m] * s_state[i * Tr::kSliceC + j] + update;
    }
  }

  if (seq.writes_final(p.final_state)) {
    __syncthreads();
    for (int i = threadIdx.x / Tr::kSliceC; i < Tr::kWidthAB; i += kRowStep)
      seq.store_state(p, i, j, s_state[i * Tr::kSliceC + j]);
  }
}

}  // namespace lightning

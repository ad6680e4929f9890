// One "decayed sweep" over a sequence: the whole of Lightning Attention-2, and the three
// passes of its backward, are the same computation with the operands renamed, on the CPU
// (cpu/attn_cpu.cpp) and on the GPU (cuda/sweep_*.cuh) alike.
//
//   out_r = out_scale * sum_{c<=r} lambda^(r-c) (a_r . b_c) c_c + inter_scale * lambda^(r+1) S^T a_r
//   S     = lambda^m S + state_scale * sum_c lambda^(m-1-c) b_c c_c^T
//
// for rows r, c counted from the start of each block of m rows, and S (width_ab x width_c,
// fp32 or better) carried from block to block, in token order or, with `reverse`, from the
// last token to the first (then the exponents shift by one: see SweepSeq::decay_shift):
//   forward : a=q,  b=k,  c=v,  out=o,   S from initial_state,    to final_state
//   dq      : a=do, b=v,  c=k,  out=dq,  S from initial_state^T   (forward order)
//   dv      : a=k,  b=q,  c=do, out=dv,  S from d_final_state,   to d_initial_state (reverse)
//   dk      : a=v,  b=do, c=q,  out=dk,  S from d_final_state^T  (reverse)
#pragma once

#include <array>
#include <cstdint>

#include "attn_params.h"

namespace lightning {

// Element (i, j) of state number w: ptr[w * item_stride + i * row + j * col]. With per_chunk,
// w = item * chunks + chunk and every chunk of a split sweep reads or writes its own state;
// otherwise w = item, read by the first chunk and written by the last.
struct StateView {
  float* ptr;
  int64_t item_stride, row, col;
  bool per_chunk;
};

struct SweepParams {
  DType dtype;
  const void* a;
  const void* b;
  const void* c;
  void* out;
  Strides a_stride, b_stride, c_stride, out_stride;
  int width_ab, width_c;  // a and b have width_ab columns; c and out width_c
  int heads, seqlen, num_seqs;
  const int64_t* cu_seqlens;
  const float* slope;
  bool reverse;
  double out_scale, inter_scale, state_scale;  // double: the fp64 CPU path stays exact
  StateView init_state;   // ptr == nullptr: start from 0
  StateView final_state;  // ptr == nullptr: not written
  // A split sweep (cuda/sweep_split.cu: more CTAs when batch x heads is small) runs over
  // `chunks` consecutive pieces of chunk_rows rows of every sequence, in sweep order, one CTA
  // each. chunks == 1: the whole sequence. The CPU kernels take unsplit sweeps only.
  int chunks;
  int64_t chunk_rows;
};

// The fields every sweep of one call shares.
inline SweepParams sweep_base(const AttnParams& p) {
  SweepParams s{};
  s.dtype = p.dtype;
  s.heads = p.heads;
  s.seqlen = p.seqlen;
  s.num_seqs = p.num_seqs;
  s.cu_seqlens = p.cu_seqlens;
  s.slope = p.slope;
  s.chunks = 1;
  s.chunk_rows = 0;
  return s;
}

// A (D, E) state per item as stored, or its transpose when the sweep's S is (E, D).
inline StateView state_view(const float* ptr, const AttnParams& p, bool transposed) {
  const int64_t e = p.value_dim;
  return transposed ? StateView{const_cast<float*>(ptr), p.head_dim * e, 1, e, false}
                    : StateView{const_cast<float*>(ptr), p.head_dim * e, e, 1, false};
}

inline SweepParams forward_sweep(const AttnParams& p) {
  SweepParams s = sweep_base(p);
  s.a = p.q, s.a_stride = p.q_stride;
  s.b = p.k, s.b_stride = p.k_stride;
  s.c = p.v, s.c_stride = p.v_stride;
  s.out = p.o, s.out_stride = p.o_stride;
  s.width_ab = p.head_dim;
  s.width_c = p.value_dim;
  s.reverse = false;
  s.out_scale = s.inter_scale = p.scale;
  s.state_scale = 1.0;
  s.init_state = state_view(p.initial_state, p, false);
  s.final_state = state_view(p.final_state, p, false);
  return s;
}

// dq, dv, dk; none stores a state per block.
inline std::array<SweepParams, 3> backward_sweeps(const AttnBwdParams& bp) {
  const AttnParams& p = bp.fwd;
  const int d = p.head_dim, e = p.value_dim;

  // dq_r = scale (sum_{c<=r} lambda^(r-c) (do_r . v_c) k_c + lambda^(r+1) S do_r), S^T as (E, D)
  SweepParams dq = sweep_base(p);
  dq.a = bp.grad_out, dq.a_stride = bp.grad_out_stride;
  dq.b = p.v, dq.b_stride = p.v_stride;
  dq.c = p.k, dq.c_stride = p.k_stride;
  dq.out = bp.dq, dq.out_stride = bp.dq_stride;
  dq.width_ab = e, dq.width_c = d;
  dq.reverse = false;
  dq.out_scale = dq.inter_scale = p.scale;
  dq.state_scale = 1.0;
  dq.init_state = state_view(p.initial_state, p, true);
  dq.final_state = StateView{nullptr, 0, 0, 0, false};

  // dv_c = scale sum_{r>=c} lambda^(r-c) (k_c . q_r) do_r + lambda^(..) dS^T k_c, with
  // dS = lambda^m dS + scale (diag(qd) Q)^T dO as the (D, E) state, d(initial) at the end
  SweepParams dv = sweep_base(p);
  dv.a = p.k, dv.a_stride = p.k_stride;
  dv.b = p.q, dv.b_stride = p.q_stride;
  dv.c = bp.grad_out, dv.c_stride = bp.grad_out_stride;
  dv.out = bp.dv, dv.out_stride = bp.dv_stride;
  dv.width_ab = d, dv.width_c = e;
  dv.reverse = true;
  dv.out_scale = p.scale;
  dv.inter_scale = 1.0;
  dv.state_scale = p.scale;
  dv.init_state = state_view(bp.grad_final_state, p, false);
  dv.final_state = state_view(bp.grad_initial_state, p, false);

  // dk_c = scale sum_{r>=c} lambda^(r-c) (v_c . do_r) q_r + lambda^(..) dS v_c: dS^T as (E, D)
  SweepParams dk = dv;
  dk.a = p.v, dk.a_stride = p.v_stride;
  dk.b = bp.grad_out, dk.b_stride = bp.grad_out_stride;
  dk.c = p.q, dk.c_stride = p.q_stride;
  dk.out = bp.dk, dk.out_stride = bp.dk_stride;
  dk.width_ab = e, dk.width_c = d;
  dk.init_state = state_view(bp.grad_final_state, p, true);
  dk.final_state = StateView{nullptr, 0, 0, 0, false};
  return {dq, dv, dk};
}

}  // namespace lightning

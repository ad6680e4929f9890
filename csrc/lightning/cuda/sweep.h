// One "decayed sweep" over a sequence: the whole of Lightning Attention-2, and the three
// passes of its backward, are the same computation with the operands renamed.
//
//   out_r = out_scale * sum_{c<=r} lambda^(r-c) (a_r . b_c) c_c + inter_scale * lambda^(r+1) S^T a_r
//   S     = lambda^m S + state_scale * sum_c lambda^(m-1-c) b_c c_c^T
//
// for rows r, c counted from the start of each block of m rows, and S (width_ab x width_c, fp32) carried on chip from block to block, in token
// order or, with `reverse`, from the last token to the first:
//   forward : a=q,  b=k,  c=v,  out=o,   S from initial_state,    to final_state
//   dq      : a=do, b=v,  c=k,  out=dq,  S from initial_state^T   (forward order)
//   dv      : a=k,  b=q,  c=do, out=dv,  S from d_final_state,   to d_initial_state (reverse)
//   dk      : a=v,  b=do, c=q,  out=dk,  S from d_final_state^T  (reverse)
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "../attn_params.h"

namespace lightning {

struct StateView {  // element (i, j) of item `w`: ptr[w * items_stride + i * row + j * col]
  float* ptr;
  int64_t item_stride, row, col;
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
  float out_scale, inter_scale, state_scale;
  StateView init_state;   // ptr == nullptr: start from 0
  StateView final_state;  // ptr == nullptr: not written
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
  return s;
}

// A (D, E) state per item as stored, or its transpose when the sweep's S is (E, D).
inline StateView state_view(const float* ptr, const AttnParams& p, bool transposed) {
  const int64_t e = p.value_dim;
  return transposed ? StateView{const_cast<float*>(ptr), p.head_dim * e, 1, e}
                    : StateView{const_cast<float*>(ptr), p.head_dim * e, e, 1};
}

cudaError_t launch_sweep(const SweepParams& p, cudaStream_t stream);

// One explicit instantiation per (element type, width_ab bucket) lives in its own .cu so the
// build compiles them in parallel; `Elem` is float (exact FFMA path), __half or __nv_bfloat16.
template <typename Elem, int kWidthAB>
cudaError_t launch_sweep_for(const SweepParams& p, cudaStream_t stream);

}  // namespace lightning

// Torch-free description of one lightning::attn call, shared by the CPU and CUDA kernels.
//
// Work is split into "sequences": (batch, head) pairs, or (sequence, head) pairs in varlen
// mode where B == 1 and cu_seqlens marks where each packed sequence starts. Every strided
// tensor is addressed as base + b*stride_b + h*stride_h + n*stride_n + d (unit last stride).
#pragma once

#include <cstdint>

#include "../common/dtype.h"
#include "../common/limits.h"
#include "../common/macros.h"

namespace lightning {

using common::DType;

struct Strides {
  int64_t b, h, n;  // in elements; the last dimension is always contiguous
};

struct AttnParams {
  DType dtype;
  int batch, heads, seqlen, head_dim, value_dim;  // B, H, N, D, E
  double scale;  // kept in double so the fp64 CPU path is exact; CUDA kernels use float

  const void* q;  // (B, H, N, D)
  const void* k;  // (B, H, N, D)
  const void* v;  // (B, H, N, E)
  void* o;        // (B, H, N, E)
  Strides q_stride, k_stride, v_stride, o_stride;

  const float* slope;  // (H,) decay rates s_h >= 0, or nullptr for no decay

  // Varlen: num_seqs + 1 offsets into N (B == 1); nullptr means one sequence per batch row.
  const int64_t* cu_seqlens;
  int num_seqs;  // B, or the number of packed sequences

  const float* initial_state;  // (num_seqs, H, D, E) fp32 contiguous, or nullptr
  float* final_state;          // (num_seqs, H, D, E) fp32 contiguous, or nullptr
};

// The backward pass reads everything the forward read plus grad_out (laid out like o) and
// the gradient of the final state; it writes dq, dk, dv (laid out like q, k, v) and the
// gradient of the initial state.
struct AttnBwdParams {
  AttnParams fwd;

  const void* grad_out;  // (B, H, N, E)
  Strides grad_out_stride;
  const float* grad_final_state;  // (num_seqs, H, D, E) or nullptr

  void* dq;
  void* dk;
  void* dv;
  Strides dq_stride, dk_stride, dv_stride;
  float* grad_initial_state;  // (num_seqs, H, D, E) or nullptr
};

// One decode step for every (batch, head): S = lambda S + k v^T; o = scale * S^T q.
struct AttnDecodeParams {
  DType dtype;
  int batch, heads, head_dim, value_dim;
  double scale;  // kept in double so the fp64 CPU path is exact; CUDA kernels use float
  const void* q;  // (B, H, D)
  const void* k;  // (B, H, D)
  const void* v;  // (B, H, E)
  void* o;        // (B, H, E)
  int64_t q_stride_b, q_stride_h, k_stride_b, k_stride_h, v_stride_b, v_stride_h;
  const float* slope;  // (H,) or nullptr
  float* state;        // (B, H, D, E) fp32 contiguous, updated in place
};

// Token range [begin, end) and state slot of work item `seq` (a sequence of one head).
struct SeqRange {
  int64_t begin, end;
};

LT_HOST_DEVICE inline SeqRange seq_range(const int64_t* cu_seqlens, int seqlen, int seq) {
  if (cu_seqlens == nullptr) return {0, seqlen};
  return {cu_seqlens[seq], cu_seqlens[seq + 1]};
}

}  // namespace lightning

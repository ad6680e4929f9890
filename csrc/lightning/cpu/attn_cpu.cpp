// CPU kernels of lightning::attn: the decayed sweep of ../sweep_params.h, blockwise as in
// DESIGN.md section 2, one (sequence, head) work item at a time. The forward is one sweep and
// the backward three, exactly the sweeps the GPU runs, so these kernels also check the
// operand roles the CUDA path uses. The state and all sums are in the accumulator type
// (float for float data, double for double).
#include "attn_cpu.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "../../common/macros.h"
#include "../sweep_params.h"

namespace lightning {
namespace {

constexpr int kBlock = common::kLightningBlock;

// C (M x N) += A (M x K) B (K x N), all row-major with leading dimensions lda, ldb, ldc. Four
// rows of C at a time share each load of B's row, and the inner loop runs along contiguous
// rows, which the compiler vectorises; B is read M / 4 times, from cache for block-sized N.
template <typename Acc>
LT_ALWAYS_INLINE void gemm_acc_impl(int M, int N, int K, const Acc* A, int lda, const Acc* B, int ldb, Acc* C,
                                    int ldc) {
  int i = 0;
  for (; i + 4 <= M; i += 4) {
    Acc* c0 = C + i * ldc;
    Acc* c1 = c0 + ldc;
    Acc* c2 = c1 + ldc;
    Acc* c3 = c2 + ldc;
    for (int k = 0; k < K; ++k) {
      const Acc a0 = A[i * lda + k], a1 = A[(i + 1) * lda + k], a2 = A[(i + 2) * lda + k], a3 = A[(i + 3) * lda + k];
      const Acc* bk = B + k * ldb;
      for (int j = 0; j < N; ++j) {
        const Acc x = bk[j];
        c0[j] += a0 * x, c1[j] += a1 * x, c2[j] += a2 * x, c3[j] += a3 * x;
      }
    }
  }
  for (; i < M; ++i)
    for (int k = 0; k < K; ++k) {
      const Acc ai = A[i * lda + k];
      const Acc* bk = B + k * ldb;
      for (int j = 0; j < N; ++j) C[i * ldc + j] += ai * bk[j];
    }
}

// One copy of the product per instruction set (LT_CPU_CLONES).
LT_CPU_CLONES void gemm_acc(int M, int N, int K, const float* A, int lda, const float* B, int ldb, float* C, int ldc) {
  gemm_acc_impl(M, N, K, A, lda, B, ldb, C, ldc);
}
LT_CPU_CLONES void gemm_acc(int M, int N, int K, const double* A, int lda, const double* B, int ldb, double* C,
                            int ldc) {
  gemm_acc_impl(M, N, K, A, lda, B, ldb, C, ldc);
}

// The rows of one work item in sweep order: where sequence `seq`, head `head` keeps row r of
// block blk, for any (B, H, N, X) operand.
struct ItemRows {
  int64_t batch, head, begin, length;
  bool reverse;

  ItemRows(const SweepParams& p, int64_t item) : head(item % p.heads), reverse(p.reverse) {
    const int seq = static_cast<int>(item / p.heads);
    const SeqRange r = seq_range(p.cu_seqlens, p.seqlen, seq);
    batch = p.cu_seqlens ? 0 : seq;
    begin = r.begin;
    length = r.end - r.begin;
  }
  int64_t token(int64_t local) const { return reverse ? begin + length - 1 - local : begin + local; }
  template <typename T>
  T* row(const void* base, const Strides& s, int64_t local) const {
    return static_cast<T*>(const_cast<void*>(base)) + batch * s.b + head * s.h + token(local) * s.n;
  }
};

// Rows [start, start + m) of one operand, widened: element (r, x) to dst[r * row + x * col]
// (row = width, col = 1 keeps the layout; row = 1, col = kBlock transposes it).
template <typename T, typename Acc>
void load_rows(const ItemRows& rows, const void* base, const Strides& s, int64_t start, int m, int width, Acc* dst,
               int row, int col) {
  for (int r = 0; r < m; ++r) {
    const T* src = rows.row<const T>(base, s, start + r);
    for (int x = 0; x < width; ++x) dst[r * row + x * col] = static_cast<Acc>(src[x]);
  }
}

template <typename T>
void sweep_item(const SweepParams& p, int64_t item) {
  using Acc = T;
  const int A = p.width_ab, C = p.width_c;
  const ItemRows rows(p, item);
  // decay[i] = lambda^i, every exponent <= 0; `shift` as in the GPU kernel (SweepSeq):
  // reverse sweeps start from the gradient of the state after the last token.
  const Acc s = p.slope ? static_cast<Acc>(p.slope[rows.head]) : Acc(0);
  std::vector<Acc> decay(kBlock + 1);
  for (int i = 0; i <= kBlock; ++i) decay[i] = std::exp(-s * i);
  const int shift = p.reverse ? 1 : 0;
  const Acc out_scale = static_cast<Acc>(p.out_scale), inter_scale = static_cast<Acc>(p.inter_scale);
  const Acc state_scale = static_cast<Acc>(p.state_scale);

  std::vector<Acc> S(static_cast<size_t>(A) * C, Acc(0));  // (A, C)
  if (const StateView& v = p.init_state; v.ptr)
    for (int i = 0; i < A; ++i)
      for (int j = 0; j < C; ++j) S[i * C + j] = v.ptr[item * v.item_stride + i * v.row + j * v.col];
  std::vector<Acc> a(kBlock * A), c(kBlock * C);
  std::vector<Acc> b_t(static_cast<size_t>(A) * kBlock);  // b^T, then (diag(kd) b)^T: (A, kBlock)
  std::vector<Acc> scores(kBlock * kBlock), out(static_cast<size_t>(kBlock) * C);

  for (int64_t start = 0; start < rows.length; start += kBlock) {
    const int m = static_cast<int>(std::min<int64_t>(kBlock, rows.length - start));
    load_rows<T>(rows, p.a, p.a_stride, start, m, A, a.data(), A, 1);
    load_rows<T>(rows, p.b, p.b_stride, start, m, A, b_t.data(), 1, kBlock);
    load_rows<T>(rows, p.c, p.c_stride, start, m, C, c.data(), C, 1);

    // out = diag(inter_scale * lambda^(r+1-shift)) a S  +  P c,
    // P[r][k] = out_scale * lambda^(r-k) (a_r . b_k) for k <= r, 0 above the diagonal
    std::fill(out.begin(), out.begin() + m * C, Acc(0));
    gemm_acc(m, C, A, a.data(), A, S.data(), C, out.data(), C);
    for (int r = 0; r < m; ++r)
      for (int x = 0; x < C; ++x) out[r * C + x] *= inter_scale * decay[r + 1 - shift];
    std::fill(scores.begin(), scores.begin() + m * kBlock, Acc(0));
    gemm_acc(m, m, A, a.data(), A, b_t.data(), kBlock, scores.data(), kBlock);
    for (int r = 0; r < m; ++r)
      for (int k = 0; k < m; ++k) scores[r * kBlock + k] = k <= r ? scores[r * kBlock + k] * out_scale * decay[r - k] : Acc(0);
    gemm_acc(m, C, m, scores.data(), kBlock, c.data(), C, out.data(), C);
    for (int r = 0; r < m; ++r) {
      T* dst = rows.row<T>(p.out, p.out_stride, start + r);
      for (int x = 0; x < C; ++x) dst[x] = static_cast<T>(out[r * C + x]);
    }

    // S = lambda^m S + state_scale * sum_k lambda^(m-1-k+shift) b_k c_k^T
    for (Acc& x : S) x *= decay[m];
    for (int i = 0; i < A; ++i)
      for (int k = 0; k < m; ++k) b_t[i * kBlock + k] *= state_scale * decay[m - 1 - k + shift];
    gemm_acc(A, C, m, b_t.data(), kBlock, c.data(), C, S.data(), C);
  }
  if (const StateView& v = p.final_state; v.ptr)
    for (int i = 0; i < A; ++i)
      for (int j = 0; j < C; ++j) v.ptr[item * v.item_stride + i * v.row + j * v.col] = static_cast<float>(S[i * C + j]);
}

void sweep_items(const SweepParams& p, int64_t begin, int64_t end) {
  for (int64_t item = begin; item < end; ++item) {
    if (p.dtype == DType::kFloat64)
      sweep_item<double>(p, item);
    else
      sweep_item<float>(p, item);
  }
}

template <typename T>
void attn_decode_item(const AttnDecodeParams& p, int64_t item) {
  using Acc = T;
  const int b = item / p.heads, head = item % p.heads, D = p.head_dim, E = p.value_dim;
  const T* q = static_cast<const T*>(p.q) + b * p.q_stride_b + head * p.q_stride_h;
  const T* k = static_cast<const T*>(p.k) + b * p.k_stride_b + head * p.k_stride_h;
  const T* v = static_cast<const T*>(p.v) + b * p.v_stride_b + head * p.v_stride_h;
  T* o = static_cast<T*>(p.o) + static_cast<int64_t>(item) * E;
  float* S = p.state + static_cast<int64_t>(item) * D * E;
  const Acc lambda = p.slope ? std::exp(-static_cast<Acc>(p.slope[head])) : Acc(1);
  std::vector<Acc> out(E, Acc(0));
  for (int i = 0; i < D; ++i) {
    for (int x = 0; x < E; ++x) {
      const Acc s = lambda * S[i * E + x] + static_cast<Acc>(k[i]) * static_cast<Acc>(v[x]);
      S[i * E + x] = static_cast<float>(s);
      out[x] += s * static_cast<Acc>(q[i]);
    }
  }
  for (int x = 0; x < E; ++x) o[x] = static_cast<T>(static_cast<Acc>(p.scale) * out[x]);
}

}  // namespace

void attn_fwd_cpu(const AttnParams& p, int64_t item_begin, int64_t item_end) {
  sweep_items(forward_sweep(p), item_begin, item_end);
}

void attn_bwd_cpu(const AttnBwdParams& p, int64_t item_begin, int64_t item_end) {
  for (const SweepParams& s : backward_sweeps(p)) sweep_items(s, item_begin, item_end);
}

void attn_decode_cpu(const AttnDecodeParams& p, int64_t item_begin, int64_t item_end) {
  for (int64_t item = item_begin; item < item_end; ++item) {
    if (p.dtype == DType::kFloat64)
      attn_decode_item<double>(p, item);
    else
      attn_decode_item<float>(p, item);
  }
}

}  // namespace lightning

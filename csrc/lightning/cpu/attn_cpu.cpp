// CPU kernels of lightning::attn: the blockwise algorithm of DESIGN.md section 2, one
// (sequence, head) work item at a time, with the state S (D x E) and all sums in the
// accumulator type (float for float data, double for double).
#include "attn_cpu.h"

#include <algorithm>
#include <cmath>
#include <vector>

namespace lightning {
namespace {

constexpr int kBlock = 64;

// A strided (N, X) slice of one (batch, head) of a (B, H, N, X) tensor.
template <typename T>
struct RowView {
  T* base;
  int64_t stride_n;
  T* row(int64_t n) const { return base + n * stride_n; }
};

template <typename T>
RowView<T> head_rows(const void* data, const Strides& s, int64_t b, int64_t h) {
  return {static_cast<T*>(const_cast<void*>(data)) + b * s.b + h * s.h, s.n};
}

// powers[i] = lambda^i = exp(-s i), i in [0, kBlock]: every exponent stays <= 0.
template <typename Acc>
std::vector<Acc> decay_powers(const float* slope, int head) {
  const Acc s = slope ? static_cast<Acc>(slope[head]) : Acc(0);
  std::vector<Acc> powers(kBlock + 1);
  for (int i = 0; i <= kBlock; ++i) powers[i] = std::exp(-s * i);
  return powers;
}

// Copies rows [start, start + m) of a strided slice into a dense (m, width) buffer.
template <typename T, typename Acc>
void load_block(const RowView<T>& src, int64_t start, int m, int width, Acc* dst) {
  for (int r = 0; r < m; ++r) {
    const T* row = src.row(start + r);
    for (int x = 0; x < width; ++x) dst[r * width + x] = static_cast<Acc>(row[x]);
  }
}

template <typename Acc>
Acc dot(const Acc* a, const Acc* b, int n) {
  Acc sum = 0;
  for (int i = 0; i < n; ++i) sum += a[i] * b[i];
  return sum;
}

// y[x] += alpha * v[x]
template <typename Acc>
void axpy(Acc alpha, const Acc* v, Acc* y, int n) {
  for (int i = 0; i < n; ++i) y[i] += alpha * v[i];
}

// S = decay * S + sum_c weights[c] a_c b_c^T over the m rows of a (m, rows) and b (m, cols).
template <typename Acc>
void decayed_rank_update(Acc* S, int rows, int cols, Acc decay, const Acc* weights, const Acc* a,
                         const Acc* b, int m) {
  for (int i = 0; i < rows * cols; ++i) S[i] *= decay;
  for (int c = 0; c < m; ++c)
    for (int i = 0; i < rows; ++i) axpy(weights[c] * a[c * rows + i], b + c * cols, S + i * cols, cols);
}

// out[i] = sum_x S[i][x] vec[x]  (S is rows x cols)
template <typename Acc>
void mat_vec(const Acc* S, int rows, int cols, const Acc* vec, Acc* out) {
  for (int i = 0; i < rows; ++i) out[i] = dot(S + i * cols, vec, cols);
}

// out[x] = sum_i S[i][x] vec[i]
template <typename Acc>
void mat_t_vec(const Acc* S, int rows, int cols, const Acc* vec, Acc* out) {
  std::fill(out, out + cols, Acc(0));
  for (int i = 0; i < rows; ++i) axpy(vec[i], S + i * cols, out, cols);
}

// S = lambda^m S + (diag(kd) K)^T V over the m rows of a block, kd[c] = lambda^(m-1-c).
template <typename Acc>
void advance_state(Acc* S, const std::vector<Acc>& pw, const Acc* K, const Acc* V, int m, int D, int E, Acc* kd) {
  for (int c = 0; c < m; ++c) kd[c] = pw[m - 1 - c];
  decayed_rank_update(S, D, E, pw[m], kd, K, V, m);
}

// The state of item `offset` from `init` (fp32, may be null: zeros).
template <typename Acc>
std::vector<Acc> initial_state_of(const float* init, int64_t offset, int D, int E) {
  std::vector<Acc> S(static_cast<size_t>(D) * E, Acc(0));
  if (init) std::copy(init + offset, init + offset + static_cast<int64_t>(D) * E, S.begin());
  return S;
}

template <typename T, typename Acc>
void store_row(const Acc* src, Acc scale, int width, T* dst) {
  for (int x = 0; x < width; ++x) dst[x] = static_cast<T>(scale * src[x]);
}

template <typename T>
void attn_fwd_item(const AttnParams& p, int64_t item) {
  using Acc = T;
  const int seq = item / p.heads, head = item % p.heads, D = p.head_dim, E = p.value_dim;
  const int64_t b = p.cu_seqlens ? 0 : seq;
  const SeqRange range = seq_range(p.cu_seqlens, p.seqlen, seq);
  const auto q = head_rows<T>(p.q, p.q_stride, b, head);
  const auto k = head_rows<T>(p.k, p.k_stride, b, head);
  const auto v = head_rows<T>(p.v, p.v_stride, b, head);
  const auto o = head_rows<T>(p.o, p.o_stride, b, head);
  const std::vector<Acc> pw = decay_powers<Acc>(p.slope, head);
  const int64_t state_offset = static_cast<int64_t>(item) * D * E;

  std::vector<Acc> S = initial_state_of<Acc>(p.initial_state, state_offset, D, E);  // (D, E)
  std::vector<Acc> Q(kBlock * D), K(kBlock * D), V(kBlock * E), out(E), kd(kBlock);

  for (int64_t start = range.begin; start < range.end; start += kBlock) {
    const int m = static_cast<int>(std::min<int64_t>(kBlock, range.end - start));
    load_block(q, start, m, D, Q.data());
    load_block(k, start, m, D, K.data());
    load_block(v, start, m, E, V.data());
    for (int r = 0; r < m; ++r) {
      // inter block: lambda^(r+1) S^T q_r, through the state of the blocks before
      mat_t_vec(S.data(), D, E, &Q[r * D], out.data());
      for (int x = 0; x < E; ++x) out[x] *= pw[r + 1];
      // intra block: sum_{c<=r} lambda^(r-c) (q_r . k_c) v_c
      for (int c = 0; c <= r; ++c) axpy(pw[r - c] * dot(&Q[r * D], &K[c * D], D), &V[c * E], out.data(), E);
      store_row(out.data(), static_cast<Acc>(p.scale), E, o.row(start + r));
    }
    advance_state(S.data(), pw, K.data(), V.data(), m, D, E, kd.data());
  }
  if (p.final_state)
    for (int i = 0; i < D * E; ++i) p.final_state[state_offset + i] = static_cast<float>(S[i]);
}

template <typename T>
void attn_bwd_item(const AttnBwdParams& bp, int64_t item) {
  using Acc = T;
  const AttnParams& p = bp.fwd;
  const int seq = item / p.heads, head = item % p.heads, D = p.head_dim, E = p.value_dim;
  const int64_t b = p.cu_seqlens ? 0 : seq;
  const SeqRange range = seq_range(p.cu_seqlens, p.seqlen, seq);
  const auto q = head_rows<T>(p.q, p.q_stride, b, head);
  const auto k = head_rows<T>(p.k, p.k_stride, b, head);
  const auto v = head_rows<T>(p.v, p.v_stride, b, head);
  const auto dout = head_rows<T>(bp.grad_out, bp.grad_out_stride, b, head);
  const auto dq = head_rows<T>(bp.dq, bp.dq_stride, b, head);
  const auto dk = head_rows<T>(bp.dk, bp.dk_stride, b, head);
  const auto dv = head_rows<T>(bp.dv, bp.dv_stride, b, head);
  const std::vector<Acc> pw = decay_powers<Acc>(p.slope, head);
  const Acc scale = static_cast<Acc>(p.scale);
  const int64_t state_offset = static_cast<int64_t>(item) * D * E;

  std::vector<Acc> S = initial_state_of<Acc>(p.initial_state, state_offset, D, E);
  std::vector<Acc> Q(kBlock * D), K(kBlock * D), V(kBlock * E), dO(kBlock * E);
  std::vector<Acc> gq(D), gk(kBlock * D), gv(kBlock * E), kd(kBlock), qd(kBlock);

  // dQ in forward order, recomputing the state: dq_r = scale (sum_{c<=r} lambda^(r-c)
  // (do_r . v_c) k_c + lambda^(r+1) S do_r)
  for (int64_t start = range.begin; start < range.end; start += kBlock) {
    const int m = static_cast<int>(std::min<int64_t>(kBlock, range.end - start));
    load_block(k, start, m, D, K.data());
    load_block(v, start, m, E, V.data());
    load_block(dout, start, m, E, dO.data());
    for (int r = 0; r < m; ++r) {
      mat_vec(S.data(), D, E, &dO[r * E], gq.data());
      for (int x = 0; x < D; ++x) gq[x] *= pw[r + 1];
      for (int c = 0; c <= r; ++c) axpy(pw[r - c] * dot(&dO[r * E], &V[c * E], E), &K[c * D], gq.data(), D);
      store_row(gq.data(), scale, D, dq.row(start + r));
    }
    advance_state(S.data(), pw, K.data(), V.data(), m, D, E, kd.data());
  }

  // dK, dV in reverse order with dS, the gradient of the state after the current block.
  std::fill(S.begin(), S.end(), Acc(0));
  if (bp.grad_final_state)
    std::copy(bp.grad_final_state + state_offset, bp.grad_final_state + state_offset + D * E, S.begin());
  const int64_t length = range.end - range.begin;
  for (int64_t start = range.begin + (length > 0 ? (length - 1) / kBlock * kBlock : 0);
       start >= range.begin && length > 0; start -= kBlock) {
    const int m = static_cast<int>(std::min<int64_t>(kBlock, range.end - start));
    load_block(q, start, m, D, Q.data());
    load_block(k, start, m, D, K.data());
    load_block(v, start, m, E, V.data());
    load_block(dout, start, m, E, dO.data());
    for (int c = 0; c < m; ++c) {
      // inter: dk_c = lambda^(m-1-c) dS v_c; dv_c = lambda^(m-1-c) dS^T k_c
      Acc* gk_c = &gk[c * D];
      Acc* gv_c = &gv[c * E];
      mat_vec(S.data(), D, E, &V[c * E], gk_c);
      mat_t_vec(S.data(), D, E, &K[c * D], gv_c);
      for (int x = 0; x < D; ++x) gk_c[x] *= pw[m - 1 - c];
      for (int x = 0; x < E; ++x) gv_c[x] *= pw[m - 1 - c];
      // intra: dk_c += scale sum_{r>=c} lambda^(r-c) (do_r . v_c) q_r;
      //        dv_c += scale sum_{r>=c} lambda^(r-c) (q_r . k_c) do_r
      for (int r = c; r < m; ++r) {
        axpy(scale * pw[r - c] * dot(&dO[r * E], &V[c * E], E), &Q[r * D], gk_c, D);
        axpy(scale * pw[r - c] * dot(&Q[r * D], &K[c * D], D), &dO[r * E], gv_c, E);
      }
      store_row(gk_c, Acc(1), D, dk.row(start + c));
      store_row(gv_c, Acc(1), E, dv.row(start + c));
    }
    // dS = lambda^m dS + scale (diag(qd) Q)^T dO, qd[r] = lambda^(r+1)
    for (int r = 0; r < m; ++r) qd[r] = scale * pw[r + 1];
    decayed_rank_update(S.data(), D, E, pw[m], qd.data(), Q.data(), dO.data(), m);
  }
  if (bp.grad_initial_state)
    for (int i = 0; i < D * E; ++i) bp.grad_initial_state[state_offset + i] = static_cast<float>(S[i]);
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
  store_row(out.data(), static_cast<Acc>(p.scale), E, o);
}

template <typename Fn>
void for_items(int64_t begin, int64_t end, Fn fn) {
  for (int64_t item = begin; item < end; ++item) fn(item);
}

}  // namespace

void attn_fwd_cpu(const AttnParams& p, int64_t item_begin, int64_t item_end) {
  if (p.dtype == DType::kFloat64)
    for_items(item_begin, item_end, [&](int64_t i) { attn_fwd_item<double>(p, i); });
  else
    for_items(item_begin, item_end, [&](int64_t i) { attn_fwd_item<float>(p, i); });
}

void attn_bwd_cpu(const AttnBwdParams& p, int64_t item_begin, int64_t item_end) {
  if (p.fwd.dtype == DType::kFloat64)
    for_items(item_begin, item_end, [&](int64_t i) { attn_bwd_item<double>(p, i); });
  else
    for_items(item_begin, item_end, [&](int64_t i) { attn_bwd_item<float>(p, i); });
}

void attn_decode_cpu(const AttnDecodeParams& p, int64_t item_begin, int64_t item_end) {
  if (p.dtype == DType::kFloat64)
    for_items(item_begin, item_end, [&](int64_t i) { attn_decode_item<double>(p, i); });
  else
    for_items(item_begin, item_end, [&](int64_t i) { attn_decode_item<float>(p, i); });
}

}  // namespace lightning

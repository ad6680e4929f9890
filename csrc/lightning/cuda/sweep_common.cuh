// Index arithmetic and small helpers shared by the sweep kernels (tensor-core and FFMA):
// which sequence, head and column slice a CTA owns, where its rows live, and the decay
// factors, every one of them lambda^x = exp(-s x) with x >= 0.
#pragma once

#include "../../common/tile.cuh"
#include "sweep.h"

namespace lightning {

// The work of one CTA: grid = (column slices of c, heads, sequences x chunks). Unsplit sweeps
// have one chunk per sequence; a split sweep's chunk is rows [chunk * chunk_rows, ...) of the
// sequence in sweep order, and `length` counts only its rows.
struct SweepSeq {
  int head, item, c0, block;
  int chunk, chunks;
  int64_t batch, length;
  int64_t start;  // token of sweep row 0: the first token, or the last one when reverse
  int dir;        // +1, or -1 when reverse: token = start + dir * (sweep row)
  int num_blocks;
  float rate;     // the head's decay rate s (lambda = exp(-s)), 0 without slopes
  // Forward sweeps start from the state before token 0, which reaches row r of a block
  // through lambda^(r+1); reverse sweeps start from the gradient of the state after the last
  // token, which reaches it through lambda^r. Key weights shift the same way.
  int decay_shift;

  __device__ SweepSeq(const SweepParams& p, int slice, int block_rows) {
    c0 = blockIdx.x * slice;
    head = blockIdx.y;
    chunks = p.chunks;
    const int seq = blockIdx.z / chunks;
    chunk = blockIdx.z % chunks;
    item = seq * p.heads + head;
    const SeqRange r = seq_range(p.cu_seqlens, p.seqlen, seq);
    length = r.end - r.begin;
    batch = p.cu_seqlens ? 0 : seq;
    decay_shift = p.reverse ? 1 : 0;
    start = p.reverse ? r.end - 1 : r.begin;
    dir = p.reverse ? -1 : 1;
    if (chunks > 1) {
      const int64_t skipped = chunk * p.chunk_rows;
      start += dir * skipped;
      length = length - skipped < p.chunk_rows ? length - skipped : p.chunk_rows;
      if (length < 0) length = 0;
    }
    block = block_rows;
    num_blocks = static_cast<int>((length + block - 1) / block);
    rate = p.slope ? p.slope[head] : 0.f;
  }

  // Which state a view holds for this CTA (StateView), and whether it takes part.
  __device__ int64_t state_index(const StateView& v) const { return v.per_chunk ? int64_t(item) * chunks + chunk : item; }
  __device__ bool reads_init(const StateView& v) const { return v.ptr != nullptr && (v.per_chunk || chunk == 0); }
  __device__ bool writes_final(const StateView& v) const {
    return v.ptr != nullptr && (v.per_chunk || chunk == chunks - 1);
  }

  // lambda^x
  __device__ float decay_pow(float x) const { return expf(-rate * x); }

  // Element offset of sweep row `local` (counted from the sweep's start) in a tensor with
  // strides s; rows past the sequence give offsets that must not be read.
  __device__ int64_t row_offset(const Strides& s, int64_t local) const {
    return batch * s.b + head * s.h + (start + dir * local) * s.n;
  }

  // lambda^(r+1) (forward) or lambda^r (reverse) for row r of a block.
  __device__ float inter_decay(const float* decay, int r) const { return decay[r + 1 - decay_shift]; }

  // scale * lambda^(m-1-key) (forward) or scale * lambda^(m-key) (reverse) for the keys of a
  // block of m rows, 0 for rows past its end.
  __device__ float key_decay(const float* decay, float scale, int m, int key) const {
    return key < m ? scale * decay[m - 1 - key + decay_shift] : 0.f;
  }

  __device__ int rows_in_block(int blk) const {
    const int64_t left = length - static_cast<int64_t>(blk) * block;
    return left < block ? static_cast<int>(left) : block;
  }

  // Token index of row r of block blk in sweep order, or -1 past the end of the sequence.
  __device__ int64_t token(int blk, int r) const {
    const int64_t local = static_cast<int64_t>(blk) * block + r;
    if (local >= length) return -1;
    return start + dir * local;
  }

  template <typename T>
  __device__ T* row(const void* base, const Strides& s, int64_t tok) const {
    return static_cast<T*>(const_cast<void*>(base)) + batch * s.b + head * s.h + tok * s.n;
  }

  // Element (i, c0 + j) of the state this CTA starts from, 0 outside the state or without one.
  __device__ float load_state(const SweepParams& p, int i, int j) const {
    const StateView& v = p.init_state;
    if (!reads_init(v) || i >= p.width_ab || c0 + j >= p.width_c) return 0.f;
    return v.ptr[state_index(v) * v.item_stride + i * v.row + (c0 + j) * v.col];
  }
  // Callers check writes_final(p.final_state) first.
  __device__ void store_state(const SweepParams& p, int i, int j, float x) const {
    const StateView& v = p.final_state;
    if (i >= p.width_ab || c0 + j >= p.width_c) return;
    v.ptr[state_index(v) * v.item_stride + i * v.row + (c0 + j) * v.col] = x;
  }
};

// An empty sequence (or chunk) leaves its state as it was.
__device__ inline void copy_state_through(const SweepParams& p, const SweepSeq& seq, int rows, int slice) {
  if (!seq.writes_final(p.final_state)) return;
  for (int x = threadIdx.x; x < rows * slice; x += blockDim.x)
    seq.store_state(p, x / slice, x % slice, seq.load_state(p, x / slice, x % slice));
}

__device__ inline void fill_decay_table(const SweepSeq& seq, float* decay, int block) {
  for (int i = threadIdx.x; i <= block; i += blockDim.x) decay[i] = seq.decay_pow(static_cast<float>(i));
}

// scale * lambda^(r-c) on and below the diagonal, exactly 0 above it.
__device__ __forceinline__ float causal_decay(const float* decay, float scale, int r, int c) {
  return r >= c ? scale * decay[r - c] : 0.f;
}

template <typename T>
__device__ __forceinline__ void scale_pairs(uint32_t& x, float2 s) {
  const float2 f = tile::unpack_pair<T>(x);
  x = tile::pack_pair<T>(f.x * s.x, f.y * s.y);
}

template <typename T>
__device__ __forceinline__ void store_pair(T* dst, float x, float y) {
  *reinterpret_cast<uint32_t*>(dst) = tile::pack_pair<T>(x, y);
}

// Visits every element of a warp's C-fragment array (kMTiles x 16 rows from row0, kNTiles x 8
// columns): f(mt, n, e, row, col).
template <int kMTiles, int kNTiles, typename F>
__device__ __forceinline__ void for_state_fragments(int row0, int lane, F&& f) {
  const int g = lane / 4, t = lane % 4;
#pragma unroll
  for (int mt = 0; mt < kMTiles; ++mt)
#pragma unroll
    for (int n = 0; n < kNTiles; ++n)
#pragma unroll
      for (int e = 0; e < 4; ++e) f(mt, n, e, row0 + mt * 16 + g + (e / 2) * 8, n * 8 + 2 * t + (e % 2));
}

}  // namespace lightning

// The tile layer shared by the CUDA kernels: asynchronous global->shared copies, ldmatrix
// fragment loads and the m16n8k16 tensor-core product (sm_80+ instructions, valid on
// sm_90). Fragment layouts follow the PTX ISA: for lane l, g = l / 4 and t = l % 4;
//   A (16x16, row-major):  a0 = (g, 2t..2t+1)  a1 = (g+8, 2t..)  a2 = (g, 2t+8..)  a3 = (g+8, 2t+8..)
//   B (16x8,  k-major):    b0 = (2t..2t+1, g)  b1 = (2t+8.., g)
//   C (16x8,  fp32):       c0,c1 = (g, 2t..2t+1)  c2,c3 = (g+8, 2t..2t+1)
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

namespace tile {

// ---- element types -------------------------------------------------------------------
template <typename T>
struct Pair;  // two packed 16-bit values in one 32-bit register
template <>
struct Pair<__nv_bfloat16> {
  using type = __nv_bfloat162;
  static __device__ __forceinline__ type from_floats(float x, float y) { return __floats2bfloat162_rn(x, y); }
  static __device__ __forceinline__ float2 to_floats(type v) { return __bfloat1622float2(v); }
};
template <>
struct Pair<__half> {
  using type = __half2;
  static __device__ __forceinline__ type from_floats(float x, float y) { return __floats2half2_rn(x, y); }
  static __device__ __forceinline__ float2 to_floats(type v) { return __half22float2(v); }
};

template <typename T>
__device__ __forceinline__ uint32_t pack_pair(float x, float y) {
  auto v = Pair<T>::from_floats(x, y);
  return *reinterpret_cast<uint32_t*>(&v);
}

template <typename T>
__device__ __forceinline__ float2 unpack_pair(uint32_t r) {
  return Pair<T>::to_floats(*reinterpret_cast<typename Pair<T>::type*>(&r));
}

template <typename T>
__device__ __forceinline__ float to_float(T x) { return static_cast<float>(x); }
template <>
__device__ __forceinline__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }
template <>
__device__ __forceinline__ float to_float(__half x) { return __half2float(x); }

template <typename T>
__device__ __forceinline__ T from_float(float x) { return static_cast<T>(x); }
template <>
__device__ __forceinline__ __nv_bfloat16 from_float(float x) { return __float2bfloat16_rn(x); }
template <>
__device__ __forceinline__ __half from_float(float x) { return __float2half_rn(x); }

// ---- asynchronous copies ---------------------------------------------------------------
__device__ __forceinline__ uint32_t smem_addr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// Copies 16 bytes global->shared, or writes 16 zero bytes when !valid (tails and masked
// columns cost no memory traffic). `src` must be a valid address even when !valid.
__device__ __forceinline__ void cp_async_16(void* dst, const void* src, bool valid) {
  const int src_bytes = valid ? 16 : 0;
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_addr(dst)), "l"(src),
               "r"(src_bytes));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void cp_async_wait() { asm volatile("cp.async.wait_group %0;\n" ::"n"(N)); }

// A CTA-wide barrier that warps may reach from different code (warp-specialised kernels):
// unlike __syncthreads() it is defined when roles branch apart.
__device__ __forceinline__ void cta_barrier(int threads) {
  asm volatile("bar.sync 1, %0;\n" ::"r"(threads) : "memory");
}

// ---- shared-memory layouts -------------------------------------------------------------
// A row-major tile of 16-bit elements, kCols wide. Rows of a multiple of 64 elements (eight
// 16-byte chunks) are XOR-swizzled by chunk, so ldmatrix's eight row addresses land in eight
// different bank groups with no padding; narrower rows are padded by one chunk instead.
template <int kCols>
struct SmemLayout {
  static constexpr bool kSwizzle = kCols % 64 == 0;
  static constexpr int kRowStride = kSwizzle ? kCols : kCols + 8;  // elements
  static constexpr int elems(int rows) { return rows * kRowStride; }
  __device__ __forceinline__ static int offset(int row, int col) {
    if constexpr (kSwizzle) return row * kRowStride + ((((col >> 3) ^ (row & 7))) << 3) + (col & 7);
    return row * kRowStride + col;
  }
};

// ---- fragments ---------------------------------------------------------------------------
struct FragA {
  uint32_t x[4];
};
struct FragB2 {  // two adjacent n8 B fragments: (b0, b1) of tile 0, then of tile 1
  uint32_t x[4];
};

// Four 8x8 matrices; lane l gives the row address of matrix l / 8.
__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const void* row_ptr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_addr(row_ptr)));
}
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], const void* row_ptr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_addr(row_ptr)));
}

// A 16x16 tile at (row0, col0) of a row-major shared tile with layout L.
template <typename L, typename T>
__device__ __forceinline__ FragA load_a(const T* s, int row0, int col0, int lane) {
  FragA f;
  ldmatrix_x4(f.x, s + L::offset(row0 + (lane % 16), col0 + (lane / 16) * 8));
  return f;
}
// A 16x16 tile of the transpose: A[m][k] = s[k0 + k][m0 + m] (k along the rows of s).
template <typename L, typename T>
__device__ __forceinline__ FragA load_a_trans(const T* s, int k0, int m0, int lane) {
  FragA f;
  ldmatrix_x4_trans(f.x, s + L::offset(k0 + (lane % 8) + (lane / 16) * 8, m0 + ((lane / 8) % 2) * 8));
  return f;
}
// B for k16 x n16 where B[k][n] = s[n0 + n][k0 + k] (n along the rows of s).
template <typename L, typename T>
__device__ __forceinline__ FragB2 load_b_nk(const T* s, int n0, int k0, int lane) {
  FragB2 f;
  ldmatrix_x4(f.x, s + L::offset(n0 + (lane % 8) + (lane / 16) * 8, k0 + ((lane / 8) % 2) * 8));
  return f;
}
// B for k16 x n16 where B[k][n] = s[k0 + k][n0 + n] (k along the rows of s).
template <typename L, typename T>
__device__ __forceinline__ FragB2 load_b_kn(const T* s, int k0, int n0, int lane) {
  FragB2 f;
  ldmatrix_x4_trans(f.x, s + L::offset(k0 + (lane % 8) + ((lane / 8) % 2) * 8, n0 + (lane / 16) * 8));
  return f;
}

// ---- products ----------------------------------------------------------------------------
template <typename T>
__device__ __forceinline__ void mma_16816(float (&c)[4], const FragA& a, uint32_t b0, uint32_t b1);

template <>
__device__ __forceinline__ void mma_16816<__nv_bfloat16>(float (&c)[4], const FragA& a, uint32_t b0,
                                                         uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a.x[0]), "r"(a.x[1]), "r"(a.x[2]), "r"(a.x[3]), "r"(b0), "r"(b1));
}
template <>
__device__ __forceinline__ void mma_16816<__half>(float (&c)[4], const FragA& a, uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a.x[0]), "r"(a.x[1]), "r"(a.x[2]), "r"(a.x[3]), "r"(b0), "r"(b1));
}

// c[2j], c[2j+1] += a * (the two n8 tiles of b)
template <typename T>
__device__ __forceinline__ void mma_16x16(float (&c0)[4], float (&c1)[4], const FragA& a, const FragB2& b) {
  mma_16816<T>(c0, a, b.x[0], b.x[1]);
  mma_16816<T>(c1, a, b.x[2], b.x[3]);
}

// The C fragments of two adjacent n8 tiles (16 x 16 keys) as the A fragment of the next
// product (the accumulator-to-operand reuse of FlashAttention-2).
template <typename T>
__device__ __forceinline__ FragA acc_to_a(const float (&c0)[4], const float (&c1)[4]) {
  FragA f;
  f.x[0] = pack_pair<T>(c0[0], c0[1]);
  f.x[1] = pack_pair<T>(c0[2], c0[3]);
  f.x[2] = pack_pair<T>(c1[0], c1[1]);
  f.x[3] = pack_pair<T>(c1[2], c1[3]);
  return f;
}

}  // namespace tile

// Hopper warpgroup matrix products (wgmma, sm_90a) on TF32, fp16 and bf16 operands. A
// warpgroup (4 consecutive warps, the first one's index a multiple of 4) multiplies a 64-row
// tile of A (in registers) by an N-row tile of B^T (K-major in shared memory) into fp32
// registers spread over its 128 threads; the product runs asynchronously until wgmma_wait, and until
// then neither the accumulators nor A's registers may be touched.
//
// Only code compiled for sm_90a may issue these: TILE_HAS_WGMMA says whether this device
// pass is one. Host code learns it from the build (IM2WIN_HAS_SM90A, defined when the arch
// list has 9.0a) and the device's compute capability (im2win's device_caps).
#pragma once

#include <cstdint>

#include "tile.cuh"

#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define TILE_HAS_WGMMA 1
#else
#define TILE_HAS_WGMMA 0
#endif

namespace tile {

// A K-major tile as wgmma reads it with the 128-byte swizzle: each row is one 128-byte line
// (32 fp32 or 64 16-bit values), rows of an 8-row atom 128 bytes apart and atoms 1024 bytes
// apart, and the eight 16-byte chunks of row r stored at chunk ^ (r % 8), so that the rows
// of a 16-byte copy or of a tensor-core read fall in different banks. Tiles must start
// 1024-byte aligned (the swizzle repeats on the address bits, not on the tile's offsets).
// Offsets are in elements of kElemBytes bytes; the byte layout is the same for every size.
template <int kElemBytes>
struct Sw128Layout {
  static constexpr int kCols = 128 / kElemBytes;
  static constexpr int kChunk = 16 / kElemBytes;  // elements of one 16-byte chunk
  static constexpr int kAtomBytes = 1024;
  static constexpr int elems(int rows) { return rows * kCols; }
  __host__ __device__ static int offset(int row, int col) {
    return row * kCols + ((col / kChunk) ^ (row & 7)) * kChunk + col % kChunk;
  }
};
using Sw128Fp32Layout = Sw128Layout<4>;

// Shared-memory matrix descriptor (PTX ISA, "matrix descriptor format") of a K-major tile in
// Sw128Layout starting at `tile`: start address and stride byte offset (next 8-row atom)
// in 16-byte units, layout type 1 (128-byte swizzle). The leading byte offset is unused for
// swizzled K-major tiles whose k extent fits in one swizzle width (set to 1). One k step
// (8 TF32 or 16 16-bit values) is 32 bytes, i.e. 2 added to the descriptor.
__device__ __forceinline__ uint64_t wgmma_desc_sw128(const void* tile) {
  const uint32_t addr = smem_addr(tile);
  return uint64_t((addr & 0x3FFFF) >> 4) | (uint64_t(1) << 16) |
         (uint64_t(Sw128Fp32Layout::kAtomBytes >> 4) << 32) | (uint64_t(1) << 62);
}
constexpr uint64_t kWgmmaDescStep = 32 >> 4;  // descriptor step of one k step (32 bytes)

// Ordering: ordinary shared stores that wgmma reads next need fence_proxy_async in the
// storing threads before the barrier; wgmma_fence before a warpgroup's first wgmma that reads
// registers written since; commit closes a group of wgmmas and wait<N> returns once at most N
// groups are still running.
__device__ __forceinline__ void fence_proxy_async() {
  asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
}
__device__ __forceinline__ void wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wgmma_commit() {
  asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
}
template <int N>
__device__ __forceinline__ void wgmma_wait() {
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
}

// Keeps the compiler from moving reads or writes of accumulator registers across an
// asynchronous wgmma: an empty asm that claims to read and write each of them.
template <int kRegs>
__device__ __forceinline__ void wgmma_fence_registers(float (&d)[kRegs]) {
#pragma unroll
  for (int i = 0; i < kRegs; ++i) asm volatile("" : "+f"(d[i])::"memory");
}
template <int kSteps>
__device__ __forceinline__ void wgmma_fence_registers(uint32_t (&a)[kSteps][4]) {
#pragma unroll
  for (int k = 0; k < kSteps; ++k)
#pragma unroll
    for (int i = 0; i < 4; ++i) asm volatile("" : "+r"(a[k][i])::"memory");
}

// The A fragment of one k step (64 rows x 32 bytes: 8 TF32 or 16 16-bit values; rows
// m0 + 16 w .. of warp w) from a K-major Sw128Layout tile, in 32-bit words: k0 counts words
// (8 a step). Thread (g = lane / 4, t = lane % 4) holds a[0] = word (g, t), a[1] = (g + 8, t),
// a[2] = (g, t + 4), a[3] = (g + 8, t + 4) of its warp's 16 rows: the TF32 fragment of
// m64nNk8, and, word by word, the 16-bit fragment of m64nNk16 (value pairs (2t, 2t + 1) and
// (2t + 8, 2t + 9) of rows g and g + 8). One ldmatrix.x4 reads the four 8 x 4-word blocks,
// which lands word (g, t) of each block in lane g * 4 + t; the swizzle puts the 8 rows in 8
// bank groups.
__device__ __forceinline__ void load_a_sw128(uint32_t (&a)[4], const void* tile, int m0, int k0,
                                             int lane) {
  const int row = m0 + lane % 8 + 8 * ((lane / 8) % 2), col = k0 + 4 * (lane / 16);
  ldmatrix_x4(a, static_cast<const float*>(tile) + Sw128Fp32Layout::offset(row, col));
}

// d (64 x N, fp32, the warpgroup's accumulator layout) = (accumulate ? d : 0) + A B, with A
// (64 x one k step of T: load_a_sw128's fragment) in registers and B^T (N x one k step,
// K-major) given by a descriptor; T = float multiplies as TF32. Thread (warp w of the
// warpgroup, lane g * 4 + t) holds d[4 j + i] at row 16 w + g + 8 (i / 2), column
// 8 j + 2 t + i % 2.
template <class T, int N>
struct Wgmma;

// The operand lists of one shape: 32 or 64 accumulators, then a[0..3], b, accumulate.
#define TILE_WGMMA_D32(o)                                                                      \
  "+f"(d[o + 0]), "+f"(d[o + 1]), "+f"(d[o + 2]), "+f"(d[o + 3]), "+f"(d[o + 4]),             \
      "+f"(d[o + 5]), "+f"(d[o + 6]), "+f"(d[o + 7]), "+f"(d[o + 8]), "+f"(d[o + 9]),         \
      "+f"(d[o + 10]), "+f"(d[o + 11]), "+f"(d[o + 12]), "+f"(d[o + 13]), "+f"(d[o + 14]),    \
      "+f"(d[o + 15]), "+f"(d[o + 16]), "+f"(d[o + 17]), "+f"(d[o + 18]), "+f"(d[o + 19]),    \
      "+f"(d[o + 20]), "+f"(d[o + 21]), "+f"(d[o + 22]), "+f"(d[o + 23]), "+f"(d[o + 24]),    \
      "+f"(d[o + 25]), "+f"(d[o + 26]), "+f"(d[o + 27]), "+f"(d[o + 28]), "+f"(d[o + 29]),    \
      "+f"(d[o + 30]), "+f"(d[o + 31])
#define TILE_WGMMA_IN "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b), "r"(accumulate)
#define TILE_WGMMA_N64_TEXT(instr, tail)                                                       \
  "{\n.reg .pred p;\nsetp.ne.b32 p, %37, 0;\n" instr                                           \
  " {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "                   \
  "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, "          \
  "{%32, %33, %34, %35}, %36, p, 1, 1" tail ";\n}\n"
#define TILE_WGMMA_N128_TEXT(instr, tail)                                                      \
  "{\n.reg .pred p;\nsetp.ne.b32 p, %69, 0;\n" instr                                           \
  " {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "                   \
  "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, "          \
  "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, "          \
  "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, "          \
  "{%64, %65, %66, %67}, %68, p, 1, 1" tail ";\n}\n"

// One specialisation per (type, N): `instr` names the instruction, `tail` is imm-trans-b
// (", 0": B is K-major), which only the 16-bit forms take.
#if TILE_HAS_WGMMA
#define TILE_WGMMA_BODY(N, instr, tail)                                                        \
  asm volatile(TILE_WGMMA_N##N##_TEXT(instr, tail)                                             \
               : TILE_WGMMA_D##N##_OUT                                                         \
               : TILE_WGMMA_IN)
#else
#define TILE_WGMMA_BODY(N, instr, tail)
#endif
#define TILE_WGMMA_D64_OUT TILE_WGMMA_D32(0)
#define TILE_WGMMA_D128_OUT TILE_WGMMA_D32(0), TILE_WGMMA_D32(32)
#define TILE_WGMMA(T, N, instr, tail)                                                          \
  template <>                                                                                  \
  struct Wgmma<T, N> {                                                                         \
    static constexpr int kRegs = N / 2;                                                        \
    __device__ __forceinline__ static void mma(float (&d)[kRegs], const uint32_t (&a)[4],      \
                                               uint64_t b, int accumulate) {                   \
      TILE_WGMMA_BODY(N, instr, tail);                                                         \
    }                                                                                          \
  };

TILE_WGMMA(float, 64, "wgmma.mma_async.sync.aligned.m64n64k8.f32.tf32.tf32", "")
TILE_WGMMA(float, 128, "wgmma.mma_async.sync.aligned.m64n128k8.f32.tf32.tf32", "")
TILE_WGMMA(__half, 64, "wgmma.mma_async.sync.aligned.m64n64k16.f32.f16.f16", ", 0")
TILE_WGMMA(__half, 128, "wgmma.mma_async.sync.aligned.m64n128k16.f32.f16.f16", ", 0")
TILE_WGMMA(__nv_bfloat16, 64, "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16", ", 0")
TILE_WGMMA(__nv_bfloat16, 128, "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16", ", 0")

#undef TILE_WGMMA
#undef TILE_WGMMA_BODY
#undef TILE_WGMMA_D64_OUT
#undef TILE_WGMMA_D128_OUT
#undef TILE_WGMMA_N64_TEXT
#undef TILE_WGMMA_N128_TEXT
#undef TILE_WGMMA_IN
#undef TILE_WGMMA_D32

}  // namespace tile

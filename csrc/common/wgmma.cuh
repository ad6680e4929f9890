// Hopper warpgroup matrix products (wgmma, sm_90a) on TF32 operands. A warpgroup (4
// consecutive warps, the first one's index a multiple of 4) multiplies a 64-row tile of A
// (in registers) by an N-row tile of B^T (K-major in shared memory) into fp32 registers
// spread over its 128 threads; the product runs asynchronously until wgmma_wait, and until
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

// A K-major tile of fp32 values as wgmma reads it with the 128-byte swizzle: each row is 32
// values (one 128-byte line), rows of an 8-row atom 128 bytes apart and atoms 1024 bytes
// apart, and the eight 16-byte chunks of row r stored at chunk ^ (r % 8), so that the rows
// of a 16-byte copy or of a tensor-core read fall in different banks. Tiles must start
// 1024-byte aligned (the swizzle repeats on the address bits, not on the tile's offsets).
struct Sw128Fp32Layout {
  static constexpr int kCols = 32;
  static constexpr int kAtomBytes = 1024;
  static constexpr int elems(int rows) { return rows * kCols; }
  __host__ __device__ static int offset(int row, int col) {
    return row * kCols + (((col >> 2) ^ (row & 7)) << 2) + (col & 3);
  }
};

// Shared-memory matrix descriptor (PTX ISA, "matrix descriptor format") of a K-major tile in
// Sw128Fp32Layout starting at `tile`: start address and stride byte offset (next 8-row atom)
// in 16-byte units, layout type 1 (128-byte swizzle). The leading byte offset is unused for
// swizzled K-major tiles whose k extent fits in one swizzle width (set to 1). Stepping k by
// 8 TF32 values adds 32 bytes, i.e. 2, to the descriptor.
__device__ __forceinline__ uint64_t wgmma_desc_sw128(const void* tile) {
  const uint32_t addr = smem_addr(tile);
  return uint64_t((addr & 0x3FFFF) >> 4) | (uint64_t(1) << 16) |
         (uint64_t(Sw128Fp32Layout::kAtomBytes >> 4) << 32) | (uint64_t(1) << 62);
}
constexpr uint64_t kWgmmaDescK8 = 32 >> 4;  // descriptor step of 8 TF32 values along k

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

// The A fragment (64 x 8 TF32 values, rows m0 + 16 w .. of warp w) of k step k0 / 8 from a
// K-major Sw128Fp32Layout tile: thread (g = lane / 4, t = lane % 4) holds a[0] = (g, t),
// a[1] = (g + 8, t), a[2] = (g, t + 4), a[3] = (g + 8, t + 4) of its warp's 16 rows. One
// ldmatrix.x4 reads the four 8 x 4 blocks (8 x 8 of 16-bit halves each), which lands value
// (g, t) of each block in lane g * 4 + t; the swizzle puts the 8 rows in 8 bank groups.
__device__ __forceinline__ void load_a_tf32(uint32_t (&a)[4], const float* tile, int m0, int k0, int lane) {
  const int row = m0 + lane % 8 + 8 * ((lane / 8) % 2), col = k0 + 4 * (lane / 16);
  ldmatrix_x4(a, tile + Sw128Fp32Layout::offset(row, col));
}

// d (64 x N, fp32, the warpgroup's accumulator layout) = (accumulate ? d : 0) + A B, with A
// (64 x 8 TF32, load_a_tf32's fragment) in registers and B^T (N x 8) given by a descriptor.
// Thread (warp w of the warpgroup, lane g * 4 + t) holds d[4 j + i] at row 16 w + g + 8 (i / 2),
// column 8 j + 2 t + i % 2.
template <int N>
struct WgmmaTf32;

template <>
struct WgmmaTf32<64> {
  static constexpr int kRegs = 32;
  __device__ __forceinline__ static void mma(float (&d)[kRegs], const uint32_t (&a)[4], uint64_t b,
                                             int accumulate) {
#if TILE_HAS_WGMMA
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %37, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n64k8.f32.tf32.tf32 "
        "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "
        "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, "
        "{%32, %33, %34, %35}, %36, p, 1, 1;\n}\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]),
          "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]),
          "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]),
          "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]),
          "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]),
          "+f"(d[31])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b), "r"(accumulate));
#endif
  }
};

template <>
struct WgmmaTf32<128> {
  static constexpr int kRegs = 64;
  __device__ __forceinline__ static void mma(float (&d)[kRegs], const uint32_t (&a)[4], uint64_t b,
                                             int accumulate) {
#if TILE_HAS_WGMMA
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %69, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n128k8.f32.tf32.tf32 "
        "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "
        "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, "
        "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, "
        "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, "
        "{%64, %65, %66, %67}, %68, p, 1, 1;\n}\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]),
          "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]),
          "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]),
          "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]),
          "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]),
          "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]),
          "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]), "+f"(d[42]),
          "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]),
          "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]),
          "+f"(d[55]), "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]),
          "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b), "r"(accumulate));
#endif
  }
};

}  // namespace tile

// Small helpers shared by the im2win CUDA kernels: element conversions, division by
// run-time constants, and the switch from a run-time dtype to a C++ type.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

#include "../conv2d_params.h"

namespace im2win {

// ---- element conversions -----------------------------------------------------------
// Explicit intrinsics: torch builds with __CUDA_NO_HALF_CONVERSIONS__ and friends, so no
// implicit float <-> half/bfloat16 conversion exists. Host too, for the host tests.

#define IM2WIN_HD __host__ __device__ __forceinline__

IM2WIN_HD float to_float(float x) { return x; }
IM2WIN_HD float to_float(__half x) { return __half2float(x); }
IM2WIN_HD float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }

template <class T>
IM2WIN_HD T from_float(float x);
template <>
IM2WIN_HD float from_float<float>(float x) { return x; }
template <>
IM2WIN_HD __half from_float<__half>(float x) { return __float2half_rn(x); }
template <>
IM2WIN_HD __nv_bfloat16 from_float<__nv_bfloat16>(float x) { return __float2bfloat16_rn(x); }

#undef IM2WIN_HD

// ---- integer helpers ----------------------------------------------------------------

__host__ __device__ constexpr int ceil_div(int a, int b) { return (a + b - 1) / b; }

// Division of a non-negative int (< 2^31) by a divisor fixed at launch, as a multiply-high
// and a shift (Granlund & Montgomery 1994, section 4): with l = ceil(log2 d) and
// m = floor(2^32 (2^l - d) / d) + 1, n / d = (mulhi(m, n) + n) >> l. The sum cannot overflow
// 32 bits because n < 2^31 and mulhi(m, n) < n. Index decoding in the gathers runs once per
// element per k-slice, where a hardware-emulated division would cost ~20 instructions.
struct FastDivmod {
  int divisor = 1;
  uint32_t multiplier = 1;
  uint32_t shift = 0;

  FastDivmod() = default;
  explicit FastDivmod(int d) : divisor(d) {
    while ((uint64_t(1) << shift) < uint64_t(d)) ++shift;
    multiplier = uint32_t(((uint64_t(1) << 32) * ((uint64_t(1) << shift) - d)) / d + 1);
  }

  __host__ __device__ int div(int n) const {
#if defined(__CUDA_ARCH__)
    const uint32_t hi = __umulhi(uint32_t(n), multiplier);
#else
    const uint32_t hi = uint32_t((uint64_t(uint32_t(n)) * multiplier) >> 32);
#endif
    return int((hi + uint32_t(n)) >> shift);
  }

  // Returns n / d and sets rem = n % d.
  __host__ __device__ int divmod(int n, int& rem) const {
    const int q = div(n);
    rem = n - q * divisor;
    return q;
  }
};

// ---- run-time dtype -> C++ type --------------------------------------------------------

// Calls f(T{}) with T the element type of `dtype` (fp32, fp16, bf16); fp64 never reaches
// CUDA, so it and anything else is cudaErrorInvalidValue.
template <class F>
cudaError_t dispatch_dtype(DType dtype, F&& f) {
  switch (dtype) {
    case DType::kFloat32: return f(float{});
    case DType::kFloat16: return f(__half{});
    case DType::kBFloat16: return f(__nv_bfloat16{});
    default: return cudaErrorInvalidValue;
  }
}

// Bytes of one element of the dtypes that reach CUDA (fp32, fp16, bf16).
inline size_t element_bytes(DType dtype) { return dtype == DType::kFloat32 ? 4 : 2; }

// The largest element offset inside one sample of an (N, C, H, W) tensor with these
// strides: the kernels address within a sample in 32-bit ints and across samples in 64 bits.
inline int64_t max_offset_in_sample(const NCHWStrides& s, int64_t c, int64_t h, int64_t w) {
  return (c - 1) * s.c + (h - 1) * s.h + (w - 1) * s.w;
}

}  // namespace im2win

// Small portability helpers shared by host and device code; no torch, no CUDA runtime.
#pragma once

#if defined(__CUDACC__)
#define LT_HOST_DEVICE __host__ __device__
#else
#define LT_HOST_DEVICE
#endif

// On a CPU kernel entry point: one copy of the function (and of everything inlined into it) per
// instruction set, picked when the library loads. The build targets plain x86-64 (SSE2); the
// machine it runs on usually has AVX2 and FMA.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && !defined(__CUDACC__)
#define LT_CPU_CLONES __attribute__((target_clones("arch=x86-64-v3", "default")))
#else
#define LT_CPU_CLONES
#endif

// Inlined into its caller whatever the compiler's cost model says (so that LT_CPU_CLONES
// reaches it); LT_ALWAYS_LAMBDA goes after a lambda's parameter list.
#if defined(__GNUC__)
#define LT_ALWAYS_INLINE __attribute__((always_inline)) inline
#define LT_ALWAYS_LAMBDA __attribute__((always_inline))
#else
#define LT_ALWAYS_INLINE inline
#define LT_ALWAYS_LAMBDA
#endif

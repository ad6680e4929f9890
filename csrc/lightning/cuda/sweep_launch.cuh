// Launches one instantiation of the sweep: the kernel family by element type (tensor cores
// for 16-bit data, FFMA for fp32) and the shared-memory width of a / b.
#pragma once

#include <type_traits>

#include "sweep.h"
#include "sweep_ffma.cuh"
#include "sweep_mma.cuh"

namespace lightning {

template <typename Kernel>
cudaError_t launch_with_smem(Kernel kernel, const SweepParams& p, int slice, int threads, size_t smem,
                             cudaStream_t stream) {
  cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem));
  if (err != cudaSuccess) return err;
  const dim3 grid((p.width_c + slice - 1) / slice, p.heads, p.num_seqs * p.chunks);  // z: sequence x chunk
  kernel<<<grid, threads, smem, stream>>>(p);
  return cudaGetLastError();
}

template <typename Elem, int kWidthAB>
cudaError_t launch_sweep_for(const SweepParams& p, cudaStream_t stream) {
  if constexpr (std::is_same_v<Elem, float>) {
    using Tr = SweepFfmaTraits<kWidthAB, kFfmaSlice>;
    return launch_with_smem(sweep_ffma_kernel<Tr>, p, Tr::kSliceC, Tr::kThreads, Tr::kSmemBytes, stream);
  } else {
    using Tr = SweepMmaTraits<Elem, kWidthAB, mma_slice_for(kWidthAB)>;
    return launch_with_smem(sweep_mma_kernel<Elem, Tr>, p, Tr::kSliceC, Tr::kThreads, Tr::kSmemBytes, stream);
  }
}

}  // namespace lightning

// Runtime dtype and width of a / b -> one compiled instantiation (sweep_<dtype>_w<width>.cu).
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "sweep.h"

namespace lightning {

template <typename Elem>
cudaError_t launch_sweep_width(const SweepParams& p, cudaStream_t stream) {
  if (p.width_ab <= 64) return launch_sweep_for<Elem, 64>(p, stream);
  if (p.width_ab <= 128) return launch_sweep_for<Elem, 128>(p, stream);
  if (p.width_ab <= 192) return launch_sweep_for<Elem, 192>(p, stream);
  return launch_sweep_for<Elem, 256>(p, stream);
}

int sweep_slice_width(const SweepParams& p) {
  if (p.dtype == DType::kFloat32) return kFfmaSlice;
  return mma_slice_for(p.width_ab <= 64 ? 64 : p.width_ab <= 128 ? 128 : p.width_ab <= 192 ? 192 : 256);
}

cudaError_t launch_sweep(const SweepParams& p, cudaStream_t stream) {
  switch (p.dtype) {
    case DType::kFloat32: return launch_sweep_width<float>(p, stream);
    case DType::kFloat16: return launch_sweep_width<__half>(p, stream);
    case DType::kBFloat16: return launch_sweep_width<__nv_bfloat16>(p, stream);
    default: return cudaErrorInvalidValue;
  }
}

}  // namespace lightning

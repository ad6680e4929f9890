// Runtime dtype and width of a / b -> one compiled instantiation (sweep_<dtype>_w<width>.cu).
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "sweep.h"

namespace lightning {

template <typename Elem>
cudaError_t launch_sweep_width(const SweepParams& p, cudaStream_t stream) {
  switch (width_ab_bucket(p.width_ab)) {
    case 64: return launch_sweep_for<Elem, 64>(p, stream);
    case 128: return launch_sweep_for<Elem, 128>(p, stream);
    case 192: return launch_sweep_for<Elem, 192>(p, stream);
    default: return launch_sweep_for<Elem, 256>(p, stream);
  }
}

int sweep_slice_width(const SweepParams& p) {
  return p.dtype == DType::kFloat32 ? kFfmaSlice : mma_slice_for(width_ab_bucket(p.width_ab));
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

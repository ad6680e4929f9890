// lightning::attn forward on CUDA: one sweep, a=q, b=k, c=v (../sweep_params.h).
#include "attn_launch.h"
#include "sweep.h"

namespace lightning {

int64_t attn_fwd_cuda_workspace(const AttnParams& p) { return sweep_workspace_floats(forward_sweep(p)); }

cudaError_t attn_fwd_cuda(const AttnParams& p, float* workspace, cudaStream_t stream) {
  return run_sweep(forward_sweep(p), workspace, stream);
}

}  // namespace lightning

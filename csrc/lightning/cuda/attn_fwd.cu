// lightning::attn forward on CUDA: one sweep, a=q, b=k, c=v (../sweep_params.h).
#include "attn_launch.h"
#include "sweep.h"

namespace lightning {

cudaError_t attn_fwd_cuda(const AttnParams& p, cudaStream_t stream) { return launch_sweep(forward_sweep(p), stream); }

}  // namespace lightning

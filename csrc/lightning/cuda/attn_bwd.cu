// lightning::attn backward on CUDA: the three sweeps of ../sweep_params.h (dq in token order,
// recomputing the forward state; dv and dk from the last token to the first, carrying the
// state gradient dS seeded by d(final_state)), none of which stores a state per block.
#include "attn_launch.h"
#include "sweep.h"

namespace lightning {

cudaError_t attn_bwd_cuda(const AttnBwdParams& bp, cudaStream_t stream) {
  for (const SweepParams& s : backward_sweeps(bp)) {
    const cudaError_t err = launch_sweep(s, stream);
    if (err != cudaSuccess) return err;
  }
  return cudaSuccess;
}

}  // namespace lightning

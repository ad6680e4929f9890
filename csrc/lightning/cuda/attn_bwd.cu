// lightning::attn backward on CUDA: the three sweeps of ../sweep_params.h (dq in token order,
// recomputing the forward state; dv and dk from the last token to the first, carrying the
// state gradient dS seeded by d(final_state)), none of which stores a state per block. They
// run one after another on the stream, so one workspace serves all three.
#include <algorithm>

#include "attn_launch.h"
#include "sweep.h"

namespace lightning {

int64_t attn_bwd_cuda_workspace(const AttnBwdParams& bp) {
  int64_t floats = 0;
  for (const SweepParams& s : backward_sweeps(bp)) floats = std::max(floats, sweep_workspace_floats(s));
  return floats;
}

cudaError_t attn_bwd_cuda(const AttnBwdParams& bp, float* workspace, cudaStream_t stream) {
  for (const SweepParams& s : backward_sweeps(bp)) {
    const cudaError_t err = run_sweep(s, workspace, stream);
    if (err != cudaSuccess) return err;
  }
  return cudaSuccess;
}

}  // namespace lightning

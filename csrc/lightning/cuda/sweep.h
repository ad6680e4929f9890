// Launching the decayed sweep (../sweep_params.h) on the GPU: one entry point that picks the
// compiled instantiation for the dtype and width of a / b.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "../sweep_params.h"

namespace lightning {

cudaError_t launch_sweep(const SweepParams& p, cudaStream_t stream);

// The width_ab bucket, one compiled instantiation each (launch_sweep_for below), that runs a
// sweep of width_ab columns of a and b (at most the largest head dim).
constexpr int width_ab_bucket(int width_ab) {
  return width_ab <= 64 ? 64 : width_ab <= 128 ? 128 : width_ab <= 192 ? 192 : 256;
}
static_assert(width_ab_bucket(common::kMaxHeadDim) == common::kMaxHeadDim,
              "the widest bucket (sweep_*_w256.cu) is the largest head dim");

// Columns of c per CTA on tensor cores: the fp32 state takes width_ab / 4 x slice / 32
// registers a thread (64 at 128 x 64, 96 at 192 x 64, 64 at 256 x 32). A wider slice means
// fewer CTAs repeating the same a_t b_t^T.
constexpr int mma_slice_for(int width_ab) { return width_ab <= 192 ? 64 : 32; }
constexpr int kFfmaSlice = 64;
// The slice of the instantiation that runs p (grid.x = ceil(width_c / slice)).
int sweep_slice_width(const SweepParams& p);

// Sequence splitting (sweep_split.cu). With few CTAs (small batch x heads) a sweep runs in
// three steps: every chunk's own state from zero (no output), a prefix over the chunks that
// turns them into start states, then the full sweep of every chunk from its start state.
struct SweepSplit {
  int chunks;          // 1: not split
  int64_t chunk_rows;  // a multiple of every kernel's block
};
SweepSplit plan_sweep_split(const SweepParams& p);  // for the current device
int64_t sweep_workspace_floats(const SweepParams& p);  // 0 when not split
// The sweep, split when plan_sweep_split says so; workspace holds sweep_workspace_floats(p).
cudaError_t run_sweep(const SweepParams& p, float* workspace, cudaStream_t stream);

// One explicit instantiation per (element type, width_ab bucket) lives in its own .cu so the
// build compiles them in parallel; `Elem` is float (exact FFMA path), __half or __nv_bfloat16.
template <typename Elem, int kWidthAB>
cudaError_t launch_sweep_for(const SweepParams& p, cudaStream_t stream);

}  // namespace lightning

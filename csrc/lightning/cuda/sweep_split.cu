// Sequence splitting: a sweep over few (sequence, head, slice) items leaves most SMs idle, and
// each CTA walks its whole sequence. Split every sequence into chunks of whole blocks instead:
//   1. every chunk's own state, from zero (the sweep with no output), into the workspace;
//   2. a prefix over the chunks, in place: start_0 = the initial state,
//      start_{c+1} = lambda^(rows of c) start_c + own_c;
//   3. the full sweep of every chunk from its start state; the last chunk writes the final one.
// The state is linear in its start (S_end = lambda^rows S_start + own), so this is the unsplit
// result up to rounding. Costs: k, v (b, c) read twice and one state per chunk of scratch.
#include <algorithm>

#include "sweep.h"

namespace lightning {
namespace {

constexpr int kSplitBlock = common::kLightningBlock;  // chunks are whole blocks of both kernels
constexpr int kMinChunkBlocks = 16;   // keeps steps 1 and 2 small next to step 3
constexpr int kPrefixThreads = 256;

StateView workspace_view(const SweepParams& p, float* workspace) {
  const int64_t per_state = int64_t(p.width_ab) * p.width_c;
  return StateView{workspace, per_state, p.width_c, 1, true};
}

// One thread per element of one item's state; walks the chunks in sweep order.
__global__ void chunk_prefix_kernel(const __grid_constant__ SweepParams p, float* workspace) {
  const int64_t per_state = int64_t(p.width_ab) * p.width_c;
  const int64_t x = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (x >= per_state) return;
  const int item = blockIdx.y;
  const int i = static_cast<int>(x / p.width_c), j = static_cast<int>(x % p.width_c);
  const float rate = p.slope ? p.slope[item % p.heads] : 0.f;
  const StateView& init = p.init_state;
  float carry = init.ptr ? init.ptr[item * init.item_stride + i * init.row + j * init.col] : 0.f;
  const float full_chunk_decay = expf(-rate * static_cast<float>(p.chunk_rows));
  for (int c = 0; c < p.chunks; ++c) {
    float* cell = workspace + (int64_t(item) * p.chunks + c) * per_state + x;
    const float own = *cell;
    *cell = carry;
    const int64_t rows = std::min<int64_t>(p.chunk_rows, p.seqlen - c * p.chunk_rows);
    const float decay = rows == p.chunk_rows ? full_chunk_decay : expf(-rate * static_cast<float>(rows));
    carry = decay * carry + own;
  }
}

}  // namespace

SweepSplit plan_sweep_split(const SweepParams& p) {
  const SweepSplit none{1, 0};
  if (p.cu_seqlens != nullptr || p.seqlen <= 0) return none;  // varlen: many sequences already
  int device = 0, sms = 0;
  if (cudaGetDevice(&device) != cudaSuccess ||
      cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device) != cudaSuccess)
    return none;
  const int slice = sweep_slice_width(p);
  const int64_t ctas = int64_t((p.width_c + slice - 1) / slice) * p.heads * p.num_seqs;
  const int64_t slots = common::kSweepCtasPerSm * int64_t(sms);  // CTAs an SM where shared memory allows
  // Only when at most half the SMs have work: with most SMs busy already, reading b and c
  // twice and the extra launches cost more than the added CTAs gain (benchmarks/NOTES.md).
  if (ctas <= 0 || 2 * ctas > sms) return none;
  const int64_t blocks = (p.seqlen + kSplitBlock - 1) / kSplitBlock;
  const int64_t chunks = std::min(slots / ctas, blocks / kMinChunkBlocks);
  if (chunks < 2) return none;
  const int64_t chunk_blocks = (blocks + chunks - 1) / chunks;
  return SweepSplit{static_cast<int>((blocks + chunk_blocks - 1) / chunk_blocks), chunk_blocks * kSplitBlock};
}

int64_t sweep_workspace_floats(const SweepParams& p) {
  const SweepSplit split = plan_sweep_split(p);
  if (split.chunks == 1) return 0;
  return int64_t(p.num_seqs) * p.heads * split.chunks * p.width_ab * p.width_c;
}

cudaError_t run_sweep(const SweepParams& p, float* workspace, cudaStream_t stream) {
  const SweepSplit split = plan_sweep_split(p);
  if (split.chunks == 1) return launch_sweep(p, stream);
  if (workspace == nullptr) return cudaErrorInvalidValue;
  SweepParams chunked = p;
  chunked.chunks = split.chunks;
  chunked.chunk_rows = split.chunk_rows;

  SweepParams own = chunked;  // step 1
  own.out = nullptr;
  own.init_state = StateView{nullptr, 0, 0, 0, false};
  own.final_state = workspace_view(p, workspace);
  cudaError_t err = launch_sweep(own, stream);
  if (err != cudaSuccess) return err;

  const int64_t per_state = int64_t(p.width_ab) * p.width_c;  // step 2
  const dim3 grid(static_cast<unsigned>((per_state + kPrefixThreads - 1) / kPrefixThreads),
                  static_cast<unsigned>(p.num_seqs * p.heads));
  chunk_prefix_kernel<<<grid, kPrefixThreads, 0, stream>>>(chunked, workspace);
  err = cudaGetLastError();
  if (err != cudaSuccess) return err;

  SweepParams rest = chunked;  // step 3
  rest.init_state = workspace_view(p, workspace);
  return launch_sweep(rest, stream);
}

}  // namespace lightning

// Sizes and limits that several files of both namespaces rely on, each named once here
// (torch-free, host and device). Files that build on one of them say so with a static_assert.
#pragma once

#include <cstdint>
#include <limits>

namespace common {

// Rows of one block of Lightning Attention-2: the tensor-core sweep (lightning/cuda/
// sweep_mma.cuh) and the CPU kernel (lightning/cpu/attn_cpu.cpp) walk a sequence in blocks of
// this many rows; a split sweep (lightning/cuda/sweep_split.cu) cuts it into whole blocks.
constexpr int kLightningBlock = 64;

// The largest head dim D or E of lightning.attn: the bindings reject larger ones, the widest
// sweep instantiation and attn_decode's shared buffers are this wide.
constexpr int kMaxHeadDim = 256;

// CTAs an SM that a sweep is planned for where shared memory allows: sweep_mma.cuh asks for
// this occupancy, sweep_split.cu counts this many slots an SM.
constexpr int kSweepCtasPerSm = 2;

// gridDim.y and gridDim.z of a CUDA launch stop here.
constexpr int kMaxGridYZ = 65535;

// Extents and in-sample offsets that the im2win CUDA kernels index with int: the headroom
// below INT32_MAX covers a tile's overrun past the end of a range.
constexpr int64_t kMaxIntIndex = std::numeric_limits<int32_t>::max() - 1024;

static_assert(kLightningBlock % 16 == 0, "a block is whole 16-row tensor-core tiles");
static_assert(kMaxHeadDim % 16 == 0, "head dims are multiples of 16 up to the limit");

}  // namespace common

// lightning::attn_decode on CUDA: one token per (batch, head). Memory-bound on the fp32
// state, which is read and written once: each thread owns 4 adjacent columns (16-byte
// accesses) of a set of rows, and the partial sums of o are reduced across rows in shared
// memory.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "../../common/tile.cuh"
#include "attn_launch.h"

namespace lightning {
namespace {

constexpr int kDecodeThreads = 256;
constexpr int kMaxDim = common::kMaxHeadDim;

template <typename T>
__global__ void __launch_bounds__(kDecodeThreads) attn_decode_kernel(const __grid_constant__ AttnDecodeParams p) {
  __shared__ float s_q[kMaxDim], s_k[kMaxDim];
  __shared__ float4 s_partial[kDecodeThreads];
  const int item = blockIdx.x, b = item / p.heads, h = item % p.heads;
  const int D = p.head_dim, E = p.value_dim;
  const T* q = static_cast<const T*>(p.q) + b * p.q_stride_b + h * p.q_stride_h;
  const T* k = static_cast<const T*>(p.k) + b * p.k_stride_b + h * p.k_stride_h;
  const T* v = static_cast<const T*>(p.v) + b * p.v_stride_b + h * p.v_stride_h;
  float4* state = reinterpret_cast<float4*>(p.state + static_cast<int64_t>(item) * D * E);
  const float lambda = p.slope ? expf(-p.slope[h]) : 1.f;
  for (int i = threadIdx.x; i < D; i += blockDim.x) {
    s_q[i] = tile::to_float(q[i]);
    s_k[i] = tile::to_float(k[i]);
  }
  __syncthreads();

  const int col_chunks = E / 4, row_groups = kDecodeThreads / col_chunks;
  const int chunk = threadIdx.x % col_chunks, group = threadIdx.x / col_chunks;
  float4 acc = {0.f, 0.f, 0.f, 0.f};
  if (group < row_groups) {
    const float4 vv = {tile::to_float(v[4 * chunk]), tile::to_float(v[4 * chunk + 1]), tile::to_float(v[4 * chunk + 2]),
                       tile::to_float(v[4 * chunk + 3])};
    for (int i = group; i < D; i += row_groups) {
      // S_i = lambda S_i + k_i v^T; o += q_i S_i
      float4 s = state[i * col_chunks + chunk];
      s.x = fmaf(lambda, s.x, s_k[i] * vv.x);
      s.y = fmaf(lambda, s.y, s_k[i] * vv.y);
      s.z = fmaf(lambda, s.z, s_k[i] * vv.z);
      s.w = fmaf(lambda, s.w, s_k[i] * vv.w);
      state[i * col_chunks + chunk] = s;
      acc.x = fmaf(s_q[i], s.x, acc.x);
      acc.y = fmaf(s_q[i], s.y, acc.y);
      acc.z = fmaf(s_q[i], s.z, acc.z);
      acc.w = fmaf(s_q[i], s.w, acc.w);
    }
  }
  s_partial[threadIdx.x] = acc;
  __syncthreads();
  if (threadIdx.x < col_chunks) {
    float4 sum = {0.f, 0.f, 0.f, 0.f};
    for (int g = 0; g < row_groups; ++g) {
      const float4 x = s_partial[g * col_chunks + threadIdx.x];
      sum.x += x.x, sum.y += x.y, sum.z += x.z, sum.w += x.w;
    }
    const float scale = static_cast<float>(p.scale);
    T* o = static_cast<T*>(p.o) + static_cast<int64_t>(item) * E + 4 * threadIdx.x;
    o[0] = tile::from_float<T>(scale * sum.x);
    o[1] = tile::from_float<T>(scale * sum.y);
    o[2] = tile::from_float<T>(scale * sum.z);
    o[3] = tile::from_float<T>(scale * sum.w);
  }
}

template <typename T>
cudaError_t launch_decode(const AttnDecodeParams& p, cudaStream_t stream) {
  attn_decode_kernel<T><<<p.batch * p.heads, kDecodeThreads, 0, stream>>>(p);
  return cudaGetLastError();
}

}  // namespace

cudaError_t attn_decode_cuda(const AttnDecodeParams& p, cudaStream_t stream) {
  switch (p.dtype) {
    case DType::kFloat32: return launch_decode<float>(p, stream);
    case DType::kFloat16: return launch_decode<__half>(p, stream);
    case DType::kBFloat16: return launch_decode<__nv_bfloat16>(p, stream);
    default: return cudaErrorInvalidValue;
  }
}

}  // namespace lightning

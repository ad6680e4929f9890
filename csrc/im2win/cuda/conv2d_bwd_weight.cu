// Weight and bias gradients.
//   grad_weight: BwdWeightProblem (conv2d_problems.cuh) writes fp32 partial sums of each
//     reduction split to the workspace; sum_splits_kernel adds them in split order and
//     rounds to T once.
//   grad_bias[k] = sum over (n, oh, ow) of grad_out[n][k][oh][ow], one block per channel.
// Both reductions have a fixed shape, so the results are deterministic.
#include <algorithm>

#include "conv2d_kernels.cuh"
#include "conv2d_problems.cuh"

namespace im2win {
namespace {

constexpr int kReduceThreads = 256;

// grad_weight[e] = sum over splits of the partials of element e, in split order.
template <class T>
__global__ void __launch_bounds__(kReduceThreads)
    sum_splits_kernel(const float* partial, T* grad_weight, int64_t group_size, int splits,
                      int64_t total) {
  for (int64_t e = blockIdx.x * int64_t(kReduceThreads) + threadIdx.x; e < total;
       e += int64_t(gridDim.x) * kReduceThreads) {
    const int64_t group = e / group_size;
    const float* src = partial + group * splits * group_size + (e - group * group_size);
    float sum = 0.f;
    for (int s = 0; s < splits; ++s) sum += src[s * group_size];
    grad_weight[e] = from_float<T>(sum);
  }
}

template <class T>
struct BiasGradParams {
  const T* grad_out;  // (N, K, Ho, Wo) strided
  T* grad_bias;       // (K,)
  NCHWStrides go_stride;
  PlaneDecoder positions;  // (n, oh, ow) of a flattened output position
  int count;               // N * Ho * Wo
};

// One block per output channel: a strided sum per thread, then a fixed-shape tree.
template <class T>
__global__ void __launch_bounds__(kReduceThreads) bias_grad_kernel(const BiasGradParams<T> p) {
  const T* channel = p.grad_out + blockIdx.x * p.go_stride.c;
  float sum = 0.f;
  for (int i = threadIdx.x; i < p.count; i += kReduceThreads) {
    const PlaneIndex o = p.positions(i);
    sum += to_float(channel[o.n * p.go_stride.n + o.y * p.go_stride.h + o.x * p.go_stride.w]);
  }
  __shared__ float s_warp_sums[kReduceThreads / 32];  // 32 B
  for (int offset = 16; offset > 0; offset /= 2) sum += __shfl_down_sync(0xffffffffu, sum, offset);
  if (threadIdx.x % 32 == 0) s_warp_sums[threadIdx.x / 32] = sum;
  __syncthreads();
  if (threadIdx.x == 0) {
    float total = 0.f;
    for (int w = 0; w < kReduceThreads / 32; ++w) total += s_warp_sums[w];
    p.grad_bias[blockIdx.x] = from_float<T>(total);
  }
}

}  // namespace

cudaError_t conv2d_bwd_weight_gemm(const Conv2dBwdParams& b, const WeightGradPlan& plan,
                                   void* workspace, cudaStream_t stream) {
  const Conv2dParams& p = b.fwd;
  return dispatch_dtype(p.dtype, [&](auto type_tag) {
    using T = decltype(type_tag);
    const BwdWeightProblem<T> problem =
        make_bwd_weight_problem<T>(b, plan, static_cast<float*>(workspace));
    const cudaError_t err = launch_implicit_gemm(problem, plan.config, stream);
    if (err != cudaSuccess) return err;
    const int64_t group_size = int64_t(problem.M) * problem.N;
    const int64_t total = group_size * p.groups;
    const int blocks = int(std::min<int64_t>((total + kReduceThreads - 1) / kReduceThreads, 65536));
    sum_splits_kernel<T><<<blocks, kReduceThreads, 0, stream>>>(
        problem.partial, static_cast<T*>(b.grad_weight), group_size, plan.splits, total);
    return cudaGetLastError();
  });
}

cudaError_t conv2d_bwd_bias(const Conv2dBwdParams& b, cudaStream_t stream) {
  const Conv2dParams& p = b.fwd;
  return dispatch_dtype(p.dtype, [&](auto type_tag) {
    using T = decltype(type_tag);
    const BiasGradParams<T> params{static_cast<const T*>(b.grad_output),
                                   static_cast<T*>(b.grad_bias), b.grad_out_stride,
                                   PlaneDecoder(p.out_h, p.out_w), p.batch * p.out_h * p.out_w};
    bias_grad_kernel<T><<<p.out_channels, kReduceThreads, 0, stream>>>(params);
    return cudaGetLastError();
  });
}

}  // namespace im2win

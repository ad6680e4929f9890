// Internal host interface between the im2win CUDA launchers (conv2d_launch.cu), the planner
// (conv2d_plan.cu) and the per-family kernel files; the public entry points are in
// conv2d_launch.h. Each family says which problems its kernels can take (*_supported); the
// planner chooses among them and the tiles the launchers are called with.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime_api.h>

#include <cstddef>

#include "../conv2d_params.h"

namespace im2win {

enum class GemmConfig;   // implicit_gemm.cuh
struct WeightGradPlan;  // conv2d_problems.cuh

// conv2d_fwd.cu: output = conv(input, weight) + bias.
cudaError_t conv2d_fwd_gemm(const Conv2dParams& p, GemmConfig config, cudaStream_t stream);

// conv2d_fwd_nhwc.cu: the same for channels_last fp16/bf16 tensors (input, weight, output)
// with C a multiple of 8 and one group, on 16-byte copies; tile_n (64 or 128) output
// channels a block.
bool conv2d_fwd_nhwc_supported(const Conv2dParams& p);
cudaError_t conv2d_fwd_nhwc(const Conv2dParams& p, int tile_n, cudaStream_t stream);

// conv2d_fwd_wgmma.cu: the same for fp32, fp16 and bf16 with one group on Hopper tensor
// cores (wgmma; only where device_caps() says the device runs sm_90a code), through
// channels-last copies in `workspace` of an input or weight that cannot be read in 16-byte
// chunks of channels as it is (and of every fp32 weight, split for TF32); tile_n (64 or 128)
// output channels a block.
bool conv2d_fwd_wgmma_supported(const Conv2dParams& p);
size_t conv2d_fwd_wgmma_workspace_bytes(const Conv2dParams& p);
cudaError_t conv2d_fwd_wgmma(const Conv2dParams& p, int tile_n, void* workspace,
                             cudaStream_t stream);

// channels_last_copy.cu: dst (N, H, W, C_out), contiguous = src (N, C, H, W) through strides
// s, zero in channels C .. C_out - 1 (the wgmma forward's copies); T = float, __half or
// __nv_bfloat16.
template <class T>
cudaError_t copy_to_channels_last(const T* src, const NCHWStrides& s, int N, int C, int H, int W,
                                  int C_out, T* dst, cudaStream_t stream);
// The same for fp32 into big = src rounded to TF32 and, unless small is nullptr, the exact
// remainder small = src - big (3xTF32 operands).
cudaError_t split_to_channels_last_tf32(const float* src, const NCHWStrides& s, int N, int C, int H,
                                        int W, int C_out, float* big, float* small,
                                        cudaStream_t stream);

// conv2d_bwd_data.cu: grad_input of a stride-1 convolution with one group is itself a
// forward convolution, of grad_output with the weight's channel dimensions swapped and its
// taps flipped, padding dilation * (F - 1) - pad: fills `dgrad` with it and returns true
// for such convolutions (the planner then asks whether the wgmma forward takes it).
bool conv2d_bwd_data_as_fwd(const Conv2dBwdParams& b, Conv2dParams& dgrad);

// conv2d_bwd_data.cu: grad_input = the transposed convolution of grad_output, as a gather.
cudaError_t conv2d_bwd_data_gemm(const Conv2dBwdParams& p, GemmConfig config,
                                 cudaStream_t stream);

// conv2d_bwd_data_direct.cu: the same without a GEMM for at most 4 channels per group.
bool conv2d_bwd_data_direct_supported(const Conv2dBwdParams& p);
cudaError_t conv2d_bwd_data_direct(const Conv2dBwdParams& p, cudaStream_t stream);

// conv2d_bwd_weight.cu: grad_weight through fp32 partial sums in `workspace` (the split
// reduction of `plan`, plan.workspace_bytes), and grad_bias.
cudaError_t conv2d_bwd_weight_gemm(const Conv2dBwdParams& p, const WeightGradPlan& plan,
                                   void* workspace, cudaStream_t stream);
cudaError_t conv2d_bwd_bias(const Conv2dBwdParams& p, cudaStream_t stream);

}  // namespace im2win

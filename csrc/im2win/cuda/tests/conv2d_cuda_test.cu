// GPU test of the im2win CUDA launchers (no torch): every case of conv_cases() in fp32
// (exact), TF32, fp16 and bf16 against the fp64 reference - forward, grad_input,
// grad_weight, grad_bias - plus the standalone im2win transform, which must match exactly.
// Outputs are poisoned with NaN before each launch, so an unwritten element fails. Exits
// non-zero on any failure. Build and run: make -C csrc/im2win/cuda/tests gpu
#include <cuda_runtime.h>

#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>
#include <vector>

#include "../conv2d_launch.h"
#include "conv2d_test_utils.cuh"

namespace im2win_test {
namespace {

using im2win::DType;
using im2win::Fp32Math;

// A launch or fault error leaves the context unusable: stop at once.
void check(cudaError_t err, const char* what) {
  if (err == cudaSuccess) return;
  std::printf("FATAL %s: %s\n", what, cudaGetErrorString(err));
  std::exit(2);
}

// A device copy of a host vector; poison() fills it with all-ones bytes, NaN in fp32, fp16
// and bf16 alike.
template <class T>
struct DeviceBuffer {
  T* ptr = nullptr;
  size_t count = 0;

  explicit DeviceBuffer(size_t n) : count(n) {
    if (n > 0) check(cudaMalloc(&ptr, n * sizeof(T)), "cudaMalloc");
  }
  explicit DeviceBuffer(const std::vector<T>& host) : DeviceBuffer(host.size()) {
    if (count > 0)
      check(cudaMemcpy(ptr, host.data(), count * sizeof(T), cudaMemcpyHostToDevice), "upload");
  }
  DeviceBuffer(const DeviceBuffer&) = delete;
  ~DeviceBuffer() { cudaFree(ptr); }

  void poison() {
    if (count > 0) check(cudaMemset(ptr, 0xFF, count * sizeof(T)), "poison");
  }
  std::vector<T> download() const {
    std::vector<T> host(count);
    if (count > 0)
      check(cudaMemcpy(host.data(), ptr, count * sizeof(T), cudaMemcpyDeviceToHost), "download");
    return host;
  }
};

struct Mode {
  const char* name;
  DType dtype;
  Fp32Math math;
  double tol;
};

const Mode kModes[] = {
    {"fp32", DType::kFloat32, Fp32Math::kExact, 1e-5},
    {"tf32", DType::kFloat32, Fp32Math::kTF32, 1e-3},
    {"fp16", DType::kFloat16, Fp32Math::kExact, 2e-3},
    {"bf16", DType::kBFloat16, Fp32Math::kExact, 4e-3},
};

template <class T>
bool test_conv(const ConvCase& cs, const Mode& mode, std::mt19937& rng) {
  const ConvTensors ref = make_reference<T>(cs, rng);
  Conv2dParams p = conv_params(cs, mode.dtype, mode.math);
  const NCHWStrides w_stride = dense_strides(cs.c_per_group(), cs.kernel_h, cs.kernel_w, false);  // grad_weight
  const NCHWStrides b_stride = dense_strides(cs.out_channels, 1, 1, false);
  DeviceBuffer<T> input(pack<T>(ref.input, p.in_stride));
  DeviceBuffer<T> weight(pack<T>(ref.weight, p.w_stride));
  DeviceBuffer<T> bias(pack<T>(ref.bias, b_stride));
  DeviceBuffer<T> grad_out(pack<T>(ref.grad_out, p.out_stride));
  DeviceBuffer<T> output(ref.output.v.size()), grad_in(ref.grad_in.v.size());
  DeviceBuffer<T> grad_weight(ref.grad_weight.v.size()), grad_bias(ref.grad_bias.v.size());
  p.input = input.ptr, p.weight = weight.ptr, p.output = output.ptr;
  p.bias = cs.bias ? bias.ptr : nullptr;
  const std::string tag = std::string(mode.name) + " ";
  bool ok = true;

  // Forward.
  output.poison();
  DeviceBuffer<unsigned char> fwd_workspace(im2win::conv2d_fwd_workspace_bytes(p));
  check(im2win::conv2d_fwd_cuda(p, fwd_workspace.ptr, nullptr), "conv2d_fwd_cuda");
  check(cudaDeviceSynchronize(), "forward");
  ok &= report(tag + "forward",
               relative_error(unpack(output.download(), cs.batch, cs.out_channels, p.out_h,
                                     p.out_w, p.out_stride),
                              ref.output),
               mode.tol);

  // Backward: all three gradients in one call (grad_bias only when the layer has a bias).
  Conv2dBwdParams b{};
  b.fwd = p;
  b.grad_output = grad_out.ptr;
  b.grad_out_stride = p.out_stride;
  b.grad_input = grad_in.ptr;
  b.grad_in_stride = p.in_stride;
  b.grad_weight = grad_weight.ptr;
  b.grad_bias = cs.bias ? grad_bias.ptr : nullptr;
  grad_in.poison(), grad_weight.poison(), grad_bias.poison();
  DeviceBuffer<unsigned char> bwd_workspace(im2win::conv2d_bwd_workspace_bytes(b));
  check(im2win::conv2d_bwd_cuda(b, bwd_workspace.ptr, nullptr), "conv2d_bwd_cuda");
  check(cudaDeviceSynchronize(), "backward");
  ok &= report(tag + "grad_input",
               relative_error(unpack(grad_in.download(), cs.batch, cs.channels, cs.in_h,
                                     cs.in_w, p.in_stride),
                              ref.grad_in),
               mode.tol);
  ok &= report(tag + "grad_weight",
               relative_error(unpack(grad_weight.download(), cs.out_channels, cs.c_per_group(),
                                     cs.kernel_h, cs.kernel_w, w_stride),
                              ref.grad_weight),
               mode.tol);
  if (cs.bias)
    ok &= report(tag + "grad_bias",
                 relative_error(unpack(grad_bias.download(), 1, cs.out_channels, 1, 1, b_stride),
                                ref.grad_bias),
                 mode.tol);
  return ok;
}

// The window tensor Ihat[n][c][oh][w * FH + fh] of an input, computed on the host.
Tensor4 reference_im2win(const ConvCase& cs, const Tensor4& input) {
  const int padded_w = cs.in_w + 2 * cs.pad_w;
  Tensor4 out(cs.batch, cs.channels, cs.out_h(), padded_w * cs.kernel_h);
  for (int n = 0; n < cs.batch; ++n)
    for (int c = 0; c < cs.channels; ++c)
      for (int oh = 0; oh < cs.out_h(); ++oh)
        for (int w = 0; w < padded_w; ++w)
          for (int fh = 0; fh < cs.kernel_h; ++fh) {
            const int ih = oh * cs.stride_h + fh * cs.dilation_h - cs.pad_h, iw = w - cs.pad_w;
            const bool inside = ih >= 0 && ih < cs.in_h && iw >= 0 && iw < cs.in_w;
            out.at(n, c, oh, w * cs.kernel_h + fh) = inside ? input.at(n, c, ih, iw) : 0.0;
          }
  return out;
}

template <class T>
bool test_im2win(const ConvCase& cs, const Mode& mode, std::mt19937& rng) {
  Tensor4 input(cs.batch, cs.channels, cs.in_h, cs.in_w);
  fill_random<T>(input, rng);
  const Tensor4 ref = reference_im2win(cs, input);
  const NCHWStrides in_stride = dense_strides(cs.channels, cs.in_h, cs.in_w, cs.channels_last);
  DeviceBuffer<T> d_input(pack<T>(input, in_stride));
  DeviceBuffer<T> d_output(ref.v.size());
  d_output.poison();
  im2win::Im2winParams p{};
  p.dtype = mode.dtype;
  p.batch = cs.batch, p.channels = cs.channels, p.in_h = cs.in_h, p.in_w = cs.in_w;
  p.kernel_h = cs.kernel_h, p.out_h = cs.out_h(), p.padded_w = cs.in_w + 2 * cs.pad_w;
  p.stride_h = cs.stride_h, p.pad_h = cs.pad_h, p.pad_w = cs.pad_w;
  p.dilation_h = cs.dilation_h;
  p.input = d_input.ptr, p.in_stride = in_stride, p.output = d_output.ptr;
  check(im2win::im2win_cuda(p, nullptr), "im2win_cuda");
  check(cudaDeviceSynchronize(), "im2win");
  const NCHWStrides out_stride = dense_strides(ref.c, ref.h, ref.w, false);
  const Tensor4 out = unpack(d_output.download(), ref.n, ref.c, ref.h, ref.w, out_stride);
  return report(std::string(mode.name) + " im2win", relative_error(out, ref), 0.0);
}

template <class F>
bool for_mode_type(const Mode& mode, F&& f) {
  switch (mode.dtype) {
    case DType::kFloat32: return f(float{});
    case DType::kFloat16: return f(__half{});
    default: return f(__nv_bfloat16{});
  }
}

}  // namespace
}  // namespace im2win_test

int main() {
  using namespace im2win_test;
  std::mt19937 rng(2024);
  int failed = 0, total = 0;
  for (const ConvCase& cs : conv_cases()) {
    std::printf("%s\n", cs.describe().c_str());
    for (const Mode& mode : kModes) {
      ++total;
      const bool ok = for_mode_type(mode, [&](auto type_tag) {
        using T = decltype(type_tag);
        bool pass = test_conv<T>(cs, mode, rng);
        if (mode.math == Fp32Math::kExact) pass &= test_im2win<T>(cs, mode, rng);
        return pass;
      });
      failed += !ok;
    }
  }
  std::printf("%s: %d of %d case/mode runs failed\n", failed == 0 ? "ALL PASS" : "FAILURES",
              failed, total);
  return failed == 0 ? 0 : 1;
}

// The one schema site of namespace `im2win`, and its bindings: check the tensors, make the
// outputs, fill a torch-free Params struct and hand it to the CPU or CUDA kernels.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <limits>
#include <optional>
#include <tuple>

#include "../common/registration.h"
#include "../common/torch_utils.h"
#include "conv2d_params.h"
#include "cpu/conv2d_cpu.h"

#ifdef WITH_CUDA
#include "../common/cuda_utils.h"

#include "cuda/conv2d_launch.h"
#endif

namespace im2win {
namespace {

using at::IntArrayRef;
using at::Tensor;
using std::optional;
using namespace torch_utils;

// The CPU path builds the window tensor ((FH / stride) x the input) for a slice of the batch
// at a time, so its memory stays bounded whatever the batch size.
constexpr int64_t kCpuWindowBytes = int64_t(64) << 20;

NCHWStrides strides_of(const Tensor& t) {  // t is (N, C, H, W)
  return {stride_or_zero(t, 0), stride_or_zero(t, 1), stride_or_zero(t, 2), stride_or_zero(t, 3)};
}

// The kernels see NCHW or NHWC tensors only: anything else (an expanded gradient, a strided
// slice) is copied once into the memory format it resembles, the output's format too.
Tensor dense(const Tensor& t) { return t.contiguous(t.suggest_memory_format()); }

void check_float_dtype(const Tensor& t, const char* op, const char* arg) {
  const auto dt = t.scalar_type();
  TORCH_CHECK(dt == at::kFloat || dt == at::kHalf || dt == at::kBFloat16 ||
                  (dt == at::kDouble && t.is_cpu()),
              op, ": ", arg, " must be float32, float16 or bfloat16 (float64 on CPU), got ", dt,
              " on ", t.device());
}

// The kernels' Params hold int sizes.
constexpr int64_t kMaxInt = std::numeric_limits<int>::max();

void check_pair(IntArrayRef v, int64_t min, const char* op, const char* arg) {
  TORCH_CHECK_VALUE(v.size() == 2, op, ": ", arg, " must have 2 values (height, width), got ", v);
  TORCH_CHECK_VALUE(v[0] >= min && v[1] >= min && v[0] <= kMaxInt && v[1] <= kMaxInt, op, ": ",
                    arg, " must be in [", min, ", ", kMaxInt, "], got ", v);
}

// Checks stride, padding, dilation and that the dilated kernel fits into the padded input;
// returns the output size (Ho, Wo).
std::array<int64_t, 2> output_size(const Tensor& input, IntArrayRef kernel, IntArrayRef stride,
                                   IntArrayRef padding, IntArrayRef dilation, const char* op,
                                   const char* kernel_arg) {
  check_pair(stride, 1, op, "stride");
  check_pair(dilation, 1, op, "dilation");
  check_pair(padding, 0, op, "padding");
  std::array<int64_t, 2> out;
  for (int i = 0; i < 2; ++i) {
    const int64_t padded = input.size(2 + i) + 2 * padding[i];
    const int64_t span = dilation[i] * (kernel[i] - 1) + 1;
    TORCH_CHECK_VALUE(span <= padded, op, ": the ", kernel_arg, " (", kernel, ", dilation ",
                      dilation, ") does not fit into the padded input (", input.sizes().slice(2),
                      " + 2 * padding ", padding, "): the output would be empty");
    out[i] = (padded - span) / stride[i] + 1;
  }
  return out;
}

// Everything conv2d and conv2d_backward check; returns the Params without data pointers.
Conv2dParams check_conv_inputs(const Tensor& input, const Tensor& weight,
                               const optional<Tensor>& bias, IntArrayRef stride,
                               IntArrayRef padding, IntArrayRef dilation, int64_t groups,
                               const char* op) {
  check_rank(input, 4, op, "input");
  check_rank(weight, 4, op, "weight");
  TORCH_CHECK(input.is_cpu() || input.is_cuda(), op, ": input must be a CPU or CUDA tensor, got ",
              input.device());
  check_same_device(input, weight, op, "input", "weight");
  check_float_dtype(input, op, "input");
  check_same_dtype(input, weight, op, "input", "weight");
  TORCH_CHECK_VALUE(groups >= 1, op, ": groups must be >= 1, got ", groups);
  const int64_t channels = input.size(1), out_channels = weight.size(0);
  TORCH_CHECK_VALUE(channels == weight.size(1) * groups, op, ": input has ", channels,
                    " channels but weight ", weight.sizes(), " with groups = ", groups,
                    " expects weight.size(1) * groups = ", weight.size(1) * groups);
  TORCH_CHECK_VALUE(out_channels % groups == 0, op, ": the ", out_channels,
                    " output channels of weight must be divisible by groups = ", groups);
  TORCH_CHECK_VALUE(weight.size(2) >= 1 && weight.size(3) >= 1, op,
                    ": weight must have a kernel of at least 1 x 1, got ", weight.sizes());
  if (bias) {
    check_same_device(input, *bias, op, "input", "bias");
    check_same_dtype(input, *bias, op, "input", "bias");
    TORCH_CHECK_VALUE(bias->dim() == 1 && bias->size(0) == out_channels, op,
                      ": bias must have shape (", out_channels, ",), got ", bias->sizes());
  }
  const auto out = output_size(input, weight.sizes().slice(2), stride, padding, dilation, op,
                               "kernel of weight");

  Conv2dParams p{};
  p.dtype = to_dtype(input.scalar_type());
  p.fp32_math = at::globalContext().allowTF32CuDNN(at::Float32Op::CONV) ? Fp32Math::kTF32
                                                                         : Fp32Math::kExact;
  p.batch = input.size(0);
  p.in_channels = channels;
  p.in_h = input.size(2);
  p.in_w = input.size(3);
  p.out_channels = out_channels;
  p.kernel_h = weight.size(2);
  p.kernel_w = weight.size(3);
  p.out_h = out[0];
  p.out_w = out[1];
  p.stride_h = stride[0];
  p.stride_w = stride[1];
  p.pad_h = padding[0];
  p.pad_w = padding[1];
  p.dilation_h = dilation[0];
  p.dilation_w = dilation[1];
  p.groups = groups;
  return p;
}

// Output and grad_input follow the input's memory format, as F.conv2d's do.
Tensor empty_like_format(at::IntArrayRef sizes, const Tensor& input) {
  return at::empty(sizes, input.options().memory_format(input.suggest_memory_format()));
}

// Values of the window tensor of one channel of one image, Ihat[n][c].
int64_t window_plane_elems(const Im2winParams& w) {
  return int64_t(w.out_h) * w.padded_w * w.kernel_h;
}

// Multiply-adds of one output plane (n, k).
int64_t plane_macs(const Conv2dParams& p) {
  return int64_t(p.out_h) * p.out_w * (p.in_channels / p.groups) * p.kernel_h * p.kernel_w;
}

// Calls fn(start, length, window) for consecutive slices of the batch of p, with `window`
// holding the window tensor of input[start : start + length] (x is p's input, on the CPU).
template <typename Fn>
void for_each_window_slice(const Tensor& x, const Conv2dParams& p, Fn fn) {
  Im2winParams wp = window_params(p);
  const int64_t item_elems = wp.channels * window_plane_elems(wp);
  const int64_t item_bytes = std::max<int64_t>(item_elems * x.element_size(), 1);
  const int64_t slice = std::max<int64_t>(1, std::min<int64_t>(p.batch, kCpuWindowBytes / item_bytes));
  Tensor window = at::empty({slice * item_elems}, x.options());
  for (int64_t start = 0; start < p.batch; start += slice) {
    const int64_t length = std::min(slice, p.batch - start);
    wp.batch = length;
    wp.input = x.narrow(0, start, length).data_ptr();
    wp.output = window.data_ptr();
    run_cpu(length * wp.channels, window_plane_elems(wp),
            [&](int64_t b, int64_t e) { im2win_cpu(wp, b, e); });
    fn(start, length, window.data_ptr());
  }
}

#ifdef WITH_CUDA
Tensor workspace(size_t bytes, const Tensor& like) {
  return at::empty({static_cast<int64_t>(bytes)}, like.options().dtype(at::kByte));
}
#endif

// What the kernels of t's device read: the CUDA kernels t as it is; the CPU kernels compute in
// float or double and take the weight contiguous.
Tensor kernel_view(const Tensor& t, bool is_weight = false) {
  if (t.is_cuda()) return t;
  return cpu_compute_view(is_weight ? t.contiguous() : t);
}

// A tensor to write results of `compute_dtype` into for `result`: result itself, or a scratch
// copy in the wider type (then copied back into result).
Tensor result_view(const Tensor& result, at::ScalarType compute_dtype) {
  return result.scalar_type() == compute_dtype ? result : at::empty_like(result, compute_dtype);
}

void set_inputs(Conv2dParams& p, const Tensor& input, const Tensor& weight) {
  p.dtype = to_dtype(input.scalar_type());
  p.input = input.data_ptr();
  p.weight = weight.data_ptr();
  p.in_stride = strides_of(input);
  p.w_stride = strides_of(weight);
}

Tensor conv2d(const Tensor& input_arg, const Tensor& weight_arg, const optional<Tensor>& bias_arg,
              IntArrayRef stride, IntArrayRef padding, IntArrayRef dilation, int64_t groups) {
  const char* op = "im2win.conv2d";
  Conv2dParams p =
      check_conv_inputs(input_arg, weight_arg, bias_arg, stride, padding, dilation, groups, op);
  Tensor out = empty_like_format({p.batch, p.out_channels, p.out_h, p.out_w}, input_arg);
  if (out.numel() == 0) return out;
  Tensor input = kernel_view(dense(input_arg)), weight = kernel_view(dense(weight_arg), true);
  Tensor bias = bias_arg ? kernel_view(bias_arg->contiguous()) : Tensor();
  Tensor result = result_view(out, input.scalar_type());
  set_inputs(p, input, weight);
  p.bias = bias.defined() ? bias.data_ptr() : nullptr;
  p.output = result.data_ptr();
  p.out_stride = strides_of(result);

#ifdef WITH_CUDA
  if (input.is_cuda()) {
    c10::cuda::CUDAGuard guard(input.device());
    Tensor ws = workspace(conv2d_fwd_workspace_bytes(p), input);
    check_launch(conv2d_fwd_cuda(p, ws.data_ptr(), current_stream()), op);
    return out;
  }
#endif
  for_each_window_slice(input, p, [&](int64_t start, int64_t length, const void* window) {
    Conv2dParams slice = p;
    slice.batch = length;
    slice.output = result.narrow(0, start, length).data_ptr();
    run_cpu(length * channel_blocks(p.out_channels, p.groups), plane_macs(p) * kChannelBlock,
            [&](int64_t b, int64_t e) { conv2d_fwd_cpu(slice, window, b, e); });
  });
  if (!result.is_same(out)) out.copy_(result);
  return out;
}

std::tuple<Tensor, Tensor, Tensor> conv2d_backward(const Tensor& grad_output_arg,
                                                   const Tensor& input_arg,
                                                   const Tensor& weight_arg, IntArrayRef stride,
                                                   IntArrayRef padding, IntArrayRef dilation,
                                                   int64_t groups, std::array<bool, 3> output_mask) {
  const char* op = "im2win.conv2d_backward";
  Conv2dBwdParams b{};
  b.fwd = check_conv_inputs(input_arg, weight_arg, std::nullopt, stride, padding, dilation,
                            groups, op);
  const Conv2dParams& p = b.fwd;
  check_same_device(input_arg, grad_output_arg, op, "input", "grad_output");
  check_same_dtype(input_arg, grad_output_arg, op, "input", "grad_output");
  const std::array<int64_t, 4> out_shape{p.batch, p.out_channels, p.out_h, p.out_w};
  TORCH_CHECK_VALUE(grad_output_arg.sizes() == IntArrayRef(out_shape), op,
                    ": grad_output must have the output's shape ", IntArrayRef(out_shape),
                    ", got ", grad_output_arg.sizes());

  // Gradients not asked for are empty (0,) tensors.
  const auto none = [&] { return at::empty({0}, input_arg.options()); };
  Tensor grad_input = output_mask[0] ? empty_like_format(input_arg.sizes(), input_arg) : none();
  Tensor grad_weight = output_mask[1] ? at::empty(weight_arg.sizes(), weight_arg.options()) : none();
  Tensor grad_bias = output_mask[2] ? at::empty({p.out_channels}, weight_arg.options()) : none();
  const bool want_input = output_mask[0] && grad_input.numel() > 0;
  const bool want_weight = output_mask[1] && grad_weight.numel() > 0;
  const bool want_bias = output_mask[2] && grad_bias.numel() > 0;
  if (!want_input && !want_weight && !want_bias) return {grad_input, grad_weight, grad_bias};
  if (p.batch == 0) return {grad_input, grad_weight.zero_(), grad_bias.zero_()};  // empty sums
  Tensor input = kernel_view(dense(input_arg)), weight = kernel_view(dense(weight_arg), true);
  Tensor grad_output = kernel_view(dense(grad_output_arg));
  const at::ScalarType compute_dtype = input.scalar_type();
  Tensor gi = want_input ? result_view(grad_input, compute_dtype) : grad_input;
  Tensor gw = want_weight ? result_view(grad_weight, compute_dtype) : grad_weight;
  Tensor gb = want_bias ? result_view(grad_bias, compute_dtype) : grad_bias;
  set_inputs(b.fwd, input, weight);
  b.grad_output = grad_output.data_ptr();
  b.grad_out_stride = strides_of(grad_output);
  b.grad_input = want_input ? gi.data_ptr() : nullptr;
  b.grad_in_stride = want_input ? strides_of(gi) : NCHWStrides{};
  b.grad_weight = want_weight ? gw.data_ptr() : nullptr;
  b.grad_bias = want_bias ? gb.data_ptr() : nullptr;

#ifdef WITH_CUDA
  if (input.is_cuda()) {
    c10::cuda::CUDAGuard guard(input.device());
    Tensor ws = workspace(conv2d_bwd_workspace_bytes(b), input);
    check_launch(conv2d_bwd_cuda(b, ws.data_ptr(), current_stream()), op);
    return {grad_input, grad_weight, grad_bias};
  }
#endif
  if (want_input) {
    run_cpu(p.batch * channel_blocks(p.in_channels, p.groups),
            plane_macs(p) * p.out_channels / p.in_channels * kChannelBlock,
            [&](int64_t s, int64_t e) { conv2d_bwd_input_cpu(b, s, e); });
  }
  if (want_weight) {
    gw.zero_();  // accumulated over slices of the batch
    for_each_window_slice(input, b.fwd, [&](int64_t start, int64_t length, const void* window) {
      Conv2dBwdParams slice = b;
      slice.fwd.batch = length;
      slice.grad_output = grad_output.narrow(0, start, length).data_ptr();
      run_cpu(channel_blocks(p.out_channels, p.groups), length * plane_macs(p) * kChannelBlock,
              [&](int64_t s, int64_t e) { conv2d_bwd_weight_cpu(slice, window, s, e); });
    });
  }
  if (want_bias) {
    run_cpu(p.out_channels, int64_t(p.batch) * p.out_h * p.out_w,
            [&](int64_t s, int64_t e) { conv2d_bwd_bias_cpu(b, s, e); });
  }
  if (want_input && !gi.is_same(grad_input)) grad_input.copy_(gi);
  if (want_weight && !gw.is_same(grad_weight)) grad_weight.copy_(gw);
  if (want_bias && !gb.is_same(grad_bias)) grad_bias.copy_(gb);
  return {grad_input, grad_weight, grad_bias};
}

Tensor im2win_transform(const Tensor& input_arg, IntArrayRef kernel_size, IntArrayRef stride,
                        IntArrayRef padding, IntArrayRef dilation) {
  const char* op = "im2win.im2win";
  check_rank(input_arg, 4, op, "input");
  TORCH_CHECK(input_arg.is_cpu() || input_arg.is_cuda(), op,
              ": input must be a CPU or CUDA tensor, got ", input_arg.device());
  check_float_dtype(input_arg, op, "input");
  check_pair(kernel_size, 1, op, "kernel_size");
  const auto out = output_size(input_arg, kernel_size, stride, padding, dilation, op, "kernel_size");

  Im2winParams p{};
  p.dtype = to_dtype(input_arg.scalar_type());
  p.batch = input_arg.size(0);
  p.channels = input_arg.size(1);
  p.in_h = input_arg.size(2);
  p.in_w = input_arg.size(3);
  p.kernel_h = kernel_size[0];
  p.out_h = out[0];
  p.padded_w = p.in_w + 2 * padding[1];
  p.stride_h = stride[0];
  p.pad_h = padding[0];
  p.pad_w = padding[1];
  p.dilation_h = dilation[0];
  Tensor windows = at::empty({p.batch, p.channels, p.out_h, int64_t(p.padded_w) * p.kernel_h},
                             input_arg.options());
  if (windows.numel() == 0) return windows;
  Tensor input = kernel_view(dense(input_arg));
  Tensor result = result_view(windows, input.scalar_type());
  p.dtype = to_dtype(input.scalar_type());
  p.input = input.data_ptr();
  p.in_stride = strides_of(input);
  p.output = result.data_ptr();

#ifdef WITH_CUDA
  if (input.is_cuda()) {
    c10::cuda::CUDAGuard guard(input.device());
    check_launch(im2win_cuda(p, current_stream()), op);
    return windows;
  }
#endif
  run_cpu(int64_t(p.batch) * p.channels, window_plane_elems(p),
          [&](int64_t b, int64_t e) { im2win_cpu(p, b, e); });
  if (!result.is_same(windows)) windows.copy_(result);
  return windows;
}

void bind_kernels(torch::Library& m) {
  m.impl("conv2d", &conv2d);
  m.impl("conv2d_backward", &conv2d_backward);
  m.impl("im2win", &im2win_transform);
}

}  // namespace

TORCH_LIBRARY(im2win, m) {
  m.def(
      "conv2d(Tensor input, Tensor weight, Tensor? bias, int[2] stride, int[2] padding, "
      "int[2] dilation, int groups) -> Tensor");
  m.def(
      "conv2d_backward(Tensor grad_output, Tensor input, Tensor weight, int[2] stride, "
      "int[2] padding, int[2] dilation, int groups, bool[3] output_mask) "
      "-> (Tensor, Tensor, Tensor)");
  m.def(
      "im2win(Tensor input, int[2] kernel_size, int[2] stride, int[2] padding, "
      "int[2] dilation) -> Tensor");
}

LT_REGISTER_CPU_AND_CUDA(im2win, bind_kernels)

}  // namespace im2win

LT_DEFINE_REGISTRATION_MODULE()

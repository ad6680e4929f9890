// Autocast kernels of the custom ops: under torch.autocast an op runs in the autocast dtype,
// as aten::conv2d and aten::scaled_dot_product_attention do ("lower precision fp" policy).
// Each kernel casts its floating arguments, hides the autocast key and calls the op again,
// so autograd records the casts and gradients flow back to the fp32 leaves.
#pragma once

#include <ATen/ATen.h>
#include <ATen/autocast_mode.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/core/impl/LocalDispatchKeySet.h>

#include <optional>

namespace autocast_utils {

// Which dispatch key and device type an autocast kernel serves.
template <c10::DeviceType kDevice>
struct AutocastTarget;

template <>
struct AutocastTarget<c10::DeviceType::CPU> {
  static constexpr c10::DispatchKey key = c10::DispatchKey::AutocastCPU;
};

template <>
struct AutocastTarget<c10::DeviceType::CUDA> {
  static constexpr c10::DispatchKey key = c10::DispatchKey::AutocastCUDA;
};

// A floating tensor of kDevice other than fp64, in the autocast dtype of kDevice; anything
// else as it is (the autocast weight cache applies, as for aten ops).
template <c10::DeviceType kDevice>
at::Tensor to_autocast_dtype(const at::Tensor& t) {
  return at::autocast::cached_cast(at::autocast::get_autocast_dtype(kDevice), t, kDevice);
}

template <c10::DeviceType kDevice>
std::optional<at::Tensor> to_autocast_dtype(const std::optional<at::Tensor>& t) {
  return t.has_value() ? std::optional<at::Tensor>(to_autocast_dtype<kDevice>(*t)) : t;
}

// The typed handle of a registered op, looked up once.
template <typename Signature>
c10::TypedOperatorHandle<Signature> op_handle(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Signature>();
}

}  // namespace autocast_utils

// im2win::conv2d under torch.autocast: the convolution runs in the autocast dtype (input,
// weight and bias cast), the policy of aten::conv2d. conv2d_backward needs no kernel here:
// autograd calls it with the tensors the forward saw, already in one dtype.
#include <torch/library.h>

#include "../common/autocast_utils.h"

namespace im2win {
namespace {

using at::IntArrayRef;
using at::Tensor;
using autocast_utils::to_autocast_dtype;

using Conv2dSignature = Tensor(const Tensor&, const Tensor&, const std::optional<Tensor>&,
                               IntArrayRef, IntArrayRef, IntArrayRef, int64_t);

template <c10::DeviceType kDevice>
Tensor conv2d_autocast(const Tensor& input, const Tensor& weight,
                       const std::optional<Tensor>& bias, IntArrayRef stride,
                       IntArrayRef padding, IntArrayRef dilation, int64_t groups) {
  c10::impl::ExcludeDispatchKeyGuard no_autocast(autocast_utils::AutocastTarget<kDevice>::key);
  static const auto op = autocast_utils::op_handle<Conv2dSignature>("im2win::conv2d");
  return op.call(to_autocast_dtype<kDevice>(input), to_autocast_dtype<kDevice>(weight),
                 to_autocast_dtype<kDevice>(bias), stride, padding, dilation, groups);
}

}  // namespace

TORCH_LIBRARY_IMPL(im2win, AutocastCPU, m) {
  m.impl("conv2d", &conv2d_autocast<c10::DeviceType::CPU>);
}

TORCH_LIBRARY_IMPL(im2win, AutocastCUDA, m) {
  m.impl("conv2d", &conv2d_autocast<c10::DeviceType::CUDA>);
}

}  // namespace im2win

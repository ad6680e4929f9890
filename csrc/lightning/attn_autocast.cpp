// lightning::attn and lightning::attn_decode under torch.autocast: q, k and v are cast to the
// autocast dtype, as aten::scaled_dot_product_attention's are; the slopes and the states
// stay fp32 (the op's state convention). attn_backward needs no kernel here: autograd calls
// it with the tensors the forward saw.
#include <torch/library.h>

#include <tuple>

#include "../common/autocast_utils.h"

namespace lightning {
namespace {

using at::Tensor;
using autocast_utils::to_autocast_dtype;
using std::optional;

using AttnSignature = std::tuple<Tensor, Tensor>(const Tensor&, const Tensor&, const Tensor&,
                                                 const optional<Tensor>&, const optional<Tensor>&,
                                                 const optional<Tensor>&, bool, double);
using AttnDecodeSignature = Tensor(const Tensor&, const Tensor&, const Tensor&, Tensor&,
                                   const optional<Tensor>&, double);

template <c10::DeviceType kDevice>
std::tuple<Tensor, Tensor> attn_autocast(const Tensor& q, const Tensor& k, const Tensor& v,
                                         const optional<Tensor>& slope,
                                         const optional<Tensor>& initial_state,
                                         const optional<Tensor>& cu_seqlens,
                                         bool output_final_state, double scale) {
  c10::impl::ExcludeDispatchKeyGuard no_autocast(autocast_utils::AutocastTarget<kDevice>::key);
  static const auto op = autocast_utils::op_handle<AttnSignature>("lightning::attn");
  return op.call(to_autocast_dtype<kDevice>(q), to_autocast_dtype<kDevice>(k),
                 to_autocast_dtype<kDevice>(v), slope, initial_state, cu_seqlens,
                 output_final_state, scale);
}

template <c10::DeviceType kDevice>
Tensor attn_decode_autocast(const Tensor& q, const Tensor& k, const Tensor& v, Tensor& state,
                            const optional<Tensor>& slope, double scale) {
  c10::impl::ExcludeDispatchKeyGuard no_autocast(autocast_utils::AutocastTarget<kDevice>::key);
  static const auto op = autocast_utils::op_handle<AttnDecodeSignature>("lightning::attn_decode");
  return op.call(to_autocast_dtype<kDevice>(q), to_autocast_dtype<kDevice>(k),
                 to_autocast_dtype<kDevice>(v), state, slope, scale);
}

}  // namespace

TORCH_LIBRARY_IMPL(lightning, AutocastCPU, m) {
  m.impl("attn", &attn_autocast<c10::DeviceType::CPU>);
  m.impl("attn_decode", &attn_decode_autocast<c10::DeviceType::CPU>);
}

TORCH_LIBRARY_IMPL(lightning, AutocastCUDA, m) {
  m.impl("attn", &attn_autocast<c10::DeviceType::CUDA>);
  m.impl("attn_decode", &attn_decode_autocast<c10::DeviceType::CUDA>);
}

}  // namespace lightning

// The element type of a kernel's tensors, as the Params structs of both namespaces carry it.
// Torch-free: the binding files map at::ScalarType onto it (torch_utils::to_dtype).
#pragma once

namespace common {

enum class DType { kFloat64, kFloat32, kFloat16, kBFloat16 };

}  // namespace common

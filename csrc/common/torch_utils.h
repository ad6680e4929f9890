// Helpers for the binding files (the only sources that see torch): argument checks with
// messages that name the argument, and layout fixes that keep kernels simple.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <string>

#include "dtype.h"

namespace torch_utils {

// The kernels' element type for a dtype that the argument checks let through.
inline common::DType to_dtype(at::ScalarType t) {
  switch (t) {
    case at::kDouble: return common::DType::kFloat64;
    case at::kFloat: return common::DType::kFloat32;
    case at::kHalf: return common::DType::kFloat16;
    case at::kBFloat16: return common::DType::kBFloat16;
    default: TORCH_CHECK(false, "no kernel for dtype ", t);
  }
}

// Raises ValueError "<op>: <arg> must have N dimensions, got ..." on rank mismatch.
inline void check_rank(const at::Tensor& t, int64_t rank, const char* op, const char* arg) {
  TORCH_CHECK_VALUE(t.dim() == rank, op, ": ", arg, " must have ", rank, " dimensions, got ",
                    t.dim(), " (shape ", t.sizes(), ")");
}

inline void check_same_device(const at::Tensor& ref, const at::Tensor& t, const char* op,
                              const char* ref_name, const char* arg) {
  TORCH_CHECK(t.device() == ref.device(), op, ": ", arg, " is on ", t.device(), " but ", ref_name,
              " is on ", ref.device(), "; all tensors must be on one device");
}

inline void check_same_dtype(const at::Tensor& ref, const at::Tensor& t, const char* op,
                             const char* ref_name, const char* arg) {
  TORCH_CHECK(t.scalar_type() == ref.scalar_type(), op, ": ", arg, " has dtype ",
              t.scalar_type(), " but ", ref_name, " has dtype ", ref.scalar_type(),
              "; they must match");
}

inline void check_dtype(const at::Tensor& t, at::ScalarType want, const char* op,
                        const char* arg) {
  TORCH_CHECK(t.scalar_type() == want, op, ": ", arg, " must be ", want, ", got ",
              t.scalar_type());
}

// Returns t if its last dimension is contiguous and every row starts on a 16-byte boundary
// (what vectorised and asynchronous copies need), else a contiguous copy.
inline at::Tensor with_aligned_rows(const at::Tensor& t) {
  const int64_t elem = t.element_size();
  bool ok = t.dim() == 0 || t.size(-1) <= 1 || t.stride(-1) == 1;
  ok = ok && reinterpret_cast<uintptr_t>(t.data_ptr()) % 16 == 0;
  for (int64_t i = 0; ok && i + 1 < t.dim(); ++i)
    ok = t.size(i) == 1 || (t.stride(i) * elem) % 16 == 0;
  return ok ? t : t.contiguous();
}

// The stride of dimension i, or 0 when the dimension has one element (its stride is
// meaningless and may be anything in a view).
inline int64_t stride_or_zero(const at::Tensor& t, int64_t i) {
  return t.size(i) == 1 ? 0 : t.stride(i);
}

// CPU kernels compute in float (or double); half types are widened once here and the
// results rounded once on the way out.
inline at::Tensor cpu_compute_view(const at::Tensor& t) {
  return t.scalar_type() == at::kDouble || t.scalar_type() == at::kFloat ? t : t.to(at::kFloat);
}

// Spreads `items` work items of `item_work` multiply-adds (or copies) each over threads, at
// least ATen's grain of work per chunk: below it another thread costs more than it saves.
template <typename Kernel>
void run_cpu(int64_t items, int64_t item_work, Kernel kernel) {
  constexpr int64_t kMinTaskWork = 32768;  // at::internal::GRAIN_SIZE
  const int64_t grain = std::max<int64_t>(1, kMinTaskWork / std::max<int64_t>(item_work, 1));
  at::parallel_for(0, items, grain, [&](int64_t begin, int64_t end) { kernel(begin, end); });
}

}  // namespace torch_utils

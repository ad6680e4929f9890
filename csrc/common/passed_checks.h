// Value checks that need a host synchronisation, done once per tensor instead of every call.
#pragma once

#include <ATen/ATen.h>
#include <c10/util/intrusive_ptr.h>

#include <cstdint>
#include <mutex>
#include <unordered_map>

namespace torch_utils {

// Reading a CUDA tensor's values on the host waits for the device, and the GPU then idles
// through the rest of the call's host work: a fixed cost in every call, large next to a
// short kernel such as one decode step. Arguments such as decay slopes are nearly always the
// same tensor call after call (one buffer per layer of a model, so as many tensors as
// layers), so this remembers every tensor whose values passed, up to kMaxEntries alive at
// once: the same tensor object at the same version is not checked again. In-place writes,
// through any view, bump the version; a tensor freed and another allocated at its address
// is another object. Inference tensors have no version counter: they are remembered by
// identity alone, so an in-place write to one inside inference mode after it passed is not
// seen.
class PassedValueChecks {
 public:
  bool contains(const at::Tensor& t) {
    std::lock_guard<std::mutex> lock(mutex_);
    const auto it = entries_.find(t.unsafeGetTensorImpl());
    return it != entries_.end() && it->second.version == version_of(t) &&
           it->second.impl.lock().get() == t.unsafeGetTensorImpl();
  }

  void add(const at::Tensor& t) {
    std::lock_guard<std::mutex> lock(mutex_);
    if (entries_.size() >= kMaxEntries) forget_freed();
    if (entries_.size() >= kMaxEntries) entries_.clear();
    entries_.insert_or_assign(t.unsafeGetTensorImpl(),
                              Entry{Weak(t.getIntrusivePtr()), version_of(t)});
  }

 private:
  using Weak = c10::weak_intrusive_ptr<c10::TensorImpl, c10::UndefinedTensorImpl>;
  struct Entry {
    Weak impl;
    int64_t version;
  };
  static constexpr size_t kMaxEntries = 1024;

  static int64_t version_of(const at::Tensor& t) {
    return t.is_inference() ? -1 : int64_t(t._version());
  }

  void forget_freed() {
    for (auto it = entries_.begin(); it != entries_.end();)
      it = it->second.impl.expired() ? entries_.erase(it) : std::next(it);
  }

  std::unordered_map<const c10::TensorImpl*, Entry> entries_;
  std::mutex mutex_;
};

}  // namespace torch_utils

// Value checks that need a host synchronisation, done once per tensor instead of every call.
#pragma once

#include <ATen/ATen.h>
#include <c10/util/intrusive_ptr.h>

#include <array>
#include <mutex>
#include <optional>

namespace torch_utils {

// Reading a CUDA tensor's values on the host waits for the device, and the GPU then idles
// through the rest of the call's host work: a fixed cost in every call, large next to a
// short kernel. Arguments such as decay slopes are nearly always the same tensor call after
// call (a module buffer), so this remembers the last few tensors whose values passed: the
// same tensor object at the same version is not checked again. In-place writes, through any view, bump the version; a tensor freed and
// another allocated at its address is another object. Inference tensors have no version,
// so they are never remembered.
class PassedValueChecks {
 public:
  bool contains(const at::Tensor& t) {
    if (t.is_inference()) return false;
    std::lock_guard<std::mutex> lock(mutex_);
    for (const Entry& e : entries_)
      if (e.impl && e.version == t._version() && e.impl->lock().get() == t.unsafeGetTensorImpl())
        return true;
    return false;
  }

  void add(const at::Tensor& t) {
    if (t.is_inference()) return;
    std::lock_guard<std::mutex> lock(mutex_);
    entries_[next_] = Entry{Weak(t.getIntrusivePtr()), t._version()};
    next_ = (next_ + 1) % kEntries;
  }

 private:
  using Weak = c10::weak_intrusive_ptr<c10::TensorImpl, c10::UndefinedTensorImpl>;
  struct Entry {
    std::optional<Weak> impl;
    int64_t version = -1;
  };
  static constexpr int kEntries = 8;
  std::array<Entry, kEntries> entries_;
  int next_ = 0;
  std::mutex mutex_;
};

}  // namespace torch_utils

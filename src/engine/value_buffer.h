// Values of one host call: inline when few (the common case), else on the
// heap. Engine-independent; for backends.
#ifndef KEEL_ENGINE_VALUE_BUFFER_H_
#define KEEL_ENGINE_VALUE_BUFFER_H_

#include <cstddef>
#include <span>
#include <vector>

#include "keel/value.h"

namespace keel::engine {

class ValueBuffer {
 public:
  explicit ValueBuffer(size_t n) {
    if (n > kInline) heap_.resize(n);
    span_ = n > kInline ? std::span<Value>(heap_) : std::span<Value>(inline_, n);
  }
  ValueBuffer(const ValueBuffer&) = delete;
  ValueBuffer& operator=(const ValueBuffer&) = delete;
  std::span<Value> span() { return span_; }

 private:
  static constexpr size_t kInline = 16;
  Value inline_[kInline];
  std::vector<Value> heap_;
  std::span<Value> span_;
};

}  // namespace keel::engine

#endif  // KEEL_ENGINE_VALUE_BUFFER_H_

// The per-call host context (CallOptions::context) as host functions reach
// it: a thread-local set by the worker around each call, so no engine
// needs to carry it through its Caller.
#include "exec/core.h"

namespace keel {
namespace {

thread_local const HostContext* current_context = nullptr;

const HostContext& NoContext() {
  static const HostContext none;
  return none;
}

}  // namespace

const HostContext& Caller::call_context() const {
  return current_context != nullptr ? *current_context : NoContext();
}

namespace exec {

ScopedCallContext::ScopedCallContext(const HostContext& context) : previous_(current_context) {
  current_context = &context;
}

ScopedCallContext::~ScopedCallContext() { current_context = previous_; }

}  // namespace exec
}  // namespace keel

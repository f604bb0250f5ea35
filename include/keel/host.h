// Host functions: native code a guest can import, and what such code sees
// of the guest that called it.
#ifndef KEEL_HOST_H_
#define KEEL_HOST_H_

#include <cstdint>
#include <functional>
#include <map>
#include <span>
#include <string>
#include <string_view>
#include <utility>

#include "keel/status.h"
#include "keel/value.h"

namespace keel {

// Per-instance state owned by the instance and reachable from host
// functions (e.g. a WASI context). Used on the instance's thread only.
class HostState {
 public:
  virtual ~HostState() = default;
  // The executor calls this before each call on the instance, so state of
  // one call (e.g. captured output) does not leak into the next.
  virtual void OnCallStart() {}
  // The executor calls this when a call on the instance failed, so the host
  // can add what it saw (e.g. the guest's stderr) to the error.
  virtual void AnnotateError(Error& /*error*/) const {}

  // Fresh state for every call: Snapshot runs once, when the instance's
  // state is recorded right after its init, and Reset whenever the
  // instance is brought back to that state before another call; Reset
  // returns to what Snapshot saw. The defaults refuse: a host state keel
  // knows nothing of may carry one call's data into the next, so an
  // instance holding it gets a fresh instance per call instead. Override
  // both (a state with nothing to undo returns success from each).
  [[nodiscard]] virtual Result<void> Snapshot() {
    return MakeError(ErrorCode::kFailedPrecondition, "the instance's host state cannot be reset");
  }
  [[nodiscard]] virtual Result<void> Reset() {
    return MakeError(ErrorCode::kFailedPrecondition, "the instance's host state cannot be reset");
  }
};

// What a host function sees of the instance that called it. Valid only
// during the host call, on the calling thread.
class Caller {
 public:
  virtual ~Caller() = default;

  // The instance's linear memory (empty if it has none). Valid until the
  // host function returns.
  virtual std::span<uint8_t> Memory() = 0;

  // Bounds-checked copies; kTrap/kMemoryOutOfBounds style errors as
  // kInvalidArgument naming the range when out of bounds.
  [[nodiscard]] Result<void> Read(uint64_t offset, std::span<uint8_t> out);
  [[nodiscard]] Result<void> Write(uint64_t offset, std::span<const uint8_t> in);

  // True once an interrupt aimed at the running call was requested. Host
  // functions that block must wake up and return Error(kInterrupted).
  virtual bool interrupted() const = 0;

  // `hook` runs (on the requesting thread) when an interrupt for the running
  // call is requested, so a blocked host function can wake itself. Cleared
  // when the host function returns. Runs at once if already interrupted.
  virtual void SetInterruptHook(std::function<void()> hook) = 0;

  virtual HostState* host_state() = 0;
};

// A host function. Writes results.size() values of the declared types into
// `results`. An Error ends the guest's call with that error: kInterrupted
// becomes an interrupted call; anything else becomes a trap of kind
// kHostError (kExit traps keep their kind) carrying the message.
using HostFunc = std::function<Result<void>(Caller& caller, std::span<const Value> args,
                                            std::span<Value> results)>;

// Host functions by (module, name). Immutable once shared; thread-safe for
// reads.
class Linker {
 public:
  struct Entry {
    FuncType type;
    HostFunc fn;
  };
  // Replaces an existing definition of the same name.
  void Define(std::string module, std::string name, FuncType type, HostFunc fn);
  const Entry* Find(std::string_view module, std::string_view name) const;

 private:
  std::map<std::pair<std::string, std::string>, Entry, std::less<>> entries_;
};

}  // namespace keel

#endif  // KEEL_HOST_H_

// A call handle: the caller's side of one call submitted to a pool.
//
// How a call can end, and what happens to the instance it ran on:
//
//   outcome                      handle resolves         instance
//   ---------------------------  ----------------------  ------------------------------
//   returns normally             values / bytes          back to the pool, healthy
//   Cancel() or handle dropped
//     while queued               kCancelled (withdrawn)  never touched: the call never runs
//     while running/post_return  kCancelled (detached),  the call runs to its end; result
//                                at once                 goes to the detached sink; healthy
//   deadline passes
//     while queued               kDeadlineExceeded       never touched: the call never runs
//     while running/post_return  kDeadlineExceeded,      interrupted at its next safe point,
//                                at once                 then poisoned and replaced
//   guest traps (either phase)   kTrap (kind, message,   poisoned and replaced
//                                wasm backtrace)
//   guest breaks the byte ABI    kInvalidArgument or     poisoned and replaced
//                                kResourceExhausted
//   runtime shuts down
//     while queued               kShuttingDown           never touched
//     while running              runs to the end within  healthy; if the drain period ends
//                                the drain period        first: interrupted, kShuttingDown
//   Abort() (an operator's stop, not a cancel)
//     while queued               kCancelled (withdrawn)  never touched: the call never runs
//     while running/post_return  kCancelled (aborted),   interrupted at its next safe point,
//                                at once                 then poisoned and replaced
//   Detach() (fire-and-forget)   nothing (no handle); the as if the handle were kept
//                                result goes to the
//                                OnComplete callbacks,
//                                else the detached sink
//
// Every handle resolves exactly once; every completion callback runs
// exactly once. No caller thread ever runs guest code, and waiting on a
// handle never outlasts the call's deadline (plus watchdog latency).
#ifndef KEEL_CALL_H_
#define KEEL_CALL_H_

#include <chrono>
#include <coroutine>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "keel/status.h"
#include "keel/value.h"

namespace keel {

using CallId = uint64_t;

namespace internal {
struct CallRecord;
struct CallAccess;
}  // namespace internal

// States of a call: kQueued -> kRunning -> kPostReturn -> kDone, or
// kQueued -> kWithdrawn. kPostReturn is the guest's cleanup phase of a byte
// call (cabi_post_*); numeric calls go from kRunning to kDone.
enum class CallState : uint8_t { kQueued, kRunning, kPostReturn, kDone, kWithdrawn };

// What Cancel() achieved.
enum class CancelOutcome : uint8_t {
  kWithdrawn,  // it had not started and never will
  kDetached,   // it was running; it will finish; its result goes to the detached sink
  kAborted,    // it was running; it is interrupted at its next safe point (Abort only)
  kTooLate,    // it had already ended (done, failed, timed out, withdrawn before)
};

std::string_view ToString(CallState state);
std::string_view ToString(CancelOutcome outcome);

// What a WASI guest wrote during one call to a stdout or stderr that its
// pool captures (WasiStdio::Capture, keel/wasi.h); empty for a stream that
// is not captured.
struct CapturedStdio {
  std::string out;
  std::string err;
  bool out_truncated = false;  // the guest wrote more than the capture keeps
  bool err_truncated = false;
};

// What a successful call produced: `values` for numeric calls, `bytes` for
// byte calls, and the guest's captured stdio. (A failed call's error
// carries the tail of a captured stderr in its message.)
struct CallOutput {
  std::vector<Value> values;
  std::vector<uint8_t> bytes;
  CapturedStdio stdio;
};

using CallResult = Result<CallOutput>;

// Move-only. Thread-safe: Cancel, Wait, state and OnComplete may be called
// from any thread, concurrently. Destroying a handle whose call has not
// resolved cancels the call (withdrawn or detached, as Cancel()); Detach()
// lets it go on instead.
class Call {
 public:
  Call() = default;
  Call(Call&& other) noexcept = default;
  Call& operator=(Call&& other) noexcept;
  Call(const Call&) = delete;
  Call& operator=(const Call&) = delete;
  ~Call();

  // False for a default-constructed or moved-from handle.
  bool valid() const { return record_ != nullptr; }
  CallId id() const;
  CallState state() const;
  // True once the handle has resolved.
  bool ready() const;

  // Thread-safe and idempotent; returns what it achieved (see above). The
  // second and later calls return kTooLate.
  CancelOutcome Cancel();

  // Stops the call, also if it runs: queued, it is withdrawn as by Cancel();
  // running (detached or not), the guest is interrupted at its next safe
  // point and its instance replaced. Returns kWithdrawn, kAborted, or
  // kTooLate when the call had already ended.
  CancelOutcome Abort();

  // Fire-and-forget: lets the call go on without this handle, which becomes
  // invalid. The call waits, runs and meets its deadline as if the handle
  // were kept, and is never cancelled for the handle's sake. Its result goes
  // to the callbacks registered with OnComplete; a call that has none hands
  // it to the runtime's detached sink (if one is set), so it is not lost.
  // Releasing a call that has resolved just releases the handle.
  void Detach();

  // Blocks until the call resolves; returns its result, which stays valid
  // as long as this handle.
  const CallResult& Wait() const;
  // As Wait(), giving up after `timeout`: nullptr then, and the call goes on.
  const CallResult* WaitFor(std::chrono::nanoseconds timeout) const;

  // Runs `fn` exactly once with the result, on a keel callback thread (never
  // on the caller's thread, never on a worker), also if already resolved.
  // Callbacks must not block for long: they share the callback threads. An
  // exception thrown by `fn` is caught and counted (callback_exceptions).
  // Once the runtime has shut down there are no callback threads (and every
  // call has resolved): `fn` then runs at once on the calling thread.
  void OnComplete(std::function<void(const CallResult&)> fn) const;

  // Runs `fn` exactly once with the result on the thread that resolves the
  // call (the worker that ran it, the deadline watchdog, or a thread calling
  // Cancel() or shutting the runtime down), or at once on this thread if the
  // call has already resolved. For handing the result to the caller's own
  // event loop without a hop through the callback threads: `fn` must only
  // do that (e.g. post to an executor) and return. It must not block, wait
  // for a call, or submit, cancel or wait on calls itself.
  void OnCompleteInline(std::function<void(const CallResult&)> fn) const;

  // `co_await call` suspends until the call resolves and resumes on a keel
  // callback thread with a copy of the result.
  struct Awaiter {
    const Call* call;
    bool await_ready() const { return call->ready(); }
    void await_suspend(std::coroutine_handle<> handle) const;
    CallResult await_resume() const { return call->Wait(); }
  };
  Awaiter operator co_await() const { return Awaiter{this}; }

 private:
  friend struct internal::CallAccess;
  explicit Call(std::shared_ptr<internal::CallRecord> record) : record_(std::move(record)) {}
  std::shared_ptr<internal::CallRecord> record_;
};

}  // namespace keel

#endif  // KEEL_CALL_H_

// Errors as values. Every fallible keel function returns Result<T>: either a
// T or an Error naming what went wrong. No exception crosses the public API.
#ifndef KEEL_STATUS_H_
#define KEEL_STATUS_H_

#include <cstdint>
#include <string>
#include <string_view>
#include <utility>

#include <tl/expected.hpp>

namespace keel {

enum class ErrorCode : uint8_t {
  kInvalidArgument,    // the caller passed something malformed
  kNotFound,           // unknown module, export, job, file
  kAlreadyExists,      // e.g. a second job with the same idempotency key
  kInvalidModule,      // bytes are not a valid WebAssembly module
  kLinkError,          // imports missing or mistyped, instantiation refused
  kTrap,               // the guest trapped; see Error::trap
  kInterrupted,        // the guest was stopped by an interrupt request
  kCancelled,          // the caller cancelled the call
  kDeadlineExceeded,   // the call's deadline passed
  kOverloaded,         // a queue is full; retry later
  kUnavailable,        // e.g. a quarantined module; retry later
  kShuttingDown,       // the runtime is stopping and did not run the call
  kResourceExhausted,  // a size or memory limit was hit
  kFailedPrecondition, // the object is not in a state that allows this
  kInternal,           // a keel bug or an engine failure
};

// Why a guest trapped. kExit is WASI proc_exit, carried as a trap so that it
// unwinds the guest like one; Error::exit_code holds the status.
enum class TrapKind : uint8_t {
  kNone,
  kUnreachable,
  kIntegerDivideByZero,
  kIntegerOverflow,
  kInvalidConversion,
  kMemoryOutOfBounds,
  kTableOutOfBounds,
  kIndirectCallToNull,
  kIndirectCallTypeMismatch,
  kStackOverflow,
  kOutOfMemory,
  kHostError,
  kExit,
  kOutOfFuel,  // the call used up its fuel budget (CompileOptions::fuel)
  kOther,
};

std::string_view ToString(ErrorCode code);
std::string_view ToString(TrapKind kind);

// A value type; copyable; no thread-affinity.
struct Error {
  ErrorCode code = ErrorCode::kInternal;
  std::string message;
  TrapKind trap = TrapKind::kNone;  // set when code == kTrap
  int exit_code = 0;                // set when trap == kExit
  std::string backtrace;            // wasm frames, innermost first, if known

  Error() = default;
  Error(ErrorCode c, std::string msg) : code(c), message(std::move(msg)) {}

  static Error Trap(TrapKind kind, std::string msg) {
    Error e(ErrorCode::kTrap, std::move(msg));
    e.trap = kind;
    return e;
  }

  // "code: message" (and the trap kind), for logs and CLI output.
  std::string ToString() const;
};

template <typename T>
using Result = tl::expected<T, Error>;

inline tl::unexpected<Error> MakeError(ErrorCode code, std::string message) {
  return tl::unexpected<Error>(Error(code, std::move(message)));
}
inline tl::unexpected<Error> MakeError(Error error) {
  return tl::unexpected<Error>(std::move(error));
}

}  // namespace keel

#endif  // KEEL_STATUS_H_

#include "keel/status.h"

namespace keel {

std::string_view ToString(ErrorCode code) {
  switch (code) {
    case ErrorCode::kInvalidArgument: return "invalid_argument";
    case ErrorCode::kNotFound: return "not_found";
    case ErrorCode::kAlreadyExists: return "already_exists";
    case ErrorCode::kInvalidModule: return "invalid_module";
    case ErrorCode::kLinkError: return "link_error";
    case ErrorCode::kTrap: return "trap";
    case ErrorCode::kInterrupted: return "interrupted";
    case ErrorCode::kCancelled: return "cancelled";
    case ErrorCode::kDeadlineExceeded: return "deadline_exceeded";
    case ErrorCode::kOverloaded: return "overloaded";
    case ErrorCode::kUnavailable: return "unavailable";
    case ErrorCode::kShuttingDown: return "shutting_down";
    case ErrorCode::kResourceExhausted: return "resource_exhausted";
    case ErrorCode::kFailedPrecondition: return "failed_precondition";
    case ErrorCode::kInternal: return "internal";
  }
  return "unknown";
}

std::string_view ToString(TrapKind kind) {
  switch (kind) {
    case TrapKind::kNone: return "none";
    case TrapKind::kUnreachable: return "unreachable";
    case TrapKind::kIntegerDivideByZero: return "integer_divide_by_zero";
    case TrapKind::kIntegerOverflow: return "integer_overflow";
    case TrapKind::kInvalidConversion: return "invalid_conversion";
    case TrapKind::kMemoryOutOfBounds: return "memory_out_of_bounds";
    case TrapKind::kTableOutOfBounds: return "table_out_of_bounds";
    case TrapKind::kIndirectCallToNull: return "indirect_call_to_null";
    case TrapKind::kIndirectCallTypeMismatch: return "indirect_call_type_mismatch";
    case TrapKind::kStackOverflow: return "stack_overflow";
    case TrapKind::kOutOfMemory: return "out_of_memory";
    case TrapKind::kHostError: return "host_error";
    case TrapKind::kExit: return "exit";
    case TrapKind::kOutOfFuel: return "out_of_fuel";
    case TrapKind::kOther: return "other";
  }
  return "unknown";
}

std::string Error::ToString() const {
  std::string out(keel::ToString(code));
  if (code == ErrorCode::kTrap) {
    out += " (";
    out += keel::ToString(trap);
    out += ")";
  }
  if (!message.empty()) {
    out += ": ";
    out += message;
  }
  return out;
}

}  // namespace keel

// JSON for numeric calls, exact both ways.
//
// Request: {"args": [...]} (other members are ignored, but no object may
// repeat a key; "args" may be omitted for exports without parameters).
// Arguments are converted while the body is parsed, and parsing stops at
// the first argument too many. Per parameter type:
//   i32, i64  a JSON integer, or a string in decimal or 0x hex; i32 takes
//             -2^31..2^32-1 (the unsigned spelling of the same bits)
//   f32, f64  a JSON number, or a string: any number text (rounded once,
//             from the text, to the type), "inf", "-inf", or a NaN with its
//             sign and payload: "nan", "-nan", "nan:0x7fffff" (the mantissa,
//             as in the WebAssembly text format), "-nan(0x3fffff)" (C's)
// Response: {"results": [...]}: i32 as a JSON integer, i64 as a decimal
// string (JSON numbers lose precision beyond 2^53 in most clients), f32 and
// f64 as the shortest number text that reads back to the same value, or
// "inf", "-inf", "nan", "-nan", "nan:0x1", ... (Value::ToString: exact).
#ifndef KEEL_SERVER_CALL_ARGS_H_
#define KEEL_SERVER_CALL_ARGS_H_

#include <string>
#include <string_view>
#include <vector>

#include "keel/status.h"
#include "keel/value.h"

namespace keel::server {

// kInvalidArgument naming the problem: malformed JSON, no object, a
// repeated key, a wrong count, or an argument that is not a value of its
// parameter's type.
[[nodiscard]] Result<std::vector<Value>> ParseCallArgs(std::string_view json, const FuncType& type);

// The JSON array of `values`, e.g. [3,"-9223372036854775808",0.1,"nan"].
std::string FormatResults(const std::vector<Value>& values);

}  // namespace keel::server

#endif  // KEEL_SERVER_CALL_ARGS_H_

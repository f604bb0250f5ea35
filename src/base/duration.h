// Durations as people write them: "250ms", "2s", "1.5m", "100us", "3h".
#ifndef KEEL_BASE_DURATION_H_
#define KEEL_BASE_DURATION_H_

#include <chrono>
#include <string>
#include <string_view>

#include "keel/status.h"

namespace keel {

// A non-negative number (decimals allowed) followed by one of ns, us, ms,
// s, m, h. Returns the duration; kInvalidArgument naming the text
// otherwise (no unit, unknown unit, negative, overflow).
[[nodiscard]] Result<std::chrono::nanoseconds> ParseDuration(std::string_view text);

// "250ms", "2s", "1m30s"-free compact form: the largest exact unit.
std::string FormatDuration(std::chrono::nanoseconds d);

}  // namespace keel

#endif  // KEEL_BASE_DURATION_H_

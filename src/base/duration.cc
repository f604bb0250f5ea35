#include "base/duration.h"

#include <cctype>
#include <cmath>
#include <cstdlib>
#include <limits>

namespace keel {

Result<std::chrono::nanoseconds> ParseDuration(std::string_view text) {
  auto bad = [&](const char* why) {
    return MakeError(ErrorCode::kInvalidArgument,
                     "invalid duration '" + std::string(text) + "': " + why);
  };
  size_t split = 0;
  while (split < text.size() && (std::isdigit(static_cast<unsigned char>(text[split])) || text[split] == '.')) {
    ++split;
  }
  if (split == 0) return bad("expected a number, e.g. 250ms or 2s");
  std::string number(text.substr(0, split));
  std::string_view unit = text.substr(split);
  char* end = nullptr;
  double value = std::strtod(number.c_str(), &end);
  if (end != number.c_str() + number.size() || !std::isfinite(value)) return bad("not a number");
  double scale;
  if (unit == "ns") {
    scale = 1;
  } else if (unit == "us") {
    scale = 1e3;
  } else if (unit == "ms") {
    scale = 1e6;
  } else if (unit == "s") {
    scale = 1e9;
  } else if (unit == "m") {
    scale = 60e9;
  } else if (unit == "h") {
    scale = 3600e9;
  } else {
    return bad(unit.empty() ? "missing unit (ns, us, ms, s, m, h)" : "unknown unit (ns, us, ms, s, m, h)");
  }
  double ns = value * scale;
  // 2^63 itself (the double nearest INT64_MAX) does not fit either.
  if (ns >= static_cast<double>(std::numeric_limits<int64_t>::max())) return bad("too large");
  return std::chrono::nanoseconds(static_cast<int64_t>(std::llround(ns)));
}

std::string FormatDuration(std::chrono::nanoseconds d) {
  int64_t ns = d.count();
  struct Unit {
    int64_t size;
    const char* name;
  };
  for (Unit u : {Unit{3600'000'000'000, "h"}, Unit{60'000'000'000, "m"}, Unit{1'000'000'000, "s"},
                 Unit{1'000'000, "ms"}, Unit{1'000, "us"}}) {
    if (ns != 0 && ns % u.size == 0) return std::to_string(ns / u.size) + u.name;
  }
  return std::to_string(ns) + "ns";
}

}  // namespace keel

#include "base/byte_size.h"

#include <array>
#include <charconv>
#include <string>
#include <utility>

namespace keel {

namespace {

Error Bad(std::string_view text, std::string_view why) {
  return Error(ErrorCode::kInvalidArgument,
               "'" + std::string(text) + "' is not a size (" + std::string(why) +
                   "; e.g. 4GiB, 512MiB, 1048576)");
}

// The multiplier of `unit`; 0 when unknown.
uint64_t UnitBytes(std::string_view unit) {
  static constexpr std::array<std::pair<std::string_view, int>, 10> kUnits = {{
      {"", 0}, {"B", 0}, {"K", 10}, {"KiB", 10}, {"M", 20},
      {"MiB", 20}, {"G", 30}, {"GiB", 30}, {"T", 40}, {"TiB", 40},
  }};
  for (const auto& [name, shift] : kUnits) {
    if (name == unit) return uint64_t{1} << shift;
  }
  return 0;
}

}  // namespace

Result<uint64_t> ParseByteSize(std::string_view text) {
  uint64_t number = 0;
  const char* end = text.data() + text.size();
  auto [rest, ec] = std::from_chars(text.data(), end, number);
  if (rest == text.data()) return tl::unexpected(Bad(text, "no whole number of bytes first"));
  if (ec == std::errc::result_out_of_range) return tl::unexpected(Bad(text, "too large"));
  std::string_view unit(rest, static_cast<size_t>(end - rest));
  uint64_t multiplier = UnitBytes(unit);
  if (multiplier == 0) {
    return tl::unexpected(Bad(text, "unknown unit '" + std::string(unit) + "'; use B, KiB, MiB, GiB or TiB"));
  }
  if (number > UINT64_MAX / multiplier) return tl::unexpected(Bad(text, "too large"));
  return number * multiplier;
}

}  // namespace keel

// Sizes as people write them: "4GiB", "512MiB", "64KiB", "1048576".
#ifndef KEEL_BASE_BYTE_SIZE_H_
#define KEEL_BASE_BYTE_SIZE_H_

#include <cstdint>
#include <string_view>

#include "keel/status.h"

namespace keel {

// A whole number of bytes, optionally followed by B, KiB, MiB, GiB or TiB
// (powers of 1024; K, M, G, T too). Returns the bytes; kInvalidArgument
// naming the text otherwise (no digits, unknown unit, fractions, negative,
// overflow).
[[nodiscard]] Result<uint64_t> ParseByteSize(std::string_view text);

}  // namespace keel

#endif  // KEEL_BASE_BYTE_SIZE_H_

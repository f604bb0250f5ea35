// A C++ guest (keel.hpp) for the SDK's edge cases.
//
// Exports:
//   oom:    tries to build a 1.5 GiB string; fails with "oom: out of memory"
//   sizes:  a lambda export: "<bytes> <lines>" of the input
//   prefix: borrows the first 3 bytes of the input (zero-copy)
#include <algorithm>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>

#include "keel.hpp"

namespace {

std::string Oom(std::string_view) { return std::string(size_t{1536} << 20, 'x'); }

std::string_view Prefix(std::string_view in) { return in.substr(0, 3); }

}  // namespace

KEEL_CXX_EXPORT(oom, Oom)
KEEL_CXX_EXPORT(sizes, [](std::span<const uint8_t> in) {
  return std::to_string(in.size()) + " " + std::to_string(std::count(in.begin(), in.end(), '\n'));
})
KEEL_CXX_EXPORT(prefix, Prefix)

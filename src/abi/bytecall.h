// keel's byte calling convention (see DESIGN.md): input through the guest's
// cabi_realloc, output as a (ptr, len) pair, then cabi_post_<export>.
#ifndef KEEL_ABI_BYTECALL_H_
#define KEEL_ABI_BYTECALL_H_

#include <cstdint>
#include <functional>
#include <span>
#include <string_view>
#include <vector>

#include "engine/engine.h"

namespace keel::abi {

inline constexpr std::string_view kReallocExport = "cabi_realloc";
inline constexpr std::string_view kPostPrefix = "cabi_post_";

struct ByteLimits {
  size_t max_input_bytes = 16 << 20;
  size_t max_output_bytes = 16 << 20;
};

// Checks that `info` can serve byte calls of `export_name`: the export is
// (i32, i32) -> (i32), cabi_realloc is (i32, i32, i32, i32) -> (i32), and a
// cabi_post_<export_name>, if present, is (i32) -> (). kNotFound or
// kInvalidArgument naming what is missing or mistyped.
[[nodiscard]] Result<void> CheckByteExport(const engine::ModuleInfo& info,
                                           std::string_view export_name);

// Calls `export_name` with `input` and returns the output bytes, running
// both phases as the call `call_tag`. `on_phase_two` runs just before the
// guest's cabi_post_ function (if any) is entered.
// Errors: kResourceExhausted when input or output is over its limit;
// kTrap for guest traps in either phase; kInvalidArgument for guest ABI
// violations (buffer or output out of bounds). Whenever the guest's state
// can no longer be trusted the instance is poisoned.
[[nodiscard]] Result<std::vector<uint8_t>> CallBytes(engine::Instance& instance,
                                                     std::string_view export_name,
                                                     std::span<const uint8_t> input,
                                                     const ByteLimits& limits, uint64_t call_tag,
                                                     const std::function<void()>& on_phase_two = {});

}  // namespace keel::abi

#endif  // KEEL_ABI_BYTECALL_H_

// keel.hpp — guest SDK for C++20 programs compiled to wasm32-wasi and run
// by keel. A layer over keel.h (same byte convention, same errors).
//
//   clang++ --target=wasm32-wasi -std=c++20 -O2 -s -fno-exceptions \
//     -mexec-model=reactor -Iguest my.cc -o my.wasm
//
// A guest:
//
//   #include <algorithm>
//   #include "keel.hpp"
//
//   std::string Upper(std::string_view in) {
//     std::string out(in);
//     for (char& c : out) c = (c >= 'a' && c <= 'z') ? c - 32 : c;
//     return out;
//   }
//   KEEL_CXX_EXPORT(upper, Upper)   // exports `upper` and `cabi_post_upper`
//
// An exported function takes the input as std::string_view or
// std::span<const uint8_t> and returns std::string or std::vector<uint8_t>
// (owned: freed in post-return), or std::string_view or
// std::span<const uint8_t> (borrowed: static data or part of the input,
// which stays valid until post-return). The header also emits
// `cabi_realloc`: do not use KEEL_CABI_REALLOC() with it.
//
// Errors: keel::Fail(message) writes `<export>: <message>` and a newline to
// stderr and traps; the host resolves the call as a Trap with the message
// attached. Build with -fno-exceptions: an allocation failure fails the call
// with "out of memory" the same way.
#ifndef KEEL_GUEST_KEEL_HPP_
#define KEEL_GUEST_KEEL_HPP_

#include <cstddef>
#include <cstdint>
#include <new>
#include <span>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

#include "keel.h"

// The per-module call state of keel.h, as an inline variable so that any
// number of translation units may include this header.
inline keel_call_state keel_guest_state{};

namespace keel {

using Bytes = std::span<const uint8_t>;

namespace internal {

// The export being called (nullptr outside a call), for error messages.
inline const char* current_export = nullptr;

// The owned output of the call in flight, released in post-return.
inline std::string output_text;
inline std::vector<uint8_t> output_bytes;

inline void Release() {
  std::string().swap(output_text);
  std::vector<uint8_t>().swap(output_bytes);
}

inline void WriteStderr(std::string_view s) { keel__write_all(2, s.data(), s.size()); }

}  // namespace internal

// Fails the call: writes `<export>: <message>\n` to stderr, then traps.
[[noreturn]] inline void Fail(std::string_view message) {
  if (internal::current_export != nullptr) {
    internal::WriteStderr(internal::current_export);
    internal::WriteStderr(": ");
  }
  internal::WriteStderr(message);
  internal::WriteStderr("\n");
  __builtin_trap();
}

// The input bytes as text (no encoding check).
inline std::string_view AsText(Bytes bytes) {
  return {reinterpret_cast<const char*>(bytes.data()), bytes.size()};
}

namespace internal {

// With exceptions off, a failed allocation would abort without a word.
inline const bool new_handler_installed = [] {
  std::set_new_handler([] { Fail("out of memory"); });
  return true;
}();

template <typename F>
auto Invoke(F&& fn, Bytes input) {
  if constexpr (std::is_invocable_v<F, std::string_view>) {
    return fn(AsText(input));
  } else {
    static_assert(std::is_invocable_v<F, Bytes>,
                  "a keel export takes std::string_view or std::span<const uint8_t>");
    return fn(input);
  }
}

template <typename>
inline constexpr bool kUnsupportedOutput = false;

// Runs `fn` and publishes its result as the call's output.
template <typename F>
int Call(const char* name, F&& fn, const uint8_t* in, size_t len, keel_output* out) {
  (void)new_handler_installed;  // odr-use: makes the initializer run at startup
  current_export = name;
  auto result = Invoke(std::forward<F>(fn), Bytes(in, len));
  using R = decltype(result);
  if constexpr (std::is_same_v<R, std::string>) {
    output_text = std::move(result);
    keel_output_set(out, output_text.data(), output_text.size());
  } else if constexpr (std::is_same_v<R, std::vector<uint8_t>>) {
    output_bytes = std::move(result);
    keel_output_set(out, output_bytes.data(), output_bytes.size());
  } else if constexpr (std::is_same_v<R, std::string_view> || std::is_same_v<R, Bytes>) {
    keel_output_set(out, result.data(), result.size());
  } else {
    static_assert(kUnsupportedOutput<R>,
                  "a keel export returns std::string, std::vector<uint8_t>, std::string_view "
                  "or std::span<const uint8_t>");
  }
  current_export = nullptr;
  return 0;
}

}  // namespace internal
}  // namespace keel

// cabi_realloc, emitted once however many translation units include this.
KEEL_EXPORT(cabi_realloc)
__attribute__((used)) inline int32_t keel_cxx_cabi_realloc(int32_t old, int32_t old_size,
                                                           int32_t align, int32_t new_size) {
  return static_cast<int32_t>(reinterpret_cast<uintptr_t>(keel__cabi_realloc(
      reinterpret_cast<void*>(static_cast<uintptr_t>(static_cast<uint32_t>(old))),
      static_cast<uint32_t>(old_size), static_cast<uint32_t>(align),
      static_cast<uint32_t>(new_size))));
}

// Exports byte call `name` (an identifier) from a function or lambda of
// one of the shapes described at the top (variadic, so that a lambda's
// commas need no parentheses). Emits `name` and `cabi_post_name`.
#define KEEL_CXX_EXPORT(name, ...)                                                  \
  static int keel_cxx_impl_##name(const uint8_t* in, size_t len, keel_output* out) { \
    return ::keel::internal::Call(#name, __VA_ARGS__, in, len, out);               \
  }                                                                                \
  KEEL_BYTES_FN_WITH_POST(name, keel_cxx_impl_##name, ::keel::internal::Release)

#endif  // KEEL_GUEST_KEEL_HPP_

#include "keel/value.h"

#include <cctype>
#include <charconv>
#include <cinttypes>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <limits>
#include <type_traits>

namespace keel {

std::string_view ToString(ValType type) {
  switch (type) {
    case ValType::kI32: return "i32";
    case ValType::kI64: return "i64";
    case ValType::kF32: return "f32";
    case ValType::kF64: return "f64";
  }
  return "?";
}

std::optional<ValType> ParseValType(std::string_view text) {
  if (text == "i32") return ValType::kI32;
  if (text == "i64") return ValType::kI64;
  if (text == "f32") return ValType::kF32;
  if (text == "f64") return ValType::kF64;
  return std::nullopt;
}

namespace {

// IEEE 754 layout of F: its bits as an unsigned integer, the mantissa mask
// and the quiet bit (the mantissa's top bit).
template <typename F>
struct FloatBits {
  using U = std::conditional_t<sizeof(F) == 4, uint32_t, uint64_t>;
  static constexpr int kMantissaBits = sizeof(F) == 4 ? 23 : 52;
  static constexpr U kMantissa = (U{1} << kMantissaBits) - 1;
  static constexpr U kQuiet = U{1} << (kMantissaBits - 1);
  static constexpr U kSign = U{1} << (sizeof(F) * 8 - 1);
  static constexpr U kExponent = ~(kMantissa | kSign);
};

template <typename F>
std::string FloatToString(F v) {
  using B = FloatBits<F>;
  const auto bits = std::bit_cast<typename B::U>(v);
  if (std::isnan(v)) {
    std::string text = (bits & B::kSign) ? "-nan" : "nan";
    const uint64_t mantissa = bits & B::kMantissa;
    if (mantissa == B::kQuiet) return text;  // the canonical NaN
    char buf[24];
    std::snprintf(buf, sizeof buf, ":0x%" PRIx64, mantissa);
    return text + buf;
  }
  if (std::isinf(v)) return v < 0 ? "-inf" : "inf";
  char buf[64];
  // Shortest representation that reads back to the same value.
  auto [end, ec] = std::to_chars(buf, buf + sizeof buf, v);
  return std::string(buf, end);
}

std::optional<uint64_t> ParseHexOrDecimal(std::string_view text) {
  int base = 10;
  if (text.size() > 2 && text[0] == '0' && (text[1] == 'x' || text[1] == 'X')) {
    base = 16;
    text.remove_prefix(2);
  }
  if (text.empty()) return std::nullopt;
  uint64_t value = 0;
  auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value, base);
  if (ec != std::errc() || end != text.data() + text.size()) return std::nullopt;
  return value;
}

// "nan", "nan:0xM" (WebAssembly text: M is the whole mantissa, so signaling
// NaNs can be written) and "nan(N)" (C's strtod: a quiet NaN with payload N
// below the quiet bit), without their sign.
template <typename F>
std::optional<typename FloatBits<F>::U> ParseNanBits(std::string_view text) {
  using B = FloatBits<F>;
  if (!text.starts_with("nan")) return std::nullopt;
  text.remove_prefix(3);
  if (text.empty()) return B::kExponent | B::kQuiet;
  if (text.starts_with(":0x") || text.starts_with(":0X")) {
    auto mantissa = ParseHexOrDecimal(text.substr(1));
    if (!mantissa || *mantissa == 0 || *mantissa > B::kMantissa) return std::nullopt;
    return B::kExponent | static_cast<typename B::U>(*mantissa);
  }
  if (text.front() == '(' && text.back() == ')') {
    std::string_view inner = text.substr(1, text.size() - 2);
    auto payload = inner.empty() ? std::optional<uint64_t>(0) : ParseHexOrDecimal(inner);
    if (!payload || *payload >= B::kQuiet) return std::nullopt;
    return B::kExponent | B::kQuiet | static_cast<typename B::U>(*payload);
  }
  return std::nullopt;
}

template <typename F>
std::optional<F> ParseFloat(std::string_view text) {
  using B = FloatBits<F>;
  bool negative = false;
  std::string_view body = text;
  if (!body.empty() && (body[0] == '-' || body[0] == '+')) {
    negative = body[0] == '-';
    body.remove_prefix(1);
  }
  if (auto nan = ParseNanBits<F>(body)) {
    return std::bit_cast<F>(static_cast<typename B::U>(*nan | (negative ? B::kSign : 0)));
  }
  if (body == "inf" || body == "infinity") {
    return negative ? -std::numeric_limits<F>::infinity() : std::numeric_limits<F>::infinity();
  }
  // Decimal or hex float text only: strtod would also skip leading space and
  // read its own nan and inf spellings.
  if (body.empty() || !(std::isdigit(static_cast<unsigned char>(body[0])) || body[0] == '.')) {
    return std::nullopt;
  }
  std::string s(text);
  char* end = nullptr;
  F v;
  if constexpr (sizeof(F) == 4) {
    v = std::strtof(s.c_str(), &end);
  } else {
    v = std::strtod(s.c_str(), &end);
  }
  if (end != s.c_str() + s.size()) return std::nullopt;
  return v;
}

template <typename T>
std::optional<T> ParseInt(std::string_view text) {
  bool negative = false;
  std::string_view digits = text;
  if (!digits.empty() && (digits[0] == '-' || digits[0] == '+')) {
    negative = digits[0] == '-';
    digits.remove_prefix(1);
  }
  int base = 10;
  if (digits.size() > 2 && digits[0] == '0' && (digits[1] == 'x' || digits[1] == 'X')) {
    base = 16;
    digits.remove_prefix(2);
  }
  if (digits.empty()) return std::nullopt;
  using U = std::make_unsigned_t<T>;
  U magnitude = 0;
  auto [end, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), magnitude, base);
  if (ec != std::errc() || end != digits.data() + digits.size()) return std::nullopt;
  if (negative) {
    if (magnitude > static_cast<U>(std::numeric_limits<T>::max()) + 1) return std::nullopt;
    return static_cast<T>(U(0) - magnitude);
  }
  // Unsigned spelling of the full bit pattern is accepted (e.g. 4294967295).
  return static_cast<T>(magnitude);
}

}  // namespace

std::string Value::ToString() const {
  switch (type_) {
    case ValType::kI32: return std::to_string(i32());
    case ValType::kI64: return std::to_string(i64());
    case ValType::kF32: return FloatToString(f32());
    case ValType::kF64: return FloatToString(f64());
  }
  return "?";
}

std::optional<Value> ParseValue(ValType type, std::string_view text) {
  switch (type) {
    case ValType::kI32:
      if (auto v = ParseInt<int32_t>(text)) return Value::I32(*v);
      return std::nullopt;
    case ValType::kI64:
      if (auto v = ParseInt<int64_t>(text)) return Value::I64(*v);
      return std::nullopt;
    case ValType::kF32:
      if (auto v = ParseFloat<float>(text)) return Value::F32(*v);
      return std::nullopt;
    case ValType::kF64:
      if (auto v = ParseFloat<double>(text)) return Value::F64(*v);
      return std::nullopt;
  }
  return std::nullopt;
}

std::string FuncType::ToString() const {
  auto list = [](const std::vector<ValType>& types) {
    std::string out = "(";
    for (size_t i = 0; i < types.size(); ++i) {
      if (i) out += ", ";
      out += keel::ToString(types[i]);
    }
    return out + ")";
  };
  return list(params) + " -> " + list(results);
}

}  // namespace keel

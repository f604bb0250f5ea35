#include "keel/value.h"

#include <charconv>
#include <cmath>
#include <cstdlib>
#include <limits>

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

template <typename F>
std::string FloatToString(F v) {
  if (std::isnan(v)) return std::signbit(v) ? "-nan" : "nan";
  if (std::isinf(v)) return v < 0 ? "-inf" : "inf";
  char buf[64];
  // Shortest representation that reads back to the same value.
  auto [end, ec] = std::to_chars(buf, buf + sizeof buf, v);
  return std::string(buf, end);
}

template <typename F>
std::optional<F> ParseFloat(std::string_view text) {
  std::string s(text);
  if (s == "nan" || s == "+nan") return std::numeric_limits<F>::quiet_NaN();
  if (s == "-nan") return -std::numeric_limits<F>::quiet_NaN();
  if (s == "inf" || s == "+inf") return std::numeric_limits<F>::infinity();
  if (s == "-inf") return -std::numeric_limits<F>::infinity();
  if (s.empty()) return std::nullopt;
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

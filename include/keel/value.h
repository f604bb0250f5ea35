// WebAssembly numeric values and function types as keel sees them.
#ifndef KEEL_VALUE_H_
#define KEEL_VALUE_H_

#include <bit>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace keel {

enum class ValType : uint8_t { kI32, kI64, kF32, kF64 };

std::string_view ToString(ValType type);
// Parses "i32", "i64", "f32", "f64"; nullopt otherwise.
std::optional<ValType> ParseValType(std::string_view text);

// A typed WebAssembly value. Floats are stored as bits so that -0.0 and NaN
// payloads are kept exactly as far as keel's own code goes. Copyable.
class Value {
 public:
  Value() : type_(ValType::kI32), bits_(0) {}
  static Value I32(int32_t v) { return Value(ValType::kI32, static_cast<uint32_t>(v)); }
  static Value I64(int64_t v) { return Value(ValType::kI64, static_cast<uint64_t>(v)); }
  static Value F32(float v) { return Value(ValType::kF32, std::bit_cast<uint32_t>(v)); }
  static Value F64(double v) { return Value(ValType::kF64, std::bit_cast<uint64_t>(v)); }
  static Value FromBits(ValType type, uint64_t bits) { return Value(type, bits); }

  ValType type() const { return type_; }
  int32_t i32() const { return static_cast<int32_t>(static_cast<uint32_t>(bits_)); }
  int64_t i64() const { return static_cast<int64_t>(bits_); }
  float f32() const { return std::bit_cast<float>(static_cast<uint32_t>(bits_)); }
  double f64() const { return std::bit_cast<double>(bits_); }
  uint64_t bits() const { return bits_; }

  // Bitwise equality, so that NaN == NaN and -0.0 != 0.0.
  friend bool operator==(const Value& a, const Value& b) {
    return a.type_ == b.type_ && a.bits_ == b.bits_;
  }

  // Decimal for integers; shortest round-trip form for floats ("inf",
  // "-inf", "-0"); NaNs as in the WebAssembly text format: "nan" and "-nan"
  // for the canonical quiet NaN, else "nan:0x<mantissa>" ("-nan:0x7fffff").
  // ParseValue(type, v.ToString()) == v for every value, bit for bit.
  std::string ToString() const;

 private:
  Value(ValType t, uint64_t bits) : type_(t), bits_(bits) {}
  ValType type_;
  uint64_t bits_;
};

// Parses text as a value of `type`: integers in decimal or 0x hex (i32
// accepts -2^31..2^32-1); floats in decimal or hex float notation (rounded
// once, to the type), "inf" / "infinity", and NaNs, each with an optional
// sign: "nan" (canonical), "nan:0xM" (mantissa M exactly, so signaling NaNs
// too), "nan(N)" (as C's strtod: quiet, payload N below the quiet bit).
// nullopt when the text is not a value of that type.
std::optional<Value> ParseValue(ValType type, std::string_view text);

struct FuncType {
  std::vector<ValType> params;
  std::vector<ValType> results;
  friend bool operator==(const FuncType&, const FuncType&) = default;
  // "(i32, i64) -> (f64)".
  std::string ToString() const;
};

}  // namespace keel

#endif  // KEEL_VALUE_H_

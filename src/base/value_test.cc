#include "keel/value.h"

#include <cmath>
#include <initializer_list>
#include <limits>
#include <optional>

#include <gtest/gtest.h>

#include "keel/status.h"

namespace keel {
namespace {

TEST(ValueTest, IntegersRoundTripThroughText) {
  for (int64_t v : {std::numeric_limits<int64_t>::min(), int64_t{-1}, int64_t{0},
                    std::numeric_limits<int64_t>::max()}) {
    Value value = Value::I64(v);
    EXPECT_EQ(ParseValue(ValType::kI64, value.ToString()), value);
  }
  EXPECT_EQ(ParseValue(ValType::kI32, "4294967295")->i32(), -1);
  EXPECT_EQ(ParseValue(ValType::kI32, "0x10")->i32(), 16);
  EXPECT_FALSE(ParseValue(ValType::kI32, "4294967296"));
  EXPECT_FALSE(ParseValue(ValType::kI32, "-2147483649"));
  EXPECT_FALSE(ParseValue(ValType::kI32, "12abc"));
  EXPECT_FALSE(ParseValue(ValType::kI64, ""));
}

TEST(ValueTest, FloatsRoundTripExactly) {
  for (double v : {0.1, -0.0, 1e308, 5e-324, std::numeric_limits<double>::infinity()}) {
    Value value = Value::F64(v);
    EXPECT_EQ(ParseValue(ValType::kF64, value.ToString()), value) << value.ToString();
  }
  Value f = Value::F32(0.1f);
  EXPECT_EQ(ParseValue(ValType::kF32, f.ToString()), f);
  EXPECT_EQ(Value::F64(-0.0).ToString(), "-0");
  EXPECT_TRUE(std::isnan(ParseValue(ValType::kF64, "nan")->f64()));
  EXPECT_FALSE(ParseValue(ValType::kF64, "1.5x"));
}

uint32_t F32Bits(const std::optional<Value>& v) { return static_cast<uint32_t>(v->bits()); }
uint64_t F64Bits(const std::optional<Value>& v) { return v->bits(); }

TEST(ValueTest, NanTextKeepsSignAndPayload) {
  EXPECT_EQ(Value::FromBits(ValType::kF32, 0x7fc00000).ToString(), "nan");
  EXPECT_EQ(Value::FromBits(ValType::kF32, 0xffc00000).ToString(), "-nan");
  EXPECT_EQ(Value::FromBits(ValType::kF32, 0xffffffff).ToString(), "-nan:0x7fffff");
  EXPECT_EQ(Value::FromBits(ValType::kF32, 0x7f800001).ToString(), "nan:0x1");  // signaling
  EXPECT_EQ(Value::FromBits(ValType::kF64, 0xfff8000000000000).ToString(), "-nan");
  EXPECT_EQ(Value::FromBits(ValType::kF64, 0xffffffffffffffff).ToString(), "-nan:0xfffffffffffff");
  EXPECT_EQ(Value::FromBits(ValType::kF64, 0x7ff0000000000001).ToString(), "nan:0x1");

  // C's spelling, as in the issue: a quiet NaN with the payload below the quiet bit.
  EXPECT_EQ(F32Bits(ParseValue(ValType::kF32, "-nan(0x3fffff)")), 0xffffffffu);
  EXPECT_EQ(F64Bits(ParseValue(ValType::kF64, "-nan(0x7ffffffffffff)")), 0xffffffffffffffffu);
  EXPECT_EQ(F32Bits(ParseValue(ValType::kF32, "nan(1)")), 0x7fc00001u);
  EXPECT_EQ(F32Bits(ParseValue(ValType::kF32, "nan()")), 0x7fc00000u);
  EXPECT_FALSE(ParseValue(ValType::kF32, "nan(0x400000)"));  // that is the quiet bit
  // WebAssembly's spelling: the whole mantissa.
  EXPECT_EQ(F32Bits(ParseValue(ValType::kF32, "nan:0x1")), 0x7f800001u);
  EXPECT_EQ(F32Bits(ParseValue(ValType::kF32, "-nan:0x7fffff")), 0xffffffffu);
  EXPECT_EQ(F32Bits(ParseValue(ValType::kF32, "+nan")), 0x7fc00000u);
  EXPECT_EQ(F64Bits(ParseValue(ValType::kF64, "-nan")), 0xfff8000000000000u);
  for (const char* bad : {"nan:0x0", "nan:0x800000", "nan:1", "nan:0x", "nan(", "nan(x)", "nanx",
                          "-", " 1", "1 ", "infinit", "NaN"}) {
    EXPECT_FALSE(ParseValue(ValType::kF32, bad)) << bad;
  }
  EXPECT_FALSE(ParseValue(ValType::kF64, "nan:0x10000000000000"));
}

TEST(ValueTest, EveryFloatRoundTripsBitForBit) {
  for (uint32_t bits : {0x7fc00000u, 0xffc00000u, 0x7f800001u, 0xff800001u, 0x7fbfffffu,
                        0x7fffffffu, 0xffffffffu, 0x7fc00001u, 0x80000000u, 0x00000001u,
                        0x7f800000u, 0xff800000u, 0x3dcccccdu}) {
    Value v = Value::FromBits(ValType::kF32, bits);
    EXPECT_EQ(ParseValue(ValType::kF32, v.ToString()), v) << v.ToString();
  }
  for (uint64_t bits : std::initializer_list<uint64_t>{0x7ff8000000000000u, 0xfff8000000000000u, 0x7ff0000000000001u,
                        0xfff7ffffffffffffu, 0xffffffffffffffffu, 0x7ff8000000000001u,
                        0x8000000000000000u, 0x0000000000000001u, 0x3fb999999999999au}) {
    Value v = Value::FromBits(ValType::kF64, bits);
    EXPECT_EQ(ParseValue(ValType::kF64, v.ToString()), v) << v.ToString();
  }
  // Every f32 NaN payload: 2^23 - 1 mantissas, both signs, sampled densely.
  for (uint32_t mantissa = 1; mantissa <= 0x7fffff; mantissa += 997) {
    for (uint32_t sign : {0u, 0x80000000u}) {
      Value v = Value::FromBits(ValType::kF32, sign | 0x7f800000u | mantissa);
      ASSERT_EQ(ParseValue(ValType::kF32, v.ToString()), v) << v.ToString();
    }
  }
}

TEST(ValueTest, FloatTextForms) {
  EXPECT_EQ(ParseValue(ValType::kF64, "0x1.8p1")->f64(), 3.0);
  EXPECT_EQ(ParseValue(ValType::kF64, "-infinity")->f64(), -std::numeric_limits<double>::infinity());
  EXPECT_EQ(ParseValue(ValType::kF32, ".5")->f32(), 0.5f);
  EXPECT_EQ(ParseValue(ValType::kF32, "+1e3")->f32(), 1000.0f);
  // Rounded once, from the text, to f32 (not through f64).
  EXPECT_EQ(F32Bits(ParseValue(ValType::kF32, "1.00000005960464477550")), 0x3f800001u);
}

TEST(ValueTest, EqualityIsBitwise) {
  EXPECT_NE(Value::F64(0.0), Value::F64(-0.0));
  EXPECT_EQ(Value::F64(std::nan("")), Value::F64(std::nan("")));
  EXPECT_NE(Value::I32(1), Value::I64(1));
}

TEST(ErrorTest, ToStringNamesCodeAndTrapKind) {
  Error e = Error::Trap(TrapKind::kUnreachable, "unreachable executed");
  EXPECT_EQ(e.ToString(), "trap (unreachable): unreachable executed");
  EXPECT_EQ(Error(ErrorCode::kNotFound, "no export 'x'").ToString(), "not_found: no export 'x'");
}

}  // namespace
}  // namespace keel

#include "keel/value.h"

#include <cmath>
#include <limits>

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

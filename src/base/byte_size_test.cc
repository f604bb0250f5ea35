#include "base/byte_size.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

namespace keel {
namespace {

using ::testing::HasSubstr;

TEST(ByteSizeTest, ParsesBytesAndBinaryUnits) {
  EXPECT_EQ(ParseByteSize("1048576").value(), 1048576u);
  EXPECT_EQ(ParseByteSize("0").value(), 0u);
  EXPECT_EQ(ParseByteSize("12B").value(), 12u);
  EXPECT_EQ(ParseByteSize("64KiB").value(), 64u << 10);
  EXPECT_EQ(ParseByteSize("512MiB").value(), 512u << 20);
  EXPECT_EQ(ParseByteSize("512M").value(), 512u << 20);
  EXPECT_EQ(ParseByteSize("4GiB").value(), uint64_t{4} << 30);
  EXPECT_EQ(ParseByteSize("2TiB").value(), uint64_t{2} << 40);
}

TEST(ByteSizeTest, RefusesWhatIsNotASizeNamingTheText) {
  for (const char* bad : {"", "GiB", "-1GiB", "1.5GiB", "4gb", "4 GiB", "4GiBs", "x"}) {
    auto r = ParseByteSize(bad);
    ASSERT_FALSE(r) << bad;
    EXPECT_EQ(r.error().code, ErrorCode::kInvalidArgument);
    EXPECT_THAT(r.error().message, HasSubstr("'" + std::string(bad) + "'"));
  }
  auto huge = ParseByteSize("99999999999TiB");
  ASSERT_FALSE(huge);
  EXPECT_THAT(huge.error().message, HasSubstr("too large"));
  auto overflow = ParseByteSize("999999999999999999999");
  ASSERT_FALSE(overflow);
  EXPECT_THAT(overflow.error().message, HasSubstr("too large"));
}

}  // namespace
}  // namespace keel

#include "base/names.h"

#include <string>

#include <gtest/gtest.h>

namespace keel {
namespace {

using namespace std::string_literals;

TEST(NamesTest, PlainNamesPrintAsThemselves) {
  EXPECT_EQ(QuoteName("add"), "add");
  EXPECT_EQ(QuoteName("wasi:cli/run@0.2.0#run"), "wasi:cli/run@0.2.0#run");
  EXPECT_EQ(MessageName("add"), "'add'");
}

TEST(NamesTest, OtherNamesPrintAsStringLiterals) {
  EXPECT_EQ(QuoteName(""), "\"\"");
  EXPECT_EQ(QuoteName("a\0b"s), "\"a\\00b\"");
  EXPECT_EQ(QuoteName("two words"), "\"two words\"");
  EXPECT_EQ(QuoteName("say \"hi\"\\"), "\"say \\\"hi\\\"\\\\\"");
  EXPECT_EQ(QuoteName("tab\there\n"), "\"tab\\there\\n\"");
  EXPECT_EQ(QuoteName("caf\xc3\xa9"), "\"caf\\u{e9}\"");
  EXPECT_EQ(QuoteName("\x01keel:e:0"), "\"\\01keel:e:0\"");
  EXPECT_EQ(QuoteName("\"quoted"), "\"\\\"quoted\"");
  EXPECT_EQ(MessageName("a\0b"s), "\"a\\00b\"");
}

TEST(NamesTest, EveryPrintedFormReadsBack) {
  for (const std::string& name :
       {""s, "a"s, "a\0b"s, "\0"s, "two words"s, "\"x\""s, "back\\slash"s, "caf\xc3\xa9"s,
        "\xf0\x9f\x98\x80"s, "\x7f\x01\x1f"s, "'"s, "\"\""s}) {
    auto back = ParseName(QuoteName(name));
    ASSERT_TRUE(back) << QuoteName(name);
    EXPECT_EQ(*back, name) << QuoteName(name);
  }
}

TEST(NamesTest, ParsesWebAssemblyTextEscapes) {
  EXPECT_EQ(ParseName("\"a\\00b\""), "a\0b"s);
  EXPECT_EQ(ParseName("\"\\u{1F600}\""), "\xf0\x9f\x98\x80");
  EXPECT_EQ(ParseName("\"it\\'s\""), "it's");
  EXPECT_EQ(ParseName("\"caf\xc3\xa9\""), "caf\xc3\xa9");  // raw UTF-8 inside quotes
  EXPECT_EQ(ParseName("plain"), "plain");
  EXPECT_EQ(ParseName("not\"quoted"), "not\"quoted");  // only a leading quote starts a literal
}

TEST(NamesTest, RefusesMalformedLiterals) {
  for (const char* bad : {"\"", "\"abc", "\"a\"b\"", "\"\\\"", "\"\\x\"", "\"\\0\"",
                          "\"\\u{}\"", "\"\\u{d800}\"", "\"\\u{110000}\"", "\"\\u{41\"",
                          "\"\\ff\""}) {
    EXPECT_FALSE(ParseName(bad)) << bad;
  }
}

}  // namespace
}  // namespace keel

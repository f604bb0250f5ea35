// Units of the service without sockets: JSON arguments and results, HTTP
// helpers, Prometheus text.
#include <cmath>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "server/call_args.h"
#include "server/http.h"
#include "server/json_text.h"
#include "server/metrics_text.h"
#include "server/request_checks.h"

namespace keel::server {
namespace {

using ::testing::HasSubstr;

const FuncType kMix{{ValType::kI32, ValType::kI64, ValType::kF32, ValType::kF64}, {}};

TEST(CallArgsTest, ParsesEveryTypeExactly) {
  auto v = ParseCallArgs(R"({"args": [-2147483648, "18446744073709551615", 0.1, 0.1]})", kMix);
  ASSERT_TRUE(v) << v.error().message;
  EXPECT_EQ((*v)[0], Value::I32(INT32_MIN));
  EXPECT_EQ((*v)[1], Value::I64(-1));
  EXPECT_EQ((*v)[2], Value::F32(0.1f));
  EXPECT_EQ((*v)[3], Value::F64(0.1));
  v = ParseCallArgs(R"({"other": {"args": 1}, "args": [4294967295, 9223372036854775807, "inf", "-nan"]})", kMix);
  ASSERT_TRUE(v) << v.error().message;
  EXPECT_EQ((*v)[0], Value::I32(-1));
  EXPECT_EQ((*v)[1], Value::I64(INT64_MAX));
  EXPECT_TRUE(std::isinf((*v)[2].f32()));
  EXPECT_TRUE(std::isnan((*v)[3].f64()));
  // Correct rounding from the text: the nearest double, not Boost's.
  v = ParseCallArgs(R"({"args": [0, 0, 0, 2.2250738585072011e-308]})", kMix);
  ASSERT_TRUE(v);
  EXPECT_EQ((*v)[3], Value::F64(2.2250738585072011e-308));
  v = ParseCallArgs(R"({"args": [0, 0, 0, 9007199254740993]})", kMix);
  ASSERT_TRUE(v);
  EXPECT_EQ((*v)[3].f64(), 9007199254740992.0);
}

TEST(CallArgsTest, RejectsWithReasons) {
  const FuncType one{{ValType::kI32}, {}};
  auto why = [&](std::string_view json) {
    auto v = ParseCallArgs(json, one);
    EXPECT_FALSE(v) << json;
    return v ? std::string() : v.error().message;
  };
  EXPECT_THAT(why("{"), HasSubstr("malformed JSON"));
  EXPECT_THAT(why("[1]"), HasSubstr("must be a JSON object"));
  EXPECT_THAT(why(R"({"args": {}})"), HasSubstr("must be an array"));
  EXPECT_THAT(why(R"({"args": [1], "args": [2]})"), HasSubstr("twice"));
  EXPECT_THAT(why(R"({"args": []})"), HasSubstr("expected 1 arguments"));
  EXPECT_THAT(why(R"({"args": [1.0]})"), HasSubstr("not an integer"));
  EXPECT_THAT(why(R"({"args": [false]})"), HasSubstr("expected a number or a string"));
  EXPECT_THAT(why(R"({"args": ["12abc"]})"), HasSubstr("not a value of this type"));
  EXPECT_THAT(why(R"({"args": [-2147483649]})"), HasSubstr("argument 0 (i32)"));
  EXPECT_TRUE(ParseCallArgs("", FuncType{}));
}

TEST(CallArgsTest, StopsAtTheFirstArgumentTooMany) {
  const FuncType two{{ValType::kI32, ValType::kI32}, {}};
  // What follows the third argument is never read: not even its syntax.
  auto v = ParseCallArgs(R"({"args": [1, 2, 3, this is not JSON)", two);
  ASSERT_FALSE(v);
  EXPECT_THAT(v.error().message, HasSubstr("expected 2 arguments (i32, i32) -> (), got more"));
  v = ParseCallArgs(R"({"args": [1, 2], "x": {"k": 1, "k": 2}})", two);
  ASSERT_FALSE(v);
  EXPECT_THAT(v.error().message, HasSubstr("the key \"k\" appears twice"));
  v = ParseCallArgs(R"({"args": [1, ")" + std::string(2000, '1') + "\"]}", two);
  ASSERT_FALSE(v);
  EXPECT_THAT(v.error().message, HasSubstr("argument 1 is longer than"));
  EXPECT_TRUE(ParseCallArgs(R"({"a": {"k": 1}, "b": {"k": 2}, "args": [1, 2]})", two));
}

TEST(JsonTextTest, RefusesDuplicateKeysAndWritesValidUtf8) {
  EXPECT_TRUE(ParseJson(R"({"a": 1, "b": {"a": 2}, "c": [{"a": 3}, {"a": 4}]})"));
  for (const char* text : {R"({"a": 1, "a": 2})", R"({"b": {"a": 1, "a": 2}})", R"([{"x": 1, "x": 1}])",
                           R"({"": 1, "": 2})", R"({"ab": 1, "ab": 2})"}) {
    auto v = ParseJson(text);
    ASSERT_FALSE(v) << text;
    EXPECT_THAT(v.error().message, HasSubstr("appears twice")) << text;
  }
  EXPECT_THAT(ParseJson("{").error().message, HasSubstr("malformed JSON"));
  EXPECT_EQ(ToValidUtf8("ok \xC3\xA9 \xF0\x9F\x98\x80"), "ok \xC3\xA9 \xF0\x9F\x98\x80");
  EXPECT_EQ(ToValidUtf8("a\xFF" "b"), "a\xEF\xBF\xBD" "b");
  EXPECT_EQ(ToValidUtf8("\xC0\xAF"), "\xEF\xBF\xBD\xEF\xBF\xBD");          // overlong
  EXPECT_EQ(ToValidUtf8("\xED\xA0\x80"), "\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD");  // surrogate
  EXPECT_EQ(ToValidUtf8("\xE2\x82"), "\xEF\xBF\xBD\xEF\xBF\xBD");          // truncated
  EXPECT_FALSE(IsValidUtf8("\xF4\x90\x80\x80"));                            // past U+10FFFF
  Response res = JsonResponse(400, std::string("{\"m\":\"\xFF\"}"));
  EXPECT_EQ(res.body(), "{\"m\":\"\xEF\xBF\xBD\"}\n");
}

TEST(RequestChecksTest, LoopbackAuthorities) {
  EXPECT_TRUE(IsLoopbackAuthority("127.0.0.1:8080", 8080));
  EXPECT_TRUE(IsLoopbackAuthority("localhost:8080", 8080));
  EXPECT_TRUE(IsLoopbackAuthority("[::1]:8080", 8080));
  EXPECT_TRUE(IsLoopbackAuthority("localhost", 80));
  EXPECT_FALSE(IsLoopbackAuthority("localhost", 8080));
  EXPECT_FALSE(IsLoopbackAuthority("localhost:", 8080));
  EXPECT_FALSE(IsLoopbackAuthority("127.0.0.1:8080:8080", 8080));
  EXPECT_FALSE(IsLoopbackAuthority("[::1:8080", 8080));
  EXPECT_FALSE(IsLoopbackAuthority("[127.0.0.1]:8080", 8080));
  EXPECT_FALSE(IsLoopbackAuthority("10.0.0.1:8080", 8080));
  EXPECT_FALSE(IsLoopbackAuthority("", 8080));
}

TEST(CallArgsTest, FormatsResults) {
  EXPECT_EQ(FormatResults({}), "[]");
  EXPECT_EQ(FormatResults({Value::I32(-5), Value::I64(INT64_MIN), Value::F32(0.1f), Value::F64(-0.0),
                           Value::F64(NAN), Value::F32(-INFINITY), Value::F64(1e300)}),
            "[-5,\"-9223372036854775808\",0.1,-0,\"nan\",\"-inf\",1e+300]");
}

TEST(CallArgsTest, KeepsNanSignsAndPayloadsBothWays) {
  const FuncType floats{{ValType::kF32, ValType::kF64, ValType::kF32}, {}};
  auto v = ParseCallArgs(R"j({"args": ["-nan(0x3fffff)", "-nan(0x7ffffffffffff)", "nan:0x1"]})j",
                         floats);
  ASSERT_TRUE(v) << v.error().message;
  EXPECT_EQ((*v)[0].bits(), 0xffffffffu);
  EXPECT_EQ((*v)[1].bits(), 0xffffffffffffffffu);
  EXPECT_EQ((*v)[2].bits(), 0x7f800001u);  // signaling
  EXPECT_EQ(FormatResults(*v), "[\"-nan:0x7fffff\",\"-nan:0xfffffffffffff\",\"nan:0x1\"]");
  auto back = ParseCallArgs("{\"args\": " + FormatResults(*v) + "}", floats);
  ASSERT_TRUE(back);
  EXPECT_EQ(*back, *v);
}

TEST(HttpTest, StatusCodes) {
  EXPECT_EQ(StatusForError(Error(ErrorCode::kNotFound, "")), 404);
  EXPECT_EQ(StatusForError(Error(ErrorCode::kOverloaded, "")), 429);
  EXPECT_EQ(StatusForError(Error(ErrorCode::kUnavailable, "")), 503);
  EXPECT_EQ(StatusForError(Error(ErrorCode::kShuttingDown, "")), 503);
  EXPECT_EQ(StatusForError(Error(ErrorCode::kDeadlineExceeded, "")), 504);
  EXPECT_EQ(StatusForError(Error::Trap(TrapKind::kUnreachable, "")), 422);
  EXPECT_EQ(StatusForError(Error(ErrorCode::kInvalidArgument, "")), 400);
  EXPECT_EQ(StatusForCallError(Error(ErrorCode::kInvalidArgument, "guest lied")), 422);
  EXPECT_EQ(StatusForCallError(Error(ErrorCode::kResourceExhausted, "output too big")), 422);
  Response r = ErrorResponse(Error(ErrorCode::kOverloaded, "full"));
  EXPECT_EQ(r.result_int(), 429);
  EXPECT_EQ(r[http::field::retry_after], "1");
  EXPECT_EQ(r.body(), "{\"error\":{\"code\":\"overloaded\",\"message\":\"full\"}}\n");
  Error exit = Error::Trap(TrapKind::kExit, "exit");
  exit.exit_code = 3;
  EXPECT_THAT(ErrorResponse(exit).body(), HasSubstr("\"trap\":\"exit\",\"exit_code\":3"));
}

TEST(HttpTest, BearerMatches) {
  EXPECT_TRUE(BearerMatches("Bearer abc", "abc"));
  EXPECT_TRUE(BearerMatches("bearer abc", "abc"));
  EXPECT_FALSE(BearerMatches("Bearer abd", "abc"));
  EXPECT_FALSE(BearerMatches("Bearer ab", "abc"));
  EXPECT_FALSE(BearerMatches("Bearer abcd", "abc"));
  EXPECT_FALSE(BearerMatches("Basic abc", "abc"));
  EXPECT_FALSE(BearerMatches("", "abc"));
  EXPECT_FALSE(BearerMatches("Bearer ", ""));
}

TEST(HttpTest, ListenAddresses) {
  auto a = ParseListenAddress("127.0.0.1:8080");
  ASSERT_TRUE(a);
  EXPECT_EQ(a->port(), 8080);
  EXPECT_TRUE(a->address().is_loopback());
  EXPECT_TRUE(ParseListenAddress("localhost:0")->address().is_loopback());
  EXPECT_TRUE(ParseListenAddress("[::1]:9")->address().is_loopback());
  EXPECT_FALSE(ParseListenAddress("0.0.0.0:80")->address().is_loopback());
  EXPECT_FALSE(ParseListenAddress("127.0.0.1"));
  EXPECT_FALSE(ParseListenAddress("127.0.0.1:99999"));
  EXPECT_FALSE(ParseListenAddress("example.com:80"));
  EXPECT_FALSE(ParseListenAddress("127.0.0.1:8x"));
}

TEST(HttpTest, QueryAndEscapes) {
  EXPECT_EQ(PercentDecode("a%20b%2Fc"), "a b/c");
  EXPECT_FALSE(PercentDecode("%2"));
  EXPECT_FALSE(PercentDecode("%zz"));
  EXPECT_EQ(QueryParam("a=1&timeout=250ms", "timeout").value(), "250ms");
  EXPECT_EQ(QueryParam("timeoutx=1&timeout=2s", "timeout").value(), "2s");
  EXPECT_EQ(QueryParam("state=timed%5Fout", "state").value(), "timed_out");
  EXPECT_EQ(QueryParam("a=1", "timeout").value(), std::nullopt);
  // A malformed escape anywhere in the query is an error, not "absent".
  EXPECT_FALSE(QueryParam("timeout=%ZZ", "timeout"));
  EXPECT_FALSE(QueryParam("state=%ZZ", "state"));
  EXPECT_FALSE(QueryParam("a=%4&timeout=1s", "timeout"));
}

TEST(HttpTest, Base64) {
  auto s = [](std::string_view b64) {
    auto v = DecodeBase64(b64);
    return v ? std::string(v->begin(), v->end()) : std::string("<error>");
  };
  EXPECT_EQ(s(""), "");
  EXPECT_EQ(s("YQ=="), "a");
  EXPECT_EQ(s("YWI="), "ab");
  EXPECT_EQ(s("YWJj"), "abc");
  EXPECT_EQ(s("/+8="), "\xff\xef");
  EXPECT_EQ(s("YQ="), "<error>");
  EXPECT_EQ(s("Y=Fj"), "<error>");
  EXPECT_EQ(s("YW=j"), "<error>");
  EXPECT_EQ(s("YW J"), "<error>");
}

TEST(HttpTest, FormatTime) {
  EXPECT_EQ(FormatTime(std::chrono::system_clock::time_point(std::chrono::milliseconds(1700000000123))),
            "2023-11-14T22:13:20.123Z");
}

TEST(MetricsTextTest, Exposition) {
  MetricsInput in;
  in.runtime.submitted = 5;
  in.runtime.resolved.traps[static_cast<size_t>(TrapKind::kStackOverflow)] = 2;
  in.runtime.end_to_end.bounds = {0.001, 0.002};
  in.runtime.end_to_end.counts = {1, 2, 3};
  in.runtime.end_to_end.count = 6;
  in.runtime.end_to_end.sum_seconds = 0.5;
  in.pools.push_back({"a\"b", "d1", PoolStats{.target_instances = 2, .healthy_instances = 2, .busy_instances = 1}});
  std::string text = RenderPrometheus(in);
  EXPECT_THAT(text, HasSubstr("keel_calls_submitted_total 5\n"));
  EXPECT_THAT(text, HasSubstr("keel_calls_resolved_total{cause=\"trap\"} 2\n"));
  EXPECT_THAT(text, HasSubstr("keel_calls_trapped_total{kind=\"stack_overflow\"} 2\n"));
  EXPECT_THAT(text, HasSubstr("keel_call_seconds_bucket{le=\"0.001\"} 1\nkeel_call_seconds_bucket{le=\"0.002\"} 3\n"
                              "keel_call_seconds_bucket{le=\"+Inf\"} 6\nkeel_call_seconds_sum 0.5\n"
                              "keel_call_seconds_count 6\n"));
  EXPECT_THAT(text, HasSubstr("keel_pool_instances{module=\"a\\\"b\",digest=\"d1\",state=\"busy\"} 1\n"));
  EXPECT_THAT(text, HasSubstr("keel_pool_instances{module=\"a\\\"b\",digest=\"d1\",state=\"idle\"} 1\n"));
  EXPECT_THAT(text, ::testing::Not(HasSubstr("keel_jobs{")));  // store unavailable: no job gauges
  // Every family is declared once.
  EXPECT_EQ(text.find("# TYPE keel_pool_instances"), text.rfind("# TYPE keel_pool_instances"));
}

}  // namespace
}  // namespace keel::server

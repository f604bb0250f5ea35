// The C++ and Rust guests (guest/examples, guest/rust) and the README's
// examples through the executor with the WASI sandbox, as `keel serve`
// runs them: real outputs, several exports per module, failures that reach
// the caller with the guest's own message, and SDKs that free what they
// allocate.
#include <chrono>
#include <string>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "abi/sandbox.h"
#include "base/file.h"
#include "base/test_engine.h"
#include "keel/runtime.h"
#include "testing/subprocess.h"

namespace keel {
namespace {

using namespace std::chrono_literals;
using ::testing::HasSubstr;
using ::testing::StartsWith;

std::string GuestPath(const std::string& name) { return std::string(KEEL_GUEST_DIR) + "/" + name + ".wasm"; }
std::string ReadmePath(const std::string& name) { return std::string(KEEL_README_DIR) + "/" + name + ".wasm"; }

std::string Text(const std::vector<uint8_t>& bytes) { return std::string(bytes.begin(), bytes.end()); }

class GuestsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto runtime = Runtime::Create({.engine = TestEngine(), .workers = 2});
    ASSERT_TRUE(runtime) << runtime.error().ToString();
    runtime_ = std::move(*runtime);
  }
  void TearDown() override { runtime_->Shutdown(5s); }

  // A one-instance sandboxed pool of the module at `path`.
  std::shared_ptr<Pool> Load(const std::string& path, uint32_t max_pages = 16384) {
    auto bytes = ReadFile(path);
    EXPECT_TRUE(bytes) << path;
    if (!bytes) return nullptr;
    auto module = runtime_->Compile(*bytes, {.name = path, .max_memory_pages = max_pages});
    EXPECT_TRUE(module) << module.error().ToString();
    if (!module) return nullptr;
    auto pool = runtime_->CreatePool(*module, abi::SandboxedPoolOptions({.instances = 1}));
    EXPECT_TRUE(pool) << pool.error().ToString();
    return pool ? *pool : nullptr;
  }

  CallResult Bytes(Pool& pool, std::string_view name, std::string_view input) {
    auto call = pool.SubmitBytes(name, std::vector<uint8_t>(input.begin(), input.end()), {.timeout = 20s});
    if (!call) return tl::unexpected(call.error());
    return call->Wait();
  }

  // The output of a byte call that must succeed.
  std::string Ok(Pool& pool, std::string_view name, std::string_view input) {
    CallResult r = Bytes(pool, name, input);
    EXPECT_TRUE(r) << name << ": " << r.error().ToString();
    return r ? Text(r->bytes) : "";
  }

  // The error message of a byte call that must fail with a trap.
  std::string Trap(Pool& pool, std::string_view name, std::string_view input) {
    CallResult r = Bytes(pool, name, input);
    EXPECT_FALSE(r) << name << " succeeded with " << Text(r->bytes);
    if (r) return "";
    EXPECT_EQ(r.error().code, ErrorCode::kTrap) << r.error().ToString();
    EXPECT_EQ(r.error().trap, TrapKind::kUnreachable) << r.error().ToString();
    return r.error().message;
  }

  std::unique_ptr<Runtime> runtime_;
};

TEST_F(GuestsTest, MarkdownRendersCommonMarkAndExtensions) {
  auto pool = Load(GuestPath("markdown"));
  ASSERT_TRUE(pool);
  EXPECT_EQ(Ok(*pool, "render", "# Title\n\nSome *emphasis* & <b>x</b>\n"),
            "<h1>Title</h1>\n<p>Some <em>emphasis</em> &amp; <b>x</b></p>\n");
  const std::string table = "| a | b |\n|---|---|\n| 1 | ~~2~~ |\n";
  EXPECT_EQ(Ok(*pool, "render_gfm", table),
            "<table><thead><tr><th>a</th><th>b</th></tr></thead><tbody>\n"
            "<tr><td>1</td><td><del>2</del></td></tr>\n</tbody></table>\n");
  EXPECT_THAT(Ok(*pool, "render", table), StartsWith("<p>| a | b |"));  // strict CommonMark
  EXPECT_EQ(Ok(*pool, "outline", "# One\n\ntext\n\n## Two `code` *em*\nSetext\n===\n"),
            R"([{"level":1,"text":"One"},{"level":2,"text":"Two code em"},{"level":1,"text":"Setext"}])");
  EXPECT_EQ(Ok(*pool, "render", ""), "");
}

TEST_F(GuestsTest, MarkdownRefusesInvalidUtf8WithTheOffset) {
  auto pool = Load(GuestPath("markdown"));
  ASSERT_TRUE(pool);
  EXPECT_THAT(Trap(*pool, "render", "ok \xff"),
              HasSubstr("guest stderr: render: input is not UTF-8 (invalid byte at offset 3)"));
  EXPECT_EQ(Ok(*pool, "render", "*after*"), "<p><em>after</em></p>\n");  // on a fresh instance
}

TEST_F(GuestsTest, RegexpFindsWithNamedGroups) {
  auto pool = Load(GuestPath("regexp"));
  ASSERT_TRUE(pool);
  EXPECT_EQ(Ok(*pool, "find", R"({"pattern":"(?P<user>\\w+)@(?P<host>\\w+)(\\.org)?","text":"a@b, cé@d.org"})"),
            R"({"matches":[{"start":0,"end":3,"text":"a@b","groups":{"host":"b","user":"a"}},)"
            R"({"start":5,"end":14,"text":"cé@d.org","groups":{"host":"d","user":"cé"}}]})");
  EXPECT_EQ(Ok(*pool, "find", R"({"pattern":"\\d","text":"1 2 3","limit":2})"),
            R"({"matches":[{"start":0,"end":1,"text":"1","groups":{}},{"start":2,"end":3,"text":"2","groups":{}}]})");
  EXPECT_EQ(Ok(*pool, "find", R"({"pattern":"x","text":"abc"})"), R"({"matches":[]})");
}

TEST_F(GuestsTest, RegexpReplaces) {
  auto pool = Load(GuestPath("regexp"));
  ASSERT_TRUE(pool);
  EXPECT_EQ(Ok(*pool, "replace", R"({"pattern":"(?i)cat","text":"cat Cat dog","replacement":"[$0]"})"),
            R"({"text":"[cat] [Cat] dog","replaced":2})");
  EXPECT_EQ(Ok(*pool, "replace",
               R"j({"pattern":"(?P<y>\\d{4})-(?P<m>\\d{2})","text":"2024-05 2025-06","replacement":"$m/$y","limit":1})j"),
            R"({"text":"05/2024 2025-06","replaced":1})");
}

TEST_F(GuestsTest, RegexpErrorsNameTheProblem) {
  auto pool = Load(GuestPath("regexp"));
  ASSERT_TRUE(pool);
  std::string bad = Trap(*pool, "find", R"({"pattern":"(","text":"x"})");
  EXPECT_THAT(bad, HasSubstr("find: invalid pattern: regex parse error"));
  EXPECT_THAT(bad, HasSubstr("unclosed group"));
  EXPECT_THAT(Trap(*pool, "find", R"({"pattern":"\\w{1000}{1000}","text":"x"})"),
              HasSubstr("find: invalid pattern: Compiled regex exceeds size limit"));
  EXPECT_THAT(Trap(*pool, "replace", R"({"pattern":"a","text":"b"})"),
              HasSubstr("replace: invalid JSON input: missing field `replacement`"));
  EXPECT_THAT(Trap(*pool, "find", "not json"), HasSubstr("find: invalid JSON input: expected"));
}

TEST_F(GuestsTest, GzipRoundTripsAndInteroperatesWithGzip) {
  auto pool = Load(GuestPath("gzip"));
  ASSERT_TRUE(pool);
  std::string text;
  for (int i = 0; text.size() < (1 << 20); ++i) text += "line " + std::to_string(i * 7919 % 1000) + " of the text\n";
  std::string packed = Ok(*pool, "compress", text);
  ASSERT_GE(packed.size(), 2u);
  EXPECT_EQ(packed.substr(0, 2), "\x1f\x8b");
  EXPECT_LT(packed.size(), text.size() / 4);
  EXPECT_TRUE(Ok(*pool, "decompress", packed) == text);
  EXPECT_EQ(Ok(*pool, "decompress", Ok(*pool, "compress", "")), "");

  // The system's gzip reads the guest's output, and the guest reads its.
  testing::ProcessResult unpacked = testing::RunProcess({"/bin/gzip", "-dc"}, packed);
  ASSERT_EQ(unpacked.exit_code, 0) << unpacked.err;
  EXPECT_TRUE(unpacked.out == text);
  testing::ProcessResult system = testing::RunProcess({"/bin/gzip", "-9c"}, text);
  ASSERT_EQ(system.exit_code, 0) << system.err;
  EXPECT_TRUE(Ok(*pool, "decompress", system.out + system.out) == text + text);  // two members
}

TEST_F(GuestsTest, GzipRefusesBadDataAndBombs) {
  auto pool = Load(GuestPath("gzip"));
  ASSERT_TRUE(pool);
  EXPECT_THAT(Trap(*pool, "decompress", "plain text"),
              HasSubstr("guest stderr: decompress: not gzip data (no 1f 8b header)"));
  std::string packed = Ok(*pool, "compress", std::string(100000, 'z'));
  EXPECT_THAT(Trap(*pool, "decompress", packed.substr(0, packed.size() - 9)),
              HasSubstr("decompress: invalid gzip data"));
  std::string corrupt = packed;
  corrupt[corrupt.size() - 8] ^= 1;  // the CRC
  EXPECT_THAT(Trap(*pool, "decompress", corrupt), HasSubstr("decompress: invalid gzip data"));
  // Five members of 16 MiB of zeros: 80 MiB from about 80 KB.
  std::string member = Ok(*pool, "compress", std::string(16 << 20, '\0'));
  std::string bomb;
  for (int i = 0; i < 5; ++i) bomb += member;
  EXPECT_LT(bomb.size(), 1u << 20);
  EXPECT_THAT(Trap(*pool, "decompress", bomb), HasSubstr("decompress: output exceeds 64 MiB"));
}

TEST_F(GuestsTest, CsvBecomesJson) {
  auto pool = Load(GuestPath("csv"));
  ASSERT_TRUE(pool);
  EXPECT_EQ(Ok(*pool, "to_json", "name,note\r\nada,\"says \"\"hi\"\", ok\"\r\n\r\nbob,\"two\nlines\"\n"),
            R"([{"name":"ada","note":"says \"hi\", ok"},{"name":"bob","note":"two\nlines"}])");
  EXPECT_EQ(Ok(*pool, "to_json", "a,b\n1,\n,\t"), R"([{"a":"1","b":""},{"a":"","b":"\t"}])");
  EXPECT_EQ(Ok(*pool, "to_json", ""), "[]");
  EXPECT_EQ(Ok(*pool, "to_json", "only,header\n"), "[]");
  EXPECT_EQ(Ok(*pool, "columns", "x,\"y,z\"\n1,2\n"), R"(["x","y,z"])");
}

TEST_F(GuestsTest, CsvErrorsNameTheLine) {
  auto pool = Load(GuestPath("csv"));
  ASSERT_TRUE(pool);
  EXPECT_THAT(Trap(*pool, "to_json", "a,b\n1,2\n3\n"), HasSubstr("guest stderr: to_json: line 3: 1 fields, the header has 2"));
  EXPECT_THAT(Trap(*pool, "to_json", "a\n\"x\n\ny"), HasSubstr("to_json: line 2: unterminated quoted field"));
  EXPECT_THAT(Trap(*pool, "to_json", "a\n\"x\"y\n"), HasSubstr("to_json: line 2: text after a closing quote"));
  EXPECT_THAT(Trap(*pool, "to_json", "a\nx\"y\n"), HasSubstr("to_json: line 2: quote inside an unquoted field"));
  EXPECT_THAT(Trap(*pool, "columns", "a,b,a\n"), HasSubstr("columns: line 1: duplicate column \"a\""));
  EXPECT_THAT(Trap(*pool, "columns", "a,,c\n"), HasSubstr("columns: line 1: column 2 has no name"));
}

TEST_F(GuestsTest, RustPanicsAndFailuresReachTheCaller) {
  auto pool = Load(GuestPath("hostile_rust"));
  ASSERT_TRUE(pool);
  std::string panic = Trap(*pool, "panic", "boom");
  EXPECT_THAT(panic, HasSubstr("guest stderr: panic: panicked at hostile/src/lib.rs:"));
  EXPECT_THAT(panic, HasSubstr(": deliberate panic: boom"));
  EXPECT_THAT(Trap(*pool, "fail", "x"), HasSubstr("guest stderr: fail: deliberate failure"));
  EXPECT_THAT(Trap(*pool, "text_len", "ab\xc3"),
              HasSubstr("guest stderr: text_len: input is not UTF-8 (invalid byte at offset 2)"));
  EXPECT_THAT(Trap(*pool, "exhaust", ""), HasSubstr("guest stderr: memory allocation of 1610612736 bytes failed"));
  // Each trap replaced the instance; the replacement works.
  EXPECT_EQ(Ok(*pool, "text_len", "héllo"), "5");
  EXPECT_EQ(Ok(*pool, "constant", "ignored"), "a static answer");
  auto sum = pool->Submit("add", {Value::I32(40), Value::I32(2)});
  ASSERT_TRUE(sum);
  ASSERT_TRUE(sum->Wait()) << sum->Wait().error().ToString();
  EXPECT_EQ(sum->Wait()->values[0].i32(), 42);
}

TEST_F(GuestsTest, CxxSdkEdgeCases) {
  auto pool = Load(GuestPath("hostile_cxx"));
  ASSERT_TRUE(pool);
  EXPECT_THAT(Trap(*pool, "oom", ""), HasSubstr("guest stderr: oom: out of memory"));
  EXPECT_EQ(Ok(*pool, "sizes", "a\nb\n"), "4 2");  // a lambda export
  EXPECT_EQ(Ok(*pool, "prefix", "abcdef"), "abc");  // borrowed from the input
  EXPECT_EQ(Ok(*pool, "prefix", "ab"), "ab");
}

// One instance with a 32 MiB cap takes 64 calls of 1 MiB in and 1 MiB out:
// an SDK that kept either buffer after post-return would run out of memory.
TEST_F(GuestsTest, SdksFreeInputAndOutputInPostReturn) {
  std::string input(1 << 20, 'q');
  for (const auto& [path, export_name] : {std::pair{GuestPath("hostile_rust"), "echo"},
                                          std::pair{ReadmePath("readme_upper"), "upper"},
                                          std::pair{ReadmePath("readme_upper"), "reverse"},
                                          std::pair{ReadmePath("my_guest"), "shout"}}) {
    auto pool = Load(path, /*max_pages=*/512);
    ASSERT_TRUE(pool);
    for (int i = 0; i < 64; ++i) {
      input[i] = 'a' + i % 26;
      CallResult r = Bytes(*pool, export_name, input);
      ASSERT_TRUE(r) << path << " " << export_name << " call " << i << ": " << r.error().ToString();
      ASSERT_EQ(r->bytes.size(), input.size());
    }
  }
  EXPECT_EQ(runtime_->Metrics().instances.replaced, 0u);
}

TEST_F(GuestsTest, ReadmeExamplesWork) {
  auto c = Load(ReadmePath("readme_shout"));
  ASSERT_TRUE(c);
  EXPECT_EQ(Ok(*c, "shout", "hello"), "HELLO");

  auto cxx = Load(ReadmePath("readme_upper"));
  ASSERT_TRUE(cxx);
  EXPECT_EQ(Ok(*cxx, "upper", "hello, wörld"), "HELLO, WöRLD");
  EXPECT_EQ(Ok(*cxx, "reverse", std::string("a\0b", 3)), std::string("b\0a", 3));
  EXPECT_EQ(Ok(*cxx, "non_empty", "kept"), "kept");
  EXPECT_THAT(Trap(*cxx, "non_empty", ""), HasSubstr("guest stderr: non_empty: empty input"));

  auto rust = Load(ReadmePath("my_guest"));
  ASSERT_TRUE(rust);
  EXPECT_EQ(Ok(*rust, "shout", "hello"), "HELLO");
  EXPECT_EQ(Ok(*rust, "total",
               R"({"items":[{"name":"tea","price_cents":250,"quantity":2},{"name":"cake","price_cents":399,"quantity":1}]})"),
            R"({"items":2,"total_cents":899})");
  EXPECT_THAT(Trap(*rust, "total", R"({"items":[{"name":"tea","price_cents":250,"quantity":0}]})"),
              HasSubstr("guest stderr: total: item \"tea\" has quantity 0"));
  EXPECT_THAT(Trap(*rust, "total", R"({"items":[{"name":"x","price_cents":18446744073709551615,"quantity":2}]})"),
              HasSubstr("total: the total overflows"));
  EXPECT_THAT(Trap(*rust, "total", "42"), HasSubstr("total: invalid JSON input: invalid type: integer `42`"));
  auto sum = rust->Submit("add", {Value::I32(2), Value::I32(3)});
  ASSERT_TRUE(sum);
  ASSERT_TRUE(sum->Wait()) << sum->Wait().error().ToString();
  EXPECT_EQ(sum->Wait()->values[0].i32(), 5);
}

}  // namespace
}  // namespace keel

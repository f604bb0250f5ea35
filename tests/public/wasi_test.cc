// WASI through the public API (keel/wasi.h): WithWasi's options, captured
// stdio per call, stdin bytes, environment and preopens, with the guest of
// wasi_guest.c compiled by the build.
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <tuple>

#include "keel/wasi.h"
#include "public_fixture.h"

namespace keel::publictest {
namespace {

namespace fs = std::filesystem;

std::vector<uint8_t> Guest(const std::string& name) {
  std::ifstream in(std::string(KEEL_GUEST_DIR) + "/" + name + ".wasm", std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

class WasiTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() /
           ("keel-public-wasi-" + std::to_string(::getpid()) + "-" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::create_directories(dir_);
    std::ofstream(dir_ / "input.txt") << "one two three\nfour five\n";
    auto runtime = Runtime::Create({.workers = 1});
    ASSERT_TRUE(runtime) << runtime.error().ToString();
    runtime_ = std::move(*runtime);
    auto module = runtime_->Compile(Guest("public_wasi"), {.name = "public_wasi"});
    ASSERT_TRUE(module) << module.error().ToString();
    module_ = *module;
  }
  void TearDown() override {
    runtime_.reset();
    fs::remove_all(dir_);
  }

  WasiOptions Options() {
    WasiOptions wasi;
    wasi.preopens = {{.host_path = dir_.string(), .guest_path = "/data"}};
    wasi.stdout_io = WasiStdio::Capture();
    wasi.stderr_io = WasiStdio::Capture();
    return wasi;
  }

  std::shared_ptr<Pool> MakePool(WasiOptions wasi, StatePolicy state = StatePolicy::kKeep) {
    auto options = WithWasi({.instances = 1, .recycle = {.state = state}}, std::move(wasi));
    EXPECT_TRUE(options) << options.error().ToString();
    if (!options) return nullptr;
    auto pool = runtime_->CreatePool(module_, std::move(*options));
    EXPECT_TRUE(pool) << pool.error().ToString();
    return pool ? *pool : nullptr;
  }

  static CallResult Run(Pool& pool, std::string_view name, std::vector<Value> args = {}) {
    auto call = pool.Submit(name, std::move(args), {.timeout = 20s});
    if (!call) return tl::unexpected(call.error());
    return call->Wait();
  }

  fs::path dir_;
  std::unique_ptr<Runtime> runtime_;
  std::shared_ptr<const Module> module_;
};

TEST_F(WasiTest, ReadsAPreopenAndCapturesEachCallsOutput) {
  auto pool = MakePool(Options());
  for (int i = 0; i < 2; ++i) {
    CallResult r = Run(*pool, "report");
    ASSERT_TRUE(r) << r.error().ToString();
    EXPECT_EQ(r->values, std::vector<Value>{Value::I32(5)});
    EXPECT_EQ(r->stdio.out, "lines=2 words=5\n") << "call " << i << ": only this call's output";
    EXPECT_EQ(r->stdio.err, "report done\n");
    EXPECT_FALSE(r->stdio.out_truncated);
  }
}

TEST_F(WasiTest, AStreamNotCapturedLeavesNothing) {
  WasiOptions wasi = Options();
  wasi.stdout_io = WasiStdio::Null();
  auto pool = MakePool(std::move(wasi));
  CallResult r = Run(*pool, "report");
  ASSERT_TRUE(r) << r.error().ToString();
  EXPECT_EQ(r->stdio.out, "");
  EXPECT_EQ(r->stdio.err, "report done\n");
}

TEST_F(WasiTest, ACaptureKeepsItsLimitAndSaysItWasTruncated) {
  WasiOptions wasi = Options();
  wasi.stdout_io = WasiStdio::Capture(4);
  auto pool = MakePool(std::move(wasi));
  CallResult r = Run(*pool, "shout", {Value::I32(10)});
  ASSERT_TRUE(r) << r.error().ToString();
  EXPECT_EQ(r->values, std::vector<Value>{Value::I32(10)}) << "the guest saw every write succeed";
  EXPECT_EQ(r->stdio.out, "xxxx");
  EXPECT_TRUE(r->stdio.out_truncated);
}

TEST_F(WasiTest, EachCallReadsTheStdinBytesFromTheStart) {
  WasiOptions wasi = Options();
  wasi.stdin_io = WasiStdio::Input("hello, stdin");
  auto pool = MakePool(std::move(wasi));
  for (int i = 0; i < 2; ++i) {
    CallResult r = Run(*pool, "echo_stdin");
    ASSERT_TRUE(r) << r.error().ToString();
    EXPECT_EQ(r->stdio.out, "hello, stdin") << "call " << i;
  }
}

TEST_F(WasiTest, PassesTheEnvironmentAndNothingOfTheHosts) {
  WasiOptions wasi = Options();
  wasi.env = {{"GREETING", "hi there"}};
  auto pool = MakePool(std::move(wasi));
  CallResult r = Run(*pool, "greeting");
  ASSERT_TRUE(r) << r.error().ToString();
  EXPECT_EQ(r->stdio.out, "hi there\n");

  auto bare = MakePool(Options());
  CallResult none = Run(*bare, "greeting");
  ASSERT_TRUE(none) << none.error().ToString();
  EXPECT_EQ(none->stdio.out, "(none)\n");
}

TEST_F(WasiTest, AReadOnlyPreopenRefusesChanges) {
  auto pool = MakePool(Options());
  CallResult eperm = Run(*pool, "eperm");
  ASSERT_TRUE(eperm);
  CallResult r = Run(*pool, "write_data");
  ASSERT_TRUE(r) << r.error().ToString();
  EXPECT_EQ(r->values, eperm->values);
  EXPECT_FALSE(fs::exists(dir_ / "out.txt"));

  WasiOptions writable = Options();
  writable.preopens[0].read_only = false;
  auto rw = MakePool(std::move(writable));
  CallResult w = Run(*rw, "write_data");
  ASSERT_TRUE(w) << w.error().ToString();
  EXPECT_EQ(w->values, std::vector<Value>{Value::I32(0)});
  EXPECT_TRUE(fs::exists(dir_ / "out.txt"));
}

TEST_F(WasiTest, WithoutAPreopenThereAreNoFiles) {
  WasiOptions wasi = Options();
  wasi.preopens.clear();
  auto pool = MakePool(std::move(wasi));
  CallResult r = Run(*pool, "report");
  ASSERT_TRUE(r) << r.error().ToString();
  EXPECT_EQ(r->values, std::vector<Value>{Value::I32(-1)});
}

TEST_F(WasiTest, WithWasiChecksTheOptionsAtOnce) {
  WasiOptions missing = Options();
  missing.preopens[0].host_path = (dir_ / "no-such-dir").string();
  auto a = WithWasi({}, std::move(missing));
  ASSERT_FALSE(a);
  EXPECT_EQ(a.error().code, ErrorCode::kNotFound);
  EXPECT_NE(a.error().message.find("no-such-dir"), std::string::npos) << a.error().message;

  WasiOptions bad_env = Options();
  bad_env.env = {{"A=B", "c"}};
  auto b = WithWasi({}, std::move(bad_env));
  ASSERT_FALSE(b);
  EXPECT_EQ(b.error().code, ErrorCode::kInvalidArgument);

  PoolOptions with_state;
  with_state.host_state_factory = [] { return std::unique_ptr<HostState>(); };
  auto c = WithWasi(std::move(with_state), Options());
  ASSERT_FALSE(c);
  EXPECT_EQ(c.error().code, ErrorCode::kInvalidArgument);
  EXPECT_NE(c.error().message.find("host_state_factory"), std::string::npos);
}

TEST_F(WasiTest, KeepsTheHostFunctionsOfTheBaseLinker) {
  auto linker = std::make_shared<Linker>();
  linker->Define("host", "scale", [](int32_t x, int64_t f) { return x * static_cast<int32_t>(f); });
  linker->Define("host", "divmod", [](int32_t a, int32_t b) { return std::tuple<int32_t, int32_t>(a / b, a % b); });
  linker->Define("host", "gate", [](int32_t token) { return token; });
  auto options = WithWasi({.instances = 1, .linker = linker}, Options());
  ASSERT_TRUE(options) << options.error().ToString();
  EXPECT_NE(options->linker->Find("host", "scale"), nullptr);
  EXPECT_NE(options->linker->Find("wasi_snapshot_preview1", "fd_write"), nullptr);
  EXPECT_EQ(linker->Find("wasi_snapshot_preview1", "fd_write"), nullptr) << "the base linker is not changed";

  auto module = runtime_->Compile(Fixture("public_api"), {.name = "public_api"});
  ASSERT_TRUE(module);
  auto pool = runtime_->CreatePool(*module, std::move(*options));
  ASSERT_TRUE(pool) << pool.error().ToString();
  auto call = (*pool)->Submit("call_scale", {Value::I32(4), Value::I64(5)});
  ASSERT_TRUE(call);
  EXPECT_EQ(call->Wait()->values, std::vector<Value>{Value::I32(20)});
}

// Under the reset policy a call finds the WASI state as it was after
// instantiation: a file an earlier call left open is closed again.
TEST_F(WasiTest, UnderResetAFileAnEarlierCallOpenedIsNotOpen) {
  auto kept = MakePool(Options(), StatePolicy::kKeep);
  const CallResult& opened = Run(*kept, "open_keep");
  ASSERT_TRUE(opened) << opened.error().ToString();
  const int32_t fd = opened->values[0].i32();
  ASSERT_GE(fd, 3);
  EXPECT_EQ(Run(*kept, "is_open", {Value::I32(fd)})->values[0].i32(), 1);
  EXPECT_EQ(Run(*kept, "count")->values[0].i32(), 1);
  EXPECT_EQ(Run(*kept, "count")->values[0].i32(), 2);

  auto reset = MakePool(Options(), StatePolicy::kReset);
  for (int i = 0; i < 3; ++i) {
    CallResult again = Run(*reset, "open_keep");
    ASSERT_TRUE(again) << again.error().ToString();
    EXPECT_EQ(again->values[0].i32(), fd) << "the descriptor an earlier call left open is free again";
    EXPECT_EQ(Run(*reset, "is_open", {Value::I32(fd)})->values[0].i32(), 0);
    EXPECT_EQ(Run(*reset, "count")->values[0].i32(), 1);
  }
  EXPECT_GE(runtime_->Metrics().resets.pages + runtime_->Metrics().resets.full, 8u);
  EXPECT_EQ(runtime_->Metrics().resets.fresh_fallback, 0u);
}

TEST(SandboxWasi, HasNoFilesNoInputAndKeepsAStderrTail) {
  WasiOptions wasi = SandboxWasi();
  EXPECT_TRUE(wasi.preopens.empty());
  EXPECT_TRUE(wasi.args.empty());
  EXPECT_TRUE(wasi.env.empty());
  EXPECT_EQ(wasi.stdin_io.kind, WasiStdio::Kind::kNull);
  EXPECT_EQ(wasi.stdout_io.kind, WasiStdio::Kind::kNull);
  EXPECT_EQ(wasi.stderr_io.kind, WasiStdio::Kind::kBuffer);
  EXPECT_EQ(wasi.stderr_io.capture_limit, 4096u);
}

}  // namespace
}  // namespace keel::publictest

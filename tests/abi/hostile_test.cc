// Hostile guests (guest/hostile/) through the executor with the WASI
// sandbox: each is contained with a clear error, its instance is replaced
// where its state can no longer be trusted, and nothing else is disturbed.
#include <thread>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "abi/sandbox.h"
#include "base/file.h"
#include "base/test_engine.h"
#include "keel/runtime.h"

namespace keel {
namespace {

using namespace std::chrono_literals;
using ::testing::AnyOf;
using ::testing::HasSubstr;

class HostileTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto runtime = Runtime::Create({.engine = TestEngine(), .workers = 2});
    ASSERT_TRUE(runtime);
    runtime_ = std::move(*runtime);
    // A well-behaved neighbour that must keep working throughout.
    neighbour_ = Pool("add");
  }
  void TearDown() override {
    if (neighbour_) {
      auto r = neighbour_->Submit("add", {Value::I32(2), Value::I32(3)});
      ASSERT_TRUE(r);
      ASSERT_TRUE(r->Wait());
      EXPECT_EQ(r->Wait()->values[0].i32(), 5);
    }
    runtime_->Shutdown(5s);
  }

  std::shared_ptr<keel::Pool> Pool(const std::string& guest, PoolOptions options = {},
                                   uint32_t max_pages = 16384) {
    auto bytes = ReadFile(std::string(KEEL_GUEST_DIR) + "/" + guest + ".wasm");
    EXPECT_TRUE(bytes) << guest;
    auto module = runtime_->Compile(*bytes, {.name = guest, .max_memory_pages = max_pages});
    EXPECT_TRUE(module) << module.error().ToString();
    options.instances = 1;
    auto pool = runtime_->CreatePool(*module, abi::SandboxedPoolOptions(options));
    EXPECT_TRUE(pool) << pool.error().ToString();
    return *pool;
  }

  CallResult Call(keel::Pool& pool, std::string_view name, std::vector<Value> args = {},
                  std::chrono::milliseconds timeout = 10s) {
    auto call = pool.Submit(name, std::move(args), {.timeout = timeout});
    if (!call) return tl::unexpected(call.error());
    return call->Wait();
  }

  CallResult Bytes(keel::Pool& pool, std::string_view name, std::string input = "x",
                   std::chrono::milliseconds timeout = 10s) {
    auto call = pool.SubmitBytes(name, std::vector<uint8_t>(input.begin(), input.end()),
                                 {.timeout = timeout});
    if (!call) return tl::unexpected(call.error());
    return call->Wait();
  }

  bool EventuallyReplaced(uint64_t n) {
    for (int i = 0; i < 20000; ++i) {
      if (runtime_->Metrics().instances.replaced >= n) return true;
      std::this_thread::sleep_for(1ms);
    }
    return false;
  }

  std::unique_ptr<Runtime> runtime_;
  std::shared_ptr<keel::Pool> neighbour_;
};

TEST_F(HostileTest, InfiniteLoopsStopAtTheDeadline) {
  auto pool = Pool("hostile_loop");
  CallResult r = Call(*pool, "spin", {}, 100ms);
  EXPECT_EQ(r.error().code, ErrorCode::kDeadlineExceeded);
  r = Bytes(*pool, "spin_bytes", "x", 100ms);
  EXPECT_EQ(r.error().code, ErrorCode::kDeadlineExceeded);
  r = Bytes(*pool, "spin_in_post", "x", 100ms);
  EXPECT_EQ(r.error().code, ErrorCode::kDeadlineExceeded);
  EXPECT_TRUE(EventuallyReplaced(3));
  EXPECT_EQ(runtime_->Metrics().runs.run_interrupted, 3u);
}

TEST_F(HostileTest, DeepRecursionTrapsCleanly) {
  auto pool = Pool("hostile_recursion");
  CallResult r = Call(*pool, "recurse");
  EXPECT_EQ(r.error().code, ErrorCode::kTrap);
  EXPECT_EQ(r.error().trap, TrapKind::kStackOverflow);
  r = Call(*pool, "recurse_shadow");
  EXPECT_EQ(r.error().code, ErrorCode::kTrap);
  EXPECT_EQ(r.error().trap, TrapKind::kMemoryOutOfBounds);
  r = Bytes(*pool, "recurse_bytes");
  EXPECT_EQ(r.error().trap, TrapKind::kStackOverflow);
  EXPECT_TRUE(EventuallyReplaced(3));
  r = Call(*pool, "recurse_depth", {Value::I32(10000)});
  ASSERT_TRUE(r) << r.error().ToString();
  EXPECT_EQ(r->values[0].i32(), 10000);
}

TEST_F(HostileTest, MemoryBombsHitTheCap) {
  auto pool = Pool("hostile_memory_bomb", {}, /*max_pages=*/1024);  // 64 MiB
  CallResult r = Call(*pool, "bomb");
  ASSERT_TRUE(r) << r.error().ToString();
  EXPECT_LE(r->values[0].i32(), 64);
  EXPECT_GT(r->values[0].i32(), 32);
  r = Call(*pool, "grow", {Value::I32(100000)});
  EXPECT_EQ(r->values[0].i32(), -1);
  r = Bytes(*pool, "huge_output");
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code, ErrorCode::kTrap);
  EXPECT_TRUE(EventuallyReplaced(1));
}

TEST_F(HostileTest, LyingOutputsAreRefused) {
  auto pool = Pool("hostile_bad_output");
  for (const char* fn : {"pair_oob", "pair_straddle", "data_oob", "data_wrap"}) {
    CallResult r = Bytes(*pool, fn);
    ASSERT_FALSE(r) << fn;
    EXPECT_EQ(r.error().code, ErrorCode::kInvalidArgument) << fn;
    EXPECT_THAT(r.error().message, HasSubstr("outside linear memory")) << fn;
  }
  CallResult huge = Bytes(*pool, "huge_len");
  ASSERT_FALSE(huge);
  EXPECT_EQ(huge.error().code, ErrorCode::kResourceExhausted);
  EXPECT_TRUE(EventuallyReplaced(5));
  CallResult ok = Bytes(*pool, "echo", "still fine");
  ASSERT_TRUE(ok) << ok.error().ToString();
  EXPECT_EQ(std::string(ok->bytes.begin(), ok->bytes.end()), "still fine");
}

TEST_F(HostileTest, BrokenReallocIsRefused) {
  auto no_realloc = Pool("hostile_no_realloc");
  auto r = no_realloc->SubmitBytes("echo", {1, 2, 3});
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code, ErrorCode::kInvalidArgument);
  EXPECT_THAT(r.error().message, HasSubstr("cabi_realloc"));

  auto bad_realloc = Pool("hostile_bad_realloc");
  CallResult b = Bytes(*bad_realloc, "echo", "0123456789abcdef0123");
  ASSERT_FALSE(b);
  EXPECT_EQ(b.error().code, ErrorCode::kInvalidArgument);
  EXPECT_THAT(b.error().message, HasSubstr("cabi_realloc returned a buffer"));
  EXPECT_TRUE(EventuallyReplaced(1));
}

TEST_F(HostileTest, TrapInPostReturnFailsTheCall) {
  auto pool = Pool("hostile_post_trap");
  CallResult r = Bytes(*pool, "echo_then_trap", "data");
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code, ErrorCode::kTrap);
  EXPECT_TRUE(EventuallyReplaced(1));
  CallResult ok = Bytes(*pool, "echo", "after");
  ASSERT_TRUE(ok) << ok.error().ToString();
}

TEST_F(HostileTest, GuestStderrExplainsItsTrap) {
  auto pool = Pool("hostile_post_trap");
  CallResult r = Bytes(*pool, "fail");
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code, ErrorCode::kTrap);
  EXPECT_THAT(r.error().message, HasSubstr("guest stderr: fail: deliberate failure"));
  // The next call starts with a clean capture.
  ASSERT_TRUE(EventuallyReplaced(1));
  auto json = Pool("json_transform");
  CallResult bad = Bytes(*json, "transform", "{oops");
  ASSERT_FALSE(bad);
  EXPECT_THAT(bad.error().message, HasSubstr("invalid JSON"));
  EXPECT_THAT(bad.error().message, ::testing::Not(HasSubstr("deliberate")));
}

}  // namespace
}  // namespace keel

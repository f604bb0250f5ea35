// StatePolicy through the executor: every call of a kReset pool starts from
// the instance's snapshot; kKeep carries state over; every way a reset can
// fail ends in a fresh instance, never in a call that sees another's state.
#include <random>

#include "exec/exec_fixture.h"

namespace keel::exectest {
namespace {

using ::testing::HasSubstr;

// A fresh reset_guest answers bump() with 1 call * 1000 + memory counter 101.
constexpr int32_t kFreshBump = 1101;

class ResetPolicyTest : public ExecTest {
 protected:
  std::shared_ptr<const Module> CompileFixture(const std::string& name, ModuleOptions options = {}) {
    auto bytes = ReadFile(std::string(KEEL_FIXTURE_DIR) + "/" + name + ".wasm");
    EXPECT_TRUE(bytes);
    if (!bytes) return nullptr;
    if (options.name.empty()) options.name = name;
    auto module = runtime_->Compile(*bytes, options);
    EXPECT_TRUE(module) << module.error().ToString();
    return module ? *module : nullptr;
  }
  std::shared_ptr<Pool> PoolOf(std::shared_ptr<const Module> module, StatePolicy state,
                               size_t instances = 1) {
    auto pool = runtime_->CreatePool(std::move(module), {.instances = instances, .recycle = {.state = state}});
    EXPECT_TRUE(pool) << pool.error().ToString();
    return pool ? *pool : nullptr;
  }
  int32_t CallI32(Pool& pool, std::string_view name, std::vector<Value> args = {}) {
    Call call = Submit(pool, name, std::move(args));
    const CallResult& r = call.Wait();
    EXPECT_TRUE(r) << name << ": " << r.error().ToString();
    return r && !r->values.empty() ? r->values[0].i32() : -1;
  }
  // Resets are counted after the call resolved, before the next one runs.
  uint64_t Resets() {
    ResetCounts r = runtime_->Metrics().resets;
    return r.pages + r.full;
  }
};

TEST_F(ResetPolicyTest, EveryCallStartsFromTheSnapshot) {
  auto pool = PoolOf(CompileFixture("reset_guest"), StatePolicy::kReset);
  for (int i = 0; i < 40; ++i) {
    ASSERT_EQ(CallI32(*pool, "bump"), kFreshBump) << "call " << i << " saw an earlier call's state";
    ASSERT_EQ(CallI32(*pool, "visit", {Value::I32(1000 + i)}), 0) << "call " << i << " saw the last input";
  }
  ASSERT_TRUE(Eventually([&] { return Resets() == 80; })) << Resets();
  MetricsSnapshot m = runtime_->Metrics();
  EXPECT_EQ(m.resets.fresh_fallback, 0u);
  EXPECT_EQ(m.instances.created, 1u);  // one instance served them all
  EXPECT_EQ(m.reset_time.count, 80u);
  EXPECT_GE(m.resets.pages_copied, 80u);  // each call wrote its page
}

TEST_F(ResetPolicyTest, KeepCarriesStateOver) {
  auto pool = PoolOf(CompileFixture("reset_guest"), StatePolicy::kKeep);
  EXPECT_EQ(CallI32(*pool, "bump"), kFreshBump);
  EXPECT_EQ(CallI32(*pool, "bump"), 2102);
  EXPECT_EQ(CallI32(*pool, "visit", {Value::I32(5)}), 0);
  EXPECT_EQ(CallI32(*pool, "visit", {Value::I32(6)}), 5);
  EXPECT_EQ(Resets(), 0u);
}

TEST_F(ResetPolicyTest, FreshBuildsAnInstancePerCall) {
  auto pool = PoolOf(CompileFixture("reset_guest"), StatePolicy::kFresh);
  for (int i = 0; i < 5; ++i) ASSERT_EQ(CallI32(*pool, "bump"), kFreshBump);
  ASSERT_TRUE(Eventually([&] { return runtime_->Metrics().instances.created == 6; }));
  EXPECT_EQ(Resets(), 0u);
}

TEST_F(ResetPolicyTest, ACallThatGrowsMemoryIsFollowedByAFreshInstance) {
  auto pool = PoolOf(CompileFixture("reset_guest"), StatePolicy::kReset);
  ASSERT_EQ(CallI32(*pool, "bump"), kFreshBump);
  ASSERT_EQ(CallI32(*pool, "grow", {Value::I32(2)}), 32);
  ASSERT_TRUE(Eventually([&] { return runtime_->Metrics().resets.fresh_fallback == 1; }));
  EXPECT_EQ(CallI32(*pool, "pages"), 32);
  EXPECT_EQ(CallI32(*pool, "bump"), kFreshBump);
  EXPECT_EQ(runtime_->Metrics().instances.created, 2u);
}

TEST_F(ResetPolicyTest, StackPointerAndGlobalsAreRestored) {
  auto pool = PoolOf(CompileFixture("reset_guest"), StatePolicy::kReset);
  ASSERT_TRUE(Submit(*pool, "push", {Value::I32(512)}).Wait());
  EXPECT_EQ(CallI32(*pool, "stack_pointer"), 65536);
  ASSERT_TRUE(Submit(*pool, "set_wide", {Value::I64(42)}).Wait());
  Call wide_call = Submit(*pool, "get_wide", {});
  const CallResult& wide = wide_call.Wait();
  ASSERT_TRUE(wide);
  EXPECT_EQ(wide->values[0].i64(), -1);
  // A trap inside a frame poisons the instance: replaced, never reset.
  Call trapped_call = Submit(*pool, "push_and_trap", {Value::I32(256)});
  const CallResult& trapped = trapped_call.Wait();
  ASSERT_FALSE(trapped);
  EXPECT_EQ(trapped.error().trap, TrapKind::kUnreachable);
  EXPECT_EQ(CallI32(*pool, "stack_pointer"), 65536);
  EXPECT_EQ(runtime_->Metrics().instances.poisoned, 1u);
  // Out-of-bounds accesses still trap on a reset instance.
  Call oob_call = Submit(*pool, "load", {Value::I32(32 * 65536)});
  const CallResult& oob = oob_call.Wait();
  ASSERT_FALSE(oob);
  EXPECT_EQ(oob.error().trap, TrapKind::kMemoryOutOfBounds);
}

TEST_F(ResetPolicyTest, TheInitExportRunsOncePerInstanceBeforeTheSnapshot) {
  auto module = CompileFixture("reset_guest", {.init_export = "preinit"});
  ASSERT_EQ(module->init_export(), "preinit");
  auto pool = PoolOf(module, StatePolicy::kReset);
  for (int i = 0; i < 10; ++i) ASSERT_EQ(CallI32(*pool, "preinit_runs"), 1);
  auto kept = PoolOf(module, StatePolicy::kKeep);
  for (int i = 0; i < 3; ++i) ASSERT_EQ(CallI32(*kept, "preinit_runs"), 1);
}

TEST_F(ResetPolicyTest, AnInitExportThatIsNotOneIsRefused) {
  auto bytes = ReadFile(std::string(KEEL_FIXTURE_DIR) + "/reset_guest.wasm");
  ASSERT_TRUE(bytes);
  for (const char* name : {"nope", "bump", "visit"}) {
    auto module = runtime_->Compile(*bytes, {.init_export = name});
    ASSERT_FALSE(module) << name;
    EXPECT_EQ(module.error().code, ErrorCode::kInvalidArgument);
    EXPECT_THAT(module.error().message, HasSubstr("is not an exported function () -> ()"));
  }
  // One that traps refuses the module, as a trapping start function does.
  auto trapping = runtime_->Compile(*bytes, {.init_export = "push_and_trap"});
  ASSERT_FALSE(trapping);
}

TEST_F(ResetPolicyTest, ModulesThatCannotBeResetGetAFreshInstancePerCall) {
  // Its code changes a table: no snapshot, so no call may reuse it.
  auto pool = PoolOf(CompileFixture("reset_table_set"), StatePolicy::kReset);
  for (int i = 0; i < 3; ++i) ASSERT_TRUE(Submit(*pool, "clear", {}).Wait());
  ASSERT_TRUE(Eventually([&] { return runtime_->Metrics().resets.fresh_fallback == 3; }));
  // A host state without snapshot hooks.
  auto tracked = MakePool({.instances = 1,
                           .recycle = {.state = StatePolicy::kReset},
                           .host_state_factory = [] { return std::make_unique<HostState>(); }});
  for (int i = 0; i < 3; ++i) ASSERT_EQ(CallI32(*tracked, "bump"), 1);
  ASSERT_TRUE(Eventually([&] { return runtime_->Metrics().resets.fresh_fallback == 6; }));
  EXPECT_EQ(Resets(), 0u);
}

TEST_F(ResetPolicyTest, RandomizedCallsNeverSeeAnotherCallsState) {
  // The 100k under ASan+UBSan, where memory errors would show;
  // fewer where the run is only slower (TSan) or for the quick plain run.
#if defined(KEEL_SANITIZE)
  constexpr int kCalls = 100000;
#else
  constexpr int kCalls = 20000;
#endif
  auto pool = PoolOf(CompileFixture("reset_guest"), StatePolicy::kReset, 2);
  std::mt19937 rng(11);
  std::vector<Call> bumps;
  for (int i = 0; i < kCalls; ++i) {
    switch (rng() % 7) {
      case 0:
        Submit(*pool, "grow", {Value::I32(1)}).Detach();
        break;
      case 1:
        Submit(*pool, "push_and_trap", {Value::I32(64)}).Detach();
        break;
      case 2:
        Submit(*pool, "fill", {Value::I32(static_cast<int32_t>(rng() % (30 * 65536))), Value::I32(8192),
                               Value::I32(0x5a)})
            .Detach();
        break;
      case 3: {
        Call cancelled = Submit(*pool, "bump", {});
        cancelled.Cancel();
        break;
      }
      case 4:
        // A deadline that expires at Submit, in the queue, or mid-call
        // (the instance is interrupted and replaced).
        if (auto call = pool->Submit(
                "spin", {}, {.deadline = Clock::now() + std::chrono::microseconds(rng() % 500)})) {
          call->Detach();
        } else {
          ASSERT_EQ(call.error().code, ErrorCode::kDeadlineExceeded) << call.error().ToString();
        }
        break;
      default:
        bumps.push_back(Submit(*pool, "bump", {}));
    }
    if (bumps.size() >= 64 || i == kCalls - 1) {
      for (Call& call : bumps) {
        const CallResult& r = call.Wait();
        ASSERT_TRUE(r) << r.error().ToString();
        ASSERT_EQ(r->values[0].i32(), kFreshBump);
      }
      bumps.clear();
    }
  }
  EXPECT_EQ(CallI32(*pool, "memory_count"), 100);
  // Every path was taken: traps, interrupts at deadlines, withdrawals,
  // detached calls and fresh instances after a grow.
  MetricsSnapshot m = runtime_->Metrics();
  EXPECT_GT(m.runs.run_trapped, 0u);
  EXPECT_GT(m.runs.run_interrupted, 0u);
  EXPECT_GT(m.resolved.cancelled_queued, 0u);
  EXPECT_GT(m.resets.fresh_fallback, 0u);
}

}  // namespace
}  // namespace keel::exectest

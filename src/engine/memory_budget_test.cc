// A runtime's budget on its instances' linear memory, enforced by each
// engine: at instantiation and at memory.grow.
#include "engine/memory_budget.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "base/file.h"
#include "engine/engine.h"

namespace keel::engine {
namespace {

using ::testing::HasSubstr;

constexpr uint64_t kPage = kWasmPageSize;

std::string EngineName(const ::testing::TestParamInfo<EngineKind>& info) {
  return std::string(ToString(info.param));
}

class MemoryBudgetTest : public ::testing::TestWithParam<EngineKind> {
 protected:
  // A context whose instances share a budget of `pages` pages.
  void StartContext(uint64_t pages, const std::string& fixture = "budget_grow") {
    budget_ = std::make_shared<MemoryBudget>(pages * kPage);
    auto engine = GetEngine(GetParam());
    ASSERT_TRUE(engine) << engine.error().ToString();
    engine_ = *engine;
    auto ctx = engine_->NewContext({.stack_quota_bytes = 1 << 20, .memory_budget = budget_});
    ASSERT_TRUE(ctx) << ctx.error().ToString();
    ctx_ = std::move(*ctx);
    auto bytes = ReadFile(std::string(KEEL_FIXTURE_DIR) + "/" + fixture + ".wasm");
    ASSERT_TRUE(bytes) << bytes.error().ToString();
    auto module = engine_->Compile(*bytes, {.max_memory_pages = 16});
    ASSERT_TRUE(module) << module.error().ToString();
    module_ = *module;
  }

  Result<std::unique_ptr<Instance>> Instantiate() {
    return ctx_->Instantiate(module_, std::make_shared<Linker>(), nullptr, ++tag_);
  }

  int32_t Run(Instance& instance, std::string_view name, std::vector<Value> args = {}) {
    auto r = instance.Invoke(name, args, ++tag_);
    EXPECT_TRUE(r) << r.error().ToString();
    return r ? (*r)[0].i32() : -2;
  }

  std::shared_ptr<MemoryBudget> budget_;
  Engine* engine_ = nullptr;
  std::unique_ptr<Context> ctx_;
  std::shared_ptr<const Module> module_;
  uint64_t tag_ = 0;
};

TEST_P(MemoryBudgetTest, InstancesFitUntilTheBudgetThenInstantiationIsRefused) {
  StartContext(5);
  auto a = Instantiate();
  ASSERT_TRUE(a) << a.error().ToString();
  auto b = Instantiate();
  ASSERT_TRUE(b) << b.error().ToString();
  EXPECT_EQ(budget_->used(), 4 * kPage);

  auto c = Instantiate();
  ASSERT_FALSE(c);
  EXPECT_EQ(c.error().code, ErrorCode::kResourceExhausted);
  EXPECT_THAT(c.error().message, HasSubstr("budget of " + std::to_string(5 * kPage) + " bytes"));
  EXPECT_THAT(c.error().message, HasSubstr("needs " + std::to_string(2 * kPage) + " bytes"));
  EXPECT_THAT(c.error().message, HasSubstr(std::to_string(4 * kPage) + " in use"));
  EXPECT_EQ(budget_->used(), 4 * kPage);

  // The instances there are keep working.
  EXPECT_EQ(Run(**a, "size"), 2);
  EXPECT_EQ(Run(**b, "size"), 2);

  // Memory a dropped instance held comes back.
  b->reset();
  EXPECT_EQ(budget_->used(), 2 * kPage);
  auto d = Instantiate();
  ASSERT_TRUE(d) << d.error().ToString();
  EXPECT_EQ(budget_->used(), 4 * kPage);
}

TEST_P(MemoryBudgetTest, GrowPastTheBudgetReturnsMinusOneUntilMemoryIsReleased) {
  StartContext(6);
  auto a = Instantiate();
  ASSERT_TRUE(a) << a.error().ToString();
  auto b = Instantiate();
  ASSERT_TRUE(b) << b.error().ToString();

  // 2 + 2 pages held: growing a by 3 would make 7.
  EXPECT_EQ(Run(**a, "grow", {Value::I32(3)}), -1);
  EXPECT_EQ(Run(**a, "size"), 2);
  // The call's grant went back when it ended: only committed pages count.
  EXPECT_EQ(budget_->used(), 4 * kPage);
  // b is not disturbed.
  EXPECT_EQ(Run(**b, "size"), 2);

  b->reset();
  EXPECT_EQ(Run(**a, "grow", {Value::I32(3)}), 2);
  EXPECT_EQ(Run(**a, "size"), 5);
  EXPECT_EQ(budget_->used(), 5 * kPage);
  EXPECT_EQ(Run(**a, "grow", {Value::I32(2)}), -1);
  EXPECT_EQ(Run(**a, "grow", {Value::I32(1)}), 5);
  EXPECT_EQ(budget_->used(), 6 * kPage);

  a->reset();
  EXPECT_EQ(budget_->used(), 0u);
}

TEST_P(MemoryBudgetTest, ThePerInstanceCapStillHoldsUnderALargeBudget) {
  StartContext(1024);
  auto a = Instantiate();
  ASSERT_TRUE(a) << a.error().ToString();
  // The module was compiled with a cap of 16 pages.
  EXPECT_EQ(Run(**a, "grow", {Value::I32(15)}), -1);
  EXPECT_EQ(Run(**a, "grow", {Value::I32(14)}), 2);
  EXPECT_EQ(Run(**a, "grow", {Value::I32(1)}), -1);
  EXPECT_EQ(budget_->used(), 16 * kPage);
}

TEST_P(MemoryBudgetTest, AMemoryTheModuleDoesNotExportIsChargedToo) {
  if (GetParam() == EngineKind::kWasmtime) {
    GTEST_SKIP() << "Wasmtime's C API reaches exported memories only (EXECUTOR.md, Memory budget)";
  }
  StartContext(3, "budget_hidden");
  auto a = Instantiate();
  ASSERT_TRUE(a) << a.error().ToString();
  EXPECT_EQ(budget_->used(), 2 * kPage);
  EXPECT_EQ(Run(**a, "grow", {Value::I32(2)}), -1);
  EXPECT_EQ(Run(**a, "grow", {Value::I32(1)}), 2);
  EXPECT_EQ(budget_->used(), 3 * kPage);
  auto b = Instantiate();
  ASSERT_FALSE(b);
  EXPECT_EQ(b.error().code, ErrorCode::kResourceExhausted);
}

TEST(MemoryBudget, ChargesAndGrantsStayWithinTheLimit) {
  auto budget = std::make_shared<MemoryBudget>(10);
  EXPECT_TRUE(budget->TryCharge(4));
  EXPECT_FALSE(budget->TryCharge(7));
  EXPECT_EQ(budget->ChargeUpTo(100), 6u);
  EXPECT_EQ(budget->ChargeUpTo(1), 0u);
  budget->Release(10);
  {
    MemoryCharge charge(budget);
    ASSERT_TRUE(charge.Set(3));
    EXPECT_EQ(charge.Grant(3, 100), 7u);
    EXPECT_EQ(budget->used(), 10u);
    charge.Settle(5);
    EXPECT_EQ(budget->used(), 5u);
    EXPECT_FALSE(charge.Set(11));
    EXPECT_EQ(charge.charged(), 5u);
  }
  EXPECT_EQ(budget->used(), 0u);
}

INSTANTIATE_TEST_SUITE_P(Engines, MemoryBudgetTest, ::testing::ValuesIn(AvailableEngines()),
                         EngineName);

}  // namespace
}  // namespace keel::engine

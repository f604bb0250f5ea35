// What only the Wasmtime backend has: its allocation strategies, the
// instance pool's limit, and its engine-wide guest stack.
#include "engine/wasmtime/wt_engine.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "base/file.h"

namespace keel::engine {
namespace {

using ::testing::HasSubstr;

std::shared_ptr<const Module> Compile(Engine& engine, const std::string& name) {
  auto bytes = ReadFile(std::string(KEEL_FIXTURE_DIR) + "/" + name + ".wasm");
  EXPECT_TRUE(bytes) << bytes.error().ToString();
  if (!bytes) return nullptr;
  auto module = engine.Compile(*bytes, {.max_memory_pages = 3});
  EXPECT_TRUE(module) << module.error().ToString();
  return module ? *module : nullptr;
}

struct Strategy {
  const char* name;
  WasmtimeOptions options;
};

class WasmtimeStrategyTest : public ::testing::TestWithParam<Strategy> {};

// Every configuration runs the same guest the same way, and an instance
// never sees what an earlier one (perhaps in the same pool slot) wrote.
TEST_P(WasmtimeStrategyTest, FreshInstancesStartFromTheModulesImage) {
  auto engine = NewWasmtimeEngine(GetParam().options);
  ASSERT_TRUE(engine) << engine.error().ToString();
  auto ctx = (*engine)->NewContext();
  ASSERT_TRUE(ctx);
  auto module = Compile(**engine, "engine_basic");
  auto linker = std::make_shared<Linker>();
  uint64_t tag = 0;
  for (int round = 0; round < 3; ++round) {
    auto instance = (*ctx)->Instantiate(module, linker, nullptr, ++tag);
    ASSERT_TRUE(instance) << instance.error().ToString();
    auto before = (*instance)->Invoke("load", std::vector<Value>{Value::I32(100)}, ++tag);
    ASSERT_TRUE(before);
    EXPECT_EQ((*before)[0].i32(), 0) << "round " << round;
    auto counter = (*instance)->Invoke("bump", {}, ++tag);
    EXPECT_EQ((*counter)[0].i32(), 1);
    ASSERT_TRUE((*instance)->Invoke("store", std::vector<Value>{Value::I32(100), Value::I32(round + 7)}, ++tag));
    // The cap holds in every configuration: 1 page + 2 = 3, not 4.
    auto grown = (*instance)->Invoke("grow", std::vector<Value>{Value::I32(2)}, ++tag);
    EXPECT_EQ((*grown)[0].i32(), 1);
    grown = (*instance)->Invoke("grow", std::vector<Value>{Value::I32(1)}, ++tag);
    EXPECT_EQ((*grown)[0].i32(), -1);
  }
}

INSTANTIATE_TEST_SUITE_P(
    Strategies, WasmtimeStrategyTest,
    ::testing::Values(Strategy{"pool_cow", {}}, Strategy{"pool_nocow", {.memory_init_cow = false}},
                      Strategy{"ondemand_cow", {.pooling_allocator = false}},
                      Strategy{"ondemand_nocow",
                               {.pooling_allocator = false, .memory_init_cow = false}}),
    [](const auto& info) { return std::string(info.param.name); });

TEST(WasmtimeEngineTest, AFullPoolRefusesInstancesUntilOneIsDropped) {
  auto engine = NewWasmtimeEngine({.pool_slots = 2});
  ASSERT_TRUE(engine) << engine.error().ToString();
  auto ctx = (*engine)->NewContext();
  auto module = Compile(**engine, "engine_basic");
  auto linker = std::make_shared<Linker>();
  auto a = (*ctx)->Instantiate(module, linker, nullptr, 1);
  auto b = (*ctx)->Instantiate(module, linker, nullptr, 2);
  ASSERT_TRUE(a && b);
  auto c = (*ctx)->Instantiate(module, linker, nullptr, 3);
  ASSERT_FALSE(c);
  EXPECT_EQ(c.error().code, ErrorCode::kResourceExhausted);
  EXPECT_THAT(c.error().message, HasSubstr("2"));
  a->reset();
  c = (*ctx)->Instantiate(module, linker, nullptr, 4);
  ASSERT_TRUE(c) << c.error().ToString();
  auto r = (*c)->Invoke("add", std::vector<Value>{Value::I32(2), Value::I32(3)}, 5);
  ASSERT_TRUE(r);
  EXPECT_EQ((*r)[0].i32(), 5);
}

TEST(WasmtimeEngineTest, RefusesAStackQuotaBelowItsGuestStack) {
  auto ctx = WasmtimeEngine().NewContext({.stack_quota_bytes = 256 << 10});
  ASSERT_FALSE(ctx);
  EXPECT_EQ(ctx.error().code, ErrorCode::kInvalidArgument);
  EXPECT_THAT(ctx.error().message, HasSubstr("stack"));
}

TEST(WasmtimeEngineTest, NamesItsVersion) {
  // The headers and library are those of the pinned version.
  EXPECT_EQ(WasmtimeEngine().name(), "wasmtime-" KEEL_WASMTIME_VERSION);
  EXPECT_EQ(WasmtimeEngine().kind(), EngineKind::kWasmtime);
}

}  // namespace
}  // namespace keel::engine

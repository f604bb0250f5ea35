// What only the Wasmtime backend has: its allocation strategies (and
// resets on each), the instance pool's limit, and its engine-wide guest
// stack.
#include "engine/wasmtime/wt_engine.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "base/file.h"

namespace keel::engine {
namespace {

using ::testing::HasSubstr;

std::shared_ptr<const Module> Compile(Engine& engine, const std::string& name,
                                      CompileOptions options = {.max_memory_pages = 3}) {
  auto bytes = ReadFile(std::string(KEEL_FIXTURE_DIR) + "/" + name + ".wasm");
  EXPECT_TRUE(bytes) << bytes.error().ToString();
  if (!bytes) return nullptr;
  auto module = engine.Compile(*bytes, options);
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

class ResetGuest {
 public:
  explicit ResetGuest(Engine& engine) : module_(Compile(engine, "reset_guest", {})) {
    auto ctx = engine.NewContext();
    EXPECT_TRUE(ctx) << ctx.error().ToString();
    if (ctx) ctx_ = std::move(*ctx);
  }
  std::unique_ptr<Instance> Instantiate() {
    auto instance = ctx_->Instantiate(module_, std::make_shared<Linker>(),
                                      std::make_unique<ResettableHost>(), ++tag_);
    EXPECT_TRUE(instance) << instance.error().ToString();
    return instance ? std::move(*instance) : nullptr;
  }
  int32_t I32(Instance& instance, std::string_view name, std::vector<Value> args = {}) {
    auto r = instance.Invoke(name, args, ++tag_);
    EXPECT_TRUE(r) << name << ": " << r.error().ToString();
    return r && !r->empty() ? (*r)[0].i32() : -1;
  }

 private:
  struct ResettableHost : HostState {
    Result<void> Snapshot() override { return {}; }
    Result<void> Reset() override { return {}; }
  };
  std::shared_ptr<const Module> module_;
  std::unique_ptr<Context> ctx_;
  uint64_t tag_ = 0;
};

// Dirty-page tracking works on every kind of mapping Wasmtime gives a
// memory: a pool slot or a mapping of its own, the module's copy-on-write
// image or anonymous pages. Writes in the image (the data segment's page)
// and beyond it are found, and only those.
TEST_P(WasmtimeStrategyTest, ResetsFindExactlyThePagesWritten) {
  if (!WasmtimeEngine().reset_support().dirty_page_tracking) GTEST_SKIP() << "no tracking here";
  auto engine = NewWasmtimeEngine(GetParam().options);
  ASSERT_TRUE(engine) << engine.error().ToString();
  ResetGuest guest(**engine);
  auto instance = guest.Instantiate();
  ASSERT_TRUE(instance);
  ASSERT_TRUE(instance->Snapshot({}));
  for (int round = 0; round < 3; ++round) {
    EXPECT_EQ(guest.I32(*instance, "visit", {Value::I32(round + 1)}), 0) << "round " << round;
    guest.I32(*instance, "store", {Value::I32(1 << 20), Value::I32(7)});
    auto stats = instance->Reset();
    ASSERT_TRUE(stats) << stats.error().ToString();
    EXPECT_EQ(stats->memory, ResetStats::Memory::kTracked);
    EXPECT_EQ(stats->pages_copied, 2u) << "the counters' page and the one at 1 MiB";
    EXPECT_EQ(guest.I32(*instance, "load", {Value::I32(1 << 20)}), 0);
    EXPECT_EQ(guest.I32(*instance, "memory_count"), 100);
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

// The pooling allocator keeps a slot's mapping for its next instance: a
// tracked memory's tracking ends with its instance, so the next one in the
// slot starts from the image, untracked, and tracks only its own writes
// once it takes a snapshot.
TEST(WasmtimeEngineTest, APoolSlotsNextInstanceStartsCleanAfterATrackedOne) {
  if (!WasmtimeEngine().reset_support().dirty_page_tracking) GTEST_SKIP() << "no tracking here";
  auto engine = NewWasmtimeEngine({.pool_slots = 1});
  ASSERT_TRUE(engine) << engine.error().ToString();
  ResetGuest guest(**engine);
  auto first = guest.Instantiate();
  ASSERT_TRUE(first);
  ASSERT_TRUE(first->Snapshot({}));
  EXPECT_EQ(guest.I32(*first, "visit", {Value::I32(5)}), 0);
  first.reset();
  auto second = guest.Instantiate();  // the same slot: there is only one
  ASSERT_TRUE(second);
  EXPECT_EQ(guest.I32(*second, "visit", {Value::I32(6)}), 0);
  EXPECT_EQ(guest.I32(*second, "memory_count"), 101);
  ASSERT_TRUE(second->Snapshot({}));
  guest.I32(*second, "store", {Value::I32(3 << 16), Value::I32(1)});
  auto stats = second->Reset();
  ASSERT_TRUE(stats) << stats.error().ToString();
  EXPECT_EQ(stats->memory, ResetStats::Memory::kTracked);
  EXPECT_EQ(stats->pages_copied, 1u);
  EXPECT_EQ(guest.I32(*second, "visit", {Value::I32(7)}), 6) << "the snapshot was taken after 6";
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

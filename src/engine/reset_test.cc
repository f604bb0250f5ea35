// Instance::Snapshot and Reset on every engine of the build: every call
// after a reset sees the snapshot, and whatever a reset cannot undo is
// refused.
#include <cstring>
#include <random>
#include <thread>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "base/file.h"
#include "engine/engine.h"

namespace keel::engine {
namespace {

using ::testing::HasSubstr;

constexpr uint32_t kMemoryBytes = 32 * kWasmPageSize;  // reset_guest's 2 MiB

Engine& EngineOf(EngineKind kind) {
  auto engine = GetEngine(kind);
  EXPECT_TRUE(engine) << engine.error().ToString();
  return **engine;
}

std::shared_ptr<const Module> Compile(Engine& engine, const std::string& name) {
  auto bytes = ReadFile(std::string(KEEL_FIXTURE_DIR) + "/" + name + ".wasm");
  EXPECT_TRUE(bytes) << bytes.error().ToString();
  if (!bytes) return nullptr;
  auto module = engine.Compile(*bytes);
  EXPECT_TRUE(module) << module.error().ToString();
  return module ? *module : nullptr;
}

// Counts the engine's calls of its hooks.
class CountingHostState : public HostState {
 public:
  Result<void> Snapshot() override {
    ++snapshots;
    if (refuse_snapshot) return MakeError(ErrorCode::kFailedPrecondition, "host cannot");
    return {};
  }
  Result<void> Reset() override {
    ++resets;
    if (refuse_reset) return MakeError(ErrorCode::kFailedPrecondition, "host refuses");
    return {};
  }
  int snapshots = 0;
  int resets = 0;
  bool refuse_snapshot = false;
  bool refuse_reset = false;
};

// Parameterised on the engine and on dirty-page tracking (true) or the
// whole-memory comparison (false): all must give the same results.
class ResetTest : public ::testing::TestWithParam<std::tuple<EngineKind, bool>> {
 protected:
  void SetUp() override {
    auto ctx = engine().NewContext();
    ASSERT_TRUE(ctx) << ctx.error().ToString();
    ctx_ = std::move(*ctx);
    module_ = Compile(engine(), "reset_guest");
    ASSERT_TRUE(module_);
  }

  Engine& engine() const { return EngineOf(std::get<0>(GetParam())); }
  bool track() const { return std::get<1>(GetParam()); }
  bool tracked() const { return track() && engine().reset_support().dirty_page_tracking; }

  std::unique_ptr<Instance> Fresh(std::unique_ptr<HostState> host_state = nullptr) {
    auto instance =
        ctx_->Instantiate(module_, std::make_shared<Linker>(), std::move(host_state), ++tag_);
    EXPECT_TRUE(instance) << instance.error().ToString();
    return instance ? std::move(*instance) : nullptr;
  }

  // A fresh instance with its snapshot taken.
  std::unique_ptr<Instance> Snapshotted(std::unique_ptr<HostState> host_state = nullptr) {
    if (!host_state) host_state = std::make_unique<CountingHostState>();
    auto instance = Fresh(std::move(host_state));
    if (!instance) return nullptr;
    auto ok = instance->Snapshot({.track_dirty_pages = track()});
    EXPECT_TRUE(ok) << ok.error().ToString();
    EXPECT_TRUE(instance->has_snapshot());
    return instance;
  }

  Result<std::vector<Value>> Invoke(Instance& instance, std::string_view name,
                                    std::vector<Value> args = {}) {
    return instance.Invoke(name, args, ++tag_);
  }
  int32_t I32(Instance& instance, std::string_view name, std::vector<Value> args = {}) {
    auto r = Invoke(instance, name, std::move(args));
    EXPECT_TRUE(r) << name << ": " << r.error().ToString();
    return r && !r->empty() ? (*r)[0].i32() : -1;
  }
  ResetStats Reset(Instance& instance) {
    auto stats = instance.Reset();
    EXPECT_TRUE(stats) << stats.error().ToString();
    if (stats) {
      EXPECT_EQ(stats->memory,
                tracked() ? ResetStats::Memory::kTracked : ResetStats::Memory::kCompared);
    }
    return stats ? *stats : ResetStats{};
  }

  std::unique_ptr<Context> ctx_;
  std::shared_ptr<const Module> module_;
  uint64_t tag_ = 0;
};

TEST_P(ResetTest, EveryCallAfterAResetSeesTheSnapshot) {
  auto instance = Snapshotted();
  ASSERT_TRUE(instance);
  for (int call = 0; call < 40; ++call) {
    EXPECT_EQ(I32(*instance, "visit", {Value::I32(1000 + call)}), 0)
        << "call " << call << " saw the previous call's input";
    EXPECT_EQ(I32(*instance, "call_count"), 1);
    EXPECT_EQ(I32(*instance, "memory_count"), 101) << "_initialize's 100, plus this call";
    ResetStats stats = Reset(*instance);
    EXPECT_EQ(stats.pages_copied, 1u);
    EXPECT_EQ(stats.globals_restored, 1u);
  }
  auto* host = static_cast<CountingHostState*>(instance->host_state());
  EXPECT_EQ(host->snapshots, 1);
  EXPECT_EQ(host->resets, 40);
}

TEST_P(ResetTest, WithoutAResetStateCarriesOver) {
  auto instance = Snapshotted();
  ASSERT_TRUE(instance);
  EXPECT_EQ(I32(*instance, "visit", {Value::I32(5)}), 0);
  EXPECT_EQ(I32(*instance, "visit", {Value::I32(6)}), 5);
  EXPECT_EQ(I32(*instance, "call_count"), 2);
  Reset(*instance);
  EXPECT_EQ(I32(*instance, "visit", {Value::I32(7)}), 0);
}

TEST_P(ResetTest, GlobalsOfEveryTypeAndTheStackPointerAreRestored) {
  auto instance = Snapshotted();
  ASSERT_TRUE(instance);
  ASSERT_TRUE(Invoke(*instance, "set_wide", {Value::I64(int64_t{1} << 40)}));
  ASSERT_TRUE(Invoke(*instance, "set_real", {Value::F64(-0.0)}));
  ASSERT_TRUE(Invoke(*instance, "push", {Value::I32(256)}));
  EXPECT_EQ(I32(*instance, "stack_pointer"), 65536 - 256);
  ResetStats stats = Reset(*instance);
  EXPECT_EQ(stats.globals_restored, 3u);
  EXPECT_EQ(stats.pages_copied, 0u);
  EXPECT_EQ(I32(*instance, "stack_pointer"), 65536);
  auto wide = Invoke(*instance, "get_wide");
  ASSERT_TRUE(wide);
  EXPECT_EQ((*wide)[0].i64(), -1);
  auto real = Invoke(*instance, "get_real");
  ASSERT_TRUE(real);
  EXPECT_EQ((*real)[0].f64(), 0.5);
  EXPECT_FALSE(std::signbit((*real)[0].f64()));
  EXPECT_EQ(I32(*instance, "indirect"), 7) << "the table is untouched";
}

TEST_P(ResetTest, AResetWithNothingWrittenCopiesNothing) {
  auto instance = Snapshotted();
  ASSERT_TRUE(instance);
  EXPECT_EQ(I32(*instance, "memory_count"), 100);
  ResetStats stats = Reset(*instance);
  EXPECT_EQ(stats.pages_copied, 0u);
  EXPECT_EQ(stats.globals_restored, 0u);
}

TEST_P(ResetTest, GrownMemoryMakesTheResetRefuseAndAFreshInstanceIsRight) {
  auto instance = Snapshotted();
  ASSERT_TRUE(instance);
  EXPECT_EQ(I32(*instance, "visit", {Value::I32(9)}), 0);
  EXPECT_EQ(I32(*instance, "grow", {Value::I32(1)}), 32);
  auto stats = instance->Reset();
  ASSERT_FALSE(stats);
  EXPECT_EQ(stats.error().code, ErrorCode::kFailedPrecondition);
  EXPECT_THAT(stats.error().message, HasSubstr("grew from 2097152 to 2162688 bytes"));
  EXPECT_TRUE(instance->poisoned()) << "a failed reset leaves nothing usable";
  EXPECT_FALSE(Invoke(*instance, "visit", {Value::I32(1)}));

  auto fresh = Snapshotted();
  ASSERT_TRUE(fresh);
  EXPECT_EQ(I32(*fresh, "visit", {Value::I32(1)}), 0);
  EXPECT_EQ(I32(*fresh, "memory_count"), 101);
  EXPECT_EQ(I32(*fresh, "grow", {Value::I32(0)}), 32);
}

TEST_P(ResetTest, APoisonedInstanceIsNeverReset) {
  auto instance = Snapshotted();
  ASSERT_TRUE(instance);
  auto trapped = Invoke(*instance, "push_and_trap", {Value::I32(128)});
  ASSERT_FALSE(trapped);
  EXPECT_EQ(trapped.error().trap, TrapKind::kUnreachable);
  auto stats = instance->Reset();
  ASSERT_FALSE(stats);
  EXPECT_EQ(stats.error().code, ErrorCode::kFailedPrecondition);
  EXPECT_THAT(stats.error().message, HasSubstr("poisoned instances are replaced, never reset"));
  auto* host = static_cast<CountingHostState*>(instance->host_state());
  EXPECT_EQ(host->resets, 0);
  // A snapshot of a poisoned instance is refused too.
  EXPECT_FALSE(instance->Snapshot({}));
}

TEST_P(ResetTest, OutOfBoundsAccessesStillTrapAfterAReset) {
  auto instance = Snapshotted();
  ASSERT_TRUE(instance);
  ASSERT_TRUE(
      Invoke(*instance, "fill", {Value::I32(0), Value::I32(kMemoryBytes), Value::I32(0xab)}));
  Reset(*instance);
  ASSERT_TRUE(Invoke(*instance, "store", {Value::I32(kMemoryBytes - 4), Value::I32(1)}));
  EXPECT_EQ(I32(*instance, "load", {Value::I32(kMemoryBytes - 4)}), 1);
  auto oob = Invoke(*instance, "load", {Value::I32(kMemoryBytes - 2)});
  ASSERT_FALSE(oob);
  EXPECT_EQ(oob.error().trap, TrapKind::kMemoryOutOfBounds);
}

TEST_P(ResetTest, HostStateRefusingItsResetFailsTheReset) {
  auto host = std::make_unique<CountingHostState>();
  host->refuse_reset = true;
  auto instance = Snapshotted(std::move(host));
  ASSERT_TRUE(instance);
  auto stats = instance->Reset();
  ASSERT_FALSE(stats);
  EXPECT_THAT(stats.error().message, HasSubstr("host refuses"));
  EXPECT_TRUE(instance->poisoned());
}

TEST_P(ResetTest, AFailedSnapshotLeavesNoneToResetTo) {
  auto instance = Snapshotted();
  ASSERT_TRUE(instance);
  static_cast<CountingHostState*>(instance->host_state())->refuse_snapshot = true;
  auto ok = instance->Snapshot({.track_dirty_pages = track()});
  ASSERT_FALSE(ok);
  EXPECT_THAT(ok.error().message, HasSubstr("host cannot"));
  EXPECT_FALSE(instance->has_snapshot());
  EXPECT_FALSE(instance->Reset());
}

// Random writes by the guest (memory.fill) and by the host, of random sizes
// at random places: after each reset the memory equals the snapshot byte
// for byte.
TEST_P(ResetTest, RandomWritePatternsComeBackByteForByte) {
  auto instance = Snapshotted();
  ASSERT_TRUE(instance);
  std::span<uint8_t> memory = instance->Memory();
  ASSERT_EQ(memory.size(), kMemoryBytes);
  std::vector<uint8_t> snapshot(memory.begin(), memory.end());
  std::mt19937 rng(11);
  for (int round = 0; round < 300; ++round) {
    const int writes = 1 + rng() % 6;
    for (int w = 0; w < writes; ++w) {
      // Mostly small writes, some up to a whole memory.
      const uint32_t max_len = rng() % 4 == 0 ? kMemoryBytes : 64 << (rng() % 10);
      const uint32_t at = rng() % kMemoryBytes;
      const uint32_t len = std::min<uint32_t>(kMemoryBytes - at, 1 + rng() % max_len);
      const uint8_t byte = 1 + rng() % 255;
      if (rng() % 2) {
        ASSERT_TRUE(Invoke(*instance, "fill", {Value::I32(at), Value::I32(len), Value::I32(byte)}));
      } else {
        std::vector<uint8_t> bytes(len, byte);
        ASSERT_TRUE(instance->WriteMemory(at, bytes));
      }
    }
    Reset(*instance);
    memory = instance->Memory();
    ASSERT_EQ(memory.size(), kMemoryBytes);
    ASSERT_EQ(std::memcmp(memory.data(), snapshot.data(), kMemoryBytes), 0) << "round " << round;
  }
  EXPECT_EQ(I32(*instance, "memory_count"), 100);
}

TEST_P(ResetTest, ManyInstancesResetIndependently) {
  std::vector<std::unique_ptr<Instance>> instances;
  for (int i = 0; i < 8; ++i) {
    instances.push_back(Snapshotted());
    ASSERT_TRUE(instances.back());
  }
  for (int round = 0; round < 5; ++round) {
    for (size_t i = 0; i < instances.size(); ++i) {
      EXPECT_EQ(I32(*instances[i], "visit", {Value::I32(static_cast<int32_t>(i + 1))}), 0);
    }
    // Reset every other one: the others keep their state.
    for (size_t i = 0; i < instances.size(); i += 2) Reset(*instances[i]);
    for (size_t i = 0; i < instances.size(); ++i) {
      const int32_t expected = i % 2 == 0 ? 0 : static_cast<int32_t>(i + 1);
      EXPECT_EQ(I32(*instances[i], "visit", {Value::I32(0)}), expected) << "instance " << i;
      Reset(*instances[i]);
    }
  }
}

// Contexts on two threads reset their instances at the same time (one
// userfaultfd and one pagemap descriptor serve the whole process).
TEST_P(ResetTest, ResetsOnSeveralThreadsAtOnce) {
  const bool track = this->track();
  auto work = [&](int seed, bool* ok) {
    auto ctx = engine().NewContext();
    if (!ctx) return;
    uint64_t tag = 0;
    auto instance = (*ctx)->Instantiate(module_, std::make_shared<Linker>(),
                                        std::make_unique<CountingHostState>(), ++tag);
    if (!instance || !(*instance)->Snapshot({.track_dirty_pages = track})) return;
    for (int i = 0; i < 300; ++i) {
      Value arg = Value::I32(seed + i);
      auto previous = (*instance)->Invoke("visit", {&arg, 1}, ++tag);
      if (!previous || (*previous)[0].i32() != 0 || !(*instance)->Reset()) return;
    }
    *ok = true;
  };
  bool ok1 = false;
  bool ok2 = false;
  std::thread t1(work, 1, &ok1);
  std::thread t2(work, 1000, &ok2);
  t1.join();
  t2.join();
  EXPECT_TRUE(ok1);
  EXPECT_TRUE(ok2);
}

INSTANTIATE_TEST_SUITE_P(
    Memory, ResetTest,
    ::testing::Combine(::testing::ValuesIn(AvailableEngines()), ::testing::Bool()),
    [](const auto& info) {
      return std::string(ToString(std::get<0>(info.param))) +
             (std::get<1>(info.param) ? "_Tracked" : "_Compared");
    });

class SnapshotRefusalTest : public ::testing::TestWithParam<EngineKind> {
 protected:
  void SetUp() override {
    auto ctx = engine().NewContext();
    ASSERT_TRUE(ctx) << ctx.error().ToString();
    ctx_ = std::move(*ctx);
  }
  Engine& engine() const { return EngineOf(GetParam()); }
  Result<void> SnapshotOf(const std::string& fixture, std::unique_ptr<HostState> host_state) {
    auto module = Compile(engine(), fixture);
    if (!module) return MakeError(ErrorCode::kInternal, "no module");
    auto instance = ctx_->Instantiate(module, std::make_shared<Linker>(), std::move(host_state), 1);
    if (!instance) return MakeError(instance.error());
    instance_ = std::move(*instance);
    return instance_->Snapshot({});
  }
  std::unique_ptr<Context> ctx_;
  std::unique_ptr<Instance> instance_;
};

TEST_P(SnapshotRefusalTest, CodeThatChangesATableIsRefused) {
  auto ok = SnapshotOf("reset_table_set", nullptr);
  ASSERT_FALSE(ok);
  EXPECT_EQ(ok.error().code, ErrorCode::kFailedPrecondition);
  EXPECT_THAT(ok.error().message, HasSubstr("its code changes tables or segments (table.set)"));
  EXPECT_FALSE(instance_->has_snapshot());
}

// keel's rewriter exports a mutable global the module keeps to itself, so
// a reset restores it too.
TEST_P(SnapshotRefusalTest, AMutableGlobalTheModuleDoesNotExportIsRestored) {
  ASSERT_TRUE(SnapshotOf("reset_hidden_global", nullptr));
  ASSERT_EQ(instance_->module().info().exports.size(), 2u) << "keel's export stays hidden";
  EXPECT_FALSE(instance_->Lookup("\x01keel:g:0"));
  for (int i = 0; i < 3; ++i) {
    auto bumped = instance_->Invoke("bump", {}, 10 + i);
    ASSERT_TRUE(bumped) << bumped.error().ToString();
    EXPECT_EQ((*bumped)[0].i32(), 1) << "call " << i << " saw the global the last call left";
    ASSERT_TRUE(instance_->Reset());
  }
}

TEST_P(SnapshotRefusalTest, AHostStateWithoutHooksIsRefused) {
  auto ok = SnapshotOf("reset_guest", std::make_unique<HostState>());
  ASSERT_FALSE(ok);
  EXPECT_THAT(ok.error().message, HasSubstr("host state cannot be reset"));
}

TEST_P(SnapshotRefusalTest, ResetWithoutASnapshotIsRefused) {
  auto module = Compile(engine(), "reset_guest");
  auto instance = ctx_->Instantiate(module, std::make_shared<Linker>(), nullptr, 2);
  ASSERT_TRUE(instance);
  auto stats = (*instance)->Reset();
  ASSERT_FALSE(stats);
  EXPECT_THAT(stats.error().message, HasSubstr("no snapshot"));
  EXPECT_TRUE((*instance)->poisoned());
}

TEST_P(SnapshotRefusalTest, AModuleWithoutMemoryResetsItsGlobalsOnly) {
  ASSERT_TRUE(SnapshotOf("engine_nomem", nullptr));
  auto stats = instance_->Reset();
  ASSERT_TRUE(stats) << stats.error().ToString();
  EXPECT_EQ(stats->memory, ResetStats::Memory::kNone);
  EXPECT_EQ(stats->pages_copied, 0u);
}

TEST_P(SnapshotRefusalTest, TheEngineResetsAndSaysWhetherItTracksPages) {
  ResetSupport support = engine().reset_support();
  EXPECT_TRUE(support.snapshots);
  // This machine (Linux 6.18, root) tracks; elsewhere the reason is given.
  EXPECT_EQ(support.dirty_page_tracking, support.detail.empty()) << support.detail;
}

INSTANTIATE_TEST_SUITE_P(Engines, SnapshotRefusalTest, ::testing::ValuesIn(AvailableEngines()),
                         [](const auto& info) { return std::string(ToString(info.param)); });

}  // namespace
}  // namespace keel::engine

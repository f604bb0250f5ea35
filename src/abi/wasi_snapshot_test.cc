// WasiContext::Snapshot and Reset through instance resets on every engine
// of the build: a call's descriptors, stdin position and output never reach
// the next call (tests/fixtures/reset_wasi.wat).
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "abi/wasi.h"
#include "abi/wasi_internal.h"
#include "base/file.h"
#include "engine/engine.h"

namespace keel::abi {
namespace {

namespace fs = std::filesystem;

// "abcd" and "efgh" as read4 returns them (little-endian).
constexpr int32_t kAbcd = 0x64636261;
constexpr int32_t kEfgh = 0x68676665;
constexpr int32_t kBadf = -static_cast<int32_t>(wasi::kBadf);

class WasiResetTest : public ::testing::TestWithParam<engine::EngineKind> {
 protected:
  void SetUp() override {
    auto engine = engine::GetEngine(GetParam());
    ASSERT_TRUE(engine) << engine.error().ToString();
    root_ = fs::temp_directory_path() / ("keel_wasi_reset_" + std::to_string(getpid()));
    fs::create_directories(root_);
    std::ofstream(root_ / "data.txt") << "abcdefgh";
    auto ctx = (*engine)->NewContext();
    ASSERT_TRUE(ctx) << ctx.error().ToString();
    ctx_ = std::move(*ctx);
    auto bytes = ReadFile(std::string(KEEL_FIXTURE_DIR) + "/reset_wasi.wasm");
    ASSERT_TRUE(bytes);
    auto module = (*engine)->Compile(*bytes);
    ASSERT_TRUE(module) << module.error().ToString();
    auto linker = std::make_shared<engine::Linker>();
    AddWasiToLinker(*linker);

    WasiConfig config;
    config.preopens.push_back({root_.string(), "/data", /*read_only=*/true});
    config.stdin_io = WasiStdio::Input("xyz1xyz2");
    config.stdout_io = WasiStdio::Capture();
    auto wasi = WasiContext::Create(config);
    ASSERT_TRUE(wasi) << wasi.error().ToString();
    auto instance = ctx_->Instantiate(*module, linker, std::move(*wasi), ++tag_);
    ASSERT_TRUE(instance) << instance.error().ToString();
    instance_ = std::move(*instance);
    auto ok = instance_->Snapshot({});
    ASSERT_TRUE(ok) << ok.error().ToString();
  }
  void TearDown() override {
    instance_.reset();
    ctx_.reset();
    fs::remove_all(root_);
  }

  WasiContext& wasi() { return *static_cast<WasiContext*>(instance_->host_state()); }

  int64_t Call(std::string_view name, std::vector<Value> args = {}) {
    auto r = instance_->Invoke(name, args, ++tag_);
    EXPECT_TRUE(r) << name << ": " << r.error().ToString();
    if (!r) return -1000;
    return (*r)[0].type() == ValType::kI64 ? (*r)[0].i64() : (*r)[0].i32();
  }
  void Reset() {
    auto stats = instance_->Reset();
    ASSERT_TRUE(stats) << stats.error().ToString();
  }

  fs::path root_;
  std::unique_ptr<engine::Context> ctx_;
  std::unique_ptr<engine::Instance> instance_;
  uint64_t tag_ = 0;
};

TEST_P(WasiResetTest, AFileOpenedInACallIsNotOpenInTheNext) {
  EXPECT_EQ(Call("open_data"), 5) << "fd 4 is the file _initialize opened";
  EXPECT_EQ(Call("read4", {Value::I32(5)}), kAbcd);
  Reset();
  EXPECT_EQ(Call("read4", {Value::I32(5)}), kBadf);
  EXPECT_EQ(Call("open_data"), 5) << "the same number as in a fresh instance";
}

TEST_P(WasiResetTest, AFileOpenAtTheSnapshotComesBackAtItsPosition) {
  EXPECT_EQ(Call("read4", {Value::I32(4)}), kAbcd);
  EXPECT_EQ(Call("read4", {Value::I32(4)}), kEfgh);
  Reset();
  EXPECT_EQ(Call("read4", {Value::I32(4)}), kAbcd);
  EXPECT_EQ(Call("close", {Value::I32(4)}), 0);
  Reset();
  EXPECT_EQ(Call("read4", {Value::I32(4)}), kAbcd) << "closed, then reopened by the reset";
  Reset();
  EXPECT_EQ(Call("read4", {Value::I32(4)}), kAbcd);
}

TEST_P(WasiResetTest, ClosedAndRenumberedDescriptorsComeBack) {
  EXPECT_EQ(Call("close", {Value::I32(3)}), 0);
  EXPECT_EQ(Call("renumber", {Value::I32(4), Value::I32(1)}), 0) << "the file over stdout";
  EXPECT_EQ(Call("prestat", {Value::I32(3)}), kBadf);
  Reset();
  EXPECT_EQ(Call("prestat", {Value::I32(3)}), 0);
  EXPECT_EQ(Call("open_data"), 5) << "the preopen works again";
  EXPECT_EQ(Call("say_hello"), 0);
  EXPECT_EQ(wasi().captured_stdout(), "hello") << "stdout is stdout again";
  EXPECT_EQ(Call("read4", {Value::I32(4)}), kAbcd);
  // Resets that find nothing changed keep working (and keep the same fds).
  for (int i = 0; i < 3; ++i) {
    Reset();
    EXPECT_EQ(Call("prestat", {Value::I32(3)}), 0);
  }
}

TEST_P(WasiResetTest, RightsDroppedInACallComeBack) {
  const int64_t preopen_rights = Call("rights", {Value::I32(3)});
  ASSERT_GT(preopen_rights, 0);
  EXPECT_EQ(Call("drop_rights", {Value::I32(3)}), 0);
  EXPECT_EQ(Call("rights", {Value::I32(3)}), 0);
  Reset();
  EXPECT_EQ(Call("rights", {Value::I32(3)}), preopen_rights);
  EXPECT_EQ(Call("open_data"), 5);
}

TEST_P(WasiResetTest, StdinPositionAndCapturedOutputComeBack) {
  EXPECT_EQ(Call("read4", {Value::I32(0)}), 0x317a7978);  // "xyz1"
  EXPECT_EQ(Call("say_hello"), 0);
  EXPECT_EQ(wasi().captured_stdout(), "hello");
  Reset();
  EXPECT_EQ(wasi().captured_stdout(), "");
  EXPECT_EQ(Call("read4", {Value::I32(0)}), 0x317a7978) << "stdin from the start again";
}

int OpenHostFds() {
  return static_cast<int>(std::distance(fs::directory_iterator("/proc/self/fd"), {}));
}

TEST_P(WasiResetTest, ResetsLeakNoHostDescriptors) {
  const int before = OpenHostFds();
  for (int i = 0; i < 50; ++i) {
    EXPECT_EQ(Call("open_data"), 5);
    EXPECT_EQ(Call("close", {Value::I32(3)}), 0);
    EXPECT_EQ(Call("close", {Value::I32(4)}), 0);
    Reset();
  }
  EXPECT_EQ(OpenHostFds(), before);
}

INSTANTIATE_TEST_SUITE_P(Engines, WasiResetTest,
                         ::testing::ValuesIn(engine::AvailableEngines()),
                         [](const auto& info) { return std::string(ToString(info.param)); });

TEST(WasiReset, ResetWithoutASnapshotIsRefused) {
  auto wasi = WasiContext::Create({});
  ASSERT_TRUE(wasi);
  auto ok = (*wasi)->Reset();
  ASSERT_FALSE(ok);
  EXPECT_EQ(ok.error().code, ErrorCode::kFailedPrecondition);
}

}  // namespace
}  // namespace keel::abi

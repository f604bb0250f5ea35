// What each engine accepts, proposal by proposal: docs/ENGINES.md's table,
// pinned. Every fixture tests/fixtures/features_<name>.wat exports "run",
// which returns a known i32 where the engine supports the proposal; where it
// does not, Compile must refuse the module with kInvalidModule and a message
// naming the cause (never accept it and fail later, never crash). A change of
// engine version or configuration that changes a row fails here first.
#include <string>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "base/file.h"
#include "engine/engine.h"

namespace keel::engine {
namespace {

using ::testing::HasSubstr;

// The outcome on one engine: the value "run" returns, or (when `refusal` is
// set) a piece of Compile's error message.
struct Outcome {
  int32_t value = 0;
  const char* refusal = nullptr;
};

struct Feature {
  const char* name;
  Outcome spidermonkey;
  Outcome wasmtime;
};

constexpr Outcome Runs(int32_t value) { return {value, nullptr}; }
constexpr Outcome Refused(const char* why) { return {0, why}; }

const Feature kFeatures[] = {
    {"multi_value", Runs(42), Runs(42)},
    {"sat_conv", Runs(2147483647), Runs(2147483647)},
    {"bulk_memory", Runs('o'), Runs('o')},
    {"reference_types", Runs(0), Runs(0)},
    {"simd", Runs(42), Runs(42)},
    // keel's byte ABI and isolation assume one memory: keel's own reader
    // refuses a second one on every engine.
    {"multi_memory", Refused("multi-memory proposal is not supported"),
     Refused("multi-memory proposal is not supported")},
    {"threads", Refused("shared memory is disabled"), Refused("threads must be enabled")},
    {"tail_call", Refused("unrecognized opcode"), Runs(1000000)},
    {"memory64", Refused("unexpected bits set in flags"), Runs(42)},
    {"extended_const", Refused("unrecognized opcode"), Runs(42)},
    {"relaxed_simd", Refused("unrecognized opcode"), Runs(3)},
    // The legacy exception proposal (try/catch), which toolchains emitted
    // until exnref; Wasmtime implements only exnref, and only with its GC.
    {"exceptions", Runs(5), Refused("exceptions proposal not enabled")},
    // Wasmtime is built without its GC (scripts/build-wasmtime), which
    // externref needs there.
    {"externref", Runs(1), Refused("requires gc")},
};

class FeaturesTest : public ::testing::TestWithParam<EngineKind> {};

TEST_P(FeaturesTest, EachProposalRunsOrIsRefusedAtCompile) {
  auto engine = GetEngine(GetParam());
  ASSERT_TRUE(engine) << engine.error().ToString();
  auto context = (*engine)->NewContext();
  ASSERT_TRUE(context) << context.error().ToString();
  auto linker = std::make_shared<Linker>();
  uint64_t tag = 0;
  for (const Feature& feature : kFeatures) {
    SCOPED_TRACE(feature.name);
    const Outcome& expected =
        GetParam() == EngineKind::kWasmtime ? feature.wasmtime : feature.spidermonkey;
    auto bytes = ReadFile(std::string(KEEL_FIXTURE_DIR) + "/features_" + feature.name + ".wasm");
    ASSERT_TRUE(bytes) << bytes.error().ToString();
    auto module = (*engine)->Compile(*bytes);
    if (expected.refusal != nullptr) {
      ASSERT_FALSE(module) << "accepted";
      EXPECT_EQ(module.error().code, ErrorCode::kInvalidModule);
      EXPECT_THAT(module.error().message, HasSubstr(expected.refusal));
      continue;
    }
    ASSERT_TRUE(module) << module.error().ToString();
    auto instance = (*context)->Instantiate(*module, linker, nullptr, ++tag);
    ASSERT_TRUE(instance) << instance.error().ToString();
    auto results = (*instance)->Invoke("run", {}, ++tag);
    ASSERT_TRUE(results) << results.error().ToString();
    ASSERT_EQ(results->size(), 1u);
    EXPECT_EQ((*results)[0].i32(), expected.value);
  }
}

std::string EngineName(const ::testing::TestParamInfo<EngineKind>& info) {
  return std::string(ToString(info.param));
}

INSTANTIATE_TEST_SUITE_P(Engines, FeaturesTest, ::testing::ValuesIn(AvailableEngines()),
                         EngineName);

}  // namespace
}  // namespace keel::engine

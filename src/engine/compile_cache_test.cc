#include "engine/compile_cache.h"

#include <gtest/gtest.h>

#include "base/file.h"
#include "base/sha256.h"

namespace keel::engine {
namespace {

std::vector<uint8_t> Fixture(const std::string& name) {
  auto bytes = ReadFile(std::string(KEEL_FIXTURE_DIR) + "/" + name + ".wasm");
  EXPECT_TRUE(bytes) << bytes.error().ToString();
  return bytes ? *bytes : std::vector<uint8_t>{};
}

class CompileCacheTest : public ::testing::TestWithParam<EngineKind> {
 protected:
  Engine& engine() { return **GetEngine(GetParam()); }
};

TEST_P(CompileCacheTest, TheSameBytesAndOptionsShareOneCompiledModule) {
  std::vector<uint8_t> bytes = Fixture("engine_basic");
  std::string digest = Sha256Hex(bytes);
  auto first = CompileCached(engine(), bytes, digest);
  auto again = CompileCached(engine(), bytes, digest);
  ASSERT_TRUE(first && again);
  EXPECT_EQ(first->get(), again->get());
  // Another cap compiles other code.
  auto capped = CompileCached(engine(), bytes, digest, {.max_memory_pages = 2});
  ASSERT_TRUE(capped);
  EXPECT_NE(first->get(), capped->get());
  EXPECT_EQ((*capped)->options().max_memory_pages, 2u);
  // Another engine never gets this engine's module.
  for (EngineKind other : AvailableEngines()) {
    if (other == GetParam()) continue;
    auto theirs = CompileCached(**GetEngine(other), bytes, digest);
    ASSERT_TRUE(theirs);
    EXPECT_NE(theirs->get(), first->get());
  }
}

TEST_P(CompileCacheTest, FailuresAreNotCachedAndTheCacheStaysBounded) {
  std::vector<uint8_t> bad = Fixture("invalid_body");
  for (int i = 0; i < 2; ++i) {
    auto module = CompileCached(engine(), bad, Sha256Hex(bad));
    ASSERT_FALSE(module);
    EXPECT_EQ(module.error().code, ErrorCode::kInvalidModule);
  }
  // Distinct modules beyond the bound: the oldest go.
  std::vector<uint8_t> base = Fixture("engine_nomem");
  for (size_t i = 0; i < kCompileCacheEntries + 8; ++i) {
    std::vector<uint8_t> bytes = base;
    // A custom section makes each module distinct without changing its code.
    std::string name = "n" + std::to_string(i);
    bytes.push_back(0);
    bytes.push_back(static_cast<uint8_t>(1 + name.size()));
    bytes.push_back(static_cast<uint8_t>(name.size()));
    bytes.insert(bytes.end(), name.begin(), name.end());
    ASSERT_TRUE(CompileCached(engine(), bytes, Sha256Hex(bytes)));
  }
  EXPECT_LE(CompileCacheSize(), kCompileCacheEntries);
}

std::string EngineName(const ::testing::TestParamInfo<EngineKind>& info) {
  return std::string(ToString(info.param));
}

INSTANTIATE_TEST_SUITE_P(Engines, CompileCacheTest, ::testing::ValuesIn(AvailableEngines()),
                         EngineName);

}  // namespace
}  // namespace keel::engine

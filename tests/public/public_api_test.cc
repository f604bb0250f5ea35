// The public API through libkeel.so alone, as an embedder uses it: this
// target sees include/keel/ and links keel::keel, nothing internal.
#include <fstream>
#include <iterator>
#include <string>
#include <type_traits>
#include <vector>

#include <gtest/gtest.h>

#include "keel/runtime.h"
#include "keel/version.h"

namespace {

using namespace std::chrono_literals;
using keel::Value;
using keel::ValType;

std::vector<uint8_t> Fixture(const std::string& name) {
  std::ifstream in(std::string(KEEL_FIXTURE_DIR) + "/" + name + ".wasm", std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

TEST(PublicApi, LibraryVersionMatchesHeaders) {
  EXPECT_EQ(keel::VersionString(), KEEL_VERSION_STRING);
  EXPECT_EQ(KEEL_VERSION,
            KEEL_MAKE_VERSION(KEEL_VERSION_MAJOR, KEEL_VERSION_MINOR, KEEL_VERSION_PATCH));
}

TEST(PublicApi, CallsAHostFunctionThroughAPool) {
  auto runtime = keel::Runtime::Create({.workers = 1});
  ASSERT_TRUE(runtime) << runtime.error().ToString();
  auto linker = std::make_shared<keel::Linker>();
  linker->Define("host", "scale", {{ValType::kI32, ValType::kI64}, {ValType::kI32}},
                 [](keel::Caller&, std::span<const Value> args, std::span<Value> results) {
                   results[0] = Value::I32(args[0].i32() * static_cast<int32_t>(args[1].i64()));
                   return keel::Result<void>{};
                 });
  auto unused = [](keel::Caller&, std::span<const Value>, std::span<Value>) {
    return keel::Result<void>{};
  };
  linker->Define("host", "divmod", {{ValType::kI32, ValType::kI32}, {ValType::kI32, ValType::kI32}},
                 unused);
  linker->Define("host", "gate", {{ValType::kI32}, {ValType::kI32}}, unused);
  auto module = (*runtime)->Compile(Fixture("public_api"), {.name = "public_api", .linker = linker});
  ASSERT_TRUE(module) << module.error().ToString();
  auto pool = (*runtime)->CreatePool(*module, {.instances = 1, .linker = linker});
  ASSERT_TRUE(pool) << pool.error().ToString();

  auto call = (*pool)->Submit("call_scale", {Value::I32(6), Value::I64(7)}, {.timeout = 10s});
  ASSERT_TRUE(call) << call.error().ToString();
  const keel::CallResult& result = call->Wait();
  ASSERT_TRUE(result) << result.error().ToString();
  EXPECT_EQ(result->values, std::vector<Value>{Value::I32(42)});
  EXPECT_EQ((*runtime)->Metrics().resolved.ok, 1u);
}

// Only Runtime::Compile makes modules: a default-constructed one would
// have nothing to instantiate.
static_assert(!std::is_default_constructible_v<keel::Module>);
static_assert(!std::is_copy_constructible_v<keel::Module>);

TEST(PublicApi, ModuleDescribesImportsAndExportsWithKindsAndTypes) {
  auto runtime = keel::Runtime::Create({.workers = 1});
  ASSERT_TRUE(runtime) << runtime.error().ToString();
  auto module = (*runtime)->Compile(Fixture("public_api"), {.name = "public_api"});
  ASSERT_TRUE(module) << module.error().ToString();

  const std::vector<keel::Module::Import>& imports = (*module)->imports();
  ASSERT_EQ(imports.size(), 3u);
  EXPECT_EQ(imports[0].module, "host");
  EXPECT_EQ(imports[0].name, "scale");
  EXPECT_EQ(imports[0].kind, keel::ExternKind::kFunc);
  EXPECT_EQ(imports[0].type, (keel::FuncType{{ValType::kI32, ValType::kI64}, {ValType::kI32}}));
  EXPECT_EQ(imports[1].type, (keel::FuncType{{ValType::kI32, ValType::kI32}, {ValType::kI32, ValType::kI32}}));

  const keel::Module::Export* memory = (*module)->FindExport("memory");
  ASSERT_NE(memory, nullptr);
  EXPECT_EQ(memory->kind, keel::ExternKind::kMemory);
  EXPECT_EQ(keel::ToString(memory->kind), "memory");
  const keel::Module::Export* add = (*module)->FindExport("add");
  ASSERT_NE(add, nullptr);
  EXPECT_EQ(add->kind, keel::ExternKind::kFunc);
  EXPECT_EQ(add->type, (keel::FuncType{{ValType::kI32, ValType::kI32}, {ValType::kI32}}));
}

// A linker built from Module::imports() alone links the module.
TEST(PublicApi, ImportsCarryWhatALinkerNeeds) {
  auto runtime = keel::Runtime::Create({.workers = 1});
  ASSERT_TRUE(runtime) << runtime.error().ToString();
  auto module = (*runtime)->Compile(Fixture("public_api"), {.name = "public_api"});
  ASSERT_TRUE(module) << module.error().ToString();
  auto linker = std::make_shared<keel::Linker>();
  for (const keel::Module::Import& import : (*module)->imports()) {
    linker->Define(import.module, import.name, import.type,
                   [](keel::Caller&, std::span<const Value>, std::span<Value> results) {
                     for (Value& r : results) r = Value::FromBits(r.type(), 0);
                     return keel::Result<void>{};
                   });
  }
  auto pool = (*runtime)->CreatePool(*module, {.instances = 1, .linker = linker});
  ASSERT_TRUE(pool) << pool.error().ToString();
  auto call = (*pool)->Submit("add", {Value::I32(2), Value::I32(3)});
  ASSERT_TRUE(call);
  ASSERT_TRUE(call->Wait()) << call->Wait().error().ToString();
  EXPECT_EQ(call->Wait()->values, std::vector<Value>{Value::I32(5)});
}

}  // namespace

// Engine-level costs on every engine of the build: a direct call of a
// trivial export, a guest-to-host call, and instantiation of modules with
// and without a linear memory and of a real C guest. On Wasmtime,
// instantiation is also measured without the pooling allocator and without
// copy-on-write memory images, to show what each contributes.
#include <benchmark/benchmark.h>

#include <functional>
#include <string>
#include <vector>

#include "base/file.h"
#include "engine/engine.h"
#if KEEL_ENGINE_WASMTIME
#include "engine/wasmtime/wt_engine.h"
#endif

namespace keel::engine {
namespace {

std::shared_ptr<const Module> Load(Engine& engine, const std::string& path) {
  auto bytes = ReadFile(path);
  if (!bytes) return nullptr;
  auto module = engine.Compile(*bytes);
  return module ? *module : nullptr;
}

std::string FixturePath(const char* name) {
  return std::string(KEEL_FIXTURE_DIR) + "/" + name + ".wasm";
}

// Host functions for every import of `module`, each failing if called:
// enough to instantiate a guest whose instantiation calls none of them.
std::shared_ptr<Linker> StubLinker(const Module& module) {
  auto linker = std::make_shared<Linker>();
  for (const ImportInfo& imp : module.info().imports) {
    linker->Define(imp.module, imp.name, imp.func,
                   [](Caller&, std::span<const Value>, std::span<Value>) -> Result<void> {
                     return MakeError(ErrorCode::kInternal, "stub import called");
                   });
  }
  return linker;
}

struct ThreadContext {
  explicit ThreadContext(Engine& engine) : ctx(std::move(*engine.NewContext())) {}
  std::unique_ptr<Context> ctx;
  uint64_t tag = 0;
};

void DirectCall(benchmark::State& state, Engine* engine) {
  ThreadContext tc(*engine);
  auto module = Load(*engine, FixturePath("engine_nomem"));
  auto instance = *tc.ctx->Instantiate(module, std::make_shared<Linker>(), nullptr, ++tc.tag);
  auto func = *instance->Lookup("add");
  Value args[2] = {Value::I32(1), Value::I32(2)};
  Value out[1];
  for (auto _ : state) {
    if (!instance->Call(func, args, out, ++tc.tag)) state.SkipWithError("call failed");
    benchmark::DoNotOptimize(out[0]);
  }
}

// One call into the guest that calls one host function (i32 x3 -> i32).
void HostCall(benchmark::State& state, Engine* engine) {
  ThreadContext tc(*engine);
  auto module = Load(*engine, FixturePath("engine_host"));
  auto linker = StubLinker(*module);
  linker->Define("host", "add3", {{ValType::kI32, ValType::kI32, ValType::kI32}, {ValType::kI32}},
                 [](Caller&, std::span<const Value> a, std::span<Value> r) -> Result<void> {
                   r[0] = Value::I32(a[0].i32() + a[1].i32() + a[2].i32());
                   return {};
                 });
  auto instance = *tc.ctx->Instantiate(module, linker, nullptr, ++tc.tag);
  auto func = *instance->Lookup("call_add3");
  Value args[3] = {Value::I32(1), Value::I32(2), Value::I32(3)};
  Value out[1];
  for (auto _ : state) {
    if (!instance->Call(func, args, out, ++tc.tag)) state.SkipWithError("call failed");
    benchmark::DoNotOptimize(out[0]);
  }
}

// Instantiation (and the drop of the previous instance, which is part of
// the cost of a fresh instance per call).
void Instantiate(benchmark::State& state, Engine* engine, std::string path) {
  ThreadContext tc(*engine);
  auto module = Load(*engine, path);
  if (!module) {
    state.SkipWithError(("cannot load " + path).c_str());
    return;
  }
  auto linker = StubLinker(*module);
  std::unique_ptr<Instance> previous;
  for (auto _ : state) {
    auto instance = tc.ctx->Instantiate(module, linker, nullptr, ++tc.tag);
    if (!instance) {
      state.SkipWithError(instance.error().ToString().c_str());
      break;
    }
    previous = std::move(*instance);
    benchmark::DoNotOptimize(previous);
  }
  previous.reset();
  tc.ctx->MaybeCollectGarbage();
}

struct EngineCase {
  std::string label;
  Engine* engine;
  bool calls;  // also measure calls (only the default configuration)
};

std::vector<EngineCase> EngineCases() {
  std::vector<EngineCase> cases;
  for (EngineKind kind : AvailableEngines()) {
    cases.push_back({std::string(ToString(kind)), *GetEngine(kind), true});
  }
#if KEEL_ENGINE_WASMTIME
  struct Variant {
    const char* label;
    WasmtimeOptions options;
  };
  for (const Variant& v : {Variant{"wasmtime-pool-nocow", {.memory_init_cow = false}},
                           Variant{"wasmtime-ondemand", {.pooling_allocator = false}},
                           Variant{"wasmtime-ondemand-nocow",
                                   {.pooling_allocator = false, .memory_init_cow = false}}}) {
    auto engine = NewWasmtimeEngine(v.options);
    if (engine) cases.push_back({v.label, engine->release(), false});  // lives until exit
  }
#endif
  return cases;
}

void RegisterAll() {
  const std::string guest = std::string(KEEL_GUEST_DIR) + "/json_transform.wasm";
  for (const EngineCase& c : EngineCases()) {
    if (c.calls) {
      benchmark::RegisterBenchmark(("DirectCall/" + c.label).c_str(), DirectCall, c.engine);
      benchmark::RegisterBenchmark(("HostCall/" + c.label).c_str(), HostCall, c.engine);
    }
    benchmark::RegisterBenchmark(("InstantiateNoMemory/" + c.label).c_str(), Instantiate, c.engine,
                                 FixturePath("engine_nomem"));
    benchmark::RegisterBenchmark(("InstantiateWithMemory/" + c.label).c_str(), Instantiate,
                                 c.engine, FixturePath("engine_basic"));
    benchmark::RegisterBenchmark(("InstantiateCGuest/" + c.label).c_str(), Instantiate, c.engine,
                                 guest);
  }
}

}  // namespace
}  // namespace keel::engine

int main(int argc, char** argv) {
  keel::engine::RegisterAll();
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}

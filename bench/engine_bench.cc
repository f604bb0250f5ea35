// Engine-level costs: a direct call of a trivial export, and instantiation
// with and without a linear memory.
#include <benchmark/benchmark.h>

#include "base/file.h"
#include "engine/engine.h"

namespace keel::engine {
namespace {

std::shared_ptr<const Module> Load(const char* name) {
  auto bytes = ReadFile(std::string(KEEL_FIXTURE_DIR) + "/" + name + ".wasm");
  if (!bytes) return nullptr;
  auto module = DefaultEngine().Compile(*bytes);
  return module ? *module : nullptr;
}

struct ThreadContext {
  std::unique_ptr<Context> ctx = std::move(*DefaultEngine().NewContext());
  uint64_t tag = 0;
};

void BM_DirectCall(benchmark::State& state) {
  ThreadContext tc;
  auto instance = *tc.ctx->Instantiate(Load("engine_nomem"), std::make_shared<Linker>(), nullptr, ++tc.tag);
  auto func = *instance->Lookup("add");
  Value args[2] = {Value::I32(1), Value::I32(2)};
  Value out[1];
  for (auto _ : state) {
    if (!instance->Call(func, args, out, ++tc.tag)) state.SkipWithError("call failed");
    benchmark::DoNotOptimize(out[0]);
  }
}
BENCHMARK(BM_DirectCall);

void Instantiate(benchmark::State& state, const char* fixture) {
  ThreadContext tc;
  auto module = Load(fixture);
  auto linker = std::make_shared<Linker>();
  for (auto _ : state) {
    auto instance = tc.ctx->Instantiate(module, linker, nullptr, ++tc.tag);
    if (!instance) state.SkipWithError("instantiate failed");
    benchmark::DoNotOptimize(instance);
    state.PauseTiming();
    instance->reset();
    tc.ctx->MaybeCollectGarbage();
    state.ResumeTiming();
  }
}
void BM_InstantiateNoMemory(benchmark::State& state) { Instantiate(state, "engine_nomem"); }
void BM_InstantiateWithMemory(benchmark::State& state) { Instantiate(state, "engine_basic"); }
BENCHMARK(BM_InstantiateNoMemory);
BENCHMARK(BM_InstantiateWithMemory);

}  // namespace
}  // namespace keel::engine

BENCHMARK_MAIN();

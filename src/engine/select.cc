// Engine selection: which backends this build has, and the process-wide
// engine of each.
#include <array>

#include "engine/engine.h"
#include "engine/spidermonkey/sm_engine.h"
#if KEEL_ENGINE_WASMTIME
#include "engine/wasmtime/wt_engine.h"
#endif

namespace keel::engine {

std::span<const EngineKind> AvailableEngines() {
#if KEEL_ENGINE_WASMTIME
  static constexpr std::array kEngines = {EngineKind::kSpiderMonkey, EngineKind::kWasmtime};
#else
  static constexpr std::array kEngines = {EngineKind::kSpiderMonkey};
#endif
  return kEngines;
}

Result<Engine*> GetEngine(EngineKind kind) {
  switch (kind) {
    case EngineKind::kSpiderMonkey: return &SpiderMonkeyEngine();
    case EngineKind::kWasmtime:
#if KEEL_ENGINE_WASMTIME
      return &WasmtimeEngine();
#else
      return MakeError(ErrorCode::kUnavailable,
                       "this build of keel has no Wasmtime engine (configure with "
                       "-DKEEL_ENGINE_WASMTIME=ON after scripts/build-wasmtime)");
#endif
  }
  return MakeError(ErrorCode::kInvalidArgument, "unknown engine kind");
}

Engine& DefaultEngine() { return SpiderMonkeyEngine(); }

}  // namespace keel::engine

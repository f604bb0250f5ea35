// The Wasmtime backend's entry points. No Wasmtime type appears here.
#ifndef KEEL_ENGINE_WASMTIME_WT_ENGINE_H_
#define KEEL_ENGINE_WASMTIME_WT_ENGINE_H_

#include <cstdint>
#include <memory>

#include "engine/engine.h"

namespace keel::engine {

struct WasmtimeOptions {
  // Instances live in preallocated slots (virtual memory reserved once per
  // engine, 4 GiB + guard per memory slot) and their memories are mapped
  // copy-on-write from each module's image; instantiation then costs
  // microseconds. Off: every instance maps its own memory.
  bool pooling_allocator = true;
  // Live instances (and memories, and tables) of the pool; instantiating
  // beyond it fails with kResourceExhausted.
  uint32_t pool_slots = 1000;
  // Linear memory starts as a copy-on-write mapping of the module's data
  // segments instead of being written segment by segment.
  bool memory_init_cow = true;
};

// The process-wide Wasmtime engine with the default options, started on
// first use; never destroyed.
Engine& WasmtimeEngine();

// A separate engine, e.g. to compare allocation strategies. Its modules,
// contexts and instances keep what they need of it alive.
[[nodiscard]] Result<std::unique_ptr<Engine>> NewWasmtimeEngine(const WasmtimeOptions& options);

}  // namespace keel::engine

#endif  // KEEL_ENGINE_WASMTIME_WT_ENGINE_H_

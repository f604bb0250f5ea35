// libFuzzer target: arbitrary bytes through module loading. keel's reader
// must never crash, and whatever it accepts goes on to the engine's own
// validation and compilation, which must give a value, not a crash.
#include <cstddef>
#include <cstdint>
#include <span>

#include "engine/engine.h"
#include "engine/module_info.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::span<const uint8_t> bytes(data, size);
  auto info = keel::engine::ReadModuleInfo(bytes);
  if (!info) return 0;
  (void)keel::engine::CapMemory(bytes, 16);  // the rewriter, memory cap only
  auto module = keel::engine::DefaultEngine().Compile(bytes, {.max_memory_pages = 16});
  (void)module;
  return 0;
}

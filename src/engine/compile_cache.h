// A process-wide cache of recently compiled modules, so that compiling the
// same bytes again costs a lookup: a module uploaded again, a service
// restarted in the same process, a pool replaced with the same code. An
// optimizing compiler (Cranelift) takes seconds on a large guest, and a
// compiled module is immutable and shareable, so nothing is lost by sharing
// it. Bounded; the least recently used entries go first.
#ifndef KEEL_ENGINE_COMPILE_CACHE_H_
#define KEEL_ENGINE_COMPILE_CACHE_H_

#include <cstddef>
#include <memory>
#include <span>
#include <string>

#include "engine/engine.h"

namespace keel::engine {

// Bounds of the process-wide cache: the sum of the cached modules' byte
// sizes (the compiled code is a few times larger) and their number.
inline constexpr size_t kCompileCacheBytes = size_t{32} << 20;
inline constexpr size_t kCompileCacheEntries = 256;

// engine.Compile(bytes, options), through the cache. `digest` is the bytes'
// SHA-256 (hex), which the caller has already computed. Failures are not
// cached. Thread-safe.
[[nodiscard]] Result<std::shared_ptr<const Module>> CompileCached(Engine& engine,
                                                                  std::span<const uint8_t> bytes,
                                                                  const std::string& digest,
                                                                  const CompileOptions& options = {});

// Modules the cache holds now (for tests).
size_t CompileCacheSize();

}  // namespace keel::engine

#endif  // KEEL_ENGINE_COMPILE_CACHE_H_

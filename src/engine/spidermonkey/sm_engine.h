// The SpiderMonkey backend's entry point, and what only it offers beyond
// engine.h: compiling with the
// rewriter's optional capabilities (module_rewrite.h: mutable globals
// exported, memory.grow charged to a grant, code scanned), and reaching the
// globals they export. For tests and for wiring those capabilities into
// keel; no SpiderMonkey type appears here.
#ifndef KEEL_ENGINE_SPIDERMONKEY_SM_ENGINE_H_
#define KEEL_ENGINE_SPIDERMONKEY_SM_ENGINE_H_

#include <memory>
#include <span>
#include <string_view>

#include "engine/engine.h"
#include "engine/module_rewrite.h"

namespace keel::engine {

// The process-wide SpiderMonkey engine, started on first use; never
// destroyed (SpiderMonkey cannot start again after shutting down).
Engine& SpiderMonkeyEngine();

}  // namespace keel::engine

namespace keel::engine::sm {

// SpiderMonkeyEngine().Compile with `extra` on top of the rewrites the backend
// always applies (its memory cap, names and float options are overridden).
[[nodiscard]] Result<std::shared_ptr<const Module>> CompileRewritten(
    std::span<const uint8_t> bytes, const CompileOptions& options, RewriteOptions extra);

// What the rewriter did to a module this backend compiled; nullptr for a
// module of another engine.
const RewriteResult* RewriteOf(const Module& module);

// SpiderMonkey's own verdict on the bytes exactly as given: no reading by
// keel, no rewriting, no memory cap.
[[nodiscard]] Result<void> CompileUnrewritten(std::span<const uint8_t> bytes);

// The numeric global the compiled module exports as `export_name` (a name
// in RewriteResult, e.g. GlobalExport::name or grant_export). Floats pass as
// JS numbers: a NaN's payload is not kept. kNotFound when there is none.
[[nodiscard]] Result<Value> GetGlobal(Instance& instance, std::string_view export_name,
                                      ValType type);
[[nodiscard]] Result<void> SetGlobal(Instance& instance, std::string_view export_name,
                                     const Value& value);

}  // namespace keel::engine::sm

#endif  // KEEL_ENGINE_SPIDERMONKEY_SM_ENGINE_H_

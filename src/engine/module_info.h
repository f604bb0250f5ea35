// What a WebAssembly module declares, read from its bytes by keel itself
// (engines do not expose import and export signatures).
#ifndef KEEL_ENGINE_MODULE_INFO_H_
#define KEEL_ENGINE_MODULE_INFO_H_

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "keel/status.h"
#include "keel/value.h"

namespace keel::engine {

enum class ExternKind : uint8_t { kFunc, kTable, kMemory, kGlobal, kTag };

struct Limits {
  uint64_t min = 0;
  std::optional<uint64_t> max;
};

// A function whose signature uses a value type keel cannot pass (v128,
// funcref, externref, ...) is still a valid import or export: it is recorded
// with func_supported = false and an empty `func`; `signature` still says
// what it is. keel refuses to call it or to bind a host function to it;
// everything else about the module works.
//
// Names are exactly as in the module (any UTF-8, including "" and NUL);
// print them with QuoteName (base/names.h).
struct ImportInfo {
  std::string module;
  std::string name;
  ExternKind kind = ExternKind::kFunc;
  FuncType func;        // kind == kFunc
  bool func_supported = true;  // kind == kFunc; see above
  std::string signature;       // kind == kFunc: "(v128) -> (funcref)"
  Limits limits;        // kind == kMemory or kTable
};

struct ExportInfo {
  std::string name;
  ExternKind kind = ExternKind::kFunc;
  uint32_t index = 0;   // index in the kind's index space
  FuncType func;        // kind == kFunc
  bool func_supported = true;  // kind == kFunc; see ImportInfo
  std::string signature;       // kind == kFunc; see ImportInfo
  Limits limits;        // kind == kMemory or kTable
};

struct ModuleInfo {
  std::vector<ImportInfo> imports;
  std::vector<ExportInfo> exports;
  // The module's own (not imported) memory, if it defines one.
  std::optional<Limits> memory;
  bool has_start = false;

  const ExportInfo* FindExport(std::string_view name) const;
  const ExportInfo* FindFuncExport(std::string_view name) const;
};

// "func (i32) -> (i32)", "memory 1..16 pages", "table 2..", "global", "tag".
std::string Describe(ExternKind kind, const FuncType& func, const Limits& limits);
// The same, with the real signature of functions keel cannot call:
// "func (v128) -> (funcref)".
std::string Describe(const ImportInfo& import);
std::string Describe(const ExportInfo& export_info);

// Reads the sections keel needs (types, imports, functions, tables, memories,
// globals, exports, start). Returns kInvalidModule naming the first problem
// (bad magic, truncation, section out of order, index out of range, ...).
// Full validation of code bodies is left to the engine. Accepts the
// encodings of the common proposals (multi-value, reference types, bulk
// memory, SIMD, threads' shared memories, memory64, exceptions' tags) but at
// most one memory in all (no multi-memory). Names starting with "\x01keel:"
// are refused: keel's rewriter (module_rewrite.h) reserves them.
[[nodiscard]] Result<ModuleInfo> ReadModuleInfo(std::span<const uint8_t> bytes);

// Returns a copy of `bytes` whose defined memory has maximum
// min(declared max, max_pages). kResourceExhausted if its minimum is already
// above max_pages. Unchanged copy when the module defines no memory.
// (RewriteModule with only max_memory_pages set; in module_rewrite.cc.)
[[nodiscard]] Result<std::vector<uint8_t>> CapMemory(std::span<const uint8_t> bytes,
                                                     uint32_t max_pages);

}  // namespace keel::engine

#endif  // KEEL_ENGINE_MODULE_INFO_H_

// keel's module rewriter: decodes every instruction of a module's code and
// re-encodes the sections it changes, so that an engine backend can compile
// a module slightly different from the one it was given while keel still
// shows the original (names, signatures, indices, code offsets).
//
// What it can do (each an option; see RewriteOptions):
//  - cap the defined memory's maximum;
//  - rename exports and imports an engine cannot take (SpiderMonkey 102
//    compares names as C strings: "a" and "a\0b" clash) to reserved names;
//  - add, for each exported function with f32/f64 in its signature, an
//    exported wrapper that takes and returns their bit patterns as i32/i64,
//    so that no float crosses a JS boundary (which canonicalises NaNs);
//  - pass host imports with f32/f64 by bits too: the import gets the bits
//    type and a defined wrapper with the original type takes its place in
//    every call, ref.func (in code, globals, tables), element segment and
//    export (no renumbering: the import keeps its index);
//  - export every mutable global (reserved names for the unexported);
//  - route every memory.grow through an appended function that charges a
//    grant held in an exported mutable global (and export the memory when
//    the module does not, so that the host can see its size);
//  - report which table- and segment-mutating instructions the code holds.
//
// Reserved names start with "\x01keel:" (wasm::kReservedPrefix); modules that
// use that prefix themselves are refused by ReadModuleInfo. Function indices
// of the original module are kept (appended functions come after them), so
// the name section and backtraces stay right. Whenever something is
// appended, every function, type and global index in the code is checked
// against the original's counts: an out-of-range index must not become a
// reference to keel's additions.
#ifndef KEEL_ENGINE_MODULE_REWRITE_H_
#define KEEL_ENGINE_MODULE_REWRITE_H_

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "engine/module_info.h"
#include "keel/status.h"
#include "keel/value.h"

namespace keel::engine {

// ---------------------------------------------------------------------------
// Instruction decoding

// What the first index immediate of an instruction refers to.
enum class IndexKind : uint8_t {
  kNone,
  kFunction,  // call, return_call, ref.func
  kType,      // call_indirect, return_call_indirect, call_ref, block types
  kGlobal,
  kLocal,
  kLabel,
  kTable,
  kMemory,
  kData,
  kElem,
  kTag,
};

// One instruction of a function body or constant expression.
struct Instruction {
  size_t begin = 0;    // offset of its first byte in the module
  size_t end = 0;      // just past its immediates
  uint8_t opcode = 0;  // the first byte: an opcode, or a prefix 0xfb..0xfe
  uint32_t sub = 0;    // after a prefix: the LEB128 sub-opcode
  // The first index immediate where there is one, what it indexes, and
  // the offset of its LEB128.
  IndexKind kind = IndexKind::kNone;
  uint32_t index = 0;
  size_t index_at = 0;
};

// The instructions of every function body, in order (locals skipped).
// kInvalidModule naming the offset of an opcode keel does not know, or of a
// body that does not end where its size says. Covers everything
// SpiderMonkey 102 accepts: MVP, sign extension, saturating conversions,
// multi-value, reference types, bulk memory, SIMD (and relaxed SIMD),
// threads' atomics, exceptions (try/catch/delegate), tail calls.
[[nodiscard]] Result<std::vector<std::vector<Instruction>>> DecodeBodies(
    std::span<const uint8_t> module);

// ---------------------------------------------------------------------------
// Rewriting

struct RewriteOptions {
  // Cap the defined memory's maximum at this many pages (kResourceExhausted
  // when its minimum is above it).
  std::optional<uint32_t> max_memory_pages;
  // Rename exports named "" or containing NUL, and imports whose module or
  // name is "" or contains NUL.
  bool rename_names = false;
  // Exported wrappers passing f32/f64 of exported functions by bits.
  bool float_bits_exports = false;
  // Host imports with f32/f64 take and return bits (see above).
  bool float_bits_imports = false;
  // Export every mutable global (issue 11's snapshots need them all).
  bool export_mutable_globals = false;
  // Route memory.grow through a grant; the grant's initial value in pages.
  std::optional<uint32_t> grow_grant;
  // Decode the code even when no option needs it, to fill CodeFeatures.
  bool scan_code = false;
};

// How keel reaches one export of the original module in the rewritten one.
struct RewrittenExport {
  std::string name;   // its name in the rewritten module
  // Exported functions: the name of the export to call, and whether it
  // takes and returns f32/f64 as i32/i64 bit patterns.
  std::string call_name;
  bool bits = false;
};

// How the rewritten module names one import of the original.
struct RewrittenImport {
  std::string module;
  std::string name;
  bool bits = false;  // its f32/f64 are passed as i32/i64 bit patterns
};

// A mutable global and the export that reaches it.
struct GlobalExport {
  uint32_t index = 0;           // in the global index space
  std::string name;             // export name in the rewritten module
  std::optional<ValType> type;  // nullopt for v128 and references
  bool reserved = false;        // exported by keel, not by the module
};

// Instructions that change state a snapshot must track.
struct CodeFeatures {
  bool scanned = false;  // false: the code was not decoded, nothing is known
  bool table_set = false;
  bool table_grow = false;
  bool table_fill = false;
  bool table_copy = false;
  bool table_init = false;
  bool elem_drop = false;
  bool data_drop = false;
  bool memory_init = false;
  bool memory_grow = false;
  // Any of the table and segment ones.
  bool MutatesTablesOrSegments() const {
    return table_set || table_grow || table_fill || table_copy || table_init || elem_drop ||
           data_drop || memory_init;
  }
};

struct RewriteResult {
  std::vector<uint8_t> bytes;
  std::vector<RewrittenExport> exports;  // by original export index
  std::vector<RewrittenImport> imports;  // by original import index
  std::vector<GlobalExport> globals;     // with export_mutable_globals
  // With grow_grant and a memory: the mutable global holding the grant
  // (i32; i64 for a 64-bit memory).
  std::optional<std::string> grant_export;
  // With grow_grant and a memory the module does not export: keel's export
  // of it.
  std::optional<std::string> memory_export;
  CodeFeatures features;
  // Functions of the original module; higher indices are keel's wrappers.
  uint32_t original_functions = 0;

  // The offset in the original module of byte `offset` of the rewritten one;
  // nullopt for bytes keel added.
  std::optional<uint64_t> OriginalOffset(uint64_t offset) const;

  // Runs of bytes [out_begin, next run's out_begin) copied from the input
  // at in_begin, or written in place of the input at in_begin (an
  // instruction or index keel replaced); kAdded: bytes that stand for
  // nothing in the input (keel's own sections and functions).
  static constexpr uint64_t kAdded = ~uint64_t{0};
  struct Run {
    uint64_t out_begin;
    uint64_t in_begin;
  };
  std::vector<Run> runs;
};

inline constexpr char kGrantExport[] = "\x01keel:grant";
inline constexpr char kMemoryExport[] = "\x01keel:memory";

// Applies `options` to `bytes`. kInvalidModule when the module cannot be
// read or its code cannot be decoded (needed only by the options that touch
// code, or scan_code); kResourceExhausted for a memory minimum above the cap.
[[nodiscard]] Result<RewriteResult> RewriteModule(std::span<const uint8_t> bytes,
                                                  const RewriteOptions& options);

// Why a snapshot cannot cover an instance of code with `code`'s features:
// "its code changes tables or segments (table.set, data.drop)", or "its
// code was not scanned"; nullopt when a reset of memory and globals is
// enough. Every engine backend refuses snapshots for the same reasons.
std::optional<std::string> CodeResetBlocker(const CodeFeatures& code);

// ReadModuleInfo for rewritten modules (reserved names allowed).
[[nodiscard]] Result<ModuleInfo> ReadRewrittenModuleInfo(std::span<const uint8_t> bytes);

}  // namespace keel::engine

#endif  // KEEL_ENGINE_MODULE_REWRITE_H_

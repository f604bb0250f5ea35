// The WebAssembly binary format as keel's own module reader
// (module_info.cc) and rewriter (module_rewrite.cc) share it: a bounds-
// checked byte reader with LEB128, encoders, section ids, value types, and
// the parsed layout of a module. Internal to src/engine.
#ifndef KEEL_ENGINE_WASM_BINARY_H_
#define KEEL_ENGINE_WASM_BINARY_H_

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "engine/module_info.h"
#include "keel/status.h"
#include "keel/value.h"

namespace keel::engine::wasm {

// Declare `var` from a Result or return its error (for functions returning
// Result<...>).
#define KEEL_WASM_TRY(var, expr)                                             \
  auto var##_result = (expr);                                                \
  if (!var##_result) return tl::unexpected(std::move(var##_result).error()); \
  auto var = *std::move(var##_result)

#define KEEL_WASM_TRY_VOID(expr)                                             \
  do {                                                                       \
    auto try_result = (expr);                                                \
    if (!try_result) return tl::unexpected(std::move(try_result).error());   \
  } while (0)

inline constexpr size_t kHeaderSize = 8;
inline constexpr uint64_t kMaxPages32 = 65536;              // 4 GiB
inline constexpr uint64_t kMaxPages64 = uint64_t{1} << 48;  // 2^64 bytes

enum SectionId : uint8_t {
  kCustomSection = 0,
  kTypeSection = 1,
  kImportSection = 2,
  kFunctionSection = 3,
  kTableSection = 4,
  kMemorySection = 5,
  kGlobalSection = 6,
  kExportSection = 7,
  kStartSection = 8,
  kElementSection = 9,
  kCodeSection = 10,
  kDataSection = 11,
  kDataCountSection = 12,
  kTagSection = 13,
};

const char* SectionName(uint8_t id);
// The order the spec requires (ids are not in order: tag and datacount came
// later and sit between older sections); 0 for custom and unknown ids.
int SectionRank(uint8_t id);
// "section 10 (code)".
std::string SectionLabel(uint8_t id);

std::string Hex(uint64_t value);
std::string ByteHex(uint8_t value);

tl::unexpected<Error> Invalid(std::string_view context, size_t at, std::string_view what);

// Reads bytes [pos, end) of a module. Offsets in errors are absolute, so
// that they match what `wasm-objdump` and hex editors show.
class Reader {
 public:
  Reader(std::span<const uint8_t> bytes, size_t pos, size_t end, std::string context)
      : bytes_(bytes), pos_(pos), end_(end), context_(std::move(context)) {}

  size_t pos() const { return pos_; }
  size_t end() const { return end_; }
  size_t remaining() const { return end_ - pos_; }
  bool AtEnd() const { return pos_ == end_; }
  std::optional<uint8_t> Peek() const {
    if (pos_ >= end_) return std::nullopt;
    return bytes_[pos_];
  }
  std::span<const uint8_t> bytes() const { return bytes_; }

  // Out of line and cold, so that the decoding functions that may fail
  // keep small stack frames.
  [[gnu::cold, gnu::noinline]] tl::unexpected<Error> Fail(size_t at, std::string_view what) const;

  // The one-byte cases inline: decoding code is mostly those.
  Result<uint8_t> U8() {
    if (pos_ < end_) [[likely]] return bytes_[pos_++];
    return Fail(pos_, "truncated");
  }
  Result<void> Skip(uint64_t n);
  void SkipRest() { pos_ = end_; }
  Result<uint32_t> U32() {
    if (pos_ < end_ && bytes_[pos_] < 0x80) [[likely]] return bytes_[pos_++];
    return U32Slow();
  }
  Result<uint64_t> U64();
  Result<int64_t> S33();
  Result<int32_t> S32();
  Result<int64_t> S64();
  Result<void> SkipS32() { return S32().map([](int32_t) {}); }
  Result<void> SkipS64() { return S64().map([](int64_t) {}); }
  // A vector length. Every element takes at least one byte, so a count
  // above the bytes left is wrong and must not size any allocation.
  Result<uint32_t> Count(std::string_view what);
  // A length-prefixed UTF-8 name.
  Result<std::string> Name();

 private:
  Result<uint32_t> U32Slow();
  template <int N, bool kSigned>
  Result<uint64_t> Leb();

  std::span<const uint8_t> bytes_;
  size_t pos_;
  size_t end_;
  std::string context_;
};

// Encoders, appending to `out`.
void PutU32(std::vector<uint8_t>& out, uint64_t value);  // unsigned LEB128
void PutS64(std::vector<uint8_t>& out, int64_t value);   // signed LEB128
void PutName(std::vector<uint8_t>& out, std::string_view name);

// A value type as written: its code, and for (ref null ht) / (ref ht) its
// heap type (negative: an abstract type given by its code as s33).
struct WasmType {
  uint8_t code = 0;
  int64_t heap = 0;
  friend bool operator==(const WasmType&, const WasmType&) = default;
};

inline constexpr uint8_t kI32Code = 0x7f;
inline constexpr uint8_t kI64Code = 0x7e;
inline constexpr uint8_t kF32Code = 0x7d;
inline constexpr uint8_t kF64Code = 0x7c;

Result<WasmType> ReadWasmType(Reader& r);
// The keel value type, if the type is numeric.
std::optional<ValType> ToValType(WasmType type);
uint8_t ValTypeCode(ValType type);
// "i32", "v128", "funcref", "(ref null 3)", ...
std::string TypeName(WasmType type);

struct TypeEntry {
  FuncType func;               // numeric types only; empty unless supported
  bool supported = true;       // every parameter and result is numeric
  std::string text;            // "(v128) -> (funcref)", always set
};

struct SectionRange {
  uint8_t id = 0;
  size_t begin = 0;           // the id byte
  size_t payload_begin = 0;   // after the size
  size_t end = 0;
};

struct ImportEntry {
  size_t begin = 0;       // the module name's length
  size_t desc_begin = 0;  // the kind byte
  size_t end = 0;
  uint32_t type_index = 0;  // kind == kFunc
};

struct GlobalEntry {
  WasmType type;
  bool mutable_ = false;
  bool imported = false;
  size_t init_begin = 0;  // defined globals: the init expression [begin, end)
  size_t init_end = 0;
};

struct BodyRange {
  size_t begin = 0;       // the size LEB
  size_t body_begin = 0;  // the local declarations
  size_t end = 0;
};

// Everything keel's reader records about a module.
struct ParsedModule {
  ModuleInfo info;
  std::vector<SectionRange> sections;  // in file order, custom sections included
  std::vector<TypeEntry> types;
  std::vector<ImportEntry> import_entries;  // parallel to info.imports
  std::vector<uint32_t> func_types;         // function index space -> type index
  uint32_t imported_funcs = 0;
  uint32_t defined_funcs = 0;
  std::vector<Limits> tables;   // table index space
  std::vector<Limits> memories;  // memory index space
  bool memory_imported = false;
  uint8_t memory_flags = 0;  // of the memory, defined or imported
  std::vector<GlobalEntry> globals;  // global index space
  uint64_t tags = 0;
  std::optional<uint32_t> start;
  std::vector<BodyRange> bodies;
  std::optional<uint32_t> data_count;   // from the datacount section
  std::optional<uint32_t> data_segments;
  std::optional<uint32_t> elem_segments;

  const SectionRange* Section(uint8_t id) const;
  bool memory64() const { return memory_flags & 0x04; }
};

// Export and import names that start with this are keel's own (the
// rewriter's): a module that uses it is refused.
inline constexpr std::string_view kReservedPrefix = "\x01keel:";

struct ParseOptions {
  // Accept names with kReservedPrefix (for reading rewritten modules back).
  bool allow_reserved_names = false;
};

// Reads the sections (types, imports, functions, tables, memories, globals,
// exports, start, framing of elements, code and data). Returns kInvalidModule
// naming the first problem. Code bodies are framed, not decoded.
[[nodiscard]] Result<ParsedModule> ParseModule(std::span<const uint8_t> bytes,
                                               ParseOptions options = {});

}  // namespace keel::engine::wasm

#endif  // KEEL_ENGINE_WASM_BINARY_H_

#include "engine/module_info.h"

#include <algorithm>
#include <cinttypes>
#include <cstdio>
#include <string_view>
#include <unordered_set>
#include <utility>

namespace keel::engine {

namespace {

constexpr uint8_t kMagic[4] = {0x00, 0x61, 0x73, 0x6d};
constexpr size_t kHeaderSize = 8;
constexpr uint64_t kMaxPages32 = 65536;              // 4 GiB
constexpr uint64_t kMaxPages64 = uint64_t{1} << 48;  // 2^64 bytes

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

const char* SectionName(uint8_t id) {
  switch (id) {
    case kCustomSection: return "custom";
    case kTypeSection: return "type";
    case kImportSection: return "import";
    case kFunctionSection: return "function";
    case kTableSection: return "table";
    case kMemorySection: return "memory";
    case kGlobalSection: return "global";
    case kExportSection: return "export";
    case kStartSection: return "start";
    case kElementSection: return "element";
    case kCodeSection: return "code";
    case kDataSection: return "data";
    case kDataCountSection: return "datacount";
    case kTagSection: return "tag";
  }
  return nullptr;
}

// The order the spec requires; ids are not in order (tag and datacount came
// later and sit between older sections).
int SectionRank(uint8_t id) {
  switch (id) {
    case kTypeSection: return 1;
    case kImportSection: return 2;
    case kFunctionSection: return 3;
    case kTableSection: return 4;
    case kMemorySection: return 5;
    case kTagSection: return 6;
    case kGlobalSection: return 7;
    case kExportSection: return 8;
    case kStartSection: return 9;
    case kElementSection: return 10;
    case kDataCountSection: return 11;
    case kCodeSection: return 12;
    case kDataSection: return 13;
  }
  return 0;
}

std::string SectionLabel(uint8_t id) {
  std::string label = "section " + std::to_string(id);
  if (const char* name = SectionName(id)) label += std::string(" (") + name + ")";
  return label;
}

std::string Hex(uint64_t value) {
  char buf[24];
  std::snprintf(buf, sizeof buf, "0x%" PRIx64, value);
  return buf;
}

std::string ByteHex(uint8_t value) {
  char buf[8];
  std::snprintf(buf, sizeof buf, "0x%02x", value);
  return buf;
}

bool IsValidUtf8(std::string_view text) {
  size_t i = 0;
  while (i < text.size()) {
    uint8_t c = static_cast<uint8_t>(text[i]);
    if (c < 0x80) {
      ++i;
      continue;
    }
    size_t length;
    uint32_t code_point;
    uint32_t min_code_point;
    if ((c & 0xe0) == 0xc0) {
      length = 2, code_point = c & 0x1f, min_code_point = 0x80;
    } else if ((c & 0xf0) == 0xe0) {
      length = 3, code_point = c & 0x0f, min_code_point = 0x800;
    } else if ((c & 0xf8) == 0xf0) {
      length = 4, code_point = c & 0x07, min_code_point = 0x10000;
    } else {
      return false;
    }
    if (text.size() - i < length) return false;
    for (size_t k = 1; k < length; ++k) {
      uint8_t d = static_cast<uint8_t>(text[i + k]);
      if ((d & 0xc0) != 0x80) return false;
      code_point = (code_point << 6) | (d & 0x3f);
    }
    // Overlong forms, UTF-16 surrogates and values past Unicode are invalid.
    if (code_point < min_code_point || code_point > 0x10ffff ||
        (code_point >= 0xd800 && code_point <= 0xdfff)) {
      return false;
    }
    i += length;
  }
  return true;
}

tl::unexpected<Error> Invalid(std::string_view context, size_t at, std::string_view what) {
  return MakeError(ErrorCode::kInvalidModule, std::string(context) + " at offset " + Hex(at) +
                                                  ": " + std::string(what));
}

// Reads bytes [pos, end) of a module. Offsets in errors are absolute, so
// that they match what `wasm-objdump` and hex editors show.
class Reader {
 public:
  Reader(std::span<const uint8_t> bytes, size_t pos, size_t end, std::string context)
      : bytes_(bytes), pos_(pos), end_(end), context_(std::move(context)) {}

  size_t pos() const { return pos_; }
  size_t remaining() const { return end_ - pos_; }
  bool AtEnd() const { return pos_ == end_; }
  std::optional<uint8_t> Peek() const {
    if (pos_ >= end_) return std::nullopt;
    return bytes_[pos_];
  }

  tl::unexpected<Error> Fail(size_t at, std::string_view what) const {
    return Invalid(context_, at, what);
  }

  Result<uint8_t> U8() {
    if (pos_ >= end_) return Fail(pos_, "truncated");
    return bytes_[pos_++];
  }

  Result<void> Skip(uint64_t n) {
    if (n > remaining()) {
      return Fail(pos_, "truncated (" + std::to_string(n) + " bytes needed, " +
                            std::to_string(remaining()) + " left)");
    }
    pos_ += n;
    return {};
  }
  void SkipRest() { pos_ = end_; }

  Result<uint32_t> U32() {
    auto v = Leb<32, false>();
    if (!v) return tl::unexpected(v.error());
    return static_cast<uint32_t>(*v);
  }
  Result<uint64_t> U64() { return Leb<64, false>(); }
  Result<int64_t> S33() {
    auto v = Leb<33, true>();
    if (!v) return tl::unexpected(v.error());
    return static_cast<int64_t>(*v);
  }
  Result<void> SkipS32() { return Leb<32, true>().map([](uint64_t) {}); }
  Result<void> SkipS64() { return Leb<64, true>().map([](uint64_t) {}); }

  // A vector length. Every element takes at least one byte, so a count
  // above the bytes left is wrong and must not size any allocation.
  Result<uint32_t> Count(std::string_view what) {
    size_t at = pos_;
    auto count = U32();
    if (!count) return count;
    if (*count > remaining()) {
      return Fail(at, std::string(what) + " count " + std::to_string(*count) + " exceeds the " +
                          std::to_string(remaining()) + " bytes left");
    }
    return count;
  }

  Result<std::string> Name() {
    auto length = U32();
    if (!length) return tl::unexpected(length.error());
    size_t at = pos_;
    if (*length > remaining()) {
      return Fail(at, "truncated name (" + std::to_string(*length) + " bytes, " +
                          std::to_string(remaining()) + " left)");
    }
    std::string name(reinterpret_cast<const char*>(bytes_.data() + pos_), *length);
    pos_ += *length;
    if (!IsValidUtf8(name)) return Fail(at, "name is not valid UTF-8");
    return name;
  }

 private:
  // LEB128 of an N-bit integer: at most ceil(N/7) bytes, and the unused
  // high bits of the last byte must be zero (unsigned) or copies of the sign
  // bit (signed). Padding with 0x80 bytes inside that length is legal.
  template <int N, bool kSigned>
  Result<uint64_t> Leb() {
    constexpr int kMaxBytes = (N + 6) / 7;
    size_t start = pos_;
    uint64_t result = 0;
    int shift = 0;
    for (int i = 0;; ++i) {
      if (pos_ >= end_) return Fail(start, "truncated LEB128 integer");
      uint8_t byte = bytes_[pos_++];
      if (i == kMaxBytes - 1) {
        if (byte & 0x80) return Fail(start, "LEB128 integer too long");
        const int used = N - shift;  // value bits that fit in this byte
        if constexpr (kSigned) {
          const uint8_t sign_bits = static_cast<uint8_t>((0x7f >> (used - 1)) << (used - 1));
          if ((byte & sign_bits) != 0 && (byte & sign_bits) != sign_bits) {
            return Fail(start, "LEB128 integer overflows " + std::to_string(N) + " bits");
          }
        } else {
          if (byte >> used) {
            return Fail(start, "LEB128 integer overflows " + std::to_string(N) + " bits");
          }
        }
      }
      result |= static_cast<uint64_t>(byte & 0x7f) << shift;
      shift += 7;
      if (!(byte & 0x80)) {
        if (kSigned && shift < 64 && (byte & 0x40)) result |= ~uint64_t{0} << shift;
        return result;
      }
    }
  }

  std::span<const uint8_t> bytes_;
  size_t pos_;
  size_t end_;
  std::string context_;
};

// Local to this file: declare `var` from a Result or return its error.
#define KEEL_TRY(var, expr)                                                  \
  auto var##_result = (expr);                                                \
  if (!var##_result) return tl::unexpected(std::move(var##_result).error()); \
  auto var = *std::move(var##_result)

#define KEEL_TRY_VOID(expr)                                                  \
  do {                                                                       \
    auto try_result = (expr);                                                \
    if (!try_result) return tl::unexpected(std::move(try_result).error());   \
  } while (0)

struct TypeEntry {
  FuncType func;
  bool supported = true;
};

// Everything read from a module, including what only CapMemory needs.
struct Parsed {
  ModuleInfo info;
  std::vector<TypeEntry> types;
  std::vector<uint32_t> func_types;  // function index space -> type index
  uint32_t defined_funcs = 0;
  std::vector<Limits> tables;        // table index space
  std::vector<Limits> memories;      // memory index space
  uint64_t globals = 0;
  uint64_t tags = 0;
  std::optional<uint32_t> code_count;
  std::optional<uint32_t> data_count;   // from the datacount section
  std::optional<uint32_t> data_segments;
  size_t code_offset = 0;
  size_t data_offset = 0;
  // The memory section's bytes [begin, end), when it defines a memory.
  size_t memory_section_begin = 0;
  size_t memory_section_end = 0;
  uint8_t memory_flags = 0;
};

// Numeric types map to ValType; the other valid value types are recorded by
// returning nullopt (the signature is then unsupported by keel).
Result<std::optional<ValType>> ReadValType(Reader& r) {
  size_t at = r.pos();
  KEEL_TRY(byte, r.U8());
  switch (byte) {
    case 0x7f: return ValType::kI32;
    case 0x7e: return ValType::kI64;
    case 0x7d: return ValType::kF32;
    case 0x7c: return ValType::kF64;
    case 0x7b:  // v128
    case 0x70:  // funcref
    case 0x6f:  // externref
    case 0x69:  // exnref
      return std::nullopt;
    case 0x63:    // (ref null ht)
    case 0x64: {  // (ref ht), function references
      KEEL_TRY_VOID(r.S33());
      return std::nullopt;
    }
  }
  return r.Fail(at, "unknown value type " + ByteHex(byte));
}

Result<void> ReadRefType(Reader& r) {
  size_t at = r.pos();
  KEEL_TRY(byte, r.U8());
  switch (byte) {
    case 0x70:
    case 0x6f:
    case 0x69:
      return {};
    case 0x63:
    case 0x64:
      KEEL_TRY_VOID(r.S33());
      return {};
  }
  return r.Fail(at, "unknown reference type " + ByteHex(byte));
}

// Memory and table limits, including the threads (shared) and memory64
// flag bits. `flags` receives the flags byte.
Result<Limits> ReadLimits(Reader& r, bool memory, uint8_t* flags_out) {
  size_t at = r.pos();
  KEEL_TRY(flags, r.U8());
  const bool has_max = flags & 0x01;
  const bool shared = flags & 0x02;
  const bool is64 = flags & 0x04;
  if (flags > 0x07 || (!memory && shared)) {
    return r.Fail(at, std::string("invalid ") + (memory ? "memory" : "table") +
                          " limits flags " + ByteHex(flags));
  }
  if (shared && !has_max) return r.Fail(at, "shared memory must have a maximum");
  Limits limits;
  size_t min_at = r.pos();
  if (is64) {
    KEEL_TRY(min, r.U64());
    limits.min = min;
  } else {
    KEEL_TRY(min, r.U32());
    limits.min = min;
  }
  size_t max_at = r.pos();
  if (has_max) {
    if (is64) {
      KEEL_TRY(max, r.U64());
      limits.max = max;
    } else {
      KEEL_TRY(max, r.U32());
      limits.max = max;
    }
    if (*limits.max < limits.min) {
      return r.Fail(max_at, "maximum " + std::to_string(*limits.max) + " is below minimum " +
                                std::to_string(limits.min));
    }
  }
  if (memory) {
    const uint64_t bound = is64 ? kMaxPages64 : kMaxPages32;
    if (limits.min > bound) {
      return r.Fail(min_at, "memory minimum " + std::to_string(limits.min) + " exceeds " +
                                std::to_string(bound) + " pages");
    }
    if (limits.max && *limits.max > bound) {
      return r.Fail(max_at, "memory maximum " + std::to_string(*limits.max) + " exceeds " +
                                std::to_string(bound) + " pages");
    }
  }
  if (flags_out) *flags_out = flags;
  return limits;
}

Result<Limits> ReadTableType(Reader& r) {
  KEEL_TRY_VOID(ReadRefType(r));
  return ReadLimits(r, /*memory=*/false, nullptr);
}

Result<void> ReadGlobalType(Reader& r) {
  KEEL_TRY_VOID(ReadValType(r));
  size_t at = r.pos();
  KEEL_TRY(mutability, r.U8());
  if (mutability > 1) return r.Fail(at, "invalid global mutability " + ByteHex(mutability));
  return {};
}

// Skips a constant expression up to and including its `end`. Only opcodes
// allowed in constant expressions are accepted, so that a stray byte cannot
// make the reader run on through the section.
Result<void> SkipConstExpr(Reader& r) {
  for (;;) {
    size_t at = r.pos();
    KEEL_TRY(opcode, r.U8());
    switch (opcode) {
      case 0x0b:  // end
        return {};
      case 0x41:  // i32.const
        KEEL_TRY_VOID(r.SkipS32());
        break;
      case 0x42:  // i64.const
        KEEL_TRY_VOID(r.SkipS64());
        break;
      case 0x43:  // f32.const
        KEEL_TRY_VOID(r.Skip(4));
        break;
      case 0x44:  // f64.const
        KEEL_TRY_VOID(r.Skip(8));
        break;
      case 0x23:  // global.get
      case 0xd2:  // ref.func
        KEEL_TRY_VOID(r.U32());
        break;
      case 0xd0:  // ref.null heaptype
        KEEL_TRY_VOID(r.S33());
        break;
      case 0x6a: case 0x6b: case 0x6c:  // i32.add/sub/mul (extended const)
      case 0x7c: case 0x7d: case 0x7e:  // i64.add/sub/mul
        break;
      case 0xfd: {  // SIMD prefix: only v128.const
        size_t sub_at = r.pos();
        KEEL_TRY(sub, r.U32());
        if (sub != 12) {
          return r.Fail(sub_at, "unsupported opcode 0xfd " + std::to_string(sub) +
                                    " in constant expression");
        }
        KEEL_TRY_VOID(r.Skip(16));
        break;
      }
      default:
        return r.Fail(at, "unsupported opcode " + ByteHex(opcode) + " in constant expression");
    }
  }
}

Result<uint32_t> ReadTypeIndex(Reader& r, const Parsed& p) {
  size_t at = r.pos();
  KEEL_TRY(index, r.U32());
  if (index >= p.types.size()) {
    return r.Fail(at, "type index " + std::to_string(index) + " out of range (" +
                          std::to_string(p.types.size()) + " types)");
  }
  return index;
}

Result<void> AddMemory(Reader& r, Parsed& p, size_t at, Limits limits) {
  if (!p.memories.empty()) {
    return r.Fail(at, "more than one memory (the multi-memory proposal is not supported)");
  }
  p.memories.push_back(limits);
  return {};
}

Result<void> ReadTypeSection(Reader& r, Parsed& p) {
  KEEL_TRY(count, r.Count("type"));
  p.types.reserve(count);
  for (uint32_t i = 0; i < count; ++i) {
    size_t at = r.pos();
    KEEL_TRY(form, r.U8());
    if (form != 0x60) {
      return r.Fail(at, "unsupported type form " + ByteHex(form) + " (only func types)");
    }
    TypeEntry entry;
    for (std::vector<ValType>* list : {&entry.func.params, &entry.func.results}) {
      KEEL_TRY(n, r.Count("value type"));
      list->reserve(n);
      for (uint32_t k = 0; k < n; ++k) {
        KEEL_TRY(type, ReadValType(r));
        if (type) {
          list->push_back(*type);
        } else {
          entry.supported = false;
        }
      }
    }
    if (!entry.supported) entry.func = FuncType{};
    p.types.push_back(std::move(entry));
  }
  return {};
}

Result<void> ReadImportSection(Reader& r, Parsed& p) {
  KEEL_TRY(count, r.Count("import"));
  p.info.imports.reserve(count);
  for (uint32_t i = 0; i < count; ++i) {
    ImportInfo import;
    KEEL_TRY(module, r.Name());
    KEEL_TRY(name, r.Name());
    import.module = std::move(module);
    import.name = std::move(name);
    size_t kind_at = r.pos();
    KEEL_TRY(kind, r.U8());
    switch (kind) {
      case 0x00: {
        import.kind = ExternKind::kFunc;
        KEEL_TRY(type, ReadTypeIndex(r, p));
        import.func = p.types[type].func;
        import.func_supported = p.types[type].supported;
        p.func_types.push_back(type);
        break;
      }
      case 0x01: {
        import.kind = ExternKind::kTable;
        KEEL_TRY(limits, ReadTableType(r));
        import.limits = limits;
        p.tables.push_back(limits);
        break;
      }
      case 0x02: {
        import.kind = ExternKind::kMemory;
        size_t at = r.pos();
        KEEL_TRY(limits, ReadLimits(r, /*memory=*/true, nullptr));
        KEEL_TRY_VOID(AddMemory(r, p, at, limits));
        import.limits = limits;
        break;
      }
      case 0x03:
        import.kind = ExternKind::kGlobal;
        KEEL_TRY_VOID(ReadGlobalType(r));
        ++p.globals;
        break;
      case 0x04: {
        import.kind = ExternKind::kTag;
        size_t at = r.pos();
        KEEL_TRY(attribute, r.U8());
        if (attribute != 0) return r.Fail(at, "invalid tag attribute " + ByteHex(attribute));
        KEEL_TRY_VOID(ReadTypeIndex(r, p));
        ++p.tags;
        break;
      }
      default:
        return r.Fail(kind_at, "unknown import kind " + ByteHex(kind));
    }
    p.info.imports.push_back(std::move(import));
  }
  return {};
}

Result<void> ReadFunctionSection(Reader& r, Parsed& p) {
  KEEL_TRY(count, r.Count("function"));
  p.func_types.reserve(p.func_types.size() + count);
  for (uint32_t i = 0; i < count; ++i) {
    KEEL_TRY(type, ReadTypeIndex(r, p));
    p.func_types.push_back(type);
  }
  p.defined_funcs = count;
  return {};
}

Result<void> ReadTableSection(Reader& r, Parsed& p) {
  KEEL_TRY(count, r.Count("table"));
  for (uint32_t i = 0; i < count; ++i) {
    // Function references: 0x40 0x00 tabletype expr gives an initializer.
    const bool has_init = r.Peek() == 0x40;
    if (has_init) {
      KEEL_TRY_VOID(r.U8());
      size_t at = r.pos();
      KEEL_TRY(zero, r.U8());
      if (zero != 0x00) return r.Fail(at, "invalid table encoding " + ByteHex(zero));
    }
    KEEL_TRY(limits, ReadTableType(r));
    if (has_init) KEEL_TRY_VOID(SkipConstExpr(r));
    p.tables.push_back(limits);
  }
  return {};
}

Result<void> ReadMemorySection(Reader& r, Parsed& p) {
  KEEL_TRY(count, r.Count("memory"));
  for (uint32_t i = 0; i < count; ++i) {
    size_t at = r.pos();
    uint8_t flags = 0;
    KEEL_TRY(limits, ReadLimits(r, /*memory=*/true, &flags));
    KEEL_TRY_VOID(AddMemory(r, p, at, limits));
    p.info.memory = limits;
    p.memory_flags = flags;
  }
  return {};
}

Result<void> ReadTagSection(Reader& r, Parsed& p) {
  KEEL_TRY(count, r.Count("tag"));
  for (uint32_t i = 0; i < count; ++i) {
    size_t at = r.pos();
    KEEL_TRY(attribute, r.U8());
    if (attribute != 0) return r.Fail(at, "invalid tag attribute " + ByteHex(attribute));
    KEEL_TRY_VOID(ReadTypeIndex(r, p));
    ++p.tags;
  }
  return {};
}

Result<void> ReadGlobalSection(Reader& r, Parsed& p) {
  KEEL_TRY(count, r.Count("global"));
  for (uint32_t i = 0; i < count; ++i) {
    KEEL_TRY_VOID(ReadGlobalType(r));
    KEEL_TRY_VOID(SkipConstExpr(r));
    ++p.globals;
  }
  return {};
}

Result<void> ReadExportSection(Reader& r, Parsed& p) {
  KEEL_TRY(count, r.Count("export"));
  p.info.exports.reserve(count);
  std::unordered_set<std::string> names;
  for (uint32_t i = 0; i < count; ++i) {
    ExportInfo e;
    size_t name_at = r.pos();
    KEEL_TRY(name, r.Name());
    if (!names.insert(name).second) return r.Fail(name_at, "duplicate export name \"" + name + "\"");
    e.name = std::move(name);
    size_t kind_at = r.pos();
    KEEL_TRY(kind, r.U8());
    size_t index_at = r.pos();
    KEEL_TRY(index, r.U32());
    uint64_t space = 0;
    const char* what = "";
    switch (kind) {
      case 0x00: e.kind = ExternKind::kFunc, space = p.func_types.size(), what = "function"; break;
      case 0x01: e.kind = ExternKind::kTable, space = p.tables.size(), what = "table"; break;
      case 0x02: e.kind = ExternKind::kMemory, space = p.memories.size(), what = "memory"; break;
      case 0x03: e.kind = ExternKind::kGlobal, space = p.globals, what = "global"; break;
      case 0x04: e.kind = ExternKind::kTag, space = p.tags, what = "tag"; break;
      default: return r.Fail(kind_at, "unknown export kind " + ByteHex(kind));
    }
    if (index >= space) {
      return r.Fail(index_at, "export \"" + e.name + "\": " + what + " index " +
                                  std::to_string(index) + " out of range (" +
                                  std::to_string(space) + " " + what + "s)");
    }
    e.index = index;
    if (e.kind == ExternKind::kFunc) {
      const TypeEntry& type = p.types[p.func_types[index]];
      e.func = type.func;
      e.func_supported = type.supported;
    } else if (e.kind == ExternKind::kTable) {
      e.limits = p.tables[index];
    } else if (e.kind == ExternKind::kMemory) {
      e.limits = p.memories[index];
    }
    p.info.exports.push_back(std::move(e));
  }
  return {};
}

Result<void> ReadStartSection(Reader& r, Parsed& p) {
  size_t at = r.pos();
  KEEL_TRY(index, r.U32());
  if (index >= p.func_types.size()) {
    return r.Fail(at, "start function index " + std::to_string(index) + " out of range (" +
                          std::to_string(p.func_types.size()) + " functions)");
  }
  p.info.has_start = true;
  return {};
}

// Framing only: bodies are the engine's to validate.
Result<void> ReadCodeSection(Reader& r, Parsed& p) {
  KEEL_TRY(count, r.Count("code"));
  for (uint32_t i = 0; i < count; ++i) {
    size_t at = r.pos();
    KEEL_TRY(size, r.U32());
    if (size == 0) return r.Fail(at, "empty function body");
    KEEL_TRY_VOID(r.Skip(size));
  }
  p.code_count = count;
  return {};
}

Result<Parsed> Parse(std::span<const uint8_t> bytes) {
  if (bytes.empty()) {
    return MakeError(ErrorCode::kInvalidModule, "not a WebAssembly module (empty input)");
  }
  const size_t magic_size = std::min(bytes.size(), sizeof kMagic);
  if (!std::equal(bytes.begin(), bytes.begin() + magic_size, kMagic)) {
    return MakeError(ErrorCode::kInvalidModule, "not a WebAssembly module (bad magic)");
  }
  if (bytes.size() < kHeaderSize) {
    return MakeError(ErrorCode::kInvalidModule,
                     "module header at offset 0x0: truncated (" + std::to_string(bytes.size()) +
                         " of 8 bytes)");
  }
  const uint32_t version = bytes[4] | (bytes[5] << 8) | (bytes[6] << 16) |
                           (static_cast<uint32_t>(bytes[7]) << 24);
  if (version != 1) {
    // Component-model binaries share the magic; say so rather than
    // printing a puzzling version number.
    const char* hint = version == 0x0001000d ? " (a component, not a core module)" : "";
    return MakeError(ErrorCode::kInvalidModule,
                     "unsupported version " + std::to_string(version) + hint);
  }

  Parsed p;
  size_t pos = kHeaderSize;
  int last_rank = 0;
  uint8_t last_id = 0;
  while (pos < bytes.size()) {
    const size_t section_begin = pos;
    const uint8_t id = bytes[pos];
    Reader header(bytes, pos + 1, bytes.size(), SectionLabel(id));
    if (id > kTagSection) return header.Fail(section_begin, "unknown section id");
    const size_t size_at = header.pos();
    KEEL_TRY(size, header.U32());
    if (size > header.remaining()) {
      return header.Fail(size_at, "section size " + std::to_string(size) + " exceeds the " +
                                      std::to_string(header.remaining()) +
                                      " bytes left in the module");
    }
    const size_t begin = header.pos();
    const size_t end = begin + size;
    pos = end;
    Reader r(bytes, begin, end, SectionLabel(id));

    if (id == kCustomSection) {
      KEEL_TRY_VOID(r.Name());  // the rest is opaque
      continue;
    }
    const int rank = SectionRank(id);
    if (rank == last_rank) return r.Fail(section_begin, "duplicate section");
    if (rank < last_rank) {
      return r.Fail(section_begin, "out of order (after " + SectionLabel(last_id) + ")");
    }
    last_rank = rank;
    last_id = id;

    switch (id) {
      case kTypeSection: KEEL_TRY_VOID(ReadTypeSection(r, p)); break;
      case kImportSection: KEEL_TRY_VOID(ReadImportSection(r, p)); break;
      case kFunctionSection: KEEL_TRY_VOID(ReadFunctionSection(r, p)); break;
      case kTableSection: KEEL_TRY_VOID(ReadTableSection(r, p)); break;
      case kMemorySection: {
        KEEL_TRY_VOID(ReadMemorySection(r, p));
        if (p.info.memory) {
          p.memory_section_begin = section_begin;
          p.memory_section_end = end;
        }
        break;
      }
      case kTagSection: KEEL_TRY_VOID(ReadTagSection(r, p)); break;
      case kGlobalSection: KEEL_TRY_VOID(ReadGlobalSection(r, p)); break;
      case kExportSection: KEEL_TRY_VOID(ReadExportSection(r, p)); break;
      case kStartSection: KEEL_TRY_VOID(ReadStartSection(r, p)); break;
      case kElementSection: {
        // Segments hold expressions the engine validates; check the count.
        KEEL_TRY_VOID(r.Count("element segment"));
        r.SkipRest();
        break;
      }
      case kDataCountSection: {
        KEEL_TRY(count, r.U32());
        p.data_count = count;
        break;
      }
      case kCodeSection:
        p.code_offset = section_begin;
        KEEL_TRY_VOID(ReadCodeSection(r, p));
        break;
      case kDataSection: {
        p.data_offset = section_begin;
        const size_t at = r.pos();
        KEEL_TRY(count, r.Count("data segment"));
        if (p.data_count && *p.data_count != count) {
          return r.Fail(at, "data segment count " + std::to_string(count) +
                                " differs from the datacount section's " +
                                std::to_string(*p.data_count));
        }
        p.data_segments = count;
        r.SkipRest();
        break;
      }
    }
    if (!r.AtEnd()) {
      return r.Fail(r.pos(), "section size mismatch (" + std::to_string(r.remaining()) +
                                 " unused bytes at the end)");
    }
  }

  const uint32_t bodies = p.code_count.value_or(0);
  if (bodies != p.defined_funcs) {
    return Invalid(p.code_count ? SectionLabel(kCodeSection) : "module",
                   p.code_count ? p.code_offset : bytes.size(),
                   "function section declares " + std::to_string(p.defined_funcs) +
                      " functions but there are " + std::to_string(bodies) + " code bodies");
  }
  if (p.data_count && *p.data_count != 0 && !p.data_segments) {
    return Invalid("module", bytes.size(), "datacount section declares " + std::to_string(*p.data_count) +
                                    " data segments but there is no data section");
  }
  return p;
}

void PutLeb(std::vector<uint8_t>& out, uint64_t value) {
  do {
    uint8_t byte = value & 0x7f;
    value >>= 7;
    if (value) byte |= 0x80;
    out.push_back(byte);
  } while (value);
}

}  // namespace

const ExportInfo* ModuleInfo::FindExport(std::string_view name) const {
  for (const ExportInfo& e : exports) {
    if (e.name == name) return &e;
  }
  return nullptr;
}

const ExportInfo* ModuleInfo::FindFuncExport(std::string_view name) const {
  const ExportInfo* e = FindExport(name);
  return e && e->kind == ExternKind::kFunc ? e : nullptr;
}

std::string Describe(ExternKind kind, const FuncType& func, const Limits& limits) {
  auto range = [&limits] {
    std::string text = std::to_string(limits.min) + "..";
    if (limits.max) text += std::to_string(*limits.max);
    return text;
  };
  switch (kind) {
    case ExternKind::kFunc: return "func " + func.ToString();
    case ExternKind::kTable: return "table " + range();
    case ExternKind::kMemory: return "memory " + range() + " pages";
    case ExternKind::kGlobal: return "global";
    case ExternKind::kTag: return "tag";
  }
  return "?";
}

Result<ModuleInfo> ReadModuleInfo(std::span<const uint8_t> bytes) {
  KEEL_TRY(parsed, Parse(bytes));
  return std::move(parsed.info);
}

Result<std::vector<uint8_t>> CapMemory(std::span<const uint8_t> bytes, uint32_t max_pages) {
  KEEL_TRY(parsed, Parse(bytes));
  if (!parsed.info.memory) return std::vector<uint8_t>(bytes.begin(), bytes.end());
  const Limits& limits = *parsed.info.memory;
  if (limits.min > max_pages) {
    return MakeError(ErrorCode::kResourceExhausted,
                     "memory minimum " + std::to_string(limits.min) +
                         " pages exceeds the cap of " + std::to_string(max_pages) + " pages");
  }
  // A maximum above what the address size allows would be invalid.
  const bool is64 = parsed.memory_flags & 0x04;
  const uint64_t cap = std::min<uint64_t>(max_pages, is64 ? kMaxPages64 : kMaxPages32);
  if (limits.max && *limits.max <= cap) return std::vector<uint8_t>(bytes.begin(), bytes.end());

  // Re-encode the section; setting bit 0 adds a maximum and keeps the
  // shared and memory64 bits as they were.
  std::vector<uint8_t> payload;
  PutLeb(payload, 1);
  payload.push_back(parsed.memory_flags | 0x01);
  PutLeb(payload, limits.min);
  PutLeb(payload, cap);
  std::vector<uint8_t> section;
  section.push_back(kMemorySection);
  PutLeb(section, payload.size());
  section.insert(section.end(), payload.begin(), payload.end());

  std::vector<uint8_t> out;
  out.reserve(bytes.size() + section.size());
  out.insert(out.end(), bytes.begin(), bytes.begin() + parsed.memory_section_begin);
  out.insert(out.end(), section.begin(), section.end());
  out.insert(out.end(), bytes.begin() + parsed.memory_section_end, bytes.end());
  return out;
}

#undef KEEL_TRY
#undef KEEL_TRY_VOID

}  // namespace keel::engine

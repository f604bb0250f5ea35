#include "engine/module_info.h"

#include <algorithm>
#include <string_view>
#include <unordered_set>
#include <utility>

#include "engine/wasm_binary.h"

namespace keel::engine {

namespace {

using wasm::BodyRange;
using wasm::ByteHex;
using wasm::GlobalEntry;
using wasm::ImportEntry;
using wasm::Invalid;
using wasm::kHeaderSize;
using wasm::kMaxPages32;
using wasm::kMaxPages64;
using wasm::kReservedPrefix;
using wasm::ParsedModule;
using wasm::ParseOptions;
using wasm::Reader;
using wasm::ReadWasmType;
using wasm::SectionLabel;
using wasm::SectionRange;
using wasm::ToValType;
using wasm::TypeEntry;
using wasm::TypeName;
using wasm::WasmType;
using enum wasm::SectionId;

#define KEEL_TRY KEEL_WASM_TRY
#define KEEL_TRY_VOID KEEL_WASM_TRY_VOID

constexpr uint8_t kMagic[4] = {0x00, 0x61, 0x73, 0x6d};

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

Result<void> ReadRefType(Reader& r) {
  size_t at = r.pos();
  KEEL_TRY(type, ReadWasmType(r));
  switch (type.code) {
    case 0x70:
    case 0x6f:
    case 0x69:
    case 0x63:
    case 0x64:
      return {};
  }
  return r.Fail(at, "unknown reference type " + ByteHex(type.code));
}

Result<Limits> ReadTableType(Reader& r) {
  KEEL_TRY_VOID(ReadRefType(r));
  return ReadLimits(r, /*memory=*/false, nullptr);
}

Result<GlobalEntry> ReadGlobalType(Reader& r) {
  GlobalEntry global;
  KEEL_TRY(type, ReadWasmType(r));
  global.type = type;
  size_t at = r.pos();
  KEEL_TRY(mutability, r.U8());
  if (mutability > 1) return r.Fail(at, "invalid global mutability " + ByteHex(mutability));
  global.mutable_ = mutability == 1;
  return global;
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

Result<uint32_t> ReadTypeIndex(Reader& r, const ParsedModule& p) {
  size_t at = r.pos();
  KEEL_TRY(index, r.U32());
  if (index >= p.types.size()) {
    return r.Fail(at, "type index " + std::to_string(index) + " out of range (" +
                          std::to_string(p.types.size()) + " types)");
  }
  return index;
}

Result<void> AddMemory(Reader& r, ParsedModule& p, size_t at, Limits limits) {
  if (!p.memories.empty()) {
    return r.Fail(at, "more than one memory (the multi-memory proposal is not supported)");
  }
  p.memories.push_back(limits);
  return {};
}

Result<std::string> CheckedName(Reader& r, const ParseOptions& options) {
  size_t at = r.pos();
  KEEL_TRY(name, r.Name());
  if (!options.allow_reserved_names && name.starts_with(kReservedPrefix)) {
    return r.Fail(at, "the name prefix \"\\01keel:\" is reserved for keel's own use");
  }
  return name;
}

std::string TypeListText(const std::vector<WasmType>& types) {
  std::string out = "(";
  for (size_t i = 0; i < types.size(); ++i) {
    if (i) out += ", ";
    out += TypeName(types[i]);
  }
  return out + ")";
}

Result<void> ReadTypeSection(Reader& r, ParsedModule& p) {
  KEEL_TRY(count, r.Count("type"));
  p.types.reserve(count);
  for (uint32_t i = 0; i < count; ++i) {
    size_t at = r.pos();
    KEEL_TRY(form, r.U8());
    if (form != 0x60) {
      return r.Fail(at, "unsupported type form " + ByteHex(form) + " (only func types)");
    }
    TypeEntry entry;
    std::vector<WasmType> lists[2];
    for (int side = 0; side < 2; ++side) {
      std::vector<ValType>& numeric = side == 0 ? entry.func.params : entry.func.results;
      KEEL_TRY(n, r.Count("value type"));
      numeric.reserve(n);
      for (uint32_t k = 0; k < n; ++k) {
        KEEL_TRY(type, ReadWasmType(r));
        lists[side].push_back(type);
        if (auto v = ToValType(type)) {
          numeric.push_back(*v);
        } else {
          entry.supported = false;
        }
      }
    }
    entry.text = TypeListText(lists[0]) + " -> " + TypeListText(lists[1]);
    if (!entry.supported) entry.func = FuncType{};
    p.types.push_back(std::move(entry));
  }
  return {};
}

Result<void> ReadImportDesc(Reader& r, ParsedModule& p, ImportInfo& import, ImportEntry& entry) {
  size_t kind_at = r.pos();
  KEEL_TRY(kind, r.U8());
  switch (kind) {
    case 0x00: {
      import.kind = ExternKind::kFunc;
      KEEL_TRY(type, ReadTypeIndex(r, p));
      import.func = p.types[type].func;
      import.func_supported = p.types[type].supported;
      import.signature = p.types[type].text;
      entry.type_index = type;
      p.func_types.push_back(type);
      ++p.imported_funcs;
      return {};
    }
    case 0x01: {
      import.kind = ExternKind::kTable;
      KEEL_TRY(limits, ReadTableType(r));
      import.limits = limits;
      p.tables.push_back(limits);
      return {};
    }
    case 0x02: {
      import.kind = ExternKind::kMemory;
      size_t at = r.pos();
      KEEL_TRY(limits, ReadLimits(r, /*memory=*/true, &p.memory_flags));
      KEEL_TRY_VOID(AddMemory(r, p, at, limits));
      p.memory_imported = true;
      import.limits = limits;
      return {};
    }
    case 0x03: {
      import.kind = ExternKind::kGlobal;
      KEEL_TRY(global, ReadGlobalType(r));
      global.imported = true;
      p.globals.push_back(global);
      return {};
    }
    case 0x04: {
      import.kind = ExternKind::kTag;
      size_t at = r.pos();
      KEEL_TRY(attribute, r.U8());
      if (attribute != 0) return r.Fail(at, "invalid tag attribute " + ByteHex(attribute));
      KEEL_TRY_VOID(ReadTypeIndex(r, p));
      ++p.tags;
      return {};
    }
  }
  return r.Fail(kind_at, "unknown import kind " + ByteHex(kind));
}

Result<void> ReadImportSection(Reader& r, ParsedModule& p, const ParseOptions& options) {
  KEEL_TRY(count, r.Count("import"));
  p.info.imports.reserve(count);
  p.import_entries.reserve(count);
  for (uint32_t i = 0; i < count; ++i) {
    ImportInfo import;
    ImportEntry entry;
    entry.begin = r.pos();
    KEEL_TRY(module, CheckedName(r, options));
    KEEL_TRY(name, CheckedName(r, options));
    import.module = std::move(module);
    import.name = std::move(name);
    entry.desc_begin = r.pos();
    KEEL_TRY_VOID(ReadImportDesc(r, p, import, entry));
    entry.end = r.pos();
    p.info.imports.push_back(std::move(import));
    p.import_entries.push_back(entry);
  }
  return {};
}

Result<void> ReadFunctionSection(Reader& r, ParsedModule& p) {
  KEEL_TRY(count, r.Count("function"));
  p.func_types.reserve(p.func_types.size() + count);
  for (uint32_t i = 0; i < count; ++i) {
    KEEL_TRY(type, ReadTypeIndex(r, p));
    p.func_types.push_back(type);
  }
  p.defined_funcs = count;
  return {};
}

Result<void> ReadTableSection(Reader& r, ParsedModule& p) {
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

Result<void> ReadMemorySection(Reader& r, ParsedModule& p) {
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

Result<void> ReadTagSection(Reader& r, ParsedModule& p) {
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

Result<void> ReadGlobalSection(Reader& r, ParsedModule& p) {
  KEEL_TRY(count, r.Count("global"));
  for (uint32_t i = 0; i < count; ++i) {
    KEEL_TRY(global, ReadGlobalType(r));
    global.init_begin = r.pos();
    KEEL_TRY_VOID(SkipConstExpr(r));
    global.init_end = r.pos();
    p.globals.push_back(global);
  }
  return {};
}

// Checks the index of an export against its kind's index space and fills
// in what keel reports about it.
Result<void> ResolveExport(Reader& r, ParsedModule& p, size_t kind_at, uint8_t kind,
                           size_t index_at, ExportInfo& e) {
  uint64_t space = 0;
  const char* what = "";
  switch (kind) {
    case 0x00: e.kind = ExternKind::kFunc, space = p.func_types.size(), what = "function"; break;
    case 0x01: e.kind = ExternKind::kTable, space = p.tables.size(), what = "table"; break;
    case 0x02: e.kind = ExternKind::kMemory, space = p.memories.size(), what = "memory"; break;
    case 0x03: e.kind = ExternKind::kGlobal, space = p.globals.size(), what = "global"; break;
    case 0x04: e.kind = ExternKind::kTag, space = p.tags, what = "tag"; break;
    default: return r.Fail(kind_at, "unknown export kind " + ByteHex(kind));
  }
  if (e.index >= space) {
    return r.Fail(index_at, "export \"" + e.name + "\": " + what + " index " +
                                std::to_string(e.index) + " out of range (" +
                                std::to_string(space) + " " + what + "s)");
  }
  if (e.kind == ExternKind::kFunc) {
    const TypeEntry& type = p.types[p.func_types[e.index]];
    e.func = type.func;
    e.func_supported = type.supported;
    e.signature = type.text;
  } else if (e.kind == ExternKind::kTable) {
    e.limits = p.tables[e.index];
  } else if (e.kind == ExternKind::kMemory) {
    e.limits = p.memories[e.index];
  }
  return {};
}

Result<void> ReadExportSection(Reader& r, ParsedModule& p, const ParseOptions& options) {
  KEEL_TRY(count, r.Count("export"));
  p.info.exports.reserve(count);
  std::unordered_set<std::string> names;
  for (uint32_t i = 0; i < count; ++i) {
    ExportInfo e;
    size_t name_at = r.pos();
    KEEL_TRY(name, CheckedName(r, options));
    if (!names.insert(name).second) return r.Fail(name_at, "duplicate export name \"" + name + "\"");
    e.name = std::move(name);
    size_t kind_at = r.pos();
    KEEL_TRY(kind, r.U8());
    size_t index_at = r.pos();
    KEEL_TRY(index, r.U32());
    e.index = index;
    KEEL_TRY_VOID(ResolveExport(r, p, kind_at, kind, index_at, e));
    p.info.exports.push_back(std::move(e));
  }
  return {};
}

Result<void> ReadStartSection(Reader& r, ParsedModule& p) {
  size_t at = r.pos();
  KEEL_TRY(index, r.U32());
  if (index >= p.func_types.size()) {
    return r.Fail(at, "start function index " + std::to_string(index) + " out of range (" +
                          std::to_string(p.func_types.size()) + " functions)");
  }
  p.info.has_start = true;
  p.start = index;
  return {};
}

// Framing only: bodies are the engine's to validate.
Result<void> ReadCodeSection(Reader& r, ParsedModule& p) {
  KEEL_TRY(count, r.Count("code"));
  p.bodies.reserve(count);
  for (uint32_t i = 0; i < count; ++i) {
    BodyRange body;
    body.begin = r.pos();
    KEEL_TRY(size, r.U32());
    if (size == 0) return r.Fail(body.begin, "empty function body");
    body.body_begin = r.pos();
    KEEL_TRY_VOID(r.Skip(size));
    body.end = r.pos();
    p.bodies.push_back(body);
  }
  return {};
}

Result<void> ReadDataSection(Reader& r, ParsedModule& p) {
  const size_t at = r.pos();
  KEEL_TRY(count, r.Count("data segment"));
  if (p.data_count && *p.data_count != count) {
    return r.Fail(at, "data segment count " + std::to_string(count) +
                          " differs from the datacount section's " +
                          std::to_string(*p.data_count));
  }
  p.data_segments = count;
  r.SkipRest();
  return {};
}

Result<void> ReadSection(Reader& r, uint8_t id, ParsedModule& p, const ParseOptions& options) {
  switch (id) {
    case kTypeSection: return ReadTypeSection(r, p);
    case kImportSection: return ReadImportSection(r, p, options);
    case kFunctionSection: return ReadFunctionSection(r, p);
    case kTableSection: return ReadTableSection(r, p);
    case kMemorySection: return ReadMemorySection(r, p);
    case kTagSection: return ReadTagSection(r, p);
    case kGlobalSection: return ReadGlobalSection(r, p);
    case kExportSection: return ReadExportSection(r, p, options);
    case kStartSection: return ReadStartSection(r, p);
    case kElementSection: {
      // Segments hold expressions the engine validates; check the count.
      KEEL_TRY(count, r.Count("element segment"));
      p.elem_segments = count;
      r.SkipRest();
      return {};
    }
    case kDataCountSection: {
      KEEL_TRY(count, r.U32());
      p.data_count = count;
      return {};
    }
    case kCodeSection: return ReadCodeSection(r, p);
    case kDataSection: return ReadDataSection(r, p);
  }
  return {};
}

Result<void> CheckHeader(std::span<const uint8_t> bytes) {
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
  return {};
}

// Cross-section counts that only the whole module can check.
Result<void> CheckCounts(std::span<const uint8_t> bytes, const ParsedModule& p) {
  const SectionRange* code = p.Section(kCodeSection);
  if (p.bodies.size() != p.defined_funcs) {
    return Invalid(code ? SectionLabel(kCodeSection) : "module", code ? code->begin : bytes.size(),
                   "function section declares " + std::to_string(p.defined_funcs) +
                       " functions but there are " + std::to_string(p.bodies.size()) +
                       " code bodies");
  }
  if (p.data_count && *p.data_count != 0 && !p.data_segments) {
    return Invalid("module", bytes.size(),
                   "datacount section declares " + std::to_string(*p.data_count) +
                       " data segments but there is no data section");
  }
  return {};
}

}  // namespace

namespace wasm {

Result<ParsedModule> ParseModule(std::span<const uint8_t> bytes, ParseOptions options) {
  KEEL_TRY_VOID(CheckHeader(bytes));
  ParsedModule p;
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
    p.sections.push_back({id, section_begin, begin, end});

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
    KEEL_TRY_VOID(ReadSection(r, id, p, options));
    if (!r.AtEnd()) {
      return r.Fail(r.pos(), "section size mismatch (" + std::to_string(r.remaining()) +
                                 " unused bytes at the end)");
    }
  }
  KEEL_TRY_VOID(CheckCounts(bytes, p));
  return p;
}

}  // namespace wasm

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

std::string Describe(const ImportInfo& import) {
  if (import.kind == ExternKind::kFunc && !import.signature.empty()) {
    return "func " + import.signature;
  }
  return Describe(import.kind, import.func, import.limits);
}

std::string Describe(const ExportInfo& export_info) {
  if (export_info.kind == ExternKind::kFunc && !export_info.signature.empty()) {
    return "func " + export_info.signature;
  }
  return Describe(export_info.kind, export_info.func, export_info.limits);
}

Result<ModuleInfo> ReadModuleInfo(std::span<const uint8_t> bytes) {
  KEEL_TRY(parsed, wasm::ParseModule(bytes));
  return std::move(parsed.info);
}

#undef KEEL_TRY
#undef KEEL_TRY_VOID

}  // namespace keel::engine

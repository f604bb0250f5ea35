#include "engine/snapshot_check.h"

#include <cstdio>
#include <set>

namespace keel::engine {
namespace {

// A bounds-checked cursor over bytes already validated by ReadModuleInfo
// and the engine: any surprise makes the check refuse, never guess.
class Cursor {
 public:
  Cursor(std::span<const uint8_t> bytes, size_t pos, size_t end)
      : bytes_(bytes), pos_(pos), end_(end) {}
  bool AtEnd() const { return pos_ >= end_; }
  size_t pos() const { return pos_; }
  bool U8(uint8_t* out) {
    if (pos_ >= end_) return false;
    *out = bytes_[pos_++];
    return true;
  }
  // An LEB128 number, signed or not (only unsigned values are used).
  bool Leb(uint64_t* out) {
    *out = 0;
    for (int shift = 0; shift < 70; shift += 7) {
      uint8_t b;
      if (!U8(&b)) return false;
      if (shift < 64) *out |= uint64_t{b & 0x7fu} << shift;
      if ((b & 0x80) == 0) return true;
    }
    return false;
  }
  bool Skip(uint64_t n) {
    if (n > end_ - pos_) return false;
    pos_ += n;
    return true;
  }

 private:
  std::span<const uint8_t> bytes_;
  size_t pos_;
  size_t end_;
};

struct Sections {
  std::optional<std::pair<size_t, size_t>> globals;  // payload [begin, end)
  std::optional<std::pair<size_t, size_t>> code;
  bool tables = false;
  bool elements = false;
  bool data_count = false;
};

std::optional<Sections> FindSections(std::span<const uint8_t> module) {
  constexpr size_t kHeader = 8;
  Sections s;
  Cursor r(module, kHeader, module.size());
  while (!r.AtEnd()) {
    uint8_t id;
    uint64_t size;
    if (!r.U8(&id) || !r.Leb(&size)) return std::nullopt;
    const size_t begin = r.pos();
    if (!r.Skip(size)) return std::nullopt;
    const std::pair<size_t, size_t> payload{begin, r.pos()};
    switch (id) {
      case 4: s.tables = true; break;
      case 6: s.globals = payload; break;
      case 9: s.elements = true; break;
      case 10: s.code = payload; break;
      case 12: s.data_count = true; break;
      default: break;
    }
  }
  return s;
}

bool SkipValType(Cursor& r) {
  uint8_t code;
  if (!r.U8(&code)) return false;
  uint64_t heap_type;
  return (code != 0x63 && code != 0x64) || r.Leb(&heap_type);  // (ref null ht), (ref ht)
}

bool SkipConstExpr(Cursor& r) {
  for (;;) {
    uint8_t op;
    uint64_t imm;
    if (!r.U8(&op)) return false;
    switch (op) {
      case 0x0b: return true;  // end
      case 0x41: case 0x42: case 0x23: case 0xd2: case 0xd0:  // *.const, global.get, ref.*
        if (!r.Leb(&imm)) return false;
        break;
      case 0x43: if (!r.Skip(4)) return false; break;
      case 0x44: if (!r.Skip(8)) return false; break;
      case 0x6a: case 0x6b: case 0x6c: case 0x7c: case 0x7d: case 0x7e: break;  // extended const
      case 0xfd:  // v128.const
        if (!r.Leb(&imm) || imm != 12 || !r.Skip(16)) return false;
        break;
      default: return false;
    }
  }
}

std::optional<std::string> HiddenMutableGlobal(std::span<const uint8_t> module,
                                               const Sections& s, const ModuleInfo& info) {
  if (!s.globals) return std::nullopt;
  uint32_t imported = 0;
  for (const ImportInfo& imp : info.imports) imported += imp.kind == ExternKind::kGlobal;
  std::set<uint32_t> exported;
  for (const ExportInfo& e : info.exports) {
    if (e.kind == ExternKind::kGlobal) exported.insert(e.index);
  }
  Cursor r(module, s.globals->first, s.globals->second);
  uint64_t count;
  if (!r.Leb(&count)) return "its global section could not be read";
  for (uint64_t i = 0; i < count; ++i) {
    uint8_t mutability;
    if (!SkipValType(r) || !r.U8(&mutability) || !SkipConstExpr(r)) {
      return "its global section could not be read";
    }
    const uint64_t index = imported + i;
    if (mutability == 1 && !exported.contains(static_cast<uint32_t>(index))) {
      return "mutable global " + std::to_string(index) + " is not exported";
    }
  }
  return std::nullopt;
}

// The instruction the bytes at `code[i]` would be, if they are one that
// changes a table or a segment.
const char* TableOrSegmentOp(std::span<const uint8_t> code, size_t i) {
  if (code[i] == 0x26) return "table.set";
  if (code[i] != 0xfc || i + 1 >= code.size()) return nullptr;
  const uint8_t sub = code[i + 1];
  if (sub & 0x80) return "a 0xfc instruction with a long sub-opcode";
  switch (sub) {
    case 8: return "memory.init";
    case 9: return "data.drop";
    case 12: return "table.init";
    case 13: return "elem.drop";
    case 14: return "table.copy";
    case 15: return "table.grow";
    case 17: return "table.fill";
    default: return nullptr;
  }
}

std::optional<std::string> TableOrSegmentWrite(std::span<const uint8_t> module,
                                               const Sections& s, const ModuleInfo& info) {
  bool table_import = false;
  for (const ImportInfo& imp : info.imports) table_import |= imp.kind == ExternKind::kTable;
  if (!s.tables && !table_import && !s.elements && !s.data_count) return std::nullopt;
  if (!s.code) return std::nullopt;
  std::span<const uint8_t> code = module.subspan(s.code->first, s.code->second - s.code->first);
  for (size_t i = 0; i < code.size(); ++i) {
    if (const char* op = TableOrSegmentOp(code, i)) {
      char offset[24];
      std::snprintf(offset, sizeof offset, "0x%zx", s.code->first + i);
      return std::string("its code may change a table or a segment (") + op + " at offset " +
             offset + ")";
    }
  }
  return std::nullopt;
}

}  // namespace

std::optional<std::string> SnapshotBlocker(std::span<const uint8_t> module,
                                           const ModuleInfo& info) {
  auto sections = FindSections(module);
  if (!sections) return "its sections could not be read";
  if (auto why = HiddenMutableGlobal(module, *sections, info)) return why;
  return TableOrSegmentWrite(module, *sections, info);
}

}  // namespace keel::engine

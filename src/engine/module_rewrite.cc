#include "engine/module_rewrite.h"

#include <algorithm>
#include <map>
#include <utility>

#include "engine/wasm_binary.h"

namespace keel::engine {

namespace {

using wasm::ByteHex;
using wasm::kReservedPrefix;
using wasm::ParsedModule;
using wasm::PutName;
using wasm::PutS64;
using wasm::PutU32;
using wasm::Reader;
using enum wasm::SectionId;

#define KEEL_TRY KEEL_WASM_TRY
#define KEEL_TRY_VOID KEEL_WASM_TRY_VOID

// ---------------------------------------------------------------------------
// Instruction decoding

Result<void> ReadIndex(Reader& r, Instruction& in, IndexKind kind) {
  in.index_at = r.pos();
  KEEL_TRY(index, r.U32());
  in.index = index;
  in.kind = kind;
  return {};
}

// 0x40 (empty), a value type, or a type index (a non-negative s33).
Result<void> ReadBlockType(Reader& r, Instruction& in) {
  const std::optional<uint8_t> first = r.Peek();
  if (first == 0x63 || first == 0x64) return wasm::ReadWasmType(r).map([](wasm::WasmType) {});
  const size_t at = r.pos();
  KEEL_TRY(type, r.S33());
  if (type >= 0) {
    in.kind = IndexKind::kType;
    in.index = static_cast<uint32_t>(type);
    in.index_at = at;
  }
  return {};
}

// align, then a memory index when bit 6 says so (multi-memory), then the
// offset (64 bits wide for memory64; reading it as u64 frames both).
Result<void> SkipMemArg(Reader& r, Instruction& in) {
  KEEL_TRY(align, r.U32());
  if (align & 0x40) KEEL_TRY_VOID(ReadIndex(r, in, IndexKind::kMemory));
  KEEL_TRY_VOID(r.U64());
  return {};
}

[[gnu::cold, gnu::noinline]] tl::unexpected<Error> UnknownOpcode(const Reader& r,
                                                                 const Instruction& in) {
  std::string what = "unknown opcode " + ByteHex(in.opcode);
  if (in.opcode >= 0xfb) what += " " + std::to_string(in.sub);
  return r.Fail(in.begin, what);
}

// 0xfc: saturating truncation, bulk memory, tables.
Result<void> DecodeMisc(Reader& r, Instruction& in) {
  auto two = [&](IndexKind first) -> Result<void> {
    KEEL_TRY_VOID(ReadIndex(r, in, first));
    return r.U32().map([](uint32_t) {});
  };
  switch (in.sub) {
    case 0: case 1: case 2: case 3: case 4: case 5: case 6: case 7:
      return {};
    case 8: return two(IndexKind::kData);     // memory.init data mem
    case 10: return two(IndexKind::kMemory);  // memory.copy mem mem
    case 12: return two(IndexKind::kElem);    // table.init elem table
    case 14: return two(IndexKind::kTable);   // table.copy table table
    case 9: return ReadIndex(r, in, IndexKind::kData);     // data.drop
    case 11: return ReadIndex(r, in, IndexKind::kMemory);  // memory.fill
    case 13: return ReadIndex(r, in, IndexKind::kElem);    // elem.drop
    case 15: case 16: case 17:  // table.grow table.size table.fill
      return ReadIndex(r, in, IndexKind::kTable);
  }
  return UnknownOpcode(r, in);
}

bool IsSimdWithoutImmediates(uint32_t op) {
  if ((op >= 14 && op <= 20) || (op >= 35 && op <= 83) || (op >= 94 && op <= 255)) {
    switch (op) {
      case 154: case 162: case 165: case 166: case 175: case 176: case 178: case 179:
      case 180: case 187: case 194: case 197: case 198: case 207: case 208: case 210:
      case 211: case 212: case 226: case 238:
        return false;  // unassigned
    }
    return true;
  }
  return op >= 0x100 && op <= 0x113;  // relaxed SIMD
}

// 0xfd: SIMD.
Result<void> DecodeSimd(Reader& r, Instruction& in) {
  const uint32_t op = in.sub;
  if (op <= 11 || op == 92 || op == 93) return SkipMemArg(r, in);  // loads, store
  if (op >= 84 && op <= 91) {                                      // lane loads and stores
    KEEL_TRY_VOID(SkipMemArg(r, in));
    return r.Skip(1);
  }
  if (op == 12 || op == 13) return r.Skip(16);  // v128.const, i8x16.shuffle
  if (op >= 21 && op <= 34) return r.Skip(1);   // extract and replace lane
  if (IsSimdWithoutImmediates(op)) return {};
  return UnknownOpcode(r, in);
}

// 0xfe: threads.
Result<void> DecodeAtomic(Reader& r, Instruction& in) {
  const uint32_t op = in.sub;
  if (op <= 2 || (op >= 0x10 && op <= 0x4e)) return SkipMemArg(r, in);
  if (op == 3) {  // atomic.fence
    KEEL_TRY(zero, r.U8());
    if (zero != 0) return r.Fail(in.begin, "atomic.fence flags must be 0");
    return {};
  }
  return UnknownOpcode(r, in);
}

Result<void> SkipTypeVector(Reader& r) {
  KEEL_TRY(count, r.Count("select type"));
  for (uint32_t i = 0; i < count; ++i) KEEL_TRY_VOID(wasm::ReadWasmType(r));
  return {};
}

// try_table's catch clauses: kind, [tag], label.
Result<void> SkipCatchClauses(Reader& r) {
  KEEL_TRY(count, r.Count("catch clause"));
  for (uint32_t i = 0; i < count; ++i) {
    size_t at = r.pos();
    KEEL_TRY(kind, r.U8());
    if (kind > 3) return r.Fail(at, "unknown catch kind " + ByteHex(kind));
    if (kind < 2) KEEL_TRY_VOID(r.U32());  // catch, catch_ref: tag
    KEEL_TRY_VOID(r.U32());                // label
  }
  return {};
}

// The kind of the single index immediate of one-byte opcodes with one.
IndexKind SingleIndexKind(uint8_t op) {
  switch (op) {
    case 0x07: case 0x08: return IndexKind::kTag;  // catch throw
    case 0x09: case 0x18:                          // rethrow delegate
    case 0x0c: case 0x0d: case 0xd4: case 0xd6:    // br br_if br_on_null br_on_non_null
      return IndexKind::kLabel;
    case 0x10: case 0x12: case 0xd2: return IndexKind::kFunction;  // call return_call ref.func
    case 0x14: case 0x15: return IndexKind::kType;                 // call_ref return_call_ref
    case 0x20: case 0x21: case 0x22: return IndexKind::kLocal;
    case 0x23: case 0x24: return IndexKind::kGlobal;
    case 0x25: case 0x26: return IndexKind::kTable;   // table.get table.set
    case 0x3f: case 0x40: return IndexKind::kMemory;  // memory.size memory.grow
  }
  return IndexKind::kNone;
}

// Immediates of the one-byte opcodes that have any. False: none.
Result<bool> DecodeImmediates(Reader& r, Instruction& in) {
  if (IndexKind kind = SingleIndexKind(in.opcode); kind != IndexKind::kNone) {
    KEEL_TRY_VOID(ReadIndex(r, in, kind));
    return true;
  }
  switch (in.opcode) {
    case 0x02: case 0x03: case 0x04: case 0x06:  // block loop if try
      KEEL_TRY_VOID(ReadBlockType(r, in));
      return true;
    case 0x1f:  // try_table
      KEEL_TRY_VOID(ReadBlockType(r, in));
      KEEL_TRY_VOID(SkipCatchClauses(r));
      return true;
    case 0x0e: {  // br_table
      KEEL_TRY(count, r.Count("br_table label"));
      for (uint32_t i = 0; i <= count; ++i) KEEL_TRY_VOID(r.U32());
      return true;
    }
    case 0x11: case 0x13:  // call_indirect return_call_indirect: type table
      KEEL_TRY_VOID(ReadIndex(r, in, IndexKind::kType));
      KEEL_TRY_VOID(r.U32());
      return true;
    case 0x1c:
      KEEL_TRY_VOID(SkipTypeVector(r));
      return true;
    case 0x41: KEEL_TRY_VOID(r.SkipS32()); return true;
    case 0x42: KEEL_TRY_VOID(r.SkipS64()); return true;
    case 0x43: KEEL_TRY_VOID(r.Skip(4)); return true;
    case 0x44: KEEL_TRY_VOID(r.Skip(8)); return true;
    case 0xd0: KEEL_TRY_VOID(r.S33()); return true;  // ref.null heaptype
  }
  if (in.opcode >= 0x28 && in.opcode <= 0x3e) {
    KEEL_TRY_VOID(SkipMemArg(r, in));
    return true;
  }
  return false;
}

bool HasNoImmediates(uint8_t op) {
  switch (op) {
    case 0x00: case 0x01: case 0x05: case 0x0a: case 0x0b: case 0x0f:
    case 0x19: case 0x1a: case 0x1b: case 0xd1: case 0xd3: case 0xd5:
      return true;
  }
  return op >= 0x45 && op <= 0xc4;  // numeric, including sign extension
}

Result<Instruction> DecodeOne(Reader& r) {
  Instruction in;
  in.begin = r.pos();
  KEEL_TRY(opcode, r.U8());
  in.opcode = opcode;
  if (opcode >= 0xfb && opcode <= 0xfe) {
    KEEL_TRY(sub, r.U32());
    in.sub = sub;
    Result<void> decoded;
    switch (opcode) {
      case 0xfc: decoded = DecodeMisc(r, in); break;
      case 0xfd: decoded = DecodeSimd(r, in); break;
      case 0xfe: decoded = DecodeAtomic(r, in); break;
      default:
        return r.Fail(in.begin, "GC instructions (0xfb " + std::to_string(sub) +
                                    ") are not supported");
    }
    if (!decoded) return tl::unexpected(std::move(decoded).error());
  } else {
    KEEL_TRY(had_immediates, DecodeImmediates(r, in));
    if (!had_immediates && !HasNoImmediates(opcode)) return UnknownOpcode(r, in);
  }
  in.end = r.pos();
  return in;
}

// Decodes instructions up to and including the `end` that closes the
// expression, calling visit(const Instruction&) -> Result<void> on each.
template <typename Visit>
Result<void> DecodeExpression(Reader& r, Visit&& visit) {
  size_t depth = 1;
  while (depth > 0) {
    KEEL_TRY(in, DecodeOne(r));
    switch (in.opcode) {
      case 0x02: case 0x03: case 0x04: case 0x06: case 0x1f:
        ++depth;
        break;
      case 0x0b:  // end
      case 0x18:  // delegate ends its try
        --depth;
        break;
    }
    KEEL_TRY_VOID(visit(in));
  }
  return {};
}

Result<void> SkipLocals(Reader& r) {
  KEEL_TRY(groups, r.Count("local declaration"));
  for (uint32_t i = 0; i < groups; ++i) {
    KEEL_TRY_VOID(r.U32());
    KEEL_TRY_VOID(wasm::ReadWasmType(r));
  }
  return {};
}

// Decodes body `i` of `p`, calling visit on each instruction.
template <typename Visit>
Result<void> DecodeBody(std::span<const uint8_t> bytes, const ParsedModule& p, size_t i,
                        Visit&& visit) {
  const wasm::BodyRange& body = p.bodies[i];
  Reader r(bytes, body.body_begin, body.end,
           "function " + std::to_string(p.imported_funcs + i) + " body");
  KEEL_TRY_VOID(SkipLocals(r));
  KEEL_TRY_VOID(DecodeExpression(r, visit));
  if (!r.AtEnd()) return r.Fail(r.pos(), "code after the function's final end");
  return {};
}

// ---------------------------------------------------------------------------
// Output: a sequence of pieces, each copied from the input or written anew,
// so that the final bytes come with a map back to input offsets.

class Out {
 public:
  void Copy(size_t begin, size_t end) {
    if (end <= begin) return;
    if (!pieces_.empty() && !pieces_.back().added &&
        pieces_.back().origin + pieces_.back().size == begin) {
      pieces_.back().size += end - begin;
    } else {
      pieces_.push_back({false, begin, end - begin, 0});
    }
    size_ += end - begin;
  }
  // New bytes; `origin` is the input offset they stand for, if any (an
  // instruction they replace).
  void Add(std::span<const uint8_t> data, uint64_t origin = RewriteResult::kAdded) {
    if (data.empty()) return;
    pieces_.push_back({true, origin, data.size(), added_.size()});
    added_.insert(added_.end(), data.begin(), data.end());
    size_ += data.size();
  }
  void Add(uint8_t byte) { Add(std::span<const uint8_t>(&byte, 1)); }
  void AddU32(uint64_t value) {
    std::vector<uint8_t> leb;
    PutU32(leb, value);
    Add(leb);
  }
  void Append(const Out& other) {
    for (const Piece& piece : other.pieces_) {
      if (piece.added) {
        auto data = std::span<const uint8_t>(other.added_).subspan(piece.added_at, piece.size);
        Add(data, piece.origin);
      } else {
        Copy(piece.origin, piece.origin + piece.size);
      }
    }
  }
  size_t size() const { return size_; }

  void Serialize(std::span<const uint8_t> in, RewriteResult& result) const {
    result.bytes.reserve(size_);
    for (const Piece& piece : pieces_) {
      result.runs.push_back({result.bytes.size(), piece.origin});
      const uint8_t* from = piece.added ? added_.data() + piece.added_at : in.data() + piece.origin;
      result.bytes.insert(result.bytes.end(), from, from + piece.size);
    }
  }

 private:
  struct Piece {
    bool added;       // from added_, else copied from the input at origin
    uint64_t origin;  // the input offset it stands for (kAdded: none)
    size_t size;
    size_t added_at;
  };
  std::vector<Piece> pieces_;
  std::vector<uint8_t> added_;
  size_t size_ = 0;
};

void AddSection(Out& out, uint8_t id, const Out& payload) {
  out.Add(id);
  out.AddU32(payload.size());
  out.Append(payload);
}

// ---------------------------------------------------------------------------
// Generated code

bool HasFloat(const std::vector<ValType>& types) {
  return std::any_of(types.begin(), types.end(),
                     [](ValType t) { return t == ValType::kF32 || t == ValType::kF64; });
}
bool HasFloat(const FuncType& type) { return HasFloat(type.params) || HasFloat(type.results); }

ValType BitsOf(ValType type) {
  if (type == ValType::kF32) return ValType::kI32;
  if (type == ValType::kF64) return ValType::kI64;
  return type;
}

FuncType BitsOf(const FuncType& type) {
  FuncType bits;
  for (ValType t : type.params) bits.params.push_back(BitsOf(t));
  for (ValType t : type.results) bits.results.push_back(BitsOf(t));
  return bits;
}

// The reinterpret instruction from `from` to `to`, if they differ.
void Reinterpret(std::vector<uint8_t>& code, ValType from, ValType to) {
  if (from == to) return;
  if (from == ValType::kF32) code.push_back(0xbc);  // i32.reinterpret_f32
  if (from == ValType::kF64) code.push_back(0xbd);  // i64.reinterpret_f64
  if (from == ValType::kI32) code.push_back(0xbe);  // f32.reinterpret_i32
  if (from == ValType::kI64) code.push_back(0xbf);  // f64.reinterpret_i64
}

std::vector<uint8_t> WithSize(const std::vector<uint8_t>& body) {
  std::vector<uint8_t> out;
  PutU32(out, body.size());
  out.insert(out.end(), body.begin(), body.end());
  return out;
}

// The body of a function of type `outer` that calls `callee` (of type
// `inner`, which differs only in f32/f64 versus i32/i64), reinterpreting
// parameters on the way in and results on the way out.
std::vector<uint8_t> ConvertingCall(const FuncType& outer, const FuncType& inner,
                                    uint32_t callee) {
  const size_t n = inner.results.size();
  const bool spill = n > 1 && outer.results != inner.results;
  std::vector<uint8_t> code;
  if (spill) {  // one local per result, to convert them in order
    PutU32(code, n);
    for (ValType t : inner.results) {
      code.push_back(1);
      code.push_back(wasm::ValTypeCode(t));
    }
  } else {
    code.push_back(0);
  }
  for (size_t i = 0; i < outer.params.size(); ++i) {
    code.push_back(0x20);  // local.get
    PutU32(code, i);
    Reinterpret(code, outer.params[i], inner.params[i]);
  }
  code.push_back(0x10);  // call
  PutU32(code, callee);
  if (spill) {
    const size_t base = outer.params.size();
    for (size_t k = n; k-- > 0;) {
      code.push_back(0x21);  // local.set
      PutU32(code, base + k);
    }
    for (size_t k = 0; k < n; ++k) {
      code.push_back(0x20);
      PutU32(code, base + k);
      Reinterpret(code, inner.results[k], outer.results[k]);
    }
  } else if (n == 1) {
    Reinterpret(code, inner.results[0], outer.results[0]);
  }
  code.push_back(0x0b);
  return WithSize(code);
}

// $keel_grow(delta) -> old size or -1: refuses deltas above the grant,
// charges the grant, and refunds it when memory.grow itself fails.
std::vector<uint8_t> GrowBody(uint32_t grant_global, bool is64) {
  const uint8_t type = is64 ? wasm::kI64Code : wasm::kI32Code;
  const uint8_t gt_u = is64 ? 0x56 : 0x4b;
  const uint8_t sub = is64 ? 0x7d : 0x6b;
  const uint8_t add = is64 ? 0x7c : 0x6a;
  const uint8_t eq = is64 ? 0x51 : 0x46;
  const uint8_t constant = is64 ? 0x42 : 0x41;
  std::vector<uint8_t> g;
  PutU32(g, grant_global);
  std::vector<uint8_t> code = {0x01, 0x01, type};  // (local $old)
  auto put = [&code](std::initializer_list<uint8_t> bytes) {
    code.insert(code.end(), bytes.begin(), bytes.end());
  };
  auto global = [&code, &g](uint8_t op) {
    code.push_back(op);
    code.insert(code.end(), g.begin(), g.end());
  };
  put({0x20, 0x00});  // local.get $delta
  global(0x23);       // global.get $grant
  put({gt_u, 0x04, 0x40, constant, 0x7f, 0x0f, 0x0b});  // if: return -1
  global(0x23);
  put({0x20, 0x00, sub});
  global(0x24);  // grant -= delta
  put({0x20, 0x00, 0x40, 0x00, 0x22, 0x01});  // local.tee $old (memory.grow)
  put({constant, 0x7f, eq, 0x04, 0x40});      // if it failed:
  global(0x23);
  put({0x20, 0x00, add});
  global(0x24);  // grant += delta
  put({0x0b, 0x20, 0x01, 0x0b});
  return WithSize(code);
}

// Copies a range of the input to `out` with some of its pieces replaced.
class Patcher {
 public:
  Patcher(Out& out, size_t begin) : out_(out), last_(begin) {}
  void ReplaceU32(size_t at, size_t end, uint64_t value) {
    std::vector<uint8_t> leb;
    PutU32(leb, value);
    Replace(at, end, leb);
  }
  void Replace(size_t at, size_t end, std::span<const uint8_t> bytes) {
    out_.Copy(last_, at);
    out_.Add(bytes, at);
    last_ = end;
    changed_ = true;
  }
  void Finish(size_t end) {
    out_.Copy(last_, end);
    last_ = end;
  }
  bool changed() const { return changed_; }

 private:
  Out& out_;
  size_t last_;
  bool changed_ = false;
};

bool NeedsRename(std::string_view name) {
  return name.empty() || name.find('\0') != std::string_view::npos;
}

void NoteFeature(const Instruction& in, CodeFeatures& f) {
  if (in.opcode == 0x26) f.table_set = true;
  if (in.opcode == 0x40) f.memory_grow = true;
  if (in.opcode != 0xfc) return;
  switch (in.sub) {
    case 8: f.memory_init = true; break;
    case 9: f.data_drop = true; break;
    case 12: f.table_init = true; break;
    case 13: f.elem_drop = true; break;
    case 14: f.table_copy = true; break;
    case 15: f.table_grow = true; break;
    case 17: f.table_fill = true; break;
  }
}

class Rewriter {
 public:
  Rewriter(std::span<const uint8_t> in, ParsedModule p, const RewriteOptions& options)
      : in_(in), p_(std::move(p)), options_(options) {}

  Result<RewriteResult> Run() {
    KEEL_TRY_VOID(PlanMemoryCap());
    PlanImports();
    PlanExports();
    PlanGlobals();
    PlanGrow();
    // Appending makes indices valid that were not: the code must be read
    // to refuse those (see CheckIndex).
    appends_ = !new_types_.empty() || !new_funcs_.empty() || !new_globals_.empty();
    decode_code_ = !remap_.empty() || grow_func_ || options_.scan_code || appends_;
    Out out;
    out.Copy(0, wasm::kHeaderSize);
    KEEL_TRY_VOID(EmitSections(out));
    out.Serialize(in_, result_);
    result_.features.scanned = decode_code_;
    result_.original_functions = static_cast<uint32_t>(p_.func_types.size());
    return std::move(result_);
  }

 private:
  struct NewExport {
    std::string name;
    uint8_t kind;
    uint32_t index;
  };
  struct NewFunction {
    uint32_t type_index;
    std::vector<uint8_t> body;  // with its size
  };

  uint32_t FunctionIndex(size_t appended) const {
    return static_cast<uint32_t>(p_.func_types.size() + appended);
  }

  uint32_t TypeIndexOf(const FuncType& type) {
    for (size_t i = 0; i < p_.types.size(); ++i) {
      if (p_.types[i].supported && p_.types[i].func == type) return static_cast<uint32_t>(i);
    }
    for (size_t i = 0; i < new_types_.size(); ++i) {
      if (new_types_[i] == type) return static_cast<uint32_t>(p_.types.size() + i);
    }
    new_types_.push_back(type);
    return static_cast<uint32_t>(p_.types.size() + new_types_.size() - 1);
  }

  uint32_t AppendFunction(uint32_t type_index, std::vector<uint8_t> body) {
    new_funcs_.push_back({type_index, std::move(body)});
    return FunctionIndex(new_funcs_.size() - 1);
  }

  // Where references to function `index` go in the rewritten module.
  uint32_t Remap(uint32_t index) const {
    auto it = remap_.find(index);
    return it == remap_.end() ? index : it->second;
  }

  Result<void> PlanMemoryCap() {
    if (!options_.max_memory_pages || !p_.info.memory || p_.memory_imported) return {};
    const Limits& limits = *p_.info.memory;
    const uint32_t max_pages = *options_.max_memory_pages;
    if (limits.min > max_pages) {
      return MakeError(ErrorCode::kResourceExhausted,
                       "memory minimum " + std::to_string(limits.min) +
                           " pages exceeds the cap of " + std::to_string(max_pages) + " pages");
    }
    // A maximum above what the address size allows would be invalid.
    const uint64_t cap = std::min<uint64_t>(max_pages, p_.memory64() ? wasm::kMaxPages64
                                                                     : wasm::kMaxPages32);
    if (!limits.max || *limits.max > cap) memory_cap_ = cap;
    return {};
  }

  void PlanImports() {
    uint32_t func_index = 0;
    for (size_t i = 0; i < p_.info.imports.size(); ++i) {
      const ImportInfo& import = p_.info.imports[i];
      RewrittenImport out{import.module, import.name, false};
      if (options_.rename_names && (NeedsRename(import.module) || NeedsRename(import.name))) {
        out.module = std::string(kReservedPrefix);
        out.name = std::string(kReservedPrefix) + "i:" + std::to_string(i);
        imports_changed_ = true;
      }
      if (import.kind == ExternKind::kFunc) {
        if (options_.float_bits_imports && import.func_supported && HasFloat(import.func)) {
          const FuncType bits = BitsOf(import.func);
          import_types_[i] = TypeIndexOf(bits);
          remap_[func_index] = AppendFunction(p_.import_entries[i].type_index,
                                              ConvertingCall(import.func, bits, func_index));
          out.bits = true;
          imports_changed_ = true;
        }
        ++func_index;
      }
      result_.imports.push_back(std::move(out));
    }
  }

  void PlanExports() {
    std::map<uint32_t, std::string> wrappers;  // function -> its bits wrapper's export
    for (size_t j = 0; j < p_.info.exports.size(); ++j) {
      const ExportInfo& e = p_.info.exports[j];
      RewrittenExport out;
      out.name = options_.rename_names && NeedsRename(e.name)
                     ? std::string(kReservedPrefix) + "e:" + std::to_string(j)
                     : e.name;
      out.call_name = out.name;
      if (out.name != e.name) exports_changed_ = true;
      if (e.kind == ExternKind::kFunc) {
        const uint32_t target = Remap(e.index);
        if (target != e.index) exports_changed_ = true;
        if (options_.float_bits_exports && e.func_supported && HasFloat(e.func)) {
          auto [it, fresh] = wrappers.try_emplace(target);
          if (fresh) {
            const FuncType bits = BitsOf(e.func);
            it->second = std::string(kReservedPrefix) + "f:" + std::to_string(j);
            const uint32_t wrapper =
                AppendFunction(TypeIndexOf(bits), ConvertingCall(bits, e.func, target));
            new_exports_.push_back({it->second, 0x00, wrapper});
          }
          out.call_name = it->second;
          out.bits = true;
        }
      }
      result_.exports.push_back(std::move(out));
    }
  }

  void PlanGlobals() {
    if (!options_.export_mutable_globals) return;
    for (size_t g = 0; g < p_.globals.size(); ++g) {
      if (!p_.globals[g].mutable_) continue;
      GlobalExport out;
      out.index = static_cast<uint32_t>(g);
      out.type = wasm::ToValType(p_.globals[g].type);
      for (size_t j = 0; j < p_.info.exports.size(); ++j) {
        const ExportInfo& e = p_.info.exports[j];
        if (e.kind == ExternKind::kGlobal && e.index == g) {
          out.name = result_.exports[j].name;
          break;
        }
      }
      if (out.name.empty()) {
        out.name = std::string(kReservedPrefix) + "g:" + std::to_string(g);
        out.reserved = true;
        new_exports_.push_back({out.name, 0x03, out.index});
      }
      result_.globals.push_back(std::move(out));
    }
  }

  void PlanGrow() {
    if (!options_.grow_grant || p_.memories.empty()) return;
    const bool is64 = p_.memory64();
    const ValType type = is64 ? ValType::kI64 : ValType::kI32;
    const uint32_t grant_global = static_cast<uint32_t>(p_.globals.size());
    const uint8_t constant = is64 ? 0x42 : 0x41;  // i64.const / i32.const
    std::vector<uint8_t> global = {wasm::ValTypeCode(type), 0x01, constant};
    PutS64(global, is64 ? static_cast<int64_t>(*options_.grow_grant)
                        : static_cast<int32_t>(*options_.grow_grant));
    global.push_back(0x0b);
    new_globals_.push_back(std::move(global));
    new_exports_.push_back({kGrantExport, 0x03, grant_global});
    result_.grant_export = kGrantExport;
    // The host must see the memory's size to charge it.
    const bool exported = std::any_of(p_.info.exports.begin(), p_.info.exports.end(),
                                      [](const ExportInfo& e) { return e.kind == ExternKind::kMemory; });
    if (!exported) {
      new_exports_.push_back({kMemoryExport, 0x02, 0});
      result_.memory_export = kMemoryExport;
    }
    grow_func_ = AppendFunction(TypeIndexOf({{type}, {type}}), GrowBody(grant_global, is64));
  }

  // --- Sections ---------------------------------------------------------------

  // Sections keel adds when the module has none of that kind.
  std::vector<uint8_t> MissingSections() const {
    std::vector<uint8_t> ids;
    auto need = [&](uint8_t id, bool wanted) {
      if (wanted && !p_.Section(id)) ids.push_back(id);
    };
    need(kTypeSection, !new_types_.empty());
    need(kFunctionSection, !new_funcs_.empty());
    need(kGlobalSection, !new_globals_.empty());
    need(kExportSection, !new_exports_.empty());
    need(kCodeSection, !new_funcs_.empty());
    std::sort(ids.begin(), ids.end(), [](uint8_t a, uint8_t b) {
      return wasm::SectionRank(a) < wasm::SectionRank(b);
    });
    return ids;
  }

  Result<void> EmitSections(Out& out) {
    std::vector<uint8_t> missing = MissingSections();
    size_t next_missing = 0;
    auto emit_missing_before = [&](int rank) -> Result<void> {
      while (next_missing < missing.size() &&
             wasm::SectionRank(missing[next_missing]) < rank) {
        KEEL_TRY_VOID(EmitSection(out, missing[next_missing], nullptr));
        ++next_missing;
      }
      return {};
    };
    for (const wasm::SectionRange& s : p_.sections) {
      if (s.id != kCustomSection) KEEL_TRY_VOID(emit_missing_before(wasm::SectionRank(s.id)));
      KEEL_TRY_VOID(EmitSection(out, s.id, &s));
    }
    return emit_missing_before(1000);
  }

  // Emits section `id`: the original `s` (copied, or rebuilt when something
  // in it changes), or a new one when `s` is null.
  Result<void> EmitSection(Out& out, uint8_t id, const wasm::SectionRange* s) {
    Out payload;
    switch (id) {
      case kTypeSection:
        if (new_types_.empty()) break;
        BuildTypes(s, payload);
        return Finish(out, id, payload);
      case kImportSection:
        if (!imports_changed_) break;
        BuildImports(*s, payload);
        return Finish(out, id, payload);
      case kFunctionSection:
        if (new_funcs_.empty()) break;
        BuildFunctions(s, payload);
        return Finish(out, id, payload);
      case kTableSection:
        if (remap_.empty() && !appends_) break;
        KEEL_TRY_VOID(BuildTables(*s, payload));
        return Finish(out, id, payload);
      case kMemorySection:
        if (!memory_cap_) break;
        BuildMemory(payload);
        return Finish(out, id, payload);
      case kGlobalSection:
        if (remap_.empty() && !appends_) break;
        KEEL_TRY_VOID(BuildGlobals(s, payload));
        return Finish(out, id, payload);
      case kExportSection:
        if (!exports_changed_ && new_exports_.empty()) break;
        BuildExports(payload);
        return Finish(out, id, payload);
      case kElementSection:
        if (remap_.empty() && !appends_) break;
        KEEL_TRY_VOID(BuildElements(*s, payload));
        return Finish(out, id, payload);
      case kCodeSection:
        if (!decode_code_ && new_funcs_.empty()) break;
        KEEL_TRY_VOID(BuildCode(s, payload));
        return Finish(out, id, payload);
    }
    out.Copy(s->begin, s->end);
    return {};
  }

  Result<void> Finish(Out& out, uint8_t id, const Out& payload) {
    AddSection(out, id, payload);
    return {};
  }

  // The count at the start of a section, and the offset after it.
  std::pair<uint32_t, size_t> CountOf(const wasm::SectionRange* s) const {
    if (!s) return {0, 0};
    Reader r(in_, s->payload_begin, s->end, wasm::SectionLabel(s->id));
    auto count = r.U32();  // already read once by ParseModule
    return {count.value_or(0), r.pos()};
  }

  void BuildTypes(const wasm::SectionRange* s, Out& payload) {
    auto [count, entries] = CountOf(s);
    payload.AddU32(count + new_types_.size());
    if (s) payload.Copy(entries, s->end);
    for (const FuncType& type : new_types_) {
      std::vector<uint8_t> entry = {0x60};
      for (const auto* list : {&type.params, &type.results}) {
        PutU32(entry, list->size());
        for (ValType t : *list) entry.push_back(wasm::ValTypeCode(t));
      }
      payload.Add(entry);
    }
  }

  void BuildImports(const wasm::SectionRange& s, Out& payload) {
    auto [count, entries] = CountOf(&s);
    payload.Copy(s.payload_begin, entries);
    for (size_t i = 0; i < p_.import_entries.size(); ++i) {
      const wasm::ImportEntry& entry = p_.import_entries[i];
      const ImportInfo& import = p_.info.imports[i];
      const RewrittenImport& out = result_.imports[i];
      if (out.module != import.module || out.name != import.name) {
        std::vector<uint8_t> names;
        PutName(names, out.module);
        PutName(names, out.name);
        payload.Add(names);
      } else {
        payload.Copy(entry.begin, entry.desc_begin);
      }
      if (auto it = import_types_.find(i); it != import_types_.end()) {
        payload.Add(0x00);
        payload.AddU32(it->second);
      } else {
        payload.Copy(entry.desc_begin, entry.end);
      }
    }
  }

  void BuildFunctions(const wasm::SectionRange* s, Out& payload) {
    auto [count, entries] = CountOf(s);
    payload.AddU32(count + new_funcs_.size());
    if (s) payload.Copy(entries, s->end);
    for (const NewFunction& f : new_funcs_) payload.AddU32(f.type_index);
  }

  // Tables with an initializer (function references: 0x40 0x00 tabletype
  // expr) have their expressions patched like any other.
  Result<void> BuildTables(const wasm::SectionRange& s, Out& payload) {
    Reader r(in_, s.payload_begin, s.end, wasm::SectionLabel(s.id));
    Patcher patch(payload, s.payload_begin);
    KEEL_TRY(count, r.Count("table"));
    for (uint32_t i = 0; i < count; ++i) {
      const bool has_init = r.Peek() == 0x40;
      if (has_init) KEEL_TRY_VOID(r.Skip(2));
      KEEL_TRY_VOID(wasm::ReadWasmType(r));
      KEEL_TRY(flags, r.U8());
      KEEL_TRY_VOID(r.U64());                 // minimum
      if (flags & 0x01) KEEL_TRY_VOID(r.U64());  // maximum
      if (has_init) KEEL_TRY_VOID(PatchExpression(r, patch, /*body=*/false));
    }
    patch.Finish(s.end);
    return {};
  }

  void BuildMemory(Out& payload) {
    // Setting bit 0 adds a maximum and keeps the shared and memory64 bits.
    payload.AddU32(1);
    payload.Add(static_cast<uint8_t>(p_.memory_flags | 0x01));
    payload.AddU32(p_.info.memory->min);
    payload.AddU32(*memory_cap_);
  }

  // An index into a space keel appends to must be in the original's range:
  // `call 40` in a module of 30 functions is invalid, and would silently
  // call a wrapper once keel has appended ten. Memory indices too, as an
  // invalid one would vanish with the memory.grow keel replaces.
  Result<void> CheckIndex(const Reader& r, IndexKind kind, uint32_t index, size_t at) const {
    size_t space = 0;
    const char* what = "";
    const char* plural = "";
    switch (kind) {
      case IndexKind::kFunction:
        space = p_.func_types.size(), what = "function", plural = "functions";
        break;
      case IndexKind::kType: space = p_.types.size(), what = "type", plural = "types"; break;
      case IndexKind::kGlobal: space = p_.globals.size(), what = "global", plural = "globals"; break;
      // memory.grow is replaced, immediates and all: its index must be right.
      case IndexKind::kMemory:
        space = p_.memories.size(), what = "memory", plural = "memories";
        break;
      default: return {};
    }
    if (index < space) [[likely]] return {};
    return IndexOutOfRange(r, what, plural, index, space, at);
  }

  [[gnu::cold, gnu::noinline]] static tl::unexpected<Error> IndexOutOfRange(
      const Reader& r, const char* what, const char* plural, uint32_t index, size_t space,
      size_t at) {
    return r.Fail(at, std::string(what) + " index " + std::to_string(index) + " out of range (" +
                          std::to_string(space) + " " + plural + ")");
  }

  // Copies the constant expression or body code in r up to its end,
  // patching function references (and memory.grow in bodies).
  Result<void> PatchExpression(Reader& r, Patcher& patch, bool body) {
    return DecodeExpression(r, [&](const Instruction& in) -> Result<void> {
      KEEL_TRY_VOID(CheckIndex(r, in.kind, in.index, in.index_at));
      if (body) NoteFeature(in, result_.features);
      if (in.opcode == 0x10 || in.opcode == 0x12 || in.opcode == 0xd2) {
        const uint32_t target = Remap(in.index);
        if (target != in.index) patch.ReplaceU32(in.index_at, in.end, target);
      } else if (body && in.opcode == 0x40 && grow_func_) {
        std::vector<uint8_t> call = {0x10};
        PutU32(call, *grow_func_);
        patch.Replace(in.begin, in.end, call);
      }
      return {};
    });
  }

  Result<void> BuildGlobals(const wasm::SectionRange* s, Out& payload) {
    auto [count, entries] = CountOf(s);
    payload.AddU32(count + new_globals_.size());
    if (s) {
      Patcher patch(payload, entries);
      for (const wasm::GlobalEntry& g : p_.globals) {
        if (g.imported) continue;
        Reader r(in_, g.init_begin, g.init_end, "global initializer");
        KEEL_TRY_VOID(PatchExpression(r, patch, /*body=*/false));
      }
      patch.Finish(s->end);
    }
    for (const auto& g : new_globals_) payload.Add(g);
    return {};
  }

  void BuildExports(Out& payload) {
    payload.AddU32(p_.info.exports.size() + new_exports_.size());
    for (size_t j = 0; j < p_.info.exports.size(); ++j) {
      const ExportInfo& e = p_.info.exports[j];
      std::vector<uint8_t> entry;
      PutName(entry, result_.exports[j].name);
      entry.push_back(static_cast<uint8_t>(e.kind));
      PutU32(entry, e.kind == ExternKind::kFunc ? Remap(e.index) : e.index);
      payload.Add(entry);
    }
    for (const NewExport& e : new_exports_) {
      std::vector<uint8_t> entry;
      PutName(entry, e.name);
      entry.push_back(e.kind);
      PutU32(entry, e.index);
      payload.Add(entry);
    }
  }

  Result<void> PatchFuncIndices(Reader& r, Patcher& patch) {
    KEEL_TRY(count, r.Count("element"));
    for (uint32_t i = 0; i < count; ++i) {
      size_t at = r.pos();
      KEEL_TRY(index, r.U32());
      KEEL_TRY_VOID(CheckIndex(r, IndexKind::kFunction, index, at));
      if (Remap(index) != index) patch.ReplaceU32(at, r.pos(), Remap(index));
    }
    return {};
  }

  Result<void> PatchExpressions(Reader& r, Patcher& patch) {
    KEEL_TRY(count, r.Count("element"));
    for (uint32_t i = 0; i < count; ++i) KEEL_TRY_VOID(PatchExpression(r, patch, false));
    return {};
  }

  // One element segment: flags bit 0 passive or declarative, bit 1 an
  // explicit table (active) or declarative (passive), bit 2 expressions.
  Result<void> PatchSegment(Reader& r, Patcher& patch) {
    size_t at = r.pos();
    KEEL_TRY(flags, r.U32());
    if (flags > 7) return r.Fail(at, "unknown element segment flags " + std::to_string(flags));
    const bool active = !(flags & 1);
    if (active && (flags & 2)) KEEL_TRY_VOID(r.U32());  // table index
    if (active) KEEL_TRY_VOID(PatchExpression(r, patch, false));  // offset
    if (flags & 4) {
      if (flags != 4) KEEL_TRY_VOID(wasm::ReadWasmType(r));  // reftype
      return PatchExpressions(r, patch);
    }
    if (flags != 0) KEEL_TRY_VOID(r.U8());  // elemkind
    return PatchFuncIndices(r, patch);
  }

  Result<void> BuildElements(const wasm::SectionRange& s, Out& payload) {
    Reader r(in_, s.payload_begin, s.end, wasm::SectionLabel(s.id));
    Patcher patch(payload, s.payload_begin);
    KEEL_TRY(count, r.Count("element segment"));
    for (uint32_t i = 0; i < count; ++i) KEEL_TRY_VOID(PatchSegment(r, patch));
    if (!r.AtEnd()) return r.Fail(r.pos(), "section size mismatch");
    patch.Finish(s.end);
    return {};
  }

  Result<void> BuildBody(size_t i, Out& payload) {
    const wasm::BodyRange& body = p_.bodies[i];
    Out code;
    Patcher patch(code, body.body_begin);
    Reader r(in_, body.body_begin, body.end,
             "function " + std::to_string(p_.imported_funcs + i) + " body");
    KEEL_TRY_VOID(SkipLocals(r));
    KEEL_TRY_VOID(PatchExpression(r, patch, /*body=*/true));
    if (!r.AtEnd()) return r.Fail(r.pos(), "code after the function's final end");
    patch.Finish(body.end);
    if (!patch.changed()) {
      payload.Copy(body.begin, body.end);  // unchanged: keep its size's encoding
    } else {
      payload.AddU32(code.size());
      payload.Append(code);
    }
    return {};
  }

  Result<void> BuildCode(const wasm::SectionRange* s, Out& payload) {
    auto [count, entries] = CountOf(s);
    payload.AddU32(count + new_funcs_.size());
    for (size_t i = 0; i < p_.bodies.size(); ++i) {
      if (decode_code_) {
        KEEL_TRY_VOID(BuildBody(i, payload));
      } else {
        payload.Copy(p_.bodies[i].begin, p_.bodies[i].end);
      }
    }
    for (const NewFunction& f : new_funcs_) payload.Add(f.body);
    return {};
  }

  std::span<const uint8_t> in_;
  ParsedModule p_;
  const RewriteOptions& options_;
  RewriteResult result_;

  std::vector<FuncType> new_types_;
  std::vector<NewFunction> new_funcs_;
  std::vector<NewExport> new_exports_;
  std::vector<std::vector<uint8_t>> new_globals_;  // type, mutability, init
  std::map<uint32_t, uint32_t> remap_;             // function index -> wrapper
  std::map<size_t, uint32_t> import_types_;        // import -> its bits type
  std::optional<uint64_t> memory_cap_;
  std::optional<uint32_t> grow_func_;
  bool imports_changed_ = false;
  bool exports_changed_ = false;
  bool appends_ = false;
  bool decode_code_ = false;
};

}  // namespace

Result<std::vector<std::vector<Instruction>>> DecodeBodies(std::span<const uint8_t> module) {
  KEEL_TRY(p, wasm::ParseModule(module, {.allow_reserved_names = true}));
  std::vector<std::vector<Instruction>> out(p.bodies.size());
  for (size_t i = 0; i < p.bodies.size(); ++i) {
    KEEL_TRY_VOID(DecodeBody(module, p, i, [&](const Instruction& in) -> Result<void> {
      out[i].push_back(in);
      return {};
    }));
  }
  return out;
}

Result<RewriteResult> RewriteModule(std::span<const uint8_t> bytes, const RewriteOptions& options) {
  KEEL_TRY(p, wasm::ParseModule(bytes));
  return Rewriter(bytes, std::move(p), options).Run();
}

Result<ModuleInfo> ReadRewrittenModuleInfo(std::span<const uint8_t> bytes) {
  KEEL_TRY(p, wasm::ParseModule(bytes, {.allow_reserved_names = true}));
  return std::move(p.info);
}

std::optional<std::string> CodeResetBlocker(const CodeFeatures& code) {
  if (!code.scanned) return "its code was not scanned";
  if (!code.MutatesTablesOrSegments()) return std::nullopt;
  const std::pair<bool, const char*> found[] = {
      {code.table_set, "table.set"},   {code.table_grow, "table.grow"},
      {code.table_fill, "table.fill"}, {code.table_copy, "table.copy"},
      {code.table_init, "table.init"}, {code.elem_drop, "elem.drop"},
      {code.data_drop, "data.drop"},   {code.memory_init, "memory.init"}};
  std::string names;
  for (const auto& [present, name] : found) {
    if (present) names += (names.empty() ? "" : ", ") + std::string(name);
  }
  return "its code changes tables or segments (" + names + ")";
}

std::optional<uint64_t> RewriteResult::OriginalOffset(uint64_t offset) const {
  auto it = std::upper_bound(runs.begin(), runs.end(), offset,
                             [](uint64_t value, const Run& run) { return value < run.out_begin; });
  if (it == runs.begin()) return std::nullopt;
  --it;
  if (it->in_begin == kAdded) return std::nullopt;
  return it->in_begin + (offset - it->out_begin);
}

Result<std::vector<uint8_t>> CapMemory(std::span<const uint8_t> bytes, uint32_t max_pages) {
  KEEL_TRY(rewritten, RewriteModule(bytes, {.max_memory_pages = max_pages}));
  return std::move(rewritten.bytes);
}

#undef KEEL_TRY
#undef KEEL_TRY_VOID

}  // namespace keel::engine

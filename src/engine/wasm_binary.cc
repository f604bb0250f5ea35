#include "engine/wasm_binary.h"

#include <cinttypes>
#include <cstdio>

#include "base/utf8.h"

namespace keel::engine::wasm {

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

tl::unexpected<Error> Invalid(std::string_view context, size_t at, std::string_view what) {
  return MakeError(ErrorCode::kInvalidModule, std::string(context) + " at offset " + Hex(at) +
                                                  ": " + std::string(what));
}

// ---------------------------------------------------------------------------
// Reader

tl::unexpected<Error> Reader::Fail(size_t at, std::string_view what) const {
  return Invalid(context_, at, what);
}

Result<void> Reader::Skip(uint64_t n) {
  if (n > remaining()) {
    return Fail(pos_, "truncated (" + std::to_string(n) + " bytes needed, " +
                          std::to_string(remaining()) + " left)");
  }
  pos_ += n;
  return {};
}

Result<uint32_t> Reader::U32Slow() {
  return Leb<32, false>().map([](uint64_t v) { return static_cast<uint32_t>(v); });
}
Result<uint64_t> Reader::U64() { return Leb<64, false>(); }
Result<int64_t> Reader::S33() {
  return Leb<33, true>().map([](uint64_t v) { return static_cast<int64_t>(v); });
}
Result<int32_t> Reader::S32() {
  return Leb<32, true>().map([](uint64_t v) { return static_cast<int32_t>(v); });
}
Result<int64_t> Reader::S64() {
  return Leb<64, true>().map([](uint64_t v) { return static_cast<int64_t>(v); });
}

Result<uint32_t> Reader::Count(std::string_view what) {
  size_t at = pos_;
  auto count = U32();
  if (!count) return count;
  if (*count > remaining()) {
    return Fail(at, std::string(what) + " count " + std::to_string(*count) + " exceeds the " +
                        std::to_string(remaining()) + " bytes left");
  }
  return count;
}

Result<std::string> Reader::Name() {
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

// LEB128 of an N-bit integer: at most ceil(N/7) bytes, and the unused high
// bits of the last byte must be zero (unsigned) or copies of the sign bit
// (signed). Padding with 0x80 bytes inside that length is legal.
template <int N, bool kSigned>
Result<uint64_t> Reader::Leb() {
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

// ---------------------------------------------------------------------------
// Encoders

void PutU32(std::vector<uint8_t>& out, uint64_t value) {
  do {
    uint8_t byte = value & 0x7f;
    value >>= 7;
    if (value) byte |= 0x80;
    out.push_back(byte);
  } while (value);
}

void PutS64(std::vector<uint8_t>& out, int64_t value) {
  for (;;) {
    uint8_t byte = value & 0x7f;
    value >>= 7;  // arithmetic: keeps the sign
    const bool done = (value == 0 && !(byte & 0x40)) || (value == -1 && (byte & 0x40));
    if (!done) byte |= 0x80;
    out.push_back(byte);
    if (done) return;
  }
}

void PutName(std::vector<uint8_t>& out, std::string_view name) {
  PutU32(out, name.size());
  out.insert(out.end(), name.begin(), name.end());
}

// ---------------------------------------------------------------------------
// Value types

Result<WasmType> ReadWasmType(Reader& r) {
  size_t at = r.pos();
  KEEL_WASM_TRY(byte, r.U8());
  switch (byte) {
    case kI32Code:
    case kI64Code:
    case kF32Code:
    case kF64Code:
    case 0x7b:  // v128
    case 0x70:  // funcref
    case 0x6f:  // externref
    case 0x69:  // exnref
      return WasmType{byte, 0};
    case 0x63:    // (ref null ht)
    case 0x64: {  // (ref ht), function references
      KEEL_WASM_TRY(heap, r.S33());
      return WasmType{byte, heap};
    }
  }
  return r.Fail(at, "unknown value type " + ByteHex(byte));
}

std::optional<ValType> ToValType(WasmType type) {
  switch (type.code) {
    case kI32Code: return ValType::kI32;
    case kI64Code: return ValType::kI64;
    case kF32Code: return ValType::kF32;
    case kF64Code: return ValType::kF64;
  }
  return std::nullopt;
}

uint8_t ValTypeCode(ValType type) {
  switch (type) {
    case ValType::kI32: return kI32Code;
    case ValType::kI64: return kI64Code;
    case ValType::kF32: return kF32Code;
    case ValType::kF64: return kF64Code;
  }
  return kI32Code;
}

namespace {

std::string HeapTypeName(int64_t heap) {
  if (heap >= 0) return std::to_string(heap);
  switch (static_cast<uint8_t>(heap & 0x7f)) {
    case 0x70: return "func";
    case 0x6f: return "extern";
    case 0x6e: return "any";
    case 0x6d: return "eq";
    case 0x6c: return "i31";
    case 0x6b: return "struct";
    case 0x6a: return "array";
    case 0x69: return "exn";
    case 0x71: return "none";
    case 0x72: return "noextern";
    case 0x73: return "nofunc";
    case 0x74: return "noexn";
  }
  return "heap" + std::to_string(heap);
}

}  // namespace

std::string TypeName(WasmType type) {
  switch (type.code) {
    case kI32Code: return "i32";
    case kI64Code: return "i64";
    case kF32Code: return "f32";
    case kF64Code: return "f64";
    case 0x7b: return "v128";
    case 0x70: return "funcref";
    case 0x6f: return "externref";
    case 0x69: return "exnref";
    case 0x63: return "(ref null " + HeapTypeName(type.heap) + ")";
    case 0x64: return "(ref " + HeapTypeName(type.heap) + ")";
  }
  return "?";
}

const SectionRange* ParsedModule::Section(uint8_t id) const {
  for (const SectionRange& s : sections) {
    if (s.id == id) return &s;
  }
  return nullptr;
}

}  // namespace keel::engine::wasm

#include "engine/module_info.h"

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <fstream>
#include <initializer_list>
#include <iterator>
#include <optional>
#include <random>
#include <string>
#include <string_view>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "keel/status.h"
#include "keel/value.h"

namespace keel::engine {
namespace {

using ::testing::HasSubstr;
using Bytes = std::vector<uint8_t>;

constexpr ValType kI32 = ValType::kI32;
constexpr ValType kI64 = ValType::kI64;
constexpr ValType kF32 = ValType::kF32;
constexpr ValType kF64 = ValType::kF64;

Bytes Leb(uint64_t value) {
  Bytes out;
  do {
    uint8_t byte = value & 0x7f;
    value >>= 7;
    if (value) byte |= 0x80;
    out.push_back(byte);
  } while (value);
  return out;
}

Bytes Cat(std::initializer_list<Bytes> parts) {
  Bytes out;
  for (const Bytes& part : parts) out.insert(out.end(), part.begin(), part.end());
  return out;
}

Bytes Name(std::string_view text) {
  Bytes out = Leb(text.size());
  out.insert(out.end(), text.begin(), text.end());
  return out;
}

Bytes Header() { return {0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00}; }

Bytes Section(uint8_t id, const Bytes& payload) {
  return Cat({{id}, Leb(payload.size()), payload});
}

// A module from sections, each given as (id, payload).
Bytes Module(std::initializer_list<std::pair<uint8_t, Bytes>> sections) {
  Bytes out = Header();
  for (const auto& [id, payload] : sections) {
    Bytes section = Section(id, payload);
    out.insert(out.end(), section.begin(), section.end());
  }
  return out;
}

// Pieces of a small valid module: add(i32, i32) -> i32 exported as "add".
const Bytes kAddType = {0x01, 0x60, 0x02, 0x7f, 0x7f, 0x01, 0x7f};
const Bytes kOneFunc = {0x01, 0x00};
const Bytes kAddCode = {0x01, 0x07, 0x00, 0x20, 0x00, 0x20, 0x01, 0x6a, 0x0b};

Bytes Exports(std::initializer_list<Bytes> entries) {
  Bytes out = Leb(entries.size());
  for (const Bytes& e : entries) out.insert(out.end(), e.begin(), e.end());
  return out;
}

Bytes AddModule() {
  return Module({{1, kAddType}, {3, kOneFunc}, {7, Exports({Cat({Name("add"), {0x00, 0x00}})})},
                 {10, kAddCode}});
}

Bytes LoadFixture(std::string_view stem) {
  std::string path = std::string(KEEL_FIXTURE_DIR) + "/" + std::string(stem) + ".wasm";
  std::ifstream in(path, std::ios::binary);
  EXPECT_TRUE(in.good()) << "missing fixture " << path;
  return Bytes(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

// The message of the kInvalidModule error the bytes must produce.
std::string ErrorOf(const Bytes& bytes) {
  auto info = ReadModuleInfo(bytes);
  if (info) return "(no error)";
  EXPECT_EQ(info.error().code, ErrorCode::kInvalidModule) << info.error().message;
  return info.error().message;
}

bool Contains(const Bytes& haystack, const Bytes& needle) {
  return std::search(haystack.begin(), haystack.end(), needle.begin(), needle.end()) !=
         haystack.end();
}

// wabt's verdict on the bytes; nullopt when wasm-validate is not installed.
std::optional<bool> WabtValidates(const Bytes& bytes) {
  if (std::system("command -v wasm-validate >/dev/null 2>&1") != 0) return std::nullopt;
  std::string path = ::testing::TempDir() + "/keel_module_info_test.wasm";
  {
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    out.write(reinterpret_cast<const char*>(bytes.data()), bytes.size());
  }
  // Not --enable-all: wabt 1.0.32 then types ref.func as a typed reference
  // and rejects valid MVP-style funcref globals.
  std::string command =
      "wasm-validate --enable-exceptions --enable-threads --enable-memory64 "
      "--enable-extended-const " + path + " >/dev/null 2>&1";
  bool ok = std::system(command.c_str()) == 0;
  std::remove(path.c_str());
  return ok;
}

void ExpectWabtValid(const Bytes& bytes) {
  if (auto ok = WabtValidates(bytes)) {
    EXPECT_TRUE(*ok) << "wasm-validate rejected the module";
  }
}

// ---------------------------------------------------------------------------
// Reading real modules.

TEST(ModuleInfoTest, ReadsImportsAndExportsWithSignatures) {
  auto info = ReadModuleInfo(LoadFixture("info_signatures"));
  ASSERT_TRUE(info) << info.error().message;

  ASSERT_EQ(info->imports.size(), 4u);
  EXPECT_EQ(info->imports[0].module, "env");
  EXPECT_EQ(info->imports[0].name, "log");
  EXPECT_EQ(info->imports[0].kind, ExternKind::kFunc);
  EXPECT_EQ(info->imports[0].func, (FuncType{{kI64, kF32, kF64}, {}}));
  EXPECT_TRUE(info->imports[0].func_supported);
  EXPECT_EQ(info->imports[1].name, "pair");
  EXPECT_EQ(info->imports[1].func, (FuncType{{}, {kI32, kI64}}));
  EXPECT_EQ(info->imports[2].kind, ExternKind::kTable);
  EXPECT_EQ(info->imports[2].limits.min, 2u);
  EXPECT_EQ(info->imports[2].limits.max, 10u);
  EXPECT_EQ(info->imports[3].kind, ExternKind::kGlobal);
  EXPECT_EQ(info->imports[3].name, "base");

  ASSERT_TRUE(info->memory);
  EXPECT_EQ(info->memory->min, 1u);
  EXPECT_EQ(info->memory->max, 16u);
  EXPECT_TRUE(info->has_start);

  const ExportInfo* add = info->FindFuncExport("add");
  ASSERT_NE(add, nullptr);
  EXPECT_EQ(add->index, 2u);  // after two imported functions
  EXPECT_EQ(add->func, (FuncType{{kI32, kI32}, {kI32}}));
  const ExportInfo* swap = info->FindFuncExport("swap");
  ASSERT_NE(swap, nullptr);
  EXPECT_EQ(swap->func, (FuncType{{kF32, kF64}, {kF64, kF32}}));
  const ExportInfo* nothing = info->FindFuncExport("nothing");
  ASSERT_NE(nothing, nullptr);
  EXPECT_EQ(nothing->func, FuncType{});
  // Re-exporting an import gives the import's signature.
  const ExportInfo* log_again = info->FindFuncExport("log_again");
  ASSERT_NE(log_again, nullptr);
  EXPECT_EQ(log_again->index, 0u);
  EXPECT_EQ(log_again->func, (FuncType{{kI64, kF32, kF64}, {}}));

  const ExportInfo* memory = info->FindExport("memory");
  ASSERT_NE(memory, nullptr);
  EXPECT_EQ(memory->kind, ExternKind::kMemory);
  EXPECT_EQ(memory->limits.min, 1u);
  EXPECT_EQ(memory->limits.max, 16u);
  const ExportInfo* table = info->FindExport("own_table");
  ASSERT_NE(table, nullptr);
  EXPECT_EQ(table->kind, ExternKind::kTable);
  EXPECT_EQ(table->index, 1u);  // after the imported table
  EXPECT_EQ(table->limits.min, 1u);
  EXPECT_FALSE(table->limits.max);
  const ExportInfo* counter = info->FindExport("counter");
  ASSERT_NE(counter, nullptr);
  EXPECT_EQ(counter->kind, ExternKind::kGlobal);
  EXPECT_EQ(counter->index, 1u);  // after the imported global
}

TEST(ModuleInfoTest, FindExportDistinguishesKinds) {
  auto info = ReadModuleInfo(LoadFixture("info_signatures"));
  ASSERT_TRUE(info) << info.error().message;
  EXPECT_NE(info->FindExport("memory"), nullptr);
  EXPECT_EQ(info->FindFuncExport("memory"), nullptr);
  EXPECT_EQ(info->FindExport("missing"), nullptr);
  EXPECT_EQ(info->FindFuncExport("missing"), nullptr);
  EXPECT_EQ(info->FindExport(""), nullptr);
}

TEST(ModuleInfoTest, DescribesEveryKind) {
  EXPECT_EQ(Describe(ExternKind::kFunc, {{kI32, kI32}, {kI32}}, {}), "func (i32, i32) -> (i32)");
  EXPECT_EQ(Describe(ExternKind::kFunc, {}, {}), "func () -> ()");
  EXPECT_EQ(Describe(ExternKind::kMemory, {}, {1, 16}), "memory 1..16 pages");
  EXPECT_EQ(Describe(ExternKind::kMemory, {}, {1, std::nullopt}), "memory 1.. pages");
  EXPECT_EQ(Describe(ExternKind::kTable, {}, {2, 10}), "table 2..10");
  EXPECT_EQ(Describe(ExternKind::kTable, {}, {2, std::nullopt}), "table 2..");
  EXPECT_EQ(Describe(ExternKind::kGlobal, {}, {}), "global");
  EXPECT_EQ(Describe(ExternKind::kTag, {}, {}), "tag");

  auto info = ReadModuleInfo(LoadFixture("info_signatures"));
  ASSERT_TRUE(info) << info.error().message;
  const ExportInfo* swap = info->FindExport("swap");
  ASSERT_NE(swap, nullptr);
  EXPECT_EQ(Describe(swap->kind, swap->func, swap->limits), "func (f32, f64) -> (f64, f32)");
}

TEST(ModuleInfoTest, StepsOverPostMvpEncodings) {
  auto info = ReadModuleInfo(LoadFixture("info_features"));
  ASSERT_TRUE(info) << info.error().message;

  ASSERT_EQ(info->imports.size(), 3u);
  EXPECT_EQ(info->imports[0].kind, ExternKind::kFunc);
  EXPECT_FALSE(info->imports[0].func_supported);  // takes an externref
  EXPECT_EQ(info->imports[0].func, FuncType{});
  EXPECT_EQ(info->imports[1].kind, ExternKind::kTag);
  EXPECT_EQ(info->imports[2].kind, ExternKind::kGlobal);

  ASSERT_TRUE(info->memory);
  EXPECT_EQ(info->memory->min, 1u);
  EXPECT_FALSE(info->memory->max);
  EXPECT_FALSE(info->has_start);

  const ExportInfo* dup = info->FindFuncExport("dup");
  ASSERT_NE(dup, nullptr);
  EXPECT_TRUE(dup->func_supported);
  EXPECT_EQ(dup->func, (FuncType{{kI32}, {kI32, kI32}}));
  const ExportInfo* splat = info->FindFuncExport("splat");
  ASSERT_NE(splat, nullptr);
  EXPECT_FALSE(splat->func_supported);  // returns a v128
  const ExportInfo* is_null = info->FindFuncExport("is_null");
  ASSERT_NE(is_null, nullptr);
  EXPECT_FALSE(is_null->func_supported);
  const ExportInfo* block = info->FindFuncExport("block");
  ASSERT_NE(block, nullptr);
  EXPECT_EQ(block->func, (FuncType{{}, {kI32}}));

  const ExportInfo* mine = info->FindExport("mine");
  ASSERT_NE(mine, nullptr);
  EXPECT_EQ(mine->kind, ExternKind::kTag);
  EXPECT_EQ(mine->index, 1u);  // after the imported tag
  EXPECT_EQ(Describe(mine->kind, mine->func, mine->limits), "tag");
  const ExportInfo* refs = info->FindExport("refs");
  ASSERT_NE(refs, nullptr);
  EXPECT_EQ(refs->kind, ExternKind::kTable);
  EXPECT_EQ(refs->index, 1u);
  EXPECT_EQ(Describe(refs->kind, refs->func, refs->limits), "table 1..");
  const ExportInfo* sum = info->FindExport("sum");
  ASSERT_NE(sum, nullptr);
  EXPECT_EQ(sum->kind, ExternKind::kGlobal);
}

TEST(ModuleInfoTest, DescribesSignaturesKeelCannotCallAsTheyAre) {
  auto info = ReadModuleInfo(LoadFixture("info_features"));
  ASSERT_TRUE(info) << info.error().message;
  EXPECT_EQ(Describe(info->imports[0]), "func (externref) -> (i32)");
  EXPECT_EQ(Describe(*info->FindFuncExport("splat")), "func (i32) -> (v128)");
  EXPECT_EQ(Describe(*info->FindFuncExport("is_null")), "func (externref) -> (i32)");
  EXPECT_EQ(Describe(*info->FindFuncExport("dup")), "func (i32) -> (i32, i32)");
  EXPECT_EQ(Describe(*info->FindExport("refs")), "table 1..");
  EXPECT_EQ(info->FindFuncExport("splat")->signature, "(i32) -> (v128)");
  // Typed references, from hand-written types.
  Bytes refs = Module({{1, {0x01, 0x60, 0x02, 0x63, 0x00, 0x64, 0x70, 0x01, 0x69}},
                       {3, {0x01, 0x00}},
                       {7, Exports({Cat({Name("f"), {0x00, 0x00}})})},
                       {10, {0x01, 0x02, 0x00, 0x0b}}});
  auto typed = ReadModuleInfo(refs);
  ASSERT_TRUE(typed) << typed.error().message;
  EXPECT_EQ(Describe(typed->exports[0]), "func ((ref null 0), (ref func)) -> (exnref)");
}

TEST(ModuleInfoTest, RefusesNamesWithKeelsReservedPrefix) {
  for (const Bytes& bytes :
       {Module({{1, kAddType}, {3, kOneFunc}, {7, Exports({Cat({Name("\x01keel:e:0"), {0x00, 0x00}})})},
                {10, kAddCode}}),
        Module({{1, kAddType}, {2, Cat({{0x01}, Name("\x01keel:"), Name("f"), {0x00, 0x00}})}})}) {
    EXPECT_THAT(ErrorOf(bytes), HasSubstr("reserved for keel's own use"));
  }
  // A name that merely contains it, or starts with part of it, is fine.
  EXPECT_TRUE(ReadModuleInfo(
      Module({{1, kAddType}, {3, kOneFunc}, {7, Exports({Cat({Name("x\x01keel:"), {0x00, 0x00}})})},
              {10, kAddCode}})));
}

TEST(ModuleInfoTest, ReadsSharedAndMemory64Limits) {
  auto shared = ReadModuleInfo(LoadFixture("info_shared"));
  ASSERT_TRUE(shared) << shared.error().message;
  ASSERT_TRUE(shared->memory);
  EXPECT_EQ(shared->memory->min, 1u);
  EXPECT_EQ(shared->memory->max, 100u);

  auto wide = ReadModuleInfo(LoadFixture("info_memory64"));
  ASSERT_TRUE(wide) << wide.error().message;
  ASSERT_TRUE(wide->memory);
  EXPECT_EQ(wide->memory->min, 1u);
  EXPECT_FALSE(wide->memory->max);

  // memory64 limits are u64 LEBs: 2^40 pages is representable.
  auto big = ReadModuleInfo(Module({{5, Cat({{0x01, 0x04}, Leb(uint64_t{1} << 40)})}}));
  ASSERT_TRUE(big) << big.error().message;
  EXPECT_EQ(big->memory->min, uint64_t{1} << 40);
}

TEST(ModuleInfoTest, ImportedMemoryIsNotTheModulesOwn) {
  auto info = ReadModuleInfo(LoadFixture("info_import_memory"));
  ASSERT_TRUE(info) << info.error().message;
  EXPECT_FALSE(info->memory);
  ASSERT_EQ(info->imports.size(), 1u);
  EXPECT_EQ(info->imports[0].kind, ExternKind::kMemory);
  EXPECT_EQ(info->imports[0].limits.min, 1u);
  EXPECT_FALSE(info->imports[0].limits.max);
  EXPECT_EQ(Describe(info->imports[0].kind, {}, info->imports[0].limits), "memory 1.. pages");
}

TEST(ModuleInfoTest, ReadsHandBuiltModules) {
  auto empty = ReadModuleInfo(Header());
  ASSERT_TRUE(empty) << empty.error().message;
  EXPECT_TRUE(empty->imports.empty());
  EXPECT_TRUE(empty->exports.empty());
  EXPECT_FALSE(empty->memory);
  EXPECT_FALSE(empty->has_start);

  auto add = ReadModuleInfo(AddModule());
  ASSERT_TRUE(add) << add.error().message;
  ASSERT_EQ(add->exports.size(), 1u);
  EXPECT_EQ(add->exports[0].func, (FuncType{{kI32, kI32}, {kI32}}));

  // Custom sections may sit anywhere, even between ordered sections.
  const Bytes custom = Cat({Name("anything"), {0xff, 0x00, 0x80}});
  Bytes with_custom = Module({{0, custom},
                              {1, kAddType},
                              {0, custom},
                              {3, kOneFunc},
                              {7, Exports({Cat({Name("add"), {0x00, 0x00}})})},
                              {0, Name("")},
                              {10, kAddCode},
                              {0, custom}});
  auto read = ReadModuleInfo(with_custom);
  ASSERT_TRUE(read) << read.error().message;
  EXPECT_NE(read->FindFuncExport("add"), nullptr);

  // Names may be any valid UTF-8.
  Bytes unicode = Module({{1, kAddType}, {3, kOneFunc},
                          {7, Exports({Cat({Name("\xcf\x80\xe2\x82\xac\xf0\x9f\x98\x80"),
                                            {0x00, 0x00}})})},
                          {10, kAddCode}});
  auto named = ReadModuleInfo(unicode);
  ASSERT_TRUE(named) << named.error().message;
  EXPECT_NE(named->FindExport("\xcf\x80\xe2\x82\xac\xf0\x9f\x98\x80"), nullptr);
}

TEST(ModuleInfoTest, AcceptsPaddedLebWithinTheLimit) {
  // Linkers pad LEBs to their full width; 0x81 0x80 0x80 0x80 0x00 is 1.
  Bytes padded = Module({{1, Cat({{0x81, 0x80, 0x80, 0x80, 0x00}, {0x60, 0x00, 0x00}})}});
  EXPECT_TRUE(ReadModuleInfo(padded));
  // Signed constants at full width: -1 as i32 and INT64_MIN as i64.
  Bytes globals = Module({{6, {0x02,
                               0x7f, 0x00, 0x41, 0xff, 0xff, 0xff, 0xff, 0x7f, 0x0b,
                               0x7e, 0x00, 0x42, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80,
                               0x80, 0x80, 0x7f, 0x0b}}});
  auto info = ReadModuleInfo(globals);
  EXPECT_TRUE(info) << info.error().message;
}

TEST(ModuleInfoTest, SkipsEveryConstantExpressionForm) {
  // One func so that ref.func has a target, one imported global for
  // global.get; globals of each init form.
  Bytes globals = {0x07,
                   0x7f, 0x00, 0x41, 0x7f, 0x0b,                          // i32.const -1
                   0x7d, 0x00, 0x43, 0x00, 0x00, 0xc0, 0x3f, 0x0b,        // f32.const
                   0x7c, 0x00, 0x44, 0, 0, 0, 0, 0, 0, 0xf0, 0x3f, 0x0b,  // f64.const
                   0x7f, 0x00, 0x23, 0x00, 0x41, 0x02, 0x6a, 0x0b,        // g0 + 2
                   0x70, 0x00, 0xd2, 0x00, 0x0b,                          // ref.func 0
                   0x6f, 0x00, 0xd0, 0x6f, 0x0b,                          // ref.null extern
                   0x7b, 0x00, 0xfd, 0x0c, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14,
                   15, 0x0b};  // v128.const
  Bytes m = Module({{1, {0x01, 0x60, 0x00, 0x00}},
                    {2, Cat({{0x01}, Name("env"), Name("g"), {0x03, 0x7f, 0x00}})},
                    {3, kOneFunc},
                    {6, globals},
                    {10, {0x01, 0x02, 0x00, 0x0b}}});
  auto info = ReadModuleInfo(m);
  EXPECT_TRUE(info) << info.error().message;
  ExpectWabtValid(m);
}

// ---------------------------------------------------------------------------
// Malformed modules: each is kInvalidModule with a message naming the problem.

TEST(ModuleInfoMalformedTest, EmptyInput) {
  EXPECT_THAT(ErrorOf({}), HasSubstr("empty input"));
}

TEST(ModuleInfoMalformedTest, BadMagic) {
  EXPECT_EQ(ErrorOf({0x00, 0x61, 0x73, 0x6e, 0x01, 0x00, 0x00, 0x00}),
            "not a WebAssembly module (bad magic)");
  EXPECT_EQ(ErrorOf({'h', 'e', 'l', 'l', 'o'}), "not a WebAssembly module (bad magic)");
  EXPECT_EQ(ErrorOf({0x7f, 'E', 'L', 'F'}), "not a WebAssembly module (bad magic)");
}

TEST(ModuleInfoMalformedTest, BadVersion) {
  EXPECT_EQ(ErrorOf({0x00, 0x61, 0x73, 0x6d, 0x02, 0x00, 0x00, 0x00}), "unsupported version 2");
  EXPECT_THAT(ErrorOf({0x00, 0x61, 0x73, 0x6d, 0x0d, 0x00, 0x01, 0x00}),
              HasSubstr("component"));
}

TEST(ModuleInfoMalformedTest, TruncatedHeader) {
  EXPECT_THAT(ErrorOf({0x00, 0x61}), HasSubstr("truncated"));
  EXPECT_THAT(ErrorOf({0x00, 0x61, 0x73, 0x6d}), HasSubstr("truncated (4 of 8 bytes)"));
  EXPECT_THAT(ErrorOf({0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00}), HasSubstr("truncated"));
}

TEST(ModuleInfoMalformedTest, TruncatedSection) {
  // An id with no size.
  EXPECT_EQ(ErrorOf(Cat({Header(), {0x01}})),
            "section 1 (type) at offset 0x9: truncated LEB128 integer");
  // A size LEB cut short.
  EXPECT_THAT(ErrorOf(Cat({Header(), {0x01, 0x80}})), HasSubstr("truncated LEB128"));
  // Content shorter than it claims: the result count is missing.
  EXPECT_EQ(ErrorOf(Module({{1, {0x01, 0x60, 0x01, 0x7f}}})),
            "section 1 (type) at offset 0xe: truncated LEB128 integer");
  // An import whose kind byte is missing: the exact message format.
  EXPECT_EQ(ErrorOf(Module({{2, Cat({{0x01}, Name("env"), Name("f")})}})),
            "section 2 (import) at offset 0x11: truncated");
  // A code body longer than its section.
  EXPECT_THAT(ErrorOf(Module({{1, {0x01, 0x60, 0x00, 0x00}}, {3, kOneFunc},
                              {10, {0x01, 0x05, 0x00, 0x0b}}})),
              HasSubstr("section 10 (code) at offset 0x16: truncated (5 bytes needed, 2 left)"));
}

TEST(ModuleInfoMalformedTest, SectionSizePastEnd) {
  EXPECT_EQ(ErrorOf(Cat({Header(), {0x01, 0x10, 0x00}})),
            "section 1 (type) at offset 0x9: section size 16 exceeds the 1 bytes left in the "
            "module");
  // A size near 2^32 must not wrap around.
  EXPECT_THAT(ErrorOf(Cat({Header(), {0x00, 0xff, 0xff, 0xff, 0xff, 0x0f, 0x00}})),
              HasSubstr("exceeds"));
}

TEST(ModuleInfoMalformedTest, SectionSizeMismatch) {
  EXPECT_THAT(ErrorOf(Module({{1, {0x01, 0x60, 0x00, 0x00, 0x00}}})),
              HasSubstr("section size mismatch (1 unused bytes at the end)"));
}

TEST(ModuleInfoMalformedTest, SectionsOutOfOrderOrDuplicated) {
  EXPECT_THAT(ErrorOf(Module({{3, {0x00}}, {1, {0x00}}})),
              HasSubstr("section 1 (type) at offset 0xb: out of order (after section 3 "
                        "(function))"));
  EXPECT_THAT(ErrorOf(Module({{1, {0x00}}, {1, {0x00}}})),
              HasSubstr("section 1 (type) at offset 0xb: duplicate section"));
  // The tag section (13) goes between memory (5) and global (6).
  EXPECT_TRUE(ReadModuleInfo(Module({{5, {0x00}}, {13, {0x00}}, {6, {0x00}}})));
  EXPECT_THAT(ErrorOf(Module({{6, {0x00}}, {13, {0x00}}})), HasSubstr("out of order"));
  // The datacount section (12) goes between element (9) and code (10).
  EXPECT_TRUE(ReadModuleInfo(Module({{9, {0x00}}, {12, {0x00}}, {10, {0x00}}})));
  EXPECT_THAT(ErrorOf(Module({{10, {0x00}}, {12, {0x00}}})), HasSubstr("out of order"));
}

TEST(ModuleInfoMalformedTest, UnknownSectionId) {
  EXPECT_EQ(ErrorOf(Module({{14, {0x00}}})), "section 14 at offset 0x8: unknown section id");
  EXPECT_THAT(ErrorOf(Module({{0xff, {}}})), HasSubstr("unknown section id"));
}

TEST(ModuleInfoMalformedTest, BadLeb) {
  // A u32 count in six bytes.
  EXPECT_THAT(ErrorOf(Module({{1, {0x80, 0x80, 0x80, 0x80, 0x80, 0x00}}})),
              HasSubstr("LEB128 integer too long"));
  // Five bytes, but bits above 32 set.
  EXPECT_THAT(ErrorOf(Module({{1, {0xff, 0xff, 0xff, 0xff, 0x1f}}})),
              HasSubstr("LEB128 integer overflows 32 bits"));
  // Section size itself over-long.
  EXPECT_THAT(ErrorOf(Cat({Header(), {0x01, 0x80, 0x80, 0x80, 0x80, 0x80, 0x00}})),
              HasSubstr("too long"));
  // i32.const whose last byte is not a sign extension.
  EXPECT_THAT(ErrorOf(Module({{6, {0x01, 0x7f, 0x00, 0x41, 0xff, 0xff, 0xff, 0xff, 0x4f,
                                   0x0b}}})),
              HasSubstr("overflows 32 bits"));
  // i64.const with an eleventh byte, and with bad high bits in the tenth.
  EXPECT_THAT(ErrorOf(Module({{6, {0x01, 0x7e, 0x00, 0x42, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80,
                                   0x80, 0x80, 0x80, 0x80, 0x00, 0x0b}}})),
              HasSubstr("too long"));
  EXPECT_THAT(ErrorOf(Module({{6, {0x01, 0x7e, 0x00, 0x42, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80,
                                   0x80, 0x80, 0x80, 0x01, 0x0b}}})),
              HasSubstr("overflows 64 bits"));
  // memory64 limits: u64 in ten bytes with a high bit past 64.
  EXPECT_THAT(ErrorOf(Module({{5, {0x01, 0x04, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80,
                                   0x80, 0x02}}})),
              HasSubstr("overflows 64 bits"));
}

TEST(ModuleInfoMalformedTest, CountLargerThanSection) {
  // A hostile count must be refused before anything is sized by it.
  EXPECT_THAT(ErrorOf(Module({{1, Cat({Leb(0xffffffff), {0x60}})}})),
              HasSubstr("type count 4294967295 exceeds the 1 bytes left"));
  EXPECT_THAT(ErrorOf(Module({{1, {0x01, 0x60, 0xff, 0xff, 0xff, 0xff, 0x0f}}})),
              HasSubstr("value type count"));
}

TEST(ModuleInfoMalformedTest, BadUtf8Name) {
  for (std::string_view bad : {std::string_view("\xff"), std::string_view("\xc0\x80"),
                               std::string_view("\xed\xa0\x80"), std::string_view("\xe2\x82"),
                               std::string_view("\xf4\x90\x80\x80"), std::string_view("a\x80")}) {
    Bytes m = Module({{1, kAddType}, {3, kOneFunc},
                      {7, Exports({Cat({Name(bad), {0x00, 0x00}})})}, {10, kAddCode}});
    EXPECT_THAT(ErrorOf(m), HasSubstr("section 7 (export) at offset 0x19: name is not valid UTF-8"));
  }
  EXPECT_THAT(ErrorOf(Module({{2, Cat({{0x01}, Name("\xc3"), Name("f"), {0x00, 0x00}})}})),
              HasSubstr("not valid UTF-8"));
  EXPECT_THAT(ErrorOf(Module({{0, Name("\xfe\xff")}})), HasSubstr("not valid UTF-8"));
  // A name longer than what is left.
  EXPECT_THAT(ErrorOf(Module({{0, {0x05, 'a'}}})), HasSubstr("truncated name"));
}

TEST(ModuleInfoMalformedTest, ExportIndexOutOfRange) {
  auto with_export = [](Bytes entry) {
    return Module({{1, kAddType}, {3, kOneFunc}, {7, Exports({entry})}, {10, kAddCode}});
  };
  EXPECT_THAT(ErrorOf(with_export(Cat({Name("f"), {0x00, 0x01}}))),
              HasSubstr("export \"f\": function index 1 out of range (1 functions)"));
  EXPECT_THAT(ErrorOf(with_export(Cat({Name("t"), {0x01, 0x00}}))),
              HasSubstr("table index 0 out of range (0 tables)"));
  EXPECT_THAT(ErrorOf(with_export(Cat({Name("m"), {0x02, 0x00}}))),
              HasSubstr("memory index 0 out of range (0 memorys)"));
  EXPECT_THAT(ErrorOf(with_export(Cat({Name("g"), {0x03, 0x00}}))),
              HasSubstr("global index 0 out of range"));
  EXPECT_THAT(ErrorOf(with_export(Cat({Name("x"), {0x04, 0x00}}))),
              HasSubstr("tag index 0 out of range"));
  EXPECT_THAT(ErrorOf(with_export(Cat({Name("k"), {0x05, 0x00}}))),
              HasSubstr("unknown export kind 0x05"));
  // Two exports with one name.
  EXPECT_THAT(ErrorOf(Module({{1, kAddType}, {3, kOneFunc},
                              {7, Exports({Cat({Name("f"), {0x00, 0x00}}),
                                           Cat({Name("f"), {0x00, 0x00}})})},
                              {10, kAddCode}})),
              HasSubstr("duplicate export name \"f\""));
}

TEST(ModuleInfoMalformedTest, UnknownImportKind) {
  EXPECT_EQ(ErrorOf(Module({{2, Cat({{0x01}, Name("env"), Name("f"), {0x05, 0x00}})}})),
            "section 2 (import) at offset 0x11: unknown import kind 0x05");
}

TEST(ModuleInfoMalformedTest, TypeIndexOutOfRange) {
  // In the function section.
  EXPECT_THAT(ErrorOf(Module({{1, kAddType}, {3, {0x01, 0x03}}, {10, kAddCode}})),
              HasSubstr("section 3 (function) at offset 0x14: type index 3 out of range (1 "
                        "types)"));
  // In a function import, with no type section at all.
  EXPECT_THAT(ErrorOf(Module({{2, Cat({{0x01}, Name("env"), Name("f"), {0x00, 0x00}})}})),
              HasSubstr("type index 0 out of range (0 types)"));
  // In a tag.
  EXPECT_THAT(ErrorOf(Module({{13, {0x01, 0x00, 0x00}}})), HasSubstr("type index 0"));
}

TEST(ModuleInfoMalformedTest, BadTypes) {
  EXPECT_THAT(ErrorOf(Module({{1, {0x01, 0x5f, 0x00}}})),
              HasSubstr("unsupported type form 0x5f"));
  EXPECT_THAT(ErrorOf(Module({{1, {0x01, 0x60, 0x01, 0x40, 0x00}}})),
              HasSubstr("unknown value type 0x40"));
  EXPECT_THAT(ErrorOf(Module({{4, {0x01, 0x7f, 0x00, 0x01}}})),
              HasSubstr("unknown reference type 0x7f"));
  EXPECT_THAT(ErrorOf(Module({{6, {0x01, 0x7f, 0x02, 0x41, 0x00, 0x0b}}})),
              HasSubstr("invalid global mutability 0x02"));
}

TEST(ModuleInfoMalformedTest, BadLimits) {
  EXPECT_THAT(ErrorOf(Module({{5, {0x01, 0x01, 0x05, 0x04}}})),
              HasSubstr("maximum 4 is below minimum 5"));
  EXPECT_THAT(ErrorOf(Module({{5, Cat({{0x01, 0x00}, Leb(65537)})}})),
              HasSubstr("memory minimum 65537 exceeds 65536 pages"));
  EXPECT_THAT(ErrorOf(Module({{5, Cat({{0x01, 0x01, 0x00}, Leb(70000)})}})),
              HasSubstr("memory maximum 70000 exceeds 65536 pages"));
  EXPECT_THAT(ErrorOf(Module({{5, {0x01, 0x02, 0x01}}})),
              HasSubstr("shared memory must have a maximum"));
  EXPECT_THAT(ErrorOf(Module({{5, {0x01, 0x08, 0x01}}})),
              HasSubstr("invalid memory limits flags 0x08"));
  EXPECT_THAT(ErrorOf(Module({{4, {0x01, 0x70, 0x03, 0x01, 0x02}}})),
              HasSubstr("invalid table limits flags 0x03"));
}

TEST(ModuleInfoMalformedTest, MoreThanOneMemory) {
  EXPECT_THAT(ErrorOf(Module({{5, {0x02, 0x00, 0x01, 0x00, 0x01}}})),
              HasSubstr("section 5 (memory) at offset 0xd: more than one memory (the "
                        "multi-memory proposal is not supported)"));
  EXPECT_THAT(ErrorOf(Module({{2, Cat({{0x01}, Name("env"), Name("m"), {0x02, 0x00, 0x01}})},
                              {5, {0x01, 0x00, 0x01}}})),
              HasSubstr("multi-memory"));
}

TEST(ModuleInfoMalformedTest, BadConstantExpression) {
  EXPECT_THAT(ErrorOf(Module({{6, {0x01, 0x7f, 0x00, 0x20, 0x00, 0x0b}}})),
              HasSubstr("unsupported opcode 0x20 in constant expression"));
  EXPECT_THAT(ErrorOf(Module({{6, {0x01, 0x7f, 0x00, 0x41, 0x00}}})), HasSubstr("truncated"));
  EXPECT_THAT(ErrorOf(Module({{6, {0x01, 0x7b, 0x00, 0xfd, 0x0d, 0x0b}}})),
              HasSubstr("unsupported opcode 0xfd 13"));
  EXPECT_THAT(ErrorOf(Module({{6, {0x01, 0x7c, 0x00, 0x44, 0x00, 0x00, 0x0b}}})),
              HasSubstr("truncated (8 bytes needed"));
}

TEST(ModuleInfoMalformedTest, StartIndexOutOfRange) {
  EXPECT_THAT(ErrorOf(Module({{8, {0x00}}})),
              HasSubstr("start function index 0 out of range (0 functions)"));
}

TEST(ModuleInfoMalformedTest, FunctionAndCodeDisagree) {
  EXPECT_THAT(ErrorOf(Module({{1, kAddType}, {3, kOneFunc}})),
              HasSubstr("function section declares 1 functions but there are 0 code bodies"));
  EXPECT_THAT(ErrorOf(Module({{10, kAddCode}})),
              HasSubstr("declares 0 functions but there are 1 code bodies"));
  EXPECT_THAT(ErrorOf(Module({{1, kAddType}, {3, kOneFunc}, {10, {0x01, 0x00}}})),
              HasSubstr("empty function body"));
}

TEST(ModuleInfoMalformedTest, DataCountDisagrees) {
  EXPECT_THAT(ErrorOf(Module({{5, {0x01, 0x00, 0x01}}, {12, {0x02}},
                              {11, {0x01, 0x01, 0x00}}})),
              HasSubstr("data segment count 1 differs from the datacount section's 2"));
  EXPECT_THAT(ErrorOf(Module({{12, {0x01}}})), HasSubstr("no data section"));
}

TEST(ModuleInfoMalformedTest, EveryPrefixOfAValidModuleIsRefusedCleanly) {
  const Bytes full = LoadFixture("info_features");
  ASSERT_TRUE(ReadModuleInfo(full));
  int accepted = 0;
  for (size_t n = 0; n < full.size(); ++n) {
    auto info = ReadModuleInfo(Bytes(full.begin(), full.begin() + n));
    if (info) {
      ++accepted;
    } else {
      EXPECT_EQ(info.error().code, ErrorCode::kInvalidModule);
    }
  }
  // Only the header, header + types and header + types + imports are whole
  // modules; any later cut lacks the code the function section promises.
  EXPECT_EQ(accepted, 3);
}

// ---------------------------------------------------------------------------
// CapMemory.

TEST(CapMemoryTest, AddsAMaximumWhenThereWasNone) {
  const Bytes original = LoadFixture("info_nomax");
  auto capped = CapMemory(original, 10);
  ASSERT_TRUE(capped) << capped.error().message;
  auto info = ReadModuleInfo(*capped);
  ASSERT_TRUE(info) << info.error().message;
  ASSERT_TRUE(info->memory);
  EXPECT_EQ(info->memory->min, 2u);
  EXPECT_EQ(info->memory->max, 10u);
  EXPECT_EQ(info->FindExport("memory")->limits.max, 10u);
  EXPECT_NE(info->FindFuncExport("size"), nullptr);
  EXPECT_EQ(capped->size(), original.size() + 1);  // one more LEB byte
  EXPECT_TRUE(Contains(*capped, {'d', 'a', 't', 'a', ' ', 'a', 'f', 't', 'e', 'r'}));
  ExpectWabtValid(*capped);
}

TEST(CapMemoryTest, LowersALargerMaximum) {
  const Bytes original = LoadFixture("info_signatures");
  auto capped = CapMemory(original, 8);
  ASSERT_TRUE(capped) << capped.error().message;
  auto before = ReadModuleInfo(original);
  auto after = ReadModuleInfo(*capped);
  ASSERT_TRUE(before && after);
  EXPECT_EQ(after->memory->min, 1u);
  EXPECT_EQ(after->memory->max, 8u);
  EXPECT_TRUE(after->has_start);
  ASSERT_EQ(after->imports.size(), before->imports.size());
  ASSERT_EQ(after->exports.size(), before->exports.size());
  for (size_t i = 0; i < after->exports.size(); ++i) {
    EXPECT_EQ(after->exports[i].name, before->exports[i].name);
    EXPECT_EQ(after->exports[i].func, before->exports[i].func);
  }
  ExpectWabtValid(*capped);
}

TEST(CapMemoryTest, KeepsASmallerOrEqualMaximum) {
  const Bytes original = LoadFixture("info_signatures");  // 1..16
  auto same = CapMemory(original, 100);
  ASSERT_TRUE(same) << same.error().message;
  EXPECT_EQ(*same, original);
  auto equal = CapMemory(original, 16);
  ASSERT_TRUE(equal) << equal.error().message;
  EXPECT_EQ(*equal, original);
}

TEST(CapMemoryTest, RefusesAMinimumAboveTheCap) {
  auto capped = CapMemory(LoadFixture("info_nomax"), 1);  // min 2
  ASSERT_FALSE(capped);
  EXPECT_EQ(capped.error().code, ErrorCode::kResourceExhausted);
  EXPECT_EQ(capped.error().message, "memory minimum 2 pages exceeds the cap of 1 pages");
  // A minimum equal to the cap is fine.
  auto exact = CapMemory(LoadFixture("info_nomax"), 2);
  ASSERT_TRUE(exact) << exact.error().message;
  EXPECT_EQ(ReadModuleInfo(*exact)->memory->max, 2u);
}

TEST(CapMemoryTest, LeavesModulesWithoutOwnMemoryUnchanged) {
  const Bytes add = AddModule();
  auto capped = CapMemory(add, 1);
  ASSERT_TRUE(capped) << capped.error().message;
  EXPECT_EQ(*capped, add);

  const Bytes imported = LoadFixture("info_import_memory");
  auto capped_import = CapMemory(imported, 0);
  ASSERT_TRUE(capped_import) << capped_import.error().message;
  EXPECT_EQ(*capped_import, imported);

  // A memory section with no entries defines nothing either.
  const Bytes empty_section = Module({{5, {0x00}}});
  auto capped_empty = CapMemory(empty_section, 0);
  ASSERT_TRUE(capped_empty);
  EXPECT_EQ(*capped_empty, empty_section);
}

TEST(CapMemoryTest, KeepsTheSharedFlag) {
  auto capped = CapMemory(LoadFixture("info_shared"), 10);
  ASSERT_TRUE(capped) << capped.error().message;
  // Section 5, size 4: one memory, flags 0x03 (shared, has max), 1, 10.
  EXPECT_TRUE(Contains(*capped, {0x05, 0x04, 0x01, 0x03, 0x01, 0x0a}));
  EXPECT_EQ(ReadModuleInfo(*capped)->memory->max, 10u);
  ExpectWabtValid(*capped);
}

TEST(CapMemoryTest, KeepsTheMemory64Flag) {
  auto capped = CapMemory(LoadFixture("info_memory64"), 1000);
  ASSERT_TRUE(capped) << capped.error().message;
  // flags 0x05 (i64, has max), min 1, max 1000 as LEB (0xe8 0x07).
  EXPECT_TRUE(Contains(*capped, {0x05, 0x05, 0x01, 0x05, 0x01, 0xe8, 0x07}));
  EXPECT_EQ(ReadModuleInfo(*capped)->memory->max, 1000u);
  ExpectWabtValid(*capped);
}

TEST(CapMemoryTest, NeverWritesAMaximumPastFourGigabytes) {
  auto capped = CapMemory(LoadFixture("info_nomax"), UINT32_MAX);
  ASSERT_TRUE(capped) << capped.error().message;
  auto info = ReadModuleInfo(*capped);
  ASSERT_TRUE(info) << info.error().message;
  EXPECT_EQ(info->memory->max, 65536u);
  ExpectWabtValid(*capped);
}

TEST(CapMemoryTest, ReencodesSizesWhenLebsGrow) {
  // A tiny memory section followed by other sections; a cap of 65536 needs a
  // three-byte LEB, so the section grows and everything after it shifts.
  Bytes m = Module({{0, Name("first")},
                    {1, kAddType},
                    {3, kOneFunc},
                    {5, {0x01, 0x00, 0x00}},
                    {7, Exports({Cat({Name("add"), {0x00, 0x00}}),
                                 Cat({Name("mem"), {0x02, 0x00}})})},
                    {10, kAddCode},
                    {0, Cat({Name("last"), {1, 2, 3}})}});
  auto capped = CapMemory(m, 65536);
  ASSERT_TRUE(capped) << capped.error().message;
  EXPECT_EQ(capped->size(), m.size() + 3);  // flags unchanged in size, max 3 bytes
  auto info = ReadModuleInfo(*capped);
  ASSERT_TRUE(info) << info.error().message;
  EXPECT_EQ(info->memory->min, 0u);
  EXPECT_EQ(info->memory->max, 65536u);
  EXPECT_EQ(info->FindExport("mem")->limits.max, 65536u);
  EXPECT_EQ(info->FindFuncExport("add")->func, (FuncType{{kI32, kI32}, {kI32}}));
  ExpectWabtValid(*capped);

  // A padded (five-byte) minimum is re-encoded minimally.
  Bytes padded = Module({{5, {0x01, 0x00, 0x81, 0x80, 0x80, 0x80, 0x00}}});
  auto capped_padded = CapMemory(padded, 3);
  ASSERT_TRUE(capped_padded) << capped_padded.error().message;
  EXPECT_EQ(*capped_padded, Module({{5, {0x01, 0x01, 0x01, 0x03}}}));
}

TEST(CapMemoryTest, RefusesInvalidModules) {
  auto capped = CapMemory(Bytes{0x00, 0x61, 0x73}, 10);
  ASSERT_FALSE(capped);
  EXPECT_EQ(capped.error().code, ErrorCode::kInvalidModule);
}

// ---------------------------------------------------------------------------
// Robustness: random damage to valid modules must give an error or a
// result, never a crash or an out-of-bounds read (checked by the sanitizer
// build).

Bytes Mutate(Bytes bytes, std::mt19937& rng) {
  auto pick = [&rng](size_t n) { return std::uniform_int_distribution<size_t>(0, n - 1)(rng); };
  const int edits = 1 + static_cast<int>(pick(4));
  for (int e = 0; e < edits; ++e) {
    if (bytes.empty()) bytes.push_back(0);
    static constexpr uint8_t kInteresting[] = {0x00, 0x01, 0x7f, 0x80, 0xff, 0x0b, 0x60, 0x70};
    switch (pick(8)) {
      case 0: bytes[pick(bytes.size())] = static_cast<uint8_t>(rng()); break;
      case 1: bytes[pick(bytes.size())] ^= static_cast<uint8_t>(1u << pick(8)); break;
      case 2: bytes[pick(bytes.size())] = kInteresting[pick(sizeof kInteresting)]; break;
      case 3: bytes.resize(pick(bytes.size() + 1)); break;
      case 4:
        bytes.insert(bytes.begin() + pick(bytes.size() + 1), static_cast<uint8_t>(rng()));
        break;
      case 5: bytes.erase(bytes.begin() + pick(bytes.size())); break;
      case 6: {  // duplicate a chunk somewhere else
        size_t from = pick(bytes.size());
        size_t len = std::min(bytes.size() - from, 1 + pick(16));
        Bytes chunk(bytes.begin() + from, bytes.begin() + from + len);
        bytes.insert(bytes.begin() + pick(bytes.size() + 1), chunk.begin(), chunk.end());
        break;
      }
      case 7: {  // a maximal LEB somewhere
        size_t at = pick(bytes.size());
        for (size_t i = at; i < std::min(bytes.size(), at + 5); ++i) bytes[i] = 0xff;
        break;
      }
    }
  }
  return bytes;
}

TEST(ModuleInfoRobustnessTest, RandomMutationsNeverCrash) {
  const std::vector<Bytes> seeds = {LoadFixture("info_signatures"), LoadFixture("info_features"),
                                    LoadFixture("info_nomax"), LoadFixture("info_memory64"),
                                    AddModule()};
  std::mt19937 rng(20240611);
  int accepted = 0;
  for (int i = 0; i < 20000; ++i) {
    Bytes mutant = Mutate(seeds[i % seeds.size()], rng);
    auto info = ReadModuleInfo(mutant);
    if (info) {
      ++accepted;
      for (const ExportInfo& e : info->exports) {
        (void)Describe(e.kind, e.func, e.limits);
      }
    } else {
      ASSERT_EQ(info.error().code, ErrorCode::kInvalidModule) << info.error().message;
      ASSERT_FALSE(info.error().message.empty());
    }
    const uint32_t cap = static_cast<uint32_t>(rng() % 40);
    auto capped = CapMemory(mutant, cap);
    ASSERT_EQ(static_cast<bool>(capped), info && (!info->memory || info->memory->min <= cap));
    if (capped) {
      // A module CapMemory accepted must still read, with the cap applied.
      auto reread = ReadModuleInfo(*capped);
      ASSERT_TRUE(reread) << reread.error().message;
      if (reread->memory) {
        ASSERT_TRUE(reread->memory->max);
        ASSERT_LE(*reread->memory->max, cap);
        ASSERT_EQ(reread->memory->min, info->memory->min);
      }
      ASSERT_EQ(reread->exports.size(), info->exports.size());
    }
  }
  // The mutations must exercise both paths.
  EXPECT_GT(accepted, 100);
  EXPECT_LT(accepted, 20000);
}

}  // namespace
}  // namespace keel::engine

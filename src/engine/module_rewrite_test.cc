// The module rewriter: its decoder against wabt's, each capability on its
// own, and rewritten modules run on the real engine.
#include "engine/module_rewrite.h"

#include <array>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>
#include <random>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "engine/engine.h"
#include "engine/spidermonkey/sm_engine.h"
#include "engine/wasm_binary.h"

namespace keel::engine {
namespace {

using ::testing::HasSubstr;
using Bytes = std::vector<uint8_t>;
using namespace std::string_literals;

Bytes LoadFixture(std::string_view stem) {
  std::string path = std::string(KEEL_FIXTURE_DIR) + "/" + std::string(stem) + ".wasm";
  std::ifstream in(path, std::ios::binary);
  EXPECT_TRUE(in.good()) << "missing fixture " << path;
  return Bytes(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

// Every fixture keel reads: not the invalid_ ones, nor the second memory
// keel's reader refuses by design (features_test.cc pins that refusal).
std::vector<std::string> FixtureStems() {
  std::vector<std::string> stems;
  for (const auto& entry : std::filesystem::directory_iterator(KEEL_FIXTURE_DIR)) {
    std::string stem = entry.path().stem().string();
    if (entry.path().extension() != ".wasm" || stem.starts_with("invalid_")) continue;
    if (stem == "features_multi_memory") continue;
    stems.push_back(stem);
  }
  std::sort(stems.begin(), stems.end());
  return stems;
}

bool HaveTool(const char* name) {
  return std::system(("command -v " + std::string(name) + " >/dev/null 2>&1").c_str()) == 0;
}

std::string WriteTemp(const Bytes& bytes, const std::string& name) {
  std::string path = ::testing::TempDir() + "/" + name;
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(reinterpret_cast<const char*>(bytes.data()), bytes.size());
  return path;
}

std::string RunOutput(const std::string& command) {
  std::string out;
  FILE* pipe = popen(command.c_str(), "r");
  if (!pipe) return out;
  std::array<char, 4096> buf;
  size_t n;
  while ((n = fread(buf.data(), 1, buf.size(), pipe)) > 0) out.append(buf.data(), n);
  pclose(pipe);
  return out;
}

constexpr const char* kWabtFeatures =
    "--enable-exceptions --enable-threads --enable-tail-call --enable-memory64 "
    "--enable-extended-const --enable-relaxed-simd";

// The offsets at which wasm-objdump -d sees instructions start, in order.
std::vector<size_t> WabtInstructionOffsets(const Bytes& bytes) {
  std::string path = WriteTemp(bytes, "keel_rewrite_objdump.wasm");
  std::istringstream lines(RunOutput("wasm-objdump -d " + path + " 2>/dev/null"));
  std::vector<size_t> offsets;
  std::string line;
  while (std::getline(lines, line)) {
    // " 00006b: 02 40                      | block"
    size_t colon = line.find(": ");
    size_t bar = line.find("| ");
    if (line.size() < 2 || line[0] != ' ' || colon == std::string::npos ||
        bar == std::string::npos) {
      continue;
    }
    std::string text = line.substr(bar + 2);
    size_t first = text.find_first_not_of(' ');
    if (first == std::string::npos || text.compare(first, 6, "local[") == 0) continue;
    offsets.push_back(std::stoul(line.substr(1, colon - 1), nullptr, 16));
  }
  return offsets;
}

std::optional<bool> WabtValidates(const Bytes& bytes) {
  if (!HaveTool("wasm-validate")) return std::nullopt;
  std::string path = WriteTemp(bytes, "keel_rewrite_validate.wasm");
  return std::system(("wasm-validate " + std::string(kWabtFeatures) + " " + path +
                      " >/dev/null 2>&1").c_str()) == 0;
}

std::vector<size_t> DecodedOffsets(const Bytes& bytes) {
  auto bodies = DecodeBodies(bytes);
  EXPECT_TRUE(bodies) << bodies.error().message;
  std::vector<size_t> offsets;
  if (!bodies) return offsets;
  for (const auto& body : *bodies) {
    for (const Instruction& in : body) offsets.push_back(in.begin);
  }
  return offsets;
}

RewriteOptions AllOptions() {
  return {.max_memory_pages = 65536,
          .rename_names = true,
          .float_bits_exports = true,
          .float_bits_imports = true,
          .export_mutable_globals = true,
          .grow_grant = 4,
          .scan_code = true};
}

// --- Decoding ------------------------------------------------------------------

TEST(DecoderTest, AgreesWithWabtOnEveryInstructionOfEveryFixture) {
  if (!HaveTool("wasm-objdump")) GTEST_SKIP() << "wasm-objdump not installed";
  size_t total = 0;
  for (const std::string& stem : FixtureStems()) {
    Bytes bytes = LoadFixture(stem);
    std::vector<size_t> ours = DecodedOffsets(bytes);
    EXPECT_EQ(ours, WabtInstructionOffsets(bytes)) << stem;
    total += ours.size();
  }
  EXPECT_GT(total, 1000u);  // rewrite_opcodes alone has more than that
}

TEST(DecoderTest, KnowsEveryOpcodeFamily) {
  auto bodies = DecodeBodies(LoadFixture("rewrite_opcodes"));
  ASSERT_TRUE(bodies) << bodies.error().message;
  std::set<uint32_t> simd, misc, atomic;
  std::set<uint8_t> plain;
  for (const auto& body : *bodies) {
    for (const Instruction& in : body) {
      if (in.opcode == 0xfd) simd.insert(in.sub);
      else if (in.opcode == 0xfc) misc.insert(in.sub);
      else if (in.opcode == 0xfe) atomic.insert(in.sub);
      else plain.insert(in.opcode);
    }
  }
  EXPECT_EQ(simd.size(), 236u + 20u);  // every SIMD opcode, and relaxed SIMD
  EXPECT_EQ(misc.size(), 18u);         // saturating truncation, bulk memory, tables
  EXPECT_EQ(atomic.size(), 4u + 0x4f - 0x10);
  for (int op = 0x45; op <= 0xc4; ++op) EXPECT_TRUE(plain.count(op)) << std::hex << op;
  for (uint8_t op : {0x06, 0x07, 0x08, 0x09, 0x18, 0x19, 0x12, 0x13, 0x1c, 0x25, 0x26, 0xd0,
                     0xd1, 0xd2}) {
    EXPECT_TRUE(plain.count(op)) << std::hex << int{op};
  }
}

// A module with one function () -> () whose code is `code` (without end).
Bytes BodyModule(const Bytes& code) {
  Bytes body = {0x00};  // no locals
  body.insert(body.end(), code.begin(), code.end());
  body.push_back(0x0b);
  Bytes code_payload = {0x01};
  wasm::PutU32(code_payload, body.size());
  code_payload.insert(code_payload.end(), body.begin(), body.end());
  Bytes out = {0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00,
               0x01, 0x04, 0x01, 0x60, 0x00, 0x00,   // type () -> ()
               0x03, 0x02, 0x01, 0x00,               // one function
               0x05, 0x03, 0x01, 0x00, 0x01,         // memory 1
               0x0a};
  wasm::PutU32(out, code_payload.size());
  out.insert(out.end(), code_payload.begin(), code_payload.end());
  return out;
}

TEST(DecoderTest, RefusesWhatItDoesNotKnowByOffset) {
  struct Case {
    Bytes code;
    const char* expect;
  };
  std::vector<Case> cases = {
      {{0x27}, "unknown opcode 0x27"},
      {{0xfd, 0x9a, 0x01}, "unknown opcode 0xfd 154"},
      {{0xfc, 0x12}, "unknown opcode 0xfc 18"},
      {{0xfe, 0x04}, "unknown opcode 0xfe 4"},
      {{0xfb, 0x00}, "GC instructions"},
      {{0x41}, "truncated"},
      {{0x0b, 0x01}, "after the function's final end"},
      {{0xfe, 0x03, 0x01}, "atomic.fence"},
  };
  for (const Case& c : cases) {
    auto bodies = DecodeBodies(BodyModule(c.code));
    ASSERT_FALSE(bodies) << c.expect;
    EXPECT_EQ(bodies.error().code, ErrorCode::kInvalidModule);
    EXPECT_THAT(bodies.error().message, HasSubstr(c.expect));
    EXPECT_THAT(bodies.error().message, HasSubstr("function 0 body at offset 0x"));
  }
}

// --- Rewriting: each capability -------------------------------------------------

// Appending functions, types and globals would make these out-of-range
// indices valid (the grant adds one of each): they must be refused instead.
TEST(RewriteTest, RefusesIndicesThatAppendingWouldMakeValid) {
  struct Case {
    Bytes code;
    const char* expect;
  };
  std::vector<Case> cases = {
      {{0x10, 0x01}, "function index 1 out of range (1 functions)"},
      {{0xd2, 0x01, 0x1a}, "function index 1 out of range"},
      {{0x23, 0x00, 0x1a}, "global index 0 out of range (0 globals)"},
      {{0x41, 0x00, 0x11, 0x01, 0x00}, "type index 1 out of range (1 types)"},
      {{0x02, 0x01, 0x0b}, "type index 1 out of range"},
      {{0x41, 0x00, 0x40, 0x2c, 0x1a}, "memory index 44 out of range (1 memories)"},
  };
  for (const Case& c : cases) {
    Bytes bytes = BodyModule(c.code);
    EXPECT_FALSE(sm::CompileUnrewritten(bytes)) << c.expect;  // invalid as it is
    auto rewritten = RewriteModule(bytes, {.grow_grant = 1});
    ASSERT_FALSE(rewritten) << c.expect;
    EXPECT_EQ(rewritten.error().code, ErrorCode::kInvalidModule);
    EXPECT_THAT(rewritten.error().message, HasSubstr(c.expect));
    EXPECT_TRUE(RewriteModule(bytes, {})) << "nothing appended: nothing to check";
  }
  // The same in a table's initializer (function references encoding).
  Bytes table_init = {0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00,
                      0x01, 0x04, 0x01, 0x60, 0x00, 0x00,                          // type
                      0x03, 0x02, 0x01, 0x00,                                      // function
                      0x04, 0x09, 0x01, 0x40, 0x00, 0x70, 0x00, 0x01, 0xd2, 0x01, 0x0b,  // table
                      0x05, 0x03, 0x01, 0x00, 0x01,                                // memory
                      0x0a, 0x04, 0x01, 0x02, 0x00, 0x0b};                         // code
  ASSERT_TRUE(ReadModuleInfo(table_init));
  auto refused = RewriteModule(table_init, {.grow_grant = 1});
  ASSERT_FALSE(refused);
  EXPECT_THAT(refused.error().message, HasSubstr("function index 1 out of range"));
}

TEST(RewriteTest, NothingAskedLeavesTheBytesAlone) {
  for (const std::string& stem : FixtureStems()) {
    Bytes bytes = LoadFixture(stem);
    auto rewritten = RewriteModule(bytes, {});
    ASSERT_TRUE(rewritten) << stem << ": " << rewritten.error().message;
    EXPECT_EQ(rewritten->bytes, bytes) << stem;
    EXPECT_FALSE(rewritten->features.scanned);
  }
}

TEST(RewriteTest, RenamesOnlyNamesSpiderMonkeyCannotTake) {
  auto rewritten = RewriteModule(LoadFixture("names_exact"), {.rename_names = true});
  ASSERT_TRUE(rewritten) << rewritten.error().message;
  auto info = ReadRewrittenModuleInfo(rewritten->bytes);
  ASSERT_TRUE(info) << info.error().message;
  auto original = ReadModuleInfo(LoadFixture("names_exact"));
  ASSERT_EQ(info->exports.size(), original->exports.size());
  for (size_t j = 0; j < original->exports.size(); ++j) {
    const std::string& name = original->exports[j].name;
    const RewrittenExport& out = rewritten->exports[j];
    EXPECT_EQ(info->exports[j].name, out.name);
    EXPECT_EQ(out.call_name, out.name);
    const bool must = name.empty() || name.find('\0') != std::string::npos;
    EXPECT_EQ(out.name != name, must) << j;
    if (must) {
      EXPECT_EQ(out.name, "\x01keel:e:" + std::to_string(j));
    }
    EXPECT_EQ(out.name.find('\0'), std::string::npos);
  }
  ASSERT_EQ(rewritten->imports.size(), 4u);
  EXPECT_EQ(rewritten->imports[0].module, "\x01keel:");
  EXPECT_EQ(rewritten->imports[0].name, "\x01keel:i:0");
  EXPECT_EQ(rewritten->imports[1].name, "\x01keel:i:1");
  EXPECT_EQ(rewritten->imports[2].module, "env");  // plain: kept
  EXPECT_EQ(rewritten->imports[3].module, "caf\xc3\xa9");
  EXPECT_EQ(info->imports[1].name, "\x01keel:i:1");
}

TEST(RewriteTest, ModulesUsingTheReservedPrefixAreRefused) {
  auto renamed = RewriteModule(LoadFixture("names_exact"), {.rename_names = true});
  ASSERT_TRUE(renamed);
  auto info = ReadModuleInfo(renamed->bytes);
  ASSERT_FALSE(info);
  EXPECT_EQ(info.error().code, ErrorCode::kInvalidModule);
  EXPECT_THAT(info.error().message, HasSubstr("reserved for keel"));
  EXPECT_FALSE(RewriteModule(renamed->bytes, {}));
}

TEST(RewriteTest, FloatExportsGetBitsWrappers) {
  auto rewritten = RewriteModule(LoadFixture("values_exact"), {.float_bits_exports = true});
  ASSERT_TRUE(rewritten) << rewritten.error().message;
  auto original = ReadModuleInfo(LoadFixture("values_exact"));
  auto info = ReadRewrittenModuleInfo(rewritten->bytes);
  ASSERT_TRUE(info) << info.error().message;
  for (size_t j = 0; j < original->exports.size(); ++j) {
    const ExportInfo& e = original->exports[j];
    const RewrittenExport& out = rewritten->exports[j];
    const bool floats = e.func.ToString().find('f') != std::string::npos;
    EXPECT_EQ(out.bits, floats) << e.name;
    EXPECT_EQ(out.name, e.name);
    const ExportInfo* called = info->FindFuncExport(out.call_name);
    ASSERT_NE(called, nullptr) << e.name;
    if (floats) {
      EXPECT_EQ(called->func.ToString().find('f'), std::string::npos) << called->func.ToString();
      EXPECT_GE(called->index, rewritten->original_functions);
    }
  }
  EXPECT_EQ(info->FindFuncExport(rewritten->exports[0].call_name)->func.ToString(),
            "(i32) -> (i32)");
}

TEST(RewriteTest, FloatImportsTakeBitsAndEveryReferenceMovesToTheWrapper) {
  Bytes bytes = LoadFixture("values_exact");
  auto rewritten = RewriteModule(bytes, {.float_bits_imports = true});
  ASSERT_TRUE(rewritten) << rewritten.error().message;
  auto info = ReadRewrittenModuleInfo(rewritten->bytes);
  ASSERT_TRUE(info) << info.error().message;
  EXPECT_EQ(info->imports[0].func.ToString(), "(i32) -> (i32)");
  EXPECT_EQ(info->imports[1].func.ToString(), "(i64) -> (i64)");
  EXPECT_EQ(info->imports[2].func.ToString(), "(i32, i64, i32) -> (i64, i32, i32)");
  EXPECT_EQ(info->imports[3].func.ToString(), "() -> (i32)");  // no floats: unchanged
  EXPECT_TRUE(rewritten->imports[0].bits);
  EXPECT_FALSE(rewritten->imports[3].bits);
  // No original function calls or references a float import any more; only
  // the wrappers (appended after the original functions) do.
  auto bodies = DecodeBodies(rewritten->bytes);
  ASSERT_TRUE(bodies);
  const uint32_t imported = 4;
  for (size_t i = 0; i < bodies->size(); ++i) {
    const bool wrapper = imported + i >= rewritten->original_functions;
    for (const Instruction& in : (*bodies)[i]) {
      if (in.opcode == 0x10 || in.opcode == 0xd2) {
        EXPECT_EQ(in.index < 3, wrapper) << "function " << imported + i;
      }
    }
  }
  EXPECT_GE(info->FindFuncExport("reexport_f32")->index, rewritten->original_functions);
  // The element segment and the global's ref.func moved too (the engine
  // test calls through them).
  EXPECT_FALSE(rewritten->bytes == bytes);
}

TEST(RewriteTest, ListsEveryMutableGlobalWithAnExportName) {
  auto rewritten = RewriteModule(LoadFixture("rewrite_globals"), {.export_mutable_globals = true});
  ASSERT_TRUE(rewritten) << rewritten.error().message;
  ASSERT_EQ(rewritten->globals.size(), 4u);
  const std::vector<std::pair<uint32_t, std::string>> expected = {
      {0, "\x01keel:g:0"}, {1, "\x01keel:g:1"}, {2, "\x01keel:g:2"}, {4, "visible"}};
  for (size_t i = 0; i < expected.size(); ++i) {
    EXPECT_EQ(rewritten->globals[i].index, expected[i].first);
    EXPECT_EQ(rewritten->globals[i].name, expected[i].second);
    EXPECT_EQ(rewritten->globals[i].reserved, i < 3);
  }
  EXPECT_EQ(rewritten->globals[1].type, ValType::kI64);
  EXPECT_EQ(rewritten->globals[2].type, ValType::kF64);
  auto info = ReadRewrittenModuleInfo(rewritten->bytes);
  ASSERT_TRUE(info);
  for (const auto& [index, name] : expected) {
    const ExportInfo* e = info->FindExport(name);
    ASSERT_NE(e, nullptr) << name;
    EXPECT_EQ(e->kind, ExternKind::kGlobal);
    EXPECT_EQ(e->index, index);
  }
}

TEST(RewriteTest, ReportsTableAndSegmentInstructions) {
  auto all = RewriteModule(LoadFixture("rewrite_opcodes"), {.scan_code = true});
  ASSERT_TRUE(all) << all.error().message;
  const CodeFeatures& f = all->features;
  EXPECT_TRUE(f.scanned);
  EXPECT_TRUE(f.table_set && f.table_grow && f.table_fill && f.table_copy && f.table_init &&
              f.elem_drop && f.data_drop && f.memory_init && f.memory_grow);
  EXPECT_TRUE(f.MutatesTablesOrSegments());
  EXPECT_EQ(all->bytes, LoadFixture("rewrite_opcodes"));  // scanning changes nothing

  auto basic = RewriteModule(LoadFixture("engine_basic"), {.scan_code = true});
  ASSERT_TRUE(basic);
  EXPECT_TRUE(basic->features.memory_grow);  // "grow" calls it
  EXPECT_FALSE(basic->features.MutatesTablesOrSegments());  // call_indirect only reads

  auto segments = RewriteModule(LoadFixture("info_features"), {.scan_code = true});
  ASSERT_TRUE(segments);
  EXPECT_TRUE(segments->features.memory_init && segments->features.data_drop);
  EXPECT_FALSE(segments->features.table_set || segments->features.memory_grow);
}

TEST(RewriteTest, GrowGoesThroughTheAppendedFunction) {
  for (const char* stem : {"rewrite_grow", "rewrite_memory64"}) {
    auto rewritten = RewriteModule(LoadFixture(stem), {.grow_grant = 3});
    ASSERT_TRUE(rewritten) << rewritten.error().message;
    ASSERT_EQ(rewritten->grant_export, std::string(kGrantExport));
    auto bodies = DecodeBodies(rewritten->bytes);
    ASSERT_TRUE(bodies);
    const uint32_t grow_func = rewritten->original_functions;  // the only one appended
    for (size_t i = 0; i + 1 < bodies->size(); ++i) {
      for (const Instruction& in : (*bodies)[i]) {
        EXPECT_NE(in.opcode, 0x40) << stem << ": memory.grow left in function " << i;
      }
    }
    bool calls = false;
    for (size_t i = 0; i + 1 < bodies->size(); ++i) {
      for (const Instruction& in : (*bodies)[i]) {
        calls |= in.opcode == 0x10 && in.index == grow_func;
      }
    }
    EXPECT_TRUE(calls) << stem;
    if (auto ok = WabtValidates(rewritten->bytes)) {
      EXPECT_TRUE(*ok) << stem;
    }
  }
  // No memory: nothing to charge.
  auto none = RewriteModule(LoadFixture("engine_nomem"), {.grow_grant = 3});
  ASSERT_TRUE(none);
  EXPECT_FALSE(none->grant_export);
}

TEST(RewriteTest, GrowGrantExportsAMemoryTheModuleKeepsToItself) {
  auto exported = RewriteModule(LoadFixture("rewrite_grow"), {.grow_grant = 1});
  ASSERT_TRUE(exported);
  EXPECT_FALSE(exported->memory_export);
  auto hidden = RewriteModule(LoadFixture("budget_hidden"), {.grow_grant = 1});
  ASSERT_TRUE(hidden) << hidden.error().message;
  ASSERT_EQ(hidden->memory_export, std::string(kMemoryExport));
  auto info = ReadRewrittenModuleInfo(hidden->bytes);
  ASSERT_TRUE(info) << info.error().message;
  const ExportInfo* memory = info->FindExport(kMemoryExport);
  ASSERT_NE(memory, nullptr);
  EXPECT_EQ(memory->kind, ExternKind::kMemory);
  if (auto ok = WabtValidates(hidden->bytes)) {
    EXPECT_TRUE(*ok);
  }
}

TEST(RewriteTest, OffsetsMapBackToTheOriginal) {
  for (const char* stem : {"values_exact", "rewrite_grow", "names_exact", "engine_host"}) {
    Bytes bytes = LoadFixture(stem);
    auto rewritten = RewriteModule(bytes, AllOptions());
    ASSERT_TRUE(rewritten) << stem << ": " << rewritten.error().message;
    auto before = DecodeBodies(bytes);
    auto after = DecodeBodies(rewritten->bytes);
    ASSERT_TRUE(before && after) << stem;
    for (size_t i = 0; i < before->size(); ++i) {
      ASSERT_EQ((*before)[i].size(), (*after)[i].size()) << stem << " function " << i;
      for (size_t k = 0; k < (*before)[i].size(); ++k) {
        EXPECT_EQ(rewritten->OriginalOffset((*after)[i][k].begin), (*before)[i][k].begin)
            << stem << " function " << i << " instruction " << k;
      }
    }
    // Appended code has no original.
    const auto& appended = after->back();
    if (after->size() > before->size()) {
      EXPECT_FALSE(rewritten->OriginalOffset(appended[0].begin));
    }
  }
}

TEST(RewriteTest, MissingSectionsAreAddedInOrder) {
  // Only a memory: the grant needs a type, function, global, export and code
  // section, each in its place.
  Bytes bytes = {0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00, 0x05, 0x03, 0x01, 0x00, 0x01};
  auto rewritten = RewriteModule(bytes, {.grow_grant = 2});
  ASSERT_TRUE(rewritten) << rewritten.error().message;
  auto parsed = wasm::ParseModule(rewritten->bytes, {.allow_reserved_names = true});
  ASSERT_TRUE(parsed) << parsed.error().message;
  std::vector<uint8_t> ids;
  for (const auto& s : parsed->sections) ids.push_back(s.id);
  EXPECT_EQ(ids, (std::vector<uint8_t>{1, 3, 5, 6, 7, 10}));
  if (auto ok = WabtValidates(rewritten->bytes)) {
    EXPECT_TRUE(*ok);
  }
  EXPECT_TRUE(sm::CompileUnrewritten(rewritten->bytes)) << "SpiderMonkey refused it";
}

// Every fixture, every option: the result is valid exactly when the input
// was, for wabt and for SpiderMonkey (which judges names_exact only once
// its names are renamed: that is what renaming is for).
TEST(RewriteTest, RewrittenModulesAreValidExactlyWhenTheOriginalsWere) {
  for (const std::string& stem : FixtureStems()) {
    Bytes bytes = LoadFixture(stem);
    auto rewritten = RewriteModule(bytes, AllOptions());
    ASSERT_TRUE(rewritten) << stem << ": " << rewritten.error().message;
    if (auto before = WabtValidates(bytes)) {
      EXPECT_EQ(WabtValidates(rewritten->bytes), before) << stem;
    }
    auto renamed = RewriteModule(bytes, {.rename_names = true});
    ASSERT_TRUE(renamed);
    const bool sm_before = sm::CompileUnrewritten(renamed->bytes).has_value();
    auto sm_after = sm::CompileUnrewritten(rewritten->bytes);
    EXPECT_EQ(sm_after.has_value(), sm_before) << stem << ": "
                                               << (sm_after ? "" : sm_after.error().message);
  }
}

TEST(RewriteTest, CapsTheMemoryAndRefusesAMinimumAboveTheCap) {
  auto capped = RewriteModule(LoadFixture("rewrite_grow"), {.max_memory_pages = 3});
  ASSERT_TRUE(capped);
  EXPECT_EQ(ReadModuleInfo(capped->bytes)->memory->max, 3u);
  auto refused = RewriteModule(LoadFixture("info_nomax"), {.max_memory_pages = 1});
  ASSERT_FALSE(refused);
  EXPECT_EQ(refused.error().code, ErrorCode::kResourceExhausted);
}

// Mutated fixtures: the rewriter fails cleanly or produces a module keel's
// reader accepts, never crashes.
TEST(RewriteTest, RandomMutationsNeverCrash) {
  const std::vector<Bytes> seeds = {LoadFixture("values_exact"), LoadFixture("names_exact"),
                                    LoadFixture("rewrite_opcodes"), LoadFixture("rewrite_globals"),
                                    LoadFixture("engine_host")};
  std::mt19937 rng(20240612);
  int rewritten_count = 0;
  for (int i = 0; i < 4000; ++i) {
    Bytes bytes = seeds[i % seeds.size()];
    for (int e = 0; e < 1 + static_cast<int>(rng() % 3); ++e) {
      const size_t at = rng() % bytes.size();
      switch (rng() % 3) {
        case 0: bytes[at] = static_cast<uint8_t>(rng()); break;
        case 1: bytes.erase(bytes.begin() + at); break;
        case 2: bytes.insert(bytes.begin() + at, static_cast<uint8_t>(rng())); break;
      }
    }
    auto rewritten = RewriteModule(bytes, AllOptions());
    if (!rewritten) {
      ASSERT_FALSE(rewritten.error().message.empty());
      continue;
    }
    ++rewritten_count;
    auto reread = ReadRewrittenModuleInfo(rewritten->bytes);
    ASSERT_TRUE(reread) << reread.error().message;
  }
  EXPECT_GT(rewritten_count, 50);
}

// --- Rewritten modules on the engine ---------------------------------------------

class RewriteEngineTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto ctx = DefaultEngine().NewContext();
    ASSERT_TRUE(ctx) << ctx.error().ToString();
    ctx_ = std::move(*ctx);
  }

  std::unique_ptr<Instance> Instantiate(const std::shared_ptr<const Module>& module) {
    auto instance = ctx_->Instantiate(module, std::make_shared<Linker>(), nullptr, ++tag_);
    EXPECT_TRUE(instance) << instance.error().ToString();
    return instance ? std::move(*instance) : nullptr;
  }

  int32_t CallI32(Instance& instance, std::string_view name, std::vector<Value> args = {}) {
    auto r = instance.Invoke(name, args, ++tag_);
    EXPECT_TRUE(r) << name << ": " << r.error().ToString();
    return r && r->size() == 1 ? (*r)[0].i32() : INT32_MIN;
  }

  std::unique_ptr<Context> ctx_;
  uint64_t tag_ = 0;
};

TEST_F(RewriteEngineTest, GrowsWhileTheGrantAllowsAndFailsBeyond) {
  auto module = sm::CompileRewritten(LoadFixture("rewrite_grow"), {}, {.grow_grant = 3});
  ASSERT_TRUE(module) << module.error().ToString();
  const RewriteResult* rewrite = sm::RewriteOf(**module);
  ASSERT_NE(rewrite, nullptr);
  ASSERT_TRUE(rewrite->grant_export);
  const std::string grant = *rewrite->grant_export;
  auto instance = Instantiate(*module);
  ASSERT_TRUE(instance);

  EXPECT_EQ(CallI32(*instance, "grow", {Value::I32(1)}), 1);
  EXPECT_EQ(CallI32(*instance, "grow", {Value::I32(2)}), 2);
  EXPECT_EQ(CallI32(*instance, "grow", {Value::I32(1)}), -1);  // grant used up
  EXPECT_EQ(CallI32(*instance, "size"), 4);
  EXPECT_EQ(sm::GetGlobal(*instance, grant, ValType::kI32), Value::I32(0));

  // The host tops it up.
  ASSERT_TRUE(sm::SetGlobal(*instance, grant, Value::I32(2)));
  EXPECT_EQ(CallI32(*instance, "grow", {Value::I32(1)}), 4);
  EXPECT_EQ(CallI32(*instance, "grow", {Value::I32(2)}), -1);  // 1 left
  EXPECT_EQ(sm::GetGlobal(*instance, grant, ValType::kI32), Value::I32(1));

  // memory.grow itself failing (maximum 6 pages) refunds the grant.
  ASSERT_TRUE(sm::SetGlobal(*instance, grant, Value::I32(10)));
  EXPECT_EQ(CallI32(*instance, "grow", {Value::I32(2)}), -1);  // 5 + 2 > 6
  EXPECT_EQ(sm::GetGlobal(*instance, grant, ValType::kI32), Value::I32(10));
  EXPECT_EQ(CallI32(*instance, "grow", {Value::I32(1)}), 5);
  EXPECT_EQ(sm::GetGlobal(*instance, grant, ValType::kI32), Value::I32(9));
  EXPECT_EQ(CallI32(*instance, "grow", {Value::I32(0)}), 6);  // zero is always allowed
  EXPECT_EQ(instance->Memory().size(), 6u * kWasmPageSize);
  EXPECT_FALSE(instance->poisoned());

  // keel's own view of the module shows none of it.
  for (const ExportInfo& e : (*module)->info().exports) {
    EXPECT_FALSE(e.name.starts_with(wasm::kReservedPrefix)) << e.name;
  }
}

TEST_F(RewriteEngineTest, ExportedGlobalsReadAndWriteTheModulesOwn) {
  auto module = sm::CompileRewritten(LoadFixture("rewrite_globals"), {},
                                     {.export_mutable_globals = true});
  ASSERT_TRUE(module) << module.error().ToString();
  const RewriteResult* rewrite = sm::RewriteOf(**module);
  ASSERT_EQ(rewrite->globals.size(), 4u);
  EXPECT_EQ((*module)->info().exports.size(), 3u);  // bump, get_a, visible
  auto instance = Instantiate(*module);
  ASSERT_TRUE(instance);
  const auto& g = rewrite->globals;
  EXPECT_EQ(sm::GetGlobal(*instance, g[0].name, ValType::kI32), Value::I32(7));
  ASSERT_TRUE(instance->Invoke("bump", {}, ++tag_));
  EXPECT_EQ(sm::GetGlobal(*instance, g[0].name, ValType::kI32), Value::I32(8));
  EXPECT_EQ(sm::GetGlobal(*instance, g[1].name, ValType::kI64), Value::I64(-2));
  EXPECT_EQ(sm::GetGlobal(*instance, g[2].name, ValType::kF64), Value::F64(2.5));
  EXPECT_EQ(sm::GetGlobal(*instance, g[3].name, ValType::kI32), Value::I32(10));
  ASSERT_TRUE(sm::SetGlobal(*instance, g[0].name, Value::I32(100)));
  EXPECT_EQ(CallI32(*instance, "get_a"), 100);
  ASSERT_TRUE(sm::SetGlobal(*instance, g[1].name, Value::I64(INT64_MIN)));
  EXPECT_EQ(sm::GetGlobal(*instance, g[1].name, ValType::kI64), Value::I64(INT64_MIN));

  // A float global goes through a JS number: no NaN can crash it (the bits
  // of a non-canonical NaN are not a valid JS value), though its payload is
  // not kept.
  for (uint64_t bits : {0xffffffffffffffffull, 0x7ff0000000000001ull, 0xfff8000000000000ull}) {
    ASSERT_TRUE(sm::SetGlobal(*instance, g[2].name, Value::FromBits(ValType::kF64, bits)));
    auto v = sm::GetGlobal(*instance, g[2].name, ValType::kF64);
    ASSERT_TRUE(v);
    EXPECT_TRUE(std::isnan(v->f64()));
  }
  EXPECT_FALSE(sm::GetGlobal(*instance, "no such global", ValType::kI32));
}

}  // namespace
}  // namespace keel::engine

#include "engine/engine.h"

#include <atomic>
#include <cmath>
#include <condition_variable>
#include <cstring>
#include <future>
#include <limits>
#include <mutex>
#include <random>
#include <thread>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "base/file.h"
#include "base/mutex.h"
#include "base/names.h"
#include "engine/module_rewrite.h"

namespace keel::engine {
namespace {

using ::testing::HasSubstr;
using namespace std::string_literals;

std::vector<uint8_t> Fixture(const std::string& name) {
  auto bytes = ReadFile(std::string(KEEL_FIXTURE_DIR) + "/" + name + ".wasm");
  EXPECT_TRUE(bytes) << bytes.error().ToString();
  return bytes ? *bytes : std::vector<uint8_t>{};
}

Engine& EngineOf(EngineKind kind) {
  auto engine = GetEngine(kind);
  EXPECT_TRUE(engine) << engine.error().ToString();
  return **engine;
}

std::shared_ptr<const Module> CompileFixture(Engine& engine, const std::string& name,
                                      CompileOptions options = {}) {
  auto module = engine.Compile(Fixture(name), options);
  EXPECT_TRUE(module) << module.error().ToString();
  return module ? *module : nullptr;
}

std::string EngineName(const ::testing::TestParamInfo<EngineKind>& info) {
  return std::string(ToString(info.param));
}

// A gate a guest can block on through a host import, opened by the test.
// Honors interrupts, as every blocking host function must.
class Gate {
 public:
  void Open() {
    std::lock_guard<std::mutex> lock(mu_);
    open_ = true;
    cv_.notify_all();
  }
  void WaitEntered() {
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait(lock, [&] { return entered_; });
  }
  Result<void> Pass(Caller& caller) {
    caller.SetInterruptHook([this] {
      std::lock_guard<std::mutex> lock(mu_);
      cv_.notify_all();
    });
    std::unique_lock<std::mutex> lock(mu_);
    entered_ = true;
    cv_.notify_all();
    cv_.wait(lock, [&] { return open_ || caller.interrupted(); });
    if (!open_) return MakeError(ErrorCode::kInterrupted, "gate interrupted");
    return {};
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  bool open_ = false;
  bool entered_ = false;
};

// Asks for an interrupt of `tag` every millisecond until destroyed: the
// request only lands once the call with that tag is running.
class RepeatedInterrupt {
 public:
  RepeatedInterrupt(std::shared_ptr<Interrupter> interrupter, uint64_t tag)
      : thread_([this, interrupter, tag] {
          while (!stop_.load()) {
            interrupter->Request(tag);
            std::this_thread::sleep_for(std::chrono::milliseconds(1));
          }
        }) {}
  ~RepeatedInterrupt() {
    stop_ = true;
    thread_.join();
  }

 private:
  std::atomic<bool> stop_{false};
  std::thread thread_;
};

// Every test runs on every engine of the build.
class EngineTest : public ::testing::TestWithParam<EngineKind> {
 protected:
  void SetUp() override {
    auto ctx = engine().NewContext();
    ASSERT_TRUE(ctx) << ctx.error().ToString();
    ctx_ = std::move(*ctx);
  }
  void TearDown() override { ctx_.reset(); }

  Engine& engine() { return EngineOf(GetParam()); }
  bool wasmtime() const { return GetParam() == EngineKind::kWasmtime; }
  std::shared_ptr<const Module> Compile(const std::string& name, CompileOptions options = {}) {
    return CompileFixture(engine(), name, options);
  }

  std::unique_ptr<Instance> Instantiate(const std::shared_ptr<const Module>& module,
                                        std::shared_ptr<const Linker> linker = nullptr) {
    auto instance = ctx_->Instantiate(module, linker ? linker : std::make_shared<Linker>(), nullptr,
                                      NextTag());
    EXPECT_TRUE(instance) << instance.error().ToString();
    return instance ? std::move(*instance) : nullptr;
  }

  Result<std::vector<Value>> Invoke(Instance& instance, std::string_view name,
                                    std::vector<Value> args) {
    return instance.Invoke(name, args, NextTag());
  }

  uint64_t NextTag() { return ++tag_; }

  std::shared_ptr<Linker> HostLinker(Gate* gate) {
    auto linker = std::make_shared<Linker>();
    linker->Define("host", "add3", {{ValType::kI32, ValType::kI32, ValType::kI32}, {ValType::kI32}},
                   [](Caller&, std::span<const Value> a, std::span<Value> r) -> Result<void> {
                     r[0] = Value::I32(a[0].i32() + a[1].i32() + a[2].i32());
                     return {};
                   });
    linker->Define("host", "mix",
                   {{ValType::kI64, ValType::kF32, ValType::kF64}, {ValType::kF64, ValType::kI64}},
                   [](Caller& caller, std::span<const Value> a, std::span<Value> r) -> Result<void> {
                     // Also proves host functions see the caller's memory.
                     uint8_t hello[5];
                     if (auto ok = caller.Read(16, hello); !ok) return ok;
                     if (std::string(hello, hello + 5) != "hello") {
                       return MakeError(ErrorCode::kInternal, "memory not visible");
                     }
                     r[0] = Value::F64(a[2].f64() + a[1].f32());
                     r[1] = Value::I64(a[0].i64() - 1);
                     return {};
                   });
    linker->Define("host", "fail", {{ValType::kI32}, {}},
                   [](Caller&, std::span<const Value> a, std::span<Value>) -> Result<void> {
                     if (a[0].i32() == 7) {
                       Error exit = Error::Trap(TrapKind::kExit, "exit 7");
                       exit.exit_code = 7;
                       return MakeError(exit);
                     }
                     return MakeError(ErrorCode::kInvalidArgument,
                                      "host says no to " + std::to_string(a[0].i32()));
                   });
    linker->Define("host", "gate", {{ValType::kI32}, {ValType::kI32}},
                   [gate](Caller& caller, std::span<const Value> a,
                          std::span<Value> r) -> Result<void> {
                     if (auto ok = gate->Pass(caller); !ok) return ok;
                     r[0] = a[0];
                     return {};
                   });
    return linker;
  }

  std::unique_ptr<Context> ctx_;
  uint64_t tag_ = 0;
};

// --- Compilation and inspection ---------------------------------------------

TEST_P(EngineTest, RejectsMalformedModulesWithAReason) {
  struct Case {
    std::vector<uint8_t> bytes;
    const char* expect;
  };
  std::vector<uint8_t> valid = Fixture("engine_nomem");
  std::vector<uint8_t> truncated(valid.begin(), valid.end() - 3);
  std::vector<Case> cases = {
      {{}, "not a WebAssembly module"},
      {{'\x7f', 'E', 'L', 'F', 1, 0, 0, 0}, "magic"},
      {{0, 'a', 's', 'm', 2, 0, 0, 0}, "version"},
      {{0, 'a', 's', 'm', 1, 0}, ""},
      {truncated, ""},
      {Fixture("invalid_body"), ""},
  };
  for (const Case& c : cases) {
    auto module = engine().Compile(c.bytes);
    ASSERT_FALSE(module);
    EXPECT_EQ(module.error().code, ErrorCode::kInvalidModule);
    EXPECT_FALSE(module.error().message.empty());
    EXPECT_THAT(module.error().message, HasSubstr(c.expect));
  }
}

TEST_P(EngineTest, ListsImportsAndExportsWithSignatures) {
  auto module = Compile("engine_host");
  ASSERT_TRUE(module);
  const ModuleInfo& info = module->info();
  ASSERT_EQ(info.imports.size(), 4u);
  EXPECT_EQ(info.imports[1].module, "host");
  EXPECT_EQ(info.imports[1].name, "mix");
  EXPECT_EQ(info.imports[1].func.ToString(), "(i64, f32, f64) -> (f64, i64)");
  const ExportInfo* e = info.FindFuncExport("call_add3");
  ASSERT_NE(e, nullptr);
  EXPECT_EQ(e->func.ToString(), "(i32, i32, i32) -> (i32)");
  EXPECT_EQ(info.FindExport("memory")->kind, ExternKind::kMemory);
}

TEST_P(EngineTest, MissingOrMistypedImportIsALinkError) {
  auto module = Compile("engine_host");
  auto linker = std::make_shared<Linker>();
  auto instance = ctx_->Instantiate(module, linker, nullptr, NextTag());
  ASSERT_FALSE(instance);
  EXPECT_EQ(instance.error().code, ErrorCode::kLinkError);
  EXPECT_THAT(instance.error().message, HasSubstr("'host'.'add3'"));

  Gate gate;
  auto wrong = HostLinker(&gate);
  wrong->Define("host", "add3", {{ValType::kI32}, {ValType::kI32}},
                [](Caller&, std::span<const Value>, std::span<Value>) -> Result<void> { return {}; });
  instance = ctx_->Instantiate(module, wrong, nullptr, NextTag());
  ASSERT_FALSE(instance);
  EXPECT_EQ(instance.error().code, ErrorCode::kLinkError);
  EXPECT_THAT(instance.error().message, HasSubstr("(i32, i32, i32) -> (i32)"));

  auto mem_import = ctx_->Instantiate(Compile("engine_memimport"), linker, nullptr, NextTag());
  ASSERT_FALSE(mem_import);
  EXPECT_EQ(mem_import.error().code, ErrorCode::kLinkError);
  EXPECT_THAT(mem_import.error().message, HasSubstr("memory"));
}

// --- Calls and values --------------------------------------------------------

TEST_P(EngineTest, CallsNumericExports) {
  auto instance = Instantiate(Compile("engine_basic"));
  ASSERT_TRUE(instance);
  auto r = Invoke(*instance, "add", {Value::I32(40), Value::I32(2)});
  ASSERT_TRUE(r) << r.error().ToString();
  EXPECT_EQ(*r, std::vector<Value>{Value::I32(42)});
  r = Invoke(*instance, "add", {Value::I32(std::numeric_limits<int32_t>::max()), Value::I32(1)});
  EXPECT_EQ((*r)[0].i32(), std::numeric_limits<int32_t>::min());
  r = Invoke(*instance, "nothing", {});
  ASSERT_TRUE(r);
  EXPECT_TRUE(r->empty());
}

TEST_P(EngineTest, ValuesSurviveExactly) {
  auto instance = Instantiate(Compile("engine_basic"));
  for (int64_t v : {std::numeric_limits<int64_t>::min(), int64_t{-1}, int64_t{0},
                    int64_t{1} << 53, (int64_t{1} << 53) + 1, std::numeric_limits<int64_t>::max()}) {
    auto r = Invoke(*instance, "id_i64", {Value::I64(v)});
    ASSERT_TRUE(r);
    EXPECT_EQ((*r)[0], Value::I64(v));
  }
  auto r = Invoke(*instance, "add64", {Value::I64(std::numeric_limits<int64_t>::max()), Value::I64(1)});
  EXPECT_EQ((*r)[0], Value::I64(std::numeric_limits<int64_t>::min()));

  for (double v : {-0.0, 0.0, 0.1, 5e-324, std::numeric_limits<double>::infinity(),
                   -std::numeric_limits<double>::infinity(), std::numeric_limits<double>::max()}) {
    auto f = Invoke(*instance, "id_f64", {Value::F64(v)});
    ASSERT_TRUE(f);
    EXPECT_EQ((*f)[0], Value::F64(v)) << v;
  }
  for (float v : {-0.0f, 0.1f, 1e-45f, std::numeric_limits<float>::infinity(),
                  std::numeric_limits<float>::max()}) {
    auto f = Invoke(*instance, "id_f32", {Value::F32(v)});
    ASSERT_TRUE(f);
    EXPECT_EQ((*f)[0], Value::F32(v)) << v;
  }
  // NaNs keep their sign and payload, signaling ones too.
  for (uint64_t bits : {0x7ff8000000000000ull, 0xfff8000000000000ull, 0xffffffffffffffffull,
                        0x7ff0000000000001ull, 0xfff7ffffffffffffull}) {
    auto f = Invoke(*instance, "id_f64", {Value::FromBits(ValType::kF64, bits)});
    ASSERT_TRUE(f) << f.error().ToString();
    EXPECT_EQ((*f)[0].bits(), bits) << std::hex << bits;
  }
  for (uint32_t bits : {0x7fc00000u, 0xffc00000u, 0xffffffffu, 0x7f800001u, 0xffbfffffu}) {
    auto f = Invoke(*instance, "id_f32", {Value::FromBits(ValType::kF32, bits)});
    ASSERT_TRUE(f) << f.error().ToString();
    EXPECT_EQ((*f)[0].bits(), bits) << std::hex << bits;
  }
}

// The host side of values_exact.wat: echoes floats (recording the bits it
// was given) and answers with NaNs of its own.
struct FloatHost {
  std::vector<uint64_t> seen;

  std::shared_ptr<Linker> MakeLinker() {
    auto linker = std::make_shared<Linker>();
    auto echo = [this](Caller&, std::span<const Value> a, std::span<Value> r) -> Result<void> {
      seen.push_back(a[0].bits());
      r[0] = a[0];
      return {};
    };
    linker->Define("host", "echo_f32", {{ValType::kF32}, {ValType::kF32}}, echo);
    linker->Define("host", "echo_f64", {{ValType::kF64}, {ValType::kF64}}, echo);
    linker->Define("host", "pair", {{ValType::kF32, ValType::kF64, ValType::kI32},
                                    {ValType::kF64, ValType::kF32, ValType::kI32}},
                   [this](Caller&, std::span<const Value> a, std::span<Value> r) -> Result<void> {
                     seen.push_back(a[0].bits());
                     seen.push_back(a[1].bits());
                     r[0] = Value::FromBits(ValType::kF64, 0xfff4000000000001);
                     r[1] = Value::FromBits(ValType::kF32, 0x7f800001);
                     r[2] = Value::I32(a[2].i32() + 1);
                     return {};
                   });
    linker->Define("host", "count", {{}, {ValType::kI32}},
                   [](Caller&, std::span<const Value>, std::span<Value> r) -> Result<void> {
                     r[0] = Value::I32(42);
                     return {};
                   });
    return linker;
  }
};

Value F32Bits(uint32_t bits) { return Value::FromBits(ValType::kF32, bits); }
Value F64Bits(uint64_t bits) { return Value::FromBits(ValType::kF64, bits); }

TEST_P(EngineTest, NanSignsAndPayloadsCrossEveryBoundary) {
  FloatHost host;
  auto instance = Instantiate(Compile("values_exact"), host.MakeLinker());
  ASSERT_TRUE(instance);
  auto one = [&](std::string_view name, std::vector<Value> args) {
    auto r = Invoke(*instance, name, std::move(args));
    EXPECT_TRUE(r) << name << ": " << r.error().ToString();
    return r && !r->empty() ? (*r)[0] : Value();
  };
  // Into wasm, out of wasm, and both.
  EXPECT_EQ(one("bits_f32", {F32Bits(0xffffffff)}), Value::I32(-1));
  EXPECT_EQ(one("bits_f64", {F64Bits(0x7ff0000000000001)}), Value::I64(0x7ff0000000000001));
  EXPECT_EQ(one("from_bits_f32", {Value::I32(0x7f800001)}), F32Bits(0x7f800001));
  EXPECT_EQ(one("from_bits_f64", {Value::I64(-1)}), F64Bits(0xffffffffffffffff));
  // Made by wasm: copysign(nan, -0) is the negative canonical NaN.
  EXPECT_EQ(one("neg_nan_f64", {}), F64Bits(0xfff8000000000000));
  EXPECT_EQ(one("neg_nan_f32", {}), F32Bits(0xffc00000));
  EXPECT_EQ(one("neg_nan_f64", {}).ToString(), "-nan");
  auto swapped = Invoke(*instance, "swap", {F32Bits(0xff800001), F64Bits(0x7ff4000000000000),
                                            Value::I32(9)});
  ASSERT_TRUE(swapped);
  EXPECT_EQ(*swapped, (std::vector<Value>{Value::I32(9), F64Bits(0x7ff4000000000000),
                                          F32Bits(0xff800001)}));

  // Through host imports: by call, call_indirect, ref.func in code and in
  // a global, and an import exported as it is.
  EXPECT_EQ(one("call_echo_f32", {F32Bits(0xffbfffff)}), F32Bits(0xffbfffff));
  EXPECT_EQ(one("call_echo_f64", {F64Bits(0xfff0000000000001)}), F64Bits(0xfff0000000000001));
  EXPECT_EQ(one("indirect_f32", {F32Bits(0x7fa00000), Value::I32(0)}), F32Bits(0x7fa00000));
  EXPECT_EQ(one("indirect_f32", {F32Bits(0x7fa00001), Value::I32(1)}), F32Bits(0x7fa00001));
  EXPECT_EQ(one("ref_f64", {F64Bits(0x7ff0000000000002)}), F64Bits(0x7ff0000000000002));
  EXPECT_EQ(one("global_ref_f64", {F64Bits(0x7ff0000000000003)}), F64Bits(0x7ff0000000000003));
  EXPECT_EQ(one("reexport_f32", {F32Bits(0xff800002)}), F32Bits(0xff800002));
  EXPECT_EQ(host.seen, (std::vector<uint64_t>{0xffbfffff, 0xfff0000000000001, 0x7fa00000,
                                              0x7ff0000000000002, 0x7ff0000000000003,
                                              0xff800002}));
  host.seen.clear();
  auto pair = Invoke(*instance, "call_pair", {F32Bits(0xff800003), F64Bits(0xffffffffffffffff),
                                              Value::I32(1)});
  ASSERT_TRUE(pair) << pair.error().ToString();
  EXPECT_EQ(*pair, (std::vector<Value>{F64Bits(0xfff4000000000001), F32Bits(0x7f800001),
                                       Value::I32(2)}));
  EXPECT_EQ(host.seen, (std::vector<uint64_t>{0xff800003, 0xffffffffffffffff}));
  EXPECT_EQ(one("count", {}), Value::I32(42));
  EXPECT_FALSE(instance->poisoned());
}

TEST_P(EngineTest, EveryFloatPayloadRoundTrips) {
  FloatHost host;
  auto instance = Instantiate(Compile("values_exact"), host.MakeLinker());
  ASSERT_TRUE(instance);
  std::mt19937_64 rng(10);
  for (int i = 0; i < 2000; ++i) {
    // NaN payloads, both signs, quiet and signaling; then arbitrary bits.
    const uint32_t mantissa = 1 + static_cast<uint32_t>(rng() % 0x7fffff);
    const uint32_t f32 = i < 1000 ? (0x7f800000u | mantissa | (i % 2 ? 0x80000000u : 0))
                                  : static_cast<uint32_t>(rng());
    const uint64_t f64 = i < 1000 ? (0x7ff0000000000000ull | (1 + rng() % 0xfffffffffffffull) |
                                     (i % 2 ? 0x8000000000000000ull : 0))
                                  : rng();
    for (const char* name : {"id_f32", "call_echo_f32"}) {
      auto r = Invoke(*instance, name, {F32Bits(f32)});
      ASSERT_TRUE(r) << r.error().ToString();
      ASSERT_EQ((*r)[0], F32Bits(f32)) << name << " " << std::hex << f32;
    }
    for (const char* name : {"id_f64", "call_echo_f64"}) {
      auto r = Invoke(*instance, name, {F64Bits(f64)});
      ASSERT_TRUE(r) << r.error().ToString();
      ASSERT_EQ((*r)[0], F64Bits(f64)) << name << " " << std::hex << f64;
    }
  }
}

TEST_P(EngineTest, TrapsInsideWrappedCodeReportTheModulesOwnFrames) {
  FloatHost host;
  auto module = Compile("values_exact");
  auto instance = Instantiate(module, host.MakeLinker());
  ASSERT_TRUE(instance);
  auto r = Invoke(*instance, "trunc", {F64Bits(0xfff8000000000000)});
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().trap, TrapKind::kInvalidConversion);
  // The offset is that of i32.trunc_f64_s in the module as given, not as
  // compiled; keel's wrapper frame is not shown.
  const ExportInfo* trunc = module->info().FindFuncExport("trunc");
  ASSERT_NE(trunc, nullptr);
  auto bodies = DecodeBodies(Fixture("values_exact"));
  ASSERT_TRUE(bodies);
  const uint32_t imported = 4;
  size_t offset = 0;
  for (const Instruction& in : (*bodies)[trunc->index - imported]) {
    if (in.opcode == 0xaa) offset = in.begin;
  }
  char hex[32];
  std::snprintf(hex, sizeof hex, "%zx", offset);
  const std::string frame =
      "wasm-function[" + std::to_string(trunc->index) + "] <trunc> @0x" + hex + "\n";
  EXPECT_EQ(r.error().backtrace, frame);
}

TEST_P(EngineTest, NamesSpiderMonkeyCannotTakeStillWork) {
  auto linker = std::make_shared<Linker>();
  int32_t value = 1;
  for (const auto& [module, name] : std::vector<std::pair<std::string, std::string>>{
           {"", ""}, {"env\0x"s, "f\0g"s}, {"env", "f"}, {"caf\xc3\xa9", "\xc3\xa9"}}) {
    linker->Define(module, name, {{}, {ValType::kI32}},
                   [value](Caller&, std::span<const Value>, std::span<Value> r) -> Result<void> {
                     r[0] = Value::I32(value);
                     return {};
                   });
    value += 1;
  }
  auto module = Compile("names_exact");
  ASSERT_TRUE(module);
  auto instance = Instantiate(module, linker);
  ASSERT_TRUE(instance);
  const std::vector<std::pair<std::string, int32_t>> calls = {
      {"", 1}, {"a", 2}, {"a\0b"s, 3}, {"\0"s, 4}, {"caf\xc3\xa9", 5}, {"call_imports", 4321}};
  for (const auto& [name, expected] : calls) {
    auto r = Invoke(*instance, name, {});
    ASSERT_TRUE(r) << QuoteName(name) << ": " << r.error().ToString();
    EXPECT_EQ((*r)[0], Value::I32(expected)) << QuoteName(name);
    // Whatever keel prints for the name reads back to it.
    auto back = ParseName(QuoteName(name));
    ASSERT_TRUE(back);
    EXPECT_TRUE(instance->Lookup(*back)) << QuoteName(name);
  }
  auto f = Invoke(*instance, "a\0f"s, {F64Bits(0xfff0000000000009)});
  ASSERT_TRUE(f) << f.error().ToString();
  EXPECT_EQ((*f)[0], F64Bits(0xfff0000000000009));
  EXPECT_EQ(instance->Memory().size(), kWasmPageSize);  // exported as "mem\0ory"
  // keel shows the module's own names, never the ones it compiled.
  for (const ExportInfo& e : module->info().exports) EXPECT_FALSE(e.name.starts_with("\x01keel"));
  EXPECT_NE(module->info().FindFuncExport("a\0b"s), nullptr);
  EXPECT_NE(module->info().FindExport("mem\0ory"s), nullptr);
  auto missing = Invoke(*instance, "a\0c"s, {});
  ASSERT_FALSE(missing);
  EXPECT_THAT(missing.error().message, HasSubstr("\"a\\00c\""));
}

TEST_P(EngineTest, V128AndReferenceExportsAreDescribedAndRefused) {
  if (wasmtime()) {
    // keel's Wasmtime is built without its GC (scripts/build-wasmtime), so
    // externref, which needs it, is refused when compiling, with the reason.
    auto refused = engine().Compile(Fixture("types_v128"));
    ASSERT_FALSE(refused);
    EXPECT_EQ(refused.error().code, ErrorCode::kInvalidModule);
    EXPECT_THAT(refused.error().message, HasSubstr("requires gc"));
    return;
  }
  auto module = Compile("types_v128");
  ASSERT_TRUE(module);
  const ModuleInfo& info = module->info();
  EXPECT_EQ(Describe(*info.FindExport("simd")), "func (v128) -> (funcref)");
  EXPECT_EQ(Describe(*info.FindExport("ext")), "func (externref, i32) -> (externref)");
  EXPECT_EQ(Describe(*info.FindExport("ok")), "func () -> (i32)");
  auto instance = Instantiate(module);
  ASSERT_TRUE(instance);
  auto r = Invoke(*instance, "simd", {});
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code, ErrorCode::kInvalidArgument);
  EXPECT_THAT(r.error().message, HasSubstr("export 'simd' has type (v128) -> (funcref)"));
  EXPECT_THAT(r.error().message, HasSubstr("keel passes only i32, i64, f32 and f64"));
  EXPECT_TRUE(Invoke(*instance, "ok", {}));
  EXPECT_FALSE(instance->poisoned());
}

TEST_P(EngineTest, MultiValueResults) {
  auto instance = Instantiate(Compile("engine_basic"));
  auto r = Invoke(*instance, "swap",
                  {Value::I32(-7), Value::I64(std::numeric_limits<int64_t>::min()), Value::F32(-0.0f),
                   Value::F64(2.5)});
  ASSERT_TRUE(r) << r.error().ToString();
  EXPECT_EQ(*r, (std::vector<Value>{Value::F64(2.5), Value::F32(-0.0f),
                                    Value::I64(std::numeric_limits<int64_t>::min()), Value::I32(-7)}));
}

TEST_P(EngineTest, WrongArgumentsAreErrorsNotCrashes) {
  auto instance = Instantiate(Compile("engine_basic"));
  auto r = Invoke(*instance, "add", {Value::I32(1)});
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code, ErrorCode::kInvalidArgument);
  EXPECT_THAT(r.error().message, HasSubstr("takes 2"));
  r = Invoke(*instance, "add", {Value::I32(1), Value::F64(2)});
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code, ErrorCode::kInvalidArgument);
  EXPECT_THAT(r.error().message, HasSubstr("argument 2 is i32, got f64"));
  r = Invoke(*instance, "no_such_export", {});
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code, ErrorCode::kNotFound);
  r = Invoke(*instance, "memory", {});
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code, ErrorCode::kNotFound);
  // The instance is not harmed by any of that.
  EXPECT_FALSE(instance->poisoned());
  EXPECT_TRUE(Invoke(*instance, "add", {Value::I32(1), Value::I32(2)}));
}

TEST_P(EngineTest, MemoryReadWriteIsBoundsChecked) {
  auto instance = Instantiate(Compile("engine_basic"));
  ASSERT_EQ(instance->Memory().size(), kWasmPageSize);
  const uint8_t data[4] = {1, 2, 3, 4};
  ASSERT_TRUE(instance->WriteMemory(100, data));
  auto r = Invoke(*instance, "load", {Value::I32(100)});
  EXPECT_EQ((*r)[0].i32(), 0x04030201);
  uint8_t out[4];
  ASSERT_TRUE(instance->ReadMemory(100, out));
  EXPECT_EQ(out[3], 4);
  EXPECT_FALSE(instance->WriteMemory(kWasmPageSize - 3, data));
  EXPECT_FALSE(instance->ReadMemory(std::numeric_limits<uint64_t>::max() - 1, out));
  EXPECT_TRUE(instance->ReadMemory(kWasmPageSize, std::span<uint8_t>()));
  // The memory view follows growth.
  ASSERT_TRUE(Invoke(*instance, "grow", {Value::I32(1)}));
  EXPECT_EQ(instance->Memory().size(), 2 * kWasmPageSize);
  EXPECT_TRUE(instance->WriteMemory(kWasmPageSize + 10, data));

  auto nomem = Instantiate(Compile("engine_nomem"));
  EXPECT_TRUE(nomem->Memory().empty());
  EXPECT_FALSE(nomem->WriteMemory(0, data));
}

// --- Traps -------------------------------------------------------------------

struct TrapCase {
  const char* name;
  std::vector<Value> args;
  TrapKind kind;
};

TEST_P(EngineTest, TrapsAreValuesWithKindAndMessage) {
  auto module = Compile("engine_basic");
  std::vector<TrapCase> cases = {
      {"unreachable", {}, TrapKind::kUnreachable},
      {"div_s", {Value::I32(1), Value::I32(0)}, TrapKind::kIntegerDivideByZero},
      {"div_s", {Value::I32(std::numeric_limits<int32_t>::min()), Value::I32(-1)},
       TrapKind::kIntegerOverflow},
      {"trunc", {Value::F64(std::nan(""))}, TrapKind::kInvalidConversion},
      {"load", {Value::I32(-4)}, TrapKind::kMemoryOutOfBounds},
      {"call_indirect_v_i", {Value::I32(17)}, TrapKind::kTableOutOfBounds},
      {"call_indirect_v_i", {Value::I32(2)}, TrapKind::kIndirectCallToNull},
      {"call_indirect_v_i", {Value::I32(1)}, TrapKind::kIndirectCallTypeMismatch},
      {"recurse", {Value::I32(0)}, TrapKind::kStackOverflow},
  };
  for (const TrapCase& c : cases) {
    auto instance = Instantiate(module);
    auto r = Invoke(*instance, c.name, c.args);
    ASSERT_FALSE(r) << c.name;
    EXPECT_EQ(r.error().code, ErrorCode::kTrap) << c.name;
    EXPECT_EQ(r.error().trap, c.kind) << c.name << ": " << r.error().ToString();
    EXPECT_FALSE(r.error().message.empty());
    // A trap poisons the instance: it is never entered again.
    EXPECT_TRUE(instance->poisoned());
    auto again = Invoke(*instance, "add", {Value::I32(1), Value::I32(2)});
    ASSERT_FALSE(again);
    EXPECT_EQ(again.error().code, ErrorCode::kFailedPrecondition);
  }
}

TEST_P(EngineTest, TrapCarriesWasmBacktrace) {
  auto instance = Instantiate(Compile("engine_basic"));
  auto r = Invoke(*instance, "unreachable", {});
  ASSERT_FALSE(r);
  EXPECT_THAT(r.error().backtrace, HasSubstr("wasm-function[10] <unreachable> @0x"));
}

// --- Host functions ----------------------------------------------------------

TEST_P(EngineTest, HostFunctionsAreCalledWithTypedValues) {
  Gate gate;
  auto instance = Instantiate(Compile("engine_host"), HostLinker(&gate));
  ASSERT_TRUE(instance);
  auto r = Invoke(*instance, "call_add3", {Value::I32(1), Value::I32(2), Value::I32(3)});
  ASSERT_TRUE(r) << r.error().ToString();
  EXPECT_EQ((*r)[0].i32(), 6);
  r = Invoke(*instance, "call_mix",
             {Value::I64(std::numeric_limits<int64_t>::min() + 1), Value::F32(0.5f), Value::F64(1.25)});
  ASSERT_TRUE(r) << r.error().ToString();
  EXPECT_EQ(*r, (std::vector<Value>{Value::F64(1.75), Value::I64(std::numeric_limits<int64_t>::min())}));
}

TEST_P(EngineTest, HostFunctionCanRaiseATrap) {
  Gate gate;
  auto module = Compile("engine_host");
  auto instance = Instantiate(module, HostLinker(&gate));
  auto r = Invoke(*instance, "call_fail", {Value::I32(3)});
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code, ErrorCode::kTrap);
  EXPECT_EQ(r.error().trap, TrapKind::kHostError);
  EXPECT_THAT(r.error().message, HasSubstr("host says no to 3"));
  EXPECT_TRUE(instance->poisoned());

  auto exiting = Instantiate(module, HostLinker(&gate));
  r = Invoke(*exiting, "call_fail", {Value::I32(7)});
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().trap, TrapKind::kExit);
  EXPECT_EQ(r.error().exit_code, 7);
}

// --- Interrupts --------------------------------------------------------------

TEST_P(EngineTest, InterruptStopsAnInfiniteLoopFromAnotherThread) {
  auto module = Compile("engine_basic");
  auto instance = Instantiate(module);
  auto interrupter = ctx_->interrupter();
  uint64_t tag = NextTag();
  Result<void> r;
  {
    RepeatedInterrupt killer(interrupter, tag);
    auto func = instance->Lookup("spin");
    r = instance->Call(*func, {}, {}, tag);
  }
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code, ErrorCode::kInterrupted);
  EXPECT_TRUE(instance->poisoned());

  // A fresh instance on the same thread works, and the old request cannot
  // reach it.
  auto fresh = Instantiate(module);
  interrupter->Request(tag);
  auto ok = Invoke(*fresh, "add", {Value::I32(2), Value::I32(3)});
  ASSERT_TRUE(ok) << ok.error().ToString();
  EXPECT_EQ((*ok)[0].i32(), 5);
}

TEST_P(EngineTest, LateInterruptDoesNotHitTheNextCall) {
  auto instance = Instantiate(Compile("engine_basic"));
  auto interrupter = ctx_->interrupter();
  uint64_t first = NextTag();
  auto func = instance->Lookup("bump");
  Value out[1];
  ASSERT_TRUE(instance->Call(*func, {}, out, first));
  // The request for the finished call arrives late, from another thread.
  std::thread([&] { interrupter->Request(first); }).join();
  for (int i = 0; i < 100; ++i) {
    ASSERT_TRUE(instance->Call(*func, {}, out, NextTag()));
  }
  EXPECT_EQ(out[0].i32(), 101);
  EXPECT_FALSE(instance->poisoned());
}

TEST_P(EngineTest, InterruptRequestedBeforeTheCallStartsStopsIt) {
  auto instance = Instantiate(Compile("engine_basic"));
  uint64_t tag = NextTag();
  ctx_->interrupter()->Request(tag);
  auto func = instance->Lookup("bump");
  Value out[1];
  auto r = instance->Call(*func, {}, out, tag);
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code, ErrorCode::kInterrupted);
}

TEST_P(EngineTest, InterruptWakesABlockedHostFunction) {
  Gate gate;
  auto instance = Instantiate(Compile("engine_host"), HostLinker(&gate));
  auto interrupter = ctx_->interrupter();
  uint64_t tag = NextTag();
  std::thread killer([&] {
    gate.WaitEntered();
    interrupter->Request(tag);
  });
  auto func = instance->Lookup("gate_then_spin");
  Value out[1];
  auto r = instance->Call(*func, std::vector<Value>{Value::I32(1)}, out, tag);
  killer.join();
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code, ErrorCode::kInterrupted);
}

TEST_P(EngineTest, InstantiationIsInterruptible) {
  auto module = Compile("engine_start");
  uint64_t tag = NextTag();
  Result<std::unique_ptr<Instance>> instance = MakeError(ErrorCode::kInternal, "not run");
  {
    RepeatedInterrupt killer(ctx_->interrupter(), tag);
    instance = ctx_->Instantiate(module, std::make_shared<Linker>(), nullptr, tag);
  }
  ASSERT_FALSE(instance);
  EXPECT_EQ(instance.error().code, ErrorCode::kInterrupted);
}

// --- Memory cap --------------------------------------------------------------

TEST_P(EngineTest, MemoryCapIsNeverExceeded) {
  auto over = engine().Compile(Fixture("engine_bigmem"), {.max_memory_pages = 32});
  ASSERT_FALSE(over);
  EXPECT_EQ(over.error().code, ErrorCode::kResourceExhausted);

  auto module = Compile("engine_bigmem", {.max_memory_pages = 80});
  EXPECT_EQ(module->info().memory->max, 80u);
  auto instance = Instantiate(module);
  auto r = Invoke(*instance, "grow", {Value::I32(16)});
  EXPECT_EQ((*r)[0].i32(), 64);
  r = Invoke(*instance, "grow", {Value::I32(1)});
  EXPECT_EQ((*r)[0].i32(), -1);
  r = Invoke(*instance, "size", {});
  EXPECT_EQ((*r)[0].i32(), 80);
  EXPECT_FALSE(instance->poisoned());
}

// --- Threads -----------------------------------------------------------------

TEST_P(EngineTest, TwoThreadsShareOneCompiledModule) {
  auto module = engine().Compile(Fixture("engine_basic"));
  ASSERT_TRUE(module);
  constexpr int kCalls = 100000;
  auto run = [&](int seed, int64_t* sum) {
    auto ctx = engine().NewContext();
    ASSERT_TRUE(ctx);
    auto instance = (*ctx)->Instantiate(*module, std::make_shared<Linker>(), nullptr, 1);
    ASSERT_TRUE(instance);
    auto func = (*instance)->Lookup("add");
    Value args[2];
    Value out[1];
    uint64_t tag = 1;
    for (int i = 0; i < kCalls; ++i) {
      args[0] = Value::I32(i);
      args[1] = Value::I32(seed);
      ASSERT_TRUE((*instance)->Call(*func, args, out, ++tag));
      *sum += out[0].i32();
    }
    instance->reset();
  };
  int64_t a = 0, b = 0;
  std::thread t1(run, 1, &a);
  std::thread t2(run, 2, &b);
  t1.join();
  t2.join();
  int64_t base = int64_t{kCalls} * (kCalls - 1) / 2;
  EXPECT_EQ(a, base + kCalls);
  EXPECT_EQ(b, base + 2 * kCalls);
}

// --- Exact values through host functions --------------------------------------

// A counter a host function raises and a test thread waits on.
class Signal {
 public:
  void Raise() EXCLUDES(mu_) {
    MutexLock lock(mu_);
    ++count_;
    cv_.SignalAll();
  }
  void WaitFor(int count) EXCLUDES(mu_) {
    MutexLock lock(mu_);
    while (count_ < count) cv_.Wait(mu_);
  }

 private:
  Mutex mu_;
  CondVar cv_;
  int count_ GUARDED_BY(mu_) = 0;
};

std::shared_ptr<Linker> MoreLinker(Signal* signal) {
  auto linker = std::make_shared<Linker>();
  auto echo = [](Caller&, std::span<const Value> a, std::span<Value> r) -> Result<void> {
    r[0] = a[0];
    return {};
  };
  linker->Define("host", "echo_f32", {{ValType::kF32}, {ValType::kF32}}, echo);
  linker->Define("host", "echo_f64", {{ValType::kF64}, {ValType::kF64}}, echo);
  linker->Define("host", "signal", {{}, {}},
                 [signal](Caller&, std::span<const Value>, std::span<Value>) -> Result<void> {
                   signal->Raise();
                   return {};
                 });
  return linker;
}

TEST_P(EngineTest, NanPayloadsCrossTheBoundary) {
  Signal signal;
  auto instance = Instantiate(Compile("engine_more"), MoreLinker(&signal));
  ASSERT_TRUE(instance);
  const Value nan32 = Value::FromBits(ValType::kF32, 0x7fa00001);  // signalling, payload 0x200001
  const Value nan64 = Value::FromBits(ValType::kF64, 0xfff4000000000abcull);
  // Produced in the guest from bits: both engines hand those bits out.
  auto made32 = Invoke(*instance, "f32_from_bits", {Value::I32(0x7fa00001)});
  ASSERT_TRUE(made32) << made32.error().ToString();
  auto made64 = Invoke(*instance, "f64_from_bits", {Value::I64(0xfff4000000000abcull)});
  ASSERT_TRUE(made64) << made64.error().ToString();
  // Into the guest, and through a host function and back.
  auto bits32 = Invoke(*instance, "f32_bits", {nan32});
  auto bits64 = Invoke(*instance, "f64_bits", {nan64});
  auto echoed32 = Invoke(*instance, "call_echo_f32", {nan32});
  auto echoed64 = Invoke(*instance, "call_echo_f64", {nan64});
  ASSERT_TRUE(bits32 && bits64 && echoed32 && echoed64);
  if (wasmtime()) {
    // Wasmtime passes raw bits: every payload survives exactly.
    EXPECT_EQ((*made32)[0], nan32);
    EXPECT_EQ((*made64)[0], nan64);
    EXPECT_EQ((*bits32)[0], Value::I32(0x7fa00001));
    EXPECT_EQ((*bits64)[0], Value::I64(0xfff4000000000abcull));
    EXPECT_EQ((*echoed32)[0], nan32);
    EXPECT_EQ((*echoed64)[0], nan64);
  } else {
    // SpiderMonkey 102 passes values as JS numbers: NaNs stay NaN, but
    // their sign and payload may not.
    EXPECT_TRUE(std::isnan((*made32)[0].f32()));
    EXPECT_TRUE(std::isnan((*made64)[0].f64()));
    EXPECT_TRUE(std::isnan((*echoed32)[0].f32()));
    EXPECT_TRUE(std::isnan((*echoed64)[0].f64()));
  }
}

// --- Stack -------------------------------------------------------------------

TEST_P(EngineTest, StackOverflowIsATrapAtAReasonableDepth) {
  Signal signal;
  auto instance = Instantiate(Compile("engine_more"), MoreLinker(&signal));
  auto r = Invoke(*instance, "deep", {Value::I32(1)});
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().trap, TrapKind::kStackOverflow) << r.error().ToString();
  uint8_t depth_bytes[4];
  ASSERT_TRUE(instance->ReadMemory(0, depth_bytes));
  uint32_t depth;
  std::memcpy(&depth, depth_bytes, sizeof depth);
  RecordProperty("depth", static_cast<int>(depth));
  // Both engines give the guest about 1 MiB: frames of tens of bytes.
  EXPECT_GT(depth, 5000u);
  EXPECT_LT(depth, 1000000u);
}

// --- Interrupts (more) ---------------------------------------------------------

// Interrupting calls on one context, over and over, never stops a call on
// another context of the same engine (Wasmtime's epoch is engine-wide).
TEST_P(EngineTest, InterruptsOfOneContextLeaveOtherContextsAlone) {
  auto module = Compile("engine_more");
  constexpr int kInterrupts = 30;
  Signal entered;
  std::promise<std::shared_ptr<Interrupter>> victim_interrupter;
  std::atomic<uint64_t> victim_tag{0};
  std::atomic<int> victim_interrupted{0};
  std::atomic<bool> victim_done{false};
  std::thread victim([&] {
    auto ctx = engine().NewContext();
    victim_interrupter.set_value((*ctx)->interrupter());
    uint64_t tag = 0;
    for (int i = 0; i < kInterrupts; ++i) {
      auto instance = (*ctx)->Instantiate(module, MoreLinker(&entered), nullptr, ++tag);
      auto func = (*instance)->Lookup("signal_then_spin");
      victim_tag = ++tag;
      auto r = (*instance)->Call(*func, {}, {}, tag);
      if (!r && r.error().code == ErrorCode::kInterrupted) ++victim_interrupted;
    }
    victim_done = true;
  });
  std::thread killer([&] {
    auto interrupter = victim_interrupter.get_future().get();
    for (int i = 1; i <= kInterrupts; ++i) {
      entered.WaitFor(i);  // the victim spins in the call with victim_tag
      interrupter->Request(victim_tag.load());
    }
  });
  Signal unused;
  auto bystander = Instantiate(module, MoreLinker(&unused));
  auto count = bystander->Lookup("count");
  int calls = 0;
  Value n[1] = {Value::I32(100000)};
  Value total[1];
  while (!victim_done.load()) {
    auto r = bystander->Call(*count, n, total, NextTag());
    ASSERT_TRUE(r) << r.error().ToString();
    ++calls;
  }
  victim.join();
  killer.join();
  EXPECT_EQ(victim_interrupted.load(), kInterrupts);
  EXPECT_EQ(total[0].i32(), calls * 100000);
  EXPECT_FALSE(bystander->poisoned());
}

// The host's interrupt hook runs on the requesting thread with no engine
// lock held: it may ask the engine anything, even request again.
TEST_P(EngineTest, InterruptHookRunsWithoutEngineLocks) {
  auto interrupter = ctx_->interrupter();
  uint64_t tag = NextTag();
  Signal entered;
  std::atomic<int> hook_runs{0};
  // What the hook touches outlives the host function: a hook may still be
  // running on the requesting thread when the host function returns.
  Mutex mu;
  CondVar woken;
  bool wake = false;
  auto linker = std::make_shared<Linker>();
  linker->Define("host", "block", {{}, {}},
                 [&](Caller& caller, std::span<const Value>, std::span<Value>) -> Result<void> {
                   caller.SetInterruptHook([&] {
                     // Re-entrant, once: it would deadlock under a lock.
                     if (hook_runs++ == 0) interrupter->Request(tag);
                     MutexLock lock(mu);
                     wake = true;
                     woken.SignalAll();
                   });
                   entered.Raise();
                   MutexLock lock(mu);
                   while (!wake) woken.Wait(mu);
                   return MakeError(ErrorCode::kInterrupted, "woken");
                 });
  auto module = engine().Compile(Fixture("engine_block"));
  ASSERT_TRUE(module) << module.error().ToString();
  auto instance = Instantiate(*module, linker);
  std::thread killer([&] {
    entered.WaitFor(1);
    interrupter->Request(tag);
  });
  auto func = instance->Lookup("block");
  auto r = instance->Call(*func, {}, {}, tag);
  killer.join();
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code, ErrorCode::kInterrupted);
  EXPECT_GE(hook_runs.load(), 1);
}

// --- Fuel --------------------------------------------------------------------

TEST_P(EngineTest, FuelIsADeterministicBudgetPerCall) {
  if (!wasmtime()) {
    auto refused = engine().Compile(Fixture("engine_more"), {.fuel = 1000});
    ASSERT_FALSE(refused);
    EXPECT_EQ(refused.error().code, ErrorCode::kInvalidArgument);
    EXPECT_THAT(refused.error().message, HasSubstr("fuel"));
    return;
  }
  auto module = Compile("engine_more", {.fuel = 20000});
  Signal signal;
  auto fresh = [&] { return Instantiate(module, MoreLinker(&signal)); };
  auto fits = [&](int n) {
    auto instance = fresh();
    return bool(Invoke(*instance, "count", {Value::I32(n)}));
  };
  // The largest loop the budget pays for, found by bisection.
  int lo = 0, hi = 20000;
  ASSERT_TRUE(fits(lo));
  ASSERT_FALSE(fits(hi));
  while (hi - lo > 1) {
    int mid = (lo + hi) / 2;
    (fits(mid) ? lo : hi) = mid;
  }
  // Every call gets the whole budget again, and runs out at the same point.
  auto instance = fresh();
  for (int i = 1; i <= 3; ++i) {
    auto r = Invoke(*instance, "count", {Value::I32(lo)});
    ASSERT_TRUE(r) << r.error().ToString();
    EXPECT_EQ((*r)[0].i32(), i * lo);
  }
  auto over = Invoke(*instance, "count", {Value::I32(hi)});
  ASSERT_FALSE(over);
  EXPECT_EQ(over.error().code, ErrorCode::kTrap);
  EXPECT_EQ(over.error().trap, TrapKind::kOutOfFuel);
  EXPECT_TRUE(instance->poisoned());
  auto spin = Invoke(*fresh(), "signal_then_spin", {});
  ASSERT_FALSE(spin);
  EXPECT_EQ(spin.error().trap, TrapKind::kOutOfFuel);
}

INSTANTIATE_TEST_SUITE_P(Engines, EngineTest, ::testing::ValuesIn(AvailableEngines()), EngineName);

// --- Selection -----------------------------------------------------------------

TEST(EngineSelectionTest, EveryAvailableEngineIsReachableByName) {
  ASSERT_FALSE(AvailableEngines().empty());
  EXPECT_EQ(AvailableEngines()[0], EngineKind::kSpiderMonkey);
  EXPECT_EQ(&DefaultEngine(), *GetEngine(EngineKind::kSpiderMonkey));
  for (EngineKind kind : AvailableEngines()) {
    auto engine = GetEngine(kind);
    ASSERT_TRUE(engine) << engine.error().ToString();
    EXPECT_EQ((*engine)->kind(), kind);
    EXPECT_THAT(std::string((*engine)->name()), ::testing::StartsWith(std::string(ToString(kind))));
    EXPECT_EQ(ParseEngineKind(ToString(kind)), kind);
  }
  EXPECT_EQ(ParseEngineKind("v8"), std::nullopt);
  if (AvailableEngines().size() == 1) {
    auto missing = GetEngine(EngineKind::kWasmtime);
    ASSERT_FALSE(missing);
    EXPECT_EQ(missing.error().code, ErrorCode::kUnavailable);
  }
}

TEST(EngineSelectionTest, ModulesOfOneEngineAreRefusedByAnother) {
  if (AvailableEngines().size() < 2) GTEST_SKIP() << "one engine in this build";
  Engine& sm = **GetEngine(EngineKind::kSpiderMonkey);
  Engine& wt = **GetEngine(EngineKind::kWasmtime);
  auto sm_module = CompileFixture(sm, "engine_nomem");
  auto wt_module = CompileFixture(wt, "engine_nomem");
  auto wt_ctx = wt.NewContext();
  ASSERT_TRUE(wt_ctx);
  auto wrong = (*wt_ctx)->Instantiate(sm_module, std::make_shared<Linker>(), nullptr, 1);
  ASSERT_FALSE(wrong);
  EXPECT_EQ(wrong.error().code, ErrorCode::kInvalidArgument);
  auto sm_ctx = sm.NewContext();
  ASSERT_TRUE(sm_ctx);
  wrong = (*sm_ctx)->Instantiate(wt_module, std::make_shared<Linker>(), nullptr, 1);
  ASSERT_FALSE(wrong);
  EXPECT_EQ(wrong.error().code, ErrorCode::kInvalidArgument);
}

}  // namespace
}  // namespace keel::engine

#include "engine/engine.h"

#include <atomic>
#include <cmath>
#include <condition_variable>
#include <limits>
#include <mutex>
#include <thread>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "base/file.h"

namespace keel::engine {
namespace {

using ::testing::HasSubstr;

std::vector<uint8_t> Fixture(const std::string& name) {
  auto bytes = ReadFile(std::string(KEEL_FIXTURE_DIR) + "/" + name + ".wasm");
  EXPECT_TRUE(bytes) << bytes.error().ToString();
  return bytes ? *bytes : std::vector<uint8_t>{};
}

std::shared_ptr<const Module> Compile(const std::string& name, CompileOptions options = {}) {
  auto module = DefaultEngine().Compile(Fixture(name), options);
  EXPECT_TRUE(module) << module.error().ToString();
  return module ? *module : nullptr;
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

class EngineTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto ctx = DefaultEngine().NewContext();
    ASSERT_TRUE(ctx) << ctx.error().ToString();
    ctx_ = std::move(*ctx);
  }
  void TearDown() override { ctx_.reset(); }

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

TEST_F(EngineTest, RejectsMalformedModulesWithAReason) {
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
    auto module = DefaultEngine().Compile(c.bytes);
    ASSERT_FALSE(module);
    EXPECT_EQ(module.error().code, ErrorCode::kInvalidModule);
    EXPECT_FALSE(module.error().message.empty());
    EXPECT_THAT(module.error().message, HasSubstr(c.expect));
  }
}

TEST_F(EngineTest, ListsImportsAndExportsWithSignatures) {
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

TEST_F(EngineTest, MissingOrMistypedImportIsALinkError) {
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

TEST_F(EngineTest, CallsNumericExports) {
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

TEST_F(EngineTest, ValuesSurviveExactly) {
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
  auto nan64 = Invoke(*instance, "id_f64", {Value::F64(std::nan(""))});
  EXPECT_TRUE(std::isnan((*nan64)[0].f64()));
  auto nan32 = Invoke(*instance, "id_f32", {Value::F32(std::nanf(""))});
  EXPECT_TRUE(std::isnan((*nan32)[0].f32()));
}

TEST_F(EngineTest, MultiValueResults) {
  auto instance = Instantiate(Compile("engine_basic"));
  auto r = Invoke(*instance, "swap",
                  {Value::I32(-7), Value::I64(std::numeric_limits<int64_t>::min()), Value::F32(-0.0f),
                   Value::F64(2.5)});
  ASSERT_TRUE(r) << r.error().ToString();
  EXPECT_EQ(*r, (std::vector<Value>{Value::F64(2.5), Value::F32(-0.0f),
                                    Value::I64(std::numeric_limits<int64_t>::min()), Value::I32(-7)}));
}

TEST_F(EngineTest, WrongArgumentsAreErrorsNotCrashes) {
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

TEST_F(EngineTest, MemoryReadWriteIsBoundsChecked) {
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

TEST_F(EngineTest, TrapsAreValuesWithKindAndMessage) {
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

TEST_F(EngineTest, TrapCarriesWasmBacktrace) {
  auto instance = Instantiate(Compile("engine_basic"));
  auto r = Invoke(*instance, "unreachable", {});
  ASSERT_FALSE(r);
  EXPECT_THAT(r.error().backtrace, HasSubstr("wasm-function[10] <unreachable> @0x"));
}

// --- Host functions ----------------------------------------------------------

TEST_F(EngineTest, HostFunctionsAreCalledWithTypedValues) {
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

TEST_F(EngineTest, HostFunctionCanRaiseATrap) {
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

TEST_F(EngineTest, InterruptStopsAnInfiniteLoopFromAnotherThread) {
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

TEST_F(EngineTest, LateInterruptDoesNotHitTheNextCall) {
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

TEST_F(EngineTest, InterruptRequestedBeforeTheCallStartsStopsIt) {
  auto instance = Instantiate(Compile("engine_basic"));
  uint64_t tag = NextTag();
  ctx_->interrupter()->Request(tag);
  auto func = instance->Lookup("bump");
  Value out[1];
  auto r = instance->Call(*func, {}, out, tag);
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code, ErrorCode::kInterrupted);
}

TEST_F(EngineTest, InterruptWakesABlockedHostFunction) {
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

TEST_F(EngineTest, InstantiationIsInterruptible) {
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

TEST_F(EngineTest, MemoryCapIsNeverExceeded) {
  auto over = DefaultEngine().Compile(Fixture("engine_bigmem"), {.max_memory_pages = 32});
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

TEST(EngineThreadsTest, TwoThreadsShareOneCompiledModule) {
  auto module = DefaultEngine().Compile(Fixture("engine_basic"));
  ASSERT_TRUE(module);
  constexpr int kCalls = 100000;
  auto run = [&](int seed, int64_t* sum) {
    auto ctx = DefaultEngine().NewContext();
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

}  // namespace
}  // namespace keel::engine

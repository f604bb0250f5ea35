// Typed host functions (Linker::Define deriving the FuncType from a C++
// callable) and the per-call host context, through the public API.
#include <atomic>
#include <tuple>

#include "public_fixture.h"

namespace keel::publictest {
namespace {

// What the host functions of one call leave for its caller.
struct Tally {
  std::atomic<int> scale_calls{0};
  std::atomic<int64_t> last_factor{0};
};

int32_t Twice(int32_t x) { return 2 * x; }

TEST(TypedLinker, DerivesTheTypeFromTheCallable) {
  Linker linker;
  linker.Define("m", "caller_i32_i64", [](Caller&, int32_t, int64_t) -> int32_t { return 0; });
  linker.Define("m", "no_caller_void", [](uint32_t, uint64_t, float, double) {});
  linker.Define("m", "tuple", [](int32_t a, int32_t b) { return std::tuple<int32_t, int64_t>(a, b); });
  linker.Define("m", "fallible", [](Caller&, float) -> Result<double> { return 1.0; });
  linker.Define("m", "fallible_void", [](int64_t) -> Result<void> { return {}; });
  linker.Define("m", "function_pointer", &Twice);

  auto type = [&](const char* name) { return linker.Find("m", name)->type; };
  using V = ValType;
  EXPECT_EQ(type("caller_i32_i64"), (FuncType{{V::kI32, V::kI64}, {V::kI32}}));
  EXPECT_EQ(type("no_caller_void"), (FuncType{{V::kI32, V::kI64, V::kF32, V::kF64}, {}}));
  EXPECT_EQ(type("tuple"), (FuncType{{V::kI32, V::kI32}, {V::kI32, V::kI64}}));
  EXPECT_EQ(type("fallible"), (FuncType{{V::kF32}, {V::kF64}}));
  EXPECT_EQ(type("fallible_void"), (FuncType{{V::kI64}, {}}));
  EXPECT_EQ(type("function_pointer"), (FuncType{{V::kI32}, {V::kI32}}));
}

class TypedHostTest : public PublicTest {
 protected:
  std::shared_ptr<Linker> MakeLinker() override {
    auto linker = std::make_shared<Linker>();
    linker->Define("host", "scale", [](Caller& caller, int32_t x, int64_t factor) -> int32_t {
      if (Tally* tally = caller.context<Tally>()) {
        tally->scale_calls++;
        tally->last_factor = factor;
      }
      return x * static_cast<int32_t>(factor);
    });
    linker->Define("host", "divmod", [](int32_t a, int32_t b) -> Result<std::tuple<int32_t, int32_t>> {
      if (b == 0) return MakeError(ErrorCode::kInvalidArgument, "divmod by zero");
      return std::tuple<int32_t, int32_t>(a / b, a % b);
    });
    linker->Define("host", "gate", [this](Caller& caller, int32_t token) -> Result<int32_t> {
      if (auto passed = gates_.Pass(caller, token); !passed) return tl::unexpected(passed.error());
      return token;
    });
    return linker;
  }
};

TEST_F(TypedHostTest, CallsATypedHostFunction) {
  auto pool = MakePool();
  Call call = Submit(*pool, "call_scale", {Value::I32(6), Value::I64(7)});
  EXPECT_EQ(I32(call.Wait()), 42);
}

TEST_F(TypedHostTest, ReturnsSeveralValuesFromATuple) {
  auto pool = MakePool();
  Call call = Submit(*pool, "call_divmod", {Value::I32(17), Value::I32(5)});
  ASSERT_TRUE(call.Wait()) << call.Wait().error().ToString();
  EXPECT_EQ(call.Wait()->values, (std::vector<Value>{Value::I32(3), Value::I32(2)}));
}

TEST_F(TypedHostTest, AnErrorFromAHostFunctionFailsTheCallWithItsMessage) {
  auto pool = MakePool();
  Call call = Submit(*pool, "call_divmod", {Value::I32(1), Value::I32(0)});
  ASSERT_FALSE(call.Wait());
  EXPECT_EQ(call.Wait().error().code, ErrorCode::kTrap);
  EXPECT_EQ(call.Wait().error().trap, TrapKind::kHostError);
  EXPECT_NE(call.Wait().error().message.find("divmod by zero"), std::string::npos)
      << call.Wait().error().ToString();
  // The instance is replaced; the pool goes on.
  Call next = Submit(*pool, "call_divmod", {Value::I32(9), Value::I32(4)});
  ASSERT_TRUE(next.Wait()) << next.Wait().error().ToString();
}

TEST_F(TypedHostTest, HostFunctionsReachTheirCallsContext) {
  auto pool = MakePool({.instances = 2});
  auto first = std::make_shared<Tally>();
  auto second = std::make_shared<Tally>();
  Call a = Submit(*pool, "call_scale", {Value::I32(1), Value::I64(3)}, {.context = first});
  Call b = Submit(*pool, "call_scale", {Value::I32(1), Value::I64(5)}, {.context = second});
  Call none = Submit(*pool, "call_scale", {Value::I32(1), Value::I64(9)});
  ASSERT_EQ(I32(a.Wait()), 3);
  ASSERT_EQ(I32(b.Wait()), 5);
  ASSERT_EQ(I32(none.Wait()), 9);
  EXPECT_EQ(first->scale_calls.load(), 1);
  EXPECT_EQ(first->last_factor.load(), 3);
  EXPECT_EQ(second->scale_calls.load(), 1);
  EXPECT_EQ(second->last_factor.load(), 5);
}

TEST_F(TypedHostTest, AContextOfAnotherTypeIsNotHanded) {
  auto pool = MakePool();
  auto other = std::make_shared<int>(7);
  Call call = Submit(*pool, "call_scale", {Value::I32(2), Value::I64(2)}, {.context = other});
  EXPECT_EQ(I32(call.Wait()), 4);
  EXPECT_EQ(*other, 7);
}

TEST(HostContext, HandsItsValueOnlyAsItsOwnType) {
  HostContext empty;
  EXPECT_FALSE(empty);
  EXPECT_EQ(empty.get<int>(), nullptr);

  auto tally = std::make_shared<Tally>();
  HostContext context = tally;
  EXPECT_TRUE(context);
  EXPECT_EQ(context.get<Tally>(), tally.get());
  EXPECT_EQ(context.get<const Tally>(), tally.get());
  EXPECT_EQ(context.get<int>(), nullptr);

  HostContext read_only = std::shared_ptr<const Tally>(tally);
  EXPECT_EQ(read_only.get<Tally>(), nullptr) << "a const value is not handed out as mutable";
  EXPECT_EQ(read_only.get<const Tally>(), tally.get());
}

}  // namespace
}  // namespace keel::publictest

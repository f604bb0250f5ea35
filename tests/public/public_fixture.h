// Shared by the public-API tests: a runtime with a detached sink, and the
// host side of tests/fixtures/public_api.wat, whose host.gate(token) holds
// a call until the test releases its token. Only include/keel/ is visible
// here, so the synchronisation is the standard library's.
#ifndef KEEL_TESTS_PUBLIC_PUBLIC_FIXTURE_H_
#define KEEL_TESTS_PUBLIC_PUBLIC_FIXTURE_H_

#include <condition_variable>
#include <fstream>
#include <iterator>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "keel/runtime.h"

namespace keel::publictest {

using namespace std::chrono_literals;

inline std::vector<uint8_t> Fixture(const std::string& name) {
  std::ifstream in(std::string(KEEL_FIXTURE_DIR) + "/" + name + ".wasm", std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

// host.gate(token) blocks until Release(token), or fails kInterrupted when
// keel interrupts the call.
class Gates {
 public:
  Result<void> Pass(Caller& caller, int32_t token) {
    caller.SetInterruptHook([this] {
      std::lock_guard<std::mutex> lock(mu_);
      cv_.notify_all();
    });
    std::unique_lock<std::mutex> lock(mu_);
    entered_[token] = true;
    cv_.notify_all();
    cv_.wait(lock, [&] { return released_[token] || caller.interrupted(); });
    if (!released_[token]) return MakeError(ErrorCode::kInterrupted, "gate interrupted");
    return {};
  }
  void AwaitEntered(int32_t token) {
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait(lock, [&] { return entered_[token]; });
  }
  void Release(int32_t token) {
    std::lock_guard<std::mutex> lock(mu_);
    released_[token] = true;
    cv_.notify_all();
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  std::map<int32_t, bool> entered_;
  std::map<int32_t, bool> released_;
};

// What the detached sink received, by call id.
class Sink {
 public:
  void Add(CallId id, const CallResult& result) {
    std::lock_guard<std::mutex> lock(mu_);
    results_.emplace(id, result);
    cv_.notify_all();
  }
  CallResult Await(CallId id) {
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait(lock, [&] { return results_.count(id) > 0; });
    return results_.at(id);
  }
  size_t size() {
    std::lock_guard<std::mutex> lock(mu_);
    return results_.size();
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  std::map<CallId, CallResult> results_;
};

class PublicTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto runtime = Runtime::Create(
        {.workers = 2, .detached_sink = [this](CallId id, const CallResult& r) { sink_.Add(id, r); }});
    ASSERT_TRUE(runtime) << runtime.error().ToString();
    runtime_ = std::move(*runtime);
    auto module = runtime_->Compile(Fixture("public_api"), {.name = "public_api"});
    ASSERT_TRUE(module) << module.error().ToString();
    module_ = *module;
  }

  // The host functions of public_api.wat, with host.gate on gates_.
  virtual std::shared_ptr<Linker> MakeLinker() {
    auto linker = std::make_shared<Linker>();
    linker->Define("host", "scale", {{ValType::kI32, ValType::kI64}, {ValType::kI32}},
                   [](Caller&, std::span<const Value> args, std::span<Value> results) {
                     results[0] = Value::I32(args[0].i32() * static_cast<int32_t>(args[1].i64()));
                     return Result<void>{};
                   });
    linker->Define("host", "divmod", {{ValType::kI32, ValType::kI32}, {ValType::kI32, ValType::kI32}},
                   [](Caller&, std::span<const Value> args, std::span<Value> results) {
                     results[0] = Value::I32(args[0].i32() / args[1].i32());
                     results[1] = Value::I32(args[0].i32() % args[1].i32());
                     return Result<void>{};
                   });
    linker->Define("host", "gate", {{ValType::kI32}, {ValType::kI32}},
                   [this](Caller& caller, std::span<const Value> args, std::span<Value> results) {
                     results[0] = Value::I32(args[0].i32());
                     return gates_.Pass(caller, args[0].i32());
                   });
    return linker;
  }

  std::shared_ptr<Pool> MakePool(PoolOptions options = {.instances = 1}) {
    if (!options.linker) options.linker = MakeLinker();
    auto pool = runtime_->CreatePool(module_, std::move(options));
    EXPECT_TRUE(pool) << pool.error().ToString();
    return pool ? *pool : nullptr;
  }

  Call Submit(Pool& pool, std::string_view name, std::vector<Value> args, CallOptions options = {}) {
    if (options.timeout.count() == 0) options.timeout = 20s;
    auto call = pool.Submit(name, std::move(args), options);
    EXPECT_TRUE(call) << call.error().ToString();
    return call ? std::move(*call) : Call();
  }

  // Returns once everything already posted to the runtime's callback
  // thread (completion callbacks, detached-sink deliveries) has run: the
  // runtime has one callback thread, which runs in order.
  void FlushCallbacks(Pool& pool) {
    Call call = Submit(pool, "add", {Value::I32(0), Value::I32(0)});
    std::mutex mu;
    std::condition_variable cv;
    bool ran = false;
    call.OnComplete([&](const CallResult&) {
      std::lock_guard<std::mutex> lock(mu);
      ran = true;
      cv.notify_all();
    });
    std::unique_lock<std::mutex> lock(mu);
    cv.wait(lock, [&] { return ran; });
  }

  static int32_t I32(const CallResult& result) {
    return result && result->values.size() == 1 ? result->values[0].i32() : -1;
  }

  Gates gates_;
  Sink sink_;
  std::unique_ptr<Runtime> runtime_;
  std::shared_ptr<const Module> module_;
};

}  // namespace keel::publictest

#endif  // KEEL_TESTS_PUBLIC_PUBLIC_FIXTURE_H_

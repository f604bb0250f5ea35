// Shared by the executor's tests: a host for tests/fixtures/exec_guest.wat
// whose gates hold calls at known points, and a fixture with a runtime.
#ifndef KEEL_EXEC_EXEC_FIXTURE_H_
#define KEEL_EXEC_EXEC_FIXTURE_H_

#include <atomic>
#include <condition_variable>
#include <map>
#include <mutex>
#include <thread>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "base/file.h"
#include "base/test_engine.h"
#include "keel/runtime.h"

namespace keel::exectest {

using namespace std::chrono_literals;

// Waits (bounded, generous) until `pred` holds.
template <typename Pred>
bool Eventually(Pred pred, std::chrono::milliseconds limit = 20s) {
  auto until = Clock::now() + limit;
  while (!pred()) {
    if (Clock::now() > until) return false;
    std::this_thread::sleep_for(1ms);
  }
  return true;
}

// Host side of exec_guest.wat.
class TestHost {
 public:
  static constexpr int kMaxIds = 1 << 20;

  TestHost() : ran_(new std::atomic<uint8_t>[kMaxIds]) {
    for (int i = 0; i < kMaxIds; ++i) ran_[i] = 0;
    auto linker = std::make_shared<Linker>();
    linker->Define("keel_test", "gate", {{ValType::kI32}, {ValType::kI32}},
                   [this](Caller& caller, std::span<const Value> a, std::span<Value> r) {
                     return Gate(caller, a[0].i32(), r);
                   });
    linker->Define("keel_test", "ran", {{ValType::kI32}, {}},
                   [this](Caller&, std::span<const Value> a, std::span<Value>) -> Result<void> {
                     ran_[static_cast<uint32_t>(a[0].i32()) % kMaxIds]++;
                     return {};
                   });
    linker->Define("keel_test", "start_ok", {{}, {ValType::kI32}},
                   [this](Caller& caller, std::span<const Value>, std::span<Value> r) -> Result<void> {
                     if (int gate = start_gate_.load()) {
                       if (auto ok = Gate(caller, gate, r); !ok) return ok;
                     }
                     r[0] = Value::I32(start_ok_.load() ? 1 : 0);
                     return {};
                   });
    // Invariant checks through per-instance state (when the pool has one):
    // overlapping calls on one instance, and calls on a poisoned instance.
    linker->Define("keel_test", "enter", {{}, {}},
                   [this](Caller& caller, std::span<const Value>, std::span<Value>) -> Result<void> {
                     if (auto* t = static_cast<Tracker*>(caller.host_state())) {
                       if (t->in_flight.fetch_add(1) != 0) reentries_++;
                       if (t->poisoned) poisoned_reuse_++;
                     }
                     return {};
                   });
    linker->Define("keel_test", "leave", {{}, {}},
                   [](Caller& caller, std::span<const Value>, std::span<Value>) -> Result<void> {
                     if (auto* t = static_cast<Tracker*>(caller.host_state())) t->in_flight--;
                     return {};
                   });
    linker->Define("keel_test", "poison_me", {{}, {}},
                   [](Caller& caller, std::span<const Value>, std::span<Value>) -> Result<void> {
                     if (auto* t = static_cast<Tracker*>(caller.host_state())) t->poisoned = true;
                     return {};
                   });
    linker->Define("keel_test", "hold", {{ValType::kI32}, {ValType::kI32}},
                   [this](Caller& caller, std::span<const Value> a, std::span<Value> r) {
                     return Hold(caller, a[0].i32(), r);
                   });
    linker->Define("keel_test", "throw_hook", {{ValType::kI32}, {ValType::kI32}},
                   [this](Caller& caller, std::span<const Value> a, std::span<Value>) {
                     return ThrowingHook(caller, a[0].i32());
                   });
    linker_ = linker;
  }

  std::shared_ptr<const Linker> linker() const { return linker_; }
  void Open(int id) {
    std::lock_guard<std::mutex> lock(mu_);
    open_[id] = true;
    cv_.notify_all();
  }
  // Waits until gate `id` has been entered `n` times in all.
  bool WaitEntered(int id, int n = 1, std::chrono::milliseconds limit = 20s) {
    std::unique_lock<std::mutex> lock(mu_);
    return cv_.wait_for(lock, limit, [&] { return entered_[id] >= n; });
  }
  int Entered(int id) {
    std::lock_guard<std::mutex> lock(mu_);
    return entered_[id];
  }
  // The thread that last entered gate `id` (a worker's).
  std::thread::id GateThread(int id) {
    std::lock_guard<std::mutex> lock(mu_);
    return gate_thread_[id];
  }
  int Ran(int id) const { return ran_[id]; }
  void SetStartOk(bool ok) { start_ok_ = ok; }
  // Instantiation blocks on gate `id` (0: does not block).
  void SetStartGate(int id) { start_gate_ = id; }

  // Per-instance state for the invariant checks.
  struct Tracker : HostState {
    std::atomic<int> in_flight{0};
    std::atomic<bool> poisoned{false};
  };
  int reentries() const { return reentries_; }
  int poisoned_reuse() const { return poisoned_reuse_; }

 private:
  Result<void> Gate(Caller& caller, int id, std::span<Value> r) {
    caller.SetInterruptHook([this] {
      std::lock_guard<std::mutex> lock(mu_);
      cv_.notify_all();
    });
    std::unique_lock<std::mutex> lock(mu_);
    entered_[id]++;
    gate_thread_[id] = std::this_thread::get_id();
    cv_.notify_all();
    cv_.wait(lock, [&] { return open_[id] || caller.interrupted(); });
    if (!open_[id]) return MakeError(ErrorCode::kInterrupted, "gate interrupted");
    r[0] = Value::I32(id);
    return {};
  }

  // Holds `held_lock_` from entry to return, except while waiting for the
  // interrupt; its interrupt hook takes the same lock. After the hook has
  // started (and is waiting for the lock), it sets a new hook while still
  // holding the lock: an engine that ran hooks under its own lock would
  // deadlock here.
  Result<void> Hold(Caller& caller, int id, std::span<Value> r) {
    std::unique_lock<std::mutex> held(held_lock_);
    caller.SetInterruptHook([this] {
      {
        std::lock_guard<std::mutex> lock(mu_);
        hook_started_++;
        cv_.notify_all();
      }
      std::lock_guard<std::mutex> lock(held_lock_);
      held_cv_.notify_all();
    });
    {
      std::unique_lock<std::mutex> lock(mu_);
      entered_[id]++;
      cv_.notify_all();
      if (!cv_.wait_for(lock, 20s, [&] { return hook_started_ > 0; })) {
        return MakeError(ErrorCode::kInternal, "the interrupt hook never started");
      }
    }
    caller.SetInterruptHook([] {});
    held_cv_.wait_for(held, 20s, [&] { return caller.interrupted(); });
    r[0] = Value::I32(id);
    return MakeError(ErrorCode::kInterrupted, "hold interrupted");
  }

  // Blocks until interrupted; its interrupt hook wakes it, then throws.
  Result<void> ThrowingHook(Caller& caller, int id) {
    caller.SetInterruptHook([this] {
      {
        std::lock_guard<std::mutex> lock(mu_);
        cv_.notify_all();
      }
      throw std::runtime_error("a host's hook that throws");
    });
    std::unique_lock<std::mutex> lock(mu_);
    entered_[id]++;
    cv_.notify_all();
    cv_.wait_for(lock, 20s, [&] { return caller.interrupted(); });
    return MakeError(ErrorCode::kInterrupted, "interrupted");
  }

  std::mutex held_lock_;
  std::condition_variable held_cv_;
  int hook_started_ = 0;
  std::mutex mu_;
  std::condition_variable cv_;
  std::map<int, bool> open_;
  std::map<int, int> entered_;
  std::map<int, std::thread::id> gate_thread_;
  std::unique_ptr<std::atomic<uint8_t>[]> ran_;
  std::atomic<bool> start_ok_{true};
  std::atomic<int> start_gate_{0};
  std::atomic<int> reentries_{0};
  std::atomic<int> poisoned_reuse_{0};
  std::shared_ptr<const Linker> linker_;
};

class ExecTest : public ::testing::Test {
 protected:
  void SetUp() override { StartRuntime(2); }
  void TearDown() override {
    if (runtime_) runtime_->Shutdown(10s);
  }

  void StartRuntime(int workers, RuntimeOptions options = {}) {
    options.workers = workers;
    options.engine = TestEngine();
    options.detached_sink = [this](CallId id, const CallResult& result) {
      std::lock_guard<std::mutex> lock(sink_mu_);
      sink_.emplace_back(id, result);
    };
    auto runtime = Runtime::Create(options);
    ASSERT_TRUE(runtime) << runtime.error().ToString();
    runtime_ = std::move(*runtime);
    auto bytes = ReadFile(std::string(KEEL_FIXTURE_DIR) + "/exec_guest.wasm");
    ASSERT_TRUE(bytes);
    auto module = runtime_->Compile(*bytes, {.name = "exec_guest"});
    ASSERT_TRUE(module) << module.error().ToString();
    module_ = *module;
  }

  std::shared_ptr<Pool> MakePool(PoolOptions options = {}) {
    if (options.instances == 0) options.instances = 1;
    options.linker = host_.linker();
    auto pool = runtime_->CreatePool(module_, options);
    EXPECT_TRUE(pool) << pool.error().ToString();
    if (!pool) return nullptr;
    size_t want = options.instances;
    EXPECT_TRUE(Eventually([&] { return (*pool)->Stats().healthy_instances == want; }));
    return *pool;
  }

  Call Submit(Pool& pool, std::string_view name, std::vector<Value> args, CallOptions options = {}) {
    auto call = pool.Submit(name, std::move(args), options);
    EXPECT_TRUE(call) << call.error().ToString();
    return call ? std::move(*call) : Call();
  }

  Call SubmitBytes(Pool& pool, std::string_view name, std::string input, CallOptions options = {}) {
    auto call = pool.SubmitBytes(name, std::vector<uint8_t>(input.begin(), input.end()), options);
    EXPECT_TRUE(call) << call.error().ToString();
    return call ? std::move(*call) : Call();
  }

  size_t SinkSize() {
    std::lock_guard<std::mutex> lock(sink_mu_);
    return sink_.size();
  }

  // Every accepted call resolved exactly once and every started call ended.
  void ExpectSumRules() {
    MetricsSnapshot m = runtime_->Metrics();
    EXPECT_EQ(m.submitted, m.resolved.total()) << "resolutions must account for every call";
    EXPECT_EQ(m.runs.started,
              m.runs.run_ok + m.runs.run_trapped + m.runs.run_interrupted + m.runs.run_failed);
    EXPECT_EQ(m.queued, 0);
    EXPECT_EQ(m.running, 0);
  }

  TestHost host_;
  std::unique_ptr<Runtime> runtime_;
  std::shared_ptr<const Module> module_;
  std::mutex sink_mu_;
  std::vector<std::pair<CallId, CallResult>> sink_;
};

}  // namespace keel::exectest

#endif  // KEEL_EXEC_EXEC_FIXTURE_H_

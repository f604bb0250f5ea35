// keel-bench: the executor's costs, one JSON object per line:
//   {"metric": NAME, "value": NUMBER, "unit": UNIT}
// `--quick` runs each measurement briefly (under 30 s in all).
#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstring>
#include <deque>
#include <mutex>
#include <thread>
#include <vector>

#include "base/file.h"
#include "engine/engine.h"
#include "exec/core.h"
#include "keel/runtime.h"

namespace keel {
namespace {

using namespace std::chrono_literals;
using Seconds = std::chrono::duration<double>;

void Emit(const char* metric, double value, const char* unit) {
  std::printf("{\"metric\": \"%s\", \"value\": %.6g, \"unit\": \"%s\"}\n", metric, value, unit);
  std::fflush(stdout);
}

double Percentile(std::vector<double> v, double q) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  size_t i = static_cast<size_t>(q * static_cast<double>(v.size() - 1));
  return v[i];
}

// A gate the guest blocks on (exec_guest.wasm's keel_test.gate).
struct Gate {
  std::mutex mu;
  std::condition_variable cv;
  bool open = false;
  int entered = 0;
};

std::shared_ptr<const Linker> BenchLinker(Gate* gate) {
  auto linker = std::make_shared<Linker>();
  linker->Define("keel_test", "gate", {{ValType::kI32}, {ValType::kI32}},
                 [gate](Caller& caller, std::span<const Value> a, std::span<Value> r) -> Result<void> {
                   caller.SetInterruptHook([gate] {
                     std::lock_guard<std::mutex> lock(gate->mu);
                     gate->cv.notify_all();
                   });
                   std::unique_lock<std::mutex> lock(gate->mu);
                   gate->entered++;
                   gate->cv.notify_all();
                   gate->cv.wait(lock, [&] { return gate->open || caller.interrupted(); });
                   if (!gate->open) return MakeError(ErrorCode::kInterrupted, "gate interrupted");
                   r[0] = a[0];
                   return {};
                 });
  auto nothing = [](Caller&, std::span<const Value>, std::span<Value>) -> Result<void> { return {}; };
  linker->Define("keel_test", "ran", {{ValType::kI32}, {}}, nothing);
  for (const char* name : {"enter", "leave", "poison_me"}) linker->Define("keel_test", name, {{}, {}}, nothing);
  for (const char* name : {"hold", "throw_hook"}) {
    linker->Define("keel_test", name, {{ValType::kI32}, {ValType::kI32}},
                   [](Caller&, std::span<const Value> a, std::span<Value> r) -> Result<void> {
                     r[0] = a[0];
                     return {};
                   });
  }
  linker->Define("keel_test", "start_ok", {{}, {ValType::kI32}},
                 [](Caller&, std::span<const Value>, std::span<Value> r) -> Result<void> {
                   r[0] = Value::I32(1);
                   return {};
                 });
  return linker;
}

struct Bench {
  bool quick = false;
  std::unique_ptr<Runtime> runtime;
  std::shared_ptr<const Module> module;
  Gate gate;
  std::shared_ptr<const Linker> linker = BenchLinker(&gate);

  int Scale(int full) const { return quick ? std::max(1, full / 10) : full; }

  std::shared_ptr<Pool> NewPool(size_t instances, size_t max_queue = 1 << 16) {
    PoolOptions options;
    options.instances = instances;
    options.max_queue = max_queue;
    options.linker = linker;
    auto pool = runtime->CreatePool(module, options);
    if (!pool) {
      std::fprintf(stderr, "pool: %s\n", pool.error().ToString().c_str());
      std::exit(1);
    }
    WaitHealthy(**pool, instances);
    return *pool;
  }

  static void WaitHealthy(Pool& pool, size_t n) {
    while (pool.Stats().healthy_instances < n) std::this_thread::yield();
  }

  void DirectCall() {
    auto engine_module = internal::ModuleAccess::Engine(*module);
    auto ctx = engine::DefaultEngine().NewContext();
    uint64_t tag = 0;
    auto instance = (*ctx)->Instantiate(engine_module, linker, nullptr, ++tag);
    auto func = (*instance)->Lookup("add");
    Value args[2] = {Value::I32(1), Value::I32(2)};
    Value out[1];
    int n = Scale(2000000);
    auto start = Clock::now();
    for (int i = 0; i < n; ++i) (void)(*instance)->Call(*func, args, out, ++tag);
    double ns = std::chrono::duration<double, std::nano>(Clock::now() - start).count() / n;
    Emit("direct_call_ns", ns, "ns");
  }

  // The machine's floor for a round trip with two wake-ups: a request and
  // a reply between two threads over a mutex and condition variables, as a
  // call's submit and completion are.
  double PingPong() {
    std::mutex mu;
    std::condition_variable to_server, to_client;
    bool request = false, reply = false, stop = false;
    std::thread server([&] {
      std::unique_lock<std::mutex> lock(mu);
      for (;;) {
        to_server.wait(lock, [&] { return request || stop; });
        if (stop) return;
        request = false;
        reply = true;
        to_client.notify_one();
      }
    });
    std::vector<double> us;
    int n = Scale(50000);
    for (int i = 0; i < n; ++i) {
      auto start = Clock::now();
      std::unique_lock<std::mutex> lock(mu);
      request = true;
      to_server.notify_one();
      to_client.wait(lock, [&] { return reply; });
      reply = false;
      lock.unlock();
      us.push_back(std::chrono::duration<double, std::micro>(Clock::now() - start).count());
    }
    {
      std::lock_guard<std::mutex> lock(mu);
      stop = true;
    }
    to_server.notify_one();
    server.join();
    double p50 = Percentile(us, 0.5);
    Emit("pingpong_p50_us", p50, "us");
    return p50;
  }

  void RoundTrip(double floor_us) {
    auto pool = NewPool(2);
    std::vector<double> us;
    int n = Scale(50000);
    for (int i = 0; i < n; ++i) {
      auto start = Clock::now();
      auto call = pool->Submit("add", {Value::I32(i), Value::I32(1)});
      (void)call->Wait();
      us.push_back(std::chrono::duration<double, std::micro>(Clock::now() - start).count());
    }
    Emit("pool_roundtrip_p50_us", Percentile(us, 0.5), "us");
    Emit("pool_roundtrip_vs_pingpong", Percentile(us, 0.5) / floor_us, "ratio");
    Emit("pool_roundtrip_p99_us", Percentile(us, 0.99), "us");
    pool->Close();
  }

  void Throughput() {
    auto pool = NewPool(2);
    int n = Scale(1000000);
    constexpr size_t kWindow = 4096;
    std::deque<Call> window;
    auto start = Clock::now();
    for (int i = 0; i < n; ++i) {
      if (window.size() >= kWindow) {
        (void)window.front().Wait();
        window.pop_front();
      }
      auto call = pool->Submit("add", {Value::I32(i), Value::I32(1)});
      if (call) window.push_back(std::move(*call));
    }
    for (auto& c : window) (void)c.Wait();
    double secs = Seconds(Clock::now() - start).count();
    Emit("pool_throughput_calls_per_s", n / secs, "calls/s");
    pool->Close();
  }

  void DeadlineStop() {
    auto pool = NewPool(1);
    std::vector<double> ms;
    int n = Scale(200);
    for (int i = 0; i < n; ++i) {
      auto deadline = Clock::now() + 5ms;
      auto call = pool->Submit("spin", {}, {.deadline = deadline});
      (void)call->Wait();
      ms.push_back(std::chrono::duration<double, std::milli>(Clock::now() - deadline).count());
      WaitHealthy(*pool, 1);
    }
    Emit("deadline_stop_p50_ms", Percentile(ms, 0.5), "ms");
    Emit("deadline_stop_p99_ms", Percentile(ms, 0.99), "ms");
    pool->Close();
  }

  void Replacement() {
    auto pool = NewPool(1);
    std::vector<double> ms;
    int n = Scale(500);
    for (int i = 0; i < n; ++i) {
      uint64_t replaced = runtime->Metrics().instances.replaced;
      // Timed from submitting the trapping call, so an upper bound on
      // poison-to-full-size that does not depend on this thread's wake-up.
      auto start = Clock::now();
      auto call = pool->Submit("trap", {});
      while (runtime->Metrics().instances.replaced == replaced) std::this_thread::yield();
      ms.push_back(std::chrono::duration<double, std::milli>(Clock::now() - start).count());
    }
    Emit("replacement_p50_ms", Percentile(ms, 0.5), "ms");
    pool->Close();
  }

  void CancelWithdraw() {
    auto pool = NewPool(1);
    {
      std::lock_guard<std::mutex> lock(gate.mu);
      gate.open = false;
    }
    auto blocker = pool->Submit("gated", {Value::I32(1)});
    {
      std::unique_lock<std::mutex> lock(gate.mu);
      gate.cv.wait(lock, [&] { return gate.entered > 0; });
    }
    std::vector<double> us;
    int n = Scale(20000);
    for (int i = 0; i < n; ++i) {
      auto call = pool->Submit("add", {Value::I32(1), Value::I32(1)});
      auto start = Clock::now();
      (void)call->Cancel();
      us.push_back(std::chrono::duration<double, std::micro>(Clock::now() - start).count());
    }
    Emit("cancel_withdraw_p50_us", Percentile(us, 0.5), "us");
    {
      std::lock_guard<std::mutex> lock(gate.mu);
      gate.open = true;
      gate.cv.notify_all();
    }
    (void)blocker->Wait();
    pool->Close();
  }
};

int Main(int argc, char** argv) {
  Bench bench;
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--quick") == 0) bench.quick = true;
  }
  auto runtime = Runtime::Create({.workers = 2});
  if (!runtime) {
    std::fprintf(stderr, "runtime: %s\n", runtime.error().ToString().c_str());
    return 1;
  }
  bench.runtime = std::move(*runtime);
  auto bytes = ReadFile(std::string(KEEL_FIXTURE_DIR) + "/exec_guest.wasm");
  if (!bytes) return 1;
  bench.module = *bench.runtime->Compile(*bytes, {.name = "bench"});
  bench.DirectCall();
  // Alternated, so that both see the same machine.
  double floor_us = bench.PingPong();
  bench.RoundTrip(floor_us);
  bench.PingPong();
  bench.Throughput();
  bench.DeadlineStop();
  bench.Replacement();
  bench.CancelWithdraw();
  bench.runtime->Shutdown(5s);
  return 0;
}

}  // namespace
}  // namespace keel

int main(int argc, char** argv) { return keel::Main(argc, argv); }

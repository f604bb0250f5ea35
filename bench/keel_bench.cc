// keel-bench: the executor's costs, one JSON object per line:
//   {"metric": NAME, "value": NUMBER, "unit": UNIT}
// The first line names the engine: {"engine": NAME}.
// `--quick` runs each measurement briefly (under 30 s in all);
// `--engine spidermonkey|wasmtime` picks the engine (default spidermonkey);
// `--only GROUP,...` runs some of the measurements (see RunAll).
#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstring>
#include <deque>
#include <functional>
#include <mutex>
#include <string>
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

// Calls per second of `n` calls made by submit(i), with at most 4096
// outstanding. A full window is drained to half before more are submitted:
// awaiting the oldest call each time would put the submitting thread to
// sleep and wake it once per call whenever the workers are the slower side,
// and that wake-up, not the calls, would then set the figure.
double WindowedCallsPerSecond(int n, const std::function<Result<Call>(int)>& submit) {
  constexpr size_t kWindow = 4096;
  std::deque<Call> window;
  auto start = Clock::now();
  for (int i = 0; i < n; ++i) {
    if (window.size() >= kWindow) {
      (void)window[kWindow / 2].Wait();
      for (size_t k = 0; k <= kWindow / 2; ++k) {
        (void)window.front().Wait();
        window.pop_front();
      }
    }
    auto call = submit(i);
    if (call) window.push_back(std::move(*call));
  }
  for (auto& c : window) (void)c.Wait();
  return n / Seconds(Clock::now() - start).count();
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
  EngineKind engine_kind = EngineKind::kSpiderMonkey;
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

  // The runtime's engine, for the measurements below the executor.
  engine::Engine& Engine() const {
    auto engine = engine::GetEngine(*engine::ParseEngineKind(ToString(engine_kind)));
    if (!engine) Die("engine", engine.error());
    return **engine;
  }

  std::unique_ptr<engine::Context> NewContext() const {
    auto ctx = Engine().NewContext();
    if (!ctx) Die("context", ctx.error());
    return std::move(*ctx);
  }

  [[noreturn]] static void Die(const char* what, const Error& error) {
    std::fprintf(stderr, "%s: %s\n", what, error.ToString().c_str());
    std::exit(1);
  }

  void DirectCall() {
    auto engine_module = internal::ModuleAccess::Engine(*module);
    auto ctx = NewContext();
    uint64_t tag = 0;
    auto instance = ctx->Instantiate(engine_module, linker, nullptr, ++tag);
    auto func = (*instance)->Lookup("add");
    Value args[2] = {Value::I32(1), Value::I32(2)};
    Value out[1];
    int n = Scale(2000000);
    auto start = Clock::now();
    for (int i = 0; i < n; ++i) (void)(*instance)->Call(*func, args, out, ++tag);
    double ns = std::chrono::duration<double, std::nano>(Clock::now() - start).count() / n;
    Emit("direct_call_ns", ns, "ns");
  }

  // A fresh instance of the executor's module and dropping it again (with
  // the engine's collection of dropped instances, which SpiderMonkey needs
  // and Wasmtime does not): what a fresh instance per call costs.
  void Instantiate() {
    auto engine_module = internal::ModuleAccess::Engine(*module);
    auto ctx = NewContext();
    uint64_t tag = 0;
    std::vector<double> us;
    int n = Scale(5000);
    for (int i = 0; i < n; ++i) {
      auto start = Clock::now();
      auto instance = ctx->Instantiate(engine_module, linker, nullptr, ++tag);
      if (!instance) Die("instantiate", instance.error());
      instance->reset();
      ctx->MaybeCollectGarbage();
      us.push_back(std::chrono::duration<double, std::micro>(Clock::now() - start).count());
    }
    Emit("instantiate_p50_us", Percentile(us, 0.5), "us");
  }

  // Instance::Reset of reset_guest.wasm (2 MiB memory) after a call that
  // wrote `bytes` from 64 KiB on; p50 in microseconds.
  double ResetAfter(engine::Instance& instance, int bytes, uint64_t& tag) {
    auto fill = instance.Lookup("fill");
    if (!fill) Die("fill", fill.error());
    std::vector<double> us;
    int n = Scale(2000);
    for (int i = 0; i < n; ++i) {
      Value args[3] = {Value::I32(65536), Value::I32(bytes), Value::I32(1 + i % 255)};
      if (auto ok = instance.Call(*fill, args, {}, ++tag); !ok) Die("fill", ok.error());
      auto start = Clock::now();
      if (auto ok = instance.Reset(); !ok) Die("reset", ok.error());
      us.push_back(std::chrono::duration<double, std::micro>(Clock::now() - start).count());
    }
    return Percentile(us, 0.5);
  }

  void ResetCost() {
    engine::ResetSupport support = Engine().reset_support();
    if (!support.snapshots) {
      std::fprintf(stderr, "reset_p50_us: %s has no snapshots (%s)\n",
                   std::string(Engine().name()).c_str(), support.detail.c_str());
      return;
    }
    auto bytes = ReadFile(std::string(KEEL_FIXTURE_DIR) + "/reset_guest.wasm");
    if (!bytes) Die("reset_guest.wasm", bytes.error());
    auto compiled = Engine().Compile(*bytes);
    if (!compiled) Die("compile", compiled.error());
    auto ctx = NewContext();
    uint64_t tag = 0;
    auto instance = ctx->Instantiate(*compiled, nullptr, nullptr, ++tag);
    if (!instance) Die("instantiate", instance.error());
    if (auto ok = (*instance)->Snapshot({}); !ok) Die("snapshot", ok.error());
    Emit("reset_p50_us", ResetAfter(**instance, 4096, tag), "us");
    Emit("reset_256k_p50_us", ResetAfter(**instance, 256 << 10, tag), "us");
    Emit("reset_1m_p50_us", ResetAfter(**instance, 1 << 20, tag), "us");
  }

  // A trivial byte call (bench_echo.wasm: 2 MiB memory, one page written
  // per call) under a state policy, 2 instances on the 2 workers, many
  // calls outstanding.
  double PolicyThroughput(StatePolicy state, int n) {
    auto bytes = ReadFile(std::string(KEEL_FIXTURE_DIR) + "/bench_echo.wasm");
    if (!bytes) Die("bench_echo.wasm", bytes.error());
    auto echo = runtime->Compile(*bytes, {.name = "bench_echo"});
    if (!echo) Die("compile", echo.error());
    PoolOptions options;
    options.instances = 2;
    options.max_queue = 1 << 16;
    options.recycle.state = state;
    auto pool = runtime->CreatePool(*echo, options);
    if (!pool) Die("pool", pool.error());
    WaitHealthy(**pool, 2);
    const std::vector<uint8_t> input(16, 'k');
    auto first = (*pool)->SubmitBytes("echo", input);
    if (!first) Die("echo", first.error());
    if (const CallResult& out = first->Wait(); !out || out->bytes != input) {
      std::fprintf(stderr, "echo under %s: wrong answer\n", std::string(ToString(state)).c_str());
      std::exit(1);
    }
    ResetCounts before = runtime->Metrics().resets;
    double per_s =
        WindowedCallsPerSecond(n, [&](int) { return (*pool)->SubmitBytes("echo", input); });
    (*pool)->Close();
    // How the instances were reset, so that a fallback is not mistaken for
    // the cost of a reset.
    ResetCounts after = runtime->Metrics().resets;
    std::fprintf(stderr,
                 "%s: %d calls; resets: %llu by pages (%llu of them scanned), %llu full, "
                 "%llu fresh fallbacks\n",
                 std::string(ToString(state)).c_str(), n,
                 static_cast<unsigned long long>(after.pages - before.pages),
                 static_cast<unsigned long long>(after.scans - before.scans),
                 static_cast<unsigned long long>(after.full - before.full),
                 static_cast<unsigned long long>(after.fresh_fallback - before.fresh_fallback));
    return per_s;
  }

  // Reuse and reset alternate over several rounds and each figure is the
  // median of its rounds, the ratio the median of the rounds' ratios: one
  // run lasts a quarter of a second, and on a shared machine a neighbour's
  // burst in one of them decided a single-shot ratio (0.56 to 1.27 for the
  // same build).
  void Policies() {
    constexpr int kRounds = 5;
    std::vector<double> reuse, reset, ratio;
    for (int round = 0; round < (quick ? 1 : kRounds); ++round) {
      reuse.push_back(PolicyThroughput(StatePolicy::kKeep, Scale(200000)));
      reset.push_back(PolicyThroughput(StatePolicy::kReset, Scale(200000)));
      ratio.push_back(reset.back() / reuse.back());
    }
    double fresh = PolicyThroughput(StatePolicy::kFresh, Scale(20000));
    double reuse_median = Percentile(reuse, 0.5);
    Emit("reuse_throughput_calls_per_s", reuse_median, "calls/s");
    Emit("reset_throughput_calls_per_s", Percentile(reset, 0.5), "calls/s");
    Emit("fresh_throughput_calls_per_s", fresh, "calls/s");
    Emit("reset_vs_reuse_throughput", Percentile(ratio, 0.5), "ratio");
    Emit("reset_vs_reuse_throughput_min", Percentile(ratio, 0), "ratio");
    Emit("fresh_vs_reuse_throughput", fresh / reuse_median, "ratio");
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
    double per_s = WindowedCallsPerSecond(
        n, [&](int i) { return pool->Submit("add", {Value::I32(i), Value::I32(1)}); });
    Emit("pool_throughput_calls_per_s", per_s, "calls/s");
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

// Runs the measurements `only` names (all when it is empty), in order.
void RunAll(Bench& bench, const std::string& only) {
  auto selected = [&](std::string_view group) {
    return only.empty() || ("," + only + ",").find("," + std::string(group) + ",") != std::string::npos;
  };
  if (selected("direct")) bench.DirectCall();
  if (selected("instantiate")) bench.Instantiate();
  if (selected("roundtrip")) {
    // Alternated, so that both see the same machine.
    double floor_us = bench.PingPong();
    bench.RoundTrip(floor_us);
    bench.PingPong();
  }
  if (selected("throughput")) bench.Throughput();
  if (selected("deadline")) bench.DeadlineStop();
  if (selected("replacement")) bench.Replacement();
  if (selected("cancel")) bench.CancelWithdraw();
  if (selected("reset")) bench.ResetCost();
  if (selected("policies")) bench.Policies();
}

int Main(int argc, char** argv) {
  Bench bench;
  std::string only;
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--quick") == 0) {
      bench.quick = true;
    } else if (std::strcmp(argv[i], "--engine") == 0 && i + 1 < argc) {
      auto kind = ParseEngineKind(argv[++i]);
      if (!kind) Bench::Die("--engine", kind.error());
      bench.engine_kind = *kind;
    } else if (std::strcmp(argv[i], "--only") == 0 && i + 1 < argc) {
      only = argv[++i];
    } else {
      std::fprintf(stderr,
                   "usage: keel-bench [--quick] [--engine spidermonkey|wasmtime] [--only GROUP,...]\n"
                   "groups: direct instantiate roundtrip throughput deadline replacement cancel reset "
                   "policies\n");
      return 2;
    }
  }
  auto runtime = Runtime::Create({.engine = bench.engine_kind, .workers = 2});
  if (!runtime) {
    std::fprintf(stderr, "runtime: %s\n", runtime.error().ToString().c_str());
    return 1;
  }
  bench.runtime = std::move(*runtime);
  auto bytes = ReadFile(std::string(KEEL_FIXTURE_DIR) + "/exec_guest.wasm");
  if (!bytes) return 1;
  bench.module = *bench.runtime->Compile(*bytes, {.name = "bench"});
  std::printf("{\"engine\": \"%s\"}\n", std::string(bench.Engine().name()).c_str());
  RunAll(bench, only);
  bench.runtime->Shutdown(5s);
  return 0;
}

}  // namespace
}  // namespace keel

int main(int argc, char** argv) { return keel::Main(argc, argv); }

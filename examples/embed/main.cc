// keel embedded in a program: host functions a guest imports, deadlines,
// cancellation, the detached-result sink and metrics. docs/EMBEDDING.md
// walks through it.
//
//   embed GUEST.wasm      (guest.c, built next to this program)
//
// Prints what each step saw; exits 1 if anything differs from what keel
// promises.
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iterator>
#include <map>
#include <mutex>
#include <string>
#include <vector>

#include <keel/runtime.h>
#include <keel/version.h>

namespace {

using namespace std::chrono_literals;
using keel::Value;
using keel::ValType;

void Check(bool ok, const std::string& what) {
  std::printf("%s %s\n", ok ? "ok  " : "FAIL", what.c_str());
  if (!ok) std::exit(1);
}

std::vector<uint8_t> ReadBytes(const char* path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

// Guest calls of host.wait(token) block here until the program releases
// their token. A blocking host function must also wake up when keel
// interrupts the call (deadline, shutdown), and then fail with
// kInterrupted: that is what SetInterruptHook is for.
class Tokens {
 public:
  keel::Result<void> Wait(keel::Caller& caller, int32_t token) {
    caller.SetInterruptHook([this] { cv_.notify_all(); });
    std::unique_lock<std::mutex> lock(mu_);
    waiting_[token] = true;
    cv_.notify_all();
    cv_.wait(lock, [&] { return released_[token] || caller.interrupted(); });
    if (!released_[token]) return keel::MakeError(keel::ErrorCode::kInterrupted, "interrupted");
    return {};
  }
  void AwaitWaiting(int32_t token) {
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait(lock, [&] { return waiting_[token]; });
  }
  void Release(int32_t token) {
    std::lock_guard<std::mutex> lock(mu_);
    released_[token] = true;
    cv_.notify_all();
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  std::map<int32_t, bool> waiting_;
  std::map<int32_t, bool> released_;
};

// Results of calls whose callers left while they ran.
class DetachedResults {
 public:
  void Add(keel::CallId id, const keel::CallResult& result) {
    std::lock_guard<std::mutex> lock(mu_);
    results_.emplace(id, result);
    cv_.notify_all();
  }
  keel::CallResult Await(keel::CallId id) {
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait(lock, [&] { return results_.count(id) > 0; });
    return results_.at(id);
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  std::map<keel::CallId, keel::CallResult> results_;
};

std::shared_ptr<keel::Linker> HostFunctions(Tokens& tokens) {
  auto linker = std::make_shared<keel::Linker>();
  linker->Define("host", "scale", {{ValType::kI32, ValType::kI64}, {ValType::kI32}},
                 [](keel::Caller&, std::span<const Value> args, std::span<Value> results) {
                   results[0] = Value::I32(args[0].i32() * static_cast<int32_t>(args[1].i64()));
                   return keel::Result<void>{};
                 });
  linker->Define("host", "wait", {{ValType::kI32}, {ValType::kI32}},
                 [&tokens](keel::Caller& caller, std::span<const Value> args, std::span<Value> results) {
                   results[0] = Value::I32(0);
                   return tokens.Wait(caller, args[0].i32());
                 });
  return linker;
}

int32_t I32Result(const keel::CallResult& result) {
  return result && result->values.size() == 1 ? result->values[0].i32() : -1;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: embed GUEST.wasm\n");
    return 2;
  }
  std::printf("keel %s (headers %s)\n", std::string(keel::VersionString()).c_str(), KEEL_VERSION_STRING);
  Tokens tokens;
  DetachedResults detached;
  auto runtime = keel::Runtime::Create(
      {.workers = 2, .detached_sink = [&](keel::CallId id, const keel::CallResult& r) { detached.Add(id, r); }});
  Check(runtime.has_value(), "runtime with 2 workers");

  auto linker = HostFunctions(tokens);
  auto module = (*runtime)->Compile(ReadBytes(argv[1]), {.name = "guest", .linker = linker});
  Check(module.has_value(), "compiled " + std::string(argv[1]) + (module ? "" : ": " + module.error().ToString()));
  auto pool = (*runtime)->CreatePool(*module, {.instances = 1, .linker = linker});
  Check(pool.has_value(), "pool of one instance");

  // A call that calls the host: sum of i * 3 for i < 10.
  auto sum = (*pool)->Submit("scaled_sum", {Value::I32(10)}, {.timeout = 5s});
  Check(sum && I32Result(sum->Wait()) == 135, "scaled_sum(10) = 135 through host.scale");

  // A deadline covers queue time and the run; a guest that does not stop
  // is interrupted and its instance replaced.
  auto spin = (*pool)->Submit("spin", {}, {.timeout = 50ms});
  Check(spin && !spin->Wait() && spin->Wait().error().code == keel::ErrorCode::kDeadlineExceeded,
        "spin() under a 50 ms deadline: deadline_exceeded");

  // One instance: a running call holds it, so the next one queues.
  auto running = (*pool)->Submit("held", {Value::I32(1)}, {.timeout = 10s});
  tokens.AwaitWaiting(1);
  auto queued = (*pool)->Submit("held", {Value::I32(2)}, {.timeout = 10s});
  Check(queued && queued->Cancel() == keel::CancelOutcome::kWithdrawn,
        "cancel of a queued call: withdrawn, it never runs");
  Check(running && running->Cancel() == keel::CancelOutcome::kDetached,
        "cancel of a running call: detached, it runs to its end");
  keel::CallId id = running->id();
  tokens.Release(1);
  Check(I32Result(detached.Await(id)) == 1, "the detached call's result reached the sink");

  keel::MetricsSnapshot m = (*runtime)->Metrics();
  std::printf("metrics: submitted %llu, ok %llu, deadline_running %llu, withdrawn %llu, detached %llu, "
              "instances created %llu, poisoned %llu\n",
              (unsigned long long)m.submitted, (unsigned long long)m.resolved.ok,
              (unsigned long long)m.resolved.deadline_running, (unsigned long long)m.resolved.cancelled_queued,
              (unsigned long long)m.resolved.detached, (unsigned long long)m.instances.created,
              (unsigned long long)m.instances.poisoned);
  Check(m.resolved.ok == 1 && m.resolved.deadline_running == 1 && m.resolved.cancelled_queued == 1 &&
            m.resolved.detached == 1 && m.detached_results == 1 && m.instances.poisoned == 1,
        "metrics count each way a call ended");
  std::printf("embed: all steps passed\n");
  return 0;
}

// keel embedded in a program: typed host functions with a per-call
// context, a WASI guest reading a preopened directory with its stdout
// captured, deadlines, cancellation, fire-and-forget calls, the
// detached-result sink and metrics. docs/EMBEDDING.md walks through it.
//
//   embed GUEST.wasm      (guest.c, built next to this program)
//
// Prints what each step saw; exits 1 if anything differs from what keel
// promises.
#include <unistd.h>

#include <atomic>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>
#include <mutex>
#include <string>
#include <vector>

#include <keel/runtime.h>
#include <keel/version.h>
#include <keel/wasi.h>

namespace {

using namespace std::chrono_literals;
using keel::Value;

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
    caller.SetInterruptHook([this] {
      std::lock_guard<std::mutex> lock(mu_);
      cv_.notify_all();
    });
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

// Results the runtime hands to its detached sink: of calls whose callers
// left while they ran, and of fire-and-forget calls.
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

// Per-call data for host functions: given with CallOptions::context,
// reached with caller.context<ScaleStats>().
struct ScaleStats {
  std::atomic<int> calls{0};
};

// The guest's imports. Their wasm types are derived from the lambdas:
// host.scale is (i32, i64) -> i32, host.wait is (i32) -> i32.
std::shared_ptr<keel::Linker> HostFunctions(Tokens& tokens) {
  auto linker = std::make_shared<keel::Linker>();
  linker->Define("host", "scale", [](keel::Caller& caller, int32_t x, int64_t factor) -> int32_t {
    if (ScaleStats* stats = caller.context<ScaleStats>()) stats->calls++;
    return x * static_cast<int32_t>(factor);
  });
  linker->Define("host", "wait", [&tokens](keel::Caller& caller, int32_t token) -> keel::Result<int32_t> {
    if (auto released = tokens.Wait(caller, token); !released) return keel::MakeError(released.error());
    return 0;
  });
  return linker;
}

int32_t I32Result(const keel::CallResult& result) {
  return result && result->values.size() == 1 ? result->values[0].i32() : -1;
}

// The directory the guest sees as /data, read-only.
std::filesystem::path MakeData() {
  auto dir = std::filesystem::temp_directory_path() / ("keel-embed-" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  std::ofstream(dir / "notes.txt") << "keel runs wasm\nsafely under cancellation\n";
  return dir;
}

void CallsAndWasi(keel::Pool& pool) {
  auto stats = std::make_shared<ScaleStats>();
  auto sum = pool.Submit("scaled_sum", {Value::I32(10)}, {.timeout = 5s, .context = stats});
  Check(sum && I32Result(sum->Wait()) == 135, "scaled_sum(10) = 135 through the typed host.scale");
  Check(stats->calls == 10, "host.scale reached its call's context 10 times");

  auto report = pool.Submit("report", {}, {.timeout = 5s});
  Check(report && report->Wait().has_value(), "report() read /data/notes.txt through WASI");
  Check(report->Wait()->stdio.out == "notes.txt: 2 lines, 6 words\n",
        "its captured stdout: " + report->Wait()->stdio.out.substr(0, report->Wait()->stdio.out.size() - 1));
}

void DeadlinesAndCancellation(keel::Pool& pool, Tokens& tokens, DetachedResults& detached) {
  // A deadline covers queue time and the run; a guest that does not stop
  // is interrupted and its instance replaced.
  auto spin = pool.Submit("spin", {}, {.timeout = 50ms});
  Check(spin && !spin->Wait() && spin->Wait().error().code == keel::ErrorCode::kDeadlineExceeded,
        "spin() under a 50 ms deadline: deadline_exceeded");

  // One instance: a running call holds it, so the next one queues.
  auto running = pool.Submit("held", {Value::I32(1)}, {.timeout = 10s});
  tokens.AwaitWaiting(1);
  auto queued = pool.Submit("held", {Value::I32(2)}, {.timeout = 10s});
  Check(queued && queued->Cancel() == keel::CancelOutcome::kWithdrawn,
        "cancel of a queued call: withdrawn, it never runs");
  Check(running && running->Cancel() == keel::CancelOutcome::kDetached,
        "cancel of a running call: detached, it runs to its end");
  keel::CallId cancelled = running->id();
  tokens.Release(1);
  Check(I32Result(detached.Await(cancelled)) == 1, "the cancelled call's result reached the sink");

  // Fire-and-forget: no handle waits, the call is not cancelled for it.
  auto fire = pool.Submit("held", {Value::I32(3)}, {.timeout = 10s});
  Check(fire.has_value(), "held(3) submitted");
  keel::CallId forgotten = fire->id();
  fire->Detach();
  tokens.Release(3);
  Check(I32Result(detached.Await(forgotten)) == 3, "a detached call ran and its result reached the sink");
}

void Metrics(const keel::Runtime& runtime) {
  keel::MetricsSnapshot m = runtime.Metrics();
  std::printf("metrics: submitted %llu, ok %llu, deadline_running %llu, withdrawn %llu, detached %llu, "
              "to the sink %llu, instances created %llu, poisoned %llu\n",
              (unsigned long long)m.submitted, (unsigned long long)m.resolved.ok,
              (unsigned long long)m.resolved.deadline_running, (unsigned long long)m.resolved.cancelled_queued,
              (unsigned long long)m.resolved.detached, (unsigned long long)m.detached_results,
              (unsigned long long)m.instances.created, (unsigned long long)m.instances.poisoned);
  Check(m.submitted == 6 && m.resolved.ok == 3 && m.resolved.deadline_running == 1 &&
            m.resolved.cancelled_queued == 1 && m.resolved.detached == 1 && m.detached_results == 2 &&
            m.instances.poisoned == 1,
        "metrics count each way a call ended");
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
  std::filesystem::path data = MakeData();
  {
    auto runtime = keel::Runtime::Create(
        {.workers = 2, .detached_sink = [&](keel::CallId id, const keel::CallResult& r) { detached.Add(id, r); }});
    Check(runtime.has_value(), "runtime with 2 workers");
    auto module = (*runtime)->Compile(ReadBytes(argv[1]), {.name = "guest"});
    Check(module.has_value(), "compiled " + std::string(argv[1]) + (module ? "" : ": " + module.error().ToString()));

    keel::WasiOptions wasi;
    wasi.preopens = {{.host_path = data.string(), .guest_path = "/data", .read_only = true}};
    wasi.stdout_io = keel::WasiStdio::Capture(64 << 10);
    auto options = keel::WithWasi({.instances = 1, .linker = HostFunctions(tokens)}, std::move(wasi));
    Check(options.has_value(), "WASI options with /data and a captured stdout");
    auto pool = (*runtime)->CreatePool(*module, std::move(*options));
    Check(pool.has_value(), "pool of one instance" + (pool ? "" : ": " + pool.error().ToString()));

    CallsAndWasi(**pool);
    DeadlinesAndCancellation(**pool, tokens, detached);
    Metrics(**runtime);
  }
  std::filesystem::remove_all(data);
  std::printf("embed: all steps passed\n");
  return 0;
}

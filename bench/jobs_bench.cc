// keel-jobs-bench: durable jobs end to end on one store, as JSON lines.
//   keel-jobs-bench --store DIR_OR_URL [--jobs N] [--submitters K] [--guest PATH]
//                   [--commit-lanes N] [--label NAME]
// Measures submit latency (one submitter, each submit durable before it
// returns) and jobs/s end to end (K submitters, one runner, a trivial byte
// export: submit, claim, run, record).
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "abi/sandbox.h"
#include "base/file.h"
#include "jobs/module_pools.h"
#include "jobs/runner.h"
#include "jobs/store.h"

namespace keel {
namespace {

using namespace std::chrono_literals;

void Emit(const std::string& metric, double value, const char* unit) {
  std::printf("{\"metric\": \"%s\", \"value\": %.6g, \"unit\": \"%s\"}\n", metric.c_str(), value, unit);
  std::fflush(stdout);
}

double Percentile(std::vector<double> v, double q) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v[static_cast<size_t>(q * static_cast<double>(v.size() - 1))];
}

int Main(int argc, char** argv) {
  std::string store_name, guest = std::string(KEEL_GUEST_DIR) + "/add.wasm", label = "store";
  int jobs = 20000, submitters = 64;
  jobs::StoreOptions options;
  for (int i = 1; i + 1 < argc; i += 2) {
    std::string flag = argv[i];
    if (flag == "--store") store_name = argv[i + 1];
    if (flag == "--jobs") jobs = std::atoi(argv[i + 1]);
    if (flag == "--submitters") submitters = std::atoi(argv[i + 1]);
    if (flag == "--guest") guest = argv[i + 1];
    if (flag == "--label") label = argv[i + 1];
    if (flag == "--commit-lanes") options.commit_lanes = std::strtoul(argv[i + 1], nullptr, 10);
  }
  if (store_name.empty()) {
    std::fprintf(stderr, "usage: keel-jobs-bench --store DIR_OR_URL [--jobs N] [--submitters K]\n");
    return 64;
  }
  auto store = jobs::OpenStore(store_name, options);
  if (!store) {
    std::fprintf(stderr, "store: %s\n", store.error().ToString().c_str());
    return 1;
  }
  auto bytes = ReadFile(guest);
  if (!bytes) return 1;
  std::string digest = *(*store)->PutModule(*bytes);
  jobs::JobSpec spec;
  spec.module_digest = digest;
  spec.export_name = "echo";
  spec.input = {'h', 'i'};
  spec.max_attempts = 1;

  // Submit latency: one submitter, nothing else running.
  std::vector<double> us;
  for (int i = 0; i < std::min(jobs / 10, 2000); ++i) {
    auto start = std::chrono::steady_clock::now();
    if (!(*store)->Submit(spec)) return 1;
    us.push_back(std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - start).count());
  }
  Emit(label + "_submit_p50_us", Percentile(us, 0.5), "us");
  Emit(label + "_submit_p99_us", Percentile(us, 0.99), "us");
  int total = static_cast<int>(us.size()) + jobs;

  auto runtime = Runtime::Create({.workers = 2});
  jobs::ModulePools pools(runtime->get(), store->get(),
                          abi::SandboxedPoolOptions({.instances = 2, .max_queue = 4096}));
  auto start = std::chrono::steady_clock::now();
  auto runner = jobs::Runner::Start(
      store->get(), [&](const std::string& d) { return pools.ForDigest(d); },
      {.max_in_flight = 1024, .claim_batch = 256, .idle_wait = 50ms});
  std::atomic<int> next{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < submitters; ++t) {
    threads.emplace_back([&] {
      while (next.fetch_add(1) < jobs) (void)(*store)->Submit(spec);
    });
  }
  for (auto& t : threads) t.join();
  double submit_secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  while ((*runner)->Stats().succeeded < static_cast<uint64_t>(total)) std::this_thread::sleep_for(1ms);
  double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  Emit(label + "_submit_jobs_per_s", jobs / submit_secs, "jobs/s");
  Emit(label + "_end_to_end_jobs_per_s", total / secs, "jobs/s");
  jobs::CommitStats commits = (*store)->commit_stats();
  double commit_count = static_cast<double>(std::max<uint64_t>(commits.transactions, 1));
  Emit(label + "_writes_per_commit", static_cast<double>(commits.operations) / commit_count,
       "writes");
  (*runner)->Stop(5s);
  (*runtime)->Shutdown(5s);
  return 0;
}

}  // namespace
}  // namespace keel

int main(int argc, char** argv) { return keel::Main(argc, argv); }

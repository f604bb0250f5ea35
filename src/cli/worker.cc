// `keel worker`: a process that runs jobs from a shared queue (SQLite in a
// data directory, or PostgreSQL for many machines) until SIGTERM/SIGINT.
#include <signal.h>

#include <cstdio>

#include "cli/commands.h"
#include "jobs/module_pools.h"
#include "jobs/runner.h"
#include "keel/wasi.h"

namespace keel::cli {

int Worker(const WorkerArgs& args) {
  // Signals are taken by sigwait below, not by whichever thread they hit.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);

  jobs::StoreOptions store_options;
  if (args.commit_lanes > 0) store_options.commit_lanes = args.commit_lanes;
  auto store = jobs::OpenStore(args.store, store_options);
  if (!store) {
    std::fprintf(stderr, "keel: %s\n", store.error().ToString().c_str());
    return kExitFailure;
  }
  auto runtime = Runtime::Create({.workers = args.workers});
  if (!runtime) {
    std::fprintf(stderr, "keel: %s\n", runtime.error().ToString().c_str());
    return kExitFailure;
  }
  auto pool_options = WithWasi({}, SandboxWasi());
  if (!pool_options) {
    std::fprintf(stderr, "keel: %s\n", pool_options.error().ToString().c_str());
    return kExitFailure;
  }
  jobs::ModulePools pools(runtime->get(), store->get(), std::move(*pool_options));
  auto lease = std::chrono::duration_cast<std::chrono::milliseconds>(args.lease);
  auto runner = jobs::Runner::Start(
      store->get(), [&pools](const std::string& digest) { return pools.ForDigest(digest); },
      {.name = args.name,
       // Jobs run at most one per worker thread, whatever the pools' sizes.
       .concurrency = static_cast<size_t>((*runtime)->workers()),
       .max_in_flight = args.max_in_flight,
       .lease = lease});
  if (!runner) {
    std::fprintf(stderr, "keel: %s\n", runner.error().ToString().c_str());
    return kExitFailure;
  }
  std::fprintf(stderr, "keel worker: running jobs from %s\n", args.store.c_str());
  int sig = 0;
  sigwait(&signals, &sig);
  std::fprintf(stderr, "keel worker: stopping (signal %d)\n", sig);
  (*runner)->Stop(std::chrono::seconds(10));
  (*runtime)->Shutdown(std::chrono::seconds(5));
  return kExitOk;
}

}  // namespace keel::cli

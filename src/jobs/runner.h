// The job runner: claims jobs from a store, runs each as a byte call on the
// executor, and records every outcome. It stops claiming while the pool it
// feeds is overloaded (backpressure) and heartbeats the leases it holds.
#ifndef KEEL_JOBS_RUNNER_H_
#define KEEL_JOBS_RUNNER_H_

#include <atomic>
#include <chrono>
#include <functional>
#include <memory>
#include <string>

#include "jobs/store.h"
#include "keel/runtime.h"

namespace keel::jobs {

// The pool that runs jobs of the module with this digest; kNotFound (the
// job then fails without retry) or another error (retried later).
using PoolResolver = std::function<Result<std::shared_ptr<Pool>>(const std::string& digest)>;

struct RunnerOptions {
  std::string name;                               // lease holder; default "host:pid"
  size_t max_in_flight = 256;                     // jobs claimed and not yet completed
  size_t claim_batch = 64;                        // jobs per Claim
  std::chrono::milliseconds lease{30000};
  std::chrono::milliseconds heartbeat_every{0};   // 0: lease / 3
  std::chrono::milliseconds idle_wait{1000};      // Claim's wait when nothing is ready
  std::chrono::milliseconds retention{std::chrono::hours(24 * 7)};  // purge of finished jobs
};

// Counters, for metrics. Plain values.
struct RunnerStats {
  uint64_t claimed = 0;
  uint64_t succeeded = 0;
  uint64_t failed = 0;
  uint64_t timed_out = 0;
  uint64_t retried = 0;           // outcomes recorded with retry
  uint64_t lost_leases = 0;       // completions refused because the lease had gone
  uint64_t backpressure_waits = 0;
  int64_t in_flight = 0;
};

// Thread-safe. Owns one claiming thread; Stop() (or destruction) ends it.
class Runner {
 public:
  // Starts claiming at once. `store` must outlive the runner.
  [[nodiscard]] static Result<std::unique_ptr<Runner>> Start(JobStore* store, PoolResolver resolver,
                                                             RunnerOptions options = {});
  ~Runner();

  // Stops claiming, waits up to `grace` for jobs in flight to be recorded,
  // then returns; jobs still unrecorded keep their lease, which expires and
  // puts them back in the queue (never lost). Idempotent.
  void Stop(std::chrono::milliseconds grace);

  RunnerStats Stats() const;

  class Impl;

 private:
  explicit Runner(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace keel::jobs

#endif  // KEEL_JOBS_RUNNER_H_

// The job runner: claims jobs from a store, runs each as a byte call on the
// executor, and records every outcome.
//
// It claims only what it can start soon: as many jobs as it has free slots
// (its concurrency), and more only while the jobs it has seen are short
// enough that the extra ones should start within `claim_ahead`. A claimed
// job holds a short claim lease and counts no attempt. It goes to the
// executor only when a slot of its pool is free (the runner runs at most as
// many jobs of a module as its pool has instances; while that module's jobs
// are short, a few more, which wait in the pool's queue no longer than
// about claim_ahead), so the executor's deadline, the job's timeout, starts
// when the job starts, not when it was claimed. A job whose deadline passes
// before it starts is given back, uncounted. Its start is recorded with its
// outcome, or, if it runs longer than a few milliseconds, by a Start() of
// its own that counts the attempt and takes the run lease. Stop() gives
// back (Release()) what it claimed and did not start; after a kill -9 those
// come back when their claim lease expires, not the run lease. It
// heartbeats the leases it holds and waits while a pool it feeds is
// overloaded (backpressure).
//
// Recording the start while the job runs, not before it, spares the slot a
// round trip per job (and short jobs a write). So a runner killed in those
// first milliseconds loses an attempt that is not counted (the job runs
// again: at-least-once). A claimed job is `running` to the store:
// cancelling it detaches it, as for one that runs.
#ifndef KEEL_JOBS_RUNNER_H_
#define KEEL_JOBS_RUNNER_H_

#include <chrono>
#include <cstdint>
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
  std::string name;  // lease holder; default "host:pid"
  // Jobs running at once. 0: as many as the largest pool the runner has run
  // jobs on has instances (pools have one instance per worker by default,
  // so that is the runtime's workers).
  size_t concurrency = 0;
  size_t max_in_flight = 256;  // jobs held at most: claimed, running or being recorded
  size_t claim_batch = 64;     // jobs per Claim
  // Jobs are claimed beyond the free slots only while they should still
  // start within this (estimated from how long recent jobs ran); slow jobs
  // are claimed one free slot at a time.
  std::chrono::milliseconds claim_ahead{50};
  std::chrono::milliseconds lease{30000};  // on a started job
  // On a claimed job until it starts. 0: min(lease, 5 s).
  std::chrono::milliseconds claim_lease{0};
  // How often each lease is renewed. 0: when a third of it has passed.
  std::chrono::milliseconds heartbeat_every{0};
  std::chrono::milliseconds idle_wait{1000};  // Claim's wait when nothing is ready
  std::chrono::milliseconds retention{std::chrono::hours(24 * 7)};  // purge of finished jobs
};

// Counters, for metrics. Plain values.
struct RunnerStats {
  uint64_t claimed = 0;
  uint64_t started = 0;   // attempts begun: jobs handed to the executor
  uint64_t released = 0;  // claims given back unfinished (stopping, or the call never ran)
  uint64_t succeeded = 0;
  uint64_t failed = 0;
  uint64_t timed_out = 0;
  uint64_t retried = 0;           // outcomes recorded with retry
  uint64_t lost_leases = 0;       // leases found gone (expired, cancelled before start)
  uint64_t backpressure_waits = 0;
  int64_t in_flight = 0;          // jobs held: claimed and not yet recorded
  int64_t waiting = 0;            // of which claimed and not started
};

// Thread-safe. Owns its threads; Stop() (or destruction) ends them.
class Runner {
 public:
  // Starts claiming at once. `store` must outlive the runner.
  [[nodiscard]] static Result<std::unique_ptr<Runner>> Start(JobStore* store, PoolResolver resolver,
                                                             RunnerOptions options = {});
  ~Runner();

  // Stops claiming, gives back the jobs claimed and not started (and those
  // still waiting in a pool's queue), waits up to `grace` for the jobs
  // running to be recorded, then returns; jobs still unrecorded keep their lease,
  // which expires and puts them back in the queue (never lost). Idempotent.
  void Stop(std::chrono::milliseconds grace);

  RunnerStats Stats() const;

  // Claims no more jobs (a draining node); the jobs held run on until
  // Stop(). Idempotent.
  void StopClaiming();

  // Interrupts the running call of job `id` (Call::Abort: at its next safe
  // point; its instance is replaced) if this runner runs it. The job is
  // then recorded as its cancellation says (JobStore::Cancel first). False
  // when this runner has no running call of that job.
  [[nodiscard]] bool Abort(std::string_view id);

  class Impl;

 private:
  explicit Runner(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace keel::jobs

#endif  // KEEL_JOBS_RUNNER_H_

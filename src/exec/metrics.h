// Lock-free counters behind Runtime::Metrics().
#ifndef KEEL_EXEC_METRICS_H_
#define KEEL_EXEC_METRICS_H_

#include <array>
#include <atomic>
#include <chrono>
#include <cstdint>

#include "keel/metrics.h"

namespace keel::exec {

// Log2 buckets from 1 us to ~134 s. Record() is wait-free.
class Histogram {
 public:
  static constexpr size_t kBuckets = 28;
  void Record(std::chrono::nanoseconds d);
  HistogramSnapshot Snapshot() const;
  // A snapshot with this layout's buckets and no samples.
  static HistogramSnapshot Empty();
  // Adds this histogram's samples to `s` (from Empty() or Snapshot()).
  void AddTo(HistogramSnapshot& s) const;

 private:
  std::array<std::atomic<uint64_t>, kBuckets + 1> counts_{};
  std::atomic<uint64_t> sum_ns_{0};
};

// How one accepted call resolved; see ResolutionCounts.
enum class Cause : uint8_t {
  kOk,
  kError,
  kTrap,
  kCancelledQueued,
  kDetached,
  kDeadlineQueued,
  kDeadlineRunning,
  kShuttingDown,
  kUnavailable,
  kAborted,
};

// How one started call ended in the guest; see RunCounts.
enum class RunEnd : uint8_t { kOk, kTrapped, kInterrupted, kFailed };

using Counter = std::atomic<uint64_t>;

// What a worker counts for every call it runs and every reset. Each worker
// has its own (Metrics::ForWorker), on cache lines of its own: shared by
// the workers, these counters bounced between the cores at every call, and
// the reset's five of them took a fifth of a reset's time.
struct alignas(64) WorkerCounters {
  Counter started, run_ok, run_trapped, run_interrupted, run_failed;
  Counter resets_pages, resets_full, reset_pages_copied, reset_scans;
  Histogram queue_wait, run_time, reset_time;

  void CountRunEnd(RunEnd end);
};

// Thread-safe; every member is an independent relaxed counter.
struct Metrics {
  using Gauge = std::atomic<int64_t>;

  Counter submitted, rejected_overloaded, rejected_deadline, rejected_unavailable,
      rejected_shutting_down;
  Counter ok, errors, cancelled_queued, detached, deadline_queued, deadline_running,
      shutting_down, unavailable;
  std::array<Counter, kTrapKinds> traps{};
  Counter created, poisoned, replaced, recycled, instantiation_failures, quarantines;
  Counter detached_results, modules_refused;
  Counter aborted, aborts;
  Counter spare_grants, spare_denied;
  Counter resets_fresh_fallback;
  Gauge queued, running, instances_live, spare_workers, temporary_instances;
  Histogram end_to_end;
  // Workers beyond the first kWorkerShards share theirs (index modulo).
  static constexpr size_t kWorkerShards = 16;
  std::array<WorkerCounters, kWorkerShards> per_worker;

  WorkerCounters& ForWorker(int index) {
    return per_worker[static_cast<size_t>(index) % kWorkerShards];
  }
  void CountResolution(Cause cause, TrapKind trap);
  MetricsSnapshot Snapshot() const;
};

}  // namespace keel::exec

#endif  // KEEL_EXEC_METRICS_H_

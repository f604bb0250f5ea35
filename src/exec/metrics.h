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

 private:
  std::array<std::atomic<uint64_t>, kBuckets + 1> counts_{};
  std::atomic<uint64_t> count_{0};
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

// Thread-safe; every member is an independent relaxed counter.
struct Metrics {
  using Counter = std::atomic<uint64_t>;
  using Gauge = std::atomic<int64_t>;

  Counter submitted, rejected_overloaded, rejected_deadline, rejected_unavailable,
      rejected_shutting_down;
  Counter ok, errors, cancelled_queued, detached, deadline_queued, deadline_running,
      shutting_down, unavailable;
  std::array<Counter, kTrapKinds> traps{};
  Counter started, run_ok, run_trapped, run_interrupted, run_failed;
  Counter created, poisoned, replaced, recycled, instantiation_failures, quarantines;
  Counter detached_results, modules_refused;
  Counter aborted, aborts;
  Counter spare_grants, spare_denied;
  Counter resets_pages, resets_full, resets_fresh_fallback, reset_pages_copied, reset_scans;
  Gauge queued, running, instances_live, spare_workers, temporary_instances;
  Histogram queue_wait, run_time, end_to_end, reset_time;

  void CountResolution(Cause cause, TrapKind trap);
  void CountRunEnd(RunEnd end);
  MetricsSnapshot Snapshot() const;
};

}  // namespace keel::exec

#endif  // KEEL_EXEC_METRICS_H_

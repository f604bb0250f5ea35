// In-process metrics of a runtime: counters, gauges and latency histograms.
// A snapshot is a plain value; take one with Runtime::Metrics().
#ifndef KEEL_METRICS_H_
#define KEEL_METRICS_H_

#include <array>
#include <cstdint>
#include <string>
#include <vector>

#include "keel/status.h"

namespace keel {

// Log-scale latency histogram: bucket i counts samples <= bounds[i]
// (seconds); the last bucket is +Inf.
struct HistogramSnapshot {
  std::vector<double> bounds;
  std::vector<uint64_t> counts;  // per bucket, not cumulative; size bounds.size() + 1
  uint64_t count = 0;
  double sum_seconds = 0;
  // Estimated q-quantile in seconds (q in [0, 1]); 0 when empty.
  double Quantile(double q) const;
};

inline constexpr size_t kTrapKinds = static_cast<size_t>(TrapKind::kOther) + 1;

// How accepted calls resolved. Every accepted call resolves exactly once,
// so: submitted == ok + errors + traps_total() + cancelled_queued + detached
//                  + deadline_queued + deadline_running + shutting_down
//                  + unavailable + aborted + (calls not yet resolved).
struct ResolutionCounts {
  uint64_t ok = 0;
  uint64_t errors = 0;             // byte-ABI violations, host errors, engine failures
  std::array<uint64_t, kTrapKinds> traps{};  // by TrapKind
  uint64_t cancelled_queued = 0;   // withdrawn before start
  uint64_t detached = 0;           // cancelled while running
  uint64_t deadline_queued = 0;    // deadline passed before start
  uint64_t deadline_running = 0;   // deadline passed while running
  uint64_t shutting_down = 0;
  uint64_t unavailable = 0;        // failed while queued because the module was quarantined
  uint64_t aborted = 0;            // running calls stopped by Abort()
  uint64_t traps_total() const;
  uint64_t total() const;
};

// What happened to calls that entered the guest. Every started call ends
// exactly once: started == run_ok + run_trapped + run_interrupted
//                        + run_failed + (calls running now).
struct RunCounts {
  uint64_t started = 0;
  uint64_t run_ok = 0;
  uint64_t run_trapped = 0;
  uint64_t run_interrupted = 0;
  uint64_t run_failed = 0;         // ABI violations and other non-trap errors
};

struct InstanceCounts {
  uint64_t created = 0;
  uint64_t poisoned = 0;           // by trap, interrupt or ABI violation
  uint64_t replaced = 0;           // replacements of poisoned instances ready
  uint64_t recycled = 0;           // retired by the recycle policy
  uint64_t instantiation_failures = 0;
  uint64_t quarantines = 0;        // times a module entered quarantine
};

// Resets of instances to their snapshots (StatePolicy::kReset).
struct ResetCounts {
  uint64_t pages = 0;           // copied back the pages dirty-page tracking found written
  uint64_t full = 0;            // compared the whole memory with the snapshot
  uint64_t fresh_fallback = 0;  // a fresh instance instead: this one could not be reset
  uint64_t pages_copied = 0;    // 4 KiB pages written back, over all resets
  // Of `pages`, those that asked the kernel which pages were written (the
  // others knew no protected page could have been: see docs/EXECUTOR.md).
  uint64_t scans = 0;
};

// Workers beyond the configured ones, started for fairness (see
// FairnessOptions in keel/runtime.h).
struct SpareCounts {
  int64_t workers = 0;             // spare worker threads now
  int64_t temporary_instances = 0; // instances they host now
  uint64_t grants = 0;             // times a starving pool was given a spare
  uint64_t denied = 0;             // times none could be given (at the limit)
};

// The engine's linear memories in this process, including those of dropped
// instances not yet collected.
struct EngineMemoryCounts {
  int64_t live_memories = 0;
  uint64_t reserved_bytes = 0;
  uint64_t committed_bytes = 0;
};

// RuntimeOptions::memory_budget_bytes and what instances hold of it now.
struct MemoryBudgetCounts {
  uint64_t limit_bytes = 0;
  uint64_t used_bytes = 0;
};

struct MetricsSnapshot {
  uint64_t submitted = 0;          // accepted by Submit
  uint64_t rejected_overloaded = 0;
  uint64_t rejected_deadline = 0;  // deadline already passed at Submit
  uint64_t rejected_unavailable = 0;
  uint64_t rejected_shutting_down = 0;
  ResolutionCounts resolved;
  RunCounts runs;
  InstanceCounts instances;
  uint64_t detached_results = 0;   // results handed to the detached sink (calls cancelled while
                                   // running; Detach()ed calls without a callback)
  uint64_t callback_exceptions = 0;  // callbacks, sinks and interrupt hooks that threw
  uint64_t aborts = 0;             // running calls Abort() interrupted (detached ones too)
  uint64_t modules_refused = 0;    // by Compile's start-function check
  SpareCounts spares;
  EngineMemoryCounts engine_memory;
  MemoryBudgetCounts memory_budget;
  // Gauges.
  int64_t queued = 0;
  int64_t running = 0;
  int64_t instances_live = 0;
  HistogramSnapshot queue_wait;    // submit to start
  HistogramSnapshot run_time;      // start to end of both phases
  HistogramSnapshot end_to_end;    // submit to resolution
  ResetCounts resets;
  HistogramSnapshot reset_time;    // one reset to the snapshot
};

}  // namespace keel

#endif  // KEEL_METRICS_H_

#include "exec/metrics.h"

#include <bit>
#include <cmath>

namespace keel {

uint64_t ResolutionCounts::traps_total() const {
  uint64_t total = 0;
  for (uint64_t t : traps) total += t;
  return total;
}

uint64_t ResolutionCounts::total() const {
  return ok + errors + traps_total() + cancelled_queued + detached + deadline_queued +
         deadline_running + shutting_down + unavailable + aborted;
}

double HistogramSnapshot::Quantile(double q) const {
  if (count == 0) return 0;
  double rank = q * static_cast<double>(count);
  uint64_t seen = 0;
  for (size_t i = 0; i < counts.size(); ++i) {
    if (counts[i] == 0) continue;
    if (static_cast<double>(seen + counts[i]) >= rank) {
      // Interpolate inside the bucket.
      double lo = i == 0 ? 0 : bounds[i - 1];
      double hi = i < bounds.size() ? bounds[i] : bounds.back() * 2;
      double frac = (rank - static_cast<double>(seen)) / static_cast<double>(counts[i]);
      return lo + (hi - lo) * std::clamp(frac, 0.0, 1.0);
    }
    seen += counts[i];
  }
  return bounds.back();
}

}  // namespace keel

namespace keel::exec {

void Histogram::Record(std::chrono::nanoseconds d) {
  uint64_t ns = d.count() < 0 ? 0 : static_cast<uint64_t>(d.count());
  uint64_t us = ns / 1000;
  // Bucket i holds samples <= 2^i us.
  size_t bucket = us <= 1 ? 0 : static_cast<size_t>(std::bit_width(us - 1));
  if (bucket > kBuckets) bucket = kBuckets;
  counts_[bucket].fetch_add(1, std::memory_order_relaxed);
  sum_ns_.fetch_add(ns, std::memory_order_relaxed);
}

HistogramSnapshot Histogram::Empty() {
  HistogramSnapshot s;
  for (size_t i = 0; i < kBuckets; ++i) s.bounds.push_back(std::ldexp(1e-6, static_cast<int>(i)));
  s.counts.assign(kBuckets + 1, 0);
  return s;
}

HistogramSnapshot Histogram::Snapshot() const {
  HistogramSnapshot s = Empty();
  AddTo(s);
  return s;
}

void Histogram::AddTo(HistogramSnapshot& s) const {
  for (size_t i = 0; i < counts_.size(); ++i) {
    uint64_t c = counts_[i].load(std::memory_order_relaxed);
    s.counts[i] += c;
    s.count += c;
  }
  s.sum_seconds += static_cast<double>(sum_ns_.load(std::memory_order_relaxed)) / 1e9;
}

void Metrics::CountResolution(Cause cause, TrapKind trap) {
  switch (cause) {
    case Cause::kOk: ok++; break;
    case Cause::kError: errors++; break;
    case Cause::kTrap: traps[static_cast<size_t>(trap)]++; break;
    case Cause::kCancelledQueued: cancelled_queued++; break;
    case Cause::kDetached: detached++; break;
    case Cause::kDeadlineQueued: deadline_queued++; break;
    case Cause::kDeadlineRunning: deadline_running++; break;
    case Cause::kShuttingDown: shutting_down++; break;
    case Cause::kUnavailable: unavailable++; break;
    case Cause::kAborted: aborted++; break;
  }
}

void WorkerCounters::CountRunEnd(RunEnd end) {
  switch (end) {
    case RunEnd::kOk: run_ok++; break;
    case RunEnd::kTrapped: run_trapped++; break;
    case RunEnd::kInterrupted: run_interrupted++; break;
    case RunEnd::kFailed: run_failed++; break;
  }
}

MetricsSnapshot Metrics::Snapshot() const {
  MetricsSnapshot s;
  s.submitted = submitted;
  s.rejected_overloaded = rejected_overloaded;
  s.rejected_deadline = rejected_deadline;
  s.rejected_unavailable = rejected_unavailable;
  s.rejected_shutting_down = rejected_shutting_down;
  s.resolved.ok = ok;
  s.resolved.errors = errors;
  for (size_t i = 0; i < kTrapKinds; ++i) s.resolved.traps[i] = traps[i];
  s.resolved.cancelled_queued = cancelled_queued;
  s.resolved.detached = detached;
  s.resolved.deadline_queued = deadline_queued;
  s.resolved.deadline_running = deadline_running;
  s.resolved.shutting_down = shutting_down;
  s.resolved.unavailable = unavailable;
  s.resolved.aborted = aborted;
  s.instances.created = created;
  s.instances.poisoned = poisoned;
  s.instances.replaced = replaced;
  s.instances.recycled = recycled;
  s.instances.instantiation_failures = instantiation_failures;
  s.instances.quarantines = quarantines;
  s.detached_results = detached_results;
  s.aborts = aborts;
  s.modules_refused = modules_refused;
  s.spares.workers = spare_workers;
  s.spares.temporary_instances = temporary_instances;
  s.spares.grants = spare_grants;
  s.spares.denied = spare_denied;
  s.queued = queued;
  s.running = running;
  s.instances_live = instances_live;
  s.end_to_end = end_to_end.Snapshot();
  s.resets.fresh_fallback = resets_fresh_fallback;
  s.queue_wait = s.run_time = s.reset_time = Histogram::Empty();
  for (const WorkerCounters& w : per_worker) {
    s.runs.started += w.started;
    s.runs.run_ok += w.run_ok;
    s.runs.run_trapped += w.run_trapped;
    s.runs.run_interrupted += w.run_interrupted;
    s.runs.run_failed += w.run_failed;
    s.resets.pages += w.resets_pages;
    s.resets.full += w.resets_full;
    s.resets.pages_copied += w.reset_pages_copied;
    s.resets.scans += w.reset_scans;
    w.queue_wait.AddTo(s.queue_wait);
    w.run_time.AddTo(s.run_time);
    w.reset_time.AddTo(s.reset_time);
  }
  return s;
}

}  // namespace keel::exec

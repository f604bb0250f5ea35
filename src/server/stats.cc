#include "server/stats.h"

#include <algorithm>

namespace keel::server {

void HttpStats::CountResponse(int status, std::chrono::nanoseconds took) {
  responses[std::clamp(status, 0, kMaxStatus - 1)].fetch_add(1, std::memory_order_relaxed);
  request_seconds.Record(took);
}

HttpSnapshot HttpStats::Snapshot() const {
  HttpSnapshot s;
  for (int i = 0; i < kMaxStatus; ++i) {
    if (uint64_t n = responses[i].load(std::memory_order_relaxed)) s.responses.emplace_back(i, n);
  }
  s.connections_accepted = connections_accepted.load();
  s.connections_rejected = connections_rejected.load();
  s.connections_open = connections_open.load();
  s.timeouts = timeouts.load();
  s.disconnect_withdrawn = disconnect_withdrawn.load();
  s.disconnect_detached = disconnect_detached.load();
  s.detached_results = detached_results.load();
  s.calls_in_flight = calls_in_flight.load();
  s.request_seconds = request_seconds.Snapshot();
  return s;
}

void RecentTerminations::Add(Termination t) {
  MutexLock lock(mu_);
  items_.push_back(std::move(t));
  while (items_.size() > capacity_) items_.pop_front();
}

std::vector<Termination> RecentTerminations::Newest() const {
  MutexLock lock(mu_);
  return {items_.rbegin(), items_.rend()};
}

namespace {

// The histogram of samples recorded between two snapshots.
HistogramSnapshot Delta(const HistogramSnapshot& now, const HistogramSnapshot& before) {
  HistogramSnapshot d = now;
  d.count = 0;
  for (size_t i = 0; i < d.counts.size(); ++i) {
    uint64_t was = i < before.counts.size() ? before.counts[i] : 0;
    d.counts[i] = d.counts[i] >= was ? d.counts[i] - was : 0;
    d.count += d.counts[i];
  }
  d.sum_seconds = now.sum_seconds - before.sum_seconds;
  return d;
}

}  // namespace

void Sampler::Take(const MetricsSnapshot& now, uint64_t http_responses) {
  auto time = std::chrono::steady_clock::now();
  MutexLock lock(mu_);
  if (has_previous_) {
    double seconds = std::chrono::duration<double>(time - previous_time_).count();
    if (seconds <= 0) return;
    const ResolutionCounts& a = now.resolved;
    const ResolutionCounts& b = previous_.resolved;
    Sample s;
    s.unix_ms = std::chrono::duration_cast<std::chrono::milliseconds>(
                    std::chrono::system_clock::now().time_since_epoch())
                    .count();
    s.calls_per_s = static_cast<double>(a.total() - b.total()) / seconds;
    s.ok_per_s = static_cast<double>(a.ok - b.ok) / seconds;
    s.requests_per_s = static_cast<double>(http_responses - previous_responses_) / seconds;
    HistogramSnapshot latency = Delta(now.end_to_end, previous_.end_to_end);
    s.p50_ms = latency.Quantile(0.5) * 1e3;
    s.p99_ms = latency.Quantile(0.99) * 1e3;
    s.trap = a.traps_total() - b.traps_total();
    s.deadline = (a.deadline_queued + a.deadline_running) - (b.deadline_queued + b.deadline_running);
    s.detached = a.detached - b.detached;
    s.cancelled = a.cancelled_queued - b.cancelled_queued;
    s.error = a.errors - b.errors;
    s.other = (a.shutting_down + a.unavailable) - (b.shutting_down + b.unavailable);
    samples_.push_back(s);
    while (samples_.size() > capacity_) samples_.pop_front();
  }
  has_previous_ = true;
  previous_ = now;
  previous_responses_ = http_responses;
  previous_time_ = time;
}

std::vector<Sample> Sampler::Samples() const {
  MutexLock lock(mu_);
  return {samples_.begin(), samples_.end()};
}

}  // namespace keel::server

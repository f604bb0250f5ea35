// What the service counts besides the executor: HTTP traffic, clients that
// left during a call, recent abnormal terminations, and a short history of
// per-second samples for the status page's charts.
#ifndef KEEL_SERVER_STATS_H_
#define KEEL_SERVER_STATS_H_

#include <array>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <deque>
#include <string>
#include <vector>

#include "base/mutex.h"
#include "exec/metrics.h"
#include "keel/call.h"
#include "keel/metrics.h"

namespace keel::server {

// Plain copy of HttpStats.
struct HttpSnapshot {
  std::vector<std::pair<int, uint64_t>> responses;  // (status, count), nonzero only
  uint64_t connections_accepted = 0;
  uint64_t connections_rejected = 0;  // over the connection limit
  int64_t connections_open = 0;
  uint64_t timeouts = 0;              // slow or idle clients closed
  uint64_t disconnect_withdrawn = 0;  // client left; its call had not started
  uint64_t disconnect_detached = 0;   // client left; its call ran on, detached
  uint64_t detached_results = 0;      // results of detached calls received
  int64_t calls_in_flight = 0;        // synchronous calls awaited by clients
  HistogramSnapshot request_seconds;
};

// Thread-safe counters; every member is independent.
struct HttpStats {
  static constexpr int kMaxStatus = 600;
  std::array<std::atomic<uint64_t>, kMaxStatus> responses{};
  std::atomic<uint64_t> connections_accepted{0}, connections_rejected{0}, timeouts{0},
      disconnect_withdrawn{0}, disconnect_detached{0}, detached_results{0};
  std::atomic<int64_t> connections_open{0}, calls_in_flight{0};
  exec::Histogram request_seconds;

  void CountResponse(int status, std::chrono::nanoseconds took);
  HttpSnapshot Snapshot() const;
};

// One call that ended other than with a result, as the status page and
// logs show it.
struct Termination {
  std::chrono::system_clock::time_point time;
  CallId call_id = 0;
  std::string module;
  std::string export_name;
  std::string cause;  // trap, deadline, error, detached, withdrawn, shutting_down, unavailable, cancelled
  std::string message;
};

// The last `capacity` terminations. Thread-safe.
class RecentTerminations {
 public:
  explicit RecentTerminations(size_t capacity = 50) : capacity_(capacity) {}
  void Add(Termination t);
  std::vector<Termination> Newest() const;  // newest first

 private:
  size_t capacity_;
  mutable Mutex mu_;
  std::deque<Termination> items_ GUARDED_BY(mu_);
};

// One second of activity, from two consecutive metrics snapshots.
struct Sample {
  int64_t unix_ms = 0;
  double calls_per_s = 0;     // resolved calls, all causes
  double ok_per_s = 0;
  double requests_per_s = 0;  // HTTP responses
  double p50_ms = 0;          // end-to-end latency of calls resolved in the interval
  double p99_ms = 0;
  // Terminations in the interval by cause.
  uint64_t trap = 0, deadline = 0, detached = 0, cancelled = 0, error = 0, other = 0;
};

// Keeps the last `capacity` samples. Thread-safe.
class Sampler {
 public:
  explicit Sampler(size_t capacity = 120) : capacity_(capacity) {}
  // Records the interval since the previous call (nothing on the first).
  void Take(const MetricsSnapshot& runtime, uint64_t http_responses);
  std::vector<Sample> Samples() const;  // oldest first

 private:
  size_t capacity_;
  mutable Mutex mu_;
  bool has_previous_ GUARDED_BY(mu_) = false;
  MetricsSnapshot previous_ GUARDED_BY(mu_);
  uint64_t previous_responses_ GUARDED_BY(mu_) = 0;
  std::chrono::steady_clock::time_point previous_time_ GUARDED_BY(mu_);
  std::deque<Sample> samples_ GUARDED_BY(mu_);
};

}  // namespace keel::server

#endif  // KEEL_SERVER_STATS_H_

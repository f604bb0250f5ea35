// GET /metrics: everything keel counts, in the Prometheus text format
// (version 0.0.4). Metric names and labels are listed in docs/SERVER.md.
#ifndef KEEL_SERVER_METRICS_TEXT_H_
#define KEEL_SERVER_METRICS_TEXT_H_

#include <optional>
#include <string>
#include <vector>

#include "jobs/runner.h"
#include "jobs/store.h"
#include "keel/metrics.h"
#include "keel/runtime.h"
#include "server/stats.h"

namespace keel::server {

struct PoolMetrics {
  std::string module;  // the names that refer to it, comma-separated, or the digest prefix
  std::string digest;
  PoolStats stats;
};

struct MetricsInput {
  MetricsSnapshot runtime;
  std::vector<PoolMetrics> pools;
  // The pool families already rendered (RenderPoolFamilies); when set,
  // `pools` is not used.
  const std::string* pool_families = nullptr;
  HttpSnapshot http;
  std::optional<jobs::StateCounts> job_states;  // nullopt: store unavailable
  std::optional<jobs::RunnerStats> runner;
  jobs::CommitStats commits;
  bool draining = false;
  std::string node;  // this node's name (keel_node_info)
  double uptime_seconds = 0;
};

std::string RenderPrometheus(const MetricsInput& in);
// The per-pool families (keel_pool_*): O(pools), so the service renders
// them at most once a second.
std::string RenderPoolFamilies(const std::vector<PoolMetrics>& pools);

// `text` escaped for a label value (backslash, quote, newline).
std::string EscapeLabel(std::string_view text);

}  // namespace keel::server

#endif  // KEEL_SERVER_METRICS_TEXT_H_

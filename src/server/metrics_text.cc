#include "server/metrics_text.h"

#include <cmath>
#include <cstdio>

namespace keel::server {

namespace {

// Writes metric families: HELP and TYPE once, then samples.
class Writer {
 public:
  void Family(std::string_view name, std::string_view type, std::string_view help) {
    out_ += "# HELP ";
    out_ += name;
    out_ += ' ';
    out_ += help;
    out_ += "\n# TYPE ";
    out_ += name;
    out_ += ' ';
    out_ += type;
    out_ += '\n';
  }
  void Sample(std::string_view name, std::string_view labels, double value) {
    out_ += name;
    if (!labels.empty()) {
      out_ += '{';
      out_ += labels;
      out_ += '}';
    }
    out_ += ' ';
    out_ += Number(value);
    out_ += '\n';
  }
  void Sample(std::string_view name, std::string_view labels, uint64_t value) {
    Sample(name, labels, std::to_string(value));
  }
  void Sample(std::string_view name, std::string_view labels, int64_t value) {
    Sample(name, labels, std::to_string(value));
  }
  // Shorthand for a family with a single unlabelled sample.
  template <typename T>
  void One(std::string_view name, std::string_view type, std::string_view help, T value) {
    Family(name, type, help);
    Sample(name, "", value);
  }
  void Histogram(std::string_view name, std::string_view help, const HistogramSnapshot& h) {
    Family(name, "histogram", help);
    std::string bucket = std::string(name) + "_bucket";
    uint64_t cumulative = 0;
    for (size_t i = 0; i < h.bounds.size(); ++i) {
      cumulative += i < h.counts.size() ? h.counts[i] : 0;
      Sample(bucket, "le=\"" + Number(h.bounds[i]) + "\"", cumulative);
    }
    Sample(bucket, "le=\"+Inf\"", h.count);
    Sample(std::string(name) + "_sum", "", h.sum_seconds);
    Sample(std::string(name) + "_count", "", h.count);
  }
  void Raw(std::string_view text) { out_ += text; }
  std::string Take() { return std::move(out_); }

 private:
  void Sample(std::string_view name, std::string_view labels, const std::string& value) {
    out_ += name;
    if (!labels.empty()) {
      out_ += '{';
      out_ += labels;
      out_ += '}';
    }
    out_ += ' ';
    out_ += value;
    out_ += '\n';
  }
  static std::string Number(double v) {
    if (std::isnan(v)) return "NaN";
    if (std::isinf(v)) return v > 0 ? "+Inf" : "-Inf";
    char buf[32];
    std::snprintf(buf, sizeof buf, "%.9g", v);
    return buf;
  }
  std::string out_;
};

std::string Label(std::string_view key, std::string_view value) {
  return std::string(key) + "=\"" + EscapeLabel(value) + "\"";
}

}  // namespace

std::string EscapeLabel(std::string_view text) {
  std::string out;
  out.reserve(text.size());
  for (char c : text) {
    switch (c) {
      case '\\': out += "\\\\"; break;
      case '"': out += "\\\""; break;
      case '\n': out += "\\n"; break;
      default: out += c;
    }
  }
  return out;
}

std::string RenderPrometheus(const MetricsInput& in) {
  Writer w;
  const MetricsSnapshot& m = in.runtime;

  // Admission.
  w.One("keel_calls_submitted_total", "counter", "Calls accepted by a pool.", m.submitted);
  w.Family("keel_calls_rejected_total", "counter", "Calls refused at submission, by reason.");
  w.Sample("keel_calls_rejected_total", Label("reason", "overloaded"), m.rejected_overloaded);
  w.Sample("keel_calls_rejected_total", Label("reason", "deadline"), m.rejected_deadline);
  w.Sample("keel_calls_rejected_total", Label("reason", "unavailable"), m.rejected_unavailable);
  w.Sample("keel_calls_rejected_total", Label("reason", "shutting_down"), m.rejected_shutting_down);

  // Terminations by cause: every accepted call resolves exactly once.
  const ResolutionCounts& r = m.resolved;
  w.Family("keel_calls_resolved_total", "counter",
           "Accepted calls by how they ended (cause); traps are split by kind in keel_calls_trapped_total.");
  w.Sample("keel_calls_resolved_total", Label("cause", "ok"), r.ok);
  w.Sample("keel_calls_resolved_total", Label("cause", "error"), r.errors);
  w.Sample("keel_calls_resolved_total", Label("cause", "trap"), r.traps_total());
  w.Sample("keel_calls_resolved_total", Label("cause", "cancelled_queued"), r.cancelled_queued);
  w.Sample("keel_calls_resolved_total", Label("cause", "detached"), r.detached);
  w.Sample("keel_calls_resolved_total", Label("cause", "deadline_queued"), r.deadline_queued);
  w.Sample("keel_calls_resolved_total", Label("cause", "deadline_running"), r.deadline_running);
  w.Sample("keel_calls_resolved_total", Label("cause", "shutting_down"), r.shutting_down);
  w.Sample("keel_calls_resolved_total", Label("cause", "unavailable"), r.unavailable);
  w.Sample("keel_calls_resolved_total", Label("cause", "aborted"), r.aborted);
  w.Family("keel_calls_trapped_total", "counter", "Calls that ended in a guest trap, by trap kind.");
  for (size_t i = 1; i < kTrapKinds; ++i) {
    w.Sample("keel_calls_trapped_total", Label("kind", ToString(static_cast<TrapKind>(i))), r.traps[i]);
  }

  // What happened inside the guest.
  w.One("keel_runs_started_total", "counter", "Calls that entered the guest.", m.runs.started);
  w.Family("keel_runs_ended_total", "counter", "Calls that left the guest, by how.");
  w.Sample("keel_runs_ended_total", Label("end", "ok"), m.runs.run_ok);
  w.Sample("keel_runs_ended_total", Label("end", "trapped"), m.runs.run_trapped);
  w.Sample("keel_runs_ended_total", Label("end", "interrupted"), m.runs.run_interrupted);
  w.Sample("keel_runs_ended_total", Label("end", "failed"), m.runs.run_failed);
  w.One("keel_detached_results_total", "counter",
        "Results of calls whose caller detached, handed to the detached sink.", m.detached_results);

  // Instances.
  const InstanceCounts& ic = m.instances;
  w.Family("keel_instance_events_total", "counter", "Instance lifecycle events.");
  w.Sample("keel_instance_events_total", Label("event", "created"), ic.created);
  w.Sample("keel_instance_events_total", Label("event", "poisoned"), ic.poisoned);
  w.Sample("keel_instance_events_total", Label("event", "replaced"), ic.replaced);
  w.Sample("keel_instance_events_total", Label("event", "recycled"), ic.recycled);
  w.Sample("keel_instance_events_total", Label("event", "instantiation_failed"), ic.instantiation_failures);
  w.Sample("keel_instance_events_total", Label("event", "quarantined"), ic.quarantines);

  w.One("keel_call_aborts_total", "counter", "Running calls an operator abort interrupted.", m.aborts);
  w.One("keel_callback_exceptions_total", "counter",
        "Completion callbacks, detached sinks and interrupt hooks that threw.", m.callback_exceptions);
  w.One("keel_modules_refused_total", "counter",
        "Modules refused at upload: their start function (or init) trapped or did not finish.",
        m.modules_refused);

  // Fairness: spare workers for pools starved by others' long calls.
  w.One("keel_spare_workers", "gauge", "Spare worker threads now.", m.spares.workers);
  w.One("keel_spare_instances", "gauge", "Instances on spare workers now.", m.spares.temporary_instances);
  w.Family("keel_spare_requests_total", "counter", "Starving pools given a spare worker, or not (at the limit).");
  w.Sample("keel_spare_requests_total", Label("result", "granted"), m.spares.grants);
  w.Sample("keel_spare_requests_total", Label("result", "denied"), m.spares.denied);

  // The engine's linear memories, dropped ones not yet collected included.
  w.One("keel_engine_memories", "gauge", "Linear memories the engine holds.", m.engine_memory.live_memories);
  w.One("keel_engine_memory_reserved_bytes", "gauge", "Address space those memories reserve.",
        m.engine_memory.reserved_bytes);
  w.One("keel_engine_memory_committed_bytes", "gauge", "Current byte length of those memories.",
        m.engine_memory.committed_bytes);
  w.One("keel_memory_budget_bytes", "gauge",
        "The runtime's budget on its instances' linear memory (--memory-budget).",
        m.memory_budget.limit_bytes);
  w.One("keel_memory_budget_used_bytes", "gauge",
        "Linear memory the runtime's instances hold of that budget (and calls' grants).",
        m.memory_budget.used_bytes);

  w.Family("keel_instance_resets_total", "counter",
           "Instances brought back to their snapshot after a call (state policy reset), by how: the pages "
           "found written, the whole memory compared, or a fresh instance instead.");
  w.Sample("keel_instance_resets_total", Label("how", "pages"), m.resets.pages);
  w.Sample("keel_instance_resets_total", Label("how", "full"), m.resets.full);
  w.Sample("keel_instance_resets_total", Label("how", "fresh_fallback"), m.resets.fresh_fallback);
  w.One("keel_instance_reset_pages_total", "counter", "4 KiB pages written back by resets.",
        m.resets.pages_copied);
  w.One("keel_instance_reset_scans_total", "counter",
        "Resets by pages that asked the kernel which pages were written (the others knew none "
        "it protects could have been).",
        m.resets.scans);
  w.Histogram("keel_instance_reset_seconds", "Time of one reset to the snapshot.", m.reset_time);

  w.One("keel_calls_queued", "gauge", "Calls waiting for an instance.", m.queued);
  w.One("keel_calls_running", "gauge", "Calls in the guest now.", m.running);
  w.One("keel_instances_live", "gauge", "Instances alive.", m.instances_live);
  w.Histogram("keel_call_queue_wait_seconds", "Time from submit to start.", m.queue_wait);
  w.Histogram("keel_call_run_seconds", "Time in the guest (both phases).", m.run_time);
  w.Histogram("keel_call_seconds", "Time from submit to resolution.", m.end_to_end);

  // Pools.
  if (in.pool_families) {
    w.Raw(*in.pool_families);
  } else {
    w.Raw(RenderPoolFamilies(in.pools));
  }

  // Jobs.
  if (in.job_states) {
    w.Family("keel_jobs", "gauge", "Jobs in the store, by state.");
    for (size_t i = 0; i < jobs::kJobStateCount; ++i) {
      w.Sample("keel_jobs", Label("state", jobs::ToString(static_cast<jobs::JobState>(i))),
               (*in.job_states)[i]);
    }
  }
  if (in.runner) {
    const jobs::RunnerStats& s = *in.runner;
    w.Family("keel_job_attempts_total", "counter", "Job attempts of this process's runner, by outcome.");
    w.Sample("keel_job_attempts_total", Label("outcome", "claimed"), s.claimed);
    w.Sample("keel_job_attempts_total", Label("outcome", "started"), s.started);
    w.Sample("keel_job_attempts_total", Label("outcome", "released"), s.released);
    w.Sample("keel_job_attempts_total", Label("outcome", "succeeded"), s.succeeded);
    w.Sample("keel_job_attempts_total", Label("outcome", "failed"), s.failed);
    w.Sample("keel_job_attempts_total", Label("outcome", "timed_out"), s.timed_out);
    w.Sample("keel_job_attempts_total", Label("outcome", "retried"), s.retried);
    w.Sample("keel_job_attempts_total", Label("outcome", "lost_lease"), s.lost_leases);
    w.One("keel_job_backpressure_waits_total", "counter",
          "Times the runner stopped claiming because a pool was overloaded.", s.backpressure_waits);
    w.One("keel_jobs_in_flight", "gauge", "Jobs claimed by this process and not yet recorded.", s.in_flight);
    w.One("keel_jobs_waiting", "gauge", "Jobs claimed by this process and not yet started.", s.waiting);
  }
  w.One("keel_job_store_transactions_total", "counter", "Write transactions committed by the job store.",
        in.commits.transactions);
  w.One("keel_job_store_operations_total", "counter", "Writes carried by those transactions.",
        in.commits.operations);

  // HTTP.
  const HttpSnapshot& h = in.http;
  w.Family("keel_http_responses_total", "counter", "HTTP responses, by status code.");
  for (const auto& [status, count] : h.responses) {
    w.Sample("keel_http_responses_total", Label("code", std::to_string(status)), count);
  }
  w.Histogram("keel_http_request_seconds", "Time from a request's header to its response.", h.request_seconds);
  w.One("keel_http_connections_accepted_total", "counter", "Connections accepted.", h.connections_accepted);
  w.One("keel_http_connections_rejected_total", "counter", "Connections refused over the connection limit.",
        h.connections_rejected);
  w.One("keel_http_connections_open", "gauge", "Connections open.", h.connections_open);
  w.One("keel_http_timeouts_total", "counter", "Connections closed because a client was too slow or idle.",
        h.timeouts);
  w.Family("keel_http_client_disconnects_total", "counter",
           "Clients that disconnected while awaiting a synchronous call, by what it did to the call.");
  w.Sample("keel_http_client_disconnects_total", Label("call", "withdrawn"), h.disconnect_withdrawn);
  w.Sample("keel_http_client_disconnects_total", Label("call", "detached"), h.disconnect_detached);
  w.One("keel_http_detached_results_total", "counter",
        "Results of detached calls received by the service (logged).", h.detached_results);
  w.One("keel_http_calls_in_flight", "gauge", "Synchronous calls awaited by clients.", h.calls_in_flight);

  w.One("keel_draining", "gauge", "1 while the service drains before stopping.", uint64_t{in.draining ? 1u : 0u});
  w.One("keel_uptime_seconds", "gauge", "Seconds since the service started.", in.uptime_seconds);
  if (!in.node.empty()) {
    w.Family("keel_node_info", "gauge", "1, labelled with this node's name in the cluster.");
    w.Sample("keel_node_info", Label("node", in.node), uint64_t{1});
  }
  return w.Take();
}

std::string RenderPoolFamilies(const std::vector<PoolMetrics>& pools) {
  Writer w;
  w.Family("keel_pool_instances", "gauge", "Instances of a module's pool, by state.");
  for (const PoolMetrics& p : pools) {
    std::string labels = Label("module", p.module) + "," + Label("digest", p.digest);
    size_t idle = p.stats.healthy_instances > p.stats.busy_instances
                      ? p.stats.healthy_instances - p.stats.busy_instances
                      : 0;
    size_t missing = p.stats.target_instances > p.stats.healthy_instances
                         ? p.stats.target_instances - p.stats.healthy_instances
                         : 0;
    w.Sample("keel_pool_instances", labels + "," + Label("state", "idle"), uint64_t{idle});
    w.Sample("keel_pool_instances", labels + "," + Label("state", "busy"), uint64_t{p.stats.busy_instances});
    w.Sample("keel_pool_instances", labels + "," + Label("state", "starting"), uint64_t{missing});
  }
  w.Family("keel_pool_queued", "gauge", "Calls waiting in a module's pool.");
  for (const PoolMetrics& p : pools) {
    w.Sample("keel_pool_queued", Label("module", p.module) + "," + Label("digest", p.digest),
             uint64_t{p.stats.queued});
  }
  w.Family("keel_pool_quarantined", "gauge", "1 while a module is quarantined after crash loops.");
  for (const PoolMetrics& p : pools) {
    w.Sample("keel_pool_quarantined", Label("module", p.module) + "," + Label("digest", p.digest),
             uint64_t{p.stats.quarantined ? 1u : 0u});
  }
  return w.Take();
}

}  // namespace keel::server

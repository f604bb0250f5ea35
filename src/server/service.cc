#include "server/service.h"

#include <unistd.h>

#include <algorithm>
#include <filesystem>

#include <boost/json.hpp>
#include <spdlog/spdlog.h>

#include "keel/wasi.h"
#include "server/http.h"

namespace keel::server {

namespace json = boost::json;

namespace {

// hostname:port of `address` ("ADDR:PORT").
std::string DefaultNodeName(const std::string& address) {
  char host[256] = {};
  gethostname(host, sizeof host - 1);
  return std::string(host) + address.substr(address.rfind(':'));
}

}  // namespace

json::array NodesArray(const std::vector<jobs::NodeRow>& nodes, std::string_view self) {
  json::array out;
  for (const jobs::NodeRow& node : nodes) {
    out.push_back({
        {"name", node.report.name},
        {"alive", node.alive},
        {"self", node.report.name == self},
        {"last_seen", FormatTime(node.last_seen)},
        {"started_at", FormatTime(node.started_at)},
        {"workers", node.report.workers},
        {"version", node.report.version},
        {"address", node.report.address},
        {"lease_ms", node.report.lease.count()},
        {"draining", node.report.draining},
        {"stopped", node.stopped},
    });
  }
  return out;
}

Service::Service(ServerOptions options)
    : options_(std::move(options)),
      blocking_(static_cast<size_t>(std::max(1, options_.blocking_threads))),
      compiling_(static_cast<size_t>(std::max(1, options_.compile_threads))) {}

Result<std::unique_ptr<Service>> Service::Create(ServerOptions options) {
  if (options.data_dir.empty()) return MakeError(ErrorCode::kInvalidArgument, "no data directory");
  std::error_code ec;
  std::filesystem::create_directories(options.data_dir, ec);
  if (ec) {
    return MakeError(ErrorCode::kInvalidArgument,
                     "cannot create data directory " + options.data_dir + ": " + ec.message());
  }
  auto service = std::unique_ptr<Service>(new Service(std::move(options)));
  Service* s = service.get();
  const ServerOptions& o = s->options_;

  jobs::StoreOptions store_options;
  if (o.commit_lanes > 0) store_options.commit_lanes = o.commit_lanes;
  auto store = jobs::OpenStore(o.store.empty() ? o.data_dir : o.store, store_options);
  if (!store) return MakeError(store.error());
  s->store_ = std::move(*store);
  auto cluster = jobs::OpenClusterStore(o.store.empty() ? o.data_dir : o.store);
  if (!cluster) return MakeError(cluster.error());
  s->cluster_ = std::move(*cluster);

  auto runtime = Runtime::Create({
      .engine = o.engine,
      .workers = o.workers,
      .detached_sink = [s](CallId id, const CallResult& result) { s->OnDetachedResult(id, result); },
      .drain_grace = o.drain_grace,
      .memory_budget_bytes = o.memory_budget_bytes,
  });
  if (!runtime) return MakeError(runtime.error());
  s->runtime_ = std::move(*runtime);

  // Guests get WASI with no preopened directory (no host files), no stdin,
  // stdout discarded and a small stderr capture.
  PoolOptions base;
  base.instances = o.instances;
  base.max_queue = o.max_queue;
  base.recycle.state = o.default_state;
  auto pool = WithWasi(std::move(base), SandboxWasi());
  if (!pool) return MakeError(pool.error());
  if (o.extend_linker) {
    auto linker = std::make_shared<Linker>(*pool->linker);
    o.extend_linker(*linker);
    pool->linker = std::move(linker);
  }
  s->registry_ = std::make_unique<Registry>(s->runtime_.get(), s->store_.get(), s->cluster_.get(), o.data_dir,
                                            std::move(*pool));
  for (const std::string& dir : o.module_dirs) {
    auto loaded = s->registry_->LoadDirectory(dir);
    if (!loaded) return MakeError(loaded.error());
    spdlog::info("loaded {} modules from {}", *loaded, dir);
  }
  auto persisted = s->registry_->LoadPersisted();
  if (!persisted) return MakeError(persisted.error());
  if (*persisted > 0) spdlog::info("loaded {} uploaded modules", *persisted);

  s->RefreshJobCounts();
  return service;
}

Result<void> Service::StartJobs() {
  node_name_ = options_.node_name.empty() ? DefaultNodeName(address_) : options_.node_name;
  Registry* registry = registry_.get();
  jobs::RunnerOptions runner_options;
  // The lease holder is the node: its jobs are found by its name.
  runner_options.name = node_name_;
  runner_options.lease = options_.lease;
  // Jobs run at most one per worker thread, whatever the pools' sizes.
  runner_options.concurrency = static_cast<size_t>(runtime_->workers());
  // An idle claim returns within this, and stopping waits for it: keep
  // shutdown quick. Submits of this process wake it at once anyway.
  runner_options.idle_wait = std::chrono::milliseconds(250);
  auto runner = jobs::Runner::Start(
      store_.get(), [registry](const std::string& digest) { return registry->PoolForDigest(digest); },
      runner_options);
  if (!runner) return MakeError(runner.error());
  runner_ = std::move(*runner);
  ClusterNode::Options node;
  node.report = {.name = node_name_,
                 .address = address_,
                 .version = KEEL_VERSION,
                 .workers = runtime_->workers(),
                 .lease = options_.lease};
  node.heartbeat_every = std::max(std::chrono::milliseconds(1), std::min(options_.lease / 5, std::chrono::milliseconds(1000)));
  node.draining = [this] { return draining(); };
  auto started = ClusterNode::Start(cluster_.get(), registry, runner_.get(), std::move(node));
  if (!started) return MakeError(started.error());
  node_ = std::move(*started);
  return {};
}

Service::~Service() {
  Stop(std::chrono::milliseconds(0));
  JoinThreads();
  node_.reset();
  runner_.reset();
  registry_.reset();
  runtime_.reset();
  store_.reset();
}

void Service::Stop(std::chrono::milliseconds grace) {
  std::call_once(stopped_, [&] {
    draining_.store(true);
    auto until = std::chrono::steady_clock::now() + grace;
    if (runner_) runner_->Stop(grace);
    // Its jobs are recorded or released: shown dead at once.
    if (node_) node_->Stop(/*left=*/true);
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(until - std::chrono::steady_clock::now());
    if (runtime_) runtime_->Shutdown(std::max(left, std::chrono::milliseconds(0)));
  });
}

void Service::JoinThreads() {
  compiling_.join();
  blocking_.join();
}

void Service::CallStarted() { http_.calls_in_flight++; }

void Service::CallEnded() {
  if (--http_.calls_in_flight == 0 && draining()) {
    MutexLock lock(calls_mu_);
    calls_done_.SignalAll();
  }
}

bool Service::WaitCallsDone(std::chrono::steady_clock::time_point deadline) {
  MutexLock lock(calls_mu_);
  while (http_.calls_in_flight.load() > 0) {
    if (!calls_done_.WaitUntil(calls_mu_, deadline) && std::chrono::steady_clock::now() >= deadline) {
      return http_.calls_in_flight.load() == 0;
    }
  }
  return true;
}

void Service::RecordTermination(Termination t) {
  spdlog::warn("call ended abnormally call_id={} module={} export={} cause={} message={}", t.call_id,
               Quote(t.module), Quote(t.export_name), t.cause, Quote(t.message));
  recent_.Add(std::move(t));
}

void Service::NoteDetaching(CallId id, std::string module, std::string export_name) {
  MutexLock lock(mu_);
  detaching_[id] = {std::move(module), std::move(export_name)};
}

void Service::ForgetDetaching(CallId id) {
  MutexLock lock(mu_);
  detaching_.erase(id);
}

void Service::OnDetachedResult(CallId id, const CallResult& result) {
  http_.detached_results++;
  std::pair<std::string, std::string> names;
  {
    MutexLock lock(mu_);
    if (auto it = detaching_.find(id); it != detaching_.end()) {
      names = std::move(it->second);
      detaching_.erase(it);
    }
  }
  spdlog::info("detached call finished call_id={} module={} export={} result={}", id, Quote(names.first),
               Quote(names.second), result ? "ok" : Quote(result.error().ToString()));
}

void Service::RefreshJobCounts() {
  auto counts = store_->CountByState();
  MutexLock lock(mu_);
  if (counts) {
    job_counts_ = *counts;
  } else {
    job_counts_.reset();
  }
}

Result<CancelOutcome> Service::CancelJob(std::string_view id, bool abort) {
  auto outcome = store_->Cancel(id);
  if (!outcome || !abort || *outcome != CancelOutcome::kDetached) return outcome;
  if (runner_ && runner_->Abort(id)) return CancelOutcome::kAborted;
  // Running on another node (or about to start here): its owner aborts it
  // at its next heartbeat, woken by NOTIFY on PostgreSQL.
  if (auto requested = cluster_->RequestAbort(id); !requested) return MakeError(requested.error());
  return outcome;
}

void Service::SetDraining() {
  draining_.store(true);
  if (runner_) runner_->StopClaiming();
}

Result<std::string> Service::NodesJson() {
  auto nodes = cluster_->Nodes();
  if (!nodes) return MakeError(nodes.error());
  return json::serialize(json::value{{"nodes", NodesArray(*nodes, node_name_)}});
}

double Service::uptime_seconds() const {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - started_).count();
}

namespace {

std::string PoolLabel(const Registry::PoolView& view) {
  if (view.names.empty()) return view.pool->module()->name();
  std::string label;
  for (const std::string& name : view.names) {
    if (!label.empty()) label += ',';
    label += name;
  }
  return label;
}

}  // namespace

MetricsInput Service::CollectMetrics() {
  MetricsInput in;
  in.runtime = runtime_->Metrics();
  in.http = http_.Snapshot();
  {
    MutexLock lock(mu_);
    in.job_states = job_counts_;
  }
  if (runner_) in.runner = runner_->Stats();
  in.commits = store_->commit_stats();
  in.draining = draining();
  in.node = node_name_;
  in.uptime_seconds = uptime_seconds();
  return in;
}

boost::asio::awaitable<Result<std::shared_ptr<const ModuleEntry>>> Service::LoadModule(
    std::string name) {
  if (auto entry = registry_->Find(name)) co_return entry;
  auto load = [this, name = std::move(name)] { return registry_->Load(name); };
  co_return co_await OffThread(compiling_, std::move(load));
}

Service::PoolsRendering Service::RenderPools() {
  std::vector<PoolMetrics> pools;
  json::array status;
  for (const Registry::PoolView& view : registry_->Pools()) {
    PoolMetrics p{PoolLabel(view), view.pool->module()->digest(), view.pool->Stats()};
    status.push_back({
        {"module", p.module},
        {"digest", p.digest},
        {"state", ToString(view.state)},
        {"target", p.stats.target_instances},
        {"healthy", p.stats.healthy_instances},
        {"busy", p.stats.busy_instances},
        {"queued", p.stats.queued},
        {"quarantined", p.stats.quarantined},
        {"quarantine_reason", p.stats.quarantine_reason},
        {"quarantine_remaining_ms", p.stats.quarantine_remaining.count()},
    });
    pools.push_back(std::move(p));
  }
  return {RenderPoolFamilies(pools), json::serialize(status)};
}

boost::asio::awaitable<std::shared_ptr<const Service::PoolsRendering>> Service::CachedPools() {
  auto now = std::chrono::steady_clock::now();
  {
    MutexLock lock(pools_mu_);
    // One rendering at a time; meanwhile the previous one is served.
    if (pools_ && (now - pools_at_ < std::chrono::seconds(1) || rendering_pools_)) co_return pools_;
    rendering_pools_ = true;
  }
  auto render = [this] { return std::make_shared<const PoolsRendering>(RenderPools()); };
  std::shared_ptr<const PoolsRendering> pools = co_await OffThread(*this, std::move(render));
  MutexLock lock(pools_mu_);
  pools_ = pools;
  pools_at_ = std::chrono::steady_clock::now();
  rendering_pools_ = false;
  co_return pools;
}

std::string Service::StatusJson(std::string_view pools_json) {
  MetricsInput m = CollectMetrics();
  const MetricsSnapshot& r = m.runtime;
  json::object out;
  out["uptime_s"] = m.uptime_seconds;
  out["draining"] = m.draining;
  out["workers"] = runtime_->workers();
  out["listen"] = address_;
  out["node"] = node_name_;
  if (node_) out["nodes"] = NodesArray(node_->nodes(), node_name_);
  out["runtime"] = {
      {"submitted", r.submitted},
      {"queued", r.queued},
      {"running", r.running},
      {"instances_live", r.instances_live},
      {"ok", r.resolved.ok},
      {"traps", r.resolved.traps_total()},
      {"deadline", r.resolved.deadline_queued + r.resolved.deadline_running},
      {"detached", r.resolved.detached},
      {"cancelled", r.resolved.cancelled_queued},
      {"errors", r.resolved.errors},
      {"rejected_overloaded", r.rejected_overloaded},
      {"poisoned", r.instances.poisoned},
      {"replaced", r.instances.replaced},
      {"resets", r.resets.pages + r.resets.full},
      {"reset_fallbacks", r.resets.fresh_fallback},
      {"reset_p50_us", r.reset_time.Quantile(0.5) * 1e6},
      {"p50_ms", r.end_to_end.Quantile(0.5) * 1e3},
      {"p99_ms", r.end_to_end.Quantile(0.99) * 1e3},
      {"memory_budget_bytes", r.memory_budget.limit_bytes},
      {"memory_budget_used_bytes", r.memory_budget.used_bytes},
  };
  json::object jobs;
  if (m.job_states) {
    for (size_t i = 0; i < jobs::kJobStateCount; ++i) {
      jobs[jobs::ToString(static_cast<jobs::JobState>(i))] = (*m.job_states)[i];
    }
  }
  out["jobs"] = std::move(jobs);
  out["http"] = {
      {"connections_open", m.http.connections_open},
      {"calls_in_flight", m.http.calls_in_flight},
      {"client_disconnects", m.http.disconnect_detached + m.http.disconnect_withdrawn},
      {"detached_results", m.http.detached_results},
  };
  json::array recent;
  for (const Termination& t : recent_.Newest()) {
    recent.push_back({
        {"time", FormatTime(t.time)},
        {"call_id", t.call_id},
        {"module", t.module},
        {"export", t.export_name},
        {"cause", t.cause},
        {"message", t.message},
    });
  }
  out["recent"] = std::move(recent);
  json::array series;
  for (const Sample& s : sampler_.Samples()) {
    series.push_back({
        {"t", s.unix_ms},
        {"calls_per_s", s.calls_per_s},
        {"ok_per_s", s.ok_per_s},
        {"requests_per_s", s.requests_per_s},
        {"p50_ms", s.p50_ms},
        {"p99_ms", s.p99_ms},
        {"trap", s.trap},
        {"deadline", s.deadline},
        {"detached", s.detached},
        {"cancelled", s.cancelled},
        {"error", s.error},
        {"other", s.other},
    });
  }
  out["series"] = std::move(series);
  // The pools, already serialized, go in as the last member.
  std::string text = json::serialize(out);
  text.insert(text.size() - 1, std::string(",\"pools\":").append(pools_json));
  return text;
}

}  // namespace keel::server

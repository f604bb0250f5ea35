// The state behind the HTTP API: job store, runtime, module registry, job
// runner, counters. Knows nothing of sockets; the API handlers use it.
#ifndef KEEL_SERVER_SERVICE_H_
#define KEEL_SERVER_SERVICE_H_

#include <atomic>
#include <chrono>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <unordered_map>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/thread_pool.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/json/value.hpp>

#include "base/mutex.h"
#include "jobs/cluster_store.h"
#include "jobs/runner.h"
#include "jobs/store.h"
#include "keel/runtime.h"
#include "server/cluster_node.h"
#include "server/metrics_text.h"
#include "server/options.h"
#include "server/registry.h"
#include "server/stats.h"

namespace keel::server {

class Service {
 public:
  // Opens the stores, starts the runtime and loads the modules (--modules
  // directories, then the cluster store's uploaded names).
  [[nodiscard]] static Result<std::unique_ptr<Service>> Create(ServerOptions options);
  // Once set_address() is known: starts the job runner, under the node's
  // name (--node-name, default hostname:port), and the node's heartbeat.
  [[nodiscard]] Result<void> StartJobs();
  // Stop() with no grace, then releases everything.
  ~Service();

  // Stops the job runner and shuts the runtime down: running calls get
  // `grace` to finish. Idempotent.
  void Stop(std::chrono::milliseconds grace);

  const ServerOptions& options() const { return options_; }
  Runtime& runtime() { return *runtime_; }
  Registry& registry() { return *registry_; }
  jobs::JobStore& store() { return *store_; }
  // Cancels job `id` (JobStore::Cancel); with `abort`, a run of it in this
  // process is interrupted too (kAborted) instead of finishing (kDetached).
  // Blocking: call off the HTTP threads.
  [[nodiscard]] Result<CancelOutcome> CancelJob(std::string_view id, bool abort);
  HttpStats& http() { return http_; }
  Sampler& sampler() { return sampler_; }
  RecentTerminations& recent() { return recent_; }
  // Store queries and commits.
  boost::asio::thread_pool& blocking() { return blocking_; }
  // Module uploads: compiling takes long, and must not hold up queries.
  boost::asio::thread_pool& compiling() { return compiling_; }
  // The module `name` (Registry::Load), compiled on the compile threads
  // first when this node has not compiled it yet: names uploaded through
  // other nodes are compiled at their first use here.
  boost::asio::awaitable<Result<std::shared_ptr<const ModuleEntry>>> LoadModule(std::string name);
  // Waits for both pools' work to finish (shutdown).
  void JoinThreads();

  // Where the service listens ("ADDR:PORT"), once bound; set before the
  // first request.
  void set_address(std::string address) { address_ = std::move(address); }

  bool draining() const { return draining_.load(); }
  // Refuses new requests (the server's part) and claims no more jobs.
  void SetDraining();

  const std::string& node_name() const { return node_name_; }
  // {"nodes": [...]} of GET /v1/nodes: a store query, so off the HTTP threads.
  [[nodiscard]] Result<std::string> NodesJson();

  // Counts, logs and remembers a call that ended other than with a result.
  void RecordTermination(Termination t);
  // A call whose client left is about to be cancelled: its detached
  // result will be logged with these names. Forget() if it was not detached.
  void NoteDetaching(CallId id, std::string module, std::string export_name);
  void ForgetDetaching(CallId id);

  // Synchronous calls awaited by clients (HttpStats::calls_in_flight);
  // WaitCallsDone() returns once there are none, or at `deadline` (false).
  void CallStarted();
  void CallEnded();
  bool WaitCallsDone(std::chrono::steady_clock::time_point deadline);

  // Job counts by state, refreshed by RefreshJobCounts() (a store query,
  // so never on an HTTP thread).
  void RefreshJobCounts();
  // Everything /metrics shows but the pools (O(1) in the modules).
  MetricsInput CollectMetrics();
  // What /metrics and /v1/status show of every pool: O(modules), so it is
  // rendered off the HTTP threads and at most once a second; requests in
  // between get the last rendering.
  struct PoolsRendering {
    std::string metrics;      // RenderPoolFamilies
    std::string status_json;  // the JSON array of /v1/status "pools"
  };
  boost::asio::awaitable<std::shared_ptr<const PoolsRendering>> CachedPools();
  // The status page's data (see status_page.h), with `pools_json` as its
  // "pools".
  std::string StatusJson(std::string_view pools_json);

  double uptime_seconds() const;

 private:
  explicit Service(ServerOptions options);
  void OnDetachedResult(CallId id, const CallResult& result);

  PoolsRendering RenderPools();

  ServerOptions options_;
  std::string address_;
  std::chrono::steady_clock::time_point started_ = std::chrono::steady_clock::now();
  std::atomic<bool> draining_{false};
  HttpStats http_;
  Sampler sampler_;
  RecentTerminations recent_;
  boost::asio::thread_pool blocking_;
  boost::asio::thread_pool compiling_;
  // The last RenderPools().
  Mutex pools_mu_;
  std::shared_ptr<const PoolsRendering> pools_ GUARDED_BY(pools_mu_);
  std::chrono::steady_clock::time_point pools_at_ GUARDED_BY(pools_mu_);
  bool rendering_pools_ GUARDED_BY(pools_mu_) = false;

  std::unique_ptr<jobs::JobStore> store_;
  std::unique_ptr<Runtime> runtime_;
  std::unique_ptr<Registry> registry_;
  std::unique_ptr<jobs::ClusterStore> cluster_;
  std::unique_ptr<jobs::Runner> runner_;
  std::unique_ptr<ClusterNode> node_;
  std::string node_name_;
  std::once_flag stopped_;

  Mutex mu_;
  std::unordered_map<CallId, std::pair<std::string, std::string>> detaching_ GUARDED_BY(mu_);
  std::optional<jobs::StateCounts> job_counts_ GUARDED_BY(mu_);

  Mutex calls_mu_;
  CondVar calls_done_;  // signalled when calls_in_flight drops to 0 while draining
};

// The nodes as GET /v1/nodes and the status page show them; `self` names
// this node.
boost::json::array NodesArray(const std::vector<jobs::NodeRow>& nodes, std::string_view self);

// Runs `fn` (which may block: store commits, compilation) on `pool` (the
// service's blocking threads by default); co_await the result, which
// resumes the coroutine on its own executor.
//
// GCC 12 destroys temporaries of a full-expression holding a co_await
// twice; so pass a named function object (std::move(fn)), never a lambda
// written in place.
template <typename F>
boost::asio::awaitable<std::invoke_result_t<std::decay_t<F>&>> OffThread(boost::asio::thread_pool& pool, F&& fn) {
  using R = std::invoke_result_t<std::decay_t<F>&>;
  return boost::asio::co_spawn(
      pool, [fn = std::forward<F>(fn)]() mutable -> boost::asio::awaitable<R> { co_return fn(); },
      boost::asio::use_awaitable);
}
template <typename F>
boost::asio::awaitable<std::invoke_result_t<std::decay_t<F>&>> OffThread(Service& service, F&& fn) {
  return OffThread(service.blocking(), std::forward<F>(fn));
}

}  // namespace keel::server

#endif  // KEEL_SERVER_SERVICE_H_

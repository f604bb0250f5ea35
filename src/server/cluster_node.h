// This process as a node of the cluster: one thread that heartbeats the node
// row, keeps the module registry in step with the cluster store (woken by
// the store's change notifications, and at every heartbeat as a safety net
// for a lost notification), interrupts running jobs other nodes asked to
// abort, and now and then deletes module bytes nothing refers to.
#ifndef KEEL_SERVER_CLUSTER_NODE_H_
#define KEEL_SERVER_CLUSTER_NODE_H_

#include <atomic>
#include <chrono>
#include <functional>
#include <string>
#include <thread>
#include <vector>

#include "base/mutex.h"
#include "jobs/cluster_store.h"
#include "jobs/runner.h"
#include "server/registry.h"

namespace keel::server {

class ClusterNode {
 public:
  struct Options {
    jobs::NodeReport report;  // name, address, version, workers, lease
    std::chrono::milliseconds heartbeat_every{1000};
    std::chrono::milliseconds garbage_every{std::chrono::minutes(1)};
    std::function<bool()> draining;  // reported in each heartbeat
  };

  // Records the first heartbeat, then starts the thread. `cluster`,
  // `registry` and `runner` must outlive Stop().
  [[nodiscard]] static Result<std::unique_ptr<ClusterNode>> Start(jobs::ClusterStore* cluster,
                                                                  Registry* registry,
                                                                  jobs::Runner* runner, Options options);
  ~ClusterNode() { Stop(/*left=*/false); }

  // Ends the thread; with `left`, marks the node stopped (shown dead at once).
  // Idempotent.
  void Stop(bool left);

  const std::string& name() const { return options_.report.name; }
  // The nodes as of the last heartbeat.
  std::vector<jobs::NodeRow> nodes() const EXCLUDES(mu_);

 private:
  ClusterNode(jobs::ClusterStore* cluster, Registry* registry, jobs::Runner* runner, Options options)
      : cluster_(cluster), registry_(registry), runner_(runner), options_(std::move(options)) {}
  void Loop();
  void Heartbeat(bool first);
  void AbortRequested();

  jobs::ClusterStore* cluster_;
  Registry* registry_;
  jobs::Runner* runner_;
  Options options_;
  std::atomic<bool> stopping_{false};
  mutable Mutex mu_;
  std::vector<jobs::NodeRow> nodes_ GUARDED_BY(mu_);
  std::thread thread_;
};

}  // namespace keel::server

#endif  // KEEL_SERVER_CLUSTER_NODE_H_

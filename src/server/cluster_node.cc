#include "server/cluster_node.h"

#include <spdlog/spdlog.h>

namespace keel::server {

using SteadyClock = std::chrono::steady_clock;

Result<std::unique_ptr<ClusterNode>> ClusterNode::Start(jobs::ClusterStore* cluster, Registry* registry,
                                                        jobs::Runner* runner, Options options) {
  if (Result<void> first = cluster->Heartbeat(options.report, /*first=*/true); !first) {
    return MakeError(first.error());
  }
  auto node = std::unique_ptr<ClusterNode>(new ClusterNode(cluster, registry, runner, std::move(options)));
  node->Heartbeat(/*first=*/false);  // fills nodes()
  node->thread_ = std::thread([n = node.get()] { n->Loop(); });
  return node;
}

void ClusterNode::Stop(bool left) {
  if (stopping_.exchange(true)) return;
  cluster_->Poke();
  thread_.join();
  if (!left) return;
  if (Result<void> done = cluster_->MarkStopped(name()); !done) {
    spdlog::warn("node {}: cannot record that it stopped: {}", name(), done.error().ToString());
  }
}

void ClusterNode::Loop() {
  auto next_heartbeat = SteadyClock::now() + options_.heartbeat_every;
  auto next_garbage = SteadyClock::now() + options_.garbage_every;
  uint64_t seen = cluster_->changes();
  while (!stopping_.load()) {
    auto now = SteadyClock::now();
    if (now >= next_heartbeat) {
      Heartbeat(/*first=*/false);
      next_heartbeat = now + options_.heartbeat_every;
    }
    // Every heartbeat too: a notification lost with a dropped connection
    // is caught within one.
    if (Result<uint64_t> synced = registry_->Sync(); !synced) {
      spdlog::warn("node {}: module registry sync failed: {}", name(), synced.error().ToString());
    }
    AbortRequested();
    if (now >= next_garbage) {
      (void)registry_->CollectGarbage();
      next_garbage = now + options_.garbage_every;
    }
    auto wait = std::chrono::duration_cast<std::chrono::milliseconds>(next_heartbeat - SteadyClock::now());
    seen = cluster_->Wait(seen, std::max(wait, std::chrono::milliseconds(1)));
  }
}

void ClusterNode::Heartbeat(bool first) {
  jobs::NodeReport report = options_.report;
  report.draining = options_.draining && options_.draining();
  if (Result<void> done = cluster_->Heartbeat(report, first); !done) {
    spdlog::warn("node {}: heartbeat failed: {}", name(), done.error().ToString());
  }
  if (auto nodes = cluster_->Nodes(); nodes) {
    MutexLock lock(mu_);
    nodes_ = std::move(*nodes);
  }
}

std::vector<jobs::NodeRow> ClusterNode::nodes() const {
  MutexLock lock(mu_);
  return nodes_;
}

void ClusterNode::AbortRequested() {
  auto ids = cluster_->AbortRequests(name());
  if (!ids) {
    spdlog::warn("node {}: reading abort requests failed: {}", name(), ids.error().ToString());
    return;
  }
  for (const std::string& id : *ids) {
    if (runner_->Abort(id)) spdlog::info("node {}: job {} aborted at another node's request", name(), id);
  }
}

}  // namespace keel::server

// The cluster's shared state, kept next to the job queue (schema version 3):
// the module registry (names -> digest, state policy, settings, a version per
// change), the nodes with their heartbeats, and abort requests for jobs that
// run on another node. On PostgreSQL every keel process sharing the database
// sees the same state and is told of changes by NOTIFY keel_cluster; on
// SQLite it is one node's durable registry.
#ifndef KEEL_JOBS_CLUSTER_STORE_H_
#define KEEL_JOBS_CLUSTER_STORE_H_

#include <chrono>
#include <cstdint>
#include <memory>
#include <set>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "jobs/internal.h"
#include "jobs/store.h"
#include "keel/status.h"

namespace keel::jobs {

// One module name. Copyable value.
struct ModuleName {
  std::string name;
  std::string digest;         // hex SHA-256 of bytes in keel_modules
  std::string state;          // the name's state policy, as text
  std::string settings = "{}";  // per-module settings, JSON text
  uint64_t version = 0;       // the registry version of its last change
  TimePoint updated_at;
};

struct RegistrySnapshot {
  uint64_t version = 0;  // of the whole registry: bumped by every change
  std::vector<ModuleName> names;  // sorted by name
};

// What a node reports of itself on every heartbeat.
struct NodeReport {
  std::string name;
  std::string address;  // where it listens
  std::string version;  // keel's
  int64_t workers = 0;
  std::chrono::milliseconds lease{5000};  // silent longer than this: dead
  bool draining = false;
};

// A node as the store has it. Copyable value.
struct NodeRow {
  NodeReport report;
  TimePoint started_at;  // of its current run (reset when it starts again)
  TimePoint last_seen;
  bool stopped = false;  // left cleanly
  bool alive = false;    // heartbeat within its lease (store's clock), not stopped
};

// Thread-safe.
class ClusterStore {
 public:
  virtual ~ClusterStore() = default;

  // Stores `bytes` (whose SHA-256 is `digest`) and makes `name` refer to them
  // with `state` and `settings`, in one transaction. Returns the new version.
  [[nodiscard]] virtual Result<uint64_t> SetName(std::string_view name, std::string_view digest,
                                                 std::span<const uint8_t> bytes,
                                                 std::string_view state,
                                                 std::string_view settings) = 0;
  // Removes `name`. Returns the digest it referred to; kNotFound if none.
  [[nodiscard]] virtual Result<std::string> DeleteName(std::string_view name) = 0;
  // The current registry version (cheap: one row).
  [[nodiscard]] virtual Result<uint64_t> RegistryVersion() = 0;
  [[nodiscard]] virtual Result<RegistrySnapshot> Names() = 0;
  // Deletes the bytes that a name referred to once and that no name and no
  // job refers to now, but for those in `keep` (e.g. what this process's
  // unstored names use). Returns how many modules were deleted.
  [[nodiscard]] virtual Result<int64_t> DeleteUnreferencedModules(
      const std::set<std::string>& keep) = 0;

  // Records a heartbeat of `node` (started_at: now, on the first of a run).
  [[nodiscard]] virtual Result<void> Heartbeat(const NodeReport& node, bool first) = 0;
  // The node left cleanly: shown dead at once.
  [[nodiscard]] virtual Result<void> MarkStopped(std::string_view name) = 0;
  // Sorted by name.
  [[nodiscard]] virtual Result<std::vector<NodeRow>> Nodes() = 0;

  // Asks the owner of running job `id` to abort it.
  [[nodiscard]] virtual Result<void> RequestAbort(std::string_view id) = 0;
  // Ids of jobs running under lease holder `runner` with an abort requested;
  // forgets requests of jobs no longer running.
  [[nodiscard]] virtual Result<std::vector<std::string>> AbortRequests(std::string_view runner) = 0;

  // A counter that grows whenever this process learns that the shared state
  // changed (its own writes; on PostgreSQL, NOTIFY from any process, and a
  // reconnect of the listener). Wait() blocks until it differs from `seen`
  // or `timeout` passes; returns its value then.
  uint64_t changes() const { return changes_.generation(); }
  uint64_t Wait(uint64_t seen, std::chrono::milliseconds timeout) {
    changes_.Wait(seen, std::chrono::steady_clock::now() + timeout);
    return changes_.generation();
  }
  // Grows the counter, waking Wait() (e.g. to stop a waiting thread).
  void Poke() { changes_.Notify(); }

 protected:
  WakeSignal changes_;  // the counter, grown by each store's writes and listener
};

// The cluster state in the database `url_or_dir` names (as OpenStore), whose
// schema OpenStore has brought to version 3 or later. kUnavailable if the
// database cannot be opened.
[[nodiscard]] Result<std::unique_ptr<ClusterStore>> OpenClusterStore(std::string_view url_or_dir);

}  // namespace keel::jobs

#endif  // KEEL_JOBS_CLUSTER_STORE_H_

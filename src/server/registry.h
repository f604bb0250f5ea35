// The service's modules: name -> compiled module and its pool, plus
// digest -> pool so that a job always runs the exact module it was
// submitted with, even after its name was replaced or deleted.
//
// Persistence: uploaded names live in the cluster store
// (jobs/cluster_store.h) with their bytes, state policy and a version per
// change; on PostgreSQL every node shares them. Sync() brings this node's
// names to the store's, and is called when the store reports a change; a
// name this node did not upload is compiled at its first use here
// (Load()), so that a node compiles only what it serves. Names a keel
// before the cluster store kept as files <data>/modules/<name> are moved
// into the store at start. Bytes no name and no job refers to any more are
// deleted from the store.
//
// Pools are per digest and state policy: names with the same bytes and
// policy share one; a job runs on a pool of its digest (a name's, if one
// refers to it, else one with the default policy). Modules loaded from
// --modules directories are not persisted; they are loaded again at every
// start, and an uploaded name of the same name overrides them.
#ifndef KEEL_SERVER_REGISTRY_H_
#define KEEL_SERVER_REGISTRY_H_

#include <chrono>
#include <filesystem>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "base/mutex.h"
#include "jobs/cluster_store.h"
#include "jobs/store.h"
#include "keel/runtime.h"

namespace keel::server {

struct ModuleEntry {
  std::string name;
  std::shared_ptr<const Module> module;
  std::shared_ptr<Pool> pool;
  StatePolicy state = StatePolicy::kReset;  // what a call sees of earlier calls
  bool persisted = false;  // uploaded (true) or loaded from a --modules directory
  uint64_t version = 0;    // registry version of the upload (persisted names)
  std::chrono::system_clock::time_point loaded_at;
};

struct PutResult {
  std::shared_ptr<const ModuleEntry> entry;
  bool created = false;  // false: the name existed (replaced or unchanged)
};

// Thread-safe. `runtime`, `store` and `cluster` must outlive it. Its pools live as
// long as the runtime: destroy it after the runtime has shut down (closing
// pools of a stopped runtime would leave them referenced by its workers).
class Registry {
 public:
  // `pool_options` applies to every pool (linker, host state, limits); its
  // recycle.state is the policy of names put without one.
  Registry(Runtime* runtime, jobs::JobStore* store, jobs::ClusterStore* cluster,
           std::string data_dir, PoolOptions pool_options);

  // Module names: 1-128 of [A-Za-z0-9._-], not starting with '.' or '-'.
  static bool ValidName(std::string_view name);

  // Loads every *.wasm of `dir` under its stem, skipping hostile_*.
  // Returns how many were loaded; kNotFound if `dir` cannot be read; a
  // module that fails to load is an error naming it.
  [[nodiscard]] Result<size_t> LoadDirectory(const std::string& dir);
  // Moves names persisted as files in <data>/modules into the cluster
  // store (unless the store has the name already; the files go to
  // <data>/modules.migrated), then Sync()s. Returns how many names the
  // store has. Names whose bytes are missing or fail to compile are skipped
  // with a warning.
  [[nodiscard]] Result<size_t> LoadPersisted();

  // Makes this node's uploaded names those of the cluster store, if its
  // version changed since the last Sync: names new or changed become known
  // but unloaded (compiled by their first Load), names deleted are dropped.
  // Calls queued on a replaced or dropped module still run on it. Returns
  // the version synced to; store errors.
  [[nodiscard]] Result<uint64_t> Sync();
  // Deletes module bytes that no name and no job refers to any more.
  [[nodiscard]] Result<int64_t> CollectGarbage();

  // Validates and compiles `bytes`, creates its pool, stores the bytes and
  // (if `persist`) the name, then makes `name` refer to it. Calls already
  // queued on a replaced module still run on it.
  // kInvalidArgument (bad name), kInvalidModule, kLinkError (imports the
  // service does not provide), kResourceExhausted, store errors.
  // A name put again with the same bytes and policy is unchanged.
  [[nodiscard]] Result<PutResult> Put(std::string_view name, std::span<const uint8_t> bytes,
                                      bool persist, std::optional<StatePolicy> state = std::nullopt);
  // The compiled module of `name`; nullptr if unknown or not loaded yet
  // (then `*unloaded`, if given, is set: Load() compiles it).
  std::shared_ptr<const ModuleEntry> Find(std::string_view name, bool* unloaded = nullptr) const;
  // The module of `name`, compiled now if this node has not yet (blocks:
  // call off the HTTP threads). kNotFound if unknown; kInvalidModule,
  // kLinkError, kResourceExhausted or store errors when it cannot be
  // compiled here.
  [[nodiscard]] Result<std::shared_ptr<const ModuleEntry>> Load(std::string_view name);
  // Compiled names, sorted.
  std::vector<std::shared_ptr<const ModuleEntry>> List() const;
  // Names known from the store and not compiled on this node, sorted.
  std::vector<jobs::ModuleName> Unloaded() const;
  // Returns the digest the name referred to. kNotFound if unknown; errors
  // removing the persisted name.
  [[nodiscard]] Result<std::string> Remove(std::string_view name);

  // The pool of the module with `digest`: a named module's, or one built
  // from the store's bytes. kNotFound if the store has no such module.
  [[nodiscard]] Result<std::shared_ptr<Pool>> PoolForDigest(const std::string& digest);

  // Closes pools that no name refers to once they have had no calls for
  // `idle`. Call periodically.
  void Reap(std::chrono::steady_clock::duration idle);

  // Every pool alive, with the names that refer to it (possibly none), in
  // O(modules log modules).
  struct PoolView {
    std::shared_ptr<Pool> pool;
    std::vector<std::string> names;
    StatePolicy state = StatePolicy::kReset;
  };
  std::vector<PoolView> Pools() const;

 private:
  struct DigestPool {
    std::shared_ptr<Pool> pool;
    int names = 0;  // names referring to it
    std::chrono::steady_clock::time_point idle_since;
  };
  struct PoolKey {
    std::string digest;
    StatePolicy state;
    auto operator<=>(const PoolKey&) const = default;
  };
  static PoolKey KeyOf(const ModuleEntry& entry) { return {entry.module->digest(), entry.state}; }
  [[nodiscard]] Result<std::shared_ptr<Pool>> MakePool(std::shared_ptr<const Module> module,
                                                       StatePolicy state);
  // The pool for `key` (an existing one, else a new one, then `made`).
  [[nodiscard]] Result<std::shared_ptr<Pool>> PoolFor(const PoolKey& key,
                                                      const std::shared_ptr<const Module>& module,
                                                      bool& made) EXCLUDES(mu_);
  // Makes `name` refer to `module` on `pool`, replacing `previous`.
  std::shared_ptr<const ModuleEntry> Install(std::string_view name, std::shared_ptr<const Module> module,
                                             std::shared_ptr<Pool> pool, bool new_pool,
                                             StatePolicy policy, bool persist, uint64_t version,
                                             const std::shared_ptr<const ModuleEntry>& previous)
      EXCLUDES(mu_);
  // Sync() of one name of the store.
  void SyncName(const jobs::ModuleName& name) REQUIRES(write_mu_);
  // Load() of a name in unloaded_.
  [[nodiscard]] Result<std::shared_ptr<const ModuleEntry>> Compile(const jobs::ModuleName& name)
      REQUIRES(write_mu_);
  // Moves the name file `path` into the store; false if skipped.
  bool MigrateFile(const std::filesystem::path& path, const jobs::RegistrySnapshot& snapshot);
  // Takes a reference to `key`'s pool, adding `pool` if there is none
  // yet (then true).
  bool Reference(const PoolKey& key, const std::shared_ptr<Pool>& pool) REQUIRES(mu_);
  void Unreference(const PoolKey& key) REQUIRES(mu_);

  Runtime* runtime_;
  jobs::JobStore* store_;
  jobs::ClusterStore* cluster_;
  std::string modules_dir_;
  PoolOptions pool_options_;

  // Serializes Put/Remove/Sync so that store and memory agree; taken
  // before mu_.
  Mutex write_mu_ ACQUIRED_BEFORE(mu_);
  uint64_t synced_version_ GUARDED_BY(write_mu_) = 0;
  bool synced_ GUARDED_BY(write_mu_) = false;
  mutable Mutex mu_;
  std::map<std::string, std::shared_ptr<const ModuleEntry>, std::less<>> names_ GUARDED_BY(mu_);
  // Names of the store not compiled here yet; never also in names_.
  std::map<std::string, jobs::ModuleName, std::less<>> unloaded_ GUARDED_BY(mu_);
  std::map<PoolKey, DigestPool> digests_ GUARDED_BY(mu_);
};

}  // namespace keel::server

#endif  // KEEL_SERVER_REGISTRY_H_

#include "server/registry.h"

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <set>
#include <system_error>

#include <spdlog/spdlog.h>

#include "base/file.h"

namespace keel::server {

namespace fs = std::filesystem;

namespace {

constexpr std::string_view kSkippedPrefix = "hostile_";

bool IsHexDigest(std::string_view text) {
  return text.size() == 64 &&
         std::all_of(text.begin(), text.end(), [](char c) { return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'); });
}

}  // namespace

Registry::Registry(Runtime* runtime, jobs::JobStore* store, jobs::ClusterStore* cluster,
                   std::string data_dir, PoolOptions pool_options)
    : runtime_(runtime),
      store_(store),
      cluster_(cluster),
      modules_dir_((fs::path(data_dir) / "modules").string()),
      pool_options_(std::move(pool_options)) {}

bool Registry::ValidName(std::string_view name) {
  if (name.empty() || name.size() > 128 || name[0] == '.' || name[0] == '-') return false;
  return std::all_of(name.begin(), name.end(), [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' ||
           c == '_' || c == '-';
  });
}

Result<std::shared_ptr<Pool>> Registry::MakePool(std::shared_ptr<const Module> module,
                                                 StatePolicy state) {
  PoolOptions options = pool_options_;
  options.recycle.state = state;
  return runtime_->CreatePool(std::move(module), std::move(options));
}

bool Registry::Reference(const PoolKey& key, const std::shared_ptr<Pool>& pool) {
  auto [it, added] = digests_.try_emplace(key, DigestPool{pool, 0, {}});
  it->second.names++;
  return added;
}

void Registry::Unreference(const PoolKey& key) {
  auto it = digests_.find(key);
  if (it == digests_.end()) return;
  // Kept for jobs and calls already queued; Reap() closes it once idle.
  if (--it->second.names == 0) it->second.idle_since = std::chrono::steady_clock::now();
}

Result<PutResult> Registry::Put(std::string_view name, std::span<const uint8_t> bytes, bool persist,
                                std::optional<StatePolicy> state) {
  const StatePolicy policy = state.value_or(pool_options_.recycle.state);
  if (!ValidName(name)) {
    return MakeError(ErrorCode::kInvalidArgument,
                     "invalid module name '" + std::string(name) +
                         "': use 1-128 of A-Z a-z 0-9 . _ -, not starting with . or -");
  }
  MutexLock write_lock(write_mu_);
  std::shared_ptr<const ModuleEntry> previous = Find(name);
  // A --modules file does not override an uploaded name.
  if (previous && previous->persisted && !persist) return PutResult{previous, false};
  auto module = runtime_->Compile(bytes, {.name = std::string(name)});
  if (!module) return MakeError(module.error());
  const std::string& digest = (*module)->digest();
  if (previous && previous->module->digest() == digest && previous->persisted == persist &&
      previous->state == policy) {
    return PutResult{previous, false};
  }
  bool new_pool = false;
  auto pool = PoolFor({digest, policy}, *module, new_pool);
  if (!pool) return MakeError(pool.error());
  auto fail = [&](Error error) -> Result<PutResult> {
    if (new_pool) (*pool)->Close();
    return MakeError(std::move(error));
  };
  uint64_t version = 0;
  if (persist) {
    // The bytes and the name in one transaction: visible to every node.
    auto set = cluster_->SetName(name, digest, bytes, ToString(policy), "{}");
    if (!set) return fail(set.error());
    version = *set;
  } else if (auto stored = store_->PutModule(bytes); !stored) {
    return fail(stored.error());
  }
  auto entry = Install(name, *module, *pool, new_pool, policy, persist, version, previous);
  if (persist && previous && previous->persisted && previous->module->digest() != digest) {
    (void)CollectGarbage();
  }
  return PutResult{entry, previous == nullptr};
}

Result<std::shared_ptr<Pool>> Registry::PoolFor(const PoolKey& key,
                                                const std::shared_ptr<const Module>& module,
                                                bool& made) {
  // Reuse the pool of identical bytes and policy (another name, or a job's
  // module).
  {
    MutexLock lock(mu_);
    if (auto it = digests_.find(key); it != digests_.end()) return it->second.pool;
  }
  made = true;
  return MakePool(module, key.state);
}

std::shared_ptr<const ModuleEntry> Registry::Install(
    std::string_view name, std::shared_ptr<const Module> module, std::shared_ptr<Pool> pool,
    bool new_pool, StatePolicy policy, bool persist, uint64_t version,
    const std::shared_ptr<const ModuleEntry>& previous) {
  auto entry = std::make_shared<ModuleEntry>();
  entry->name = std::string(name);
  entry->module = std::move(module);
  entry->pool = pool;
  entry->state = policy;
  entry->persisted = persist;
  entry->version = version;
  entry->loaded_at = std::chrono::system_clock::now();
  const PoolKey key = KeyOf(*entry);
  MutexLock lock(mu_);
  // A job may have built a pool for these bytes in the meantime: keep one.
  if (!Reference(key, pool) && new_pool) {
    pool->Close();
    entry->pool = digests_[key].pool;
  }
  if (previous) Unreference(KeyOf(*previous));
  unloaded_.erase(entry->name);
  names_[entry->name] = entry;
  return entry;
}

std::shared_ptr<const ModuleEntry> Registry::Find(std::string_view name, bool* unloaded) const {
  MutexLock lock(mu_);
  auto it = names_.find(name);
  if (it != names_.end()) return it->second;
  if (unloaded) *unloaded = unloaded_.contains(name);
  return nullptr;
}

Result<std::shared_ptr<const ModuleEntry>> Registry::Load(std::string_view name) {
  if (auto entry = Find(name)) return entry;
  MutexLock write_lock(write_mu_);
  std::optional<jobs::ModuleName> known;
  {
    MutexLock lock(mu_);
    // Compiled by a Load that held write_mu_ before this one.
    if (auto it = names_.find(name); it != names_.end()) return it->second;
    if (auto it = unloaded_.find(name); it != unloaded_.end()) known = it->second;
  }
  if (!known) return MakeError(ErrorCode::kNotFound, "no module named '" + std::string(name) + "'");
  return Compile(*known);
}

Result<std::shared_ptr<const ModuleEntry>> Registry::Compile(const jobs::ModuleName& name) {
  auto policy = ParseStatePolicy(name.state);
  if (!policy) return MakeError(policy.error());
  auto bytes = store_->GetModule(name.digest);
  if (!bytes) return MakeError(bytes.error());
  auto module = runtime_->Compile(*bytes, {.name = name.name});
  if (!module) return MakeError(module.error());
  bool new_pool = false;
  auto pool = PoolFor({name.digest, *policy}, *module, new_pool);
  if (!pool) return MakeError(pool.error());
  spdlog::info("module name={} digest={} version={} compiled at its first use", name.name,
               name.digest, name.version);
  return Install(name.name, *module, *pool, new_pool, *policy, /*persist=*/true, name.version,
                 nullptr);
}

std::vector<jobs::ModuleName> Registry::Unloaded() const {
  MutexLock lock(mu_);
  std::vector<jobs::ModuleName> out;
  out.reserve(unloaded_.size());
  for (const auto& [name, known] : unloaded_) out.push_back(known);
  return out;
}

std::vector<std::shared_ptr<const ModuleEntry>> Registry::List() const {
  MutexLock lock(mu_);
  std::vector<std::shared_ptr<const ModuleEntry>> out;
  out.reserve(names_.size());
  for (const auto& [name, entry] : names_) out.push_back(entry);
  return out;
}

Result<std::string> Registry::Remove(std::string_view name) {
  MutexLock write_lock(write_mu_);
  std::shared_ptr<const ModuleEntry> entry;
  std::optional<jobs::ModuleName> unloaded;
  {
    MutexLock lock(mu_);
    if (auto it = names_.find(name); it != names_.end()) entry = it->second;
    if (auto it = unloaded_.find(name); it != unloaded_.end()) unloaded = it->second;
  }
  if (!entry && !unloaded) return MakeError(ErrorCode::kNotFound, "no module named '" + std::string(name) + "'");
  const bool persisted = unloaded || entry->persisted;
  if (persisted) {
    // Gone from the store already (another node deleted it): drop it here.
    auto deleted = cluster_->DeleteName(name);
    if (!deleted && deleted.error().code != ErrorCode::kNotFound) return MakeError(deleted.error());
  }
  {
    MutexLock lock(mu_);
    if (entry) {
      names_.erase(entry->name);
      Unreference(KeyOf(*entry));
    }
    if (unloaded) unloaded_.erase(unloaded->name);
  }
  if (persisted) (void)CollectGarbage();
  return entry ? entry->module->digest() : unloaded->digest;
}

Result<int64_t> Registry::CollectGarbage() {
  // Names from --modules directories are not in the store: keep their bytes
  // for the jobs submitted on them.
  std::set<std::string> keep;
  for (const auto& entry : List()) {
    if (!entry->persisted) keep.insert(entry->module->digest());
  }
  auto deleted = cluster_->DeleteUnreferencedModules(keep);
  if (!deleted) {
    spdlog::warn("deleting unreferenced module bytes failed: {}", deleted.error().ToString());
  } else if (*deleted > 0) {
    spdlog::info("deleted {} unreferenced modules from the store", *deleted);
  }
  return deleted;
}

Result<uint64_t> Registry::Sync() {
  MutexLock write_lock(write_mu_);
  auto version = cluster_->RegistryVersion();
  if (!version) return MakeError(version.error());
  if (synced_ && *version == synced_version_) return *version;
  auto snapshot = cluster_->Names();
  if (!snapshot) return MakeError(snapshot.error());
  std::set<std::string, std::less<>> in_store;
  for (const jobs::ModuleName& name : snapshot->names) {
    in_store.insert(name.name);
    SyncName(name);
  }
  for (const auto& entry : List()) {
    if (!entry->persisted || in_store.contains(entry->name)) continue;
    spdlog::info("module name={} deleted through another node", entry->name);
    MutexLock lock(mu_);
    names_.erase(entry->name);
    Unreference(KeyOf(*entry));
  }
  {
    MutexLock lock(mu_);
    std::erase_if(unloaded_, [&](const auto& known) { return !in_store.contains(known.first); });
  }
  synced_ = true;
  synced_version_ = snapshot->version;
  return snapshot->version;
}

void Registry::SyncName(const jobs::ModuleName& name) {
  auto policy = ParseStatePolicy(name.state);
  if (!policy) {
    spdlog::warn("module name={} skipped: {}", name.name, policy.error().ToString());
    return;
  }
  MutexLock lock(mu_);
  if (auto it = names_.find(name.name); it != names_.end()) {
    const ModuleEntry& previous = *it->second;
    if (previous.persisted && previous.module->digest() == name.digest && previous.state == *policy) {
      return;
    }
    // Replaced through another node (or a --modules file overridden): the
    // new bytes are compiled at the name's next use here.
    Unreference(KeyOf(previous));
    names_.erase(it);
  }
  unloaded_[name.name] = name;
}

Result<std::shared_ptr<Pool>> Registry::PoolForDigest(const std::string& digest) {
  const PoolKey fallback{digest, pool_options_.recycle.state};
  {
    MutexLock lock(mu_);
    // A pool a name refers to first (the job follows that name's policy),
    // then any pool of these bytes.
    DigestPool* found = nullptr;
    for (auto it = digests_.lower_bound({digest, StatePolicy{}}); it != digests_.end() && it->first.digest == digest;
         ++it) {
      if (!found || (found->names == 0 && it->second.names > 0)) found = &it->second;
    }
    if (found) {
      if (found->names == 0) found->idle_since = std::chrono::steady_clock::now();
      return found->pool;
    }
  }
  // A name of these bytes not compiled here yet: the job follows its policy.
  std::optional<std::string> unloaded_name;
  {
    MutexLock lock(mu_);
    auto it = std::find_if(unloaded_.begin(), unloaded_.end(),
                           [&](const auto& known) { return known.second.digest == digest; });
    if (it != unloaded_.end()) unloaded_name = it->first;
  }
  if (unloaded_name) {
    auto loaded = Load(*unloaded_name);
    if (loaded) return (*loaded)->pool;
    if (loaded.error().code != ErrorCode::kNotFound) return MakeError(loaded.error());
  }
  if (!IsHexDigest(digest)) return MakeError(ErrorCode::kNotFound, "no module with digest '" + digest + "'");
  auto bytes = store_->GetModule(digest);
  if (!bytes) return MakeError(bytes.error());
  auto module = runtime_->Compile(*bytes, {.name = digest.substr(0, 12)});
  if (!module) return MakeError(module.error());
  auto pool = MakePool(*module, fallback.state);
  if (!pool) return MakeError(pool.error());
  MutexLock lock(mu_);
  auto [it, added] = digests_.try_emplace(fallback, DigestPool{*pool, 0, std::chrono::steady_clock::now()});
  if (!added) (*pool)->Close();  // lost a race with another caller
  return it->second.pool;
}

void Registry::Reap(std::chrono::steady_clock::duration idle) {
  auto now = std::chrono::steady_clock::now();
  std::vector<std::shared_ptr<Pool>> closing;
  {
    MutexLock lock(mu_);
    for (auto it = digests_.begin(); it != digests_.end();) {
      DigestPool& entry = it->second;
      if (entry.names > 0) {
        ++it;
        continue;
      }
      PoolStats stats = entry.pool->Stats();
      if (stats.queued > 0 || stats.busy_instances > 0) {
        entry.idle_since = now;
        ++it;
      } else if (now - entry.idle_since >= idle) {
        closing.push_back(std::move(entry.pool));
        it = digests_.erase(it);
      } else {
        ++it;
      }
    }
  }
  for (auto& pool : closing) pool->Close();
}

std::vector<Registry::PoolView> Registry::Pools() const {
  MutexLock lock(mu_);
  std::vector<PoolView> out;
  out.reserve(digests_.size());
  std::map<PoolKey, size_t> index;  // position in `out`
  for (const auto& [key, entry] : digests_) {
    index.emplace(key, out.size());
    out.push_back({entry.pool, {}, key.state});
  }
  // names_ is sorted, so each pool's names come out sorted too.
  for (const auto& [name, module] : names_) {
    if (auto it = index.find(KeyOf(*module)); it != index.end()) out[it->second].names.push_back(name);
  }
  return out;
}

Result<size_t> Registry::LoadDirectory(const std::string& dir) {
  std::error_code ec;
  fs::directory_iterator it(dir, ec);
  if (ec) return MakeError(ErrorCode::kNotFound, "cannot read module directory " + dir + ": " + ec.message());
  std::vector<fs::path> files;
  for (const auto& file : it) {
    const fs::path& path = file.path();
    std::string stem = path.stem().string();
    if (path.extension() != ".wasm" || stem.starts_with(kSkippedPrefix) || !ValidName(stem)) continue;
    files.push_back(path);
  }
  std::sort(files.begin(), files.end());
  for (const fs::path& path : files) {
    auto bytes = ReadFile(path.string());
    if (!bytes) return MakeError(bytes.error());
    auto put = Put(path.stem().string(), *bytes, /*persist=*/false);
    if (!put) {
      Error error = put.error();
      error.message = path.string() + ": " + error.message;
      return MakeError(std::move(error));
    }
  }
  return files.size();
}

bool Registry::MigrateFile(const fs::path& path, const jobs::RegistrySnapshot& snapshot) {
  std::string name = path.filename().string();
  // e.g. a temporary file of an interrupted upload
  if (!ValidName(name)) return false;
  std::string digest, key, policy_name;
  std::ifstream(path) >> digest >> key >> policy_name;
  if (!IsHexDigest(digest)) {
    spdlog::warn("module name={} skipped: {} does not hold a digest", name, path.string());
    return false;
  }
  // Names persisted before policies existed have none: the default.
  StatePolicy policy = pool_options_.recycle.state;
  if (key == "state") {
    auto parsed = ParseStatePolicy(policy_name);
    if (!parsed) {
      spdlog::warn("module name={} skipped: {}", name, parsed.error().ToString());
      return false;
    }
    policy = *parsed;
  }
  bool known = std::any_of(snapshot.names.begin(), snapshot.names.end(),
                           [&](const jobs::ModuleName& n) { return n.name == name; });
  if (known) return true;  // the store's is newer: the file is left over
  auto bytes = store_->GetModule(digest);
  if (!bytes) {
    spdlog::warn("module name={} digest={} skipped: {}", name, digest, bytes.error().ToString());
    return false;
  }
  auto set = cluster_->SetName(name, digest, *bytes, ToString(policy), "{}");
  if (!set) {
    spdlog::warn("module name={} digest={} not moved to the store: {}", name, digest,
                 set.error().ToString());
    return false;
  }
  spdlog::info("module name={} moved from {} to the store", name, path.string());
  return true;
}

Result<size_t> Registry::LoadPersisted() {
  std::error_code ec;
  if (fs::exists(modules_dir_, ec)) {
    fs::directory_iterator it(modules_dir_, ec);
    if (ec) return MakeError(ErrorCode::kInternal, "cannot read " + modules_dir_ + ": " + ec.message());
    auto snapshot = cluster_->Names();
    if (!snapshot) return MakeError(snapshot.error());
    const fs::path migrated = modules_dir_ + ".migrated";
    for (const auto& file : it) {
      if (!MigrateFile(file.path(), *snapshot)) continue;
      fs::create_directories(migrated, ec);
      fs::rename(file.path(), migrated / file.path().filename(), ec);
      if (ec) spdlog::warn("cannot move {} to {}: {}", file.path().string(), migrated.string(), ec.message());
    }
  }
  auto synced = Sync();
  if (!synced) return MakeError(synced.error());
  size_t known = Unloaded().size();
  for (const auto& entry : List()) known += entry->persisted ? 1 : 0;
  return known;
}

}  // namespace keel::server

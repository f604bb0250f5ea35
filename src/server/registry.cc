#include "server/registry.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
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

std::string ErrnoText(const std::string& what, int err) { return what + ": " + std::strerror(err); }

// Writes `text` to `path` so that readers see the old or the new content,
// never a torn file, also across a crash.
Result<void> WriteFileAtomically(const fs::path& path, const std::string& text) {
  fs::path tmp = path.parent_path() / ("." + path.filename().string() + ".tmp");
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return MakeError(ErrorCode::kInternal, ErrnoText("cannot write " + tmp.string(), errno));
  bool ok = ::write(fd, text.data(), text.size()) == static_cast<ssize_t>(text.size()) && ::fsync(fd) == 0;
  int err = errno;
  ::close(fd);
  if (!ok || ::rename(tmp.c_str(), path.c_str()) != 0) {
    if (ok) err = errno;
    ::unlink(tmp.c_str());
    return MakeError(ErrorCode::kInternal, ErrnoText("cannot write " + path.string(), err));
  }
  // Make the rename itself durable.
  if (int dir = ::open(path.parent_path().c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC); dir >= 0) {
    ::fsync(dir);
    ::close(dir);
  }
  return {};
}

}  // namespace

Registry::Registry(Runtime* runtime, jobs::JobStore* store, std::string data_dir,
                   PoolOptions pool_options)
    : runtime_(runtime),
      store_(store),
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
  // Reuse the pool of identical bytes and policy (another name, or a job's
  // module).
  const PoolKey key{digest, policy};
  std::shared_ptr<Pool> pool;
  {
    MutexLock lock(mu_);
    if (auto it = digests_.find(key); it != digests_.end()) pool = it->second.pool;
  }
  bool new_pool = !pool;
  if (new_pool) {
    auto made = MakePool(*module, policy);
    if (!made) return MakeError(made.error());
    pool = *made;
  }
  auto fail = [&](Error error) -> Result<PutResult> {
    if (new_pool) pool->Close();
    return MakeError(std::move(error));
  };
  auto stored = store_->PutModule(bytes);
  if (!stored) return fail(stored.error());
  if (persist) {
    if (auto ok = PersistName(std::string(name), digest, policy); !ok) return fail(ok.error());
  }

  auto entry = std::make_shared<ModuleEntry>();
  entry->name = std::string(name);
  entry->module = *module;
  entry->pool = pool;
  entry->state = policy;
  entry->persisted = persist;
  entry->loaded_at = std::chrono::system_clock::now();
  {
    MutexLock lock(mu_);
    // A job may have built a pool for these bytes in the meantime: keep one.
    if (!Reference(key, pool) && new_pool) {
      pool->Close();
      entry->pool = digests_[key].pool;
    }
    if (previous) Unreference(KeyOf(*previous));
    names_[entry->name] = entry;
  }
  return PutResult{entry, previous == nullptr};
}

Result<void> Registry::PersistName(const std::string& name, const std::string& digest,
                                  StatePolicy state) {
  std::error_code ec;
  fs::create_directories(modules_dir_, ec);
  if (ec) return MakeError(ErrorCode::kInternal, "cannot create " + modules_dir_ + ": " + ec.message());
  return WriteFileAtomically(fs::path(modules_dir_) / name,
                             digest + "\nstate " + std::string(ToString(state)) + "\n");
}

std::shared_ptr<const ModuleEntry> Registry::Find(std::string_view name) const {
  MutexLock lock(mu_);
  auto it = names_.find(name);
  return it == names_.end() ? nullptr : it->second;
}

std::vector<std::shared_ptr<const ModuleEntry>> Registry::List() const {
  MutexLock lock(mu_);
  std::vector<std::shared_ptr<const ModuleEntry>> out;
  out.reserve(names_.size());
  for (const auto& [name, entry] : names_) out.push_back(entry);
  return out;
}

Result<void> Registry::Remove(std::string_view name) {
  MutexLock write_lock(write_mu_);
  auto entry = Find(name);
  if (!entry) return MakeError(ErrorCode::kNotFound, "no module named '" + std::string(name) + "'");
  if (entry->persisted) {
    fs::path path = fs::path(modules_dir_) / entry->name;
    if (::unlink(path.c_str()) != 0 && errno != ENOENT) {
      return MakeError(ErrorCode::kInternal, ErrnoText("cannot remove " + path.string(), errno));
    }
  }
  MutexLock lock(mu_);
  names_.erase(entry->name);
  Unreference(KeyOf(*entry));
  return {};
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

Result<size_t> Registry::LoadPersisted() {
  std::error_code ec;
  if (!fs::exists(modules_dir_, ec)) return size_t{0};
  fs::directory_iterator it(modules_dir_, ec);
  if (ec) return MakeError(ErrorCode::kInternal, "cannot read " + modules_dir_ + ": " + ec.message());
  size_t loaded = 0;
  for (const auto& file : it) {
    std::string name = file.path().filename().string();
    if (!ValidName(name)) continue;  // e.g. a temporary file of an interrupted upload
    std::string digest, key, policy_name;
    std::ifstream(file.path()) >> digest >> key >> policy_name;
    if (!IsHexDigest(digest)) {
      spdlog::warn("module name={} skipped: {} does not hold a digest", name, file.path().string());
      continue;
    }
    // Names persisted before policies existed have none: the default.
    std::optional<StatePolicy> policy;
    if (key == "state") {
      auto parsed = ParseStatePolicy(policy_name);
      if (!parsed) {
        spdlog::warn("module name={} skipped: {}", name, parsed.error().ToString());
        continue;
      }
      policy = *parsed;
    }
    auto bytes = store_->GetModule(digest);
    if (!bytes) {
      spdlog::warn("module name={} digest={} skipped: {}", name, digest, bytes.error().ToString());
      continue;
    }
    auto put = Put(name, *bytes, /*persist=*/true, policy);
    if (!put) {
      spdlog::warn("module name={} digest={} skipped: {}", name, digest, put.error().ToString());
      continue;
    }
    ++loaded;
  }
  return loaded;
}

}  // namespace keel::server

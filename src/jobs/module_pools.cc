#include "jobs/module_pools.h"

namespace keel::jobs {

ModulePools::ModulePools(Runtime* runtime, JobStore* store, PoolOptions options)
    : runtime_(runtime), store_(store), options_(std::move(options)) {}

Result<std::shared_ptr<Pool>> ModulePools::ForDigest(const std::string& digest) {
  std::lock_guard<std::mutex> lock(mu_);
  if (auto it = pools_.find(digest); it != pools_.end()) return it->second;
  auto bytes = store_->GetModule(digest);
  if (!bytes) return MakeError(bytes.error());
  auto module = runtime_->Compile(*bytes, {.name = digest.substr(0, 12)});
  if (!module) return MakeError(module.error());
  auto pool = runtime_->CreatePool(*module, options_);
  if (!pool) return MakeError(pool.error());
  pools_[digest] = *pool;
  return *pool;
}

}  // namespace keel::jobs

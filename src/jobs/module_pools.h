// Pools by module digest, for running jobs: a job always runs the exact
// module it was submitted with, fetched from the store by digest and
// compiled once.
#ifndef KEEL_JOBS_MODULE_POOLS_H_
#define KEEL_JOBS_MODULE_POOLS_H_

#include <map>
#include <memory>
#include <mutex>
#include <string>

#include "jobs/store.h"
#include "keel/runtime.h"

namespace keel::jobs {

// Thread-safe. `runtime` and `store` must outlive it.
class ModulePools {
 public:
  ModulePools(Runtime* runtime, JobStore* store, PoolOptions options);

  // The pool for `digest`, compiling the stored bytes on first use.
  // kNotFound if the store has no such module; compile errors as Compile.
  [[nodiscard]] Result<std::shared_ptr<Pool>> ForDigest(const std::string& digest);

 private:
  Runtime* runtime_;
  JobStore* store_;
  PoolOptions options_;
  std::mutex mu_;
  std::map<std::string, std::shared_ptr<Pool>> pools_;  // guarded by mu_
};

}  // namespace keel::jobs

#endif  // KEEL_JOBS_MODULE_POOLS_H_

// Pieces both stores share: ids, validation, time conversion and the
// in-process wake-up for waiting claimers.
#ifndef KEEL_JOBS_INTERNAL_H_
#define KEEL_JOBS_INTERNAL_H_

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <string>
#include <string_view>
#include <unordered_set>
#include <vector>

#include "jobs/store.h"
#include "keel/status.h"

namespace keel::jobs {

// Claim limits, so a request cannot pin the store.
inline constexpr size_t kMaxClaimBatch = 1000;
// How often a waiting claimer looks again when no wake-up comes: jobs whose
// backoff ended, expired leases and (SQLite) other processes' submits.
inline constexpr std::chrono::milliseconds kClaimPollInterval{200};
// Operations per group-commit transaction.
inline constexpr size_t kMaxCommitBatch = 512;

// Error recorded on a job whose lease expired.
inline constexpr std::string_view kLeaseExpiredMessage = "lease expired: runner lost";
// Error recorded on a job cancelled before it ran.
inline constexpr std::string_view kCancelledMessage = "cancelled before it ran";

// A new job id: 26 Crockford base-32 characters, a 48-bit millisecond
// timestamp then 80 random bits (ULID layout), so ids sort by creation time
// and need no coordination between processes. Thread-safe.
std::string NewJobId();

// kInvalidArgument naming the first malformed field; success otherwise.
[[nodiscard]] Result<void> ValidateSpec(const JobSpec& spec);
[[nodiscard]] Result<void> ValidateClaim(const ClaimRequest& request);
// kInvalidArgument unless `digest` is 64 lowercase hex characters.
[[nodiscard]] Result<void> ValidateDigest(std::string_view digest);

int64_t ToMicros(TimePoint t);
TimePoint FromMicros(int64_t micros);
int64_t NowMicros();

// The ErrorCode whose ToString() is `name`; kInternal if none.
ErrorCode ErrorCodeFromName(std::string_view name);

// Wakes claimers waiting for work in this process. Thread-safe.
class WakeSignal {
 public:
  uint64_t generation() const;
  void Notify();
  // Blocks until the generation differs from `seen` or `deadline` passes.
  void Wait(uint64_t seen, std::chrono::steady_clock::time_point deadline);

 private:
  mutable std::mutex mu_;
  std::condition_variable cv_;
  uint64_t generation_ = 0;
};

// Claim with ClaimRequest::wait: calls `claim_ready` until it returns jobs
// or an error, or the wait is over, sleeping on `wake` in between. Returns
// what the last call returned.
[[nodiscard]] Result<std::vector<ClaimedJob>> ClaimWithWait(
    WakeSignal& wake, const ClaimRequest& request,
    const std::function<Result<std::vector<ClaimedJob>>()>& claim_ready);

// Digests of modules known to be stored. Modules are never deleted, so a
// digest once seen stays valid. Thread-safe.
class KnownModules {
 public:
  bool Contains(const std::string& digest) const {
    std::lock_guard lock(mu_);
    return digests_.contains(digest);
  }
  void Add(const std::string& digest) {
    std::lock_guard lock(mu_);
    digests_.insert(digest);
  }

 private:
  mutable std::mutex mu_;
  std::unordered_set<std::string> digests_;  // guarded by mu_
};

}  // namespace keel::jobs

#endif  // KEEL_JOBS_INTERNAL_H_

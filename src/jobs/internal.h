// Pieces both stores share: ids, validation, time conversion and the
// in-process wake-up for waiting claimers.
#ifndef KEEL_JOBS_INTERNAL_H_
#define KEEL_JOBS_INTERNAL_H_

#include <chrono>
#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "base/mutex.h"
#include "jobs/store.h"
#include "keel/status.h"

namespace keel::jobs {

// Claim limits, so a request cannot pin the store.
inline constexpr size_t kMaxClaimBatch = 1000;
// Operations per group-commit transaction.
inline constexpr size_t kMaxCommitBatch = 512;

// Longest idempotency key and export name a job may have, in bytes.
inline constexpr size_t kMaxKeyBytes = 1024;

// Error recorded on a job whose lease expired.
inline constexpr std::string_view kLeaseExpiredMessage = "lease expired: runner lost";
// Error recorded on a job cancelled before it ran.
inline constexpr std::string_view kCancelledMessage = "cancelled before it ran";
// Error recorded on a cancelled job whose runner gave it back unfinished.
inline constexpr std::string_view kReleasedCancelledMessage =
    "cancelled; its runner gave it back unfinished";

// A new job id: 26 Crockford base-32 characters, a 48-bit millisecond
// timestamp then 80 random bits (ULID layout), so ids sort by creation time
// and need no coordination between processes. Thread-safe.
std::string NewJobId();

// kInvalidArgument naming the first malformed field; success otherwise.
[[nodiscard]] Result<void> ValidateSpec(const JobSpec& spec);
// True if both describe the same work: module, export, input, deadline,
// attempts and backoff (the idempotency key aside).
bool SameWork(const JobSpec& a, const JobSpec& b);
[[nodiscard]] Result<void> ValidateClaim(const ClaimRequest& request);
// kInvalidArgument unless `digest` is 64 lowercase hex characters.
[[nodiscard]] Result<void> ValidateDigest(std::string_view digest);
// True if `id` has the form NewJobId() gives (so that a malformed id is
// never sent to a database, where it might not even be valid text).
bool IsJobId(std::string_view id);
// kNotFound "no job ..." naming `id` (made valid UTF-8).
tl::unexpected<Error> NoSuchJob(std::string_view id);
// kNotFound "no module ..." naming `digest` (a valid digest).
tl::unexpected<Error> NoSuchModule(std::string_view digest);

// CompleteAll() as one operation of a store's group commit. Not
// thread-safe; the completions must outlive it.
class OutcomeBatch {
 public:
  // Writes (or queues, to be sent before the commit) one outcome and sets
  // *out to its answer; returns whether it made work claimable.
  using RecordOutcome = std::function<Result<bool>(const Completion&, Result<JobState>*)>;

  explicit OutcomeBatch(std::span<const Completion> completions) : completions_(completions) {}

  // The operation: records each completion, answering ids that are not job
  // ids kNotFound without a write. Returns whether one made work claimable,
  // or the first error `record` returned (then nothing is committed). May
  // run again (the group commit retries); answers are reset each time.
  [[nodiscard]] Result<bool> Record(const RecordOutcome& record);

  // The answers, given how the operation's transaction ended: `run` and
  // GroupCommitter's `rolled_back`. If the operation or the flush failed,
  // nothing was committed: each completion is recorded again on its own
  // (Complete()), so that only a bad one fails, as the group commit does
  // for separate operations. If begin or commit failed (a commit's result
  // is unknown), every completion gets that error: its lease expires, and
  // the job runs again if the outcome was lost.
  std::vector<Result<JobState>> Answers(JobStore& store, const Result<void>& run,
                                        bool rolled_back);

  size_t size() const { return completions_.size(); }

 private:
  std::span<const Completion> completions_;
  std::vector<Result<JobState>> answers_;
};

// The error for an operation on lease (id, claim) that matched no row:
// kNotFound unless the job `exists`; else kFailedPrecondition, saying the
// claim had `started` already (Start) or that the lease is no longer held.
Error LeaseError(std::string_view id, uint64_t claim, bool exists, bool started);

// Key text (idempotency keys, export and runner names): kInvalidArgument,
// naming `what`, unless `text` is valid UTF-8 without NUL. Such text is
// stored exactly on both stores; NUL would be cut off by PostgreSQL.
[[nodiscard]] Result<void> ValidateKeyText(std::string_view what, std::string_view text);
// `bytes` as valid UTF-8 without NUL: every NUL and every maximal ill-formed
// subsequence (Unicode 15, section 3.9) becomes U+FFFD. Free text from
// guests and engines (error messages) is stored this way.
std::string ToValidText(std::string_view bytes);

int64_t ToMicros(TimePoint t);
TimePoint FromMicros(int64_t micros);
int64_t NowMicros();

// The WHERE clause of a listing of jobs in `state`, the state spelled out
// so that the planner matches the partial index that holds it (schema
// version 4): keel_jobs_ready (queued), keel_jobs_leased (running),
// keel_jobs_state (failed, timed out, cancelled, dead); succeeded jobs are
// listed by seq.
std::string StateFilterSql(JobState state);

// Counts jobs by state from those partial indexes alone, as a node refreshes
// its job gauges every second; succeeded jobs are every finished job (the
// finished index) less those finished in another state. Rows: (state text,
// count), one of them ("finished", n); StateCounter adds them up.
inline constexpr char kCountByStateSql[] =
    "SELECT state, count(*) FROM keel_jobs "
    "WHERE state IN ('failed', 'timed_out', 'cancelled', 'dead') GROUP BY state "
    "UNION ALL SELECT 'queued', count(*) FROM keel_jobs WHERE state = 'queued' "
    "UNION ALL SELECT 'running', count(*) FROM keel_jobs WHERE state = 'running' "
    "UNION ALL SELECT 'finished', count(*) FROM keel_jobs WHERE finished_us IS NOT NULL";

class StateCounter {
 public:
  void Add(std::string_view state, int64_t count);
  StateCounts Counts() const;

 private:
  StateCounts counts_{};
  int64_t finished_ = 0;
};

// The ErrorCode whose ToString() is `name`; kInternal if none.
ErrorCode ErrorCodeFromName(std::string_view name);

// Wakes claimers waiting for work in this process. Thread-safe.
class WakeSignal {
 public:
  uint64_t generation() const EXCLUDES(mu_);
  void Notify() EXCLUDES(mu_);
  // Blocks until the generation differs from `seen` or `deadline` passes.
  void Wait(uint64_t seen, std::chrono::steady_clock::time_point deadline) EXCLUDES(mu_);

 private:
  mutable Mutex mu_;
  CondVar cv_;
  uint64_t generation_ GUARDED_BY(mu_) = 0;
};

// Claim with ClaimRequest::wait: calls `claim_ready` until it returns jobs
// or an error, or the wait is over, sleeping on `wake` (at most
// `poll_interval` at a time) in between. Returns
// what the last call returned.
[[nodiscard]] Result<std::vector<ClaimedJob>> ClaimWithWait(
    WakeSignal& wake, const ClaimRequest& request, std::chrono::milliseconds poll_interval,
    const std::function<Result<std::vector<ClaimedJob>>()>& claim_ready);

}  // namespace keel::jobs

#endif  // KEEL_JOBS_INTERNAL_H_

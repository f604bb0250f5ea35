// The durable job queue: one store interface, two stores. SQLite (WAL, in a
// data directory) is the embedded default; PostgreSQL lets processes on many
// machines share one queue. A job is accepted only once it is committed.
//
// Runner protocol: Claim() up to N ready jobs with a short lease, Start() each
// once it runs (this counts the attempt and takes the longer run lease; a job
// that ends first can skip it, as Complete() counts the attempt of a claim
// not started), Heartbeat() to keep each lease, then Complete() with the
// attempt's outcome, or Release() to give the job back unrun (e.g. when
// stopping). A
// lease that is not renewed expires and the job goes back to the queue:
// at-least-once, and an attempt that had started counts (the job is dead when
// none is left), one that had not does not. A lease is named by (job id,
// claim number), so a runner that lost its lease can no longer touch the job.
//
// Text: idempotency keys, export names and runner names must be valid UTF-8
// without NUL (kInvalidArgument otherwise) and are stored exactly. Error
// messages are free text from guests: they are stored as valid UTF-8, every
// NUL and ill-formed byte sequence replaced by U+FFFD, so that every reader
// (HTTP JSON, logs, psql) gets text; the exact bytes a job produced belong in
// its result, which is stored as bytes.
#ifndef KEEL_JOBS_STORE_H_
#define KEEL_JOBS_STORE_H_

#include <array>
#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "keel/call.h"
#include "keel/status.h"

namespace keel::jobs {

// Wall-clock time, microsecond precision once stored. PostgreSQL uses the
// server's clock for leases and backoff, SQLite the local clock.
using Clock = std::chrono::system_clock;
using TimePoint = Clock::time_point;

enum class JobState : uint8_t {
  kQueued,     // waiting to be claimed (maybe not before Job::not_before)
  kRunning,    // leased by a runner (Job::started_at says if it began running)
  kSucceeded,  // finished; Job::result holds the output
  kFailed,     // an attempt failed and was not to be retried
  kTimedOut,   // an attempt hit its deadline and was not to be retried
  kCancelled,  // cancelled while queued (never ran) or while running (result kept)
  kDead,       // every allowed attempt failed, timed out or lost its lease
};
inline constexpr size_t kJobStateCount = 7;

// "queued", "running", "succeeded", "failed", "timed_out", "cancelled", "dead".
std::string_view ToString(JobState state);
// The inverse of ToString; nullopt for any other text.
std::optional<JobState> ParseJobState(std::string_view text);
// True for the states a job never leaves (all but queued and running).
bool IsFinished(JobState state);

// What a caller submits. Copyable value.
struct JobSpec {
  std::string module_digest;  // hex SHA-256 from PutModule(); must exist
  std::string export_name;    // non-empty
  std::vector<uint8_t> input;
  // Per attempt; stored for the runner, which enforces it.
  std::chrono::milliseconds deadline{std::chrono::seconds(30)};
  // Empty: none. Otherwise at most one job with this key exists (until the
  // job is purged): a second Submit of the same spec returns the first job's
  // id, one of a different spec is refused (SubmitResult::conflict).
  std::string idempotency_key;
  uint32_t max_attempts = 3;  // >= 1
  // A retried attempt waits retry_backoff * 2^(attempt-1), capped at
  // kMaxRetryDelay.
  std::chrono::milliseconds retry_backoff{std::chrono::seconds(1)};
};
inline constexpr std::chrono::milliseconds kMaxRetryDelay = std::chrono::hours(24);

// A job as stored. Copyable value.
struct Job {
  std::string id;  // 26-char ULID-style text; sorts by submit time
  JobSpec spec;
  JobState state = JobState::kQueued;
  uint32_t attempts = 0;          // attempts started so far, including a running one
  bool cancel_requested = false;  // set by Cancel() on a running job
  TimePoint created_at;
  TimePoint updated_at;
  TimePoint not_before;                  // earliest next claim (queued jobs)
  std::optional<TimePoint> lease_until;  // while running
  // When the last attempt started (nullopt: none did, or a running job
  // that is claimed but has not started).
  std::optional<TimePoint> started_at;
  std::optional<TimePoint> finished_at;  // once finished
  std::string runner;                    // holder of the last lease
  std::vector<uint8_t> result;           // output of a successful attempt
  std::optional<Error> error;            // last failure (code and message)
};

// The result of one attempt, reported by the runner. Copyable value.
struct Outcome {
  enum class Kind : uint8_t { kSucceeded, kFailed, kTimedOut };
  Kind kind = Kind::kSucceeded;
  std::vector<uint8_t> result;  // kSucceeded
  Error error;                  // kFailed, kTimedOut
  // kFailed/kTimedOut: run again (after backoff) if attempts are left, else
  // the job is dead. Without retry the job ends failed / timed_out.
  bool retry = false;

  static Outcome Succeeded(std::vector<uint8_t> result);
  static Outcome Failed(Error error, bool retry);
  static Outcome TimedOut(Error error, bool retry);
};

// One outcome to record (JobStore::CompleteAll); borrows its fields.
struct Completion {
  std::string_view id;
  uint64_t claim = 0;
  const Outcome* outcome = nullptr;
};

struct SubmitResult {
  std::string id;             // of the new job, or of the one the key names
  std::string module_digest;  // of that job
  bool created = true;        // false: the idempotency key named an existing job
  // The key names a job whose spec differs from the one submitted: nothing
  // was submitted, and `id` and `module_digest` are the existing job's.
  bool conflict = false;
};

struct ClaimRequest {
  std::string runner;  // names the lease holder, e.g. "host:pid"
  size_t max_jobs = 1;
  // Until Start() (which sets the run lease) or a Heartbeat().
  std::chrono::milliseconds lease{std::chrono::seconds(30)};
  // When nothing is ready, block up to this long for work (woken by
  // submits; on PostgreSQL also those of other processes via LISTEN/NOTIFY;
  // otherwise by polling) and return what is then claimable.
  std::chrono::milliseconds wait{0};
};

// A leased job, in claim order (FIFO by not_before, then submit order).
struct ClaimedJob {
  std::string id;
  uint64_t claim = 0;    // names the lease: 1 for the job's first claim
  uint32_t attempt = 0;  // the attempt this claim makes once started (1: first)
  JobSpec spec;
  TimePoint lease_until;
};

// Cancel() reports what it achieved with the calls' CancelOutcome
// (keel/call.h): kWithdrawn (was queued; now cancelled and never runs),
// kDetached (is running; finishes, then is recorded cancelled, result kept)
// or kTooLate (had already finished).

struct ListFilter {
  std::optional<JobState> state;  // nullopt: all states
  size_t limit = 100;
  bool newest_first = true;  // otherwise submit order
};

// Jobs per state, indexed by static_cast<size_t>(JobState).
using StateCounts = std::array<int64_t, kJobStateCount>;

// Group-commit counters of this store object, for metrics.
struct CommitStats {
  uint64_t transactions = 0;  // committed write transactions
  uint64_t operations = 0;    // writes they carried (submits, claims, ...)
  uint64_t waiting = 0;       // writes handed over and not yet committed (now)
};

// The store interface. Thread-safe; several processes may share one
// database. Destroying a store finishes the writes already handed to it; no
// call may be in progress or made afterwards.
class JobStore {
 public:
  virtual ~JobStore() = default;

  // Stores module bytes under their SHA-256; storing the same bytes again is
  // a no-op. Returns the hex digest; kUnavailable/kInternal on database errors.
  [[nodiscard]] virtual Result<std::string> PutModule(std::span<const uint8_t> bytes) = 0;
  // The bytes stored under `digest`; kNotFound if none.
  [[nodiscard]] virtual Result<std::vector<uint8_t>> GetModule(std::string_view digest) = 0;

  // Commits a new queued job and returns only once it is durable. Returns
  // its id; for a known idempotency key, the existing job's (created ==
  // false), flagged `conflict` unless that job's spec (module, export, input,
  // deadline, attempts, backoff) is the one given. kInvalidArgument for a
  // malformed spec, kNotFound for an unknown module, kUnavailable/kInternal
  // on database errors (then the job may or may not exist: resubmit with an
  // idempotency key).
  [[nodiscard]] virtual Result<SubmitResult> Submit(const JobSpec& spec) = 0;

  // The job; kNotFound if unknown (or purged).
  [[nodiscard]] virtual Result<Job> Get(std::string_view id) = 0;
  // Jobs matching `filter`, without input and result bytes (use Get).
  [[nodiscard]] virtual Result<std::vector<Job>> List(const ListFilter& filter) = 0;
  [[nodiscard]] virtual Result<StateCounts> CountByState() = 0;

  // Leases up to max_jobs ready jobs to `runner`, first re-queueing jobs
  // whose lease expired (PostgreSQL: at most every 100 ms per store); such a
  // job, if it had started, ends dead instead when it has no attempt left,
  // cancelled if cancel was requested. A claim counts no attempt until it
  // starts. Returns the claimed jobs, possibly none; kInvalidArgument for a
  // malformed request; database errors.
  [[nodiscard]] virtual Result<std::vector<ClaimedJob>> Claim(const ClaimRequest& request) = 0;

  // Records that claim `claim` of job `id` starts running now: counts its
  // attempt and extends the lease to now + `lease`. Returns the new expiry;
  // kFailedPrecondition if that lease is no longer held (expired or
  // released) or already started, kNotFound for an unknown job.
  [[nodiscard]] virtual Result<TimePoint> Start(std::string_view id, uint64_t claim,
                                                std::chrono::milliseconds lease) = 0;

  // Extends the lease (id, claim) to now + `lease`. Returns the new expiry;
  // kFailedPrecondition if that lease is no longer held (expired and
  // re-queued, or finished), kNotFound for an unknown job.
  [[nodiscard]] virtual Result<TimePoint> Heartbeat(std::string_view id, uint64_t claim,
                                                    std::chrono::milliseconds lease) = 0;

  // Records the outcome of claim `claim` (counting its attempt if it was not
  // started) and ends the lease. The job becomes: cancelled if cancel was
  // requested (result or error kept); else succeeded; else, for a failure or
  // timeout with retry, queued again after the backoff if attempts are left,
  // otherwise dead; else failed or timed_out. Returns the new state;
  // kFailedPrecondition if the lease is no longer held, kNotFound for an
  // unknown job.
  [[nodiscard]] virtual Result<JobState> Complete(std::string_view id, uint64_t claim,
                                                  const Outcome& outcome) = 0;
  // Records several outcomes, each as Complete() would, in one operation of
  // the store's group commit where it can (one hand-off, and on PostgreSQL
  // one statement, for the lot). Returns one result per completion, in
  // order. If the batch's write fails and is rolled back, each is recorded
  // on its own, so that one bad completion does not fail the others; if its
  // commit fails (its result unknown), every completion gets that error.
  [[nodiscard]] virtual std::vector<Result<JobState>> CompleteAll(
      std::span<const Completion> completions) = 0;

  // Gives claim `claim` back without an outcome: the job is queued again at
  // once (cancelled, if cancel was requested) and an attempt it started is
  // not counted. For jobs a runner claimed but will not run to the end: it
  // is stopping, or the executor dropped the call before it ran. Errors as
  // Heartbeat.
  [[nodiscard]] virtual Result<void> Release(std::string_view id, uint64_t claim) = 0;

  // Cancels a job: see CancelOutcome. kNotFound for an unknown job.
  [[nodiscard]] virtual Result<CancelOutcome> Cancel(std::string_view id) = 0;

  // Deletes finished jobs that finished more than `retention` ago (their
  // idempotency keys become free). Returns how many were deleted.
  [[nodiscard]] virtual Result<int64_t> Purge(std::chrono::milliseconds retention) = 0;

  virtual CommitStats commit_stats() const = 0;
};

// Settings of one store object; the defaults suit production.
struct StoreOptions {
  // How often a claimer waiting for work looks again when no wake-up came:
  // that finds jobs whose backoff ended, expired leases and, on SQLite,
  // other processes' submits. Submits through this store (and, on
  // PostgreSQL, through any store) wake waiting claimers at once.
  std::chrono::milliseconds claim_poll_interval{200};
  // PostgreSQL: write connections, whose transactions overlap (>= 1). Each
  // takes everything waiting as one transaction when it is free, so fewer
  // lanes make larger transactions: less of the server's CPU per job (on a
  // 2-core server 2 and 4 lanes ran ~15% faster than 8, 1 lane slower;
  // docs/BENCHMARKS.md). SQLite has one writer.
  size_t commit_lanes = 4;
};

// Opens the store named by `url_or_dir`: a postgresql:// or postgres:// URL
// opens PostgreSQL (libpq connection URL), anything else is a data
// directory, created if missing, holding the SQLite file keel.db. Creates the
// schema if absent and migrates an older one (jobs/schema.h). Returns the
// store; kInvalidArgument for an empty name, kUnavailable if the database
// cannot be opened, kFailedPrecondition if its schema is newer than this
// keel's.
[[nodiscard]] Result<std::unique_ptr<JobStore>> OpenStore(std::string_view url_or_dir,
                                                         const StoreOptions& options = {});

}  // namespace keel::jobs

#endif  // KEEL_JOBS_STORE_H_

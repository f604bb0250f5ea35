#include "jobs/sqlite_store.h"

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <system_error>
#include <utility>

#include "base/sha256.h"
#include "jobs/connection_pool.h"
#include "jobs/group_commit.h"
#include "jobs/internal.h"
#include "jobs/schema.h"
#include "jobs/sqlite_db.h"

namespace keel::jobs {
namespace {

using sqlite::Connection;
using sqlite::Statement;

constexpr size_t kMaxReaders = 8;

// Job columns in the order ReadJob expects; input and result come last so
// that List can leave them out.
constexpr char kJobColumns[] =
    "id, module_digest, export_name, deadline_ms, idempotency_key, max_attempts, backoff_ms, "
    "state, attempts, cancel_requested, created_us, updated_us, not_before_us, lease_until_us, "
    "finished_us, runner, error_code, error_message, started_us";

// Reads the kJobColumns (then input and result when `payloads`).
Job ReadJob(const Statement& row, bool payloads) {
  Job job;
  job.id = row.Text(0);
  job.spec.module_digest = row.Text(1);
  job.spec.export_name = row.Text(2);
  job.spec.deadline = std::chrono::milliseconds(row.Int(3));
  job.spec.idempotency_key = row.Text(4);
  job.spec.max_attempts = static_cast<uint32_t>(row.Int(5));
  job.spec.retry_backoff = std::chrono::milliseconds(row.Int(6));
  job.state = ParseJobState(row.Text(7)).value_or(JobState::kFailed);
  job.attempts = static_cast<uint32_t>(row.Int(8));
  job.cancel_requested = row.Int(9) != 0;
  job.created_at = FromMicros(row.Int(10));
  job.updated_at = FromMicros(row.Int(11));
  job.not_before = FromMicros(row.Int(12));
  if (!row.IsNull(13)) job.lease_until = FromMicros(row.Int(13));
  if (!row.IsNull(14)) job.finished_at = FromMicros(row.Int(14));
  job.runner = row.Text(15);
  // Rows written before messages were made valid text may hold any bytes.
  if (!row.IsNull(16)) {
    job.error = Error(ErrorCodeFromName(row.Text(16)), ToValidText(row.Text(17)));
  }
  if (!row.IsNull(18)) job.started_at = FromMicros(row.Int(18));
  if (payloads) {
    job.spec.input = row.Blob(19);
    job.result = row.Blob(20);
  }
  return job;
}

// Complete() in one statement (see store.h for the rules): ?1 id, ?2
// claim, ?3 succeeded, ?4 retry wanted, ?5 state if not retried, ?6 now,
// ?7 result, ?8 error code, ?9 error message, ?10 kMaxRetryDelay in ms.
// SET sees the row as it was, so the retry condition is spelled out each
// time, with the attempt count this outcome makes (one more if the claim
// never started). The shift is bounded: 2^27 ms exceeds the cap.
const std::string& CompleteSql() {
  static const std::string sql = [] {
    const std::string attempts = "(attempts + (started_us IS NULL))";
    const std::string retried = "NOT cancel_requested AND ?4 AND " + attempts + " < max_attempts";
    return "UPDATE keel_jobs SET "
           "state = CASE WHEN cancel_requested THEN 'cancelled' WHEN ?3 THEN 'succeeded' "
           "WHEN NOT ?4 THEN ?5 WHEN " + attempts + " < max_attempts THEN 'queued' "
           "ELSE 'dead' END, "
           "not_before_us = ?6 + CASE WHEN " + retried +
           " THEN min(min(backoff_ms, ?10) << min(" + attempts +
           " - 1, 27), ?10) * 1000 ELSE 0 END, "
           "finished_us = CASE WHEN " + retried + " THEN NULL ELSE ?6 END, "
           "attempts = " + attempts + ", started_us = coalesce(started_us, ?6), "
           "result = ?7, error_code = ?8, error_message = ?9, lease_until_us = NULL, "
           "updated_us = ?6 "
           "WHERE id = ?1 AND state = 'running' AND claims = ?2 "
           "RETURNING state, not_before_us - updated_us";
  }();
  return sql;
}

// Re-queues jobs whose lease expired (?1 now, ?2 the error, ?3 that of a
// job cancelled before it ran): one that had started has used its attempt
// and may end dead or cancelled; one only claimed goes back as it was, or
// ends cancelled. INDEXED BY: without statistics SQLite may pick
// another index (before schema version 4 it picked the full state index
// and sorted every queued job on each claim).
constexpr char kReapSql[] =
    "UPDATE keel_jobs INDEXED BY keel_jobs_leased SET "
    "state = CASE WHEN cancel_requested THEN 'cancelled' WHEN started_us IS NULL THEN 'queued' "
    "WHEN attempts >= max_attempts THEN 'dead' ELSE 'queued' END, "
    "finished_us = CASE WHEN cancel_requested OR (started_us IS NOT NULL AND "
    "attempts >= max_attempts) THEN ?1 END, "
    "error_code = CASE WHEN started_us IS NOT NULL THEN 'unavailable' "
    "WHEN cancel_requested THEN 'cancelled' ELSE error_code END, "
    "error_message = CASE WHEN started_us IS NOT NULL THEN ?2 "
    "WHEN cancel_requested THEN ?3 ELSE error_message END, "
    "not_before_us = ?1, lease_until_us = NULL, updated_us = ?1 "
    "WHERE state = 'running' AND lease_until_us < ?1";

// Leases ready jobs: ?1 now, ?2 lease expiry, ?3 runner, ?4 how many.
constexpr char kLeaseSql[] =
    "UPDATE keel_jobs SET state = 'running', claims = claims + 1, started_us = NULL, "
    "lease_until_us = ?2, runner = ?3, updated_us = ?1 "
    "WHERE seq IN (SELECT seq FROM keel_jobs INDEXED BY keel_jobs_ready "
    "WHERE state = 'queued' AND not_before_us <= ?1 ORDER BY not_before_us, seq LIMIT ?4) "
    "RETURNING id, claims, attempts, module_digest, export_name, deadline_ms, idempotency_key, "
    "max_attempts, backoff_ms, input, not_before_us, seq";

// Release(): ?1 now, ?2 the error of a cancelled job, ?3 id, ?4 claim.
constexpr char kReleaseSql[] =
    "UPDATE keel_jobs SET state = CASE WHEN cancel_requested THEN 'cancelled' ELSE 'queued' END, "
    "finished_us = CASE WHEN cancel_requested THEN ?1 END, "
    "error_code = CASE WHEN cancel_requested THEN 'cancelled' ELSE error_code END, "
    "error_message = CASE WHEN cancel_requested THEN ?2 ELSE error_message END, "
    "attempts = attempts - (started_us IS NOT NULL), started_us = NULL, "
    "not_before_us = ?1, lease_until_us = NULL, updated_us = ?1 "
    "WHERE id = ?3 AND state = 'running' AND claims = ?4 RETURNING state";

// The migration driver's view of the writer connection.
class SchemaDatabase final : public schema::Database {
 public:
  explicit SchemaDatabase(Connection& conn) : conn_(conn) {}
  Result<void> Exec(const char* sql) override { return conn_.Exec(sql); }
  Result<bool> TableExists(std::string_view name) override {
    Statement select =
        conn_.Prepare("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?1");
    select.Bind(1, name);
    return select.Step();
  }
  Result<std::optional<int>> RecordedVersion() override {
    Statement select = conn_.Prepare("SELECT max(version) FROM keel_schema_migrations");
    Result<bool> row = select.Step();
    if (!row) return tl::unexpected(row.error());
    if (!*row || select.IsNull(0)) return std::nullopt;
    return static_cast<int>(select.Int(0));
  }
  Result<void> Record(int version, std::string_view summary) override {
    Statement insert = conn_.Prepare(
        "INSERT INTO keel_schema_migrations (version, summary, applied_us) VALUES (?1, ?2, ?3)");
    insert.Bind(1, int64_t{version}).Bind(2, summary).Bind(3, NowMicros());
    return insert.Run();
  }

 private:
  Connection& conn_;
};

// Reads a ClaimedJob from a kLeaseSql row; returns it with its claim-order
// key (not_before, seq).
std::pair<std::pair<int64_t, int64_t>, ClaimedJob> ReadClaimed(const Statement& row,
                                                               int64_t lease_until) {
  ClaimedJob job;
  job.id = row.Text(0);
  job.claim = static_cast<uint64_t>(row.Int(1));
  job.attempt = static_cast<uint32_t>(row.Int(2) + 1);
  job.spec.module_digest = row.Text(3);
  job.spec.export_name = row.Text(4);
  job.spec.deadline = std::chrono::milliseconds(row.Int(5));
  job.spec.idempotency_key = row.Text(6);
  job.spec.max_attempts = static_cast<uint32_t>(row.Int(7));
  job.spec.retry_backoff = std::chrono::milliseconds(row.Int(8));
  job.spec.input = row.Blob(9);
  job.lease_until = FromMicros(lease_until);
  return {{row.Int(10), row.Int(11)}, std::move(job)};
}

class SqliteStore final : public JobStore {
 public:
  SqliteStore(const std::string& path, std::unique_ptr<Connection> writer,
              std::chrono::milliseconds poll_interval)
      : poll_interval_(poll_interval),
        writer_(std::move(writer)),
        readers_([path] { return Connection::Open(path); }, kMaxReaders),
        committer_(GroupCommitter::Hooks{
                       .begin = [this] { return writer_->Exec("BEGIN IMMEDIATE"); },
                       .commit = [this](bool) { return writer_->Exec("COMMIT"); },
                       .rollback = [this] { (void)writer_->Exec("ROLLBACK"); },
                       .committed =
                           [this](bool wake) {
                             if (wake) wake_.Notify();
                           },
                   },
                   kMaxCommitBatch) {}

  Result<std::string> PutModule(std::span<const uint8_t> bytes) override {
    std::string digest = Sha256Hex(bytes);
    Result<void> run = committer_.Run([&]() -> Result<bool> {
      Statement insert = writer_->Prepare(
          "INSERT INTO keel_modules (digest, bytes, created_us) VALUES (?1, ?2, ?3) "
          "ON CONFLICT (digest) DO NOTHING");
      insert.Bind(1, digest).BindBlob(2, bytes).Bind(3, NowMicros());
      Result<void> done = insert.Run();
      if (!done) return tl::unexpected(done.error());
      return false;
    });
    if (!run) return tl::unexpected(run.error());
    return digest;
  }

  Result<std::vector<uint8_t>> GetModule(std::string_view digest) override {
    if (Result<void> valid = ValidateDigest(digest); !valid) return tl::unexpected(valid.error());
    return readers_.With([&](Connection& conn) -> Result<std::vector<uint8_t>> {
      Statement select = conn.Prepare("SELECT bytes FROM keel_modules WHERE digest = ?1");
      select.Bind(1, digest);
      Result<bool> row = select.Step();
      if (!row) return tl::unexpected(row.error());
      if (!*row) return MakeError(ErrorCode::kNotFound, "no module " + std::string(digest));
      return select.Blob(0);
    });
  }

  Result<SubmitResult> Submit(const JobSpec& spec) override {
    if (Result<void> valid = ValidateSpec(spec); !valid) return tl::unexpected(valid.error());
    SubmitResult out;
    Result<void> run = committer_.Run([&]() -> Result<bool> {
      int64_t now = NowMicros();
      out = SubmitResult{.id = NewJobId(), .module_digest = spec.module_digest};
      Statement insert = writer_->Prepare(
          "INSERT INTO keel_jobs (id, module_digest, export_name, input, deadline_ms, "
          "idempotency_key, max_attempts, backoff_ms, state, created_us, updated_us, "
          "not_before_us) SELECT ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, 'queued', ?9, ?9, ?9 "
          "WHERE EXISTS (SELECT 1 FROM keel_modules WHERE digest = ?2) "
          "ON CONFLICT (idempotency_key) DO NOTHING");
      insert.Bind(1, out.id)
          .Bind(2, spec.module_digest)
          .Bind(3, spec.export_name)
          .BindBlob(4, spec.input)
          .Bind(5, static_cast<int64_t>(spec.deadline.count()))
          .BindOrNull(6, spec.idempotency_key)
          .Bind(7, static_cast<int64_t>(spec.max_attempts))
          .Bind(8, static_cast<int64_t>(spec.retry_backoff.count()))
          .Bind(9, now);
      Result<void> inserted = insert.Run();
      if (!inserted) return tl::unexpected(inserted.error());
      if (writer_->changes() == 1) return true;
      if (spec.idempotency_key.empty()) return NoSuchModule(spec.module_digest);
      Result<void> existing = ReadKeyedJob(spec, &out);
      if (!existing) return tl::unexpected(existing.error());
      return false;
    });
    if (!run) return tl::unexpected(run.error());
    return out;
  }

  Result<Job> Get(std::string_view id) override {
    if (!IsJobId(id)) return NoSuchJob(id);
    static const std::string kSql =
        std::string("SELECT ") + kJobColumns + ", input, result FROM keel_jobs WHERE id = ?1";
    return readers_.With([&](Connection& conn) -> Result<Job> {
      Statement select = conn.Prepare(kSql);
      select.Bind(1, id);
      Result<bool> row = select.Step();
      if (!row) return tl::unexpected(row.error());
      if (!*row) return NoSuchJob(id);
      return ReadJob(select, /*payloads=*/true);
    });
  }

  Result<std::vector<Job>> List(const ListFilter& filter) override {
    std::string sql = std::string("SELECT ") + kJobColumns + " FROM keel_jobs";
    if (filter.state) sql += StateFilterSql(*filter.state);
    sql += filter.newest_first ? " ORDER BY seq DESC" : " ORDER BY seq";
    sql += " LIMIT ?1";
    return readers_.With([&](Connection& conn) -> Result<std::vector<Job>> {
      Statement select = conn.Prepare(sql);
      select.Bind(1, static_cast<int64_t>(filter.limit));
      std::vector<Job> jobs;
      while (true) {
        Result<bool> row = select.Step();
        if (!row) return tl::unexpected(row.error());
        if (!*row) return jobs;
        jobs.push_back(ReadJob(select, /*payloads=*/false));
      }
    });
  }

  Result<StateCounts> CountByState() override {
    return readers_.With([&](Connection& conn) -> Result<StateCounts> {
      Statement select = conn.Prepare(kCountByStateSql);
      StateCounter counter;
      while (true) {
        Result<bool> row = select.Step();
        if (!row) return tl::unexpected(row.error());
        if (!*row) return counter.Counts();
        counter.Add(select.Text(0), select.Int(1));
      }
    });
  }

  Result<std::vector<ClaimedJob>> Claim(const ClaimRequest& request) override {
    if (Result<void> valid = ValidateClaim(request); !valid) {
      return tl::unexpected(valid.error());
    }
    return ClaimWithWait(wake_, request, poll_interval_, [&] { return ClaimReady(request); });
  }

  Result<TimePoint> Start(std::string_view id, uint64_t claim,
                          std::chrono::milliseconds lease) override {
    return ExtendLease(id, claim, lease, /*start=*/true);
  }

  Result<TimePoint> Heartbeat(std::string_view id, uint64_t claim,
                              std::chrono::milliseconds lease) override {
    return ExtendLease(id, claim, lease, /*start=*/false);
  }

  Result<JobState> Complete(std::string_view id, uint64_t claim,
                            const Outcome& outcome) override {
    if (!IsJobId(id)) return NoSuchJob(id);
    Result<JobState> out;
    Result<void> run =
        committer_.Run([&]() -> Result<bool> { return WriteOutcome(id, claim, outcome, &out); });
    if (!run) return tl::unexpected(run.error());
    return out;
  }

  std::vector<Result<JobState>> CompleteAll(std::span<const Completion> completions) override {
    OutcomeBatch batch(completions);
    bool rolled_back = false;
    Result<void> run = committer_.Run(
        [&] {
          return batch.Record([&](const Completion& c, Result<JobState>* out) {
            return WriteOutcome(c.id, c.claim, *c.outcome, out);
          });
        },
        batch.size(), &rolled_back);
    return batch.Answers(*this, run, rolled_back);
  }

  Result<void> Release(std::string_view id, uint64_t claim) override {
    if (!IsJobId(id)) return NoSuchJob(id);
    Result<void> out;
    Result<void> run = committer_.Run([&]() -> Result<bool> {
      Statement update = writer_->Prepare(kReleaseSql);
      update.Bind(1, NowMicros())
          .Bind(2, kReleasedCancelledMessage)
          .Bind(3, id)
          .Bind(4, static_cast<int64_t>(claim));
      Result<bool> row = update.Step();
      if (!row) return tl::unexpected(row.error());
      if (!*row) return LostLease(id, claim, &out);
      bool queued = update.Text(0) == "queued";
      if (Result<void> done = update.Run(); !done) return tl::unexpected(done.error());
      out = {};
      return queued;
    });
    if (!run) return tl::unexpected(run.error());
    return out;
  }

  Result<CancelOutcome> Cancel(std::string_view id) override {
    if (!IsJobId(id)) return NoSuchJob(id);
    Result<CancelOutcome> out;
    Result<void> run = committer_.Run([&]() -> Result<bool> {
      int64_t now = NowMicros();
      Statement select = writer_->Prepare("SELECT state FROM keel_jobs WHERE id = ?1");
      select.Bind(1, id);
      Result<bool> row = select.Step();
      if (!row) return tl::unexpected(row.error());
      if (!*row) {
        out = NoSuchJob(id);
        return false;
      }
      std::optional<JobState> state = ParseJobState(select.Text(0));
      if (state == JobState::kQueued) {
        Statement update = writer_->Prepare(
            "UPDATE keel_jobs SET state = 'cancelled', finished_us = ?2, updated_us = ?2, "
            "error_code = 'cancelled', error_message = ?3 WHERE id = ?1");
        update.Bind(1, id).Bind(2, now).Bind(3, kCancelledMessage);
        Result<void> done = update.Run();
        if (!done) return tl::unexpected(done.error());
        out = CancelOutcome::kWithdrawn;
      } else if (state == JobState::kRunning) {
        Statement update = writer_->Prepare(
            "UPDATE keel_jobs SET cancel_requested = 1, updated_us = ?2 WHERE id = ?1");
        update.Bind(1, id).Bind(2, now);
        Result<void> done = update.Run();
        if (!done) return tl::unexpected(done.error());
        out = CancelOutcome::kDetached;
      } else {
        out = CancelOutcome::kTooLate;
      }
      return false;
    });
    if (!run) return tl::unexpected(run.error());
    return out;
  }

  Result<int64_t> Purge(std::chrono::milliseconds retention) override {
    int64_t deleted = 0;
    Result<void> run = committer_.Run([&]() -> Result<bool> {
      Statement remove = writer_->Prepare("DELETE FROM keel_jobs WHERE finished_us < ?1");
      remove.Bind(1, NowMicros() - retention.count() * 1000);
      Result<void> done = remove.Run();
      if (!done) return tl::unexpected(done.error());
      deleted = writer_->changes();
      return false;
    });
    if (!run) return tl::unexpected(run.error());
    return deleted;
  }

  CommitStats commit_stats() const override { return committer_.stats(); }

 private:
  Result<void> ReadKeyedJob(const JobSpec& spec, SubmitResult* out) {
    Statement existing = writer_->Prepare(
        "SELECT id, module_digest, export_name, input, deadline_ms, max_attempts, backoff_ms "
        "FROM keel_jobs WHERE idempotency_key = ?1");
    existing.Bind(1, spec.idempotency_key);
    Result<bool> row = existing.Step();
    if (!row) return tl::unexpected(row.error());
    // Neither inserted nor held by the key: the module is not stored.
    if (!*row) return NoSuchModule(spec.module_digest);
    JobSpec held;
    held.module_digest = existing.Text(1);
    held.export_name = existing.Text(2);
    held.input = existing.Blob(3);
    held.deadline = std::chrono::milliseconds(existing.Int(4));
    held.max_attempts = static_cast<uint32_t>(existing.Int(5));
    held.retry_backoff = std::chrono::milliseconds(existing.Int(6));
    *out = SubmitResult{.id = existing.Text(0),
                        .module_digest = held.module_digest,
                        .created = false,
                        .conflict = !SameWork(spec, held)};
    return {};
  }

  // Start() and Heartbeat(): extends the lease (id, claim); Start also
  // counts the attempt, and only once.
  Result<TimePoint> ExtendLease(std::string_view id, uint64_t claim,
                                std::chrono::milliseconds lease, bool start) {
    if (!IsJobId(id)) return NoSuchJob(id);
    if (lease.count() <= 0) return MakeError(ErrorCode::kInvalidArgument, "lease <= 0");
    Result<TimePoint> out;
    Result<void> run = committer_.Run([&]() -> Result<bool> {
      int64_t now = NowMicros();
      int64_t until = now + lease.count() * 1000;
      Statement update = writer_->Prepare(
          start ? "UPDATE keel_jobs SET lease_until_us = ?1, updated_us = ?2, started_us = ?2, "
                  "attempts = attempts + 1 "
                  "WHERE id = ?3 AND state = 'running' AND claims = ?4 AND started_us IS NULL"
                : "UPDATE keel_jobs SET lease_until_us = ?1, updated_us = ?2 "
                  "WHERE id = ?3 AND state = 'running' AND claims = ?4");
      update.Bind(1, until).Bind(2, now).Bind(3, id).Bind(4, static_cast<int64_t>(claim));
      Result<void> done = update.Run();
      if (!done) return tl::unexpected(done.error());
      if (writer_->changes() == 1) {
        out = FromMicros(until);
        return false;
      }
      return LostLease(id, claim, &out);
    });
    if (!run) return tl::unexpected(run.error());
    return out;
  }

  // Complete()'s write, on the writer inside the open transaction.
  Result<bool> WriteOutcome(std::string_view id, uint64_t claim, const Outcome& outcome,
                            Result<JobState>* out) {
    bool succeeded = outcome.kind == Outcome::Kind::kSucceeded;
    Statement update = writer_->Prepare(CompleteSql());
    update.Bind(1, id)
        .Bind(2, static_cast<int64_t>(claim))
        .Bind(3, int64_t{succeeded})
        .Bind(4, int64_t{!succeeded && outcome.retry})
        .Bind(5, outcome.kind == Outcome::Kind::kTimedOut ? "timed_out" : "failed")
        .Bind(6, NowMicros())
        .Bind(10, static_cast<int64_t>(kMaxRetryDelay.count()));
    if (succeeded) {
      update.BindBlob(7, outcome.result).BindNull(8).BindNull(9);
    } else {
      update.BindNull(7)
          .Bind(8, ToString(outcome.error.code))
          .Bind(9, ToValidText(outcome.error.message));
    }
    Result<bool> row = update.Step();
    if (!row) return tl::unexpected(row.error());
    if (!*row) return LostLease(id, claim, out);
    JobState state = ParseJobState(update.Text(0)).value_or(JobState::kFailed);
    bool ready_now = state == JobState::kQueued && update.Int(1) == 0;
    if (Result<void> done = update.Run(); !done) return tl::unexpected(done.error());
    *out = state;
    return ready_now;
  }

  // Inside a write transaction, when (id, claim) matched no row: sets *out
  // to kNotFound if the job does not exist, else kFailedPrecondition naming
  // why. Returns false (nothing made claimable) or a database error.
  template <typename T>
  Result<bool> LostLease(std::string_view id, uint64_t claim, Result<T>* out) {
    Statement select = writer_->Prepare(
        "SELECT state = 'running' AND claims = ?2 AND started_us IS NOT NULL FROM keel_jobs "
        "WHERE id = ?1");
    select.Bind(1, id).Bind(2, static_cast<int64_t>(claim));
    Result<bool> row = select.Step();
    if (!row) return tl::unexpected(row.error());
    *out = tl::unexpected(LeaseError(id, claim, *row, *row && select.Int(0) != 0));
    return false;
  }

  // One claim attempt: re-queues expired leases, then leases ready jobs.
  Result<std::vector<ClaimedJob>> ClaimReady(const ClaimRequest& request) {
    std::vector<ClaimedJob> claimed;
    Result<void> run = committer_.Run([&]() -> Result<bool> {
      claimed.clear();
      int64_t now = NowMicros();
      Statement reap = writer_->Prepare(kReapSql);
      reap.Bind(1, now).Bind(2, kLeaseExpiredMessage).Bind(3, kCancelledMessage);
      Result<void> reaped = reap.Run();
      if (!reaped) return tl::unexpected(reaped.error());
      bool requeued = writer_->changes() > 0;

      Statement lease = writer_->Prepare(kLeaseSql);
      int64_t until = now + request.lease.count() * 1000;
      lease.Bind(1, now).Bind(2, until).Bind(3, request.runner);
      lease.Bind(4, static_cast<int64_t>(request.max_jobs));
      std::vector<std::pair<std::pair<int64_t, int64_t>, ClaimedJob>> rows;
      while (true) {
        Result<bool> row = lease.Step();
        if (!row) return tl::unexpected(row.error());
        if (!*row) break;
        rows.push_back(ReadClaimed(lease, until));
      }
      // RETURNING gives no order; claim order is (not_before, seq).
      std::sort(rows.begin(), rows.end(),
                [](const auto& a, const auto& b) { return a.first < b.first; });
      for (auto& [key, job] : rows) claimed.push_back(std::move(job));
      return requeued;
    });
    if (!run) return tl::unexpected(run.error());
    return claimed;
  }

  const std::chrono::milliseconds poll_interval_;
  std::unique_ptr<Connection> writer_;  // used by the committer thread only

  ConnectionPool<Connection> readers_;


  WakeSignal wake_;
  GroupCommitter committer_;  // last: destroyed first, finishing its writes
};

// An exclusive flock on a file beside the database, held while a store
// opens it, so that openers (processes or threads) take turns: switching a
// new file to WAL needs its exclusive lock, and SQLite answers a second
// opener asking for it at the same moment "database is locked" at once,
// without waiting (its busy handler could deadlock there).
class OpenLock {
 public:
  static Result<OpenLock> Take(const std::string& db_path) {
    std::string path = db_path + "-open.lock";
    int fd = open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0) return Failed("open ", path, errno);
    OpenLock lock(fd);
    int rc;
    do {
      rc = flock(fd, LOCK_EX);
    } while (rc != 0 && errno == EINTR);
    if (rc != 0) return Failed("flock ", path, errno);
    return lock;
  }

  OpenLock(OpenLock&& other) noexcept : fd_(std::exchange(other.fd_, -1)) {}
  OpenLock& operator=(OpenLock&&) = delete;
  ~OpenLock() {
    if (fd_ >= 0) close(fd_);  // releases the flock
  }

 private:
  explicit OpenLock(int fd) : fd_(fd) {}
  // `error` is errno, read before anything else can change it.
  static tl::unexpected<Error> Failed(const char* what, const std::string& path, int error) {
    return MakeError(ErrorCode::kUnavailable,
                     what + path + ": " + std::system_category().message(error));
  }
  int fd_;
};

// Brings the schema to the current version in one write transaction, which
// other processes opening the file wait for.
Result<void> MigrateSchema(Connection& writer, const std::string& path) {
  if (Result<void> begun = writer.Exec("BEGIN IMMEDIATE"); !begun) return begun;
  SchemaDatabase db(writer);
  Result<void> done = schema::Migrate(schema::Dialect::kSqlite, db).and_then([&](int) {
    return writer.Exec("COMMIT");
  });
  if (done) return {};
  (void)writer.Exec("ROLLBACK");
  Error error = done.error();
  if (error.code != ErrorCode::kFailedPrecondition) error.code = ErrorCode::kUnavailable;
  error.message = path + ": " + error.message;
  return tl::unexpected(std::move(error));
}

}  // namespace

Result<std::unique_ptr<JobStore>> OpenSqliteStore(const std::string& path,
                                               const StoreOptions& options) {
  Result<OpenLock> lock = OpenLock::Take(path);
  if (!lock) return tl::unexpected(lock.error());
  Result<std::unique_ptr<Connection>> writer = Connection::Open(path);
  if (!writer) return tl::unexpected(writer.error());
  // WAL lets readers run beside the writer; FULL makes each commit durable
  // (see sqlite_store.h).
  for (const char* pragma : {"PRAGMA journal_mode = WAL", "PRAGMA synchronous = FULL"}) {
    if (Result<void> set = (*writer)->Exec(pragma); !set) {
      Error error = set.error();
      error.code = ErrorCode::kUnavailable;
      return tl::unexpected(std::move(error));
    }
  }
  {
    Statement mode = (*writer)->Prepare("PRAGMA journal_mode");
    Result<bool> row = mode.Step();
    if (!row || !*row || mode.Text(0) != "wal") {
      return MakeError(ErrorCode::kUnavailable, "sqlite: cannot enable WAL on " + path);
    }
  }
  if (Result<void> migrated = MigrateSchema(**writer, path); !migrated) {
    return tl::unexpected(migrated.error());
  }
  return std::make_unique<SqliteStore>(path, std::move(*writer), options.claim_poll_interval);
}

}  // namespace keel::jobs

#include "jobs/postgres_store.h"

#include <fcntl.h>
#include <libpq-fe.h>
#include <poll.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <thread>
#include <utility>

#include "base/sha256.h"
#include "jobs/connection_pool.h"
#include "jobs/internal.h"
#include "jobs/postgres_db.h"
#include "jobs/schema.h"

namespace keel::jobs {
namespace {

using std::string_view_literals::operator""sv;
using pg::CommitLane;
using pg::Connection;
using pg::Params;
using pg::Rows;

constexpr size_t kMaxReaders = 4;
constexpr size_t kCommitLanes = 4;
constexpr std::chrono::milliseconds kReapInterval{100};
constexpr int kReconnectDelayMs = 1000;
// Serializes schema migrations between processes.
constexpr int64_t kSchemaLockKey = 4242001;
// Where NOTIFY tells every store that work became claimable.
constexpr char kNotifyChannel[] = "keel_jobs";

// Same order as the SQLite store: see ReadJob.
constexpr char kJobColumns[] =
    "id, module_digest, export_name, deadline_ms, idempotency_key, max_attempts, backoff_ms, "
    "state, attempts, cancel_requested, created_us, updated_us, not_before_us, lease_until_us, "
    "finished_us, runner, error_code, error_message, started_us";

Job ReadJob(const Rows& rows, int r, bool payloads) {
  Job job;
  job.id = rows.Text(r, 0);
  job.spec.module_digest = rows.Text(r, 1);
  job.spec.export_name = rows.Text(r, 2);
  job.spec.deadline = std::chrono::milliseconds(rows.Int(r, 3));
  if (!rows.IsNull(r, 4)) job.spec.idempotency_key = rows.Text(r, 4);
  job.spec.max_attempts = static_cast<uint32_t>(rows.Int(r, 5));
  job.spec.retry_backoff = std::chrono::milliseconds(rows.Int(r, 6));
  job.state = ParseJobState(rows.Text(r, 7)).value_or(JobState::kFailed);
  job.attempts = static_cast<uint32_t>(rows.Int(r, 8));
  job.cancel_requested = rows.Bool(r, 9);
  job.created_at = FromMicros(rows.Int(r, 10));
  job.updated_at = FromMicros(rows.Int(r, 11));
  job.not_before = FromMicros(rows.Int(r, 12));
  if (!rows.IsNull(r, 13)) job.lease_until = FromMicros(rows.Int(r, 13));
  if (!rows.IsNull(r, 14)) job.finished_at = FromMicros(rows.Int(r, 14));
  if (!rows.IsNull(r, 15)) job.runner = rows.Text(r, 15);
  if (!rows.IsNull(r, 16)) {
    job.error = Error(ErrorCodeFromName(rows.Text(r, 16)),
                      rows.IsNull(r, 17) ? std::string() : rows.Text(r, 17));
  }
  if (!rows.IsNull(r, 18)) job.started_at = FromMicros(rows.Int(r, 18));
  if (payloads) {
    job.spec.input = rows.Bytes(r, 19);
    if (!rows.IsNull(r, 20)) job.result = rows.Bytes(r, 20);
  }
  return job;
}

// Complete() in one statement, one round trip (see store.h for the rules):
// $1 id, $2 claim, $3 succeeded, $4 retry wanted, $5 state if not retried,
// $6 result, $7 error code, $8 error message, $9 kMaxRetryDelay in ms. SET
// sees the row as it was, so the retry condition is spelled out each time,
// with the attempt count this outcome makes (one more if the claim never
// started). The shift is bounded: 2^27 ms exceeds the cap.
const std::string& CompleteSql() {
  static const std::string sql = [] {
    const std::string attempts = "(attempts + CASE WHEN started_us IS NULL THEN 1 ELSE 0 END)";
    const std::string retried =
        "NOT cancel_requested AND $4::boolean AND " + attempts + " < max_attempts";
    return "UPDATE keel_jobs SET "
           "state = CASE WHEN cancel_requested THEN 'cancelled' WHEN $3::boolean THEN 'succeeded' "
           "WHEN NOT $4::boolean THEN $5::text WHEN " + attempts + " < max_attempts THEN 'queued' "
           "ELSE 'dead' END, "
           "not_before_us = keel_now_us() + CASE WHEN " + retried +
           " THEN LEAST(LEAST(backoff_ms, $9) << LEAST(" + attempts +
           " - 1, 27)::integer, $9) * 1000 ELSE 0 END, "
           "finished_us = CASE WHEN " + retried + " THEN NULL ELSE keel_now_us() END, "
           "attempts = " + attempts + ", started_us = coalesce(started_us, keel_now_us()), "
           "result = $6, error_code = $7, error_message = $8, lease_until_us = NULL, "
           "updated_us = keel_now_us() "
           "WHERE id = $1 AND state = 'running' AND claims = $2 "
           "RETURNING state, not_before_us - updated_us";
  }();
  return sql;
}

// Re-queues jobs whose lease expired ($1 the error, $2 that of a job
// cancelled before it ran): one that had started has used its attempt and
// may end dead or cancelled; one only claimed goes back as it was, or ends
// cancelled.
constexpr char kReapSql[] =
    "WITH expired AS (SELECT seq FROM keel_jobs WHERE state = 'running' "
    "AND lease_until_us < keel_now_us() FOR UPDATE SKIP LOCKED) "
    "UPDATE keel_jobs j SET "
    "state = CASE WHEN cancel_requested THEN 'cancelled' WHEN started_us IS NULL THEN 'queued' "
    "WHEN attempts >= max_attempts THEN 'dead' ELSE 'queued' END, "
    "finished_us = CASE WHEN cancel_requested OR (started_us IS NOT NULL AND "
    "attempts >= max_attempts) THEN keel_now_us() END, "
    "error_code = CASE WHEN started_us IS NOT NULL THEN 'unavailable' "
    "WHEN cancel_requested THEN 'cancelled' ELSE error_code END, "
    "error_message = CASE WHEN started_us IS NOT NULL THEN $1 "
    "WHEN cancel_requested THEN $2 ELSE error_message END, "
    "not_before_us = keel_now_us(), lease_until_us = NULL, updated_us = keel_now_us() "
    "FROM expired WHERE j.seq = expired.seq";

// Leases ready jobs: $1 lease in µs, $2 runner, $3 how many. SKIP LOCKED lets
// concurrent claimers (any process) pass rows another transaction holds
// instead of waiting for or double-claiming them.
constexpr char kLeaseSql[] =
    "WITH ready AS (SELECT seq FROM keel_jobs WHERE state = 'queued' "
    "AND not_before_us <= keel_now_us() ORDER BY not_before_us, seq LIMIT $3 "
    "FOR UPDATE SKIP LOCKED) "
    "UPDATE keel_jobs j SET state = 'running', claims = claims + 1, started_us = NULL, "
    "lease_until_us = keel_now_us() + $1, runner = $2, updated_us = keel_now_us() "
    "FROM ready WHERE j.seq = ready.seq "
    "RETURNING j.id, j.claims, j.attempts, j.module_digest, j.export_name, j.deadline_ms, "
    "j.idempotency_key, j.max_attempts, j.backoff_ms, j.input, j.lease_until_us, "
    "j.not_before_us, j.seq";

// Release(): $1 id, $2 claim, $3 the error of a cancelled job.
constexpr char kReleaseSql[] =
    "UPDATE keel_jobs SET state = CASE WHEN cancel_requested THEN 'cancelled' ELSE 'queued' END, "
    "finished_us = CASE WHEN cancel_requested THEN keel_now_us() END, "
    "error_code = CASE WHEN cancel_requested THEN 'cancelled' ELSE error_code END, "
    "error_message = CASE WHEN cancel_requested THEN $3 ELSE error_message END, "
    "attempts = attempts - CASE WHEN started_us IS NULL THEN 0 ELSE 1 END, started_us = NULL, "
    "not_before_us = keel_now_us(), lease_until_us = NULL, updated_us = keel_now_us() "
    "WHERE id = $1 AND state = 'running' AND claims = $2 RETURNING state";

// Reads the ClaimedJob in row `r` of a kLeaseSql result.
ClaimedJob ReadClaimed(const Rows& rows, int r) {
  ClaimedJob job;
  job.id = rows.Text(r, 0);
  job.claim = static_cast<uint64_t>(rows.Int(r, 1));
  job.attempt = static_cast<uint32_t>(rows.Int(r, 2) + 1);
  job.spec.module_digest = rows.Text(r, 3);
  job.spec.export_name = rows.Text(r, 4);
  job.spec.deadline = std::chrono::milliseconds(rows.Int(r, 5));
  if (!rows.IsNull(r, 6)) job.spec.idempotency_key = rows.Text(r, 6);
  job.spec.max_attempts = static_cast<uint32_t>(rows.Int(r, 7));
  job.spec.retry_backoff = std::chrono::milliseconds(rows.Int(r, 8));
  job.spec.input = rows.Bytes(r, 9);
  job.lease_until = FromMicros(rows.Int(r, 10));
  return job;
}

// The migration driver's view of a connection inside the migration's
// transaction.
class SchemaDatabase final : public schema::Database {
 public:
  explicit SchemaDatabase(Connection& conn) : conn_(conn) {}
  Result<void> Exec(const char* sql) override {
    Result<std::string> done = conn_.ExecScript(sql);
    if (!done) return tl::unexpected(done.error());
    return {};
  }
  Result<bool> TableExists(std::string_view name) override {
    Result<Rows> rows = conn_.Exec("SELECT to_regclass($1) IS NOT NULL", Params().Add(name));
    if (!rows) return tl::unexpected(rows.error());
    return rows->Bool(0, 0);
  }
  Result<std::optional<int>> RecordedVersion() override {
    Result<Rows> rows = conn_.Exec("SELECT max(version) FROM keel_schema_migrations", Params());
    if (!rows) return tl::unexpected(rows.error());
    if (rows->size() == 0 || rows->IsNull(0, 0)) return std::nullopt;
    return static_cast<int>(rows->Int(0, 0));
  }
  Result<void> Record(int version, std::string_view summary) override {
    Result<Rows> done = conn_.Exec(
        "INSERT INTO keel_schema_migrations (version, summary, applied_us) "
        "VALUES ($1, $2, (extract(epoch FROM statement_timestamp()) * 1000000)::bigint)",
        Params().Add(int64_t{version}).Add(summary));
    if (!done) return tl::unexpected(done.error());
    return {};
  }

 private:
  Connection& conn_;
};

class PostgresStore final : public JobStore {
 public:
  PostgresStore(const std::string& url, std::vector<std::unique_ptr<Connection>> writers,
                int stop_read, int stop_write)
      : url_(url),
        readers_([url] { return Connection::Open(url); }, kMaxReaders),
        stop_read_(stop_read),
        stop_write_(stop_write) {
    for (auto& conn : writers) {
      lanes_.push_back(std::make_unique<CommitLane>(std::move(conn), wake_, kNotifyChannel));
    }
    listener_ = std::thread([this] { ListenLoop(); });
  }

  ~PostgresStore() override {
    char byte = 0;
    (void)!write(stop_write_, &byte, 1);
    listener_.join();
    close(stop_read_);
    close(stop_write_);
  }

  Result<std::string> PutModule(std::span<const uint8_t> bytes) override {
    std::string digest = Sha256Hex(bytes);
    if (known_modules_.Contains(digest)) return digest;
    Result<void> run = Write([&](Connection& db) -> Result<bool> {
      Result<Rows> done = db.Exec(
          "INSERT INTO keel_modules (digest, bytes, created_us) "
          "VALUES ($1, $2, keel_now_us()) ON CONFLICT (digest) DO NOTHING",
          Params().Add(digest).AddBytes(bytes));
      if (!done) return tl::unexpected(done.error());
      return false;
    });
    if (!run) return tl::unexpected(run.error());
    known_modules_.Add(digest);
    return digest;
  }

  Result<std::vector<uint8_t>> GetModule(std::string_view digest) override {
    if (Result<void> valid = ValidateDigest(digest); !valid) return tl::unexpected(valid.error());
    return readers_.With([&](Connection& conn) -> Result<std::vector<uint8_t>> {
      Result<Rows> rows =
          conn.Exec("SELECT bytes FROM keel_modules WHERE digest = $1", Params().Add(digest));
      if (!rows) return tl::unexpected(rows.error());
      if (rows->size() == 0) {
        return MakeError(ErrorCode::kNotFound, "no module " + std::string(digest));
      }
      return rows->Bytes(0, 0);
    });
  }

  Result<SubmitResult> Submit(const JobSpec& spec) override {
    if (Result<void> valid = ValidateSpec(spec); !valid) return tl::unexpected(valid.error());
    if (Result<void> known = CheckModule(spec.module_digest); !known) {
      return tl::unexpected(known.error());
    }
    SubmitResult out;
    Result<void> run = Write([&](Connection& db) -> Result<bool> {
      out = SubmitResult{.id = NewJobId(), .module_digest = spec.module_digest};
      Result<Rows> inserted = db.Exec(
          "INSERT INTO keel_jobs (id, module_digest, export_name, input, deadline_ms, "
          "idempotency_key, max_attempts, backoff_ms, state, created_us, updated_us, "
          "not_before_us) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 'queued', keel_now_us(), "
          "keel_now_us(), keel_now_us()) ON CONFLICT (idempotency_key) DO NOTHING RETURNING seq",
          Params()
              .Add(out.id)
              .Add(spec.module_digest)
              .Add(spec.export_name)
              .AddBytes(spec.input)
              .Add(static_cast<int64_t>(spec.deadline.count()))
              .AddOrNull(spec.idempotency_key)
              .Add(static_cast<int64_t>(spec.max_attempts))
              .Add(static_cast<int64_t>(spec.retry_backoff.count())));
      if (!inserted) return tl::unexpected(inserted.error());
      if (inserted->size() == 1) return true;
      Result<void> existing = ReadKeyedJob(db, spec, &out);
      if (!existing) return tl::unexpected(existing.error());
      return false;
    });
    if (!run) return tl::unexpected(run.error());
    return out;
  }

  Result<Job> Get(std::string_view id) override {
    if (!IsJobId(id)) return NoSuchJob(id);
    static const std::string kSql =
        std::string("SELECT ") + kJobColumns + ", input, result FROM keel_jobs WHERE id = $1";
    return readers_.With([&](Connection& conn) -> Result<Job> {
      Result<Rows> rows = conn.Exec(kSql, Params().Add(id));
      if (!rows) return tl::unexpected(rows.error());
      if (rows->size() == 0) return NoSuchJob(id);
      return ReadJob(*rows, 0, /*payloads=*/true);
    });
  }

  Result<std::vector<Job>> List(const ListFilter& filter) override {
    std::string sql = std::string("SELECT ") + kJobColumns + " FROM keel_jobs";
    Params params;
    if (filter.state) {
      sql += " WHERE state = $2";
    }
    sql += filter.newest_first ? " ORDER BY seq DESC" : " ORDER BY seq";
    sql += " LIMIT $1";
    params.Add(static_cast<int64_t>(filter.limit));
    if (filter.state) params.Add(ToString(*filter.state));
    return readers_.With([&](Connection& conn) -> Result<std::vector<Job>> {
      Result<Rows> rows = conn.Exec(sql, params);
      if (!rows) return tl::unexpected(rows.error());
      std::vector<Job> jobs;
      for (int r = 0; r < rows->size(); ++r) jobs.push_back(ReadJob(*rows, r, false));
      return jobs;
    });
  }

  Result<StateCounts> CountByState() override {
    return readers_.With([&](Connection& conn) -> Result<StateCounts> {
      Result<Rows> rows =
          conn.Exec("SELECT state, count(*) FROM keel_jobs GROUP BY state", Params());
      if (!rows) return tl::unexpected(rows.error());
      StateCounts counts{};
      for (int r = 0; r < rows->size(); ++r) {
        if (std::optional<JobState> state = ParseJobState(rows->Text(r, 0))) {
          counts[static_cast<size_t>(*state)] = rows->Int(r, 1);
        }
      }
      return counts;
    });
  }

  Result<std::vector<ClaimedJob>> Claim(const ClaimRequest& request) override {
    if (Result<void> valid = ValidateClaim(request); !valid) {
      return tl::unexpected(valid.error());
    }
    return ClaimWithWait(wake_, request, [&] { return ClaimReady(request); });
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
    bool succeeded = outcome.kind == Outcome::Kind::kSucceeded;
    Params params;
    params.Add(id)
        .Add(static_cast<int64_t>(claim))
        .AddBool(succeeded)
        .AddBool(!succeeded && outcome.retry)
        .Add(outcome.kind == Outcome::Kind::kTimedOut ? "timed_out"sv : "failed"sv);
    if (succeeded) {
      params.AddBytes(outcome.result).AddNull().AddNull();
    } else {
      params.AddNull().Add(ToString(outcome.error.code)).Add(ToValidText(outcome.error.message));
    }
    params.Add(static_cast<int64_t>(kMaxRetryDelay.count()));
    Result<JobState> out;
    Result<void> run = Write([&](Connection& db) -> Result<bool> {
      Result<Rows> rows = db.Exec(CompleteSql(), params);
      if (!rows) return tl::unexpected(rows.error());
      if (rows->size() == 0) return LostLease(db, id, claim, &out);
      JobState state = ParseJobState(rows->Text(0, 0)).value_or(JobState::kFailed);
      out = state;
      return state == JobState::kQueued && rows->Int(0, 1) == 0;
    });
    if (!run) return tl::unexpected(run.error());
    return out;
  }

  Result<void> Release(std::string_view id, uint64_t claim) override {
    if (!IsJobId(id)) return NoSuchJob(id);
    Result<void> out;
    Result<void> run = Write([&](Connection& db) -> Result<bool> {
      Result<Rows> rows = db.Exec(
          kReleaseSql,
          Params().Add(id).Add(static_cast<int64_t>(claim)).Add(kReleasedCancelledMessage));
      if (!rows) return tl::unexpected(rows.error());
      if (rows->size() == 0) return LostLease(db, id, claim, &out);
      out = {};
      return rows->Text(0, 0) == "queued";
    });
    if (!run) return tl::unexpected(run.error());
    return out;
  }

  Result<CancelOutcome> Cancel(std::string_view id) override {
    if (!IsJobId(id)) return NoSuchJob(id);
    Result<CancelOutcome> out;
    Result<void> run = Write([&](Connection& db) -> Result<bool> {
      Result<Rows> row =
          db.Exec("SELECT state FROM keel_jobs WHERE id = $1 FOR UPDATE", Params().Add(id));
      if (!row) return tl::unexpected(row.error());
      if (row->size() == 0) {
        out = NoSuchJob(id);
        return false;
      }
      std::optional<JobState> state = ParseJobState(row->Text(0, 0));
      if (state == JobState::kQueued) {
        Result<Rows> done = db.Exec(
            "UPDATE keel_jobs SET state = 'cancelled', finished_us = keel_now_us(), "
            "updated_us = keel_now_us(), error_code = 'cancelled', error_message = $2 "
            "WHERE id = $1",
            Params().Add(id).Add(kCancelledMessage));
        if (!done) return tl::unexpected(done.error());
        out = CancelOutcome::kWithdrawn;
      } else if (state == JobState::kRunning) {
        Result<Rows> done = db.Exec(
            "UPDATE keel_jobs SET cancel_requested = true, updated_us = keel_now_us() "
            "WHERE id = $1",
            Params().Add(id));
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
    Result<void> run = Write([&](Connection& db) -> Result<bool> {
      Result<Rows> done = db.Exec("DELETE FROM keel_jobs WHERE finished_us < keel_now_us() - $1",
                                  Params().Add(static_cast<int64_t>(retention.count() * 1000)));
      if (!done) return tl::unexpected(done.error());
      deleted = done->affected();
      return false;
    });
    if (!run) return tl::unexpected(run.error());
    return deleted;
  }

  CommitStats commit_stats() const override {
    CommitStats total;
    for (const auto& lane : lanes_) {
      CommitStats stats = lane->stats();
      total.transactions += stats.transactions;
      total.operations += stats.operations;
    }
    return total;
  }

 private:
  // True at most once per kReapInterval: re-queueing expired leases costs a
  // round trip, and a lease is never that precise anyway.
  bool ReapDue() {
    int64_t now = NowMicros();
    int64_t due = next_reap_us_.load(std::memory_order_relaxed);
    return now >= due && next_reap_us_.compare_exchange_strong(
                             due, now + std::chrono::microseconds(kReapInterval).count());
  }

  // Runs a write on the next lane, round robin.
  [[nodiscard]] Result<void> Write(const CommitLane::Op& op) {
    return lanes_[next_lane_.fetch_add(1, std::memory_order_relaxed) % lanes_.size()]->Run(op);
  }

  // Success if the module is stored; kNotFound if not. Modules are never
  // deleted, so a digest once seen stays valid and is cached.
  Result<void> CheckModule(const std::string& digest) {
    if (known_modules_.Contains(digest)) return {};
    Result<bool> found = readers_.With([&](Connection& conn) -> Result<bool> {
      Result<Rows> rows =
          conn.Exec("SELECT 1 FROM keel_modules WHERE digest = $1", Params().Add(digest));
      if (!rows) return tl::unexpected(rows.error());
      return rows->size() == 1;
    });
    if (!found) return tl::unexpected(found.error());
    if (!*found) return MakeError(ErrorCode::kNotFound, "no module " + digest);
    known_modules_.Add(digest);
    return {};
  }

  // Inside a write transaction, after an insert of `spec` met its key: sets
  // *out to the job holding the key, flagged if it is other work.
  Result<void> ReadKeyedJob(Connection& db, const JobSpec& spec, SubmitResult* out) {
    Result<Rows> rows = db.Exec(
        "SELECT id, module_digest, export_name, input, deadline_ms, max_attempts, backoff_ms "
        "FROM keel_jobs WHERE idempotency_key = $1",
        Params().Add(spec.idempotency_key));
    if (!rows) return tl::unexpected(rows.error());
    if (rows->size() != 1) {
      return MakeError(ErrorCode::kInternal, "insert ignored without a conflict");
    }
    JobSpec held;
    held.module_digest = rows->Text(0, 1);
    held.export_name = rows->Text(0, 2);
    held.input = rows->Bytes(0, 3);
    held.deadline = std::chrono::milliseconds(rows->Int(0, 4));
    held.max_attempts = static_cast<uint32_t>(rows->Int(0, 5));
    held.retry_backoff = std::chrono::milliseconds(rows->Int(0, 6));
    *out = SubmitResult{.id = rows->Text(0, 0),
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
    Result<void> run = Write([&](Connection& db) -> Result<bool> {
      Result<Rows> updated = db.Exec(
          start ? "UPDATE keel_jobs SET lease_until_us = keel_now_us() + $3, "
                  "updated_us = keel_now_us(), started_us = keel_now_us(), "
                  "attempts = attempts + 1 WHERE id = $1 AND state = 'running' AND claims = $2 "
                  "AND started_us IS NULL RETURNING lease_until_us"
                : "UPDATE keel_jobs SET lease_until_us = keel_now_us() + $3, "
                  "updated_us = keel_now_us() WHERE id = $1 AND state = 'running' "
                  "AND claims = $2 RETURNING lease_until_us",
          Params().Add(id).Add(static_cast<int64_t>(claim)).Add(lease.count() * 1000));
      if (!updated) return tl::unexpected(updated.error());
      if (updated->size() == 1) {
        out = FromMicros(updated->Int(0, 0));
        return false;
      }
      return LostLease(db, id, claim, &out);
    });
    if (!run) return tl::unexpected(run.error());
    return out;
  }

  // Inside a write transaction, when (id, claim) matched no row: sets *out
  // to kNotFound if the job does not exist, else kFailedPrecondition naming
  // why. Returns false (nothing made claimable) or a database error.
  template <typename T>
  Result<bool> LostLease(Connection& db, std::string_view id, uint64_t claim, Result<T>* out) {
    Result<Rows> rows = db.Exec(
        "SELECT state = 'running' AND claims = $2 AND started_us IS NOT NULL FROM keel_jobs "
        "WHERE id = $1",
        Params().Add(id).Add(static_cast<int64_t>(claim)));
    if (!rows) return tl::unexpected(rows.error());
    bool exists = rows->size() == 1;
    *out = tl::unexpected(LeaseError(id, claim, exists, exists && rows->Bool(0, 0)));
    return false;
  }

  // One claim attempt: re-queues expired leases, then leases ready jobs.
  Result<std::vector<ClaimedJob>> ClaimReady(const ClaimRequest& request) {
    std::vector<ClaimedJob> claimed;
    Result<void> run = Write([&](Connection& db) -> Result<bool> {
      claimed.clear();
      bool requeued = false;
      if (ReapDue()) {
        Result<Rows> reaped =
            db.Exec(kReapSql, Params().Add(kLeaseExpiredMessage).Add(kCancelledMessage));
        if (!reaped) return tl::unexpected(reaped.error());
        requeued = reaped->affected() > 0;
      }
      Params lease;
      lease.Add(static_cast<int64_t>(request.lease.count() * 1000))
          .Add(request.runner)
          .Add(static_cast<int64_t>(request.max_jobs));
      Result<Rows> rows = db.Exec(kLeaseSql, lease);
      if (!rows) return tl::unexpected(rows.error());
      std::vector<int> order(rows->size());
      for (int r = 0; r < rows->size(); ++r) order[r] = r;
      // RETURNING gives no order; claim order is (not_before, seq).
      std::sort(order.begin(), order.end(), [&](int a, int b) {
        return std::make_pair(rows->Int(a, 11), rows->Int(a, 12)) <
               std::make_pair(rows->Int(b, 11), rows->Int(b, 12));
      });
      for (int r : order) claimed.push_back(ReadClaimed(*rows, r));
      return requeued;
    });
    if (!run) return tl::unexpected(run.error());
    return claimed;
  }

  // Wakes waiting claimers on NOTIFY keel_jobs from any process; reconnects
  // when the connection drops (waking everyone, as notifications may have
  // been missed). Ends when stop_read_ becomes readable.
  void ListenLoop() {
    const std::string listen = std::string("LISTEN ") + kNotifyChannel;
    std::unique_ptr<Connection> conn;
    while (true) {
      if (conn == nullptr || !conn->healthy()) {
        conn.reset();
        Result<std::unique_ptr<Connection>> opened = Connection::Open(url_);
        if (opened && (*opened)->ExecScript(listen.c_str())) {
          conn = std::move(*opened);
          wake_.Notify();
        }
      }
      pollfd fds[2] = {{stop_read_, POLLIN, 0}, {conn ? PQsocket(conn->raw()) : -1, POLLIN, 0}};
      int ready = poll(fds, 2, conn ? -1 : kReconnectDelayMs);
      if (ready < 0 && errno != EINTR) return;
      if (fds[0].revents != 0) return;
      if (conn != nullptr && fds[1].revents != 0) {
        PQconsumeInput(conn->raw());
        bool notified = false;
        while (PGnotify* notify = PQnotifies(conn->raw())) {
          PQfreemem(notify);
          notified = true;
        }
        if (notified) wake_.Notify();
      }
    }
  }

  const std::string url_;
  ConnectionPool<Connection> readers_;

  KnownModules known_modules_;

  WakeSignal wake_;
  const int stop_read_;  // the listener's stop pipe
  const int stop_write_;
  std::vector<std::unique_ptr<CommitLane>> lanes_;
  std::atomic<size_t> next_lane_ = 0;
  std::atomic<int64_t> next_reap_us_ = 0;
  std::thread listener_;  // joined by the destructor
};

// Brings the schema to the current version in one transaction; the
// advisory lock makes concurrent openers (any process) take turns.
Result<void> MigrateSchema(Connection& conn) {
  std::string begin =
      "BEGIN; SELECT pg_advisory_xact_lock(" + std::to_string(kSchemaLockKey) + ")";
  Result<std::string> begun = conn.ExecScript(begin.c_str());
  if (!begun) return tl::unexpected(begun.error());
  SchemaDatabase db(conn);
  auto commit = [&](int) -> Result<void> {
    Result<std::string> tag = conn.ExecScript("COMMIT");
    if (!tag) return tl::unexpected(tag.error());
    if (*tag != "COMMIT") {
      return MakeError(ErrorCode::kInternal, "postgres: migration ended in " + *tag);
    }
    return {};
  };
  Result<void> done = schema::Migrate(schema::Dialect::kPostgres, db).and_then(commit);
  if (!done) (void)conn.ExecScript("ROLLBACK");
  return done;
}

}  // namespace

Result<std::unique_ptr<JobStore>> OpenPostgresStore(const std::string& url) {
  std::vector<std::unique_ptr<Connection>> writers;
  for (size_t i = 0; i < kCommitLanes; ++i) {
    Result<std::unique_ptr<Connection>> conn = Connection::Open(url);
    if (!conn) return tl::unexpected(conn.error());
    writers.push_back(std::move(*conn));
  }
  if (Result<void> migrated = MigrateSchema(*writers[0]); !migrated) {
    return tl::unexpected(migrated.error());
  }
  int stop[2];
  if (pipe2(stop, O_CLOEXEC) != 0) {
    return MakeError(ErrorCode::kInternal, "postgres: cannot create the listener's pipe");
  }
  return std::make_unique<PostgresStore>(url, std::move(writers), stop[0], stop[1]);
}

}  // namespace keel::jobs

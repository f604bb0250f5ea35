#include "jobs/sqlite_store.h"

#include <sqlite3.h>

#include <algorithm>
#include <mutex>
#include <unordered_map>
#include <utility>

#include "base/sha256.h"
#include "jobs/connection_pool.h"
#include "jobs/group_commit.h"
#include "jobs/internal.h"

namespace keel::jobs {
namespace {

constexpr int kBusyTimeoutMs = 10000;
constexpr size_t kMaxReaders = 8;

constexpr char kSchemaSql[] = R"sql(
BEGIN IMMEDIATE;
CREATE TABLE IF NOT EXISTS keel_modules (
  digest TEXT PRIMARY KEY,
  bytes BLOB NOT NULL,
  created_us INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS keel_jobs (
  seq INTEGER PRIMARY KEY,
  id TEXT NOT NULL UNIQUE,
  module_digest TEXT NOT NULL,
  export_name TEXT NOT NULL,
  deadline_ms INTEGER NOT NULL,
  idempotency_key TEXT UNIQUE,
  max_attempts INTEGER NOT NULL,
  backoff_ms INTEGER NOT NULL,
  state TEXT NOT NULL,
  attempts INTEGER NOT NULL DEFAULT 0,
  cancel_requested INTEGER NOT NULL DEFAULT 0,
  created_us INTEGER NOT NULL,
  updated_us INTEGER NOT NULL,
  not_before_us INTEGER NOT NULL,
  lease_until_us INTEGER,
  finished_us INTEGER,
  runner TEXT,
  error_code TEXT,
  error_message TEXT,
  input BLOB NOT NULL,
  result BLOB
);
CREATE INDEX IF NOT EXISTS keel_jobs_ready ON keel_jobs (not_before_us, seq)
  WHERE state = 'queued';
CREATE INDEX IF NOT EXISTS keel_jobs_leased ON keel_jobs (lease_until_us)
  WHERE state = 'running';
CREATE INDEX IF NOT EXISTS keel_jobs_finished ON keel_jobs (finished_us)
  WHERE finished_us IS NOT NULL;
CREATE INDEX IF NOT EXISTS keel_jobs_state ON keel_jobs (state, seq);
COMMIT;
)sql";

// Job columns in the order ReadJob expects; input and result come last so
// that List can leave them out.
constexpr char kJobColumns[] =
    "id, module_digest, export_name, deadline_ms, idempotency_key, max_attempts, backoff_ms, "
    "state, attempts, cancel_requested, created_us, updated_us, not_before_us, lease_until_us, "
    "finished_us, runner, error_code, error_message";

Error SqliteError(sqlite3* db, int rc, std::string_view what) {
  int primary = rc & 0xff;
  bool transient = primary == SQLITE_BUSY || primary == SQLITE_LOCKED ||
                   primary == SQLITE_CANTOPEN || primary == SQLITE_IOERR || primary == SQLITE_FULL;
  std::string message = std::string("sqlite: ") + std::string(what) + ": ";
  message += db != nullptr ? sqlite3_errmsg(db) : sqlite3_errstr(rc);
  return Error(transient ? ErrorCode::kUnavailable : ErrorCode::kInternal, std::move(message));
}

// A prepared statement borrowed from a Connection's cache; reset when this
// goes away. A failed prepare or bind is reported by the next Step().
// Move-only; used by one thread.
class Statement {
 public:
  Statement(sqlite3* db, sqlite3_stmt* stmt, int rc) : db_(db), stmt_(stmt), rc_(rc) {}
  Statement(Statement&& other) noexcept
      : db_(other.db_), stmt_(std::exchange(other.stmt_, nullptr)), rc_(other.rc_) {}
  Statement& operator=(Statement&&) = delete;
  ~Statement() {
    if (stmt_ != nullptr) {
      sqlite3_reset(stmt_);
      sqlite3_clear_bindings(stmt_);
    }
  }

  Statement& Bind(int index, int64_t value) {
    return Check(stmt_ ? sqlite3_bind_int64(stmt_, index, value) : SQLITE_OK);
  }
  Statement& Bind(int index, std::string_view text) {
    return Check(stmt_ ? sqlite3_bind_text(stmt_, index, text.data(), static_cast<int>(text.size()),
                                           SQLITE_TRANSIENT)
                       : SQLITE_OK);
  }
  // Binds NULL for empty text (optional text columns).
  Statement& BindOrNull(int index, std::string_view text) {
    if (!text.empty()) return Bind(index, text);
    return Check(stmt_ ? sqlite3_bind_null(stmt_, index) : SQLITE_OK);
  }
  Statement& BindBlob(int index, std::span<const uint8_t> bytes) {
    if (stmt_ == nullptr) return *this;
    // A null pointer would bind NULL, not an empty blob.
    if (bytes.empty()) return Check(sqlite3_bind_zeroblob(stmt_, index, 0));
    return Check(sqlite3_bind_blob64(stmt_, index, bytes.data(), bytes.size(), SQLITE_TRANSIENT));
  }
  Statement& BindNull(int index) {
    return Check(stmt_ ? sqlite3_bind_null(stmt_, index) : SQLITE_OK);
  }

  // Returns true when a row is ready, false when the statement is done.
  [[nodiscard]] Result<bool> Step() {
    if (rc_ != SQLITE_OK) return tl::unexpected(SqliteError(db_, rc_, "prepare/bind"));
    int rc = sqlite3_step(stmt_);
    if (rc == SQLITE_ROW) return true;
    if (rc == SQLITE_DONE) return false;
    return tl::unexpected(SqliteError(db_, rc, "step"));
  }
  // Steps to the end, ignoring rows.
  [[nodiscard]] Result<void> Run() {
    while (true) {
      Result<bool> row = Step();
      if (!row) return tl::unexpected(row.error());
      if (!*row) return {};
    }
  }

  bool IsNull(int col) const { return sqlite3_column_type(stmt_, col) == SQLITE_NULL; }
  int64_t Int(int col) const { return sqlite3_column_int64(stmt_, col); }
  std::string Text(int col) const {
    const unsigned char* text = sqlite3_column_text(stmt_, col);
    if (text == nullptr) return {};
    return std::string(reinterpret_cast<const char*>(text), sqlite3_column_bytes(stmt_, col));
  }
  std::vector<uint8_t> Blob(int col) const {
    const auto* data = static_cast<const uint8_t*>(sqlite3_column_blob(stmt_, col));
    if (data == nullptr) return {};
    return std::vector<uint8_t>(data, data + sqlite3_column_bytes(stmt_, col));
  }

 private:
  Statement& Check(int rc) {
    if (rc_ == SQLITE_OK) rc_ = rc;
    return *this;
  }

  sqlite3* db_;
  sqlite3_stmt* stmt_;
  int rc_;
};

// One connection with its prepared statements. Used by one thread at a time.
class Connection {
 public:
  static Result<std::unique_ptr<Connection>> Open(const std::string& path) {
    sqlite3* db = nullptr;
    int flags = SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX;
    int rc = sqlite3_open_v2(path.c_str(), &db, flags, nullptr);
    auto conn = std::unique_ptr<Connection>(new Connection(db));
    if (rc != SQLITE_OK) {
      Error error = SqliteError(db, rc, "open " + path);
      error.code = ErrorCode::kUnavailable;
      return tl::unexpected(std::move(error));
    }
    sqlite3_busy_timeout(db, kBusyTimeoutMs);
    sqlite3_extended_result_codes(db, 1);
    return conn;
  }

  ~Connection() {
    for (auto& [sql, stmt] : cache_) sqlite3_finalize(stmt);
    sqlite3_close(db_);
  }

  [[nodiscard]] Result<void> Exec(const char* sql) {
    int rc = sqlite3_exec(db_, sql, nullptr, nullptr, nullptr);
    if (rc != SQLITE_OK) return tl::unexpected(SqliteError(db_, rc, "exec"));
    return {};
  }

  // The cached statement for `sql`, ready to bind.
  Statement Prepare(const std::string& sql) {
    auto it = cache_.find(sql);
    if (it != cache_.end()) return Statement(db_, it->second, SQLITE_OK);
    sqlite3_stmt* stmt = nullptr;
    int rc = sqlite3_prepare_v3(db_, sql.c_str(), static_cast<int>(sql.size()),
                                SQLITE_PREPARE_PERSISTENT, &stmt, nullptr);
    if (rc != SQLITE_OK) return Statement(db_, nullptr, rc);
    cache_.emplace(sql, stmt);
    return Statement(db_, stmt, SQLITE_OK);
  }

  int64_t changes() const { return sqlite3_changes64(db_); }
  // For ConnectionPool: SQLite connections do not break.
  bool healthy() const { return true; }

 private:
  explicit Connection(sqlite3* db) : db_(db) {}

  sqlite3* db_;
  std::unordered_map<std::string, sqlite3_stmt*> cache_;
};

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
  if (!row.IsNull(16)) job.error = Error(ErrorCodeFromName(row.Text(16)), row.Text(17));
  if (payloads) {
    job.spec.input = row.Blob(18);
    job.result = row.Blob(19);
  }
  return job;
}

// Complete() in one statement (see store.h for the rules): ?1 id, ?2
// attempt, ?3 succeeded, ?4 retry wanted, ?5 state if not retried, ?6 now,
// ?7 result, ?8 error code, ?9 error message, ?10 kMaxRetryDelay in ms.
// SET sees the row as it was, so the retry condition is spelled out twice.
// The shift is bounded: 2^27 ms exceeds the cap.
constexpr char kCompleteSql[] =
    "UPDATE keel_jobs SET "
    "state = CASE WHEN cancel_requested THEN 'cancelled' WHEN ?3 THEN 'succeeded' "
    "WHEN NOT ?4 THEN ?5 WHEN attempts < max_attempts THEN 'queued' ELSE 'dead' END, "
    "not_before_us = ?6 + CASE WHEN NOT cancel_requested AND ?4 AND attempts < max_attempts "
    "THEN min(min(backoff_ms, ?10) << min(attempts - 1, 27), ?10) * 1000 ELSE 0 END, "
    "finished_us = CASE WHEN NOT cancel_requested AND ?4 AND attempts < max_attempts "
    "THEN NULL ELSE ?6 END, "
    "result = ?7, error_code = ?8, error_message = ?9, lease_until_us = NULL, updated_us = ?6 "
    "WHERE id = ?1 AND state = 'running' AND attempts = ?2 "
    "RETURNING state, not_before_us - updated_us";

class SqliteStore final : public JobStore {
 public:
  SqliteStore(const std::string& path, std::unique_ptr<Connection> writer)
      : writer_(std::move(writer)),
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
    if (known_modules_.Contains(digest)) return digest;
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
    known_modules_.Add(digest);
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
    if (Result<void> known = CheckModule(spec.module_digest); !known) {
      return tl::unexpected(known.error());
    }
    SubmitResult out;
    Result<void> run = committer_.Run([&]() -> Result<bool> {
      int64_t now = NowMicros();
      out.id = NewJobId();
      out.created = true;
      Statement insert = writer_->Prepare(
          "INSERT INTO keel_jobs (id, module_digest, export_name, input, deadline_ms, "
          "idempotency_key, max_attempts, backoff_ms, state, created_us, updated_us, "
          "not_before_us) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, 'queued', ?9, ?9, ?9) "
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
      Statement existing = writer_->Prepare("SELECT id FROM keel_jobs WHERE idempotency_key = ?1");
      existing.Bind(1, spec.idempotency_key);
      Result<bool> row = existing.Step();
      if (!row) return tl::unexpected(row.error());
      if (!*row) return MakeError(ErrorCode::kInternal, "insert ignored without a conflict");
      out.id = existing.Text(0);
      out.created = false;
      return false;
    });
    if (!run) return tl::unexpected(run.error());
    return out;
  }

  Result<Job> Get(std::string_view id) override {
    static const std::string kSql =
        std::string("SELECT ") + kJobColumns + ", input, result FROM keel_jobs WHERE id = ?1";
    return readers_.With([&](Connection& conn) -> Result<Job> {
      Statement select = conn.Prepare(kSql);
      select.Bind(1, id);
      Result<bool> row = select.Step();
      if (!row) return tl::unexpected(row.error());
      if (!*row) return MakeError(ErrorCode::kNotFound, "no job " + std::string(id));
      return ReadJob(select, /*payloads=*/true);
    });
  }

  Result<std::vector<Job>> List(const ListFilter& filter) override {
    std::string sql = std::string("SELECT ") + kJobColumns + " FROM keel_jobs";
    if (filter.state) sql += " WHERE state = ?1";
    sql += filter.newest_first ? " ORDER BY seq DESC" : " ORDER BY seq";
    sql += " LIMIT ?2";
    return readers_.With([&](Connection& conn) -> Result<std::vector<Job>> {
      Statement select = conn.Prepare(sql);
      if (filter.state) select.Bind(1, ToString(*filter.state));
      select.Bind(2, static_cast<int64_t>(filter.limit));
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
      Statement select = conn.Prepare("SELECT state, count(*) FROM keel_jobs GROUP BY state");
      StateCounts counts{};
      while (true) {
        Result<bool> row = select.Step();
        if (!row) return tl::unexpected(row.error());
        if (!*row) return counts;
        if (std::optional<JobState> state = ParseJobState(select.Text(0))) {
          counts[static_cast<size_t>(*state)] = select.Int(1);
        }
      }
    });
  }

  Result<std::vector<ClaimedJob>> Claim(const ClaimRequest& request) override {
    if (Result<void> valid = ValidateClaim(request); !valid) {
      return tl::unexpected(valid.error());
    }
    return ClaimWithWait(wake_, request, [&] { return ClaimReady(request); });
  }

  Result<TimePoint> Heartbeat(std::string_view id, uint32_t attempt,
                              std::chrono::milliseconds lease) override {
    if (lease.count() <= 0) return MakeError(ErrorCode::kInvalidArgument, "lease <= 0");
    Result<TimePoint> out;
    Result<void> run = committer_.Run([&]() -> Result<bool> {
      int64_t now = NowMicros();
      int64_t until = now + lease.count() * 1000;
      Statement update = writer_->Prepare(
          "UPDATE keel_jobs SET lease_until_us = ?1, updated_us = ?2 "
          "WHERE id = ?3 AND state = 'running' AND attempts = ?4");
      update.Bind(1, until).Bind(2, now).Bind(3, id).Bind(4, static_cast<int64_t>(attempt));
      Result<void> done = update.Run();
      if (!done) return tl::unexpected(done.error());
      if (writer_->changes() == 1) {
        out = FromMicros(until);
        return false;
      }
      Result<Error> lost = LostLease(id);
      if (!lost) return tl::unexpected(lost.error());
      out = tl::unexpected(std::move(*lost));
      return false;
    });
    if (!run) return tl::unexpected(run.error());
    return out;
  }

  Result<JobState> Complete(std::string_view id, uint32_t attempt,
                            const Outcome& outcome) override {
    bool succeeded = outcome.kind == Outcome::Kind::kSucceeded;
    Result<JobState> out;
    Result<void> run = committer_.Run([&]() -> Result<bool> {
      Statement update = writer_->Prepare(kCompleteSql);
      update.Bind(1, id)
          .Bind(2, static_cast<int64_t>(attempt))
          .Bind(3, int64_t{succeeded})
          .Bind(4, int64_t{!succeeded && outcome.retry})
          .Bind(5, outcome.kind == Outcome::Kind::kTimedOut ? "timed_out" : "failed")
          .Bind(6, NowMicros())
          .Bind(10, static_cast<int64_t>(kMaxRetryDelay.count()));
      if (succeeded) {
        update.BindBlob(7, outcome.result).BindNull(8).BindNull(9);
      } else {
        update.BindNull(7).Bind(8, ToString(outcome.error.code)).Bind(9, outcome.error.message);
      }
      Result<bool> row = update.Step();
      if (!row) return tl::unexpected(row.error());
      if (!*row) {
        Result<Error> lost = LostLease(id);
        if (!lost) return tl::unexpected(lost.error());
        out = tl::unexpected(std::move(*lost));
        return false;
      }
      JobState state = ParseJobState(update.Text(0)).value_or(JobState::kFailed);
      bool ready_now = state == JobState::kQueued && update.Int(1) == 0;
      if (Result<void> done = update.Run(); !done) return tl::unexpected(done.error());
      out = state;
      return ready_now;
    });
    if (!run) return tl::unexpected(run.error());
    return out;
  }

  Result<CancelOutcome> Cancel(std::string_view id) override {
    Result<CancelOutcome> out;
    Result<void> run = committer_.Run([&]() -> Result<bool> {
      int64_t now = NowMicros();
      Statement select = writer_->Prepare("SELECT state FROM keel_jobs WHERE id = ?1");
      select.Bind(1, id);
      Result<bool> row = select.Step();
      if (!row) return tl::unexpected(row.error());
      if (!*row) {
        out = MakeError(ErrorCode::kNotFound, "no job " + std::string(id));
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
  // Success if the module is stored; kNotFound if not. Modules are never
  // deleted, so a digest once seen stays valid and is cached.
  Result<void> CheckModule(const std::string& digest) {
    if (known_modules_.Contains(digest)) return {};
    Result<bool> found = readers_.With([&](Connection& conn) -> Result<bool> {
      Statement select = conn.Prepare("SELECT 1 FROM keel_modules WHERE digest = ?1");
      select.Bind(1, digest);
      return select.Step();
    });
    if (!found) return tl::unexpected(found.error());
    if (!*found) return MakeError(ErrorCode::kNotFound, "no module " + digest);
    known_modules_.Add(digest);
    return {};
  }

  // Inside a write transaction: the error for a lease on `id` that is no
  // longer held, kNotFound if the job does not exist, else
  // kFailedPrecondition. Fails on database errors.
  Result<Error> LostLease(std::string_view id) {
    Statement select = writer_->Prepare("SELECT 1 FROM keel_jobs WHERE id = ?1");
    select.Bind(1, id);
    Result<bool> row = select.Step();
    if (!row) return tl::unexpected(row.error());
    if (!*row) return Error(ErrorCode::kNotFound, "no job " + std::string(id));
    return Error(ErrorCode::kFailedPrecondition,
                 "lease on job " + std::string(id) + " is no longer held");
  }

  // One claim attempt: re-queues expired leases, then leases ready jobs.
  Result<std::vector<ClaimedJob>> ClaimReady(const ClaimRequest& request) {
    std::vector<ClaimedJob> claimed;
    Result<void> run = committer_.Run([&]() -> Result<bool> {
      claimed.clear();
      int64_t now = NowMicros();
      // INDEXED BY: without statistics SQLite would pick keel_jobs_state
      // and sort every queued job on each claim.
      Statement reap = writer_->Prepare(
          "UPDATE keel_jobs INDEXED BY keel_jobs_leased SET "
          "state = CASE WHEN cancel_requested THEN 'cancelled' "
          "WHEN attempts >= max_attempts THEN 'dead' ELSE 'queued' END, "
          "finished_us = CASE WHEN cancel_requested OR attempts >= max_attempts THEN ?1 END, "
          "not_before_us = ?1, lease_until_us = NULL, updated_us = ?1, "
          "error_code = 'unavailable', error_message = ?2 "
          "WHERE state = 'running' AND lease_until_us < ?1");
      reap.Bind(1, now).Bind(2, kLeaseExpiredMessage);
      Result<void> reaped = reap.Run();
      if (!reaped) return tl::unexpected(reaped.error());
      bool requeued = writer_->changes() > 0;

      Statement lease = writer_->Prepare(
          "UPDATE keel_jobs SET state = 'running', attempts = attempts + 1, "
          "lease_until_us = ?2, runner = ?3, updated_us = ?1 "
          "WHERE seq IN (SELECT seq FROM keel_jobs INDEXED BY keel_jobs_ready "
          "WHERE state = 'queued' AND not_before_us <= ?1 ORDER BY not_before_us, seq LIMIT ?4) "
          "RETURNING id, attempts, module_digest, export_name, deadline_ms, idempotency_key, "
          "max_attempts, backoff_ms, input, not_before_us, seq");
      int64_t until = now + request.lease.count() * 1000;
      lease.Bind(1, now).Bind(2, until).Bind(3, request.runner);
      lease.Bind(4, static_cast<int64_t>(request.max_jobs));
      std::vector<std::pair<std::pair<int64_t, int64_t>, ClaimedJob>> rows;
      while (true) {
        Result<bool> row = lease.Step();
        if (!row) return tl::unexpected(row.error());
        if (!*row) break;
        ClaimedJob job;
        job.id = lease.Text(0);
        job.attempt = static_cast<uint32_t>(lease.Int(1));
        job.spec.module_digest = lease.Text(2);
        job.spec.export_name = lease.Text(3);
        job.spec.deadline = std::chrono::milliseconds(lease.Int(4));
        job.spec.idempotency_key = lease.Text(5);
        job.spec.max_attempts = static_cast<uint32_t>(lease.Int(6));
        job.spec.retry_backoff = std::chrono::milliseconds(lease.Int(7));
        job.spec.input = lease.Blob(8);
        job.lease_until = FromMicros(until);
        rows.emplace_back(std::make_pair(lease.Int(9), lease.Int(10)), std::move(job));
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

  std::unique_ptr<Connection> writer_;  // used by the committer thread only

  ConnectionPool<Connection> readers_;

  KnownModules known_modules_;

  WakeSignal wake_;
  GroupCommitter committer_;  // last: destroyed first, finishing its writes
};

}  // namespace

Result<std::unique_ptr<JobStore>> OpenSqliteStore(const std::string& path) {
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
  if (Result<void> schema = (*writer)->Exec(kSchemaSql); !schema) {
    (void)(*writer)->Exec("ROLLBACK");
    Error error = schema.error();
    error.code = ErrorCode::kUnavailable;
    return tl::unexpected(std::move(error));
  }
  return std::make_unique<SqliteStore>(path, std::move(*writer));
}

}  // namespace keel::jobs

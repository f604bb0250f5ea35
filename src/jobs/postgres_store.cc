#include "jobs/postgres_store.h"

#include <fcntl.h>
#include <libpq-fe.h>
#include <poll.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <deque>
#include <functional>
#include <mutex>
#include <thread>
#include <unordered_map>
#include <utility>

#include "base/sha256.h"
#include "jobs/connection_pool.h"
#include "jobs/group_commit.h"
#include "jobs/internal.h"

namespace keel::jobs {
namespace {

using std::string_view_literals::operator""sv;

constexpr size_t kMaxReaders = 4;
constexpr size_t kCommitLanes = 4;
constexpr std::chrono::milliseconds kReapInterval{100};
constexpr int kReconnectDelayMs = 1000;
// Serializes schema creation between processes (CREATE ... IF NOT EXISTS
// alone races on the catalog).
constexpr char kSchemaSql[] = R"sql(
BEGIN;
SELECT pg_advisory_xact_lock(4242001);
CREATE TABLE IF NOT EXISTS keel_modules (
  digest TEXT PRIMARY KEY,
  bytes BYTEA NOT NULL,
  created_us BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS keel_jobs (
  seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  id TEXT NOT NULL UNIQUE,
  module_digest TEXT NOT NULL,
  export_name TEXT NOT NULL,
  deadline_ms BIGINT NOT NULL,
  idempotency_key TEXT UNIQUE,
  max_attempts BIGINT NOT NULL,
  backoff_ms BIGINT NOT NULL,
  state TEXT NOT NULL,
  attempts BIGINT NOT NULL DEFAULT 0,
  cancel_requested BOOLEAN NOT NULL DEFAULT false,
  created_us BIGINT NOT NULL,
  updated_us BIGINT NOT NULL,
  not_before_us BIGINT NOT NULL,
  lease_until_us BIGINT,
  finished_us BIGINT,
  runner TEXT,
  error_code TEXT,
  error_message TEXT,
  input BYTEA NOT NULL,
  result BYTEA
);
CREATE INDEX IF NOT EXISTS keel_jobs_ready ON keel_jobs (not_before_us, seq)
  WHERE state = 'queued';
CREATE INDEX IF NOT EXISTS keel_jobs_leased ON keel_jobs (lease_until_us)
  WHERE state = 'running';
CREATE INDEX IF NOT EXISTS keel_jobs_finished ON keel_jobs (finished_us)
  WHERE finished_us IS NOT NULL;
CREATE INDEX IF NOT EXISTS keel_jobs_state ON keel_jobs (state, seq);
-- The server's clock in microseconds, fixed for one statement.
CREATE OR REPLACE FUNCTION keel_now_us() RETURNS BIGINT LANGUAGE sql STABLE
  AS 'SELECT (extract(epoch FROM statement_timestamp()) * 1000000)::bigint';
COMMIT;
)sql";

// Same order as the SQLite store: see ReadJob.
constexpr char kJobColumns[] =
    "id, module_digest, export_name, deadline_ms, idempotency_key, max_attempts, backoff_ms, "
    "state, attempts, cancel_requested, created_us, updated_us, not_before_us, lease_until_us, "
    "finished_us, runner, error_code, error_message";

// Statement parameters: text, except bytea which is sent binary (no
// escaping). Borrows byte spans; the owner must outlive the call.
class Params {
 public:
  Params& Add(std::string_view text) {
    const std::string& stored = storage_.emplace_back(text);
    return Push(stored.c_str(), static_cast<int>(stored.size()), 0);
  }
  Params& Add(int64_t value) { return Add(std::string_view(std::to_string(value))); }
  Params& AddBool(bool value) { return Add(std::string_view(value ? "t" : "f")); }
  // Empty text becomes NULL (optional text columns).
  Params& AddOrNull(std::string_view text) { return text.empty() ? AddNull() : Add(text); }
  Params& AddBytes(std::span<const uint8_t> bytes) {
    // A null pointer would mean NULL, not empty bytes.
    static const char kEmpty[] = "";
    const char* data = bytes.empty() ? kEmpty : reinterpret_cast<const char*>(bytes.data());
    return Push(data, static_cast<int>(bytes.size()), 1);
  }
  Params& AddNull() { return Push(nullptr, 0, 0); }

  int size() const { return static_cast<int>(values_.size()); }
  const char* const* values() const { return values_.data(); }
  const int* lengths() const { return lengths_.data(); }
  const int* formats() const { return formats_.data(); }

 private:
  Params& Push(const char* value, int length, int format) {
    values_.push_back(value);
    lengths_.push_back(length);
    formats_.push_back(format);
    return *this;
  }

  std::deque<std::string> storage_;  // stable addresses
  std::vector<const char*> values_;
  std::vector<int> lengths_;
  std::vector<int> formats_;
};

// A result in binary format. Move-only value.
class Rows {
 public:
  explicit Rows(PGresult* result) : result_(result, &PQclear) {}

  int size() const { return PQntuples(result_.get()); }
  PGresult* raw() const { return result_.get(); }
  int64_t affected() const {
    const char* text = PQcmdTuples(result_.get());
    return text[0] == '\0' ? 0 : std::stoll(text);
  }
  bool IsNull(int row, int col) const { return PQgetisnull(result_.get(), row, col) != 0; }
  // int8 or int4, big-endian.
  int64_t Int(int row, int col) const {
    const auto* p = reinterpret_cast<const uint8_t*>(PQgetvalue(result_.get(), row, col));
    int length = PQgetlength(result_.get(), row, col);
    uint64_t value = 0;
    for (int i = 0; i < length; ++i) value = (value << 8) | p[i];
    if (length == 4) return static_cast<int32_t>(value);
    return static_cast<int64_t>(value);
  }
  bool Bool(int row, int col) const { return PQgetvalue(result_.get(), row, col)[0] != 0; }
  std::string Text(int row, int col) const {
    return std::string(PQgetvalue(result_.get(), row, col), PQgetlength(result_.get(), row, col));
  }
  std::vector<uint8_t> Bytes(int row, int col) const {
    const auto* p = reinterpret_cast<const uint8_t*>(PQgetvalue(result_.get(), row, col));
    return std::vector<uint8_t>(p, p + PQgetlength(result_.get(), row, col));
  }

 private:
  std::unique_ptr<PGresult, decltype(&PQclear)> result_;
};

// The error for a failed statement: kUnavailable when retrying may help
// (connection lost, deadlock, serialization failure, shutdown), kAlreadyExists
// for a unique violation, else kInternal.
Error PgError(PGconn* conn, const PGresult* result, std::string_view what) {
  std::string message = "postgres: " + std::string(what) + ": ";
  const char* text = result != nullptr ? PQresultErrorMessage(result) : "";
  if (text[0] == '\0') text = PQerrorMessage(conn);
  message += text;
  while (!message.empty() && message.back() == '\n') message.pop_back();
  if (PQstatus(conn) != CONNECTION_OK) return Error(ErrorCode::kUnavailable, std::move(message));
  const char* state = result != nullptr ? PQresultErrorField(result, PG_DIAG_SQLSTATE) : nullptr;
  std::string_view sqlstate = state != nullptr ? state : "";
  if (sqlstate == "23505") return Error(ErrorCode::kAlreadyExists, std::move(message));
  if (sqlstate == "40001" || sqlstate == "40P01" || sqlstate.starts_with("08") ||
      sqlstate.starts_with("57P")) {
    return Error(ErrorCode::kUnavailable, std::move(message));
  }
  return Error(ErrorCode::kInternal, std::move(message));
}

// One libpq connection with its prepared statements. Used by one thread at a
// time.
class Connection {
 public:
  static Result<std::unique_ptr<Connection>> Open(const std::string& url) {
    auto conn = std::unique_ptr<Connection>(new Connection(PQconnectdb(url.c_str())));
    if (conn->conn_ == nullptr || PQstatus(conn->conn_) != CONNECTION_OK) {
      std::string message = "postgres: cannot connect: ";
      message += conn->conn_ != nullptr ? PQerrorMessage(conn->conn_) : "out of memory";
      while (!message.empty() && message.back() == '\n') message.pop_back();
      return MakeError(ErrorCode::kUnavailable, std::move(message));
    }
    // Silence NOTICEs such as "relation already exists, skipping".
    PQsetNoticeProcessor(
        conn->conn_, [](void*, const char*) {}, nullptr);
    return conn;
  }

  ~Connection() { PQfinish(conn_); }

  bool healthy() const { return PQstatus(conn_) == CONNECTION_OK; }

  // Reconnects a broken connection. kUnavailable if that fails.
  [[nodiscard]] Result<void> EnsureConnected() {
    if (healthy()) return {};
    prepared_.clear();
    PQreset(conn_);
    if (!healthy()) return tl::unexpected(PgError(conn_, nullptr, "reconnect"));
    return {};
  }

  // Runs `sql` as a statement prepared once per connection; binary results.
  [[nodiscard]] Result<Rows> Exec(const std::string& sql, const Params& params) {
    auto it = prepared_.find(sql);
    if (it == prepared_.end()) {
      std::string name = "keel_" + std::to_string(prepared_.size());
      Rows prepared(PQprepare(conn_, name.c_str(), sql.c_str(), 0, nullptr));
      if (PQresultStatus(prepared.raw()) != PGRES_COMMAND_OK) {
        return tl::unexpected(PgError(conn_, prepared.raw(), "prepare"));
      }
      it = prepared_.emplace(sql, std::move(name)).first;
    }
    Rows rows(PQexecPrepared(conn_, it->second.c_str(), params.size(), params.values(),
                             params.lengths(), params.formats(), /*resultFormat=*/1));
    ExecStatusType status = PQresultStatus(rows.raw());
    if (status != PGRES_TUPLES_OK && status != PGRES_COMMAND_OK) {
      return tl::unexpected(PgError(conn_, rows.raw(), "exec"));
    }
    return rows;
  }

  // Runs one or more parameterless statements; returns the last one's
  // command tag (e.g. "COMMIT", or "ROLLBACK" for a failed transaction).
  [[nodiscard]] Result<std::string> ExecScript(const char* sql) {
    Rows rows(PQexec(conn_, sql));
    ExecStatusType status = PQresultStatus(rows.raw());
    if (status != PGRES_TUPLES_OK && status != PGRES_COMMAND_OK) {
      return tl::unexpected(PgError(conn_, rows.raw(), "exec"));
    }
    return std::string(PQcmdStatus(rows.raw()));
  }

  PGconn* raw() const { return conn_; }

 private:
  explicit Connection(PGconn* conn) : conn_(conn) {}

  PGconn* conn_;
  std::unordered_map<std::string, std::string> prepared_;  // SQL -> statement name
};

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
  if (payloads) {
    job.spec.input = rows.Bytes(r, 18);
    if (!rows.IsNull(r, 19)) job.result = rows.Bytes(r, 19);
  }
  return job;
}

// Complete() in one statement, one round trip (see store.h for the rules):
// $1 id, $2 attempt, $3 succeeded, $4 retry wanted, $5 state if not
// retried, $6 result, $7 error code, $8 error message, $9 kMaxRetryDelay in
// ms. SET sees the row as it was, so the retry condition is spelled out
// twice. The shift is bounded: 2^27 ms exceeds the cap.
constexpr char kCompleteSql[] =
    "UPDATE keel_jobs SET "
    "state = CASE WHEN cancel_requested THEN 'cancelled' WHEN $3::boolean THEN 'succeeded' "
    "WHEN NOT $4::boolean THEN $5::text WHEN attempts < max_attempts THEN 'queued' "
    "ELSE 'dead' END, "
    "not_before_us = keel_now_us() + CASE "
    "WHEN NOT cancel_requested AND $4::boolean AND attempts < max_attempts "
    "THEN LEAST(LEAST(backoff_ms, $9) << LEAST(attempts - 1, 27)::integer, $9) * 1000 "
    "ELSE 0 END, "
    "finished_us = CASE WHEN NOT cancel_requested AND $4::boolean AND attempts < max_attempts "
    "THEN NULL ELSE keel_now_us() END, "
    "result = $6, error_code = $7, error_message = $8, lease_until_us = NULL, "
    "updated_us = keel_now_us() "
    "WHERE id = $1 AND state = 'running' AND attempts = $2 "
    "RETURNING state, not_before_us - updated_us";

// One write connection and the group committer that owns it. Several lanes
// let round trips to the server overlap; the server orders their
// transactions (row locks, SKIP LOCKED) as it does between processes.
// Thread-safe; the destructor finishes queued writes.
class CommitLane {
 public:
  using Op = std::function<Result<bool>(Connection&)>;

  CommitLane(std::unique_ptr<Connection> conn, WakeSignal& wake)
      : conn_(std::move(conn)),
        committer_(GroupCommitter::Hooks{
                       .begin = [this]() -> Result<void> {
                         if (Result<void> up = conn_->EnsureConnected(); !up) return up;
                         Result<std::string> begun = conn_->ExecScript("BEGIN");
                         if (!begun) return tl::unexpected(begun.error());
                         return {};
                       },
                       .commit = [this](bool wake) -> Result<void> {
                         // NOTIFY is delivered at commit, to every listening store.
                         Result<std::string> tag =
                             conn_->ExecScript(wake ? "NOTIFY keel_jobs; COMMIT" : "COMMIT");
                         if (!tag) return tl::unexpected(tag.error());
                         if (*tag != "COMMIT") {
                           return MakeError(ErrorCode::kInternal,
                                            "postgres: commit ended in " + *tag);
                         }
                         return {};
                       },
                       .rollback = [this] { (void)conn_->ExecScript("ROLLBACK"); },
                       .committed =
                           [&wake](bool woke) {
                             if (woke) wake.Notify();
                           },
                   },
                   kMaxCommitBatch) {}

  // See GroupCommitter::Run; `op` gets this lane's connection.
  [[nodiscard]] Result<void> Run(const Op& op) {
    return committer_.Run([&] { return op(*conn_); });
  }

  CommitStats stats() const { return committer_.stats(); }

 private:
  std::unique_ptr<Connection> conn_;  // used by the committer thread only
  GroupCommitter committer_;          // destroyed first, finishing its writes
};

class PostgresStore final : public JobStore {
 public:
  PostgresStore(const std::string& url, std::vector<std::unique_ptr<Connection>> writers,
                int stop_read, int stop_write)
      : url_(url),
        readers_([url] { return Connection::Open(url); }, kMaxReaders),
        stop_read_(stop_read),
        stop_write_(stop_write) {
    for (auto& conn : writers)
      lanes_.push_back(std::make_unique<CommitLane>(std::move(conn), wake_));
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
      out.id = NewJobId();
      out.created = true;
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
      Result<Rows> existing = db.Exec("SELECT id FROM keel_jobs WHERE idempotency_key = $1",
                                      Params().Add(spec.idempotency_key));
      if (!existing) return tl::unexpected(existing.error());
      if (existing->size() != 1) {
        return MakeError(ErrorCode::kInternal, "insert ignored without a conflict");
      }
      out.id = existing->Text(0, 0);
      out.created = false;
      return false;
    });
    if (!run) return tl::unexpected(run.error());
    return out;
  }

  Result<Job> Get(std::string_view id) override {
    static const std::string kSql =
        std::string("SELECT ") + kJobColumns + ", input, result FROM keel_jobs WHERE id = $1";
    return readers_.With([&](Connection& conn) -> Result<Job> {
      Result<Rows> rows = conn.Exec(kSql, Params().Add(id));
      if (!rows) return tl::unexpected(rows.error());
      if (rows->size() == 0) return MakeError(ErrorCode::kNotFound, "no job " + std::string(id));
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

  Result<TimePoint> Heartbeat(std::string_view id, uint32_t attempt,
                              std::chrono::milliseconds lease) override {
    if (lease.count() <= 0) return MakeError(ErrorCode::kInvalidArgument, "lease <= 0");
    Result<TimePoint> out;
    Result<void> run = Write([&](Connection& db) -> Result<bool> {
      Result<Rows> updated = db.Exec(
          "UPDATE keel_jobs SET lease_until_us = keel_now_us() + $3, updated_us = keel_now_us() "
          "WHERE id = $1 AND state = 'running' AND attempts = $2 RETURNING lease_until_us",
          Params().Add(id).Add(static_cast<int64_t>(attempt)).Add(lease.count() * 1000));
      if (!updated) return tl::unexpected(updated.error());
      if (updated->size() == 1) {
        out = FromMicros(updated->Int(0, 0));
        return false;
      }
      Result<Error> lost = LostLease(db, id);
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
    Params params;
    params.Add(id)
        .Add(static_cast<int64_t>(attempt))
        .AddBool(succeeded)
        .AddBool(!succeeded && outcome.retry)
        .Add(outcome.kind == Outcome::Kind::kTimedOut ? "timed_out"sv : "failed"sv);
    if (succeeded) {
      params.AddBytes(outcome.result).AddNull().AddNull();
    } else {
      params.AddNull().Add(ToString(outcome.error.code)).Add(outcome.error.message);
    }
    params.Add(static_cast<int64_t>(kMaxRetryDelay.count()));
    Result<JobState> out;
    Result<void> run = Write([&](Connection& db) -> Result<bool> {
      Result<Rows> rows = db.Exec(kCompleteSql, params);
      if (!rows) return tl::unexpected(rows.error());
      if (rows->size() == 0) {
        Result<Error> lost = LostLease(db, id);
        if (!lost) return tl::unexpected(lost.error());
        out = tl::unexpected(std::move(*lost));
        return false;
      }
      JobState state = ParseJobState(rows->Text(0, 0)).value_or(JobState::kFailed);
      out = state;
      return state == JobState::kQueued && rows->Int(0, 1) == 0;
    });
    if (!run) return tl::unexpected(run.error());
    return out;
  }

  Result<CancelOutcome> Cancel(std::string_view id) override {
    Result<CancelOutcome> out;
    Result<void> run = Write([&](Connection& db) -> Result<bool> {
      Result<Rows> row =
          db.Exec("SELECT state FROM keel_jobs WHERE id = $1 FOR UPDATE", Params().Add(id));
      if (!row) return tl::unexpected(row.error());
      if (row->size() == 0) {
        out = MakeError(ErrorCode::kNotFound, "no job " + std::string(id));
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

  // Inside a write transaction: the error for a lease on `id` that is no
  // longer held, kNotFound if the job does not exist, else
  // kFailedPrecondition. Fails on database errors.
  Result<Error> LostLease(Connection& db, std::string_view id) {
    Result<Rows> rows = db.Exec("SELECT 1 FROM keel_jobs WHERE id = $1", Params().Add(id));
    if (!rows) return tl::unexpected(rows.error());
    if (rows->size() == 0) return Error(ErrorCode::kNotFound, "no job " + std::string(id));
    return Error(ErrorCode::kFailedPrecondition,
                 "lease on job " + std::string(id) + " is no longer held");
  }

  // One claim attempt: re-queues expired leases, then leases ready jobs.
  // SKIP LOCKED lets concurrent claimers (any process) pass rows another
  // transaction holds instead of waiting for or double-claiming them.
  Result<std::vector<ClaimedJob>> ClaimReady(const ClaimRequest& request) {
    std::vector<ClaimedJob> claimed;
    Result<void> run = Write([&](Connection& db) -> Result<bool> {
      claimed.clear();
      bool requeued = false;
      if (ReapDue()) {
        Result<Rows> reaped = db.Exec(
            "WITH expired AS (SELECT seq FROM keel_jobs WHERE state = 'running' "
            "AND lease_until_us < keel_now_us() FOR UPDATE SKIP LOCKED) "
            "UPDATE keel_jobs j SET "
            "state = CASE WHEN cancel_requested THEN 'cancelled' "
            "WHEN attempts >= max_attempts THEN 'dead' ELSE 'queued' END, "
            "finished_us = CASE WHEN cancel_requested OR attempts >= max_attempts "
            "THEN keel_now_us() END, "
            "not_before_us = keel_now_us(), lease_until_us = NULL, updated_us = keel_now_us(), "
            "error_code = 'unavailable', error_message = $1 "
            "FROM expired WHERE j.seq = expired.seq",
            Params().Add(kLeaseExpiredMessage));
        if (!reaped) return tl::unexpected(reaped.error());
        requeued = reaped->affected() > 0;
      }

      Result<Rows> rows = db.Exec(
          "WITH ready AS (SELECT seq FROM keel_jobs WHERE state = 'queued' "
          "AND not_before_us <= keel_now_us() ORDER BY not_before_us, seq LIMIT $3 "
          "FOR UPDATE SKIP LOCKED) "
          "UPDATE keel_jobs j SET state = 'running', attempts = attempts + 1, "
          "lease_until_us = keel_now_us() + $1, runner = $2, updated_us = keel_now_us() "
          "FROM ready WHERE j.seq = ready.seq "
          "RETURNING j.id, j.attempts, j.module_digest, j.export_name, j.deadline_ms, "
          "j.idempotency_key, j.max_attempts, j.backoff_ms, j.input, j.lease_until_us, "
          "j.not_before_us, j.seq",
          Params()
              .Add(static_cast<int64_t>(request.lease.count() * 1000))
              .Add(request.runner)
              .Add(static_cast<int64_t>(request.max_jobs)));
      if (!rows) return tl::unexpected(rows.error());
      std::vector<int> order(rows->size());
      for (int r = 0; r < rows->size(); ++r) order[r] = r;
      // RETURNING gives no order; claim order is (not_before, seq).
      std::sort(order.begin(), order.end(), [&](int a, int b) {
        return std::make_pair(rows->Int(a, 10), rows->Int(a, 11)) <
               std::make_pair(rows->Int(b, 10), rows->Int(b, 11));
      });
      for (int r : order) {
        ClaimedJob job;
        job.id = rows->Text(r, 0);
        job.attempt = static_cast<uint32_t>(rows->Int(r, 1));
        job.spec.module_digest = rows->Text(r, 2);
        job.spec.export_name = rows->Text(r, 3);
        job.spec.deadline = std::chrono::milliseconds(rows->Int(r, 4));
        if (!rows->IsNull(r, 5)) job.spec.idempotency_key = rows->Text(r, 5);
        job.spec.max_attempts = static_cast<uint32_t>(rows->Int(r, 6));
        job.spec.retry_backoff = std::chrono::milliseconds(rows->Int(r, 7));
        job.spec.input = rows->Bytes(r, 8);
        job.lease_until = FromMicros(rows->Int(r, 9));
        claimed.push_back(std::move(job));
      }
      return requeued;
    });
    if (!run) return tl::unexpected(run.error());
    return claimed;
  }

  // Wakes waiting claimers on NOTIFY keel_jobs from any process; reconnects
  // when the connection drops (waking everyone, as notifications may have
  // been missed). Ends when stop_read_ becomes readable.
  void ListenLoop() {
    std::unique_ptr<Connection> conn;
    while (true) {
      if (conn == nullptr || !conn->healthy()) {
        conn.reset();
        Result<std::unique_ptr<Connection>> opened = Connection::Open(url_);
        if (opened && (*opened)->ExecScript("LISTEN keel_jobs")) {
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

}  // namespace

Result<std::unique_ptr<JobStore>> OpenPostgresStore(const std::string& url) {
  std::vector<std::unique_ptr<Connection>> writers;
  for (size_t i = 0; i < kCommitLanes; ++i) {
    Result<std::unique_ptr<Connection>> conn = Connection::Open(url);
    if (!conn) return tl::unexpected(conn.error());
    writers.push_back(std::move(*conn));
  }
  if (Result<std::string> schema = writers[0]->ExecScript(kSchemaSql); !schema) {
    (void)writers[0]->ExecScript("ROLLBACK");
    return tl::unexpected(schema.error());
  }
  int stop[2];
  if (pipe2(stop, O_CLOEXEC) != 0) {
    return MakeError(ErrorCode::kInternal, "postgres: cannot create the listener's pipe");
  }
  return std::make_unique<PostgresStore>(url, std::move(writers), stop[0], stop[1]);
}

}  // namespace keel::jobs

#include "jobs/postgres_store.h"

#include <fcntl.h>
#include <libpq-fe.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <deque>
#include <functional>
#include <thread>
#include <unordered_map>
#include <unordered_set>
#include <utility>

#include "base/sha256.h"
#include "jobs/connection_pool.h"
#include "jobs/internal.h"
#include "jobs/postgres_db.h"
#include "jobs/schema.h"

namespace keel::jobs {
namespace {

using std::string_view_literals::operator""sv;
using pg::CommitLanes;
using pg::Connection;
using pg::Params;
using pg::Rows;

constexpr size_t kMaxReaders = 4;
constexpr std::chrono::milliseconds kReapInterval{100};
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

// Many Complete()s in one statement, one round trip (see store.h for the
// rules). One row per outcome: $1 id, $2 claim, $3 succeeded, $4 retry
// wanted, $5 state if not retried, $6 result, $7 error code, $8 error
// message; $9 kMaxRetryDelay in ms. SET sees the row as it was, so the retry
// condition is spelled out each time, with the attempt count this outcome
// makes (one more if the claim never started). The shift is bounded: 2^27
// ms exceeds the cap. The batch never names a job twice (LaneWrites).
const std::string& CompleteSql() {
  static const std::string sql = [] {
    const std::string attempts =
        "(j.attempts + CASE WHEN j.started_us IS NULL THEN 1 ELSE 0 END)";
    const std::string retried =
        "NOT j.cancel_requested AND o.retry AND " + attempts + " < j.max_attempts";
    return "UPDATE keel_jobs j SET "
           "state = CASE WHEN j.cancel_requested THEN 'cancelled' WHEN o.ok THEN 'succeeded' "
           "WHEN NOT o.retry THEN o.end_state WHEN " + attempts + " < j.max_attempts THEN 'queued' "
           "ELSE 'dead' END, "
           "not_before_us = keel_now_us() + CASE WHEN " + retried +
           " THEN LEAST(LEAST(j.backoff_ms, $9) << LEAST(" + attempts +
           " - 1, 27)::integer, $9) * 1000 ELSE 0 END, "
           "finished_us = CASE WHEN " + retried + " THEN NULL ELSE keel_now_us() END, "
           "attempts = " + attempts + ", started_us = coalesce(j.started_us, keel_now_us()), "
           "result = CASE WHEN o.ok THEN o.result END, "
           "error_code = CASE WHEN NOT o.ok THEN o.code END, "
           "error_message = CASE WHEN NOT o.ok THEN o.message END, lease_until_us = NULL, "
           "updated_us = keel_now_us() "
           "FROM unnest($1::text[], $2::bigint[], $3::boolean[], $4::boolean[], $5::text[], "
           "$6::bytea[], $7::text[], $8::text[]) "
           "AS o(id, claim, ok, retry, end_state, result, code, message) "
           "WHERE j.id = o.id AND j.state = 'running' AND j.claims = o.claim "
           "RETURNING j.id, j.state, j.not_before_us - j.updated_us";
  }();
  return sql;
}

// Many Start()s and Heartbeat()s in one statement: one row per lease, $1
// id, $2 claim, $3 the new lease in µs, $4 whether it starts the job (counts
// the attempt, and only once). The batch never names a job twice.
constexpr char kExtendLeasesSql[] =
    "UPDATE keel_jobs j SET lease_until_us = keel_now_us() + o.lease, "
    "updated_us = keel_now_us(), "
    "started_us = CASE WHEN o.start THEN keel_now_us() ELSE j.started_us END, "
    "attempts = j.attempts + CASE WHEN o.start THEN 1 ELSE 0 END "
    "FROM unnest($1::text[], $2::bigint[], $3::bigint[], $4::boolean[]) "
    "AS o(id, claim, lease, start) "
    "WHERE j.id = o.id AND j.state = 'running' AND j.claims = o.claim "
    "AND (NOT o.start OR j.started_us IS NULL) "
    "RETURNING j.id, j.lease_until_us";

// Many Submit()s in one statement: one row per job, in submit order (so
// that seq, the claim order, follows it). A row whose idempotency key is
// taken, by an earlier job or by an earlier row of the same batch, is
// skipped, and so is one whose module is not stored. The module row is
// locked (FOR KEY SHARE) until the transaction ends, so the garbage
// collection (which locks the rows it deletes first) either sees the job or
// deletes the bytes before this statement reads them. RETURNING names the
// rows inserted.
constexpr char kInsertSql[] =
    "INSERT INTO keel_jobs (id, module_digest, export_name, input, deadline_ms, "
    "idempotency_key, max_attempts, backoff_ms, state, created_us, updated_us, not_before_us) "
    "SELECT job_id, r.digest, export_name, input, deadline, job_key, attempts, backoff, 'queued', "
    "keel_now_us(), keel_now_us(), keel_now_us() "
    "FROM unnest($1::text[], $2::text[], $3::text[], $4::bytea[], $5::bigint[], $6::text[], "
    "$7::bigint[], $8::bigint[]) WITH ORDINALITY "
    "AS r(job_id, digest, export_name, input, deadline, job_key, attempts, backoff, n) "
    "JOIN keel_modules m ON m.digest = r.digest "
    "ORDER BY n FOR KEY SHARE OF m "
    "ON CONFLICT (idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING RETURNING id";

// The jobs holding the keys in $1 (submits whose insert met its key). The
// IS NOT NULL repeats the predicate of the partial key index (schema
// version 4) for the planner.
constexpr char kKeyedJobsSql[] =
    "SELECT idempotency_key, id, module_digest, export_name, input, deadline_ms, "
    "max_attempts, backoff_ms FROM keel_jobs WHERE idempotency_key = ANY($1::text[]) "
    "AND idempotency_key IS NOT NULL";

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

// The row of each value of the first column of `rows` (a job id or key a
// batch statement returned), to answer each of the batch's callers.
std::unordered_map<std::string, int> RowOfFirstColumn(const Rows& rows) {
  std::unordered_map<std::string, int> row_of;
  for (int r = 0; r < rows.size(); ++r) row_of.emplace(rows.Text(r, 0), r);
  return row_of;
}

// The submits and outcomes queued on one lane during its transaction, sent
// as one INSERT and one UPDATE before it commits. Each row's caller learns
// its own answer from what the statements return; if a statement fails the
// transaction is abandoned and the group committer runs its operations one
// by one, so one bad row costs only its own submitter.
class LaneWrites final : public pg::Deferred {
 public:
  void AddSubmit(const JobSpec& spec, Result<SubmitResult>* out) {
    submits_.push_back({&spec, NewJobId(), out});
  }

  // A second outcome for a job already queued (a confused caller) first
  // sends the batch, so that the statement names each job once and the two
  // are applied in order.
  Result<bool> AddOutcome(Connection& db, std::string_view id, uint64_t claim,
                          const Outcome& outcome, Result<JobState>* out) {
    bool wake = false;
    if (outcome_ids_.contains(id)) {
      Result<bool> flushed = FlushOutcomes(db);
      if (!flushed) return flushed;
      wake = *flushed;
    }
    outcome_ids_.insert(id);
    outcomes_.push_back({id, claim, &outcome, out});
    return wake;
  }

  // Start() when `start`, else Heartbeat(); like AddOutcome, a second one
  // for the same job first sends the batch.
  Result<bool> AddLease(Connection& db, std::string_view id, uint64_t claim,
                        std::chrono::milliseconds lease, bool start, Result<TimePoint>* out) {
    if (lease_ids_.contains(id)) {
      if (Result<bool> flushed = FlushLeases(db); !flushed) return flushed;
    }
    lease_ids_.insert(id);
    leases_.push_back({id, claim, lease, start, out});
    return false;
  }

  // Leases first: a heartbeat sent beside its job's outcome still finds the
  // job running.
  Result<bool> Flush(Connection& db) override {
    if (Result<bool> extended = FlushLeases(db); !extended) return extended;
    Result<bool> submitted = FlushSubmits(db);
    if (!submitted) return submitted;
    Result<bool> recorded = FlushOutcomes(db);
    if (!recorded) return recorded;
    return *submitted || *recorded;
  }

  void Clear() override {
    leases_.clear();
    lease_ids_.clear();
    submits_.clear();
    outcomes_.clear();
    outcome_ids_.clear();
  }

 private:
  struct QueuedSubmit {
    const JobSpec* spec;
    std::string id;
    Result<SubmitResult>* out;
  };
  struct QueuedOutcome {
    std::string_view id;
    uint64_t claim;
    const Outcome* outcome;
    Result<JobState>* out;
  };

  struct QueuedLease {
    std::string_view id;
    uint64_t claim;
    std::chrono::milliseconds lease;
    bool start;
    Result<TimePoint>* out;
  };

  Result<bool> FlushLeases(Connection& db);
  Result<bool> FlushSubmits(Connection& db);
  // Answers the submits whose insert met their key with the job holding it.
  Result<void> AnswerKeyed(Connection& db, const std::vector<QueuedSubmit*>& keyed);
  Result<bool> FlushOutcomes(Connection& db);

  std::vector<QueuedLease> leases_;
  std::unordered_set<std::string_view> lease_ids_;
  std::vector<QueuedSubmit> submits_;
  std::vector<QueuedOutcome> outcomes_;
  std::unordered_set<std::string_view> outcome_ids_;
};

Result<bool> LaneWrites::FlushLeases(Connection& db) {
  if (leases_.empty()) return false;
  std::vector<std::string_view> ids;
  std::vector<int64_t> claims, micros;
  std::vector<bool> starts;
  for (const QueuedLease& queued : leases_) {
    ids.push_back(queued.id);
    claims.push_back(static_cast<int64_t>(queued.claim));
    micros.push_back(queued.lease.count() * 1000);
    starts.push_back(queued.start);
  }
  Params params;
  params.AddTextArray(ids).AddIntArray(claims).AddIntArray(micros).AddBoolArray(starts);
  Result<Rows> rows = db.Exec(kExtendLeasesSql, params);
  if (!rows) return tl::unexpected(rows.error());
  const std::unordered_map<std::string, int> row_of_id = RowOfFirstColumn(*rows);
  for (const QueuedLease& queued : leases_) {
    auto it = row_of_id.find(std::string(queued.id));
    if (it == row_of_id.end()) {
      if (Result<bool> lost = LostLease(db, queued.id, queued.claim, queued.out); !lost) {
        return lost;
      }
      continue;
    }
    *queued.out = FromMicros(rows->Int(it->second, 1));
  }
  leases_.clear();
  lease_ids_.clear();
  return false;
}

Result<bool> LaneWrites::FlushSubmits(Connection& db) {
  if (submits_.empty()) return false;
  std::vector<std::string_view> ids, digests, exports, keys;
  std::vector<std::span<const uint8_t>> inputs;
  std::vector<int64_t> deadlines, attempts, backoffs;
  for (const QueuedSubmit& submit : submits_) {
    const JobSpec& spec = *submit.spec;
    ids.push_back(submit.id);
    digests.push_back(spec.module_digest);
    exports.push_back(spec.export_name);
    keys.push_back(spec.idempotency_key);
    inputs.push_back(spec.input);
    deadlines.push_back(spec.deadline.count());
    attempts.push_back(spec.max_attempts);
    backoffs.push_back(spec.retry_backoff.count());
  }
  Params params;
  params.AddTextArray(ids)
      .AddTextArray(digests)
      .AddTextArray(exports)
      .AddBytesArray(inputs)
      .AddIntArray(deadlines)
      .AddTextArray(keys, /*empty_is_null=*/true)
      .AddIntArray(attempts)
      .AddIntArray(backoffs);
  Result<Rows> inserted = db.Exec(kInsertSql, params);
  if (!inserted) return tl::unexpected(inserted.error());
  std::unordered_set<std::string> created;
  for (int r = 0; r < inserted->size(); ++r) created.insert(inserted->Text(r, 0));
  std::vector<QueuedSubmit*> keyed;
  for (QueuedSubmit& submit : submits_) {
    if (created.contains(submit.id)) {
      *submit.out = SubmitResult{.id = submit.id, .module_digest = submit.spec->module_digest};
    } else if (submit.spec->idempotency_key.empty()) {
      *submit.out = NoSuchModule(submit.spec->module_digest);
    } else {
      keyed.push_back(&submit);
    }
  }
  if (!keyed.empty()) {
    if (Result<void> answered = AnswerKeyed(db, keyed); !answered) {
      return tl::unexpected(answered.error());
    }
  }
  return !created.empty();
}

Result<void> LaneWrites::AnswerKeyed(Connection& db, const std::vector<QueuedSubmit*>& keyed) {
  std::vector<std::string_view> keys;
  for (const QueuedSubmit* submit : keyed) keys.push_back(submit->spec->idempotency_key);
  Result<Rows> rows = db.Exec(kKeyedJobsSql, Params().AddTextArray(keys));
  if (!rows) return tl::unexpected(rows.error());
  const std::unordered_map<std::string, int> row_of_key = RowOfFirstColumn(*rows);
  for (QueuedSubmit* submit : keyed) {
    auto it = row_of_key.find(submit->spec->idempotency_key);
    if (it == row_of_key.end()) {
      // Neither inserted nor held by the key: the module is not stored.
      *submit->out = NoSuchModule(submit->spec->module_digest);
      continue;
    }
    int r = it->second;
    JobSpec held;
    held.module_digest = rows->Text(r, 2);
    held.export_name = rows->Text(r, 3);
    held.input = rows->Bytes(r, 4);
    held.deadline = std::chrono::milliseconds(rows->Int(r, 5));
    held.max_attempts = static_cast<uint32_t>(rows->Int(r, 6));
    held.retry_backoff = std::chrono::milliseconds(rows->Int(r, 7));
    *submit->out = SubmitResult{.id = rows->Text(r, 1),
                                .module_digest = held.module_digest,
                                .created = false,
                                .conflict = !SameWork(*submit->spec, held)};
  }
  return {};
}

Result<bool> LaneWrites::FlushOutcomes(Connection& db) {
  if (outcomes_.empty()) return false;
  std::vector<std::string_view> ids, end_states, codes, messages;
  std::vector<int64_t> claims;
  std::vector<bool> ok_flags, retry_flags;
  std::vector<std::span<const uint8_t>> results;
  std::deque<std::string> texts;  // valid-text messages, borrowed by `messages`
  for (const QueuedOutcome& queued : outcomes_) {
    const Outcome& outcome = *queued.outcome;
    bool ok = outcome.kind == Outcome::Kind::kSucceeded;
    ids.push_back(queued.id);
    claims.push_back(static_cast<int64_t>(queued.claim));
    ok_flags.push_back(ok);
    retry_flags.push_back(!ok && outcome.retry);
    end_states.push_back(outcome.kind == Outcome::Kind::kTimedOut ? "timed_out"sv : "failed"sv);
    results.push_back(outcome.result);
    codes.push_back(ok ? ""sv : ToString(outcome.error.code));
    messages.push_back(ok ? ""sv : std::string_view(texts.emplace_back(
                                       ToValidText(outcome.error.message))));
  }
  Params params;
  params.AddTextArray(ids)
      .AddIntArray(claims)
      .AddBoolArray(ok_flags)
      .AddBoolArray(retry_flags)
      .AddTextArray(end_states)
      .AddBytesArray(results)
      .AddTextArray(codes)
      .AddTextArray(messages)
      .Add(static_cast<int64_t>(kMaxRetryDelay.count()));
  Result<Rows> rows = db.Exec(CompleteSql(), params);
  if (!rows) return tl::unexpected(rows.error());
  const std::unordered_map<std::string, int> row_of_id = RowOfFirstColumn(*rows);
  bool wake = false;
  for (const QueuedOutcome& queued : outcomes_) {
    auto it = row_of_id.find(std::string(queued.id));
    if (it == row_of_id.end()) {
      Result<bool> lost = LostLease(db, queued.id, queued.claim, queued.out);
      if (!lost) return lost;
      continue;
    }
    JobState state = ParseJobState(rows->Text(it->second, 1)).value_or(JobState::kFailed);
    *queued.out = state;
    wake = wake || (state == JobState::kQueued && rows->Int(it->second, 2) == 0);
  }
  outcomes_.clear();
  outcome_ids_.clear();
  return wake;
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
                int stop_read, int stop_write, std::chrono::milliseconds poll_interval)
      : url_(url),
        poll_interval_(poll_interval),
        readers_([url] { return Connection::Open(url); }, kMaxReaders),
        stop_read_(stop_read),
        stop_write_(stop_write),
        notifier_(url, kNotifyChannel) {
    std::vector<pg::Deferred*> deferred;
    for (size_t i = 0; i < writers.size(); ++i) {
      writes_.push_back(std::make_unique<LaneWrites>());
      deferred.push_back(writes_.back().get());
    }
    lanes_ = std::make_unique<CommitLanes>(std::move(writers), wake_, notifier_,
                                           std::move(deferred));
    // NOTIFY keel_jobs from any process (and every reconnect) wakes waiting claimers.
    listener_ = std::thread(
        [this] { pg::ListenLoop(url_, kNotifyChannel, stop_read_, [this] { wake_.Notify(); }); });
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
    Result<void> run = Write([&](Connection& db) -> Result<bool> {
      Result<Rows> done = db.Exec(
          "INSERT INTO keel_modules (digest, bytes, created_us) "
          "VALUES ($1, $2, keel_now_us()) ON CONFLICT (digest) DO NOTHING",
          Params().Add(digest).AddBytes(bytes));
      if (!done) return tl::unexpected(done.error());
      return false;
    });
    if (!run) return tl::unexpected(run.error());
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
    Result<SubmitResult> out;
    Result<void> run = Defer([&](Connection&, LaneWrites& writes) -> Result<bool> {
      writes.AddSubmit(spec, &out);
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
    if (filter.state) sql += StateFilterSql(*filter.state);
    sql += filter.newest_first ? " ORDER BY seq DESC" : " ORDER BY seq";
    sql += " LIMIT $1";
    params.Add(static_cast<int64_t>(filter.limit));
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
      Result<Rows> rows = conn.Exec(kCountByStateSql, Params());
      if (!rows) return tl::unexpected(rows.error());
      StateCounter counter;
      for (int r = 0; r < rows->size(); ++r) counter.Add(rows->Text(r, 0), rows->Int(r, 1));
      return counter.Counts();
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
    Result<void> run = Defer([&](Connection& db, LaneWrites& writes) -> Result<bool> {
      return writes.AddOutcome(db, id, claim, outcome, &out);
    });
    if (!run) return tl::unexpected(run.error());
    return out;
  }

  std::vector<Result<JobState>> CompleteAll(std::span<const Completion> completions) override {
    OutcomeBatch batch(completions);
    bool rolled_back = false;
    Result<void> run = Defer(
        [&](Connection& db, LaneWrites& writes) {
          return batch.Record([&](const Completion& c, Result<JobState>* out) {
            return writes.AddOutcome(db, c.id, c.claim, *c.outcome, out);
          });
        },
        batch.size(), &rolled_back);
    return batch.Answers(*this, run, rolled_back);
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

  CommitStats commit_stats() const override { return lanes_->stats(); }

 private:
  // True at most once per kReapInterval: re-queueing expired leases costs a
  // round trip, and a lease is never that precise anyway.
  bool ReapDue() {
    int64_t now = NowMicros();
    int64_t due = next_reap_us_.load(std::memory_order_relaxed);
    return now >= due && next_reap_us_.compare_exchange_strong(
                             due, now + std::chrono::microseconds(kReapInterval).count());
  }

  // Runs a write in the next transaction of any lane.
  [[nodiscard]] Result<void> Write(const std::function<Result<bool>(Connection&)>& op) {
    return lanes_->Run([&](Connection& db, size_t) { return op(db); });
  }

  // Like Write, for operations that queue rows on the lane's LaneWrites
  // (sent with the others of the transaction just before it commits).
  using DeferredOp = std::function<Result<bool>(Connection&, LaneWrites&)>;
  [[nodiscard]] Result<void> Defer(const DeferredOp& op, size_t writes = 1,
                                  bool* rolled_back = nullptr) {
    return lanes_->Run([&](Connection& db, size_t lane) { return op(db, *writes_[lane]); },
                       writes, rolled_back);
  }

  // Start() and Heartbeat(): extends the lease (id, claim); Start also
  // counts the attempt, and only once. Sent with the lane's other leases.
  Result<TimePoint> ExtendLease(std::string_view id, uint64_t claim,
                                std::chrono::milliseconds lease, bool start) {
    if (!IsJobId(id)) return NoSuchJob(id);
    if (lease.count() <= 0) return MakeError(ErrorCode::kInvalidArgument, "lease <= 0");
    Result<TimePoint> out;
    Result<void> run = Defer([&](Connection& db, LaneWrites& writes) -> Result<bool> {
      return writes.AddLease(db, id, claim, lease, start, &out);
    });
    if (!run) return tl::unexpected(run.error());
    return out;
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

  const std::string url_;
  const std::chrono::milliseconds poll_interval_;
  ConnectionPool<Connection> readers_;


  WakeSignal wake_;
  const int stop_read_;  // the listener's stop pipe
  const int stop_write_;
  pg::Notifier notifier_;  // outlives the lanes, which use it
  // One per lane, used by its thread only; outlives the lanes.
  std::vector<std::unique_ptr<LaneWrites>> writes_;
  std::unique_ptr<CommitLanes> lanes_;
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

Result<std::unique_ptr<JobStore>> OpenPostgresStore(const std::string& url,
                                                   const StoreOptions& options) {
  std::vector<std::unique_ptr<Connection>> writers;
  if (options.commit_lanes < 1) {
    return MakeError(ErrorCode::kInvalidArgument, "commit_lanes must be at least 1");
  }
  for (size_t i = 0; i < options.commit_lanes; ++i) {
    Result<std::unique_ptr<Connection>> conn = Connection::Open(url);
    if (!conn) return tl::unexpected(conn.error());
    // A claim must walk keel_jobs_ready in order and stop at its LIMIT.
    // Whenever the statistics underestimate the backlog (a new or fast-
    // growing table), PostgreSQL plans a bitmap scan instead, which reads
    // every ready row and sorts them, on each claim; the prepared statement
    // keeps that plan. The writers' other statements find rows by key.
    Result<std::string> set = (*conn)->ExecScript("SET enable_bitmapscan = off");
    if (!set) return tl::unexpected(set.error());
    writers.push_back(std::move(*conn));
  }
  if (Result<void> migrated = MigrateSchema(*writers[0]); !migrated) {
    return tl::unexpected(migrated.error());
  }
  int stop[2];
  if (pipe2(stop, O_CLOEXEC) != 0) {
    return MakeError(ErrorCode::kInternal, "postgres: cannot create the listener's pipe");
  }
  return std::make_unique<PostgresStore>(url, std::move(writers), stop[0], stop[1],
                                         options.claim_poll_interval);
}

}  // namespace keel::jobs

#include "jobs/schema.h"

#include <string>

namespace keel::jobs::schema {

namespace {

// Version 1: the tables as keel created them before schema versions
// (testdata/schema_v1_*.sql keep that text verbatim). Never edit a
// migration that has shipped; add one.
constexpr char kSqliteV1[] = R"sql(
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
)sql";

constexpr char kPostgresV1[] = R"sql(
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
)sql";

// Version 2: claims and starts are separate. `claims` counts claims and
// names the current lease (a claim may now end without an attempt, so the
// attempt count can no longer name it); `started_us` is when the current
// claim started running (NULL: claimed, not started). A job running under
// version 1 was started when it was claimed.
constexpr char kSqliteV2[] = R"sql(
ALTER TABLE keel_jobs ADD COLUMN claims INTEGER NOT NULL DEFAULT 0;
ALTER TABLE keel_jobs ADD COLUMN started_us INTEGER;
UPDATE keel_jobs SET claims = attempts,
  started_us = CASE WHEN state = 'running' THEN updated_us END;
)sql";

constexpr char kPostgresV2[] = R"sql(
ALTER TABLE keel_jobs ADD COLUMN claims BIGINT NOT NULL DEFAULT 0;
ALTER TABLE keel_jobs ADD COLUMN started_us BIGINT;
UPDATE keel_jobs SET claims = attempts,
  started_us = CASE WHEN state = 'running' THEN updated_us END;
)sql";

// Version 3: the cluster's shared state. Module names (each change bumps the
// single keel_registry_version row, which also serializes registry writes
// and the deletion of unreferenced module bytes), the digests no name
// refers to any more (deleted once no job does either), the nodes with their
// heartbeats, and abort requests for jobs running on another node.
constexpr char kSqliteV3[] = R"sql(
CREATE TABLE keel_module_names (
  name TEXT PRIMARY KEY,
  digest TEXT NOT NULL,
  state TEXT NOT NULL,
  settings TEXT NOT NULL DEFAULT '{}',
  version INTEGER NOT NULL,
  updated_us INTEGER NOT NULL
);
CREATE TABLE keel_registry_version (
  id INTEGER PRIMARY KEY CHECK (id = 1),
  version INTEGER NOT NULL
);
INSERT INTO keel_registry_version (id, version) VALUES (1, 0);
CREATE TABLE keel_nodes (
  name TEXT PRIMARY KEY,
  started_us INTEGER NOT NULL,
  last_seen_us INTEGER NOT NULL,
  lease_ms INTEGER NOT NULL,
  workers INTEGER NOT NULL,
  version TEXT NOT NULL,
  address TEXT NOT NULL,
  draining INTEGER NOT NULL DEFAULT 0,
  stopped INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE keel_module_garbage (
  digest TEXT PRIMARY KEY,
  since_us INTEGER NOT NULL
);
CREATE TABLE keel_abort_requests (
  job_id TEXT PRIMARY KEY,
  requested_us INTEGER NOT NULL
);
)sql";

constexpr char kPostgresV3[] = R"sql(
CREATE TABLE keel_module_names (
  name TEXT PRIMARY KEY,
  digest TEXT NOT NULL,
  state TEXT NOT NULL,
  settings TEXT NOT NULL DEFAULT '{}',
  version BIGINT NOT NULL,
  updated_us BIGINT NOT NULL
);
CREATE TABLE keel_registry_version (
  id BIGINT PRIMARY KEY CHECK (id = 1),
  version BIGINT NOT NULL
);
INSERT INTO keel_registry_version (id, version) VALUES (1, 0);
CREATE TABLE keel_nodes (
  name TEXT PRIMARY KEY,
  started_us BIGINT NOT NULL,
  last_seen_us BIGINT NOT NULL,
  lease_ms BIGINT NOT NULL,
  workers BIGINT NOT NULL,
  version TEXT NOT NULL,
  address TEXT NOT NULL,
  draining BOOLEAN NOT NULL DEFAULT false,
  stopped BOOLEAN NOT NULL DEFAULT false
);
CREATE TABLE keel_module_garbage (
  digest TEXT PRIMARY KEY,
  since_us BIGINT NOT NULL
);
CREATE TABLE keel_abort_requests (
  job_id TEXT PRIMARY KEY,
  requested_us BIGINT NOT NULL
);
)sql";

// Version 4: fewer index writes per job, as every state change of a job
// rewrites its row and (not being a HOT update) adds an entry to every index
// whose predicate the new row meets. The state index keeps only jobs that
// finished without success: queued and running jobs are in the ready and
// leased indexes already, and succeeded ones, the bulk of the table, are
// listed by seq and counted through the finished index (internal.h). On
// PostgreSQL jobs without an idempotency key get no key index entry (the key
// is unique through a partial index; SQLite's inline UNIQUE cannot be
// dropped without rebuilding the table).
constexpr char kSqliteV4[] = R"sql(
DROP INDEX keel_jobs_state;
CREATE INDEX keel_jobs_state ON keel_jobs (state, seq)
  WHERE state IN ('failed', 'timed_out', 'cancelled', 'dead');
)sql";

constexpr char kPostgresV4[] = R"sql(
DROP INDEX keel_jobs_state;
CREATE INDEX keel_jobs_state ON keel_jobs (state, seq)
  WHERE state IN ('failed', 'timed_out', 'cancelled', 'dead');
ALTER TABLE keel_jobs DROP CONSTRAINT keel_jobs_idempotency_key_key;
CREATE UNIQUE INDEX keel_jobs_key ON keel_jobs (idempotency_key)
  WHERE idempotency_key IS NOT NULL;
)sql";

constexpr Migration kSqliteMigrations[] = {
    {1, "job queue: keel_modules, keel_jobs", kSqliteV1},
    {2, "keel_jobs: claims name leases; started_us", kSqliteV2},
    {3, "cluster: module names, nodes, abort requests", kSqliteV3},
    {4, "keel_jobs: the state index holds unsuccessful jobs only", kSqliteV4},
};
constexpr Migration kPostgresMigrations[] = {
    {1, "job queue: keel_modules, keel_jobs, keel_now_us()", kPostgresV1},
    {2, "keel_jobs: claims name leases; started_us", kPostgresV2},
    {3, "cluster: module names, nodes, abort requests", kPostgresV3},
    {4, "keel_jobs: unsuccessful jobs only in the state index; partial key index", kPostgresV4},
};
static_assert(std::size(kSqliteMigrations) == kSchemaVersion);
static_assert(std::size(kPostgresMigrations) == kSchemaVersion);

constexpr char kSqliteVersionTable[] =
    "CREATE TABLE IF NOT EXISTS keel_schema_migrations (version INTEGER PRIMARY KEY, "
    "summary TEXT NOT NULL, applied_us INTEGER NOT NULL)";
constexpr char kPostgresVersionTable[] =
    "CREATE TABLE IF NOT EXISTS keel_schema_migrations (version BIGINT PRIMARY KEY, "
    "summary TEXT NOT NULL, applied_us BIGINT NOT NULL)";

// The version `db` is at: recorded, else 1 if keel's tables exist, else 0.
Result<int> FoundVersion(Database& db) {
  Result<std::optional<int>> recorded = db.RecordedVersion();
  if (!recorded) return tl::unexpected(recorded.error());
  if (*recorded) return **recorded;
  Result<bool> v1 = db.TableExists("keel_jobs");
  if (!v1) return tl::unexpected(v1.error());
  if (!*v1) return 0;
  if (Result<void> noted = db.Record(1, "found: tables made before schema versions"); !noted) {
    return tl::unexpected(noted.error());
  }
  return 1;
}

}  // namespace

std::span<const Migration> Migrations(Dialect dialect) {
  if (dialect == Dialect::kSqlite) return kSqliteMigrations;
  return kPostgresMigrations;
}

Result<int> Migrate(Dialect dialect, Database& db) {
  const char* table = dialect == Dialect::kSqlite ? kSqliteVersionTable : kPostgresVersionTable;
  if (Result<void> made = db.Exec(table); !made) return tl::unexpected(made.error());
  Result<int> found = FoundVersion(db);
  if (!found) return found;
  if (*found > kSchemaVersion) {
    return MakeError(ErrorCode::kFailedPrecondition,
                     "the database has schema version " + std::to_string(*found) +
                         ", newer than this keel's " + std::to_string(kSchemaVersion) +
                         ": upgrade keel to use it");
  }
  for (const Migration& migration : Migrations(dialect)) {
    if (migration.version <= *found) continue;
    if (Result<void> done = db.Exec(migration.sql); !done) {
      Error error = done.error();
      error.message = "schema migration to version " + std::to_string(migration.version) +
                      " failed: " + error.message;
      return tl::unexpected(std::move(error));
    }
    if (Result<void> noted = db.Record(migration.version, migration.summary); !noted) {
      return tl::unexpected(noted.error());
    }
  }
  return *found;
}

}  // namespace keel::jobs::schema

-- The job store's schema v1 (PostgreSQL), as committed in 531ccf3 and unchanged
-- up to 1c7782b (src/jobs/postgres_store.cc, kSchemaSql): the tables every
-- database made before schema versions has. Kept verbatim to create such a
-- database in schema_test.cc.
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

-- The job store's schema v1 (SQLite), as committed in 531ccf3 and unchanged up
-- to 1c7782b (src/jobs/sqlite_store.cc, kSchemaSql): the tables every database
-- made before schema versions has. Kept verbatim to create such a database in
-- schema_test.cc.
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

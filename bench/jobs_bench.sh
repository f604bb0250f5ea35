#!/usr/bin/env bash
# Durable jobs on both stores, in one run: SQLite in a temporary data
# directory and a throwaway PostgreSQL on loopback. Beside keel on
# PostgreSQL, pgbench (64 clients) inserts single rows into a table shaped
# like keel_jobs on the same server: the database's insert ceiling, each
# insert its own durable transaction. The ratio keel/pgbench is printed per
# round (pgbench before and after keel, averaged) and as a median.
#   bench/jobs_bench.sh [--quick]
# Environment:
#   KEEL_BENCH_ROUNDS=N        rounds (default 1); each runs pgbench, every
#                              binary on both stores (in alternating order),
#                              then pgbench again
#   KEEL_BENCH_BINARY=PATH     the keel-jobs-bench to measure (default
#                              build/bench/keel-jobs-bench, built first)
#   KEEL_BENCH_BASELINE=PATH   another keel-jobs-bench binary to run beside
#                              it (e.g. an older one)
#   KEEL_BENCH_PGBENCH_SECONDS=S  length of each pgbench run (default 5)
#   KEEL_BENCH_PRIORITY=1      as root: run at nice -20 in an autogroup of its
#                              own (server, pgbench and keel alike), so that
#                              other work on a shared machine takes little CPU
set -euo pipefail
if [ "${KEEL_BENCH_PRIORITY:-0}" = 1 ] && [ -z "${KEEL_BENCH_PRIORITIZED:-}" ]; then
  # A new session gets its own autogroup, whose nice can then be lowered.
  exec setsid --wait env KEEL_BENCH_PRIORITIZED=1 bash -c 'echo -20 > /proc/self/autogroup && exec "$0" "$@"' "$0" "$@"
fi
cd "$(dirname "$0")/.."
jobs=20000
[ "${1:-}" = "--quick" ] && jobs=3000
rounds=${KEEL_BENCH_ROUNDS:-1}
pgbench_seconds=${KEEL_BENCH_PGBENCH_SECONDS:-5}
cmake -S . -B build -G Ninja -DKEEL_BENCH=ON >/dev/null
cmake --build build -j2 --target keel-jobs-bench >/dev/null
binaries=(${KEEL_BENCH_BINARY:-build/bench/keel-jobs-bench})
labels=(keel)
if [ -n "${KEEL_BENCH_BASELINE:-}" ]; then
  binaries+=("$KEEL_BENCH_BASELINE")
  labels+=(baseline)
fi
dir=$(mktemp -d)
eval "$(scripts/pg-test-server start)"
trap 'scripts/pg-test-server stop "$KEEL_TEST_PG_DIR" >/dev/null 2>&1; rm -rf "$dir"' EXIT
pg_base=${KEEL_TEST_PG_URL%/*}
echo "# load average: $(cut -d' ' -f1-3 /proc/loadavg)"

# The jobs table's columns and indexes (jobs/schema.cc, versions 1, 2 and 4).
psql -q -X -v ON_ERROR_STOP=1 "$KEEL_TEST_PG_URL" >/dev/null <<'SQL'
CREATE TABLE pgbench_jobs (
  seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  id TEXT NOT NULL UNIQUE, module_digest TEXT NOT NULL, export_name TEXT NOT NULL,
  deadline_ms BIGINT NOT NULL, idempotency_key TEXT, max_attempts BIGINT NOT NULL,
  backoff_ms BIGINT NOT NULL, state TEXT NOT NULL, attempts BIGINT NOT NULL DEFAULT 0,
  cancel_requested BOOLEAN NOT NULL DEFAULT false, created_us BIGINT NOT NULL,
  updated_us BIGINT NOT NULL, not_before_us BIGINT NOT NULL, lease_until_us BIGINT,
  finished_us BIGINT, runner TEXT, error_code TEXT, error_message TEXT, input BYTEA NOT NULL,
  result BYTEA, claims BIGINT NOT NULL DEFAULT 0, started_us BIGINT);
CREATE INDEX ON pgbench_jobs (not_before_us, seq) WHERE state = 'queued';
CREATE INDEX ON pgbench_jobs (lease_until_us) WHERE state = 'running';
CREATE INDEX ON pgbench_jobs (finished_us) WHERE finished_us IS NOT NULL;
CREATE INDEX ON pgbench_jobs (state, seq)
  WHERE state IN ('failed', 'timed_out', 'cancelled', 'dead');
CREATE UNIQUE INDEX ON pgbench_jobs (idempotency_key) WHERE idempotency_key IS NOT NULL;
SQL
insert_script="$dir/insert.sql"
cat >"$insert_script" <<'SQL'
INSERT INTO pgbench_jobs (id, module_digest, export_name, input, deadline_ms, idempotency_key,
  max_attempts, backoff_ms, state, created_us, updated_us, not_before_us)
VALUES (gen_random_uuid()::text, repeat('ab', 32), 'echo', '\x6869', 30000, NULL, 1, 1000,
  'queued', 0, 0, 0);
SQL

# The value of metric $2 in the JSON lines of file $1.
metric() {
  sed -n "s/.*\"metric\": \"$2\", \"value\": \([0-9.e+]*\).*/\1/p" "$1"
}

# Each measured run starts from a checkpoint: otherwise the one after a
# large run pays for writing back that run's dirty pages (and the full-page
# images after the checkpoint it triggers), and the order of runs decides.
checkpoint() {
  psql -q -X "$KEEL_TEST_PG_URL" -c CHECKPOINT >/dev/null
}

run_pgbench() {
  checkpoint
  pgbench -n -M prepared -c 64 -j 2 -T "$pgbench_seconds" -f "$insert_script" \
    "$KEEL_TEST_PG_URL" 2>"$dir/pgbench.err" >"$dir/pgbench.out" || { cat "$dir/pgbench.err" >&2; exit 1; }
  sed -n 's/^tps = \([0-9.]*\) .*/\1/p' "$dir/pgbench.out"
}

# Runs binary $1 (label $2) on both stores, each on a fresh database.
run_keel() {
  local bin=$1 label=$2 db="keel_${2}_$3"
  psql -q -X "$KEEL_TEST_PG_URL" -c "CREATE DATABASE $db" >/dev/null
  rm -rf "$dir/sqlite"
  "$bin" --store "$dir/sqlite" --jobs "$jobs" --label sqlite | tee "$dir/$label.out"
  checkpoint
  "$bin" --store "$pg_base/$db" --jobs "$jobs" --label postgres | tee -a "$dir/$label.out"
}

# pgbench runs before and after the keel runs of each round, and keel is
# compared with the mean of the two: the server's speed drifts on a shared
# machine, and a ceiling taken on one side only would favour whichever
# binary ran nearer a quiet moment.
ratios="$dir/ratios"
for round in $(seq 1 "$rounds"); do
  before=$(run_pgbench)
  order=("${!binaries[@]}")
  if [ $((round % 2)) -eq 0 ]; then order=($(printf '%s\n' "${order[@]}" | tac)); fi
  for i in "${order[@]}"; do run_keel "${binaries[$i]}" "${labels[$i]}" "$round"; done
  after=$(run_pgbench)
  tps=$(awk -v a="$before" -v b="$after" 'BEGIN { printf "%.1f", (a + b) / 2 }')
  echo "{\"metric\": \"pgbench_insert_tps\", \"value\": $tps, \"unit\": \"tps\"}"
  for i in "${!binaries[@]}"; do
    label=${labels[$i]}
    pg=$(metric "$dir/$label.out" postgres_end_to_end_jobs_per_s)
    sqlite=$(metric "$dir/$label.out" sqlite_end_to_end_jobs_per_s)
    awk -v l="$label" -v pg="$pg" -v t="$tps" 'BEGIN { print l, pg / t }' >>"$ratios"
    awk -v l="$label" -v r="$round" -v pg="$pg" -v t="$tps" -v s="$sqlite" -v a="$before" -v b="$after" 'BEGIN {
      printf "# round %d %s: postgres %.0f jobs/s = %.2fx pgbench %.0f tps (%.0f before, %.0f after); sqlite %.0f jobs/s\n",
        r, l, pg, pg / t, t, a, b, s }'
  done
done
for label in "${labels[@]}"; do
  awk -v l="$label" '$1 == l { print $2 }' "$ratios" | sort -g | awk -v l="$label" -v n="$rounds" '
    { v[NR] = $1 } END { m = NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2
      printf "# %s: median postgres/pgbench over %d rounds %.2fx (min %.2f, max %.2f)\n", l, n, m, v[1], v[NR] }'
done

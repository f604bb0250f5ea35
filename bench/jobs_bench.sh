#!/usr/bin/env bash
# Durable jobs on both stores, in one run: SQLite in a temporary data
# directory and a throwaway PostgreSQL on loopback.
#   bench/jobs_bench.sh [--quick]
set -euo pipefail
cd "$(dirname "$0")/.."
jobs=20000
[ "${1:-}" = "--quick" ] && jobs=3000
cmake -S . -B build -G Ninja -DKEEL_BENCH=ON >/dev/null
cmake --build build -j2 --target keel-jobs-bench >/dev/null
dir=$(mktemp -d)
eval "$(scripts/pg-test-server start)"
trap 'scripts/pg-test-server stop "$KEEL_TEST_PG_DIR" >/dev/null 2>&1; rm -rf "$dir"' EXIT
build/bench/keel-jobs-bench --store "$dir" --jobs "$jobs" --label sqlite
build/bench/keel-jobs-bench --store "$KEEL_TEST_PG_URL" --jobs "$jobs" --label postgres

#!/usr/bin/env bash
# Load benchmark of `keel serve` on loopback with wrk (docs/BENCHMARKS.md):
#  1. a trivial synchronous call (add) over keep-alive connections;
#  2. the same while other clients call and hang up at random
#     (bench/http_disconnect.c): calls whose client left are detached or
#     withdrawn, and must not disturb the rest.
# Prints wrk's figures and the service's own counters.
#
# Environment: KEEL_BUILD (default build), KEEL_BENCH_SECONDS (10),
#   KEEL_BENCH_CONNECTIONS (32), KEEL_BENCH_THREADS (wrk threads, 2),
#   KEEL_BENCH_DISCONNECTORS (threads of hanging-up clients, 2),
#   KEEL_BENCH_DISCONNECT_CALL (their call: "EXPORT ARGS" of the add example,
#   default "add 40,2"; e.g. "fib 25" for calls long enough to be detached),
#   KEEL_BENCH_PORT (18089), KEEL_SERVE_ARGS (extra `keel serve` options).
set -euo pipefail
cd "$(dirname "$0")/.."

build=${KEEL_BUILD:-build}
keel=$build/src/cli/keel
seconds=${KEEL_BENCH_SECONDS:-10}
connections=${KEEL_BENCH_CONNECTIONS:-32}
threads=${KEEL_BENCH_THREADS:-2}
disconnectors=${KEEL_BENCH_DISCONNECTORS:-2}
port=${KEEL_BENCH_PORT:-18089}
url=http://127.0.0.1:$port

if [ ! -x "$keel" ] || [ ! -f "$build/guest/add.wasm" ]; then
  cmake --build "$build" --target keel keel_guest_add -j2 >/dev/null
fi

data=$(mktemp -d)
cc -O2 -pthread bench/http_disconnect.c -o "$data/http_disconnect"
# shellcheck disable=SC2086
"$keel" serve --listen "127.0.0.1:$port" --data "$data" --modules "$build/guest" \
  ${KEEL_SERVE_ARGS:-} >"$data/serve.log" 2>&1 &
serve=$!
cleanup() {
  kill "$serve" 2>/dev/null || true
  wait "$serve" 2>/dev/null || true
  rm -rf "$data"
}
trap cleanup EXIT

for _ in $(seq 100); do
  curl -fs "$url/healthz" >/dev/null 2>&1 && break
  sleep 0.1
done
answer=$(curl -fs -X POST -H 'Content-Type: application/json' -d '{"args":[40,2]}' "$url/v1/modules/add/call/add")
[ "$answer" = '{"results":[42]}' ] || { echo "unexpected answer: $answer" >&2; exit 1; }

metric() { curl -fs "$url/metrics" | awk -v m="$1" '$1 == m { print $2 }'; }

echo "== keel serve on $(nproc) cores; wrk -t$threads -c$connections -d${seconds}s"
echo
echo "== 1. add(40, 2), keep-alive"
# Warm up the instances and the connections first.
wrk -t"$threads" -c"$connections" -d2s -s bench/wrk_call.lua "$url/v1/modules/add/call/add" >/dev/null
wrk -t"$threads" -c"$connections" -d"${seconds}s" --latency -s bench/wrk_call.lua "$url/v1/modules/add/call/add"

echo
echo "== 2. the same, while $disconnectors threads of clients call add and hang up at random"
detached_before=$(metric 'keel_http_client_disconnects_total{call="detached"}')
withdrawn_before=$(metric 'keel_http_client_disconnects_total{call="withdrawn"}')
# shellcheck disable=SC2086
"$data/http_disconnect" "$port" "$seconds" "$disconnectors" ${KEEL_BENCH_DISCONNECT_CALL:-} &
hangups=$!
wrk -t"$threads" -c"$connections" -d"${seconds}s" --latency -s bench/wrk_call.lua "$url/v1/modules/add/call/add"
wait "$hangups"
sleep 0.5
echo "calls detached by a client hanging up: $(( $(metric 'keel_http_client_disconnects_total{call="detached"}') - detached_before ))"
echo "calls withdrawn before they started:   $(( $(metric 'keel_http_client_disconnects_total{call="withdrawn"}') - withdrawn_before ))"
echo "instances poisoned (must be 0):         $(metric 'keel_instance_events_total{event="poisoned"}')"
echo "detached results delivered:             $(metric keel_detached_results_total)"

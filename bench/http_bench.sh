#!/usr/bin/env bash
# Load benchmark of `keel serve` on loopback with wrk (docs/BENCHMARKS.md):
#  1. a trivial synchronous call, add(40, 2), over keep-alive connections,
#     against Debian's nginx (one worker) answering the same JSON constant:
#     rounds alternate nginx / keel in one run; prints both medians and the
#     ratio keel / nginx;
#  2. the keel call while other clients call and hang up at random
#     (bench/http_disconnect.c): calls whose client left are detached or
#     withdrawn, and must not disturb the rest.
#
# Environment: KEEL_BUILD (default build), KEEL_BENCH_SECONDS (per round, 5),
#   KEEL_BENCH_ROUNDS (rounds of each server, 3), KEEL_BENCH_CONNECTIONS (64),
#   KEEL_BENCH_THREADS (wrk threads, 2), KEEL_BENCH_DISCONNECTORS (threads of
#   hanging-up clients, 2; 0 skips part 2), KEEL_BENCH_DISCONNECT_CALL (their
#   call: "EXPORT ARGS" of the add example, default "add 40,2"),
#   KEEL_BENCH_PORT (18089; nginx gets the next port), KEEL_SERVE_ARGS (extra
#   `keel serve` options), KEEL_BENCH_PRIORITY=1 (as root: run at nice -20 in
#   an autogroup of its own, so that other work on a shared machine takes
#   little of the CPU; both servers get the same treatment).
set -euo pipefail
if [ "${KEEL_BENCH_PRIORITY:-0}" = 1 ] && [ -z "${KEEL_BENCH_PRIORITIZED:-}" ]; then
  # A new session gets its own autogroup, whose nice can then be lowered.
  exec setsid --wait env KEEL_BENCH_PRIORITIZED=1 bash -c 'echo -20 > /proc/self/autogroup && exec "$0" "$@"' "$0" "$@"
fi
cd "$(dirname "$0")/.."

build=${KEEL_BUILD:-build}
keel=$build/src/cli/keel
seconds=${KEEL_BENCH_SECONDS:-5}
rounds=${KEEL_BENCH_ROUNDS:-3}
connections=${KEEL_BENCH_CONNECTIONS:-64}
threads=${KEEL_BENCH_THREADS:-2}
disconnectors=${KEEL_BENCH_DISCONNECTORS:-2}
port=${KEEL_BENCH_PORT:-18089}
nginx_port=$((port + 1))
url=http://127.0.0.1:$port
nginx_url=http://127.0.0.1:$nginx_port
call=/v1/modules/add/call/add

command -v nginx >/dev/null || { echo "nginx is missing: run scripts/setup" >&2; exit 1; }
if [ ! -x "$keel" ] || [ ! -f "$build/guest/add.wasm" ]; then
  cmake --build "$build" --target keel keel_guest_add -j2 >/dev/null
fi

data=$(mktemp -d)
serve=""
nginx_pid=""
cleanup() {
  [ -n "$serve" ] && kill "$serve" 2>/dev/null && wait "$serve" 2>/dev/null
  [ -n "$nginx_pid" ] && kill "$nginx_pid" 2>/dev/null && wait "$nginx_pid" 2>/dev/null
  rm -rf "$data"
}
trap cleanup EXIT

# nginx: one worker, answering the call's JSON for any request, keep-alive
# without a request limit (its default closes every 1000 requests).
mkdir -p "$data/nginx"
cat >"$data/nginx/nginx.conf" <<EOF
daemon off;
master_process on;
worker_processes 1;
pid $data/nginx/nginx.pid;
error_log $data/nginx/error.log warn;
events { worker_connections 1024; }
http {
  access_log off;
  keepalive_requests 1000000000;
  keepalive_timeout 60s;
  client_body_temp_path $data/nginx/body;
  server {
    listen 127.0.0.1:$nginx_port;
    location / {
      default_type application/json;
      return 200 '{"results":[42]}\n';
    }
  }
}
EOF
nginx -c "$data/nginx/nginx.conf" -p "$data/nginx" &
nginx_pid=$!

# shellcheck disable=SC2086
"$keel" serve --listen "127.0.0.1:$port" --data "$data" --modules "$build/guest" \
  ${KEEL_SERVE_ARGS:-} >"$data/serve.log" 2>&1 &
serve=$!

for u in "$url/healthz" "$nginx_url/"; do
  for _ in $(seq 100); do
    curl -fs "$u" >/dev/null 2>&1 && break
    sleep 0.1
  done
done
for u in "$url" "$nginx_url"; do
  answer=$(curl -fs -X POST -H 'Content-Type: application/json' -d '{"args":[40,2]}' "$u$call")
  [ "$answer" = '{"results":[42]}' ] || { echo "unexpected answer from $u: $answer" >&2; exit 1; }
done

metric() { curl -fs "$url/metrics" | awk -v m="$1" '$1 == m { print $2 }'; }
# Requests/s of one wrk run against $1, and its whole output in $data/wrk.out.
rate() {
  wrk -t"$threads" -c"$connections" -d"${seconds}s" --latency -s bench/wrk_call.lua "$1$call" >"$data/wrk.out"
  awk '$1 == "Requests/sec:" { print $2 }' "$data/wrk.out"
}
median() { sort -n | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

echo "== $(nproc) cores; wrk -t$threads -c$connections, $rounds rounds of ${seconds}s each, alternated"
echo "== nginx $(nginx -v 2>&1 | sed 's/.*\///') (1 worker, constant) vs keel serve ${KEEL_SERVE_ARGS:-} (add(40, 2))"
# Warm up both: connections, instances, caches.
wrk -t"$threads" -c"$connections" -d2s -s bench/wrk_call.lua "$nginx_url$call" >/dev/null
wrk -t"$threads" -c"$connections" -d2s -s bench/wrk_call.lua "$url$call" >/dev/null
nginx_rates=()
keel_rates=()
ratios=()
for r in $(seq "$rounds"); do
  n=$(rate "$nginx_url")
  nginx_rates+=("$n")
  k=$(rate "$url")
  keel_rates+=("$k")
  ratios+=("$(awk -v k="$k" -v n="$n" 'BEGIN { print k / n }')")
  latency=$(awk '$1 == "50%" { p50 = $2 } $1 == "99%" { p99 = $2 } /non-200/ { bad = $3 } END { print "p50 " p50 ", p99 " p99 ", non-200 " bad }' "$data/wrk.out")
  printf 'round %d: nginx %10.0f req/s   keel %10.0f req/s (%s)   ratio %.2f\n' \
    "$r" "$n" "$k" "$latency" "${ratios[-1]}"
done
nginx_median=$(printf '%s\n' "${nginx_rates[@]}" | median)
keel_median=$(printf '%s\n' "${keel_rates[@]}" | median)
# Each round's ratio compares neighbouring runs, which shared the machine's
# state: its median is the figure to quote.
printf 'median:  nginx %10.0f req/s   keel %10.0f req/s   ratio keel/nginx: %.2f (median of the rounds)\n' \
  "$nginx_median" "$keel_median" "$(printf '%s\n' "${ratios[@]}" | median)"

[ "$disconnectors" -gt 0 ] || exit 0
cc -O2 -pthread bench/http_disconnect.c -o "$data/http_disconnect"
echo
echo "== keel: the same call, while $disconnectors threads of clients call add and hang up at random"
detached_before=$(metric 'keel_http_client_disconnects_total{call="detached"}')
withdrawn_before=$(metric 'keel_http_client_disconnects_total{call="withdrawn"}')
# shellcheck disable=SC2086
"$data/http_disconnect" "$port" "$seconds" "$disconnectors" ${KEEL_BENCH_DISCONNECT_CALL:-} &
hangups=$!
wrk -t"$threads" -c"$connections" -d"${seconds}s" --latency -s bench/wrk_call.lua "$url$call"
wait "$hangups"
sleep 0.5  # detached results arrive once their calls end
echo "calls detached by a client hanging up: $(( $(metric 'keel_http_client_disconnects_total{call="detached"}') - detached_before ))"
echo "calls withdrawn before they started:   $(( $(metric 'keel_http_client_disconnects_total{call="withdrawn"}') - withdrawn_before ))"
echo "instances poisoned (must be 0):         $(metric 'keel_instance_events_total{event="poisoned"}')"
echo "detached results delivered:             $(metric keel_detached_results_total)"

#!/usr/bin/env bash
# wasi_peers.sh: the WASI programs of bench/wasi under keel (both engines),
# the wasmtime CLI of keel's pinned Wasmtime version and node, timed in one
# run; every figure also as a ratio to `wasmtime run`. Markdown on stdout,
# progress on stderr.
#
#   bench/wasi_peers.sh [--quick | --runs N] [--keel PATH] [--wasmtime PATH]
#                       [--no-executor] [--keep]
#
#   --runs N      timed runs per program and runtime (default 5)
#   --quick       2 runs, for a smoke test (and keel-bench --quick)
#   --no-executor skip the executor benchmark (build/bench/keel-bench, built
#                 with -DKEEL_BENCH=ON if missing), which otherwise runs
#                 after the programs on each engine, twice, alternated:
#                 instantiation, calls, resets, policy throughputs
#   --keel        the keel binary (default build/src/cli/keel, built if missing)
#   --wasmtime    the wasmtime CLI (default: scripts/build-wasmtime --cli's,
#                 installed into its cache with cargo if missing)
#   --keep        keep the temporary directory (wasm files, input, outputs)
#
# The runtimes, in this order (each round starts one further on, so that
# machine noise hits all alike):
#   keel-sm         keel run --engine spidermonkey
#   keel-wt         keel run --engine wasmtime
#   wasmtime        wasmtime run -C cache=n: the reference of every ratio
#   wasmtime-epoch  wasmtime run -C cache=n -W timeout=3600s: with epoch
#                   interruption, as keel's Wasmtime engine always has (the
#                   CLI turns it on to enforce a timeout)
#   node            node bench/node_wasi.mjs (node:wasi, V8)
# Neither wasmtime column uses the CLI's compilation cache: keel compiles
# the module in every run, so the CLI does too. Both keel and the CLI
# compile with Cranelift at its default level (speed) on all cores. Every
# run's stdout must equal the reference (wasmtime's first run).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
RUNS=5
KEEL=""
WASMTIME=""
KEEP=0
EXECUTOR=1
BENCH_ARGS=()

usage() { sed -n '2,19p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }
die() { echo "wasi_peers.sh: $*" >&2; exit 1; }
log() { echo "$*" >&2; }

while (($#)); do
  case $1 in
    --quick) RUNS=2; BENCH_ARGS=(--quick) ;;
    --no-executor) EXECUTOR=0 ;;
    --runs) [[ $# -ge 2 && $2 =~ ^[1-9][0-9]*$ ]] || die "--runs wants a positive number"; RUNS=$2; shift ;;
    --keel) [[ $# -ge 2 ]] || die "--keel wants a path"; KEEL=$2; shift ;;
    --wasmtime) [[ $# -ge 2 ]] || die "--wasmtime wants a path"; WASMTIME=$2; shift ;;
    --keep) KEEP=1 ;;
    -h|--help) usage; exit 0 ;;
    *) usage >&2; die "unknown argument: $1" ;;
  esac
  shift
done

command -v node >/dev/null || die "node not found"
NODE_MAJOR=$(node -p 'process.versions.node.split(".")[0]')
((NODE_MAJOR >= 20)) || die "node >= 20 wanted for node:wasi with version 'preview1' (have $(node --version))"

if [[ -z $KEEL ]]; then
  KEEL=$ROOT/build/src/cli/keel
  if [[ ! -x $KEEL ]]; then
    log "building keel in $ROOT/build ..."
    cmake -S "$ROOT" -B "$ROOT/build" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo >&2
    cmake --build "$ROOT/build" --target keel -j2 >&2
  fi
fi
[[ -x $KEEL ]] || die "no keel binary at $KEEL"
KEEL_BENCH=$ROOT/build/bench/keel-bench
if ((EXECUTOR)) && [[ ! -x $KEEL_BENCH ]]; then
  log "building keel-bench in $ROOT/build ..."
  cmake -S "$ROOT" -B "$ROOT/build" -G Ninja -DKEEL_BENCH=ON >&2
  cmake --build "$ROOT/build" --target keel-bench -j2 >&2
fi
if [[ -z $WASMTIME ]]; then
  "$ROOT/scripts/build-wasmtime" --cli || die "scripts/build-wasmtime --cli failed"
  WASMTIME=$("$ROOT/scripts/build-wasmtime" --prefix)/bin/wasmtime
fi
[[ -x $WASMTIME ]] || die "no wasmtime CLI at $WASMTIME"
WANT_VERSION=$(tr -d '[:space:]' <"$ROOT/scripts/wasmtime-version")
WT_VERSION=$("$WASMTIME" --version | awk '{ print $2 }')
[[ $WT_VERSION == "$WANT_VERSION" ]] ||
  log "warning: $WASMTIME is wasmtime $WT_VERSION, keel pins $WANT_VERSION"
NODE_RUNNER=$ROOT/bench/node_wasi.mjs

WORK=$(mktemp -d "${TMPDIR:-/tmp}/keel-wasi-peers.XXXXXX")
if ((KEEP)); then log "keeping $WORK"; else trap 'rm -rf "$WORK"' EXIT; fi
mkdir -p "$WORK/out"
# A private copy, so that a rebuild of build/ during the run cannot mix binaries.
cp "$KEEL" "$WORK/keel"
((EXECUTOR)) && cp "$KEEL_BENCH" "$WORK/keel-bench"

source "$ROOT/bench/wasi_programs.sh"
build_wasi_programs

RUNTIMES=(keel-sm keel-wt wasmtime wasmtime-epoch node)
REFERENCE=wasmtime
declare -A LABEL=(
  [keel-sm]="keel, SpiderMonkey"
  [keel-wt]="keel, Wasmtime"
  [wasmtime]="wasmtime run"
  [wasmtime-epoch]="wasmtime run, epochs"
  [node]="node"
)

# cmd RUNTIME NAME: fill CMD with the command line of one run.
cmd() {
  local rt=$1 p=$2
  case $rt in
    keel-*)
      local engine=spidermonkey
      [[ $rt == keel-wt ]] && engine=wasmtime
      CMD=("$WORK/keel" run --engine "$engine" "$WORK/wasm/$p.wasm")
      # keel's --dir takes several values, so it goes after the module.
      [[ -n ${DATA[$p]:-} ]] && CMD+=(--dir "$WORK/data::/data")
      [[ -n ${ARGS[$p]:-} ]] && CMD+=(-- ${ARGS[$p]})
      ;;
    wasmtime*)
      CMD=("$WASMTIME" run -C cache=n)
      [[ $rt == wasmtime-epoch ]] && CMD+=(-W timeout=3600s)
      [[ -n ${DATA[$p]:-} ]] && CMD+=(--dir "$WORK/data::/data")
      CMD+=("$WORK/wasm/$p.wasm")
      [[ -n ${ARGS[$p]:-} ]] && CMD+=(${ARGS[$p]})
      ;;
    node)
      CMD=(node --no-warnings "$NODE_RUNNER")
      [[ -n ${DATA[$p]:-} ]] && CMD+=(--dir "$WORK/data::/data")
      CMD+=("$WORK/wasm/$p.wasm")
      [[ -n ${ARGS[$p]:-} ]] && CMD+=(-- ${ARGS[$p]})
      ;;
  esac
  return 0
}

record_references "${RUNTIMES[@]}"

LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
log "timing: $RUNS rounds (load average $LOAD_BEFORE) ..."
n_rt=${#RUNTIMES[@]}
for ((round = 1; round <= RUNS; round++)); do
  order=()
  for ((i = 0; i < n_rt; i++)); do order+=("${RUNTIMES[$(((i + round - 1) % n_rt))]}"); done
  line="  round $round/$RUNS (${order[0]} first):"
  for p in "${PROGRAMS[@]}"; do
    [[ -n ${FAILED[$p]:-} ]] && continue
    for rt in "${order[@]}"; do
      run_one "$rt" "$p"
      check_run "$rt" "$p" || continue 2
      WALLS[$rt.$p]+="$WALL "
      CPUS[$rt.$p]+="$CPU "
    done
    line+=" $p"
  done
  log "$line"
done
LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)

# keel-bench on each engine, two rounds, the engines' order alternating.
ENGINES=(spidermonkey wasmtime)
if ((EXECUTOR)); then
  BENCH_LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
  for round in 1 2; do
    order=("${ENGINES[@]}")
    ((round == 2)) && order=(wasmtime spidermonkey)
    for e in "${order[@]}"; do
      log "keel-bench --engine $e (round $round) ..."
      "$WORK/keel-bench" --engine "$e" "${BENCH_ARGS[@]}" >"$WORK/out/bench.$e.$round" 2>"$WORK/out/bench.$e.$round.err" ||
        log "  keel-bench --engine $e failed: $(tail -c 300 "$WORK/out/bench.$e.$round.err" | tr '\n' ' ')"
    done
  done
  BENCH_LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)
fi

geomean() { tr ' ' '\n' | awk 'NF && $1 > 0 { s += log($1); n++ } END { if (n) printf "%.2f", exp(s / n); else print "–" }'; }

minimum() { tr ' ' '\n' | awk 'NF' | sort -g | head -n1; }

# table KIND STAT: one table of STAT (median or minimum) of WALLS or CPUS,
# with ratios to the reference.
table() {
  local kind=$1 stat=$2 header="| program |" rule="| --- |" p rt v ref row
  local -n times=$kind
  local -A ratios=()
  for rt in "${RUNTIMES[@]}"; do header+=" ${LABEL[$rt]} |"; rule+=" ---: |"; done
  echo "$header"
  echo "$rule"
  for p in "${PROGRAMS[@]}"; do
    [[ -n ${FAILED[$p]:-} ]] && continue
    ref=$($stat <<<"${times[$REFERENCE.$p]}")
    row="| $p |"
    for rt in "${RUNTIMES[@]}"; do
      v=$($stat <<<"${times[$rt.$p]}")
      row+=" $v s ($(div "$v" "$ref")×) |"
      [[ $p != empty ]] && ratios[$rt]+="$(div "$v" "$ref") "
    done
    echo "$row"
  done
  row="| geometric mean, all but empty |"
  for rt in "${RUNTIMES[@]}"; do row+=" $(geomean <<<"${ratios[$rt]:-}")× |"; done
  echo "$row"
}

# --- the report ---------------------------------------------------------------
cpu_model=$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)
mem_gib=$(awk '/^MemTotal/ { printf "%.1f", $2 / 1048576 }' /proc/meminfo)
keel_rev=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
git -C "$ROOT" diff --quiet HEAD 2>/dev/null || keel_rev+=" (with uncommitted changes)"

echo "Machine: $(nproc) CPUs, $cpu_model, $mem_gib GiB RAM; $(uname -sr)."
echo "Load average before/after timing: $LOAD_BEFORE / $LOAD_AFTER."
echo "keel $keel_rev ($KEEL); wasmtime $WT_VERSION ($WASMTIME); node $(node --version) (V8 $(node -p process.versions.v8)); $(clang --version | head -1)."
echo "Medians of $RUNS runs each, runtimes interleaved (rotating order); whole-process times including startup and compilation; (×) is the ratio to \`wasmtime run\`."
echo
echo "Wall time, median:"
echo
table WALLS median
echo
echo "CPU time (user+sys, all threads), median:"
echo
table CPUS median
echo
echo "CPU time, fastest run (other load only ever adds time, so on a busy machine the minimum is the steadier estimate):"
echo
table CPUS minimum

# metric FILE NAME: the value keel-bench printed for NAME, or –.
metric() {
  local v
  v=$(sed -n "s/.*\"metric\": \"$2\", \"value\": \([^,]*\),.*/\1/p" "$1" 2>/dev/null | head -n1)
  echo "${v:-–}"
}
if ((EXECUTOR)); then
  echo
  echo "Executor benchmark (keel-bench ${BENCH_ARGS[*]}, 2 workers), round 1 / round 2; load average $BENCH_LOAD_BEFORE / $BENCH_LOAD_AFTER:"
  echo
  echo "| metric | SpiderMonkey | Wasmtime |"
  echo "| --- | ---: | ---: |"
  names=$(sed -n 's/.*"metric": "\([^"]*\)".*/\1/p' "$WORK"/out/bench.*.1 | awk '!seen[$0]++')
  for m in $names; do
    row="| \`$m\` |"
    for e in "${ENGINES[@]}"; do
      row+=" $(metric "$WORK/out/bench.$e.1" "$m") / $(metric "$WORK/out/bench.$e.2" "$m") |"
    done
    echo "$row"
  done
fi
if ((${#FAILED[@]})); then
  echo
  echo "Dropped:"
  for p in "${PROGRAMS[@]}"; do
    [[ -n ${FAILED[$p]:-} ]] && echo "- \`$p\`: ${FAILED[$p]}"
  done
fi

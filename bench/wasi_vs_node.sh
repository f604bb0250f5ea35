#!/usr/bin/env bash
# wasi_vs_node.sh: the same WASI programs under `keel run` (SpiderMonkey) and
# under Node's built-in node:wasi (V8), timed in one run, printed as a
# Markdown table on stdout (progress goes to stderr).
#
#   bench/wasi_vs_node.sh [--quick | --runs N] [--keel PATH] [--keep]
#
#   --runs N   timed runs per program and runtime (default 5)
#   --quick    2 runs, for a smoke test
#   --keel     the keel binary (default build/src/cli/keel, built if missing)
#   --keep     keep the temporary directory (wasm files, input, outputs)
#
# What it does:
#  1. compiles bench/wasi/*.c with `clang --target=wasm32-wasi -O2 -s`
#     (Debian's clang + wasi-libc) into a temporary directory;
#  2. generates the input of wordcount (~20 MiB of text, fixed seed);
#  3. runs every program once under each runtime untimed (warm-up of the
#     page cache, and the reference output);
#  4. runs N rounds; each round runs every program under keel and under node
#     back to back (which goes first alternates from round to round), so
#     machine noise hits both alike; every run's stdout must equal the
#     reference, else the program is dropped from the table with a note;
#  5. prints medians of wall time and of CPU time (user+sys).
#
# Times are of whole processes: they include starting the engine, reading and
# compiling the module, and for node starting Node itself. The `empty` row
# (a WASI program whose main returns 0) is that fixed cost alone; the last
# column subtracts it from both sides to compare throughput.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
RUNS=5
KEEL=""
KEEP=0

usage() { sed -n '2,12p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }
die() { echo "wasi_vs_node.sh: $*" >&2; exit 1; }
log() { echo "$*" >&2; }

while (($#)); do
  case $1 in
    --quick) RUNS=2 ;;
    --runs) [[ $# -ge 2 && $2 =~ ^[1-9][0-9]*$ ]] || die "--runs wants a positive number"; RUNS=$2; shift ;;
    --keel) [[ $# -ge 2 ]] || die "--keel wants a path"; KEEL=$2; shift ;;
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
    cmake -S "$ROOT" -B "$ROOT/build" -G Ninja >&2
    cmake --build "$ROOT/build" --target keel -j2 >&2
  fi
fi
[[ -x $KEEL ]] || die "no keel binary at $KEEL"
NODE_RUNNER=$ROOT/bench/node_wasi.mjs

WORK=$(mktemp -d "${TMPDIR:-/tmp}/keel-wasi-bench.XXXXXX")
if ((KEEP)); then log "keeping $WORK"; else trap 'rm -rf "$WORK"' EXIT; fi
mkdir -p "$WORK/out"
# A private copy, so that a rebuild of build/ during the run cannot mix binaries.
cp "$KEEL" "$WORK/keel"

# --- the programs -----------------------------------------------------------
source "$ROOT/bench/wasi_programs.sh"
build_wasi_programs

# --- running ------------------------------------------------------------------
# cmd_keel/cmd_node NAME: fill CMD with the command line for one runtime.
cmd_keel() {
  local p=$1
  CMD=("$WORK/keel" run "$WORK/wasm/$p.wasm")
  # keel's --dir takes several values, so it goes after the module.
  [[ -n ${DATA[$p]:-} ]] && CMD+=(--dir "$WORK/data::/data")
  [[ -n ${ARGS[$p]:-} ]] && CMD+=(-- ${ARGS[$p]})
  return 0
}
cmd_node() {
  local p=$1
  CMD=(node --no-warnings "$NODE_RUNNER")
  [[ -n ${DATA[$p]:-} ]] && CMD+=(--dir "$WORK/data::/data")
  CMD+=("$WORK/wasm/$p.wasm")
  [[ -n ${ARGS[$p]:-} ]] && CMD+=(-- ${ARGS[$p]})
  return 0
}

# The first keel run's output is what node must print.
REFERENCE=keel
cmd() { "cmd_$1" "$2"; }
record_references keel node

LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
log "timing: $RUNS rounds (load average $LOAD_BEFORE) ..."
for ((round = 1; round <= RUNS; round++)); do
  if ((round % 2)); then order=(keel node); else order=(node keel); fi
  line="  round $round/$RUNS:"
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

# --- the report ---------------------------------------------------------------
cpu_model=$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)
mem_gib=$(awk '/^MemTotal/ { printf "%.1f", $2 / 1048576 }' /proc/meminfo)
keel_rev=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
git -C "$ROOT" diff --quiet HEAD 2>/dev/null || keel_rev+=" (with uncommitted changes)"

echo "Machine: $(nproc) CPUs, $cpu_model, $mem_gib GiB RAM; $(uname -sr)."
echo "Load average before/after timing: $LOAD_BEFORE / $LOAD_AFTER."
echo "keel $keel_rev ($KEEL); node $(node --version) (V8 $(node -p process.versions.v8)); $(clang --version | head -1)."
echo "Medians of $RUNS runs each, keel and node interleaved; whole-process times including startup and compilation."
echo
echo "| program | workload | keel wall (s) | node wall (s) | wall keel/node | wall keel/node minus startup | keel CPU (s) | node CPU (s) | CPU keel/node |"
echo "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
k_empty=""; n_empty=""
for p in "${PROGRAMS[@]}"; do
  [[ -n ${FAILED[$p]:-} ]] && continue
  kw=$(median <<<"${WALLS[keel.$p]}"); nw=$(median <<<"${WALLS[node.$p]}")
  kc=$(median <<<"${CPUS[keel.$p]}"); nc=$(median <<<"${CPUS[node.$p]}")
  kr=$(range <<<"${WALLS[keel.$p]}"); nr=$(range <<<"${WALLS[node.$p]}")
  if [[ $p == empty ]]; then
    k_empty=$kw; n_empty=$nw; net="(startup)"
  elif [[ -n $k_empty ]]; then
    net=$(div "$(sub "$kw" "$k_empty")" "$(sub "$nw" "$n_empty")")
  else
    net="–"
  fi
  echo "| $p | ${WHAT[$p]} | $kw ($kr) | $nw ($nr) | $(div "$kw" "$nw") | $net | $kc | $nc | $(div "$kc" "$nc") |"
done
if ((${#FAILED[@]})); then
  echo
  echo "Dropped:"
  for p in "${PROGRAMS[@]}"; do
    [[ -n ${FAILED[$p]:-} ]] && echo "- \`$p\`: ${FAILED[$p]}"
  done
fi
echo
echo "Wall: median (min–max). CPU: median user+sys of the whole process, all threads (both engines compile on background threads);"
echo "on a shared machine it is less disturbed by other load than wall time."
echo "\"minus startup\" = (program − empty) of keel over the same of node, the ratio of the work beyond starting up."

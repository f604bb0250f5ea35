# Sourced by bench/wasi_vs_node.sh and bench/wasi_peers.sh: the WASI
# programs of bench/wasi, how to build them and their input. Needs ROOT
# (the clone), WORK (a scratch directory) and die/log from the caller;
# the timing helpers below also need cmd and REFERENCE.

# name | what it stresses | guest arguments (after --) | needs the data dir
PROGRAMS=(empty fib sha256sum sort nbody wordcount)
declare -A WHAT=(
  [empty]="startup only: main returns 0"
  [fib]="recursive calls: fib(40)"
  [sha256sum]="32-bit integer ops: SHA-256 of 64 MiB"
  [sort]="indirect calls, memory: qsort of 1M ints"
  [nbody]="f64 arithmetic: 5 bodies, 10M steps"
  [wordcount]="fd_read, hashing, malloc: 20 MiB of text"
)
declare -A ARGS=([wordcount]="/data/words.txt")
declare -A DATA=([wordcount]=1)

# Compiles bench/wasi/*.c into $WORK/wasm and writes wordcount's input to
# $WORK/data/words.txt.
build_wasi_programs() {
  command -v clang >/dev/null || die "clang not found (apt-get install clang lld wasi-libc libclang-rt-dev-wasm32 or scripts/setup)"
  mkdir -p "$WORK/wasm" "$WORK/data"
  log "compiling bench/wasi/*.c ..."
  local p
  for p in "${PROGRAMS[@]}"; do
    clang --target=wasm32-wasi -O2 -s "$ROOT/bench/wasi/$p.c" -o "$WORK/wasm/$p.wasm" -lm ||
      die "clang failed on bench/wasi/$p.c"
  done
  log "generating wordcount input ..."
  # A Zipf-like stream over 60000 made-up words with some capitals and
  # punctuation, 72-column lines, ~20 MiB. Deterministic for a given awk.
  awk 'BEGIN {
    srand(42)
    ns = split("ka lo mi ne ru sa ti vo ba de fi gu ho ja ke la mo nu pe qui re si to u ve wa xe yo za th an er in", S, " ")
    V = 60000
    for (i = 1; i <= V; i++) { w = ""; n = 1 + int(rand() * 4); for (j = 0; j < n; j++) w = w S[1 + int(rand() * ns)]; W[i] = w }
    target = 20 * 1024 * 1024; size = 0; line = ""
    while (size < target) {
      k = int(V ^ rand()); if (k < 1) k = 1
      w = W[k]; if (rand() < 0.05) w = toupper(substr(w, 1, 1)) substr(w, 2)
      r = rand(); line = line w (r < 0.06 ? ". " : r < 0.1 ? ", " : " ")
      if (length(line) > 72) { print line; size += length(line) + 1; line = "" }
    }
  }' >"$WORK/data/words.txt"
}

median() { tr ' ' '\n' | awk 'NF' | sort -g | awk '{ v[NR] = $1 } END { if (NR == 0) { print "nan"; exit } if (NR % 2) printf "%.3f\n", v[(NR + 1) / 2]; else printf "%.3f\n", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
range() { tr ' ' '\n' | awk 'NF' | sort -g | awk 'NR == 1 { lo = $1 } { hi = $1 } END { printf "%.2f–%.2f", lo, hi }'; }
div() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0 && a > 0) printf "%.2f", a / b; else print "–" }'; }
sub() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", a - b }'; }

# Timing runs, for callers that define `cmd RUNTIME NAME` (sets the array
# CMD to the command that runs program NAME on RUNTIME) and REFERENCE (the
# runtime whose output the others must print).

# run_one RUNTIME NAME: run once; sets RC, WALL, CPU; stdout in $WORK/out/RUNTIME.NAME.
run_one() {
  local rt=$1 p=$2 TIMEFORMAT='%3R %3U %3S' wall user sys
  cmd "$rt" "$p"
  set +e
  { time "${CMD[@]}" >"$WORK/out/$rt.$p" 2>"$WORK/out/$rt.$p.err" </dev/null; } 2>"$WORK/out/time"
  RC=$?
  set -e
  read -r wall user sys <"$WORK/out/time"
  WALL=$wall
  CPU=$(awk -v u="$user" -v s="$sys" 'BEGIN { printf "%.3f", u + s }')
}

declare -A FAILED=() WALLS=() CPUS=()
fail() {  # fail NAME MESSAGE: drop a program from the tables
  FAILED[$1]=$2
  log "  DROPPED $1: $2"
}
check_run() {  # check_run RUNTIME NAME: after run_one, compare with the reference
  local rt=$1 p=$2
  if ((RC != 0)); then
    fail "$p" "$rt exited with $RC: $(head -c 300 "$WORK/out/$rt.$p.err" | tr '\n' ' ')"
    return 1
  fi
  if ! cmp -s "$WORK/out/$rt.$p" "$WORK/out/ref.$p"; then
    fail "$p" "$rt's stdout differs from $REFERENCE's: wanted \"$(head -c 120 "$WORK/out/ref.$p" | tr '\n' ' ')\", got \"$(head -c 120 "$WORK/out/$rt.$p" | tr '\n' ' ')\""
    return 1
  fi
}

# record_references RUNTIME...: a warm-up run of every program, first on
# REFERENCE (its output becomes the one to match), then on each other
# runtime, whose output must match; a program that fails anywhere is dropped.
record_references() {
  local p rt
  log "warm-up and reference outputs ..."
  for p in "${PROGRAMS[@]}"; do
    run_one "$REFERENCE" "$p"
    if ((RC != 0)); then
      fail "$p" "$REFERENCE exited with $RC: $(head -c 300 "$WORK/out/$REFERENCE.$p.err" | tr '\n' ' ')"
      continue
    fi
    cp "$WORK/out/$REFERENCE.$p" "$WORK/out/ref.$p"
    for rt in "$@"; do
      [[ $rt == "$REFERENCE" ]] && continue
      run_one "$rt" "$p"
      check_run "$rt" "$p" || continue 2
    done
  done
}

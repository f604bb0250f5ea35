#!/usr/bin/env bash
# Runs the official WASI preview1 test suite (WebAssembly/wasi-testsuite:
# prebuilt C, Rust and AssemblyScript tests, each with a .json of expected
# args, env, preopen, exit code and output) against `keel run`, with the
# suite's own Python runner and keel's adapter (keel_adapter.py here).
#
#   tests/wasi/testsuite/run.sh [BUILD_DIR]     (default: build)
#
# keel does not carry the suite, and no package registry publishes it, so
# it must already be on this machine, as either
#   KEEL_WASI_TESTSUITE=PATH  a checkout of the suite's prod/testsuite-base
#                             branch (the one with the prebuilt tests), or a
#                             git directory that has that branch
#                             (KEEL_WASI_TESTSUITE_REF, default
#                             prod/testsuite-base);
#   or, when that is unset, the git directory of a developer's copy at
#   /work/.mirror/WebAssembly+wasi-testsuite/repo.
# Without one it says so loudly and exits 0 (77 with
# KEEL_REQUIRE_WASI_TESTSUITE=1). The suite is copied into
# BUILD_DIR/wasi-testsuite afresh on each run, since its tests write into
# their own directories.
#
# The runner needs Python >= 3.12 and colorama: a venv in
# BUILD_DIR/wasi-testsuite/venv gets colorama from PyPI.
# Runs once per engine of the build (`keel --version` names them), each
# ending with "wasi-testsuite on ENGINE: N passed, M failed, K skipped";
# exit 1 if any failed.
set -euo pipefail
cd "$(dirname "$0")/../../.."

build=$(realpath "${1:-build}")
keel="$build/src/cli/keel"
work="$build/wasi-testsuite"
adapter="$PWD/tests/wasi/testsuite/keel_adapter.py"
ref=${KEEL_WASI_TESTSUITE_REF:-prod/testsuite-base}
source=${KEEL_WASI_TESTSUITE:-/work/.mirror/WebAssembly+wasi-testsuite/repo}
# The preview1 suites; the branch also has preview3 ones keel does not run.
suites=(tests/assemblyscript/testsuite/wasm32-wasip1 tests/c/testsuite/wasm32-wasip1
        tests/rust/testsuite/wasm32-wasip1)

skip() {
  printf '\n!!!! wasi-testsuite SKIPPED: %s\n' "$1" >&2
  printf '!!!! Set KEEL_WASI_TESTSUITE to a checkout of its %s branch.\n\n' "$ref" >&2
  [ "${KEEL_REQUIRE_WASI_TESTSUITE:-0}" = 1 ] && exit 77
  exit 0
}
die() {
  echo "wasi-testsuite: $1" >&2
  exit 1
}

[ -x "$keel" ] || die "no keel binary at $keel (build first)"

# Lays the suite's runner and preview1 tests out in $work/suite.
extract() {
  rm -rf "$work/suite"
  mkdir -p "$work/suite"
  if [ -d "$source/test-runner" ] && [ -d "$source/tests" ]; then
    for part in test-runner "${suites[@]}"; do
      [ -d "$source/$part" ] || die "$source has no $part (not the $ref branch?)"
      mkdir -p "$work/suite/$(dirname "$part")"
      cp -a "$source/$part" "$work/suite/$part"
    done
  elif git --git-dir="$source" rev-parse --verify -q "$ref^{commit}" >/dev/null 2>&1; then
    git --git-dir="$source" archive "$ref" test-runner "${suites[@]}" | tar -x -C "$work/suite"
  else
    return 1
  fi
}

# A Python >= 3.12 (the runner needs it), from PATH or pyenv.
find_python() {
  local candidates=(python3.13 python3.12 python3)
  candidates+=("${PYENV_ROOT:-${HOME:-/root}/.pyenv}"/versions/3.1[2-9]*/bin/python3)
  for p in "${candidates[@]}"; do
    if "$p" -c 'import sys; sys.exit(sys.version_info < (3, 12))' >/dev/null 2>&1; then
      command -v "$p" || echo "$p"
      return 0
    fi
  done
  return 1
}

[ -e "$source" ] || skip "no suite at $source"
mkdir -p "$work"
extract || skip "$source is neither a checkout of the suite nor a git directory with $ref"
commit=$(git --git-dir="$source" rev-parse -q "$ref" 2>/dev/null || echo "checkout")

python=$(find_python) || die "the runner needs Python >= 3.12; none found on PATH or in pyenv"
venv="$work/venv"
if ! "$venv/bin/python" -c 'import colorama' >/dev/null 2>&1; then
  rm -rf "$venv"
  "$python" -m venv "$venv"
  "$venv/bin/pip" install -q colorama==0.4.6 || die "could not install colorama into $venv"
fi

# Runs the suite on one engine, from a fresh copy; prints its tally and
# fails if any test failed or was skipped.
run_suite() {
  local engine=$1 status=0
  extract || die "could not copy the suite again"
  echo "wasi-testsuite on $engine: $ref ($commit), runner on $("$venv/bin/python" --version)"
  (cd "$work/suite" && KEEL="$keel" KEEL_ENGINE="$engine" "$venv/bin/python" \
    test-runner/wasi_test_runner.py --disable-colors -r "$adapter" -t "${suites[@]}" \
    --json-output-location "$work/results-$engine.json") || status=$?
  [ -f "$work/results-$engine.json" ] || die "the runner wrote no results on $engine (exit $status)"
  "$venv/bin/python" - "$work/results-$engine.json" "$engine" <<'EOF'
import json, sys
results = json.load(open(sys.argv[1]))["results"]
count = lambda key: sum(suite[key] for suite in results)
failed = count("failed") + count("xpassed")
skipped = count("skipped")
print(f"wasi-testsuite on {sys.argv[2]}: {count('passed')} passed, {failed} failed, {skipped} skipped")
sys.exit(1 if failed or skipped or count("passed") == 0 else 0)
EOF
}

# Every engine of this build: "keel 0.1.0 (engines: spidermonkey, wasmtime)".
engines=$("$keel" --version | sed -n 's/.*(engines: \(.*\))/\1/p' | tr -d ,)
[ -n "$engines" ] || die "keel --version names no engines"
failed=0
for engine in $engines; do
  run_suite "$engine" || failed=1
done
exit $failed

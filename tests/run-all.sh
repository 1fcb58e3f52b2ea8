#!/usr/bin/env bash
# The whole test suite, from clean build directories. The README's second
# Quick start command and what CI runs (.ci/run). Assumes the Debian packages
# in packaging/debian-packages.txt are installed.
#
#   tests/run-all.sh            everything
#   ATTN_QUICK=1 tests/run-all.sh   only the gcc and clang builds + ctest
#
# Ends with a line "N passed, N failed" counting the stages.
set -u
cd "$(dirname "$0")/.."
root=$(pwd)
out=${ATTN_TEST_OUT:-$root/_test}
rm -rf "$out"
mkdir -p "$out"
jobs=$(nproc 2>/dev/null || echo 2)
passed=0
failed=0
failures=()

stage() { # stage NAME COMMAND...: run, log to _test/NAME.log, count
  local name=$1
  shift
  local t0=$SECONDS
  printf '=== %-28s ' "$name"
  if "$@" >"$out/$name.log" 2>&1; then
    passed=$((passed + 1))
    printf 'ok   (%ds)\n' $((SECONDS - t0))
  else
    failed=$((failed + 1))
    failures+=("$name")
    printf 'FAIL (%ds), last lines of %s:\n' $((SECONDS - t0)) "$out/$name.log"
    tail -n 40 "$out/$name.log" | sed 's/^/    /'
  fi
}

build_and_test() { # build_and_test DIR CC [cmake args...]; $ctest_args filters tests
  local dir=$1 cc=$2
  shift 2
  # shellcheck disable=SC2086
  CC=$cc cmake -S "$root" -B "$dir" -DCMAKE_BUILD_TYPE=Release -DATTN_WERROR=ON "$@" &&
    cmake --build "$dir" -j"$jobs" &&
    ctest --test-dir "$dir" --output-on-failure -j"$jobs" ${ctest_args:-}
}

# The .deb install test (root + ATTN_TEST_DEB=1, set by .ci/run) runs once, in the gcc stage.
stage gcc-build-ctest build_and_test "$out/gcc" gcc
deb_flag=${ATTN_TEST_DEB:-}
unset ATTN_TEST_DEB
# The bindings, packaging and docs tests do not depend on the C compiler: once is enough.
ctest_args="-LE bindings|packaging|docs" stage clang-build-ctest build_and_test "$out/clang" clang
[ -n "$deb_flag" ] && export ATTN_TEST_DEB=$deb_flag

if [ -z "${ATTN_QUICK:-}" ]; then
  # Further suites: each is a script that exits non-zero on failure. (Bindings,
  # packaging, docs and the PyTorch oracles are ctest tests, run above.)
  for s in sanitize valgrind tsan fuzz abi coverage pip; do
    [ -x "tools/ci/$s.sh" ] && stage "$s" "tools/ci/$s.sh"
  done
fi

echo
for log in "$out"/gcc-build-ctest.log "$out"/clang-build-ctest.log; do
  [ -f "$log" ] && printf '%s: %s\n' "$(basename "$log" .log)" "$(grep -E 'tests passed' "$log" | tail -n 1)"
done
[ "$failed" -gt 0 ] && echo "failed stages: ${failures[*]} (logs in $out)"
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]

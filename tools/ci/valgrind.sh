#!/bin/sh
# Every unit test executable (ctest label "unit") under valgrind memcheck:
# any invalid access, use of uninitialised memory or definite/possible leak
# fails. gcc, -O2 -g. Runs $ATTN_CI_JOBS tests at a time, each with its ctest
# environment, and with ATTN_TEST_QUICK=1 (tests that honour it run fewer
# steps and shorter sequences: memcheck checks the code paths, not the sizes).
# Valgrind's virtual CPU has no AVX-512 or AMX, so the ctest variants that
# only lower the ISA to AVX2 or turn the AVX-512 kernels off (ATTN_CPU=avx2,
# ATTN_TILE=avx512, ATTN_TILE=blas) would repeat the default run word for
# word: they are left out (ATTN_TILE=blas alone took 15 minutes of test time).
# The longest tests start first, so the last minutes are not one test alone.
#   usage: tools/ci/valgrind.sh [name-regex]      (default: every unit test)
. "$(dirname "$0")/lib.sh"

command -v valgrind >/dev/null || ci_die "valgrind not installed (apt-get install valgrind)"
ci_build valgrind -DCMAKE_C_COMPILER=gcc -DCMAKE_BUILD_TYPE=RelWithDebInfo
LOGDIR=$BUILD/valgrind-logs
rm -rf "$LOGDIR"
mkdir -p "$LOGDIR"
FILTER=${1:-.}

/usr/bin/python3 tools/ci/list_tests.py "$BUILD" unit | grep -E "$FILTER" |
  grep -vE '(ATTN_CPU=avx2|ATTN_TILE=(avx512|blas))' >"$LOGDIR/all.tsv" || true
LONG='/test_(backward|kvcache|exact|serving|kvquant)\b'
{ grep -E "$LONG" "$LOGDIR/all.tsv"; grep -vE "$LONG" "$LOGDIR/all.tsv"; } >"$LOGDIR/tests.tsv" || true
[ -s "$LOGDIR/tests.tsv" ] || ci_die "no unit tests found in $BUILD"
ci_log "$(wc -l <"$LOGDIR/tests.tsv") test executables, $JOBS at a time"

# One test: cd to its working directory, run under memcheck, keep the log.
cat >"$LOGDIR/run1.sh" <<'RUN1'
#!/bin/sh
line=$1 logdir=$2 supp=$3
wd=$(printf '%s' "$line" | cut -f1)
envw=$(printf '%s' "$line" | cut -f2)
[ "$envw" = "-" ] && envw=
cmd=$(printf '%s' "$line" | cut -f3-)
name=$(basename "$(printf '%s' "$cmd" | cut -f1)")
# Variants of one executable get their own log: name.ATTN_CPU=generic.log.
tag=$(printf '%s' "$envw" | tr ' ' '\n' | grep -E '^ATTN_(CPU|TILE)=' | tr '\n' '.' || true)
name=$name${tag:+.${tag%.}}
log=$logdir/$name.log
t0=$(date +%s)
# Test command lines have no spaces inside arguments (cmocka executables).
# shellcheck disable=SC2086
cd "$wd" && env CMOCKA_MESSAGE_OUTPUT=stdout ATTN_TEST_QUICK=1 $envw valgrind -q --error-exitcode=99 --leak-check=full \
  --show-leak-kinds=definite,possible --errors-for-leak-kinds=definite,possible \
  --suppressions="$supp" --gen-suppressions=all --num-callers=30 \
  $(printf '%s' "$cmd" | tr '\t' ' ') >"$log" 2>&1
rc=$?
if [ $rc -eq 0 ]; then
  echo "   ok   $name ($(($(date +%s) - t0)) s)"
else
  echo "   FAIL $name (exit $rc, log $log)"
  tail -n 80 "$log"
  exit 1
fi
RUN1
chmod +x "$LOGDIR/run1.sh"

status=0
tr '\n' '\0' <"$LOGDIR/tests.tsv" |
  xargs -0 -P "$JOBS" -I{} "$LOGDIR/run1.sh" {} "$LOGDIR" "$ATTN_ROOT/tools/ci/valgrind.supp" || status=1
[ $status -eq 0 ] || ci_die "memcheck reported errors (logs in $LOGDIR)"
ci_log "OK in $(ci_elapsed) s"

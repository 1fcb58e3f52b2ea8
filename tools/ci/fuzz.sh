#!/bin/sh
# Build the libFuzzer targets (tests/fuzz/fuzz_*.c; clang, ASan+UBSan,
# -DATTN_FUZZ=ON) and fuzz each for SECONDS (default 60), $ATTN_CI_JOBS
# targets at a time, starting from the committed seeds in
# tests/fuzz/corpus/<name>/ (never written to: new inputs go to the build
# tree). A crash, leak, sanitizer report or broken invariant fails the script;
# the input is saved under $BUILD/fuzz-artifacts/ and its path printed.
#   usage: tools/ci/fuzz.sh [SECONDS] [target-name-regex]
. "$(dirname "$0")/lib.sh"

SECS=${1:-60}
FILTER=${2:-.}
ci_build fuzz -DCMAKE_C_COMPILER=clang -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DATTN_SANITIZE=address,undefined -DATTN_FUZZ=ON
WORK=$BUILD/fuzz-work
ART=$BUILD/fuzz-artifacts
mkdir -p "$WORK" "$ART"
TARGETS=$(find "$BUILD" -type f -name 'fuzz_*' -perm -u+x | sort | grep -E "$FILTER" || true)
[ -n "$TARGETS" ] || ci_die "no fuzz targets built"
ci_log "$(echo "$TARGETS" | wc -l) targets, ${SECS} s each, $JOBS at a time"

cat >"$WORK/run1.sh" <<'RUN1'
#!/bin/sh
exe=$1 secs=$2 work=$3 art=$4 root=$5
name=$(basename "$exe")
short=${name#fuzz_}
seeds=$root/tests/fuzz/corpus/$short
dict=$root/tests/fuzz/$short.dict
mkdir -p "$work/$name"
set -- -max_total_time="$secs" -timeout=25 -rss_limit_mb=3072 -print_final_stats=1 \
  -artifact_prefix="$art/$name-"
[ -f "$dict" ] && set -- "$@" -dict="$dict"
set -- "$@" "$work/$name"
[ -d "$seeds" ] && set -- "$@" "$seeds"
log=$work/$name.log
ASAN_OPTIONS=allocator_may_return_null=1:detect_leaks=1:abort_on_error=0 \
UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 "$exe" "$@" >"$log" 2>&1
rc=$?
runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
if [ $rc -eq 0 ]; then
  echo "   ok   $name: ${runs:-?} executions, 0 crashes"
else
  echo "   FAIL $name (exit $rc), log $log"
  grep -E 'ERROR|runtime error|invariant|SUMMARY|Test unit written|^out|^lse|^weights' "$log" | head -n 30
  exit 1
fi
RUN1
chmod +x "$WORK/run1.sh"

status=0
echo "$TARGETS" | tr '\n' '\0' |
  xargs -0 -P "$JOBS" -I{} "$WORK/run1.sh" {} "$SECS" "$WORK" "$ART" "$ATTN_ROOT" || status=1
[ $status -eq 0 ] || ci_die "a fuzz target failed (inputs in $ART)"
ci_log "OK in $(ci_elapsed) s"

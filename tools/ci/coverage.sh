#!/bin/sh
# Line coverage of src/ by the unit and MPI tests (gcc --coverage, -O0), measured with
# gcovr: prints the per-file table and the summary, and fails below
# $ATTN_COVERAGE_MIN percent of src/ lines (default 90).
# ATTN_CPU=avx2 and =generic runs are added, so every vector-math path counts.
#   usage: tools/ci/coverage.sh
. "$(dirname "$0")/lib.sh"

MIN=${ATTN_COVERAGE_MIN:-90}
command -v gcovr >/dev/null || ci_die "gcovr not installed (apt-get install gcovr)"
# Atomic counters: the tests run threads, and racy counters make gcov print
# nonsense (negative percentages) that gcovr refuses to parse.
ci_build coverage -DCMAKE_C_COMPILER=gcc -DCMAKE_BUILD_TYPE=Debug -DATTN_COVERAGE=ON \
  -DCMAKE_C_FLAGS=-fprofile-update=atomic
find "$BUILD" -name '*.gcda' -delete
# The MPI tests (label "mpi", under mpirun) count too: src/mpi/ is part of
# src/. Every rank adds its counts to the same .gcda files (gcov locks them).
ci_log "ctest (unit, mpi)"
ctest --test-dir "$BUILD" -L 'unit|mpi' -j"$JOBS" --output-on-failure >"$BUILD/ci-ctest.log" 2>&1 || {
  tail -n 40 "$BUILD/ci-ctest.log"
  ci_die "tests failed in the coverage build"
}
# The dispatcher picks one vector ISA per machine; the lower ones are what
# other machines run, so exercise them as well ($ATTN_CPU can only lower it).
for isa in avx2 generic; do
  ATTN_CPU=$isa ctest --test-dir "$BUILD" -L unit -j"$JOBS" -R '^test_(exact|numerics)$' \
    >>"$BUILD/ci-ctest.log" 2>&1 || ci_die "tests failed with ATTN_CPU=$isa"
done
ci_log "gcovr (src/)"
gcovr --root "$ATTN_ROOT" --object-directory "$BUILD" --filter "$ATTN_ROOT/src/" \
  --print-summary --fail-under-line "$MIN" ||
  ci_die "src/ line coverage below ${MIN}% (table above)"
ci_log "OK in $(ci_elapsed) s"

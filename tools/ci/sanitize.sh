#!/bin/sh
# The whole ctest suite built with clang under AddressSanitizer +
# UndefinedBehaviorSanitizer (Debug, -fno-sanitize-recover: the first report
# fails the test). Leak checking (LeakSanitizer) is on.
#   usage: tools/ci/sanitize.sh [extra ctest args, e.g. -R test_exact]
. "$(dirname "$0")/lib.sh"

ci_build sanitize -DCMAKE_C_COMPILER=clang -DCMAKE_BUILD_TYPE=Debug \
  -DATTN_SANITIZE=address,undefined
export ASAN_OPTIONS=detect_leaks=1:abort_on_error=0:strict_string_checks=1:detect_stack_use_after_return=1:check_initialization_order=1:allocator_may_return_null=1
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
ci_log "ctest (ASan+UBSan)"
if [ $# -gt 0 ]; then
  ctest --test-dir "$BUILD" --output-on-failure -j"$JOBS" "$@" || ci_die "tests failed under ASan/UBSan"
else
  # The lowered-ISA variants (test_kvquant_avx2, ..._generic, ...) walk
  # other code paths with the same cases: ATTN_TEST_QUICK runs fewer steps
  # of them, which the paths do not need (test_kvquant's took 200 s each in
  # a Debug ASan build; the default-ISA run keeps every step).
  ctest --test-dir "$BUILD" --output-on-failure -j"$JOBS" -E '_(avx2|generic)$' ||
    ci_die "tests failed under ASan/UBSan"
  ATTN_TEST_QUICK=1 ctest --test-dir "$BUILD" --output-on-failure -j"$JOBS" -R '_(avx2|generic)$' ||
    ci_die "tests failed under ASan/UBSan (lowered ISA)"
fi
ci_log "OK in $(ci_elapsed) s"

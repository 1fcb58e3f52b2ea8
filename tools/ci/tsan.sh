#!/bin/sh
# ThreadSanitizer (clang, -DATTN_SANITIZE=thread) over every unit test: they
# all run the context's pool, and test_threads runs 8 concurrent callers, a
# plan handed between threads and fork(). Any report fails (halt_on_error).
#   usage: tools/ci/tsan.sh [ctest name regex, default: all unit tests]
. "$(dirname "$0")/lib.sh"

ci_build tsan -DCMAKE_C_COMPILER=clang -DCMAKE_BUILD_TYPE=RelWithDebInfo -DATTN_SANITIZE=thread
# die_after_fork=0: the fork test's child restarts the context's threads,
# which TSan supports but refuses by default after a multi-threaded fork.
export TSAN_OPTIONS="suppressions=$ATTN_ROOT/tools/ci/tsan.supp:halt_on_error=1:second_deadlock_stack=1:die_after_fork=0:history_size=4${ATTN_TSAN_EXTRA:+:$ATTN_TSAN_EXTRA}"
ci_log "ctest under TSan"
ctest --test-dir "$BUILD" --output-on-failure -j"$JOBS" -L unit -R "${1:-.}" ||
  ci_die "ThreadSanitizer reported a problem or a test failed"
ci_log "OK in $(ci_elapsed) s"

# Shared by the tools/ci/*.sh scripts (sourced, not run).
#   ATTN_CI_JOBS        parallel build/test jobs (default 2)
#   ATTN_CI_BUILD_ROOT  where build trees go (default build-ci/ in the repo)
# Every script cds to the repository root, so it can be run from anywhere.
set -eu

ATTN_ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ATTN_ROOT"
JOBS=${ATTN_CI_JOBS:-2}
BUILD_ROOT=${ATTN_CI_BUILD_ROOT:-$ATTN_ROOT/build-ci}

ci_log() { printf '== %s: %s\n' "$(basename "$0" .sh)" "$*"; }
ci_die() { printf '== %s: FAILED: %s\n' "$(basename "$0" .sh)" "$*" >&2; exit 1; }

# ci_build NAME [cmake -D options...]: configure and build $BUILD_ROOT/NAME
# (warnings are errors) and set $BUILD to it. The build log is kept there.
ci_build() {
  name=$1
  shift
  BUILD=$BUILD_ROOT/$name
  ci_log "configure $BUILD $*"
  cmake -S "$ATTN_ROOT" -B "$BUILD" -DATTN_BUILD_BENCH=OFF -DATTN_WERROR=ON "$@" >/dev/null
  ci_log "build"
  cmake --build "$BUILD" -j"$JOBS" >"$BUILD/ci-build.log" 2>&1 || {
    tail -n 60 "$BUILD/ci-build.log" >&2
    ci_die "build failed (full log: $BUILD/ci-build.log)"
  }
}

# Seconds since the script started, for the timing line each script prints.
CI_T0=$(date +%s)
ci_elapsed() { echo $(($(date +%s) - CI_T0)); }

#!/bin/sh
# attn bench against the real attn-bench of this build (one small point), so
# the driver and the benchmark's --list/--json output stay in step.
# Usage: bench_real_test.sh /path/to/attn /path/to/attn-bench WORKDIR
set -u
ATTN=$1
BENCH=$2
WORK=$3
rm -rf "$WORK" && mkdir -p "$WORK" && cd "$WORK" || exit 1
fail() { echo "FAIL: $*"; exit 1; }
"$ATTN" --threads 1 bench --bench "$BENCH" --case sdpa --causal --S 128 --reps 5 --out res >out.txt 2>&1
rc=$?
cat out.txt
[ "$rc" -eq 0 ] || fail "attn bench exited $rc"
grep -Eq '^sdpa,true,f32,[0-9]+,[0-9]+,[0-9]+,128,128,[0-9]+,1,[0-9.e+-]+,[0-9.e+-]+' res/bench.csv ||
  fail "no causal sdpa S=128 row from the real attn-bench: $(cat res/bench.csv)"
echo "real bench test passed"

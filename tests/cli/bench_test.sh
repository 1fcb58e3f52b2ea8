#!/bin/sh
# attn bench driven against a stand-in attn-bench (fake_attn_bench.sh): every
# sweep point runs, unbuilt cases are listed as skipped, CSV and JSON hold
# one record per point, plots are PNGs when gnuplot is installed (else the
# run says they were skipped), and a crashing case makes the run fail.
# Usage: bench_test.sh /path/to/attn /path/to/fake_attn_bench.sh WORKDIR
set -u
ATTN=$1
FAKE=$2
WORK=$3
rm -rf "$WORK" && mkdir -p "$WORK" && cd "$WORK" || exit 1
fail() { echo "FAIL: $*"; exit 1; }

ATTN_BENCH=$FAKE FAKE_NOT_BUILT="swin linformer" FAKE_LOG=$WORK/calls.log \
  "$ATTN" --threads 2 bench --quick --out res >stdout.txt 2>stderr.txt
rc=$?
cat stdout.txt stderr.txt
[ "$rc" -eq 0 ] || fail "attn bench exited $rc"
# --quick: 9 cases x 3 sizes = 27 points; swin and linformer (6 points) are not built
grep -q "27 points (6 not in this attn-bench)" stderr.txt || fail "expected 27 points, 6 not built"
# one attn-bench run per (S, causal) group: 3 sizes x {plain, causal}
[ "$(grep -c . calls.log)" -eq 6 ] || fail "expected 6 grouped attn-bench runs, got $(cat calls.log)"
grep -q "^1024 false  sdpa window longformer bigbird linear_elu performer$" calls.log ||
  fail "group for S=1024 not as expected: $(cat calls.log)"
[ "$(grep -c . res/bench.csv)" -eq 22 ] || fail "CSV should have a header and 21 rows"
head -1 res/bench.csv | grep -q '^case,causal,dtype,B,H,Hkv,Sq,Sk,D,threads,ms,gflops,sgemm_gflops,frac_sgemm' ||
  fail "CSV header"
grep -q '^sdpa,true,f32,1,8,8,1024,1024,64,2,' res/bench.csv || fail "causal sdpa S=1024 row missing"
grep -q "skipped (not in this attn-bench / not built): swin, linformer" stdout.txt || fail "skipped cases not listed"
if [ -x /usr/bin/python3 ]; then
  /usr/bin/python3 -c "
import json, sys
a = json.load(open('res/bench.json'))
assert len(a) == 21, len(a)
assert all(r['case'] and r['Sq'] == r['Sk'] for r in a)
assert {r['case'] for r in a} == {'sdpa', 'window', 'longformer', 'bigbird', 'linear_elu', 'performer'}
" || fail "bench.json is not the expected JSON array"
fi
if command -v gnuplot >/dev/null 2>&1; then
  for p in time_vs_S.png frac_sgemm_vs_S.png; do
    [ "$(od -An -tx1 -N8 res/$p | tr -d ' \n')" = "89504e470d0a1a0a" ] || fail "res/$p is not a PNG"
  done
  grep -q "plots: res/time_vs_S.png" stdout.txt || fail "plot paths not printed"
fi
[ -f res/plots.gp ] && [ -f res/bench.dat ] || fail "plot data/script not kept"

# Without gnuplot on PATH (and no $GNUPLOT) the plots are skipped, with a note.
PATH=/nonexistent ATTN_BENCH=$FAKE "$ATTN" bench --case sdpa --S 128,256 --csv only.csv --json only.json \
  --plots noplots >stdout2.txt 2>&1
rc=$?
cat stdout2.txt
[ "$rc" -eq 0 ] || fail "bench without gnuplot exited $rc"
grep -q "gnuplot not found: plots skipped" stdout2.txt || fail "no 'plots skipped' note"
[ "$(grep -c . only.csv)" -eq 3 ] || fail "--csv path not honoured"
[ -f only.json ] || fail "--json path not honoured"

# A crashing or failing case is reported and the exit status is 1; the
# results before it are kept.
ATTN_BENCH=$FAKE "$ATTN" bench --case sdpa --case crash --S 64 --no-plots --out crash >stdout3.txt 2>&1
rc=$?
cat stdout3.txt
[ "$rc" -eq 1 ] || fail "a crashing case should give exit 1, got $rc"
grep -q "crash S=64 failed (killed by signal 11)" stdout3.txt || fail "the crash is not reported"
[ "$(grep -c . crash/bench.csv)" -eq 2 ] || fail "the sdpa result before the crash is lost"
ATTN_BENCH=$FAKE "$ATTN" bench --case broken --case window --S 64 --no-plots --out broken >stdout4.txt 2>&1
rc=$?
cat stdout4.txt
[ "$rc" -eq 1 ] || fail "a failing case should give exit 1, got $rc"
grep -q "broken S=64 failed (exit status 1): attn-bench: case broken failed" stdout4.txt ||
  fail "the failing case is not reported"
grep -q "^window,false" broken/bench.csv || fail "the case after the failing one is lost"
echo "bench test passed"

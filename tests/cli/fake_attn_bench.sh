#!/bin/sh
# Stand-in for attn-bench (its contract: ../shared/design.md "Benchmark
# contract") used to test `attn bench` without running real benchmarks:
# prints a human line and one JSON object per line for --case NAME --S N
# --json; cases named in FAKE_NOT_BUILT fail like an unbuilt variant;
# case "crash" dies from a signal. Time grows as S^2 so plots have a slope.
set -u
PATH=/usr/local/bin:/usr/bin:/bin  # the test may hide gnuplot from attn via PATH
export PATH
case_=sdpa S=1024 causal=false json=0 reps=5 threads=2
while [ $# -gt 0 ]; do
  case "$1" in
    --case) case_=$2; shift ;;
    --S) S=$2; shift ;;
    --reps) reps=$2; shift ;;
    --threads) threads=$2; shift ;;
    --causal) causal=true ;;
    --json) json=1 ;;
    --B|--H|--D|--dtype|--Hkv|--Sq|--Sk|--window|--features|--rank|--block) shift ;;
    *) echo "fake attn-bench: unknown flag $1" >&2; exit 2 ;;
  esac
  shift
done
[ "$json" -eq 1 ] || { echo "fake attn-bench: expected --json" >&2; exit 2; }
for nb in ${FAKE_NOT_BUILT:-}; do
  if [ "$nb" = "$case_" ]; then
    echo "attn-bench: $case_: variant: $case_ is not built yet" >&2
    exit 1
  fi
done
[ "$case_" = crash ] && kill -SEGV $$
ms=$(awk -v s="$S" 'BEGIN { printf "%.4f", 1e-5 * s * s / 64 }')
gf=$(awk -v s="$S" -v ms="$ms" 'BEGIN { printf "%.3f", 4 * 8 * s * s * 64 / (ms * 1e-3) / 1e9 }')
echo "sgemm peak 80.0 GFLOP/s (human-readable line, not JSON)"
echo "{\"case\":\"$case_\",\"causal\":$causal,\"dtype\":\"f32\",\"B\":1,\"H\":8,\"Hkv\":8,\"Sq\":$S,\"Sk\":$S,\"D\":64,\"threads\":$threads,\"ms\":$ms,\"gflops\":$gf,\"sgemm_gflops\":80.0,\"frac_sgemm\":0.5,\"gbps\":null,\"read_gbps\":12.5,\"frac_bw\":null,\"max_err\":null,\"mean_err\":null,\"peak_rss_mb\":42.0,\"extra\":{\"nested\":[1,2]}}"

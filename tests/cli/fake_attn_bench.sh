#!/bin/sh
# Stand-in for attn-bench (its contract: bench/README.md "The benchmark
# contract") used to test `attn bench` without running real benchmarks.
# --list prints the cases (all of the contract's, minus FAKE_NOT_BUILT);
# otherwise one JSON object per line for each --case at --S, after a human
# line. Case "crash" dies from a signal (after the cases before it printed);
# case "broken" fails like a case whose run fails. Time grows as S^2.
set -u
PATH=/usr/local/bin:/usr/bin:/bin  # the test may hide gnuplot from attn via PATH
export PATH
ALL="sdpa naive masked additive mha decode window swin longformer bigbird blocksparse linear_elu performer linformer varlen sdpa_bwd mha_bwd crash broken"
cases="" S=1024 causal=false json=0 reps=5 threads=2
while [ $# -gt 0 ]; do
  case "$1" in
    --list)
      for c in $ALL; do
        case " ${FAKE_NOT_BUILT:-} " in *" $c "*) ;; *) echo "$c         fake case" ;; esac
      done
      exit 0 ;;
    --case) cases="$cases $2"; shift ;;
    --S) S=$2; shift ;;
    --reps) reps=$2; shift ;;
    --threads) threads=$2; shift ;;
    --causal) causal=true ;;
    --mass|--sinks) ;;
    --json) json=1 ;;
    --B|--H|--D|--dtype|--Hkv|--Sq|--Sk|--window|--features|--rank|--block|--kv-storage|--seqs) shift ;;
    *) echo "fake attn-bench: unknown flag $1" >&2; exit 2 ;;
  esac
  shift
done
[ "$json" -eq 1 ] || { echo "fake attn-bench: expected --json" >&2; exit 2; }
echo "$S $causal $cases" >>"${FAKE_LOG:-/dev/null}"
rc=0
for c in $cases; do
  [ "$c" = crash ] && kill -SEGV $$
  if [ "$c" = broken ]; then
    echo "attn-bench: case broken failed" >&2
    rc=1
    continue
  fi
  ms=$(awk -v s="$S" 'BEGIN { printf "%.4f", 1e-5 * s * s / 64 }')
  gf=$(awk -v s="$S" -v ms="$ms" 'BEGIN { printf "%.3f", 4 * 8 * s * s * 64 / (ms * 1e-3) / 1e9 }')
  echo "# sgemm peak 80.0 GFLOP/s (a human line, not JSON)"
  echo "{\"case\":\"$c\",\"causal\":$causal,\"dtype\":\"f32\",\"B\":1,\"H\":8,\"Hkv\":8,\"Sq\":$S,\"Sk\":$S,\"D\":64,\"threads\":$threads,\"ms\":$ms,\"gflops\":$gf,\"sgemm_gflops\":80.0,\"frac_sgemm\":0.5,\"fma_gflops\":160.0,\"bf16_gflops\":320.0,\"frac_peak\":0.25,\"gbps\":null,\"read_gbps\":12.5,\"frac_bw\":null,\"max_err\":null,\"mean_err\":null,\"peak_rss_mb\":42.0,\"extra\":{\"nested\":[1,2]}}"
done
exit $rc

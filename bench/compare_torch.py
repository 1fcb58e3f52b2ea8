#!/usr/bin/python3
"""Time the same exact-attention shapes through PyTorch and libattn, print the ratio.

Informational, not a CI gate. PyTorch 1.13 (Debian's python3-torch) has no fused
CPU attention, so this times what its users run: softmax(Q Kᵀ·scale [+ causal
mask]) V with torch's own threads. libattn's numbers come from attn-bench (run
by this script, --json) in the same process tree, one after the other.

    bench/compare_torch.py [--attn-bench build/bench/attn-bench] [--threads 2]
"""
import argparse
import json
import math
import statistics
import subprocess
import sys
import time

try:
    import torch
except ImportError:
    print("compare_torch: python3-torch is not installed; nothing to compare", file=sys.stderr)
    sys.exit(0)

SHAPES = [  # (S, D, H, causal)
    (512, 64, 8, False), (1024, 64, 8, False), (2048, 64, 8, False), (4096, 64, 8, False),
    (2048, 128, 4, False), (4096, 64, 8, True),
]


def torch_ms(S, D, H, causal, reps):
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.rand(1, H, S, D, generator=g) * 2 - 1 for _ in range(3))
    mask = torch.full((S, S), float("-inf")).triu(1) if causal else None
    scale = 1.0 / math.sqrt(D)

    def run():
        s = (q @ k.transpose(-1, -2)) * scale
        if mask is not None:
            s = s + mask
        return torch.softmax(s, dim=-1) @ v

    with torch.inference_mode():
        run()
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            run()
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def attn_ms(bench, S, D, H, causal, threads, reps):
    cmd = [bench, "--case", "sdpa", "--S", str(S), "--D", str(D), "--H", str(H),
           "--threads", str(threads), "--reps", str(reps), "--json"]
    if causal:
        cmd.append("--causal")
    line = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
    return json.loads(line)["ms"]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--attn-bench", default="build/bench/attn-bench")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=5)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    print(f"# torch {torch.__version__}, {a.threads} threads; median of {a.reps} after a warm-up")
    print(f"{'S':>6} {'D':>4} {'H':>3} {'causal':>6} {'torch ms':>10} {'libattn ms':>11} {'speed-up':>9}")
    for S, D, H, causal in SHAPES:
        t = torch_ms(S, D, H, causal, a.reps)
        l = attn_ms(a.attn_bench, S, D, H, causal, a.threads, a.reps)
        print(f"{S:>6} {D:>4} {H:>3} {str(causal):>6} {t:>10.2f} {l:>11.2f} {t / l:>8.2f}x", flush=True)


if __name__ == "__main__":
    main()

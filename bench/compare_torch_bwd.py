#!/usr/bin/python3
"""Training step (forward + backward) of attention: libattn against PyTorch 1.13.

Two comparisons, each timed in one process tree on the same machine with the
same thread count (medians of --reps after a warm-up):

  sdpa  PyTorch autograd through naive attention (softmax(Q Kᵀ·scale [+ causal
        mask]) V, which builds S×S matrices) against attn-bench --case sdpa_bwd
        (its fwd_ms + ms: the forward with lse, then the backward).
  mha   nn.MultiheadAttention (forward, then backward of a fixed dy) against
        attn-bench --case mha_bwd (the layer's training step in C: fwd_ms + ms),
        E = H·D, self-attention, batch-first, f32; also, for information,
        attn.torch.MultiheadAttention (torch projections, libattn's attention)
        with the same parameters (attn_torch_ms).

    /usr/bin/python3 bench/compare_torch_bwd.py [--what sdpa|mha] [--S 4096] [--H 8]
        [--D 64] [--causal] [--threads 2] [--reps 5] [--json]
        [--attn-bench build/bench/attn-bench] [--lib build/libattn.so.0]

With --json the last line is one JSON object: {"what", "S", "H", "D", "causal",
"torch_ms", "attn_ms", "speedup"} (and "attn_torch_ms" for mha).
"""
import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time

try:
    import torch
except ImportError as e:
    print(f"SKIP: {e}")
    sys.exit(77)


def median_ms(fn, reps):
    fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def torch_sdpa_ms(S, D, H, causal, reps):
    g = torch.Generator().manual_seed(0)
    q, k, v = ((torch.rand(1, H, S, D, generator=g) * 2 - 1).requires_grad_() for _ in range(3))
    mask = torch.full((S, S), float("-inf")).triu(1) if causal else None
    dout = torch.rand(1, H, S, D, generator=g)

    def step():
        s = (q @ k.transpose(-1, -2)) * (1.0 / math.sqrt(D))
        if mask is not None:
            s = s + mask
        out = torch.softmax(s, dim=-1) @ v
        torch.autograd.grad(out, (q, k, v), dout)
    return median_ms(step, reps)


def attn_bench_ms(bench, case, S, D, H, causal, threads, reps):
    cmd = [bench, "--case", case, "--S", str(S), "--D", str(D), "--H", str(H),
           "--threads", str(threads), "--reps", str(reps), "--json"]
    if causal:
        cmd.append("--causal")
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    r = json.loads(out.strip().splitlines()[-1])
    return r["ms"] + r["fwd_ms"]


def mha_ms(S, H, D, causal, reps):
    import attn.torch as at
    E = H * D
    torch.manual_seed(0)
    ref = torch.nn.MultiheadAttention(E, H, batch_first=True)
    ours = at.MultiheadAttention(E, H, batch_first=True)
    ours.load_state_dict(ref.state_dict())
    x = torch.rand(1, S, E, generator=torch.Generator().manual_seed(1)).requires_grad_()
    mask = torch.ones(S, S, dtype=torch.bool).triu(1) if causal else None

    dy = torch.rand(1, S, E, generator=torch.Generator().manual_seed(2))

    def step(m):
        def run():
            out, _ = m(x, x, x, need_weights=False, attn_mask=mask)
            out.backward(dy)
        return run
    return median_ms(step(ref), reps), median_ms(step(ours), reps)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--what", choices=("sdpa", "mha"), default="sdpa")
    ap.add_argument("--S", type=int, default=None)
    ap.add_argument("--H", type=int, default=8)
    ap.add_argument("--D", type=int, default=64)
    ap.add_argument("--causal", action="store_true")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--attn-bench", default="build/bench/attn-bench")
    ap.add_argument("--lib", default="build/libattn.so.0")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    S = a.S or (4096 if a.what == "sdpa" else 2048)
    if a.what == "sdpa":
        t = torch_sdpa_ms(S, a.D, a.H, a.causal, a.reps)
        ours = attn_bench_ms(a.attn_bench, "sdpa_bwd", S, a.D, a.H, a.causal, a.threads, a.reps)
        extra = {}
    else:
        os.environ.setdefault("ATTN_LIBRARY", a.lib)
        os.environ.setdefault("ATTN_NUM_THREADS", str(a.threads))
        sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..",
                                        "bindings", "python"))
        t, ours_torch = mha_ms(S, a.H, a.D, a.causal, a.reps)
        ours = attn_bench_ms(a.attn_bench, "mha_bwd", S, a.D, a.H, a.causal, a.threads, a.reps)
        extra = {"attn_torch_ms": ours_torch}
    print(f"# {a.what} fwd+bwd S={S} H={a.H} D={a.D} causal={a.causal}, {a.threads} threads, "
          f"torch {torch.__version__}: torch {t:.1f} ms, libattn {ours:.1f} ms, {t / ours:.2f}x")
    if a.json:
        print(json.dumps({"what": a.what, "S": S, "H": a.H, "D": a.D, "causal": a.causal,
                          "torch_ms": t, "attn_ms": ours, "speedup": t / ours, **extra}))


if __name__ == "__main__":
    main()

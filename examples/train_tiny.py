#!/usr/bin/python3
"""Train a tiny Transformer with libattn's attention, beside PyTorch's own.

The task: sort a sequence of digits (input [B, L] tokens in 0..V−1, target the
same tokens in ascending order, predicted per position by a 2-layer encoder).
The same model is built twice from one seed — once with
torch.nn.MultiheadAttention, once with attn.torch.MultiheadAttention (the
same parameters, libattn's forward and backward for the attention core) —
and both are trained on the same batches with Adam. The script prints both
loss curves side by side and the time each run took, and exits non-zero
unless the curves agree (f32 rounding differs, so within a tolerance) and
the loss has fallen well below its start.

    PYTHONPATH=bindings/python ATTN_LIBRARY=build/libattn.so.0 \\
        /usr/bin/python3 examples/train_tiny.py [--steps 250] [--threads 2]
"""
import argparse
import math
import os
import sys
import time

if os.environ.get("ATTN_TEST_SKIP_SANITIZED") or "asan" in os.environ.get("LD_PRELOAD", ""):
    print("SKIP: a minute of training under a sanitizer runtime is not this example's test")
    sys.exit(77)
try:
    import torch
    import torch.nn as nn
except ImportError as e:
    print(f"SKIP: {e}")
    sys.exit(77)

import attn.torch as at  # noqa: E402


class Block(nn.Module):
    def __init__(self, E, H, mha_cls):
        super().__init__()
        self.attn = mha_cls(E, H, batch_first=True)
        self.ln1, self.ln2 = nn.LayerNorm(E), nn.LayerNorm(E)
        self.ff = nn.Sequential(nn.Linear(E, 4 * E), nn.GELU(), nn.Linear(4 * E, E))

    def forward(self, x):
        h = self.ln1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.ff(self.ln2(x))


class TinySorter(nn.Module):
    def __init__(self, V, L, E, H, layers, mha_cls):
        super().__init__()
        self.tok = nn.Embedding(V, E)
        self.pos = nn.Parameter(torch.randn(L, E) * 0.02)
        self.blocks = nn.ModuleList(Block(E, H, mha_cls) for _ in range(layers))
        self.head = nn.Linear(E, V)

    def forward(self, x):
        h = self.tok(x) + self.pos
        for b in self.blocks:
            h = b(h)
        return self.head(h)


def train(model, batches, lr):
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    losses = []
    t0 = time.perf_counter()
    for x, y in batches:
        logits = model(x)
        loss = nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses, time.perf_counter() - t0


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=250)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seq", type=int, default=32)
    ap.add_argument("--batch", type=int, default=32)
    a = ap.parse_args()
    os.environ.setdefault("ATTN_NUM_THREADS", str(a.threads))
    torch.set_num_threads(a.threads)
    V, L, E, H, layers = 10, a.seq, 64, 4, 2

    g = torch.Generator().manual_seed(0)
    batches = []
    for _ in range(a.steps):
        x = torch.randint(0, V, (a.batch, L), generator=g)
        batches.append((x, x.sort(dim=1).values))

    torch.manual_seed(0)
    ref = TinySorter(V, L, E, H, layers, nn.MultiheadAttention)
    ours = TinySorter(V, L, E, H, layers, at.MultiheadAttention)
    ours.load_state_dict(ref.state_dict())   # the same initial weights

    # Warm both paths once (thread pools, allocator), then train.
    for m in (ref, ours):
        m(batches[0][0]).sum().backward()
        m.zero_grad()
    loss_ref, t_ref = train(ref, batches, 2e-3)
    loss_our, t_our = train(ours, batches, 2e-3)

    print(f"# sort {L} digits, 2-layer Transformer E={E} H={H}, batch {a.batch}, "
          f"{a.steps} Adam steps, {a.threads} threads")
    print(f"{'step':>6} {'torch loss':>11} {'libattn loss':>13}")
    every = max(1, a.steps // 12)
    for s in list(range(0, a.steps, every)) + [a.steps - 1]:
        print(f"{s:>6} {loss_ref[s]:>11.4f} {loss_our[s]:>13.4f}")
    print(f"time: torch {t_ref:.2f} s, libattn {t_our:.2f} s ({t_ref / t_our:.2f}x)")

    # The curves agree: same start (same weights and batch), and a smoothed
    # difference small next to the loss (f32 rounding makes them drift apart
    # slowly, as two PyTorch runs on different BLAS would).
    def smooth(v, w=20):
        return [sum(v[max(0, i - w):i + 1]) / len(v[max(0, i - w):i + 1]) for i in range(len(v))]
    sr, so = smooth(loss_ref), smooth(loss_our)
    gap = max(abs(x - y) / max(x, 1e-3) for x, y in zip(sr, so))
    first_ok = abs(loss_ref[0] - loss_our[0]) <= 1e-4 * loss_ref[0]
    learned = sr[-1] < 0.5 * sr[0] and so[-1] < 0.5 * so[0]
    ok = first_ok and learned and gap <= 0.15 and all(map(math.isfinite, loss_our))
    print(f"first-step loss difference {abs(loss_ref[0] - loss_our[0]):.2e}, largest smoothed "
          f"relative gap {gap:.3f}, loss {sr[0]:.3f} -> {so[-1]:.3f}: {'ok' if ok else 'FAIL'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

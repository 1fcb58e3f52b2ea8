"""attn.mpi (the Python entry point, over mpi4py) under mpirun: each rank's
rows of ring and Ulysses attention equal a float64 numpy reference over the
whole sequence; a rank passing a different shape makes every rank raise.
Run: mpirun -np 2 /usr/bin/python3 tests/mpi/test_mpi_python.py (ctest:
mpi_python_np2)."""

import math
import os
import sys

import numpy as np
from mpi4py import MPI

sys.path.insert(0, sys.argv[1] if len(sys.argv) > 1 else
                os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "bindings", "python"))
import attn  # noqa: E402
import attn.mpi  # noqa: E402

comm = MPI.COMM_WORLD
failures = 0


def keep_mask(B, S, causal, key_len):
    """[B, 1, S, S]: which (query, key) pairs attend."""
    keep = np.ones((B, 1, S, S), dtype=bool)
    if causal:
        keep &= np.tril(np.ones((S, S), dtype=bool))[None, None]
    if key_len is not None:
        for b, n in enumerate(key_len):
            keep[b, :, :, n:] = False
    return keep


def reference(q, k, v, causal, key_len=None):
    B, H, S, D = q.shape
    g = H // k.shape[1]
    k, v = np.repeat(k, g, axis=1), np.repeat(v, g, axis=1)
    s = np.einsum("bhid,bhjd->bhij", q, k) / math.sqrt(D)
    s = np.where(keep_mask(B, S, causal, key_len), s, -np.inf)
    m = s.max(axis=-1, keepdims=True)
    p = np.exp(s - m)
    l = p.sum(axis=-1, keepdims=True)
    return np.einsum("bhij,bhjd->bhid", p / l, v), (m + np.log(l))[..., 0]


def reference_backward(q, k, v, dout, causal, key_len=None):
    """Gradients of the reference by hand (float64): P the weights,
    dS = P·(dP − Σ_j P·dP), dq = scale·dS·k, dk = scale·dSᵀ·q, dv = Pᵀ·dout,
    the K/V ones summed over each group of query heads."""
    B, H, S, D = q.shape
    Hkv = k.shape[1]
    g = H // Hkv
    kr, vr = np.repeat(k, g, axis=1), np.repeat(v, g, axis=1)
    scale = 1 / math.sqrt(D)
    s = np.einsum("bhid,bhjd->bhij", q, kr) * scale
    s = np.where(keep_mask(B, S, causal, key_len), s, -np.inf)
    p = np.exp(s - s.max(axis=-1, keepdims=True))
    p /= p.sum(axis=-1, keepdims=True)
    dp = np.einsum("bhid,bhjd->bhij", dout, vr)
    ds = p * (dp - (p * dp).sum(axis=-1, keepdims=True))
    dq = np.einsum("bhij,bhjd->bhid", ds, kr) * scale
    dk = np.einsum("bhij,bhid->bhjd", ds, q) * scale
    dv = np.einsum("bhij,bhid->bhjd", p, dout)
    return dq, dk.reshape(B, Hkv, g, S, D).sum(2), dv.reshape(B, Hkv, g, S, D).sum(2)


def check(name, cond, msg=""):
    global failures
    if not cond:
        failures += 1
        print("[rank %d] FAIL %s %s" % (comm.rank, name, msg), flush=True)
    elif comm.rank == 0:
        print("ok %s" % name, flush=True)


rng = np.random.default_rng(3)
B, H, Hkv, S, D = 2, 4, 2, 29, 8
q = rng.standard_normal((B, H, S, D))
k = rng.standard_normal((B, Hkv, S, D))
v = rng.standard_normal((B, Hkv, S, D))
for layout in ("contiguous", "zigzag"):
    rows = np.concatenate([np.arange(s, s + n) for s, n in attn.mpi.shard(layout, S, comm.size, comm.rank)])
    for mode in ("ring", "ulysses"):
        for causal in (False, True):
            kl = [S - 3, S]
            want, want_lse = reference(q, k, v, causal, kl)
            out, lse = attn.mpi.attention(comm, q[:, :, rows], k[:, :, rows], v[:, :, rows],
                                          mode=mode, layout=layout, causal=causal,
                                          key_lengths=kl, return_lse=True)
            err = np.abs(out - want[:, :, rows]).max()
            check("%s %s causal=%s" % (layout, mode, causal),
                  err < 1e-12 and np.abs(lse - want_lse[:, :, rows]).max() < 1e-12, "err %g" % err)

# the backward over the ring
dout = rng.standard_normal((B, H, S, D))
for layout in ("contiguous", "zigzag"):
    rows = np.concatenate([np.arange(s, s + n) for s, n in attn.mpi.shard(layout, S, comm.size, comm.rank)])
    for causal in (False, True):
        kl = [S - 3, S]
        parts = [np.ascontiguousarray(a[:, :, rows]) for a in (q, k, v, dout)]
        out, lse = attn.mpi.attention(comm, *parts[:3], mode="ring", layout=layout, causal=causal,
                                      key_lengths=kl, return_lse=True)
        dq, dk, dv = attn.mpi.attention_backward(comm, *parts[:3], out, lse, parts[3],
                                                 layout=layout, causal=causal, key_lengths=kl)
        want = reference_backward(q, k, v, dout, causal, kl)
        err = max(np.abs(got - w[:, :, rows]).max() for got, w in zip((dq, dk, dv), want))
        check("backward %s causal=%s" % (layout, causal), err < 1e-12, "err %g" % err)

# float32, the plan object, stats
q32, k32, v32 = (a[:, :, :S].astype(np.float32) for a in (q, k, v))
rows = np.concatenate([np.arange(s, s + n) for s, n in attn.mpi.shard("contiguous", S, comm.size, comm.rank)])
out = np.empty((B, H, len(rows), D), dtype=np.float32)
qs, ks, vs = (np.ascontiguousarray(a[:, :, rows]) for a in (q32, k32, v32))
with attn.mpi.Plan(comm, qs, ks, vs, out, mode="ring", causal=True) as plan:
    plan.execute(qs, ks, vs, out)
    st = plan.stats()
want, _ = reference(q32.astype(np.float64), k32.astype(np.float64), v32.astype(np.float64), True)
check("f32 plan", np.abs(out - want[:, :, rows]).max() < 2e-5 and st["mode"] == "ring"
      and st["ranks"] == comm.size and st["steps"] == comm.size, str(st))

# a rank with another head count: every rank raises
bad_q = qs if comm.rank != comm.size - 1 or comm.size == 1 else np.ascontiguousarray(
    np.concatenate([qs, qs], axis=1))
try:
    o = np.empty(bad_q.shape[:3] + (D,), dtype=np.float32)
    attn.mpi.attention(comm, bad_q, ks, vs, out=o, mode="ring")
    check("mismatch raises on every rank", comm.size == 1)
except attn.AttnError as e:
    check("mismatch raises on every rank", comm.size > 1 and e.status in (attn.Status.ERR_MISMATCH,
                                                                        attn.Status.ERR_SHAPE), str(e))

total = comm.allreduce(failures)
if comm.rank == 0:
    print("%s (%d failures over %d ranks)" % ("PASS" if total == 0 else "FAIL", total, comm.size))
sys.exit(1 if total else 0)

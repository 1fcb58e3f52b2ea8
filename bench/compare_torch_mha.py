#!/usr/bin/python3
"""Time nn.MultiheadAttention and libattn's attn_mha on the same shape, print the ratio.

Informational (issue 6's bench): E = H*D, self-attention, batch-first, f32,
need_weights=False, inference (no grad). Both run on the same machine in the
same process with the same thread count; medians of --reps runs after a warm-up.

    /usr/bin/python3 bench/compare_torch_mha.py --lib build/libattn.so \
        [--S 2048] [--H 8] [--D 64] [--B 1] [--threads 2] [--reps 5] [--causal]
"""
import argparse
import ctypes as C
import os
import statistics
import sys
import time

try:
    import numpy as np
    import torch
except ImportError as e:
    print(f"SKIP: {e}")
    sys.exit(77)

ap = argparse.ArgumentParser()
ap.add_argument("--lib", default="build/libattn.so")
ap.add_argument("--S", type=int, default=2048)
ap.add_argument("--H", type=int, default=8)
ap.add_argument("--D", type=int, default=64)
ap.add_argument("--B", type=int, default=1)
ap.add_argument("--threads", type=int, default=os.cpu_count())
ap.add_argument("--reps", type=int, default=5)
ap.add_argument("--causal", action="store_true")
ap.add_argument("--json", action="store_true", help="also print one JSON line")
a = ap.parse_args()
E, S, B, H = a.H * a.D, a.S, a.B, a.H
torch.set_num_threads(a.threads)


def median_ms(fn, reps):
    fn()
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        ts.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(ts)


# ---- torch
torch.manual_seed(0)
mha = torch.nn.MultiheadAttention(E, H, batch_first=True).eval()
x = torch.rand(B, S, E) * 2 - 1
mask = torch.triu(torch.full((S, S), float("-inf")), diagonal=1) if a.causal else None
with torch.no_grad():
    want = mha(x, x, x, attn_mask=mask, need_weights=False)[0]

    def run_torch():
        mha(x, x, x, attn_mask=mask, need_weights=False)
    t_torch = median_ms(run_torch, a.reps)

# ---- libattn (same weights)
lib = C.CDLL(a.lib)
P = C.c_void_p


class Config(C.Structure):
    _fields_ = [("struct_size", C.c_size_t), ("embed_dim", C.c_int64), ("num_heads", C.c_int64),
                ("num_kv_heads", C.c_int64), ("kdim", C.c_int64), ("vdim", C.c_int64),
                ("bias", C.c_int32), ("add_bias_kv", C.c_int32), ("add_zero_attn", C.c_int32),
                ("batch_first", C.c_int32), ("dtype", C.c_int)]


class Weights(C.Structure):
    _fields_ = [("struct_size", C.c_size_t)] + [(n, P) for n in [
        "in_proj_weight", "q_proj_weight", "k_proj_weight", "v_proj_weight", "in_proj_bias",
        "out_proj_weight", "out_proj_bias", "bias_k", "bias_v"]]


class Opts(C.Structure):
    _fields_ = [("struct_size", C.c_size_t), ("num_threads", C.c_int32),
                ("alloc", P), ("free", P), ("user_data", P)]


lib.attn_context_last_error.restype = C.c_char_p
lib.attn_mha_config_init.argtypes = [C.POINTER(Config)]
lib.attn_mha_weights_init.argtypes = [C.POINTER(Weights)]
lib.attn_tensor_wrap.argtypes = [P, C.c_int, C.c_int32, C.POINTER(C.c_int64), P, P, C.POINTER(P)]
lib.attn_mha_create.argtypes = [P, C.POINTER(Config), C.POINTER(Weights), C.POINTER(P)]
lib.attn_mha_plan_create.argtypes = [P, P, P, P, P, P, P, P, C.POINTER(P)]
lib.attn_mha_plan_execute.argtypes = [P, P, P, P, P, P, P]
for f in ("attn_desc_create", "attn_context_create"):
    getattr(lib, f).argtypes = [P, C.POINTER(P)]
lib.attn_desc_set_causal.argtypes = [P, C.c_int]

ctx = P()
opts = Opts()
lib.attn_context_options_init(C.byref(opts))
opts.num_threads = a.threads
assert lib.attn_context_create(C.byref(opts), C.byref(ctx)) == 0
keep = []


def wrap(arr):
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    keep.append(arr)
    shape = (C.c_int64 * arr.ndim)(*arr.shape)
    t = P()
    assert lib.attn_tensor_wrap(ctx, 1, arr.ndim, shape, None, arr.ctypes.data, C.byref(t)) == 0
    return t


def check(st, what):
    if st != 0:
        raise SystemExit(f"{what}: {lib.attn_context_last_error(ctx).decode()}")


cfg = Config()
lib.attn_mha_config_init(C.byref(cfg))
cfg.embed_dim, cfg.num_heads, cfg.batch_first = E, H, 1
w = Weights()
lib.attn_mha_weights_init(C.byref(w))
w.in_proj_weight = wrap(mha.in_proj_weight.detach().numpy())
w.in_proj_bias = wrap(mha.in_proj_bias.detach().numpy())
w.out_proj_weight = wrap(mha.out_proj.weight.detach().numpy())
w.out_proj_bias = wrap(mha.out_proj.bias.detach().numpy())
layer = P()
check(lib.attn_mha_create(ctx, C.byref(cfg), C.byref(w), C.byref(layer)), "attn_mha_create")
tx = wrap(x.numpy())
out = np.zeros((B, S, E), dtype=np.float32)
to = wrap(out)
out = keep[-1]
desc = P()
check(lib.attn_desc_create(ctx, C.byref(desc)), "attn_desc_create")
if a.causal:
    check(lib.attn_desc_set_causal(desc, 1), "attn_desc_set_causal")
plan = P()
check(lib.attn_mha_plan_create(layer, desc, tx, tx, tx, None, to, None, C.byref(plan)), "plan")


def run_attn():
    check(lib.attn_mha_plan_execute(plan, tx, tx, tx, None, to, None), "execute")


t_attn = median_ms(run_attn, a.reps)
err = float(np.max(np.abs(out - want.numpy())))
print(f"mha E={E} H={H} S={S} B={B} causal={a.causal} threads={a.threads}: "
      f"torch {t_torch:.1f} ms, libattn {t_attn:.1f} ms, speed-up x{t_torch / t_attn:.2f} "
      f"(max|diff| {err:.2g})")
if a.json:
    import json
    print(json.dumps({"case": "mha_vs_torch", "E": E, "H": H, "S": S, "B": B, "causal": a.causal,
                      "threads": a.threads, "torch_ms": t_torch, "attn_ms": t_attn,
                      "speedup": t_torch / t_attn, "max_abs_diff": err}))

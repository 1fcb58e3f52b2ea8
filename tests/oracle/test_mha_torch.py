#!/usr/bin/python3
"""attn_mha against PyTorch's nn.MultiheadAttention with identical weights.

Run by CTest as `/usr/bin/python3 test_mha_torch.py path/to/libattn.so`.
Exits 77 (CTest SKIP_RETURN_CODE) when torch or numpy is missing.
Every case builds an nn.MultiheadAttention, copies its parameters into
attn_mha (no copies on our side: the numpy arrays are wrapped), runs both and
requires max |ours - torch| <= 1e-5 in f32 for the output and the weights.
"""
import ctypes as C
import os
import sys

if os.environ.get("ATTN_TEST_SKIP_SANITIZED"):
    print(f"SKIP: {os.environ['ATTN_TEST_SKIP_SANITIZED']}")
    sys.exit(77)

try:
    import numpy as np
    import torch
except ImportError as e:  # pragma: no cover
    print(f"SKIP: {e}")
    sys.exit(77)

if len(sys.argv) != 2:
    print("usage: test_mha_torch.py LIBATTN.so")
    sys.exit(2)
lib = C.CDLL(sys.argv[1])

F32, F64, U8 = 1, 2, 3
CAUSAL_TOP_LEFT, CAUSAL_BOTTOM_RIGHT = 1, 2
P = C.c_void_p


class Config(C.Structure):
    _fields_ = [("struct_size", C.c_size_t), ("embed_dim", C.c_int64), ("num_heads", C.c_int64),
                ("num_kv_heads", C.c_int64), ("kdim", C.c_int64), ("vdim", C.c_int64),
                ("bias", C.c_int32), ("add_bias_kv", C.c_int32), ("add_zero_attn", C.c_int32),
                ("batch_first", C.c_int32), ("dtype", C.c_int)]


WEIGHT_NAMES = ["in_proj_weight", "q_proj_weight", "k_proj_weight", "v_proj_weight",
                "in_proj_bias", "out_proj_weight", "out_proj_bias", "bias_k", "bias_v"]


class Weights(C.Structure):
    _fields_ = [("struct_size", C.c_size_t)] + [(n, P) for n in WEIGHT_NAMES]


class AttnError(RuntimeError):
    pass


def _errcheck(status, func, args):
    if status != 0:
        raise AttnError(f"{func.__name__}: status {status}: {lib.attn_context_last_error(CTX).decode()}")
    return status


for name, argtypes, restype in [
    ("attn_context_create", [P, C.POINTER(P)], C.c_int),
    ("attn_context_destroy", [P], None),
    ("attn_context_last_error", [P], C.c_char_p),
    ("attn_tensor_wrap", [P, C.c_int, C.c_int32, C.POINTER(C.c_int64), C.POINTER(C.c_int64), P,
                          C.POINTER(P)], C.c_int),
    ("attn_tensor_destroy", [P], None),
    ("attn_desc_create", [P, C.POINTER(P)], C.c_int),
    ("attn_desc_destroy", [P], None),
    ("attn_desc_set_causal", [P, C.c_int], C.c_int),
    ("attn_desc_set_bool_mask", [P, P], C.c_int),
    ("attn_desc_set_additive_mask", [P, P], C.c_int),
    ("attn_mha_config_init", [C.POINTER(Config)], None),
    ("attn_mha_weights_init", [C.POINTER(Weights)], None),
    ("attn_mha_create", [P, C.POINTER(Config), C.POINTER(Weights), C.POINTER(P)], C.c_int),
    ("attn_mha_destroy", [P], None),
    ("attn_mha_plan_create", [P, P, P, P, P, P, P, P, C.POINTER(P)], C.c_int),
    ("attn_mha_plan_execute", [P, P, P, P, P, P, P], C.c_int),
    ("attn_mha_plan_destroy", [P], None),
]:
    f = getattr(lib, name)
    f.argtypes, f.restype = argtypes, restype
    if restype is C.c_int and name != "attn_mha_plan_create":
        f.errcheck = _errcheck
lib.attn_mha_plan_create.errcheck = _errcheck

CTX = P()
if lib.attn_context_create(None, C.byref(CTX)) != 0:
    raise SystemExit("cannot create a context")


class Tensor:
    """A borrowed attn_tensor over a numpy array (kept alive here), any strides."""

    def __init__(self, arr):
        self.arr = arr
        dt = {np.float32: F32, np.float64: F64, np.uint8: U8}[arr.dtype.type]
        es = arr.itemsize
        shape = (C.c_int64 * arr.ndim)(*arr.shape)
        strides = (C.c_int64 * arr.ndim)(*[s // es for s in arr.strides])
        self.h = P()
        lib.attn_tensor_wrap(CTX, dt, arr.ndim, shape, strides, arr.ctypes.data, C.byref(self.h))

    def __del__(self):
        lib.attn_tensor_destroy(self.h)


def np_of(t, dtype):
    return np.ascontiguousarray(t.detach().cpu().numpy().astype(dtype))


def run_case(name, *, E=32, H=4, B=3, L=6, S=6, kdim=None, vdim=None, bias=True, add_bias_kv=False,
             add_zero_attn=False, batch_first=False, self_attn=False, kpm=False, attn_mask=None,
             causal=False, need_weights=None, dtype=np.float32, tol=1e-5, seed=0):
    """attn_mask: None, 'bool2d', 'bool3d', 'float2d', 'float3d'. need_weights: None, 'avg', 'head'."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    tdt = torch.float32 if dtype == np.float32 else torch.float64
    mha = torch.nn.MultiheadAttention(E, H, bias=bias, add_bias_kv=add_bias_kv,
                                      add_zero_attn=add_zero_attn, kdim=kdim, vdim=vdim,
                                      batch_first=batch_first, dtype=tdt)
    with torch.no_grad():  # non-zero biases so they are tested
        for n, prm in mha.named_parameters():
            if "bias" in n:
                prm.uniform_(-0.5, 0.5, generator=g)
    mha.eval()
    kd, vd = kdim or E, vdim or E

    def seq(S_, F):
        shape = (B, S_, F) if batch_first else (S_, B, F)
        return torch.rand(shape, generator=g, dtype=tdt) * 2 - 1

    query = seq(L, E)
    if self_attn:
        key = value = query
    else:
        key, value = seq(S, kd), seq(S, vd)
    # Torch masks: True = ignore. Ours: non-zero = attend.
    t_kpm = None
    lengths = None
    if kpm:
        lengths = [S - (b % 3) for b in range(B)]
        t_kpm = torch.zeros(B, S, dtype=torch.bool)
        for b in range(B):
            t_kpm[b, lengths[b]:] = True
    t_mask = None
    ours_mask = None  # (kind, numpy array [1|B, 1|H, L, S])
    if attn_mask is not None:
        dims = (L, S) if attn_mask.endswith("2d") else (B * H, L, S)
        if attn_mask.startswith("bool"):
            t_mask = torch.rand(dims, generator=g) < 0.3
            t_mask[..., 0] = False  # every row keeps a key (torch gives NaN otherwise)
            m = (~t_mask).numpy().astype(np.uint8)
            ours_mask = ("bool", m.reshape(1, 1, L, S) if m.ndim == 2 else m.reshape(B, H, L, S))
        else:
            t_mask = torch.randn(dims, generator=g, dtype=tdt)
            t_mask[torch.rand(dims, generator=g) < 0.2] = float("-inf")
            t_mask[..., 0] = 0.0
            m = t_mask.numpy().astype(dtype)
            ours_mask = ("add", m.reshape(1, 1, L, S) if m.ndim == 2 else m.reshape(B, H, L, S))
    if causal:  # torch 1.13 has no is_causal: an explicit float mask
        assert t_mask is None
        t_mask = torch.triu(torch.full((L, S), float("-inf"), dtype=tdt), diagonal=1)

    with torch.no_grad():
        want, want_w = mha(query, key, value, key_padding_mask=t_kpm, attn_mask=t_mask,
                           need_weights=need_weights is not None,
                           average_attn_weights=need_weights == "avg")

    # ---- ours
    cfg = Config()
    lib.attn_mha_config_init(C.byref(cfg))
    cfg.embed_dim, cfg.num_heads = E, H
    cfg.kdim, cfg.vdim = kdim or 0, vdim or 0
    cfg.bias, cfg.add_bias_kv, cfg.add_zero_attn = int(bias), int(add_bias_kv), int(add_zero_attn)
    cfg.batch_first = int(batch_first)
    cfg.dtype = F32 if dtype == np.float32 else F64
    w = Weights()
    lib.attn_mha_weights_init(C.byref(w))
    keep = []
    params = dict(mha.named_parameters())
    for n in WEIGHT_NAMES:
        key_n = {"out_proj_weight": "out_proj.weight", "out_proj_bias": "out_proj.bias"}.get(n, n)
        if key_n in params and params[key_n] is not None:
            t = Tensor(np_of(params[key_n], dtype))
            keep.append(t)
            setattr(w, n, t.h)
    layer = P()
    lib.attn_mha_create(CTX, C.byref(cfg), C.byref(w), C.byref(layer))

    tq = Tensor(np_of(query, dtype))
    tk = tq if self_attn else Tensor(np_of(key, dtype))
    tv = tq if self_attn else Tensor(np_of(value, dtype))
    out_np = np.full(tuple(want.shape), np.nan, dtype=dtype)
    to = Tensor(out_np)
    tkpm = Tensor((~t_kpm).numpy().astype(np.uint8)) if kpm else None
    tw = None
    if need_weights is not None:
        w_np = np.full(tuple(want_w.shape), np.nan, dtype=dtype)
        tw = Tensor(w_np)
    desc = P()
    lib.attn_desc_create(CTX, C.byref(desc))
    tm = None
    if ours_mask is not None:
        tm = Tensor(np.ascontiguousarray(ours_mask[1]))
        if ours_mask[0] == "bool":
            lib.attn_desc_set_bool_mask(desc, tm.h)
        else:
            lib.attn_desc_set_additive_mask(desc, tm.h)
    if causal:
        lib.attn_desc_set_causal(desc, CAUSAL_TOP_LEFT)
    plan = P()
    lib.attn_mha_plan_create(layer, desc, tq.h, tk.h, tv.h, tkpm.h if tkpm else None, to.h,
                             tw.h if tw else None, C.byref(plan))
    for _ in range(2):  # a plan runs many times with the same result
        lib.attn_mha_plan_execute(plan, tq.h, tk.h, tv.h, tkpm.h if tkpm else None, to.h,
                                  tw.h if tw else None)
    lib.attn_mha_plan_destroy(plan)
    lib.attn_desc_destroy(desc)
    lib.attn_mha_destroy(layer)

    err = float(np.max(np.abs(out_np - want.numpy())))
    werr = 0.0
    if tw is not None:
        werr = float(np.max(np.abs(w_np - want_w.numpy())))
    ok = err <= tol and werr <= tol and np.isfinite(out_np).all()
    print(f"{'ok  ' if ok else 'FAIL'} {name}: max|out diff| {err:.3g}"
          + (f", max|weights diff| {werr:.3g}" if tw is not None else ""))
    return ok


CASES = [
    ("self attention, seq-first", dict(self_attn=True, L=7, S=7)),
    ("self attention, batch-first, weights averaged", dict(self_attn=True, batch_first=True, L=9, S=9, need_weights="avg")),
    ("cross attention, seq-first, weights per head", dict(L=5, S=11, need_weights="head")),
    ("cross attention, kdim/vdim != E, batch-first", dict(L=5, S=8, kdim=24, vdim=40, batch_first=True, need_weights="avg")),
    ("kdim/vdim != E, seq-first, no bias", dict(L=4, S=6, kdim=16, vdim=8, bias=False)),
    ("key_padding_mask", dict(L=6, S=9, kpm=True, need_weights="head")),
    ("key_padding_mask, batch-first, self", dict(self_attn=True, L=9, S=9, batch_first=True, kpm=True, need_weights="avg")),
    ("attn_mask bool 2-D", dict(L=6, S=7, attn_mask="bool2d", need_weights="avg")),
    ("attn_mask bool 3-D", dict(L=6, S=7, attn_mask="bool3d", batch_first=True, need_weights="head")),
    ("attn_mask float 2-D", dict(L=6, S=7, attn_mask="float2d", need_weights="head")),
    ("attn_mask float 3-D", dict(L=5, S=7, attn_mask="float3d")),
    ("attn_mask bool + key_padding_mask", dict(L=6, S=9, attn_mask="bool2d", kpm=True, need_weights="avg")),
    ("attn_mask float + key_padding_mask", dict(L=6, S=9, attn_mask="float3d", kpm=True, batch_first=True)),
    ("causal self attention", dict(self_attn=True, L=10, S=10, causal=True, need_weights="head")),
    ("causal, batch-first, key_padding_mask", dict(self_attn=True, L=10, S=10, causal=True, kpm=True, batch_first=True)),
    ("add_bias_kv", dict(L=5, S=7, add_bias_kv=True, need_weights="head")),
    ("add_zero_attn", dict(L=5, S=7, add_zero_attn=True, need_weights="avg", batch_first=True)),
    ("add_bias_kv + add_zero_attn + key_padding_mask + bool mask", dict(L=5, S=7, add_bias_kv=True, add_zero_attn=True, kpm=True, attn_mask="bool3d", need_weights="head")),
    ("add_bias_kv + float mask, batch-first", dict(L=6, S=6, add_bias_kv=True, attn_mask="float2d", batch_first=True, need_weights="avg")),
    ("add_zero_attn + causal", dict(self_attn=True, L=8, S=8, add_zero_attn=True, causal=True, need_weights="head")),
    ("add_bias_kv, kdim/vdim != E, key_padding_mask", dict(L=4, S=9, kdim=12, vdim=20, add_bias_kv=True, kpm=True)),
    ("larger: E=64 H=8 S=130 (several tiles)", dict(E=64, H=8, B=2, L=130, S=150, need_weights="avg", kpm=True)),
    ("f64: cross attention, masks, bias kv", dict(dtype=np.float64, tol=1e-12, L=5, S=9, add_bias_kv=True, kpm=True, attn_mask="float2d", need_weights="head")),
]


def main():
    failures = 0
    for i, (name, kw) in enumerate(CASES):
        try:
            if not run_case(name, seed=i + 1, **kw):
                failures += 1
        except AttnError as e:
            print(f"FAIL {name}: {e}")
            failures += 1
    print(f"{len(CASES) - failures}/{len(CASES)} cases equal to nn.MultiheadAttention")
    lib.attn_context_destroy(CTX)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())

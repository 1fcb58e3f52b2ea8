#!/usr/bin/python3
"""attn_mha against PyTorch's nn.MultiheadAttention with identical weights.

Run by CTest as `/usr/bin/python3 test_mha_torch.py path/to/libattn.so` with
bindings/python on PYTHONPATH: our side is the shipped Python package
(attn.MHA, attn.MHAPlan) on that library.
Exits 77 (CTest SKIP_RETURN_CODE) when torch or numpy is missing.
Every case builds an nn.MultiheadAttention, copies its parameters into
attn_mha (no copies on our side: the numpy arrays are wrapped), runs both and
requires max |ours - torch| <= 1e-5 in f32 for the output and the weights.

GRAD_CASES: a training step (attn.MHATrainPlan: attn_mha_forward_train +
attn_mha_backward_execute) against torch autograd of the same module with
L = sum(out * dout): every input gradient and every parameter's .grad,
max |ours - torch| <= 1e-4 * max(1, max|torch|) in f32 (1e-10 in f64).
"""
import gc
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
os.environ["ATTN_LIBRARY"] = sys.argv[1]  # the library the package loads on import
try:
    import attn  # noqa: E402
except ImportError as e:
    print(f"FAIL: cannot import the attn package (bindings/python on PYTHONPATH) "
          f"with ATTN_LIBRARY={sys.argv[1]}: {e}")
    sys.exit(1)

CTX = attn.Context()  # default thread count ($ATTN_NUM_THREADS or all cores)


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

    # ---- ours: the numpy arrays are wrapped, not copied
    weights = {n: np_of(p, dtype) for n, p in mha.named_parameters()}  # torch's names
    layer = attn.MHA(weights, ctx=CTX, embed_dim=E, num_heads=H, kdim=kdim, vdim=vdim, bias=bias,
                     add_bias_kv=add_bias_kv, add_zero_attn=add_zero_attn,
                     batch_first=batch_first, dtype=dtype)
    q_np = np_of(query, dtype)
    k_np = q_np if self_attn else np_of(key, dtype)
    v_np = q_np if self_attn else np_of(value, dtype)
    out_np = np.full(tuple(want.shape), np.nan, dtype=dtype)
    kpm_np = (~t_kpm).numpy().astype(np.uint8) if kpm else None
    w_np = None
    if need_weights is not None:
        w_np = np.full(tuple(want_w.shape), np.nan, dtype=dtype)
    desc = attn.Desc(CTX)
    if ours_mask is not None:
        m = np.ascontiguousarray(ours_mask[1])
        if ours_mask[0] == "bool":
            desc.set_bool_mask(m)
        else:
            desc.set_additive_mask(m)
    if causal:
        desc.set_causal(attn.Causal.TOP_LEFT)
    plan = layer.plan(q_np, k_np, v_np, out_np, kpm_np, w_np, desc=desc)
    for _ in range(2):  # a plan runs many times with the same result
        plan.execute(q_np, k_np, v_np, out_np, kpm_np, w_np)
    plan.close()
    desc.close()
    layer.close()

    err = float(np.max(np.abs(out_np - want.numpy())))
    werr = 0.0
    if w_np is not None:
        werr = float(np.max(np.abs(w_np - want_w.numpy())))
    ok = err <= tol and werr <= tol and np.isfinite(out_np).all()
    print(f"{'ok  ' if ok else 'FAIL'} {name}: max|out diff| {err:.3g}"
          + (f", max|weights diff| {werr:.3g}" if w_np is not None else ""))
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


def torch_masks(g, B, H, L, S, kpm, attn_mask, causal, tdt, dtype):
    """(torch kpm, torch attn_mask, our kpm, our desc settings) for the same masks."""
    t_kpm = ours_kpm = t_mask = None
    settings = {}
    if kpm:
        t_kpm = torch.zeros(B, S, dtype=torch.bool)
        for b in range(B):
            t_kpm[b, S - (b % 3):] = True
        ours_kpm = (~t_kpm).numpy().astype(np.uint8)
    if attn_mask == "bool2d":
        t_mask = torch.rand((L, S), generator=g) < 0.3
        t_mask[..., 0] = False
        settings["bool_mask"] = (~t_mask).numpy().astype(np.uint8).reshape(1, 1, L, S)
    elif attn_mask == "float3d":
        t_mask = torch.randn((B * H, L, S), generator=g, dtype=tdt)
        t_mask[..., 0] = 0.0
        settings["additive_mask"] = np.ascontiguousarray(t_mask.numpy().astype(dtype)
                                                         .reshape(B, H, L, S))
    if causal:
        assert t_mask is None
        t_mask = torch.triu(torch.full((L, S), float("-inf"), dtype=tdt), diagonal=1)
        settings["causal"] = attn.Causal.TOP_LEFT
    return t_kpm, t_mask, ours_kpm, settings


def run_grad_case(name, *, E=32, H=4, B=3, L=6, S=6, kdim=None, vdim=None, bias=True,
                  add_bias_kv=False, add_zero_attn=False, batch_first=False, self_attn=False,
                  kpm=False, attn_mask=None, causal=False, dtype=np.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    tdt = torch.float32 if dtype == np.float32 else torch.float64
    tol = 1e-4 if dtype == np.float32 else 1e-10
    mha = torch.nn.MultiheadAttention(E, H, bias=bias, add_bias_kv=add_bias_kv,
                                      add_zero_attn=add_zero_attn, kdim=kdim, vdim=vdim,
                                      batch_first=batch_first, dtype=tdt)
    with torch.no_grad():
        for n, prm in mha.named_parameters():
            if "bias" in n:
                prm.uniform_(-0.5, 0.5, generator=g)

    def seq(S_, F):
        shape = (B, S_, F) if batch_first else (S_, B, F)
        return (torch.rand(shape, generator=g, dtype=tdt) * 2 - 1).requires_grad_()

    query = seq(L, E)
    key, value = (query, query) if self_attn else (seq(S, kdim or E), seq(S, vdim or E))
    t_kpm, t_mask, ours_kpm, settings = torch_masks(g, B, H, L, S, kpm, attn_mask, causal,
                                                    tdt, dtype)
    want, _ = mha(query, key, value, key_padding_mask=t_kpm, attn_mask=t_mask,
                  need_weights=False)
    dout = torch.rand(want.shape, generator=g, dtype=tdt) * 2 - 1
    (want * dout).sum().backward()

    weights = {n: np_of(p, dtype) for n, p in mha.named_parameters()}
    layer = attn.MHA(weights, ctx=CTX, embed_dim=E, num_heads=H, kdim=kdim, vdim=vdim, bias=bias,
                     add_bias_kv=add_bias_kv, add_zero_attn=add_zero_attn,
                     batch_first=batch_first, dtype=dtype)
    q_np = np_of(query, dtype)
    k_np = q_np if self_attn else np_of(key, dtype)
    v_np = q_np if self_attn else np_of(value, dtype)
    out_np = np.full(tuple(want.shape), np.nan, dtype=dtype)
    step = layer.train_plan(q_np, k_np, v_np, out_np, key_padding_mask=ours_kpm, **settings)
    dq = np.full(q_np.shape, np.nan, dtype=dtype)
    dk = dq if self_attn else np.full(k_np.shape, np.nan, dtype=dtype)
    dv = dq if self_attn else np.full(v_np.shape, np.nan, dtype=dtype)
    step.forward(q_np, k_np, v_np, out_np, key_padding_mask=ours_kpm)
    grads = step.backward(q_np, k_np, v_np, np_of(dout, dtype), key_padding_mask=ours_kpm,
                          dquery=dq, dkey=dk, dvalue=dv)
    step.close()
    layer.close()

    pairs = [("out", out_np, want.detach()), ("dquery", dq, query.grad)]
    if not self_attn:
        pairs += [("dkey", dk, key.grad), ("dvalue", dv, value.grad)]
    for n, prm in mha.named_parameters():
        pairs.append((n, grads[n.replace("out_proj.", "out_proj_")], prm.grad))
    ok = True
    worst = ("", 0.0)
    for n, ours, ref in pairs:
        ref = ref.numpy()
        err = float(np.max(np.abs(ours - ref))) / max(1.0, float(np.max(np.abs(ref))))
        if not np.isfinite(ours).all() or not err <= tol:
            print(f"FAIL {name}: {n} error {err:.3g} > {tol:g}")
            ok = False
        if err > worst[1]:
            worst = (n, err)
    if ok:
        print(f"ok   grad {name}: {len(pairs)} tensors, worst {worst[0]} {worst[1]:.3g}")
    return ok


GRAD_CASES = [
    ("self attention, seq-first", dict(self_attn=True, L=7, S=7)),
    ("self attention, causal, batch-first, key_padding_mask",
     dict(self_attn=True, L=9, S=9, causal=True, batch_first=True, kpm=True)),
    ("cross, kdim/vdim, add_bias_kv + add_zero_attn + kpm + bool mask",
     dict(L=5, S=8, kdim=24, vdim=40, add_bias_kv=True, add_zero_attn=True, kpm=True,
          attn_mask="bool2d")),
    ("cross, no bias, float 3-D mask, batch-first",
     dict(L=6, S=7, bias=False, attn_mask="float3d", batch_first=True)),
    ("larger: E=64 H=8 L=130 S=150, key_padding_mask", dict(E=64, H=8, B=2, L=130, S=150, kpm=True)),
    ("f64: add_bias_kv, kpm, float mask", dict(dtype=np.float64, L=5, S=9, add_bias_kv=True,
                                                kpm=True, attn_mask="float3d")),
]


def main():
    failures = 0
    for i, (name, kw) in enumerate(GRAD_CASES):
        try:
            if not run_grad_case(name, seed=100 + i, **kw):
                failures += 1
        except attn.AttnError as e:
            print(f"FAIL grad {name}: {e}")
            failures += 1
    for i, (name, kw) in enumerate(CASES):
        try:
            if not run_case(name, seed=i + 1, **kw):
                failures += 1
        except attn.AttnError as e:
            print(f"FAIL {name}: {e}")
            failures += 1
    total = len(CASES) + len(GRAD_CASES)
    print(f"{total - failures}/{total} cases equal to nn.MultiheadAttention")
    gc.collect()  # layers, plans and tensors go before their context
    CTX.close()
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())

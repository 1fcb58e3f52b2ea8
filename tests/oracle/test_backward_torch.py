#!/usr/bin/python3
"""libattn's backward pass against PyTorch autograd, through attn.torch.

Run by CTest as `/usr/bin/python3 test_backward_torch.py path/to/libattn.so`
with bindings/python on PYTHONPATH. Exits 77 (SKIP) without torch/numpy.

- f32: gradients of q, k, v (and a float mask) from libattn's backward
  against PyTorch 1.13 autograd through the naive computation
  softmax(scale·q kᵀ + masks) v written with torch ops, for every mask kind;
  bound |ours − torch| ≤ 2e-5·max|torch| + 1e-6 (benchdnn-style: f32 rounding
  of O(S)-term sums).
- f64: torch.autograd.gradcheck on attn.torch.scaled_dot_product_attention
  and attn.torch.MultiheadAttention.
- attn.torch.MultiheadAttention against nn.MultiheadAttention with the same
  parameters: outputs and every gradient (inputs, in/out projection weights
  and biases, bias_k/bias_v, separate kdim/vdim weights), f32.
"""
import math
import os
import sys

if os.environ.get("ATTN_TEST_SKIP_SANITIZED"):
    print(f"SKIP: {os.environ['ATTN_TEST_SKIP_SANITIZED']}")
    sys.exit(77)
try:
    import numpy  # noqa: F401
    import torch
except ImportError as e:  # pragma: no cover
    print(f"SKIP: {e}")
    sys.exit(77)
if len(sys.argv) != 2:
    print("usage: test_backward_torch.py LIBATTN.so")
    sys.exit(2)
os.environ["ATTN_LIBRARY"] = sys.argv[1]
import attn.torch as at  # noqa: E402

failures = []


def check(name, ok, detail=""):
    print(f"{'ok  ' if ok else 'FAIL'} {name} {detail}")
    if not ok:
        failures.append(name)


def naive(q, k, v, *, add=None, allow=None, causal=None, window=None, klen=None, qlen=None,
          alibi=None, softcap=None, scale=None):
    """softmax(scale·q kᵀ [softcap] [− alibi] [+ add], kept keys) v with torch ops."""
    B, H, L, E = q.shape
    S = k.shape[2]
    g = H // k.shape[1]
    k = k.repeat_interleave(g, dim=1)
    v = v.repeat_interleave(g, dim=1)
    s = (q @ k.transpose(-1, -2)) * (scale if scale is not None else 1 / math.sqrt(E))
    if softcap:
        s = softcap * torch.tanh(s / softcap)
    i = torch.arange(L).view(L, 1)
    j = torch.arange(S).view(1, S)
    keep = torch.ones(B, H, L, S, dtype=torch.bool)
    off = torch.zeros(B, 1, 1, 1, dtype=torch.long)
    if causal == "bottom_right":
        kl = torch.tensor(klen) if klen is not None else torch.full((B,), S)
        ql = torch.tensor(qlen) if qlen is not None else torch.full((B,), L)
        off = (kl - ql).view(B, 1, 1, 1)
    ia = i + off
    if alibi is not None:
        s = s - torch.tensor(alibi, dtype=q.dtype).view(1, H, 1, 1) * (ia - j).abs().to(q.dtype)
    if add is not None:
        s = s + add
        keep = keep & (add > -math.inf)
    if causal:
        keep = keep & (j <= ia)
    if window is not None:
        lo, hi = window
        keep = keep & (j >= ia - lo) & (j <= ia + hi)
    if klen is not None:
        keep = keep & (j < torch.tensor(klen).view(B, 1, 1, 1))
    if qlen is not None:
        keep = keep & (i < torch.tensor(qlen).view(B, 1, 1, 1))
    if allow is not None:
        keep = keep & allow
    s = s.masked_fill(~keep, -math.inf)
    p = torch.softmax(s, dim=-1).nan_to_num(0.0)  # fully masked rows give 0
    return p @ v


def rand(*shape, dtype=torch.float32, g=None):
    return (torch.rand(*shape, generator=g, dtype=torch.float64) * 2 - 1).to(dtype).requires_grad_()


def compare_f32(name, B=2, H=2, Hkv=None, L=33, S=47, E=16, Ev=None, mask=None, **kw):
    g = torch.Generator().manual_seed(len(name))
    Hkv, Ev = Hkv or H, Ev or E
    q, k, v = rand(B, H, L, E, g=g), rand(B, Hkv, S, E, g=g), rand(B, Hkv, S, Ev, g=g)
    add = allow = None
    if mask == "float":
        add = (torch.rand(B, H, L, S, generator=g) * 3 - 1.5)
        add = add.masked_fill(torch.rand(B, H, L, S, generator=g) < 0.2, -math.inf)
        add[:, :, 3, :] = -math.inf  # fully masked rows
        add.requires_grad_()
    if mask == "bool":
        allow = torch.rand(B, 1, L, S, generator=g) < 0.7
        allow[:, :, 5, :] = False
    settings = {k2: v2 for k2, v2 in kw.items()}
    if "window" in kw:
        settings["window"] = kw["window"]
    ours = at.attention(q, k, v, attn_mask=add if add is not None else allow, **{
        **({"causal": kw["causal"]} if "causal" in kw else {}),
        **({"window": kw["window"]} if "window" in kw else {}),
        **({"key_lengths": kw["klen"]} if "klen" in kw else {}),
        **({"query_lengths": kw["qlen"]} if "qlen" in kw else {}),
        **({"alibi": kw["alibi"]} if "alibi" in kw else {}),
        **({"softcap": kw["softcap"]} if "softcap" in kw else {}),
        **({"scale": kw["scale"]} if "scale" in kw else {})})
    ref = naive(q, k, v, add=add, allow=allow, causal=kw.get("causal"), window=kw.get("window"),
                klen=kw.get("klen"), qlen=kw.get("qlen"), alibi=kw.get("alibi"),
                softcap=kw.get("softcap"), scale=kw.get("scale"))
    dout = torch.rand(ours.shape, generator=g) * 2 - 1
    inputs = [q, k, v] + ([add] if add is not None else [])
    go = torch.autograd.grad(ours, inputs, dout)
    gr = torch.autograd.grad(ref, inputs, dout)
    worst = float((ours - ref).abs().max() / ref.abs().max().clamp_min(1e-30))
    ok = worst <= 2e-5
    for n, a, b in zip("qkvm", go, gr):
        err = float((a - b).abs().max())
        bound = 2e-5 * float(b.abs().max()) + 1e-6
        ok = ok and bool(torch.isfinite(a).all()) and err <= bound
        worst = max(worst, err / max(bound, 1e-30) * 2e-5)
    check(f"f32 {name}", ok, f"(worst relative {worst:.2e})")


def f32_cases():
    compare_f32("plain")
    compare_f32("causal_top_left", causal="top_left")
    compare_f32("causal_bottom_right", causal="bottom_right", L=20, S=47)
    compare_f32("causal_bottom_right_sq_gt_sk", causal="bottom_right", L=50, S=31)
    compare_f32("window", window=(5, 3))
    compare_f32("lengths", klen=[40, 0], qlen=[30, 17])
    compare_f32("lengths_bottom_right", causal="bottom_right", klen=[40, 13], qlen=[30, 17])
    compare_f32("bool_mask", mask="bool")
    compare_f32("float_mask_grad", mask="float")
    compare_f32("alibi", alibi=[0.5, 0.125])
    compare_f32("softcap", softcap=2.0, scale=1.5)
    compare_f32("gqa", H=4, Hkv=2, causal="top_left")
    compare_f32("mqa_dv", H=4, Hkv=1, Ev=24, mask="float")
    compare_f32("everything", causal="top_left", window=(9, 0), klen=[40, 30], alibi=[0.3, 0.1],
                softcap=5.0, mask="float")
    compare_f32("large_tiles", B=1, H=2, L=700, S=900, E=32, causal="bottom_right", mask="bool")


def gradcheck_cases():
    g = torch.Generator().manual_seed(1)
    d = torch.float64
    q, k, v = rand(2, 2, 5, 4, dtype=d, g=g), rand(2, 2, 6, 4, dtype=d, g=g), rand(2, 2, 6, 3, dtype=d, g=g)
    m = rand(5, 6, dtype=d, g=g)
    sdpa = at.scaled_dot_product_attention
    check("gradcheck sdpa", torch.autograd.gradcheck(lambda a, b, c: sdpa(a, b, c), (q, k, v)))
    check("gradcheck sdpa causal+float mask",
          torch.autograd.gradcheck(lambda a, b, c, mm: sdpa(a, b, c, attn_mask=mm, is_causal=True),
                                   (q, k, v, m)))
    allow = torch.rand(1, 2, 5, 6, generator=g) < 0.6
    allow[0, 0, 2] = False
    check("gradcheck sdpa bool mask + scale",
          torch.autograd.gradcheck(lambda a, b, c: sdpa(a, b, c, attn_mask=allow, scale=0.3),
                                   (q, k, v)))
    kg, vg = rand(2, 1, 6, 4, dtype=d, g=g), rand(2, 1, 6, 3, dtype=d, g=g)
    check("gradcheck sdpa gqa",
          torch.autograd.gradcheck(lambda a, b, c: sdpa(a, b, c, enable_gqa=True), (q, kg, vg)))
    q3 = rand(3, 5, 4, dtype=d, g=g)
    check("gradcheck sdpa rank 3",
          torch.autograd.gradcheck(lambda a: sdpa(a, a, a, is_causal=True), (q3,)))
    torch.manual_seed(0)
    mha = at.MultiheadAttention(8, 2, add_bias_kv=True, kdim=6, vdim=5, dtype=d)
    x, kk, vv = rand(4, 2, 8, dtype=d, g=g), rand(5, 2, 6, dtype=d, g=g), rand(5, 2, 5, dtype=d, g=g)
    check("gradcheck MultiheadAttention (bias_kv, kdim/vdim)",
          torch.autograd.gradcheck(lambda a, b, c: mha(a, b, c, need_weights=False)[0], (x, kk, vv)))


def mha_case(name, E=16, H=4, L=7, S=9, B=3, dtype=torch.float32, self_attn=False, kpm=None,
             attn_mask=None, need_weights=False, **cfg):
    torch.manual_seed(len(name))
    ref = torch.nn.MultiheadAttention(E, H, dtype=dtype, **cfg)
    ours = at.MultiheadAttention(E, H, dtype=dtype, **cfg)
    ours.load_state_dict(ref.state_dict())
    bf = cfg.get("batch_first", False)
    g = torch.Generator().manual_seed(7)
    kd, vd = cfg.get("kdim") or E, cfg.get("vdim") or E

    def shape(T, D):
        return (B, T, D) if bf else (T, B, D)
    q = torch.rand(*shape(L, E), generator=g, dtype=dtype) * 2 - 1
    k = q if self_attn else torch.rand(*shape(S, kd), generator=g, dtype=dtype) * 2 - 1
    v = q if self_attn else torch.rand(*shape(S, vd), generator=g, dtype=dtype) * 2 - 1
    if self_attn:
        S = L
    mask_kw = {}
    if kpm == "bool":
        m = torch.zeros(B, S, dtype=torch.bool)
        m[0, -2:] = True
        m[1, 0] = True
        mask_kw["key_padding_mask"] = m
    if attn_mask == "bool":
        mask_kw["attn_mask"] = torch.ones(L, S, dtype=torch.bool).triu(1)
    if attn_mask == "float":
        mask_kw["attn_mask"] = (torch.rand(L, S, generator=g) - 0.5).to(dtype)
    if attn_mask == "float3d":
        mask_kw["attn_mask"] = (torch.rand(B * H, L, S, generator=g) - 0.5).to(dtype)
    grads = []
    outs = []
    for mod in (ref, ours):
        xs = [t.clone().requires_grad_() for t in ((q,) if self_attn else (q, k, v))]
        args = (xs[0], xs[0], xs[0]) if self_attn else tuple(xs)
        out, w = mod(*args, need_weights=need_weights, **mask_kw)
        dout = torch.linspace(-1, 1, out.numel(), dtype=dtype).view(out.shape)
        params = [p for _, p in sorted(mod.named_parameters())]
        gs = torch.autograd.grad(out, xs + params, dout)
        outs.append((out, w))
        grads.append(gs)
    names = ["x"] if self_attn else ["query", "key", "value"]
    names += [n for n, _ in sorted(ref.named_parameters())]
    ok = float((outs[0][0] - outs[1][0]).abs().max()) <= 1e-5
    if need_weights:
        ok = ok and float((outs[0][1] - outs[1][1]).abs().max()) <= 1e-5
    worst = ""
    for n, a, b in zip(names, grads[0], grads[1]):
        err = float((a - b).abs().max())
        if not err <= 1e-5 * max(1.0, float(a.abs().max())):
            ok = False
            worst += f" {n}: {err:.2e}"
    check(f"mha {name}", ok, worst)


def mha_cases():
    mha_case("self")
    mha_case("self_batch_first", self_attn=True, batch_first=True)
    mha_case("cross_kdim_vdim", kdim=10, vdim=6)
    mha_case("bias_kv", add_bias_kv=True)
    mha_case("zero_attn_kpm", add_zero_attn=True, kpm="bool")
    mha_case("no_bias_causal_mask", bias=False, attn_mask="bool")
    mha_case("float_masks", attn_mask="float", kpm="bool", need_weights=True)
    mha_case("float3d_mask", attn_mask="float3d", add_bias_kv=True, kdim=5, vdim=11)


def cached_plan_cases():
    """Mask-free calls reuse a cached plan: two graphs built before either
    backward runs (the plan is re-pointed by the second forward) must still
    get their own gradients."""
    g = torch.Generator().manual_seed(3)
    ins = [[rand(2, 3, 17, 8, g=g) for _ in range(3)] for _ in range(2)]
    outs = [at.scaled_dot_product_attention(*x, is_causal=True) for x in ins]
    douts = [torch.rand(o.shape, generator=g) for o in outs]
    ok = True
    for x, o, d in reversed(list(zip(ins, outs, douts))):
        got = torch.autograd.grad(o, x, d)
        ref = torch.autograd.grad(naive(*x, causal="top_left"), x, d)
        ok = ok and all(float((a - b).abs().max()) <= 2e-5 * float(b.abs().max()) + 1e-6
                        for a, b in zip(got, ref))
    check("cached plan: interleaved graphs", ok)


torch.set_num_threads(1)
cached_plan_cases()
f32_cases()
gradcheck_cases()
mha_cases()
print(f"{len(failures)} failure(s)")
sys.exit(1 if failures else 0)

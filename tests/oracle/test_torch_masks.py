#!/usr/bin/python3
"""PyTorch as an external oracle for libattn's masks.

Calls the built libattn.so (path in argv[1]) through the shipped Python
package (bindings/python/attn, on PYTHONPATH; CTest sets it) on numpy buffers
and compares against attention written with torch ops in float64:

    out = softmax(mask(−ALiBi(softcap(scale·Q Kᵀ)) + additive)) @ V

on random cases of every mask kind (causal top-left / bottom-right, window,
key and query lengths, bool mask, additive mask, ALiBi, softcap) and their
combinations, both dtypes, both memory layouts, with weights and lse.

Bool-mask polarity, on purpose: libattn's bool mask is True = ATTEND.
torch.nn.MultiheadAttention's bool attn_mask and key_padding_mask are
True = NOT allowed. The torch reference below takes our convention; the
polarity tests feed nn.MultiheadAttention the negated mask and check that
the un-negated one gives a different answer.

Exit 77 (CTest SKIP_RETURN_CODE) when numpy or torch is missing.
"""

import gc
import os
import sys
import unittest

if os.environ.get("ATTN_TEST_SKIP_SANITIZED"):
    print(f"SKIP: {os.environ['ATTN_TEST_SKIP_SANITIZED']}")
    sys.exit(77)

SKIP = 77
try:
    import numpy as np
    import torch
except ImportError as exc:  # pragma: no cover
    print("SKIP: test_torch_masks needs numpy and torch for %s (Debian: python3-numpy "
          "python3-torch): %s" % (sys.executable, exc))
    sys.exit(SKIP)

if len(sys.argv) < 2:
    print("usage: %s /path/to/libattn.so [unittest args]" % sys.argv[0])
    sys.exit(2)
os.environ["ATTN_LIBRARY"] = sys.argv[1]  # the library the package loads on import
try:
    import attn  # noqa: E402
except ImportError as exc:
    print("FAIL: cannot import the attn package (bindings/python on PYTHONPATH) "
          "with ATTN_LIBRARY=%s: %s" % (sys.argv[1], exc))
    sys.exit(1)

FLT_MAX = float(np.finfo(np.float32).max)
DTYPES = (np.float32, np.float64)
# |ours − torch| ≤ atol + rtol·|torch| (torch in f64 on the same rounded inputs)
TOL = {np.float32: dict(rtol=1e-4, atol=3e-5), np.float64: dict(rtol=1e-9, atol=1e-11)}


def torch_reference(q, k, v, scale=None, causal=0, left=None, right=None, key_len=None,
                    query_len=None, bool_mask=None, add_mask=None, alibi=None, softcap=None):
    """Attention in float64 torch ops. Masks are numpy arrays broadcastable to
    [B, H, Sq, Sk]; bool_mask uses libattn's convention, True = attend."""
    Q = torch.from_numpy(np.asarray(q, dtype=np.float64))
    K = torch.from_numpy(np.asarray(k, dtype=np.float64))
    V = torch.from_numpy(np.asarray(v, dtype=np.float64))
    B, H, Sq, D = Q.shape
    Hkv, Sk = K.shape[1], K.shape[2]
    K = K.repeat_interleave(H // Hkv, dim=1)  # GQA: query head h reads K/V head h // (H/Hkv)
    V = V.repeat_interleave(H // Hkv, dim=1)
    if scale is None:
        scale = 1.0 / np.sqrt(K.shape[-1])
    s = scale * torch.matmul(Q, K.transpose(-1, -2))
    if softcap is not None:
        s = softcap * torch.tanh(s / softcap)
    kl = torch.tensor(key_len if key_len is not None else [Sk] * B, dtype=torch.int64).view(B, 1, 1, 1)
    ql = torch.tensor(query_len if query_len is not None else [Sq] * B, dtype=torch.int64).view(B, 1, 1, 1)
    i = torch.arange(Sq).view(1, 1, Sq, 1)
    j = torch.arange(Sk).view(1, 1, 1, Sk)
    ia = i + (kl - ql if causal == attn.Causal.BOTTOM_RIGHT else 0)  # aligned query position
    if alibi is not None:
        s = s - torch.tensor(alibi, dtype=torch.float64).view(1, H, 1, 1) * (ia - j).abs().double()
    keep = torch.ones(B, H, Sq, Sk, dtype=torch.bool)
    if add_mask is not None:
        am = torch.from_numpy(np.asarray(add_mask, dtype=np.float64))
        s = s + am
        keep = keep & (am > -FLT_MAX)  # −inf and −FLT_MAX remove the key
    if causal:
        keep = keep & (j <= ia)
    if left is not None:
        keep = keep & (j >= ia - left)
    if right is not None:
        keep = keep & (j <= ia + right)
    keep = keep & (j < kl) & (i < ql)
    if bool_mask is not None:
        keep = keep & torch.from_numpy(np.asarray(bool_mask)).bool()  # True = attend (ours)
    s = s.masked_fill(~keep, float("-inf"))
    alive = keep.any(dim=-1, keepdim=True)
    p = torch.where(alive, torch.softmax(s, dim=-1), torch.zeros((), dtype=torch.float64))
    out = torch.matmul(p, V)
    lse = torch.logsumexp(s, dim=-1)  # −inf on rows that keep nothing
    return out.numpy(), p.numpy(), lse.numpy()


def as_layout(x, bshd):
    """x [B,H,S,D] as is, or the same values in [B,S,H,D] memory (a strided view)."""
    if not bshd:
        return np.ascontiguousarray(x)
    return np.ascontiguousarray(x.transpose(0, 2, 1, 3)).transpose(0, 2, 1, 3)


def broadcast_mask(rng, full, B, H):
    """The mask `full` [B,H,Sq,Sk] made broadcast over batch and/or heads, as dims
    of 1 or as a stride-0 view; returns (array for the library, dense equivalent)."""
    mode = rng.integers(0, 5)
    if mode == 0:
        return full, full
    small = full[:1] if mode in (1, 3) else full
    small = small[:, :1] if mode in (2, 3, 4) else small
    small = np.ascontiguousarray(small)
    dense = np.broadcast_to(small, full.shape)
    lib = dense if mode in (3, 4) and rng.integers(0, 2) else small  # stride 0 or dims of 1
    return lib, np.array(dense)


def random_case(rng, kind, dtype):
    c = {}
    B = int(rng.integers(1, 4))
    Hkv = int(rng.choice([1, 2]))
    H = Hkv * int(rng.choice([1, 2]))
    sizes = [1, 7, 33, 64, 130, 257, 600]
    Sq, Sk = int(rng.choice(sizes)), int(rng.choice(sizes))
    D = int(rng.choice([8, 16, 32, 64]))
    if Sq * Sk > 130 * 600:
        Sq = 130
    q = rng.uniform(-1, 1, (B, H, Sq, D)) * 2.5
    k = rng.uniform(-1, 1, (B, Hkv, Sk, D))
    v = rng.uniform(-1, 1, (B, Hkv, Sk, D))
    # the values both sides see: rounded to the library's dtype
    c["q"], c["k"], c["v"] = (x.astype(dtype).astype(np.float64) for x in (q, k, v))
    c["bshd"] = bool(rng.integers(0, 2))
    opt = {}
    kinds = {kind} if kind != "combo" else set(
        rng.choice(["causal_tl", "causal_br", "window", "key_len", "query_len", "bool",
                    "additive", "alibi", "softcap"], size=3, replace=False))
    if "causal_tl" in kinds:
        opt["causal"] = attn.Causal.TOP_LEFT
    if "causal_br" in kinds:
        opt["causal"] = attn.Causal.BOTTOM_RIGHT
    if "window" in kinds:
        opt["left"] = int(rng.integers(0, 40)) if rng.integers(0, 4) else None
        opt["right"] = int(rng.integers(0, 40)) if rng.integers(0, 4) or opt["left"] is None else None
        if rng.integers(0, 2):
            opt["causal"] = int(rng.choice([attn.Causal.NONE, attn.Causal.BOTTOM_RIGHT]))
    if "key_len" in kinds:
        opt["key_len"] = [int(x) for x in rng.integers(0, Sk + 1, B)]
    if "query_len" in kinds:
        opt["query_len"] = [int(x) for x in rng.integers(0, Sq + 1, B)]
    if "bool" in kinds:
        full = rng.random((B, H, Sq, Sk)) < rng.uniform(0.05, 0.9)
        full[:, :, ::5] = False  # some rows keep nothing
        lib, dense = broadcast_mask(rng, full, B, H)
        c["bool_lib"], opt["bool_mask"] = lib, dense
    if "additive" in kinds:
        full = rng.uniform(-3, 3, (B, H, Sq, Sk))
        full[rng.random(full.shape) < 0.3] = rng.choice([-np.inf, -FLT_MAX])
        full[:, :, 2::7] = -np.inf
        full = full.astype(dtype).astype(np.float64)
        lib, dense = broadcast_mask(rng, full, B, H)
        c["add_lib"], opt["add_mask"] = lib.astype(dtype), dense
    if "alibi" in kinds:
        opt["alibi"] = [2.0 ** (-8.0 * (h + 1) / H) for h in range(H)]
    if "softcap" in kinds:
        opt["softcap"] = float(rng.uniform(0.5, 10))
    c["opt"] = opt
    return c


def forward(desc, q, k, v, out=None, weights=False, lse=False):
    """attn_plan_create + execute on numpy arrays q [B,H,Sq,Dq], k [B,Hkv,Sk,Dk],
    v [B,Hkv,Sk,Dv] (any strides with a contiguous last dim). Returns
    (out, weights or None, lse or None) as new arrays of q's dtype (out may be
    passed in, e.g. a strided view, to be written)."""
    B, H, Sq, _ = q.shape
    Sk, Dv = k.shape[2], v.shape[3]
    if out is None:
        out = np.zeros((B, H, Sq, Dv), dtype=q.dtype)
    w = np.zeros((B, H, Sq, Sk), dtype=q.dtype) if weights else None
    l = np.zeros((B, H, Sq), dtype=q.dtype) if lse else None
    plan = attn.Plan(desc, q, k, v, out, w, l)
    try:
        plan.execute(q, k, v, out, w, l)
    finally:
        plan.close()
    return out, w, l


def run_ours(ctx, case, dtype):
    o = case["opt"]
    d = attn.Desc(ctx)
    try:
        if "causal" in o:
            d.set_causal(o["causal"])
        if o.get("left") is not None or o.get("right") is not None:
            d.set_window(o.get("left"), o.get("right"))
        if "key_len" in o:
            d.set_key_lengths(o["key_len"])
        if "query_len" in o:
            d.set_query_lengths(o["query_len"])
        if "bool_lib" in case:
            d.set_bool_mask(case["bool_lib"])  # numpy bool, viewed as u8 with its strides
        if "add_lib" in case:
            d.set_additive_mask(case["add_lib"])
        if "alibi" in o:
            d.set_alibi(o["alibi"])
        if "softcap" in o:
            d.set_softcap(o["softcap"])
        q, k, v = (as_layout(case[n].astype(dtype), case["bshd"]) for n in ("q", "k", "v"))
        B, H, Sq, _ = q.shape
        out = as_layout(np.zeros((B, H, Sq, v.shape[3]), dtype=dtype), case["bshd"])
        return forward(d, q, k, v, out=out, weights=True, lse=True)
    finally:
        d.close()


class OracleTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.ctx = attn.Context(threads=2)

    @classmethod
    def tearDownClass(cls):
        gc.collect()  # tensors and descriptors go before their context
        cls.ctx.close()

    def check(self, case, dtype, what):
        ref_out, ref_w, ref_lse = torch_reference(case["q"], case["k"], case["v"], **case["opt"])
        out, w, lse = run_ours(self.ctx, case, dtype)
        msg = "%s %s shapes q%s k%s opt keys %s" % (what, np.dtype(dtype).name, case["q"].shape,
                                                 case["k"].shape, sorted(case["opt"]))
        tol = TOL[dtype]
        self.assertTrue(np.all(np.isfinite(out)), msg)
        np.testing.assert_allclose(out, ref_out, err_msg="out: " + msg, **tol)
        np.testing.assert_allclose(w, ref_w, err_msg="weights: " + msg, **tol)
        dead = np.isneginf(ref_lse)
        self.assertTrue(np.array_equal(np.isneginf(lse), dead), "lse -inf rows: " + msg)
        np.testing.assert_allclose(lse[~dead], ref_lse[~dead], err_msg="lse: " + msg, **tol)
        self.assertTrue(np.all(out[dead] == 0) and np.all(w[dead] == 0), "dead rows: " + msg)
        return dead.mean()

    def test_every_mask_kind_random_cases(self):
        rng = np.random.default_rng(20240604)
        kinds = ["none", "causal_tl", "causal_br", "window", "key_len", "query_len", "bool",
                 "additive", "alibi", "softcap"]
        n = 0
        for kind in kinds:
            for dtype in DTYPES:
                for _ in range(4):
                    self.check(random_case(rng, kind, dtype), dtype, kind)
                    n += 1
        print("  %d random single-kind cases agree with torch" % n)

    def test_combinations_random_cases(self):
        rng = np.random.default_rng(7)
        n = 0
        for dtype in DTYPES:
            for _ in range(16):
                self.check(random_case(rng, "combo", dtype), dtype, "combo")
                n += 1
        # the named combination: causal + padding + ALiBi, also as bottom-right
        for causal in (attn.Causal.TOP_LEFT, attn.Causal.BOTTOM_RIGHT):
            for dtype in DTYPES:
                c = random_case(rng, "none", dtype)
                B, H, Sk = c["q"].shape[0], c["q"].shape[1], c["k"].shape[2]
                c["opt"] = dict(causal=causal, key_len=[max(1, Sk - 3 * b) for b in range(B)],
                                alibi=[0.5 / (h + 1) for h in range(H)])
                self.check(c, dtype, "causal+padding+alibi")
                n += 1
        print("  %d random combinations agree with torch" % n)

    # ---- bool-mask polarity -------------------------------------------------------

    def test_bool_polarity_true_means_attend(self):
        """One allowed key per row: out_i must be exactly v[j(i)]."""
        rng = np.random.default_rng(3)
        B, H, Sq, Sk, D = 2, 2, 9, 6, 4
        q, k, v = (rng.uniform(-1, 1, s) for s in ((B, H, Sq, D), (B, H, Sk, D), (B, H, Sk, D)))
        pick = rng.integers(0, Sk, (B, H, Sq))
        allow = np.zeros((B, H, Sq, Sk), dtype=bool)
        np.put_along_axis(allow, pick[..., None], True, axis=-1)
        d = attn.Desc(self.ctx)
        d.set_bool_mask(allow.astype(np.uint8))  # ours: True = attend
        out, _, _ = forward(d, q, k, v)
        want = np.take_along_axis(v, np.broadcast_to(pick[..., None], (B, H, Sq, D)), axis=2)
        self.assertTrue(np.array_equal(out, want))
        # Handing libattn torch.nn.MultiheadAttention's convention (True = NOT
        # allowed) without negating it attends to everything else instead.
        d.set_bool_mask((~allow).astype(np.uint8))
        flipped, _, _ = forward(d, q, k, v)
        self.assertFalse(np.allclose(flipped, want))
        d.close()

    def test_bool_polarity_against_torch_multihead_attention(self):
        """nn.MultiheadAttention (identity projections) with attn_mask = ~ours and
        key_padding_mask = (j >= key_len) equals libattn with our mask + lengths."""
        rng = np.random.default_rng(11)
        B, H, Sq, Sk, D = 2, 4, 13, 21, 8
        E = H * D
        q, k, v = (rng.uniform(-1, 1, s) for s in ((B, H, Sq, D), (B, H, Sk, D), (B, H, Sk, D)))
        key_len = [Sk, 15]
        ours = rng.random((B, H, Sq, Sk)) < 0.5  # True = attend
        ours[..., 0] = True  # every row keeps key 0 (< key_len): torch gives NaN otherwise
        d = attn.Desc(self.ctx)
        d.set_bool_mask(ours.astype(np.uint8))
        d.set_key_lengths(key_len)
        out, w, _ = forward(d, q, k, v, weights=True)
        d.close()

        mha = torch.nn.MultiheadAttention(E, H, bias=False, batch_first=True, dtype=torch.float64)
        with torch.no_grad():
            mha.in_proj_weight.copy_(torch.cat([torch.eye(E, dtype=torch.float64)] * 3))
            mha.out_proj.weight.copy_(torch.eye(E, dtype=torch.float64))
        to_bse = lambda x: torch.from_numpy(x.transpose(0, 2, 1, 3).reshape(B, -1, E).copy())  # noqa: E731
        padding = torch.arange(Sk).view(1, Sk) >= torch.tensor(key_len).view(B, 1)  # True = pad

        def run_mha(attn_mask):
            with torch.no_grad():
                o, wt = mha(to_bse(q), to_bse(k), to_bse(v), key_padding_mask=padding,
                            attn_mask=torch.from_numpy(attn_mask.reshape(B * H, Sq, Sk)),
                            need_weights=True, average_attn_weights=False)
            return o.numpy().reshape(B, Sq, H, D).transpose(0, 2, 1, 3), wt.numpy()

        torch_out, torch_w = run_mha(~ours)  # negated on purpose: torch's True = NOT allowed
        np.testing.assert_allclose(out, torch_out, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(w, torch_w, rtol=1e-10, atol=1e-12)
        unflipped, _ = run_mha(ours)  # forgetting the negation is caught
        self.assertFalse(np.allclose(np.nan_to_num(unflipped), out))

    # ---- −inf versus −FLT_MAX, stride-0 broadcast ------------------------------------------

    def test_minus_inf_and_minus_flt_max_bitwise_equal(self):
        rng = np.random.default_rng(5)
        for dtype in DTYPES:
            B, H, Sq, Sk, D = 2, 2, 40, 300, 16
            q, k, v = (rng.uniform(-1, 1, s).astype(dtype) for s in
                       ((B, H, Sq, D), (B, H, Sk, D), (B, H, Sk, D)))
            base = rng.uniform(-2, 2, (B, 1, Sq, Sk)).astype(dtype)
            masked = rng.random(base.shape) < 0.4
            masked[:, :, ::4] = True  # whole rows
            res = []
            for neg in (-np.inf, -FLT_MAX):
                m = np.where(masked, dtype(neg), base)
                d = attn.Desc(self.ctx)
                d.set_additive_mask(np.broadcast_to(m, (B, H, Sq, Sk)))  # stride 0 over heads
                res.append(forward(d, q, k, v, weights=True, lse=True))
                d.close()
            for a, b in zip(res[0], res[1]):
                self.assertEqual(a.tobytes(), b.tobytes())
            self.assertTrue(np.all(np.isneginf(res[0][2][:, :, ::4])))

    # ---- errors through the helper -----------------------------------------------------

    def test_bad_mask_shape_raises_with_message(self):
        q = np.zeros((2, 2, 5, 4))
        d = attn.Desc(self.ctx)
        d.set_bool_mask(np.ones((2, 2, 5, 6), dtype=np.uint8))  # S_k 6 ≠ 7
        with self.assertRaises(attn.AttnError) as cm:
            forward(d, q, np.zeros((2, 2, 7, 4)), np.zeros((2, 2, 7, 4)))
        self.assertEqual(cm.exception.status, attn.Status.ERR_SHAPE)
        self.assertIn("bool_mask", cm.exception.message)
        with self.assertRaises(attn.AttnError) as cm:
            d.set_key_lengths([3, -1])
        self.assertEqual(cm.exception.status, attn.Status.ERR_INVALID_ARG)
        self.assertIn("key_lengths", cm.exception.message)
        d.close()


def main():
    print("libattn %s (%s), torch %s, numpy %s" % (attn.version(), attn.library_path(),
                                                  torch.__version__, np.__version__))
    torch.set_num_threads(1)
    prog = unittest.main(argv=[sys.argv[0]] + sys.argv[2:], exit=False, verbosity=2)
    return 0 if prog.result.wasSuccessful() else 1


if __name__ == "__main__":
    sys.exit(main())

"""Tests of the attn Python package against an independent numpy reference.

Run: ATTN_LIBRARY=build/libattn.so.0 /usr/bin/python3 -m unittest discover -s bindings/python/tests
(CTest does this as `python_bindings`.)

Long-sequence variants that the library does not build yet report
ATTN_ERR_UNSUPPORTED; their tests skip with the reason "NOT BUILT YET" and
start checking automatically when the variant lands.
"""

import math
import os
import sys
import unittest

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import attn  # noqa: E402

NONE, TOP_LEFT, BOTTOM_RIGHT = attn.Causal.NONE, attn.Causal.TOP_LEFT, attn.Causal.BOTTOM_RIGHT


# ---------------------------------------------------------------------------
# Independent reference: float64 numpy, the formulas of attn.h written out.
def reference(q, k, v, causal=NONE, scale=None, dot=False, window=None, key_lengths=None,
              query_lengths=None, bool_mask=None, additive_mask=None, alibi=None, softcap=None,
              keep_extra=None):
    """q [B,H,Sq,D], k [B,Hkv,Sk,D], v [B,Hkv,Sk,Dv] -> (out, weights, lse, sum_p_abs_v)."""
    q, k, v = (np.asarray(a, dtype=np.float64) for a in (q, k, v))
    B, H, Sq, D = q.shape
    Hkv, Sk = k.shape[1], k.shape[2]
    g = H // Hkv
    k = np.repeat(k, g, axis=1)
    v = np.repeat(v, g, axis=1)
    if scale is None:
        scale = 1.0 if dot else 1.0 / math.sqrt(D)
    s = np.einsum("bhid,bhjd->bhij", q, k) * scale
    if softcap is not None:
        s = softcap * np.tanh(s / softcap)
    i = np.arange(Sq)[:, None]
    j = np.arange(Sk)[None, :]
    ia = i + (Sk - Sq if causal == BOTTOM_RIGHT else 0)   # aligned query position
    if alibi is not None:
        s = s - np.asarray(alibi, dtype=np.float64)[None, :, None, None] * np.abs(ia - j)
    if additive_mask is not None:
        s = s + np.asarray(additive_mask, dtype=np.float64)
    keep = np.ones((B, H, Sq, Sk), dtype=bool)
    if causal != NONE:
        keep &= j <= ia
    if window is not None:
        left, right = window
        if left is not None:
            keep &= j >= ia - left
        if right is not None:
            keep &= j <= ia + right
    if key_lengths is not None:
        keep &= j[None, None] < np.asarray(key_lengths)[:, None, None, None]
    if query_lengths is not None:
        keep &= i[None, None] < np.asarray(query_lengths)[:, None, None, None]
    if bool_mask is not None:
        keep &= np.asarray(bool_mask) != 0
    if keep_extra is not None:
        keep &= keep_extra.astype(bool)
    s = np.where(keep, s, -np.inf)
    m = s.max(axis=-1, keepdims=True)
    m = np.where(np.isfinite(m), m, 0.0)
    e = np.where(keep, np.exp(s - m), 0.0)
    l = e.sum(axis=-1, keepdims=True)
    p = np.where(l > 0, e / np.where(l > 0, l, 1.0), 0.0)
    out = np.einsum("bhij,bhjd->bhid", p, v)
    with np.errstate(divide="ignore"):
        lse = np.where(l[..., 0] > 0, np.log(np.where(l[..., 0] > 0, l[..., 0], 1.0)) + m[..., 0],
                       -np.inf)
    bound = np.einsum("bhij,bhjd->bhid", p, np.abs(v))
    return out, p, lse, bound


def rand(rng, shape, dtype):
    return rng.standard_normal(shape).astype(dtype)


class Case(unittest.TestCase):
    def assert_close(self, got, ref, bound, dtype, what="out"):
        """The issue's tolerance: |got-ref| <= rel*sum_j p_ij|v_j| + abs per element."""
        rel, ab = (1e-5, 1e-6) if dtype == np.float32 else (1e-12, 1e-13)
        got = np.asarray(got, dtype=np.float64)
        self.assertFalse(np.isnan(got).any(), "%s has NaN" % what)
        err = np.abs(got - ref)
        tol = rel * bound + ab
        bad = err > tol
        self.assertFalse(bad.any(), "%s: %d elements off, max err %.3g (tol there %.3g)"
                         % (what, bad.sum(), err.max(), tol.flat[np.argmax(err - tol)]))

    def assert_lse(self, got, ref, dtype):
        got = np.asarray(got, dtype=np.float64)
        fin = np.isfinite(ref)
        self.assertTrue((np.isneginf(got) == ~fin).all(), "lse -inf rows differ")
        tol = 1e-5 if dtype == np.float32 else 1e-12
        np.testing.assert_allclose(got[fin], ref[fin], rtol=tol, atol=tol)


# ---------------------------------------------------------------------------
class TestLoad(unittest.TestCase):
    def test_major_version_matches_the_package(self):
        self.assertEqual(attn.version_number() // 10000, attn.EXPECTED_MAJOR)
        major, minor, patch = (int(x) for x in attn.version().split("."))
        self.assertEqual(attn.version_number(), major * 10000 + minor * 100 + patch)

    def test_library_comes_from_attn_library_when_set(self):
        if "ATTN_LIBRARY" in os.environ:
            self.assertEqual(attn.library_path(), os.environ["ATTN_LIBRARY"])

    def run_import(self, env):
        import subprocess
        pkg = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
        code = "import sys; sys.path.insert(0, %r); import attn; print(attn.library_path())" % pkg
        return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                              text=True)

    def test_build_dir_is_searched_when_attn_library_is_unset(self):
        lib = os.path.realpath(attn.library_path())
        if not os.path.exists(lib):
            self.skipTest("library was loaded by soname, not from a build tree")
        env = {k: v for k, v in os.environ.items() if k != "ATTN_LIBRARY"}
        build = os.path.join(os.path.dirname(lib))
        env["ATTN_BUILD_DIR"] = build
        r = self.run_import(env)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(r.stdout.strip(), os.path.join(build, "libattn.so.0"))

    def test_other_major_version_refuses_to_load(self):
        import shutil
        import subprocess
        import tempfile
        cc = shutil.which("cc")
        if cc is None:
            self.skipTest("no C compiler to build a fake libattn")
        with tempfile.TemporaryDirectory() as tmp:
            src = os.path.join(tmp, "fake.c")
            with open(src, "w") as f:
                f.write("unsigned attn_version_number(void) { return 10203; }\n"
                        "const char *attn_version_string(void) { return \"1.2.3\"; }\n")
            so = os.path.join(tmp, "libattn.so.1")
            subprocess.run([cc, "-shared", "-fPIC", "-o", so, src], check=True)
            r = self.run_import(dict(os.environ, ATTN_LIBRARY=so))
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("ImportError", r.stderr)
        self.assertIn("libattn 1.2.3 (major 1); this package needs major 0", r.stderr)

    def test_context_threads(self):
        with attn.Context(threads=2) as ctx:
            self.assertEqual(ctx.num_threads, 2)


class TestExact(Case):
    CASES = [  # B, H, Hkv, Sq, Sk, D, Dv
        (1, 1, 1, 1, 1, 1, 1),
        (2, 3, 3, 7, 7, 5, 5),
        (1, 2, 2, 1, 33, 16, 16),
        (2, 4, 2, 9, 20, 8, 3),    # GQA, cross, d_v != d_k
        (1, 4, 1, 17, 17, 64, 64),  # MQA
        (1, 1, 1, 70, 40, 32, 32),  # S_q > S_k
    ]

    def run_case(self, case, dtype, causal, layout):
        B, H, Hkv, Sq, Sk, D, Dv = case
        rng = np.random.default_rng(hash((case, causal, layout)) % 2**32)
        q, k = rand(rng, (B, H, Sq, D), dtype), rand(rng, (B, Hkv, Sk, D), dtype)
        v = rand(rng, (B, Hkv, Sk, Dv), dtype)
        ro, rw, rl, bound = reference(q, k, v, causal=causal)
        if layout == "bshd":
            # [B, S, H, D] memory; the package views it as [B, H, S, D].
            qa, ka, va = (np.ascontiguousarray(a.transpose(0, 2, 1, 3)) for a in (q, k, v))
        else:
            qa, ka, va = q, k, v
        out, w, lse = attn.attention(qa, ka, va, causal=causal, layout=layout,
                                     return_weights=True, return_lse=True)
        self.assertEqual(out.dtype, dtype)
        if layout == "bshd":
            self.assertEqual(out.shape, (B, Sq, H, Dv))
            out = out.transpose(0, 2, 1, 3)
        self.assert_close(out, ro, bound, dtype)
        self.assert_close(w, rw, np.ones_like(rw), dtype, "weights")
        self.assert_lse(lse, rl, dtype)

    def test_matches_reference_over_shapes_dtypes_causal_layouts(self):
        for case in self.CASES:
            for dtype in (np.float32, np.float64):
                for causal in (NONE, TOP_LEFT, BOTTOM_RIGHT):
                    for layout in ("bhsd", "bshd"):
                        with self.subTest(case=case, dtype=dtype, causal=causal, layout=layout):
                            self.run_case(case, dtype, causal, layout)

    def test_fully_masked_rows_give_zero_and_minus_inf_never_nan(self):
        rng = np.random.default_rng(1)
        q, k, v = rand(rng, (1, 2, 6, 4), np.float32), rand(rng, (1, 2, 3, 4), np.float32), \
            rand(rng, (1, 2, 3, 4), np.float32)
        out, w, lse = attn.attention(q, k, v, causal="bottom_right", return_weights=True,
                                     return_lse=True)
        # S_q - S_k = 3 first rows keep no key.
        self.assertTrue((out[:, :, :3] == 0).all())
        self.assertTrue((w[:, :, :3] == 0).all())
        self.assertTrue(np.isneginf(lse[:, :, :3]).all())
        self.assertFalse(np.isnan(out).any() or np.isnan(w).any() or np.isnan(lse).any())

    def test_scale_and_dot_score(self):
        rng = np.random.default_rng(2)
        q, k, v = (rand(rng, (2, 2, 5, 8), np.float64) for _ in range(3))
        ro, _, _, b = reference(q, k, v, scale=0.3)
        self.assert_close(attn.attention(q, k, v, scale=0.3), ro, b, np.float64)
        ro, _, _, b = reference(q, k, v, dot=True)
        self.assert_close(attn.attention(q, k, v, score="dot"), ro, b, np.float64)

    def test_results_do_not_depend_on_thread_count(self):
        rng = np.random.default_rng(3)
        q, k, v = (rand(rng, (2, 4, 130, 32), np.float32) for _ in range(3))
        with attn.Context(threads=1) as c1, attn.Context(threads=2) as c2:
            o1 = attn.attention(q, k, v, causal=True, ctx=c1)
            o2 = attn.attention(q, k, v, causal=True, ctx=c2)
        self.assertTrue(np.array_equal(o1, o2))


class TestMasks(Case):
    def setUp(self):
        rng = np.random.default_rng(4)
        self.B, self.H, self.Sq, self.Sk, self.D = 2, 3, 9, 12, 8
        self.q = rand(rng, (self.B, self.H, self.Sq, self.D), np.float32)
        self.k = rand(rng, (self.B, self.H, self.Sk, self.D), np.float32)
        self.v = rand(rng, (self.B, self.H, self.Sk, self.D), np.float32)
        self.rng = rng

    def check(self, ref_kw, **kw):
        ro, rw, rl, b = reference(self.q, self.k, self.v, **ref_kw)
        out, w, lse = attn.attention(self.q, self.k, self.v, return_weights=True,
                                     return_lse=True, **kw)
        self.assert_close(out, ro, b, np.float32)
        self.assert_close(w, rw, np.ones_like(rw), np.float32, "weights")
        self.assert_lse(lse, rl, np.float32)

    def test_key_and_query_lengths(self):
        self.check(dict(key_lengths=[5, 12]), key_lengths=[5, 12])
        self.check(dict(query_lengths=[9, 4]), query_lengths=np.array([9, 4]))
        self.check(dict(key_lengths=[0, 3], causal=TOP_LEFT), key_lengths=[0, 3], causal=True)

    def test_bool_mask_true_means_attend_and_broadcasts(self):
        m = self.rng.random((1, 1, self.Sq, self.Sk)) < 0.6
        self.check(dict(bool_mask=m), bool_mask=m)                       # numpy bool
        mu = (self.rng.random((self.B, self.H, self.Sq, self.Sk)) < 0.3).astype(np.uint8)
        self.check(dict(bool_mask=mu), bool_mask=mu)                     # uint8

    def test_additive_mask_alibi_softcap_window(self):
        am = self.rng.standard_normal((self.B, 1, self.Sq, self.Sk)).astype(np.float32)
        am[0, 0, 2, :] = -np.inf
        self.check(dict(additive_mask=am), additive_mask=am)
        slopes = [0.5, 0.25, 0.125]
        self.check(dict(alibi=slopes, causal=BOTTOM_RIGHT), alibi=slopes, causal="bottom_right")
        self.check(dict(softcap=1.5), softcap=1.5)
        self.check(dict(window=(2, 1)), window=(2, 1))
        self.check(dict(window=(3, None), causal=TOP_LEFT), window=(3, None), causal=True)

    def test_desc_keeps_borrowed_arrays_alive(self):
        desc = attn.Desc(key_lengths=np.array([3, 7]))   # no other reference to the array
        import gc
        gc.collect()
        out = np.empty((self.B, self.H, self.Sq, self.D), np.float32)
        plan = attn.Plan(desc, self.q, self.k, self.v, out)
        desc.set_key_lengths([1, 1])    # replaces the desc's array; the plan keeps the old one
        gc.collect()
        plan.execute(self.q, self.k, self.v, out)
        ro, _, _, b = reference(self.q, self.k, self.v, key_lengths=[3, 7])
        self.assert_close(out, ro, b, np.float32)


class TestNoCopy(Case):
    def test_tensor_points_at_the_array(self):
        a = np.zeros((2, 3, 4, 5), np.float32)
        t = attn.Tensor(attn.default_context(), a)
        self.assertEqual(t.data_pointer, a.ctypes.data)
        view = a.transpose(0, 2, 1, 3)
        tv = attn.Tensor(attn.default_context(), view)
        self.assertEqual(tv.data_pointer, a.ctypes.data)
        self.assertEqual(tv.strides, (60, 5, 20, 1))

    def test_out_written_in_place_into_a_strided_view(self):
        rng = np.random.default_rng(5)
        B, S, H, D = 2, 11, 3, 8
        q, k, v = (rand(rng, (B, S, H, D), np.float64) for _ in range(3))
        buf = np.full((B, S, H, D + 3), 7.0)   # out rows padded: a non-contiguous view
        out = buf[..., :D]
        res = attn.attention(q, k, v, causal=True, layout="bshd", out=out)
        self.assertIs(res, out)
        self.assertTrue(np.shares_memory(res, buf))
        self.assertTrue((buf[..., D:] == 7.0).all(), "padding beyond the view was written")
        t = lambda a: a.transpose(0, 2, 1, 3)  # noqa: E731
        ro, _, _, b = reference(t(q), t(k), t(v), causal=TOP_LEFT)
        self.assert_close(t(out), ro, b, np.float64)

    def test_plan_executes_many_times_on_new_arrays(self):
        rng = np.random.default_rng(6)
        shape = (1, 2, 16, 8)
        q0, k0, v0 = (rand(rng, shape, np.float32) for _ in range(3))
        out = np.empty(shape, np.float32)
        desc = attn.Desc(causal="top_left")
        plan = attn.Plan(desc, q0, k0, v0, out)
        self.assertGreaterEqual(plan.workspace_size, 0)
        for _ in range(3):
            q, k, v = (rand(rng, shape, np.float32) for _ in range(3))
            out2 = np.empty(shape, np.float32)
            plan.execute(q, k, v, out2)
            self.assertEqual(plan._tensors[3].data_pointer, out2.ctypes.data)
            ro, _, _, b = reference(q, k, v, causal=TOP_LEFT)
            self.assert_close(out2, ro, b, np.float32)


class TestErrors(unittest.TestCase):
    def setUp(self):
        rng = np.random.default_rng(7)
        self.q = rand(rng, (1, 2, 5, 4), np.float32)

    def expect(self, status, name_in_message, fn, *a, **kw):
        with self.assertRaises(attn.AttnError) as cm:
            fn(*a, **kw)
        e = cm.exception
        self.assertEqual(e.status, status, str(e))
        self.assertIn(name_in_message, e.message)
        self.assertIn(e.message, str(e))
        self.assertIn(e.status_text, str(e))
        return e

    def test_unsupported_numpy_dtype_is_a_type_error(self):
        with self.assertRaisesRegex(TypeError, "q: dtype int64"):
            attn.attention(self.q.astype(np.int64), self.q, self.q)

    def test_dtype_mismatch_names_the_argument(self):
        self.expect(attn.Status.ERR_DTYPE, "k:", attn.attention, self.q,
                    self.q.astype(np.float64), self.q)

    def test_shape_mismatch_names_the_argument(self):
        k = np.zeros((2, 2, 5, 4), np.float32)
        self.expect(attn.Status.ERR_SHAPE, "k:", attn.attention, self.q, k, k)

    def test_non_contiguous_last_axis_is_rejected_before_c(self):
        wide = np.zeros((1, 2, 5, 8), np.float32)
        with self.assertRaisesRegex(ValueError, "q: the last axis must be contiguous"):
            attn.attention(wide[..., ::2], self.q, self.q)

    def test_negative_strides_are_rejected(self):
        with self.assertRaisesRegex(ValueError, "negative"):
            attn.attention(self.q[:, :, ::-1], self.q, self.q)

    def test_read_only_out_is_rejected_and_untouched(self):
        out = np.full_like(self.q, 3.0)
        out.flags.writeable = False
        with self.assertRaisesRegex(ValueError, "out: the array is read-only"):
            attn.attention(self.q, self.q, self.q, out=out)
        self.assertTrue((out == 3.0).all())

    def test_bad_scalar_and_enum_values(self):
        self.expect(attn.Status.ERR_INVALID_ARG, "scale", attn.Desc().set_scale, float("nan"))
        self.expect(attn.Status.ERR_INVALID_ARG, "variant", attn.Desc().set_variant, 99)
        with self.assertRaisesRegex(ValueError, "unknown value 'sideways'"):
            attn.Desc(causal="sideways")
        with self.assertRaisesRegex(TypeError, "unknown descriptor setting 'colour'"):
            attn.attention(self.q, self.q, self.q, colour=1)
        # No context exists to carry a message: the status text stands in.
        with self.assertRaises(attn.AttnError) as cm:
            attn.Context(threads=-1)
        self.assertEqual(cm.exception.status, attn.Status.ERR_INVALID_ARG)
        self.assertEqual(cm.exception.message, "")
        self.assertIn("attn_context_create", str(cm.exception))

    def test_error_leaves_out_untouched(self):
        out = np.full_like(self.q, 5.0)
        self.expect(attn.Status.ERR_INVALID_ARG, "key_lengths", attn.attention, self.q, self.q,
                    self.q, out=out, key_lengths=[9])
        self.assertTrue((out == 5.0).all())

    def test_plan_execute_with_other_shapes_is_a_mismatch(self):
        out = np.zeros_like(self.q)
        plan = attn.Plan(attn.Desc(), self.q, self.q, self.q, out)
        q2 = np.zeros((1, 2, 6, 4), np.float32)
        out2 = np.full_like(q2, 9.0)
        self.expect(attn.Status.ERR_MISMATCH, "q:", plan.execute, q2, q2, q2, out2)
        self.assertTrue((out2 == 9.0).all())
        self.expect(attn.Status.ERR_MISMATCH, "weights", plan.execute, self.q, self.q, self.q,
                    out, np.zeros((1, 2, 5, 5), np.float32))


class TestTorch(Case):
    """Cross-check with PyTorch's attention (skipped when torch is missing)."""

    @classmethod
    def setUpClass(cls):
        try:
            import torch
            import torch.nn.functional as F
        except ImportError as e:   # pragma: no cover
            raise unittest.SkipTest("PyTorch not importable: %s" % e)
        cls.torch = torch
        cls.sdpa = getattr(F, "scaled_dot_product_attention", None)
        cls.sdpa_private = getattr(F, "_scaled_dot_product_attention", None)

    def torch_attention(self, q, k, v, causal=False, mask=None):
        torch = self.torch
        tq, tk, tv = (torch.from_numpy(a) for a in (q, k, v))
        tm = None if mask is None else torch.from_numpy(mask)
        if self.sdpa is not None:            # torch >= 2.0
            return self.sdpa(tq, tk, tv, attn_mask=tm, is_causal=causal).numpy()
        if self.sdpa_private is not None and (tm is None or not causal):  # torch 1.13
            return self.sdpa_private(tq, tk, tv, tm, 0.0, False, causal)[0].numpy()
        s = tq @ tk.transpose(-2, -1) / math.sqrt(q.shape[-1])
        if causal:
            s = s.masked_fill(~torch.ones(s.shape[-2:], dtype=torch.bool).tril(), -math.inf)
        if tm is not None:
            s = s.masked_fill(~tm, -math.inf)
        return (torch.softmax(s, dim=-1) @ tv).numpy()

    def test_matches_torch(self):
        rng = np.random.default_rng(8)
        for dtype in (np.float32, np.float64):
            for causal in (False, True):
                q, k, v = (rand(rng, (2, 4, 33, 16), dtype) for _ in range(3))
                want = self.torch_attention(q, k, v, causal=causal)
                got = attn.attention(q, k, v, causal=causal)
                tol = 2e-5 if dtype == np.float32 else 1e-12
                np.testing.assert_allclose(got, want, rtol=tol, atol=tol)

    def test_bool_mask_matches_torch(self):
        rng = np.random.default_rng(9)
        q, k, v = (rand(rng, (1, 2, 10, 8), np.float32) for _ in range(3))
        mask = rng.random((10, 10)) < 0.7
        mask[:, 0] = True   # torch gives NaN for empty rows; keep one key per row
        want = self.torch_attention(q, k, v, mask=mask)
        got = attn.attention(q, k, v, bool_mask=mask[None, None])
        np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-5)


# ---------------------------------------------------------------------------
class TestVariants(Case):
    """Long-sequence variants. Each test skips while the library reports
    ATTN_ERR_UNSUPPORTED ("NOT BUILT YET") and checks the variant against an
    independent reference once it lands."""

    def run_or_skip(self, fn):
        try:
            return fn()
        except attn.UnsupportedError as e:
            self.skipTest("NOT BUILT YET (libattn reports UNSUPPORTED: %s)" % e.message)

    def inputs(self, shape, seed, dtype=np.float32):
        rng = np.random.default_rng(seed)
        return [rand(rng, shape, dtype) for _ in range(3)]

    def test_block_sparse_matches_masked_reference(self):
        q, k, v = self.inputs((1, 2, 20, 8), 10)
        b = 4
        rng = np.random.default_rng(11)
        layout = (rng.random((2, 5, 5)) < 0.5).astype(np.uint8)
        layout[:, :, 0] = 1
        out = self.run_or_skip(lambda: attn.attention(
            q, k, v, variant="block_sparse", block_size=b, block_layout=layout))
        keep = np.repeat(np.repeat(layout, b, axis=1), b, axis=2)[None]
        ro, _, _, bound = reference(q, k, v, keep_extra=keep)
        self.assert_close(out, ro, bound, np.float32)

    def test_longformer_matches_window_plus_global_reference(self):
        q, k, v = self.inputs((1, 2, 24, 8), 12)
        glob = [0, 13]
        out = self.run_or_skip(lambda: attn.attention(
            q, k, v, variant="longformer", window=(3, 3), global_tokens=glob))
        i, j = np.arange(24)[:, None], np.arange(24)[None, :]
        keep = (np.abs(i - j) <= 3) | np.isin(i, glob) | np.isin(j, glob)
        ro, _, _, bound = reference(q, k, v, keep_extra=keep)
        self.assert_close(out, ro, bound, np.float32)

    def test_bigbird_matches_reference_on_its_own_layout(self):
        q, k, v = self.inputs((1, 2, 32, 8), 13)
        b, wb, gb, rb = 4, 1, 1, 1
        desc = attn.Desc(variant="bigbird", block_size=b, bigbird=(wb, gb, rb, 42))
        out = np.empty_like(q)

        def run():
            plan = attn.Plan(desc, q, k, v, out)
            plan.execute(q, k, v, out)
            return plan
        plan = self.run_or_skip(run)
        nb = 8
        layout = plan.block_layout().reshape(2, nb, nb)
        qb, kb = np.arange(nb)[:, None], np.arange(nb)[None, :]
        must = (np.abs(qb - kb) <= wb) | (kb < gb) | (qb < gb)
        self.assertTrue((layout[:, must] != 0).all(), "window/global blocks missing")
        keep = np.repeat(np.repeat(layout, b, axis=1), b, axis=2)[None] != 0
        ro, _, _, bound = reference(q, k, v, keep_extra=keep)
        self.assert_close(out, ro, bound, np.float32)
        again = plan.block_layout()   # deterministic for the seed
        self.assertTrue(np.array_equal(again.reshape(2, nb, nb), layout))

    def test_swin_unshifted_matches_per_window_reference(self):
        gh, gw, w = 4, 6, 2
        q, k, v = self.inputs((1, 2, gh * gw, 8), 14)
        out = self.run_or_skip(lambda: attn.attention(q, k, v, variant="swin",
                                                      swin=(gh, gw, w, 0)))
        y, x = np.divmod(np.arange(gh * gw), gw)
        cell = (y // w) * (gw // w) + x // w
        keep = cell[:, None] == cell[None, :]
        ro, _, _, bound = reference(q, k, v, keep_extra=keep)
        self.assert_close(out, ro, bound, np.float32)

    def test_linear_elu_matches_feature_map_formula(self):
        q, k, v = self.inputs((1, 2, 16, 8), 15, np.float64)
        out = self.run_or_skip(lambda: attn.attention(q, k, v, variant="linear_elu"))
        phi = lambda x: np.where(x > 0, x + 1.0, np.exp(x))  # noqa: E731  elu(x) + 1
        fq, fk = phi(q), phi(k)
        num = np.einsum("bhid,bhjd,bhjf->bhif", fq, fk, v)
        den = np.einsum("bhid,bhjd->bhi", fq, fk)[..., None]
        np.testing.assert_allclose(out, num / den, rtol=1e-10, atol=1e-12)

    def test_performer_is_deterministic_for_a_seed(self):
        q, k, v = self.inputs((1, 2, 16, 8), 16)
        run = lambda: attn.attention(q, k, v, variant="performer",  # noqa: E731
                                     features=(64, 7))
        a = self.run_or_skip(run)
        self.assertTrue(np.isfinite(a).all())
        self.assertTrue(np.array_equal(a, run()))

    def test_linformer_with_given_projections_is_exact_attention_on_them(self):
        q, k, v = self.inputs((1, 2, 20, 8), 17, np.float64)
        rng = np.random.default_rng(18)
        e, f = rng.standard_normal((5, 20)), rng.standard_normal((5, 20))
        out = self.run_or_skip(lambda: attn.attention(
            q, k, v, variant="linformer", lowrank=(5, 1), lowrank_proj=(e, f)))
        kp = np.einsum("rs,bhsd->bhrd", e, k)
        vp = np.einsum("rs,bhsd->bhrd", f, v)
        ro, _, _, bound = reference(q, kp, vp)
        self.assert_close(out, ro, bound, np.float64)


if __name__ == "__main__":
    unittest.main()

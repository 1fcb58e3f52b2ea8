"""Tests of the attn Python package against an independent numpy reference.

Run: ATTN_LIBRARY=build/libattn.so.0 /usr/bin/python3 -m unittest discover -s bindings/python/tests
(CTest does this as `python_bindings`.)

Every variant on main is checked against its own independent reference
(UNSUPPORTED is a failure, not a skip); PyTorch cross-checks skip only when
torch does not import.
"""

import math
import os
import sys
import unittest

import numpy as np

if not os.environ.get("ATTN_TEST_INSTALLED"):   # else: the pip-installed package
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
        pkg = os.path.dirname(os.path.dirname(os.path.abspath(attn.__file__)))
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


class TestHalf(Case):
    """float16 arrays and bfloat16 (uint16 tagged by attn.as_bf16) against the
    float64 reference on the same rounded inputs: |out - ref| <= c*u*sum_j p|v|
    with u = 2^-8, c = 2 (bf16: P rounded for P.V, out rounded once) and
    u = 2^-11, c = 1 (f16: exact in f32, out rounded once), as in attn.h."""

    def inputs(self, rng, shape_q, shape_k):
        q = rng.uniform(-3, 3, shape_q).astype(np.float32)
        k = rng.uniform(-1, 1, shape_k).astype(np.float32)
        v = rng.uniform(-1, 1, shape_k).astype(np.float32)
        return q, k, v

    def check(self, got, ref, bound, tol):
        err = np.abs(np.asarray(got, np.float64) - ref)
        self.assertTrue(np.all(err <= tol * bound + 1e-6), "max err %g" % err.max())

    def test_bf16_round_trip_is_round_to_nearest_even(self):
        x = np.array([1.0, 1.00390625, 1.01171875, -2.5, 1.0048828125, np.inf, 0.0], np.float32)
        # 1 + 2^-8 is a tie: even (1.0); 1 + 3*2^-8 is a tie: even (1 + 2^-6);
        # 1 + 2^-8 + 2^-11 is above the tie: up (1 + 2^-7)
        self.assertEqual(attn.from_bf16(attn.to_bf16(x)).tolist(),
                         [1.0, 1.0, 1.015625, -2.5, 1.0078125, np.inf, 0.0])
        self.assertTrue(np.isnan(attn.from_bf16(attn.to_bf16(np.float32(np.nan)))))
        with self.assertRaises(TypeError):
            attn.as_bf16(np.zeros(3, np.float32))

    def test_bf16_matches_reference_on_rounded_inputs(self):
        rng = np.random.default_rng(15)
        for causal in (NONE, TOP_LEFT):
            for (H, Hkv) in ((4, 4), (4, 2)):
                q, k, v = self.inputs(rng, (2, H, 33, 16), (2, Hkv, 40, 16))
                qb, kb, vb = attn.to_bf16(q), attn.to_bf16(k), attn.to_bf16(v)
                ro, rw, rl, bound = reference(attn.from_bf16(qb), attn.from_bf16(kb),
                                              attn.from_bf16(vb), causal=causal)
                out, w, lse = attn.attention(qb, kb, vb, causal=causal, return_weights=True,
                                             return_lse=True)
                self.assertIsInstance(out, attn.BF16Array)
                self.assertEqual(w.dtype, np.float32)
                self.assertEqual(lse.dtype, np.float32)
                self.check(attn.from_bf16(out), ro, bound, 2 * 2.0**-8)
                self.check(w, rw, np.ones_like(rw), 1e-4)
                # f32 out from bf16 inputs
                o32 = np.empty(ro.shape, np.float32)
                attn.attention(qb, kb, vb, causal=causal, out=o32)
                self.check(o32, ro, bound, 2 * 2.0**-8)

    def test_f16_matches_reference_on_rounded_inputs(self):
        rng = np.random.default_rng(16)
        q, k, v = (a.astype(np.float16) for a in self.inputs(rng, (1, 2, 20, 8), (1, 2, 30, 8)))
        for layout in ("bhsd", "bshd"):
            ro, _, _, bound = reference(q, k, v, causal=TOP_LEFT)
            args = (q, k, v) if layout == "bhsd" else \
                tuple(np.ascontiguousarray(a.transpose(0, 2, 1, 3)) for a in (q, k, v))
            out = attn.attention(*args, causal=True, layout=layout)
            self.assertEqual(out.dtype, np.float16)
            if layout == "bshd":
                out = out.transpose(0, 2, 1, 3)
            self.check(out, ro, bound, 2.0**-11)

    def test_torch_bfloat16_and_float16_tensors(self):
        try:
            import torch
        except ImportError:
            self.skipTest("torch does not import")
        rng = np.random.default_rng(17)
        q, k, v = self.inputs(rng, (1, 2, 12, 8), (1, 2, 20, 8))
        for tdt, tol in ((torch.bfloat16, 2 * 2.0**-8), (torch.float16, 2.0**-11)):
            tq, tk, tv = (torch.from_numpy(a).to(tdt) for a in (q, k, v))
            ro, _, _, bound = reference(*(t.to(torch.float64).numpy() for t in (tq, tk, tv)),
                                        causal=TOP_LEFT)
            out = attn.attention(tq, tk, tv, causal=True)
            self.assertIsInstance(out, torch.Tensor)
            self.assertEqual(out.dtype, tdt)
            self.check(out.to(torch.float64).numpy(), ro, bound, tol)

    def test_untagged_uint16_and_mixed_dtypes_are_rejected(self):
        q = np.zeros((1, 1, 4, 8), np.uint16)
        with self.assertRaisesRegex(TypeError, "as_bf16"):
            attn.attention(q, q, q)
        qb = attn.as_bf16(q)
        with self.assertRaises(attn.AttnError) as cm:
            attn.attention(qb, q.astype(np.float16), qb)
        self.assertEqual(cm.exception.status, attn.Status.ERR_DTYPE)
        self.assertIn("k:", cm.exception.message)
        self.assertIn("q is bf16", cm.exception.message)


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
# Long-sequence variants (approx.h). Every reference below is written from the
# header's definitions with numpy, never from the library's output (BigBird's
# random blocks are recomputed from the documented splitmix64 recipe).

def band_keep(S, left, right):
    i, j = np.arange(S)[:, None], np.arange(S)[None, :]
    return (j >= i - left) & (j <= i + right)


def blocks_to_keep(layout, b, Sq, Sk):
    """[H, nq, nk] block layout -> dense [1, H, Sq, Sk] keep mask."""
    keep = np.repeat(np.repeat(np.asarray(layout) != 0, b, axis=1), b, axis=2)
    return keep[None, :, :Sq, :Sk]


_M64 = 2**64 - 1


def _mix(z):
    z ^= z >> 30
    z = (z * 0xBF58476D1CE4E5B9) & _M64
    z ^= z >> 27
    z = (z * 0x94D049BB133111EB) & _M64
    return z ^ (z >> 31)


def bigbird_layout(H, nq, nk, wb, gb, rb, seed):
    """BigBird's layout as approx.h defines it."""
    lay = np.zeros((H, nq, nk), np.uint8)
    for h in range(H):
        for r in range(nq):
            if r < gb:
                lay[h, r] = 1
                continue
            for c in range(nk):
                lay[h, r, c] = abs(c - r) <= wb or c < gb
            s = _mix(seed ^ _mix(h * nq + r + 1))
            for _ in range(rb):
                free = [c for c in range(nk) if not lay[h, r, c]]
                n = len(free)
                if n == 0:
                    break
                while True:
                    s = (s + 0x9E3779B97F4A7C15) & _M64
                    u = _mix(s)
                    if u >= 2**64 % n:
                        break
                lay[h, r, free[u % n]] = 1
    return lay


def swin_reference_terms(gh, gw, w, shift, table=None, H=1):
    """Swin keep mask [S, S] and relative-position bias [1, H, S, S] from the
    definition: pad to multiples of w, roll by -shift, w x w windows, Swin's
    three cuts per axis when shifted, bias indexed by in-window offsets."""
    S = gh * gw
    Ph, Pw = -(-gh // w) * w, -(-gw // w) * w
    y, x = np.divmod(np.arange(S), gw)
    ry, rx = (y - shift) % Ph, (x - shift) % Pw     # position after the roll

    def cut(r, P):
        if shift == 0:
            return np.zeros_like(r)
        return np.where(r < P - w, 0, np.where(r < P - shift, 1, 2))
    tag = np.stack([ry // w, rx // w, cut(ry, Ph), cut(rx, Pw)], axis=1)
    keep = (tag[:, None, :] == tag[None, :, :]).all(axis=2)
    bias = None
    if table is not None:
        dy = (ry % w)[:, None] - (ry % w)[None, :]
        dx = (rx % w)[:, None] - (rx % w)[None, :]
        idx = (dy + w - 1) * (2 * w - 1) + dx + w - 1
        bias = np.asarray(table, np.float64)[idx].transpose(2, 0, 1)[None]   # [1, H, S, S]
    return keep, bias


def elu1(x):
    return np.where(x > 0, x + 1.0, np.exp(np.minimum(x, 0)))


def linear_reference(q, k, v, causal=False, key_lengths=None):
    """out_i = sum_j (phi(q_i).phi(k_j)) v_j / sum_j phi(q_i).phi(k_j), phi = elu+1,
    over kept keys, written as the dense quadratic form (no associativity)."""
    q, k, v = (np.asarray(a, np.float64) for a in (q, k, v))
    g = q.shape[1] // k.shape[1]
    fk, vv = np.repeat(elu1(k), g, axis=1), np.repeat(v, g, axis=1)
    a = np.einsum("bhid,bhjd->bhij", elu1(q), fk)
    Sq, Sk = q.shape[2], k.shape[2]
    keep = np.ones((q.shape[0], 1, Sq, Sk), bool)
    if causal:
        keep &= np.tril(np.ones((Sq, Sk), bool))
    if key_lengths is not None:
        keep &= np.arange(Sk)[None, None, None, :] < np.asarray(key_lengths)[:, None, None, None]
    a = np.where(keep, a, 0.0)
    den = a.sum(-1, keepdims=True)
    return np.einsum("bhij,bhjd->bhid", a, vv) / np.where(den > 0, den, 1.0)


class TestVariants(Case):
    """Each variant against an independent reference; UNSUPPORTED is a failure."""

    def inputs(self, shape, seed, dtype=np.float32, kv_heads=None):
        rng = np.random.default_rng(seed)
        kshape = shape if kv_heads is None else (shape[0], kv_heads) + tuple(shape[2:])
        return rand(rng, shape, dtype), rand(rng, kshape, dtype), rand(rng, kshape, dtype)

    def check_all(self, q, k, v, ref_kw, dtype=np.float32, weights=True, **kw):
        ro, rw, rl, bound = reference(q, k, v, **ref_kw)
        if weights:
            out, w, lse = attn.attention(q, k, v, return_weights=True, return_lse=True, **kw)
            self.assert_close(w, rw, np.ones_like(rw), dtype, "weights")
        else:
            out, lse = attn.attention(q, k, v, return_lse=True, **kw)
        self.assert_close(out, ro, bound, dtype)
        self.assert_lse(lse, rl, dtype)

    # -- block-sparse -------------------------------------------------------------
    def test_block_sparse_matches_dense_keep_mask_reference(self):
        b = 4
        for S, H, layout_heads, causal in ((20, 2, 2, NONE), (22, 2, 1, TOP_LEFT),
                                           (13, 3, 3, BOTTOM_RIGHT)):
            with self.subTest(S=S, H=H, layout_heads=layout_heads, causal=causal):
                q, k, v = self.inputs((2, H, S, 8), S + H)
                nb = -(-S // b)
                rng = np.random.default_rng(S)
                layout = (rng.random((layout_heads, nb, nb)) < 0.5).astype(np.uint8)
                layout[:, 1, :] = 0                    # a query block that sees nothing
                keep = np.broadcast_to(blocks_to_keep(layout, b, S, S), (1, H, S, S))
                self.check_all(q, k, v, dict(keep_extra=keep, causal=causal),
                               variant="block_sparse", block_size=b, block_layout=layout,
                               causal=causal)

    def test_block_sparse_layout_is_read_at_every_execute_and_read_back(self):
        q, k, v = self.inputs((1, 1, 16, 8), 21)
        layout = np.ones((1, 4, 4), np.uint8)
        desc = attn.Desc(variant="block_sparse", block_size=4, block_layout=layout)
        out = np.empty_like(q)
        plan = attn.Plan(desc, q, k, v, out)
        layout[0] = np.eye(4, dtype=np.uint8)          # contents change: the plan sees it
        plan.execute(q, k, v, out)
        self.assertTrue(np.array_equal(plan.block_layout().reshape(1, 4, 4), layout))
        ro, _, _, bound = reference(q, k, v, keep_extra=blocks_to_keep(layout, 4, 16, 16))
        self.assert_close(out, ro, bound, np.float32)

    def test_block_sparse_without_layout_and_bad_layout_shape(self):
        q = np.zeros((1, 1, 8, 4), np.float32)
        with self.assertRaises(attn.AttnError) as cm:
            attn.attention(q, q, q, variant="block_sparse", block_size=4)
        self.assertEqual(cm.exception.status, attn.Status.ERR_NULL_ARG)
        with self.assertRaises(attn.AttnError) as cm:
            attn.attention(q, q, q, variant="block_sparse", block_size=4,
                           block_layout=np.ones((1, 3, 2), np.uint8))
        self.assertEqual(cm.exception.status, attn.Status.ERR_SHAPE)

    # -- Longformer ---------------------------------------------------------------
    def test_longformer_matches_band_plus_global_reference(self):
        S = 24
        for left, right, glob, causal, lengths in ((3, 3, [0, 13], NONE, None),
                                                   (4, 1, [5], TOP_LEFT, None),
                                                   (2, 2, [1, 7, 23], NONE, [24, 15])):
            with self.subTest(left=left, right=right, glob=glob, causal=causal):
                q, k, v = self.inputs((2, 2, S, 8), left + 10 * right, kv_heads=1)
                i, j = np.arange(S)[:, None], np.arange(S)[None, :]
                keep = band_keep(S, left, right) | np.isin(i, glob) | np.isin(j, glob)
                kw = dict(variant="longformer", window=(left, right), global_tokens=glob,
                          causal=causal)
                ref = dict(keep_extra=keep, causal=causal)
                if lengths is not None:
                    kw["key_lengths"] = ref["key_lengths"] = lengths
                self.check_all(q, k, v, ref, **kw)

    def test_longformer_block_layout_readback_covers_the_band(self):
        S, b = 32, 8
        q, k, v = self.inputs((1, 1, S, 4), 22)
        desc = attn.Desc(variant="longformer", window=(2, 2), global_tokens=[9],
                         block_size=b)
        out = np.empty_like(q)
        plan = attn.Plan(desc, q, k, v, out)
        i, j = np.arange(S)[:, None], np.arange(S)[None, :]
        keep = band_keep(S, 2, 2) | (i == 9) | (j == 9)
        want = keep.reshape(S // b, b, S // b, b).any(axis=(1, 3))
        self.assertTrue(np.array_equal(plan.block_layout().reshape(S // b, S // b), want))

    # -- BigBird ------------------------------------------------------------------
    def test_bigbird_layout_follows_the_documented_generator(self):
        for (S, b, wb, gb, rb, seed) in ((32, 4, 1, 1, 2, 42), (40, 8, 0, 0, 1, 7),
                                         (30, 4, 1, 2, 10, 2**63 + 5)):
            with self.subTest(S=S, b=b, wb=wb, gb=gb, rb=rb, seed=seed):
                H = 3
                q, k, v = self.inputs((1, H, S, 8), S + rb)
                desc = attn.Desc(variant="bigbird", block_size=b, bigbird=(wb, gb, rb, seed))
                out = np.empty_like(q)
                plan = attn.Plan(desc, q, k, v, out)
                nb = -(-S // b)
                got = plan.block_layout().reshape(H, nb, nb)
                self.assertTrue(np.array_equal(got, bigbird_layout(H, nb, nb, wb, gb, rb, seed)))

    def test_bigbird_output_matches_reference_on_its_read_back_layout(self):
        S, b, H = 36, 4, 2
        for causal in (NONE, TOP_LEFT):
            with self.subTest(causal=causal):
                q, k, v = self.inputs((2, H, S, 8), 13 + causal)
                desc = attn.Desc(variant="bigbird", block_size=b, bigbird=(1, 1, 2, 99),
                                 causal=causal, key_lengths=[S, 21])
                out = np.empty_like(q)
                lse = np.empty(q.shape[:3], q.dtype)
                plan = attn.Plan(desc, q, k, v, out, lse=lse)
                plan.execute(q, k, v, out, lse=lse)
                nb = -(-S // b)
                layout = plan.block_layout().reshape(H, nb, nb)
                ro, _, rl, bound = reference(q, k, v, causal=causal, key_lengths=[S, 21],
                                             keep_extra=blocks_to_keep(layout, b, S, S))
                self.assert_close(out, ro, bound, np.float32)
                self.assert_lse(lse, rl, np.float32)

    def test_bigbird_seed_changes_random_blocks_only(self):
        q, k, v = self.inputs((1, 1, 64, 4), 14)

        def layout(seed):
            desc = attn.Desc(variant="bigbird", block_size=4, bigbird=(1, 1, 2, seed))
            return attn.Plan(desc, q, k, v, np.empty_like(q)).block_layout()
        self.assertTrue(np.array_equal(layout(5), layout(5)))
        self.assertFalse(np.array_equal(layout(5), layout(6)))

    # -- Swin -----------------------------------------------------------------------
    def test_swin_matches_per_window_reference_with_shift_padding_and_bias(self):
        cases = [(4, 6, 2, 0), (4, 6, 2, 1), (6, 6, 3, 1), (5, 7, 3, 1), (8, 8, 4, 2),
                 (3, 3, 4, 2)]   # a grid smaller than one window
        for gh, gw, w, shift in cases:
            for with_bias in (False, True):
                with self.subTest(grid=(gh, gw), window=w, shift=shift, bias=with_bias):
                    H, S = 2, gh * gw
                    q, k, v = self.inputs((2, H, S, 8), gh * 100 + gw * 10 + shift, np.float64)
                    table = None
                    kw = dict(variant="swin", swin=(gh, gw, w, shift))
                    if with_bias:
                        table = np.random.default_rng(w).standard_normal(((2 * w - 1) ** 2, H))
                        kw["swin_bias"] = table
                    keep, bias = swin_reference_terms(gh, gw, w, shift, table, H)
                    self.check_all(q, k, v, dict(keep_extra=keep, additive_mask=bias),
                                   dtype=np.float64, **kw)

    def test_swin_shift_matters_and_gqa_works(self):
        gh = gw = 6
        q, k, v = self.inputs((1, 4, 36, 8), 15, kv_heads=2)
        a = attn.attention(q, k, v, variant="swin", swin=(gh, gw, 3, 0))
        b = attn.attention(q, k, v, variant="swin", swin=(gh, gw, 3, 1))
        self.assertFalse(np.allclose(a, b))
        keep, _ = swin_reference_terms(gh, gw, 3, 1)
        ro, _, _, bound = reference(q, k, v, keep_extra=keep)
        self.assert_close(b, ro, bound, np.float32)

    def test_swin_rejects_bad_arguments(self):
        q = np.zeros((1, 1, 12, 4), np.float32)
        for args, status in (((3, 4, 2, 2), attn.Status.ERR_INVALID_ARG),   # shift >= window
                             ((3, 5, 2, 0), attn.Status.ERR_SHAPE),         # 15 != S
                             ((0, 4, 2, 0), attn.Status.ERR_INVALID_ARG)):
            with self.assertRaises(attn.AttnError) as cm:
                attn.attention(q, q, q, variant="swin", swin=args)
            self.assertEqual(cm.exception.status, status, str(cm.exception))
        with self.assertRaises(attn.UnsupportedError):
            attn.attention(q, q, q, variant="swin", swin=(3, 4, 2, 0), causal=True)

    # -- linear (elu + 1) -----------------------------------------------------------
    def test_linear_elu_matches_feature_map_formula(self):
        for causal, lengths, kv_heads in ((False, None, None), (True, None, None),
                                          (False, [16, 9], 1), (True, [12, 16], 2)):
            with self.subTest(causal=causal, lengths=lengths, kv_heads=kv_heads):
                q, k, v = self.inputs((2, 2, 16, 8), 16 + causal, np.float64, kv_heads)
                kw = dict(variant="linear_elu", causal=causal)
                if lengths is not None:
                    kw["key_lengths"] = lengths
                out = attn.attention(q, k, v, **kw)
                want = linear_reference(q, k, v, causal=causal, key_lengths=lengths)
                np.testing.assert_allclose(out, want, rtol=1e-10, atol=1e-12)

    def test_linear_elu_long_causal_runs_over_several_chunks_in_f32(self):
        q, k, v = self.inputs((1, 1, 300, 16), 17)
        out = attn.attention(q, k, v, variant="linear_elu", causal=True)
        np.testing.assert_allclose(out, linear_reference(q, k, v, causal=True),
                                   rtol=2e-4, atol=2e-5)

    def test_linear_elu_has_no_scale_weights_or_lse(self):
        q = np.zeros((1, 1, 4, 4), np.float32)
        for kw in (dict(scale=0.5), dict(return_weights=True), dict(return_lse=True)):
            with self.subTest(**{k: str(v) for k, v in kw.items()}):
                with self.assertRaises(attn.UnsupportedError):
                    attn.attention(q, q, q, variant="linear_elu", **kw)

    # -- Performer ------------------------------------------------------------------
    def test_performer_is_deterministic_and_redraw_equals_a_fresh_plan(self):
        q, k, v = self.inputs((1, 2, 16, 8), 18)

        def fresh(seed):
            return attn.attention(q, k, v, variant="performer", features=(64, seed))
        a, b = fresh(7), fresh(9)
        self.assertTrue(np.isfinite(a).all())
        self.assertTrue(np.array_equal(a, fresh(7)))
        self.assertFalse(np.array_equal(a, b))
        desc = attn.Desc(variant="performer", features=(64, 7))
        out = np.empty_like(q)
        plan = attn.Plan(desc, q, k, v, out)
        plan.execute(q, k, v, out)
        self.assertTrue(np.array_equal(out, a))
        plan.redraw_features(9)
        plan.execute(q, k, v, out)
        self.assertTrue(np.array_equal(out, b))
        plan.redraw_features(7)
        plan.execute(q, k, v, out)
        self.assertTrue(np.array_equal(out, a))

    def test_performer_estimates_softmax_attention(self):
        # FAVOR+ is unbiased for exp(scale q.k): with many features the output
        # is far closer to exact attention than the uniform average of v (what
        # a broken feature map tends to give), and closer than with few features.
        q, k, v = (0.5 * x for x in self.inputs((1, 1, 32, 8), 19, np.float64))
        exact = reference(q, k, v)[0]
        err = {m: np.abs(attn.attention(q, k, v, variant="performer", features=(m, 3)) - exact
                         ).mean() for m in (8, 4096)}
        uniform = np.abs(v.mean(axis=2, keepdims=True) - exact).mean()
        self.assertLess(err[4096], 0.25 * uniform)
        self.assertLess(err[4096], err[8])

    def test_redraw_on_a_non_performer_plan_is_unsupported(self):
        q = np.zeros((1, 1, 4, 4), np.float32)
        plan = attn.Plan(attn.Desc(variant="linear_elu"), q, q, q, np.empty_like(q))
        with self.assertRaises(attn.UnsupportedError):
            plan.redraw_features(1)

    # -- Linformer ------------------------------------------------------------------
    def test_linformer_is_exact_attention_on_projected_keys_and_values(self):
        B, H, Hkv, Sq, Sk, r = 2, 4, 2, 12, 20, 5
        rng = np.random.default_rng(18)
        for per_head in (False, True):
            for lengths in (None, [20, 11]):
                with self.subTest(per_head=per_head, lengths=lengths):
                    q, k, v = self.inputs((B, H, Sq, 8), 17 + per_head, np.float64, Hkv)
                    k, v = k[:, :, :1].repeat(Sk, 2) + rng.standard_normal((B, Hkv, Sk, 8)), \
                        rng.standard_normal((B, Hkv, Sk, 8))
                    eshape = (Hkv, r, Sk) if per_head else (r, Sk)
                    e, f = rng.standard_normal(eshape), rng.standard_normal(eshape)
                    eh = np.broadcast_to(e, (Hkv, r, Sk))
                    fh = np.broadcast_to(f, (Hkv, r, Sk))
                    lens = [Sk] * B if lengths is None else lengths
                    kp = np.stack([np.einsum("hrs,hsd->hrd", eh[:, :, :n], k[b, :, :n])
                                   for b, n in enumerate(lens)])
                    vp = np.stack([np.einsum("hrs,hsd->hrd", fh[:, :, :n], v[b, :, :n])
                                   for b, n in enumerate(lens)])
                    kw = dict(variant="linformer", lowrank_proj=(e, f))
                    if lengths is not None:
                        kw["key_lengths"] = lengths
                    ro, _, rl, bound = reference(q, kp, vp)
                    out, lse = attn.attention(q, k, v, return_lse=True, **kw)
                    self.assert_close(out, ro, bound, np.float64)
                    self.assert_lse(lse, rl, np.float64)

    def test_linformer_seeded_projections_are_deterministic(self):
        q, k, v = self.inputs((1, 2, 16, 8), 20)
        run = lambda seed: attn.attention(q, k, v, variant="linformer",  # noqa: E731
                                          lowrank=(4, seed))
        self.assertTrue(np.array_equal(run(3), run(3)))
        self.assertFalse(np.array_equal(run(3), run(4)))

    def test_linformer_rejects_causal_and_missing_rank(self):
        q = np.zeros((1, 1, 8, 4), np.float32)
        with self.assertRaises(attn.UnsupportedError):
            attn.attention(q, q, q, variant="linformer", lowrank=(2, 0), causal=True)
        with self.assertRaises(attn.AttnError) as cm:
            attn.attention(q, q, q, variant="linformer")
        self.assertEqual(cm.exception.status, attn.Status.ERR_INVALID_ARG)


# ---------------------------------------------------------------------------
# Multi-head (heads.h)

class TestHeads(Case):
    def test_split_view_is_the_head_reshape_of_the_same_memory(self):
        B, S, H, D = 2, 5, 3, 4
        x = rand(np.random.default_rng(30), (B, S, H * D), np.float32)
        v = attn.heads_split_view(x, H)
        self.assertTrue(np.shares_memory(v, x))
        self.assertTrue(np.array_equal(v, x.reshape(B, S, H, D).transpose(0, 2, 1, 3)))
        m = attn.heads_merge_view(v)
        self.assertTrue(np.shares_memory(m, x))
        self.assertEqual(m.strides, x.strides)
        self.assertTrue(np.array_equal(m, x))
        # Sequence-first memory [S, B, E] seen as [B, S, E] through strides.
        xs = np.ascontiguousarray(x.transpose(1, 0, 2)).transpose(1, 0, 2)
        vs = attn.heads_split_view(xs, H)
        self.assertTrue(np.shares_memory(vs, xs))
        self.assertTrue(np.array_equal(vs, v))

    def test_merge_view_needs_side_by_side_heads(self):
        x = np.zeros((1, 2, 3, 4), np.float64)     # contiguous [B, H, S, D]: heads apart
        with self.assertRaises(attn.AttnError) as cm:
            attn.heads_merge_view(x)
        self.assertEqual(cm.exception.status, attn.Status.ERR_LAYOUT)
        self.assertIn("x", cm.exception.message)

    def test_copies_move_exactly_the_right_elements(self):
        rng = np.random.default_rng(31)
        B, S, H, D = 2, 7, 4, 3
        x = rand(rng, (B, S, H * D), np.float64)
        s = attn.heads_split(x, H)
        self.assertTrue(np.array_equal(s, x.reshape(B, S, H, D).transpose(0, 2, 1, 3)))
        self.assertFalse(np.shares_memory(s, x))
        back = attn.heads_merge(s)
        self.assertTrue(np.array_equal(back, x))
        # Strided destinations: only the view is written.
        buf = np.full((B, S, H * D + 2), 9.0)
        attn.heads_merge(s, out=buf[..., :H * D])
        self.assertTrue(np.array_equal(buf[..., :H * D], x))
        self.assertTrue((buf[..., H * D:] == 9.0).all())

    def test_bad_input_names_the_argument_and_leaves_out_untouched(self):
        x = np.zeros((1, 3, 10), np.float32)
        with self.assertRaises(attn.AttnError) as cm:
            attn.heads_split_view(x, 3)                # 3 does not divide 10
        self.assertEqual(cm.exception.status, attn.Status.ERR_SHAPE)
        with self.assertRaises(attn.AttnError) as cm:
            attn.heads_split_view(x, 0)
        self.assertEqual(cm.exception.status, attn.Status.ERR_INVALID_ARG)
        self.assertIn("num_heads", cm.exception.message)
        out = np.full((1, 2, 3, 5), 4.0, np.float64)   # dtype differs from x
        with self.assertRaises(attn.AttnError) as cm:
            attn.heads_split(x, out=out)
        self.assertEqual(cm.exception.status, attn.Status.ERR_DTYPE)
        self.assertIn("out", cm.exception.message)
        self.assertTrue((out == 4.0).all())


def make_mha_weights(rng, E, H, Hkv=None, kdim=None, vdim=None, bias=True, bias_kv=False,
                     packed=True, dtype=np.float32):
    Ekv = (Hkv or H) * (E // H)
    w = {}
    if packed:
        w["in_proj_weight"] = rand(rng, (E + 2 * Ekv, E), dtype) / np.sqrt(E)
    else:
        w["q_proj_weight"] = rand(rng, (E, E), dtype) / np.sqrt(E)
        w["k_proj_weight"] = rand(rng, (Ekv, kdim or E), dtype) / np.sqrt(kdim or E)
        w["v_proj_weight"] = rand(rng, (Ekv, vdim or E), dtype) / np.sqrt(vdim or E)
    w["out_proj_weight"] = rand(rng, (E, E), dtype) / np.sqrt(E)
    if bias:
        w["in_proj_bias"] = rand(rng, (E + 2 * Ekv,), dtype) * 0.5
        w["out_proj_bias"] = rand(rng, (E,), dtype) * 0.5
    if bias_kv:
        w["bias_k"] = rand(rng, (1, 1, Ekv), dtype)
        w["bias_v"] = rand(rng, (1, 1, Ekv), dtype)
    return w


def mha_reference(query, key, value, w, H, Hkv=None, batch_first=False, add_zero_attn=False,
                  key_padding_mask=None, keep_mask=None, add_mask=None, causal=False):
    """heads.h's formulas in float64: project, split, append bias/zero keys,
    softmax over kept keys (masks on the real keys only), merge, project out.
    Returns out (query's layout) and per-head weights [B, H, L, S']."""
    f = lambda a: np.asarray(a, np.float64)  # noqa: E731
    if not batch_first:
        query, key, value = (np.swapaxes(a, 0, 1) for a in (query, key, value))
    xq, xk, xv = f(query), f(key), f(value)
    B, L, E = xq.shape
    S = xk.shape[1]
    Hkv = Hkv or H
    D = E // H
    Ekv = Hkv * D
    if "in_proj_weight" in w:
        Wq, Wk, Wv = np.split(f(w["in_proj_weight"]), [E, E + Ekv])
    else:
        Wq, Wk, Wv = (f(w[n]) for n in ("q_proj_weight", "k_proj_weight", "v_proj_weight"))
    bq, bk, bv = (np.split(f(w["in_proj_bias"]), [E, E + Ekv]) if "in_proj_bias" in w
                  else (0.0, 0.0, 0.0))
    Q, K, V = xq @ Wq.T + bq, xk @ Wk.T + bk, xv @ Wv.T + bv
    extra = []
    if "bias_k" in w:
        extra.append((f(w["bias_k"]).reshape(1, 1, Ekv), f(w["bias_v"]).reshape(1, 1, Ekv)))
    if add_zero_attn:
        extra.append((np.zeros((1, 1, Ekv)), np.zeros((1, 1, Ekv))))
    for ek, ev in extra:
        K = np.concatenate([K, np.broadcast_to(ek, (B, 1, Ekv))], axis=1)
        V = np.concatenate([V, np.broadcast_to(ev, (B, 1, Ekv))], axis=1)
    Sx = K.shape[1]
    Qh = Q.reshape(B, L, H, D).transpose(0, 2, 1, 3)
    Kh = np.repeat(K.reshape(B, Sx, Hkv, D).transpose(0, 2, 1, 3), H // Hkv, axis=1)
    Vh = np.repeat(V.reshape(B, Sx, Hkv, D).transpose(0, 2, 1, 3), H // Hkv, axis=1)
    s = Qh @ Kh.transpose(0, 1, 3, 2) / np.sqrt(D)
    keep = np.ones((B, H, L, S), bool)
    if key_padding_mask is not None:
        keep &= (np.asarray(key_padding_mask) != 0)[:, None, None, :]
    if keep_mask is not None:
        keep &= np.asarray(keep_mask) != 0
    if causal:
        keep &= np.tril(np.ones((L, S), bool))
    if add_mask is not None:
        s[..., :S] += f(add_mask)
    keep = np.concatenate([keep, np.ones((B, H, L, Sx - S), bool)], axis=-1)
    s = np.where(keep, s, -np.inf)
    m = s.max(-1, keepdims=True)
    m = np.where(np.isfinite(m), m, 0)
    e = np.where(keep, np.exp(s - m), 0)
    l = e.sum(-1, keepdims=True)
    p = e / np.where(l > 0, l, 1)
    O = (p @ Vh).transpose(0, 2, 1, 3).reshape(B, L, E)
    out = O @ f(w["out_proj_weight"]).T + (f(w["out_proj_bias"]) if "out_proj_bias" in w else 0)
    if not batch_first:
        out = np.swapaxes(out, 0, 1)
    return out, p


class TestMHA(Case):
    def seqs(self, rng, B, L, S, E, kdim, vdim, batch_first, dtype):
        shape = (lambda n, F: (B, n, F)) if batch_first else (lambda n, F: (n, B, F))
        return (rand(rng, shape(L, E), dtype), rand(rng, shape(S, kdim or E), dtype),
                rand(rng, shape(S, vdim or E), dtype))

    def close(self, got, want, dtype, what):
        tol = 2e-5 if dtype == np.float32 else 1e-12
        self.assertFalse(np.isnan(got).any(), what + " has NaN")
        np.testing.assert_allclose(got, want, rtol=tol, atol=tol, err_msg=what)

    CASES = [  # name, config, data
        ("self, seq-first", dict(), dict(self_attn=True)),
        ("cross, batch-first, per-head weights", dict(batch_first=True), dict(per_head=True)),
        ("GQA H=4 Hkv=2", dict(num_kv_heads=2), dict()),
        ("MQA H=4 Hkv=1, batch-first", dict(num_kv_heads=1, batch_first=True), dict()),
        ("kdim/vdim != E, no bias", dict(kdim=6, vdim=10, bias=False), dict()),
        ("key padding mask (non-zero = attend)", dict(), dict(kpm=True)),
        ("bool mask + key padding mask", dict(batch_first=True), dict(kpm=True, keep=True)),
        ("additive mask, per head", dict(), dict(add=True, per_head=True)),
        ("causal self", dict(batch_first=True), dict(self_attn=True, causal=True)),
        ("add_bias_kv + add_zero_attn + kpm + causal", dict(add_bias_kv=True,
                                                            add_zero_attn=True),
         dict(kpm=True, causal=True, same_len=True)),
        ("f64, GQA, bias kv", dict(num_kv_heads=2, add_bias_kv=True, dtype=np.float64),
         dict(kpm=True)),
    ]

    def test_bf16_and_f16_layers_match_the_f32_layer_on_rounded_values(self):
        # A 16-bit layer computes in f32 on its 16-bit parameters and inputs and
        # rounds out once: within the format's unit roundoff of the f32 layer's
        # out on the same (rounded) values, plus f32-level differences.
        E, H, B, L = 16, 4, 2, 6
        rng = np.random.default_rng(33)
        w = make_mha_weights(rng, E, H, 2, None, None, True, False, packed=True,
                             dtype=np.float32)
        x = rand(rng, (B, L, E), np.float32)
        for name, to16, back, dt, u in (
                ("bf16", attn.to_bf16, attn.from_bf16, attn.DType.BF16, 2.0**-8),
                ("f16", lambda a: np.asarray(a, np.float16), lambda a: a.astype(np.float32),
                 attn.DType.F16, 2.0**-11)):
            w16 = {n: to16(a) for n, a in w.items()}
            w32 = {n: back(a) for n, a in w16.items()}
            x16 = to16(x)
            ref_layer = attn.MHA(w32, embed_dim=E, num_heads=H, num_kv_heads=2, batch_first=True)
            layer = attn.MHA(w16, embed_dim=E, num_heads=H, num_kv_heads=2, batch_first=True,
                             dtype=dt)
            want, wwant = ref_layer(back(x16), causal="top_left")
            got, wgot = layer(x16, causal="top_left")
            self.assertEqual(wgot.dtype, np.float32, name)
            got = back(got)
            np.testing.assert_allclose(got, want, rtol=u + 1e-5, atol=1e-5, err_msg=name)
            np.testing.assert_allclose(wgot, wwant, rtol=1e-5, atol=1e-6, err_msg=name)

    def run_case(self, seed, cfg, data):
        E, H, B, L = 16, 4, 3, 5
        S = L if data.get("self_attn") or data.get("same_len") else 7
        dtype = cfg.get("dtype", np.float32)
        bf = cfg.get("batch_first", False)
        rng = np.random.default_rng(seed)
        w = make_mha_weights(rng, E, H, cfg.get("num_kv_heads"), cfg.get("kdim"),
                             cfg.get("vdim"), cfg.get("bias", True), cfg.get("add_bias_kv", False),
                             packed="kdim" not in cfg, dtype=dtype)
        layer = attn.MHA(w, embed_dim=E, num_heads=H, **cfg)
        q, k, v = self.seqs(rng, B, L, S, E, cfg.get("kdim"), cfg.get("vdim"), bf, dtype)
        if data.get("self_attn"):
            k = v = q
        kpm = keep = add = None
        settings = {}
        if data.get("kpm"):
            kpm = np.ones((B, S), np.uint8)
            kpm[1, S - 2:] = 0
            kpm[2, 1] = 0
        if data.get("keep"):
            keep = rng.random((1, 1, L, S)) < 0.7
            keep[..., 0] = True
            settings["bool_mask"] = keep
        if data.get("add"):
            add = rand(rng, (1, H, L, S), dtype)
            settings["additive_mask"] = add
        if data.get("causal"):
            settings["causal"] = "top_left"
        want, wp = mha_reference(q, k, v, w, H, cfg.get("num_kv_heads"), bf,
                                 cfg.get("add_zero_attn", False), kpm, keep, add,
                                 data.get("causal", False))
        per_head = data.get("per_head", False)
        out, weights = layer(q, k, v, key_padding_mask=kpm, average_attn_weights=not per_head,
                             **settings)
        self.close(out, want, dtype, "out")
        self.close(weights, wp if per_head else wp.mean(axis=1), dtype, "weights")
        # Plan once, execute again on new inputs (no weights this time).
        q2, k2, v2 = (a + 0.25 for a in (q, k, v))
        if data.get("self_attn"):
            k2 = v2 = q2
        out2 = np.full_like(out, np.nan)
        plan = layer.plan(q, k, v, out2, key_padding_mask=kpm, **settings)
        self.assertGreater(plan.workspace_size, 0)
        plan.execute(q2, k2, v2, out2, kpm)
        want2, _ = mha_reference(q2, k2, v2, w, H, cfg.get("num_kv_heads"), bf,
                                 cfg.get("add_zero_attn", False), kpm, keep, add,
                                 data.get("causal", False))
        self.close(out2, want2, dtype, "out (second execute)")

    def test_matches_numpy_reference(self):
        for i, (name, cfg, data) in enumerate(self.CASES):
            with self.subTest(name):
                self.run_case(40 + i, cfg, data)

    def test_weights_are_borrowed_not_copied(self):
        rng = np.random.default_rng(50)
        w = make_mha_weights(rng, 8, 2, dtype=np.float64)
        layer = attn.MHA(w, embed_dim=8, num_heads=2, batch_first=True, dtype=np.float64)
        x = rand(rng, (1, 3, 8), np.float64)
        before, _ = layer(x, need_weights=False)
        w["out_proj_bias"][:] += 1.0      # the layer reads the caller's array
        after, none = layer(x, need_weights=False)
        self.assertIsNone(none)
        np.testing.assert_allclose(after, before + 1.0, rtol=1e-12, atol=1e-12)

    def test_bad_config_and_weights_name_the_problem(self):
        rng = np.random.default_rng(51)
        w = make_mha_weights(rng, 8, 2)
        with self.assertRaises(attn.AttnError) as cm:
            attn.MHA(w, embed_dim=8, num_heads=3)
        self.assertEqual(cm.exception.status, attn.Status.ERR_INVALID_ARG)
        bad = dict(w, out_proj_weight=np.zeros((8, 7), np.float32))
        with self.assertRaises(attn.AttnError) as cm:
            attn.MHA(bad, embed_dim=8, num_heads=2)
        self.assertEqual(cm.exception.status, attn.Status.ERR_SHAPE)
        self.assertIn("out_proj_weight", cm.exception.message)
        with self.assertRaises(attn.AttnError) as cm:
            attn.MHA(w, embed_dim=8, num_heads=2, dtype=np.float64)
        self.assertEqual(cm.exception.status, attn.Status.ERR_DTYPE)
        with self.assertRaisesRegex(TypeError, "unknown MHA setting 'heads'"):
            attn.MHA(w, embed_dim=8, heads=2)
        with self.assertRaisesRegex(TypeError, "unknown MHA weight 'W_q'"):
            attn.MHA(dict(w, W_q=w["out_proj_weight"]), embed_dim=8, num_heads=2)

    def test_execute_mismatch_leaves_out_untouched(self):
        rng = np.random.default_rng(52)
        layer = attn.MHA(make_mha_weights(rng, 8, 2), embed_dim=8, num_heads=2)
        x = rand(rng, (4, 2, 8), np.float32)
        out = np.zeros_like(x)
        plan = layer.plan(x, x, x, out)
        x2 = rand(rng, (5, 2, 8), np.float32)
        out2 = np.full_like(x2, 3.0)
        with self.assertRaises(attn.AttnError) as cm:
            plan.execute(x2, x2, x2, out2)
        self.assertEqual(cm.exception.status, attn.Status.ERR_MISMATCH)
        self.assertIn("query", cm.exception.message)
        self.assertTrue((out2 == 3.0).all())
        with self.assertRaises(attn.AttnError) as cm:
            layer.plan(x, x, x, out, key_padding_mask=np.ones((2, 5), np.uint8))
        self.assertEqual(cm.exception.status, attn.Status.ERR_SHAPE)
        self.assertIn("key_padding_mask", cm.exception.message)
        layer.close()          # closes the plan first; both are gone
        self.assertIsNone(plan._handle)


class TestMHATorch(Case):
    """attn.MHA against torch.nn.MultiheadAttention with identical weights
    (skipped when torch does not import)."""

    @classmethod
    def setUpClass(cls):
        try:
            import torch
        except ImportError as e:   # pragma: no cover
            raise unittest.SkipTest("PyTorch not importable: %s" % e)
        cls.torch = torch

    CASES = [
        ("self, seq-first", dict(), dict(self_attn=True)),
        ("cross, batch-first, per-head weights", dict(batch_first=True), dict(avg=False)),
        ("kdim/vdim, no bias", dict(kdim=6, vdim=10, bias=False), dict()),
        ("key padding mask", dict(batch_first=True), dict(kpm=True)),
        ("bool attn_mask + kpm", dict(), dict(kpm=True, mask=True)),
        ("add_bias_kv + add_zero_attn + kpm", dict(add_bias_kv=True, add_zero_attn=True),
         dict(kpm=True, avg=False)),
    ]

    def test_matches_torch_multihead_attention(self):
        torch = self.torch
        E, H, B, L, S = 16, 4, 3, 5, 7
        for i, (name, cfg, data) in enumerate(self.CASES):
            for dtype in (np.float32, np.float64):
                with self.subTest(name, dtype=dtype):
                    torch.manual_seed(60 + i)
                    tdt = torch.float32 if dtype == np.float32 else torch.float64
                    m = torch.nn.MultiheadAttention(E, H, dtype=tdt, **cfg).eval()
                    with torch.no_grad():
                        for n, p in m.named_parameters():
                            if "bias" in n:
                                p.uniform_(-0.5, 0.5)
                    # PyTorch's polarity (from_torch's default) and libattn's.
                    layer = attn.MHA.from_torch(m)
                    layer_keep = attn.MHA.from_torch(m, mask_convention="attn")
                    bf = cfg.get("batch_first", False)
                    rng = np.random.default_rng(i)
                    shape = (lambda n, F: (B, n, F)) if bf else (lambda n, F: (n, B, F))
                    Sk = L if data.get("self_attn") else S
                    q = rand(rng, shape(L, E), dtype)
                    k = q if data.get("self_attn") else rand(rng, shape(Sk, cfg.get("kdim", E)),
                                                             dtype)
                    v = q if data.get("self_attn") else rand(rng, shape(Sk, cfg.get("vdim", E)),
                                                             dtype)
                    keep_kpm = t_kpm = t_mask = None
                    settings = {}
                    if data.get("kpm"):
                        keep_kpm = np.ones((B, Sk), bool)
                        keep_kpm[0, -2:] = False
                        t_kpm = torch.from_numpy(~keep_kpm)        # torch: True = ignore
                    if data.get("mask"):
                        keep = rng.random((L, Sk)) < 0.7
                        keep[:, 0] = True
                        t_mask = torch.from_numpy(~keep)
                        settings["bool_mask"] = keep[None, None]   # ours: True = attend
                    avg = data.get("avg", True)
                    with torch.no_grad():
                        want, want_w = m(*(torch.from_numpy(a) for a in (q, k, v)),
                                         key_padding_mask=t_kpm, attn_mask=t_mask,
                                         need_weights=True, average_attn_weights=avg)
                    tol = 1e-5 if dtype == np.float32 else 1e-12
                    out, w = layer_keep(q, k, v, key_padding_mask=keep_kpm,
                                        average_attn_weights=avg, **settings)
                    np.testing.assert_allclose(out, want.numpy(), rtol=tol, atol=tol)
                    np.testing.assert_allclose(w, want_w.numpy(), rtol=tol, atol=tol)
                    # The PyTorch call, unchanged: torch masks in torch's polarity.
                    out, w = layer(q, k, v, key_padding_mask=t_kpm, attn_mask=t_mask,
                                   average_attn_weights=avg)
                    np.testing.assert_allclose(out, want.numpy(), rtol=tol, atol=tol)
                    np.testing.assert_allclose(w, want_w.numpy(), rtol=tol, atol=tol)


class MergeStatesTest(unittest.TestCase):
    """attn.merge_states: attention over two key halves merged equals the
    numpy reference over all keys, in place too; empty sides are -inf."""

    def test_split_everywhere_matches_reference(self):
        rng = np.random.default_rng(7)
        B, H, Sq, Sk, D = 2, 3, 5, 11, 8
        for dt, tol in ((np.float64, 1e-12), (np.float32, 2e-5)):
            q = (rng.standard_normal((B, H, Sq, D)) * 2).astype(dt)
            k = rng.standard_normal((B, H, Sk, D)).astype(dt)
            v = rng.standard_normal((B, H, Sk, D)).astype(dt)
            want, _w, want_lse, _b = reference(q, k, v)
            for p in range(Sk + 1):
                if p == 0 or p == Sk:
                    oe = np.full((B, H, Sq, D), np.nan, dtype=dt)
                    le = np.full((B, H, Sq), -np.inf, dtype=dt)
                    oo, lo = attn.attention(q, k, v, return_lse=True)
                    oa, la, ob, lb = (oe, le, oo, lo) if p == 0 else (oo, lo, oe, le)
                else:
                    oa, la = attn.attention(q, k[:, :, :p], v[:, :, :p], return_lse=True)
                    ob, lb = attn.attention(q, k[:, :, p:], v[:, :, p:], return_lse=True)
                out, lse = attn.merge_states(oa, la, ob, lb, out=oa if p % 2 else None,
                                             lse=la if p % 2 else None)
                np.testing.assert_allclose(out, want, rtol=tol, atol=tol)
                np.testing.assert_allclose(lse, want_lse, rtol=tol, atol=tol)

    def test_both_empty_and_bad_lse(self):
        o = np.full((1, 1, 2, 3), np.nan)
        l = np.full((1, 1, 2), -np.inf)
        out, lse = attn.merge_states(o, l, o.copy(), l.copy())
        self.assertTrue(np.all(out == 0) and np.all(np.isneginf(lse)))
        l2 = l.copy()
        l2[0, 0, 1] = np.nan
        with self.assertRaises(attn.AttnError) as cm:
            attn.merge_states(o, l2, o, l)
        self.assertIn("lse_a", str(cm.exception))


if __name__ == "__main__":
    unittest.main()

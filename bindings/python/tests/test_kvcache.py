"""attn.KVCache against the numpy reference of test_attn (full attention over
the whole sequence): a sequence fed through the cache step by step (prefill,
then decode one token at a time) must give, at every position, what causal
attention over the whole sequence gives; a ring cache what window attention
gives. Also rollback, unequal batch lengths, GQA, growth, bf16 storage,
zero-copy views and the error paths (status, message, cache unchanged).
"""

import gc
import os
import sys
import unittest

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
if not os.environ.get("ATTN_TEST_INSTALLED"):   # else: the pip-installed package
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import attn  # noqa: E402
from test_attn import TOP_LEFT, Case, rand, reference  # noqa: E402


def bf16_round(x):
    """float32 -> bfloat16 -> float32, round to nearest even (kvcache.h's storage)."""
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32).astype(np.uint64)
    u = (u + 0x7FFF + ((u >> 16) & 1)) & 0xFFFF0000
    return u.astype(np.uint32).view(np.float32)


class Seq:
    """Random q [B,H,T,Dk], k [B,Hkv,T,Dk], v [B,Hkv,T,Dv] and per-item lengths."""

    def __init__(self, seed, B, H, Hkv, T, Dk, Dv=None, dtype=np.float32, lengths=None):
        rng = np.random.default_rng(seed)
        Dv = Dv or Dk
        self.B, self.H, self.Hkv, self.T, self.Dk, self.Dv, self.dtype = B, H, Hkv, T, Dk, Dv, dtype
        self.q = rand(rng, (B, H, T, Dk), dtype) * 2   # peakier softmax
        self.k = rand(rng, (B, Hkv, T, Dk), dtype)
        self.v = rand(rng, (B, Hkv, T, Dv), dtype)
        self.lengths = np.array(lengths if lengths is not None else [T] * B, dtype=np.int64)
        self.rng = rng

    def ref(self, k=None, v=None, **kw):
        """Attention over the whole sequence, query t at position t (top-left)."""
        return reference(self.q, self.k if k is None else k, self.v if v is None else v,
                         key_lengths=self.lengths, **kw)

    def feed(self, cache, steps, desc_kw, spec=0, layout="bhsd"):
        """Append + attend, `steps` rows per call (first call: steps[0], then
        steps[1] each). With spec > 0, before every later step append spec junk
        tokens, attend them and roll back. Returns (out [B,H,T,Dv], lse [B,H,T])."""
        B, H, T = self.B, self.H, self.T
        out_all = np.full((B, H, T, self.Dv), np.nan)
        lse_all = np.full((B, H, T), np.nan)
        plans = {}

        def plan_for(n):
            if n not in plans:
                shape_q, shape_o = (B, H, n, self.Dk), (B, H, n, self.Dv)
                if layout == "bshd":
                    shape_q, shape_o = (B, n, H, self.Dk), (B, n, H, self.Dv)
                q0, o0 = np.zeros(shape_q, self.dtype), np.zeros(shape_o, self.dtype)
                plans[n] = cache.plan(q0, o0, np.zeros((B, H, n), self.dtype), layout=layout,
                                      **desc_kw)
            return plans[n]

        def rows(x, pos, n, counts, junk=None):
            """x[:, :, pos_b : pos_b + counts_b] padded with junk to n rows."""
            r = np.full(x.shape[:2] + (n,) + x.shape[3:], 1e3, dtype=self.dtype)
            for b in range(B):
                src = x if junk is None else junk
                r[b, :, :counts[b]] = src[b, :, pos[b]:pos[b] + counts[b]]
            if layout == "bshd":
                r = np.ascontiguousarray(r.transpose(0, 2, 1, 3))
            return r

        pos = np.zeros(B, dtype=np.int64)
        first = True
        while (pos < self.lengths).any():
            if not first and spec > 0:
                counts = np.where((pos < self.lengths) & (pos + spec <= T), spec, 0)
                jq, jk, jv = (rand(self.rng, a.shape, self.dtype) for a in (self.q, self.k, self.v))
                cache.append(rows(self.k, pos, spec, counts, jk), rows(self.v, pos, spec, counts, jv),
                             counts, layout=layout)
                o = np.zeros((B, spec, H, self.Dv) if layout == "bshd" else (B, H, spec, self.Dv),
                             self.dtype)
                plan_for(spec).execute(rows(self.q, pos, spec, counts, jq), o,
                                       np.zeros((B, H, spec), self.dtype), counts)
                cache.truncate(pos)
                np.testing.assert_array_equal(cache.lengths, pos)
            n = steps[0] if first else steps[1]
            first = False
            counts = np.minimum(self.lengths - pos, n)
            o = np.zeros((B, n, H, self.Dv) if layout == "bshd" else (B, H, n, self.Dv), self.dtype)
            lse = np.zeros((B, H, n), self.dtype)
            all_n = (counts == n).all()
            cache.append(rows(self.k, pos, n, counts), rows(self.v, pos, n, counts),
                         None if all_n else counts, layout=layout)
            plan_for(n).execute(rows(self.q, pos, n, counts), o, lse, None if all_n else counts)
            if layout == "bshd":
                o = o.transpose(0, 2, 1, 3)
            for b in range(B):
                c = counts[b]
                out_all[b, :, pos[b]:pos[b] + c] = o[b, :, :c]
                lse_all[b, :, pos[b]:pos[b] + c] = lse[b, :, :c]
                # rows beyond the item's count: no query there, out 0 and lse -inf
                self_ok = (o[b, :, c:] == 0).all() and np.isneginf(lse[b, :, c:]).all()
                assert self_ok, "rows beyond counts[%d] must be 0 / -inf" % b
            pos += counts
            np.testing.assert_array_equal(cache.lengths, pos)
        for p in plans.values():
            p.close()
        return out_all, lse_all


class KVCase(Case):
    def check_seq(self, seq, out, lse, ref):
        """Compare the rows t < lengths[b] of every item with the reference."""
        ro, _, rl, bound = ref
        for b in range(seq.B):
            t = seq.lengths[b]
            self.assert_close(out[b, :, :t], ro[b, :, :t], bound[b, :, :t], seq.dtype,
                              "out item %d" % b)
            self.assert_lse(lse[b, :, :t], rl[b, :, :t], seq.dtype)

    def cache_for(self, seq, **cfg):
        cfg.setdefault("capacity", seq.T)
        return attn.KVCache(batch=seq.B, heads_kv=seq.Hkv, d_k=seq.Dk, d_v=seq.Dv,
                            dtype=seq.dtype, **cfg)


class TestKVCacheDecode(KVCase):
    def test_config_struct_matches_c_and_defaults(self):
        cfg = attn.KVCacheConfig()
        attn._lib.attn_kvcache_config_init(cfg)
        import ctypes
        self.assertEqual(cfg.struct_size, ctypes.sizeof(attn.KVCacheConfig))
        self.assertEqual((cfg.batch, cfg.heads_kv, cfg.capacity, cfg.d_k, cfg.d_v),
                         (1, 1, 0, 0, 0))
        self.assertEqual((cfg.dtype, cfg.mode, cfg.grow, cfg.storage),
                         (attn.DType.F32, attn.KVCacheMode.LINEAR, 0, attn.KVCacheStorage.NATIVE))

    def test_decode_steps_equal_full_causal_attention(self):
        for dtype in (np.float32, np.float64):
            for layout in ("bhsd", "bshd"):
                with self.subTest(dtype=dtype, layout=layout):
                    seq = Seq(1, B=1, H=3, Hkv=3, T=90, Dk=16, Dv=8, dtype=dtype)
                    with self.cache_for(seq) as cache:
                        out, lse = seq.feed(cache, (20, 1), dict(causal="bottom_right"),
                                            layout=layout)
                        self.assertEqual(cache.lengths.tolist(), [90])
                    self.check_seq(seq, out, lse, seq.ref(causal=TOP_LEFT))

    def test_long_decode_over_several_chunks(self):
        # The decode path splits the key range into chunks of 512 positions.
        seq = Seq(2, B=1, H=2, Hkv=1, T=1100, Dk=32)
        with self.cache_for(seq) as cache:
            out, lse = seq.feed(cache, (1060, 1), dict(causal="bottom_right"))
        self.check_seq(seq, out, lse, seq.ref(causal=TOP_LEFT))

    def test_gqa_and_mqa(self):
        for H, Hkv in ((8, 2), (4, 1)):
            with self.subTest(H=H, Hkv=Hkv):
                seq = Seq(3, B=2, H=H, Hkv=Hkv, T=60, Dk=16)
                with self.cache_for(seq) as cache:
                    out, lse = seq.feed(cache, (7, 2), dict(causal="bottom_right"))
                self.check_seq(seq, out, lse, seq.ref(causal=TOP_LEFT))

    def test_unequal_batch_lengths(self):
        seq = Seq(4, B=3, H=4, Hkv=2, T=50, Dk=8, lengths=[50, 13, 31])
        with self.cache_for(seq) as cache:
            out, lse = seq.feed(cache, (20, 3), dict(causal="bottom_right"))
            self.assertEqual(cache.lengths.tolist(), [50, 13, 31])
        self.check_seq(seq, out, lse, seq.ref(causal=TOP_LEFT))

    def test_rollback_of_speculative_tokens(self):
        seq = Seq(5, B=2, H=4, Hkv=2, T=40, Dk=8, lengths=[40, 29])
        with self.cache_for(seq, capacity=48) as cache:
            out, lse = seq.feed(cache, (5, 2), dict(causal="bottom_right"), spec=4)
        self.check_seq(seq, out, lse, seq.ref(causal=TOP_LEFT))

    def test_ring_equals_window_attention(self):
        # No window in the descriptor: the ring of W positions is the window.
        seq = Seq(6, B=2, H=2, Hkv=2, T=70, Dk=8, lengths=[70, 45])
        with self.cache_for(seq, capacity=16, mode="ring") as cache:
            out, lse = seq.feed(cache, (1, 1), dict(causal="bottom_right"))
            self.assertEqual(cache.firsts.tolist(), [70 - 16, 45 - 16])
        self.check_seq(seq, out, lse, seq.ref(causal=TOP_LEFT, window=(15, 0)))
        # Window 12 in the descriptor with rollbacks of 3: capacity 12 + 3 keeps it exact.
        with self.cache_for(seq, capacity=15, mode=attn.KVCacheMode.RING) as cache:
            out, lse = seq.feed(cache, (1, 1), dict(causal="bottom_right", window=(11, 0)),
                                spec=3)
        self.check_seq(seq, out, lse, seq.ref(causal=TOP_LEFT, window=(11, 0)))

    def test_alibi_softcap_scale_follow_absolute_positions(self):
        seq = Seq(7, B=1, H=4, Hkv=2, T=64, Dk=8)
        slopes = [0.5, 0.25, 0.125, 0.0625]
        kw = dict(causal="bottom_right", alibi=slopes, softcap=2.0, scale=0.4)
        with self.cache_for(seq) as cache:
            out, lse = seq.feed(cache, (10, 1), kw)
        self.check_seq(seq, out, lse, seq.ref(causal=TOP_LEFT, alibi=slopes, softcap=2.0,
                                              scale=0.4))

    def test_growth_keeps_contents_and_plans(self):
        seq = Seq(8, B=2, H=2, Hkv=1, T=100, Dk=8, lengths=[100, 70])
        with self.cache_for(seq, capacity=8, grow=True) as cache:
            out, lse = seq.feed(cache, (5, 3), dict(causal="bottom_right"))
            self.assertGreaterEqual(cache.capacity, 100)
        self.check_seq(seq, out, lse, seq.ref(causal=TOP_LEFT))

    def test_bf16_storage_equals_attention_on_rounded_keys_and_values(self):
        seq = Seq(9, B=1, H=2, Hkv=2, T=40, Dk=16)
        with self.cache_for(seq, storage="bf16") as cache:
            out, lse = seq.feed(cache, (8, 1), dict(causal="bottom_right"))
            with self.assertRaises(attn.UnsupportedError) as cm:
                cache.view()
            self.assertEqual(cm.exception.status, attn.Status.ERR_UNSUPPORTED)
            self.assertIn("bf16", cm.exception.message)
        ref = seq.ref(k=bf16_round(seq.k), v=bf16_round(seq.v), causal=TOP_LEFT)
        self.check_seq(seq, out, lse, ref)

    def test_quantized_storages_equal_attention_on_their_decoded_contents(self):
        # Decode steps from f16/int8/int4 caches (GQA 4/2, ring with rollback
        # for int): the output is attention over what dequantized() decodes
        # (the kernel's own error), and close to the f32 result (the storage's).
        for storage, tol in (("f16", 3e-3), ("int8", 3e-2), ("int4", 3e-1)):
            with self.subTest(storage=storage):
                rng = np.random.default_rng(17)
                B, H, Hkv, T, D = 2, 4, 2, 96, 32
                q = rng.standard_normal((B, H, T, D)).astype(np.float32)
                k = rng.standard_normal((B, Hkv, T, D)).astype(np.float32)
                v = rng.standard_normal((B, Hkv, T, D)).astype(np.float32)
                with attn.KVCache(batch=B, heads_kv=Hkv, d_k=D, capacity=64, mode="ring",
                                  storage=storage, group_size=16) as cache:
                    self.assertEqual(cache.storage, attn.KVCacheStorage[storage.upper()])
                    cache.append(k[:, :, :40], v[:, :, :40])
                    for t in range(40, T):
                        cache.append(k[:, :, t:t + 3], v[:, :, t:t + 3])   # speculate 3
                        cache.truncate(t)                                  # roll back
                        cache.append(k[:, :, t:t + 1], v[:, :, t:t + 1])
                        out = cache.attend(q[:, :, t:t + 1], causal="bottom_right")
                        kd, vd = cache.dequantized()
                        first = int(cache.firsts[0])
                        rows = [p % 64 for p in range(first, t + 1)]
                        ref, _, _, bound = reference(q[:, :, t:t + 1], kd[:, :, rows],
                                                     vd[:, :, rows])
                        self.assert_close(out, ref, bound, np.float32, "step %d" % t)
                        exact, _, _, _ = reference(q[:, :, t:t + 1], k[:, :, first:t + 1],
                                                   v[:, :, first:t + 1])
                        self.assertLess(np.abs(out - exact).max() / np.abs(v).max(), tol)
                    raw = cache.view_raw()
                    self.assertEqual(raw["storage"], attn.KVCacheStorage[storage.upper()])
                    if storage != "f16":
                        self.assertEqual(raw["group_size"], 16)
                        self.assertEqual(raw["k_scales"].dtype, np.float16)
                        self.assertEqual(raw["k_residual"].shape, (B, Hkv, 16, D))
                    self.assertLessEqual(raw["total_bytes"], cache.memory_size)
                    with self.assertRaises(attn.UnsupportedError) as cm:
                        cache.view()
                    self.assertIn(storage, cm.exception.message)

    def test_cross_attention_to_a_cached_encoder_without_causal(self):
        seq = Seq(10, B=2, H=2, Hkv=2, T=12, Dk=8)
        with self.cache_for(seq) as cache:
            cache.append(seq.k, seq.v)
            out, lse = cache.attend(seq.q, return_lse=True)   # no causal: every key
        ro, _, rl, b = reference(seq.q, seq.k, seq.v)
        self.assert_close(out, ro, b, np.float32)
        self.assert_lse(lse, rl, np.float32)


class TestKVCacheViews(KVCase):
    def test_views_are_the_storage_without_copies(self):
        seq = Seq(11, B=2, H=2, Hkv=2, T=10, Dk=4, Dv=3, dtype=np.float64)
        with self.cache_for(seq, capacity=12) as cache:
            cache.append(seq.k[:, :, :6], seq.v[:, :, :6])
            k, v = cache.view()
            self.assertEqual(k.shape, (2, 2, 12, 4))
            self.assertEqual(v.shape, (2, 2, 12, 3))
            self.assertFalse(k.flags.writeable)
            self.assertTrue(k.flags.c_contiguous)
            np.testing.assert_array_equal(k[:, :, :6], seq.k[:, :, :6])
            np.testing.assert_array_equal(v[:, :, :6], seq.v[:, :, :6])
            # Same memory: a later append shows through the old views.
            cache.append(seq.k[:, :, 6:9], seq.v[:, :, 6:9])
            np.testing.assert_array_equal(k[:, :, 6:9], seq.k[:, :, 6:9])
            k2, _ = cache.view()
            self.assertEqual(k2.__array_interface__["data"][0], k.__array_interface__["data"][0])
            with self.assertRaises(ValueError):
                k[0, 0, 0, 0] = 1.0

    def test_ring_rows_hold_position_mod_capacity(self):
        seq = Seq(12, B=1, H=1, Hkv=1, T=11, Dk=2)
        with self.cache_for(seq, capacity=4, mode="ring") as cache:
            cache.append(seq.k, seq.v)
            k, _ = cache.view()
            self.assertEqual((cache.firsts[0], cache.lengths[0]), (7, 11))
            for p in range(7, 11):
                np.testing.assert_array_equal(k[0, 0, p % 4], seq.k[0, 0, p])

    def test_view_keeps_the_cache_alive(self):
        seq = Seq(13, B=1, H=1, Hkv=1, T=5, Dk=2)
        cache = self.cache_for(seq)
        cache.append(seq.k, seq.v)
        k, _ = cache.view()
        del cache
        gc.collect()
        np.testing.assert_array_equal(k[0, 0, :5], seq.k[0, 0])


class TestKVCacheErrors(KVCase):
    def setUp(self):
        self.seq = Seq(14, B=2, H=2, Hkv=1, T=6, Dk=4)
        self.cache = self.cache_for(self.seq, capacity=8)
        self.cache.append(self.seq.k, self.seq.v)

    def tearDown(self):
        self.cache.close()

    def expect(self, status, in_message, fn, *a, **kw):
        with self.assertRaises(attn.AttnError) as cm:
            fn(*a, **kw)
        e = cm.exception
        self.assertEqual(e.status, status, str(e))
        self.assertIn(in_message, e.message)
        self.assertIn(e.message, str(e))
        return e

    def snapshot(self):
        k, v = self.cache.view()
        return self.cache.lengths.copy(), self.cache.capacity, k.copy(), v.copy()

    def assert_unchanged(self, before):
        after = self.snapshot()
        np.testing.assert_array_equal(after[0], before[0])
        self.assertEqual(after[1], before[1])
        np.testing.assert_array_equal(after[2], before[2])
        np.testing.assert_array_equal(after[3], before[3])

    def test_append_past_capacity_raises_and_leaves_the_cache_unchanged(self):
        before = self.snapshot()
        big = np.ones((2, 1, 3, 4), np.float32)
        e = self.expect(attn.Status.ERR_CAPACITY, "do not fit", self.cache.append, big, big)
        self.assertIn("k_new", e.message)
        self.assertIn("ATTN_ERR_CAPACITY", str(e))
        self.assert_unchanged(before)
        # Per-item counts that fit go through.
        self.cache.append(big, big, counts=[2, 0])
        self.assertEqual(self.cache.lengths.tolist(), [8, 6])

    def test_bad_append_arguments(self):
        before = self.snapshot()
        k = np.ones((2, 1, 1, 4), np.float32)
        self.expect(attn.Status.ERR_DTYPE, "k_new", self.cache.append, k.astype(np.float64),
                    k.astype(np.float64))
        self.expect(attn.Status.ERR_SHAPE, "v_new", self.cache.append, k,
                    np.ones((2, 1, 1, 5), np.float32))
        self.expect(attn.Status.ERR_SHAPE, "k_new", self.cache.append,
                    np.ones((2, 2, 1, 4), np.float32), k)
        self.expect(attn.Status.ERR_INVALID_ARG, "counts[1]", self.cache.append, k, k,
                    counts=[1, 2])
        with self.assertRaises(ValueError):   # C would read B values: checked before
            self.cache.append(k, k, counts=[1])
        self.assert_unchanged(before)

    def test_truncate_only_shortens(self):
        before = self.snapshot()
        self.expect(attn.Status.ERR_INVALID_ARG, "lengths[1]", self.cache.truncate, [3, 7])
        self.expect(attn.Status.ERR_INVALID_ARG, "lengths[0]", self.cache.truncate, [-1, 0])
        self.assert_unchanged(before)
        self.cache.truncate([2, 6])
        self.assertEqual(self.cache.lengths.tolist(), [2, 6])
        self.cache.reset()
        self.assertEqual(self.cache.lengths.tolist(), [0, 0])

    def test_ring_cannot_roll_back_past_evicted_rows(self):
        with self.cache_for(self.seq, capacity=4, mode="ring") as ring:
            ring.append(self.seq.k, self.seq.v)
            self.expect(attn.Status.ERR_INVALID_ARG, "oldest stored position", ring.truncate,
                        [1, 6])
            self.assertEqual(ring.lengths.tolist(), [6, 6])

    def test_bad_config_names_the_field(self):
        self.expect(attn.Status.ERR_INVALID_ARG, "cfg.capacity", attn.KVCache, d_k=4, capacity=0)
        self.expect(attn.Status.ERR_INVALID_ARG, "cfg.grow", attn.KVCache, d_k=4, capacity=4,
                    mode="ring", grow=True)
        self.expect(attn.Status.ERR_DTYPE, "bf16", attn.KVCache, d_k=4, capacity=4,
                    dtype=np.float64, storage="bf16")
        self.expect(attn.Status.ERR_DTYPE, "cfg.storage", attn.KVCache, d_k=4, capacity=4,
                    dtype=np.float64, storage="int8")
        self.expect(attn.Status.ERR_INVALID_ARG, "cfg.group_size", attn.KVCache, d_k=64,
                    capacity=4, storage="int4", group_size=48)
        with self.assertRaises(TypeError):
            attn.KVCache(d_k=4, capacity=4, window=3)
        with self.assertRaises(ValueError):
            attn.KVCache(d_k=4, capacity=4, mode="circular")

    def test_plan_errors_and_execute_mismatch_leave_out_untouched(self):
        q = np.ones((2, 2, 1, 4), np.float32)
        out = np.full((2, 2, 1, 4), 7.0, np.float32)
        self.expect(attn.Status.ERR_SHAPE, "q", self.cache.plan, np.ones((3, 2, 1, 4), np.float32),
                    np.ones((3, 2, 1, 4), np.float32))   # batch 3, the cache has 2
        plan = self.cache.plan(q, out, causal="bottom_right")
        self.assertGreater(plan.workspace_size, 0)
        self.expect(attn.Status.ERR_MISMATCH, "q", plan.execute, np.ones((2, 2, 2, 4), np.float32),
                    np.zeros((2, 2, 2, 4), np.float32))
        self.expect(attn.Status.ERR_INVALID_ARG, "query_counts", plan.execute, q, out, None, [1, 2])
        self.assertTrue((out == 7.0).all())
        plan.execute(q, out)
        self.assertFalse((out == 7.0).any())
        self.cache.close()             # closes the plan first
        self.assertIsNone(plan._handle)
        with self.assertRaises(ValueError):
            plan.execute(q, out)


if __name__ == "__main__":
    unittest.main()

"""attn.PagedCache against the numpy reference of test_attn: a ragged batch
of sequences decoded in one call (GQA, windows), chunked prefill, forks with
copy-on-write, rollback, and the error paths (status, message, nothing
changed)."""

import os
import sys
import unittest

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import attn  # noqa: E402
from test_attn import BOTTOM_RIGHT, rand, reference  # noqa: E402

HKV, H, D = 2, 4, 16


class Model:
    """A paged cache and, per sequence, the rows it holds (numpy)."""

    def __init__(self, dtype=np.float64, **cfg):
        self.rng = np.random.default_rng(19)
        self.dtype = dtype
        self.cache = attn.PagedCache(heads_kv=HKV, d_k=D, dtype=dtype, **cfg)
        self.k, self.v = {}, {}

    def new(self):
        s = self.cache.create_seq()
        self.k[s] = np.zeros((HKV, 0, D), self.dtype)
        self.v[s] = np.zeros((HKV, 0, D), self.dtype)
        return s

    def fork(self, s):
        t = self.cache.fork(s)
        self.k[t], self.v[t] = self.k[s].copy(), self.v[s].copy()
        return t

    def append(self, s, n):
        k, v = rand(self.rng, (HKV, n, D), self.dtype), rand(self.rng, (HKV, n, D), self.dtype)
        self.cache.append(s, k, v)
        self.k[s] = np.concatenate([self.k[s], k], axis=1)
        self.v[s] = np.concatenate([self.v[s], v], axis=1)

    def check(self, seqs, n=1, counts=None, window=None, tol=1e-9):
        q = rand(self.rng, (len(seqs), H, n, D), self.dtype)
        out = np.zeros((len(seqs), H, n, D), self.dtype)
        settings = {"causal": "bottom_right"}
        if window is not None:
            settings["window"] = (window, 0)
        plan = self.cache.plan(q, out, **settings)
        plan.execute(seqs, q, out, query_counts=counts)
        plan.close()
        for b, s in enumerate(seqs):
            nb = n if counts is None else counts[b]
            want = reference(q[b:b + 1, :, :nb], self.k[s][None], self.v[s][None], causal=BOTTOM_RIGHT,
                             window=None if window is None else (window, 0))[0]
            np.testing.assert_allclose(out[b, :, :nb], want[0], rtol=tol, atol=tol)
            if nb < n:
                self.assert_zero(out[b, :, nb:])

    @staticmethod
    def assert_zero(x):
        assert not np.any(x), "rows past the count must be 0"


class TestPaged(unittest.TestCase):
    def test_ragged_decode_and_prefill(self):
        for dtype, tol in ((np.float64, 1e-9), (np.float32, 2e-5)):
            m = Model(dtype, block_size=16, num_blocks=200, max_seqs=8)
            seqs = [m.new() for _ in range(4)]
            for s, L in zip(seqs, (1, 40, 600, 130)):
                m.append(s, L)
            m.check(seqs, tol=tol)
            m.check(seqs, n=3, counts=[1, 3, 0, 2], tol=tol)
            m.check(seqs[1:3], window=50, tol=tol)
            m.append(seqs[2], 40)  # a prefill chunk: 40 queries (the blocked path)
            m.check([seqs[2]], n=40, tol=tol)
            m.cache.close()

    def test_fork_copy_on_write_and_rollback(self):
        m = Model(block_size=8, num_blocks=32, max_seqs=4)
        a = m.new()
        m.append(a, 20)
        free = m.cache.free_blocks
        b = m.fork(a)
        self.assertEqual(m.cache.free_blocks, free)
        np.testing.assert_array_equal(m.cache.block_table(a), m.cache.block_table(b))
        m.append(b, 3)                       # copies b's shared last block
        self.assertEqual(m.cache.free_blocks, free - 1)
        m.append(a, 7)
        m.check([a, b])
        m.cache.truncate(a, 5)
        m.k[a], m.v[a] = m.k[a][:, :5], m.v[a][:, :5]
        m.append(a, 2)
        m.check([a, b])
        m.cache.free_seq(b)
        self.assertEqual(m.cache.length(b), -1)
        self.assertEqual(m.cache.num_seqs, 1)

    def test_compact_storages_equal_the_contiguous_cache(self):
        # f16, int8, int4 blocks hold what a contiguous cache of the same
        # storage holds (the same quantizer), so both give the same attention,
        # forks and rollbacks into a completed K group included.
        rng = np.random.default_rng(5)
        for storage in ("f16", "int8", "int4"):
            pc = attn.PagedCache(heads_kv=HKV, d_k=D, block_size=16, num_blocks=64, max_seqs=4,
                                 storage=storage, group_size=8)
            kc = {}
            a = pc.create_seq()
            k, v = rand(rng, (HKV, 45, D), np.float32), rand(rng, (HKV, 45, D), np.float32)
            pc.append(a, k, v)
            b = pc.fork(a)
            k2, v2 = rand(rng, (HKV, 3, D), np.float32), rand(rng, (HKV, 3, D), np.float32)
            pc.append(b, k2, v2)
            pc.truncate(a, 21)
            k3, v3 = rand(rng, (HKV, 9, D), np.float32), rand(rng, (HKV, 9, D), np.float32)
            pc.append(a, k3, v3)
            for s, steps in ((a, [(k, v), (None, 21), (k3, v3)]), (b, [(k, v), (k2, v2)])):
                kc[s] = attn.KVCache(heads_kv=HKV, d_k=D, capacity=128, storage=storage,
                                     group_size=8)
                for kk, vv in steps:
                    if kk is None:
                        kc[s].truncate([vv])
                    else:
                        kc[s].append(kk[None], vv[None])
            q = rand(rng, (2, H, 1, D), np.float32)
            out = np.zeros((2, H, 1, D), np.float32)
            plan = pc.plan(q, out, causal="bottom_right")
            plan.execute([a, b], q, out)
            plan.close()
            for row, s in enumerate((a, b)):
                want = kc[s].attend(q[row:row + 1], causal="bottom_right")
                np.testing.assert_allclose(out[row:row + 1], want, rtol=1e-5, atol=1e-6,
                                           err_msg=storage)
                kc[s].close()
            pc.close()

    def test_errors(self):
        m = Model(block_size=8, num_blocks=4, max_seqs=2)
        a = m.new()
        m.append(a, 30)
        with self.assertRaises(attn.AttnError) as e:
            m.append(a, 3)                   # needs a fifth block
        self.assertEqual(e.exception.status, attn.Status.ERR_CAPACITY)
        self.assertEqual(m.cache.length(a), 30)
        with self.assertRaises(attn.AttnError) as e:
            m.cache.free_seq(1)              # never created
        self.assertIn("not live", str(e.exception))
        with self.assertRaises(attn.AttnError):
            m.cache.append(7, np.zeros((HKV, 1, D)), np.zeros((HKV, 1, D)))
        q = np.zeros((1, H, 1, D))
        out = np.full((1, H, 1, D), 5.0)
        plan = m.cache.plan(q, out, causal="bottom_right")
        with self.assertRaises(attn.AttnError) as e:
            plan.execute([1], q, out)
        self.assertIn("seq_ids[0]", str(e.exception))
        self.assertTrue(np.all(out == 5.0))
        plan.close()
        with self.assertRaises(ValueError):
            m.cache.plan(q, out, causal=True)    # ambiguous, as for KVCache
        m.cache.close()


if __name__ == "__main__":
    unittest.main()

"""Packed variable-length batches, sinks and the per-key mass through the
Python package, against a float64 numpy reference written here.

Run: ATTN_LIBRARY=build/libattn.so.0 /usr/bin/python3 -m unittest discover -s bindings/python/tests
"""

import math
import os
import sys
import unittest

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import attn  # noqa: E402


def ref(q, k, v, causal=False, sinks=None):
    """q [H,Sq,D], k/v [Hkv,Sk,D]; bottom-right causal if causal. -> out, weights, lse."""
    q, k, v = (np.asarray(a, dtype=np.float64) for a in (q, k, v))
    H, Sq, D = q.shape
    g = H // k.shape[0]
    k, v = np.repeat(k, g, axis=0), np.repeat(v, g, axis=0)
    Sk = k.shape[1]
    s = np.einsum("hid,hjd->hij", q, k) / math.sqrt(D)
    if causal:
        i = np.arange(Sq)[:, None] + (Sk - Sq)
        s = np.where(np.arange(Sk)[None, :] <= i, s, -np.inf)
    sk = np.full((H, Sq, 1), -np.inf) if sinks is None else np.broadcast_to(
        np.asarray(sinks, dtype=np.float64)[:, None, None], (H, Sq, 1))
    allv = np.concatenate([s, sk], axis=2)
    m = allv.max(axis=2, keepdims=True)
    m = np.where(np.isfinite(m), m, 0)
    e = np.exp(allv - m)
    tot = e.sum(axis=2, keepdims=True)
    w = np.where(tot > 0, e[..., :Sk] / np.where(tot > 0, tot, 1), 0)
    lse = np.where(tot[..., 0] > 0, m[..., 0] + np.log(np.where(tot[..., 0] > 0, tot[..., 0], 1)),
                   -np.inf)
    return np.einsum("hij,hjd->hid", w, v), w, lse


class ServingTest(unittest.TestCase):
    def test_varlen_sinks_mass(self):
        rng = np.random.default_rng(3)
        H, Hkv, D = 4, 2, 8
        ql, kl = [5, 0, 17, 9], [7, 3, 17, 30]
        qo = np.concatenate([[0], np.cumsum(ql)]).astype(np.int64)
        ko = np.concatenate([[0], np.cumsum(kl)]).astype(np.int64)
        q = rng.standard_normal((qo[-1], H, D))
        k = rng.standard_normal((ko[-1], Hkv, D))
        v = rng.standard_normal((ko[-1], Hkv, D))
        sinks = np.array([0.5, -1.0, 2.0, -np.inf])
        out, lse, mass = attn.attention(q, k, v, causal="bottom_right", varlen=(qo, ko),
                                        sinks=sinks, return_lse=True, return_mass="group")
        self.assertEqual(out.shape, (qo[-1], H, D))
        self.assertEqual(mass.shape, (Hkv, ko[-1]))
        want_mass = np.zeros((Hkv, ko[-1]))
        for s in range(len(ql)):
            qs, ks = slice(qo[s], qo[s + 1]), slice(ko[s], ko[s + 1])
            ro, rw, rl = ref(q[qs].transpose(1, 0, 2), k[ks].transpose(1, 0, 2),
                             v[ks].transpose(1, 0, 2), causal=True, sinks=sinks)
            np.testing.assert_allclose(out[qs].transpose(1, 0, 2), ro, rtol=1e-10, atol=1e-12)
            np.testing.assert_allclose(lse[:, qs], rl, rtol=1e-10, atol=1e-12)
            for h in range(H):
                want_mass[h // (H // Hkv), ks] += rw[h].sum(axis=0)
        np.testing.assert_allclose(mass, want_mass, rtol=1e-10, atol=1e-12)

    def test_mass_per_head_f32(self):
        rng = np.random.default_rng(4)
        q = rng.standard_normal((2, 3, 40, 16)).astype(np.float32)
        k = rng.standard_normal((2, 3, 70, 16)).astype(np.float32)
        v = rng.standard_normal((2, 3, 70, 16)).astype(np.float32)
        out, w, mass = attn.attention(q, k, v, causal=True, return_weights=True, return_mass=True)
        np.testing.assert_allclose(mass, w.sum(axis=2), rtol=1e-4, atol=1e-5)

    def test_bad_offsets(self):
        q = np.zeros((6, 2, 4))
        with self.assertRaises(attn.AttnError) as cm:
            attn.attention(q, q, q, varlen=([0, 4, 3], None))
        self.assertIn("q_offsets", str(cm.exception))
        with self.assertRaises(attn.AttnError) as cm:
            attn.attention(q, q, q, varlen=([0, 2, 5], None))
        self.assertIn("q_offsets", str(cm.exception))
        with self.assertRaises(attn.AttnError):
            attn.attention(q[None], q[None], q[None], sinks=[0.0, float("nan")])

    def test_kvcache_keep_first_and_sinks(self):
        rng = np.random.default_rng(5)
        W, L, NK, H, D = 40, 130, 3, 2, 8
        k = rng.standard_normal((1, H, L, D))
        v = rng.standard_normal((1, H, L, D))
        q = rng.standard_normal((1, H, 1, D))
        cache = attn.KVCache(batch=1, heads_kv=H, capacity=W, d_k=D, dtype=np.float64, mode="ring")
        cache.set_keep_first(NK)
        for p0 in range(0, L, 25):
            cache.append(k[:, :, p0:p0 + 25], v[:, :, p0:p0 + 25])
        sinks = np.array([1.0, -0.5])
        out = cache.attend(q, causal="bottom_right", sinks=sinks)
        keep = np.r_[0:NK, L - W:L]
        ro, _, _ = ref(q[0], k[0][:, keep], v[0][:, keep], causal=False, sinks=sinks)
        np.testing.assert_allclose(out[0], ro, rtol=1e-10, atol=1e-12)

    def test_kvcache_decode_mass(self):
        rng = np.random.default_rng(6)
        L, H, D = 600, 2, 8
        k = rng.standard_normal((1, H, L, D))
        v = rng.standard_normal((1, H, L, D))
        q = rng.standard_normal((1, H, 1, D))
        cache = attn.KVCache(batch=1, heads_kv=H, capacity=L, d_k=D, dtype=np.float64)
        cache.append(k, v)
        mass = np.zeros((1, H, L))
        cache.attend(q, causal="bottom_right", key_mass=mass)
        _, w, _ = ref(q[0], k[0], v[0])
        np.testing.assert_allclose(mass[0], w[:, 0, :], rtol=1e-10, atol=1e-13)


if __name__ == "__main__":
    unittest.main()

"""Arrays from anywhere (PyTorch, DLPack, the array interface) without copies,
and the API surprises of issue 22, each pinned by a test that failed before.

References are independent: numpy float64 (test_attn.reference) and PyTorch's
own modules.
"""

import os
import pydoc
import sys
import unittest

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
if not os.environ.get("ATTN_TEST_INSTALLED"):   # else: the pip-installed package
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import attn  # noqa: E402
from test_attn import BOTTOM_RIGHT, TOP_LEFT, rand, reference  # noqa: E402

try:
    import torch
except ImportError:   # pragma: no cover - Debian CI has python3-torch
    torch = None


def needs_torch(cls):
    return unittest.skipIf(torch is None, "torch does not import")(cls)


class DLPackOnly:
    """Exposes nothing but the DLPack protocol of the tensor it wraps."""

    def __init__(self, t):
        self._t = t

    def __dlpack__(self, stream=None):
        return self._t.__dlpack__()

    def __dlpack_device__(self):
        return self._t.__dlpack_device__()


class ArrayInterfaceOnly:
    """Exposes nothing but __array_interface__ (of a numpy array)."""

    def __init__(self, a):
        self._a = a
        self.__array_interface__ = a.__array_interface__


@needs_torch
class TestTorch(unittest.TestCase):
    def setUp(self):
        g = torch.Generator().manual_seed(0)
        self.q = torch.randn(2, 3, 5, 4, generator=g)
        self.k = torch.randn(2, 3, 7, 4, generator=g)
        self.v = torch.randn(2, 3, 7, 6, generator=g)

    def numpy_result(self, **kw):
        return attn.attention(self.q.numpy(), self.k.numpy(), self.v.numpy(), **kw)

    def test_torch_in_torch_out_equal_to_numpy_and_the_reference(self):
        for causal in (False, True, "bottom_right"):
            with self.subTest(causal=causal):
                got = attn.attention(self.q, self.k, self.v, causal=causal)
                self.assertIsInstance(got, torch.Tensor)
                self.assertEqual(tuple(got.shape), (2, 3, 5, 6))
                self.assertEqual(got.dtype, torch.float32)
                np.testing.assert_array_equal(got.numpy(), self.numpy_result(causal=causal))
                c = {False: attn.Causal.NONE, True: TOP_LEFT, "bottom_right": BOTTOM_RIGHT}
                want = reference(self.q.numpy(), self.k.numpy(), self.v.numpy(),
                                 causal=c[causal])[0]
                np.testing.assert_allclose(got.numpy(), want, rtol=1e-5, atol=1e-5)

    def test_matches_torch_sdpa_top_left_causal(self):
        q, k, v = (x.double() for x in (self.q, self.k[:, :, :5], self.v[:, :, :5]))
        got = attn.attention(q, k, v, causal=True)
        s = q @ k.transpose(-1, -2) / 2.0
        s = s.masked_fill(torch.ones(5, 5, dtype=torch.bool).triu(1), float("-inf"))
        want = torch.softmax(s, -1) @ v
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)

    def test_out_tensor_is_written_in_place_no_copy(self):
        out = torch.full((2, 3, 5, 6), 7.0)
        ptr = out.data_ptr()
        res = attn.attention(self.q, self.k, self.v, out=out)
        self.assertIs(res, out)
        self.assertEqual(res.data_ptr(), ptr)
        np.testing.assert_array_equal(out.numpy(), self.numpy_result())

    def test_inputs_are_not_copied(self):
        # A plan's tensors point at the torch storage itself.
        desc = attn.Desc()
        out = torch.empty(2, 3, 5, 6)
        plan = attn.Plan(desc, self.q, self.k, self.v, out)
        ptrs = [t.data_pointer for t in plan._tensors[:4]]
        self.assertEqual(ptrs, [x.data_ptr() for x in (self.q, self.k, self.v, out)])
        plan.execute(self.q, self.k, self.v, out)
        np.testing.assert_array_equal(out.numpy(), self.numpy_result())

    def test_weights_lse_and_bshd_layout_come_back_as_tensors(self):
        out, w, lse = attn.attention(self.q, self.k, self.v, return_weights=True,
                                     return_lse=True)
        for t in (out, w, lse):
            self.assertIsInstance(t, torch.Tensor)
        _, w_np, lse_np = self.numpy_result(return_weights=True, return_lse=True)
        np.testing.assert_array_equal(w.numpy(), w_np)
        np.testing.assert_array_equal(lse.numpy(), lse_np)
        qs, ks, vs = (x.transpose(1, 2) for x in (self.q, self.k, self.v))   # strided views
        got = attn.attention(qs, ks, vs, layout="bshd")
        self.assertEqual(tuple(got.shape), (2, 5, 3, 6))
        np.testing.assert_array_equal(got.transpose(1, 2).numpy(), self.numpy_result())

    def test_float64_and_requires_grad_inputs(self):
        q = self.q.double().requires_grad_()
        got = attn.attention(q, self.k.double(), self.v.double())
        self.assertEqual(got.dtype, torch.float64)
        self.assertFalse(got.requires_grad)
        out = torch.empty(2, 3, 5, 6, requires_grad=True)
        with self.assertRaises(ValueError) as cm:
            attn.attention(self.q, self.k, self.v, out=out)
        self.assertIn("requires grad", str(cm.exception))

    def test_torch_masks_and_lengths(self):
        keep = torch.rand(5, 7, generator=torch.Generator().manual_seed(1)) < 0.6
        keep[:, 0] = True
        got = attn.attention(self.q, self.k, self.v, bool_mask=keep[None, None],
                             key_lengths=torch.tensor([7, 4]))
        want = self.numpy_result(bool_mask=keep.numpy()[None, None], key_lengths=[7, 4])
        np.testing.assert_array_equal(got.numpy(), want)

    def test_mha_torch_tensors_in_and_out(self):
        m = torch.nn.MultiheadAttention(8, 2, batch_first=True).eval()
        layer = attn.MHA.from_torch(m)
        x = torch.randn(2, 5, 8, generator=torch.Generator().manual_seed(2))
        out, w = layer(x, x, x)
        self.assertIsInstance(out, torch.Tensor)
        self.assertIsInstance(w, torch.Tensor)
        with torch.no_grad():
            want, want_w = m(x, x, x)
        torch.testing.assert_close(out, want, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(w, want_w, rtol=1e-5, atol=1e-5)

    def test_kvcache_torch_tensors(self):
        cache = attn.KVCache(batch=1, heads_kv=2, capacity=16, d_k=4)
        k = torch.randn(1, 2, 6, 4, generator=torch.Generator().manual_seed(3))
        v = torch.randn(1, 2, 6, 4, generator=torch.Generator().manual_seed(4))
        cache.append(k, v)
        q = torch.randn(1, 2, 2, 4, generator=torch.Generator().manual_seed(5))
        got = cache.attend(q, causal="bottom_right")
        self.assertIsInstance(got, torch.Tensor)
        want = attn.attention(q.numpy(), k.numpy(), v.numpy(), causal="bottom_right")
        np.testing.assert_allclose(got.numpy(), want, rtol=1e-6, atol=1e-6)
        cache.close()

    def test_cuda_or_other_objects_are_type_errors(self):
        with self.assertRaises(TypeError):
            attn.attention([[1.0]], self.k, self.v)
        with self.assertRaises(TypeError):
            attn.Tensor(attn.default_context(), object())


@needs_torch
class TestDLPackAndArrayInterface(unittest.TestCase):
    def test_dlpack_only_objects_share_memory_both_ways(self):
        g = torch.Generator().manual_seed(7)
        q, k, v = (torch.randn(1, 2, 4, 3, generator=g) for _ in range(3))
        out = torch.zeros(1, 2, 4, 3)
        res = attn.attention(DLPackOnly(q), DLPackOnly(k), DLPackOnly(v), out=DLPackOnly(out))
        self.assertIsInstance(res, DLPackOnly)
        want = attn.attention(q.numpy(), k.numpy(), v.numpy())
        np.testing.assert_array_equal(out.numpy(), want)   # written through the capsule
        a = attn.as_numpy(DLPackOnly(q))
        self.assertEqual(a.ctypes.data, q.data_ptr())
        self.assertTrue(a.flags.writeable)
        strided = attn.as_numpy(DLPackOnly(q.transpose(2, 3)))
        np.testing.assert_array_equal(strided, q.transpose(2, 3).numpy())
        self.assertEqual(strided.ctypes.data, q.data_ptr())

    def test_array_interface_objects(self):
        rng = np.random.default_rng(8)
        q, k, v = (rand(rng, (1, 2, 4, 3), np.float64) for _ in range(3))
        got = attn.attention(ArrayInterfaceOnly(q), ArrayInterfaceOnly(k), ArrayInterfaceOnly(v))
        np.testing.assert_array_equal(got, attn.attention(q, k, v))
        self.assertEqual(attn.as_numpy(ArrayInterfaceOnly(q)).ctypes.data, q.ctypes.data)


class TestPackage(unittest.TestCase):
    def test_version_is_the_librarys(self):
        self.assertEqual(attn.__version__, attn.version())
        self.assertEqual(int(attn.__version__.split(".")[0]), attn.EXPECTED_MAJOR)

    def test_help_shows_docstrings(self):
        text = pydoc.render_doc(attn.attention, renderer=pydoc.plaintext)
        for word in ("Args:", "causal", "top_left", "bottom_right", "Returns:", "torch"):
            self.assertIn(word, text)

    def test_py_typed_marker_ships(self):
        self.assertTrue(os.path.exists(os.path.join(os.path.dirname(attn.__file__),
                                                    "py.typed")))


# ---------------------------------------------------------------------------
# Issue 22, item 3: each of these failed on the behaviour before the fix.
class TestSurprises(unittest.TestCase):
    def setUp(self):
        rng = np.random.default_rng(22)
        self.q, self.k, self.v = (rand(rng, (1, 2, 16, 4), np.float64) for _ in range(3))

    def test_empty_global_tokens_means_none(self):
        kw = dict(variant="longformer", window=(2, 2), block_size=4)
        want = attn.attention(self.q, self.k, self.v, **kw)
        for empty in ([], (), np.zeros(0, np.int64)):
            got = attn.attention(self.q, self.k, self.v, global_tokens=empty, **kw)
            np.testing.assert_array_equal(got, want)
        desc = attn.Desc(global_tokens=[])   # the setter alone, too
        desc.close()

    def test_empty_alibi_means_none(self):
        want = attn.attention(self.q, self.k, self.v, causal=True)
        got = attn.attention(self.q, self.k, self.v, causal=True, alibi=[])
        np.testing.assert_array_equal(got, want)
        ref = reference(self.q, self.k, self.v, causal=TOP_LEFT)[0]
        np.testing.assert_allclose(got, ref, rtol=1e-12, atol=1e-12)

    def test_empty_key_lengths_means_none(self):
        got = attn.attention(self.q, self.k, self.v, key_lengths=[])
        np.testing.assert_array_equal(got, attn.attention(self.q, self.k, self.v))

    def test_kvcache_rejects_ambiguous_causal_true(self):
        cache = attn.KVCache(batch=1, heads_kv=2, capacity=32, d_k=4, dtype=np.float64)
        cache.append(self.k, self.v)
        q = self.q[:, :, -3:]
        for call in (lambda: cache.attend(q, causal=True),
                     lambda: cache.plan(q, np.empty_like(q), causal=True)):
            with self.assertRaises(ValueError) as cm:
                call()
            self.assertIn("bottom_right", str(cm.exception))
        got = cache.attend(q, causal="bottom_right")
        want = reference(q, self.k, self.v, causal=BOTTOM_RIGHT)[0]
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
        cache.close()

    def test_attention_causal_true_is_top_left(self):
        q = self.q[:, :, :5]
        got = attn.attention(q, self.k, self.v, causal=True)
        np.testing.assert_array_equal(got, attn.attention(q, self.k, self.v, causal="top_left"))
        want = reference(q, self.k, self.v, causal=TOP_LEFT)[0]
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)

    @unittest.skipIf(torch is None, "torch does not import")
    def test_mha_from_torch_takes_pytorch_mask_polarity(self):
        torch.manual_seed(0)
        m = torch.nn.MultiheadAttention(8, 2, batch_first=True, dtype=torch.float64).eval()
        layer = attn.MHA.from_torch(m)
        self.assertEqual(layer.mask_convention, "torch")
        x = torch.randn(2, 6, 8, dtype=torch.float64)
        kpm = torch.zeros(2, 6, dtype=torch.bool)
        kpm[1, -2:] = True                                  # PyTorch: True = ignore
        am = torch.zeros(6, 6, dtype=torch.bool)
        am[:, 3] = True
        with torch.no_grad():
            want, want_w = m(x, x, x, key_padding_mask=kpm, attn_mask=am)
        for km, a in ((kpm, am), (kpm.numpy(), am.numpy())):   # torch or numpy masks
            out, w = layer(x, x, x, key_padding_mask=km, attn_mask=a)
            torch.testing.assert_close(out, want, rtol=1e-12, atol=1e-12)
            torch.testing.assert_close(w, want_w, rtol=1e-12, atol=1e-12)
        plan_out = torch.empty_like(x)
        plan = layer.plan(x, x, x, plan_out, key_padding_mask=kpm)
        plan.execute(x, x, x, plan_out, key_padding_mask=kpm)
        with torch.no_grad():
            want_kpm, _ = m(x, x, x, key_padding_mask=kpm)
        torch.testing.assert_close(plan_out, want_kpm, rtol=1e-12, atol=1e-12)
        # Float attn_mask: additive in both conventions.
        add = torch.randn(6, 6, dtype=torch.float64)
        with torch.no_grad():
            want_add, _ = m(x, x, x, attn_mask=add)
        torch.testing.assert_close(layer(x, x, x, attn_mask=add)[0], want_add,
                                   rtol=1e-12, atol=1e-12)
        # libattn's polarity on request, and by default for MHA(...).
        keep = attn.MHA.from_torch(m, mask_convention="attn")
        out, _ = keep(x, x, x, key_padding_mask=~kpm, attn_mask=~am)
        torch.testing.assert_close(out, want, rtol=1e-12, atol=1e-12)
        with self.assertRaises(ValueError):
            attn.MHA.from_torch(m, mask_convention="pytorch")

    def test_block_layout_is_shaped(self):
        H, S, b = 2, 16, 4
        rng = np.random.default_rng(5)
        q = rand(rng, (1, H, S, 4), np.float64)
        desc = attn.Desc(variant="bigbird", block_size=b, bigbird=(1, 1, 1, 9))
        plan = attn.Plan(desc, q, q, q, np.empty_like(q))
        lay = plan.block_layout()
        self.assertEqual(lay.shape, (H, S // b, S // b))
        self.assertEqual(lay.dtype, np.uint8)
        self.assertTrue((lay[:, np.arange(4), np.arange(4)] != 0).all())   # the window
        given = (rng.random((1, 4, 3)) < 0.5).astype(np.uint8)
        given[:, :, 0] = 1
        k = rand(rng, (1, H, 10, 4), np.float64)    # S_k = 10: ceil(10/4) = 3 key blocks
        desc2 = attn.Desc(variant="block_sparse", block_size=b, block_layout=given)
        plan2 = attn.Plan(desc2, q, k, k, np.empty_like(q))
        got = plan2.block_layout()
        self.assertEqual(got.shape, (H, 4, 3))   # the plan holds one layer per head
        np.testing.assert_array_equal(got != 0, np.broadcast_to(given != 0, (H, 4, 3)))


if __name__ == "__main__":
    unittest.main()

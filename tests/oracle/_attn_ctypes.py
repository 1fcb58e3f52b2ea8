"""Small ctypes bindings to a built libattn.so, for the Python tests.

Not the Python package (that lives under bindings/python): just enough of
the C API to drive exact attention with masks from numpy arrays, without
copies. Tensors wrap numpy memory; numpy's byte strides become element
strides, so transposed views ([B,S,H,D] memory seen as [B,H,S,D]) and
broadcast views (np.broadcast_to: stride 0) reach the library as they are.
Every wrapper keeps the arrays it hands to C alive.

    lib = Lib("/path/to/libattn.so")
    with lib.context(threads=2) as ctx:
        d = ctx.desc()
        d.set_causal(CAUSAL_TOP_LEFT)
        out, w, lse = ctx.forward(d, q, k, v, weights=True, lse=True)

Failing calls raise AttnError(status, name, message) with the library's
attn_context_last_error() text.
"""

import ctypes as C
import weakref

import numpy as np

# Values from include/attn/attn.h (ABI).
STATUS_NAMES = {
    0: "ATTN_OK", 1: "ATTN_ERR_NULL_ARG", 2: "ATTN_ERR_INVALID_ARG", 3: "ATTN_ERR_SHAPE",
    4: "ATTN_ERR_DTYPE", 5: "ATTN_ERR_LAYOUT", 6: "ATTN_ERR_OVERFLOW", 7: "ATTN_ERR_NO_MEMORY",
    8: "ATTN_ERR_UNSUPPORTED", 9: "ATTN_ERR_CAPACITY", 10: "ATTN_ERR_MISMATCH",
    11: "ATTN_ERR_THREAD", 12: "ATTN_ERR_INTERNAL",
}
OK = 0
DTYPE_F32, DTYPE_F64, DTYPE_U8 = 1, 2, 3
SCORE_SCALED_DOT, SCORE_DOT, SCORE_GENERAL, SCORE_ADDITIVE = 0, 1, 2, 3
CAUSAL_NONE, CAUSAL_TOP_LEFT, CAUSAL_BOTTOM_RIGHT = 0, 1, 2
WINDOW_UNBOUNDED = 2**63 - 1

_NP_DTYPES = {np.dtype(np.float32): DTYPE_F32, np.dtype(np.float64): DTYPE_F64,
              np.dtype(np.uint8): DTYPE_U8}

_p = C.c_void_p
_i64p = C.POINTER(C.c_int64)
_f64p = C.POINTER(C.c_double)

# (name, argtypes, restype): the subset of the C API the tests use.
_FUNCS = [
    ("attn_version_string", [], C.c_char_p),
    ("attn_status_string", [C.c_int], C.c_char_p),
    ("attn_context_options_init", [_p], None),
    ("attn_context_create", [_p, C.POINTER(_p)], C.c_int),
    ("attn_context_destroy", [_p], None),
    ("attn_context_last_error", [_p], C.c_char_p),
    ("attn_tensor_wrap", [_p, C.c_int, C.c_int32, _i64p, _i64p, _p, C.POINTER(_p)], C.c_int),
    ("attn_tensor_destroy", [_p], None),
    ("attn_desc_create", [_p, C.POINTER(_p)], C.c_int),
    ("attn_desc_destroy", [_p], None),
    ("attn_desc_set_score", [_p, C.c_int], C.c_int),
    ("attn_desc_set_scale", [_p, C.c_double], C.c_int),
    ("attn_desc_set_causal", [_p, C.c_int], C.c_int),
    ("attn_desc_set_window", [_p, C.c_int64, C.c_int64], C.c_int),
    ("attn_desc_set_key_lengths", [_p, _i64p, C.c_int64], C.c_int),
    ("attn_desc_set_query_lengths", [_p, _i64p, C.c_int64], C.c_int),
    ("attn_desc_set_bool_mask", [_p, _p], C.c_int),
    ("attn_desc_set_additive_mask", [_p, _p], C.c_int),
    ("attn_desc_set_alibi", [_p, _f64p, C.c_int64], C.c_int),
    ("attn_desc_set_softcap", [_p, C.c_double], C.c_int),
    ("attn_desc_set_general_weight", [_p, _p], C.c_int),
    ("attn_desc_set_additive_weights", [_p, _p, _p, _p, _p], C.c_int),
    ("attn_forward", [_p, _p, _p, _p, _p, _p, _p, _p], C.c_int),
]


class AttnError(RuntimeError):
    """A libattn call returned a status other than ATTN_OK."""

    def __init__(self, status, message):
        self.status = status
        self.name = STATUS_NAMES.get(status, "status %d" % status)
        self.message = message
        super().__init__("%s: %s" % (self.name, message))


class _Options(C.Structure):  # attn_context_options
    _fields_ = [("struct_size", C.c_size_t), ("num_threads", C.c_int32),
                ("alloc", _p), ("free", _p), ("user_data", _p)]


class Lib:
    """The loaded library with argument/result types registered."""

    def __init__(self, path):
        self.path = path
        self.c = C.CDLL(path)
        for name, argtypes, restype in _FUNCS:
            f = getattr(self.c, name)
            f.argtypes = argtypes
            f.restype = restype

    def version(self):
        return self.c.attn_version_string().decode()

    def context(self, threads=0):
        return Context(self, threads)


class Context:
    def __init__(self, lib, threads=0):
        self.lib, self.h = lib, None
        self._children = weakref.WeakSet()  # closed before the context
        opts = _Options()
        lib.c.attn_context_options_init(C.byref(opts))
        opts.num_threads = threads
        h = _p()
        st = lib.c.attn_context_create(C.byref(opts), C.byref(h))
        if st != OK:
            raise AttnError(st, "attn_context_create failed")
        self.h = h

    def close(self):
        if self.h:
            for child in list(self._children):
                child.close()
            self.lib.c.attn_context_destroy(self.h)
            self.h = None

    def __del__(self):
        self.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def last_error(self):
        return self.lib.c.attn_context_last_error(self.h).decode()

    def check(self, status):
        if status != OK:
            raise AttnError(status, self.last_error())

    def tensor(self, array):
        return Tensor(self, array)

    def desc(self):
        return Desc(self)

    def forward(self, desc, q, k, v, out=None, weights=False, lse=False):
        """attn_forward on numpy arrays q [B,H,Sq,Dq], k [B,Hkv,Sk,Dk],
        v [B,Hkv,Sk,Dv] (any strides with a contiguous last dim). Returns
        (out, weights or None, lse or None) as new arrays of q's dtype
        (out may be passed in, e.g. a strided view, to be written)."""
        B, H, Sq, _ = q.shape
        Sk, Dv = k.shape[2], v.shape[3]
        if out is None:
            out = np.zeros((B, H, Sq, Dv), dtype=q.dtype)
        w = np.zeros((B, H, Sq, Sk), dtype=q.dtype) if weights else None
        l = np.zeros((B, H, Sq), dtype=q.dtype) if lse else None
        ts = [self.tensor(a) if a is not None else None for a in (q, k, v, out, w, l)]
        try:
            self.check(self.lib.c.attn_forward(self.h, desc.h, *[t.h if t else None for t in ts]))
        finally:
            for t in ts:
                if t is not None:
                    t.close()
        return out, w, l


class Tensor:
    """A borrowed view of a numpy array (kept alive by this object)."""

    def __init__(self, ctx, array):
        if array.dtype == np.bool_:
            array = array.view(np.uint8)
        dt = _NP_DTYPES.get(array.dtype)
        if dt is None:
            raise TypeError("unsupported dtype %s" % array.dtype)
        item = array.itemsize
        if any(s % item for s in array.strides) or any(s < 0 for s in array.strides):
            raise ValueError("strides %s are not non-negative multiples of %d" % (array.strides, item))
        self.ctx, self.array, self.h = ctx, array, None
        rank = array.ndim
        self._shape = (C.c_int64 * rank)(*array.shape)
        self._strides = (C.c_int64 * rank)(*[s // item for s in array.strides])
        h = _p()
        ctx.check(ctx.lib.c.attn_tensor_wrap(ctx.h, dt, rank, self._shape, self._strides,
                                             C.c_void_p(array.ctypes.data), C.byref(h)))
        self.h = h
        ctx._children.add(self)

    def close(self):
        if self.h:
            self.ctx.lib.c.attn_tensor_destroy(self.h)
            self.h = None

    def __del__(self):
        self.close()


class Desc:
    """Descriptor; setters raise AttnError and keep what they borrow alive."""

    def __init__(self, ctx):
        self.ctx = ctx
        h = _p()
        self._keep = {}
        self.h = None
        ctx.check(ctx.lib.c.attn_desc_create(ctx.h, C.byref(h)))
        self.h = h
        ctx._children.add(self)

    def close(self):
        if self.h:
            self.ctx.lib.c.attn_desc_destroy(self.h)
            self.h = None
        for t in self._keep.values():
            if isinstance(t, Tensor):
                t.close()
        self._keep = {}

    def __del__(self):
        self.close()

    def _call(self, name, *args):
        self.ctx.check(getattr(self.ctx.lib.c, name)(self.h, *args))

    def set_score(self, score):
        self._call("attn_desc_set_score", score)

    def set_scale(self, scale):
        self._call("attn_desc_set_scale", scale)

    def set_causal(self, causal):
        self._call("attn_desc_set_causal", causal)

    def set_window(self, left=None, right=None):
        self._call("attn_desc_set_window", WINDOW_UNBOUNDED if left is None else left,
                   WINDOW_UNBOUNDED if right is None else right)

    def _lengths(self, name, key, lengths):
        if lengths is None:
            self._call(name, None, 0)
            self._keep.pop(key, None)
            return
        arr = np.ascontiguousarray(lengths, dtype=np.int64)
        self._call(name, arr.ctypes.data_as(_i64p), arr.size)
        self._keep[key] = arr

    def set_key_lengths(self, lengths):
        self._lengths("attn_desc_set_key_lengths", "key_lengths", lengths)

    def set_query_lengths(self, lengths):
        self._lengths("attn_desc_set_query_lengths", "query_lengths", lengths)

    def _tensor(self, name, key, array):
        t = Tensor(self.ctx, array) if array is not None else None
        self._call(name, t.h if t else None)
        old = self._keep.pop(key, None)
        if old is not None:
            old.close()
        if t is not None:
            self._keep[key] = t

    def set_bool_mask(self, mask):
        """mask: uint8/bool [B|1, H|1, Sq, Sk]; True (non-zero) = attend."""
        self._tensor("attn_desc_set_bool_mask", "bool_mask", mask)

    def set_additive_mask(self, mask):
        self._tensor("attn_desc_set_additive_mask", "additive_mask", mask)

    def set_alibi(self, slopes):
        if slopes is None:
            self._call("attn_desc_set_alibi", None, 0)
            return
        arr = np.ascontiguousarray(slopes, dtype=np.float64)
        self._call("attn_desc_set_alibi", arr.ctypes.data_as(_f64p), arr.size)
        self._keep["alibi"] = arr

    def set_softcap(self, cap):
        self._call("attn_desc_set_softcap", cap)

    def set_general_weight(self, w):
        self._tensor("attn_desc_set_general_weight", "general_w", w)

    def set_additive_weights(self, w_q, w_k, bias, v):
        ts = [Tensor(self.ctx, a) if a is not None else None for a in (w_q, w_k, bias, v)]
        self._call("attn_desc_set_additive_weights", *[t.h if t else None for t in ts])
        for key, t in zip(("add_wq", "add_wk", "add_bias", "add_v"), ts):
            old = self._keep.pop(key, None)
            if old is not None:
                old.close()
            if t is not None:
                self._keep[key] = t

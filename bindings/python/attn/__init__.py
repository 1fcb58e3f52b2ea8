"""libattn for Python: attention on numpy arrays through libattn's C ABI.

Thin by design: the objects mirror the C handles (Context, Tensor, Desc, Plan)
and every descriptor setter is one row of ``_DESC_SETTERS``. numpy arrays are
passed to C as views, never copied: q, k, v and out may be any float32/float64
arrays whose last axis is contiguous, e.g. [B, S, H, D] arrays seen as
[B, H, S, D] through strides (``layout="bshd"``).

    import numpy as np, attn
    q = np.random.rand(2, 8, 128, 64).astype(np.float32)   # [B, H, S, D]
    out = attn.attention(q, q, q, causal=True)

Errors raise :class:`AttnError` (``.status``, ``.message`` naming the bad
argument), :class:`TypeError` / :class:`ValueError` for arrays that cannot be
viewed without a copy.
"""

import ctypes
import enum
import threading
from ctypes import POINTER, byref, c_double, c_int, c_int64, c_uint64, c_void_p

import numpy as np

from ._lib import (EXPECTED_MAJOR, AttnError, ContextOptions, Status, UnsupportedError,
                   load, register_handle, unregister_handle)

__all__ = ["AttnError", "UnsupportedError", "Status", "DType", "Variant", "Score", "Causal",
           "Context", "Tensor", "Desc", "Plan", "attention", "version", "version_number",
           "library_path", "WINDOW_UNBOUNDED", "EXPECTED_MAJOR"]

_lib = load()

WINDOW_UNBOUNDED = 2**63 - 1   # ATTN_WINDOW_UNBOUNDED


class DType(enum.IntEnum):
    F32 = 1
    F64 = 2
    U8 = 3


class Variant(enum.IntEnum):
    EXACT = 0
    SWIN = 1
    LONGFORMER = 2
    BIGBIRD = 3
    BLOCK_SPARSE = 4
    LINEAR_ELU = 5
    PERFORMER = 6
    LINFORMER = 7


class Score(enum.IntEnum):
    SCALED_DOT = 0
    DOT = 1
    GENERAL = 2
    ADDITIVE = 3


class Causal(enum.IntEnum):
    NONE = 0
    TOP_LEFT = 1
    BOTTOM_RIGHT = 2


def version():
    """The loaded library's version string, e.g. "0.1.0"."""
    return _lib.attn_version_string().decode()


def version_number():
    """MAJOR*10000 + MINOR*100 + PATCH of the loaded library."""
    return int(_lib.attn_version_number())


def library_path():
    """The path (or soname) libattn was loaded from."""
    return _lib.path


_NP_DTYPES = {np.dtype(np.float32): DType.F32, np.dtype(np.float64): DType.F64,
              np.dtype(np.uint8): DType.U8, np.dtype(np.bool_): DType.U8}


class Context:
    """attn_context: worker threads and the last error message.

    Use one context per Python thread (the library's rule). ``threads=0``
    means $ATTN_NUM_THREADS or the number of online cores.
    """

    def __init__(self, threads=0):
        opts = ContextOptions()
        _lib.attn_context_options_init(byref(opts))
        opts.num_threads = int(threads)
        handle = c_void_p()
        _lib.attn_context_create(byref(opts), byref(handle))
        self._handle = handle.value

    @property
    def handle(self):
        if not self._handle:
            raise ValueError("attn: the context is closed")
        return self._handle

    @property
    def num_threads(self):
        return int(_lib.attn_context_num_threads(self.handle))

    @property
    def last_error(self):
        return _lib.attn_context_last_error(self._handle).decode("utf-8", "replace")

    def close(self):
        """Destroy the context. Objects made with it must not be used afterwards
        (they keep it alive, so normally let them go first)."""
        if getattr(self, "_handle", None):
            _lib.attn_context_destroy(self._handle)
            self._handle = None

    __del__ = close

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


_default = threading.local()


def default_context():
    """This thread's lazily created default Context."""
    ctx = getattr(_default, "ctx", None)
    if ctx is None:
        ctx = _default.ctx = Context()
    return ctx


class Tensor:
    """attn_tensor wrapping a numpy array's memory (no copy).

    The Tensor keeps the array alive. Checks (before C sees the array): dtype
    float32/float64 (uint8/bool for masks), rank 1..4, non-negative strides
    that are whole elements, the last axis contiguous when ``contiguous_last``,
    and the array writeable when ``writeable``.
    """

    def __init__(self, ctx, array, name="tensor", writeable=False, contiguous_last=False):
        if not isinstance(array, np.ndarray):
            raise TypeError("%s: expected a numpy.ndarray, got %s" % (name, type(array).__name__))
        dtype = _NP_DTYPES.get(array.dtype)
        if dtype is None:
            raise TypeError("%s: dtype %s is not supported (use float32 or float64%s)"
                            % (name, array.dtype, ", or uint8/bool for masks"))
        if not 1 <= array.ndim <= 4:
            raise ValueError("%s: rank %d (shape %s), expected 1..4"
                             % (name, array.ndim, array.shape))
        item = array.itemsize
        strides = []
        for axis, s in enumerate(array.strides):
            if s < 0 or s % item:
                raise ValueError("%s: stride %d bytes on axis %d is %s; use np.ascontiguousarray"
                                 % (name, s, axis, "negative" if s < 0
                                    else "not a whole number of elements"))
            strides.append(s // item)
        if contiguous_last and strides[-1] != 1 and array.shape[-1] != 1:
            raise ValueError("%s: the last axis must be contiguous (stride 1 element), got "
                             "stride %d; use np.ascontiguousarray" % (name, strides[-1]))
        if writeable and not array.flags.writeable:
            raise ValueError("%s: the array is read-only" % name)
        self.ctx = ctx
        self.array = array
        self.dtype = dtype
        self.shape = tuple(int(d) for d in array.shape)
        self.strides = tuple(strides)
        rank = array.ndim
        shape_c = (c_int64 * rank)(*self.shape)
        strides_c = (c_int64 * rank)(*self.strides)
        handle = c_void_p()
        _lib.attn_tensor_wrap(ctx.handle, int(dtype), rank, shape_c, strides_c,
                              c_void_p(array.ctypes.data), byref(handle))
        self._handle = handle.value
        register_handle(self._handle, ctx.handle)

    @property
    def handle(self):
        return self._handle

    @property
    def data_pointer(self):
        """The address C reads/writes (== the array's first element)."""
        return _lib.attn_tensor_data(self._handle)

    def matches(self, array):
        """Same dtype, shape and strides as ``array`` (so set_data can reuse it)."""
        return (isinstance(array, np.ndarray) and _NP_DTYPES.get(array.dtype) == self.dtype
                and array.shape == self.shape
                and all(s >= 0 and s % array.itemsize == 0 for s in array.strides)
                and tuple(s // array.itemsize for s in array.strides) == self.strides)

    def set_data(self, array):
        """Point the tensor at ``array`` (same dtype/shape/strides: see matches())."""
        if not self.matches(array):
            raise ValueError("set_data: array dtype/shape/strides differ from the tensor's")
        _lib.attn_tensor_set_data(self._handle, c_void_p(array.ctypes.data))
        self.array = array

    def close(self):
        if getattr(self, "_handle", None):
            unregister_handle(self._handle)
            _lib.attn_tensor_destroy(self._handle)
            self._handle = None

    __del__ = close


def _as_tensor(ctx, x, name, **checks):
    if x is None:
        return None
    if isinstance(x, Tensor):
        return x
    return Tensor(ctx, x, name=name, **checks)


def _enum(cls, value):
    if isinstance(value, str):
        try:
            return cls[value.upper()]
        except KeyError:
            raise ValueError("%s: unknown value %r (one of %s)"
                             % (cls.__name__, value, ", ".join(m.name.lower() for m in cls)))
    return int(value)  # out-of-range ints go to C, which reports them


def _window_bound(value):
    return WINDOW_UNBOUNDED if value is None else int(value)


# Argument kinds of descriptor setters: how a Python value becomes C arguments.
# Each kind: (ctypes argtypes, convert(desc, value, setter) -> (c args, keepalive)).
def _k_int(_d, v, _n):
    return [int(v)], None


def _k_float(_d, v, _n):
    return [float(v)], None


def _k_array(np_dtype):
    def conv(_d, v, name):
        if v is None:
            return [None, 0], None
        arr = np.ascontiguousarray(v, dtype=np_dtype)   # no copy if already so
        if arr.ndim != 1:
            raise ValueError("%s: expected a 1-D sequence" % name)
        ptr = arr.ctypes.data_as(POINTER(np.ctypeslib.as_ctypes_type(np_dtype)))
        return [ptr, arr.size], arr
    return conv


def _k_tensor():
    def conv(d, v, name):
        if v is None:
            return [None], None
        t = _as_tensor(d.ctx, v, name)
        return [t.handle], t
    return conv


def _k_enum(cls):
    def conv(_d, v, _n):
        return [_enum(cls, v)], None
    return conv


INT = ([c_int64], _k_int)
UINT64 = ([c_uint64], _k_int)
FLOAT = ([c_double], _k_float)
WINDOW = ([c_int64], lambda _d, v, _n: ([_window_bound(v)], None))
I64_ARRAY = ([POINTER(c_int64), c_int64], _k_array(np.int64))
F64_ARRAY = ([POINTER(c_double), c_int64], _k_array(np.float64))
TENSOR = ([c_void_p], _k_tensor())
VARIANT = ([c_int], _k_enum(Variant))
SCORE = ([c_int], _k_enum(Score))
CAUSAL = ([c_int], _k_enum(Causal))

# Descriptor setters: Python name -> (C function, argument kinds). Desc gets a
# method set_<name>(*values) for each row, and attention() accepts <name>=value
# (a tuple for several values). A new setter in the C API is one new row.
_DESC_SETTERS = {
    "variant": ("attn_desc_set_variant", [VARIANT]),
    "score": ("attn_desc_set_score", [SCORE]),
    "scale": ("attn_desc_set_scale", [FLOAT]),
    "causal": ("attn_desc_set_causal", [CAUSAL]),
    "window": ("attn_desc_set_window", [WINDOW, WINDOW]),
    "key_lengths": ("attn_desc_set_key_lengths", [I64_ARRAY]),
    "query_lengths": ("attn_desc_set_query_lengths", [I64_ARRAY]),
    "bool_mask": ("attn_desc_set_bool_mask", [TENSOR]),
    "additive_mask": ("attn_desc_set_additive_mask", [TENSOR]),
    "alibi": ("attn_desc_set_alibi", [F64_ARRAY]),
    "softcap": ("attn_desc_set_softcap", [FLOAT]),
    "general_weight": ("attn_desc_set_general_weight", [TENSOR]),
    "additive_weights": ("attn_desc_set_additive_weights", [TENSOR, TENSOR, TENSOR, TENSOR]),
    # approx.h
    "swin": ("attn_desc_set_swin", [INT, INT, INT, INT]),
    "swin_bias": ("attn_desc_set_swin_bias", [TENSOR]),
    "global_tokens": ("attn_desc_set_global_tokens", [I64_ARRAY]),
    "block_size": ("attn_desc_set_block_size", [INT]),
    "bigbird": ("attn_desc_set_bigbird", [INT, INT, INT, UINT64]),
    "block_layout": ("attn_desc_set_block_layout", [TENSOR]),
    "features": ("attn_desc_set_features", [INT, UINT64]),
    "lowrank": ("attn_desc_set_lowrank", [INT, UINT64]),
    "lowrank_proj": ("attn_desc_set_lowrank_proj", [TENSOR, TENSOR]),
}

for _name, (_cfn, _kinds) in _DESC_SETTERS.items():
    _lib.declare(_cfn, "status", [c_void_p] + [t for k in _kinds for t in k[0]],
                 first_arg_is_ctx=False)


class Desc:
    """attn_desc: what to compute. Defaults: exact scaled-dot attention.

    Methods ``set_<name>(...)`` map 1:1 to ``attn_desc_set_<name>`` (see
    _DESC_SETTERS): enums accept the enum, its int or its name ("top_left"),
    arrays accept any sequence, tensors accept numpy arrays. The descriptor
    keeps everything it was given alive (the C side borrows it), and plans
    keep what they were created with.
    """

    def __init__(self, ctx=None, **settings):
        self.ctx = ctx if ctx is not None else default_context()
        handle = c_void_p()
        _lib.attn_desc_create(self.ctx.handle, byref(handle))
        self._handle = handle.value
        register_handle(self._handle, self.ctx.handle)
        self._keep = {}
        self.set(**settings)

    @property
    def handle(self):
        return self._handle

    def set(self, **settings):
        """desc.set(causal="top_left", window=(8, 0), ...): several setters."""
        for name, value in settings.items():
            if name not in _DESC_SETTERS:
                raise TypeError("unknown descriptor setting %r (known: %s)"
                                % (name, ", ".join(sorted(_DESC_SETTERS))))
            args = value if isinstance(value, tuple) else (value,)
            getattr(self, "set_" + name)(*args)
        return self

    def _set(self, name, values):
        cfn, kinds = _DESC_SETTERS[name]
        if len(values) != len(kinds):
            raise TypeError("set_%s takes %d value(s), got %d" % (name, len(kinds), len(values)))
        cargs, keep = [], []
        for kind, value in zip(kinds, values):
            a, k = kind[1](self, value, name)
            cargs.extend(a)
            keep.append(k)
        getattr(_lib, cfn)(self._handle, *cargs)
        self._keep[name] = keep   # replaces what an earlier call borrowed
        return self

    def close(self):
        if getattr(self, "_handle", None):
            unregister_handle(self._handle)
            _lib.attn_desc_destroy(self._handle)
            self._handle = None

    __del__ = close


def _make_setter(name):
    cfn, kinds = _DESC_SETTERS[name]

    def setter(self, *values):
        return self._set(name, values)
    setter.__name__ = "set_" + name
    setter.__doc__ = "%s(desc, %d value(s)); returns self." % (cfn, len(kinds))
    return setter


for _name in _DESC_SETTERS:
    setattr(Desc, "set_" + _name, _make_setter(_name))


def _view(array, layout, name):
    """[B, S, H, D] arrays are seen as [B, H, S, D] (a strided view, no copy)."""
    if array is None or isinstance(array, Tensor) or layout == "bhsd":
        return array
    if layout != "bshd":
        raise ValueError("layout must be 'bhsd' or 'bshd', got %r" % (layout,))
    if not isinstance(array, np.ndarray) or array.ndim != 4:
        raise ValueError("%s: layout 'bshd' needs a 4-D numpy array" % name)
    return array.transpose(0, 2, 1, 3)


_OPERANDS = ("q", "k", "v", "out", "weights", "lse")


class Plan:
    """attn_plan: validated once for these arrays' dtype/shapes/strides, then
    execute() any number of times on arrays laid out the same way.

    ``layout="bshd"`` applies to q, k, v and out (weights [B,H,S_q,S_k] and
    lse [B,H,S_q] have one layout).
    """

    def __init__(self, desc, q, k, v, out, weights=None, lse=None, layout="bhsd"):
        self.desc = desc
        self.ctx = desc.ctx
        self.layout = layout
        arrays = self._views(q, k, v, out, weights, lse)
        self._tensors = [self._tensor(n, a) for n, a in zip(_OPERANDS, arrays)]
        handles = [t.handle if t is not None else None for t in self._tensors]
        handle = c_void_p()
        _lib.attn_plan_create(self.ctx.handle, desc.handle, *handles, byref(handle))
        self._handle = handle.value
        register_handle(self._handle, self.ctx.handle)
        # What the plan borrows through the descriptor, as of now.
        self._borrowed = list(desc._keep.values())

    def _views(self, *arrays):
        return [_view(a, self.layout if i < 4 else "bhsd", _OPERANDS[i])
                for i, a in enumerate(arrays)]

    def _tensor(self, name, array):
        return _as_tensor(self.ctx, array, name, writeable=name in ("out", "weights", "lse"),
                          contiguous_last=name != "lse")

    @property
    def handle(self):
        return self._handle

    @property
    def workspace_size(self):
        return int(_lib.attn_plan_workspace_size(self._handle))

    def execute(self, q, k, v, out, weights=None, lse=None):
        """Run on new arrays (same dtype/shapes/strides as at plan time; else
        AttnError ERR_MISMATCH). Writes out (and weights, lse) in place."""
        arrays = self._views(q, k, v, out, weights, lse)
        handles = []
        temps = []
        for name, t, a in zip(_OPERANDS, self._tensors, arrays):
            if a is None:
                handles.append(None)
            elif isinstance(a, Tensor):
                handles.append(a.handle)
            elif t is not None and t.matches(a):
                if name in ("out", "weights", "lse") and not a.flags.writeable:
                    raise ValueError("%s: the array is read-only" % name)
                t.set_data(a)
                handles.append(t.handle)
            else:   # different layout: let the library name the mismatch
                tmp = self._tensor(name, a)
                temps.append(tmp)
                handles.append(tmp.handle)
        _lib.attn_plan_execute(self._handle, *handles)
        return out

    def block_layout(self):
        """The block layout a sparse plan uses: uint8 [H, ceil(S_q/b), ceil(S_k/b)]
        flattened (attn_plan_block_layout)."""
        size = ctypes.c_size_t(0)
        try:
            _lib.attn_plan_block_layout(self._handle, None, byref(size))
        except AttnError as e:
            if e.status != Status.ERR_INVALID_ARG or size.value == 0:
                raise
        buf = np.zeros(size.value, dtype=np.uint8)
        _lib.attn_plan_block_layout(self._handle, buf.ctypes.data_as(POINTER(ctypes.c_uint8)),
                                    byref(size))
        return buf

    def redraw_features(self, seed):
        """Performer: redraw the random features from ``seed``."""
        _lib.attn_plan_redraw_features(self._handle, int(seed))

    def close(self):
        if getattr(self, "_handle", None):
            unregister_handle(self._handle)
            _lib.attn_plan_destroy(self._handle)
            self._handle = None

    __del__ = close


def _causal(value):
    if value is True:
        return Causal.TOP_LEFT
    if value is False or value is None:
        return Causal.NONE
    return value


def attention(q, k, v, *, causal=False, scale=None, layout="bhsd", out=None,
              return_weights=False, return_lse=False, ctx=None, **settings):
    """One-shot attention on numpy arrays.

    q: [B, H, S_q, d], k: [B, H_kv, S_k, d], v: [B, H_kv, S_k, d_v] (or
    [B, S, H, D] each with ``layout="bshd"``); all float32 or all float64.
    ``causal``: False, True (= "top_left") or "bottom_right". ``scale``:
    default 1/sqrt(d). Any descriptor setting is accepted by name, e.g.
    ``window=(16, 0)``, ``key_lengths=[5, 7]``, ``bool_mask=m``, ``alibi=s``,
    ``variant="longformer"``, ``global_tokens=[0]``.

    Returns out (in q's layout), or a tuple (out, weights?, lse?) when
    return_weights / return_lse are set. ``out`` may be given (written in
    place, no allocation).
    """
    for name, a in (("q", q), ("k", k), ("v", v)):
        if not isinstance(a, np.ndarray) or a.ndim != 4:
            raise ValueError("%s: expected a 4-D numpy array, got %s"
                             % (name, getattr(a, "shape", type(a).__name__)))
    ctx = ctx if ctx is not None else default_context()
    desc = Desc(ctx, causal=_causal(causal), **settings)
    if scale is not None:
        desc.set_scale(scale)
    qv, kv, vv = (_view(a, layout, n) for a, n in ((q, "q"), (k, "k"), (v, "v")))
    B, H, Sq, _ = qv.shape
    Sk, Dv = kv.shape[2], vv.shape[3]
    if out is None:
        shape = (B, H, Sq, Dv) if layout == "bhsd" else (B, Sq, H, Dv)
        out = np.empty(shape, dtype=q.dtype)
    weights = np.empty((B, H, Sq, Sk), dtype=q.dtype) if return_weights else None
    lse = np.empty((B, H, Sq), dtype=q.dtype) if return_lse else None
    plan = Plan(desc, q, k, v, out, weights, lse, layout=layout)
    try:
        plan.execute(q, k, v, out, weights, lse)
    finally:
        plan.close()
        desc.close()
    if not (return_weights or return_lse):
        return out
    result = (out,)
    if return_weights:
        result += (weights,)
    if return_lse:
        result += (lse,)
    return result

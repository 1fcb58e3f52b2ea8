"""libattn for Python: attention on numpy arrays through libattn's C ABI.

Thin by design: the objects mirror the C handles (Context, Tensor, Desc, Plan)
and every descriptor setter is one row of ``_DESC_SETTERS``. numpy arrays are
passed to C as views, never copied: q, k, v and out may be any float32/float64
arrays whose last axis is contiguous, e.g. [B, S, H, D] arrays seen as
[B, H, S, D] through strides (``layout="bshd"``). 16-bit inputs: float16
arrays, and bfloat16 as uint16 arrays tagged with :func:`as_bf16` (numpy has
no bfloat16; :func:`to_bf16` / :func:`from_bf16` convert); out is the same
16-bit type or float32, weights and lse are float32.

    import numpy as np, attn
    q = np.random.rand(2, 8, 128, 64).astype(np.float32)   # [B, H, S, D]
    out = attn.attention(q, q, q, causal=True)

Errors raise :class:`AttnError` (``.status``, ``.message`` naming the bad
argument), :class:`TypeError` / :class:`ValueError` for arrays that cannot be
viewed without a copy.
"""

from __future__ import annotations

import ctypes
import enum
import threading
import weakref
from ctypes import POINTER, byref, c_double, c_int, c_int64, c_uint64, c_void_p
from typing import Any, Optional, Tuple, Union

import numpy as np

from . import _lib as _lib_mod
from ._arrays import BF16Array, as_numpy, empty_like_input, is_torch
from ._lib import (EXPECTED_MAJOR, MHA_WEIGHT_FIELDS, AttnError, ContextOptions,
                   KVCacheConfig, KVCacheRaw, MhaConfig, MhaGrads, MhaWeights, Status,
                   UnsupportedError, load, register_handle, unregister_handle)

__all__ = ["AttnError", "UnsupportedError", "Status", "DType", "Variant", "Score", "Causal",
           "Context", "Tensor", "Desc", "Plan", "attention", "version", "version_number",
           "library_path", "WINDOW_UNBOUNDED", "EXPECTED_MAJOR", "heads_split_view",
           "heads_merge_view", "heads_split", "heads_merge", "MHA", "MHAPlan", "MHATrainPlan", "KVCache",
           "KVCachePlan", "KVCacheMode", "KVCacheStorage", "as_numpy", "__version__", "merge_states",
           "BF16Array", "as_bf16", "to_bf16", "from_bf16", "PagedCache", "PagedPlan"]

_lib = load()

#: The loaded libattn's version (attn_version_string()); its major is EXPECTED_MAJOR.
__version__ = _lib.attn_version_string().decode()

WINDOW_UNBOUNDED = 2**63 - 1   # ATTN_WINDOW_UNBOUNDED


class DType(enum.IntEnum):
    F32 = 1
    F64 = 2
    U8 = 3
    BF16 = 4
    F16 = 5


def as_bf16(array):
    """Tag a uint16 array as bfloat16 (a view, no copy)."""
    array = np.asarray(array)
    if array.dtype != np.uint16:
        raise TypeError("as_bf16: expected a uint16 array of bfloat16 bits, got %s (use to_bf16 "
                        "to convert floats)" % array.dtype)
    return array.view(BF16Array)


def to_bf16(array):
    """float → bfloat16 (round to nearest even; NaN stays NaN), as a tagged
    uint16 array."""
    f = np.ascontiguousarray(array, dtype=np.float32)
    u = f.view(np.uint32).astype(np.uint64)
    r = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)
    nan = np.isnan(f)
    if nan.any():
        r[nan] = ((u[nan] >> 16) | 0x40).astype(np.uint16)
    return r.view(BF16Array)


def from_bf16(array):
    """bfloat16 bits (a uint16 array) → float32 (exact)."""
    a = np.ascontiguousarray(np.asarray(array).view(np.uint16))
    return (a.astype(np.uint32) << 16).view(np.float32)


def _attn_dtype(array):
    if isinstance(array, BF16Array):
        return DType.BF16
    return _NP_DTYPES.get(array.dtype)


def _is_16bit(array):
    return isinstance(array, np.ndarray) and _attn_dtype(array) in (DType.BF16, DType.F16)


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


#: Anything attn accepts as an array: numpy.ndarray, a CPU torch.Tensor, or an
#: object with __dlpack__ / __array_interface__ (viewed, never copied).
ArrayLike = Any


def version() -> str:
    """The loaded library's version string, e.g. "0.1.0"."""
    return _lib.attn_version_string().decode()


def version_number() -> int:
    """MAJOR*10000 + MINOR*100 + PATCH of the loaded library."""
    return int(_lib.attn_version_number())


def library_path() -> str:
    """The path (or soname) libattn was loaded from."""
    return _lib.path


_NP_DTYPES = {np.dtype(np.float32): DType.F32, np.dtype(np.float64): DType.F64,
              np.dtype(np.uint8): DType.U8, np.dtype(np.bool_): DType.U8,
              np.dtype(np.float16): DType.F16}


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


def default_context() -> "Context":
    """This thread's lazily created default Context."""
    ctx = getattr(_default, "ctx", None)
    if ctx is None:
        ctx = _default.ctx = Context()
    return ctx


def _canonical_strides(shape, strides):
    """Element strides with those of size-1 axes replaced by a fixed choice.

    numpy gives size-1 axes arbitrary strides (e.g. np.ascontiguousarray of a
    transposed [B, 1, H, D] array keeps the old ones), and the library
    compares strides exactly when a plan executes on new arrays. A size-1
    axis is never stepped along, so its stride does not matter: use
    stride(next axis) * size(next axis) (1 for the last axis), so arrays that
    address the same elements get the same strides."""
    out = list(strides)
    for a in range(len(out) - 1, -1, -1):
        if shape[a] == 1:
            out[a] = 1 if a == len(out) - 1 else out[a + 1] * shape[a + 1]
    return tuple(out)


class Tensor:
    """attn_tensor wrapping an array's memory (no copy): a numpy array, a CPU
    torch tensor, or anything with ``__dlpack__`` / ``__array_interface__``
    (see :func:`as_numpy`).

    The Tensor keeps the array alive. Checks (before C sees the array): dtype
    float32/float64/float16, bfloat16 (a uint16 array tagged by as_bf16), or
    uint8/bool for masks; rank 1..4, non-negative strides
    that are whole elements, the last axis contiguous when ``contiguous_last``,
    and the array writeable when ``writeable``.
    """

    def __init__(self, ctx, array, name="tensor", writeable=False, contiguous_last=False):
        array = as_numpy(array, name, writeable)   # torch / DLPack / array interface: a view
        dtype = _attn_dtype(array)
        if dtype is None:
            hint = " (bfloat16? tag it with attn.as_bf16)" if array.dtype == np.uint16 else ""
            raise TypeError("%s: dtype %s is not supported (use float32, float64, float16 or "
                            "bfloat16%s, or uint8/bool for masks)" % (name, array.dtype, hint))
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
        strides = _canonical_strides(array.shape, strides)
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
        return (isinstance(array, np.ndarray) and _attn_dtype(array) == self.dtype
                and array.shape == self.shape
                and all(s >= 0 and s % array.itemsize == 0 for s in array.strides)
                and _canonical_strides(array.shape, [s // array.itemsize for s in array.strides])
                == self.strides)

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
        if is_torch(v) or hasattr(v, "__dlpack__"):
            v = as_numpy(v, name)
        arr = np.ascontiguousarray(v, dtype=np_dtype)   # no copy if already so
        if arr.ndim != 1:
            raise ValueError("%s: expected a 1-D sequence" % name)
        if arr.size == 0:   # [] means "none", as None does (C wants NULL with count 0)
            return [None, 0], None
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


def _k_out_tensor():
    def conv(d, v, name):
        if v is None:
            return [None], None
        t = _as_tensor(d.ctx, v, name, writeable=True, contiguous_last=True)
        return [t.handle], t
    return conv


def _k_offsets(_d, v, name):
    if v is None:
        return [None], None
    arr = np.ascontiguousarray(v, dtype=np.int64)
    if arr.ndim != 1:
        raise ValueError("%s: expected a 1-D sequence of offsets" % name)
    return [arr.ctypes.data_as(POINTER(c_int64))], arr


OUT_TENSOR = ([c_void_p], _k_out_tensor())
OFFSETS = ([POINTER(c_int64)], _k_offsets)
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
    # serving: set_varlen(q_offsets, k_offsets=None) (n = len(q_offsets) - 1),
    # set_sinks(logits), set_key_mass(array written by every execute)
    "varlen": ("attn_desc_set_varlen", [OFFSETS, OFFSETS, INT]),
    "sinks": ("attn_desc_set_sinks", [F64_ARRAY]),
    "key_mass": ("attn_desc_set_key_mass", [OUT_TENSOR]),
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
        self._values = {}   # name -> the values last set (Plan.block_layout reads block_size)
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
            # A tuple is several values, except for a one-array setter
            # (global_tokens=(0, 5), alibi=()), where it is the array itself.
            kinds = _DESC_SETTERS[name][1]
            array = len(kinds) == 1 and kinds[0] in (I64_ARRAY, F64_ARRAY)
            args = value if isinstance(value, tuple) and not array else (value,)
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
        self._values[name] = values
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


def _set_varlen(self, q_offsets, k_offsets=None):
    """Packed variable-length batch: sequence s owns rows q_offsets[s]..q_offsets[s+1]-1
    of q (and k_offsets' rows of k, v; None: the same as q's). None clears."""
    if q_offsets is None:
        return self._set("varlen", (None, None, 0))
    n = len(q_offsets) - 1
    return self._set("varlen", (q_offsets, k_offsets, n))


Desc.set_varlen = _set_varlen


def _view(array, layout, name):
    """[B, S, H, D] arrays are seen as [B, H, S, D] (a strided view, no copy)."""
    if array is None or isinstance(array, Tensor):
        return array
    array = as_numpy(array, name)
    if layout == "bhsd":
        return array
    if layout != "bshd":
        raise ValueError("layout must be 'bhsd' or 'bshd', got %r" % (layout,))
    if not isinstance(array, np.ndarray) or array.ndim != 4:
        raise ValueError("%s: layout 'bshd' needs a 4-D numpy array" % name)
    return array.transpose(0, 2, 1, 3)


_OPERANDS = ("q", "k", "v", "out", "weights", "lse")
_OUTPUTS = ("out", "weights", "lse")


def _bind(plan, names, arrays):
    """Handles for execute: the plan's own tensors re-pointed at the new arrays
    (same layout: no new C object), else temporary tensors so the library can
    name the mismatch. Returns (handles, temporaries to keep until the call ends)."""
    handles, temps = [], []
    for name, t, a in zip(names, plan._tensors, arrays):
        if a is None:
            handles.append(None)
        elif isinstance(a, Tensor):
            handles.append(a.handle)
        elif t is not None and t.matches(a := as_numpy(a, name, name in _OUTPUTS)):
            if name in _OUTPUTS and not a.flags.writeable:
                raise ValueError("%s: the array is read-only" % name)
            t.set_data(a)
            handles.append(t.handle)
        else:
            tmp = plan._tensor(name, a)
            temps.append(tmp)
            handles.append(tmp.handle)
    return handles, temps


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
        return _as_tensor(self.ctx, array, name, writeable=name in _OUTPUTS,
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
        handles, _temps = _bind(self, _OPERANDS, arrays)
        _lib.attn_plan_execute(self._handle, *handles)
        return out

    def block_layout(self):
        """The block layout a sparse plan uses (attn_plan_block_layout): uint8
        of shape [H or 1, ceil(S_q/b), ceil(S_k/b)] with b the descriptor's
        block_size (default 64); non-zero = the query block attends to the key
        block. The first axis is what the plan holds (one layer per head for
        the variants on main, a [1, ...] layout given to block-sparse
        included)."""
        size = ctypes.c_size_t(0)
        try:
            _lib.attn_plan_block_layout(self._handle, None, byref(size))
        except AttnError as e:
            if e.status != Status.ERR_INVALID_ARG or size.value == 0:
                raise
        buf = np.zeros(size.value, dtype=np.uint8)
        _lib.attn_plan_block_layout(self._handle, buf.ctypes.data_as(POINTER(ctypes.c_uint8)),
                                    byref(size))
        b = int(self.desc._values.get("block_size", (64,))[0])
        s_q, s_k = self._tensors[0].shape[2], self._tensors[1].shape[2]
        nq, nk = -(-s_q // b), -(-s_k // b)
        if nq * nk == 0 or buf.size % (nq * nk):
            raise AttnError(Status.ERR_INTERNAL, "attn_plan_block_layout",
                            "%d bytes is not a whole number of %dx%d layouts" % (buf.size, nq, nk),
                            "internal error")
        return buf.reshape(buf.size // (nq * nk), nq, nk)

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
    """attention()'s causal: True is PyTorch's is_causal, i.e. top-left."""
    if value is True:
        return Causal.TOP_LEFT
    if value is False or value is None:
        return Causal.NONE
    return value


def attention(q: ArrayLike, k: ArrayLike, v: ArrayLike, *,
              causal: Union[bool, str, int] = False, scale: Optional[float] = None,
              layout: str = "bhsd", out: Optional[ArrayLike] = None,
              return_weights: bool = False, return_lse: bool = False,
              return_mass: Union[bool, str] = False,
              ctx: Optional["Context"] = None,
              **settings: Any) -> Union[ArrayLike, Tuple[ArrayLike, ...]]:
    """Scaled-dot-product attention (one call: descriptor, plan, execute).

    ``out[b,h,i] = sum_j softmax_j(scale * q[b,h,i].k[b,h',j] + masks) v[b,h',j]``
    with h' = h // (H / H_kv) (grouped-query attention). 16-bit inputs
    (float16, or bfloat16 as uint16 tagged by :func:`as_bf16` or torch
    bfloat16) give out in q's type and float32 weights/lse.

    Args:
        q: [B, H, S_q, d] (or [B, S_q, H, d] with ``layout="bshd"``).
        k: [B, H_kv, S_k, d]; H must be a multiple of H_kv.
        v: [B, H_kv, S_k, d_v].
            All float32 or all float64; any strides with the last axis
            contiguous. numpy arrays, CPU torch tensors, or any object with
            ``__dlpack__`` / ``__array_interface__``: viewed, never copied.
        causal: ``False``; ``True`` = ``"top_left"`` (PyTorch's ``is_causal``:
            query i sees keys j <= i); ``"bottom_right"`` aligns the last query
            with the last key (j <= i + S_k - S_q, the decoder's alignment).
        scale: default 1/sqrt(d).
        layout: ``"bhsd"`` or ``"bshd"`` (for q, k, v and out).
        out: optional output array, written in place (no allocation); it is
            returned as given (same object, same memory).
        return_weights: also return the weights [B, H, S_q, S_k].
        return_lse: also return the log-sum-exp [B, H, S_q].
        return_mass: also return the per-key attention mass: ``True`` per
            head [B, H, S_k], ``"group"`` summed over each KV group
            [B, H_kv, S_k].
        ctx: a :class:`Context` (default: this thread's).
        **settings: any descriptor setting by name (see :class:`Desc`), e.g.
            ``window=(16, 0)``, ``key_lengths=[5, 7]``, ``bool_mask=m`` (non-zero =
            attend, like ``F.scaled_dot_product_attention``), ``alibi=slopes``,
            ``variant="longformer"``, ``global_tokens=[0]``. Empty lists mean
            "none", like ``None``.

    Packed batches: ``varlen=(q_offsets, k_offsets)`` (k_offsets None for
    self-attention) with q, k, v as [T, H, d] arrays; out, lse, weights and
    mass are then [T_q, H, d_v], [H, T_q], [H, T_q, T_k] and [H, T_k].
    ``sinks=logits``: one value-less softmax logit per head.

    Returns:
        out, or a tuple ``(out, weights?, lse?, mass?)``. When q is a torch
        tensor the new arrays are torch tensors (sharing memory with what
        libattn wrote).

    Raises:
        AttnError: the library rejected the call (``.status``, ``.message``).
        TypeError, ValueError: an argument is not an array numpy can view.
    """
    if settings.get("varlen") is not None and getattr(q, "ndim", 0) == 3:
        # packed [T, H, d] is [1, T, H, d] in the bshd layout
        if layout != "bhsd":
            raise ValueError("layout: packed [T, H, d] arrays take no layout")
        qkv = [as_numpy(a, n) for a, n in ((q, "q"), (k, "k"), (v, "v"))]
        if not all(a.ndim == 3 for a in qkv):
            raise ValueError("varlen: q, k, v must all be [T, H, d] arrays")
        res = attention(*(a[None] for a in qkv), causal=causal, scale=scale, layout="bshd",
                        out=None if out is None else as_numpy(out, "out", writeable=True)[None],
                        return_weights=return_weights, return_lse=return_lse,
                        return_mass=return_mass, ctx=ctx, **settings)
        if not isinstance(res, tuple):
            return res[0]
        return tuple(r[0] for r in res)
    arrays = []
    for name, a in (("q", q), ("k", k), ("v", v)):
        a = as_numpy(a, name)
        if a.ndim != 4:
            raise ValueError("%s: expected a 4-D array, got shape %s" % (name, a.shape))
        arrays.append(a)
    template = q
    q, k, v = arrays
    ctx = ctx if ctx is not None else default_context()
    desc = Desc(ctx, causal=_causal(causal), **settings)
    if scale is not None:
        desc.set_scale(scale)
    qv, kv, vv = (_view(a, layout, n) for a, n in ((q, "q"), (k, "k"), (v, "v")))
    B, H, Sq, _ = qv.shape
    Sk, Dv = kv.shape[2], vv.shape[3]
    if out is None:
        shape = (B, H, Sq, Dv) if layout == "bhsd" else (B, Sq, H, Dv)
        out_np, out = empty_like_input(shape, template, q.dtype, bf16=isinstance(q, BF16Array))
    else:
        out_np = as_numpy(out, "out", writeable=True)
    fdt = np.float32 if _is_16bit(q) else q.dtype   # weights/lse: the compute type
    weights = lse = None
    if return_weights:
        weights, weights_obj = empty_like_input((B, H, Sq, Sk), template, fdt)
    if return_lse:
        lse, lse_obj = empty_like_input((B, H, Sq), template, fdt)
    if return_mass:
        heads = kv.shape[1] if return_mass == "group" else H
        mass, mass_obj = empty_like_input((B, heads, Sk), template, fdt)
        desc.set_key_mass(mass)
    plan = Plan(desc, q, k, v, out_np, weights, lse, layout=layout)
    try:
        plan.execute(q, k, v, out_np, weights, lse)
    finally:
        plan.close()
        desc.close()
    if not (return_weights or return_lse or return_mass):
        return out
    result = (out,)
    if return_weights:
        result += (weights_obj,)
    if return_lse:
        result += (lse_obj,)
    if return_mass:
        result += (mass_obj,)
    return result


def merge_states(out_a, lse_a, out_b, lse_b, out=None, lse=None, ctx=None):
    """attn_merge_states: merge attention results over two disjoint key sets.

    out_a, out_b: [B, H, S, d_v]; lse_a, lse_b: [B, H, S] (the ``return_lse``
    of attention()), all float32 or all float64, any strides. Returns
    (out, lse) of the union: ``out``/``lse`` are allocated when None and may
    be out_a/out_b and lse_a/lse_b themselves (in place). A side whose lse is
    -inf kept no key; both -inf gives 0 and -inf."""
    ctx = _ctx(ctx)
    if out is None:
        out = np.empty(np.shape(out_a), dtype=getattr(out_a, "dtype", None))
    if lse is None:
        lse = np.empty(np.shape(lse_a), dtype=getattr(lse_a, "dtype", None))
    ts = [Tensor(ctx, a, name=n) for a, n in ((out_a, "out_a"), (lse_a, "lse_a"),
                                               (out_b, "out_b"), (lse_b, "lse_b"))]
    ts += [Tensor(ctx, out, name="out", writeable=True), Tensor(ctx, lse, name="lse", writeable=True)]
    try:
        _lib.attn_merge_states(ctx.handle, *(t.handle for t in ts))
    finally:
        for t in ts:
            t.close()
    return out, lse


# ---------------------------------------------------------------------------
# Multi-head attention (heads.h)

def _ctx(ctx):
    return ctx if ctx is not None else default_context()


def _numpy_view(array, handle):
    """The C tensor ``handle`` (a view of ``array``'s memory) as a numpy view."""
    rank = _lib.attn_tensor_rank(handle)
    shape = tuple(_lib.attn_tensor_dim(handle, a) for a in range(rank))
    strides = tuple(_lib.attn_tensor_stride(handle, a) * array.itemsize for a in range(rank))
    if _lib.attn_tensor_data(handle) != array.ctypes.data:   # heads.h: views start at x
        raise AttnError(Status.ERR_INTERNAL, "attn view", "view does not start at x", "")
    return np.lib.stride_tricks.as_strided(array, shape=shape, strides=strides,
                                           writeable=array.flags.writeable)


def _view_call(cfn, x, ctx, *args):
    ctx = _ctx(ctx)
    t = Tensor(ctx, x, name="x")
    out = c_void_p()
    try:
        getattr(_lib, cfn)(ctx.handle, t.handle, *args, byref(out))
        try:
            return _numpy_view(x, out.value)
        finally:
            _lib.attn_tensor_destroy(out.value)
    finally:
        t.close()


def heads_split_view(x: np.ndarray, num_heads: int, ctx: Optional[Context] = None) -> np.ndarray:
    """attn_heads_split_view: x [B, S, H·D] (last axis contiguous) as a
    [B, H, S, D] numpy view of the same memory, strides as the library gives."""
    return _view_call("attn_heads_split_view", x, ctx, int(num_heads))


def heads_merge_view(x: np.ndarray, ctx: Optional[Context] = None) -> np.ndarray:
    """attn_heads_merge_view: x [B, H, S, D] whose heads lie side by side as a
    [B, S, H·D] numpy view; AttnError ERR_LAYOUT otherwise (use heads_merge)."""
    return _view_call("attn_heads_merge_view", x, ctx)


def _copy_call(cfn, x, out, ctx):
    ctx = _ctx(ctx)
    tx = Tensor(ctx, x, name="x")
    to = Tensor(ctx, out, name="out", writeable=True)
    try:
        getattr(_lib, cfn)(ctx.handle, tx.handle, to.handle)
    finally:
        tx.close()
        to.close()
    return out


def heads_split(x, num_heads=None, out=None, ctx=None):
    """attn_heads_split: copy x [B, S, H·D] into out [B, H, S, D] (allocated
    when None, then num_heads is required). Any strides. Returns out."""
    if out is None:
        if num_heads is None:
            raise TypeError("heads_split: give num_heads or out")
        B, S, E = x.shape
        out = np.empty((B, int(num_heads), S, E // int(num_heads)), dtype=x.dtype)
    return _copy_call("attn_heads_split", x, out, ctx)


def heads_merge(x, out=None, ctx=None):
    """attn_heads_merge: copy x [B, H, S, D] into out [B, S, H·D] (allocated
    when None). Any strides. Returns out."""
    if out is None:
        B, H, S, D = x.shape
        out = np.empty((B, S, H * D), dtype=x.dtype)
    return _copy_call("attn_heads_merge", x, out, ctx)


# attn_mha_config fields: keyword -> (field, convert). MHA(...) accepts each
# keyword; a new config field in the C struct is one new row (and one field
# in _lib.MhaConfig).
_MHA_CONFIG = {
    "embed_dim": ("embed_dim", int),
    "num_heads": ("num_heads", int),
    "num_kv_heads": ("num_kv_heads", lambda v: 0 if v is None else int(v)),
    "kdim": ("kdim", lambda v: 0 if v is None else int(v)),
    "vdim": ("vdim", lambda v: 0 if v is None else int(v)),
    "bias": ("bias", lambda v: int(bool(v))),
    "add_bias_kv": ("add_bias_kv", lambda v: int(bool(v))),
    "add_zero_attn": ("add_zero_attn", lambda v: int(bool(v))),
    "batch_first": ("batch_first", lambda v: int(bool(v))),
    "dtype": ("dtype", lambda v: int(_NP_DTYPES[np.dtype(v)]) if not isinstance(v, int)
              else int(v)),
}

# PyTorch state_dict names that differ from the attn_mha_weights fields.
_TORCH_WEIGHT_NAMES = {"out_proj.weight": "out_proj_weight", "out_proj.bias": "out_proj_bias"}

_MHA_OPERANDS = ("query", "key", "value", "key_padding_mask", "out", "weights")

#: MHA mask polarities: "attn" = non-zero attends, "torch" = True ignores.
_MASK_CONVENTIONS = ("attn", "torch")


class MHA:
    """attn_mha: PyTorch's nn.MultiheadAttention (dropout 0) with grouped K/V heads.

        layer = attn.MHA(embed_dim=64, num_heads=8, batch_first=True,
                         weights={"in_proj_weight": w, "in_proj_bias": b,
                                  "out_proj.weight": wo, "out_proj.bias": bo})
        out, w = layer(x, x, x, key_padding_mask=keep)   # keep: NON-ZERO = ATTEND

    Config keywords are the attn_mha_config fields (see _MHA_CONFIG; dtype is
    np.float32, np.float64, np.float16 or attn.DType.BF16 — 16-bit layers take
    16-bit weights and inputs (bf16: tagged uint16, see as_bf16), compute in
    f32 and return float32 attention weights). ``weights`` maps attn_mha_weights field names
    (PyTorch's parameter names; "out_proj.weight"/"out_proj.bias" also work)
    to numpy arrays of the layer's dtype in PyTorch's layout [out, in]. They
    are borrowed without copying: the layer keeps them alive, and changing
    their contents changes the layer. ``MHA.from_torch(module)`` copies a
    torch module's parameters.

    Mask polarity, ``mask_convention``:

    - ``"attn"`` (the default for ``MHA(...)``): key_padding_mask and bool
      attn_mask are **non-zero = attend**, libattn's convention and that of
      ``F.scaled_dot_product_attention``.
    - ``"torch"`` (the default for :meth:`from_torch`): **True = ignore**, the
      convention of ``nn.MultiheadAttention``, so PyTorch code ports unchanged
      (``layer(q, k, v, key_padding_mask=kpm, attn_mask=m)``).

    The layer's convention is ``layer.mask_convention``; float masks are
    additive in both.
    """

    def __init__(self, weights, ctx=None, mask_convention="attn", **config):
        if mask_convention not in _MASK_CONVENTIONS:
            raise ValueError("mask_convention must be one of %s, got %r"
                             % (", ".join(map(repr, _MASK_CONVENTIONS)), mask_convention))
        self.mask_convention = mask_convention
        self.ctx = _ctx(ctx)
        cfg = MhaConfig()
        _lib.attn_mha_config_init(byref(cfg))
        for key, value in config.items():
            if key not in _MHA_CONFIG:
                raise TypeError("unknown MHA setting %r (known: %s)"
                                % (key, ", ".join(sorted(_MHA_CONFIG))))
            field, conv = _MHA_CONFIG[key]
            setattr(cfg, field, conv(value))
        w = MhaWeights()
        _lib.attn_mha_weights_init(byref(w))
        self._weights = {}
        for name, array in weights.items():
            field = _TORCH_WEIGHT_NAMES.get(name, name)
            if field not in MHA_WEIGHT_FIELDS:
                raise TypeError("unknown MHA weight %r (known: %s)"
                                % (name, ", ".join(MHA_WEIGHT_FIELDS)))
            if array is None:
                continue
            t = _as_tensor(self.ctx, array, field, contiguous_last=True)
            setattr(w, field, t.handle)
            self._weights[field] = t
        self.config = {f: getattr(cfg, f) for f, _t in MhaConfig._fields_ if f != "struct_size"}
        self.embed_dim, self.num_heads = cfg.embed_dim, cfg.num_heads
        self.batch_first = bool(cfg.batch_first)
        self.dtype = {DType.F64: np.float64, DType.F16: np.float16,
                      DType.BF16: np.uint16}.get(cfg.dtype, np.float32)
        self._extra_keys = int(bool(cfg.add_bias_kv)) + int(bool(cfg.add_zero_attn))
        handle = c_void_p()
        _lib.attn_mha_create(self.ctx.handle, byref(cfg), byref(w), byref(handle))
        self._handle = handle.value
        register_handle(self._handle, self.ctx.handle)
        self._plans = weakref.WeakSet()

    @classmethod
    def from_torch(cls, module, ctx=None, dtype=None, mask_convention="torch"):
        """A layer with copies of a torch.nn.MultiheadAttention's parameters.

        Masks follow PyTorch's polarity (True = ignore) unless
        ``mask_convention="attn"``, so ``layer(q, k, v, key_padding_mask=kpm,
        attn_mask=m)`` gives what ``module(...)`` gives for the same masks."""
        params = {n: p.detach().cpu().numpy() for n, p in module.named_parameters()}
        dtype = np.dtype(dtype) if dtype is not None else next(iter(params.values())).dtype
        weights = {n: np.ascontiguousarray(p, dtype=dtype) for n, p in params.items()}
        return cls(weights, ctx=ctx, embed_dim=module.embed_dim, num_heads=module.num_heads,
                   kdim=module.kdim, vdim=module.vdim, batch_first=module.batch_first,
                   bias=module.in_proj_bias is not None, add_bias_kv=module.bias_k is not None,
                   add_zero_attn=module.add_zero_attn, dtype=dtype,
                   mask_convention=mask_convention)

    @property
    def handle(self):
        if not self._handle:
            raise ValueError("attn: the MHA layer is closed")
        return self._handle

    def _shapes(self, query, key):
        b, s = (0, 1) if self.batch_first else (1, 0)
        B, L, S = query.shape[b], query.shape[s], key.shape[s]
        return B, L, S + self._extra_keys

    def plan(self, query, key, value, out, key_padding_mask=None, weights=None, desc=None,
             **settings):
        """An MHAPlan for arrays laid out like these (see MHAPlan)."""
        return MHAPlan(self, query, key, value, out, key_padding_mask, weights, desc, **settings)

    def train_plan(self, query, key, value, out, key_padding_mask=None, desc=None, **settings):
        """An MHATrainPlan (forward + backward) for arrays laid out like these."""
        return MHATrainPlan(self, query, key, value, out, key_padding_mask, desc, **settings)

    def _keep_mask(self, mask, name):
        """A key padding / bool mask in libattn's polarity (non-zero = attend):
        as given for mask_convention "attn", inverted (a new uint8 array) for
        "torch"."""
        if mask is None or isinstance(mask, Tensor):
            return mask
        mask = as_numpy(mask, name)
        if self.mask_convention == "torch":
            if mask.dtype.kind == "f":
                raise TypeError("%s: float masks are additive; for key_padding_mask use a bool "
                                "mask (True = ignore) or attn_mask=" % name)
            mask = (mask == 0).astype(np.uint8)
        return mask

    def _attn_mask_settings(self, attn_mask, batch, settings):
        """PyTorch's attn_mask ([L, S] or [B*H, L, S]; bool or additive float)
        as the descriptor's bool_mask / additive_mask ([1|B, 1|H, L, S])."""
        if attn_mask is None:
            return settings
        if "bool_mask" in settings or "additive_mask" in settings:
            raise TypeError("give attn_mask or bool_mask/additive_mask, not both")
        m = as_numpy(attn_mask, "attn_mask")
        if m.ndim == 2:
            m = m[None, None]
        elif m.ndim == 3:
            if m.shape[0] != batch * self.num_heads:
                raise ValueError("attn_mask: 3-D masks are [B*H, L, S] = [%d, ...], got %s"
                                 % (batch * self.num_heads, m.shape))
            m = m.reshape(batch, self.num_heads, m.shape[1], m.shape[2])
        if m.dtype.kind == "f":
            return dict(settings, additive_mask=m)
        if self.mask_convention == "torch":
            m = (m == 0).astype(np.uint8)
        return dict(settings, bool_mask=m)

    def __call__(self, query, key=None, value=None, key_padding_mask=None, need_weights=True,
                 attn_mask=None, average_attn_weights=True, out=None, desc=None, **settings):
        """One-shot forward like nn.MultiheadAttention.forward: returns
        (out, weights or None).

        query/key/value: [B, S, ·] if batch_first else [S, B, ·]; numpy arrays,
        CPU torch tensors or any DLPack / array-interface object (viewed, not
        copied); key/value default to query (self-attention). With torch
        inputs the results are torch tensors.
        key_padding_mask: [B, S] bool/uint8 in the layer's ``mask_convention``.
        attn_mask: PyTorch's [L, S] or [B*H, L, S]: bool (layer's convention)
        or float (added to the scores).
        weights: [B, L, S'] averaged over heads, or [B, H, L, S'] with
        average_attn_weights=False (always batch-first; S' counts appended
        bias/zero keys). Other keywords are descriptor settings (causal=True:
        top-left, like is_causal; bool_mask=... always non-zero = attend:
        see attn_mha_plan_create)."""
        template = query
        query = as_numpy(query, "query")
        key = query if key is None else as_numpy(key, "key")
        value = key if value is None else as_numpy(value, "value")
        B = query.shape[0 if self.batch_first else 1]
        settings = self._attn_mask_settings(attn_mask, B, settings)
        key_padding_mask = self._keep_mask(key_padding_mask, "key_padding_mask")
        if out is None:
            out_np, out = empty_like_input(tuple(query.shape[:2]) + (self.embed_dim,), template,
                                           query.dtype, bf16=isinstance(query, BF16Array))
        else:
            out_np = as_numpy(out, "out", writeable=True)
        weights = weights_np = None
        if need_weights:
            B, L, Sx = self._shapes(query, key)
            shape = (B, L, Sx) if average_attn_weights else (B, self.num_heads, L, Sx)
            # attention weights are in the compute type (f32 for 16-bit layers)
            wdt = np.float32 if _is_16bit(query) else query.dtype
            weights_np, weights = empty_like_input(shape, template, wdt)
        plan = MHAPlan(self, query, key, value, out_np, key_padding_mask, weights_np, desc,
                       _mask_ready=True, **settings)
        try:
            plan.execute(query, key, value, out_np, key_padding_mask, weights_np,
                         _mask_ready=True)
        finally:
            plan.close()
        return out, weights

    def close(self):
        """Destroy the layer (and any plan of it still open)."""
        if getattr(self, "_handle", None):
            for p in list(self._plans):
                p.close()
            unregister_handle(self._handle)
            _lib.attn_mha_destroy(self._handle)
            self._handle = None

    __del__ = close


def _mha_plan_setup(plan, mha, key_padding_mask, desc, mask_ready, settings):
    """What MHAPlan and MHATrainPlan share: the layer and context, the key
    padding mask in libattn's polarity, and the descriptor (a Desc, or one
    made from keyword settings, kept with the arrays it borrows)."""
    plan.mha = mha
    plan.ctx = mha.ctx
    if not mask_ready:
        key_padding_mask = mha._keep_mask(key_padding_mask, "key_padding_mask")
    if settings:
        if desc is not None:
            raise TypeError("give desc or descriptor settings, not both")
        desc = Desc(plan.ctx, **settings)
    plan.desc = desc
    plan._borrowed = list(desc._keep.values()) if desc is not None else []
    return key_padding_mask, desc


class MHAPlan:
    """attn_mha_plan: the layer planned for these arrays' dtype/shapes/strides;
    execute() any number of times on arrays laid out the same way.

    query/key/value/out: [B, S, ·] if the layer is batch_first, else [S, B, ·]
    (any strides, last axis contiguous). weights: None, [B, L, S'] (averaged)
    or [B, H, L, S'] (per head). desc: a Desc, or descriptor settings as
    keywords (causal=..., bool_mask=...); None = plain scaled-dot attention.
    """

    def __init__(self, mha, query, key, value, out, key_padding_mask=None, weights=None,
                 desc=None, _mask_ready=False, **settings):
        key_padding_mask, desc = _mha_plan_setup(self, mha, key_padding_mask, desc,
                                                 _mask_ready, settings)
        arrays = (query, key, value, key_padding_mask, out, weights)
        self._tensors = [self._tensor(n, a) for n, a in zip(_MHA_OPERANDS, arrays)]
        handles = [t.handle if t is not None else None for t in self._tensors]
        handle = c_void_p()
        _lib.attn_mha_plan_create(mha.handle, desc.handle if desc is not None else None,
                                  *handles, byref(handle))
        self._handle = handle.value
        register_handle(self._handle, self.ctx.handle)
        mha._plans.add(self)

    def _tensor(self, name, array):
        return _as_tensor(self.ctx, array, name, writeable=name in _OUTPUTS,
                          contiguous_last=name != "key_padding_mask")

    @property
    def workspace_size(self):
        return int(_lib.attn_mha_plan_workspace_size(self._handle))

    def execute(self, query, key, value, out, key_padding_mask=None, weights=None,
                _mask_ready=False):
        """Run on new arrays (same dtype/shapes/strides as at plan time, else
        AttnError ERR_MISMATCH). Writes out (and weights) in place; returns out.
        key_padding_mask is in the layer's mask_convention."""
        if not _mask_ready:
            key_padding_mask = self.mha._keep_mask(key_padding_mask, "key_padding_mask")
        arrays = (query, key, value, key_padding_mask, out, weights)
        handles, _temps = _bind(self, _MHA_OPERANDS, arrays)
        _lib.attn_mha_plan_execute(self._handle, *handles)
        return out

    def close(self):
        if getattr(self, "_handle", None):
            unregister_handle(self._handle)
            _lib.attn_mha_plan_destroy(self._handle)
            self._handle = None

    __del__ = close


class MHATrainPlan:
    """attn_mha_backward_plan: training steps of an f32/f64 MHA layer.

        step = layer.train_plan(x, x, x, out)          # self-attention
        step.forward(x, x, x, out)                     # out, activations kept
        grads = step.backward(x, x, x, dout, dquery=dx, dkey=dx, dvalue=dx)

    forward() keeps the activations in ``self.saved`` (or the ``saved``
    bytes given); backward() reads them, so it needs the same query, key,
    value and key_padding_mask (and unchanged weights). dquery/dkey/dvalue
    are written in place when given (pass one array for several to get their
    sum, as for an input used three times). ``grads`` maps parameter names
    (the layer's weights, PyTorch names) to arrays to write; None = new
    arrays for every parameter the layer has. Returns the grads dict.
    Masks follow the layer's mask_convention; descriptor settings as for
    MHAPlan (the attention weights output is not available in training).
    """

    def __init__(self, mha, query, key, value, out, key_padding_mask=None, desc=None,
                 _mask_ready=False, **settings):
        key_padding_mask, desc = _mha_plan_setup(self, mha, key_padding_mask, desc,
                                                 _mask_ready, settings)
        arrays = (query, key, value, key_padding_mask, out)
        ts = [_as_tensor(self.ctx, a, n, contiguous_last=n != "key_padding_mask")
              for n, a in zip(_MHA_OPERANDS, arrays)]
        handle = c_void_p()
        _lib.attn_mha_backward_plan_create(mha.handle,
                                           desc.handle if desc is not None else None,
                                           *[t.handle if t is not None else None for t in ts],
                                           byref(handle))
        self._handle = handle.value
        register_handle(self._handle, self.ctx.handle)
        mha._plans.add(self)
        self.saved = np.zeros(int(_lib.attn_mha_backward_saved_size(self._handle)), np.uint8)

    @property
    def workspace_size(self):
        return int(_lib.attn_mha_backward_plan_workspace_size(self._handle))

    def _inputs(self, query, key, value, key_padding_mask):
        kpm = self.mha._keep_mask(key_padding_mask, "key_padding_mask")
        arrays = (query, key, value, kpm)
        return [_as_tensor(self.ctx, a, n, contiguous_last=n != "key_padding_mask")
                for n, a in zip(_MHA_OPERANDS, arrays)]

    def _saved(self, saved):
        saved = self.saved if saved is None else saved
        if not isinstance(saved, np.ndarray) or saved.dtype != np.uint8 or \
                not saved.flags.c_contiguous:
            raise TypeError("saved: a C-contiguous uint8 numpy array")
        return c_void_p(saved.ctypes.data), saved.nbytes

    def forward(self, query, key, value, out, key_padding_mask=None, saved=None):
        """The layer's forward into out (in place), keeping the activations."""
        ts = self._inputs(query, key, value, key_padding_mask)
        o = _as_tensor(self.ctx, out, "out", writeable=True, contiguous_last=True)
        ptr, n = self._saved(saved)
        _lib.attn_mha_forward_train(self._handle, *[t.handle if t is not None else None
                                                    for t in ts], o.handle, ptr, n)
        return out

    def backward(self, query, key, value, dout, key_padding_mask=None, dquery=None, dkey=None,
                 dvalue=None, grads=None, saved=None):
        """Gradients of the last forward() on these inputs; see the class."""
        ts = self._inputs(query, key, value, key_padding_mask)
        d = _as_tensor(self.ctx, dout, "dout", contiguous_last=True)
        outs = []
        for name, a in (("dquery", dquery), ("dkey", dkey), ("dvalue", dvalue)):
            outs.append(_as_tensor(self.ctx, a, name, writeable=True, contiguous_last=True))
        if grads is None:
            grads = {n: np.zeros(t.shape, t.dtype) for n, t in
                     ((n, self.mha._weights[n].array) for n in self.mha._weights)}
        g = MhaGrads()
        _lib.attn_mha_grads_init(byref(g))
        keep = []
        for name, array in grads.items():
            field = _TORCH_WEIGHT_NAMES.get(name, name)
            if field not in MHA_WEIGHT_FIELDS:
                raise TypeError("unknown MHA gradient %r (known: %s)"
                                % (name, ", ".join(MHA_WEIGHT_FIELDS)))
            t = _as_tensor(self.ctx, array, "grads." + field, writeable=True,
                           contiguous_last=True)
            keep.append(t)
            setattr(g, field, t.handle)
        ptr, n = self._saved(saved)
        _lib.attn_mha_backward_execute(
            self._handle, *[t.handle if t is not None else None for t in ts], d.handle, ptr, n,
            *[t.handle if t is not None else None for t in outs], byref(g))
        return grads

    def close(self):
        if getattr(self, "_handle", None):
            unregister_handle(self._handle)
            _lib.attn_mha_backward_plan_destroy(self._handle)
            self._handle = None

    __del__ = close


# ---------------------------------------------------------------------------
# KV cache (kvcache.h)

class KVCacheMode(enum.IntEnum):
    LINEAR = 0
    RING = 1


class KVCacheStorage(enum.IntEnum):
    NATIVE = 0
    BF16 = 1
    F16 = 2
    INT8 = 3
    INT4 = 4


# attn_kvcache_config fields: keyword -> (field, convert). KVCache(...) accepts
# each keyword; a new config field in the C struct is one new row (and one
# field in _lib.KVCacheConfig).
_KVCACHE_CONFIG = {
    "batch": ("batch", int),
    "heads_kv": ("heads_kv", int),
    "capacity": ("capacity", int),
    "d_k": ("d_k", int),
    "d_v": ("d_v", lambda v: 0 if v is None else int(v)),
    "dtype": _MHA_CONFIG["dtype"],
    "mode": ("mode", lambda v: _enum(KVCacheMode, v)),
    "grow": ("grow", lambda v: int(bool(v))),
    "storage": ("storage", lambda v: _enum(KVCacheStorage, v)),
    "group_size": ("group_size", lambda v: 0 if v is None else int(v)),
}

_KV_OPERANDS = ("q", "out", "lse")


def _int64s(values, count, name):
    """A C int64 array of exactly `count` values (C reads that many), or None."""
    if values is None:
        return None, None
    arr = np.ascontiguousarray(values, dtype=np.int64)
    if arr.shape != (count,):
        raise ValueError("%s: expected %d values (one per batch item), got shape %s"
                         % (name, count, arr.shape))
    return arr, arr.ctypes.data_as(POINTER(c_int64))


class _CMemory:
    """Exposes C memory to numpy (read-only) and keeps its owner alive."""

    def __init__(self, owner, address, shape, strides, dtype):
        self.owner = owner
        self.__array_interface__ = {"version": 3, "data": (address, True), "shape": shape,
                                    "strides": strides, "typestr": np.dtype(dtype).str}


class KVCache:
    """attn_kvcache: the keys and values of every position decoded so far.

        cache = attn.KVCache(batch=1, heads_kv=2, capacity=4096, d_k=64)
        cache.append(k_new, v_new)            # [B, H_kv, n, d] arrays (copied in)
        out = cache.attend(q, causal="bottom_right")   # q [B, H, n, d] -> [B, H, n, d_v]

    Config keywords are the attn_kvcache_config fields (see _KVCACHE_CONFIG):
    batch, heads_kv, capacity, d_k, d_v (None = d_k), dtype (np.float32 /
    np.float64), mode ("linear" | "ring"), grow (linear mode: reallocate
    instead of ERR_CAPACITY), storage ("native" | "bf16" | "f16" | "int8" |
    "int4"; all but native need f32), group_size (int8/int4: positions per
    K scale and channels per V scale; None/0 = the library's default).

    Failing calls raise AttnError (status + the library's message) and leave
    the cache unchanged. Plans made with plan() borrow the cache: close()
    closes them first.
    """

    def __init__(self, ctx=None, **config):
        self.ctx = _ctx(ctx)
        cfg = KVCacheConfig()
        _lib.attn_kvcache_config_init(byref(cfg))
        for key, value in config.items():
            if key not in _KVCACHE_CONFIG:
                raise TypeError("unknown KVCache setting %r (known: %s)"
                                % (key, ", ".join(sorted(_KVCACHE_CONFIG))))
            field, conv = _KVCACHE_CONFIG[key]
            setattr(cfg, field, conv(value))
        handle = c_void_p()
        _lib.attn_kvcache_create(self.ctx.handle, byref(cfg), byref(handle))
        self._handle = handle.value
        register_handle(self._handle, self.ctx.handle)
        self.batch, self.heads_kv = int(cfg.batch), int(cfg.heads_kv)
        self.d_k, self.d_v = int(cfg.d_k), int(cfg.d_v) or int(cfg.d_k)
        self.dtype = np.float64 if cfg.dtype == DType.F64 else np.float32
        self.mode, self.storage = KVCacheMode(cfg.mode), KVCacheStorage(cfg.storage)
        self._append_tensors = {}
        self._plans = weakref.WeakSet()

    @property
    def handle(self):
        if not self._handle:
            raise ValueError("attn: the KV cache is closed")
        return self._handle

    # -- contents ------------------------------------------------------------------
    def append(self, k_new, v_new, counts=None, layout="bhsd"):
        """attn_kvcache_append: k_new [B, H_kv, n, d_k], v_new [B, H_kv, n, d_v]
        (or [B, n, H_kv, d] with layout="bshd"; any strides), copied into the
        cache. counts: None (n each) or B values in 0..n (rows per item)."""
        handles = []
        for name, a in (("k_new", k_new), ("v_new", v_new)):
            a = _view(a, layout, name)
            t = self._append_tensors.get(name)
            if isinstance(a, Tensor):
                t = a
            elif t is not None and t.matches(a):
                t.set_data(a)
            else:
                t = self._append_tensors[name] = Tensor(self.ctx, a, name=name)
            handles.append(t.handle)
        _arr, cp = _int64s(counts, self.batch, "counts")
        _lib.attn_kvcache_append(self.handle, handles[0], handles[1], cp)

    def truncate(self, lengths):
        """attn_kvcache_truncate: roll item b back to lengths[b] positions
        (an int applies to every item)."""
        if np.ndim(lengths) == 0:
            lengths = [int(lengths)] * self.batch
        _arr, lp = _int64s(lengths, self.batch, "lengths")
        _lib.attn_kvcache_truncate(self.handle, lp)

    def set_keep_first(self, n):
        """attn_kvcache_set_keep_first: a ring cache keeps positions 0..n-1 for
        good (StreamingLLM's sink tokens). Call on an empty cache."""
        _lib.attn_kvcache_set_keep_first(self.handle, int(n))

    def reset(self):
        """Empty the cache (truncate every item to 0)."""
        self.truncate(0)

    @property
    def lengths(self):
        """int64 [B]: positions each item has received (its next position)."""
        return np.array([_lib.attn_kvcache_length(self.handle, b) for b in range(self.batch)],
                        dtype=np.int64)

    @property
    def firsts(self):
        """int64 [B]: the oldest position each item still stores."""
        return np.array([_lib.attn_kvcache_first(self.handle, b) for b in range(self.batch)],
                        dtype=np.int64)

    @property
    def capacity(self):
        return int(_lib.attn_kvcache_capacity(self.handle))

    @property
    def memory_size(self):
        return int(_lib.attn_kvcache_memory_size(self.handle))

    def view(self):
        """(k, v): read-only numpy views of the storage, [B, H_kv, capacity, d_k]
        and [B, H_kv, capacity, d_v], no copy. Row r of item b holds position r
        (linear) or the stored position p with p % capacity == r (ring); only
        positions in [firsts[b], lengths[b]) are valid. The views show later
        appends; they keep this object alive but become invalid when the cache
        grows or is closed. UnsupportedError for the reduced storages (bf16,
        f16, int8, int4): use view_raw() or dequantized()."""
        k, v = c_void_p(), c_void_p()
        _lib.attn_kvcache_view(self.handle, byref(k), byref(v))
        try:
            return tuple(self._numpy(t) for t in (k.value, v.value))
        finally:
            _lib.attn_tensor_destroy(k.value)
            _lib.attn_tensor_destroy(v.value)

    def view_raw(self):
        """attn_kvcache_view_raw: the stored bytes and scales, read-only numpy
        views (no copy), as a dict: storage, group_size, k, v (uint8
        [B, H_kv, capacity, row_bytes]), and for int8/int4 k_scales (float16
        [B, H_kv, k_groups, 2, d_k]: scale, min), v_scales (float16
        [B, H_kv, capacity, d_v / G, 2]) and k_residual (float32
        [B, H_kv, G, d_k]); total_bytes. Decoding: see attn_kvcache_raw in
        kvcache.h, or dequantized()."""
        raw = KVCacheRaw()
        _lib.attn_kvcache_raw_init(byref(raw))
        _lib.attn_kvcache_view_raw(self.handle, byref(raw))
        B, H, C = raw.batch, raw.heads_kv, raw.capacity

        def arr(address, shape, dtype):
            if not address:
                return None
            item = np.dtype(dtype).itemsize
            strides, acc = [], item
            for n in reversed(shape):
                strides.insert(0, acc)
                acc *= n
            return np.asarray(_CMemory(self, address, tuple(shape), tuple(strides), dtype))

        out = {"storage": KVCacheStorage(raw.storage), "group_size": int(raw.group_size),
               "total_bytes": int(raw.total_bytes),
               "k": arr(raw.k, (B, H, C, raw.k_row_bytes), np.uint8),
               "v": arr(raw.v, (B, H, C, raw.v_row_bytes), np.uint8)}
        if raw.group_size > 0:
            G = raw.group_size
            out["k_scales"] = arr(raw.k_scales, (B, H, raw.k_groups, 2, raw.d_k), np.float16)
            out["v_scales"] = arr(raw.v_scales, (B, H, C, raw.d_v // G, 2), np.float16)
            out["k_residual"] = arr(raw.k_residual, (B, H, G, raw.d_k), np.float32)
        return out

    def dequantized(self):
        """(k, v): float32 copies [B, H_kv, capacity, d] of what attention
        reads, decoded from view_raw() (any storage; rows outside
        [firsts, lengths) are stale)."""
        r = self.view_raw()
        st, G = r["storage"], r["group_size"]
        B, H, C = self.batch, self.heads_kv, self.capacity
        res = []
        for name, d in (("k", self.d_k), ("v", self.d_v)):
            raw = r[name]
            if st == KVCacheStorage.NATIVE:
                x = raw.view(self.dtype)[..., :d]
            elif st == KVCacheStorage.BF16:
                x = (raw.view(np.uint16)[..., :d].astype(np.uint32) << 16).view(np.float32)
            elif st == KVCacheStorage.F16:
                x = raw.view(np.float16)[..., :d]
            else:
                if st == KVCacheStorage.INT8:
                    u = raw[..., :d].astype(np.float32)
                else:  # blocks of 32: byte i = element i (low nibble), i + 16 (high)
                    blk = raw.reshape(B, H, C, -1, 16)
                    u = np.concatenate([blk & 15, blk >> 4], axis=-1).reshape(B, H, C, -1)
                    u = u[..., :d].astype(np.float32)
                if name == "k":
                    sc = r["k_scales"].astype(np.float32)
                    g = (np.arange(C) // G) % sc.shape[2]
                    x = sc[:, :, g, 0, :] * u + sc[:, :, g, 1, :]
                    for b in range(B):  # the newest incomplete group: f32 residual
                        L = int(self.lengths[b])
                        for p in range(L // G * G, L):
                            x[b, :, p % C, :] = r["k_residual"][b, :, p % G, :]
                else:
                    sc = r["v_scales"].astype(np.float32)
                    s = np.repeat(sc[..., 0], G, axis=-1)
                    m = np.repeat(sc[..., 1], G, axis=-1)
                    x = s * u + m
            res.append(np.array(x, dtype=np.float32))
        return tuple(res)

    def _numpy(self, t):
        rank = _lib.attn_tensor_rank(t)
        item = np.dtype(self.dtype).itemsize
        shape = tuple(_lib.attn_tensor_dim(t, a) for a in range(rank))
        strides = tuple(_lib.attn_tensor_stride(t, a) * item for a in range(rank))
        arr = np.asarray(_CMemory(self, _lib.attn_tensor_data(t), shape, strides, self.dtype))
        assert not arr.flags.writeable
        return arr

    # -- attention -----------------------------------------------------------------
    def plan(self, q, out, lse=None, desc=None, layout="bhsd", **settings):
        """A KVCachePlan for arrays laid out like these (see KVCachePlan)."""
        return KVCachePlan(self, q, out, lse, desc, layout, **settings)

    def attend(self, q, out=None, return_lse=False, query_counts=None, layout="bhsd",
               desc=None, **settings):
        """One-shot attend (plan, execute, close): q [B, H, n, d_k] against the
        cache's contents. Returns out [B, H, n, d_v] (in q's layout), or
        (out, lse) with return_lse; torch tensors when q is one. Descriptor
        settings as keywords (causal="bottom_right", the decoder's alignment)."""
        template = q
        q = as_numpy(q, "q")
        qv = _view(q, layout, "q")
        B, H, n, _ = qv.shape
        if out is None:
            shape = (B, H, n, self.d_v) if layout == "bhsd" else (B, n, H, self.d_v)
            out_np, out = empty_like_input(shape, template, q.dtype)
        else:
            out_np = as_numpy(out, "out", writeable=True)
        lse_np = lse = None
        if return_lse:
            lse_np, lse = empty_like_input((B, H, n), template, q.dtype)
        plan = KVCachePlan(self, q, out_np, lse_np, desc, layout, **settings)
        try:
            plan.execute(q, out_np, lse_np, query_counts)
        finally:
            plan.close()
        return (out, lse) if return_lse else out

    def close(self):
        """Destroy the cache (and any plan of it still open)."""
        if getattr(self, "_handle", None):
            for p in list(self._plans):
                p.close()
            for t in self._append_tensors.values():
                t.close()
            self._append_tensors = {}
            unregister_handle(self._handle)
            _lib.attn_kvcache_destroy(self._handle)
            self._handle = None

    __del__ = close

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class KVCachePlan:
    """attn_kvcache_plan: new queries attending to a cache, planned for these
    arrays' dtype/shapes/strides; execute() after each append.

    q [B, H, n, d_k], out [B, H, n, d_v] (or [B, n, H, d] with layout="bshd"),
    lse None or [B, H, n]. desc: a Desc, or descriptor settings as keywords
    (causal="bottom_right" (the decoder's alignment, the only causal one a
    cache supports; causal=True is rejected as ambiguous), window=(left, right), alibi=slopes,
    softcap=c, scale=s, score="dot"); positions are the cache's absolute ones.
    """

    def __init__(self, cache, q, out, lse=None, desc=None, layout="bhsd", **settings):
        self.cache = cache
        self.ctx = cache.ctx
        self.layout = layout
        if settings:
            if desc is not None:
                raise TypeError("give desc or descriptor settings, not both")
            if isinstance(settings.get("causal"), bool) and settings["causal"]:
                # attention(causal=True) is top-left (PyTorch's is_causal); a cache
                # only supports bottom-right. One keyword must not mean both.
                raise ValueError("KVCache: causal=True is ambiguous (attn.attention's True is "
                                 "top-left, PyTorch's is_causal); a KV cache attends "
                                 "bottom-right: pass causal=\"bottom_right\"")
            desc = Desc(self.ctx, **settings)
        elif desc is None:
            desc = Desc(self.ctx)
        self.desc = desc
        self._borrowed = list(desc._keep.values())
        arrays = self._views(q, out, lse)
        self._tensors = [self._tensor(n, a) for n, a in zip(_KV_OPERANDS, arrays)]
        handles = [t.handle if t is not None else None for t in self._tensors]
        handle = c_void_p()
        _lib.attn_kvcache_plan_create(cache.handle, desc.handle, *handles, byref(handle))
        self._handle = handle.value
        register_handle(self._handle, self.ctx.handle)
        cache._plans.add(self)

    def _views(self, q, out, lse):
        return [_view(q, self.layout, "q"), _view(out, self.layout, "out"), lse]

    def _tensor(self, name, array):
        return _as_tensor(self.ctx, array, name, writeable=name in _OUTPUTS,
                          contiguous_last=name != "lse")

    @property
    def workspace_size(self):
        return int(_lib.attn_kvcache_plan_workspace_size(self._handle))

    def execute(self, q, out, lse=None, query_counts=None):
        """attn_kvcache_plan_execute: writes out (and lse) in place; returns out.
        query_counts: None (n each) or B values (pass the append's counts)."""
        if not getattr(self, "_handle", None):
            raise ValueError("attn: the KV cache plan is closed")
        handles, _temps = _bind(self, _KV_OPERANDS, self._views(q, out, lse))
        _arr, cp = _int64s(query_counts, self.cache.batch, "query_counts")
        _lib.attn_kvcache_plan_execute(self._handle, *handles, cp)
        return out

    def close(self):
        if getattr(self, "_handle", None):
            unregister_handle(self._handle)
            _lib.attn_kvcache_plan_destroy(self._handle)
            self._handle = None

    __del__ = close


# attn_paged_config fields: keyword -> (field, convert).
_PAGED_CONFIG = {
    "heads_kv": ("heads_kv", int),
    "d_k": ("d_k", int),
    "d_v": ("d_v", lambda v: 0 if v is None else int(v)),
    "block_size": ("block_size", int),
    "num_blocks": ("num_blocks", int),
    "max_seqs": ("max_seqs", int),
    "max_seq_len": ("max_seq_len", lambda v: 0 if v is None else int(v)),
    "dtype": _MHA_CONFIG["dtype"],
    "storage": ("storage", lambda v: _enum(KVCacheStorage, v)),
    "group_size": ("group_size", int),
}


class PagedCache:
    """attn_paged_cache: a pool of fixed-size blocks shared by many sequences
    (paged.h), for serving: continuous batching, prefix sharing, beam search.

        cache = attn.PagedCache(heads_kv=2, d_k=64, block_size=64, num_blocks=1024)
        s = cache.create_seq()
        cache.append(s, k_new, v_new)          # [H_kv, n, d] numpy arrays (copied in)
        t = cache.fork(s)                      # shares every block (copy-on-write)
        plan = cache.plan(q, out, causal="bottom_right")  # q [N, H, n, d_k], out [N, H, n, d_v]
        plan.execute([s, t], q, out)           # a ragged batch in one call

    Config keywords are the attn_paged_config fields (see _PAGED_CONFIG):
    heads_kv, d_k, d_v (None = d_k), block_size, num_blocks, max_seqs,
    max_seq_len (None = num_blocks * block_size), dtype, storage ("native" |
    "bf16" | "f16" | "int8" | "int4"; all but native need f32: the contiguous
    cache's formats, block by block), group_size (int8/int4: positions per K
    scale and channels per V scale, dividing d_v and block_size; 0 = default).
    Failing calls raise AttnError (status + message) and change nothing; out
    of blocks is Status.ERR_CAPACITY. Mutating calls need the caller's lock
    when several threads share the cache; plans read only (see paged.h).
    """

    def __init__(self, ctx=None, **config):
        self.ctx = _ctx(ctx)
        cfg = _lib_mod.PagedConfig()
        _lib.attn_paged_config_init(byref(cfg))
        for key, value in config.items():
            if key not in _PAGED_CONFIG:
                raise TypeError("unknown PagedCache setting %r (known: %s)"
                                % (key, ", ".join(sorted(_PAGED_CONFIG))))
            field, conv = _PAGED_CONFIG[key]
            setattr(cfg, field, conv(value))
        handle = c_void_p()
        _lib.attn_paged_create(self.ctx.handle, byref(cfg), byref(handle))
        self._handle = handle.value
        register_handle(self._handle, self.ctx.handle)
        self.heads_kv, self.d_k = int(cfg.heads_kv), int(cfg.d_k)
        self.d_v = int(cfg.d_v) or self.d_k
        self.dtype = np.float64 if cfg.dtype == DType.F64 else np.float32
        self._plans = weakref.WeakSet()

    @property
    def handle(self):
        if not self._handle:
            raise ValueError("attn: the paged cache is closed")
        return self._handle

    def create_seq(self):
        """attn_paged_seq_create: a new empty sequence; returns its id."""
        s = c_int64(-1)
        _lib.attn_paged_seq_create(self.handle, byref(s))
        return s.value

    def free_seq(self, seq):
        """attn_paged_seq_free: the id becomes free, its blocks lose a reference."""
        _lib.attn_paged_seq_free(self.handle, int(seq))

    def fork(self, seq):
        """attn_paged_fork: a new sequence sharing every block of seq; returns its id."""
        s = c_int64(-1)
        _lib.attn_paged_fork(self.handle, int(seq), byref(s))
        return s.value

    def append(self, seq, k_new, v_new):
        """attn_paged_append: k_new [H_kv, n, d_k], v_new [H_kv, n, d_v] become
        the next n positions of seq (copied in; any strides)."""
        tk = _as_tensor(self.ctx, k_new, "k_new")
        tv = _as_tensor(self.ctx, v_new, "v_new")
        try:
            _lib.attn_paged_append(self.handle, int(seq), tk.handle, tv.handle)
        finally:
            for t, a in ((tk, k_new), (tv, v_new)):
                if t is not a:
                    t.close()

    def truncate(self, seq, length):
        """attn_paged_truncate: roll seq back to length positions."""
        _lib.attn_paged_truncate(self.handle, int(seq), int(length))

    def length(self, seq):
        """Length of seq, -1 if the id is not live."""
        return int(_lib.attn_paged_seq_length(self.handle, int(seq)))

    def block_table(self, seq):
        """int64 array of seq's block ids, in position order."""
        count = c_int64(0)
        n = (max(self.length(seq), 0) + self.block_size - 1) // self.block_size
        ids = np.zeros(max(n, 1), dtype=np.int64)
        _lib.attn_paged_block_table(self.handle, int(seq), ids.ctypes.data_as(POINTER(c_int64)),
                                    len(ids), byref(count))
        return ids[:count.value].copy()

    free_blocks = property(lambda self: int(_lib.attn_paged_free_blocks(self.handle)))
    num_blocks = property(lambda self: int(_lib.attn_paged_num_blocks(self.handle)))
    block_size = property(lambda self: int(_lib.attn_paged_block_size(self.handle)))
    num_seqs = property(lambda self: int(_lib.attn_paged_num_seqs(self.handle)))
    memory_size = property(lambda self: int(_lib.attn_paged_memory_size(self.handle)))
    memory_used = property(lambda self: int(_lib.attn_paged_memory_used(self.handle)))

    def plan(self, q, out, lse=None, desc=None, ctx=None, **settings):
        """A PagedPlan for arrays laid out like these (see PagedPlan)."""
        return PagedPlan(self, q, out, lse, desc, ctx, **settings)

    def close(self):
        """Destroy the cache (and any plan of it still open)."""
        if getattr(self, "_handle", None):
            for p in list(self._plans):
                p.close()
            unregister_handle(self._handle)
            _lib.attn_paged_destroy(self._handle)
            self._handle = None

    __del__ = close

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class PagedPlan:
    """attn_paged_plan: a ragged batch of up to N sequences' new queries
    against a paged cache. q [N, H, n, d_k], out [N, H, n, d_v], lse None or
    [N, H, n]; desc or descriptor settings (causal="bottom_right" for a decoder;
    causal=True is rejected as ambiguous, as for KVCache).
    ctx: the plan's own context (one per caller thread), default the cache's.
    """

    def __init__(self, cache, q, out, lse=None, desc=None, ctx=None, **settings):
        self.cache = cache
        self.ctx = _ctx(ctx) if ctx is not None else cache.ctx
        if settings:
            if desc is not None:
                raise TypeError("give desc or descriptor settings, not both")
            if isinstance(settings.get("causal"), bool) and settings["causal"]:
                # As KVCachePlan: True is top-left elsewhere; a cache attends bottom-right.
                raise ValueError("PagedCache: causal=True is ambiguous (attn.attention's True is "
                                 "top-left, PyTorch's is_causal); a paged cache attends "
                                 "bottom-right: pass causal=\"bottom_right\"")
            desc = Desc(self.ctx, **settings)
        elif desc is None:
            desc = Desc(self.ctx)
        self.desc = desc
        self._borrowed = list(desc._keep.values())
        self._tensors = [self._tensor(n, a) for n, a in zip(_KV_OPERANDS, (q, out, lse))]
        handles = [t.handle if t is not None else None for t in self._tensors]
        handle = c_void_p()
        _lib.attn_paged_plan_create(self.ctx.handle, cache.handle, desc.handle, *handles,
                                    byref(handle))
        self._handle = handle.value
        self.rows = int(np.shape(q)[0])
        register_handle(self._handle, self.ctx.handle)
        cache._plans.add(self)

    def _tensor(self, name, array):
        return _as_tensor(self.ctx, array, name, writeable=name in _OUTPUTS,
                          contiguous_last=name != "lse")

    @property
    def workspace_size(self):
        return int(_lib.attn_paged_plan_workspace_size(self._handle))

    def execute(self, seqs, q, out, lse=None, query_counts=None):
        """attn_paged_plan_execute: rows 0..len(seqs)-1 of q/out/lse against the
        sequences seqs; query_counts None (n each) or one per row. Returns out."""
        if not getattr(self, "_handle", None):
            raise ValueError("attn: the paged plan is closed")
        handles, _temps = _bind(self, _KV_OPERANDS, (q, out, lse))
        ids = np.ascontiguousarray(seqs, dtype=np.int64).reshape(-1)
        count = len(ids)
        _ia, ip = _int64s(ids, count, "seqs") if count else (None, None)
        _ca, cp = _int64s(query_counts, count, "query_counts")
        _lib.attn_paged_plan_execute(self._handle, count, ip, *handles, cp)
        return out

    def close(self):
        if getattr(self, "_handle", None):
            unregister_handle(self._handle)
            _lib.attn_paged_plan_destroy(self._handle)
            self._handle = None

    __del__ = close

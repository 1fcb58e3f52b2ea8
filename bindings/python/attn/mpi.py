"""attn.mpi: sequence-parallel attention over MPI (libattn_mpi, include/attn/mpi.h)
through mpi4py.

Each rank holds its shard of the sequence and gets the attention of its own
query rows over the whole sequence::

    from mpi4py import MPI
    import attn.mpi
    comm = MPI.COMM_WORLD
    start, length = attn.mpi.shard("zigzag", S, comm.size, comm.rank)   # which rows are mine
    out = attn.mpi.attention(comm, q, k, v, causal=True, layout="zigzag")

Run it with ``mpirun -np 4 python3 script.py``. Every call here is
collective over ``comm`` (all ranks call it in the same order); a
disagreement between the ranks or a failure on any of them raises AttnError
on every rank. The library is found next to libattn (``$ATTN_MPI_LIBRARY``
overrides); it must come from the same build.
"""

import ctypes
import enum
import os
from ctypes import byref, c_double, c_int, c_int32, c_int64, c_size_t, c_void_p, POINTER

import numpy as np

from . import (_lib, AttnError, Desc, Tensor, _as_tensor, _causal, default_context,  # noqa: F401
               register_handle, unregister_handle)

try:
    from mpi4py import MPI
except ImportError as e:  # pragma: no cover
    raise ImportError("attn.mpi needs mpi4py (Debian: python3-mpi4py): %s" % e)

__all__ = ["Mode", "Layout", "Plan", "BackwardPlan", "attention", "attention_backward", "shard",
           "library_path"]


class Mode(enum.IntEnum):
    AUTO = 0
    RING = 1
    ULYSSES = 2


class Layout(enum.IntEnum):
    CONTIGUOUS = 0
    ZIGZAG = 1


class _Config(ctypes.Structure):
    _fields_ = [("struct_size", c_size_t), ("mode", c_int), ("layout", c_int)]


class _Stats(ctypes.Structure):
    _fields_ = [("struct_size", c_size_t), ("mode", c_int), ("ranks", c_int32), ("rank", c_int32),
                ("seq_len", c_int64), ("steps", c_int64), ("idle_steps", c_int64),
                ("bytes_sent", c_int64), ("seconds", c_double), ("wait_seconds", c_double)]


def _load():
    explicit = os.environ.get("ATTN_MPI_LIBRARY")
    cands = [explicit] if explicit else []
    cands.append(os.path.join(os.path.dirname(os.path.abspath(_lib.path)), "libattn_mpi.so.0"))
    cands.append("libattn_mpi.so.0")
    errors = []
    for c in cands:
        try:
            return ctypes.CDLL(c), c
        except OSError as e:
            errors.append("%s (%s)" % (c, e))
    raise ImportError("attn.mpi: libattn_mpi not found (build with MPI, or set "
                      "ATTN_MPI_LIBRARY). Tried: %s" % "; ".join(errors))


_mpi, _path = _load()

# MPI_Comm is a pointer in Open MPI and an int in MPICH: mpi4py knows which.
_COMM = c_void_p if MPI._sizeof(MPI.Comm) == ctypes.sizeof(c_void_p) else c_int


def _declare(name, restype, argtypes, ctx_of=None):
    fn = getattr(_mpi, name)
    fn.argtypes = argtypes
    fn.restype = restype
    if ctx_of is not None:
        def errcheck(result, _func, args, _name=name):
            if result != 0:
                raise _lib.error(result, _name, ctx_of(args))
            return result
        fn.errcheck = errcheck
    return fn


_declare("attn_mpi_config_init", None, [POINTER(_Config)])
_declare("attn_mpi_shard", c_int, [c_int, c_int64, c_int32, c_int32, POINTER(c_int64),
                                   POINTER(c_int64)])
_declare("attn_mpi_plan_create", c_int,
         [c_void_p, _COMM, c_void_p, POINTER(_Config)] + [c_void_p] * 5 + [POINTER(c_void_p)],
         ctx_of=lambda args: args[0])
_declare("attn_mpi_plan_execute", c_int, [c_void_p] * 6,
         ctx_of=lambda args: _plan_ctx.get(args[0] if isinstance(args[0], int)
                                           else getattr(args[0], "value", None)))
_declare("attn_mpi_plan_stats", c_int, [c_void_p, POINTER(_Stats)])
_declare("attn_mpi_plan_destroy", None, [c_void_p])
_declare("attn_mpi_backward_plan_create", c_int, [c_void_p] * 5 + [POINTER(c_void_p)],
         ctx_of=lambda args: _plan_ctx.get(args[0] if isinstance(args[0], int)
                                           else getattr(args[0], "value", None)))
_declare("attn_mpi_backward_execute", c_int, [c_void_p] * 10,
         ctx_of=lambda args: _plan_ctx.get(args[0] if isinstance(args[0], int)
                                           else getattr(args[0], "value", None)))
_declare("attn_mpi_backward_plan_destroy", None, [c_void_p])

_plan_ctx = {}


def library_path():
    """The libattn_mpi this module loaded."""
    return _path


def _enum(cls, value):
    if isinstance(value, str):
        try:
            return cls[value.upper()]
        except KeyError:
            raise ValueError("%s: unknown value %r (one of %s)"
                             % (cls.__name__, value, ", ".join(m.name.lower() for m in cls)))
    return int(value)


def shard(layout, seq_len, nranks, rank):
    """The global positions a rank holds: a list of (start, length) runs
    (attn_mpi_shard). Local rows are the runs in order."""
    start, length = (c_int64 * 2)(), (c_int64 * 2)()
    st = _mpi.attn_mpi_shard(_enum(Layout, layout), int(seq_len), int(nranks), int(rank), start,
                             length)
    if st != 0:
        raise _lib.error(st, "attn_mpi_shard", None)
    return [(start[i], length[i]) for i in range(2) if length[i] > 0]


class _Handle:
    """A libattn_mpi handle freed by close() (or a with block): the
    subclass names its destroy function in _destroy."""

    _destroy = None

    def close(self):
        if getattr(self, "_handle", None):
            _plan_ctx.pop(self._handle, None)
            getattr(_mpi, self._destroy)(self._handle)
            self._handle = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class Plan(_Handle):
    """attn_mpi_plan, created collectively over ``comm`` for this rank's
    shard arrays q [B, H, S_r, d], k/v [B, H_kv, S_r, d], out [B, H, S_r, d_v]
    (and lse [B, H, S_r]); ``desc`` an attn.Desc or None (then ``settings``
    build one: causal=..., window=..., key_lengths=..., scale=...)."""

    def __init__(self, comm, q, k, v, out, lse=None, desc=None, mode="auto",
                 layout="contiguous", ctx=None, **settings):
        self.ctx = ctx if ctx is not None else (desc.ctx if desc is not None else default_context())
        if desc is None:
            if "causal" in settings:
                settings["causal"] = _causal(settings["causal"])
            desc = Desc(self.ctx, **settings)
        elif settings:
            raise TypeError("give either desc or settings, not both")
        self.desc = desc
        self.comm = comm
        cfg = _Config()
        _mpi.attn_mpi_config_init(byref(cfg))
        cfg.mode = _enum(Mode, mode)
        cfg.layout = _enum(Layout, layout)
        self._tensors = [_as_tensor(self.ctx, a, n, writeable=n in ("out", "lse"),
                                    contiguous_last=n != "lse")
                         for n, a in zip(("q", "k", "v", "out", "lse"), (q, k, v, out, lse))]
        handles = [t.handle if t is not None else None for t in self._tensors]
        handle = c_void_p()
        _mpi.attn_mpi_plan_create(self.ctx.handle, _COMM(MPI._handleof(comm)), desc.handle,
                                  byref(cfg), *handles, byref(handle))
        self._handle = handle.value
        _plan_ctx[self._handle] = self.ctx.handle

    @property
    def handle(self):
        return self._handle

    def execute(self, q, k, v, out, lse=None):
        """Collective: run on this rank's shard arrays (laid out as at plan
        time). Writes out (and lse) in place and returns out."""
        handles, temps = _handles(self.ctx, self._tensors, ("q", "k", "v", "out", "lse"),
                                  (q, k, v, out, lse), ("out", "lse"))
        _mpi.attn_mpi_plan_execute(self._handle, *handles)
        del temps
        return out

    def stats(self):
        """What the plan runs and what its last execute cost here: dict with
        mode, ranks, rank, seq_len, steps, idle_steps, bytes_sent, seconds,
        wait_seconds."""
        s = _Stats()
        s.struct_size = ctypes.sizeof(_Stats)
        st = _mpi.attn_mpi_plan_stats(self._handle, byref(s))
        if st != 0:
            raise _lib.error(st, "attn_mpi_plan_stats", self.ctx.handle)
        d = {name: getattr(s, name) for name, _t in _Stats._fields_[1:]}
        d["mode"] = Mode(d["mode"]).name.lower()
        return d

    # close() is collective: it frees the plan's communicator.
    _destroy = "attn_mpi_plan_destroy"


def _handles(ctx, tensors, names, arrays, writeable):
    """Tensor handles for arrays: the plan-time tensors re-pointed when the
    layout matches, else temporaries (kept alive in the returned list)."""
    handles, temps = [], []
    for name, t, a in zip(names, tensors, arrays):
        if a is None:
            handles.append(None)
        elif t is not None and t.matches(a):
            t.set_data(a)
            handles.append(t.handle)
        else:
            tmp = _as_tensor(ctx, a, name, writeable=name in writeable,
                             contiguous_last=name != "lse")
            temps.append(tmp)
            handles.append(tmp.handle)
    return handles, temps


class BackwardPlan(_Handle):
    """attn_mpi_backward_plan, created collectively: the gradients over the
    ring of ``plan`` (a ring-mode Plan created with lse) for this rank's
    dout [B, H, S_r, d_v], dq [B, H, S_r, d], dk/dv [B, H_kv, S_r, d]. Close
    it before the forward plan."""

    def __init__(self, plan, dout, dq, dk, dv):
        self.plan = plan
        self.ctx = plan.ctx
        self._tensors = [_as_tensor(self.ctx, a, n, writeable=n != "dout")
                         for n, a in zip(("dout", "dq", "dk", "dv"), (dout, dq, dk, dv))]
        handle = c_void_p()
        _mpi.attn_mpi_backward_plan_create(plan.handle, *[t.handle for t in self._tensors],
                                           byref(handle))
        self._handle = handle.value
        _plan_ctx[self._handle] = self.ctx.handle

    def execute(self, q, k, v, out, lse, dout, dq, dk, dv):
        """Collective: the forward's q, k, v, out, lse and the incoming
        gradient dout of this rank; writes dq, dk, dv in place."""
        fh, ft = _handles(self.ctx, self.plan._tensors, ("q", "k", "v", "out", "lse"),
                          (q, k, v, out, lse), ())
        gh, gt = _handles(self.ctx, self._tensors, ("dout", "dq", "dk", "dv"),
                          (dout, dq, dk, dv), ("dq", "dk", "dv"))
        _mpi.attn_mpi_backward_execute(self._handle, *(fh + gh))
        del ft, gt
        return dq, dk, dv

    _destroy = "attn_mpi_backward_plan_destroy"


def attention_backward(comm, q, k, v, out, lse, dout, *, layout="contiguous", ctx=None,
                       **settings):
    """One-shot, collective: this rank's (dq, dk, dv) for the ring attention
    whose forward gave out and lse (e.g. attention(..., mode="ring",
    return_lse=True) with the same settings), given dout = ∂L/∂out of its
    rows."""
    dq, dk, dv = np.empty_like(q), np.empty_like(k), np.empty_like(v)
    with Plan(comm, q, k, v, out, lse, mode="ring", layout=layout, ctx=ctx, **settings) as p:
        with BackwardPlan(p, dout, dq, dk, dv) as b:
            b.execute(q, k, v, out, lse, dout, dq, dk, dv)
    return dq, dk, dv


def attention(comm, q, k, v, *, mode="auto", layout="contiguous", return_lse=False, ctx=None,
              out=None, **settings):
    """One-shot, collective: this rank's rows of attention over the whole
    sharded sequence. q [B, H, S_r, d], k/v [B, H_kv, S_r, d]; settings as
    attn.attention (causal, window, key_lengths in global positions, ...).
    Returns out, or (out, lse) with return_lse."""
    B, H, n, _ = q.shape
    if out is None:
        out = np.empty((B, H, n, v.shape[3]), dtype=q.dtype)
    lse = np.empty((B, H, n), dtype=q.dtype) if return_lse else None
    with Plan(comm, q, k, v, out, lse, mode=mode, layout=layout, ctx=ctx, **settings) as p:
        p.execute(q, k, v, out, lse)
    return (out, lse) if return_lse else out

"""Arrays from anywhere, without copies: numpy, PyTorch (CPU), DLPack, the
array interface.

:func:`as_numpy` turns a caller's array into a numpy array that *shares its
memory* (never a copy): the C side then reads and writes the caller's
buffer. :func:`like` turns a numpy array the package allocated back into the
caller's type (a torch tensor when the inputs were torch tensors), again
sharing memory.

Accepted, in this order:

1. ``numpy.ndarray``: as is.
2. ``torch.Tensor`` on the CPU: ``tensor.detach().numpy()`` (a view; torch
   1.13's DLPack export cannot carry bool tensors and numpy 1.24's
   ``from_dlpack`` returns read-only arrays, so this is the direct route).
   Outputs must not require grad (autograd would not see the write).
3. Any object with ``__dlpack__`` (and ``__dlpack_device__``) on the CPU: the
   DLPack capsule is consumed here (ctypes, DLPack 0.x ``DLManagedTensor``),
   giving a writeable numpy view whose lifetime ends the producer's export
   (the deleter runs when the view is garbage).
4. Any object with ``__array_interface__``, ``__array_struct__`` or the buffer
   protocol: ``numpy.asarray`` (checked to share memory).

torch is never imported by this module unless the caller passes a tensor.
"""

import ctypes
import sys

import numpy as np

__all__ = ["as_numpy", "is_torch", "like", "empty_like_input", "BF16Array"]


class BF16Array(np.ndarray):
    """A uint16 array whose elements are bfloat16 bit patterns (the top half
    of an IEEE float32). A numpy view subclass: slicing and transposing keep
    the tag; arithmetic on it is meaningless (use attn.from_bf16). A torch
    bfloat16 tensor is seen as one (a view of the same memory)."""


def is_torch(x: object) -> bool:
    """True for a torch.Tensor (without importing torch)."""
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(x, torch.Tensor)


# -- DLPack (https://dmlc.github.io/dlpack/latest/c_api.html) -------------------------
class _DLDevice(ctypes.Structure):
    _fields_ = [("device_type", ctypes.c_int32), ("device_id", ctypes.c_int32)]


class _DLDataType(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint8), ("bits", ctypes.c_uint8), ("lanes", ctypes.c_uint16)]


class _DLTensor(ctypes.Structure):
    _fields_ = [("data", ctypes.c_void_p), ("device", _DLDevice), ("ndim", ctypes.c_int32),
                ("dtype", _DLDataType), ("shape", ctypes.POINTER(ctypes.c_int64)),
                ("strides", ctypes.POINTER(ctypes.c_int64)), ("byte_offset", ctypes.c_uint64)]


class _DLManagedTensor(ctypes.Structure):
    pass


_DELETER = ctypes.CFUNCTYPE(None, ctypes.POINTER(_DLManagedTensor))
_DLManagedTensor._fields_ = [("dl_tensor", _DLTensor), ("manager_ctx", ctypes.c_void_p),
                             ("deleter", _DELETER)]

_KDL_CPU = 1
_DL_CODES = {0: "i", 1: "u", 2: "f", 6: "b"}   # kDLInt, kDLUInt, kDLFloat, kDLBool

_capsule_get = ctypes.pythonapi.PyCapsule_GetPointer
_capsule_get.restype = ctypes.c_void_p
_capsule_get.argtypes = [ctypes.py_object, ctypes.c_char_p]
_capsule_valid = ctypes.pythonapi.PyCapsule_IsValid
_capsule_valid.restype = ctypes.c_int
_capsule_valid.argtypes = [ctypes.py_object, ctypes.c_char_p]
_capsule_rename = ctypes.pythonapi.PyCapsule_SetName
_capsule_rename.restype = ctypes.c_int
_capsule_rename.argtypes = [ctypes.py_object, ctypes.c_char_p]


class _DLPackOwner:
    """Owns a consumed DLManagedTensor; its __array_interface__ is the tensor."""

    def __init__(self, managed_ptr, interface, producer):
        self._managed = managed_ptr
        self._producer = producer          # keeps the exporting object alive too
        self.__array_interface__ = interface

    def __del__(self):
        m = getattr(self, "_managed", None)
        if m is not None:
            self._managed = None
            if m.contents.deleter:
                m.contents.deleter(m)


def _from_dlpack(x, name):
    dev = x.__dlpack_device__() if hasattr(x, "__dlpack_device__") else (_KDL_CPU, 0)
    if int(dev[0]) != _KDL_CPU:
        raise TypeError("%s: DLPack device type %d is not the CPU (libattn computes on the CPU)"
                        % (name, int(dev[0])))
    capsule = x.__dlpack__()
    if not _capsule_valid(capsule, b"dltensor"):
        raise TypeError("%s: __dlpack__ did not return an unused 'dltensor' capsule" % name)
    managed = ctypes.cast(_capsule_get(capsule, b"dltensor"), ctypes.POINTER(_DLManagedTensor))
    _capsule_rename(capsule, b"used_dltensor")   # we own it now: the capsule won't delete it
    t = managed.contents.dl_tensor
    code, bits, lanes = t.dtype.code, t.dtype.bits, t.dtype.lanes
    kind = _DL_CODES.get(code)
    if kind is None or lanes != 1 or bits % 8:
        owner = _DLPackOwner(managed, None, x)   # runs the deleter
        del owner
        raise TypeError("%s: DLPack dtype (code %d, %d bits, %d lanes) is not supported"
                        % (name, code, bits, lanes))
    item = bits // 8
    typestr = "|b1" if kind == "b" else np.dtype("%s%d" % (kind, item)).str
    ndim = t.ndim
    shape = tuple(int(t.shape[i]) for i in range(ndim))
    strides = (tuple(int(t.strides[i]) * item for i in range(ndim)) if t.strides else None)
    interface = {"version": 3, "shape": shape, "typestr": typestr, "strides": strides,
                 "data": ((t.data or 0) + int(t.byte_offset), False)}
    owner = _DLPackOwner(managed, interface, x)
    return np.asarray(owner)


def as_numpy(x: object, name: str = "array", writeable: bool = False) -> np.ndarray:
    """A numpy array sharing ``x``'s memory (see the module docstring).

    ``writeable``: ``x`` is an output (torch: must not require grad). Raises
    TypeError for objects that are not arrays or live off the CPU, ValueError
    when numpy would have to copy.
    """
    if isinstance(x, np.ndarray):
        return x
    if is_torch(x):
        if x.device.type != "cpu":
            raise TypeError("%s: torch tensor on %s; libattn computes on the CPU (use .cpu())"
                            % (name, x.device))
        if x.requires_grad:
            if writeable:
                raise ValueError("%s: the output tensor requires grad (autograd would not "
                                 "see libattn's write); pass a tensor without requires_grad"
                                 % name)
            x = x.detach()
        if x.is_conj() or x.is_neg():
            raise ValueError("%s: torch tensor with a lazy conj/neg bit; call .resolve_conj()"
                             % name)
        import torch
        if x.dtype == torch.bfloat16:  # numpy has no bfloat16: its bits, tagged
            return x.view(torch.int16).numpy().view(np.uint16).view(BF16Array)
        return x.numpy()
    if hasattr(x, "__dlpack__"):
        return _from_dlpack(x, name)
    if hasattr(x, "__array_interface__") or hasattr(x, "__array_struct__"):
        arr = np.asarray(x)
        return arr
    if isinstance(x, memoryview):
        return np.asarray(x)
    raise TypeError("%s: expected an array (numpy, torch.Tensor, __dlpack__ or "
                    "__array_interface__), got %s" % (name, type(x).__name__))


def like(arr, template):
    """``arr`` (numpy) in ``template``'s type: a torch tensor sharing arr's
    memory when template is a torch tensor, else arr itself."""
    if arr is None or not is_torch(template):
        return arr
    import torch
    return torch.from_numpy(arr)


def empty_like_input(shape, template, dtype, bf16=False):
    """A new uninitialised output: (numpy view, object to return). For a torch
    template the memory is a torch tensor's, so the caller gets a real tensor.
    bf16: a bfloat16 output (numpy: a BF16Array; torch: torch.bfloat16)."""
    if is_torch(template):
        import torch
        if bf16:
            t = torch.empty(tuple(int(s) for s in shape), dtype=torch.bfloat16)
            return t.view(torch.int16).numpy().view(np.uint16).view(BF16Array), t
        tdt = {np.dtype(np.float64): torch.float64, np.dtype(np.float16): torch.float16}
        t = torch.empty(tuple(int(s) for s in shape), dtype=tdt.get(np.dtype(dtype), torch.float32))
        return t.numpy(), t
    a = np.empty(shape, dtype=dtype)
    if bf16:
        a = a.view(BF16Array)
    return a, a

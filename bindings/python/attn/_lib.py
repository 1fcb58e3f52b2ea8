"""Loading libattn and declaring its C functions (ctypes).

Every C function the package calls is one row of ``_FUNCTIONS`` (name,
restype, argtypes). Functions returning ``attn_status`` get an errcheck that
raises :class:`AttnError` carrying the status, ``attn_status_string`` and the
context's ``attn_context_last_error``. A new C function is one new row.
"""

import ctypes
import ctypes.util
import enum
import os
from ctypes import (POINTER, c_char_p, c_double, c_int, c_int32, c_int64, c_size_t,
                    c_uint32, c_uint64, c_void_p)

#: The libattn ABI major version this package speaks (libattn.so.<major>).
EXPECTED_MAJOR = 0


class Status(enum.IntEnum):
    """attn_status values (include/attn/attn.h, ATTN_STATUS_LIST)."""
    OK = 0
    ERR_NULL_ARG = 1
    ERR_INVALID_ARG = 2
    ERR_SHAPE = 3
    ERR_DTYPE = 4
    ERR_LAYOUT = 5
    ERR_OVERFLOW = 6
    ERR_NO_MEMORY = 7
    ERR_UNSUPPORTED = 8
    ERR_CAPACITY = 9
    ERR_MISMATCH = 10
    ERR_THREAD = 11
    ERR_INTERNAL = 12


class AttnError(Exception):
    """A libattn call failed.

    Attributes: ``status`` (:class:`Status`, or the raw int for a code this
    package does not know), ``function`` (the C function), ``message`` (the
    context's last error, naming the bad argument; may be empty) and
    ``status_text`` (attn_status_string).
    """

    def __init__(self, status, function, message, status_text):
        try:
            status = Status(status)
        except ValueError:
            pass
        self.status = status
        self.function = function
        self.message = message
        self.status_text = status_text
        name = status.name if isinstance(status, Status) else str(status)
        detail = message if message else status_text
        super().__init__("%s: %s (ATTN_%s: %s)" % (function, detail, name, status_text))


class UnsupportedError(AttnError):
    """ATTN_ERR_UNSUPPORTED: the library does not (yet) do what was asked."""


_ERROR_CLASSES = {Status.ERR_UNSUPPORTED: UnsupportedError}


class ContextOptions(ctypes.Structure):
    """attn_context_options (the allocator hooks are left at the default)."""
    _fields_ = [("struct_size", c_size_t),
                ("num_threads", c_int32),
                ("alloc", c_void_p),
                ("free", c_void_p),
                ("user_data", c_void_p)]


class MhaConfig(ctypes.Structure):
    """attn_mha_config (heads.h); fill with attn_mha_config_init."""
    _fields_ = [("struct_size", c_size_t),
                ("embed_dim", c_int64),
                ("num_heads", c_int64),
                ("num_kv_heads", c_int64),
                ("kdim", c_int64),
                ("vdim", c_int64),
                ("bias", c_int32),
                ("add_bias_kv", c_int32),
                ("add_zero_attn", c_int32),
                ("batch_first", c_int32),
                ("dtype", c_int)]


#: attn_mha_weights fields after struct_size, in C order (PyTorch's names).
MHA_WEIGHT_FIELDS = ("in_proj_weight", "q_proj_weight", "k_proj_weight", "v_proj_weight",
                     "in_proj_bias", "out_proj_weight", "out_proj_bias", "bias_k", "bias_v")


class MhaWeights(ctypes.Structure):
    """attn_mha_weights (heads.h): borrowed tensor handles; fill with attn_mha_weights_init."""
    _fields_ = [("struct_size", c_size_t)] + [(n, c_void_p) for n in MHA_WEIGHT_FIELDS]


class MhaGrads(ctypes.Structure):
    """attn_mha_grads (heads.h): gradient tensor handles, the weights' field
    names; fill with attn_mha_grads_init."""
    _fields_ = [("struct_size", c_size_t)] + [(n, c_void_p) for n in MHA_WEIGHT_FIELDS]


class KVCacheConfig(ctypes.Structure):
    """attn_kvcache_config (kvcache.h); fill with attn_kvcache_config_init."""
    _fields_ = [("struct_size", c_size_t),
                ("batch", c_int64),
                ("heads_kv", c_int64),
                ("capacity", c_int64),
                ("d_k", c_int64),
                ("d_v", c_int64),
                ("dtype", c_int),
                ("mode", c_int),
                ("grow", c_int32),
                ("storage", c_int),
                ("group_size", c_int64)]


class KVCacheRaw(ctypes.Structure):
    """attn_kvcache_raw (kvcache.h); fill with attn_kvcache_raw_init."""
    _fields_ = [("struct_size", c_size_t),
                ("storage", c_int),
                ("dtype", c_int),
                ("batch", c_int64),
                ("heads_kv", c_int64),
                ("capacity", c_int64),
                ("d_k", c_int64),
                ("d_v", c_int64),
                ("group_size", c_int64),
                ("k_row_bytes", c_int64),
                ("v_row_bytes", c_int64),
                ("k", c_void_p),
                ("v", c_void_p),
                ("k_groups", c_int64),
                ("k_scales", c_void_p),
                ("v_scales", c_void_p),
                ("k_residual", c_void_p),
                ("total_bytes", c_int64)]


class PagedConfig(ctypes.Structure):
    """attn_paged_config (paged.h); fill with attn_paged_config_init."""
    _fields_ = [("struct_size", c_size_t),
                ("heads_kv", c_int64),
                ("d_k", c_int64),
                ("d_v", c_int64),
                ("block_size", c_int64),
                ("num_blocks", c_int64),
                ("max_seqs", c_int64),
                ("max_seq_len", c_int64),
                ("dtype", c_int),
                ("storage", c_int),
                ("group_size", c_int64)]


STATUS = "status"   # restype marker: returns attn_status, checked
_P = c_void_p        # every opaque handle
_PP = POINTER(c_void_p)
_I64P = POINTER(c_int64)
_F64P = POINTER(c_double)

# (name, restype, argtypes). Descriptor setters are declared with their
# Python-side meaning in attn/__init__.py (_DESC_SETTERS) and registered from
# there; everything else is here.
_FUNCTIONS = [
    ("attn_version_number", c_uint32, []),
    ("attn_version_string", c_char_p, []),
    ("attn_status_string", c_char_p, [c_int]),
    ("attn_context_options_init", None, [POINTER(ContextOptions)]),
    ("attn_context_create", STATUS, [POINTER(ContextOptions), _PP]),
    ("attn_context_destroy", None, [_P]),
    ("attn_context_last_error", c_char_p, [_P]),
    ("attn_context_num_threads", c_int32, [_P]),
    ("attn_tensor_create", STATUS, [_P, c_int, c_int32, _I64P, _PP]),
    ("attn_tensor_wrap", STATUS, [_P, c_int, c_int32, _I64P, _I64P, _P, _PP]),
    ("attn_tensor_destroy", None, [_P]),
    ("attn_tensor_dtype", c_int, [_P]),
    ("attn_tensor_rank", c_int32, [_P]),
    ("attn_tensor_dim", c_int64, [_P, c_int32]),
    ("attn_tensor_stride", c_int64, [_P, c_int32]),
    ("attn_tensor_numel", c_int64, [_P]),
    ("attn_tensor_data", c_void_p, [_P]),
    ("attn_tensor_set_data", STATUS, [_P, _P]),
    ("attn_desc_create", STATUS, [_P, _PP]),
    ("attn_desc_destroy", None, [_P]),
    ("attn_plan_create", STATUS, [_P, _P, _P, _P, _P, _P, _P, _P, _PP]),
    ("attn_plan_execute", STATUS, [_P, _P, _P, _P, _P, _P, _P]),
    ("attn_plan_workspace_size", c_size_t, [_P]),
    ("attn_plan_destroy", None, [_P]),
    ("attn_plan_block_layout", STATUS, [_P, POINTER(ctypes.c_uint8), POINTER(c_size_t)]),
    ("attn_plan_redraw_features", STATUS, [_P, c_uint64]),
    ("attn_forward", STATUS, [_P, _P, _P, _P, _P, _P, _P, _P]),
    ("attn_merge_states", STATUS, [_P, _P, _P, _P, _P, _P, _P]),
    # multi-head (heads.h)
    ("attn_heads_split_view", STATUS, [_P, _P, c_int64, _PP]),
    ("attn_heads_merge_view", STATUS, [_P, _P, _PP]),
    ("attn_heads_split", STATUS, [_P, _P, _P]),
    ("attn_heads_merge", STATUS, [_P, _P, _P]),
    ("attn_mha_config_init", None, [POINTER(MhaConfig)]),
    ("attn_mha_weights_init", None, [POINTER(MhaWeights)]),
    ("attn_mha_create", STATUS, [_P, POINTER(MhaConfig), POINTER(MhaWeights), _PP]),
    ("attn_mha_destroy", None, [_P]),
    ("attn_mha_plan_create", STATUS, [_P, _P, _P, _P, _P, _P, _P, _P, _PP]),
    ("attn_mha_plan_execute", STATUS, [_P, _P, _P, _P, _P, _P, _P]),
    ("attn_mha_plan_workspace_size", c_size_t, [_P]),
    ("attn_mha_plan_destroy", None, [_P]),
    ("attn_mha_grads_init", None, [POINTER(MhaGrads)]),
    ("attn_mha_backward_plan_create", STATUS, [_P, _P, _P, _P, _P, _P, _P, _PP]),
    ("attn_mha_backward_saved_size", c_size_t, [_P]),
    ("attn_mha_forward_train", STATUS, [_P, _P, _P, _P, _P, _P, _P, c_size_t]),
    ("attn_mha_backward_execute", STATUS,
     [_P, _P, _P, _P, _P, _P, _P, c_size_t, _P, _P, _P, POINTER(MhaGrads)]),
    ("attn_mha_backward_plan_workspace_size", c_size_t, [_P]),
    ("attn_mha_backward_plan_destroy", None, [_P]),
    # KV cache (kvcache.h)
    ("attn_kvcache_config_init", None, [POINTER(KVCacheConfig)]),
    ("attn_kvcache_create", STATUS, [_P, POINTER(KVCacheConfig), _PP]),
    ("attn_kvcache_destroy", None, [_P]),
    ("attn_kvcache_append", STATUS, [_P, _P, _P, _I64P]),
    ("attn_kvcache_truncate", STATUS, [_P, _I64P]),
    ("attn_kvcache_set_keep_first", STATUS, [_P, c_int64]),
    ("attn_kvcache_length", c_int64, [_P, c_int64]),
    ("attn_kvcache_first", c_int64, [_P, c_int64]),
    ("attn_kvcache_capacity", c_int64, [_P]),
    ("attn_kvcache_memory_size", c_size_t, [_P]),
    ("attn_kvcache_view", STATUS, [_P, _PP, _PP]),
    ("attn_kvcache_raw_init", None, [POINTER(KVCacheRaw)]),
    ("attn_kvcache_view_raw", STATUS, [_P, POINTER(KVCacheRaw)]),
    ("attn_kvcache_plan_create", STATUS, [_P, _P, _P, _P, _P, _PP]),
    ("attn_kvcache_plan_execute", STATUS, [_P, _P, _P, _P, _I64P]),
    ("attn_kvcache_plan_workspace_size", c_size_t, [_P]),
    ("attn_kvcache_plan_destroy", None, [_P]),
    # backward pass (backward.h)
    ("attn_backward_plan_create", STATUS, [_P, _P, _P, _P, _P, _P, _PP]),
    ("attn_backward_execute", STATUS, [_P, _P, _P, _P, _P, _P, _P, _P, _P, _P, _P]),
    ("attn_backward_plan_workspace_size", c_size_t, [_P]),
    ("attn_backward_plan_destroy", None, [_P]),
    ("attn_backward_plan_set_sink_grad", STATUS, [_P, POINTER(c_double), c_int64]),
    ("attn_backward_plan_set_general_grad", STATUS, [_P, _P]),
    ("attn_backward_plan_set_additive_grads", STATUS, [_P, _P, _P, _P, _P]),
    ("attn_backward_plan_set_lowrank_grads", STATUS, [_P, _P, _P]),
    # paged KV cache (paged.h)
    ("attn_paged_config_init", None, [POINTER(PagedConfig)]),
    ("attn_paged_create", STATUS, [_P, POINTER(PagedConfig), _PP]),
    ("attn_paged_destroy", None, [_P]),
    ("attn_paged_seq_create", STATUS, [_P, _I64P]),
    ("attn_paged_seq_free", STATUS, [_P, c_int64]),
    ("attn_paged_fork", STATUS, [_P, c_int64, _I64P]),
    ("attn_paged_append", STATUS, [_P, c_int64, _P, _P]),
    ("attn_paged_truncate", STATUS, [_P, c_int64, c_int64]),
    ("attn_paged_seq_length", c_int64, [_P, c_int64]),
    ("attn_paged_block_table", STATUS, [_P, c_int64, _I64P, c_int64, _I64P]),
    ("attn_paged_free_blocks", c_int64, [_P]),
    ("attn_paged_num_blocks", c_int64, [_P]),
    ("attn_paged_block_size", c_int64, [_P]),
    ("attn_paged_num_seqs", c_int64, [_P]),
    ("attn_paged_memory_size", c_size_t, [_P]),
    ("attn_paged_memory_used", c_size_t, [_P]),
    ("attn_paged_plan_create", STATUS, [_P, _P, _P, _P, _P, _P, _PP]),
    ("attn_paged_plan_execute", STATUS, [_P, c_int64, _I64P, _P, _P, _P, _I64P]),
    ("attn_paged_plan_workspace_size", c_size_t, [_P]),
    ("attn_paged_plan_destroy", None, [_P]),
]

# Status-returning functions whose first argument is the context; for the
# others the first argument is a handle whose context _owner knows.
_CTX_FIRST = {"attn_tensor_create", "attn_tensor_wrap", "attn_desc_create",
              "attn_plan_create", "attn_forward", "attn_merge_states", "attn_heads_split_view",
              "attn_heads_merge_view", "attn_heads_split", "attn_heads_merge",
              "attn_mha_create", "attn_kvcache_create", "attn_paged_create",
              "attn_paged_plan_create"}

# Which context a handle belongs to, so an errcheck can fetch the context's
# message for calls whose first argument is a tensor/descriptor/plan.
# Keys are handle addresses; the wrappers register and unregister them.
_owner = {}


def register_handle(handle, ctx_handle):
    _owner[handle] = ctx_handle


def unregister_handle(handle):
    _owner.pop(handle, None)


class _Library:
    def __init__(self, cdll, path):
        self.cdll = cdll
        self.path = path
        self._ctx_of_first_arg = {}

    def declare(self, name, restype, argtypes, first_arg_is_ctx=None):
        """Register one C function as an attribute of this object."""
        try:
            fn = getattr(self.cdll, name)
        except AttributeError:
            # A newer binding on an older libattn of the same major: the
            # function raises when called instead of failing the import.
            def missing(*_args, _name=name):
                raise UnsupportedError(Status.ERR_UNSUPPORTED, _name,
                                       "%s is not in %s" % (_name, self.path),
                                       "the requested combination is not supported")
            setattr(self, name, missing)
            return
        fn.argtypes = argtypes
        if restype == STATUS:
            fn.restype = c_int
            if first_arg_is_ctx is None:
                first_arg_is_ctx = name in _CTX_FIRST
            fn.errcheck = self._make_errcheck(name, first_arg_is_ctx)
        else:
            fn.restype = restype
        setattr(self, name, fn)

    def _make_errcheck(self, name, first_arg_is_ctx):
        def errcheck(result, _func, args):
            if result == 0:
                return result
            ctx = None
            if args and name != "attn_context_create":   # no context exists to ask
                first = args[0]
                first = first.value if isinstance(first, c_void_p) else first
                ctx = first if first_arg_is_ctx else _owner.get(first)
            raise self.error(result, name, ctx)
        return errcheck

    def error(self, status, function, ctx_handle):
        text = self.cdll.attn_status_string(status).decode("utf-8", "replace")
        message = ""
        if ctx_handle:
            message = self.cdll.attn_context_last_error(ctx_handle).decode("utf-8", "replace")
        cls = _ERROR_CLASSES.get(status, AttnError)
        return cls(status, function, message, text)


def _system_candidates():
    """libattn from the system: pkg-config's libdir for attn (honours
    $PKG_CONFIG_PATH), then ldconfig's cache (ctypes.util.find_library)."""
    out = []
    try:
        import subprocess
        r = subprocess.run(["pkg-config", "--variable=libdir", "attn"], capture_output=True,
                           text=True, timeout=10)
        if r.returncode == 0 and r.stdout.strip():
            out.append(os.path.join(r.stdout.strip(), "libattn.so.%d" % EXPECTED_MAJOR))
    except (OSError, subprocess.SubprocessError):
        pass
    found = ctypes.util.find_library("attn")
    if found:
        out.append(found)
    out.append("libattn.so.%d" % EXPECTED_MAJOR)   # the dynamic loader's own search
    return out


def _candidates():
    """Where to look for libattn, in order (see load())."""
    here = os.path.dirname(os.path.abspath(__file__))
    out = []
    build_dir = os.environ.get("ATTN_BUILD_DIR")
    if build_dir:
        out.append(os.path.join(build_dir, "libattn.so.%d" % EXPECTED_MAJOR))
    # Bundled into the package at build time (ATTN_BUNDLE_LIBRARY, see setup.py).
    out.append(os.path.join(here, "_libs", "libattn.so.%d" % EXPECTED_MAJOR))
    # Running from a source checkout (bindings/python/attn): its build/ directory.
    repo = os.path.normpath(os.path.join(here, "..", "..", ".."))
    if os.path.exists(os.path.join(repo, "include", "attn", "attn.h")):
        out.append(os.path.join(repo, "build", "libattn.so.%d" % EXPECTED_MAJOR))
    return out + _system_candidates()


def load():
    """Find and load libattn.

    1. ``$ATTN_LIBRARY`` (a path to the .so; if set it must load),
    2. ``$ATTN_BUILD_DIR/libattn.so.0`` (a build tree),
    3. the library bundled into the installed package at build time
       (``attn/_libs/libattn.so.0``, present when built with
       ``ATTN_BUNDLE_LIBRARY``),
    4. ``build/`` at the root of the source tree, when the package is used
       from a checkout,
    5. the system: ``pkg-config --variable=libdir attn`` (so an install
       prefix on ``$PKG_CONFIG_PATH`` is found), ``ctypes.util.find_library``
       (ldconfig), then ``libattn.so.0`` through the dynamic loader's search.

    Raises ImportError when nothing loads or the major version differs.
    """
    explicit = os.environ.get("ATTN_LIBRARY")
    tried = []
    cdll = path = None
    if explicit:
        try:
            cdll, path = ctypes.CDLL(explicit), explicit
        except OSError as e:
            raise ImportError("attn: cannot load $ATTN_LIBRARY=%s: %s" % (explicit, e))
    else:
        for cand in _candidates():
            if os.sep in cand and not os.path.exists(cand):
                tried.append(cand + " (not found)")
                continue
            try:
                cdll, path = ctypes.CDLL(cand), cand
                break
            except OSError as e:
                tried.append("%s (%s)" % (cand, e))
    if cdll is None:
        raise ImportError("attn: libattn not found; set ATTN_LIBRARY to libattn.so.%d. Tried: %s"
                          % (EXPECTED_MAJOR, "; ".join(tried)))
    lib = _Library(cdll, path)
    for name, restype, argtypes in _FUNCTIONS:
        lib.declare(name, restype, argtypes)
    number = lib.attn_version_number()
    if number // 10000 != EXPECTED_MAJOR:
        raise ImportError("attn: %s is libattn %s (major %d); this package needs major %d"
                          % (path, lib.attn_version_string().decode(), number // 10000,
                             EXPECTED_MAJOR))
    return lib

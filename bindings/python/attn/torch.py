"""libattn for PyTorch users: attention with a backward pass, on torch tensors.

    import torch, attn.torch as at
    q = torch.randn(2, 8, 128, 64, requires_grad=True)
    out = at.scaled_dot_product_attention(q, q, q, is_causal=True)
    out.sum().backward()                      # libattn's backward (attn/backward.h)

    mha = at.MultiheadAttention(512, 8, batch_first=True)   # drop-in nn.MultiheadAttention

Both take the same arguments, with the same names and mask polarity, as
PyTorch's ``torch.nn.functional.scaled_dot_product_attention`` (PyTorch 2.x)
and ``torch.nn.MultiheadAttention``:

- ``scaled_dot_product_attention``: a bool ``attn_mask`` is True where a
  query *may* attend; a float one is added to the scores (and gets its own
  gradient when it requires grad).
- ``MultiheadAttention``: a bool ``attn_mask`` / ``key_padding_mask`` is True
  where attention is *not* allowed (nn.MultiheadAttention's convention).

The attention core runs in libattn (forward and backward) through
``torch.autograd.Function``; CPU float32/float64 tensors are passed to C as
views of their memory (no copies when the last dim is contiguous). In
``MultiheadAttention`` the projections stay torch ops (autograd gives their
gradients), so gradients match nn.MultiheadAttention's. Not supported:
attention dropout (dropout_p > 0 while training), CUDA tensors.
"""
import atexit
import math
import threading
from ctypes import byref, c_void_p

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import Causal, Desc, Plan, Tensor, default_context
from . import _lib
from ._lib import register_handle, unregister_handle

__all__ = ["scaled_dot_product_attention", "attention", "MultiheadAttention"]

_DTYPES = (torch.float32, torch.float64)


def _np(t):
    return t.detach().numpy()


def _last_contig(t):
    return t if t.stride(-1) == 1 or t.shape[-1] == 1 else t.contiguous()


def _mask4(m):
    """A mask broadcastable to [B, H, L, S] as a rank-4 view (dims of 1 prepended)."""
    while m.dim() < 4:
        m = m.unsqueeze(0)
    return m


class _Backward:
    """An attn_backward_plan of a cached forward plan, with its gradient
    tensor wrappers (re-pointed at each call's arrays)."""

    def __init__(self, plan, tensors, handle, lib):
        self.plan = plan            # destroyed after this (no reference cycle with _Entry)
        self.tensors = tensors      # dout, dq, dk, dv, dmask (or None)
        self.handle = handle
        self.lib = lib

    def __del__(self):
        if self.handle:
            unregister_handle(self.handle)
            self.lib.attn_backward_plan_destroy(self.handle)
            self.handle = None


class _Entry:
    """A descriptor and forward plan (with lse) reused by calls with the same
    dtype, shapes, strides and mask-free settings; and its backward plans."""

    def __init__(self, actx, desc, plan):
        self.actx, self.desc, self.plan = actx, desc, plan
        self.backward = {}


_local = threading.local()
_CACHE_SIZE = 32
_all_caches = []  # every thread's cache, emptied at exit (see _clear_caches)


def _clear_caches():
    """Destroy the cached plans while their contexts are alive: at interpreter
    shutdown the garbage collector finalizes what is left in any order, and a
    context destroyed before a plan made with it would be used after free."""
    for cache in _all_caches:
        cache.clear()


atexit.register(_clear_caches)


def _cache_key(q, k, v, settings):
    try:
        items = tuple(sorted((name, tuple(val) if isinstance(val, list) else val)
                             for name, val in settings.items()))
        hash(items)
    except TypeError:
        return None
    return (q.dtype, tuple(q.shape), q.stride(), tuple(k.shape), k.stride(), tuple(v.shape),
            v.stride(), items)


class _AttnFunction(torch.autograd.Function):
    """out = softmax(scale·q kᵀ + masks) v on [B, H, L, E] tensors; backward by libattn."""

    @staticmethod
    def forward(ctx, q, k, v, add_mask, bool_mask, settings):
        actx = default_context()
        B, H, L, _ = q.shape
        out = torch.empty(B, H, L, v.shape[-1], dtype=q.dtype)
        lse = torch.empty(B, H, L, dtype=q.dtype)
        settings = dict(settings)
        S = k.shape[2]
        mask_shape = add_mask.shape if add_mask is not None else None
        # Mask-free calls reuse their plans (masks are borrowed per call).
        key = None
        if add_mask is None and bool_mask is None:
            key = _cache_key(q, k, v, settings)
        cache = getattr(_local, "cache", None)
        if cache is None or getattr(_local, "ctx", None) is not actx:
            if cache is not None:  # this thread's default context changed
                cache.clear()
                _all_caches.remove(cache)
            cache = _local.cache = {}
            _local.ctx = actx
            _all_caches.append(cache)
        entry = cache.get(key) if key is not None else None
        if entry is None:
            # The library broadcasts B and H over dims of 1, S_q and S_k over stride 0.
            if bool_mask is not None:
                bool_mask = bool_mask.expand(bool_mask.shape[0], bool_mask.shape[1], L, S)
                settings["bool_mask"] = _np(bool_mask)
            if add_mask is not None:
                add_mask = add_mask.expand(add_mask.shape[0], add_mask.shape[1], L, S)
                settings["additive_mask"] = _np(add_mask)
            desc = Desc(actx, **settings)
            plan = Plan(desc, _np(q), _np(k), _np(v), _np(out), None, _np(lse))
            entry = _Entry(actx, desc, plan)
            if key is not None:
                if len(cache) >= _CACHE_SIZE:
                    cache.pop(next(iter(cache)))
                cache[key] = entry
        entry.plan.execute(_np(q), _np(k), _np(v), _np(out), None, _np(lse))
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.attn = entry
        ctx.mask_shape = mask_shape
        return out

    @staticmethod
    def backward(ctx, dout):
        q, k, v, out, lse = ctx.saved_tensors
        entry = ctx.attn
        actx, plan = entry.actx, entry.plan
        dout = _last_contig(dout)
        dq = torch.empty(q.shape, dtype=q.dtype)
        dk = torch.empty(k.shape, dtype=k.dtype)
        dv = torch.empty(v.shape, dtype=v.dtype)
        want_dmask = ctx.mask_shape is not None and ctx.needs_input_grad[3]
        dmask = torch.empty(q.shape[0], q.shape[1], q.shape[2], k.shape[2],
                            dtype=q.dtype) if want_dmask else None
        arrays = [_np(dout), _np(dq), _np(dk), _np(dv), _np(dmask) if want_dmask else None]
        bkey = (dout.stride(), want_dmask)
        bw = entry.backward.get(bkey)
        lib = _lib_obj()
        if bw is None:
            ts = [Tensor(actx, arrays[0], "dout", contiguous_last=True)]
            for name, a in zip(("dq", "dk", "dv"), arrays[1:4]):
                ts.append(Tensor(actx, a, name, writeable=True, contiguous_last=True))
            ts.append(Tensor(actx, arrays[4], "dmask", writeable=True) if want_dmask else None)
            handle = c_void_p()
            lib.attn_backward_plan_create(plan.handle, *[t.handle for t in ts[:4]],
                                          ts[4].handle if ts[4] else None, byref(handle))
            register_handle(handle.value, actx.handle)
            bw = entry.backward[bkey] = _Backward(plan, ts, handle.value, lib)
        else:
            for t, a in zip(bw.tensors, arrays):
                if t is not None:
                    t.set_data(a)
        # The forward plan's q, k, v, out, lse tensors: point them at this call's
        # saved tensors (a cached plan was re-pointed by later forwards).
        pt = plan._tensors
        for i, t in ((0, q), (1, k), (2, v), (3, out), (5, lse)):
            pt[i].set_data(_np(t))
        ts = bw.tensors
        lib.attn_backward_execute(bw.handle, pt[0].handle, pt[1].handle, pt[2].handle,
                                  pt[3].handle, pt[5].handle, *[t.handle for t in ts[:4]],
                                  ts[4].handle if ts[4] else None)
        gmask = None
        if want_dmask:
            gmask = dmask.sum_to_size(ctx.mask_shape)
        return dq, dk, dv, gmask, None, None


def _lib_obj():
    from . import _lib as loaded  # the package's loaded library (attn._lib is the object)
    return loaded


def scaled_dot_product_attention(query, key, value, attn_mask=None, dropout_p=0.0,
                                 is_causal=False, scale=None, enable_gqa=False):
    """PyTorch 2.x's F.scaled_dot_product_attention on libattn (forward and backward).

    query [..., L, E], key [..., S, E], value [..., S, Ev] with the same leading
    dims (rank 3 or 4; with ``enable_gqa`` key/value may have fewer heads that
    divide query's). ``attn_mask``: bool (True = attend) or float (added),
    broadcastable to [..., L, S]. ``is_causal``: top-left causal mask. ``scale``:
    default 1/sqrt(E). CPU float32/float64. Returns [..., L, Ev].
    """
    if dropout_p:
        raise NotImplementedError("attn.torch: attention dropout is not supported (dropout_p=0)")
    for name, t in (("query", query), ("key", key), ("value", value)):
        if t.dtype not in _DTYPES or t.device.type != "cpu":
            raise TypeError("%s: libattn takes CPU float32/float64 tensors, got %s on %s"
                            % (name, t.dtype, t.device))
    if not (query.dtype == key.dtype == value.dtype):
        raise TypeError("query, key, value: dtypes differ (%s, %s, %s)"
                        % (query.dtype, key.dtype, value.dtype))
    squeeze = query.dim() == 3
    if squeeze:
        query, key, value = query.unsqueeze(0), key.unsqueeze(0), value.unsqueeze(0)
    if query.dim() != 4:
        raise ValueError("query: expected rank 3 or 4, got shape %s" % (tuple(query.shape),))
    if key.shape[1] != query.shape[1] and not enable_gqa:
        raise ValueError("key: %d heads differ from query's %d (pass enable_gqa=True)"
                         % (key.shape[1], query.shape[1]))
    query, key, value = _last_contig(query), _last_contig(key), _last_contig(value)
    add_mask = bool_mask = None
    if attn_mask is not None:
        if attn_mask.dtype == torch.bool:
            bool_mask = _mask4(attn_mask)
        else:
            add_mask = _mask4(attn_mask.to(query.dtype))
    settings = {"causal": Causal.TOP_LEFT if is_causal else Causal.NONE}
    if scale is not None:
        settings["scale"] = float(scale)
    out = _AttnFunction.apply(query, key, value, add_mask, bool_mask, settings)
    return out.squeeze(0) if squeeze else out


def attention(q, k, v, attn_mask=None, **settings):
    """libattn's attention with its own descriptor settings, differentiable.

    q [B, H, L, E], k [B, H_kv, S, E], v [B, H_kv, S, Ev] (H_kv divides H).
    ``attn_mask``: bool (True = attend) or float (added; gets a gradient),
    broadcastable to [B, H, L, S]. ``settings`` are attn.Desc settings, e.g.
    ``causal="bottom_right"``, ``window=(16, 0)``, ``key_lengths=[5, 7]``,
    ``query_lengths=[...]``, ``alibi=slopes``, ``softcap=30.0``, ``scale=0.1``,
    ``score="dot"``, ``variant="longformer"`` with ``global_tokens=[0]``.
    """
    for name, t in (("q", q), ("k", k), ("v", v)):
        if t.dtype not in _DTYPES or t.device.type != "cpu" or t.dim() != 4:
            raise TypeError("%s: libattn takes rank-4 CPU float32/float64 tensors" % name)
    q, k, v = _last_contig(q), _last_contig(k), _last_contig(v)
    add_mask = bool_mask = None
    if attn_mask is not None:
        if attn_mask.dtype == torch.bool:
            bool_mask = _mask4(attn_mask)
        else:
            add_mask = _mask4(attn_mask.to(q.dtype))
    return _AttnFunction.apply(q, k, v, add_mask, bool_mask, settings)


class MultiheadAttention(nn.Module):
    """Drop-in torch.nn.MultiheadAttention with libattn's attention core.

    Same constructor, parameters (names and shapes, so state dicts load both
    ways), forward signature and mask conventions as nn.MultiheadAttention
    (PyTorch 1.13). The attention weights it returns with need_weights=True
    are computed for inspection and carry no gradient. dropout must be 0 while
    training.
    """

    def __init__(self, embed_dim, num_heads, dropout=0.0, bias=True, add_bias_kv=False,
                 add_zero_attn=False, kdim=None, vdim=None, batch_first=False, device=None,
                 dtype=None):
        super().__init__()
        ref = nn.MultiheadAttention(embed_dim, num_heads, dropout=dropout, bias=bias,
                                    add_bias_kv=add_bias_kv, add_zero_attn=add_zero_attn,
                                    kdim=kdim, vdim=vdim, batch_first=batch_first,
                                    device=device, dtype=dtype)
        # Take nn.MultiheadAttention's parameters and initialisation as they are.
        self.embed_dim = ref.embed_dim
        self.kdim, self.vdim = ref.kdim, ref.vdim
        self._qkv_same_embed_dim = ref._qkv_same_embed_dim
        self.num_heads = num_heads
        self.dropout = dropout
        self.batch_first = batch_first
        self.head_dim = ref.head_dim
        self.add_zero_attn = add_zero_attn
        self.in_proj_weight = ref.in_proj_weight
        self.q_proj_weight = ref.q_proj_weight
        self.k_proj_weight = ref.k_proj_weight
        self.v_proj_weight = ref.v_proj_weight
        self.in_proj_bias = ref.in_proj_bias
        self.out_proj = ref.out_proj
        self.bias_k, self.bias_v = ref.bias_k, ref.bias_v

    def forward(self, query, key, value, key_padding_mask=None, need_weights=True,
                attn_mask=None, average_attn_weights=True, is_causal=False):
        if self.dropout and self.training:
            raise NotImplementedError("attn.torch.MultiheadAttention: attention dropout is not "
                                      "supported (dropout=0, or eval())")
        batched = query.dim() == 3
        if not batched:
            query, key, value = query.unsqueeze(1), key.unsqueeze(1), value.unsqueeze(1)
            if key_padding_mask is not None:
                key_padding_mask = key_padding_mask.unsqueeze(0)
        elif self.batch_first:
            query, key, value = (x.transpose(0, 1) for x in (query, key, value))
        L, B, E = query.shape
        H, D = self.num_heads, self.head_dim
        if self._qkv_same_embed_dim:
            w_q, w_k, w_v = self.in_proj_weight.chunk(3)
        else:
            w_q, w_k, w_v = self.q_proj_weight, self.k_proj_weight, self.v_proj_weight
        b_q = b_k = b_v = None
        if self.in_proj_bias is not None:
            b_q, b_k, b_v = self.in_proj_bias.chunk(3)
        q = F.linear(query, w_q, b_q)          # [L, B, E]
        k = F.linear(key, w_k, b_k)            # [S, B, E]
        v = F.linear(value, w_v, b_v)
        if attn_mask is not None and attn_mask.dim() == 3:
            attn_mask = attn_mask.view(B, H, L, attn_mask.shape[-1])
        if self.bias_k is not None:
            k = torch.cat([k, self.bias_k.expand(1, B, E)])
            v = torch.cat([v, self.bias_v.expand(1, B, E)])
            attn_mask = F.pad(attn_mask, (0, 1)) if attn_mask is not None else None
            key_padding_mask = (F.pad(key_padding_mask, (0, 1))
                                if key_padding_mask is not None else None)
        if self.add_zero_attn:
            k = torch.cat([k, k.new_zeros(1, B, E)])
            v = torch.cat([v, v.new_zeros(1, B, E)])
            attn_mask = F.pad(attn_mask, (0, 1)) if attn_mask is not None else None
            key_padding_mask = (F.pad(key_padding_mask, (0, 1))
                                if key_padding_mask is not None else None)
        S = k.shape[0]
        # [T, B, E] -> [B, H, T, D] views (last dim contiguous: no copy).
        qh = q.view(L, B, H, D).permute(1, 2, 0, 3)
        kh = k.view(S, B, H, D).permute(1, 2, 0, 3)
        vh = v.view(S, B, H, D).permute(1, 2, 0, 3)
        # nn.MultiheadAttention's polarity (True = masked) to libattn's masks.
        allowed = additive = None
        if attn_mask is not None:
            if attn_mask.dtype == torch.bool:
                allowed = ~attn_mask
            else:
                additive = attn_mask.to(q.dtype)
        if key_padding_mask is not None:
            kpm = key_padding_mask.view(B, 1, 1, S)
            if kpm.dtype == torch.bool:
                allowed = ~kpm if allowed is None else (_mask4(allowed) & ~kpm)
            else:
                kpm = kpm.to(q.dtype)
                additive = kpm if additive is None else _mask4(additive) + kpm
        causal = Causal.TOP_LEFT if (is_causal and attn_mask is None) else Causal.NONE
        out = _AttnFunction.apply(_last_contig(qh), _last_contig(kh), _last_contig(vh),
                                  _mask4(additive) if additive is not None else None,
                                  _mask4(allowed) if allowed is not None else None,
                                  {"causal": causal, "scale": 1.0 / math.sqrt(D)})
        out = out.permute(2, 0, 1, 3).reshape(L, B, E)
        out = self.out_proj(out)
        weights = None
        if need_weights:
            with torch.no_grad():
                s = (qh @ kh.transpose(-1, -2)) / math.sqrt(D)
                if additive is not None:
                    s = s + _mask4(additive)
                if allowed is not None:
                    s = s.masked_fill(~_mask4(allowed), float("-inf"))
                if causal == Causal.TOP_LEFT:
                    s = s.masked_fill(torch.ones(L, S, dtype=torch.bool).triu(1), float("-inf"))
                weights = torch.softmax(s, dim=-1).nan_to_num(0.0)
                if average_attn_weights:
                    weights = weights.mean(dim=1)
                if not batched:
                    weights = weights.squeeze(0)
        if not batched:
            out = out.squeeze(1)
        elif self.batch_first:
            out = out.transpose(0, 1)
        return out, weights

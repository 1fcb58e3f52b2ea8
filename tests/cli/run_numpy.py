#!/usr/bin/python3
"""`attn run` against an independent NumPy computation of softmax attention.

Writes q/k/v (and masks) as .npy, runs the attn binary, loads its outputs and
compares out, weights and lse with a float64 NumPy reference: causal (both
alignments), sliding window, ALiBi, softcap, scale, key lengths, bool and
additive masks, GQA, rank-3 inputs, float32/float64, big-endian input.
Exit 77 (ctest: skipped) when numpy is not installed.
Usage: run_numpy.py /path/to/attn WORKDIR"""
import os
import shutil
import subprocess
import sys

try:
    import numpy as np
except ImportError:
    print("numpy not available: skipping")
    sys.exit(77)

ATTN, WORK = sys.argv[1], sys.argv[2]
shutil.rmtree(WORK, ignore_errors=True)
os.makedirs(WORK)
failures = []


def reference(q, k, v, causal=None, window=None, scale=None, softcap=None, alibi=None,
              key_lengths=None, bool_mask=None, add_mask=None):
    """float64 softmax attention on [B,H,S,D] arrays, written from the definitions."""
    q, k, v = (np.asarray(x, dtype=np.float64) for x in (q, k, v))
    B, H, Sq, D = q.shape
    Hkv, Sk = k.shape[1], k.shape[2]
    rep = H // Hkv
    k = np.repeat(k, rep, axis=1)
    v = np.repeat(v, rep, axis=1)
    if scale is None:
        scale = 1.0 / np.sqrt(D)
    s = scale * np.einsum("bhid,bhjd->bhij", q, k)
    if softcap is not None:
        s = softcap * np.tanh(s / softcap)
    i = np.arange(Sq)[None, None, :, None]
    j = np.arange(Sk)[None, None, None, :]
    # aligned query position; bottom-right lines up the ends of the valid
    # ranges: i' = i + key_len[b] - S_q (attn.h)
    klen = np.asarray(key_lengths if key_lengths is not None else [Sk] * B)[:, None, None, None]
    ia = i + (klen - Sq) if causal == "bottom-right" else i + 0 * klen
    if alibi is not None:
        s = s - np.asarray(alibi)[None, :, None, None] * np.abs(ia - j)
    if add_mask is not None:
        s = s + np.broadcast_to(np.asarray(add_mask, np.float64), s.shape)
    keep = np.ones((B, H, Sq, Sk), dtype=bool)
    if causal is not None:
        keep &= j <= ia
    if window is not None:
        left, right = window
        keep &= (j >= ia - left) & (j <= ia + right)
    if key_lengths is not None:
        keep &= j < klen
    if bool_mask is not None:
        keep &= np.broadcast_to(np.asarray(bool_mask, bool), keep.shape)
    s = np.where(keep, s, -np.inf)
    m = s.max(axis=-1, keepdims=True)
    m = np.where(np.isfinite(m), m, 0.0)
    e = np.where(keep, np.exp(s - m), 0.0)
    l = e.sum(axis=-1, keepdims=True)
    w = np.where(l > 0, e / np.where(l > 0, l, 1.0), 0.0)
    out = np.einsum("bhij,bhjd->bhid", w, v)
    with np.errstate(divide="ignore"):
        lse = np.where(l[..., 0] > 0, np.log(np.where(l[..., 0] > 0, l[..., 0], 1.0)) + m[..., 0], -np.inf)
    return out, w, lse


def run(name, args, expect_status=0):
    p = subprocess.run([ATTN, "run"] + args, capture_output=True, text=True)
    if p.returncode != expect_status:
        failures.append("%s: exit %d (expected %d): %s" % (name, p.returncode, expect_status, p.stderr.strip()))
        return False
    return True


def close(name, what, got, want, tol):
    if got.shape != want.shape:
        failures.append("%s: %s shape %s, expected %s" % (name, what, got.shape, want.shape))
        return
    both_inf = np.isneginf(got) & np.isneginf(want)
    if np.any(np.isnan(got)):
        failures.append("%s: %s has NaN" % (name, what))
        return
    g = np.where(both_inf, 0.0, got.astype(np.float64))
    w = np.where(both_inf, 0.0, want)
    err = np.max(np.abs(g - w)) / max(1.0, np.max(np.abs(w))) if w.size else 0.0
    status = "ok  " if err <= tol else "FAIL"
    print("%s %-28s %-7s max err %.3e (tol %.0e)" % (status, name, what, err, tol))
    if err > tol:
        failures.append("%s: %s error %.3e > %.0e" % (name, what, err, tol))


def case(name, dtype, q, k, v, extra=(), rank3=False, big_endian=False, weights=True, lse=True, **ref):
    d = os.path.join(WORK, name)
    os.makedirs(d)
    files = {}
    for nm, arr in (("q", q), ("k", k), ("v", v)):
        a = arr.astype(dtype)
        if rank3:
            a = a[0]
        if big_endian:
            a = a.astype(a.dtype.newbyteorder(">"))
        files[nm] = os.path.join(d, nm + ".npy")
        np.save(files[nm], a)
    out_p, w_p, l_p = (os.path.join(d, f) for f in ("out.npy", "w.npy", "lse.npy"))
    args = ["--q", files["q"], "--k", files["k"], "--v", files["v"], "-o", out_p]
    if weights:
        args += ["--weights", w_p]
    if lse:
        args += ["--lse", l_p]
    args += [str(x) if not isinstance(x, str) else x for x in extra]
    if not run(name, args):
        return
    want_out, want_w, want_lse = reference(q.astype(dtype), k.astype(dtype), v.astype(dtype), **ref)
    if rank3:
        want_out, want_w, want_lse = want_out[0], want_w[0], want_lse[0]
    tol = {np.float32: 2e-5, np.float16: 2.0**-10}.get(dtype, 1e-12)
    out = np.load(out_p)
    if out.dtype != np.dtype(dtype):
        failures.append("%s: out dtype %s, expected %s" % (name, out.dtype, np.dtype(dtype)))
    close(name, "out", out, want_out, tol)
    if dtype == np.float16:  # weights and lse are float32 (the compute type)
        for what, p in (("weights", w_p), ("lse", l_p)):
            if (what == "weights" and weights) or (what == "lse" and lse):
                if np.load(p).dtype != np.float32:
                    failures.append("%s: %s dtype %s, expected float32" % (name, what, np.load(p).dtype))
        tol = 2e-5
    if weights:
        close(name, "weights", np.load(w_p), want_w, tol)
    if lse:
        close(name, "lse", np.load(l_p), want_lse, tol * 10)


rng = np.random.default_rng(2024)


def data(B, H, Hkv, Sq, Sk, D, Dv=None):
    Dv = Dv or D
    return (rng.standard_normal((B, H, Sq, D)), rng.standard_normal((B, Hkv, Sk, D)),
            rng.standard_normal((B, Hkv, Sk, Dv)))


# 1. the example: causal, f32, rank 4, GQA, odd sizes
q, k, v = data(2, 4, 2, 37, 37, 16, 24)
case("causal_f32_gqa", np.float32, q, k, v, extra=["--variant", "causal"], causal="top-left")

# 1b. float16 q, k, v (issue 15): out float16 within 2^-11 of the reference
# on the same float16 inputs (plus the f32 kernel's error), weights/lse float32
case("causal_f16_gqa", np.float16, q, k, v, extra=["--variant", "causal"], causal="top-left")

# 2. f64 cross attention, bottom-right causal + window + ALiBi
q, k, v = data(2, 3, 3, 20, 33, 8)
case("bottom_right_window_alibi", np.float64, q, k, v,
     extra=["--variant", "exact", "--causal", "bottom-right", "--window", 6, "inf",
            "--alibi", "0.5,0.25,0.125"],
     causal="bottom-right", window=(6, np.inf), alibi=[0.5, 0.25, 0.125])

# 2b. key lengths (padding) with top-left and with bottom-right causal (whose
# offset then uses each item's key length)
case("causal_key_lengths", np.float64, q, k, v,
     extra=["--causal", "top-left", "--key-lengths", "30,17"],
     causal="top-left", key_lengths=[30, 17])
case("bottom_right_key_lengths", np.float64, q, k, v,
     extra=["--causal", "bottom-right", "--key-lengths", "30,17", "--alibi", "0.5,0.25,0.125"],
     causal="bottom-right", key_lengths=[30, 17], alibi=[0.5, 0.25, 0.125])

# 3. rank-3 input [H,S,D], softcap and scale, symmetric window
q, k, v = data(1, 2, 2, 40, 40, 32)
case("rank3_softcap_scale_window", np.float64, q, k, v, rank3=True,
     extra=["--variant", "window", "--window", 5, 3, "--softcap", 1.5, "--scale", 0.3],
     window=(5, 3), softcap=1.5, scale=0.3)

# 4. bool mask (rank 2, numpy bool) and float64 additive mask with float32 q
q, k, v = data(1, 2, 2, 16, 24, 8)
bm = rng.random((16, 24)) < 0.7
bm[3, :] = False  # a row with nothing to attend: out 0, lse -inf, weights 0
am = rng.standard_normal((1, 2, 16, 24))
d = os.path.join(WORK, "masks")
os.makedirs(d)
np.save(os.path.join(d, "bool.npy"), bm)
np.save(os.path.join(d, "add.npy"), am)  # float64, converted to q's float32
case("bool_and_additive_masks", np.float32, q, k, v,
     extra=["--bool-mask", os.path.join(d, "bool.npy"), "--additive-mask", os.path.join(d, "add.npy")],
     bool_mask=bm, add_mask=am.astype(np.float32))

# 5. big-endian float64 input is converted on load
q, k, v = data(1, 1, 1, 9, 9, 4)
case("big_endian_input", np.float64, q, k, v, big_endian=True, extra=["--causal"], causal="top-left")

# 6. outputs only (no weights/lse), f32 rank 3
q, k, v = data(1, 3, 1, 5, 7, 8)
case("mqa_rank3_out_only", np.float32, q, k, v, rank3=True, weights=False, lse=False)

# 6b. sparse variants through their options, against the same NumPy softmax
# with the pattern as a dense mask
S = 24
i, j = np.arange(S)[:, None], np.arange(S)[None, :]
g = np.array([0, 13])
keep_lf = (np.abs(i - j) <= 2) | np.isin(i, g) | np.isin(j, g)
q, k, v = data(1, 2, 2, S, S, 8)
case("longformer", np.float64, q, k, v,
     extra=["--variant", "longformer", "--window", 2, 2, "--global", "0,13"], bool_mask=keep_lf)
lay = np.zeros((1, 3, 3), dtype=bool)
lay[0, 0, 0] = lay[0, 1, 1] = lay[0, 2, 2] = lay[0, 2, 0] = lay[0, 1, 2] = True
d = os.path.join(WORK, "layout")
os.makedirs(d)
np.save(os.path.join(d, "layout.npy"), lay)
keep_bs = lay[0][i // 8, j // 8]
q, k, v = data(1, 2, 2, S, S, 8)
case("blocksparse_layout", np.float64, q, k, v,
     extra=["--variant", "blocksparse", "--block", 8, "--layout", os.path.join(d, "layout.npy")],
     bool_mask=keep_bs)

# 7. shape mismatch passes the library's message through, exit 1, no output
d = os.path.join(WORK, "mismatch")
os.makedirs(d)
np.save(os.path.join(d, "q.npy"), rng.standard_normal((1, 2, 8, 4)).astype(np.float32))
np.save(os.path.join(d, "k.npy"), rng.standard_normal((1, 2, 8, 6)).astype(np.float32))
np.save(os.path.join(d, "k64.npy"), rng.standard_normal((1, 2, 8, 4)))
p = subprocess.run([ATTN, "run", "--q", os.path.join(d, "q.npy"), "--k", os.path.join(d, "k.npy"),
                    "--v", os.path.join(d, "k.npy"), "-o", os.path.join(d, "out.npy")],
                   capture_output=True, text=True)
if p.returncode != 1 or "head dim" not in p.stderr or os.path.exists(os.path.join(d, "out.npy")):
    failures.append("mismatch: exit %d, stderr %r" % (p.returncode, p.stderr))
else:
    print("ok   shape mismatch: %s" % p.stderr.strip())
p = subprocess.run([ATTN, "run", "--q", os.path.join(d, "q.npy"), "--k", os.path.join(d, "k64.npy"),
                    "--v", os.path.join(d, "k64.npy"), "-o", os.path.join(d, "out.npy")],
                   capture_output=True, text=True)
if p.returncode != 1 or "dtype" not in p.stderr:
    failures.append("dtype mismatch: exit %d, stderr %r" % (p.returncode, p.stderr))
else:
    print("ok   dtype mismatch: %s" % p.stderr.strip())

# 9. .npz in and out: np.savez (stored) and np.savez_compressed (deflated)
# archives as inputs, masks from an archive, outputs as members of one archive.
for label, saver in (("savez", np.savez), ("savez_compressed", np.savez_compressed)):
    for dtype in (np.float32, np.float64):
        name = "npz %s %s" % (label, np.dtype(dtype).name)
        q, k, v = (rng.standard_normal((2, 4, 9, 8)).astype(dtype) for _ in range(3))
        keep = rng.random((9, 9)) < 0.7
        keep[:, 0] = True
        inp = os.path.join(d, "in_%s_%s.npz" % (label, np.dtype(dtype).name))
        saver(inp, q=q, k=k, v=v, bool_mask=keep)
        res = os.path.join(d, "res_%s_%s.npz" % (label, np.dtype(dtype).name))
        if not run(name, ["--in", inp, "--bool-mask", inp, "--causal", "bottom-right",
                          "-o", res, "--weights", res, "--lse", res + ":logsumexp"]):
            continue
        want_out, want_w, want_lse = reference(q, k, v, causal="bottom-right", bool_mask=keep)
        z = np.load(res)
        if sorted(z.files) != ["logsumexp", "out", "weights"]:
            failures.append("%s: members %s" % (name, sorted(z.files)))
            continue
        tol = 2e-5 if dtype == np.float32 else 1e-12
        if z["out"].dtype != np.dtype(dtype):
            failures.append("%s: out dtype %s" % (name, z["out"].dtype))
        close(name, "out", z["out"], want_out, tol)
        close(name, "weights", z["weights"], want_w, tol)
        close(name, "lse", z["logsumexp"], want_lse, tol * 10)

# 8. Fortran-order array from numpy itself is refused with exit 3
np.save(os.path.join(d, "qf.npy"), np.asfortranarray(rng.standard_normal((1, 2, 8, 4)).astype(np.float32)))
p = subprocess.run([ATTN, "run", "--q", os.path.join(d, "qf.npy"), "--k", os.path.join(d, "q.npy"),
                    "--v", os.path.join(d, "q.npy"), "-o", os.path.join(d, "out.npy")],
                   capture_output=True, text=True)
if p.returncode != 3 or "Fortran" not in p.stderr:
    failures.append("fortran: exit %d, stderr %r" % (p.returncode, p.stderr))
else:
    print("ok   Fortran order: %s" % p.stderr.strip())

# 9. packed batch (--varlen/--varlen-k), --sinks and --mass-group: each
# sequence against the reference on it alone; sinks by the identities
# lse' = logaddexp(lse, sink), out' = out·e^(lse − lse').
d = os.path.join(WORK, "varlen")
os.makedirs(d)
qo, ko = [0, 4, 4, 13], [0, 6, 9, 20]
H, Hkv, D = 4, 2, 8
qp, kp, vp = rng.standard_normal((13, H, D)), rng.standard_normal((20, Hkv, D)), rng.standard_normal((20, Hkv, D))
for nm, arr in (("q", qp), ("k", kp), ("v", vp)):
    np.save(os.path.join(d, nm + ".npy"), arr)
sinks = [0.5, -1.0, 2.0, 0.0]
base = ["--q", os.path.join(d, "q.npy"), "--k", os.path.join(d, "k.npy"), "--v", os.path.join(d, "v.npy"),
        "--varlen", ",".join(map(str, qo)), "--varlen-k", ",".join(map(str, ko)), "--causal", "bottom-right"]
if run("varlen", base + ["-o", os.path.join(d, "o.npy"), "--lse", os.path.join(d, "l.npy"),
                         "--mass-group", os.path.join(d, "m.npy")]) and \
        run("varlen_sinks", base + ["-o", os.path.join(d, "os.npy"), "--lse", os.path.join(d, "ls.npy"),
                                    "--sinks", ",".join(map(str, sinks))]):
    o, l, m = (np.load(os.path.join(d, f)) for f in ("o.npy", "l.npy", "m.npy"))
    o2, l2 = np.load(os.path.join(d, "os.npy")), np.load(os.path.join(d, "ls.npy"))
    want_o, want_l, want_m = np.zeros_like(o), np.zeros_like(l), np.zeros((Hkv, 20))
    for s in range(3):
        qs, ks = slice(qo[s], qo[s + 1]), slice(ko[s], ko[s + 1])
        if qo[s + 1] == qo[s]:
            continue
        ro, rw, rl = reference(qp[qs].transpose(1, 0, 2)[None], kp[ks].transpose(1, 0, 2)[None],
                               vp[ks].transpose(1, 0, 2)[None], causal="bottom-right")
        want_o[qs] = ro[0].transpose(1, 0, 2)
        want_l[:, qs] = rl[0]
        for h in range(H):
            want_m[h // (H // Hkv), ks] += rw[0, h].sum(axis=0)
    close("varlen", "out", o, want_o, 1e-12)
    close("varlen", "lse", l, want_l, 1e-11)
    close("varlen", "mass", m, want_m, 1e-12)
    sk = np.asarray(sinks)[:, None]
    want_l2 = np.logaddexp(l, sk)
    close("varlen_sinks", "lse", l2, want_l2, 1e-11)
    close("varlen_sinks", "out", o2, o * np.exp(np.where(np.isinf(l), 0, l - want_l2)).T[:, :, None], 1e-12)
run("varlen_bad_offsets", base[:6] + ["--varlen", "0,9,4,13", "-o", os.path.join(d, "bad.npy")], expect_status=1)
if os.path.exists(os.path.join(d, "bad.npy")):
    failures.append("varlen_bad_offsets: wrote an output")

# The backward (--dout, --dq, --dk, --dv) against a float64 NumPy backward
# written from the definitions: P = softmax(s), dP = dout·vᵀ,
# dS = P∘(dP − rowsum(dout∘out)), dq = scale·dS·k, dk = scale·dSᵀ·q summed
# over each GQA group, dv = Pᵀ·dout summed likewise.
def reference_backward(q, k, v, dout, **ref):
    out, w, _ = reference(q, k, v, **ref)
    B, H, Sq, D = q.shape
    Hkv = k.shape[1]
    rep = H // Hkv
    kr, vr = np.repeat(k, rep, axis=1), np.repeat(v, rep, axis=1)
    scale = ref.get("scale") or 1.0 / np.sqrt(D)
    dP = np.einsum("bhid,bhjd->bhij", dout, vr)
    dS = w * (dP - (dout * out).sum(axis=-1, keepdims=True))
    dq = scale * np.einsum("bhij,bhjd->bhid", dS, kr)
    dk = scale * np.einsum("bhij,bhid->bhjd", dS, q).reshape(B, Hkv, rep, -1, D).sum(axis=2)
    dv = np.einsum("bhij,bhid->bhjd", w, dout).reshape(B, Hkv, rep, -1, v.shape[3]).sum(axis=2)
    return dq, dk, dv


for name, dtype, causal, klen, tol in (("backward_causal_gqa_f64", np.float64, "top-left", None, 1e-11),
                                       ("backward_br_lengths_f32", np.float32, "bottom-right", [9, 6], 5e-5)):
    d = os.path.join(WORK, name)
    os.makedirs(d)
    q, k, v = data(2, 4, 2, 9, 11, 8, 6)
    dout = rng.standard_normal((2, 4, 9, 6))
    paths = {n: os.path.join(d, n + ".npy") for n in ("q", "k", "v", "do", "o", "dq", "dk", "dv")}
    for n, a in (("q", q), ("k", k), ("v", v), ("do", dout)):
        np.save(paths[n], a.astype(dtype))
    args = ["--variant", "exact", "--causal", causal, "--q", paths["q"], "--k", paths["k"],
            "--v", paths["v"], "-o", paths["o"], "--dout", paths["do"], "--dq", paths["dq"],
            "--dk", paths["dk"], "--dv", paths["dv"]]
    if klen:
        args += ["--key-lengths", ",".join(map(str, klen))]
    if run(name, args):
        want = reference_backward(*(a.astype(dtype).astype(np.float64) for a in (q, k, v, dout)),
                                  causal=causal, key_lengths=klen)
        for what, w in zip(("dq", "dk", "dv"), want):
            got = np.load(paths[what])
            if got.dtype != np.dtype(dtype):
                failures.append("%s: %s dtype %s" % (name, what, got.dtype))
            close(name, what, got, w, tol)
d = os.path.join(WORK, "backward_usage")
os.makedirs(d)
np.save(os.path.join(d, "q.npy"), np.zeros((1, 1, 4, 4), np.float32))
qp = os.path.join(d, "q.npy")
run("backward_dq_without_dout", ["--variant", "exact", "--q", qp, "--k", qp, "--v", qp, "-o",
                                 os.path.join(d, "o.npy"), "--dq", os.path.join(d, "dq.npy")],
    expect_status=2)
np.save(os.path.join(d, "do.npy"), np.zeros((1, 1, 5, 4), np.float32))
run("backward_dout_wrong_shape", ["--variant", "exact", "--q", qp, "--k", qp, "--v", qp, "-o",
                                  os.path.join(d, "o2.npy"), "--dout", os.path.join(d, "do.npy"),
                                  "--dq", os.path.join(d, "dq2.npy")], expect_status=1)
if os.path.exists(os.path.join(d, "dq2.npy")):
    failures.append("backward_dout_wrong_shape: wrote dq")

if failures:
    print("\n".join(["FAILED:"] + failures))
    sys.exit(1)
print("all run checks passed")

#!/usr/bin/python3
"""Run every performance target the issues name through attn-bench, in one
session on one machine, and print each as a ratio with PASS/FAIL.

    bench/targets.py [--bench build/bench/attn-bench] [--threads 2] [--json out.jsonl]

Each line of attn-bench measures its own GEMM peak and read bandwidth, so
fractions are of the same run. Times are medians of --reps (>= 5) after a
warm-up. The machine is shared and noisy: rerun on a quiet machine before
trusting a borderline ratio. Takes a few minutes.
"""
import argparse
import json
import os
import subprocess
import sys

results = []


def bench(args, case, **kw):
    cmd = [args.bench, "--json", "--threads", str(kw.pop("threads", args.threads)),
           "--reps", str(kw.pop("reps", args.reps)), "--case", case]
    for k, v in kw.items():
        if v is True:
            cmd.append("--" + k)
        elif v is not False and v is not None:
            cmd += ["--" + k, str(v)]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        print(f"  ! {' '.join(cmd)} failed: {out.stderr.strip()}", file=sys.stderr)
        return None
    line = json.loads(out.stdout.strip().splitlines()[-1])
    results.append(line)
    return line


def bench_mpi(args, ranks, **kw):
    """One attn-bench-mpi --case ring line, launched with mpirun here (1 thread
    per rank unless threads= says otherwise; --bind-to none so the
    single-process baseline in the same run may use every core)."""
    exe = os.path.join(os.path.dirname(args.bench), "attn-bench-mpi")
    if not os.path.exists(exe):
        print(f"  ! {exe} not found (configure with -DATTN_MPI=ON)", file=sys.stderr)
        return None
    cmd = ["mpirun", "--bind-to", "none", "--oversubscribe", "-np", str(ranks), exe, "--case", "ring",
           "--json", "--threads", str(kw.pop("threads", 1)), "--reps", str(kw.pop("reps", args.reps))]
    for k, v in kw.items():
        if v is True:
            cmd.append("--" + k)
        elif v is not False and v is not None:
            cmd += ["--" + k, str(v)]
    env = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    try:
        out = subprocess.run(["timeout", "--kill-after=10", "1800"] + cmd, capture_output=True,
                             text=True, env=env)
    except FileNotFoundError as e:
        print(f"  ! {e}", file=sys.stderr)
        return None
    if out.returncode != 0 or not out.stdout.strip():
        print(f"  ! {' '.join(cmd)} failed: {out.stderr.strip()[-400:]}", file=sys.stderr)
        return None
    line = json.loads(out.stdout.strip().splitlines()[-1])
    results.append(line)
    return line


def report(issue, what, value, target, ok):
    mark = "PASS" if ok else "FAIL"
    print(f"[{mark}] issue {issue}: {what}: {value} (target {target})", flush=True)
    return ok


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bench", default="build/bench/attn-bench")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--json", help="also write every attn-bench line here")
    ap.add_argument("--only", help="comma-separated issue numbers")
    a = ap.parse_args()
    only = set(a.only.split(",")) if a.only else None
    want = lambda n: only is None or str(n) in only  # noqa: E731
    oks = []
    probe = bench(a, "sdpa", S=16, D=64, H=1, reps=5)
    if probe is not None:
        results.pop()
        core = probe.get("blas_core", "?")
        print(f"[info] OpenBLAS kernels: {core} (OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE', 'unset')}), "
              f"sgemm {probe['sgemm_gflops']:.0f} GFLOPS, f32 FMA peak {probe['fma_gflops']:.0f}", flush=True)
        if core.lower() in ("prescott", "core2", "katmai", "coppermine", "northwood", "banias", "atom", "dunnington"):
            print(f"[warn] OpenBLAS runs its generic SSE kernels ({core}): it does not know this CPU. Ratios "
                  "against sgemm_gflops mean little; set OPENBLAS_CORETYPE (e.g. Haswell or SkylakeX) "
                  "to compare with other runs.", flush=True)

    if want(3):
        r = bench(a, "sdpa", S=4096, D=64, H=8)
        oks.append(report(3, "sdpa S=4096 d=64 H=8 frac_sgemm", f"{r['frac_sgemm']:.3f}", ">= 0.70", r["frac_sgemm"] >= 0.70))
        r2 = bench(a, "sdpa", S=2048, D=128, H=4)
        oks.append(report(3, "sdpa S=2048 d=128 H=4 frac_sgemm", f"{r2['frac_sgemm']:.3f}", ">= 0.75", r2["frac_sgemm"] >= 0.75))
        r3 = bench(a, "sdpa", S=512, D=64, H=8, reps=max(a.reps, 51))
        oks.append(report(3, "sdpa S=512 d=64 H=8 frac_sgemm", f"{r3['frac_sgemm']:.3f}", ">= 0.50", r3["frac_sgemm"] >= 0.50))
        rc = bench(a, "sdpa", S=4096, D=64, H=8, causal=True)
        ratio = rc["gflops"] / r["gflops"]
        oks.append(report(3, "causal/non-causal dense-equivalent GFLOPS at S=4096", f"{ratio:.2f}x", ">= 1.8x", ratio >= 1.8))
        r1 = bench(a, "sdpa", S=4096, D=64, H=8, threads=1)
        sp = r1["ms"] / r["ms"]
        oks.append(report(3, "2 threads vs 1 thread at S=4096", f"{sp:.2f}x", ">= 1.85x", sp >= 1.85))
        rr = bench(a, "sdpa", S=65536, D=64, H=1, causal=True, reps=5)
        extra = rr["peak_rss_mb"] - rr["io_mb"]
        oks.append(report(3, "causal S=65536 H=1 peak RSS above inputs+outputs", f"{extra:.1f} MiB", "<= 64 MiB", extra <= 64))

    if want(4):
        r = bench(a, "masked", S=4096, D=64, H=8)
        v = r["speed_vs_unmasked"]
        oks.append(report(4, "masked (padding + ALiBi) speed vs unmasked, S=4096", f"{v:.3f}", ">= 0.90", v >= 0.90))
        r = bench(a, "additive", S=1024, D=64, H=8)
        print(f"[info] issue 4: additive score throughput at S=1024: {r['gtanh_per_s']:.3g} G tanh terms/s, {r['ms']:.1f} ms")

    if want(6):
        # Both timed in one process by compare_torch_mha.py, same weights and input.
        lib = a.bench.replace("bench/attn-bench", "libattn.so")
        out = subprocess.run(["/usr/bin/python3", "bench/compare_torch_mha.py", "--lib", lib, "--json",
                              "--threads", str(a.threads), "--reps", str(a.reps)],
                             capture_output=True, text=True, timeout=900)
        if out.returncode == 0 and out.stdout.strip():
            m = json.loads(out.stdout.strip().splitlines()[-1])
            results.append(m)
            oks.append(report(6, f"mha E=512 H=8 S=2048 B=1: torch {m['torch_ms']:.1f} ms / libattn {m['attn_ms']:.1f} ms",
                              f"{m['speedup']:.2f}x", ">= 2x", m["speedup"] >= 2.0))
        else:
            print(f"[skip] issue 6: torch comparison not run: {out.stderr.strip()[-200:]}")

    if want(7):
        for L in (4096, 32768):
            for H, Hkv in ((8, 8), (32, 8)):
                r = bench(a, "decode", Sk=L, D=128, H=H, Hkv=Hkv)
                line = f"decode L={L} H={H}/{Hkv} d=128: {r['gbps']:.1f} GB/s of {r['read_gbps']:.1f}, {r['ms']:.2f} ms"
                if L == 32768:
                    oks.append(report(7, line + " frac_bw", f"{r['frac_bw']:.3f}", ">= 0.85", r["frac_bw"] >= 0.85))
                else:
                    print(f"[info] issue 7: {line}, frac_bw {r['frac_bw']:.3f} (partly cache-resident)")

    if want(17):
        # Decode from f16 / int8 / int4 KV caches vs the f32 cache, L=32768 d=128,
        # H=8 and GQA 32/8. Each reduced-storage line also times the f32 cache on
        # the same data in the same process (speedup_vs_f32); gbps counts the
        # bytes the step really reads (scales included), kv_bytes the cache.
        want_speed = {"f16": 1.8, "int8": 3.0, "int4": 5.0}
        want_mem = {"int8": 0.27, "int4": 0.15}
        for H, Hkv in ((8, 8), (32, 8)):
            base = bench(a, "decode", Sk=32768, D=128, H=H, Hkv=Hkv, **{"kv-storage": "f32"})
            if base is None:
                continue
            for st in ("bf16", "f16", "int8", "int4"):
                r = bench(a, "decode", Sk=32768, D=128, H=H, Hkv=Hkv, **{"kv-storage": st})
                if r is None:
                    continue
                line = (f"decode {st} KV L=32768 H={H}/{Hkv} d=128: {r['ms']:.2f} ms, "
                        f"{r['gbps']:.1f} GB/s of {r['read_gbps']:.1f}, max_err {r['max_err']:.2e}, "
                        f"mean_err {r['mean_err']:.2e}")
                if st not in want_speed:
                    print(f"[info] issue 17: {line}, speed-up vs f32 {r['speedup_vs_f32']:.2f}x")
                    continue
                sp = r["speedup_vs_f32"]
                oks.append(report(17, line + " speed-up vs f32 KV", f"{sp:.2f}x", f">= {want_speed[st]}x", sp >= want_speed[st]))
                oks.append(report(17, f"decode {st} KV H={H}/{Hkv} frac_bw (own bytes)", f"{r['frac_bw']:.3f}", ">= 0.80", r["frac_bw"] >= 0.80))
                if st in want_mem and H == 8:
                    m = r["kv_bytes"] / base["kv_bytes"]
                    oks.append(report(17, f"{st} KV cache bytes / f32 cache bytes (scales included)", f"{m:.4f}", f"<= {want_mem[st]}", m <= want_mem[st]))
                if st == "int8" and H == 8:
                    oks.append(report(17, "int8 KV decode L=32768 H=8 d=128 vs llama.cpp f16 decode (4.24 ms)", f"{r['ms']:.2f} ms", "< 4.24 ms", r["ms"] < 4.24))

    if want(8):
        for case in ("window", "longformer", "bigbird", "blocksparse", "swin"):
            t = {}
            for S in (4096, 16384, 65536):
                r = bench(a, case, S=S, D=64, H=8, window=256, reps=5)
                if r is None:
                    break
                t[S] = r
            if len(t) < 3:
                continue
            g = t[65536]["ms"] / t[16384]["ms"]
            oks.append(report(8, f"{case} t(65536)/t(16384)", f"{g:.2f}", "<= 4.5", g <= 4.5))
            if case in ("window", "longformer"):
                sp = t[16384].get("speedup_vs_exact")
                if sp is not None:
                    oks.append(report(8, f"{case} w=256 speed-up vs exact at S=16384", f"{sp:.1f}x", ">= 10x", sp >= 10))
            print(f"[info] issue 8: {case} peak RSS {t[65536]['peak_rss_mb']:.0f} MB at S=65536")

    if want(9):
        for case in ("linear_elu", "performer", "linformer"):
            t = {}
            for S in (1024, 2048, 4096, 8192, 16384, 32768, 65536):
                r = bench(a, case, S=S, D=64, H=8, features=256, rank=256, reps=5)
                if r is None:
                    break
                t[S] = r
                print(f"[info] issue 9: {case} S={S}: {r['ms']:.1f} ms, max_err {r['max_err']}, "
                      f"mean_err {r['mean_err']}, speed-up vs exact {r.get('speedup_vs_exact')}")
            if 65536 in t and 8192 in t:
                g = t[65536]["ms"] / t[8192]["ms"]
                oks.append(report(9, f"{case} t(65536)/t(8192)", f"{g:.2f}", "<= 9", g <= 9))
            if case != "linear_elu" and 2048 in t and t[2048].get("speedup_vs_exact") is not None:
                sp = t[2048]["speedup_vs_exact"]
                oks.append(report(9, f"{case} (m=k=256) faster than exact at S=2048", f"{sp:.2f}x", "> 1x", sp > 1))

    if want(15):
        # Compute peaks measured in the same run: fma_gflops (f32 vfmadd231ps on
        # zmm) and bf16_gflops (vdpbf16ps), on the bench's thread count.
        f = bench(a, "sdpa", S=4096, D=64, H=8)
        b = bench(a, "sdpa", S=4096, D=64, H=8, dtype="bf16")
        if f is not None and b is not None:
            oks.append(report(15, "bf16 sdpa S=4096 d=64 H=8 frac_peak (of bf16_gflops)",
                              f"{b['frac_peak']:.3f}", ">= 0.50", b["frac_peak"] >= 0.50))
            sp = b["gflops"] / f["gflops"]
            oks.append(report(15, "bf16 / f32 GFLOPS, S=4096 d=64 H=8", f"{sp:.2f}x", ">= 1.6x", sp >= 1.6))
            oks.append(report(15, "f32 sdpa S=4096 d=64 H=8 frac_peak (of fma_gflops)",
                              f"{f['frac_peak']:.3f}", ">= 0.50", f["frac_peak"] >= 0.50))
        else:
            oks.append(report(15, "sdpa S=4096 d=64 H=8 f32/bf16", "failed", "runs", False))
        f2 = bench(a, "sdpa", S=2048, D=128, H=4)
        b2 = bench(a, "sdpa", S=2048, D=128, H=4, dtype="bf16")
        if f2 is not None and b2 is not None:
            oks.append(report(15, "bf16 sdpa S=2048 d=128 H=4 frac_peak (of bf16_gflops)",
                              f"{b2['frac_peak']:.3f}", ">= 0.50", b2["frac_peak"] >= 0.50))
            sp = b2["gflops"] / f2["gflops"]
            oks.append(report(15, "bf16 / f32 GFLOPS, S=2048 d=128 H=4", f"{sp:.2f}x", ">= 1.6x", sp >= 1.6))
        else:
            oks.append(report(15, "sdpa S=2048 d=128 H=4 f32/bf16", "failed", "runs", False))
        bc = bench(a, "sdpa", S=4096, D=64, H=8, dtype="bf16", causal=True)
        if bc is not None and b is not None:
            ratio = bc["gflops"] / b["gflops"]
            oks.append(report(15, "bf16 causal/non-causal dense-equivalent GFLOPS at S=4096",
                              f"{ratio:.2f}x", ">= 1.8x", ratio >= 1.8))
        r = bench(a, "decode", Sk=32768, D=128, H=8, Hkv=8)
        if r is not None:
            oks.append(report(15, "decode L=32768 H=8 d=128 (f32 cache) frac_bw", f"{r['frac_bw']:.3f}",
                              ">= 0.85", r["frac_bw"] >= 0.85))
        f16 = bench(a, "sdpa", S=4096, D=64, H=8, dtype="f16")
        if f16 is not None:
            print(f"[info] issue 15: f16 sdpa S=4096 d=64 H=8: {f16['gflops']:.1f} GFLOPS, "
                  f"frac_peak {f16['frac_peak']:.3f} (f16 computes in f32)")

    if want(16):
        # Control-loop latency: one plan, 1000 calls with 2 ms of busy work
        # between them (B=1, H=8, d=64, f32). ggml flash_attn_ext (f32, 2
        # threads) measured here: 0.10 / 0.37 / 1.24 / 4.7 ms at S=64..512.
        ggml = {64: 0.10, 128: 0.37, 256: 1.24, 512: 4.7}
        for S, g in ggml.items():
            r = bench(a, "sdpa", S=S, D=64, H=8, loop=1000, **{"gap-ms": 2})
            if r is None:
                continue
            oks.append(report(16, f"sdpa S={S} p50 with 2 ms gaps vs 0.75x ggml ({0.75 * g:.3f} ms)",
                              f"{r['p50_ms']:.3f} ms", f"<= {0.75 * g:.3f} ms", r["p50_ms"] <= 0.75 * g))
            tail = r["p99_ms"] / r["p50_ms"]
            oks.append(report(16, f"sdpa S={S} p99/p50 (machine's own sgemm loop: {r['sgemm_p99_over_p50']:.2f})",
                              f"{tail:.2f}", "<= 1.25", tail <= 1.25))
            first = r["first_ms"] / r["p50_ms"]
            oks.append(report(16, f"sdpa S={S} first call / p50", f"{first:.2f}", "<= 1.5", first <= 1.5))
            print(f"[info] issue 16: sdpa S={S}: first {r['first_ms']:.3f} p50 {r['p50_ms']:.3f} p90 {r['p90_ms']:.3f} "
                  f"p99 {r['p99_ms']:.3f} max {r['max_ms']:.3f} ms")
        r = bench(a, "sdpa", S=16, D=64, H=8, loop=1000, **{"gap-ms": 2})
        if r is not None:
            oks.append(report(16, "sdpa S=16 p50 with 2 ms gaps", f"{1000 * r['p50_ms']:.1f} us", "<= 10 us",
                              r["p50_ms"] <= 0.010))
        for L in (512, 1024, 2048, 4096):
            r = bench(a, "decode", Sk=L, D=128, H=32, Hkv=8, loop=1000, **{"gap-ms": 2})
            if r is not None:
                print(f"[info] issue 16: decode L={L} H=32/8 d=128, 2 ms gaps: first {r['first_ms']:.3f} "
                      f"p50 {r['p50_ms']:.3f} p99 {r['p99_ms']:.3f} max {r['max_ms']:.3f} ms")

    if want(19):
        # Paged KV cache: 16 sequences (lengths log-spread over 512..32768),
        # H 32/8, d 128, block 64, f32; contiguous per-sequence caches timed
        # in the same process.
        r = bench(a, "paged_decode", seqs=16, block=64, Sk=32768, H=32, Hkv=8, D=128)
        if r is not None:
            oks.append(report(19, f"paged_decode 16 seqs 512..32768 H=32/8 d=128 block 64: {r['gbps']:.1f} GB/s "
                              f"of {r['read_gbps']:.1f}, {r['ms']:.2f} ms; frac_bw", f"{r['frac_bw']:.3f}", ">= 0.85",
                              r["frac_bw"] >= 0.85))
            sp = r["contig_ms"] / r["ms"]
            oks.append(report(19, f"paged_decode speed vs contiguous caches ({r['contig_ms']:.2f} ms / {r['ms']:.2f} ms)",
                              f"{sp:.3f}x", ">= 0.95x", sp >= 0.95))
            fm = r["fork_mem_ratio"]
            oks.append(report(19, f"16 sequences forked from one 8192-token prompt: {r['forked_bytes'] / 2**20:.1f} MiB "
                              f"vs {r['one_seq_bytes'] / 2**20:.1f} MiB for one", f"{fm:.3f}x", "<= 1.1x", fm <= 1.1))
        r = bench(a, "paged_prefill", Sq=2048, Sk=8192, block=64, H=32, Hkv=8, D=128, reps=5)
        if r is not None:
            g = r["gflops"] / r["contig_gflops"]
            oks.append(report(19, f"chunked prefill 2048 onto an 8192-token paged prefix, H=32/8 d=128 block 64: "
                              f"{r['gflops']:.1f} vs {r['contig_gflops']:.1f} GFLOPS contiguous", f"{g:.3f}x", ">= 0.9x",
                              g >= 0.9))

    if want(5):
        r = bench(a, "subnormal", S=1024, D=64, H=8)
        if r is not None:
            key = [k for k in r if "ratio" in k or "slowdown" in k]
            if key:
                v = r[key[0]]
                oks.append(report(5, "subnormal inputs time / normal inputs time", f"{v:.2f}", "<= 2", v <= 2))

    if want(18):
        # Backward pass (attn/backward.h): ratios within one attn-bench run.
        bw = {}
        for causal in (False, True):
            r = bench(a, "sdpa_bwd", S=4096, D=64, H=8, causal=causal)
            if r is None:
                continue
            bw[causal] = r
            name = "causal" if causal else "non-causal"
            ratio = r["ms"] / r["fwd_ms"]
            oks.append(report(18, f"sdpa_bwd S=4096 d=64 H=8 {name}: bwd {r['ms']:.1f} ms / fwd "
                              f"{r['fwd_ms']:.1f} ms", f"{ratio:.2f}x", "<= 2.5x", ratio <= 2.5))
        if len(bw) == 2:
            sp = bw[False]["ms"] / bw[True]["ms"]
            oks.append(report(18, "sdpa_bwd S=4096 causal backward speed-up over non-causal",
                              f"{sp:.2f}x", ">= 1.8x", sp >= 1.8))
        # fwd+bwd against PyTorch 1.13 autograd through naive attention (S x S matrices).
        out = subprocess.run(["/usr/bin/python3", "bench/compare_torch_bwd.py", "--what", "sdpa",
                              "--S", "4096", "--H", "8", "--D", "64", "--json",
                              "--attn-bench", a.bench, "--threads", str(a.threads),
                              "--reps", str(a.reps)], capture_output=True, text=True, timeout=1800)
        if out.returncode == 0 and out.stdout.strip():
            m = json.loads(out.stdout.strip().splitlines()[-1])
            oks.append(report(18, f"fwd+bwd S=4096 d=64 H=8: torch autograd {m['torch_ms']:.0f} ms / "
                              f"libattn {m['attn_ms']:.0f} ms", f"{m['speedup']:.2f}x", ">= 3x",
                              m["speedup"] >= 3.0))
        else:
            print(f"[skip] issue 18: torch sdpa comparison not run: {out.stderr.strip()[-200:]}")
        # Memory: S=65536, H=1, causal; inputs = q, k, v, out, dout, dq, dk, dv (+ lse).
        r = bench(a, "sdpa_bwd", S=65536, D=64, H=1, causal=True, reps=5)
        if r is not None:
            io = (8 * 65536 * 64 + 65536) * 4 / 1048576.0
            extra = r["peak_rss_mb"] - io
            oks.append(report(18, f"sdpa_bwd S=65536 H=1 causal peak RSS above inputs+gradients "
                              f"({io:.0f} MiB)", f"{extra:.1f} MiB", "<= 64 MiB", extra <= 64))
        # MHA layer E=512 H=8 S=2048 fwd+bwd: attn-bench mha_bwd (fwd_ms + ms) against
        # nn.MultiheadAttention (compare_torch_bwd.py; attn.torch's module as info).
        lib = a.bench.replace("bench/attn-bench", "libattn.so")
        out = subprocess.run(["/usr/bin/python3", "bench/compare_torch_bwd.py", "--what", "mha",
                              "--S", "2048", "--H", "8", "--D", "64", "--json", "--lib", lib,
                              "--attn-bench", a.bench,
                              "--threads", str(a.threads), "--reps", str(a.reps)],
                             capture_output=True, text=True, timeout=1800)
        if out.returncode == 0 and out.stdout.strip():
            m = json.loads(out.stdout.strip().splitlines()[-1])
            oks.append(report(18, f"mha E=512 H=8 S=2048 fwd+bwd: torch {m['torch_ms']:.0f} ms / "
                              f"libattn mha_bwd {m['attn_ms']:.0f} ms", f"{m['speedup']:.2f}x",
                              ">= 2x", m["speedup"] >= 2.0))
            print(f"[info] issue 18: attn.torch.MultiheadAttention fwd+bwd {m['attn_torch_ms']:.0f} ms "
                  f"({m['torch_ms'] / m['attn_torch_ms']:.2f}x nn.MultiheadAttention)")
        else:
            print(f"[skip] issue 18: torch mha comparison not run: {out.stderr.strip()[-200:]}")

    if want(21):
        # Ring attention over MPI: attn-bench-mpi under mpirun, 2 ranks x 1 thread
        # against the single-process kernel at 2 threads, both in that one run.
        r = bench_mpi(a, 2, S=16384, D=64, H=8, threads=1)
        if r is None:
            print("[skip] issue 21: attn-bench-mpi not built or mpirun failed (see above)")
        else:
            oks.append(report(21, f"ring np=2 x 1 thread vs one process x 2 threads, S=16384 d=64 H=8: "
                                  f"{r['gflops']:.1f} / {r['single_gflops']:.1f} GFLOP/s",
                              f"{r['ratio']:.3f}", ">= 0.85", r["ratio"] >= 0.85))
            print(f"[info] issue 21: overlap (time waiting on the ring / total) {r['overlap']:.4f}, "
                  f"{r['steps']:.0f} steps, {r['bytes_sent_mb']:.1f} MiB sent per rank, max_err {r['max_err']:.2e}")

    if want(20):
        # Packed batch of 8 sequences (64..2048 tokens) vs the same batch padded
        # to 8 x 2048, both timed in one process by the varlen case.
        r = bench(a, "varlen", D=64, H=8)
        if r is not None:
            v = r["gflops"] / r["padded_gflops"]
            oks.append(report(20, f"varlen useful GFLOPS {r['gflops']:.1f} / padded dense GFLOPS {r['padded_gflops']:.1f}",
                              f"{v:.3f}", ">= 0.95", v >= 0.95))
        # Per-key mass and sinks: each case times the call with and without
        # the option alternately in one process (mass_ratio, sinks_ratio).
        r = bench(a, "sdpa", S=4096, D=64, H=8, mass=True)
        if r is not None:
            oks.append(report(20, "sdpa S=4096 d=64 H=8 time with --mass / without", f"{r['mass_ratio']:.3f}",
                              "<= 1.15", r["mass_ratio"] <= 1.15))
        r = bench(a, "decode", Sk=32768, D=128, H=8, Hkv=8, mass=True)
        if r is not None:
            oks.append(report(20, "decode L=32768 d=128 H=8 time with --mass / without", f"{r['mass_ratio']:.3f}",
                              "<= 1.15", r["mass_ratio"] <= 1.15))
        else:
            oks.append(report(20, "decode L=32768 --mass", "not run", "<= 1.15", False))
        r = bench(a, "sdpa", S=4096, D=64, H=8, sinks=True)
        if r is not None:
            oks.append(report(20, "sdpa S=4096 d=64 H=8 time with --sinks / without", f"{r['sinks_ratio']:.3f}",
                              "<= 1.03", r["sinks_ratio"] <= 1.03))

    if a.json:
        with open(a.json, "w") as f:
            for line in results:
                f.write(json.dumps(line) + "\n")
    print(f"\n{sum(oks)} of {len(oks)} targets met")
    return 0 if all(oks) else 1


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/python3
"""Measure ring attention at np 1..4 with attn-bench-mpi, compare with the
scale-out model of docs/scale-out.md, and draw the plot.

    bench/scale_out.py                 # measure, write docs/scale-out/*.dat, plot, fill the doc
    bench/scale_out.py --model-only    # no measurement: the model lines only (rate from --rate)

Writes docs/scale-out/measured.jsonl (every attn-bench-mpi line),
docs/scale-out/model.dat and measured.dat (gnuplot input),
docs/scale-out/scale-out.png (gnuplot docs/scale-out/scale-out.gp), and
replaces the block between the "measured:begin" and "measured:end" markers
of docs/scale-out.md with the table of measured points and the derived
crossover sizes. Takes about 10 minutes on 2 cores; run it on a quiet machine.
"""
import argparse
import json
import os
import subprocess
import sys

ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
OUT = os.path.join(ROOT, "docs", "scale-out")
DOC = os.path.join(ROOT, "docs", "scale-out.md")
H, HKV, D, ELEM = 8, 8, 64, 4  # the benchmark shape: f32, MHA, d = 64, B = 1
LINKS = {"25 Gb/s": 25e9 / 8, "100 Gb/s": 100e9 / 8}


def run(exe, np_, S, threads, reps, causal=False):
    cmd = ["mpirun", "--bind-to", "none", "--oversubscribe", "-np", str(np_), exe, "--case", "ring",
           "--json", "--S", str(S), "--D", str(D), "--H", str(H), "--threads", str(threads),
           "--reps", str(reps)] + (["--causal"] if causal else [])
    env = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    out = subprocess.run(["timeout", "--kill-after=10", "3600"] + cmd, capture_output=True, text=True, env=env)
    if out.returncode != 0:
        sys.exit("scale_out.py: %s failed:\n%s" % (" ".join(cmd), out.stderr[-2000:]))
    line = json.loads(out.stdout.strip().splitlines()[-1])
    print("  np=%d S=%d%s: %.1f ms, ratio %.3f, overlap %.4f" % (np_, S, " causal" if causal else "",
                                                                  line["ms"], line["ratio"], line["overlap"]),
          flush=True)
    return line


def t_compute(n, rate, causal=False):
    """Seconds per ring step: 4·B·H·n²·d dense FLOPs at `rate` FLOP/s (half for causal, zig-zag)."""
    return 4.0 * H * n * n * D / rate * (0.5 if causal else 1.0)


def t_comm(n, bw):
    """Seconds to pass one K/V block of n tokens: 2·B·H_kv·n·d·e bytes at bw bytes/s."""
    return 2.0 * HKV * n * D * ELEM / bw


def crossover(rate, bw, causal=False):
    """Tokens per rank above which the link hides behind compute: n* = (H_kv/H)·e·R/(2W), ×2 causal."""
    return HKV / H * ELEM * rate / (2 * bw) * (2 if causal else 1)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bench-dir", default=os.path.join(ROOT, "build", "bench"))
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--S", default="8192,16384", help="total sequence lengths to measure")
    ap.add_argument("--model-only", action="store_true", help="no measurement (plot the model only)")
    ap.add_argument("--rate", type=float, default=40.0,
                    help="per-rank kernel GFLOP/s for --model-only (measured otherwise)")
    a = ap.parse_args()
    os.makedirs(OUT, exist_ok=True)
    exe = os.path.join(a.bench_dir, "attn-bench-mpi")
    cores = os.cpu_count() or 1
    lines = []
    rate = a.rate * 1e9
    if not a.model_only:
        if not os.path.exists(exe):
            sys.exit("scale_out.py: %s not found (configure with -DATTN_MPI=ON and build)" % exe)
        print("per-rank kernel rate (one process, 1 thread):", flush=True)
        base = run(exe, 1, 8192, 1, a.reps)
        lines.append(base)
        rate = base["single_gflops"] * 1e9
        print("ring, 1 thread per rank:", flush=True)
        for S in (int(x) for x in a.S.split(",")):
            for np_ in (2, 3, 4):
                lines.append(run(exe, np_, S, 1, a.reps))
            lines.append(run(exe, 2, S, 1, a.reps, causal=True))
        with open(os.path.join(OUT, "measured.jsonl"), "w") as f:
            for line in lines:
                f.write(json.dumps(line) + "\n")
    # Model lines over tokens per rank.
    with open(os.path.join(OUT, "model.dat"), "w") as f:
        f.write("# n  t_compute_ms  t_compute_causal_ms  t_comm_25G_ms  t_comm_100G_ms  t_compute_32R_ms"
                "  (R = %.1f GFLOP/s per rank)\n" % (rate / 1e9))
        n = 16
        while n <= 1 << 20:
            f.write("%d %.6g %.6g %.6g %.6g %.6g\n" % (n, t_compute(n, rate) * 1e3, t_compute(n, rate, True) * 1e3,
                                                    t_comm(n, LINKS["25 Gb/s"]) * 1e3,
                                                    t_comm(n, LINKS["100 Gb/s"]) * 1e3,
                                                    t_compute(n, 32 * rate) * 1e3))
            n *= 2
    # Measured points: per-step time, and the model's prediction at the
    # per-rank rate this machine gives np ranks (np > cores share cores).
    rows = []
    with open(os.path.join(OUT, "measured.dat"), "w") as f:
        f.write("# np  n  causal  step_ms_measured  step_ms_model  wait_ms_per_step  ratio  overlap\n")
        for L in lines:
            if L["ranks"] < 2:
                continue
            n = L["S"] // L["ranks"]
            eff = rate * min(1.0, cores / L["ranks"])
            model = t_compute(n, eff, L["causal"]) * 1e3
            step = L["ms"] / L["steps"]
            wait = L["wait_ms"] / L["steps"]
            rows.append((L, n, step, model, wait))
            f.write("%d %d %d %.6g %.6g %.6g %.6g %.6g\n" % (L["ranks"], n, int(L["causal"]), step, model, wait,
                                                           L["ratio"], L["overlap"]))
    subprocess.run(["gnuplot", os.path.join(OUT, "scale-out.gp")], cwd=OUT, check=True)
    print("wrote", os.path.join(OUT, "scale-out.png"))
    # The doc's measured block.
    if a.model_only:
        return 0
    out = ["Measured with `bench/scale_out.py` (attn-bench-mpi, f32, B=1, H=8, d=64, 1 thread per rank, "
           "%d cores; np > cores share them). Per-rank kernel rate R = **%.1f GFLOP/s** (one process, "
           "1 thread, S=8192)." % (cores, rate / 1e9), "",
           "| np | S | n = S/np | causal | ms | steps | ms/step measured | ms/step model | wait/step ms |"
           " overlap | ratio vs 1 process |",
           "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for L, n, step, model, wait in rows:
        out.append("| %d | %d | %d | %s | %.1f | %d | %.1f | %.1f | %.3f | %.4f | %.3f |"
                   % (L["ranks"], L["S"], n, "yes" if L["causal"] else "no", L["ms"], L["steps"], step, model,
                      wait, L["overlap"], L["ratio"]))
    out += ["", "Crossover n* (tokens per rank above which passing K/V hides behind compute), at this "
            "machine's R and at a 32-core node (R×32):", "",
            "| link | n* (R) | n* causal (R) | n* (32·R) | n* causal (32·R) |", "| --- | --- | --- | --- | --- |"]
    for name, bw in LINKS.items():
        out.append("| %s | %.0f | %.0f | %.0f | %.0f |" % (name, crossover(rate, bw), crossover(rate, bw, True),
                                                          crossover(32 * rate, bw), crossover(32 * rate, bw, True)))
    text = open(DOC).read()
    b, e = "<!-- measured:begin -->", "<!-- measured:end -->"
    i, j = text.index(b) + len(b), text.index(e)
    open(DOC, "w").write(text[:i] + "\n" + "\n".join(out) + "\n" + text[j:])
    print("filled", DOC)
    return 0


if __name__ == "__main__":
    sys.exit(main())

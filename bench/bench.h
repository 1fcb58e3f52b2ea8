/* attn-bench: shared types. Each case lives in its own bench/case_*.c and is
 * listed once in bench/cases.c. Contract: bench/README.md ("The benchmark
 * contract"): case names, flags and JSON fields are fixed there. */
#ifndef ATTN_BENCH_H
#define ATTN_BENCH_H

#include <stdbool.h>
#include <stdint.h>

#include "attn/attn.h"

typedef struct bench_opts {
  int64_t B, H, Hkv, Sq, Sk, D; /* D = head dim (d_k = d_v) */
  bool causal;
  attn_dtype dtype;
  int32_t threads;
  int32_t reps;           /* timed repeats (median reported), ≥ 5 */
  int64_t window;         /* --window: 1-D window / Longformer w / Swin M */
  int64_t features;       /* --features: Performer m */
  int64_t rank;           /* --rank: Linformer k */
  int64_t block;          /* --block: BigBird / block-sparse block size */
  int32_t kv_storage;     /* --kv-storage (decode, paged_*): an attn_kvcache_storage, native = f32 */
  int32_t loop;           /* --loop N: latency mode (sdpa, decode): N calls ... */
  double gap_ms;          /* --gap-ms G: ... with G ms of busy work between calls */
  int32_t spin_us;        /* --spin-us: the context's spin policy (0 adaptive) */
  int64_t seqs;           /* --seqs N: sequences of the paged cases (default 16) */
  bool mass;              /* --mass (sdpa, decode): the per-key mass output too */
  bool sinks;             /* --sinks (sdpa): per-head sink logits */
} bench_opts;

typedef struct bench_result {
  double ms;              /* median wall time of one execute */
  double flops;           /* dense-equivalent FLOPs (4·B·H·Sq·Sk·D), 0 if n/a */
  double bytes;           /* bytes that must be read (memory-bound cases), 0 if n/a */
  bool has_err;           /* approximations: error vs exact on the same inputs */
  double max_err, mean_err;
  double extra;           /* case-specific number (e.g. speed-up), printed if extra_name */
  const char *extra_name;
  const char *kv_storage; /* decode: the cache storage, printed with kv_bytes if set */
  double kv_bytes;        /* decode: bytes the cache's contents take (scales included) */
  /* More case-specific numbers, printed as JSON fields (names fixed by the
   * contract), e.g. the paged cases' contig_ms. */
  int32_t nfields;
  const char *field_names[8];
  double field_values[8];
  /* Latency mode (--loop): the first call after the plan, then percentiles
   * of the N calls with gaps; ms is then p50. */
  bool has_latency;
  double first_ms, p50_ms, p90_ms, p99_ms, max_ms;
  double sgemm_tail;      /* p99/p50 of a plain single-thread sgemm loop with the same gaps */
  /* --mass / --sinks: time with the option over the time without it, same process. */
  double ratio;
  const char *ratio_name; /* "mass_ratio" or "sinks_ratio" (printed if set) */
} bench_result;

/* Registry (bench/cases.c): pointers to each case_*.c's bench_case. */

/* A case fills r; returns 0, or non-zero with a message on stderr. */
typedef int (*bench_case_fn)(attn_context *ctx, const bench_opts *o, bench_result *r);

typedef struct bench_case {
  const char *name;
  bench_case_fn run;
  const char *what;
} bench_case;

/* ---- helpers from bench.c for the cases ---------------------------------- */

/* Median milliseconds of reps calls of fn(arg) after a warm-up that lasts
 * until the times are steady (three calls within 5%, or 1 s; see bench.c);
 * the warm-up's call count is reported as warmup_calls. */
double bench_time_ms(int (*fn)(void *arg), void *arg, int32_t reps);

/* For cases with a latency mode (sdpa, decode), called right after the plan
 * is made: with --loop, the first call and N calls separated by --gap-ms of
 * busy work (percentiles into r, p50 returned); otherwise bench_time_ms. */
double bench_time_case(int (*fn)(void *arg), void *arg, const bench_opts *o, bench_result *r);

/* Owned contiguous tensor [d0,d1,d2,d3] filled uniform in [-1, 1) from seed. */
attn_tensor *bench_tensor(attn_context *ctx, attn_dtype dt, int64_t d0, int64_t d1, int64_t d2,
                          int64_t d3, uint64_t seed);

/* "f32", "f64", "bf16", "f16" (the JSON `dtype`). */
const char *bench_dtype_name(attn_dtype dt);
/* A KV cache storage's name as --kv-storage spells it (native: the dtype's). */
const char *bench_storage_name(attn_kvcache_storage s, attn_dtype dt);
/* The bits of x (exact in the format: a multiple of 2^-7 in [-1, 1)). */
uint16_t bench_half_bits(attn_dtype dt, double x);

/* Time an already created plan (median of o->reps executes). */
double bench_time_plan(attn_plan *plan, const attn_tensor *q, const attn_tensor *k,
                       const attn_tensor *v, attn_tensor *out, int32_t reps);

/* Relative error of `got` against exact attention `want` (same shape, dtype):
 * max_err = max|got−want| / max|want|, mean_err = mean|got−want| / mean|want|. */
void bench_rel_error(const attn_tensor *got, const attn_tensor *want, double *max_err,
                     double *mean_err);

/* The compute peak (bench/probe.c): register-only f32 FMA loops (zmm where
 * the CPU has AVX-512F) and bf16 dot products (vdpbf16ps; NaN without
 * AVX512_BF16) on `threads` threads, GFLOPS, median of reps. */
double bench_fma_peak(int threads, int32_t reps);
double bench_bf16_peak(int threads, int32_t reps);

/* Sum of n words read front to back with the widest vector loads the CPU
 * has (zmm, ymm, else scalar), four independent accumulators: the read
 * bandwidth probe's inner loop (bench/probe.c), so that the probe is bound
 * by memory, not by its own instructions. */
uint64_t bench_read_sum(const uint64_t *p, size_t n);

/* Exact (optionally causal) attention into out, for error references. */
int bench_exact_into(attn_context *ctx, bool causal, const attn_tensor *q, const attn_tensor *k,
                     const attn_tensor *v, attn_tensor *out);

#endif

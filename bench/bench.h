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
  int32_t kv_storage;     /* --kv-storage (decode): an attn_kvcache_storage, native = f32 */
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

/* Median milliseconds of reps calls of fn(arg) after one warm-up call. */
double bench_time_ms(int (*fn)(void *arg), void *arg, int32_t reps);

/* Owned contiguous tensor [d0,d1,d2,d3] filled uniform in [-1, 1) from seed. */
attn_tensor *bench_tensor(attn_context *ctx, attn_dtype dt, int64_t d0, int64_t d1, int64_t d2,
                          int64_t d3, uint64_t seed);

/* Time an already created plan (median of o->reps executes). */
double bench_time_plan(attn_plan *plan, const attn_tensor *q, const attn_tensor *k,
                       const attn_tensor *v, attn_tensor *out, int32_t reps);

/* Relative error of `got` against exact attention `want` (same shape, dtype):
 * max_err = max|got−want| / max|want|, mean_err = mean|got−want| / mean|want|. */
void bench_rel_error(const attn_tensor *got, const attn_tensor *want, double *max_err,
                     double *mean_err);

/* Exact (optionally causal) attention into out, for error references. */
int bench_exact_into(attn_context *ctx, bool causal, const attn_tensor *q, const attn_tensor *k,
                     const attn_tensor *v, attn_tensor *out);

#endif

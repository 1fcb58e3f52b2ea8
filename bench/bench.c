/* attn-bench: measures OpenBLAS GEMM peak and memory read bandwidth, then
 * each requested case, in one run; prints a table and, with --json, one JSON
 * object per line (contract: bench/README.md, "The benchmark contract"). */
#define _GNU_SOURCE
#include <cblas.h>
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>
#include <time.h>

#include "bench.h"

extern const bench_case *const bench_cases[];
extern const int bench_ncases;

static double now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec * 1e-6;
}

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

/* Warm-up calls of the current case (the largest over its timings). */
static int32_t warmup_calls;

/* Calls until the last three are within 5% of each other (steady state: the
 * first calls of a process pay page faults and cold caches), or 1 s has
 * passed; at least one call. Returns the count, or -1 if fn failed. */
static int32_t warm_up(int (*fn)(void *arg), void *arg) {
  double last[3] = {0, 0, 0};
  const double t_start = now_ms();
  for (int32_t n = 1;; n++) {
    double t0 = now_ms();
    if (fn(arg) != 0) return -1;
    last[n % 3] = now_ms() - t0;
    if (n >= 3) {
      double lo = fmin(last[0], fmin(last[1], last[2])), hi = fmax(last[0], fmax(last[1], last[2]));
      if (hi <= 1.05 * lo) return n;
    }
    if (now_ms() - t_start > 1000.0 || n >= 1000) return n;
  }
}

double bench_time_ms(int (*fn)(void *arg), void *arg, int32_t reps) {
  if (reps < 1) reps = 1;
  const int32_t w = warm_up(fn, arg);
  if (w < 0) return NAN;
  if (w > warmup_calls) warmup_calls = w;
  double *t = malloc((size_t)reps * sizeof *t);
  for (int32_t r = 0; r < reps; r++) {
    double t0 = now_ms();
    if (fn(arg) != 0) {
      free(t);
      return NAN;
    }
    t[r] = now_ms() - t0;
  }
  qsort(t, (size_t)reps, sizeof *t, cmp_double);
  double med = reps % 2 ? t[reps / 2] : 0.5 * (t[reps / 2 - 1] + t[reps / 2]);
  free(t);
  return med;
}

/* Busy work on the calling thread for ms milliseconds (a control loop's
 * other work between attention calls). */
static void busy_ms(double ms) {
  const double end = now_ms() + ms;
  volatile double x = 1.0;
  while (now_ms() < end) x = x * 1.0000001 + 1e-9;
}

static double percentile(const double *sorted, int32_t n, double p) {
  double idx = p * (double)(n - 1);
  int32_t i = (int32_t)idx;
  if (i >= n - 1) return sorted[n - 1];
  return sorted[i] + (idx - (double)i) * (sorted[i + 1] - sorted[i]);
}

/* n calls of fn with gap_ms of busy work before each; sorted times into t. */
static int loop_times(int (*fn)(void *arg), void *arg, int32_t n, double gap_ms, double *t) {
  for (int32_t i = 0; i < n; i++) {
    busy_ms(gap_ms);
    double t0 = now_ms();
    if (fn(arg) != 0) return 1;
    t[i] = now_ms() - t0;
  }
  qsort(t, (size_t)n, sizeof *t, cmp_double);
  return 0;
}

typedef struct tail_gemm {
  int n;
  float *a, *b, *c;
} tail_gemm;

static int run_tail_gemm(void *p) {
  tail_gemm *g = p;
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, g->n, g->n, g->n, 1.0f, g->a, g->n, g->b,
              g->n, 0.0f, g->c, g->n);
  return 0;
}

double bench_time_case(int (*fn)(void *arg), void *arg, const bench_opts *o, bench_result *r) {
  if (o->loop <= 0) return bench_time_ms(fn, arg, o->reps);
  double t0 = now_ms();
  if (fn(arg) != 0) return NAN;
  r->first_ms = now_ms() - t0;
  double *t = malloc((size_t)o->loop * sizeof *t);
  if (t == NULL || loop_times(fn, arg, o->loop, o->gap_ms, t) != 0) {
    free(t);
    return NAN;
  }
  r->has_latency = true;
  r->p50_ms = percentile(t, o->loop, 0.50);
  r->p90_ms = percentile(t, o->loop, 0.90);
  r->p99_ms = percentile(t, o->loop, 0.99);
  r->max_ms = t[o->loop - 1];
  /* The machine's own tail: a plain single-thread sgemm of about the same
   * duration, looped with the same gaps. */
  int prev = openblas_get_num_threads();
  openblas_set_num_threads(1);
  tail_gemm g = {64, NULL, NULL, NULL};
  for (;;) { /* size it to ≈ the case's p50 (cubic in n) */
    double want = r->p50_ms, unit = 2.0 * g.n * (double)g.n * g.n / 50e6; /* ≈ ms at 50 GFLOPS */
    if (unit >= want || g.n >= 1024) break;
    g.n += 32;
  }
  size_t bytes = (size_t)g.n * (size_t)g.n * sizeof(float);
  g.a = calloc(1, bytes);
  g.b = calloc(1, bytes);
  g.c = calloc(1, bytes);
  const int32_t nt = o->loop < 200 ? o->loop : 200;
  if (g.a && g.b && g.c && loop_times(run_tail_gemm, &g, nt, o->gap_ms, t) == 0)
    r->sgemm_tail = percentile(t, nt, 0.99) / percentile(t, nt, 0.50);
  else
    r->sgemm_tail = NAN;
  openblas_set_num_threads(prev);
  free(g.a);
  free(g.b);
  free(g.c);
  free(t);
  return r->p50_ms;
}

static uint64_t splitmix(uint64_t *s) {
  uint64_t z = (*s += 0x9E3779B97F4A7C15ULL);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
  return z ^ (z >> 31);
}

const char *bench_dtype_name(attn_dtype dt) {
  switch (dt) {
    case ATTN_DTYPE_F64: return "f64";
    case ATTN_DTYPE_BF16: return "bf16";
    case ATTN_DTYPE_F16: return "f16";
    default: return "f32";
  }
}

const char *bench_storage_name(attn_kvcache_storage s, attn_dtype dt) {
  switch (s) {
    case ATTN_KVCACHE_STORE_BF16: return "bf16";
    case ATTN_KVCACHE_STORE_F16: return "f16";
    case ATTN_KVCACHE_STORE_INT8: return "int8";
    case ATTN_KVCACHE_STORE_INT4: return "int4";
    default: return bench_dtype_name(dt);
  }
}

uint16_t bench_half_bits(attn_dtype dt, double x) {
  /* x is a multiple of 2^-7 in [-1, 1): exact in both formats. */
  if (dt == ATTN_DTYPE_BF16) {
    float f = (float)x;
    uint32_t u;
    memcpy(&u, &f, 4);
    return (uint16_t)(u >> 16);
  }
  if (x == 0) return 0;
  uint16_t sign = x < 0 ? 0x8000u : 0;
  int e;
  double m = frexp(fabs(x), &e); /* |x| = m·2^e, m in [0.5, 1) */
  return sign | (uint16_t)((e - 1 + 15) << 10) | (uint16_t)((m * 2 - 1) * 1024);
}

attn_tensor *bench_tensor(attn_context *ctx, attn_dtype dt, int64_t d0, int64_t d1, int64_t d2,
                          int64_t d3, uint64_t seed) {
  int64_t shape[4] = {d0, d1, d2, d3};
  attn_tensor *t = NULL;
  if (attn_tensor_create(ctx, dt, 4, shape, &t) != ATTN_OK) {
    fprintf(stderr, "attn-bench: tensor [%" PRId64 ",%" PRId64 ",%" PRId64 ",%" PRId64 "]: %s\n",
            d0, d1, d2, d3, attn_context_last_error(ctx));
    return NULL;
  }
  int64_t n = attn_tensor_numel(t);
  uint64_t s = seed;
  if (dt == ATTN_DTYPE_F32) {
    float *p = attn_tensor_data(t);
    for (int64_t i = 0; i < n; i++) p[i] = (float)((double)(splitmix(&s) >> 11) * 0x1.0p-52 - 1.0);
  } else if (dt == ATTN_DTYPE_BF16 || dt == ATTN_DTYPE_F16) {
    /* Multiples of 2^-7 in [-1, 1): exact in both 16-bit formats. */
    uint16_t *p = attn_tensor_data(t);
    for (int64_t i = 0; i < n; i++) p[i] = bench_half_bits(dt, (double)(int)(splitmix(&s) >> 56) / 128.0 - 1.0);
  } else {
    double *p = attn_tensor_data(t);
    for (int64_t i = 0; i < n; i++) p[i] = (double)(splitmix(&s) >> 11) * 0x1.0p-52 - 1.0;
  }
  return t;
}

typedef struct plan_run {
  attn_plan *plan;
  const attn_tensor *q, *k, *v;
  attn_tensor *out;
} plan_run;

static int run_plan(void *arg) {
  plan_run *r = arg;
  return attn_plan_execute(r->plan, r->q, r->k, r->v, r->out, NULL, NULL) != ATTN_OK;
}

double bench_time_plan(attn_plan *plan, const attn_tensor *q, const attn_tensor *k,
                       const attn_tensor *v, attn_tensor *out, int32_t reps) {
  plan_run r = {plan, q, k, v, out};
  return bench_time_ms(run_plan, &r, reps);
}

void bench_rel_error(const attn_tensor *got, const attn_tensor *want, double *max_err,
                     double *mean_err) {
  int64_t n = attn_tensor_numel(got);
  bool f32 = attn_tensor_dtype(got) == ATTN_DTYPE_F32;
  double maxd = 0, maxw = 0, sumd = 0, sumw = 0;
  for (int64_t i = 0; i < n; i++) {
    double g = f32 ? ((const float *)attn_tensor_data(got))[i] : ((const double *)attn_tensor_data(got))[i];
    double w = f32 ? ((const float *)attn_tensor_data(want))[i] : ((const double *)attn_tensor_data(want))[i];
    double d = fabs(g - w);
    if (d > maxd || d != d) maxd = d;
    if (fabs(w) > maxw) maxw = fabs(w);
    sumd += d;
    sumw += fabs(w);
  }
  *max_err = maxw > 0 ? maxd / maxw : maxd;
  *mean_err = sumw > 0 ? sumd / sumw : sumd;
}

int bench_exact_into(attn_context *ctx, bool causal, const attn_tensor *q, const attn_tensor *k,
                     const attn_tensor *v, attn_tensor *out) {
  attn_desc *d = NULL;
  if (attn_desc_create(ctx, &d) != ATTN_OK) return 1;
  if (causal) attn_desc_set_causal(d, ATTN_CAUSAL_TOP_LEFT);
  attn_status st = attn_forward(ctx, d, q, k, v, out, NULL, NULL);
  attn_desc_destroy(d);
  if (st != ATTN_OK) fprintf(stderr, "attn-bench: exact reference: %s\n", attn_context_last_error(ctx));
  return st != ATTN_OK;
}

/* ---- machine probes ----------------------------------------------------------- */

typedef struct machine {
  double sgemm, dgemm, read_gbps;
  double fma, bf16; /* register-only peaks (bench/probe.c) */
} machine;

typedef struct gemm_arg {
  int n;
  bool f64;
  void *a, *b, *c;
} gemm_arg;

static int run_gemm(void *p) {
  gemm_arg *g = p;
  if (g->f64)
    cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, g->n, g->n, g->n, 1.0, g->a, g->n,
                g->b, g->n, 0.0, g->c, g->n);
  else
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, g->n, g->n, g->n, 1.0f, g->a, g->n,
                g->b, g->n, 0.0f, g->c, g->n);
  return 0;
}

/* Peak GEMM GFLOPS: large square product with `threads` OpenBLAS threads. */
static double gemm_peak(int threads, bool f64, int32_t reps) {
  gemm_arg g = {f64 ? 2048 : 3072, f64, NULL, NULL, NULL};
  size_t bytes = (size_t)g.n * (size_t)g.n * (f64 ? 8 : 4);
  g.a = calloc(1, bytes);
  g.b = calloc(1, bytes);
  g.c = calloc(1, bytes);
  for (size_t i = 0; i < bytes / 4; i++) ((float *)g.a)[i] = ((float *)g.b)[i] = 0.5f;
  int prev = openblas_get_num_threads();
  openblas_set_num_threads(threads);
  double ms = bench_time_ms(run_gemm, &g, reps);
  openblas_set_num_threads(prev);
  free(g.a);
  free(g.b);
  free(g.c);
  return 2.0 * g.n * (double)g.n * g.n / (ms * 1e6);
}

typedef struct bw_arg {
  const uint64_t *p;
  size_t n;
  uint64_t sum;
} bw_arg;

static void *bw_thread(void *p) {
  bw_arg *a = p;
  a->sum = bench_read_sum(a->p, a->n);
  return NULL;
}

typedef struct bw_probe {
  uint64_t *buf;
  size_t words;
  int threads;
} bw_probe;

static int run_bw(void *p) {
  bw_probe *b = p;
  pthread_t th[64];
  bw_arg args[64];
  int n = b->threads < 1 ? 1 : b->threads < 64 ? b->threads : 64;
  size_t per = b->words / (size_t)n;
  for (int i = 0; i < n; i++) {
    args[i] = (bw_arg){b->buf + (size_t)i * per, per, 0};
    if (i > 0) pthread_create(&th[i], NULL, bw_thread, &args[i]);
  }
  bw_thread(&args[0]);
  for (int i = 1; i < n; i++) pthread_join(th[i], NULL);
  volatile uint64_t sink = 0;
  for (int i = 0; i < n; i++) sink += args[i].sum;
  (void)sink;
  return 0;
}

/* Read bandwidth (GB/s) over 512 MiB, far larger than any cache, read with
 * vector loads (bench_read_sum): an earlier scalar loop was bound by its
 * own adds and read about 30% below what the memory gives. */
static double read_bandwidth(int threads, int32_t reps) {
  bw_probe b = {NULL, (512u << 20) / 8, threads};
  b.buf = malloc(b.words * 8);
  for (size_t i = 0; i < b.words; i++) b.buf[i] = i;
  double ms = bench_time_ms(run_bw, &b, reps);
  free(b.buf);
  return (double)b.words * 8 / (ms * 1e6);
}

/* The probes run in a child process so their buffers (512 MiB for the
 * bandwidth probe) never count in this process's peak RSS, which the cases
 * report. */
static int probe_machine(int threads, machine *m) {
  int fd[2];
  if (pipe(fd) != 0) return 1;
  pid_t pid = fork();
  if (pid < 0) return 1;
  if (pid == 0) {
    machine r;
    r.sgemm = gemm_peak(threads, false, 5);
    r.dgemm = gemm_peak(threads, true, 5);
    r.read_gbps = read_bandwidth(threads, 7);
    r.fma = bench_fma_peak(threads, 7);
    r.bf16 = bench_bf16_peak(threads, 7);
    ssize_t w = write(fd[1], &r, sizeof r);
    _exit(w == (ssize_t)sizeof r ? 0 : 1);
  }
  close(fd[1]);
  ssize_t got = read(fd[0], m, sizeof *m);
  close(fd[0]);
  int status = 0;
  waitpid(pid, &status, 0);
  return got == (ssize_t)sizeof *m && WIFEXITED(status) && WEXITSTATUS(status) == 0 ? 0 : 1;
}

static double peak_rss_mb(void) {
  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  return (double)ru.ru_maxrss / 1024.0;
}

/* ---- driver ----------------------------------------------------------------- */

static void usage(FILE *f) {
  fprintf(f,
          "usage: attn-bench [--case NAME]... [--S N | --Sq N --Sk N] [--D N] [--H N] [--Hkv N]\n"
          "                  [--B N] [--causal] [--dtype f32|f64|bf16|f16] [--threads N] [--reps N]\n"
          "                  [--window N] [--features N] [--rank N] [--block N] [--seqs N] [--json] [--list]\n"
          "                  [--loop N --gap-ms G] [--spin-us N] [--mass] [--sinks]\n"
          "                  [--kv-storage f32|bf16|f16|int8|int4]\n"
          "Without --case: the exact-attention sweep S in {512..8192}, d in {64 (H=8), 128 (H=4)},\n"
          "causal and not, f32 and f64, fused (sdpa) and unfused (naive).\n"
          "Each line: median of --reps (default 5) runs after a warm-up to steady state\n"
          "(warmup_calls). GEMM peak and read bandwidth are measured in the same run; FLOPs are\n"
          "dense-equivalent 4*B*H*Sq*Sk*D. --loop N --gap-ms G (sdpa, decode): the first call\n"
          "after the plan, then N calls with G ms of busy work between them: first_ms, p50_ms,\n"
          "p90_ms, p99_ms, max_ms. --spin-us sets the context's spin policy (0 adaptive).\n"
          "--dtype bf16|f16 applies to the sdpa and sdpa_bwd cases only.\n"
          "--mass (sdpa, decode): with the per-key mass output (mass_ratio: time over the\n"
          "time without it, same run); --sinks (sdpa): with sink logits (sinks_ratio).\n");
}

static const bench_case *find_case(const char *name) {
  for (int i = 0; i < bench_ncases; i++)
    if (strcmp(bench_cases[i]->name, name) == 0) return bench_cases[i];
  return NULL;
}

static bool parse_i64(const char *s, int64_t *out) {
  char *end;
  errno = 0;
  long long v = strtoll(s, &end, 10);
  if (errno || *end || v < 0) return false;
  *out = v;
  return true;
}

static void json_num(FILE *f, const char *key, double v, bool last) {
  if (isfinite(v))
    fprintf(f, "\"%s\":%.6g%s", key, v, last ? "" : ",");
  else
    fprintf(f, "\"%s\":null%s", key, last ? "" : ",");
}

static void emit(const bench_case *c, const bench_opts *o, const bench_result *r,
                 const machine *m, bool json) {
  double gflops = r->flops > 0 ? r->flops / (r->ms * 1e6) : NAN;
  double gbps = r->bytes > 0 ? r->bytes / (r->ms * 1e6) : NAN;
  /* frac_peak: over the peak of the case's compute type: bf16 → the bf16
   * dot-product peak (f32 FMA where the CPU has none), f32 and f16 (which
   * computes in f32) → the f32 FMA peak, f64 → half of it (8 lanes). */
  double peak = o->dtype == ATTN_DTYPE_F64                         ? m->fma / 2
                : o->dtype == ATTN_DTYPE_BF16 && isfinite(m->bf16) ? m->bf16
                                                                   : m->fma;
  double frac = gflops / m->sgemm;
  double frac_peak = gflops / peak;
  double frac_bw = gbps / m->read_gbps;
  double rss = peak_rss_mb();
  if (json) {
    printf("{\"case\":\"%s\",\"causal\":%s,\"dtype\":\"%s\",\"B\":%" PRId64 ",\"H\":%" PRId64
           ",\"Hkv\":%" PRId64 ",\"Sq\":%" PRId64 ",\"Sk\":%" PRId64 ",\"D\":%" PRId64
           ",\"threads\":%d,",
           c->name, o->causal ? "true" : "false", bench_dtype_name(o->dtype), o->B,
           o->H, o->Hkv, o->Sq, o->Sk, o->D, o->threads);
    json_num(stdout, "ms", r->ms, false);
    json_num(stdout, "gflops", gflops, false);
    json_num(stdout, "sgemm_gflops", m->sgemm, false);
    json_num(stdout, "dgemm_gflops", m->dgemm, false);
    json_num(stdout, "frac_sgemm", frac, false);
    /* OpenBLAS's kernel family: on a CPU its build does not know it falls
     * back to generic SSE kernels (Prescott), and every sgemm ratio with it. */
    printf("\"blas_core\":\"%s\",", openblas_get_corename());
    json_num(stdout, "fma_gflops", m->fma, false);
    json_num(stdout, "bf16_gflops", m->bf16, false);
    json_num(stdout, "frac_peak", frac_peak, false);
    json_num(stdout, "gbps", gbps, false);
    json_num(stdout, "read_gbps", m->read_gbps, false);
    json_num(stdout, "frac_bw", frac_bw, false);
    json_num(stdout, "max_err", r->has_err ? r->max_err : NAN, false);
    json_num(stdout, "mean_err", r->has_err ? r->mean_err : NAN, false);
    if (r->extra_name) json_num(stdout, r->extra_name, r->extra, false);
    if (r->kv_storage) {
      printf("\"kv_storage\":\"%s\",", r->kv_storage);
      json_num(stdout, "kv_bytes", r->kv_bytes, false);
    }
    for (int32_t f = 0; f < r->nfields; f++) json_num(stdout, r->field_names[f], r->field_values[f], false);
    if (o->mass) printf("\"mass\":true,");
    if (o->sinks) printf("\"sinks\":true,");
    if (r->ratio_name) json_num(stdout, r->ratio_name, r->ratio, false);
    json_num(stdout, "warmup_calls", r->has_latency ? 0 : (double)warmup_calls, false);
    if (r->has_latency) {
      json_num(stdout, "loop", o->loop, false);
      json_num(stdout, "gap_ms", o->gap_ms, false);
      json_num(stdout, "spin_us", o->spin_us, false);
      json_num(stdout, "first_ms", r->first_ms, false);
      json_num(stdout, "p50_ms", r->p50_ms, false);
      json_num(stdout, "p90_ms", r->p90_ms, false);
      json_num(stdout, "p99_ms", r->p99_ms, false);
      json_num(stdout, "max_ms", r->max_ms, false);
      json_num(stdout, "sgemm_p99_over_p50", r->sgemm_tail, false);
    }
    json_num(stdout, "peak_rss_mb", rss, true);
    printf("}\n");
  } else {
    printf("%-12s %-6s %-4s %3" PRId64 " %3" PRId64 "/%-3" PRId64 " %6" PRId64 " %6" PRId64
           " %4" PRId64 " %10.3f %8.1f %6.3f %8.2f %6.3f %9.2e %8.0f",
           c->name, o->causal ? "causal" : "-", bench_dtype_name(o->dtype), o->B,
           o->H, o->Hkv, o->Sq, o->Sk, o->D, r->ms, gflops, frac, gbps, frac_bw,
           r->has_err ? r->max_err : NAN, rss);
    printf("  f_peak=%.3f", frac_peak);
    if (r->extra_name) printf("  %s=%.3g", r->extra_name, r->extra);
    if (r->kv_storage) printf("  kv_storage=%s kv_bytes=%.0f", r->kv_storage, r->kv_bytes);
    for (int32_t f = 0; f < r->nfields; f++) printf("  %s=%.4g", r->field_names[f], r->field_values[f]);
    if (r->ratio_name) printf("  %s=%.3f", r->ratio_name, r->ratio);
    if (r->has_latency)
      printf("  first=%.3f p50=%.3f p90=%.3f p99=%.3f max=%.3f ms (sgemm p99/p50 %.2f)", r->first_ms,
             r->p50_ms, r->p90_ms, r->p99_ms, r->max_ms, r->sgemm_tail);
    else
      printf("  warmup=%d", (int)warmup_calls);
    printf("\n");
  }
  fflush(stdout);
}

static int run_one(attn_context *ctx, const bench_case *c, const bench_opts *o, const machine *m,
                   bool json) {
  bench_result r;
  memset(&r, 0, sizeof r);
  warmup_calls = 0;
  if (o->loop > 0 && strcmp(c->name, "sdpa") != 0 && strcmp(c->name, "decode") != 0) {
    fprintf(stderr, "attn-bench: --loop applies to the sdpa and decode cases, not %s\n", c->name);
    return 1;
  }
  if (c->run(ctx, o, &r) != 0) {
    fprintf(stderr, "attn-bench: case %s failed\n", c->name);
    return 1;
  }
  bench_opts shown = *o;
  if (strcmp(c->name, "decode") == 0) shown.Sq = 1; /* one new query against S_k cached keys */
  emit(c, &shown, &r, m, json);
  return 0;
}

int main(int argc, char **argv) {
  bench_opts o = {1, 8, 0, 4096, 4096, 64, false, ATTN_DTYPE_F32, 2, 5, 256, 256, 256, 64,
                  ATTN_KVCACHE_STORE_NATIVE, 0, 0.0, 0, 16, false, false};
  const char *cases[64];
  int ncases = 0;
  bool json = false, s_given = false, h_given = false;
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    const char *val = i + 1 < argc ? argv[i + 1] : NULL;
    int64_t x = 0;
#define NUM_FLAG(flag, field)                                                     \
  if (strcmp(a, flag) == 0) {                                                     \
    if (!val || !parse_i64(val, &x) || x < 1) {                                   \
      fprintf(stderr, "attn-bench: %s needs a positive integer\n", flag);          \
      return 2;                                                                   \
    }                                                                             \
    field;                                                                        \
    i++;                                                                          \
    continue;                                                                     \
  }
    NUM_FLAG("--S", (o.Sq = o.Sk = x, s_given = true))
    NUM_FLAG("--Sq", (o.Sq = x, s_given = true))
    NUM_FLAG("--Sk", (o.Sk = x, s_given = true))
    NUM_FLAG("--D", o.D = x)
    NUM_FLAG("--H", (o.H = x, h_given = true))
    NUM_FLAG("--Hkv", o.Hkv = x)
    NUM_FLAG("--B", o.B = x)
    NUM_FLAG("--threads", o.threads = (int32_t)x)
    NUM_FLAG("--reps", o.reps = (int32_t)x)
    NUM_FLAG("--window", o.window = x)
    NUM_FLAG("--features", o.features = x)
    NUM_FLAG("--rank", o.rank = x)
    NUM_FLAG("--block", o.block = x)
    NUM_FLAG("--seqs", o.seqs = x)
    NUM_FLAG("--loop", o.loop = (int32_t)x)
#undef NUM_FLAG
    if (strcmp(a, "--gap-ms") == 0 || strcmp(a, "--spin-us") == 0) {
      char *end = NULL;
      double g = val ? strtod(val, &end) : NAN;
      bool gap = strcmp(a, "--gap-ms") == 0;
      if (!val || *end != '\0' || !(gap ? g >= 0 && g <= 10000 : g >= -1 && g <= 1000000)) {
        fprintf(stderr, "attn-bench: %s needs %s\n", a,
                gap ? "a number of milliseconds in [0, 10000]" : "an integer in [-1, 1000000]");
        return 2;
      }
      if (gap)
        o.gap_ms = g;
      else
        o.spin_us = (int32_t)g;
      i++;
      continue;
    }
    if (strcmp(a, "--case") == 0 && val) {
      if (!find_case(val)) {
        fprintf(stderr, "attn-bench: unknown case '%s' (--list shows them)\n", val);
        return 2;
      }
      if (ncases < 64) cases[ncases++] = val;
      i++;
    } else if (strcmp(a, "--dtype") == 0 && val) {
      if (strcmp(val, "f32") == 0) o.dtype = ATTN_DTYPE_F32;
      else if (strcmp(val, "f64") == 0) o.dtype = ATTN_DTYPE_F64;
      else if (strcmp(val, "bf16") == 0) o.dtype = ATTN_DTYPE_BF16;
      else if (strcmp(val, "f16") == 0) o.dtype = ATTN_DTYPE_F16;
      else {
        fprintf(stderr, "attn-bench: --dtype must be f32, f64, bf16 or f16\n");
        return 2;
      }
      i++;
    } else if (strcmp(a, "--kv-storage") == 0 && val) {
      static const char *const names[] = {"f32", "bf16", "f16", "int8", "int4"};
      static const attn_kvcache_storage st[] = {ATTN_KVCACHE_STORE_NATIVE, ATTN_KVCACHE_STORE_BF16,
                                                ATTN_KVCACHE_STORE_F16, ATTN_KVCACHE_STORE_INT8,
                                                ATTN_KVCACHE_STORE_INT4};
      int found = -1;
      for (int s = 0; s < 5; s++)
        if (strcmp(val, names[s]) == 0) found = s;
      if (found < 0) {
        fprintf(stderr, "attn-bench: --kv-storage must be f32, bf16, f16, int8 or int4\n");
        return 2;
      }
      o.kv_storage = (int32_t)st[found];
      i++;
    } else if (strcmp(a, "--causal") == 0) {
      o.causal = true;
    } else if (strcmp(a, "--mass") == 0) {
      o.mass = true;
    } else if (strcmp(a, "--sinks") == 0) {
      o.sinks = true;
    } else if (strcmp(a, "--json") == 0) {
      json = true;
    } else if (strcmp(a, "--list") == 0) {
      for (int c = 0; c < bench_ncases; c++) printf("%-12s %s\n", bench_cases[c]->name, bench_cases[c]->what);
      return 0;
    } else if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
      usage(stdout);
      return 0;
    } else {
      fprintf(stderr, "attn-bench: unknown or incomplete argument '%s'\n", a);
      usage(stderr);
      return 2;
    }
  }
  if (o.reps < 5) fprintf(stderr, "attn-bench: note: --reps %d < 5 (the contract asks for >= 5)\n", o.reps);
  if (o.Hkv == 0 || o.Hkv > o.H) o.Hkv = o.H;
  if (o.dtype == ATTN_DTYPE_BF16 || o.dtype == ATTN_DTYPE_F16) {
    for (int i = 0; i < ncases; i++)
      if (strcmp(cases[i], "sdpa") != 0 && strcmp(cases[i], "sdpa_bwd") != 0) {
        fprintf(stderr, "attn-bench: --dtype %s applies to the sdpa and sdpa_bwd cases only\n",
                bench_dtype_name(o.dtype));
        return 2;
      }
    if (ncases == 0) cases[ncases++] = "sdpa";
  }
  (void)h_given;

  attn_context_options co;
  attn_context_options_init(&co);
  co.num_threads = o.threads;
  attn_context *ctx = NULL;
  if (attn_context_create(&co, &ctx) != ATTN_OK) {
    fprintf(stderr, "attn-bench: cannot create a context with %d threads\n", o.threads);
    return 1;
  }
  if (o.spin_us != 0 && attn_context_set_spin(ctx, o.spin_us) != ATTN_OK) {
    fprintf(stderr, "attn-bench: --spin-us: %s\n", attn_context_last_error(ctx));
    return 2;
  }
  machine m;
  if (probe_machine(o.threads, &m) != 0) {
    fprintf(stderr, "attn-bench: machine probes failed\n");
    return 1;
  }
  if (!json) {
    printf("# attn-bench, libattn %s, %d thread(s): sgemm peak %.1f GFLOPS, dgemm peak %.1f GFLOPS, "
           "read bandwidth %.1f GB/s, f32 FMA peak %.1f GFLOPS, bf16 dot peak %.1f GFLOPS\n",
           attn_version_string(), o.threads, m.sgemm, m.dgemm, m.read_gbps, m.fma, m.bf16);
    printf("%-12s %-6s %-4s %3s %7s %6s %6s %4s %10s %8s %6s %8s %6s %9s %8s\n", "case", "mask",
           "type", "B", "H/Hkv", "Sq", "Sk", "D", "ms", "GFLOPS", "f_gemm", "GB/s", "f_bw",
           "max_err", "rss_MB");
  }
  int rc = 0;
  if (ncases > 0) {
    for (int i = 0; i < ncases; i++) rc |= run_one(ctx, find_case(cases[i]), &o, &m, json);
  } else {
    /* The exact-attention sweep of issue 3. */
    static const int64_t S[] = {512, 1024, 2048, 4096, 8192};
    for (int dt = 0; dt < 2; dt++)
      for (int dd = 0; dd < 2; dd++)
        for (int causal = 0; causal < 2; causal++)
          for (int si = 0; si < 5; si++) {
            bench_opts s = o;
            s.dtype = dt ? ATTN_DTYPE_F64 : ATTN_DTYPE_F32;
            s.D = dd ? 128 : 64;
            s.H = s.Hkv = dd ? 4 : 8;
            s.Sq = s.Sk = S[si];
            s.causal = causal;
            if (s_given) s.Sq = o.Sq, s.Sk = o.Sk;
            rc |= run_one(ctx, find_case("sdpa"), &s, &m, json);
            if (!causal) rc |= run_one(ctx, find_case("naive"), &s, &m, json);
            if (s_given) break;
          }
  }
  attn_context_destroy(ctx);
  return rc;
}

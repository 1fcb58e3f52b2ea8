/* attn-bench-mpi: the MPI benchmark (built with libattn_mpi). One case,
 * `ring`: sequence-parallel attention over the ranks of mpirun, and in the
 * same run the single-process kernel at the same total thread count.
 *
 *   mpirun --bind-to none -np 2 build/bench/attn-bench-mpi --case ring --S 16384 --D 64 --H 8 --threads 1 --json
 *
 * Per rep, every rank executes the plan between two barriers; a rep's time
 * is the slowest rank's (MPI_MAX), and `ms` is the median over --reps after
 * a warm-up. Then rank 0 alone runs the same attention over the whole
 * sequence with ranks × threads threads (`single_ms`, `single_gflops`; the
 * other ranks sleep meanwhile, so they take no CPU) and broadcasts its output
 * for `max_err`. `overlap` is the ring's waiting fraction: the time the ranks
 * spent blocked on the next K/V block after their compute, over their
 * execute time (0 = communication fully hidden). Contract: bench/README.md. */
#define _POSIX_C_SOURCE 200809L
#include <attn/mpi.h>
#include <errno.h>
#include <inttypes.h>
#include <stdbool.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

typedef struct opts {
  int64_t B, H, Hkv, S, D;
  bool causal, json;
  attn_dtype dtype;
  int32_t threads, reps;
  attn_mpi_mode mode;
  int layout; /* -1: zig-zag when causal, else contiguous */
} opts;

static int rank_, nranks_;

static void usage(FILE *f) {
  fprintf(f,
          "usage: mpirun --bind-to none -np N attn-bench-mpi --case ring [--S N] [--D N] [--H N]\n"
          "         [--Hkv N] [--B N] [--causal] [--dtype f32|f64] [--threads N per rank]\n"
          "         [--reps N] [--mode ring|ulysses|auto] [--layout contiguous|zigzag] [--json]\n"
          "Defaults: S 16384, D 64, H 8, B 1, f32, 1 thread per rank, 5 reps, mode ring,\n"
          "layout zigzag when --causal else contiguous. Prints one line (rank 0).\n");
}

static bool parse_i64(const char *s, int64_t *out) {
  char *end;
  errno = 0;
  long long v = strtoll(s, &end, 10);
  if (errno || *end || v < 1) return false;
  *out = v;
  return true;
}

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

static double median(double *t, int n) {
  qsort(t, (size_t)n, sizeof *t, cmp_double);
  return n % 2 ? t[n / 2] : 0.5 * (t[n / 2 - 1] + t[n / 2]);
}

static uint64_t splitmix(uint64_t *s) {
  uint64_t z = (*s += 0x9E3779B97F4A7C15ULL);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
  return z ^ (z >> 31);
}

/* Element (b, h, pos, x) of the global tensor `which`: a hash of its index,
 * so every rank makes its rows without the whole sequence. */
static double value(int which, int64_t idx) {
  uint64_t s = (uint64_t)idx * 0x100000001B3ULL + (uint64_t)which * 0x9E3779B97F4A7C15ULL;
  return (double)(splitmix(&s) >> 11) * 0x1.0p-52 - 1.0;
}

/* [B, H, n, D] for global rows runs (start, len), contiguous. */
static attn_tensor *make(attn_context *ctx, const opts *o, int which, int64_t H, const int64_t st[2],
                         const int64_t ln[2]) {
  const int64_t n = ln[0] + ln[1], shape[4] = {o->B, H, n, o->D};
  attn_tensor *t = NULL;
  if (attn_tensor_create(ctx, o->dtype, 4, shape, &t) != ATTN_OK) return NULL;
  if (which < 0) return t;
  for (int64_t b = 0; b < o->B; b++)
    for (int64_t h = 0; h < H; h++)
      for (int64_t i = 0; i < n; i++) {
        const int64_t g = i < ln[0] ? st[0] + i : st[1] + i - ln[0];
        for (int64_t x = 0; x < o->D; x++) {
          const double v = value(which, ((b * H + h) * o->S + g) * o->D + x);
          const int64_t off = ((b * H + h) * n + i) * o->D + x;
          if (o->dtype == ATTN_DTYPE_F32) ((float *)attn_tensor_data(t))[off] = (float)v;
          else ((double *)attn_tensor_data(t))[off] = v;
        }
      }
  return t;
}

static double get(const attn_tensor *t, int64_t off) {
  return attn_tensor_dtype(t) == ATTN_DTYPE_F32 ? ((const float *)attn_tensor_data(t))[off]
                                                : ((const double *)attn_tensor_data(t))[off];
}

/* Wait for the others without spinning on a core (MPI_Barrier would). */
static void sleepy_barrier(void) {
  MPI_Request r;
  MPI_Ibarrier(MPI_COMM_WORLD, &r);
  int done = 0;
  while (!done) {
    MPI_Test(&r, &done, MPI_STATUS_IGNORE);
    if (!done) nanosleep(&(struct timespec){0, 200000}, NULL);
  }
}

static void json_num(const char *key, double v, bool last) {
  if (isfinite(v)) printf("\"%s\":%.6g%s", key, v, last ? "" : ",");
  else printf("\"%s\":null%s", key, last ? "" : ",");
}

#define DIE(...)                                  \
  do {                                            \
    fprintf(stderr, "attn-bench-mpi: " __VA_ARGS__); \
    fprintf(stderr, "\n");                        \
    MPI_Abort(MPI_COMM_WORLD, 1);                 \
  } while (0)

int main(int argc, char **argv) {
  int provided;
  MPI_Init_thread(&argc, &argv, MPI_THREAD_FUNNELED, &provided);
  MPI_Comm_rank(MPI_COMM_WORLD, &rank_);
  MPI_Comm_size(MPI_COMM_WORLD, &nranks_);
  opts o = {1, 8, 0, 16384, 64, false, false, ATTN_DTYPE_F32, 1, 5, ATTN_MPI_MODE_RING, -1};
  bool have_case = false;
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i], *val = i + 1 < argc ? argv[i + 1] : NULL;
    int64_t x = 0;
#define NUM(flag, field)                                                  \
  if (strcmp(a, flag) == 0) {                                             \
    if (!val || !parse_i64(val, &x)) DIE("%s needs a positive integer", flag); \
    field;                                                                \
    i++;                                                                  \
    continue;                                                             \
  }
    NUM("--S", o.S = x)
    NUM("--D", o.D = x)
    NUM("--H", o.H = x)
    NUM("--Hkv", o.Hkv = x)
    NUM("--B", o.B = x)
    NUM("--threads", o.threads = (int32_t)x)
    NUM("--reps", o.reps = (int32_t)x)
#undef NUM
    if (strcmp(a, "--case") == 0 && val) {
      if (strcmp(val, "ring") != 0) DIE("unknown case '%s' (this binary has one: ring)", val);
      have_case = true;
      i++;
    } else if (strcmp(a, "--dtype") == 0 && val) {
      if (strcmp(val, "f32") == 0) o.dtype = ATTN_DTYPE_F32;
      else if (strcmp(val, "f64") == 0) o.dtype = ATTN_DTYPE_F64;
      else DIE("--dtype must be f32 or f64");
      i++;
    } else if (strcmp(a, "--mode") == 0 && val) {
      if (strcmp(val, "ring") == 0) o.mode = ATTN_MPI_MODE_RING;
      else if (strcmp(val, "ulysses") == 0) o.mode = ATTN_MPI_MODE_ULYSSES;
      else if (strcmp(val, "auto") == 0) o.mode = ATTN_MPI_MODE_AUTO;
      else DIE("--mode must be ring, ulysses or auto");
      i++;
    } else if (strcmp(a, "--layout") == 0 && val) {
      if (strcmp(val, "contiguous") == 0) o.layout = ATTN_MPI_LAYOUT_CONTIGUOUS;
      else if (strcmp(val, "zigzag") == 0) o.layout = ATTN_MPI_LAYOUT_ZIGZAG;
      else DIE("--layout must be contiguous or zigzag");
      i++;
    } else if (strcmp(a, "--causal") == 0) {
      o.causal = true;
    } else if (strcmp(a, "--json") == 0) {
      o.json = true;
    } else if (strcmp(a, "--list") == 0) {
      if (rank_ == 0) printf("%-12s %s\n", "ring", "sequence-parallel attention over the mpirun ranks vs one process at the same total threads");
      MPI_Finalize();
      return 0;
    } else if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
      if (rank_ == 0) usage(stdout);
      MPI_Finalize();
      return 0;
    } else {
      if (rank_ == 0) usage(stderr);
      DIE("unknown or incomplete argument '%s'", a);
    }
  }
  if (!have_case) DIE("--case ring is required");
  if (o.Hkv == 0 || o.Hkv > o.H) o.Hkv = o.H;
  if (o.layout < 0) o.layout = o.causal ? ATTN_MPI_LAYOUT_ZIGZAG : ATTN_MPI_LAYOUT_CONTIGUOUS;
  if (o.reps < 5 && rank_ == 0) fprintf(stderr, "attn-bench-mpi: note: --reps %d < 5 (the contract asks for >= 5)\n", o.reps);

  /* This rank's rows and data. */
  attn_context_options co;
  attn_context_options_init(&co);
  co.num_threads = o.threads;
  attn_context *ctx = NULL;
  if (attn_context_create(&co, &ctx) != ATTN_OK) DIE("cannot create a context");
  int64_t st[2], ln[2];
  if (attn_mpi_shard((attn_mpi_layout)o.layout, o.S, nranks_, rank_, st, ln) != ATTN_OK)
    DIE("S = %" PRId64 " cannot be split over %d ranks", o.S, nranks_);
  attn_tensor *q = make(ctx, &o, 0, o.H, st, ln), *k = make(ctx, &o, 1, o.Hkv, st, ln);
  attn_tensor *v = make(ctx, &o, 2, o.Hkv, st, ln), *out = make(ctx, &o, -1, o.H, st, ln);
  if (!q || !k || !v || !out) DIE("out of memory for the shards");
  attn_desc *desc = NULL;
  attn_desc_create(ctx, &desc);
  if (o.causal) attn_desc_set_causal(desc, ATTN_CAUSAL_TOP_LEFT);
  attn_mpi_config cfg;
  attn_mpi_config_init(&cfg);
  cfg.mode = o.mode;
  cfg.layout = (attn_mpi_layout)o.layout;
  attn_mpi_plan *plan = NULL;
  if (attn_mpi_plan_create(ctx, MPI_COMM_WORLD, desc, &cfg, q, k, v, out, NULL, &plan) != ATTN_OK)
    DIE("rank %d: plan: %s", rank_, attn_context_last_error(ctx));

  /* The ring: warm-up, then reps; a rep lasts as long as its slowest rank. */
  double *t = calloc((size_t)o.reps, sizeof *t), wait = 0, busy = 0;
  attn_mpi_stats stats;
  stats.struct_size = sizeof stats;
  for (int r = -1; r < o.reps; r++) {
    MPI_Barrier(MPI_COMM_WORLD);
    const double t0 = MPI_Wtime();
    if (attn_mpi_plan_execute(plan, q, k, v, out, NULL) != ATTN_OK)
      DIE("rank %d: execute: %s", rank_, attn_context_last_error(ctx));
    double mine = MPI_Wtime() - t0, slowest = 0;
    MPI_Allreduce(&mine, &slowest, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
    attn_mpi_plan_stats(plan, &stats);
    if (r >= 0) {
      t[r] = slowest * 1e3;
      wait += stats.wait_seconds;
      busy += stats.seconds;
    }
  }
  double sums[2] = {wait, busy}, tot[2] = {0, 0};
  MPI_Allreduce(sums, tot, 2, MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD);
  const double ms = median(t, o.reps);
  const double flops = 4.0 * (double)o.B * (double)o.H * (double)o.S * (double)o.S * (double)o.D;

  /* One process, the whole sequence, ranks × threads threads, on rank 0. */
  const int32_t single_threads = o.threads * nranks_;
  double single_ms = NAN, max_err = NAN;
  const int64_t all_st[2] = {0, o.S}, all_ln[2] = {o.S, 0};
  const int64_t nfull = o.B * o.H * o.S * o.D;
  attn_tensor *ref = NULL;
  attn_context *c1 = NULL;
  if (rank_ == 0) {
    attn_context_options_init(&co);
    co.num_threads = single_threads;
    if (attn_context_create(&co, &c1) != ATTN_OK) DIE("cannot create the single-process context");
    attn_tensor *fq = make(c1, &o, 0, o.H, all_st, all_ln), *fk = make(c1, &o, 1, o.Hkv, all_st, all_ln);
    attn_tensor *fv = make(c1, &o, 2, o.Hkv, all_st, all_ln);
    ref = make(c1, &o, -1, o.H, all_st, all_ln);
    attn_plan *sp = NULL;
    if (!fq || !fk || !fv || !ref || attn_plan_create(c1, desc, fq, fk, fv, ref, NULL, NULL, &sp) != ATTN_OK)
      DIE("single-process plan: %s", attn_context_last_error(c1));
    for (int r = -1; r < o.reps; r++) {
      const double t0 = MPI_Wtime();
      if (attn_plan_execute(sp, fq, fk, fv, ref, NULL, NULL) != ATTN_OK) DIE("single-process execute");
      if (r >= 0) t[r] = (MPI_Wtime() - t0) * 1e3;
    }
    single_ms = median(t, o.reps);
    attn_plan_destroy(sp);
    attn_tensor_destroy(fq), attn_tensor_destroy(fk), attn_tensor_destroy(fv);
  }
  sleepy_barrier();
  /* Rank 0's single-process output checks every rank's ring output. */
  const size_t es = o.dtype == ATTN_DTYPE_F64 ? 8 : 4;
  char *full = rank_ == 0 ? attn_tensor_data(ref) : malloc((size_t)nfull * es);
  const size_t chunk = (size_t)1 << 30;
  for (size_t off = 0; off < (size_t)nfull * es; off += chunk) {
    size_t n = (size_t)nfull * es - off < chunk ? (size_t)nfull * es - off : chunk;
    MPI_Bcast(full + off, (int)n, MPI_BYTE, 0, MPI_COMM_WORLD);
  }
  double err = 0, scale = 0;
  const int64_t n = ln[0] + ln[1];
  for (int64_t bh = 0; bh < o.B * o.H; bh++)
    for (int64_t i = 0; i < n; i++) {
      const int64_t g = i < ln[0] ? st[0] + i : st[1] + i - ln[0];
      for (int64_t x = 0; x < o.D; x++) {
        const double w = o.dtype == ATTN_DTYPE_F32 ? ((float *)(void *)full)[(bh * o.S + g) * o.D + x]
                                                  : ((double *)(void *)full)[(bh * o.S + g) * o.D + x];
        err = fmax(err, fabs(get(out, (bh * n + i) * o.D + x) - w));
        scale = fmax(scale, fabs(w));
      }
    }
  double local[2] = {err, scale}, worst[2];
  MPI_Reduce(local, worst, 2, MPI_DOUBLE, MPI_MAX, 0, MPI_COMM_WORLD);
  max_err = worst[1] > 0 ? worst[0] / worst[1] : worst[0];
  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  double rss = (double)ru.ru_maxrss / 1024.0, max_rss = 0;
  MPI_Reduce(&rss, &max_rss, 1, MPI_DOUBLE, MPI_MAX, 0, MPI_COMM_WORLD);

  if (rank_ == 0) {
    const double gflops = flops / (ms * 1e6), single_gflops = flops / (single_ms * 1e6);
    const double overlap = tot[1] > 0 ? tot[0] / tot[1] : NAN;
    const char *mode = stats.mode == ATTN_MPI_MODE_RING ? "ring" : "ulysses";
    const char *layout = o.layout == ATTN_MPI_LAYOUT_ZIGZAG ? "zigzag" : "contiguous";
    if (o.json) {
      printf("{\"case\":\"ring\",\"mode\":\"%s\",\"layout\":\"%s\",\"causal\":%s,\"dtype\":\"%s\","
             "\"B\":%" PRId64 ",\"H\":%" PRId64 ",\"Hkv\":%" PRId64 ",\"S\":%" PRId64 ",\"D\":%" PRId64
             ",\"threads\":%d,\"ranks\":%d,\"single_threads\":%d,",
             mode, layout, o.causal ? "true" : "false", o.dtype == ATTN_DTYPE_F64 ? "f64" : "f32", o.B,
             o.H, o.Hkv, o.S, o.D, o.threads, nranks_, single_threads);
      json_num("ms", ms, false);
      json_num("gflops", gflops, false);
      json_num("single_ms", single_ms, false);
      json_num("single_gflops", single_gflops, false);
      json_num("ratio", gflops / single_gflops, false);
      json_num("overlap", overlap, false);
      json_num("wait_ms", tot[0] / nranks_ / o.reps * 1e3, false);
      json_num("steps", (double)stats.steps, false);
      json_num("bytes_sent_mb", (double)stats.bytes_sent / 1048576.0, false);
      json_num("max_err", max_err, false);
      json_num("peak_rss_mb", max_rss, true);
      printf("}\n");
    } else {
      printf("ring: %s, %s, %d ranks x %d threads, S=%" PRId64 " D=%" PRId64 " H=%" PRId64 "/%" PRId64
             " %s%s\n  %.1f ms, %.1f GFLOP/s; one process, %d threads: %.1f ms, %.1f GFLOP/s;"
             " ratio %.3f; overlap (wait/total) %.3f; %" PRId64 " steps; max_err %.2e\n",
             mode, layout, nranks_, o.threads, o.S, o.D, o.H, o.Hkv,
             o.dtype == ATTN_DTYPE_F64 ? "f64" : "f32", o.causal ? " causal" : "", ms, gflops,
             single_threads, single_ms, single_gflops, gflops / single_gflops, overlap,
             stats.steps, max_err);
    }
    fflush(stdout);
  } else {
    free(full);
  }
  attn_tensor_destroy(ref);
  attn_context_destroy(c1);
  attn_mpi_plan_destroy(plan);
  attn_desc_destroy(desc);
  attn_tensor_destroy(q), attn_tensor_destroy(k), attn_tensor_destroy(v), attn_tensor_destroy(out);
  attn_context_destroy(ctx);
  free(t);
  MPI_Finalize();
  return 0;
}

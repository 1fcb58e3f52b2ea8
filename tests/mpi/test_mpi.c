/* libattn_mpi under mpirun -np N (any N ≥ 1): every rank's output equals
 * the naive f64 reference (tests/common/reference.c) over the whole
 * sequence, for its own rows, within the exact-attention bound — ring and
 * Ulysses, causal (both alignments) and not, windows (including windows
 * that skip ring steps), key and query padding, GQA/MQA, f32/f64, uneven
 * contiguous shards and the zig-zag layout, [B,S,H,D] strides, softcap,
 * ALiBi and bool masks (Ulysses); every execute twice and on 1 and 3
 * threads, bitwise identical. The ring's cases run the backward over the
 * ring too: dq, dk, dv against the naive f64 backward of the whole
 * sequence (ref_attention_backward), reproducible and allocation-free.
 * Then the faults: a rank with a different
 * shape, dtype, descriptor, a NULL tensor, a wrong zig-zag shard, wrong
 * tensors or lengths at execute, unsupported options — the same failure on
 * every rank, no hang, outputs untouched; the plan's communicator returns
 * MPI errors. Prints one line per case on rank 0; exit status 0 iff every
 * rank passed everything. */
#define _POSIX_C_SOURCE 200809L
#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "attn/mpi.h"
#include "mpi/mpi_internal.h" /* white-box: the plan's communicator */
#include "reference.h"

static int g_rank, g_size, g_fail, g_cases;

#define CHECK(cond, ...)                                                   \
  do {                                                                     \
    if (!(cond)) {                                                         \
      fprintf(stderr, "[rank %d] %s:%d: check failed: %s: ", g_rank,      \
              __FILE__, __LINE__, #cond);                                  \
      fprintf(stderr, __VA_ARGS__);                                        \
      fprintf(stderr, "\n");                                               \
      g_fail++;                                                            \
    }                                                                      \
  } while (0)

/* Every context of this test counts its allocator's bytes: a plan, tensor
 * or descriptor that outlives its destroy shows as bytes outstanding when
 * the context goes (our own leak check: MPI's internal allocations make
 * LeakSanitizer useless under mpirun). */
typedef struct counter {
  int64_t outstanding, allocs;
} counter;
static void *count_alloc(void *user, size_t size, size_t align) {
  counter *c = user;
  void *p = aligned_alloc(align, (size + align - 1) / align * align);
  if (p) c->outstanding += (int64_t)size, c->allocs++;
  return p;
}
static void count_free(void *user, void *p, size_t size) {
  counter *c = user;
  c->outstanding -= (int64_t)size;
  free(p);
}
static attn_context *counted_context(counter *c, int32_t threads) {
  attn_context_options o;
  attn_context_options_init(&o);
  o.num_threads = threads;
  o.allocator.alloc = count_alloc;
  o.allocator.free = count_free;
  o.allocator.user_data = c;
  memset(c, 0, sizeof *c);
  attn_context *ctx = NULL;
  if (attn_context_create(&o, &ctx) != ATTN_OK) abort();
  return ctx;
}
#define CHECK_NO_LEAK(c, what) \
  CHECK((c)->outstanding == 0, "%s: %lld bytes never freed", (what), (long long)(c)->outstanding)

static double rnd(uint64_t *s) {
  *s ^= *s >> 12, *s ^= *s << 25, *s ^= *s >> 27;
  return (double)((*s * 2685821657736338717ULL) >> 11) / 9007199254740992.0 * 2.0 - 1.0;
}

/* bf16 storage (round to nearest even), for the bf16 ring cases. */
static uint16_t bf16_bits(double x) {
  float f = (float)x;
  uint32_t u;
  memcpy(&u, &f, sizeof u);
  u += 0x7fffu + ((u >> 16) & 1u);
  return (uint16_t)(u >> 16);
}
static double bf16_value(uint16_t h) {
  const uint32_t u = (uint32_t)h << 16;
  float f;
  memcpy(&f, &u, sizeof f);
  return f;
}
static size_t dt_size(attn_dtype dt) {
  return dt == ATTN_DTYPE_F64 ? 8 : dt == ATTN_DTYPE_BF16 ? 2 : 4;
}
static const char *dt_name(attn_dtype dt) {
  return dt == ATTN_DTYPE_F64 ? "f64" : dt == ATTN_DTYPE_BF16 ? "bf16" : "f32";
}

typedef struct mcase {
  const char *name;
  attn_dtype dt;
  int64_t B, H, Hkv, S, D, Dv;
  int causal;          /* attn_causal */
  int64_t left, right; /* -1: unbounded */
  bool klen, qlen, bshd, uneven, softcap, alibi, bool_mask;
  attn_mpi_layout layout;
  attn_mpi_mode mode;
  attn_mpi_mode want_mode; /* what the plan must run (AUTO: don't check) */
} mcase;

/* This rank's runs of global positions. Uneven contiguous shards: rank r
 * gets base ± (r mod 3) tokens. */
static void my_runs(const mcase *c, int64_t start[2], int64_t len[2]) {
  if (c->layout == ATTN_MPI_LAYOUT_ZIGZAG || !c->uneven) {
    attn_mpi_shard(c->layout, c->S, g_size, g_rank, start, len);
    return;
  }
  int64_t pos = 0, n = 0;
  const int64_t base = c->S / g_size;
  for (int r = 0; r < g_size; r++) {
    int64_t w = r == g_size - 1 ? c->S - pos : base + (r % 3) - 1;
    if (w < 1) w = 1;
    if (r == g_rank) n = w, start[0] = pos;
    pos += w;
  }
  len[0] = n, len[1] = 0, start[1] = start[0] + n;
}

/* Rows of a global [B, H, S, D] array at this rank's runs, as a tensor. */
static attn_tensor *shard(attn_context *ctx, const mcase *c, const double *g, int64_t H,
                          int64_t D, const int64_t st[2], const int64_t ln[2], bool bshd) {
  const int64_t n = ln[0] + ln[1], B = c->B;
  const size_t es = dt_size(c->dt);
  char *mem = calloc((size_t)(B * H * n * D) + 1, es);
  int64_t shape[4] = {B, H, n, D}, str[4];
  if (bshd) str[0] = n * H * D, str[1] = D, str[2] = H * D, str[3] = 1;
  else str[0] = H * n * D, str[1] = n * D, str[2] = D, str[3] = 1;
  for (int64_t b = 0; b < B; b++)
    for (int64_t h = 0; h < H; h++)
      for (int64_t i = 0; i < n; i++) {
        const int64_t gi = i < ln[0] ? st[0] + i : st[1] + i - ln[0];
        for (int64_t x = 0; x < D; x++) {
          const double val = g ? g[((b * H + h) * c->S + gi) * D + x] : NAN;
          const int64_t o = b * str[0] + h * str[1] + i * str[2] + x;
          if (es == 8) ((double *)mem)[o] = val;
          else if (es == 2) ((uint16_t *)(void *)mem)[o] = bf16_bits(val);
          else ((float *)mem)[o] = (float)val;
        }
      }
  attn_tensor *t = NULL;
  if (attn_tensor_wrap(ctx, c->dt, 4, shape, str, mem, &t) != ATTN_OK) abort();
  return t;
}

static void tfree(attn_tensor *t) {
  if (t == NULL) return;
  free(attn_tensor_data(t));
  attn_tensor_destroy(t);
}

static double get4(const attn_tensor *t, int64_t b, int64_t h, int64_t i, int64_t x) {
  const int64_t o = b * attn_tensor_stride(t, 0) + h * attn_tensor_stride(t, 1) +
                    i * attn_tensor_stride(t, 2) + (attn_tensor_rank(t) == 4 ? x * attn_tensor_stride(t, 3) : 0);
  if (attn_tensor_dtype(t) == ATTN_DTYPE_BF16) return bf16_value(((uint16_t *)attn_tensor_data(t))[o]);
  return attn_tensor_dtype(t) == ATTN_DTYPE_F64 ? ((double *)attn_tensor_data(t))[o]
                                                 : ((float *)attn_tensor_data(t))[o];
}

static size_t tbytes(const attn_tensor *t) {
  int64_t ext = 1;
  for (int i = 0; i < attn_tensor_rank(t); i++)
    ext += (attn_tensor_dim(t, i) - 1) * attn_tensor_stride(t, i);
  return (size_t)ext * dt_size(attn_tensor_dtype(t));
}

/* The case's descriptor: causal, window, global key/query lengths, softcap. */
static attn_desc *case_desc(attn_context *ctx, const mcase *c, const int64_t *klen,
                            const int64_t *qlen) {
  attn_desc *desc = NULL;
  attn_desc_create(ctx, &desc);
  attn_desc_set_causal(desc, (attn_causal)c->causal);
  attn_desc_set_window(desc, c->left < 0 ? ATTN_WINDOW_UNBOUNDED : c->left,
                       c->right < 0 ? ATTN_WINDOW_UNBOUNDED : c->right);
  if (c->klen) attn_desc_set_key_lengths(desc, klen, c->B);
  if (c->qlen) attn_desc_set_query_lengths(desc, qlen, c->B);
  if (c->softcap) attn_desc_set_softcap(desc, 2.5);
  return desc;
}

static void run_case(const mcase *c) {
  g_cases++;
  const int64_t B = c->B, H = c->H, G = c->Hkv, S = c->S, D = c->D, Dv = c->Dv;
  uint64_t seed = 0x1234567ULL + (uint64_t)S * 31 + (uint64_t)H;
  double *q = malloc(sizeof(double) * (size_t)(B * H * S * D));
  double *k = malloc(sizeof(double) * (size_t)(B * G * S * D));
  double *v = malloc(sizeof(double) * (size_t)(B * G * S * Dv));
  for (int64_t i = 0; i < B * H * S * D; i++) q[i] = 2.0 * rnd(&seed);
  for (int64_t i = 0; i < B * G * S * D; i++) k[i] = rnd(&seed);
  for (int64_t i = 0; i < B * G * S * Dv; i++) v[i] = rnd(&seed);
  if (c->dt == ATTN_DTYPE_F32) { /* the reference sees the f32 inputs */
    for (int64_t i = 0; i < B * H * S * D; i++) q[i] = (float)q[i];
    for (int64_t i = 0; i < B * G * S * D; i++) k[i] = (float)k[i];
    for (int64_t i = 0; i < B * G * S * Dv; i++) v[i] = (float)v[i];
  }
  if (c->dt == ATTN_DTYPE_BF16) { /* ... or the bf16 ones */
    for (int64_t i = 0; i < B * H * S * D; i++) q[i] = bf16_value(bf16_bits(q[i]));
    for (int64_t i = 0; i < B * G * S * D; i++) k[i] = bf16_value(bf16_bits(k[i]));
    for (int64_t i = 0; i < B * G * S * Dv; i++) v[i] = bf16_value(bf16_bits(v[i]));
  }
  /* bf16 inputs compute in f32: lse f32, out f32 (or bf16, "out_bf16" cases). */
  const attn_dtype cdt = c->dt == ATTN_DTYPE_BF16 ? ATTN_DTYPE_F32 : c->dt;
  mcase co = *c;
  co.dt = c->dt == ATTN_DTYPE_BF16 && strstr(c->name, "out_bf16") == NULL ? cdt : c->dt;
  int64_t klen[4], qlen[4];
  for (int64_t b = 0; b < B; b++) klen[b] = S - 1 - 3 * b, qlen[b] = S - 2 * b;
  double slopes[16];
  for (int64_t h = 0; h < H; h++) slopes[h] = 0.25 / (double)(h + 1);
  uint8_t *bm = NULL;
  ref_problem rp;
  ref_problem_init(&rp, B, H, S, S, D);
  rp.Hkv = G, rp.Dv = Dv, rp.causal = c->causal, rp.left = c->left, rp.right = c->right;
  if (c->klen) rp.key_len = klen;
  if (c->qlen) rp.query_len = qlen;
  if (c->softcap) rp.softcap = 2.5;
  if (c->alibi) rp.alibi = slopes;
  if (c->bool_mask) { /* [1, H, S, S] broadcast over the batch; the reference wants it dense */
    bm = malloc((size_t)(B * H * S * S));
    uint64_t s2 = 99;
    for (int64_t i = 0; i < H * S * S; i++) bm[i] = rnd(&s2) > -0.6;
    for (int64_t b = 1; b < B; b++) memcpy(bm + b * H * S * S, bm, (size_t)(H * S * S));
    rp.bool_mask = bm;
  }
  double *ro = malloc(sizeof(double) * (size_t)(B * H * S * Dv)), *rb = malloc(sizeof(double) * (size_t)(B * H * S * Dv));
  double *rl = malloc(sizeof(double) * (size_t)(B * H * S));
  ref_attention(&rp, q, k, v, ro, NULL, rl, rb);

  int64_t st[2], ln[2];
  my_runs(c, st, ln);
  double rtol = c->dt == ATTN_DTYPE_F64 ? 1e-12 : 1e-5 * sqrt(2.0), atol = c->dt == ATTN_DTYPE_F64 ? 1e-13 : 1e-6;
  if (c->dt == ATTN_DTYPE_BF16) /* attn.h's bf16 bound, plus a bf16 output's rounding */
    rtol = 2 * pow(2, -8) + (co.dt == ATTN_DTYPE_BF16 ? pow(2, -8) : 0), atol = 1e-6;
  const int threads[2] = {1, 3};
  unsigned char *first = NULL;
  size_t first_n = 0;
  for (int ti = 0; ti < 2; ti++) {
    counter cnt;
    attn_context *ctx = counted_context(&cnt, threads[ti]);
    attn_tensor *tq = shard(ctx, c, q, H, D, st, ln, c->bshd), *tk = shard(ctx, c, k, G, D, st, ln, c->bshd);
    attn_tensor *tv = shard(ctx, c, v, G, Dv, st, ln, c->bshd), *to = shard(ctx, &co, NULL, H, Dv, st, ln, c->bshd);
    const int64_t n = ln[0] + ln[1], lshape[3] = {B, H, n};
    attn_tensor *tl = NULL;
    attn_tensor_create(ctx, cdt, 3, lshape, &tl);
    attn_tensor *tm = NULL;
    if (bm) {
      int64_t ms[4] = {1, H, S, S};
      attn_tensor_wrap(ctx, ATTN_DTYPE_U8, 4, ms, NULL, bm, &tm);
    }
    attn_desc *desc = case_desc(ctx, c, klen, qlen);
    if (c->alibi) attn_desc_set_alibi(desc, slopes, H);
    if (tm) attn_desc_set_bool_mask(desc, tm);
    attn_mpi_config cfg;
    attn_mpi_config_init(&cfg);
    cfg.mode = c->mode;
    cfg.layout = c->layout;
    attn_mpi_plan *plan = NULL;
    attn_status s = attn_mpi_plan_create(ctx, MPI_COMM_WORLD, desc, &cfg, tq, tk, tv, to, tl, &plan);
    CHECK(s == ATTN_OK, "%s: plan: %s", c->name, attn_context_last_error(ctx));
    attn_desc_destroy(desc); /* plans keep what they need (borrowed arrays stay ours) */
    desc = NULL;
    if (s == ATTN_OK) {
      attn_mpi_stats stats;
      stats.struct_size = sizeof stats;
      CHECK(attn_mpi_plan_stats(plan, &stats) == ATTN_OK, "stats");
      if (c->want_mode != ATTN_MPI_MODE_AUTO)
        CHECK(stats.mode == c->want_mode, "%s: mode %d, expected %d", c->name, (int)stats.mode, (int)c->want_mode);
      CHECK(stats.ranks == g_size && stats.seq_len == S, "%s: stats", c->name);
      if (strstr(c->name, "skips_steps") != NULL && g_size >= 3)
        CHECK(stats.steps < g_size, "%s: %lld ring steps of %d, expected fewer", c->name,
              (long long)stats.steps, g_size);
      s = attn_mpi_plan_execute(plan, tq, tk, tv, to, tl);
      CHECK(s == ATTN_OK, "%s: execute: %s", c->name, attn_context_last_error(ctx));
      unsigned char *snap = malloc(tbytes(to) + tbytes(tl));
      memcpy(snap, attn_tensor_data(to), tbytes(to));
      memcpy(snap + tbytes(to), attn_tensor_data(tl), tbytes(tl));
      const int64_t allocs = cnt.allocs;
      s = attn_mpi_plan_execute(plan, tq, tk, tv, to, tl);
      CHECK(s == ATTN_OK, "%s: execute 2: %s", c->name, attn_context_last_error(ctx));
      CHECK(cnt.allocs == allocs, "%s: execute allocated through the context", c->name);
      CHECK(memcmp(snap, attn_tensor_data(to), tbytes(to)) == 0 &&
                memcmp(snap + tbytes(to), attn_tensor_data(tl), tbytes(tl)) == 0,
            "%s: a second execute differs", c->name);
      if (first == NULL) {
        first = snap, first_n = tbytes(to) + tbytes(tl);
      } else {
        CHECK(memcmp(first, snap, first_n) == 0, "%s: 1 and 3 threads differ", c->name);
        free(snap);
      }
      /* Against the reference, row by row at the global positions. */
      int64_t bad = 0;
      double maxe = 0;
      for (int64_t b = 0; b < B; b++)
        for (int64_t h = 0; h < H; h++)
          for (int64_t i = 0; i < n; i++) {
            const int64_t gi = i < ln[0] ? st[0] + i : st[1] + i - ln[0];
            const int64_t r = (b * H + h) * S + gi;
            for (int64_t x = 0; x < Dv; x++) {
              const double got = get4(to, b, h, i, x), want = ro[r * Dv + x];
              const double e = fabs(got - want);
              if (!(e <= rtol * rb[r * Dv + x] + atol)) bad++;
              if (e > maxe) maxe = e;
            }
            const double gl = get4(tl, b, h, i, 0), wl = rl[r];
            if (isinf(wl)) {
              if (!(isinf(gl) && gl < 0)) bad++;
            } else if (!(fabs(gl - wl) <= 10 * rtol * (1 + fabs(wl)))) {
              bad++;
            }
          }
      CHECK(bad == 0, "%s (%s, N=%d): %lld values outside the bound, max err %g", c->name,
            dt_name(c->dt), g_size, (long long)bad, maxe);
      if (g_rank == 0 && ti == 0)
        printf("ok %-34s %s np=%d mode=%s steps=%lld idle=%lld max_err=%.2g\n", c->name,
               dt_name(c->dt), g_size,
               stats.mode == ATTN_MPI_MODE_RING ? "ring" : "ulysses", (long long)stats.steps,
               (long long)stats.idle_steps, maxe);
    }
    attn_mpi_plan_destroy(plan);
    attn_desc_destroy(desc);
    tfree(tq), tfree(tk), tfree(tv), tfree(to);
    attn_tensor_destroy(tl);
    attn_tensor_destroy(tm);
    attn_context_destroy(ctx);
    CHECK_NO_LEAK(&cnt, c->name);
  }
  free(first);
  free(q), free(k), free(v), free(ro), free(rb), free(rl), free(bm);
}

/* ---- the backward over the ring ------------------------------------------------------ */

/* max |got − want| over this rank's rows of a global [B, H, S, D] array,
 * and max |want| over them. */
static void grad_err(const mcase *c, const attn_tensor *t, const double *want, int64_t H,
                     int64_t D, const int64_t st[2], const int64_t ln[2], double *err,
                     double *mag) {
  const int64_t n = ln[0] + ln[1];
  for (int64_t b = 0; b < c->B; b++)
    for (int64_t h = 0; h < H; h++)
      for (int64_t i = 0; i < n; i++) {
        const int64_t gi = i < ln[0] ? st[0] + i : st[1] + i - ln[0];
        for (int64_t x = 0; x < D; x++) {
          const double w = want[((b * H + h) * c->S + gi) * D + x], g = get4(t, b, h, i, x);
          const double e = fabs(g - w);
          if (!(e <= *err)) *err = isnan(e) ? INFINITY : e;
          if (fabs(w) > *mag) *mag = fabs(w);
        }
      }
}

/* The ring forward, then its backward: every rank's dq, dk, dv against the
 * naive f64 backward over the whole sequence (normwise: max error ≤ tol ·
 * max |gradient|), twice and on 1 and 3 threads bitwise identical, no
 * allocation in the backward's execute. */
static void run_bwd_case(const mcase *c) {
  g_cases++;
  const int64_t B = c->B, H = c->H, G = c->Hkv, S = c->S, D = c->D, Dv = c->Dv;
  uint64_t seed = 0xbadc0ffeULL + (uint64_t)S * 7 + (uint64_t)H;
  const size_t nq = (size_t)(B * H * S * D), nk = (size_t)(B * G * S * D),
               nv = (size_t)(B * G * S * Dv), no = (size_t)(B * H * S * Dv);
  double *q = malloc(sizeof(double) * nq), *k = malloc(sizeof(double) * nk);
  double *v = malloc(sizeof(double) * nv), *go = malloc(sizeof(double) * no);
  double *dq = malloc(sizeof(double) * nq), *dk = malloc(sizeof(double) * nk);
  double *dv = malloc(sizeof(double) * nv);
  for (size_t i = 0; i < nq; i++) q[i] = 2.0 * rnd(&seed);
  for (size_t i = 0; i < nk; i++) k[i] = rnd(&seed);
  for (size_t i = 0; i < nv; i++) v[i] = rnd(&seed);
  for (size_t i = 0; i < no; i++) go[i] = rnd(&seed);
  if (c->dt == ATTN_DTYPE_F32) {
    for (size_t i = 0; i < nq; i++) q[i] = (float)q[i];
    for (size_t i = 0; i < nk; i++) k[i] = (float)k[i];
    for (size_t i = 0; i < nv; i++) v[i] = (float)v[i];
    for (size_t i = 0; i < no; i++) go[i] = (float)go[i];
  }
  int64_t klen[4], qlen[4];
  for (int64_t b = 0; b < B; b++) klen[b] = S - 1 - 3 * b, qlen[b] = S - 2 * b;
  ref_problem rp;
  ref_problem_init(&rp, B, H, S, S, D);
  rp.Hkv = G, rp.Dv = Dv, rp.causal = c->causal, rp.left = c->left, rp.right = c->right;
  if (c->klen) rp.key_len = klen;
  if (c->qlen) rp.query_len = qlen;
  if (c->softcap) rp.softcap = 2.5;
  ref_attention_backward(&rp, q, k, v, go, dq, dk, dv);

  int64_t st[2], ln[2];
  my_runs(c, st, ln);
  const double tol = c->dt == ATTN_DTYPE_F64 ? 1e-10 : 5e-4;
  const int threads[2] = {1, 3};
  unsigned char *first = NULL;
  size_t first_n = 0;
  for (int ti = 0; ti < 2; ti++) {
    counter cnt;
    attn_context *ctx = counted_context(&cnt, threads[ti]);
    attn_tensor *tq = shard(ctx, c, q, H, D, st, ln, c->bshd), *tk = shard(ctx, c, k, G, D, st, ln, c->bshd);
    attn_tensor *tv = shard(ctx, c, v, G, Dv, st, ln, c->bshd), *to = shard(ctx, c, NULL, H, Dv, st, ln, c->bshd);
    attn_tensor *tgo = shard(ctx, c, go, H, Dv, st, ln, c->bshd);
    attn_tensor *tdq = shard(ctx, c, NULL, H, D, st, ln, c->bshd), *tdk = shard(ctx, c, NULL, G, D, st, ln, false);
    attn_tensor *tdv = shard(ctx, c, NULL, G, Dv, st, ln, c->bshd);
    const int64_t n = ln[0] + ln[1], lshape[3] = {B, H, n};
    attn_tensor *tl = NULL;
    attn_tensor_create(ctx, c->dt, 3, lshape, &tl);
    attn_desc *desc = case_desc(ctx, c, klen, qlen);
    attn_mpi_config cfg;
    attn_mpi_config_init(&cfg);
    cfg.mode = ATTN_MPI_MODE_RING;
    cfg.layout = c->layout;
    attn_mpi_plan *plan = NULL;
    attn_mpi_backward_plan *bplan = NULL;
    attn_status s = attn_mpi_plan_create(ctx, MPI_COMM_WORLD, desc, &cfg, tq, tk, tv, to, tl, &plan);
    CHECK(s == ATTN_OK, "%s: plan: %s", c->name, attn_context_last_error(ctx));
    attn_desc_destroy(desc);
    if (s == ATTN_OK) {
      s = attn_mpi_plan_execute(plan, tq, tk, tv, to, tl);
      CHECK(s == ATTN_OK, "%s: forward: %s", c->name, attn_context_last_error(ctx));
      s = attn_mpi_backward_plan_create(plan, tgo, tdq, tdk, tdv, &bplan);
      CHECK(s == ATTN_OK, "%s: backward plan: %s", c->name, attn_context_last_error(ctx));
    }
    if (s == ATTN_OK) {
      s = attn_mpi_backward_execute(bplan, tq, tk, tv, to, tl, tgo, tdq, tdk, tdv);
      CHECK(s == ATTN_OK, "%s: backward: %s", c->name, attn_context_last_error(ctx));
      const size_t b1 = tbytes(tdq), b2 = tbytes(tdk), b3 = tbytes(tdv);
      unsigned char *snap = malloc(b1 + b2 + b3);
      memcpy(snap, attn_tensor_data(tdq), b1);
      memcpy(snap + b1, attn_tensor_data(tdk), b2);
      memcpy(snap + b1 + b2, attn_tensor_data(tdv), b3);
      const int64_t allocs = cnt.allocs;
      s = attn_mpi_backward_execute(bplan, tq, tk, tv, to, tl, tgo, tdq, tdk, tdv);
      CHECK(s == ATTN_OK, "%s: backward 2: %s", c->name, attn_context_last_error(ctx));
      CHECK(cnt.allocs == allocs, "%s: the backward's execute allocated", c->name);
      CHECK(memcmp(snap, attn_tensor_data(tdq), b1) == 0 &&
                memcmp(snap + b1, attn_tensor_data(tdk), b2) == 0 &&
                memcmp(snap + b1 + b2, attn_tensor_data(tdv), b3) == 0,
            "%s: a second backward differs", c->name);
      if (first == NULL) {
        first = snap, first_n = b1 + b2 + b3;
      } else {
        CHECK(memcmp(first, snap, first_n) == 0, "%s: backward on 1 and 3 threads differs", c->name);
        free(snap);
      }
      double e[3] = {0, 0, 0}, m[3] = {0, 0, 0};
      grad_err(c, tdq, dq, H, D, st, ln, &e[0], &m[0]);
      grad_err(c, tdk, dk, G, D, st, ln, &e[1], &m[1]);
      grad_err(c, tdv, dv, G, Dv, st, ln, &e[2], &m[2]);
      /* The bound is on the whole gradient: take every rank's maxima. */
      double le[6] = {e[0], e[1], e[2], m[0], m[1], m[2]}, ge[6];
      MPI_Allreduce(le, ge, 6, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
      static const char *const nm[3] = {"dq", "dk", "dv"};
      for (int i = 0; i < 3; i++)
        CHECK(ge[i] <= tol * ge[3 + i], "%s (%s, N=%d): %s max error %g > %g · max|%s| %g", c->name,
              c->dt == ATTN_DTYPE_F64 ? "f64" : "f32", g_size, nm[i], ge[i], tol, nm[i], ge[3 + i]);
      if (g_rank == 0 && ti == 0)
        printf("ok backward %-34s %s np=%d rel_err dq %.2g dk %.2g dv %.2g\n", c->name,
               c->dt == ATTN_DTYPE_F64 ? "f64" : "f32", g_size, ge[0] / ge[3], ge[1] / ge[4],
               ge[2] / ge[5]);
    }
    attn_mpi_backward_plan_destroy(bplan);
    attn_mpi_plan_destroy(plan);
    tfree(tq), tfree(tk), tfree(tv), tfree(to), tfree(tgo), tfree(tdq), tfree(tdk), tfree(tdv);
    attn_tensor_destroy(tl);
    attn_context_destroy(ctx);
    CHECK_NO_LEAK(&cnt, c->name);
  }
  free(first);
  free(q), free(k), free(v), free(go), free(dq), free(dk), free(dv);
}

/* ---- faults ------------------------------------------------------------------------ */

typedef struct fx {
  counter cnt;
  attn_context *ctx;
  attn_desc *desc;
  attn_tensor *q, *k, *v, *out, *lse;
  mcase c;
  int64_t st[2], ln[2];
} fx;

static void fx_init(fx *f, int64_t H, attn_dtype dt, attn_mpi_layout layout) {
  memset(f, 0, sizeof *f);
  f->c = (mcase){"fault", dt, 2, H, H, 4 * g_size + 3, 8, 8, 1, -1, -1, false, false, false, false,
                 false, false, false, layout, ATTN_MPI_MODE_RING, ATTN_MPI_MODE_AUTO};
  f->ctx = counted_context(&f->cnt, 2);
  attn_desc_create(f->ctx, &f->desc);
  my_runs(&f->c, f->st, f->ln);
  double *g = calloc((size_t)(2 * H * f->c.S * 8), sizeof(double));
  f->q = shard(f->ctx, &f->c, g, H, 8, f->st, f->ln, false);
  f->k = shard(f->ctx, &f->c, g, H, 8, f->st, f->ln, false);
  f->v = shard(f->ctx, &f->c, g, H, 8, f->st, f->ln, false);
  f->out = shard(f->ctx, &f->c, NULL, H, 8, f->st, f->ln, false);
  memset(attn_tensor_data(f->out), 0xA5, tbytes(f->out));
  free(g);
}

static void fx_free(fx *f) {
  tfree(f->q), tfree(f->k), tfree(f->v), tfree(f->out), tfree(f->lse);
  attn_desc_destroy(f->desc);
  attn_context_destroy(f->ctx);
  CHECK_NO_LEAK(&f->cnt, "fault fixture (failed creates must free everything)");
}

static bool out_untouched(const fx *f) {
  const unsigned char *p = attn_tensor_data(f->out);
  for (size_t i = 0; i < tbytes(f->out); i++)
    if (p[i] != 0xA5) return false;
  return true;
}

/* Every rank must see `want` (and a message containing `msg` when given). */
static void expect_all(const char *name, attn_context *ctx, attn_status got, attn_status want,
                       const char *msg) {
  g_cases++;
  CHECK(got == want, "%s: status %d (%s), expected %d; message: %s", name, (int)got,
        attn_status_string(got), (int)want, attn_context_last_error(ctx));
  if (msg != NULL)
    CHECK(strstr(attn_context_last_error(ctx), msg) != NULL, "%s: message \"%s\" lacks \"%s\"",
          name, attn_context_last_error(ctx), msg);
  if (g_rank == 0) printf("ok fault %-40s -> %s\n", name, attn_status_string(want));
}

static attn_status create(fx *f, attn_mpi_mode mode, attn_mpi_plan **plan) {
  attn_mpi_config cfg;
  attn_mpi_config_init(&cfg);
  cfg.mode = mode;
  cfg.layout = f->c.layout;
  return attn_mpi_plan_create(f->ctx, MPI_COMM_WORLD, f->desc, &cfg, f->q, f->k, f->v, f->out,
                              f->lse, plan);
}

/* The backward's faults: a Ulysses or lse-less forward, one rank's wrong
 * gradient shape at creation, one rank's wrong dout at execute (nobody
 * writes dq), NULLs. */
static void bwd_faults(void) {
  const int last = g_size - 1;
  fx f;
  attn_mpi_plan *plan = NULL;
  attn_mpi_backward_plan *bp = NULL;
  fx_init(&f, g_size, ATTN_DTYPE_F32, ATTN_MPI_LAYOUT_CONTIGUOUS); /* H = N: Ulysses can run */
  const int64_t n = f.ln[0] + f.ln[1], lshape[3] = {f.c.B, f.c.H, n};
  attn_tensor *lse = NULL;
  attn_tensor_create(f.ctx, ATTN_DTYPE_F32, 3, lshape, &lse);
  attn_tensor *dout = shard(f.ctx, &f.c, NULL, f.c.H, 8, f.st, f.ln, false);
  attn_tensor *dq = shard(f.ctx, &f.c, NULL, f.c.H, 8, f.st, f.ln, false);
  attn_tensor *dk = shard(f.ctx, &f.c, NULL, f.c.H, 8, f.st, f.ln, false);
  attn_tensor *dv = shard(f.ctx, &f.c, NULL, f.c.H, 8, f.st, f.ln, false);
  memset(attn_tensor_data(dout), 0, tbytes(dout));
  attn_mpi_config cfg;
  attn_mpi_config_init(&cfg);
  cfg.mode = ATTN_MPI_MODE_ULYSSES;
  attn_status s = attn_mpi_plan_create(f.ctx, MPI_COMM_WORLD, f.desc, &cfg, f.q, f.k, f.v, f.out,
                                       lse, &plan);
  CHECK(s == ATTN_OK, "ulysses plan: %s", attn_context_last_error(f.ctx));
  s = attn_mpi_backward_plan_create(plan, dout, dq, dk, dv, &bp);
  expect_all("backward_of_ulysses", f.ctx, s, ATTN_ERR_UNSUPPORTED, "ATTN_MPI_MODE_RING");
  CHECK(bp == NULL, "backward plan handle");
  attn_mpi_plan_destroy(plan), plan = NULL;

  cfg.mode = ATTN_MPI_MODE_RING;
  s = attn_mpi_plan_create(f.ctx, MPI_COMM_WORLD, f.desc, &cfg, f.q, f.k, f.v, f.out, NULL, &plan);
  CHECK(s == ATTN_OK, "ring plan: %s", attn_context_last_error(f.ctx));
  s = attn_mpi_backward_plan_create(plan, dout, dq, dk, dv, &bp);
  expect_all("backward_without_lse", f.ctx, s, ATTN_ERR_INVALID_ARG, "lse");
  attn_mpi_plan_destroy(plan), plan = NULL;

  /* A projected score: the ring cannot sum weight gradients over ranks. */
  attn_desc *gd = NULL;
  attn_tensor *gw = NULL;
  const int64_t gws[2] = {8, 8};
  attn_desc_create(f.ctx, &gd);
  attn_tensor_create(f.ctx, ATTN_DTYPE_F32, 2, gws, &gw);
  memset(attn_tensor_data(gw), 0, tbytes(gw));
  attn_desc_set_score(gd, ATTN_SCORE_GENERAL);
  attn_desc_set_general_weight(gd, gw);
  s = attn_mpi_plan_create(f.ctx, MPI_COMM_WORLD, gd, &cfg, f.q, f.k, f.v, f.out, lse, &plan);
  CHECK(s == ATTN_OK, "general ring plan: %s", attn_context_last_error(f.ctx));
  if (s == ATTN_OK) {
    s = attn_mpi_backward_plan_create(plan, dout, dq, dk, dv, &bp);
    expect_all("backward_of_general_score", f.ctx, s, ATTN_ERR_UNSUPPORTED, "ring backward");
    attn_mpi_plan_destroy(plan), plan = NULL;
  }
  attn_tensor_destroy(gw);
  attn_desc_destroy(gd);

  s = attn_mpi_plan_create(f.ctx, MPI_COMM_WORLD, f.desc, &cfg, f.q, f.k, f.v, f.out, lse, &plan);
  CHECK(s == ATTN_OK, "ring plan: %s", attn_context_last_error(f.ctx));
  /* The last rank's dq has one row less than its shard. */
  attn_tensor *short_dq = NULL;
  const int64_t sh[4] = {f.c.B, f.c.H, n > 1 ? n - 1 : 2, 8};
  attn_tensor_create(f.ctx, ATTN_DTYPE_F32, 4, sh, &short_dq);
  s = attn_mpi_backward_plan_create(plan, dout, g_rank == last ? short_dq : dq, dk, dv, &bp);
  expect_all("backward_dq_shape_on_last_rank", f.ctx, s, ATTN_ERR_SHAPE,
             g_rank == last ? "dq:" : "failed");
  CHECK(bp == NULL, "backward plan handle");
  s = attn_mpi_backward_plan_create(plan, dout, dq, dk, NULL, &bp);
  expect_all("backward_dv_null", f.ctx, s, ATTN_ERR_NULL_ARG, "dv");
  s = attn_mpi_backward_plan_create(plan, dout, dq, dk, dv, NULL);
  expect_all("backward_plan_out_null", f.ctx, s, ATTN_ERR_NULL_ARG, "plan");
  CHECK(attn_mpi_backward_plan_create(NULL, dout, dq, dk, dv, &bp) == ATTN_ERR_NULL_ARG,
        "backward of NULL");
  s = attn_mpi_backward_plan_create(plan, dout, dq, dk, dv, &bp);
  CHECK(s == ATTN_OK, "backward plan: %s", attn_context_last_error(f.ctx));
  if (s == ATTN_OK) {
    s = attn_mpi_plan_execute(plan, f.q, f.k, f.v, f.out, lse);
    CHECK(s == ATTN_OK, "forward: %s", attn_context_last_error(f.ctx));
    memset(attn_tensor_data(dq), 0xA5, tbytes(dq));
    /* The last rank's dout has another shape than at plan time: every rank
     * fails, nobody writes dq. */
    s = attn_mpi_backward_execute(bp, f.q, f.k, f.v, f.out, lse,
                                  g_rank == last ? short_dq : dout, dq, dk, dv);
    expect_all("backward_dout_differs_on_last_rank", f.ctx, s, ATTN_ERR_MISMATCH,
               g_rank == last ? "dout" : "failed");
    const unsigned char *pq = attn_tensor_data(dq);
    bool untouched = true;
    for (size_t i = 0; i < tbytes(dq); i++) untouched = untouched && pq[i] == 0xA5;
    CHECK(untouched, "a failed backward wrote dq");
    s = attn_mpi_backward_execute(bp, f.q, f.k, f.v, f.out, NULL, dout, dq, dk, dv);
    expect_all("backward_lse_null", f.ctx, s, ATTN_ERR_NULL_ARG, "lse");
    s = attn_mpi_backward_execute(bp, f.q, f.k, f.v, f.out, lse, dout, dq, dk, dv);
    expect_all("backward_after_faults", f.ctx, s, ATTN_OK, NULL);
    CHECK(attn_mpi_backward_execute(NULL, f.q, f.k, f.v, f.out, lse, dout, dq, dk, dv) ==
              ATTN_ERR_NULL_ARG,
          "backward execute NULL");
  }
  attn_mpi_backward_plan_destroy(bp);
  attn_mpi_backward_plan_destroy(NULL);
  attn_mpi_plan_destroy(plan);
  attn_tensor_destroy(short_dq);
  attn_tensor_destroy(lse);
  tfree(dout), tfree(dq), tfree(dk), tfree(dv);
  fx_free(&f);

  /* bf16: Ulysses and the backward refuse it on every rank; lse must be f32. */
  fx_init(&f, g_size, ATTN_DTYPE_BF16, ATTN_MPI_LAYOUT_CONTIGUOUS);
  const int64_t n16 = f.ln[0] + f.ln[1], ls16[3] = {f.c.B, f.c.H, n16};
  attn_tensor *l32 = NULL, *l16 = NULL;
  attn_tensor_create(f.ctx, ATTN_DTYPE_F32, 3, ls16, &l32);
  attn_tensor_create(f.ctx, ATTN_DTYPE_BF16, 3, ls16, &l16);
  f.lse = l16;
  s = create(&f, ATTN_MPI_MODE_RING, &plan);
  expect_all("bf16_lse_must_be_f32", f.ctx, s, ATTN_ERR_DTYPE, "lse");
  f.lse = l32;
  s = create(&f, ATTN_MPI_MODE_ULYSSES, &plan);
  expect_all("bf16_ulysses_unsupported", f.ctx, s, ATTN_ERR_UNSUPPORTED, "bf16");
  s = create(&f, ATTN_MPI_MODE_RING, &plan);
  CHECK(s == ATTN_OK, "bf16 ring plan: %s", attn_context_last_error(f.ctx));
  if (s == ATTN_OK) {
    s = attn_mpi_backward_plan_create(plan, f.out, f.q, f.k, f.v, &bp);
    expect_all("bf16_backward_unsupported", f.ctx, s, ATTN_ERR_UNSUPPORTED, "bf16");
  }
  attn_mpi_plan_destroy(plan), plan = NULL;
  f.lse = NULL;
  attn_tensor_destroy(l32);
  attn_tensor_destroy(l16);
  fx_free(&f);
}

static void faults(void) {
  const int last = g_size - 1;
  fx f;
  attn_mpi_plan *plan = NULL;

  /* The last rank has another head count. */
  fx_init(&f, g_rank == last ? 4 : 2, ATTN_DTYPE_F32, ATTN_MPI_LAYOUT_CONTIGUOUS);
  attn_status s = create(&f, ATTN_MPI_MODE_RING, &plan);
  expect_all("shape_differs_on_last_rank", f.ctx, s, g_size > 1 ? ATTN_ERR_MISMATCH : ATTN_OK,
             g_size > 1 ? "heads H" : NULL);
  CHECK((plan != NULL) == (g_size == 1), "plan handle");
  attn_mpi_plan_destroy(plan), plan = NULL;
  fx_free(&f);

  /* Rank 0 computes in f64, the others in f32. */
  fx_init(&f, 2, g_rank == 0 ? ATTN_DTYPE_F64 : ATTN_DTYPE_F32, ATTN_MPI_LAYOUT_CONTIGUOUS);
  s = create(&f, ATTN_MPI_MODE_RING, &plan);
  expect_all("dtype_differs_on_rank_0", f.ctx, s, g_size > 1 ? ATTN_ERR_MISMATCH : ATTN_OK,
             g_size > 1 ? "dtype" : NULL);
  attn_mpi_plan_destroy(plan), plan = NULL;
  fx_free(&f);

  /* The last rank's descriptor is causal. */
  fx_init(&f, 2, ATTN_DTYPE_F32, ATTN_MPI_LAYOUT_CONTIGUOUS);
  if (g_rank == last) attn_desc_set_causal(f.desc, ATTN_CAUSAL_TOP_LEFT);
  s = create(&f, ATTN_MPI_MODE_RING, &plan);
  expect_all("causal_differs_on_last_rank", f.ctx, s, g_size > 1 ? ATTN_ERR_MISMATCH : ATTN_OK,
             g_size > 1 ? "causal" : NULL);
  attn_mpi_plan_destroy(plan), plan = NULL;
  fx_free(&f);

  /* The last rank passes no k: it says so, the others name it. */
  fx_init(&f, 2, ATTN_DTYPE_F32, ATTN_MPI_LAYOUT_CONTIGUOUS);
  attn_tensor *keep = f.k;
  if (g_rank == last) f.k = NULL;
  s = create(&f, ATTN_MPI_MODE_RING, &plan);
  expect_all("k_null_on_last_rank", f.ctx, s, ATTN_ERR_NULL_ARG, g_rank == last ? "k:" : "failed");
  f.k = keep;
  fx_free(&f);

  /* Zig-zag with contiguous shard sizes (wrong whenever they differ). */
  fx_init(&f, 2, ATTN_DTYPE_F32, ATTN_MPI_LAYOUT_CONTIGUOUS);
  f.c.layout = ATTN_MPI_LAYOUT_ZIGZAG;
  {
    int64_t zs[2], zl[2];
    bool differs = false;
    for (int r = 0; r < g_size; r++) {
      int64_t cs[2], cl[2];
      attn_mpi_shard(ATTN_MPI_LAYOUT_ZIGZAG, f.c.S, g_size, r, zs, zl);
      attn_mpi_shard(ATTN_MPI_LAYOUT_CONTIGUOUS, f.c.S, g_size, r, cs, cl);
      differs = differs || zl[0] + zl[1] != cl[0];
    }
    s = create(&f, ATTN_MPI_MODE_RING, &plan);
    expect_all("zigzag_with_wrong_shards", f.ctx, s, differs ? ATTN_ERR_SHAPE : ATTN_OK,
               differs ? "zig-zag" : NULL);
    attn_mpi_plan_destroy(plan), plan = NULL;
  }
  fx_free(&f);

  /* Ring with ALiBi, Ulysses with fewer heads than ranks: unsupported. */
  fx_init(&f, 1, ATTN_DTYPE_F32, ATTN_MPI_LAYOUT_CONTIGUOUS);
  double sl[1] = {0.5};
  attn_desc_set_alibi(f.desc, sl, 1);
  s = create(&f, ATTN_MPI_MODE_RING, &plan);
  expect_all("ring_with_alibi", f.ctx, s, ATTN_ERR_UNSUPPORTED, "alibi");
  attn_desc_set_alibi(f.desc, NULL, 0);
  s = create(&f, ATTN_MPI_MODE_ULYSSES, &plan);
  expect_all("ulysses_with_fewer_heads_than_ranks", f.ctx, s,
             g_size > 1 ? ATTN_ERR_UNSUPPORTED : ATTN_OK, g_size > 1 ? "heads" : NULL);
  attn_mpi_plan_destroy(plan), plan = NULL;
  fx_free(&f);

  /* Execute-time faults on a good plan. */
  fx_init(&f, 2, ATTN_DTYPE_F32, ATTN_MPI_LAYOUT_CONTIGUOUS);
  int64_t lens[2] = {f.c.S, f.c.S - 1};
  attn_desc_set_key_lengths(f.desc, lens, 2);
  s = create(&f, ATTN_MPI_MODE_RING, &plan);
  expect_all("good_plan", f.ctx, s, ATTN_OK, NULL);
  if (plan != NULL) {
    /* The plan talks on its own communicator, which returns errors. */
    MPI_Errhandler eh;
    MPI_Comm_get_errhandler(plan->comm, &eh);
    CHECK(eh == MPI_ERRORS_RETURN, "the plan's communicator must return MPI errors");
    MPI_Errhandler_free(&eh);
    int cmp = MPI_UNEQUAL;
    MPI_Comm_compare(plan->comm, MPI_COMM_WORLD, &cmp);
    CHECK(cmp == MPI_CONGRUENT, "the plan's communicator must be a duplicate");
    /* An MPI call on it with a bad argument comes back as a code, not an abort. */
    int rc = MPI_Send(NULL, -1, MPI_BYTE, 0, 0, plan->comm);
    CHECK(rc != MPI_SUCCESS, "MPI_Send with count -1 must fail");
    g_cases++;
    /* Last rank passes out as v: a mismatch there, a named failure elsewhere. */
    attn_tensor *bad = NULL;
    int64_t shp[4] = {2, 2, f.ln[0] + f.ln[1], 4};
    attn_tensor_wrap(f.ctx, ATTN_DTYPE_F32, 4, shp, NULL, attn_tensor_data(f.q), &bad);
    s = attn_mpi_plan_execute(plan, f.q, f.k, g_rank == last ? bad : f.v, f.out, NULL);
    expect_all("execute_wrong_v_on_last_rank", f.ctx, s, ATTN_ERR_MISMATCH, g_rank == last ? "v:" : "failed");
    attn_tensor_destroy(bad);
    CHECK(out_untouched(&f), "a failed execute wrote out");
    /* Lengths that differ between ranks. */
    if (g_rank == last) lens[1] = f.c.S - 2;
    s = attn_mpi_plan_execute(plan, f.q, f.k, f.v, f.out, NULL);
    expect_all("execute_lengths_differ", f.ctx, s, g_size > 1 ? ATTN_ERR_MISMATCH : ATTN_OK,
               g_size > 1 ? "key_lengths" : NULL);
    if (g_size > 1) CHECK(out_untouched(&f), "a failed execute wrote out");
    /* A length past S on one rank only. */
    lens[1] = g_rank == 0 ? f.c.S + 1 : f.c.S - 1;
    memset(attn_tensor_data(f.out), 0xA5, tbytes(f.out));
    s = attn_mpi_plan_execute(plan, f.q, f.k, f.v, f.out, NULL);
    expect_all("execute_length_past_s_on_rank_0", f.ctx, s, ATTN_ERR_INVALID_ARG,
               g_rank == 0 ? "key_lengths" : "rank 0 failed");
    CHECK(out_untouched(&f), "a failed execute wrote out");
    /* Back to good: works again. */
    lens[1] = f.c.S - 1;
    s = attn_mpi_plan_execute(plan, f.q, f.k, f.v, f.out, NULL);
    expect_all("execute_after_faults", f.ctx, s, ATTN_OK, NULL);
  }
  attn_mpi_plan_destroy(plan);
  fx_free(&f);

  /* Bad arguments that are the same everywhere. */
  fx_init(&f, 2, ATTN_DTYPE_F32, ATTN_MPI_LAYOUT_CONTIGUOUS);
  attn_mpi_config cfg;
  attn_mpi_config_init(&cfg);
  cfg.mode = (attn_mpi_mode)7;
  s = attn_mpi_plan_create(f.ctx, MPI_COMM_WORLD, f.desc, &cfg, f.q, f.k, f.v, f.out, NULL, &plan);
  expect_all("config_mode_7", f.ctx, s, ATTN_ERR_INVALID_ARG, "mode");
  s = attn_mpi_plan_create(f.ctx, MPI_COMM_WORLD, f.desc, NULL, f.q, f.k, f.v, f.out, NULL, NULL);
  expect_all("plan_out_null", f.ctx, s, ATTN_ERR_NULL_ARG, "plan");
  s = attn_mpi_plan_create(f.ctx, MPI_COMM_NULL, f.desc, NULL, f.q, f.k, f.v, f.out, NULL, &plan);
  expect_all("comm_null", f.ctx, s, ATTN_ERR_NULL_ARG, "comm");
  s = attn_mpi_plan_create(f.ctx, MPI_COMM_WORLD, NULL, NULL, f.q, f.k, f.v, f.out, NULL, &plan);
  expect_all("desc_null", f.ctx, s, ATTN_ERR_NULL_ARG, "desc");
  CHECK(attn_mpi_plan_execute(NULL, f.q, f.k, f.v, f.out, NULL) == ATTN_ERR_NULL_ARG, "execute NULL");
  attn_mpi_stats stats = {0};
  CHECK(attn_mpi_plan_stats(NULL, &stats) == ATTN_ERR_NULL_ARG, "stats NULL");
  attn_mpi_plan_destroy(NULL);
  int64_t s0[2], l0[2];
  CHECK(attn_mpi_shard(ATTN_MPI_LAYOUT_ZIGZAG, 3, 2, 0, s0, l0) == ATTN_OK && l0[0] + l0[1] == 1 && s0[0] == 0, "shard");
  CHECK(attn_mpi_shard(ATTN_MPI_LAYOUT_ZIGZAG, 1, 2, 0, s0, l0) == ATTN_ERR_INVALID_ARG, "shard S<N");
  CHECK(attn_mpi_shard(ATTN_MPI_LAYOUT_CONTIGUOUS, 10, 3, 3, s0, l0) == ATTN_ERR_INVALID_ARG, "shard rank");
  CHECK(attn_mpi_shard((attn_mpi_layout)5, 10, 3, 0, s0, l0) == ATTN_ERR_INVALID_ARG, "shard layout");
  CHECK(attn_mpi_shard(ATTN_MPI_LAYOUT_CONTIGUOUS, 10, 3, 0, NULL, l0) == ATTN_ERR_NULL_ARG, "shard null");
  fx_free(&f);
  bwd_faults();
}

int main(int argc, char **argv) {
  MPI_Init(&argc, &argv);
  MPI_Comm_rank(MPI_COMM_WORLD, &g_rank);
  MPI_Comm_size(MPI_COMM_WORLD, &g_size);
  const bool only_faults = argc > 1 && strcmp(argv[1], "faults") == 0;
  const bool only_cases = argc > 1 && strcmp(argv[1], "cases") == 0;
  const attn_dtype F32 = ATTN_DTYPE_F32, F64 = ATTN_DTYPE_F64, BF16 = ATTN_DTYPE_BF16;
  const attn_mpi_mode R = ATTN_MPI_MODE_RING, U = ATTN_MPI_MODE_ULYSSES, A = ATTN_MPI_MODE_AUTO;
  const attn_mpi_layout C = ATTN_MPI_LAYOUT_CONTIGUOUS, Z = ATTN_MPI_LAYOUT_ZIGZAG;
  /* name, dt, B, H, Hkv, S, D, Dv, causal, left, right, klen, qlen, bshd, uneven, softcap,
   * alibi, bool_mask, layout, mode, want_mode */
  const mcase cases[] = {
      {"ring_plain", F64, 1, 2, 2, 37, 8, 8, 0, -1, -1, 0, 0, 0, 0, 0, 0, 0, C, R, R},
      {"ring_plain_f32_bshd", F32, 2, 2, 1, 41, 16, 8, 0, -1, -1, 0, 0, 1, 0, 0, 0, 0, C, R, R},
      {"ring_causal_uneven", F64, 2, 3, 1, 45, 8, 12, 1, -1, -1, 0, 0, 0, 1, 0, 0, 0, C, R, R},
      {"ring_causal_zigzag", F64, 1, 4, 2, 50, 8, 8, 1, -1, -1, 0, 0, 0, 0, 0, 0, 0, Z, R, R},
      {"ring_causal_zigzag_f32", F32, 2, 2, 2, 33, 32, 32, 2, -1, -1, 0, 0, 1, 0, 0, 0, 0, Z, R, R},
      {"ring_causal_window_skips_steps", F64, 1, 2, 1, 64, 8, 8, 1, 5, -1, 0, 0, 0, 0, 0, 0, 0, C, R, R},
      {"ring_window_both_sides", F64, 2, 2, 2, 57, 8, 8, 0, 7, 3, 0, 0, 0, 1, 0, 0, 0, C, R, R},
      {"ring_window_zigzag", F32, 1, 2, 1, 48, 8, 8, 0, 4, 9, 0, 0, 0, 0, 0, 0, 0, Z, R, R},
      {"ring_padding_causal", F64, 2, 2, 1, 43, 8, 8, 1, -1, -1, 1, 1, 0, 1, 0, 0, 0, C, R, R},
      {"ring_padding_zigzag_softcap", F64, 2, 4, 4, 47, 8, 8, 0, -1, -1, 1, 0, 1, 0, 1, 0, 0, Z, R, R},
      /* Long enough for several query tiles per shard (tiles of ≥ 256 rows). */
      {"ring_long_causal_window_tiles", F64, 1, 1, 1, 1300, 4, 4, 1, 300, -1, 1, 0, 0, 1, 0, 0, 0, C, R, R},
      {"ring_long_zigzag_window_tiles", F32, 1, 2, 1, 1500, 8, 8, 0, 400, 150, 0, 0, 0, 0, 0, 0, 0, Z, R, R},
      /* bf16 inputs (f32 compute, out f32 or bf16): ring only, AUTO picks it. */
      {"ring_bf16", BF16, 1, 2, 2, 37, 16, 16, 0, -1, -1, 0, 0, 0, 1, 0, 0, 0, C, R, R},
      {"ring_bf16_causal_zigzag_gqa_out_bf16", BF16, 2, 4, 2, 50, 32, 32, 1, -1, -1, 1, 0, 1, 0, 0, 0, 0, Z, A, R},
      {"ulysses_plain", F64, 1, 4, 4, 39, 8, 8, 0, -1, -1, 0, 0, 0, 1, 0, 0, 0, C, U, U},
      {"ulysses_causal_gqa_zigzag", F64, 2, 4, 2, 44, 8, 16, 1, -1, -1, 0, 0, 1, 0, 0, 0, 0, Z, U, U},
      {"ulysses_mqa_f32", F32, 1, 4, 1, 35, 16, 16, 2, -1, -1, 1, 1, 0, 1, 0, 0, 0, C, U, U},
      {"ulysses_alibi_bool_mask_window", F64, 2, 4, 2, 36, 8, 8, 0, 6, 2, 1, 0, 0, 0, 0, 1, 1, C, U, U},
      {"auto_even_heads", F64, 1, 12, 12, 40, 8, 8, 1, -1, -1, 0, 0, 0, 0, 0, 0, 0, Z, A, U},
      {"auto_alibi_needs_ulysses", F64, 1, 4, 4, 30, 8, 8, 1, -1, -1, 0, 0, 0, 0, 0, 1, 0, C, A, U},
  };
  if (!only_faults)
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
      mcase c = cases[i];
      if (c.mode == U && c.H < g_size) continue; /* Ulysses needs H ≥ N (fault test covers it) */
      if (c.mode == A && c.want_mode == U && (c.H < g_size || (c.alibi == 0 && c.H % g_size))) c.want_mode = A;
      run_case(&c);
      /* The backward over the ring, for the ring's cases (dk in [B,H,S,D]
       * even when the rest is [B,S,H,D]: mixed strides). */
      if (c.mode == R && c.dt != BF16) run_bwd_case(&c);
    }
  if (!only_cases) faults();
  int all = 0;
  MPI_Allreduce(&g_fail, &all, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
  if (g_rank == 0) printf("%d cases on %d ranks: %s (%d failed checks)\n", g_cases, g_size, all ? "FAIL" : "PASS", all);
  MPI_Finalize();
  return all ? 1 : 0;
}

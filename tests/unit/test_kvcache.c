/* KV cache: sequences fed through the cache (prefill, decode steps,
 * speculative rollback, unequal lengths, ring buffers, growth) give the same
 * outputs as attention over the whole sequence computed by the naive f64
 * reference; decode is bitwise identical for 1..4 threads and allocates
 * nothing; bad input gives the documented status, names the argument and
 * leaves the cache unchanged. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cache/attend.h"
#include "testutil.h"

/* Garbage for rows the cache must ignore (beyond counts). */
#define JUNK 1.0e3

static attn_context *ctx_threads(int32_t n) {
  attn_context_options o;
  attn_context_options_init(&o);
  o.num_threads = n;
  attn_context *ctx = NULL;
  assert_int_equal(attn_context_create(&o, &ctx), ATTN_OK);
  return ctx;
}

static void tset(attn_tensor *t, int64_t a, int64_t b, int64_t c, int64_t d, double x) {
  int64_t off = a * attn_tensor_stride(t, 0) + b * attn_tensor_stride(t, 1) +
                c * attn_tensor_stride(t, 2) + d * attn_tensor_stride(t, 3);
  if (attn_tensor_dtype(t) == ATTN_DTYPE_F64)
    ((double *)attn_tensor_data(t))[off] = x;
  else
    ((float *)attn_tensor_data(t))[off] = (float)x;
}

static double tget(const attn_tensor *t, int64_t a, int64_t b, int64_t c, int64_t d) {
  int64_t off = a * attn_tensor_stride(t, 0) + b * attn_tensor_stride(t, 1) +
                c * attn_tensor_stride(t, 2) + d * attn_tensor_stride(t, 3);
  if (attn_tensor_dtype(t) == ATTN_DTYPE_F64) return ((const double *)attn_tensor_data(t))[off];
  return ((const float *)attn_tensor_data(t))[off];
}

static double lget(const attn_tensor *t, int64_t b, int64_t h, int64_t i) {
  int64_t off = b * attn_tensor_stride(t, 0) + h * attn_tensor_stride(t, 1) + i * attn_tensor_stride(t, 2);
  if (attn_tensor_dtype(t) == ATTN_DTYPE_F64) return ((const double *)attn_tensor_data(t))[off];
  return ((const float *)attn_tensor_data(t))[off];
}

/* ---- a sequence fed step by step vs the reference over the whole sequence ---- */

typedef struct seq_case {
  int64_t B, H, Hkv, Dk, Dv;
  int64_t T[4];          /* per-item sequence lengths */
  attn_dtype dt;
  attn_kvcache_mode mode;
  int64_t cap;
  bool grow;
  int causal;            /* 0 none (only with one step), 2 bottom-right */
  int64_t win_left;      /* −1: no window in the desc */
  int64_t ref_left;      /* the reference's window (−1 none) */
  bool alibi;
  double softcap, scale;
  int64_t prefill, step; /* rows in the first step / every later step */
  int64_t spec;          /* > 0: before each later step, append spec junk tokens,
                            attend them, roll back */
  bool bshd;             /* q/out/k_new in [B, S, H, D] memory */
  int32_t threads;
  bool count_allocs;     /* assert append + execute allocate nothing (except growth) */
  bool bf16;             /* bf16 storage: checked against a bound from the rounding */
} seq_case;

/* bf16 storage rounds each K and V element by a relative ε ≤ 2^-9. Rounding
 * V moves out by ≤ ε·Σ_j p_j|v_j| (the reference's bound); rounding K moves
 * each score by δ_j ≤ Δ = ε·scale·Σ_x|q_x k_x| ≤ ε·scale·max|q|·max|k|·d_k,
 * which moves out by ≤ (e^{2Δ} − 1)·Σ_j p_j|v_j| and lse by ≤ Δ. Softcap
 * only shrinks score differences; ALiBi adds none. */
#define BF16_EPS (1.0 / 512.0)
static double bf16_score_shift(const seq_case *c) {
  double scale = c->scale > 0 ? c->scale : 1.0 / sqrt((double)c->Dk);
  return BF16_EPS * scale * 2.0 /* max|q| */ * 1.0 /* max|k| */ * (double)c->Dk;
}

typedef struct step_io {
  int64_t n;
  attn_tensor *q, *out, *lse, *k, *v;
  attn_kvcache_plan *plan;
} step_io;

static void io_init(step_io *io, attn_context *ctx, attn_kvcache *cache, const attn_desc *d,
                    const seq_case *c, int64_t n) {
  io->n = n;
  io->q = tu_tensor4(ctx, c->dt, NULL, c->B, c->H, n, c->Dk, c->bshd);
  io->out = tu_tensor4(ctx, c->dt, NULL, c->B, c->H, n, c->Dv, c->bshd);
  int64_t ls[3] = {c->B, c->H, n};
  io->lse = tu_tensor(ctx, c->dt, NULL, 3, ls);
  io->k = tu_tensor4(ctx, c->dt, NULL, c->B, c->Hkv, n, c->Dk, c->bshd);
  io->v = tu_tensor4(ctx, c->dt, NULL, c->B, c->Hkv, n, c->Dv, c->bshd);
  attn_status st = attn_kvcache_plan_create(cache, d, io->q, io->out, io->lse, &io->plan);
  if (st != ATTN_OK) fail_msg("plan n=%lld: %s", (long long)n, attn_context_last_error(ctx));
}

static void io_free(step_io *io) {
  attn_kvcache_plan_destroy(io->plan);
  tu_tensor_free(io->q);
  tu_tensor_free(io->out);
  tu_tensor_free(io->lse);
  tu_tensor_free(io->k);
  tu_tensor_free(io->v);
}

/* Fill q/k/v rows i < counts[b] from the sequence at pos[b] + i (junk beyond). */
static void io_fill(step_io *io, const seq_case *c, const int64_t *pos, const int64_t *counts,
                    const double *q, const double *k, const double *v, int64_t Tmax) {
  for (int64_t b = 0; b < c->B; b++)
    for (int64_t i = 0; i < io->n; i++) {
      bool real = i < counts[b];
      int64_t t = pos[b] + i;
      for (int64_t h = 0; h < c->H; h++)
        for (int64_t x = 0; x < c->Dk; x++)
          tset(io->q, b, h, i, x, real ? q[((b * c->H + h) * Tmax + t) * c->Dk + x] : JUNK);
      for (int64_t h = 0; h < c->Hkv; h++) {
        for (int64_t x = 0; x < c->Dk; x++)
          tset(io->k, b, h, i, x, real ? k[((b * c->Hkv + h) * Tmax + t) * c->Dk + x] : JUNK);
        for (int64_t x = 0; x < c->Dv; x++)
          tset(io->v, b, h, i, x, real ? v[((b * c->Hkv + h) * Tmax + t) * c->Dv + x] : JUNK);
      }
    }
}

/* Runs the case; returns the max abs error. */
static double run_seq(const seq_case *c, uint64_t seed) {
  int64_t Tmax = 0;
  for (int64_t b = 0; b < c->B; b++) Tmax = c->T[b] > Tmax ? c->T[b] : Tmax;
  size_t nq = (size_t)(c->B * c->H * Tmax * c->Dk), nk = (size_t)(c->B * c->Hkv * Tmax * c->Dk);
  size_t nv = (size_t)(c->B * c->Hkv * Tmax * c->Dv), no = (size_t)(c->B * c->H * Tmax * c->Dv);
  size_t nl = (size_t)(c->B * c->H * Tmax);
  double *q = tu_random(nq, &seed), *k = tu_random(nk, &seed), *v = tu_random(nv, &seed);
  for (size_t i = 0; i < nq; i++) q[i] *= 2.0; /* peakier softmax */
  double *ro = calloc(no, 8), *rb = calloc(no, 8), *rl = calloc(nl, 8);
  double *go = calloc(no, 8), *gl = calloc(nl, 8);
  double slopes[64];
  for (int64_t h = 0; h < c->H; h++) slopes[h] = 0.03 * (double)(h + 1);

  ref_problem p;
  ref_problem_init(&p, c->B, c->H, Tmax, Tmax, c->Dk);
  p.Hkv = c->Hkv;
  p.Dv = c->Dv;
  p.causal = c->causal;
  p.scale = c->scale;
  p.key_len = c->T;
  p.query_len = c->T;
  p.left = c->ref_left;
  p.right = c->causal ? 0 : -1;
  p.alibi = c->alibi ? slopes : NULL;
  p.softcap = c->softcap;
  ref_attention(&p, q, k, v, ro, NULL, rl, rb);

  tu_counter cnt = {0};
  attn_context *ctx = c->count_allocs ? tu_counting_context(&cnt, c->threads) : ctx_threads(c->threads);
  assert_non_null(ctx);
  attn_kvcache_config cfg;
  attn_kvcache_config_init(&cfg);
  cfg.batch = c->B;
  cfg.heads_kv = c->Hkv;
  cfg.capacity = c->cap;
  cfg.d_k = c->Dk;
  cfg.d_v = c->Dv;
  cfg.dtype = c->dt;
  cfg.mode = c->mode;
  cfg.grow = c->grow;
  cfg.storage = c->bf16 ? ATTN_KVCACHE_STORE_BF16 : ATTN_KVCACHE_STORE_NATIVE;
  attn_kvcache *cache = NULL;
  if (attn_kvcache_create(ctx, &cfg, &cache) != ATTN_OK) fail_msg("create: %s", attn_context_last_error(ctx));
  attn_desc *d = NULL;
  assert_int_equal(attn_desc_create(ctx, &d), ATTN_OK);
  assert_int_equal(attn_desc_set_causal(d, c->causal ? ATTN_CAUSAL_BOTTOM_RIGHT : ATTN_CAUSAL_NONE), ATTN_OK);
  if (c->win_left >= 0) assert_int_equal(attn_desc_set_window(d, c->win_left, ATTN_WINDOW_UNBOUNDED), ATTN_OK);
  if (c->alibi) assert_int_equal(attn_desc_set_alibi(d, slopes, c->H), ATTN_OK);
  if (c->softcap > 0) assert_int_equal(attn_desc_set_softcap(d, c->softcap), ATTN_OK);
  if (c->scale > 0) assert_int_equal(attn_desc_set_scale(d, c->scale), ATTN_OK);

  step_io pre, stp, spc;
  io_init(&pre, ctx, cache, d, c, c->prefill);
  io_init(&stp, ctx, cache, d, c, c->step);
  if (c->spec > 0) io_init(&spc, ctx, cache, d, c, c->spec);

  int64_t pos[4] = {0}, counts[4], zeros[4] = {0};
  uint64_t junk_seed = seed ^ 0xABCDEF;
  for (int it = 0;; it++) {
    bool more = false;
    for (int64_t b = 0; b < c->B; b++) more |= pos[b] < c->T[b];
    if (!more) break;
    if (it > 0 && c->spec > 0) {
      /* Speculate spec junk tokens, attend them, then roll back. */
      double *jq = tu_random(nq, &junk_seed), *jk = tu_random(nk, &junk_seed), *jv = tu_random(nv, &junk_seed);
      for (int64_t b = 0; b < c->B; b++) counts[b] = pos[b] < c->T[b] ? c->spec : 0;
      for (int64_t b = 0; b < c->B; b++) if (pos[b] + c->spec > Tmax) counts[b] = 0; /* stay in the junk arrays */
      io_fill(&spc, c, pos, counts, jq, jk, jv, Tmax);
      assert_int_equal(attn_kvcache_append(cache, spc.k, spc.v, counts), ATTN_OK);
      assert_int_equal(attn_kvcache_plan_execute(spc.plan, spc.q, spc.out, spc.lse, counts), ATTN_OK);
      assert_int_equal(attn_kvcache_truncate(cache, pos), ATTN_OK);
      free(jq); free(jk); free(jv);
    }
    step_io *io = it == 0 ? &pre : &stp;
    bool all = true;
    for (int64_t b = 0; b < c->B; b++) {
      int64_t left = c->T[b] - pos[b];
      counts[b] = left < io->n ? left : io->n;
      all &= counts[b] == io->n;
    }
    io_fill(io, c, pos, counts, q, k, v, Tmax);
    int64_t allocs = cnt.allocs, cap = attn_kvcache_capacity(cache);
    assert_int_equal(attn_kvcache_append(cache, io->k, io->v, all ? NULL : counts), ATTN_OK);
    attn_status st = attn_kvcache_plan_execute(io->plan, io->q, io->out, io->lse, all ? NULL : counts);
    if (st != ATTN_OK) fail_msg("execute: %s", attn_context_last_error(ctx));
    if (c->count_allocs && it > 0 && attn_kvcache_capacity(cache) == cap)
      assert_int_equal(cnt.allocs, allocs);
    for (int64_t b = 0; b < c->B; b++) {
      assert_int_equal(attn_kvcache_length(cache, b), pos[b] + counts[b]);
      for (int64_t h = 0; h < c->H; h++)
        for (int64_t i = 0; i < io->n; i++) {
          double l = lget(io->lse, b, h, i);
          if (i >= counts[b]) { /* no query there: 0 and −inf */
            for (int64_t x = 0; x < c->Dv; x++) assert_true(tget(io->out, b, h, i, x) == 0.0);
            assert_true(isinf(l) && l < 0);
            continue;
          }
          size_t r = (size_t)((b * c->H + h) * Tmax + pos[b] + i);
          for (int64_t x = 0; x < c->Dv; x++) go[r * (size_t)c->Dv + (size_t)x] = tget(io->out, b, h, i, x);
          gl[r] = l;
        }
      pos[b] += counts[b];
    }
  }
  (void)zeros;
  /* Compare every position of every item. */
  bool f64 = c->dt == ATTN_DTYPE_F64;
  double rtol = f64 ? 1e-12 : 1e-5, ltol = rtol;
  if (c->bf16) {
    double shift = bf16_score_shift(c);
    rtol = BF16_EPS + expm1(2.0 * shift) + 1e-5;
    ltol = shift + 1e-5;
  }
  double max_err = 0;
  for (int64_t b = 0; b < c->B; b++)
    for (int64_t h = 0; h < c->H; h++) {
      size_t r0 = (size_t)((b * c->H + h) * Tmax);
      size_t n = (size_t)c->T[b] * (size_t)c->Dv, e;
      double me;
      e = tu_violations(go + r0 * (size_t)c->Dv, ro + r0 * (size_t)c->Dv, rb + r0 * (size_t)c->Dv,
                        n, rtol, f64 ? 1e-13 : 1e-6, &me);
      if (e) fail_msg("out: %zu of %zu elements off in item %lld head %lld (max err %g)", e, n,
                      (long long)b, (long long)h, me);
      max_err = me > max_err ? me : max_err;
      for (int64_t t = 0; t < c->T[b]; t++) {
        double want = rl[r0 + (size_t)t], got = gl[r0 + (size_t)t];
        if (isinf(want)) assert_true(isinf(got) && got < 0);
        else if (!(fabs(got - want) <= ltol * (1 + fabs(want))))
          fail_msg("lse: item %lld head %lld pos %lld: got %.9g want %.9g", (long long)b,
                   (long long)h, (long long)t, got, want);
      }
    }
  if (!c->bf16) assert_true(max_err <= (f64 ? 1e-12 : 1e-5));

  io_free(&pre);
  io_free(&stp);
  if (c->spec > 0) io_free(&spc);
  attn_desc_destroy(d);
  attn_kvcache_destroy(cache);
  attn_context_destroy(ctx);
  if (c->count_allocs) {
    assert_int_equal(cnt.outstanding_bytes, 0);
    assert_int_equal(cnt.allocs, cnt.frees);
  }
  free(q); free(k); free(v); free(ro); free(rb); free(rl); free(go); free(gl);
  return max_err;
}

static seq_case base_case(void) {
  seq_case c;
  memset(&c, 0, sizeof c);
  c.B = 1; c.H = 2; c.Hkv = 2; c.Dk = c.Dv = 32;
  c.T[0] = 200;
  c.dt = ATTN_DTYPE_F32;
  c.mode = ATTN_KVCACHE_LINEAR;
  c.cap = 256;
  c.causal = 2;
  c.win_left = c.ref_left = -1;
  c.prefill = c.step = 1;
  c.threads = 2;
  return c;
}

static void decode_steps_equal_full_causal_attention(void **state) {
  (void)state;
  seq_case c = base_case();
  c.T[0] = tu_quick() ? 1100 : 1200; /* several chunks of 512 */
  c.cap = 1300;
  print_message("f32 decode max err %.3g\n", run_seq(&c, 1));
  c.dt = ATTN_DTYPE_F64;
  c.T[0] = tu_quick() ? 300 : 700;
  print_message("f64 decode max err %.3g\n", run_seq(&c, 2));
  c = base_case();
  c.bshd = true;
  c.Dk = 48; c.Dv = 24; /* d_v ≠ d_k, strided q/out/k_new */
  run_seq(&c, 3);
  c.Dk = 19; c.Dv = 7; c.H = 6; c.Hkv = 2; c.T[0] = 120; /* dims off the vector width */
  c.step = 2;
  run_seq(&c, 4);
}

static void gqa_decode_equals_reference(void **state) {
  (void)state;
  seq_case c = base_case();
  c.H = 8; c.Hkv = 2; c.T[0] = 600; c.cap = 600; c.Dk = c.Dv = 64;
  run_seq(&c, 4);
  c.H = 3; c.Hkv = 1; c.T[0] = 90; c.cap = 100; /* MQA */
  run_seq(&c, 5);
}

static void unequal_batch_lengths_equal_reference(void **state) {
  (void)state;
  seq_case c = base_case();
  c.B = 3; c.H = 4; c.Hkv = 2;
  c.T[0] = 150; c.T[1] = 37; c.T[2] = 101;
  c.cap = 160;
  c.prefill = 20; /* split path with n > 1 and per-item counts */
  run_seq(&c, 6);
  c.prefill = 64; /* blocked path: an item shorter than the prefill */
  c.step = 3;
  run_seq(&c, 7);
}

static void prefill_then_decode_equals_reference(void **state) {
  (void)state;
  seq_case c = base_case();
  c.B = 2; c.H = 4; c.Hkv = 1; c.T[0] = 700; c.T[1] = 650; c.cap = 700;
  c.prefill = 600; /* blocked path over several key tiles */
  run_seq(&c, 8);
  c.prefill = 5; c.step = 4; /* split path, several queries per step */
  c.dt = ATTN_DTYPE_F64;
  run_seq(&c, 9);
}

static void rollback_then_different_tokens_equals_reference(void **state) {
  (void)state;
  seq_case c = base_case();
  c.B = 2; c.H = 4; c.Hkv = 2; c.T[0] = 60; c.T[1] = 45; c.cap = 80;
  c.prefill = 10; c.step = 2; c.spec = 4;
  run_seq(&c, 10);
  c.spec = 20; /* speculative batch through the blocked path */
  c.cap = 100;
  run_seq(&c, 11);
}

static void ring_equals_window_attention(void **state) {
  (void)state;
  seq_case c = base_case();
  c.mode = ATTN_KVCACHE_RING;
  c.cap = 64; /* W = 64: no desc window, the ring itself is the window */
  c.ref_left = 63;
  c.T[0] = 300;
  run_seq(&c, 12);
  c.cap = 700; c.ref_left = 699; c.T[0] = 1700; /* wraps inside a 512-key chunk */
  c.H = 4; c.Hkv = 2;
  run_seq(&c, 13);
  /* Window 40 in the desc, capacity 40 + 3: prefill of 4 and rollback of 3 stay exact. */
  c = base_case();
  c.mode = ATTN_KVCACHE_RING;
  c.B = 2; c.T[0] = 150; c.T[1] = 120;
  c.cap = 43; c.win_left = c.ref_left = 39;
  c.prefill = 4; c.step = 1; c.spec = 3;
  c.alibi = true;
  run_seq(&c, 14);
  /* Window 1 (each query sees only itself): a prefill as long as the ring. */
  c = base_case();
  c.mode = ATTN_KVCACHE_RING;
  c.cap = 50; c.win_left = c.ref_left = 0;
  c.prefill = 50; c.step = 7; c.T[0] = 200;
  run_seq(&c, 15);
}

static void window_alibi_softcap_equal_reference(void **state) {
  (void)state;
  seq_case c = base_case();
  c.H = 4; c.Hkv = 2; c.T[0] = 700; c.cap = 700;
  c.win_left = c.ref_left = 100;
  c.alibi = true;
  c.softcap = 2.0;
  c.scale = 0.3;
  run_seq(&c, 16);
  c.prefill = 300; c.step = 2;
  c.dt = ATTN_DTYPE_F64;
  run_seq(&c, 17);
}

static void growth_keeps_contents_and_plans(void **state) {
  (void)state;
  seq_case c = base_case();
  c.B = 2; c.T[0] = 300; c.T[1] = 170;
  c.cap = 4; c.grow = true; /* grows 4 → 8 → … → 512 while plans stay */
  c.count_allocs = true; /* allocations only in the appends that grow */
  c.prefill = 3;
  run_seq(&c, 18);
}

static void decode_allocates_nothing(void **state) {
  (void)state;
  seq_case c = base_case();
  c.H = 4; c.Hkv = 2; c.T[0] = 600; c.cap = 600; c.count_allocs = true;
  for (int32_t th = 1; th <= 3; th += 2) {
    c.threads = th;
    run_seq(&c, 19);
  }
  c.spec = 3; c.prefill = 20; c.step = 2; c.T[0] = 100; c.threads = 2;
  run_seq(&c, 20);
}

/* Cross-attention to cached encoder keys: no causal mask, all n queries see everything. */
static void non_causal_cache_equals_reference(void **state) {
  (void)state;
  attn_context *ctx = ctx_threads(2);
  int64_t B = 2, H = 4, Hkv = 2, S = 333, n = 7, D = 16;
  int64_t klen[2] = {333, 210};
  uint64_t seed = 21;
  double *q = tu_random((size_t)(B * H * n * D), &seed), *k = tu_random((size_t)(B * Hkv * S * D), &seed);
  double *v = tu_random((size_t)(B * Hkv * S * D), &seed);
  for (int dti = 0; dti < 2; dti++) {
    attn_dtype dt = dti ? ATTN_DTYPE_F64 : ATTN_DTYPE_F32;
    attn_kvcache_config cfg;
    attn_kvcache_config_init(&cfg);
    cfg.batch = B; cfg.heads_kv = Hkv; cfg.capacity = S; cfg.d_k = D; cfg.dtype = dt;
    attn_kvcache *cache;
    assert_int_equal(attn_kvcache_create(ctx, &cfg, &cache), ATTN_OK);
    attn_tensor *tk = tu_tensor4(ctx, dt, k, B, Hkv, S, D, false), *tv = tu_tensor4(ctx, dt, v, B, Hkv, S, D, false);
    assert_int_equal(attn_kvcache_append(cache, tk, tv, klen), ATTN_OK);
    attn_tensor *tq = tu_tensor4(ctx, dt, q, B, H, n, D, false), *to = tu_tensor4(ctx, dt, NULL, B, H, n, D, false);
    attn_desc *d;
    assert_int_equal(attn_desc_create(ctx, &d), ATTN_OK);
    for (int64_t nn = 0; nn < 2; nn++) {
      /* n = 7 (split path); then the same through a blocked plan (n = 7 > limit forced below). */
      attn_kvcache_plan *plan;
      assert_int_equal(attn_kvcache_plan_create(cache, d, tq, to, NULL, &plan), ATTN_OK);
      if (nn == 1) { /* force the blocked path: same plan, internal switch (workspace fits: R = G·n) */
        plan->split = false;
        plan->bq = 2;
      }
      assert_int_equal(attn_kvcache_plan_execute(plan, tq, to, NULL, NULL), ATTN_OK);
      ref_problem p;
      ref_problem_init(&p, B, H, n, S, D);
      p.Hkv = Hkv;
      p.key_len = klen;
      double *ro = malloc((size_t)(B * H * n * D) * 8), *rb = malloc((size_t)(B * H * n * D) * 8);
      double *go = malloc((size_t)(B * H * n * D) * 8);
      ref_attention(&p, q, k, v, ro, NULL, NULL, rb);
      tu_read(to, go);
      double me;
      assert_int_equal(tu_violations(go, ro, rb, (size_t)(B * H * n * D), dti ? 1e-12 : 1e-5, dti ? 1e-13 : 1e-6, &me), 0);
      free(ro); free(rb); free(go);
      attn_kvcache_plan_destroy(plan);
    }
    attn_desc_destroy(d);
    tu_tensor_free(tk); tu_tensor_free(tv); tu_tensor_free(tq); tu_tensor_free(to);
    attn_kvcache_destroy(cache);
  }
  free(q); free(k); free(v);
  attn_context_destroy(ctx);
}

/* ---- determinism ------------------------------------------------------------------ */

/* Decode against a long cache with 1..4 threads (and with the partials forced
 * into one-chunk waves): out and lse are bitwise identical. */
static void decode_bitwise_identical_across_threads(void **state) {
  (void)state;
  const int64_t B = 2, H = 8, Hkv = 2, L = 3000, D = 64;
  uint64_t seed = 77;
  double *k = tu_random((size_t)(B * Hkv * L * D), &seed), *v = tu_random((size_t)(B * Hkv * L * D), &seed);
  int64_t lens[2] = {3000, 2222};
  const int64_t ns[3] = {1, 3, 40};
  for (int ni = 0; ni < 3; ni++) {
    int64_t n = ns[ni];
    double *q = tu_random((size_t)(B * H * n * D), &seed);
    void *first = NULL, *first_lse = NULL;
    size_t ob = (size_t)(B * H * n * D) * 4, lb = (size_t)(B * H * n) * 4;
    for (int32_t th = 1; th <= 4; th++)
      for (int waves = 0; waves < (th == 1 && n <= ATTN_KV_SPLIT_MAX_N ? 2 : 1); waves++) {
        attn_context *ctx = ctx_threads(th);
        attn_kvcache_config cfg;
        attn_kvcache_config_init(&cfg);
        cfg.batch = B; cfg.heads_kv = Hkv; cfg.capacity = L; cfg.d_k = D;
        attn_kvcache *cache;
        assert_int_equal(attn_kvcache_create(ctx, &cfg, &cache), ATTN_OK);
        attn_tensor *tk = tu_tensor4(ctx, ATTN_DTYPE_F32, k, B, Hkv, L, D, false);
        attn_tensor *tv = tu_tensor4(ctx, ATTN_DTYPE_F32, v, B, Hkv, L, D, false);
        assert_int_equal(attn_kvcache_append(cache, tk, tv, lens), ATTN_OK);
        attn_tensor *tq = tu_tensor4(ctx, ATTN_DTYPE_F32, q, B, H, n, D, false);
        attn_tensor *to = tu_tensor4(ctx, ATTN_DTYPE_F32, NULL, B, H, n, D, false);
        int64_t ls[3] = {B, H, n};
        attn_tensor *tl = tu_tensor(ctx, ATTN_DTYPE_F32, NULL, 3, ls);
        attn_desc *d;
        assert_int_equal(attn_desc_create(ctx, &d), ATTN_OK);
        assert_int_equal(attn_desc_set_causal(d, ATTN_CAUSAL_BOTTOM_RIGHT), ATTN_OK);
        attn_kvcache_plan *plan;
        assert_int_equal(attn_kvcache_plan_create(cache, d, tq, to, tl, &plan), ATTN_OK);
        if (waves) {
          assert_true(plan->split && plan->wave > 1);
          plan->wave = 1; /* many waves of one chunk: the same sequential fold */
        }
        assert_int_equal(attn_kvcache_plan_execute(plan, tq, to, tl, NULL), ATTN_OK);
        if (first == NULL) {
          first = malloc(ob);
          first_lse = malloc(lb);
          memcpy(first, attn_tensor_data(to), ob);
          memcpy(first_lse, attn_tensor_data(tl), lb);
        } else {
          assert_memory_equal(first, attn_tensor_data(to), ob);
          assert_memory_equal(first_lse, attn_tensor_data(tl), lb);
        }
        attn_kvcache_plan_destroy(plan);
        attn_desc_destroy(d);
        tu_tensor_free(tk); tu_tensor_free(tv); tu_tensor_free(tq); tu_tensor_free(to); tu_tensor_free(tl);
        attn_kvcache_destroy(cache);
        attn_context_destroy(ctx);
      }
    free(first); free(first_lse); free(q);
  }
  free(k); free(v);
}

/* ---- the store: views, lengths, footprint ------------------------------------------ */

static void views_show_stored_rows(void **state) {
  (void)state;
  attn_context *ctx = ctx_threads(1);
  for (int mode = 0; mode < 2; mode++) {
    attn_kvcache_config cfg;
    attn_kvcache_config_init(&cfg);
    cfg.batch = 2; cfg.heads_kv = 3; cfg.capacity = 5; cfg.d_k = 4; cfg.d_v = 2;
    cfg.mode = mode ? ATTN_KVCACHE_RING : ATTN_KVCACHE_LINEAR;
    attn_kvcache *cache;
    assert_int_equal(attn_kvcache_create(ctx, &cfg, &cache), ATTN_OK);
    assert_true(attn_kvcache_memory_size(cache) >= (size_t)(2 * 3 * 5 * (4 + 2)) * 4);
    assert_int_equal(attn_kvcache_capacity(cache), 5);
    attn_tensor *vk, *vv;
    assert_int_equal(attn_kvcache_view(cache, &vk, &vv), ATTN_OK);
    assert_int_equal(attn_tensor_dim(vk, 2), 5);
    assert_int_equal(attn_tensor_dim(vv, 3), 2);
    /* Append 3 rows per step; element value encodes (b, h, position, x). */
    int64_t counts[2] = {mode ? 3 : 2, 1};
    int64_t pos[2] = {0, 0};
    for (int step = 0; step < (mode ? 3 : 2); step++) {
      attn_tensor *k = tu_tensor4(ctx, ATTN_DTYPE_F32, NULL, 2, 3, 3, 4, step == 1);
      attn_tensor *v = tu_tensor4(ctx, ATTN_DTYPE_F32, NULL, 2, 3, 3, 2, false);
      for (int64_t b = 0; b < 2; b++)
        for (int64_t h = 0; h < 3; h++)
          for (int64_t i = 0; i < 3; i++) {
            for (int64_t x = 0; x < 4; x++) tset(k, b, h, i, x, (double)(1000 * b + 100 * h + 10 * (pos[b] + i) + x));
            for (int64_t x = 0; x < 2; x++) tset(v, b, h, i, x, -(double)(1000 * b + 100 * h + 10 * (pos[b] + i) + x));
          }
      assert_int_equal(attn_kvcache_append(cache, k, v, counts), ATTN_OK);
      pos[0] += counts[0];
      pos[1] += counts[1];
      tu_tensor_free(k);
      tu_tensor_free(v);
    }
    for (int64_t b = 0; b < 2; b++) {
      int64_t len = attn_kvcache_length(cache, b), first = attn_kvcache_first(cache, b);
      assert_int_equal(len, pos[b]);
      assert_int_equal(first, mode ? (len > 5 ? len - 5 : 0) : 0);
      for (int64_t h = 0; h < 3; h++)
        for (int64_t p = first; p < len; p++) {
          int64_t r = mode ? p % 5 : p;
          for (int64_t x = 0; x < 4; x++)
            assert_true(tget(vk, b, h, r, x) == (double)(1000 * b + 100 * h + 10 * p + x));
          for (int64_t x = 0; x < 2; x++)
            assert_true(tget(vv, b, h, r, x) == -(double)(1000 * b + 100 * h + 10 * p + x));
        }
    }
    assert_int_equal(attn_kvcache_length(cache, 2), -1);
    assert_int_equal(attn_kvcache_first(NULL, 0), -1);
    int64_t zero[2] = {mode ? attn_kvcache_first(cache, 0) : 0, mode ? attn_kvcache_first(cache, 1) : 0};
    assert_int_equal(attn_kvcache_truncate(cache, zero), ATTN_OK);
    assert_int_equal(attn_kvcache_length(cache, 0), zero[0]);
    if (mode) { /* more rows than the ring holds: only the last 5 are kept */
      int64_t len0 = attn_kvcache_length(cache, 0);
      attn_tensor *k = tu_tensor4(ctx, ATTN_DTYPE_F32, NULL, 2, 3, 7, 4, false);
      attn_tensor *v = tu_tensor4(ctx, ATTN_DTYPE_F32, NULL, 2, 3, 7, 2, false);
      for (int64_t i = 0; i < 7; i++) {
        tset(k, 0, 1, i, 2, (double)(len0 + i));
        tset(v, 0, 1, i, 1, (double)(len0 + i));
      }
      assert_int_equal(attn_kvcache_append(cache, k, v, NULL), ATTN_OK);
      assert_int_equal(attn_kvcache_length(cache, 0), len0 + 7);
      assert_int_equal(attn_kvcache_first(cache, 0), len0 + 2);
      for (int64_t p = len0 + 2; p < len0 + 7; p++) {
        assert_true(tget(vk, 0, 1, p % 5, 2) == (double)p);
        assert_true(tget(vv, 0, 1, p % 5, 1) == (double)p);
      }
      tu_tensor_free(k);
      tu_tensor_free(v);
    }
    attn_tensor_destroy(vk);
    attn_tensor_destroy(vv);
    attn_kvcache_destroy(cache);
  }
  assert_int_equal(attn_kvcache_capacity(NULL), 0);
  assert_int_equal(attn_kvcache_memory_size(NULL), 0);
  attn_kvcache_destroy(NULL);
  attn_kvcache_plan_destroy(NULL);
  assert_int_equal(attn_kvcache_plan_workspace_size(NULL), 0);
  attn_context_destroy(ctx);
}

/* ---- bad input ----------------------------------------------------------------------- */

typedef struct snapshot {
  void *k, *v;
  size_t kb, vb;
  int64_t len[4], first[4], cap;
} snapshot;

static void snap(attn_kvcache *c, snapshot *s) {
  memset(s, 0, sizeof *s);
  attn_tensor *vk, *vv;
  assert_int_equal(attn_kvcache_view(c, &vk, &vv), ATTN_OK);
  s->kb = (size_t)attn_tensor_numel(vk) * 4;
  s->vb = (size_t)attn_tensor_numel(vv) * 4;
  s->k = malloc(s->kb);
  s->v = malloc(s->vb);
  memcpy(s->k, attn_tensor_data(vk), s->kb);
  memcpy(s->v, attn_tensor_data(vv), s->vb);
  for (int64_t b = 0; b < attn_tensor_dim(vk, 0); b++) {
    s->len[b] = attn_kvcache_length(c, b);
    s->first[b] = attn_kvcache_first(c, b);
  }
  s->cap = attn_kvcache_capacity(c);
  attn_tensor_destroy(vk);
  attn_tensor_destroy(vv);
}

static void assert_unchanged(attn_kvcache *c, const snapshot *s) {
  snapshot now;
  snap(c, &now);
  assert_int_equal(now.cap, s->cap);
  assert_int_equal(now.kb, s->kb);
  assert_memory_equal(now.k, s->k, s->kb);
  assert_memory_equal(now.v, s->v, s->vb);
  assert_memory_equal(now.len, s->len, sizeof s->len);
  assert_memory_equal(now.first, s->first, sizeof s->first);
  free(now.k);
  free(now.v);
}

#define EXPECT_FAIL(ctx, call, status, needle)                                           \
  do {                                                                                 \
    attn_status st_ = (call);                                                          \
    if (st_ != (status))                                                               \
      fail_msg("%s: status %d, want %d (%s)", #call, (int)st_, (int)(status),          \
               attn_context_last_error(ctx));                                          \
    if (strstr(attn_context_last_error(ctx), (needle)) == NULL)                       \
      fail_msg("%s: message '%s' does not name '%s'", #call, attn_context_last_error(ctx), \
               (needle));                                                              \
  } while (0)

static void bad_append_and_truncate_leave_cache_unchanged(void **state) {
  (void)state;
  attn_context *ctx = ctx_threads(1);
  attn_kvcache_config cfg;
  attn_kvcache_config_init(&cfg);
  cfg.batch = 2; cfg.heads_kv = 2; cfg.capacity = 6; cfg.d_k = 4;
  attn_kvcache *cache;
  assert_int_equal(attn_kvcache_create(ctx, &cfg, &cache), ATTN_OK);
  uint64_t seed = 3;
  double *x = tu_random(2 * 2 * 8 * 5, &seed);
  attn_tensor *k4 = tu_tensor4(ctx, ATTN_DTYPE_F32, x, 2, 2, 4, 4, false);
  attn_tensor *v4 = tu_tensor4(ctx, ATTN_DTYPE_F32, x + 7, 2, 2, 4, 4, false);
  int64_t c41[2] = {4, 1};
  assert_int_equal(attn_kvcache_append(cache, k4, v4, c41), ATTN_OK);
  snapshot s;
  snap(cache, &s);

  /* Item 0 holds 4 of 6: 4 more do not fit (item 1 would). */
  EXPECT_FAIL(ctx, attn_kvcache_append(cache, k4, v4, NULL), ATTN_ERR_CAPACITY, "k_new");
  assert_unchanged(cache, &s);
  int64_t c_bad[2] = {1, 5};
  EXPECT_FAIL(ctx, attn_kvcache_append(cache, k4, v4, c_bad), ATTN_ERR_INVALID_ARG, "counts[1]");
  int64_t c_neg[2] = {-1, 0};
  EXPECT_FAIL(ctx, attn_kvcache_append(cache, k4, v4, c_neg), ATTN_ERR_INVALID_ARG, "counts[0]");
  EXPECT_FAIL(ctx, attn_kvcache_append(cache, NULL, v4, NULL), ATTN_ERR_NULL_ARG, "k_new");
  EXPECT_FAIL(ctx, attn_kvcache_append(cache, k4, NULL, NULL), ATTN_ERR_NULL_ARG, "v_new");
  assert_int_equal(attn_kvcache_append(NULL, k4, v4, NULL), ATTN_ERR_NULL_ARG);
  attn_tensor *wrong_h = tu_tensor4(ctx, ATTN_DTYPE_F32, x, 2, 1, 1, 4, false);
  attn_tensor *wrong_d = tu_tensor4(ctx, ATTN_DTYPE_F32, x, 2, 2, 1, 5, false);
  attn_tensor *wrong_b = tu_tensor4(ctx, ATTN_DTYPE_F32, x, 1, 2, 1, 4, false);
  attn_tensor *wrong_n = tu_tensor4(ctx, ATTN_DTYPE_F32, x, 2, 2, 2, 4, false);
  attn_tensor *ok1 = tu_tensor4(ctx, ATTN_DTYPE_F32, x, 2, 2, 1, 4, false);
  attn_tensor *f64 = tu_tensor4(ctx, ATTN_DTYPE_F64, x, 2, 2, 1, 4, false);
  int64_t sh3[3] = {2, 2, 4};
  attn_tensor *rank3 = tu_tensor(ctx, ATTN_DTYPE_F32, x, 3, sh3);
  EXPECT_FAIL(ctx, attn_kvcache_append(cache, wrong_h, ok1, NULL), ATTN_ERR_SHAPE, "k_new");
  EXPECT_FAIL(ctx, attn_kvcache_append(cache, wrong_d, ok1, NULL), ATTN_ERR_SHAPE, "k_new");
  EXPECT_FAIL(ctx, attn_kvcache_append(cache, wrong_b, ok1, NULL), ATTN_ERR_SHAPE, "k_new");
  EXPECT_FAIL(ctx, attn_kvcache_append(cache, ok1, wrong_n, NULL), ATTN_ERR_SHAPE, "v_new");
  EXPECT_FAIL(ctx, attn_kvcache_append(cache, ok1, wrong_d, NULL), ATTN_ERR_SHAPE, "v_new");
  EXPECT_FAIL(ctx, attn_kvcache_append(cache, f64, ok1, NULL), ATTN_ERR_DTYPE, "k_new");
  EXPECT_FAIL(ctx, attn_kvcache_append(cache, ok1, f64, NULL), ATTN_ERR_DTYPE, "v_new");
  EXPECT_FAIL(ctx, attn_kvcache_append(cache, rank3, ok1, NULL), ATTN_ERR_SHAPE, "k_new");
  assert_unchanged(cache, &s);

  int64_t too_long[2] = {4, 2}, neg[2] = {-1, 0}, fine[2] = {2, 1};
  EXPECT_FAIL(ctx, attn_kvcache_truncate(cache, too_long), ATTN_ERR_INVALID_ARG, "lengths[1]");
  EXPECT_FAIL(ctx, attn_kvcache_truncate(cache, neg), ATTN_ERR_INVALID_ARG, "lengths[0]");
  EXPECT_FAIL(ctx, attn_kvcache_truncate(cache, NULL), ATTN_ERR_NULL_ARG, "lengths");
  assert_int_equal(attn_kvcache_truncate(NULL, fine), ATTN_ERR_NULL_ARG);
  assert_unchanged(cache, &s);
  EXPECT_FAIL(ctx, attn_kvcache_view(cache, NULL, NULL), ATTN_ERR_NULL_ARG, "k");
  assert_int_equal(attn_kvcache_truncate(cache, fine), ATTN_OK);
  assert_int_equal(attn_kvcache_length(cache, 0), 2);
  free(s.k); free(s.v);

  /* Ring: cannot roll back below the oldest stored position (other than
   * to 0, a reset: ring_truncate_to_zero_resets). */
  attn_kvcache *ring;
  cfg.mode = ATTN_KVCACHE_RING;
  cfg.capacity = 2;
  assert_int_equal(attn_kvcache_create(ctx, &cfg, &ring), ATTN_OK);
  assert_int_equal(attn_kvcache_append(ring, k4, v4, c41), ATTN_OK); /* item 0: positions 2..3 */
  snap(ring, &s);
  int64_t below[2] = {1, 1};
  EXPECT_FAIL(ctx, attn_kvcache_truncate(ring, below), ATTN_ERR_INVALID_ARG, "lengths[0]");
  assert_unchanged(ring, &s);
  free(s.k); free(s.v);
  attn_kvcache_destroy(ring);

  tu_tensor_free(k4); tu_tensor_free(v4); tu_tensor_free(wrong_h); tu_tensor_free(wrong_d);
  tu_tensor_free(wrong_b); tu_tensor_free(wrong_n); tu_tensor_free(ok1); tu_tensor_free(f64);
  tu_tensor_free(rank3);
  attn_kvcache_destroy(cache);
  free(x);
  attn_context_destroy(ctx);
}

static void bad_config_is_rejected(void **state) {
  (void)state;
  tu_counter cnt = {0};
  attn_context *ctx = tu_counting_context(&cnt, 1);
  attn_kvcache *cache = (attn_kvcache *)(uintptr_t)0x1; /* canary: must stay */
  attn_kvcache_config cfg;
#define BAD_CFG(field, value, status, needle)                               \
  do {                                                                      \
    attn_kvcache_config_init(&cfg);                                         \
    cfg.capacity = 8;                                                       \
    cfg.d_k = 4;                                                            \
    cfg.field = value;                                                      \
    EXPECT_FAIL(ctx, attn_kvcache_create(ctx, &cfg, &cache), status, needle); \
    assert_true(cache == (attn_kvcache *)(uintptr_t)0x1);                   \
  } while (0)
  BAD_CFG(capacity, 0, ATTN_ERR_INVALID_ARG, "cfg.capacity");
  BAD_CFG(batch, -2, ATTN_ERR_INVALID_ARG, "cfg.batch");
  BAD_CFG(heads_kv, 0, ATTN_ERR_INVALID_ARG, "cfg.heads_kv");
  BAD_CFG(d_k, 0, ATTN_ERR_INVALID_ARG, "cfg.d_k");
  BAD_CFG(d_v, -1, ATTN_ERR_INVALID_ARG, "cfg.d_v");
  BAD_CFG(dtype, ATTN_DTYPE_U8, ATTN_ERR_DTYPE, "cfg.dtype");
  BAD_CFG(mode, (attn_kvcache_mode)7, ATTN_ERR_INVALID_ARG, "cfg.mode");
  BAD_CFG(struct_size, 8, ATTN_ERR_INVALID_ARG, "cfg.struct_size");
  BAD_CFG(capacity, INT64_MAX / 2, ATTN_ERR_OVERFLOW, "cfg.capacity");
  BAD_CFG(d_k, INT64_MAX / 4, ATTN_ERR_OVERFLOW, "cfg");
  attn_kvcache_config_init(&cfg);
  cfg.capacity = 8; cfg.d_k = 4; cfg.mode = ATTN_KVCACHE_RING; cfg.grow = 1;
  EXPECT_FAIL(ctx, attn_kvcache_create(ctx, &cfg, &cache), ATTN_ERR_INVALID_ARG, "cfg.grow");
  EXPECT_FAIL(ctx, attn_kvcache_create(ctx, NULL, &cache), ATTN_ERR_NULL_ARG, "cfg");
  cfg.grow = 0;
  EXPECT_FAIL(ctx, attn_kvcache_create(ctx, &cfg, NULL), ATTN_ERR_NULL_ARG, "out");
  assert_int_equal(attn_kvcache_create(NULL, &cfg, &cache), ATTN_ERR_NULL_ARG);
  /* Out of memory at each allocation of create: status, no leak. */
  for (int64_t fail = 1; fail <= 4; fail++) {
    cnt.fail_at = cnt.allocs + fail;
    EXPECT_FAIL(ctx, attn_kvcache_create(ctx, &cfg, &cache), ATTN_ERR_NO_MEMORY, "attn_kvcache_create");
  }
  cnt.fail_at = 0;
  assert_true(cache == (attn_kvcache *)(uintptr_t)0x1);
  attn_context_destroy(ctx);
  assert_int_equal(cnt.outstanding_bytes, 0);
}

static void growth_failure_leaves_cache_unchanged(void **state) {
  (void)state;
  tu_counter cnt = {0};
  attn_context *ctx = tu_counting_context(&cnt, 1);
  attn_kvcache_config cfg;
  attn_kvcache_config_init(&cfg);
  cfg.batch = 2; cfg.heads_kv = 2; cfg.capacity = 4; cfg.d_k = 4; cfg.grow = 1;
  attn_kvcache *cache;
  assert_int_equal(attn_kvcache_create(ctx, &cfg, &cache), ATTN_OK);
  uint64_t seed = 8;
  double *x = tu_random(2 * 2 * 3 * 4, &seed);
  attn_tensor *k = tu_tensor4(ctx, ATTN_DTYPE_F32, x, 2, 2, 3, 4, false);
  assert_int_equal(attn_kvcache_append(cache, k, k, NULL), ATTN_OK);
  snapshot s;
  snap(cache, &s);
  cnt.fail_at = cnt.allocs + 2; /* the V storage of the grown cache */
  EXPECT_FAIL(ctx, attn_kvcache_append(cache, k, k, NULL), ATTN_ERR_NO_MEMORY, "k_new");
  cnt.fail_at = 0;
  assert_unchanged(cache, &s);
  free(s.k); free(s.v);
  assert_int_equal(attn_kvcache_append(cache, k, k, NULL), ATTN_OK);
  assert_int_equal(attn_kvcache_capacity(cache), 8);
  assert_int_equal(attn_kvcache_length(cache, 1), 6);
  tu_tensor_free(k);
  attn_kvcache_destroy(cache);
  attn_context_destroy(ctx);
  assert_int_equal(cnt.outstanding_bytes, 0);
  free(x);
}

static void bad_plan_and_execute_are_rejected(void **state) {
  (void)state;
  attn_context *ctx = ctx_threads(2);
  attn_kvcache_config cfg;
  attn_kvcache_config_init(&cfg);
  cfg.batch = 2; cfg.heads_kv = 2; cfg.capacity = 16; cfg.d_k = 8; cfg.d_v = 4;
  attn_kvcache *cache;
  assert_int_equal(attn_kvcache_create(ctx, &cfg, &cache), ATTN_OK);
  uint64_t seed = 4;
  double *x = tu_random(2 * 6 * 3 * 8, &seed);
  attn_tensor *k = tu_tensor4(ctx, ATTN_DTYPE_F32, x, 2, 2, 3, 8, false);
  attn_tensor *v = tu_tensor4(ctx, ATTN_DTYPE_F32, x, 2, 2, 3, 4, false);
  assert_int_equal(attn_kvcache_append(cache, k, v, NULL), ATTN_OK);
  attn_tensor *q = tu_tensor4(ctx, ATTN_DTYPE_F32, x, 2, 4, 1, 8, false);
  attn_tensor *out = tu_tensor4(ctx, ATTN_DTYPE_F32, NULL, 2, 4, 1, 4, false);
  attn_tensor *q3h = tu_tensor4(ctx, ATTN_DTYPE_F32, x, 2, 3, 1, 8, false);
  attn_tensor *qd = tu_tensor4(ctx, ATTN_DTYPE_F32, x, 2, 4, 1, 7, false);
  attn_tensor *q64 = tu_tensor4(ctx, ATTN_DTYPE_F64, x, 2, 4, 1, 8, false);
  attn_tensor *qn2 = tu_tensor4(ctx, ATTN_DTYPE_F32, x, 2, 4, 2, 8, false);
  attn_tensor *out_bad = tu_tensor4(ctx, ATTN_DTYPE_F32, NULL, 2, 4, 1, 8, false);
  int64_t ls[3] = {2, 4, 2};
  attn_tensor *lse_bad = tu_tensor(ctx, ATTN_DTYPE_F32, NULL, 3, ls);
  attn_desc *d;
  assert_int_equal(attn_desc_create(ctx, &d), ATTN_OK);
  attn_kvcache_plan *plan = NULL;
  EXPECT_FAIL(ctx, attn_kvcache_plan_create(cache, d, q3h, out, NULL, &plan), ATTN_ERR_SHAPE, "q");
  EXPECT_FAIL(ctx, attn_kvcache_plan_create(cache, d, qd, out, NULL, &plan), ATTN_ERR_SHAPE, "q");
  EXPECT_FAIL(ctx, attn_kvcache_plan_create(cache, d, q64, out, NULL, &plan), ATTN_ERR_DTYPE, "q");
  EXPECT_FAIL(ctx, attn_kvcache_plan_create(cache, d, q, out_bad, NULL, &plan), ATTN_ERR_SHAPE, "out");
  EXPECT_FAIL(ctx, attn_kvcache_plan_create(cache, d, q, out, lse_bad, &plan), ATTN_ERR_SHAPE, "lse");
  EXPECT_FAIL(ctx, attn_kvcache_plan_create(cache, d, NULL, out, NULL, &plan), ATTN_ERR_NULL_ARG, "q");
  EXPECT_FAIL(ctx, attn_kvcache_plan_create(cache, NULL, q, out, NULL, &plan), ATTN_ERR_NULL_ARG, "desc");
  EXPECT_FAIL(ctx, attn_kvcache_plan_create(cache, d, q, out, NULL, NULL), ATTN_ERR_NULL_ARG, "plan");
  assert_int_equal(attn_kvcache_plan_create(NULL, d, q, out, NULL, &plan), ATTN_ERR_NULL_ARG);
  int64_t lens[2] = {1, 1};
  double slopes[3] = {0.1, 0.2, 0.3};
  assert_int_equal(attn_desc_set_key_lengths(d, lens, 2), ATTN_OK);
  EXPECT_FAIL(ctx, attn_kvcache_plan_create(cache, d, q, out, NULL, &plan), ATTN_ERR_UNSUPPORTED, "key_lengths");
  assert_int_equal(attn_desc_set_key_lengths(d, NULL, 0), ATTN_OK);
  assert_int_equal(attn_desc_set_causal(d, ATTN_CAUSAL_TOP_LEFT), ATTN_OK);
  EXPECT_FAIL(ctx, attn_kvcache_plan_create(cache, d, q, out, NULL, &plan), ATTN_ERR_UNSUPPORTED, "causal");
  assert_int_equal(attn_desc_set_causal(d, ATTN_CAUSAL_BOTTOM_RIGHT), ATTN_OK);
  assert_int_equal(attn_desc_set_alibi(d, slopes, 3), ATTN_OK);
  EXPECT_FAIL(ctx, attn_kvcache_plan_create(cache, d, q, out, NULL, &plan), ATTN_ERR_SHAPE, "alibi");
  assert_int_equal(attn_desc_set_alibi(d, NULL, 0), ATTN_OK);
  assert_int_equal(attn_desc_set_score(d, ATTN_SCORE_ADDITIVE), ATTN_OK);
  EXPECT_FAIL(ctx, attn_kvcache_plan_create(cache, d, q, out, NULL, &plan), ATTN_ERR_UNSUPPORTED, "score");
  assert_int_equal(attn_desc_set_score(d, ATTN_SCORE_SCALED_DOT), ATTN_OK);
  assert_int_equal(attn_desc_set_variant(d, ATTN_VARIANT_PERFORMER), ATTN_OK);
  EXPECT_FAIL(ctx, attn_kvcache_plan_create(cache, d, q, out, NULL, &plan), ATTN_ERR_UNSUPPORTED, "variant");
  assert_int_equal(attn_desc_set_variant(d, ATTN_VARIANT_EXACT), ATTN_OK);
  assert_null(plan);

  assert_int_equal(attn_kvcache_plan_create(cache, d, q, out, NULL, &plan), ATTN_OK);
  assert_true(attn_kvcache_plan_workspace_size(plan) > 0);
  /* Canary in out: failing executes must not write it. */
  float *o = attn_tensor_data(out);
  for (int i = 0; i < 2 * 4 * 4; i++) o[i] = 12345.0f;
  int64_t qc_bad[2] = {0, 2};
  EXPECT_FAIL(ctx, attn_kvcache_plan_execute(plan, q, out, NULL, qc_bad), ATTN_ERR_INVALID_ARG, "query_counts[1]");
  EXPECT_FAIL(ctx, attn_kvcache_plan_execute(plan, qn2, out, NULL, NULL), ATTN_ERR_MISMATCH, "q");
  EXPECT_FAIL(ctx, attn_kvcache_plan_execute(plan, q, out_bad, NULL, NULL), ATTN_ERR_MISMATCH, "out");
  EXPECT_FAIL(ctx, attn_kvcache_plan_execute(plan, q, out, lse_bad, NULL), ATTN_ERR_MISMATCH, "lse");
  EXPECT_FAIL(ctx, attn_kvcache_plan_execute(plan, NULL, out, NULL, NULL), ATTN_ERR_NULL_ARG, "q");
  EXPECT_FAIL(ctx, attn_kvcache_plan_execute(plan, q, NULL, NULL, NULL), ATTN_ERR_NULL_ARG, "out");
  assert_int_equal(attn_kvcache_plan_execute(NULL, q, out, NULL, NULL), ATTN_ERR_NULL_ARG);
  for (int i = 0; i < 2 * 4 * 4; i++) assert_true(o[i] == 12345.0f);
  int64_t qc[2] = {1, 0};
  assert_int_equal(attn_kvcache_plan_execute(plan, q, out, NULL, qc), ATTN_OK);
  for (int i = 16; i < 32; i++) assert_true(o[i] == 0.0f); /* item 1: no query → 0 */
  for (int i = 0; i < 16; i++) assert_true(o[i] != 12345.0f && isfinite(o[i]));
  attn_kvcache_plan_destroy(plan);

  attn_desc_destroy(d);
  tu_tensor_free(k); tu_tensor_free(v); tu_tensor_free(q); tu_tensor_free(out); tu_tensor_free(q3h);
  tu_tensor_free(qd); tu_tensor_free(q64); tu_tensor_free(qn2); tu_tensor_free(out_bad); tu_tensor_free(lse_bad);
  attn_kvcache_destroy(cache);
  free(x);
  attn_context_destroy(ctx);
}

/* An empty cache (or an item with nothing stored) gives 0 and −inf, not NaN. */
static void empty_cache_gives_zero(void **state) {
  (void)state;
  attn_context *ctx = ctx_threads(2);
  attn_kvcache_config cfg;
  attn_kvcache_config_init(&cfg);
  cfg.capacity = 4; cfg.d_k = 8; cfg.batch = 1;
  attn_kvcache *cache;
  assert_int_equal(attn_kvcache_create(ctx, &cfg, &cache), ATTN_OK);
  uint64_t seed = 2;
  double *x = tu_random(8 * 20, &seed);
  for (int64_t n = 1; n <= 20; n += 19) {
    attn_tensor *q = tu_tensor4(ctx, ATTN_DTYPE_F32, x, 1, 1, n, 8, false);
    attn_tensor *out = tu_tensor4(ctx, ATTN_DTYPE_F32, x, 1, 1, n, 8, false);
    int64_t ls[3] = {1, 1, n};
    attn_tensor *lse = tu_tensor(ctx, ATTN_DTYPE_F32, NULL, 3, ls);
    attn_desc *d;
    assert_int_equal(attn_desc_create(ctx, &d), ATTN_OK);
    attn_kvcache_plan *plan;
    assert_int_equal(attn_kvcache_plan_create(cache, d, q, out, lse, &plan), ATTN_OK);
    assert_int_equal(attn_kvcache_plan_execute(plan, q, out, lse, NULL), ATTN_OK);
    const float *o = attn_tensor_data(out), *l = attn_tensor_data(lse);
    for (int64_t i = 0; i < n * 8; i++) assert_true(o[i] == 0.0f);
    for (int64_t i = 0; i < n; i++) assert_true(isinf(l[i]) && l[i] < 0);
    attn_kvcache_plan_destroy(plan);
    attn_desc_destroy(d);
    tu_tensor_free(q); tu_tensor_free(out); tu_tensor_free(lse);
  }
  free(x);
  attn_kvcache_destroy(cache);
  attn_context_destroy(ctx);
}

/* kvcache.h: "truncating every item to 0 resets the cache" — also a ring
 * that has wrapped (its first stored position is > 0): an empty cache needs
 * no evicted row. Afterwards only the new rows are attended. A rollback to
 * a length between 0 and the first stored position still fails. */
static void ring_truncate_to_zero_resets(void **state) {
  (void)state;
  attn_context *ctx = ctx_threads(1);
  attn_kvcache_config cfg;
  attn_kvcache_config_init(&cfg);
  cfg.batch = 2; cfg.capacity = 4; cfg.d_k = 1; cfg.mode = ATTN_KVCACHE_RING;
  attn_kvcache *cache;
  assert_int_equal(attn_kvcache_create(ctx, &cfg, &cache), ATTN_OK);
  double old[12] = {5, 5, 5, 5, 5, 5, 7, 7, 7, 7, 7, 7};
  attn_tensor *k6 = tu_tensor4(ctx, ATTN_DTYPE_F32, old, 2, 1, 6, 1, false);
  int64_t counts[2] = {6, 3};
  assert_int_equal(attn_kvcache_append(cache, k6, k6, counts), ATTN_OK);
  assert_int_equal(attn_kvcache_first(cache, 0), 2);
  int64_t bad[2] = {1, 0};
  assert_int_equal(attn_kvcache_truncate(cache, bad), ATTN_ERR_INVALID_ARG);
  assert_non_null(strstr(attn_context_last_error(ctx), "lengths[0]"));
  assert_int_equal(attn_kvcache_length(cache, 0), 6);
  int64_t zero[2] = {0, 0};
  assert_int_equal(attn_kvcache_truncate(cache, zero), ATTN_OK);
  for (int64_t b = 0; b < 2; b++) {
    assert_int_equal(attn_kvcache_length(cache, b), 0);
    assert_int_equal(attn_kvcache_first(cache, b), 0);
  }
  /* Two new rows, values 1 and 3; q = 0 weighs the stored keys equally:
   * out = 2, lse = log 2 exactly when nothing old is attended. */
  double fresh[4] = {1, 3, 1, 3}, zq[2] = {0, 0};
  attn_tensor *k2 = tu_tensor4(ctx, ATTN_DTYPE_F32, fresh, 2, 1, 2, 1, false);
  attn_tensor *q = tu_tensor4(ctx, ATTN_DTYPE_F32, zq, 2, 1, 1, 1, false);
  attn_tensor *out = tu_tensor4(ctx, ATTN_DTYPE_F32, NULL, 2, 1, 1, 1, false);
  int64_t ls[3] = {2, 1, 1};
  attn_tensor *lse = tu_tensor(ctx, ATTN_DTYPE_F32, NULL, 3, ls);
  assert_int_equal(attn_kvcache_append(cache, k2, k2, NULL), ATTN_OK);
  attn_desc *d;
  assert_int_equal(attn_desc_create(ctx, &d), ATTN_OK);
  attn_kvcache_plan *plan;
  assert_int_equal(attn_kvcache_plan_create(cache, d, q, out, lse, &plan), ATTN_OK);
  assert_int_equal(attn_kvcache_plan_execute(plan, q, out, lse, NULL), ATTN_OK);
  const float *o = attn_tensor_data(out), *l = attn_tensor_data(lse);
  for (int b = 0; b < 2; b++) {
    assert_true(fabs(o[b] - 2.0) < 1e-6);
    assert_true(fabs(l[b] - log(2.0)) < 1e-6);
  }
  attn_kvcache_plan_destroy(plan);
  attn_desc_destroy(d);
  tu_tensor_free(k6); tu_tensor_free(k2); tu_tensor_free(q); tu_tensor_free(out); tu_tensor_free(lse);
  attn_kvcache_destroy(cache);
  attn_context_destroy(ctx);
}

/* bf16 storage: half the bytes, within the rounding bound of the reference. */
static void bf16_storage_within_rounding_bound(void **state) {
  (void)state;
  seq_case c = base_case();
  c.bf16 = true;
  c.H = 8; c.Hkv = 2; c.Dk = c.Dv = 64; c.T[0] = 700; c.cap = 700;
  double e1 = run_seq(&c, 30);
  c.B = 2; c.T[1] = 333; c.mode = ATTN_KVCACHE_RING; c.cap = 300; c.ref_left = 299;
  c.H = 2; c.Hkv = 2; c.Dk = 40; c.Dv = 24; /* ring wrap, odd dims, R = 1 */
  double e2 = run_seq(&c, 31);
  c = base_case();
  c.bf16 = true;
  c.prefill = 100; c.step = 3; c.spec = 20; c.T[0] = 300; c.cap = 330; /* GEMM paths */
  double e3 = run_seq(&c, 32);
  print_message("bf16 storage max abs err %.3g / %.3g / %.3g (bound: %.3g of sum p|v|)\n", e1, e2,
                e3, BF16_EPS + expm1(2.0 * bf16_score_shift(&c)));
  /* Half the bytes; no views (attn_dtype has no bf16); f64 + bf16 rejected. */
  attn_context *ctx = ctx_threads(1);
  attn_kvcache_config cfg;
  attn_kvcache_config_init(&cfg);
  cfg.capacity = 100; cfg.d_k = 64; cfg.heads_kv = 4;
  attn_kvcache *a, *b;
  assert_int_equal(attn_kvcache_create(ctx, &cfg, &a), ATTN_OK);
  cfg.storage = ATTN_KVCACHE_STORE_BF16;
  assert_int_equal(attn_kvcache_create(ctx, &cfg, &b), ATTN_OK);
  assert_true(attn_kvcache_memory_size(b) * 2 <= attn_kvcache_memory_size(a) + 4096);
  attn_tensor *vk = NULL, *vv = NULL;
  EXPECT_FAIL(ctx, attn_kvcache_view(b, &vk, &vv), ATTN_ERR_UNSUPPORTED, "bf16");
  assert_null(vk);
  cfg.dtype = ATTN_DTYPE_F64;
  attn_kvcache *bad = NULL;
  EXPECT_FAIL(ctx, attn_kvcache_create(ctx, &cfg, &bad), ATTN_ERR_DTYPE, "cfg.storage");
  cfg.dtype = ATTN_DTYPE_F32;
  cfg.storage = (attn_kvcache_storage)5;
  EXPECT_FAIL(ctx, attn_kvcache_create(ctx, &cfg, &bad), ATTN_ERR_INVALID_ARG, "cfg.storage");
  assert_null(bad);
  attn_kvcache_destroy(a);
  attn_kvcache_destroy(b);
  attn_context_destroy(ctx);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(decode_steps_equal_full_causal_attention),
      cmocka_unit_test(gqa_decode_equals_reference),
      cmocka_unit_test(unequal_batch_lengths_equal_reference),
      cmocka_unit_test(prefill_then_decode_equals_reference),
      cmocka_unit_test(rollback_then_different_tokens_equals_reference),
      cmocka_unit_test(ring_equals_window_attention),
      cmocka_unit_test(window_alibi_softcap_equal_reference),
      cmocka_unit_test(growth_keeps_contents_and_plans),
      cmocka_unit_test(decode_allocates_nothing),
      cmocka_unit_test(non_causal_cache_equals_reference),
      cmocka_unit_test(decode_bitwise_identical_across_threads),
      cmocka_unit_test(views_show_stored_rows),
      cmocka_unit_test(bad_append_and_truncate_leave_cache_unchanged),
      cmocka_unit_test(bad_config_is_rejected),
      cmocka_unit_test(growth_failure_leaves_cache_unchanged),
      cmocka_unit_test(bad_plan_and_execute_are_rejected),
      cmocka_unit_test(empty_cache_gives_zero),
      cmocka_unit_test(ring_truncate_to_zero_resets),
      cmocka_unit_test(bf16_storage_within_rounding_bound),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}

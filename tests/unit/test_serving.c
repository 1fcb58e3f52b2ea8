/* Serving features against the naive f64 reference: packed variable-length
 * batches (each sequence = the reference on that sequence alone), sinks (the
 * reference with one more logit), the per-key mass (column sums of the
 * reference weights), thread-count determinism, and their bad input. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "testutil.h"

typedef struct sv_case {
  int64_t nseq, H, Hkv, D;
  const int64_t *qlen, *klen; /* [nseq]; klen NULL: self-attention (k offsets = q offsets) */
  attn_dtype dt;
  int causal;
  int64_t left, right;  /* window, -1 = none */
  bool alibi, sinks, weights, lse;
  double softcap;
  int mass;             /* 0 none, 1 per head, 2 per KV group */
  bool packed;          /* varlen; else a padded batch of nseq items of qlen[0] × klen[0] */
  int threads;
} sv_case;

typedef struct sv_out {
  double *o, *w, *l, *m;
  size_t no, nw, nl, nm;
} sv_out;

static void sv_free(sv_out *r) { free(r->o); free(r->w); free(r->l); free(r->m); }

/* The library on c; q, k, v dense [1 or B][H][T][D] doubles. */
static attn_status sv_run(const sv_case *c, const double *q, const double *k, const double *v,
                          const int64_t *qoff, const int64_t *koff, const double *alibi,
                          const double *sinks, int64_t B, int64_t Tq, int64_t Tk, sv_out *r) {
  attn_context *ctx = tu_context(c->threads > 0 ? c->threads : 2);
  attn_desc *d = NULL;
  assert_int_equal(attn_desc_create(ctx, &d), ATTN_OK);
  assert_int_equal(attn_desc_set_causal(d, (attn_causal)c->causal), ATTN_OK);
  if (c->left >= 0 || c->right >= 0)
    assert_int_equal(attn_desc_set_window(d, c->left >= 0 ? c->left : ATTN_WINDOW_UNBOUNDED,
                                          c->right >= 0 ? c->right : ATTN_WINDOW_UNBOUNDED),
                     ATTN_OK);
  if (c->alibi) assert_int_equal(attn_desc_set_alibi(d, alibi, c->H), ATTN_OK);
  if (c->softcap > 0) assert_int_equal(attn_desc_set_softcap(d, c->softcap), ATTN_OK);
  if (c->sinks) assert_int_equal(attn_desc_set_sinks(d, sinks, c->H), ATTN_OK);
  if (c->packed) assert_int_equal(attn_desc_set_varlen(d, qoff, koff, c->nseq), ATTN_OK);
  attn_tensor *tq = tu_tensor4(ctx, c->dt, q, B, c->H, Tq, c->D, c->packed);
  attn_tensor *tk = tu_tensor4(ctx, c->dt, k, B, c->Hkv, Tk, c->D, c->packed);
  attn_tensor *tv = tu_tensor4(ctx, c->dt, v, B, c->Hkv, Tk, c->D, c->packed);
  attn_tensor *to = tu_tensor4(ctx, c->dt, NULL, B, c->H, Tq, c->D, c->packed);
  attn_tensor *tw = c->weights ? tu_tensor4(ctx, c->dt, NULL, B, c->H, Tq, Tk, false) : NULL;
  int64_t ls[3] = {B, c->H, Tq}, ms[3] = {B, c->mass == 2 ? c->Hkv : c->H, Tk};
  attn_tensor *tl = c->lse ? tu_tensor(ctx, c->dt, NULL, 3, ls) : NULL;
  attn_tensor *tm = c->mass ? tu_tensor(ctx, c->dt, NULL, 3, ms) : NULL;
  if (tm) assert_int_equal(attn_desc_set_key_mass(d, tm), ATTN_OK);
  attn_plan *plan = NULL;
  attn_status st = attn_plan_create(ctx, d, tq, tk, tv, to, tw, tl, &plan);
  if (st == ATTN_OK) {
    st = attn_plan_execute(plan, tq, tk, tv, to, tw, tl);
    if (st != ATTN_OK) fail_msg("execute: %s", attn_context_last_error(ctx));
  } else {
    fail_msg("plan: %s", attn_context_last_error(ctx));
  }
  r->no = (size_t)(B * c->H * Tq * c->D);
  r->o = malloc(r->no * 8);
  tu_read(to, r->o);
  if (tw) { r->nw = (size_t)(B * c->H * Tq * Tk); r->w = malloc(r->nw * 8); tu_read(tw, r->w); }
  if (tl) { r->nl = (size_t)(B * c->H * Tq); r->l = malloc(r->nl * 8); tu_read(tl, r->l); }
  if (tm) { r->nm = (size_t)(ms[0] * ms[1] * ms[2]); r->m = malloc(r->nm * 8); tu_read(tm, r->m); }
  attn_plan_destroy(plan);
  tu_tensor_free(tq); tu_tensor_free(tk); tu_tensor_free(tv); tu_tensor_free(to);
  tu_tensor_free(tw); tu_tensor_free(tl); tu_tensor_free(tm);
  attn_desc_destroy(d);
  attn_context_destroy(ctx);
  return st;
}

static void expect_close(const char *what, double got, double want, bool f64, double scale) {
  const double tol = (f64 ? 1e-11 : 2e-5) * (1 + scale);
  if (isinf(want) || isinf(got)) {
    if (got != want) fail_msg("%s: got %g, want %g", what, got, want);
    return;
  }
  if (!(fabs(got - want) <= tol)) fail_msg("%s: got %.12g, want %.12g", what, got, want);
}

/* Run case c and compare every output with the reference, sequence by
 * sequence (packed) or item by item (padded). */
static void check_case(const sv_case *c, uint64_t seed) {
  const int64_t n = c->nseq, H = c->H, Hkv = c->Hkv, D = c->D, grp = H / Hkv;
  const int64_t *klen = c->klen ? c->klen : c->qlen;
  int64_t *qoff = calloc((size_t)n + 1, 8), *koff = calloc((size_t)n + 1, 8);
  for (int64_t s = 0; s < n; s++) {
    qoff[s + 1] = qoff[s] + (c->packed ? c->qlen[s] : c->qlen[0]);
    koff[s + 1] = koff[s] + (c->packed ? klen[s] : klen[0]);
  }
  const int64_t Tq = qoff[n], Tk = koff[n];
  /* Packed: one item of Tq tokens; padded: n items of qlen[0] tokens. */
  const int64_t B = c->packed ? 1 : n, Sq = c->packed ? Tq : c->qlen[0], Sk = c->packed ? Tk : klen[0];
  double *q = tu_random((size_t)(B * H * Sq * D), &seed);
  double *k = tu_random((size_t)(B * Hkv * Sk * D), &seed);
  double *v = tu_random((size_t)(B * Hkv * Sk * D), &seed);
  for (int64_t i = 0; i < B * H * Sq * D; i++) q[i] *= 3.0;
  double alibi[16], sinks[16];
  for (int64_t h = 0; h < H; h++) {
    alibi[h] = 0.05 * (double)(h + 1);
    sinks[h] = h == 1 ? -INFINITY : tu_uniform(&seed, -1, 3);
  }
  sv_out r = {0};
  attn_status st = sv_run(c, q, k, v, c->packed && c->klen == NULL ? qoff : qoff,
                          c->klen ? koff : NULL, alibi, sinks, B, Sq, Sk, &r);
  assert_int_equal(st, ATTN_OK);
  const bool f64 = c->dt == ATTN_DTYPE_F64;
  double *mass = c->mass ? calloc(r.nm, 8) : NULL;
  for (int64_t s = 0; s < n; s++) {
    const int64_t ql = c->packed ? c->qlen[s] : Sq, kl = c->packed ? klen[s] : Sk;
    const int64_t tb = c->packed ? 0 : s, q0 = c->packed ? qoff[s] : 0, k0 = c->packed ? koff[s] : 0;
    ref_problem p;
    ref_problem_init(&p, 1, H, ql, kl, D);
    p.Hkv = Hkv;
    p.causal = c->causal;
    p.left = c->left;
    p.right = c->right;
    p.alibi = c->alibi ? alibi : NULL;
    p.softcap = c->softcap;
    p.sink = c->sinks ? sinks : NULL;
    double *sq = malloc((size_t)(H * ql * D + 1) * 8), *sk = malloc((size_t)(Hkv * kl * D + 1) * 8);
    double *sv = malloc((size_t)(Hkv * kl * D + 1) * 8);
    for (int64_t h = 0; h < H; h++)
      memcpy(sq + h * ql * D, q + ((tb * H + h) * Sq + q0) * D, (size_t)(ql * D) * 8);
    for (int64_t h = 0; h < Hkv; h++) {
      memcpy(sk + h * kl * D, k + ((tb * Hkv + h) * Sk + k0) * D, (size_t)(kl * D) * 8);
      memcpy(sv + h * kl * D, v + ((tb * Hkv + h) * Sk + k0) * D, (size_t)(kl * D) * 8);
    }
    double *ro = malloc((size_t)(H * ql * D + 1) * 8), *rw = malloc((size_t)(H * ql * kl + 1) * 8);
    double *rl = malloc((size_t)(H * ql + 1) * 8);
    ref_attention(&p, sq, sk, sv, ro, rw, rl, NULL);
    for (int64_t h = 0; h < H; h++)
      for (int64_t i = 0; i < ql; i++) {
        const int64_t gi = (tb * H + h) * Sq + q0 + i;
        for (int64_t x = 0; x < D; x++)
          expect_close("out", r.o[gi * D + x], ro[(h * ql + i) * D + x], f64, 0);
        if (r.l) expect_close("lse", r.l[gi], rl[h * ql + i], f64, fabs(rl[h * ql + i]));
        if (r.w)
          for (int64_t j = 0; j < Sk; j++) {
            const bool own = j >= k0 && j < k0 + kl;
            expect_close("weights", r.w[gi * Sk + j], own ? rw[(h * ql + i) * kl + j - k0] : 0.0,
                         f64, 0);
          }
        if (mass)
          for (int64_t j = 0; j < kl; j++) {
            const int64_t row = c->mass == 2 ? h / grp : h, nrow = c->mass == 2 ? Hkv : H;
            mass[(tb * nrow + row) * Sk + k0 + j] += rw[(h * ql + i) * kl + j];
          }
      }
    free(sq); free(sk); free(sv); free(ro); free(rw); free(rl);
  }
  for (size_t x = 0; mass && x < r.nm; x++) expect_close("mass", r.m[x], mass[x], f64, mass[x]);
  free(mass);
  sv_free(&r);
  free(q); free(k); free(v); free(qoff); free(koff);
}

static const int64_t QL[] = {37, 1, 0, 130, 64, 5, 300};
static const int64_t KL[] = {20, 9, 3, 130, 0, 77, 301};

static void varlen_matches_each_sequence_alone(void **state) {
  (void)state;
  for (int dt = 0; dt < 2; dt++)
    for (int causal = 0; causal < 3; causal++)
      for (int cross = 0; cross < 2; cross++) {
        sv_case c = {7, 4, 2, 16, QL, cross ? KL : NULL, dt ? ATTN_DTYPE_F64 : ATTN_DTYPE_F32,
                     causal, -1, -1, false, false, true, true, 0, 0, true, 2};
        check_case(&c, 11 + (uint64_t)(dt * 7 + causal * 3 + cross));
      }
}

static void varlen_masks_per_sequence(void **state) {
  (void)state;
  /* window + ALiBi + softcap + sinks + grouped mass, bottom-right, cross */
  sv_case c = {7, 4, 2, 16, QL, KL, ATTN_DTYPE_F64, 2, 9, 2, true, true, true, true, 5.0, 2,
               true, 3};
  check_case(&c, 5);
  c.dt = ATTN_DTYPE_F32;
  c.causal = 1;
  c.mass = 1;
  c.H = c.Hkv = 3;
  check_case(&c, 6);
}

static void sinks_match_reference(void **state) {
  (void)state;
  static const int64_t ql[] = {70}, kl[] = {90};
  for (int dt = 0; dt < 2; dt++)
    for (int causal = 0; causal < 3; causal++) {
      sv_case c = {2, 4, 4, 8, ql, kl, dt ? ATTN_DTYPE_F64 : ATTN_DTYPE_F32, causal, -1, -1,
                   false, true, true, true, 0, 0, false, 2};
      check_case(&c, 21 + (uint64_t)causal);
      c.left = 3; /* rows with few keys: the sink dominates */
      c.alibi = true;
      check_case(&c, 22 + (uint64_t)causal);
    }
}

static void mass_is_column_sums(void **state) {
  (void)state;
  static const int64_t ql[] = {300}, kl[] = {700}, ql1[] = {1};
  for (int dt = 0; dt < 2; dt++)
    for (int causal = 0; causal < 3; causal++)
      for (int mass = 1; mass <= 2; mass++) {
        sv_case c = {2, 4, 2, 16, ql, kl, dt ? ATTN_DTYPE_F64 : ATTN_DTYPE_F32, causal, -1, -1,
                     false, false, false, true, 0, mass, false, 2};
        check_case(&c, 31 + (uint64_t)causal);
        c.left = 40;
        c.sinks = true;
        c.softcap = 3;
        check_case(&c, 32);
        c.qlen = ql1; /* decode-like */
        c.causal = 2;
        check_case(&c, 33);
      }
}

/* Bitwise identical outputs for 1..4 threads. */
static void serving_deterministic_across_threads(void **state) {
  (void)state;
  uint64_t seed = 77;
  const int64_t H = 4, D = 16;
  int64_t off[8] = {0};
  for (int s = 0; s < 7; s++) off[s + 1] = off[s] + QL[s];
  const int64_t T = off[7];
  double *q = tu_random((size_t)(H * T * D), &seed), *k = tu_random((size_t)(H * T * D), &seed);
  double *v = tu_random((size_t)(H * T * D), &seed);
  double sinks[4] = {0.5, -1, 2, 0};
  sv_out first = {0};
  for (int th = 1; th <= 4; th++) {
    sv_case c = {7, H, 2, D, QL, NULL, ATTN_DTYPE_F32, 1, -1, -1, false, true, false, true, 0, 2,
                 true, th};
    sv_out r = {0};
    assert_int_equal(sv_run(&c, q, k, v, off, NULL, NULL, sinks, 1, T, T, &r), ATTN_OK);
    if (th == 1) {
      first = r;
      continue;
    }
    assert_memory_equal(r.o, first.o, r.no * 8);
    assert_memory_equal(r.l, first.l, r.nl * 8);
    assert_memory_equal(r.m, first.m, r.nm * 8);
    sv_free(&r);
  }
  sv_free(&first);
  free(q); free(k); free(v);
}

/* KV cache: sinks at finalize, decode (split path, n = 1, 3) and prefill
 * (blocked path, n = 40), against the reference with the extra logit; the
 * decode steps' per-key mass (per head, per KV group) against the column
 * sums of the reference weights. */
static void kvcache_sinks_match_reference(void **state) {
  (void)state;
  const int64_t B = 2, Hkv = 2, H = 4, D = 16, L = 1300;
  for (int dt = 0; dt < 2; dt++)
    for (int step = 0; step < 3; step++) {
      const int64_t n = step == 1 ? 40 : step == 2 ? 3 : 1;
      const int mass = 1 + (step + dt) % 2;
      const attn_dtype T = dt ? ATTN_DTYPE_F64 : ATTN_DTYPE_F32;
      uint64_t seed = 91 + (uint64_t)(dt * 2 + step);
      attn_context *ctx = tu_context(2);
      attn_kvcache_config cfg;
      attn_kvcache_config_init(&cfg);
      cfg.batch = B;
      cfg.heads_kv = Hkv;
      cfg.capacity = L;
      cfg.d_k = D;
      cfg.dtype = T;
      attn_kvcache *cache = NULL;
      assert_int_equal(attn_kvcache_create(ctx, &cfg, &cache), ATTN_OK);
      double *k = tu_random((size_t)(B * Hkv * L * D), &seed), *v = tu_random((size_t)(B * Hkv * L * D), &seed);
      double *q = tu_random((size_t)(B * H * n * D), &seed);
      for (int64_t i = 0; i < B * H * n * D; i++) q[i] *= 3;
      attn_tensor *tk = tu_tensor4(ctx, T, k, B, Hkv, L, D, false), *tv = tu_tensor4(ctx, T, v, B, Hkv, L, D, false);
      int64_t counts[2] = {L, L};
      assert_int_equal(attn_kvcache_append(cache, tk, tv, counts), ATTN_OK);
      double sinks[4] = {1.5, -INFINITY, 4.0, -0.5};
      attn_desc *d = NULL;
      assert_int_equal(attn_desc_create(ctx, &d), ATTN_OK);
      assert_int_equal(attn_desc_set_causal(d, ATTN_CAUSAL_BOTTOM_RIGHT), ATTN_OK);
      assert_int_equal(attn_desc_set_sinks(d, sinks, H), ATTN_OK);
      attn_tensor *tq = tu_tensor4(ctx, T, q, B, H, n, D, false), *to = tu_tensor4(ctx, T, NULL, B, H, n, D, false);
      int64_t ls[3] = {B, H, n};
      attn_tensor *tl = tu_tensor(ctx, T, NULL, 3, ls);
      int64_t ms[3] = {B, mass == 2 ? Hkv : H, L};
      attn_tensor *tm = mass ? tu_tensor(ctx, T, NULL, 3, ms) : NULL;
      if (tm) assert_int_equal(attn_desc_set_key_mass(d, tm), ATTN_OK);
      attn_kvcache_plan *plan = NULL;
      assert_int_equal(attn_kvcache_plan_create(cache, d, tq, to, tl, &plan), ATTN_OK);
      assert_int_equal(attn_kvcache_plan_execute(plan, tq, to, tl, NULL), ATTN_OK);
      ref_problem p;
      ref_problem_init(&p, B, H, n, L, D);
      p.Hkv = Hkv;
      p.causal = ATTN_CAUSAL_BOTTOM_RIGHT;
      p.sink = sinks;
      double *ro = malloc((size_t)(B * H * n * D) * 8), *rl = malloc((size_t)(B * H * n) * 8);
      double *go = malloc((size_t)(B * H * n * D) * 8), *gl = malloc((size_t)(B * H * n) * 8);
      double *rw = malloc((size_t)(B * H * n * L) * 8);
      ref_attention(&p, q, k, v, ro, rw, rl, NULL);
      if (tm) {
        const size_t nm = (size_t)(ms[0] * ms[1] * L);
        double *gm = malloc(nm * 8), *rm = calloc(nm, 8);
        tu_read(tm, gm);
        for (int64_t b = 0; b < B; b++)
          for (int64_t h = 0; h < H; h++)
            for (int64_t i = 0; i < n; i++)
              for (int64_t j = 0; j < L; j++)
                rm[(b * ms[1] + (mass == 2 ? h / (H / Hkv) : h)) * L + j] +=
                    rw[((b * H + h) * n + i) * L + j];
        for (size_t x = 0; x < nm; x++) expect_close("kv mass", gm[x], rm[x], dt == 1, rm[x]);
        free(gm);
        free(rm);
      }
      free(rw);
      tu_read(to, go);
      tu_read(tl, gl);
      for (int64_t i = 0; i < B * H * n * D; i++) expect_close("kv out", go[i], ro[i], dt == 1, 0);
      for (int64_t i = 0; i < B * H * n; i++) expect_close("kv lse", gl[i], rl[i], dt == 1, fabs(rl[i]));
      /* A NaN written into the borrowed logits is refused at execute. */
      sinks[2] = NAN;
      assert_int_equal(attn_kvcache_plan_execute(plan, tq, to, tl, NULL), ATTN_ERR_INVALID_ARG);
      assert_non_null(strstr(attn_context_last_error(ctx), "sinks"));
      attn_kvcache_plan_destroy(plan);
      attn_desc_destroy(d);
      tu_tensor_free(tk); tu_tensor_free(tv); tu_tensor_free(tq); tu_tensor_free(to); tu_tensor_free(tl);
      tu_tensor_free(tm);
      attn_kvcache_destroy(cache);
      attn_context_destroy(ctx);
      free(k); free(v); free(q); free(ro); free(rl); free(go); free(gl);
    }
}

/* StreamingLLM: a ring cache of W positions that keeps its first n_keep
 * positions for good; decode (split path) and a 20-query step (blocked
 * path) against the reference restricted to j < n_keep or j ≥ L − W, with
 * and without sink logits, native and bf16-free f32/f64, and f32 with f16
 * storage (the kept rows in f16 too; data f16-representable, so the same
 * reference applies). */
typedef struct keep_pred {
  int64_t keep, from;
} keep_pred;
static bool keep_first_pred(void *u, int64_t b, int64_t h, int64_t i, int64_t j) {
  (void)b, (void)h, (void)i;
  const keep_pred *k = u;
  return j < k->keep || j >= k->from;
}

static void kvcache_keep_first_matches_reference(void **state) {
  (void)state;
  const int64_t B = 2, Hkv = 2, H = 4, D = 16, W = 700, L = 2100, NK = 4;
  for (int dt = 0; dt < 3; dt++)
    for (int step = 0; step < 2; step++) {
      const int64_t n = step ? 20 : 1;
      const attn_dtype T = dt == 1 ? ATTN_DTYPE_F64 : ATTN_DTYPE_F32;
      uint64_t seed = 501 + (uint64_t)(dt * 2 + step);
      attn_context *ctx = tu_context(2);
      attn_kvcache_config cfg;
      attn_kvcache_config_init(&cfg);
      cfg.batch = B;
      cfg.heads_kv = Hkv;
      cfg.capacity = W;
      cfg.d_k = D;
      cfg.dtype = T;
      cfg.mode = ATTN_KVCACHE_RING;
      if (dt == 2) cfg.storage = ATTN_KVCACHE_STORE_F16;
      attn_kvcache *cache = NULL;
      assert_int_equal(attn_kvcache_create(ctx, &cfg, &cache), ATTN_OK);
      assert_int_equal(attn_kvcache_set_keep_first(cache, NK), ATTN_OK);
      double *k = tu_random((size_t)(B * Hkv * L * D), &seed), *v = tu_random((size_t)(B * Hkv * L * D), &seed);
      double *q = tu_random((size_t)(B * H * n * D), &seed);
      for (int64_t i = 0; i < B * H * n * D; i++) q[i] *= 3;
      for (int64_t i = 0; i < B * Hkv * L * D; i++) /* make the kept keys matter */
        if ((i / D) % L < NK) k[i] *= 4;
      if (dt == 2)
        for (int64_t i = 0; i < B * Hkv * L * D; i++) {
          k[i] = tu_round_f16(k[i]);
          v[i] = tu_round_f16(v[i]);
        }
      /* Append in pieces of 300 positions (the first piece covers the kept ones). */
      for (int64_t p0 = 0; p0 < L; p0 += 300) {
        const int64_t m = L - p0 < 300 ? L - p0 : 300;
        double *kc = malloc((size_t)(B * Hkv * m * D) * 8), *vc = malloc((size_t)(B * Hkv * m * D) * 8);
        for (int64_t bh = 0; bh < B * Hkv; bh++) {
          memcpy(kc + bh * m * D, k + (bh * L + p0) * D, (size_t)(m * D) * 8);
          memcpy(vc + bh * m * D, v + (bh * L + p0) * D, (size_t)(m * D) * 8);
        }
        attn_tensor *tk = tu_tensor4(ctx, T, kc, B, Hkv, m, D, false), *tv = tu_tensor4(ctx, T, vc, B, Hkv, m, D, false);
        assert_int_equal(attn_kvcache_append(cache, tk, tv, NULL), ATTN_OK);
        tu_tensor_free(tk);
        tu_tensor_free(tv);
        free(kc);
        free(vc);
      }
      for (int sk = 0; sk < 2; sk++) {
        double sinks[4] = {1.0, -2.0, 0.5, 3.0};
        attn_desc *d = NULL;
        assert_int_equal(attn_desc_create(ctx, &d), ATTN_OK);
        assert_int_equal(attn_desc_set_causal(d, ATTN_CAUSAL_BOTTOM_RIGHT), ATTN_OK);
        if (sk) assert_int_equal(attn_desc_set_sinks(d, sinks, H), ATTN_OK);
        attn_tensor *tq = tu_tensor4(ctx, T, q, B, H, n, D, false), *to = tu_tensor4(ctx, T, NULL, B, H, n, D, false);
        int64_t ls[3] = {B, H, n};
        attn_tensor *tl = tu_tensor(ctx, T, NULL, 3, ls);
        attn_kvcache_plan *plan = NULL;
        assert_int_equal(attn_kvcache_plan_create(cache, d, tq, to, tl, &plan), ATTN_OK);
        assert_int_equal(attn_kvcache_plan_execute(plan, tq, to, tl, NULL), ATTN_OK);
        keep_pred kp = {NK, L - W};
        ref_problem p;
        ref_problem_init(&p, B, H, n, L, D);
        p.Hkv = Hkv;
        p.causal = ATTN_CAUSAL_BOTTOM_RIGHT;
        p.sink = sk ? sinks : NULL;
        p.keep = keep_first_pred;
        p.keep_user = &kp;
        double *ro = malloc((size_t)(B * H * n * D) * 8), *rl = malloc((size_t)(B * H * n) * 8);
        double *go = malloc((size_t)(B * H * n * D) * 8), *gl = malloc((size_t)(B * H * n) * 8);
        ref_attention(&p, q, k, v, ro, NULL, rl, NULL);
        tu_read(to, go);
        tu_read(tl, gl);
        for (int64_t i = 0; i < B * H * n * D; i++) expect_close("keep out", go[i], ro[i], dt == 1, 0);
        for (int64_t i = 0; i < B * H * n; i++) expect_close("keep lse", gl[i], rl[i], dt == 1, fabs(rl[i]));
        attn_kvcache_plan_destroy(plan);
        attn_desc_destroy(d);
        tu_tensor_free(tq); tu_tensor_free(to); tu_tensor_free(tl);
        free(ro); free(rl); free(go); free(gl);
      }
      attn_kvcache_destroy(cache);
      attn_context_destroy(ctx);
      free(k); free(v); free(q);
    }
}

/* keep_first: bad values are refused naming the argument, the cache
 * unchanged; under every allocation failure the call fails cleanly (no leak,
 * the cache still usable); a cache's per-key mass is refused with kept
 * positions and with a wrong shape. */
static void kvcache_keep_first_and_mass_bad_input(void **state) {
  (void)state;
  attn_context *ctx = tu_context(1);
  attn_kvcache_config cfg;
  attn_kvcache_config_init(&cfg);
  cfg.capacity = 8;
  cfg.d_k = 4;
  attn_kvcache *lin = NULL, *cache = NULL;
  assert_int_equal(attn_kvcache_create(ctx, &cfg, &lin), ATTN_OK);
  assert_int_equal(attn_kvcache_set_keep_first(lin, 2), ATTN_ERR_INVALID_ARG);
  assert_non_null(strstr(attn_context_last_error(ctx), "cache"));
  attn_kvcache_destroy(lin);
  cfg.mode = ATTN_KVCACHE_RING;
  assert_int_equal(attn_kvcache_create(ctx, &cfg, &cache), ATTN_OK);
  assert_int_equal(attn_kvcache_set_keep_first(NULL, 2), ATTN_ERR_NULL_ARG);
  assert_int_equal(attn_kvcache_set_keep_first(cache, -1), ATTN_ERR_INVALID_ARG);
  assert_non_null(strstr(attn_context_last_error(ctx), "n:"));
  assert_int_equal(attn_kvcache_set_keep_first(cache, 9), ATTN_ERR_INVALID_ARG);
  const size_t mem0 = attn_kvcache_memory_size(cache);
  /* Not on a cache holding positions. */
  attn_tensor *kn = tu_tensor4(ctx, ATTN_DTYPE_F32, NULL, 1, 1, 3, 4, false);
  assert_int_equal(attn_kvcache_append(cache, kn, kn, NULL), ATTN_OK);
  assert_int_equal(attn_kvcache_set_keep_first(cache, 2), ATTN_ERR_INVALID_ARG);
  assert_int_equal(attn_kvcache_memory_size(cache), mem0);
  const int64_t zero = 0;
  assert_int_equal(attn_kvcache_truncate(cache, &zero), ATTN_OK);
  attn_kvcache_destroy(cache);
  for (int64_t fail = 1;; fail++) {
    tu_counter cnt = {0, 0, 0, 0};
    attn_context *c2 = tu_counting_context(&cnt, 1);
    assert_non_null(c2);
    attn_kvcache *kc = NULL;
    assert_int_equal(attn_kvcache_create(c2, &cfg, &kc), ATTN_OK);
    cnt.fail_at = cnt.allocs + fail; /* the fail-th allocation of the call */
    attn_status st = attn_kvcache_set_keep_first(kc, 3);
    cnt.fail_at = 0;
    const bool done = st == ATTN_OK;
    if (!done) {
      assert_int_equal(st, ATTN_ERR_NO_MEMORY);
      assert_int_equal(attn_kvcache_set_keep_first(kc, 3), ATTN_OK); /* still usable */
    }
    attn_kvcache_destroy(kc);
    attn_context_destroy(c2);
    assert_int_equal(cnt.outstanding_bytes, 0);
    if (done) break;
    assert_true(fail < 50);
  }
  /* The mass with kept positions, and of the wrong shape. */
  assert_int_equal(attn_kvcache_create(ctx, &cfg, &cache), ATTN_OK);
  assert_int_equal(attn_kvcache_set_keep_first(cache, 2), ATTN_OK);
  attn_desc *d = NULL;
  assert_int_equal(attn_desc_create(ctx, &d), ATTN_OK);
  attn_tensor *q = tu_tensor4(ctx, ATTN_DTYPE_F32, NULL, 1, 1, 1, 4, false);
  attn_tensor *o = tu_tensor4(ctx, ATTN_DTYPE_F32, NULL, 1, 1, 1, 4, false);
  int64_t ms[3] = {1, 1, 8}, bad[3] = {1, 1, 9};
  attn_tensor *m = tu_tensor(ctx, ATTN_DTYPE_F32, NULL, 3, ms), *mb = tu_tensor(ctx, ATTN_DTYPE_F32, NULL, 3, bad);
  assert_int_equal(attn_desc_set_key_mass(d, m), ATTN_OK);
  attn_kvcache_plan *plan = NULL;
  assert_int_equal(attn_kvcache_plan_create(cache, d, q, o, NULL, &plan), ATTN_ERR_UNSUPPORTED);
  assert_non_null(strstr(attn_context_last_error(ctx), "key_mass"));
  assert_int_equal(attn_kvcache_set_keep_first(cache, 0), ATTN_OK);
  assert_int_equal(attn_desc_set_key_mass(d, mb), ATTN_OK);
  assert_int_equal(attn_kvcache_plan_create(cache, d, q, o, NULL, &plan), ATTN_ERR_SHAPE);
  assert_non_null(strstr(attn_context_last_error(ctx), "mass"));
  assert_null(plan);
  attn_kvcache_destroy(cache);
  attn_desc_destroy(d);
  tu_tensor_free(kn); tu_tensor_free(q); tu_tensor_free(o); tu_tensor_free(m); tu_tensor_free(mb);
  attn_context_destroy(ctx);
}

/* Block-sparse plans run the exact kernel: with sinks they equal the
 * reference restricted to the layout, with the extra logit, and their
 * per-key mass is the column sums of its weights. */
typedef struct lay_pred {
  const uint8_t *lay;
  int64_t bs, nkb;
} lay_pred;
static bool layout_pred(void *u, int64_t b, int64_t h, int64_t i, int64_t j) {
  (void)b, (void)h;
  const lay_pred *l = u;
  return l->lay[(i / l->bs) * l->nkb + j / l->bs] != 0;
}

static void sparse_sinks_and_mass_match_reference(void **state) {
  (void)state;
  const int64_t B = 1, H = 2, S = 96, D = 8, bs = 16, nb = 6;
  uint64_t seed = 77;
  attn_context *ctx = tu_context(2);
  uint8_t lay[36];
  for (int64_t r = 0; r < nb; r++)
    for (int64_t c = 0; c < nb; c++) lay[r * nb + c] = (uint8_t)(r == c || c == 0 || (r + c) % 4 == 1);
  lay[3 * nb + 0] = 0; /* a row block that keeps only its diagonal and one more */
  double lay_d[36];
  for (int i = 0; i < 36; i++) lay_d[i] = lay[i];
  const int64_t lsh[3] = {1, nb, nb};
  attn_tensor *tlay = tu_tensor(ctx, ATTN_DTYPE_U8, lay_d, 3, lsh);
  double sinks[2] = {1.5, -0.5};
  double *q = tu_random((size_t)(B * H * S * D), &seed), *k = tu_random((size_t)(B * H * S * D), &seed);
  double *v = tu_random((size_t)(B * H * S * D), &seed);
  attn_desc *d = NULL;
  assert_int_equal(attn_desc_create(ctx, &d), ATTN_OK);
  assert_int_equal(attn_desc_set_variant(d, ATTN_VARIANT_BLOCK_SPARSE), ATTN_OK);
  assert_int_equal(attn_desc_set_block_size(d, bs), ATTN_OK);
  assert_int_equal(attn_desc_set_block_layout(d, tlay), ATTN_OK);
  assert_int_equal(attn_desc_set_sinks(d, sinks, H), ATTN_OK);
  const int64_t msh[3] = {B, H, S};
  attn_tensor *tm = tu_tensor(ctx, ATTN_DTYPE_F64, NULL, 3, msh);
  assert_int_equal(attn_desc_set_key_mass(d, tm), ATTN_OK);
  attn_tensor *tq = tu_tensor4(ctx, ATTN_DTYPE_F64, q, B, H, S, D, false);
  attn_tensor *tk = tu_tensor4(ctx, ATTN_DTYPE_F64, k, B, H, S, D, false);
  attn_tensor *tv = tu_tensor4(ctx, ATTN_DTYPE_F64, v, B, H, S, D, false);
  attn_tensor *to = tu_tensor4(ctx, ATTN_DTYPE_F64, NULL, B, H, S, D, false);
  const int64_t ls[3] = {B, H, S};
  attn_tensor *tl = tu_tensor(ctx, ATTN_DTYPE_F64, NULL, 3, ls);
  attn_plan *plan = NULL;
  attn_status st = attn_plan_create(ctx, d, tq, tk, tv, to, NULL, tl, &plan);
  if (st != ATTN_OK) fail_msg("plan: %s", attn_context_last_error(ctx));
  assert_int_equal(attn_plan_execute(plan, tq, tk, tv, to, NULL, tl), ATTN_OK);
  lay_pred lp = {lay, bs, nb};
  ref_problem p;
  ref_problem_init(&p, B, H, S, S, D);
  p.sink = sinks;
  p.keep = layout_pred;
  p.keep_user = &lp;
  double *ro = malloc((size_t)(B * H * S * D) * 8), *rl = malloc((size_t)(B * H * S) * 8);
  double *go = malloc((size_t)(B * H * S * D) * 8), *gl = malloc((size_t)(B * H * S) * 8);
  double *rw = malloc((size_t)(B * H * S * S) * 8), *gm = malloc((size_t)(B * H * S) * 8);
  double *rm = calloc((size_t)(B * H * S), 8);
  ref_attention(&p, q, k, v, ro, rw, rl, NULL);
  tu_read(to, go);
  tu_read(tl, gl);
  tu_read(tm, gm);
  for (int64_t bh = 0; bh < B * H; bh++)
    for (int64_t i = 0; i < S; i++)
      for (int64_t j = 0; j < S; j++) rm[bh * S + j] += rw[(bh * S + i) * S + j];
  for (int64_t i = 0; i < B * H * S; i++) expect_close("sparse mass", gm[i], rm[i], true, rm[i]);
  free(rw);
  free(gm);
  free(rm);
  tu_tensor_free(tm);
  for (int64_t i = 0; i < B * H * S * D; i++) expect_close("sparse out", go[i], ro[i], true, 0);
  for (int64_t i = 0; i < B * H * S; i++) expect_close("sparse lse", gl[i], rl[i], true, fabs(rl[i]));
  attn_plan_destroy(plan);
  attn_desc_destroy(d);
  tu_tensor_free(tq); tu_tensor_free(tk); tu_tensor_free(tv); tu_tensor_free(to); tu_tensor_free(tl);
  tu_tensor_free(tlay);
  free(q); free(k); free(v); free(ro); free(rl); free(go); free(gl);
  attn_context_destroy(ctx);
}

/* The mass under every mask kind of a padded batch: key and query lengths,
 * a bool mask and an additive mask (which turn GQA stacking off: one task
 * then runs every head of its KV group), ALiBi; per head and per group,
 * f32 and f64: column sums of the reference weights. */
static void mass_with_dense_masks_and_lengths(void **state) {
  (void)state;
  const int64_t B = 2, H = 4, Hkv = 2, Sq = 70, Sk = 90, D = 8;
  for (int dt = 0; dt < 2; dt++)
    for (int grouped = 0; grouped < 2; grouped++) {
      const attn_dtype T = dt ? ATTN_DTYPE_F64 : ATTN_DTYPE_F32;
      uint64_t seed = 900 + (uint64_t)(dt * 2 + grouped);
      attn_context *ctx = tu_context(3);
      double *q = tu_random((size_t)(B * H * Sq * D), &seed), *k = tu_random((size_t)(B * Hkv * Sk * D), &seed);
      double *v = tu_random((size_t)(B * Hkv * Sk * D), &seed);
      const size_t nm = (size_t)(B * H * Sq * Sk);
      uint8_t *bm = malloc(nm);
      double *am = malloc(nm * 8), *bmd = malloc(nm * 8);
      for (size_t i = 0; i < nm; i++) {
        bm[i] = (uint8_t)(tu_uniform(&seed, 0, 1) < 0.8);
        bmd[i] = bm[i];
        am[i] = tu_uniform(&seed, 0, 1) < 0.05 ? -INFINITY : tu_uniform(&seed, -1, 1);
      }
      int64_t klen[2] = {Sk, 41}, qlen[2] = {33, Sq};
      double slopes[4] = {0.1, 0.05, 0.2, 0.0};
      attn_desc *d = NULL;
      assert_int_equal(attn_desc_create(ctx, &d), ATTN_OK);
      assert_int_equal(attn_desc_set_causal(d, ATTN_CAUSAL_BOTTOM_RIGHT), ATTN_OK);
      assert_int_equal(attn_desc_set_key_lengths(d, klen, B), ATTN_OK);
      assert_int_equal(attn_desc_set_query_lengths(d, qlen, B), ATTN_OK);
      assert_int_equal(attn_desc_set_alibi(d, slopes, H), ATTN_OK);
      const int64_t msh4[4] = {B, H, Sq, Sk};
      attn_tensor *tbm = tu_tensor(ctx, ATTN_DTYPE_U8, bmd, 4, msh4), *tam = tu_tensor(ctx, T, am, 4, msh4);
      assert_int_equal(attn_desc_set_bool_mask(d, tbm), ATTN_OK);
      assert_int_equal(attn_desc_set_additive_mask(d, tam), ATTN_OK);
      const int64_t ms[3] = {B, grouped ? Hkv : H, Sk};
      attn_tensor *tm = tu_tensor(ctx, T, NULL, 3, ms);
      assert_int_equal(attn_desc_set_key_mass(d, tm), ATTN_OK);
      attn_tensor *tq = tu_tensor4(ctx, T, q, B, H, Sq, D, true), *tk = tu_tensor4(ctx, T, k, B, Hkv, Sk, D, true);
      attn_tensor *tv = tu_tensor4(ctx, T, v, B, Hkv, Sk, D, true), *to = tu_tensor4(ctx, T, NULL, B, H, Sq, D, true);
      attn_plan *plan = NULL;
      attn_status st = attn_plan_create(ctx, d, tq, tk, tv, to, NULL, NULL, &plan);
      if (st != ATTN_OK) fail_msg("plan: %s", attn_context_last_error(ctx));
      assert_int_equal(attn_plan_execute(plan, tq, tk, tv, to, NULL, NULL), ATTN_OK);
      ref_problem p;
      ref_problem_init(&p, B, H, Sq, Sk, D);
      p.Hkv = Hkv;
      p.causal = ATTN_CAUSAL_BOTTOM_RIGHT;
      p.key_len = klen;
      p.query_len = qlen;
      p.alibi = slopes;
      p.bool_mask = bm;
      p.add_mask = am;
      double *ro = malloc((size_t)(B * H * Sq * D) * 8), *rw = malloc(nm * 8);
      ref_attention(&p, q, k, v, ro, rw, NULL, NULL);
      const size_t nmass = (size_t)(ms[0] * ms[1] * Sk);
      double *gm = malloc(nmass * 8), *rm = calloc(nmass, 8);
      tu_read(tm, gm);
      for (int64_t b = 0; b < B; b++)
        for (int64_t h = 0; h < H; h++)
          for (int64_t i = 0; i < Sq; i++)
            for (int64_t j = 0; j < Sk; j++)
              rm[(b * ms[1] + (grouped ? h / (H / Hkv) : h)) * Sk + j] += rw[((b * H + h) * Sq + i) * Sk + j];
      for (size_t x = 0; x < nmass; x++) expect_close("masked mass", gm[x], rm[x], dt == 1, rm[x]);
      attn_plan_destroy(plan);
      attn_desc_destroy(d);
      tu_tensor_free(tq); tu_tensor_free(tk); tu_tensor_free(tv); tu_tensor_free(to);
      tu_tensor_free(tm); tu_tensor_free(tbm); tu_tensor_free(tam);
      free(q); free(k); free(v); free(bm); free(bmd); free(am); free(ro); free(rw); free(gm); free(rm);
      attn_context_destroy(ctx);
    }
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(varlen_matches_each_sequence_alone),
      cmocka_unit_test(varlen_masks_per_sequence),
      cmocka_unit_test(sinks_match_reference),
      cmocka_unit_test(mass_is_column_sums),
      cmocka_unit_test(mass_with_dense_masks_and_lengths),
      cmocka_unit_test(serving_deterministic_across_threads),
      cmocka_unit_test(kvcache_sinks_match_reference),
      cmocka_unit_test(sparse_sinks_and_mass_match_reference),
      cmocka_unit_test(kvcache_keep_first_matches_reference),
      cmocka_unit_test(kvcache_keep_first_and_mass_bad_input),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}

/* Linear attention (elu+1, Performer FAVOR+) against definitions written
 * here in f64: the explicit O(S²) form of elu+1 attention, softmax attention
 * (tests/common/reference.c) for FAVOR+, the unbiasedness of the FAVOR+ kernel
 * estimate, the reproducible random numbers, and the plan's contract (bad
 * input, redraw, zero allocations in execute, thread-count independence). */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "approx/linear.h"
#include "approx/rng.h"
#include "testutil.h"

static double elu1(double x) { return x > 0 ? x + 1 : exp(x); }

/* out_i = Σ_j w_ij v_j / Σ_j w_ij, w_ij = φ(q_i)·φ(k_j) over the keys ref_kept()
 * keeps (causal alignment, key and query lengths); no kept key → 0.
 * bound_i = Σ_j p_ij |v_j| for the tolerance. */
static void ref_linear_elu(const ref_problem *p, const double *q, const double *k,
                           const double *v, double *out, double *bound) {
  const int64_t group = p->H / p->Hkv, D = p->Dk, Dv = p->Dv;
  double *w = malloc((size_t)p->Sk * sizeof *w);
  for (int64_t b = 0; b < p->B; b++)
    for (int64_t h = 0; h < p->H; h++)
      for (int64_t i = 0; i < p->Sq; i++) {
        const int64_t kh = h / group;
        const double *qi = q + ((b * p->H + h) * p->Sq + i) * D;
        double den = 0;
        for (int64_t j = 0; j < p->Sk; j++) {
          w[j] = 0;
          if (!ref_kept(p, b, h, i, j)) continue;
          const double *kj = k + ((b * p->Hkv + kh) * p->Sk + j) * D;
          for (int64_t x = 0; x < D; x++) w[j] += elu1(qi[x]) * elu1(kj[x]);
          den += w[j];
        }
        double *oi = out + ((b * p->H + h) * p->Sq + i) * Dv;
        double *bi = bound + ((b * p->H + h) * p->Sq + i) * Dv;
        for (int64_t x = 0; x < Dv; x++) oi[x] = bi[x] = 0;
        if (den == 0) continue;
        for (int64_t j = 0; j < p->Sk; j++) {
          if (w[j] == 0) continue;
          const double *vj = v + ((b * p->Hkv + kh) * p->Sk + j) * Dv;
          for (int64_t x = 0; x < Dv; x++) {
            oi[x] += w[j] / den * vj[x];
            bi[x] += w[j] / den * fabs(vj[x]);
          }
        }
      }
  free(w);
}

typedef struct lin_case {
  int64_t B, H, Hkv, Sq, Sk, D, Dv;
  int causal;
  bool bshd;
  attn_dtype dt;
  bool klens, qlens;
} lin_case;

/* Runs the library on random data for a case; fills out (dense f64). */
static void run_lib(attn_context *ctx, attn_desc *d, const lin_case *c, const double *q,
                    const double *k, const double *v, double *out) {
  attn_tensor *tq = tu_tensor4(ctx, c->dt, q, c->B, c->H, c->Sq, c->D, c->bshd);
  attn_tensor *tk = tu_tensor4(ctx, c->dt, k, c->B, c->Hkv, c->Sk, c->D, c->bshd);
  attn_tensor *tv = tu_tensor4(ctx, c->dt, v, c->B, c->Hkv, c->Sk, c->Dv, c->bshd);
  attn_tensor *to = tu_tensor4(ctx, c->dt, NULL, c->B, c->H, c->Sq, c->Dv, c->bshd);
  attn_plan *plan = NULL;
  if (attn_plan_create(ctx, d, tq, tk, tv, to, NULL, NULL, &plan) != ATTN_OK)
    fail_msg("plan: %s", attn_context_last_error(ctx));
  assert_int_equal(attn_plan_execute(plan, tq, tk, tv, to, NULL, NULL), ATTN_OK);
  assert_int_equal(attn_plan_execute(plan, tq, tk, tv, to, NULL, NULL), ATTN_OK);
  tu_read(to, out);
  attn_plan_destroy(plan);
  tu_tensor_free(tq); tu_tensor_free(tk); tu_tensor_free(tv); tu_tensor_free(to);
}

static void check_elu_case(attn_context *ctx, const lin_case *c, uint64_t seed) {
  ref_problem p;
  ref_problem_init(&p, c->B, c->H, c->Sq, c->Sk, c->D);
  p.Hkv = c->Hkv;
  p.Dv = c->Dv;
  p.causal = c->causal;
  int64_t kl[8], ql[8];
  for (int64_t b = 0; b < c->B; b++) {
    kl[b] = (int64_t)tu_uniform(&seed, 0, (double)c->Sk + 0.99);
    ql[b] = (int64_t)tu_uniform(&seed, 0, (double)c->Sq + 0.99);
  }
  if (c->klens) kl[0] = 0; /* an all-padding item: out 0 */
  if (c->klens) p.key_len = kl;
  if (c->qlens) p.query_len = ql;
  size_t nq = (size_t)(c->B * c->H * c->Sq * c->D), nk = (size_t)(c->B * c->Hkv * c->Sk * c->D);
  size_t nv = (size_t)(c->B * c->Hkv * c->Sk * c->Dv), no = (size_t)(c->B * c->H * c->Sq * c->Dv);
  double *q = tu_random(nq, &seed), *k = tu_random(nk, &seed), *v = tu_random(nv, &seed);
  for (size_t i = 0; i < nq; i++) q[i] *= 2.0;
  /* Padded keys hold NaN: they must never be read. */
  if (c->klens)
    for (int64_t b = 0; b < c->B; b++)
      for (int64_t h = 0; h < c->Hkv; h++)
        for (int64_t j = kl[b]; j < c->Sk; j++) {
          k[((b * c->Hkv + h) * c->Sk + j) * c->D] = NAN;
          v[((b * c->Hkv + h) * c->Sk + j) * c->Dv] = NAN;
        }
  double *ro = malloc(no * 8), *rb = malloc(no * 8), *go = malloc(no * 8);
  ref_linear_elu(&p, q, k, v, ro, rb);
  attn_desc *d = NULL;
  assert_int_equal(attn_desc_create(ctx, &d), ATTN_OK);
  assert_int_equal(attn_desc_set_variant(d, ATTN_VARIANT_LINEAR_ELU), ATTN_OK);
  assert_int_equal(attn_desc_set_causal(d, (attn_causal)c->causal), ATTN_OK);
  if (c->klens) assert_int_equal(attn_desc_set_key_lengths(d, kl, c->B), ATTN_OK);
  if (c->qlens) assert_int_equal(attn_desc_set_query_lengths(d, ql, c->B), ATTN_OK);
  run_lib(ctx, d, c, q, k, v, go);
  const bool f64 = c->dt == ATTN_DTYPE_F64;
  double max_err;
  size_t bad = tu_violations(go, ro, rb, no, f64 ? 1e-12 : 1e-5, f64 ? 1e-13 : 1e-6, &max_err);
  if (bad)
    fail_msg("elu+1: %zu of %zu off (max err %g): B%lld H%lld/%lld Sq%lld Sk%lld D%lld Dv%lld "
             "causal%d bshd%d %s klens%d qlens%d", bad, no, max_err, (long long)c->B,
             (long long)c->H, (long long)c->Hkv, (long long)c->Sq, (long long)c->Sk,
             (long long)c->D, (long long)c->Dv, c->causal, c->bshd, f64 ? "f64" : "f32",
             c->klens, c->qlens);
  attn_desc_destroy(d);
  free(q); free(k); free(v); free(ro); free(rb); free(go);
}

/* elu+1 equals its O(S²) definition, causal (both alignments) and not, with
 * padding, GQA, both layouts, lengths around the chunk size. */
static void elu_matches_explicit_definition(void **state) {
  (void)state;
  attn_context *ctx = tu_context(2);
  const int64_t C = ATTN_LINEAR_CHUNK;
  const int64_t S[] = {1, 2, 7, C - 1, C, C + 1, 2 * C + 3, 3 * C - 5, 200};
  uint64_t seed = 12345;
  int n = 0;
  for (int causal = 0; causal < 3; causal++)
    for (int a = 0; a < 9; a++) {
      lin_case c = {0};
      c.B = 1 + (int64_t)tu_uniform(&seed, 0, 2.99);
      c.Hkv = 1 + (int64_t)tu_uniform(&seed, 0, 1.99);
      c.H = c.Hkv * (1 + (int64_t)tu_uniform(&seed, 0, 1.99));
      c.Sq = S[a];
      c.Sk = causal == 1 ? S[a] : S[(a + 3) % 9]; /* cross lengths for none/bottom-right */
      c.D = (int64_t[]){1, 5, 16, 33}[(int)tu_uniform(&seed, 0, 3.99)];
      c.Dv = tu_uniform(&seed, 0, 1) < 0.5 ? c.D : 7;
      c.causal = causal;
      c.bshd = tu_uniform(&seed, 0, 1) < 0.5;
      c.dt = tu_uniform(&seed, 0, 1) < 0.5 ? ATTN_DTYPE_F32 : ATTN_DTYPE_F64;
      c.klens = tu_uniform(&seed, 0, 1) < 0.5;
      c.qlens = tu_uniform(&seed, 0, 1) < 0.3;
      check_elu_case(ctx, &c, seed + (uint64_t)a);
      c.dt = c.dt == ATTN_DTYPE_F32 ? ATTN_DTYPE_F64 : ATTN_DTYPE_F32;
      c.klens = !c.klens;
      check_elu_case(ctx, &c, seed + 100 + (uint64_t)a);
      n += 2;
    }
  /* A long causal run: many chunks of state. */
  lin_case big = {1, 2, 1, 1000, 1000, 32, 32, 1, false, ATTN_DTYPE_F32, true, false};
  check_elu_case(ctx, &big, 9);
  /* Bottom-right with S_q > S_k: leading rows keep nothing and give 0. */
  lin_case br = {2, 1, 1, 150, 70, 8, 8, 2, true, ATTN_DTYPE_F64, false, false};
  check_elu_case(ctx, &br, 10);
  print_message("%d elu+1 cases checked\n", n + 2);
  attn_context_destroy(ctx);
}

/* FAVOR+ written out in f64 from the drawn projection: φ(x)_i =
 * exp(ω_i·x' − |x'|²/2)/√m with x' = √scale·x, out_i = Σ_j (φ(q_i)·φ(k_j)) v_j
 * / Σ_j φ(q_i)·φ(k_j) over the keys ref_kept() keeps. No stabiliser here: the
 * inputs are small enough for plain exp. */
static void ref_performer(const ref_problem *p, int64_t m, uint64_t fseed, const double *q,
                          const double *k, const double *v, double *out, double *bound) {
  const int64_t D = p->Dk, Dv = p->Dv, group = p->H / p->Hkv;
  const double sc = sqrt(p->scale > 0 ? p->scale : 1.0 / sqrt((double)D));
  double *w = malloc((size_t)(m * D) * sizeof *w);
  double *fq = malloc((size_t)m * sizeof *fq), *fk = malloc((size_t)(p->Sk * m) * sizeof *fk);
  double *wt = malloc((size_t)p->Sk * sizeof *wt);
  attn_favor_draw(fseed, m, D, w);
  for (int64_t b = 0; b < p->B; b++)
    for (int64_t h = 0; h < p->H; h++) {
      const int64_t kh = h / group;
      for (int64_t j = 0; j < p->Sk; j++) {
        const double *kj = k + ((b * p->Hkv + kh) * p->Sk + j) * D;
        double nn = 0;
        for (int64_t x = 0; x < D; x++) nn += sc * kj[x] * sc * kj[x];
        for (int64_t i = 0; i < m; i++) {
          double e = 0;
          for (int64_t x = 0; x < D; x++) e += w[i * D + x] * sc * kj[x];
          fk[j * m + i] = exp(e - nn / 2) / sqrt((double)m);
        }
      }
      for (int64_t i = 0; i < p->Sq; i++) {
        const double *qi = q + ((b * p->H + h) * p->Sq + i) * D;
        double nn = 0;
        for (int64_t x = 0; x < D; x++) nn += sc * qi[x] * sc * qi[x];
        for (int64_t f = 0; f < m; f++) {
          double e = 0;
          for (int64_t x = 0; x < D; x++) e += w[f * D + x] * sc * qi[x];
          fq[f] = exp(e - nn / 2) / sqrt((double)m);
        }
        double den = 0;
        for (int64_t j = 0; j < p->Sk; j++) {
          wt[j] = 0;
          if (!ref_kept(p, b, h, i, j)) continue;
          for (int64_t f = 0; f < m; f++) wt[j] += fq[f] * fk[j * m + f];
          den += wt[j];
        }
        double *oi = out + ((b * p->H + h) * p->Sq + i) * Dv;
        double *bi = bound + ((b * p->H + h) * p->Sq + i) * Dv;
        for (int64_t x = 0; x < Dv; x++) oi[x] = bi[x] = 0;
        if (den == 0) continue;
        for (int64_t j = 0; j < p->Sk; j++) {
          if (wt[j] == 0) continue;
          const double *vj = v + ((b * p->Hkv + kh) * p->Sk + j) * Dv;
          for (int64_t x = 0; x < Dv; x++) {
            oi[x] += wt[j] / den * vj[x];
            bi[x] += wt[j] / den * fabs(vj[x]);
          }
        }
      }
    }
  free(w); free(fq); free(fk); free(wt);
}

/* The library computes exactly the FAVOR+ estimator of its drawn features
 * (stabilisers and chunking change nothing but rounding): causal both ways,
 * padding, GQA, custom scale, m not a multiple of d, lengths around the chunk. */
static void performer_matches_explicit_estimator(void **state) {
  (void)state;
  attn_context *ctx = tu_context(2);
  const int64_t C = ATTN_LINEAR_CHUNK;
  uint64_t seed = 4242;
  const int64_t S[] = {1, C - 1, C + 1, 2 * C + 5, 150};
  for (int causal = 0; causal < 3; causal++)
    for (int a = 0; a < 5; a++) {
      lin_case c = {2, 2, 1, S[a], causal == 1 ? S[a] : S[(a + 2) % 5], 12, 5, causal,
                    a % 2 == 1, a % 2 ? ATTN_DTYPE_F32 : ATTN_DTYPE_F64, true, a == 3};
      ref_problem p;
      ref_problem_init(&p, c.B, c.H, c.Sq, c.Sk, c.D);
      p.Hkv = c.Hkv;
      p.Dv = c.Dv;
      p.causal = causal;
      p.scale = a == 2 ? 0.2 : 0.0;
      int64_t kl[2] = {c.Sk, (int64_t)tu_uniform(&seed, 0, (double)c.Sk + 0.99)};
      int64_t ql[2] = {(int64_t)tu_uniform(&seed, 0, (double)c.Sq + 0.99), c.Sq};
      p.key_len = kl;
      if (c.qlens) p.query_len = ql;
      const size_t nq = (size_t)(c.B * c.H * c.Sq * c.D), nk = (size_t)(c.B * c.Sk * c.D);
      const size_t nv = (size_t)(c.B * c.Sk * c.Dv), no = (size_t)(c.B * c.H * c.Sq * c.Dv);
      double *q = tu_random(nq, &seed), *k = tu_random(nk, &seed), *v = tu_random(nv, &seed);
      double *ro = malloc(no * 8), *rb = malloc(no * 8), *go = malloc(no * 8);
      const int64_t m = 30; /* 2 full blocks of 12 and a partial one */
      const uint64_t fseed = 99 + (uint64_t)a;
      ref_performer(&p, m, fseed, q, k, v, ro, rb);
      attn_desc *d = NULL;
      assert_int_equal(attn_desc_create(ctx, &d), ATTN_OK);
      assert_int_equal(attn_desc_set_variant(d, ATTN_VARIANT_PERFORMER), ATTN_OK);
      assert_int_equal(attn_desc_set_features(d, m, fseed), ATTN_OK);
      assert_int_equal(attn_desc_set_causal(d, (attn_causal)causal), ATTN_OK);
      assert_int_equal(attn_desc_set_key_lengths(d, kl, 2), ATTN_OK);
      if (c.qlens) assert_int_equal(attn_desc_set_query_lengths(d, ql, 2), ATTN_OK);
      if (p.scale > 0) assert_int_equal(attn_desc_set_scale(d, p.scale), ATTN_OK);
      run_lib(ctx, d, &c, q, k, v, go);
      const bool f64 = c.dt == ATTN_DTYPE_F64;
      double e;
      size_t bad = tu_violations(go, ro, rb, no, f64 ? 1e-11 : 2e-5, f64 ? 1e-13 : 1e-6, &e);
      if (bad)
        fail_msg("performer: %zu of %zu off (max err %g) causal %d Sq %lld Sk %lld %s", bad, no, e,
                 causal, (long long)c.Sq, (long long)c.Sk, f64 ? "f64" : "f32");
      attn_desc_destroy(d);
      free(q); free(k); free(v); free(ro); free(rb); free(go);
    }
  attn_context_destroy(ctx);
}

/* Mean relative error of Performer against exact softmax attention. */
static double performer_error(attn_context *ctx, int64_t m, uint64_t fseed, int causal,
                              attn_dtype dt, const double *q, const double *k, const double *v,
                              const double *ro, const lin_case *c) {
  size_t no = (size_t)(c->B * c->H * c->Sq * c->Dv);
  double *go = malloc(no * 8);
  attn_desc *d = NULL;
  assert_int_equal(attn_desc_create(ctx, &d), ATTN_OK);
  assert_int_equal(attn_desc_set_variant(d, ATTN_VARIANT_PERFORMER), ATTN_OK);
  assert_int_equal(attn_desc_set_features(d, m, fseed), ATTN_OK);
  assert_int_equal(attn_desc_set_causal(d, (attn_causal)causal), ATTN_OK);
  lin_case cc = *c;
  cc.dt = dt;
  run_lib(ctx, d, &cc, q, k, v, go);
  double num = 0, den = 0;
  for (size_t i = 0; i < no; i++) {
    assert_false(isnan(go[i]));
    num += fabs(go[i] - ro[i]);
    den += fabs(ro[i]);
  }
  attn_desc_destroy(d);
  free(go);
  return num / den;
}

/* FAVOR+ approximates softmax(q·k/√d) attention, better with more features. */
static void performer_error_decreases_with_features(void **state) {
  (void)state;
  attn_context *ctx = tu_context(2);
  lin_case c = {1, 2, 2, 96, 96, 16, 16, 0, false, ATTN_DTYPE_F64, false, false};
  uint64_t seed = 777;
  size_t nq = (size_t)(c.B * c.H * c.Sq * c.D), no = nq;
  double *q = tu_random(nq, &seed), *k = tu_random(nq, &seed), *v = tu_random(nq, &seed);
  double *ro = malloc(no * 8);
  const int64_t ms[4] = {16, 64, 256, 1024};
  for (int causal = 0; causal < 2; causal++) {
    ref_problem p;
    ref_problem_init(&p, c.B, c.H, c.Sq, c.Sk, c.D);
    p.causal = causal;
    ref_attention(&p, q, k, v, ro, NULL, NULL, NULL);
    double err[4];
    for (int a = 0; a < 4; a++) {
      err[a] = 0;
      for (uint64_t s = 1; s <= 6; s++)
        err[a] += performer_error(ctx, ms[a], s * 1000 + 17, causal,
                                  s % 2 ? ATTN_DTYPE_F64 : ATTN_DTYPE_F32, q, k, v, ro, &c) / 6;
    }
    print_message("performer %s mean rel err m=16: %.4f  64: %.4f  256: %.4f  1024: %.4f\n",
                  causal ? "causal" : "full", err[0], err[1], err[2], err[3]);
    for (int a = 1; a < 4; a++) assert_true(err[a] < err[a - 1]);
    /* Monte Carlo: the error shrinks towards 1/√m; from m = 16 to 1024 numpy's
     * i.i.d. FAVOR+ on data like this gains ~3.6× (0.48 → 0.13, relative to
     * the small mean |out| of random values); ask for 3× and for m = 1024 to
     * be within 20%. */
    assert_true(err[3] < err[0] / 3);
    assert_true(err[3] < 0.2);
  }
  free(q); free(k); free(v); free(ro);
  attn_context_destroy(ctx);
}

/* E[φ(x)·φ(y)] = exp(x·y) for the drawn features: the sample mean over many
 * seeds lies within 4 standard errors of exp(x·y). Also: orthogonal rows
 * within a block, χ-distributed norms (not all equal), determinism per seed. */
static void favor_kernel_estimate_is_unbiased(void **state) {
  (void)state;
  const int64_t d = 6;
  const int64_t ms[3] = {6, 15, 64}; /* one block, a partial block, many blocks */
  const double x[6] = {0.4, -0.3, 0.8, 0.1, -0.5, 0.2};
  const double y[6] = {0.3, 0.6, -0.2, 0.7, 0.1, -0.4};
  double xy = 0, xx = 0, yy = 0;
  for (int i = 0; i < d; i++) { xy += x[i] * y[i]; xx += x[i] * x[i]; yy += y[i] * y[i]; }
  const double want = exp(xy);
  const int N = 3000;
  for (int a = 0; a < 3; a++) {
    const int64_t m = ms[a];
    double *w = malloc((size_t)(m * d) * sizeof *w), *w2 = malloc((size_t)(m * d) * sizeof *w2);
    double sum = 0, sum2 = 0;
    for (int s = 0; s < N; s++) {
      attn_favor_draw((uint64_t)s * 7919 + 1, m, d, w);
      double est = 0;
      for (int64_t i = 0; i < m; i++) {
        double wx = 0, wy = 0;
        for (int64_t t = 0; t < d; t++) { wx += w[i * d + t] * x[t]; wy += w[i * d + t] * y[t]; }
        est += exp(wx - xx / 2) * exp(wy - yy / 2) / (double)m;
      }
      sum += est;
      sum2 += est * est;
      if (s < 5) { /* structure of the draw */
        for (int64_t i = 0; i < m; i++)
          for (int64_t j = (i / d) * d; j < i; j++) {
            double dot = 0, ni = 0, nj = 0;
            for (int64_t t = 0; t < d; t++) {
              dot += w[i * d + t] * w[j * d + t];
              ni += w[i * d + t] * w[i * d + t];
              nj += w[j * d + t] * w[j * d + t];
            }
            assert_true(fabs(dot) <= 1e-12 * sqrt(ni * nj));
            assert_true(fabs(ni - nj) > 1e-9); /* norms differ: rescaled by χ draws */
          }
        attn_favor_draw((uint64_t)s * 7919 + 1, m, d, w2);
        assert_memory_equal(w, w2, (size_t)(m * d) * sizeof *w);
      }
    }
    const double mean = sum / N, var = sum2 / N - mean * mean, se = sqrt(var / N);
    print_message("favor m=%lld: mean %.5f want %.5f (se %.5f)\n", (long long)m, mean, want, se);
    assert_true(fabs(mean - want) <= 4 * se);
    assert_true(se < 0.05 * want); /* the bound is informative */
    free(w);
    free(w2);
  }
}

/* Reproducible random numbers: xoshiro256** outputs pinned from an
 * independent implementation (Python), and the home-made log against libm. */
static void rng_is_reproducible(void **state) {
  (void)state;
  attn_rng r;
  attn_rng_seed(&r, 42, 0);
  /* splitmix64(42 ^ 0) state, then xoshiro256**: computed with Python ints. */
  static const uint64_t want[4] = {0x15780B2E0C2EC716ULL, 0x6104D9866D113A7EULL,
                                   0xAE17533239E499A1ULL, 0xECB8AD4703B360A1ULL};
  for (int i = 0; i < 4; i++) assert_true(attn_rng_next(&r) == want[i]);
  uint64_t s = 3;
  for (int i = 0; i < 10000; i++) {
    double xv = exp(tu_uniform(&s, -700, 700));
    double got = attn_det_log(xv), ref = log(xv);
    assert_true(fabs(got - ref) <= 4e-16 * fabs(ref) + 1e-300);
  }
  assert_true(attn_det_log(1.0) == 0.0);
  /* Normal draws: mean 0, variance 1 (loose, 1e5 samples). */
  attn_rng_seed(&r, 9, 1);
  double m1 = 0, m2 = 0;
  const int n = 100000;
  for (int i = 0; i < n; i++) {
    double g = attn_rng_normal(&r);
    m1 += g / n;
    m2 += g * g / n;
  }
  assert_true(fabs(m1) < 0.02);
  assert_true(fabs(m2 - 1) < 0.02);
}

static attn_desc *performer_desc(attn_context *ctx, int64_t m, uint64_t seed, int causal) {
  attn_desc *d = NULL;
  assert_int_equal(attn_desc_create(ctx, &d), ATTN_OK);
  assert_int_equal(attn_desc_set_variant(d, ATTN_VARIANT_PERFORMER), ATTN_OK);
  assert_int_equal(attn_desc_set_features(d, m, seed), ATTN_OK);
  assert_int_equal(attn_desc_set_causal(d, (attn_causal)causal), ATTN_OK);
  return d;
}

/* Redraw changes the output, is deterministic per seed (equals a fresh plan
 * with that seed, bit for bit) and allocates nothing. */
static void redraw_is_deterministic_per_seed(void **state) {
  (void)state;
  tu_counter cnt = {0};
  attn_context *ctx = tu_counting_context(&cnt, 2);
  const int64_t B = 1, H = 2, S = 100, D = 16, m = 40;
  uint64_t seed = 5;
  const size_t n = (size_t)(B * H * S * D);
  double *x = tu_random(n, &seed);
  attn_tensor *tq = tu_tensor4(ctx, ATTN_DTYPE_F32, x, B, H, S, D, false);
  attn_tensor *to = tu_tensor4(ctx, ATTN_DTYPE_F32, NULL, B, H, S, D, false);
  float *o1 = malloc(n * 4), *o2 = malloc(n * 4);
  for (int causal = 0; causal < 2; causal++) {
    attn_desc *d1 = performer_desc(ctx, m, 111, causal), *d2 = performer_desc(ctx, m, 222, causal);
    attn_plan *p1, *p2;
    assert_int_equal(attn_plan_create(ctx, d1, tq, tq, tq, to, NULL, NULL, &p1), ATTN_OK);
    assert_int_equal(attn_plan_create(ctx, d2, tq, tq, tq, to, NULL, NULL, &p2), ATTN_OK);
    assert_int_equal(attn_plan_execute(p2, tq, tq, tq, to, NULL, NULL), ATTN_OK);
    memcpy(o2, attn_tensor_data(to), n * 4);
    assert_int_equal(attn_plan_execute(p1, tq, tq, tq, to, NULL, NULL), ATTN_OK);
    memcpy(o1, attn_tensor_data(to), n * 4);
    assert_memory_not_equal(o1, o2, n * 4);
    int64_t before = cnt.allocs;
    assert_int_equal(attn_plan_redraw_features(p1, 222), ATTN_OK);
    assert_int_equal(attn_plan_execute(p1, tq, tq, tq, to, NULL, NULL), ATTN_OK);
    assert_memory_equal(o2, attn_tensor_data(to), n * 4);
    assert_int_equal(attn_plan_redraw_features(p1, 111), ATTN_OK);
    assert_int_equal(attn_plan_execute(p1, tq, tq, tq, to, NULL, NULL), ATTN_OK);
    assert_memory_equal(o1, attn_tensor_data(to), n * 4);
    assert_int_equal(cnt.allocs, before);
    attn_plan_destroy(p1);
    attn_plan_destroy(p2);
    attn_desc_destroy(d1);
    attn_desc_destroy(d2);
  }
  tu_tensor_free(tq);
  tu_tensor_free(to);
  attn_context_destroy(ctx);
  assert_int_equal(cnt.outstanding_bytes, 0);
  free(x); free(o1); free(o2);
}

/* GQA: H_kv = 1 equals the same run with K/V repeated per head. Padding: an
 * item with no key gives 0 and never NaN (FAVOR+ too). */
static void performer_gqa_and_padding(void **state) {
  (void)state;
  attn_context *ctx = tu_context(2);
  const int64_t B = 2, H = 4, S = 77, D = 8;
  uint64_t seed = 8;
  double *q = tu_random((size_t)(B * H * S * D), &seed);
  double *k1 = tu_random((size_t)(B * S * D), &seed), *v1 = tu_random((size_t)(B * S * D), &seed);
  double *kr = malloc((size_t)(B * H * S * D) * 8), *vr = malloc((size_t)(B * H * S * D) * 8);
  for (int64_t b = 0; b < B; b++)
    for (int64_t h = 0; h < H; h++) {
      memcpy(kr + (b * H + h) * S * D, k1 + b * S * D, (size_t)(S * D) * 8);
      memcpy(vr + (b * H + h) * S * D, v1 + b * S * D, (size_t)(S * D) * 8);
    }
  const size_t no = (size_t)(B * H * S * D);
  double *og = malloc(no * 8), *om = malloc(no * 8);
  int64_t kl[2] = {0, 50};
  for (int causal = 0; causal < 3; causal++) {
    attn_desc *d = performer_desc(ctx, 32, 3, causal);
    assert_int_equal(attn_desc_set_key_lengths(d, kl, B), ATTN_OK);
    lin_case g = {B, H, 1, S, S, D, D, causal, true, ATTN_DTYPE_F64, true, false};
    lin_case mh = {B, H, H, S, S, D, D, causal, false, ATTN_DTYPE_F64, true, false};
    run_lib(ctx, d, &g, q, k1, v1, og);
    run_lib(ctx, d, &mh, q, kr, vr, om);
    double e;
    assert_int_equal(tu_violations(og, om, NULL, no, 1e-12, 1e-14, &e), 0);
    for (size_t i = 0; i < no / 2; i++) assert_true(og[i] == 0.0); /* b = 0: no keys */
    for (size_t i = 0; i < no; i++) assert_false(isnan(og[i]));
    attn_desc_destroy(d);
  }
  free(q); free(k1); free(v1); free(kr); free(vr); free(og); free(om);
  attn_context_destroy(ctx);
}

/* Large-norm inputs: the stabilisers keep FAVOR+ finite where exp(ω·x)
 * overflows, and the result stays a convex combination of values. */
static void performer_stabilizer_keeps_large_inputs_finite(void **state) {
  (void)state;
  attn_context *ctx = tu_context(1);
  const int64_t S = 130, D = 16;
  uint64_t seed = 21;
  double *q = tu_random((size_t)(S * D), &seed), *k = tu_random((size_t)(S * D), &seed);
  double *v = tu_random((size_t)(S * D), &seed), *o = malloc((size_t)(S * D) * 8);
  for (int64_t i = 0; i < S * D; i++) { q[i] *= 60; k[i] *= 60; } /* ω·x ~ 10³ */
  for (int dt = 1; dt <= 2; dt++)
    for (int causal = 0; causal < 2; causal++) {
      attn_desc *d = performer_desc(ctx, 64, 4, causal);
      lin_case c = {1, 1, 1, S, S, D, D, causal, false, (attn_dtype)dt, false, false};
      run_lib(ctx, d, &c, q, k, v, o);
      for (int64_t i = 0; i < S * D; i++) assert_true(isfinite(o[i]) && fabs(o[i]) <= 1.0 + 1e-5);
      attn_desc_destroy(d);
    }
  free(q); free(k); free(v); free(o);
  attn_context_destroy(ctx);
}

/* Same inputs on 1..3 threads: bitwise identical output. */
static void results_identical_across_thread_counts(void **state) {
  (void)state;
  const int64_t B = 2, H = 3, S = 150, D = 24;
  uint64_t seed = 31;
  const size_t n = (size_t)(B * H * S * D);
  double *x = tu_random(n, &seed);
  float *first = malloc(n * 4);
  for (int variant = 0; variant < 2; variant++)
    for (int causal = 0; causal < 2; causal++)
      for (int32_t th = 1; th <= 3; th++) {
        attn_context *ctx = tu_context(th);
        attn_tensor *t = tu_tensor4(ctx, ATTN_DTYPE_F32, x, B, H, S, D, false);
        attn_tensor *to = tu_tensor4(ctx, ATTN_DTYPE_F32, NULL, B, H, S, D, false);
        attn_desc *d = performer_desc(ctx, 50, 6, causal);
        if (variant == 1) assert_int_equal(attn_desc_set_variant(d, ATTN_VARIANT_LINEAR_ELU), ATTN_OK);
        assert_int_equal(attn_forward(ctx, d, t, t, t, to, NULL, NULL), ATTN_OK);
        if (th == 1)
          memcpy(first, attn_tensor_data(to), n * 4);
        else
          assert_memory_equal(first, attn_tensor_data(to), n * 4);
        attn_desc_destroy(d);
        tu_tensor_free(t);
        tu_tensor_free(to);
        attn_context_destroy(ctx);
      }
  free(x);
  free(first);
}

/* Plan creation allocates, execute does not; nothing leaks, even when an
 * allocation inside plan creation fails. */
static void execute_allocates_nothing_and_failures_leak_nothing(void **state) {
  (void)state;
  for (int variant = 0; variant < 2; variant++) {
    for (int64_t fail_at = 0; fail_at < 12; fail_at++) {
      tu_counter cnt = {0};
      attn_context *ctx = tu_counting_context(&cnt, 2);
      assert_non_null(ctx);
      const int64_t B = 1, H = 2, S = 200, D = 16;
      uint64_t seed = 2;
      double *x = tu_random((size_t)(B * H * S * D), &seed);
      attn_tensor *t = tu_tensor4(ctx, ATTN_DTYPE_F32, x, B, H, S, D, false);
      attn_tensor *to = tu_tensor4(ctx, ATTN_DTYPE_F32, NULL, B, H, S, D, false);
      attn_desc *d = performer_desc(ctx, 64, 1, 1);
      if (variant) assert_int_equal(attn_desc_set_variant(d, ATTN_VARIANT_LINEAR_ELU), ATTN_OK);
      cnt.fail_at = fail_at == 0 ? 0 : cnt.allocs + fail_at;
      attn_plan *plan = NULL;
      attn_status st = attn_plan_create(ctx, d, t, t, t, to, NULL, NULL, &plan);
      cnt.fail_at = 0;
      if (st == ATTN_OK) {
        const int64_t before = cnt.allocs;
        for (int r = 0; r < 4; r++) assert_int_equal(attn_plan_execute(plan, t, t, t, to, NULL, NULL), ATTN_OK);
        assert_int_equal(cnt.allocs, before);
        attn_plan_destroy(plan);
      } else {
        assert_int_equal(st, ATTN_ERR_NO_MEMORY);
        assert_null(plan);
      }
      attn_desc_destroy(d);
      tu_tensor_free(t);
      tu_tensor_free(to);
      attn_context_destroy(ctx);
      assert_int_equal(cnt.outstanding_bytes, 0);
      free(x);
    }
  }
}

static void expect_fail(attn_context *ctx, attn_status got, attn_status want, const char *needle) {
  if (got != want)
    fail_msg("status %d (%s), want %d; message: %s", (int)got, attn_status_string(got), (int)want,
             attn_context_last_error(ctx));
  if (strstr(attn_context_last_error(ctx), needle) == NULL)
    fail_msg("message '%s' does not name '%s'", attn_context_last_error(ctx), needle);
}

/* Bad input: documented statuses, a message naming the argument, no plan,
 * outputs untouched. */
static void bad_input_is_rejected(void **state) {
  (void)state;
  attn_context *ctx = tu_context(1);
  const int64_t B = 1, H = 2, S = 10, D = 4;
  uint64_t seed = 4;
  double *x = tu_random((size_t)(B * H * S * D), &seed);
  attn_tensor *t = tu_tensor4(ctx, ATTN_DTYPE_F32, x, B, H, S, D, false);
  attn_tensor *to = tu_tensor4(ctx, ATTN_DTYPE_F32, NULL, B, H, S, D, false);
  attn_tensor *tw = tu_tensor4(ctx, ATTN_DTYPE_F32, NULL, B, H, S, S, false);
  int64_t ls[3] = {B, H, S}, ms[4] = {1, 1, S, S};
  attn_tensor *tl = tu_tensor(ctx, ATTN_DTYPE_F32, NULL, 3, ls);
  attn_tensor *bm = tu_tensor(ctx, ATTN_DTYPE_U8, NULL, 4, ms);
  attn_tensor *am = tu_tensor(ctx, ATTN_DTYPE_F32, NULL, 4, ms);
  int64_t gs[2] = {D, D};
  attn_tensor *gw = tu_tensor(ctx, ATTN_DTYPE_F32, NULL, 2, gs);
  float *out = attn_tensor_data(to);
  for (int64_t i = 0; i < B * H * S * D; i++) out[i] = 42.0f;
  const double slopes[2] = {0.5, 0.25};
  const int64_t kl_bad[1] = {S + 1}, kl2[2] = {1, 1};
  attn_plan *canary = (attn_plan *)&seed;

  for (int variant = ATTN_VARIANT_LINEAR_ELU; variant <= ATTN_VARIANT_PERFORMER; variant++) {
    for (int opt = 0; opt < 11; opt++) {
      attn_desc *d = NULL;
      assert_int_equal(attn_desc_create(ctx, &d), ATTN_OK);
      assert_int_equal(attn_desc_set_variant(d, (attn_variant)variant), ATTN_OK);
      attn_tensor *w = NULL, *l = NULL;
      attn_status want = ATTN_ERR_UNSUPPORTED;
      const char *needle = NULL;
      switch (opt) {
        case 0: attn_desc_set_bool_mask(d, bm); needle = "bool_mask"; break;
        case 1: attn_desc_set_additive_mask(d, am); needle = "additive_mask"; break;
        case 2: attn_desc_set_alibi(d, slopes, 2); needle = "alibi"; break;
        case 3: attn_desc_set_window(d, 3, 0); needle = "window"; break;
        case 4: attn_desc_set_softcap(d, 30.0); needle = "softcap"; break;
        case 5: w = tw; needle = "weights"; break;
        case 6: l = tl; needle = "lse"; break;
        case 7:
          attn_desc_set_score(d, ATTN_SCORE_GENERAL);
          attn_desc_set_general_weight(d, gw);
          needle = "score";
          break;
        case 8:
          if (variant != ATTN_VARIANT_LINEAR_ELU) { attn_desc_destroy(d); continue; }
          attn_desc_set_scale(d, 0.5);
          needle = "scale";
          break;
        case 9:
          attn_desc_set_key_lengths(d, kl_bad, 1);
          want = ATTN_ERR_INVALID_ARG;
          needle = "key_lengths";
          break;
        case 10:
          attn_desc_set_key_lengths(d, kl2, 2);
          want = ATTN_ERR_SHAPE;
          needle = "key_lengths";
          break;
      }
      attn_plan *plan = canary;
      expect_fail(ctx, attn_plan_create(ctx, d, t, t, t, to, w, l, &plan), want, needle);
      assert_ptr_equal(plan, canary);
      expect_fail(ctx, attn_forward(ctx, d, t, t, t, to, w, l), want, needle);
      attn_desc_destroy(d);
    }
  }
  for (int64_t i = 0; i < B * H * S * D; i++) assert_true(out[i] == 42.0f);

  /* m ≤ 0 never reaches a plan. */
  attn_desc *d = performer_desc(ctx, 8, 1, 0);
  expect_fail(ctx, attn_desc_set_features(d, 0, 1), ATTN_ERR_INVALID_ARG, "num_features");
  expect_fail(ctx, attn_desc_set_features(d, -5, 1), ATTN_ERR_INVALID_ARG, "num_features");
  /* Absurd m: overflow or no memory, never a crash. */
  assert_int_equal(attn_desc_set_features(d, INT64_MAX / 4, 1), ATTN_OK);
  attn_plan *plan = canary;
  attn_status st = attn_plan_create(ctx, d, t, t, t, to, NULL, NULL, &plan);
  assert_true(st == ATTN_ERR_INVALID_ARG || st == ATTN_ERR_OVERFLOW || st == ATTN_ERR_NO_MEMORY);
  assert_non_null(strstr(attn_context_last_error(ctx), "num_features"));
  assert_ptr_equal(plan, canary);

  /* Execute with a tensor that differs from the plan's: MISMATCH, out untouched. */
  assert_int_equal(attn_desc_set_features(d, 8, 1), ATTN_OK);
  assert_int_equal(attn_plan_create(ctx, d, t, t, t, to, NULL, NULL, &plan), ATTN_OK);
  attn_tensor *tbshd = tu_tensor4(ctx, ATTN_DTYPE_F32, x, B, H, S, D, true);
  expect_fail(ctx, attn_plan_execute(plan, tbshd, t, t, to, NULL, NULL), ATTN_ERR_MISMATCH, "q");
  expect_fail(ctx, attn_plan_execute(plan, t, t, t, to, tw, NULL), ATTN_ERR_MISMATCH, "weights");
  for (int64_t i = 0; i < B * H * S * D; i++) assert_true(out[i] == 42.0f);
  attn_plan_destroy(plan);
  assert_int_equal(attn_plan_redraw_features(NULL, 1), ATTN_ERR_NULL_ARG);
  /* Redraw on elu+1: nothing to redraw. */
  assert_int_equal(attn_desc_set_variant(d, ATTN_VARIANT_LINEAR_ELU), ATTN_OK);
  assert_int_equal(attn_plan_create(ctx, d, t, t, t, to, NULL, NULL, &plan), ATTN_OK);
  expect_fail(ctx, attn_plan_redraw_features(plan, 3), ATTN_ERR_UNSUPPORTED, "linear_elu");
  attn_plan_destroy(plan);
  attn_desc_destroy(d);

  tu_tensor_free(t); tu_tensor_free(to); tu_tensor_free(tw); tu_tensor_free(tl);
  tu_tensor_free(bm); tu_tensor_free(am); tu_tensor_free(gw); tu_tensor_free(tbshd);
  free(x);
  attn_context_destroy(ctx);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(elu_matches_explicit_definition),
      cmocka_unit_test(performer_matches_explicit_estimator),
      cmocka_unit_test(performer_error_decreases_with_features),
      cmocka_unit_test(favor_kernel_estimate_is_unbiased),
      cmocka_unit_test(rng_is_reproducible),
      cmocka_unit_test(redraw_is_deterministic_per_seed),
      cmocka_unit_test(performer_gqa_and_padding),
      cmocka_unit_test(performer_stabilizer_keeps_large_inputs_finite),
      cmocka_unit_test(results_identical_across_thread_counts),
      cmocka_unit_test(execute_allocates_nothing_and_failures_leak_nothing),
      cmocka_unit_test(bad_input_is_rejected),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}

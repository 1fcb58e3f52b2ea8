/* Numerics under stress: logits up to ±1e4 (exactly representable, so the
 * only error left is the softmax's own), tied maxima, −inf and −FLT_MAX
 * masks (identical results, dead rows give 0 / −inf / 0), all-equal scores,
 * subnormal inputs; the caller's MXCSR and rounding mode are unchanged by
 * execute; and, with ATTN_TEST_LARGE=1, an exact causal case with
 * S_q·S_k > 2^31 checked on a few rows against a row-wise f64 reference.
 * (Subnormal speed is a bench case: bench/case_subnormal.c.) */
#define _POSIX_C_SOURCE 200809L /* clock_gettime */
#include <fenv.h>
#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#if defined(__x86_64__) || defined(__i386__)
#include <xmmintrin.h>
#define HAVE_MXCSR 1
#endif

#include "testutil.h"

static attn_context *make_ctx(int32_t threads) {
  attn_context_options o;
  attn_context_options_init(&o);
  o.num_threads = threads;
  attn_context *ctx = NULL;
  assert_int_equal(attn_context_create(&o, &ctx), ATTN_OK);
  return ctx;
}

/* One problem: dense inputs, reference and library results side by side. */
typedef struct run {
  attn_dtype dt;
  int64_t B, H, Sq, Sk, D;
  double *q, *k, *v, *add; /* add: [B][H][Sq][Sk] or NULL */
  double scale;            /* 0 = default */
  int causal;
  /* results */
  double *ro, *rw, *rl, *rb, *go, *gw, *gl;
} run;

static void run_alloc(run *r) {
  size_t nq = (size_t)(r->B * r->H * r->Sq * r->D), nk = (size_t)(r->B * r->H * r->Sk * r->D);
  size_t nw = (size_t)(r->B * r->H * r->Sq * r->Sk), nl = (size_t)(r->B * r->H * r->Sq);
  r->q = calloc(nq, 8), r->k = calloc(nk, 8), r->v = calloc(nk, 8);
  r->ro = calloc(nq, 8), r->rb = calloc(nq, 8), r->go = calloc(nq, 8);
  r->rw = calloc(nw, 8), r->gw = calloc(nw, 8), r->rl = calloc(nl, 8), r->gl = calloc(nl, 8);
}

static void run_free(run *r) {
  free(r->q), free(r->k), free(r->v), free(r->add), free(r->ro), free(r->rb), free(r->go);
  free(r->rw), free(r->gw), free(r->rl), free(r->gl);
}

/* Reference and library (weights and lse on). */
static void run_both(attn_context *ctx, run *r) {
  ref_problem p;
  ref_problem_init(&p, r->B, r->H, r->Sq, r->Sk, r->D);
  p.scale = r->scale;
  p.causal = r->causal;
  p.add_mask = r->add;
  ref_attention(&p, r->q, r->k, r->v, r->ro, r->rw, r->rl, r->rb);

  attn_tensor *tq = tu_tensor4(ctx, r->dt, r->q, r->B, r->H, r->Sq, r->D, false);
  attn_tensor *tk = tu_tensor4(ctx, r->dt, r->k, r->B, r->H, r->Sk, r->D, true);
  attn_tensor *tv = tu_tensor4(ctx, r->dt, r->v, r->B, r->H, r->Sk, r->D, false);
  attn_tensor *to = tu_tensor4(ctx, r->dt, NULL, r->B, r->H, r->Sq, r->D, false);
  attn_tensor *tw = tu_tensor4(ctx, r->dt, NULL, r->B, r->H, r->Sq, r->Sk, false);
  int64_t ls[3] = {r->B, r->H, r->Sq}, ms[4] = {r->B, r->H, r->Sq, r->Sk};
  attn_tensor *tl = tu_tensor(ctx, r->dt, NULL, 3, ls);
  attn_tensor *ta = r->add ? tu_tensor(ctx, r->dt, r->add, 4, ms) : NULL;
  attn_desc *d;
  assert_int_equal(attn_desc_create(ctx, &d), ATTN_OK);
  if (r->scale > 0) assert_int_equal(attn_desc_set_scale(d, r->scale), ATTN_OK);
  assert_int_equal(attn_desc_set_causal(d, (attn_causal)r->causal), ATTN_OK);
  if (ta) assert_int_equal(attn_desc_set_additive_mask(d, ta), ATTN_OK);
  attn_status st = attn_forward(ctx, d, tq, tk, tv, to, tw, tl);
  if (st != ATTN_OK) fail_msg("forward: %s", attn_context_last_error(ctx));
  tu_read(to, r->go);
  tu_read(tw, r->gw);
  tu_read(tl, r->gl);
  attn_desc_destroy(d);
  tu_tensor_free(tq), tu_tensor_free(tk), tu_tensor_free(tv), tu_tensor_free(to);
  tu_tensor_free(tw), tu_tensor_free(tl), tu_tensor_free(ta);
}

/* out vs reference with relative tolerance on Σ p|v|; lse and weights too;
 * never NaN; dead rows exactly 0 / −inf / 0. */
static void check(const run *r, double rtol, const char *what) {
  size_t rows = (size_t)(r->B * r->H * r->Sq);
  for (size_t i = 0; i < rows; i++) {
    for (int64_t x = 0; x < r->D; x++) {
      size_t e = i * (size_t)r->D + (size_t)x;
      double tol = rtol * r->rb[e] + 1e-300;
      if (isnan(r->go[e]) || !(fabs(r->go[e] - r->ro[e]) <= tol))
        fail_msg("%s: out[%zu][%lld] = %.17g, reference %.17g", what, i, (long long)x, r->go[e], r->ro[e]);
    }
    if (isinf(r->rl[i])) {
      if (!(isinf(r->gl[i]) && r->gl[i] < 0)) fail_msg("%s: lse[%zu] = %g, reference -inf", what, i, r->gl[i]);
    } else if (!(fabs(r->gl[i] - r->rl[i]) <= rtol * (1 + fabs(r->rl[i])))) {
      fail_msg("%s: lse[%zu] = %.17g, reference %.17g", what, i, r->gl[i], r->rl[i]);
    }
    double sum = 0;
    const double wq = r->dt == ATTN_DTYPE_F64 ? 4.9406564584124654e-324 : 1.4012984643248171e-45;
    for (int64_t j = 0; j < r->Sk; j++) {
      size_t e = i * (size_t)r->Sk + (size_t)j;
      /* below the dtype's smallest subnormal a weight rounds to 0 or to it */
      if (!(fabs(r->gw[e] - r->rw[e]) <= rtol * r->rw[e] + wq))
        fail_msg("%s: weights[%zu][%lld] = %.17g, reference %.17g", what, i, (long long)j, r->gw[e], r->rw[e]);
      sum += r->gw[e];
    }
    double want = isinf(r->rl[i]) ? 0 : 1;
    if (!(fabs(sum - want) <= rtol * (double)r->Sk + 1e-300))
      fail_msg("%s: weights of row %zu sum to %.17g", what, i, sum);
  }
}

static double rtol_for(attn_dtype dt) { return dt == ATTN_DTYPE_F64 ? 1e-12 : 2e-6; }

/* Scores are integers (q = 100, k integer in [-100, 100], D = 1, scale 1)
 * around ±1e4, so every score is exact in f32 and f64 and the result's only
 * error is exp/sum/divide. A naive exp(s) would overflow at s = 89 (f32). */
static void logits_up_to_1e4(void **state) {
  (void)state;
  attn_context *ctx = make_ctx(2);
  for (int dt = ATTN_DTYPE_F32; dt <= ATTN_DTYPE_F64; dt++)
    for (int sign = -1; sign <= 1; sign += 2) {
      run r = {.dt = (attn_dtype)dt, .B = 1, .H = 2, .Sq = 37, .Sk = 300, .D = 1, .scale = 1.0};
      run_alloc(&r);
      uint64_t s = 11;
      for (int64_t i = 0; i < r.B * r.H * r.Sq; i++) r.q[i] = sign * 100.0 * ((i % 3) ? 1 : -1);
      for (int64_t j = 0; j < r.B * r.H * r.Sk; j++) {
        r.k[j] = (double)(100 - (int64_t)tu_uniform(&s, 0, 6)); /* scores ±1e4 minus 0..500 */
        if (j % 7 == 0) r.k[j] = -100;                           /* and the other extreme */
        r.v[j] = tu_uniform(&s, -1, 1);
      }
      if (dt == ATTN_DTYPE_F32)
        for (int64_t j = 0; j < r.B * r.H * r.Sk; j++) r.v[j] = (float)r.v[j];
      run_both(ctx, &r);
      check(&r, rtol_for(r.dt), "logits ±1e4");
      for (int64_t i = 0; i < r.B * r.H * r.Sq; i++) {
        assert_true(fabs(r.gl[i]) > 9000); /* lse is near ±1e4, not inf or NaN */
        assert_true(isfinite(r.gl[i]));
      }
      run_free(&r);
    }
  attn_context_destroy(ctx);
}

/* Several keys share the maximal score exactly; the rest are 2e4 lower
 * (weight exactly 0). Tied keys get exactly equal weights 1/n and the output
 * is their mean. */
static void tied_maxima_share_weight_equally(void **state) {
  (void)state;
  attn_context *ctx = make_ctx(3);
  for (int dt = ATTN_DTYPE_F32; dt <= ATTN_DTYPE_F64; dt++) {
    run r = {.dt = (attn_dtype)dt, .B = 1, .H = 1, .Sq = 5, .Sk = 700, .D = 1, .scale = 1.0};
    run_alloc(&r);
    for (int64_t i = 0; i < r.Sq; i++) r.q[i] = 100;
    const int64_t tied[5] = {0, 3, 511, 512, 699}; /* across key tiles */
    for (int64_t j = 0; j < r.Sk; j++) {
      r.k[j] = -100;
      r.v[j] = (double)(j % 17) - 8;
    }
    for (int t = 0; t < 5; t++) r.k[tied[t]] = 100;
    run_both(ctx, &r);
    check(&r, rtol_for(r.dt), "tied maxima");
    for (int64_t i = 0; i < r.Sq; i++) {
      double w0 = r.gw[(size_t)(i * r.Sk + tied[0])];
      for (int t = 1; t < 5; t++) assert_true(r.gw[(size_t)(i * r.Sk + tied[t])] == w0);
      assert_true(fabs(w0 - 0.2) <= 1e-6);
      for (int64_t j = 0; j < r.Sk; j++)
        if (r.k[j] < 0) assert_true(r.gw[(size_t)(i * r.Sk + j)] == 0.0);
    }
    run_free(&r);
  }
  attn_context_destroy(ctx);
}

/* q = 0: every score is 0; weights are exactly uniform and out is the mean of v. */
static void all_equal_scores_give_uniform_weights(void **state) {
  (void)state;
  attn_context *ctx = make_ctx(2);
  for (int dt = ATTN_DTYPE_F32; dt <= ATTN_DTYPE_F64; dt++) {
    run r = {.dt = (attn_dtype)dt, .B = 2, .H = 1, .Sq = 3, .Sk = 1000, .D = 8};
    run_alloc(&r);
    uint64_t s = 5;
    for (int64_t j = 0; j < r.B * r.Sk * r.D; j++) r.k[j] = tu_uniform(&s, -1, 1), r.v[j] = (float)tu_uniform(&s, -1, 1);
    run_both(ctx, &r);
    check(&r, rtol_for(r.dt) * 4, "all-equal scores");
    for (size_t e = 0; e < (size_t)(r.B * r.Sq * r.Sk); e++) assert_true(fabs(r.gw[e] - 1e-3) <= 1e-3 * 1e-6);
    run_free(&r);
  }
  attn_context_destroy(ctx);
}

/* −inf and −FLT_MAX in the additive mask both remove the key: the results
 * are bitwise the same, rows with every key removed give 0 / −inf / 0, a row
 * with one key left gives exactly that key's v. Causal on top. */
static void minus_inf_and_minus_flt_max_masks_agree(void **state) {
  (void)state;
  attn_context *ctx = make_ctx(2);
  for (int dt = ATTN_DTYPE_F32; dt <= ATTN_DTYPE_F64; dt++) {
    run r[2];
    for (int m = 0; m < 2; m++) {
      const double kill = m == 0 ? -INFINITY : -FLT_MAX;
      r[m] = (run){.dt = (attn_dtype)dt, .B = 1, .H = 2, .Sq = 140, .Sk = 140, .D = 16, .causal = 1};
      run_alloc(&r[m]);
      uint64_t s = 9;
      size_t n = (size_t)(r[m].B * r[m].H * r[m].Sq * r[m].D);
      for (size_t i = 0; i < n; i++) {
        r[m].q[i] = tu_uniform(&s, -2, 2), r[m].k[i] = tu_uniform(&s, -2, 2);
        r[m].v[i] = (float)tu_uniform(&s, -1, 1);
      }
      size_t nm = (size_t)(r[m].B * r[m].H * r[m].Sq * r[m].Sk);
      r[m].add = malloc(nm * sizeof(double));
      uint64_t s2 = 10;
      for (size_t e = 0; e < nm; e++) r[m].add[e] = tu_uniform(&s2, 0, 1) < 0.3 ? kill : (float)tu_uniform(&s2, -3, 3);
      for (int64_t j = 0; j < r[m].Sk; j++) {
        r[m].add[5 * r[m].Sk + j] = kill;                     /* row 5: nothing left */
        r[m].add[(100 * r[m].Sk + j)] = j == 42 ? 0.5 : kill; /* row 100: only key 42 */
      }
      run_both(ctx, &r[m]);
      check(&r[m], rtol_for(r[m].dt) * 4, m == 0 ? "-inf mask" : "-FLT_MAX mask");
      for (int64_t x = 0; x < r[m].D; x++) {
        assert_true(r[m].go[5 * r[m].D + x] == 0.0);
        assert_true(r[m].go[100 * r[m].D + x] == r[m].v[42 * r[m].D + x]);
      }
      assert_true(isinf(r[m].gl[5]) && r[m].gl[5] < 0);
    }
    size_t no = (size_t)(r[0].B * r[0].H * r[0].Sq * r[0].D);
    assert_memory_equal(r[0].go, r[1].go, no * sizeof(double));
    assert_memory_equal(r[0].gl, r[1].gl, (size_t)(r[0].B * r[0].H * r[0].Sq) * sizeof(double));
    run_free(&r[0]), run_free(&r[1]);
  }
  attn_context_destroy(ctx);
}

#ifdef HAVE_MXCSR
#define CSR_CONTROL 0xFFC0u /* everything but the sticky exception flags */
#endif

/* Subnormal q, k and v: correct results (no flush to zero), and the caller's
 * MXCSR control bits and rounding mode are what they were, with the default
 * settings and with the caller's own FTZ/DAZ on. */
static void subnormal_inputs_and_caller_fp_state(void **state) {
  (void)state;
  attn_context *ctx = make_ctx(2);
  for (int dt = ATTN_DTYPE_F32; dt <= ATTN_DTYPE_F64; dt++) {
    const bool f64 = dt == ATTN_DTYPE_F64;
    const double tiny = f64 ? 1e-310 : 1e-40; /* subnormal in the dtype */
    run r = {.dt = (attn_dtype)dt, .B = 1, .H = 2, .Sq = 70, .Sk = 90, .D = 24, .scale = 1.0};
    run_alloc(&r);
    uint64_t s = 3;
    size_t nq = (size_t)(r.B * r.H * r.Sq * r.D), nk = (size_t)(r.B * r.H * r.Sk * r.D);
    for (size_t i = 0; i < nq; i++) r.q[i] = tu_uniform(&s, -1, 1) * tiny;
    for (size_t i = 0; i < nk; i++) {
      r.k[i] = tu_uniform(&s, -1, 1) * 1e3;
      r.v[i] = tu_uniform(&s, -1, 1) * tiny;
      if (!f64) r.k[i] = (float)r.k[i], r.v[i] = (float)r.v[i];
    }
    if (!f64)
      for (size_t i = 0; i < nq; i++) r.q[i] = (float)r.q[i];
    for (size_t i = 0; i < nk; i++) assert_true(r.v[i] == 0 || fabs(r.v[i]) < (f64 ? DBL_MIN : FLT_MIN));
#ifdef HAVE_MXCSR
    const unsigned int saved = _mm_getcsr();
#endif
    const int saved_round = fegetround();
    run_both(ctx, &r);
#ifdef HAVE_MXCSR
    assert_int_equal(_mm_getcsr() & CSR_CONTROL, saved & CSR_CONTROL);
#endif
    assert_int_equal(fegetround(), saved_round);
    /* out = Σ p v is subnormal: allow the dtype's subnormal spacing per term. */
    double quantum = f64 ? 4.9406564584124654e-324 : 1.4012984643248171e-45;
    for (size_t e = 0; e < nq; e++) {
      double tol = 1e-6 * r.rb[e] + quantum * (double)(r.Sk + 2);
      if (!(fabs(r.go[e] - r.ro[e]) <= tol))
        fail_msg("subnormal %s: out[%zu] = %g, reference %g", f64 ? "f64" : "f32", e, r.go[e], r.ro[e]);
    }
    /* Not flushed: most outputs are non-zero subnormals. */
    size_t nonzero = 0;
    for (size_t e = 0; e < nq; e++) nonzero += r.go[e] != 0;
    assert_true(nonzero > nq / 2);
    run_free(&r);
  }
#ifdef HAVE_MXCSR
  /* The caller's own FTZ/DAZ and rounding mode survive an execute. */
  const unsigned int before = _mm_getcsr();
  _mm_setcsr((before | 0x8040u) & ~0x6000u); /* FTZ | DAZ, round to nearest */
  const unsigned int mine = _mm_getcsr();
  run r = {.dt = ATTN_DTYPE_F32, .B = 1, .H = 1, .Sq = 50, .Sk = 60, .D = 8};
  run_alloc(&r);
  uint64_t s = 4;
  for (size_t i = 0; i < 400; i++) r.q[i] = (float)tu_uniform(&s, -1, 1);
  for (size_t i = 0; i < 480; i++) r.k[i] = (float)tu_uniform(&s, -1, 1), r.v[i] = (float)tu_uniform(&s, -1, 1);
  run_both(ctx, &r);
  unsigned int after = _mm_getcsr();
  _mm_setcsr(before);
  assert_int_equal(after & CSR_CONTROL, mine & CSR_CONTROL);
  check(&r, 1e-5, "caller FTZ/DAZ");
  run_free(&r);
#endif
  attn_context_destroy(ctx);
}

/* ---- S_q·S_k > 2^31 --------------------------------------------------------- */

/* Row i of causal attention in f64 from the f32 inputs: independent of
 * tests/common/reference.c's loops (which would take hours here). */
static void ref_causal_row(const float *q, const float *k, const float *v, int64_t S, int64_t D,
                           int64_t i, double *out, double *lse) {
  const double scale = 1 / sqrt((double)D);
  double mx = -INFINITY, sum = 0;
  double *s = malloc((size_t)(i + 1) * sizeof *s);
  for (int64_t j = 0; j <= i; j++) {
    double d = 0;
    for (int64_t x = 0; x < D; x++) d += (double)q[i * D + x] * (double)k[j * D + x];
    s[j] = scale * d;
    if (s[j] > mx) mx = s[j];
  }
  for (int64_t x = 0; x < D; x++) out[x] = 0;
  for (int64_t j = 0; j <= i; j++) {
    double w = exp(s[j] - mx);
    sum += w;
    for (int64_t x = 0; x < D; x++) out[x] += w * (double)v[j * D + x];
  }
  for (int64_t x = 0; x < D; x++) out[x] /= sum;
  *lse = mx + log(sum);
  free(s);
}

static void large_causal_beyond_2p31(void **state) {
  (void)state;
  const char *env = getenv("ATTN_TEST_LARGE");
  if (env == NULL || strcmp(env, "1") != 0) {
    print_message("skipped: set ATTN_TEST_LARGE=1 (S = 65536, S_q*S_k = 2^32; about a minute)\n");
    skip();
  }
  const int64_t S = 65536, D = 32; /* S_q·S_k = 2^32 */
  attn_context *ctx = make_ctx(0);
  int64_t shape[4] = {1, 1, S, D}, ls[3] = {1, 1, S};
  attn_tensor *tq, *tk, *tv, *to, *tl;
  assert_int_equal(attn_tensor_create(ctx, ATTN_DTYPE_F32, 4, shape, &tq), ATTN_OK);
  assert_int_equal(attn_tensor_create(ctx, ATTN_DTYPE_F32, 4, shape, &tk), ATTN_OK);
  assert_int_equal(attn_tensor_create(ctx, ATTN_DTYPE_F32, 4, shape, &tv), ATTN_OK);
  assert_int_equal(attn_tensor_create(ctx, ATTN_DTYPE_F32, 4, shape, &to), ATTN_OK);
  assert_int_equal(attn_tensor_create(ctx, ATTN_DTYPE_F32, 3, ls, &tl), ATTN_OK);
  float *q = attn_tensor_data(tq), *k = attn_tensor_data(tk), *v = attn_tensor_data(tv);
  uint64_t s = 2024;
  for (int64_t i = 0; i < S * D; i++) {
    q[i] = (float)tu_uniform(&s, -2, 2);
    k[i] = (float)tu_uniform(&s, -2, 2);
    v[i] = (float)tu_uniform(&s, -1, 1);
  }
  attn_desc *d;
  assert_int_equal(attn_desc_create(ctx, &d), ATTN_OK);
  assert_int_equal(attn_desc_set_causal(d, ATTN_CAUSAL_TOP_LEFT), ATTN_OK);
  struct timespec t0, t1;
  clock_gettime(CLOCK_MONOTONIC, &t0);
  assert_int_equal(attn_forward(ctx, d, tq, tk, tv, to, NULL, tl), ATTN_OK);
  clock_gettime(CLOCK_MONOTONIC, &t1);
  double secs = (double)(t1.tv_sec - t0.tv_sec) + 1e-9 * (double)(t1.tv_nsec - t0.tv_nsec);
  print_message("causal S=%lld D=%lld f32 on %d threads: %.2f s\n", (long long)S, (long long)D,
                attn_context_num_threads(ctx), secs);
  const float *o = attn_tensor_data(to), *l = attn_tensor_data(tl);
  /* First and last rows, tile edges, the row where i·S_k passes 2^31. */
  const int64_t rows[] = {0, 1, 127, 128, 32767, 32768, 46340, 46341, 65407, 65535};
  double ref[64], rl;
  for (size_t n = 0; n < sizeof rows / sizeof rows[0]; n++) {
    int64_t i = rows[n];
    ref_causal_row(q, k, v, S, D, i, ref, &rl);
    for (int64_t x = 0; x < D; x++)
      if (!(fabs(o[i * D + x] - ref[x]) <= 1e-4 * (1 + fabs(ref[x]))))
        fail_msg("row %lld: out[%lld] = %.9g, reference %.9g", (long long)i, (long long)x, o[i * D + x], ref[x]);
    if (!(fabs(l[i] - rl) <= 1e-4 * (1 + fabs(rl))))
      fail_msg("row %lld: lse %.9g, reference %.9g", (long long)i, l[i], rl);
  }
  attn_desc_destroy(d);
  attn_tensor_destroy(tq), attn_tensor_destroy(tk), attn_tensor_destroy(tv);
  attn_tensor_destroy(to), attn_tensor_destroy(tl);
  attn_context_destroy(ctx);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(logits_up_to_1e4),
      cmocka_unit_test(tied_maxima_share_weight_equally),
      cmocka_unit_test(all_equal_scores_give_uniform_weights),
      cmocka_unit_test(minus_inf_and_minus_flt_max_masks_agree),
      cmocka_unit_test(subnormal_inputs_and_caller_fp_state),
      cmocka_unit_test(large_causal_beyond_2p31),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}

/* Exact attention against the naive f64 reference: shapes, layouts, dtypes,
 * causal alignments, GQA, scores, weights and lse, fully masked rows, tile
 * edges, determinism across thread counts, zero allocations in execute. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "testutil.h"

typedef struct exact_case {
  int64_t B, H, Hkv, Sq, Sk, Dk, Dv;
  int causal;
  bool bshd;
  attn_dtype dt;
  int score;
  double scale;
  bool want_w, want_lse;
} exact_case;

/* Runs one case and checks it; returns the max error. */
static double run_case(attn_context *ctx, const exact_case *c, uint64_t seed) {
  ref_problem p;
  ref_problem_init(&p, c->B, c->H, c->Sq, c->Sk, c->Dk);
  p.Hkv = c->Hkv;
  p.Dv = c->Dv;
  p.causal = c->causal;
  p.score = c->score;
  p.scale = c->scale;
  size_t nq = (size_t)(c->B * c->H * c->Sq * c->Dk), nk = (size_t)(c->B * c->Hkv * c->Sk * c->Dk);
  size_t nv = (size_t)(c->B * c->Hkv * c->Sk * c->Dv), no = (size_t)(c->B * c->H * c->Sq * c->Dv);
  size_t nw = (size_t)(c->B * c->H * c->Sq * c->Sk), nl = (size_t)(c->B * c->H * c->Sq);
  double *q = tu_random(nq, &seed), *k = tu_random(nk, &seed), *v = tu_random(nv, &seed);
  double *gw = NULL;
  for (size_t i = 0; i < nq; i++) q[i] *= 3.0; /* peaky softmax */
  double *ro = malloc(no * 8), *rw = malloc(nw * 8), *rl = malloc(nl * 8), *rb = malloc(no * 8);
  double *go = malloc(no * 8), *gwt = malloc(nw * 8), *gl = malloc(nl * 8);

  attn_desc *d = NULL;
  assert_int_equal(attn_desc_create(ctx, &d), ATTN_OK);
  assert_int_equal(attn_desc_set_causal(d, (attn_causal)c->causal), ATTN_OK);
  assert_int_equal(attn_desc_set_score(d, (attn_score)c->score), ATTN_OK);
  if (c->scale > 0) assert_int_equal(attn_desc_set_scale(d, c->scale), ATTN_OK);
  attn_tensor *gwt_t = NULL;
  if (c->score == ATTN_SCORE_GENERAL) {
    gw = tu_random((size_t)(c->Dk * c->Dk), &seed);
    p.general_w = gw;
    int64_t sh[2] = {c->Dk, c->Dk};
    gwt_t = tu_tensor(ctx, c->dt, gw, 2, sh);
    assert_int_equal(attn_desc_set_general_weight(d, gwt_t), ATTN_OK);
  }
  ref_attention(&p, q, k, v, ro, rw, rl, rb);

  attn_tensor *tq = tu_tensor4(ctx, c->dt, q, c->B, c->H, c->Sq, c->Dk, c->bshd);
  attn_tensor *tk = tu_tensor4(ctx, c->dt, k, c->B, c->Hkv, c->Sk, c->Dk, c->bshd);
  attn_tensor *tv = tu_tensor4(ctx, c->dt, v, c->B, c->Hkv, c->Sk, c->Dv, c->bshd);
  attn_tensor *to = tu_tensor4(ctx, c->dt, NULL, c->B, c->H, c->Sq, c->Dv, c->bshd);
  attn_tensor *tw = c->want_w ? tu_tensor4(ctx, c->dt, NULL, c->B, c->H, c->Sq, c->Sk, false) : NULL;
  int64_t lshape[3] = {c->B, c->H, c->Sq};
  attn_tensor *tl = c->want_lse ? tu_tensor(ctx, c->dt, NULL, 3, lshape) : NULL;
  attn_plan *plan = NULL;
  attn_status st = attn_plan_create(ctx, d, tq, tk, tv, to, tw, tl, &plan);
  if (st != ATTN_OK) fail_msg("plan: %s", attn_context_last_error(ctx));
  /* Execute twice: a plan is reusable and must give the same answer. */
  assert_int_equal(attn_plan_execute(plan, tq, tk, tv, to, tw, tl), ATTN_OK);
  assert_int_equal(attn_plan_execute(plan, tq, tk, tv, to, tw, tl), ATTN_OK);
  tu_read(to, go);
  bool f64 = c->dt == ATTN_DTYPE_F64;
  double rtol = f64 ? 1e-12 : 1e-5, atol = f64 ? 1e-13 : 1e-6, max_err;
  /* f32 score rounding grows with the score's size, ~ scale·√d_k for these
   * inputs: unscaled DOT with d_k = 256 is 16× the scaled-dot case. */
  double eff_scale = c->scale > 0 ? c->scale
                                  : (c->score == ATTN_SCORE_SCALED_DOT ? 1 / sqrt((double)c->Dk) : 1);
  if (!f64) rtol *= fmax(1.0, eff_scale * sqrt((double)c->Dk));
  size_t bad = tu_violations(go, ro, rb, no, rtol, atol, &max_err);
  if (bad)
    fail_msg("out: %zu of %zu elements off (max err %g), case B%lld H%lld/%lld Sq%lld Sk%lld "
             "Dk%lld Dv%lld causal%d bshd%d %s score%d",
             bad, no, max_err, (long long)c->B, (long long)c->H, (long long)c->Hkv,
             (long long)c->Sq, (long long)c->Sk, (long long)c->Dk, (long long)c->Dv, c->causal,
             c->bshd, f64 ? "f64" : "f32", c->score);
  if (tw) {
    tu_read(tw, gwt);
    double e;
    assert_int_equal(tu_violations(gwt, rw, NULL, nw, f64 ? 1e-11 : 1e-4, f64 ? 1e-13 : 1e-6, &e), 0);
    for (size_t r = 0; r < nl; r++) { /* each kept row sums to 1, a dead row to 0 */
      double s = 0;
      for (int64_t j = 0; j < c->Sk; j++) s += gwt[r * (size_t)c->Sk + (size_t)j];
      double want = isinf(rl[r]) ? 0.0 : 1.0;
      assert_true(fabs(s - want) <= (f64 ? 1e-12 : 1e-5) * (double)c->Sk);
    }
  }
  if (tl) {
    tu_read(tl, gl);
    for (size_t r = 0; r < nl; r++) {
      if (isinf(rl[r])) {
        assert_true(isinf(gl[r]) && gl[r] < 0);
      } else {
        assert_true(fabs(gl[r] - rl[r]) <= (f64 ? 1e-12 : 1e-5) * (1 + fabs(rl[r])));
      }
    }
  }
  for (size_t i = 0; i < no; i++) assert_false(isnan(go[i]));
  attn_plan_destroy(plan);
  tu_tensor_free(tq); tu_tensor_free(tk); tu_tensor_free(tv); tu_tensor_free(to);
  tu_tensor_free(tw); tu_tensor_free(tl); tu_tensor_free(gwt_t);
  attn_desc_destroy(d);
  free(q); free(k); free(v); free(gw); free(ro); free(rw); free(rl); free(rb);
  free(go); free(gwt); free(gl);
  return max_err;
}

static void random_shapes_match_reference(void **state) {
  (void)state;
  attn_context *ctx = tu_context(2);
  uint64_t seed = 0x9E3779B97F4A7C15ULL;
  static const int64_t S[] = {1, 2, 7, 33, 64, 129, 200, 600};
  static const int64_t D[] = {1, 3, 16, 64, 65, 128, 256};
  int n = 0;
  for (int it = 0; it < (tu_quick() ? 20 : 60); it++) {
    exact_case c = {0};
    c.B = 1 + (int64_t)tu_uniform(&seed, 0, 2.99);
    c.Hkv = 1 + (int64_t)tu_uniform(&seed, 0, 1.99);
    c.H = c.Hkv * (1 + (int64_t)tu_uniform(&seed, 0, 2.99));
    c.Sq = S[(int)tu_uniform(&seed, 0, 7.99)];
    c.Sk = S[(int)tu_uniform(&seed, 0, 7.99)];
    c.Dk = D[(int)tu_uniform(&seed, 0, 6.99)];
    c.Dv = tu_uniform(&seed, 0, 1) < 0.7 ? c.Dk : D[(int)tu_uniform(&seed, 0, 6.99)];
    if (c.Sq * c.Sk * c.Dk > 600 * 600 * 64) c.Dk = c.Dv = 16; /* keep the f64 reference quick */
    c.causal = (int)tu_uniform(&seed, 0, 2.99);
    c.bshd = tu_uniform(&seed, 0, 1) < 0.5;
    c.dt = tu_uniform(&seed, 0, 1) < 0.6 ? ATTN_DTYPE_F32 : ATTN_DTYPE_F64;
    c.score = tu_uniform(&seed, 0, 1) < 0.25 ? ATTN_SCORE_DOT : ATTN_SCORE_SCALED_DOT;
    c.scale = tu_uniform(&seed, 0, 1) < 0.2 ? 0.05 : 0.0;
    c.want_w = tu_uniform(&seed, 0, 1) < 0.4;
    c.want_lse = tu_uniform(&seed, 0, 1) < 0.6;
    run_case(ctx, &c, seed + (uint64_t)it);
    n++;
  }
  print_message("%d random cases checked\n", n);
  attn_context_destroy(ctx);
}

static void tile_edges_match_reference(void **state) {
  (void)state;
  attn_context *ctx = tu_context(2);
  /* Around the tile sizes (bq 128, bk 512/256): below, at, one past; S_q = 1; odd d. */
  static const int64_t S[] = {1, 127, 128, 129, 255, 257, 511, 513};
  for (int a = 0; a < 8; a++)
    for (int causal = 0; causal < 3; causal++) {
      exact_case c = {1, 2, 2, S[a], S[7 - a], 17, 17, causal, false, ATTN_DTYPE_F32, 0, 0, true, true};
      run_case(ctx, &c, 42 + (uint64_t)a);
      exact_case c2 = {1, 1, 1, S[a], S[a], 64, 64, causal, true, ATTN_DTYPE_F32, 0, 0, false, true};
      run_case(ctx, &c2, 7 + (uint64_t)a);
    }
  exact_case dec = {2, 4, 2, 1, 1000, 128, 128, 2, false, ATTN_DTYPE_F32, 0, 0, false, true};
  run_case(ctx, &dec, 3);
  attn_context_destroy(ctx);
}

static void luong_general_matches_reference(void **state) {
  (void)state;
  attn_context *ctx = tu_context(2);
  exact_case c = {2, 2, 2, 37, 70, 24, 24, 0, false, ATTN_DTYPE_F64, ATTN_SCORE_GENERAL, 0, true, true};
  run_case(ctx, &c, 5);
  c.dt = ATTN_DTYPE_F32;
  c.causal = 1;
  run_case(ctx, &c, 6);
  attn_context_destroy(ctx);
}

/* GQA stacks a group's query heads into one GEMM; per-head transforms
 * (ALiBi), weights and lse must still land on the right head. */
static void gqa_groups_with_per_head_bias_match_reference(void **state) {
  (void)state;
  attn_context *ctx = tu_context(2);
  const int64_t B = 2, H = 6, Hkv = 2, Sq = 70, Sk = 300, D = 24, A = 16;
  for (int score = 0; score < 4; score++)
    for (int dt = 1; dt <= 2; dt++) {
      uint64_t seed = 77 + (uint64_t)score;
      ref_problem p;
      ref_problem_init(&p, B, H, Sq, Sk, D);
      p.Hkv = Hkv;
      p.causal = 2;
      p.score = score;
      double slopes[6] = {0.5, 0.25, 0.125, 0.0625, 0.03125, 0.0};
      p.alibi = slopes;
      p.softcap = score == 1 ? 5.0 : 0.0;
      size_t nq = (size_t)(B * H * Sq * D), nk = (size_t)(B * Hkv * Sk * D);
      size_t no = nq, nw = (size_t)(B * H * Sq * Sk), nl = (size_t)(B * H * Sq);
      double *q = tu_random(nq, &seed), *k = tu_random(nk, &seed), *v = tu_random(nk, &seed);
      double *gw = tu_random((size_t)(D * D), &seed), *wq = tu_random((size_t)(A * D), &seed);
      double *wk = tu_random((size_t)(A * D), &seed), *bias = tu_random((size_t)A, &seed);
      double *av = tu_random((size_t)A, &seed);
      p.general_w = gw;
      p.A = A;
      p.add_wq = wq; p.add_wk = wk; p.add_bias = bias; p.add_v = av;
      double *ro = malloc(no * 8), *rw = malloc(nw * 8), *rl = malloc(nl * 8), *rb = malloc(no * 8);
      double *go = malloc(no * 8), *gwt = malloc(nw * 8), *gl = malloc(nl * 8);
      ref_attention(&p, q, k, v, ro, rw, rl, rb);

      attn_dtype t = (attn_dtype)dt;
      attn_tensor *tq = tu_tensor4(ctx, t, q, B, H, Sq, D, true);
      attn_tensor *tk = tu_tensor4(ctx, t, k, B, Hkv, Sk, D, false);
      attn_tensor *tv = tu_tensor4(ctx, t, v, B, Hkv, Sk, D, true);
      attn_tensor *to = tu_tensor4(ctx, t, NULL, B, H, Sq, D, true);
      attn_tensor *tw = tu_tensor4(ctx, t, NULL, B, H, Sq, Sk, false);
      int64_t ls[3] = {B, H, Sq}, s2[2] = {D, D}, sa[2] = {A, D}, s1[1] = {A};
      attn_tensor *tl = tu_tensor(ctx, t, NULL, 3, ls);
      attn_tensor *tg = tu_tensor(ctx, t, gw, 2, s2), *twq = tu_tensor(ctx, t, wq, 2, sa);
      attn_tensor *twk = tu_tensor(ctx, t, wk, 2, sa), *tb = tu_tensor(ctx, t, bias, 1, s1);
      attn_tensor *tav = tu_tensor(ctx, t, av, 1, s1);
      attn_desc *d;
      assert_int_equal(attn_desc_create(ctx, &d), ATTN_OK);
      assert_int_equal(attn_desc_set_causal(d, ATTN_CAUSAL_BOTTOM_RIGHT), ATTN_OK);
      assert_int_equal(attn_desc_set_score(d, (attn_score)score), ATTN_OK);
      assert_int_equal(attn_desc_set_alibi(d, slopes, H), ATTN_OK);
      if (p.softcap > 0) assert_int_equal(attn_desc_set_softcap(d, p.softcap), ATTN_OK);
      assert_int_equal(attn_desc_set_general_weight(d, tg), ATTN_OK);
      assert_int_equal(attn_desc_set_additive_weights(d, twq, twk, tb, tav), ATTN_OK);
      attn_status st = attn_forward(ctx, d, tq, tk, tv, to, tw, tl);
      if (st != ATTN_OK) fail_msg("%s", attn_context_last_error(ctx));
      tu_read(to, go);
      tu_read(tw, gwt);
      tu_read(tl, gl);
      bool f64 = t == ATTN_DTYPE_F64;
      double e;
      size_t bad = tu_violations(go, ro, rb, no, f64 ? 1e-12 : 1e-5, f64 ? 1e-13 : 1e-6, &e);
      if (bad) fail_msg("score %d %s: %zu outputs off, max err %g", score, f64 ? "f64" : "f32", bad, e);
      assert_int_equal(tu_violations(gwt, rw, NULL, nw, f64 ? 1e-11 : 1e-4, f64 ? 1e-13 : 1e-6, &e), 0);
      assert_int_equal(tu_violations(gl, rl, NULL, nl, f64 ? 1e-12 : 1e-5, f64 ? 1e-12 : 1e-5, &e), 0);
      attn_tensor *all[] = {tq, tk, tv, to, tw, tl, tg, twq, twk, tb, tav};
      for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) tu_tensor_free(all[i]);
      attn_desc_destroy(d);
      free(q); free(k); free(v); free(gw); free(wq); free(wk); free(bias); free(av);
      free(ro); free(rw); free(rl); free(rb); free(go); free(gwt); free(gl);
    }
  attn_context_destroy(ctx);
}

/* Bottom-right causal with S_q > S_k: the first S_q − S_k rows keep nothing. */
static void fully_masked_rows_give_zero_not_nan(void **state) {
  (void)state;
  attn_context *ctx = tu_context(2);
  for (int dt = 1; dt <= 2; dt++) {
    exact_case c = {1, 2, 2, 300, 100, 32, 32, 2, false, (attn_dtype)dt, 0, 0, true, true};
    run_case(ctx, &c, 11); /* the reference says out 0, lse −inf, weights 0 there */
  }
  /* And the same directly. */
  int64_t B = 1, H = 1, Sq = 5, Sk = 2, D = 4;
  uint64_t seed = 1;
  double *q = tu_random((size_t)(Sq * D), &seed), *k = tu_random((size_t)(Sk * D), &seed);
  attn_tensor *tq = tu_tensor4(ctx, ATTN_DTYPE_F32, q, B, H, Sq, D, false);
  attn_tensor *tk = tu_tensor4(ctx, ATTN_DTYPE_F32, k, B, H, Sk, D, false);
  attn_tensor *to = tu_tensor4(ctx, ATTN_DTYPE_F32, NULL, B, H, Sq, D, false);
  int64_t ls[3] = {B, H, Sq};
  attn_tensor *tl = tu_tensor(ctx, ATTN_DTYPE_F32, NULL, 3, ls);
  attn_desc *d;
  assert_int_equal(attn_desc_create(ctx, &d), ATTN_OK);
  assert_int_equal(attn_desc_set_causal(d, ATTN_CAUSAL_BOTTOM_RIGHT), ATTN_OK);
  assert_int_equal(attn_forward(ctx, d, tq, tk, tk, to, NULL, tl), ATTN_OK);
  const float *o = attn_tensor_data(to), *l = attn_tensor_data(tl);
  for (int64_t i = 0; i < Sq - Sk; i++) {
    for (int64_t x = 0; x < D; x++) assert_true(o[i * D + x] == 0.0f);
    assert_true(isinf(l[i]) && l[i] < 0);
  }
  for (int64_t i = Sq - Sk; i < Sq; i++) assert_true(isfinite(l[i]));
  tu_tensor_free(tq); tu_tensor_free(tk); tu_tensor_free(to); tu_tensor_free(tl);
  attn_desc_destroy(d);
  free(q); free(k);
  attn_context_destroy(ctx);
}

/* Same inputs, 1..4 threads: bitwise identical out and lse. */
static void results_bitwise_identical_across_thread_counts(void **state) {
  (void)state;
  int64_t B = 2, H = 3, Sq = 333, Sk = 777, D = 40;
  uint64_t seed = 99;
  double *q = tu_random((size_t)(B * H * Sq * D), &seed);
  double *k = tu_random((size_t)(B * H * Sk * D), &seed);
  double *v = tu_random((size_t)(B * H * Sk * D), &seed);
  float *first = NULL, *first_lse = NULL;
  size_t no = (size_t)(B * H * Sq * D), nl = (size_t)(B * H * Sq);
  for (int causal = 0; causal < 2; causal++)
    for (int32_t th = 1; th <= 4; th++) {
      attn_context *ctx = tu_context(th);
      attn_tensor *tq = tu_tensor4(ctx, ATTN_DTYPE_F32, q, B, H, Sq, D, false);
      attn_tensor *tk = tu_tensor4(ctx, ATTN_DTYPE_F32, k, B, H, Sk, D, false);
      attn_tensor *tv = tu_tensor4(ctx, ATTN_DTYPE_F32, v, B, H, Sk, D, false);
      attn_tensor *to = tu_tensor4(ctx, ATTN_DTYPE_F32, NULL, B, H, Sq, D, false);
      int64_t ls[3] = {B, H, Sq};
      attn_tensor *tl = tu_tensor(ctx, ATTN_DTYPE_F32, NULL, 3, ls);
      attn_desc *d;
      assert_int_equal(attn_desc_create(ctx, &d), ATTN_OK);
      assert_int_equal(attn_desc_set_causal(d, causal ? ATTN_CAUSAL_TOP_LEFT : ATTN_CAUSAL_NONE), ATTN_OK);
      assert_int_equal(attn_forward(ctx, d, tq, tk, tv, to, NULL, tl), ATTN_OK);
      if (th == 1) {
        first = malloc(no * 4);
        first_lse = malloc(nl * 4);
        memcpy(first, attn_tensor_data(to), no * 4);
        memcpy(first_lse, attn_tensor_data(tl), nl * 4);
      } else {
        assert_memory_equal(first, attn_tensor_data(to), no * 4);
        assert_memory_equal(first_lse, attn_tensor_data(tl), nl * 4);
      }
      if (th == 4) {
        free(first);
        free(first_lse);
      }
      tu_tensor_free(tq); tu_tensor_free(tk); tu_tensor_free(tv); tu_tensor_free(to); tu_tensor_free(tl);
      attn_desc_destroy(d);
      attn_context_destroy(ctx);
    }
  free(q); free(k); free(v);
}

/* Plan creation allocates; execute allocates nothing, however often it runs. */
static void execute_performs_zero_allocations(void **state) {
  (void)state;
  for (int32_t th = 1; th <= 3; th += 2) {
    tu_counter cnt = {0};
    attn_context *ctx = tu_counting_context(&cnt, th);
    assert_non_null(ctx);
    int64_t B = 1, H = 4, S = 300, D = 32;
    uint64_t seed = 5;
    double *q = tu_random((size_t)(B * H * S * D), &seed);
    attn_tensor *tq = tu_tensor4(ctx, ATTN_DTYPE_F32, q, B, H, S, D, false);
    attn_tensor *to = tu_tensor4(ctx, ATTN_DTYPE_F32, NULL, B, H, S, D, false);
    attn_tensor *tw = tu_tensor4(ctx, ATTN_DTYPE_F32, NULL, B, H, S, S, false);
    attn_desc *d;
    assert_int_equal(attn_desc_create(ctx, &d), ATTN_OK);
    assert_int_equal(attn_desc_set_causal(d, ATTN_CAUSAL_TOP_LEFT), ATTN_OK);
    attn_plan *plan;
    assert_int_equal(attn_plan_create(ctx, d, tq, tq, tq, to, tw, NULL, &plan), ATTN_OK);
    assert_true(attn_plan_workspace_size(plan) > 0);
    int64_t before = cnt.allocs;
    for (int r = 0; r < 5; r++) assert_int_equal(attn_plan_execute(plan, tq, tq, tq, to, tw, NULL), ATTN_OK);
    assert_int_equal(cnt.allocs, before);
    attn_plan_destroy(plan);
    attn_desc_destroy(d);
    tu_tensor_free(tq); tu_tensor_free(to); tu_tensor_free(tw);
    attn_context_destroy(ctx);
    assert_int_equal(cnt.outstanding_bytes, 0); /* and nothing leaked */
    assert_int_equal(cnt.allocs, cnt.frees);
    free(q);
  }
}

/* The caller's OpenBLAS thread count is what it was after execute. */
extern int openblas_get_num_threads(void);
extern void openblas_set_num_threads(int);
static void caller_blas_threads_restored(void **state) {
  (void)state;
  openblas_set_num_threads(2);
  attn_context *ctx = tu_context(2);
  exact_case c = {1, 2, 2, 100, 100, 16, 16, 1, false, ATTN_DTYPE_F32, 0, 0, false, false};
  run_case(ctx, &c, 1);
  assert_int_equal(openblas_get_num_threads(), 2);
  attn_context_destroy(ctx);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(random_shapes_match_reference),
      cmocka_unit_test(tile_edges_match_reference),
      cmocka_unit_test(luong_general_matches_reference),
      cmocka_unit_test(gqa_groups_with_per_head_bias_match_reference),
      cmocka_unit_test(fully_masked_rows_give_zero_not_nan),
      cmocka_unit_test(results_bitwise_identical_across_thread_counts),
      cmocka_unit_test(execute_performs_zero_allocations),
      cmocka_unit_test(caller_blas_threads_restored),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}

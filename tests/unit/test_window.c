/* 1-D sliding-window attention: ATTN_VARIANT_EXACT with attn_desc_set_window().
 * Equals the naive f64 reference with the window mask (causal or not, both
 * alignments, S_q ≠ S_k, lengths, sizes off the tile grid), and the kernel
 * visits only keys of the band: O(S·w) work. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/exact.h"
#include "testutil.h"

typedef struct win_case {
  int64_t B, H, Hkv, Sq, Sk, D;
  int64_t left, right; /* −1 = unbounded */
  int causal;
  attn_dtype dt;
  bool bshd, want_w, lengths;
} win_case;

static void run_window(attn_context *ctx, const win_case *c, uint64_t seed) {
  ref_problem p;
  ref_problem_init(&p, c->B, c->H, c->Sq, c->Sk, c->D);
  p.Hkv = c->Hkv;
  p.causal = c->causal;
  p.left = c->left;
  p.right = c->right;
  int64_t klen[4], qlen[4];
  for (int64_t b = 0; b < c->B; b++) {
    klen[b] = c->Sk - (b * 37) % (c->Sk / 2 + 1);
    qlen[b] = c->Sq - (b * 11) % (c->Sq / 2 + 1);
  }
  if (c->lengths) {
    p.key_len = klen;
    p.query_len = qlen;
  }
  size_t nq = (size_t)(c->B * c->H * c->Sq * c->D), nk = (size_t)(c->B * c->Hkv * c->Sk * c->D);
  size_t nw = (size_t)(c->B * c->H * c->Sq * c->Sk), nl = (size_t)(c->B * c->H * c->Sq);
  double *q = tu_random(nq, &seed), *k = tu_random(nk, &seed), *v = tu_random(nk, &seed);
  for (size_t i = 0; i < nq; i++) q[i] *= 3.0;
  double *ro = malloc(nq * 8), *rb = malloc(nq * 8), *rw = malloc(nw * 8), *rl = malloc(nl * 8);
  double *go = malloc(nq * 8), *gw = malloc(nw * 8), *gl = malloc(nl * 8);
  ref_attention(&p, q, k, v, ro, rw, rl, rb);
  attn_tensor *tq = tu_tensor4(ctx, c->dt, q, c->B, c->H, c->Sq, c->D, c->bshd);
  attn_tensor *tk = tu_tensor4(ctx, c->dt, k, c->B, c->Hkv, c->Sk, c->D, c->bshd);
  attn_tensor *tv = tu_tensor4(ctx, c->dt, v, c->B, c->Hkv, c->Sk, c->D, c->bshd);
  attn_tensor *to = tu_tensor4(ctx, c->dt, NULL, c->B, c->H, c->Sq, c->D, c->bshd);
  attn_tensor *tw = c->want_w ? tu_tensor4(ctx, c->dt, NULL, c->B, c->H, c->Sq, c->Sk, false) : NULL;
  int64_t ls[3] = {c->B, c->H, c->Sq};
  attn_tensor *tl = tu_tensor(ctx, c->dt, NULL, 3, ls);
  attn_desc *d;
  assert_int_equal(attn_desc_create(ctx, &d), ATTN_OK);
  assert_int_equal(attn_desc_set_causal(d, (attn_causal)c->causal), ATTN_OK);
  assert_int_equal(attn_desc_set_window(d, c->left < 0 ? ATTN_WINDOW_UNBOUNDED : c->left,
                                        c->right < 0 ? ATTN_WINDOW_UNBOUNDED : c->right), ATTN_OK);
  if (c->lengths) {
    assert_int_equal(attn_desc_set_key_lengths(d, klen, c->B), ATTN_OK);
    assert_int_equal(attn_desc_set_query_lengths(d, qlen, c->B), ATTN_OK);
  }
  attn_plan *plan;
  if (attn_plan_create(ctx, d, tq, tk, tv, to, tw, tl, &plan) != ATTN_OK)
    fail_msg("plan: %s", attn_context_last_error(ctx));
  assert_int_equal(attn_plan_execute(plan, tq, tk, tv, to, tw, tl), ATTN_OK);
  bool f64 = c->dt == ATTN_DTYPE_F64;
  double err;
  tu_read(to, go);
  size_t bad = tu_violations(go, ro, rb, nq, f64 ? 1e-12 : 1e-5, f64 ? 1e-13 : 1e-6, &err);
  if (bad)
    fail_msg("out: %zu off (max %g): Sq%lld Sk%lld w(%lld,%lld) causal%d lengths%d %s", bad, err,
             (long long)c->Sq, (long long)c->Sk, (long long)c->left, (long long)c->right,
             c->causal, c->lengths, f64 ? "f64" : "f32");
  tu_read(tl, gl);
  for (size_t r = 0; r < nl; r++) {
    if (isinf(rl[r]))
      assert_true(isinf(gl[r]) && gl[r] < 0);
    else
      assert_true(fabs(gl[r] - rl[r]) <= (f64 ? 1e-12 : 1e-5) * (1 + fabs(rl[r])));
  }
  if (tw) {
    tu_read(tw, gw);
    assert_int_equal(tu_violations(gw, rw, NULL, nw, f64 ? 1e-11 : 1e-4, f64 ? 1e-13 : 1e-6, &err), 0);
  }
  attn_plan_destroy(plan);
  attn_desc_destroy(d);
  tu_tensor_free(tq); tu_tensor_free(tk); tu_tensor_free(tv); tu_tensor_free(to);
  tu_tensor_free(tw); tu_tensor_free(tl);
  free(q); free(k); free(v); free(ro); free(rb); free(rw); free(rl); free(go); free(gw); free(gl);
}

static void window_matches_reference_with_window_mask(void **state) {
  (void)state;
  attn_context *ctx = tu_context(2);
  /* Sizes off the tile grid (bq 128, bk 512/256); windows narrower and wider
   * than a tile; one-sided; S_q ≠ S_k for the bottom-right alignment. */
  const int64_t sizes[][2] = {{700, 700}, {333, 1001}, {1001, 333}, {129, 513}, {1, 777}};
  const int64_t wins[][2] = {{64, 64}, {0, 100}, {200, 0}, {5, 300}, {-1, 7}, {600, -1}, {1, 1}};
  int n = 0;
  for (int s = 0; s < 5; s++)
    for (int w = 0; w < 7; w++)
      for (int causal = 0; causal < 3; causal++) {
        win_case c = {1, 2, 1, sizes[s][0], sizes[s][1], 16, wins[w][0], wins[w][1], causal,
                      (s + w + causal) % 3 == 0 ? ATTN_DTYPE_F64 : ATTN_DTYPE_F32,
                      (w & 1) == 1, false, (w + causal) % 2 == 0};
        if (c.lengths) c.B = 2;
        run_window(ctx, &c, 1000 + (uint64_t)(s * 100 + w * 10 + causal));
        n++;
      }
  /* Weights on a smaller case of each alignment. */
  for (int causal = 0; causal < 3; causal++) {
    win_case c = {2, 2, 2, 300, 260, 8, 30, 10, causal, ATTN_DTYPE_F64, false, true, true};
    run_window(ctx, &c, 7 + (uint64_t)causal);
    n++;
  }
  print_message("%d window cases checked\n", n);
  attn_context_destroy(ctx);
}

/* The kernel visits only the band: over all query tiles, the keys visited
 * are at most (tile rows + left + right) per tile, so the total is O(S·w)
 * and far below S_q·S_k. */
static void window_visits_only_the_band(void **state) {
  (void)state;
  attn_context *ctx = tu_context(2);
  const int64_t S = 20000, w = 256;
  int64_t shape[4] = {1, 1, S, 64};
  attn_tensor *t;
  assert_int_equal(attn_tensor_create(ctx, ATTN_DTYPE_F32, 4, shape, &t), ATTN_OK);
  for (int causal = 0; causal < 3; causal++) {
    attn_desc *d;
    assert_int_equal(attn_desc_create(ctx, &d), ATTN_OK);
    assert_int_equal(attn_desc_set_causal(d, (attn_causal)causal), ATTN_OK);
    assert_int_equal(attn_desc_set_window(d, w, w), ATTN_OK);
    attn_plan *plan;
    assert_int_equal(attn_plan_create(ctx, d, t, t, t, t, NULL, NULL, &plan), ATTN_OK);
    const attn_exact *ex = (const attn_exact *)((const struct attn_plan *)plan)->impl;
    int64_t ranges[2 * 8];
    assert_true(ex->mask.max_ranges <= 8);
    int64_t visited = 0, tiles = 0;
    for (int64_t i0 = 0; i0 < S; i0 += ex->bq, tiles++) {
      int64_t i1 = attn_min64(S, i0 + ex->bq);
      int64_t nr = attn_mask_key_ranges(&ex->mask, 0, 0, i0, i1, ranges);
      int64_t here = 0;
      for (int64_t r = 0; r < nr; r++) {
        /* every visited key is kept by some row of the tile */
        assert_true(ranges[2 * r] >= attn_max64(0, i0 - w));
        assert_true(ranges[2 * r + 1] <= attn_min64(S, i1 + (causal ? 0 : w)));
        here += ranges[2 * r + 1] - ranges[2 * r];
      }
      assert_true(here <= (i1 - i0) + w + (causal ? 0 : w));
      visited += here;
    }
    assert_true(visited <= tiles * (ex->bq + 2 * w));
    /* score entries computed vs dense S²: at least 10× fewer */
    assert_true(visited * ex->bq * 10 < S * S);
    print_message("causal %d: %lld of %lld score entries computed\n", causal,
                  (long long)(visited * ex->bq), (long long)(S * S));
    attn_plan_destroy(plan);
    attn_desc_destroy(d);
  }
  attn_tensor_destroy(t);
  attn_context_destroy(ctx);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(window_matches_reference_with_window_mask),
      cmocka_unit_test(window_visits_only_the_band),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}

/* Swin 2-D (shifted) window attention against a direct f64 reference written
 * here from the Swin procedure (pad, roll by −shift, label regions, partition,
 * attend with relative position bias, roll back, crop), and against the
 * naive reference with the equivalent keep predicate; bad input. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "testutil.h"

typedef struct swin_case {
  int64_t B, H, Hkv, gh, gw, M, shift, Dk, Dv;
  bool bias, bshd, want_w;
  attn_dtype dt;
} swin_case;

/* Direct reference. q [B][H][S][Dk], k [B][Hkv][S][Dk], v [B][Hkv][S][Dv];
 * bias [(2M−1)²][H] or NULL; out [B][H][S][Dv], lse [B][H][S], w [B][H][S][S]. */
static void swin_reference(const swin_case *c, double scale, const double *bias, const double *q,
                           const double *k, const double *v, double *out, double *lse,
                           double *w, double *bound) {
  const int64_t M = c->M, s = c->shift, S = c->gh * c->gw;
  const int64_t Hp = (c->gh + M - 1) / M * M, Wp = (c->gw + M - 1) / M * M;
  /* Rolled grid: position (ys, xs) holds padded-grid token ((ys+s)%Hp, (xs+s)%Wp),
   * −1 where that is padding. */
  int64_t *src = malloc((size_t)(Hp * Wp) * sizeof *src);
  int64_t *label = calloc((size_t)(Hp * Wp), sizeof *label);
  for (int64_t ys = 0; ys < Hp; ys++)
    for (int64_t xs = 0; xs < Wp; xs++) {
      int64_t y = (ys + s) % Hp, x = (xs + s) % Wp;
      src[ys * Wp + xs] = (y < c->gh && x < c->gw) ? y * c->gw + x : -1;
    }
  if (s > 0) { /* Swin's img_mask: 3×3 slices, one label each */
    int64_t hs[4] = {0, Hp - M, Hp - s, Hp}, ws[4] = {0, Wp - M, Wp - s, Wp}, cnt = 0;
    for (int a = 0; a < 3; a++)
      for (int bb = 0; bb < 3; bb++, cnt++)
        for (int64_t y = hs[a]; y < hs[a + 1]; y++)
          for (int64_t x = ws[bb]; x < ws[bb + 1]; x++) label[y * Wp + x] = cnt;
  }
  memset(w, 0, (size_t)(c->B * c->H * S * S) * sizeof *w);
  double *p = malloc((size_t)(M * M) * sizeof *p);
  for (int64_t b = 0; b < c->B; b++)
    for (int64_t h = 0; h < c->H; h++) {
      int64_t kh = h / (c->H / c->Hkv);
      for (int64_t wy = 0; wy < Hp / M; wy++)
        for (int64_t wx = 0; wx < Wp / M; wx++)
          for (int64_t qi = 0; qi < M * M; qi++) { /* query at window position qi */
            int64_t qy = wy * M + qi / M, qx = wx * M + qi % M, ti = src[qy * Wp + qx];
            if (ti < 0) continue;
            double mx = -INFINITY;
            for (int64_t kj = 0; kj < M * M; kj++) {
              int64_t ky = wy * M + kj / M, kx = wx * M + kj % M, tj = src[ky * Wp + kx];
              p[kj] = -INFINITY;
              if (tj < 0 || label[ky * Wp + kx] != label[qy * Wp + qx]) continue;
              double dot = 0;
              for (int64_t d = 0; d < c->Dk; d++)
                dot += q[((b * c->H + h) * S + ti) * c->Dk + d] * k[((b * c->Hkv + kh) * S + tj) * c->Dk + d];
              dot *= scale;
              if (bias) {
                int64_t dy = qi / M - kj / M, dx = qi % M - kj % M;
                dot += bias[((dy + M - 1) * (2 * M - 1) + dx + M - 1) * c->H + h];
              }
              p[kj] = dot;
              if (dot > mx) mx = dot;
            }
            double sum = 0;
            for (int64_t kj = 0; kj < M * M; kj++) {
              p[kj] = p[kj] == -INFINITY ? 0 : exp(p[kj] - mx);
              sum += p[kj];
            }
            double *o = out + ((b * c->H + h) * S + ti) * c->Dv;
            double *bo = bound + ((b * c->H + h) * S + ti) * c->Dv;
            for (int64_t d = 0; d < c->Dv; d++) o[d] = bo[d] = 0;
            for (int64_t kj = 0; kj < M * M; kj++) {
              int64_t tj = src[(wy * M + kj / M) * Wp + wx * M + kj % M];
              if (p[kj] == 0) continue;
              double pr = p[kj] / sum;
              w[((b * c->H + h) * S + ti) * S + tj] = pr;
              for (int64_t d = 0; d < c->Dv; d++) {
                double vv = v[((b * c->Hkv + kh) * S + tj) * c->Dv + d];
                o[d] += pr * vv;
                bo[d] += pr * fabs(vv);
              }
            }
            lse[(b * c->H + h) * S + ti] = mx + log(sum);
          }
    }
  free(p);
  free(src);
  free(label);
}

static void run_swin(attn_context *ctx, const swin_case *c, uint64_t seed) {
  const int64_t S = c->gh * c->gw, M = c->M, nb = (2 * M - 1) * (2 * M - 1);
  size_t nq = (size_t)(c->B * c->H * S * c->Dk), nk = (size_t)(c->B * c->Hkv * S * c->Dk);
  size_t nv = (size_t)(c->B * c->Hkv * S * c->Dv), no = (size_t)(c->B * c->H * S * c->Dv);
  size_t nw = (size_t)(c->B * c->H * S * S), nl = (size_t)(c->B * c->H * S);
  double *q = tu_random(nq, &seed), *k = tu_random(nk, &seed), *v = tu_random(nv, &seed);
  for (size_t i = 0; i < nq; i++) q[i] *= 3.0;
  double *bias = c->bias ? tu_random((size_t)(nb * c->H), &seed) : NULL;
  double *ro = malloc(no * 8), *rl = malloc(nl * 8), *rw = malloc(nw * 8), *rb = malloc(no * 8);
  double *go = malloc(no * 8), *gl = malloc(nl * 8), *gw = malloc(nw * 8);
  double scale = 1.0 / sqrt((double)c->Dk);
  swin_reference(c, scale, bias, q, k, v, ro, rl, rw, rb);

  attn_tensor *tq = tu_tensor4(ctx, c->dt, q, c->B, c->H, S, c->Dk, c->bshd);
  attn_tensor *tk = tu_tensor4(ctx, c->dt, k, c->B, c->Hkv, S, c->Dk, c->bshd);
  attn_tensor *tv = tu_tensor4(ctx, c->dt, v, c->B, c->Hkv, S, c->Dv, c->bshd);
  attn_tensor *to = tu_tensor4(ctx, c->dt, NULL, c->B, c->H, S, c->Dv, c->bshd);
  attn_tensor *tw = c->want_w ? tu_tensor4(ctx, c->dt, NULL, c->B, c->H, S, S, false) : NULL;
  int64_t ls[3] = {c->B, c->H, S}, bs[2] = {nb, c->H};
  attn_tensor *tl = tu_tensor(ctx, c->dt, NULL, 3, ls);
  attn_tensor *tb = bias ? tu_tensor(ctx, c->dt, bias, 2, bs) : NULL;
  attn_desc *d;
  assert_int_equal(attn_desc_create(ctx, &d), ATTN_OK);
  assert_int_equal(attn_desc_set_variant(d, ATTN_VARIANT_SWIN), ATTN_OK);
  assert_int_equal(attn_desc_set_swin(d, c->gh, c->gw, M, c->shift), ATTN_OK);
  assert_int_equal(attn_desc_set_swin_bias(d, tb), ATTN_OK);
  attn_plan *plan = NULL;
  if (attn_plan_create(ctx, d, tq, tk, tv, to, tw, tl, &plan) != ATTN_OK)
    fail_msg("plan: %s", attn_context_last_error(ctx));
  assert_int_equal(attn_plan_execute(plan, tq, tk, tv, to, tw, tl), ATTN_OK);
  assert_int_equal(attn_plan_execute(plan, tq, tk, tv, to, tw, tl), ATTN_OK);
  bool f64 = c->dt == ATTN_DTYPE_F64;
  double err;
  tu_read(to, go);
  size_t bad = tu_violations(go, ro, rb, no, f64 ? 1e-12 : 1e-5, f64 ? 1e-13 : 1e-6, &err);
  if (bad)
    fail_msg("out: %zu of %zu off (max %g): grid %lldx%lld M%lld shift%lld bias%d %s", bad, no,
             err, (long long)c->gh, (long long)c->gw, (long long)M, (long long)c->shift, c->bias,
             f64 ? "f64" : "f32");
  tu_read(tl, gl);
  assert_int_equal(tu_violations(gl, rl, NULL, nl, f64 ? 1e-12 : 1e-5, f64 ? 1e-12 : 1e-5, &err), 0);
  if (tw) {
    tu_read(tw, gw);
    assert_int_equal(tu_violations(gw, rw, NULL, nw, f64 ? 1e-11 : 1e-4, f64 ? 1e-13 : 1e-6, &err), 0);
  }
  attn_plan_destroy(plan);
  attn_desc_destroy(d);
  tu_tensor_free(tq); tu_tensor_free(tk); tu_tensor_free(tv); tu_tensor_free(to);
  tu_tensor_free(tw); tu_tensor_free(tl); tu_tensor_free(tb);
  free(q); free(k); free(v); free(bias); free(ro); free(rl); free(rw); free(rb);
  free(go); free(gl); free(gw);
}

static void swin_matches_direct_reference(void **state) {
  (void)state;
  attn_context *ctx = tu_context(2);
  /* B, H, Hkv, gh, gw, M, shift, Dk, Dv */
  const int64_t shapes[][9] = {
      {1, 2, 2, 8, 8, 4, 0, 16, 16},  {1, 2, 2, 8, 8, 4, 2, 16, 16},
      {2, 4, 2, 7, 10, 3, 1, 8, 12},  {1, 3, 3, 9, 5, 4, 2, 16, 8},
      {1, 1, 1, 5, 5, 7, 3, 8, 8},    {2, 2, 1, 6, 6, 2, 1, 4, 4},
      {1, 2, 2, 14, 14, 7, 3, 32, 32}, {1, 1, 1, 1, 9, 3, 1, 8, 8},
      {1, 2, 2, 11, 13, 4, 3, 8, 8}};
  int n = 0;
  for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++)
    for (int var = 0; var < 4; var++) {
      const int64_t *x = shapes[s];
      swin_case c = {x[0], x[1], x[2], x[3], x[4], x[5], x[6], x[7], x[8],
                     var & 1, var == 2, var >= 2, (var & 1) ? ATTN_DTYPE_F64 : ATTN_DTYPE_F32};
      run_swin(ctx, &c, 100 + s * 4 + (uint64_t)var);
      n++;
    }
  print_message("%d Swin cases checked\n", n);
  attn_context_destroy(ctx);
}

/* Second, independent check without bias: the naive reference with a keep
 * predicate "same window and same wrap region in the rolled frame, not padding". */
typedef struct swin_keep {
  int64_t gw, M, shift, Hp, Wp;
} swin_keep;

static int64_t region_of(int64_t r, int64_t P, int64_t M, int64_t s) {
  return r < P - M ? 0 : r < P - s ? 1 : 2;
}

static bool swin_pred(void *user, int64_t b, int64_t h, int64_t i, int64_t j) {
  (void)b;
  (void)h;
  const swin_keep *u = user;
  /* rolled position of token (y, x): ((y − s) mod Hp, (x − s) mod Wp) */
  int64_t yi = (i / u->gw - u->shift + u->Hp) % u->Hp, xi = (i % u->gw - u->shift + u->Wp) % u->Wp;
  int64_t yj = (j / u->gw - u->shift + u->Hp) % u->Hp, xj = (j % u->gw - u->shift + u->Wp) % u->Wp;
  if (yi / u->M != yj / u->M || xi / u->M != xj / u->M) return false;
  if (u->shift == 0) return true;
  return region_of(yi, u->Hp, u->M, u->shift) == region_of(yj, u->Hp, u->M, u->shift) &&
         region_of(xi, u->Wp, u->M, u->shift) == region_of(xj, u->Wp, u->M, u->shift);
}

static void swin_matches_exact_with_window_mask(void **state) {
  (void)state;
  attn_context *ctx = tu_context(3);
  const int64_t g[][4] = {{12, 12, 4, 2}, {10, 7, 3, 1}, {16, 9, 5, 2}, {6, 6, 6, 3}};
  for (int t = 0; t < 4; t++) {
    int64_t gh = g[t][0], gw = g[t][1], M = g[t][2], sh = g[t][3], S = gh * gw, D = 16, H = 2;
    swin_keep u = {gw, M, sh, (gh + M - 1) / M * M, (gw + M - 1) / M * M};
    ref_problem p;
    ref_problem_init(&p, 1, H, S, S, D);
    p.keep = swin_pred;
    p.keep_user = &u;
    uint64_t seed = 77 + (uint64_t)t;
    size_t n = (size_t)(H * S * D);
    double *q = tu_random(n, &seed), *k = tu_random(n, &seed), *v = tu_random(n, &seed);
    double *ro = malloc(n * 8), *rb = malloc(n * 8), *go = malloc(n * 8);
    ref_attention(&p, q, k, v, ro, NULL, NULL, rb);
    attn_tensor *tq = tu_tensor4(ctx, ATTN_DTYPE_F64, q, 1, H, S, D, false);
    attn_tensor *tk = tu_tensor4(ctx, ATTN_DTYPE_F64, k, 1, H, S, D, false);
    attn_tensor *tv = tu_tensor4(ctx, ATTN_DTYPE_F64, v, 1, H, S, D, false);
    attn_tensor *to = tu_tensor4(ctx, ATTN_DTYPE_F64, NULL, 1, H, S, D, false);
    attn_desc *d;
    assert_int_equal(attn_desc_create(ctx, &d), ATTN_OK);
    assert_int_equal(attn_desc_set_variant(d, ATTN_VARIANT_SWIN), ATTN_OK);
    assert_int_equal(attn_desc_set_swin(d, gh, gw, M, sh), ATTN_OK);
    assert_int_equal(attn_forward(ctx, d, tq, tk, tv, to, NULL, NULL), ATTN_OK);
    tu_read(to, go);
    double err;
    assert_int_equal(tu_violations(go, ro, rb, n, 1e-12, 1e-13, &err), 0);
    attn_desc_destroy(d);
    tu_tensor_free(tq); tu_tensor_free(tk); tu_tensor_free(tv); tu_tensor_free(to);
    free(q); free(k); free(v); free(ro); free(rb); free(go);
  }
  attn_context_destroy(ctx);
}

static void swin_bitwise_identical_across_threads_no_alloc_in_execute(void **state) {
  (void)state;
  int64_t gh = 20, gw = 18, S = gh * gw, H = 3, D = 16, M = 7;
  uint64_t seed = 4;
  double *x = tu_random((size_t)(H * S * D), &seed);
  double *bias = tu_random((size_t)((2 * M - 1) * (2 * M - 1) * H), &seed);
  float *first = NULL;
  size_t no = (size_t)(H * S * D);
  for (int32_t th = 1; th <= 4; th++) {
    tu_counter cnt = {0};
    attn_context *ctx = tu_counting_context(&cnt, th);
    attn_tensor *t = tu_tensor4(ctx, ATTN_DTYPE_F32, x, 1, H, S, D, false);
    attn_tensor *o = tu_tensor4(ctx, ATTN_DTYPE_F32, NULL, 1, H, S, D, false);
    int64_t bs[2] = {(2 * M - 1) * (2 * M - 1), H};
    attn_tensor *tb = tu_tensor(ctx, ATTN_DTYPE_F32, bias, 2, bs);
    attn_desc *d;
    assert_int_equal(attn_desc_create(ctx, &d), ATTN_OK);
    assert_int_equal(attn_desc_set_variant(d, ATTN_VARIANT_SWIN), ATTN_OK);
    assert_int_equal(attn_desc_set_swin(d, gh, gw, M, 3), ATTN_OK);
    assert_int_equal(attn_desc_set_swin_bias(d, tb), ATTN_OK);
    attn_plan *plan;
    assert_int_equal(attn_plan_create(ctx, d, t, t, t, o, NULL, NULL, &plan), ATTN_OK);
    int64_t before = cnt.allocs;
    for (int r = 0; r < 3; r++) assert_int_equal(attn_plan_execute(plan, t, t, t, o, NULL, NULL), ATTN_OK);
    assert_int_equal(cnt.allocs, before);
    if (th == 1) {
      first = malloc(no * 4);
      memcpy(first, attn_tensor_data(o), no * 4);
    } else {
      assert_memory_equal(first, attn_tensor_data(o), no * 4);
    }
    attn_plan_destroy(plan);
    attn_desc_destroy(d);
    tu_tensor_free(t); tu_tensor_free(o); tu_tensor_free(tb);
    attn_context_destroy(ctx);
    assert_int_equal(cnt.outstanding_bytes, 0);
  }
  free(first);
  free(x);
  free(bias);
}

static void expect_fail(attn_context *ctx, attn_desc *d, attn_tensor *q, attn_tensor *o,
                        attn_status want, const char *needle) {
  size_t n = (size_t)attn_tensor_numel(o);
  float *out = attn_tensor_data(o);
  for (size_t i = 0; i < n; i++) out[i] = -7.0f;
  attn_status st = attn_forward(ctx, d, q, q, q, o, NULL, NULL);
  if (st != want)
    fail_msg("status %s, want %s (%s)", attn_status_string(st), attn_status_string(want),
             attn_context_last_error(ctx));
  if (strstr(attn_context_last_error(ctx), needle) == NULL)
    fail_msg("message '%s' does not name '%s'", attn_context_last_error(ctx), needle);
  for (size_t i = 0; i < n; i++) assert_true(out[i] == -7.0f);
}

static void swin_bad_input_gives_documented_status(void **state) {
  (void)state;
  attn_context *ctx = tu_context(2);
  attn_tensor *q = tu_tensor4(ctx, ATTN_DTYPE_F32, NULL, 1, 2, 64, 8, false);
  attn_tensor *o = tu_tensor4(ctx, ATTN_DTYPE_F32, NULL, 1, 2, 64, 8, false);
  attn_desc *d;
  assert_int_equal(attn_desc_create(ctx, &d), ATTN_OK);
  assert_int_equal(attn_desc_set_variant(d, ATTN_VARIANT_SWIN), ATTN_OK);
  expect_fail(ctx, d, q, o, ATTN_ERR_INVALID_ARG, "attn_desc_set_swin");
  assert_int_equal(attn_desc_set_swin(d, 8, 8, 4, 4), ATTN_ERR_INVALID_ARG); /* shift ≥ M */
  assert_non_null(strstr(attn_context_last_error(ctx), "shift"));
  assert_int_equal(attn_desc_set_swin(d, 8, 8, 4, -1), ATTN_ERR_INVALID_ARG);
  assert_int_equal(attn_desc_set_swin(d, 8, 8, 0, 0), ATTN_ERR_INVALID_ARG);
  assert_non_null(strstr(attn_context_last_error(ctx), "window"));
  assert_int_equal(attn_desc_set_swin(d, 0, 8, 4, 0), ATTN_ERR_INVALID_ARG);
  assert_non_null(strstr(attn_context_last_error(ctx), "grid_h"));
  assert_int_equal(attn_desc_set_swin(d, 8, -2, 4, 0), ATTN_ERR_INVALID_ARG);
  assert_non_null(strstr(attn_context_last_error(ctx), "grid_w"));
  assert_int_equal(attn_desc_set_swin(d, INT64_MAX, 4, 4, 0), ATTN_ERR_OVERFLOW);
  assert_int_equal(attn_desc_set_swin(d, 8, 9, 4, 2), ATTN_OK); /* 72 ≠ 64 */
  expect_fail(ctx, d, q, o, ATTN_ERR_SHAPE, "grid_h*grid_w");
  assert_int_equal(attn_desc_set_swin(d, 8, 8, 4, 2), ATTN_OK);
  /* Bias table: wrong shape, wrong dtype. */
  int64_t bad[2] = {48, 2}, good[2] = {49, 2};
  attn_tensor *tb = tu_tensor(ctx, ATTN_DTYPE_F32, NULL, 2, bad);
  assert_int_equal(attn_desc_set_swin_bias(d, tb), ATTN_OK);
  expect_fail(ctx, d, q, o, ATTN_ERR_SHAPE, "table");
  tu_tensor_free(tb);
  tb = tu_tensor(ctx, ATTN_DTYPE_F64, NULL, 2, good);
  assert_int_equal(attn_desc_set_swin_bias(d, tb), ATTN_OK);
  expect_fail(ctx, d, q, o, ATTN_ERR_DTYPE, "table");
  tu_tensor_free(tb);
  int64_t r1[1] = {49};
  tb = tu_tensor(ctx, ATTN_DTYPE_F32, NULL, 1, r1);
  assert_int_equal(attn_desc_set_swin_bias(d, tb), ATTN_ERR_SHAPE);
  tu_tensor_free(tb);
  assert_int_equal(attn_desc_set_swin_bias(d, NULL), ATTN_OK);
  /* Options Swin does not combine with. */
  assert_int_equal(attn_desc_set_causal(d, ATTN_CAUSAL_TOP_LEFT), ATTN_OK);
  expect_fail(ctx, d, q, o, ATTN_ERR_UNSUPPORTED, "causal");
  assert_int_equal(attn_desc_set_causal(d, ATTN_CAUSAL_NONE), ATTN_OK);
  assert_int_equal(attn_desc_set_window(d, 3, 3), ATTN_OK);
  expect_fail(ctx, d, q, o, ATTN_ERR_UNSUPPORTED, "window");
  assert_int_equal(attn_desc_set_window(d, ATTN_WINDOW_UNBOUNDED, ATTN_WINDOW_UNBOUNDED), ATTN_OK);
  assert_int_equal(attn_desc_set_softcap(d, 5.0), ATTN_OK);
  expect_fail(ctx, d, q, o, ATTN_ERR_UNSUPPORTED, "softcap");
  attn_desc_destroy(d);
  /* And a correct one runs. */
  assert_int_equal(attn_desc_create(ctx, &d), ATTN_OK);
  assert_int_equal(attn_desc_set_variant(d, ATTN_VARIANT_SWIN), ATTN_OK);
  assert_int_equal(attn_desc_set_swin(d, 8, 8, 4, 2), ATTN_OK);
  assert_int_equal(attn_forward(ctx, d, q, q, q, o, NULL, NULL), ATTN_OK);
  attn_plan *plan;
  assert_int_equal(attn_plan_create(ctx, d, q, q, q, o, NULL, NULL, &plan), ATTN_OK);
  size_t sz = 0;
  assert_int_equal(attn_plan_block_layout(plan, NULL, &sz), ATTN_ERR_UNSUPPORTED);
  attn_plan_destroy(plan);
  attn_desc_destroy(d);
  tu_tensor_free(q);
  tu_tensor_free(o);
  attn_context_destroy(ctx);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(swin_matches_direct_reference),
      cmocka_unit_test(swin_matches_exact_with_window_mask),
      cmocka_unit_test(swin_bitwise_identical_across_threads_no_alloc_in_execute),
      cmocka_unit_test(swin_bad_input_gives_documented_status),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}

/* bf16 and f16 plans (q, k, v, out 16-bit; weights, lse, additive mask f32)
 * against the naive f64 reference on the same, already rounded inputs, so
 * the test measures the kernel's own error, not the inputs' rounding:
 *
 *   |out − ref| ≤ c · u · Σ_j p_ij·|v_j|   per element, with
 *   bf16: u = 2⁻⁸, c = 2 — P is rounded to bf16 for P·V (unit roundoff
 *         2⁻⁸ per term: ≤ 2⁻⁸·Σ p|v|) and out is rounded to bf16 once
 *         (≤ 2⁻⁸·|out| ≤ 2⁻⁸·Σ p|v|); scores and the softmax are f32
 *         (≪ 2⁻⁸). An f32 out drops the second term; the test keeps c = 2.
 *   f16:  u = 2⁻¹¹, c = 1 — f16 is widened exactly to f32 and the f32
 *         kernel's error (≈1e-6 relative) is far below the output rounding
 *         (≤ 2⁻¹¹·|out|).
 * plus 1e-6 absolute for the f32 parts. Every mask option, GQA, softcap,
 * ALiBi, windows, strided (BSHD) layouts, odd head dims and tile edges run,
 * and the sparse variants (compared with their own f32 plan on the same
 * rounded inputs, bounded by its weights). Results are bitwise identical
 * for 1..4 threads. The same binary runs under ATTN_CPU=avx2 (the convert
 * engines) by ctest. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "testutil.h"

#define C_BF16 2.0
#define C_F16 1.0

typedef struct half_case {
  int64_t B, H, Hkv, Sq, Sk, D, Dv;
  int causal;
  bool bshd;
  attn_dtype dt, odt; /* q/k/v and out */
  int64_t left, right;
  bool key_len, query_len, bool_mask, add_mask, alibi;
  double softcap;
  int score;
  bool want_w, want_lse;
} half_case;

static double round_dt(attn_dtype dt, double x) {
  return dt == ATTN_DTYPE_BF16 ? tu_round_bf16(x) : dt == ATTN_DTYPE_F16 ? tu_round_f16(x) : x;
}

static double *rounded(size_t n, uint64_t *seed, double amp, attn_dtype dt) {
  double *x = tu_random(n, seed);
  for (size_t i = 0; i < n; i++) x[i] = round_dt(dt, amp * x[i]);
  return x;
}

/* Runs one case on ctx; returns the output (malloc'd doubles) for thread
 * comparisons, or checks it against the reference when check is true. */
static double *run_case(attn_context *ctx, const half_case *c, uint64_t seed, bool check) {
  ref_problem p;
  ref_problem_init(&p, c->B, c->H, c->Sq, c->Sk, c->D);
  p.Hkv = c->Hkv;
  p.Dv = c->Dv;
  p.causal = c->causal;
  p.score = c->score;
  p.left = c->left;
  p.right = c->right;
  p.softcap = c->softcap;
  const size_t nq = (size_t)(c->B * c->H * c->Sq * c->D), nk = (size_t)(c->B * c->Hkv * c->Sk * c->D);
  const size_t nv = (size_t)(c->B * c->Hkv * c->Sk * c->Dv), no = (size_t)(c->B * c->H * c->Sq * c->Dv);
  const size_t nw = (size_t)(c->B * c->H * c->Sq * c->Sk), nl = (size_t)(c->B * c->H * c->Sq);
  double *q = rounded(nq, &seed, 3.0, c->dt), *k = rounded(nk, &seed, 1.0, c->dt);
  double *v = rounded(nv, &seed, 1.0, c->dt);
  double *ro = malloc(no * 8), *rw = malloc(nw * 8), *rl = malloc(nl * 8), *rb = malloc(no * 8);
  double *go = malloc(no * 8), *gw = malloc(nw * 8), *gl = malloc(nl * 8);

  attn_desc *d = NULL;
  assert_int_equal(attn_desc_create(ctx, &d), ATTN_OK);
  assert_int_equal(attn_desc_set_causal(d, (attn_causal)c->causal), ATTN_OK);
  assert_int_equal(attn_desc_set_score(d, (attn_score)c->score), ATTN_OK);
  if (c->left >= 0 || c->right >= 0)
    assert_int_equal(attn_desc_set_window(d, c->left >= 0 ? c->left : ATTN_WINDOW_UNBOUNDED,
                                          c->right >= 0 ? c->right : ATTN_WINDOW_UNBOUNDED),
                     ATTN_OK);
  int64_t klen[4], qlen[4];
  for (int64_t b = 0; b < c->B; b++) {
    klen[b] = c->Sk - (b * 7) % (c->Sk > 1 ? c->Sk - 1 : 1);
    qlen[b] = c->Sq - (b * 5) % (c->Sq > 1 ? c->Sq - 1 : 1);
  }
  if (c->key_len) {
    p.key_len = klen;
    assert_int_equal(attn_desc_set_key_lengths(d, klen, c->B), ATTN_OK);
  }
  if (c->query_len) {
    p.query_len = qlen;
    assert_int_equal(attn_desc_set_query_lengths(d, qlen, c->B), ATTN_OK);
  }
  double *bm = NULL, *am = NULL, slopes[16];
  attn_tensor *tbm = NULL, *tam = NULL;
  uint8_t *bm8 = NULL;
  if (c->bool_mask) {
    bm = malloc(nw * 8);
    bm8 = malloc(nw);
    for (size_t i = 0; i < nw; i++) {
      bm[i] = tu_uniform(&seed, 0, 1) < 0.7;
      bm8[i] = (uint8_t)bm[i];
    }
    p.bool_mask = bm8;
    tbm = tu_tensor4(ctx, ATTN_DTYPE_U8, bm, c->B, c->H, c->Sq, c->Sk, false);
    assert_int_equal(attn_desc_set_bool_mask(d, tbm), ATTN_OK);
  }
  if (c->add_mask) {
    am = tu_random(nw, &seed);
    for (size_t i = 0; i < nw; i++) am[i] = (double)(float)(2 * am[i]);
    p.add_mask = am;
    tam = tu_tensor4(ctx, ATTN_DTYPE_F32, am, c->B, c->H, c->Sq, c->Sk, false);
    assert_int_equal(attn_desc_set_additive_mask(d, tam), ATTN_OK);
  }
  if (c->alibi) {
    for (int64_t h = 0; h < c->H; h++) slopes[h] = pow(2.0, -(double)(h + 1));
    p.alibi = slopes;
    assert_int_equal(attn_desc_set_alibi(d, slopes, c->H), ATTN_OK);
  }
  if (c->softcap > 0) assert_int_equal(attn_desc_set_softcap(d, c->softcap), ATTN_OK);
  ref_attention(&p, q, k, v, ro, rw, rl, rb);

  attn_tensor *tq = tu_tensor4(ctx, c->dt, q, c->B, c->H, c->Sq, c->D, c->bshd);
  attn_tensor *tk = tu_tensor4(ctx, c->dt, k, c->B, c->Hkv, c->Sk, c->D, c->bshd);
  attn_tensor *tv = tu_tensor4(ctx, c->dt, v, c->B, c->Hkv, c->Sk, c->Dv, c->bshd);
  attn_tensor *to = tu_tensor4(ctx, c->odt, NULL, c->B, c->H, c->Sq, c->Dv, c->bshd);
  attn_tensor *tw = c->want_w ? tu_tensor4(ctx, ATTN_DTYPE_F32, NULL, c->B, c->H, c->Sq, c->Sk, false)
                              : NULL;
  int64_t lshape[3] = {c->B, c->H, c->Sq};
  attn_tensor *tl = c->want_lse ? tu_tensor(ctx, ATTN_DTYPE_F32, NULL, 3, lshape) : NULL;
  attn_plan *plan = NULL;
  if (attn_plan_create(ctx, d, tq, tk, tv, to, tw, tl, &plan) != ATTN_OK)
    fail_msg("plan: %s", attn_context_last_error(ctx));
  assert_int_equal(attn_plan_execute(plan, tq, tk, tv, to, tw, tl), ATTN_OK);
  tu_read(to, go);
  if (check) {
    const double u = c->dt == ATTN_DTYPE_BF16 ? C_BF16 * ldexp(1, -8) : C_F16 * ldexp(1, -11);
    double max_err;
    size_t bad = tu_violations(go, ro, rb, no, u, 1e-6, &max_err);
    if (bad && getenv("HALF_DEBUG"))
      for (size_t i = 0; i < no; i++)
        if (fabs(go[i] - ro[i]) > u * rb[i] + 1e-6)
          print_message("i=%zu got %.9g ref %.9g bound %.9g\n", i, go[i], ro[i], rb[i]);
    if (bad)
      fail_msg("out: %zu of %zu off (max %g): %s→%s B%lld H%lld/%lld Sq%lld Sk%lld D%lld Dv%lld "
               "causal%d win%lld,%lld kl%d ql%d bm%d am%d alibi%d cap%g",
               bad, no, max_err, c->dt == ATTN_DTYPE_BF16 ? "bf16" : "f16",
               c->odt == ATTN_DTYPE_F32 ? "f32" : "16", (long long)c->B, (long long)c->H,
               (long long)c->Hkv, (long long)c->Sq, (long long)c->Sk, (long long)c->D,
               (long long)c->Dv, c->causal, (long long)c->left, (long long)c->right, c->key_len,
               c->query_len, c->bool_mask, c->add_mask, c->alibi, c->softcap);
    if (tw) {
      tu_read(tw, gw);
      bad = tu_violations(gw, rw, NULL, nw, 1e-4, 1e-6, &max_err);
      if (bad) fail_msg("weights: %zu off (max %g)", bad, max_err);
    }
    if (tl) {
      tu_read(tl, gl);
      bad = tu_violations(gl, rl, NULL, nl, 1e-5, 1e-5, &max_err);
      if (bad) fail_msg("lse: %zu off (max %g)", bad, max_err);
    }
  }
  attn_plan_destroy(plan);
  tu_tensor_free(tq);
  tu_tensor_free(tk);
  tu_tensor_free(tv);
  tu_tensor_free(to);
  tu_tensor_free(tw);
  tu_tensor_free(tl);
  tu_tensor_free(tbm);
  tu_tensor_free(tam);
  attn_desc_destroy(d);
  free(q);
  free(k);
  free(v);
  free(ro);
  free(rw);
  free(rl);
  free(rb);
  free(gw);
  free(gl);
  free(bm);
  free(bm8);
  free(am);
  return go;
}

static half_case base(attn_dtype dt) {
  half_case c = {2, 2, 2, 37, 45, 16, 16, 0, false, dt, dt, -1, -1,
                 false, false, false, false, false, 0, ATTN_SCORE_SCALED_DOT, false, false};
  return c;
}

static void check_dtype(attn_dtype dt) {
  attn_context *ctx = tu_context(2);
  half_case cs[32];
  int n = 0;
  half_case c = base(dt);
  cs[n++] = c;
  c = base(dt), c.odt = ATTN_DTYPE_F32, c.want_w = c.want_lse = true, cs[n++] = c;
  c = base(dt), c.causal = ATTN_CAUSAL_TOP_LEFT, cs[n++] = c;
  c = base(dt), c.causal = ATTN_CAUSAL_BOTTOM_RIGHT, c.key_len = c.query_len = true, cs[n++] = c;
  c = base(dt), c.H = 4, c.Hkv = 2, cs[n++] = c;                          /* GQA */
  c = base(dt), c.H = 4, c.Hkv = 1, c.causal = ATTN_CAUSAL_TOP_LEFT, cs[n++] = c; /* MQA */
  c = base(dt), c.left = 5, c.right = 3, cs[n++] = c;
  c = base(dt), c.bool_mask = true, c.want_lse = true, cs[n++] = c;
  c = base(dt), c.add_mask = true, c.odt = ATTN_DTYPE_F32, cs[n++] = c;
  c = base(dt), c.alibi = true, c.softcap = 5.0, cs[n++] = c;
  c = base(dt), c.bshd = true, c.D = 33, c.Dv = 17, cs[n++] = c;         /* odd dims, strided */
  c = base(dt), c.D = 7, c.Dv = 40, c.Sq = 1, c.Sk = 3, cs[n++] = c;
  c = base(dt), c.score = ATTN_SCORE_DOT, c.D = 64, c.Dv = 64, c.Sq = 300, c.Sk = 600, c.B = 1,
  c.causal = ATTN_CAUSAL_TOP_LEFT, cs[n++] = c; /* several tiles */
  c = base(dt), c.D = 128, c.Dv = 128, c.Sq = 70, c.Sk = 260, c.B = 1, cs[n++] = c;
  /* several query blocks (K/V packed once per head), with key lengths whose
   * last tile is not a multiple of 32 keys, and with a window (no prepack) */
  c = base(dt), c.D = 32, c.Dv = 32, c.Sq = 300, c.Sk = 333, c.key_len = true,
  c.causal = ATTN_CAUSAL_BOTTOM_RIGHT, c.want_lse = true, cs[n++] = c;
  c = base(dt), c.D = 32, c.Dv = 48, c.Sq = 300, c.Sk = 300, c.left = 40, c.right = 7, c.H = 4,
  c.Hkv = 2, cs[n++] = c;
  for (int i = 0; i < n; i++) free(run_case(ctx, &cs[i], 100 + (uint64_t)i, true));
  attn_context_destroy(ctx);
}

static void test_bf16_reference(void **state) {
  (void)state;
  check_dtype(ATTN_DTYPE_BF16);
}

static void test_f16_reference(void **state) {
  (void)state;
  check_dtype(ATTN_DTYPE_F16);
}

/* Bitwise identical out for 1..4 threads (the engine never depends on them). */
static void test_threads(void **state) {
  (void)state;
  const attn_dtype dts[2] = {ATTN_DTYPE_BF16, ATTN_DTYPE_F16};
  for (int t = 0; t < 2; t++) {
    half_case c = base(dts[t]);
    c.B = 2, c.H = 4, c.Hkv = 2, c.Sq = 300, c.Sk = 520, c.D = 64, c.Dv = 64;
    c.causal = ATTN_CAUSAL_TOP_LEFT;
    attn_context *c1 = tu_context(1);
    double *o1 = run_case(c1, &c, 7, true);
    attn_context_destroy(c1);
    const size_t no = (size_t)(c.B * c.H * c.Sq * c.Dv);
    for (int32_t n = 2; n <= 4; n++) {
      attn_context *cn = tu_context(n);
      double *on = run_case(cn, &c, 7, false);
      assert_memory_equal(o1, on, no * sizeof(double));
      free(on);
      attn_context_destroy(cn);
    }
    free(o1);
  }
}

/* Longformer, BigBird and block-sparse in bf16 against their f32 plans on
 * the same rounded inputs (the f32 plans meet the f64 reference in
 * test_sparse), bounded by the f32 plan's weights: Σ_j w_ij |v_j|. */
static void test_sparse_bf16(void **state) {
  (void)state;
  attn_context *ctx = tu_context(2);
  const int64_t B = 1, H = 2, S = 256, D = 32;
  uint64_t seed = 5;
  const size_t n = (size_t)(B * H * S * D), nw = (size_t)(B * H * S * S);
  double *q = rounded(n, &seed, 3.0, ATTN_DTYPE_BF16), *k = rounded(n, &seed, 1.0, ATTN_DTYPE_BF16);
  double *v = rounded(n, &seed, 1.0, ATTN_DTYPE_BF16);
  double *o16 = malloc(n * 8), *o32 = malloc(n * 8), *w = malloc(nw * 8), *bound = malloc(n * 8);
  const int64_t globals[2] = {3, 100};
  uint8_t lay[64];
  const int64_t lshape[3] = {1, 8, 8};
  attn_tensor *tlay = NULL;
  assert_int_equal(attn_tensor_wrap(ctx, ATTN_DTYPE_U8, 3, lshape, NULL, lay, &tlay), ATTN_OK);
  for (int variant = 0; variant < 3; variant++) {
    attn_desc *d = NULL;
    assert_int_equal(attn_desc_create(ctx, &d), ATTN_OK);
    if (variant == 0) {
      assert_int_equal(attn_desc_set_variant(d, ATTN_VARIANT_LONGFORMER), ATTN_OK);
      assert_int_equal(attn_desc_set_window(d, 16, 16), ATTN_OK);
      assert_int_equal(attn_desc_set_global_tokens(d, globals, 2), ATTN_OK);
    } else if (variant == 1) {
      assert_int_equal(attn_desc_set_variant(d, ATTN_VARIANT_BIGBIRD), ATTN_OK);
      assert_int_equal(attn_desc_set_block_size(d, 32), ATTN_OK);
      assert_int_equal(attn_desc_set_bigbird(d, 1, 1, 2, 9), ATTN_OK);
    } else {
      assert_int_equal(attn_desc_set_variant(d, ATTN_VARIANT_BLOCK_SPARSE), ATTN_OK);
      assert_int_equal(attn_desc_set_block_size(d, 32), ATTN_OK);
      for (int i = 0; i < 64; i++) lay[i] = (i / 8 + i % 8) % 3 == 0 || i / 8 == i % 8;
      assert_int_equal(attn_desc_set_block_layout(d, tlay), ATTN_OK);
      assert_int_equal(attn_desc_set_causal(d, ATTN_CAUSAL_TOP_LEFT), ATTN_OK);
    }
    for (int pass = 0; pass < 2; pass++) {
      const attn_dtype dt = pass == 0 ? ATTN_DTYPE_F32 : ATTN_DTYPE_BF16;
      attn_tensor *tq = tu_tensor4(ctx, dt, q, B, H, S, D, false);
      attn_tensor *tk = tu_tensor4(ctx, dt, k, B, H, S, D, false);
      attn_tensor *tv = tu_tensor4(ctx, dt, v, B, H, S, D, false);
      attn_tensor *to = tu_tensor4(ctx, dt, NULL, B, H, S, D, false);
      attn_tensor *tw = pass == 0 ? tu_tensor4(ctx, ATTN_DTYPE_F32, NULL, B, H, S, S, false) : NULL;
      if (attn_forward(ctx, d, tq, tk, tv, to, tw, NULL) != ATTN_OK)
        fail_msg("variant %d %s: %s", variant, pass ? "bf16" : "f32", attn_context_last_error(ctx));
      tu_read(to, pass == 0 ? o32 : o16);
      if (tw) tu_read(tw, w);
      tu_tensor_free(tq);
      tu_tensor_free(tk);
      tu_tensor_free(tv);
      tu_tensor_free(to);
      tu_tensor_free(tw);
    }
    for (int64_t bh = 0; bh < B * H; bh++)
      for (int64_t i = 0; i < S; i++)
        for (int64_t x = 0; x < D; x++) {
          double s = 0;
          for (int64_t j = 0; j < S; j++) s += w[(bh * S + i) * S + j] * fabs(v[(bh * S + j) * D + x]);
          bound[(bh * S + i) * D + x] = s;
        }
    double max_err;
    size_t bad = tu_violations(o16, o32, bound, n, C_BF16 * ldexp(1, -8), 1e-5, &max_err);
    if (bad) fail_msg("variant %d: %zu of %zu off (max %g)", variant, bad, n, max_err);
    attn_desc_destroy(d);
  }
  free(q);
  free(k);
  free(v);
  free(o16);
  free(o32);
  free(w);
  free(bound);
  attn_tensor_destroy(tlay);
  attn_context_destroy(ctx);
}

/* Bad dtype combinations: the documented status, a message naming the
 * argument (and the other tensor), outputs untouched, nothing leaked. */
static void expect_bad(attn_context *ctx, attn_desc *d, attn_tensor *q, attn_tensor *k,
                       attn_tensor *v, attn_tensor *o, attn_tensor *w, attn_tensor *l,
                       attn_status want, const char *msg1, const char *msg2) {
  attn_plan *plan = (attn_plan *)(uintptr_t)0xC0FFEE00u;
  const size_t ob = (size_t)(attn_tensor_numel(o) * (attn_tensor_dtype(o) == ATTN_DTYPE_F32 ? 4 : 2));
  memset(attn_tensor_data(o), 0xA5, ob);
  assert_int_equal(attn_plan_create(ctx, d, q, k, v, o, w, l, &plan), want);
  assert_ptr_equal(plan, (attn_plan *)(uintptr_t)0xC0FFEE00u);
  const char *m = attn_context_last_error(ctx);
  if (strstr(m, msg1) == NULL || (msg2 && strstr(m, msg2) == NULL))
    fail_msg("message '%s' lacks '%s' / '%s'", m, msg1, msg2 ? msg2 : "");
  assert_int_equal(attn_forward(ctx, d, q, k, v, o, w, l), want);
  for (size_t i = 0; i < ob; i++) assert_int_equal(((uint8_t *)attn_tensor_data(o))[i], 0xA5);
}

static void test_bad_dtypes(void **state) {
  (void)state;
  tu_counter cnt = {0};
  attn_context *ctx = tu_counting_context(&cnt, 2);
  attn_desc *d = NULL;
  assert_int_equal(attn_desc_create(ctx, &d), ATTN_OK);
  const attn_dtype B16 = ATTN_DTYPE_BF16, F16 = ATTN_DTYPE_F16, F32 = ATTN_DTYPE_F32;
  attn_tensor *q = tu_tensor4(ctx, B16, NULL, 1, 2, 5, 8, false);
  attn_tensor *k = tu_tensor4(ctx, B16, NULL, 1, 2, 6, 8, false);
  attn_tensor *v = tu_tensor4(ctx, B16, NULL, 1, 2, 6, 8, false);
  attn_tensor *o = tu_tensor4(ctx, B16, NULL, 1, 2, 5, 8, false);
  attn_tensor *kf = tu_tensor4(ctx, F16, NULL, 1, 2, 6, 8, false);
  attn_tensor *k32 = tu_tensor4(ctx, F32, NULL, 1, 2, 6, 8, false);
  attn_tensor *q32 = tu_tensor4(ctx, F32, NULL, 1, 2, 5, 8, false);
  attn_tensor *o32 = tu_tensor4(ctx, F32, NULL, 1, 2, 5, 8, false);
  attn_tensor *of16 = tu_tensor4(ctx, F16, NULL, 1, 2, 5, 8, false);
  attn_tensor *o64 = tu_tensor4(ctx, ATTN_DTYPE_F64, NULL, 1, 2, 5, 8, false);
  attn_tensor *w16 = tu_tensor4(ctx, B16, NULL, 1, 2, 5, 6, false);
  const int64_t ls[3] = {1, 2, 5};
  attn_tensor *l16 = tu_tensor(ctx, B16, NULL, 3, ls);
  attn_tensor *am16 = tu_tensor4(ctx, B16, NULL, 1, 2, 5, 6, false);
  expect_bad(ctx, d, q, kf, v, o, NULL, NULL, ATTN_ERR_DTYPE, "k: dtype f16", "q is bf16");
  expect_bad(ctx, d, q, k32, v, o, NULL, NULL, ATTN_ERR_DTYPE, "k: dtype f32", "q is bf16");
  expect_bad(ctx, d, q32, k, v, o32, NULL, NULL, ATTN_ERR_DTYPE, "k: dtype bf16", "q is f32");
  expect_bad(ctx, d, q, k, v, of16, NULL, NULL, ATTN_ERR_DTYPE, "out: dtype f16", "q is bf16");
  expect_bad(ctx, d, q, k, v, o64, NULL, NULL, ATTN_ERR_DTYPE, "out: dtype f64", NULL);
  expect_bad(ctx, d, q32, k32, k32, o, NULL, NULL, ATTN_ERR_DTYPE, "out: dtype bf16", "q is f32");
  expect_bad(ctx, d, q, k, v, o, w16, NULL, ATTN_ERR_DTYPE, "weights: dtype bf16", "f32");
  expect_bad(ctx, d, q, k, v, o, NULL, l16, ATTN_ERR_DTYPE, "lse: dtype bf16", "f32");
  /* Additive masks are in the compute type: f32 for 16-bit plans. */
  assert_int_equal(attn_desc_set_additive_mask(d, am16), ATTN_ERR_DTYPE);
  attn_tensor *am64 = tu_tensor4(ctx, ATTN_DTYPE_F64, NULL, 1, 2, 5, 6, false);
  assert_int_equal(attn_desc_set_additive_mask(d, am64), ATTN_OK);
  expect_bad(ctx, d, q, k, v, o, NULL, NULL, ATTN_ERR_DTYPE, "additive_mask: dtype f64", "f32");
  assert_int_equal(attn_desc_set_additive_mask(d, NULL), ATTN_OK);
  assert_int_equal(attn_desc_set_score(d, ATTN_SCORE_GENERAL), ATTN_OK);
  expect_bad(ctx, d, q, k, v, o, NULL, NULL, ATTN_ERR_UNSUPPORTED, "score: bf16", NULL);
  assert_int_equal(attn_desc_set_score(d, ATTN_SCORE_SCALED_DOT), ATTN_OK);
  const attn_variant no16[] = {ATTN_VARIANT_SWIN, ATTN_VARIANT_LINEAR_ELU, ATTN_VARIANT_PERFORMER,
                               ATTN_VARIANT_LINFORMER};
  for (size_t i = 0; i < sizeof no16 / sizeof no16[0]; i++) {
    attn_desc *dv = NULL;
    assert_int_equal(attn_desc_create(ctx, &dv), ATTN_OK);
    assert_int_equal(attn_desc_set_variant(dv, no16[i]), ATTN_OK);
    attn_plan *plan = NULL;
    assert_int_not_equal(attn_plan_create(ctx, dv, q, k, v, o, NULL, NULL, &plan), ATTN_OK);
    assert_null(plan);
    attn_desc_destroy(dv);
  }
  /* The good combinations still work: 16-bit in, f32 out, f32 lse. */
  attn_tensor *l32 = tu_tensor(ctx, F32, NULL, 3, ls);
  assert_int_equal(attn_forward(ctx, d, q, k, v, o32, NULL, l32), ATTN_OK);
  attn_tensor *ts[] = {q, k, v, o, kf, k32, q32, o32, of16, o64, w16, l16, am16, am64, l32};
  for (size_t i = 0; i < sizeof ts / sizeof ts[0]; i++) tu_tensor_free(ts[i]);
  attn_desc_destroy(d);
  attn_context_destroy(ctx);
  assert_int_equal(cnt.outstanding_bytes, 0);
}

/* Allocation failure at every allocation of a bf16 plan's creation: the
 * status is ATTN_ERR_NO_MEMORY, nothing leaks, and the next try works. */
static void test_alloc_fail_bf16(void **state) {
  (void)state;
  for (int64_t fail = 1;; fail++) {
    tu_counter cnt = {0};
    attn_context *ctx = tu_counting_context(&cnt, 2);
    half_case c = base(ATTN_DTYPE_BF16);
    attn_desc *d = NULL;
    attn_tensor *q = tu_tensor4(ctx, c.dt, NULL, 1, 2, 40, 16, false);
    attn_tensor *k = tu_tensor4(ctx, c.dt, NULL, 1, 2, 50, 16, false);
    attn_tensor *o = tu_tensor4(ctx, c.dt, NULL, 1, 2, 40, 16, false);
    assert_int_equal(attn_desc_create(ctx, &d), ATTN_OK);
    attn_desc_set_causal(d, ATTN_CAUSAL_TOP_LEFT);
    cnt.fail_at = cnt.allocs + fail;
    attn_plan *plan = NULL;
    attn_status st = attn_plan_create(ctx, d, q, k, k, o, NULL, NULL, &plan);
    cnt.fail_at = 0;
    if (st == ATTN_OK) assert_int_equal(attn_plan_execute(plan, q, k, k, o, NULL, NULL), ATTN_OK);
    else assert_int_equal(st, ATTN_ERR_NO_MEMORY);
    attn_plan_destroy(plan);
    attn_desc_destroy(d);
    tu_tensor_free(q);
    tu_tensor_free(k);
    tu_tensor_free(o);
    attn_context_destroy(ctx);
    assert_int_equal(cnt.outstanding_bytes, 0);
    if (st == ATTN_OK) break;
  }
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_bf16_reference),
      cmocka_unit_test(test_f16_reference),
      cmocka_unit_test(test_threads),
      cmocka_unit_test(test_sparse_bf16),
      cmocka_unit_test(test_bad_dtypes),
      cmocka_unit_test(test_alloc_fail_bf16),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}

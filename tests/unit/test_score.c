/* Score functions through the exact kernel against the naive f64 reference:
 * Bahdanau additive s = vᵀ tanh(W_q q + W_k k + b) and Luong general
 * s = scale·qᵀ W k, with d_q ≠ d_k, GQA, masks and transforms, weights and
 * lse, both dtypes, strided parameter tensors; bad input for missing or
 * malformed parameters (status, message, untouched outputs). */
#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "testutil.h"

typedef struct scase {
  int64_t B, H, Hkv, Sq, Sk, Dq, Dk, Dv;
  attn_dtype dt;
  bool bshd;
  int score;           /* ATTN_SCORE_GENERAL or ATTN_SCORE_ADDITIVE */
  int64_t A;           /* additive attention dim */
  bool bias;           /* additive: with bias */
  bool strided;        /* parameters as wrapped tensors with padded/strided layouts */
  double scale;        /* general: 0 = default (1) */
  int causal;
  const int64_t *key_len;
  const double *alibi;
  double softcap;
  bool bool_mask;      /* a random [B,1,S_q,S_k] bool mask */
  bool want_w, want_lse;
  bool poison;         /* NaN/Inf in K/V rows past the key lengths */
} scase;

static size_t esize(attn_dtype dt) { return dt == ATTN_DTYPE_F64 ? 8 : dt == ATTN_DTYPE_F32 ? 4 : 1; }

/* A rank-1/2 tensor holding src (dense C order) in dtype; with `pad`, rows
 * (rank 2) get `pad` extra elements of stride and vectors (rank 1) stride
 * 1 + pad, filled with NaN in the gaps so reading them would show. */
static attn_tensor *param_tensor(attn_context *ctx, attn_dtype dt, const double *src, int32_t rank,
                                 int64_t d0, int64_t d1, int64_t pad) {
  int64_t shape[2] = {d0, d1}, strides[2];
  if (rank == 1) {
    strides[0] = 1 + pad;
  } else {
    strides[0] = d1 + pad;
    strides[1] = 1;
  }
  size_t n = rank == 1 ? (size_t)(d0 * strides[0]) : (size_t)(d0 * strides[0]);
  void *mem = malloc(n * esize(dt));
  for (size_t i = 0; i < n; i++) {
    if (dt == ATTN_DTYPE_F32) ((float *)mem)[i] = NAN;
    else ((double *)mem)[i] = NAN;
  }
  int64_t rows = rank == 1 ? d0 : d0, cols = rank == 1 ? 1 : d1;
  for (int64_t r = 0; r < rows; r++)
    for (int64_t c = 0; c < cols; c++) {
      size_t at = (size_t)(r * strides[0] + c);
      double x = src[r * cols + c];
      if (dt == ATTN_DTYPE_F32) ((float *)mem)[at] = (float)x;
      else ((double *)mem)[at] = x;
    }
  attn_tensor *t = NULL;
  assert_int_equal(attn_tensor_wrap(ctx, dt, rank, shape, strides, mem, &t), ATTN_OK);
  return t;
}

static double run_scase(attn_context *ctx, const scase *c, uint64_t seed) {
  const int64_t B = c->B, H = c->H, Hkv = c->Hkv, Sq = c->Sq, Sk = c->Sk;
  const int64_t Dq = c->Dq, Dk = c->Dk, Dv = c->Dv, A = c->A;
  ref_problem p;
  ref_problem_init(&p, B, H, Sq, Sk, Dk);
  p.Hkv = Hkv;
  p.Dq = Dq;
  p.Dv = Dv;
  p.score = c->score;
  p.scale = c->scale;
  p.causal = c->causal;
  p.key_len = c->key_len;
  p.alibi = c->alibi;
  p.softcap = c->softcap;
  size_t nq = (size_t)(B * H * Sq * Dq), nk = (size_t)(B * Hkv * Sk * Dk);
  size_t nv = (size_t)(B * Hkv * Sk * Dv), no = (size_t)(B * H * Sq * Dv);
  size_t nw = (size_t)(B * H * Sq * Sk), nl = (size_t)(B * H * Sq);
  double *q = tu_random(nq, &seed), *k = tu_random(nk, &seed), *v = tu_random(nv, &seed);

  attn_desc *d;
  assert_int_equal(attn_desc_create(ctx, &d), ATTN_OK);
  assert_int_equal(attn_desc_set_score(d, (attn_score)c->score), ATTN_OK);
  if (c->scale > 0) assert_int_equal(attn_desc_set_scale(d, c->scale), ATTN_OK);
  assert_int_equal(attn_desc_set_causal(d, (attn_causal)c->causal), ATTN_OK);
  if (c->key_len) assert_int_equal(attn_desc_set_key_lengths(d, c->key_len, B), ATTN_OK);
  if (c->alibi) assert_int_equal(attn_desc_set_alibi(d, c->alibi, H), ATTN_OK);
  if (c->softcap > 0) assert_int_equal(attn_desc_set_softcap(d, c->softcap), ATTN_OK);

  const int64_t pad = c->strided ? 3 : 0;
  double *gw = NULL, *wq = NULL, *wk = NULL, *bias = NULL, *av = NULL;
  attn_tensor *tgw = NULL, *twq = NULL, *twk = NULL, *tb = NULL, *tav = NULL;
  if (c->score == ATTN_SCORE_GENERAL) {
    gw = tu_random((size_t)(Dq * Dk), &seed);
    p.general_w = gw;
    tgw = param_tensor(ctx, c->dt, gw, 2, Dq, Dk, pad);
    assert_int_equal(attn_desc_set_general_weight(d, tgw), ATTN_OK);
  } else {
    /* Projections scaled so W_q q + W_k k + b spans tanh's curved range. */
    wq = tu_random((size_t)(A * Dq), &seed);
    wk = tu_random((size_t)(A * Dk), &seed);
    for (int64_t i = 0; i < A * Dq; i++) wq[i] *= 1.5 / sqrt((double)Dq);
    for (int64_t i = 0; i < A * Dk; i++) wk[i] *= 1.5 / sqrt((double)Dk);
    av = tu_random((size_t)A, &seed);
    for (int64_t i = 0; i < A; i++) av[i] *= 2.0;
    if (c->bias) bias = tu_random((size_t)A, &seed);
    p.A = A;
    p.add_wq = wq;
    p.add_wk = wk;
    p.add_bias = bias;
    p.add_v = av;
    twq = param_tensor(ctx, c->dt, wq, 2, A, Dq, pad);
    twk = param_tensor(ctx, c->dt, wk, 2, A, Dk, pad);
    tav = param_tensor(ctx, c->dt, av, 1, A, 1, pad);
    if (bias) tb = param_tensor(ctx, c->dt, bias, 1, A, 1, pad);
    assert_int_equal(attn_desc_set_additive_weights(d, twq, twk, tb, tav), ATTN_OK);
  }
  uint8_t *bm = NULL;
  attn_tensor *tbm = NULL;
  if (c->bool_mask) {
    /* [B,1,S_q,S_k] memory broadcast over heads; every 5th row fully masked. */
    uint8_t *src = malloc((size_t)(B * Sq * Sk));
    bm = malloc(nw);
    for (int64_t x = 0; x < B * Sq * Sk; x++)
      src[x] = (x / Sk) % 5 != 2 && tu_uniform(&seed, 0, 1) < 0.7;
    for (int64_t b = 0; b < B; b++)
      for (int64_t h = 0; h < H; h++)
        memcpy(bm + ((b * H + h) * Sq) * Sk, src + b * Sq * Sk, (size_t)(Sq * Sk));
    int64_t shape[4] = {B, 1, Sq, Sk};
    assert_int_equal(attn_tensor_wrap(ctx, ATTN_DTYPE_U8, 4, shape, NULL, src, &tbm), ATTN_OK);
    assert_int_equal(attn_desc_set_bool_mask(d, tbm), ATTN_OK);
    p.bool_mask = bm;
  }

  double *ro = malloc(no * 8), *rw = malloc(nw * 8), *rl = malloc(nl * 8), *rb = malloc(no * 8);
  ref_attention(&p, q, k, v, ro, rw, rl, rb);
  if (c->poison) {
    assert_non_null(c->key_len);
    for (int64_t b = 0; b < B; b++)
      for (int64_t kh = 0; kh < Hkv; kh++)
        for (int64_t j = c->key_len[b]; j < Sk; j++) {
          for (int64_t x = 0; x < Dk; x++) k[((b * Hkv + kh) * Sk + j) * Dk + x] = x % 2 ? NAN : INFINITY;
          for (int64_t x = 0; x < Dv; x++) v[((b * Hkv + kh) * Sk + j) * Dv + x] = x % 2 ? -INFINITY : NAN;
        }
  }

  attn_tensor *tq = tu_tensor4(ctx, c->dt, q, B, H, Sq, Dq, c->bshd);
  attn_tensor *tk = tu_tensor4(ctx, c->dt, k, B, Hkv, Sk, Dk, c->bshd);
  attn_tensor *tv = tu_tensor4(ctx, c->dt, v, B, Hkv, Sk, Dv, c->bshd);
  attn_tensor *to = tu_tensor4(ctx, c->dt, NULL, B, H, Sq, Dv, c->bshd);
  attn_tensor *tw = c->want_w ? tu_tensor4(ctx, c->dt, NULL, B, H, Sq, Sk, false) : NULL;
  int64_t ls[3] = {B, H, Sq};
  attn_tensor *tl = c->want_lse ? tu_tensor(ctx, c->dt, NULL, 3, ls) : NULL;
  attn_plan *plan = NULL;
  if (attn_plan_create(ctx, d, tq, tk, tv, to, tw, tl, &plan) != ATTN_OK)
    fail_msg("plan: %s", attn_context_last_error(ctx));
  assert_int_equal(attn_plan_execute(plan, tq, tk, tv, to, tw, tl), ATTN_OK);
  assert_int_equal(attn_plan_execute(plan, tq, tk, tv, to, tw, tl), ATTN_OK); /* reusable */

  const bool f64 = c->dt == ATTN_DTYPE_F64;
  /* f32: tanh is a few ulp and the additive score sums A of them. */
  const double rtol = f64 ? 1e-11 : 5e-5, atol = f64 ? 1e-13 : 2e-6;
  double *go = malloc(no * 8), *gwt = malloc(nw * 8), *gl = malloc(nl * 8), max_err;
  tu_read(to, go);
  size_t bad = tu_violations(go, ro, rb, no, rtol, atol, &max_err);
  if (bad)
    fail_msg("out: %zu of %zu off (max err %g): score%d %s B%lld H%lld/%lld Sq%lld Sk%lld "
             "Dq%lld Dk%lld Dv%lld A%lld",
             bad, no, max_err, c->score, f64 ? "f64" : "f32", (long long)B, (long long)H,
             (long long)Hkv, (long long)Sq, (long long)Sk, (long long)Dq, (long long)Dk,
             (long long)Dv, (long long)A);
  for (size_t i = 0; i < no; i++) assert_true(isfinite(go[i]));
  if (tw) {
    tu_read(tw, gwt);
    double e;
    size_t wbad = tu_violations(gwt, rw, NULL, nw, f64 ? 1e-10 : 2e-4, f64 ? 1e-13 : 2e-6, &e);
    if (wbad) fail_msg("weights: %zu of %zu off (max err %g)", wbad, nw, e);
  }
  if (tl) {
    tu_read(tl, gl);
    for (size_t r = 0; r < nl; r++) {
      if (isinf(rl[r])) {
        assert_true(isinf(gl[r]) && gl[r] < 0);
      } else if (!(fabs(gl[r] - rl[r]) <= (f64 ? 1e-11 : 5e-5) * (1 + fabs(rl[r])))) {
        fail_msg("lse[%zu] = %.9g, want %.9g", r, gl[r], rl[r]);
      }
    }
  }
  attn_plan_destroy(plan);
  attn_desc_destroy(d);
  tu_tensor_free(tq); tu_tensor_free(tk); tu_tensor_free(tv); tu_tensor_free(to);
  tu_tensor_free(tw); tu_tensor_free(tl); tu_tensor_free(tgw); tu_tensor_free(twq);
  tu_tensor_free(twk); tu_tensor_free(tb); tu_tensor_free(tav); tu_tensor_free(tbm);
  free(q); free(k); free(v); free(gw); free(wq); free(wk); free(bias); free(av); free(bm);
  free(ro); free(rw); free(rl); free(rb); free(go); free(gwt); free(gl);
  return max_err;
}

static scase base(int score, attn_dtype dt) {
  scase c;
  memset(&c, 0, sizeof c);
  c.B = 2; c.H = 4; c.Hkv = 2; c.Sq = 37; c.Sk = 70;
  c.Dq = 12; c.Dk = 20; c.Dv = 9; c.A = 16;
  c.dt = dt;
  c.score = score;
  c.bias = true;
  c.want_w = c.want_lse = true;
  return c;
}

static const attn_dtype dtypes[2] = {ATTN_DTYPE_F32, ATTN_DTYPE_F64};
static const double slopes4[4] = {0.5, 0.25, 0.125, 0.0625};

/* ---- additive (Bahdanau) ---------------------------------------------------- */

static void additive_score_matches_reference(void **state) {
  (void)state;
  attn_context *ctx = tu_context(2);
  for (int t = 0; t < 2; t++) {
    scase c = base(ATTN_SCORE_ADDITIVE, dtypes[t]);
    run_scase(ctx, &c, 1); /* d_q 12 ≠ d_k 20 ≠ d_v 9, GQA 4/2 */
    c.bias = false;
    c.bshd = true;
    run_scase(ctx, &c, 2);
    c.Dq = c.Dk = c.Dv = 8;
    c.A = 1; /* smallest attention dim */
    run_scase(ctx, &c, 3);
    c.A = 67; /* odd, past the vector width */
    c.H = c.Hkv = 3;
    run_scase(ctx, &c, 4);
    c.strided = true; /* padded rows of W, strided v and bias */
    c.bias = true;
    run_scase(ctx, &c, 5);
    c = base(ATTN_SCORE_ADDITIVE, dtypes[t]);
    c.A = 300; /* the tanh scratch holds 16384/A = 54 keys: tiles split in chunks */
    c.B = 1; c.H = 2; c.Hkv = 1;
    c.Sk = 130;
    c.want_w = t == 0;
    run_scase(ctx, &c, 7);
    c = base(ATTN_SCORE_ADDITIVE, dtypes[t]);
    c.Hkv = 1; /* MQA */
    c.Sq = 1;
    c.Sk = 300;
    run_scase(ctx, &c, 6);
  }
  attn_context_destroy(ctx);
}

static void additive_score_with_masks_matches_reference(void **state) {
  (void)state;
  attn_context *ctx = tu_context(2);
  static const int64_t klen[2] = {50, 9};
  for (int t = 0; t < 2; t++) {
    scase c = base(ATTN_SCORE_ADDITIVE, dtypes[t]);
    c.causal = 1;
    c.key_len = klen;
    c.alibi = slopes4;
    run_scase(ctx, &c, 10);
    c.causal = 2;
    c.softcap = 1.5;
    c.bool_mask = true;
    run_scase(ctx, &c, 11);
    c.poison = true; /* NaN/Inf in K/V past the key lengths */
    run_scase(ctx, &c, 12);
  }
  attn_context_destroy(ctx);
}

/* Query/key blocks past one tile: bq 128, bk 512 (d ≤ 64). */
static void additive_score_across_tiles(void **state) {
  (void)state;
  attn_context *ctx = tu_context(2);
  static const int64_t klen[1] = {1000};
  scase c = base(ATTN_SCORE_ADDITIVE, ATTN_DTYPE_F32);
  c.B = 1; c.H = 2; c.Hkv = 1; c.Sq = 130; c.Sk = 1030; c.A = 24;
  c.want_w = false;
  c.key_len = klen;
  c.poison = true;
  run_scase(ctx, &c, 20);
  c.dt = ATTN_DTYPE_F64;
  c.causal = 2;
  c.want_w = true;
  run_scase(ctx, &c, 21);
  attn_context_destroy(ctx);
}

/* ---- general (Luong) ---------------------------------------------------------- */

static void general_score_matches_reference(void **state) {
  (void)state;
  attn_context *ctx = tu_context(2);
  static const int64_t klen[2] = {61, 3};
  for (int t = 0; t < 2; t++) {
    scase c = base(ATTN_SCORE_GENERAL, dtypes[t]);
    run_scase(ctx, &c, 30); /* W [12, 20]: d_q ≠ d_k, GQA */
    c.scale = 0.3;
    c.bshd = true;
    run_scase(ctx, &c, 31);
    c.strided = true;
    c.Dq = 33; c.Dk = 5;
    run_scase(ctx, &c, 32);
    c.causal = 2;
    c.key_len = klen;
    c.alibi = slopes4;
    c.softcap = 2.0;
    c.bool_mask = true;
    c.poison = true;
    run_scase(ctx, &c, 33);
    c = base(ATTN_SCORE_GENERAL, dtypes[t]);
    c.B = 1; c.Sq = 129; c.Sk = 600; c.Dq = c.Dk = c.Dv = 16; c.H = 2; c.Hkv = 1;
    c.causal = 1;
    c.want_w = t == 1;
    run_scase(ctx, &c, 34);
  }
  attn_context_destroy(ctx);
}

/* The general score with W = I is the dot score: same result up to rounding. */
static void general_with_identity_equals_dot(void **state) {
  (void)state;
  attn_context *ctx = tu_context(2);
  int64_t B = 1, H = 2, S = 40, D = 16;
  uint64_t seed = 9;
  double *q = tu_random((size_t)(B * H * S * D), &seed);
  double *eye = calloc((size_t)(D * D), sizeof(double));
  for (int64_t i = 0; i < D; i++) eye[i * D + i] = 1.0;
  attn_tensor *tq = tu_tensor4(ctx, ATTN_DTYPE_F64, q, B, H, S, D, false);
  attn_tensor *o1 = tu_tensor4(ctx, ATTN_DTYPE_F64, NULL, B, H, S, D, false);
  attn_tensor *o2 = tu_tensor4(ctx, ATTN_DTYPE_F64, NULL, B, H, S, D, false);
  int64_t ws[2] = {D, D};
  attn_tensor *tw = tu_tensor(ctx, ATTN_DTYPE_F64, eye, 2, ws);
  attn_desc *d;
  assert_int_equal(attn_desc_create(ctx, &d), ATTN_OK);
  assert_int_equal(attn_desc_set_score(d, ATTN_SCORE_DOT), ATTN_OK);
  assert_int_equal(attn_forward(ctx, d, tq, tq, tq, o1, NULL, NULL), ATTN_OK);
  assert_int_equal(attn_desc_set_score(d, ATTN_SCORE_GENERAL), ATTN_OK);
  assert_int_equal(attn_desc_set_general_weight(d, tw), ATTN_OK);
  assert_int_equal(attn_forward(ctx, d, tq, tq, tq, o2, NULL, NULL), ATTN_OK);
  const double *a = attn_tensor_data(o1), *b = attn_tensor_data(o2);
  for (int64_t i = 0; i < B * H * S * D; i++) assert_true(fabs(a[i] - b[i]) <= 1e-13);
  attn_desc_destroy(d);
  tu_tensor_free(tq); tu_tensor_free(o1); tu_tensor_free(o2); tu_tensor_free(tw);
  free(q); free(eye);
  attn_context_destroy(ctx);
}

/* ---- bad input ---------------------------------------------------------------- */

#define CANARY 4321.0

typedef struct small {
  attn_tensor *q, *k, *v, *out, *lse;
} small;

/* q [1,2,5,6], k [1,1,7,4], v [1,1,7,3]: d_q 6 ≠ d_k 4. */
static void small_make(attn_context *ctx, attn_dtype dt, small *s) {
  uint64_t seed = 5;
  double *q = tu_random(60, &seed), *k = tu_random(28, &seed), *v = tu_random(21, &seed);
  double can[30];
  for (int i = 0; i < 30; i++) can[i] = CANARY;
  s->q = tu_tensor4(ctx, dt, q, 1, 2, 5, 6, false);
  s->k = tu_tensor4(ctx, dt, k, 1, 1, 7, 4, false);
  s->v = tu_tensor4(ctx, dt, v, 1, 1, 7, 3, false);
  s->out = tu_tensor4(ctx, dt, can, 1, 2, 5, 3, false);
  int64_t ls[3] = {1, 2, 5};
  s->lse = tu_tensor(ctx, dt, can, 3, ls);
  free(q); free(k); free(v);
}

static void small_free(small *s) {
  tu_tensor_free(s->q); tu_tensor_free(s->k); tu_tensor_free(s->v);
  tu_tensor_free(s->out); tu_tensor_free(s->lse);
}

static void assert_names(attn_context *ctx, const char *name) {
  const char *msg = attn_context_last_error(ctx);
  if (strstr(msg, name) == NULL) fail_msg("message \"%s\" does not name \"%s\"", msg, name);
}

static void expect_fails(attn_context *ctx, const attn_desc *d, small *s, attn_status want,
                         const char *name) {
  attn_plan *sentinel = (attn_plan *)(uintptr_t)0xBAD, *plan = sentinel;
  attn_status st = attn_plan_create(ctx, d, s->q, s->k, s->v, s->out, NULL, s->lse, &plan);
  if (st != want)
    fail_msg("status %d (%s), want %d: %s", st, attn_status_string(st), want,
             attn_context_last_error(ctx));
  assert_ptr_equal(plan, sentinel);
  assert_names(ctx, name);
  assert_int_equal(attn_forward(ctx, d, s->q, s->k, s->v, s->out, NULL, s->lse), want);
  assert_names(ctx, name);
  double x[30];
  tu_read(s->out, x);
  for (int i = 0; i < 30; i++) assert_true(x[i] == CANARY);
  tu_read(s->lse, x);
  for (int i = 0; i < 10; i++) assert_true(x[i] == CANARY);
}

static attn_tensor *mat(attn_context *ctx, attn_dtype dt, int64_t r, int64_t c) {
  int64_t sh[2] = {r, c};
  return tu_tensor(ctx, dt, NULL, 2, sh);
}
static attn_tensor *vec(attn_context *ctx, attn_dtype dt, int64_t n) {
  return tu_tensor(ctx, dt, NULL, 1, &n);
}

static void general_weight_bad_input(void **state) {
  (void)state;
  attn_context *ctx = tu_context(1);
  for (int t = 0; t < 2; t++) {
    attn_dtype dt = dtypes[t], other = dtypes[1 - t];
    small s;
    small_make(ctx, dt, &s);
    attn_desc *d;
    assert_int_equal(attn_desc_create(ctx, &d), ATTN_OK);
    /* d_q ≠ d_k needs a projected score */
    expect_fails(ctx, d, &s, ATTN_ERR_SHAPE, "k");
    assert_int_equal(attn_desc_set_score(d, ATTN_SCORE_GENERAL), ATTN_OK);
    expect_fails(ctx, d, &s, ATTN_ERR_NULL_ARG, "general_w"); /* missing */
    attn_tensor *w_t = mat(ctx, dt, 4, 6); /* transposed: [d_k, d_q] */
    assert_int_equal(attn_desc_set_general_weight(d, w_t), ATTN_OK);
    expect_fails(ctx, d, &s, ATTN_ERR_SHAPE, "general_w");
    attn_tensor *w_dt = mat(ctx, other, 6, 4);
    assert_int_equal(attn_desc_set_general_weight(d, w_dt), ATTN_OK);
    expect_fails(ctx, d, &s, ATTN_ERR_DTYPE, "general_w");
    /* last dim not contiguous, and rows overlapping (row stride 0 < d_k):
     * BLAS would refuse the leading dimension */
    double buf[48] = {0};
    int64_t sh[2] = {6, 4}, st_col[2] = {8, 2}, st_row[2] = {0, 1};
    attn_tensor *w_col = NULL, *w_row = NULL;
    void *mem = calloc(48, 8);
    assert_int_equal(attn_tensor_wrap(ctx, dt, 2, sh, st_col, mem, &w_col), ATTN_OK);
    assert_int_equal(attn_tensor_wrap(ctx, dt, 2, sh, st_row, buf, &w_row), ATTN_OK);
    assert_int_equal(attn_desc_set_general_weight(d, w_col), ATTN_OK);
    expect_fails(ctx, d, &s, ATTN_ERR_LAYOUT, "general_w");
    assert_int_equal(attn_desc_set_general_weight(d, w_row), ATTN_OK);
    expect_fails(ctx, d, &s, ATTN_ERR_LAYOUT, "general_w");
    /* rank ≠ 2 refused by the setter */
    attn_tensor *w3 = tu_tensor4(ctx, dt, NULL, 1, 1, 6, 4, false);
    assert_int_equal(attn_desc_set_general_weight(d, w3), ATTN_ERR_SHAPE);
    assert_names(ctx, "rank");
    /* and a correct one works */
    attn_tensor *w_ok = mat(ctx, dt, 6, 4);
    assert_int_equal(attn_desc_set_general_weight(d, w_ok), ATTN_OK);
    assert_int_equal(attn_forward(ctx, d, s.q, s.k, s.v, s.out, NULL, s.lse), ATTN_OK);
    tu_tensor_free(w_t); tu_tensor_free(w_dt); tu_tensor_free(w_col); tu_tensor_free(w3);
    tu_tensor_free(w_ok);
    attn_tensor_destroy(w_row);
    attn_desc_destroy(d);
    small_free(&s);
  }
  attn_context_destroy(ctx);
}

static void additive_weights_bad_input(void **state) {
  (void)state;
  attn_context *ctx = tu_context(1);
  for (int t = 0; t < 2; t++) {
    attn_dtype dt = dtypes[t], other = dtypes[1 - t];
    small s;
    small_make(ctx, dt, &s);
    attn_desc *d;
    assert_int_equal(attn_desc_create(ctx, &d), ATTN_OK);
    assert_int_equal(attn_desc_set_score(d, ATTN_SCORE_ADDITIVE), ATTN_OK);
    expect_fails(ctx, d, &s, ATTN_ERR_NULL_ARG, "w_q"); /* missing */
    const int64_t A = 5;
    attn_tensor *wq = mat(ctx, dt, A, 6), *wk = mat(ctx, dt, A, 4), *v = vec(ctx, dt, A);
    attn_tensor *b = vec(ctx, dt, A);
    /* setter: NULLs, ranks, attention dims */
    assert_int_equal(attn_desc_set_additive_weights(d, NULL, wk, b, v), ATTN_ERR_NULL_ARG);
    assert_names(ctx, "w_q");
    assert_int_equal(attn_desc_set_additive_weights(d, wq, NULL, b, v), ATTN_ERR_NULL_ARG);
    assert_names(ctx, "w_k");
    assert_int_equal(attn_desc_set_additive_weights(d, wq, wk, b, NULL), ATTN_ERR_NULL_ARG);
    assert_names(ctx, "v");
    attn_tensor *v2 = mat(ctx, dt, A, 1), *wk_a = mat(ctx, dt, A + 1, 4), *b_a = vec(ctx, dt, A - 1);
    assert_int_equal(attn_desc_set_additive_weights(d, wq, wk, b, v2), ATTN_ERR_SHAPE);
    assert_names(ctx, "v");
    assert_int_equal(attn_desc_set_additive_weights(d, v, wk, b, v), ATTN_ERR_SHAPE);
    assert_names(ctx, "w_q");
    assert_int_equal(attn_desc_set_additive_weights(d, wq, wk_a, b, v), ATTN_ERR_SHAPE);
    assert_names(ctx, "w_k");
    assert_int_equal(attn_desc_set_additive_weights(d, wq, wk, b_a, v), ATTN_ERR_SHAPE);
    assert_names(ctx, "bias");
    /* plan: dims against q/k, dtypes, layouts */
    attn_tensor *wq_bad = mat(ctx, dt, A, 4), *wk_bad = mat(ctx, dt, A, 6);
    assert_int_equal(attn_desc_set_additive_weights(d, wq_bad, wk, b, v), ATTN_OK);
    expect_fails(ctx, d, &s, ATTN_ERR_SHAPE, "w_q");
    assert_int_equal(attn_desc_set_additive_weights(d, wq, wk_bad, b, v), ATTN_OK);
    expect_fails(ctx, d, &s, ATTN_ERR_SHAPE, "w_k");
    attn_tensor *wq_o = mat(ctx, other, A, 6), *v_o = vec(ctx, other, A), *b_o = vec(ctx, other, A);
    assert_int_equal(attn_desc_set_additive_weights(d, wq_o, wk, b, v), ATTN_OK);
    expect_fails(ctx, d, &s, ATTN_ERR_DTYPE, "w_q");
    assert_int_equal(attn_desc_set_additive_weights(d, wq, wk, b, v_o), ATTN_OK);
    expect_fails(ctx, d, &s, ATTN_ERR_DTYPE, "v");
    assert_int_equal(attn_desc_set_additive_weights(d, wq, wk, b_o, v), ATTN_OK);
    expect_fails(ctx, d, &s, ATTN_ERR_DTYPE, "bias");
    int64_t sh[2] = {A, 4}, zero_rows[2] = {0, 1};
    double buf[4] = {0};
    attn_tensor *wk_rows = NULL;
    assert_int_equal(attn_tensor_wrap(ctx, dt, 2, sh, zero_rows, buf, &wk_rows), ATTN_OK);
    assert_int_equal(attn_desc_set_additive_weights(d, wq, wk_rows, b, v), ATTN_OK);
    expect_fails(ctx, d, &s, ATTN_ERR_LAYOUT, "w_k");
    /* correct parameters, bias optional */
    assert_int_equal(attn_desc_set_additive_weights(d, wq, wk, NULL, v), ATTN_OK);
    assert_int_equal(attn_forward(ctx, d, s.q, s.k, s.v, s.out, NULL, s.lse), ATTN_OK);
    tu_tensor_free(wq); tu_tensor_free(wk); tu_tensor_free(v); tu_tensor_free(b);
    tu_tensor_free(v2); tu_tensor_free(wk_a); tu_tensor_free(b_a); tu_tensor_free(wq_bad);
    tu_tensor_free(wk_bad); tu_tensor_free(wq_o); tu_tensor_free(v_o); tu_tensor_free(b_o);
    attn_tensor_destroy(wk_rows);
    attn_desc_destroy(d);
    small_free(&s);
  }
  attn_context_destroy(ctx);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(additive_score_matches_reference),
      cmocka_unit_test(additive_score_with_masks_matches_reference),
      cmocka_unit_test(additive_score_across_tiles),
      cmocka_unit_test(general_score_matches_reference),
      cmocka_unit_test(general_with_identity_equals_dot),
      cmocka_unit_test(general_weight_bad_input),
      cmocka_unit_test(additive_weights_bad_input),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}

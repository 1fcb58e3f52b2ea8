/* The mask module through the exact kernel, against the naive f64 reference:
 * every mask kind (causal top-left / bottom-right, window, key and query
 * lengths, bool and additive dense masks, ALiBi, softcap), combinations,
 * broadcasting of the dense masks (dims of 1 and stride 0), −inf versus
 * −FLT_MAX, NaN/Inf planted in masked-out K/V/Q rows, tile edges, both dtypes,
 * weights and lse; and bad input: exact status, message naming the argument,
 * outputs and descriptor untouched. */
#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/exact.h"
#include "testutil.h"

/* ---- case description ------------------------------------------------------ */

enum { BC_B = 1, BC_H = 2, BC_Q = 4 }; /* dims a dense mask broadcasts over */

typedef struct dmask {
  bool on;
  int bc;             /* BC_* */
  bool stride0;       /* broadcast through stride 0 on full-size dims, else dims of 1 */
  double p_keep;      /* probability that an entry keeps its key */
  double neg;         /* additive: the value that removes a key (−inf or −FLT_MAX) */
  int dead_row_every; /* every n-th source row is fully masked; 0 = none */
} dmask;

typedef struct mcase {
  int64_t B, H, Hkv, Sq, Sk, D, Dv;
  attn_dtype dt;
  bool bshd;
  int causal;
  int64_t left, right; /* −1 = unbounded */
  const int64_t *key_len, *query_len;
  dmask bm, am;
  const double *alibi;
  double softcap;
  bool want_w, want_lse;
  bool poison; /* plant NaN/Inf in K/V rows no query keeps and Q rows beyond query_len */
} mcase;

/* Raw output bytes of a run, for bitwise comparisons. */
typedef struct raw_out {
  unsigned char *out, *w, *lse;
  size_t nout, nw, nlse;
} raw_out;

static void raw_free(raw_out *r) {
  free(r->out);
  free(r->w);
  free(r->lse);
  memset(r, 0, sizeof *r);
}

static size_t esize(attn_dtype dt) { return dt == ATTN_DTYPE_F64 ? 8 : dt == ATTN_DTYPE_F32 ? 4 : 1; }

/* ---- dense masks ------------------------------------------------------------- */

typedef struct gen_mask {
  double *src;     /* [sb][sh][sq][Sk] */
  int64_t sb, sh, sq;
  double *dense;   /* [B][H][Sq][Sk] expanded, for the reference */
  uint8_t *dense_u8;
  attn_tensor *t;
} gen_mask;

/* Random source entries; "masked" entries are 0 (bool) or dm->neg (additive). */
static void gen_mask_make(attn_context *ctx, const mcase *c, const dmask *dm, bool is_bool,
                          uint64_t *seed, gen_mask *g) {
  memset(g, 0, sizeof *g);
  g->sb = dm->bc & BC_B ? 1 : c->B;
  g->sh = dm->bc & BC_H ? 1 : c->H;
  g->sq = dm->bc & BC_Q ? 1 : c->Sq;
  size_t ns = (size_t)(g->sb * g->sh * g->sq * c->Sk);
  g->src = malloc(ns * sizeof(double));
  for (size_t x = 0; x < ns; x++) {
    size_t row = x / (size_t)c->Sk;
    bool keep = tu_uniform(seed, 0, 1) < dm->p_keep;
    if (dm->dead_row_every > 0 && row % (size_t)dm->dead_row_every == 1) keep = false;
    if (is_bool)
      g->src[x] = keep ? 1.0 : 0.0;
    else
      g->src[x] = keep ? tu_uniform(seed, -2.0, 2.0) : dm->neg;
  }
  size_t nd = (size_t)(c->B * c->H * c->Sq * c->Sk);
  g->dense = malloc(nd * sizeof(double));
  g->dense_u8 = malloc(nd);
  for (int64_t b = 0; b < c->B; b++)
    for (int64_t h = 0; h < c->H; h++)
      for (int64_t i = 0; i < c->Sq; i++)
        for (int64_t j = 0; j < c->Sk; j++) {
          int64_t sb = g->sb == 1 ? 0 : b, sh = g->sh == 1 ? 0 : h, sq = g->sq == 1 ? 0 : i;
          double x = g->src[((sb * g->sh + sh) * g->sq + sq) * c->Sk + j];
          size_t di = (size_t)(((b * c->H + h) * c->Sq + i) * c->Sk + j);
          g->dense[di] = x;
          g->dense_u8[di] = x != 0.0;
        }
  /* The library's tensor over the compact source. */
  attn_dtype dt = is_bool ? ATTN_DTYPE_U8 : c->dt;
  void *mem = malloc(ns * esize(dt));
  for (size_t x = 0; x < ns; x++) {
    if (dt == ATTN_DTYPE_U8) ((uint8_t *)mem)[x] = g->src[x] != 0.0;
    else if (dt == ATTN_DTYPE_F32) ((float *)mem)[x] = (float)g->src[x];
    else ((double *)mem)[x] = g->src[x];
  }
  int64_t shape[4], strides[4];
  if (dm->stride0) {
    shape[0] = c->B; shape[1] = c->H; shape[2] = c->Sq; shape[3] = c->Sk;
  } else {
    assert_false(dm->bc & BC_Q); /* a dim of 1 is only allowed for B and H */
    shape[0] = g->sb; shape[1] = g->sh; shape[2] = c->Sq; shape[3] = c->Sk;
  }
  /* Dims of 1 keep their C-contiguous (non-zero) strides: the library must
   * broadcast by the size, not rely on a stride of 0. */
  strides[3] = 1;
  strides[2] = dm->bc & BC_Q ? 0 : c->Sk;
  strides[1] = dm->bc & BC_H && dm->stride0 ? 0 : g->sq * c->Sk;
  strides[0] = dm->bc & BC_B && dm->stride0 ? 0 : g->sh * g->sq * c->Sk;
  assert_int_equal(attn_tensor_wrap(ctx, dt, 4, shape, strides, mem, &g->t), ATTN_OK);
}

static void gen_mask_free(gen_mask *g) {
  free(g->src);
  free(g->dense);
  free(g->dense_u8);
  tu_tensor_free(g->t);
}

/* ---- the runner -------------------------------------------------------------- */

static void poison_row(double *x, int64_t n, int64_t which) {
  static const double bad[3] = {NAN, INFINITY, -INFINITY};
  for (int64_t d = 0; d < n; d++) x[d] = bad[(which + d) % 3];
}

/* Runs one case, checks out/weights/lse against the reference, returns the
 * max error of out. With raw != NULL, keeps copies of the output bytes. */
static double run_mcase(attn_context *ctx, const mcase *c, uint64_t seed, raw_out *raw) {
  const int64_t B = c->B, H = c->H, Hkv = c->Hkv ? c->Hkv : c->H, Sq = c->Sq, Sk = c->Sk;
  const int64_t D = c->D, Dv = c->Dv ? c->Dv : c->D;
  ref_problem p;
  ref_problem_init(&p, B, H, Sq, Sk, D);
  p.Hkv = Hkv;
  p.Dv = Dv;
  p.causal = c->causal;
  p.left = c->left;
  p.right = c->right;
  p.key_len = c->key_len;
  p.query_len = c->query_len;
  p.alibi = c->alibi;
  p.softcap = c->softcap;

  size_t nq = (size_t)(B * H * Sq * D), nk = (size_t)(B * Hkv * Sk * D);
  size_t nv = (size_t)(B * Hkv * Sk * Dv), no = (size_t)(B * H * Sq * Dv);
  size_t nw = (size_t)(B * H * Sq * Sk), nl = (size_t)(B * H * Sq);
  double *q = tu_random(nq, &seed), *k = tu_random(nk, &seed), *v = tu_random(nv, &seed);
  for (size_t i = 0; i < nq; i++) q[i] *= 3.0; /* peaky softmax */

  attn_desc *d = NULL;
  assert_int_equal(attn_desc_create(ctx, &d), ATTN_OK);
  assert_int_equal(attn_desc_set_causal(d, (attn_causal)c->causal), ATTN_OK);
  if (c->left >= 0 || c->right >= 0)
    assert_int_equal(attn_desc_set_window(d, c->left >= 0 ? c->left : ATTN_WINDOW_UNBOUNDED,
                                          c->right >= 0 ? c->right : ATTN_WINDOW_UNBOUNDED),
                     ATTN_OK);
  if (c->key_len) assert_int_equal(attn_desc_set_key_lengths(d, c->key_len, B), ATTN_OK);
  if (c->query_len) assert_int_equal(attn_desc_set_query_lengths(d, c->query_len, B), ATTN_OK);
  if (c->alibi) assert_int_equal(attn_desc_set_alibi(d, c->alibi, H), ATTN_OK);
  if (c->softcap > 0) assert_int_equal(attn_desc_set_softcap(d, c->softcap), ATTN_OK);
  gen_mask gb = {0}, ga = {0};
  if (c->bm.on) {
    gen_mask_make(ctx, c, &c->bm, true, &seed, &gb);
    p.bool_mask = gb.dense_u8;
    assert_int_equal(attn_desc_set_bool_mask(d, gb.t), ATTN_OK);
  }
  if (c->am.on) {
    gen_mask_make(ctx, c, &c->am, false, &seed, &ga);
    p.add_mask = ga.dense;
    assert_int_equal(attn_desc_set_additive_mask(d, ga.t), ATTN_OK);
  }

  double *ro = malloc(no * 8), *rw = malloc(nw * 8), *rl = malloc(nl * 8), *rb = malloc(no * 8);
  ref_attention(&p, q, k, v, ro, rw, rl, rb);

  if (c->poison) {
    /* Keys no query row of any head sharing the K/V head keeps. */
    const int64_t group = H / Hkv;
    int64_t planted = 0;
    for (int64_t b = 0; b < B; b++)
      for (int64_t kh = 0; kh < Hkv; kh++)
        for (int64_t j = 0; j < Sk; j++) {
          bool dead = true;
          for (int64_t h = kh * group; h < (kh + 1) * group && dead; h++)
            for (int64_t i = 0; i < Sq && dead; i++) dead = !ref_kept(&p, b, h, i, j);
          if (!dead) continue;
          poison_row(k + ((b * Hkv + kh) * Sk + j) * D, D, j);
          poison_row(v + ((b * Hkv + kh) * Sk + j) * Dv, Dv, j + 1);
          planted++;
        }
    if (c->query_len)
      for (int64_t b = 0; b < B; b++)
        for (int64_t h = 0; h < H; h++)
          for (int64_t i = c->query_len[b]; i < Sq; i++) poison_row(q + ((b * H + h) * Sq + i) * D, D, i);
    assert_true(planted > 0); /* the case must actually have dead keys */
  }

  attn_tensor *tq = tu_tensor4(ctx, c->dt, q, B, H, Sq, D, c->bshd);
  attn_tensor *tk = tu_tensor4(ctx, c->dt, k, B, Hkv, Sk, D, c->bshd);
  attn_tensor *tv = tu_tensor4(ctx, c->dt, v, B, Hkv, Sk, Dv, c->bshd);
  attn_tensor *to = tu_tensor4(ctx, c->dt, NULL, B, H, Sq, Dv, c->bshd);
  attn_tensor *tw = c->want_w ? tu_tensor4(ctx, c->dt, NULL, B, H, Sq, Sk, false) : NULL;
  int64_t lshape[3] = {B, H, Sq};
  attn_tensor *tl = c->want_lse ? tu_tensor(ctx, c->dt, NULL, 3, lshape) : NULL;
  attn_plan *plan = NULL;
  if (attn_plan_create(ctx, d, tq, tk, tv, to, tw, tl, &plan) != ATTN_OK)
    fail_msg("plan: %s", attn_context_last_error(ctx));
  assert_int_equal(attn_plan_execute(plan, tq, tk, tv, to, tw, tl), ATTN_OK);

  bool f64 = c->dt == ATTN_DTYPE_F64;
  double *go = malloc(no * 8), *gw = malloc(nw * 8), *gl = malloc(nl * 8);
  tu_read(to, go);
  double rtol = f64 ? 1e-12 : 2e-5, atol = f64 ? 1e-13 : 1e-6, max_err;
  size_t bad = tu_violations(go, ro, rb, no, rtol, atol, &max_err);
  if (bad)
    fail_msg("out: %zu of %zu off (max err %g): B%lld H%lld/%lld Sq%lld Sk%lld D%lld %s causal%d "
             "win[%lld,%lld] klen%d qlen%d bool%d add%d alibi%d cap%g poison%d",
             bad, no, max_err, (long long)B, (long long)H, (long long)Hkv, (long long)Sq,
             (long long)Sk, (long long)D, f64 ? "f64" : "f32", c->causal, (long long)c->left,
             (long long)c->right, c->key_len != NULL, c->query_len != NULL, c->bm.on, c->am.on,
             c->alibi != NULL, c->softcap, c->poison);
  for (size_t i = 0; i < no; i++) assert_true(isfinite(go[i]));
  if (tw) {
    tu_read(tw, gw);
    double e;
    size_t wbad = tu_violations(gw, rw, NULL, nw, f64 ? 1e-11 : 1e-4, f64 ? 1e-13 : 1e-6, &e);
    if (wbad) fail_msg("weights: %zu of %zu off (max err %g)", wbad, nw, e);
    for (size_t r = 0; r < nl; r++) {
      double s = 0;
      for (int64_t j = 0; j < Sk; j++) {
        double x = gw[r * (size_t)Sk + (size_t)j];
        assert_true(x >= 0.0 && x <= 1.0);
        s += x;
      }
      double want = isinf(rl[r]) ? 0.0 : 1.0; /* a dead row has weights 0 */
      assert_true(fabs(s - want) <= (f64 ? 1e-12 : 1e-5) * (double)Sk);
    }
  }
  if (tl) {
    tu_read(tl, gl);
    for (size_t r = 0; r < nl; r++) {
      if (isinf(rl[r])) {
        if (!(isinf(gl[r]) && gl[r] < 0)) fail_msg("lse[%zu] = %g, want -inf", r, gl[r]);
      } else if (!(fabs(gl[r] - rl[r]) <= (f64 ? 1e-12 : 2e-5) * (1 + fabs(rl[r])))) {
        fail_msg("lse[%zu] = %.9g, want %.9g", r, gl[r], rl[r]);
      }
    }
  }
  if (raw) {
    raw->nout = no * esize(c->dt);
    raw->out = malloc(raw->nout);
    memcpy(raw->out, attn_tensor_data(to), raw->nout); /* same layout in every run */
    if (tw) {
      raw->nw = nw * esize(c->dt);
      raw->w = malloc(raw->nw);
      memcpy(raw->w, attn_tensor_data(tw), raw->nw);
    }
    if (tl) {
      raw->nlse = nl * esize(c->dt);
      raw->lse = malloc(raw->nlse);
      memcpy(raw->lse, attn_tensor_data(tl), raw->nlse);
    }
  }
  attn_plan_destroy(plan);
  tu_tensor_free(tq); tu_tensor_free(tk); tu_tensor_free(tv); tu_tensor_free(to);
  tu_tensor_free(tw); tu_tensor_free(tl);
  gen_mask_free(&gb);
  gen_mask_free(&ga);
  attn_desc_destroy(d);
  free(q); free(k); free(v); free(ro); free(rw); free(rl); free(rb);
  free(go); free(gw); free(gl);
  return max_err;
}

/* A base case: B 2, H 4 over 2 K/V heads, sizes off the tile grid. */
static mcase base_case(attn_dtype dt, int64_t Sq, int64_t Sk, int64_t D) {
  mcase c;
  memset(&c, 0, sizeof c);
  c.B = 2; c.H = 4; c.Hkv = 2; c.Sq = Sq; c.Sk = Sk; c.D = D;
  c.dt = dt;
  c.left = c.right = -1;
  c.want_w = c.want_lse = true;
  return c;
}

static const double slopes4[4] = {0.5, 0.25, 0.125, 0.0625};
static const attn_dtype dtypes[2] = {ATTN_DTYPE_F32, ATTN_DTYPE_F64};

/* ---- every kind on its own ------------------------------------------------- */

static void causal_alignments_match_reference(void **state) {
  (void)state;
  attn_context *ctx = tu_context(2);
  static const int64_t sizes[][2] = {{37, 37}, {37, 70}, {70, 37}, {130, 600}, {1, 45}};
  for (int t = 0; t < 2; t++)
    for (int s = 0; s < 5; s++)
      for (int causal = 1; causal <= 2; causal++) {
        mcase c = base_case(dtypes[t], sizes[s][0], sizes[s][1], 16);
        c.causal = causal;
        c.bshd = s % 2 == 1;
        run_mcase(ctx, &c, 100 + (uint64_t)s, NULL);
      }
  attn_context_destroy(ctx);
}

static void window_left_right_match_reference(void **state) {
  (void)state;
  attn_context *ctx = tu_context(2);
  static const int64_t win[][2] = {{0, 0}, {3, -1}, {-1, 5}, {7, 2}, {20, 0}, {0, 9}, {1000, 1000}};
  for (int t = 0; t < 2; t++)
    for (int w = 0; w < 7; w++)
      for (int causal = 0; causal <= 2; causal++) {
        mcase c = base_case(dtypes[t], 50, 83, 8);
        c.left = win[w][0];
        c.right = win[w][1];
        c.causal = causal;
        run_mcase(ctx, &c, 200 + (uint64_t)w, NULL);
      }
  /* A window across several key tiles (bk = 512 for d ≤ 64). */
  mcase c = base_case(ATTN_DTYPE_F32, 140, 1100, 16);
  c.B = 1;
  c.left = 300;
  c.right = 200;
  c.causal = 2;
  run_mcase(ctx, &c, 7, NULL);
  attn_context_destroy(ctx);
}

static void key_and_query_lengths_match_reference(void **state) {
  (void)state;
  attn_context *ctx = tu_context(2);
  static const int64_t klen[2] = {0, 61}, klen2[2] = {70, 1}, qlen[2] = {33, 0}, qlen2[2] = {1, 40};
  for (int t = 0; t < 2; t++) {
    mcase c = base_case(dtypes[t], 40, 70, 12);
    c.key_len = klen;
    run_mcase(ctx, &c, 1, NULL);
    c.key_len = klen2;
    run_mcase(ctx, &c, 2, NULL);
    c.key_len = NULL;
    c.query_len = qlen;
    run_mcase(ctx, &c, 3, NULL);
    c.query_len = qlen2;
    run_mcase(ctx, &c, 4, NULL);
    c.key_len = klen;
    run_mcase(ctx, &c, 5, NULL);
  }
  attn_context_destroy(ctx);
}

static void bool_mask_true_means_attend(void **state) {
  (void)state;
  attn_context *ctx = tu_context(2);
  for (int t = 0; t < 2; t++) {
    mcase c = base_case(dtypes[t], 45, 77, 16);
    c.bm = (dmask){.on = true, .p_keep = 0.6, .dead_row_every = 7};
    run_mcase(ctx, &c, 10, NULL);
    c.bm.p_keep = 0.03; /* sparse: most rows keep 0..3 keys */
    run_mcase(ctx, &c, 11, NULL);
    c.bm.p_keep = 1.0; /* all true = no mask */
    c.bm.dead_row_every = 0;
    run_mcase(ctx, &c, 12, NULL);
  }
  /* Polarity, directly: one key allowed per row → out_i = v_{j(i)} exactly. */
  int64_t Sq = 6, Sk = 5, D = 3;
  uint64_t seed = 3;
  double *q = tu_random((size_t)(Sq * D), &seed), *kk = tu_random((size_t)(Sk * D), &seed);
  double *vv = tu_random((size_t)(Sk * D), &seed);
  double m[6 * 5] = {0};
  for (int64_t i = 0; i < Sq; i++) m[i * Sk + (i * 3) % Sk] = 1.0;
  int64_t ms[4] = {1, 1, Sq, Sk};
  attn_tensor *tm = tu_tensor(ctx, ATTN_DTYPE_U8, m, 4, ms);
  attn_tensor *tq = tu_tensor4(ctx, ATTN_DTYPE_F64, q, 1, 1, Sq, D, false);
  attn_tensor *tk = tu_tensor4(ctx, ATTN_DTYPE_F64, kk, 1, 1, Sk, D, false);
  attn_tensor *tv = tu_tensor4(ctx, ATTN_DTYPE_F64, vv, 1, 1, Sk, D, false);
  attn_tensor *to = tu_tensor4(ctx, ATTN_DTYPE_F64, NULL, 1, 1, Sq, D, false);
  attn_desc *d;
  assert_int_equal(attn_desc_create(ctx, &d), ATTN_OK);
  assert_int_equal(attn_desc_set_bool_mask(d, tm), ATTN_OK);
  assert_int_equal(attn_forward(ctx, d, tq, tk, tv, to, NULL, NULL), ATTN_OK);
  const double *o = attn_tensor_data(to);
  for (int64_t i = 0; i < Sq; i++)
    for (int64_t x = 0; x < D; x++) assert_true(o[i * D + x] == vv[((i * 3) % Sk) * D + x]);
  tu_tensor_free(tm); tu_tensor_free(tq); tu_tensor_free(tk); tu_tensor_free(tv); tu_tensor_free(to);
  attn_desc_destroy(d);
  free(q); free(kk); free(vv);
  attn_context_destroy(ctx);
}

static void additive_mask_matches_reference(void **state) {
  (void)state;
  attn_context *ctx = tu_context(2);
  for (int t = 0; t < 2; t++) {
    mcase c = base_case(dtypes[t], 45, 77, 16);
    c.am = (dmask){.on = true, .p_keep = 1.0, .neg = -INFINITY}; /* finite biases only */
    run_mcase(ctx, &c, 20, NULL);
    c.am = (dmask){.on = true, .p_keep = 0.7, .neg = -INFINITY, .dead_row_every = 5};
    run_mcase(ctx, &c, 21, NULL);
    c.am.neg = -FLT_MAX;
    run_mcase(ctx, &c, 22, NULL);
  }
  attn_context_destroy(ctx);
}

static void alibi_and_softcap_match_reference(void **state) {
  (void)state;
  attn_context *ctx = tu_context(2);
  static const double odd[4] = {0.0, 1.5, -0.25, 0.01}; /* zero and negative slopes are legal */
  for (int t = 0; t < 2; t++) {
    mcase c = base_case(dtypes[t], 45, 300, 16);
    c.alibi = slopes4;
    run_mcase(ctx, &c, 30, NULL);
    c.alibi = odd;
    run_mcase(ctx, &c, 31, NULL);
    c.alibi = NULL;
    c.softcap = 2.0; /* below the score range: the cap really bites */
    run_mcase(ctx, &c, 32, NULL);
    c.softcap = 50.0;
    run_mcase(ctx, &c, 33, NULL);
    c.softcap = 0.0;
    c.alibi = slopes4;
    c.causal = 2; /* ALiBi distance from the bottom-right aligned row */
    c.Sq = 20;
    run_mcase(ctx, &c, 34, NULL);
  }
  attn_context_destroy(ctx);
}

/* ---- combinations ------------------------------------------------------------ */

static void combinations_match_reference(void **state) {
  (void)state;
  attn_context *ctx = tu_context(2);
  static const int64_t klen[2] = {55, 13}, qlen[2] = {29, 40};
  for (int t = 0; t < 2; t++) {
    /* causal + padding + ALiBi */
    mcase c = base_case(dtypes[t], 40, 70, 16);
    c.causal = 1;
    c.key_len = klen;
    c.alibi = slopes4;
    run_mcase(ctx, &c, 40, NULL);
    /* window + softcap */
    c = base_case(dtypes[t], 60, 90, 16);
    c.left = 6;
    c.right = 3;
    c.softcap = 3.0;
    run_mcase(ctx, &c, 41, NULL);
    /* bool + additive */
    c = base_case(dtypes[t], 33, 47, 8);
    c.bm = (dmask){.on = true, .p_keep = 0.7, .dead_row_every = 6};
    c.am = (dmask){.on = true, .p_keep = 0.8, .neg = -INFINITY, .dead_row_every = 9};
    run_mcase(ctx, &c, 42, NULL);
    /* bottom-right + key lengths (+ query lengths): per-batch alignment
     * i' = i + klen_b − qlen_b, as mask.h documents */
    c = base_case(dtypes[t], 40, 70, 16);
    c.causal = 2;
    c.key_len = klen;
    run_mcase(ctx, &c, 43, NULL);
    c.query_len = qlen;
    run_mcase(ctx, &c, 44, NULL);
    c.left = 4; /* bottom-right window with lengths */
    c.alibi = slopes4;
    run_mcase(ctx, &c, 45, NULL);
    /* everything at once */
    c = base_case(dtypes[t], 40, 70, 16);
    c.causal = 2;
    c.left = 20;
    c.key_len = klen;
    c.query_len = qlen;
    c.bm = (dmask){.on = true, .bc = BC_H, .p_keep = 0.8};
    c.am = (dmask){.on = true, .bc = BC_B, .p_keep = 0.9, .neg = -FLT_MAX};
    c.alibi = slopes4;
    c.softcap = 4.0;
    run_mcase(ctx, &c, 46, NULL);
  }
  attn_context_destroy(ctx);
}

/* ---- broadcasting -------------------------------------------------------------- */

static void dense_masks_broadcast_over_batch_and_heads(void **state) {
  (void)state;
  attn_context *ctx = tu_context(2);
  /* dims of 1 (B, H, both) and stride 0 (B, H, both, and S_q: one
   * key-padding row shared by all queries, torch's [B,1,1,S_k] style). */
  static const struct { int bc; bool s0; } modes[] = {
      {0, false}, {BC_B, false}, {BC_H, false}, {BC_B | BC_H, false},
      {BC_B, true}, {BC_H, true}, {BC_B | BC_H, true}, {BC_Q, true}, {BC_H | BC_Q, true}};
  int n = 0;
  for (int t = 0; t < 2; t++)
    for (size_t m = 0; m < sizeof modes / sizeof modes[0]; m++) {
      mcase c = base_case(dtypes[t], 21, 35, 8);
      c.B = 3;
      c.bm = (dmask){.on = true, .bc = modes[m].bc, .stride0 = modes[m].s0, .p_keep = 0.6,
                     .dead_row_every = modes[m].bc & BC_Q ? 0 : 4};
      run_mcase(ctx, &c, 50 + m, NULL);
      c.bm.on = false;
      c.am = (dmask){.on = true, .bc = modes[m].bc, .stride0 = modes[m].s0, .p_keep = 0.7,
                     .neg = -INFINITY, .dead_row_every = modes[m].bc & BC_Q ? 0 : 4};
      run_mcase(ctx, &c, 60 + m, NULL);
      /* both, broadcast differently */
      c.bm = (dmask){.on = true, .bc = modes[(m + 3) % 9].bc, .stride0 = modes[(m + 3) % 9].s0,
                     .p_keep = 0.8};
      run_mcase(ctx, &c, 70 + m, NULL);
      n += 3;
    }
  print_message("%d broadcast cases checked\n", n);
  attn_context_destroy(ctx);
}

/* ---- −inf and −FLT_MAX ----------------------------------------------------------- */

static void minus_inf_and_minus_flt_max_are_bitwise_identical(void **state) {
  (void)state;
  attn_context *ctx = tu_context(2);
  for (int t = 0; t < 2; t++)
    for (int variant = 0; variant < 3; variant++) {
      mcase c = base_case(dtypes[t], 50, 600, 16);
      c.am = (dmask){.on = true, .p_keep = 0.5, .dead_row_every = 3}; /* rows fully masked */
      if (variant == 1) { c.am.bc = BC_H; c.causal = 1; c.alibi = slopes4; }
      if (variant == 2) { c.am.p_keep = 0.0; c.softcap = 2.0; } /* every key of every row */
      raw_out a = {0}, b = {0};
      c.am.neg = -INFINITY;
      run_mcase(ctx, &c, 80 + (uint64_t)variant, &a);
      c.am.neg = -FLT_MAX;
      run_mcase(ctx, &c, 80 + (uint64_t)variant, &b);
      assert_int_equal(a.nout, b.nout);
      assert_memory_equal(a.out, b.out, a.nout);
      assert_memory_equal(a.w, b.w, a.nw);
      assert_memory_equal(a.lse, b.lse, a.nlse);
      if (variant == 2) { /* all masked: exactly 0 / −inf / 0 */
        const size_t n = a.nout / esize(c.dt);
        for (size_t i = 0; i < n; i++)
          assert_true(c.dt == ATTN_DTYPE_F32 ? ((float *)a.out)[i] == 0.0f : ((double *)a.out)[i] == 0.0);
        for (size_t i = 0; i < a.nlse / esize(c.dt); i++) {
          double l = c.dt == ATTN_DTYPE_F32 ? ((float *)a.lse)[i] : ((double *)a.lse)[i];
          assert_true(isinf(l) && l < 0);
        }
      }
      raw_free(&a);
      raw_free(&b);
    }
  attn_context_destroy(ctx);
}

/* ---- non-finite values in masked-out rows -------------------------------------- */

static void nonfinite_in_masked_rows_never_reaches_output(void **state) {
  (void)state;
  attn_context *ctx = tu_context(2);
  static const int64_t klen[2] = {37, 300}, klen_small[2] = {5, 1}, qlen[2] = {20, 3};
  for (int t = 0; t < 2; t++) {
    /* padding beyond key length (the tile past it is never visited, the one
     * straddling it is partial) */
    mcase c = base_case(dtypes[t], 40, 530, 16);
    c.key_len = klen;
    c.poison = true;
    run_mcase(ctx, &c, 90, NULL);
    c.key_len = klen_small;
    c.query_len = qlen; /* and NaN in Q rows beyond the query length */
    run_mcase(ctx, &c, 91, NULL);
    /* bool-masked-out key columns (every row false for them) */
    c = base_case(dtypes[t], 40, 100, 16);
    c.bm = (dmask){.on = true, .bc = BC_Q, .stride0 = true, .p_keep = 0.6};
    c.poison = true;
    run_mcase(ctx, &c, 92, NULL);
    /* the same through an additive −inf mask */
    c.bm.on = false;
    c.am = (dmask){.on = true, .bc = BC_Q | BC_H, .stride0 = true, .p_keep = 0.6, .neg = -INFINITY};
    run_mcase(ctx, &c, 93, NULL);
    /* causal future keys: top-left with S_k > S_q, keys ≥ S_q are in every
     * row's future; in the same tile as kept keys and in tiles past them */
    c = base_case(dtypes[t], 70, 700, 16);
    c.causal = 1;
    c.poison = true;
    run_mcase(ctx, &c, 94, NULL);
    /* a window leaves keys on both sides dead */
    c = base_case(dtypes[t], 30, 120, 8);
    c.left = 2;
    c.right = 10;
    c.poison = true;
    run_mcase(ctx, &c, 95, NULL);
    /* with softcap and ALiBi transforms applied to the poisoned scores */
    c.softcap = 5.0;
    c.alibi = slopes4;
    c.key_len = klen_small;
    run_mcase(ctx, &c, 96, NULL);
  }
  attn_context_destroy(ctx);
}

/* ---- tile edges ------------------------------------------------------------------ */

static void tile_edges_with_masks_match_reference(void **state) {
  (void)state;
  attn_context *ctx = tu_context(2);
  /* Around the tiles of attn_exact_tiles() (bq 128 or 256 / 64, bk 512 / 256):
   * one below, at and past; the key length puts a partial tile mid-range. */
  static const int64_t S[][2] = {{127, 511}, {129, 513}, {128, 512}, {65, 257},
                                 {200, 1030}, {255, 300}, {257, 520}};
  static const int64_t Ds[] = {16, 16, 16, 96, 16, 16, 128};
  for (int s = 0; s < 7; s++) {
    int64_t bq, bk;
    attn_exact_tiles(S[s][0], S[s][1], Ds[s], Ds[s], &bq, &bk);
    int64_t klen[1] = {S[s][1] - bk / 2 + 1};
    mcase c = base_case(s % 2 ? ATTN_DTYPE_F64 : ATTN_DTYPE_F32, S[s][0], S[s][1], Ds[s]);
    c.B = 1; c.H = 2; c.Hkv = 1;
    c.causal = 1 + s % 2;
    c.key_len = klen;
    c.alibi = slopes4;
    c.want_w = s < 2;
    run_mcase(ctx, &c, 300 + (uint64_t)s, NULL);
    c.key_len = NULL;
    c.alibi = NULL;
    c.causal = 0;
    c.bm = (dmask){.on = true, .bc = BC_B, .p_keep = 0.9, .dead_row_every = 50};
    run_mcase(ctx, &c, 310 + (uint64_t)s, NULL);
  }
  attn_context_destroy(ctx);
}

/* ---- random combinations, determinism -------------------------------------------- */

static void random_combinations_match_reference(void **state) {
  (void)state;
  attn_context *ctx = tu_context(2);
  uint64_t seed = 0xA5A5F00DULL;
  static const int64_t S[] = {1, 5, 31, 64, 129, 300};
  int n = 0;
  for (int it = 0; it < 80; it++) {
    mcase c;
    memset(&c, 0, sizeof c);
    c.B = 1 + (int64_t)tu_uniform(&seed, 0, 2.99);
    c.Hkv = 1 + (int64_t)tu_uniform(&seed, 0, 1.99);
    c.H = c.Hkv * (1 + (int64_t)tu_uniform(&seed, 0, 1.99));
    c.Sq = S[(int)tu_uniform(&seed, 0, 5.99)];
    c.Sk = S[(int)tu_uniform(&seed, 0, 5.99)];
    c.D = 1 + (int64_t)tu_uniform(&seed, 0, 24);
    c.Dv = tu_uniform(&seed, 0, 1) < 0.3 ? 1 + (int64_t)tu_uniform(&seed, 0, 24) : 0;
    c.dt = tu_uniform(&seed, 0, 1) < 0.5 ? ATTN_DTYPE_F32 : ATTN_DTYPE_F64;
    c.bshd = tu_uniform(&seed, 0, 1) < 0.3;
    c.causal = (int)tu_uniform(&seed, 0, 2.99);
    c.left = tu_uniform(&seed, 0, 1) < 0.3 ? (int64_t)tu_uniform(&seed, 0, 40) : -1;
    c.right = tu_uniform(&seed, 0, 1) < 0.3 ? (int64_t)tu_uniform(&seed, 0, 40) : -1;
    int64_t klen[3], qlen[3];
    for (int b = 0; b < 3; b++) {
      klen[b] = (int64_t)tu_uniform(&seed, 0, (double)c.Sk + 0.99);
      qlen[b] = (int64_t)tu_uniform(&seed, 0, (double)c.Sq + 0.99);
    }
    if (tu_uniform(&seed, 0, 1) < 0.3) c.key_len = klen;
    if (tu_uniform(&seed, 0, 1) < 0.2) c.query_len = qlen;
    int bc = (int)tu_uniform(&seed, 0, 7.99);
    if (tu_uniform(&seed, 0, 1) < 0.3)
      c.bm = (dmask){.on = true, .bc = bc, .stride0 = true, .p_keep = tu_uniform(&seed, 0.1, 1)};
    bc = (int)tu_uniform(&seed, 0, 3.99);
    if (tu_uniform(&seed, 0, 1) < 0.3)
      c.am = (dmask){.on = true, .bc = bc, .stride0 = tu_uniform(&seed, 0, 1) < 0.5,
                     .p_keep = tu_uniform(&seed, 0.3, 1),
                     .neg = tu_uniform(&seed, 0, 1) < 0.5 ? -INFINITY : -FLT_MAX};
    double slopes[4];
    for (int h = 0; h < 4; h++) slopes[h] = tu_uniform(&seed, 0, 0.5);
    if (tu_uniform(&seed, 0, 1) < 0.3) c.alibi = slopes;
    if (tu_uniform(&seed, 0, 1) < 0.3) c.softcap = tu_uniform(&seed, 1, 20);
    c.want_w = tu_uniform(&seed, 0, 1) < 0.5;
    c.want_lse = tu_uniform(&seed, 0, 1) < 0.7;
    run_mcase(ctx, &c, seed + (uint64_t)it, NULL);
    n++;
  }
  print_message("%d random mask combinations checked\n", n);
  attn_context_destroy(ctx);
}

static void masked_results_bitwise_identical_across_thread_counts(void **state) {
  (void)state;
  static const int64_t klen[2] = {500, 230};
  raw_out first = {0};
  for (int32_t th = 1; th <= 3; th++) {
    attn_context *ctx = tu_context(th);
    mcase c = base_case(ATTN_DTYPE_F32, 300, 600, 16);
    c.causal = 2;
    c.key_len = klen;
    c.alibi = slopes4;
    c.bm = (dmask){.on = true, .bc = BC_B, .p_keep = 0.9};
    raw_out r = {0};
    run_mcase(ctx, &c, 5, &r);
    if (th == 1) {
      first = r;
    } else {
      assert_memory_equal(first.out, r.out, r.nout);
      assert_memory_equal(first.w, r.w, r.nw);
      assert_memory_equal(first.lse, r.lse, r.nlse);
      raw_free(&r);
    }
    attn_context_destroy(ctx);
  }
  raw_free(&first);
}

/* ---- bad input --------------------------------------------------------------------- */

#define CANARY 12345.0

typedef struct small {
  attn_tensor *q, *k, *v, *out, *w, *lse;
  double *qd, *kd, *vd;
} small;

/* B 2, H 4, H_kv 2, S_q 9, S_k 13, D 8, f32 or f64; outputs hold CANARY. */
static void small_make(attn_context *ctx, attn_dtype dt, small *s) {
  uint64_t seed = 77;
  s->qd = tu_random(2 * 4 * 9 * 8, &seed);
  s->kd = tu_random(2 * 2 * 13 * 8, &seed);
  s->vd = tu_random(2 * 2 * 13 * 8, &seed);
  double *can = malloc(2 * 4 * 9 * 13 * sizeof(double));
  for (int i = 0; i < 2 * 4 * 9 * 13; i++) can[i] = CANARY;
  s->q = tu_tensor4(ctx, dt, s->qd, 2, 4, 9, 8, false);
  s->k = tu_tensor4(ctx, dt, s->kd, 2, 2, 13, 8, false);
  s->v = tu_tensor4(ctx, dt, s->vd, 2, 2, 13, 8, false);
  s->out = tu_tensor4(ctx, dt, can, 2, 4, 9, 8, false);
  s->w = tu_tensor4(ctx, dt, can, 2, 4, 9, 13, false);
  int64_t ls[3] = {2, 4, 9};
  s->lse = tu_tensor(ctx, dt, can, 3, ls);
  free(can);
}

static void small_free(small *s) {
  tu_tensor_free(s->q); tu_tensor_free(s->k); tu_tensor_free(s->v);
  tu_tensor_free(s->out); tu_tensor_free(s->w); tu_tensor_free(s->lse);
  free(s->qd); free(s->kd); free(s->vd);
}

static void assert_canaries(const small *s) {
  const attn_tensor *ts[3] = {s->out, s->w, s->lse};
  for (int t = 0; t < 3; t++) {
    size_t n = (size_t)attn_tensor_numel(ts[t]);
    double *x = malloc(n * sizeof(double));
    tu_read(ts[t], x);
    for (size_t i = 0; i < n; i++)
      if (x[i] != CANARY) fail_msg("output %d element %zu was written (%g)", t, i, x[i]);
    free(x);
  }
}

static void assert_error_names(attn_context *ctx, const char *name) {
  const char *msg = attn_context_last_error(ctx);
  if (strstr(msg, name) == NULL) fail_msg("message \"%s\" does not name \"%s\"", msg, name);
}

/* Plan creation and the one-shot call fail with `want`, name `name`, leave
 * the plan pointer and every output untouched. */
static void expect_plan_fails(attn_context *ctx, const attn_desc *d, small *s, attn_status want,
                              const char *name) {
  attn_plan *sentinel = (attn_plan *)(uintptr_t)0x5EED;
  attn_plan *plan = sentinel;
  attn_status st = attn_plan_create(ctx, d, s->q, s->k, s->v, s->out, s->w, s->lse, &plan);
  if (st != want)
    fail_msg("plan: status %d (%s), want %d; message: %s", st, attn_status_string(st), want,
             attn_context_last_error(ctx));
  assert_ptr_equal(plan, sentinel);
  assert_error_names(ctx, name);
  assert_int_equal(attn_forward(ctx, d, s->q, s->k, s->v, s->out, s->w, s->lse), want);
  assert_error_names(ctx, name);
  assert_canaries(s);
}

/* Run the descriptor on fresh outputs and return a copy of out's bytes. */
static unsigned char *forward_bytes(attn_context *ctx, const attn_desc *d, attn_dtype dt, size_t *n) {
  small s;
  small_make(ctx, dt, &s);
  assert_int_equal(attn_forward(ctx, d, s.q, s.k, s.v, s.out, s.w, s.lse), ATTN_OK);
  *n = (size_t)attn_tensor_numel(s.out) * esize(dt);
  unsigned char *r = malloc(*n);
  memcpy(r, attn_tensor_data(s.out), *n);
  small_free(&s);
  return r;
}

/* A failing setter returns `want`, names `name`, and leaves the descriptor as
 * it was: the same forward result bit for bit. */
#define EXPECT_SETTER_FAILS(ctx, d, dt, call, want, name)                       \
  do {                                                                          \
    size_t n0_, n1_;                                                            \
    unsigned char *before_ = forward_bytes((ctx), (d), (dt), &n0_);             \
    assert_int_equal((call), (want));                                           \
    assert_error_names((ctx), (name));                                          \
    unsigned char *after_ = forward_bytes((ctx), (d), (dt), &n1_);              \
    assert_memory_equal(before_, after_, n0_);                                  \
    free(before_);                                                              \
    free(after_);                                                               \
  } while (0)

static attn_tensor *mask_tensor(attn_context *ctx, attn_dtype dt, int64_t a, int64_t b, int64_t c,
                                int64_t d) {
  int64_t sh[4] = {a, b, c, d};
  return tu_tensor(ctx, dt, NULL, 4, sh);
}

static void mask_shape_not_broadcastable_is_rejected(void **state) {
  (void)state;
  attn_context *ctx = tu_context(2);
  for (int t = 0; t < 2; t++) {
    small s;
    small_make(ctx, dtypes[t], &s);
    /* q: [2,4,9,8], k: [2,2,13,8] → masks must broadcast to [2,4,9,13]. */
    static const int64_t bad[][4] = {{3, 4, 9, 13}, {2, 2, 9, 13}, {2, 4, 1, 13},
                                     {2, 4, 9, 1},  {2, 4, 13, 9}, {1, 1, 9, 14}};
    for (int i = 0; i < 6; i++) {
      attn_desc *d;
      assert_int_equal(attn_desc_create(ctx, &d), ATTN_OK);
      attn_tensor *bm = mask_tensor(ctx, ATTN_DTYPE_U8, bad[i][0], bad[i][1], bad[i][2], bad[i][3]);
      assert_int_equal(attn_desc_set_bool_mask(d, bm), ATTN_OK);
      expect_plan_fails(ctx, d, &s, ATTN_ERR_SHAPE, "bool_mask");
      assert_int_equal(attn_desc_set_bool_mask(d, NULL), ATTN_OK);
      attn_tensor *am = mask_tensor(ctx, dtypes[t], bad[i][0], bad[i][1], bad[i][2], bad[i][3]);
      assert_int_equal(attn_desc_set_additive_mask(d, am), ATTN_OK);
      expect_plan_fails(ctx, d, &s, ATTN_ERR_SHAPE, "additive_mask");
      tu_tensor_free(bm);
      tu_tensor_free(am);
      attn_desc_destroy(d);
    }
    /* rank ≠ 4 is refused by the setter */
    attn_desc *d;
    assert_int_equal(attn_desc_create(ctx, &d), ATTN_OK);
    int64_t sh3[3] = {4, 9, 13};
    attn_tensor *r3 = tu_tensor(ctx, ATTN_DTYPE_U8, NULL, 3, sh3);
    EXPECT_SETTER_FAILS(ctx, d, dtypes[t], attn_desc_set_bool_mask(d, r3), ATTN_ERR_SHAPE, "bool_mask");
    tu_tensor_free(r3);
    attn_desc_destroy(d);
    small_free(&s);
  }
  attn_context_destroy(ctx);
}

static void mask_dtypes_are_checked(void **state) {
  (void)state;
  attn_context *ctx = tu_context(2);
  for (int t = 0; t < 2; t++) {
    small s;
    small_make(ctx, dtypes[t], &s);
    attn_desc *d;
    assert_int_equal(attn_desc_create(ctx, &d), ATTN_OK);
    /* bool mask not u8 */
    attn_tensor *fm = mask_tensor(ctx, dtypes[t], 2, 4, 9, 13);
    EXPECT_SETTER_FAILS(ctx, d, dtypes[t], attn_desc_set_bool_mask(d, fm), ATTN_ERR_DTYPE,
                        "bool_mask");
    /* additive mask u8 */
    attn_tensor *um = mask_tensor(ctx, ATTN_DTYPE_U8, 2, 4, 9, 13);
    EXPECT_SETTER_FAILS(ctx, d, dtypes[t], attn_desc_set_additive_mask(d, um), ATTN_ERR_DTYPE,
                        "additive_mask");
    /* additive mask in the other float dtype than q's: found at plan time */
    attn_tensor *om = mask_tensor(ctx, dtypes[1 - t], 2, 4, 9, 13);
    assert_int_equal(attn_desc_set_additive_mask(d, om), ATTN_OK);
    expect_plan_fails(ctx, d, &s, ATTN_ERR_DTYPE, "additive_mask");
    tu_tensor_free(fm);
    tu_tensor_free(um);
    tu_tensor_free(om);
    attn_desc_destroy(d);
    small_free(&s);
  }
  attn_context_destroy(ctx);
}

static void bad_lengths_are_rejected(void **state) {
  (void)state;
  attn_context *ctx = tu_context(2);
  for (int t = 0; t < 2; t++) {
    small s;
    small_make(ctx, dtypes[t], &s);
    attn_desc *d;
    assert_int_equal(attn_desc_create(ctx, &d), ATTN_OK);
    /* Lengths beyond the sequence: only known at plan time. */
    static const int64_t klong[2] = {13, 14}, qlong[2] = {10, 9}, ok[2] = {13, 5};
    assert_int_equal(attn_desc_set_key_lengths(d, klong, 2), ATTN_OK);
    expect_plan_fails(ctx, d, &s, ATTN_ERR_INVALID_ARG, "key_lengths");
    assert_int_equal(attn_desc_set_key_lengths(d, ok, 2), ATTN_OK);
    assert_int_equal(attn_desc_set_query_lengths(d, qlong, 2), ATTN_OK);
    expect_plan_fails(ctx, d, &s, ATTN_ERR_INVALID_ARG, "query_lengths");
    assert_int_equal(attn_desc_set_query_lengths(d, NULL, 0), ATTN_OK);
    /* Count ≠ batch. */
    static const int64_t three[3] = {1, 2, 3};
    assert_int_equal(attn_desc_set_key_lengths(d, three, 3), ATTN_OK);
    expect_plan_fails(ctx, d, &s, ATTN_ERR_SHAPE, "key_lengths");
    assert_int_equal(attn_desc_set_key_lengths(d, three, 1), ATTN_OK);
    expect_plan_fails(ctx, d, &s, ATTN_ERR_SHAPE, "key_lengths");
    assert_int_equal(attn_desc_set_query_lengths(d, three, 3), ATTN_OK);
    assert_int_equal(attn_desc_set_key_lengths(d, ok, 2), ATTN_OK);
    expect_plan_fails(ctx, d, &s, ATTN_ERR_SHAPE, "query_lengths");
    assert_int_equal(attn_desc_set_query_lengths(d, NULL, 0), ATTN_OK);
    /* Negative lengths and inconsistent (pointer, count): the setter refuses
     * and the descriptor keeps the valid lengths set above. */
    static const int64_t neg[2] = {3, -1};
    EXPECT_SETTER_FAILS(ctx, d, dtypes[t], attn_desc_set_key_lengths(d, neg, 2),
                        ATTN_ERR_INVALID_ARG, "key_lengths");
    EXPECT_SETTER_FAILS(ctx, d, dtypes[t], attn_desc_set_query_lengths(d, neg, 2),
                        ATTN_ERR_INVALID_ARG, "query_lengths");
    EXPECT_SETTER_FAILS(ctx, d, dtypes[t], attn_desc_set_key_lengths(d, ok, -2),
                        ATTN_ERR_INVALID_ARG, "key_lengths");
    EXPECT_SETTER_FAILS(ctx, d, dtypes[t], attn_desc_set_key_lengths(d, NULL, 2),
                        ATTN_ERR_NULL_ARG, "key_lengths");
    attn_desc_destroy(d);
    small_free(&s);
  }
  attn_context_destroy(ctx);
}

static void bad_window_alibi_softcap_are_rejected(void **state) {
  (void)state;
  attn_context *ctx = tu_context(2);
  for (int t = 0; t < 2; t++) {
    small s;
    small_make(ctx, dtypes[t], &s);
    attn_desc *d;
    assert_int_equal(attn_desc_create(ctx, &d), ATTN_OK);
    /* Valid settings first; failing setters must not disturb them. */
    assert_int_equal(attn_desc_set_window(d, 3, 2), ATTN_OK);
    static const double good[4] = {0.5, 0.25, 0.1, 0.0};
    assert_int_equal(attn_desc_set_alibi(d, good, 4), ATTN_OK);
    assert_int_equal(attn_desc_set_softcap(d, 5.0), ATTN_OK);

    EXPECT_SETTER_FAILS(ctx, d, dtypes[t], attn_desc_set_window(d, -1, 2), ATTN_ERR_INVALID_ARG, "left");
    EXPECT_SETTER_FAILS(ctx, d, dtypes[t], attn_desc_set_window(d, 2, -5), ATTN_ERR_INVALID_ARG, "right");
    EXPECT_SETTER_FAILS(ctx, d, dtypes[t], attn_desc_set_window(d, INT64_MIN, 0), ATTN_ERR_INVALID_ARG, "left");
    static const double nan_slope[4] = {0.5, NAN, 0.1, 0.0}, inf_slope[4] = {0.5, 0.1, 0.1, -INFINITY};
    EXPECT_SETTER_FAILS(ctx, d, dtypes[t], attn_desc_set_alibi(d, nan_slope, 4), ATTN_ERR_INVALID_ARG, "slopes");
    EXPECT_SETTER_FAILS(ctx, d, dtypes[t], attn_desc_set_alibi(d, inf_slope, 4), ATTN_ERR_INVALID_ARG, "slopes");
    EXPECT_SETTER_FAILS(ctx, d, dtypes[t], attn_desc_set_alibi(d, NULL, 4), ATTN_ERR_NULL_ARG, "slopes");
    EXPECT_SETTER_FAILS(ctx, d, dtypes[t], attn_desc_set_softcap(d, 0.0), ATTN_ERR_INVALID_ARG, "cap");
    EXPECT_SETTER_FAILS(ctx, d, dtypes[t], attn_desc_set_softcap(d, -1.0), ATTN_ERR_INVALID_ARG, "cap");
    EXPECT_SETTER_FAILS(ctx, d, dtypes[t], attn_desc_set_softcap(d, NAN), ATTN_ERR_INVALID_ARG, "cap");
    EXPECT_SETTER_FAILS(ctx, d, dtypes[t], attn_desc_set_softcap(d, INFINITY), ATTN_ERR_INVALID_ARG, "cap");
    /* Wrong slope count: known at plan time (q has 4 heads). */
    assert_int_equal(attn_desc_set_alibi(d, good, 3), ATTN_OK);
    expect_plan_fails(ctx, d, &s, ATTN_ERR_SHAPE, "alibi");
    assert_int_equal(attn_desc_set_alibi(d, good, 2), ATTN_OK); /* H_kv's count is not enough */
    expect_plan_fails(ctx, d, &s, ATTN_ERR_SHAPE, "alibi");
    attn_desc_destroy(d);
    small_free(&s);
  }
  attn_context_destroy(ctx);
}

/* Lengths and slopes are borrowed and may change between executes: execute
 * re-checks them (a key length past S_k would read beyond K and V). */
static void lengths_and_slopes_changed_after_plan_are_rechecked(void **state) {
  (void)state;
  attn_context *ctx = tu_context(2);
  for (int t = 0; t < 2; t++) {
    small s;
    small_make(ctx, dtypes[t], &s);
    attn_desc *d;
    assert_int_equal(attn_desc_create(ctx, &d), ATTN_OK);
    int64_t klen[2] = {13, 5}, qlen[2] = {9, 4};
    double slopes[4] = {0.5, 0.25, 0.1, 0.0};
    assert_int_equal(attn_desc_set_causal(d, ATTN_CAUSAL_BOTTOM_RIGHT), ATTN_OK);
    assert_int_equal(attn_desc_set_key_lengths(d, klen, 2), ATTN_OK);
    assert_int_equal(attn_desc_set_query_lengths(d, qlen, 2), ATTN_OK);
    assert_int_equal(attn_desc_set_alibi(d, slopes, 4), ATTN_OK);
    attn_plan *plan;
    assert_int_equal(attn_plan_create(ctx, d, s.q, s.k, s.v, s.out, s.w, s.lse, &plan), ATTN_OK);
    static const struct { int which; int64_t value; const char *name; } bad[] = {
        {0, 14, "key_lengths"}, {0, -1, "key_lengths"}, {1, 10, "query_lengths"},
        {1, -3, "query_lengths"}};
    for (int i = 0; i < 4; i++) {
      int64_t *arr = bad[i].which == 0 ? klen : qlen, keep = arr[0];
      arr[0] = bad[i].value;
      assert_int_equal(attn_plan_execute(plan, s.q, s.k, s.v, s.out, s.w, s.lse),
                       ATTN_ERR_INVALID_ARG);
      assert_error_names(ctx, bad[i].name);
      assert_canaries(&s);
      arr[0] = keep;
    }
    slopes[2] = NAN;
    assert_int_equal(attn_plan_execute(plan, s.q, s.k, s.v, s.out, s.w, s.lse),
                     ATTN_ERR_INVALID_ARG);
    assert_error_names(ctx, "slopes");
    assert_canaries(&s);
    slopes[2] = 0.1;
    /* Valid new contents are used. */
    klen[1] = 2;
    assert_int_equal(attn_plan_execute(plan, s.q, s.k, s.v, s.out, s.w, s.lse), ATTN_OK);
    attn_plan_destroy(plan);
    attn_desc_destroy(d);
    small_free(&s);
  }
  attn_context_destroy(ctx);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(causal_alignments_match_reference),
      cmocka_unit_test(window_left_right_match_reference),
      cmocka_unit_test(key_and_query_lengths_match_reference),
      cmocka_unit_test(bool_mask_true_means_attend),
      cmocka_unit_test(additive_mask_matches_reference),
      cmocka_unit_test(alibi_and_softcap_match_reference),
      cmocka_unit_test(combinations_match_reference),
      cmocka_unit_test(dense_masks_broadcast_over_batch_and_heads),
      cmocka_unit_test(minus_inf_and_minus_flt_max_are_bitwise_identical),
      cmocka_unit_test(nonfinite_in_masked_rows_never_reaches_output),
      cmocka_unit_test(tile_edges_with_masks_match_reference),
      cmocka_unit_test(random_combinations_match_reference),
      cmocka_unit_test(masked_results_bitwise_identical_across_thread_counts),
      cmocka_unit_test(mask_shape_not_broadcastable_is_rejected),
      cmocka_unit_test(mask_dtypes_are_checked),
      cmocka_unit_test(bad_lengths_are_rejected),
      cmocka_unit_test(bad_window_alibi_softcap_are_rejected),
      cmocka_unit_test(lengths_and_slopes_changed_after_plan_are_rechecked),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}

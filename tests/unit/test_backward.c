/* The backward pass (attn/backward.h).
 *
 *  - f64 gradients against central finite differences of the loss
 *    L = Σ dout ∘ out, for every mask kind (causal both alignments incl.
 *    S_q > S_k, window, key/query lengths, bool and additive masks with dead
 *    rows, the additive mask's own gradient, ALiBi, softcap), every score
 *    (scaled dot, dot, Luong general with dW, Bahdanau additive with dW_q,
 *    dW_k, dbias, dv), GQA/MQA, [B,S,H,D] strides, the sparse variants and
 *    Linformer (with dE, dF); each with the default tiles and with tiny
 *    tiles (tile edges, skipped tiles, several key chunks).
 *    Normwise relative error ≤ 1e-6.
 *  - f32 against the f64 gradients.
 *  - Bitwise identical results on 1..4 threads.
 *  - NaN/Inf planted in K/V rows past the key length and in keys/queries a
 *    dense mask removes never reach the gradients; fully masked rows give 0.
 *  - Zero allocations in execute; bad input: status, message, outputs untouched.
 */
#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/backward.h"
#include "testutil.h"

typedef struct bcase {
  const char *name;
  attn_variant variant;
  int64_t B, H, Hkv, Sq, Sk, D, Dv;
  int causal;
  int64_t left, right; /* −1 = unbounded */
  bool klen, qlen, bmask, amask, dmask, alibi, bshd, sinks;
  double softcap;
  int score;
  double scale; /* 0 = default */
  int64_t block; /* sparse */
  int64_t Dq;    /* 0 = D (general and additive scores may differ) */
  int64_t A;     /* additive: attention dim */
  bool abias;    /* additive: with a bias */
  int64_t lr_k;  /* Linformer: k */
  bool lr_given; /* Linformer: E, F given (with dE, dF), else seeded */
  bool lr_head;  /* Linformer: E, F per kv head [H_kv, k, S_k] */
} bcase;

/* Weight tensors with a gradient, in this order: the scores' (general,
 * additive) and Linformer's projections. */
enum { SW_GW, SW_WQ, SW_WK, SW_BIAS, SW_V, SW_E, SW_F, SW_N };

/* Everything one case needs: tensors (data in the tensors' own memory). */
typedef struct bsetup {
  const bcase *c;
  attn_dtype dt;
  attn_context *ctx;
  attn_desc *desc;
  attn_tensor *q, *k, *v, *out, *lse, *dout, *dq, *dk, *dv, *bm, *am, *dm, *layout;
  attn_tensor *w[SW_N], *dw[SW_N]; /* score weights and their gradients, or NULL */
  int64_t klen[4], qlen[4];
  double slopes[8];
  double sinks[8], dsinks[8]; /* sink logits (one head −inf) and their gradient */
  int64_t globals[2];
  attn_plan *fwd;
} bsetup;

static void poison_free(bsetup *s) {
  attn_plan_destroy(s->fwd);
  attn_tensor *ts[] = {s->q,  s->k,  s->v,  s->out, s->lse, s->dout, s->dq,
                       s->dk, s->dv, s->bm, s->am,  s->dm,  s->layout};
  for (size_t i = 0; i < sizeof ts / sizeof ts[0]; i++) tu_tensor_free(ts[i]);
  for (int i = 0; i < SW_N; i++) {
    tu_tensor_free(s->w[i]);
    tu_tensor_free(s->dw[i]);
  }
  attn_desc_destroy(s->desc);
  attn_context_destroy(s->ctx);
  memset(s, 0, sizeof *s);
}

static double *randv(size_t n, uint64_t *seed, double lo, double hi) {
  double *x = malloc(n * sizeof(double));
  tu_fill(x, n, seed, lo, hi);
  return x;
}

static void setup_case(bsetup *s, const bcase *c, attn_dtype dt, int32_t threads) {
  memset(s, 0, sizeof *s);
  s->c = c;
  s->dt = dt;
  s->ctx = tu_context(threads);
  assert_int_equal(attn_desc_create(s->ctx, &s->desc), ATTN_OK);
  attn_desc *d = s->desc;
  uint64_t seed = 0x9e3779b97f4a7c15ull ^ (uint64_t)(c->Sq * 131 + c->Sk * 7 + c->H);
  const int64_t B = c->B, H = c->H, Hkv = c->Hkv, Sq = c->Sq, Sk = c->Sk, D = c->D, Dv = c->Dv;
  const int64_t Dq = c->Dq ? c->Dq : D;
  double *q = randv((size_t)(B * H * Sq * Dq), &seed, -1, 1);
  double *k = randv((size_t)(B * Hkv * Sk * D), &seed, -1, 1);
  double *v = randv((size_t)(B * Hkv * Sk * Dv), &seed, -1, 1);
  double *go = randv((size_t)(B * H * Sq * Dv), &seed, -1, 1);
  s->q = tu_tensor4(s->ctx, dt, q, B, H, Sq, Dq, c->bshd);
  s->k = tu_tensor4(s->ctx, dt, k, B, Hkv, Sk, D, c->bshd);
  s->v = tu_tensor4(s->ctx, dt, v, B, Hkv, Sk, Dv, c->bshd);
  s->dout = tu_tensor4(s->ctx, dt, go, B, H, Sq, Dv, c->bshd);
  s->out = tu_tensor4(s->ctx, dt, NULL, B, H, Sq, Dv, c->bshd);
  s->dq = tu_tensor4(s->ctx, dt, NULL, B, H, Sq, Dq, c->bshd);
  s->dk = tu_tensor4(s->ctx, dt, NULL, B, Hkv, Sk, D, c->bshd);
  s->dv = tu_tensor4(s->ctx, dt, NULL, B, Hkv, Sk, Dv, c->bshd);
  const int64_t lshape[3] = {B, H, Sq};
  const attn_dtype ct = tu_is_16bit(dt) ? ATTN_DTYPE_F32 : dt; /* lse, additive mask */
  /* Linear attention has no lse (its backward recomputes its state). */
  const bool linear = c->variant == ATTN_VARIANT_LINEAR_ELU || c->variant == ATTN_VARIANT_PERFORMER;
  s->lse = linear ? NULL : tu_tensor(s->ctx, ct, NULL, 3, lshape);
  free(q);
  free(k);
  free(v);
  free(go);

  assert_int_equal(attn_desc_set_variant(d, c->variant), ATTN_OK);
  /* 24 random features: enough to test every path, and the finite
   * differences (two forwards per element) stay cheap under valgrind. */
  if (c->variant == ATTN_VARIANT_PERFORMER)
    assert_int_equal(attn_desc_set_features(d, 24, 11), ATTN_OK);
  assert_int_equal(attn_desc_set_score(d, (attn_score)c->score), ATTN_OK);
  if (c->score == ATTN_SCORE_GENERAL) {
    const int64_t sh[2] = {Dq, D};
    double *w = randv((size_t)(Dq * D), &seed, -1, 1);
    s->w[SW_GW] = tu_tensor(s->ctx, dt, w, 2, sh);
    s->dw[SW_GW] = tu_tensor(s->ctx, dt, NULL, 2, sh);
    free(w);
    assert_int_equal(attn_desc_set_general_weight(d, s->w[SW_GW]), ATTN_OK);
  }
  if (c->score == ATTN_SCORE_ADDITIVE) {
    const int64_t A = c->A;
    const int64_t shape[SW_N][2] = {{0, 0}, {A, Dq}, {A, D}, {A, 1}, {A, 1}};
    for (int i = SW_WQ; i < SW_N; i++) {
      if (i == SW_BIAS && !c->abias) continue;
      const int32_t rank = i < SW_BIAS ? 2 : 1;
      double *w = randv((size_t)(shape[i][0] * shape[i][1]), &seed, -1, 1);
      s->w[i] = tu_tensor(s->ctx, dt, w, rank, shape[i]);
      s->dw[i] = tu_tensor(s->ctx, dt, NULL, rank, shape[i]);
      free(w);
    }
    assert_int_equal(attn_desc_set_additive_weights(d, s->w[SW_WQ], s->w[SW_WK], s->w[SW_BIAS],
                                                    s->w[SW_V]),
                     ATTN_OK);
  }
  if (c->scale > 0) assert_int_equal(attn_desc_set_scale(d, c->scale), ATTN_OK);
  assert_int_equal(attn_desc_set_causal(d, (attn_causal)c->causal), ATTN_OK);
  if (c->left >= 0 || c->right >= 0)
    assert_int_equal(attn_desc_set_window(d, c->left < 0 ? ATTN_WINDOW_UNBOUNDED : c->left,
                                          c->right < 0 ? ATTN_WINDOW_UNBOUNDED : c->right),
                     ATTN_OK);
  if (c->klen) {
    for (int64_t b = 0; b < B; b++) s->klen[b] = attn_max64(1, Sk - 2 - b);
    if (B > 1) s->klen[B - 1] = 0; /* an item with no keys at all */
    assert_int_equal(attn_desc_set_key_lengths(d, s->klen, B), ATTN_OK);
  }
  if (c->qlen) {
    for (int64_t b = 0; b < B; b++) s->qlen[b] = attn_max64(1, Sq - 1 - 2 * b);
    assert_int_equal(attn_desc_set_query_lengths(d, s->qlen, B), ATTN_OK);
  }
  const size_t nm = (size_t)(B * H * Sq * Sk);
  if (c->bmask) { /* random, ~70% kept, every 4th row fully masked */
    double *m = malloc(nm * sizeof(double));
    for (size_t x = 0; x < nm; x++)
      m[x] = (x / (size_t)Sk) % 4 == 1 ? 0.0 : tu_uniform(&seed, 0, 1) < 0.7;
    const int64_t sh[4] = {B, H, Sq, Sk};
    s->bm = tu_tensor(s->ctx, ATTN_DTYPE_U8, m, 4, sh);
    free(m);
    assert_int_equal(attn_desc_set_bool_mask(d, s->bm), ATTN_OK);
  }
  if (c->amask) { /* random values, ~20% −inf, every 5th row fully −inf */
    double *m = malloc(nm * sizeof(double));
    for (size_t x = 0; x < nm; x++) {
      m[x] = tu_uniform(&seed, -1.5, 1.5);
      if (tu_uniform(&seed, 0, 1) < 0.2 || (x / (size_t)Sk) % 5 == 2) m[x] = -INFINITY;
    }
    const int64_t sh[4] = {B, H, Sq, Sk};
    s->am = tu_tensor(s->ctx, ct, m, 4, sh);
    free(m);
    assert_int_equal(attn_desc_set_additive_mask(d, s->am), ATTN_OK);
    if (c->dmask) s->dm = tu_tensor(s->ctx, ct, NULL, 4, sh);
  }
  if (c->alibi) {
    for (int64_t h = 0; h < H; h++) s->slopes[h] = 0.25 / (double)(h + 1);
    assert_int_equal(attn_desc_set_alibi(d, s->slopes, H), ATTN_OK);
  }
  if (c->softcap > 0) assert_int_equal(attn_desc_set_softcap(d, c->softcap), ATTN_OK);
  if (c->sinks) {
    for (int64_t h = 0; h < H; h++) s->sinks[h] = h == 1 ? -INFINITY : 0.4 - 0.3 * (double)h;
    assert_int_equal(attn_desc_set_sinks(d, s->sinks, H), ATTN_OK);
  }
  if (c->variant == ATTN_VARIANT_LONGFORMER) {
    s->globals[0] = 1;
    s->globals[1] = Sq - 2;
    assert_int_equal(attn_desc_set_global_tokens(d, s->globals, 2), ATTN_OK);
    assert_int_equal(attn_desc_set_block_size(d, c->block), ATTN_OK);
  }
  if (c->variant == ATTN_VARIANT_BIGBIRD) {
    assert_int_equal(attn_desc_set_block_size(d, c->block), ATTN_OK);
    assert_int_equal(attn_desc_set_bigbird(d, 1, 1, 1, 42), ATTN_OK);
  }
  if (c->variant == ATTN_VARIANT_LINFORMER) {
    if (c->lr_given) {
      const int64_t sh[3] = {Hkv, c->lr_k, Sk};
      const int32_t rank = c->lr_head ? 3 : 2;
      const int64_t n = (c->lr_head ? Hkv : 1) * c->lr_k * Sk;
      for (int i = SW_E; i <= SW_F; i++) {
        double *w = randv((size_t)n, &seed, -0.6, 0.6);
        s->w[i] = tu_tensor(s->ctx, dt, w, rank, c->lr_head ? sh : sh + 1);
        s->dw[i] = tu_tensor(s->ctx, dt, NULL, rank, c->lr_head ? sh : sh + 1);
        free(w);
      }
      assert_int_equal(attn_desc_set_lowrank_proj(d, s->w[SW_E], s->w[SW_F]), ATTN_OK);
    } else {
      assert_int_equal(attn_desc_set_lowrank(d, c->lr_k, 7), ATTN_OK);
    }
  }
  if (c->variant == ATTN_VARIANT_BLOCK_SPARSE) {
    const int64_t nqb = (Sq + c->block - 1) / c->block, nkb = (Sk + c->block - 1) / c->block;
    const int64_t sh[3] = {H, nqb, nkb};
    double *l = malloc((size_t)(H * nqb * nkb) * sizeof(double));
    for (int64_t x = 0; x < H * nqb * nkb; x++) l[x] = (x * 7 + x / nkb) % 3 != 0;
    s->layout = tu_tensor(s->ctx, ATTN_DTYPE_U8, l, 3, sh);
    free(l);
    assert_int_equal(attn_desc_set_block_size(d, c->block), ATTN_OK);
    assert_int_equal(attn_desc_set_block_layout(d, s->layout), ATTN_OK);
  }
  attn_status st = attn_plan_create(s->ctx, d, s->q, s->k, s->v, s->out, NULL, s->lse, &s->fwd);
  if (st != ATTN_OK) fail_msg("%s: forward plan: %s", c->name, attn_context_last_error(s->ctx));
}

static double loss(bsetup *s) {
  assert_int_equal(attn_plan_execute(s->fwd, s->q, s->k, s->v, s->out, NULL, s->lse), ATTN_OK);
  const size_t n = (size_t)attn_tensor_numel(s->out);
  double *o = malloc(n * sizeof(double)), *g = malloc(n * sizeof(double));
  tu_read(s->out, o);
  tu_read(s->dout, g);
  double l = 0;
  for (size_t x = 0; x < n; x++) l += o[x] * g[x];
  free(o);
  free(g);
  return l;
}

/* Address of logical element x (C order of the shape) of an f64 tensor. */
static double *elem64(const attn_tensor *t, int64_t x) {
  int64_t off = 0;
  for (int32_t a = attn_tensor_rank(t) - 1; a >= 0; a--) {
    const int64_t n = attn_tensor_dim(t, a);
    off += (x % n) * attn_tensor_stride(t, a);
    x /= n;
  }
  return (double *)attn_tensor_data(t) + off;
}

/* Central differences of the loss w.r.t. every element of t (f64). */
static double *finite_diff(bsetup *s, const attn_tensor *t) {
  const int64_t n = attn_tensor_numel(t);
  double *fd = calloc((size_t)n, sizeof(double));
  const double h = 1e-5;
  for (int64_t x = 0; x < n; x++) {
    double *p = elem64(t, x);
    const double x0 = *p;
    if (!isfinite(x0)) continue; /* a removed key of an additive mask */
    *p = x0 + h;
    const double lp = loss(s);
    *p = x0 - h;
    const double lm = loss(s);
    *p = x0;
    fd[x] = (lp - lm) / (2 * h);
  }
  return fd;
}

static double *read_all(const attn_tensor *t) {
  double *x = malloc((size_t)attn_tensor_numel(t) * sizeof(double));
  tu_read(t, x);
  return x;
}

static void run_backward(bsetup *s, int64_t tq, int64_t tk) {
  attn_backward_plan *bp = NULL;
  attn_status st = attn_backward_plan_create_tiled(s->fwd, s->dout, s->dq, s->dk, s->dv, s->dm,
                                                   tq, tk, &bp);
  if (st != ATTN_OK)
    fail_msg("%s: backward plan: %s", s->c->name, attn_context_last_error(s->ctx));
  if (s->c->score == ATTN_SCORE_GENERAL)
    assert_int_equal(attn_backward_plan_set_general_grad(bp, s->dw[SW_GW]), ATTN_OK);
  if (s->c->score == ATTN_SCORE_ADDITIVE)
    assert_int_equal(attn_backward_plan_set_additive_grads(bp, s->dw[SW_WQ], s->dw[SW_WK],
                                                           s->dw[SW_BIAS], s->dw[SW_V]),
                     ATTN_OK);
  if (s->c->lr_given)
    assert_int_equal(attn_backward_plan_set_lowrank_grads(bp, s->dw[SW_E], s->dw[SW_F]), ATTN_OK);
  if (s->c->sinks) {
    for (int64_t h = 0; h < s->c->H; h++) s->dsinks[h] = NAN;
    assert_int_equal(attn_backward_plan_set_sink_grad(bp, s->dsinks, s->c->H), ATTN_OK);
  }
  assert_int_equal(attn_plan_execute(s->fwd, s->q, s->k, s->v, s->out, NULL, s->lse), ATTN_OK);
  st = attn_backward_execute(bp, s->q, s->k, s->v, s->out, s->lse, s->dout, s->dq, s->dk, s->dv,
                             s->dm);
  if (st != ATTN_OK) fail_msg("%s: backward: %s", s->c->name, attn_context_last_error(s->ctx));
  attn_backward_plan_destroy(bp);
}

/* The case's inputs with a gradient, their gradients and names (NULL
 * where the case has none); returns the count. */
#define NGRAD (4 + SW_N)
static int grads_of(const bsetup *s, const attn_tensor **in, const attn_tensor **g,
                    const char **names) {
  static const char *const nm[NGRAD] = {"dq",   "dk",   "dv",    "dmask", "dw", "dw_q",
                                        "dw_k", "dbias", "dv_a", "de",    "df"};
  const attn_tensor *x[NGRAD] = {s->q, s->k, s->v, s->am};
  const attn_tensor *y[NGRAD] = {s->dq, s->dk, s->dv, s->dm};
  for (int i = 0; i < SW_N; i++) {
    x[4 + i] = s->w[i];
    y[4 + i] = s->dw[i];
  }
  for (int i = 0; i < NGRAD; i++) {
    if (in) in[i] = x[i];
    g[i] = y[i];
    if (names) names[i] = nm[i];
  }
  return NGRAD;
}

/* Normwise relative error of got against want; NaN anywhere fails. */
static double rel_err(const double *got, const double *want, size_t n) {
  double num = 0, den = 0;
  for (size_t x = 0; x < n; x++) {
    if (!isfinite(got[x])) return INFINITY;
    num = fmax(num, fabs(got[x] - want[x]));
    den = fmax(den, fabs(want[x]));
  }
  return den > 0 ? num / den : num;
}

static const bcase cases[] = {
    {"plain", ATTN_VARIANT_EXACT, 2, 2, 2, 7, 9, 4, 3, 0, -1, -1, .block = 0},
    {"causal_tl", ATTN_VARIANT_EXACT, 2, 2, 2, 9, 7, 4, 4, ATTN_CAUSAL_TOP_LEFT, -1, -1, .klen = false},
    {"causal_br", ATTN_VARIANT_EXACT, 2, 2, 2, 6, 9, 4, 4, ATTN_CAUSAL_BOTTOM_RIGHT, -1, -1, .klen = false},
    {"causal_br_sq_gt_sk", ATTN_VARIANT_EXACT, 1, 2, 2, 9, 5, 3, 3, ATTN_CAUSAL_BOTTOM_RIGHT, -1,
     -1, .klen = false},
    {"window", ATTN_VARIANT_EXACT, 1, 2, 2, 10, 10, 4, 4, 0, 2, 1, .klen = false},
    {"window_causal_alibi", ATTN_VARIANT_EXACT, 1, 3, 3, 10, 12, 4, 4, ATTN_CAUSAL_BOTTOM_RIGHT, 3,
     -1, .alibi = true},
    {"lengths", ATTN_VARIANT_EXACT, 3, 2, 2, 8, 9, 4, 4, 0, -1, -1, .klen = true, .qlen = true},
    {"lengths_causal_br", ATTN_VARIANT_EXACT, 2, 2, 1, 8, 9, 4, 4, ATTN_CAUSAL_BOTTOM_RIGHT, -1,
     -1, .klen = true, .qlen = true},
    {"bool_mask", ATTN_VARIANT_EXACT, 2, 2, 2, 8, 9, 4, 4, 0, -1, -1, .bmask = true},
    {"additive_mask_dmask", ATTN_VARIANT_EXACT, 2, 2, 2, 7, 9, 4, 4, 0, -1, -1, .amask = true,
     .dmask = true},
    {"additive_causal_softcap", ATTN_VARIANT_EXACT, 1, 2, 2, 9, 9, 4, 4, ATTN_CAUSAL_TOP_LEFT, -1,
     -1, .amask = true, .dmask = true, .softcap = 1.5},
    {"softcap", ATTN_VARIANT_EXACT, 2, 2, 2, 7, 8, 4, 4, 0, -1, -1, .softcap = 0.8,
     .scale = 2.0},
    {"alibi", ATTN_VARIANT_EXACT, 1, 4, 4, 7, 8, 4, 4, 0, -1, -1, .alibi = true},
    {"dot_scale", ATTN_VARIANT_EXACT, 2, 2, 2, 6, 7, 3, 5, 0, -1, -1, .score = ATTN_SCORE_DOT,
     .scale = 0.7},
    {"gqa", ATTN_VARIANT_EXACT, 2, 4, 2, 7, 9, 4, 4, ATTN_CAUSAL_TOP_LEFT, -1, -1, .klen = false},
    {"mqa_masks", ATTN_VARIANT_EXACT, 1, 4, 1, 7, 9, 4, 3, 0, -1, -1, .bmask = true,
     .alibi = true},
    {"bshd_all", ATTN_VARIANT_EXACT, 2, 2, 2, 8, 8, 4, 4, ATTN_CAUSAL_TOP_LEFT, 5, -1,
     .klen = true, .amask = true, .alibi = true, .softcap = 2.0, .bshd = true},
    {"longformer", ATTN_VARIANT_LONGFORMER, 1, 2, 2, 12, 12, 4, 4, 0, 2, 2, .block = 4},
    {"longformer_causal", ATTN_VARIANT_LONGFORMER, 1, 2, 2, 12, 12, 4, 4, ATTN_CAUSAL_TOP_LEFT, 3,
     0, .block = 4},
    {"bigbird", ATTN_VARIANT_BIGBIRD, 1, 2, 2, 16, 16, 4, 4, 0, -1, -1, .block = 2},
    {"block_sparse", ATTN_VARIANT_BLOCK_SPARSE, 2, 2, 2, 12, 12, 4, 4, 0, -1, -1, .block = 3,
     .bmask = true},
    /* Sinks: one head without (−inf), rows with no key left (lse = sink). */
    {"sinks", ATTN_VARIANT_EXACT, 2, 3, 3, 7, 9, 4, 4, 0, -1, -1, .sinks = true},
    {"sinks_causal_lengths_gqa", ATTN_VARIANT_EXACT, 2, 4, 2, 8, 9, 4, 4,
     ATTN_CAUSAL_BOTTOM_RIGHT, 3, -1, .klen = true, .qlen = true, .sinks = true, .softcap = 1.7},
    {"sinks_longformer", ATTN_VARIANT_LONGFORMER, 1, 2, 2, 12, 12, 4, 4, 0, 2, 2, .block = 4,
     .sinks = true},
    /* Luong general: d_q ≠ d_k, dW. */
    {"general", ATTN_VARIANT_EXACT, 2, 2, 2, 7, 9, 4, 3, 0, -1, -1, .score = ATTN_SCORE_GENERAL,
     .Dq = 5},
    {"general_gqa_masks", ATTN_VARIANT_EXACT, 2, 4, 2, 8, 9, 4, 4, ATTN_CAUSAL_BOTTOM_RIGHT, -1,
     -1, .klen = true, .qlen = true, .amask = true, .dmask = true, .softcap = 1.5, .scale = 0.6,
     .score = ATTN_SCORE_GENERAL, .Dq = 3},
    {"general_bool_mask_bshd", ATTN_VARIANT_EXACT, 2, 2, 2, 8, 9, 4, 4, 0, -1, -1, .bmask = true,
     .alibi = true, .bshd = true, .score = ATTN_SCORE_GENERAL, .Dq = 6},
    /* Bahdanau additive: dW_q, dW_k, dbias, dv. */
    {"additive", ATTN_VARIANT_EXACT, 2, 2, 2, 7, 9, 4, 3, 0, -1, -1, .score = ATTN_SCORE_ADDITIVE,
     .A = 5, .abias = true, .Dq = 3},
    {"additive_gqa_masks", ATTN_VARIANT_EXACT, 2, 4, 2, 8, 9, 4, 4, ATTN_CAUSAL_BOTTOM_RIGHT, 4,
     -1, .klen = true, .qlen = true, .alibi = true, .softcap = 1.2,
     .score = ATTN_SCORE_ADDITIVE, .A = 6},
    {"additive_dense_masks", ATTN_VARIANT_EXACT, 1, 2, 1, 8, 9, 4, 4, 0, -1, -1, .bmask = true,
     .amask = true, .dmask = true, .score = ATTN_SCORE_ADDITIVE, .A = 4, .abias = true},
    {"additive_block_sparse", ATTN_VARIANT_BLOCK_SPARSE, 1, 2, 2, 12, 12, 4, 4, 0, -1, -1,
     .block = 3, .score = ATTN_SCORE_ADDITIVE, .A = 5, .abias = true},
    {"general_longformer", ATTN_VARIANT_LONGFORMER, 1, 2, 2, 12, 12, 4, 4, 0, 2, 2, .block = 4,
     .score = ATTN_SCORE_GENERAL, .Dq = 4},
    /* Linformer: dk = Eᵀ dK', dv = Fᵀ dV', dE, dF. */
    {"linformer", ATTN_VARIANT_LINFORMER, 2, 2, 2, 7, 12, 4, 3, 0, -1, -1, .lr_k = 5,
     .lr_given = true},
    {"linformer_gqa_lengths_per_head", ATTN_VARIANT_LINFORMER, 3, 4, 2, 8, 11, 4, 4, 0, -1, -1,
     .klen = true, .qlen = true, .softcap = 1.5, .lr_k = 4, .lr_given = true, .lr_head = true},
    {"linformer_seeded_dot", ATTN_VARIANT_LINFORMER, 1, 2, 2, 6, 10, 4, 4, 0, -1, -1,
     .score = ATTN_SCORE_DOT, .scale = 0.8, .lr_k = 3},
    /* Linear attention (no lse): elu+1 non-causal and causal through the
     * chunked prefix form (32-row chunks: several chunks, partial ones),
     * both alignments, rows with no key, GQA, lengths; Performer non-causal. */
    {"linear_elu", ATTN_VARIANT_LINEAR_ELU, 2, 2, 2, 7, 9, 4, 3, 0, -1, -1, .klen = false},
    {"linear_elu_causal_gqa_lengths", ATTN_VARIANT_LINEAR_ELU, 3, 4, 2, 40, 45, 4, 3,
     ATTN_CAUSAL_TOP_LEFT, -1, -1, .klen = true, .qlen = true},
    {"linear_elu_causal_br", ATTN_VARIANT_LINEAR_ELU, 1, 2, 2, 37, 70, 3, 4,
     ATTN_CAUSAL_BOTTOM_RIGHT, -1, -1, .klen = false},
    {"linear_elu_causal_br_sq_gt_sk", ATTN_VARIANT_LINEAR_ELU, 1, 2, 1, 70, 37, 3, 3,
     ATTN_CAUSAL_BOTTOM_RIGHT, -1, -1, .klen = false},
    {"performer", ATTN_VARIANT_PERFORMER, 2, 2, 1, 9, 40, 4, 4, 0, -1, -1, .klen = true},
    /* Causal FAVOR+: three 32-row chunks, so the running key stabiliser
     * changes between chunks and the reverse pass rescales R. */
    {"performer_causal_tl_lengths", ATTN_VARIANT_PERFORMER, 1, 2, 1, 70, 75, 4, 3,
     ATTN_CAUSAL_TOP_LEFT, -1, -1, .klen = true, .qlen = true},
    {"performer_causal_br", ATTN_VARIANT_PERFORMER, 1, 2, 2, 66, 40, 4, 4,
     ATTN_CAUSAL_BOTTOM_RIGHT, -1, -1, .klen = false},
};

static void check_fd_case(const bcase *c, int64_t tq, int64_t tk) {
  bsetup s;
  setup_case(&s, c, ATTN_DTYPE_F64, 2);
  run_backward(&s, tq, tk);
  const attn_tensor *inputs[NGRAD], *grads[NGRAD];
  const char *names[NGRAD];
  const int ng = grads_of(&s, inputs, grads, names);
  for (int i = 0; i < ng; i++) {
    if (grads[i] == NULL) continue;
    double *g = read_all(grads[i]);
    double *fd = finite_diff(&s, inputs[i]);
    const size_t n = (size_t)attn_tensor_numel(grads[i]);
    const double e = rel_err(g, fd, n);
    if (!(e <= 1e-6))
      fail_msg("%s (tiles %lld×%lld): %s relative error %.3g vs finite differences", c->name,
               (long long)tq, (long long)tk, names[i], e);
    free(g);
    free(fd);
  }
  if (c->sinks) { /* ∂L/∂sink_h against central differences in the (borrowed) logit */
    double num = 0, den = 0;
    for (int64_t h = 0; h < c->H; h++) {
      double want = 0;
      if (isfinite(s.sinks[h])) {
        const double x0 = s.sinks[h], e = 1e-5;
        s.sinks[h] = x0 + e;
        const double lp = loss(&s);
        s.sinks[h] = x0 - e;
        const double lm = loss(&s);
        s.sinks[h] = x0;
        want = (lp - lm) / (2 * e);
      }
      if (!isfinite(s.dsinks[h])) fail_msg("%s: dsinks[%lld] = %g", c->name, (long long)h, s.dsinks[h]);
      num = fmax(num, fabs(s.dsinks[h] - want));
      den = fmax(den, fabs(want));
    }
    if (!(den > 0 && num <= 1e-6 * den))
      fail_msg("%s (tiles %lld×%lld): dsinks error %.3g of %.3g vs finite differences", c->name,
               (long long)tq, (long long)tk, num, den);
  }
  poison_free(&s);
}

static void test_finite_differences(void **state) {
  (void)state;
  /* Under valgrind (ATTN_TEST_QUICK) one tiny-tile shape is enough to
   * walk the tile edges; the full runs keep both transposes of it. */
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    check_fd_case(&cases[i], 0, 0);
    check_fd_case(&cases[i], 2, 3);
    if (!tu_quick()) check_fd_case(&cases[i], 3, 2);
  }
}

/* f32 against the f64 gradients of the same inputs (rounded to f32). */
/* Longer sequences for the f32 comparison only: with tiles of 16 × 80 a
 * causal or banded tile starts inside a 32-key panel of its key block. */
static const bcase long_cases[] = {
    {"long_causal_tl_gqa", ATTN_VARIANT_EXACT, 1, 4, 2, 150, 170, 16, 16, ATTN_CAUSAL_TOP_LEFT,
     -1, -1, .klen = true},
    {"long_causal_br_alibi_softcap", ATTN_VARIANT_EXACT, 2, 2, 2, 130, 140, 16, 8,
     ATTN_CAUSAL_BOTTOM_RIGHT, -1, -1, .qlen = true, .alibi = true, .softcap = 4.0},
    {"long_window", ATTN_VARIANT_EXACT, 1, 2, 2, 140, 140, 16, 16, 0, 45, 7, .qlen = true},
    {"long_general_causal", ATTN_VARIANT_EXACT, 1, 2, 1, 120, 130, 8, 8, ATTN_CAUSAL_TOP_LEFT, -1,
     -1, .score = ATTN_SCORE_GENERAL, .Dq = 12},
};

static void test_f32_vs_f64(void **state) {
  (void)state;
  /* The long cases test the f32 tile engine's panel alignment: not under
   * valgrind (ATTN_TEST_QUICK, and no AVX-512 there), where their tiny-tile
   * runs alone took over half an hour. */
  const size_t nshort = sizeof cases / sizeof cases[0];
  const size_t nlong = tu_quick() ? 0 : sizeof long_cases / sizeof long_cases[0];
  for (size_t ci = 0; ci < nshort + nlong; ci++) {
    const bcase *c = ci < nshort ? &cases[ci] : &long_cases[ci - nshort];
    bsetup s64;
    setup_case(&s64, c, ATTN_DTYPE_F64, 1);
    run_backward(&s64, 0, 0);
    const attn_tensor *g64[NGRAD], *g32[NGRAD];
    const int ng = grads_of(&s64, NULL, g64, NULL);
    /* Tiny tiles, and tiles wider than the f32 tile engine's 32-key panels
     * (a causal or banded tile then starts mid-panel and is widened to the
     * panel's start). */
    const int64_t tiles[2][2] = {{2, 3}, {16, 80}};
    for (int ti = ci < nshort ? 0 : 1; ti < 2; ti++) { /* long cases: the wide tiles only */
      bsetup s32;
      setup_case(&s32, c, ATTN_DTYPE_F32, 3);
      run_backward(&s32, tiles[ti][0], tiles[ti][1]);
      grads_of(&s32, NULL, g32, NULL);
      for (int t = 0; t < ng; t++) {
        if (g64[t] == NULL) continue;
        double *a = read_all(g32[t]), *b = read_all(g64[t]);
        const double e = rel_err(a, b, (size_t)attn_tensor_numel(g64[t]));
        if (!(e <= 2e-5))
          fail_msg("%s: f32 gradient %d (tiles %lld x %lld) off by %.3g", c->name, t,
                   (long long)tiles[ti][0], (long long)tiles[ti][1], e);
        free(a);
        free(b);
      }
      poison_free(&s32);
    }
    poison_free(&s64);
  }
}

static unsigned char *raw_copy(const attn_tensor *t) {
  const size_t n = (size_t)attn_tensor_numel(t) * (attn_tensor_dtype(t) == ATTN_DTYPE_F32 ? 4 : 8);
  unsigned char *x = malloc(n);
  memcpy(x, attn_tensor_data(t), n); /* contiguous tensors only */
  return x;
}

/* Bitwise identical gradients on 1..4 threads, with several key chunks
 * (the partial-dq path) and without. */
static void test_threads_bitwise(void **state) {
  (void)state;
  const bcase tc[] = {
      {"threads_gqa_masks", ATTN_VARIANT_EXACT, 2, 4, 2, 150, 170, 16, 16, ATTN_CAUSAL_TOP_LEFT,
       -1, -1, .klen = true, .amask = true, .dmask = true, .alibi = true, .softcap = 3.0},
      {"threads_one_head", ATTN_VARIANT_EXACT, 1, 1, 1, 200, 230, 8, 8, 0, -1, -1, .bmask = true},
      {"threads_general", ATTN_VARIANT_EXACT, 1, 4, 2, 130, 150, 8, 8, ATTN_CAUSAL_BOTTOM_RIGHT,
       -1, -1, .klen = true, .qlen = true, .score = ATTN_SCORE_GENERAL, .Dq = 20},
      {"threads_linformer", ATTN_VARIANT_LINFORMER, 2, 4, 2, 70, 150, 8, 8, 0, -1, -1,
       .klen = true, .lr_k = 40, .lr_given = true},
      {"threads_linear_causal", ATTN_VARIANT_LINEAR_ELU, 2, 4, 2, 100, 90, 8, 8,
       ATTN_CAUSAL_BOTTOM_RIGHT, -1, -1, .klen = true, .qlen = true},
      {"threads_performer", ATTN_VARIANT_PERFORMER, 1, 4, 1, 70, 80, 8, 8, 0, -1, -1,
       .klen = true},
      {"threads_performer_causal", ATTN_VARIANT_PERFORMER, 2, 4, 2, 100, 90, 8, 8,
       ATTN_CAUSAL_TOP_LEFT, -1, -1, .klen = true, .qlen = true},
      {"threads_additive", ATTN_VARIANT_EXACT, 1, 2, 1, 110, 120, 8, 8, ATTN_CAUSAL_TOP_LEFT, -1,
       -1, .klen = true, .bmask = true, .softcap = 2.0, .score = ATTN_SCORE_ADDITIVE, .A = 24,
       .abias = true, .Dq = 6},
  };
  for (size_t i = 0; i < sizeof tc / sizeof tc[0]; i++) {
    unsigned char *ref[NGRAD] = {NULL};
    for (int32_t th = 1; th <= 4; th++) {
      bsetup s;
      setup_case(&s, &tc[i], ATTN_DTYPE_F32, th);
      run_backward(&s, 32, 24);
      const attn_tensor *g[NGRAD];
      const int ng = grads_of(&s, NULL, g, NULL);
      for (int t = 0; t < ng; t++) {
        if (g[t] == NULL) continue;
        unsigned char *x = raw_copy(g[t]);
        const size_t n = (size_t)attn_tensor_numel(g[t]) * 4;
        if (th == 1)
          ref[t] = x;
        else {
          if (memcmp(x, ref[t], n) != 0)
            fail_msg("%s: gradient %d differs between 1 and %d threads", tc[i].name, t, th);
          free(x);
        }
      }
      poison_free(&s);
    }
    for (int t = 0; t < NGRAD; t++) free(ref[t]);
  }
}

/* NaN in K/V rows past the key length, in Q rows past the query length and
 * in keys/queries a dense mask removes: the gradients equal the clean run's
 * (0 for the poisoned rows), never NaN. */
static void test_poison(void **state) {
  (void)state;
  const bcase c = {"poison", ATTN_VARIANT_EXACT, 2, 2, 2, 9, 11, 4, 4, 0, -1, -1,
                   .klen = true, .qlen = true, .bmask = true};
  for (int dt = 0; dt < 2; dt++) {
    const attn_dtype t = dt ? ATTN_DTYPE_F32 : ATTN_DTYPE_F64;
    bsetup clean, dirty;
    setup_case(&clean, &c, t, 2);
    setup_case(&dirty, &c, t, 2);
    /* Kill key 3 of item 0 for every query, and query row 2 of item 0. */
    uint8_t *bm = attn_tensor_data(clean.bm), *bm2 = attn_tensor_data(dirty.bm);
    for (int64_t h = 0; h < c.H; h++)
      for (int64_t i = 0; i < c.Sq; i++) {
        bm[((0 * c.H + h) * c.Sq + i) * c.Sk + 3] = 0;
        bm2[((0 * c.H + h) * c.Sq + i) * c.Sk + 3] = 0;
        for (int64_t j = 0; j < c.Sk; j++) {
          bm[((0 * c.H + h) * c.Sq + 2) * c.Sk + j] = 0;
          bm2[((0 * c.H + h) * c.Sq + 2) * c.Sk + j] = 0;
        }
      }
    const double nan = NAN;
    for (int64_t b = 0; b < c.B; b++)
      for (int64_t h = 0; h < c.H; h++) {
        for (int64_t j = 0; j < c.Sk; j++)
          for (int64_t x = 0; x < c.D; x++) {
            const bool poison = j >= dirty.klen[b] || (b == 0 && j == 3);
            if (!poison) continue;
            const int64_t e = ((b * c.Hkv + h) * c.Sk + j) * c.D + x;
            if (t == ATTN_DTYPE_F64) {
              ((double *)attn_tensor_data(dirty.k))[e] = nan;
              ((double *)attn_tensor_data(dirty.v))[e] = nan;
            } else {
              ((float *)attn_tensor_data(dirty.k))[e] = (float)nan;
              ((float *)attn_tensor_data(dirty.v))[e] = (float)nan;
            }
          }
        for (int64_t i = 0; i < c.Sq; i++)
          for (int64_t x = 0; x < c.D; x++) {
            const bool poison = i >= dirty.qlen[b] || (b == 0 && i == 2);
            if (!poison) continue;
            const int64_t e = ((b * c.H + h) * c.Sq + i) * c.D + x;
            if (t == ATTN_DTYPE_F64)
              ((double *)attn_tensor_data(dirty.q))[e] = nan;
            else
              ((float *)attn_tensor_data(dirty.q))[e] = (float)nan;
          }
      }
    run_backward(&clean, 2, 3);
    run_backward(&dirty, 2, 3);
    const attn_tensor *gc[3] = {clean.dq, clean.dk, clean.dv};
    const attn_tensor *gd[3] = {dirty.dq, dirty.dk, dirty.dv};
    for (int g = 0; g < 3; g++) {
      const size_t n = (size_t)attn_tensor_numel(gc[g]);
      double *a = read_all(gc[g]), *b = read_all(gd[g]);
      for (size_t x = 0; x < n; x++)
        if (!(a[x] == b[x])) fail_msg("poison: gradient %d element %zu: %g vs clean %g", g, x, b[x], a[x]);
      free(a);
      free(b);
    }
    /* The fully masked row 2 of item 0 and the rows past the query length: dq = 0. */
    double *dq = read_all(clean.dq);
    for (int64_t b = 0; b < c.B; b++)
      for (int64_t h = 0; h < c.H; h++)
        for (int64_t i = 0; i < c.Sq; i++)
          if (i >= clean.qlen[b] || (b == 0 && i == 2))
            for (int64_t x = 0; x < c.D; x++)
              assert_true(dq[((b * c.H + h) * c.Sq + i) * c.D + x] == 0.0);
    free(dq);
    poison_free(&clean);
    poison_free(&dirty);
  }
}

/* Execute allocates nothing. */
static void test_no_alloc_in_execute(void **state) {
  (void)state;
  tu_counter cnt = {0};
  attn_context *ctx = tu_counting_context(&cnt, 3);
  bsetup s;
  const bcase c = {"alloc", ATTN_VARIANT_EXACT, 1, 2, 1, 40, 50, 8, 8, ATTN_CAUSAL_TOP_LEFT, -1, -1, .klen = false};
  setup_case(&s, &c, ATTN_DTYPE_F32, 1);
  attn_plan *fwd = NULL;
  attn_desc *d = NULL;
  assert_int_equal(attn_desc_create(ctx, &d), ATTN_OK);
  assert_int_equal(attn_desc_set_causal(d, ATTN_CAUSAL_TOP_LEFT), ATTN_OK);
  assert_int_equal(attn_plan_create(ctx, d, s.q, s.k, s.v, s.out, NULL, s.lse, &fwd), ATTN_OK);
  attn_backward_plan *bp = NULL;
  assert_int_equal(attn_backward_plan_create_tiled(fwd, s.dout, s.dq, s.dk, s.dv, NULL, 8, 8, &bp),
                   ATTN_OK);
  assert_true(attn_backward_plan_workspace_size(bp) > 0);
  assert_int_equal(attn_plan_execute(fwd, s.q, s.k, s.v, s.out, NULL, s.lse), ATTN_OK);
  const int64_t before = cnt.allocs;
  for (int r = 0; r < 3; r++)
    assert_int_equal(attn_backward_execute(bp, s.q, s.k, s.v, s.out, s.lse, s.dout, s.dq, s.dk,
                                           s.dv, NULL),
                     ATTN_OK);
  assert_int_equal(cnt.allocs, before);
  attn_backward_plan_destroy(bp);
  attn_plan_destroy(fwd);
  attn_desc_destroy(d);
  poison_free(&s);
  attn_context_destroy(ctx);
  assert_int_equal(cnt.outstanding_bytes, 0);
}

static bool all_equal(const attn_tensor *t, double v) {
  const size_t n = (size_t)attn_tensor_numel(t);
  double *x = read_all(t);
  bool ok = true;
  for (size_t i = 0; i < n; i++) ok = ok && x[i] == v;
  free(x);
  return ok;
}

static void fill(attn_tensor *t, double v) {
  const int64_t n = attn_tensor_numel(t);
  for (int64_t i = 0; i < n; i++) *elem64(t, i) = v;
}

/* Bad input: documented status, a message naming the argument, outputs untouched. */
/* The sink gradient's own bad input: a count other than H; a sink logit
 * turned NaN after planning fails the execute and writes nothing. */
static void test_sink_grad_bad_input(void **state) {
  (void)state;
  const bcase c = {"sinkbad", ATTN_VARIANT_EXACT, 1, 2, 2, 5, 6, 4, 4, 0, -1, -1, .sinks = true};
  bsetup s;
  setup_case(&s, &c, ATTN_DTYPE_F64, 1);
  attn_backward_plan *bp = NULL;
  assert_int_equal(attn_backward_plan_create(s.fwd, s.dout, s.dq, s.dk, s.dv, NULL, &bp), ATTN_OK);
  assert_int_equal(attn_backward_plan_set_sink_grad(bp, s.dsinks, 3), ATTN_ERR_SHAPE);
  assert_non_null(strstr(attn_context_last_error(s.ctx), "dsinks"));
  s.dsinks[0] = s.dsinks[1] = 9;
  assert_int_equal(attn_backward_plan_set_sink_grad(bp, s.dsinks, 2), ATTN_OK);
  assert_int_equal(attn_plan_execute(s.fwd, s.q, s.k, s.v, s.out, NULL, s.lse), ATTN_OK);
  fill(s.dq, 7.0);
  s.sinks[0] = NAN;
  assert_int_equal(attn_backward_execute(bp, s.q, s.k, s.v, s.out, s.lse, s.dout, s.dq, s.dk,
                                         s.dv, NULL),
                   ATTN_ERR_INVALID_ARG);
  assert_non_null(strstr(attn_context_last_error(s.ctx), "sinks"));
  assert_true(all_equal(s.dq, 7.0));
  assert_true(s.dsinks[0] == 9 && s.dsinks[1] == 9);
  s.sinks[0] = 0.25;
  assert_int_equal(attn_backward_execute(bp, s.q, s.k, s.v, s.out, s.lse, s.dout, s.dq, s.dk,
                                         s.dv, NULL),
                   ATTN_OK);
  assert_true(isfinite(s.dsinks[0]) && s.dsinks[0] != 9);
  attn_backward_plan_destroy(bp);
  poison_free(&s);
}

static void test_bad_input(void **state) {
  (void)state;
  const bcase c = {"bad", ATTN_VARIANT_EXACT, 1, 2, 2, 5, 6, 4, 4, 0, -1, -1, .klen = false};
  bsetup s;
  setup_case(&s, &c, ATTN_DTYPE_F64, 1);
  attn_context *ctx = s.ctx;
  attn_backward_plan *bp = (attn_backward_plan *)(uintptr_t)1;
  attn_backward_plan *const sentinel = bp;
  assert_int_equal(attn_backward_plan_create(NULL, s.dout, s.dq, s.dk, s.dv, NULL, &bp),
                   ATTN_ERR_NULL_ARG);
  assert_int_equal(attn_backward_plan_create(s.fwd, NULL, s.dq, s.dk, s.dv, NULL, &bp),
                   ATTN_ERR_NULL_ARG);
  assert_non_null(strstr(attn_context_last_error(ctx), "dout"));
  assert_int_equal(attn_backward_plan_create(s.fwd, s.dout, s.dq, s.dk, s.dv, NULL, NULL),
                   ATTN_ERR_NULL_ARG);
  /* dout's shape differs from out's. */
  attn_tensor *wrong = tu_tensor4(ctx, ATTN_DTYPE_F64, NULL, 1, 2, 4, 4, false);
  assert_int_equal(attn_backward_plan_create(s.fwd, wrong, s.dq, s.dk, s.dv, NULL, &bp),
                   ATTN_ERR_SHAPE);
  assert_non_null(strstr(attn_context_last_error(ctx), "dout"));
  assert_int_equal(attn_backward_plan_create(s.fwd, s.dout, wrong, s.dk, s.dv, NULL, &bp),
                   ATTN_ERR_SHAPE);
  assert_non_null(strstr(attn_context_last_error(ctx), "dq"));
  /* dtype mismatch. */
  attn_tensor *f32 = tu_tensor4(ctx, ATTN_DTYPE_F32, NULL, 1, 2, 5, 4, false);
  assert_int_equal(attn_backward_plan_create(s.fwd, f32, s.dq, s.dk, s.dv, NULL, &bp),
                   ATTN_ERR_DTYPE);
  assert_non_null(strstr(attn_context_last_error(ctx), "dout"));
  assert_int_equal(attn_backward_plan_create(s.fwd, s.dout, f32, s.dk, s.dv, NULL, &bp),
                   ATTN_ERR_DTYPE);
  /* dk with overlapping rows (stride 0 on the sequence). */
  const int64_t shk[4] = {1, 2, 6, 4}, stk[4] = {8, 4, 0, 1};
  double mem[64];
  attn_tensor *bcast = NULL;
  assert_int_equal(attn_tensor_wrap(ctx, ATTN_DTYPE_F64, 4, shk, stk, mem, &bcast), ATTN_OK);
  assert_int_equal(attn_backward_plan_create(s.fwd, s.dout, s.dq, bcast, s.dv, NULL, &bp),
                   ATTN_ERR_LAYOUT);
  /* dmask without an additive mask. */
  const int64_t shm[4] = {1, 2, 5, 6};
  attn_tensor *dm = tu_tensor(ctx, ATTN_DTYPE_F64, NULL, 4, shm);
  assert_int_equal(attn_backward_plan_create(s.fwd, s.dout, s.dq, s.dk, s.dv, dm, &bp),
                   ATTN_ERR_INVALID_ARG);
  assert_non_null(strstr(attn_context_last_error(ctx), "dmask"));
  assert_ptr_equal(bp, sentinel);

  /* A forward plan without lse. */
  attn_plan *nolse = NULL;
  assert_int_equal(attn_plan_create(ctx, s.desc, s.q, s.k, s.v, s.out, NULL, NULL, &nolse), ATTN_OK);
  assert_int_equal(attn_backward_plan_create(nolse, s.dout, s.dq, s.dk, s.dv, NULL, &bp),
                   ATTN_ERR_INVALID_ARG);
  assert_non_null(strstr(attn_context_last_error(ctx), "lse"));
  attn_plan_destroy(nolse);
  /* Unsupported variant: Swin (S = 2×2 grid, 2×2 windows). */
  attn_desc *d2 = NULL;
  attn_plan *sw = NULL;
  attn_tensor *t4 = tu_tensor4(ctx, ATTN_DTYPE_F64, NULL, 1, 2, 4, 4, false);
  attn_tensor *o4 = tu_tensor4(ctx, ATTN_DTYPE_F64, NULL, 1, 2, 4, 4, false);
  const int64_t l4s[3] = {1, 2, 4};
  attn_tensor *l4 = tu_tensor(ctx, ATTN_DTYPE_F64, NULL, 3, l4s);
  assert_int_equal(attn_desc_create(ctx, &d2), ATTN_OK);
  assert_int_equal(attn_desc_set_variant(d2, ATTN_VARIANT_SWIN), ATTN_OK);
  assert_int_equal(attn_desc_set_swin(d2, 2, 2, 2, 0), ATTN_OK);
  assert_int_equal(attn_plan_create(ctx, d2, t4, t4, t4, o4, NULL, l4, &sw), ATTN_OK);
  assert_int_equal(attn_backward_plan_create(sw, o4, o4, o4, o4, NULL, &bp), ATTN_ERR_UNSUPPORTED);
  assert_non_null(strstr(attn_context_last_error(ctx), "forward"));
  attn_plan_destroy(sw);
  attn_desc_destroy(d2);
  /* The Performer (no lse): the linear backward takes no lse at execute. */
  attn_plan *pf = NULL;
  assert_int_equal(attn_desc_create(ctx, &d2), ATTN_OK);
  assert_int_equal(attn_desc_set_variant(d2, ATTN_VARIANT_PERFORMER), ATTN_OK);
  assert_int_equal(attn_plan_create(ctx, d2, t4, t4, t4, o4, NULL, NULL, &pf), ATTN_OK);
  attn_tensor *g4[3] = {tu_tensor4(ctx, ATTN_DTYPE_F64, NULL, 1, 2, 4, 4, false),
                        tu_tensor4(ctx, ATTN_DTYPE_F64, NULL, 1, 2, 4, 4, false),
                        tu_tensor4(ctx, ATTN_DTYPE_F64, NULL, 1, 2, 4, 4, false)};
  attn_backward_plan *bpf = NULL;
  assert_int_equal(attn_backward_plan_create(pf, o4, g4[0], g4[1], g4[2], NULL, &bpf), ATTN_OK);
  assert_int_equal(attn_plan_execute(pf, t4, t4, t4, o4, NULL, NULL), ATTN_OK);
  assert_int_equal(attn_backward_execute(bpf, t4, t4, t4, o4, l4, o4, g4[0], g4[1], g4[2], NULL),
                   ATTN_ERR_MISMATCH);
  assert_non_null(strstr(attn_context_last_error(ctx), "lse"));
  assert_int_equal(attn_backward_execute(bpf, t4, t4, t4, o4, NULL, o4, g4[0], g4[1], g4[2], NULL),
                   ATTN_OK);
  attn_backward_plan_destroy(bpf);
  attn_plan_destroy(pf);
  attn_desc_destroy(d2);
  for (int i = 0; i < 3; i++) tu_tensor_free(g4[i]);
  tu_tensor_free(t4);
  tu_tensor_free(o4);
  tu_tensor_free(l4);
  assert_ptr_equal(bp, sentinel);

  /* Execute: missing lse, mismatching tensors, dmask given against plan time. */
  assert_int_equal(attn_backward_plan_create(s.fwd, s.dout, s.dq, s.dk, s.dv, NULL, &bp), ATTN_OK);
  /* The sink gradient: no sinks in this forward; NULL plan; NULL with a count. */
  double dsk[2] = {5, 5};
  assert_int_equal(attn_backward_plan_set_sink_grad(bp, dsk, 2), ATTN_ERR_INVALID_ARG);
  assert_non_null(strstr(attn_context_last_error(ctx), "dsinks"));
  assert_int_equal(attn_backward_plan_set_sink_grad(NULL, dsk, 2), ATTN_ERR_NULL_ARG);
  assert_int_equal(attn_backward_plan_set_sink_grad(bp, NULL, 2), ATTN_ERR_NULL_ARG);
  assert_int_equal(attn_backward_plan_set_sink_grad(bp, NULL, 0), ATTN_OK);
  assert_int_equal(attn_plan_execute(s.fwd, s.q, s.k, s.v, s.out, NULL, s.lse), ATTN_OK);
  fill(s.dq, 7.0);
  fill(s.dk, 7.0);
  fill(s.dv, 7.0);
  assert_int_equal(attn_backward_execute(NULL, s.q, s.k, s.v, s.out, s.lse, s.dout, s.dq, s.dk,
                                         s.dv, NULL),
                   ATTN_ERR_NULL_ARG);
  assert_int_equal(attn_backward_execute(bp, s.q, s.k, s.v, s.out, NULL, s.dout, s.dq, s.dk, s.dv,
                                         NULL),
                   ATTN_ERR_NULL_ARG);
  assert_non_null(strstr(attn_context_last_error(ctx), "lse"));
  assert_int_equal(attn_backward_execute(bp, s.q, s.k, s.v, s.out, s.lse, wrong, s.dq, s.dk, s.dv,
                                         NULL),
                   ATTN_ERR_MISMATCH);
  assert_non_null(strstr(attn_context_last_error(ctx), "dout"));
  assert_int_equal(attn_backward_execute(bp, s.q, s.k, s.v, s.out, s.lse, s.dout, f32, s.dk, s.dv,
                                         NULL),
                   ATTN_ERR_MISMATCH);
  assert_int_equal(attn_backward_execute(bp, s.q, s.k, s.v, s.out, s.lse, s.dout, s.dq, s.dk, s.dv,
                                         dm),
                   ATTN_ERR_MISMATCH);
  assert_non_null(strstr(attn_context_last_error(ctx), "dmask"));
  assert_true(all_equal(s.dq, 7.0));
  assert_true(all_equal(s.dk, 7.0));
  assert_true(all_equal(s.dv, 7.0));
  assert_int_equal(attn_backward_execute(bp, s.q, s.k, s.v, s.out, s.lse, s.dout, s.dq, s.dk, s.dv,
                                         NULL),
                   ATTN_OK);
  assert_false(all_equal(s.dq, 7.0));
  attn_backward_plan_destroy(bp);
  attn_backward_plan_destroy(NULL);
  assert_int_equal(attn_backward_plan_workspace_size(NULL), 0);
  tu_tensor_free(wrong);
  tu_tensor_free(f32);
  tu_tensor_free(dm);
  attn_tensor_destroy(bcast);
  poison_free(&s);
}

/* Copy the logical values of src into dst (same shape; dst f64). */
static void copy_values(attn_tensor *dst, const attn_tensor *src) {
  double *x = read_all(src);
  for (int64_t i = 0; i < attn_tensor_numel(src); i++) *elem64(dst, i) = x[i];
  free(x);
}

/* bf16 and f16 plans: the gradients against the f64 backward of the same
 * 16-bit inputs, within a bound set by the 16-bit out (D = dout·out) and the
 * rounding of each gradient; bitwise identical on 1 and 3 threads. */
static void test_16bit(void **state) {
  (void)state;
  const bcase cs[] = {
      {"h_plain", ATTN_VARIANT_EXACT, 2, 2, 2, 37, 45, 16, 8, 0, -1, -1, .klen = false},
      {"h_gqa_masks", ATTN_VARIANT_EXACT, 2, 4, 2, 40, 41, 16, 16, ATTN_CAUSAL_BOTTOM_RIGHT, 9, -1,
       .klen = true, .qlen = true, .amask = true, .dmask = true, .alibi = true, .softcap = 2.5},
      {"h_bool_sinks_bshd", ATTN_VARIANT_EXACT, 1, 3, 3, 33, 30, 8, 8, 0, -1, -1, .bmask = true,
       .sinks = true, .bshd = true, .score = ATTN_SCORE_DOT, .scale = 0.3},
      {"h_longformer", ATTN_VARIANT_LONGFORMER, 1, 2, 2, 48, 48, 8, 8, 0, 6, 6, .block = 8},
  };
  const attn_dtype dts[2] = {ATTN_DTYPE_BF16, ATTN_DTYPE_F16};
  for (int di = 0; di < 2; di++) {
    /* Unit roundoff of the storage: bf16 2⁻⁹, f16 2⁻¹². */
    const double u = di == 0 ? 1.0 / 512 : 1.0 / 4096;
    for (size_t ci = 0; ci < sizeof cs / sizeof cs[0]; ci++) {
      const bcase *c = &cs[ci];
      bsetup h, h1, r;
      setup_case(&h, c, dts[di], 3);
      setup_case(&h1, c, dts[di], 1);
      setup_case(&r, c, ATTN_DTYPE_F64, 1);
      copy_values(r.q, h.q), copy_values(r.k, h.k), copy_values(r.v, h.v);
      copy_values(r.dout, h.dout);
      if (c->amask) copy_values(r.am, h.am);
      run_backward(&r, 0, 0);
      run_backward(&h, 8, 16);
      run_backward(&h1, 8, 16);
      const attn_tensor *gh[NGRAD], *g1[NGRAD], *gr[NGRAD];
      const char *names[NGRAD];
      const int ng = grads_of(&h, NULL, gh, names);
      grads_of(&h1, NULL, g1, NULL);
      grads_of(&r, NULL, gr, NULL);
      for (int g = 0; g < ng; g++) {
        if (gh[g] == NULL) continue;
        const size_t n = (size_t)attn_tensor_numel(gh[g]);
        double *a = read_all(gh[g]), *a1 = read_all(g1[g]), *b = read_all(gr[g]);
        if (memcmp(a, a1, n * sizeof(double)) != 0)
          fail_msg("%s %s: %s differs between 3 threads and 1", c->name, attn_dtype_name(dts[di]),
                   names[g]);
        const double e = rel_err(a, b, n);
        /* Measured: 0.8–1.9 u normwise (the rounded out and gradient). */
        if (!(e <= 4 * u))
          fail_msg("%s %s: %s normwise error %.3g vs f64 (bound %.3g)", c->name,
                   attn_dtype_name(dts[di]), names[g], e, 4 * u);
        free(a), free(a1), free(b);
      }
      poison_free(&h);
      poison_free(&h1);
      poison_free(&r);
    }
  }
}

/* Scores with weights: NaN in q rows past the query length and k/v rows
 * past the key length reach no gradient, the weights' included. */
static void test_poison_weights(void **state) {
  (void)state;
  const bcase cs[] = {
      {"poison_general", ATTN_VARIANT_EXACT, 2, 2, 1, 9, 11, 4, 4, 0, -1, -1, .klen = true,
       .qlen = true, .score = ATTN_SCORE_GENERAL, .Dq = 5},
      {"poison_additive", ATTN_VARIANT_EXACT, 2, 2, 1, 9, 11, 4, 4, ATTN_CAUSAL_BOTTOM_RIGHT, -1,
       -1, .klen = true, .qlen = true, .score = ATTN_SCORE_ADDITIVE, .A = 6, .abias = true,
       .Dq = 5},
  };
  for (size_t ci = 0; ci < sizeof cs / sizeof cs[0]; ci++) {
    const bcase *c = &cs[ci];
    const int64_t Dq = c->Dq;
    bsetup clean, dirty;
    setup_case(&clean, c, ATTN_DTYPE_F64, 2);
    setup_case(&dirty, c, ATTN_DTYPE_F64, 2);
    double *qd = attn_tensor_data(dirty.q), *kd = attn_tensor_data(dirty.k);
    double *vd = attn_tensor_data(dirty.v);
    for (int64_t b = 0; b < c->B; b++) {
      for (int64_t h = 0; h < c->H; h++)
        for (int64_t i = dirty.qlen[b]; i < c->Sq; i++)
          for (int64_t x = 0; x < Dq; x++) qd[((b * c->H + h) * c->Sq + i) * Dq + x] = NAN;
      for (int64_t h = 0; h < c->Hkv; h++)
        for (int64_t j = dirty.klen[b]; j < c->Sk; j++)
          for (int64_t x = 0; x < c->D; x++) {
            kd[((b * c->Hkv + h) * c->Sk + j) * c->D + x] = NAN;
            vd[((b * c->Hkv + h) * c->Sk + j) * c->Dv + x] = NAN;
          }
    }
    run_backward(&clean, 2, 3);
    run_backward(&dirty, 2, 3);
    const attn_tensor *gc[NGRAD], *gd[NGRAD];
    const char *names[NGRAD];
    const int ng = grads_of(&clean, NULL, gc, names);
    grads_of(&dirty, NULL, gd, NULL);
    for (int g = 0; g < ng; g++) {
      if (gc[g] == NULL) continue;
      const size_t n = (size_t)attn_tensor_numel(gc[g]);
      double *a = read_all(gc[g]), *b = read_all(gd[g]);
      for (size_t x = 0; x < n; x++)
        if (!(a[x] == b[x]))
          fail_msg("%s: %s element %zu: %g vs clean %g", c->name, names[g], x, b[x], a[x]);
      free(a);
      free(b);
    }
    poison_free(&clean);
    poison_free(&dirty);
  }
}

/* The weight-gradient setters' bad input: a status naming the tensor,
 * nothing set; unsetting and setting again. */
static void test_score_grad_bad_input(void **state) {
  (void)state;
  const bcase cg = {"gbad", ATTN_VARIANT_EXACT, 1, 2, 2, 5, 6, 4, 4, 0, -1, -1,
                    .score = ATTN_SCORE_GENERAL, .Dq = 3};
  const bcase ca = {"abad", ATTN_VARIANT_EXACT, 1, 2, 2, 5, 6, 4, 4, 0, -1, -1,
                    .score = ATTN_SCORE_ADDITIVE, .A = 3};
  bsetup g, a;
  setup_case(&g, &cg, ATTN_DTYPE_F64, 1);
  setup_case(&a, &ca, ATTN_DTYPE_F64, 1);
  attn_backward_plan *bg = NULL, *ba = NULL;
  assert_int_equal(attn_backward_plan_create(g.fwd, g.dout, g.dq, g.dk, g.dv, NULL, &bg), ATTN_OK);
  assert_int_equal(attn_backward_plan_create(a.fwd, a.dout, a.dq, a.dk, a.dv, NULL, &ba), ATTN_OK);
  attn_tensor **w = a.dw;
  assert_int_equal(attn_backward_plan_set_general_grad(NULL, g.dw[SW_GW]), ATTN_ERR_NULL_ARG);
  assert_int_equal(attn_backward_plan_set_additive_grads(NULL, w[SW_WQ], w[SW_WK], NULL, w[SW_V]),
                   ATTN_ERR_NULL_ARG);
  /* The other score's setter. */
  assert_int_equal(attn_backward_plan_set_additive_grads(bg, w[SW_WQ], w[SW_WK], NULL, w[SW_V]),
                   ATTN_ERR_INVALID_ARG);
  assert_non_null(strstr(attn_context_last_error(g.ctx), "dw_q"));
  assert_int_equal(attn_backward_plan_set_general_grad(ba, g.dw[SW_GW]), ATTN_ERR_INVALID_ARG);
  assert_non_null(strstr(attn_context_last_error(a.ctx), "dw"));
  /* Shapes (dW is [d_q, d_k] = [3, 4]) and dtype. */
  const int64_t sh43[2] = {4, 3};
  attn_tensor *t43 = tu_tensor(g.ctx, ATTN_DTYPE_F64, NULL, 2, sh43);
  assert_int_equal(attn_backward_plan_set_general_grad(bg, t43), ATTN_ERR_SHAPE);
  assert_non_null(strstr(attn_context_last_error(g.ctx), "dw"));
  const int64_t sh[2] = {3, 4};
  attn_tensor *f32 = tu_tensor(g.ctx, ATTN_DTYPE_F32, NULL, 2, sh);
  assert_int_equal(attn_backward_plan_set_general_grad(bg, f32), ATTN_ERR_DTYPE);
  assert_int_equal(attn_backward_plan_set_additive_grads(ba, t43, w[SW_WK], NULL, w[SW_V]),
                   ATTN_ERR_SHAPE);
  assert_non_null(strstr(attn_context_last_error(a.ctx), "dw_q"));
  assert_int_equal(attn_backward_plan_set_additive_grads(ba, w[SW_WQ], NULL, NULL, w[SW_V]),
                   ATTN_ERR_NULL_ARG);
  assert_non_null(strstr(attn_context_last_error(a.ctx), "dw_k"));
  /* dbias with no bias in the forward; v's gradient of the wrong length. */
  assert_int_equal(attn_backward_plan_set_additive_grads(ba, w[SW_WQ], w[SW_WK], w[SW_V], w[SW_V]),
                   ATTN_ERR_INVALID_ARG);
  assert_non_null(strstr(attn_context_last_error(a.ctx), "dbias"));
  const int64_t sh4[1] = {4};
  attn_tensor *v4 = tu_tensor(a.ctx, ATTN_DTYPE_F64, NULL, 1, sh4);
  assert_int_equal(attn_backward_plan_set_additive_grads(ba, w[SW_WQ], w[SW_WK], NULL, v4),
                   ATTN_ERR_SHAPE);
  assert_non_null(strstr(attn_context_last_error(a.ctx), "dv"));
  /* Overlapping elements (stride 0). */
  double mem[16];
  const int64_t st0[1] = {0};
  const int64_t sh3[1] = {3};
  attn_tensor *bc = NULL;
  assert_int_equal(attn_tensor_wrap(a.ctx, ATTN_DTYPE_F64, 1, sh3, st0, mem, &bc), ATTN_OK);
  assert_int_equal(attn_backward_plan_set_additive_grads(ba, w[SW_WQ], w[SW_WK], NULL, bc),
                   ATTN_ERR_LAYOUT);
  /* Set, then unset (NULL): execute runs without it; set again, it is written. */
  assert_int_equal(attn_backward_plan_set_general_grad(bg, g.dw[SW_GW]), ATTN_OK);
  assert_int_equal(attn_plan_execute(g.fwd, g.q, g.k, g.v, g.out, NULL, g.lse), ATTN_OK);
  fill(g.dq, 7.0);
  fill(g.dw[SW_GW], 7.0);
  assert_int_equal(attn_backward_plan_set_general_grad(bg, NULL), ATTN_OK);
  assert_int_equal(attn_backward_execute(bg, g.q, g.k, g.v, g.out, g.lse, g.dout, g.dq, g.dk,
                                         g.dv, NULL),
                   ATTN_OK);
  assert_true(all_equal(g.dw[SW_GW], 7.0));
  assert_false(all_equal(g.dq, 7.0));
  assert_int_equal(attn_backward_plan_set_general_grad(bg, g.dw[SW_GW]), ATTN_OK);
  assert_int_equal(attn_backward_execute(bg, g.q, g.k, g.v, g.out, g.lse, g.dout, g.dq, g.dk,
                                         g.dv, NULL),
                   ATTN_OK);
  assert_false(all_equal(g.dw[SW_GW], 7.0));
  attn_tensor_destroy(bc);
  tu_tensor_free(f32);
  tu_tensor_free(v4);
  tu_tensor_free(t43);
  attn_backward_plan_destroy(bg);
  attn_backward_plan_destroy(ba);
  poison_free(&g);
  poison_free(&a);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_finite_differences), cmocka_unit_test(test_f32_vs_f64),
      cmocka_unit_test(test_threads_bitwise),    cmocka_unit_test(test_poison),
      cmocka_unit_test(test_no_alloc_in_execute), cmocka_unit_test(test_bad_input),
      cmocka_unit_test(test_sink_grad_bad_input), cmocka_unit_test(test_poison_weights),
      cmocka_unit_test(test_score_grad_bad_input), cmocka_unit_test(test_16bit),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}

/* The multi-head layer's training step (attn_mha_forward_train,
 * attn_mha_backward_execute):
 *
 *  - f64: every gradient (inputs, in-projection weights and biases packed
 *    or separate, out-projection, bias_k/bias_v) against central finite
 *    differences of L = Σ dout ∘ out through the ordinary forward
 *    (attn_mha_plan_execute), for self-attention (one input, its gradient
 *    the sum of three), kdim/vdim, GQA/MQA, add_bias_kv, add_zero_attn,
 *    key padding with a fully padded item, causal, bool and additive masks
 *    combined with padding, either sequence order, padded rows (the
 *    per-batch GEMM path) and single-row items. Normwise error ≤ 1e-6.
 *  - the training forward's out equals attn_mha_plan_execute's bitwise.
 *  - f32: bitwise identical gradients on 1..4 threads; no allocation in
 *    either call; nothing leaks.
 *  - bad input: documented status, the argument named, outputs untouched.
 * (Equality with PyTorch's nn.MultiheadAttention autograd in f32:
 * tests/oracle/test_mha_torch.py.) */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "testutil.h"

typedef struct gcase {
  const char *name;
  int64_t E, H, Hkv, B, Sq, Sk, kdim, vdim;
  bool bias, bias_kv, zero_attn, batch_first, self, packed, kpm, causal, bmask, amask, pad;
} gcase;

/* Parameters in attn_mha_weights / attn_mha_grads order. */
enum { P_IN, P_Q, P_K, P_V, P_INB, P_OUT, P_OUTB, P_BK, P_BV, P_N };
static const char *const pnames[P_N] = {"in_proj_weight", "q_proj_weight", "k_proj_weight",
                                        "v_proj_weight",  "in_proj_bias",  "out_proj_weight",
                                        "out_proj_bias",  "bias_k",        "bias_v"};

typedef struct layer {
  const gcase *c;
  attn_dtype dt;
  attn_context *ctx;
  attn_desc *desc;
  attn_mha *m;
  attn_tensor *p[P_N], *g[P_N];
  attn_tensor *q, *k, *v, *kpm, *out, *dout, *dq, *dk, *dv, *bm, *am;
  attn_mha_plan *fwd;
  attn_mha_backward_plan *bp;
  void *saved;
  size_t saved_n;
} layer;

/* A [B, S, F] operand in the layer's order, rows padded by `pad` elements,
 * filled with uniform [-1, 1) (NULL seed: zeros). */
static attn_tensor *seq(attn_context *ctx, attn_dtype dt, int64_t B, int64_t S, int64_t F,
                        bool batch_first, int64_t pad, uint64_t *seed) {
  const int64_t row = F + pad;
  int64_t shape[3], strides[3];
  if (batch_first) {
    shape[0] = B, shape[1] = S, strides[0] = S * row + pad, strides[1] = row;
  } else {
    shape[0] = S, shape[1] = B, strides[0] = B * row + pad, strides[1] = row;
  }
  shape[2] = F, strides[2] = 1;
  const size_t n = (size_t)(shape[0] * strides[0] + 8);
  void *mem = calloc(n, dt == ATTN_DTYPE_F64 ? 8 : tu_is_16bit(dt) ? 2 : 4);
  attn_tensor *t = NULL;
  assert_int_equal(attn_tensor_wrap(ctx, dt, 3, shape, strides, mem, &t), ATTN_OK);
  for (size_t i = 0; seed != NULL && i < n; i++) tu_store(mem, dt, (int64_t)i, tu_uniform(seed, -1, 1));
  return t;
}

static attn_tensor *param(attn_context *ctx, attn_dtype dt, int32_t rank, const int64_t *shape,
                          uint64_t *seed, double amp) {
  int64_t n = 1;
  for (int i = 0; i < rank; i++) n *= shape[i];
  double *x = calloc((size_t)n, sizeof *x);
  for (int64_t i = 0; seed != NULL && i < n; i++) x[i] = tu_uniform(seed, -amp, amp);
  attn_tensor *t = tu_tensor(ctx, dt, x, rank, shape);
  free(x);
  return t;
}

static void free_wrapped(attn_tensor *t) {
  if (t == NULL) return;
  void *mem = attn_tensor_data(t);
  attn_tensor_destroy(t);
  free(mem);
}

/* Logical element i of t (C order of its shape) as a buffer offset. */
static int64_t elem_off(const attn_tensor *t, int64_t i) {
  int64_t off = 0;
  for (int d = attn_tensor_rank(t) - 1; d >= 0; d--) {
    const int64_t n = attn_tensor_dim(t, d);
    off += (i % n) * attn_tensor_stride(t, d);
    i /= n;
  }
  return off;
}

static void layer_make(layer *L, const gcase *c, attn_dtype dt, attn_context *ctx, uint64_t seed) {
  memset(L, 0, sizeof *L);
  L->c = c;
  L->dt = dt;
  L->ctx = ctx;
  const int64_t E = c->E, D = E / c->H, Ekv = c->Hkv * D;
  const int64_t kdim = c->kdim ? c->kdim : E, vdim = c->vdim ? c->vdim : E;
  attn_mha_config cfg;
  attn_mha_config_init(&cfg);
  cfg.embed_dim = E, cfg.num_heads = c->H, cfg.num_kv_heads = c->Hkv;
  cfg.kdim = c->kdim, cfg.vdim = c->vdim, cfg.bias = c->bias;
  cfg.add_bias_kv = c->bias_kv, cfg.add_zero_attn = c->zero_attn;
  cfg.batch_first = c->batch_first, cfg.dtype = dt;
  const int64_t shp[P_N][3] = {{E + 2 * Ekv, E}, {E, E},  {Ekv, kdim}, {Ekv, vdim}, {E + 2 * Ekv},
                               {E, E},           {E},     {1, 1, Ekv}, {1, 1, Ekv}};
  const int32_t rank[P_N] = {2, 2, 2, 2, 1, 2, 1, 3, 3};
  bool has[P_N] = {false};
  has[P_IN] = c->packed;
  has[P_Q] = has[P_K] = has[P_V] = !c->packed;
  has[P_INB] = has[P_OUTB] = c->bias;
  has[P_OUT] = true;
  has[P_BK] = has[P_BV] = c->bias_kv;
  for (int i = 0; i < P_N; i++)
    if (has[i]) {
      L->p[i] = param(ctx, dt, rank[i], shp[i], &seed, 0.6);
      L->g[i] = param(ctx, dt, rank[i], shp[i], NULL, 0);
    }
  attn_mha_weights w;
  attn_mha_weights_init(&w);
  w.in_proj_weight = L->p[P_IN], w.q_proj_weight = L->p[P_Q], w.k_proj_weight = L->p[P_K];
  w.v_proj_weight = L->p[P_V], w.in_proj_bias = L->p[P_INB], w.out_proj_weight = L->p[P_OUT];
  w.out_proj_bias = L->p[P_OUTB], w.bias_k = L->p[P_BK], w.bias_v = L->p[P_BV];
  assert_int_equal(attn_mha_create(ctx, &cfg, &w, &L->m), ATTN_OK);

  const int64_t pad = c->pad ? 3 : 0;
  L->q = seq(ctx, dt, c->B, c->Sq, E, c->batch_first, pad, &seed);
  if (c->self) {
    L->k = L->v = L->q;
  } else {
    L->k = seq(ctx, dt, c->B, c->Sk, kdim, c->batch_first, pad, &seed);
    L->v = seq(ctx, dt, c->B, c->Sk, vdim, c->batch_first, 0, &seed);
  }
  L->out = seq(ctx, dt, c->B, c->Sq, E, c->batch_first, 0, NULL);
  L->dout = seq(ctx, dt, c->B, c->Sq, E, c->batch_first, pad, &seed);
  L->dq = seq(ctx, dt, c->B, c->Sq, E, c->batch_first, pad, NULL);
  if (c->self) {
    L->dk = L->dv = L->dq;
  } else {
    L->dk = seq(ctx, dt, c->B, c->Sk, kdim, c->batch_first, 0, NULL);
    L->dv = seq(ctx, dt, c->B, c->Sk, vdim, c->batch_first, pad, NULL);
  }
  if (c->kpm) { /* item 0: every other key kept; item 1: all keys padded unless B = 1 */
    double *k = calloc((size_t)(c->B * c->Sk), sizeof *k);
    for (int64_t j = 0; j < c->Sk; j++) k[j] = (j % 2 == 0);
    for (int64_t b = 2; b < c->B; b++)
      for (int64_t j = 0; j < c->Sk; j++) k[b * c->Sk + j] = 1;
    const int64_t s[2] = {c->B, c->Sk};
    L->kpm = tu_tensor(ctx, ATTN_DTYPE_U8, k, 2, s);
    free(k);
  }
  assert_int_equal(attn_desc_create(ctx, &L->desc), ATTN_OK);
  if (c->causal) assert_int_equal(attn_desc_set_causal(L->desc, ATTN_CAUSAL_TOP_LEFT), ATTN_OK);
  if (c->bmask) {
    const int64_t s[4] = {1, 1, c->Sq, c->Sk};
    double *x = calloc((size_t)(c->Sq * c->Sk), sizeof *x);
    for (int64_t i = 0; i < c->Sq * c->Sk; i++) x[i] = (i % 3 != 1);
    L->bm = tu_tensor(ctx, ATTN_DTYPE_U8, x, 4, s);
    free(x);
    assert_int_equal(attn_desc_set_bool_mask(L->desc, L->bm), ATTN_OK);
  }
  if (c->amask) {
    const int64_t s[4] = {c->B, 1, c->Sq, c->Sk};
    L->am = param(ctx, dt, 4, s, &seed, 1.0);
    assert_int_equal(attn_desc_set_additive_mask(L->desc, L->am), ATTN_OK);
  }
  assert_int_equal(attn_mha_plan_create(L->m, L->desc, L->q, L->k, L->v, L->kpm, L->out, NULL,
                                        &L->fwd),
                   ATTN_OK);
  assert_int_equal(attn_mha_backward_plan_create(L->m, L->desc, L->q, L->k, L->v, L->kpm, L->out,
                                                 &L->bp),
                   ATTN_OK);
  L->saved_n = attn_mha_backward_saved_size(L->bp);
  assert_true(L->saved_n > 0);
  L->saved = malloc(L->saved_n + 1);
}

static void layer_free(layer *L) {
  attn_mha_backward_plan_destroy(L->bp);
  attn_mha_plan_destroy(L->fwd);
  attn_mha_destroy(L->m);
  attn_desc_destroy(L->desc);
  for (int i = 0; i < P_N; i++) {
    tu_tensor_free(L->p[i]);
    tu_tensor_free(L->g[i]);
  }
  attn_tensor *seqs[] = {L->q, L->c->self ? NULL : L->k, L->c->self ? NULL : L->v, L->out,
                         L->dout, L->dq, L->c->self ? NULL : L->dk, L->c->self ? NULL : L->dv};
  for (size_t i = 0; i < sizeof seqs / sizeof seqs[0]; i++) free_wrapped(seqs[i]);
  tu_tensor_free(L->kpm);
  tu_tensor_free(L->bm);
  tu_tensor_free(L->am);
  free(L->saved);
}

static attn_mha_grads grads_of(const layer *L) {
  attn_mha_grads g;
  attn_mha_grads_init(&g);
  g.in_proj_weight = L->g[P_IN], g.q_proj_weight = L->g[P_Q], g.k_proj_weight = L->g[P_K];
  g.v_proj_weight = L->g[P_V], g.in_proj_bias = L->g[P_INB], g.out_proj_weight = L->g[P_OUT];
  g.out_proj_bias = L->g[P_OUTB], g.bias_k = L->g[P_BK], g.bias_v = L->g[P_BV];
  return g;
}

/* One training step at a 1-byte offset of saved (any alignment is allowed). */
static void step(layer *L) {
  char *saved = (char *)L->saved + 1;
  assert_int_equal(attn_mha_forward_train(L->bp, L->q, L->k, L->v, L->kpm, L->out, saved,
                                          L->saved_n),
                   ATTN_OK);
  const attn_mha_grads g = grads_of(L);
  attn_status st = attn_mha_backward_execute(L->bp, L->q, L->k, L->v, L->kpm, L->dout, saved,
                                             L->saved_n, L->dq, L->c->self ? L->dq : L->dk,
                                             L->c->self ? L->dq : L->dv, &g);
  if (st != ATTN_OK) fail_msg("%s: %s", L->c->name, attn_context_last_error(L->ctx));
}

/* L = Σ dout ∘ out through the ordinary forward. */
static double loss(layer *L) {
  assert_int_equal(attn_mha_plan_execute(L->fwd, L->q, L->k, L->v, L->kpm, L->out, NULL), ATTN_OK);
  const int64_t n = attn_tensor_numel(L->out);
  double s = 0;
  for (int64_t i = 0; i < n; i++)
    s += tu_load(attn_tensor_data(L->out), L->dt, elem_off(L->out, i)) *
         tu_load(attn_tensor_data(L->dout), L->dt, elem_off(L->dout, i));
  return s;
}

/* Normwise relative error of the gradient g of x against central differences. */
static double fd_error(layer *L, attn_tensor *x, const attn_tensor *g) {
  const int64_t n = attn_tensor_numel(x);
  const double h = 1e-5;
  double num = 0, den = 0;
  void *data = attn_tensor_data(x);
  for (int64_t i = 0; i < n; i++) {
    const int64_t off = elem_off(x, i);
    const double x0 = tu_load(data, L->dt, off);
    tu_store(data, L->dt, off, x0 + h);
    const double lp = loss(L);
    tu_store(data, L->dt, off, x0 - h);
    const double lm = loss(L);
    tu_store(data, L->dt, off, x0);
    const double fd = (lp - lm) / (2 * h);
    const double got = tu_load(attn_tensor_data(g), L->dt, elem_off(g, i));
    num += (got - fd) * (got - fd);
    den += fd * fd;
  }
  return sqrt(num) / fmax(sqrt(den), 1e-300);
}

static const gcase cases[] = {
    {"self, packed, causal, batch-first", 8, 2, 2, 2, 5, 5, 0, 0, true, false, false, true, true,
     true, false, true, false, false, false},
    {"kdim/vdim, GQA, bias_kv, zero_attn, padding, seq-first", 8, 4, 2, 2, 4, 6, 6, 5, true, true,
     true, false, false, false, true, false, false, false, false},
    {"MQA, bool + additive masks with padding, padded rows", 6, 3, 1, 3, 3, 4, 0, 0, false, false,
     false, true, false, true, true, false, true, true, true},
    {"single query row, GQA, bias_kv, causal, seq-first", 8, 4, 1, 3, 1, 3, 0, 5, true, true,
     false, false, false, false, false, true, false, false, false},
};

static void gradients_match_finite_differences(void **state) {
  (void)state;
  attn_context *ctx = tu_context(2);
  for (size_t ci = 0; ci < sizeof cases / sizeof cases[0]; ci++) {
    layer L;
    layer_make(&L, &cases[ci], ATTN_DTYPE_F64, ctx, 7 + ci);
    step(&L);
    /* The training forward writes what the ordinary forward writes. */
    const int64_t n = attn_tensor_numel(L.out);
    double *o1 = malloc((size_t)n * sizeof *o1);
    for (int64_t i = 0; i < n; i++) o1[i] = tu_load(attn_tensor_data(L.out), L.dt, elem_off(L.out, i));
    loss(&L);
    for (int64_t i = 0; i < n; i++)
      if (o1[i] != tu_load(attn_tensor_data(L.out), L.dt, elem_off(L.out, i)))
        fail_msg("%s: training forward's out differs at %lld", L.c->name, (long long)i);
    free(o1);
    struct {
      const char *name;
      attn_tensor *x, *g;
    } checks[3 + P_N] = {{"dquery", L.q, L.dq}, {"dkey", L.k, L.dk}, {"dvalue", L.v, L.dv}};
    int nc = L.c->self ? 1 : 3;
    for (int i = 0; i < P_N; i++)
      if (L.p[i] != NULL) checks[nc].name = pnames[i], checks[nc].x = L.p[i], checks[nc++].g = L.g[i];
    for (int i = 0; i < nc; i++) {
      const double err = fd_error(&L, checks[i].x, checks[i].g);
      printf("  %-55s %-16s rel err %.2e\n", L.c->name, checks[i].name, err);
      if (!(err <= 1e-6)) fail_msg("%s: %s error %.3e > 1e-6", L.c->name, checks[i].name, err);
    }
    layer_free(&L);
  }
  attn_context_destroy(ctx);
}

/* Every output of a step as one vector of doubles. */
static double *collect(const layer *L, int64_t *count) {
  const attn_tensor *ts[3 + P_N] = {L->dq, L->c->self ? NULL : L->dk, L->c->self ? NULL : L->dv};
  for (int i = 0; i < P_N; i++) ts[3 + i] = L->g[i];
  int64_t n = 0;
  for (int i = 0; i < 3 + P_N; i++) n += ts[i] ? attn_tensor_numel(ts[i]) : 0;
  double *v = malloc((size_t)n * sizeof *v);
  int64_t at = 0;
  for (int i = 0; i < 3 + P_N; i++)
    for (int64_t e = 0; ts[i] && e < attn_tensor_numel(ts[i]); e++)
      v[at++] = tu_load(attn_tensor_data(ts[i]), attn_tensor_dtype(ts[i]), elem_off(ts[i], e));
  *count = n;
  return v;
}

static void bitwise_on_any_thread_count_and_no_allocation(void **state) {
  (void)state;
  gcase big = cases[1];
  big.name = "f32 threads";
  big.E = 64, big.H = 8, big.Hkv = 4, big.B = 3, big.Sq = 70, big.Sk = 90, big.kdim = 48,
  big.vdim = 40;
  gcase selfc = cases[0];
  selfc.E = 96, selfc.H = 4, selfc.Hkv = 4, selfc.B = 2, selfc.Sq = selfc.Sk = 130;
  const gcase *cs[2] = {&big, &selfc};
  for (int ci = 0; ci < 2; ci++) {
    double *ref = NULL;
    int64_t nref = 0;
    for (int32_t threads = 1; threads <= 4; threads++) {
      tu_counter cnt = {0, 0, 0, 0};
      attn_context *ctx = tu_counting_context(&cnt, threads);
      layer L;
      layer_make(&L, cs[ci], ATTN_DTYPE_F32, ctx, 11);
      step(&L); /* the pool starts on first use */
      const int64_t before = cnt.allocs;
      step(&L);
      assert_int_equal(cnt.allocs, before);
      int64_t n;
      double *got = collect(&L, &n);
      if (ref == NULL) {
        ref = got, nref = n;
      } else {
        assert_int_equal(n, nref);
        if (memcmp(got, ref, (size_t)n * sizeof *got) != 0)
          fail_msg("case %d: %d threads differ from 1 thread", ci, (int)threads);
        free(got);
      }
      layer_free(&L);
      attn_context_destroy(ctx);
      assert_int_equal(cnt.outstanding_bytes, 0);
    }
    free(ref);
  }
}

/* Bad input: the status, a message naming the argument, outputs untouched. */
static void bad_input_is_rejected(void **state) {
  (void)state;
  attn_context *ctx = tu_context(1);
  layer L;
  layer_make(&L, &cases[1], ATTN_DTYPE_F32, ctx, 3);
  step(&L);
  int64_t n0;
  double *before = collect(&L, &n0);
  char *saved = (char *)L.saved + 1;
  attn_mha_grads g = grads_of(&L);
#define EXPECT(call, status, word)                                                          \
  do {                                                                                      \
    assert_int_equal((call), (status));                                                     \
    if (strstr(attn_context_last_error(ctx), (word)) == NULL)                               \
      fail_msg("message '%s' does not name '%s'", attn_context_last_error(ctx), (word));    \
  } while (0)
#define BWD(dout, sv, n, dq, gr)                                                            \
  attn_mha_backward_execute(L.bp, L.q, L.k, L.v, L.kpm, (dout), (sv), (n), (dq), L.dk, L.dv, \
                            (gr))
  EXPECT(BWD(NULL, saved, L.saved_n, L.dq, &g), ATTN_ERR_NULL_ARG, "dout");
  EXPECT(BWD(L.dout, NULL, L.saved_n, L.dq, &g), ATTN_ERR_NULL_ARG, "saved");
  EXPECT(BWD(L.dout, saved, L.saved_n - 1, L.dq, &g), ATTN_ERR_INVALID_ARG, "saved_size");
  EXPECT(BWD(L.dk, saved, L.saved_n, L.dq, &g), ATTN_ERR_SHAPE, "dout");
  EXPECT(BWD(L.dout, saved, L.saved_n, L.dk, &g), ATTN_ERR_SHAPE, "dquery");
  EXPECT(attn_mha_backward_execute(L.bp, L.q, L.k, L.v, NULL, L.dout, saved, L.saved_n, L.dq,
                                   L.dk, L.dv, &g),
         ATTN_ERR_MISMATCH, "key_padding_mask");
  EXPECT(attn_mha_backward_execute(L.bp, L.q, L.dv, L.v, L.kpm, L.dout, saved, L.saved_n, L.dq,
                                   L.dk, L.dv, &g),
         ATTN_ERR_MISMATCH, "key");
  /* dkey sharing dvalue's memory with other metadata */
  attn_tensor *alias = NULL;
  const int64_t shp[3] = {attn_tensor_dim(L.dv, 0), attn_tensor_dim(L.dv, 1), 5};
  const int64_t str[3] = {attn_tensor_stride(L.dv, 0), attn_tensor_stride(L.dv, 1), 1};
  assert_int_equal(attn_tensor_wrap(ctx, ATTN_DTYPE_F32, 3, shp, str, attn_tensor_data(L.dk),
                                    &alias),
                   ATTN_OK);
  EXPECT(attn_mha_backward_execute(L.bp, L.q, L.k, L.v, L.kpm, L.dout, saved, L.saved_n, L.dq,
                                   L.dk, alias, &g),
         ATTN_ERR_INVALID_ARG, "dvalue");
  attn_tensor_destroy(alias);
  /* parameter gradients */
  attn_mha_grads bad = g;
  bad.struct_size = 8;
  EXPECT(BWD(L.dout, saved, L.saved_n, L.dq, &bad), ATTN_ERR_INVALID_ARG, "struct_size");
  bad = g;
  bad.in_proj_weight = L.g[P_Q]; /* a separate-weight layer has no packed weight */
  EXPECT(BWD(L.dout, saved, L.saved_n, L.dq, &bad), ATTN_ERR_INVALID_ARG, "in_proj_weight");
  bad = g;
  bad.k_proj_weight = L.g[P_Q];
  EXPECT(BWD(L.dout, saved, L.saved_n, L.dq, &bad), ATTN_ERR_SHAPE, "k_proj_weight");
  bad = g;
  bad.out_proj_bias = L.g[P_OUT];
  EXPECT(BWD(L.dout, saved, L.saved_n, L.dq, &bad), ATTN_ERR_SHAPE, "out_proj_bias");
  EXPECT(attn_mha_forward_train(L.bp, L.q, L.k, L.v, L.kpm, L.out, saved, 3),
         ATTN_ERR_INVALID_ARG, "saved_size");
  int64_t n1;
  double *after = collect(&L, &n1);
  assert_int_equal(n0, n1);
  assert_memory_equal(before, after, (size_t)n0 * sizeof *before);
  free(before);
  free(after);
  /* plan creation */
  attn_mha_backward_plan *bp = (attn_mha_backward_plan *)0x1;
  EXPECT(attn_mha_backward_plan_create(L.m, L.desc, L.q, L.k, L.v, L.kpm, L.dk, &bp),
         ATTN_ERR_SHAPE, "out");
  assert_ptr_equal(bp, (attn_mha_backward_plan *)0x1);
  EXPECT(attn_mha_backward_plan_create(L.m, L.desc, L.q, L.k, L.v, L.kpm, L.out, NULL),
         ATTN_ERR_NULL_ARG, "plan");
  assert_int_equal(attn_mha_backward_plan_create(NULL, NULL, NULL, NULL, NULL, NULL, NULL, &bp),
                   ATTN_ERR_NULL_ARG);
  attn_desc *sw = NULL;
  assert_int_equal(attn_desc_create(ctx, &sw), ATTN_OK);
  assert_int_equal(attn_desc_set_variant(sw, ATTN_VARIANT_SWIN), ATTN_OK);
  attn_status st = attn_mha_backward_plan_create(L.m, sw, L.q, L.k, L.v, NULL, L.out, &bp);
  assert_true(st != ATTN_OK);
  assert_ptr_equal(bp, (attn_mha_backward_plan *)0x1);
  attn_desc_destroy(sw);
  layer_free(&L);
  /* 16-bit layers have no backward yet */
  gcase h = cases[0];
  attn_mha_config cfg;
  attn_mha_config_init(&cfg);
  cfg.embed_dim = 8, cfg.num_heads = 2, cfg.batch_first = 1, cfg.bias = 0;
  cfg.dtype = ATTN_DTYPE_BF16;
  const int64_t ws[2] = {24, 8}, wo[2] = {8, 8};
  attn_tensor *w_in = param(ctx, ATTN_DTYPE_BF16, 2, ws, NULL, 0);
  attn_tensor *w_o = param(ctx, ATTN_DTYPE_BF16, 2, wo, NULL, 0);
  attn_mha_weights w;
  attn_mha_weights_init(&w);
  w.in_proj_weight = w_in, w.out_proj_weight = w_o;
  attn_mha *m = NULL;
  assert_int_equal(attn_mha_create(ctx, &cfg, &w, &m), ATTN_OK);
  attn_tensor *x = seq(ctx, ATTN_DTYPE_BF16, h.B, h.Sq, 8, true, 0, NULL);
  EXPECT(attn_mha_backward_plan_create(m, NULL, x, x, x, NULL, x, &bp), ATTN_ERR_UNSUPPORTED,
         "mha");
  free_wrapped(x);
  attn_mha_destroy(m);
  tu_tensor_free(w_in);
  tu_tensor_free(w_o);
  attn_context_destroy(ctx);
#undef BWD
#undef EXPECT
}

/* No leak when any allocation of plan creation fails. */
static void allocation_failure_is_clean(void **state) {
  (void)state;
  for (int64_t k = 1;; k++) {
    assert_true(k < 200);
    tu_counter cnt = {0, 0, 0, 0};
    attn_context *ctx = tu_counting_context(&cnt, 1);
    layer L;
    layer_make(&L, &cases[1], ATTN_DTYPE_F32, ctx, 5);
    attn_mha_backward_plan *bp = NULL;
    cnt.fail_at = cnt.allocs + k; /* the k-th allocation of plan creation fails */
    attn_status st = attn_mha_backward_plan_create(L.m, L.desc, L.q, L.k, L.v, L.kpm, L.out, &bp);
    cnt.fail_at = 0;
    if (st == ATTN_OK) {
      attn_mha_backward_plan_destroy(bp);
      layer_free(&L);
      attn_context_destroy(ctx);
      assert_int_equal(cnt.outstanding_bytes, 0);
      break;
    }
    assert_int_equal(st, ATTN_ERR_NO_MEMORY);
    layer_free(&L);
    attn_context_destroy(ctx);
    assert_int_equal(cnt.outstanding_bytes, 0);
  }
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(gradients_match_finite_differences),
      cmocka_unit_test(bitwise_on_any_thread_count_and_no_allocation),
      cmocka_unit_test(bad_input_is_rejected),
      cmocka_unit_test(allocation_failure_is_clean),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}

/* attn demo: every variant on a built-in workload, a table of numbers, and a
 * picture of each variant's attention pattern on a short sequence.
 *
 * The demo is a table of rows; each row configures an attn_desc through the
 * public setters. A row whose plan reports ATTN_ERR_UNSUPPORTED (the loaded
 * libattn.so lacks that variant, e.g. an older one than the headers) is shown
 * as "not built" rather than as an error. */
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "picture.h"

#define CMD "demo"

typedef struct dims {
  int64_t B, H, S, D;
  bool picture; /* the short sequence used for pictures */
} dims;

/* Resources a row's setup creates and the plan borrows; freed after the row. */
typedef struct aux {
  attn_tensor *t[6];
  int nt;
  attn_tensor *mass; /* the per-key mass output (one of t), or NULL */
  int64_t offsets[4]; /* packed batch */
  double sinks[1024];
  int64_t ints[64];
  double slopes[1024];
  char what[160];
} aux;

static void aux_free(aux *x) {
  for (int i = 0; i < x->nt; i++) attn_tensor_destroy(x->t[i]);
  x->nt = 0;
}

typedef attn_status (*setup_fn)(attn_context *ctx, attn_desc *d, const dims *dm, aux *x);

static int cmp_double(const void *a, const void *b);
static void fmt_mib(char *buf, size_t n, double mib);
static void rel_error(const attn_tensor *got, const attn_tensor *want, double *maxe, double *meane);

/* What an approximation's error is measured against: nothing (exact rows),
 * full or causal exact attention, or exact attention with a dense bool mask
 * of the same sparsity pattern built independently here (sparse variants:
 * that checks them, where "vs full" would only measure the pattern). */
enum { REF_NONE, REF_FULL, REF_CAUSAL, REF_MASK };

/* Fill keep [H, S, S] (1 = query i attends key j) for the row's pattern on
 * dims dm; plan is the row's plan (for layouts drawn by the library). */
typedef attn_status (*mask_fn)(const dims *dm, const attn_plan *plan, uint8_t *keep);

/* What a row that runs itself reports (fields it does not set stay as
 * custom_out_init leaves them). */
typedef struct custom_out {
  double secs;        /* median seconds per timed unit (an execute, a decode step) */
  double flops;       /* FLOPs per unit: the rate column shows GFLOP/s ... */
  double bytes;       /* ... or, when > 0, bytes read per unit: GB/s */
  double maxe, meane; /* error against `vs`; < 0: exact, not measured */
  const char *vs;     /* the error's reference ("-" none) */
  size_t ws;          /* plan workspace bytes */
  int64_t pic_rows, pic_cols; /* picture size (pic != NULL) */
  const char *pic_note;       /* what the picture shows */
  double tol;                 /* largest acceptable maxe (1e-4 unless the row says) */
} custom_out;

static void custom_out_init(custom_out *o) {
  memset(o, 0, sizeof *o);
  o->maxe = o->meane = -1.0;
  o->vs = "-";
  o->pic_rows = o->pic_cols = 64;
  o->pic_note = "64 tokens, weights";
  o->tol = 1e-4;
}

/* Rows that are not one attn_plan (the multi-head layer, the KV cache) run
 * themselves: with pic == NULL time `reps` units on dm and fill o; with
 * pic != NULL run once on the picture problem and put the
 * o->pic_rows × o->pic_cols weights in pic (at most 64×64). `what` receives
 * the description. */
typedef attn_status (*custom_fn)(attn_context *ctx, const dims *dm, int reps, custom_out *o,
                                 double *pic, char *what, size_t wl);

typedef struct demo_row {
  const char *name;
  int ref;            /* what its error is measured against */
  int64_t heads;      /* 0: the workload's H; else this many (for slow scores) */
  setup_fn setup;
  custom_fn custom;    /* instead of setup: a row that runs itself */
  mask_fn mask;        /* REF_MASK: the pattern as a dense mask */
} demo_row;

/* ---- small helpers ------------------------------------------------------------- */

static attn_tensor *owned(attn_context *ctx, aux *x, attn_dtype dt, int32_t rank, const int64_t *shape) {
  attn_tensor *t = NULL;
  if (x->nt >= (int)(sizeof x->t / sizeof x->t[0])) return NULL;
  if (attn_tensor_create(ctx, dt, rank, shape, &t) != ATTN_OK) return NULL;
  x->t[x->nt++] = t;
  return t;
}

static void fill_normal(attn_tensor *t, uint64_t seed, double scale) {
  cli_rng r;
  cli_rng_seed(&r, seed);
  int64_t n = attn_tensor_numel(t);
  if (attn_tensor_dtype(t) == ATTN_DTYPE_F32) {
    float *p = attn_tensor_data(t);
    for (int64_t i = 0; i < n; i++) p[i] = (float)(scale * cli_rng_normal(&r));
  } else {
    double *p = attn_tensor_data(t);
    for (int64_t i = 0; i < n; i++) p[i] = scale * cli_rng_normal(&r);
  }
}

/* Factor S = gh·gw with gh the largest divisor ≤ √S (32×32 for 1024). */
static void grid_of(int64_t S, int64_t *gh, int64_t *gw) {
  int64_t h = (int64_t)floor(sqrt((double)S));
  while (h > 1 && S % h != 0) h--;
  *gh = h;
  *gw = S / h;
}

#define NEED(expr)                      \
  do {                                  \
    attn_status st_ = (expr);           \
    if (st_ != ATTN_OK) return st_;     \
  } while (0)

#define NEED_T(t) \
  do {            \
    if ((t) == NULL) return ATTN_ERR_NO_MEMORY; \
  } while (0)

/* ---- the rows' setups ------------------------------------------------------------ */

static attn_status su_sdpa(attn_context *c, attn_desc *d, const dims *m, aux *x) {
  (void)c, (void)d;
  snprintf(x->what, sizeof x->what, "softmax(q.k/sqrt(%" PRId64 ")) v, no mask", m->D);
  return ATTN_OK;
}

static attn_status su_causal(attn_context *c, attn_desc *d, const dims *m, aux *x) {
  (void)c, (void)m;
  snprintf(x->what, sizeof x->what, "causal: key j <= query i");
  return attn_desc_set_causal(d, ATTN_CAUSAL_TOP_LEFT);
}

static attn_status su_window(attn_context *c, attn_desc *d, const dims *m, aux *x) {
  (void)c;
  int64_t w = m->S / 8;
  snprintf(x->what, sizeof x->what, "sliding window |i-j| <= %" PRId64, w);
  return attn_desc_set_window(d, w, w);
}

static attn_status su_causal_window(attn_context *c, attn_desc *d, const dims *m, aux *x) {
  (void)c;
  int64_t w = m->S / 8;
  snprintf(x->what, sizeof x->what, "causal window i-%" PRId64 " <= j <= i", w);
  NEED(attn_desc_set_causal(d, ATTN_CAUSAL_TOP_LEFT));
  return attn_desc_set_window(d, w, 0);
}

static attn_status su_padding(attn_context *c, attn_desc *d, const dims *m, aux *x) {
  (void)c;
  for (int64_t b = 0; b < m->B; b++) x->ints[b] = m->S * 3 / 4 - b;
  snprintf(x->what, sizeof x->what, "key padding: keys j < %" PRId64 " kept", x->ints[0]);
  return attn_desc_set_key_lengths(d, x->ints, m->B);
}

static attn_status su_alibi(attn_context *c, attn_desc *d, const dims *m, aux *x) {
  (void)c;
  /* ALiBi's geometric slopes 2^(-8(h+1)/H); the 1-head picture uses 1/4 so
   * the decay is visible on 64 tokens. */
  for (int64_t h = 0; h < m->H; h++)
    x->slopes[h] = m->picture ? 0.25 : pow(2.0, -8.0 * (double)(h + 1) / (double)m->H);
  snprintf(x->what, sizeof x->what, "causal + ALiBi slope %g%s", x->slopes[0],
           m->H > 1 ? " .. (per head)" : "");
  NEED(attn_desc_set_causal(d, ATTN_CAUSAL_TOP_LEFT));
  return attn_desc_set_alibi(d, x->slopes, m->H);
}

static attn_status su_softcap(attn_context *c, attn_desc *d, const dims *m, aux *x) {
  (void)c, (void)m;
  snprintf(x->what, sizeof x->what, "logit softcap 2*tanh(s/2)");
  return attn_desc_set_softcap(d, 2.0);
}

/* Packed documents as a packed batch: three sequences, each attending only to
 * itself (causal), with no mask tensor and no padding. */
static attn_status su_varlen(attn_context *c, attn_desc *d, const dims *m, aux *x) {
  (void)c;
  const int64_t o[4] = {0, m->S * 3 / 8, m->S * 3 / 4, m->S};
  memcpy(x->offsets, o, sizeof o);
  snprintf(x->what, sizeof x->what, "packed batch: 3 causal sequences (%" PRId64 ", %" PRId64
           ", %" PRId64 " tokens)", o[1], o[2] - o[1], o[3] - o[2]);
  NEED(attn_desc_set_causal(d, ATTN_CAUSAL_TOP_LEFT));
  return attn_desc_set_varlen(d, x->offsets, NULL, 3);
}

/* Attention sinks: a value-less logit per head takes part of each row's mass. */
static attn_status su_sinks(attn_context *c, attn_desc *d, const dims *m, aux *x) {
  (void)c;
  for (int64_t h = 0; h < m->H; h++) x->sinks[h] = 2.0;
  snprintf(x->what, sizeof x->what, "causal + sink logit 2 per head (no value)");
  NEED(attn_desc_set_causal(d, ATTN_CAUSAL_TOP_LEFT));
  return attn_desc_set_sinks(d, x->sinks, m->H);
}

/* The per-key mass Σ_i p_ij (what H2O/SnapKV evict by), from the kernel. */
static attn_status su_mass(attn_context *c, attn_desc *d, const dims *m, aux *x) {
  const int64_t shape[3] = {m->B, m->H, m->S};
  x->mass = owned(c, x, ATTN_DTYPE_F32, 3, shape);
  NEED_T(x->mass);
  snprintf(x->what, sizeof x->what, "causal + per-key mass sum_i p_ij (bar)");
  NEED(attn_desc_set_causal(d, ATTN_CAUSAL_TOP_LEFT));
  return attn_desc_set_key_mass(d, x->mass);
}

/* Packed documents: block-diagonal bool mask (true = attend). */
static attn_status su_boolmask(attn_context *c, attn_desc *d, const dims *m, aux *x) {
  const int64_t S = m->S, shape[4] = {1, 1, S, S};
  attn_tensor *t = owned(c, x, ATTN_DTYPE_U8, 4, shape);
  NEED_T(t);
  uint8_t *p = attn_tensor_data(t);
  const int64_t cut1 = S * 3 / 8, cut2 = S * 3 / 4;
  for (int64_t i = 0; i < S; i++) {
    int di = i < cut1 ? 0 : i < cut2 ? 1 : 2;
    for (int64_t j = 0; j < S; j++) {
      int dj = j < cut1 ? 0 : j < cut2 ? 1 : 2;
      p[i * S + j] = di == dj;
    }
  }
  snprintf(x->what, sizeof x->what, "bool mask: 3 packed documents (true = attend)");
  return attn_desc_set_bool_mask(d, t);
}

/* A Gaussian locality prior added to the scores. */
static attn_status su_addmask(attn_context *c, attn_desc *d, const dims *m, aux *x) {
  const int64_t S = m->S, shape[4] = {1, 1, S, S};
  attn_tensor *t = owned(c, x, ATTN_DTYPE_F32, 4, shape);
  NEED_T(t);
  float *p = attn_tensor_data(t);
  const double sigma = (double)S / 8.0;
  for (int64_t i = 0; i < S; i++)
    for (int64_t j = 0; j < S; j++) {
      double r = (double)(i - j);
      p[i * S + j] = (float)(-r * r / (2.0 * sigma * sigma));
    }
  snprintf(x->what, sizeof x->what, "additive mask -(i-j)^2/(2*%g^2)", sigma);
  return attn_desc_set_additive_mask(d, t);
}

static attn_status su_dot(attn_context *c, attn_desc *d, const dims *m, aux *x) {
  (void)c, (void)m;
  snprintf(x->what, sizeof x->what, "Luong dot score q.k (scale 1)");
  return attn_desc_set_score(d, ATTN_SCORE_DOT);
}

static attn_status su_general(attn_context *c, attn_desc *d, const dims *m, aux *x) {
  const int64_t shape[2] = {m->D, m->D};
  attn_tensor *w = owned(c, x, ATTN_DTYPE_F32, 2, shape);
  NEED_T(w);
  fill_normal(w, 11, 1.0 / (double)m->D);
  snprintf(x->what, sizeof x->what, "Luong general score q^T W k, W random %" PRId64 "x%" PRId64,
           m->D, m->D);
  NEED(attn_desc_set_score(d, ATTN_SCORE_GENERAL));
  return attn_desc_set_general_weight(d, w);
}

static attn_status su_additive(attn_context *c, attn_desc *d, const dims *m, aux *x) {
  const int64_t A = m->D, sw[2] = {A, m->D}, sa[1] = {A};
  attn_tensor *wq = owned(c, x, ATTN_DTYPE_F32, 2, sw), *wk = owned(c, x, ATTN_DTYPE_F32, 2, sw);
  attn_tensor *bias = owned(c, x, ATTN_DTYPE_F32, 1, sa), *v = owned(c, x, ATTN_DTYPE_F32, 1, sa);
  NEED_T(wq);
  NEED_T(wk);
  NEED_T(bias);
  NEED_T(v);
  fill_normal(wq, 21, 1.0 / sqrt((double)m->D));
  fill_normal(wk, 22, 1.0 / sqrt((double)m->D));
  fill_normal(bias, 23, 0.1);
  fill_normal(v, 24, 1.5 / sqrt((double)A));
  snprintf(x->what, sizeof x->what, "Bahdanau additive score v.tanh(Wq q + Wk k + b), A=%" PRId64, A);
  NEED(attn_desc_set_score(d, ATTN_SCORE_ADDITIVE));
  return attn_desc_set_additive_weights(d, wq, wk, bias, v);
}

static attn_status su_longformer(attn_context *c, attn_desc *d, const dims *m, aux *x) {
  (void)c;
  int64_t w = m->S / 16;
  x->ints[0] = 0;
  x->ints[1] = m->S / 2;
  snprintf(x->what, sizeof x->what, "Longformer: window |i-j| <= %" PRId64 ", global tokens 0, %" PRId64,
           w, x->ints[1]);
  NEED(attn_desc_set_variant(d, ATTN_VARIANT_LONGFORMER));
  NEED(attn_desc_set_window(d, w, w));
  return attn_desc_set_global_tokens(d, x->ints, 2);
}

static attn_status su_bigbird(attn_context *c, attn_desc *d, const dims *m, aux *x) {
  (void)c;
  int64_t b = m->S / 16 > 0 ? m->S / 16 : 1, r = m->picture ? 1 : 2;
  snprintf(x->what, sizeof x->what,
           "BigBird: block %" PRId64 ", window 1 block, 1 global, %" PRId64 " random (seed 7)", b, r);
  NEED(attn_desc_set_variant(d, ATTN_VARIANT_BIGBIRD));
  NEED(attn_desc_set_block_size(d, b));
  return attn_desc_set_bigbird(d, 1, 1, r, 7);
}

static attn_status su_blocksparse(attn_context *c, attn_desc *d, const dims *m, aux *x) {
  int64_t b = m->S / 16 > 0 ? m->S / 16 : 1, nb = (m->S + b - 1) / b;
  const int64_t shape[3] = {1, nb, nb};
  attn_tensor *t = owned(c, x, ATTN_DTYPE_U8, 3, shape);
  NEED_T(t);
  uint8_t *p = attn_tensor_data(t);
  for (int64_t i = 0; i < nb; i++)
    for (int64_t j = 0; j < nb; j++) p[i * nb + j] = (llabs(i - j) <= 1) || (j % 4 == 3);
  snprintf(x->what, sizeof x->what,
           "block-sparse: block %" PRId64 ", band + every 4th key block (strided)", b);
  NEED(attn_desc_set_variant(d, ATTN_VARIANT_BLOCK_SPARSE));
  NEED(attn_desc_set_block_size(d, b));
  return attn_desc_set_block_layout(d, t);
}

static attn_status swin_common(attn_desc *d, const dims *m, aux *x, bool shifted) {
  int64_t gh, gw, M = m->picture ? 4 : 8;
  grid_of(m->S, &gh, &gw);
  int64_t shift = shifted ? M / 2 : 0;
  snprintf(x->what, sizeof x->what, "Swin: %" PRId64 "x%" PRId64 " grid, %" PRId64 "x%" PRId64
           " windows, shift %" PRId64, gh, gw, M, M, shift);
  NEED(attn_desc_set_variant(d, ATTN_VARIANT_SWIN));
  return attn_desc_set_swin(d, gh, gw, M, shift);
}

static attn_status su_swin(attn_context *c, attn_desc *d, const dims *m, aux *x) {
  (void)c;
  return swin_common(d, m, x, false);
}

static attn_status su_swin_shift(attn_context *c, attn_desc *d, const dims *m, aux *x) {
  (void)c;
  return swin_common(d, m, x, true);
}

static attn_status su_linear(attn_context *c, attn_desc *d, const dims *m, aux *x) {
  (void)c, (void)m;
  snprintf(x->what, sizeof x->what, "linear attention, phi(x) = elu(x)+1");
  return attn_desc_set_variant(d, ATTN_VARIANT_LINEAR_ELU);
}

static attn_status su_linear_causal(attn_context *c, attn_desc *d, const dims *m, aux *x) {
  (void)c, (void)m;
  snprintf(x->what, sizeof x->what, "causal linear attention, phi(x) = elu(x)+1");
  NEED(attn_desc_set_variant(d, ATTN_VARIANT_LINEAR_ELU));
  return attn_desc_set_causal(d, ATTN_CAUSAL_TOP_LEFT);
}

static attn_status su_performer(attn_context *c, attn_desc *d, const dims *m, aux *x) {
  (void)c;
  int64_t f = m->picture ? 64 : 256;
  snprintf(x->what, sizeof x->what, "Performer FAVOR+: %" PRId64 " random features (seed 1)", f);
  NEED(attn_desc_set_variant(d, ATTN_VARIANT_PERFORMER));
  return attn_desc_set_features(d, f, 1);
}

static attn_status su_linformer(attn_context *c, attn_desc *d, const dims *m, aux *x) {
  (void)c;
  int64_t k = m->S / 4 > 0 ? m->S / 4 : 1;
  snprintf(x->what, sizeof x->what, "Linformer: keys/values projected to %" PRId64 " (seed 1)", k);
  NEED(attn_desc_set_variant(d, ATTN_VARIANT_LINFORMER));
  return attn_desc_set_lowrank(d, k, 1);
}

/* nn.MultiheadAttention-style self-attention layer (heads.h): x [B, S, E]
 * with E = H·d, packed in-projection [3E, E], out-projection [E, E], biases,
 * causal. FLOPs: attention's 4·B·H·S²·d plus the four projections 8·B·S·E². */
/* The layer in dt (f32, or bf16: parameters and activations in bf16, f32
 * inside); ref (bf16 only): the f32 layer's out on the same rounded values,
 * to report the error of the bf16 layer's one output rounding. */
static attn_status mha_run_dt(attn_context *ctx, const dims *dm, int reps, custom_out *o,
                              double *pic, char *what, size_t wl, attn_dtype dt);

static attn_status mha_run(attn_context *ctx, const dims *dm, int reps, custom_out *o,
                           double *pic, char *what, size_t wl) {
  return mha_run_dt(ctx, dm, reps, o, pic, what, wl, ATTN_DTYPE_F32);
}

static attn_status mha_run_bf16(attn_context *ctx, const dims *dm, int reps, custom_out *o,
                                double *pic, char *what, size_t wl) {
  return mha_run_dt(ctx, dm, reps, o, pic, what, wl, ATTN_DTYPE_BF16);
}

/* Round an f32 tensor's values to bf16 in place and store the bf16 bits in
 * h (same element count). */
static void round_bf16(attn_tensor *f, attn_tensor *h);
static float from_bf16(uint16_t h);

static attn_status mha_run_dt(attn_context *ctx, const dims *dm, int reps, custom_out *o,
                              double *pic, char *what, size_t wl, attn_dtype dt) {
  const int64_t E = dm->H * dm->D, B = dm->B, S = dm->S;
  const bool bf = dt == ATTN_DTYPE_BF16;
  const int64_t s_in[2] = {3 * E, E}, s_inb[1] = {3 * E}, s_out[2] = {E, E}, s_outb[1] = {E};
  const int64_t s_x[3] = {B, S, E}, s_w[3] = {B, S, S};
  /* f[]: the f32 parameters, input and output; h[]: their bf16 copies (bf16 row) */
  enum { IN_W, IN_B, OUT_W, OUT_B, X, Y, N_T };
  const int64_t *shp[N_T] = {s_in, s_inb, s_out, s_outb, s_x, s_x};
  const int32_t rk[N_T] = {2, 1, 2, 1, 3, 3};
  attn_tensor *f[N_T] = {NULL}, *h[N_T] = {NULL}, *wt = NULL;
  attn_mha *mha = NULL, *m32 = NULL;
  attn_mha_plan *plan = NULL, *p32 = NULL;
  attn_desc *d = NULL;
  snprintf(what, wl, "multi-head layer%s: E=%" PRId64 ", %" PRId64 " heads, causal, projections",
           bf ? " in bf16 (f32 inside; vs the f32 layer)" : "", E, dm->H);
  attn_status st = ATTN_OK;
  for (int i = 0; i < N_T && st == ATTN_OK; i++) {
    st = attn_tensor_create(ctx, ATTN_DTYPE_F32, rk[i], shp[i], &f[i]);
    if (st == ATTN_OK && bf) st = attn_tensor_create(ctx, ATTN_DTYPE_BF16, rk[i], shp[i], &h[i]);
  }
  if (st == ATTN_OK && pic != NULL) st = attn_tensor_create(ctx, ATTN_DTYPE_F32, 3, s_w, &wt);
  if (st != ATTN_OK) goto out;
  fill_normal(f[IN_W], 31, 1.0 / sqrt((double)E));
  fill_normal(f[IN_B], 32, 0.02);
  fill_normal(f[OUT_W], 33, 1.0 / sqrt((double)E));
  fill_normal(f[OUT_B], 34, 0.02);
  fill_normal(f[X], 35, 1.0);
  if (bf)
    for (int i = 0; i < Y; i++) round_bf16(f[i], h[i]); /* both layers see the same values */
  attn_tensor **t = bf ? h : f;
  attn_mha_config cfg;
  attn_mha_config_init(&cfg);
  cfg.embed_dim = E;
  cfg.num_heads = dm->H;
  cfg.batch_first = 1;
  cfg.dtype = dt;
  attn_mha_weights w;
  attn_mha_weights_init(&w);
  w.in_proj_weight = t[IN_W];
  w.in_proj_bias = t[IN_B];
  w.out_proj_weight = t[OUT_W];
  w.out_proj_bias = t[OUT_B];
  if ((st = attn_mha_create(ctx, &cfg, &w, &mha)) != ATTN_OK) goto out;
  if ((st = attn_desc_create(ctx, &d)) != ATTN_OK) goto out;
  if ((st = attn_desc_set_causal(d, ATTN_CAUSAL_TOP_LEFT)) != ATTN_OK) goto out;
  if ((st = attn_mha_plan_create(mha, d, t[X], t[X], t[X], NULL, t[Y], wt, &plan)) != ATTN_OK)
    goto out;
  o->ws = attn_mha_plan_workspace_size(plan);
  if (pic != NULL) {
    if ((st = attn_mha_plan_execute(plan, t[X], t[X], t[X], NULL, t[Y], wt)) != ATTN_OK) goto out;
    const float *src = attn_tensor_data(wt);
    for (int64_t i = 0; i < S * S; i++) pic[i] = src[i];
    goto out;
  }
  double tm[64];
  if (reps > 64) reps = 64;
  st = attn_mha_plan_execute(plan, t[X], t[X], t[X], NULL, t[Y], NULL);
  for (int r = 0; st == ATTN_OK && r < reps; r++) {
    double t0 = cli_now();
    st = attn_mha_plan_execute(plan, t[X], t[X], t[X], NULL, t[Y], NULL);
    tm[r] = cli_now() - t0;
  }
  if (st != ATTN_OK) goto out;
  qsort(tm, (size_t)reps, sizeof tm[0], cmp_double);
  o->secs = reps % 2 ? tm[reps / 2] : 0.5 * (tm[reps / 2 - 1] + tm[reps / 2]);
  o->flops = 4.0 * (double)(B * dm->H) * (double)S * (double)S * (double)dm->D +
             8.0 * (double)(B * S) * (double)E * (double)E;
  if (bf) { /* the f32 layer on the same values; the bf16 out widened into f[X] */
    cfg.dtype = ATTN_DTYPE_F32;
    w.in_proj_weight = f[IN_W];
    w.in_proj_bias = f[IN_B];
    w.out_proj_weight = f[OUT_W];
    w.out_proj_bias = f[OUT_B];
    if ((st = attn_mha_create(ctx, &cfg, &w, &m32)) != ATTN_OK ||
        (st = attn_mha_plan_create(m32, d, f[X], f[X], f[X], NULL, f[Y], NULL, &p32)) != ATTN_OK ||
        (st = attn_mha_plan_execute(p32, f[X], f[X], f[X], NULL, f[Y], NULL)) != ATTN_OK)
      goto out;
    float *x = attn_tensor_data(f[X]);
    const uint16_t *y = attn_tensor_data(h[Y]);
    for (int64_t e = 0; e < attn_tensor_numel(f[X]); e++) x[e] = from_bf16(y[e]);
    rel_error(f[X], f[Y], &o->maxe, &o->meane);
    o->vs = "mha-f32";
    o->tol = 2.0 / 256.0; /* the output rounding (2⁻⁸) plus the f32 differences */
  }
out:
  attn_mha_plan_destroy(plan);
  attn_mha_plan_destroy(p32);
  attn_mha_destroy(mha);
  attn_mha_destroy(m32);
  attn_desc_destroy(d);
  for (int i = 0; i < N_T; i++) {
    attn_tensor_destroy(f[i]);
    attn_tensor_destroy(h[i]);
  }
  attn_tensor_destroy(wt);
  return st;
}

/* ---- 16-bit tensors: bf16 q, k, v, out (f32 accumulation) ------------------------ */

/* f32 → bf16 bits, round to nearest even (finite inputs). */
static uint16_t to_bf16(float f) {
  uint32_t u;
  memcpy(&u, &f, 4);
  return (uint16_t)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}
static float from_bf16(uint16_t h) {
  uint32_t u = (uint32_t)h << 16;
  float f;
  memcpy(&f, &u, 4);
  return f;
}

static void round_bf16(attn_tensor *f, attn_tensor *h) {
  float *x = attn_tensor_data(f);
  uint16_t *y = attn_tensor_data(h);
  for (int64_t e = 0; e < attn_tensor_numel(f); e++) x[e] = from_bf16(y[e] = to_bf16(x[e]));
}

/* The exact kernel on bf16 q, k, v, out: timed, and compared with f32
 * exact attention on the same (bf16-rounded) inputs; attn.h bounds the
 * difference by 2·2⁻⁸·Σ p|v|, so the row accepts 2·2⁻⁸ of max|out|. The
 * picture is the f32 weights the bf16 plan returns. */
static attn_status bf16_run_common(attn_context *ctx, const dims *dm, int reps, custom_out *o,
                                   double *pic, char *what, size_t wl, bool causal) {
  const int64_t sh[4] = {dm->B, dm->H, dm->S, dm->D}, wsh[4] = {dm->B, dm->H, dm->S, dm->S};
  attn_tensor *f[4] = {NULL}, *h[4] = {NULL}, *wt = NULL;
  attn_desc *d = NULL;
  attn_plan *plan = NULL, *ref = NULL;
  snprintf(what, wl, "exact%s, bf16 q/k/v/out, f32 accumulation (vs f32 on the same inputs)",
           causal ? " causal" : "");
  attn_status st = ATTN_OK;
  for (int i = 0; i < 4 && st == ATTN_OK; i++) {
    st = attn_tensor_create(ctx, ATTN_DTYPE_F32, 4, sh, &f[i]);
    if (st == ATTN_OK) st = attn_tensor_create(ctx, ATTN_DTYPE_BF16, 4, sh, &h[i]);
  }
  if (st == ATTN_OK && pic != NULL) st = attn_tensor_create(ctx, ATTN_DTYPE_F32, 4, wsh, &wt);
  if (st != ATTN_OK) goto out;
  for (int i = 0; i < 3; i++) { /* q, k, v: normal data rounded to bf16, in both tensors */
    fill_normal(f[i], 41 + (uint64_t)i, i < 2 ? 1.0 : 1.0);
    float *x = attn_tensor_data(f[i]);
    uint16_t *y = attn_tensor_data(h[i]);
    for (int64_t e = 0; e < attn_tensor_numel(f[i]); e++) x[e] = from_bf16(y[e] = to_bf16(x[e]));
  }
  if ((st = attn_desc_create(ctx, &d)) != ATTN_OK) goto out;
  if (causal && (st = attn_desc_set_causal(d, ATTN_CAUSAL_TOP_LEFT)) != ATTN_OK) goto out;
  if ((st = attn_plan_create(ctx, d, h[0], h[1], h[2], h[3], wt, NULL, &plan)) != ATTN_OK) goto out;
  o->ws = attn_plan_workspace_size(plan);
  if (pic != NULL) {
    if ((st = attn_plan_execute(plan, h[0], h[1], h[2], h[3], wt, NULL)) != ATTN_OK) goto out;
    const float *src = attn_tensor_data(wt); /* head 0 */
    for (int64_t i = 0; i < dm->S * dm->S; i++) pic[i] = src[i];
    goto out;
  }
  double t[64];
  if (reps > 64) reps = 64;
  st = attn_plan_execute(plan, h[0], h[1], h[2], h[3], NULL, NULL);
  for (int r = 0; st == ATTN_OK && r < reps; r++) {
    double t0 = cli_now();
    st = attn_plan_execute(plan, h[0], h[1], h[2], h[3], NULL, NULL);
    t[r] = cli_now() - t0;
  }
  if (st != ATTN_OK) goto out;
  qsort(t, (size_t)reps, sizeof t[0], cmp_double);
  o->secs = reps % 2 ? t[reps / 2] : 0.5 * (t[reps / 2 - 1] + t[reps / 2]);
  o->flops = 4.0 * (double)(dm->B * dm->H) * (double)dm->S * (double)dm->S * (double)dm->D;
  /* The f32 reference on the rounded inputs; out (bf16) widened into f[2]'s
   * place once v is no longer needed. */
  if ((st = attn_plan_create(ctx, d, f[0], f[1], f[2], f[3], NULL, NULL, &ref)) != ATTN_OK) goto out;
  if ((st = attn_plan_execute(ref, f[0], f[1], f[2], f[3], NULL, NULL)) != ATTN_OK) goto out;
  {
    float *x = attn_tensor_data(f[2]);
    const uint16_t *y = attn_tensor_data(h[3]);
    for (int64_t e = 0; e < attn_tensor_numel(f[2]); e++) x[e] = from_bf16(y[e]);
  }
  rel_error(f[2], f[3], &o->maxe, &o->meane);
  o->vs = "exact-f32";
  o->tol = 2.0 / 256.0;
out:
  attn_plan_destroy(plan);
  attn_plan_destroy(ref);
  attn_desc_destroy(d);
  for (int i = 0; i < 4; i++) {
    attn_tensor_destroy(f[i]);
    attn_tensor_destroy(h[i]);
  }
  attn_tensor_destroy(wt);
  return st;
}

static attn_status bf16_run(attn_context *ctx, const dims *dm, int reps, custom_out *o,
                            double *pic, char *what, size_t wl) {
  return bf16_run_common(ctx, dm, reps, o, pic, what, wl, false);
}
static attn_status bf16_run_causal(attn_context *ctx, const dims *dm, int reps, custom_out *o,
                                   double *pic, char *what, size_t wl) {
  return bf16_run_common(ctx, dm, reps, o, pic, what, wl, true);
}

/* ---- the KV cache (kvcache.h): prefill, then decode one token at a time ---------- */

/* A view of rows [r0, r0 + n) (axis 2) of a [B, H, S, d] f32 tensor, no copy. */
static attn_status rows_view(attn_context *ctx, const attn_tensor *t, int64_t r0, int64_t n,
                             attn_tensor **out) {
  int64_t shape[4], strides[4];
  for (int32_t a = 0; a < 4; a++) {
    shape[a] = attn_tensor_dim(t, a);
    strides[a] = attn_tensor_stride(t, a);
  }
  shape[2] = n;
  return attn_tensor_wrap(ctx, ATTN_DTYPE_F32, 4, shape, strides,
                          (float *)attn_tensor_data(t) + r0 * strides[2], out);
}

/* Point a one-row view at row r of the full tensor. */
static attn_status point_row(attn_tensor *view, const attn_tensor *full, int64_t r) {
  return attn_tensor_set_data(view, (float *)attn_tensor_data(full) + r * attn_tensor_stride(full, 2));
}

static int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }

/* A decoder over a whole sequence of S positions: q [1, H, S, d],
 * k/v [1, H/group, S, d]. Linear cache: append and attend the first S − n
 * positions in one prefill call, then decode the last n (≤ 32) one token at
 * a time (append 1 row, attend 1 query). Ring cache of W = S/8 positions:
 * every position is decoded one token at a time (a ring holds too little
 * for a long prefill). Times the last n decode steps; the rate is the K/V
 * bytes each step reads. Every output position is then compared with exact
 * causal attention over the whole sequence (ring: with the window W).
 * Picture: v = identity (d_v = S) so out rows are the weights; the last n
 * decode steps against every cached key. */
static attn_status kv_run_common(attn_context *ctx, const dims *dm, int reps, custom_out *o,
                                 double *pic, char *what, size_t wl, int64_t group, bool ring) {
  const bool picture = pic != NULL;
  const int64_t S = picture ? 64 : dm->S, D = picture ? 16 : dm->D, Dv = picture ? S : D;
  const int64_t H = picture ? (group > 1 ? 2 : 1) : dm->H;
  while (group > 1 && H % group != 0) group--;
  const int64_t Hkv = H / group, ndec = min64(32, S / 2), npre = S - ndec;
  const int64_t W = ring ? (picture ? 16 : (S / 8 > 1 ? S / 8 : 2)) : S;
  const int64_t sq[4] = {1, H, S, D}, sk[4] = {1, Hkv, S, D}, sv[4] = {1, Hkv, S, Dv};
  const int64_t so[4] = {1, H, S, Dv};
  attn_tensor *q = NULL, *k = NULL, *v = NULL, *out = NULL, *ref = NULL;
  attn_tensor *qp = NULL, *kp = NULL, *vp = NULL, *op = NULL, *q1 = NULL, *k1 = NULL, *v1 = NULL,
              *o1 = NULL;
  attn_kvcache *cache = NULL;
  attn_kvcache_plan *pre = NULL, *dec = NULL;
  attn_desc *d = NULL;
  double *times = NULL;
  attn_status st = ATTN_OK;
#define KV_TRY(expr) \
  if ((st = (expr)) != ATTN_OK) goto out
  KV_TRY(attn_tensor_create(ctx, ATTN_DTYPE_F32, 4, sq, &q));
  KV_TRY(attn_tensor_create(ctx, ATTN_DTYPE_F32, 4, sk, &k));
  KV_TRY(attn_tensor_create(ctx, ATTN_DTYPE_F32, 4, sv, &v));
  KV_TRY(attn_tensor_create(ctx, ATTN_DTYPE_F32, 4, so, &out));
  fill_normal(q, 41, 1.0);
  fill_normal(k, 42, 1.0);
  if (picture) { /* one-hot values: out[t] = the weights of query t */
    float *pv = attn_tensor_data(v);
    for (int64_t h = 0; h < Hkv; h++)
      for (int64_t j = 0; j < S; j++) pv[(h * S + j) * Dv + j] = 1.0f;
  } else {
    fill_normal(v, 43, 1.0);
  }
  attn_kvcache_config cfg;
  attn_kvcache_config_init(&cfg);
  cfg.heads_kv = Hkv;
  cfg.capacity = W;
  cfg.d_k = D;
  cfg.d_v = Dv;
  cfg.mode = ring ? ATTN_KVCACHE_RING : ATTN_KVCACHE_LINEAR;
  KV_TRY(attn_kvcache_create(ctx, &cfg, &cache));
  KV_TRY(attn_desc_create(ctx, &d));
  KV_TRY(attn_desc_set_causal(d, ATTN_CAUSAL_BOTTOM_RIGHT));
  KV_TRY(rows_view(ctx, q, 0, 1, &q1));
  KV_TRY(rows_view(ctx, k, 0, 1, &k1));
  KV_TRY(rows_view(ctx, v, 0, 1, &v1));
  KV_TRY(rows_view(ctx, out, 0, 1, &o1));
  KV_TRY(attn_kvcache_plan_create(cache, d, q1, o1, NULL, &dec));
  if (!ring) {
    KV_TRY(rows_view(ctx, q, 0, npre, &qp));
    KV_TRY(rows_view(ctx, k, 0, npre, &kp));
    KV_TRY(rows_view(ctx, v, 0, npre, &vp));
    KV_TRY(rows_view(ctx, out, 0, npre, &op));
    KV_TRY(attn_kvcache_plan_create(cache, d, qp, op, NULL, &pre));
  }
  if (reps > 64) reps = 64;
  times = malloc(sizeof(double) * (size_t)(ndec * (reps > 0 ? reps : 1)));
  if (times == NULL) {
    st = ATTN_ERR_NO_MEMORY;
    goto out;
  }
  for (int r = -1; r < reps; r++) { /* r = −1: warm-up (and the picture's only pass) */
    const int64_t zero = 0;
    KV_TRY(attn_kvcache_truncate(cache, &zero));
    int64_t t = 0;
    if (!ring) {
      KV_TRY(attn_kvcache_append(cache, kp, vp, NULL));
      KV_TRY(attn_kvcache_plan_execute(pre, qp, op, NULL, NULL));
      t = npre;
    }
    for (; t < S; t++) {
      KV_TRY(point_row(q1, q, t));
      KV_TRY(point_row(k1, k, t));
      KV_TRY(point_row(v1, v, t));
      KV_TRY(point_row(o1, out, t));
      double t0 = cli_now();
      KV_TRY(attn_kvcache_append(cache, k1, v1, NULL));
      KV_TRY(attn_kvcache_plan_execute(dec, q1, o1, NULL, NULL));
      double t1 = cli_now();
      if (r >= 0 && t >= npre) times[r * ndec + (t - npre)] = t1 - t0;
    }
  }
  double cache_mib = (double)attn_kvcache_memory_size(cache) / (1024.0 * 1024.0);
  if (ring)
    snprintf(what, wl, "KV cache, ring of %" PRId64 " (sliding window), H_kv=%" PRId64
             ": %" PRId64 " tokens decoded one at a time, cache %.2f MiB", W, Hkv, S, cache_mib);
  else
    snprintf(what, wl, "KV cache%s, H_kv=%" PRId64 ": prefill %" PRId64 ", then %" PRId64
             " decode steps of 1 token, cache %.2f MiB", group > 1 ? " GQA" : "", Hkv, npre, ndec,
             cache_mib);
  if (picture) {
    const float *src = attn_tensor_data(out);
    for (int64_t i = 0; i < ndec; i++)
      for (int64_t j = 0; j < S; j++) pic[i * S + j] = src[((H - 1) * S + npre + i) * Dv + j];
    o->pic_rows = ndec;
    o->pic_cols = S;
    o->pic_note = ring ? "last 32 decode steps (rows) x 64 positions"
                       : "last 32 decode steps (rows) x 64 cached positions";
    goto out;
  }
  qsort(times, (size_t)(ndec * reps), sizeof times[0], cmp_double);
  int64_t nt = ndec * reps;
  o->secs = nt % 2 ? times[nt / 2] : 0.5 * (times[nt / 2 - 1] + times[nt / 2]);
  double keys = 0.0; /* mean keys a timed step reads */
  for (int64_t t = npre; t < S; t++) keys += (double)min64(t + 1, W) / (double)ndec;
  o->bytes = (double)Hkv * keys * (double)(D + Dv) * sizeof(float);
  o->flops = 2.0 * (double)H * keys * (double)(D + Dv);
  o->ws = attn_kvcache_plan_workspace_size(dec);
  /* Every output position against exact attention over the whole sequence. */
  KV_TRY(attn_tensor_create(ctx, ATTN_DTYPE_F32, 4, so, &ref));
  attn_desc_destroy(d);
  d = NULL;
  KV_TRY(attn_desc_create(ctx, &d));
  KV_TRY(attn_desc_set_causal(d, ATTN_CAUSAL_TOP_LEFT));
  if (ring) KV_TRY(attn_desc_set_window(d, W - 1, 0));
  KV_TRY(attn_forward(ctx, d, q, k, v, ref, NULL, NULL));
  rel_error(out, ref, &o->maxe, &o->meane);
  o->vs = ring ? "window" : "causal";
#undef KV_TRY
out:
  free(times);
  attn_kvcache_plan_destroy(pre);
  attn_kvcache_plan_destroy(dec);
  attn_kvcache_destroy(cache);
  attn_desc_destroy(d);
  attn_tensor *ts[] = {q, k, v, out, ref, qp, kp, vp, op, q1, k1, v1, o1};
  for (size_t i = 0; i < sizeof ts / sizeof ts[0]; i++) attn_tensor_destroy(ts[i]);
  return st;
}

static attn_status kv_run(attn_context *ctx, const dims *dm, int reps, custom_out *o, double *pic,
                          char *what, size_t wl) {
  return kv_run_common(ctx, dm, reps, o, pic, what, wl, 1, false);
}

/* Grouped-query attention: 4 query heads per K/V head (or the largest group ≤ 4). */
static attn_status kv_run_gqa(attn_context *ctx, const dims *dm, int reps, custom_out *o,
                              double *pic, char *what, size_t wl) {
  return kv_run_common(ctx, dm, reps, o, pic, what, wl, 4, false);
}

static attn_status kv_run_ring(attn_context *ctx, const dims *dm, int reps, custom_out *o,
                               double *pic, char *what, size_t wl) {
  return kv_run_common(ctx, dm, reps, o, pic, what, wl, 1, true);
}

/* ---- dense masks of the sparse patterns (REF_MASK), from approx.h's definitions ---- */

static attn_status mask_longformer(const dims *dm, const attn_plan *plan, uint8_t *keep) {
  (void)plan;
  const int64_t S = dm->S, w = S / 16, g1 = 0, g2 = S / 2;
  for (int64_t h = 0; h < dm->H; h++)
    for (int64_t i = 0; i < S; i++)
      for (int64_t j = 0; j < S; j++)
        keep[(h * S + i) * S + j] =
            llabs(i - j) <= w || i == g1 || i == g2 || j == g1 || j == g2;
  return ATTN_OK;
}

/* BigBird's random blocks are drawn by the library: read its layout back. */
static attn_status mask_from_layout(const dims *dm, const attn_plan *plan, uint8_t *keep) {
  const int64_t S = dm->S, b = S / 16 > 0 ? S / 16 : 1, nb = (S + b - 1) / b;
  size_t need = (size_t)(dm->H * nb * nb), size = need;
  uint8_t *lay = malloc(need);
  if (lay == NULL) return ATTN_ERR_NO_MEMORY;
  attn_status st = attn_plan_block_layout(plan, lay, &size);
  if (st == ATTN_OK && size != need) st = ATTN_ERR_INTERNAL;
  if (st == ATTN_OK)
    for (int64_t h = 0; h < dm->H; h++)
      for (int64_t i = 0; i < S; i++)
        for (int64_t j = 0; j < S; j++)
          keep[(h * S + i) * S + j] = lay[(h * nb + i / b) * nb + j / b] != 0;
  free(lay);
  return st;
}

/* The block-sparse layout is ours (su_blocksparse): rebuild it. */
static attn_status mask_blocksparse(const dims *dm, const attn_plan *plan, uint8_t *keep) {
  (void)plan;
  const int64_t S = dm->S, b = S / 16 > 0 ? S / 16 : 1;
  for (int64_t h = 0; h < dm->H; h++)
    for (int64_t i = 0; i < S; i++)
      for (int64_t j = 0; j < S; j++) {
        int64_t bi = i / b, bj = j / b;
        keep[(h * S + i) * S + j] = (llabs(bi - bj) <= 1) || (bj % 4 == 3);
      }
  return ATTN_OK;
}

/* Swin: roll the (padded) grid by −shift, partition into M×M windows; with a
 * shift, each axis of length P is cut into [0, P−M), [P−M, P−shift),
 * [P−shift, P) and only tokens in the same cut on both axes attend. */
static void swin_pos(int64_t y, int64_t x, int64_t Ph, int64_t Pw, int64_t M, int64_t sh,
                     int64_t out[4]) {
  int64_t yr = ((y - sh) % Ph + Ph) % Ph, xr = ((x - sh) % Pw + Pw) % Pw;
  out[0] = yr / M;
  out[1] = xr / M;
  out[2] = sh == 0 ? 0 : yr < Ph - M ? 0 : yr < Ph - sh ? 1 : 2;
  out[3] = sh == 0 ? 0 : xr < Pw - M ? 0 : xr < Pw - sh ? 1 : 2;
}

static attn_status mask_swin_common(const dims *dm, uint8_t *keep, bool shifted) {
  int64_t gh, gw, M = dm->picture ? 4 : 8;
  grid_of(dm->S, &gh, &gw);
  const int64_t sh = shifted ? M / 2 : 0, S = dm->S;
  const int64_t Ph = (gh + M - 1) / M * M, Pw = (gw + M - 1) / M * M;
  for (int64_t i = 0; i < S; i++) {
    int64_t a[4];
    swin_pos(i / gw, i % gw, Ph, Pw, M, sh, a);
    for (int64_t j = 0; j < S; j++) {
      int64_t c[4];
      swin_pos(j / gw, j % gw, Ph, Pw, M, sh, c);
      keep[i * S + j] = a[0] == c[0] && a[1] == c[1] && a[2] == c[2] && a[3] == c[3];
    }
  }
  for (int64_t h = 1; h < dm->H; h++) memcpy(keep + h * S * S, keep, (size_t)(S * S));
  return ATTN_OK;
}

static attn_status mask_swin(const dims *dm, const attn_plan *plan, uint8_t *keep) {
  (void)plan;
  return mask_swin_common(dm, keep, false);
}

static attn_status mask_swin_shift(const dims *dm, const attn_plan *plan, uint8_t *keep) {
  (void)plan;
  return mask_swin_common(dm, keep, true);
}

/* Every variant and option family the headers declare. */
static const demo_row rows[] = {
    {"sdpa", REF_NONE, 0, su_sdpa, NULL, NULL},
    {"causal", REF_NONE, 0, su_causal, NULL, NULL},
    {"window", REF_NONE, 0, su_window, NULL, NULL},
    {"causal-window", REF_NONE, 0, su_causal_window, NULL, NULL},
    {"padding", REF_NONE, 0, su_padding, NULL, NULL},
    {"alibi", REF_NONE, 0, su_alibi, NULL, NULL},
    {"softcap", REF_NONE, 0, su_softcap, NULL, NULL},
    {"bool-mask", REF_NONE, 0, su_boolmask, NULL, NULL},
    {"additive-mask", REF_NONE, 0, su_addmask, NULL, NULL},
    {"varlen", REF_NONE, 0, su_varlen, NULL, NULL},
    {"sinks", REF_NONE, 0, su_sinks, NULL, NULL},
    {"mass", REF_NONE, 0, su_mass, NULL, NULL},
    {"luong-dot", REF_NONE, 0, su_dot, NULL, NULL},
    {"luong-general", REF_NONE, 0, su_general, NULL, NULL},
    {"bahdanau", REF_NONE, 1, su_additive, NULL, NULL},
    {"longformer", REF_MASK, 0, su_longformer, NULL, mask_longformer},
    {"bigbird", REF_MASK, 0, su_bigbird, NULL, mask_from_layout},
    {"blocksparse", REF_MASK, 0, su_blocksparse, NULL, mask_blocksparse},
    {"swin", REF_MASK, 0, su_swin, NULL, mask_swin},
    {"swin-shifted", REF_MASK, 0, su_swin_shift, NULL, mask_swin_shift},
    {"linear_elu", REF_FULL, 0, su_linear, NULL, NULL},
    {"linear_elu-causal", REF_CAUSAL, 0, su_linear_causal, NULL, NULL},
    {"performer", REF_FULL, 0, su_performer, NULL, NULL},
    {"linformer", REF_FULL, 0, su_linformer, NULL, NULL},
    {"sdpa-bf16", REF_NONE, 0, NULL, bf16_run, NULL},
    {"causal-bf16", REF_NONE, 0, NULL, bf16_run_causal, NULL},
    {"mha", REF_NONE, 0, NULL, mha_run, NULL},
    {"mha-bf16", REF_NONE, 0, NULL, mha_run_bf16, NULL},
    {"kvcache", REF_NONE, 0, NULL, kv_run, NULL},
    {"kvcache-gqa", REF_NONE, 0, NULL, kv_run_gqa, NULL},
    {"kvcache-ring", REF_NONE, 0, NULL, kv_run_ring, NULL},
};
#define NROWS ((int)(sizeof rows / sizeof rows[0]))

/* ---- running ------------------------------------------------------------------------ */

typedef struct problem {
  dims dm;
  attn_tensor *q, *k, *v, *out;
} problem;

static void problem_free(problem *p) {
  attn_tensor_destroy(p->q);
  attn_tensor_destroy(p->k);
  attn_tensor_destroy(p->v);
  attn_tensor_destroy(p->out);
  memset(p, 0, sizeof *p);
}

static attn_status problem_make(attn_context *ctx, const dims *dm, uint64_t seed, double data_scale,
                                problem *p) {
  memset(p, 0, sizeof *p);
  p->dm = *dm;
  const int64_t sh[4] = {dm->B, dm->H, dm->S, dm->D};
  attn_status st;
  if ((st = attn_tensor_create(ctx, ATTN_DTYPE_F32, 4, sh, &p->q)) != ATTN_OK ||
      (st = attn_tensor_create(ctx, ATTN_DTYPE_F32, 4, sh, &p->k)) != ATTN_OK ||
      (st = attn_tensor_create(ctx, ATTN_DTYPE_F32, 4, sh, &p->v)) != ATTN_OK ||
      (st = attn_tensor_create(ctx, ATTN_DTYPE_F32, 4, sh, &p->out)) != ATTN_OK) {
    problem_free(p);
    return st;
  }
  fill_normal(p->q, seed, data_scale);
  fill_normal(p->k, seed + 1, data_scale);
  fill_normal(p->v, seed + 2, 1.0);
  return ATTN_OK;
}

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

/* Median seconds of `reps` executes after one warm-up. */
static attn_status time_plan(attn_plan *plan, problem *p, int reps, double *median) {
  double t[64];
  if (reps > 64) reps = 64;
  attn_status st = attn_plan_execute(plan, p->q, p->k, p->v, p->out, NULL, NULL);
  for (int r = 0; st == ATTN_OK && r < reps; r++) {
    double t0 = cli_now();
    st = attn_plan_execute(plan, p->q, p->k, p->v, p->out, NULL, NULL);
    t[r] = cli_now() - t0;
  }
  if (st != ATTN_OK) return st;
  qsort(t, (size_t)reps, sizeof t[0], cmp_double);
  *median = reps % 2 ? t[reps / 2] : 0.5 * (t[reps / 2 - 1] + t[reps / 2]);
  return ATTN_OK;
}

/* max|got−want| / max|want| and mean|got−want| / mean|want| (as attn-bench). */
static void rel_error(const attn_tensor *got, const attn_tensor *want, double *maxe, double *meane) {
  const float *g = attn_tensor_data(got), *w = attn_tensor_data(want);
  int64_t n = attn_tensor_numel(got);
  double md = 0, mw = 0, sd = 0, sw = 0;
  for (int64_t i = 0; i < n; i++) {
    double dlt = fabs((double)g[i] - (double)w[i]), a = fabs((double)w[i]);
    if (!(dlt <= md)) md = dlt; /* NaN propagates */
    if (a > mw) mw = a;
    sd += dlt;
    sw += a;
  }
  *maxe = mw > 0 ? md / mw : md;
  *meane = sw > 0 ? sd / sw : sd;
}

/* Exact attention (optionally causal) of p into ref. */
static attn_status exact_ref(attn_context *ctx, problem *p, bool causal, attn_tensor **ref) {
  const int64_t sh[4] = {p->dm.B, p->dm.H, p->dm.S, p->dm.D};
  attn_desc *d = NULL;
  attn_status st = attn_tensor_create(ctx, ATTN_DTYPE_F32, 4, sh, ref);
  if (st == ATTN_OK) st = attn_desc_create(ctx, &d);
  if (st == ATTN_OK && causal) st = attn_desc_set_causal(d, ATTN_CAUSAL_TOP_LEFT);
  if (st == ATTN_OK) st = attn_forward(ctx, d, p->q, p->k, p->v, *ref, NULL, NULL);
  attn_desc_destroy(d);
  if (st != ATTN_OK) {
    attn_tensor_destroy(*ref);
    *ref = NULL;
  }
  return st;
}

/* Exact attention of p with the dense bool mask keep [1, H, S, S]: the
 * reference for a sparse variant's pattern. */
static attn_status masked_ref(attn_context *ctx, problem *p, const demo_row *row,
                              const attn_plan *plan, attn_tensor **ref) {
  const int64_t S = p->dm.S, msh[4] = {1, p->dm.H, S, S};
  const int64_t sh[4] = {p->dm.B, p->dm.H, S, p->dm.D};
  attn_tensor *mask = NULL;
  attn_desc *d = NULL;
  attn_status st = attn_tensor_create(ctx, ATTN_DTYPE_U8, 4, msh, &mask);
  if (st == ATTN_OK) st = row->mask(&p->dm, plan, attn_tensor_data(mask));
  if (st == ATTN_OK) st = attn_tensor_create(ctx, ATTN_DTYPE_F32, 4, sh, ref);
  if (st == ATTN_OK) st = attn_desc_create(ctx, &d);
  if (st == ATTN_OK) st = attn_desc_set_bool_mask(d, mask);
  if (st == ATTN_OK) st = attn_forward(ctx, d, p->q, p->k, p->v, *ref, NULL, NULL);
  attn_desc_destroy(d);
  attn_tensor_destroy(mask);
  if (st != ATTN_OK) {
    attn_tensor_destroy(*ref);
    *ref = NULL;
  }
  return st;
}

/* ---- pictures ------------------------------------------------------------------------ */

/* Effective weights by probing: with v = identity (one-hot value columns),
 * out[i][c] = Σ_j p_ij [j = c] = p_ic — exact for every variant that is
 * linear in v (all of them), including those that cannot return weights. */
static attn_status probe_weights(attn_context *ctx, const attn_desc *d, problem *p, double *w) {
  const int64_t S = p->dm.S, wsh[4] = {1, 1, S, S};
  attn_tensor *eye = NULL, *out2 = NULL;
  attn_plan *plan = NULL;
  attn_status st = attn_tensor_create(ctx, ATTN_DTYPE_F32, 4, wsh, &eye);
  if (st == ATTN_OK) st = attn_tensor_create(ctx, ATTN_DTYPE_F32, 4, wsh, &out2);
  if (st == ATTN_OK) {
    float *e = attn_tensor_data(eye);
    for (int64_t i = 0; i < S; i++) e[i * S + i] = 1.0f;
    st = attn_plan_create(ctx, d, p->q, p->k, eye, out2, NULL, NULL, &plan);
  }
  if (st == ATTN_OK) st = attn_plan_execute(plan, p->q, p->k, eye, out2, NULL, NULL);
  if (st == ATTN_OK) {
    const float *src = attn_tensor_data(out2);
    for (int64_t i = 0; i < S * S; i++) w[i] = src[i];
  }
  attn_plan_destroy(plan);
  attn_tensor_destroy(eye);
  attn_tensor_destroy(out2);
  return st;
}

/* Attention weights of one row on the short problem, as an S×S matrix in w:
 * the plan's weights tensor when the variant can return it, else probed.
 * With check_probe, also probe where weights exist and put the largest
 * difference in *probe_diff (else it is left at -1). */
static attn_status picture_weights(attn_context *ctx, const demo_row *row, problem *p, double *w,
                                   bool check_probe, double *probe_diff, const char **how,
                                   char *why, size_t whylen, aux *x) {
  const int64_t S = p->dm.S;
  const int64_t wsh[4] = {1, 1, S, S};
  attn_desc *d = NULL;
  attn_plan *plan = NULL;
  attn_tensor *wt = NULL;
  *probe_diff = -1.0;
  attn_status st = attn_desc_create(ctx, &d);
  if (st == ATTN_OK) st = row->setup(ctx, d, &p->dm, x);
  if (st == ATTN_OK) st = attn_tensor_create(ctx, ATTN_DTYPE_F32, 4, wsh, &wt);
  if (st != ATTN_OK) {
    snprintf(why, whylen, "%s", attn_context_last_error(ctx));
    goto out;
  }
  st = attn_plan_create(ctx, d, p->q, p->k, p->v, p->out, wt, NULL, &plan);
  if (st == ATTN_OK) st = attn_plan_execute(plan, p->q, p->k, p->v, p->out, wt, NULL);
  if (st == ATTN_OK) {
    *how = "weights";
    const float *src = attn_tensor_data(wt);
    for (int64_t i = 0; i < S * S; i++) w[i] = src[i];
    if (check_probe) {
      double *tmp = malloc(sizeof(double) * (size_t)(S * S));
      if (tmp == NULL) {
        st = ATTN_ERR_NO_MEMORY;
        snprintf(why, whylen, "out of memory");
        goto out;
      }
      st = probe_weights(ctx, d, p, tmp);
      if (st == ATTN_OK) {
        double md = 0.0;
        for (int64_t i = 0; i < S * S; i++) {
          double dd = fabs(tmp[i] - w[i]);
          if (!(dd <= md)) md = dd;
        }
        *probe_diff = md;
      } else {
        snprintf(why, whylen, "probe: %s", attn_context_last_error(ctx));
      }
      free(tmp);
    }
  } else {
    snprintf(why, whylen, "%s", attn_context_last_error(ctx));
    st = probe_weights(ctx, d, p, w);
    if (st == ATTN_OK) {
      *how = "probed with one-hot v";
    } else {
      size_t used = strlen(why);
      snprintf(why + used, whylen - used, "; probe: %s", attn_context_last_error(ctx));
    }
  }
out:
  attn_plan_destroy(plan);
  attn_tensor_destroy(wt);
  attn_desc_destroy(d);
  return st;
}

/* bytes > 0: the rate column shows GB/s of `bytes`, else GFLOP/s of `flops`. */
static void print_row(const char *name, const char *shape, double secs, double flops, double bytes,
                      double maxe, double meane, const char *vs, size_t ws_bytes, const char *what) {
  char e1[16], e2[16], ws[16], rss[16], rate[24];
  if (bytes > 0) snprintf(rate, sizeof rate, "%.1fGB/s", bytes / secs * 1e-9);
  else snprintf(rate, sizeof rate, "%.1f", flops / secs * 1e-9);
  if (maxe >= 0) {
    snprintf(e1, sizeof e1, "%.2e", maxe);
    snprintf(e2, sizeof e2, "%.2e", meane);
  } else {
    snprintf(e1, sizeof e1, "exact");
    snprintf(e2, sizeof e2, "-");
  }
  fmt_mib(ws, sizeof ws, (double)ws_bytes / (1024.0 * 1024.0));
  fmt_mib(rss, sizeof rss, cli_peak_rss_mib());
  printf("%-18s %-16s %9.3f %9s %9s %9s %-6s %7s %7s  %s\n", name, shape, secs * 1e3, rate, e1,
         e2, vs, ws, rss, what);
  fflush(stdout);
}

static void print_dashes(const char *name, const char *shape, const char *note, const char *msg) {
  printf("%-18s %-16s %9s %9s %9s %9s %-6s %7s %7s  %s%s\n", name, shape, "-", "-", "-", "-", "-",
         "-", "-", note, msg);
  fflush(stdout);
}

/* ---- the command ------------------------------------------------------------------------ */

static void demo_usage(FILE *f) {
  fprintf(f,
          "Usage: attn demo [--out DIR] [--quick] [--S N] [--H N] [--D N] [--reps N]\n"
          "                 [--no-pictures] [--threads N]\n"
          "\n"
          "Runs every attention variant libattn has on a built-in workload (f32,\n"
          "B=1, H=8, S=1024, d=64; Swin on a 32x32 grid with 8x8 windows) and prints,\n"
          "per variant: shape, median time, GFLOP/s (dense-equivalent 4*B*H*S*S*d, so\n"
          "skipped work shows as a higher rate), error against exact attention for the\n"
          "approximations (max and mean relative), plan workspace and peak RSS.\n"
          "The KV cache rows prefill S-32 positions and decode the last 32 one token\n"
          "at a time (time per step, GB/s of K/V read, error against exact causal\n"
          "attention over the whole sequence); with GQA and as a ring (sliding window).\n"
          "Variants the loaded libattn does not support show as \"not built\".\n"
          "Then writes a PNG picture of each variant's attention weights on a 64-token\n"
          "sequence into DIR (plus index.html) and prints where they went.\n"
          "\n"
          "Options:\n"
          "  --out DIR       where pictures go (default: attn-demo)\n"
          "  --quick         smaller workload (S=256, 3 runs), for smoke tests\n"
          "  --S N           sequence length of the timed workload (default 1024)\n"
          "  --H N, --D N    heads and head dim (default 8, 64)\n"
          "  --reps N        timed runs per variant, median reported (default 5)\n"
          "  --no-pictures   skip the pictures\n"
          "  --check-probe   also compute each picture by probing with one-hot v and\n"
          "                  check it equals the weights the plan returns (self-test)\n"
          "  --threads N     libattn worker threads\n"
          "\n" CLI_EXIT_TABLE);
}

static void fmt_mib(char *buf, size_t n, double mib) {
  if (mib < 0) snprintf(buf, n, "-");
  else if (mib < 10) snprintf(buf, n, "%.2f", mib);
  else snprintf(buf, n, "%.0f", mib);
}

int cmd_demo(const cli_global *g0, int argc, char **argv) {
  cli_global g = *g0;
  const char *outdir = "attn-demo";
  int64_t S = 1024, H = 8, D = 64, reps = 5;
  bool pictures = true, quick = false, S_set = false, reps_set = false, check_probe = false;
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i], *val = NULL, *v;
    int64_t n;
    if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
      demo_usage(stdout);
      return CLI_EXIT_OK;
    } else if (strcmp(a, "--quick") == 0) {
      quick = true;
    } else if (strcmp(a, "--no-pictures") == 0) {
      pictures = false;
    } else if (strcmp(a, "--check-probe") == 0) {
      check_probe = true;
    } else if (cli_opt_is(a, "--out", &val)) {
      if ((outdir = cli_opt_value(CMD, argc, argv, &i, "--out", val)) == NULL) return CLI_EXIT_USAGE;
    } else if (cli_opt_is(a, "--threads", &val) || cli_opt_is(a, "--S", &val) ||
               cli_opt_is(a, "--H", &val) || cli_opt_is(a, "--D", &val) ||
               cli_opt_is(a, "--reps", &val)) {
      char name[16];
      size_t nl = strcspn(a, "=");
      snprintf(name, sizeof name, "%.*s", (int)nl, a);
      if ((v = cli_opt_value(CMD, argc, argv, &i, name, val)) == NULL) return CLI_EXIT_USAGE;
      int64_t hi = strcmp(name, "--reps") == 0 ? 64 : strcmp(name, "--S") == 0 ? 65536 : 1024;
      int64_t lo = strcmp(name, "--S") == 0 ? 16 : 1;
      if (!cli_parse_i64(v, lo, hi, &n)) {
        cli_err(CMD, "%s: '%s' is not a number from %" PRId64 " to %" PRId64, name, v, lo, hi);
        return CLI_EXIT_USAGE;
      }
      if (strcmp(name, "--threads") == 0) g.threads = (int32_t)n;
      else if (strcmp(name, "--S") == 0) S = n, S_set = true;
      else if (strcmp(name, "--H") == 0) H = n;
      else if (strcmp(name, "--D") == 0) D = n;
      else reps = n, reps_set = true;
    } else {
      cli_err(CMD, "unknown option '%s' (try attn demo --help)", a);
      return CLI_EXIT_USAGE;
    }
  }
  if (quick) {
    if (!S_set) S = 256;
    if (!reps_set) reps = 3;
  }

  attn_context *ctx = cli_context(&g, CMD);
  if (ctx == NULL) return CLI_EXIT_RUNTIME;
  int rc = CLI_EXIT_OK;
  problem big = {0}, bigh1 = {0}, pic = {0};
  attn_tensor *ref_full = NULL, *ref_causal = NULL;
  double *wbuf = NULL;
  const dims dm_big = {1, H, S, D, false}, dm_big1 = {1, 1, S, D, false};
  const dims dm_pic = {1, 1, 64, 16, true};
  attn_status st;
  if ((st = problem_make(ctx, &dm_big, 1000, 1.0, &big)) != ATTN_OK ||
      (st = problem_make(ctx, &dm_big1, 1000, 1.0, &bigh1)) != ATTN_OK ||
      (st = problem_make(ctx, &dm_pic, 77, 1.0, &pic)) != ATTN_OK) {
    cli_err(CMD, "cannot allocate the workload: %s", attn_status_string(st));
    rc = CLI_EXIT_RUNTIME;
    goto done;
  }
  wbuf = malloc(sizeof(double) * 64 * 64);
  if (wbuf == NULL) {
    cli_err(CMD, "out of memory");
    rc = CLI_EXIT_RUNTIME;
    goto done;
  }
  if (pictures && cli_mkdir_p(outdir) != 0) {
    cli_err(CMD, "%s: cannot create the output folder: %s", outdir, strerror(errno));
    rc = CLI_EXIT_IO;
    goto done;
  }

  printf("libattn %s demo: %d thread%s, f32, q/k/v ~ N(0,1), median of %" PRId64 " runs\n",
         attn_version_string(), (int)attn_context_num_threads(ctx),
         attn_context_num_threads(ctx) == 1 ? "" : "s", reps);
  printf("workload B=1 H=%" PRId64 " S=%" PRId64 " d=%" PRId64
         "\nerrors: max|out-ref|/max|ref| and mean|out-ref|/mean|ref| against exact attention on\n"
         "the same inputs: 'vs full' (unmasked) or 'vs causal' for the linear and low-rank\n"
         "approximations, 'vs mask' (exact attention with a dense bool mask of the same\n"
         "pattern, built here from approx.h's definitions) for the sparse variants\n\n",
         H, S, D);
  printf("%-18s %-16s %9s %9s %9s %9s %-6s %7s %7s  %s\n", "variant", "shape [B,H,S,d]", "ms",
         "GFLOP/s", "max err", "mean err", "vs", "ws MiB", "RSS MiB", "notes");
  printf("%-18s %-16s %9s %9s %9s %9s %-6s %7s %7s  %s\n", "-------", "---------------", "--",
         "-------", "-------", "--------", "--", "------", "-------", "-----");

  int ran = 0, not_built = 0, failed = 0, npics = 0;
  char pic_names[NROWS][48];
  char pic_notes[NROWS][200];
  int pic_ok[NROWS];
  memset(pic_ok, 0, sizeof pic_ok);
  for (int r = 0; r < NROWS; r++) {
    const demo_row *row = &rows[r];
    pic_names[r][0] = '\0';
    pic_notes[r][0] = '\0';
    problem *p = row->heads == 1 ? &bigh1 : &big;
    char shape[40];
    snprintf(shape, sizeof shape, "1,%" PRId64 ",%" PRId64 ",%" PRId64, p->dm.H, p->dm.S, p->dm.D);
    if (row->custom != NULL) {
      char what[160] = "";
      custom_out co;
      custom_out_init(&co);
      st = row->custom(ctx, &p->dm, (int)reps, &co, NULL, what, sizeof what);
      if (st == ATTN_ERR_UNSUPPORTED) {
        print_dashes(row->name, shape, "not built: ", attn_context_last_error(ctx));
        not_built++;
        continue;
      }
      if (st != ATTN_OK) {
        char msg[400];
        snprintf(msg, sizeof msg, "%s: %s", attn_status_string(st), attn_context_last_error(ctx));
        print_dashes(row->name, shape, "ERROR ", msg);
        failed++;
        continue;
      }
      print_row(row->name, shape, co.secs, co.flops, co.bytes, co.maxe, co.meane, co.vs, co.ws, what);
      if (co.maxe >= 0 && !(co.maxe <= co.tol)) {
        printf("%-18s error against %s attention too large: FAILED\n", row->name, co.vs);
        failed++;
      }
      ran++;
      if (!pictures) continue;
      snprintf(pic_names[r], sizeof pic_names[r], "%02d-%s.png", r + 1, row->name);
      custom_out_init(&co);
      st = row->custom(ctx, &pic.dm, 0, &co, wbuf, what, sizeof what);
      if (st != ATTN_OK) {
        snprintf(pic_notes[r], sizeof pic_notes[r], "no picture: %.180s", attn_context_last_error(ctx));
        continue;
      }
      char path[4096], sub[300], err[512];
      snprintf(path, sizeof path, "%s/%s", outdir, pic_names[r]);
      snprintf(sub, sizeof sub, "%s | %s, rows scaled to max, grey = 0", what, co.pic_note);
      if (picture_heatmap_png(path, pic_names[r], sub, wbuf, co.pic_rows, co.pic_cols, err,
                              sizeof err) != 0) {
        cli_err(CMD, "%s", err);
        rc = CLI_EXIT_IO;
        continue;
      }
      pic_ok[r] = 1;
      npics++;
      continue;
    }
    aux x;
    memset(&x, 0, sizeof x);
    attn_desc *d = NULL;
    attn_plan *plan = NULL;
    st = attn_desc_create(ctx, &d);
    if (st == ATTN_OK) st = row->setup(ctx, d, &p->dm, &x);
    if (st == ATTN_OK) st = attn_plan_create(ctx, d, p->q, p->k, p->v, p->out, NULL, NULL, &plan);
    if (st == ATTN_ERR_UNSUPPORTED) {
      print_dashes(row->name, shape, "not built: ", attn_context_last_error(ctx));
      not_built++;
      attn_desc_destroy(d);
      aux_free(&x);
      continue;
    }
    double secs = 0, maxe = -1, meane = -1;
    if (st == ATTN_OK) st = time_plan(plan, p, (int)reps, &secs);
    if (st == ATTN_OK && row->ref == REF_MASK) {
      attn_tensor *mref = NULL;
      st = masked_ref(ctx, p, row, plan, &mref);
      if (st == ATTN_OK) rel_error(p->out, mref, &maxe, &meane);
      attn_tensor_destroy(mref);
    } else if (st == ATTN_OK && row->ref != REF_NONE) {
      attn_tensor **ref = row->ref == REF_CAUSAL ? &ref_causal : &ref_full;
      if (*ref == NULL) st = exact_ref(ctx, &big, row->ref == REF_CAUSAL, ref);
      if (st == ATTN_OK) {
        /* the plan's last execute left its output in p->out */
        rel_error(p->out, *ref, &maxe, &meane);
      }
    }
    if (st != ATTN_OK) {
      char msg[400];
      snprintf(msg, sizeof msg, "%s: %s", attn_status_string(st), attn_context_last_error(ctx));
      print_dashes(row->name, shape, "ERROR ", msg);
      failed++;
      attn_plan_destroy(plan);
      attn_desc_destroy(d);
      aux_free(&x);
      continue;
    }
    double flops = 4.0 * (double)p->dm.B * (double)p->dm.H * (double)p->dm.S * (double)p->dm.S *
                   (double)p->dm.D;
    static const char *const vs_names[] = {"-", "full", "causal", "mask"};
    print_row(row->name, shape, secs, flops, 0.0, maxe, meane, vs_names[row->ref],
              attn_plan_workspace_size(plan), x.what);
    ran++;
    attn_plan_destroy(plan);
    attn_desc_destroy(d);
    aux_free(&x);

    if (!pictures) continue;
    const char *how = "";
    char why[400] = "";
    memset(&x, 0, sizeof x);
    snprintf(pic_names[r], sizeof pic_names[r], "%02d-%s.png", r + 1, row->name);
    double pdiff = -1.0;
    st = picture_weights(ctx, row, &pic, wbuf, check_probe, &pdiff, &how, why, sizeof why, &x);
    if (st != ATTN_OK) {
      snprintf(pic_notes[r], sizeof pic_notes[r], "no picture: %.180s", why);
      if (check_probe) failed++;
      aux_free(&x);
      continue;
    }
    if (pdiff >= 0.0) {
      bool agree = pdiff <= 1e-5;
      snprintf(pic_notes[r], sizeof pic_notes[r], "probe check: weights vs one-hot probe max |diff| %.1e %s",
               pdiff, agree ? "ok" : "MISMATCH");
      if (!agree) failed++;
    }
    char path[4096], sub[300], err[512];
    snprintf(path, sizeof path, "%s/%s", outdir, pic_names[r]);
    snprintf(sub, sizeof sub, "%s | 64 tokens, %s, rows scaled to max, grey = 0", x.what, how);
    double mass_bar[64];
    const bool has_mass = x.mass != NULL && attn_tensor_numel(x.mass) >= 64;
    if (has_mass) /* head 0's mass row */
      for (int j = 0; j < 64; j++) mass_bar[j] = ((const float *)attn_tensor_data(x.mass))[j];
    aux_free(&x);
    if (picture_heatmap_bar_png(path, pic_names[r], sub, wbuf, 64, 64, has_mass ? mass_bar : NULL,
                                "PER-KEY MASS SUM_I P_IJ (KERNEL OUTPUT)", err, sizeof err) != 0) {
      cli_err(CMD, "%s", err);
      rc = CLI_EXIT_IO;
      continue;
    }
    pic_ok[r] = 1;
    npics++;
  }

  printf("\n%d variant%s ran", ran, ran == 1 ? "" : "s");
  if (not_built > 0) printf(", %d not built (unsupported by the loaded libattn)", not_built);
  if (failed > 0) printf(", %d FAILED", failed);
  printf(".\nGFLOP/s counts dense attention's 4*B*H*S*S*d FLOPs for every row (mha adds its\n"
         "projections' 8*B*S*E*E). kvcache rows: ms per decode step (append one token's K/V,\n"
         "attend its query to the cache) and GB/s of cached K/V the step reads; their error is\n"
         "every position the cache produced against exact causal (ring: window) attention\n"
         "over the whole sequence.\n"
         "'vs full' errors are large on this random N(0,1) data by nature, not by accident:\n"
         "exact attention averages many random values (a small output), linear attention is\n"
         "a different kernel, Linformer's projections are untrained and FAVOR+'s variance\n"
         "grows with |q|^2 + |k|^2.\n");

  if (pictures) {
    char path[4096];
    snprintf(path, sizeof path, "%s/index.html", outdir);
    FILE *f = fopen(path, "w");
    if (f != NULL) {
      fprintf(f, "<!doctype html><meta charset=\"utf-8\"><title>libattn %s demo</title>\n"
                 "<h1>libattn %s: attention patterns on 64 tokens</h1>\n<p>Each row of a picture "
                 "is one query, scaled to its largest weight; grey = weight 0.</p>\n",
              attn_version_string(), attn_version_string());
      for (int r = 0; r < NROWS; r++)
        if (pic_ok[r])
          fprintf(f, "<figure style=\"display:inline-block\"><img src=\"%s\"><figcaption>%s"
                     "</figcaption></figure>\n", pic_names[r], rows[r].name);
      if (fclose(f) != 0) cli_err(CMD, "%s: write error", path);
    } else {
      cli_err(CMD, "%s: cannot write: %s", path, strerror(errno));
    }
    printf("\nWrote %d picture%s of the attention weights to %s/ (open %s/index.html):\n", npics,
           npics == 1 ? "" : "s", outdir, outdir);
    for (int r = 0; r < NROWS; r++) {
      if (pic_ok[r]) printf("  %s/%s%s%s\n", outdir, pic_names[r], pic_notes[r][0] ? "  " : "", pic_notes[r]);
      else if (pic_notes[r][0] != '\0') printf("  %-24s %s\n", rows[r].name, pic_notes[r]);
    }
  }
  if (failed > 0 && rc == CLI_EXIT_OK) rc = CLI_EXIT_RUNTIME;

done:
  free(wbuf);
  attn_tensor_destroy(ref_full);
  attn_tensor_destroy(ref_causal);
  problem_free(&big);
  problem_free(&bigh1);
  problem_free(&pic);
  attn_context_destroy(ctx);
  return rc;
}

/* A transformer decoder layer on libattn's multi-head attention:
 *
 *   x = x + SelfAttn(LN(x))            causal, grouped K/V heads (GQA, H_kv = 2)
 *   x = x + CrossAttn(LN(x), memory)   attends to an "encoder" memory (kdim ≠ E)
 *   x = x + FFN(LN(x))                 W2·GELU(W1·x + b1) + b2, plain C loops
 *
 * on a small built-in input (deterministic weights), printing a checksum.
 * Plans are made once; running the layer again allocates nothing. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "attn/attn.h"

enum { B = 2, T = 6, S = 10, E = 32, H = 4, HKV = 2, MEM_DIM = 24, FF = 64 };

/* Deterministic uniform numbers in [-a, a). */
static uint64_t rng_state = 0x2545F4914F6CDD1DULL;
static float rnd(float a) {
  rng_state ^= rng_state << 13;
  rng_state ^= rng_state >> 7;
  rng_state ^= rng_state << 17;
  return a * (2.0f * (float)(rng_state >> 40) / 16777216.0f - 1.0f);
}
static float *filled(size_t n, float a) {
  float *x = malloc(n * sizeof *x);
  if (x == NULL) exit(1);
  for (size_t i = 0; i < n; i++) x[i] = rnd(a);
  return x;
}

static attn_context *ctx;

static void check(attn_status st, const char *what) {
  if (st != ATTN_OK) {
    fprintf(stderr, "%s: %s (%s)\n", what, attn_status_string(st), attn_context_last_error(ctx));
    exit(1);
  }
}

static attn_tensor *wrap(float *data, int32_t rank, int64_t d0, int64_t d1, int64_t d2) {
  int64_t shape[3] = {d0, d1, d2};
  attn_tensor *t = NULL;
  check(attn_tensor_wrap(ctx, ATTN_DTYPE_F32, rank, shape + (3 - rank), NULL, data, &t), "wrap");
  return t;
}

/* Layer norm over the last dim (no affine). */
static void layer_norm(const float *x, float *y, int rows) {
  for (int r = 0; r < rows; r++) {
    double mean = 0, var = 0;
    for (int e = 0; e < E; e++) mean += x[r * E + e];
    mean /= E;
    for (int e = 0; e < E; e++) var += (x[r * E + e] - mean) * (x[r * E + e] - mean);
    float inv = (float)(1.0 / sqrt(var / E + 1e-5));
    for (int e = 0; e < E; e++) y[r * E + e] = (float)(x[r * E + e] - mean) * inv;
  }
}

static float gelu(float v) { return 0.5f * v * (1.0f + erff(v / sqrtf(2.0f))); }

/* A multi-head attention layer with its weights (owned here, borrowed by libattn). */
typedef struct mha {
  float *w_q, *w_k, *w_v, *b_in, *w_o, *b_o;
  attn_tensor *t[6];
  attn_mha *layer;
} mha;

static void mha_make(mha *m, int64_t kdim, int64_t kv_heads) {
  int64_t ekv = kv_heads * (E / H);
  float a = 1.0f / sqrtf((float)E);
  m->w_q = filled(E * E, a);
  m->w_k = filled((size_t)(ekv * kdim), 1.0f / sqrtf((float)kdim));
  m->w_v = filled((size_t)(ekv * kdim), 1.0f / sqrtf((float)kdim));
  m->b_in = filled((size_t)(E + 2 * ekv), 0.1f);
  m->w_o = filled(E * E, a);
  m->b_o = filled(E, 0.1f);
  attn_mha_weights w;
  attn_mha_weights_init(&w);
  w.q_proj_weight = m->t[0] = wrap(m->w_q, 2, 0, E, E);
  w.k_proj_weight = m->t[1] = wrap(m->w_k, 2, 0, ekv, kdim);
  w.v_proj_weight = m->t[2] = wrap(m->w_v, 2, 0, ekv, kdim);
  w.in_proj_bias = m->t[3] = wrap(m->b_in, 1, 0, 0, E + 2 * ekv);
  w.out_proj_weight = m->t[4] = wrap(m->w_o, 2, 0, E, E);
  w.out_proj_bias = m->t[5] = wrap(m->b_o, 1, 0, 0, E);
  attn_mha_config cfg;
  attn_mha_config_init(&cfg);
  cfg.embed_dim = E;
  cfg.num_heads = H;
  cfg.num_kv_heads = kv_heads;
  cfg.kdim = cfg.vdim = kdim;
  cfg.batch_first = 1;
  check(attn_mha_create(ctx, &cfg, &w, &m->layer), "attn_mha_create");
}

static void mha_free(mha *m) {
  attn_mha_destroy(m->layer);
  for (int i = 0; i < 6; i++) attn_tensor_destroy(m->t[i]);
  free(m->w_q); free(m->w_k); free(m->w_v); free(m->b_in); free(m->w_o); free(m->b_o);
}

int main(void) {
  check(attn_context_create(NULL, &ctx), "attn_context_create");
  float *x = filled(B * T * E, 1.0f);        /* decoder input [B, T, E] */
  float *memory = filled(B * S * MEM_DIM, 1.0f); /* encoder output [B, S, MEM_DIM] */
  float *h = malloc(B * T * E * sizeof *h), *a = malloc(B * T * E * sizeof *a);
  mha self, cross;
  mha_make(&self, E, HKV);
  mha_make(&cross, MEM_DIM, H);
  float *w1 = filled(FF * E, 1.0f / sqrtf(E)), *b1 = filled(FF, 0.1f);
  float *w2 = filled(E * FF, 1.0f / sqrtf(FF)), *b2 = filled(E, 0.1f);

  attn_tensor *th = wrap(h, 3, B, T, E), *ta = wrap(a, 3, B, T, E), *tm = wrap(memory, 3, B, S, MEM_DIM);
  /* Memory padding: the second sequence has only 7 real encoder positions
   * (non-zero = attend). */
  uint8_t pad[B * S];
  for (int b = 0; b < B; b++)
    for (int s = 0; s < S; s++) pad[b * S + s] = b == 0 || s < 7;
  attn_tensor *tpad = NULL;
  int64_t pshape[2] = {B, S};
  check(attn_tensor_wrap(ctx, ATTN_DTYPE_U8, 2, pshape, NULL, pad, &tpad), "wrap");
  attn_desc *causal = NULL;
  check(attn_desc_create(ctx, &causal), "attn_desc_create");
  check(attn_desc_set_causal(causal, ATTN_CAUSAL_TOP_LEFT), "set_causal");

  attn_mha_plan *p_self = NULL, *p_cross = NULL;
  check(attn_mha_plan_create(self.layer, causal, th, th, th, NULL, ta, NULL, &p_self), "plan self");
  check(attn_mha_plan_create(cross.layer, NULL, th, tm, tm, tpad, ta, NULL, &p_cross), "plan cross");

  /* 1. causal self-attention */
  layer_norm(x, h, B * T);
  check(attn_mha_plan_execute(p_self, th, th, th, NULL, ta, NULL), "self-attention");
  for (int i = 0; i < B * T * E; i++) x[i] += a[i];
  /* 2. cross-attention to the encoder memory */
  layer_norm(x, h, B * T);
  check(attn_mha_plan_execute(p_cross, th, tm, tm, tpad, ta, NULL), "cross-attention");
  for (int i = 0; i < B * T * E; i++) x[i] += a[i];
  /* 3. feed-forward */
  layer_norm(x, h, B * T);
  for (int r = 0; r < B * T; r++) {
    float mid[FF];
    for (int f = 0; f < FF; f++) {
      float s = b1[f];
      for (int e = 0; e < E; e++) s += w1[f * E + e] * h[r * E + e];
      mid[f] = gelu(s);
    }
    for (int e = 0; e < E; e++) {
      float s = b2[e];
      for (int f = 0; f < FF; f++) s += w2[e * FF + f] * mid[f];
      x[r * E + e] += s;
    }
  }

  double sum = 0, abs_sum = 0;
  for (int i = 0; i < B * T * E; i++) {
    sum += x[i];
    abs_sum += fabs(x[i]);
  }
  printf("decoder layer: B=%d T=%d S=%d E=%d H=%d (self H_kv=%d)\n", B, T, S, E, H, HKV);
  printf("out[0,0,0:4] = %.6f %.6f %.6f %.6f\n", x[0], x[1], x[2], x[3]);
  printf("checksum: sum=%.6f abs_sum=%.6f\n", sum, abs_sum);

  attn_mha_plan_destroy(p_self);
  attn_mha_plan_destroy(p_cross);
  attn_desc_destroy(causal);
  attn_tensor_destroy(th); attn_tensor_destroy(ta); attn_tensor_destroy(tm); attn_tensor_destroy(tpad);
  mha_free(&self);
  mha_free(&cross);
  free(x); free(memory); free(h); free(a); free(w1); free(b1); free(w2); free(b2);
  attn_context_destroy(ctx);
  return 0;
}

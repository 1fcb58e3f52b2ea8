/* Case `mha_bwd`: a training step of the multi-head self-attention layer
 * (nn.MultiheadAttention's computation, batch-first, E = H·D, packed in/out
 * projections with biases) through libattn's layer API: attn_mha with an
 * attn_mha_backward_plan.
 *
 *   forward:  attn_mha_forward_train (projections, attention with lse,
 *             out-projection; the activations kept in `saved`)
 *   backward: attn_mha_backward_execute: dx (the sum over query, key and
 *             value: one input), dW_in, db_in, dW_o, db_o
 *
 * `ms` is the backward alone, `fwd_ms` (the extra) the training forward, both
 * in this process; FLOPs are the backward's: 2.5 × 4·B·H·S²·D + 2 · 2·B·S·(3E·E + E·E). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench.h"

enum { T_X, T_Y, T_DY, T_DX, T_WIN, T_BIN, T_WO, T_BO, T_GWIN, T_GBIN, T_GWO, T_GBO, T_N };

typedef struct mhab {
  attn_tensor *t[T_N];
  attn_mha *mha;
  attn_mha_backward_plan *plan;
  attn_mha_grads grads;
  void *saved;
  size_t saved_size;
} mhab;

static int mhab_forward(void *arg) {
  mhab *m = arg;
  return attn_mha_forward_train(m->plan, m->t[T_X], m->t[T_X], m->t[T_X], NULL, m->t[T_Y],
                                m->saved, m->saved_size) != ATTN_OK;
}

static int mhab_backward(void *arg) {
  mhab *m = arg;
  return attn_mha_backward_execute(m->plan, m->t[T_X], m->t[T_X], m->t[T_X], NULL, m->t[T_DY],
                                   m->saved, m->saved_size, m->t[T_DX], m->t[T_DX], m->t[T_DX],
                                   &m->grads) != ATTN_OK;
}

/* A tensor of uniform values in [-a, a) (a = 0: zeros). */
static attn_tensor *filled(attn_context *ctx, attn_dtype dt, int32_t rank, int64_t d0,
                           int64_t d1, int64_t d2, double a, uint64_t seed) {
  const int64_t all[3] = {d0, d1, d2};
  const int64_t *shape = all + (3 - rank);
  attn_tensor *t = NULL;
  if (attn_tensor_create(ctx, dt, rank, shape, &t) != ATTN_OK) return NULL;
  const int64_t n = attn_tensor_numel(t);
  uint64_t s = seed * 0x9E3779B97F4A7C15ULL + 1;
  for (int64_t i = 0; i < n; i++) {
    s ^= s << 13;
    s ^= s >> 7;
    s ^= s << 17;
    const double x = a * (2.0 * (double)(s >> 11) / 9007199254740992.0 - 1.0);
    if (dt == ATTN_DTYPE_F32)
      ((float *)attn_tensor_data(t))[i] = (float)x;
    else
      ((double *)attn_tensor_data(t))[i] = x;
  }
  return t;
}

static int case_mha_bwd(attn_context *ctx, const bench_opts *o, bench_result *r) {
  if (o->Sq != o->Sk || (o->Hkv > 0 && o->Hkv != o->H)) {
    fprintf(stderr, "attn-bench: mha_bwd is self-attention with H_kv = H (no --Sq/--Sk/--Hkv)\n");
    return 1;
  }
  if (o->dtype != ATTN_DTYPE_F32 && o->dtype != ATTN_DTYPE_F64) {
    fprintf(stderr, "attn-bench: mha_bwd runs f32 or f64 layers\n");
    return 1;
  }
  mhab m;
  memset(&m, 0, sizeof m);
  const attn_dtype dt = o->dtype;
  const int64_t B = o->B, S = o->Sq, H = o->H, E = o->H * o->D;
  const double a = 1.0 / sqrt((double)E);
  m.t[T_X] = filled(ctx, dt, 3, B, S, E, 1.0, 1);
  m.t[T_DY] = filled(ctx, dt, 3, B, S, E, 1.0, 2);
  m.t[T_Y] = filled(ctx, dt, 3, B, S, E, 0, 0);
  m.t[T_DX] = filled(ctx, dt, 3, B, S, E, 0, 0);
  m.t[T_WIN] = filled(ctx, dt, 2, 0, 3 * E, E, a, 3);
  m.t[T_BIN] = filled(ctx, dt, 1, 0, 0, 3 * E, 0.1, 4);
  m.t[T_WO] = filled(ctx, dt, 2, 0, E, E, a, 5);
  m.t[T_BO] = filled(ctx, dt, 1, 0, 0, E, 0.1, 6);
  m.t[T_GWIN] = filled(ctx, dt, 2, 0, 3 * E, E, 0, 0);
  m.t[T_GBIN] = filled(ctx, dt, 1, 0, 0, 3 * E, 0, 0);
  m.t[T_GWO] = filled(ctx, dt, 2, 0, E, E, 0, 0);
  m.t[T_GBO] = filled(ctx, dt, 1, 0, 0, E, 0, 0);
  bool ok = true;
  for (int i = 0; i < T_N; i++) ok = ok && m.t[i] != NULL;
  attn_desc *desc = NULL;
  int rc = 1;
  if (ok) {
    attn_mha_config cfg;
    attn_mha_config_init(&cfg);
    cfg.embed_dim = E, cfg.num_heads = H, cfg.batch_first = 1, cfg.dtype = dt;
    attn_mha_weights w;
    attn_mha_weights_init(&w);
    w.in_proj_weight = m.t[T_WIN], w.in_proj_bias = m.t[T_BIN];
    w.out_proj_weight = m.t[T_WO], w.out_proj_bias = m.t[T_BO];
    attn_mha_grads_init(&m.grads);
    m.grads.in_proj_weight = m.t[T_GWIN], m.grads.in_proj_bias = m.t[T_GBIN];
    m.grads.out_proj_weight = m.t[T_GWO], m.grads.out_proj_bias = m.t[T_GBO];
    ok = attn_desc_create(ctx, &desc) == ATTN_OK &&
         (!o->causal || attn_desc_set_causal(desc, ATTN_CAUSAL_TOP_LEFT) == ATTN_OK) &&
         attn_mha_create(ctx, &cfg, &w, &m.mha) == ATTN_OK &&
         attn_mha_backward_plan_create(m.mha, desc, m.t[T_X], m.t[T_X], m.t[T_X], NULL, m.t[T_Y],
                                       &m.plan) == ATTN_OK;
    if (!ok) fprintf(stderr, "attn-bench: mha_bwd plan: %s\n", attn_context_last_error(ctx));
  }
  if (ok) {
    m.saved_size = attn_mha_backward_saved_size(m.plan);
    ok = (m.saved = malloc(m.saved_size)) != NULL;
    if (ok) memset(m.saved, 0, m.saved_size);
  }
  if (ok && mhab_forward(&m) == 0) {
    r->ms = bench_time_ms(mhab_backward, &m, o->reps);
    r->extra = bench_time_ms(mhab_forward, &m, o->reps);
    r->extra_name = "fwd_ms";
    const double Bd = (double)B, Sd = (double)S, Ed = (double)E;
    r->flops = 2.5 * 4.0 * Bd * (double)H * Sd * Sd * (double)o->D +
               2.0 * 2.0 * Bd * Sd * (3.0 * Ed * Ed + Ed * Ed);
    rc = isnan(r->ms) || isnan(r->extra);
  } else if (ok) {
    fprintf(stderr, "attn-bench: mha_bwd: %s\n", attn_context_last_error(ctx));
  }
  free(m.saved);
  attn_mha_backward_plan_destroy(m.plan);
  attn_mha_destroy(m.mha);
  attn_desc_destroy(desc);
  for (int i = 0; i < T_N; i++) attn_tensor_destroy(m.t[i]);
  return rc;
}

const bench_case bench_case_mha_bwd = {
    "mha_bwd", case_mha_bwd,
    "MHA self-attention layer training step (attn_mha backward plan); extra fwd_ms"};

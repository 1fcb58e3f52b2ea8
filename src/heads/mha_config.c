/* The multi-head attention layer (nn.MultiheadAttention, plus GQA/MQA):
 * configuration, weights, create and destroy. Plans: mha_plan.c; execute:
 * mha_exec.c. */
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "heads/mha_internal.h"

/* ---- configuration ------------------------------------------------------- */

void attn_mha_config_init(attn_mha_config *cfg) {
  if (cfg == NULL) return;
  memset(cfg, 0, sizeof *cfg);
  cfg->struct_size = sizeof *cfg;
  cfg->bias = 1;
  cfg->dtype = ATTN_DTYPE_F32;
}

void attn_mha_weights_init(attn_mha_weights *w) {
  if (w == NULL) return;
  memset(w, 0, sizeof *w);
  w->struct_size = sizeof *w;
}

/* A weight: present iff wanted, dtype, rank, shape, contiguous last dim and
 * rows that do not overlap (BLAS needs ld ≥ columns). */
static attn_status check_weight(attn_context *ctx, const char *name, const attn_tensor *t,
                                bool wanted, const char *why_not, attn_dtype dt, int32_t rank,
                                const int64_t *shape) {
  if (!wanted) {
    if (t != NULL)
      return attn_fail(ctx, ATTN_ERR_INVALID_ARG, "%s: given, but %s; pass NULL", name, why_not);
    return ATTN_OK;
  }
  if (t == NULL) return attn_fail(ctx, ATTN_ERR_NULL_ARG, "%s: must not be NULL (%s)", name, why_not);
  if (t->dtype != dt)
    return attn_fail(ctx, ATTN_ERR_DTYPE, "%s: dtype %s, the layer's dtype is %s", name,
                     attn_dtype_name(t->dtype), attn_dtype_name(dt));
  char got[96], want[96];
  bool ok = t->rank == rank;
  for (int32_t i = 0; ok && i < rank; i++) ok = t->shape[i] == shape[i];
  if (!ok) {
    size_t u = (size_t)snprintf(want, sizeof want, "[");
    for (int32_t i = 0; i < rank && u < sizeof want; i++)
      u += (size_t)snprintf(want + u, sizeof want - u, "%s%" PRId64, i ? "," : "", shape[i]);
    if (u < sizeof want) snprintf(want + u, sizeof want - u, "]");
    return attn_fail(ctx, ATTN_ERR_SHAPE, "%s: shape %s, expected %s", name,
                     attn_shape_str(t, got, sizeof got), want);
  }
  if (t->strides[rank - 1] != 1 && t->shape[rank - 1] != 1)
    return attn_fail(ctx, ATTN_ERR_LAYOUT, "%s: last dim stride is %" PRId64 ", must be 1", name,
                     t->strides[rank - 1]);
  if (rank == 2) return attn_check_matrix_rows(ctx, name, t); /* a GEMM operand */
  return ATTN_OK;
}

static attn_status check_config(attn_context *ctx, const attn_mha_config *c, attn_mha *m) {
  if (c->embed_dim < 1)
    return attn_fail(ctx, ATTN_ERR_INVALID_ARG, "cfg.embed_dim: %" PRId64 " must be >= 1",
                     c->embed_dim);
  if (c->num_heads < 1)
    return attn_fail(ctx, ATTN_ERR_INVALID_ARG, "cfg.num_heads: %" PRId64 " must be >= 1",
                     c->num_heads);
  if (c->embed_dim % c->num_heads != 0)
    return attn_fail(ctx, ATTN_ERR_INVALID_ARG,
                     "cfg.embed_dim: %" PRId64 " is not divisible by cfg.num_heads = %" PRId64,
                     c->embed_dim, c->num_heads);
  int64_t hkv = c->num_kv_heads == 0 ? c->num_heads : c->num_kv_heads;
  if (hkv < 1 || c->num_heads % hkv != 0)
    return attn_fail(ctx, ATTN_ERR_INVALID_ARG,
                     "cfg.num_kv_heads: %" PRId64 " does not divide cfg.num_heads = %" PRId64,
                     c->num_kv_heads, c->num_heads);
  if (c->kdim < 0 || c->vdim < 0)
    return attn_fail(ctx, ATTN_ERR_INVALID_ARG, "cfg.%s: %" PRId64 " must be >= 0 (0 = embed_dim)",
                     c->kdim < 0 ? "kdim" : "vdim", c->kdim < 0 ? c->kdim : c->vdim);
  if (c->dtype != ATTN_DTYPE_F32 && c->dtype != ATTN_DTYPE_F64 && !attn_dtype_is_16bit(c->dtype))
    return attn_fail(ctx, ATTN_ERR_DTYPE, "cfg.dtype: %s, expected f32, f64, bf16 or f16",
                     attn_dtype_name(c->dtype));
  m->dt = c->dtype;
  m->ct = attn_dtype_compute(c->dtype);
  m->E = c->embed_dim;
  m->H = c->num_heads;
  m->Hkv = hkv;
  m->D = m->E / m->H;
  m->Ekv = m->Hkv * m->D;
  m->kdim = c->kdim == 0 ? m->E : c->kdim;
  m->vdim = c->vdim == 0 ? m->E : c->vdim;
  m->bias = c->bias != 0;
  m->bias_kv = c->add_bias_kv != 0;
  m->zero_attn = c->add_zero_attn != 0;
  m->batch_first = c->batch_first != 0;
  /* Overflow guard for every product made later from these. */
  int64_t t;
  if (!attn_add_ok(m->E, 2 * m->Ekv, &t) || !attn_mul_ok(t, attn_max64(m->E, attn_max64(m->kdim, m->vdim)), &t))
    return attn_fail(ctx, ATTN_ERR_OVERFLOW, "cfg: weight sizes overflow");
  return ATTN_OK;
}

static attn_status check_weights(attn_context *ctx, const attn_mha_weights *w, attn_mha *m) {
  attn_status st;
  const attn_dtype dt = m->dt;
  bool same = m->kdim == m->E && m->vdim == m->E;
  bool packed = w->in_proj_weight != NULL;
  bool any_sep = w->q_proj_weight || w->k_proj_weight || w->v_proj_weight;
  if (packed && any_sep)
    return attn_fail(ctx, ATTN_ERR_INVALID_ARG,
                     "in_proj_weight: given together with q/k/v_proj_weight; give one or the other");
  if (packed && !same)
    return attn_fail(ctx, ATTN_ERR_INVALID_ARG,
                     "in_proj_weight: packed weights need kdim = vdim = embed_dim (kdim %" PRId64
                     ", vdim %" PRId64 ", E %" PRId64 "); pass q/k/v_proj_weight",
                     m->kdim, m->vdim, m->E);
  if (packed) {
    const int64_t s[2] = {m->E + 2 * m->Ekv, m->E};
    if ((st = check_weight(ctx, "in_proj_weight", w->in_proj_weight, true, "", dt, 2, s)) != ATTN_OK)
      return st;
  } else {
    if (!any_sep)
      return attn_fail(ctx, ATTN_ERR_NULL_ARG,
                       "in_proj_weight: must not be NULL (or give q/k/v_proj_weight)");
    const int64_t sq[2] = {m->E, m->E}, sk[2] = {m->Ekv, m->kdim}, sv[2] = {m->Ekv, m->vdim};
    const char *why = "separate projection weights are given";
    if ((st = check_weight(ctx, "q_proj_weight", w->q_proj_weight, true, why, dt, 2, sq)) != ATTN_OK ||
        (st = check_weight(ctx, "k_proj_weight", w->k_proj_weight, true, why, dt, 2, sk)) != ATTN_OK ||
        (st = check_weight(ctx, "v_proj_weight", w->v_proj_weight, true, why, dt, 2, sv)) != ATTN_OK)
      return st;
  }
  const int64_t sb[1] = {m->E + 2 * m->Ekv}, so[2] = {m->E, m->E}, sob[1] = {m->E};
  const int64_t skv[3] = {1, 1, m->Ekv};
  const char *bias_why = m->bias ? "cfg.bias is set" : "cfg.bias is 0";
  const char *kv_why = m->bias_kv ? "cfg.add_bias_kv is set" : "cfg.add_bias_kv is 0";
  if ((st = check_weight(ctx, "in_proj_bias", w->in_proj_bias, m->bias, bias_why, dt, 1, sb)) != ATTN_OK ||
      (st = check_weight(ctx, "out_proj_weight", w->out_proj_weight, true, "always needed", dt, 2, so)) != ATTN_OK ||
      (st = check_weight(ctx, "out_proj_bias", w->out_proj_bias, m->bias, bias_why, dt, 1, sob)) != ATTN_OK ||
      (st = check_weight(ctx, "bias_k", w->bias_k, m->bias_kv, kv_why, dt, 3, skv)) != ATTN_OK ||
      (st = check_weight(ctx, "bias_v", w->bias_v, m->bias_kv, kv_why, dt, 3, skv)) != ATTN_OK)
    return st;
  return ATTN_OK;
}

attn_status attn_mha_create(attn_context *ctx, const attn_mha_config *cfg,
                            const attn_mha_weights *weights, attn_mha **out) {
  ATTN_CHECK_NULL(ctx, ctx);
  attn_clear_error(ctx);
  ATTN_CHECK_NULL(ctx, cfg);
  ATTN_CHECK_NULL(ctx, weights);
  ATTN_CHECK_NULL(ctx, out);
  if (cfg->struct_size != sizeof(attn_mha_config))
    return attn_fail(ctx, ATTN_ERR_INVALID_ARG,
                     "cfg.struct_size: %zu, expected %zu (initialise with attn_mha_config_init())",
                     cfg->struct_size, sizeof(attn_mha_config));
  if (weights->struct_size != sizeof(attn_mha_weights))
    return attn_fail(ctx, ATTN_ERR_INVALID_ARG,
                     "weights.struct_size: %zu, expected %zu (initialise with attn_mha_weights_init())",
                     weights->struct_size, sizeof(attn_mha_weights));
  attn_mha tmp;
  memset(&tmp, 0, sizeof tmp);
  attn_status st = check_config(ctx, cfg, &tmp);
  if (st != ATTN_OK) return st;
  if ((st = check_weights(ctx, weights, &tmp)) != ATTN_OK) return st;
  attn_mha *m = attn_alloc(ctx, sizeof *m);
  if (m == NULL) return attn_fail(ctx, ATTN_ERR_NO_MEMORY, "attn_mha_create: out of memory");
  *m = tmp;
  m->ctx = ctx;
  m->w = *weights;
  *out = m;
  return ATTN_OK;
}

void attn_mha_destroy(attn_mha *mha) {
  if (mha == NULL) return;
  attn_free(mha->ctx, mha, sizeof *mha);
}

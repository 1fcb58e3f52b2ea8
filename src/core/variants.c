/* The variant table and the options check: which variant supports which
 * option is data here, so an unsupported combination is rejected in one
 * place with a message naming the option and the variant, and a new
 * variant or option is one row or one column. */
#include "core/internal.h"

static const char *const option_names[ATTN_OPT_COUNT] = {
    [ATTN_OPT_CAUSAL_TL] = "causal",
    [ATTN_OPT_CAUSAL_BR] = "causal",
    [ATTN_OPT_WINDOW] = "window",
    [ATTN_OPT_KEY_LENGTHS] = "key_lengths",
    [ATTN_OPT_QUERY_LENGTHS] = "query_lengths",
    [ATTN_OPT_BOOL_MASK] = "bool_mask",
    [ATTN_OPT_ADD_MASK] = "additive_mask",
    [ATTN_OPT_ALIBI] = "alibi",
    [ATTN_OPT_SOFTCAP] = "softcap",
    [ATTN_OPT_SCALE] = "scale",
    [ATTN_OPT_SCORE_GENERAL] = "score",
    [ATTN_OPT_SCORE_ADDITIVE] = "score",
    [ATTN_OPT_WEIGHTS] = "weights",
    [ATTN_OPT_LSE] = "lse",
    [ATTN_OPT_VARLEN] = "varlen",
    [ATTN_OPT_SINKS] = "sinks",
    [ATTN_OPT_MASS] = "key_mass",
};

uint32_t attn_options_used(const attn_desc *d, bool weights, bool lse) {
  const struct attn_desc_mask *m = &d->mask;
  uint32_t u = 0;
  if (m->causal == ATTN_CAUSAL_TOP_LEFT) u |= ATTN_OPT(ATTN_OPT_CAUSAL_TL);
  if (m->causal == ATTN_CAUSAL_BOTTOM_RIGHT) u |= ATTN_OPT(ATTN_OPT_CAUSAL_BR);
  if (m->win_left != ATTN_WINDOW_UNBOUNDED || m->win_right != ATTN_WINDOW_UNBOUNDED)
    u |= ATTN_OPT(ATTN_OPT_WINDOW);
  if (m->key_lengths != NULL) u |= ATTN_OPT(ATTN_OPT_KEY_LENGTHS);
  if (m->query_lengths != NULL) u |= ATTN_OPT(ATTN_OPT_QUERY_LENGTHS);
  if (m->bool_mask != NULL) u |= ATTN_OPT(ATTN_OPT_BOOL_MASK);
  if (m->add_mask != NULL) u |= ATTN_OPT(ATTN_OPT_ADD_MASK);
  if (m->alibi != NULL) u |= ATTN_OPT(ATTN_OPT_ALIBI);
  if (m->softcap > 0.0) u |= ATTN_OPT(ATTN_OPT_SOFTCAP);
  if (d->score.scale > 0.0) u |= ATTN_OPT(ATTN_OPT_SCALE);
  if (d->score.kind == ATTN_SCORE_GENERAL) u |= ATTN_OPT(ATTN_OPT_SCORE_GENERAL);
  if (d->score.kind == ATTN_SCORE_ADDITIVE) u |= ATTN_OPT(ATTN_OPT_SCORE_ADDITIVE);
  if (weights) u |= ATTN_OPT(ATTN_OPT_WEIGHTS);
  if (lse) u |= ATTN_OPT(ATTN_OPT_LSE);
  if (d->varlen.n > 0) u |= ATTN_OPT(ATTN_OPT_VARLEN);
  if (d->sinks.logits != NULL) u |= ATTN_OPT(ATTN_OPT_SINKS);
  if (d->mass != NULL) u |= ATTN_OPT(ATTN_OPT_MASS);
  return u;
}

attn_status attn_options_check(attn_context *ctx, const attn_support *s, uint32_t used) {
  const uint32_t bad = used & ~s->supported;
  if (bad == 0) return ATTN_OK;
  int o = 0;
  while (!(bad & ATTN_OPT(o))) o++;
  if (s->why[o] != NULL)
    return attn_fail(ctx, ATTN_ERR_UNSUPPORTED, "%s: %s", option_names[o], s->why[o]);
  return attn_fail(ctx, ATTN_ERR_UNSUPPORTED, "%s: not supported by %s", option_names[o], s->name);
}

attn_status attn_dtype_check(attn_context *ctx, const attn_support *s, const attn_desc *desc,
                             attn_dtype dtype) {
  if (!attn_dtype_is_16bit(dtype)) return ATTN_OK;
  if (s->no_16bit != NULL)
    return attn_fail(ctx, ATTN_ERR_UNSUPPORTED, "q: dtype %s is not supported by %s: %s",
                     attn_dtype_name(dtype), s->name, s->no_16bit);
  if (desc->score.kind != ATTN_SCORE_DOT && desc->score.kind != ATTN_SCORE_SCALED_DOT)
    return attn_fail(ctx, ATTN_ERR_UNSUPPORTED,
                     "score: %s plans support ATTN_SCORE_DOT and ATTN_SCORE_SCALED_DOT only "
                     "(the general and additive scores project q or k in the storage dtype; "
                     "use f32)",
                     attn_dtype_name(dtype));
  return ATTN_OK;
}

/* ---- the support matrix ------------------------------------------------------
 * One row per variant. Options a row lacks are rejected before its init runs;
 * the reasons say why an option has no meaning there. */

#define OPT ATTN_OPT

/* The sparse variants run the exact kernel (sinks and the per-key mass
 * included) on token positions of one padded batch. */
#define SPARSE_OPTS (ATTN_OPT_ALL & ~OPT(ATTN_OPT_VARLEN))
#define SPARSE_WHY                                                                               \
  [ATTN_OPT_VARLEN] = "sparse layouts are over the positions of a padded batch (use key/query "  \
                      "lengths)"

static const attn_variant_ops table[] = {
    /* Exact attention takes every option; it is the engine the sparse
     * variants, Linformer, the multi-head layer and the KV cache reduce to. */
    [ATTN_VARIANT_EXACT] = {ATTN_VARIANT_EXACT, {"exact", ATTN_OPT_ALL, {NULL}, NULL},
                            attn_exact_plan_init, attn_exact_plan_execute, NULL, NULL, NULL},
    [ATTN_VARIANT_SWIN] =
        {ATTN_VARIANT_SWIN,
         {"swin",
          OPT(ATTN_OPT_SCALE) | OPT(ATTN_OPT_WEIGHTS) | OPT(ATTN_OPT_LSE),
          {[ATTN_OPT_CAUSAL_TL] = "Swin window attention is not causal",
           [ATTN_OPT_CAUSAL_BR] = "Swin window attention is not causal",
           [ATTN_OPT_WINDOW] = "Swin uses attn_desc_set_swin(), not a 1-D window",
           [ATTN_OPT_KEY_LENGTHS] = "not supported with Swin",
           [ATTN_OPT_QUERY_LENGTHS] = "not supported with Swin",
           [ATTN_OPT_BOOL_MASK] = "not supported with Swin",
           [ATTN_OPT_ADD_MASK] = "not supported with Swin",
           [ATTN_OPT_ALIBI] = "not supported with Swin",
           [ATTN_OPT_SOFTCAP] = "not supported with Swin",
           [ATTN_OPT_SCORE_GENERAL] = "Swin supports ATTN_SCORE_SCALED_DOT and ATTN_SCORE_DOT only",
           [ATTN_OPT_SCORE_ADDITIVE] = "Swin supports ATTN_SCORE_SCALED_DOT and ATTN_SCORE_DOT only"},
          "Swin window attention runs f32 and f64 only (convert, or use the exact variant "
          "with a mask)"},
         attn_swin_plan_init, attn_swin_plan_execute, NULL, NULL, NULL},
    [ATTN_VARIANT_LONGFORMER] = {ATTN_VARIANT_LONGFORMER, {"longformer", SPARSE_OPTS, {SPARSE_WHY}, NULL},
                                 attn_sparse_plan_init, attn_exact_plan_execute,
                                 attn_sparse_plan_destroy, attn_sparse_block_layout, NULL},
    [ATTN_VARIANT_BIGBIRD] = {ATTN_VARIANT_BIGBIRD, {"bigbird", SPARSE_OPTS, {SPARSE_WHY}, NULL},
                              attn_sparse_plan_init, attn_exact_plan_execute,
                              attn_sparse_plan_destroy, attn_sparse_block_layout, NULL},
    [ATTN_VARIANT_BLOCK_SPARSE] = {ATTN_VARIANT_BLOCK_SPARSE, {"block_sparse", SPARSE_OPTS, {SPARSE_WHY}, NULL},
                                   attn_sparse_plan_init, attn_exact_plan_execute,
                                   attn_sparse_plan_destroy, attn_sparse_block_layout, NULL},
#define LINEAR_WHY(v)                                                                             \
  [ATTN_OPT_SCORE_GENERAL] = v " supports only the (scaled) dot-product score",                  \
  [ATTN_OPT_SCORE_ADDITIVE] = v " supports only the (scaled) dot-product score",                 \
  [ATTN_OPT_BOOL_MASK] = v " never forms the S_q×S_k scores a dense mask applies to (use key "  \
                           "lengths or causal)",                                                  \
  [ATTN_OPT_ADD_MASK] = v " never forms the S_q×S_k scores an additive mask applies to",         \
  [ATTN_OPT_ALIBI] = v " cannot add a position bias",                                             \
  [ATTN_OPT_SOFTCAP] = v " has no logits to cap",                                                 \
  [ATTN_OPT_WINDOW] = v " supports causal and key lengths, not a sliding window",                 \
  [ATTN_OPT_WEIGHTS] = v " does not form the S_q×S_k weights (pass NULL)",                        \
  [ATTN_OPT_LSE] = v " has no softmax log-sum-exp (pass NULL)"
    [ATTN_VARIANT_LINEAR_ELU] =
        {ATTN_VARIANT_LINEAR_ELU,
         {"linear_elu",
          OPT(ATTN_OPT_CAUSAL_TL) | OPT(ATTN_OPT_CAUSAL_BR) | OPT(ATTN_OPT_KEY_LENGTHS) |
              OPT(ATTN_OPT_QUERY_LENGTHS),
          {LINEAR_WHY("linear elu+1 attention"),
           [ATTN_OPT_SCALE] = "linear elu+1 attention uses φ(q)·φ(k) with φ = elu + 1 and no "
                              "score scale"},
          "linear attention runs f32 and f64 only"},
         attn_linear_plan_init, attn_linear_plan_execute, attn_linear_plan_destroy, NULL, NULL},
    [ATTN_VARIANT_PERFORMER] =
        {ATTN_VARIANT_PERFORMER,
         {"performer",
          OPT(ATTN_OPT_CAUSAL_TL) | OPT(ATTN_OPT_CAUSAL_BR) | OPT(ATTN_OPT_KEY_LENGTHS) |
              OPT(ATTN_OPT_QUERY_LENGTHS) | OPT(ATTN_OPT_SCALE),
          {LINEAR_WHY("Performer (FAVOR+) attention")},
          "Performer runs f32 and f64 only"},
         attn_linear_plan_init, attn_linear_plan_execute, attn_linear_plan_destroy, NULL,
         attn_performer_redraw},
#undef LINEAR_WHY
#undef SPARSE_WHY
    [ATTN_VARIANT_LINFORMER] =
        {ATTN_VARIANT_LINFORMER,
         {"linformer",
          ATTN_OPT_ALL & ~(OPT(ATTN_OPT_CAUSAL_TL) | OPT(ATTN_OPT_CAUSAL_BR) |
                           OPT(ATTN_OPT_WINDOW) | OPT(ATTN_OPT_BOOL_MASK) |
                           OPT(ATTN_OPT_ADD_MASK) | OPT(ATTN_OPT_ALIBI) | OPT(ATTN_OPT_WEIGHTS) |
                           OPT(ATTN_OPT_VARLEN) | OPT(ATTN_OPT_MASS) | OPT(ATTN_OPT_SINKS)),
          {[ATTN_OPT_CAUSAL_TL] = "causal masking is undefined for Linformer (every projected "
                                  "key mixes all S_k positions)",
           [ATTN_OPT_CAUSAL_BR] = "causal masking is undefined for Linformer (every projected "
                                  "key mixes all S_k positions)",
           [ATTN_OPT_WINDOW] = "a sliding window is undefined for Linformer (keys are projected)",
           [ATTN_OPT_BOOL_MASK] = "Linformer has no S_q×S_k scores to mask (use key lengths)",
           [ATTN_OPT_ADD_MASK] = "Linformer has no S_q×S_k scores to add a mask to",
           [ATTN_OPT_ALIBI] = "projected keys have no positions for Linformer to bias by",
           [ATTN_OPT_WEIGHTS] = "Linformer's weights are over the k projected keys, not the S_k "
                                "keys of the weights tensor (pass NULL)",
           [ATTN_OPT_VARLEN] = "Linformer projects a whole padded key sequence",
           [ATTN_OPT_MASS] = "Linformer's keys are projections, not the S_k keys",
           [ATTN_OPT_SINKS] = "not supported by Linformer (exact, sparse and KV-cache plans take sinks)"},
          "Linformer projects K and V in the storage dtype; it runs f32 and f64 only"},
         attn_lowrank_plan_init, attn_lowrank_plan_execute, attn_lowrank_plan_destroy, NULL,
         NULL},
};

const attn_variant_ops *attn_variant_find(attn_variant v) {
  if ((int)v < 0 || (size_t)v >= sizeof table / sizeof table[0]) return NULL;
  return &table[v];
}

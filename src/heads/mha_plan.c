/* Multi-head plans, stage by stage: check the operands' shapes, resolve the
 * masks (combining them when the appended keys or a key padding mask next
 * to a bool mask need one dense mask), lay out the workspace, then plan the
 * inner attention on head views of it (split heads without copying: query
 * head h reads K/V head h/(H/H_kv) in place).
 *
 * Workspace rows follow the caller's row order where that lets a projection
 * be one GEMM over all B·S rows: batch-first input → batch-major buffer,
 * sequence-first input → sequence-major buffer; the attention views take the
 * matching strides. */
#include <inttypes.h>
#include <limits.h>
#include <string.h>

#include "heads/mha_internal.h"

row_order attn_mha_rows_of(int64_t B, int64_t S, int64_t sb, int64_t ss) {
  if (B == 1 || (S > 1 && sb == S * ss)) return ROWS_BATCH_MAJOR;
  if (S == 1 || ss == B * sb) return ROWS_SEQ_MAJOR;
  return ROWS_PER_BATCH;
}

/* A [B, S, F] operand given sequence-first or batch-first: dtype, rank,
 * shape, contiguous features, rows that do not overlap. */
attn_status attn_mha_check_operand(attn_context *ctx, const char *name, const attn_tensor *t,
                                   attn_dtype dt, bool batch_first, int64_t B, int64_t S,
                                   int64_t F, int64_t *sb, int64_t *ss) {
  attn_status st = attn_check_tensor(ctx, name, t, 3, dt);
  if (st != ATTN_OK) return st;
  int ib = batch_first ? 0 : 1, is = batch_first ? 1 : 0;
  char got[96];
  if ((B >= 0 && t->shape[ib] != B) || (S >= 0 && t->shape[is] != S) || t->shape[2] != F)
    return attn_fail(ctx, ATTN_ERR_SHAPE,
                     "%s: shape %s, expected %s with batch %" PRId64 "%s, features %" PRId64, name,
                     attn_shape_str(t, got, sizeof got), batch_first ? "[B, S, F]" : "[S, B, F]",
                     B >= 0 ? B : t->shape[ib], S >= 0 ? " and the key sequence length" : "", F);
  if (t->strides[2] != 1 && F != 1)
    return attn_fail(ctx, ATTN_ERR_LAYOUT, "%s: last dim stride is %" PRId64 ", must be 1", name,
                     t->strides[2]);
  *sb = t->strides[ib];
  *ss = t->strides[is];
  int64_t Bn = t->shape[ib], Sn = t->shape[is];
  /* BLAS reads rows with a leading dimension ≥ F. */
  row_order o = attn_mha_rows_of(Bn, Sn, *sb, *ss);
  int64_t rs = o == ROWS_SEQ_MAJOR ? *sb : *ss;
  bool many = o == ROWS_PER_BATCH ? Sn > 1 : Bn * Sn > 1;
  if (many && rs < F)
    return attn_fail(ctx, ATTN_ERR_LAYOUT,
                     "%s: rows overlap (row stride %" PRId64 " < %" PRId64 " features)", name, rs,
                     F);
  /* Rows reach BLAS as M (all B·S rows at once, or S per batch item) with
   * leading dimension rs. */
  int64_t m_rows = o == ROWS_PER_BATCH ? Sn : Bn * Sn;
  if (m_rows > INT_MAX || rs > INT_MAX || F > INT_MAX)
    return attn_fail(ctx, ATTN_ERR_UNSUPPORTED,
                     "%s: %" PRId64 " rows of %" PRId64 " features with row stride %" PRId64
                     " exceed BLAS's int range", name, m_rows, F, rs);
  return ATTN_OK;
}

static bool key_dependent(const attn_desc *d) {
  const struct attn_desc_mask *m = &d->mask;
  return m->causal != ATTN_CAUSAL_NONE || m->win_left != ATTN_WINDOW_UNBOUNDED ||
         m->win_right != ATTN_WINDOW_UNBOUNDED || m->key_lengths != NULL ||
         m->bool_mask != NULL || m->add_mask != NULL || m->alibi != NULL;
}

/* Lay a [B, S, F] buffer out in the given order: (b, s) strides. */
static void place(row_order order, int64_t B, int64_t S, int64_t F, int64_t *sb, int64_t *ss) {
  if (order == ROWS_SEQ_MAJOR) {
    *sb = F;
    *ss = B * F;
  } else {
    *sb = S * F;
    *ss = F;
  }
}

/* Stage 1: operands and their shapes. */
static attn_status check_shapes(attn_mha_plan *p, const attn_tensor *query, const attn_tensor *key,
                                const attn_tensor *value, const attn_tensor *kpm,
                                const attn_tensor *out, const attn_tensor *weights) {
  const attn_mha *m = p->mha;
  attn_context *ctx = p->ctx;
  const attn_dtype dt = m->dt;
  attn_status st;
  char got[96];
  if (query == NULL) return attn_fail(ctx, ATTN_ERR_NULL_ARG, "query: must not be NULL");
  if ((st = attn_mha_check_operand(ctx, "query", query, dt, m->batch_first, -1, -1, m->E, &p->in_sb[0],
                          &p->in_ss[0])) != ATTN_OK)
    return st;
  p->B = query->shape[m->batch_first ? 0 : 1];
  p->Sq = query->shape[m->batch_first ? 1 : 0];
  if (key == NULL) return attn_fail(ctx, ATTN_ERR_NULL_ARG, "key: must not be NULL");
  if ((st = attn_mha_check_operand(ctx, "key", key, dt, m->batch_first, p->B, -1, m->kdim, &p->in_sb[1],
                          &p->in_ss[1])) != ATTN_OK)
    return st;
  p->Sk = key->shape[m->batch_first ? 1 : 0];
  if ((st = attn_mha_check_operand(ctx, "value", value, dt, m->batch_first, p->B, p->Sk, m->vdim,
                          &p->in_sb[2], &p->in_ss[2])) != ATTN_OK)
    return st;
  if ((st = attn_mha_check_operand(ctx, "out", out, dt, m->batch_first, p->B, -1, m->E, &p->out_sb,
                          &p->out_ss)) != ATTN_OK)
    return st;
  if (out->shape[m->batch_first ? 1 : 0] != p->Sq)
    return attn_fail(ctx, ATTN_ERR_SHAPE, "out: shape %s, expected query's shape",
                     attn_shape_str(out, got, sizeof got));
  p->nx = (m->bias_kv ? 1 : 0) + (m->zero_attn ? 1 : 0);
  p->Skx = p->Sk + p->nx;
  const int64_t B = p->B, Sq = p->Sq, Sk = p->Sk, Skx = p->Skx, H = m->H;
  if (kpm != NULL) {
    if ((st = attn_check_tensor(ctx, "key_padding_mask", kpm, 2, ATTN_DTYPE_U8)) != ATTN_OK)
      return st;
    if (kpm->shape[0] != B || kpm->shape[1] != Sk)
      return attn_fail(ctx, ATTN_ERR_SHAPE,
                       "key_padding_mask: shape %s, expected [B, S_k] = [%" PRId64 ",%" PRId64 "]",
                       attn_shape_str(kpm, got, sizeof got), B, Sk);
  }
  if (weights != NULL) {
    if (weights->rank != 3 && weights->rank != 4)
      return attn_fail(ctx, ATTN_ERR_SHAPE,
                       "weights: rank %d, expected 3 (averaged [B, S_q, S_k']) or 4 (per head "
                       "[B, H, S_q, S_k'])", (int)weights->rank);
    /* Attention weights are in the compute type (f32 for 16-bit layers). */
    if ((st = attn_check_tensor(ctx, "weights", weights, weights->rank, m->ct)) != ATTN_OK) return st;
    p->avg_weights = weights->rank == 3;
    bool ok = p->avg_weights ? weights->shape[0] == B && weights->shape[1] == Sq &&
                                   weights->shape[2] == Skx
                             : weights->shape[0] == B && weights->shape[1] == H &&
                                   weights->shape[2] == Sq && weights->shape[3] == Skx;
    if (!ok)
      return attn_fail(ctx, ATTN_ERR_SHAPE,
                       "weights: shape %s, expected [%" PRId64 ",%" PRId64 ",%" PRId64 "] or [%"
                       PRId64 ",%" PRId64 ",%" PRId64 ",%" PRId64 "] (S_k' = S_k + appended keys)",
                       attn_shape_str(weights, got, sizeof got), B, Sq, Skx, B, H, Sq, Skx);
    if (weights->strides[weights->rank - 1] != 1 && Skx != 1)
      return attn_fail(ctx, ATTN_ERR_LAYOUT, "weights: last dim stride must be 1");
  }
  return ATTN_OK;
}

/* Stage 2: the caller's options, and whether masks must be combined into
 * one dense additive mask (resolved by the mask module on the real keys). */
static attn_status resolve_masks(attn_mha_plan *p, const attn_desc *desc, const attn_tensor *kpm) {
  attn_context *ctx = p->ctx;
  const attn_mha *m = p->mha;
  attn_desc *defaults = NULL;
  if (desc == NULL) {
    attn_status st = attn_desc_create(ctx, &defaults);
    if (st != ATTN_OK) return st;
    desc = defaults;
  }
  p->udesc = *desc;
  p->udesc.ctx = ctx;
  attn_desc_destroy(defaults);
  const attn_desc *ud = &p->udesc;
  p->materialize = (p->nx > 0 && (key_dependent(ud) || kpm != NULL)) ||
                   (kpm != NULL && ud->mask.bool_mask != NULL);
  if (!p->materialize) return ATTN_OK;
  if (ud->variant != ATTN_VARIANT_EXACT)
    return attn_fail(ctx, ATTN_ERR_UNSUPPORTED,
                     "desc: variant %d with combined masks (key_padding_mask with a bool mask, or "
                     "key masks with add_bias_kv/add_zero_attn) needs ATTN_VARIANT_EXACT",
                     (int)ud->variant);
  const attn_mask_geom g = attn_mask_geom_of(ud, m->dt, p->B, m->H, p->Sq, p->Sk);
  attn_status st = attn_mask_init(&p->mask, ctx, ud, &g);
  if (st != ATTN_OK) return st;
  p->mask.softcap = 0; /* the kernel applies it to the raw scores */
  const bool per_head = ud->mask.alibi != NULL ||
                        (ud->mask.bool_mask && ud->mask.bool_mask->shape[1] > 1) ||
                        (ud->mask.add_mask && ud->mask.add_mask->shape[1] > 1);
  p->Hm = per_head ? m->H : 1;
  return ATTN_OK;
}

/* Stage 3: the workspace's own buffers (the inner plan's follow them). */
static attn_status layout_workspace(attn_mha_plan *p) {
  const attn_mha *m = p->mha;
  const int64_t B = p->B, Sq = p->Sq, Sk = p->Sk, Skx = p->Skx;
  const size_t es = attn_dtype_size(m->ct);
  for (int i = 0; i < 3; i++)
    p->in_order[i] = attn_mha_rows_of(B, i == 0 ? Sq : Sk, p->in_sb[i], p->in_ss[i]);
  p->out_order = attn_mha_rows_of(B, Sq, p->out_sb, p->out_ss);
  place(p->in_order[0], B, Sq, m->E, &p->buf_sb[0], &p->buf_ss[0]);
  for (int i = 1; i < 3; i++) {
    /* Appended rows break a batch-major single GEMM, not a sequence-major one. */
    row_order o = p->in_order[i] == ROWS_SEQ_MAJOR ? ROWS_SEQ_MAJOR : ROWS_BATCH_MAJOR;
    place(o, B, Skx, m->Ekv, &p->buf_sb[i], &p->buf_ss[i]);
  }
  place(p->out_order == ROWS_SEQ_MAJOR ? ROWS_SEQ_MAJOR : ROWS_BATCH_MAJOR, B, Sq, m->E,
        &p->ao_sb, &p->ao_ss);
  attn_carver c = attn_carver_start(), sc = attn_carver_start();
  attn_carver *acts = p->train ? &sc : &c; /* the activations: workspace or saved */
  p->buf_at[0] = attn_carve(acts, es, B, Sq, m->E);
  p->buf_at[1] = attn_carve(acts, es, B, Skx, m->Ekv);
  p->buf_at[2] = attn_carve(acts, es, B, Skx, m->Ekv);
  p->ao_at = attn_carve(acts, es, B, Sq, m->E);
  if (p->train) {
    p->lse_at = attn_carve(&sc, es, B, m->H, Sq);
    p->saved_bytes = (size_t)sc.bytes;
    if (!sc.ok) c.ok = false;
  }
  p->wh_at = attn_carve(&c, es, p->avg_weights ? B * m->H : 0, Sq, Skx);
  p->mm_at = attn_carve(&c, es, p->materialize ? B * p->Hm : 0, Sq, Skx);
  if (m->dt != m->ct) { /* 16-bit layer: f32 parameters and per-thread row scratch */
    const int64_t Kmax = attn_max64(m->E, attn_max64(m->kdim, m->vdim));
    p->w32_at[0] = attn_carve(&c, es, m->E, m->E, 1);
    p->w32_at[1] = attn_carve(&c, es, m->Ekv, m->kdim, 1);
    p->w32_at[2] = attn_carve(&c, es, m->Ekv, m->vdim, 1);
    p->w32_at[3] = attn_carve(&c, es, m->E, m->E, 1);
    p->w32_at[4] = attn_carve(&c, es, m->E + 2 * m->Ekv, 1, 1);
    p->w32_at[5] = attn_carve(&c, es, m->E, 1, 1);
    attn_carver cs = attn_carver_start();
    attn_carve(&cs, es, ATTN_MHA_PROJ_ROWS, Kmax + m->E, 1);
    if (!cs.ok) c.ok = false;
    p->conv_slot = (size_t)cs.bytes;
  }
  p->inner_at = (size_t)c.bytes;
  if (!c.ok)
    return attn_fail(p->ctx, ATTN_ERR_OVERFLOW,
                     "key: the projected [B, S, E] buffers' workspace size overflows");
  return ATTN_OK;
}

/* Stage 4: the inner attention plan on head views of the workspace (only
 * their metadata matters to a plan; executes pass views of the run's own
 * workspace with the same metadata). */
static attn_status plan_attention(attn_mha_plan *p, const attn_tensor *kpm,
                                  const attn_tensor *weights) {
  const attn_mha *m = p->mha;
  attn_context *ctx = p->ctx;
  const attn_dtype dt = m->ct; /* the inner attention computes in f32/f64 */
  const int64_t B = p->B, Sq = p->Sq, Skx = p->Skx, H = m->H, D = m->D;
  const int64_t qs[4] = {B, H, Sq, D}, qst[4] = {p->buf_sb[0], D, p->buf_ss[0], 1};
  const int64_t ks[4] = {B, m->Hkv, Skx, D}, kst[4] = {p->buf_sb[1], D, p->buf_ss[1], 1};
  const int64_t vst[4] = {p->buf_sb[2], D, p->buf_ss[2], 1};
  const int64_t ost[4] = {p->ao_sb, D, p->ao_ss, 1};
  const int64_t wd[4] = {B, H, Sq, Skx}, md[4] = {B, p->Hm, Sq, Skx};
  memcpy(p->qshape, qs, sizeof qs);
  memcpy(p->qstr, qst, sizeof qst);
  memcpy(p->kshape, ks, sizeof ks);
  memcpy(p->kstr, kst, sizeof kst);
  memcpy(p->vstr, vst, sizeof vst);
  memcpy(p->ostr, ost, sizeof ost);
  memcpy(p->wdims, wd, sizeof wd);
  memcpy(p->mdims, md, sizeof md);
  void *meta_only = p; /* any non-NULL pointer: plans read metadata only */
  const attn_tensor tq = attn_tensor_view4(dt, qs, qst, meta_only);
  const attn_tensor tk = attn_tensor_view4(dt, ks, kst, meta_only);
  const attn_tensor tv = attn_tensor_view4(dt, ks, vst, meta_only);
  const attn_tensor to = attn_tensor_view4(dt, qs, ost, meta_only);
  const attn_tensor tw = attn_tensor_view4(dt, wd, NULL, meta_only);
  attn_tensor tmask, tkpm;
  attn_desc id = p->udesc; /* the attention's own options */
  if (p->materialize) {
    tmask = attn_tensor_view4(dt, md, NULL, meta_only);
    id.mask.causal = ATTN_CAUSAL_NONE;
    id.mask.win_left = id.mask.win_right = ATTN_WINDOW_UNBOUNDED;
    id.mask.key_lengths = NULL;
    id.mask.n_key_lengths = 0;
    id.mask.bool_mask = NULL;
    id.mask.alibi = NULL;
    id.mask.n_alibi = 0;
    id.mask.add_mask = &tmask;
  } else if (kpm != NULL) {
    /* kpm [B, S_k] seen as a bool mask [B, 1, S_q, S_k] broadcast over rows. */
    const int64_t s[4] = {B, 1, Sq, p->Sk}, str[4] = {kpm->strides[0], 0, 0, kpm->strides[1]};
    memcpy(p->kpm_shape, s, sizeof s);
    tkpm = attn_tensor_view4(ATTN_DTYPE_U8, s, str, meta_only);
    id.mask.bool_mask = &tkpm;
  }
  const attn_tensor *aw = weights == NULL ? NULL : p->avg_weights ? &tw : weights;
  const attn_tensor tlse = {.dtype = dt, .rank = 3, .shape = {B, H, Sq}, .strides = {H * Sq, Sq, 1},
                            .data = meta_only};
  /* Linear attention has no softmax and so no lse. */
  const bool lse = p->train && id.variant != ATTN_VARIANT_LINEAR_ELU &&
                   id.variant != ATTN_VARIANT_PERFORMER;
  attn_status st = attn_plan_create(ctx, &id, &tq, &tk, &tv, &to, aw, lse ? &tlse : NULL,
                                    &p->aplan);
  if (st != ATTN_OK) return st;
  /* The plan's copy must not keep pointers to these stack views. */
  p->aplan->desc.mask.add_mask = p->materialize ? NULL : p->aplan->desc.mask.add_mask;
  if (!p->materialize && kpm != NULL) p->aplan->desc.mask.bool_mask = NULL;
  return ATTN_OK;
}

size_t attn_mha_ws_bytes(const attn_mha_plan *p, int32_t threads) {
  /* Saturates (an impossible size) instead of wrapping for huge thread counts. */
  const size_t inner = attn_plan_ws_bytes(p->aplan, threads);
  size_t conv = 0;
  if (p->conv_slot > 0 && __builtin_mul_overflow(p->conv_slot, (size_t)threads, &conv))
    return SIZE_MAX - ATTN_ALIGN;
  if (inner > SIZE_MAX - 2 * ATTN_ALIGN - p->inner_at ||
      conv > SIZE_MAX - 2 * ATTN_ALIGN - p->inner_at - inner)
    return SIZE_MAX - ATTN_ALIGN;
  return p->inner_at + inner + conv;
}

void attn_mha_plan_destroy(attn_mha_plan *p) {
  if (p == NULL) return;
  attn_context *ctx = p->ctx;
  attn_plan_destroy(p->aplan);
  attn_free(ctx, p->ws, p->ws_bytes);
  attn_free(ctx, p, sizeof *p);
}

size_t attn_mha_plan_workspace_size(const attn_mha_plan *p) {
  return p == NULL ? 0 : p->ws_bytes;
}

size_t attn_mha_plan_workspace_size_on(const attn_mha_plan *p, const attn_context *ctx) {
  if (p == NULL) return 0;
  return attn_mha_ws_bytes(p, (ctx != NULL ? ctx : p->ctx)->num_threads) + ATTN_ALIGN;
}

attn_status attn_mha_plan_create(attn_mha *mha, const attn_desc *desc, const attn_tensor *query,
                                 const attn_tensor *key, const attn_tensor *value,
                                 const attn_tensor *key_padding_mask, const attn_tensor *out,
                                 const attn_tensor *weights, attn_mha_plan **plan) {
  if (mha == NULL) return ATTN_ERR_NULL_ARG;
  attn_clear_error(mha->ctx);
  return attn_mha_plan_build(mha, desc, query, key, value, key_padding_mask, out, weights, false,
                             plan);
}

attn_status attn_mha_plan_build(attn_mha *mha, const attn_desc *desc, const attn_tensor *query,
                                const attn_tensor *key, const attn_tensor *value,
                                const attn_tensor *key_padding_mask, const attn_tensor *out,
                                const attn_tensor *weights, bool train, attn_mha_plan **plan) {
  attn_context *ctx = mha->ctx;
  ATTN_CHECK_NULL(ctx, plan);
  attn_mha_plan *p = attn_calloc(ctx, sizeof *p);
  if (p == NULL) return attn_fail(ctx, ATTN_ERR_NO_MEMORY, "attn_mha_plan_create: out of memory");
  p->ctx = ctx;
  p->mha = mha;
  p->train = train;
  attn_status st;
  if ((st = check_shapes(p, query, key, value, key_padding_mask, out, weights)) == ATTN_OK &&
      (st = resolve_masks(p, desc, key_padding_mask)) == ATTN_OK &&
      (st = layout_workspace(p)) == ATTN_OK &&
      (st = plan_attention(p, key_padding_mask, weights)) == ATTN_OK) {
    /* A training plan runs on its backward plan's workspace: none of its own. */
    p->ws_bytes = train ? 0 : attn_mha_ws_bytes(p, ctx->num_threads);
    p->ws = train ? NULL : attn_calloc(ctx, p->ws_bytes); /* touched now: no page faults later */
    if (!train && p->ws == NULL)
      st = attn_fail(ctx, ATTN_ERR_NO_MEMORY,
                     "attn_mha_plan_create: cannot allocate %zu bytes of workspace", p->ws_bytes);
  }
  if (st != ATTN_OK) {
    char msg[ATTN_ERRMSG_LEN];
    memcpy(msg, ctx->last_error, sizeof msg);
    if (p->ws == NULL) p->ws_bytes = 0;
    attn_mha_plan_destroy(p);
    memcpy(ctx->last_error, msg, sizeof msg);
    return st;
  }
  attn_tmeta_record(&p->meta[M_QUERY], query);
  attn_tmeta_record(&p->meta[M_KEY], key);
  attn_tmeta_record(&p->meta[M_VALUE], value);
  attn_tmeta_record(&p->meta[M_KPM], key_padding_mask);
  attn_tmeta_record(&p->meta[M_OUT], out);
  attn_tmeta_record(&p->meta[M_WEIGHTS], weights);
  *plan = p;
  return ATTN_OK;
}

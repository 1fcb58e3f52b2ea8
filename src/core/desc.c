/* The descriptor: an option bag validated field by field here, and against
 * the tensors' shapes when a plan is created. */
#include <float.h>
#include <inttypes.h>
#include <math.h>
#include <string.h>

#include "core/internal.h"

attn_status attn_desc_create(attn_context *ctx, attn_desc **out) {
  ATTN_CHECK_NULL(ctx, ctx);
  ATTN_CHECK_NULL(ctx, out);
  attn_desc *d = attn_calloc(ctx, sizeof *d);
  if (d == NULL) return attn_fail(ctx, ATTN_ERR_NO_MEMORY, "attn_desc_create: out of memory");
  d->ctx = ctx;
  d->variant = ATTN_VARIANT_EXACT;
  d->score.kind = ATTN_SCORE_SCALED_DOT;
  d->mask.causal = ATTN_CAUSAL_NONE;
  d->mask.win_left = ATTN_WINDOW_UNBOUNDED;
  d->mask.win_right = ATTN_WINDOW_UNBOUNDED;
  d->block.size = 64;
  *out = d;
  return ATTN_OK;
}

void attn_desc_destroy(attn_desc *desc) {
  if (desc == NULL) return;
  attn_free(desc->ctx, desc, sizeof *desc);
}

#define DESC_GUARD(desc)                    \
  do {                                      \
    if ((desc) == NULL) return ATTN_ERR_NULL_ARG; \
  } while (0)

attn_status attn_desc_set_variant(attn_desc *desc, attn_variant variant) {
  DESC_GUARD(desc);
  if ((int)variant < ATTN_VARIANT_EXACT || (int)variant > ATTN_VARIANT_LINFORMER)
    return attn_fail(desc->ctx, ATTN_ERR_INVALID_ARG, "variant: %d is not an attn_variant",
                     (int)variant);
  desc->variant = variant;
  return ATTN_OK;
}

attn_status attn_desc_set_score(attn_desc *desc, attn_score score) {
  DESC_GUARD(desc);
  if ((int)score < ATTN_SCORE_SCALED_DOT || (int)score > ATTN_SCORE_ADDITIVE)
    return attn_fail(desc->ctx, ATTN_ERR_INVALID_ARG, "score: %d is not an attn_score",
                     (int)score);
  desc->score.kind = score;
  return ATTN_OK;
}

attn_status attn_desc_set_scale(attn_desc *desc, double scale) {
  DESC_GUARD(desc);
  if (!isfinite(scale) || scale <= 0.0)
    return attn_fail(desc->ctx, ATTN_ERR_INVALID_ARG, "scale: %g must be finite and > 0", scale);
  desc->score.scale = scale;
  return ATTN_OK;
}

attn_status attn_desc_set_causal(attn_desc *desc, attn_causal causal) {
  DESC_GUARD(desc);
  if ((int)causal < ATTN_CAUSAL_NONE || (int)causal > ATTN_CAUSAL_BOTTOM_RIGHT)
    return attn_fail(desc->ctx, ATTN_ERR_INVALID_ARG, "causal: %d is not an attn_causal",
                     (int)causal);
  desc->mask.causal = causal;
  return ATTN_OK;
}

attn_status attn_desc_set_window(attn_desc *desc, int64_t left, int64_t right) {
  DESC_GUARD(desc);
  if (left < 0)
    return attn_fail(desc->ctx, ATTN_ERR_INVALID_ARG, "left: %" PRId64 " must be >= 0", left);
  if (right < 0)
    return attn_fail(desc->ctx, ATTN_ERR_INVALID_ARG, "right: %" PRId64 " must be >= 0", right);
  desc->mask.win_left = left;
  desc->mask.win_right = right;
  return ATTN_OK;
}

static attn_status set_lengths(attn_desc *desc, const char *name, const int64_t *lengths,
                               int64_t count, const int64_t **dst, int64_t *dst_n) {
  if ((lengths == NULL) != (count == 0))
    return attn_fail(desc->ctx, lengths == NULL ? ATTN_ERR_NULL_ARG : ATTN_ERR_INVALID_ARG,
                     "%s: NULL lengths go with count 0 (count is %" PRId64 ")", name, count);
  if (count < 0)
    return attn_fail(desc->ctx, ATTN_ERR_INVALID_ARG, "%s: count %" PRId64 " is negative", name,
                     count);
  for (int64_t i = 0; i < count; i++)
    if (lengths[i] < 0)
      return attn_fail(desc->ctx, ATTN_ERR_INVALID_ARG,
                       "%s: lengths[%" PRId64 "] = %" PRId64 " is negative", name, i, lengths[i]);
  *dst = lengths;
  *dst_n = count;
  return ATTN_OK;
}

attn_status attn_desc_set_key_lengths(attn_desc *desc, const int64_t *lengths, int64_t count) {
  DESC_GUARD(desc);
  return set_lengths(desc, "key_lengths", lengths, count, &desc->mask.key_lengths,
                     &desc->mask.n_key_lengths);
}

attn_status attn_desc_set_query_lengths(attn_desc *desc, const int64_t *lengths, int64_t count) {
  DESC_GUARD(desc);
  return set_lengths(desc, "query_lengths", lengths, count, &desc->mask.query_lengths,
                     &desc->mask.n_query_lengths);
}

static attn_status check_mask_tensor(attn_desc *desc, const char *name, const attn_tensor *m,
                                     bool is_bool) {
  if (m == NULL) return ATTN_OK;
  if (m->rank != 4)
    return attn_fail(desc->ctx, ATTN_ERR_SHAPE, "%s: rank %d, expected 4 [B|1, H|1, S_q, S_k]",
                     name, (int)m->rank);
  if (is_bool && m->dtype != ATTN_DTYPE_U8)
    return attn_fail(desc->ctx, ATTN_ERR_DTYPE, "%s: dtype %s, expected u8 (non-zero = attend)",
                     name, attn_dtype_name(m->dtype));
  if (!is_bool && m->dtype != ATTN_DTYPE_F32 && m->dtype != ATTN_DTYPE_F64)
    return attn_fail(desc->ctx, ATTN_ERR_DTYPE, "%s: dtype %s, expected f32 or f64", name,
                     attn_dtype_name(m->dtype));
  return ATTN_OK;
}

attn_status attn_desc_set_bool_mask(attn_desc *desc, const attn_tensor *mask) {
  DESC_GUARD(desc);
  attn_status st = check_mask_tensor(desc, "bool_mask", mask, true);
  if (st == ATTN_OK) desc->mask.bool_mask = mask;
  return st;
}

attn_status attn_desc_set_additive_mask(attn_desc *desc, const attn_tensor *mask) {
  DESC_GUARD(desc);
  attn_status st = check_mask_tensor(desc, "additive_mask", mask, false);
  if (st == ATTN_OK) desc->mask.add_mask = mask;
  return st;
}

attn_status attn_desc_set_alibi(attn_desc *desc, const double *slopes, int64_t count) {
  DESC_GUARD(desc);
  if ((slopes == NULL) != (count == 0))
    return attn_fail(desc->ctx, slopes == NULL ? ATTN_ERR_NULL_ARG : ATTN_ERR_INVALID_ARG,
                     "slopes: NULL slopes go with count 0 (count is %" PRId64 ")", count);
  if (count < 0)
    return attn_fail(desc->ctx, ATTN_ERR_INVALID_ARG, "count: %" PRId64 " is negative", count);
  for (int64_t i = 0; i < count; i++)
    if (!isfinite(slopes[i]))
      return attn_fail(desc->ctx, ATTN_ERR_INVALID_ARG, "slopes[%" PRId64 "]: %g is not finite",
                       i, slopes[i]);
  desc->mask.alibi = slopes;
  desc->mask.n_alibi = count;
  return ATTN_OK;
}

attn_status attn_desc_set_softcap(attn_desc *desc, double cap) {
  DESC_GUARD(desc);
  if (!isfinite(cap) || cap <= 0.0)
    return attn_fail(desc->ctx, ATTN_ERR_INVALID_ARG, "cap: %g must be finite and > 0", cap);
  desc->mask.softcap = cap;
  return ATTN_OK;
}

attn_status attn_desc_set_general_weight(attn_desc *desc, const attn_tensor *w) {
  DESC_GUARD(desc);
  if (w != NULL && w->rank != 2)
    return attn_fail(desc->ctx, ATTN_ERR_SHAPE, "w: rank %d, expected 2 [d_q, d_k]", (int)w->rank);
  desc->score.general_w = w;
  return ATTN_OK;
}

attn_status attn_desc_set_additive_weights(attn_desc *desc, const attn_tensor *w_q,
                                           const attn_tensor *w_k, const attn_tensor *bias,
                                           const attn_tensor *v) {
  DESC_GUARD(desc);
  ATTN_CHECK_NULL(desc->ctx, w_q);
  ATTN_CHECK_NULL(desc->ctx, w_k);
  ATTN_CHECK_NULL(desc->ctx, v);
  if (w_q->rank != 2)
    return attn_fail(desc->ctx, ATTN_ERR_SHAPE, "w_q: rank %d, expected 2 [A, d_q]", (int)w_q->rank);
  if (w_k->rank != 2)
    return attn_fail(desc->ctx, ATTN_ERR_SHAPE, "w_k: rank %d, expected 2 [A, d_k]", (int)w_k->rank);
  if (v->rank != 1)
    return attn_fail(desc->ctx, ATTN_ERR_SHAPE, "v: rank %d, expected 1 [A]", (int)v->rank);
  if (bias != NULL && bias->rank != 1)
    return attn_fail(desc->ctx, ATTN_ERR_SHAPE, "bias: rank %d, expected 1 [A]", (int)bias->rank);
  int64_t a = w_q->shape[0];
  if (w_k->shape[0] != a || v->shape[0] != a || (bias != NULL && bias->shape[0] != a))
    return attn_fail(desc->ctx, ATTN_ERR_SHAPE,
                     "w_k/bias/v: attention dim must equal w_q's A = %" PRId64, a);
  desc->score.wq = w_q;
  desc->score.wk = w_k;
  desc->score.bias = bias;
  desc->score.v = v;
  return ATTN_OK;
}

/* ---- long-sequence options (approx.h) ------------------------------------ */

attn_status attn_desc_set_swin(attn_desc *desc, int64_t grid_h, int64_t grid_w, int64_t window,
                               int64_t shift) {
  DESC_GUARD(desc);
  if (grid_h < 1)
    return attn_fail(desc->ctx, ATTN_ERR_INVALID_ARG, "grid_h: %" PRId64 " must be >= 1", grid_h);
  if (grid_w < 1)
    return attn_fail(desc->ctx, ATTN_ERR_INVALID_ARG, "grid_w: %" PRId64 " must be >= 1", grid_w);
  if (window < 1)
    return attn_fail(desc->ctx, ATTN_ERR_INVALID_ARG, "window: %" PRId64 " must be >= 1", window);
  if (shift < 0 || shift >= window)
    return attn_fail(desc->ctx, ATTN_ERR_INVALID_ARG,
                     "shift: %" PRId64 " must be in [0, window = %" PRId64 ")", shift, window);
  int64_t s;
  if (!attn_mul_ok(grid_h, grid_w, &s))
    return attn_fail(desc->ctx, ATTN_ERR_OVERFLOW, "grid_h * grid_w overflows");
  desc->swin.h = grid_h;
  desc->swin.w = grid_w;
  desc->swin.window = window;
  desc->swin.shift = shift;
  return ATTN_OK;
}

attn_status attn_desc_set_swin_bias(attn_desc *desc, const attn_tensor *table) {
  DESC_GUARD(desc);
  if (table != NULL && table->rank != 2)
    return attn_fail(desc->ctx, ATTN_ERR_SHAPE, "table: rank %d, expected 2 [(2M-1)^2, H]",
                     (int)table->rank);
  desc->swin.bias = table;
  return ATTN_OK;
}

attn_status attn_desc_set_global_tokens(attn_desc *desc, const int64_t *indices, int64_t count) {
  DESC_GUARD(desc);
  if ((indices == NULL) != (count == 0))
    return attn_fail(desc->ctx, indices == NULL ? ATTN_ERR_NULL_ARG : ATTN_ERR_INVALID_ARG,
                     "indices: NULL indices go with count 0 (count is %" PRId64 ")", count);
  if (count < 0)
    return attn_fail(desc->ctx, ATTN_ERR_INVALID_ARG, "count: %" PRId64 " is negative", count);
  for (int64_t i = 0; i < count; i++)
    if (indices[i] < 0)
      return attn_fail(desc->ctx, ATTN_ERR_INVALID_ARG, "indices[%" PRId64 "]: %" PRId64
                       " is negative", i, indices[i]);
  desc->global.idx = indices;
  desc->global.n = count;
  return ATTN_OK;
}

attn_status attn_desc_set_block_size(attn_desc *desc, int64_t block) {
  DESC_GUARD(desc);
  if (block < 1)
    return attn_fail(desc->ctx, ATTN_ERR_INVALID_ARG, "block: %" PRId64 " must be >= 1", block);
  desc->block.size = block;
  return ATTN_OK;
}

attn_status attn_desc_set_bigbird(attn_desc *desc, int64_t window_blocks, int64_t global_blocks,
                                  int64_t random_blocks, uint64_t seed) {
  DESC_GUARD(desc);
  if (window_blocks < 0)
    return attn_fail(desc->ctx, ATTN_ERR_INVALID_ARG, "window_blocks: %" PRId64 " is negative",
                     window_blocks);
  if (global_blocks < 0)
    return attn_fail(desc->ctx, ATTN_ERR_INVALID_ARG, "global_blocks: %" PRId64 " is negative",
                     global_blocks);
  if (random_blocks < 0)
    return attn_fail(desc->ctx, ATTN_ERR_INVALID_ARG, "random_blocks: %" PRId64 " is negative",
                     random_blocks);
  desc->block.window = window_blocks;
  desc->block.global = global_blocks;
  desc->block.random = random_blocks;
  desc->block.seed = seed;
  return ATTN_OK;
}

attn_status attn_desc_set_block_layout(attn_desc *desc, const attn_tensor *layout) {
  DESC_GUARD(desc);
  if (layout != NULL && (layout->rank != 3 || layout->dtype != ATTN_DTYPE_U8))
    return attn_fail(desc->ctx, ATTN_ERR_SHAPE,
                     "layout: expected a u8 tensor of rank 3 [H|1, ceil(S_q/b), ceil(S_k/b)]");
  desc->block.layout = layout;
  return ATTN_OK;
}

attn_status attn_desc_set_features(attn_desc *desc, int64_t num_features, uint64_t seed) {
  DESC_GUARD(desc);
  if (num_features < 1)
    return attn_fail(desc->ctx, ATTN_ERR_INVALID_ARG, "num_features: %" PRId64 " must be >= 1",
                     num_features);
  desc->features.count = num_features;
  desc->features.seed = seed;
  return ATTN_OK;
}

attn_status attn_desc_set_lowrank(attn_desc *desc, int64_t rank, uint64_t seed) {
  DESC_GUARD(desc);
  if (rank < 1)
    return attn_fail(desc->ctx, ATTN_ERR_INVALID_ARG, "rank: %" PRId64 " must be >= 1", rank);
  desc->lowrank.rank = rank;
  desc->lowrank.seed = seed;
  return ATTN_OK;
}

attn_status attn_desc_set_lowrank_proj(attn_desc *desc, const attn_tensor *e,
                                       const attn_tensor *f) {
  DESC_GUARD(desc);
  if ((e == NULL) != (f == NULL))
    return attn_fail(desc->ctx, ATTN_ERR_NULL_ARG, "%s: E and F are given together or not at all",
                     e == NULL ? "e" : "f");
  if (e != NULL) {
    if (e->rank != 2 && e->rank != 3)
      return attn_fail(desc->ctx, ATTN_ERR_SHAPE, "e: rank %d, expected [k, S_k] or [H_kv, k, S_k]",
                       (int)e->rank);
    if (f->rank != e->rank)
      return attn_fail(desc->ctx, ATTN_ERR_SHAPE, "f: rank %d differs from e's rank %d",
                       (int)f->rank, (int)e->rank);
  }
  desc->lowrank.e = e;
  desc->lowrank.f = f;
  return ATTN_OK;
}

double attn_default_scale(attn_score score, int64_t d_k) {
  return score == ATTN_SCORE_SCALED_DOT ? 1.0 / sqrt((double)d_k) : 1.0;
}

/* ---- serving: packed variable-length batches, sinks, per-key mass ---------- */

attn_status attn_check_offsets(attn_context *ctx, const char *name, const int64_t *off, int64_t n,
                               int64_t total, const char *total_name) {
  if (off[0] != 0)
    return attn_fail(ctx, ATTN_ERR_INVALID_ARG, "%s: offsets[0] = %" PRId64 ", expected 0", name,
                     off[0]);
  for (int64_t i = 0; i < n; i++)
    if (off[i + 1] < off[i])
      return attn_fail(ctx, ATTN_ERR_INVALID_ARG,
                       "%s: offsets[%" PRId64 "] = %" PRId64 " < offsets[%" PRId64 "] = %" PRId64
                       " (offsets must not decrease)",
                       name, i + 1, off[i + 1], i, off[i]);
  if (total >= 0 && off[n] != total)
    return attn_fail(ctx, ATTN_ERR_INVALID_ARG,
                     "%s: last offset offsets[%" PRId64 "] = %" PRId64 " differs from %s = %" PRId64,
                     name, n, off[n], total_name, total);
  return ATTN_OK;
}

attn_status attn_desc_set_varlen(attn_desc *desc, const int64_t *q_offsets,
                                 const int64_t *k_offsets, int64_t n_seqs) {
  DESC_GUARD(desc);
  attn_status st;
  if (n_seqs < 0)
    return attn_fail(desc->ctx, ATTN_ERR_INVALID_ARG, "n_seqs: %" PRId64 " is negative", n_seqs);
  if (n_seqs == 0) {
    if (q_offsets != NULL || k_offsets != NULL)
      return attn_fail(desc->ctx, ATTN_ERR_INVALID_ARG,
                       "n_seqs: 0 clears the setting and takes NULL offsets");
    desc->varlen.q_off = desc->varlen.k_off = NULL;
    desc->varlen.n = 0;
    return ATTN_OK;
  }
  ATTN_CHECK_NULL(desc->ctx, q_offsets);
  if ((st = attn_check_offsets(desc->ctx, "q_offsets", q_offsets, n_seqs, -1, "")) != ATTN_OK)
    return st;
  if (k_offsets != NULL &&
      (st = attn_check_offsets(desc->ctx, "k_offsets", k_offsets, n_seqs, -1, "")) != ATTN_OK)
    return st;
  desc->varlen.q_off = q_offsets;
  desc->varlen.k_off = k_offsets != NULL ? k_offsets : q_offsets;
  desc->varlen.n = n_seqs;
  return ATTN_OK;
}

attn_status attn_check_sinks(attn_context *ctx, const double *logits, int64_t n, attn_dtype dt) {
  const double lim = dt == ATTN_DTYPE_F32 ? FLT_MAX : DBL_MAX;
  for (int64_t h = 0; h < n; h++)
    if (isnan(logits[h]) || logits[h] > lim)
      return attn_fail(ctx, ATTN_ERR_INVALID_ARG,
                       "sinks: logits[%" PRId64 "] = %g is NaN or above the %s range", h,
                       logits[h], attn_dtype_name(dt));
  return ATTN_OK;
}

attn_status attn_desc_set_sinks(attn_desc *desc, const double *logits, int64_t count) {
  DESC_GUARD(desc);
  if ((logits == NULL) != (count == 0))
    return attn_fail(desc->ctx, logits == NULL ? ATTN_ERR_NULL_ARG : ATTN_ERR_INVALID_ARG,
                     "logits: NULL logits go with count 0 (count is %" PRId64 ")", count);
  if (count < 0)
    return attn_fail(desc->ctx, ATTN_ERR_INVALID_ARG, "count: %" PRId64 " is negative", count);
  attn_status st = attn_check_sinks(desc->ctx, logits, count, ATTN_DTYPE_F64);
  if (st != ATTN_OK) return st;
  desc->sinks.logits = logits;
  desc->sinks.n = count;
  return ATTN_OK;
}

attn_status attn_desc_set_key_mass(attn_desc *desc, attn_tensor *mass) {
  DESC_GUARD(desc);
  if (mass != NULL && mass->rank != 3)
    return attn_fail(desc->ctx, ATTN_ERR_SHAPE,
                     "mass: rank %d, expected 3 [B, H or H_kv, S_k]", (int)mass->rank);
  desc->mass = mass;
  return ATTN_OK;
}

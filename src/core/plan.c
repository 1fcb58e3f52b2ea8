/* Plans: shape validation common to every variant, then the variant's own
 * initialiser; execute checks the tensors against the plan and dispatches. */
#include <inttypes.h>
#include <math.h>
#include <string.h>

#include "core/internal.h"

enum { META_Q, META_K, META_V, META_OUT, META_W, META_LSE };
static const char *const meta_names[6] = {"q", "k", "v", "out", "weights", "lse"};

static attn_status expect_dims(attn_context *ctx, const char *name, const attn_tensor *t,
                               const int64_t *want, const char *what) {
  for (int32_t i = 0; i < t->rank; i++) {
    if (want[i] >= 0 && t->shape[i] != want[i]) {
      char got[96];
      return attn_fail(ctx, ATTN_ERR_SHAPE,
                       "%s: shape %s does not match %s (dim %d should be %" PRId64 ")", name,
                       attn_shape_str(t, got, sizeof got), what, (int)i, want[i]);
    }
  }
  return ATTN_OK;
}

/* Outputs are written by several tasks at once, so no two indices may reach
 * the same element (a stride of 0 or overlapping rows would make the result
 * depend on which task writes last). Sufficient test: taking the dims of
 * size > 1 by increasing stride, each stride is at least the span (largest
 * offset + 1) of the dims before it. Every dense or padded layout passes. */
static attn_status expect_distinct(attn_context *ctx, const char *name, const attn_tensor *t) {
  int32_t idx[ATTN_MAX_RANK], n = 0;
  for (int32_t i = 0; i < t->rank; i++)
    if (t->shape[i] > 1) idx[n++] = i;
  for (int32_t a = 1; a < n; a++)
    for (int32_t b = a; b > 0 && t->strides[idx[b - 1]] > t->strides[idx[b]]; b--) {
      int32_t x = idx[b];
      idx[b] = idx[b - 1];
      idx[b - 1] = x;
    }
  int64_t span = 1; /* the extent was overflow-checked when t was made */
  for (int32_t a = 0; a < n; a++) {
    int64_t s = t->strides[idx[a]];
    if (s < span)
      return attn_fail(ctx, ATTN_ERR_LAYOUT,
                       "%s: stride %" PRId64 " of dim %d makes elements overlap; an output "
                       "needs distinct memory for every element",
                       name, s, (int)idx[a]);
    span += (t->shape[idx[a]] - 1) * s;
  }
  return ATTN_OK;
}

static attn_status validate(attn_context *ctx, const attn_desc *desc, const attn_tensor *q,
                            const attn_tensor *k, const attn_tensor *v, const attn_tensor *out,
                            const attn_tensor *weights, const attn_tensor *lse, attn_plan *p) {
  attn_status st;
  if (q == NULL) return attn_fail(ctx, ATTN_ERR_NULL_ARG, "q: must not be NULL");
  if (q->dtype != ATTN_DTYPE_F32 && q->dtype != ATTN_DTYPE_F64)
    return attn_fail(ctx, ATTN_ERR_DTYPE, "q: dtype %s, expected f32 or f64",
                     attn_dtype_name(q->dtype));
  attn_dtype dt = q->dtype;
  if ((st = attn_check_tensor(ctx, "q", q, 4, dt)) != ATTN_OK) return st;
  if ((st = attn_check_tensor(ctx, "k", k, 4, dt)) != ATTN_OK) return st;
  if ((st = attn_check_tensor(ctx, "v", v, 4, dt)) != ATTN_OK) return st;
  if ((st = attn_check_tensor(ctx, "out", out, 4, dt)) != ATTN_OK) return st;

  p->dtype = dt;
  p->B = q->shape[0];
  p->H = q->shape[1];
  p->Sq = q->shape[2];
  p->Dq = q->shape[3];
  p->Hkv = k->shape[1];
  p->Sk = k->shape[2];
  p->Dk = k->shape[3];
  p->Dv = v->shape[3];

  const int64_t kwant[4] = {p->B, -1, -1, -1};
  if ((st = expect_dims(ctx, "k", k, kwant, "q's batch")) != ATTN_OK) return st;
  const int64_t vwant[4] = {p->B, p->Hkv, p->Sk, -1};
  if ((st = expect_dims(ctx, "v", v, vwant, "k's [B, H_kv, S_k]")) != ATTN_OK) return st;
  if (p->H % p->Hkv != 0) {
    char a[96], b[96];
    return attn_fail(ctx, ATTN_ERR_SHAPE,
                     "k: %" PRId64 " key/value heads (shape %s) do not divide q's %" PRId64
                     " heads (shape %s)",
                     p->Hkv, attn_shape_str(k, a, sizeof a), p->H, attn_shape_str(q, b, sizeof b));
  }
  bool projected_score = desc->score == ATTN_SCORE_GENERAL || desc->score == ATTN_SCORE_ADDITIVE;
  if (!projected_score && p->Dk != p->Dq) {
    char a[96], b[96];
    return attn_fail(ctx, ATTN_ERR_SHAPE, "k: head dim %" PRId64 " (shape %s) differs from q's %"
                     PRId64 " (shape %s)", p->Dk, attn_shape_str(k, a, sizeof a), p->Dq,
                     attn_shape_str(q, b, sizeof b));
  }
  const int64_t owant[4] = {p->B, p->H, p->Sq, p->Dv};
  if ((st = expect_dims(ctx, "out", out, owant, "[B, H, S_q, d_v] of q and v")) != ATTN_OK)
    return st;
  if ((st = attn_check_matrix_rows(ctx, "q", q)) != ATTN_OK) return st;
  if ((st = attn_check_matrix_rows(ctx, "k", k)) != ATTN_OK) return st;
  if ((st = attn_check_matrix_rows(ctx, "v", v)) != ATTN_OK) return st;
  if ((st = attn_check_matrix_rows(ctx, "out", out)) != ATTN_OK) return st;
  if ((st = expect_distinct(ctx, "out", out)) != ATTN_OK) return st;
  if (weights != NULL) {
    if ((st = attn_check_tensor(ctx, "weights", weights, 4, dt)) != ATTN_OK) return st;
    const int64_t wwant[4] = {p->B, p->H, p->Sq, p->Sk};
    if ((st = expect_dims(ctx, "weights", weights, wwant, "[B, H, S_q, S_k]")) != ATTN_OK)
      return st;
    if ((st = attn_check_matrix_rows(ctx, "weights", weights)) != ATTN_OK) return st;
    if ((st = expect_distinct(ctx, "weights", weights)) != ATTN_OK) return st;
  }
  if (lse != NULL) {
    if ((st = attn_check_tensor(ctx, "lse", lse, 3, dt)) != ATTN_OK) return st;
    const int64_t lwant[3] = {p->B, p->H, p->Sq};
    if ((st = expect_dims(ctx, "lse", lse, lwant, "[B, H, S_q]")) != ATTN_OK) return st;
    if ((st = expect_distinct(ctx, "lse", lse)) != ATTN_OK) return st;
  }

  if (desc->scale > 0.0) {
    p->scale = desc->scale;
  } else {
    p->scale = desc->score == ATTN_SCORE_SCALED_DOT ? 1.0 / sqrt((double)p->Dk) : 1.0;
  }
  attn_tmeta_record(&p->meta[META_Q], q);
  attn_tmeta_record(&p->meta[META_K], k);
  attn_tmeta_record(&p->meta[META_V], v);
  attn_tmeta_record(&p->meta[META_OUT], out);
  attn_tmeta_record(&p->meta[META_W], weights);
  attn_tmeta_record(&p->meta[META_LSE], lse);
  return ATTN_OK;
}

attn_status attn_plan_create(attn_context *ctx, const attn_desc *desc, const attn_tensor *q,
                             const attn_tensor *k, const attn_tensor *v, const attn_tensor *out,
                             const attn_tensor *weights, const attn_tensor *lse,
                             attn_plan **plan) {
  ATTN_CHECK_NULL(ctx, ctx);
  attn_clear_error(ctx);
  ATTN_CHECK_NULL(ctx, desc);
  ATTN_CHECK_NULL(ctx, plan);
  attn_plan tmp;
  memset(&tmp, 0, sizeof tmp);
  tmp.ctx = ctx;
  tmp.desc = *desc;
  attn_status st = validate(ctx, desc, q, k, v, out, weights, lse, &tmp);
  if (st != ATTN_OK) return st;
  if ((st = attn_threadpool_ensure(ctx)) != ATTN_OK) return st;

  attn_plan *p = attn_alloc(ctx, sizeof *p);
  if (p == NULL) return attn_fail(ctx, ATTN_ERR_NO_MEMORY, "attn_plan_create: out of memory");
  *p = tmp;
  switch (desc->variant) {
    case ATTN_VARIANT_EXACT: st = attn_exact_plan_init(p); break;
    case ATTN_VARIANT_SWIN: st = attn_swin_plan_init(p); break;
    case ATTN_VARIANT_LONGFORMER:
    case ATTN_VARIANT_BIGBIRD:
    case ATTN_VARIANT_BLOCK_SPARSE: st = attn_sparse_plan_init(p); break;
    case ATTN_VARIANT_LINEAR_ELU:
    case ATTN_VARIANT_PERFORMER: st = attn_linear_plan_init(p); break;
    case ATTN_VARIANT_LINFORMER: st = attn_lowrank_plan_init(p); break;
    default: st = attn_fail(ctx, ATTN_ERR_INVALID_ARG, "desc: unknown variant %d", (int)desc->variant);
  }
  if (st != ATTN_OK) {
    attn_free(ctx, p, sizeof *p);
    return st;
  }
  *plan = p;
  return ATTN_OK;
}

attn_status attn_plan_execute(attn_plan *plan, const attn_tensor *q, const attn_tensor *k,
                              const attn_tensor *v, attn_tensor *out, attn_tensor *weights,
                              attn_tensor *lse) {
  if (plan == NULL) return ATTN_ERR_NULL_ARG;
  attn_context *ctx = plan->ctx;
  attn_clear_error(ctx);
  const attn_tensor *ts[6] = {q, k, v, out, weights, lse};
  const bool required[6] = {true, true, true, true, false, false};
  attn_status st = attn_tmeta_check_all(ctx, plan->meta, ts, meta_names, required, 6);
  if (st != ATTN_OK) return st;
  return plan->ops->execute(plan, q, k, v, out, weights, lse);
}

void attn_tmeta_record(attn_tmeta *m, const attn_tensor *t) {
  memset(m, 0, sizeof *m);
  if (t == NULL) return;
  m->present = true;
  m->dtype = t->dtype;
  m->rank = t->rank;
  memcpy(m->shape, t->shape, sizeof m->shape);
  memcpy(m->strides, t->strides, sizeof m->strides);
}

bool attn_tmeta_matches(const attn_tmeta *m, const attn_tensor *t) {
  if (!m->present) return t == NULL;
  if (t == NULL || t->data == NULL) return false;
  if (t->dtype != m->dtype || t->rank != m->rank) return false;
  for (int32_t i = 0; i < t->rank; i++)
    if (t->shape[i] != m->shape[i] || t->strides[i] != m->strides[i]) return false;
  return true;
}

attn_status attn_tmeta_check_all(attn_context *ctx, const attn_tmeta *meta,
                                 const attn_tensor *const *ts, const char *const *names,
                                 const bool *required, int n) {
  for (int i = 0; i < n; i++) {
    if (required[i] && ts[i] == NULL)
      return attn_fail(ctx, ATTN_ERR_NULL_ARG, "%s: must not be NULL", names[i]);
    if (attn_tmeta_matches(&meta[i], ts[i])) continue;
    if (!meta[i].present)
      return attn_fail(ctx, ATTN_ERR_MISMATCH, "%s: the plan was created without it; pass NULL",
                       names[i]);
    if (ts[i] == NULL)
      return attn_fail(ctx, ATTN_ERR_MISMATCH, "%s: the plan was created with it; pass it",
                       names[i]);
    char buf[96];
    return attn_fail(ctx, ATTN_ERR_MISMATCH,
                     "%s: dtype/shape/strides (%s %s) differ from the tensor the plan was made for",
                     names[i], attn_dtype_name(ts[i]->dtype), attn_shape_str(ts[i], buf, sizeof buf));
  }
  return ATTN_OK;
}

size_t attn_plan_workspace_size(const attn_plan *plan) {
  return plan == NULL ? 0 : plan->workspace_bytes;
}

void attn_plan_destroy(attn_plan *plan) {
  if (plan == NULL) return;
  attn_context *ctx = plan->ctx;
  if (plan->ops != NULL && plan->ops->destroy != NULL) plan->ops->destroy(plan);
  attn_free(ctx, plan->workspace, plan->workspace_bytes);
  attn_free(ctx, plan->impl, plan->impl_bytes);
  attn_free(ctx, plan, sizeof *plan);
}

attn_status attn_forward(attn_context *ctx, const attn_desc *desc, const attn_tensor *q,
                         const attn_tensor *k, const attn_tensor *v, attn_tensor *out,
                         attn_tensor *weights, attn_tensor *lse) {
  attn_plan *plan = NULL;
  attn_status st = attn_plan_create(ctx, desc, q, k, v, out, weights, lse, &plan);
  if (st != ATTN_OK) return st;
  st = attn_plan_execute(plan, q, k, v, out, weights, lse);
  attn_plan_destroy(plan);
  return st;
}

attn_status attn_plan_block_layout(const attn_plan *plan, uint8_t *buf, size_t *size) {
  if (plan == NULL) return ATTN_ERR_NULL_ARG;
  ATTN_CHECK_NULL(plan->ctx, size);
  if (plan->ops->block_layout == NULL)
    return attn_fail(plan->ctx, ATTN_ERR_UNSUPPORTED,
                     "plan: variant '%s' has no block layout", plan->ops->name);
  return plan->ops->block_layout(plan, buf, size);
}

attn_status attn_plan_redraw_features(attn_plan *plan, uint64_t seed) {
  if (plan == NULL) return ATTN_ERR_NULL_ARG;
  if (plan->ops->redraw == NULL)
    return attn_fail(plan->ctx, ATTN_ERR_UNSUPPORTED,
                     "plan: variant '%s' has no random features to redraw", plan->ops->name);
  return plan->ops->redraw(plan, seed);
}

/* Plans: shape validation common to every variant, the variant table's
 * options check, then the variant's own initialiser. Execute checks the
 * tensors against the plan and runs the variant on a workspace: the plan's
 * own, or the caller's (attn_plan_execute_on), never touching the plan. */
#include <inttypes.h>
#include <math.h>
#include <string.h>

#include "core/internal.h"

enum { META_Q, META_K, META_V, META_OUT, META_W, META_LSE };
static const char *const meta_names[6] = {"q", "k", "v", "out", "weights", "lse"};

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

/* Packed batches, sinks and the per-key mass against the plan's dims. */
static attn_status validate_serving(attn_context *ctx, const attn_desc *desc, const attn_dims *d) {
  attn_status st;
  char buf[96];
  if (desc->varlen.n > 0) {
    if (d->B != 1)
      return attn_fail(ctx, ATTN_ERR_SHAPE,
                       "q: a packed batch (attn_desc_set_varlen) has batch dim 1, got %" PRId64,
                       d->B);
    if ((st = attn_check_offsets(ctx, "q_offsets", desc->varlen.q_off, desc->varlen.n, d->Sq,
                                 "q's total tokens")) != ATTN_OK ||
        (st = attn_check_offsets(ctx, "k_offsets", desc->varlen.k_off, desc->varlen.n, d->Sk,
                                 "k's total tokens")) != ATTN_OK)
      return st;
  }
  if (desc->sinks.logits != NULL) {
    if (desc->sinks.n != d->H)
      return attn_fail(ctx, ATTN_ERR_SHAPE,
                       "sinks: %" PRId64 " logits given, q has %" PRId64 " heads", desc->sinks.n,
                       d->H);
    if ((st = attn_check_sinks(ctx, desc->sinks.logits, d->H, d->dtype)) != ATTN_OK) return st;
  }
  const attn_tensor *m = desc->mass;
  if (m != NULL) {
    /* The compute type, as lse and weights: a bf16/f16 plan's kernel sums
     * the mass in f32 and writes f32. */
    if ((st = attn_check_tensor(ctx, "mass", m, 3, attn_dtype_compute(d->dtype))) != ATTN_OK)
      return st;
    if (m->shape[0] != d->B || (m->shape[1] != d->H && m->shape[1] != d->Hkv) ||
        m->shape[2] != d->Sk)
      return attn_fail(ctx, ATTN_ERR_SHAPE,
                       "mass: shape %s, expected [B, H, S_k] = [%" PRId64 ",%" PRId64 ",%" PRId64
                       "] or [B, H_kv, S_k] = [%" PRId64 ",%" PRId64 ",%" PRId64 "]",
                       attn_shape_str(m, buf, sizeof buf), d->B, d->H, d->Sk, d->B, d->Hkv, d->Sk);
    if (m->shape[2] > 1 && m->strides[2] != 1)
      return attn_fail(ctx, ATTN_ERR_LAYOUT, "mass: stride %" PRId64 " of the key dim, expected 1",
                       m->strides[2]);
    if ((st = expect_distinct(ctx, "mass", m)) != ATTN_OK) return st;
  }
  return ATTN_OK;
}

attn_status attn_check_distinct(attn_context *ctx, const char *name, const attn_tensor *t) {
  return expect_distinct(ctx, name, t);
}

static attn_status validate(attn_context *ctx, const attn_desc *desc, const attn_tensor *q,
                            const attn_tensor *k, const attn_tensor *v, const attn_tensor *out,
                            const attn_tensor *weights, const attn_tensor *lse, attn_plan *p) {
  attn_status st;
  if (q == NULL) return attn_fail(ctx, ATTN_ERR_NULL_ARG, "q: must not be NULL");
  if (q->dtype != ATTN_DTYPE_F32 && q->dtype != ATTN_DTYPE_F64 && !attn_dtype_is_16bit(q->dtype))
    return attn_fail(ctx, ATTN_ERR_DTYPE, "q: dtype %s, expected f32, f64, bf16 or f16",
                     attn_dtype_name(q->dtype));
  attn_dtype dt = q->dtype;
  /* The dtype rules: one dtype for q, k, v (and out, weights, lse) in f32
   * and f64; 16-bit q, k, v of one type with out in it or in f32, and
   * weights/lse in f32, the compute type. */
  const attn_dtype ct = attn_dtype_compute(dt);
  if ((st = attn_check_dtype_pair(ctx, "k", k, "q", q)) != ATTN_OK) return st;
  if ((st = attn_check_dtype_pair(ctx, "v", v, "q", q)) != ATTN_OK) return st;
  if (out != NULL && ct != dt && out->dtype == ct) {
    /* 16-bit inputs, f32 output: allowed */
  } else if ((st = attn_check_dtype_pair(ctx, "out", out, "q", q)) != ATTN_OK) {
    return st;
  }
  if ((st = attn_check_tensor(ctx, "q", q, 4, dt)) != ATTN_OK) return st;
  if ((st = attn_check_tensor(ctx, "k", k, 4, dt)) != ATTN_OK) return st;
  if ((st = attn_check_tensor(ctx, "v", v, 4, dt)) != ATTN_OK) return st;
  if ((st = attn_check_tensor(ctx, "out", out, 4, out->dtype)) != ATTN_OK) return st;
  if (weights != NULL && weights->dtype != ct)
    return attn_fail(ctx, ATTN_ERR_DTYPE, "weights: dtype %s, expected %s (q is %s)%s",
                     attn_dtype_name(weights->dtype), attn_dtype_name(ct), attn_dtype_name(dt),
                     ct != dt ? ": weights of a 16-bit plan are f32" : "");
  if (lse != NULL && lse->dtype != ct)
    return attn_fail(ctx, ATTN_ERR_DTYPE, "lse: dtype %s, expected %s (q is %s)%s",
                     attn_dtype_name(lse->dtype), attn_dtype_name(ct), attn_dtype_name(dt),
                     ct != dt ? ": lse of a 16-bit plan is f32" : "");

  attn_dims *d = &p->dims;
  d->dtype = dt;
  d->B = q->shape[0];
  d->H = q->shape[1];
  d->Sq = q->shape[2];
  d->Dq = q->shape[3];
  d->Hkv = k->shape[1];
  d->Sk = k->shape[2];
  d->Dk = k->shape[3];
  d->Dv = v->shape[3];

  const int64_t kwant[4] = {d->B, -1, -1, -1};
  if ((st = attn_check_dims(ctx, "k", k, kwant, "q's batch")) != ATTN_OK) return st;
  const int64_t vwant[4] = {d->B, d->Hkv, d->Sk, -1};
  if ((st = attn_check_dims(ctx, "v", v, vwant, "k's [B, H_kv, S_k]")) != ATTN_OK) return st;
  if (d->H % d->Hkv != 0) {
    char a[96], b[96];
    return attn_fail(ctx, ATTN_ERR_SHAPE,
                     "k: %" PRId64 " key/value heads (shape %s) do not divide q's %" PRId64
                     " heads (shape %s)",
                     d->Hkv, attn_shape_str(k, a, sizeof a), d->H, attn_shape_str(q, b, sizeof b));
  }
  bool projected_score =
      desc->score.kind == ATTN_SCORE_GENERAL || desc->score.kind == ATTN_SCORE_ADDITIVE;
  if (!projected_score && d->Dk != d->Dq) {
    char a[96], b[96];
    return attn_fail(ctx, ATTN_ERR_SHAPE, "k: head dim %" PRId64 " (shape %s) differs from q's %"
                     PRId64 " (shape %s)", d->Dk, attn_shape_str(k, a, sizeof a), d->Dq,
                     attn_shape_str(q, b, sizeof b));
  }
  const int64_t owant[4] = {d->B, d->H, d->Sq, d->Dv};
  if ((st = attn_check_dims(ctx, "out", out, owant, "[B, H, S_q, d_v] of q and v")) != ATTN_OK)
    return st;
  if ((st = attn_check_matrix_rows(ctx, "q", q)) != ATTN_OK) return st;
  if ((st = attn_check_matrix_rows(ctx, "k", k)) != ATTN_OK) return st;
  if ((st = attn_check_matrix_rows(ctx, "v", v)) != ATTN_OK) return st;
  if ((st = attn_check_matrix_rows(ctx, "out", out)) != ATTN_OK) return st;
  if ((st = expect_distinct(ctx, "out", out)) != ATTN_OK) return st;
  if (weights != NULL) {
    if ((st = attn_check_tensor(ctx, "weights", weights, 4, ct)) != ATTN_OK) return st;
    const int64_t wwant[4] = {d->B, d->H, d->Sq, d->Sk};
    if ((st = attn_check_dims(ctx, "weights", weights, wwant, "[B, H, S_q, S_k]")) != ATTN_OK)
      return st;
    if ((st = attn_check_matrix_rows(ctx, "weights", weights)) != ATTN_OK) return st;
    if ((st = expect_distinct(ctx, "weights", weights)) != ATTN_OK) return st;
  }
  if (lse != NULL) {
    if ((st = attn_check_tensor(ctx, "lse", lse, 3, ct)) != ATTN_OK) return st;
    const int64_t lwant[3] = {d->B, d->H, d->Sq};
    if ((st = attn_check_dims(ctx, "lse", lse, lwant, "[B, H, S_q]")) != ATTN_OK) return st;
    if ((st = expect_distinct(ctx, "lse", lse)) != ATTN_OK) return st;
  }

  if ((st = validate_serving(ctx, desc, d)) != ATTN_OK) return st;

  p->scale = desc->score.scale > 0.0 ? desc->score.scale
                                     : attn_default_scale(desc->score.kind, d->Dk);
  attn_tmeta_record(&p->meta[META_Q], q);
  attn_tmeta_record(&p->meta[META_K], k);
  attn_tmeta_record(&p->meta[META_V], v);
  attn_tmeta_record(&p->meta[META_OUT], out);
  attn_tmeta_record(&p->meta[META_W], weights);
  attn_tmeta_record(&p->meta[META_LSE], lse);
  return ATTN_OK;
}

void *attn_plan_impl_alloc(attn_plan *p, size_t bytes) {
  void *im = attn_calloc(p->ctx, bytes);
  if (im == NULL) {
    attn_fail(p->ctx, ATTN_ERR_NO_MEMORY, "attn_plan_create: out of memory");
    return NULL;
  }
  p->impl = im;
  p->impl_bytes = bytes;
  return im;
}

size_t attn_plan_ws_bytes(const attn_plan *p, int32_t threads) {
  /* Saturates: a size no caller can provide, rather than a wrapped small one. */
  if (threads > 0 && p->ws_slot > (SIZE_MAX - ATTN_ALIGN - p->ws_shared) / (size_t)threads)
    return SIZE_MAX - ATTN_ALIGN;
  return p->ws_shared + p->ws_slot * (size_t)threads;
}

attn_ws attn_plan_ws_at(const attn_plan *p, void *base) {
  attn_ws w = {(char *)base, (char *)base + p->ws_shared, p->ws_slot};
  return w;
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
  tmp.ops = attn_variant_find(desc->variant);
  if (tmp.ops == NULL)
    return attn_fail(ctx, ATTN_ERR_INVALID_ARG, "desc: unknown variant %d", (int)desc->variant);
  if ((st = attn_options_check(ctx, &tmp.ops->support,
                               attn_options_used(desc, weights != NULL, lse != NULL))) != ATTN_OK)
    return st;
  if ((st = attn_dtype_check(ctx, &tmp.ops->support, desc, tmp.dims.dtype)) != ATTN_OK) return st;
  if ((st = attn_threadpool_ensure(ctx)) != ATTN_OK) return st;

  attn_plan *p = attn_alloc(ctx, sizeof *p);
  if (p == NULL) return attn_fail(ctx, ATTN_ERR_NO_MEMORY, "attn_plan_create: out of memory");
  *p = tmp;
  st = p->ops->init(p);
  if (st == ATTN_OK) {
    p->workspace_bytes = attn_plan_ws_bytes(p, ctx->num_threads);
    /* Zeroed now, so the first execute takes no page faults on it. */
    if (p->workspace_bytes > 0 && (p->workspace = attn_calloc(ctx, p->workspace_bytes)) == NULL)
      st = attn_fail(ctx, ATTN_ERR_NO_MEMORY,
                     "attn_plan_create: cannot allocate %zu bytes of workspace", p->workspace_bytes);
  }
  if (st != ATTN_OK) {
    p->workspace_bytes = 0;
    attn_plan_destroy(p);
    return st;
  }
  *plan = p;
  return ATTN_OK;
}

static attn_status run_checked(const attn_plan *plan, const attn_run *run, const attn_tensor *q,
                               const attn_tensor *k, const attn_tensor *v, attn_tensor *out,
                               attn_tensor *weights, attn_tensor *lse) {
  const attn_tensor *ts[6] = {q, k, v, out, weights, lse};
  const bool required[6] = {true, true, true, true, false, false};
  attn_status st = attn_tmeta_check_all(run->ctx, plan->meta, ts, meta_names, required, 6);
  if (st != ATTN_OK) return st;
  return plan->ops->execute(plan, run, q, k, v, out, weights, lse);
}

attn_status attn_plan_execute(attn_plan *plan, const attn_tensor *q, const attn_tensor *k,
                              const attn_tensor *v, attn_tensor *out, attn_tensor *weights,
                              attn_tensor *lse) {
  if (plan == NULL) return ATTN_ERR_NULL_ARG;
  attn_clear_error(plan->ctx);
  const attn_run run = {plan->ctx, attn_plan_ws_at(plan, plan->workspace)};
  return run_checked(plan, &run, q, k, v, out, weights, lse);
}

size_t attn_plan_workspace_size_on(const attn_plan *plan, const attn_context *ctx) {
  if (plan == NULL) return 0;
  const attn_context *c = ctx != NULL ? ctx : plan->ctx;
  return attn_plan_ws_bytes(plan, c->num_threads) + ATTN_ALIGN;
}

attn_status attn_plan_execute_on(const attn_plan *plan, attn_context *ctx, void *workspace,
                                 size_t workspace_size, const attn_tensor *q,
                                 const attn_tensor *k, const attn_tensor *v, attn_tensor *out,
                                 attn_tensor *weights, attn_tensor *lse) {
  if (plan == NULL) return ATTN_ERR_NULL_ARG;
  if (ctx == NULL) return ATTN_ERR_NULL_ARG;
  attn_clear_error(ctx);
  const size_t need = attn_plan_workspace_size_on(plan, ctx);
  if (workspace == NULL && need > ATTN_ALIGN)
    return attn_fail(ctx, ATTN_ERR_NULL_ARG, "workspace: must not be NULL (%zu bytes needed)", need);
  if (workspace_size < need)
    return attn_fail(ctx, ATTN_ERR_INVALID_ARG,
                     "workspace_size: %zu bytes given, this plan on a context of %d threads "
                     "needs %zu (attn_plan_workspace_size_on())",
                     workspace_size, (int)ctx->num_threads, need);
  if (ctx->num_threads > 1 && ctx->pool == NULL) {
    attn_status st = attn_threadpool_ensure(ctx);
    if (st != ATTN_OK) return st;
  }
  /* Align the caller's buffer: every part of a layout is 64-byte aligned. */
  uintptr_t a = (uintptr_t)workspace;
  char *base = (char *)workspace + ((ATTN_ALIGN - a % ATTN_ALIGN) % ATTN_ALIGN);
  const attn_run run = {ctx, attn_plan_ws_at(plan, base)};
  return run_checked(plan, &run, q, k, v, out, weights, lse);
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
  if (plan->ops != NULL && plan->ops->destroy != NULL && plan->impl != NULL)
    plan->ops->destroy(plan);
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
                     "plan: variant '%s' has no block layout", plan->ops->support.name);
  return plan->ops->block_layout(plan, buf, size);
}

attn_status attn_plan_redraw_features(attn_plan *plan, uint64_t seed) {
  if (plan == NULL) return ATTN_ERR_NULL_ARG;
  if (plan->ops->redraw == NULL)
    return attn_fail(plan->ctx, ATTN_ERR_UNSUPPORTED,
                     "plan: variant '%s' has no random features to redraw",
                     plan->ops->support.name);
  return plan->ops->redraw(plan, seed);
}

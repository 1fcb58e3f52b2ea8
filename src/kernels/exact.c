/* Exact attention, flash-style: for each (batch, head, query block) and each
 * key block the mask keeps, S = scale·Q Kᵀ by GEMM, mask/bias only where the
 * tile needs it, online softmax (kernels/softmax_impl.inc), O += P V by GEMM;
 * out = O / l, lse = m + log l. Memory is O(threads · tile), never
 * O(S_q·S_k) unless weights are asked for. */
#include <inttypes.h>
#include <math.h>
#include <string.h>

#include "blas/gemm.h"
#include "kernels/exact.h"
#include "kernels/vmath.h"

void attn_exact_tiles(int64_t Sq, int64_t Sk, int64_t Dk, int64_t Dv, int64_t *bq, int64_t *bk) {
  /* Measured on Zen 4 (1 MiB L2/core), 1 thread, S = 2048..4096: d ≤ 64 is best
   * at 256×512 (84 GFLOPS vs 79 at 128×512), d ≤ 128 at 256×256 (90 vs 82 at
   * 128×256); larger d use smaller query blocks to keep tiles in L2. */
  int64_t d = attn_max64(Dk, Dv);
  int64_t q = d <= 128 ? 256 : 64;
  int64_t k = d <= 64 ? 512 : 256;
  *bq = attn_min64(q, Sq);
  *bk = attn_min64(k, Sk);
}

typedef struct exact_args {
  const attn_exact *ex;
  const attn_mask *mask; /* bound for this execute */
  attn_ws ws;
  const attn_tensor *q, *k, *v;
  attn_tensor *out, *weights, *lse;
} exact_args;

#define ATTN_TMPL_FILE "kernels/exact_impl.inc"
#include "core/tmpl.h"

attn_status attn_exact_run(const attn_exact *ex, attn_context *ctx, const attn_ws *ws,
                           const attn_mask *mask, const attn_tensor *q, const attn_tensor *k,
                           const attn_tensor *v, attn_tensor *out, attn_tensor *weights,
                           attn_tensor *lse) {
  const attn_dims *d = &ex->dims;
  exact_args a = {ex, mask, *ws, q, k, v, out, weights, lse};
  const bool f32 = d->dtype == ATTN_DTYPE_F32;
  attn_status st;
  if (ex->score == ATTN_SCORE_ADDITIVE) {
    if (f32)
      exact_additive_prepare_f32(&a);
    else
      exact_additive_prepare_f64(&a);
    st = attn_parallel_for(ctx, d->B * d->Hkv, f32 ? exact_kproj_task_f32 : exact_kproj_task_f64, &a);
    if (st != ATTN_OK) return st;
  }
  /* Dense-equivalent FLOPs: only a hint for running tiny calls on the caller. */
  const double flops = 4.0 * (double)d->B * (double)d->H * (double)d->Sq * (double)d->Sk *
                       (double)(d->Dk > d->Dv ? d->Dk : d->Dv);
  return attn_parallel_for_cost(ctx, d->B * (d->H / ex->gs) * ex->nqb, flops,
                                f32 ? exact_task_f32 : exact_task_f64, &a);
}

attn_status attn_exact_plan_execute(const attn_plan *p, const attn_run *run, const attn_tensor *q,
                                    const attn_tensor *k, const attn_tensor *v, attn_tensor *out,
                                    attn_tensor *weights, attn_tensor *lse) {
  const attn_exact *ex = p->impl;
  attn_mask mask = ex->mask;
  attn_mask_bind(&mask, &p->desc);
  attn_status st = attn_mask_check(&mask, run->ctx);
  if (st != ATTN_OK) return st;
  return attn_exact_run(ex, run->ctx, &run->ws, &mask, q, k, v, out, weights, lse);
}

static attn_status check_score_params(attn_context *ctx, const attn_desc *desc,
                                      const attn_dims *dm) {
  const struct attn_desc_score *d = &desc->score;
  attn_status st;
  char buf[96];
  if (d->kind == ATTN_SCORE_GENERAL) {
    if (d->general_w == NULL)
      return attn_fail(ctx, ATTN_ERR_NULL_ARG,
                       "general_w: ATTN_SCORE_GENERAL needs attn_desc_set_general_weight()");
    if ((st = attn_check_tensor(ctx, "general_w", d->general_w, 2, dm->dtype)) != ATTN_OK) return st;
    if (d->general_w->shape[0] != dm->Dq || d->general_w->shape[1] != dm->Dk)
      return attn_fail(ctx, ATTN_ERR_SHAPE,
                       "general_w: shape %s, expected [d_q, d_k] = [%" PRId64 ",%" PRId64 "]",
                       attn_shape_str(d->general_w, buf, sizeof buf), dm->Dq, dm->Dk);
    if ((st = attn_check_matrix_rows(ctx, "general_w", d->general_w)) != ATTN_OK) return st;
  }
  if (d->kind == ATTN_SCORE_ADDITIVE) {
    if (d->wq == NULL)
      return attn_fail(ctx, ATTN_ERR_NULL_ARG,
                       "w_q: ATTN_SCORE_ADDITIVE needs attn_desc_set_additive_weights()");
    if ((st = attn_check_tensor(ctx, "w_q", d->wq, 2, dm->dtype)) != ATTN_OK) return st;
    if ((st = attn_check_tensor(ctx, "w_k", d->wk, 2, dm->dtype)) != ATTN_OK) return st;
    if ((st = attn_check_tensor(ctx, "v", d->v, 1, dm->dtype)) != ATTN_OK) return st;
    if (d->bias != NULL && (st = attn_check_tensor(ctx, "bias", d->bias, 1, dm->dtype)) != ATTN_OK)
      return st;
    if (d->wq->shape[1] != dm->Dq)
      return attn_fail(ctx, ATTN_ERR_SHAPE, "w_q: shape %s, expected [A, d_q = %" PRId64 "]",
                       attn_shape_str(d->wq, buf, sizeof buf), dm->Dq);
    if (d->wk->shape[1] != dm->Dk)
      return attn_fail(ctx, ATTN_ERR_SHAPE, "w_k: shape %s, expected [A, d_k = %" PRId64 "]",
                       attn_shape_str(d->wk, buf, sizeof buf), dm->Dk);
    if ((st = attn_check_matrix_rows(ctx, "w_q", d->wq)) != ATTN_OK) return st;
    if ((st = attn_check_matrix_rows(ctx, "w_k", d->wk)) != ATTN_OK) return st;
  }
  return ATTN_OK;
}

attn_status attn_exact_setup(attn_exact *ex, attn_context *ctx, const attn_desc *desc,
                             const attn_dims *dims, double scale, int64_t bq, int64_t bk) {
  attn_status st = check_score_params(ctx, desc, dims);
  if (st != ATTN_OK) return st;
  const attn_dims *d = dims;
  ex->dims = *dims;
  ex->scale = scale;
  ex->score = desc->score.kind;
  ex->general_w = desc->score.general_w;
  ex->wq = desc->score.wq;
  ex->wk = desc->score.wk;
  ex->av = desc->score.v;
  ex->abias = desc->score.bias;
  attn_exact_tiles(d->Sq, d->Sk, d->Dk, d->Dv, &ex->bq, &ex->bk);
  if (bq > 0) ex->bq = attn_min64(bq, d->Sq);
  if (bk > 0) ex->bk = attn_min64(bk, d->Sk);
  /* GQA: stack a group's query heads into one GEMM (each K/V tile read once
   * per group) unless masks or sparse layouts differ between heads. */
  ex->gs = 1;
  if (d->H > d->Hkv && !ex->mask.has_dense && ex->mask.sparse == ATTN_SPARSE_NONE &&
      ex->mask.max_ranges == 1) {
    ex->gs = d->H / d->Hkv;
    ex->bq = attn_max64(1, attn_min64(ex->bq, attn_cdiv64(ex->bq, ex->gs)));
  }
  ex->nqb = attn_cdiv64(d->Sq, ex->bq);
  /* kc: keys per tanh chunk, so kc·A ≤ 16384 elements (64 KiB in f32) stays
   * in L2; at least 1, at most bk. */
  const int64_t A = ex->score == ATTN_SCORE_ADDITIVE ? ex->wq->shape[0] : 0;
  ex->A = A;
  ex->add_kc = A > 0 ? attn_max64(1, attn_min64(ex->bk, 16384 / A)) : 0;
  ex->qx_cols = ex->score == ATTN_SCORE_GENERAL ? d->Dk : A;
  /* A thread's slot: S [rq×bk], O [rq×Dv], m, l [rq], stacked Q [rq×Dq]
   * (GQA), projected queries [rq×Dk] (general) or [rq×A] (additive), Vz
   * [bk×Dv], additive scratch [kc×A], the key ranges; rq = gs·bq rows. d_k
   * (general) and A (additive) come from the weights, not from q/k/v's
   * sizes, so the carver checks every product. */
  const size_t es = attn_dtype_size(d->dtype);
  const int64_t rq = ex->gs * ex->bq;
  attn_carver c = attn_carver_start();
  ex->at.S = attn_carve(&c, es, rq, ex->bk, 1);
  ex->at.O = attn_carve(&c, es, rq, d->Dv, 1);
  ex->at.M = attn_carve(&c, es, rq, 1, 1);
  ex->at.L = attn_carve(&c, es, rq, 1, 1);
  ex->at.QS = attn_carve(&c, es, ex->gs > 1 ? rq : 0, d->Dq, 1);
  ex->at.QX = attn_carve(&c, es, rq, ex->qx_cols, 1);
  ex->at.Vz = attn_carve(&c, es, ex->bk, d->Dv, 1);
  ex->at.X = attn_carve(&c, es, ex->add_kc, A, 1);
  ex->at.ranges = attn_carve(&c, sizeof(int64_t), 2, ex->mask.max_ranges, 1);
  attn_carver sh = attn_carver_start();
  if (A > 0) {
    ex->kp_at = attn_carve(&sh, es, d->B * d->Hkv, d->Sk, A);
    ex->vb_at = attn_carve(&sh, es, 2, A, 1);
  }
  int64_t total;
  if (!c.ok || !attn_mul_ok(c.bytes, ctx->num_threads, &total))
    return attn_fail(ctx, ATTN_ERR_OVERFLOW, "%s: workspace size overflows (%s = %" PRId64 ")",
                     A > 0 ? "w_q" : "general_w", A > 0 ? "attention dim A" : "d_k",
                     A > 0 ? A : d->Dk);
  if (!sh.ok || !attn_add_ok(total, sh.bytes, &total))
    return attn_fail(ctx, ATTN_ERR_OVERFLOW,
                     "w_k: the K projection [B, H_kv, S_k, A = %" PRId64 "] size overflows", A);
  ex->slot_bytes = (size_t)c.bytes;
  ex->shared_bytes = (size_t)sh.bytes;
  return ATTN_OK;
}

attn_status attn_exact_plan_init(attn_plan *p) {
  attn_context *ctx = p->ctx;
  attn_exact *ex = attn_plan_impl_alloc(p, sizeof *ex);
  if (ex == NULL) return ATTN_ERR_NO_MEMORY;
  const attn_dims *d = &p->dims;
  const attn_mask_geom g = attn_mask_geom_of(&p->desc, d->dtype, d->B, d->H, d->Sq, d->Sk);
  attn_status st;
  if ((st = attn_mask_init(&ex->mask, ctx, &p->desc, &g)) != ATTN_OK ||
      (st = attn_exact_setup(ex, ctx, &p->desc, d, p->scale, 0, 0)) != ATTN_OK)
    return st;
  p->ws_shared = ex->shared_bytes;
  p->ws_slot = ex->slot_bytes;
  return ATTN_OK;
}

/* Exact attention, flash-style: for each (batch, head, query block) and each
 * key block the mask keeps, S = scale·Q Kᵀ by GEMM, mask/bias only where the
 * tile needs it, online softmax (running max m and sum l, O rescaled by
 * e^{m_old − m_new}), O += P V by GEMM; out = O / l, lse = m + log l.
 * Memory is O(threads · tile), never O(S_q·S_k) unless weights are asked for. */
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
  attn_plan *plan;
  const attn_tensor *q, *k, *v;
  attn_tensor *out, *weights, *lse;
} exact_args;

#define T float
#define SUFFIX f32
#define GEMM attn_sgemm
#define VMAX(x, n) vm->max_f32((x), (n))
#define VEXPSUM(x, n, m) vm->exp_sub_sum_f32((x), (n), (m))
#define VTANH(x, n) vm->tanh_f32((x), (n))
#define MASK_APPLY attn_mask_apply_f32
#define EXP expf
#define LOG logf
#include "kernels/exact_impl.inc"
#undef T
#undef SUFFIX
#undef GEMM
#undef VMAX
#undef VEXPSUM
#undef VTANH
#undef MASK_APPLY
#undef EXP
#undef LOG

#define T double
#define SUFFIX f64
#define GEMM attn_dgemm
#define VMAX(x, n) attn_max_f64((x), (n))
#define VEXPSUM(x, n, m) attn_exp_sub_sum_f64((x), (n), (m))
#define VTANH(x, n) attn_tanh_f64((x), (n))
#define MASK_APPLY attn_mask_apply_f64
#define EXP exp
#define LOG log
#include "kernels/exact_impl.inc"

attn_status attn_exact_execute(attn_plan *p, const attn_tensor *q, const attn_tensor *k,
                               const attn_tensor *v, attn_tensor *out, attn_tensor *weights,
                               attn_tensor *lse) {
  attn_exact *im = p->impl;
  attn_mask_bind(&im->mask, &p->desc);
  attn_status st = attn_mask_check(&im->mask, p->ctx);
  if (st != ATTN_OK) return st;
  exact_args a = {p, q, k, v, out, weights, lse};
  bool f32 = p->dtype == ATTN_DTYPE_F32;
  if (p->desc.score == ATTN_SCORE_ADDITIVE) {
    if (f32)
      exact_additive_prepare_f32(&a);
    else
      exact_additive_prepare_f64(&a);
    st = attn_parallel_for(p->ctx, p->B * p->Hkv, f32 ? exact_kproj_task_f32 : exact_kproj_task_f64, &a);
    if (st != ATTN_OK) return st;
  }
  return attn_parallel_for(p->ctx, p->B * (p->H / im->gs) * im->nqb,
                           f32 ? exact_task_f32 : exact_task_f64, &a);
}

static const attn_plan_ops exact_ops = {"exact", attn_exact_execute, NULL, NULL, NULL};

static attn_status check_score_params(attn_plan *p) {
  attn_context *ctx = p->ctx;
  const attn_desc *d = &p->desc;
  attn_status st;
  char buf[96];
  if (d->score == ATTN_SCORE_GENERAL) {
    if (d->general_w == NULL)
      return attn_fail(ctx, ATTN_ERR_NULL_ARG,
                       "general_w: ATTN_SCORE_GENERAL needs attn_desc_set_general_weight()");
    if ((st = attn_check_tensor(ctx, "general_w", d->general_w, 2, p->dtype)) != ATTN_OK) return st;
    if (d->general_w->shape[0] != p->Dq || d->general_w->shape[1] != p->Dk)
      return attn_fail(ctx, ATTN_ERR_SHAPE,
                       "general_w: shape %s, expected [d_q, d_k] = [%" PRId64 ",%" PRId64 "]",
                       attn_shape_str(d->general_w, buf, sizeof buf), p->Dq, p->Dk);
    if ((st = attn_check_matrix_rows(ctx, "general_w", d->general_w)) != ATTN_OK) return st;
  }
  if (d->score == ATTN_SCORE_ADDITIVE) {
    if (d->add_wq == NULL)
      return attn_fail(ctx, ATTN_ERR_NULL_ARG,
                       "w_q: ATTN_SCORE_ADDITIVE needs attn_desc_set_additive_weights()");
    if ((st = attn_check_tensor(ctx, "w_q", d->add_wq, 2, p->dtype)) != ATTN_OK) return st;
    if ((st = attn_check_tensor(ctx, "w_k", d->add_wk, 2, p->dtype)) != ATTN_OK) return st;
    if ((st = attn_check_tensor(ctx, "v", d->add_v, 1, p->dtype)) != ATTN_OK) return st;
    if (d->add_bias != NULL &&
        (st = attn_check_tensor(ctx, "bias", d->add_bias, 1, p->dtype)) != ATTN_OK)
      return st;
    if (d->add_wq->shape[1] != p->Dq)
      return attn_fail(ctx, ATTN_ERR_SHAPE, "w_q: shape %s, expected [A, d_q = %" PRId64 "]",
                       attn_shape_str(d->add_wq, buf, sizeof buf), p->Dq);
    if (d->add_wk->shape[1] != p->Dk)
      return attn_fail(ctx, ATTN_ERR_SHAPE, "w_k: shape %s, expected [A, d_k = %" PRId64 "]",
                       attn_shape_str(d->add_wk, buf, sizeof buf), p->Dk);
    if ((st = attn_check_matrix_rows(ctx, "w_q", d->add_wq)) != ATTN_OK) return st;
    if ((st = attn_check_matrix_rows(ctx, "w_k", d->add_wk)) != ATTN_OK) return st;
  }
  return ATTN_OK;
}

/* Tiles, workspace slot layout and the plan's workspace for im (mask ready). */
static attn_status exact_setup(attn_plan *p, attn_exact *im, int64_t bq, int64_t bk) {
  attn_context *ctx = p->ctx;
  attn_exact_tiles(p->Sq, p->Sk, p->Dk, p->Dv, &im->bq, &im->bk);
  if (bq > 0) im->bq = attn_min64(bq, p->Sq);
  if (bk > 0) im->bk = attn_min64(bk, p->Sk);
  /* GQA: stack a group's query heads into one GEMM (each K/V tile read once
   * per group) unless masks or sparse layouts differ between heads. */
  im->gs = 1;
  if (p->H > p->Hkv && !im->mask.has_dense && im->mask.sparse == ATTN_SPARSE_NONE &&
      im->mask.max_ranges == 1) {
    im->gs = p->H / p->Hkv;
    im->bq = attn_max64(1, attn_min64(im->bq, attn_cdiv64(im->bq, im->gs)));
  }
  im->nqb = attn_cdiv64(p->Sq, im->bq);
  /* Slot: S [rq×bk], O [rq×Dv], m, l [rq], stacked Q [rq×Dq] (GQA), projected
   * queries [rq×Dk] (general) or [rq×A] (additive), Vz [bk×Dv], additive
   * scratch [kc×A], key ranges; rq = gs·bq rows; each part rounded to 16
   * elements. kc: keys per tanh chunk, so kc·A ≤ 16384 elements (64 KiB in
   * f32) stays in L2; at least 1, at most bk. */
  int64_t A = p->desc.score == ATTN_SCORE_ADDITIVE ? p->desc.add_wq->shape[0] : 0;
  im->add_kc = A > 0 ? attn_max64(1, attn_min64(im->bk, 16384 / A)) : 0;
  im->qx_cols = p->desc.score == ATTN_SCORE_GENERAL ? p->Dk : A;
  int64_t rq = im->gs * im->bq;
  /* The key-range list (int64 pairs) is sized in elements of the dtype. */
  int64_t range_elems = 2 * im->mask.max_ranges * 8 / (int64_t)attn_dtype_size(p->dtype);
  /* d_k (general) and A (additive) come from the weights, not from q/k/v's
   * sizes, so every product and sum here is checked. */
  int64_t parts[9] = {0, 0, rq, rq, 0, 0, 0, 0, range_elems};
  bool ok = attn_mul_ok(rq, im->bk, &parts[0]) && attn_mul_ok(rq, p->Dv, &parts[1]) &&
            (im->gs == 1 || attn_mul_ok(rq, p->Dq, &parts[4])) &&
            attn_mul_ok(rq, im->qx_cols, &parts[5]) && attn_mul_ok(im->bk, p->Dv, &parts[6]) &&
            attn_mul_ok(im->add_kc, A, &parts[7]);
  int64_t slot = 0, total = 0;
  for (int i = 0; i < 9 && ok; i++)
    ok = attn_add_ok(parts[i], 15, &parts[i]) && attn_add_ok(slot, parts[i] / 16 * 16, &slot);
  if (!ok || !attn_mul_ok(slot, ctx->num_threads, &total))
    return attn_fail(ctx, ATTN_ERR_OVERFLOW, "%s: workspace size overflows (%s = %" PRId64 ")",
                     A > 0 ? "w_q" : "general_w", A > 0 ? "attention dim A" : "d_k",
                     A > 0 ? A : p->Dk);
  im->slot_elems = (size_t)slot;
  im->A = A;
  if (A > 0) {
    int64_t kp;
    if (!attn_mul_ok(p->B * p->Hkv, p->Sk, &kp) || !attn_mul_ok(kp, A, &kp) ||
        !attn_add_ok(total, kp, &total) || !attn_add_ok(total, 2 * A + 32, &total))
      return attn_fail(ctx, ATTN_ERR_OVERFLOW,
                       "w_k: the K projection [B, H_kv, S_k, A = %" PRId64 "] size overflows", A);
    im->kp_offset = (size_t)(slot * ctx->num_threads);
    im->vb_offset = im->kp_offset + (size_t)kp;
  }
  size_t bytes;
  if (!attn_bytes_ok(&total, 1, attn_dtype_size(p->dtype), &bytes))
    return attn_fail(ctx, ATTN_ERR_OVERFLOW, "workspace size overflows");
  p->workspace = attn_alloc(ctx, bytes);
  if (p->workspace == NULL)
    return attn_fail(ctx, ATTN_ERR_NO_MEMORY, "attn_plan_create: cannot allocate %zu bytes of workspace",
                     bytes);
  p->workspace_bytes = bytes;
  return ATTN_OK;
}

attn_status attn_exact_prepare(attn_plan *p, attn_exact *im, int64_t bq, int64_t bk) {
  attn_status st = check_score_params(p);
  if (st != ATTN_OK) return st;
  return exact_setup(p, im, bq, bk);
}

attn_status attn_exact_plan_init(attn_plan *p) {
  attn_context *ctx = p->ctx;
  attn_status st = check_score_params(p);
  if (st != ATTN_OK) return st;
  attn_exact *im = attn_calloc(ctx, sizeof *im);
  if (im == NULL) return attn_fail(ctx, ATTN_ERR_NO_MEMORY, "attn_plan_create: out of memory");
  if ((st = attn_mask_init(&im->mask, p)) != ATTN_OK || (st = exact_setup(p, im, 0, 0)) != ATTN_OK) {
    attn_free(ctx, im, sizeof *im);
    return st;
  }
  p->impl = im;
  p->impl_bytes = sizeof *im;
  p->ops = &exact_ops;
  return ATTN_OK;
}

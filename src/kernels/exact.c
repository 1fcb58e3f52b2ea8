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
  int64_t d = attn_max64(Dk, Dv);
  int64_t q = d <= 128 ? 128 : 64;
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

static attn_status exact_execute(attn_plan *p, const attn_tensor *q, const attn_tensor *k,
                                 const attn_tensor *v, attn_tensor *out, attn_tensor *weights,
                                 attn_tensor *lse) {
  attn_exact *im = p->impl;
  attn_mask_bind(&im->mask, &p->desc);
  exact_args a = {p, q, k, v, out, weights, lse};
  attn_status st;
  bool f32 = p->dtype == ATTN_DTYPE_F32;
  if (p->desc.score == ATTN_SCORE_ADDITIVE) {
    if (f32)
      exact_additive_prepare_f32(&a);
    else
      exact_additive_prepare_f64(&a);
    st = attn_parallel_for(p->ctx, p->B * p->Hkv, f32 ? exact_kproj_task_f32 : exact_kproj_task_f64, &a);
    if (st != ATTN_OK) return st;
  }
  return attn_parallel_for(p->ctx, p->B * p->H * im->nqb, f32 ? exact_task_f32 : exact_task_f64,
                           &a);
}

static const attn_plan_ops exact_ops = {"exact", exact_execute, NULL, NULL, NULL};

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
    if (d->general_w->strides[1] != 1)
      return attn_fail(ctx, ATTN_ERR_LAYOUT, "general_w: last dim must be contiguous");
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
    if (d->add_wq->strides[1] != 1 || d->add_wk->strides[1] != 1)
      return attn_fail(ctx, ATTN_ERR_LAYOUT, "w_q/w_k: last dim must be contiguous");
  }
  return ATTN_OK;
}

attn_status attn_exact_plan_init(attn_plan *p) {
  attn_context *ctx = p->ctx;
  attn_status st = check_score_params(p);
  if (st != ATTN_OK) return st;
  attn_exact *im = attn_calloc(ctx, sizeof *im);
  if (im == NULL) return attn_fail(ctx, ATTN_ERR_NO_MEMORY, "attn_plan_create: out of memory");
  if ((st = attn_mask_init(&im->mask, p)) != ATTN_OK) {
    attn_free(ctx, im, sizeof *im);
    return st;
  }
  attn_exact_tiles(p->Sq, p->Sk, p->Dk, p->Dv, &im->bq, &im->bk);
  im->nqb = attn_cdiv64(p->Sq, im->bq);
  /* Slot: S [bq×bk], O [bq×Dv], m, l [bq], Qg [bq×Dk] (general) or Qp [bq×A]
   * (additive), Vz [bk×Dv], additive scratch [A], key ranges; each rounded to
   * 16 elements. */
  int64_t A = p->desc.score == ATTN_SCORE_ADDITIVE ? p->desc.add_wq->shape[0] : 0;
  /* d_k (general) and A (additive) come from the weights and are not bounded
   * by q/k/v's sizes, so every product and sum here is checked. */
  int64_t qx = 0, bqbk = 0, bqdv = 0, bkdv = 0;
  bool ok = attn_mul_ok(im->bq, p->desc.score == ATTN_SCORE_GENERAL ? p->Dk : A, &qx) &&
            attn_mul_ok(im->bq, im->bk, &bqbk) && attn_mul_ok(im->bq, p->Dv, &bqdv) &&
            attn_mul_ok(im->bk, p->Dv, &bkdv);
  /* The key-range list (int64 pairs) is sized in elements of the dtype. */
  int64_t range_elems = 2 * im->mask.max_ranges * 8 / (int64_t)attn_dtype_size(p->dtype);
  int64_t parts[8] = {bqbk, bqdv, im->bq, im->bq, qx, bkdv, A, range_elems};
  int64_t slot = 0, total = 0;
  for (int i = 0; i < 8 && ok; i++)
    ok = attn_add_ok(parts[i], 15, &parts[i]) && attn_add_ok(slot, parts[i] / 16 * 16, &slot);
  if (!ok || !attn_mul_ok(slot, ctx->num_threads, &total)) {
    attn_free(ctx, im, sizeof *im);
    return attn_fail(ctx, ATTN_ERR_OVERFLOW,
                     "%s: workspace size overflows (%s = %" PRId64 ")",
                     A > 0 ? "w_q" : "general_w", A > 0 ? "attention dim A" : "d_k",
                     A > 0 ? A : p->Dk);
  }
  im->slot_elems = (size_t)slot;
  im->A = A;
  if (A > 0) {
    int64_t kp;
    if (!attn_mul_ok(p->B * p->Hkv, p->Sk, &kp) || !attn_mul_ok(kp, A, &kp) ||
        !attn_add_ok(total, kp, &total) || !attn_add_ok(total, 2 * A + 32, &total)) {
      attn_free(ctx, im, sizeof *im);
      return attn_fail(ctx, ATTN_ERR_OVERFLOW, "additive score: K projection size overflows");
    }
    im->kp_offset = (size_t)(slot * ctx->num_threads);
    im->vb_offset = im->kp_offset + (size_t)kp;
  }
  size_t bytes;
  if (!attn_bytes_ok(&total, 1, attn_dtype_size(p->dtype), &bytes)) {
    attn_free(ctx, im, sizeof *im);
    return attn_fail(ctx, ATTN_ERR_OVERFLOW, "workspace size overflows");
  }
  p->workspace = attn_alloc(ctx, bytes);
  if (p->workspace == NULL) {
    attn_free(ctx, im, sizeof *im);
    return attn_fail(ctx, ATTN_ERR_NO_MEMORY, "attn_plan_create: cannot allocate %zu bytes of workspace",
                     bytes);
  }
  p->workspace_bytes = bytes;
  p->impl = im;
  p->impl_bytes = sizeof *im;
  p->ops = &exact_ops;
  return ATTN_OK;
}

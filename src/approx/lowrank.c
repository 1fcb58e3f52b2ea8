/* Linformer: K' = E·K, V' = F·V with E, F ∈ R^{k×S_k} (per batch item and
 * key/value head, over the first k_len_b key positions when key lengths are
 * set), then exact attention of q on (K', V') through the exact kernel: an
 * internal exact plan made at plan time on tensors that view the workspace
 * holding K' and V'. Cost O(S·k·d) instead of O(S_q·S_k·d). */
#include <inttypes.h>
#include <limits.h>
#include <math.h>
#include <string.h>

#include "approx/rng.h"
#include "blas/gemm.h"
#include "core/internal.h"

typedef struct lowrank_impl {
  attn_plan *inner;          /* exact attention of q on (K', V') */
  attn_tensor *kp, *vp;      /* [B, H_kv, k, d_k], [B, H_kv, k, d_v] views of the workspace */
  int64_t k;
  bool seeded;               /* E, F live in the workspace (drawn at plan time) */
  size_t e_off, f_off;       /* seeded: byte offsets of E, F ([k, S_k] each) */
  size_t len_off;            /* key lengths: [B] int64 for the inner plan */
  int64_t *inner_len;        /* k, or 0 where the caller's length is 0 */
} lowrank_impl;

typedef struct lowrank_args {
  const attn_plan *plan;
  const attn_tensor *k, *v;
} lowrank_args;

/* Projection for key/value head kh: pointer and leading dimension. */
static const void *proj_for(const attn_plan *p, const attn_tensor *given, size_t seeded_off,
                            int64_t kh, int64_t *ld) {
  const lowrank_impl *im = p->impl;
  const size_t es = attn_dtype_size(p->dtype);
  if (im->seeded) {
    *ld = p->Sk;
    return (const char *)p->workspace + seeded_off;
  }
  if (given->rank == 2) {
    *ld = given->strides[0];
    return given->data;
  }
  *ld = given->strides[1];
  return (const char *)given->data + (size_t)(kh * given->strides[0]) * es;
}

static void lowrank_task(void *argp, int64_t t, int32_t thread) {
  (void)thread;
  const lowrank_args *a = argp;
  const attn_plan *p = a->plan;
  const lowrank_impl *im = p->impl;
  const int64_t b = t / p->Hkv, kh = t % p->Hkv;
  const int64_t klen = p->desc.key_lengths ? p->desc.key_lengths[b] : p->Sk;
  int64_t lde, ldf;
  const void *E = proj_for(p, p->desc.lr_e, im->e_off, kh, &lde);
  const void *F = proj_for(p, p->desc.lr_f, im->f_off, kh, &ldf);
  const size_t es = attn_dtype_size(p->dtype);
  char *kp = (char *)im->kp->data + (size_t)attn_off4(im->kp, b, kh, 0, 0) * es;
  char *vp = (char *)im->vp->data + (size_t)attn_off4(im->vp, b, kh, 0, 0) * es;
  if (klen == 0) { /* every key is padding: K' = V' = 0, so out = 0 */
    memset(kp, 0, (size_t)(im->k * p->Dk) * es);
    memset(vp, 0, (size_t)(im->k * p->Dv) * es);
    return;
  }
  const int64_t ldk = a->k->strides[2], ldv = a->v->strides[2];
  if (p->dtype == ATTN_DTYPE_F32) {
    const float *K = (const float *)a->k->data + attn_off4(a->k, b, kh, 0, 0);
    const float *V = (const float *)a->v->data + attn_off4(a->v, b, kh, 0, 0);
    attn_sgemm(false, false, im->k, p->Dk, klen, 1.0f, E, lde, K, ldk, 0.0f, (float *)kp, p->Dk);
    attn_sgemm(false, false, im->k, p->Dv, klen, 1.0f, F, ldf, V, ldv, 0.0f, (float *)vp, p->Dv);
  } else {
    const double *K = (const double *)a->k->data + attn_off4(a->k, b, kh, 0, 0);
    const double *V = (const double *)a->v->data + attn_off4(a->v, b, kh, 0, 0);
    attn_dgemm(false, false, im->k, p->Dk, klen, 1.0, E, lde, K, ldk, 0.0, (double *)kp, p->Dk);
    attn_dgemm(false, false, im->k, p->Dv, klen, 1.0, F, ldf, V, ldv, 0.0, (double *)vp, p->Dv);
  }
}

static attn_status lowrank_execute(attn_plan *p, const attn_tensor *q, const attn_tensor *k,
                                   const attn_tensor *v, attn_tensor *out, attn_tensor *weights,
                                   attn_tensor *lse) {
  (void)weights;
  lowrank_impl *im = p->impl;
  lowrank_args a = {p, k, v};
  /* An item whose keys are all padding keeps no projected key either, so its
   * rows give out 0 and lse −inf like any row with no kept key. */
  /* Borrowed lengths may have changed since the plan: re-check before reading K/V. */
  if (im->inner_len != NULL) {
    for (int64_t b = 0; b < p->B; b++)
      if (p->desc.key_lengths[b] < 0 || p->desc.key_lengths[b] > p->Sk)
        return attn_fail(p->ctx, ATTN_ERR_INVALID_ARG,
                         "key_lengths: lengths[%" PRId64 "] = %" PRId64 " is outside [0, S_k = %" PRId64 "]",
                         b, p->desc.key_lengths[b], p->Sk);
    for (int64_t b = 0; b < p->B; b++) im->inner_len[b] = p->desc.key_lengths[b] > 0 ? im->k : 0;
  }
  attn_status st = attn_parallel_for(p->ctx, p->B * p->Hkv, lowrank_task, &a);
  if (st != ATTN_OK) return st;
  return attn_plan_execute(im->inner, q, im->kp, im->vp, out, NULL, lse);
}

static void lowrank_destroy(attn_plan *p) {
  lowrank_impl *im = p->impl;
  if (im == NULL) return;
  attn_plan_destroy(im->inner);
  attn_tensor_destroy(im->kp);
  attn_tensor_destroy(im->vp);
  im->inner = NULL;
  im->kp = im->vp = NULL;
}

static const attn_plan_ops lowrank_ops = {"linformer", lowrank_execute, lowrank_destroy, NULL,
                                          NULL};

/* Options that do not survive projecting the key axis. */
static attn_status check_options(attn_plan *p) {
  attn_context *ctx = p->ctx;
  const attn_desc *d = &p->desc;
  if (d->causal != ATTN_CAUSAL_NONE)
    return attn_fail(ctx, ATTN_ERR_UNSUPPORTED,
                     "causal: causal masking is undefined for Linformer (every projected key "
                     "mixes all S_k positions)");
  if (d->win_left != ATTN_WINDOW_UNBOUNDED || d->win_right != ATTN_WINDOW_UNBOUNDED)
    return attn_fail(ctx, ATTN_ERR_UNSUPPORTED,
                     "window: a sliding window is undefined for Linformer (keys are projected)");
  if (d->bool_mask != NULL)
    return attn_fail(ctx, ATTN_ERR_UNSUPPORTED,
                     "bool_mask: Linformer has no S_q×S_k scores to mask (use key lengths)");
  if (d->add_mask != NULL)
    return attn_fail(ctx, ATTN_ERR_UNSUPPORTED,
                     "additive_mask: Linformer has no S_q×S_k scores to add a mask to");
  if (d->alibi != NULL)
    return attn_fail(ctx, ATTN_ERR_UNSUPPORTED,
                     "alibi: projected keys have no positions for Linformer to bias by");
  if (p->meta[4].present)
    return attn_fail(ctx, ATTN_ERR_UNSUPPORTED,
                     "weights: Linformer's weights are over the k projected keys, not the S_k "
                     "keys of the weights tensor (pass NULL)");
  if (d->key_lengths != NULL) {
    if (d->n_key_lengths != p->B)
      return attn_fail(ctx, ATTN_ERR_SHAPE, "key_lengths: %" PRId64 " lengths given, batch is %" PRId64,
                       d->n_key_lengths, p->B);
    for (int64_t b = 0; b < p->B; b++)
      if (d->key_lengths[b] < 0 || d->key_lengths[b] > p->Sk)
        return attn_fail(ctx, ATTN_ERR_INVALID_ARG,
                         "key_lengths: lengths[%" PRId64 "] = %" PRId64 " is outside [0, S_k = %" PRId64 "]",
                         b, d->key_lengths[b], p->Sk);
  }
  return ATTN_OK;
}

/* Given E and F: dtype, [k, S_k] or [H_kv, k, S_k], same shape, contiguous rows. */
static attn_status check_proj(attn_plan *p, int64_t *k_out) {
  attn_context *ctx = p->ctx;
  const attn_tensor *e = p->desc.lr_e, *f = p->desc.lr_f;
  const attn_tensor *ts[2] = {e, f};
  const char *names[2] = {"e", "f"};
  char buf[96];
  attn_status st;
  for (int i = 0; i < 2; i++) {
    const attn_tensor *t = ts[i];
    if ((st = attn_check_tensor(ctx, names[i], t, t->rank, p->dtype)) != ATTN_OK) return st;
    const int32_t r = t->rank;
    bool ok = t->shape[r - 1] == p->Sk && (r == 2 || t->shape[0] == p->Hkv);
    if (!ok)
      return attn_fail(ctx, ATTN_ERR_SHAPE,
                       "%s: shape %s, expected [k, S_k = %" PRId64 "] or [H_kv = %" PRId64
                       ", k, S_k = %" PRId64 "]",
                       names[i], attn_shape_str(t, buf, sizeof buf), p->Sk, p->Hkv, p->Sk);
    /* Each [k, S_k] slice is a BLAS operand: contiguous S_k axis, rows that
     * do not overlap, everything within BLAS's int. */
    if ((st = attn_check_matrix_rows(ctx, names[i], t)) != ATTN_OK) return st;
  }
  for (int32_t x = 0; x < e->rank; x++)
    if (f->shape[x] != e->shape[x]) {
      char b2[96];
      return attn_fail(ctx, ATTN_ERR_SHAPE, "f: shape %s differs from e's %s",
                       attn_shape_str(f, buf, sizeof buf), attn_shape_str(e, b2, sizeof b2));
    }
  *k_out = e->shape[e->rank - 2];
  if (p->desc.rank > 0 && p->desc.rank != *k_out)
    return attn_fail(ctx, ATTN_ERR_SHAPE,
                     "rank: k = %" PRId64 " from attn_desc_set_lowrank() differs from e's k = %" PRId64,
                     p->desc.rank, *k_out);
  return ATTN_OK;
}

static void draw_proj(attn_plan *p, uint64_t seed, uint64_t stream, size_t off) {
  const lowrank_impl *im = p->impl;
  attn_rng rng;
  attn_rng_seed(&rng, seed, stream);
  const double sd = 1.0 / sqrt((double)im->k);
  const int64_t n = im->k * p->Sk;
  if (p->dtype == ATTN_DTYPE_F32) {
    float *x = (float *)((char *)p->workspace + off);
    for (int64_t i = 0; i < n; i++) x[i] = (float)(sd * attn_rng_normal(&rng));
  } else {
    double *x = (double *)((char *)p->workspace + off);
    for (int64_t i = 0; i < n; i++) x[i] = sd * attn_rng_normal(&rng);
  }
}

static attn_status wrap4(attn_context *ctx, attn_dtype dt, int64_t a, int64_t b, int64_t c,
                         int64_t d, const int64_t *strides, void *data, attn_tensor **out) {
  const int64_t shape[4] = {a, b, c, d};
  return attn_tensor_wrap(ctx, dt, 4, shape, strides, data, out);
}

attn_status attn_lowrank_plan_init(struct attn_plan *p) {
  attn_context *ctx = p->ctx;
  attn_status st = check_options(p);
  if (st != ATTN_OK) return st;
  int64_t k = 0;
  const bool seeded = p->desc.lr_e == NULL;
  if (seeded) {
    if (p->desc.rank < 1)
      return attn_fail(ctx, ATTN_ERR_INVALID_ARG,
                       "rank: Linformer needs k from attn_desc_set_lowrank() or projections "
                       "from attn_desc_set_lowrank_proj()");
    k = p->desc.rank;
  } else if ((st = check_proj(p, &k)) != ATTN_OK) {
    return st;
  }
  if (k > p->Sk)
    return attn_fail(ctx, ATTN_ERR_INVALID_ARG,
                     "rank: k = %" PRId64 " exceeds S_k = %" PRId64
                     " (Linformer projects the keys to k ≤ S_k rows)", k, p->Sk);
  for (int i = 0; i < 3; i++)
    if (p->meta[1 + i].strides[2] > INT_MAX || (i == 0 && p->Sk > INT_MAX))
      return attn_fail(ctx, ATTN_ERR_UNSUPPORTED, "%s: sizes exceed what BLAS takes (INT_MAX)",
                       (const char *const[]){"k", "v", "out"}[i]);

  /* Workspace: K' [B, H_kv, k, d_k], V' [B, H_kv, k, d_v], (seeded) E, F [k, S_k],
   * (key lengths) the inner plan's lengths [B]. */
  const size_t es = attn_dtype_size(p->dtype);
  int64_t kd[4] = {p->B, p->Hkv, k, p->Dk}, vd[4] = {p->B, p->Hkv, k, p->Dv}, ed[2] = {k, p->Sk};
  size_t kb, vb, eb = 0, total;
  if (!attn_bytes_ok(kd, 4, es, &kb) || !attn_bytes_ok(vd, 4, es, &vb) ||
      (seeded && !attn_bytes_ok(ed, 2, es, &eb)) || kb > SIZE_MAX / 4 || vb > SIZE_MAX / 4 ||
      eb > SIZE_MAX / 4)
    return attn_fail(ctx, ATTN_ERR_OVERFLOW, "rank: the projected K', V' for k = %" PRId64
                     " overflow", k);
  kb = (kb + 63) / 64 * 64; /* keep every part 64-byte aligned */
  eb = (eb + 63) / 64 * 64;
  vb = (vb + 63) / 64 * 64;
  const size_t lb = p->desc.key_lengths ? (size_t)p->B * sizeof(int64_t) : 0;
  total = kb + vb + 2 * eb + lb;

  lowrank_impl *im = attn_calloc(ctx, sizeof *im);
  if (im == NULL) return attn_fail(ctx, ATTN_ERR_NO_MEMORY, "attn_plan_create: out of memory");
  void *ws = attn_alloc(ctx, total);
  if (ws == NULL) {
    attn_free(ctx, im, sizeof *im);
    return attn_fail(ctx, ATTN_ERR_NO_MEMORY,
                     "attn_plan_create: cannot allocate %zu bytes of workspace", total);
  }
  im->k = k;
  im->seeded = seeded;
  im->e_off = kb + vb;
  im->f_off = kb + vb + eb;
  im->len_off = kb + vb + 2 * eb;
  im->inner_len = lb ? (int64_t *)(void *)((char *)ws + im->len_off) : NULL;
  for (int64_t b = 0; lb && b < p->B; b++) im->inner_len[b] = k;
  p->impl = im;
  p->impl_bytes = sizeof *im;
  p->workspace = ws;
  p->workspace_bytes = total;
  p->ops = &lowrank_ops;

  /* Views of K', V' and a throwaway q/out (only metadata matters to a plan). */
  attn_tensor *tq = NULL, *to = NULL, *lse_view = NULL;
  attn_desc inner = p->desc; /* score, scale, softcap, query lengths carry over */
  inner.variant = ATTN_VARIANT_EXACT;
  inner.key_lengths = im->inner_len; /* the caller's are applied by the projection */
  inner.n_key_lengths = im->inner_len ? p->B : 0;
  const attn_tmeta *mq = &p->meta[0], *mo = &p->meta[3];
  if ((st = wrap4(ctx, p->dtype, p->B, p->Hkv, k, p->Dk, NULL, ws, &im->kp)) != ATTN_OK ||
      (st = wrap4(ctx, p->dtype, p->B, p->Hkv, k, p->Dv, NULL, (char *)ws + kb, &im->vp)) != ATTN_OK ||
      (st = wrap4(ctx, p->dtype, mq->shape[0], mq->shape[1], mq->shape[2], mq->shape[3], mq->strides,
                  ws, &tq)) != ATTN_OK ||
      (st = wrap4(ctx, p->dtype, mo->shape[0], mo->shape[1], mo->shape[2], mo->shape[3], mo->strides,
                  ws, &to)) != ATTN_OK)
    goto fail;
  if (p->meta[5].present &&
      (st = attn_tensor_wrap(ctx, p->dtype, 3, p->meta[5].shape, p->meta[5].strides, ws,
                             &lse_view)) != ATTN_OK)
    goto fail;
  st = attn_plan_create(ctx, &inner, tq, im->kp, im->vp, to, NULL, lse_view, &im->inner);
  if (st != ATTN_OK) goto fail;
  attn_tensor_destroy(tq);
  attn_tensor_destroy(to);
  attn_tensor_destroy(lse_view);
  if (seeded) {
    draw_proj(p, p->desc.rank_seed, 1, im->e_off);
    draw_proj(p, p->desc.rank_seed, 2, im->f_off);
  }
  return ATTN_OK;

fail:
  attn_tensor_destroy(tq);
  attn_tensor_destroy(to);
  attn_tensor_destroy(lse_view);
  lowrank_destroy(p);
  attn_free(ctx, ws, total);
  attn_free(ctx, im, sizeof *im);
  p->impl = NULL;
  p->workspace = NULL;
  p->ops = NULL;
  return st;
}

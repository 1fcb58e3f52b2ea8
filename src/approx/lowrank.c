/* Linformer: K' = E·K, V' = F·V with E, F ∈ R^{k×S_k} (per batch item and
 * key/value head, over the first k_len_b key positions when key lengths are
 * set), then exact attention of q on (K', V') through the exact kernel, run
 * directly on views of the workspace that holds K' and V' (no inner plan).
 * Cost O(S·k·d) instead of O(S_q·S_k·d). */
#include <inttypes.h>
#include <limits.h>
#include <math.h>
#include <string.h>

#include "approx/rng.h"
#include "kernels/exact.h"

typedef struct lowrank_impl {
  attn_exact ex;             /* exact attention of q on (K', V') */
  int64_t k;
  bool seeded;               /* E, F drawn at plan time, held below */
  void *ef;                  /* seeded: E then F, [k, S_k] each, plan dtype */
  size_t ef_bytes;
  /* The shared workspace: K' [B, H_kv, k, d_k], V' [B, H_kv, k, d_v], the
   * inner key lengths [B], then the exact kernel's own shared part. */
  size_t kp_at, vp_at, len_at, ex_at;
} lowrank_impl;

typedef struct lowrank_args {
  const attn_plan *plan;
  char *shared;
  const attn_tensor *k, *v;
} lowrank_args;

/* Projection for key/value head kh: pointer and leading dimension. */
static const void *proj_for(const attn_plan *p, const attn_tensor *given, int which, int64_t kh,
                            int64_t *ld) {
  const lowrank_impl *im = p->impl;
  const size_t es = attn_dtype_size(p->dims.dtype);
  if (im->seeded) {
    *ld = p->dims.Sk;
    return (const char *)im->ef + (size_t)which * (im->ef_bytes / 2);
  }
  if (given->rank == 2) {
    *ld = given->strides[0];
    return given->data;
  }
  *ld = given->strides[1];
  return (const char *)given->data + (size_t)(kh * given->strides[0]) * es;
}

/* K'[b, kh] = E·K[b, kh] and V'[b, kh] = F·V[b, kh] over the item's keys. */
static void lowrank_task(void *argp, int64_t t, int32_t thread) {
  (void)thread;
  const lowrank_args *a = argp;
  const attn_plan *p = a->plan;
  const attn_dims *d = &p->dims;
  const lowrank_impl *im = p->impl;
  const attn_dtype_traits *tr = attn_dtype_info(d->dtype);
  const int64_t b = t / d->Hkv, kh = t % d->Hkv;
  const int64_t klen = p->desc.mask.key_lengths ? p->desc.mask.key_lengths[b] : d->Sk;
  int64_t lde, ldf;
  const void *E = proj_for(p, p->desc.lowrank.e, 0, kh, &lde);
  const void *F = proj_for(p, p->desc.lowrank.f, 1, kh, &ldf);
  const size_t es = tr->size;
  char *kp = a->shared + im->kp_at + (size_t)((b * d->Hkv + kh) * im->k * d->Dk) * es;
  char *vp = a->shared + im->vp_at + (size_t)((b * d->Hkv + kh) * im->k * d->Dv) * es;
  if (klen == 0) { /* every key is padding: K' = V' = 0, so out = 0 */
    memset(kp, 0, (size_t)(im->k * d->Dk) * es);
    memset(vp, 0, (size_t)(im->k * d->Dv) * es);
    return;
  }
  const char *K = (const char *)a->k->data + (size_t)attn_off4(a->k, b, kh, 0, 0) * es;
  const char *V = (const char *)a->v->data + (size_t)attn_off4(a->v, b, kh, 0, 0) * es;
  tr->gemm(false, false, im->k, d->Dk, klen, 1.0, E, lde, K, a->k->strides[2], 0.0, kp, d->Dk);
  tr->gemm(false, false, im->k, d->Dv, klen, 1.0, F, ldf, V, a->v->strides[2], 0.0, vp, d->Dv);
}

attn_status attn_lowrank_plan_execute(const attn_plan *p, const attn_run *run,
                                      const attn_tensor *q, const attn_tensor *k,
                                      const attn_tensor *v, attn_tensor *out,
                                      attn_tensor *weights, attn_tensor *lse) {
  (void)weights;
  const lowrank_impl *im = p->impl;
  const attn_dims *d = &p->dims;
  attn_context *ctx = run->ctx;
  const int64_t *klen = p->desc.mask.key_lengths;
  /* Borrowed lengths may have changed since the plan: re-check before reading K/V. */
  int64_t *inner_len = NULL;
  if (klen != NULL) {
    for (int64_t b = 0; b < d->B; b++)
      if (klen[b] < 0 || klen[b] > d->Sk)
        return attn_fail(ctx, ATTN_ERR_INVALID_ARG,
                         "key_lengths: lengths[%" PRId64 "] = %" PRId64 " is outside [0, S_k = %" PRId64 "]",
                         b, klen[b], d->Sk);
    /* An item whose keys are all padding keeps no projected key either, so
     * its rows give out 0 and lse −inf like any row with no kept key. */
    inner_len = (int64_t *)(void *)(run->ws.shared + im->len_at);
    for (int64_t b = 0; b < d->B; b++) inner_len[b] = klen[b] > 0 ? im->k : 0;
  }
  attn_mask mask = im->ex.mask;
  attn_mask_bind(&mask, &p->desc);
  mask.key_len = inner_len; /* the caller's lengths are applied by the projection */
  attn_status st = attn_mask_check(&mask, ctx);
  if (st != ATTN_OK) return st;
  lowrank_args a = {p, run->ws.shared, k, v};
  if ((st = attn_parallel_for(ctx, d->B * d->Hkv, lowrank_task, &a)) != ATTN_OK) return st;
  const int64_t ks[4] = {d->B, d->Hkv, im->k, d->Dk}, vs[4] = {d->B, d->Hkv, im->k, d->Dv};
  const attn_tensor kp = attn_tensor_view4(d->dtype, ks, NULL, run->ws.shared + im->kp_at);
  const attn_tensor vp = attn_tensor_view4(d->dtype, vs, NULL, run->ws.shared + im->vp_at);
  const attn_ws ws = {run->ws.shared + im->ex_at, run->ws.slots, run->ws.slot_bytes};
  return attn_exact_run(&im->ex, ctx, &ws, &mask, q, &kp, &vp, out, NULL, lse);
}

void attn_lowrank_plan_destroy(attn_plan *p) {
  lowrank_impl *im = p->impl;
  attn_free(p->ctx, im->ef, im->ef_bytes);
}

/* Given E and F: dtype, [k, S_k] or [H_kv, k, S_k], same shape, contiguous rows. */
static attn_status check_proj(attn_plan *p, int64_t *k_out) {
  attn_context *ctx = p->ctx;
  const attn_tensor *e = p->desc.lowrank.e, *f = p->desc.lowrank.f;
  const attn_tensor *ts[2] = {e, f};
  const char *names[2] = {"e", "f"};
  char buf[96];
  attn_status st;
  for (int i = 0; i < 2; i++) {
    const attn_tensor *t = ts[i];
    if ((st = attn_check_tensor(ctx, names[i], t, t->rank, p->dims.dtype)) != ATTN_OK) return st;
    const int32_t r = t->rank;
    bool ok = t->shape[r - 1] == p->dims.Sk && (r == 2 || t->shape[0] == p->dims.Hkv);
    if (!ok)
      return attn_fail(ctx, ATTN_ERR_SHAPE,
                       "%s: shape %s, expected [k, S_k = %" PRId64 "] or [H_kv = %" PRId64
                       ", k, S_k = %" PRId64 "]",
                       names[i], attn_shape_str(t, buf, sizeof buf), p->dims.Sk, p->dims.Hkv, p->dims.Sk);
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
  if (p->desc.lowrank.rank > 0 && p->desc.lowrank.rank != *k_out)
    return attn_fail(ctx, ATTN_ERR_SHAPE,
                     "rank: k = %" PRId64 " from attn_desc_set_lowrank() differs from e's k = %" PRId64,
                     p->desc.lowrank.rank, *k_out);
  return ATTN_OK;
}

/* Seeded projections N(0, 1/k), drawn in f64 and stored in the plan dtype. */
static void draw_proj(const attn_plan *p, const lowrank_impl *im, uint64_t stream, void *dst) {
  attn_rng rng;
  attn_rng_seed(&rng, p->desc.lowrank.seed, stream);
  const double sd = 1.0 / sqrt((double)im->k);
  const int64_t n = im->k * p->dims.Sk;
  if (p->dims.dtype == ATTN_DTYPE_F32) {
    float *x = dst;
    for (int64_t i = 0; i < n; i++) x[i] = (float)(sd * attn_rng_normal(&rng));
  } else {
    double *x = dst;
    for (int64_t i = 0; i < n; i++) x[i] = sd * attn_rng_normal(&rng);
  }
}

attn_status attn_lowrank_plan_init(struct attn_plan *p) {
  attn_context *ctx = p->ctx;
  const attn_dims *d = &p->dims;
  const attn_desc *desc = &p->desc;
  attn_status st;
  if (desc->mask.key_lengths != NULL) {
    if (desc->mask.n_key_lengths != d->B)
      return attn_fail(ctx, ATTN_ERR_SHAPE, "key_lengths: %" PRId64 " lengths given, batch is %" PRId64,
                       desc->mask.n_key_lengths, d->B);
    for (int64_t b = 0; b < d->B; b++)
      if (desc->mask.key_lengths[b] < 0 || desc->mask.key_lengths[b] > d->Sk)
        return attn_fail(ctx, ATTN_ERR_INVALID_ARG,
                         "key_lengths: lengths[%" PRId64 "] = %" PRId64 " is outside [0, S_k = %" PRId64 "]",
                         b, desc->mask.key_lengths[b], d->Sk);
  }
  int64_t k = 0;
  const bool seeded = desc->lowrank.e == NULL;
  if (seeded) {
    if (desc->lowrank.rank < 1)
      return attn_fail(ctx, ATTN_ERR_INVALID_ARG,
                       "rank: Linformer needs k from attn_desc_set_lowrank() or projections "
                       "from attn_desc_set_lowrank_proj()");
    k = desc->lowrank.rank;
  } else if ((st = check_proj(p, &k)) != ATTN_OK) {
    return st;
  }
  if (k > d->Sk)
    return attn_fail(ctx, ATTN_ERR_INVALID_ARG,
                     "rank: k = %" PRId64 " exceeds S_k = %" PRId64
                     " (Linformer projects the keys to k ≤ S_k rows)", k, d->Sk);
  for (int i = 0; i < 3; i++)
    if (p->meta[1 + i].strides[2] > INT_MAX || (i == 0 && d->Sk > INT_MAX))
      return attn_fail(ctx, ATTN_ERR_UNSUPPORTED, "%s: sizes exceed what BLAS takes (INT_MAX)",
                       (const char *const[]){"k", "v", "out"}[i]);

  lowrank_impl *im = attn_plan_impl_alloc(p, sizeof *im);
  if (im == NULL) return ATTN_ERR_NO_MEMORY;
  im->k = k;
  im->seeded = seeded;
  const size_t es = attn_dtype_size(d->dtype);
  attn_carver sh = attn_carver_start();
  im->kp_at = attn_carve(&sh, es, d->B * d->Hkv, k, d->Dk);
  im->vp_at = attn_carve(&sh, es, d->B * d->Hkv, k, d->Dv);
  im->len_at = attn_carve(&sh, sizeof(int64_t), d->B, 1, 1);
  im->ex_at = (size_t)sh.bytes;
  attn_carver efc = attn_carver_start();
  if (seeded) {
    attn_carve(&efc, es, k, d->Sk, 1);
    attn_carve(&efc, es, k, d->Sk, 1);
  }
  if (!sh.ok || !efc.ok)
    return attn_fail(ctx, ATTN_ERR_OVERFLOW, "rank: the projected K', V' for k = %" PRId64
                     " overflow", k);

  /* The inner attention: q on (K', V'), no causal/window/dense masks (the
   * table rejects them), query lengths and softcap carry over; the caller's
   * key lengths become per-execute inner lengths (k or 0). */
  attn_desc inner = *desc;
  inner.variant = ATTN_VARIANT_EXACT;
  inner.mask.key_lengths = NULL;
  inner.mask.n_key_lengths = 0;
  const attn_dims idims = {d->dtype, d->B, d->H, d->Hkv, d->Sq, k, d->Dq, d->Dk, d->Dv};
  const attn_mask_geom g = attn_mask_geom_of(&inner, d->dtype, d->B, d->H, d->Sq, k);
  if ((st = attn_mask_init(&im->ex.mask, ctx, &inner, &g)) != ATTN_OK ||
      (st = attn_exact_setup(&im->ex, ctx, &inner, &idims, p->scale, 0, 0)) != ATTN_OK)
    return st;
  if (!attn_add_ok(sh.bytes, (int64_t)im->ex.shared_bytes, &sh.bytes))
    return attn_fail(ctx, ATTN_ERR_OVERFLOW, "rank: workspace size overflows");
  p->ws_shared = (size_t)sh.bytes;
  p->ws_slot = im->ex.slot_bytes;
  if (seeded) {
    im->ef_bytes = (size_t)efc.bytes;
    im->ef = attn_alloc(ctx, im->ef_bytes);
    if (im->ef == NULL)
      return attn_fail(ctx, ATTN_ERR_NO_MEMORY,
                       "attn_plan_create: cannot allocate %zu bytes of projections", im->ef_bytes);
    draw_proj(p, im, 1, im->ef);
    draw_proj(p, im, 2, (char *)im->ef + im->ef_bytes / 2);
  }
  return ATTN_OK;
}

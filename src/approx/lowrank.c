/* Linformer: K' = E·K, V' = F·V with E, F ∈ R^{k×S_k} (per batch item and
 * key/value head, over the first k_len_b key positions when key lengths are
 * set), then exact attention of q on (K', V') through the exact kernel, run
 * directly on views of the workspace that holds K' and V' (no inner plan).
 * Cost O(S·k·d) instead of O(S_q·S_k·d). */
#include <inttypes.h>
#include <limits.h>
#include <math.h>
#include <string.h>

#include "approx/lowrank.h"
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
  char *kp, *vp; /* K', V' [B, H_kv, k, d] */
  const attn_tensor *k, *v;
  /* The backward's way back (attn_lowrank_unproject): dK', dV' and the
   * outputs dk, dv, dE, dF (dE/dF NULL: not wanted). */
  const char *dkp, *dvp;
  attn_tensor *dk, *dv, *de, *df;
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
  char *kp = a->kp + (size_t)((b * d->Hkv + kh) * im->k * d->Dk) * es;
  char *vp = a->vp + (size_t)((b * d->Hkv + kh) * im->k * d->Dv) * es;
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

/* Borrowed key lengths may have changed since the plan: re-check them, then
 * the inner lengths (k for an item with keys, 0 without) and K', V'. */
attn_status attn_lowrank_project(const attn_plan *p, attn_context *ctx, const attn_tensor *k,
                                 const attn_tensor *v, void *kp, void *vp, int64_t *inner_len) {
  const lowrank_impl *im = p->impl;
  const attn_dims *d = &p->dims;
  const int64_t *klen = p->desc.mask.key_lengths;
  if (klen != NULL) {
    for (int64_t b = 0; b < d->B; b++)
      if (klen[b] < 0 || klen[b] > d->Sk)
        return attn_fail(ctx, ATTN_ERR_INVALID_ARG,
                         "key_lengths: lengths[%" PRId64 "] = %" PRId64 " is outside [0, S_k = %" PRId64 "]",
                         b, klen[b], d->Sk);
    /* An item whose keys are all padding keeps no projected key either, so
     * its rows give out 0 and lse −inf like any row with no kept key. */
    for (int64_t b = 0; b < d->B; b++) inner_len[b] = klen[b] > 0 ? im->k : 0;
  }
  lowrank_args a = {.plan = p, .kp = kp, .vp = vp, .k = k, .v = v};
  return attn_parallel_for(ctx, d->B * d->Hkv, lowrank_task, &a);
}

/* dk = Eᵀ dK', dv = Fᵀ dV' for (b, kv head) t: the item's key rows; rows
 * past its key length get 0. */
static void unproject_task(void *argp, int64_t t, int32_t thread) {
  (void)thread;
  const lowrank_args *a = argp;
  const attn_plan *p = a->plan;
  const attn_dims *d = &p->dims;
  const lowrank_impl *im = p->impl;
  const attn_dtype_traits *tr = attn_dtype_info(d->dtype);
  const size_t es = tr->size;
  const int64_t b = t / d->Hkv, kh = t % d->Hkv;
  const int64_t klen = p->desc.mask.key_lengths ? p->desc.mask.key_lengths[b] : d->Sk;
  attn_tensor *const outs[2] = {a->dk, a->dv};
  const char *const grads[2] = {a->dkp, a->dvp};
  const int64_t cols[2] = {d->Dk, d->Dv};
  for (int w = 0; w < 2; w++) {
    int64_t ldp;
    const void *P = proj_for(p, w == 0 ? p->desc.lowrank.e : p->desc.lowrank.f, w, kh, &ldp);
    attn_tensor *o = outs[w];
    char *dst = (char *)o->data + (size_t)attn_off4(o, b, kh, 0, 0) * es;
    const char *g = grads[w] + (size_t)((b * d->Hkv + kh) * im->k * cols[w]) * es;
    if (klen > 0)
      tr->gemm(true, false, klen, cols[w], im->k, 1.0, P, ldp, g, cols[w], 0.0, dst,
               o->strides[2]);
    for (int64_t r = klen; r < d->Sk; r++)
      memset(dst + (size_t)(r * o->strides[2]) * es, 0, (size_t)cols[w] * es);
  }
}

/* Rows of dE/dF one task owns. */
#define LOWRANK_GROWS 16

/* dE = Σ dK' Kᵀ and dF = Σ dV' Vᵀ, rows [r0, r0 + 16) of the projection of
 * kv head kh (or of the shared [k, S_k] projection: every kv head), summed
 * over (b, kv head) in order over each item's key columns. */
static void projgrad_task(void *argp, int64_t t, int32_t thread) {
  (void)thread;
  const lowrank_args *a = argp;
  const attn_plan *p = a->plan;
  const attn_dims *d = &p->dims;
  const lowrank_impl *im = p->impl;
  const attn_dtype_traits *tr = attn_dtype_info(d->dtype);
  const size_t es = tr->size;
  const bool per_head = a->de->rank == 3;
  const int64_t nrb = attn_cdiv64(im->k, LOWRANK_GROWS);
  const int64_t kh0 = per_head ? t / nrb : 0, nkh = per_head ? 1 : d->Hkv;
  const int64_t r0 = (t % nrb) * LOWRANK_GROWS, nr = attn_min64(LOWRANK_GROWS, im->k - r0);
  attn_tensor *const outs[2] = {a->de, a->df};
  const attn_tensor *const ins[2] = {a->k, a->v};
  const char *const grads[2] = {a->dkp, a->dvp};
  const int64_t cols[2] = {d->Dk, d->Dv};
  for (int w = 0; w < 2; w++) {
    attn_tensor *o = outs[w];
    const int64_t ldo = o->strides[o->rank - 2];
    char *dst = (char *)o->data + (size_t)((per_head ? kh0 * o->strides[0] : 0) + r0 * ldo) * es;
    for (int64_t r = 0; r < nr; r++) memset(dst + (size_t)(r * ldo) * es, 0, (size_t)d->Sk * es);
    for (int64_t b = 0; b < d->B; b++) {
      const int64_t klen = p->desc.mask.key_lengths ? p->desc.mask.key_lengths[b] : d->Sk;
      for (int64_t kh = kh0; klen > 0 && kh < kh0 + nkh; kh++) {
        const attn_tensor *x = ins[w];
        const char *X = (const char *)x->data + (size_t)attn_off4(x, b, kh, 0, 0) * es;
        const char *g = grads[w] + (size_t)(((b * d->Hkv + kh) * im->k + r0) * cols[w]) * es;
        tr->gemm(false, true, nr, klen, cols[w], 1.0, g, cols[w], X, x->strides[2], 1.0, dst, ldo);
      }
    }
  }
}

attn_status attn_lowrank_unproject(const attn_plan *p, attn_context *ctx, const attn_tensor *k,
                                   const attn_tensor *v, const void *dkp, const void *dvp,
                                   attn_tensor *dk, attn_tensor *dv, attn_tensor *de,
                                   attn_tensor *df) {
  const lowrank_impl *im = p->impl;
  const attn_dims *d = &p->dims;
  lowrank_args a = {.plan = p, .k = k, .v = v, .dkp = dkp, .dvp = dvp,
                    .dk = dk, .dv = dv, .de = de, .df = df};
  attn_status st = attn_parallel_for(ctx, d->B * d->Hkv, unproject_task, &a);
  if (st != ATTN_OK || de == NULL) return st;
  const int64_t tasks = (de->rank == 3 ? d->Hkv : 1) * attn_cdiv64(im->k, LOWRANK_GROWS);
  return attn_parallel_for(ctx, tasks, projgrad_task, &a);
}

attn_status attn_lowrank_plan_execute(const attn_plan *p, const attn_run *run,
                                      const attn_tensor *q, const attn_tensor *k,
                                      const attn_tensor *v, attn_tensor *out,
                                      attn_tensor *weights, attn_tensor *lse) {
  (void)weights;
  const lowrank_impl *im = p->impl;
  const attn_dims *d = &p->dims;
  attn_context *ctx = run->ctx;
  int64_t *inner_len = p->desc.mask.key_lengths != NULL
                           ? (int64_t *)(void *)(run->ws.shared + im->len_at)
                           : NULL;
  attn_status st = attn_lowrank_project(p, ctx, k, v, run->ws.shared + im->kp_at,
                                        run->ws.shared + im->vp_at, inner_len);
  if (st != ATTN_OK) return st;
  attn_mask mask = im->ex.mask;
  attn_mask_bind(&mask, &p->desc);
  mask.key_len = inner_len; /* the caller's lengths are applied by the projection */
  if ((st = attn_mask_check(&mask, ctx)) != ATTN_OK) return st;
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

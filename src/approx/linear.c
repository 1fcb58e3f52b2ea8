/* Linear attention: out_i = φ(q_i)ᵀ (Σ_j φ(k_j) v_jᵀ) / φ(q_i)ᵀ (Σ_j φ(k_j)),
 * the sums over the keys row i keeps (key lengths, causal), with
 *  - ATTN_VARIANT_LINEAR_ELU: φ(x) = elu(x) + 1 elementwise (m = d_k);
 *  - ATTN_VARIANT_PERFORMER: FAVOR+ positive orthogonal random features,
 *    φ(x)_i = exp(ω_i·x' − |x'|²/2)/√m, x' = √scale·x, which estimates
 *    exp(scale·q·k) without bias, i.e. softmax attention.
 * Cost O(S·m·(d_k + d_v)): two GEMMs non-causal, chunked prefix sums causal
 * (per chunk of C rows: masked C×C product, φ(Q_c)·state, state update). */
#include <inttypes.h>
#include <limits.h>
#include <math.h>
#include <string.h>

#include "approx/linear.h"
#include "approx/rng.h"
#include "blas/gemm.h"
#include "kernels/vmath.h"
#include "mask/mask.h"

typedef struct linear_impl {
  attn_mask mask;     /* key/query lengths and the causal offset */
  bool favor;
  int64_t m;          /* features (d_k for elu+1) */
  int64_t C;          /* chunk rows */
  int64_t Dv1;        /* d_v + 1: V augmented with a ones column */
  /* Performer: the drawn W (f64, m × d_k) and W·√scale in the plan dtype;
   * plan-owned (attn_plan_redraw_features rewrites them, executes read). */
  void *w64, *wt;
  size_t w64_bytes, wt_bytes;
  struct { /* byte offsets in a thread's slot */
    size_t Sa, Qf, Kf, A, Va, Oa, hn;
  } at;
  /* The backward's slot (attn_linear_bwd_run), laid out at plan time,
   * allocated by the backward plan: bwd_slot bytes. */
  struct {
    size_t Sa, R, Qf, Kf, dQf, dKf, A, A2, Va, Oa, GA, dVa, hn, den, Mc;
  } bat;
  size_t bwd_slot;
  bool bwd_ok; /* the slot's size did not overflow */
} linear_impl;

typedef struct linear_args {
  const attn_plan *plan;
  const attn_mask *mask; /* bound for this execute */
  attn_ws ws;
  const attn_tensor *q, *k, *v;
  attn_tensor *out;
} linear_args;

typedef struct linear_bwd_args {
  const attn_plan *plan;
  const attn_mask *mask; /* bound for this execute */
  attn_ws ws;
  const attn_tensor *q, *k, *v, *out, *dout;
  attn_tensor *dq, *dk, *dv;
} linear_bwd_args;

/* ---- FAVOR+ projection -------------------------------------------------------- */

static double dot64(const double *a, const double *b, int64_t n) {
  double s = 0;
  for (int64_t i = 0; i < n; i++) s += a[i] * b[i];
  return s;
}

void attn_favor_draw(uint64_t seed, int64_t m, int64_t d, double *w) {
  attn_rng rng;
  attn_rng_seed(&rng, seed, 0x4641564F52ULL /* "FAVOR" */);
  for (int64_t r0 = 0; r0 < m; r0 += d) {
    const int64_t nr = attn_min64(d, m - r0);
    for (int64_t i = r0; i < r0 + nr; i++) {
      double *wi = w + i * d;
      for (;;) {
        for (int64_t x = 0; x < d; x++) wi[x] = attn_rng_normal(&rng);
        const double n0 = sqrt(dot64(wi, wi, d));
        /* Gram–Schmidt against the block's earlier rows, twice ("twice is
         * enough") so the rows stay orthogonal to rounding for any d. */
        for (int pass = 0; pass < 2; pass++)
          for (int64_t j = r0; j < i; j++) {
            const double *wj = w + j * d;
            const double c = dot64(wi, wj, d);
            for (int64_t x = 0; x < d; x++) wi[x] -= c * wj[x];
          }
        const double nn = sqrt(dot64(wi, wi, d));
        if (nn > 1e-6 * n0) { /* else (probability ~0) draw this row again */
          for (int64_t x = 0; x < d; x++) wi[x] /= nn;
          break;
        }
      }
    }
    /* χ_d norms: |g| for independent g ~ N(0, I_d). */
    for (int64_t i = r0; i < r0 + nr; i++) {
      double ss = 0;
      for (int64_t x = 0; x < d; x++) {
        const double g = attn_rng_normal(&rng);
        ss += g * g;
      }
      const double norm = sqrt(ss);
      for (int64_t x = 0; x < d; x++) w[i * d + x] *= norm;
    }
  }
}

/* ---- kernels -------------------------------------------------------------------- */

#define ATTN_TMPL_FILE "approx/linear_impl.inc"
#include "core/tmpl.h"

/* ---- plan ----------------------------------------------------------------------- */

attn_status attn_linear_plan_execute(const attn_plan *p, const attn_run *run,
                                     const attn_tensor *q, const attn_tensor *k,
                                     const attn_tensor *v, attn_tensor *out,
                                     attn_tensor *weights, attn_tensor *lse) {
  (void)weights;
  (void)lse;
  const linear_impl *im = p->impl;
  attn_mask mask = im->mask;
  attn_mask_bind(&mask, &p->desc);
  attn_status st = attn_mask_check(&mask, run->ctx); /* borrowed lengths may have changed */
  if (st != ATTN_OK) return st;
  linear_args a = {p, &mask, run->ws, q, k, v, out};
  return attn_parallel_for(run->ctx, p->dims.B * p->dims.H,
                           p->dims.dtype == ATTN_DTYPE_F32 ? linear_task_f32 : linear_task_f64, &a);
}

static void linear_draw(attn_plan *p, uint64_t seed) {
  linear_impl *im = p->impl;
  attn_favor_draw(seed, im->m, p->dims.Dk, im->w64);
  if (p->dims.dtype == ATTN_DTYPE_F32)
    linear_convert_w_f32(p, im);
  else
    linear_convert_w_f64(p, im);
}

attn_status attn_performer_redraw(attn_plan *p, uint64_t seed) {
  attn_clear_error(p->ctx);
  linear_draw(p, seed);
  return ATTN_OK;
}

void attn_linear_plan_destroy(attn_plan *p) {
  linear_impl *im = p->impl;
  attn_free(p->ctx, im->w64, im->w64_bytes);
  attn_free(p->ctx, im->wt, im->wt_bytes);
}

attn_status attn_linear_plan_init(struct attn_plan *p) {
  attn_context *ctx = p->ctx;
  const attn_dims *d = &p->dims;
  const bool favor = p->desc.variant == ATTN_VARIANT_PERFORMER;
  const int64_t m = favor ? (p->desc.features.count > 0 ? p->desc.features.count
                                                         : ATTN_PERFORMER_DEFAULT_FEATURES)
                          : d->Dk;
  /* BLAS takes int dimensions and leading dimensions. */
  for (int i = 0; i < 4; i++)
    if (p->meta[i].strides[2] > INT_MAX)
      return attn_fail(ctx, ATTN_ERR_UNSUPPORTED, "%s: row stride %" PRId64 " exceeds INT_MAX",
                       (const char *const[]){"q", "k", "v", "out"}[i], p->meta[i].strides[2]);
  if (m > INT_MAX / 2)
    return attn_fail(ctx, ATTN_ERR_INVALID_ARG, "num_features: %" PRId64 " is too large", m);

  linear_impl *im = attn_plan_impl_alloc(p, sizeof *im);
  if (im == NULL) return ATTN_ERR_NO_MEMORY;
  const attn_mask_geom g = attn_mask_geom_of(&p->desc, d->dtype, d->B, d->H, d->Sq, d->Sk);
  attn_status st = attn_mask_init(&im->mask, ctx, &p->desc, &g);
  if (st != ATTN_OK) return st;
  im->favor = favor;
  im->m = m;
  im->C = ATTN_LINEAR_CHUNK;
  im->Dv1 = d->Dv + 1;

  /* A slot holds Sₐ (m × (d_v+1)), φ(Q_c), φ(K_c) (C × m each), the C×C
   * intra product, Vₐ and Oₐ (C × (d_v+1)) and C key norms. */
  const size_t es = attn_dtype_size(d->dtype);
  const int64_t C = im->C, Dv1 = im->Dv1;
  attn_carver c = attn_carver_start();
  im->at.Sa = attn_carve(&c, es, m, Dv1, 1);
  im->at.Qf = attn_carve(&c, es, C, m, 1);
  im->at.Kf = attn_carve(&c, es, C, m, 1);
  im->at.A = attn_carve(&c, es, C, C, 1);
  im->at.Va = attn_carve(&c, es, C, Dv1, 1);
  im->at.Oa = attn_carve(&c, es, C, Dv1, 1);
  im->at.hn = attn_carve(&c, es, C, 1, 1);
  /* The backward's slot: Sₐ and R (m × (d_v+1)), φ(Q_c), φ(K_c) and their
   * gradients (C × m), two C×C products, Vₐ, Oₐ, gₐ, dVₐ (C × (d_v+1)), C
   * key norms, den for every query row, and (causal) the FAVOR+ key
   * stabiliser of the prefix and of every chunk. */
  attn_carver bc = attn_carver_start();
  im->bat.Sa = attn_carve(&bc, es, m, Dv1, 1);
  im->bat.R = attn_carve(&bc, es, m, Dv1, 1);
  im->bat.Qf = attn_carve(&bc, es, C, m, 1);
  im->bat.Kf = attn_carve(&bc, es, C, m, 1);
  im->bat.dQf = attn_carve(&bc, es, C, m, 1);
  im->bat.dKf = attn_carve(&bc, es, C, m, 1);
  im->bat.A = attn_carve(&bc, es, C, C, 1);
  im->bat.A2 = attn_carve(&bc, es, C, C, 1);
  im->bat.Va = attn_carve(&bc, es, C, Dv1, 1);
  im->bat.Oa = attn_carve(&bc, es, C, Dv1, 1);
  im->bat.GA = attn_carve(&bc, es, C, Dv1, 1);
  im->bat.dVa = attn_carve(&bc, es, C, Dv1, 1);
  im->bat.hn = attn_carve(&bc, es, C, 1, 1);
  im->bat.den = attn_carve(&bc, es, d->Sq, 1, 1);
  im->bat.Mc = attn_carve(&bc, es, attn_cdiv64(d->Sq, C) + 1, 1, 1);
  im->bwd_ok = bc.ok;
  im->bwd_slot = bc.ok ? (size_t)bc.bytes : 0;
  attn_carver w = attn_carver_start();
  if (favor) {
    attn_carve(&w, sizeof(double), m, d->Dk, 1);
    im->w64_bytes = (size_t)w.bytes;
    attn_carve(&w, es, m, d->Dk, 1);
    im->wt_bytes = (size_t)w.bytes - im->w64_bytes;
  }
  int64_t total;
  if (!c.ok || !w.ok || !attn_mul_ok(c.bytes, ctx->num_threads, &total))
    return attn_fail(ctx, ATTN_ERR_OVERFLOW,
                     "num_features: the workspace for m = %" PRId64 " features overflows", m);
  p->ws_slot = (size_t)c.bytes;
  if (favor) {
    im->w64 = attn_alloc(ctx, im->w64_bytes);
    im->wt = attn_alloc(ctx, im->wt_bytes);
    if (im->w64 == NULL || im->wt == NULL)
      return attn_fail(ctx, ATTN_ERR_NO_MEMORY,
                       "attn_plan_create: cannot allocate the %" PRId64 " x %" PRId64
                       " feature matrix", m, d->Dk);
    linear_draw(p, p->desc.features.seed);
  }
  return ATTN_OK;
}

/* ---- backward ---------------------------------------------------------------- */

attn_status attn_linear_bwd_slot(const attn_plan *p, size_t *slot_bytes) {
  const linear_impl *im = p->impl;  if (!im->bwd_ok)
    return attn_fail(p->ctx, ATTN_ERR_OVERFLOW, "dq: the linear backward's workspace overflows");
  *slot_bytes = im->bwd_slot;
  return ATTN_OK;
}

attn_status attn_linear_bwd_run(const attn_plan *p, attn_context *ctx, const attn_ws *ws,
                                const attn_tensor *q, const attn_tensor *k, const attn_tensor *v,
                                const attn_tensor *out, const attn_tensor *dout, attn_tensor *dq,
                                attn_tensor *dk, attn_tensor *dv) {
  const linear_impl *im = p->impl;
  attn_mask mask = im->mask;
  attn_mask_bind(&mask, &p->desc);
  attn_status st = attn_mask_check(&mask, ctx); /* borrowed lengths may have changed */
  if (st != ATTN_OK) return st;
  linear_bwd_args a = {p, &mask, *ws, q, k, v, out, dout, dq, dk, dv};
  return attn_parallel_for(ctx, p->dims.B * p->dims.Hkv,
                           p->dims.dtype == ATTN_DTYPE_F32 ? linear_bwd_task_f32
                                                           : linear_bwd_task_f64,
                           &a);
}

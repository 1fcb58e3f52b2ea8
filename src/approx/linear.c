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
  size_t wt_bytes_off;    /* Performer: W·√scale in the plan dtype, m × d_k */
  size_t slots_bytes_off; /* per-thread slots */
  size_t slot_elems;
} linear_impl;

typedef struct linear_args {
  const attn_plan *plan;
  const attn_tensor *q, *k, *v;
  attn_tensor *out;
} linear_args;

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

static inline size_t round16(int64_t n) { return (size_t)((n + 15) / 16 * 16); }
#define round16_f32 round16
#define round16_f64 round16

#define T float
#define SUFFIX f32
#define GEMM attn_sgemm
#define VMAX(x, n) attn_vmath_get()->max_f32((x), (n))
#define VEXPSUM(x, n, mx) attn_vmath_get()->exp_sub_sum_f32((x), (n), (mx))
#define EXP expf
#include "approx/linear_impl.inc"
#undef T
#undef SUFFIX
#undef GEMM
#undef VMAX
#undef VEXPSUM
#undef EXP

#define T double
#define SUFFIX f64
#define GEMM attn_dgemm
#define VMAX(x, n) attn_max_f64((x), (n))
#define VEXPSUM(x, n, mx) attn_exp_sub_sum_f64((x), (n), (mx))
#define EXP exp
#include "approx/linear_impl.inc"
#undef T
#undef SUFFIX
#undef GEMM
#undef VMAX
#undef VEXPSUM
#undef EXP

/* ---- plan ----------------------------------------------------------------------- */

static attn_status linear_execute(attn_plan *p, const attn_tensor *q, const attn_tensor *k,
                                  const attn_tensor *v, attn_tensor *out, attn_tensor *weights,
                                  attn_tensor *lse) {
  (void)weights;
  (void)lse;
  linear_impl *im = p->impl;
  attn_mask_bind(&im->mask, &p->desc);
  attn_status st = attn_mask_check(&im->mask, p->ctx); /* borrowed lengths may have changed */
  if (st != ATTN_OK) return st;
  linear_args a = {p, q, k, v, out};
  return attn_parallel_for(p->ctx, p->B * p->H,
                           p->dtype == ATTN_DTYPE_F32 ? linear_task_f32 : linear_task_f64, &a);
}

static void linear_draw(attn_plan *p, uint64_t seed) {
  const linear_impl *im = p->impl;
  attn_favor_draw(seed, im->m, p->Dk, (double *)p->workspace);
  if (p->dtype == ATTN_DTYPE_F32)
    linear_convert_w_f32(p);
  else
    linear_convert_w_f64(p);
}

static attn_status performer_redraw(attn_plan *p, uint64_t seed) {
  attn_clear_error(p->ctx);
  linear_draw(p, seed);
  return ATTN_OK;
}

static const attn_plan_ops elu_ops = {"linear_elu", linear_execute, NULL, NULL, NULL};
static const attn_plan_ops performer_ops = {"performer", linear_execute, NULL, NULL,
                                            performer_redraw};

/* Options that have no meaning once softmax is replaced by a feature map. */
static attn_status check_options(attn_plan *p, const char *vname) {
  attn_context *ctx = p->ctx;
  const attn_desc *d = &p->desc;
  const bool favor = d->variant == ATTN_VARIANT_PERFORMER;
  if (d->score != ATTN_SCORE_SCALED_DOT && d->score != ATTN_SCORE_DOT)
    return attn_fail(ctx, ATTN_ERR_UNSUPPORTED,
                     "score: %s supports only the (scaled) dot-product score", vname);
  if (!favor && d->scale > 0.0)
    return attn_fail(ctx, ATTN_ERR_UNSUPPORTED,
                     "scale: %s uses φ(q)·φ(k) with φ = elu + 1 and no score scale", vname);
  if (d->bool_mask != NULL)
    return attn_fail(ctx, ATTN_ERR_UNSUPPORTED,
                     "bool_mask: %s never forms the S_q×S_k scores a dense mask applies to "
                     "(use key lengths or causal)", vname);
  if (d->add_mask != NULL)
    return attn_fail(ctx, ATTN_ERR_UNSUPPORTED,
                     "additive_mask: %s never forms the S_q×S_k scores an additive mask applies to",
                     vname);
  if (d->alibi != NULL)
    return attn_fail(ctx, ATTN_ERR_UNSUPPORTED, "alibi: %s cannot add a position bias", vname);
  if (d->softcap > 0.0)
    return attn_fail(ctx, ATTN_ERR_UNSUPPORTED, "softcap: %s has no logits to cap", vname);
  if (d->win_left != ATTN_WINDOW_UNBOUNDED || d->win_right != ATTN_WINDOW_UNBOUNDED)
    return attn_fail(ctx, ATTN_ERR_UNSUPPORTED,
                     "window: %s supports causal and key lengths, not a sliding window", vname);
  if (p->meta[4].present)
    return attn_fail(ctx, ATTN_ERR_UNSUPPORTED,
                     "weights: %s does not form the S_q×S_k weights (pass NULL)", vname);
  if (p->meta[5].present)
    return attn_fail(ctx, ATTN_ERR_UNSUPPORTED,
                     "lse: %s has no softmax log-sum-exp (pass NULL)", vname);
  return ATTN_OK;
}

attn_status attn_linear_plan_init(struct attn_plan *p) {
  attn_context *ctx = p->ctx;
  const bool favor = p->desc.variant == ATTN_VARIANT_PERFORMER;
  const char *vname = favor ? "Performer (FAVOR+) attention" : "linear elu+1 attention";
  attn_status st = check_options(p, vname);
  if (st != ATTN_OK) return st;

  const int64_t m = favor ? (p->desc.features > 0 ? p->desc.features : ATTN_PERFORMER_DEFAULT_FEATURES)
                          : p->Dk;
  /* BLAS takes int dimensions and leading dimensions. */
  for (int i = 0; i < 4; i++)
    if (p->meta[i].strides[2] > INT_MAX)
      return attn_fail(ctx, ATTN_ERR_UNSUPPORTED, "%s: row stride %" PRId64 " exceeds INT_MAX",
                       (const char *const[]){"q", "k", "v", "out"}[i], p->meta[i].strides[2]);
  if (m > INT_MAX / 2)
    return attn_fail(ctx, ATTN_ERR_INVALID_ARG, "num_features: %" PRId64 " is too large", m);

  linear_impl *im = attn_calloc(ctx, sizeof *im);
  if (im == NULL) return attn_fail(ctx, ATTN_ERR_NO_MEMORY, "attn_plan_create: out of memory");
  if ((st = attn_mask_init(&im->mask, p)) != ATTN_OK) {
    attn_free(ctx, im, sizeof *im);
    return st;
  }
  im->favor = favor;
  im->m = m;
  im->C = ATTN_LINEAR_CHUNK;
  im->Dv1 = p->Dv + 1;

  /* Workspace: [W (f64, m × d_k)] [W·√scale (dtype)] [slots × threads]; a slot
   * holds Sₐ (m × (d_v+1)), φ(Q_c), φ(K_c) (C × m each), the C×C intra
   * product, Vₐ and Oₐ (C × (d_v+1)) and C key norms. */
  const size_t es = attn_dtype_size(p->dtype);
  const int64_t C = im->C, Dv1 = im->Dv1;
  int64_t parts[7] = {0, C * m, C * m, C * C, C * Dv1, C * Dv1, C}; /* C·m: m < 2^30 */
  int64_t slot = 0, w_elems = 0, slots_total = 0, total_bytes = 0;
  int64_t wbytes64 = 0, wbytesT = 0, slots_bytes = 0;
  bool ok = attn_mul_ok(m, Dv1, &parts[0]) && attn_mul_ok(m, p->Dk, &w_elems);
  for (int i = 0; ok && i < 7; i++) ok = attn_add_ok(slot, (parts[i] + 15) / 16 * 16, &slot);
  ok = ok && attn_mul_ok(slot, ctx->num_threads, &slots_total) &&
       attn_mul_ok(slots_total, (int64_t)es, &slots_bytes);
  if (ok && favor)
    ok = attn_mul_ok(w_elems, 8, &wbytes64) &&
         attn_mul_ok((w_elems + 15) / 16 * 16, (int64_t)es, &wbytesT);
  ok = ok && attn_add_ok(wbytes64, wbytesT, &total_bytes) &&
       attn_add_ok(total_bytes, slots_bytes, &total_bytes) && (uint64_t)total_bytes <= SIZE_MAX;
  if (!ok) {
    attn_free(ctx, im, sizeof *im);
    return attn_fail(ctx, ATTN_ERR_OVERFLOW,
                     "num_features: the workspace for m = %" PRId64 " features overflows", m);
  }
  im->wt_bytes_off = (size_t)wbytes64;
  im->slots_bytes_off = (size_t)(wbytes64 + wbytesT);
  im->slot_elems = (size_t)slot;
  p->workspace = attn_alloc(ctx, (size_t)total_bytes);
  if (p->workspace == NULL) {
    attn_free(ctx, im, sizeof *im);
    return attn_fail(ctx, ATTN_ERR_NO_MEMORY,
                     "attn_plan_create: cannot allocate %" PRId64 " bytes of workspace", total_bytes);
  }
  p->workspace_bytes = (size_t)total_bytes;
  p->impl = im;
  p->impl_bytes = sizeof *im;
  p->ops = favor ? &performer_ops : &elu_ops;
  if (favor) linear_draw(p, p->desc.feature_seed);
  return ATTN_OK;
}

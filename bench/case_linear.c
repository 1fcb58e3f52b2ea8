/* attn-bench cases for the O(S) approximations: linear_elu, performer,
 * linformer. Each times one execute of the variant's plan and reports its
 * error against exact softmax attention on the same inputs.
 *
 * Error reference: for S_q·S_k ≤ 4096² the whole output is compared with
 * bench_exact_into(); above that exact attention is O(S²) minutes on a small
 * machine, so the error is measured on the last ERR_ROWS query rows (those
 * that see the most keys when causal), against an exact plan run on just
 * those rows (bottom-right alignment keeps their causal keys). extra =
 * exact_ms / ms (speed-up over exact, the crossover) while exact is cheap
 * enough to time (S_q·S_k ≤ 8192²), else not reported.
 *
 * Linformer's E and F are the segment-mean projections (row r averages the
 * keys of the r-th of k equal segments), given through
 * attn_desc_set_lowrank_proj(): the seeded N(0, 1/k) init is an untrained
 * starting point whose output is not an approximation of anything (its
 * "error" would be ~100× the output), while pooling is a meaningful
 * untrained low-rank approximation. The cost is the same GEMMs either way. */
#include <stdio.h>
#include <string.h>

#include "bench.h"

#define ERR_ROWS 256
#define FULL_ERR_LIMIT (4096.0 * 4096.0)
#define SPEEDUP_LIMIT (8192.0 * 8192.0)

static int fail(attn_context *ctx, const char *what) {
  fprintf(stderr, "%s: %s\n", what, attn_context_last_error(ctx));
  return 1;
}

/* Copy rows [r0, r0+n) of a contiguous [B,H,S,D] tensor into a new contiguous tensor. */
static attn_tensor *row_slice(attn_context *ctx, const attn_tensor *t, int64_t r0, int64_t n) {
  const int64_t B = attn_tensor_dim(t, 0), H = attn_tensor_dim(t, 1), S = attn_tensor_dim(t, 2);
  const int64_t D = attn_tensor_dim(t, 3);
  const size_t es = attn_tensor_dtype(t) == ATTN_DTYPE_F64 ? 8 : 4;
  const int64_t shape[4] = {B, H, n, D};
  attn_tensor *s = NULL;
  if (attn_tensor_create(ctx, attn_tensor_dtype(t), 4, shape, &s) != ATTN_OK) return NULL;
  for (int64_t bh = 0; bh < B * H; bh++)
    memcpy((char *)attn_tensor_data(s) + (size_t)(bh * n * D) * es,
           (const char *)attn_tensor_data(t) + (size_t)((bh * S + r0) * D) * es,
           (size_t)(n * D) * es);
  return s;
}

/* Error of `out` against exact attention (see the header comment). */
static int error_vs_exact(attn_context *ctx, const bench_opts *o, const attn_tensor *q,
                          const attn_tensor *k, const attn_tensor *v, const attn_tensor *out,
                          bench_result *r) {
  int rc = 1;
  if ((double)o->Sq * (double)o->Sk <= FULL_ERR_LIMIT) {
    attn_tensor *want = NULL;
    const int64_t shape[4] = {o->B, o->H, o->Sq, o->D};
    if (attn_tensor_create(ctx, o->dtype, 4, shape, &want) != ATTN_OK) return fail(ctx, "exact out");
    if (bench_exact_into(ctx, o->causal, q, k, v, want) == 0) {
      bench_rel_error(out, want, &r->max_err, &r->mean_err);
      r->has_err = true;
      rc = 0;
    }
    attn_tensor_destroy(want);
    return rc;
  }
  const int64_t n = o->Sq < ERR_ROWS ? o->Sq : ERR_ROWS, r0 = o->Sq - n;
  attn_tensor *qs = row_slice(ctx, q, r0, n), *got = row_slice(ctx, out, r0, n), *want = NULL;
  const int64_t shape[4] = {o->B, o->H, n, o->D};
  attn_desc *d = NULL;
  if (qs && got && attn_tensor_create(ctx, o->dtype, 4, shape, &want) == ATTN_OK &&
      attn_desc_create(ctx, &d) == ATTN_OK &&
      attn_desc_set_causal(d, o->causal ? ATTN_CAUSAL_BOTTOM_RIGHT : ATTN_CAUSAL_NONE) == ATTN_OK &&
      attn_forward(ctx, d, qs, k, v, want, NULL, NULL) == ATTN_OK) {
    bench_rel_error(got, want, &r->max_err, &r->mean_err);
    r->has_err = true;
    rc = 0;
  } else {
    fail(ctx, "exact rows");
  }
  attn_desc_destroy(d);
  attn_tensor_destroy(qs);
  attn_tensor_destroy(got);
  attn_tensor_destroy(want);
  return rc;
}

/* E = F: row r averages keys [⌊r·S/k⌋, ⌊(r+1)·S/k⌋). */
static attn_tensor *segment_means(attn_context *ctx, attn_dtype dt, int64_t k, int64_t S) {
  const int64_t shape[2] = {k, S};
  attn_tensor *t = NULL;
  if (attn_tensor_create(ctx, dt, 2, shape, &t) != ATTN_OK) return NULL; /* zero-filled */
  for (int64_t r = 0; r < k; r++) {
    const int64_t j0 = r * S / k, j1 = (r + 1) * S / k;
    for (int64_t j = j0; j < j1; j++) {
      const double w = 1.0 / (double)(j1 - j0);
      if (dt == ATTN_DTYPE_F32)
        ((float *)attn_tensor_data(t))[r * S + j] = (float)w;
      else
        ((double *)attn_tensor_data(t))[r * S + j] = w;
    }
  }
  return t;
}

static double exact_ms(attn_context *ctx, const bench_opts *o, const attn_tensor *q,
                       const attn_tensor *k, const attn_tensor *v, attn_tensor *out) {
  attn_desc *d = NULL;
  attn_plan *plan = NULL;
  double ms = -1;
  if (attn_desc_create(ctx, &d) == ATTN_OK &&
      attn_desc_set_causal(d, o->causal ? ATTN_CAUSAL_TOP_LEFT : ATTN_CAUSAL_NONE) == ATTN_OK &&
      attn_plan_create(ctx, d, q, k, v, out, NULL, NULL, &plan) == ATTN_OK)
    ms = bench_time_plan(plan, q, k, v, out, o->reps);
  attn_plan_destroy(plan);
  attn_desc_destroy(d);
  return ms;
}

static int run_variant(attn_context *ctx, const bench_opts *o, bench_result *r,
                       attn_variant variant) {
  int rc = 1;
  attn_tensor *q = bench_tensor(ctx, o->dtype, o->B, o->H, o->Sq, o->D, 1);
  attn_tensor *k = bench_tensor(ctx, o->dtype, o->B, o->Hkv, o->Sk, o->D, 2);
  attn_tensor *v = bench_tensor(ctx, o->dtype, o->B, o->Hkv, o->Sk, o->D, 3);
  attn_tensor *out = bench_tensor(ctx, o->dtype, o->B, o->H, o->Sq, o->D, 4);
  attn_tensor *proj = NULL;
  attn_desc *d = NULL;
  attn_plan *plan = NULL;
  if (!q || !k || !v || !out) {
    fprintf(stderr, "%s: cannot allocate the inputs\n", "linear");
    goto done;
  }
  if (attn_desc_create(ctx, &d) != ATTN_OK || attn_desc_set_variant(d, variant) != ATTN_OK ||
      attn_desc_set_causal(d, o->causal ? ATTN_CAUSAL_TOP_LEFT : ATTN_CAUSAL_NONE) != ATTN_OK) {
    rc = fail(ctx, "desc");
    goto done;
  }
  if (variant == ATTN_VARIANT_PERFORMER &&
      attn_desc_set_features(d, o->features > 0 ? o->features : 256, 42) != ATTN_OK) {
    rc = fail(ctx, "--features");
    goto done;
  }
  if (variant == ATTN_VARIANT_LINFORMER) {
    int64_t kr = o->rank > 0 ? o->rank : 256;
    if (kr > o->Sk) kr = o->Sk;
    proj = segment_means(ctx, o->dtype, kr, o->Sk);
    if (proj == NULL || attn_desc_set_lowrank(d, kr, 42) != ATTN_OK ||
        attn_desc_set_lowrank_proj(d, proj, proj) != ATTN_OK) {
      rc = fail(ctx, "--rank");
      goto done;
    }
  }
  if (attn_plan_create(ctx, d, q, k, v, out, NULL, NULL, &plan) != ATTN_OK) {
    rc = fail(ctx, "plan");
    goto done;
  }
  r->ms = bench_time_plan(plan, q, k, v, out, o->reps);
  r->flops = 4.0 * (double)o->B * (double)o->H * (double)o->Sq * (double)o->Sk * (double)o->D;
  if (error_vs_exact(ctx, o, q, k, v, out, r) != 0) goto done;
  if ((double)o->Sq * (double)o->Sk <= SPEEDUP_LIMIT) {
    attn_tensor *tmp = bench_tensor(ctx, o->dtype, o->B, o->H, o->Sq, o->D, 5);
    double ems = tmp ? exact_ms(ctx, o, q, k, v, tmp) : -1;
    attn_tensor_destroy(tmp);
    if (ems > 0 && r->ms > 0) {
      r->extra = ems / r->ms;
      r->extra_name = "speedup_vs_exact";
    }
  }
  rc = 0;
done:
  attn_plan_destroy(plan);
  attn_tensor_destroy(proj);
  attn_desc_destroy(d);
  attn_tensor_destroy(q);
  attn_tensor_destroy(k);
  attn_tensor_destroy(v);
  attn_tensor_destroy(out);
  return rc;
}

int bench_case_linear_elu(attn_context *ctx, const bench_opts *o, bench_result *r);
int bench_case_performer(attn_context *ctx, const bench_opts *o, bench_result *r);
int bench_case_linformer(attn_context *ctx, const bench_opts *o, bench_result *r);

int bench_case_linear_elu(attn_context *ctx, const bench_opts *o, bench_result *r) {
  return run_variant(ctx, o, r, ATTN_VARIANT_LINEAR_ELU);
}

int bench_case_performer(attn_context *ctx, const bench_opts *o, bench_result *r) {
  return run_variant(ctx, o, r, ATTN_VARIANT_PERFORMER);
}

int bench_case_linformer(attn_context *ctx, const bench_opts *o, bench_result *r) {
  return run_variant(ctx, o, r, ATTN_VARIANT_LINFORMER);
}

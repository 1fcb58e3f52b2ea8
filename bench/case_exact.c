/* Cases `sdpa` (the library's fused exact kernel) and `naive` (the unfused
 * path most frameworks run: full S = QKᵀ by GEMM, row softmax with libm exp,
 * then P·V by GEMM, one head at a time with OpenBLAS's own threads). */
#include <cblas.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench.h"

static double dense_flops(const bench_opts *o) {
  return 4.0 * (double)o->B * (double)o->H * (double)o->Sq * (double)o->Sk * (double)o->D;
}

typedef struct exact_setup {
  attn_tensor *q, *k, *v, *out;
  attn_desc *desc;
  attn_plan *plan;
  /* --mass / --sinks: a second plan with them, and their buffers */
  attn_desc *desc2;
  attn_plan *plan2;
  attn_tensor *mass;
  double sinks[256];
} exact_setup;

static void setup_free(exact_setup *s) {
  attn_plan_destroy(s->plan2);
  attn_desc_destroy(s->desc2);
  attn_tensor_destroy(s->mass);
  attn_plan_destroy(s->plan);
  attn_desc_destroy(s->desc);
  attn_tensor_destroy(s->q);
  attn_tensor_destroy(s->k);
  attn_tensor_destroy(s->v);
  attn_tensor_destroy(s->out);
}

static int setup(attn_context *ctx, const bench_opts *o, exact_setup *s) {
  memset(s, 0, sizeof *s);
  s->q = bench_tensor(ctx, o->dtype, o->B, o->H, o->Sq, o->D, 1);
  s->k = bench_tensor(ctx, o->dtype, o->B, o->Hkv, o->Sk, o->D, 2);
  s->v = bench_tensor(ctx, o->dtype, o->B, o->Hkv, o->Sk, o->D, 3);
  s->out = bench_tensor(ctx, o->dtype, o->B, o->H, o->Sq, o->D, 4);
  if (!s->q || !s->k || !s->v || !s->out) return 1;
  if (attn_desc_create(ctx, &s->desc) != ATTN_OK) return 1;
  if (o->causal) attn_desc_set_causal(s->desc, ATTN_CAUSAL_TOP_LEFT);
  if (attn_plan_create(ctx, s->desc, s->q, s->k, s->v, s->out, NULL, NULL, &s->plan) != ATTN_OK) {
    fprintf(stderr, "attn-bench: plan: %s\n", attn_context_last_error(ctx));
    return 1;
  }
  return 0;
}

static int run_sdpa(void *arg) {
  exact_setup *s = arg;
  return attn_plan_execute(s->plan, s->q, s->k, s->v, s->out, NULL, NULL) != ATTN_OK;
}

static int run_sdpa2(void *arg) {
  exact_setup *s = arg;
  return attn_plan_execute(s->plan2, s->q, s->k, s->v, s->out, NULL, NULL) != ATTN_OK;
}

/* --mass / --sinks: the same call with them; the plain plan stays for the ratio. */
static int setup_options(attn_context *ctx, const bench_opts *o, exact_setup *s) {
  if (attn_desc_create(ctx, &s->desc2) != ATTN_OK) return 1;
  if (o->causal) attn_desc_set_causal(s->desc2, ATTN_CAUSAL_TOP_LEFT);
  if (o->sinks) {
    if (o->H > 256) return 1;
    for (int64_t h = 0; h < o->H; h++) s->sinks[h] = 0.25 * (double)(h % 5);
    if (attn_desc_set_sinks(s->desc2, s->sinks, o->H) != ATTN_OK) return 1;
  }
  if (o->mass) {
    int64_t shape[3] = {o->B, o->H, o->Sk};
    if (attn_tensor_create(ctx, o->dtype, 3, shape, &s->mass) != ATTN_OK) return 1;
    if (attn_desc_set_key_mass(s->desc2, s->mass) != ATTN_OK) return 1;
  }
  if (attn_plan_create(ctx, s->desc2, s->q, s->k, s->v, s->out, NULL, NULL, &s->plan2) != ATTN_OK) {
    fprintf(stderr, "attn-bench: plan: %s\n", attn_context_last_error(ctx));
    return 1;
  }
  return 0;
}

static int case_sdpa(attn_context *ctx, const bench_opts *o, bench_result *r) {
  exact_setup s;
  int rc = setup(ctx, o, &s);
  if (rc == 0 && (o->mass || o->sinks)) {
    if ((rc = setup_options(ctx, o, &s)) != 0) goto out;
    /* Alternate with and without, three times each: ms is the option's
     * best median, the ratio over the plain call's best median. */
    double with = INFINITY, without = INFINITY;
    for (int rep = 0; rep < 3; rep++) {
      double t1 = bench_time_ms(run_sdpa2, &s, o->reps), t0 = bench_time_ms(run_sdpa, &s, o->reps);
      with = t1 < with ? t1 : with;
      without = t0 < without ? t0 : without;
    }
    r->ms = with;
    r->ratio = with / without;
    r->ratio_name = o->mass ? "mass_ratio" : "sinks_ratio";
    r->flops = dense_flops(o);
    rc = isnan(r->ms);
    goto out;
  }
  if (rc == 0) {
    r->ms = bench_time_case(run_sdpa, &s, o, r);
    r->flops = dense_flops(o);
    /* Inputs + output, to compare with peak RSS (no S_q x S_k buffer exists). */
    double es = o->dtype == ATTN_DTYPE_F64 ? 8 : o->dtype == ATTN_DTYPE_F32 ? 4 : 2;
    r->extra = es * (double)o->B * (2.0 * o->H * o->Sq + 2.0 * o->Hkv * o->Sk) * (double)o->D / 1048576.0;
    r->extra_name = "io_mb";
    rc = isnan(r->ms);
  }
out:
  setup_free(&s);
  return rc;
}

/* ---- the unfused path -------------------------------------------------------- */

typedef struct naive_run {
  const bench_opts *o;
  const void *q, *k, *v;
  void *out, *S;
} naive_run;

static int naive_f32(void *arg) {
  naive_run *n = arg;
  const bench_opts *o = n->o;
  const float scale = 1.0f / sqrtf((float)o->D);
  int64_t g = o->H / o->Hkv;
  for (int64_t b = 0; b < o->B; b++)
    for (int64_t h = 0; h < o->H; h++) {
      const float *q = (const float *)n->q + (b * o->H + h) * o->Sq * o->D;
      const float *k = (const float *)n->k + (b * o->Hkv + h / g) * o->Sk * o->D;
      const float *v = (const float *)n->v + (b * o->Hkv + h / g) * o->Sk * o->D;
      float *out = (float *)n->out + (b * o->H + h) * o->Sq * o->D;
      float *S = n->S;
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)o->Sq, (int)o->Sk, (int)o->D,
                  scale, q, (int)o->D, k, (int)o->D, 0.0f, S, (int)o->Sk);
      for (int64_t i = 0; i < o->Sq; i++) {
        float *row = S + i * o->Sk;
        int64_t kept = o->causal ? (i + 1 < o->Sk ? i + 1 : o->Sk) : o->Sk;
        float mx = -INFINITY, sum = 0;
        for (int64_t j = 0; j < kept; j++) mx = row[j] > mx ? row[j] : mx;
        for (int64_t j = 0; j < kept; j++) sum += row[j] = expf(row[j] - mx);
        for (int64_t j = 0; j < kept; j++) row[j] /= sum;
        for (int64_t j = kept; j < o->Sk; j++) row[j] = 0;
      }
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)o->Sq, (int)o->D, (int)o->Sk,
                  1.0f, S, (int)o->Sk, v, (int)o->D, 0.0f, out, (int)o->D);
    }
  return 0;
}

static int naive_f64(void *arg) {
  naive_run *n = arg;
  const bench_opts *o = n->o;
  const double scale = 1.0 / sqrt((double)o->D);
  int64_t g = o->H / o->Hkv;
  for (int64_t b = 0; b < o->B; b++)
    for (int64_t h = 0; h < o->H; h++) {
      const double *q = (const double *)n->q + (b * o->H + h) * o->Sq * o->D;
      const double *k = (const double *)n->k + (b * o->Hkv + h / g) * o->Sk * o->D;
      const double *v = (const double *)n->v + (b * o->Hkv + h / g) * o->Sk * o->D;
      double *out = (double *)n->out + (b * o->H + h) * o->Sq * o->D;
      double *S = n->S;
      cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)o->Sq, (int)o->Sk, (int)o->D,
                  scale, q, (int)o->D, k, (int)o->D, 0.0, S, (int)o->Sk);
      for (int64_t i = 0; i < o->Sq; i++) {
        double *row = S + i * o->Sk;
        int64_t kept = o->causal ? (i + 1 < o->Sk ? i + 1 : o->Sk) : o->Sk;
        double mx = -INFINITY, sum = 0;
        for (int64_t j = 0; j < kept; j++) mx = row[j] > mx ? row[j] : mx;
        for (int64_t j = 0; j < kept; j++) sum += row[j] = exp(row[j] - mx);
        for (int64_t j = 0; j < kept; j++) row[j] /= sum;
        for (int64_t j = kept; j < o->Sk; j++) row[j] = 0;
      }
      cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)o->Sq, (int)o->D, (int)o->Sk,
                  1.0, S, (int)o->Sk, v, (int)o->D, 0.0, out, (int)o->D);
    }
  return 0;
}

static int case_naive(attn_context *ctx, const bench_opts *o, bench_result *r) {
  exact_setup s;
  int rc = setup(ctx, o, &s);
  size_t es = o->dtype == ATTN_DTYPE_F64 ? 8 : 4;
  attn_tensor *ref = bench_tensor(ctx, o->dtype, o->B, o->H, o->Sq, o->D, 5);
  naive_run n = {o, NULL, NULL, NULL, NULL, malloc((size_t)(o->Sq * o->Sk) * es)};
  if (rc == 0 && ref && n.S) {
    n.q = attn_tensor_data(s.q);
    n.k = attn_tensor_data(s.k);
    n.v = attn_tensor_data(s.v);
    n.out = attn_tensor_data(s.out);
    int prev = openblas_get_num_threads();
    openblas_set_num_threads(o->threads);
    r->ms = bench_time_ms(o->dtype == ATTN_DTYPE_F64 ? naive_f64 : naive_f32, &n, o->reps);
    openblas_set_num_threads(prev);
    r->flops = dense_flops(o);
    /* Cross-check: the unfused result against the library's fused one. */
    if (attn_plan_execute(s.plan, s.q, s.k, s.v, ref, NULL, NULL) == ATTN_OK) {
      bench_rel_error(s.out, ref, &r->max_err, &r->mean_err);
      r->has_err = true;
    }
    rc = isnan(r->ms);
  } else {
    rc = 1;
  }
  free(n.S);
  attn_tensor_destroy(ref);
  setup_free(&s);
  return rc;
}

const bench_case bench_case_sdpa = {"sdpa", case_sdpa, "exact scaled dot-product attention (fused, tiled)"};
const bench_case bench_case_naive = {"naive", case_naive, "unfused reference: full S, row softmax, P*V"};

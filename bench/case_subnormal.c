/* attn-bench case "subnormal": the same exact attention on normal inputs and
 * on inputs whose q and v are subnormal (so scores, P·V and the outputs are
 * subnormal too: the x86 slow path, unless something flushes them, which the
 * library must not do to the caller's data or MXCSR). Reports the subnormal
 * time as ms and the ratio subnormal/normal as "subnormal_ratio"; the
 * reliability target is a ratio ≤ 2. */
#include <float.h>
#include <stdio.h>

#include "bench.h"

static void make_subnormal(attn_tensor *t) {
  int64_t n = attn_tensor_numel(t);
  if (attn_tensor_dtype(t) == ATTN_DTYPE_F64) {
    double *x = attn_tensor_data(t);
    for (int64_t i = 0; i < n; i++) x[i] *= 1e-310; /* < DBL_MIN = 2.2e-308 */
  } else {
    float *x = attn_tensor_data(t);
    for (int64_t i = 0; i < n; i++) x[i] *= 1e-39f; /* < FLT_MIN = 1.2e-38 */
  }
}

static int case_subnormal(attn_context *ctx, const bench_opts *o, bench_result *r) {
  attn_tensor *q = bench_tensor(ctx, o->dtype, o->B, o->H, o->Sq, o->D, 1);
  attn_tensor *k = bench_tensor(ctx, o->dtype, o->B, o->Hkv, o->Sk, o->D, 2);
  attn_tensor *v = bench_tensor(ctx, o->dtype, o->B, o->Hkv, o->Sk, o->D, 3);
  attn_tensor *out = bench_tensor(ctx, o->dtype, o->B, o->H, o->Sq, o->D, 4);
  attn_desc *d = NULL;
  attn_plan *plan = NULL;
  int rc = 1;
  if (!q || !k || !v || !out || attn_desc_create(ctx, &d) != ATTN_OK ||
      attn_desc_set_causal(d, o->causal ? ATTN_CAUSAL_TOP_LEFT : ATTN_CAUSAL_NONE) != ATTN_OK ||
      attn_plan_create(ctx, d, q, k, v, out, NULL, NULL, &plan) != ATTN_OK) {
    fprintf(stderr, "subnormal: setup failed: %s\n", attn_context_last_error(ctx));
    goto done;
  }
  double normal_ms = bench_time_plan(plan, q, k, v, out, o->reps);
  make_subnormal(q);
  make_subnormal(v);
  double sub_ms = bench_time_plan(plan, q, k, v, out, o->reps);
  r->ms = sub_ms;
  r->flops = 4.0 * (double)o->B * (double)o->H * (double)o->Sq * (double)o->Sk * (double)o->D;
  r->extra = normal_ms > 0 ? sub_ms / normal_ms : 0;
  r->extra_name = "subnormal_ratio";
  rc = 0;
done:
  attn_plan_destroy(plan);
  attn_desc_destroy(d);
  attn_tensor_destroy(q);
  attn_tensor_destroy(k);
  attn_tensor_destroy(v);
  attn_tensor_destroy(out);
  return rc;
}

const bench_case bench_case_subnormal = {
    "subnormal", case_subnormal,
    "exact attention with subnormal q and v; extra = time ratio subnormal / normal (target <= 2)"};

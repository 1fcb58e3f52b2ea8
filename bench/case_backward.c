/* Case `sdpa_bwd`: the backward pass of exact attention (attn/backward.h).
 * `ms` is the backward alone (attn_backward_execute on a saved forward);
 * `fwd_ms`, the case's extra, is the forward of the same shapes (with its
 * lse output) timed in the same process, so the ratio is of one run. FLOPs
 * are the backward's dense-equivalent 2.5 × 4·B·H·S_q·S_k·D (five GEMMs of
 * the forward's two). */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "bench.h"

typedef struct bwd_setup {
  attn_tensor *q, *k, *v, *out, *lse, *dout, *dq, *dk, *dv;
  attn_desc *desc;
  attn_plan *fwd;
  attn_backward_plan *bwd;
} bwd_setup;

static void bwd_free(bwd_setup *s) {
  attn_backward_plan_destroy(s->bwd);
  attn_plan_destroy(s->fwd);
  attn_desc_destroy(s->desc);
  attn_tensor *ts[] = {s->q, s->k, s->v, s->out, s->lse, s->dout, s->dq, s->dk, s->dv};
  for (size_t i = 0; i < sizeof ts / sizeof ts[0]; i++) attn_tensor_destroy(ts[i]);
}

static int fwd_run(void *arg) {
  bwd_setup *s = arg;
  return attn_plan_execute(s->fwd, s->q, s->k, s->v, s->out, NULL, s->lse) != ATTN_OK;
}

static int bwd_run(void *arg) {
  bwd_setup *s = arg;
  return attn_backward_execute(s->bwd, s->q, s->k, s->v, s->out, s->lse, s->dout, s->dq, s->dk,
                               s->dv, NULL) != ATTN_OK;
}

static int case_sdpa_bwd(attn_context *ctx, const bench_opts *o, bench_result *r) {
  bwd_setup s;
  memset(&s, 0, sizeof s);
  int rc = 1;
  s.q = bench_tensor(ctx, o->dtype, o->B, o->H, o->Sq, o->D, 1);
  s.k = bench_tensor(ctx, o->dtype, o->B, o->Hkv, o->Sk, o->D, 2);
  s.v = bench_tensor(ctx, o->dtype, o->B, o->Hkv, o->Sk, o->D, 3);
  s.out = bench_tensor(ctx, o->dtype, o->B, o->H, o->Sq, o->D, 4);
  s.dout = bench_tensor(ctx, o->dtype, o->B, o->H, o->Sq, o->D, 5);
  s.dq = bench_tensor(ctx, o->dtype, o->B, o->H, o->Sq, o->D, 6);
  s.dk = bench_tensor(ctx, o->dtype, o->B, o->Hkv, o->Sk, o->D, 7);
  s.dv = bench_tensor(ctx, o->dtype, o->B, o->Hkv, o->Sk, o->D, 8);
  const int64_t lshape[3] = {o->B, o->H, o->Sq};
  /* lse in the compute type (f32 for bf16/f16 plans). */
  const attn_dtype ldt =
      o->dtype == ATTN_DTYPE_BF16 || o->dtype == ATTN_DTYPE_F16 ? ATTN_DTYPE_F32 : o->dtype;
  if (attn_tensor_create(ctx, ldt, 3, lshape, &s.lse) != ATTN_OK) s.lse = NULL;
  if (!s.q || !s.k || !s.v || !s.out || !s.dout || !s.dq || !s.dk || !s.dv || !s.lse) goto done;
  if (attn_desc_create(ctx, &s.desc) != ATTN_OK) goto done;
  if (o->causal) attn_desc_set_causal(s.desc, ATTN_CAUSAL_TOP_LEFT);
  if (attn_plan_create(ctx, s.desc, s.q, s.k, s.v, s.out, NULL, s.lse, &s.fwd) != ATTN_OK ||
      attn_backward_plan_create(s.fwd, s.dout, s.dq, s.dk, s.dv, NULL, &s.bwd) != ATTN_OK) {
    fprintf(stderr, "attn-bench: sdpa_bwd plan: %s\n", attn_context_last_error(ctx));
    goto done;
  }
  if (fwd_run(&s) != 0) goto done;
  r->ms = bench_time_ms(bwd_run, &s, o->reps);
  r->extra = bench_time_ms(fwd_run, &s, o->reps);
  r->extra_name = "fwd_ms";
  r->flops = 2.5 * 4.0 * (double)o->B * (double)o->H * (double)o->Sq * (double)o->Sk * (double)o->D;
  rc = isnan(r->ms) || isnan(r->extra);
done:
  bwd_free(&s);
  return rc;
}

const bench_case bench_case_sdpa_bwd = {
    "sdpa_bwd", case_sdpa_bwd,
    "exact attention backward (dq, dk, dv from the saved lse); extra fwd_ms = the forward"};

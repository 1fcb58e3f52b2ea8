/* attn-bench case "varlen": a packed batch of 8 sequences of mixed lengths
 * (64..2048 tokens, 6336 in all) in the [T, H, D] layout, against the same
 * sequences padded to a batch of 8 × 2048 ([B, S, H, D], the same layout
 * padded) in the same process. FLOPs are the
 * useful work, Σ_s 4·H·L_s²·D: gflops is the packed call's useful rate,
 * padded_gflops the padded batch's dense rate 4·8·H·2048²·D / its time.
 * --causal applies to both; H, D from the options (B and S are fixed).
 * The two are timed alternately, three times each; each reports its best
 * median. */
#include <math.h>
#include <stdio.h>

#include "attn/attn.h"
#include "bench.h"

static const int64_t lens[8] = {2048, 64, 1024, 256, 1536, 128, 512, 768};
enum { NSEQ = 8, LMAX = 2048 };

typedef struct varlen_run {
  attn_plan *plan;
  attn_tensor *q, *k, *v, *out;
} varlen_run;

static int varlen_once(void *arg) {
  varlen_run *r = arg;
  return attn_plan_execute(r->plan, r->q, r->k, r->v, r->out, NULL, NULL) != ATTN_OK;
}

static void run_free(varlen_run *r) {
  attn_plan_destroy(r->plan);
  attn_tensor_destroy(r->q);
  attn_tensor_destroy(r->k);
  attn_tensor_destroy(r->v);
  attn_tensor_destroy(r->out);
}

/* [1, H, T, D] seen through [T, H, D] strides, on memory of a bench tensor. */
static attn_tensor *packed(attn_context *ctx, const bench_opts *o, int64_t T, uint64_t seed,
                           attn_tensor **owner) {
  *owner = bench_tensor(ctx, o->dtype, 1, T, o->H, o->D, seed);
  if (*owner == NULL) return NULL;
  const int64_t shape[4] = {1, o->H, T, o->D}, strides[4] = {T * o->H * o->D, o->D, o->H * o->D, 1};
  attn_tensor *t = NULL;
  if (attn_tensor_wrap(ctx, o->dtype, 4, shape, strides, attn_tensor_data(*owner), &t) != ATTN_OK)
    return NULL;
  return t;
}

/* The padded batch in the matching layout, [B, S, H, D] memory seen as
 * [B, H, S, D] (FlashAttention's padded counterpart of [T, H, D]). */
static attn_tensor *padded(attn_context *ctx, const bench_opts *o, uint64_t seed,
                           attn_tensor **owner) {
  *owner = bench_tensor(ctx, o->dtype, NSEQ, LMAX, o->H, o->D, seed);
  if (*owner == NULL) return NULL;
  const int64_t shape[4] = {NSEQ, o->H, LMAX, o->D};
  const int64_t strides[4] = {LMAX * o->H * o->D, o->D, o->H * o->D, 1};
  attn_tensor *t = NULL;
  if (attn_tensor_wrap(ctx, o->dtype, 4, shape, strides, attn_tensor_data(*owner), &t) != ATTN_OK)
    return NULL;
  return t;
}

int bench_case_varlen(attn_context *ctx, const bench_opts *o, bench_result *r);

int bench_case_varlen(attn_context *ctx, const bench_opts *o, bench_result *r) {
  int64_t off[NSEQ + 1] = {0};
  double useful = 0;
  for (int s = 0; s < NSEQ; s++) {
    off[s + 1] = off[s] + lens[s];
    useful += 4.0 * (double)o->H * (double)lens[s] * (double)lens[s] * (double)o->D;
  }
  const int64_t T = off[NSEQ];
  int rc = 1;
  attn_desc *dp = NULL, *dv = NULL;
  varlen_run pad = {0}, var = {0};
  attn_tensor *own[8] = {NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL};
  if (attn_desc_create(ctx, &dp) != ATTN_OK || attn_desc_create(ctx, &dv) != ATTN_OK) goto done;
  if (o->causal) {
    attn_desc_set_causal(dp, ATTN_CAUSAL_TOP_LEFT);
    attn_desc_set_causal(dv, ATTN_CAUSAL_TOP_LEFT);
  }
  if (attn_desc_set_varlen(dv, off, NULL, NSEQ) != ATTN_OK) goto done;
  pad.q = padded(ctx, o, 1, &own[4]);
  pad.k = padded(ctx, o, 2, &own[5]);
  pad.v = padded(ctx, o, 3, &own[6]);
  pad.out = padded(ctx, o, 4, &own[7]);
  var.q = packed(ctx, o, T, 5, &own[0]);
  var.k = packed(ctx, o, T, 6, &own[1]);
  var.v = packed(ctx, o, T, 7, &own[2]);
  var.out = packed(ctx, o, T, 8, &own[3]);
  if (!pad.q || !pad.k || !pad.v || !pad.out || !var.q || !var.k || !var.v || !var.out) goto done;
  if (attn_plan_create(ctx, dp, pad.q, pad.k, pad.v, pad.out, NULL, NULL, &pad.plan) != ATTN_OK ||
      attn_plan_create(ctx, dv, var.q, var.k, var.v, var.out, NULL, NULL, &var.plan) != ATTN_OK)
    goto done;
  /* Alternate, three times each; the best median of each (noise only slows). */
  double padded_ms = INFINITY;
  r->ms = INFINITY;
  for (int rep = 0; rep < 3; rep++) {
    const double tp = bench_time_ms(varlen_once, &pad, o->reps);
    const double tv = bench_time_ms(varlen_once, &var, o->reps);
    padded_ms = tp < padded_ms ? tp : padded_ms;
    r->ms = tv < r->ms ? tv : r->ms;
  }
  r->flops = useful;
  r->extra = 4.0 * NSEQ * (double)o->H * LMAX * (double)LMAX * (double)o->D / (padded_ms * 1e6);
  r->extra_name = "padded_gflops";
  rc = isnan(r->ms) || isnan(padded_ms);
done:
  if (rc != 0) fprintf(stderr, "varlen: %s\n", attn_context_last_error(ctx));
  run_free(&pad);
  run_free(&var);
  for (int i = 0; i < 8; i++) attn_tensor_destroy(own[i]);
  attn_desc_destroy(dp);
  attn_desc_destroy(dv);
  return rc;
}

/* attn-bench cases for the mask module and the additive score:
 *  - "masked": padding (key lengths ≈ 90% of S_k, staggered per batch item)
 *    plus ALiBi, on the same inputs as the plain plan, which is timed too:
 *    extra = unmasked ms / masked ms (≥ 0.9 is the "within 10%";
 *    the padding skips ~10% of the keys, so > 1 is expected).
 *  - "additive": Bahdanau s = vᵀ tanh(W_q q + W_k k + b) with A = D;
 *    extra = G (query, key, a) tanh terms per second, B·H·S_q·S_k·A / s
 *    (dense count like the FLOPs: with --causal about half are computed).
 * FLOPs follow the contract: dense-equivalent 4·B·H·S_q·S_k·D. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "bench.h"

typedef struct io {
  attn_tensor *q, *k, *v, *out;
} io;

static int io_make(attn_context *ctx, const bench_opts *o, io *t) {
  t->q = bench_tensor(ctx, o->dtype, o->B, o->H, o->Sq, o->D, 1);
  t->k = bench_tensor(ctx, o->dtype, o->B, o->Hkv, o->Sk, o->D, 2);
  t->v = bench_tensor(ctx, o->dtype, o->B, o->Hkv, o->Sk, o->D, 3);
  t->out = bench_tensor(ctx, o->dtype, o->B, o->H, o->Sq, o->D, 4);
  if (t->q && t->k && t->v && t->out) return 0;
  fprintf(stderr, "masked: cannot create tensors: %s\n", attn_context_last_error(ctx));
  return 1;
}

static void io_free(io *t) {
  attn_tensor_destroy(t->q);
  attn_tensor_destroy(t->k);
  attn_tensor_destroy(t->v);
  attn_tensor_destroy(t->out);
}

/* Plan and time desc on t; ms < 0 on failure (message printed). */
static double time_desc(attn_context *ctx, const char *what, const attn_desc *d, io *t,
                        int32_t reps) {
  attn_plan *plan = NULL;
  if (attn_plan_create(ctx, d, t->q, t->k, t->v, t->out, NULL, NULL, &plan) != ATTN_OK) {
    fprintf(stderr, "%s: plan: %s\n", what, attn_context_last_error(ctx));
    return -1.0;
  }
  double ms = bench_time_plan(plan, t->q, t->k, t->v, t->out, reps);
  attn_plan_destroy(plan);
  return ms;
}

static int case_masked(attn_context *ctx, const bench_opts *o, bench_result *r) {
  io t;
  int rc = 1;
  int64_t *lens = malloc((size_t)o->B * sizeof *lens);
  double *slopes = malloc((size_t)o->H * sizeof *slopes);
  attn_desc *plain = NULL, *masked = NULL;
  if (lens == NULL || slopes == NULL || io_make(ctx, o, &t) != 0) goto done;
  for (int64_t b = 0; b < o->B; b++) { /* ≈ 90%, staggered by up to 3% */
    int64_t len = o->Sk - o->Sk / 10 - (b % 4) * (o->Sk / 100);
    lens[b] = len < 1 ? 1 : len;
  }
  for (int64_t h = 0; h < o->H; h++) slopes[h] = pow(2.0, -8.0 * (double)(h + 1) / (double)o->H);
  /* --causal: top-left like `sdpa`, i.e. a right-padded causal batch; the
   * baseline has the same diagonal, so only the padding and ALiBi differ. */
  attn_causal causal = o->causal ? ATTN_CAUSAL_TOP_LEFT : ATTN_CAUSAL_NONE;
  if (attn_desc_create(ctx, &plain) != ATTN_OK || attn_desc_create(ctx, &masked) != ATTN_OK ||
      attn_desc_set_causal(plain, causal) != ATTN_OK ||
      attn_desc_set_causal(masked, causal) != ATTN_OK ||
      attn_desc_set_key_lengths(masked, lens, o->B) != ATTN_OK ||
      attn_desc_set_alibi(masked, slopes, o->H) != ATTN_OK) {
    fprintf(stderr, "masked: descriptor: %s\n", attn_context_last_error(ctx));
    goto done;
  }
  double ms_plain = time_desc(ctx, "masked (unmasked baseline)", plain, &t, o->reps);
  double ms = time_desc(ctx, "masked", masked, &t, o->reps);
  if (ms_plain < 0 || ms < 0) goto done;
  r->ms = ms;
  r->flops = 4.0 * (double)o->B * (double)o->H * (double)o->Sq * (double)o->Sk * (double)o->D;
  r->extra = ms_plain / ms;
  r->extra_name = "speed_vs_unmasked";
  rc = 0;
done:
  attn_desc_destroy(plain);
  attn_desc_destroy(masked);
  io_free(&t);
  free(lens);
  free(slopes);
  return rc;
}

static int case_additive(attn_context *ctx, const bench_opts *o, bench_result *r) {
  io t;
  int rc = 1;
  const int64_t A = o->D;
  attn_desc *d = NULL;
  attn_tensor *wq = bench_tensor(ctx, o->dtype, 1, 1, A, o->D, 5);
  attn_tensor *wk = bench_tensor(ctx, o->dtype, 1, 1, A, o->D, 6);
  attn_tensor *bias = bench_tensor(ctx, o->dtype, 1, 1, 1, A, 7);
  attn_tensor *v = bench_tensor(ctx, o->dtype, 1, 1, 1, A, 8);
  attn_tensor *wq2 = NULL, *wk2 = NULL, *bias1 = NULL, *v1 = NULL;
  if (io_make(ctx, o, &t) != 0 || !wq || !wk || !bias || !v) goto done;
  /* The parameters as rank-2 / rank-1 views of the rank-4 buffers. */
  int64_t shw[2] = {A, o->D}, shv[1] = {A};
  if (attn_tensor_wrap(ctx, o->dtype, 2, shw, NULL, attn_tensor_data(wq), &wq2) != ATTN_OK ||
      attn_tensor_wrap(ctx, o->dtype, 2, shw, NULL, attn_tensor_data(wk), &wk2) != ATTN_OK ||
      attn_tensor_wrap(ctx, o->dtype, 1, shv, NULL, attn_tensor_data(bias), &bias1) != ATTN_OK ||
      attn_tensor_wrap(ctx, o->dtype, 1, shv, NULL, attn_tensor_data(v), &v1) != ATTN_OK ||
      attn_desc_create(ctx, &d) != ATTN_OK ||
      attn_desc_set_score(d, ATTN_SCORE_ADDITIVE) != ATTN_OK ||
      attn_desc_set_additive_weights(d, wq2, wk2, bias1, v1) != ATTN_OK ||
      attn_desc_set_causal(d, o->causal ? ATTN_CAUSAL_TOP_LEFT : ATTN_CAUSAL_NONE) != ATTN_OK) {
    fprintf(stderr, "additive: setup: %s\n", attn_context_last_error(ctx));
    goto done;
  }
  double ms = time_desc(ctx, "additive", d, &t, o->reps);
  if (ms < 0) goto done;
  double pairs = (double)o->B * (double)o->H * (double)o->Sq * (double)o->Sk;
  r->ms = ms;
  r->flops = 4.0 * pairs * (double)o->D;
  r->extra = pairs * (double)A / (ms * 1e6); /* G terms / s */
  r->extra_name = "gtanh_per_s";
  rc = 0;
done:
  attn_desc_destroy(d);
  attn_tensor_destroy(wq2);
  attn_tensor_destroy(wk2);
  attn_tensor_destroy(bias1);
  attn_tensor_destroy(v1);
  attn_tensor_destroy(wq);
  attn_tensor_destroy(wk);
  attn_tensor_destroy(bias);
  attn_tensor_destroy(v);
  io_free(&t);
  return rc;
}

const bench_case bench_case_masked = {
    "masked", case_masked, "padding (key lengths ~90% of S_k) + ALiBi; extra = unmasked/masked speed"};
const bench_case bench_case_additive = {
    "additive", case_additive, "Bahdanau additive score, A = D; extra = G tanh terms per second"};

/* attn-bench cases for the local and sparse variants: window (1-D sliding
 * window ±w on the exact kernel), swin, longformer, bigbird, blocksparse.
 * FLOPs are dense-equivalent (4·B·H·S_q·S_k·D) as the contract asks, so a
 * sparse speed-up shows as gflops above the sgemm peak. These variants
 * compute a different function than exact attention, so no error is
 * reported; `extra` is the speed-up over exact attention on the same inputs
 * when S_q·S_k ≤ 16384² (exact is O(S²): timed with at most 3 repeats). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench.h"

int bench_case_window(attn_context *ctx, const bench_opts *o, bench_result *r);
int bench_case_swin(attn_context *ctx, const bench_opts *o, bench_result *r);
int bench_case_longformer(attn_context *ctx, const bench_opts *o, bench_result *r);
int bench_case_bigbird(attn_context *ctx, const bench_opts *o, bench_result *r);
int bench_case_blocksparse(attn_context *ctx, const bench_opts *o, bench_result *r);

#ifndef SPEEDUP_MAX_DENSE
#define SPEEDUP_MAX_DENSE (16384.0 * 16384.0)
#endif

static int64_t opt_window(const bench_opts *o) { return o->window > 0 ? o->window : 256; }
static int64_t opt_block(const bench_opts *o) { return o->block > 0 ? o->block : 64; }

static int fail(const char *what, attn_status st, attn_context *ctx) {
  fprintf(stderr, "%s: %s (%s)\n", what, attn_status_string(st), attn_context_last_error(ctx));
  return 1;
}

/* Time a plan of desc on fresh random q, k, v; fill r (ms, flops, speed-up). */
static int run_desc(attn_context *ctx, const bench_opts *o, attn_desc *d, bench_result *r) {
  attn_tensor *q = bench_tensor(ctx, o->dtype, o->B, o->H, o->Sq, o->D, 1);
  attn_tensor *k = bench_tensor(ctx, o->dtype, o->B, o->Hkv, o->Sk, o->D, 2);
  attn_tensor *v = bench_tensor(ctx, o->dtype, o->B, o->Hkv, o->Sk, o->D, 3);
  attn_tensor *out = bench_tensor(ctx, o->dtype, o->B, o->H, o->Sq, o->D, 4);
  int rc = 1;
  attn_plan *plan = NULL;
  attn_status st;
  if (q == NULL || k == NULL || v == NULL || out == NULL) {
    fprintf(stderr, "out of memory for the tensors\n");
    goto done;
  }
  if ((st = attn_plan_create(ctx, d, q, k, v, out, NULL, NULL, &plan)) != ATTN_OK) {
    rc = fail("plan", st, ctx);
    goto done;
  }
  r->ms = bench_time_plan(plan, q, k, v, out, o->reps);
  r->flops = 4.0 * (double)o->B * (double)o->H * (double)o->Sq * (double)o->Sk * (double)o->D;
  r->has_err = false;
  if ((double)o->Sq * (double)o->Sk <= SPEEDUP_MAX_DENSE) {
    attn_desc *e = NULL;
    attn_plan *ep = NULL;
    if (attn_desc_create(ctx, &e) == ATTN_OK &&
        attn_desc_set_causal(e, o->causal ? ATTN_CAUSAL_TOP_LEFT : ATTN_CAUSAL_NONE) == ATTN_OK &&
        attn_plan_create(ctx, e, q, k, v, out, NULL, NULL, &ep) == ATTN_OK) {
      double ems = bench_time_plan(ep, q, k, v, out, o->reps < 3 ? o->reps : 3);
      r->extra = r->ms > 0 ? ems / r->ms : 0;
      r->extra_name = "speedup_vs_exact";
    }
    attn_plan_destroy(ep);
    attn_desc_destroy(e);
  }
  rc = 0;
done:
  attn_plan_destroy(plan);
  attn_tensor_destroy(q);
  attn_tensor_destroy(k);
  attn_tensor_destroy(v);
  attn_tensor_destroy(out);
  return rc;
}

static attn_desc *new_desc(attn_context *ctx, const bench_opts *o, attn_variant var) {
  attn_desc *d = NULL;
  if (attn_desc_create(ctx, &d) != ATTN_OK) return NULL;
  if (attn_desc_set_variant(d, var) != ATTN_OK ||
      attn_desc_set_causal(d, o->causal ? ATTN_CAUSAL_TOP_LEFT : ATTN_CAUSAL_NONE) != ATTN_OK) {
    attn_desc_destroy(d);
    return NULL;
  }
  return d;
}

/* window: keys within ±w of the query (--window w, default 256). */
int bench_case_window(attn_context *ctx, const bench_opts *o, bench_result *r) {
  attn_desc *d = new_desc(ctx, o, ATTN_VARIANT_EXACT);
  if (d == NULL) return fail("desc", ATTN_ERR_NO_MEMORY, ctx);
  attn_status st = attn_desc_set_window(d, opt_window(o), opt_window(o));
  int rc = st != ATTN_OK ? fail("window", st, ctx) : run_desc(ctx, o, d, r);
  attn_desc_destroy(d);
  return rc;
}

/* swin: S = h·w tokens on the squarest grid, M = --window when ≤ 32 (else 7),
 * shift ⌊M/2⌋, with a relative position bias table. Needs S_q = S_k; causal
 * is ignored (Swin is not causal). */
int bench_case_swin(attn_context *ctx, const bench_opts *o, bench_result *r) {
  if (o->Sq != o->Sk) {
    fprintf(stderr, "swin: needs S_q = S_k\n");
    return 1;
  }
  int64_t gh = 1;
  for (int64_t x = 1; x * x <= o->Sq; x++)
    if (o->Sq % x == 0) gh = x;
  int64_t M = o->window >= 1 && o->window <= 32 ? o->window : 7;
  bench_opts so = *o;
  so.causal = false;
  attn_desc *d = new_desc(ctx, &so, ATTN_VARIANT_SWIN);
  if (d == NULL) return fail("desc", ATTN_ERR_NO_MEMORY, ctx);
  attn_tensor *bias = bench_tensor(ctx, o->dtype, 1, 1, (2 * M - 1) * (2 * M - 1), o->H, 5);
  attn_tensor *bias2 = NULL;
  int rc = 1;
  attn_status st;
  int64_t bshape[2] = {(2 * M - 1) * (2 * M - 1), o->H};
  if (bias == NULL ||
      attn_tensor_wrap(ctx, o->dtype, 2, bshape, NULL, attn_tensor_data(bias), &bias2) != ATTN_OK) {
    fprintf(stderr, "swin: out of memory\n");
  } else if ((st = attn_desc_set_swin(d, gh, o->Sq / gh, M, M / 2)) != ATTN_OK) {
    rc = fail("swin", st, ctx);
  } else if ((st = attn_desc_set_swin_bias(d, bias2)) != ATTN_OK) {
    rc = fail("swin bias", st, ctx);
  } else {
    rc = run_desc(ctx, &so, d, r);
  }
  attn_desc_destroy(d);
  attn_tensor_destroy(bias2);
  attn_tensor_destroy(bias);
  return rc;
}

/* longformer: band ±w (--window, default 256) plus 4 global tokens spread
 * over the sequence (the first one at 0). Needs S_q = S_k. */
int bench_case_longformer(attn_context *ctx, const bench_opts *o, bench_result *r) {
  if (o->Sq != o->Sk) {
    fprintf(stderr, "longformer: needs S_q = S_k\n");
    return 1;
  }
  attn_desc *d = new_desc(ctx, o, ATTN_VARIANT_LONGFORMER);
  if (d == NULL) return fail("desc", ATTN_ERR_NO_MEMORY, ctx);
  int64_t g[4];
  int64_t ng = o->Sq >= 4 ? 4 : 1;
  for (int64_t i = 0; i < ng; i++) g[i] = i * (o->Sq / ng);
  attn_status st;
  int rc;
  if ((st = attn_desc_set_window(d, opt_window(o), opt_window(o))) != ATTN_OK)
    rc = fail("window", st, ctx);
  else if ((st = attn_desc_set_global_tokens(d, g, ng)) != ATTN_OK)
    rc = fail("global tokens", st, ctx);
  else
    rc = run_desc(ctx, o, d, r);
  attn_desc_destroy(d);
  return rc;
}

/* bigbird: block b (--block, default 64), 1 window block each side, 1 global
 * block, 3 random blocks (BigBird-ITC's shape), seed 42. */
int bench_case_bigbird(attn_context *ctx, const bench_opts *o, bench_result *r) {
  attn_desc *d = new_desc(ctx, o, ATTN_VARIANT_BIGBIRD);
  if (d == NULL) return fail("desc", ATTN_ERR_NO_MEMORY, ctx);
  attn_status st;
  int rc;
  if ((st = attn_desc_set_block_size(d, opt_block(o))) != ATTN_OK)
    rc = fail("block", st, ctx);
  else if ((st = attn_desc_set_bigbird(d, 1, 1, 3, 42)) != ATTN_OK)
    rc = fail("bigbird", st, ctx);
  else
    rc = run_desc(ctx, o, d, r);
  attn_desc_destroy(d);
  return rc;
}

/* blocksparse: block b (--block, default 64), a layout shared by the heads
 * keeping the diagonal ±1 blocks and two scattered blocks per block row
 * (a fixed number per row, so the cost is linear in S). */
int bench_case_blocksparse(attn_context *ctx, const bench_opts *o, bench_result *r) {
  const int64_t b = opt_block(o), nqb = (o->Sq + b - 1) / b, nkb = (o->Sk + b - 1) / b;
  uint8_t *lay = calloc((size_t)(nqb * nkb), 1);
  if (lay == NULL) {
    fprintf(stderr, "blocksparse: out of memory\n");
    return 1;
  }
  for (int64_t i = 0; i < nqb; i++)
    for (int64_t j = 0; j < nkb; j++)
      lay[i * nkb + j] = (j >= i - 1 && j <= i + 1) || j == (i * 7 + 3) % nkb || j == (i * 13 + 5) % nkb;
  attn_desc *d = new_desc(ctx, o, ATTN_VARIANT_BLOCK_SPARSE);
  attn_tensor *tl = NULL;
  int64_t shape[3] = {1, nqb, nkb};
  attn_status st;
  int rc = 1;
  if (d == NULL) {
    rc = fail("desc", ATTN_ERR_NO_MEMORY, ctx);
  } else if ((st = attn_tensor_wrap(ctx, ATTN_DTYPE_U8, 3, shape, NULL, lay, &tl)) != ATTN_OK) {
    rc = fail("layout", st, ctx);
  } else if ((st = attn_desc_set_block_size(d, b)) != ATTN_OK ||
             (st = attn_desc_set_block_layout(d, tl)) != ATTN_OK) {
    rc = fail("block layout", st, ctx);
  } else {
    rc = run_desc(ctx, o, d, r);
  }
  attn_desc_destroy(d);
  attn_tensor_destroy(tl);
  free(lay);
  return rc;
}

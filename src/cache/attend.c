/* Attention of new queries against a KV cache.
 *
 * Decode (n ≤ ATTN_KV_SPLIT_MAX_N queries per item): flash-decoding. The
 * stored key range of each (b, kv head) is cut into chunks at fixed absolute
 * positions; each chunk is a task that computes a partial softmax state
 * (max M, sum L, unnormalised O) for all G·n stacked query rows, and the
 * partials are merged in chunk order. Neither the chunks nor the merge order
 * depend on the thread count, so results are bitwise identical for any.
 * Partials are bounded (ATTN_KV_PARTIAL_BUDGET): a longer cache is done in
 * waves whose merges continue the same sequential fold.
 *
 * Prefill (larger n): tasks are (query block, b, kv head) walking their keys
 * tile by tile with the online softmax, as in the exact kernel.
 *
 * Masking is the mask module's: the plan resolves an attn_mask whose key
 * index is the absolute position, whose key length is the cache length and
 * whose query length is the step's count, so bottom-right alignment puts
 * query i of item b at position len_b − n_b + i. */
#include <inttypes.h>
#include <math.h>
#include <string.h>

#include "blas/gemm.h"
#include "cache/attend.h"
#include "cache/attend_simd.h"
#include "kernels/vmath.h"

/* Bytes of partial states one wave may hold. */
#define ATTN_KV_PARTIAL_BUDGET ((size_t)4 << 20)
/* The mask module's S_k: larger than any position (they stay below 2^60). */
#define ATTN_KV_MASK_SK ((int64_t)1 << 61)

void attn_kv_key_range(const struct attn_kvcache_plan *p, int64_t b, int64_t i0, int64_t i1,
                       int64_t *lo, int64_t *hi) {
  int64_t j0, j1;
  attn_mask_key_range(&p->mask, b, i0, i1, &j0, &j1);
  j0 = attn_max64(j0, p->cache->first[b]);
  j1 = attn_min64(j1, p->cache->len[b]);
  if (j0 >= j1) j0 = j1 = 0;
  *lo = j0;
  *hi = j1;
}

#define T float
#define SUFFIX f32
#define GEMM attn_sgemm
#define VMAX(x, n) vm->max_f32((x), (n))
#define VEXPSUM(x, n, m) vm->exp_sub_sum_f32((x), (n), (m))
#define MASK_APPLY attn_mask_apply_f32
#define EXP expf
#define LOG logf
#define BF16_ROWS 1
#define SIMD_SCORES attn_kv_scores_avx512
#define SIMD_VALUES attn_kv_values_avx512
#include "cache/attend_impl.inc"
#undef BF16_ROWS
#undef SIMD_SCORES
#undef SIMD_VALUES
#undef T
#undef SUFFIX
#undef GEMM
#undef VMAX
#undef VEXPSUM
#undef MASK_APPLY
#undef EXP
#undef LOG

#define T double
#define SUFFIX f64
#define GEMM attn_dgemm
#define VMAX(x, n) attn_max_f64((x), (n))
#define VEXPSUM(x, n, m) attn_exp_sub_sum_f64((x), (n), (m))
#define MASK_APPLY attn_mask_apply_f64
#define EXP exp
#define LOG log
#include "cache/attend_impl.inc"
#undef T
#undef SUFFIX
#undef GEMM
#undef VMAX
#undef VEXPSUM
#undef MASK_APPLY
#undef EXP
#undef LOG

/* ---- plan --------------------------------------------------------------------- */

enum { KV_META_Q, KV_META_OUT, KV_META_LSE };
static const char *const kv_meta_names[3] = {"q", "out", "lse"};


static attn_status expect_shape(attn_context *ctx, const char *name, const attn_tensor *t,
                                const int64_t *want, const char *what) {
  for (int32_t i = 0; i < t->rank; i++)
    if (t->shape[i] != want[i]) {
      char buf[96];
      return attn_fail(ctx, ATTN_ERR_SHAPE,
                       "%s: shape %s does not match %s (dim %d should be %" PRId64 ")", name,
                       attn_shape_str(t, buf, sizeof buf), what, (int)i, want[i]);
    }
  return ATTN_OK;
}

static void widen_bf16(const uint16_t *src, float *dst, int64_t n) {
  for (int64_t i = 0; i < n; i++) {
    union {
      uint32_t u;
      float f;
    } x = {(uint32_t)src[i] << 16};
    dst[i] = x.f;
  }
}

static attn_status check_desc(attn_context *ctx, const attn_desc *d) {
  if (d->variant != ATTN_VARIANT_EXACT)
    return attn_fail(ctx, ATTN_ERR_UNSUPPORTED,
                     "desc: the KV cache computes exact attention (variant %d given)",
                     (int)d->variant);
  if (d->score != ATTN_SCORE_SCALED_DOT && d->score != ATTN_SCORE_DOT)
    return attn_fail(ctx, ATTN_ERR_UNSUPPORTED,
                     "desc: the KV cache supports the scaled-dot and dot scores (score %d given)",
                     (int)d->score);
  if (d->causal == ATTN_CAUSAL_TOP_LEFT)
    return attn_fail(ctx, ATTN_ERR_UNSUPPORTED,
                     "desc: causal TOP_LEFT does not apply to a cache; use "
                     "ATTN_CAUSAL_BOTTOM_RIGHT (queries are the newest positions)");
  if (d->key_lengths != NULL || d->query_lengths != NULL)
    return attn_fail(ctx, ATTN_ERR_UNSUPPORTED,
                     "desc: %s are not accepted; the cache supplies key lengths and "
                     "attn_kvcache_plan_execute() takes query counts",
                     d->key_lengths != NULL ? "key_lengths" : "query_lengths");
  if (d->bool_mask != NULL || d->add_mask != NULL)
    return attn_fail(ctx, ATTN_ERR_UNSUPPORTED,
                     "desc: %s is not supported with a KV cache (use window/ALiBi/softcap)",
                     d->bool_mask != NULL ? "bool_mask" : "additive_mask");
  return ATTN_OK;
}

static attn_status check_tensors(attn_kvcache_plan *p, const attn_tensor *q,
                                 const attn_tensor *out, const attn_tensor *lse) {
  attn_context *ctx = p->ctx;
  const attn_kvcache *c = p->cache;
  attn_status st;
  char a[96];
  if ((st = attn_check_tensor(ctx, "q", q, 4, c->dtype)) != ATTN_OK) return st;
  if ((st = attn_check_tensor(ctx, "out", out, 4, c->dtype)) != ATTN_OK) return st;
  p->B = c->B;
  p->Hkv = c->Hkv;
  p->Dk = c->Dk;
  p->Dv = c->Dv;
  p->H = q->shape[1];
  p->n = q->shape[2];
  if (q->shape[0] != c->B)
    return attn_fail(ctx, ATTN_ERR_SHAPE, "q: shape %s, batch should be the cache's %" PRId64,
                     attn_shape_str(q, a, sizeof a), c->B);
  if (q->shape[3] != c->Dk)
    return attn_fail(ctx, ATTN_ERR_SHAPE, "q: shape %s, head dim should be the cache's d_k %" PRId64,
                     attn_shape_str(q, a, sizeof a), c->Dk);
  if (p->H % c->Hkv != 0)
    return attn_fail(ctx, ATTN_ERR_SHAPE,
                     "q: %" PRId64 " heads (shape %s) are not a multiple of the cache's %" PRId64
                     " key/value heads",
                     p->H, attn_shape_str(q, a, sizeof a), c->Hkv);
  p->G = p->H / c->Hkv;
  const int64_t owant[4] = {p->B, p->H, p->n, p->Dv};
  if ((st = expect_shape(ctx, "out", out, owant, "[B, H, n, d_v] of q and the cache")) != ATTN_OK)
    return st;
  if (lse != NULL) {
    if ((st = attn_check_tensor(ctx, "lse", lse, 3, c->dtype)) != ATTN_OK) return st;
    if ((st = expect_shape(ctx, "lse", lse, owant, "[B, H, n] of q")) != ATTN_OK) return st;
  }
  if (q->strides[3] != 1 && p->Dk != 1)
    return attn_fail(ctx, ATTN_ERR_LAYOUT, "q: last dim stride is %" PRId64 "; it must be 1",
                     q->strides[3]);
  if (out->strides[3] != 1 && p->Dv != 1)
    return attn_fail(ctx, ATTN_ERR_LAYOUT, "out: last dim stride is %" PRId64 "; it must be 1",
                     out->strides[3]);
  return ATTN_OK;
}

/* Sizes the per-thread slots and the split path's partials; false on overflow. */
static bool size_workspace(attn_kvcache_plan *p, int32_t threads, size_t *bytes) {
  const size_t es = attn_dtype_size(p->dtype);
  p->split = p->n <= ATTN_KV_SPLIT_MAX_N;
  p->bq = p->split ? p->n : attn_max64(1, ATTN_KV_BLOCK_ROWS / p->G);
  p->bq = attn_min64(p->bq, p->n);
  p->bk = ATTN_KV_CHUNK;
  int64_t R, parts[7], slot = 0, part = 0;
  if (!attn_mul_ok(p->G, p->bq, &R)) return false;
  p->R = R;
  if (!attn_mul_ok(R, p->Dk, &parts[0]) || !attn_mul_ok(R, p->bk, &parts[1]) ||
      !attn_mul_ok(R, p->Dv, &parts[2]))
    return false;
  parts[3] = parts[4] = R;
  parts[5] = p->cache->bf16 ? p->bk * p->Dk : 0; /* bounded by the cache's own sizes */
  parts[6] = p->cache->bf16 ? p->bk * p->Dv : 0;
  for (int i = 0; i < 7; i++) {
    if (i == 5) p->kvf_offset = (size_t)slot;
    if (!attn_add_ok(slot, (parts[i] + 15) / 16 * 16, &slot)) return false;
  }
  for (int i = 2; i < 5; i++)
    if (!attn_add_ok(part, (parts[i] + 15) / 16 * 16, &part)) return false;
  int64_t total;
  if (!attn_mul_ok(slot, threads, &total)) return false;
  p->slot_elems = (size_t)slot;
  p->part_elems = (size_t)part;
  p->wave = 0;
  if (p->split) {
    /* Enough chunks for the current capacity, within the budget (≥ 1). */
    int64_t bkh = p->B * p->Hkv, per_chunk, want = attn_cdiv64(p->cache->cap, ATTN_KV_CHUNK) + 1;
    if (!attn_mul_ok(bkh, part, &per_chunk) || !attn_mul_ok(per_chunk, (int64_t)es, &per_chunk))
      return false;
    int64_t fit = (int64_t)(ATTN_KV_PARTIAL_BUDGET / (size_t)per_chunk);
    p->wave = attn_max64(1, attn_min64(want, fit));
    int64_t nparts;
    p->part_offset = (size_t)total;
    if (!attn_mul_ok(bkh, p->wave + 1, &nparts) || !attn_mul_ok(nparts, part, &nparts) ||
        !attn_add_ok(total, nparts, &total))
      return false;
    p->acc_offset = p->part_offset + (size_t)(bkh * p->wave) * (size_t)part;
  }
  return attn_bytes_ok(&total, 1, es, bytes);
}

attn_status attn_kvcache_plan_create(attn_kvcache *cache, const attn_desc *desc,
                                     const attn_tensor *q, const attn_tensor *out,
                                     const attn_tensor *lse, attn_kvcache_plan **plan) {
  if (cache == NULL) return ATTN_ERR_NULL_ARG;
  attn_context *ctx = cache->ctx;
  attn_clear_error(ctx);
  ATTN_CHECK_NULL(ctx, desc);
  ATTN_CHECK_NULL(ctx, q);
  ATTN_CHECK_NULL(ctx, out);
  ATTN_CHECK_NULL(ctx, plan);
  attn_status st = check_desc(ctx, desc);
  if (st != ATTN_OK) return st;

  attn_kvcache_plan tmp;
  memset(&tmp, 0, sizeof tmp);
  tmp.ctx = ctx;
  tmp.cache = cache;
  tmp.desc = *desc;
  tmp.dtype = cache->dtype;
  if ((st = check_tensors(&tmp, q, out, lse)) != ATTN_OK) return st;
  tmp.scale = desc->scale > 0.0 ? desc->scale
                                : (desc->score == ATTN_SCORE_SCALED_DOT ? 1.0 / sqrt((double)tmp.Dk)
                                                                        : 1.0);
  /* Positions are always bottom-right aligned, causal or not. */
  bool causal = desc->causal == ATTN_CAUSAL_BOTTOM_RIGHT;
  tmp.desc.causal = ATTN_CAUSAL_BOTTOM_RIGHT;
  /* The mask module resolves window/ALiBi/softcap against a plan-shaped
   * description: S_q = n queries, key index = absolute position. */
  attn_plan mp;
  memset(&mp, 0, sizeof mp);
  mp.ctx = ctx;
  mp.desc = tmp.desc;
  mp.dtype = tmp.dtype;
  mp.B = tmp.B;
  mp.H = tmp.H;
  mp.Hkv = tmp.Hkv;
  mp.Sq = tmp.n;
  mp.Sk = ATTN_KV_MASK_SK;
  if ((st = attn_mask_init(&tmp.mask, &mp)) != ATTN_OK) return st;
  if (!causal) {
    /* attn_mask_init folded causal (right ≤ 0) in; undo it, keep alignment. */
    tmp.mask.right = desc->win_right >= tmp.n + ATTN_KV_MASK_SK ? ATTN_WINDOW_UNBOUNDED
                                                                 : desc->win_right;
    tmp.mask.banded = tmp.mask.left != ATTN_WINDOW_UNBOUNDED ||
                      tmp.mask.right != ATTN_WINDOW_UNBOUNDED;
  }
  attn_tmeta_record(&tmp.meta[KV_META_Q], q);
  attn_tmeta_record(&tmp.meta[KV_META_OUT], out);
  attn_tmeta_record(&tmp.meta[KV_META_LSE], lse);

  if (!size_workspace(&tmp, ctx->num_threads, &tmp.workspace_bytes))
    return attn_fail(ctx, ATTN_ERR_OVERFLOW, "q: workspace size for %" PRId64 " heads × %" PRId64
                     " queries overflows", tmp.H, tmp.n);
  /* Few stacked rows in f32: the hand-vectorised loops, if the CPU (and
   * $ATTN_CPU, through the vector-math dispatch) allows AVX-512. */
  tmp.simd = tmp.dtype == ATTN_DTYPE_F32 && tmp.R <= ATTN_KV_SIMD_ROWS &&
             strcmp(attn_vmath_get()->isa, "avx512") == 0 && attn_kv_simd_available();
  const bool avx512 = strcmp(attn_vmath_get()->isa, "avx512") == 0 && attn_kv_simd_available();
  tmp.widen = avx512 ? attn_kv_widen_bf16_avx512 : widen_bf16;
  if ((st = attn_threadpool_ensure(ctx)) != ATTN_OK) return st;
  attn_kvcache_plan *p = attn_alloc(ctx, sizeof *p);
  void *ws = attn_alloc(ctx, tmp.workspace_bytes);
  if (p == NULL || ws == NULL) {
    attn_free(ctx, p, sizeof *p);
    attn_free(ctx, ws, tmp.workspace_bytes);
    return attn_fail(ctx, ATTN_ERR_NO_MEMORY,
                     "attn_kvcache_plan_create: cannot allocate %zu bytes of workspace",
                     tmp.workspace_bytes);
  }
  *p = tmp;
  p->workspace = ws;
  *plan = p;
  return ATTN_OK;
}

attn_status attn_kvcache_plan_execute(attn_kvcache_plan *plan, const attn_tensor *q,
                                      attn_tensor *out, attn_tensor *lse,
                                      const int64_t *query_counts) {
  if (plan == NULL) return ATTN_ERR_NULL_ARG;
  attn_context *ctx = plan->ctx;
  attn_clear_error(ctx);
  const attn_tensor *ts[3] = {q, out, lse};
  const bool required[3] = {true, true, false};
  attn_status mst = attn_tmeta_check_all(ctx, plan->meta, ts, kv_meta_names, required, 3);
  if (mst != ATTN_OK) return mst;
  if (query_counts != NULL)
    for (int64_t b = 0; b < plan->B; b++)
      if (query_counts[b] < 0 || query_counts[b] > plan->n)
        return attn_fail(ctx, ATTN_ERR_INVALID_ARG,
                         "query_counts[%" PRId64 "]: %" PRId64 " is outside [0, n = %" PRId64 "]",
                         b, query_counts[b], plan->n);

  /* Lengths are read at every execute: the cache's own arrays never move. */
  plan->desc.key_lengths = plan->cache->len;
  plan->desc.n_key_lengths = plan->B;
  plan->desc.query_lengths = query_counts;
  plan->desc.n_query_lengths = query_counts ? plan->B : 0;
  attn_mask_bind(&plan->mask, &plan->desc);

  const bool f32 = plan->dtype == ATTN_DTYPE_F32;
  kv_args a = {plan, q, out, lse, 0, 0, true};
  if (!plan->split)
    return attn_parallel_for(ctx, attn_cdiv64(plan->n, plan->bq) * plan->B * plan->Hkv,
                             f32 ? kv_block_task_f32 : kv_block_task_f64, &a);

  int64_t chunks = 0; /* most chunks any item needs */
  for (int64_t b = 0; b < plan->B; b++) {
    int64_t lo, hi;
    attn_kv_key_range(plan, b, 0, plan->n, &lo, &hi);
    if (lo < hi)
      chunks = attn_max64(chunks, (hi - 1) / ATTN_KV_CHUNK - lo / ATTN_KV_CHUNK + 1);
  }
  const int64_t nwaves = attn_max64(1, attn_cdiv64(chunks, plan->wave));
  const int64_t bkh = plan->B * plan->Hkv;
  for (int64_t w = 0; w < nwaves; w++) {
    a.w = w;
    a.wn = attn_min64(plan->wave, chunks - w * plan->wave);
    a.last_wave = w == nwaves - 1;
    attn_status st;
    if (a.wn > 0 &&
        (st = attn_parallel_for(ctx, bkh * a.wn, f32 ? kv_chunk_task_f32 : kv_chunk_task_f64,
                                &a)) != ATTN_OK)
      return st;
    if ((st = attn_parallel_for(ctx, bkh, f32 ? kv_merge_task_f32 : kv_merge_task_f64, &a)) !=
        ATTN_OK)
      return st;
  }
  return ATTN_OK;
}

size_t attn_kvcache_plan_workspace_size(const attn_kvcache_plan *plan) {
  return plan == NULL ? 0 : plan->workspace_bytes;
}

void attn_kvcache_plan_destroy(attn_kvcache_plan *plan) {
  if (plan == NULL) return;
  attn_context *ctx = plan->ctx;
  attn_free(ctx, plan->workspace, plan->workspace_bytes);
  attn_free(ctx, plan, sizeof *plan);
}

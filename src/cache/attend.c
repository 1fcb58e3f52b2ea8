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
#include <stdio.h>
#include <string.h>

#include "blas/gemm.h"
#include "cache/attend.h"
#include "cache/attend_q.h"
#include "cache/attend_simd.h"
#include "kernels/vmath.h"

/* Bytes of partial states one wave may hold. */
#define ATTN_KV_PARTIAL_BUDGET ((size_t)4 << 20)
/* The mask module's S_k: larger than any position (they stay below 2^60). */
#define ATTN_KV_MASK_SK ((int64_t)1 << 61)

void attn_kv_key_range(const struct attn_kvcache_plan *p, const attn_mask *mask, int64_t b,
                       int64_t i0, int64_t i1, int64_t *lo, int64_t *hi) {
  int64_t j0, j1;
  attn_mask_key_range(mask, b, i0, i1, &j0, &j1);
  j0 = attn_max64(j0, p->cache->first[b]);
  j1 = attn_min64(j1, p->cache->len[b]);
  if (j0 >= j1) j0 = j1 = 0;
  *lo = j0;
  *hi = j1;
}

#define ATTN_TMPL_FILE "cache/attend_impl.inc"
#include "core/tmpl.h"

/* ---- plan --------------------------------------------------------------------- */

enum { KV_META_Q, KV_META_OUT, KV_META_LSE };
static const char *const kv_meta_names[3] = {"q", "out", "lse"};


/* What a cache plan supports: bottom-right causal, windows, ALiBi, softcap
 * and the (scaled) dot score; the cache itself supplies key lengths and
 * execute takes query counts. */
static const attn_support kv_support = {
    "a KV cache",
    ATTN_OPT(ATTN_OPT_CAUSAL_BR) | ATTN_OPT(ATTN_OPT_WINDOW) | ATTN_OPT(ATTN_OPT_ALIBI) |
        ATTN_OPT(ATTN_OPT_SOFTCAP) | ATTN_OPT(ATTN_OPT_SCALE) | ATTN_OPT(ATTN_OPT_LSE) |
        ATTN_OPT(ATTN_OPT_SINKS) | ATTN_OPT(ATTN_OPT_MASS),
    {[ATTN_OPT_CAUSAL_TL] = "TOP_LEFT does not apply to a cache; use ATTN_CAUSAL_BOTTOM_RIGHT "
                            "(queries are the newest positions)",
     [ATTN_OPT_KEY_LENGTHS] = "not accepted; the cache supplies key lengths and "
                              "attn_kvcache_plan_execute() takes query counts",
     [ATTN_OPT_QUERY_LENGTHS] = "not accepted; the cache supplies key lengths and "
                                "attn_kvcache_plan_execute() takes query counts",
     [ATTN_OPT_BOOL_MASK] = "not supported with a KV cache (use window/ALiBi/softcap)",
     [ATTN_OPT_ADD_MASK] = "not supported with a KV cache (use window/ALiBi/softcap)",
     [ATTN_OPT_SCORE_GENERAL] = "the KV cache supports the scaled-dot and dot scores",
     [ATTN_OPT_SCORE_ADDITIVE] = "the KV cache supports the scaled-dot and dot scores"},
    NULL /* the cache's own dtype rules: kvcache.c */};

static attn_status check_desc(attn_context *ctx, const attn_desc *d, bool lse) {
  if (d->variant != ATTN_VARIANT_EXACT)
    return attn_fail(ctx, ATTN_ERR_UNSUPPORTED,
                     "desc: the KV cache computes exact attention (variant %d given)",
                     (int)d->variant);
  return attn_options_check(ctx, &kv_support, attn_options_used(d, false, lse));
}

attn_status attn_kv_check_step(attn_context *ctx, attn_dtype dtype, int64_t rows, int64_t Hkv,
                               int64_t Dk, int64_t Dv, const attn_tensor *q,
                               const attn_tensor *out, const attn_tensor *lse,
                               const char *rows_name, attn_kv_step *s) {
  attn_status st;
  char a[96], what[64];
  if ((st = attn_check_tensor(ctx, "q", q, 4, dtype)) != ATTN_OK) return st;
  if ((st = attn_check_tensor(ctx, "out", out, 4, dtype)) != ATTN_OK) return st;
  s->rows = q->shape[0];
  s->H = q->shape[1];
  s->n = q->shape[2];
  if (rows >= 0 && s->rows != rows)
    return attn_fail(ctx, ATTN_ERR_SHAPE, "q: shape %s, batch should be the cache's %" PRId64,
                     attn_shape_str(q, a, sizeof a), rows);
  if (q->shape[3] != Dk)
    return attn_fail(ctx, ATTN_ERR_SHAPE, "q: shape %s, head dim should be the cache's d_k %" PRId64,
                     attn_shape_str(q, a, sizeof a), Dk);
  if (s->H % Hkv != 0)
    return attn_fail(ctx, ATTN_ERR_SHAPE,
                     "q: %" PRId64 " heads (shape %s) are not a multiple of the cache's %" PRId64
                     " key/value heads",
                     s->H, attn_shape_str(q, a, sizeof a), Hkv);
  const int64_t owant[4] = {s->rows, s->H, s->n, Dv};
  snprintf(what, sizeof what, "[%s, H, n, d_v] of q and the cache", rows_name);
  if ((st = attn_check_dims(ctx, "out", out, owant, what)) != ATTN_OK) return st;
  if (lse != NULL) {
    snprintf(what, sizeof what, "[%s, H, n] of q", rows_name);
    if ((st = attn_check_tensor(ctx, "lse", lse, 3, dtype)) != ATTN_OK) return st;
    if ((st = attn_check_dims(ctx, "lse", lse, owant, what)) != ATTN_OK) return st;
  }
  if (q->strides[3] != 1 && Dk != 1)
    return attn_fail(ctx, ATTN_ERR_LAYOUT, "q: last dim stride is %" PRId64 "; it must be 1",
                     q->strides[3]);
  if (out->strides[3] != 1 && Dv != 1)
    return attn_fail(ctx, ATTN_ERR_LAYOUT, "out: last dim stride is %" PRId64 "; it must be 1",
                     out->strides[3]);
  return ATTN_OK;
}

static attn_status check_tensors(attn_kvcache_plan *p, const attn_tensor *q,
                                 const attn_tensor *out, const attn_tensor *lse) {
  const attn_kvcache *c = p->cache;
  attn_kv_step s;
  attn_status st =
      attn_kv_check_step(p->ctx, c->dtype, c->B, c->Hkv, c->Dk, c->Dv, q, out, lse, "B", &s);
  if (st != ATTN_OK) return st;
  p->B = c->B;
  p->Hkv = c->Hkv;
  p->Dk = c->Dk;
  p->Dv = c->Dv;
  p->H = s.H;
  p->n = s.n;
  p->G = s.H / c->Hkv;
  return ATTN_OK;
}

attn_status attn_kv_check_sinks(attn_context *ctx, const attn_desc *desc, int64_t H,
                                attn_dtype dt) {
  if (desc->sinks.logits == NULL) return ATTN_OK;
  if (desc->sinks.n != H)
    return attn_fail(ctx, ATTN_ERR_SHAPE, "sinks: %" PRId64 " logits given, q has %" PRId64 " heads",
                     desc->sinks.n, H);
  return attn_check_sinks(ctx, desc->sinks.logits, H, dt);
}

attn_status attn_kv_check_mass(attn_context *ctx, const attn_tensor *m, attn_dtype dt,
                               int64_t rows, int64_t H, int64_t Hkv, int64_t len,
                               const char *shape_doc, const char *cache_name) {
  char a[96];
  attn_status st = attn_check_tensor(ctx, "mass", m, 3, dt);
  if (st != ATTN_OK) return st;
  if (m->shape[0] != rows || (m->shape[1] != H && m->shape[1] != Hkv) || m->shape[2] != len)
    return attn_fail(ctx, ATTN_ERR_SHAPE,
                     "mass: shape %s, expected %s = [%" PRId64 ", %" PRId64 " or %" PRId64
                     ", %" PRId64 "]",
                     attn_shape_str(m, a, sizeof a), shape_doc, rows, H, Hkv, len);
  if (m->strides[2] != 1 || m->strides[1] != len || m->strides[0] != m->shape[1] * len)
    return attn_fail(ctx, ATTN_ERR_LAYOUT, "mass: must be contiguous with %s", cache_name);
  return ATTN_OK;
}

/* The per-key mass tensor: [B, H or H_kv, capacity], contiguous. */
static attn_status check_mass(attn_kvcache_plan *p, attn_tensor *m) {
  if (m == NULL) return ATTN_OK;
  if (p->cache->keep > 0)
    return attn_fail(p->ctx, ATTN_ERR_UNSUPPORTED,
                     "key_mass: not with a cache that keeps its first positions (keep_first)");
  attn_status st = attn_kv_check_mass(p->ctx, m, p->dtype, p->B, p->H, p->Hkv, p->cache->cap,
                                      "[B, H or H_kv, capacity]", "a KV cache");
  if (st != ATTN_OK) return st;
  p->mass = m;
  p->mass_grouped = m->shape[1] != p->H;
  return ATTN_OK;
}

/* Lays out the per-thread slots and the split path's partials; false on overflow. */
static bool size_workspace(attn_kvcache_plan *p, int32_t threads, size_t *bytes) {
  const size_t es = attn_dtype_size(p->dtype);
  p->split = p->n <= ATTN_KV_SPLIT_MAX_N;
  p->bq = p->split ? p->n : attn_max64(1, ATTN_KV_BLOCK_ROWS / p->G);
  p->bq = attn_min64(p->bq, p->n);
  p->bk = ATTN_KV_CHUNK;
  if (!attn_mul_ok(p->G, p->bq, &p->R)) return false;
  const int64_t R = p->R;
  attn_carver c = attn_carver_start();
  p->at.Qs = attn_carve(&c, es, R, p->Dk, 1);
  p->at.S = attn_carve(&c, es, R, p->bk, 1);
  p->at.O = attn_carve(&c, es, R, p->Dv, 1);
  p->at.M = attn_carve(&c, es, R, 1, 1);
  p->at.L = attn_carve(&c, es, R, 1, 1);
  const bool widened = p->cache->storage != ATTN_KVCACHE_STORE_NATIVE;
  p->at.Kf = attn_carve(&c, sizeof(float), widened ? p->bk : 0, p->Dk, 1);
  p->at.Vf = attn_carve(&c, sizeof(float), widened ? p->bk : 0, p->Dv, 1);
  p->at.Qd = attn_carve(&c, sizeof(float), p->qops ? attn_kvq_scratch(R, p->Dk) : 0, 1, 1);
  attn_carver part = attn_carver_start();
  attn_carve(&part, es, R, p->Dv, 1);
  p->pat.M = attn_carve(&part, es, R, 1, 1);
  p->pat.L = attn_carve(&part, es, R, 1, 1);
  int64_t total;
  if (!c.ok || !part.ok || !attn_mul_ok(c.bytes, threads, &total)) return false;
  p->slot_bytes = (size_t)c.bytes;
  p->part_bytes = (size_t)part.bytes;
  p->wave = 0;
  attn_carver sh = attn_carver_start();
  if (p->split) {
    /* Enough chunks for the current capacity, within the budget (≥ 1). */
    int64_t bkh = p->B * p->Hkv, per_chunk, want = attn_cdiv64(p->cache->cap, ATTN_KV_CHUNK) + 1;
    if (!attn_mul_ok(bkh, part.bytes, &per_chunk)) return false;
    int64_t fit = (int64_t)(ATTN_KV_PARTIAL_BUDGET / (size_t)per_chunk);
    p->wave = attn_max64(1, attn_min64(want, fit));
    p->part_at = attn_carve(&sh, p->part_bytes, bkh, p->wave, 1);
    p->acc_at = attn_carve(&sh, p->part_bytes, bkh, 1, 1);
    if (p->mass != NULL) {
      p->mass_cap = p->cache->cap;
      p->mass_tiles = attn_cdiv64(p->mass_cap, ATTN_KV_CHUNK) + 1;
      p->mass_p_at = attn_carve(&sh, es, bkh * R, p->mass_cap, 1);
      p->mass_m_at = attn_carve(&sh, es, bkh * R, p->mass_tiles, 1);
    }
  } else if (p->mass != NULL) {
    p->mass_cap = p->cache->cap;
    p->mass_lse_at = attn_carve(&sh, es, p->B * p->H, p->n, 1);
  }
  if (!sh.ok || !attn_add_ok(total, sh.bytes, &total)) return false;
  p->shared_bytes = (size_t)sh.bytes;
  *bytes = (size_t)total;
  return true;
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
  attn_status st = check_desc(ctx, desc, lse != NULL);
  if (st != ATTN_OK) return st;

  attn_kvcache_plan tmp;
  memset(&tmp, 0, sizeof tmp);
  tmp.ctx = ctx;
  tmp.cache = cache;
  tmp.desc = *desc;
  tmp.dtype = cache->dtype;
  if ((st = check_tensors(&tmp, q, out, lse)) != ATTN_OK) return st;
  tmp.scale = desc->score.scale > 0.0 ? desc->score.scale
                                       : attn_default_scale(desc->score.kind, tmp.Dk);
  /* Key index = absolute position, S_q = the step's n queries; positions
   * are always bottom-right aligned, causal or not. */
  const attn_mask_geom g = {tmp.dtype, tmp.B, tmp.H, tmp.n, ATTN_KV_MASK_SK,
                            desc->mask.causal == ATTN_CAUSAL_BOTTOM_RIGHT, true};
  if ((st = attn_mask_init(&tmp.mask, ctx, desc, &g)) != ATTN_OK) return st;
  if ((st = attn_kv_check_sinks(ctx, desc, tmp.H, tmp.dtype)) != ATTN_OK) return st;
  if ((st = check_mass(&tmp, desc->mass)) != ATTN_OK) return st;
  attn_tmeta_record(&tmp.meta[KV_META_Q], q);
  attn_tmeta_record(&tmp.meta[KV_META_OUT], out);
  attn_tmeta_record(&tmp.meta[KV_META_LSE], lse);

  /* Few stacked rows in f32: the hand-vectorised loops, if the CPU (and
   * $ATTN_CPU, through the vector-math dispatch) allows AVX-512 (f32, bf16)
   * or AVX-512/AVX2 (f16, int8, int4); else the GEMM path, which widens or
   * dequantizes each tile into the slot's scratch. */
  const char *isa = attn_vmath_get()->isa;
  const bool avx512 = strcmp(isa, "avx512") == 0 && attn_kv_simd_available();
  const bool few = tmp.n <= ATTN_KV_SPLIT_MAX_N && tmp.G * tmp.n <= ATTN_KV_SIMD_ROWS;
  const bool wide = cache->storage == ATTN_KVCACHE_STORE_NATIVE || cache->bf16;
  tmp.simd = tmp.dtype == ATTN_DTYPE_F32 && few && wide && avx512;
  tmp.qops = few && !wide ? attn_kvq_ops_for(isa, cache) : NULL;
  tmp.widen = cache->bf16 ? (avx512 ? attn_kv_widen_bf16_avx512 : attn_bf16_traits.to_f32) : NULL;
  if (!size_workspace(&tmp, ctx->num_threads, &tmp.workspace_bytes))
    return attn_fail(ctx, ATTN_ERR_OVERFLOW, "q: workspace size for %" PRId64 " heads × %" PRId64
                     " queries overflows", tmp.H, tmp.n);
  if ((st = attn_threadpool_ensure(ctx)) != ATTN_OK) return st;
  attn_kvcache_plan *p = attn_alloc(ctx, sizeof *p);
  void *ws = attn_calloc(ctx, tmp.workspace_bytes); /* touched now, not in the first step */
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
  if (plan->desc.sinks.logits != NULL &&
      (mst = attn_check_sinks(ctx, plan->desc.sinks.logits, plan->H, plan->dtype)) != ATTN_OK)
    return mst;

  /* Lengths are read at every execute: the cache's own arrays never move. */
  attn_mask mask = plan->mask;
  attn_mask_bind(&mask, &plan->desc);
  mask.key_len = plan->cache->len;
  mask.query_len = query_counts;

  const bool f32 = plan->dtype == ATTN_DTYPE_F32;
  /* FLOPs over the stored keys: a hint for running tiny steps on the caller. */
  double flops = 0;
  for (int64_t b = 0; b < plan->B; b++)
    flops += 4.0 * (double)plan->H * (double)plan->n * (double)(plan->cache->len[b] - plan->cache->first[b]) *
             (double)plan->Dk;
  const attn_ws ws = {plan->workspace, (char *)plan->workspace + plan->shared_bytes,
                      plan->slot_bytes};
  kv_args a = {plan, &mask, ws, q, out, lse, 0, 0, true, plan->mass};
  if (plan->mass != NULL) {
    if (plan->mass->data == NULL)
      return attn_fail(ctx, ATTN_ERR_NULL_ARG, "mass: the tensor's data is NULL");
    for (int64_t b = 0; b < plan->B; b++)
      if (plan->cache->len[b] - plan->cache->first[b] > plan->mass_cap)
        return attn_fail(ctx, ATTN_ERR_MISMATCH,
                         "mass: the cache grew past the capacity %" PRId64 " of the plan's mass "
                         "tensor; make a new plan",
                         plan->mass_cap);
  }
  if (!plan->split) {
    attn_status st =
        attn_parallel_for_cost(ctx, attn_cdiv64(plan->n, plan->bq) * plan->B * plan->Hkv, flops,
                               f32 ? kv_block_task_f32 : kv_block_task_f64, &a);
    if (st == ATTN_OK && plan->mass != NULL) /* second pass: scores again, from the lse */
      st = attn_parallel_for_cost(ctx, plan->B * plan->Hkv, flops / 2,
                                  f32 ? kv_mass_block_task_f32 : kv_mass_block_task_f64, &a);
    return st;
  }

  int64_t chunks = 0; /* most chunks any item needs */
  for (int64_t b = 0; b < plan->B; b++) {
    int64_t lo, hi;
    attn_kv_key_range(plan, &mask, b, 0, plan->n, &lo, &hi);
    if (lo < hi)
      chunks = attn_max64(chunks, (hi - 1) / ATTN_KV_CHUNK - lo / ATTN_KV_CHUNK + 1);
  }
  if (plan->cache->keep > 0) chunks++; /* chunk 0: the kept first positions */
  const int64_t nwaves = attn_max64(1, attn_cdiv64(chunks, plan->wave));
  const int64_t bkh = plan->B * plan->Hkv;
  for (int64_t w = 0; w < nwaves; w++) {
    a.w = w;
    a.wn = attn_min64(plan->wave, chunks - w * plan->wave);
    a.last_wave = w == nwaves - 1;
    attn_status st;
    if (a.wn > 0 &&
        (st = attn_parallel_for_cost(ctx, bkh * a.wn, flops,
                                     f32 ? kv_chunk_task_f32 : kv_chunk_task_f64, &a)) != ATTN_OK)
      return st;
    if ((st = attn_parallel_for_cost(ctx, bkh, (double)(bkh * a.wn * plan->R * plan->Dv) * 4.0,
                                     f32 ? kv_merge_task_f32 : kv_merge_task_f64, &a)) != ATTN_OK)
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

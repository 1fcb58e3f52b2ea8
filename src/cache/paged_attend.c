/* Attention of a ragged batch (N sequences, each with its own length and
 * its own new queries) against a paged KV cache, in one call.
 *
 * The same algorithm as the contiguous cache (cache/attend.c): decode steps
 * (n ≤ ATTN_PG_SPLIT_MAX_N) are split-KV over chunks at fixed absolute
 * positions, merged in chunk order; prefill chunks are query blocks walking
 * their keys tile by tile. Masking is the mask module's, resolved once with
 * bottom-right alignment: at every execute the key lengths are the
 * sequences' lengths and the query lengths the rows' counts, so query i of
 * row b sits at position L_b − n_b + i. The loops are in paged_impl.inc. */
#include <inttypes.h>
#include <math.h>
#include <string.h>

#include "blas/gemm.h"
#include "cache/attend.h"
#include "cache/attend_q.h"
#include "cache/attend_simd.h"
#include "cache/paged_attend.h"
#include "kernels/vmath.h"

/* The mask module's S_k: larger than any position. */
#define ATTN_PG_MASK_SK ((int64_t)1 << 61)

#define ATTN_TMPL_FILE "cache/paged_impl.inc"
#include "core/tmpl.h"

enum { PG_META_Q, PG_META_OUT, PG_META_LSE };
static const char *const pg_meta_names[3] = {"q", "out", "lse"};

/* What a paged plan supports: the contiguous cache's options. */
static const attn_support pg_support = {
    "a paged KV cache",
    ATTN_OPT(ATTN_OPT_CAUSAL_BR) | ATTN_OPT(ATTN_OPT_WINDOW) | ATTN_OPT(ATTN_OPT_ALIBI) |
        ATTN_OPT(ATTN_OPT_SOFTCAP) | ATTN_OPT(ATTN_OPT_SCALE) | ATTN_OPT(ATTN_OPT_LSE) |
        ATTN_OPT(ATTN_OPT_SINKS) | ATTN_OPT(ATTN_OPT_MASS),
    {[ATTN_OPT_CAUSAL_TL] = "TOP_LEFT does not apply to a cache; use ATTN_CAUSAL_BOTTOM_RIGHT "
                            "(queries are the newest positions)",
     [ATTN_OPT_KEY_LENGTHS] = "not accepted; the sequences supply key lengths and "
                              "attn_paged_plan_execute() takes query counts",
     [ATTN_OPT_QUERY_LENGTHS] = "not accepted; the sequences supply key lengths and "
                                "attn_paged_plan_execute() takes query counts",
     [ATTN_OPT_BOOL_MASK] = "not supported with a KV cache (use window/ALiBi/softcap)",
     [ATTN_OPT_ADD_MASK] = "not supported with a KV cache (use window/ALiBi/softcap)",
     [ATTN_OPT_SCORE_GENERAL] = "the KV cache supports the scaled-dot and dot scores",
     [ATTN_OPT_SCORE_ADDITIVE] = "the KV cache supports the scaled-dot and dot scores"},
    "the paged cache stores f32, f64, bf16, f16, int8 or int4 rows; q and out are f32 or f64"};

static attn_status check_tensors(attn_paged_plan *p, const attn_tensor *q, const attn_tensor *out,
                                 const attn_tensor *lse) {
  const attn_paged_cache *c = p->cache;
  attn_kv_step s;
  attn_status st =
      attn_kv_check_step(p->ctx, c->dtype, -1, c->Hkv, c->Dk, c->Dv, q, out, lse, "N", &s);
  if (st != ATTN_OK) return st;
  char a[96];
  if (s.rows < 1 || s.n < 1)
    return attn_fail(p->ctx, ATTN_ERR_SHAPE, "q: shape %s needs N >= 1 rows and n >= 1 queries",
                     attn_shape_str(q, a, sizeof a));
  p->N = s.rows;
  p->Hkv = c->Hkv;
  p->Dk = c->Dk;
  p->Dv = c->Dv;
  p->H = s.H;
  p->n = s.n;
  p->G = s.H / c->Hkv;
  return ATTN_OK;
}

/* The per-key mass tensor: [N, H or H_kv, max_seq_len] of the plan's dtype,
 * contiguous; key j = position j of the row's sequence. */
static attn_status check_mass(attn_paged_plan *p, attn_tensor *m) {
  if (m == NULL) return ATTN_OK;
  attn_status st = attn_kv_check_mass(p->ctx, m, p->dtype, p->N, p->H, p->Hkv, p->cache->max_len,
                                      "[N, H or H_kv, max_seq_len]", "a paged cache");
  if (st != ATTN_OK) return st;
  p->mass = m;
  p->mass_grouped = m->shape[1] != p->H;
  return ATTN_OK;
}

/* Lays out the per-thread slots and the shared area; false on overflow. */
static bool size_workspace(attn_paged_plan *p, int32_t threads, size_t *bytes) {
  const size_t es = attn_dtype_size(p->dtype);
  p->split = p->n <= ATTN_PG_SPLIT_MAX_N;
  p->bq = p->split ? p->n : attn_max64(1, ATTN_PG_BLOCK_ROWS / p->G);
  p->bq = attn_min64(p->bq, p->n);
  p->bk = ATTN_PG_CHUNK;
  if (!attn_mul_ok(p->G, p->bq, &p->R)) return false;
  const int64_t R = p->R;
  attn_carver c = attn_carver_start();
  p->at.Qs = attn_carve(&c, es, R, p->Dk, 1);
  p->at.S = attn_carve(&c, es, R, p->bk, 1);
  p->at.O = attn_carve(&c, es, R, p->Dv, 1);
  p->at.M = attn_carve(&c, es, R, 1, 1);
  p->at.L = attn_carve(&c, es, R, 1, 1);
  p->at.Kf = attn_carve(&c, es, p->bk, p->Dk, 1);
  p->at.Vf = attn_carve(&c, es, p->bk, p->Dv, 1);
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
  int64_t nkh;
  if (!attn_mul_ok(p->N, p->Hkv, &nkh)) return false;
  if (p->split) {
    /* Enough chunks for the longest sequence, within the budget (≥ 1). */
    int64_t per_chunk, want = attn_cdiv64(p->cache->max_len, ATTN_PG_CHUNK) + 1;
    if (!attn_mul_ok(nkh, part.bytes, &per_chunk)) return false;
    int64_t fit = (int64_t)(ATTN_PG_PARTIAL_BUDGET / (size_t)per_chunk);
    p->wave = attn_max64(1, attn_min64(want, fit));
    p->part_at = attn_carve(&sh, p->part_bytes, nkh, p->wave, 1);
    p->acc_at = attn_carve(&sh, p->part_bytes, nkh, 1, 1);
  }
  p->klen_at = attn_carve(&sh, sizeof(int64_t), p->N, 1, 1);
  p->qcnt_at = attn_carve(&sh, sizeof(int64_t), p->N, 1, 1);
  p->seq_at = attn_carve(&sh, sizeof(int64_t), p->N, 1, 1);
  if (p->mass != NULL) p->mass_lse_at = attn_carve(&sh, es, p->N * p->H, p->n, 1);
  if (!sh.ok || !attn_add_ok(total, sh.bytes, &total)) return false;
  p->shared_bytes = (size_t)sh.bytes;
  *bytes = (size_t)total;
  return true;
}

attn_status attn_paged_plan_create(attn_context *ctx, attn_paged_cache *cache,
                                   const attn_desc *desc, const attn_tensor *q,
                                   const attn_tensor *out, const attn_tensor *lse,
                                   attn_paged_plan **plan) {
  ATTN_CHECK_NULL(ctx, ctx);
  attn_clear_error(ctx);
  ATTN_CHECK_NULL(ctx, cache);
  ATTN_CHECK_NULL(ctx, desc);
  ATTN_CHECK_NULL(ctx, q);
  ATTN_CHECK_NULL(ctx, out);
  ATTN_CHECK_NULL(ctx, plan);
  if (desc->variant != ATTN_VARIANT_EXACT)
    return attn_fail(ctx, ATTN_ERR_UNSUPPORTED,
                     "desc: the paged KV cache computes exact attention (variant %d given)",
                     (int)desc->variant);
  attn_status st = attn_options_check(ctx, &pg_support, attn_options_used(desc, false, lse != NULL));
  if (st != ATTN_OK) return st;

  attn_paged_plan tmp;
  memset(&tmp, 0, sizeof tmp);
  tmp.ctx = ctx;
  tmp.cache = cache;
  tmp.desc = *desc;
  tmp.dtype = cache->dtype;
  if ((st = check_tensors(&tmp, q, out, lse)) != ATTN_OK) return st;
  tmp.scale = desc->score.scale > 0.0 ? desc->score.scale
                                       : attn_default_scale(desc->score.kind, tmp.Dk);
  const attn_mask_geom g = {tmp.dtype, tmp.N, tmp.H, tmp.n, ATTN_PG_MASK_SK,
                            desc->mask.causal == ATTN_CAUSAL_BOTTOM_RIGHT, true};
  if ((st = attn_mask_init(&tmp.mask, ctx, desc, &g)) != ATTN_OK) return st;
  if ((st = attn_kv_check_sinks(ctx, desc, tmp.H, tmp.dtype)) != ATTN_OK) return st;
  if ((st = check_mass(&tmp, desc->mass)) != ATTN_OK) return st;
  attn_tmeta_record(&tmp.meta[PG_META_Q], q);
  attn_tmeta_record(&tmp.meta[PG_META_OUT], out);
  attn_tmeta_record(&tmp.meta[PG_META_LSE], lse);
  /* Few stacked rows in f32 (decode): the hand-vectorised loops if the CPU
   * (and $ATTN_CPU) allows, AVX-512 for f32/bf16 rows, AVX-512 or AVX2 for
   * f16/int8/int4; else GEMM on rows widened or dequantized per tile. */
  const char *isa = attn_vmath_get()->isa;
  const bool avx512 = strcmp(isa, "avx512") == 0 && attn_kv_simd_available();
  const bool wide = cache->storage == ATTN_KVCACHE_STORE_NATIVE || cache->bf16;
  /* n first, so G·n cannot overflow */
  const bool few = tmp.n <= ATTN_KV_SIMD_ROWS && tmp.G * tmp.n <= ATTN_KV_SIMD_ROWS;
  const bool f32 = tmp.dtype == ATTN_DTYPE_F32;
  tmp.simd = f32 && few && wide && avx512;
  tmp.qops = f32 && few && !wide ? attn_kvq_ops_for(isa, &cache->fmt) : NULL;
  tmp.widen = cache->bf16 ? (avx512 ? attn_kv_widen_bf16_avx512 : attn_bf16_traits.to_f32) : NULL;
  if (!size_workspace(&tmp, ctx->num_threads, &tmp.workspace_bytes))
    return attn_fail(ctx, ATTN_ERR_OVERFLOW,
                     "q: workspace size for %" PRId64 " rows × %" PRId64 " heads × %" PRId64
                     " queries overflows",
                     tmp.N, tmp.H, tmp.n);
  if ((st = attn_threadpool_ensure(ctx)) != ATTN_OK) return st;
  attn_paged_plan *p = attn_alloc(ctx, sizeof *p);
  void *ws = attn_calloc(ctx, tmp.workspace_bytes);
  if (p == NULL || ws == NULL) {
    attn_free(ctx, p, sizeof *p);
    attn_free(ctx, ws, tmp.workspace_bytes);
    return attn_fail(ctx, ATTN_ERR_NO_MEMORY,
                     "attn_paged_plan_create: cannot allocate %zu bytes of workspace",
                     tmp.workspace_bytes);
  }
  *p = tmp;
  p->workspace = ws;
  *plan = p;
  return ATTN_OK;
}

/* The per-key mass's second pass (after out and lse): rows count..N−1 of
 * the mass tensor are not touched. */
static attn_status mass_pass(const attn_paged_plan *plan, pg_args *a, double flops) {
  if (plan->mass == NULL) return ATTN_OK;
  return attn_parallel_for_cost(plan->ctx, a->count * plan->Hkv, flops / 2,
                                plan->dtype == ATTN_DTYPE_F32 ? pg_mass_task_f32 : pg_mass_task_f64,
                                a);
}

attn_status attn_paged_plan_execute(attn_paged_plan *plan, int64_t count, const int64_t *seq_ids,
                                    const attn_tensor *q, attn_tensor *out, attn_tensor *lse,
                                    const int64_t *query_counts) {
  if (plan == NULL) return ATTN_ERR_NULL_ARG;
  attn_context *ctx = plan->ctx;
  attn_clear_error(ctx);
  const attn_tensor *ts[3] = {q, out, lse};
  const bool required[3] = {true, true, false};
  attn_status st = attn_tmeta_check_all(ctx, plan->meta, ts, pg_meta_names, required, 3);
  if (st != ATTN_OK) return st;
  if (count < 0 || count > plan->N)
    return attn_fail(ctx, ATTN_ERR_INVALID_ARG,
                     "count: %" PRId64 " is outside [0, N = %" PRId64 "]", count, plan->N);
  if (count == 0) return ATTN_OK;
  ATTN_CHECK_NULL(ctx, seq_ids);
  if (plan->desc.sinks.logits != NULL &&
      (st = attn_check_sinks(ctx, plan->desc.sinks.logits, plan->H, plan->dtype)) != ATTN_OK)
    return st;
  if (plan->mass != NULL && plan->mass->data == NULL)
    return attn_fail(ctx, ATTN_ERR_NULL_ARG, "mass: the tensor's data is NULL");
  const attn_paged_cache *c = plan->cache;
  char *shared = plan->workspace;
  int64_t *klen = (int64_t *)(void *)(shared + plan->klen_at);
  int64_t *qcnt = (int64_t *)(void *)(shared + plan->qcnt_at);
  int64_t *seqs = (int64_t *)(void *)(shared + plan->seq_at);
  /* Validate every row first, then snapshot (the workspace is the plan's). */
  for (int64_t b = 0; b < count; b++) {
    const int64_t s = seq_ids[b];
    if (s < 0 || s >= c->max_seqs)
      return attn_fail(ctx, ATTN_ERR_INVALID_ARG,
                       "seq_ids[%" PRId64 "]: %" PRId64 " is outside [0, max_seqs = %" PRId64 ")",
                       b, s, c->max_seqs);
    const int64_t len = c->len[s];
    if (len < 0)
      return attn_fail(ctx, ATTN_ERR_INVALID_ARG,
                       "seq_ids[%" PRId64 "]: sequence %" PRId64 " is not live", b, s);
    const int64_t nb = query_counts ? query_counts[b] : plan->n;
    if (nb < 0 || nb > plan->n || nb > len)
      return attn_fail(ctx, ATTN_ERR_INVALID_ARG,
                       "query_counts[%" PRId64 "]: %" PRId64 " is outside [0, min(n = %" PRId64
                       ", length of sequence %" PRId64 " = %" PRId64 ")]",
                       b, nb, plan->n, s, len);
  }
  double flops = 0;
  for (int64_t b = 0; b < count; b++) {
    seqs[b] = seq_ids[b];
    klen[b] = c->len[seq_ids[b]];
    qcnt[b] = query_counts ? query_counts[b] : plan->n;
    flops += 4.0 * (double)plan->H * (double)plan->n * (double)klen[b] * (double)plan->Dk;
  }
  attn_mask mask = plan->mask;
  attn_mask_bind(&mask, &plan->desc);
  mask.key_len = klen;
  mask.query_len = qcnt;

  const bool f32 = plan->dtype == ATTN_DTYPE_F32;
  const attn_ws ws = {shared, shared + plan->shared_bytes, plan->slot_bytes};
  pg_args a = {plan, &mask, ws, q, out, lse, klen, seqs, count, 0, 0, true};
  if (!plan->split) {
    if ((st = attn_parallel_for_cost(ctx, attn_cdiv64(plan->n, plan->bq) * count * plan->Hkv,
                                     flops, f32 ? pg_block_task_f32 : pg_block_task_f64, &a)) !=
        ATTN_OK)
      return st;
    return mass_pass(plan, &a, flops);
  }

  int64_t chunks = 0; /* most chunks any row needs */
  for (int64_t b = 0; b < count; b++) {
    int64_t lo, hi;
    pg_key_range_f64(&a, b, 0, plan->n, &lo, &hi);
    if (lo < hi) chunks = attn_max64(chunks, (hi - 1) / ATTN_PG_CHUNK - lo / ATTN_PG_CHUNK + 1);
  }
  const int64_t nwaves = attn_max64(1, attn_cdiv64(chunks, plan->wave));
  const int64_t nkh = count * plan->Hkv;
  for (int64_t w = 0; w < nwaves; w++) {
    a.w = w;
    a.wn = attn_min64(plan->wave, chunks - w * plan->wave);
    a.last_wave = w == nwaves - 1;
    if (a.wn > 0 &&
        (st = attn_parallel_for_cost(ctx, nkh * a.wn, flops,
                                     f32 ? pg_chunk_task_f32 : pg_chunk_task_f64, &a)) != ATTN_OK)
      return st;
    if ((st = attn_parallel_for_cost(ctx, nkh, (double)(nkh * a.wn * plan->R * plan->Dv) * 4.0,
                                     f32 ? pg_merge_task_f32 : pg_merge_task_f64, &a)) != ATTN_OK)
      return st;
  }
  return mass_pass(plan, &a, flops);
}

size_t attn_paged_plan_workspace_size(const attn_paged_plan *plan) {
  return plan == NULL ? 0 : plan->workspace_bytes;
}

void attn_paged_plan_destroy(attn_paged_plan *plan) {
  if (plan == NULL) return;
  attn_free(plan->ctx, plan->workspace, plan->workspace_bytes);
  attn_free(plan->ctx, plan, sizeof *plan);
}

/*
 * libattn — KV cache for step-by-step decoding.
 * Included by attn/attn.h; may also be included on its own.
 *
 * One ::attn_kvcache per layer stores the keys and values of every position a
 * sequence has produced so far, for B batch items that may have different
 * lengths. A generation step appends the new rows (attn_kvcache_append())
 * and then lets the new queries attend to everything stored
 * (attn_kvcache_plan_execute()):
 *
 *     cache:  K [B, H_kv, capacity, d_k],  V [B, H_kv, capacity, d_v]
 *     step:   append k_new [B, H_kv, n, d_k], v_new [B, H_kv, n, d_v]
 *             attend q [B, H, n, d_k] → out [B, H, n, d_v]   (H_kv divides H)
 *
 * Positions are absolute: batch item b holds positions [first_b, len_b)
 * (first_b = 0 in linear mode). After appending n_b rows, query i of item b
 * (i < n_b) sits at position len_b − n_b + i (bottom-right alignment: the
 * last query is the newest position). Causal masking, sliding windows and
 * ALiBi distances use these absolute positions, so they stay correct after a
 * ring buffer wraps.
 *
 * Modes
 *  - ATTN_KVCACHE_LINEAR: positions 0..capacity−1. Appending past capacity
 *    fails with ATTN_ERR_CAPACITY, unless the cache was created with @c grow:
 *    then the append reallocates (capacity doubles or grows to fit). Growth
 *    is the only path that allocates after creation.
 *  - ATTN_KVCACHE_RING: keeps the last W = capacity positions; position p
 *    lives in row p mod W. Attending with no window over a ring cache is
 *    sliding-window attention with left = W − 1. Rolling back r positions
 *    (attn_kvcache_truncate()) cannot restore evicted rows: to keep a window
 *    of w positions exact across rollbacks of up to r, use capacity ≥ w + r
 *    and set attn_desc_set_window(desc, w − 1, 0). Likewise, attending n > 1
 *    new queries in ring mode is exact only if the first query's window
 *    (w positions) is still stored: capacity ≥ w + n − 1.
 *
 * Thread-safety: a cache and its plans belong to the context they were made
 * with (one thread at a time).
 */
#ifndef ATTN_KVCACHE_H
#define ATTN_KVCACHE_H

#include "attn/attn.h"

#ifdef __cplusplus
extern "C" {
#endif

/** @defgroup kvcache KV cache
 *  @{ */

/** Opaque KV cache (one per layer). */
typedef struct attn_kvcache attn_kvcache;

/** Storage modes. Values are ABI. */
typedef enum attn_kvcache_mode {
  ATTN_KVCACHE_LINEAR = 0, /**< positions 0..capacity−1; full → ATTN_ERR_CAPACITY (or grow) */
  ATTN_KVCACHE_RING = 1    /**< the last capacity positions; older ones are overwritten */
} attn_kvcache_mode;

/** How K and V rows are stored. Values are ABI. */
typedef enum attn_kvcache_storage {
  ATTN_KVCACHE_STORE_NATIVE = 0, /**< in the cache's dtype */
  ATTN_KVCACHE_STORE_BF16 = 1    /**< f32 caches only: bfloat16 (8-bit mantissa), half the
                                      bytes to store and to read per decode step. Appends
                                      round to nearest even, so every stored element is
                                      within a relative 2^-9 of what was appended; the
                                      attention itself runs in f32. */
} attn_kvcache_storage;

/** Options for attn_kvcache_create(). Always initialise with
 *  attn_kvcache_config_init(): the struct may grow at the end, and
 *  @c struct_size tells the library which fields the caller knows. */
typedef struct attn_kvcache_config {
  size_t struct_size;     /**< sizeof(attn_kvcache_config), set by init */
  int64_t batch;          /**< B ≥ 1 (default 1) */
  int64_t heads_kv;       /**< H_kv ≥ 1 key/value heads (default 1) */
  int64_t capacity;       /**< positions stored per batch item, ≥ 1 (no default: 0) */
  int64_t d_k;            /**< key head dim ≥ 1 (no default: 0) */
  int64_t d_v;            /**< value head dim ≥ 1; 0 = same as d_k (default) */
  attn_dtype dtype;       /**< ATTN_DTYPE_F32 (default) or ATTN_DTYPE_F64 */
  attn_kvcache_mode mode; /**< default ATTN_KVCACHE_LINEAR */
  int32_t grow;           /**< linear mode only: non-zero = appends past capacity
                               reallocate instead of failing (default 0) */
  attn_kvcache_storage storage; /**< default ATTN_KVCACHE_STORE_NATIVE */
} attn_kvcache_config;

/** Fill @p cfg with the defaults above. NULL is a no-op. @since 0.1.0 */
ATTN_API void attn_kvcache_config_init(attn_kvcache_config *cfg);

/** Create an empty cache (every length 0). Storage for
 *  B·H_kv·capacity·(d_k + d_v) elements is allocated now, 64-byte aligned,
 *  through @p ctx's allocator (contents are zero until written).
 *  @param ctx  context (allocator, threads, errors); must outlive the cache.
 *  @param cfg  from attn_kvcache_config_init(), then filled in.
 *  @param out  receives the cache; untouched on failure.
 *  @return ATTN_OK, ATTN_ERR_NULL_ARG, ATTN_ERR_INVALID_ARG (bad struct_size,
 *          non-positive dims, unknown mode or storage, grow with ring mode),
 *          ATTN_ERR_DTYPE (not f32/f64; bf16 storage with f64),
 *          ATTN_ERR_OVERFLOW, ATTN_ERR_NO_MEMORY.
 *  @since 0.1.0 */
ATTN_API attn_status attn_kvcache_create(attn_context *ctx, const attn_kvcache_config *cfg,
                                         attn_kvcache **out);

/** StreamingLLM's attention-sink tokens: a ring cache keeps positions
 *  0..n−1 for good, besides its last capacity positions, in storage of its
 *  own (B·H_kv·n·(d_k + d_v) elements, allocated here). Attention sees them
 *  at their absolute positions like any stored key (masks apply as usual).
 *  Call on an empty cache (every length 0, e.g. right after creation or a
 *  truncate to 0); n = 0 frees the storage. Plans made before stay valid.
 *  Not with the per-key mass (plan creation: ATTN_ERR_UNSUPPORTED).
 *  @param cache  a ring-mode cache
 *  @param n      positions to keep, 0..capacity
 *  @return ATTN_OK, ATTN_ERR_NULL_ARG (cache), ATTN_ERR_INVALID_ARG (linear
 *          mode, n outside 0..capacity, or a non-empty cache; naming "n" or
 *          "cache"), ATTN_ERR_NO_MEMORY; on failure the cache is unchanged.
 *  @since 0.2.0 */
ATTN_API attn_status attn_kvcache_set_keep_first(attn_kvcache *cache, int64_t n);

/** Destroy a cache and its storage. NULL is a no-op. Plans and views made
 *  from it must be destroyed first. @since 0.1.0 */
ATTN_API void attn_kvcache_destroy(attn_kvcache *cache);

/** Append new positions: for each batch item b, rows 0..n_b−1 of
 *  k_new[b] / v_new[b] become positions len_b .. len_b + n_b − 1.
 *  @param cache   the cache to append to.
 *  @param k_new   [B, H_kv, n, d_k], the cache's dtype, any non-negative
 *                 strides (e.g. [B, n, H_kv, d] memory seen through strides).
 *                 Copied; the caller keeps it.
 *  @param v_new   [B, H_kv, n, d_v], same n.
 *  @param counts  [B] rows to take per batch item, each 0..n, or NULL for n
 *                 each (batch items advance independently).
 *  Linear mode: len_b + n_b must not exceed capacity, else ATTN_ERR_CAPACITY
 *  (or, with cfg.grow, the storage is reallocated first — views made before
 *  are then invalid; plans stay valid). Ring mode: the oldest rows are
 *  overwritten; if n_b > capacity only the last capacity rows are kept.
 *  Every check happens before any write: on failure the cache (contents,
 *  lengths, capacity) is unchanged.
 *  @return ATTN_OK, ATTN_ERR_NULL_ARG, ATTN_ERR_DTYPE, ATTN_ERR_SHAPE,
 *          ATTN_ERR_INVALID_ARG (counts out of range), ATTN_ERR_CAPACITY,
 *          ATTN_ERR_OVERFLOW, ATTN_ERR_NO_MEMORY (growth). @since 0.1.0 */
ATTN_API attn_status attn_kvcache_append(attn_kvcache *cache, const attn_tensor *k_new,
                                         const attn_tensor *v_new, const int64_t *counts);

/** Roll back: set item b's length to lengths[b] (≤ its current length),
 *  dropping the newest positions (e.g. rejected speculative tokens). Stored
 *  rows are not cleared. Ring mode: lengths[b] must be 0 or ≥ the oldest
 *  stored position (attn_kvcache_first()); evicted rows do not come back.
 *  Truncating every item to 0 resets the cache (also a ring that wrapped).
 *  @param cache   the cache to roll back.
 *  @param lengths [B] new lengths. Borrowed for the call only.
 *  @return ATTN_OK, ATTN_ERR_NULL_ARG, ATTN_ERR_INVALID_ARG (a length beyond
 *          the current one, negative, or below the oldest stored position);
 *          on failure nothing changes. @since 0.1.0 */
ATTN_API attn_status attn_kvcache_truncate(attn_kvcache *cache, const int64_t *lengths);

/** Number of positions item @p b has received (its next position).
 *  In ring mode this keeps counting past capacity. −1 for NULL or b outside
 *  0..B−1. @since 0.1.0 */
ATTN_API int64_t attn_kvcache_length(const attn_kvcache *cache, int64_t b);

/** Oldest position item @p b still stores: 0 in linear mode,
 *  max(0, length − capacity) in ring mode (or more after a rollback). The
 *  stored positions are [first, length). −1 for NULL or b out of range.
 *  @since 0.1.0 */
ATTN_API int64_t attn_kvcache_first(const attn_kvcache *cache, int64_t b);

/** Current capacity in positions per batch item (grows in linear mode with
 *  cfg.grow). 0 for NULL. @since 0.1.0 */
ATTN_API int64_t attn_kvcache_capacity(const attn_kvcache *cache);

/** Bytes the cache holds (K and V storage plus bookkeeping). 0 for NULL.
 *  @since 0.1.0 */
ATTN_API size_t attn_kvcache_memory_size(const attn_kvcache *cache);

/** Read-only views of the whole storage: *k = [B, H_kv, capacity, d_k] and
 *  *v = [B, H_kv, capacity, d_v] (C-contiguous), borrowing the cache's
 *  memory. Row r of item b holds position r (linear mode; valid for
 *  r < length) or the stored position p with p mod capacity = r (ring mode;
 *  valid for p in [first, length)). Rows outside the valid range hold stale
 *  data. The views must not be written through; they show later appends and
 *  truncations, and become invalid when the cache grows or is destroyed.
 *  Destroy them with attn_tensor_destroy().
 *  @return ATTN_OK, ATTN_ERR_NULL_ARG, ATTN_ERR_NO_MEMORY, ATTN_ERR_UNSUPPORTED
 *          (bf16 storage: attn_dtype has no bf16); on failure *k and *v are
 *          untouched. @since 0.1.0 */
ATTN_API attn_status attn_kvcache_view(attn_kvcache *cache, attn_tensor **k, attn_tensor **v);

/** Opaque attend plan: a descriptor bound to a cache and query shapes. */
typedef struct attn_kvcache_plan attn_kvcache_plan;

/** Prepare attention of new queries against @p cache.
 *
 *  For batch item b with n_b queries (see attn_kvcache_plan_execute()), query
 *  i at position t = len_b − n_b + i keeps stored key positions p in
 *  [first_b, len_b) with p ≤ t (if causal) and t − left ≤ p ≤ t + right (if a
 *  window is set), scores s = scale·q·k_p, then softcap, then ALiBi
 *  s −= slope_h·|t − p|; out = softmax-weighted sum of v_p, lse = log Σ e^s.
 *  A query that keeps no key gives out 0, lse −inf.
 *
 *  @param cache the cache the plan reads (must outlive the plan).
 *  @param desc  variant ATTN_VARIANT_EXACT; score ATTN_SCORE_SCALED_DOT
 *               (scale default 1/√d_k) or ATTN_SCORE_DOT (default 1); causal
 *               ATTN_CAUSAL_BOTTOM_RIGHT (the usual decoder) or ATTN_CAUSAL_NONE
 *               (e.g. cross-attention to a cached encoder); window, ALiBi
 *               (H slopes) and softcap as in attn.h, always aligned to the
 *               absolute positions above. Key/query lengths and dense masks
 *               are not accepted (the cache supplies the lengths). Copied,
 *               except the borrowed ALiBi slopes.
 *  @param q     [B, H, n, d_k], the cache's dtype, H a multiple of H_kv,
 *               last dim contiguous. n = 1 is a decode step, n > 1 a prefill
 *               or a speculative batch. Only its metadata is used here.
 *  @param out   [B, H, n, d_v], last dim contiguous.
 *  @param lse   optional [B, H, n].
 *  @param plan  receives the plan; untouched on failure.
 *  All workspace is allocated now; execute allocates nothing, also after the
 *  cache grows. The plan borrows @p cache (destroy the plan first).
 *  @return ATTN_OK, ATTN_ERR_NULL_ARG, ATTN_ERR_SHAPE, ATTN_ERR_DTYPE,
 *          ATTN_ERR_LAYOUT, ATTN_ERR_UNSUPPORTED, ATTN_ERR_INVALID_ARG,
 *          ATTN_ERR_OVERFLOW, ATTN_ERR_NO_MEMORY, ATTN_ERR_THREAD. @since 0.1.0 */
ATTN_API attn_status attn_kvcache_plan_create(attn_kvcache *cache, const attn_desc *desc,
                                              const attn_tensor *q, const attn_tensor *out,
                                              const attn_tensor *lse, attn_kvcache_plan **plan);

/** Attend: out (and lse) for the queries, against the cache's current
 *  contents. Usually called right after appending the same step's keys.
 *  @param plan  from attn_kvcache_plan_create().
 *  @param q     the plan's q shape, dtype and strides (data may differ).
 *  @param out   the plan's out shape; written only on success.
 *  @param lse   non-NULL exactly when the plan was created with lse.
 *  @param query_counts [B] queries per batch item (n_b, each 0..n; rows
 *               i ≥ n_b give out 0, lse −inf), or NULL for n each. Pass the
 *               counts given to attn_kvcache_append().
 *  q/out/lse must have the plan's dtype, shapes and strides (data pointers
 *  may differ). Allocates nothing. Decode (n ≤ 16): the stored key range is
 *  split into chunks at fixed multiples of 512 positions, spread over the
 *  context's threads, and the partial softmax states (max, sum, output) are
 *  merged in chunk order; each K/V row is read once for all H/H_kv query
 *  heads that share it. Larger n: tasks are (query block, batch item, kv
 *  head) walking their keys in order. Either way the result is bitwise
 *  identical for any thread count. f32 with at most 8 stacked query rows
 *  (H/H_kv · n) uses AVX-512 loops when the CPU has them (and $ATTN_CPU does
 *  not lower the choice), otherwise OpenBLAS, which runs single-threaded
 *  inside (the caller's setting is restored).
 *  @return ATTN_OK, ATTN_ERR_NULL_ARG, ATTN_ERR_MISMATCH,
 *          ATTN_ERR_INVALID_ARG (query_counts), ATTN_ERR_THREAD; on failure
 *          out and lse are not written. @since 0.1.0 */
ATTN_API attn_status attn_kvcache_plan_execute(attn_kvcache_plan *plan, const attn_tensor *q,
                                               attn_tensor *out, attn_tensor *lse,
                                               const int64_t *query_counts);

/** Bytes of workspace the plan holds. 0 for NULL. @since 0.1.0 */
ATTN_API size_t attn_kvcache_plan_workspace_size(const attn_kvcache_plan *plan);

/** Destroy an attend plan. NULL is a no-op. @since 0.1.0 */
ATTN_API void attn_kvcache_plan_destroy(attn_kvcache_plan *plan);

/** @} */

#ifdef __cplusplus
}
#endif

#endif /* ATTN_KVCACHE_H */

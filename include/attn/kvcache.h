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

/** How K and V rows are stored. Values are ABI.
 *
 *  The reduced storages exist because a decode step reads the whole cache
 *  once, so its time is the cache's bytes over the memory bandwidth. All of
 *  them need an f32 cache; the attention itself always runs in f32, reading
 *  the stored bytes directly and widening them in registers (no f32 copy of
 *  the cache is ever made).
 *
 *  Quantized storages (INT8, INT4) follow KIVI: keys have a few outlier
 *  channels and values do not, so
 *   - K is quantized per channel over groups of G = group_size consecutive
 *     positions: for group g = ⌊p / G⌋ and channel c,
 *     k[p][c] ≈ kmin[g][c] + kscale[g][c]·u[p][c];
 *   - V is quantized per position over groups of G consecutive channels:
 *     v[p][c] ≈ vmin[p][c/G] + vscale[p][c/G]·u[p][c];
 *  with u an unsigned integer of 8 bits (0..255) or 4 bits (0..15), and
 *  scale = (max − min)/(2^bits − 1) and min (the zero point) stored as IEEE
 *  half floats; u = round((x − min)/scale) clamped to the range. Zero points
 *  pay here: a group's min/max are not symmetric about 0 (a per-channel K
 *  group has the channel's mean offset), and folding min into the score is
 *  one multiply-add per group. Bytes per element, scales included:
 *  INT8 1 + 4/G, INT4 0.5 + 4/G (G = 64: 0.266 and 0.141 of f32).
 *
 *  Quantization happens once per token: V rows when they are appended;
 *  K rows when their group of G positions is complete. Until then the
 *  newest positions [G·⌊len/G⌋, len) of each (b, kv head) stay in f32 in a
 *  G-row residual buffer (KIVI's residual), which attention reads as it is.
 *  Ring caches: capacity must be a multiple of G, so a K group never wraps
 *  and its scales live in slot g mod (capacity / G), overwritten exactly
 *  when its rows are. Rollback (attn_kvcache_truncate()) within the
 *  incomplete group only moves the length; rolling back into a completed
 *  group moves that group's kept positions back into the residual as their
 *  dequantized values (what attention used for them), so they are quantized
 *  a second time when the group completes again. Values larger than the
 *  half-float range (|x| ≥ 65504·(2^bits − 1) spread within a group)
 *  saturate; non-finite inputs give non-finite outputs. */
typedef enum attn_kvcache_storage {
  ATTN_KVCACHE_STORE_NATIVE = 0, /**< in the cache's dtype */
  ATTN_KVCACHE_STORE_BF16 = 1,   /**< f32 caches only: bfloat16 (8-bit mantissa), half the
                                      bytes to store and to read per decode step. Appends
                                      round to nearest even, so every stored element is
                                      within a relative 2^-9 of what was appended; the
                                      attention itself runs in f32. */
  ATTN_KVCACHE_STORE_F16 = 2,    /**< f32 caches only: IEEE half (11-bit mantissa, range
                                      ±65504), round to nearest even: every element within a
                                      relative 2^-11 (normal range). Rows padded to a multiple
                                      of 16 elements. @since 0.2.0 */
  ATTN_KVCACHE_STORE_INT8 = 3,   /**< f32 caches only: 8-bit codes with half-float scales and
                                      zero points (see above); rows padded to a multiple of 32
                                      elements. @since 0.2.0 */
  ATTN_KVCACHE_STORE_INT4 = 4    /**< f32 caches only: 4-bit codes, two per byte (in each
                                      block of 32 elements, byte i holds element i in its low
                                      and element i + 16 in its high nibble), with half-float
                                      scales and zero points; rows padded to a multiple of 32
                                      elements. @since 0.2.0 */
} attn_kvcache_storage;

/** Default quantization group (positions per K scale, channels per V
 *  scale) when attn_kvcache_config::group_size is 0: measured at d = 128
 *  (see bench/README.md, "KV cache storages"); the largest power of two
 *  ≤ this that divides d_v (and, in ring mode, the capacity) is used. */
#define ATTN_KVCACHE_DEFAULT_GROUP 64

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
  int64_t group_size;     /**< INT8/INT4 storage: G, positions per K scale and channels per
                               V scale; must divide d_v and, in ring mode, the capacity.
                               0 = ATTN_KVCACHE_DEFAULT_GROUP adapted as described there
                               (default 0). Ignored by the other storages.
                               @since 0.2.0 */
} attn_kvcache_config;

/** Fill @p cfg with the defaults above. NULL is a no-op. @since 0.1.0 */
ATTN_API void attn_kvcache_config_init(attn_kvcache_config *cfg);

/** Create an empty cache (every length 0). Storage for
 *  B·H_kv·capacity·(d_k + d_v) elements is allocated now, 64-byte aligned,
 *  through @p ctx's allocator (contents are zero until written).
 *  @param ctx  context (allocator, threads, errors); must outlive the cache.
 *  @param cfg  from attn_kvcache_config_init(), then filled in.
 *  @param out  receives the cache; untouched on failure.
 *  Quantized storages also allocate their scales and the K residual
 *  (B·H_kv·G·d_k floats).
 *  @return ATTN_OK, ATTN_ERR_NULL_ARG, ATTN_ERR_INVALID_ARG (bad struct_size,
 *          non-positive dims, unknown mode or storage, grow with ring mode,
 *          a group_size that is negative or does not divide d_v or the ring's
 *          capacity), ATTN_ERR_DTYPE (not f32/f64; a storage other than
 *          native with f64),
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

/** Bytes the cache holds (K and V storage, for quantized storages their
 *  scales and the K residual, plus bookkeeping). 0 for NULL.
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
 *          (bf16, f16, int8 or int4 storage: attn_dtype has no such type; use
 *          attn_kvcache_view_raw()); on failure *k and *v are untouched.
 *          @since 0.1.0 */
ATTN_API attn_status attn_kvcache_view(attn_kvcache *cache, attn_tensor **k, attn_tensor **v);

/** The stored bytes of a cache of any storage, with their scales: filled by
 *  attn_kvcache_view_raw(). Pointers borrow the cache's memory (read only;
 *  valid until the next append that grows the cache, or destroy).
 *  Row r of (b, h) starts at byte ((b·H_kv + h)·capacity + r)·row_bytes of
 *  @c k (or @c v); which position a row holds is as for attn_kvcache_view().
 *  Element decoding by @c storage: NATIVE f32/f64; BF16 the top 16 bits of
 *  an f32; F16 IEEE half; INT8 one byte u; INT4 nibbles (see
 *  ::attn_kvcache_storage). Quantized rows decode with the scales:
 *   k[p][c] = kscales[((b·H_kv + h)·k_groups + g mod k_groups)·2·d_k + c]·u
 *             + kscales[… + d_k + c]   (g = ⌊p / G⌋; halves as uint16 bits),
 *   v[p][c] = vscales[(((b·H_kv + h)·capacity + r)·(d_v / G) + c / G)·2]·u
 *             + vscales[… + 1],
 *  except that positions [G·⌊len_b/G⌋, len_b) of K are in f32 in
 *  k_residual[((b·H_kv + h)·G + p mod G)·d_k + c] (their stored K rows are
 *  stale). Always initialise with attn_kvcache_raw_init(). */
typedef struct attn_kvcache_raw {
  size_t struct_size;           /**< sizeof(attn_kvcache_raw), set by init */
  attn_kvcache_storage storage; /**< the cache's storage */
  attn_dtype dtype;             /**< the cache's dtype (of queries and appended rows) */
  int64_t batch;                /**< B */
  int64_t heads_kv;             /**< H_kv */
  int64_t capacity;             /**< rows per (b, kv head) */
  int64_t d_k;                  /**< key head dim */
  int64_t d_v;                  /**< value head dim */
  int64_t group_size;           /**< G (quantized storages; else 0) */
  int64_t k_row_bytes;          /**< bytes per stored K row (padding included) */
  int64_t v_row_bytes;          /**< bytes per stored V row */
  const void *k;                /**< K rows */
  const void *v;                /**< V rows */
  int64_t k_groups;             /**< K scale slots per (b, kv head) (quantized; else 0) */
  const uint16_t *k_scales;     /**< half floats, see above (NULL if not quantized) */
  const uint16_t *v_scales;     /**< half floats, see above (NULL if not quantized) */
  const float *k_residual;      /**< f32 K residual rows (NULL if not quantized) */
  int64_t total_bytes;          /**< bytes of K and V rows, scales and residual */
} attn_kvcache_raw;

/** Fill @p raw with zeros and its struct_size. NULL is a no-op.
 *  @param raw the struct to initialise. @since 0.2.0 */
ATTN_API void attn_kvcache_raw_init(attn_kvcache_raw *raw);

/** Describe the cache's stored bytes and scales (any storage; see
 *  ::attn_kvcache_raw). Nothing is copied.
 *  @param cache the cache.
 *  @param raw   from attn_kvcache_raw_init(); filled on success, untouched on
 *               failure.
 *  @return ATTN_OK, ATTN_ERR_NULL_ARG, ATTN_ERR_INVALID_ARG (raw.struct_size
 *          is not a size this library knows). @since 0.2.0 */
ATTN_API attn_status attn_kvcache_view_raw(const attn_kvcache *cache, attn_kvcache_raw *raw);

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
 *  inside (the caller's setting is restored). F16, INT8 and INT4 storage
 *  with at most 8 stacked rows: loops that read the stored codes and
 *  scales directly and widen/dequantize them in registers (AVX-512 or AVX2
 *  with F16C, chosen at run time; $ATTN_CPU=avx2 or generic lowers the
 *  choice); otherwise (more rows, or $ATTN_CPU=generic) each tile of at most
 *  512 keys is widened into the plan's workspace and multiplied by GEMM.
 *  Either way no f32 copy of the cache exists and nothing is allocated.
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

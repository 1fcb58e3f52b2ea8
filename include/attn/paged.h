/*
 * libattn — paged KV cache: one pool of fixed-size blocks shared by many
 * sequences, for serving (continuous batching, prefix sharing, beam search).
 * Included by attn/attn.h; may also be included on its own.
 *
 * A ::attn_paged_cache (one per layer) owns a pool of num_blocks blocks of
 * block_size positions each. A block stores, for every key/value head, the
 * K rows [block_size, d_k] and the V rows [block_size, d_v] of block_size
 * consecutive positions. The pool is laid out head-major (all heads' K
 * segments [H_kv][num_blocks], then the V segments), so one head's rows of
 * blocks with consecutive ids are adjacent in memory: a fresh pool hands
 * out ascending ids, and a sequence appended in order is then read as one
 * stream. Each live sequence has a block table: position p of
 * sequence s lives in row p mod block_size of block table_s[p / block_size].
 * Blocks carry reference counts: attn_paged_fork() makes a new sequence
 * that shares every block of its source (no copy); the first append that
 * would write into a shared block copies that block first (copy-on-write),
 * so a write to one sequence never changes another.
 *
 *     pool:     K [H_kv, num_blocks, block_size, d_k], V [H_kv, num_blocks, block_size, d_v]
 *     sequence: length L, block table of ⌈L / block_size⌉ block ids
 *     step:     attn_paged_append(seq, k_new [H_kv, n, d_k], v_new [H_kv, n, d_v])
 *               attn_paged_plan_execute(count sequences, q [N, H, n, d_k] → out [N, H, n, d_v])
 *
 * Sequence ids are 0..max_seqs−1, handed out by attn_paged_seq_create() and
 * attn_paged_fork() and returned by attn_paged_seq_free().
 *
 * Storage: f32 and f64 caches store rows in their dtype; an f32 cache may
 * store every format of the contiguous cache (attn/kvcache.h): bfloat16,
 * IEEE half, or int8/int4 codes with half-float scales. The formats are the
 * contiguous cache's, block by block: rows padded the same way, V scales
 * per position, K scales per channel over groups of group_size positions,
 * which therefore must divide block_size (a group never straddles two
 * blocks, so a block is shared or copied with its scales). The newest
 * len mod group_size K rows of a quantized sequence wait in f32 in a
 * per-sequence residual [H_kv][group_size][d_k], which attn_paged_fork()
 * copies and attn_paged_truncate() refills (from the dequantized rows) when
 * it rolls back into a completed group; their block rows are written when
 * the group completes. Per element, scales included: int8 1 + 4/G bytes,
 * int4 0.5 + 4/G (plus each live sequence's residual).
 *
 * Thread-safety. The pool's mutating calls (attn_paged_seq_create(),
 * attn_paged_append(), attn_paged_truncate(), attn_paged_fork(),
 * attn_paged_seq_free()) must not run concurrently with each other: they
 * share the free list, the reference counts and the pool's context (errors);
 * callers on several threads serialise them with their own lock. A plan
 * execute only reads: the lengths, block tables and blocks of the sequences
 * it is given. Executes of different plans (each made with its own context,
 * e.g. one per caller thread) may run concurrently with each other and with
 * mutations of sequences that those executes do not read (a mutation only
 * writes its own sequence's table and length, blocks that only it references
 * — after copy-on-write — and the pool's free list and counts). Mutating a
 * sequence while an execute reads it is a data race. The read-only queries
 * (lengths, free blocks, memory) may race with mutations: take the lock for
 * an exact answer.
 */
#ifndef ATTN_PAGED_H
#define ATTN_PAGED_H

#include "attn/attn.h"
#include "attn/kvcache.h"

#ifdef __cplusplus
extern "C" {
#endif

/** @defgroup paged Paged KV cache
 *  @{ */

/** Opaque paged KV cache: a block pool and the sequences in it. */
typedef struct attn_paged_cache attn_paged_cache;

/** Options for attn_paged_create(). Always initialise with
 *  attn_paged_config_init(): the struct may grow at the end, and
 *  @c struct_size tells the library which fields the caller knows. */
typedef struct attn_paged_config {
  size_t struct_size;   /**< sizeof(attn_paged_config), set by init */
  int64_t heads_kv;     /**< H_kv ≥ 1 key/value heads (default 1) */
  int64_t d_k;          /**< key head dim ≥ 1 (no default: 0) */
  int64_t d_v;          /**< value head dim ≥ 1; 0 = same as d_k (default) */
  int64_t block_size;   /**< positions per block, 1..65536 (default 64) */
  int64_t num_blocks;   /**< blocks in the pool, 1..2^31−1 (no default: 0); fixed */
  int64_t max_seqs;     /**< live sequences at most: ids 0..max_seqs−1, 1..2^31−1 (default 64) */
  int64_t max_seq_len;  /**< positions per sequence at most; 0 = num_blocks·block_size
                             (default). Sizes the block tables. */
  attn_dtype dtype;     /**< ATTN_DTYPE_F32 (default) or ATTN_DTYPE_F64 */
  attn_kvcache_storage storage; /**< ATTN_KVCACHE_STORE_NATIVE (default); _BF16, _F16, _INT8,
                                     _INT4 with dtype f32 only */
  int64_t group_size;   /**< INT8/INT4 storage: G, positions per K scale and channels per V
                             scale; must divide d_v and block_size. 0 = the largest power of
                             two ≤ ATTN_KVCACHE_DEFAULT_GROUP dividing both (default 0).
                             Ignored by the other storages. */
} attn_paged_config;

/** Fill @p cfg with the defaults above. NULL is a no-op. @since 0.2.0 */
ATTN_API void attn_paged_config_init(attn_paged_config *cfg);

/** Create a pool with every block free and no sequence. The pool
 *  (num_blocks·H_kv·block_size·(d_k + d_v) elements of the storage, plus
 *  int8/int4 scales), the reference counts, the block tables
 *  (max_seqs·⌈max_seq_len / block_size⌉ ids) and, for int8/int4, the K
 *  residuals (max_seqs·H_kv·group_size·d_k floats) are allocated now
 *  through @p ctx's allocator; nothing is allocated later.
 *  @param ctx  context (allocator, errors of the mutating calls); must
 *              outlive the cache.
 *  @param cfg  from attn_paged_config_init(), then filled in.
 *  @param out  receives the cache; untouched on failure.
 *  @return ATTN_OK, ATTN_ERR_NULL_ARG, ATTN_ERR_INVALID_ARG (bad struct_size,
 *          a dimension or count out of range, unknown storage, a group_size
 *          that is negative or does not divide d_v and block_size),
 *          ATTN_ERR_DTYPE (not f32/f64; a storage other than native with f64),
 *          ATTN_ERR_OVERFLOW, ATTN_ERR_NO_MEMORY.
 *  @since 0.2.0 */
ATTN_API attn_status attn_paged_create(attn_context *ctx, const attn_paged_config *cfg,
                                       attn_paged_cache **out);

/** Destroy a cache, its pool and every sequence. NULL is a no-op. Plans made
 *  on it must be destroyed first. @since 0.2.0 */
ATTN_API void attn_paged_destroy(attn_paged_cache *cache);

/** Start an empty sequence (length 0, no blocks) under the lowest free id.
 *  @param cache the cache.
 *  @param seq   receives the id; untouched on failure.
 *  @return ATTN_OK, ATTN_ERR_NULL_ARG, ATTN_ERR_CAPACITY (max_seqs sequences
 *          are live). Not thread-safe (see the header). @since 0.2.0 */
ATTN_API attn_status attn_paged_seq_create(attn_paged_cache *cache, int64_t *seq);

/** Free a sequence: its id becomes free and each of its blocks loses one
 *  reference (a block nobody references returns to the pool).
 *  @param cache the cache.
 *  @param seq   a live sequence id.
 *  @return ATTN_OK, ATTN_ERR_NULL_ARG, ATTN_ERR_INVALID_ARG (id out of range
 *          or not live, e.g. freed twice; nothing changes). @since 0.2.0 */
ATTN_API attn_status attn_paged_seq_free(attn_paged_cache *cache, int64_t seq);

/** Fork: a new sequence with the same length and contents as @p src,
 *  sharing all of its blocks (each gains a reference; nothing is copied and
 *  no block is used). Appends to either sequence later copy a shared
 *  partially filled last block before writing into it (copy-on-write).
 *  @param cache the cache.
 *  @param src   a live sequence id.
 *  @param dst   receives the new id (the lowest free one); untouched on failure.
 *  @return ATTN_OK, ATTN_ERR_NULL_ARG, ATTN_ERR_INVALID_ARG (src out of range
 *          or not live), ATTN_ERR_CAPACITY (no free id). @since 0.2.0 */
ATTN_API attn_status attn_paged_fork(attn_paged_cache *cache, int64_t src, int64_t *dst);

/** Append n positions to sequence @p seq: row i of k_new[h] / v_new[h]
 *  becomes position len + i of kv head h.
 *  @param cache the cache.
 *  @param seq   a live sequence id.
 *  @param k_new [H_kv, n, d_k], the cache's dtype, any non-negative strides.
 *               Copied (bf16/f16 storage: rounded to nearest even;
 *               int8/int4: V rows quantized now, K rows when their group
 *               completes, with the contiguous cache's arithmetic).
 *  @param v_new [H_kv, n, d_v], same n. n = 0 is a no-op.
 *  The blocks needed (new ones, plus one copy when the last block is shared
 *  and partially filled) are counted first: if the pool has fewer free
 *  blocks, ATTN_ERR_CAPACITY; if len + n exceeds max_seq_len,
 *  ATTN_ERR_CAPACITY. Every check happens before any write: on failure the
 *  cache is unchanged.
 *  @return ATTN_OK, ATTN_ERR_NULL_ARG, ATTN_ERR_INVALID_ARG (seq out of range
 *          or not live), ATTN_ERR_DTYPE, ATTN_ERR_SHAPE, ATTN_ERR_CAPACITY.
 *  @since 0.2.0 */
ATTN_API attn_status attn_paged_append(attn_paged_cache *cache, int64_t seq,
                                       const attn_tensor *k_new, const attn_tensor *v_new);

/** Roll back sequence @p seq to @p length positions (≤ its current length),
 *  e.g. rejected speculative tokens. Blocks past the new end lose a
 *  reference; the partially filled last block is kept.
 *  @param cache  the cache.
 *  @param seq    a live sequence id.
 *  @param length new length, 0..current length.
 *  @return ATTN_OK, ATTN_ERR_NULL_ARG, ATTN_ERR_INVALID_ARG (seq or length
 *          out of range; nothing changes). @since 0.2.0 */
ATTN_API attn_status attn_paged_truncate(attn_paged_cache *cache, int64_t seq, int64_t length);

/** Length of sequence @p seq; −1 for NULL, an id out of range or a free id.
 *  @param cache the cache.
 *  @param seq   sequence id.
 *  @since 0.2.0 */
ATTN_API int64_t attn_paged_seq_length(const attn_paged_cache *cache, int64_t seq);

/** Copy the block table of sequence @p seq (⌈length / block_size⌉ block ids,
 *  in position order) into @p ids.
 *  @param cache the cache.
 *  @param seq   a live sequence id.
 *  @param ids   receives the ids; may be NULL when @p cap is 0.
 *  @param cap   room in @p ids.
 *  @param count receives the number of blocks (also when @p cap is too small).
 *  @return ATTN_OK, ATTN_ERR_NULL_ARG, ATTN_ERR_INVALID_ARG (seq out of range
 *          or not live, cap < 0), ATTN_ERR_CAPACITY (cap < count: ids is not
 *          written, count is). @since 0.2.0 */
ATTN_API attn_status attn_paged_block_table(const attn_paged_cache *cache, int64_t seq,
                                            int64_t *ids, int64_t cap, int64_t *count);

/** Free blocks in the pool. 0 for NULL. @param cache the cache. @since 0.2.0 */
ATTN_API int64_t attn_paged_free_blocks(const attn_paged_cache *cache);

/** Blocks in the pool (num_blocks). 0 for NULL. @param cache the cache. @since 0.2.0 */
ATTN_API int64_t attn_paged_num_blocks(const attn_paged_cache *cache);

/** Positions per block. 0 for NULL. @param cache the cache. @since 0.2.0 */
ATTN_API int64_t attn_paged_block_size(const attn_paged_cache *cache);

/** Live sequences. 0 for NULL. @param cache the cache. @since 0.2.0 */
ATTN_API int64_t attn_paged_num_seqs(const attn_paged_cache *cache);

/** Bytes the cache holds (the whole pool, block tables, counts). 0 for NULL.
 *  @param cache the cache. @since 0.2.0 */
ATTN_API size_t attn_paged_memory_size(const attn_paged_cache *cache);

/** Bytes of K/V storage in use: blocks referenced by at least one sequence ×
 *  bytes per block. A block shared by forks counts once. 0 for NULL.
 *  @param cache the cache. @since 0.2.0 */
ATTN_API size_t attn_paged_memory_used(const attn_paged_cache *cache);

/** Opaque plan: attention of up to N sequences' new queries (decode steps
 *  and prefill chunks) against a paged cache. */
typedef struct attn_paged_plan attn_paged_plan;

/** Prepare attention of a ragged batch against @p cache.
 *
 *  Row b of a call (b < count) belongs to sequence s = seq_ids[b] of length
 *  L_b (its length at execute, after its new positions were appended) with
 *  n_b queries. Query i at position t = L_b − n_b + i keeps key positions p
 *  in [0, L_b) with p ≤ t (if causal) and t − left ≤ p ≤ t + right (if a
 *  window is set), scores s = scale·q·k_p, then softcap, then ALiBi
 *  s −= slope_h·|t − p|; out = softmax-weighted sum of v_p, lse = log Σ e^s,
 *  exactly as attn_kvcache_plan_create() for a cache holding that sequence.
 *  A query that keeps no key gives out 0, lse −inf.
 *
 *  @param ctx   the plan's context: its threads run the executes, its
 *               allocator holds the workspace, its error buffer gets the
 *               messages. Give each caller thread its own context and plan.
 *  @param cache the cache the plan reads (must outlive the plan).
 *  @param desc  as for attn_kvcache_plan_create(): variant EXACT, score
 *               SCALED_DOT or DOT, causal BOTTOM_RIGHT or NONE, window,
 *               ALiBi (H slopes, borrowed), softcap, attention sinks (H
 *               logits, borrowed, re-checked at every execute; a row's
 *               queries get the sink, rows past its query count stay 0 and
 *               −inf), the per-key mass (attn_desc_set_key_mass(): a
 *               [N, H or H_kv, max_seq_len] tensor of the plan's dtype,
 *               contiguous; mass[b, ·, j] for position j of row b's
 *               sequence, 0 past its length; computed by a second pass over
 *               the keys after out and lse, from the final lse; rows
 *               count..N−1 untouched). Copied.
 *  @param q     [N, H, n, d_k], the cache's dtype, H a multiple of H_kv, last
 *               dim contiguous: N rows (sequences) per call at most, n
 *               queries per row at most. n ≤ 16 uses the split-KV decode
 *               path; larger n (prefill chunks) query blocks that walk the
 *               keys tile by tile. Only its metadata is used here.
 *  @param out   [N, H, n, d_v], last dim contiguous.
 *  @param lse   optional [N, H, n].
 *  @param plan  receives the plan; untouched on failure.
 *  All workspace is allocated now (sized for max_seq_len); execute allocates
 *  nothing.
 *  @return ATTN_OK, ATTN_ERR_NULL_ARG, ATTN_ERR_SHAPE, ATTN_ERR_DTYPE,
 *          ATTN_ERR_LAYOUT, ATTN_ERR_UNSUPPORTED, ATTN_ERR_INVALID_ARG,
 *          ATTN_ERR_OVERFLOW, ATTN_ERR_NO_MEMORY, ATTN_ERR_THREAD.
 *  @since 0.2.0 */
ATTN_API attn_status attn_paged_plan_create(attn_context *ctx, attn_paged_cache *cache,
                                            const attn_desc *desc, const attn_tensor *q,
                                            const attn_tensor *out, const attn_tensor *lse,
                                            attn_paged_plan **plan);

/** Attend: rows 0..count−1 of q/out/lse against their sequences.
 *  @param plan          from attn_paged_plan_create().
 *  @param count         rows in this call, 0..N. Rows count..N−1 of out and
 *                       lse are not touched.
 *  @param seq_ids       [count] live sequence ids (a sequence may appear in
 *                       several rows); NULL only when count is 0.
 *  @param q             the plan's q shape, dtype and strides (data may differ).
 *  @param out           written only on success.
 *  @param lse           non-NULL exactly when the plan was created with lse.
 *  @param query_counts  [count] queries per row, each 0..n and at most the
 *                       sequence's length (rows i ≥ n_b give out 0, lse −inf),
 *                       or NULL for n each.
 *  Allocates nothing. With n ≤ 16 each (row, kv head) key range is cut into
 *  chunks at fixed multiples of 512 positions; chunks are spread over the
 *  context's threads and their partial softmax states merged in chunk
 *  order. Larger n: tasks are (query block, row, kv head). Either way the
 *  result is bitwise identical for any thread count. f32 decode with at most
 *  8 stacked query rows (H/H_kv · n) reads the blocks with the same AVX-512
 *  loops as the contiguous cache when the CPU has them.
 *  @return ATTN_OK, ATTN_ERR_NULL_ARG, ATTN_ERR_MISMATCH,
 *          ATTN_ERR_INVALID_ARG (count, a sequence id out of range or not
 *          live, query_counts), ATTN_ERR_THREAD; on failure out and lse are
 *          not written. @since 0.2.0 */
ATTN_API attn_status attn_paged_plan_execute(attn_paged_plan *plan, int64_t count,
                                             const int64_t *seq_ids, const attn_tensor *q,
                                             attn_tensor *out, attn_tensor *lse,
                                             const int64_t *query_counts);

/** Bytes of workspace the plan holds. 0 for NULL. @param plan the plan. @since 0.2.0 */
ATTN_API size_t attn_paged_plan_workspace_size(const attn_paged_plan *plan);

/** Destroy a plan. NULL is a no-op. @param plan the plan. @since 0.2.0 */
ATTN_API void attn_paged_plan_destroy(attn_paged_plan *plan);

/** @} */

#ifdef __cplusplus
}
#endif

#endif /* ATTN_PAGED_H */

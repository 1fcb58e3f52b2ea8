/*
 * libattn — long-sequence variants: window, Swin, Longformer, BigBird,
 * block-sparse, linear (elu+1, Performer FAVOR+), low-rank (Linformer).
 *
 * All of them are selected with attn_desc_set_variant() and run through the
 * same attn_plan_create()/attn_plan_execute() as exact attention. Included by
 * attn/attn.h; may also be included on its own.
 *
 * 1-D sliding-window attention needs no variant of its own: it is
 * ATTN_VARIANT_EXACT with attn_desc_set_window(); the exact kernel visits only
 * the key blocks inside the band, so its cost is O(S·w).
 */
#ifndef ATTN_APPROX_H
#define ATTN_APPROX_H

#include "attn/attn.h"

#ifdef __cplusplus
extern "C" {
#endif

/** @defgroup approx Long-sequence variants
 *  @{ */

/** Swin 2-D window attention (ATTN_VARIANT_SWIN). Each of the S = grid_h·grid_w
 *  tokens (row-major on the grid; q/k/v are [B, H, S, d]) attends only to the
 *  tokens of its window × window cell. With @p shift > 0 (Swin uses
 *  ⌊window/2⌋) the grid is cyclically rolled by −shift on both axes before
 *  partitioning and rolled back after; tokens that came from different sides
 *  of the wrap do not see each other (Swin's mask). When grid_h or grid_w is
 *  not a multiple of @p window the grid is padded at the bottom/right to the
 *  next multiple (as the reference implementation does) and padded tokens
 *  are never attended to.
 *  Requires S_q = S_k = grid_h·grid_w (checked at plan time).
 *  @return ATTN_ERR_INVALID_ARG unless grid_h, grid_w, window ≥ 1 and
 *          0 ≤ shift < window. @since 0.1.0 */
ATTN_API attn_status attn_desc_set_swin(attn_desc *desc, int64_t grid_h, int64_t grid_w,
                                        int64_t window, int64_t shift);

/** Swin relative position bias table [(2·window−1)², H], q's dtype, indexed
 *  as in Swin: ((dy + window−1)·(2·window−1) + dx + window−1) for the offset
 *  (dy, dx) = (y_i − y_j, x_i − x_j). NULL clears. Borrowed. @since 0.1.0 */
ATTN_API attn_status attn_desc_set_swin_bias(attn_desc *desc, const attn_tensor *table);

/** Longformer global tokens (ATTN_VARIANT_LONGFORMER): token indices that
 *  attend to every key and that every query attends to, on top of the local
 *  band set with attn_desc_set_window(). Indices are distinct, 0 ≤ idx < S
 *  (checked at plan time). Borrowed. NULL, 0 clears. @since 0.1.0 */
ATTN_API attn_status attn_desc_set_global_tokens(attn_desc *desc, const int64_t *indices,
                                                 int64_t count);

/** Block size for BigBird and block-sparse (≥ 1). @since 0.1.0 */
ATTN_API attn_status attn_desc_set_block_size(attn_desc *desc, int64_t block);

/** BigBird layout (ATTN_VARIANT_BIGBIRD), in blocks of attn_desc_set_block_size():
 *  each query block sees the key blocks within ±window_blocks, the first
 *  global_blocks key blocks (and those query blocks see everything), plus
 *  random_blocks other key blocks drawn per (head, query block) from @p seed.
 *  Deterministic: the same seed gives the same layout on every machine.
 *  @since 0.1.0 */
ATTN_API attn_status attn_desc_set_bigbird(attn_desc *desc, int64_t window_blocks,
                                           int64_t global_blocks, int64_t random_blocks,
                                           uint64_t seed);

/** Block-sparse layout (ATTN_VARIANT_BLOCK_SPARSE): U8 tensor of rank 3
 *  [H or 1, ⌈S_q/b⌉, ⌈S_k/b⌉], non-zero = the query block attends to the key
 *  block. Causal and key lengths still apply inside kept blocks. Borrowed.
 *  @since 0.1.0 */
ATTN_API attn_status attn_desc_set_block_layout(attn_desc *desc, const attn_tensor *layout);

/** Read back the block layout a sparse plan uses (BigBird, block-sparse,
 *  and Longformer/Swin in their blocked form) into @p buf as U8
 *  [H, ⌈S_q/b⌉, ⌈S_k/b⌉]. @p *size gives the buffer's bytes on entry and the
 *  bytes needed on return; a too-small buffer gives ATTN_ERR_INVALID_ARG and
 *  writes nothing else. @since 0.1.0 */
ATTN_API attn_status attn_plan_block_layout(const attn_plan *plan, uint8_t *buf, size_t *size);

/** Number of random features m (≥ 1) and their seed for ATTN_VARIANT_PERFORMER.
 *  Features are drawn in orthogonal blocks of d. @since 0.1.0 */
ATTN_API attn_status attn_desc_set_features(attn_desc *desc, int64_t num_features, uint64_t seed);

/** Redraw a Performer plan's random features from a new seed (no allocation).
 *  ATTN_ERR_UNSUPPORTED for other variants. @since 0.1.0 */
ATTN_API attn_status attn_plan_redraw_features(attn_plan *plan, uint64_t seed);

/** Linformer (ATTN_VARIANT_LINFORMER) projected length k (≥ 1, ≤ S_k checked at
 *  plan time) and the seed used when no projections are given (entries drawn
 *  N(0, 1/k)). @since 0.1.0 */
ATTN_API attn_status attn_desc_set_lowrank(attn_desc *desc, int64_t rank, uint64_t seed);

/** Linformer projections E (keys) and F (values): q's dtype, rank 2 [k, S_k]
 *  shared across heads or rank 3 [H_kv, k, S_k] per head. Both or neither.
 *  Borrowed. @since 0.1.0 */
ATTN_API attn_status attn_desc_set_lowrank_proj(attn_desc *desc, const attn_tensor *e,
                                                const attn_tensor *f);

/** @} */

#ifdef __cplusplus
}
#endif

#endif /* ATTN_APPROX_H */

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
 *  of the wrap do not see each other (Swin's mask: in the rolled frame each
 *  axis of padded length P is cut into [0, P−window), [P−window, P−shift),
 *  [P−shift, P) and only tokens in the same cut on both axes attend to each
 *  other). When grid_h or grid_w is not a multiple of @p window the grid is
 *  padded at the bottom/right to the next multiple (before the roll, as the
 *  reference implementation does); padded tokens are never attended to and
 *  produce no output (unlike the reference implementation, where zero
 *  padding tokens take part in the softmax).
 *  Requires S_q = S_k = grid_h·grid_w (checked at plan time: ATTN_ERR_SHAPE).
 *  Scores are ATTN_SCORE_SCALED_DOT or ATTN_SCORE_DOT with any scale; GQA works;
 *  weights (dense [B, H, S, S], zero outside each token's window) and lse are
 *  available. Causal, 1-D windows, lengths, dense masks, ALiBi and softcap are
 *  not supported with Swin (ATTN_ERR_UNSUPPORTED at plan time).
 *  Cost O(S·window²·d); memory O(threads·window²·(window² + d)).
 *  @return ATTN_ERR_INVALID_ARG unless grid_h, grid_w, window ≥ 1 and
 *          0 ≤ shift < window; ATTN_ERR_OVERFLOW if grid_h·grid_w overflows.
 *          @since 0.1.0 */
ATTN_API attn_status attn_desc_set_swin(attn_desc *desc, int64_t grid_h, int64_t grid_w,
                                        int64_t window, int64_t shift);

/** Swin relative position bias table [(2·window−1)², H], q's dtype, any
 *  strides, added to s_ij: row ((dy + window−1)·(2·window−1) + dx + window−1),
 *  column h, for the offset (dy, dx) = (y_i − y_j, x_i − x_j) of the two
 *  tokens' positions inside their (rolled) window, as in Swin. Shape and dtype
 *  are checked at plan time (ATTN_ERR_SHAPE, ATTN_ERR_DTYPE). NULL clears.
 *  Borrowed; read at every execute. @since 0.1.0 */
ATTN_API attn_status attn_desc_set_swin_bias(attn_desc *desc, const attn_tensor *table);

/** Longformer global tokens (ATTN_VARIANT_LONGFORMER): token indices that
 *  attend to every key and that every query attends to, on top of the local
 *  band set with attn_desc_set_window() (aligned like the causal setting):
 *  keep(i, j) = (i' − left ≤ j ≤ i' + right  ∨  i global  ∨  j global), and
 *  causal, key/query lengths and dense masks still apply on top.
 *  Longformer needs S_q = S_k (ATTN_ERR_SHAPE) and a window other than
 *  (unbounded, unbounded) or (0, 0) (ATTN_ERR_INVALID_ARG). Indices must be
 *  distinct and 0 ≤ idx < S (ATTN_ERR_INVALID_ARG at plan time); they are read
 *  and copied when the plan is created (later changes do not reach the plan).
 *  Cost O(S·(left + right + G) + G·S) for G global tokens; memory O(S) bytes.
 *  NULL, 0 clears. @return ATTN_ERR_NULL_ARG (NULL with count > 0),
 *  ATTN_ERR_INVALID_ARG (negative count or index). @since 0.1.0 */
ATTN_API attn_status attn_desc_set_global_tokens(attn_desc *desc, const int64_t *indices,
                                                 int64_t count);

/** Block size b for BigBird and block-sparse (≥ 1, default 64), and the
 *  granularity of Longformer's attn_plan_block_layout(). The kernel's query
 *  tiles follow the blocks. @since 0.1.0 */
ATTN_API attn_status attn_desc_set_block_size(attn_desc *desc, int64_t block);

/** BigBird layout (ATTN_VARIANT_BIGBIRD), in blocks of attn_desc_set_block_size():
 *  each query block r sees the key blocks c with |c − r| ≤ window_blocks, the
 *  first global_blocks key blocks (and query blocks r < global_blocks see
 *  everything), plus random_blocks other key blocks drawn per (head, query
 *  block) from @p seed (all remaining ones if fewer are free). Causal and key
 *  lengths still apply inside kept blocks.
 *
 *  Deterministic: the same seed gives the same layout on every machine. With
 *  mix(z) = splitmix64's finaliser (z ^= z>>30; z *= 0xBF58476D1CE4E5B9;
 *  z ^= z>>27; z *= 0x94D049BB133111EB; z ^= z>>31) and next(s) = (s +=
 *  0x9E3779B97F4A7C15, mix(s)): for head h and query block r ≥ global_blocks
 *  the state is s = mix(seed ^ mix(h·⌈S_q/b⌉ + r + 1)); each draw takes
 *  u = next(s) until u ≥ 2⁶⁴ mod n, where n is the number of key blocks still
 *  free (not window, global or drawn), and keeps the (u mod n)-th free block
 *  counting from 0 in ascending order. Read it back with attn_plan_block_layout().
 *
 *  The plan holds the layout: H·⌈S_q/b⌉·⌈S_k/b⌉ bytes.
 *  @return ATTN_ERR_INVALID_ARG for negative counts here, and at plan time
 *          when global_blocks exceeds ⌈S_q/b⌉ or ⌈S_k/b⌉. @since 0.1.0 */
ATTN_API attn_status attn_desc_set_bigbird(attn_desc *desc, int64_t window_blocks,
                                           int64_t global_blocks, int64_t random_blocks,
                                           uint64_t seed);

/** Block-sparse layout (ATTN_VARIANT_BLOCK_SPARSE): U8 tensor of rank 3
 *  [H or 1, ⌈S_q/b⌉, ⌈S_k/b⌉] (any strides), non-zero = the query block
 *  attends to the key block. Causal, key lengths and dense masks still apply
 *  inside kept blocks. Borrowed; its contents are read at every execute.
 *  Missing at plan time: ATTN_ERR_NULL_ARG; wrong shape: ATTN_ERR_SHAPE.
 *  @return ATTN_ERR_SHAPE here unless rank 3 and U8. @since 0.1.0 */
ATTN_API attn_status attn_desc_set_block_layout(attn_desc *desc, const attn_tensor *layout);

/* attn_plan_block_layout() (read a sparse plan's layout back) is experimental:
 * see attn/experimental.h. */

/** Linear attention (ATTN_VARIANT_LINEAR_ELU, ATTN_VARIANT_PERFORMER) replaces
 *  softmax by a feature map φ and associativity:
 *
 *      out_i = Σ_j (φ(q_i)·φ(k_j)) v_j / Σ_j φ(q_i)·φ(k_j)
 *
 *  over the keys row i keeps (key lengths; causal with either alignment),
 *  computed as φ(Q)·(φ(K)ᵀ[V | 1]) in O(S·m·(d_k + d_v)) time; causal runs as
 *  chunked prefix sums. Query lengths, GQA/MQA and both memory layouts are
 *  supported. A row with no kept key — or, for FAVOR+, whose features all
 *  underflow — gives out = 0, never NaN.
 *   - LINEAR_ELU: φ(x) = elu(x) + 1 elementwise (m = d_k). No score scale:
 *     setting one with attn_desc_set_scale() is ATTN_ERR_UNSUPPORTED.
 *   - PERFORMER (FAVOR+): φ(x)_i = exp(ω_i·x' − |x'|²/2)/√m, x' = √scale·x, so
 *     E[φ(q)·φ(k)] = exp(scale·q·k) and out estimates softmax attention with
 *     the descriptor's scale (default 1/√d_k, i.e. d_k^(−1/4) on q and on k).
 *     Stabilisers, which cancel exactly between numerator and normalizer:
 *     a query row subtracts its own max of ω_i·x'; keys subtract one running
 *     maximum M of ω_i·k' − |k'|²/2 over the keys summed so far, and the
 *     partial sums are rescaled by e^{M_old − M_new} when M grows (non-causal:
 *     M is the global max over the kept keys; causal: a query never loses
 *     precision to keys after its chunk).
 *  Not supported (ATTN_ERR_UNSUPPORTED at plan time, the message names the
 *  option): ATTN_SCORE_GENERAL/ADDITIVE, bool and additive masks, ALiBi,
 *  softcap, sliding windows, and the weights and lse outputs (the S_q×S_k
 *  weights are never formed and there is no softmax log-sum-exp).
 */

/** Number of random features m and their seed for ATTN_VARIANT_PERFORMER.
 *  Without this call a Performer plan uses m = 256 and seed 0.
 *  The projection rows ω_1..ω_m ∈ R^{d_k} are drawn in blocks of d_k: each
 *  block is the Gram–Schmidt orthonormalisation of d_k i.i.d. N(0, I) vectors
 *  (the last block keeps its first m mod d_k rows), and each row is rescaled
 *  to the norm of an independent N(0, I) vector (χ-distributed), so every ω_i
 *  is marginally N(0, I). The generator (splitmix64-seeded xoshiro256**,
 *  polar-method normals with a portable logarithm) gives the same features on
 *  every machine for a given seed, m and d_k.
 *  @return ATTN_OK; ATTN_ERR_NULL_ARG for a NULL desc; ATTN_ERR_INVALID_ARG if
 *          num_features < 1. A huge m fails later at plan creation with
 *          ATTN_ERR_INVALID_ARG (m ≥ 2³⁰), ATTN_ERR_OVERFLOW or
 *          ATTN_ERR_NO_MEMORY. @since 0.1.0 */
ATTN_API attn_status attn_desc_set_features(attn_desc *desc, int64_t num_features, uint64_t seed);

/* attn_plan_redraw_features() is experimental: see attn/experimental.h. */

/** Linformer (ATTN_VARIANT_LINFORMER): exact attention of q on the projected
 *  K' = E·K ([k, d_k]) and V' = F·V ([k, d_v]) per batch item and key/value
 *  head, with E, F ∈ R^{k×S_k}. With key lengths, K' = E[:, :len_b]·K[:len_b]
 *  (padded positions never enter the projection; len_b = 0 gives out = 0).
 *  Score kind, scale, softcap, query lengths and lse apply to the attention on
 *  (K', V') as for exact attention. Self and cross attention (S_q ≠ S_k).
 *  Plan-time statuses: ATTN_ERR_UNSUPPORTED for causal (undefined: every
 *  projected key mixes all positions), a window, bool/additive masks, ALiBi
 *  and weights (they index S_k keys); ATTN_ERR_INVALID_ARG when neither this
 *  call nor attn_desc_set_lowrank_proj() gave k, or when k > S_k.
 *
 *  This call sets the projected length k (≥ 1) and the seed used when no
 *  projections are given: then E is drawn from the seed's stream 1 and F from
 *  its stream 2 (the generator of attn_desc_set_features()), entries
 *  N(0, 1/k), row-major [k, S_k], shared by all heads, at plan time.
 *  @return ATTN_OK; ATTN_ERR_NULL_ARG for a NULL desc; ATTN_ERR_INVALID_ARG if
 *          rank < 1. @since 0.1.0 */
ATTN_API attn_status attn_desc_set_lowrank(attn_desc *desc, int64_t rank, uint64_t seed);

/** Linformer projections E (keys) and F (values): q's dtype, rank 2 [k, S_k]
 *  shared across heads or rank 3 [H_kv, k, S_k] per key/value head, the same
 *  shape for both, the S_k axis contiguous. Both or neither (NULL, NULL goes
 *  back to seeded projections). Borrowed; their contents are read at every
 *  execute. If attn_desc_set_lowrank() also set k, it must equal E's k.
 *  @return ATTN_OK; ATTN_ERR_NULL_ARG if exactly one is NULL;
 *          ATTN_ERR_SHAPE if a rank is not 2 or 3 or the ranks differ. At plan
 *          time: ATTN_ERR_DTYPE, ATTN_ERR_SHAPE (dims other than [k, S_k] /
 *          [H_kv, k, S_k], E and F differ, k differs from the set rank),
 *          ATTN_ERR_LAYOUT (S_k axis not contiguous), ATTN_ERR_INVALID_ARG
 *          (k > S_k). @since 0.1.0 */
ATTN_API attn_status attn_desc_set_lowrank_proj(attn_desc *desc, const attn_tensor *e,
                                                const attn_tensor *f);

/** @} */

#ifdef __cplusplus
}
#endif

#endif /* ATTN_APPROX_H */

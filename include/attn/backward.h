/*
 * libattn — the backward pass of softmax attention (training).
 * Included by attn/attn.h; may also be included on its own.
 *
 * What it computes
 * ----------------
 * Given a forward plan (attn_plan_create() with an lse output) and the
 * gradient dout = ∂L/∂out of a loss L, the backward computes
 *
 *   dq = ∂L/∂q,  dk = ∂L/∂k,  dv = ∂L/∂v   (and optionally ∂L/∂additive_mask)
 *
 * FlashAttention-2 style: the probabilities are recomputed tile by tile from
 * q, k and the saved lse, never stored as an S_q×S_k matrix:
 *
 *   D_i   = Σ_x dout_ix · out_ix
 *   P_ij  = exp(s_ij − lse_i)                     (0 for masked keys)
 *   dP_ij = dout_i · v_j
 *   dS_ij = P_ij · (dP_ij − D_i)                  (∂L/∂s, s after every transform)
 *   dv_j  = Σ_i P_ij dout_i       dq_i = Σ_j g_ij k_j      dk_j = Σ_i g_ij q_i
 *   with g_ij = scale · dS_ij · c'(raw_ij): c' = 1 − tanh²(raw/cap) with a
 *   softcap (s = cap·tanh(raw/cap)), else 1; ALiBi slopes are constants.
 *   ∂L/∂additive_mask_ij = dS_ij (0 where the key is removed).
 *
 * Masked tiles are skipped exactly as in the forward; rows that keep no key
 * (lse = −inf) get dq = 0 and contribute nothing, never NaN. With GQA/MQA
 * (H_kv < H) dk and dv are summed over each group of query heads. K/V rows
 * past a key length and q rows past a query length are never read; their
 * gradients are 0.
 *
 * Scores with weights differentiate through their projection:
 *   - GENERAL (s = scale·q W kᵀ): with x = q W, dq = dx Wᵀ and, on request
 *     (attn_backward_plan_set_general_grad()), dW = Σ_{b,h,i} q_iᵀ dx_i.
 *   - ADDITIVE (s = vᵀ tanh(W_q q_i + W_k k_j + bias)): with h_ij the tanh
 *     and t_ij = dS_ij · v ∘ (1 − h_ij²), dq_i = W_qᵀ Σ_j t_ij and
 *     dk_j = W_kᵀ Σ_i t_ij (summed over a GQA group); on request
 *     (attn_backward_plan_set_additive_grads()) dW_q = Σ (Σ_j t_ij) q_iᵀ,
 *     dW_k = Σ (Σ_i t_ij) k_jᵀ, dbias = Σ t_ij, dv = Σ dS_ij h_ij.
 *   The weight gradients sum over every batch item, head and kept row (query
 *   rows past a query length and key rows past a key length are not read),
 *   in a fixed order. Query rows a dense mask removes entirely must be finite
 *   for dW and dW_q to be (0·NaN is NaN in the sums' GEMMs).
 *
 * Linformer (ATTN_VARIANT_LINFORMER) runs the same passes on its projected
 * keys and values K' = E·K, V' = F·V (recomputed) and maps their gradients
 * back: dk = Eᵀ·dK', dv = Fᵀ·dV' (key rows past a key length get 0); dE and
 * dF on request (attn_backward_plan_set_lowrank_grads()).
 *
 * Linear attention (LINEAR_ELU, PERFORMER) has no softmax and no lse: its
 * backward recomputes the state Sₐ = Σ_j φ(k_j)[v_jᵀ 1] and, with
 * gₐ_i = [dout_i, −dout_i·out_i] / den_i, forms dφ(q_i) = Sₐ_i gₐ_i,
 * dφ(k_j) = R_j [v_j; 1], dv_j = (φ(k_j)ᵀ R_j)[:d_v] with
 * R_j = Σ_{i keeping j} φ(q_i) gₐ_iᵀ, then the chain through φ. Causal elu+1
 * uses the forward's chunked prefix form (a forward pass for dq, a reverse
 * pass for dk and dv; the causal Performer's reverse pass brings the
 * later rows' sum to each chunk's key stabiliser, e^{M_chunk − M_next} ≤ 1,
 * as the forward rescales its state). Its plan takes no lse (pass NULL at
 * execute).
 *
 * Supported: variants EXACT, LONGFORMER, BIGBIRD, BLOCK_SPARSE (the sparse
 * variants go through the same tile-skipping path), LINFORMER, LINEAR_ELU
 * and PERFORMER, every score (SCALED_DOT,
 * DOT, GENERAL, ADDITIVE), every mask option (causal both alignments, window, key/query lengths,
 * bool and additive masks, ALiBi, softcap), attention sinks (their lse
 * share is already in the forward's lse; their own gradient with
 * attn_backward_plan_set_sink_grad()), dtypes F32, F64, BF16 and F16. A
 * 16-bit plan's backward widens q, k, v, out and dout into f32 copies in its
 * workspace (exactly), runs the f32 passes (f32 accumulation) and rounds
 * each gradient once to the storage type; its lse and dmask are f32, the
 * plan's compute type. Other variants, packed variable-length batches and
 * the key-mass output
 * give ATTN_ERR_UNSUPPORTED at plan creation.
 *
 * Determinism: dk/dv are accumulated per key block and dq per query row in a
 * fixed order that depends only on the shapes, so results are bitwise
 * identical for any thread count. No atomics.
 */
#ifndef ATTN_BACKWARD_H
#define ATTN_BACKWARD_H

#include "attn/attn.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ------------------------------------------------------------------------- */
/** @defgroup backward Backward pass (gradients)
 *  @{ */

/** Opaque backward plan: a forward plan's geometry and masks bound to the
 *  gradient tensors' shapes, with its workspace allocated. */
typedef struct attn_backward_plan attn_backward_plan;

/** Prepare the backward of @p forward for these gradient tensors.
 *
 *  The backward plan borrows the forward plan (its masks, descriptor copy
 *  and context): destroy the backward plan first. It runs on the forward
 *  plan's context and has its own workspace.
 *
 *  Shapes (the forward plan's dtype; last dim contiguous, rows not
 *  overlapping; outputs need distinct memory for every element):
 *   - dout:  [B, H, S_q, d_v], like the forward's out (B and H may broadcast
 *     with stride 0; rows must not overlap)
 *   - dq:    [B, H, S_q, d_q]      (output)
 *   - dk:    [B, H_kv, S_k, d_k]   (output; summed over GQA groups)
 *   - dv:    [B, H_kv, S_k, d_v]   (output)
 *   - dmask: optional output, [B, H, S_q, S_k] in the compute type (the
 *     additive mask's: f32 for bf16/f16 plans): ∂L/∂additive_mask before any
 *     broadcasting (sum it over the additive mask's broadcast dims). Only
 *     with an additive mask in the forward descriptor. O(S_q·S_k) memory.
 *  Outputs must not overlap the inputs or each other.
 *
 *  @param forward  a forward plan created with an lse tensor (linear
 *                  attention: without, as its forward takes none)
 *  @param dout     metadata of the incoming gradient (data not read here)
 *  @param dq       metadata of the query gradient
 *  @param dk       metadata of the key gradient
 *  @param dv       metadata of the value gradient
 *  @param dmask    metadata of the additive-mask gradient, or NULL
 *  @param plan     receives the backward plan; untouched on failure
 *  @return ATTN_OK; ATTN_ERR_NULL_ARG (forward, plan, dout, dq, dk, dv);
 *          ATTN_ERR_INVALID_ARG (the forward plan has no lse, "lse"; dmask
 *          without an additive mask, "dmask"); ATTN_ERR_DTYPE (a gradient's
 *          dtype differs from the forward's); ATTN_ERR_SHAPE (dout's shape ≠
 *          out's, dq ≠ q's, dk ≠ k's, dv ≠ v's, dmask ≠ [B, H, S_q, S_k]);
 *          ATTN_ERR_LAYOUT; ATTN_ERR_UNSUPPORTED (variant, score or dtype,
 *          naming "forward"); ATTN_ERR_OVERFLOW; ATTN_ERR_NO_MEMORY. The message is on
 *          the forward plan's context. @since 0.2.0 */
ATTN_API attn_status attn_backward_plan_create(const attn_plan *forward, const attn_tensor *dout,
                                               const attn_tensor *dq, const attn_tensor *dk,
                                               const attn_tensor *dv, const attn_tensor *dmask,
                                               attn_backward_plan **plan);

/** Run the backward. Every tensor must have the dtype, shape and strides it
 *  had at plan time (the forward plan's for q, k, v, out, lse); data pointers
 *  may differ. q, k, v, out, lse are the forward's inputs and results (out
 *  and lse exactly as the forward wrote them). dq, dk, dv (and dmask) are
 *  overwritten, not accumulated into. The descriptor's borrowed arrays
 *  (lengths, slopes, masks) must hold what they held for the forward.
 *  Allocates nothing; uses the forward context's threads; bitwise identical
 *  results for any thread count. One thread at a time per backward plan.
 *  On error no output is written.
 *  @param plan   the backward plan
 *  @param q      forward input q
 *  @param k      forward input k
 *  @param v      forward input v
 *  @param out    forward output out
 *  @param lse    forward output lse (required; NULL for linear attention)
 *  @param dout   ∂L/∂out
 *  @param dq     receives ∂L/∂q
 *  @param dk     receives ∂L/∂k
 *  @param dv     receives ∂L/∂v
 *  @param dmask  receives ∂L/∂additive_mask; non-NULL exactly when it was at
 *                plan time
 *  @return ATTN_OK, ATTN_ERR_NULL_ARG (a required tensor, lse included),
 *          ATTN_ERR_MISMATCH (a tensor differs from plan time, or dmask given
 *          or missing against plan time), ATTN_ERR_INVALID_ARG (a borrowed
 *          length or slope out of range), ATTN_ERR_THREAD. @since 0.2.0 */
ATTN_API attn_status attn_backward_execute(attn_backward_plan *plan, const attn_tensor *q,
                                           const attn_tensor *k, const attn_tensor *v,
                                           const attn_tensor *out, const attn_tensor *lse,
                                           const attn_tensor *dout, attn_tensor *dq,
                                           attn_tensor *dk, attn_tensor *dv, attn_tensor *dmask);

/** Also compute the gradient of the attention-sink logits
 *  (attn_desc_set_sinks) at every execute:
 *
 *    dsinks[h] = ∂L/∂sink_h = −Σ_{b,i} e^{sink_h − lse_bhi} · (dout_bhi · out_bhi)
 *
 *  (a sink takes the share e^{sink − lse} of each row's softmax and carries
 *  no value; a head with sink −inf gets 0). Written after the other
 *  gradients, in f64, in a fixed order; not written when execute fails.
 *  @param plan    the backward plan
 *  @param dsinks  [count] output (borrowed: must stay valid while set), or
 *                 NULL (with count 0) to stop computing it
 *  @param count   H, the number of query heads
 *  @return ATTN_OK, ATTN_ERR_NULL_ARG (plan; dsinks NULL with count > 0),
 *          ATTN_ERR_INVALID_ARG (the forward plan has no sinks, "dsinks"),
 *          ATTN_ERR_SHAPE (count ≠ H, "dsinks"). @since 0.2.0 */
ATTN_API attn_status attn_backward_plan_set_sink_grad(attn_backward_plan *plan, double *dsinks,
                                                      int64_t count);

/** Also compute ∂L/∂general_w (ATTN_SCORE_GENERAL's W) at every execute.
 *
 *    dw = Σ_{b, h, i} q_bhiᵀ · (∂L/∂(q W))_bhi          [d_q, d_k]
 *
 *  overwritten (not accumulated into), in a fixed order, after dq, dk, dv;
 *  not written when execute fails.
 *  @param plan  a backward plan of an ATTN_SCORE_GENERAL forward plan
 *  @param dw    [d_q, d_k] output in the plan's dtype (last dim contiguous,
 *               distinct memory for every element), borrowed: the handle
 *               must stay alive while set; NULL stops computing it
 *  @return ATTN_OK, ATTN_ERR_NULL_ARG (plan), ATTN_ERR_INVALID_ARG (the
 *          forward's score is not GENERAL, "dw"), ATTN_ERR_DTYPE,
 *          ATTN_ERR_SHAPE, ATTN_ERR_LAYOUT (naming "dw"). On error nothing
 *          changes. @since 0.2.0 */
ATTN_API attn_status attn_backward_plan_set_general_grad(attn_backward_plan *plan, attn_tensor *dw);

/** Also compute the additive score's weight gradients at every execute:
 *  ∂L/∂w_q [A, d_q], ∂L/∂w_k [A, d_k], ∂L/∂bias [A] and ∂L/∂v [A] (the
 *  formulas are at the top of this header). Overwritten, in a fixed order,
 *  after dq, dk, dv; not written when execute fails.
 *  @param plan   a backward plan of an ATTN_SCORE_ADDITIVE forward plan
 *  @param dw_q   [A, d_q] output (last dim contiguous)
 *  @param dw_k   [A, d_k] output (last dim contiguous)
 *  @param dbias  [A] output (any stride), or NULL; only when the forward
 *                descriptor has a bias
 *  @param dv     [A] output (any stride)
 *  All in the plan's dtype, distinct memory for every element, borrowed
 *  (the handles must stay alive while set). All four NULL stops computing
 *  them.
 *  @return ATTN_OK, ATTN_ERR_NULL_ARG (plan; dw_q, dw_k or dv NULL while
 *          another is given), ATTN_ERR_INVALID_ARG (the forward's score is
 *          not ADDITIVE, "dw_q"; dbias without a forward bias, "dbias"),
 *          ATTN_ERR_DTYPE, ATTN_ERR_SHAPE, ATTN_ERR_LAYOUT (naming the
 *          tensor). On error nothing changes. @since 0.2.0 */
ATTN_API attn_status attn_backward_plan_set_additive_grads(attn_backward_plan *plan,
                                                          attn_tensor *dw_q, attn_tensor *dw_k,
                                                          attn_tensor *dbias, attn_tensor *dv);

/** Also compute Linformer's projection gradients at every execute (a
 *  forward plan of ATTN_VARIANT_LINFORMER whose E and F were given with
 *  attn_desc_set_lowrank_proj()):
 *
 *    dE = Σ_b dK'_b · K_bᵀ,   dF = Σ_b dV'_b · V_bᵀ
 *
 *  where K' = E·K, V' = F·V are the projected keys and values and dK', dV'
 *  their gradients; summed over batch items (and over kv heads for a shared
 *  [k, S_k] projection) and over each item's key positions below its key
 *  length, in a fixed order. Overwritten after dq, dk, dv; not written when
 *  execute fails.
 *  @param plan  a backward plan of a Linformer forward plan
 *  @param de    output of e's shape ([k, S_k] or [H_kv, k, S_k]), the plan's
 *               dtype, last dim contiguous, distinct memory for every element;
 *               borrowed (the handle must stay alive while set)
 *  @param df    the same for f
 *  Both NULL stops computing them.
 *  @return ATTN_OK, ATTN_ERR_NULL_ARG (plan; one of de, df NULL),
 *          ATTN_ERR_INVALID_ARG (not a Linformer plan, or its projections
 *          were drawn from a seed, "de"), ATTN_ERR_DTYPE, ATTN_ERR_SHAPE,
 *          ATTN_ERR_LAYOUT (naming the tensor). On error nothing changes.
 *          @since 0.2.0 */
ATTN_API attn_status attn_backward_plan_set_lowrank_grads(attn_backward_plan *plan, attn_tensor *de,
                                                         attn_tensor *df);

/** Bytes of workspace the backward plan holds. 0 for NULL. @since 0.2.0 */
ATTN_API size_t attn_backward_plan_workspace_size(const attn_backward_plan *plan);

/** Destroy a backward plan (before its forward plan). NULL is a no-op.
 *  @since 0.2.0 */
ATTN_API void attn_backward_plan_destroy(attn_backward_plan *plan);

/** @} */

#ifdef __cplusplus
}
#endif

#endif /* ATTN_BACKWARD_H */

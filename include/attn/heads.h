/*
 * libattn — multi-head attention: split/merge views, the attn_mha layer (GQA/MQA).
 * Included by attn/attn.h; may also be included on its own.
 *
 * Head split and merge
 * --------------------
 * A projection produces x: [B, S, H·D] (row (b, s) holds the H heads side by
 * side). Attention wants [B, H, S, D]. Because the kernels accept any strides
 * with a contiguous last dim, the split is a *view*: the same memory with
 * shape {B, H, S, D} and strides {x.stride(0), D, x.stride(1), 1}. The merge
 * back is a view too whenever the heads of a row lie side by side (stride of
 * H = D); otherwise copy with attn_heads_merge(). Sequence-first memory
 * [S, B, H·D] is passed as the [B, S, H·D] tensor with swapped strides
 * (attn_tensor_wrap with strides {H·D, B·H·D, 1}).
 *
 * The multi-head layer
 * --------------------
 * attn_mha computes exactly what PyTorch's nn.MultiheadAttention computes
 * (dropout 0), generalised to grouped K/V heads:
 *
 *   Q = query·W_qᵀ + b_q            [B, S_q, E]    → split into H heads of D = E/H
 *   K = key·W_kᵀ + b_k              [B, S_k, H_kv·D] → split into H_kv heads
 *   V = value·W_vᵀ + b_v            [B, S_k, H_kv·D] → split into H_kv heads
 *   (add_bias_kv:   append the row bias_k to K and bias_v to V: S_k' = S_k + 1)
 *   (add_zero_attn: then append a zero row to K and V:          S_k' += 1)
 *   O_h = softmax(scale·Q_h K_gᵀ + masks) V_g,  g = h / (H / H_kv), scale = 1/√D
 *   out = merge(O)·W_oᵀ + b_o       [B, S_q, E]
 *
 * Query head h reads K/V head h/(H/H_kv) in place (no copy of K or V):
 * H_kv = H is ordinary multi-head attention, H_kv = 1 multi-query (MQA).
 * The appended bias/zero keys are attended by every query whatever the masks
 * say (PyTorch pads its masks with "attend" for them).
 *
 * Weights are borrowed attn_tensor objects in PyTorch's layout (row-major
 * [out_features, in_features]); the caller keeps them alive while the layer
 * exists and may change their contents between executes (not their shapes).
 */
#ifndef ATTN_HEADS_H
#define ATTN_HEADS_H

#include "attn/attn.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ------------------------------------------------------------------------- */
/** @defgroup heads Head split and merge
 *  @{ */

/** Zero-copy split: a new borrowed tensor viewing x's memory as heads.
 *  @param ctx        context for errors and the view's allocation.
 *  @param x          rank 3 [B, S, H·D], f32 or f64, last dim contiguous
 *                    (any other strides; the caller keeps x's memory).
 *  @param num_heads  H ≥ 1, must divide x's last dim.
 *  @param out        receives the view [B, H, S, D] with strides
 *                    {x.stride(0), D, x.stride(1), 1}; destroy it with
 *                    attn_tensor_destroy() (the memory stays the caller's).
 *                    Untouched on failure.
 *  @return ATTN_OK, ATTN_ERR_NULL_ARG, ATTN_ERR_SHAPE (rank, H not dividing),
 *          ATTN_ERR_DTYPE, ATTN_ERR_LAYOUT (last dim not contiguous),
 *          ATTN_ERR_INVALID_ARG (num_heads < 1), ATTN_ERR_NO_MEMORY.
 *  @since 0.1.0 */
ATTN_API attn_status attn_heads_split_view(attn_context *ctx, const attn_tensor *x,
                                           int64_t num_heads, attn_tensor **out);

/** Zero-copy merge: view x [B, H, S, D] as [B, S, H·D]. Possible only when
 *  the heads of one (b, s) row lie side by side: x.stride(3) = 1 and
 *  x.stride(1) = D (true for views made by attn_heads_split_view() and for
 *  [B, S, H, D] memory); otherwise ATTN_ERR_LAYOUT: use attn_heads_merge().
 *  @param ctx  context for errors and the view's allocation.
 *  @param x    rank 4 [B, H, S, D], f32 or f64 (the caller keeps its memory).
 *  @param out  receives the view [B, S, H·D] with strides
 *              {x.stride(0), x.stride(2), 1}; destroy with attn_tensor_destroy().
 *  @return ATTN_OK, ATTN_ERR_NULL_ARG, ATTN_ERR_SHAPE, ATTN_ERR_DTYPE,
 *          ATTN_ERR_LAYOUT, ATTN_ERR_NO_MEMORY. @since 0.1.0 */
ATTN_API attn_status attn_heads_merge_view(attn_context *ctx, const attn_tensor *x,
                                           attn_tensor **out);

/** Copying split: out[b, h, s, d] = x[b, s, h·D + d].
 *  @param ctx  context for errors.
 *  @param x    rank 3 [B, S, H·D], any strides (≥ 0).
 *  @param out  rank 4 [B, H, S, D], same dtype (f32/f64), any strides; H and D
 *              are taken from out. x and out must not overlap.
 *  @return ATTN_OK, ATTN_ERR_NULL_ARG, ATTN_ERR_SHAPE (shapes do not
 *          correspond), ATTN_ERR_DTYPE. out is untouched on failure.
 *  @since 0.1.0 */
ATTN_API attn_status attn_heads_split(attn_context *ctx, const attn_tensor *x, attn_tensor *out);

/** Copying merge: out[b, s, h·D + d] = x[b, h, s, d].
 *  @param ctx  context for errors.
 *  @param x    rank 4 [B, H, S, D], any strides.
 *  @param out  rank 3 [B, S, H·D], same dtype (f32/f64), any strides; must not
 *              overlap x.
 *  @return as attn_heads_split(). @since 0.1.0 */
ATTN_API attn_status attn_heads_merge(attn_context *ctx, const attn_tensor *x, attn_tensor *out);

/** @} */

/* ------------------------------------------------------------------------- */
/** @defgroup mha Multi-head attention layer (nn.MultiheadAttention, GQA, MQA)
 *  @{ */

/** Opaque multi-head attention layer: configuration + borrowed weights. */
typedef struct attn_mha attn_mha;

/** Opaque plan of an attn_mha for fixed input/output shapes. */
typedef struct attn_mha_plan attn_mha_plan;

/** Configuration of attn_mha_create(). Initialise with attn_mha_config_init():
 *  the struct may grow at the end and @c struct_size says which fields the
 *  caller knows. */
typedef struct attn_mha_config {
  size_t struct_size;     /**< sizeof(attn_mha_config), set by init */
  int64_t embed_dim;      /**< E ≥ 1, divisible by num_heads (no default: 0 is an error) */
  int64_t num_heads;      /**< H ≥ 1 (no default) */
  int64_t num_kv_heads;   /**< H_kv, divides H; 0 = H (default); 1 = MQA */
  int64_t kdim;           /**< key input features; 0 = E (default) */
  int64_t vdim;           /**< value input features; 0 = E (default) */
  int32_t bias;           /**< non-zero (default): in_proj_bias and out_proj_bias exist */
  int32_t add_bias_kv;    /**< non-zero: append bias_k / bias_v rows to K / V (default 0) */
  int32_t add_zero_attn;  /**< non-zero: append a zero row to K and V (default 0) */
  int32_t batch_first;    /**< non-zero: inputs/outputs [B, S, ·]; 0 (default): [S, B, ·] */
  /** ATTN_DTYPE_F32 (default) or ATTN_DTYPE_F64; or (since 0.2.0)
   *  ATTN_DTYPE_BF16 / ATTN_DTYPE_F16: parameters, query, key, value and out
   *  in that 16-bit type, everything in between in f32 (each chunk of input
   *  rows and the parameters widened to f32 at every execute, projections
   *  and attention in f32, out rounded once); the attention weights output
   *  and masks are then f32. */
  attn_dtype dtype;
} attn_mha_config;

/** Fill @p cfg with defaults (see the fields). NULL is a no-op. @since 0.1.0 */
ATTN_API void attn_mha_config_init(attn_mha_config *cfg);

/** The layer's parameters, PyTorch names and layouts, all borrowed tensors
 *  of the layer's dtype with a contiguous last dim. With D = E/H and
 *  E_kv = H_kv·D (= E unless GQA):
 *   - in_proj_weight  [E + 2·E_kv, E] (PyTorch's [3E, E]): rows [0, E) = W_q,
 *                     then W_k, then W_v. Only when kdim = vdim = E.
 *   - q_proj_weight [E, E], k_proj_weight [E_kv, kdim], v_proj_weight
 *                     [E_kv, vdim]: the alternative to in_proj_weight
 *                     (required when kdim or vdim ≠ E). Give all three or none.
 *   - in_proj_bias    [E + 2·E_kv] (b_q, b_k, b_v): required iff config.bias.
 *   - out_proj_weight [E, E] (out_proj.weight): required.
 *   - out_proj_bias   [E] (out_proj.bias): required iff config.bias.
 *   - bias_k, bias_v  [1, 1, E_kv]: required iff config.add_bias_kv.
 *  Unused fields must be NULL. Initialise with attn_mha_weights_init(). */
typedef struct attn_mha_weights {
  size_t struct_size; /**< sizeof(attn_mha_weights), set by init */
  const attn_tensor *in_proj_weight; /**< [E + 2·E_kv, E] packed W_q, W_k, W_v, or NULL */
  const attn_tensor *q_proj_weight; /**< [E, E], or NULL (with k/v_proj_weight instead of in_proj_weight) */
  const attn_tensor *k_proj_weight; /**< [E_kv, kdim], or NULL */
  const attn_tensor *v_proj_weight; /**< [E_kv, vdim], or NULL */
  const attn_tensor *in_proj_bias; /**< [E + 2·E_kv] b_q, b_k, b_v; iff config.bias */
  const attn_tensor *out_proj_weight; /**< [E, E]; required */
  const attn_tensor *out_proj_bias; /**< [E]; iff config.bias */
  const attn_tensor *bias_k; /**< [1, 1, E_kv]; iff config.add_bias_kv */
  const attn_tensor *bias_v; /**< [1, 1, E_kv]; iff config.add_bias_kv */
} attn_mha_weights;

/** Set struct_size and every tensor to NULL. NULL is a no-op. @since 0.1.0 */
ATTN_API void attn_mha_weights_init(attn_mha_weights *w);

/** Create a multi-head attention layer.
 *  @param ctx      context (threads, allocator, errors); must outlive the layer.
 *  @param cfg      configuration (copied).
 *  @param weights  parameters (the struct is copied; the tensors are borrowed
 *                  and must outlive the layer and its plans).
 *  @param out      receives the layer; untouched on failure.
 *  @return ATTN_OK;
 *          ATTN_ERR_NULL_ARG (ctx, cfg, weights, out, or a required weight missing);
 *          ATTN_ERR_INVALID_ARG (struct_size unknown, E or H < 1, E not divisible
 *            by H, H not divisible by H_kv, kdim/vdim < 0, packed and separate
 *            weights both or neither given, a weight given that the
 *            configuration does not use);
 *          ATTN_ERR_DTYPE (dtype not f32/f64/bf16/f16, a weight of another dtype);
 *          ATTN_ERR_SHAPE (a weight of the wrong rank or shape: the message
 *            names it and the expected shape);
 *          ATTN_ERR_LAYOUT (a weight's last dim not contiguous);
 *          ATTN_ERR_NO_MEMORY.
 *  @since 0.1.0 */
ATTN_API attn_status attn_mha_create(attn_context *ctx, const attn_mha_config *cfg,
                                     const attn_mha_weights *weights, attn_mha **out);

/** Destroy a layer. Its plans must be destroyed first. NULL is a no-op. @since 0.1.0 */
ATTN_API void attn_mha_destroy(attn_mha *mha);

/** Plan the layer for these tensors (only their metadata is read here). With
 *  L = S_q, S = S_k and S' = S_k + add_bias_kv + add_zero_attn:
 *   - query: rank 3, [B, L, E] if batch_first, else [L, B, E].
 *   - key:   [B, S, kdim] / [S, B, kdim];  value: [B, S, vdim] / [S, B, vdim].
 *            For self-attention pass the query tensor three times.
 *   - out:   like query: [B, L, E] / [L, B, E].
 *   - key_padding_mask (optional): U8 rank 2 [B, S]. **Non-zero = attend**
 *     (the library convention). This is the opposite of PyTorch's bool
 *     key_padding_mask, where True means "ignore": pass ~mask from PyTorch.
 *   - weights (optional, need_weights): always batch-first, like PyTorch:
 *     rank 3 [B, L, S'] gets the attention probabilities averaged over the H
 *     heads (average_attn_weights=True); rank 4 [B, H, L, S'] gets them per
 *     head. NULL = need_weights=False (cheaper).
 *   - desc (optional, NULL = plain scaled-dot attention): attention options
 *     as for attn_plan_create() on the per-head problem [B, H, L, D] ×
 *     [B, H_kv, S, D]: causal (bottom-right/top-left), window, key/query
 *     lengths, bool mask (non-zero = attend) and additive mask, both
 *     [B or 1, H or 1, L, S] (PyTorch's attn_mask [L, S] is [1, 1, L, S]; its
 *     bool attn_mask has True = ignore, so pass the negation), ALiBi, softcap,
 *     scale. Masks are given for the S real keys; the appended bias/zero keys
 *     are always attended. Read at plan time except borrowed arrays/tensors,
 *     whose contents are read at every execute.
 *  All inputs/outputs: the layer's dtype (weights: f32 for a bf16/f16 layer),
 *  last dim contiguous, other strides free.
 *  Workspace (allocated now): the projected Q, K, V and the merged attention
 *  output (2·B·L·E + 2·B·S'·E_kv elements), plus B·H·L·S' for averaged weights,
 *  plus B·(H or 1)·L·S' when masks must be combined into one (a key padding
 *  mask together with a bool mask, or any key mask together with
 *  add_bias_kv/add_zero_attn).
 *  @return ATTN_OK, ATTN_ERR_NULL_ARG, ATTN_ERR_SHAPE, ATTN_ERR_DTYPE,
 *          ATTN_ERR_LAYOUT, ATTN_ERR_OVERFLOW, ATTN_ERR_INVALID_ARG,
 *          ATTN_ERR_UNSUPPORTED (desc variant other than exact together with
 *          combined masks), ATTN_ERR_NO_MEMORY.
 *  @since 0.1.0 */
ATTN_API attn_status attn_mha_plan_create(attn_mha *mha, const attn_desc *desc,
                                          const attn_tensor *query, const attn_tensor *key,
                                          const attn_tensor *value,
                                          const attn_tensor *key_padding_mask,
                                          const attn_tensor *out, const attn_tensor *weights,
                                          attn_mha_plan **plan);

/** Run the layer. The tensors must have the plan's dtypes, shapes and strides
 *  (data pointers may differ); key_padding_mask and weights non-NULL exactly
 *  when they were at plan time. Projections are GEMMs (OpenBLAS with its own
 *  thread setting), attention runs on the context's threads. Allocates
 *  nothing. On error no output is written.
 *  @return ATTN_OK, ATTN_ERR_NULL_ARG, ATTN_ERR_MISMATCH, ATTN_ERR_THREAD.
 *  @since 0.1.0 */
ATTN_API attn_status attn_mha_plan_execute(attn_mha_plan *plan, const attn_tensor *query,
                                           const attn_tensor *key, const attn_tensor *value,
                                           const attn_tensor *key_padding_mask,
                                           attn_tensor *out, attn_tensor *weights);

/** Bytes of workspace the plan holds (including its attention plan). 0 for NULL.
 *  @since 0.1.0 */
ATTN_API size_t attn_mha_plan_workspace_size(const attn_mha_plan *plan);

/** Bytes of workspace attn_mha_plan_execute_on() needs on @p ctx's threads
 *  (NULL: the plan's context). 0 for a NULL plan. @since 0.2.0 */
ATTN_API size_t attn_mha_plan_workspace_size_on(const attn_mha_plan *plan,
                                                const attn_context *ctx);

/** Run the layer plan on @p ctx's threads with caller-owned workspace of at
 *  least attn_mha_plan_workspace_size_on(plan, ctx) bytes (any alignment).
 *  The plan and the layer are only read, so several threads may run one plan
 *  at once, each with its own context and workspace; results are bitwise
 *  identical to attn_mha_plan_execute().
 *  @param plan      the layer plan (read-only here)
 *  @param ctx       the calling thread's context (threads, error message)
 *  @param workspace caller memory, used only during the call
 *  @param workspace_size  its size in bytes
 *  @param query, key, value, key_padding_mask, out, weights  as for
 *                   attn_mha_plan_execute()
 *  @return as attn_mha_plan_execute(), plus ATTN_ERR_NULL_ARG (ctx, workspace)
 *          and ATTN_ERR_INVALID_ARG (workspace_size too small). @since 0.2.0 */
ATTN_API attn_status attn_mha_plan_execute_on(const attn_mha_plan *plan, attn_context *ctx,
                                              void *workspace, size_t workspace_size,
                                              const attn_tensor *query, const attn_tensor *key,
                                              const attn_tensor *value,
                                              const attn_tensor *key_padding_mask,
                                              attn_tensor *out, attn_tensor *weights);

/** Destroy a plan. NULL is a no-op. @since 0.1.0 */
ATTN_API void attn_mha_plan_destroy(attn_mha_plan *plan);

/* ------------------------------------------------------------------------- */
/** @defgroup mha_backward Training the multi-head layer (backward)
 *
 *  A training step of an attn_mha layer is three calls on one backward plan:
 *
 *      attn_mha_forward_train(plan, query, key, value, kpm, out, saved, n);
 *      ...the loss, dout = ∂L/∂out...
 *      attn_mha_backward_execute(plan, query, key, value, kpm, dout, saved, n,
 *                                dquery, dkey, dvalue, &grads);
 *
 *  The forward keeps what the backward needs (the projected Q, K, V with
 *  the appended bias/zero rows, the merged attention output and the
 *  softmax's log-sum-exp) in @c saved, caller memory of
 *  attn_mha_backward_saved_size() bytes, so one plan serves any number of
 *  steps in flight (gradient accumulation, pipelining) and is only read by
 *  both calls. The backward then runs, all in the layer's dtype:
 *
 *    dW_o = Σ dout_rowᵀ · merge(O)_row     db_o = Σ dout_row
 *    dO   = dout · W_o   → the attention backward (attn/backward.h) on the
 *                          head views → dQ, dK, dV (GQA: summed per group)
 *    dW_q = Σ dQ_rowᵀ · query_row, db_q = Σ dQ_row, dquery = dQ · W_q
 *    (likewise K, V over the S_k real keys; the appended bias_k/bias_v row's
 *    gradient, summed over the batch, is dbias_k/dbias_v; the zero row has
 *    none)
 *
 *  Every sum over rows runs in a fixed order per output block, so results
 *  are bitwise identical for any thread count. Gradients equal PyTorch's
 *  nn.MultiheadAttention autograd (tests/oracle/test_mha_torch.py).
 *
 *  Supported: what attn_mha_plan_create() supports for F32 and F64 layers
 *  (packed or separate weights, kdim/vdim, bias, add_bias_kv,
 *  add_zero_attn, GQA/MQA, either sequence order, key_padding_mask, every
 *  desc option the attention backward supports). Not (ATTN_ERR_UNSUPPORTED
 *  at plan creation): bf16/f16 layers, and desc variants without an
 *  attention backward. The attention weights output is not available in
 *  training (use attn_mha_plan_execute() for it).
 *  @{ */

/** Opaque backward plan of an attn_mha layer for fixed shapes. */
typedef struct attn_mha_backward_plan attn_mha_backward_plan;

/** Where attn_mha_backward_execute() writes the parameter gradients: each
 *  a tensor of the same shape and dtype as the parameter of that name in
 *  attn_mha_weights (last dim contiguous), or NULL when that gradient is
 *  not wanted. Gradients are overwritten, not accumulated into. Give only
 *  fields the layer has (in_proj_weight for a packed layer, q/k/v for a
 *  separate one). Initialise with attn_mha_grads_init(). */
typedef struct attn_mha_grads {
  size_t struct_size;            /**< sizeof(attn_mha_grads), set by init */
  attn_tensor *in_proj_weight;   /**< [E + 2·E_kv, E], or NULL */
  attn_tensor *q_proj_weight;    /**< [E, E], or NULL */
  attn_tensor *k_proj_weight;    /**< [E_kv, kdim], or NULL */
  attn_tensor *v_proj_weight;    /**< [E_kv, vdim], or NULL */
  attn_tensor *in_proj_bias;     /**< [E + 2·E_kv], or NULL */
  attn_tensor *out_proj_weight;  /**< [E, E], or NULL */
  attn_tensor *out_proj_bias;    /**< [E], or NULL */
  attn_tensor *bias_k;           /**< [1, 1, E_kv], or NULL */
  attn_tensor *bias_v;           /**< [1, 1, E_kv], or NULL */
} attn_mha_grads;

/** Set struct_size and every tensor to NULL. NULL is a no-op. @since 0.2.0 */
ATTN_API void attn_mha_grads_init(attn_mha_grads *g);

/** Plan training steps of @p mha for these tensors (metadata only), with
 *  the arguments and checks of attn_mha_plan_create() without weights.
 *  Allocates the plan's workspace now (the projected gradients dQ, dK, dV
 *  and the merged dO besides the forward's workspace, plus the attention
 *  backward's own).
 *  @param mha               the layer (f32 or f64); must outlive the plan
 *  @param desc              attention options as for attn_mha_plan_create(),
 *                           or NULL
 *  @param query             metadata of the query input
 *  @param key               metadata of the key input
 *  @param value             metadata of the value input
 *  @param key_padding_mask  metadata of the key padding mask, or NULL
 *  @param out               metadata of the output
 *  @param plan              receives the plan; untouched on failure
 *  @return as attn_mha_plan_create(), plus ATTN_ERR_UNSUPPORTED (a
 *          bf16/f16 layer, naming "mha"; a desc the attention backward does
 *          not support, naming "desc"). @since 0.2.0 */
ATTN_API attn_status attn_mha_backward_plan_create(attn_mha *mha, const attn_desc *desc,
                                                   const attn_tensor *query,
                                                   const attn_tensor *key,
                                                   const attn_tensor *value,
                                                   const attn_tensor *key_padding_mask,
                                                   const attn_tensor *out,
                                                   attn_mha_backward_plan **plan);

/** Bytes of @c saved one training step needs (any alignment; includes the
 *  slack to align it). 0 for NULL. @since 0.2.0 */
ATTN_API size_t attn_mha_backward_saved_size(const attn_mha_backward_plan *plan);

/** The layer's forward (as attn_mha_plan_execute() without weights; out is
 *  bitwise what it writes) keeping the activations in @p saved for
 *  attn_mha_backward_execute(). Allocates nothing. One thread at a time per
 *  plan.
 *  @param plan              the backward plan
 *  @param query             as for attn_mha_plan_execute(): plan-time
 *                           dtype, shape and strides
 *  @param key               likewise
 *  @param value             likewise
 *  @param key_padding_mask  likewise (non-NULL exactly when it was at plan time)
 *  @param out               receives the layer's output
 *  @param saved             caller memory (any alignment) that receives the
 *                           activations
 *  @param saved_size        its size: ≥ attn_mha_backward_saved_size()
 *  @return ATTN_OK, ATTN_ERR_NULL_ARG, ATTN_ERR_MISMATCH (a tensor differs
 *          from plan time), ATTN_ERR_INVALID_ARG (saved_size too small, a
 *          borrowed length or slope out of range), ATTN_ERR_THREAD.
 *  @since 0.2.0 */
ATTN_API attn_status attn_mha_forward_train(attn_mha_backward_plan *plan,
                                            const attn_tensor *query, const attn_tensor *key,
                                            const attn_tensor *value,
                                            const attn_tensor *key_padding_mask,
                                            attn_tensor *out, void *saved, size_t saved_size);

/** The gradients of a training step. query, key, value, key_padding_mask,
 *  the layer's parameters and the descriptor's borrowed arrays must hold
 *  what they held for the attn_mha_forward_train() that filled @p saved.
 *  Allocates nothing; one thread at a time per plan; bitwise identical for
 *  any thread count. On a validation error no output is written.
 *  @param plan              the backward plan
 *  @param query             the forward's query (plan-time metadata)
 *  @param key               the forward's key
 *  @param value             the forward's value
 *  @param key_padding_mask  the forward's key padding mask, or NULL as at
 *                           plan time
 *  @param dout              ∂L/∂out, out's shape (any strides, last dim
 *                           contiguous)
 *  @param saved             what attn_mha_forward_train() wrote (read only)
 *  @param saved_size        its size: ≥ attn_mha_backward_saved_size()
 *  @param dquery            receives ∂L/∂query (query's shape; any strides,
 *                           last dim contiguous), or NULL if not wanted
 *  @param dkey              receives ∂L/∂key (key's shape), or NULL
 *  @param dvalue            receives ∂L/∂value (value's shape), or NULL.
 *                           Self-attention: pass one tensor for two or three
 *                           of dquery, dkey, dvalue (the same object, or the
 *                           same data and metadata) and it receives their
 *                           sum, as autograd gives for an input used three
 *                           times. Otherwise the outputs must not overlap
 *                           each other or the inputs.
 *  @param grads             parameter gradients (see attn_mha_grads), or
 *                           NULL for none
 *  @return ATTN_OK, ATTN_ERR_NULL_ARG, ATTN_ERR_MISMATCH, ATTN_ERR_SHAPE,
 *          ATTN_ERR_DTYPE, ATTN_ERR_LAYOUT (a gradient tensor, named),
 *          ATTN_ERR_INVALID_ARG (saved_size too small, grads.struct_size
 *          unknown, a gradient for a parameter the layer does not have, an
 *          input gradient sharing another's data with other metadata),
 *          ATTN_ERR_THREAD.
 *  @since 0.2.0 */
ATTN_API attn_status attn_mha_backward_execute(attn_mha_backward_plan *plan,
                                               const attn_tensor *query, const attn_tensor *key,
                                               const attn_tensor *value,
                                               const attn_tensor *key_padding_mask,
                                               const attn_tensor *dout, const void *saved,
                                               size_t saved_size, attn_tensor *dquery,
                                               attn_tensor *dkey, attn_tensor *dvalue,
                                               const attn_mha_grads *grads);

/** Bytes of workspace the backward plan holds (its attention plans' included).
 *  0 for NULL. @since 0.2.0 */
ATTN_API size_t attn_mha_backward_plan_workspace_size(const attn_mha_backward_plan *plan);

/** Destroy a backward plan (before its layer). NULL is a no-op. @since 0.2.0 */
ATTN_API void attn_mha_backward_plan_destroy(attn_mha_backward_plan *plan);

/** @} */

/** @} */

#ifdef __cplusplus
}
#endif

#endif /* ATTN_HEADS_H */

/*
 * libattn — attention mechanisms as GEMM calls into BLAS, behind a stable C ABI.
 *
 * This header is the manual. Every function documents what it computes, its
 * parameters, who owns what, thread-safety, the statuses it returns and the
 * version it appeared in.
 *
 * Conventions used throughout
 * ---------------------------
 *  - Tensors are rank 1..4, shapes and strides are int64_t and counted in
 *    elements (not bytes). Attention operands use the logical layout
 *    [batch, heads, seq, dim]; the [batch, seq, heads, dim] memory layout is
 *    expressed through strides (see attn_tensor_wrap()) and never copied.
 *  - The last dimension of q, k, v and out must be contiguous (stride 1), and
 *    their rows must not overlap (sequence stride ≥ head dim).
 *  - Boolean masks: **true (non-zero) = attend**, false = masked out.
 *  - A query row that keeps no key at all produces out = 0, lse = -inf and
 *    weights = 0. Never NaN.
 *  - Every function that can fail returns an ::attn_status. On failure no
 *    output is written and, when a context is at hand, a message naming the
 *    offending argument is available from attn_context_last_error().
 *  - The library never prints, aborts or exits.
 *
 * Stability: everything declared through this header is stable (versioned
 * symbols, checked against an ABI baseline). A few calls whose shape may still
 * change live in attn/experimental.h and are visible only with
 * ATTN_EXPERIMENTAL defined before this include.
 *
 * Thread-safety: an ::attn_context and everything created from it are used by
 * one thread at a time (create one context per caller thread). Distinct
 * contexts are fully independent. One exception by design: a plan is never
 * written by an execute, so several threads may run one ::attn_plan at once
 * through attn_plan_execute_on(), each with its own context and workspace. Pure functions (attn_status_string(),
 * attn_version_*) are safe from any thread.
 */
#ifndef ATTN_ATTN_H
#define ATTN_ATTN_H

#include <stddef.h>
#include <stdint.h>

#include "attn/version.h"

#if defined(_WIN32) && defined(ATTN_BUILDING_SHARED)
#define ATTN_API __declspec(dllexport)
#elif defined(__GNUC__) || defined(__clang__)
#define ATTN_API __attribute__((visibility("default")))
#else
#define ATTN_API
#endif

#ifdef __cplusplus
extern "C" {
#endif

/* ------------------------------------------------------------------------- */
/** @defgroup version Version
 *  @{ */

/** The library's version as MAJOR*10000 + MINOR*100 + PATCH (run-time value;
 *  compare with ::ATTN_VERSION_NUMBER for the headers you compiled against).
 *  @since 0.1.0 */
ATTN_API uint32_t attn_version_number(void);

/** The library's version as a static "MAJOR.MINOR.PATCH" string. @since 0.1.0 */
ATTN_API const char *attn_version_string(void);

/** @} */

/* ------------------------------------------------------------------------- */
/** @defgroup status Status codes
 *  @{ */

/** X-macro list of all statuses: name, explicit value, static description.
 *  Values are part of the ABI: new codes are appended, never renumbered. */
#define ATTN_STATUS_LIST(X)                                                           \
  X(ATTN_OK, 0, "success")                                                            \
  X(ATTN_ERR_NULL_ARG, 1, "a required pointer argument is NULL")                      \
  X(ATTN_ERR_INVALID_ARG, 2, "an argument has an invalid value")                      \
  X(ATTN_ERR_SHAPE, 3, "tensor rank or shape is invalid or inconsistent")             \
  X(ATTN_ERR_DTYPE, 4, "tensor dtype is unsupported or inconsistent")                 \
  X(ATTN_ERR_LAYOUT, 5, "tensor strides are not supported (e.g. non-contiguous last dim)") \
  X(ATTN_ERR_OVERFLOW, 6, "a size computation overflows")                             \
  X(ATTN_ERR_NO_MEMORY, 7, "memory allocation failed")                                \
  X(ATTN_ERR_UNSUPPORTED, 8, "the requested combination is not supported")            \
  X(ATTN_ERR_CAPACITY, 9, "the KV cache has no room for the rows")                    \
  X(ATTN_ERR_MISMATCH, 10, "a tensor passed to execute does not match the plan")      \
  X(ATTN_ERR_THREAD, 11, "a worker thread could not be started")                      \
  X(ATTN_ERR_INTERNAL, 12, "internal error (please report)")

/** Status returned by every fallible function. */
typedef enum attn_status {
#define ATTN_STATUS_ENUM_(name, value, text) name = value,
  ATTN_STATUS_LIST(ATTN_STATUS_ENUM_)
#undef ATTN_STATUS_ENUM_
} attn_status;

/** A static, human-readable description of @p status ("unknown status" for
 *  values outside the list). Never NULL. Thread-safe. @since 0.1.0 */
ATTN_API const char *attn_status_string(attn_status status);

/** @} */

/* ------------------------------------------------------------------------- */
/** @defgroup context Context: threads, allocator, last error
 *  @{ */

/** Opaque library context. Owns the worker threads, the allocator hooks and
 *  the last error message. */
typedef struct attn_context attn_context;

/** Allocator hooks. @p alloc returns memory aligned to at least @p alignment
 *  (a power of two ≥ 64) or NULL; @p free receives the pointer and the size
 *  that was asked for. Both are called only from the thread using the
 *  context, never from inside a compute call. */
typedef struct attn_allocator {
  /** Returns @p size bytes aligned to @p alignment, or NULL. */
  void *(*alloc)(void *user_data, size_t size, size_t alignment);
  /** Releases @p ptr, which alloc returned for @p size bytes. */
  void (*free)(void *user_data, void *ptr, size_t size);
  void *user_data; /**< passed unchanged to alloc and free */
} attn_allocator;

/** Options for attn_context_create(). Always initialise with
 *  attn_context_options_init(): the struct may grow at the end, and
 *  @c struct_size tells the library which fields the caller knows. */
typedef struct attn_context_options {
  size_t struct_size;       /**< sizeof(attn_context_options), set by init */
  int32_t num_threads;      /**< 0 = default: $ATTN_NUM_THREADS, else online cores */
  attn_allocator allocator; /**< alloc == NULL: the C library's aligned allocator */
} attn_context_options;

/** Fill @p opts with defaults (num_threads 0, default allocator). @since 0.1.0 */
ATTN_API void attn_context_options_init(attn_context_options *opts);

/** Create a context.
 *  @param opts  options, or NULL for defaults. num_threads must be 0..1024;
 *               alloc and free must be both set or both NULL.
 *  @param out   receives the context; untouched on failure.
 *  @return ATTN_OK, ATTN_ERR_NULL_ARG, ATTN_ERR_INVALID_ARG, ATTN_ERR_NO_MEMORY,
 *          ATTN_ERR_THREAD.
 *  Worker threads (num_threads − 1 of them) start lazily at the first parallel
 *  call and stop in attn_context_destroy(). @since 0.1.0 */
ATTN_API attn_status attn_context_create(const attn_context_options *opts, attn_context **out);

/** Destroy a context. NULL is a no-op. Every tensor, descriptor and plan made
 *  with it must be destroyed first. @since 0.1.0 */
ATTN_API void attn_context_destroy(attn_context *ctx);

/** The message of the last failing call made with @p ctx ("" if none), e.g.
 *  "k: shape [2,8,128,64] does not match q's batch 3". Valid until the next
 *  call with this context. Never NULL (for ctx == NULL: a static text).
 *  @since 0.1.0 */
ATTN_API const char *attn_context_last_error(const attn_context *ctx);

/** Set how long @p ctx's idle worker threads spin (burning a core) before
 *  they sleep, which decides what a call pays to wake them (≈ 50 µs here).
 *  @param ctx the context (not computing at the moment)
 *  @param spin_us
 *   - 0 (the default, unless $ATTN_SPIN_US gives another at context
 *     creation): adaptive — spin to cover the gap between the last two calls
 *     when it is under 2.5 ms (at least 50 µs, at most 5 ms), else 50 µs. A
 *     control loop calling every few ms finds its workers awake (and pays a
 *     core's worth of spinning between calls); servers with back-to-back
 *     calls and occasional callers spin ≤ 50 µs after each call.
 *   - 1..1000000: spin exactly that many µs (e.g. a little more than a control
 *     loop's period).
 *   - −1: never spin; sleep at once (shared machines, batch jobs).
 *  Calls too small to pay for waking the workers run on the calling thread
 *  alone whatever the policy. Results never depend on it. Takes effect at the
 *  next call; not to be called while @p ctx computes.
 *  @return ATTN_OK, ATTN_ERR_NULL_ARG, ATTN_ERR_INVALID_ARG (outside
 *          −1..1000000). @since 0.2.0 */
ATTN_API attn_status attn_context_set_spin(attn_context *ctx, int32_t spin_us);

/** Number of threads compute calls on @p ctx use (≥ 1; 0 for NULL). @since 0.1.0 */
ATTN_API int32_t attn_context_num_threads(const attn_context *ctx);

/** @} */

/* ------------------------------------------------------------------------- */
/** @defgroup tensor Tensors
 *  @{ */

/** Element types. Values are ABI. */
typedef enum attn_dtype {
  ATTN_DTYPE_F32 = 1, /**< IEEE float */
  ATTN_DTYPE_F64 = 2, /**< IEEE double */
  ATTN_DTYPE_U8 = 3,  /**< uint8_t: boolean masks and block layouts only */
  /** bfloat16 (the top 16 bits of an IEEE float: 8-bit significand, f32's
   *  range), as uint16_t. A storage type for q, k, v and out of exact,
   *  Longformer, BigBird and block-sparse plans (dot / scaled-dot scores);
   *  computed in f32 (see attn_plan_create()). @since 0.2.0 */
  ATTN_DTYPE_BF16 = 4,
  /** IEEE binary16 (11-bit significand, max 65504), as uint16_t; the same
   *  uses as ATTN_DTYPE_BF16. @since 0.2.0 */
  ATTN_DTYPE_F16 = 5
} attn_dtype;

/** Largest tensor rank. */
#define ATTN_MAX_RANK 4

/** Opaque tensor: dtype, shape, strides (elements), data pointer. */
typedef struct attn_tensor attn_tensor;

/** Create an owned, zero-filled, C-contiguous tensor whose data is 64-byte
 *  aligned and allocated through @p ctx's allocator.
 *  @param ctx    the context whose allocator provides the memory
 *  @param dtype  element type
 *  @param rank   1..ATTN_MAX_RANK
 *  @param shape  rank dims, each ≥ 1; their product (in bytes) must not overflow.
 *  @param out    receives the tensor; untouched on failure.
 *  @return ATTN_OK, ATTN_ERR_NULL_ARG, ATTN_ERR_DTYPE, ATTN_ERR_SHAPE,
 *          ATTN_ERR_OVERFLOW, ATTN_ERR_NO_MEMORY. @since 0.1.0 */
ATTN_API attn_status attn_tensor_create(attn_context *ctx, attn_dtype dtype, int32_t rank,
                                        const int64_t *shape, attn_tensor **out);

/** Wrap caller memory without copying. The caller keeps @p data and must keep
 *  it alive while the tensor is used.
 *  @param ctx     the context the tensor belongs to
 *  @param dtype   element type
 *  @param rank    1..ATTN_MAX_RANK
 *  @param shape   rank dims, each ≥ 1
 *  @param strides rank strides in elements, each ≥ 0 (0 broadcasts), or NULL
 *                 for C-contiguous. Example, [B,S,H,D] memory seen as
 *                 [B,H,S,D]: shape {B,H,S,D}, strides {S*H*D, D, H*D, 1}.
 *  @param data    the first element (non-NULL); not copied, not freed
 *  @param out     receives the tensor; untouched on failure.
 *  @return as attn_tensor_create(), plus ATTN_ERR_LAYOUT for negative strides.
 *  @since 0.1.0 */
ATTN_API attn_status attn_tensor_wrap(attn_context *ctx, attn_dtype dtype, int32_t rank,
                                      const int64_t *shape, const int64_t *strides, void *data,
                                      attn_tensor **out);

/** Destroy a tensor (frees the data if owned). NULL is a no-op. @since 0.1.0 */
ATTN_API void attn_tensor_destroy(attn_tensor *t);

/** Accessors. On NULL or an out-of-range axis they return 0 (dtype/rank/numel),
 *  -1 (dim/stride) or NULL (data). @since 0.1.0 */
ATTN_API attn_dtype attn_tensor_dtype(const attn_tensor *t);
/** Rank (1..ATTN_MAX_RANK). @since 0.1.0 */
ATTN_API int32_t attn_tensor_rank(const attn_tensor *t);
/** Size of dimension @p axis. @since 0.1.0 */
ATTN_API int64_t attn_tensor_dim(const attn_tensor *t, int32_t axis);
/** Stride of dimension @p axis, in elements. @since 0.1.0 */
ATTN_API int64_t attn_tensor_stride(const attn_tensor *t, int32_t axis);
/** Number of elements (the product of the shape). @since 0.1.0 */
ATTN_API int64_t attn_tensor_numel(const attn_tensor *t);
/** Address of the first element. @since 0.1.0 */
ATTN_API void *attn_tensor_data(const attn_tensor *t);

/** Point a tensor at new memory of the same shape and strides (for example the
 *  next batch of inputs), so a plan can run on it. @since 0.1.0 */
ATTN_API attn_status attn_tensor_set_data(attn_tensor *t, void *data);

/** @} */

/* ------------------------------------------------------------------------- */
/** @defgroup desc Attention descriptor: what to compute
 *
 *  The descriptor is an option bag that grows through setters. Defaults:
 *  exact scaled-dot-product attention, scale 1/√d_k, no mask.
 *
 *  Score s_ij for query i and key j (before masking):
 *   - ATTN_SCORE_SCALED_DOT: s = scale · q_i·k_j, default scale 1/√d_k
 *   - ATTN_SCORE_DOT (Luong dot): s = scale · q_i·k_j, default scale 1
 *   - ATTN_SCORE_GENERAL (Luong general): s = scale · q_iᵀ W k_j, default scale 1
 *   - ATTN_SCORE_ADDITIVE (Bahdanau): s = vᵀ tanh(W_q q_i + W_k k_j + b)
 *  then, in this order: softcap c: s ← c·tanh(s/c); ALiBi: s ← s − slope_h·|i − j|;
 *  additive mask: s ← s + m_ij; then keys removed by causal/window/lengths/bool
 *  mask/sparsity are dropped. p_i = softmax over kept j; out_i = Σ_j p_ij v_j;
 *  lse_i = log Σ_kept exp(s_ij).
 *
 *  Arrays and tensors passed to setters are borrowed: the caller keeps them
 *  alive until every plan created from the descriptor is destroyed, and may
 *  change their *contents* (not shapes) between executes.
 *  @{ */

/** Opaque descriptor. */
typedef struct attn_desc attn_desc;

/** Which algorithm. Values are ABI. */
typedef enum attn_variant {
  ATTN_VARIANT_EXACT = 0,       /**< exact softmax attention (masks apply) */
  ATTN_VARIANT_SWIN = 1,        /**< 2-D (shifted) window attention on an h×w grid */
  ATTN_VARIANT_LONGFORMER = 2,  /**< sliding window ± global tokens */
  ATTN_VARIANT_BIGBIRD = 3,     /**< block window + global + seeded random blocks */
  ATTN_VARIANT_BLOCK_SPARSE = 4,/**< user block layout */
  ATTN_VARIANT_LINEAR_ELU = 5,  /**< linear attention, φ(x) = elu(x) + 1 */
  ATTN_VARIANT_PERFORMER = 6,   /**< linear attention, FAVOR+ positive random features */
  ATTN_VARIANT_LINFORMER = 7    /**< low-rank: exact attention on (E·K, F·V) */
} attn_variant;

/** Score functions. Values are ABI. */
typedef enum attn_score {
  ATTN_SCORE_SCALED_DOT = 0,
  ATTN_SCORE_DOT = 1,
  ATTN_SCORE_GENERAL = 2,
  ATTN_SCORE_ADDITIVE = 3
} attn_score;

/** Causal alignment. Values are ABI.
 *  TOP_LEFT keeps j ≤ i. BOTTOM_RIGHT keeps j ≤ i + (S_k − S_q): the last
 *  query sees every key (the KV-cache case); with S_q > S_k the first
 *  S_q − S_k rows keep nothing and give 0. With key and/or query lengths
 *  set, S_k and S_q in that offset are batch item b's lengths (the ends of
 *  the valid ranges line up: i' = i + key_len[b] − query_len[b]), so a
 *  padded batch item behaves like the same item unpadded. */
typedef enum attn_causal {
  ATTN_CAUSAL_NONE = 0,
  ATTN_CAUSAL_TOP_LEFT = 1,
  ATTN_CAUSAL_BOTTOM_RIGHT = 2
} attn_causal;

/** Create a descriptor with the defaults above.
 *  @return ATTN_OK, ATTN_ERR_NULL_ARG, ATTN_ERR_NO_MEMORY. @since 0.1.0 */
ATTN_API attn_status attn_desc_create(attn_context *ctx, attn_desc **out);

/** Destroy a descriptor. Plans made from it stay valid (they copy what they
 *  need, except borrowed arrays/tensors). NULL is a no-op. @since 0.1.0 */
ATTN_API void attn_desc_destroy(attn_desc *desc);

/** Select the algorithm. ATTN_ERR_INVALID_ARG for unknown values. @since 0.1.0 */
ATTN_API attn_status attn_desc_set_variant(attn_desc *desc, attn_variant variant);

/** Select the score function. ATTN_ERR_INVALID_ARG for unknown values. @since 0.1.0 */
ATTN_API attn_status attn_desc_set_score(attn_desc *desc, attn_score score);

/** Set the score scale (must be finite and > 0; ATTN_ERR_INVALID_ARG otherwise).
 *  ATTN_SCORE_ADDITIVE has no scale and ignores it. @since 0.1.0 */
ATTN_API attn_status attn_desc_set_scale(attn_desc *desc, double scale);

/** Set causal masking and its alignment. @since 0.1.0 */
ATTN_API attn_status attn_desc_set_causal(attn_desc *desc, attn_causal causal);

/** Sliding window: keep keys with  i' − left ≤ j ≤ i' + right, where i' is the
 *  query position aligned like the causal setting (i' = i + S_k − S_q for
 *  BOTTOM_RIGHT, else i). left, right ≥ 0; ATTN_WINDOW_UNBOUNDED for no
 *  limit on a side. Composes with causal (which caps right at 0). For
 *  ATTN_VARIANT_LONGFORMER this is the local band.
 *  @return ATTN_OK, ATTN_ERR_NULL_ARG (desc), ATTN_ERR_INVALID_ARG (left or
 *          right negative; the descriptor is unchanged). @since 0.1.0 */
ATTN_API attn_status attn_desc_set_window(attn_desc *desc, int64_t left, int64_t right);

/** Value meaning "no limit" for attn_desc_set_window(). */
#define ATTN_WINDOW_UNBOUNDED INT64_MAX

/** Per-batch-item key lengths (padding): key j is kept only if j < lengths[b].
 *  @p count must equal the batch size at plan time; each length 0..S_k.
 *  NULL, 0 clears. Borrowed: the contents are re-checked at every execute.
 *  K/V rows at or past lengths[b] are never read into the result (they may
 *  hold anything, NaN included).
 *  @return ATTN_OK, ATTN_ERR_NULL_ARG (desc, or lengths NULL with count > 0),
 *          ATTN_ERR_INVALID_ARG (count < 0, a negative length, or lengths with
 *          count 0); on failure the descriptor is unchanged. Plan creation
 *          then gives ATTN_ERR_SHAPE if count ≠ B and ATTN_ERR_INVALID_ARG if
 *          a length exceeds S_k, naming "key_lengths". @since 0.1.0 */
ATTN_API attn_status attn_desc_set_key_lengths(attn_desc *desc, const int64_t *lengths,
                                               int64_t count);

/** Per-batch-item query lengths: rows i ≥ lengths[b] give out 0, lse −inf
 *  and weights 0 (whatever q holds there). Same rules and statuses as
 *  attn_desc_set_key_lengths(), with S_q for S_k. @since 0.1.0 */
ATTN_API attn_status attn_desc_set_query_lengths(attn_desc *desc, const int64_t *lengths,
                                                 int64_t count);

/** Boolean mask, dtype U8, rank 4 [B or 1, H or 1, S_q, S_k] (dims of 1 or
 *  stride 0 broadcast; a stride of 0 also works on S_q, e.g. one key-padding
 *  row shared by every query). **Non-zero = attend** — the opposite of
 *  torch.nn.MultiheadAttention's bool attn_mask, where True means "masked".
 *  NULL clears. Borrowed.
 *  @return ATTN_OK, ATTN_ERR_NULL_ARG (desc), ATTN_ERR_SHAPE (rank ≠ 4),
 *          ATTN_ERR_DTYPE (not U8). Plan creation gives ATTN_ERR_SHAPE naming
 *          "bool_mask" when the shape does not broadcast. @since 0.1.0 */
ATTN_API attn_status attn_desc_set_bool_mask(attn_desc *desc, const attn_tensor *mask);

/** Additive float mask, q's dtype, rank 4 [B or 1, H or 1, S_q, S_k], added
 *  to the scores; values ≤ −FLT_MAX (−inf included) remove the key, so −inf
 *  and −FLT_MAX masks give bit-identical results (rows where every key is
 *  removed give 0 / −inf / 0). Broadcasts like the bool mask. NULL clears.
 *  Borrowed.
 *  @return ATTN_OK, ATTN_ERR_NULL_ARG (desc), ATTN_ERR_SHAPE (rank ≠ 4),
 *          ATTN_ERR_DTYPE (not F32/F64). Plan creation gives ATTN_ERR_DTYPE
 *          (dtype ≠ q's) or ATTN_ERR_SHAPE (not broadcastable) naming
 *          "additive_mask". @since 0.1.0 */
ATTN_API attn_status attn_desc_set_additive_mask(attn_desc *desc, const attn_tensor *mask);

/** ALiBi: s_ij −= slopes[h]·|i' − j| (i' aligned as for the window). @p count must
 *  equal the number of query heads at plan time; slopes finite. NULL, 0 clears.
 *  Borrowed: the contents are re-checked at every execute.
 *  @return ATTN_OK, ATTN_ERR_NULL_ARG (desc, or slopes NULL with count > 0),
 *          ATTN_ERR_INVALID_ARG (count < 0, a non-finite slope); on failure the
 *          descriptor is unchanged. Plan creation gives ATTN_ERR_SHAPE naming
 *          "alibi" if count ≠ H. @since 0.1.0 */
ATTN_API attn_status attn_desc_set_alibi(attn_desc *desc, const double *slopes, int64_t count);

/** Logit softcap: s ← cap·tanh(s/cap). cap must be finite and > 0
 *  (ATTN_ERR_INVALID_ARG otherwise, descriptor unchanged). @since 0.1.0 */
ATTN_API attn_status attn_desc_set_softcap(attn_desc *desc, double cap);

/** Luong general score matrix W: rank 2 [d_q, d_k] (q's dim, k's dim), q's
 *  dtype, last dim contiguous and rows not overlapping (row stride ≥ d_k).
 *  Required for ATTN_SCORE_GENERAL (then q may have d_q ≠ d_k). Borrowed.
 *  @return ATTN_OK, ATTN_ERR_NULL_ARG (desc), ATTN_ERR_SHAPE (rank ≠ 2).
 *          Plan creation names "general_w": ATTN_ERR_NULL_ARG (not set),
 *          ATTN_ERR_SHAPE, ATTN_ERR_DTYPE, ATTN_ERR_LAYOUT. @since 0.1.0 */
ATTN_API attn_status attn_desc_set_general_weight(attn_desc *desc, const attn_tensor *w);

/** Bahdanau additive score parameters, q's dtype: w_q [A, d_q], w_k [A, d_k],
 *  bias [A] (may be NULL), v [A]. w_q and w_k: last dim contiguous, rows not
 *  overlapping; bias and v any stride. Required for ATTN_SCORE_ADDITIVE.
 *  Borrowed. Costs O(B·H·S_q·S_k·A) tanh evaluations (vectorized).
 *  @return ATTN_OK, ATTN_ERR_NULL_ARG (desc, w_q, w_k, v), ATTN_ERR_SHAPE
 *          (ranks, or A differing between them). Plan creation: ATTN_ERR_NULL_ARG
 *          (not set), ATTN_ERR_SHAPE (d_q/d_k), ATTN_ERR_DTYPE, ATTN_ERR_LAYOUT,
 *          naming the tensor. @since 0.1.0 */
ATTN_API attn_status attn_desc_set_additive_weights(attn_desc *desc, const attn_tensor *w_q,
                                                    const attn_tensor *w_k,
                                                    const attn_tensor *bias,
                                                    const attn_tensor *v);

/** Packed variable-length batch (FlashAttention's cu_seqlens): q, k, v, out
 *  (and weights, lse) hold @p n_seqs sequences one after another along the
 *  token dim, and each sequence attends only to its own keys.
 *
 *  Tensors keep rank 4 with batch dim 1: q [1, H, T_q, d_q], k/v
 *  [1, H_kv, T_k, ·], out [1, H, T_q, d_v], lse [1, H, T_q], weights
 *  [1, H, T_q, T_k] (block diagonal: 0 outside a row's own sequence). The
 *  usual packed layout [T, H, d] is the same memory seen through strides:
 *  shape [1, H, T, d], strides [T·H·d, d, H·d, 1] (any strides work).
 *  Sequence s owns query rows q_offsets[s] .. q_offsets[s+1]−1 and key rows
 *  k_offsets[s] .. k_offsets[s+1]−1. Within a sequence everything is as for
 *  a batch item of those lengths: causal in both alignments (BOTTOM_RIGHT
 *  aligns each sequence's last query with its last key), window, ALiBi
 *  (distances within the sequence), softcap, GQA, sinks, the per-key mass.
 *  A sequence with no keys gives out 0 and lse −inf on its rows; one with no
 *  queries writes nothing but its keys' mass (0).
 *
 *  Rules: offsets[0] = 0, offsets never decrease, offsets[n_seqs] = the
 *  total (T_q for q_offsets, T_k for k_offsets; checked at plan creation
 *  and, since the arrays are borrowed and may change between executes, at
 *  every execute, before anything is written). Plans of
 *  ATTN_VARIANT_EXACT only; not with key/query lengths, bool/additive masks
 *  or ATTN_SCORE_ADDITIVE (ATTN_ERR_UNSUPPORTED naming the option). Cost:
 *  the sum of the sequences' own tiles, no padding.
 *
 *  @param desc       the descriptor
 *  @param q_offsets  [n_seqs + 1] query offsets (borrowed)
 *  @param k_offsets  [n_seqs + 1] key offsets (borrowed), or NULL: the
 *                    query offsets (self-attention)
 *  @param n_seqs     number of sequences ≥ 1; 0 (with NULL offsets) clears
 *  @return ATTN_OK, ATTN_ERR_NULL_ARG (desc, q_offsets), ATTN_ERR_INVALID_ARG
 *          (n_seqs < 0, offsets[0] ≠ 0, decreasing offsets, naming
 *          "q_offsets"/"k_offsets"; the descriptor is unchanged). Plan
 *          creation: ATTN_ERR_SHAPE (batch dim ≠ 1), ATTN_ERR_INVALID_ARG (last
 *          offset ≠ the total, naming the array), ATTN_ERR_UNSUPPORTED.
 *          Execute: ATTN_ERR_INVALID_ARG as above. @since 0.2.0 */
ATTN_API attn_status attn_desc_set_varlen(attn_desc *desc, const int64_t *q_offsets,
                                          const int64_t *k_offsets, int64_t n_seqs);

/** Attention sinks (gpt-oss): one learned logit per query head that joins
 *  the softmax denominator and carries no value:
 *  p_ij = e^{s_ij} / (e^{sink_h} + Σ_kept e^{s_ij}), out_i = Σ_j p_ij v_j,
 *  lse_i = log(e^{sink_h} + Σ_kept e^{s_ij}) (includes the sink). A row that
 *  keeps no key gives out 0 and lse = sink_h. −inf is no sink for that head.
 *  Weights and the per-key mass are the p_ij above (rows sum to < 1).
 *  Exact, Longformer, BigBird and block-sparse plans, the KV cache
 *  (attn_kvcache_plan_create()), and the backward pass
 *  (attn_backward_plan_set_sink_grad() gives the logits' own gradient).
 *  Borrowed: re-checked at every execute.
 *  @param desc    the descriptor
 *  @param logits  [count] sink logits, one per query head (borrowed), or NULL to clear
 *  @param count   H at plan time (ATTN_ERR_SHAPE naming "sinks" otherwise); 0 with NULL
 *  @return ATTN_OK, ATTN_ERR_NULL_ARG (desc, or logits NULL with count > 0),
 *          ATTN_ERR_INVALID_ARG (count < 0, logits with count 0, a NaN or +inf
 *          logit — also at execute, and above the f32 range for f32 plans —
 *          naming "sinks"; the descriptor is unchanged). @since 0.2.0 */
ATTN_API attn_status attn_desc_set_sinks(attn_desc *desc, const double *logits, int64_t count);

/** Per-key attention mass as an extra output (H2O / SnapKV eviction):
 *  mass[b, h, j] = Σ_i p_ij over the query rows of (b, h), or, when the
 *  tensor's head dim is H_kv (≠ H), mass[b, g, j] = Σ_{h in KV group g} Σ_i
 *  p_ij. Accumulated inside the kernel's tiles from the final lse (the S_q×S_k
 *  weights are never formed), deterministic for any thread count. Keys no
 *  query keeps get 0. Plans of ATTN_VARIANT_EXACT (every mask, packed batches:
 *  shape [1, ·, T_k]), of the sparse variants (Longformer, BigBird,
 *  block-sparse), and KV-cache steps (attn_kvcache_plan_create(): shape
 *  [B, H or H_kv, capacity], key j = the j-th oldest stored position; decode
 *  steps of at most 16 queries keep their tiles' scores, longer (prefill)
 *  steps compute Q·Kᵀ a second time after the forward, from the final lse;
 *  not with kept first positions), and paged-cache calls
 *  (attn_paged_plan_create(): shape [N, H or H_kv, max_seq_len], by the
 *  second pass).
 *
 *  The tensor is borrowed and written at every execute (its data may change
 *  between executes, its shape not): rank 3, the plan's compute dtype (as
 *  lse: f32 for bf16/f16 plans), shape
 *  [B, H, S_k] or [B, H_kv, S_k], key dim contiguous, no overlapping elements.
 *  With the mass on, one task runs all query blocks of a (batch item, KV
 *  head), so B·H_kv bounds the parallelism, and each thread keeps a block's
 *  scores (~256K elements).
 *  @param desc  the descriptor
 *  @param mass  the output tensor, or NULL to clear
 *  @return ATTN_OK, ATTN_ERR_NULL_ARG (desc), ATTN_ERR_SHAPE (rank ≠ 3). Plan
 *          creation names "mass": ATTN_ERR_DTYPE, ATTN_ERR_SHAPE, ATTN_ERR_LAYOUT,
 *          ATTN_ERR_UNSUPPORTED (Swin, linear, Performer, Linformer). Execute: ATTN_ERR_NULL_ARG
 *          (its data NULL). @since 0.2.0 */
ATTN_API attn_status attn_desc_set_key_mass(attn_desc *desc, attn_tensor *mass);

/** @} */

/* ------------------------------------------------------------------------- */
/** @defgroup plan Plans: validate once, execute many times
 *  @{ */

/** Opaque plan: a descriptor bound to tensor shapes, strides and dtypes with
 *  its workspace allocated. */
typedef struct attn_plan attn_plan;

/** Validate and prepare attention for these tensors.
 *
 *  Dtypes: q, k, v, out, weights and lse all F32 or all F64; or 16-bit
 *  inputs (since 0.2.0): q, k and v all ATTN_DTYPE_BF16 or all ATTN_DTYPE_F16,
 *  out the same 16-bit type or F32, weights and lse F32, an additive mask
 *  F32 (the compute type). 16-bit plans compute in f32: scores and the
 *  online softmax in f32; bf16 products run on the CPU's bf16 units (AMX
 *  tiles, else AVX512_BF16 dot products, with the probabilities P rounded
 *  to bf16 for P·V; else widened to f32) (f16 is widened
 *  exactly to f32 and uses the f32 path); the unit is chosen from the CPU
 *  alone, never the thread count; the result is
 *  rounded once to out's dtype. Error of a bf16 plan against f64 attention
 *  on the same (bf16) inputs: |out − ref| ≤ 2·2⁻⁸·Σ_j p_ij·|v_j| per
 *  element (P rounding plus the output rounding); f16: the f32 bounds plus
 *  the output rounding (2⁻¹¹·|out|). 16-bit plans accept the dot and
 *  scaled-dot scores and the exact, Longformer, BigBird and block-sparse
 *  variants (others: ATTN_ERR_UNSUPPORTED); any other dtype combination
 *  gives ATTN_ERR_DTYPE naming both tensors.
 *
 *  Shapes (all rank 4):
 *   - q:   [B, H,    S_q, d_q]
 *   - k:   [B, H_kv, S_k, d_k]   (d_k = d_q except for ATTN_SCORE_GENERAL/ADDITIVE)
 *   - v:   [B, H_kv, S_k, d_v]   H_kv divides H (GQA; H_kv = 1 is MQA)
 *   - out: [B, H,    S_q, d_v]
 *   - weights (optional): [B, H, S_q, S_k], the softmax probabilities. Asking for
 *     them costs an extra pass over the scores and O(S_q·S_k) memory traffic.
 *   - lse (optional): rank 3 [B, H, S_q], log-sum-exp of the kept scores.
 *  out, weights and lse are written by several threads at once, so their
 *  strides must give every element its own memory (no stride 0 on a dim > 1,
 *  no overlapping rows): ATTN_ERR_LAYOUT otherwise. Inputs may broadcast.
 *  The tensors' data pointers are not used here, only their metadata.
 *  The plan's workspace is allocated now; attn_plan_execute() allocates nothing.
 *
 *  @return ATTN_OK, ATTN_ERR_NULL_ARG, ATTN_ERR_SHAPE, ATTN_ERR_DTYPE,
 *          ATTN_ERR_LAYOUT, ATTN_ERR_OVERFLOW, ATTN_ERR_INVALID_ARG,
 *          ATTN_ERR_UNSUPPORTED, ATTN_ERR_NO_MEMORY. @since 0.1.0 */
ATTN_API attn_status attn_plan_create(attn_context *ctx, const attn_desc *desc,
                                      const attn_tensor *q, const attn_tensor *k,
                                      const attn_tensor *v, const attn_tensor *out,
                                      const attn_tensor *weights, const attn_tensor *lse,
                                      attn_plan **plan);

/** Run the plan. The tensors must have the plan's dtype, shapes and strides
 *  (data pointers may differ); weights/lse must be non-NULL exactly when they
 *  were at plan time. Allocates nothing. Uses the context's threads; OpenBLAS
 *  runs single-threaded inside and the caller's OpenBLAS thread count is
 *  restored before returning (when several threads execute at once, by the
 *  last one to return: the count is process-wide). Results are bitwise
 *  identical for any thread count. On error, outputs are not written.
 *  Borrowed lengths and ALiBi slopes are re-read and re-checked here (their
 *  contents may change between executes): a length outside [0, S] or a slope
 *  outside the plan dtype's range gives ATTN_ERR_INVALID_ARG naming the array.
 *  @return ATTN_OK, ATTN_ERR_NULL_ARG, ATTN_ERR_MISMATCH, ATTN_ERR_INVALID_ARG,
 *          ATTN_ERR_THREAD. @since 0.1.0 */
ATTN_API attn_status attn_plan_execute(attn_plan *plan, const attn_tensor *q,
                                       const attn_tensor *k, const attn_tensor *v,
                                       attn_tensor *out, attn_tensor *weights, attn_tensor *lse);

/** Bytes of workspace the plan holds. 0 for NULL. @since 0.1.0 */
ATTN_API size_t attn_plan_workspace_size(const attn_plan *plan);

/** Bytes of workspace attn_plan_execute_on() needs to run @p plan on the
 *  threads of @p ctx (NULL: the plan's own context). The size depends only on
 *  the plan and the context's thread count. 0 for a NULL plan. @since 0.2.0 */
ATTN_API size_t attn_plan_workspace_size_on(const attn_plan *plan, const attn_context *ctx);

/** Run the plan on another context's threads with caller-owned workspace
 *  (oneDNN's user scratchpad). The plan is only read, so any number of
 *  threads may execute one plan at once, each with its own context and its
 *  own workspace; results are bitwise identical to attn_plan_execute().
 *
 *  A plan is never written by any execute: attn_plan_execute() uses the
 *  plan's workspace (so one thread at a time per plan), this function uses
 *  yours. Performer's attn_plan_redraw_features() is the one call that
 *  changes a plan; it must not run concurrently with executes of that plan.
 *
 *  @param plan      the plan (read-only here)
 *  @param ctx       the calling thread's context: its threads run the call and
 *                   it receives the error message. Contexts stay one thread at
 *                   a time; ctx may be the plan's own when no other thread uses it.
 *  @param workspace at least attn_plan_workspace_size_on(plan, ctx) bytes, any
 *                   alignment; used only during the call, by no one else.
 *  @param workspace_size  its size in bytes
 *  @param q, k, v, out, weights, lse  as for attn_plan_execute(): the plan's
 *                   dtype, shapes and strides; weights/lse present exactly
 *                   when they were at plan time.
 *  @return as attn_plan_execute(), plus ATTN_ERR_NULL_ARG (ctx, workspace) and
 *          ATTN_ERR_INVALID_ARG (workspace_size too small). @since 0.2.0 */
ATTN_API attn_status attn_plan_execute_on(const attn_plan *plan, attn_context *ctx,
                                          void *workspace, size_t workspace_size,
                                          const attn_tensor *q, const attn_tensor *k,
                                          const attn_tensor *v, attn_tensor *out,
                                          attn_tensor *weights, attn_tensor *lse);

/** Destroy a plan. NULL is a no-op. @since 0.1.0 */
ATTN_API void attn_plan_destroy(attn_plan *plan);

/** One-shot: create a plan, execute, destroy. Same rules as the two calls.
 *  @since 0.1.0 */
ATTN_API attn_status attn_forward(attn_context *ctx, const attn_desc *desc, const attn_tensor *q,
                                  const attn_tensor *k, const attn_tensor *v, attn_tensor *out,
                                  attn_tensor *weights, attn_tensor *lse);

/** @} */

/* ------------------------------------------------------------------------- */
/** @defgroup merge Merging partial results
 *  @{ */

/** Merge two attention results for the same queries over disjoint key sets
 *  into the result over their union (split-KV decoding, sequence
 *  parallelism: libattn_mpi's ring passes its partial results through this).
 *
 *  Per query row, with m = max(lse_a, lse_b):
 *    out = (e^{lse_a − m}·out_a + e^{lse_b − m}·out_b) / (e^{lse_a − m} + e^{lse_b − m}),
 *    lse = m + log(e^{lse_a − m} + e^{lse_b − m}),
 *  numerically stable for any spread of the two lse. A side with lse −inf
 *  kept no key: its out row is not read (it may hold anything) and the
 *  other side is copied exactly; both −inf gives out 0 and lse −inf.
 *
 *  @param ctx    receives the error message; the call runs on the calling
 *                thread (O(B·H·S·d_v), memory-bound) and allocates nothing.
 *  @param out_a  [B, H, S, d_v], f32 or f64, any strides (0 broadcasts)
 *  @param lse_a  [B, H, S], out_a's dtype, any strides: the log-sum-exp of
 *                out_a's kept scores (the lse output of a plan); each value
 *                finite or −inf
 *  @param out_b  like out_a, over the other keys
 *  @param lse_b  like lse_a, for out_b
 *  @param out    [B, H, S, d_v], out_a's dtype, any strides giving every
 *                element its own memory. In place: out may be out_a or out_b
 *                (the same data and strides); otherwise it must not overlap
 *                any argument.
 *  @param lse    [B, H, S] or NULL (not written): the union's log-sum-exp.
 *                May be lse_a or lse_b; otherwise apart from every argument.
 *  @return ATTN_OK; ATTN_ERR_NULL_ARG (ctx, a tensor other than lse);
 *          ATTN_ERR_SHAPE (a rank or shape differs from out_a's [B, H, S, d_v]);
 *          ATTN_ERR_DTYPE (not f32/f64, or dtypes differ);
 *          ATTN_ERR_LAYOUT (an output's elements overlap, or an output
 *          overlaps an argument other than the one it may replace);
 *          ATTN_ERR_INVALID_ARG (an lse value is NaN or +inf, checked
 *          before anything is written). On failure nothing is written.
 *  Thread-safety: as every call on @p ctx; tensors read here may be read by
 *  other threads at the same time. @since 0.2.0 */
ATTN_API attn_status attn_merge_states(attn_context *ctx, const attn_tensor *out_a,
                                       const attn_tensor *lse_a, const attn_tensor *out_b,
                                       const attn_tensor *lse_b, attn_tensor *out,
                                       attn_tensor *lse);

/** @} */

#ifdef __cplusplus
}
#endif

/* Topical headers: sparse/window/linear/low-rank options, multi-head layers,
 * the KV cache. Each is self-contained on top of this one. */
#include "attn/approx.h"
#include "attn/heads.h"
#include "attn/kvcache.h"
#include "attn/backward.h"
#include "attn/paged.h"
/* Declarations that may still change: only with ATTN_EXPERIMENTAL defined. */
#ifdef ATTN_EXPERIMENTAL
#include "attn/experimental.h"
#endif

#endif /* ATTN_ATTN_H */

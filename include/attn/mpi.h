/*
 * libattn_mpi — sequence-parallel attention over MPI (an optional component:
 * libattn_mpi.so, pkg-config attn-mpi, CMake target attn::mpi).
 *
 * A sequence too long for one process is split over the ranks of an MPI
 * communicator: each rank holds its shard of the sequence — q, k, v as
 * [B, H, S_r, d] with S_r of its own — and receives the attention output of
 * its own query rows over the *whole* sequence, as if one process had run
 * attn_plan_execute() on the concatenated sequence. Two algorithms:
 *
 *  - Ring (Liu et al., 2023, "Ring Attention"): K/V shards travel around the
 *    ring of ranks; at each of the N steps a rank attends its queries to the
 *    block it holds (the exact kernel, tile by tile) while the next block is
 *    already on its way (non-blocking send/receive, two buffers), and merges
 *    the partial (out, lse) into its running result with attn_merge_states().
 *    Causal attention balances the work with the zig-zag layout; steps whose
 *    blocks are fully masked on every rank (windows) are not run at all.
 *  - Ulysses (Jacobs et al., 2023, DeepSpeed-Ulysses): one all-to-all turns
 *    sequence shards into head shards (each rank gets the whole sequence for
 *    H/N of the heads), the local plan runs any variant on them, and a second
 *    all-to-all brings the outputs back. Needs H ≥ N.
 *
 * Every function taking a communicator is collective: all ranks of it call
 * it, in the same order, with arguments that agree (shapes except each
 * rank's S_r, dtype, descriptor settings). Disagreement is detected by a
 * collective check and reported as the same failure on every rank — never a
 * hang — and the library communicates only on its own duplicate of the
 * communicator, whose error handler is MPI_ERRORS_RETURN: an MPI error is
 * returned as ATTN_ERR_INTERNAL (message naming the MPI call and its error
 * string), never an abort inside the library. The library never calls
 * MPI_Init/MPI_Finalize; MPI must be initialised. MPI is called only from
 * the thread that calls these functions (MPI_THREAD_FUNNELED suffices when
 * that is the main thread; MPI_THREAD_SERIALIZED otherwise); the context's
 * worker threads only compute.
 *
 * Sequence layouts (where rank r's rows sit in the global sequence of length
 * S = Σ_r S_r):
 *  - ATTN_MPI_LAYOUT_CONTIGUOUS: rank r holds positions [Σ_{r'<r} S_r', +S_r),
 *    any S_r ≥ 1 (shards may differ in length arbitrarily).
 *  - ATTN_MPI_LAYOUT_ZIGZAG: S is cut into 2N chunks, chunk c of
 *    ⌊S/2N⌋ + (c < S mod 2N) tokens; rank r holds chunks r and 2N−1−r, in
 *    that order. Causal attention then costs every rank the same (the early
 *    chunk sees few keys, the late one many). attn_mpi_shard() gives the
 *    positions; each rank's S_r must be the sum of its two chunks.
 *
 * Threads: an attn_mpi_plan is used by one thread at a time; its context's
 * threads compute the local tiles, so results are bitwise identical for any
 * thread count, and for a fixed number of ranks (and layout) bitwise
 * identical from run to run.
 */
#ifndef ATTN_MPI_H
#define ATTN_MPI_H

#include <mpi.h>

#include "attn/attn.h"

#ifdef __cplusplus
extern "C" {
#endif

/** @defgroup mpi Sequence parallelism over MPI (libattn_mpi)
 *  @{ */

/** Algorithm of an MPI plan. Values are ABI. */
typedef enum attn_mpi_mode {
  /** The plan picks: Ulysses when the heads split evenly over the ranks
   *  (H mod N = 0 and H_kv mod N = 0 or N mod H_kv = 0: each rank then moves
   *  its shard of q, k, v and out once instead of passing K/V N−1 times) or
   *  when only Ulysses supports the descriptor; the ring otherwise. */
  ATTN_MPI_MODE_AUTO = 0,
  ATTN_MPI_MODE_RING = 1,   /**< K/V blocks around the ring, overlapped with compute */
  ATTN_MPI_MODE_ULYSSES = 2 /**< all-to-all to head shards and back (H ≥ N) */
} attn_mpi_mode;

/** Where each rank's rows sit in the global sequence (see the file comment). */
typedef enum attn_mpi_layout {
  ATTN_MPI_LAYOUT_CONTIGUOUS = 0, /**< rank r: one run, any length */
  ATTN_MPI_LAYOUT_ZIGZAG = 1      /**< rank r: chunks r and 2N−1−r of 2N */
} attn_mpi_layout;

/** Options of attn_mpi_plan_create(). Initialise with attn_mpi_config_init():
 *  the struct may grow at the end, @c struct_size says which fields the
 *  caller knows. */
typedef struct attn_mpi_config {
  size_t struct_size;     /**< sizeof(attn_mpi_config), set by init */
  attn_mpi_mode mode;     /**< default ATTN_MPI_MODE_AUTO */
  attn_mpi_layout layout; /**< default ATTN_MPI_LAYOUT_CONTIGUOUS */
} attn_mpi_config;

/** Fill @p cfg with the defaults (AUTO, CONTIGUOUS). NULL is a no-op.
 *  @since 0.2.0 */
ATTN_API void attn_mpi_config_init(attn_mpi_config *cfg);

/** The global positions rank @p rank holds under @p layout when a sequence
 *  of @p seq_len tokens is split over @p nranks ranks: up to two runs
 *  [start[i], start[i] + len[i]) (len[1] = 0 for CONTIGUOUS, which splits
 *  evenly: the first S mod N ranks get one token more). Local row order is
 *  run 0 then run 1. Pure: no MPI, thread-safe.
 *  @param layout   a layout
 *  @param seq_len  S ≥ nranks (every rank holds at least one token)
 *  @param nranks   N ≥ 1
 *  @param rank     0 ≤ rank < N
 *  @param start    receives the two runs' first positions
 *  @param len      receives the two runs' lengths (len[0] + len[1] = S_r)
 *  @return ATTN_OK, ATTN_ERR_NULL_ARG (start, len), ATTN_ERR_INVALID_ARG
 *          (layout, nranks, rank or seq_len out of range). @since 0.2.0 */
ATTN_API attn_status attn_mpi_shard(attn_mpi_layout layout, int64_t seq_len, int32_t nranks,
                                    int32_t rank, int64_t start[2], int64_t len[2]);

/** Opaque MPI plan: a descriptor bound to every rank's shard shapes, the
 *  schedule of the ring or the all-to-all layout, and the workspace. */
typedef struct attn_mpi_plan attn_mpi_plan;

/** Create a plan, collectively over @p comm.
 *
 *  Shapes on rank r (S_r this rank's token count). Dtypes: all f32 or all
 *  f64; or (ring mode) q, k, v bf16 with out bf16 or f32 and lse f32 — the
 *  tiles then run libattn's bf16 kernels, K/V travel as bf16 (half the
 *  bytes) and partial results merge in f32, out rounded once at the end:
 *   - q: [B, H, S_r, d_q], k: [B, H_kv, S_r, d_k], v: [B, H_kv, S_r, d_v]
 *     (self-attention over the sharded sequence; H_kv divides H: GQA/MQA),
 *     last dim contiguous, any other strides;
 *   - out: [B, H, S_r, d_v]; lse (optional): [B, H, S_r].
 *  Descriptor: its settings apply to the *global* sequence — causal
 *  (TOP_LEFT and BOTTOM_RIGHT coincide: S_q = S_k), window, key and query
 *  lengths as global lengths ≤ S (the same array contents on every rank),
 *  scale, score kind, softcap. Ring mode supports exactly these (the
 *  variant must be ATTN_VARIANT_EXACT; BOTTOM_RIGHT with lengths, ALiBi and
 *  dense masks are ATTN_ERR_UNSUPPORTED, naming the option). Ulysses mode
 *  supports every option of the local plan, with ALiBi slopes [H] and dense
 *  masks / Swin bias / block layouts over the global [B, H, S, S] problem
 *  (sliced per rank by heads; f32 and f64 only), and the variants exact, Swin, Longformer,
 *  block-sparse and linear elu+1 (BigBird's and Performer's random draws
 *  depend on the head count: ATTN_ERR_UNSUPPORTED). Weights are not an
 *  output of MPI plans.
 *
 *  The collective check compares, over all ranks: dtype, B, H, H_kv, d_q,
 *  d_k, d_v, the descriptor's settings and lengths, the config, and each
 *  S_r against the layout. Any difference, and any local failure on any rank
 *  (a NULL tensor, a bad shape), makes every rank return an error: the rank
 *  at fault its own status and message, the others the same status with a
 *  message naming the first failing rank and its message. Only a NULL or
 *  invalid @p comm and MPI not initialised fail locally without
 *  communicating (they cannot reach the other ranks).
 *
 *  @param ctx   this rank's context: its threads compute, its allocator
 *               provides every byte; receives the message.
 *  @param comm  the communicator (duplicated: the plan never uses it again)
 *  @param desc  what to compute (read now; borrowed arrays and tensors stay
 *               the caller's as for attn_plan_create())
 *  @param cfg   options, or NULL for the defaults
 *  @param q, k, v, out, lse  metadata only (data pointers unused here)
 *  @param plan  receives the plan; untouched on failure
 *  @return ATTN_OK, ATTN_ERR_NULL_ARG, ATTN_ERR_INVALID_ARG, ATTN_ERR_SHAPE,
 *          ATTN_ERR_DTYPE, ATTN_ERR_LAYOUT, ATTN_ERR_OVERFLOW,
 *          ATTN_ERR_UNSUPPORTED, ATTN_ERR_NO_MEMORY, ATTN_ERR_MISMATCH (the
 *          ranks' arguments disagree), ATTN_ERR_INTERNAL (an MPI error).
 *  @since 0.2.0 */
ATTN_API attn_status attn_mpi_plan_create(attn_context *ctx, MPI_Comm comm,
                                          const attn_desc *desc, const attn_mpi_config *cfg,
                                          const attn_tensor *q, const attn_tensor *k,
                                          const attn_tensor *v, const attn_tensor *out,
                                          const attn_tensor *lse, attn_mpi_plan **plan);

/** Run the plan, collectively: every rank of the plan calls it with its own
 *  shard. The tensors must have the plan's dtype, shapes and strides; lse
 *  present exactly when it was at plan time. Borrowed lengths are re-read
 *  and re-checked (0..S, the same on every rank). Checks are collective as
 *  at creation: a failure on any rank is a failure on every rank, and then
 *  no rank writes its outputs. Allocates nothing.
 *  @return ATTN_OK, ATTN_ERR_NULL_ARG, ATTN_ERR_MISMATCH,
 *          ATTN_ERR_INVALID_ARG, ATTN_ERR_THREAD, ATTN_ERR_INTERNAL.
 *  @since 0.2.0 */
ATTN_API attn_status attn_mpi_plan_execute(attn_mpi_plan *plan, const attn_tensor *q,
                                           const attn_tensor *k, const attn_tensor *v,
                                           attn_tensor *out, attn_tensor *lse);

/** What a plan does and what its last execute cost on this rank. */
typedef struct attn_mpi_stats {
  size_t struct_size;      /**< set by the caller to sizeof(attn_mpi_stats) */
  attn_mpi_mode mode;      /**< RING or ULYSSES (what AUTO picked) */
  int32_t ranks;           /**< N */
  int32_t rank;            /**< this rank */
  int64_t seq_len;         /**< S, the global sequence length */
  int64_t steps;           /**< ring steps run (N minus the fully masked
                                ones; 0 for Ulysses) */
  int64_t idle_steps;      /**< of those, steps with no tile for this rank */
  int64_t bytes_sent;      /**< by this rank in the last execute */
  double seconds;          /**< wall time of the last execute (MPI_Wtime) */
  double wait_seconds;     /**< of which blocked waiting on communication
                                (ring: waiting for the next K/V block after
                                the step's compute; Ulysses: the all-to-alls) */
} attn_mpi_stats;

/** Describe @p plan and its last execute on this rank (not collective).
 *  @param plan   the plan
 *  @param stats  filled up to stats->struct_size bytes (which must be at
 *                least offsetof(attn_mpi_stats, ranks))
 *  @return ATTN_OK, ATTN_ERR_NULL_ARG, ATTN_ERR_INVALID_ARG (struct_size).
 *  @since 0.2.0 */
ATTN_API attn_status attn_mpi_plan_stats(const attn_mpi_plan *plan, attn_mpi_stats *stats);

/** Destroy a plan, collectively (frees its communicator with MPI_Comm_free).
 *  NULL is a no-op. @since 0.2.0 */
ATTN_API void attn_mpi_plan_destroy(attn_mpi_plan *plan);

/* ------------------------------------------------------------------------- */
/** Backward plan over the ring: the gradients of a ring-mode MPI plan (the
 *  single-process backward of attn/backward.h, distributed). */
typedef struct attn_mpi_backward_plan attn_mpi_backward_plan;

/** Prepare the backward of @p forward, collectively over its communicator.
 *
 *  Each rank gets the gradients of its own shard: for a loss L of the whole
 *  sequence's outputs, with dout = ∂L/∂out of its rows, dq = ∂L/∂q,
 *  dk = ∂L/∂k and dv = ∂L/∂v of its rows — equal, within the backward's
 *  bound, to attn_backward_execute() on the concatenated sequence. The
 *  ring of the forward runs again: K/V travel as there, each rank runs the
 *  single-process backward of its tiles with the global out and lse, dq
 *  stays home, and dK/dV travel one step behind their block, summed rank by
 *  rank, then go straight back to their owner. Bitwise reproducible for a
 *  fixed rank count and layout, for any thread count.
 *
 *  Shapes on rank r (the forward plan's dtype; last dim contiguous):
 *  dout [B, H, S_r, d_v] (as out), dq [B, H, S_r, d_q], dk [B, H_kv, S_r,
 *  d_k], dv [B, H_kv, S_r, d_v]; dq, dk and dv need distinct memory for
 *  every element. Supported: what ring-mode plans support, with the scores
 *  SCALED_DOT and DOT (GENERAL and ADDITIVE, whose weight gradients would
 *  need a sum over ranks, fail with ATTN_ERR_UNSUPPORTED on every rank).
 *
 *  The backward plan borrows @p forward (its schedule and K/V buffers):
 *  destroy it first, and do not execute the two at the same time. Its
 *  workspace is four K/V blocks, one tile's dq and dq for the shard.
 *  Failures are collective as for attn_mpi_plan_create(), except a NULL
 *  @p forward (ATTN_ERR_NULL_ARG, local: there is no communicator).
 *  @param forward  a ring-mode plan created with an lse tensor
 *  @param dout, dq, dk, dv  metadata only (data pointers unused here)
 *  @param plan     receives the plan; untouched on failure
 *  @return ATTN_OK, ATTN_ERR_NULL_ARG, ATTN_ERR_INVALID_ARG (the forward has
 *          no lse, "lse"), ATTN_ERR_UNSUPPORTED (a Ulysses-mode forward,
 *          "forward"; a score the backward lacks), ATTN_ERR_SHAPE,
 *          ATTN_ERR_DTYPE, ATTN_ERR_LAYOUT, ATTN_ERR_OVERFLOW,
 *          ATTN_ERR_NO_MEMORY, ATTN_ERR_INTERNAL (an MPI error).
 *  @since 0.2.0 */
ATTN_API attn_status attn_mpi_backward_plan_create(attn_mpi_plan *forward,
                                                   const attn_tensor *dout,
                                                   const attn_tensor *dq,
                                                   const attn_tensor *dk,
                                                   const attn_tensor *dv,
                                                   attn_mpi_backward_plan **plan);

/** Run the backward, collectively. q, k, v, out and lse are the forward's
 *  inputs and results on this rank (out and lse as the forward wrote them),
 *  with the forward plan's shapes and strides; dout, dq, dk, dv those of
 *  plan time. dq, dk, dv are overwritten. Checks are collective: a failure
 *  on any rank is a failure on every rank, and then no rank writes its
 *  outputs. Allocates nothing. attn_mpi_plan_stats() on the forward plan
 *  then describes this execute (bytes sent, waiting, wall time).
 *  @return ATTN_OK, ATTN_ERR_NULL_ARG (lse included), ATTN_ERR_MISMATCH,
 *          ATTN_ERR_INVALID_ARG (borrowed lengths), ATTN_ERR_THREAD,
 *          ATTN_ERR_INTERNAL. @since 0.2.0 */
ATTN_API attn_status attn_mpi_backward_execute(attn_mpi_backward_plan *plan,
                                               const attn_tensor *q, const attn_tensor *k,
                                               const attn_tensor *v, const attn_tensor *out,
                                               const attn_tensor *lse, const attn_tensor *dout,
                                               attn_tensor *dq, attn_tensor *dk, attn_tensor *dv);

/** Destroy a backward plan (before its forward plan). Not collective: it
 *  only frees memory. NULL is a no-op. @since 0.2.0 */
ATTN_API void attn_mpi_backward_plan_destroy(attn_mpi_backward_plan *plan);

/** @} */

#ifdef __cplusplus
}
#endif

#endif /* ATTN_MPI_H */

/* Linear attention internals exposed to the tests and the bench. */
#ifndef ATTN_APPROX_LINEAR_H
#define ATTN_APPROX_LINEAR_H

#include <stdint.h>

#include "core/internal.h"

/* Rows per chunk of the causal prefix sums (and of the key/query passes). */
#define ATTN_LINEAR_CHUNK 32

/* Default Performer feature count when attn_desc_set_features() was not called. */
#define ATTN_PERFORMER_DEFAULT_FEATURES 256

/* FAVOR+ projection rows ω_1..ω_m ∈ R^d into w (m×d, row-major), drawn from
 * seed as in the Performer paper: blocks of d rows, each block the
 * Gram–Schmidt orthonormalisation of d i.i.d. N(0, I_d) vectors (the last
 * block keeps its first m mod d rows), every row then rescaled to the norm of
 * an independent N(0, I_d) vector (χ_d-distributed), so that each ω_i is
 * marginally N(0, I_d) and E[φ(x)·φ(y)] = exp(x·y) for
 * φ(x)_i = exp(ω_i·x − |x|²/2)/√m. Deterministic (approx/rng.h). */
void attn_favor_draw(uint64_t seed, int64_t m, int64_t d, double *w);

/* The backward of a linear plan (elu+1, causal or not; non-causal
 * Performer), driven by kernels/backward.c. attn_linear_bwd_slot: bytes of
 * a thread's scratch, or ATTN_ERR_UNSUPPORTED/OVERFLOW naming the cause.
 * attn_linear_bwd_run: dq, dk, dv (dk, dv summed over each GQA group in a
 * fixed order) from q, k, v, the forward's out and dout; tasks per (batch
 * item, kv head); allocates nothing. */
attn_status attn_linear_bwd_slot(const struct attn_plan *p, size_t *slot_bytes);
attn_status attn_linear_bwd_run(const struct attn_plan *p, attn_context *ctx, const attn_ws *ws,
                                const attn_tensor *q, const attn_tensor *k, const attn_tensor *v,
                                const attn_tensor *out, const attn_tensor *dout, attn_tensor *dq,
                                attn_tensor *dk, attn_tensor *dv);

#endif

/* Linear attention internals exposed to the tests and the bench. */
#ifndef ATTN_APPROX_LINEAR_H
#define ATTN_APPROX_LINEAR_H

#include <stdint.h>

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

#endif

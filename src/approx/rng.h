/* The seeded random numbers of the approximate variants (Performer features,
 * Linformer projections): the same seed gives the same bits on every machine.
 *
 *  - seeding: splitmix64 of (seed, stream) fills the 256-bit state;
 *  - generator: xoshiro256** (Blackman & Vigna);
 *  - uniform: the top 53 bits of a draw, u = (x >> 11)·2⁻⁵³ ∈ [0, 1);
 *  - normal: Marsaglia's polar method on u ↦ 2u − 1, with a logarithm written
 *    here in plain IEEE arithmetic (frexp + atanh series) instead of libm's
 *    log, whose last bit differs between C libraries. sqrt is correctly
 *    rounded by IEEE 754, so the whole chain is reproducible as long as the
 *    compiler does not contract a·b + c into an FMA (rng.c forbids it). */
#ifndef ATTN_APPROX_RNG_H
#define ATTN_APPROX_RNG_H

#include <stdbool.h>
#include <stdint.h>

typedef struct attn_rng {
  uint64_t s[4];
  double spare; /* the polar method makes normals in pairs */
  bool has_spare;
} attn_rng;

/* Independent streams of one seed: different `stream` values give unrelated
 * sequences (E and F of Linformer, for instance). */
void attn_rng_seed(attn_rng *r, uint64_t seed, uint64_t stream);
uint64_t attn_rng_next(attn_rng *r);
double attn_rng_uniform(attn_rng *r); /* [0, 1) */
double attn_rng_normal(attn_rng *r);  /* N(0, 1) */

/* ln x for finite x > 0, reproducible bit for bit (within 2 ulp of libm). */
double attn_det_log(double x);

#endif

/* Reproducible random numbers: splitmix64 seeding, xoshiro256**, polar-method
 * normals with a home-made logarithm (see rng.h for why). */
#include <math.h>

#include "approx/rng.h"

/* Keep a·b + c as two rounded operations on every compiler and target (GCC
 * already does with -std=c11; clang contracts by default where FMA exists). */
#if defined(__clang__)
#pragma STDC FP_CONTRACT OFF
#endif

static uint64_t splitmix64(uint64_t *x) {
  uint64_t z = (*x += 0x9E3779B97F4A7C15ULL);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
  return z ^ (z >> 31);
}

void attn_rng_seed(attn_rng *r, uint64_t seed, uint64_t stream) {
  uint64_t x = seed ^ (stream * 0xD1B54A32D192ED03ULL);
  for (int i = 0; i < 4; i++) r->s[i] = splitmix64(&x);
  /* splitmix64 is a bijection of distinct inputs, so the state is never all
   * zero in practice; guard anyway (xoshiro's only fixed point). */
  if ((r->s[0] | r->s[1] | r->s[2] | r->s[3]) == 0) r->s[0] = 1;
  r->has_spare = false;
  r->spare = 0.0;
}

static inline uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

uint64_t attn_rng_next(attn_rng *r) {
  uint64_t *s = r->s;
  uint64_t out = rotl(s[1] * 5, 7) * 9;
  uint64_t t = s[1] << 17;
  s[2] ^= s[0];
  s[3] ^= s[1];
  s[1] ^= s[2];
  s[0] ^= s[3];
  s[2] ^= t;
  s[3] = rotl(s[3], 45);
  return out;
}

double attn_rng_uniform(attn_rng *r) {
  return (double)(attn_rng_next(r) >> 11) * (1.0 / 9007199254740992.0);
}

/* ln x = e·ln2 + ln m with x = m·2^e, m ∈ [√½, √2); ln m = 2·atanh(s),
 * s = (m − 1)/(m + 1), |s| ≤ 0.1716, so s² ≤ 0.0295 and 12 odd terms of the
 * series leave a truncation error below 1e-18. */
double attn_det_log(double x) {
  int e;
  double m = frexp(x, &e); /* exact */
  if (m < 0.70710678118654752440) {
    m *= 2.0; /* exact */
    e -= 1;
  }
  double s = (m - 1.0) / (m + 1.0);
  double s2 = s * s;
  /* Horner from the highest term: s·(1 + s²/3 + s⁴/5 + ... + s²²/23). */
  double p = 1.0 / 23.0;
  for (int k = 21; k >= 1; k -= 2) p = p * s2 + 1.0 / (double)k;
  const double ln2_hi = 6.93147180369123816490e-01; /* ln2 split so e·ln2_hi is exact */
  const double ln2_lo = 1.90821492927058770002e-10;
  return (double)e * ln2_hi + ((double)e * ln2_lo + 2.0 * s * p);
}

double attn_rng_normal(attn_rng *r) {
  if (r->has_spare) {
    r->has_spare = false;
    return r->spare;
  }
  double u, v, s;
  do {
    u = 2.0 * attn_rng_uniform(r) - 1.0;
    v = 2.0 * attn_rng_uniform(r) - 1.0;
    s = u * u + v * v;
  } while (s >= 1.0 || s == 0.0);
  double f = sqrt(-2.0 * attn_det_log(s) / s);
  r->spare = v * f;
  r->has_spare = true;
  return u * f;
}

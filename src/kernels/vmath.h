/* Vector math for the softmax and score loops. f32 paths are chosen once at
 * run time (AVX-512F, AVX2+FMA, or portable C); $ATTN_CPU=generic|avx2|avx512
 * can lower the choice (for tests and comparisons), never raise it. */
#ifndef ATTN_VMATH_H
#define ATTN_VMATH_H

#include <stdatomic.h>
#include <stdint.h>

typedef struct attn_vmath {
  const char *isa;
  float (*max_f32)(const float *x, int64_t n);
  /* x[i] ← exp(x[i] − m) (exactly 0 where x[i] = −inf); returns the sum. */
  float (*exp_sub_sum_f32)(float *x, int64_t n, float m);
  void (*tanh_f32)(float *x, int64_t n);
} attn_vmath;

/* The dispatch table (initialised once, thread-safe). */
const attn_vmath *attn_vmath_get(void);

/* The same without a pthread_once per call: the table, once chosen, is
 * published here (the hot loops call this per tile row). */
extern const attn_vmath *_Atomic attn_vmath_chosen;
static inline const attn_vmath *attn_vmath_fast(void) {
  const attn_vmath *v = atomic_load_explicit(&attn_vmath_chosen, memory_order_acquire);
  return v != NULL ? v : attn_vmath_get();
}

/* The table of one ISA ("generic", "avx2", "avx512") if this CPU runs it,
 * else NULL — for tests that compare every path. */
const attn_vmath *attn_vmath_isa(const char *isa);

double attn_max_f64(const double *x, int64_t n);
double attn_exp_sub_sum_f64(double *x, int64_t n, double m);
void attn_tanh_f64(double *x, int64_t n);

#endif

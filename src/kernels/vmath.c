/* exp: x = k·ln2 + r with |r| ≤ ln2/2 (Cody–Waite split of ln2), e^r by the
 * degree-6 polynomial of Cephes' expf (≈1 ulp), 2^k by exponent arithmetic.
 * Inputs below −87.33 (e^x below FLT_MIN), including −inf, give exactly 0,
 * so masked scores never leak; inputs are clamped at 88 on the top.
 * tanh: for |x| < 0.625 Cephes' odd polynomial x + x³·p(x²) (1 − 2/(e^{2x}+1)
 * would cancel there), else sign(x)·(1 − 2/(e^{2|x|} + 1)); a few ulp. */
#include <float.h>
#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/vmath.h"

#define EXP_LO (-87.33654f)
#define EXP_HI 88.0f
#define LOG2E 1.44269504088896341f
#define LN2_HI 0.693359375f
#define LN2_LO (-2.12194440e-4f)
#define P0 1.9875691500e-4f
#define P1 1.3981999507e-3f
#define P2 8.3334519073e-3f
#define P3 4.1665795894e-2f
#define P4 1.6666665459e-1f
#define P5 5.0000001201e-1f
#define TANH_SMALL 0.625f
#define T0 (-5.70498872745e-3f)
#define T1 2.06390887954e-2f
#define T2 (-5.37397155531e-2f)
#define T3 1.33314422036e-1f
#define T4 (-3.33332819422e-1f)

/* ---- portable ---------------------------------------------------------------- */

static inline float exp_poly(float x) {
  if (!(x >= EXP_LO)) return x != x ? x : 0.0f; /* NaN stays NaN; −inf and tiny → 0 */
  if (x > EXP_HI) x = EXP_HI;
  float k = nearbyintf(x * LOG2E);
  float r = x - k * LN2_HI;
  r = r - k * LN2_LO;
  float p = P0;
  p = p * r + P1;
  p = p * r + P2;
  p = p * r + P3;
  p = p * r + P4;
  p = p * r + P5;
  float y = p * r * r + r + 1.0f;
  return ldexpf(y, (int)k);
}

static float max_generic(const float *x, int64_t n) {
  float m = -INFINITY;
  for (int64_t i = 0; i < n; i++) m = x[i] > m ? x[i] : m;
  return m;
}

static float exp_sub_sum_generic(float *x, int64_t n, float m) {
  float s = 0.0f;
  for (int64_t i = 0; i < n; i++) {
    x[i] = exp_poly(x[i] - m);
    s += x[i];
  }
  return s;
}

static inline float tanh_one(float x) {
  float a = fabsf(x);
  if (a > 9.0f) return copysignf(1.0f, x); /* tanh(9) rounds to 1 in f32 */
  if (a < TANH_SMALL) {
    float z = x * x;
    float p = ((((T0 * z + T1) * z + T2) * z + T3) * z + T4) * z;
    return p * x + x;
  }
  float e = exp_poly(2.0f * a);
  return copysignf(1.0f - 2.0f / (e + 1.0f), x);
}

static void tanh_generic(float *x, int64_t n) {
  for (int64_t i = 0; i < n; i++) x[i] = tanh_one(x[i]);
}

/* ---- x86 ------------------------------------------------------------------------ */
#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>

#define AVX2 __attribute__((target("avx2,fma")))
#define AVX512 __attribute__((target("avx512f,avx512dq")))

AVX2 static inline __m256 exp8(__m256 x) {
  __m256 under = _mm256_cmp_ps(x, _mm256_set1_ps(EXP_LO), _CMP_NGE_UQ); /* < LO or NaN */
  __m256 isnan = _mm256_cmp_ps(x, x, _CMP_UNORD_Q);
  __m256 xc = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(EXP_LO)), _mm256_set1_ps(EXP_HI));
  __m256 k = _mm256_round_ps(_mm256_mul_ps(xc, _mm256_set1_ps(LOG2E)),
                             _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(k, _mm256_set1_ps(LN2_HI), xc);
  r = _mm256_fnmadd_ps(k, _mm256_set1_ps(LN2_LO), r);
  __m256 p = _mm256_set1_ps(P0);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(P1));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(P2));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(P3));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(P4));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(P5));
  __m256 y = _mm256_fmadd_ps(_mm256_mul_ps(p, r), r, _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
  __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(k), _mm256_set1_epi32(127)), 23);
  y = _mm256_mul_ps(y, _mm256_castsi256_ps(e));
  y = _mm256_andnot_ps(under, y);
  return _mm256_blendv_ps(y, x, isnan);
}

AVX2 static float hsum8(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
  return _mm_cvtss_f32(s);
}

AVX2 static float max_avx2(const float *x, int64_t n) {
  __m256 m = _mm256_set1_ps(-INFINITY);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) m = _mm256_max_ps(m, _mm256_loadu_ps(x + i));
  __m128 s = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
  s = _mm_max_ps(s, _mm_movehl_ps(s, s));
  s = _mm_max_ss(s, _mm_shuffle_ps(s, s, 1));
  float r = _mm_cvtss_f32(s);
  for (; i < n; i++) r = x[i] > r ? x[i] : r;
  return r;
}

AVX2 static float exp_sub_sum_avx2(float *x, int64_t n, float m) {
  __m256 vm = _mm256_set1_ps(m), acc = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    __m256 y = exp8(_mm256_sub_ps(_mm256_loadu_ps(x + i), vm));
    _mm256_storeu_ps(x + i, y);
    acc = _mm256_add_ps(acc, y);
  }
  float s = hsum8(acc);
  for (; i < n; i++) {
    x[i] = exp_poly(x[i] - m);
    s += x[i];
  }
  return s;
}

AVX2 static void tanh_avx2(float *x, int64_t n) {
  const __m256 sign = _mm256_set1_ps(-0.0f), one = _mm256_set1_ps(1.0f), two = _mm256_set1_ps(2.0f);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    __m256 v = _mm256_loadu_ps(x + i);
    __m256 a = _mm256_andnot_ps(sign, v);
    __m256 e = exp8(_mm256_min_ps(_mm256_mul_ps(two, a), _mm256_set1_ps(18.0f)));
    __m256 t = _mm256_sub_ps(one, _mm256_div_ps(two, _mm256_add_ps(e, one)));
    __m256 z = _mm256_mul_ps(a, a), p = _mm256_set1_ps(T0);
    p = _mm256_fmadd_ps(p, z, _mm256_set1_ps(T1));
    p = _mm256_fmadd_ps(p, z, _mm256_set1_ps(T2));
    p = _mm256_fmadd_ps(p, z, _mm256_set1_ps(T3));
    p = _mm256_fmadd_ps(p, z, _mm256_set1_ps(T4));
    __m256 poly = _mm256_fmadd_ps(_mm256_mul_ps(p, z), a, a);
    t = _mm256_blendv_ps(t, poly, _mm256_cmp_ps(a, _mm256_set1_ps(TANH_SMALL), _CMP_LT_OQ));
    t = _mm256_or_ps(t, _mm256_and_ps(sign, v));
    /* min(NaN, 18) is 18: put NaN back, as the scalar tail does. */
    _mm256_storeu_ps(x + i, _mm256_blendv_ps(t, v, _mm256_cmp_ps(v, v, _CMP_UNORD_Q)));
  }
  for (; i < n; i++) x[i] = tanh_one(x[i]);
}

AVX512 static inline __m512 exp16(__m512 x) {
  __mmask16 keep = _mm512_cmp_ps_mask(x, _mm512_set1_ps(EXP_LO), _CMP_GE_OQ);
  __mmask16 isnan = _mm512_cmp_ps_mask(x, x, _CMP_UNORD_Q);
  __m512 xc = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(EXP_LO)), _mm512_set1_ps(EXP_HI));
  __m512 k = _mm512_roundscale_ps(_mm512_mul_ps(xc, _mm512_set1_ps(LOG2E)),
                                  _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(k, _mm512_set1_ps(LN2_HI), xc);
  r = _mm512_fnmadd_ps(k, _mm512_set1_ps(LN2_LO), r);
  __m512 p = _mm512_set1_ps(P0);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(P1));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(P2));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(P3));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(P4));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(P5));
  __m512 y = _mm512_fmadd_ps(_mm512_mul_ps(p, r), r, _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
  y = _mm512_maskz_mov_ps(keep, _mm512_scalef_ps(y, k));
  return _mm512_mask_mov_ps(y, isnan, x);
}

AVX512 static float max_avx512(const float *x, int64_t n) {
  __m512 m = _mm512_set1_ps(-INFINITY);
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) m = _mm512_max_ps(m, _mm512_loadu_ps(x + i));
  if (i < n) {
    __mmask16 k = (__mmask16)((1u << (n - i)) - 1u);
    m = _mm512_mask_max_ps(m, k, m, _mm512_maskz_loadu_ps(k, x + i));
  }
  return _mm512_reduce_max_ps(m);
}

AVX512 static float exp_sub_sum_avx512(float *x, int64_t n, float mx) {
  __m512 vm = _mm512_set1_ps(mx), acc = _mm512_setzero_ps();
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    __m512 y = exp16(_mm512_sub_ps(_mm512_loadu_ps(x + i), vm));
    _mm512_storeu_ps(x + i, y);
    acc = _mm512_add_ps(acc, y);
  }
  if (i < n) {
    __mmask16 k = (__mmask16)((1u << (n - i)) - 1u);
    __m512 y = exp16(_mm512_sub_ps(_mm512_maskz_loadu_ps(k, x + i), vm));
    _mm512_mask_storeu_ps(x + i, k, y);
    acc = _mm512_mask_add_ps(acc, k, acc, y);
  }
  return _mm512_reduce_add_ps(acc);
}

AVX512 static void tanh_avx512(float *x, int64_t n) {
  const __m512 one = _mm512_set1_ps(1.0f), two = _mm512_set1_ps(2.0f);
  int64_t i = 0;
  for (; i < n; i += 16) {
    __mmask16 k = n - i >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (n - i)) - 1u);
    __m512 v = _mm512_maskz_loadu_ps(k, x + i);
    __m512 a = _mm512_abs_ps(v);
    __m512 e = exp16(_mm512_min_ps(_mm512_mul_ps(two, a), _mm512_set1_ps(18.0f)));
    __m512 t = _mm512_sub_ps(one, _mm512_div_ps(two, _mm512_add_ps(e, one)));
    __m512 z = _mm512_mul_ps(a, a), p = _mm512_set1_ps(T0);
    p = _mm512_fmadd_ps(p, z, _mm512_set1_ps(T1));
    p = _mm512_fmadd_ps(p, z, _mm512_set1_ps(T2));
    p = _mm512_fmadd_ps(p, z, _mm512_set1_ps(T3));
    p = _mm512_fmadd_ps(p, z, _mm512_set1_ps(T4));
    __m512 poly = _mm512_fmadd_ps(_mm512_mul_ps(p, z), a, a);
    t = _mm512_mask_mov_ps(t, _mm512_cmp_ps_mask(a, _mm512_set1_ps(TANH_SMALL), _CMP_LT_OQ), poly);
    /* copy the sign of v onto t */
    __m512i sgn = _mm512_and_epi32(_mm512_castps_si512(v), _mm512_set1_epi32((int)0x80000000u));
    t = _mm512_castsi512_ps(_mm512_or_epi32(_mm512_castps_si512(t), sgn));
    /* min(NaN, 18) is 18: put NaN back, as the scalar tail does. */
    t = _mm512_mask_mov_ps(t, _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q), v);
    _mm512_mask_storeu_ps(x + i, k, t);
  }
}
#endif /* x86 */

/* ---- dispatch ----------------------------------------------------------------- */

static const attn_vmath vm_generic = {"generic", max_generic, exp_sub_sum_generic, tanh_generic};
#if defined(__x86_64__) || defined(__i386__)
static const attn_vmath vm_avx2 = {"avx2", max_avx2, exp_sub_sum_avx2, tanh_avx2};
static const attn_vmath vm_avx512 = {"avx512", max_avx512, exp_sub_sum_avx512, tanh_avx512};
#endif

const attn_vmath *attn_vmath_isa(const char *isa) {
  if (strcmp(isa, "generic") == 0) return &vm_generic;
#if defined(__x86_64__) || defined(__i386__)
  __builtin_cpu_init();
  if (strcmp(isa, "avx2") == 0 && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
    return &vm_avx2;
  if (strcmp(isa, "avx512") == 0 && __builtin_cpu_supports("avx512f") &&
      __builtin_cpu_supports("avx512dq"))
    return &vm_avx512;
#endif
  return NULL;
}

static const attn_vmath *g_vmath; /* set once under pthread_once, then read-only */
static pthread_once_t g_vmath_once = PTHREAD_ONCE_INIT;

/* The best ISA this CPU runs, lowered (never raised) by $ATTN_CPU. */
static void vmath_init(void) {
  const char *want = getenv("ATTN_CPU");
  static const char *const order[] = {"avx512", "avx2", "generic"};
  int start = 0;
  if (want != NULL && strcmp(want, "avx2") == 0) start = 1;
  if (want != NULL && strcmp(want, "generic") == 0) start = 2;
  for (int i = start; i < 3 && g_vmath == NULL; i++) g_vmath = attn_vmath_isa(order[i]);
}

const attn_vmath *_Atomic attn_vmath_chosen;

const attn_vmath *attn_vmath_get(void) {
  pthread_once(&g_vmath_once, vmath_init);
  atomic_store_explicit(&attn_vmath_chosen, g_vmath, memory_order_release);
  return g_vmath;
}

/* ---- f64: libm is accurate and f64 is not the hot path ------------------------ */

double attn_max_f64(const double *x, int64_t n) {
  double m = -INFINITY;
  for (int64_t i = 0; i < n; i++) m = x[i] > m ? x[i] : m;
  return m;
}

double attn_exp_sub_sum_f64(double *x, int64_t n, double m) {
  double s = 0.0;
  for (int64_t i = 0; i < n; i++) {
    x[i] = exp(x[i] - m);
    s += x[i];
  }
  return s;
}

void attn_tanh_f64(double *x, int64_t n) {
  for (int64_t i = 0; i < n; i++) x[i] = tanh(x[i]);
}

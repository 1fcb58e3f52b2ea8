/* Decode loops over f16 / int8 / int4 KV storage, AVX-512 and AVX2 (see
 * attend_q.h). The template attend_q_impl.inc is included once per ISA with
 * its vector type and a handful of primitives; everything else (segments at
 * ring wraps, K groups and the residual, scale folding) is written once. */
#include "cache/attend_q.h"
#include "cache/prefetch.h"

#include <string.h>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <cpuid.h>
#include <immintrin.h>

/* ---- AVX-512: 16 lanes ---------------------------------------------------- */
#define QISA avx512
#define QTARGET __attribute__((target("avx512f,fma,f16c")))
#define QW 16
#define QNV 1
typedef __m512 qvf;
QTARGET static inline qvf q_zero(void) { return _mm512_setzero_ps(); }
QTARGET static inline qvf q_set1(float x) { return _mm512_set1_ps(x); }
QTARGET static inline qvf q_load(const float *p) { return _mm512_loadu_ps(p); }
QTARGET static inline void q_store(float *p, qvf v) { _mm512_storeu_ps(p, v); }
/* The first n (0 < n < 16) floats; the rest of the vector zero / untouched. */
QTARGET static inline qvf q_load_n(const float *p, int64_t n) {
  return _mm512_maskz_loadu_ps((__mmask16)((1u << n) - 1u), p);
}
QTARGET static inline void q_store_n(float *p, qvf v, int64_t n) {
  _mm512_mask_storeu_ps(p, (__mmask16)((1u << n) - 1u), v);
}
QTARGET static inline qvf q_fma(qvf a, qvf b, qvf c) { return _mm512_fmadd_ps(a, b, c); }
QTARGET static inline qvf q_add(qvf a, qvf b) { return _mm512_add_ps(a, b); }
QTARGET static inline qvf q_mul(qvf a, qvf b) { return _mm512_mul_ps(a, b); }
QTARGET static inline float q_hsum(qvf a) { return _mm512_reduce_add_ps(a); }
/* [Σa, Σb, Σc, Σd] (AVX-512F only: no DQ needed for the upper half). */
QTARGET static inline __m128 q_hsum4(qvf a, qvf b, qvf c, qvf d) {
#define Q_HALF(x) _mm256_add_ps(_mm512_castps512_ps256(x), \
                                _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(x), 1)))
  const __m256 ab = _mm256_hadd_ps(Q_HALF(a), Q_HALF(b)), cd = _mm256_hadd_ps(Q_HALF(c), Q_HALF(d));
#undef Q_HALF
  const __m256 abcd = _mm256_hadd_ps(ab, cd);
  return _mm_add_ps(_mm256_castps256_ps128(abcd), _mm256_extractf128_ps(abcd, 1));
}
QTARGET static inline void q_cvt_f16(const uint16_t *p, qvf *o) {
  o[0] = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(const void *)p));
}
QTARGET static inline void q_cvt_u8(__m128i b, qvf *o) {
  o[0] = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(b));
}
#include "cache/attend_q_impl.inc"
#undef QISA
#undef QTARGET
#undef QW
#undef QNV

/* ---- AVX2: 8 lanes, two vectors per 16 elements ------------------------------ */
#define QISA avx2
#define QTARGET __attribute__((target("avx2,fma,f16c")))
#define QW 8
#define QNV 2
typedef __m256 qvf2;
#define qvf qvf2
#define q_zero q2_zero
#define q_set1 q2_set1
#define q_load q2_load
#define q_store q2_store
#define q_load_n q2_load_n
#define q_store_n q2_store_n
#define q_fma q2_fma
#define q_add q2_add
#define q_mul q2_mul
#define q_hsum q2_hsum
#define q_hsum4 q2_hsum4
#define q_cvt_f16 q2_cvt_f16
#define q_cvt_u8 q2_cvt_u8
QTARGET static inline qvf q_zero(void) { return _mm256_setzero_ps(); }
QTARGET static inline qvf q_set1(float x) { return _mm256_set1_ps(x); }
QTARGET static inline qvf q_load(const float *p) { return _mm256_loadu_ps(p); }
QTARGET static inline void q_store(float *p, qvf v) { _mm256_storeu_ps(p, v); }
QTARGET static inline __m256i q2_mask(int64_t n) { /* lanes < n */
  return _mm256_cmpgt_epi32(_mm256_set1_epi32((int)n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}
QTARGET static inline qvf q_load_n(const float *p, int64_t n) { return _mm256_maskload_ps(p, q2_mask(n)); }
QTARGET static inline void q_store_n(float *p, qvf v, int64_t n) { _mm256_maskstore_ps(p, q2_mask(n), v); }
QTARGET static inline qvf q_fma(qvf a, qvf b, qvf c) { return _mm256_fmadd_ps(a, b, c); }
QTARGET static inline qvf q_add(qvf a, qvf b) { return _mm256_add_ps(a, b); }
QTARGET static inline qvf q_mul(qvf a, qvf b) { return _mm256_mul_ps(a, b); }
QTARGET static inline float q_hsum(qvf a) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}
QTARGET static inline __m128 q_hsum4(qvf a, qvf b, qvf c, qvf d) {
  const __m256 abcd = _mm256_hadd_ps(_mm256_hadd_ps(a, b), _mm256_hadd_ps(c, d));
  return _mm_add_ps(_mm256_castps256_ps128(abcd), _mm256_extractf128_ps(abcd, 1));
}
QTARGET static inline void q_cvt_f16(const uint16_t *p, qvf *o) {
  o[0] = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(const void *)p));
  o[1] = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(const void *)(p + 8)));
}
QTARGET static inline void q_cvt_u8(__m128i b, qvf *o) {
  o[0] = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(b));
  o[1] = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(b, 8)));
}
#include "cache/attend_q_impl.inc"

/* F16C: CPUID leaf 1, ECX bit 29 (clang's __builtin_cpu_supports lacks it). */
static bool has_f16c(void) {
  unsigned a, b, c, d;
  return __get_cpuid(1, &a, &b, &c, &d) && ((c >> 29) & 1u);
}
static bool has_avx512(void) {
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("fma") && has_f16c();
}
static bool has_avx2(void) {
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && has_f16c();
}

const attn_kvq_ops *attn_kvq_ops_for(const char *isa, const attn_kvcache *c) {
  if (c->storage != ATTN_KVCACHE_STORE_F16 && !c->store->quant) return NULL;
  if (c->store->quant && c->gs % 16 != 0 && c->ngv != 1) return NULL;
  if (strcmp(isa, "avx512") == 0 && has_avx512()) return &kvq_ops_avx512;
  if ((strcmp(isa, "avx512") == 0 || strcmp(isa, "avx2") == 0) && has_avx2())
    return &kvq_ops_avx2;
  return NULL;
}

#else

const attn_kvq_ops *attn_kvq_ops_for(const char *isa, const attn_kvcache *c) {
  (void)isa;
  (void)c;
  return NULL;
}

#endif

/* Decode inner loops for a few stacked query rows (R ≤ ATTN_KV_SIMD_ROWS),
 * f32, AVX-512. With one query per head group, S = Q·Kᵀ and O += P·V are
 * matrix–vector shaped and BLAS spends more time packing than the memory
 * needs; these loops read every K and V row exactly once, straight from the
 * cache, for all R rows. Chosen at plan time when the CPU has AVX-512F (and
 * $ATTN_CPU does not lower it); the results do not depend on threads. */
#include "cache/attend_simd.h"
#include "cache/prefetch.h"

#include <string.h>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>

#define AVX512 __attribute__((target("avx512f")))

/* Upper 8 lanes (AVX-512F only: no DQ needed). */
AVX512 static inline __m256 hi256(__m512 a) {
  return _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(a), 1));
}

/* Sum of the 16 lanes of each of four vectors → [Σa, Σb, Σc, Σd]. */
AVX512 static inline __m128 hsum4(__m512 a, __m512 b, __m512 c, __m512 d) {
  __m256 a8 = _mm256_add_ps(_mm512_castps512_ps256(a), hi256(a));
  __m256 b8 = _mm256_add_ps(_mm512_castps512_ps256(b), hi256(b));
  __m256 c8 = _mm256_add_ps(_mm512_castps512_ps256(c), hi256(c));
  __m256 d8 = _mm256_add_ps(_mm512_castps512_ps256(d), hi256(d));
  __m256 ab = _mm256_hadd_ps(a8, b8), cd = _mm256_hadd_ps(c8, d8);
  __m256 abcd = _mm256_hadd_ps(ab, cd);
  return _mm_add_ps(_mm256_castps256_ps128(abcd), _mm256_extractf128_ps(abcd, 1));
}

/* 16 bfloat16 → f32 (bf16 bits are the top half of an f32). */
AVX512 static inline __m512 widen16(const uint16_t *p) {
  __m512i w = _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)(const void *)p));
  return _mm512_castsi512_ps(_mm512_slli_epi32(w, 16));
}

/* Elements [x, x + 16) of a stored row (f32 or bf16, BF constant). */
AVX512 static inline __m512 row16(const void *row, int64_t x, const int BF) {
  if (BF) return widen16((const uint16_t *)row + x);
  return _mm512_loadu_ps((const float *)row + x);
}

/* The lanes of m (a prefix) of elements [x, x + 16); the rest 0. Masked
 * 16-bit loads need AVX-512BW, so bf16 tails go through a copy. */
AVX512 static inline __m512 row16_mask(const void *row, int64_t x, __mmask16 m, const int BF) {
  if (BF) {
    if (m == 0) return _mm512_setzero_ps();
    uint16_t tmp[16] = {0};
    int n = 0;
    while (n < 16 && (m >> n) & 1u) n++;
    memcpy(tmp, (const uint16_t *)row + x, (size_t)n * sizeof *tmp);
    return widen16(tmp);
  }
  return _mm512_maskz_loadu_ps(m, (const float *)row + x);
}

/* Dot products of NR query rows with NK keys at once: NR·NK independent FMA
 * chains hide the FMA latency, and each K (and Q) vector load feeds several
 * of them. Lanes are reduced four dots at a time with hsum4. */
AVX512 static inline __attribute__((always_inline)) void dots(const float *Q, const void *K,
                                                              int64_t D, __m512 acc[4][4],
                                                              const int NR, const int NK,
                                                              const int BF) {
  const size_t es = BF ? 2 : 4;
  const int64_t full = D / 16 * 16;
  const __mmask16 tail = (__mmask16)((1u << (D - full)) - 1u);
  for (int r = 0; r < NR; r++)
    for (int k = 0; k < NK; k++) acc[r][k] = _mm512_setzero_ps();
  /* Key-major: each K row is read front to back, in address order. */
  for (int k = 0; k < NK; k++) {
    const char *krow = (const char *)K + (size_t)(k * D) * es;
    for (int64_t x = 0; x < full; x += 16) {
      __m512 kv = row16(krow, x, BF);
      for (int r = 0; r < NR; r++)
        acc[r][k] = _mm512_fmadd_ps(_mm512_loadu_ps(Q + r * D + x), kv, acc[r][k]);
    }
  }
  if (tail) {
    __m512 kv[4];
    for (int k = 0; k < NK; k++)
      kv[k] = row16_mask((const char *)K + (size_t)(k * D) * es, full, tail, BF);
    for (int r = 0; r < NR; r++) {
      __m512 qv = _mm512_maskz_loadu_ps(tail, Q + r * D + full);
      for (int k = 0; k < NK; k++) acc[r][k] = _mm512_fmadd_ps(qv, kv[k], acc[r][k]);
    }
  }
}

AVX512 static inline __attribute__((always_inline)) void scores(const float *Q, int64_t R,
                                                                const void *Kv, int64_t nj,
                                                                int64_t D, float alpha, float *S,
                                                                int64_t lds, const void *Vpf,
                                                                size_t vrb, const int BF) {
  const char *K = Kv, *Vp = Vpf;
  const size_t es = BF ? 2 : 4;
  const __m128 va = _mm_set1_ps(alpha);
  __m512 acc[4][4];
  float s[4];
  int64_t r = 0;
  /* Four rows, two keys per step (8 chains). */
  for (; r + 4 <= R; r += 4) {
    float *S0 = S + r * lds, *S1 = S0 + lds, *S2 = S1 + lds, *S3 = S2 + lds;
    int64_t j = 0;
    for (; j + 2 <= nj; j += 2) {
      if (r == 0) {
        attn_kv_prefetch_ahead(K + (size_t)(j * D) * es, (size_t)D * es, (size_t)(2 * D) * es);
        if (Vp != NULL) attn_kv_prefetch_ahead(Vp + (size_t)j * vrb, vrb, 2 * vrb);
      }
      dots(Q + r * D, K + (size_t)(j * D) * es, D, acc, 4, 2, BF);
      for (int k = 0; k < 2; k++) {
        _mm_storeu_ps(s, _mm_mul_ps(hsum4(acc[0][k], acc[1][k], acc[2][k], acc[3][k]), va));
        S0[j + k] = s[0];
        S1[j + k] = s[1];
        S2[j + k] = s[2];
        S3[j + k] = s[3];
      }
    }
    for (; j < nj; j++) {
      dots(Q + r * D, K + (size_t)(j * D) * es, D, acc, 4, 1, BF);
      _mm_storeu_ps(s, _mm_mul_ps(hsum4(acc[0][0], acc[1][0], acc[2][0], acc[3][0]), va));
      S0[j] = s[0];
      S1[j] = s[1];
      S2[j] = s[2];
      S3[j] = s[3];
    }
  }
  /* Single rows, four keys per step. */
  for (; r < R; r++) {
    float *S0 = S + r * lds;
    int64_t j = 0;
    for (; j + 4 <= nj; j += 4) {
      if (r == 0) {
        attn_kv_prefetch_ahead(K + (size_t)(j * D) * es, (size_t)D * es, (size_t)(4 * D) * es);
        if (Vp != NULL) attn_kv_prefetch_ahead(Vp + (size_t)j * vrb, vrb, 4 * vrb);
      }
      dots(Q + r * D, K + (size_t)(j * D) * es, D, acc, 1, 4, BF);
      _mm_storeu_ps(S0 + j, _mm_mul_ps(hsum4(acc[0][0], acc[0][1], acc[0][2], acc[0][3]), va));
    }
    for (; j < nj; j++) {
      dots(Q + r * D, K + (size_t)(j * D) * es, D, acc, 1, 1, BF);
      S0[j] = _mm512_reduce_add_ps(acc[0][0]) * alpha;
    }
  }
}

AVX512 void attn_kv_scores_avx512(const float *Q, int64_t R, const void *K, int64_t nj,
                                  int64_t D, float alpha, float *S, int64_t lds, const void *V,
                                  int64_t Dv, bool bf16) {
  const size_t vrb = (size_t)Dv * (bf16 ? 2 : 4);
  if (bf16)
    scores(Q, R, K, nj, D, alpha, S, lds, V, vrb, 1);
  else
    scores(Q, R, K, nj, D, alpha, S, lds, V, vrb, 0);
}

/* O[r] += Σ_j P[r][j]·V_j for NR ≤ 4 rows, NC·16 columns of O at a time held
 * in registers (NR·NC ≤ 16 accumulators); keys in the inner loop, so each
 * column block streams the tile's V rows (from L2 after the first block).
 * NR and NC are constants at every call: the loops unroll and the
 * accumulators stay in registers. */
AVX512 static inline __attribute__((always_inline)) void values_rows(
    const float *P, int64_t lds, const void *V, int64_t nj, int64_t D, float *O, const int NR,
    const int NC, const int BF) {
  const size_t es = BF ? 2 : 4;
  for (int64_t x0 = 0; x0 < D; x0 += 16 * NC) {
    const bool first = x0 == 0; /* streams V from memory; later column blocks hit L2 */
    __mmask16 m[8];
    for (int c = 0; c < NC; c++) {
      int64_t left = D - (x0 + 16 * c);
      m[c] = left >= 16 ? (__mmask16)0xFFFF : left <= 0 ? 0 : (__mmask16)((1u << left) - 1u);
    }
    __m512 acc[4][8];
    for (int r = 0; r < NR; r++)
      for (int c = 0; c < NC; c++) acc[r][c] = _mm512_maskz_loadu_ps(m[c], O + r * D + x0 + 16 * c);
    for (int64_t j = 0; j < nj; j++) {
      const char *v = (const char *)V + (size_t)(j * D) * es;
      if (first) attn_kv_prefetch_ahead(v, (size_t)D * es, (size_t)D * es);
      __m512 vv[8];
      for (int c = 0; c < NC; c++)
        vv[c] = m[c] == (__mmask16)0xFFFF ? row16(v, x0 + 16 * c, BF)
                                          : row16_mask(v, x0 + 16 * c, m[c], BF);
      for (int r = 0; r < NR; r++) {
        __m512 p = _mm512_set1_ps(P[r * lds + j]);
        for (int c = 0; c < NC; c++) acc[r][c] = _mm512_fmadd_ps(p, vv[c], acc[r][c]);
      }
    }
    for (int r = 0; r < NR; r++)
      for (int c = 0; c < NC; c++) _mm512_mask_storeu_ps(O + r * D + x0 + 16 * c, m[c], acc[r][c]);
  }
}

AVX512 static inline __attribute__((always_inline)) void values(const float *P, int64_t R,
                                                                int64_t lds, const void *V,
                                                                int64_t nj, int64_t D, float *O,
                                                                const int BF) {
  int64_t r = 0;
  for (; r + 4 <= R; r += 4) values_rows(P + r * lds, lds, V, nj, D, O + r * D, 4, 4, BF);
  switch (R - r) {
    case 3: values_rows(P + r * lds, lds, V, nj, D, O + r * D, 3, 4, BF); break;
    case 2: values_rows(P + r * lds, lds, V, nj, D, O + r * D, 2, 8, BF); break;
    case 1: values_rows(P + r * lds, lds, V, nj, D, O + r * D, 1, 8, BF); break;
    default: break;
  }
}

AVX512 void attn_kv_values_avx512(const float *P, int64_t R, int64_t lds, const void *V,
                                  int64_t nj, int64_t D, float *O, bool bf16) {
  if (bf16)
    values(P, R, lds, V, nj, D, O, 1);
  else
    values(P, R, lds, V, nj, D, O, 0);
}

AVX512 void attn_kv_widen_bf16_avx512(const void *from, float *dst, int64_t n) {
  const uint16_t *src = from;
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    __m512i w = _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)(const void *)(src + i)));
    _mm512_storeu_ps(dst + i, _mm512_castsi512_ps(_mm512_slli_epi32(w, 16)));
  }
  for (; i < n; i++) { /* masked 16-bit loads would need AVX-512BW */
    union {
      uint32_t u;
      float f;
    } x = {(uint32_t)src[i] << 16};
    dst[i] = x.f;
  }
}

bool attn_kv_simd_available(void) { return __builtin_cpu_supports("avx512f"); }

#else

void attn_kv_scores_avx512(const float *Q, int64_t R, const void *K, int64_t nj, int64_t D,
                           float alpha, float *S, int64_t lds, const void *V, int64_t Dv,
                           bool bf16) {
  (void)Q; (void)R; (void)K; (void)nj; (void)D; (void)alpha; (void)S; (void)lds; (void)V;
  (void)Dv; (void)bf16;
}
void attn_kv_values_avx512(const float *P, int64_t R, int64_t lds, const void *V, int64_t nj,
                           int64_t D, float *O, bool bf16) {
  (void)P; (void)R; (void)lds; (void)V; (void)nj; (void)D; (void)O; (void)bf16;
}
void attn_kv_widen_bf16_avx512(const void *src, float *dst, int64_t n) {
  (void)src; (void)dst; (void)n;
}
bool attn_kv_simd_available(void) { return false; }

#endif

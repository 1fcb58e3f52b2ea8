/* Small f32 GEMMs without OpenBLAS (see gemm.h, attn_sgemm_small).
 *
 * A short sequence's attention is a few dozen GEMMs of a few thousand FMAs
 * each (S=16, d=64: 16×16×64). OpenBLAS spends more on its interface, its
 * buffer checks and packing than on the arithmetic there, and on CPUs its
 * 0.3.21 does not know (e.g. Xeon model 207) it falls back to SSE kernels.
 * This kernel keeps C's row block in registers and reads A and B in place:
 * op(B) = B: rows of 4, columns in 16-lane vectors (masked at the edge),
 * each element one FMA chain over k = 0..K-1. op(B) = Bᵀ: blocks of 4 rows ×
 * 4 columns, each element a dot product over k in 16-lane vectors summed
 * across lanes in a fixed order. Either way an element's rounding depends
 * on K alone, not on M, the block it falls in or the thread: results depend
 * on the shapes only, as everywhere in the library. */
#include <stdbool.h>
#include <stdint.h>

#include "blas/gemm.h"
#include "kernels/tile.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>

#define SG_TARGET __attribute__((target("avx512f,avx512bw,avx512vl")))
#define SG_INL SG_TARGET static inline __attribute__((always_inline))

/* C[r][0..N) = alpha·Σ_k A[r][k]·B[k][0..N) + beta·C[r] for NR rows, NV
 * vectors of 16 columns (the last masked by `last`). */
SG_INL void sg_rows(const float *A, int64_t lda, const float *B, int64_t ldb, float *C,
                    int64_t ldc, int64_t K, float alpha, float beta, const int NR, const int NV,
                    __mmask16 last) {
  __m512 acc[4][4];
  for (int r = 0; r < NR; r++)
    for (int v = 0; v < NV; v++) acc[r][v] = _mm512_setzero_ps();
  for (int64_t k = 0; k < K; k++) {
    __m512 b[4];
    for (int v = 0; v < NV; v++)
      b[v] = v == NV - 1 ? _mm512_maskz_loadu_ps(last, B + k * ldb + 16 * v)
                         : _mm512_loadu_ps(B + k * ldb + 16 * v);
    for (int r = 0; r < NR; r++) {
      const __m512 a = _mm512_set1_ps(A[r * lda + k]);
      for (int v = 0; v < NV; v++) acc[r][v] = _mm512_fmadd_ps(a, b[v], acc[r][v]);
    }
  }
  const __m512 va = _mm512_set1_ps(alpha), vb = _mm512_set1_ps(beta);
  for (int r = 0; r < NR; r++)
    for (int v = 0; v < NV; v++) {
      const __mmask16 m = v == NV - 1 ? last : (__mmask16)0xffff;
      float *c = C + r * ldc + 16 * v;
      __m512 o = _mm512_mul_ps(va, acc[r][v]);
      if (beta != 0.0f) o = _mm512_fmadd_ps(vb, _mm512_maskz_loadu_ps(m, c), o);
      _mm512_mask_storeu_ps(c, m, o);
    }
}

#define SG_NR(NV)                                                                               \
  switch (attn_min64(4, M - i)) {                                                              \
    case 1: sg_rows(A + i * lda, lda, B, ldb, C + i * ldc, ldc, K, alpha, beta, 1, NV, last); break; \
    case 2: sg_rows(A + i * lda, lda, B, ldb, C + i * ldc, ldc, K, alpha, beta, 2, NV, last); break; \
    case 3: sg_rows(A + i * lda, lda, B, ldb, C + i * ldc, ldc, K, alpha, beta, 3, NV, last); break; \
    default: sg_rows(A + i * lda, lda, B, ldb, C + i * ldc, ldc, K, alpha, beta, 4, NV, last); break; \
  }

SG_TARGET static void sg_nn(int64_t M, int64_t N, int64_t K, float alpha, const float *A,
                            int64_t lda, const float *B, int64_t ldb, float beta, float *C,
                            int64_t ldc) {
  const int nv = (int)((N + 15) / 16);
  const int rem = (int)(N - 16 * (nv - 1));
  const __mmask16 last = (__mmask16)(rem == 16 ? 0xffffu : (1u << rem) - 1u);
  for (int64_t i = 0; i < M; i += 4) {
    switch (nv) {
      case 1: SG_NR(1) break;
      case 2: SG_NR(2) break;
      case 3: SG_NR(3) break;
      default: SG_NR(4) break;
    }
  }
}
#undef SG_NR

/* Sum of each of four vectors' 16 lanes, as one 4-lane vector. */
SG_INL __m128 sg_hsum4(__m512 a, __m512 b, __m512 c, __m512 d) {
  /* Pairwise: halves, then quarters, in a fixed order. */
  const __m512 ab = _mm512_add_ps(_mm512_shuffle_f32x4(a, b, 0x44), _mm512_shuffle_f32x4(a, b, 0xee));
  const __m512 cd = _mm512_add_ps(_mm512_shuffle_f32x4(c, d, 0x44), _mm512_shuffle_f32x4(c, d, 0xee));
  /* ab = [a0+a2, a1+a3, b0+b2, b1+b3] in 128-bit quarters; fold once more. */
  const __m512 abcd = _mm512_add_ps(_mm512_shuffle_f32x4(ab, cd, 0x88), _mm512_shuffle_f32x4(ab, cd, 0xdd));
  /* abcd's quarters: a, b, c, d, each 4 partial sums; transpose-add them. */
  const __m128 qa = _mm512_castps512_ps128(abcd), qb = _mm512_extractf32x4_ps(abcd, 1);
  const __m128 qc = _mm512_extractf32x4_ps(abcd, 2), qd = _mm512_extractf32x4_ps(abcd, 3);
  const __m128 t0 = _mm_hadd_ps(qa, qb), t1 = _mm_hadd_ps(qc, qd);
  return _mm_hadd_ps(t0, t1);
}

/* C[r][j] = alpha·A[r]·B[j] + beta·C[r][j] for NR rows and NJ ≤ 4 keys,
 * over k in 16-lane vectors (the last masked by `last`, kv of them). */
SG_INL void sg_dots(const float *A, int64_t lda, const float *B, int64_t ldb, float *C,
                    int64_t ldc, int64_t kv, float alpha, float beta, const int NR, const int NJ,
                    __mmask16 last) {
  __m512 acc[4][4];
  for (int r = 0; r < NR; r++)
    for (int j = 0; j < 4; j++) acc[r][j] = _mm512_setzero_ps();
  for (int64_t v = 0; v < kv; v++) {
    const __mmask16 m = v == kv - 1 ? last : (__mmask16)0xffff;
    __m512 b[4];
    for (int j = 0; j < NJ; j++) b[j] = _mm512_maskz_loadu_ps(m, B + j * ldb + 16 * v);
    for (int r = 0; r < NR; r++) {
      const __m512 a = _mm512_maskz_loadu_ps(m, A + r * lda + 16 * v);
      for (int j = 0; j < NJ; j++) acc[r][j] = _mm512_fmadd_ps(a, b[j], acc[r][j]);
    }
  }
  float s[4];
  for (int r = 0; r < NR; r++) {
    _mm_storeu_ps(s, sg_hsum4(acc[r][0], acc[r][1], acc[r][2], acc[r][3]));
    for (int j = 0; j < NJ; j++) {
      float *c = C + r * ldc + j;
      *c = beta != 0.0f ? alpha * s[j] + beta * *c : alpha * s[j];
    }
  }
}

#define SG_DOTS_NR(NJ)                                                                          \
  switch (attn_min64(4, M - i)) {                                                              \
    case 1: sg_dots(Ai, lda, Bj, ldb, Cij, ldc, kv, alpha, beta, 1, NJ, last); break;           \
    case 2: sg_dots(Ai, lda, Bj, ldb, Cij, ldc, kv, alpha, beta, 2, NJ, last); break;           \
    case 3: sg_dots(Ai, lda, Bj, ldb, Cij, ldc, kv, alpha, beta, 3, NJ, last); break;           \
    default: sg_dots(Ai, lda, Bj, ldb, Cij, ldc, kv, alpha, beta, 4, NJ, last); break;          \
  }

SG_TARGET static void sg_nt(int64_t M, int64_t N, int64_t K, float alpha, const float *A,
                            int64_t lda, const float *B, int64_t ldb, float beta, float *C,
                            int64_t ldc) {
  const int64_t kv = (K + 15) / 16;
  const int rem = (int)(K - 16 * (kv - 1));
  const __mmask16 last = (__mmask16)(rem == 16 ? 0xffffu : (1u << rem) - 1u);
  for (int64_t i = 0; i < M; i += 4)
    for (int64_t j = 0; j < N; j += 4) {
      const float *Ai = A + i * lda, *Bj = B + j * ldb;
      float *Cij = C + i * ldc + j;
      switch (attn_min64(4, N - j)) {
        case 1: SG_DOTS_NR(1) break;
        case 2: SG_DOTS_NR(2) break;
        case 3: SG_DOTS_NR(3) break;
        default: SG_DOTS_NR(4) break;
      }
    }
}
#undef SG_DOTS_NR

bool attn_sgemm_small(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha,
                      const float *A, int64_t lda, const float *B, int64_t ldb, float beta,
                      float *C, int64_t ldc) {
  if (trans_a || M > ATTN_SGEMM_SMALL_M || N > ATTN_SGEMM_SMALL_N || K > ATTN_SGEMM_SMALL_K ||
      M <= 0 || N <= 0 || K < 0 || M * N * K > ATTN_SGEMM_SMALL_MNK)
    return false;
  if (!attn_cpu_avx512() || attn_tile_blas_forced()) return false;
  if (K == 0) { /* no products: C = beta·C (alpha·0) */
    for (int64_t i = 0; i < M; i++)
      for (int64_t j = 0; j < N; j++) C[i * ldc + j] = beta != 0.0f ? beta * C[i * ldc + j] : 0.0f;
    return true;
  }
  if (trans_b)
    sg_nt(M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
  else
    sg_nn(M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
  return true;
}

#else

bool attn_sgemm_small(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha,
                      const float *A, int64_t lda, const float *B, int64_t ldb, float beta,
                      float *C, int64_t ldc) {
  (void)trans_a, (void)trans_b, (void)M, (void)N, (void)K, (void)alpha, (void)A, (void)lda;
  (void)B, (void)ldb, (void)beta, (void)C, (void)ldc;
  return false;
}

#endif

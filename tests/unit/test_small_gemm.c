/* The small f32 GEMM kernel (src/blas/small_gemm.c) against a naive f64
 * product: every M, N around the 4-row and 16-lane blocks, K around the
 * vector width (and 0), both op(B), alpha and beta (beta = 0 must not read
 * C: it holds NaN), strided operands; C outside its M×N block untouched;
 * calls outside the size limits (M, N, K or M·N·K) declined, C untouched; the result of a
 * row independent of M (so splitting rows never changes a bit). */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "blas/gemm.h"
#include "kernels/tile.h"
#include "testutil.h"

static void one(uint64_t *seed, bool tb, int64_t M, int64_t N, int64_t K, float alpha, float beta) {
  const int64_t lda = K + 3, ldb = (tb ? K : N) + 5, ldc = N + 2;
  float *A = malloc((size_t)(M * lda + 1) * 4), *B = malloc((size_t)((tb ? N : K) * ldb + 1) * 4);
  float *C = malloc((size_t)(M * ldc) * 4), *C0 = malloc((size_t)(M * ldc) * 4);
  for (int64_t i = 0; i < M * lda; i++) A[i] = (float)tu_uniform(seed, -1, 1);
  for (int64_t i = 0; i < (tb ? N : K) * ldb; i++) B[i] = (float)tu_uniform(seed, -1, 1);
  for (int64_t i = 0; i < M * ldc; i++) C0[i] = beta != 0.0f ? (float)tu_uniform(seed, -1, 1) : NAN;
  memcpy(C, C0, (size_t)(M * ldc) * 4);
  if (M * N * K > ATTN_SGEMM_SMALL_MNK) { /* declined, C untouched */
    assert_false(attn_sgemm_small(false, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc));
    assert_memory_equal(C, C0, (size_t)(M * ldc) * 4);
    free(A), free(B), free(C), free(C0);
    return;
  }
  assert_true(attn_sgemm_small(false, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc));
  for (int64_t i = 0; i < M; i++)
    for (int64_t j = 0; j < ldc; j++) {
      const float got = C[i * ldc + j];
      if (j >= N) { /* padding: untouched (NaN or the old value, bitwise) */
        assert_memory_equal(&got, &C0[i * ldc + j], sizeof got);
        continue;
      }
      double s = 0, sa = 0;
      for (int64_t k = 0; k < K; k++) {
        const double p = (double)A[i * lda + k] * (tb ? B[j * ldb + k] : B[k * ldb + j]);
        s += p, sa += fabs(p);
      }
      const double want = alpha * s + (beta != 0.0f ? beta * (double)C0[i * ldc + j] : 0.0);
      const double tol = (double)(K + 4) * 6e-8 * (fabs(alpha) * sa + fabs(beta) + 1e-30);
      if (!(fabs(got - want) <= tol))
        fail_msg("M=%lld N=%lld K=%lld tb=%d alpha=%g beta=%g: C[%lld][%lld] = %.9g, want %.9g",
                 (long long)M, (long long)N, (long long)K, tb, alpha, beta, (long long)i,
                 (long long)j, (double)got, want);
    }
  /* Row i alone (M = 1) gives the same bits as inside the block. */
  for (int64_t i = 0; i < M; i += 3) {
    float row[64 + 2];
    for (int64_t j = 0; j < N; j++) row[j] = C0[i * ldc + j];
    assert_true(attn_sgemm_small(false, tb, 1, N, K, alpha, A + i * lda, lda, B, ldb, beta, row, ldc));
    assert_memory_equal(row, C + i * ldc, (size_t)N * 4);
  }
  free(A), free(B), free(C), free(C0);
}

static void small_gemm_meets_the_f64_product(void **state) {
  (void)state;
  if (!attn_cpu_avx512() || attn_tile_blas_forced()) {
    assert_false(attn_sgemm_small(false, false, 4, 4, 4, 1, NULL, 4, NULL, 4, 0, NULL, 4));
    skip();
  }
  uint64_t seed = 11;
  static const int64_t Ms[] = {1, 2, 3, 4, 5, 7, 8, 13, 64};
  static const int64_t Ns[] = {1, 3, 4, 5, 15, 16, 17, 31, 33, 48, 63, 64};
  static const int64_t Ks[] = {0, 1, 7, 15, 16, 17, 33, 64, 100, 128};
  for (int tb = 0; tb < 2; tb++)
    for (size_t a = 0; a < sizeof Ms / sizeof *Ms; a++)
      for (size_t b = 0; b < sizeof Ns / sizeof *Ns; b++)
        for (size_t c = 0; c < sizeof Ks / sizeof *Ks; c++) {
          const float alpha = (a + b + c) % 3 == 0 ? 1.0f : 0.37f;
          const float beta = (a + c) % 3 == 0 ? 0.0f : (a + c) % 3 == 1 ? 1.0f : -0.5f;
          one(&seed, tb, Ms[a], Ns[b], Ks[c], alpha, beta);
        }
}

static void larger_products_are_declined(void **state) {
  (void)state;
  float c = 42.0f, x = 1.0f;
  /* Too many rows, columns or k, or op(A) transposed: false, C untouched. */
  assert_false(attn_sgemm_small(false, false, ATTN_SGEMM_SMALL_M + 1, 1, 1, 1, &x, 1, &x, 1, 0, &c, 1));
  assert_false(attn_sgemm_small(false, true, 1, ATTN_SGEMM_SMALL_N + 1, 1, 1, &x, 1, &x, 1, 0, &c, 1));
  assert_false(attn_sgemm_small(false, false, 1, 1, ATTN_SGEMM_SMALL_K + 1, 1, &x, 1, &x, 1, 0, &c, 1));
  assert_false(attn_sgemm_small(true, false, 1, 1, 1, 1, &x, 1, &x, 1, 0, &c, 1));
  float big[64 * 64];
  assert_false(attn_sgemm_small(false, false, 64, 64, 64, 1, big, 64, big, 64, 0, big, 64));
  assert_true(c == 42.0f);
  /* attn_sgemm still computes them (through OpenBLAS). */
  float A[2 * 130], B[130 * 2], C[4] = {0};
  for (int i = 0; i < 260; i++) A[i] = 1.0f, B[i] = 0.5f;
  attn_sgemm(false, false, 2, 2, 130, 1.0f, A, 130, B, 2, 0.0f, C, 2);
  for (int i = 0; i < 4; i++) assert_true(C[i] == 65.0f);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(small_gemm_meets_the_f64_product),
      cmocka_unit_test(larger_products_are_declined),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}

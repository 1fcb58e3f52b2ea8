/* The only door to BLAS. Row-major GEMM on strided matrices; small f32
 * products take the library's own kernel instead (attn_sgemm_small). */
#ifndef ATTN_GEMM_H
#define ATTN_GEMM_H

#include <stdbool.h>
#include <stdint.h>

/* C[M×N] = alpha · op(A) · op(B) + beta · C, row-major, op = transpose if trans_*.
 * A is M×K (K×M if trans_a), B is K×N (N×K if trans_b). */
void attn_sgemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha,
                const float *A, int64_t lda, const float *B, int64_t ldb, float beta, float *C,
                int64_t ldc);
void attn_dgemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, double alpha,
                const double *A, int64_t lda, const double *B, int64_t ldb, double beta,
                double *C, int64_t ldc);

/* Small f32 GEMMs on this library's own AVX-512 kernel (small_gemm.c):
 * M ≤ 64, N ≤ 64, K ≤ 128, M·N·K ≤ 32·32·64, op(A) = A. Returns false, touching nothing, for
 * any other call, on CPUs without AVX-512 (or $ATTN_CPU=generic|avx2) and
 * with $ATTN_TILE=blas; attn_sgemm then calls OpenBLAS. */
#define ATTN_SGEMM_SMALL_M 64
#define ATTN_SGEMM_SMALL_N 64
#define ATTN_SGEMM_SMALL_K 128
#define ATTN_SGEMM_SMALL_MNK (32 * 32 * 64)
bool attn_sgemm_small(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha,
                      const float *A, int64_t lda, const float *B, int64_t ldb, float beta,
                      float *C, int64_t ldc);

/* OpenBLAS's process-wide thread count. */
int attn_blas_get_threads(void);
void attn_blas_set_threads(int n);

#endif

/* The dtype traits table: everything that differs per element type and is
 * data, not a loop (see core/internal.h and core/tmpl.h). */
#include <string.h>

#include "blas/gemm.h"
#include "core/internal.h"

static void gemm_f32(bool ta, bool tb, int64_t M, int64_t N, int64_t K, double alpha,
                     const void *A, int64_t lda, const void *B, int64_t ldb, double beta,
                     void *C, int64_t ldc) {
  attn_sgemm(ta, tb, M, N, K, (float)alpha, A, lda, B, ldb, (float)beta, C, ldc);
}

static void gemm_f64(bool ta, bool tb, int64_t M, int64_t N, int64_t K, double alpha,
                     const void *A, int64_t lda, const void *B, int64_t ldb, double beta,
                     void *C, int64_t ldc) {
  attn_dgemm(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}

/* bfloat16 bits are the top half of an f32. */
static void bf16_to_f32(const void *src, float *dst, int64_t n) {
  const uint16_t *s = src;
  for (int64_t i = 0; i < n; i++) {
    union {
      uint32_t u;
      float f;
    } x = {(uint32_t)s[i] << 16};
    dst[i] = x.f;
  }
}

static void f32_to_bf16(const float *src, void *dst, int64_t n) {
  uint16_t *d = dst;
  for (int64_t i = 0; i < n; i++) d[i] = attn_f32_to_bf16(src[i]);
}

/* IEEE binary16 ↔ f32 (portable; the tile engine packs with F16C). Every
 * f16 is exact in f32; f32 → f16 rounds to nearest even, overflow → ±inf,
 * NaN stays a quiet NaN. */
static void f16_to_f32(const void *src, float *dst, int64_t n) {
  const uint16_t *s = src;
  for (int64_t i = 0; i < n; i++) dst[i] = attn_f16_to_f32(s[i]);
}

static void f32_to_f16(const float *src, void *dst, int64_t n) {
  uint16_t *d = dst;
  for (int64_t i = 0; i < n; i++) d[i] = attn_f32_to_f16(src[i]);
}

static const attn_dtype_traits traits[] = {
    [ATTN_DTYPE_F32] = {"f32", 4, ATTN_DTYPE_F32, NULL, NULL, gemm_f32},
    [ATTN_DTYPE_F64] = {"f64", 8, ATTN_DTYPE_F64, NULL, NULL, gemm_f64},
    [ATTN_DTYPE_U8] = {"u8", 1, (attn_dtype)0, NULL, NULL, NULL},
    /* Storage types: computed in f32 (kernels convert through these rows or
     * the tile engine's packers, kernels/tile.h). */
    [ATTN_DTYPE_BF16] = {"bf16", 2, ATTN_DTYPE_F32, bf16_to_f32, f32_to_bf16, NULL},
    [ATTN_DTYPE_F16] = {"f16", 2, ATTN_DTYPE_F32, f16_to_f32, f32_to_f16, NULL},
};

const attn_dtype_traits attn_bf16_traits = {"bf16", 2, ATTN_DTYPE_F32, bf16_to_f32, f32_to_bf16,
                                            NULL};

static const attn_dtype_traits unknown = {"unknown", 0, (attn_dtype)0, NULL, NULL, NULL};

const attn_dtype_traits *attn_dtype_info(attn_dtype dtype) {
  if ((int)dtype <= 0 || (size_t)dtype >= sizeof traits / sizeof traits[0] ||
      traits[dtype].size == 0)
    return &unknown;
  return &traits[dtype];
}

size_t attn_dtype_size(attn_dtype dtype) { return attn_dtype_info(dtype)->size; }

const char *attn_dtype_name(attn_dtype dtype) { return attn_dtype_info(dtype)->name; }

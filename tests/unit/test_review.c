/* Regression tests for code-review findings: inputs for which the library
 * once returned ATTN_OK with a wrong (or thread-count-dependent) answer. Each
 * comment says what used to happen. Each test accepts either fix: the library
 * may reject the input with a clear status, or compute the documented result;
 * what it must not do is return ATTN_OK with a wrong answer. */
#define _GNU_SOURCE
#include <float.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "testutil.h"

static attn_tensor *wrap(attn_context *ctx, int32_t rank, const int64_t *shape,
                         const int64_t *strides, void *data) {
  attn_tensor *t = NULL;
  assert_int_equal(attn_tensor_wrap(ctx, ATTN_DTYPE_F32, rank, shape, strides, data, &t), ATTN_OK);
  return t;
}

/* Linformer projections with row stride 0 (every row of E and F is the same
 * vector; approx.h only asks for a contiguous S_k axis). The projection GEMM
 * got lda = 0 < K: OpenBLAS printed "parameter ... had an illegal value",
 * skipped the product, and execute returned ATTN_OK with out = 0. */
static void linformer_broadcast_projection_rows(void **state) {
  (void)state;
  attn_context *ctx = tu_context(1);
  enum { S = 8, D = 4, K = 2 };
  float q[S * D], k[S * D], v[S * D], out[S * D], erow[S];
  for (int i = 0; i < S * D; i++) {
    q[i] = (float)((i * 7) % 5) / 5;
    k[i] = (float)((i * 3) % 7) / 7;
    v[i] = (float)i;
  }
  for (int j = 0; j < S; j++) erow[j] = 1.0f / S;
  const int64_t shp[4] = {1, 1, S, D}, pshape[2] = {K, S}, pstr[2] = {0, 1};
  attn_tensor *tq = wrap(ctx, 4, shp, NULL, q), *tk = wrap(ctx, 4, shp, NULL, k);
  attn_tensor *tv = wrap(ctx, 4, shp, NULL, v), *to = wrap(ctx, 4, shp, NULL, out);
  attn_tensor *te = wrap(ctx, 2, pshape, pstr, erow), *tf = wrap(ctx, 2, pshape, pstr, erow);
  attn_desc *d;
  assert_int_equal(attn_desc_create(ctx, &d), ATTN_OK);
  assert_int_equal(attn_desc_set_variant(d, ATTN_VARIANT_LINFORMER), ATTN_OK);
  assert_int_equal(attn_desc_set_lowrank_proj(d, te, tf), ATTN_OK);
  for (int i = 0; i < S * D; i++) out[i] = -1;
  attn_status st = attn_forward(ctx, d, tq, tk, tv, to, NULL, NULL);
  if (st == ATTN_OK) {
    /* Every projected key and value is the mean of K / V: out_i = mean_j v_j. */
    for (int i = 0; i < S; i++)
      for (int x = 0; x < D; x++) {
        double want = 0;
        for (int j = 0; j < S; j++) want += v[j * D + x];
        want /= S;
        if (fabs(out[i * D + x] - want) > 1e-4 * fabs(want))
          fail_msg("out[%d][%d] = %g, want %g (ATTN_OK with a wrong result)", i, x,
                   (double)out[i * D + x], want);
      }
  } else {
    assert_int_equal(st, ATTN_ERR_LAYOUT);
    for (int i = 0; i < S * D; i++) assert_true(out[i] == -1.0f); /* untouched */
  }
  attn_desc_destroy(d);
  attn_tensor_destroy(tq); attn_tensor_destroy(tk); attn_tensor_destroy(tv);
  attn_tensor_destroy(to); attn_tensor_destroy(te); attn_tensor_destroy(tf);
  attn_context_destroy(ctx);
}

/* out with a head stride of 0 (wrap accepts stride 0 as broadcast): every
 * head's task wrote the same rows, concurrently with > 1 thread, so the
 * result depended on scheduling. An output whose elements alias must be
 * rejected at plan time. */
static void aliased_output_rows_are_rejected(void **state) {
  (void)state;
  attn_context *ctx = tu_context(2);
  enum { H = 4, S = 16, D = 8 };
  float *q = calloc(H * S * D, 4), *out = calloc(S * D, 4);
  const int64_t shp[4] = {1, H, S, D}, ost[4] = {S * D, 0, D, 1};
  attn_tensor *tq = wrap(ctx, 4, shp, NULL, q), *to = wrap(ctx, 4, shp, ost, out);
  attn_desc *d;
  assert_int_equal(attn_desc_create(ctx, &d), ATTN_OK);
  attn_plan *p = NULL;
  attn_status st = attn_plan_create(ctx, d, tq, tq, tq, to, NULL, NULL, &p);
  if (st == ATTN_OK) fail_msg("plan accepted an out tensor whose heads share memory");
  attn_plan_destroy(p);
  attn_desc_destroy(d);
  attn_tensor_destroy(tq); attn_tensor_destroy(to);
  free(q); free(out);
  attn_context_destroy(ctx);
}

/* k's row stride 2^32 + 4 (memory reserved with MAP_NORESERVE, two rows
 * touched). BLAS takes int: the stride was truncated to 4, the GEMM read the
 * wrong second row, and execute returned ATTN_OK with a wrong answer. */
static void row_stride_beyond_int_max(void **state) {
  (void)state;
  const int64_t D = 4, S = 2, stride = ((int64_t)1 << 32) + 4;
  size_t bytes = (size_t)(stride * (S - 1) + D) * sizeof(float);
  float *kmem = mmap(NULL, bytes, PROT_READ | PROT_WRITE,
                     MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (kmem == MAP_FAILED) skip();
  attn_context *ctx = tu_context(1);
  float q[8] = {1, 0, 0, 0, 0, 1, 0, 0}, v[8] = {1, 2, 3, 4, 5, 6, 7, 8}, out[8];
  for (int x = 0; x < 4; x++) kmem[stride + x] = 10; /* key 1 dominates, key 0 = 0 */
  const int64_t shp[4] = {1, 1, S, D}, kst[4] = {stride * S, stride * S, stride, 1};
  attn_tensor *tq = wrap(ctx, 4, shp, NULL, q), *tk = wrap(ctx, 4, shp, kst, kmem);
  attn_tensor *tv = wrap(ctx, 4, shp, NULL, v), *to = wrap(ctx, 4, shp, NULL, out);
  attn_desc *d;
  assert_int_equal(attn_desc_create(ctx, &d), ATTN_OK);
  for (int i = 0; i < 8; i++) out[i] = -1;
  attn_status st = attn_forward(ctx, d, tq, tk, tv, to, NULL, NULL);
  if (st == ATTN_OK) {
    const double e = exp(5.0), p1 = e / (1 + e), p0 = 1 / (1 + e); /* s = q·k/√4 */
    for (int i = 0; i < 2; i++)
      for (int x = 0; x < 4; x++) {
        double want = p0 * v[x] + p1 * v[4 + x];
        if (fabs(out[i * 4 + x] - want) > 1e-4 * want)
          fail_msg("out[%d][%d] = %g, want %g (ATTN_OK with a wrong result)", i, x,
                   (double)out[i * 4 + x], want);
      }
  } else {
    for (int i = 0; i < 8; i++) assert_true(out[i] == -1.0f);
  }
  attn_desc_destroy(d);
  attn_tensor_destroy(tq); attn_tensor_destroy(tk); attn_tensor_destroy(tv); attn_tensor_destroy(to);
  attn_context_destroy(ctx);
  munmap(kmem, bytes);
}

/* A block size larger than the sequence is one block. INT64_MAX used to
 * overflow attn_cdiv64 (signed overflow, UB) and the plan failed with "cannot
 * allocate the 0-byte layout" (ATTN_ERR_NO_MEMORY). */
static void huge_block_size_is_one_block(void **state) {
  (void)state;
  attn_context *ctx = tu_context(1);
  enum { S = 10, D = 2 };
  float q[S * D] = {0}, out[S * D];
  const int64_t shp[4] = {1, 1, S, D};
  attn_tensor *tq = wrap(ctx, 4, shp, NULL, q), *to = wrap(ctx, 4, shp, NULL, out);
  attn_desc *d;
  assert_int_equal(attn_desc_create(ctx, &d), ATTN_OK);
  assert_int_equal(attn_desc_set_variant(d, ATTN_VARIANT_BIGBIRD), ATTN_OK);
  assert_int_equal(attn_desc_set_block_size(d, INT64_MAX), ATTN_OK);
  assert_int_equal(attn_desc_set_bigbird(d, 1, 0, 0, 1), ATTN_OK);
  attn_plan *p = NULL;
  attn_status st = attn_plan_create(ctx, d, tq, tq, tq, to, NULL, NULL, &p);
  if (st != ATTN_OK) fail_msg("block INT64_MAX: %s (%s)", attn_status_string(st),
                              attn_context_last_error(ctx));
  attn_plan_destroy(p);
  attn_desc_destroy(d);
  attn_tensor_destroy(tq); attn_tensor_destroy(to);
  attn_context_destroy(ctx);
}

/* ALiBi slope finite in double but above FLT_MAX: in f32 it became +inf,
 * inf·0 = NaN on the diagonal, and the row came out 0 instead of v_i. */
static void alibi_slope_beyond_float_range(void **state) {
  (void)state;
  attn_context *ctx = tu_context(1);
  enum { S = 4, D = 2 };
  float q[S * D] = {0}, v[S * D] = {1, 1, 2, 2, 3, 3, 4, 4}, out[S * D];
  const int64_t shp[4] = {1, 1, S, D};
  attn_tensor *tq = wrap(ctx, 4, shp, NULL, q), *tv = wrap(ctx, 4, shp, NULL, v);
  attn_tensor *to = wrap(ctx, 4, shp, NULL, out);
  attn_desc *d;
  assert_int_equal(attn_desc_create(ctx, &d), ATTN_OK);
  const double slope[1] = {1e39};
  attn_status st = attn_desc_set_alibi(d, slope, 1);
  if (st == ATTN_OK) st = attn_forward(ctx, d, tq, tq, tv, to, NULL, NULL);
  if (st == ATTN_OK) /* s_ij = −1e39·|i − j|: only j = i survives */
    for (int i = 0; i < S; i++)
      for (int x = 0; x < D; x++)
        if (out[i * D + x] != v[i * D + x])
          fail_msg("out[%d][%d] = %g, want %g", i, x, (double)out[i * D + x], (double)v[i * D + x]);
  attn_desc_destroy(d);
  attn_tensor_destroy(tq); attn_tensor_destroy(tv); attn_tensor_destroy(to);
  attn_context_destroy(ctx);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(linformer_broadcast_projection_rows),
      cmocka_unit_test(aliased_output_rows_are_rejected),
      cmocka_unit_test(row_stride_beyond_int_max),
      cmocka_unit_test(huge_block_size_is_one_block),
      cmocka_unit_test(alibi_slope_beyond_float_range),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}

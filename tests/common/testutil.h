/* Helpers shared by the C tests: random data, tensors in either layout,
 * tolerance checks, a counting/failing allocator. */
#ifndef ATTN_TESTUTIL_H
#define ATTN_TESTUTIL_H

#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdbool.h>
#include <stdint.h>
#include <cmocka.h>

#include "attn/attn.h"
#include "reference.h"

/* xorshift64* uniform in [lo, hi). */
double tu_uniform(uint64_t *state, double lo, double hi);
void tu_fill(double *x, size_t n, uint64_t *state, double lo, double hi);
double *tu_random(size_t n, uint64_t *state); /* malloc'd, uniform in [-1, 1) */

/* 16-bit storage dtypes, and rounding a double to them (nearest even). */
static inline bool tu_is_16bit(attn_dtype dt) {
  return dt == ATTN_DTYPE_BF16 || dt == ATTN_DTYPE_F16;
}
double tu_round_bf16(double x);
double tu_round_f16(double x);
/* Element off of a buffer of dtype dt (f32, f64, bf16, f16; else u8), as
 * double; tu_store rounds to nearest even. */
void tu_store(void *base, attn_dtype dt, int64_t off, double x);
double tu_load(const void *base, attn_dtype dt, int64_t off);

/* A rank-4 tensor holding src ([B][H][S][D] dense doubles) converted to dtype,
 * stored as [B,H,S,D] or, with bshd, as [B,S,H,D] memory seen through strides.
 * The storage is freed by tu_tensor_free. */
attn_tensor *tu_tensor4(attn_context *ctx, attn_dtype dt, const double *src, int64_t B,
                        int64_t H, int64_t S, int64_t D, bool bshd);
attn_tensor *tu_tensor(attn_context *ctx, attn_dtype dt, const double *src, int32_t rank,
                       const int64_t *shape); /* contiguous, any rank */
void tu_tensor_free(attn_tensor *t);
/* Read a tensor's logical elements into dense doubles (C order of its shape). */
void tu_read(const attn_tensor *t, double *dst);

/* Count elements violating |got − ref| ≤ rtol·bound + atol (bound may be NULL:
 * then |ref| is used). NaN always violates. *max_err gets the largest |got − ref|. */
size_t tu_violations(const double *got, const double *ref, const double *bound, size_t n,
                     double rtol, double atol, double *max_err);

/* ATTN_TEST_QUICK=1 (set by tools/ci/valgrind.sh): tests may run fewer
 * random cases and shorter sequences; the checks stay the same. */
bool tu_quick(void);

/* A context with n threads (fails the test if it cannot be created). */
attn_context *tu_context(int32_t n);

/* Counting allocator: counts calls; fails the fail_at-th allocation (1-based,
 * 0 = never). Tracks outstanding bytes to detect leaks. */
typedef struct tu_counter {
  int64_t allocs, frees, fail_at, outstanding_bytes;
} tu_counter;
attn_context *tu_counting_context(tu_counter *c, int32_t threads);
/* The hooks themselves (user_data = a tu_counter), for contexts made by hand. */
void *tu_counting_alloc(void *user, size_t size, size_t alignment);
void tu_counting_free(void *user, void *ptr, size_t size);

#endif

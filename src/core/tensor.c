/* Tensors: dtype, shape, strides (elements), data; owned or borrowed. */
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>

#include "core/internal.h"

const char *attn_shape_str(const attn_tensor *t, char *buf, size_t len) {
  size_t used = 0;
  used += (size_t)snprintf(buf, len, "[");
  for (int32_t i = 0; i < t->rank && used < len; i++)
    used += (size_t)snprintf(buf + used, len - used, "%s%" PRId64, i ? "," : "", t->shape[i]);
  if (used < len) snprintf(buf + used, len - used, "]");
  return buf;
}

attn_tensor attn_tensor_view4(attn_dtype dtype, const int64_t shape[4], const int64_t *strides,
                              void *data) {
  attn_tensor t;
  memset(&t, 0, sizeof t);
  t.dtype = dtype;
  t.rank = 4;
  memcpy(t.shape, shape, sizeof t.shape);
  if (strides != NULL) {
    memcpy(t.strides, strides, sizeof t.strides);
  } else {
    int64_t s = 1;
    for (int i = 3; i >= 0; i--) {
      t.strides[i] = s;
      s *= shape[i];
    }
  }
  t.data = data;
  return t;
}

attn_status attn_check_dims(attn_context *ctx, const char *name, const attn_tensor *t,
                            const int64_t *want, const char *what) {
  for (int32_t i = 0; i < t->rank; i++)
    if (want[i] >= 0 && t->shape[i] != want[i]) {
      char got[96];
      return attn_fail(ctx, ATTN_ERR_SHAPE,
                       "%s: shape %s does not match %s (dim %d should be %" PRId64 ")", name,
                       attn_shape_str(t, got, sizeof got), what, (int)i, want[i]);
    }
  return ATTN_OK;
}

bool attn_tensor_extent(const attn_tensor *t, int64_t *extent) {
  int64_t last = 0;
  for (int32_t i = 0; i < t->rank; i++) {
    int64_t step;
    if (!attn_mul_ok(t->shape[i] - 1, t->strides[i], &step) || !attn_add_ok(last, step, &last))
      return false;
  }
  return attn_add_ok(last, 1, extent);
}

/* Shared validation of create/wrap. */
static attn_status check_meta(attn_context *ctx, const char *fn, attn_dtype dtype, int32_t rank,
                              const int64_t *shape, const int64_t *strides, size_t *bytes) {
  if (attn_dtype_size(dtype) == 0)
    return attn_fail(ctx, ATTN_ERR_DTYPE, "%s: dtype %d is not an attn_dtype", fn, (int)dtype);
  if (rank < 1 || rank > ATTN_MAX_RANK)
    return attn_fail(ctx, ATTN_ERR_SHAPE, "%s: rank %d is outside 1..%d", fn, (int)rank,
                     ATTN_MAX_RANK);
  for (int32_t i = 0; i < rank; i++) {
    if (shape[i] < 1)
      return attn_fail(ctx, ATTN_ERR_SHAPE, "%s: shape[%d] = %" PRId64 " must be >= 1", fn,
                       (int)i, shape[i]);
  }
  if (!attn_bytes_ok(shape, rank, attn_dtype_size(dtype), bytes))
    return attn_fail(ctx, ATTN_ERR_OVERFLOW, "%s: shape's element count times %zu bytes overflows",
                     fn, attn_dtype_size(dtype));
  if (strides != NULL) {
    int64_t last = 0;
    for (int32_t i = 0; i < rank; i++) {
      int64_t step;
      if (strides[i] < 0)
        return attn_fail(ctx, ATTN_ERR_LAYOUT, "%s: strides[%d] = %" PRId64 " is negative", fn,
                         (int)i, strides[i]);
      if (!attn_mul_ok(shape[i] - 1, strides[i], &step) || !attn_add_ok(last, step, &last))
        return attn_fail(ctx, ATTN_ERR_OVERFLOW, "%s: strides reach past int64", fn);
    }
    int64_t span, span_bytes;
    if (!attn_add_ok(last, 1, &span) ||
        !attn_mul_ok(span, (int64_t)attn_dtype_size(dtype), &span_bytes))
      return attn_fail(ctx, ATTN_ERR_OVERFLOW, "%s: strides' byte extent overflows", fn);
  }
  return ATTN_OK;
}

static void fill_contiguous(attn_tensor *t) {
  int64_t s = 1;
  for (int32_t i = t->rank - 1; i >= 0; i--) {
    t->strides[i] = s;
    s *= t->shape[i];
  }
}

attn_status attn_tensor_create(attn_context *ctx, attn_dtype dtype, int32_t rank,
                               const int64_t *shape, attn_tensor **out) {
  ATTN_CHECK_NULL(ctx, ctx);
  ATTN_CHECK_NULL(ctx, shape);
  ATTN_CHECK_NULL(ctx, out);
  size_t bytes;
  attn_status st = check_meta(ctx, "attn_tensor_create", dtype, rank, shape, NULL, &bytes);
  if (st != ATTN_OK) return st;
  attn_tensor *t = attn_calloc(ctx, sizeof *t);
  if (t == NULL) return attn_fail(ctx, ATTN_ERR_NO_MEMORY, "attn_tensor_create: out of memory");
  t->data = attn_calloc(ctx, bytes);
  if (t->data == NULL) {
    attn_free(ctx, t, sizeof *t);
    return attn_fail(ctx, ATTN_ERR_NO_MEMORY, "attn_tensor_create: cannot allocate %zu bytes",
                     bytes);
  }
  t->ctx = ctx;
  t->dtype = dtype;
  t->rank = rank;
  memcpy(t->shape, shape, (size_t)rank * sizeof *shape);
  fill_contiguous(t);
  t->owned_bytes = bytes;
  *out = t;
  return ATTN_OK;
}

attn_status attn_tensor_wrap(attn_context *ctx, attn_dtype dtype, int32_t rank,
                             const int64_t *shape, const int64_t *strides, void *data,
                             attn_tensor **out) {
  ATTN_CHECK_NULL(ctx, ctx);
  ATTN_CHECK_NULL(ctx, shape);
  ATTN_CHECK_NULL(ctx, data);
  ATTN_CHECK_NULL(ctx, out);
  size_t bytes;
  attn_status st = check_meta(ctx, "attn_tensor_wrap", dtype, rank, shape, strides, &bytes);
  if (st != ATTN_OK) return st;
  attn_tensor *t = attn_calloc(ctx, sizeof *t);
  if (t == NULL) return attn_fail(ctx, ATTN_ERR_NO_MEMORY, "attn_tensor_wrap: out of memory");
  t->ctx = ctx;
  t->dtype = dtype;
  t->rank = rank;
  memcpy(t->shape, shape, (size_t)rank * sizeof *shape);
  if (strides != NULL)
    memcpy(t->strides, strides, (size_t)rank * sizeof *strides);
  else
    fill_contiguous(t);
  t->data = data;
  *out = t;
  return ATTN_OK;
}

void attn_tensor_destroy(attn_tensor *t) {
  if (t == NULL) return;
  attn_context *ctx = t->ctx;
  if (t->owned_bytes > 0) attn_free(ctx, t->data, t->owned_bytes);
  attn_free(ctx, t, sizeof *t);
}

attn_dtype attn_tensor_dtype(const attn_tensor *t) { return t ? t->dtype : (attn_dtype)0; }
int32_t attn_tensor_rank(const attn_tensor *t) { return t ? t->rank : 0; }
int64_t attn_tensor_dim(const attn_tensor *t, int32_t axis) {
  return (t && axis >= 0 && axis < t->rank) ? t->shape[axis] : -1;
}
int64_t attn_tensor_stride(const attn_tensor *t, int32_t axis) {
  return (t && axis >= 0 && axis < t->rank) ? t->strides[axis] : -1;
}
int64_t attn_tensor_numel(const attn_tensor *t) {
  if (t == NULL) return 0;
  int64_t n = 1;
  for (int32_t i = 0; i < t->rank; i++) n *= t->shape[i]; /* checked at create */
  return n;
}
void *attn_tensor_data(const attn_tensor *t) { return t ? t->data : NULL; }

attn_status attn_tensor_set_data(attn_tensor *t, void *data) {
  if (t == NULL) return ATTN_ERR_NULL_ARG;
  ATTN_CHECK_NULL(t->ctx, data);
  if (t->owned_bytes > 0)
    return attn_fail(t->ctx, ATTN_ERR_INVALID_ARG,
                     "attn_tensor_set_data: t owns its data (only wrapped tensors can be re-pointed)");
  t->data = data;
  return ATTN_OK;
}

attn_status attn_check_tensor(attn_context *ctx, const char *name, const attn_tensor *t,
                              int32_t rank, attn_dtype dtype) {
  char buf[96];
  if (t == NULL) return attn_fail(ctx, ATTN_ERR_NULL_ARG, "%s: must not be NULL", name);
  if (t->rank != rank)
    return attn_fail(ctx, ATTN_ERR_SHAPE, "%s: rank %d (shape %s), expected rank %d", name,
                     (int)t->rank, attn_shape_str(t, buf, sizeof buf), (int)rank);
  if (t->dtype != dtype)
    return attn_fail(ctx, ATTN_ERR_DTYPE, "%s: dtype %s, expected %s", name,
                     attn_dtype_name(t->dtype), attn_dtype_name(dtype));
  return ATTN_OK;
}

attn_status attn_check_dtype_pair(attn_context *ctx, const char *name, const attn_tensor *t,
                                  const char *ref_name, const attn_tensor *ref) {
  if (t == NULL) return attn_fail(ctx, ATTN_ERR_NULL_ARG, "%s: must not be NULL", name);
  if (t->dtype != ref->dtype)
    return attn_fail(ctx, ATTN_ERR_DTYPE, "%s: dtype %s, expected %s (%s is %s)", name,
                     attn_dtype_name(t->dtype), attn_dtype_name(ref->dtype), ref_name,
                     attn_dtype_name(ref->dtype));
  return ATTN_OK;
}

attn_status attn_check_matrix(attn_context *ctx, const char *name, int64_t rows, int64_t cols,
                              int64_t row_stride, int64_t col_stride) {
  if (col_stride != 1 && cols != 1)
    return attn_fail(ctx, ATTN_ERR_LAYOUT,
                     "%s: last dim stride is %" PRId64 "; the last dim must be contiguous (stride 1)",
                     name, col_stride);
  if (row_stride < cols)
    return attn_fail(ctx, ATTN_ERR_LAYOUT,
                     "%s: row stride %" PRId64 " is below the row length %" PRId64
                     " (rows must not overlap)",
                     name, row_stride, cols);
  if (rows > INT_MAX || cols > INT_MAX || row_stride > INT_MAX)
    return attn_fail(ctx, ATTN_ERR_UNSUPPORTED,
                     "%s: %" PRId64 " rows x %" PRId64 " columns with row stride %" PRId64
                     " exceed BLAS's int range (%d)",
                     name, rows, cols, row_stride, INT_MAX);
  return ATTN_OK;
}

attn_status attn_check_matrix_rows(attn_context *ctx, const char *name, const attn_tensor *t) {
  const int32_t r = t->rank;
  return attn_check_matrix(ctx, name, t->shape[r - 2], t->shape[r - 1], t->strides[r - 2],
                           t->strides[r - 1]);
}

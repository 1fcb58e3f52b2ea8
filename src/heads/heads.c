/* Head split [B, S, H·D] ↔ [B, H, S, D]: as stride views (the kernels take
 * any strides with a contiguous last dim, so the usual path copies nothing)
 * and as explicit copies for layouts a view cannot express. */
#include <inttypes.h>
#include <string.h>

#include "core/internal.h"

static attn_status check_float(attn_context *ctx, const char *name, const attn_tensor *t,
                               int32_t rank) {
  if (t == NULL) return attn_fail(ctx, ATTN_ERR_NULL_ARG, "%s: must not be NULL", name);
  if (t->dtype != ATTN_DTYPE_F32 && t->dtype != ATTN_DTYPE_F64)
    return attn_fail(ctx, ATTN_ERR_DTYPE, "%s: dtype %s, expected f32 or f64", name,
                     attn_dtype_name(t->dtype));
  if (t->rank != rank) {
    char buf[96];
    return attn_fail(ctx, ATTN_ERR_SHAPE, "%s: rank %d (shape %s), expected %d", name,
                     (int)t->rank, attn_shape_str(t, buf, sizeof buf), (int)rank);
  }
  return ATTN_OK;
}

attn_status attn_heads_split_view(attn_context *ctx, const attn_tensor *x, int64_t num_heads,
                                  attn_tensor **out) {
  ATTN_CHECK_NULL(ctx, ctx);
  attn_clear_error(ctx);
  attn_status st = check_float(ctx, "x", x, 3);
  if (st != ATTN_OK) return st;
  ATTN_CHECK_NULL(ctx, out);
  if (num_heads < 1)
    return attn_fail(ctx, ATTN_ERR_INVALID_ARG, "num_heads: %" PRId64 " must be >= 1", num_heads);
  char buf[96];
  if (x->shape[2] % num_heads != 0)
    return attn_fail(ctx, ATTN_ERR_SHAPE,
                     "num_heads: %" PRId64 " does not divide x's last dim (shape %s)", num_heads,
                     attn_shape_str(x, buf, sizeof buf));
  if (x->strides[2] != 1 && x->shape[2] != 1)
    return attn_fail(ctx, ATTN_ERR_LAYOUT,
                     "x: last dim stride is %" PRId64 "; a head view needs it contiguous",
                     x->strides[2]);
  int64_t D = x->shape[2] / num_heads;
  const int64_t shape[4] = {x->shape[0], num_heads, x->shape[1], D};
  const int64_t strides[4] = {x->strides[0], D, x->strides[1], 1};
  return attn_tensor_wrap(ctx, x->dtype, 4, shape, strides, x->data, out);
}

attn_status attn_heads_merge_view(attn_context *ctx, const attn_tensor *x, attn_tensor **out) {
  ATTN_CHECK_NULL(ctx, ctx);
  attn_clear_error(ctx);
  attn_status st = check_float(ctx, "x", x, 4);
  if (st != ATTN_OK) return st;
  ATTN_CHECK_NULL(ctx, out);
  int64_t H = x->shape[1], D = x->shape[3];
  bool last_ok = x->strides[3] == 1 || D == 1;
  bool heads_adjacent = x->strides[1] == D || H == 1;
  if (!last_ok || !heads_adjacent) {
    char buf[96];
    return attn_fail(ctx, ATTN_ERR_LAYOUT,
                     "x: strides [%" PRId64 ",%" PRId64 ",%" PRId64 ",%" PRId64
                     "] of shape %s do not put the heads of a row side by side (need stride(1) = "
                     "D = %" PRId64 ", stride(3) = 1); copy with attn_heads_merge()",
                     x->strides[0], x->strides[1], x->strides[2], x->strides[3],
                     attn_shape_str(x, buf, sizeof buf), D);
  }
  int64_t E;
  if (!attn_mul_ok(H, D, &E))
    return attn_fail(ctx, ATTN_ERR_OVERFLOW, "x: H·D overflows");
  const int64_t shape[3] = {x->shape[0], x->shape[2], E};
  const int64_t strides[3] = {x->strides[0], x->strides[2], 1};
  return attn_tensor_wrap(ctx, x->dtype, 3, shape, strides, x->data, out);
}

/* Copy between a [B, S, H·D] tensor `flat` and a [B, H, S, D] tensor `heads`
 * in the direction asked. Shapes were checked by the caller. */
static void copy_heads(const attn_tensor *flat, const attn_tensor *heads, bool to_heads) {
  const size_t es = attn_dtype_size(flat->dtype);
  const int64_t B = heads->shape[0], H = heads->shape[1], S = heads->shape[2], D = heads->shape[3];
  const bool rows = flat->strides[2] == 1 && heads->strides[3] == 1;
  char *fb = flat->data, *hb = heads->data;
  for (int64_t b = 0; b < B; b++)
    for (int64_t h = 0; h < H; h++)
      for (int64_t s = 0; s < S; s++) {
        char *f = fb + (size_t)(b * flat->strides[0] + s * flat->strides[1] +
                                h * D * flat->strides[2]) * es;
        char *p = hb + (size_t)(b * heads->strides[0] + h * heads->strides[1] +
                                s * heads->strides[2]) * es;
        if (rows) {
          if (to_heads)
            memcpy(p, f, (size_t)D * es);
          else
            memcpy(f, p, (size_t)D * es);
          continue;
        }
        for (int64_t d = 0; d < D; d++) {
          char *fe = f + (size_t)(d * flat->strides[2]) * es;
          char *pe = p + (size_t)(d * heads->strides[3]) * es;
          if (to_heads)
            memcpy(pe, fe, es);
          else
            memcpy(fe, pe, es);
        }
      }
}

/* x and out of a split (x flat [B, S, H·D], out [B, H, S, D]) or of a merge
 * (the other way round): checked in argument order, x first. */
static attn_status check_pair(attn_context *ctx, const attn_tensor *x, const attn_tensor *out,
                              bool split) {
  attn_status st;
  if ((st = check_float(ctx, "x", x, split ? 3 : 4)) != ATTN_OK) return st;
  if ((st = check_float(ctx, "out", out, split ? 4 : 3)) != ATTN_OK) return st;
  if (x->dtype != out->dtype)
    return attn_fail(ctx, ATTN_ERR_DTYPE, "out: dtype %s differs from x's %s",
                     attn_dtype_name(out->dtype), attn_dtype_name(x->dtype));
  const attn_tensor *flat = split ? x : out, *heads = split ? out : x;
  int64_t E;
  if (!attn_mul_ok(heads->shape[1], heads->shape[3], &E))
    return attn_fail(ctx, ATTN_ERR_OVERFLOW, "%s: H·D overflows", split ? "out" : "x");
  if (flat->shape[0] != heads->shape[0] || flat->shape[1] != heads->shape[2] ||
      flat->shape[2] != E) {
    char a[96], b[96];
    return attn_fail(ctx, ATTN_ERR_SHAPE,
                     "out: shape %s does not correspond to x's shape %s (%s)",
                     attn_shape_str(out, a, sizeof a), attn_shape_str(x, b, sizeof b),
                     split ? "[B, S, H·D] -> [B, H, S, D]" : "[B, H, S, D] -> [B, S, H·D]");
  }
  return ATTN_OK;
}

attn_status attn_heads_split(attn_context *ctx, const attn_tensor *x, attn_tensor *out) {
  ATTN_CHECK_NULL(ctx, ctx);
  attn_clear_error(ctx);
  attn_status st = check_pair(ctx, x, out, true);
  if (st != ATTN_OK) return st;
  copy_heads(x, out, true);
  return ATTN_OK;
}

attn_status attn_heads_merge(attn_context *ctx, const attn_tensor *x, attn_tensor *out) {
  ATTN_CHECK_NULL(ctx, ctx);
  attn_clear_error(ctx);
  attn_status st = check_pair(ctx, x, out, false);
  if (st != ATTN_OK) return st;
  copy_heads(out, x, false);
  return ATTN_OK;
}

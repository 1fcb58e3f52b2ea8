/* attn_merge_states: combine two partial attention results over disjoint key
 * sets of the same queries, (out_a, lse_a) and (out_b, lse_b), into the
 * union's (out, lse) — split-KV, sequence parallelism (libattn_mpi's ring).
 * The per-row rule is osm_merge_out in kernels/softmax_impl.inc. */
#include <inttypes.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "core/internal.h"
#include "kernels/vmath.h"

#define ATTN_TMPL_FILE "kernels/merge_impl.inc"
#include "core/tmpl.h"

/* Byte range [lo, hi) a tensor's elements can reach. */
static void byte_range(const attn_tensor *t, uintptr_t *lo, uintptr_t *hi) {
  int64_t extent = 1;
  attn_tensor_extent(t, &extent); /* checked when t was made */
  *lo = (uintptr_t)t->data;
  *hi = *lo + (uintptr_t)extent * attn_dtype_size(t->dtype);
}

/* The same elements at the same addresses (shapes are equal by now; the
 * stride of a dim of size 1 is never used). */
static bool same_view(const attn_tensor *a, const attn_tensor *b) {
  if (a->data != b->data || a->rank != b->rank) return false;
  for (int32_t i = 0; i < a->rank; i++)
    if (a->shape[i] > 1 && a->strides[i] != b->strides[i]) return false;
  return true;
}

/* An output may be exactly one of the inputs (in place) or lie apart from it. */
static attn_status check_apart(attn_context *ctx, const char *oname, const attn_tensor *o,
                               const char *iname, const attn_tensor *in, bool may_alias) {
  if (in == NULL || (may_alias && same_view(o, in))) return ATTN_OK;
  uintptr_t a0, a1, b0, b1;
  byte_range(o, &a0, &a1);
  byte_range(in, &b0, &b1);
  if (a0 < b1 && b0 < a1)
    return attn_fail(ctx, ATTN_ERR_LAYOUT,
                     "%s: its memory overlaps %s's; an output must be %s itself (same data and "
                     "strides) or lie apart from it",
                     oname, iname, may_alias ? iname : "no input");
  return ATTN_OK;
}

attn_status attn_merge_states(attn_context *ctx, const attn_tensor *out_a,
                              const attn_tensor *lse_a, const attn_tensor *out_b,
                              const attn_tensor *lse_b, attn_tensor *out, attn_tensor *lse) {
  ATTN_CHECK_NULL(ctx, ctx);
  attn_clear_error(ctx);
  attn_status st;
  if (out_a == NULL) return attn_fail(ctx, ATTN_ERR_NULL_ARG, "out_a: must not be NULL");
  const attn_dtype dt = out_a->dtype;
  if (dt != ATTN_DTYPE_F32 && dt != ATTN_DTYPE_F64)
    return attn_fail(ctx, ATTN_ERR_DTYPE, "out_a: dtype %s, expected f32 or f64",
                     attn_dtype_name(dt));
  if ((st = attn_check_tensor(ctx, "out_a", out_a, 4, dt)) != ATTN_OK ||
      (st = attn_check_tensor(ctx, "lse_a", lse_a, 3, dt)) != ATTN_OK ||
      (st = attn_check_tensor(ctx, "out_b", out_b, 4, dt)) != ATTN_OK ||
      (st = attn_check_tensor(ctx, "lse_b", lse_b, 3, dt)) != ATTN_OK ||
      (st = attn_check_tensor(ctx, "out", out, 4, dt)) != ATTN_OK ||
      (lse != NULL && (st = attn_check_tensor(ctx, "lse", lse, 3, dt)) != ATTN_OK))
    return st;
  const int64_t *s = out_a->shape;
  const int64_t lwant[3] = {s[0], s[1], s[2]};
  if ((st = attn_check_dims(ctx, "lse_a", lse_a, lwant, "out_a's [B, H, S]")) != ATTN_OK ||
      (st = attn_check_dims(ctx, "out_b", out_b, s, "out_a's shape")) != ATTN_OK ||
      (st = attn_check_dims(ctx, "lse_b", lse_b, lwant, "out_a's [B, H, S]")) != ATTN_OK ||
      (st = attn_check_dims(ctx, "out", out, s, "out_a's shape")) != ATTN_OK ||
      (lse != NULL &&
       (st = attn_check_dims(ctx, "lse", lse, lwant, "out_a's [B, H, S]")) != ATTN_OK))
    return st;
  if (out->data == NULL || out_a->data == NULL || out_b->data == NULL || lse_a->data == NULL ||
      lse_b->data == NULL || (lse != NULL && lse->data == NULL))
    return attn_fail(ctx, ATTN_ERR_NULL_ARG, "%s: has no data",
                     out->data == NULL ? "out" : out_a->data == NULL ? "out_a"
                     : out_b->data == NULL ? "out_b" : lse_a->data == NULL ? "lse_a"
                     : lse_b->data == NULL ? "lse_b" : "lse");
  if ((st = attn_check_distinct(ctx, "out", out)) != ATTN_OK ||
      (lse != NULL && (st = attn_check_distinct(ctx, "lse", lse)) != ATTN_OK))
    return st;
  /* In place: out may be out_a or out_b and lse may be lse_a or lse_b;
   * nothing else may share memory with an output. */
  if ((st = check_apart(ctx, "out", out, "out_a", out_a, true)) != ATTN_OK ||
      (st = check_apart(ctx, "out", out, "out_b", out_b, true)) != ATTN_OK ||
      (st = check_apart(ctx, "out", out, "lse_a", lse_a, false)) != ATTN_OK ||
      (st = check_apart(ctx, "out", out, "lse_b", lse_b, false)) != ATTN_OK ||
      (st = check_apart(ctx, "out", out, "lse", lse, false)) != ATTN_OK)
    return st;
  if (lse != NULL &&
      ((st = check_apart(ctx, "lse", lse, "lse_a", lse_a, true)) != ATTN_OK ||
       (st = check_apart(ctx, "lse", lse, "lse_b", lse_b, true)) != ATTN_OK ||
       (st = check_apart(ctx, "lse", lse, "out_a", out_a, false)) != ATTN_OK ||
       (st = check_apart(ctx, "lse", lse, "out_b", out_b, false)) != ATTN_OK))
    return st;
  /* Every lse must be finite or −inf (a row that kept nothing): checked
   * before anything is written. */
  const bool f32 = dt == ATTN_DTYPE_F32;
  for (int side = 0; side < 2; side++) {
    const attn_tensor *l = side ? lse_b : lse_a;
    int64_t bad = 0;
    if (!(f32 ? merge_lse_ok_f32(l, &bad) : merge_lse_ok_f64(l, &bad)))
      return attn_fail(ctx, ATTN_ERR_INVALID_ARG,
                       "%s: element %" PRId64 " (row-major [B, H, S] index) is NaN or +inf; "
                       "a log-sum-exp is finite or -inf",
                       side ? "lse_b" : "lse_a", bad);
  }
  if (f32)
    merge_rows_f32(out_a, lse_a, out_b, lse_b, out, lse);
  else
    merge_rows_f64(out_a, lse_a, out_b, lse_b, out, lse);
  return ATTN_OK;
}

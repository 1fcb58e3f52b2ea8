/* Masks: causal (top-left / bottom-right), sliding window, key and query
 * lengths, bool and additive dense masks with broadcasting, ALiBi, softcap.
 * Structured kinds are answered per tile from arithmetic; only the dense
 * masks are read element by element, and only on tiles the structure keeps. */
#include <float.h>
#include <inttypes.h>
#include <math.h>
#include <string.h>

#include "kernels/vmath.h"
#include "mask/mask.h"

static attn_status bind_dense(attn_context *ctx, const char *name, const attn_tensor *t,
                              const attn_mask *m, int64_t stride[4]) {
  const int64_t want[4] = {m->B, m->H, m->Sq, m->Sk};
  static const char *const dim_names[4] = {"B", "H", "S_q", "S_k"};
  char buf[96];
  for (int i = 0; i < 4; i++) {
    if (t->shape[i] == want[i]) {
      stride[i] = t->strides[i];
    } else if (t->shape[i] == 1 && i < 2) {
      stride[i] = 0; /* broadcast over batch / heads */
    } else {
      return attn_fail(ctx, ATTN_ERR_SHAPE,
                       "%s: shape %s is not broadcastable to [B, H, S_q, S_k] = [%" PRId64
                       ",%" PRId64 ",%" PRId64 ",%" PRId64 "] (dim %s)",
                       name, attn_shape_str(t, buf, sizeof buf), m->B, m->H, m->Sq, m->Sk,
                       dim_names[i]);
    }
    if (t->shape[i] == 1) stride[i] = 0;
  }
  return ATTN_OK;
}

static attn_status check_lengths(attn_context *ctx, const char *name, const int64_t *len,
                                 int64_t n, int64_t B, int64_t limit, const char *limit_name) {
  if (len == NULL) return ATTN_OK;
  if (n != B)
    return attn_fail(ctx, ATTN_ERR_SHAPE, "%s: %" PRId64 " lengths given, batch is %" PRId64,
                     name, n, B);
  for (int64_t b = 0; b < n; b++)
    if (len[b] < 0 || len[b] > limit)
      return attn_fail(ctx, ATTN_ERR_INVALID_ARG,
                       "%s: lengths[%" PRId64 "] = %" PRId64 " is outside [0, %s = %" PRId64 "]",
                       name, b, len[b], limit_name, limit);
  return ATTN_OK;
}

attn_status attn_mask_init(attn_mask *m, struct attn_plan *plan) {
  attn_context *ctx = plan->ctx;
  const attn_desc *d = &plan->desc;
  attn_status st;
  memset(m, 0, sizeof *m);
  m->B = plan->B;
  m->H = plan->H;
  m->Sq = plan->Sq;
  m->Sk = plan->Sk;
  /* A window wider than both sequences is no window (keeps arithmetic in range). */
  m->left = d->win_left >= m->Sq + m->Sk ? ATTN_WINDOW_UNBOUNDED : d->win_left;
  m->right = d->win_right >= m->Sq + m->Sk ? ATTN_WINDOW_UNBOUNDED : d->win_right;
  if (d->causal != ATTN_CAUSAL_NONE) m->right = 0 < m->right ? 0 : m->right;
  m->banded = d->causal != ATTN_CAUSAL_NONE || m->left != ATTN_WINDOW_UNBOUNDED ||
              m->right != ATTN_WINDOW_UNBOUNDED;
  m->bottom_right = d->causal == ATTN_CAUSAL_BOTTOM_RIGHT;
  if ((st = check_lengths(ctx, "key_lengths", d->key_lengths, d->n_key_lengths, m->B, m->Sk,
                          "S_k")) != ATTN_OK)
    return st;
  if ((st = check_lengths(ctx, "query_lengths", d->query_lengths, d->n_query_lengths, m->B,
                          m->Sq, "S_q")) != ATTN_OK)
    return st;
  if (d->alibi != NULL && d->n_alibi != m->H)
    return attn_fail(ctx, ATTN_ERR_SHAPE, "alibi: %" PRId64 " slopes given, q has %" PRId64 " heads",
                     d->n_alibi, m->H);
  if (d->bool_mask != NULL &&
      (st = bind_dense(ctx, "bool_mask", d->bool_mask, m, m->bm_stride)) != ATTN_OK)
    return st;
  if (d->add_mask != NULL) {
    if (d->add_mask->dtype != plan->dtype)
      return attn_fail(ctx, ATTN_ERR_DTYPE, "additive_mask: dtype %s differs from q's %s",
                       attn_dtype_name(d->add_mask->dtype), attn_dtype_name(plan->dtype));
    if ((st = bind_dense(ctx, "additive_mask", d->add_mask, m, m->am_stride)) != ATTN_OK) return st;
  }
  m->softcap = d->softcap;
  m->max_ranges = 1;
  attn_mask_bind(m, d);
  return ATTN_OK;
}

void attn_mask_bind(attn_mask *m, const attn_desc *d) {
  m->key_len = d->key_lengths;
  m->query_len = d->query_lengths;
  m->bool_mask = d->bool_mask ? (const uint8_t *)d->bool_mask->data : NULL;
  m->add_mask = d->add_mask ? d->add_mask->data : NULL;
  m->alibi = d->alibi;
  m->has_dense = m->bool_mask != NULL || m->add_mask != NULL;
  m->has_transform = m->softcap > 0.0 || m->alibi != NULL || m->add_mask != NULL;
}

attn_status attn_mask_check(const attn_mask *m, attn_context *ctx) {
  attn_status st;
  if ((st = check_lengths(ctx, "key_lengths", m->key_len, m->B, m->B, m->Sk, "S_k")) != ATTN_OK)
    return st;
  if ((st = check_lengths(ctx, "query_lengths", m->query_len, m->B, m->B, m->Sq, "S_q")) != ATTN_OK)
    return st;
  if (m->alibi != NULL)
    for (int64_t h = 0; h < m->H; h++)
      if (!isfinite(m->alibi[h]))
        return attn_fail(ctx, ATTN_ERR_INVALID_ARG, "alibi: slopes[%" PRId64 "] = %g is not finite",
                         h, m->alibi[h]);
  return ATTN_OK;
}

/* Per-batch alignment: i' = i + offset_b. */
static inline int64_t klen(const attn_mask *m, int64_t b) { return m->key_len ? m->key_len[b] : m->Sk; }
static inline int64_t qlen(const attn_mask *m, int64_t b) { return m->query_len ? m->query_len[b] : m->Sq; }

int64_t attn_mask_offset(const attn_mask *m, int64_t b) {
  return m->bottom_right ? klen(m, b) - qlen(m, b) : 0;
}

/* Lowest / highest key index kept by aligned row ia (saturating). */
static inline int64_t band_lo(const attn_mask *m, int64_t ia) {
  if (m->left == ATTN_WINDOW_UNBOUNDED) return INT64_MIN;
  return ia - m->left;
}
static inline int64_t band_hi(const attn_mask *m, int64_t ia) {
  if (m->right == ATTN_WINDOW_UNBOUNDED) return INT64_MAX;
  return ia + m->right;
}

void attn_mask_key_range(const attn_mask *m, int64_t b, int64_t i0, int64_t i1, int64_t *j0,
                         int64_t *j1) {
  int64_t lo = 0, hi = klen(m, b);
  if (i0 >= qlen(m, b)) hi = 0;
  if (m->banded && hi > 0) {
    int64_t off = attn_mask_offset(m, b);
    int64_t last = attn_min64(i1, qlen(m, b)) - 1;
    int64_t l = band_lo(m, i0 + off), h = band_hi(m, last + off);
    if (l > lo) lo = l;
    if (h != INT64_MAX && h + 1 < hi) hi = h + 1;
  }
  if (lo >= hi) lo = hi = 0; /* empty */
  *j0 = lo;
  *j1 = hi;
}

int64_t attn_mask_key_ranges(const attn_mask *m, int64_t b, int64_t h, int64_t i0, int64_t i1,
                             int64_t *ranges) {
  (void)h;
  int64_t j0, j1;
  attn_mask_key_range(m, b, i0, i1, &j0, &j1);
  if (j0 >= j1) return 0;
  ranges[0] = j0;
  ranges[1] = j1;
  return 1;
}

attn_tile_class attn_mask_classify(const attn_mask *m, int64_t b, int64_t h, int64_t i0,
                                   int64_t i1, int64_t j0, int64_t j1) {
  (void)h;
  int64_t ql = qlen(m, b), kl = klen(m, b);
  if (i0 >= ql || j0 >= kl) return ATTN_TILE_SKIP;
  bool full = i1 <= ql && j1 <= kl && !m->has_dense;
  if (m->banded) {
    int64_t off = attn_mask_offset(m, b);
    int64_t ilast = attn_min64(i1, ql) - 1;
    /* Outside the band for every row? */
    if (j0 > band_hi(m, ilast + off) || j1 - 1 < band_lo(m, i0 + off)) return ATTN_TILE_SKIP;
    /* Inside for every row: the tightest row limits. */
    if (j1 - 1 > band_hi(m, i0 + off) || j0 < band_lo(m, ilast + off)) full = false;
  }
  return full ? ATTN_TILE_FULL : ATTN_TILE_PARTIAL;
}

/* Additive values at or below −FLT_MAX (−inf included) remove the key, so a
 * −FLT_MAX mask and a −inf mask give the same result even on rows where
 * every key is masked. */
#define ATTN_MASKED_ADD (-FLT_MAX)

#define T float
#define SUFFIX f32
#define TANH_VEC(x, n) attn_vmath_get()->tanh_f32((x), (n))
#include "mask/mask_apply.inc"
#undef T
#undef SUFFIX
#undef TANH_VEC

#define T double
#define SUFFIX f64
#define TANH_VEC(x, n) attn_tanh_f64((x), (n))
#include "mask/mask_apply.inc"
#undef T
#undef SUFFIX
#undef TANH_VEC

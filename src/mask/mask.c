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

attn_mask_geom attn_mask_geom_of(const attn_desc *d, attn_dtype dtype, int64_t B, int64_t H,
                                 int64_t Sq, int64_t Sk) {
  /* Scores are in the compute type: f32 for 16-bit storage (so an additive
   * mask of a bf16/f16 plan is f32). */
  attn_mask_geom g = {attn_dtype_compute(dtype), B, H, Sq, Sk, d->mask.causal != ATTN_CAUSAL_NONE,
                      d->mask.causal == ATTN_CAUSAL_BOTTOM_RIGHT};
  return g;
}

attn_status attn_mask_init(attn_mask *m, attn_context *ctx, const attn_desc *desc,
                           const attn_mask_geom *g) {
  const struct attn_desc_mask *d = &desc->mask;
  attn_status st;
  memset(m, 0, sizeof *m);
  m->B = g->B;
  m->H = g->H;
  m->Sq = g->Sq;
  m->Sk = g->Sk;
  m->dtype = g->dtype;
  /* A window wider than both sequences is no window (keeps arithmetic in
   * range; the sum cannot overflow: shapes and positions stay below 2^62). */
  const int64_t span = m->Sq + m->Sk;
  m->left = d->win_left >= span ? ATTN_WINDOW_UNBOUNDED : d->win_left;
  m->right = d->win_right >= span ? ATTN_WINDOW_UNBOUNDED : d->win_right;
  if (g->causal) m->right = 0 < m->right ? 0 : m->right;
  m->banded = g->causal || m->left != ATTN_WINDOW_UNBOUNDED || m->right != ATTN_WINDOW_UNBOUNDED;
  m->bottom_right = g->bottom_right;
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
    if (d->add_mask->dtype != g->dtype)
      return attn_fail(ctx, ATTN_ERR_DTYPE, "additive_mask: dtype %s, expected %s (the plan's compute type)",
                       attn_dtype_name(d->add_mask->dtype), attn_dtype_name(g->dtype));
    if ((st = bind_dense(ctx, "additive_mask", d->add_mask, m, m->am_stride)) != ATTN_OK) return st;
  }
  m->softcap = d->softcap;
  if (m->dtype == ATTN_DTYPE_F32 && m->softcap > FLT_MAX)
    return attn_fail(ctx, ATTN_ERR_INVALID_ARG, "softcap: %g exceeds the f32 range of the plan",
                     m->softcap);
  m->max_ranges = 1;
  attn_mask_bind(m, desc);
  return attn_mask_check(m, ctx); /* slopes in the plan's dtype range */
}

void attn_mask_bind(attn_mask *m, const attn_desc *desc) {
  const struct attn_desc_mask *d = &desc->mask;
  m->key_len = d->key_lengths;
  m->query_len = d->query_lengths;
  m->bool_mask = d->bool_mask ? (const uint8_t *)d->bool_mask->data : NULL;
  m->add_mask = d->add_mask ? d->add_mask->data : NULL;
  m->alibi = d->alibi;
  m->has_dense = m->bool_mask != NULL || m->add_mask != NULL;
  m->has_transform = m->softcap > 0.0 || m->alibi != NULL || m->add_mask != NULL;
  if (m->layout_from_desc && desc->block.layout != NULL)
    m->layout = (const uint8_t *)desc->block.layout->data;
}

void attn_mask_set_layout(attn_mask *m, const uint8_t *layout, int64_t block, int64_t nqb,
                          int64_t nkb, const int64_t stride[3], bool from_desc) {
  m->sparse = ATTN_SPARSE_LAYOUT;
  m->layout = layout;
  m->layout_from_desc = from_desc;
  m->block = block;
  m->lay_nqb = nqb;
  m->lay_nkb = nkb;
  for (int i = 0; i < 3; i++) m->lay_stride[i] = stride[i];
  /* Runs of kept blocks are separated by at least one dropped block. */
  m->max_ranges = attn_max64(m->max_ranges, (nkb + 1) / 2);
}

void attn_mask_set_longformer(attn_mask *m, bool causal, const int64_t *sorted, int64_t n,
                              const uint8_t *flags) {
  m->sparse = ATTN_SPARSE_LONGFORMER;
  m->lf_left = m->left;
  m->lf_right = m->right;
  m->left = ATTN_WINDOW_UNBOUNDED;
  m->right = causal ? 0 : ATTN_WINDOW_UNBOUNDED;
  m->banded = causal;
  m->globals = sorted;
  m->n_globals = n;
  m->is_global = flags;
  m->max_ranges = attn_max64(m->max_ranges, n + 1); /* the band and each global key */
}

attn_status attn_mask_check(const attn_mask *m, attn_context *ctx) {
  attn_status st;
  if ((st = check_lengths(ctx, "key_lengths", m->key_len, m->B, m->B, m->Sk, "S_k")) != ATTN_OK)
    return st;
  if ((st = check_lengths(ctx, "query_lengths", m->query_len, m->B, m->B, m->Sq, "S_q")) != ATTN_OK)
    return st;
  /* Slopes are applied in the scores' dtype: an f32 plan needs |slope| ≤ FLT_MAX. */
  const double lim = m->dtype == ATTN_DTYPE_F32 ? FLT_MAX : DBL_MAX;
  if (m->alibi != NULL)
    for (int64_t h = 0; h < m->H; h++)
      if (!(fabs(m->alibi[h]) <= lim))
        return attn_fail(ctx, ATTN_ERR_INVALID_ARG,
                         "alibi: slopes[%" PRId64 "] = %g is not finite in the plan's dtype %s", h,
                         m->alibi[h], attn_dtype_name(m->dtype));
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

/* ---- sparse structure ------------------------------------------------------ */

/* Longformer's local band for aligned row ia (saturating). */
static inline int64_t lf_lo(const attn_mask *m, int64_t ia) {
  return m->lf_left == ATTN_WINDOW_UNBOUNDED ? INT64_MIN : ia - m->lf_left;
}
static inline int64_t lf_hi(const attn_mask *m, int64_t ia) {
  return m->lf_right == ATTN_WINDOW_UNBOUNDED ? INT64_MAX : ia + m->lf_right;
}

/* Index of the first global token ≥ x. */
static int64_t globals_lower_bound(const attn_mask *m, int64_t x) {
  int64_t lo = 0, hi = m->n_globals;
  while (lo < hi) {
    int64_t mid = lo + (hi - lo) / 2;
    if (m->globals[mid] < x)
      lo = mid + 1;
    else
      hi = mid;
  }
  return lo;
}

/* Number of global tokens in [x0, x1). */
static int64_t globals_in(const attn_mask *m, int64_t x0, int64_t x1) {
  if (x0 >= x1) return 0;
  return globals_lower_bound(m, x1) - globals_lower_bound(m, x0);
}

static inline const uint8_t *layout_row(const attn_mask *m, int64_t h, int64_t r) {
  return m->layout + h * m->lay_stride[0] + r * m->lay_stride[1];
}

/* Runs of key blocks kept by any of the layout rows of [i0, ilast], clipped to [j0, j1). */
static int64_t layout_ranges(const attn_mask *m, int64_t h, int64_t i0, int64_t ilast, int64_t j0,
                             int64_t j1, int64_t *ranges) {
  const int64_t bs = m->block, s2 = m->lay_stride[2];
  const int64_t r0 = i0 / bs, r1 = ilast / bs;
  int64_t n = 0;
  bool open = false;
  for (int64_t c = j0 / bs; c <= (j1 - 1) / bs; c++) {
    bool kept = false;
    for (int64_t r = r0; r <= r1 && !kept; r++) kept = layout_row(m, h, r)[c * s2] != 0;
    if (kept && !open) {
      ranges[2 * n] = attn_max64(c * bs, j0);
      open = true;
    } else if (!kept && open) {
      ranges[2 * n + 1] = c * bs;
      n++;
      open = false;
    }
  }
  if (open) ranges[2 * n++ + 1] = j1;
  return n;
}

/* Keys closer than this to the previous range join it (masked element-wise):
 * fewer, larger GEMMs for scattered global keys. */
#define LF_MERGE_GAP 16

static int64_t lf_emit(int64_t *ranges, int64_t n, int64_t s, int64_t e) {
  if (n > 0 && s <= ranges[2 * n - 1] + LF_MERGE_GAP) {
    if (e > ranges[2 * n - 1]) ranges[2 * n - 1] = e;
    return n;
  }
  ranges[2 * n] = s;
  ranges[2 * n + 1] = e;
  return n + 1;
}

/* Longformer: a block holding a global row sees all of [j0, j1); otherwise
 * the rows' local band plus the global keys, ascending and merged. */
static int64_t longformer_ranges(const attn_mask *m, int64_t b, int64_t i0, int64_t ilast,
                                 int64_t j0, int64_t j1, int64_t *ranges) {
  if (globals_in(m, i0, ilast + 1) > 0) {
    ranges[0] = j0;
    ranges[1] = j1;
    return 1;
  }
  const int64_t off = attn_mask_offset(m, b);
  int64_t lo = attn_max64(j0, lf_lo(m, i0 + off));
  int64_t hi = lf_hi(m, ilast + off);
  hi = hi >= j1 - 1 ? j1 : attn_max64(hi + 1, j0);
  bool local = lo < hi;
  int64_t n = 0;
  for (int64_t g = globals_lower_bound(m, j0); g < m->n_globals && m->globals[g] < j1; g++) {
    int64_t j = m->globals[g];
    if (local && lo <= j) {
      n = lf_emit(ranges, n, lo, hi);
      local = false;
    }
    n = lf_emit(ranges, n, j, j + 1);
  }
  if (local) n = lf_emit(ranges, n, lo, hi);
  return n;
}

int64_t attn_mask_key_ranges(const attn_mask *m, int64_t b, int64_t h, int64_t i0, int64_t i1,
                             int64_t *ranges) {
  int64_t j0, j1;
  attn_mask_key_range(m, b, i0, i1, &j0, &j1);
  if (j0 >= j1) return 0;
  const int64_t ilast = attn_min64(i1, qlen(m, b)) - 1; /* i0 < qlen: the range is not empty */
  if (m->sparse == ATTN_SPARSE_LAYOUT) return layout_ranges(m, h, i0, ilast, j0, j1, ranges);
  if (m->sparse == ATTN_SPARSE_LONGFORMER) return longformer_ranges(m, b, i0, ilast, j0, j1, ranges);
  ranges[0] = j0;
  ranges[1] = j1;
  return 1;
}

/* Refine cls (not SKIP) by the sparse structure over rows [i0, ie) × keys [j0, je). */
static attn_tile_class sparse_classify(const attn_mask *m, int64_t b, int64_t h, int64_t i0,
                                       int64_t ie, int64_t j0, int64_t je, attn_tile_class cls) {
  if (m->sparse == ATTN_SPARSE_LAYOUT) {
    const int64_t bs = m->block, s2 = m->lay_stride[2];
    int64_t kept = 0, total = 0;
    for (int64_t r = i0 / bs; r <= (ie - 1) / bs; r++) {
      const uint8_t *row = layout_row(m, h, r);
      for (int64_t c = j0 / bs; c <= (je - 1) / bs; c++, total++) kept += row[c * s2] != 0;
    }
    return kept == 0 ? ATTN_TILE_SKIP : kept == total ? cls : ATTN_TILE_PARTIAL;
  }
  /* Longformer */
  const int64_t grows = globals_in(m, i0, ie), gcols = globals_in(m, j0, je);
  if (grows == ie - i0 || gcols == je - j0) return cls;
  const int64_t off = attn_mask_offset(m, b);
  if (je - 1 <= lf_hi(m, i0 + off) && j0 >= lf_lo(m, ie - 1 + off)) return cls;
  if (grows == 0 && gcols == 0 && (j0 > lf_hi(m, ie - 1 + off) || je - 1 < lf_lo(m, i0 + off)))
    return ATTN_TILE_SKIP;
  return ATTN_TILE_PARTIAL;
}

attn_tile_class attn_mask_classify(const attn_mask *m, int64_t b, int64_t h, int64_t i0,
                                   int64_t i1, int64_t j0, int64_t j1) {
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
  attn_tile_class cls = full ? ATTN_TILE_FULL : ATTN_TILE_PARTIAL;
  if (m->sparse != ATTN_SPARSE_NONE)
    cls = sparse_classify(m, b, h, i0, attn_min64(i1, ql), j0, attn_min64(j1, kl), cls);
  return cls;
}

/* Additive values at or below −FLT_MAX (−inf included) remove the key, so a
 * −FLT_MAX mask and a −inf mask give the same result even on rows where
 * every key is masked. */
#define ATTN_MASKED_ADD (-FLT_MAX)

#define ATTN_TMPL_FILE "mask/mask_apply.inc"
#include "core/tmpl.h"

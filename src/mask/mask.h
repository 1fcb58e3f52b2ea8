/* The mask module: one resolved description of which keys a query keeps and
 * what is added to its scores. Every kernel (exact, KV cache, window, sparse)
 * asks it per tile instead of building a dense S_q×S_k mask. */
#ifndef ATTN_MASK_H
#define ATTN_MASK_H

#include "core/internal.h"

typedef enum attn_tile_class {
  ATTN_TILE_SKIP = 0,    /* every (i, j) in the tile is masked out */
  ATTN_TILE_FULL = 1,    /* every (i, j) is kept (transforms may still apply) */
  ATTN_TILE_PARTIAL = 2  /* mixed: apply the mask element-wise */
} attn_tile_class;

/* Sparse structure kept on top of the band, lengths and dense masks:
 * keep(i, j) = (everything above) ∧ sparse(i, j). */
typedef enum attn_sparse_kind {
  ATTN_SPARSE_NONE = 0,
  ATTN_SPARSE_LAYOUT = 1,    /* layout[h][i / block][j / block] != 0 (BigBird, block-sparse) */
  ATTN_SPARSE_LONGFORMER = 2 /* local band(i', j) ∨ global(i) ∨ global(j) */
} attn_sparse_kind;

typedef struct attn_mask {
  int64_t B, H, Sq, Sk;
  attn_dtype dtype; /* of the scores: slopes and softcap must fit it */
  /* Structured band in aligned coordinates: keep j with
   *   i' − left ≤ j ≤ i' + right   (causal folded in: right ≤ 0), where
   * i' = i + attn_mask_offset(b). With BOTTOM_RIGHT and key/query lengths the
   * alignment is per batch item (the ends of the valid ranges line up). */
  bool bottom_right; /* offset_b = key_len_b − query_len_b, else 0 */
  bool banded;
  int64_t left, right; /* ≥ 0; ATTN_WINDOW_UNBOUNDED = none */
  const int64_t *key_len;   /* [B] or NULL */
  const int64_t *query_len; /* [B] or NULL */
  /* Dense masks with broadcast strides (0 on broadcast dims). */
  const uint8_t *bool_mask;
  const void *add_mask; /* plan dtype */
  int64_t bm_stride[4], am_stride[4];
  /* Transforms. */
  const double *alibi; /* [H] or NULL */
  double softcap;      /* 0 = off */
  bool has_transform;  /* softcap, ALiBi or additive mask: every tile needs apply() */
  bool has_dense;      /* bool or additive mask: no tile is FULL */
  /* Most key ranges attn_mask_key_ranges() can return (1 for the structured
   * kinds; sparse layouts raise it). Kernels size a per-thread buffer by it. */
  int64_t max_ranges;
  /* Sparse structure (set by attn_mask_set_layout / attn_mask_set_longformer). */
  attn_sparse_kind sparse;
  const uint8_t *layout;     /* U8 [heads][⌈S_q/block⌉][⌈S_k/block⌉] */
  bool layout_from_desc;     /* re-read desc->layout's data at bind (user layout) */
  int64_t block, lay_nqb, lay_nkb;
  int64_t lay_stride[3];     /* element strides; [0] is 0 for a layout shared by heads */
  int64_t lf_left, lf_right; /* Longformer local band (aligned; causal folded in) */
  const int64_t *globals;    /* sorted global token indices */
  int64_t n_globals;
  const uint8_t *is_global;  /* [S] flags */
} attn_mask;

/* What the mask is resolved against: the scores' dtype and shape, and how
 * query rows align with keys. */
typedef struct attn_mask_geom {
  attn_dtype dtype; /* of the scores: slopes and softcap must fit it */
  int64_t B, H, Sq, Sk;
  bool causal;       /* keep j ≤ i' (folded into the band) */
  bool bottom_right; /* i' = i + (key_len_b − query_len_b), else i' = i */
} attn_mask_geom;

/* The geometry of a plan over [B, H, S_q, ·] × [·, ·, S_k, ·] scores with
 * the descriptor's causal setting. */
attn_mask_geom attn_mask_geom_of(const attn_desc *d, attn_dtype dtype, int64_t B, int64_t H,
                                 int64_t Sq, int64_t Sk);

/* Resolve the descriptor's mask options (d->mask; validates and names the
 * bad argument) for geometry g. Dense masks must have g's dtype (additive)
 * or U8 (bool), rank 4, dims equal or 1. */
attn_status attn_mask_init(attn_mask *m, attn_context *ctx, const attn_desc *d,
                           const attn_mask_geom *g);

/* Restrict an initialised mask to a block layout (U8, element strides
 * stride[0..2], stride[0] = 0 when shared by heads) of nqb × nkb blocks of
 * `block` tokens. from_desc: the layout is the descriptor's (borrowed, its
 * data re-read at every bind). Raises max_ranges. */
void attn_mask_set_layout(attn_mask *m, const uint8_t *layout, int64_t block, int64_t nqb,
                          int64_t nkb, const int64_t stride[3], bool from_desc);

/* Turn an initialised mask (S_q = S_k) into Longformer's: the window it was
 * initialised with becomes the local band, the band proper keeps only the
 * causal limit (causal: whether the descriptor is causal), and the n sorted,
 * distinct global indices (with their [S] flags; both borrowed, plan-owned)
 * are added: global rows keep every key, every row keeps global keys.
 * Raises max_ranges. */
void attn_mask_set_longformer(attn_mask *m, bool causal, const int64_t *sorted, int64_t n,
                              const uint8_t *flags);

/* Point a copy of a plan's mask at the descriptor's borrowed arrays for one
 * execute (their data may move between executes). Kernels bind a local copy:
 * the plan's own mask is never written after plan creation. */
void attn_mask_bind(attn_mask *m, const attn_desc *desc);

/* Re-check the borrowed arrays' contents after attn_mask_bind(): the caller
 * may change lengths and slopes between executes, and a key length past S_k
 * would make kernels read beyond K and V. Call before writing any output;
 * ATTN_ERR_INVALID_ARG names the array. O(B + H). */
attn_status attn_mask_check(const attn_mask *m, attn_context *ctx);

/* Alignment offset of batch item b: aligned position i' = i + offset. */
int64_t attn_mask_offset(const attn_mask *m, int64_t b);

/* Range [*j0, *j1) of keys that rows [i0, i1) of batch b can keep at most
 * (band and key length). Empty: *j0 >= *j1. */
void attn_mask_key_range(const attn_mask *m, int64_t b, int64_t i0, int64_t i1, int64_t *j0,
                         int64_t *j1);

/* The key ranges rows [i0, i1) of (b, h) may keep, ascending and disjoint,
 * as pairs ranges[2r] = start, ranges[2r+1] = end (exclusive); returns the
 * count (≤ m->max_ranges). Kernels visit only these keys, so sparse layouts
 * cost O(kept keys). */
int64_t attn_mask_key_ranges(const attn_mask *m, int64_t b, int64_t h, int64_t i0, int64_t i1,
                             int64_t *ranges);

/* Classify the tile rows [i0, i1) × keys [j0, j1). */
attn_tile_class attn_mask_classify(const attn_mask *m, int64_t b, int64_t h, int64_t i0,
                                   int64_t i1, int64_t j0, int64_t j1);

/* Apply transforms (softcap, ALiBi, additive) and, when cls is PARTIAL, the
 * masking (−inf) to the score tile S (ni × nj, row stride lds) holding rows
 * i0.. and keys j0... */
void attn_mask_apply_f32(const attn_mask *m, attn_tile_class cls, int64_t b, int64_t h,
                         int64_t i0, int64_t ni, int64_t j0, int64_t nj, float *S, int64_t lds);
void attn_mask_apply_f64(const attn_mask *m, attn_tile_class cls, int64_t b, int64_t h,
                         int64_t i0, int64_t ni, int64_t j0, int64_t nj, double *S, int64_t lds);

#endif /* ATTN_MASK_H */

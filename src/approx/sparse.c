/* Sparse attention on the exact kernel: Longformer (local band + global
 * tokens), BigBird (window, global and seeded random blocks) and block-sparse
 * (a user layout). The plan extends the exact kernel's mask with the sparse
 * structure, so the kernel visits only the kept key runs of each query block
 * (cost O(kept keys), not O(S_q·S_k)), computes those tiles with GEMMs and
 * masks element-wise only where a tile is partial. */
#include <inttypes.h>
#include <string.h>

#include "kernels/exact.h"

typedef struct sparse_impl {
  attn_exact ex;   /* first: the exact kernel reads plan->impl as an attn_exact */
  int64_t block, nqb, nkb;
  uint8_t *layout; /* BigBird: [H][nqb][nkb], plan-owned */
  size_t layout_bytes;
  int64_t *globals; /* Longformer: sorted copy of the global indices */
  size_t globals_bytes;
  uint8_t *flags; /* Longformer: [S] global flags */
  size_t flags_bytes;
} sparse_impl;

/* ---- BigBird's random blocks: splitmix64, documented in approx.h ---------- */

static uint64_t mix64(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
  return z ^ (z >> 31);
}

static uint64_t splitmix64_next(uint64_t *s) {
  *s += 0x9E3779B97F4A7C15ULL;
  return mix64(*s);
}

/* Uniform in [0, n), n ≥ 1, by rejection (no modulo bias). */
static uint64_t draw_below(uint64_t *s, uint64_t n) {
  const uint64_t threshold = (0 - n) % n; /* 2^64 mod n */
  uint64_t u;
  do u = splitmix64_next(s);
  while (u < threshold);
  return u % n;
}

static void bigbird_layout(uint8_t *lay, int64_t H, int64_t nqb, int64_t nkb, int64_t w,
                           int64_t g, int64_t r, uint64_t seed) {
  for (int64_t h = 0; h < H; h++)
    for (int64_t row = 0; row < nqb; row++) {
      uint8_t *L = lay + (h * nqb + row) * nkb;
      if (row < g) { /* a global query block sees everything */
        memset(L, 1, (size_t)nkb);
        continue;
      }
      memset(L, 0, (size_t)nkb);
      for (int64_t c = 0; c < g; c++) L[c] = 1;
      for (int64_t c = attn_max64(0, row - w); c <= row + w && c < nkb; c++) L[c] = 1;
      int64_t avail = 0;
      for (int64_t c = 0; c < nkb; c++) avail += L[c] == 0;
      uint64_t s = mix64(seed ^ mix64((uint64_t)(h * nqb + row) + 1));
      for (int64_t t = 0; t < r && avail > 0; t++, avail--) {
        int64_t kth = (int64_t)draw_below(&s, (uint64_t)avail);
        for (int64_t c = 0; c < nkb; c++)
          if (L[c] == 0 && kth-- == 0) {
            L[c] = 1;
            break;
          }
      }
    }
}

/* ---- block layout readback ------------------------------------------------ */

static attn_status check_buf(const attn_plan *p, uint8_t *buf, size_t *size, size_t *need) {
  const sparse_impl *im = p->impl;
  int64_t dims[3] = {p->dims.H, im->nqb, im->nkb};
  if (!attn_bytes_ok(dims, 3, 1, need))
    return attn_fail(p->ctx, ATTN_ERR_OVERFLOW, "size: the layout's byte count overflows");
  if (buf == NULL || *size < *need) {
    size_t given = *size;
    *size = *need;
    if (buf == NULL && given == 0) return ATTN_OK; /* a size query */
    return attn_fail(p->ctx, buf == NULL ? ATTN_ERR_NULL_ARG : ATTN_ERR_INVALID_ARG,
                     "%s: %zu bytes given, the layout [H, ceil(S_q/b), ceil(S_k/b)] needs %zu",
                     buf == NULL ? "buf" : "size", given, *need);
  }
  *size = *need;
  return ATTN_OK;
}

static attn_status layout_readback(const attn_plan *p, uint8_t *buf, size_t *size) {
  const sparse_impl *im = p->impl;
  size_t need;
  attn_status st = check_buf(p, buf, size, &need);
  if (st != ATTN_OK || buf == NULL) return st;
  const attn_mask *m = &im->ex.mask;
  for (int64_t h = 0; h < p->dims.H; h++)
    for (int64_t r = 0; r < im->nqb; r++) {
      const uint8_t *row = m->layout + h * m->lay_stride[0] + r * m->lay_stride[1];
      uint8_t *dst = buf + (h * im->nqb + r) * im->nkb;
      for (int64_t c = 0; c < im->nkb; c++) dst[c] = row[c * m->lay_stride[2]] != 0;
    }
  return ATTN_OK;
}

/* Longformer's blocked form: block (r, c) is 1 when some (i, j) in it is kept
 * by the structure (band, globals, causal; lengths and dense masks ignored). */
static attn_status longformer_readback(const attn_plan *p, uint8_t *buf, size_t *size) {
  const sparse_impl *im = p->impl;
  size_t need;
  attn_status st = check_buf(p, buf, size, &need);
  if (st != ATTN_OK || buf == NULL) return st;
  const attn_mask *m = &im->ex.mask;
  const int64_t bs = im->block, S = p->dims.Sq;
  const bool causal = p->desc.mask.causal != ATTN_CAUSAL_NONE; /* S_q = S_k: offset 0 */
  for (int64_t r = 0; r < im->nqb; r++) {
    const int64_t a0 = r * bs, a1 = attn_min64(S, a0 + bs);
    /* Largest global row in [a0, a1), or −1. */
    int64_t grow = -1;
    for (int64_t g = 0; g < m->n_globals; g++)
      if (m->globals[g] >= a0 && m->globals[g] < a1) grow = m->globals[g];
    for (int64_t c = 0; c < im->nkb; c++) {
      const int64_t c0 = c * bs, c1 = attn_min64(S, c0 + bs);
      int64_t gcol = -1; /* smallest global key in [c0, c1), or −1 */
      for (int64_t g = 0; g < m->n_globals && gcol < 0; g++)
        if (m->globals[g] >= c0 && m->globals[g] < c1) gcol = m->globals[g];
      bool kept = false;
      if (!causal || c0 <= a1 - 1) {
        bool lo_ok = m->lf_left == ATTN_WINDOW_UNBOUNDED || c1 - 1 >= a0 - m->lf_left;
        bool hi_ok = m->lf_right == ATTN_WINDOW_UNBOUNDED || c0 <= a1 - 1 + m->lf_right;
        kept = lo_ok && hi_ok;
        if (grow >= 0 && (!causal || c0 <= grow)) kept = true;
        if (gcol >= 0 && (!causal || gcol <= a1 - 1)) kept = true;
      }
      for (int64_t h = 0; h < p->dims.H; h++) buf[(h * im->nqb + r) * im->nkb + c] = kept;
    }
  }
  return ATTN_OK;
}

void attn_sparse_plan_destroy(attn_plan *p) {
  sparse_impl *im = p->impl;
  if (im == NULL) return;
  attn_free(p->ctx, im->layout, im->layout_bytes);
  attn_free(p->ctx, im->globals, im->globals_bytes);
  attn_free(p->ctx, im->flags, im->flags_bytes);
}

attn_status attn_sparse_block_layout(const attn_plan *p, uint8_t *buf, size_t *size) {
  return p->desc.variant == ATTN_VARIANT_LONGFORMER ? longformer_readback(p, buf, size)
                                                    : layout_readback(p, buf, size);
}

/* ---- plan ------------------------------------------------------------------ */

/* Query tile for a layout of block bs: one layout row per tile (tiles of at
 * least 16 rows for tiny blocks), the default tile for huge blocks. */
static int64_t layout_bq(int64_t bs) {
  if (bs > 256) return 0;
  return bs >= 16 ? bs : bs * attn_cdiv64(16, bs);
}

/* The exact kernel on the sparse mask, with query tiles of bq rows (0: default). */
static attn_status prepare(attn_plan *p, sparse_impl *im, int64_t bq, int64_t bk) {
  attn_status st = attn_exact_setup(&im->ex, p->ctx, &p->desc, &p->dims, p->scale, bq, bk);
  p->ws_shared = im->ex.shared_bytes;
  p->ws_slot = im->ex.slot_bytes;
  return st;
}

static attn_status init_longformer(attn_plan *p, sparse_impl *im) {
  attn_context *ctx = p->ctx;
  const attn_desc *d = &p->desc;
  if (p->dims.Sq != p->dims.Sk)
    return attn_fail(ctx, ATTN_ERR_SHAPE,
                     "k: Longformer needs S_q = S_k (token positions), got S_q = %" PRId64
                     ", S_k = %" PRId64, p->dims.Sq, p->dims.Sk);
  if (d->mask.win_left == ATTN_WINDOW_UNBOUNDED && d->mask.win_right == ATTN_WINDOW_UNBOUNDED)
    return attn_fail(ctx, ATTN_ERR_INVALID_ARG,
                     "window: Longformer needs a local band; call attn_desc_set_window()");
  if (d->mask.win_left == 0 && d->mask.win_right == 0)
    return attn_fail(ctx, ATTN_ERR_INVALID_ARG,
                     "window: Longformer's local band (left 0, right 0) must be >= 1 wide");
  const int64_t S = p->dims.Sq, n = d->global.n;
  for (int64_t g = 0; g < n; g++)
    if (d->global.idx[g] < 0 || d->global.idx[g] >= S)
      return attn_fail(ctx, ATTN_ERR_INVALID_ARG,
                       "global_tokens: indices[%" PRId64 "] = %" PRId64 " is not in [0, S = %" PRId64
                       ")", g, d->global.idx[g], S);
  im->flags_bytes = (size_t)S;
  im->flags = attn_calloc(ctx, im->flags_bytes);
  if (n > 0) {
    im->globals_bytes = (size_t)n * sizeof(int64_t);
    im->globals = attn_alloc(ctx, im->globals_bytes);
  }
  if (im->flags == NULL || (n > 0 && im->globals == NULL))
    return attn_fail(ctx, ATTN_ERR_NO_MEMORY, "attn_plan_create: out of memory");
  for (int64_t g = 0; g < n; g++) {
    int64_t idx = d->global.idx[g];
    if (im->flags[idx])
      return attn_fail(ctx, ATTN_ERR_INVALID_ARG,
                       "global_tokens: indices[%" PRId64 "] = %" PRId64 " is repeated", g, idx);
    im->flags[idx] = 1;
  }
  int64_t k = 0;
  for (int64_t i = 0; i < S; i++)
    if (im->flags[i]) im->globals[k++] = i;
  attn_mask_set_longformer(&im->ex.mask, d->mask.causal != ATTN_CAUSAL_NONE, im->globals, n, im->flags);
  /* A query tile holding a global row visits every key, so all its rows pay
   * O(S): small query tiles bound that waste. Measured at S=16384, w=256 with
   * 4 spread globals: 256-row tiles 7.0x faster than exact, 64-row 13.5x. */
  return prepare(p, im, 64, 0);
}

static attn_status init_bigbird(attn_plan *p, sparse_impl *im) {
  attn_context *ctx = p->ctx;
  const attn_desc *d = &p->desc;
  if (d->block.global > im->nkb || d->block.global > im->nqb)
    return attn_fail(ctx, ATTN_ERR_INVALID_ARG,
                     "global_blocks: %" PRId64 " exceeds the %" PRId64 " query / %" PRId64
                     " key blocks of %" PRId64 " tokens",
                     d->block.global, im->nqb, im->nkb, im->block);
  int64_t dims[3] = {p->dims.H, im->nqb, im->nkb};
  if (!attn_bytes_ok(dims, 3, 1, &im->layout_bytes))
    return attn_fail(ctx, ATTN_ERR_OVERFLOW, "block: the layout [H, S_q/b, S_k/b] overflows");
  im->layout = attn_alloc(ctx, im->layout_bytes);
  if (im->layout == NULL)
    return attn_fail(ctx, ATTN_ERR_NO_MEMORY, "attn_plan_create: cannot allocate the %zu-byte layout",
                     im->layout_bytes);
  bigbird_layout(im->layout, p->dims.H, im->nqb, im->nkb, attn_min64(d->block.window, im->nkb),
                 d->block.global, d->block.random, d->block.seed);
  const int64_t stride[3] = {im->nqb * im->nkb, im->nkb, 1};
  attn_mask_set_layout(&im->ex.mask, im->layout, im->block, im->nqb, im->nkb, stride, false);
  return prepare(p, im, layout_bq(im->block), 0);
}

static attn_status init_blocksparse(attn_plan *p, sparse_impl *im) {
  attn_context *ctx = p->ctx;
  const attn_tensor *t = p->desc.block.layout;
  char buf[96];
  if (t == NULL)
    return attn_fail(ctx, ATTN_ERR_NULL_ARG,
                     "layout: ATTN_VARIANT_BLOCK_SPARSE needs attn_desc_set_block_layout()");
  attn_status st = attn_check_tensor(ctx, "layout", t, 3, ATTN_DTYPE_U8);
  if (st != ATTN_OK) return st;
  if ((t->shape[0] != 1 && t->shape[0] != p->dims.H) || t->shape[1] != im->nqb ||
      t->shape[2] != im->nkb)
    return attn_fail(ctx, ATTN_ERR_SHAPE,
                     "layout: shape %s does not match [H or 1, ceil(S_q/b), ceil(S_k/b)] = "
                     "[%" PRId64 " or 1,%" PRId64 ",%" PRId64 "] for block b = %" PRId64,
                     attn_shape_str(t, buf, sizeof buf), p->dims.H, im->nqb, im->nkb, im->block);
  const int64_t stride[3] = {t->shape[0] == 1 ? 0 : t->strides[0], t->strides[1], t->strides[2]};
  attn_mask_set_layout(&im->ex.mask, (const uint8_t *)t->data, im->block, im->nqb, im->nkb,
                       stride, true);
  return prepare(p, im, layout_bq(im->block), 0);
}

attn_status attn_sparse_plan_init(attn_plan *p) {
  attn_context *ctx = p->ctx;
  sparse_impl *im = attn_plan_impl_alloc(p, sizeof *im);
  if (im == NULL) return ATTN_ERR_NO_MEMORY;
  const attn_dims *d = &p->dims;
  im->block = p->desc.block.size;
  im->nqb = attn_cdiv64(d->Sq, im->block);
  im->nkb = attn_cdiv64(d->Sk, im->block);
  const attn_mask_geom g = attn_mask_geom_of(&p->desc, d->dtype, d->B, d->H, d->Sq, d->Sk);
  attn_status st = attn_mask_init(&im->ex.mask, ctx, &p->desc, &g);
  if (st != ATTN_OK) return st;
  switch (p->desc.variant) {
    case ATTN_VARIANT_LONGFORMER: return init_longformer(p, im);
    case ATTN_VARIANT_BIGBIRD: return init_bigbird(p, im);
    default: return init_blocksparse(p, im);
  }
}

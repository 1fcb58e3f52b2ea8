/* The exact attention kernel, shared by the exact plan and the modules that
 * reduce to it (sparse variants, Linformer, the multi-head layer). It owns no
 * memory: a caller embeds an attn_exact in its plan state, initialises its
 * mask, calls attn_exact_setup() (which sizes the kernel's workspace), and
 * runs it on a bound copy of the mask and a workspace per execute. */
#ifndef ATTN_EXACT_H
#define ATTN_EXACT_H

#include "core/internal.h"
#include "kernels/tile.h"
#include "mask/mask.h"

typedef struct attn_exact {
  attn_mask mask;      /* resolved at plan time; executes bind a copy */
  int64_t bq, bk;      /* tile sizes */
  int64_t nqb;         /* query blocks */
  int64_t gs;          /* query heads stacked per task (GQA group, or 1) */
  attn_dims dims;
  double scale;
  attn_score score;
  const attn_tensor *general_w;            /* borrowed from the descriptor */
  const attn_tensor *wq, *wk, *av, *abias; /* additive (borrowed) */
  int64_t qx_cols;     /* columns of the projected-query scratch (d_k or A, or 0) */
  int64_t A;           /* additive score: attention dim (0 otherwise) */
  int64_t add_kc;      /* additive: keys per tanh chunk (scratch kc × A per thread) */
  /* The tile engine of the two GEMMs (NULL: BLAS on the tensors; always
   * set for 16-bit storage), chosen at plan time (kernels/tile.h). */
  const attn_tile_engine *eng;
  /* Packed once per execute (panel engines, unbanded-left masks, several
   * query blocks): every head's K and V in the engine's panel layout in the
   * shared workspace, so query blocks read slices instead of each packing
   * the same tiles again. */
  bool prepack;
  int64_t nkt;                /* key tiles per head (prepack tasks per head) */
  int64_t pk_head, pv_head;   /* elements of one head's packed K, V */
  size_t pk_at, pv_at;        /* in the shared workspace */
  /* Workspace, as byte offsets: a thread's slot holds the tiles, the shared
   * area (additive only) K·W_kᵀ [B, H_kv, S_k, A] then v [A], bias [A]. */
  struct {
    size_t S, O, M, L, QS, QX, Vz, X, ranges, MT, TJ;
    size_t Qp, Kp, Vp, Pb, Ob; /* tile engine: packed Q, K, V; P in bf16; an out row */
  } at;
  /* Serving options, borrowed from the descriptor at setup. */
  const double *sinks;        /* [H] sink logits or NULL (checked at every run) */
  attn_tensor *mass;          /* per-key mass [B, H or H_kv, S_k] or NULL */
  bool mass_grouped;          /* mass rows per KV head (summed over its group) */
  int64_t mass_tiles;         /* mass: most key tiles a row block keeps */
  int64_t mass_tile;          /* mass: elements of one kept tile's S (rq × bk) */
  int64_t nseq;               /* packed batch: sequences (0: a padded batch) */
  const int64_t *q_off, *k_off; /* packed batch: offsets [nseq + 1] */
  int64_t vl_nlev;            /* packed batch: most row blocks of one sequence */
  struct {
    size_t qlen, klen, blk, lev; /* packed batch, in the shared area */
  } vl_at;
  size_t slot_bytes;
  size_t kp_at, vb_at, shared_bytes;
} attn_exact;

/* Tile sizes for head dims (exposed for the bench and tests):
 * chosen so a thread's tiles stay in L2. */
void attn_exact_tiles(int64_t Sq, int64_t Sk, int64_t Dk, int64_t Dv, int64_t *bq, int64_t *bk);

/* Check the descriptor's score options against dims, pick the tiles (bq,
 * bk > 0 override attn_exact_tiles, capped at S_q, S_k) and lay out the
 * workspace of ex, whose mask the caller initialised. Allocates nothing. */
attn_status attn_exact_setup(attn_exact *ex, attn_context *ctx, const attn_desc *desc,
                             const attn_dims *dims, double scale, int64_t bq, int64_t bk);

/* Run the kernel with a bound mask (a copy of ex->mask after
 * attn_mask_bind/attn_mask_check) on workspace ws: ws.shared holds
 * ex->shared_bytes, each slot ex->slot_bytes. */
attn_status attn_exact_run(const attn_exact *ex, attn_context *ctx, const attn_ws *ws,
                           const attn_mask *mask, const attn_tensor *q, const attn_tensor *k,
                           const attn_tensor *v, attn_tensor *out, attn_tensor *weights,
                           attn_tensor *lse);

#endif

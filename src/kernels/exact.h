/* The exact attention kernel, shared by the exact plan and the modules that
 * reduce to it (multi-head, Linformer, KV cache prefill). */
#ifndef ATTN_EXACT_H
#define ATTN_EXACT_H

#include "core/internal.h"
#include "mask/mask.h"

typedef struct attn_exact {
  attn_mask mask;
  int64_t bq, bk;      /* tile sizes */
  int64_t nqb;         /* query blocks */
  int64_t gs;          /* query heads stacked per task (GQA group, or 1) */
  int64_t qx_cols;     /* columns of the projected-query scratch (d_k or A, or 0) */
  size_t slot_elems;   /* per-thread workspace, in elements of the dtype */
  int64_t A;           /* additive score: attention dim (0 otherwise) */
  int64_t add_kc;      /* additive: keys per tanh chunk (scratch kc × A per thread) */
  size_t kp_offset;    /* additive: element offset of K·W_kᵀ [B, Hkv, S_k, A] */
  size_t vb_offset;    /* additive: element offset of v [A] then bias [A] */
} attn_exact;

/* Tile sizes for head dims (exposed for the bench and tests):
 * chosen so a thread's tiles stay in L2. */
void attn_exact_tiles(int64_t Sq, int64_t Sk, int64_t Dk, int64_t Dv, int64_t *bq, int64_t *bk);

/* For variants built on this kernel (sparse): check the score options, pick
 * the tiles (bq, bk > 0 override attn_exact_tiles, capped at S_q, S_k) and
 * allocate the plan's workspace for im, whose mask the caller initialised.
 * Sets neither plan->impl nor plan->ops; on failure allocates nothing. */
attn_status attn_exact_prepare(attn_plan *p, attn_exact *im, int64_t bq, int64_t bk);

/* The kernel's execute, for such variants' ops: plan->impl must start with
 * an attn_exact (the state attn_exact_prepare filled). */
attn_status attn_exact_execute(attn_plan *p, const attn_tensor *q, const attn_tensor *k,
                               const attn_tensor *v, attn_tensor *out, attn_tensor *weights,
                               attn_tensor *lse);

#endif

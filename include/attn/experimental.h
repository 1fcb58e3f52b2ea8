/*
 * libattn — the experimental API.
 *
 * What is stable: every declaration in attn.h, approx.h, heads.h and
 * kvcache.h. Its symbols are versioned (src/attn.map: ATTN_0.1, ATTN_0.2, …),
 * never removed or changed within a major version, and abidiff checks that
 * against the committed baseline abi/attn.abi on every CI run.
 *
 * What is experimental: the declarations below. They work, are tested and
 * are exported, but their shape may still change in a minor release (zstd's
 * ZSTD_STATIC_LINKING_ONLY discipline). They are visible only when you
 * define ATTN_EXPERIMENTAL before including <attn/attn.h>, so using them is
 * a visible decision; the ABI check ignores them (abi/experimental.supp).
 */
#ifndef ATTN_EXPERIMENTAL_H
#define ATTN_EXPERIMENTAL_H

#include "attn/attn.h"

#ifdef __cplusplus
extern "C" {
#endif

/** Read back the block layout a sparse plan uses (BigBird, block-sparse,
 *  and Longformer in its blocked form: block (r, c) is 1 when the band,
 *  global tokens and causal setting keep some (i, j) in it; lengths and dense
 *  masks are not reflected) into @p buf as U8 0/1 [H, ⌈S_q/b⌉, ⌈S_k/b⌉].
 *  @p *size gives the buffer's bytes on entry and the bytes needed on return;
 *  buf = NULL with *size = 0 only asks for the size (ATTN_OK). A too-small
 *  buffer gives ATTN_ERR_INVALID_ARG (NULL with *size > 0: ATTN_ERR_NULL_ARG)
 *  and writes nothing else.
 *  @return also ATTN_ERR_NULL_ARG (plan or size NULL), ATTN_ERR_UNSUPPORTED
 *          for other variants (exact, Swin, linear, low-rank). @since 0.1.0 */
ATTN_API attn_status attn_plan_block_layout(const attn_plan *plan, uint8_t *buf, size_t *size);

/** Redraw a Performer plan's random features from a new seed, in place (no
 *  allocation, O(m·d_k²)). Afterwards the plan computes exactly what a plan
 *  created with this seed computes. Not to be called while the plan executes.
 *  @return ATTN_OK; ATTN_ERR_NULL_ARG for a NULL plan; ATTN_ERR_UNSUPPORTED for
 *          plans of other variants (elu+1 has no random features). @since 0.1.0 */
ATTN_API attn_status attn_plan_redraw_features(attn_plan *plan, uint64_t seed);

#ifdef __cplusplus
}
#endif

#endif /* ATTN_EXPERIMENTAL_H */

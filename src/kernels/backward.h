/* Internal entry of the backward pass (kernels/backward.c), for tests that
 * need small tiles to reach tile edges, skipped tiles and key chunks on
 * small shapes. */
#ifndef ATTN_BACKWARD_INTERNAL_H
#define ATTN_BACKWARD_INTERNAL_H

#include "core/internal.h"

/* attn_backward_plan_create() with tile sizes bq × bk (> 0; 0 = the
 * default), capped at S_q, S_k. */
attn_status attn_backward_plan_create_tiled(const attn_plan *forward, const attn_tensor *dout,
                                            const attn_tensor *dq, const attn_tensor *dk,
                                            const attn_tensor *dv, const attn_tensor *dmask,
                                            int64_t bq, int64_t bk, attn_backward_plan **plan);

/* attn_backward_execute() on `fwd`, a copy of the plan's forward plan whose
 * descriptor's mask tensors point at this run's buffers (the multi-head
 * layer's combined mask and key padding mask). The error is not cleared. */
attn_status attn_backward_run(attn_backward_plan *plan, const attn_plan *fwd, const attn_tensor *q,
                              const attn_tensor *k, const attn_tensor *v, const attn_tensor *out,
                              const attn_tensor *lse, const attn_tensor *dout, attn_tensor *dq,
                              attn_tensor *dk, attn_tensor *dv, attn_tensor *dmask);

#endif

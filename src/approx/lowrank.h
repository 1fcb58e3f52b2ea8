/* Linformer's projections, shared by its forward (lowrank.c) and the
 * backward (kernels/backward.c), which runs the exact backward on (q, K', V')
 * and maps dK', dV' back through the same projections. */
#ifndef ATTN_LOWRANK_H
#define ATTN_LOWRANK_H

#include "core/internal.h"

/* One execute's projections: re-checks the borrowed key lengths (named
 * message), writes inner_len [B] (k, or 0 for an item with no keys; not
 * written when NULL, i.e. without key lengths) and K' = E·K, V' = F·V as
 * contiguous [B, H_kv, k, d_k] at kp and [B, H_kv, k, d_v] at vp. */
attn_status attn_lowrank_project(const struct attn_plan *p, attn_context *ctx,
                                 const attn_tensor *k, const attn_tensor *v, void *kp, void *vp,
                                 int64_t *inner_len);

/* The way back: dk = Eᵀ·dK', dv = Fᵀ·dV' (dK', dV' contiguous as above;
 * key rows past an item's length get 0) and, with de and df non-NULL (the
 * given projections' shapes), dE = Σ_b dK'·Kᵀ and dF = Σ_b dV'·Vᵀ summed
 * over batch items (and kv heads for a shared [k, S_k] projection) in a
 * fixed order. */
attn_status attn_lowrank_unproject(const struct attn_plan *p, attn_context *ctx,
                                   const attn_tensor *k, const attn_tensor *v, const void *dkp,
                                   const void *dvp, attn_tensor *dk, attn_tensor *dv,
                                   attn_tensor *de, attn_tensor *df);

#endif

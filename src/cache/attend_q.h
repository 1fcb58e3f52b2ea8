/* Decode loops that read f16, int8 and int4 KV storage directly and widen or
 * dequantize in registers (attend_q.c). Same role as attend_simd.h for the
 * f32/bf16 storage; one template (attend_q_impl.inc) stamped for AVX-512 and
 * AVX2. The portable fallback is the tile path of attend_impl.inc
 * (dequantize a tile into the slot's scratch, then GEMM). */
#ifndef ATTN_KV_ATTEND_Q_H
#define ATTN_KV_ATTEND_Q_H

#include "cache/kvcache_internal.h"

typedef struct attn_kvq_ops {
  const char *isa;
  /* S[r][j] = alpha·Q[r]·k(p0 + j) for r < R, j < nj: positions of (b, h)
   * (at most one ring wrap), K read as stored (scales, residual). Q [R×Dk]
   * f32; scratch holds R·(round_up(Dk, 32) + 1) floats. pfv: also prefetch
   * the same positions' V rows, which values() reads next (false when only
   * the scores are wanted). */
  void (*scores)(const attn_kvcache *c, int64_t b, int64_t h, int64_t p0, int64_t nj,
                 const float *Q, int64_t R, float alpha, float *S, int64_t lds, float *scratch,
                 bool pfv);
  /* O[r] += Σ_j P[r][j]·v(p0 + j) (P row stride lds, O [R×Dv]). */
  void (*values)(const attn_kvcache *c, int64_t b, int64_t h, int64_t p0, int64_t nj,
                 const float *P, int64_t R, int64_t lds, float *O);
} attn_kvq_ops;

/* Floats of scratch the scores loop needs for R rows. */
static inline int64_t attn_kvq_scratch(int64_t R, int64_t Dk) {
  return R * ((Dk + 31) / 32 * 32 + 1);
}

/* The loops for `isa` ("avx512", "avx2") if this CPU runs them and they
 * handle the cache's storage (f16, int8, int4 with G % 16 == 0 or one V
 * group per row); else NULL. */
const attn_kvq_ops *attn_kvq_ops_for(const char *isa, const attn_kvcache *c);

#endif

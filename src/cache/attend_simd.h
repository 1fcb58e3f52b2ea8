/* Hand-vectorised decode loops (attend_simd.c). */
#ifndef ATTN_KV_ATTEND_SIMD_H
#define ATTN_KV_ATTEND_SIMD_H

#include <stdbool.h>
#include <stdint.h>

/* Stacked rows up to which the plan uses these loops instead of GEMM. */
#define ATTN_KV_SIMD_ROWS 8

/* S[r][j] = alpha · Q[r]·K[j] for r < R, j < nj (Q [R×D] f32, K [nj×D] rows
 * contiguous, f32 or, with bf16, bfloat16). V, if not NULL: the nj V rows
 * (Dv wide, same format) that attn_kv_values_avx512 will read next; they
 * are prefetched beside K, so both streams are in flight while the scores
 * are computed and the values loop reads V from cache. */
void attn_kv_scores_avx512(const float *Q, int64_t R, const void *K, int64_t nj, int64_t D,
                           float alpha, float *S, int64_t lds, const void *V, int64_t Dv,
                           bool bf16);
/* O[r] += Σ_j P[r][j]·V[j] (P row stride lds, V [nj×D] f32 or bfloat16, O [R×D]). */
void attn_kv_values_avx512(const float *P, int64_t R, int64_t lds, const void *V, int64_t nj,
                           int64_t D, float *O, bool bf16);
/* dst[i] = src[i] as f32 (bfloat16 bits are the top half of an f32). */
void attn_kv_widen_bf16_avx512(const void *src, float *dst, int64_t n);
/* The CPU runs the loops above. */
bool attn_kv_simd_available(void);

#endif

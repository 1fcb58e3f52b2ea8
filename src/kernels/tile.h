/* The tile engine: the exact kernel's two GEMMs on its L2-sized tiles,
 *   S[rows × nj] = alpha · Q Kᵀ      (K-dim D)
 *   O[rows × Dv] += P V              (K-dim nj)
 * with the operands packed once per tile into the layout a micro-kernel
 * streams. One engine per (storage dtype, CPU), chosen at plan time from the
 * dtype, the head dims and the CPU only (never the thread count), so results
 * stay bitwise identical for any thread count:
 *   amx-bf16      bf16 q, k, v on CPUs with AMX (AMX-TILE + AMX-BF16, and
 *                 Linux granting the tile state): TDPBF16PS on 16 × 32
 *                 tiles, f32 accumulators; P rounded to bf16 for P·V.
 *   avx512-bf16   bf16 q, k, v: vdpbf16ps (AVX512_BF16) on bf16 pairs, f32
 *                 accumulators; P is rounded to bf16 for P·V.
 *   avx512-f32    f32 q, k, v (dot scores) and f16 (widened exactly to f32
 *                 while packing, vcvtph2ps): vfmadd231ps on zmm.
 *   convert       bf16/f16 on CPUs without AVX-512 (or $ATTN_CPU=avx2 |
 *                 generic): rows widened to f32 through the dtype traits,
 *                 then OpenBLAS sgemm.
 * f32 without AVX-512 (and f64 always) uses no engine: the kernel calls
 * OpenBLAS on the tensors directly, as before. $ATTN_TILE=blas keeps f32 on
 * OpenBLAS even where avx512-f32 is available, $ATTN_TILE=avx512 keeps bf16
 * off AMX (both for tests and comparisons; read once per process). */
#ifndef ATTN_TILE_H
#define ATTN_TILE_H

#include "core/internal.h"

typedef struct attn_tile_engine {
  const char *name;
  size_t elem; /* bytes of a packed element (2: bf16, 4: f32) */
  int64_t kpad; /* the GEMMs' K-dims are padded to a multiple of this (2 for bf16 pairs) */
  int64_t nr;   /* packed panels hold nr columns (1: plain row-major) */
  /* One row of Q (n storage elements) → a packed A row of npad elements,
   * zero-padded. */
  void (*pack_a)(const void *src, int64_t n, void *dst, int64_t npad);
  /* K rows [nj × D] (row stride ldk, storage) → the packed B of S = Q Kᵀ. */
  void (*pack_k)(const void *K, int64_t ldk, int64_t nj, int64_t D, void *dst);
  /* V rows [nj × Dv] (row stride ldv, storage) → the packed B of O += P V,
   * its column panels vps elements apart (attn_tile_vps(); a whole head
   * packed at once has a longer stride, and tiles then read slices of it). */
  void (*pack_v)(const void *V, int64_t ldv, int64_t nj, int64_t Dv, void *dst, int64_t vps);
  /* S = alpha · A Kᵀ: A rows of attn_tile_pad(e, D) packed elements. */
  void (*qk)(int64_t rows, int64_t nj, int64_t D, float alpha, const void *A, const void *Kp,
             float *S, int64_t lds);
  /* O += P V with P f32 (row stride ldp); pscratch holds attn_tile_p_elems()
   * uint16; V's column panels vps elements apart. */
  void (*pv)(int64_t rows, int64_t Dv, int64_t nj, const float *P, int64_t ldp, void *pscratch,
             const void *Vp, int64_t vps, float *O, int64_t ldo);
  /* f32 engines only (else NULL), for the backward's five GEMMs: C (+)= A·B
   * with A f32 row-major [rows × K] (row stride lda) and B f32 in column
   * panels of nr: element (k, c) of panel p at Bp[p·bps + k·ldb + c]. B
   * packed by pack_k / pack_v has ldb = nr; a row-major [K × n] matrix with
   * row stride ld is B with bps = nr, ldb = ld (every row must be readable
   * up to its last panel's end; columns past ncols are read, never used).
   * C = alpha·A·B, or C += A·B (accumulate; alpha unused). */
  void (*mm)(int64_t rows, int64_t ncols, int64_t K, const float *A, int64_t lda, const float *Bp,
             int64_t bps, int64_t ldb, float *C, int64_t ldc, float alpha, bool accumulate);
  /* f32 engines only: the backward's softmax step on a rows × n tile (row
   * stride ld) in place: dP ← α·P∘(dP − D_r), exactly +0 where P = 0 (as
   * osm_dscores, then × α). */
  void (*dscores)(const float *P, float *dP, int64_t rows, int64_t n, int64_t ld, const float *D,
                  float alpha);
} attn_tile_engine;

/* The engine for q/k/v of dtype `storage` and head dims D (q·k) and Dv, or
 * NULL when the kernel should call BLAS on the tensors directly (f64; f32
 * without AVX-512 or with $ATTN_TILE=blas). Depends on the CPU, $ATTN_CPU
 * and $ATTN_TILE only; read once per process. */
const attn_tile_engine *attn_tile_engine_for(attn_dtype storage, int64_t D, int64_t Dv);

/* An engine by name ("amx-bf16", "avx512-bf16", "avx512-f32",
 * "convert-bf16", "convert-f16", "avx512-f32-f16") if this CPU runs it,
 * else NULL: for tests and the bench. */
const attn_tile_engine *attn_tile_engine_named(const char *name);

/* Does this CPU (and OS) run AVX512F+BW+VL / AVX512_BF16 code? ($ATTN_CPU
 * lowers both to false.) */
bool attn_cpu_avx512(void);
bool attn_cpu_avx512_bf16(void);
/* ... and AMX-BF16 tiles (with the OS's permission; not with ATTN_TILE=avx512|blas). */
bool attn_cpu_amx(void);
/* $ATTN_TILE=blas: every f32 product goes to OpenBLAS (engines and the small
 * GEMM kernel off), so tests can cover that path on AVX-512 machines. */
bool attn_tile_blas_forced(void);

static inline int64_t attn_tile_pad(const attn_tile_engine *e, int64_t n) {
  return attn_cdiv64(n, e->kpad) * e->kpad;
}
/* Scratch bytes: packed A for `rows` rows, packed K and V for up to nj keys,
 * P's conversion for rows × nj. Each may overflow: the caller carves them
 * (attn_carve checks) from these element counts. */
static inline int64_t attn_tile_k_elems(const attn_tile_engine *e, int64_t nj, int64_t D) {
  return attn_cdiv64(nj, e->nr) * e->nr * attn_tile_pad(e, D);
}
static inline int64_t attn_tile_v_elems(const attn_tile_engine *e, int64_t nj, int64_t Dv) {
  return attn_cdiv64(Dv, e->nr) * e->nr * attn_tile_pad(e, nj);
}
/* The column-panel stride of V packed for nj keys. */
static inline int64_t attn_tile_vps(const attn_tile_engine *e, int64_t nj) {
  return e->nr * attn_tile_pad(e, nj);
}
static inline int64_t attn_tile_p_elems(const attn_tile_engine *e, int64_t rows, int64_t nj) {
  return e->kpad > 1 ? rows * attn_tile_pad(e, nj) : 0;
}

#endif

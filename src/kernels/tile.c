/* The tile engine (kernels/tile.h): packers and micro-kernels for the exact
 * kernel's S = Q Kᵀ and O += P V. The library is built for baseline x86-64;
 * AVX-512 code is compiled with target attributes and only reached after
 * the CPUID checks below, so older CPUs never see an AVX-512 instruction.
 *
 * Micro-kernels: a tile of MR = 12 rows × NR = 32 columns (24 zmm
 * accumulators) of C; B is packed in panels of 32 columns so each K step
 * loads two zmm of B and broadcasts one A element (f32) or pair (bf16) per
 * row. Panels are zero-padded (columns past nj/Dv, K past D/nj), and A rows
 * are zero-padded to the same K, so padding adds exact zeros. The order of
 * every sum is fixed by the shapes alone. */
#include "kernels/tile.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "blas/gemm.h"
#include "kernels/vmath.h"

/* ---- CPU features --------------------------------------------------------- */

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define ATTN_TILE_X86 1
#include <cpuid.h>
#include <immintrin.h>
#include <sys/syscall.h>
#include <unistd.h>
#endif

static bool g_avx512, g_bf16, g_amx;
static pthread_once_t g_cpu_once = PTHREAD_ONCE_INIT;

static void cpu_init(void) {
#ifdef ATTN_TILE_X86
  unsigned a, b, c, d;
  if (!__get_cpuid(1, &a, &b, &c, &d)) return;
  const bool osxsave = (c >> 27) & 1u;
  if (!osxsave) return;
  unsigned lo, hi;
  __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
  (void)hi;
  if ((lo & 0xe6u) != 0xe6u) return; /* the OS saves zmm/opmask state */
  if (__get_cpuid_max(0, NULL) < 7) return;
  __cpuid_count(7, 0, a, b, c, d);
  const bool f = (b >> 16) & 1u, bw = (b >> 30) & 1u, vl = (b >> 31) & 1u;
  unsigned a1, b1, c1, d1;
  __cpuid_count(7, 1, a1, b1, c1, d1);
  (void)b1;
  (void)c1;
  (void)d1;
  /* $ATTN_CPU lowers the choice: vmath reports the ISA it settled on. */
  const bool allowed = strcmp(attn_vmath_get()->isa, "avx512") == 0;
  g_avx512 = allowed && f && bw && vl;
  g_bf16 = g_avx512 && ((a1 >> 5) & 1u);
  /* AMX: CPUID.7.0:EDX[24] (tiles) and [22] (bf16), the OS's XCR0 tile
   * state (bits 17, 18), and Linux's per-process permission for the tile
   * data (arch_prctl ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA = 18). */
  const bool amx_cpu = ((d >> 24) & 1u) && ((d >> 22) & 1u) && ((lo >> 17) & 3u) == 3u;
  const char *t = getenv("ATTN_TILE");
  const bool amx_allowed = t == NULL || (strcmp(t, "avx512") != 0 && strcmp(t, "blas") != 0);
  g_amx = g_bf16 && amx_cpu && amx_allowed && syscall(SYS_arch_prctl, 0x1023, 18) == 0;
#endif
}

bool attn_cpu_amx(void) {
  pthread_once(&g_cpu_once, cpu_init);
  return g_amx;
}

bool attn_cpu_avx512(void) {
  pthread_once(&g_cpu_once, cpu_init);
  return g_avx512;
}

bool attn_cpu_avx512_bf16(void) {
  pthread_once(&g_cpu_once, cpu_init);
  return g_bf16;
}

/* ---- the convert engine: widen to f32, then OpenBLAS (any CPU) ------------ */

static void cv_pack_rows(attn_to_f32_fn cv, const void *src, int64_t ld, int64_t rows,
                         int64_t n, float *dst) {
  for (int64_t r = 0; r < rows; r++) cv((const uint16_t *)src + r * ld, dst + r * n, n);
}

#define CONVERT_ENGINE(tag, DT)                                                                 \
  static void cv_pack_a_##tag(const void *src, int64_t n, void *dst, int64_t npad) {          \
    attn_dtype_info(DT)->to_f32(src, dst, n);                                                   \
    for (int64_t i = n; i < npad; i++) ((float *)dst)[i] = 0.0f;                                \
  }                                                                                             \
  static void cv_pack_k_##tag(const void *K, int64_t ldk, int64_t nj, int64_t D, void *dst) {  \
    cv_pack_rows(attn_dtype_info(DT)->to_f32, K, ldk, nj, D, dst);                              \
  }                                                                                             \
  static void cv_pack_v_##tag(const void *V, int64_t ldv, int64_t nj, int64_t Dv, void *dst,  \
                              int64_t vps) {                                                    \
    (void)vps;                                                                                  \
    cv_pack_rows(attn_dtype_info(DT)->to_f32, V, ldv, nj, Dv, dst);                             \
  }

CONVERT_ENGINE(bf16, ATTN_DTYPE_BF16)
CONVERT_ENGINE(f16, ATTN_DTYPE_F16)

static void cv_qk(int64_t rows, int64_t nj, int64_t D, float alpha, const void *A, const void *Kp,
                  float *S, int64_t lds) {
  attn_sgemm(false, true, rows, nj, D, alpha, A, D, Kp, D, 0.0f, S, lds);
}

static void cv_pv(int64_t rows, int64_t Dv, int64_t nj, const float *P, int64_t ldp,
                  void *pscratch, const void *Vp, int64_t vps, float *O, int64_t ldo) {
  (void)pscratch;
  (void)vps;
  attn_sgemm(false, false, rows, Dv, nj, 1.0f, P, ldp, Vp, Dv, 1.0f, O, ldo);
}

static const attn_tile_engine eng_convert_bf16 = {
    "convert-bf16", 4, 1, 1, cv_pack_a_bf16, cv_pack_k_bf16, cv_pack_v_bf16, cv_qk, cv_pv, NULL, NULL};
static const attn_tile_engine eng_convert_f16 = {
    "convert-f16", 4, 1, 1, cv_pack_a_f16, cv_pack_k_f16, cv_pack_v_f16, cv_qk, cv_pv, NULL, NULL};

/* ---- AVX-512 ---------------------------------------------------------------- */

#ifdef ATTN_TILE_X86

#define AVX512 __attribute__((target("avx512f,avx512bw,avx512vl")))
#define AVX512BF16 __attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16")))
#define INLINE inline __attribute__((always_inline))
#define MR 12
#define NR 32

static inline int32_t ld32(const void *p) {
  int32_t x;
  memcpy(&x, p, sizeof x);
  return x;
}

static inline __mmask16 mask16(int64_t n) {
  return n >= 16 ? (__mmask16)0xFFFF : n <= 0 ? (__mmask16)0 : (__mmask16)((1u << n) - 1u);
}

/* Store (accumulate = false: C = alpha·acc) or add (C = acc, acc started
 * from C) one mr × 32 tile, masked to ncols columns. */
#define STORE_TILE(mr, acc, C, ldc, ncols, alpha, scale)                                     \
  do {                                                                                       \
    const __mmask16 k0_ = mask16(ncols), k1_ = mask16((ncols)-16);                           \
    const __m512 va_ = _mm512_set1_ps(alpha);                                                \
    for (int i_ = 0; i_ < (mr); i_++) {                                                      \
      __m512 x0_ = (scale) ? _mm512_mul_ps(acc[i_][0], va_) : acc[i_][0];                     \
      __m512 x1_ = (scale) ? _mm512_mul_ps(acc[i_][1], va_) : acc[i_][1];                     \
      _mm512_mask_storeu_ps((C) + i_ * (ldc), k0_, x0_);                                       \
      _mm512_mask_storeu_ps((C) + i_ * (ldc) + 16, k1_, x1_);                                  \
    }                                                                                        \
  } while (0)

/* -- f32: C[mr × 32] (+)= A[mr × K] · Bpanel[K × 32] -- */
AVX512 static INLINE void f32_tile(const int mr, int64_t K, const float *A, int64_t lda,
                                   const float *B, int64_t ldb, float *C, int64_t ldc, int64_t ncols,
                                   float alpha, bool accumulate) {
  __m512 acc[MR][2];
  const __mmask16 k0 = mask16(ncols), k1 = mask16(ncols - 16);
  for (int i = 0; i < mr; i++) {
    if (accumulate) {
      acc[i][0] = _mm512_maskz_loadu_ps(k0, C + i * ldc);
      acc[i][1] = _mm512_maskz_loadu_ps(k1, C + i * ldc + 16);
    } else {
      acc[i][0] = _mm512_setzero_ps();
      acc[i][1] = _mm512_setzero_ps();
    }
  }
  for (int64_t k = 0; k < K; k++) {
    const __m512 b0 = _mm512_loadu_ps(B + k * ldb), b1 = _mm512_loadu_ps(B + k * ldb + 16);
    for (int i = 0; i < mr; i++) {
      const __m512 a = _mm512_set1_ps(A[i * lda + k]);
      acc[i][0] = _mm512_fmadd_ps(a, b0, acc[i][0]);
      acc[i][1] = _mm512_fmadd_ps(a, b1, acc[i][1]);
    }
  }
  STORE_TILE(mr, acc, C, ldc, ncols, alpha, !accumulate);
}

/* C (+)= A · Bp for a matrix: rows × ncols_total, B packed in panels of
 * NR columns × K, consecutive panels bps elements apart. */
AVX512 static void f32_gemm(int64_t rows, int64_t ncols, int64_t K, const float *A, int64_t lda,
                            const float *Bp, int64_t bps, int64_t ldb, float *C, int64_t ldc, float alpha,
                            bool accumulate) {
  for (int64_t j = 0; j < ncols; j += NR) {
    const float *B = Bp + (j / NR) * bps;
    const int64_t nc = attn_min64(NR, ncols - j);
    int64_t i = 0;
    for (; i + MR <= rows; i += MR)
      f32_tile(MR, K, A + i * lda, lda, B, ldb, C + i * ldc + j, ldc, nc, alpha, accumulate);
    switch (rows - i) {
#define TAIL(n)                                                                          \
  case n:                                                                                \
    f32_tile(n, K, A + i * lda, lda, B, ldb, C + i * ldc + j, ldc, nc, alpha, accumulate); \
    break;
      TAIL(1) TAIL(2) TAIL(3) TAIL(4) TAIL(5) TAIL(6) TAIL(7) TAIL(8) TAIL(9) TAIL(10) TAIL(11)
#undef TAIL
      default:
        break;
    }
  }
}

/* f32_gemm for the backward's operands, with `accumulate` a constant in
 * each call so GCC specialises the loop as for qk/pv below (a run-time
 * flag made it keep B on the stack: one more load per FMA). */
AVX512 static void f32_gemm_acc(int64_t rows, int64_t ncols, int64_t K, const float *A,
                                int64_t lda, const float *Bp, int64_t bps, int64_t ldb, float *C,
                                int64_t ldc) {
  f32_gemm(rows, ncols, K, A, lda, Bp, bps, ldb, C, ldc, 1.0f, true);
}
AVX512 static void f32_gemm_set(int64_t rows, int64_t ncols, int64_t K, const float *A,
                                int64_t lda, const float *Bp, int64_t bps, int64_t ldb, float *C,
                                int64_t ldc, float alpha) {
  f32_gemm(rows, ncols, K, A, lda, Bp, bps, ldb, C, ldc, alpha, false);
}
AVX512 static void f32_gemm_any(int64_t rows, int64_t ncols, int64_t K, const float *A,
                                int64_t lda, const float *Bp, int64_t bps, int64_t ldb, float *C,
                                int64_t ldc, float alpha, bool accumulate) {
  if (accumulate)
    f32_gemm_acc(rows, ncols, K, A, lda, Bp, bps, ldb, C, ldc);
  else
    f32_gemm_set(rows, ncols, K, A, lda, Bp, bps, ldb, C, ldc, alpha);
}

/* The backward's dS over a tile in place (see tile.h). `p != 0` is C's
 * (true for NaN: _CMP_NEQ_UQ) and the products are rounded as the scalar
 * osm_dscores then × α rounds them, so the results are the same. */
AVX512 static void x_dscores(const float *P, float *dP, int64_t rows, int64_t n, int64_t ld,
                             const float *D, float alpha) {
  const __m512 va = _mm512_set1_ps(alpha), zero = _mm512_setzero_ps();
  for (int64_t r = 0; r < rows; r++) {
    const __m512 vd = _mm512_set1_ps(D[r]);
    const float *pr = P + r * ld;
    float *dr = dP + r * ld;
    for (int64_t c = 0; c < n; c += 16) {
      const __mmask16 k = mask16(n - c);
      const __m512 p = _mm512_maskz_loadu_ps(k, pr + c);
      const __m512 g = _mm512_maskz_loadu_ps(k, dr + c);
      const __mmask16 keep = _mm512_cmp_ps_mask(p, zero, _CMP_NEQ_UQ);
      _mm512_mask_storeu_ps(dr + c, k,
                            _mm512_mul_ps(_mm512_maskz_mul_ps(keep, p, _mm512_sub_ps(g, vd)), va));
    }
  }
}

/* f32 A rows: copy (f32) or widen (f16, vcvtph2ps), zero-padded. */
AVX512 static void x_pack_a_f32(const void *src, int64_t n, void *dst, int64_t npad) {
  memcpy(dst, src, (size_t)n * sizeof(float));
  for (int64_t i = n; i < npad; i++) ((float *)dst)[i] = 0.0f;
}

AVX512 static inline __m512 f16x16(const uint16_t *p, __mmask16 k) {
  return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(k, p));
}

AVX512 static void x_pack_a_f16(const void *src, int64_t n, void *dst, int64_t npad) {
  const uint16_t *s = src;
  float *d = dst;
  for (int64_t i = 0; i < npad; i += 16) {
    const __mmask16 k = mask16(n - i);
    _mm512_mask_storeu_ps(d + i, mask16(npad - i), f16x16(s + i, k));
  }
}

/* K [nj × D] → panels of 32 keys: dst[(p·D + k)·32 + c] = K[32p + c][k]. */
AVX512 static void x_pack_k_f32(const void *Kv, int64_t ldk, int64_t nj, int64_t D, void *dstv) {
  const float *K = Kv;
  float *dst = dstv;
  for (int64_t j0 = 0; j0 < nj; j0 += NR) {
    float *P = dst + (j0 / NR) * D * NR;
    const int64_t nc = attn_min64(NR, nj - j0);
    /* A scalar transpose (the panel is L1-resident); with K packed once per
     * head per execute (exact.c) it is off the hot path. */
    for (int64_t c = 0; c < NR; c++) {
      if (c < nc) {
        const float *row = K + (j0 + c) * ldk;
        for (int64_t k = 0; k < D; k++) P[k * NR + c] = row[k];
      } else {
        for (int64_t k = 0; k < D; k++) P[k * NR + c] = 0.0f;
      }
    }
  }
}

AVX512 static void x_pack_k_f16(const void *Kv, int64_t ldk, int64_t nj, int64_t D, void *dstv) {
  const uint16_t *K = Kv;
  float *dst = dstv;
  float tmp[16];
  for (int64_t j0 = 0; j0 < nj; j0 += NR) {
    float *P = dst + (j0 / NR) * D * NR;
    const int64_t nc = attn_min64(NR, nj - j0);
    for (int64_t c = 0; c < NR; c++) {
      if (c < nc) {
        const uint16_t *row = K + (j0 + c) * ldk;
        for (int64_t k = 0; k < D; k += 16) {
          _mm512_storeu_ps(tmp, f16x16(row + k, mask16(D - k)));
          for (int64_t x = 0; x < 16 && k + x < D; x++) P[(k + x) * NR + c] = tmp[x];
        }
      } else {
        for (int64_t k = 0; k < D; k++) P[k * NR + c] = 0.0f;
      }
    }
  }
}

/* V [nj × Dv] → panels of 32 columns, vps elements apart:
 * dst[p·vps + j·32 + c] = V[j][32p + c]. */
AVX512 static void x_pack_v_f32(const void *Vv, int64_t ldv, int64_t nj, int64_t Dv, void *dstv,
                                int64_t vps) {
  const float *V = Vv;
  float *dst = dstv;
  for (int64_t c0 = 0; c0 < Dv; c0 += NR) {
    float *P = dst + (c0 / NR) * vps;
    const __mmask16 k0 = mask16(Dv - c0), k1 = mask16(Dv - c0 - 16);
    for (int64_t j = 0; j < nj; j++) {
      const float *row = V + j * ldv + c0;
      _mm512_storeu_ps(P + j * NR, _mm512_maskz_loadu_ps(k0, row));
      _mm512_storeu_ps(P + j * NR + 16, _mm512_maskz_loadu_ps(k1, row + 16));
    }
  }
}

AVX512 static void x_pack_v_f16(const void *Vv, int64_t ldv, int64_t nj, int64_t Dv, void *dstv,
                                int64_t vps) {
  const uint16_t *V = Vv;
  float *dst = dstv;
  for (int64_t c0 = 0; c0 < Dv; c0 += NR) {
    float *P = dst + (c0 / NR) * vps;
    const __mmask16 k0 = mask16(Dv - c0), k1 = mask16(Dv - c0 - 16);
    for (int64_t j = 0; j < nj; j++) {
      const uint16_t *row = V + j * ldv + c0;
      _mm512_storeu_ps(P + j * NR, f16x16(row, k0));
      _mm512_storeu_ps(P + j * NR + 16, f16x16(row + 16, k1));
    }
  }
}

AVX512 static void x_qk_f32(int64_t rows, int64_t nj, int64_t D, float alpha, const void *A,
                            const void *Kp, float *S, int64_t lds) {
  f32_gemm(rows, nj, D, A, D, Kp, D * NR, NR, S, lds, alpha, false);
}

AVX512 static void x_pv_f32(int64_t rows, int64_t Dv, int64_t nj, const float *P, int64_t ldp,
                            void *pscratch, const void *Vp, int64_t vps, float *O, int64_t ldo) {
  (void)pscratch;
  f32_gemm(rows, Dv, nj, P, ldp, Vp, vps, NR, O, ldo, 1.0f, true);
}

static const attn_tile_engine eng_avx512_f32 = {
    "avx512-f32", 4, 1, NR, x_pack_a_f32, x_pack_k_f32, x_pack_v_f32, x_qk_f32, x_pv_f32,
    f32_gemm_any, x_dscores};
static const attn_tile_engine eng_avx512_f32_f16 = {
    "avx512-f32-f16", 4, 1, NR, x_pack_a_f16, x_pack_k_f16, x_pack_v_f16, x_qk_f32, x_pv_f32, NULL, NULL};

/* -- bf16: C[mr × 32] (+)= A[mr × 2np] · Bpanel, both in bf16 pairs -- */
AVX512BF16 static INLINE void bf16_tile(const int mr, int64_t np, const uint16_t *A, int64_t lda,
                                        const uint16_t *B, float *C, int64_t ldc, int64_t ncols,
                                        float alpha, bool accumulate) {
  __m512 acc[MR][2];
  const __mmask16 k0 = mask16(ncols), k1 = mask16(ncols - 16);
  for (int i = 0; i < mr; i++) {
    if (accumulate) {
      acc[i][0] = _mm512_maskz_loadu_ps(k0, C + i * ldc);
      acc[i][1] = _mm512_maskz_loadu_ps(k1, C + i * ldc + 16);
    } else {
      acc[i][0] = _mm512_setzero_ps();
      acc[i][1] = _mm512_setzero_ps();
    }
  }
  for (int64_t p = 0; p < np; p++) {
    const __m512bh b0 = (__m512bh)_mm512_loadu_si512((const void *)(B + p * 2 * NR));
    const __m512bh b1 = (__m512bh)_mm512_loadu_si512((const void *)(B + p * 2 * NR + NR));
    for (int i = 0; i < mr; i++) {
      const __m512bh a = (__m512bh)_mm512_set1_epi32(ld32(A + i * lda + 2 * p));
      acc[i][0] = _mm512_dpbf16_ps(acc[i][0], a, b0);
      acc[i][1] = _mm512_dpbf16_ps(acc[i][1], a, b1);
    }
  }
  STORE_TILE(mr, acc, C, ldc, ncols, alpha, !accumulate);
}

/* K-dim Kp (even) = 2·np; B panels of NR columns × np pairs, bps elements
 * (uint16) apart. */
AVX512BF16 static void bf16_gemm(int64_t rows, int64_t ncols, int64_t Kp, const uint16_t *A,
                                 int64_t lda, const uint16_t *Bp, int64_t bps, float *C,
                                 int64_t ldc, float alpha, bool accumulate) {
  const int64_t np = Kp / 2;
  for (int64_t j = 0; j < ncols; j += NR) {
    const uint16_t *B = Bp + (j / NR) * bps;
    const int64_t nc = attn_min64(NR, ncols - j);
    int64_t i = 0;
    for (; i + MR <= rows; i += MR)
      bf16_tile(MR, np, A + i * lda, lda, B, C + i * ldc + j, ldc, nc, alpha, accumulate);
    switch (rows - i) {
#define TAIL(n)                                                                         \
  case n:                                                                               \
    bf16_tile(n, np, A + i * lda, lda, B, C + i * ldc + j, ldc, nc, alpha, accumulate); \
    break;
      TAIL(1) TAIL(2) TAIL(3) TAIL(4) TAIL(5) TAIL(6) TAIL(7) TAIL(8) TAIL(9) TAIL(10) TAIL(11)
#undef TAIL
      default:
        break;
    }
  }
}

AVX512 static void b_pack_a(const void *src, int64_t n, void *dst, int64_t npad) {
  memcpy(dst, src, (size_t)n * sizeof(uint16_t));
  for (int64_t i = n; i < npad; i++) ((uint16_t *)dst)[i] = 0;
}

/* K [nj × D] → panels of 32 keys × Dp/2 pairs (Dp: D padded to the
 * engine's K multiple, zero pairs beyond D):
 * dst32[(p·np + t)·32 + c] = pair t of key 32p + c (32-bit words). */
AVX512 static void b_pack_k_pad(const void *Kv, int64_t ldk, int64_t nj, int64_t D, int64_t Dp,
                                void *dstv) {
  const uint16_t *K = Kv;
  uint32_t *dst = dstv;
  const int64_t np = Dp / 2;
  for (int64_t j0 = 0; j0 < nj; j0 += NR) {
    uint32_t *P = dst + (j0 / NR) * np * NR;
    const int64_t nc = attn_min64(NR, nj - j0);
    for (int64_t c = 0; c < NR; c++) {
      if (c < nc) {
        const uint16_t *row = K + (j0 + c) * ldk;
        for (int64_t t = 0; t < D / 2; t++) P[t * NR + c] = (uint32_t)ld32(row + 2 * t);
        if (D & 1) P[(D / 2) * NR + c] = row[D - 1];
        for (int64_t t = (D + 1) / 2; t < np; t++) P[t * NR + c] = 0;
      } else {
        for (int64_t t = 0; t < np; t++) P[t * NR + c] = 0;
      }
    }
  }
}

/* V [nj × Dv] → panels of 32 columns × njp/2 key pairs (njp: nj padded to
 * the engine's K multiple): the words of a pair interleave rows 2t and
 * 2t + 1 (zero for missing rows). */
AVX512 static void b_pack_v_pad(const void *Vv, int64_t ldv, int64_t nj, int64_t Dv, int64_t njp,
                                void *dstv, int64_t vps) {
  const uint16_t *V = Vv;
  uint16_t *dst = dstv;
  const __m512i lo_idx = _mm512_set_epi16(47, 15, 46, 14, 45, 13, 44, 12, 43, 11, 42, 10, 41, 9,
                                          40, 8, 39, 7, 38, 6, 37, 5, 36, 4, 35, 3, 34, 2, 33, 1,
                                          32, 0);
  const __m512i hi_idx = _mm512_add_epi16(lo_idx, _mm512_set1_epi16(16));
  for (int64_t c0 = 0; c0 < Dv; c0 += NR) {
    uint16_t *P = dst + (c0 / NR) * vps;
    const __mmask32 k = Dv - c0 >= 32 ? (__mmask32)0xFFFFFFFFu
                                      : (__mmask32)((1u << (Dv - c0)) - 1u);
    for (int64_t t = 0; t < njp / 2; t++) {
      const __m512i r0 = 2 * t < nj ? _mm512_maskz_loadu_epi16(k, V + (2 * t) * ldv + c0)
                                     : _mm512_setzero_si512();
      const __m512i r1 = 2 * t + 1 < nj ? _mm512_maskz_loadu_epi16(k, V + (2 * t + 1) * ldv + c0)
                                        : _mm512_setzero_si512();
      /* columns 0..15 of both rows interleaved, then 16..31 */
      _mm512_storeu_si512((void *)(P + t * 2 * NR), _mm512_permutex2var_epi16(r0, lo_idx, r1));
      _mm512_storeu_si512((void *)(P + t * 2 * NR + NR), _mm512_permutex2var_epi16(r0, hi_idx, r1));
    }
  }
}

AVX512 static void b_pack_k(const void *K, int64_t ldk, int64_t nj, int64_t D, void *dst) {
  b_pack_k_pad(K, ldk, nj, D, D + (D & 1), dst);
}
AVX512 static void b_pack_v(const void *V, int64_t ldv, int64_t nj, int64_t Dv, void *dst,
                            int64_t vps) {
  b_pack_v_pad(V, ldv, nj, Dv, nj + (nj & 1), dst, vps);
}

AVX512BF16 static void b_qk(int64_t rows, int64_t nj, int64_t D, float alpha, const void *A,
                            const void *Kp, float *S, int64_t lds) {
  const int64_t Dp = D + (D & 1);
  bf16_gemm(rows, nj, Dp, A, Dp, Kp, Dp * NR, S, lds, alpha, false);
}

/* P (f32) → bf16 rows of njp (round to nearest even; vcvtne2ps2bf16), then
 * O += Pb · V. */
AVX512BF16 static void b_convert_p(int64_t rows, int64_t nj, int64_t njp, const float *P,
                                   int64_t ldp, uint16_t *Pb) {
  for (int64_t r = 0; r < rows; r++) {
    const float *src = P + r * ldp;
    uint16_t *d = Pb + r * njp;
    for (int64_t j = 0; j < njp; j += 32) {
      const __m512 x0 = _mm512_maskz_loadu_ps(mask16(nj - j), src + j);
      const __m512 x1 = _mm512_maskz_loadu_ps(mask16(nj - j - 16), src + j + 16);
      const __m512i y = (__m512i)_mm512_cvtne2ps_pbh(x1, x0);
      const int64_t n = attn_min64(32, njp - j);
      const __mmask32 k = n >= 32 ? (__mmask32)0xFFFFFFFFu : (__mmask32)((1u << n) - 1u);
      _mm512_mask_storeu_epi16(d + j, k, y);
    }
  }
}

AVX512BF16 static void b_pv(int64_t rows, int64_t Dv, int64_t nj, const float *P, int64_t ldp,
                            void *pscratch, const void *Vp, int64_t vps, float *O, int64_t ldo) {
  const int64_t njp = nj + (nj & 1);
  uint16_t *Pb = pscratch;
  b_convert_p(rows, nj, njp, P, ldp, Pb);
  bf16_gemm(rows, Dv, njp, Pb, njp, Vp, vps, O, ldo, 1.0f, true);
}

static const attn_tile_engine eng_avx512_bf16 = {
    "avx512-bf16", 2, 2, NR, b_pack_a, b_pack_k, b_pack_v, b_qk, b_pv, NULL, NULL};

/* -- AMX (AMX-TILE + AMX-BF16): the same packed operands, K padded to 32 --
 * Tiles: C in tmm0..3 (2 × 2 blocks of 16 rows × 16 f32 columns), A in
 * tmm4, tmm5 (16 rows × 32 bf16 each), B in tmm6, tmm7 (16 pairs × 16
 * columns each, read from a 32-column panel with a 128-byte row stride).
 * Column tails go through a 32 × 32 scratch block. */
#define AMX __attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16,amx-tile,amx-bf16")))
#define KP_AMX 32

typedef struct amx_cfg {
  uint8_t palette, start_row;
  uint8_t reserved[14];
  uint16_t colsb[16];
  uint8_t rows[16];
} amx_cfg;

/* r1 rows in the first 16-row block (1..16), r2 in the second (0..16). */
AMX static void amx_configure(int r1, int r2) {
  amx_cfg c;
  memset(&c, 0, sizeof c);
  c.palette = 1;
  for (int t = 0; t < 2; t++) { /* C blocks of the first rows, then of the second */
    c.rows[t] = (uint8_t)r1, c.colsb[t] = 64;
    c.rows[2 + t] = (uint8_t)r2, c.colsb[2 + t] = r2 ? 64 : 0;
  }
  c.rows[4] = (uint8_t)r1, c.colsb[4] = 64;
  c.rows[5] = (uint8_t)r2, c.colsb[5] = r2 ? 64 : 0;
  c.rows[6] = c.rows[7] = 16, c.colsb[6] = c.colsb[7] = 64;
  _tile_loadconfig(&c);
}

/* Scale rows × 32 floats (row stride ld) by alpha, in L1 right after the
 * tile store. */
AMX static inline void amx_scale_block(float *C, int64_t ld, int rows, float alpha) {
  const __m512 va = _mm512_set1_ps(alpha);
  for (int r = 0; r < rows; r++) {
    _mm512_storeu_ps(C + r * ld, _mm512_mul_ps(_mm512_loadu_ps(C + r * ld), va));
    _mm512_storeu_ps(C + r * ld + 16, _mm512_mul_ps(_mm512_loadu_ps(C + r * ld + 16), va));
  }
}

/* C[rows × ncols] = alpha · A B, or C += A B (accumulate; alpha unused):
 * A[rows × Kp], B panels of 32 columns with Kp/2 pairs each; Kp a multiple
 * of 32, A's row stride lda (elements). */
AMX static void amx_gemm(int64_t rows, int64_t ncols, int64_t Kp, const uint16_t *A, int64_t lda,
                         const uint16_t *Bp, int64_t bps, float *C, int64_t ldc, bool accumulate,
                         float alpha) {
  float scratch[32 * 32];
  int cur1 = -1, cur2 = -1;
  for (int64_t i0 = 0; i0 < rows; i0 += 32) {
    const int r1 = (int)attn_min64(16, rows - i0), r2 = (int)attn_max64(0, attn_min64(16, rows - i0 - 16));
    if (r1 != cur1 || r2 != cur2) {
      amx_configure(r1, r2);
      cur1 = r1, cur2 = r2;
    }
    const uint16_t *A0 = A + i0 * lda, *A1 = A + (i0 + 16) * lda;
    for (int64_t j0 = 0; j0 < ncols; j0 += 32) {
      const uint16_t *B = Bp + (j0 / 32) * bps;
      const int64_t nc = attn_min64(32, ncols - j0);
      float *Cd = C + i0 * ldc + j0;
      int64_t ldd = ldc;
      if (nc < 32) { /* column tail: work in scratch */
        Cd = scratch, ldd = 32;
        for (int r = 0; r < r1 + r2; r++)
          for (int64_t c = 0; c < 32; c++)
            scratch[r * 32 + c] = accumulate && c < nc ? C[(i0 + r) * ldc + j0 + c] : 0.0f;
      }
      const size_t sC = (size_t)ldd * sizeof(float);
      if (accumulate || nc < 32) {
        _tile_loadd(0, Cd, sC);
        _tile_loadd(1, Cd + 16, sC);
        if (r2) {
          _tile_loadd(2, Cd + 16 * ldd, sC);
          _tile_loadd(3, Cd + 16 * ldd + 16, sC);
        }
      } else {
        _tile_zero(0);
        _tile_zero(1);
        if (r2) {
          _tile_zero(2);
          _tile_zero(3);
        }
      }
      for (int64_t k0 = 0; k0 < Kp; k0 += KP_AMX) {
        _tile_loadd(4, A0 + k0, (size_t)lda * 2);
        _tile_loadd(6, B + k0 * 32, 128);
        _tile_loadd(7, B + k0 * 32 + 32, 128);
        _tile_dpbf16ps(0, 4, 6);
        _tile_dpbf16ps(1, 4, 7);
        if (r2) {
          _tile_loadd(5, A1 + k0, (size_t)lda * 2);
          _tile_dpbf16ps(2, 5, 6);
          _tile_dpbf16ps(3, 5, 7);
        }
      }
      _tile_stored(0, Cd, sC);
      _tile_stored(1, Cd + 16, sC);
      if (r2) {
        _tile_stored(2, Cd + 16 * ldd, sC);
        _tile_stored(3, Cd + 16 * ldd + 16, sC);
      }
      if (!accumulate && alpha != 1.0f) amx_scale_block(Cd, ldd, r1 + r2, alpha);
      if (nc < 32)
        for (int r = 0; r < r1 + r2; r++)
          memcpy(C + (i0 + r) * ldc + j0, scratch + r * 32, (size_t)nc * sizeof(float));
    }
  }
  _tile_release();
}

static inline int64_t pad32(int64_t n) { return (n + 31) / 32 * 32; }

AVX512 static void a_pack_k(const void *K, int64_t ldk, int64_t nj, int64_t D, void *dst) {
  b_pack_k_pad(K, ldk, nj, D, pad32(D), dst);
}
AVX512 static void a_pack_v(const void *V, int64_t ldv, int64_t nj, int64_t Dv, void *dst,
                            int64_t vps) {
  b_pack_v_pad(V, ldv, nj, Dv, pad32(nj), dst, vps);
}

AMX static void a_qk(int64_t rows, int64_t nj, int64_t D, float alpha, const void *A,
                     const void *Kp, float *S, int64_t lds) {
  const int64_t Dp = pad32(D);
  amx_gemm(rows, nj, Dp, A, Dp, Kp, Dp * 32, S, lds, false, alpha);
}

AMX static void a_pv(int64_t rows, int64_t Dv, int64_t nj, const float *P, int64_t ldp,
                     void *pscratch, const void *Vp, int64_t vps, float *O, int64_t ldo) {
  const int64_t njp = pad32(nj);
  uint16_t *Pb = pscratch;
  b_convert_p(rows, nj, njp, P, ldp, Pb);
  amx_gemm(rows, Dv, njp, Pb, njp, Vp, vps, O, ldo, true, 1.0f);
}

static const attn_tile_engine eng_amx_bf16 = {
    "amx-bf16", 2, KP_AMX, NR, b_pack_a, a_pack_k, a_pack_v, a_qk, a_pv, NULL, NULL};

#endif /* ATTN_TILE_X86 */

/* ---- selection --------------------------------------------------------------- */

static bool g_tile_blas; /* $ATTN_TILE=blas */
static pthread_once_t g_env_once = PTHREAD_ONCE_INIT;

static void env_init(void) {
  const char *t = getenv("ATTN_TILE");
  g_tile_blas = t != NULL && strcmp(t, "blas") == 0;
}

bool attn_tile_blas_forced(void) {
  pthread_once(&g_env_once, env_init);
  return g_tile_blas;
}

const attn_tile_engine *attn_tile_engine_named(const char *name) {
  if (strcmp(name, "convert-bf16") == 0) return &eng_convert_bf16;
  if (strcmp(name, "convert-f16") == 0) return &eng_convert_f16;
#ifdef ATTN_TILE_X86
  if (strcmp(name, "avx512-f32") == 0 && attn_cpu_avx512()) return &eng_avx512_f32;
  if (strcmp(name, "avx512-f32-f16") == 0 && attn_cpu_avx512()) return &eng_avx512_f32_f16;
  if (strcmp(name, "avx512-bf16") == 0 && attn_cpu_avx512_bf16()) return &eng_avx512_bf16;
  if (strcmp(name, "amx-bf16") == 0 && attn_cpu_amx()) return &eng_amx_bf16;
#endif
  return NULL;
}

const attn_tile_engine *attn_tile_engine_for(attn_dtype storage, int64_t D, int64_t Dv) {
  (void)D;
  (void)Dv;
  pthread_once(&g_env_once, env_init);
  const bool avx512 = attn_cpu_avx512();
  switch (storage) {
    case ATTN_DTYPE_BF16:
      if (attn_cpu_amx()) return attn_tile_engine_named("amx-bf16");
      return attn_cpu_avx512_bf16() ? attn_tile_engine_named("avx512-bf16") : &eng_convert_bf16;
    case ATTN_DTYPE_F16:
      return avx512 ? attn_tile_engine_named("avx512-f32-f16") : &eng_convert_f16;
    case ATTN_DTYPE_F32:
      return avx512 && !g_tile_blas ? attn_tile_engine_named("avx512-f32") : NULL;
    default:
      return NULL;
  }
}

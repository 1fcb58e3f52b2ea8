/* The machine's compute peak and the read-bandwidth probe's loop, measured,
 * not assumed. Compute: register-only loops of
 * independent multiply-adds on `threads` threads (the bench's thread count).
 *  - f32: vfmadd231ps on zmm (AVX-512F), else on ymm (AVX2+FMA), else
 *    scalar C; 16 × 16 lanes × 2 FLOPs per iteration on zmm.
 *  - bf16: vdpbf16ps on zmm where the CPU has AVX512_BF16 (16 lanes × 2
 *    pairs × 2 FLOPs per instruction), else NaN (no bf16 unit).
 * 16 accumulators cover FMA latency × issue width on current x86 cores. The
 * bench binary is built for baseline x86-64: the loops carry target
 * attributes and run only after a CPUID check. Median of reps runs of a
 * fixed iteration count (~0.1 s each). */
#define _GNU_SOURCE
#include <math.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "bench.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define PROBE_X86 1
#include <cpuid.h>
#include <immintrin.h>
#endif

#define ITERS 4000000L

typedef struct probe_arg {
  int kind; /* 0 zmm fma, 1 ymm fma, 2 scalar, 3 bf16 */
  double sink;
} probe_arg;

#ifdef PROBE_X86
__attribute__((target("avx512f"))) static double loop_zmm(void) {
  __m512 a[16];
  const __m512 x = _mm512_set1_ps(0.999999f), y = _mm512_set1_ps(1e-7f);
  for (int i = 0; i < 16; i++) a[i] = _mm512_set1_ps((float)i);
  for (long it = 0; it < ITERS; it++)
    for (int i = 0; i < 16; i++) a[i] = _mm512_fmadd_ps(a[i], x, y);
  __m512 s = a[0];
  for (int i = 1; i < 16; i++) s = _mm512_add_ps(s, a[i]);
  return _mm512_reduce_add_ps(s);
}

__attribute__((target("avx2,fma"))) static double loop_ymm(void) {
  __m256 a[12];
  const __m256 x = _mm256_set1_ps(0.999999f), y = _mm256_set1_ps(1e-7f);
  for (int i = 0; i < 12; i++) a[i] = _mm256_set1_ps((float)i);
  for (long it = 0; it < ITERS; it++)
    for (int i = 0; i < 12; i++) a[i] = _mm256_fmadd_ps(a[i], x, y);
  __m256 s = a[0];
  for (int i = 1; i < 12; i++) s = _mm256_add_ps(s, a[i]);
  float t[8];
  _mm256_storeu_ps(t, s);
  return t[0] + t[1] + t[2] + t[3] + t[4] + t[5] + t[6] + t[7];
}

__attribute__((target("avx512f,avx512bw,avx512bf16"))) static double loop_bf16(void) {
  __m512 a[16];
  const __m512bh x = (__m512bh)_mm512_set1_epi16(0x3f80); /* 1.0 */
  const __m512bh y = (__m512bh)_mm512_set1_epi16(0x3380); /* 2^-24 */
  for (int i = 0; i < 16; i++) a[i] = _mm512_set1_ps((float)i);
  for (long it = 0; it < ITERS; it++)
    for (int i = 0; i < 16; i++) a[i] = _mm512_dpbf16_ps(a[i], x, y);
  __m512 s = a[0];
  for (int i = 1; i < 16; i++) s = _mm512_add_ps(s, a[i]);
  return _mm512_reduce_add_ps(s);
}

static bool has_bf16(void) {
  unsigned a, b, c, d;
  if (!__builtin_cpu_supports("avx512f") || !__builtin_cpu_supports("avx512bw")) return false;
  if (__get_cpuid_max(0, NULL) < 7) return false;
  __cpuid_count(7, 1, a, b, c, d);
  return (a >> 5) & 1u;
}
#endif

#ifdef PROBE_X86
__attribute__((target("avx512f"))) static uint64_t read_zmm(const uint64_t *p, size_t n) {
  __m512i s0 = _mm512_setzero_si512(), s1 = s0, s2 = s0, s3 = s0;
  size_t i = 0;
  for (; i + 32 <= n; i += 32) {
    s0 = _mm512_add_epi64(s0, _mm512_loadu_si512((const void *)(p + i)));
    s1 = _mm512_add_epi64(s1, _mm512_loadu_si512((const void *)(p + i + 8)));
    s2 = _mm512_add_epi64(s2, _mm512_loadu_si512((const void *)(p + i + 16)));
    s3 = _mm512_add_epi64(s3, _mm512_loadu_si512((const void *)(p + i + 24)));
  }
  uint64_t t[8], sum = 0;
  _mm512_storeu_si512((void *)t, _mm512_add_epi64(_mm512_add_epi64(s0, s1), _mm512_add_epi64(s2, s3)));
  for (int k = 0; k < 8; k++) sum += t[k];
  for (; i < n; i++) sum += p[i];
  return sum;
}

__attribute__((target("avx2"))) static uint64_t read_ymm(const uint64_t *p, size_t n) {
  __m256i s0 = _mm256_setzero_si256(), s1 = s0, s2 = s0, s3 = s0;
  size_t i = 0;
  for (; i + 16 <= n; i += 16) {
    s0 = _mm256_add_epi64(s0, _mm256_loadu_si256((const __m256i *)(const void *)(p + i)));
    s1 = _mm256_add_epi64(s1, _mm256_loadu_si256((const __m256i *)(const void *)(p + i + 4)));
    s2 = _mm256_add_epi64(s2, _mm256_loadu_si256((const __m256i *)(const void *)(p + i + 8)));
    s3 = _mm256_add_epi64(s3, _mm256_loadu_si256((const __m256i *)(const void *)(p + i + 12)));
  }
  uint64_t t[4], sum = 0;
  _mm256_storeu_si256((__m256i *)(void *)t,
                      _mm256_add_epi64(_mm256_add_epi64(s0, s1), _mm256_add_epi64(s2, s3)));
  for (int k = 0; k < 4; k++) sum += t[k];
  for (; i < n; i++) sum += p[i];
  return sum;
}
#endif

uint64_t bench_read_sum(const uint64_t *p, size_t n) {
#ifdef PROBE_X86
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f")) return read_zmm(p, n);
  if (__builtin_cpu_supports("avx2")) return read_ymm(p, n);
#endif
  uint64_t s0 = 0, s1 = 0, s2 = 0, s3 = 0;
  size_t i = 0;
  for (; i + 4 <= n; i += 4) {
    s0 += p[i];
    s1 += p[i + 1];
    s2 += p[i + 2];
    s3 += p[i + 3];
  }
  for (; i < n; i++) s0 += p[i];
  return s0 + s1 + s2 + s3;
}

static double loop_scalar(void) {
  float a[8];
  for (int i = 0; i < 8; i++) a[i] = (float)i;
  for (long it = 0; it < ITERS / 8; it++)
    for (int i = 0; i < 8; i++) a[i] = fmaf(a[i], 0.999999f, 1e-7f);
  return a[0] + a[7];
}

static void *probe_thread(void *p) {
  probe_arg *a = p;
  switch (a->kind) {
#ifdef PROBE_X86
    case 0: a->sink = loop_zmm(); break;
    case 1: a->sink = loop_ymm(); break;
    case 3: a->sink = loop_bf16(); break;
#endif
    default: a->sink = loop_scalar(); break;
  }
  return NULL;
}

typedef struct probe_run {
  int kind, threads;
} probe_run;

static int run_probe(void *p) {
  probe_run *r = p;
  pthread_t th[64];
  probe_arg args[64];
  int n = r->threads < 1 ? 1 : r->threads < 64 ? r->threads : 64;
  for (int i = 0; i < n; i++) {
    args[i].kind = r->kind;
    if (i > 0 && pthread_create(&th[i], NULL, probe_thread, &args[i]) != 0) return 1;
  }
  probe_thread(&args[0]);
  for (int i = 1; i < n; i++) pthread_join(th[i], NULL);
  volatile double sink = 0;
  for (int i = 0; i < n; i++) sink += args[i].sink;
  (void)sink;
  return 0;
}

static double flops_per_thread(int kind) {
  switch (kind) {
    case 0: return (double)ITERS * 16 * 16 * 2;
    case 1: return (double)ITERS * 12 * 8 * 2;
    case 3: return (double)ITERS * 16 * 16 * 2 * 2;
    default: return (double)(ITERS / 8) * 8 * 2;
  }
}

static double peak(int kind, int threads, int32_t reps) {
  probe_run r = {kind, threads < 1 ? 1 : threads};
  double ms = bench_time_ms(run_probe, &r, reps);
  return flops_per_thread(kind) * r.threads / (ms * 1e6);
}

double bench_fma_peak(int threads, int32_t reps) {
#ifdef PROBE_X86
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f")) return peak(0, threads, reps);
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return peak(1, threads, reps);
#endif
  return peak(2, threads, reps);
}

double bench_bf16_peak(int threads, int32_t reps) {
#ifdef PROBE_X86
  __builtin_cpu_init();
  if (has_bf16()) return peak(3, threads, reps);
#endif
  (void)threads;
  (void)reps;
  return NAN;
}

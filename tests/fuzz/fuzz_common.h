/* Shared by the libFuzzer targets: a byte reader that turns the fuzzer's
 * input into structured choices, and a capped, counting allocator for the
 * context hooks (so "too big" is ATTN_ERR_NO_MEMORY, not an OOM kill, and
 * every iteration can check that nothing leaked). */
#ifndef ATTN_FUZZ_COMMON_H
#define ATTN_FUZZ_COMMON_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "attn/attn.h"

/* Report a broken invariant and crash, so libFuzzer saves the input. */
#define FZ_CHECK(cond, ...)                                               \
  do {                                                                    \
    if (!(cond)) {                                                        \
      fprintf(stderr, "fuzz invariant failed at %s:%d: %s\n", __FILE__, \
              __LINE__, #cond);                                           \
      fprintf(stderr, __VA_ARGS__);                                       \
      fprintf(stderr, "\n");                                              \
      abort();                                                            \
    }                                                                     \
  } while (0)

typedef struct fz {
  const uint8_t *p;
  size_t n;
} fz;

/* Exhausted input reads as zeros: every prefix of an input is valid. */
static inline uint8_t fz_u8(fz *f) {
  if (f->n == 0) return 0;
  f->n--;
  return *f->p++;
}

static inline uint64_t fz_u64(fz *f) {
  uint64_t x = 0;
  for (int i = 0; i < 8; i++) x = x << 8 | fz_u8(f);
  return x;
}

static inline bool fz_bool(fz *f) { return fz_u8(f) & 1; }

/* Uniform-ish integer in [lo, hi] (hi - lo < 2^16). */
static inline int64_t fz_range(fz *f, int64_t lo, int64_t hi) {
  uint32_t r = (uint32_t)fz_u8(f) << 8 | fz_u8(f);
  return lo + (int64_t)(r % (uint64_t)(hi - lo + 1));
}

/* An int64 that is often at an edge: small, powers of two and their
 * neighbours, the extremes, or raw bits. */
static inline int64_t fz_i64(fz *f) {
  uint8_t mode = fz_u8(f);
  switch (mode % 8) {
    case 0:
    case 1:
    case 2: return (int64_t)(mode / 8) - 3; /* -3 .. 28 */
    case 3: return fz_range(f, 0, 300);
    case 4: {
      int sh = fz_u8(f) % 63;
      int64_t v = (int64_t)1 << sh;
      int d = (int)(fz_u8(f) % 3) - 1;
      return v + d;
    }
    case 5: {
      static const int64_t edge[] = {INT64_MAX, INT64_MIN, INT64_MAX - 1, INT64_MIN + 1,
                                     INT32_MAX, (int64_t)INT32_MAX + 1, UINT32_MAX,
                                     (int64_t)1 << 40, ((int64_t)1 << 62) + 1, -1};
      return edge[fz_u8(f) % (sizeof edge / sizeof edge[0])];
    }
    case 6: return -(int64_t)fz_range(f, 0, 1 << 15);
    default: return (int64_t)fz_u64(f);
  }
}

/* A double that is often special: 0, ±tiny, NaN, ±inf, subnormal, huge. */
static inline double fz_f64(fz *f) {
  uint8_t mode = fz_u8(f);
  switch (mode % 6) {
    case 0: return (double)((int)(mode / 6) - 20) / 8.0;
    case 1: {
      static const double sp[] = {0.0, -0.0, 1e-300, 5e-324, -1.0, 1e300, -1e300};
      return sp[fz_u8(f) % 7];
    }
    case 2: return (fz_u8(f) & 1) ? __builtin_inf() : -__builtin_inf();
    case 3: return __builtin_nan("");
    case 4: return (double)fz_range(f, 1, 1000) / 100.0;
    default: {
      uint64_t bits = fz_u64(f);
      double d;
      memcpy(&d, &bits, sizeof d);
      return d;
    }
  }
}

/* ---- capped counting allocator -------------------------------------------- */

typedef struct fz_alloc {
  size_t cap;           /* requests above this fail */
  int64_t outstanding;  /* bytes */
  int64_t fail_every;   /* > 0: every fail_every-th allocation fails too */
  int64_t count;
} fz_alloc;

static inline void *fz_alloc_fn(void *user, size_t size, size_t alignment) {
  fz_alloc *a = user;
  a->count++;
  if (size > a->cap) return NULL;
  if (a->fail_every > 0 && a->count % a->fail_every == 0) return NULL;
  void *p = aligned_alloc(alignment, (size + alignment - 1) / alignment * alignment);
  if (p) a->outstanding += (int64_t)size;
  return p;
}

static inline void fz_free_fn(void *user, void *ptr, size_t size) {
  fz_alloc *a = user;
  a->outstanding -= (int64_t)size;
  free(ptr);
}

static inline attn_context *fz_context(fz_alloc *a, int32_t threads) {
  attn_context_options o;
  attn_context_options_init(&o);
  o.num_threads = threads;
  o.allocator.alloc = fz_alloc_fn;
  o.allocator.free = fz_free_fn;
  o.allocator.user_data = a;
  attn_context *ctx = NULL;
  if (attn_context_create(&o, &ctx) != ATTN_OK) abort();
  return ctx;
}

/* n contexts (threads[i] each, allocating through alloc[i]) with their
 * pools started: one plan starts a pool and its memory stays with the
 * context, so baseline[i] is what a context holds between iterations. */
static inline void fz_start_contexts(int n, const int32_t *threads, fz_alloc *alloc,
                                     attn_context **ctx, int64_t *baseline) {
  for (int i = 0; i < n; i++) {
    alloc[i].cap = (size_t)64 << 20;
    ctx[i] = fz_context(&alloc[i], threads[i]);
    static float buf[4];
    int64_t shape[4] = {1, 1, 1, 4};
    attn_tensor *t = NULL;
    attn_desc *d = NULL;
    attn_plan *p = NULL;
    if (attn_tensor_wrap(ctx[i], ATTN_DTYPE_F32, 4, shape, NULL, buf, &t) != ATTN_OK ||
        attn_desc_create(ctx[i], &d) != ATTN_OK ||
        attn_plan_create(ctx[i], d, t, t, t, t, NULL, NULL, &p) != ATTN_OK)
      abort();
    attn_plan_destroy(p);
    attn_desc_destroy(d);
    attn_tensor_destroy(t);
    baseline[i] = alloc[i].outstanding;
  }
}

static inline bool fz_status_known(attn_status st) {
  return (int)st >= (int)ATTN_OK && (int)st <= (int)ATTN_ERR_INTERNAL && st != ATTN_ERR_INTERNAL;
}

#endif

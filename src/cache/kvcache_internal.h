/* The KV cache's internal state, shared by the store (kvcache.c) and the
 * attend kernel (attend.c). */
#ifndef ATTN_KVCACHE_INTERNAL_H
#define ATTN_KVCACHE_INTERNAL_H

#include "core/internal.h"

/* Absolute positions are kept below this so that position arithmetic in the
 * mask module (aligned row ± window) can never overflow int64. */
#define ATTN_KV_MAX_POSITION ((int64_t)1 << 60)

struct attn_kvcache {
  attn_context *ctx;
  attn_dtype dtype;   /* of appended rows and of queries */
  bool bf16;          /* rows stored as bfloat16 (dtype is f32) */
  size_t es;          /* bytes per stored element */
  attn_kvcache_mode mode;
  bool grow;
  int64_t B, Hkv, Dk, Dv;
  int64_t cap;      /* rows per (b, kv head) */
  void *k, *v;      /* [B][Hkv][cap][Dk], [B][Hkv][cap][Dv], es bytes each */
  size_t k_bytes, v_bytes;
  int64_t *len;     /* [B] next position */
  int64_t *first;   /* [B] oldest stored position */
  size_t meta_bytes;
  /* Ring mode, cfg.keep_first: positions [0, keep) also live here for good,
   * [B][Hkv][keep][d], in linear row order. */
  int64_t keep;
  void *sk, *sv;
  size_t sk_bytes, sv_bytes;
};

/* The kept first positions seen as a linear cache of `keep` rows (a shallow
 * copy: same batch, heads, dims, element format). */
static inline struct attn_kvcache attn_kv_sink_view(const struct attn_kvcache *c) {
  struct attn_kvcache s = *c;
  s.k = c->sk;
  s.v = c->sv;
  s.cap = c->keep;
  s.mode = ATTN_KVCACHE_LINEAR;
  return s;
}

/* Row of position p in item b's storage. */
static inline int64_t attn_kv_row(const struct attn_kvcache *c, int64_t p) {
  return c->mode == ATTN_KVCACHE_RING ? p % c->cap : p;
}

#endif

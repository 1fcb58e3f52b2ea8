/* The KV cache's internal state, shared by the store (kvcache.c, kvstore.c)
 * and the attend kernel (attend.c). */
#ifndef ATTN_KVCACHE_INTERNAL_H
#define ATTN_KVCACHE_INTERNAL_H

#include "core/internal.h"

/* Absolute positions are kept below this so that position arithmetic in the
 * mask module (aligned row ± window) can never overflow int64. */
#define ATTN_KV_MAX_POSITION ((int64_t)1 << 60)

/* What a storage is, as data (the storage's traits row, kvstore.c): the
 * cache and the attend plan ask the row instead of branching on the enum.
 * Element-wise storages (bf16, f16) name their tensor dtype (whose traits row,
 * core/dtype.c, has the converters);
 * quantized ones (int8, int4) carry their code width and keep scales and a
 * K residual (see attn/kvcache.h). Rows are padded to `pad` elements so the
 * decode kernels read whole vectors. */
typedef struct attn_kv_store {
  const char *name;
  int bits;                       /* bits per stored element (0: the cache's dtype) */
  bool quant;                     /* int8/int4: codes + half-float scales */
  int64_t pad;                    /* rows padded to a multiple of this many elements */
  attn_dtype elem;                /* bf16/f16: its tensor dtype (converters: attn_dtype_info); else 0 */
} attn_kv_store;

/* The row of a storage value; NULL if not an attn_kvcache_storage. */
const attn_kv_store *attn_kv_store_row(attn_kvcache_storage s);

struct attn_kvcache {
  attn_context *ctx;
  attn_dtype dtype;   /* of appended rows and of queries */
  attn_kvcache_storage storage;
  const attn_kv_store *store;
  bool bf16;          /* rows stored as bfloat16 (dtype is f32) */
  size_t es;          /* bytes per stored element (native, bf16, f16; 0 for int) */
  size_t krow, vrow;  /* bytes per stored K / V row (padding included) */
  attn_kvcache_mode mode;
  bool grow;
  int64_t B, Hkv, Dk, Dv;
  int64_t cap;      /* rows per (b, kv head) */
  void *k, *v;      /* [B][Hkv][cap] rows of krow / vrow bytes */
  size_t k_bytes, v_bytes;
  /* Quantized storages: G = gs; K scales [B][Hkv][kslots][2][Dk] (scale, min
   * as halves), V scales [B][Hkv][cap][Dv/G][2], K residual [B][Hkv][G][Dk]
   * f32 holding positions [G·⌊len/G⌋, len) at index p mod G. */
  int64_t gs, ngv, kslots;
  uint16_t *ks, *vs;
  float *kres;
  size_t ks_bytes, vs_bytes, kres_bytes;
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

/* Quantized storages: the first K position of item b still in the residual. */
static inline int64_t attn_kv_qlen(const struct attn_kvcache *c, int64_t b) {
  return c->len[b] / c->gs * c->gs;
}

/* Bytes of a stored row of d elements of c's storage (padding included);
 * false on overflow. */
bool attn_kv_row_bytes(const struct attn_kvcache *c, int64_t d, size_t *bytes);
/* The group size of a quantized storage: want (cfg.group_size) if it
 * divides d_v and span (if span > 0: a ring's capacity, a paged block),
 * else ATTN_ERR_INVALID_ARG naming span_name; want 0: the largest power of
 * two ≤ ATTN_KVCACHE_DEFAULT_GROUP dividing both. */
attn_status attn_kv_pick_group(attn_context *ctx, int64_t want, int64_t d_v, int64_t span,
                               const char *span_name, int64_t *gs);

/* ---- kvstore.c: quantization and dequantization (portable, exact same
 * bytes on every CPU) ------------------------------------------------------- */

/* Quantize one V row of Dv elements (element x at src[x·stride]) into the
 * stored row and its Dv/G (scale, min) pairs. */
void attn_kv_quant_v(const struct attn_kvcache *c, const float *src, int64_t stride,
                     uint8_t *row, uint16_t *sc);
/* Quantize the G residual rows res [G][Dk] (positions of one group, in
 * order) into G stored rows (krow bytes apart) and the group's scales
 * sc [2][Dk]. */
void attn_kv_quant_k(const struct attn_kvcache *c, const float *res, uint8_t *rows,
                     uint16_t *sc);
/* Dequantize / widen stored rows of positions [p0, p0 + nj) of (b, h) into
 * dst [nj][D] (K with its residual, V with its scales); handles one ring
 * wrap. Non-native storages only. widen: the bf16 converter to use. */
void attn_kv_dequant(const struct attn_kvcache *c, bool is_k, int64_t b, int64_t h, int64_t p0,
                     int64_t nj, float *dst, attn_to_f32_fn widen);

#endif

/* The paged KV cache's internal state, shared by the store (paged.c) and the
 * attend kernels (paged_attend.c, paged_impl.inc). */
#ifndef ATTN_PAGED_INTERNAL_H
#define ATTN_PAGED_INTERNAL_H

#include "cache/kvcache_internal.h"
#include "core/internal.h"

/* Largest block size (positions per block). */
#define ATTN_PAGED_MAX_BLOCK 65536

struct attn_paged_cache {
  attn_context *ctx;
  attn_dtype dtype; /* of appended rows and of queries */
  /* The row format: the contiguous cache's, described by a one-item,
   * one-head contiguous cache (store, es, krow, vrow, gs, ngv, Dk, Dv,
   * storage, bf16). attn_paged_view() points a copy of it at a run of
   * blocks, so the contiguous cache's quantizers, dequantizer and decode
   * loops (kvstore.c, attend_q.c) read and write paged rows unchanged. */
  struct attn_kvcache fmt;
  attn_kvcache_storage storage;
  bool bf16;
  bool quant;          /* int8 / int4: scales and a K residual */
  int64_t Hkv, Dk, Dv;
  int64_t bs;          /* positions per block */
  int64_t gs;          /* quantized: positions per K scale group (divides bs) */
  int64_t nblocks;
  int64_t max_seqs;
  int64_t max_len;     /* positions per sequence at most */
  int64_t max_bps;     /* blocks per sequence at most: ⌈max_len / bs⌉ */
  size_t krow, vrow;   /* bytes per stored K / V row (padding included) */
  size_t kseg, vseg;   /* one head's rows of one block: bs·krow, bs·vrow */
  size_t ksseg, vsseg; /* one head's scales of one block, in bytes: (bs/G)·2·Dk and
                          bs·(Dv/G)·2 halves */
  size_t vbase;        /* byte offsets in the pool of the V segments, */
  size_t ksbase;       /* the K scale segments */
  size_t vsbase;       /* and the V scale segments */
  size_t block_bytes;  /* a block's bytes over all heads: Hkv·(kseg + vseg + ksseg + vsseg) */
  char *pool;          /* nblocks · block_bytes */
  size_t pool_bytes;
  int32_t *ref;        /* [nblocks] reference counts */
  int32_t *free_ids;   /* [nblocks] stack of free block ids, nfree on it */
  int64_t nfree;
  int64_t nlive;
  int64_t *len;        /* [max_seqs] length; −1 = free id */
  int32_t *table;      /* [max_seqs][max_bps] block ids */
  float *kres;         /* quantized: [max_seqs][Hkv][gs][Dk] K residual; else NULL */
  size_t meta_bytes;   /* ref + free_ids + len + table + kres, one allocation */
};

/* Pool layout, head-major: all K segments, then all V segments (then, for
 * quantized storages, the K and V scale segments in the same order),
 *   K: [H_kv][num_blocks][bs][krow],  V: [H_kv][num_blocks][bs][vrow]
 * so one kv head's rows of consecutive blocks are adjacent in memory (a
 * sequence whose blocks were handed out in order is read as one stream,
 * as from the contiguous cache). K rows of kv head h in block blk: */
static inline const char *attn_paged_k(const struct attn_paged_cache *c, int32_t blk, int64_t h) {
  return c->pool + ((size_t)h * (size_t)c->nblocks + (size_t)blk) * c->kseg;
}
/* V rows of kv head h in block blk (bs rows of vrow bytes). */
static inline const char *attn_paged_v(const struct attn_paged_cache *c, int32_t blk, int64_t h) {
  return c->pool + c->vbase + ((size_t)h * (size_t)c->nblocks + (size_t)blk) * c->vseg;
}
/* K scales [bs/G][2][Dk] and V scales [bs][Dv/G][2] of kv head h in block blk. */
static inline uint16_t *attn_paged_ks(const struct attn_paged_cache *c, int32_t blk, int64_t h) {
  return (uint16_t *)(void *)(c->pool + c->ksbase +
                              ((size_t)h * (size_t)c->nblocks + (size_t)blk) * c->ksseg);
}
static inline uint16_t *attn_paged_vs(const struct attn_paged_cache *c, int32_t blk, int64_t h) {
  return (uint16_t *)(void *)(c->pool + c->vsbase +
                              ((size_t)h * (size_t)c->nblocks + (size_t)blk) * c->vsseg);
}
/* Positions from q (< end) whose blocks follow each other in the pool
 * (ids b, b+1, ...): with the head-major layout they are one run of rows
 * for every head, readable at one base pointer. */
static inline int64_t attn_paged_run(const struct attn_paged_cache *c, const int32_t *tab,
                                     int64_t q, int64_t end) {
  const int64_t b = q / c->bs;
  int64_t stop = (b + 1) * c->bs;
  while (stop < end && tab[stop / c->bs] == tab[b] + (int32_t)(stop / c->bs - b)) stop += c->bs;
  return (stop < end ? stop : end) - q;
}
static inline const int32_t *attn_paged_table(const struct attn_paged_cache *c, int64_t seq) {
  return c->table + (size_t)(seq * c->max_bps);
}
static inline float *attn_paged_kres(const struct attn_paged_cache *c, int64_t seq, int64_t h) {
  return c->kres + (size_t)((seq * c->Hkv + h) * c->gs * c->Dk);
}

/* The blocks blk, blk + 1, .. (nrows positions from blk's first row) of kv
 * head h of sequence seq, of length len, seen as a linear contiguous cache
 * of one item and one head (*view, whose length array is *lenbuf): local
 * position x is row x of the run, absolute position base + x, and the K
 * residual is the sequence's, so quantized K groups (which never straddle
 * a block) and the residual's index p mod G line up. */
static inline void attn_paged_view(const struct attn_paged_cache *c, int64_t seq, int64_t h,
                                   int32_t blk, int64_t base, int64_t nrows, int64_t len,
                                   struct attn_kvcache *view, int64_t *lenbuf) {
  *view = c->fmt;
  view->k = (void *)(uintptr_t)attn_paged_k(c, blk, h);
  view->v = (void *)(uintptr_t)attn_paged_v(c, blk, h);
  view->cap = nrows;
  *lenbuf = len - base;
  view->len = lenbuf;
  if (c->quant) {
    view->ks = attn_paged_ks(c, blk, h);
    view->vs = attn_paged_vs(c, blk, h);
    view->kslots = attn_cdiv64(nrows, c->gs);
    view->kres = attn_paged_kres(c, seq, h);
  }
}

#endif

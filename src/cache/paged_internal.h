/* The paged KV cache's internal state, shared by the store (paged.c) and the
 * attend kernels (paged_attend.c, paged_impl.inc). */
#ifndef ATTN_PAGED_INTERNAL_H
#define ATTN_PAGED_INTERNAL_H

#include "core/internal.h"

/* Largest block size (positions per block). */
#define ATTN_PAGED_MAX_BLOCK 65536

struct attn_paged_cache {
  attn_context *ctx;
  attn_dtype dtype; /* of appended rows and of queries */
  /* Row format: the one place a storage differs. bf16 today; the quantized
   * storages of the contiguous cache (f16, int8, int4 with per-row scales)
   * become further values here, with their row bytes and a converter used
   * by the gather step of paged_impl.inc. */
  attn_kvcache_storage storage;
  bool bf16;
  size_t es;           /* bytes per stored element */
  int64_t Hkv, Dk, Dv;
  int64_t bs;          /* positions per block */
  int64_t nblocks;
  int64_t max_seqs;
  int64_t max_len;     /* positions per sequence at most */
  int64_t max_bps;     /* blocks per sequence at most: ⌈max_len / bs⌉ */
  size_t kseg, vseg;   /* one head's rows of one block: bs·Dk·es, bs·Dv·es */
  size_t vbase;        /* byte offset of the V segments in the pool */
  size_t block_bytes;  /* a block's bytes over all heads: Hkv·(kseg + vseg) */
  char *pool;          /* nblocks · block_bytes */
  size_t pool_bytes;
  int32_t *ref;        /* [nblocks] reference counts */
  int32_t *free_ids;   /* [nblocks] stack of free block ids, nfree on it */
  int64_t nfree;
  int64_t nlive;
  int64_t *len;        /* [max_seqs] length; −1 = free id */
  int32_t *table;      /* [max_seqs][max_bps] block ids */
  size_t meta_bytes;   /* ref + free_ids + len + table, one allocation */
};

/* Pool layout, head-major: all K segments, then all V segments,
 *   K: [H_kv][num_blocks][bs][d_k],  V: [H_kv][num_blocks][bs][d_v]
 * so one kv head's rows of consecutive blocks are adjacent in memory (a
 * sequence whose blocks were handed out in order is read as one stream,
 * as from the contiguous cache). K rows of kv head h in block blk: */
static inline const char *attn_paged_k(const struct attn_paged_cache *c, int32_t blk, int64_t h) {
  return c->pool + ((size_t)h * (size_t)c->nblocks + (size_t)blk) * c->kseg;
}
/* V rows of kv head h in block blk (bs rows of Dv elements). */
static inline const char *attn_paged_v(const struct attn_paged_cache *c, int32_t blk, int64_t h) {
  return c->pool + c->vbase + ((size_t)h * (size_t)c->nblocks + (size_t)blk) * c->vseg;
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

#endif

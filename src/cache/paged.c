/* The paged KV store: a pool of fixed-size blocks with reference counts, a
 * stack of free block ids, and per sequence a length and a block table.
 * Every mutating call validates everything (including how many blocks it
 * will need) before it writes, so a failing call leaves the cache as it was. */
#include <inttypes.h>
#include <stddef.h>
#include <string.h>

#include "cache/kvcache_internal.h"
#include "cache/paged_internal.h"

void attn_paged_config_init(attn_paged_config *cfg) {
  if (cfg == NULL) return;
  memset(cfg, 0, sizeof *cfg);
  cfg->struct_size = sizeof *cfg;
  cfg->heads_kv = 1;
  cfg->block_size = 64;
  cfg->max_seqs = 64;
  cfg->dtype = ATTN_DTYPE_F32;
  cfg->storage = ATTN_KVCACHE_STORE_NATIVE;
}

#define RANGE_CHECK(name, v, lo, hi)                                                       \
  do {                                                                                     \
    if ((v) < (lo) || (v) > (hi))                                                          \
      return attn_fail(ctx, ATTN_ERR_INVALID_ARG,                                          \
                       "cfg." name ": %" PRId64 " is outside [%" PRId64 ", %" PRId64 "]", \
                       (int64_t)(v), (int64_t)(lo), (int64_t)(hi));                        \
  } while (0)

attn_status attn_paged_create(attn_context *ctx, const attn_paged_config *cfg,
                              attn_paged_cache **out) {
  ATTN_CHECK_NULL(ctx, ctx);
  attn_clear_error(ctx);
  ATTN_CHECK_NULL(ctx, cfg);
  ATTN_CHECK_NULL(ctx, out);
  const size_t known = offsetof(attn_paged_config, storage) + sizeof cfg->storage;
  if (cfg->struct_size < known || cfg->struct_size > sizeof *cfg)
    return attn_fail(ctx, ATTN_ERR_INVALID_ARG,
                     "cfg.struct_size: %zu is not a size this library knows (%zu); call "
                     "attn_paged_config_init()",
                     cfg->struct_size, sizeof *cfg);
  attn_paged_config c;
  attn_paged_config_init(&c);
  memcpy(&c, cfg, cfg->struct_size);
  const int64_t i32max = INT32_MAX;
  RANGE_CHECK("heads_kv", c.heads_kv, 1, i32max);
  RANGE_CHECK("d_k", c.d_k, 1, i32max);
  RANGE_CHECK("d_v", c.d_v, 0, i32max);
  if (c.d_v == 0) c.d_v = c.d_k;
  RANGE_CHECK("block_size", c.block_size, 1, ATTN_PAGED_MAX_BLOCK);
  RANGE_CHECK("num_blocks", c.num_blocks, 1, i32max);
  RANGE_CHECK("max_seqs", c.max_seqs, 1, i32max);
  int64_t pool_pos;
  if (!attn_mul_ok(c.num_blocks, c.block_size, &pool_pos))
    return attn_fail(ctx, ATTN_ERR_OVERFLOW, "cfg: num_blocks·block_size overflows");
  RANGE_CHECK("max_seq_len", c.max_seq_len, 0, pool_pos);
  if (c.max_seq_len == 0) c.max_seq_len = pool_pos;
  if (c.dtype != ATTN_DTYPE_F32 && c.dtype != ATTN_DTYPE_F64)
    return attn_fail(ctx, ATTN_ERR_DTYPE, "cfg.dtype: %s, expected f32 or f64",
                     attn_dtype_name(c.dtype));
  const attn_kv_store *store = attn_kv_store_row(c.storage);
  if (store == NULL)
    return attn_fail(ctx, ATTN_ERR_INVALID_ARG, "cfg.storage: %d is not an attn_kvcache_storage",
                     (int)c.storage);
  if (c.storage != ATTN_KVCACHE_STORE_NATIVE && c.dtype != ATTN_DTYPE_F32)
    return attn_fail(ctx, ATTN_ERR_DTYPE, "cfg.storage: %s storage needs dtype f32 (got %s)",
                     store->name, attn_dtype_name(c.dtype));
  int64_t gs = 0;
  attn_status st;
  if (store->quant &&
      (st = attn_kv_pick_group(ctx, c.group_size, c.d_v, c.block_size, "block_size", &gs)) !=
          ATTN_OK)
    return st;

  attn_paged_cache t;
  memset(&t, 0, sizeof t);
  t.ctx = ctx;
  t.dtype = c.dtype;
  t.storage = c.storage;
  t.bf16 = c.storage == ATTN_KVCACHE_STORE_BF16;
  t.quant = store->quant;
  t.Hkv = c.heads_kv;
  t.Dk = c.d_k;
  t.Dv = c.d_v;
  t.bs = c.block_size;
  t.gs = gs;
  t.nblocks = c.num_blocks;
  t.max_seqs = c.max_seqs;
  t.max_len = c.max_seq_len;
  t.max_bps = attn_cdiv64(t.max_len, t.bs);
  /* The row format, as a contiguous cache of one item and one head. */
  attn_kvcache *f = &t.fmt;
  f->dtype = t.dtype;
  f->storage = t.storage;
  f->store = store;
  f->bf16 = t.bf16;
  f->es = store->bits == 0 ? attn_dtype_size(t.dtype) : store->quant ? 0 : 2;
  f->mode = ATTN_KVCACHE_LINEAR;
  f->B = f->Hkv = 1;
  f->Dk = t.Dk;
  f->Dv = t.Dv;
  f->gs = gs;
  f->ngv = store->quant ? t.Dv / gs : 0;
  /* Head-major pool (paged_internal.h): K segments [Hkv][nblocks] of bs
   * rows, then V segments, then (quantized) K and V scale segments. */
  const int64_t kd[3] = {t.Hkv, t.nblocks, t.bs};
  const int64_t ksd[4] = {t.Hkv, t.nblocks, store->quant ? t.bs / gs * 2 : 0, t.Dk};
  const int64_t vsd[4] = {t.Hkv, t.nblocks, t.bs, f->ngv * 2};
  size_t kall, vall, ksall, vsall;
  attn_carver meta = attn_carver_start();
  int64_t tab;
  bool ok = attn_kv_row_bytes(f, t.Dk, &t.krow) && attn_kv_row_bytes(f, t.Dv, &t.vrow) &&
            attn_bytes_ok(kd, 3, t.krow, &kall) && attn_bytes_ok(kd, 3, t.vrow, &vall) &&
            attn_bytes_ok(ksd, 4, sizeof(uint16_t), &ksall) &&
            attn_bytes_ok(vsd, 4, sizeof(uint16_t), &vsall) &&
            attn_mul_ok(t.max_seqs, t.max_bps, &tab) && kall <= SIZE_MAX - vall &&
            ksall <= SIZE_MAX - vsall && kall + vall <= SIZE_MAX - (ksall + vsall);
  if (ok) {
    attn_carve(&meta, sizeof(int32_t), t.nblocks, 1, 1);
    attn_carve(&meta, sizeof(int32_t), t.nblocks, 1, 1);
    attn_carve(&meta, sizeof(int64_t), t.max_seqs, 1, 1);
    attn_carve(&meta, sizeof(int32_t), tab, 1, 1);
    attn_carve(&meta, sizeof(float), t.max_seqs, t.Hkv, gs * t.Dk); /* K residual */
  }
  if (!ok || !meta.ok || kall + vall + ksall + vsall > (size_t)INT64_MAX)
    return attn_fail(ctx, ATTN_ERR_OVERFLOW,
                     "cfg: the pool of %" PRId64 " blocks of %" PRId64 " positions (H_kv %" PRId64
                     ", d %" PRId64 ") overflows",
                     t.nblocks, t.bs, t.Hkv, attn_max64(t.Dk, t.Dv));
  f->krow = t.krow;
  f->vrow = t.vrow;
  t.kseg = (size_t)t.bs * t.krow;
  t.vseg = (size_t)t.bs * t.vrow;
  t.ksseg = (size_t)ksd[2] * (size_t)t.Dk * sizeof(uint16_t);
  t.vsseg = (size_t)t.bs * (size_t)vsd[3] * sizeof(uint16_t);
  t.vbase = kall;
  t.ksbase = kall + vall;
  t.vsbase = t.ksbase + ksall;
  t.block_bytes = (size_t)t.Hkv * (t.kseg + t.vseg + t.ksseg + t.vsseg);
  t.pool_bytes = kall + vall + ksall + vsall;
  t.meta_bytes = (size_t)meta.bytes;

  attn_paged_cache *cache = attn_alloc(ctx, sizeof *cache);
  char *m = attn_alloc(ctx, t.meta_bytes);
  char *p = attn_calloc(ctx, t.pool_bytes);
  if (cache == NULL || m == NULL || p == NULL) {
    attn_free(ctx, p, t.pool_bytes);
    attn_free(ctx, m, t.meta_bytes);
    attn_free(ctx, cache, sizeof *cache);
    return attn_fail(ctx, ATTN_ERR_NO_MEMORY, "attn_paged_create: cannot allocate %zu bytes",
                     t.pool_bytes + t.meta_bytes);
  }
  /* Same carve as above: ref, free_ids, len, table, kres. */
  attn_carver mc = attn_carver_start();
  t.ref = (int32_t *)(void *)(m + attn_carve(&mc, sizeof(int32_t), t.nblocks, 1, 1));
  t.free_ids = (int32_t *)(void *)(m + attn_carve(&mc, sizeof(int32_t), t.nblocks, 1, 1));
  t.len = (int64_t *)(void *)(m + attn_carve(&mc, sizeof(int64_t), t.max_seqs, 1, 1));
  t.table = (int32_t *)(void *)(m + attn_carve(&mc, sizeof(int32_t), tab, 1, 1));
  const size_t res_at = attn_carve(&mc, sizeof(float), t.max_seqs, t.Hkv, gs * t.Dk);
  t.kres = t.quant ? (float *)(void *)(m + res_at) : NULL;
  if (!mc.ok || (size_t)mc.bytes > t.meta_bytes) { /* cannot happen: same parts */
    attn_free(ctx, p, t.pool_bytes);
    attn_free(ctx, m, t.meta_bytes);
    attn_free(ctx, cache, sizeof *cache);
    return attn_fail(ctx, ATTN_ERR_INTERNAL, "attn_paged_create: metadata layout");
  }
  memset(m, 0, t.meta_bytes);
  /* Free stack: block 0 on top, so fresh pools hand out ascending ids. */
  for (int64_t i = 0; i < t.nblocks; i++) t.free_ids[i] = (int32_t)(t.nblocks - 1 - i);
  t.nfree = t.nblocks;
  for (int64_t s = 0; s < t.max_seqs; s++) t.len[s] = -1;
  t.pool = p;
  *cache = t;
  *out = cache;
  return ATTN_OK;
}

void attn_paged_destroy(attn_paged_cache *cache) {
  if (cache == NULL) return;
  attn_context *ctx = cache->ctx;
  attn_free(ctx, cache->pool, cache->pool_bytes);
  attn_free(ctx, cache->ref, cache->meta_bytes);
  attn_free(ctx, cache, sizeof *cache);
}

/* ---- sequences -------------------------------------------------------------- */

static attn_status check_seq(const attn_paged_cache *c, const char *name, int64_t seq) {
  if (seq < 0 || seq >= c->max_seqs)
    return attn_fail(c->ctx, ATTN_ERR_INVALID_ARG,
                     "%s: sequence id %" PRId64 " is outside [0, max_seqs = %" PRId64 ")", name,
                     seq, c->max_seqs);
  if (c->len[seq] < 0)
    return attn_fail(c->ctx, ATTN_ERR_INVALID_ARG,
                     "%s: sequence %" PRId64 " is not live (never created, or freed)", name, seq);
  return ATTN_OK;
}

static int64_t free_seq_id(const attn_paged_cache *c) {
  for (int64_t s = 0; s < c->max_seqs; s++)
    if (c->len[s] < 0) return s;
  return -1;
}

attn_status attn_paged_seq_create(attn_paged_cache *cache, int64_t *seq) {
  if (cache == NULL) return ATTN_ERR_NULL_ARG;
  attn_context *ctx = cache->ctx;
  attn_clear_error(ctx);
  ATTN_CHECK_NULL(ctx, seq);
  const int64_t s = free_seq_id(cache);
  if (s < 0)
    return attn_fail(ctx, ATTN_ERR_CAPACITY, "cache: all %" PRId64 " sequence ids are live",
                     cache->max_seqs);
  cache->len[s] = 0;
  cache->nlive++;
  *seq = s;
  return ATTN_OK;
}

/* Drop one reference to each of the blocks [from, to) of seq's table. */
static void release_blocks(attn_paged_cache *c, int64_t seq, int64_t from, int64_t to) {
  int32_t *tab = c->table + (size_t)(seq * c->max_bps);
  for (int64_t i = to - 1; i >= from; i--) {
    const int32_t b = tab[i];
    if (--c->ref[b] == 0) c->free_ids[c->nfree++] = b;
  }
}

attn_status attn_paged_seq_free(attn_paged_cache *cache, int64_t seq) {
  if (cache == NULL) return ATTN_ERR_NULL_ARG;
  attn_context *ctx = cache->ctx;
  attn_clear_error(ctx);
  attn_status st = check_seq(cache, "seq", seq);
  if (st != ATTN_OK) return st;
  release_blocks(cache, seq, 0, attn_cdiv64(cache->len[seq], cache->bs));
  cache->len[seq] = -1;
  cache->nlive--;
  return ATTN_OK;
}

attn_status attn_paged_fork(attn_paged_cache *cache, int64_t src, int64_t *dst) {
  if (cache == NULL) return ATTN_ERR_NULL_ARG;
  attn_context *ctx = cache->ctx;
  attn_clear_error(ctx);
  ATTN_CHECK_NULL(ctx, dst);
  attn_status st = check_seq(cache, "src", src);
  if (st != ATTN_OK) return st;
  const int64_t s = free_seq_id(cache);
  if (s < 0)
    return attn_fail(ctx, ATTN_ERR_CAPACITY, "cache: all %" PRId64 " sequence ids are live",
                     cache->max_seqs);
  const int64_t nb = attn_cdiv64(cache->len[src], cache->bs);
  const int32_t *from = attn_paged_table(cache, src);
  int32_t *to = cache->table + (size_t)(s * cache->max_bps);
  for (int64_t i = 0; i < nb; i++) {
    to[i] = from[i];
    cache->ref[from[i]]++;
  }
  if (cache->quant) /* the K residual is the sequence's own */
    memcpy(attn_paged_kres(cache, s, 0), attn_paged_kres(cache, src, 0),
           (size_t)(cache->Hkv * cache->gs * cache->Dk) * sizeof(float));
  cache->len[s] = cache->len[src];
  cache->nlive++;
  *dst = s;
  return ATTN_OK;
}

/* ---- append ------------------------------------------------------------------ */

static attn_status check_new(const attn_paged_cache *c, const char *name, const attn_tensor *t,
                             int64_t d, int64_t n) {
  attn_status st = attn_check_tensor(c->ctx, name, t, 3, c->dtype);
  if (st != ATTN_OK) return st;
  const int64_t want[3] = {c->Hkv, n < 0 ? t->shape[1] : n, d};
  if (t->shape[0] != want[0] || t->shape[1] != want[1] || t->shape[2] != want[2]) {
    char buf[96];
    return attn_fail(c->ctx, ATTN_ERR_SHAPE,
                     "%s: shape %s, expected [H_kv, n, d] = [%" PRId64 ",%" PRId64 ",%" PRId64 "]",
                     name, attn_shape_str(t, buf, sizeof buf), want[0], want[1], want[2]);
  }
  if (t->strides[0] < 0 || t->strides[1] < 0 || t->strides[2] < 0)
    return attn_fail(c->ctx, ATTN_ERR_LAYOUT, "%s: negative strides are not supported", name);
  return ATTN_OK;
}

/* Store row r of src[h] (d elements, element stride sd) at dst, in an
 * element-wise storage (native, bf16, f16: the storage row's converter). */
static void store_row(const attn_paged_cache *c, char *dst, const attn_tensor *src, int64_t h,
                      int64_t r, int64_t d) {
  const size_t es = attn_dtype_size(c->dtype);
  const char *s = (const char *)src->data + (size_t)(h * src->strides[0] + r * src->strides[1]) * es;
  const int64_t sd = src->strides[2];
  const attn_dtype elem = c->fmt.store->elem;
  if (elem != 0) {
    const attn_dtype_traits *tr = attn_dtype_info(elem);
    const float *f = (const float *)(const void *)s;
    if (sd == 1 || d == 1)
      tr->from_f32(f, dst, d);
    else
      for (int64_t x = 0; x < d; x++) tr->from_f32(f + x * sd, dst + (size_t)x * tr->size, 1);
  } else if (sd == 1 || d == 1) {
    memcpy(dst, s, (size_t)d * es);
  } else if (es == 4) {
    const float *f = (const float *)(const void *)s;
    for (int64_t x = 0; x < d; x++) ((float *)(void *)dst)[x] = f[x * sd];
  } else {
    const double *f = (const double *)(const void *)s;
    for (int64_t x = 0; x < d; x++) ((double *)(void *)dst)[x] = f[x * sd];
  }
}

/* Quantized storages: position p (row r of k_new / v_new) of kv head h of
 * seq. V is quantized now; K goes to the sequence's residual, and the
 * group is quantized into its block when its last position arrives. */
static void quant_row(attn_paged_cache *c, int64_t seq, const int32_t *tab, const attn_tensor *kn,
                      const attn_tensor *vn, int64_t h, int64_t r, int64_t p) {
  const int32_t blk = tab[p / c->bs];
  const int64_t row = p % c->bs, G = c->gs, Dk = c->Dk;
  const float *vsrc = (const float *)vn->data + h * vn->strides[0] + r * vn->strides[1];
  attn_kv_quant_v(&c->fmt, vsrc, vn->strides[2],
                  (uint8_t *)attn_paged_v(c, blk, h) + (size_t)row * c->vrow,
                  attn_paged_vs(c, blk, h) + (size_t)(row * c->fmt.ngv * 2));
  const float *ksrc = (const float *)kn->data + h * kn->strides[0] + r * kn->strides[1];
  float *res = attn_paged_kres(c, seq, h), *dst = res + (p % G) * Dk;
  for (int64_t x = 0; x < Dk; x++) dst[x] = ksrc[x * kn->strides[2]];
  if ((p + 1) % G == 0) { /* the group is complete; it lies in one block */
    const int64_t r0 = row + 1 - G;
    attn_kv_quant_k(&c->fmt, res, (uint8_t *)attn_paged_k(c, blk, h) + (size_t)r0 * c->krow,
                    attn_paged_ks(c, blk, h) + (size_t)(r0 / G * 2 * Dk));
  }
}

/* Copy the first `rows` positions of block `from` into block `to`, every
 * head, rows and scales (copy-on-write of a shared last block). */
static void copy_block(attn_paged_cache *c, int32_t to, int32_t from, int64_t rows) {
  for (int64_t h = 0; h < c->Hkv; h++) {
    memcpy((char *)attn_paged_k(c, to, h), attn_paged_k(c, from, h), (size_t)rows * c->krow);
    memcpy((char *)attn_paged_v(c, to, h), attn_paged_v(c, from, h), (size_t)rows * c->vrow);
    if (c->quant) {
      memcpy(attn_paged_ks(c, to, h), attn_paged_ks(c, from, h),
             (size_t)(rows / c->gs * 2 * c->Dk) * sizeof(uint16_t));
      memcpy(attn_paged_vs(c, to, h), attn_paged_vs(c, from, h),
             (size_t)(rows * c->fmt.ngv * 2) * sizeof(uint16_t));
    }
  }
}

attn_status attn_paged_append(attn_paged_cache *cache, int64_t seq, const attn_tensor *k_new,
                              const attn_tensor *v_new) {
  if (cache == NULL) return ATTN_ERR_NULL_ARG;
  attn_context *ctx = cache->ctx;
  attn_clear_error(ctx);
  attn_status st = check_seq(cache, "seq", seq);
  if (st != ATTN_OK) return st;
  ATTN_CHECK_NULL(ctx, k_new);
  ATTN_CHECK_NULL(ctx, v_new);
  if ((st = check_new(cache, "k_new", k_new, cache->Dk, -1)) != ATTN_OK) return st;
  const int64_t n = k_new->shape[1];
  if ((st = check_new(cache, "v_new", v_new, cache->Dv, n)) != ATTN_OK) return st;
  const int64_t len = cache->len[seq], bs = cache->bs;
  if (n > cache->max_len - len)
    return attn_fail(ctx, ATTN_ERR_CAPACITY,
                     "k_new: sequence %" PRId64 " holds %" PRId64 " positions; %" PRId64
                     " more exceed max_seq_len %" PRId64,
                     seq, len, n, cache->max_len);
  if (n == 0) return ATTN_OK;
  int32_t *tab = cache->table + (size_t)(seq * cache->max_bps);
  const int64_t have = attn_cdiv64(len, bs), need = attn_cdiv64(len + n, bs);
  const bool cow = len % bs != 0 && cache->ref[tab[have - 1]] > 1;
  const int64_t blocks = need - have + (cow ? 1 : 0);
  if (blocks > cache->nfree)
    return attn_fail(ctx, ATTN_ERR_CAPACITY,
                     "k_new: sequence %" PRId64 " needs %" PRId64 " more block(s) for %" PRId64
                     " positions; the pool has %" PRId64 " free of %" PRId64,
                     seq, blocks, n, cache->nfree, cache->nblocks);
  if (cow) { /* the shared, partially filled last block: copy its rows first */
    const int32_t old = tab[have - 1], nb = cache->free_ids[--cache->nfree];
    copy_block(cache, nb, old, len % bs);
    cache->ref[old]--;
    cache->ref[nb] = 1;
    tab[have - 1] = nb;
  }
  for (int64_t i = have; i < need; i++) {
    const int32_t nb = cache->free_ids[--cache->nfree];
    cache->ref[nb] = 1;
    tab[i] = nb;
  }
  for (int64_t r = 0; r < n; r++) {
    const int64_t p = len + r;
    const int32_t blk = tab[p / bs];
    const int64_t row = p % bs;
    for (int64_t h = 0; h < cache->Hkv; h++) {
      if (cache->quant) {
        quant_row(cache, seq, tab, k_new, v_new, h, r, p);
        continue;
      }
      store_row(cache, (char *)attn_paged_k(cache, blk, h) + (size_t)row * cache->krow, k_new, h,
                r, cache->Dk);
      store_row(cache, (char *)attn_paged_v(cache, blk, h) + (size_t)row * cache->vrow, v_new, h,
                r, cache->Dv);
    }
  }
  cache->len[seq] = len + n;
  return ATTN_OK;
}

attn_status attn_paged_truncate(attn_paged_cache *cache, int64_t seq, int64_t length) {
  if (cache == NULL) return ATTN_ERR_NULL_ARG;
  attn_context *ctx = cache->ctx;
  attn_clear_error(ctx);
  attn_status st = check_seq(cache, "seq", seq);
  if (st != ATTN_OK) return st;
  if (length < 0 || length > cache->len[seq])
    return attn_fail(ctx, ATTN_ERR_INVALID_ARG,
                     "length: %" PRId64 " is outside [0, current length %" PRId64
                     "] (truncate only shortens)",
                     length, cache->len[seq]);
  /* Quantized: rolling back into a completed K group moves its kept
   * positions back into the residual, as their dequantized values (the
   * block is only read: it may be shared). */
  const int64_t len = cache->len[seq], g0 = cache->quant ? length / cache->gs * cache->gs : 0;
  if (cache->quant && length < len / cache->gs * cache->gs && length > g0) {
    const int32_t blk = attn_paged_table(cache, seq)[g0 / cache->bs];
    const int64_t base = g0 / cache->bs * cache->bs;
    for (int64_t h = 0; h < cache->Hkv; h++) {
      attn_kvcache view;
      int64_t vlen;
      attn_paged_view(cache, seq, h, blk, base, cache->bs, len, &view, &vlen);
      attn_kv_dequant(&view, true, 0, 0, g0 - base, length - g0, attn_paged_kres(cache, seq, h),
                      NULL);
    }
  }
  release_blocks(cache, seq, attn_cdiv64(length, cache->bs), attn_cdiv64(len, cache->bs));
  cache->len[seq] = length;
  return ATTN_OK;
}

/* ---- queries ----------------------------------------------------------------- */

int64_t attn_paged_seq_length(const attn_paged_cache *cache, int64_t seq) {
  return (cache && seq >= 0 && seq < cache->max_seqs) ? cache->len[seq] : -1;
}

attn_status attn_paged_block_table(const attn_paged_cache *cache, int64_t seq, int64_t *ids,
                                   int64_t cap, int64_t *count) {
  if (cache == NULL) return ATTN_ERR_NULL_ARG;
  attn_context *ctx = cache->ctx;
  attn_clear_error(ctx);
  ATTN_CHECK_NULL(ctx, count);
  attn_status st = check_seq(cache, "seq", seq);
  if (st != ATTN_OK) return st;
  if (cap < 0)
    return attn_fail(ctx, ATTN_ERR_INVALID_ARG, "cap: %" PRId64 " must be >= 0", cap);
  if (cap > 0) ATTN_CHECK_NULL(ctx, ids);
  const int64_t nb = attn_cdiv64(cache->len[seq], cache->bs);
  *count = nb;
  if (cap < nb)
    return attn_fail(ctx, ATTN_ERR_CAPACITY,
                     "cap: %" PRId64 " ids do not hold sequence %" PRId64 "'s %" PRId64 " blocks",
                     cap, seq, nb);
  const int32_t *tab = attn_paged_table(cache, seq);
  for (int64_t i = 0; i < nb; i++) ids[i] = tab[i];
  return ATTN_OK;
}

int64_t attn_paged_free_blocks(const attn_paged_cache *cache) { return cache ? cache->nfree : 0; }
int64_t attn_paged_num_blocks(const attn_paged_cache *cache) { return cache ? cache->nblocks : 0; }
int64_t attn_paged_block_size(const attn_paged_cache *cache) { return cache ? cache->bs : 0; }
int64_t attn_paged_num_seqs(const attn_paged_cache *cache) { return cache ? cache->nlive : 0; }

size_t attn_paged_memory_size(const attn_paged_cache *cache) {
  return cache ? cache->pool_bytes + cache->meta_bytes + sizeof *cache : 0;
}

size_t attn_paged_memory_used(const attn_paged_cache *cache) {
  return cache ? (size_t)(cache->nblocks - cache->nfree) * cache->block_bytes : 0;
}

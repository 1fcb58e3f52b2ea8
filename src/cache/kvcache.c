/* The KV store: per batch item a run of absolute positions [first, len),
 * rows in [B][H_kv][capacity][d] storage (ring mode: position p in row
 * p mod capacity). Every mutating call validates everything first and only
 * then writes, so a failing call leaves the cache as it was. */
#include <inttypes.h>
#include <stddef.h>
#include <string.h>

#include "cache/kvcache_internal.h"

/* libattn 0.1's attn_kvcache_config ended at `storage`: binaries built
 * against 0.1 headers allocate only that much. */
#define KVCACHE_CONFIG_SIZE_0_1 (offsetof(attn_kvcache_config, storage) + sizeof(attn_kvcache_storage))

/* The defaults, in the first `size` bytes (every non-zero default lies in
 * 0.1's part; later fields default to 0). */
static void config_defaults(attn_kvcache_config *cfg, size_t size) {
  if (cfg == NULL) return;
  memset(cfg, 0, size);
  cfg->struct_size = size;
  cfg->batch = 1;
  cfg->heads_kv = 1;
  cfg->dtype = ATTN_DTYPE_F32;
  cfg->mode = ATTN_KVCACHE_LINEAR;
}

/* attn_kvcache_config_init is versioned (docs/design.md, "Growing a public
 * struct"): binaries linked against 0.1 keep calling ATTN_0.1's version,
 * which writes 0.1's 64 bytes, not today's sizeof (writing the whole struct
 * would run past the caller's). New binaries bind to ATTN_0.2's. Where
 * symbol versions do not exist (static library users compile against the
 * headers they link with), the plain name is the current version. */
#if defined(__ELF__) && defined(ATTN_BUILDING_SHARED) && !defined(ATTN_NO_SYMVER)
ATTN_API void attn_kvcache_config_init_v0_1(attn_kvcache_config *cfg);
ATTN_API void attn_kvcache_config_init_v0_2(attn_kvcache_config *cfg);
__asm__(".symver attn_kvcache_config_init_v0_1, attn_kvcache_config_init@ATTN_0.1");
__asm__(".symver attn_kvcache_config_init_v0_2, attn_kvcache_config_init@@ATTN_0.2");
void attn_kvcache_config_init_v0_1(attn_kvcache_config *cfg) {
  config_defaults(cfg, KVCACHE_CONFIG_SIZE_0_1);
}
void attn_kvcache_config_init_v0_2(attn_kvcache_config *cfg) { config_defaults(cfg, sizeof *cfg); }
#else
void attn_kvcache_config_init(attn_kvcache_config *cfg) { config_defaults(cfg, sizeof *cfg); }
#endif

/* Bytes of one of K/V storage for `cap` rows of `row` bytes; false on overflow. */
static bool storage_bytes(const attn_kvcache *c, int64_t cap, size_t row, size_t *bytes) {
  const int64_t dims[3] = {c->B, c->Hkv, cap};
  return attn_bytes_ok(dims, 3, row, bytes);
}

/* K scale slots for `cap` rows: ring caches reuse slot g mod (cap / G). */
static int64_t kslots_for(const attn_kvcache *c, int64_t cap) {
  return c->mode == ATTN_KVCACHE_RING ? cap / c->gs : attn_cdiv64(cap, c->gs);
}

/* Scale bytes of a quantized cache with `cap` rows; false on overflow. */
static bool scale_bytes(const attn_kvcache *c, int64_t cap, size_t *ks, size_t *vs) {
  if (!c->store->quant) {
    *ks = *vs = 0;
    return true;
  }
  const int64_t kd[5] = {c->B, c->Hkv, kslots_for(c, cap), 2, c->Dk};
  const int64_t vd[5] = {c->B, c->Hkv, cap, c->ngv, 2};
  return attn_bytes_ok(kd, 5, sizeof(uint16_t), ks) && attn_bytes_ok(vd, 5, sizeof(uint16_t), vs);
}

attn_status attn_kvcache_create(attn_context *ctx, const attn_kvcache_config *cfg,
                                attn_kvcache **out) {
  ATTN_CHECK_NULL(ctx, ctx);
  attn_clear_error(ctx);
  ATTN_CHECK_NULL(ctx, cfg);
  ATTN_CHECK_NULL(ctx, out);
  /* v0.1 callers know every field up to `storage`. */
  if (cfg->struct_size < KVCACHE_CONFIG_SIZE_0_1 || cfg->struct_size > sizeof *cfg)
    return attn_fail(ctx, ATTN_ERR_INVALID_ARG,
                     "cfg.struct_size: %zu is not a size this library knows (%zu); call "
                     "attn_kvcache_config_init()",
                     cfg->struct_size, sizeof *cfg);
  attn_kvcache_config c;
  config_defaults(&c, sizeof c);
  memcpy(&c, cfg, cfg->struct_size);
  if (c.batch < 1)
    return attn_fail(ctx, ATTN_ERR_INVALID_ARG, "cfg.batch: %" PRId64 " must be >= 1", c.batch);
  if (c.heads_kv < 1)
    return attn_fail(ctx, ATTN_ERR_INVALID_ARG, "cfg.heads_kv: %" PRId64 " must be >= 1",
                     c.heads_kv);
  if (c.capacity < 1)
    return attn_fail(ctx, ATTN_ERR_INVALID_ARG, "cfg.capacity: %" PRId64 " must be >= 1",
                     c.capacity);
  if (c.capacity > ATTN_KV_MAX_POSITION)
    return attn_fail(ctx, ATTN_ERR_OVERFLOW, "cfg.capacity: %" PRId64 " exceeds 2^60",
                     c.capacity);
  if (c.d_k < 1)
    return attn_fail(ctx, ATTN_ERR_INVALID_ARG, "cfg.d_k: %" PRId64 " must be >= 1", c.d_k);
  if (c.d_v < 0)
    return attn_fail(ctx, ATTN_ERR_INVALID_ARG, "cfg.d_v: %" PRId64 " must be >= 1 (0 = d_k)",
                     c.d_v);
  if (c.d_v == 0) c.d_v = c.d_k;
  if (c.dtype != ATTN_DTYPE_F32 && c.dtype != ATTN_DTYPE_F64)
    return attn_fail(ctx, ATTN_ERR_DTYPE, "cfg.dtype: %s, expected f32 or f64",
                     attn_dtype_name(c.dtype));
  if (c.mode != ATTN_KVCACHE_LINEAR && c.mode != ATTN_KVCACHE_RING)
    return attn_fail(ctx, ATTN_ERR_INVALID_ARG, "cfg.mode: %d is not an attn_kvcache_mode",
                     (int)c.mode);
  const attn_kv_store *store = attn_kv_store_row(c.storage);
  if (store == NULL)
    return attn_fail(ctx, ATTN_ERR_INVALID_ARG, "cfg.storage: %d is not an attn_kvcache_storage",
                     (int)c.storage);
  if (c.storage != ATTN_KVCACHE_STORE_NATIVE && c.dtype != ATTN_DTYPE_F32)
    return attn_fail(ctx, ATTN_ERR_DTYPE, "cfg.storage: %s storage needs dtype f32 (got %s)",
                     store->name, attn_dtype_name(c.dtype));
  if (c.grow && c.mode == ATTN_KVCACHE_RING)
    return attn_fail(ctx, ATTN_ERR_INVALID_ARG,
                     "cfg.grow: a ring cache has a fixed window and cannot grow");

  int64_t gs = 0;
  attn_status st;
  if (store->quant && (st = attn_kv_pick_group(ctx, c.group_size, c.d_v,
                                          c.mode == ATTN_KVCACHE_RING ? c.capacity : 0,
                                          "the ring's capacity", &gs)) != ATTN_OK) return st;

  attn_kvcache tmp;
  memset(&tmp, 0, sizeof tmp);
  tmp.ctx = ctx;
  tmp.dtype = c.dtype;
  tmp.storage = c.storage;
  tmp.store = store;
  tmp.bf16 = c.storage == ATTN_KVCACHE_STORE_BF16;
  tmp.es = store->quant ? 0 : store->bits ? (size_t)store->bits / 8 : attn_dtype_size(c.dtype);
  tmp.gs = gs;
  tmp.mode = c.mode;
  tmp.grow = c.grow != 0;
  tmp.B = c.batch;
  tmp.Hkv = c.heads_kv;
  tmp.Dk = c.d_k;
  tmp.Dv = c.d_v;
  tmp.cap = c.capacity;
  if (store->quant) {
    tmp.ngv = tmp.Dv / gs;
    tmp.kslots = kslots_for(&tmp, tmp.cap);
  }
  int64_t two_b;
  const int64_t rdims[4] = {tmp.B, tmp.Hkv, gs, tmp.Dk};
  if (!attn_kv_row_bytes(&tmp, tmp.Dk, &tmp.krow) || !attn_kv_row_bytes(&tmp, tmp.Dv, &tmp.vrow) ||
      !storage_bytes(&tmp, tmp.cap, tmp.krow, &tmp.k_bytes) ||
      !storage_bytes(&tmp, tmp.cap, tmp.vrow, &tmp.v_bytes) ||
      !scale_bytes(&tmp, tmp.cap, &tmp.ks_bytes, &tmp.vs_bytes) ||
      !attn_bytes_ok(rdims, 4, store->quant ? sizeof(float) : 0, &tmp.kres_bytes) ||
      !attn_mul_ok(2, tmp.B, &two_b) ||
      !attn_bytes_ok(&two_b, 1, sizeof(int64_t), &tmp.meta_bytes))
    return attn_fail(ctx, ATTN_ERR_OVERFLOW,
                     "cfg: batch·heads_kv·capacity·d (%" PRId64 "·%" PRId64 "·%" PRId64
                     "·%" PRId64 ") bytes overflow",
                     tmp.B, tmp.Hkv, tmp.cap, attn_max64(tmp.Dk, tmp.Dv));

  attn_kvcache *cache = attn_alloc(ctx, sizeof *cache);
  int64_t *meta = attn_calloc(ctx, tmp.meta_bytes);
  void *k = attn_calloc(ctx, tmp.k_bytes), *v = attn_calloc(ctx, tmp.v_bytes);
  uint16_t *ks = NULL, *vs = NULL;
  float *kres = NULL;
  if (store->quant) {
    ks = attn_calloc(ctx, tmp.ks_bytes);
    vs = attn_calloc(ctx, tmp.vs_bytes);
    kres = attn_calloc(ctx, tmp.kres_bytes);
  }
  if (cache == NULL || meta == NULL || k == NULL || v == NULL ||
      (store->quant && (ks == NULL || vs == NULL || kres == NULL))) {
    attn_free(ctx, kres, tmp.kres_bytes);
    attn_free(ctx, vs, tmp.vs_bytes);
    attn_free(ctx, ks, tmp.ks_bytes);
    attn_free(ctx, v, tmp.v_bytes);
    attn_free(ctx, k, tmp.k_bytes);
    attn_free(ctx, meta, tmp.meta_bytes);
    attn_free(ctx, cache, sizeof *cache);
    return attn_fail(ctx, ATTN_ERR_NO_MEMORY, "attn_kvcache_create: cannot allocate %zu bytes",
                     tmp.k_bytes + tmp.v_bytes);
  }
  *cache = tmp;
  cache->k = k;
  cache->v = v;
  cache->ks = ks;
  cache->vs = vs;
  cache->kres = kres;
  cache->len = meta;
  cache->first = meta + tmp.B;
  *out = cache;
  return ATTN_OK;
}

attn_status attn_kvcache_set_keep_first(attn_kvcache *cache, int64_t n) {
  if (cache == NULL) return ATTN_ERR_NULL_ARG;
  attn_context *ctx = cache->ctx;
  attn_clear_error(ctx);
  if (cache->mode != ATTN_KVCACHE_RING)
    return attn_fail(ctx, ATTN_ERR_INVALID_ARG,
                     "cache: keeping the first positions needs a ring cache (this one is linear)");
  if (n > 0 && cache->store->quant)
    return attn_fail(ctx, ATTN_ERR_UNSUPPORTED,
                     "cache: keeping the first positions needs an element-wise storage (this one "
                     "is %s)",
                     cache->store->name);
  if (n < 0 || n > cache->cap)
    return attn_fail(ctx, ATTN_ERR_INVALID_ARG, "n: %" PRId64 " is outside 0..capacity = %" PRId64,
                     n, cache->cap);
  for (int64_t b = 0; b < cache->B; b++)
    if (cache->len[b] != 0)
      return attn_fail(ctx, ATTN_ERR_INVALID_ARG,
                       "cache: batch item %" PRId64 " holds %" PRId64 " positions; set keep_first "
                       "on an empty cache",
                       b, cache->len[b]);
  size_t kb = 0, vb = 0;
  void *sk = NULL, *sv = NULL;
  if (n > 0) { /* n ≤ capacity: the sizes cannot overflow where the ring's did not */
    storage_bytes(cache, n, cache->krow, &kb);
    storage_bytes(cache, n, cache->vrow, &vb);
    sk = attn_calloc(ctx, kb);
    sv = attn_calloc(ctx, vb);
    if (sk == NULL || sv == NULL) {
      attn_free(ctx, sk, kb);
      attn_free(ctx, sv, vb);
      return attn_fail(ctx, ATTN_ERR_NO_MEMORY,
                       "attn_kvcache_set_keep_first: cannot allocate %zu bytes", kb + vb);
    }
  }
  attn_free(ctx, cache->sk, cache->sk_bytes);
  attn_free(ctx, cache->sv, cache->sv_bytes);
  cache->sk = sk;
  cache->sv = sv;
  cache->sk_bytes = kb;
  cache->sv_bytes = vb;
  cache->keep = n;
  return ATTN_OK;
}

void attn_kvcache_destroy(attn_kvcache *cache) {
  if (cache == NULL) return;
  attn_context *ctx = cache->ctx;
  attn_free(ctx, cache->k, cache->k_bytes);
  attn_free(ctx, cache->v, cache->v_bytes);
  attn_free(ctx, cache->ks, cache->ks_bytes);
  attn_free(ctx, cache->vs, cache->vs_bytes);
  attn_free(ctx, cache->kres, cache->kres_bytes);
  attn_free(ctx, cache->sk, cache->sk_bytes);
  attn_free(ctx, cache->sv, cache->sv_bytes);
  attn_free(ctx, cache->len, cache->meta_bytes);
  attn_free(ctx, cache, sizeof *cache);
}

/* ---- append ------------------------------------------------------------------ */

static attn_status check_new(const attn_kvcache *c, const char *name, const attn_tensor *t,
                             int64_t d, int64_t n) {
  attn_status st = attn_check_tensor(c->ctx, name, t, 4, c->dtype);
  if (st != ATTN_OK) return st;
  const int64_t want[4] = {c->B, c->Hkv, n < 0 ? t->shape[2] : n, d};
  if (t->shape[0] != want[0] || t->shape[1] != want[1] || t->shape[2] != want[2] ||
      t->shape[3] != want[3]) {
    char buf[96];
    return attn_fail(c->ctx, ATTN_ERR_SHAPE,
                     "%s: shape %s, expected [B, H_kv, n, d] = [%" PRId64 ",%" PRId64 ",%" PRId64
                     ",%" PRId64 "]",
                     name, attn_shape_str(t, buf, sizeof buf), want[0], want[1], want[2], want[3]);
  }
  return ATTN_OK;
}

/* Copy rows [r0, r0 + nr) of src[b, h] to storage rows starting at position
 * p (element-wise storages; quantized ones go through quant_rows). */
static void copy_rows(const attn_kvcache *c, void *dst_base, size_t rb, int64_t d,
                      const attn_tensor *src, int64_t b, int64_t h, int64_t r0, int64_t nr,
                      int64_t p) {
  const size_t es = attn_dtype_size(c->dtype);
  char *dst = (char *)dst_base + (size_t)((b * c->Hkv + h) * c->cap) * rb;
  const char *s = (const char *)src->data;
  for (int64_t r = 0; r < nr; r++) {
    char *row = dst + (size_t)attn_kv_row(c, p + r) * rb;
    const char *srow = s + (size_t)attn_off4(src, b, h, r0 + r, 0) * es;
    const attn_dtype_traits *elem = c->store->elem != 0 ? attn_dtype_info(c->store->elem) : NULL;
    if (elem != NULL) { /* bf16, f16: the storage row's converter */
      const float *f = (const float *)(const void *)srow;
      if (src->strides[3] == 1 || d == 1)
        elem->from_f32(f, row, d);
      else
        for (int64_t x = 0; x < d; x++) elem->from_f32(f + x * src->strides[3], row + (size_t)x * elem->size, 1);
    } else if (src->strides[3] == 1 || d == 1) {
      memmove(row, srow, (size_t)d * es);
    } else if (es == 4) {
      for (int64_t x = 0; x < d; x++)
        ((float *)(void *)row)[x] = ((const float *)(const void *)srow)[x * src->strides[3]];
    } else {
      for (int64_t x = 0; x < d; x++)
        ((double *)(void *)row)[x] = ((const double *)(const void *)srow)[x * src->strides[3]];
    }
  }
}

/* Quantized storages: positions p .. p + nr − 1 of (b, h) from rows
 * r0.. of k_new/v_new. V rows are quantized now; K rows go to the residual
 * and each group is quantized when its last position arrives. */
static void quant_rows(attn_kvcache *c, const attn_tensor *kn, const attn_tensor *vn, int64_t b,
                       int64_t h, int64_t r0, int64_t nr, int64_t p) {
  const int64_t bh = b * c->Hkv + h, G = c->gs, Dk = c->Dk;
  uint8_t *kb = (uint8_t *)c->k + (size_t)(bh * c->cap) * c->krow;
  uint8_t *vb = (uint8_t *)c->v + (size_t)(bh * c->cap) * c->vrow;
  float *res = c->kres + (size_t)(bh * G * Dk);
  const float *ks = kn->data, *vs = vn->data;
  for (int64_t r = 0; r < nr; r++) {
    const int64_t pos = p + r, row = attn_kv_row(c, pos);
    attn_kv_quant_v(c, vs + attn_off4(vn, b, h, r0 + r, 0), vn->strides[3],
                    vb + (size_t)row * c->vrow, c->vs + (size_t)((bh * c->cap + row) * c->ngv) * 2);
    const float *kr = ks + attn_off4(kn, b, h, r0 + r, 0);
    float *dst = res + (pos % G) * Dk;
    for (int64_t x = 0; x < Dk; x++) dst[x] = kr[x * kn->strides[3]];
    if ((pos + 1) % G == 0) /* the group is complete; it never wraps */
      attn_kv_quant_k(c, res, kb + (size_t)attn_kv_row(c, pos + 1 - G) * c->krow,
                      c->ks + (size_t)((bh * c->kslots + (pos / G) % c->kslots) * 2 * Dk));
  }
}

/* Linear mode with growth: reallocate K and V to at least `need` rows,
 * keeping rows [0, len_b). */
static attn_status grow_to(attn_kvcache *c, int64_t need) {
  attn_context *ctx = c->ctx;
  int64_t cap = c->cap;
  int64_t doubled = cap <= ATTN_KV_MAX_POSITION / 2 ? 2 * cap : ATTN_KV_MAX_POSITION;
  int64_t new_cap = need > doubled ? need : doubled;
  size_t kb, vb, ksb, vsb;
  if (!storage_bytes(c, new_cap, c->krow, &kb) || !storage_bytes(c, new_cap, c->vrow, &vb) ||
      !scale_bytes(c, new_cap, &ksb, &vsb)) {
    new_cap = need; /* doubling overflows: try exactly what is needed */
    if (!storage_bytes(c, new_cap, c->krow, &kb) || !storage_bytes(c, new_cap, c->vrow, &vb) ||
        !scale_bytes(c, new_cap, &ksb, &vsb))
      return attn_fail(ctx, ATTN_ERR_OVERFLOW,
                       "k_new: growing the cache to %" PRId64 " positions overflows", need);
  }
  char *k = attn_alloc(ctx, kb), *v = attn_alloc(ctx, vb);
  uint16_t *ks = NULL, *vs = NULL;
  if (c->store->quant) {
    ks = attn_calloc(ctx, ksb);
    vs = attn_calloc(ctx, vsb);
  }
  if (k == NULL || v == NULL || (c->store->quant && (ks == NULL || vs == NULL))) {
    attn_free(ctx, k, kb);
    attn_free(ctx, v, vb);
    attn_free(ctx, ks, ksb);
    attn_free(ctx, vs, vsb);
    return attn_fail(ctx, ATTN_ERR_NO_MEMORY,
                     "k_new: cannot grow the cache to %" PRId64 " positions (%zu bytes)", new_cap,
                     kb + vb);
  }
  const int64_t new_slots = c->store->quant ? kslots_for(c, new_cap) : 0;
  for (int64_t b = 0; b < c->B; b++)
    for (int64_t h = 0; h < c->Hkv; h++) {
      size_t bh = (size_t)(b * c->Hkv + h);
      /* Rows beyond len hold zeros (or stale data), as after create. */
      memset(k + bh * (size_t)new_cap * c->krow, 0, (size_t)new_cap * c->krow);
      memset(v + bh * (size_t)new_cap * c->vrow, 0, (size_t)new_cap * c->vrow);
      memcpy(k + bh * (size_t)new_cap * c->krow, (const char *)c->k + bh * (size_t)cap * c->krow,
             (size_t)c->len[b] * c->krow);
      memcpy(v + bh * (size_t)new_cap * c->vrow, (const char *)c->v + bh * (size_t)cap * c->vrow,
             (size_t)c->len[b] * c->vrow);
      if (c->store->quant) {
        const size_t kslot = (size_t)(2 * c->Dk), vr = (size_t)(2 * c->ngv);
        memcpy(ks + bh * (size_t)new_slots * kslot, c->ks + bh * (size_t)c->kslots * kslot,
               (size_t)c->kslots * kslot * sizeof *ks);
        memcpy(vs + bh * (size_t)new_cap * vr, c->vs + bh * (size_t)cap * vr,
               (size_t)c->len[b] * vr * sizeof *vs);
      }
    }
  attn_free(ctx, c->k, c->k_bytes);
  attn_free(ctx, c->v, c->v_bytes);
  if (c->store->quant) {
    attn_free(ctx, c->ks, c->ks_bytes);
    attn_free(ctx, c->vs, c->vs_bytes);
    c->ks = ks;
    c->vs = vs;
    c->ks_bytes = ksb;
    c->vs_bytes = vsb;
    c->kslots = new_slots;
  }
  c->k = k;
  c->v = v;
  c->k_bytes = kb;
  c->v_bytes = vb;
  c->cap = new_cap;
  return ATTN_OK;
}

attn_status attn_kvcache_append(attn_kvcache *cache, const attn_tensor *k_new,
                                const attn_tensor *v_new, const int64_t *counts) {
  if (cache == NULL) return ATTN_ERR_NULL_ARG;
  attn_context *ctx = cache->ctx;
  attn_clear_error(ctx);
  ATTN_CHECK_NULL(ctx, k_new);
  ATTN_CHECK_NULL(ctx, v_new);
  attn_status st;
  if ((st = check_new(cache, "k_new", k_new, cache->Dk, -1)) != ATTN_OK) return st;
  const int64_t n = k_new->shape[2];
  if ((st = check_new(cache, "v_new", v_new, cache->Dv, n)) != ATTN_OK) return st;

  /* Every length after the append, checked before anything is written. */
  int64_t need = 0;
  for (int64_t b = 0; b < cache->B; b++) {
    int64_t nb = counts ? counts[b] : n, end;
    if (nb < 0 || nb > n)
      return attn_fail(ctx, ATTN_ERR_INVALID_ARG,
                       "counts[%" PRId64 "]: %" PRId64 " is outside [0, n = %" PRId64 "]", b, nb, n);
    if (!attn_add_ok(cache->len[b], nb, &end) || end > ATTN_KV_MAX_POSITION)
      return attn_fail(ctx, ATTN_ERR_OVERFLOW,
                       "counts[%" PRId64 "]: position %" PRId64 " + %" PRId64 " exceeds 2^60", b,
                       cache->len[b], nb);
    if (cache->mode == ATTN_KVCACHE_LINEAR && end > cache->cap && !cache->grow)
      return attn_fail(ctx, ATTN_ERR_CAPACITY,
                       "k_new: batch item %" PRId64 " holds %" PRId64 " of %" PRId64
                       " positions; %" PRId64 " more do not fit (linear cache without growth)",
                       b, cache->len[b], cache->cap, nb);
    need = attn_max64(need, end);
  }
  if (cache->mode == ATTN_KVCACHE_LINEAR && need > cache->cap &&
      (st = grow_to(cache, need)) != ATTN_OK)
    return st;

  for (int64_t b = 0; b < cache->B; b++) {
    int64_t nb = counts ? counts[b] : n;
    if (nb == 0) continue;
    /* Ring: of more rows than fit, only the last cap are stored. */
    int64_t skip = nb > cache->cap ? nb - cache->cap : 0;
    /* Quantized: start at the skipped part's last K group boundary (or the
     * current length), so every group is complete when it is quantized;
     * the rows written too early are overwritten later in this call. */
    if (cache->store->quant && skip > 0)
      skip = attn_max64(0, (cache->len[b] + skip) / cache->gs * cache->gs - cache->len[b]);
    int64_t p = cache->len[b] + skip;
    for (int64_t h = 0; h < cache->Hkv; h++) {
      if (cache->store->quant) {
        quant_rows(cache, k_new, v_new, b, h, skip, nb - skip, p);
        continue;
      }
      copy_rows(cache, cache->k, cache->krow, cache->Dk, k_new, b, h, skip, nb - skip, p);
      copy_rows(cache, cache->v, cache->vrow, cache->Dv, v_new, b, h, skip, nb - skip, p);
    }
    /* Kept first positions: also into their own storage. */
    const int64_t nk = attn_min64(cache->len[b] + nb, cache->keep) - cache->len[b];
    if (nk > 0) {
      const attn_kvcache sink = attn_kv_sink_view(cache);
      for (int64_t h = 0; h < cache->Hkv; h++) {
        copy_rows(&sink, sink.k, cache->krow, cache->Dk, k_new, b, h, 0, nk, cache->len[b]);
        copy_rows(&sink, sink.v, cache->vrow, cache->Dv, v_new, b, h, 0, nk, cache->len[b]);
      }
    }
    cache->len[b] += nb;
    if (cache->mode == ATTN_KVCACHE_RING)
      cache->first[b] = attn_max64(cache->first[b], cache->len[b] - cache->cap);
  }
  return ATTN_OK;
}

/* ---- rollback and queries ------------------------------------------------------ */

attn_status attn_kvcache_truncate(attn_kvcache *cache, const int64_t *lengths) {
  if (cache == NULL) return ATTN_ERR_NULL_ARG;
  attn_context *ctx = cache->ctx;
  attn_clear_error(ctx);
  ATTN_CHECK_NULL(ctx, lengths);
  for (int64_t b = 0; b < cache->B; b++) {
    if (lengths[b] < 0 || lengths[b] > cache->len[b])
      return attn_fail(ctx, ATTN_ERR_INVALID_ARG,
                       "lengths[%" PRId64 "]: %" PRId64 " is outside [0, current length %" PRId64
                       "] (truncate only shortens)",
                       b, lengths[b], cache->len[b]);
    if (lengths[b] > 0 && lengths[b] < cache->first[b])
      return attn_fail(ctx, ATTN_ERR_INVALID_ARG,
                       "lengths[%" PRId64 "]: %" PRId64 " is below the oldest stored position %"
                       PRId64 " (the ring cache has overwritten older rows)",
                       b, lengths[b], cache->first[b]);
  }
  for (int64_t b = 0; b < cache->B; b++) {
    /* Quantized: rolling back into a completed K group moves its kept
     * positions back into the residual, as their dequantized values. */
    const int64_t l = lengths[b], g0 = l / (cache->gs ? cache->gs : 1) * cache->gs;
    if (cache->store->quant && l < attn_kv_qlen(cache, b) && l > g0)
      for (int64_t h = 0; h < cache->Hkv; h++)
        attn_kv_dequant(cache, true, b, h, g0, l - g0,
                        cache->kres + (size_t)(((b * cache->Hkv + h) * cache->gs) * cache->Dk),
                        NULL);
    cache->len[b] = lengths[b];
    if (lengths[b] == 0) cache->first[b] = 0; /* empty: nothing evicted is needed */
  }
  return ATTN_OK;
}

int64_t attn_kvcache_length(const attn_kvcache *cache, int64_t b) {
  return (cache && b >= 0 && b < cache->B) ? cache->len[b] : -1;
}

int64_t attn_kvcache_first(const attn_kvcache *cache, int64_t b) {
  return (cache && b >= 0 && b < cache->B) ? cache->first[b] : -1;
}

int64_t attn_kvcache_capacity(const attn_kvcache *cache) { return cache ? cache->cap : 0; }

size_t attn_kvcache_memory_size(const attn_kvcache *cache) {
  if (cache == NULL) return 0;
  return cache->k_bytes + cache->v_bytes + cache->ks_bytes + cache->vs_bytes +
         cache->kres_bytes + cache->sk_bytes + cache->sv_bytes + cache->meta_bytes +
         sizeof *cache;
}

attn_status attn_kvcache_view(attn_kvcache *cache, attn_tensor **k, attn_tensor **v) {
  if (cache == NULL) return ATTN_ERR_NULL_ARG;
  attn_context *ctx = cache->ctx;
  attn_clear_error(ctx);
  ATTN_CHECK_NULL(ctx, k);
  ATTN_CHECK_NULL(ctx, v);
  if (cache->storage != ATTN_KVCACHE_STORE_NATIVE)
    return attn_fail(ctx, ATTN_ERR_UNSUPPORTED,
                     "cache: stores %s, which attn_tensor cannot describe as floats; use "
                     "attn_kvcache_view_raw()",
                     cache->store->name);
  const int64_t ks[4] = {cache->B, cache->Hkv, cache->cap, cache->Dk};
  const int64_t vs[4] = {cache->B, cache->Hkv, cache->cap, cache->Dv};
  attn_tensor *tk = NULL, *tv = NULL;
  attn_status st = attn_tensor_wrap(ctx, cache->dtype, 4, ks, NULL, cache->k, &tk);
  if (st != ATTN_OK) return st;
  if ((st = attn_tensor_wrap(ctx, cache->dtype, 4, vs, NULL, cache->v, &tv)) != ATTN_OK) {
    attn_tensor_destroy(tk);
    return st;
  }
  *k = tk;
  *v = tv;
  return ATTN_OK;
}

void attn_kvcache_raw_init(attn_kvcache_raw *raw) {
  if (raw == NULL) return;
  memset(raw, 0, sizeof *raw);
  raw->struct_size = sizeof *raw;
}

attn_status attn_kvcache_view_raw(const attn_kvcache *cache, attn_kvcache_raw *raw) {
  if (cache == NULL) return ATTN_ERR_NULL_ARG;
  attn_context *ctx = cache->ctx;
  attn_clear_error(ctx);
  ATTN_CHECK_NULL(ctx, raw);
  if (raw->struct_size != sizeof *raw)
    return attn_fail(ctx, ATTN_ERR_INVALID_ARG,
                     "raw.struct_size: %zu is not a size this library knows (%zu); call "
                     "attn_kvcache_raw_init()",
                     raw->struct_size, sizeof *raw);
  attn_kvcache_raw r;
  attn_kvcache_raw_init(&r);
  r.storage = cache->storage;
  r.dtype = cache->dtype;
  r.batch = cache->B;
  r.heads_kv = cache->Hkv;
  r.capacity = cache->cap;
  r.d_k = cache->Dk;
  r.d_v = cache->Dv;
  r.group_size = cache->gs;
  r.k_row_bytes = (int64_t)cache->krow;
  r.v_row_bytes = (int64_t)cache->vrow;
  r.k = cache->k;
  r.v = cache->v;
  r.k_groups = cache->kslots;
  r.k_scales = cache->ks;
  r.v_scales = cache->vs;
  r.k_residual = cache->kres;
  r.total_bytes = (int64_t)(cache->k_bytes + cache->v_bytes + cache->ks_bytes + cache->vs_bytes +
                            cache->kres_bytes);
  *raw = r;
  return ATTN_OK;
}

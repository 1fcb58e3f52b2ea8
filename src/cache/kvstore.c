/* The KV cache's storages as data (attn_kv_store rows) and the portable
 * quantizers: every byte a quantized cache holds is computed here, with the
 * same arithmetic on every CPU, once per token (see attn/kvcache.h). */
#include <inttypes.h>
#include <math.h>
#include <string.h>

#include "cache/kvcache_internal.h"

static const attn_kv_store stores[] = {
    [ATTN_KVCACHE_STORE_NATIVE] = {"native", 0, false, 1, (attn_dtype)0},
    [ATTN_KVCACHE_STORE_BF16] = {"bf16", 16, false, 1, ATTN_DTYPE_BF16},
    [ATTN_KVCACHE_STORE_F16] = {"f16", 16, false, 16, ATTN_DTYPE_F16},
    [ATTN_KVCACHE_STORE_INT8] = {"int8", 8, true, 32, (attn_dtype)0},
    [ATTN_KVCACHE_STORE_INT4] = {"int4", 4, true, 32, (attn_dtype)0},
};

const attn_kv_store *attn_kv_store_row(attn_kvcache_storage s) {
  if ((int)s < 0 || (size_t)s >= sizeof stores / sizeof stores[0]) return NULL;
  return &stores[s];
}

bool attn_kv_row_bytes(const attn_kvcache *c, int64_t d, size_t *bytes) {
  int64_t padded;
  if (!attn_mul_ok(attn_cdiv64(d, c->store->pad), c->store->pad, &padded)) return false;
  if (c->store->bits == 0) return attn_bytes_ok(&padded, 1, attn_dtype_size(c->dtype), bytes);
  int64_t bits;
  if (!attn_mul_ok(padded, c->store->bits, &bits)) return false;
  const int64_t n = bits / 8;
  return attn_bytes_ok(&n, 1, 1, bytes);
}

attn_status attn_kv_pick_group(attn_context *ctx, int64_t want, int64_t d_v, int64_t span,
                               const char *span_name, int64_t *gs) {
  if (want < 0)
    return attn_fail(ctx, ATTN_ERR_INVALID_ARG, "cfg.group_size: %" PRId64 " must be >= 0", want);
  if (want == 0) {
    int64_t g = ATTN_KVCACHE_DEFAULT_GROUP;
    while (g > 1 && (d_v % g != 0 || (span > 0 && span % g != 0))) g /= 2;
    *gs = g;
    return ATTN_OK;
  }
  if (d_v % want != 0)
    return attn_fail(ctx, ATTN_ERR_INVALID_ARG,
                     "cfg.group_size: %" PRId64 " does not divide d_v = %" PRId64, want, d_v);
  if (span > 0 && span % want != 0)
    return attn_fail(ctx, ATTN_ERR_INVALID_ARG,
                     "cfg.group_size: %" PRId64 " does not divide %s %" PRId64
                     " (a K scale group must not straddle it)",
                     want, span_name, span);
  *gs = want;
  return ATTN_OK;
}

/* Code range of a quantized storage: 0..levels. */
static inline float levels_of(const attn_kvcache *c) { return c->store->bits == 8 ? 255.0f : 15.0f; }

/* (scale, min) of a group with range [mn, mx] as halves; *s, *m their f32
 * values (what dequantization uses, so codes are chosen against them). */
static void qparams(float mn, float mx, float levels, uint16_t *sh, uint16_t *mh, float *s,
                    float *m) {
  *mh = attn_f32_to_f16(mn);
  *m = attn_f16_to_f32(*mh);
  float range = mx - *m; /* from the rounded min: codes stay in range */
  *sh = attn_f32_to_f16(range / levels);
  *s = attn_f16_to_f32(*sh);
  /* Rounding the scale down could push the max past the top code: bump it. */
  if (*s > 0.0f && *s * levels < range && *sh < 0x7c00u) {
    *sh = (uint16_t)(*sh + 1u);
    *s = attn_f16_to_f32(*sh);
  }
}

static inline unsigned code_of(float x, float s, float m, float levels) {
  if (!(s > 0.0f)) return 0;
  float t = floorf((x - m) / s + 0.5f);
  if (!(t > 0.0f)) return 0; /* also NaN */
  return t > levels ? (unsigned)levels : (unsigned)t;
}

/* Store code u of element e of a row (int8: byte e; int4: see kvcache.h). */
static inline void put_code(uint8_t *row, int bits, int64_t e, unsigned u) {
  if (bits == 8) {
    row[e] = (uint8_t)u;
  } else {
    uint8_t *byte = row + e / 32 * 16 + (e & 15);
    *byte = (e & 16) ? (uint8_t)((*byte & 0x0fu) | (u << 4)) : (uint8_t)((*byte & 0xf0u) | u);
  }
}

static inline unsigned get_code(const uint8_t *row, int bits, int64_t e) {
  if (bits == 8) return row[e];
  const uint8_t byte = row[e / 32 * 16 + (e & 15)];
  return (e & 16) ? (unsigned)(byte >> 4) : (unsigned)(byte & 0x0fu);
}

void attn_kv_quant_v(const attn_kvcache *c, const float *src, int64_t stride, uint8_t *row,
                     uint16_t *sc) {
  const float levels = levels_of(c);
  const int bits = c->store->bits;
  memset(row, 0, c->vrow); /* padding codes stay 0 */
  for (int64_t g = 0; g < c->ngv; g++) {
    const int64_t x0 = g * c->gs;
    float mn = src[x0 * stride], mx = mn;
    for (int64_t x = x0 + 1; x < x0 + c->gs; x++) {
      const float v = src[x * stride];
      mn = v < mn ? v : mn;
      mx = v > mx ? v : mx;
    }
    float s, m;
    qparams(mn, mx, levels, &sc[2 * g], &sc[2 * g + 1], &s, &m);
    for (int64_t x = x0; x < x0 + c->gs; x++)
      put_code(row, bits, x, code_of(src[x * stride], s, m, levels));
  }
}

void attn_kv_quant_k(const attn_kvcache *c, const float *res, uint8_t *rows, uint16_t *sc) {
  const float levels = levels_of(c);
  const int bits = c->store->bits;
  const int64_t G = c->gs, D = c->Dk;
  for (int64_t j = 0; j < G; j++) memset(rows + (size_t)j * c->krow, 0, c->krow);
  for (int64_t x = 0; x < D; x++) {
    float mn = res[x], mx = mn;
    for (int64_t j = 1; j < G; j++) {
      const float v = res[j * D + x];
      mn = v < mn ? v : mn;
      mx = v > mx ? v : mx;
    }
    float s, m;
    qparams(mn, mx, levels, &sc[x], &sc[D + x], &s, &m);
    for (int64_t j = 0; j < G; j++)
      put_code(rows + (size_t)j * c->krow, bits, x, code_of(res[j * D + x], s, m, levels));
  }
}

/* Rows [r0, r0 + n) of (b, h) (no wrap), positions from p0, into dst. */
static void dequant_run(const attn_kvcache *c, bool is_k, int64_t b, int64_t h, int64_t r0,
                        int64_t n, int64_t p0, float *dst, attn_to_f32_fn widen) {
  const int64_t D = is_k ? c->Dk : c->Dv;
  const size_t rb = is_k ? c->krow : c->vrow;
  const int64_t bh = b * c->Hkv + h;
  const uint8_t *base = (const uint8_t *)(is_k ? c->k : c->v) + (size_t)(bh * c->cap) * rb;
  if (!c->store->quant) {
    for (int64_t j = 0; j < n; j++) widen(base + (size_t)(r0 + j) * rb, dst + j * D, D);
    return;
  }
  const int bits = c->store->bits;
  if (!is_k) { /* per row and V group: convert the pair once */
    for (int64_t j = 0; j < n; j++) {
      const uint8_t *row = base + (size_t)(r0 + j) * rb;
      const uint16_t *sc = c->vs + (size_t)((bh * c->cap + r0 + j) * c->ngv) * 2;
      for (int64_t g = 0; g < c->ngv; g++) {
        const float s = attn_f16_to_f32(sc[2 * g]), m = attn_f16_to_f32(sc[2 * g + 1]);
        for (int64_t x = g * c->gs; x < (g + 1) * c->gs; x++)
          dst[j * D + x] = s * (float)get_code(row, bits, x) + m;
      }
    }
    return;
  }
  /* K: runs of positions in one scale group (or the residual); each
   * channel's pair converted once per run. */
  const int64_t qlen = attn_kv_qlen(c, b);
  for (int64_t j = 0; j < n;) {
    const int64_t p = p0 + j;
    if (p >= qlen) {
      memcpy(dst + j * D, c->kres + (size_t)((bh * c->gs + p % c->gs) * D), (size_t)D * sizeof *dst);
      j++;
      continue;
    }
    const int64_t g = p / c->gs, run = attn_min64(n - j, attn_min64((g + 1) * c->gs, qlen) - p);
    const uint16_t *sc = c->ks + (size_t)((bh * c->kslots + g % c->kslots) * 2 * D);
    for (int64_t x = 0; x < D; x++) {
      const float s = attn_f16_to_f32(sc[x]), m = attn_f16_to_f32(sc[D + x]);
      for (int64_t i = 0; i < run; i++)
        dst[(j + i) * D + x] = s * (float)get_code(base + (size_t)(r0 + j + i) * rb, bits, x) + m;
    }
    j += run;
  }
}

void attn_kv_dequant(const attn_kvcache *c, bool is_k, int64_t b, int64_t h, int64_t p0,
                     int64_t nj, float *dst, attn_to_f32_fn widen) {
  const int64_t D = is_k ? c->Dk : c->Dv;
  const int64_t s = attn_kv_row(c, p0), a = attn_min64(nj, c->cap - s);
  if (widen == NULL && c->store->elem != 0) widen = attn_dtype_info(c->store->elem)->to_f32;
  dequant_run(c, is_k, b, h, s, a, p0, dst, widen);
  if (a < nj) dequant_run(c, is_k, b, h, 0, nj - a, p0 + a, dst + a * D, widen);
}

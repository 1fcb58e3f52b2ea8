/* libFuzzer target: the KV cache, every storage (native f32/f64, bf16, f16,
 * int8, int4). A config from the input (group sizes and dims sometimes
 * invalid, out-of-range enums), then a script of appends (counts, junk
 * data including non-finite values), rollbacks, plan creations (GQA
 * groupings, windows, ALiBi, softcap, dot scores, 1..40 queries) and
 * executes, views and raw views. Allocations sometimes fail.
 *
 * Checked: every status is known, a failing call names something in the
 * message and leaves handles untouched, lengths only change as documented
 * (a failed append or truncate changes nothing), a raw view's byte count
 * is within the cache's memory size, and nothing leaks. */
#include <math.h>

#include "core/internal.h" /* attn_clear_error */
#include "fuzz_common.h"

static fz_alloc g_alloc[2];
static attn_context *g_ctx[2];
static void *const CANARY = (void *)(uintptr_t)0xC0FFEE00u;

static attn_tensor *tensor(attn_context *ctx, attn_dtype dt, int64_t a, int64_t b, int64_t c,
                           int64_t d) {
  const int64_t s[4] = {a, b, c, d};
  attn_tensor *t = NULL;
  if (attn_tensor_create(ctx, dt, 4, s, &t) != ATTN_OK) return NULL;
  return t;
}

static void fill(attn_tensor *t, fz *f, bool finite) {
  const int64_t n = attn_tensor_numel(t);
  const bool f64 = attn_tensor_dtype(t) == ATTN_DTYPE_F64;
  const double mag = finite ? (double)(fz_u8(f) % 8) : 1.0;
  uint64_t s = fz_u64(f) | 1;
  for (int64_t i = 0; i < n; i++) {
    s ^= s << 13, s ^= s >> 7, s ^= s << 17;
    double x = ((double)(s >> 11) / 9007199254740992.0 * 2 - 1) * mag;
    if (!finite && (s & 63) == 0) x = (s & 64) ? NAN : INFINITY;
    if (f64)
      ((double *)attn_tensor_data(t))[i] = x;
    else
      ((float *)attn_tensor_data(t))[i] = (float)x;
  }
}

static void check_fail(attn_context *ctx, attn_status st, const char *what) {
  FZ_CHECK(fz_status_known(st), "%s: unknown status %d", what, (int)st);
  if (st != ATTN_OK)
    FZ_CHECK(attn_context_last_error(ctx)[0] != '\0', "%s: status %d without a message", what,
             (int)st);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (g_ctx[0] == NULL)
    for (int i = 0; i < 2; i++) {
      g_alloc[i].cap = (size_t)64 << 20;
      g_ctx[i] = fz_context(&g_alloc[i], i ? 3 : 1);
      /* The pool starts lazily and lives with the context: start it now so
       * the per-input leak check sees only what the input allocated. */
      if (attn_threadpool_ensure(g_ctx[i]) != ATTN_OK) abort();
    }
  fz in = {data, size};
  fz *f = &in;
  const int ci = fz_u8(f) & 1;
  attn_context *ctx = g_ctx[ci];
  const int64_t baseline = g_alloc[ci].outstanding;
  g_alloc[ci].fail_every = fz_u8(f) % 4 == 0 ? fz_range(f, 2, 40) : 0;
  g_alloc[ci].count = 0;

  attn_kvcache_config cfg;
  attn_kvcache_config_init(&cfg);
  cfg.batch = fz_range(f, 1, 3);
  cfg.heads_kv = fz_range(f, 1, 3);
  cfg.capacity = fz_u8(f) % 8 ? fz_range(f, 1, 300) : fz_i64(f);
  cfg.d_k = fz_u8(f) % 8 ? fz_range(f, 1, 70) : fz_i64(f);
  cfg.d_v = fz_u8(f) % 4 ? 0 : fz_range(f, -1, 70);
  cfg.dtype = fz_u8(f) % 5 ? ATTN_DTYPE_F32 : ATTN_DTYPE_F64;
  cfg.mode = (attn_kvcache_mode)(fz_u8(f) % 5 == 0 ? 7 : fz_u8(f) & 1);
  cfg.grow = cfg.mode == ATTN_KVCACHE_LINEAR && fz_bool(f);
  cfg.storage = (attn_kvcache_storage)(fz_u8(f) % 6);
  const uint8_t gsel = fz_u8(f);
  cfg.group_size = gsel % 4 == 0 ? fz_i64(f) : gsel % 4 == 1 ? 0 : (int64_t)1 << (gsel % 7);
  attn_kvcache *cache = CANARY;
  attn_clear_error(ctx);
  attn_status st = attn_kvcache_create(ctx, &cfg, &cache);
  check_fail(ctx, st, "create");
  if (st != ATTN_OK) {
    FZ_CHECK(cache == CANARY, "create failed and wrote *out");
    FZ_CHECK(g_alloc[ci].outstanding == baseline, "create failed and leaked");
    g_alloc[ci].fail_every = 0;
    return 0;
  }
  const int64_t B = cfg.batch, Hkv = cfg.heads_kv, Dk = cfg.d_k, Dv = cfg.d_v ? cfg.d_v : cfg.d_k;
  const attn_dtype dt = cfg.dtype;
  const int64_t G = fz_range(f, 1, 3), H = Hkv * G;

  for (int op = 0; op < 12 && f->n > 0; op++) {
    const uint8_t what = fz_u8(f) % 5;
    int64_t before[3];
    for (int64_t b = 0; b < B; b++) before[b] = attn_kvcache_length(cache, b);
    if (what == 0 || what == 1) { /* append */
      const int64_t n = fz_range(f, 0, 40);
      attn_tensor *k = tensor(ctx, dt, B, Hkv, n, Dk), *v = tensor(ctx, dt, B, Hkv, n, Dv);
      if (k && v) {
        const bool finite = fz_u8(f) % 8 != 0;
        fill(k, f, finite);
        fill(v, f, finite);
        int64_t counts[3];
        for (int64_t b = 0; b < B; b++) counts[b] = fz_u8(f) % 8 ? fz_range(f, 0, n) : fz_i64(f);
        attn_clear_error(ctx);
        st = attn_kvcache_append(cache, k, v, fz_bool(f) ? counts : NULL);
        check_fail(ctx, st, "append");
        if (st != ATTN_OK)
          for (int64_t b = 0; b < B; b++)
            FZ_CHECK(attn_kvcache_length(cache, b) == before[b], "failed append moved a length");
      }
      attn_tensor_destroy(k);
      attn_tensor_destroy(v);
    } else if (what == 2) { /* rollback */
      int64_t l[3];
      for (int64_t b = 0; b < B; b++)
        l[b] = fz_u8(f) % 8 ? before[b] - fz_range(f, 0, 20) : fz_i64(f);
      attn_clear_error(ctx);
      st = attn_kvcache_truncate(cache, l);
      check_fail(ctx, st, "truncate");
      for (int64_t b = 0; b < B; b++)
        FZ_CHECK(attn_kvcache_length(cache, b) == (st == ATTN_OK ? l[b] : before[b]),
                 "truncate: length %lld", (long long)attn_kvcache_length(cache, b));
    } else if (what == 3) { /* views */
      attn_tensor *k = CANARY, *v = CANARY;
      attn_clear_error(ctx);
      st = attn_kvcache_view(cache, &k, &v);
      check_fail(ctx, st, "view");
      if (st == ATTN_OK) {
        attn_tensor_destroy(k);
        attn_tensor_destroy(v);
      } else {
        FZ_CHECK(k == CANARY && v == CANARY, "failed view wrote *k/*v");
      }
      attn_kvcache_raw raw;
      attn_kvcache_raw_init(&raw);
      if (fz_u8(f) % 8 == 0) raw.struct_size = (size_t)fz_range(f, 0, 300);
      attn_clear_error(ctx);
      st = attn_kvcache_view_raw(cache, &raw);
      check_fail(ctx, st, "view_raw");
      if (st == ATTN_OK)
        FZ_CHECK(raw.total_bytes > 0 && (size_t)raw.total_bytes <= attn_kvcache_memory_size(cache),
                 "raw total_bytes %lld", (long long)raw.total_bytes);
    } else { /* plan + execute */
      const int64_t n = fz_u8(f) % 4 ? fz_range(f, 1, 3) : fz_range(f, 1, 40);
      attn_desc *d = NULL;
      attn_tensor *q = tensor(ctx, dt, B, H, n, Dk), *o = tensor(ctx, dt, B, H, n, Dv);
      const int64_t ls[3] = {B, H, n};
      attn_tensor *lse = NULL;
      if (fz_bool(f)) (void)attn_tensor_create(ctx, dt, 3, ls, &lse);
      double slopes[9];
      for (int i = 0; i < 9; i++) slopes[i] = 0.1 * (i + 1);
      if (q && o && attn_desc_create(ctx, &d) == ATTN_OK) {
        (void)attn_desc_set_causal(d, fz_bool(f) ? ATTN_CAUSAL_BOTTOM_RIGHT : ATTN_CAUSAL_NONE);
        if (fz_bool(f)) (void)attn_desc_set_window(d, fz_range(f, 0, 50), ATTN_WINDOW_UNBOUNDED);
        if (fz_bool(f)) (void)attn_desc_set_alibi(d, slopes, H);
        if (fz_bool(f)) (void)attn_desc_set_softcap(d, 1.0 + fz_range(f, 0, 30));
        if (fz_bool(f)) (void)attn_desc_set_score(d, ATTN_SCORE_DOT);
        attn_kvcache_plan *p = CANARY;
        attn_clear_error(ctx);
        st = attn_kvcache_plan_create(cache, d, q, o, lse, &p);
        check_fail(ctx, st, "plan_create");
        if (st == ATTN_OK) {
          const bool finite = fz_u8(f) % 8 != 0;
          fill(q, f, finite);
          int64_t qc[3];
          for (int64_t b = 0; b < B; b++) qc[b] = fz_range(f, 0, n);
          attn_clear_error(ctx);
          st = attn_kvcache_plan_execute(p, q, o, lse, fz_bool(f) ? qc : NULL);
          check_fail(ctx, st, "execute");
          attn_kvcache_plan_destroy(p);
        } else {
          FZ_CHECK(p == CANARY, "failed plan_create wrote *plan");
        }
      }
      attn_desc_destroy(d);
      attn_tensor_destroy(q);
      attn_tensor_destroy(o);
      attn_tensor_destroy(lse);
    }
  }
  attn_kvcache_destroy(cache);
  g_alloc[ci].fail_every = 0;
  FZ_CHECK(g_alloc[ci].outstanding == baseline, "leaked %lld bytes",
           (long long)(g_alloc[ci].outstanding - baseline));
  return 0;
}

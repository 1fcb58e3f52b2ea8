/* attn-bench case "decode": one new query per batch item (S_q = 1) against a
 * KV cache holding S_k positions: B·H query heads, H_kv key/value heads
 * (GQA when H_kv < H), head dim D. Memory-bound: the time is set by reading
 * K and V once, so the case reports the bytes one step really reads and the
 * framework turns them into GB/s and a fraction of the measured read
 * bandwidth.
 *
 * --kv-storage picks the cache's storage (f32 = native, bf16, f16, int8,
 * int4; the reduced ones need --dtype f32). The same data always goes into
 * a native cache first: max_err/mean_err are against exact attention over
 * that cache's view (the original K/V), so for the reduced storages they are
 * the storage's error, and for native a cross-check of the decode path.
 * Without --kv-storage (native) and f32, the step is also timed with bf16
 * storage (extra bf16_speedup); with a reduced storage the native cache is
 * timed too and extra is speedup_vs_f32 (same data, same process). The
 * JSON adds kv_storage and kv_bytes (the cache contents, scales included).
 * --loop (latency mode) and --mass time the reported cache (the reduced one
 * with --kv-storage); the bf16 comparison runs only without them. */
#include <math.h>
#include <stdio.h>

#include "attn/attn.h"
#include "bench.h"

typedef struct decode_run {
  attn_kvcache *cache;
  attn_kvcache_plan *plan;
  attn_desc *desc;
  attn_tensor *q, *out;
  /* --mass: a second plan with the per-key mass output */
  attn_desc *desc2;
  attn_kvcache_plan *plan2;
  attn_tensor *mass;
} decode_run;

static int decode_once(void *arg) {
  decode_run *d = arg;
  return attn_kvcache_plan_execute(d->plan, d->q, d->out, NULL, NULL) == ATTN_OK ? 0 : 1;
}

static int decode_once_mass(void *arg) {
  decode_run *d = arg;
  return attn_kvcache_plan_execute(d->plan2, d->q, d->out, NULL, NULL) == ATTN_OK ? 0 : 1;
}

/* --mass: the same step with the per-key mass [B, H, capacity]. */
static int decode_setup_mass(attn_context *ctx, const bench_opts *o, decode_run *d) {
  const int64_t shape[3] = {o->B, o->H, o->Sk};
  if (attn_tensor_create(ctx, o->dtype, 3, shape, &d->mass) != ATTN_OK ||
      attn_desc_create(ctx, &d->desc2) != ATTN_OK ||
      attn_desc_set_causal(d->desc2, ATTN_CAUSAL_BOTTOM_RIGHT) != ATTN_OK ||
      attn_desc_set_key_mass(d->desc2, d->mass) != ATTN_OK ||
      attn_kvcache_plan_create(d->cache, d->desc2, d->q, d->out, NULL, &d->plan2) != ATTN_OK)
    return 1;
  return 0;
}

static void decode_free(decode_run *d) {
  attn_kvcache_plan_destroy(d->plan2);
  attn_desc_destroy(d->desc2);
  attn_tensor_destroy(d->mass);
  attn_kvcache_plan_destroy(d->plan);
  attn_desc_destroy(d->desc);
  attn_tensor_destroy(d->out);
  attn_kvcache_destroy(d->cache);
}

/* A cache of L positions filled from kn/vn (repeated), and a decode plan. */
static int decode_setup(attn_context *ctx, const bench_opts *o, attn_kvcache_storage storage,
                        const attn_tensor *kn, const attn_tensor *vn, attn_tensor *q,
                        decode_run *d) {
  const int64_t B = o->B, Hkv = o->Hkv > 0 ? o->Hkv : o->H, L = o->Sk, D = o->D;
  const int64_t chunk = attn_tensor_dim(kn, 2);
  attn_kvcache_config cfg;
  attn_kvcache_config_init(&cfg);
  cfg.batch = B;
  cfg.heads_kv = Hkv;
  cfg.capacity = L;
  cfg.d_k = D;
  cfg.dtype = o->dtype;
  cfg.storage = storage;
  d->q = q;
  if (attn_kvcache_create(ctx, &cfg, &d->cache) != ATTN_OK) return 1;
  int64_t counts[64];
  if (B > 64) {
    fprintf(stderr, "decode: --B up to 64\n");
    return 1;
  }
  for (int64_t p = 0; p < L; p += chunk) {
    for (int64_t b = 0; b < B; b++) counts[b] = L - p < chunk ? L - p : chunk;
    if (attn_kvcache_append(d->cache, kn, vn, counts) != ATTN_OK) return 1;
  }
  d->out = bench_tensor(ctx, o->dtype, B, o->H, 1, D, 14);
  if (d->out == NULL || attn_desc_create(ctx, &d->desc) != ATTN_OK ||
      attn_desc_set_causal(d->desc, ATTN_CAUSAL_BOTTOM_RIGHT) != ATTN_OK ||
      attn_kvcache_plan_create(d->cache, d->desc, q, d->out, NULL, &d->plan) != ATTN_OK)
    return 1;
  return 0;
}

int bench_case_decode(attn_context *ctx, const bench_opts *o, bench_result *r);

/* Bytes one decode step reads from a cache of L positions (every row once,
 * with its scales; int K: the completed groups' scales and the f32 residual). */
static double step_bytes(const attn_kvcache_raw *w, int64_t L) {
  double per = (double)L * (double)(w->k_row_bytes + w->v_row_bytes);
  if (w->group_size > 0) {
    const int64_t G = w->group_size;
    per += (double)(L / G) * 2.0 * (double)w->d_k * 2.0;        /* K (scale, min) per channel */
    per += (double)L * (double)(w->d_v / G) * 2.0 * 2.0;        /* V (scale, min) per group */
    per += (double)(L % G) * (double)w->d_k * sizeof(float);    /* the K residual */
  }
  return per * (double)w->batch * (double)w->heads_kv;
}


/* Times one step of d: --mass alternates the step with and without the
 * per-key mass, three times each (ms: the mass step's best median,
 * mass_ratio over the plain step's best median); otherwise the framework's
 * timing (steady-state median, or latency mode with --loop). */
static int time_step(attn_context *ctx, const bench_opts *o, decode_run *d, bench_result *r,
                     double *ms) {
  if (!o->mass) {
    *ms = bench_time_case(decode_once, d, o, r);
    return 0;
  }
  if (decode_setup_mass(ctx, o, d) != 0) return 1;
  double with = INFINITY, without = INFINITY;
  for (int rep = 0; rep < 3; rep++) {
    double t1 = bench_time_ms(decode_once_mass, d, o->reps), t0 = bench_time_ms(decode_once, d, o->reps);
    with = t1 < with ? t1 : with;
    without = t0 < without ? t0 : without;
  }
  *ms = with;
  r->ratio = with / without;
  r->ratio_name = "mass_ratio";
  return 0;
}

int bench_case_decode(attn_context *ctx, const bench_opts *o, bench_result *r) {
  const int64_t B = o->B, H = o->H, Hkv = o->Hkv > 0 ? o->Hkv : o->H, L = o->Sk, D = o->D;
  const attn_kvcache_storage storage = (attn_kvcache_storage)o->kv_storage;
  const int64_t chunk = L < 4096 ? L : 4096; /* staging rows per append */
  int rc = 1;
  decode_run f = {0}, h = {0};
  attn_tensor *kn = bench_tensor(ctx, o->dtype, B, Hkv, chunk, D, 11);
  attn_tensor *vn = bench_tensor(ctx, o->dtype, B, Hkv, chunk, D, 12);
  attn_tensor *q = bench_tensor(ctx, o->dtype, B, H, 1, D, 13);
  attn_tensor *want = bench_tensor(ctx, o->dtype, B, H, 1, D, 15);
  attn_tensor *kv_k = NULL, *kv_v = NULL;
  attn_kvcache_raw raw;
  attn_kvcache_raw_init(&raw);
  if (kn == NULL || vn == NULL || q == NULL || want == NULL) goto done;
  if (storage != ATTN_KVCACHE_STORE_NATIVE && o->dtype != ATTN_DTYPE_F32) {
    fprintf(stderr, "decode: --kv-storage %s needs --dtype f32\n", bench_storage_name(storage, o->dtype));
    goto done;
  }
  if (decode_setup(ctx, o, ATTN_KVCACHE_STORE_NATIVE, kn, vn, q, &f) != 0) goto done;
  double native_ms;
  if (time_step(ctx, o, &f, r, &native_ms) != 0) goto done;
  r->flops = 4.0 * (double)B * (double)H * (double)L * (double)D;
  r->kv_storage = bench_storage_name(storage, o->dtype);

  /* The newest query sees every stored key: plain attention over the views. */
  if (attn_kvcache_view(f.cache, &kv_k, &kv_v) != ATTN_OK ||
      bench_exact_into(ctx, false, q, kv_k, kv_v, want) != 0)
    goto done;
  r->has_err = true;
  attn_tensor_destroy(kv_k); /* views go before their cache */
  attn_tensor_destroy(kv_v);
  kv_k = kv_v = NULL;

  if (storage == ATTN_KVCACHE_STORE_NATIVE) {
    r->ms = native_ms;
    bench_rel_error(f.out, want, &r->max_err, &r->mean_err);
    if (attn_kvcache_view_raw(f.cache, &raw) != ATTN_OK) goto done;
    r->bytes = step_bytes(&raw, L);
    r->kv_bytes = (double)raw.total_bytes;
    if (o->dtype == ATTN_DTYPE_F32 && o->loop == 0 && !o->mass) {
      decode_free(&f); /* keep one cache in memory at a time */
      f = (decode_run){0};
      if (decode_setup(ctx, o, ATTN_KVCACHE_STORE_BF16, kn, vn, q, &h) != 0) goto done;
      double ms = bench_time_ms(decode_once, &h, o->reps);
      double max_err, mean_err;
      bench_rel_error(h.out, want, &max_err, &mean_err);
      r->extra = r->ms / ms;
      r->extra_name = "bf16_speedup";
      fprintf(stderr, "decode: bf16 K/V storage %.3f ms, rel. error vs f32 exact max %.2e mean %.2e\n",
              ms, max_err, mean_err);
    }
  } else {
    decode_free(&f); /* keep one cache in memory at a time */
    f = (decode_run){0};
    if (decode_setup(ctx, o, storage, kn, vn, q, &h) != 0) goto done;
    if (time_step(ctx, o, &h, r, &r->ms) != 0) goto done;
    bench_rel_error(h.out, want, &r->max_err, &r->mean_err);
    if (attn_kvcache_view_raw(h.cache, &raw) != ATTN_OK) goto done;
    r->bytes = step_bytes(&raw, L);
    r->kv_bytes = (double)raw.total_bytes;
    r->extra = native_ms / r->ms;
    r->extra_name = "speedup_vs_f32";
  }
  rc = 0;
done:
  if (rc != 0) fprintf(stderr, "decode: %s\n", attn_context_last_error(ctx));
  attn_tensor_destroy(kv_k);
  attn_tensor_destroy(kv_v);
  decode_free(&f);
  decode_free(&h);
  attn_tensor_destroy(kn);
  attn_tensor_destroy(vn);
  attn_tensor_destroy(q);
  attn_tensor_destroy(want);
  return rc;
}

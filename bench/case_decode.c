/* attn-bench case "decode": one new query per batch item (S_q = 1) against a
 * KV cache holding S_k positions: B·H query heads, H_kv key/value heads
 * (GQA when H_kv < H), head dim D. Memory-bound: the time is set by reading
 * K and V once, so the case reports bytes = B·H_kv·S_k·2·D·sizeof(dtype)
 * and the framework turns them into GB/s and a fraction of the measured read
 * bandwidth. max_err is against the exact kernel on the same cache contents
 * (a view of the cache), so it checks the decode path on every run. */
#include <stdio.h>

#include "attn/attn.h"
#include "bench.h"

typedef struct decode_run {
  attn_kvcache_plan *plan;
  attn_tensor *q, *out;
} decode_run;

static int decode_once(void *arg) {
  decode_run *d = arg;
  return attn_kvcache_plan_execute(d->plan, d->q, d->out, NULL, NULL) == ATTN_OK ? 0 : 1;
}

int bench_case_decode(attn_context *ctx, const bench_opts *o, bench_result *r);

int bench_case_decode(attn_context *ctx, const bench_opts *o, bench_result *r) {
  const int64_t B = o->B, H = o->H, Hkv = o->Hkv > 0 ? o->Hkv : o->H, L = o->Sk, D = o->D;
  const size_t es = o->dtype == ATTN_DTYPE_F64 ? 8 : 4;
  int rc = 1;
  attn_kvcache *cache = NULL;
  attn_kvcache_plan *plan = NULL;
  attn_desc *desc = NULL;
  attn_tensor *kn = NULL, *vn = NULL, *q = NULL, *out = NULL, *want = NULL, *kv_k = NULL,
              *kv_v = NULL;
  attn_kvcache_config cfg;
  attn_kvcache_config_init(&cfg);
  cfg.batch = B;
  cfg.heads_kv = Hkv;
  cfg.capacity = L;
  cfg.d_k = D;
  cfg.dtype = o->dtype;
  if (attn_kvcache_create(ctx, &cfg, &cache) != ATTN_OK) goto done;
  /* Fill the cache in prefill-sized appends (keeps the staging tensors small). */
  const int64_t chunk = L < 4096 ? L : 4096;
  kn = bench_tensor(ctx, o->dtype, B, Hkv, chunk, D, 11);
  vn = bench_tensor(ctx, o->dtype, B, Hkv, chunk, D, 12);
  if (kn == NULL || vn == NULL) goto done;
  for (int64_t p = 0; p < L; p += chunk) {
    int64_t counts[64], nb = L - p < chunk ? L - p : chunk;
    if (B > 64) goto done;
    for (int64_t b = 0; b < B; b++) counts[b] = nb;
    if (attn_kvcache_append(cache, kn, vn, counts) != ATTN_OK) goto done;
  }
  q = bench_tensor(ctx, o->dtype, B, H, 1, D, 13);
  out = bench_tensor(ctx, o->dtype, B, H, 1, D, 14);
  want = bench_tensor(ctx, o->dtype, B, H, 1, D, 15);
  if (q == NULL || out == NULL || want == NULL) goto done;
  if (attn_desc_create(ctx, &desc) != ATTN_OK ||
      attn_desc_set_causal(desc, ATTN_CAUSAL_BOTTOM_RIGHT) != ATTN_OK ||
      attn_kvcache_plan_create(cache, desc, q, out, NULL, &plan) != ATTN_OK)
    goto done;

  decode_run run = {plan, q, out};
  r->ms = bench_time_ms(decode_once, &run, o->reps);
  r->bytes = (double)B * (double)Hkv * (double)L * 2.0 * (double)D * (double)es;
  r->flops = 4.0 * (double)B * (double)H * (double)L * (double)D;

  /* The newest query sees every stored key: plain attention over the views. */
  if (attn_kvcache_view(cache, &kv_k, &kv_v) != ATTN_OK ||
      bench_exact_into(ctx, false, q, kv_k, kv_v, want) != 0)
    goto done;
  r->has_err = true;
  bench_rel_error(out, want, &r->max_err, &r->mean_err);
  rc = 0;
done:
  if (rc != 0)
    fprintf(stderr, "decode: %s\n", attn_context_last_error(ctx));
  attn_tensor_destroy(kv_k);
  attn_tensor_destroy(kv_v);
  attn_kvcache_plan_destroy(plan);
  attn_desc_destroy(desc);
  attn_tensor_destroy(kn);
  attn_tensor_destroy(vn);
  attn_tensor_destroy(q);
  attn_tensor_destroy(out);
  attn_tensor_destroy(want);
  attn_kvcache_destroy(cache);
  return rc;
}

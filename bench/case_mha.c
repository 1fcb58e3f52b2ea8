/* attn-bench case "mha": the multi-head layer end to end (Q/K/V projections,
 * exact attention, out-projection), E = H·D, batch-first, self-attention when
 * S_q = S_k (query passed as key and value), else cross-attention; --Hkv
 * gives GQA/MQA. The shape: --S 2048 --H 8 --D 64 --B 1 (E = 512);
 * bench/compare_torch_mha.py times nn.MultiheadAttention on the same shape.
 *
 * FLOPs: the contract's dense-equivalent attention count 4·B·H·S_q·S_k·D plus
 * the projections 2·B·(2·S_q·E·E + 2·S_k·E·E_kv), so gflops measures the
 * whole layer. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "bench.h"

typedef struct mha_bench {
  attn_mha_plan *plan;
  attn_tensor *q, *kv, *out;
} mha_bench;

static int mha_run(void *arg) {
  mha_bench *m = arg;
  return attn_mha_plan_execute(m->plan, m->q, m->kv, m->kv, NULL, m->out, NULL) == ATTN_OK ? 0 : 1;
}

/* Owned contiguous tensor of any rank filled uniform in [-a, a) from seed. */
static attn_tensor *filled(attn_context *ctx, attn_dtype dt, int32_t rank, const int64_t *shape,
                           double a, uint64_t seed) {
  attn_tensor *t = NULL;
  if (attn_tensor_create(ctx, dt, rank, shape, &t) != ATTN_OK) return NULL;
  int64_t n = attn_tensor_numel(t);
  uint64_t s = seed * 0x9E3779B97F4A7C15ULL + 1;
  for (int64_t i = 0; i < n; i++) {
    s ^= s << 13;
    s ^= s >> 7;
    s ^= s << 17;
    double x = a * (2.0 * (double)(s >> 11) / 9007199254740992.0 - 1.0);
    if (dt == ATTN_DTYPE_F32)
      ((float *)attn_tensor_data(t))[i] = (float)x;
    else
      ((double *)attn_tensor_data(t))[i] = x;
  }
  return t;
}

static int case_mha(attn_context *ctx, const bench_opts *o, bench_result *r) {
  const int64_t B = o->B, H = o->H, Hkv = o->Hkv > 0 ? o->Hkv : o->H, D = o->D;
  const int64_t E = H * D, Ekv = Hkv * D, Sq = o->Sq, Sk = o->Sk;
  const bool self = Sq == Sk;
  int rc = 1;
  attn_tensor *w_in = NULL, *b_in = NULL, *w_o = NULL, *b_o = NULL, *q = NULL, *kv = NULL, *out = NULL;
  attn_mha *layer = NULL;
  attn_desc *desc = NULL;
  mha_bench m = {0};
  const int64_t s_win[2] = {E + 2 * Ekv, E}, s_bin[1] = {E + 2 * Ekv}, s_wo[2] = {E, E};
  const int64_t s_bo[1] = {E}, s_q[3] = {B, Sq, E}, s_kv[3] = {B, Sk, E};
  double a = 1.0 / sqrt((double)E);
  w_in = filled(ctx, o->dtype, 2, s_win, a, 1);
  b_in = filled(ctx, o->dtype, 1, s_bin, 0.1, 2);
  w_o = filled(ctx, o->dtype, 2, s_wo, a, 3);
  b_o = filled(ctx, o->dtype, 1, s_bo, 0.1, 4);
  q = filled(ctx, o->dtype, 3, s_q, 1.0, 5);
  kv = self ? q : filled(ctx, o->dtype, 3, s_kv, 1.0, 6);
  if (attn_tensor_create(ctx, o->dtype, 3, s_q, &out) != ATTN_OK || !w_in || !b_in || !w_o ||
      !b_o || !q || !kv) {
    fprintf(stderr, "mha: cannot allocate tensors\n");
    goto done;
  }
  attn_mha_config cfg;
  attn_mha_config_init(&cfg);
  cfg.embed_dim = E;
  cfg.num_heads = H;
  cfg.num_kv_heads = Hkv;
  cfg.batch_first = 1;
  cfg.dtype = o->dtype;
  attn_mha_weights w;
  attn_mha_weights_init(&w);
  w.in_proj_weight = w_in;
  w.in_proj_bias = b_in;
  w.out_proj_weight = w_o;
  w.out_proj_bias = b_o;
  if (attn_mha_create(ctx, &cfg, &w, &layer) != ATTN_OK || attn_desc_create(ctx, &desc) != ATTN_OK ||
      (o->causal && attn_desc_set_causal(desc, ATTN_CAUSAL_TOP_LEFT) != ATTN_OK) ||
      attn_mha_plan_create(layer, desc, q, kv, kv, NULL, out, NULL, &m.plan) != ATTN_OK) {
    fprintf(stderr, "mha: %s\n", attn_context_last_error(ctx));
    goto done;
  }
  m.q = q;
  m.kv = kv;
  m.out = out;
  r->ms = bench_time_ms(mha_run, &m, o->reps);
  if (r->ms < 0) goto done;
  r->flops = 4.0 * (double)B * (double)H * (double)Sq * (double)Sk * (double)D +
             2.0 * (double)B * (2.0 * (double)Sq * (double)E * (double)E +
                                2.0 * (double)Sk * (double)E * (double)Ekv);
  r->bytes = 0;
  r->has_err = false;
  rc = 0;
done:
  attn_mha_plan_destroy(m.plan);
  attn_desc_destroy(desc);
  attn_mha_destroy(layer);
  if (kv != q) attn_tensor_destroy(kv);
  attn_tensor_destroy(q);
  attn_tensor_destroy(out);
  attn_tensor_destroy(w_in);
  attn_tensor_destroy(b_in);
  attn_tensor_destroy(w_o);
  attn_tensor_destroy(b_o);
  return rc;
}

const bench_case bench_case_mha = {"mha", case_mha,
                                   "multi-head layer: Q/K/V projections + exact attention + out-projection"};

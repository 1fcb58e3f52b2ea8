/* Execute leaves the plan alone: one plan (and one multi-head plan) run from
 * eight threads at once through attn_plan_execute_on(), each thread with its
 * own context and workspace, gives results bitwise identical to a serial
 * attn_plan_execute() — for every kind of plan state (exact with masks,
 * sparse layouts, Performer features, Linformer projections, Swin, the
 * multi-head layer). Run under TSan by tools/ci/tsan.sh, which also checks
 * that no execute writes shared state. Plus the bad input of execute_on, and
 * the online softmax's underflow rule. */
#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "testutil.h"

#define CALLERS 8
#define ROUNDS 3

typedef struct job {
  const attn_plan *plan;
  const attn_mha_plan *mha;
  attn_tensor *q, *k, *v, *kpm;         /* shared inputs (read only) */
  attn_tensor *out[CALLERS], *lse[CALLERS];
  int32_t threads[CALLERS];
  attn_status st[CALLERS];
} job;

typedef struct caller {
  job *j;
  int id;
} caller;

static void *caller_main(void *arg) {
  caller *c = arg;
  job *j = c->j;
  attn_context *ctx = NULL;
  attn_context_options o;
  attn_context_options_init(&o);
  o.num_threads = j->threads[c->id];
  if (attn_context_create(&o, &ctx) != ATTN_OK) {
    j->st[c->id] = ATTN_ERR_NO_MEMORY;
    return NULL;
  }
  size_t need = j->plan ? attn_plan_workspace_size_on(j->plan, ctx)
                        : attn_mha_plan_workspace_size_on(j->mha, ctx);
  char *ws = malloc(need + 7);
  attn_status st = ATTN_OK;
  for (int r = 0; r < ROUNDS && st == ATTN_OK; r++) {
    /* An odd offset: the workspace needs no particular alignment. */
    if (j->plan)
      st = attn_plan_execute_on(j->plan, ctx, ws + 7, need, j->q, j->k, j->v, j->out[c->id],
                                NULL, j->lse[c->id]);
    else
      st = attn_mha_plan_execute_on(j->mha, ctx, ws + 7, need, j->q, j->k, j->v, j->kpm,
                                    j->out[c->id], NULL);
  }
  j->st[c->id] = st;
  free(ws);
  attn_context_destroy(ctx);
  return NULL;
}

/* Run the job's plan from CALLERS threads at once and compare every output
 * with ref (and ref_lse) bit for bit. */
static void run_callers(job *j, const attn_tensor *ref, const attn_tensor *ref_lse) {
  pthread_t th[CALLERS];
  caller cs[CALLERS];
  for (int i = 0; i < CALLERS; i++) {
    cs[i].j = j;
    cs[i].id = i;
    j->threads[i] = 1 + i % 3; /* 1, 2 and 3 threads per caller */
    assert_int_equal(pthread_create(&th[i], NULL, caller_main, &cs[i]), 0);
  }
  for (int i = 0; i < CALLERS; i++) pthread_join(th[i], NULL);
  const size_t n = (size_t)attn_tensor_numel(ref);
  double *want = malloc(n * sizeof *want), *got = malloc(n * sizeof *got);
  tu_read(ref, want);
  for (int i = 0; i < CALLERS; i++) {
    assert_int_equal(j->st[i], ATTN_OK);
    tu_read(j->out[i], got);
    if (memcmp(want, got, n * sizeof *got) != 0)
      fail_msg("caller %d (%d threads): output differs from the serial execute", i,
               (int)j->threads[i]);
    if (ref_lse != NULL) {
      const size_t nl = (size_t)attn_tensor_numel(ref_lse);
      double *wl = malloc(nl * sizeof *wl), *gl = malloc(nl * sizeof *gl);
      tu_read(ref_lse, wl);
      tu_read(j->lse[i], gl);
      if (memcmp(wl, gl, nl * sizeof *gl) != 0) fail_msg("caller %d: lse differs", i);
      free(wl);
      free(gl);
    }
  }
  free(want);
  free(got);
}

typedef void (*desc_setup)(attn_desc *d, attn_context *ctx, void **keep);

static void one_plan_many_threads(attn_variant variant, desc_setup setup, int64_t H, int64_t Hkv,
                                  int64_t S, bool want_lse) {
  attn_context *ctx = tu_context(2);
  const int64_t B = 2, D = 16;
  uint64_t seed = 77 + (uint64_t)variant;
  double *q = tu_random((size_t)(B * H * S * D), &seed);
  double *k = tu_random((size_t)(B * Hkv * S * D), &seed);
  double *v = tu_random((size_t)(B * Hkv * S * D), &seed);
  job j;
  memset(&j, 0, sizeof j);
  j.q = tu_tensor4(ctx, ATTN_DTYPE_F32, q, B, H, S, D, false);
  j.k = tu_tensor4(ctx, ATTN_DTYPE_F32, k, B, Hkv, S, D, true);
  j.v = tu_tensor4(ctx, ATTN_DTYPE_F32, v, B, Hkv, S, D, false);
  attn_tensor *ref = tu_tensor4(ctx, ATTN_DTYPE_F32, NULL, B, H, S, D, false);
  const int64_t ls[3] = {B, H, S};
  attn_tensor *ref_lse = want_lse ? tu_tensor(ctx, ATTN_DTYPE_F32, NULL, 3, ls) : NULL;
  for (int i = 0; i < CALLERS; i++) {
    j.out[i] = tu_tensor4(ctx, ATTN_DTYPE_F32, NULL, B, H, S, D, false);
    j.lse[i] = want_lse ? tu_tensor(ctx, ATTN_DTYPE_F32, NULL, 3, ls) : NULL;
  }
  attn_desc *d = NULL;
  assert_int_equal(attn_desc_create(ctx, &d), ATTN_OK);
  assert_int_equal(attn_desc_set_variant(d, variant), ATTN_OK);
  void *keep = NULL;
  if (setup) setup(d, ctx, &keep);
  attn_plan *plan = NULL;
  attn_status st = attn_plan_create(ctx, d, j.q, j.k, j.v, ref, NULL, ref_lse, &plan);
  if (st != ATTN_OK) fail_msg("plan: %s", attn_context_last_error(ctx));
  assert_int_equal(attn_plan_execute(plan, j.q, j.k, j.v, ref, NULL, ref_lse), ATTN_OK);
  j.plan = plan;
  run_callers(&j, ref, ref_lse);
  /* The plan still executes serially to the same bits afterwards. */
  assert_int_equal(attn_plan_execute(plan, j.q, j.k, j.v, j.out[0], NULL, j.lse[0]), ATTN_OK);
  double *a = malloc((size_t)attn_tensor_numel(ref) * sizeof *a);
  double *b2 = malloc((size_t)attn_tensor_numel(ref) * sizeof *b2);
  tu_read(ref, a);
  tu_read(j.out[0], b2);
  assert_memory_equal(a, b2, (size_t)attn_tensor_numel(ref) * sizeof *a);
  free(a);
  free(b2);
  attn_plan_destroy(plan);
  attn_desc_destroy(d);
  free(keep);
  for (int i = 0; i < CALLERS; i++) {
    tu_tensor_free(j.out[i]);
    tu_tensor_free(j.lse[i]);
  }
  tu_tensor_free(ref);
  tu_tensor_free(ref_lse);
  tu_tensor_free(j.q);
  tu_tensor_free(j.k);
  tu_tensor_free(j.v);
  free(q);
  free(k);
  free(v);
  attn_context_destroy(ctx);
}

static void masks_setup(attn_desc *d, attn_context *ctx, void **keep) {
  (void)ctx;
  int64_t *len = malloc(2 * sizeof *len);
  len[0] = 50;
  len[1] = 97;
  *keep = len;
  assert_int_equal(attn_desc_set_causal(d, ATTN_CAUSAL_BOTTOM_RIGHT), ATTN_OK);
  assert_int_equal(attn_desc_set_key_lengths(d, len, 2), ATTN_OK);
  assert_int_equal(attn_desc_set_softcap(d, 20.0), ATTN_OK);
}

static void bigbird_setup(attn_desc *d, attn_context *ctx, void **keep) {
  (void)ctx;
  (void)keep;
  assert_int_equal(attn_desc_set_block_size(d, 16), ATTN_OK);
  assert_int_equal(attn_desc_set_bigbird(d, 1, 1, 2, 9), ATTN_OK);
}

static void performer_setup(attn_desc *d, attn_context *ctx, void **keep) {
  (void)ctx;
  (void)keep;
  assert_int_equal(attn_desc_set_features(d, 32, 5), ATTN_OK);
  assert_int_equal(attn_desc_set_causal(d, ATTN_CAUSAL_TOP_LEFT), ATTN_OK);
}

static void linformer_setup(attn_desc *d, attn_context *ctx, void **keep) {
  (void)ctx;
  int64_t *len = malloc(2 * sizeof *len);
  len[0] = 0; /* all padding: out 0, lse −inf */
  len[1] = 80;
  *keep = len;
  assert_int_equal(attn_desc_set_lowrank(d, 24, 3), ATTN_OK);
  assert_int_equal(attn_desc_set_key_lengths(d, len, 2), ATTN_OK);
}

static void swin_setup(attn_desc *d, attn_context *ctx, void **keep) {
  (void)ctx;
  (void)keep;
  assert_int_equal(attn_desc_set_swin(d, 10, 10, 4, 2), ATTN_OK);
}

static void exact_masks_shared(void **state) {
  (void)state;
  one_plan_many_threads(ATTN_VARIANT_EXACT, masks_setup, 8, 2, 100, true);
}
static void bigbird_shared(void **state) {
  (void)state;
  one_plan_many_threads(ATTN_VARIANT_BIGBIRD, bigbird_setup, 4, 4, 96, true);
}
static void performer_shared(void **state) {
  (void)state;
  one_plan_many_threads(ATTN_VARIANT_PERFORMER, performer_setup, 4, 2, 96, false);
}
static void linformer_shared(void **state) {
  (void)state;
  one_plan_many_threads(ATTN_VARIANT_LINFORMER, linformer_setup, 4, 2, 96, true);
}
static void swin_shared(void **state) {
  (void)state;
  one_plan_many_threads(ATTN_VARIANT_SWIN, swin_setup, 4, 4, 100, true);
}

/* The multi-head layer with a key padding mask, bias_kv and zero_attn: the
 * combined mask and the appended rows live in each caller's workspace. */
static void mha_shared(void **state) {
  (void)state;
  attn_context *ctx = tu_context(2);
  const int64_t B = 2, S = 40, E = 32, H = 4;
  uint64_t seed = 5;
  attn_mha_config cfg;
  attn_mha_config_init(&cfg);
  cfg.embed_dim = E;
  cfg.num_heads = H;
  cfg.num_kv_heads = 2;
  cfg.add_bias_kv = 1;
  cfg.add_zero_attn = 1;
  cfg.batch_first = 1;
  const int64_t Ekv = E / H * 2;
  const int64_t ws[2] = {E + 2 * Ekv, E}, bs[1] = {E + 2 * Ekv}, os[2] = {E, E}, obs[1] = {E};
  const int64_t kvs[3] = {1, 1, Ekv};
  double *wdat = tu_random((size_t)((E + 2 * Ekv) * E + E + 2 * Ekv + E * E + E + 2 * Ekv), &seed);
  attn_mha_weights w;
  attn_mha_weights_init(&w);
  double *p = wdat;
  w.in_proj_weight = tu_tensor(ctx, ATTN_DTYPE_F32, p, 2, ws);
  p += (E + 2 * Ekv) * E;
  w.in_proj_bias = tu_tensor(ctx, ATTN_DTYPE_F32, p, 1, bs);
  p += E + 2 * Ekv;
  w.out_proj_weight = tu_tensor(ctx, ATTN_DTYPE_F32, p, 2, os);
  p += E * E;
  w.out_proj_bias = tu_tensor(ctx, ATTN_DTYPE_F32, p, 1, obs);
  p += E;
  w.bias_k = tu_tensor(ctx, ATTN_DTYPE_F32, p, 3, kvs);
  w.bias_v = tu_tensor(ctx, ATTN_DTYPE_F32, p + Ekv, 3, kvs);
  attn_mha *mha = NULL;
  assert_int_equal(attn_mha_create(ctx, &cfg, &w, &mha), ATTN_OK);
  const int64_t xs[3] = {B, S, E}, ks[2] = {B, S};
  double *x = tu_random((size_t)(B * S * E), &seed);
  double *kp = malloc((size_t)(B * S) * sizeof *kp);
  for (int64_t i = 0; i < B * S; i++) kp[i] = (i % 7) != 3;
  job j;
  memset(&j, 0, sizeof j);
  j.q = j.k = j.v = tu_tensor(ctx, ATTN_DTYPE_F32, x, 3, xs);
  j.kpm = tu_tensor(ctx, ATTN_DTYPE_U8, kp, 2, ks);
  attn_tensor *ref = tu_tensor(ctx, ATTN_DTYPE_F32, NULL, 3, xs);
  for (int i = 0; i < CALLERS; i++) j.out[i] = tu_tensor(ctx, ATTN_DTYPE_F32, NULL, 3, xs);
  attn_desc *d = NULL;
  assert_int_equal(attn_desc_create(ctx, &d), ATTN_OK);
  assert_int_equal(attn_desc_set_causal(d, ATTN_CAUSAL_TOP_LEFT), ATTN_OK);
  attn_mha_plan *plan = NULL;
  attn_status st = attn_mha_plan_create(mha, d, j.q, j.k, j.v, j.kpm, ref, NULL, &plan);
  if (st != ATTN_OK) fail_msg("mha plan: %s", attn_context_last_error(ctx));
  assert_int_equal(attn_mha_plan_execute(plan, j.q, j.k, j.v, j.kpm, ref, NULL), ATTN_OK);
  j.mha = plan;
  run_callers(&j, ref, NULL);
  attn_mha_plan_destroy(plan);
  attn_desc_destroy(d);
  attn_mha_destroy(mha);
  for (int i = 0; i < CALLERS; i++) tu_tensor_free(j.out[i]);
  tu_tensor_free(ref);
  tu_tensor_free(j.q);
  tu_tensor_free(j.kpm);
  tu_tensor_free((attn_tensor *)w.in_proj_weight);
  tu_tensor_free((attn_tensor *)w.in_proj_bias);
  tu_tensor_free((attn_tensor *)w.out_proj_weight);
  tu_tensor_free((attn_tensor *)w.out_proj_bias);
  tu_tensor_free((attn_tensor *)w.bias_k);
  tu_tensor_free((attn_tensor *)w.bias_v);
  free(wdat);
  free(x);
  free(kp);
  attn_context_destroy(ctx);
}

/* execute_on: documented statuses naming the argument, outputs untouched. */
static void execute_on_rejects_bad_input(void **state) {
  (void)state;
  attn_context *ctx = tu_context(2), *other = tu_context(3);
  const int64_t B = 1, H = 2, S = 8, D = 4;
  uint64_t seed = 3;
  double *x = tu_random((size_t)(B * H * S * D), &seed);
  attn_tensor *t = tu_tensor4(ctx, ATTN_DTYPE_F32, x, B, H, S, D, false);
  attn_tensor *o = tu_tensor4(ctx, ATTN_DTYPE_F32, NULL, B, H, S, D, false);
  attn_tensor *o64 = tu_tensor4(ctx, ATTN_DTYPE_F64, NULL, B, H, S, D, false);
  float *out = attn_tensor_data(o);
  for (int64_t i = 0; i < B * H * S * D; i++) out[i] = 42.0f;
  attn_desc *d = NULL;
  assert_int_equal(attn_desc_create(ctx, &d), ATTN_OK);
  attn_plan *plan = NULL;
  assert_int_equal(attn_plan_create(ctx, d, t, t, t, o, NULL, NULL, &plan), ATTN_OK);
  const size_t need = attn_plan_workspace_size_on(plan, other);
  assert_true(need > 0);
  assert_true(attn_plan_workspace_size_on(plan, NULL) <= need); /* 2 threads vs 3 */
  assert_int_equal(attn_plan_workspace_size_on(NULL, other), 0);
  char *ws = malloc(need);
  assert_int_equal(attn_plan_execute_on(NULL, other, ws, need, t, t, t, o, NULL, NULL),
                   ATTN_ERR_NULL_ARG);
  assert_int_equal(attn_plan_execute_on(plan, NULL, ws, need, t, t, t, o, NULL, NULL),
                   ATTN_ERR_NULL_ARG);
  assert_int_equal(attn_plan_execute_on(plan, other, NULL, need, t, t, t, o, NULL, NULL),
                   ATTN_ERR_NULL_ARG);
  assert_non_null(strstr(attn_context_last_error(other), "workspace"));
  assert_int_equal(attn_plan_execute_on(plan, other, ws, need - 1, t, t, t, o, NULL, NULL),
                   ATTN_ERR_INVALID_ARG);
  assert_non_null(strstr(attn_context_last_error(other), "workspace_size"));
  assert_int_equal(attn_plan_execute_on(plan, other, ws, need, t, t, t, o64, NULL, NULL),
                   ATTN_ERR_MISMATCH);
  assert_non_null(strstr(attn_context_last_error(other), "out"));
  assert_int_equal(attn_plan_execute_on(plan, other, ws, need, NULL, t, t, o, NULL, NULL),
                   ATTN_ERR_NULL_ARG);
  for (int64_t i = 0; i < B * H * S * D; i++) assert_true(out[i] == 42.0f);
  /* The plan's own context keeps its message to itself. */
  assert_string_equal(attn_context_last_error(ctx), "");
  assert_int_equal(attn_plan_execute_on(plan, other, ws, need, t, t, t, o, NULL, NULL), ATTN_OK);
  free(ws);
  attn_plan_destroy(plan);
  attn_desc_destroy(d);
  tu_tensor_free(t);
  tu_tensor_free(o);
  tu_tensor_free(o64);
  free(x);
  attn_context_destroy(other);
  attn_context_destroy(ctx);
}

/* One query whose first key tile scores 0 everywhere and whose second holds a
 * key scoring 1000 higher: e^{−1000} underflows to 0 in f32 and f64, and the
 * first tile's contribution must vanish with it (the output is that key's
 * value), not survive because the rescale by 0 was skipped. */
static void online_softmax_forgets_underflowed_tiles(void **state) {
  (void)state;
  attn_context *ctx = tu_context(1);
  const attn_dtype dts[2] = {ATTN_DTYPE_F32, ATTN_DTYPE_F64};
  const int64_t Sk = 1024, hot = 600;
  for (int di = 0; di < 2; di++) {
    double q[1] = {1.0}, *k = calloc((size_t)Sk, sizeof *k), *v = malloc((size_t)Sk * sizeof *v);
    for (int64_t j = 0; j < Sk; j++) v[j] = 1.0 + (double)j;
    k[hot] = 1000.0;
    attn_tensor *tq = tu_tensor4(ctx, dts[di], q, 1, 1, 1, 1, false);
    attn_tensor *tk = tu_tensor4(ctx, dts[di], k, 1, 1, Sk, 1, false);
    attn_tensor *tv = tu_tensor4(ctx, dts[di], v, 1, 1, Sk, 1, false);
    attn_tensor *to = tu_tensor4(ctx, dts[di], NULL, 1, 1, 1, 1, false);
    attn_desc *d = NULL;
    assert_int_equal(attn_desc_create(ctx, &d), ATTN_OK);
    assert_int_equal(attn_desc_set_score(d, ATTN_SCORE_DOT), ATTN_OK);
    assert_int_equal(attn_forward(ctx, d, tq, tk, tv, to, NULL, NULL), ATTN_OK);
    double got;
    tu_read(to, &got);
    if (fabs(got - v[hot]) > 1e-3) fail_msg("%s: out %g, expected %g", di ? "f64" : "f32", got, v[hot]);
    attn_desc_destroy(d);
    tu_tensor_free(tq);
    tu_tensor_free(tk);
    tu_tensor_free(tv);
    tu_tensor_free(to);
    free(k);
    free(v);
  }
  attn_context_destroy(ctx);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(exact_masks_shared),
      cmocka_unit_test(bigbird_shared),
      cmocka_unit_test(performer_shared),
      cmocka_unit_test(linformer_shared),
      cmocka_unit_test(swin_shared),
      cmocka_unit_test(mha_shared),
      cmocka_unit_test(execute_on_rejects_bad_input),
      cmocka_unit_test(online_softmax_forgets_underflowed_tiles),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}

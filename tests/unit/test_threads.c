/* Thread safety. 8 caller threads, each with its own context (1–3 worker
 * threads), run a mixed table of jobs concurrently; every result must be
 * bitwise identical to the same job run alone on a 1-thread context (the
 * library promises thread-count-independent results), and that baseline is
 * checked against the f64 reference. Also: a plan handed from one thread to
 * another (the API allows one thread at a time per context), and fork(): the
 * child computes with the context it inherited (its pool is restarted) and
 * must get the parent's result. tools/ci/tsan.sh runs this under TSan.
 *
 * A new variant adds one row to `jobs` with a configure function. */
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "testutil.h"

enum { N_CALLERS = 8, ROUNDS = 2 };

typedef struct job_ctx job_ctx;

typedef struct job {
  const char *name;
  attn_dtype dt;
  int64_t B, H, Hkv, Sq, Sk, D;
  bool want_w, want_lse;
  /* Sets descriptor options and the matching reference problem fields. */
  void (*cfg)(job_ctx *c);
} job;

/* One job's inputs and outputs, owned by one caller thread. */
struct job_ctx {
  const job *j;
  attn_context *ctx;
  attn_desc *desc;
  ref_problem ref;
  double *q, *k, *v; /* dense [B][H][S][D] doubles */
  attn_tensor *tq, *tk, *tv, *tout, *tw, *tlse;
  attn_tensor *bool_mask, *add_mask, *gw;
  uint8_t *bool_dense;  /* [B][H][Sq][Sk] for the reference */
  double *add_dense, *gw_data;
  int64_t key_len[4], query_len[4];
  double slopes[8];
};

/* ---- configurations ------------------------------------------------------------- */

static void cfg_none(job_ctx *c) { (void)c; }

static void cfg_causal_tl(job_ctx *c) {
  assert_int_equal(attn_desc_set_causal(c->desc, ATTN_CAUSAL_TOP_LEFT), ATTN_OK);
  c->ref.causal = ATTN_CAUSAL_TOP_LEFT;
}

static void cfg_causal_br(job_ctx *c) {
  assert_int_equal(attn_desc_set_causal(c->desc, ATTN_CAUSAL_BOTTOM_RIGHT), ATTN_OK);
  c->ref.causal = ATTN_CAUSAL_BOTTOM_RIGHT;
}

/* Bool mask [B, 1, Sq, Sk] (broadcast over heads), ~75% kept, one dead row. */
static void cfg_bool_mask(job_ctx *c) {
  const job *j = c->j;
  size_t n = (size_t)(j->B * j->Sq * j->Sk);
  double *m = malloc(n * sizeof *m);
  uint64_t s = 77;
  for (size_t i = 0; i < n; i++) m[i] = tu_uniform(&s, 0, 1) < 0.75;
  for (int64_t x = 0; x < j->Sk; x++) m[3 * j->Sk + (size_t)x] = 0; /* row 3 of batch 0 */
  int64_t shape[4] = {j->B, 1, j->Sq, j->Sk};
  c->bool_mask = tu_tensor(c->ctx, ATTN_DTYPE_U8, m, 4, shape);
  c->bool_dense = malloc((size_t)(j->B * j->H) * (size_t)(j->Sq * j->Sk));
  for (int64_t b = 0; b < j->B; b++)
    for (int64_t h = 0; h < j->H; h++)
      for (int64_t e = 0; e < j->Sq * j->Sk; e++)
        c->bool_dense[(b * j->H + h) * j->Sq * j->Sk + e] = m[b * j->Sq * j->Sk + e] != 0;
  free(m);
  assert_int_equal(attn_desc_set_bool_mask(c->desc, c->bool_mask), ATTN_OK);
  c->ref.bool_mask = c->bool_dense;
}

/* Additive mask [B, H, Sq, Sk] with values in [-2, 2) and some −inf. */
static void cfg_additive_mask(job_ctx *c) {
  const job *j = c->j;
  size_t n = (size_t)(j->B * j->H * j->Sq * j->Sk);
  c->add_dense = malloc(n * sizeof *c->add_dense);
  uint64_t s = 78;
  for (size_t i = 0; i < n; i++) {
    double u = tu_uniform(&s, 0, 1);
    c->add_dense[i] = u < 0.1 ? -INFINITY : 4 * u - 2;
  }
  int64_t shape[4] = {j->B, j->H, j->Sq, j->Sk};
  c->add_mask = tu_tensor(c->ctx, j->dt, c->add_dense, 4, shape);
  assert_int_equal(attn_desc_set_additive_mask(c->desc, c->add_mask), ATTN_OK);
  c->ref.add_mask = c->add_dense;
}

static void cfg_lengths_window(job_ctx *c) {
  c->key_len[0] = c->j->Sk - 7, c->key_len[1] = 1;
  c->query_len[0] = c->j->Sq, c->query_len[1] = c->j->Sq / 2;
  assert_int_equal(attn_desc_set_key_lengths(c->desc, c->key_len, 2), ATTN_OK);
  assert_int_equal(attn_desc_set_query_lengths(c->desc, c->query_len, 2), ATTN_OK);
  assert_int_equal(attn_desc_set_window(c->desc, 20, 5), ATTN_OK);
  c->ref.key_len = c->key_len;
  c->ref.query_len = c->query_len;
  c->ref.left = 20;
  c->ref.right = 5;
}

static void cfg_alibi_softcap(job_ctx *c) {
  for (int64_t h = 0; h < c->j->H; h++) c->slopes[h] = 0.5 / (double)(h + 1);
  assert_int_equal(attn_desc_set_alibi(c->desc, c->slopes, c->j->H), ATTN_OK);
  assert_int_equal(attn_desc_set_softcap(c->desc, 5.0), ATTN_OK);
  assert_int_equal(attn_desc_set_causal(c->desc, ATTN_CAUSAL_BOTTOM_RIGHT), ATTN_OK);
  c->ref.alibi = c->slopes;
  c->ref.softcap = 5.0;
  c->ref.causal = ATTN_CAUSAL_BOTTOM_RIGHT;
}

static void cfg_general(job_ctx *c) {
  uint64_t s = 79;
  c->gw_data = tu_random((size_t)(c->j->D * c->j->D), &s);
  int64_t shape[2] = {c->j->D, c->j->D};
  c->gw = tu_tensor(c->ctx, c->j->dt, c->gw_data, 2, shape);
  assert_int_equal(attn_desc_set_score(c->desc, ATTN_SCORE_GENERAL), ATTN_OK);
  assert_int_equal(attn_desc_set_general_weight(c->desc, c->gw), ATTN_OK);
  c->ref.score = ATTN_SCORE_GENERAL;
  c->ref.general_w = c->gw_data;
}

#define F32 ATTN_DTYPE_F32
#define F64 ATTN_DTYPE_F64
static const job jobs[] = {
    /* name               dt   B  H Hkv  Sq   Sk   D   weights lse  configure */
    {"exact_f32", F32, 1, 2, 2, 100, 120, 32, false, true, cfg_none},
    {"exact_f64_weights", F64, 2, 1, 1, 60, 70, 16, true, true, cfg_none},
    {"causal_top_left_f32", F32, 1, 2, 1, 200, 200, 24, false, true, cfg_causal_tl},
    {"causal_bottom_right_gqa_f64", F64, 1, 4, 2, 40, 150, 16, true, false, cfg_causal_br},
    {"bool_mask_f32", F32, 2, 2, 2, 50, 64, 16, true, true, cfg_bool_mask},
    {"additive_mask_f64", F64, 1, 2, 2, 33, 90, 8, false, true, cfg_additive_mask},
    {"lengths_window_f32", F32, 2, 2, 1, 90, 110, 16, false, true, cfg_lengths_window},
    {"alibi_softcap_f32", F32, 1, 3, 3, 64, 64, 32, true, false, cfg_alibi_softcap},
    {"general_score_f64", F64, 1, 2, 2, 30, 45, 12, false, true, cfg_general},
};
#define N_JOBS (sizeof jobs / sizeof jobs[0])

/* ---- running a job ------------------------------------------------------------------ */

static void job_setup(job_ctx *c, const job *j, attn_context *ctx) {
  memset(c, 0, sizeof *c);
  c->j = j;
  c->ctx = ctx;
  ref_problem_init(&c->ref, j->B, j->H, j->Sq, j->Sk, j->D);
  c->ref.Hkv = j->Hkv;
  uint64_t seed = 1000 + (uint64_t)(j - jobs);
  c->q = tu_random((size_t)(j->B * j->H * j->Sq * j->D), &seed);
  c->k = tu_random((size_t)(j->B * j->Hkv * j->Sk * j->D), &seed);
  c->v = tu_random((size_t)(j->B * j->Hkv * j->Sk * j->D), &seed);
  for (int64_t i = 0; i < j->B * j->H * j->Sq * j->D; i++) c->q[i] *= 2;
  c->tq = tu_tensor4(ctx, j->dt, c->q, j->B, j->H, j->Sq, j->D, false);
  c->tk = tu_tensor4(ctx, j->dt, c->k, j->B, j->Hkv, j->Sk, j->D, true);
  c->tv = tu_tensor4(ctx, j->dt, c->v, j->B, j->Hkv, j->Sk, j->D, false);
  c->tout = tu_tensor4(ctx, j->dt, NULL, j->B, j->H, j->Sq, j->D, false);
  c->tw = j->want_w ? tu_tensor4(ctx, j->dt, NULL, j->B, j->H, j->Sq, j->Sk, false) : NULL;
  int64_t ls[3] = {j->B, j->H, j->Sq};
  c->tlse = j->want_lse ? tu_tensor(ctx, j->dt, NULL, 3, ls) : NULL;
  assert_int_equal(attn_desc_create(ctx, &c->desc), ATTN_OK);
  j->cfg(c);
}

static void job_teardown(job_ctx *c) {
  tu_tensor_free(c->tq);
  tu_tensor_free(c->tk);
  tu_tensor_free(c->tv);
  tu_tensor_free(c->tout);
  tu_tensor_free(c->tw);
  tu_tensor_free(c->tlse);
  tu_tensor_free(c->bool_mask);
  tu_tensor_free(c->add_mask);
  tu_tensor_free(c->gw);
  attn_desc_destroy(c->desc);
  free(c->q);
  free(c->k);
  free(c->v);
  free(c->bool_dense);
  free(c->add_dense);
  free(c->gw_data);
}

/* The raw output bytes of a job: out, then weights, then lse. */
typedef struct result {
  unsigned char *bytes;
  size_t n;
} result;

static size_t tensor_bytes(const attn_tensor *t) {
  return t ? (size_t)attn_tensor_numel(t) * (attn_tensor_dtype(t) == F64 ? 8 : 4) : 0;
}

static void collect(const job_ctx *c, result *r) {
  size_t no = tensor_bytes(c->tout), nw = tensor_bytes(c->tw), nl = tensor_bytes(c->tlse);
  r->n = no + nw + nl;
  r->bytes = malloc(r->n);
  memcpy(r->bytes, attn_tensor_data(c->tout), no);
  if (nw) memcpy(r->bytes + no, attn_tensor_data(c->tw), nw);
  if (nl) memcpy(r->bytes + no + nw, attn_tensor_data(c->tlse), nl);
}

/* Plan, execute twice (fresh outputs each time), collect. Returns a status
 * rather than asserting: caller threads must not longjmp out of cmocka. */
static attn_status run_job(job_ctx *c, result *r) {
  attn_plan *plan = NULL;
  attn_status st = attn_plan_create(c->ctx, c->desc, c->tq, c->tk, c->tv, c->tout, c->tw, c->tlse, &plan);
  for (int rep = 0; rep < 2 && st == ATTN_OK; rep++) {
    memset(attn_tensor_data(c->tout), 0xFF, tensor_bytes(c->tout)); /* NaN: must be overwritten */
    st = attn_plan_execute(plan, c->tq, c->tk, c->tv, c->tout, c->tw, c->tlse);
  }
  attn_plan_destroy(plan);
  if (st == ATTN_OK) collect(c, r);
  return st;
}

static attn_context *make_ctx(int32_t threads) {
  attn_context_options o;
  attn_context_options_init(&o);
  o.num_threads = threads;
  attn_context *ctx = NULL;
  if (attn_context_create(&o, &ctx) != ATTN_OK) return NULL;
  return ctx;
}

/* Check a single-threaded baseline against the f64 reference. */
static void check_against_reference(const job_ctx *c) {
  const job *j = c->j;
  size_t no = (size_t)(j->B * j->H * j->Sq * j->D), nl = (size_t)(j->B * j->H * j->Sq);
  size_t nw = (size_t)(j->B * j->H * j->Sq * j->Sk);
  double *ro = malloc(no * 8), *rb = malloc(no * 8), *rl = malloc(nl * 8), *rw = malloc(nw * 8);
  double *go = malloc(no * 8), *gl = malloc(nl * 8), *gw = malloc(nw * 8);
  ref_attention(&c->ref, c->q, c->k, c->v, ro, rw, rl, rb);
  bool f64 = j->dt == F64;
  double rtol = f64 ? 1e-12 : 2e-5, atol = f64 ? 1e-13 : 2e-6, err;
  tu_read(c->tout, go);
  size_t bad = tu_violations(go, ro, rb, no, rtol, atol, &err);
  if (bad) fail_msg("%s: out differs from the reference in %zu of %zu (max %g)", j->name, bad, no, err);
  if (c->tlse) {
    tu_read(c->tlse, gl);
    for (size_t i = 0; i < nl; i++)
      if (!(gl[i] == rl[i] || fabs(gl[i] - rl[i]) <= (f64 ? 1e-12 : 1e-5) * (1 + fabs(rl[i]))))
        fail_msg("%s: lse[%zu] = %g, reference %g", j->name, i, gl[i], rl[i]);
  }
  if (c->tw) {
    tu_read(c->tw, gw);
    bad = tu_violations(gw, rw, NULL, nw, f64 ? 1e-11 : 1e-4, f64 ? 1e-13 : 1e-6, &err);
    if (bad) fail_msg("%s: weights differ from the reference in %zu (max %g)", j->name, bad, err);
  }
  free(ro); free(rb); free(rl); free(rw); free(go); free(gl); free(gw);
}

static result baseline[N_JOBS];

static int make_baselines(void **state) {
  (void)state;
  attn_context *ctx = make_ctx(1);
  if (ctx == NULL) return -1;
  for (size_t i = 0; i < N_JOBS; i++) {
    job_ctx c;
    job_setup(&c, &jobs[i], ctx);
    if (run_job(&c, &baseline[i]) != ATTN_OK) {
      print_error("%s: %s\n", jobs[i].name, attn_context_last_error(ctx));
      return -1;
    }
    check_against_reference(&c);
    job_teardown(&c);
  }
  attn_context_destroy(ctx);
  return 0;
}

static int free_baselines(void **state) {
  (void)state;
  for (size_t i = 0; i < N_JOBS; i++) free(baseline[i].bytes);
  return 0;
}

/* ---- 8 concurrent callers ------------------------------------------------------------ */

typedef struct caller {
  int id;
  int runs, mismatches, errors;
  char first_problem[256];
} caller;

static void *caller_main(void *p) {
  caller *me = p;
  attn_context *ctx = make_ctx(1 + me->id % 3);
  if (ctx == NULL) {
    me->errors++;
    return NULL;
  }
  for (int round = 0; round < ROUNDS; round++)
    for (size_t n = 0; n < N_JOBS; n++) {
      size_t i = (n + (size_t)me->id + (size_t)round * 3) % N_JOBS; /* callers overlap differently */
      job_ctx c;
      job_setup(&c, &jobs[i], ctx);
      result r = {0};
      attn_status st = run_job(&c, &r);
      me->runs++;
      if (st != ATTN_OK) {
        if (me->errors++ == 0)
          snprintf(me->first_problem, sizeof me->first_problem, "%s: %s", jobs[i].name,
                   attn_context_last_error(ctx));
      } else if (r.n != baseline[i].n || memcmp(r.bytes, baseline[i].bytes, r.n) != 0) {
        if (me->mismatches++ == 0)
          snprintf(me->first_problem, sizeof me->first_problem,
                   "%s: result differs from the single-threaded run", jobs[i].name);
      }
      free(r.bytes);
      job_teardown(&c);
    }
  attn_context_destroy(ctx);
  return NULL;
}

static void eight_callers_get_single_threaded_results(void **state) {
  (void)state;
  pthread_t th[N_CALLERS];
  caller callers[N_CALLERS];
  for (int t = 0; t < N_CALLERS; t++) {
    memset(&callers[t], 0, sizeof callers[t]);
    callers[t].id = t;
    assert_int_equal(pthread_create(&th[t], NULL, caller_main, &callers[t]), 0);
  }
  int runs = 0, bad = 0;
  for (int t = 0; t < N_CALLERS; t++) {
    assert_int_equal(pthread_join(th[t], NULL), 0);
    runs += callers[t].runs;
    bad += callers[t].mismatches + callers[t].errors;
    if (callers[t].first_problem[0]) print_error("caller %d: %s\n", t, callers[t].first_problem);
  }
  print_message("%d concurrent job runs on %d caller threads, %zu kinds\n", runs, N_CALLERS, N_JOBS);
  assert_int_equal(runs, N_CALLERS * ROUNDS * (int)N_JOBS);
  assert_int_equal(bad, 0);
}

/* ---- one plan, several threads in turn ----------------------------------------------- */

typedef struct handoff {
  job_ctx *c;
  attn_plan *plan;
  attn_status st;
} handoff;

static void *handoff_main(void *p) {
  handoff *h = p;
  job_ctx *c = h->c;
  h->st = attn_plan_execute(h->plan, c->tq, c->tk, c->tv, c->tout, c->tw, c->tlse);
  return NULL;
}

/* A context and its plans are used by one thread at a time, not by one
 * thread forever: a plan made on the main thread runs on others in turn. */
static void plan_runs_on_other_threads_in_turn(void **state) {
  (void)state;
  attn_context *ctx = make_ctx(2);
  assert_non_null(ctx);
  for (size_t i = 0; i < N_JOBS; i++) {
    job_ctx c;
    job_setup(&c, &jobs[i], ctx);
    attn_plan *plan = NULL;
    assert_int_equal(attn_plan_create(ctx, c.desc, c.tq, c.tk, c.tv, c.tout, c.tw, c.tlse, &plan), ATTN_OK);
    for (int turn = 0; turn < 3; turn++) {
      memset(attn_tensor_data(c.tout), 0xFF, tensor_bytes(c.tout));
      handoff h = {&c, plan, ATTN_ERR_INTERNAL};
      pthread_t th;
      assert_int_equal(pthread_create(&th, NULL, handoff_main, &h), 0);
      assert_int_equal(pthread_join(th, NULL), 0); /* join orders the turns */
      assert_int_equal(h.st, ATTN_OK);
      result r;
      collect(&c, &r);
      assert_int_equal(r.n, baseline[i].n);
      assert_memory_equal(r.bytes, baseline[i].bytes, r.n);
      free(r.bytes);
    }
    attn_plan_destroy(plan);
    job_teardown(&c);
  }
  attn_context_destroy(ctx);
}

/* ---- fork --------------------------------------------------------------------------- */

/* Compute (the pool is running), fork, compute in the child with the
 * inherited context and plan: the pool is restarted there and the result is
 * the parent's. The parent keeps working too. */
static void fork_child_computes_with_inherited_context(void **state) {
  (void)state;
  attn_context *ctx = make_ctx(3);
  assert_non_null(ctx);
  const size_t i = 2; /* causal, several query blocks: uses the pool */
  job_ctx c;
  job_setup(&c, &jobs[i], ctx);
  attn_plan *plan = NULL;
  assert_int_equal(attn_plan_create(ctx, c.desc, c.tq, c.tk, c.tv, c.tout, c.tw, c.tlse, &plan), ATTN_OK);
  assert_int_equal(attn_plan_execute(plan, c.tq, c.tk, c.tv, c.tout, c.tw, c.tlse), ATTN_OK);
  fflush(NULL);
  pid_t pid = fork();
  assert_true(pid >= 0);
  if (pid == 0) {
    int code = 0;
    for (int rep = 0; rep < 3 && code == 0; rep++) {
      memset(attn_tensor_data(c.tout), 0xFF, tensor_bytes(c.tout));
      if (attn_plan_execute(plan, c.tq, c.tk, c.tv, c.tout, c.tw, c.tlse) != ATTN_OK) code = 2;
      result r;
      collect(&c, &r);
      if (code == 0 && (r.n != baseline[i].n || memcmp(r.bytes, baseline[i].bytes, r.n) != 0)) code = 3;
      free(r.bytes);
    }
    /* A new plan in the child as well. */
    attn_plan *p2 = NULL;
    if (code == 0 && attn_plan_create(ctx, c.desc, c.tq, c.tk, c.tv, c.tout, c.tw, c.tlse, &p2) != ATTN_OK)
      code = 4;
    if (code == 0 && attn_plan_execute(p2, c.tq, c.tk, c.tv, c.tout, c.tw, c.tlse) != ATTN_OK) code = 5;
    attn_plan_destroy(p2);
    attn_plan_destroy(plan);
    job_teardown(&c);
    attn_context_destroy(ctx);
    exit(code); /* not _exit: coverage and leak checkers flush at exit */
  }
  /* Parent: keep computing while the child runs. */
  for (int rep = 0; rep < 3; rep++) {
    assert_int_equal(attn_plan_execute(plan, c.tq, c.tk, c.tv, c.tout, c.tw, c.tlse), ATTN_OK);
    result r;
    collect(&c, &r);
    assert_memory_equal(r.bytes, baseline[i].bytes, r.n);
    free(r.bytes);
  }
  int status = 0;
  assert_int_equal(waitpid(pid, &status, 0), pid);
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
    fail_msg("child: %s %d", WIFEXITED(status) ? "exit code" : "killed by signal",
             WIFEXITED(status) ? WEXITSTATUS(status) : WTERMSIG(status));
  attn_plan_destroy(plan);
  job_teardown(&c);
  attn_context_destroy(ctx);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(eight_callers_get_single_threaded_results),
      cmocka_unit_test(plan_runs_on_other_threads_in_turn),
      cmocka_unit_test(fork_child_computes_with_inherited_context),
  };
  return cmocka_run_group_tests(tests, make_baselines, free_baselines);
}

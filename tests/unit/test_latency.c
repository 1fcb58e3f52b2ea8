/* The pool's latency machinery: the spin policy (attn_context_set_spin's
 * validation, the $ATTN_SPIN_US default), and that neither the policy nor
 * running small calls on the caller alone changes a single bit of the
 * results (they must equal a one-thread context's). */
#define _POSIX_C_SOURCE 200809L
#include <pthread.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "core/internal.h"
#include "testutil.h"

static attn_context *make_ctx(int32_t threads, int32_t spin_us) {
  attn_context_options o;
  attn_context_options_init(&o);
  o.num_threads = threads;
  attn_context *ctx = NULL;
  assert_int_equal(attn_context_create(&o, &ctx), ATTN_OK);
  if (spin_us != 0) assert_int_equal(attn_context_set_spin(ctx, spin_us), ATTN_OK);
  return ctx;
}

static void spin_setter_is_validated(void **state) {
  (void)state;
  attn_context *ctx = make_ctx(2, 0);
  assert_int_equal(ctx->spin_ns, 0); /* adaptive by default */
  assert_int_equal(attn_context_set_spin(NULL, 5), ATTN_ERR_NULL_ARG);
  assert_int_equal(attn_context_set_spin(ctx, -2), ATTN_ERR_INVALID_ARG);
  assert_non_null(strstr(attn_context_last_error(ctx), "spin_us"));
  assert_int_equal(attn_context_set_spin(ctx, 1000001), ATTN_ERR_INVALID_ARG);
  assert_int_equal(ctx->spin_ns, 0); /* unchanged by the failures */
  const int32_t ok[4] = {-1, 0, 1, 1000000};
  for (int i = 0; i < 4; i++) {
    assert_int_equal(attn_context_set_spin(ctx, ok[i]), ATTN_OK);
    assert_true(ok[i] < 0 ? ctx->spin_ns < 0 : ctx->spin_ns == (int64_t)ok[i] * 1000);
  }
  attn_context_destroy(ctx);
}

static void spin_env_sets_the_default(void **state) {
  (void)state;
  attn_context *ctx = NULL;
  setenv("ATTN_SPIN_US", "250", 1);
  ctx = make_ctx(2, 0);
  assert_int_equal(ctx->spin_ns, 250000);
  assert_int_equal(attn_context_set_spin(ctx, 7), ATTN_OK); /* the setter wins */
  assert_int_equal(ctx->spin_ns, 7000);
  attn_context_destroy(ctx);
  setenv("ATTN_SPIN_US", "-1", 1);
  ctx = make_ctx(2, 0);
  assert_true(ctx->spin_ns < 0);
  attn_context_destroy(ctx);
  setenv("ATTN_SPIN_US", "bogus", 1); /* ignored: adaptive */
  ctx = make_ctx(2, 0);
  assert_int_equal(ctx->spin_ns, 0);
  attn_context_destroy(ctx);
  unsetenv("ATTN_SPIN_US");
}

/* out of one exact attention (causal, GQA) on ctx into a fresh buffer. */
static double *run_exact(attn_context *ctx, int64_t S, int calls) {
  const int64_t B = 1, H = 8, Hkv = 2, D = 64;
  uint64_t seed = 11;
  double *q = tu_random((size_t)(B * H * S * D), &seed);
  double *k = tu_random((size_t)(B * Hkv * S * D), &seed);
  double *v = tu_random((size_t)(B * Hkv * S * D), &seed);
  attn_tensor *tq = tu_tensor4(ctx, ATTN_DTYPE_F32, q, B, H, S, D, false);
  attn_tensor *tk = tu_tensor4(ctx, ATTN_DTYPE_F32, k, B, Hkv, S, D, false);
  attn_tensor *tv = tu_tensor4(ctx, ATTN_DTYPE_F32, v, B, Hkv, S, D, false);
  attn_tensor *to = tu_tensor4(ctx, ATTN_DTYPE_F32, NULL, B, H, S, D, false);
  attn_desc *d = NULL;
  assert_int_equal(attn_desc_create(ctx, &d), ATTN_OK);
  assert_int_equal(attn_desc_set_causal(d, ATTN_CAUSAL_TOP_LEFT), ATTN_OK);
  attn_plan *plan = NULL;
  assert_int_equal(attn_plan_create(ctx, d, tq, tk, tv, to, NULL, NULL, &plan), ATTN_OK);
  for (int c = 0; c < calls; c++)
    assert_int_equal(attn_plan_execute(plan, tq, tk, tv, to, NULL, NULL), ATTN_OK);
  double *out = malloc((size_t)(B * H * S * D) * sizeof *out);
  tu_read(to, out);
  attn_plan_destroy(plan);
  attn_desc_destroy(d);
  tu_tensor_free(tq);
  tu_tensor_free(tk);
  tu_tensor_free(tv);
  tu_tensor_free(to);
  free(q);
  free(k);
  free(v);
  return out;
}

/* S = 16 is below the size that runs on the caller alone, S = 40 between
 * the two thresholds (serial only while the workers sleep), S = 256 always
 * parallel: every policy and thread count gives one thread's bits. */
static void results_do_not_depend_on_policy_or_serial_cutoff(void **state) {
  (void)state;
  const int64_t sizes[3] = {16, 40, 256};
  const int32_t policies[4] = {-1, 0, 1, 3000};
  for (int si = 0; si < 3; si++) {
    attn_context *one = make_ctx(1, 0);
    double *want = run_exact(one, sizes[si], 1);
    attn_context_destroy(one);
    const size_t n = (size_t)(8 * sizes[si] * 64);
    for (int pi = 0; pi < 4; pi++)
      for (int32_t th = 2; th <= 3; th++) {
        attn_context *ctx = make_ctx(th, policies[pi]);
        double *got = run_exact(ctx, sizes[si], 3);
        if (memcmp(want, got, n * sizeof *got) != 0)
          fail_msg("S=%d, spin_us=%d, %d threads: differs from one thread", (int)sizes[si],
                   (int)policies[pi], (int)th);
        free(got);
        attn_context_destroy(ctx);
      }
    free(want);
  }
}

/* A job under the tiny-job cutoff runs every task on the calling thread. */
typedef struct probe {
  pthread_t caller;
  int on_other;
} probe;

static void probe_task(void *arg, int64_t t, int32_t thread) {
  (void)t;
  probe *p = arg;
  if (!pthread_equal(pthread_self(), p->caller) || thread != 0)
    __atomic_fetch_add(&p->on_other, 1, __ATOMIC_RELAXED);
}

static void tiny_jobs_stay_on_the_caller(void **state) {
  (void)state;
  attn_context *ctx = make_ctx(4, 1000000); /* workers spinning: dispatch is cheap, still tiny */
  assert_int_equal(attn_threadpool_ensure(ctx), ATTN_OK);
  probe p = {pthread_self(), 0};
  assert_int_equal(attn_parallel_for_cost(ctx, 64, 1e3, probe_task, &p), ATTN_OK);
  assert_int_equal(p.on_other, 0);
  attn_context_destroy(ctx);
}

/* Back-to-back jobs of different sizes with the workers spinning: every
 * task of every job runs exactly once and each call returns. (A worker
 * holding a finished job's state could once claim an index of the next,
 * larger job under the old generation: a task ran twice and a completion
 * was lost, so the caller waited forever.) */
typedef struct count_job {
  int32_t runs[64];
} count_job;

static void count_task(void *arg, int64_t t, int32_t thread) {
  (void)thread;
  count_job *j = arg;
  __atomic_fetch_add(&j->runs[t], 1, __ATOMIC_RELAXED);
}

static void every_task_runs_once_back_to_back(void **state) {
  (void)state;
  attn_context *ctx = make_ctx(2, 200); /* spinning workers: the tight window */
  assert_int_equal(attn_threadpool_ensure(ctx), ATTN_OK);
  for (int it = 0; it < 20000; it++) {
    count_job j;
    memset(&j, 0, sizeof j);
    const int64_t n = it % 2 ? 64 : 2 + it % 7;
    assert_int_equal(attn_parallel_for_cost(ctx, n, 1e12, count_task, &j), ATTN_OK);
    for (int64_t t = 0; t < 64; t++)
      if (j.runs[t] != (t < n ? 1 : 0))
        fail_msg("job %d (%d tasks): task %d ran %d times", it, (int)n, (int)t, (int)j.runs[t]);
  }
  attn_context_destroy(ctx);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(spin_setter_is_validated),
      cmocka_unit_test(spin_env_sets_the_default),
      cmocka_unit_test(results_do_not_depend_on_policy_or_serial_cutoff),
      cmocka_unit_test(tiny_jobs_stay_on_the_caller),
      cmocka_unit_test(every_task_runs_once_back_to_back),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}

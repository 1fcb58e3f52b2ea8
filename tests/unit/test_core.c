/* Core API: version, statuses, context options, tensors, and the bad-input
 * behaviour issue 2 names: each bad call returns its documented status, says
 * which argument was wrong, and writes nothing. */
#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "testutil.h"

static void version_matches_header(void **state) {
  (void)state;
  assert_int_equal(attn_version_number(), ATTN_VERSION_NUMBER);
  assert_string_equal(attn_version_string(), ATTN_VERSION_STRING);
  assert_int_equal(ATTN_VERSION_NUMBER / 10000, ATTN_VERSION_MAJOR);
}

static void every_status_has_a_distinct_string(void **state) {
  (void)state;
  const int values[] = {
#define V(name, value, text) value,
      ATTN_STATUS_LIST(V)
#undef V
  };
  int n = (int)(sizeof values / sizeof values[0]);
  for (int i = 0; i < n; i++) {
    assert_int_equal(values[i], i); /* explicit, dense, never renumbered */
    const char *s = attn_status_string((attn_status)values[i]);
    assert_non_null(s);
    for (int j = 0; j < i; j++) assert_string_not_equal(s, attn_status_string((attn_status)values[j]));
  }
  assert_string_equal(attn_status_string((attn_status)999), "unknown status");
}

static void context_options_are_validated(void **state) {
  (void)state;
  attn_context *ctx = (attn_context *)0x1;
  attn_context_options o;
  attn_context_options_init(&o);
  o.num_threads = -1;
  assert_int_equal(attn_context_create(&o, &ctx), ATTN_ERR_INVALID_ARG);
  assert_ptr_equal(ctx, (attn_context *)0x1);
  o.num_threads = 100000;
  assert_int_equal(attn_context_create(&o, &ctx), ATTN_ERR_INVALID_ARG);
  attn_context_options_init(&o);
  o.struct_size = 3;
  assert_int_equal(attn_context_create(&o, &ctx), ATTN_ERR_INVALID_ARG);
  attn_context_options_init(&o);
  o.allocator.alloc = (void *(*)(void *, size_t, size_t))0x1; /* free missing */
  assert_int_equal(attn_context_create(&o, &ctx), ATTN_ERR_INVALID_ARG);
  assert_int_equal(attn_context_create(NULL, NULL), ATTN_ERR_NULL_ARG);
  attn_context_options_init(&o);
  o.num_threads = 3;
  assert_int_equal(attn_context_create(&o, &ctx), ATTN_OK);
  assert_int_equal(attn_context_num_threads(ctx), 3);
  assert_string_equal(attn_context_last_error(ctx), "");
  attn_context_destroy(ctx);
  assert_int_equal(attn_context_num_threads(NULL), 0);
  assert_non_null(attn_context_last_error(NULL));
}

static void destroy_null_is_a_noop(void **state) {
  (void)state;
  attn_context_destroy(NULL);
  attn_tensor_destroy(NULL);
  attn_desc_destroy(NULL);
  attn_plan_destroy(NULL);
}

static void tensors_report_their_metadata(void **state) {
  (void)state;
  attn_context *ctx;
  assert_int_equal(attn_context_create(NULL, &ctx), ATTN_OK);
  int64_t shape[4] = {2, 3, 5, 7};
  attn_tensor *t;
  assert_int_equal(attn_tensor_create(ctx, ATTN_DTYPE_F64, 4, shape, &t), ATTN_OK);
  assert_int_equal(attn_tensor_dtype(t), ATTN_DTYPE_F64);
  assert_int_equal(attn_tensor_rank(t), 4);
  assert_int_equal(attn_tensor_numel(t), 210);
  assert_int_equal(attn_tensor_stride(t, 0), 105);
  assert_int_equal(attn_tensor_stride(t, 3), 1);
  assert_int_equal(attn_tensor_dim(t, 2), 5);
  assert_int_equal(attn_tensor_dim(t, 4), -1);
  assert_int_equal(attn_tensor_dim(t, -1), -1);
  assert_int_equal((uintptr_t)attn_tensor_data(t) % 64, 0);
  for (int i = 0; i < 210; i++) assert_true(((double *)attn_tensor_data(t))[i] == 0.0);
  /* Owned data cannot be re-pointed; wrapped data can. */
  double other[210];
  assert_int_equal(attn_tensor_set_data(t, other), ATTN_ERR_INVALID_ARG);
  attn_tensor_destroy(t);
  int64_t strides[4] = {105, 7, 21, 1}; /* [B,S,H,D] memory seen as [B,H,S,D] */
  int64_t sh2[4] = {2, 5, 3, 7};
  assert_int_equal(attn_tensor_wrap(ctx, ATTN_DTYPE_F64, 4, sh2, strides, other, &t), ATTN_OK);
  assert_int_equal(attn_tensor_stride(t, 2), 21);
  assert_ptr_equal(attn_tensor_data(t), other);
  assert_int_equal(attn_tensor_set_data(t, other + 1), ATTN_OK);
  assert_int_equal(attn_tensor_set_data(t, NULL), ATTN_ERR_NULL_ARG);
  attn_tensor_destroy(t);
  assert_int_equal(attn_tensor_dtype(NULL), 0);
  assert_int_equal(attn_tensor_numel(NULL), 0);
  assert_null(attn_tensor_data(NULL));
  attn_context_destroy(ctx);
}

/* A bad tensor call: status, message mentioning `needle`, *out untouched. */
static void expect_tensor_error(attn_context *ctx, attn_status want, const char *needle,
                                attn_dtype dt, int32_t rank, const int64_t *shape,
                                const int64_t *strides, bool wrap) {
  attn_tensor *canary = (attn_tensor *)0x5EED;
  attn_tensor *t = canary;
  double buf[4];
  attn_status st = wrap ? attn_tensor_wrap(ctx, dt, rank, shape, strides, buf, &t)
                        : attn_tensor_create(ctx, dt, rank, shape, &t);
  assert_int_equal(st, want);
  assert_ptr_equal(t, canary);
  if (strstr(attn_context_last_error(ctx), needle) == NULL)
    fail_msg("message '%s' does not mention '%s'", attn_context_last_error(ctx), needle);
}

static void bad_tensors_are_rejected(void **state) {
  (void)state;
  attn_context *ctx;
  assert_int_equal(attn_context_create(NULL, &ctx), ATTN_OK);
  int64_t ok[4] = {1, 1, 2, 2}, zero[4] = {1, 0, 2, 2}, neg[4] = {1, -3, 2, 2};
  int64_t huge[2] = {INT64_C(1) << 40, INT64_C(1) << 40};
  int64_t bad_strides[4] = {4, 4, -2, 1}, far_strides[4] = {INT64_MAX / 2, 1, 1, 1};
  expect_tensor_error(ctx, ATTN_ERR_DTYPE, "dtype", (attn_dtype)77, 4, ok, NULL, false);
  expect_tensor_error(ctx, ATTN_ERR_SHAPE, "rank", ATTN_DTYPE_F32, 0, ok, NULL, false);
  expect_tensor_error(ctx, ATTN_ERR_SHAPE, "rank", ATTN_DTYPE_F32, 5, ok, NULL, true);
  expect_tensor_error(ctx, ATTN_ERR_SHAPE, "shape[1]", ATTN_DTYPE_F32, 4, zero, NULL, false);
  expect_tensor_error(ctx, ATTN_ERR_SHAPE, "shape[1]", ATTN_DTYPE_F32, 4, neg, NULL, true);
  expect_tensor_error(ctx, ATTN_ERR_OVERFLOW, "overflow", ATTN_DTYPE_F32, 2, huge, NULL, false);
  expect_tensor_error(ctx, ATTN_ERR_OVERFLOW, "overflow", ATTN_DTYPE_F64, 2, huge, NULL, true);
  expect_tensor_error(ctx, ATTN_ERR_LAYOUT, "strides[2]", ATTN_DTYPE_F32, 4, ok, bad_strides, true);
  int64_t big[4] = {3, 1, 1, 1};
  expect_tensor_error(ctx, ATTN_ERR_OVERFLOW, "strides", ATTN_DTYPE_F32, 4, big, far_strides, true);
  attn_tensor *t = (attn_tensor *)0x5EED;
  assert_int_equal(attn_tensor_create(ctx, ATTN_DTYPE_F32, 4, NULL, &t), ATTN_ERR_NULL_ARG);
  assert_non_null(strstr(attn_context_last_error(ctx), "shape"));
  assert_int_equal(attn_tensor_wrap(ctx, ATTN_DTYPE_F32, 4, ok, NULL, NULL, &t), ATTN_ERR_NULL_ARG);
  assert_non_null(strstr(attn_context_last_error(ctx), "data"));
  assert_int_equal(attn_tensor_create(NULL, ATTN_DTYPE_F32, 4, ok, &t), ATTN_ERR_NULL_ARG);
  assert_int_equal(attn_tensor_create(ctx, ATTN_DTYPE_F32, 4, ok, NULL), ATTN_ERR_NULL_ARG);
  assert_ptr_equal(t, (attn_tensor *)0x5EED);
  attn_context_destroy(ctx);
}

static void bad_descriptor_values_are_rejected(void **state) {
  (void)state;
  attn_context *ctx;
  assert_int_equal(attn_context_create(NULL, &ctx), ATTN_OK);
  attn_desc *d;
  assert_int_equal(attn_desc_create(ctx, &d), ATTN_OK);
  const double bad_scales[] = {NAN, 0.0, -1.0, INFINITY};
  for (int i = 0; i < 4; i++) {
    assert_int_equal(attn_desc_set_scale(d, bad_scales[i]), ATTN_ERR_INVALID_ARG);
    assert_non_null(strstr(attn_context_last_error(ctx), "scale"));
  }
  assert_int_equal(attn_desc_set_causal(d, (attn_causal)3), ATTN_ERR_INVALID_ARG);
  assert_non_null(strstr(attn_context_last_error(ctx), "causal"));
  assert_int_equal(attn_desc_set_causal(d, (attn_causal)-1), ATTN_ERR_INVALID_ARG);
  assert_int_equal(attn_desc_set_score(d, (attn_score)4), ATTN_ERR_INVALID_ARG);
  assert_non_null(strstr(attn_context_last_error(ctx), "score"));
  assert_int_equal(attn_desc_set_variant(d, (attn_variant)42), ATTN_ERR_INVALID_ARG);
  assert_non_null(strstr(attn_context_last_error(ctx), "variant"));
  assert_int_equal(attn_desc_set_window(d, -1, 0), ATTN_ERR_INVALID_ARG);
  assert_non_null(strstr(attn_context_last_error(ctx), "left"));
  assert_int_equal(attn_desc_set_scale(NULL, 1.0), ATTN_ERR_NULL_ARG);
  assert_int_equal(attn_desc_create(ctx, NULL), ATTN_ERR_NULL_ARG);
  attn_desc_destroy(d);
  attn_context_destroy(ctx);
}

/* Plan-level bad input: each returns the documented status, names the
 * argument, and leaves *plan and the output canaries alone. */
typedef struct plan_fixture {
  attn_context *ctx;
  attn_desc *d;
  attn_tensor *q, *k, *v, *out;
} plan_fixture;

static attn_tensor *mk(attn_context *ctx, attn_dtype dt, int64_t a, int64_t b, int64_t c, int64_t e) {
  int64_t s[4] = {a, b, c, e};
  attn_tensor *t = NULL;
  assert_int_equal(attn_tensor_create(ctx, dt, 4, s, &t), ATTN_OK);
  return t;
}

static void expect_plan_error(plan_fixture *f, const attn_tensor *q, const attn_tensor *k,
                              const attn_tensor *v, const attn_tensor *out, attn_status want,
                              const char *needle) {
  attn_plan *canary = (attn_plan *)0x5EED, *p = canary;
  attn_status st = attn_plan_create(f->ctx, f->d, q, k, v, out, NULL, NULL, &p);
  if (st != want) fail_msg("status %d, expected %d (%s)", st, want, attn_context_last_error(f->ctx));
  assert_ptr_equal(p, canary);
  if (strstr(attn_context_last_error(f->ctx), needle) == NULL)
    fail_msg("message '%s' does not mention '%s'", attn_context_last_error(f->ctx), needle);
  /* The one-shot call fails the same way and writes nothing. */
  if (out != NULL && attn_tensor_dtype(out) == ATTN_DTYPE_F32) {
    float *o = attn_tensor_data(out);
    int64_t n = attn_tensor_numel(out);
    for (int64_t i = 0; i < n; i++) o[i] = 1234.5f;
    assert_int_equal(attn_forward(f->ctx, f->d, q, k, v, (attn_tensor *)out, NULL, NULL), want);
    for (int64_t i = 0; i < n; i++) assert_true(o[i] == 1234.5f);
  }
}

static void bad_plans_are_rejected(void **state) {
  (void)state;
  plan_fixture f;
  assert_int_equal(attn_context_create(NULL, &f.ctx), ATTN_OK);
  assert_int_equal(attn_desc_create(f.ctx, &f.d), ATTN_OK);
  attn_context *ctx = f.ctx;
  attn_tensor *q = mk(ctx, ATTN_DTYPE_F32, 2, 4, 8, 16), *k = mk(ctx, ATTN_DTYPE_F32, 2, 4, 10, 16);
  attn_tensor *v = mk(ctx, ATTN_DTYPE_F32, 2, 4, 10, 16), *out = mk(ctx, ATTN_DTYPE_F32, 2, 4, 8, 16);
  expect_plan_error(&f, NULL, k, v, out, ATTN_ERR_NULL_ARG, "q");
  expect_plan_error(&f, q, NULL, v, out, ATTN_ERR_NULL_ARG, "k");
  expect_plan_error(&f, q, k, NULL, out, ATTN_ERR_NULL_ARG, "v");
  expect_plan_error(&f, q, k, v, NULL, ATTN_ERR_NULL_ARG, "out");
  attn_tensor *kb = mk(ctx, ATTN_DTYPE_F32, 3, 4, 10, 16); /* batch 3 vs 2 */
  expect_plan_error(&f, q, kb, v, out, ATTN_ERR_SHAPE, "k: shape [3,4,10,16]");
  attn_tensor *vs = mk(ctx, ATTN_DTYPE_F32, 2, 4, 11, 16);
  expect_plan_error(&f, q, k, vs, out, ATTN_ERR_SHAPE, "v: shape");
  attn_tensor *kd = mk(ctx, ATTN_DTYPE_F32, 2, 4, 10, 15);
  expect_plan_error(&f, q, kd, v, out, ATTN_ERR_SHAPE, "head dim");
  attn_tensor *k3 = mk(ctx, ATTN_DTYPE_F32, 2, 3, 10, 16); /* 3 kv heads don't divide 4 */
  attn_tensor *v3 = mk(ctx, ATTN_DTYPE_F32, 2, 3, 10, 16);
  expect_plan_error(&f, q, k3, v3, out, ATTN_ERR_SHAPE, "do not divide");
  attn_tensor *kf = mk(ctx, ATTN_DTYPE_F64, 2, 4, 10, 16);
  expect_plan_error(&f, q, kf, v, out, ATTN_ERR_DTYPE, "k: dtype f64");
  attn_tensor *ob = mk(ctx, ATTN_DTYPE_F32, 2, 4, 8, 17);
  expect_plan_error(&f, q, k, v, ob, ATTN_ERR_SHAPE, "out");
  int64_t s3[3] = {2, 4, 8};
  attn_tensor *r3;
  assert_int_equal(attn_tensor_create(ctx, ATTN_DTYPE_F32, 3, s3, &r3), ATTN_OK);
  expect_plan_error(&f, r3, k, v, out, ATTN_ERR_SHAPE, "q: rank 3");
  /* Non-contiguous last dim: every other float of a bigger buffer. */
  float *mem = calloc(2 * 4 * 8 * 32, sizeof *mem);
  int64_t sh[4] = {2, 4, 8, 16}, st[4] = {4 * 8 * 32, 8 * 32, 32, 2};
  attn_tensor *qs;
  assert_int_equal(attn_tensor_wrap(ctx, ATTN_DTYPE_F32, 4, sh, st, mem, &qs), ATTN_OK);
  expect_plan_error(&f, qs, k, v, out, ATTN_ERR_LAYOUT, "q: last dim");
  /* Overlapping rows (sequence stride 0, a broadcast key row). */
  int64_t st0[4] = {4 * 8 * 16, 8 * 16, 0, 1};
  attn_tensor *k0;
  assert_int_equal(attn_tensor_wrap(ctx, ATTN_DTYPE_F32, 4, sh, st0, mem, &k0), ATTN_OK);
  expect_plan_error(&f, q, k0, k0, out, ATTN_ERR_LAYOUT, "k: row stride 0");
  attn_tensor_destroy(k0);
  attn_tensor *u8 = mk(ctx, ATTN_DTYPE_U8, 2, 4, 8, 16);
  expect_plan_error(&f, u8, k, v, out, ATTN_ERR_DTYPE, "q: dtype u8");
  attn_plan *p = (attn_plan *)0x5EED;
  assert_int_equal(attn_plan_create(ctx, NULL, q, k, v, out, NULL, NULL, &p), ATTN_ERR_NULL_ARG);
  assert_non_null(strstr(attn_context_last_error(ctx), "desc"));
  assert_int_equal(attn_plan_create(NULL, f.d, q, k, v, out, NULL, NULL, &p), ATTN_ERR_NULL_ARG);
  assert_int_equal(attn_plan_create(ctx, f.d, q, k, v, out, NULL, NULL, NULL), ATTN_ERR_NULL_ARG);
  assert_ptr_equal(p, (attn_plan *)0x5EED);
  /* Weights and lse of the wrong shape. */
  attn_tensor *w = mk(ctx, ATTN_DTYPE_F32, 2, 4, 8, 9);
  assert_int_equal(attn_plan_create(ctx, f.d, q, k, v, out, w, NULL, &p), ATTN_ERR_SHAPE);
  assert_non_null(strstr(attn_context_last_error(ctx), "weights"));
  assert_int_equal(attn_plan_create(ctx, f.d, q, k, v, out, NULL, w, &p), ATTN_ERR_SHAPE);
  assert_non_null(strstr(attn_context_last_error(ctx), "lse"));

  /* Execute with tensors that don't match the plan: ATTN_ERR_MISMATCH, out untouched. */
  assert_int_equal(attn_plan_create(ctx, f.d, q, k, v, out, NULL, NULL, &p), ATTN_OK);
  float *o = attn_tensor_data(out);
  for (int i = 0; i < 2 * 4 * 8 * 16; i++) o[i] = 7.0f;
  assert_int_equal(attn_plan_execute(p, q, kb, v, out, NULL, NULL), ATTN_ERR_MISMATCH);
  assert_non_null(strstr(attn_context_last_error(ctx), "k:"));
  assert_int_equal(attn_plan_execute(p, q, k, v, out, w, NULL), ATTN_ERR_MISMATCH);
  assert_non_null(strstr(attn_context_last_error(ctx), "weights"));
  assert_int_equal(attn_plan_execute(p, q, k, NULL, out, NULL, NULL), ATTN_ERR_NULL_ARG);
  assert_int_equal(attn_plan_execute(NULL, q, k, v, out, NULL, NULL), ATTN_ERR_NULL_ARG);
  for (int i = 0; i < 2 * 4 * 8 * 16; i++) assert_true(o[i] == 7.0f);
  assert_int_equal(attn_plan_execute(p, q, k, v, out, NULL, NULL), ATTN_OK);
  attn_plan_destroy(p);

  attn_tensor *all[] = {q, k, v, out, kb, vs, kd, k3, v3, kf, ob, r3, qs, u8, w};
  for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) attn_tensor_destroy(all[i]);
  free(mem);
  attn_desc_destroy(f.d);
  attn_context_destroy(ctx);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(version_matches_header),
      cmocka_unit_test(every_status_has_a_distinct_string),
      cmocka_unit_test(context_options_are_validated),
      cmocka_unit_test(destroy_null_is_a_noop),
      cmocka_unit_test(tensors_report_their_metadata),
      cmocka_unit_test(bad_tensors_are_rejected),
      cmocka_unit_test(bad_descriptor_values_are_rejected),
      cmocka_unit_test(bad_plans_are_rejected),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}

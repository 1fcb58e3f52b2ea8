/* Head split/merge: views index the same memory as the definition says,
 * copies move exactly the right elements, attention on a split view equals
 * attention on a copied tensor, bad input leaves outputs untouched. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "testutil.h"

static attn_context *new_ctx(void) {
  attn_context *ctx = NULL;
  assert_int_equal(attn_context_create(NULL, &ctx), ATTN_OK);
  return ctx;
}

/* x[b, s, f] of a [B, S, F] tensor given any strides, as double. */
static double at3(const attn_tensor *t, int64_t b, int64_t s, int64_t f) {
  int64_t off = b * attn_tensor_stride(t, 0) + s * attn_tensor_stride(t, 1) + f * attn_tensor_stride(t, 2);
  return attn_tensor_dtype(t) == ATTN_DTYPE_F32 ? ((const float *)attn_tensor_data(t))[off]
                                                : ((const double *)attn_tensor_data(t))[off];
}
static double at4(const attn_tensor *t, int64_t a, int64_t b, int64_t c, int64_t d) {
  int64_t off = a * attn_tensor_stride(t, 0) + b * attn_tensor_stride(t, 1) +
                c * attn_tensor_stride(t, 2) + d * attn_tensor_stride(t, 3);
  return attn_tensor_dtype(t) == ATTN_DTYPE_F32 ? ((const float *)attn_tensor_data(t))[off]
                                                : ((const double *)attn_tensor_data(t))[off];
}

static void split_view_indexes_heads(void **state) {
  (void)state;
  attn_context *ctx = new_ctx();
  const int64_t B = 2, S = 5, H = 3, D = 4, E = H * D;
  uint64_t seed = 11;
  for (int seq_first = 0; seq_first < 2; seq_first++) {
    double *x = tu_random((size_t)(B * S * E), &seed);
    /* The same [B, S, E] logical tensor stored batch-first or sequence-first. */
    int64_t shape[3] = {B, S, E};
    int64_t strides[3] = {seq_first ? E : S * E, seq_first ? B * E : E, 1};
    double *mem = malloc((size_t)(B * S * E) * sizeof *mem);
    for (int64_t b = 0; b < B; b++)
      for (int64_t s = 0; s < S; s++)
        for (int64_t f = 0; f < E; f++) mem[b * strides[0] + s * strides[1] + f] = x[(b * S + s) * E + f];
    attn_tensor *t = NULL, *v = NULL, *back = NULL;
    assert_int_equal(attn_tensor_wrap(ctx, ATTN_DTYPE_F64, 3, shape, strides, mem, &t), ATTN_OK);
    assert_int_equal(attn_heads_split_view(ctx, t, H, &v), ATTN_OK);
    assert_int_equal(attn_tensor_rank(v), 4);
    assert_int_equal(attn_tensor_dim(v, 1), H);
    assert_int_equal(attn_tensor_dim(v, 3), D);
    assert_ptr_equal(attn_tensor_data(v), mem); /* no copy */
    for (int64_t b = 0; b < B; b++)
      for (int64_t h = 0; h < H; h++)
        for (int64_t s = 0; s < S; s++)
          for (int64_t d = 0; d < D; d++)
            assert_true(at4(v, b, h, s, d) == x[(b * S + s) * E + h * D + d]);
    /* Merging the view back is a view with the original strides. */
    assert_int_equal(attn_heads_merge_view(ctx, v, &back), ATTN_OK);
    for (int i = 0; i < 3; i++) {
      assert_int_equal(attn_tensor_dim(back, i), shape[i]);
      assert_int_equal(attn_tensor_stride(back, i), strides[i]);
    }
    assert_ptr_equal(attn_tensor_data(back), mem);
    attn_tensor_destroy(back);
    attn_tensor_destroy(v);
    attn_tensor_destroy(t);
    free(mem);
    free(x);
  }
  attn_context_destroy(ctx);
}

static void split_and_merge_copies_round_trip(void **state) {
  (void)state;
  attn_context *ctx = new_ctx();
  const int64_t B = 3, S = 7, H = 4, D = 5, E = H * D;
  uint64_t seed = 12;
  for (int f32 = 0; f32 < 2; f32++) {
    attn_dtype dt = f32 ? ATTN_DTYPE_F32 : ATTN_DTYPE_F64;
    double *x = tu_random((size_t)(B * S * E), &seed);
    int64_t xs[3] = {B, S, E};
    attn_tensor *tx = tu_tensor(ctx, dt, x, 3, xs);
    /* out: [B, H, S, D] in [B, S, H, D] memory with padding, to use strides. */
    attn_tensor *th = tu_tensor4(ctx, dt, NULL, B, H, S, D, true);
    assert_int_equal(attn_heads_split(ctx, tx, th), ATTN_OK);
    for (int64_t b = 0; b < B; b++)
      for (int64_t h = 0; h < H; h++)
        for (int64_t s = 0; s < S; s++)
          for (int64_t d = 0; d < D; d++)
            assert_true(at4(th, b, h, s, d) == at3(tx, b, s, h * D + d));
    /* merge into a sequence-first-strided output */
    size_t n = (size_t)(B * S * E);
    void *mem = calloc(n, 8);
    int64_t ms[3] = {E, B * E, 1}; /* sequence-first memory */
    attn_tensor *tm = NULL;
    assert_int_equal(attn_tensor_wrap(ctx, dt, 3, xs, ms, mem, &tm), ATTN_OK);
    assert_int_equal(attn_heads_merge(ctx, th, tm), ATTN_OK);
    for (int64_t b = 0; b < B; b++)
      for (int64_t s = 0; s < S; s++)
        for (int64_t f = 0; f < E; f++) assert_true(at3(tm, b, s, f) == at3(tx, b, s, f));
    /* A contiguous [B, H, S, D] cannot be merged as a view. */
    attn_tensor *tc = tu_tensor4(ctx, dt, NULL, B, H, S, D, false), *bad = (attn_tensor *)0x1;
    assert_int_equal(attn_heads_merge_view(ctx, tc, &bad), ATTN_ERR_LAYOUT);
    assert_ptr_equal(bad, (attn_tensor *)0x1);
    assert_non_null(strstr(attn_context_last_error(ctx), "x:"));
    tu_tensor_free(tc);
    attn_tensor_destroy(tm);
    free(mem);
    tu_tensor_free(th);
    tu_tensor_free(tx);
    free(x);
  }
  attn_context_destroy(ctx);
}

/* The point of the views: attention runs on them directly. */
static void attention_on_split_views_matches_reference(void **state) {
  (void)state;
  attn_context *ctx = new_ctx();
  const int64_t B = 2, S = 37, H = 4, D = 8, E = H * D;
  uint64_t seed = 13;
  double *xq = tu_random((size_t)(B * S * E), &seed), *xk = tu_random((size_t)(B * S * E), &seed);
  double *xv = tu_random((size_t)(B * S * E), &seed);
  int64_t xs[3] = {B, S, E};
  attn_tensor *tq = tu_tensor(ctx, ATTN_DTYPE_F64, xq, 3, xs), *tk = tu_tensor(ctx, ATTN_DTYPE_F64, xk, 3, xs);
  attn_tensor *tv = tu_tensor(ctx, ATTN_DTYPE_F64, xv, 3, xs), *to = tu_tensor(ctx, ATTN_DTYPE_F64, NULL, 3, xs);
  attn_tensor *vq, *vk, *vv, *vo;
  assert_int_equal(attn_heads_split_view(ctx, tq, H, &vq), ATTN_OK);
  assert_int_equal(attn_heads_split_view(ctx, tk, H, &vk), ATTN_OK);
  assert_int_equal(attn_heads_split_view(ctx, tv, H, &vv), ATTN_OK);
  assert_int_equal(attn_heads_split_view(ctx, to, H, &vo), ATTN_OK);
  attn_desc *d;
  assert_int_equal(attn_desc_create(ctx, &d), ATTN_OK);
  assert_int_equal(attn_desc_set_causal(d, ATTN_CAUSAL_TOP_LEFT), ATTN_OK);
  assert_int_equal(attn_forward(ctx, d, vq, vk, vv, vo, NULL, NULL), ATTN_OK);
  /* reference on [B][H][S][D] copies made by index arithmetic */
  size_t n = (size_t)(B * S * E);
  double *q = malloc(n * 8), *k = malloc(n * 8), *v = malloc(n * 8), *ro = malloc(n * 8), *go = malloc(n * 8);
  for (int64_t b = 0; b < B; b++)
    for (int64_t h = 0; h < H; h++)
      for (int64_t s = 0; s < S; s++)
        for (int64_t e = 0; e < D; e++) {
          size_t i = (size_t)(((b * H + h) * S + s) * D + e), j = (size_t)((b * S + s) * E + h * D + e);
          q[i] = xq[j];
          k[i] = xk[j];
          v[i] = xv[j];
        }
  ref_problem p;
  ref_problem_init(&p, B, H, S, S, D);
  p.causal = 1;
  ref_attention(&p, q, k, v, ro, NULL, NULL, NULL);
  tu_read(vo, go);
  double e;
  assert_int_equal(tu_violations(go, ro, NULL, n, 1e-12, 1e-13, &e), 0);
  attn_desc_destroy(d);
  attn_tensor_destroy(vq); attn_tensor_destroy(vk); attn_tensor_destroy(vv); attn_tensor_destroy(vo);
  tu_tensor_free(tq); tu_tensor_free(tk); tu_tensor_free(tv); tu_tensor_free(to);
  free(xq); free(xk); free(xv); free(q); free(k); free(v); free(ro); free(go);
  attn_context_destroy(ctx);
}

static void bad_input_names_argument_and_leaves_output(void **state) {
  (void)state;
  attn_context *ctx = new_ctx();
  int64_t xs[3] = {2, 3, 12};
  attn_tensor *x = tu_tensor(ctx, ATTN_DTYPE_F32, NULL, 3, xs);
  attn_tensor *x64 = tu_tensor(ctx, ATTN_DTYPE_F64, NULL, 3, xs);
  attn_tensor *v = (attn_tensor *)0x1;
  assert_int_equal(attn_heads_split_view(NULL, x, 3, &v), ATTN_ERR_NULL_ARG);
  assert_int_equal(attn_heads_split_view(ctx, NULL, 3, &v), ATTN_ERR_NULL_ARG);
  assert_non_null(strstr(attn_context_last_error(ctx), "x"));
  assert_int_equal(attn_heads_split_view(ctx, x, 3, NULL), ATTN_ERR_NULL_ARG);
  assert_non_null(strstr(attn_context_last_error(ctx), "out"));
  assert_int_equal(attn_heads_split_view(ctx, x, 5, &v), ATTN_ERR_SHAPE);
  assert_non_null(strstr(attn_context_last_error(ctx), "num_heads"));
  assert_int_equal(attn_heads_split_view(ctx, x, 0, &v), ATTN_ERR_INVALID_ARG);
  assert_non_null(strstr(attn_context_last_error(ctx), "num_heads"));
  assert_ptr_equal(v, (attn_tensor *)0x1);
  /* non-contiguous last dim */
  float mem[200];
  int64_t st[3] = {36, 12, 2}, sh[3] = {2, 3, 6};
  attn_tensor *xn = NULL;
  assert_int_equal(attn_tensor_wrap(ctx, ATTN_DTYPE_F32, 3, sh, st, mem, &xn), ATTN_OK);
  assert_int_equal(attn_heads_split_view(ctx, xn, 3, &v), ATTN_ERR_LAYOUT);
  assert_ptr_equal(v, (attn_tensor *)0x1);
  /* copies: shape and dtype mismatches leave out untouched */
  attn_tensor *h = tu_tensor4(ctx, ATTN_DTYPE_F32, NULL, 2, 4, 3, 3, false);
  float *hd = attn_tensor_data(h);
  for (int i = 0; i < 72; i++) hd[i] = 7.0f;
  assert_int_equal(attn_heads_split(ctx, x, h), ATTN_OK); /* 4·3 = 12: fine */
  for (int i = 0; i < 72; i++) hd[i] = 7.0f;
  attn_tensor *hb = tu_tensor4(ctx, ATTN_DTYPE_F32, NULL, 2, 5, 3, 3, false);
  float *hbd = attn_tensor_data(hb);
  for (int i = 0; i < 90; i++) hbd[i] = 7.0f;
  assert_int_equal(attn_heads_split(ctx, x, hb), ATTN_ERR_SHAPE);
  assert_non_null(strstr(attn_context_last_error(ctx), "out"));
  for (int i = 0; i < 90; i++) assert_true(hbd[i] == 7.0f);
  assert_int_equal(attn_heads_split(ctx, x64, h), ATTN_ERR_DTYPE);
  assert_non_null(strstr(attn_context_last_error(ctx), "out"));
  assert_int_equal(attn_heads_merge(ctx, h, NULL), ATTN_ERR_NULL_ARG);
  assert_non_null(strstr(attn_context_last_error(ctx), "out"));
  assert_int_equal(attn_heads_merge(ctx, x, x), ATTN_ERR_SHAPE); /* x must be rank 4 */
  assert_non_null(strstr(attn_context_last_error(ctx), "x"));
  for (int i = 0; i < 72; i++) assert_true(hd[i] == 7.0f);
  attn_tensor_destroy(xn);
  tu_tensor_free(h); tu_tensor_free(hb); tu_tensor_free(x); tu_tensor_free(x64);
  attn_context_destroy(ctx);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(split_view_indexes_heads),
      cmocka_unit_test(split_and_merge_copies_round_trip),
      cmocka_unit_test(attention_on_split_views_matches_reference),
      cmocka_unit_test(bad_input_names_argument_and_leaves_output),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}

/* attn_merge_states against the naive f64 reference: attention over keys
 * [0, p) and over [p, S_k), each from the exact kernel, merged, equals the
 * reference over all keys for every split position p (the empty side of
 * p = 0 and p = S_k is lse −inf with NaN in its out, which must not be
 * read); in place into either input; f32 and f64; strided outputs; both
 * sides empty; a spread of lse beyond exp's range; lse optional. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "testutil.h"

enum { B_ = 2, H_ = 4, HKV = 2, SQ = 9, SK = 37, D_ = 16 };

static attn_tensor *wrap4(attn_context *ctx, attn_dtype dt, void *mem, const int64_t shape[4],
                          const int64_t strides[4]) {
  attn_tensor *t = NULL;
  assert_int_equal(attn_tensor_wrap(ctx, dt, 4, shape, strides, mem, &t), ATTN_OK);
  return t;
}

static attn_tensor *lse_tensor(attn_context *ctx, attn_dtype dt, double fill) {
  int64_t s[3] = {B_, H_, SQ};
  attn_tensor *t = tu_tensor(ctx, dt, NULL, 3, s);
  for (int64_t i = 0; i < B_ * H_ * SQ; i++) {
    if (dt == ATTN_DTYPE_F32) ((float *)attn_tensor_data(t))[i] = (float)fill;
    else ((double *)attn_tensor_data(t))[i] = fill;
  }
  return t;
}

static void fill_nan(attn_tensor *t) {
  int64_t n = attn_tensor_numel(t); /* dense tensors only */
  size_t es = attn_tensor_dtype(t) == ATTN_DTYPE_F64 ? 8 : 4;
  memset(attn_tensor_data(t), 0xFF, (size_t)n * es);
}

/* Exact attention of q over keys [j0, j1) of k/v into (out, lse); an empty
 * range gives NaN out (it must not be read) and lse −inf. */
static void part(attn_context *ctx, attn_dtype dt, attn_tensor *q, attn_tensor *k,
                 attn_tensor *v, int64_t j0, int64_t j1, attn_tensor *out, attn_tensor *lse) {
  if (j0 == j1) {
    fill_nan(out);
    for (int64_t i = 0; i < B_ * H_ * SQ; i++) {
      if (dt == ATTN_DTYPE_F32) ((float *)attn_tensor_data(lse))[i] = -INFINITY;
      else ((double *)attn_tensor_data(lse))[i] = -INFINITY;
    }
    return;
  }
  const size_t es = dt == ATTN_DTYPE_F64 ? 8 : 4;
  int64_t sh[4] = {B_, HKV, j1 - j0, D_}, st[4] = {HKV * SK * D_, SK * D_, D_, 1};
  attn_tensor *ks = wrap4(ctx, dt, (char *)attn_tensor_data(k) + (size_t)(j0 * D_) * es, sh, st);
  attn_tensor *vs = wrap4(ctx, dt, (char *)attn_tensor_data(v) + (size_t)(j0 * D_) * es, sh, st);
  attn_desc *d = NULL;
  assert_int_equal(attn_desc_create(ctx, &d), ATTN_OK);
  attn_status s = attn_forward(ctx, d, q, ks, vs, out, NULL, lse);
  if (s != ATTN_OK) fail_msg("part: %s", attn_context_last_error(ctx));
  attn_desc_destroy(d);
  attn_tensor_destroy(ks);
  attn_tensor_destroy(vs);
}

static void split_everywhere(attn_dtype dt, bool bshd, int inplace) {
  attn_context *ctx = tu_context(2);
  uint64_t seed = 0x5151 + (uint64_t)dt * 7 + (uint64_t)bshd * 13 + (uint64_t)inplace;
  size_t nq = (size_t)B_ * H_ * SQ * D_, nk = (size_t)B_ * HKV * SK * D_;
  double *q = tu_random(nq, &seed), *k = tu_random(nk, &seed), *v = tu_random(nk, &seed);
  for (size_t i = 0; i < nq; i++) q[i] *= 4.0; /* peaky: parts' lse differ a lot */
  ref_problem p;
  ref_problem_init(&p, B_, H_, SQ, SK, D_);
  p.Hkv = HKV;
  double *ro = malloc(nq * 8), *rb = malloc(nq * 8), *rl = malloc((size_t)(B_ * H_ * SQ) * 8);
  double *go = malloc(nq * 8), *gl = malloc((size_t)(B_ * H_ * SQ) * 8);
  attn_tensor *tq = tu_tensor4(ctx, dt, q, B_, H_, SQ, D_, false);
  attn_tensor *tk = tu_tensor4(ctx, dt, k, B_, HKV, SK, D_, false);
  attn_tensor *tv = tu_tensor4(ctx, dt, v, B_, HKV, SK, D_, false);
  /* The reference sees exactly what the library sees. */
  tu_read(tq, q);
  tu_read(tk, k);
  tu_read(tv, v);
  ref_attention(&p, q, k, v, ro, NULL, rl, rb);
  attn_tensor *oa = tu_tensor4(ctx, dt, NULL, B_, H_, SQ, D_, bshd);
  attn_tensor *ob = tu_tensor4(ctx, dt, NULL, B_, H_, SQ, D_, false);
  attn_tensor *om = tu_tensor4(ctx, dt, NULL, B_, H_, SQ, D_, !bshd);
  attn_tensor *la = lse_tensor(ctx, dt, 0), *lb = lse_tensor(ctx, dt, 0), *lm = lse_tensor(ctx, dt, 0);
  const bool f64 = dt == ATTN_DTYPE_F64;
  const double rtol = f64 ? 1e-12 : 1e-5, atol = f64 ? 1e-13 : 1e-6;
  for (int64_t s = 0; s <= SK; s++) {
    part(ctx, dt, tq, tk, tv, 0, s, oa, la);
    part(ctx, dt, tq, tk, tv, s, SK, ob, lb);
    attn_tensor *o = inplace == 1 ? oa : inplace == 2 ? ob : om;
    attn_tensor *l = inplace == 1 ? la : inplace == 2 ? lb : lm;
    attn_status st = attn_merge_states(ctx, oa, la, ob, lb, o, l);
    if (st != ATTN_OK) fail_msg("merge at %lld: %s", (long long)s, attn_context_last_error(ctx));
    tu_read(o, go);
    tu_read(l, gl);
    double e;
    size_t bad = tu_violations(go, ro, rb, nq, rtol, atol, &e);
    if (bad)
      fail_msg("split at %lld (%s, bshd %d, inplace %d): %zu outputs off, max err %g",
               (long long)s, f64 ? "f64" : "f32", bshd, inplace, bad, e);
    assert_int_equal(tu_violations(gl, rl, NULL, (size_t)(B_ * H_ * SQ), rtol, rtol, &e), 0);
  }
  print_message("%s bshd=%d inplace=%d: %d split positions match the reference\n",
                f64 ? "f64" : "f32", bshd, inplace, SK + 1);
  tu_tensor_free(tq); tu_tensor_free(tk); tu_tensor_free(tv);
  tu_tensor_free(oa); tu_tensor_free(ob); tu_tensor_free(om);
  tu_tensor_free(la); tu_tensor_free(lb); tu_tensor_free(lm);
  free(q); free(k); free(v); free(ro); free(rb); free(rl); free(go); free(gl);
  attn_context_destroy(ctx);
}

static void split_at_every_position_f32(void **state) {
  (void)state;
  split_everywhere(ATTN_DTYPE_F32, false, 0);
  split_everywhere(ATTN_DTYPE_F32, true, 1);
  split_everywhere(ATTN_DTYPE_F32, false, 2);
}

static void split_at_every_position_f64(void **state) {
  (void)state;
  split_everywhere(ATTN_DTYPE_F64, true, 0);
  split_everywhere(ATTN_DTYPE_F64, false, 1);
  split_everywhere(ATTN_DTYPE_F64, true, 2);
}

/* Both sides empty: out 0, lse −inf, even over NaN garbage; one side empty:
 * the other copied bitwise; a spread beyond exp's range: the far side
 * vanishes; lse NULL is accepted. */
static void empty_sides_and_extreme_spreads(void **state) {
  (void)state;
  attn_context *ctx = tu_context(1);
  for (int di = 0; di < 2; di++) {
    attn_dtype dt = di ? ATTN_DTYPE_F64 : ATTN_DTYPE_F32;
    uint64_t seed = 99;
    size_t n = (size_t)B_ * H_ * SQ * D_, nr = (size_t)B_ * H_ * SQ;
    double *x = tu_random(n, &seed), *y = tu_random(n, &seed);
    double *g = malloc(n * 8), *gl = malloc(nr * 8), *xa = malloc(n * 8);
    attn_tensor *oa = tu_tensor4(ctx, dt, x, B_, H_, SQ, D_, false);
    attn_tensor *ob = tu_tensor4(ctx, dt, y, B_, H_, SQ, D_, true);
    attn_tensor *o = tu_tensor4(ctx, dt, NULL, B_, H_, SQ, D_, false);
    tu_read(oa, xa);
    /* both empty */
    attn_tensor *la = lse_tensor(ctx, dt, -INFINITY), *lb = lse_tensor(ctx, dt, -INFINITY);
    attn_tensor *l = lse_tensor(ctx, dt, 5.0);
    fill_nan(oa);
    assert_int_equal(attn_merge_states(ctx, oa, la, ob, lb, o, l), ATTN_OK);
    tu_read(o, g);
    tu_read(l, gl);
    for (size_t i = 0; i < n; i++) assert_true(g[i] == 0.0);
    for (size_t i = 0; i < nr; i++) assert_true(isinf(gl[i]) && gl[i] < 0);
    /* b empty, a kept something: a bitwise (b's NaN never read) */
    tu_tensor_free(oa);
    oa = tu_tensor4(ctx, dt, x, B_, H_, SQ, D_, false);
    fill_nan(ob);
    tu_tensor_free(la);
    la = lse_tensor(ctx, dt, 3.25);
    assert_int_equal(attn_merge_states(ctx, oa, la, ob, lb, o, NULL), ATTN_OK);
    tu_read(o, g);
    assert_memory_equal(g, xa, n * 8);
    /* a far above b: e^{lb − la} underflows to 0, b drops out exactly */
    tu_tensor_free(ob);
    ob = tu_tensor4(ctx, dt, y, B_, H_, SQ, D_, true);
    tu_tensor_free(lb);
    lb = lse_tensor(ctx, dt, di ? -2000.0 : -200.0);
    assert_int_equal(attn_merge_states(ctx, oa, la, ob, lb, o, l), ATTN_OK);
    tu_read(o, g);
    tu_read(l, gl);
    assert_memory_equal(g, xa, n * 8);
    for (size_t i = 0; i < nr; i++) assert_true(gl[i] == 3.25);
    /* equal lse: the mean, lse + log 2 */
    tu_tensor_free(lb);
    lb = lse_tensor(ctx, dt, 3.25);
    assert_int_equal(attn_merge_states(ctx, oa, la, ob, lb, o, l), ATTN_OK);
    tu_read(o, g);
    tu_read(l, gl);
    double *yr = malloc(n * 8);
    tu_read(ob, yr);
    double tol = di ? 1e-15 : 1e-6;
    for (size_t i = 0; i < n; i++) assert_true(fabs(g[i] - 0.5 * (xa[i] + yr[i])) <= tol);
    for (size_t i = 0; i < nr; i++) assert_true(fabs(gl[i] - (3.25 + log(2.0))) <= tol * 4);
    free(yr);
    tu_tensor_free(oa); tu_tensor_free(ob); tu_tensor_free(o);
    tu_tensor_free(la); tu_tensor_free(lb); tu_tensor_free(l);
    free(x); free(y); free(g); free(gl); free(xa);
  }
  attn_context_destroy(ctx);
}

/* A three-way split merged in either order agrees (associativity within
 * rounding), and the same call twice is bitwise identical. */
static void three_way_and_deterministic(void **state) {
  (void)state;
  attn_context *ctx = tu_context(1);
  attn_dtype dt = ATTN_DTYPE_F64;
  uint64_t seed = 4242;
  size_t nq = (size_t)B_ * H_ * SQ * D_, nk = (size_t)B_ * HKV * SK * D_;
  double *q = tu_random(nq, &seed), *k = tu_random(nk, &seed), *v = tu_random(nk, &seed);
  attn_tensor *tq = tu_tensor4(ctx, dt, q, B_, H_, SQ, D_, false);
  attn_tensor *tk = tu_tensor4(ctx, dt, k, B_, HKV, SK, D_, false);
  attn_tensor *tv = tu_tensor4(ctx, dt, v, B_, HKV, SK, D_, false);
  attn_tensor *o[3], *l[3];
  const int64_t cut[4] = {0, 10, 23, SK};
  for (int i = 0; i < 3; i++) {
    o[i] = tu_tensor4(ctx, dt, NULL, B_, H_, SQ, D_, false);
    l[i] = lse_tensor(ctx, dt, 0);
    part(ctx, dt, tq, tk, tv, cut[i], cut[i + 1], o[i], l[i]);
  }
  attn_tensor *x = tu_tensor4(ctx, dt, NULL, B_, H_, SQ, D_, false), *lx = lse_tensor(ctx, dt, 0);
  attn_tensor *y = tu_tensor4(ctx, dt, NULL, B_, H_, SQ, D_, false), *ly = lse_tensor(ctx, dt, 0);
  /* (0 ∪ 1) ∪ 2 */
  assert_int_equal(attn_merge_states(ctx, o[0], l[0], o[1], l[1], x, lx), ATTN_OK);
  assert_int_equal(attn_merge_states(ctx, x, lx, o[2], l[2], x, lx), ATTN_OK);
  /* 0 ∪ (2 ∪ 1) */
  assert_int_equal(attn_merge_states(ctx, o[2], l[2], o[1], l[1], y, ly), ATTN_OK);
  assert_int_equal(attn_merge_states(ctx, o[0], l[0], y, ly, y, ly), ATTN_OK);
  double *gx = malloc(nq * 8), *gy = malloc(nq * 8), *ro = malloc(nq * 8), *rb = malloc(nq * 8);
  tu_read(x, gx);
  tu_read(y, gy);
  ref_problem p;
  ref_problem_init(&p, B_, H_, SQ, SK, D_);
  p.Hkv = HKV;
  ref_attention(&p, q, k, v, ro, NULL, NULL, rb);
  double e;
  assert_int_equal(tu_violations(gx, ro, rb, nq, 1e-12, 1e-13, &e), 0);
  assert_int_equal(tu_violations(gy, ro, rb, nq, 1e-12, 1e-13, &e), 0);
  /* bitwise repeatable */
  assert_int_equal(attn_merge_states(ctx, o[0], l[0], o[1], l[1], y, ly), ATTN_OK);
  assert_int_equal(attn_merge_states(ctx, y, ly, o[2], l[2], y, ly), ATTN_OK);
  tu_read(y, gy);
  assert_memory_equal(gx, gy, nq * 8);
  for (int i = 0; i < 3; i++) tu_tensor_free(o[i]), tu_tensor_free(l[i]);
  tu_tensor_free(x); tu_tensor_free(lx); tu_tensor_free(y); tu_tensor_free(ly);
  tu_tensor_free(tq); tu_tensor_free(tk); tu_tensor_free(tv);
  free(q); free(k); free(v); free(gx); free(gy); free(ro); free(rb);
  attn_context_destroy(ctx);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(split_at_every_position_f32),
      cmocka_unit_test(split_at_every_position_f64),
      cmocka_unit_test(empty_sides_and_extreme_spreads),
      cmocka_unit_test(three_way_and_deterministic),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}

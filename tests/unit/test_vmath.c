/* The vector exp/max/tanh of every ISA this CPU runs, against libm in
 * double: accuracy, exact zeros for masked (−inf and underflowing) scores,
 * NaN propagation, and every tail length around the vector widths. */
#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/vmath.h"
#include "testutil.h"

static const char *const isas[] = {"generic", "avx2", "avx512"};

static double ulp_err(float got, double want) {
  if (want == 0) return got == 0 ? 0 : INFINITY;
  int e = ilogb((float)want);
  double ulp = ldexp(1.0, (e < -126 ? -126 : e) - 23); /* subnormals: fixed spacing */
  return fabs((double)got - want) / ulp;
}

static void exp_is_accurate_and_masks_are_exact_zeros(void **state) {
  (void)state;
  uint64_t seed = 3;
  for (int a = 0; a < 3; a++) {
    const attn_vmath *vm = attn_vmath_isa(isas[a]);
    if (vm == NULL) continue;
    for (int n = 0; n <= 70; n++) {
      float x[70] = {0}, y[70];
      for (int i = 0; i < n; i++) x[i] = (float)tu_uniform(&seed, -100.0, 0.0);
      if (n > 3) x[1] = -INFINITY, x[2] = -87.5f, x[3] = 0.0f;
      memcpy(y, x, sizeof x);
      float m = n > 0 ? 0.5f : 0.0f;
      float sum = vm->exp_sub_sum_f32(y, n, m);
      double want_sum = 0, worst = 0;
      for (int i = 0; i < n; i++) {
        double want = exp((double)(float)(x[i] - m)); /* the subtraction is f32 by contract */
        if ((double)(float)(x[i] - m) < -87.33654) {
          if (y[i] != 0.0f) fail_msg("%s: exp(%g) = %g, want exactly 0", isas[a], (double)x[i] - m, (double)y[i]);
          continue;
        }
        want_sum += want;
        double e = ulp_err(y[i], want);
        if (e > worst) worst = e;
      }
      if (worst > 3.0) {
        for (int i = 0; i < n; i++)
          if (ulp_err(y[i], exp((double)(float)(x[i] - m))) > 3.0 && (double)(float)(x[i] - m) >= -87.33654)
            print_message("x-m = %.9g: got %.9g want %.9g\n", (double)x[i] - m, (double)y[i], exp((double)x[i] - m));
        fail_msg("%s n=%d: exp off by %.2f ulp", isas[a], n, worst);
      }
      if (fabs(sum - want_sum) > 1e-5 * (want_sum + 1e-30)) fail_msg("%s: sum %g want %g", isas[a], (double)sum, want_sum);
    }
    float nan_in[17];
    for (int i = 0; i < 17; i++) nan_in[i] = -1.0f;
    nan_in[16] = NAN;
    nan_in[5] = NAN;
    vm->exp_sub_sum_f32(nan_in, 17, 0.0f);
    assert_true(isnan(nan_in[5]) && isnan(nan_in[16]));
    assert_true(nan_in[0] > 0.36f && nan_in[0] < 0.37f);
  }
}

static void max_finds_the_largest_at_every_position(void **state) {
  (void)state;
  for (int a = 0; a < 3; a++) {
    const attn_vmath *vm = attn_vmath_isa(isas[a]);
    if (vm == NULL) continue;
    assert_true(vm->max_f32(NULL, 0) == -INFINITY);
    float x[40];
    for (int n = 1; n <= 40; n++)
      for (int at = 0; at < n; at++) {
        for (int i = 0; i < n; i++) x[i] = -(float)i - 1.0f;
        x[at] = 5.0f;
        if (vm->max_f32(x, n) != 5.0f) fail_msg("%s n=%d: max missed position %d", isas[a], n, at);
      }
  }
}

static void tanh_is_accurate_and_keeps_nan(void **state) {
  (void)state;
  uint64_t seed = 9;
  for (int a = 0; a < 3; a++) {
    const attn_vmath *vm = attn_vmath_isa(isas[a]);
    if (vm == NULL) continue;
    for (int n = 0; n <= 50; n++) {
      float x[50] = {0}, y[50];
      for (int i = 0; i < n; i++) x[i] = (float)tu_uniform(&seed, -12.0, 12.0);
      if (n > 4) x[0] = 0.0f, x[1] = 1e-5f, x[2] = -30.0f, x[3] = 0.0003f;
      memcpy(y, x, sizeof x);
      vm->tanh_f32(y, n);
      for (int i = 0; i < n; i++) {
        double want = tanh((double)x[i]);
        if (fabs(y[i] - want) > 4 * FLT_EPSILON * fmax(fabs(want), 1e-3))
          fail_msg("%s: tanh(%g) = %.9g, want %.9g", isas[a], (double)x[i], (double)y[i], want);
      }
    }
    float v[19];
    for (int i = 0; i < 19; i++) v[i] = 0.5f;
    v[3] = NAN;
    v[18] = NAN;
    vm->tanh_f32(v, 19);
    assert_true(isnan(v[3]) && isnan(v[18]));
    assert_true(fabs(v[0] - tanh(0.5)) < 1e-6);
  }
}

static void dispatch_picks_a_supported_isa(void **state) {
  (void)state;
  const attn_vmath *vm = attn_vmath_get();
  assert_non_null(vm);
  assert_ptr_equal(vm, attn_vmath_isa(vm->isa));
  print_message("vector math in use: %s\n", vm->isa);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(exp_is_accurate_and_masks_are_exact_zeros),
      cmocka_unit_test(max_finds_the_largest_at_every_position),
      cmocka_unit_test(tanh_is_accurate_and_keeps_nan),
      cmocka_unit_test(dispatch_picks_a_supported_isa),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}

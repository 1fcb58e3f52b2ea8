#include "testutil.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

double tu_uniform(uint64_t *s, double lo, double hi) {
  *s ^= *s >> 12;
  *s ^= *s << 25;
  *s ^= *s >> 27;
  uint64_t r = *s * 2685821657736338717ULL;
  return lo + (hi - lo) * (double)(r >> 11) * (1.0 / 9007199254740992.0);
}

void tu_fill(double *x, size_t n, uint64_t *state, double lo, double hi) {
  for (size_t i = 0; i < n; i++) x[i] = tu_uniform(state, lo, hi);
}

double *tu_random(size_t n, uint64_t *state) {
  double *x = malloc((n ? n : 1) * sizeof *x);
  tu_fill(x, n, state, -1.0, 1.0);
  return x;
}

static size_t esize(attn_dtype dt) {
  return dt == ATTN_DTYPE_F64 ? 8 : dt == ATTN_DTYPE_F32 ? 4 : tu_is_16bit(dt) ? 2 : 1;
}

/* Round x to a binary float with `sig` significand bits and minimum normal
 * exponent emin (values below are subnormals of that format), to nearest
 * even; written from the format definitions with frexp/ldexp, not from the
 * library's bit tricks. Overflow is the caller's concern. */
static double round_sig(double x, int sig, int emin) {
  if (x == 0 || !isfinite(x)) return x;
  int e;
  frexp(x, &e); /* x = m·2^e, 0.5 ≤ |m| < 1 */
  int ex = e - 1; /* x = 1.f·2^ex */
  if (ex < emin) ex = emin;
  const double ulp = ldexp(1.0, ex - (sig - 1));
  return nearbyint(x / ulp) * ulp; /* default rounding mode: to nearest even */
}

double tu_round_bf16(double x) { return round_sig(x, 8, -126); }
double tu_round_f16(double x) {
  const double r = round_sig(x, 11, -14);
  return fabs(r) > 65504.0 ? copysign(INFINITY, x) : r;
}

/* The bit patterns (IEEE layouts) of values already rounded to the format. */
static uint16_t bf16_bits(double x) {
  float f = (float)tu_round_bf16(x);
  uint32_t u;
  memcpy(&u, &f, 4);
  return (uint16_t)(u >> 16);
}
static uint16_t f16_bits(double x) {
  x = tu_round_f16(x);
  uint16_t sign = signbit(x) ? 0x8000u : 0;
  x = fabs(x);
  if (isinf(x)) return sign | 0x7c00u;
  if (x != x) return 0x7e00u;
  if (x < ldexp(1.0, -14)) return sign | (uint16_t)nearbyint(x / ldexp(1.0, -24));
  int e;
  double m = frexp(x, &e); /* x = m·2^e, m in [0.5, 1) */
  return sign | (uint16_t)((e - 1 + 15) << 10) | (uint16_t)nearbyint((m * 2 - 1) * 1024);
}
static double bf16_value(uint16_t h) {
  uint32_t u = (uint32_t)h << 16;
  float f;
  memcpy(&f, &u, 4);
  return f;
}
static double f16_value(uint16_t h) {
  const int e = (h >> 10) & 31, m = h & 1023;
  const double s = (h & 0x8000u) ? -1.0 : 1.0;
  if (e == 31) return m ? NAN : s * INFINITY;
  if (e == 0) return s * ldexp(m, -24);
  return s * ldexp(1024 + m, e - 25);
}

void tu_store(void *base, attn_dtype dt, int64_t off, double x) {
  if (dt == ATTN_DTYPE_F64) ((double *)base)[off] = x;
  else if (dt == ATTN_DTYPE_F32) ((float *)base)[off] = (float)x;
  else if (dt == ATTN_DTYPE_BF16) ((uint16_t *)base)[off] = bf16_bits(x);
  else if (dt == ATTN_DTYPE_F16) ((uint16_t *)base)[off] = f16_bits(x);
  else ((uint8_t *)base)[off] = (uint8_t)(x != 0);
}

double tu_load(const void *base, attn_dtype dt, int64_t off) {
  if (dt == ATTN_DTYPE_F64) return ((const double *)base)[off];
  if (dt == ATTN_DTYPE_F32) return ((const float *)base)[off];
  if (dt == ATTN_DTYPE_BF16) return bf16_value(((const uint16_t *)base)[off]);
  if (dt == ATTN_DTYPE_F16) return f16_value(((const uint16_t *)base)[off]);
  return ((const uint8_t *)base)[off];
}

attn_tensor *tu_tensor4(attn_context *ctx, attn_dtype dt, const double *src, int64_t B,
                        int64_t H, int64_t S, int64_t D, bool bshd) {
  int64_t shape[4] = {B, H, S, D};
  int64_t strides[4];
  if (bshd) {
    strides[0] = S * H * D; strides[1] = D; strides[2] = H * D; strides[3] = 1;
  } else {
    strides[0] = H * S * D; strides[1] = S * D; strides[2] = D; strides[3] = 1;
  }
  void *mem = calloc((size_t)(B * H * S * D), esize(dt));
  for (int64_t b = 0; b < B; b++)
    for (int64_t h = 0; h < H; h++)
      for (int64_t s = 0; s < S; s++)
        for (int64_t d = 0; d < D; d++) {
          int64_t off = b * strides[0] + h * strides[1] + s * strides[2] + d;
          tu_store(mem, dt, off, src ? src[((b * H + h) * S + s) * D + d] : 0.0);
        }
  attn_tensor *t = NULL;
  if (attn_tensor_wrap(ctx, dt, 4, shape, strides, mem, &t) != ATTN_OK) {
    free(mem);
    return NULL;
  }
  return t;
}

attn_tensor *tu_tensor(attn_context *ctx, attn_dtype dt, const double *src, int32_t rank,
                       const int64_t *shape) {
  int64_t n = 1;
  for (int32_t i = 0; i < rank; i++) n *= shape[i];
  void *mem = calloc((size_t)n, esize(dt));
  for (int64_t i = 0; i < n; i++) tu_store(mem, dt, i, src ? src[i] : 0.0);
  attn_tensor *t = NULL;
  if (attn_tensor_wrap(ctx, dt, rank, shape, NULL, mem, &t) != ATTN_OK) {
    free(mem);
    return NULL;
  }
  return t;
}

void tu_tensor_free(attn_tensor *t) {
  if (t == NULL) return;
  void *mem = attn_tensor_data(t);
  attn_tensor_destroy(t);
  free(mem);
}

void tu_read(const attn_tensor *t, double *dst) {
  int32_t r = attn_tensor_rank(t);
  int64_t shape[4] = {1, 1, 1, 1}, strides[4] = {0, 0, 0, 0};
  for (int32_t i = 0; i < r; i++) {
    shape[4 - r + i] = attn_tensor_dim(t, i);
    strides[4 - r + i] = attn_tensor_stride(t, i);
  }
  size_t n = 0;
  for (int64_t a = 0; a < shape[0]; a++)
    for (int64_t b = 0; b < shape[1]; b++)
      for (int64_t c = 0; c < shape[2]; c++)
        for (int64_t d = 0; d < shape[3]; d++)
          dst[n++] = tu_load(attn_tensor_data(t), attn_tensor_dtype(t),
                          a * strides[0] + b * strides[1] + c * strides[2] + d * strides[3]);
}

size_t tu_violations(const double *got, const double *ref, const double *bound, size_t n,
                     double rtol, double atol, double *max_err) {
  size_t bad = 0;
  double mx = 0;
  for (size_t i = 0; i < n; i++) {
    double e = fabs(got[i] - ref[i]);
    if (got[i] == ref[i]) e = 0; /* equal infinities */
    double tol = rtol * (bound ? bound[i] : fabs(ref[i])) + atol;
    if (!(e <= tol)) {
      if (bad == 0 && getenv("ATTN_TEST_VERBOSE"))
        print_message("first violation at %zu: got %.9g want %.9g (tol %.3g)\n", i, got[i], ref[i], tol);
      bad++;
    }
    if (e > mx || e != e) mx = e;
  }
  if (max_err) *max_err = mx;
  return bad;
}

void *tu_counting_alloc(void *user, size_t size, size_t alignment) {
  tu_counter *c = user;
  c->allocs++;
  if (c->fail_at > 0 && c->allocs == c->fail_at) return NULL;
  void *p = aligned_alloc(alignment, (size + alignment - 1) / alignment * alignment);
  if (p) c->outstanding_bytes += (int64_t)size;
  return p;
}

void tu_counting_free(void *user, void *ptr, size_t size) {
  tu_counter *c = user;
  c->frees++;
  c->outstanding_bytes -= (int64_t)size;
  free(ptr);
}

attn_context *tu_counting_context(tu_counter *c, int32_t threads) {
  attn_context_options o;
  attn_context_options_init(&o);
  o.num_threads = threads;
  o.allocator.alloc = tu_counting_alloc;
  o.allocator.free = tu_counting_free;
  o.allocator.user_data = c;
  attn_context *ctx = NULL;
  if (attn_context_create(&o, &ctx) != ATTN_OK) return NULL;
  return ctx;
}

attn_context *tu_context(int32_t n) {
  attn_context_options o;
  attn_context_options_init(&o);
  o.num_threads = n;
  attn_context *ctx = NULL;
  assert_int_equal(attn_context_create(&o, &ctx), ATTN_OK);
  return ctx;
}

bool tu_quick(void) {
  const char *q = getenv("ATTN_TEST_QUICK");
  return q != NULL && q[0] == '1';
}

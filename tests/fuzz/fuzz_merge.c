/* libFuzzer target: attn_merge_states on small tensors (B, H ≤ 3, S ≤ 9,
 * d_v ≤ 9) with fuzzed lse values (finite, huge, −inf, NaN, +inf), outputs
 * in [B,H,S,D] or [B,S,H,D] order, broadcast (stride 0) inputs, and the
 * output placed apart, in place over out_a or out_b, or overlapping an input
 * by a shifted view. Traps when:
 *  - a call succeeds although an lse is NaN/+inf or an output overlaps
 *    memory it may not, or fails on valid input;
 *  - a failing call wrote anything (the whole buffer is compared);
 *  - a result differs from the formula evaluated here in long double by
 *    more than 8u relative (out: of max |out_a|, |out_b| of the row), a
 *    row with both sides −inf is not exactly 0 / −inf, or a side with lse
 *    −inf was read (its out holds NaN);
 *  - the call allocates (it is documented not to). */
#include <math.h>

#include "fuzz_common.h"

static fz_alloc g_alloc;
static attn_context *g_ctx;
static int64_t g_baseline; /* bytes the context itself keeps */

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (g_ctx == NULL) {
    g_alloc.cap = (size_t)64 << 20;
    g_ctx = fz_context(&g_alloc, 1);
    g_baseline = g_alloc.outstanding;
  }
  fz in = {data, size};
  const bool f64 = fz_bool(&in);
  const attn_dtype dt = f64 ? ATTN_DTYPE_F64 : ATTN_DTYPE_F32;
  const size_t es = f64 ? 8 : 4;
  const int64_t B = fz_range(&in, 1, 3), H = fz_range(&in, 1, 3), S = fz_range(&in, 1, 9),
                D = fz_range(&in, 1, 9);
  const bool bshd = fz_bool(&in), bcast_b = fz_bool(&in), want_lse = fz_u8(&in) % 4 != 0;
  const int alias = fz_u8(&in) % 5; /* 0 apart, 1 out = a, 2 out = b, 3 out shifted over a, 4 lse over out */
  const int64_t n = B * H * S * D, nr = B * H * S;
  /* One buffer: out_a | out_b | lse_a | lse_b | out | lse, each region n or nr elements. */
  const int64_t at_a = 0, at_b = n, at_la = 2 * n, at_lb = 2 * n + nr, at_o = 2 * n + 2 * nr,
                at_l = 3 * n + 2 * nr, total = 3 * n + 3 * nr + 1;
  unsigned char *buf = malloc((size_t)total * es);
  double *ref = malloc((size_t)(n + nr) * sizeof(double));
#define PUT(i, x) (f64 ? (void)(((double *)buf)[i] = (x)) : (void)(((float *)buf)[i] = (float)(x)))
#define GET(i) (f64 ? ((double *)buf)[i] : (double)((float *)buf)[i])
  uint64_t s = fz_u64(&in) | 1;
  for (int64_t i = 0; i < total; i++) {
    s ^= s << 13, s ^= s >> 7, s ^= s << 17;
    PUT(i, (double)(s % 2001) / 1000.0 - 1.0);
  }
  bool bad_lse = false;
  for (int64_t i = 0; i < 2 * nr; i++) {
    double x;
    switch (fz_u8(&in) % 8) {
      case 0: x = -INFINITY; break;
      case 1: x = f64 ? 700.0 : 80.0; break;
      case 2: x = f64 ? -745.0 : -104.0; break;
      case 3: x = fz_u8(&in) == 7 ? NAN : fz_u8(&in) == 9 ? INFINITY : 0.0; break;
      default: x = (double)fz_range(&in, 0, 4000) / 100.0 - 20.0;
    }
    if (isnan(x) || x == INFINITY) bad_lse = true;
    PUT(at_la + i, x);
  }
  /* Strides of the outs ([B,H,S,D] or [B,S,H,D] memory) and the lses. */
  int64_t os[4], ls[3] = {H * S, S, 1};
  if (bshd) os[0] = S * H * D, os[1] = D, os[2] = H * D, os[3] = 1;
  else os[0] = H * S * D, os[1] = S * D, os[2] = D, os[3] = 1;
  int64_t osb[4] = {bcast_b ? 0 : os[0], os[1], os[2], os[3]};
  const int64_t shape[4] = {B, H, S, D};
  attn_tensor *ta = NULL, *tb = NULL, *tla = NULL, *tlb = NULL, *to = NULL, *tl = NULL;
  char *base = (char *)buf;
  if (attn_tensor_wrap(g_ctx, dt, 4, shape, os, base + at_a * (int64_t)es, &ta) != ATTN_OK ||
      attn_tensor_wrap(g_ctx, dt, 4, shape, osb, base + at_b * (int64_t)es, &tb) != ATTN_OK ||
      attn_tensor_wrap(g_ctx, dt, 3, shape, ls, base + at_la * (int64_t)es, &tla) != ATTN_OK ||
      attn_tensor_wrap(g_ctx, dt, 3, shape, ls, base + at_lb * (int64_t)es, &tlb) != ATTN_OK)
    abort();
  int64_t o_at = alias == 1 ? at_a : alias == 2 ? at_b : alias == 3 ? at_a + 1 : at_o;
  const int64_t *ostr = alias == 2 ? osb : os;
  if (alias == 2 && bcast_b) ostr = os, o_at = at_o; /* a broadcast input cannot be an output */
  if (attn_tensor_wrap(g_ctx, dt, 4, shape, ostr, base + o_at * (int64_t)es, &to) != ATTN_OK) abort();
  if (want_lse &&
      attn_tensor_wrap(g_ctx, dt, 3, shape, ls, base + (alias == 4 ? at_o : at_l) * (int64_t)es, &tl) != ATTN_OK)
    abort();
  const bool overlap = (alias == 3 && n > 1) || (alias == 4 && want_lse); /* n = 1: shifted = apart */
  /* The expected result, from the inputs before the call. */
  bool read_empty_side = false;
  for (int64_t b = 0; b < B; b++)
    for (int64_t h = 0; h < H; h++)
      for (int64_t i = 0; i < S; i++) {
        const int64_t r = (b * H + h) * S + i;
        long double la = GET(at_la + b * ls[0] + h * ls[1] + i), lb = GET(at_lb + b * ls[0] + h * ls[1] + i);
        long double m = la > lb ? la : lb;
        long double wa = m == -INFINITY ? 0 : expl(la - m), wb = m == -INFINITY ? 0 : expl(lb - m);
        ref[n + r] = m == -INFINITY ? -INFINITY : (double)(m + logl(wa + wb));
        for (int64_t x = 0; x < D; x++) {
          long double va = GET(at_a + b * os[0] + h * os[1] + i * os[2] + x);
          long double vb = GET(at_b + b * osb[0] + h * osb[1] + i * osb[2] + x);
          ref[((b * H + h) * S + i) * D + x] =
              m == -INFINITY ? 0.0 : (double)(((wa > 0 ? wa * va : 0) + (wb > 0 ? wb * vb : 0)) / (wa + wb));
        }
        /* Poison an empty side's out: it must not be read (unless aliased). */
        if (alias == 0 && !bcast_b && lb == -INFINITY && la > -INFINITY) {
          for (int64_t x = 0; x < D; x++) PUT(at_b + b * osb[0] + h * osb[1] + i * osb[2] + x, NAN);
          read_empty_side = true;
        }
      }
  unsigned char *before = malloc((size_t)total * es);
  memcpy(before, buf, (size_t)total * es);
  const int64_t allocs = g_alloc.count;
  attn_status st = attn_merge_states(g_ctx, ta, tla, tb, tlb, to, tl);
  FZ_CHECK(g_alloc.count == allocs, "merge allocated");
  FZ_CHECK(fz_status_known(st), "status %d", (int)st);
  if (bad_lse || overlap) {
    FZ_CHECK(st != ATTN_OK, "accepted bad input (bad_lse %d overlap %d)", bad_lse, overlap);
    FZ_CHECK(memcmp(before, buf, (size_t)total * es) == 0, "a failing call wrote");
    FZ_CHECK(attn_context_last_error(g_ctx)[0] != '\0', "no message");
  } else {
    FZ_CHECK(st == ATTN_OK, "refused valid input: %s", attn_context_last_error(g_ctx));
    const double u = f64 ? 1.2e-16 : 6e-8;
    for (int64_t b = 0; b < B; b++)
      for (int64_t h = 0; h < H; h++)
        for (int64_t i = 0; i < S; i++) {
          const int64_t r = (b * H + h) * S + i;
          if (tl) {
            double g = GET((alias == 4 ? at_o : at_l) + b * ls[0] + h * ls[1] + i), w = ref[n + r];
            FZ_CHECK(isinf(w) ? g == w : fabs(g - w) <= 8 * u * (1 + fabs(w)), "lse %g vs %g", g, w);
          }
          for (int64_t x = 0; x < D; x++) {
            double g = GET(o_at + b * ostr[0] + h * ostr[1] + i * ostr[2] + x);
            double w = ref[r * D + x];
            FZ_CHECK(!isnan(g), "NaN out (empty side read: %d)", read_empty_side);
            FZ_CHECK(fabs(g - w) <= 8 * u, "out %g vs %g", g, w);
          }
        }
  }
  attn_tensor_destroy(ta), attn_tensor_destroy(tb), attn_tensor_destroy(tla);
  attn_tensor_destroy(tlb), attn_tensor_destroy(to), attn_tensor_destroy(tl);
  FZ_CHECK(g_alloc.outstanding == g_baseline, "leak: %lld bytes",
           (long long)(g_alloc.outstanding - g_baseline));
  free(before);
  free(buf);
  free(ref);
  return 0;
}

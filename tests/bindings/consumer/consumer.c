/* A tiny libattn consumer, built against an *installed* libattn (pkg-config
 * or find_package): causal self-attention on a fixed input, checked against
 * naive loops written here. Exit 0 = the installed headers, library and
 * link flags work and compute the right thing. */
#include <attn/attn.h>
#include <math.h>
#include <stdio.h>

enum { B = 1, H = 2, S = 5, D = 4 };

int main(void) {
  if (attn_version_number() / 10000 != ATTN_VERSION_MAJOR) {
    fprintf(stderr, "consumer: header major %d, library %s\n", ATTN_VERSION_MAJOR,
            attn_version_string());
    return 1;
  }
  static float q[B * H * S * D], k[B * H * S * D], v[B * H * S * D], out[B * H * S * D];
  for (int i = 0; i < B * H * S * D; i++) {
    q[i] = (float)sin(0.7 * i);
    k[i] = (float)cos(0.3 * i);
    v[i] = (float)(0.05 * (i % 11) - 0.2);
  }
  const int64_t shape[4] = {B, H, S, D};
  attn_context *ctx = NULL;
  attn_desc *desc = NULL;
  attn_tensor *tq = NULL, *tk = NULL, *tv = NULL, *to = NULL;
  attn_status st = attn_context_create(NULL, &ctx);
  if (st == ATTN_OK) st = attn_desc_create(ctx, &desc);
  if (st == ATTN_OK) st = attn_desc_set_causal(desc, ATTN_CAUSAL_TOP_LEFT);
  if (st == ATTN_OK) st = attn_tensor_wrap(ctx, ATTN_DTYPE_F32, 4, shape, NULL, q, &tq);
  if (st == ATTN_OK) st = attn_tensor_wrap(ctx, ATTN_DTYPE_F32, 4, shape, NULL, k, &tk);
  if (st == ATTN_OK) st = attn_tensor_wrap(ctx, ATTN_DTYPE_F32, 4, shape, NULL, v, &tv);
  if (st == ATTN_OK) st = attn_tensor_wrap(ctx, ATTN_DTYPE_F32, 4, shape, NULL, out, &to);
  if (st == ATTN_OK) st = attn_forward(ctx, desc, tq, tk, tv, to, NULL, NULL);
  if (st != ATTN_OK)
    fprintf(stderr, "consumer: %s: %s\n", attn_status_string(st), attn_context_last_error(ctx));
  attn_tensor_destroy(tq);
  attn_tensor_destroy(tk);
  attn_tensor_destroy(tv);
  attn_tensor_destroy(to);
  attn_desc_destroy(desc);
  attn_context_destroy(ctx);
  if (st != ATTN_OK) return 1;

  double max_err = 0.0;
  for (int h = 0; h < H; h++) {
    const float *qh = q + h * S * D, *kh = k + h * S * D, *vh = v + h * S * D;
    for (int i = 0; i < S; i++) {
      double s[S], m = -INFINITY, l = 0.0;
      for (int j = 0; j <= i; j++) {
        double dot = 0.0;
        for (int d = 0; d < D; d++) dot += (double)qh[i * D + d] * kh[j * D + d];
        s[j] = dot / sqrt((double)D);
        if (s[j] > m) m = s[j];
      }
      for (int j = 0; j <= i; j++) l += exp(s[j] - m);
      for (int d = 0; d < D; d++) {
        double o = 0.0;
        for (int j = 0; j <= i; j++) o += exp(s[j] - m) / l * vh[j * D + d];
        double e = fabs(o - out[(h * S + i) * D + d]);
        if (!(e <= max_err)) max_err = e; /* NaN counts as an error */
      }
    }
  }
  printf("consumer: libattn %s, causal attention max error %.3g\n", attn_version_string(), max_err);
  return max_err < 1e-5 ? 0 : 1;
}

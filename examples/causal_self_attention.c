/* Causal self-attention on a built-in input, checked against a naive loop.
 * Prints the result's checksum and its max error; exits 1 if the error is
 * out of tolerance. The smallest complete use of the plan API. */
#include <attn/attn.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

enum { B = 2, H = 4, S = 256, D = 64 };

static float input(int which, size_t i) { /* deterministic, in [-1, 1) */
  uint32_t x = (uint32_t)(i * 2654435761u) ^ (uint32_t)(which * 0x9E3779B9u);
  x ^= x >> 15;
  x *= 0x2C1B3C6Du;
  x ^= x >> 12;
  return (float)(x & 0xFFFF) / 32768.0f - 1.0f;
}

/* out_i = Σ_{j ≤ i} softmax_j(q_i·k_j / √D) v_j, in double. */
static void naive(const float *q, const float *k, const float *v, double *out) {
  for (int bh = 0; bh < B * H; bh++)
    for (int i = 0; i < S; i++) {
      const float *qi = q + ((size_t)bh * S + i) * D;
      double s[S], mx = -INFINITY, sum = 0;
      for (int j = 0; j <= i; j++) {
        const float *kj = k + ((size_t)bh * S + j) * D;
        double dot = 0;
        for (int d = 0; d < D; d++) dot += (double)qi[d] * kj[d];
        s[j] = dot / sqrt((double)D);
        if (s[j] > mx) mx = s[j];
      }
      for (int j = 0; j <= i; j++) sum += s[j] = exp(s[j] - mx);
      double *oi = out + ((size_t)bh * S + i) * D;
      for (int d = 0; d < D; d++) oi[d] = 0;
      for (int j = 0; j <= i; j++)
        for (int d = 0; d < D; d++) oi[d] += s[j] / sum * v[((size_t)bh * S + j) * D + d];
    }
}

#define CHECK(call)                                                              \
  do {                                                                           \
    attn_status st_ = (call);                                                    \
    if (st_ != ATTN_OK) {                                                        \
      fprintf(stderr, "%s: %s (%s)\n", #call, attn_status_string(st_),           \
              attn_context_last_error(ctx));                                     \
      return 1;                                                                  \
    }                                                                            \
  } while (0)

int main(void) {
  attn_context *ctx = NULL;
  if (attn_context_create(NULL, &ctx) != ATTN_OK) return 1;

  const int64_t shape[4] = {B, H, S, D};
  attn_tensor *q, *k, *v, *out;
  CHECK(attn_tensor_create(ctx, ATTN_DTYPE_F32, 4, shape, &q));
  CHECK(attn_tensor_create(ctx, ATTN_DTYPE_F32, 4, shape, &k));
  CHECK(attn_tensor_create(ctx, ATTN_DTYPE_F32, 4, shape, &v));
  CHECK(attn_tensor_create(ctx, ATTN_DTYPE_F32, 4, shape, &out));
  float *qp = attn_tensor_data(q), *kp = attn_tensor_data(k), *vp = attn_tensor_data(v);
  const size_t n = (size_t)B * H * S * D;
  for (size_t i = 0; i < n; i++) {
    qp[i] = input(1, i);
    kp[i] = input(2, i);
    vp[i] = input(3, i);
  }

  attn_desc *desc;
  CHECK(attn_desc_create(ctx, &desc));
  CHECK(attn_desc_set_causal(desc, ATTN_CAUSAL_TOP_LEFT));
  attn_plan *plan; /* validate once, allocate workspace once ... */
  CHECK(attn_plan_create(ctx, desc, q, k, v, out, NULL, NULL, &plan));
  CHECK(attn_plan_execute(plan, q, k, v, out, NULL, NULL)); /* ... run many times */

  double *ref = malloc(n * sizeof *ref), checksum = 0, max_err = 0;
  naive(qp, kp, vp, ref);
  const float *o = attn_tensor_data(out);
  for (size_t i = 0; i < n; i++) {
    checksum += o[i];
    if (fabs(o[i] - ref[i]) > max_err) max_err = fabs(o[i] - ref[i]);
  }
  printf("libattn %s: causal self-attention B=%d H=%d S=%d D=%d (%d threads)\n",
         attn_version_string(), B, H, S, D, attn_context_num_threads(ctx));
  printf("checksum %.6f   max |error| vs naive f64 loop: %.3g\n", checksum, max_err);

  free(ref);
  attn_plan_destroy(plan);
  attn_desc_destroy(desc);
  attn_tensor_destroy(q);
  attn_tensor_destroy(k);
  attn_tensor_destroy(v);
  attn_tensor_destroy(out);
  attn_context_destroy(ctx);
  return max_err < 1e-5 ? 0 : 1;
}

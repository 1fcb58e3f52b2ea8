/* libFuzzer target: small executes (every dim ≤ 64) compared with the naive
 * f64 reference of tests/common/reference.c. The input picks dtype, shapes, GQA,
 * [B,S,H,D] layout, score kind and scale, causal alignment, window, key and
 * query lengths, bool/additive masks (with −inf and −FLT_MAX), ALiBi,
 * softcap, weights/lse, thread count and the data. Traps when:
 *  - out, lse or weights differ from the reference by more than the bound
 *    below, or anything is NaN where the reference is not;
 *  - a second execute, or the same plan on a 1-thread context, is not
 *    bitwise identical; execute allocates; anything leaks.
 * With lse and no key mass the backward (attn/backward.h) runs on
 * the same problem too (with the general and additive scores' weight
 * gradients, bitwise across thread counts and finite; in bf16/f16 the
 * bounds add the storage's rounding of each gradient) (with the additive mask's gradient when there is
 * one, and the sink logits' gradient with sinks), and traps when it fails,
 * allocates, is not bitwise identical on one thread, gives a non-finite
 * gradient for finite inputs, or breaks the exact identity
 * Σ_j dv_j = Σ_{i kept} (1 − p_sink,i)·dout_i (per kv head, over its query
 * heads; p_sink,i = e^{sink − lse_i}, 0 without sinks; bound
 * (S_q·g + S_k + 8)·u·Σ|dout| + Σ_i |dout_i|·(e^{4δ_i + lse's bound} − 1):
 * the backward may recompute a score with another rounding than the
 * forward whose lse it uses), or, with sinks, when dsinks_h is off
 * −Σ_{b,i} p_sink,i·(dout_i·out_i) of the reference by more than
 * 1000·(S_q + S_k + d_v + 8)·u·Σ p_sink,i·|dout_i|·|out_i|.
 *
 * Tolerance (documented in tests/fuzz/README.md). With u the unit roundoff
 * of the dtype, K the reduction length of the score, T_ij the sum of the
 * absolute values of the terms of score s_ij (scale·Σ|q||k|, Σ|q||W||k|, or
 * the additive score's |v|·(Σ|W_q q| + Σ|W_k k| + |b|)), and for row i
 *   δ_i = u · ((K + 8) · max_j T_ij + 16 · (max_kept_j |s_ij| + 1)),
 * the worst-case error of any computed score (GEMM, softcap, ALiBi, mask,
 * exp), each output must satisfy
 *   |out − ref| ≤ (3 δ_i + (S_k + 8) u) · Σ_j p_ij |v_j| + 8u·|ref| + atol
 *   |lse − ref| ≤ 3 δ_i + (S_k + 8) u · (1 + |ref|)
 *   |w − ref|   ≤ (3 δ_i + 8u) · ref + atol
 * (atol: 1e-37 for f32, 1e-300 for f64, i.e. only underflow), and a row the
 * reference leaves empty must give exactly 0 / −inf / 0.
 * 16-bit storage (bf16, f16; dot scores only; q, k, v rounded to the format
 * before the reference sees them): u is f32's, and out also gets attn.h's
 * 16-bit term c·u₁₆·Σ_j p_ij|v_j| (bf16: 2·2⁻⁸, f16: 2⁻¹¹). An f16 out
 * underflows far sooner than f32: its atol is half its smallest subnormal,
 * 2⁻²⁵ (a reference of −7.5e−26 rightly stores −0). */
#include <float.h>
#include <math.h>

#include "fuzz_common.h"
#include "testutil.h"

#define N_CTX 3
static const int32_t kThreads[N_CTX] = {1, 2, 3};
static fz_alloc g_alloc[N_CTX];
static attn_context *g_ctx[N_CTX];
static int64_t g_baseline[N_CTX] = {-1, -1, -1}; /* bytes a context keeps (its pool) */

typedef struct prob {
  attn_dtype dt;
  int64_t B, H, Hkv, Sq, Sk, Dq, Dk, Dv, A;
  int score;
  double scale;
  int causal;
  int64_t left, right; /* -1 = unbounded (reference convention) */
  bool has_klen, has_qlen, has_bool, has_add, has_alibi, want_w, want_lse, bshd;
  int64_t bool_b1, bool_h1, add_b1, add_h1; /* broadcast dims */
  int64_t klen[2], qlen[2];
  double slopes[8];
  double softcap;
  double mag;
  int special; /* 1: all keys equal (ties), 2: q = 0, 3: subnormal q */
  uint64_t seed;
  bool has_sinks;
  double sinks[8];
  int mass; /* 0 none, 1 per head, 2 per KV group */
} prob;

static void parse(fz *f, prob *p) {
  memset(p, 0, sizeof *p);
  p->dt = fz_bool(f) ? ATTN_DTYPE_F64 : ATTN_DTYPE_F32;
  p->B = fz_range(f, 1, 2);
  p->Hkv = fz_range(f, 1, 2);
  p->H = p->Hkv * fz_range(f, 1, 3);
  p->Sq = fz_range(f, 1, 64);
  p->Sk = fz_range(f, 1, 64);
  p->score = fz_u8(f) % 4;
  p->Dq = fz_range(f, 1, p->score >= 2 ? 16 : 64);
  p->Dk = p->score >= 2 && fz_bool(f) ? fz_range(f, 1, 16) : p->Dq;
  p->Dv = fz_bool(f) ? p->Dq : fz_range(f, 1, 64);
  p->A = p->score == 3 ? fz_range(f, 1, 8) : 0;
  p->scale = fz_u8(f) % 3 == 0 ? (double)fz_range(f, 1, 200) / 100.0 : 0.0;
  p->causal = fz_u8(f) % 3;
  uint8_t w = fz_u8(f);
  p->left = w & 1 ? fz_range(f, 0, 70) : -1;
  p->right = w & 2 ? fz_range(f, 0, 70) : -1;
  p->has_klen = fz_u8(f) % 3 == 0;
  p->has_qlen = fz_u8(f) % 4 == 0;
  for (int b = 0; b < 2; b++) {
    p->klen[b] = fz_range(f, 0, p->Sk);
    p->qlen[b] = fz_range(f, 0, p->Sq);
  }
  p->has_bool = fz_u8(f) % 4 == 0;
  p->bool_b1 = fz_bool(f), p->bool_h1 = fz_bool(f);
  p->has_add = fz_u8(f) % 4 == 0;
  p->add_b1 = fz_bool(f), p->add_h1 = fz_bool(f);
  p->has_alibi = fz_u8(f) % 4 == 0;
  for (int h = 0; h < 8; h++) p->slopes[h] = (double)fz_range(f, 0, 100) / 100.0;
  p->softcap = fz_u8(f) % 4 == 0 ? (double)fz_range(f, 1, 50) : 0.0;
  static const double mags[4] = {0.5, 1.0, 2.0, 4.0};
  p->mag = mags[fz_u8(f) % 4];
  p->special = fz_u8(f) % 8;
  p->want_w = fz_bool(f);
  p->want_lse = fz_bool(f);
  p->bshd = fz_bool(f);
  p->seed = fz_u64(f) | 1;
  /* Read last so older corpus files keep their meaning (missing bytes read 0). */
  const uint8_t h = fz_u8(f) % 4;
  if (p->dt == ATTN_DTYPE_F32 && p->score <= 1 && (h == 1 || h == 2)) {
    p->dt = h == 1 ? ATTN_DTYPE_BF16 : ATTN_DTYPE_F16;
    if (p->special == 3) p->special = 0; /* subnormal q: not representable in f16 */
  }
  p->has_sinks = fz_u8(f) % 4 == 0;
  for (int hs = 0; hs < 8; hs++) p->sinks[hs] = fz_u8(f) % 8 == 0 ? -INFINITY : (double)fz_range(f, -500, 500) / 100.0;
  p->mass = fz_u8(f) % 3;
}

static double *random_vec(size_t n, uint64_t *s, double mag) {
  double *x = malloc((n ? n : 1) * sizeof *x);
  for (size_t i = 0; i < n; i++) x[i] = tu_uniform(s, -mag, mag);
  return x;
}

static size_t esz(attn_dtype dt) {
  return dt == ATTN_DTYPE_F64 ? 8 : dt == ATTN_DTYPE_BF16 || dt == ATTN_DTYPE_F16 ? 2 : 4;
}

/* The backward's score-weight gradients: general (dw = g[0]) or additive
 * (dw_q, dw_k, dv, dbias = g[0..3]); neither when g[0] is NULL. */
static attn_status set_weight_grads(attn_backward_plan *bp, bool general, attn_tensor *const *g) {
  if (g[0] == NULL) return ATTN_OK;
  return general ? attn_backward_plan_set_general_grad(bp, g[0])
                 : attn_backward_plan_set_additive_grads(bp, g[0], g[1], g[3], g[2]);
}

/* Raw bytes of out, weights, lse for bitwise comparisons. */
static unsigned char *snapshot(attn_tensor *const *ts, size_t *n) {
  size_t total = 0;
  for (int i = 0; i < 3; i++)
    if (ts[i]) /* stored below as f64 or f32 (16-bit values are exact in f32) */
      total += (size_t)attn_tensor_numel(ts[i]) * (attn_tensor_dtype(ts[i]) == ATTN_DTYPE_F64 ? 8 : 4);
  unsigned char *buf = malloc(total ? total : 1), *w = buf;
  for (int i = 0; i < 3; i++) {
    if (!ts[i]) continue;
    double *tmp = malloc((size_t)attn_tensor_numel(ts[i]) * sizeof *tmp);
    tu_read(ts[i], tmp); /* logical order: layout independent */
    size_t m = (size_t)attn_tensor_numel(ts[i]);
    for (size_t j = 0; j < m; j++) {
      if (attn_tensor_dtype(ts[i]) == ATTN_DTYPE_F64) {
        memcpy(w, &tmp[j], 8);
        w += 8;
      } else {
        float x = (float)tmp[j];
        memcpy(w, &x, 4);
        w += 4;
      }
    }
    free(tmp);
  }
  *n = total;
  return buf;
}

static void fill_nan(attn_tensor *t) {
  if (t == NULL) return;
  /* Every element a NaN, so anything execute leaves unwritten is caught. */
  int64_t n = 1, ext = 1;
  for (int32_t i = 0; i < attn_tensor_rank(t); i++) {
    n *= attn_tensor_dim(t, i);
    ext += (attn_tensor_dim(t, i) - 1) * attn_tensor_stride(t, i);
  }
  (void)n;
  memset(attn_tensor_data(t), 0xFF, (size_t)ext * esz(attn_tensor_dtype(t)));
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (g_ctx[0] == NULL)
    for (int i = 0; i < N_CTX; i++) {
      g_alloc[i].cap = (size_t)256 << 20;
      g_ctx[i] = fz_context(&g_alloc[i], kThreads[i]);
    }
  fz in = {data, size};
  prob P;
  parse(&in, &P);
  int ci = (int)(P.seed >> 60) % N_CTX;
  attn_context *ctx = g_ctx[ci];
  const bool f64 = P.dt == ATTN_DTYPE_F64;
  const bool half = P.dt == ATTN_DTYPE_BF16 || P.dt == ATTN_DTYPE_F16;
  const attn_dtype ct = half ? ATTN_DTYPE_F32 : P.dt; /* compute type: weights, lse, masks */
  const double u = f64 ? DBL_EPSILON / 2 : FLT_EPSILON / 2;
  const double u16 = P.dt == ATTN_DTYPE_BF16 ? 2 * ldexp(1, -8) : P.dt == ATTN_DTYPE_F16 ? ldexp(1, -11) : 0;
  /* out's underflow: f16 rounds below 2^-25 to zero; f32/bf16/f64 only near their minimum normal */
  const double out_atol = f64 ? 1e-300 : P.dt == ATTN_DTYPE_F16 ? ldexp(1, -25) : 1e-37;

  /* ---- data ---- */
  uint64_t s = P.seed;
  size_t nq = (size_t)(P.B * P.H * P.Sq * P.Dq), nk = (size_t)(P.B * P.Hkv * P.Sk * P.Dk);
  size_t nv = (size_t)(P.B * P.Hkv * P.Sk * P.Dv), no = (size_t)(P.B * P.H * P.Sq * P.Dv);
  size_t nrow = (size_t)(P.B * P.H * P.Sq), nw = nrow * (size_t)P.Sk;
  double *q = random_vec(nq, &s, P.mag), *k = random_vec(nk, &s, P.mag);
  double *v = random_vec(nv, &s, 1.0);
  if (P.special == 1) /* every key equal: all scores of a row tie */
    for (size_t i = 0; i < nk; i++) k[i] = k[i % (size_t)P.Dk];
  if (P.special == 2) memset(q, 0, nq * sizeof *q);
  if (P.special == 3) /* subnormal queries */
    for (size_t i = 0; i < nq; i++) q[i] *= f64 ? 1e-310 : 1e-40;
  if (!f64) { /* the reference sees exactly the f32 (or 16-bit) inputs */
    double (*rd)(double) = P.dt == ATTN_DTYPE_BF16 ? tu_round_bf16 : tu_round_f16;
    for (size_t i = 0; i < nq; i++) q[i] = half ? rd(q[i]) : (float)q[i];
    for (size_t i = 0; i < nk; i++) k[i] = half ? rd(k[i]) : (float)k[i];
    for (size_t i = 0; i < nv; i++) v[i] = half ? rd(v[i]) : (float)v[i];
  }
  size_t nmask = nw;
  uint8_t *bool_dense = NULL;
  double *add_dense = NULL, *bool_small = NULL, *add_small = NULL;
  int64_t bB = P.bool_b1 ? 1 : P.B, bH = P.bool_h1 ? 1 : P.H;
  int64_t aB = P.add_b1 ? 1 : P.B, aH = P.add_h1 ? 1 : P.H;
  if (P.has_bool) {
    size_t ns = (size_t)(bB * bH * P.Sq * P.Sk);
    bool_small = malloc(ns * sizeof *bool_small);
    double density = tu_uniform(&s, 0.0, 1.0);
    for (size_t i = 0; i < ns; i++) bool_small[i] = tu_uniform(&s, 0, 1) < density;
    bool_dense = malloc(nmask);
  }
  if (P.has_add) {
    size_t ns = (size_t)(aB * aH * P.Sq * P.Sk);
    add_small = malloc(ns * sizeof *add_small);
    for (size_t i = 0; i < ns; i++) {
      double r = tu_uniform(&s, 0, 1);
      add_small[i] = r < 0.05 ? -INFINITY : r < 0.1 ? -FLT_MAX : (double)(float)tu_uniform(&s, -4, 4);
    }
    add_dense = malloc(nmask * sizeof *add_dense);
  }
  for (int64_t b = 0; b < P.B; b++)
    for (int64_t h = 0; h < P.H; h++)
      for (int64_t e = 0; e < P.Sq * P.Sk; e++) {
        size_t di = (size_t)((b * P.H + h) * P.Sq * P.Sk + e);
        if (bool_dense)
          bool_dense[di] = bool_small[(size_t)(((P.bool_b1 ? 0 : b) * bH + (P.bool_h1 ? 0 : h)) * P.Sq * P.Sk + e)] != 0;
        if (add_dense)
          add_dense[di] = add_small[(size_t)(((P.add_b1 ? 0 : b) * aH + (P.add_h1 ? 0 : h)) * P.Sq * P.Sk + e)];
      }
  double *gw = NULL, *wq = NULL, *wk = NULL, *wb = NULL, *wv = NULL;
  if (P.score == 2) gw = random_vec((size_t)(P.Dq * P.Dk), &s, 1.0 / sqrt((double)(P.Dq * P.Dk)));
  if (P.score == 3) {
    wq = random_vec((size_t)(P.A * P.Dq), &s, 1.0);
    wk = random_vec((size_t)(P.A * P.Dk), &s, 1.0);
    wb = random_vec((size_t)P.A, &s, 1.0);
    wv = random_vec((size_t)P.A, &s, 1.0);
  }
  if (!f64) {
    double *arrs[5] = {gw, wq, wk, wb, wv};
    size_t lens[5] = {(size_t)(P.Dq * P.Dk), (size_t)(P.A * P.Dq), (size_t)(P.A * P.Dk),
                      (size_t)P.A, (size_t)P.A};
    for (int a = 0; a < 5; a++)
      for (size_t i = 0; arrs[a] && i < lens[a]; i++) arrs[a][i] = (float)arrs[a][i];
  }

  /* ---- reference ---- */
  ref_problem R;
  ref_problem_init(&R, P.B, P.H, P.Sq, P.Sk, P.Dq);
  R.Hkv = P.Hkv, R.Dk = P.Dk, R.Dv = P.Dv;
  R.score = P.score, R.scale = P.scale, R.causal = P.causal;
  R.left = P.left, R.right = P.right;
  R.key_len = P.has_klen ? P.klen : NULL;
  R.query_len = P.has_qlen ? P.qlen : NULL;
  R.bool_mask = bool_dense;
  R.add_mask = add_dense;
  R.alibi = P.has_alibi ? P.slopes : NULL;
  R.softcap = P.softcap;
  R.sink = P.has_sinks ? P.sinks : NULL;
  R.general_w = gw;
  R.A = P.A, R.add_wq = wq, R.add_wk = wk, R.add_bias = wb, R.add_v = wv;
  double *ro = malloc(no * 8), *rb = malloc(no * 8), *rl = malloc(nrow * 8), *rw = malloc(nw * 8);
  ref_attention(&R, q, k, v, ro, rw, rl, rb);

  /* Per-row score error bound δ_i (see the header comment). */
  double *delta = malloc(nrow * sizeof *delta);
  const double scale_eff = P.scale > 0 ? P.scale : P.score == 0 ? 1 / sqrt((double)P.Dk) : 1;
  const int64_t K = P.score == 2 ? P.Dq * P.Dk : P.score == 3 ? P.Dq + P.Dk + P.A : P.Dk;
  for (int64_t b = 0; b < P.B; b++)
    for (int64_t h = 0; h < P.H; h++)
      for (int64_t i = 0; i < P.Sq; i++) {
        const double *qi = q + ((b * P.H + h) * P.Sq + i) * P.Dq;
        int64_t kh = h / (P.H / P.Hkv);
        double tmax = 0, smax = 0;
        for (int64_t j = 0; j < P.Sk; j++) {
          const double *kj = k + ((b * P.Hkv + kh) * P.Sk + j) * P.Dk;
          double t = 0;
          if (P.score == 3) {
            for (int64_t a = 0; a < P.A; a++) {
              double x = fabs(wb[a]);
              for (int64_t d = 0; d < P.Dq; d++) x += fabs(wq[a * P.Dq + d] * qi[d]);
              for (int64_t d = 0; d < P.Dk; d++) x += fabs(wk[a * P.Dk + d] * kj[d]);
              t += fabs(wv[a]) * (x + 1);
            }
          } else if (P.score == 2) {
            for (int64_t x = 0; x < P.Dq; x++)
              for (int64_t y = 0; y < P.Dk; y++) t += fabs(qi[x] * gw[x * P.Dk + y] * kj[y]);
            t *= scale_eff;
          } else {
            for (int64_t d = 0; d < P.Dk; d++) t += fabs(qi[d] * kj[d]);
            t *= scale_eff;
          }
          if (t > tmax) tmax = t;
          if (ref_kept(&R, b, h, i, j)) {
            double sabs = t + (P.has_alibi ? P.slopes[h] * (double)(P.Sq + P.Sk) : 0) +
                          (add_dense ? fabs(add_dense[((b * P.H + h) * P.Sq + i) * P.Sk + j]) : 0);
            if (sabs > smax) smax = sabs;
          }
        }
        delta[(b * P.H + h) * P.Sq + i] = u * ((double)(K + 8) * tmax + 16 * (smax + 1 + P.softcap));
      }

  /* ---- library ---- */
  attn_tensor *tq = tu_tensor4(ctx, P.dt, q, P.B, P.H, P.Sq, P.Dq, P.bshd);
  attn_tensor *tk = tu_tensor4(ctx, P.dt, k, P.B, P.Hkv, P.Sk, P.Dk, P.bshd);
  attn_tensor *tv = tu_tensor4(ctx, P.dt, v, P.B, P.Hkv, P.Sk, P.Dv, P.bshd);
  attn_tensor *to = tu_tensor4(ctx, P.dt, NULL, P.B, P.H, P.Sq, P.Dv, P.bshd);
  attn_tensor *tw = P.want_w ? tu_tensor4(ctx, ct, NULL, P.B, P.H, P.Sq, P.Sk, false) : NULL;
  int64_t lshape[3] = {P.B, P.H, P.Sq};
  attn_tensor *tl = P.want_lse ? tu_tensor(ctx, ct, NULL, 3, lshape) : NULL;
  int64_t bshape[4] = {bB, bH, P.Sq, P.Sk}, ashape[4] = {aB, aH, P.Sq, P.Sk};
  attn_tensor *tbm = bool_small ? tu_tensor(ctx, ATTN_DTYPE_U8, bool_small, 4, bshape) : NULL;
  attn_tensor *tam = add_small ? tu_tensor(ctx, ct, add_small, 4, ashape) : NULL;
  int64_t gshape[2] = {P.Dq, P.Dk}, wqs[2] = {P.A, P.Dq}, wks[2] = {P.A, P.Dk}, as1[1] = {P.A};
  attn_tensor *tgw = gw ? tu_tensor(ctx, P.dt, gw, 2, gshape) : NULL;
  attn_tensor *twq = wq ? tu_tensor(ctx, P.dt, wq, 2, wqs) : NULL;
  attn_tensor *twk = wk ? tu_tensor(ctx, P.dt, wk, 2, wks) : NULL;
  attn_tensor *twb = wb ? tu_tensor(ctx, P.dt, wb, 1, as1) : NULL;
  attn_tensor *twv = wv ? tu_tensor(ctx, P.dt, wv, 1, as1) : NULL;
  int64_t mshape[3] = {P.B, P.mass == 2 ? P.Hkv : P.H, P.Sk};
  attn_tensor *tm = P.mass ? tu_tensor(ctx, ct, NULL, 3, mshape) : NULL;
  FZ_CHECK(tq && tk && tv && to && (!P.want_w || tw) && (!P.want_lse || tl), "tensor setup");

  attn_desc *d = NULL;
  FZ_CHECK(attn_desc_create(ctx, &d) == ATTN_OK, "desc");
  attn_status st = ATTN_OK;
#define SET(call) \
  if (st == ATTN_OK) st = (call)
  SET(attn_desc_set_score(d, (attn_score)P.score));
  if (P.scale > 0) SET(attn_desc_set_scale(d, P.scale));
  SET(attn_desc_set_causal(d, (attn_causal)P.causal));
  if (P.left >= 0 || P.right >= 0)
    SET(attn_desc_set_window(d, P.left >= 0 ? P.left : ATTN_WINDOW_UNBOUNDED,
                             P.right >= 0 ? P.right : ATTN_WINDOW_UNBOUNDED));
  if (P.has_klen) SET(attn_desc_set_key_lengths(d, P.klen, P.B));
  if (P.has_qlen) SET(attn_desc_set_query_lengths(d, P.qlen, P.B));
  if (tbm) SET(attn_desc_set_bool_mask(d, tbm));
  if (tam) SET(attn_desc_set_additive_mask(d, tam));
  if (P.has_alibi) SET(attn_desc_set_alibi(d, P.slopes, P.H));
  if (P.softcap > 0) SET(attn_desc_set_softcap(d, P.softcap));
  if (tgw) SET(attn_desc_set_general_weight(d, tgw));
  if (twq) SET(attn_desc_set_additive_weights(d, twq, twk, twb, twv));
  if (P.has_sinks) SET(attn_desc_set_sinks(d, P.sinks, P.H));
  if (tm) SET(attn_desc_set_key_mass(d, tm));
#undef SET
  FZ_CHECK(st == ATTN_OK, "setter: %s", attn_context_last_error(ctx));

  attn_plan *plan = NULL;
  st = attn_plan_create(ctx, d, tq, tk, tv, to, tw, tl, &plan);
  FZ_CHECK(st == ATTN_OK, "plan: %s", attn_context_last_error(ctx));
  attn_tensor *outs[3] = {to, tw, tl};
  fill_nan(to), fill_nan(tw), fill_nan(tl);
  int64_t allocs = g_alloc[ci].count;
  st = attn_plan_execute(plan, tq, tk, tv, to, tw, tl);
  FZ_CHECK(st == ATTN_OK, "execute: %s", attn_context_last_error(ctx));
  FZ_CHECK(g_alloc[ci].count == allocs, "execute allocated");
  size_t n1, n2;
  unsigned char *first = snapshot(outs, &n1);
  fill_nan(to), fill_nan(tw), fill_nan(tl);
  FZ_CHECK(attn_plan_execute(plan, tq, tk, tv, to, tw, tl) == ATTN_OK, "execute 2");
  unsigned char *second = snapshot(outs, &n2);
  FZ_CHECK(n1 == n2 && memcmp(first, second, n1) == 0, "second execute differs");
  free(second);
  attn_plan_destroy(plan);
  if (ci != 0) { /* the same problem on one thread: bitwise equal */
    attn_plan *p1 = NULL;
    FZ_CHECK(attn_plan_create(g_ctx[0], d, tq, tk, tv, to, tw, tl, &p1) == ATTN_OK, "plan ctx0");
    fill_nan(to), fill_nan(tw), fill_nan(tl);
    FZ_CHECK(attn_plan_execute(p1, tq, tk, tv, to, tw, tl) == ATTN_OK, "execute ctx0");
    unsigned char *one = snapshot(outs, &n2);
    FZ_CHECK(n1 == n2 && memcmp(first, one, n1) == 0, "%d threads and 1 thread differ", kThreads[ci]);
    free(one);
    attn_plan_destroy(p1);
  }
  free(first);

  /* ---- compare ---- */
  double *go = malloc(no * 8), *gl = malloc(nrow * 8), *gwt = malloc(nw * 8);
  tu_read(to, go);
  for (size_t r = 0; r < nrow; r++) {
    double dl = delta[r];
    for (int64_t x = 0; x < P.Dv; x++) {
      size_t e = r * (size_t)P.Dv + (size_t)x;
      double tol = (3 * dl + (double)(P.Sk + 8) * u + u16) * rb[e] + 8 * u * fabs(ro[e]) + out_atol;
      if (isinf(rl[r])) tol = 0; /* empty row: exactly 0 */
      FZ_CHECK(fabs(go[e] - ro[e]) <= tol, "out[row %zu][%lld] = %.17g, reference %.17g (tol %.3g)", r,
               (long long)x, go[e], ro[e], tol);
    }
  }
  if (tl) {
    tu_read(tl, gl);
    for (size_t r = 0; r < nrow; r++) {
      if (isinf(rl[r])) {
        FZ_CHECK(isinf(gl[r]) && gl[r] < 0, "lse[%zu] = %g, reference -inf", r, gl[r]);
        continue;
      }
      double tol = 3 * delta[r] + (double)(P.Sk + 8) * u * (1 + fabs(rl[r]));
      FZ_CHECK(fabs(gl[r] - rl[r]) <= tol, "lse[%zu] = %.17g, reference %.17g (tol %.3g)", r, gl[r], rl[r], tol);
    }
  }
  if (tw) {
    tu_read(tw, gwt);
    for (size_t e = 0; e < nw; e++) {
      double tol = (3 * delta[e / (size_t)P.Sk] + 8 * u) * rw[e] + (f64 ? 1e-300 : 1e-37);
      FZ_CHECK(fabs(gwt[e] - rw[e]) <= tol, "weights[%zu] = %.17g, reference %.17g (tol %.3g)", e, gwt[e],
               rw[e], tol);
    }
  }

  /* ---- backward ---- */
  /* 16-bit plans: gradients round once to the storage. */
  const double ug = half ? u16 : u;
  if (tl && P.mass == 0) {
    const size_t bnq = (size_t)(P.B * P.H * P.Sq), bnkv = (size_t)(P.B * P.Hkv * P.Sk);
    double *gd = malloc(bnq * (size_t)P.Dv * 8);
    uint64_t s2 = P.seed ^ 0x5bd1e995u;
    tu_fill(gd, bnq * (size_t)P.Dv, &s2, -1, 1);
    attn_tensor *tdo = tu_tensor4(ctx, P.dt, gd, P.B, P.H, P.Sq, P.Dv, P.bshd);
    attn_tensor *tdq = tu_tensor4(ctx, P.dt, NULL, P.B, P.H, P.Sq, P.Dq, P.bshd);
    attn_tensor *tdk = tu_tensor4(ctx, P.dt, NULL, P.B, P.Hkv, P.Sk, P.Dk, P.bshd);
    attn_tensor *tdv = tu_tensor4(ctx, P.dt, NULL, P.B, P.Hkv, P.Sk, P.Dv, P.bshd);
    int64_t dms[4] = {P.B, P.H, P.Sq, P.Sk};
    attn_tensor *tdm = tam ? tu_tensor(ctx, ct, NULL, 4, dms) : NULL;
    attn_tensor *gouts[4] = {tdq, tdk, tdv, tdm};
    /* The score weights' gradients (general: dw; additive: dw_q, dw_k, dv,
     * then dbias), compared like dq, dk, dv. */
    attn_tensor *wg[4] = {NULL, NULL, NULL, NULL};
    if (tgw) wg[0] = tu_tensor(ctx, P.dt, NULL, 2, gshape);
    if (twq) {
      wg[0] = tu_tensor(ctx, P.dt, NULL, 2, wqs);
      wg[1] = tu_tensor(ctx, P.dt, NULL, 2, wks);
      wg[2] = tu_tensor(ctx, P.dt, NULL, 1, as1);
      if (twb) wg[3] = tu_tensor(ctx, P.dt, NULL, 1, as1);
    }
    attn_plan *fp = NULL, *fp1 = NULL;
    attn_backward_plan *bp = NULL, *bp1 = NULL;
    FZ_CHECK(attn_plan_create(ctx, d, tq, tk, tv, to, tw, tl, &fp) == ATTN_OK, "bwd: forward plan");
    FZ_CHECK(attn_plan_execute(fp, tq, tk, tv, to, tw, tl) == ATTN_OK, "bwd: forward");
    st = attn_backward_plan_create(fp, tdo, tdq, tdk, tdv, tdm, &bp);
    FZ_CHECK(st == ATTN_OK, "backward plan: %s", attn_context_last_error(ctx));
    double dsk[8];
    for (int h = 0; h < 8; h++) dsk[h] = NAN;
    if (P.has_sinks)
      FZ_CHECK(attn_backward_plan_set_sink_grad(bp, dsk, P.H) == ATTN_OK, "sink grad: %s",
               attn_context_last_error(ctx));
    fill_nan(tdq), fill_nan(tdk), fill_nan(tdv), fill_nan(tdm);
    for (int t2 = 0; t2 < 4; t2++) fill_nan(wg[t2]);
    FZ_CHECK(set_weight_grads(bp, tgw != NULL, wg) == ATTN_OK, "weight grads: %s",
             attn_context_last_error(ctx));
    allocs = g_alloc[ci].count;
    st = attn_backward_execute(bp, tq, tk, tv, to, tl, tdo, tdq, tdk, tdv, tdm);
    FZ_CHECK(st == ATTN_OK, "backward: %s", attn_context_last_error(ctx));
    FZ_CHECK(g_alloc[ci].count == allocs, "backward execute allocated");
    attn_tensor *wg3[3] = {wg[3], NULL, NULL};
    size_t nw1, nw2, nx1, nx2;
    unsigned char *b1 = snapshot(gouts, &n1), *w1 = snapshot(wg, &nw1), *x1 = snapshot(wg3, &nx1);
    FZ_CHECK(attn_plan_create(g_ctx[0], d, tq, tk, tv, to, tw, tl, &fp1) == ATTN_OK, "bwd: plan ctx0");
    FZ_CHECK(attn_backward_plan_create(fp1, tdo, tdq, tdk, tdv, tdm, &bp1) == ATTN_OK, "bwd: plan1");
    FZ_CHECK(set_weight_grads(bp1, tgw != NULL, wg) == ATTN_OK, "weight grads 1");
    fill_nan(tdq), fill_nan(tdk), fill_nan(tdv), fill_nan(tdm);
    for (int t2 = 0; t2 < 4; t2++) fill_nan(wg[t2]);
    FZ_CHECK(attn_backward_execute(bp1, tq, tk, tv, to, tl, tdo, tdq, tdk, tdv, tdm) == ATTN_OK,
             "backward ctx0");
    unsigned char *b2 = snapshot(gouts, &n2), *w2 = snapshot(wg, &nw2), *x2 = snapshot(wg3, &nx2);
    FZ_CHECK(n1 == n2 && memcmp(b1, b2, n1) == 0, "backward: %d threads and 1 thread differ",
             kThreads[ci]);
    FZ_CHECK(nw1 == nw2 && memcmp(w1, w2, nw1) == 0 && nx1 == nx2 && memcmp(x1, x2, nx1) == 0,
             "backward weight gradients: %d threads and 1 thread differ", kThreads[ci]);
    free(b1), free(b2), free(w1), free(w2), free(x1), free(x2);
    if (P.mag <= 4)
      for (int t2 = 0; t2 < 4; t2++) {
        if (!wg[t2]) continue;
        const size_t m = (size_t)attn_tensor_numel(wg[t2]);
        double *tmp = malloc(m * sizeof *tmp);
        tu_read(wg[t2], tmp);
        for (size_t e = 0; e < m; e++)
          FZ_CHECK(isfinite(tmp[e]), "weight gradient %d [%zu] = %g", t2, e, tmp[e]);
        free(tmp);
      }
    /* Finite inputs, finite gradients; Σ_j dv_j = Σ_{i kept} dout_i. */
    double *gv = malloc(bnkv * (size_t)P.Dv * 8), *gq = malloc(bnq * (size_t)P.Dq * 8);
    double *gk = malloc(bnkv * (size_t)P.Dk * 8);
    tu_read(tdv, gv), tu_read(tdq, gq), tu_read(tdk, gk);
    if (P.mag <= 4) {
      for (size_t e = 0; e < bnq * (size_t)P.Dq; e++) FZ_CHECK(isfinite(gq[e]), "dq[%zu] = %g", e, gq[e]);
      for (size_t e = 0; e < bnkv * (size_t)P.Dk; e++) FZ_CHECK(isfinite(gk[e]), "dk[%zu] = %g", e, gk[e]);
    }
    const int64_t grp = P.H / P.Hkv;
    for (int64_t b = 0; b < P.B; b++)
      for (int64_t kh = 0; kh < P.Hkv; kh++)
        for (int64_t x = 0; x < P.Dv; x++) {
          double sv = 0, sd = 0, sa = 0, sp = 0;
          for (int64_t j = 0; j < P.Sk; j++) sv += gv[((size_t)((b * P.Hkv + kh) * P.Sk + j)) * (size_t)P.Dv + (size_t)x];
          for (int64_t h = kh * grp; h < (kh + 1) * grp; h++)
            for (int64_t i = 0; i < P.Sq; i++) {
              const size_t r = (size_t)((b * P.H + h) * P.Sq + i);
              if (isinf(rl[r])) continue;
              const double keep = P.has_sinks ? 1 - exp(P.sinks[h] - rl[r]) : 1;
              sd += keep * gd[r * (size_t)P.Dv + (size_t)x];
              sa += fabs(gd[r * (size_t)P.Dv + (size_t)x]);
              /* The backward recomputes the scores (within δ_i of exact,
               * not always the forward's rounding) against the forward's
               * lse: row i's Σ_j p_ij may be off by e^{4δ_i + lse's error} − 1. */
              sp += fabs(gd[r * (size_t)P.Dv + (size_t)x]) *
                    expm1(4 * delta[r] + (double)(P.Sk + 8) * u * (1 + fabs(rl[r])));
            }
          const double tol = (double)(P.Sq * grp + P.Sk + 8) * u * (sa + 1) * 4 + 2 * ug * (sa + 1) + sp;
          FZ_CHECK(fabs(sv - sd) <= tol, "sum_j dv[%lld,%lld,j,%lld] = %.17g, sum of kept dout %.17g",
                   (long long)b, (long long)kh, (long long)x, sv, sd);
        }
    if (P.has_sinks && P.mag <= 4) /* the sinks' gradient against the reference's out and lse */
      for (int64_t h = 0; h < P.H; h++) {
        double want = 0, mag = 0, mabs = 0; /* mabs: Σ p_sink·Σ(|dout| + |out|), for underflow */
        for (int64_t b = 0; b < P.B; b++)
          for (int64_t i = 0; i < P.Sq; i++) {
            const size_t r = (size_t)((b * P.H + h) * P.Sq + i);
            if (isinf(rl[r]) || isinf(P.sinks[h])) continue;
            const double ps = exp(P.sinks[h] - rl[r]);
            double dr = 0, da = 0;
            for (int64_t x = 0; x < P.Dv; x++) {
              dr += gd[r * (size_t)P.Dv + (size_t)x] * ro[r * (size_t)P.Dv + (size_t)x];
              da += fabs(gd[r * (size_t)P.Dv + (size_t)x] * ro[r * (size_t)P.Dv + (size_t)x]);
              mabs += ps * (fabs(gd[r * (size_t)P.Dv + (size_t)x]) + fabs(ro[r * (size_t)P.Dv + (size_t)x]));
            }
            want -= ps * dr;
            mag += ps * da;
          }
        /* A 16-bit plan's D = dout·out uses the stored (rounded) out and
         * dout: relative ug each, and f16's absolute out_atol below 2⁻¹⁴. */
        const double tol = 1000.0 * (double)(P.Sq + P.Sk + P.Dv + 8) * u * mag + 8 * ug * mag +
                           4 * out_atol * mabs + 1e-300;
        FZ_CHECK(fabs(dsk[h] - want) <= tol, "dsinks[%lld] = %.17g, reference %.17g (tol %.3g)",
                 (long long)h, dsk[h], want, tol);
      }
    free(gv), free(gq), free(gk), free(gd);
    attn_backward_plan_destroy(bp);
    attn_backward_plan_destroy(bp1);
    attn_plan_destroy(fp);
    attn_plan_destroy(fp1);
    for (int t2 = 0; t2 < 4; t2++) tu_tensor_free(gouts[t2]), tu_tensor_free(wg[t2]);
    tu_tensor_free(tdo);
  }

  if (tm) { /* mass = column sums of the reference weights, each within its rows' bounds */
    const int64_t nm = mshape[0] * mshape[1] * P.Sk, grp = P.H / P.Hkv;
    double *gm = malloc((size_t)nm * 8), *rm = calloc((size_t)nm, 8), *tm_tol = calloc((size_t)nm, 8);
    tu_read(tm, gm);
    for (int64_t b = 0; b < P.B; b++)
      for (int64_t h = 0; h < P.H; h++)
        for (int64_t i = 0; i < P.Sq; i++) {
          const size_t r = (size_t)((b * P.H + h) * P.Sq + i);
          for (int64_t j = 0; j < P.Sk; j++) {
            const size_t m = (size_t)((b * mshape[1] + (P.mass == 2 ? h / grp : h)) * P.Sk + j);
            rm[m] += rw[r * (size_t)P.Sk + (size_t)j];
            tm_tol[m] += (3 * delta[r] + (double)(P.Sq + 8) * u) * rw[r * (size_t)P.Sk + (size_t)j];
          }
        }
    for (int64_t m = 0; m < nm; m++)
      FZ_CHECK(fabs(gm[m] - rm[m]) <= tm_tol[m] + (f64 ? 1e-300 : 1e-37) * (double)P.Sq * (double)P.H,
               "mass[%lld] = %.17g, reference %.17g (tol %.3g)", (long long)m, gm[m], rm[m], tm_tol[m]);
    free(gm), free(rm), free(tm_tol);
  }

  attn_desc_destroy(d);
  attn_tensor *all[] = {tq, tk, tv, to, tw, tl, tbm, tam, tgw, twq, twk, twb, twv, tm};
  for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) tu_tensor_free(all[i]);
  free(q), free(k), free(v), free(ro), free(rb), free(rl), free(rw), free(delta);
  free(go), free(gl), free(gwt), free(bool_dense), free(add_dense), free(bool_small), free(add_small);
  free(gw), free(wq), free(wk), free(wb), free(wv);
  for (int c = 0; c < N_CTX; c++) { /* nothing outlives the iteration but the pools */
    if (g_baseline[c] < 0 && (c == ci || c == 0)) g_baseline[c] = g_alloc[c].outstanding;
    FZ_CHECK(g_baseline[c] < 0 || g_alloc[c].outstanding == g_baseline[c], "leak: context %d holds %lld bytes, %lld expected", c,
             (long long)g_alloc[c].outstanding, (long long)g_baseline[c]);
  }
  return 0;
}

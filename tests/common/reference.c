#include "reference.h"

#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

void ref_problem_init(ref_problem *p, int64_t B, int64_t H, int64_t Sq, int64_t Sk, int64_t D) {
  memset(p, 0, sizeof *p);
  p->B = B;
  p->H = p->Hkv = H;
  p->Sq = Sq;
  p->Sk = Sk;
  p->Dq = p->Dk = p->Dv = D;
  p->left = p->right = -1;
}

static int64_t aligned_row(const ref_problem *p, int64_t b, int64_t i) {
  if (p->causal != 2) return i; /* ATTN_CAUSAL_BOTTOM_RIGHT */
  int64_t kl = p->key_len ? p->key_len[b] : p->Sk;
  int64_t ql = p->query_len ? p->query_len[b] : p->Sq;
  return i + kl - ql;
}

bool ref_kept(const ref_problem *p, int64_t b, int64_t h, int64_t i, int64_t j) {
  if (p->query_len && i >= p->query_len[b]) return false;
  if (p->key_len && j >= p->key_len[b]) return false;
  int64_t ia = aligned_row(p, b, i);
  if (p->causal != 0 && j > ia) return false;
  if (p->left >= 0 && j < ia - p->left) return false;
  if (p->right >= 0 && j > ia + p->right) return false;
  size_t mi = (size_t)(((b * p->H + h) * p->Sq + i) * p->Sk + j);
  if (p->bool_mask && !p->bool_mask[mi]) return false;
  if (p->add_mask && p->add_mask[mi] <= -FLT_MAX) return false;
  if (p->keep && !p->keep(p->keep_user, b, h, i, j)) return false;
  return true;
}

static double score(const ref_problem *p, const double *qi, const double *kj) {
  double s = 0;
  if (p->score == 3) { /* additive */
    for (int64_t a = 0; a < p->A; a++) {
      double x = p->add_bias ? p->add_bias[a] : 0;
      for (int64_t d = 0; d < p->Dq; d++) x += p->add_wq[a * p->Dq + d] * qi[d];
      for (int64_t d = 0; d < p->Dk; d++) x += p->add_wk[a * p->Dk + d] * kj[d];
      s += p->add_v[a] * tanh(x);
    }
    return s;
  }
  if (p->score == 2) { /* general: qᵀ W k */
    for (int64_t x = 0; x < p->Dq; x++)
      for (int64_t y = 0; y < p->Dk; y++) s += qi[x] * p->general_w[x * p->Dk + y] * kj[y];
  } else {
    for (int64_t d = 0; d < p->Dk; d++) s += qi[d] * kj[d];
  }
  double scale = p->scale > 0 ? p->scale : (p->score == 0 ? 1.0 / sqrt((double)p->Dk) : 1.0);
  return scale * s;
}

void ref_attention(const ref_problem *p, const double *q, const double *k, const double *v,
                   double *out, double *weights, double *lse, double *bound) {
  double *s = malloc((size_t)p->Sk * sizeof *s);
  int64_t group = p->H / p->Hkv;
  for (int64_t b = 0; b < p->B; b++)
    for (int64_t h = 0; h < p->H; h++) {
      int64_t kh = h / group;
      for (int64_t i = 0; i < p->Sq; i++) {
        const double *qi = q + ((b * p->H + h) * p->Sq + i) * p->Dq;
        double mx = -INFINITY;
        for (int64_t j = 0; j < p->Sk; j++) {
          if (!ref_kept(p, b, h, i, j)) {
            s[j] = -INFINITY;
            continue;
          }
          const double *kj = k + ((b * p->Hkv + kh) * p->Sk + j) * p->Dk;
          double x = score(p, qi, kj);
          if (p->softcap > 0) x = p->softcap * tanh(x / p->softcap);
          if (p->alibi) x -= p->alibi[h] * fabs((double)(aligned_row(p, b, i) - j));
          if (p->add_mask) x += p->add_mask[((b * p->H + h) * p->Sq + i) * p->Sk + j];
          s[j] = x;
          if (x > mx) mx = x;
        }
        /* A sink is one more logit in the denominator with no value. */
        const double sink = p->sink ? p->sink[h] : -INFINITY;
        if (sink > mx) mx = sink;
        double sum = sink == -INFINITY ? 0 : exp(sink - mx);
        for (int64_t j = 0; j < p->Sk; j++) {
          s[j] = mx == -INFINITY ? 0 : exp(s[j] - mx);
          sum += s[j];
        }
        double *oi = out + ((b * p->H + h) * p->Sq + i) * p->Dv;
        double *bi = bound ? bound + ((b * p->H + h) * p->Sq + i) * p->Dv : NULL;
        for (int64_t d = 0; d < p->Dv; d++) {
          oi[d] = 0;
          if (bi) bi[d] = 0;
        }
        for (int64_t j = 0; j < p->Sk; j++) {
          double w = sum > 0 ? s[j] / sum : 0;
          if (weights) weights[((b * p->H + h) * p->Sq + i) * p->Sk + j] = w;
          if (w == 0) continue;
          const double *vj = v + ((b * p->Hkv + kh) * p->Sk + j) * p->Dv;
          for (int64_t d = 0; d < p->Dv; d++) {
            oi[d] += w * vj[d];
            if (bi) bi[d] += w * fabs(vj[d]);
          }
        }
        if (lse) lse[(b * p->H + h) * p->Sq + i] = sum > 0 ? mx + log(sum) : -INFINITY;
      }
    }
  free(s);
}

void ref_attention_backward(const ref_problem *p, const double *q, const double *k,
                            const double *v, const double *dout, double *dq, double *dk,
                            double *dv) {
  const int64_t B = p->B, H = p->H, Sq = p->Sq, Sk = p->Sk, group = p->H / p->Hkv;
  double *w = malloc((size_t)(B * H * Sq * Sk) * sizeof *w);
  double *o = malloc((size_t)(B * H * Sq * p->Dv) * sizeof *o);
  double *dp = malloc((size_t)Sk * sizeof *dp);
  ref_attention(p, q, k, v, o, w, NULL, NULL);
  memset(dq, 0, (size_t)(B * H * Sq * p->Dq) * sizeof *dq);
  memset(dk, 0, (size_t)(B * p->Hkv * Sk * p->Dk) * sizeof *dk);
  memset(dv, 0, (size_t)(B * p->Hkv * Sk * p->Dv) * sizeof *dv);
  const double scale = p->scale > 0 ? p->scale : (p->score == 0 ? 1.0 / sqrt((double)p->Dk) : 1.0);
  for (int64_t b = 0; b < B; b++)
    for (int64_t h = 0; h < H; h++) {
      const int64_t kh = h / group;
      for (int64_t i = 0; i < Sq; i++) {
        const int64_t row = (b * H + h) * Sq + i;
        const double *qi = q + row * p->Dq, *gi = dout + row * p->Dv, *wi = w + row * Sk;
        /* dP_ij = dout_i · v_j; the softmax's Jacobian subtracts Σ_j w_ij dP_ij. */
        double mean = 0;
        for (int64_t j = 0; j < Sk; j++) {
          const double *vj = v + ((b * p->Hkv + kh) * Sk + j) * p->Dv;
          dp[j] = 0;
          for (int64_t x = 0; x < p->Dv; x++) dp[j] += gi[x] * vj[x];
          mean += wi[j] * dp[j];
        }
        for (int64_t j = 0; j < Sk; j++) {
          if (wi[j] == 0) continue;
          const double *kj = k + ((b * p->Hkv + kh) * Sk + j) * p->Dk;
          double *dkj = dk + ((b * p->Hkv + kh) * Sk + j) * p->Dk;
          double *dvj = dv + ((b * p->Hkv + kh) * Sk + j) * p->Dv;
          double ds = wi[j] * (dp[j] - mean); /* ∂L/∂(final logit) */
          if (p->softcap > 0) {               /* logit = cap·tanh(raw/cap) */
            double raw = 0;
            for (int64_t x = 0; x < p->Dk; x++) raw += qi[x] * kj[x];
            const double t = tanh(scale * raw / p->softcap);
            ds *= 1 - t * t;
          }
          const double g = ds * scale; /* raw = scale · q·k */
          for (int64_t x = 0; x < p->Dq; x++) dq[row * p->Dq + x] += g * kj[x];
          for (int64_t x = 0; x < p->Dk; x++) dkj[x] += g * qi[x];
          for (int64_t x = 0; x < p->Dv; x++) dvj[x] += wi[j] * gi[x];
        }
      }
    }
  free(w), free(o), free(dp);
}

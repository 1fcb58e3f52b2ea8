/* Naive f64 attention: plain loops, no BLAS, no tiling, written from the
 * definitions in attn.h and not from the library's code. Every test compares
 * against this. Layout of all arrays: dense C order [B][H][S][D]. */
#ifndef ATTN_TEST_REFERENCE_H
#define ATTN_TEST_REFERENCE_H

#include <stdbool.h>
#include <stdint.h>

typedef struct ref_problem {
  int64_t B, H, Hkv, Sq, Sk, Dq, Dk, Dv;
  int score;          /* attn_score value */
  double scale;       /* 0 = default for the score kind */
  int causal;         /* attn_causal value */
  int64_t left, right;  /* window, -1 = unbounded */
  const int64_t *key_len, *query_len; /* [B] or NULL */
  const uint8_t *bool_mask; /* [B][H][Sq][Sk] dense (tests expand broadcasts), or NULL */
  const double *add_mask;   /* same layout, or NULL */
  const double *alibi;      /* [H] or NULL */
  double softcap;           /* 0 = off */
  const double *sink;       /* [H] sink logits (extra logit, no value) or NULL */
  const double *general_w;  /* [Dq][Dk] */
  int64_t A;                /* additive: w_q [A][Dq], w_k [A][Dk], bias [A], v [A] */
  const double *add_wq, *add_wk, *add_bias, *add_v;
  /* Extra per-(b,h,i,j) keep predicate (sparse variants); NULL = none. */
  bool (*keep)(void *user, int64_t b, int64_t h, int64_t i, int64_t j);
  void *keep_user;
} ref_problem;

void ref_problem_init(ref_problem *p, int64_t B, int64_t H, int64_t Sq, int64_t Sk, int64_t D);

/* out [B][H][Sq][Dv]; weights [B][H][Sq][Sk] or NULL; lse [B][H][Sq] or NULL;
 * bound [B][H][Sq][Dv] or NULL: Σ_j p_ij |v_jx| for the error tolerance. */
void ref_attention(const ref_problem *p, const double *q, const double *k, const double *v,
                   double *out, double *weights, double *lse, double *bound);

/* Gradients of a loss L with ∂L/∂out = dout ([B][H][Sq][Dv]), by the chain
 * rule through the softmax written out for the dot-product scores (score 0
 * and 1; softcap, ALiBi, masks, lengths, windows and sinks as in
 * ref_attention): dq [B][H][Sq][Dq], dk [B][Hkv][Sk][Dk], dv [B][Hkv][Sk][Dv]
 * (summed over each GQA group). Uses ref_attention's weights, O(B·H·Sq·Sk). */
void ref_attention_backward(const ref_problem *p, const double *q, const double *k,
                            const double *v, const double *dout, double *dq, double *dk,
                            double *dv);

/* The score before masking and the keep decision, exposed for other references. */
bool ref_kept(const ref_problem *p, int64_t b, int64_t h, int64_t i, int64_t j);

#endif

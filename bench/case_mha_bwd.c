/* Case `mha_bwd`: a training step of the multi-head self-attention layer
 * (nn.MultiheadAttention's computation, batch-first, E = H·D, in/out
 * projections with biases), composed from public calls the way a C training
 * loop (or attn.torch.MultiheadAttention) runs it: the projections by
 * OpenBLAS GEMMs on the caller's buffers, the attention core by an attn_plan
 * with lse and its attn_backward_plan on head views of those buffers (no
 * copies). libattn's attn_mha layer has no backward entry point yet.
 *
 *   forward:  QKV = x W_inᵀ + b_in;  O = attention(Q, K, V);  y = O W_oᵀ + b_o
 *   backward: dW_o = dyᵀ O, db_o = Σ dy, dO = dy W_o; attention backward →
 *             dQ, dK, dV; dW_in = dQKVᵀ x, db_in = Σ dQKV, dx = dQKV W_in
 *
 * `ms` is the backward alone, `fwd_ms` (the extra) the forward, both in this
 * process; FLOPs are the backward's: 2.5 × 4·B·H·S²·D + 2 · 2·B·S·(3E·E + E·E). */
#include <cblas.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench.h"

typedef struct mhab {
  const bench_opts *o;
  int64_t B, S, E, H, D;
  size_t es;
  /* caller buffers (row-major): x, y, dy, dx [B·S, E]; QKV, dQKV [B·S, 3E];
   * O, dO [B·S, E]; weights W_in [3E, E], b_in [3E], W_o [E, E], b_o [E] and
   * their gradients. */
  void *x, *y, *dy, *dx, *qkv, *dqkv, *ao, *dao, *w_in, *b_in, *w_o, *b_o;
  void *gw_in, *gb_in, *gw_o, *gb_o;
  attn_tensor *q, *k, *v, *out, *lse, *dout, *dq, *dk, *dv; /* head views */
  attn_desc *desc;
  attn_plan *fwd;
  attn_backward_plan *bwd;
} mhab;

/* C[M×N] = op(A)·op(B) + beta·C (row-major) in the bench dtype. */
static void gemm(const mhab *m, bool ta, bool tb, int64_t M, int64_t N, int64_t K, const void *A,
                 int64_t lda, const void *B, int64_t ldb, double beta, void *C, int64_t ldc) {
  const CBLAS_TRANSPOSE a = ta ? CblasTrans : CblasNoTrans, b = tb ? CblasTrans : CblasNoTrans;
  if (m->es == 4)
    cblas_sgemm(CblasRowMajor, a, b, (int)M, (int)N, (int)K, 1.0f, A, (int)lda, B, (int)ldb,
                (float)beta, C, (int)ldc);
  else
    cblas_dgemm(CblasRowMajor, a, b, (int)M, (int)N, (int)K, 1.0, A, (int)lda, B, (int)ldb, beta,
                C, (int)ldc);
}

/* rows[r][c] += bias[c] for R rows of N. */
static void add_bias(const mhab *m, void *rows, const void *bias, int64_t R, int64_t N) {
  for (int64_t r = 0; r < R; r++)
    for (int64_t c = 0; c < N; c++)
      if (m->es == 4)
        ((float *)rows)[r * N + c] += ((const float *)bias)[c];
      else
        ((double *)rows)[r * N + c] += ((const double *)bias)[c];
}

/* g[c] = Σ_r rows[r][c]. */
static void col_sum(const mhab *m, const void *rows, void *g, int64_t R, int64_t N) {
  memset(g, 0, (size_t)N * m->es);
  for (int64_t r = 0; r < R; r++)
    for (int64_t c = 0; c < N; c++)
      if (m->es == 4)
        ((float *)g)[c] += ((const float *)rows)[r * N + c];
      else
        ((double *)g)[c] += ((const double *)rows)[r * N + c];
}

static int mhab_forward(void *arg) {
  mhab *m = arg;
  const int64_t R = m->B * m->S, E = m->E;
  gemm(m, false, true, R, 3 * E, E, m->x, E, m->w_in, E, 0.0, m->qkv, 3 * E);
  add_bias(m, m->qkv, m->b_in, R, 3 * E);
  if (attn_plan_execute(m->fwd, m->q, m->k, m->v, m->out, NULL, m->lse) != ATTN_OK) return 1;
  gemm(m, false, true, R, E, E, m->ao, E, m->w_o, E, 0.0, m->y, E);
  add_bias(m, m->y, m->b_o, R, E);
  return 0;
}

static int mhab_backward(void *arg) {
  mhab *m = arg;
  const int64_t R = m->B * m->S, E = m->E;
  gemm(m, true, false, E, E, R, m->dy, E, m->ao, E, 0.0, m->gw_o, E);
  col_sum(m, m->dy, m->gb_o, R, E);
  gemm(m, false, false, R, E, E, m->dy, E, m->w_o, E, 0.0, m->dao, E);
  if (attn_backward_execute(m->bwd, m->q, m->k, m->v, m->out, m->lse, m->dout, m->dq, m->dk,
                            m->dv, NULL) != ATTN_OK)
    return 1;
  gemm(m, true, false, 3 * E, E, R, m->dqkv, 3 * E, m->x, E, 0.0, m->gw_in, E);
  col_sum(m, m->dqkv, m->gb_in, R, 3 * E);
  gemm(m, false, false, R, E, 3 * E, m->dqkv, 3 * E, m->w_in, E, 0.0, m->dx, E);
  return 0;
}

/* A [B, H, S, D] view of columns [col, col + E) of a [B·S, ld] buffer. */
static attn_tensor *heads_view(attn_context *ctx, const mhab *m, void *buf, int64_t ld,
                               int64_t col) {
  const int64_t shape[4] = {m->B, m->H, m->S, m->D};
  const int64_t strides[4] = {m->S * ld, m->D, ld, 1};
  attn_tensor *t = NULL;
  char *base = (char *)buf + (size_t)col * m->es;
  if (attn_tensor_wrap(ctx, m->o->dtype, 4, shape, strides, base, &t) != ATTN_OK) return NULL;
  return t;
}

static void *filled(size_t n, size_t es, double a, uint64_t seed) {
  void *p = malloc(n * es);
  if (p == NULL) return NULL;
  uint64_t s = seed * 0x9E3779B97F4A7C15ULL + 1;
  for (size_t i = 0; i < n; i++) {
    s ^= s << 13;
    s ^= s >> 7;
    s ^= s << 17;
    const double x = a * (2.0 * (double)(s >> 11) / 9007199254740992.0 - 1.0);
    if (es == 4)
      ((float *)p)[i] = (float)x;
    else
      ((double *)p)[i] = x;
  }
  return p;
}

static int case_mha_bwd(attn_context *ctx, const bench_opts *o, bench_result *r) {
  mhab m;
  memset(&m, 0, sizeof m);
  m.o = o;
  m.B = o->B, m.S = o->Sq, m.H = o->H, m.D = o->D, m.E = o->H * o->D;
  m.es = o->dtype == ATTN_DTYPE_F64 ? 8 : 4;
  int rc = 1;
  if (o->Sq != o->Sk || (o->Hkv > 0 && o->Hkv != o->H)) {
    fprintf(stderr, "attn-bench: mha_bwd is self-attention with H_kv = H (no --Sq/--Sk/--Hkv)\n");
    return 1;
  }
  const size_t R = (size_t)(m.B * m.S), E = (size_t)m.E, es = m.es;
  const double a = 1.0 / sqrt((double)E);
  m.x = filled(R * E, es, 1.0, 1);
  m.dy = filled(R * E, es, 1.0, 2);
  m.w_in = filled(3 * E * E, es, a, 3);
  m.b_in = filled(3 * E, es, 0.1, 4);
  m.w_o = filled(E * E, es, a, 5);
  m.b_o = filled(E, es, 0.1, 6);
  void **bufs[] = {&m.y, &m.dx, &m.qkv, &m.dqkv, &m.ao, &m.dao, &m.gw_in, &m.gb_in, &m.gw_o, &m.gb_o};
  const size_t sizes[] = {R * E, R * E, R * 3 * E, R * 3 * E, R * E, R * E, 3 * E * E, 3 * E, E * E, E};
  bool ok = m.x && m.dy && m.w_in && m.b_in && m.w_o && m.b_o;
  for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++)
    ok = ok && (*bufs[i] = calloc(sizes[i], es)) != NULL;
  const int64_t lshape[3] = {m.B, m.H, m.S};
  if (ok) {
    m.q = heads_view(ctx, &m, m.qkv, 3 * m.E, 0);
    m.k = heads_view(ctx, &m, m.qkv, 3 * m.E, m.E);
    m.v = heads_view(ctx, &m, m.qkv, 3 * m.E, 2 * m.E);
    m.out = heads_view(ctx, &m, m.ao, m.E, 0);
    m.dout = heads_view(ctx, &m, m.dao, m.E, 0);
    m.dq = heads_view(ctx, &m, m.dqkv, 3 * m.E, 0);
    m.dk = heads_view(ctx, &m, m.dqkv, 3 * m.E, m.E);
    m.dv = heads_view(ctx, &m, m.dqkv, 3 * m.E, 2 * m.E);
    ok = m.q && m.k && m.v && m.out && m.dout && m.dq && m.dk && m.dv &&
         attn_tensor_create(ctx, o->dtype, 3, lshape, &m.lse) == ATTN_OK &&
         attn_desc_create(ctx, &m.desc) == ATTN_OK;
  }
  if (ok && o->causal) attn_desc_set_causal(m.desc, ATTN_CAUSAL_TOP_LEFT);
  if (ok && (attn_plan_create(ctx, m.desc, m.q, m.k, m.v, m.out, NULL, m.lse, &m.fwd) != ATTN_OK ||
             attn_backward_plan_create(m.fwd, m.dout, m.dq, m.dk, m.dv, NULL, &m.bwd) != ATTN_OK)) {
    fprintf(stderr, "attn-bench: mha_bwd plan: %s\n", attn_context_last_error(ctx));
    ok = false;
  }
  if (ok) {
    const int prev = openblas_get_num_threads();
    openblas_set_num_threads(o->threads); /* the projections: OpenBLAS's own threads */
    if (mhab_forward(&m) == 0) {
      r->ms = bench_time_ms(mhab_backward, &m, o->reps);
      r->extra = bench_time_ms(mhab_forward, &m, o->reps);
      r->extra_name = "fwd_ms";
      const double Bd = (double)m.B, S = (double)m.S, Ed = (double)m.E;
      r->flops = 2.5 * 4.0 * Bd * (double)m.H * S * S * (double)m.D +
                 2.0 * 2.0 * Bd * S * (3.0 * Ed * Ed + Ed * Ed);
      rc = isnan(r->ms) || isnan(r->extra);
    }
    openblas_set_num_threads(prev);
  }
  attn_backward_plan_destroy(m.bwd);
  attn_plan_destroy(m.fwd);
  attn_desc_destroy(m.desc);
  attn_tensor *ts[] = {m.q, m.k, m.v, m.out, m.lse, m.dout, m.dq, m.dk, m.dv};
  for (size_t i = 0; i < sizeof ts / sizeof ts[0]; i++) attn_tensor_destroy(ts[i]);
  void *all[] = {m.x, m.y, m.dy, m.dx, m.qkv, m.dqkv, m.ao, m.dao, m.w_in, m.b_in, m.w_o, m.b_o,
                 m.gw_in, m.gb_in, m.gw_o, m.gb_o};
  for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) free(all[i]);
  return rc;
}

const bench_case bench_case_mha_bwd = {
    "mha_bwd", case_mha_bwd,
    "MHA self-attention layer training step (projections + attention backward); extra fwd_ms"};

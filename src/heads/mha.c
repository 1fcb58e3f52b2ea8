/* The multi-head attention layer (nn.MultiheadAttention, plus GQA/MQA).
 *
 * execute = three projection GEMMs into the plan's workspace, appended
 * bias/zero key rows, then the exact kernel through an internal attn_plan made
 * at plan time on stride views of that workspace (split heads without
 * copying; query head h reads K/V head h/(H/H_kv) in place), then one GEMM
 * for the out-projection reading the merged heads in place.
 *
 * Workspace rows follow the caller's row order where that lets a projection
 * be one GEMM over all B·S rows: batch-first input → batch-major buffer,
 * sequence-first input → sequence-major buffer; the attention views take the
 * matching strides. */
#include <float.h>
#include <inttypes.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "blas/gemm.h"
#include "core/internal.h"
#include "mask/mask.h"

struct attn_mha {
  attn_context *ctx;
  attn_dtype dt;
  int64_t E, H, Hkv, D, Ekv, kdim, vdim;
  bool bias, bias_kv, zero_attn, batch_first;
  attn_mha_weights w; /* borrowed tensors */
};

/* How the rows (b, s) of a [B, S, F] operand are laid out for GEMM. */
typedef enum row_order {
  ROWS_BATCH_MAJOR = 0, /* row (b, s) at (b·S + s)·r: one GEMM */
  ROWS_SEQ_MAJOR = 1,   /* row (b, s) at (s·B + b)·r: one GEMM */
  ROWS_PER_BATCH = 2    /* anything else: one GEMM per batch item */
} row_order;

enum { M_QUERY, M_KEY, M_VALUE, M_KPM, M_OUT, M_WEIGHTS, M_COUNT };
static const char *const meta_names[M_COUNT] = {"query", "key", "value", "key_padding_mask",
                                                "out", "weights"};

struct attn_mha_plan {
  attn_context *ctx;
  attn_mha *mha;
  int64_t B, Sq, Sk, Skx, nx; /* Skx = Sk + nx appended keys */
  attn_tmeta meta[M_COUNT];
  /* operand strides (b, s) as the caller gave them */
  int64_t in_sb[3], in_ss[3], out_sb, out_ss;
  row_order in_order[3], out_order;
  /* workspace: projected Q, K, V, merged attention output, per-head weights
   * (averaged case), combined mask; each with (b, s) strides */
  void *ws;
  size_t ws_bytes;
  void *buf[3], *ao, *wh, *mm;
  int64_t buf_sb[3], buf_ss[3], ao_sb, ao_ss;
  bool avg_weights;
  /* combined mask (see attn_mha_plan_create): the user's options resolved on
   * the real keys by the mask module, read at every execute */
  bool materialize;
  int64_t Hm;
  attn_desc udesc; /* copy of the caller's descriptor (defaults if NULL) */
  attn_mask mask;
  /* the internal attention */
  attn_desc *idesc;
  attn_tensor *tq, *tk, *tv, *to, *tw, *tmask, *tkpm;
  attn_plan *aplan;
};

/* ---- configuration ------------------------------------------------------- */

void attn_mha_config_init(attn_mha_config *cfg) {
  if (cfg == NULL) return;
  memset(cfg, 0, sizeof *cfg);
  cfg->struct_size = sizeof *cfg;
  cfg->bias = 1;
  cfg->dtype = ATTN_DTYPE_F32;
}

void attn_mha_weights_init(attn_mha_weights *w) {
  if (w == NULL) return;
  memset(w, 0, sizeof *w);
  w->struct_size = sizeof *w;
}

/* A weight: present iff wanted, dtype, rank, shape, contiguous last dim and
 * rows that do not overlap (BLAS needs ld ≥ columns). */
static attn_status check_weight(attn_context *ctx, const char *name, const attn_tensor *t,
                                bool wanted, const char *why_not, attn_dtype dt, int32_t rank,
                                const int64_t *shape) {
  if (!wanted) {
    if (t != NULL)
      return attn_fail(ctx, ATTN_ERR_INVALID_ARG, "%s: given, but %s; pass NULL", name, why_not);
    return ATTN_OK;
  }
  if (t == NULL) return attn_fail(ctx, ATTN_ERR_NULL_ARG, "%s: must not be NULL (%s)", name, why_not);
  if (t->dtype != dt)
    return attn_fail(ctx, ATTN_ERR_DTYPE, "%s: dtype %s, the layer's dtype is %s", name,
                     attn_dtype_name(t->dtype), attn_dtype_name(dt));
  char got[96], want[96];
  bool ok = t->rank == rank;
  for (int32_t i = 0; ok && i < rank; i++) ok = t->shape[i] == shape[i];
  if (!ok) {
    size_t u = (size_t)snprintf(want, sizeof want, "[");
    for (int32_t i = 0; i < rank && u < sizeof want; i++)
      u += (size_t)snprintf(want + u, sizeof want - u, "%s%" PRId64, i ? "," : "", shape[i]);
    if (u < sizeof want) snprintf(want + u, sizeof want - u, "]");
    return attn_fail(ctx, ATTN_ERR_SHAPE, "%s: shape %s, expected %s", name,
                     attn_shape_str(t, got, sizeof got), want);
  }
  if (t->strides[rank - 1] != 1 && t->shape[rank - 1] != 1)
    return attn_fail(ctx, ATTN_ERR_LAYOUT, "%s: last dim stride is %" PRId64 ", must be 1", name,
                     t->strides[rank - 1]);
  if (rank == 2) return attn_check_matrix_rows(ctx, name, t); /* a GEMM operand */
  return ATTN_OK;
}

static attn_status check_config(attn_context *ctx, const attn_mha_config *c, attn_mha *m) {
  if (c->embed_dim < 1)
    return attn_fail(ctx, ATTN_ERR_INVALID_ARG, "cfg.embed_dim: %" PRId64 " must be >= 1",
                     c->embed_dim);
  if (c->num_heads < 1)
    return attn_fail(ctx, ATTN_ERR_INVALID_ARG, "cfg.num_heads: %" PRId64 " must be >= 1",
                     c->num_heads);
  if (c->embed_dim % c->num_heads != 0)
    return attn_fail(ctx, ATTN_ERR_INVALID_ARG,
                     "cfg.embed_dim: %" PRId64 " is not divisible by cfg.num_heads = %" PRId64,
                     c->embed_dim, c->num_heads);
  int64_t hkv = c->num_kv_heads == 0 ? c->num_heads : c->num_kv_heads;
  if (hkv < 1 || c->num_heads % hkv != 0)
    return attn_fail(ctx, ATTN_ERR_INVALID_ARG,
                     "cfg.num_kv_heads: %" PRId64 " does not divide cfg.num_heads = %" PRId64,
                     c->num_kv_heads, c->num_heads);
  if (c->kdim < 0 || c->vdim < 0)
    return attn_fail(ctx, ATTN_ERR_INVALID_ARG, "cfg.%s: %" PRId64 " must be >= 0 (0 = embed_dim)",
                     c->kdim < 0 ? "kdim" : "vdim", c->kdim < 0 ? c->kdim : c->vdim);
  if (c->dtype != ATTN_DTYPE_F32 && c->dtype != ATTN_DTYPE_F64)
    return attn_fail(ctx, ATTN_ERR_DTYPE, "cfg.dtype: %s, expected f32 or f64",
                     attn_dtype_name(c->dtype));
  m->dt = c->dtype;
  m->E = c->embed_dim;
  m->H = c->num_heads;
  m->Hkv = hkv;
  m->D = m->E / m->H;
  m->Ekv = m->Hkv * m->D;
  m->kdim = c->kdim == 0 ? m->E : c->kdim;
  m->vdim = c->vdim == 0 ? m->E : c->vdim;
  m->bias = c->bias != 0;
  m->bias_kv = c->add_bias_kv != 0;
  m->zero_attn = c->add_zero_attn != 0;
  m->batch_first = c->batch_first != 0;
  /* Overflow guard for every product made later from these. */
  int64_t t;
  if (!attn_add_ok(m->E, 2 * m->Ekv, &t) || !attn_mul_ok(t, attn_max64(m->E, attn_max64(m->kdim, m->vdim)), &t))
    return attn_fail(ctx, ATTN_ERR_OVERFLOW, "cfg: weight sizes overflow");
  return ATTN_OK;
}

static attn_status check_weights(attn_context *ctx, const attn_mha_weights *w, attn_mha *m) {
  attn_status st;
  const attn_dtype dt = m->dt;
  bool same = m->kdim == m->E && m->vdim == m->E;
  bool packed = w->in_proj_weight != NULL;
  bool any_sep = w->q_proj_weight || w->k_proj_weight || w->v_proj_weight;
  if (packed && any_sep)
    return attn_fail(ctx, ATTN_ERR_INVALID_ARG,
                     "in_proj_weight: given together with q/k/v_proj_weight; give one or the other");
  if (packed && !same)
    return attn_fail(ctx, ATTN_ERR_INVALID_ARG,
                     "in_proj_weight: packed weights need kdim = vdim = embed_dim (kdim %" PRId64
                     ", vdim %" PRId64 ", E %" PRId64 "); pass q/k/v_proj_weight",
                     m->kdim, m->vdim, m->E);
  if (packed) {
    const int64_t s[2] = {m->E + 2 * m->Ekv, m->E};
    if ((st = check_weight(ctx, "in_proj_weight", w->in_proj_weight, true, "", dt, 2, s)) != ATTN_OK)
      return st;
  } else {
    if (!any_sep)
      return attn_fail(ctx, ATTN_ERR_NULL_ARG,
                       "in_proj_weight: must not be NULL (or give q/k/v_proj_weight)");
    const int64_t sq[2] = {m->E, m->E}, sk[2] = {m->Ekv, m->kdim}, sv[2] = {m->Ekv, m->vdim};
    const char *why = "separate projection weights are given";
    if ((st = check_weight(ctx, "q_proj_weight", w->q_proj_weight, true, why, dt, 2, sq)) != ATTN_OK ||
        (st = check_weight(ctx, "k_proj_weight", w->k_proj_weight, true, why, dt, 2, sk)) != ATTN_OK ||
        (st = check_weight(ctx, "v_proj_weight", w->v_proj_weight, true, why, dt, 2, sv)) != ATTN_OK)
      return st;
  }
  const int64_t sb[1] = {m->E + 2 * m->Ekv}, so[2] = {m->E, m->E}, sob[1] = {m->E};
  const int64_t skv[3] = {1, 1, m->Ekv};
  const char *bias_why = m->bias ? "cfg.bias is set" : "cfg.bias is 0";
  const char *kv_why = m->bias_kv ? "cfg.add_bias_kv is set" : "cfg.add_bias_kv is 0";
  if ((st = check_weight(ctx, "in_proj_bias", w->in_proj_bias, m->bias, bias_why, dt, 1, sb)) != ATTN_OK ||
      (st = check_weight(ctx, "out_proj_weight", w->out_proj_weight, true, "always needed", dt, 2, so)) != ATTN_OK ||
      (st = check_weight(ctx, "out_proj_bias", w->out_proj_bias, m->bias, bias_why, dt, 1, sob)) != ATTN_OK ||
      (st = check_weight(ctx, "bias_k", w->bias_k, m->bias_kv, kv_why, dt, 3, skv)) != ATTN_OK ||
      (st = check_weight(ctx, "bias_v", w->bias_v, m->bias_kv, kv_why, dt, 3, skv)) != ATTN_OK)
    return st;
  return ATTN_OK;
}

attn_status attn_mha_create(attn_context *ctx, const attn_mha_config *cfg,
                            const attn_mha_weights *weights, attn_mha **out) {
  ATTN_CHECK_NULL(ctx, ctx);
  attn_clear_error(ctx);
  ATTN_CHECK_NULL(ctx, cfg);
  ATTN_CHECK_NULL(ctx, weights);
  ATTN_CHECK_NULL(ctx, out);
  if (cfg->struct_size != sizeof(attn_mha_config))
    return attn_fail(ctx, ATTN_ERR_INVALID_ARG,
                     "cfg.struct_size: %zu, expected %zu (initialise with attn_mha_config_init())",
                     cfg->struct_size, sizeof(attn_mha_config));
  if (weights->struct_size != sizeof(attn_mha_weights))
    return attn_fail(ctx, ATTN_ERR_INVALID_ARG,
                     "weights.struct_size: %zu, expected %zu (initialise with attn_mha_weights_init())",
                     weights->struct_size, sizeof(attn_mha_weights));
  attn_mha tmp;
  memset(&tmp, 0, sizeof tmp);
  attn_status st = check_config(ctx, cfg, &tmp);
  if (st != ATTN_OK) return st;
  if ((st = check_weights(ctx, weights, &tmp)) != ATTN_OK) return st;
  attn_mha *m = attn_alloc(ctx, sizeof *m);
  if (m == NULL) return attn_fail(ctx, ATTN_ERR_NO_MEMORY, "attn_mha_create: out of memory");
  *m = tmp;
  m->ctx = ctx;
  m->w = *weights;
  *out = m;
  return ATTN_OK;
}

void attn_mha_destroy(attn_mha *mha) {
  if (mha == NULL) return;
  attn_free(mha->ctx, mha, sizeof *mha);
}

/* ---- small typed helpers ------------------------------------------------- */

static inline void *at(void *base, int64_t off, size_t es) { return (char *)base + off * (int64_t)es; }
static inline const void *cat(const void *base, int64_t off, size_t es) {
  return (const char *)base + off * (int64_t)es;
}

/* C[M×N] = A[M×K] · W[N×K]ᵀ */
static void gemm_nt(attn_dtype dt, int64_t M, int64_t N, int64_t K, const void *A, int64_t lda,
                    const void *W, int64_t ldw, void *C, int64_t ldc) {
  if (M == 1) { /* a single row: any leading dimensions will do, BLAS checks them */
    lda = K;
    ldc = N;
  }
  if (dt == ATTN_DTYPE_F32)
    attn_sgemm(false, true, M, N, K, 1.0f, A, lda, W, ldw, 0.0f, C, ldc);
  else
    attn_dgemm(false, true, M, N, K, 1.0, A, lda, W, ldw, 0.0, C, ldc);
}

/* row += bias (N elements) */
static void add_row(attn_dtype dt, int64_t N, void *row, const void *bias) {
  if (dt == ATTN_DTYPE_F32) {
    float *r = row;
    const float *b = bias;
    for (int64_t i = 0; i < N; i++) r[i] += b[i];
  } else {
    double *r = row;
    const double *b = bias;
    for (int64_t i = 0; i < N; i++) r[i] += b[i];
  }
}

/* Rows of a [B, S, ·] operand with strides (sb, ss): which GEMM shape fits. */
static row_order rows_of(int64_t B, int64_t S, int64_t sb, int64_t ss) {
  if (B == 1 || (S > 1 && sb == S * ss)) return ROWS_BATCH_MAJOR;
  if (S == 1 || ss == B * sb) return ROWS_SEQ_MAJOR;
  return ROWS_PER_BATCH;
}

/* dst(b, s) = src(b, s) · Wᵀ + bias for s < S (rows strided (sb, ss) and
 * (dsb, dss)). Runs on the context's pool in fixed chunks of PROJ_ROWS rows
 * per batch item, each a single-threaded GEMM: OpenBLAS's own threads stay
 * asleep (they would spin on the cores the attention kernel needs next), and
 * the result does not depend on the thread count. */
#define PROJ_ROWS 64

typedef struct proj_job {
  attn_dtype dt;
  int64_t S, N, K, chunks;
  const void *src, *W, *bias;
  int64_t sb, ss, ldw, dsb, dss;
  void *dst;
} proj_job;

static void proj_task(void *arg, int64_t t, int32_t thread) {
  (void)thread;
  const proj_job *j = arg;
  const size_t es = attn_dtype_size(j->dt);
  const int64_t b = t / j->chunks, s0 = (t % j->chunks) * PROJ_ROWS;
  const int64_t rows = attn_min64(PROJ_ROWS, j->S - s0);
  void *dst = at(j->dst, b * j->dsb + s0 * j->dss, es);
  gemm_nt(j->dt, rows, j->N, j->K, cat(j->src, b * j->sb + s0 * j->ss, es), j->ss, j->W, j->ldw,
          dst, j->dss);
  if (j->bias != NULL)
    for (int64_t s = 0; s < rows; s++) add_row(j->dt, j->N, at(dst, s * j->dss, es), j->bias);
}

static attn_status project(attn_context *ctx, attn_dtype dt, int64_t B, int64_t S, const void *src,
                           int64_t sb, int64_t ss, const void *W, int64_t ldw, int64_t N,
                           int64_t K, const void *bias, void *dst, int64_t dsb, int64_t dss) {
  proj_job j = {dt, S, N, K, attn_cdiv64(S, PROJ_ROWS), src, W, bias, sb, ss, ldw, dsb, dss, dst};
  return attn_parallel_for(ctx, B * j.chunks, proj_task, &j);
}

/* ---- plan ---------------------------------------------------------------- */


/* A [B, S, F] operand given sequence-first or batch-first: dtype, rank,
 * shape, contiguous features, rows that do not overlap. */
static attn_status check_operand(attn_context *ctx, const char *name, const attn_tensor *t,
                                 attn_dtype dt, bool batch_first, int64_t B, int64_t S,
                                 int64_t F, int64_t *sb, int64_t *ss) {
  attn_status st = attn_check_tensor(ctx, name, t, 3, dt);
  if (st != ATTN_OK) return st;
  int ib = batch_first ? 0 : 1, is = batch_first ? 1 : 0;
  char got[96];
  if ((B >= 0 && t->shape[ib] != B) || (S >= 0 && t->shape[is] != S) || t->shape[2] != F)
    return attn_fail(ctx, ATTN_ERR_SHAPE,
                     "%s: shape %s, expected %s with batch %" PRId64 "%s, features %" PRId64, name,
                     attn_shape_str(t, got, sizeof got), batch_first ? "[B, S, F]" : "[S, B, F]",
                     B >= 0 ? B : t->shape[ib], S >= 0 ? " and the key sequence length" : "", F);
  if (t->strides[2] != 1 && F != 1)
    return attn_fail(ctx, ATTN_ERR_LAYOUT, "%s: last dim stride is %" PRId64 ", must be 1", name,
                     t->strides[2]);
  *sb = t->strides[ib];
  *ss = t->strides[is];
  int64_t Bn = t->shape[ib], Sn = t->shape[is];
  /* BLAS reads rows with a leading dimension ≥ F. */
  row_order o = rows_of(Bn, Sn, *sb, *ss);
  int64_t rs = o == ROWS_SEQ_MAJOR ? *sb : *ss;
  bool many = o == ROWS_PER_BATCH ? Sn > 1 : Bn * Sn > 1;
  if (many && rs < F)
    return attn_fail(ctx, ATTN_ERR_LAYOUT,
                     "%s: rows overlap (row stride %" PRId64 " < %" PRId64 " features)", name, rs,
                     F);
  /* Rows reach BLAS as M (all B·S rows at once, or S per batch item) with
   * leading dimension rs. */
  int64_t m_rows = o == ROWS_PER_BATCH ? Sn : Bn * Sn;
  if (m_rows > INT_MAX || rs > INT_MAX || F > INT_MAX)
    return attn_fail(ctx, ATTN_ERR_UNSUPPORTED,
                     "%s: %" PRId64 " rows of %" PRId64 " features with row stride %" PRId64
                     " exceed BLAS's int range", name, m_rows, F, rs);
  return ATTN_OK;
}

static bool key_dependent(const attn_desc *d) {
  return d->causal != ATTN_CAUSAL_NONE || d->win_left != ATTN_WINDOW_UNBOUNDED ||
         d->win_right != ATTN_WINDOW_UNBOUNDED || d->key_lengths != NULL ||
         d->bool_mask != NULL || d->add_mask != NULL || d->alibi != NULL;
}

void attn_mha_plan_destroy(attn_mha_plan *p) {
  if (p == NULL) return;
  attn_context *ctx = p->ctx;
  attn_plan_destroy(p->aplan);
  attn_tensor_destroy(p->tq);
  attn_tensor_destroy(p->tk);
  attn_tensor_destroy(p->tv);
  attn_tensor_destroy(p->to);
  attn_tensor_destroy(p->tw);
  attn_tensor_destroy(p->tmask);
  attn_tensor_destroy(p->tkpm);
  attn_desc_destroy(p->idesc);
  attn_free(ctx, p->ws, p->ws_bytes);
  attn_free(ctx, p, sizeof *p);
}

size_t attn_mha_plan_workspace_size(const attn_mha_plan *p) {
  return p == NULL ? 0 : p->ws_bytes + attn_plan_workspace_size(p->aplan);
}

/* Lay a [B, S, F] buffer out in the workspace in the given order;
 * returns its element count. */
static int64_t place(row_order order, int64_t B, int64_t S, int64_t F, int64_t *sb, int64_t *ss) {
  if (order == ROWS_SEQ_MAJOR) {
    *sb = F;
    *ss = B * F;
  } else {
    *sb = S * F;
    *ss = F;
  }
  return B * S * F;
}

static attn_status build(attn_mha_plan *p, const attn_desc *desc, const attn_tensor *query,
                         const attn_tensor *key, const attn_tensor *value,
                         const attn_tensor *kpm, const attn_tensor *out,
                         const attn_tensor *weights) {
  attn_mha *m = p->mha;
  attn_context *ctx = p->ctx;
  const attn_dtype dt = m->dt;
  const size_t es = attn_dtype_size(dt);
  attn_status st;
  char got[96];

  /* Shapes. */
  if (query == NULL) return attn_fail(ctx, ATTN_ERR_NULL_ARG, "query: must not be NULL");
  if ((st = check_operand(ctx, "query", query, dt, m->batch_first, -1, -1, m->E, &p->in_sb[0],
                          &p->in_ss[0])) != ATTN_OK)
    return st;
  p->B = query->shape[m->batch_first ? 0 : 1];
  p->Sq = query->shape[m->batch_first ? 1 : 0];
  if (key == NULL) return attn_fail(ctx, ATTN_ERR_NULL_ARG, "key: must not be NULL");
  if ((st = check_operand(ctx, "key", key, dt, m->batch_first, p->B, -1, m->kdim, &p->in_sb[1],
                          &p->in_ss[1])) != ATTN_OK)
    return st;
  p->Sk = key->shape[m->batch_first ? 1 : 0];
  if ((st = check_operand(ctx, "value", value, dt, m->batch_first, p->B, p->Sk, m->vdim,
                          &p->in_sb[2], &p->in_ss[2])) != ATTN_OK)
    return st;
  if ((st = check_operand(ctx, "out", out, dt, m->batch_first, p->B, -1, m->E, &p->out_sb,
                          &p->out_ss)) != ATTN_OK)
    return st;
  if (out->shape[m->batch_first ? 1 : 0] != p->Sq)
    return attn_fail(ctx, ATTN_ERR_SHAPE, "out: shape %s, expected query's shape",
                     attn_shape_str(out, got, sizeof got));
  p->nx = (m->bias_kv ? 1 : 0) + (m->zero_attn ? 1 : 0);
  p->Skx = p->Sk + p->nx;
  const int64_t B = p->B, Sq = p->Sq, Sk = p->Sk, Skx = p->Skx, H = m->H;
  if (kpm != NULL) {
    if ((st = attn_check_tensor(ctx, "key_padding_mask", kpm, 2, ATTN_DTYPE_U8)) != ATTN_OK)
      return st;
    if (kpm->shape[0] != B || kpm->shape[1] != Sk)
      return attn_fail(ctx, ATTN_ERR_SHAPE,
                       "key_padding_mask: shape %s, expected [B, S_k] = [%" PRId64 ",%" PRId64 "]",
                       attn_shape_str(kpm, got, sizeof got), B, Sk);
  }
  if (weights != NULL) {
    if (weights->rank != 3 && weights->rank != 4)
      return attn_fail(ctx, ATTN_ERR_SHAPE,
                       "weights: rank %d, expected 3 (averaged [B, S_q, S_k']) or 4 (per head "
                       "[B, H, S_q, S_k'])", (int)weights->rank);
    if ((st = attn_check_tensor(ctx, "weights", weights, weights->rank, dt)) != ATTN_OK) return st;
    p->avg_weights = weights->rank == 3;
    bool ok = p->avg_weights ? weights->shape[0] == B && weights->shape[1] == Sq &&
                                   weights->shape[2] == Skx
                             : weights->shape[0] == B && weights->shape[1] == H &&
                                   weights->shape[2] == Sq && weights->shape[3] == Skx;
    if (!ok)
      return attn_fail(ctx, ATTN_ERR_SHAPE,
                       "weights: shape %s, expected [%" PRId64 ",%" PRId64 ",%" PRId64 "] or [%"
                       PRId64 ",%" PRId64 ",%" PRId64 ",%" PRId64 "] (S_k' = S_k + appended keys)",
                       attn_shape_str(weights, got, sizeof got), B, Sq, Skx, B, H, Sq, Skx);
    if (weights->strides[weights->rank - 1] != 1 && Skx != 1)
      return attn_fail(ctx, ATTN_ERR_LAYOUT, "weights: last dim stride must be 1");
  }

  /* The caller's options, and whether masks must be combined into one. */
  if ((st = attn_desc_create(ctx, &p->idesc)) != ATTN_OK) return st;
  if (desc != NULL) {
    *p->idesc = *desc;
    p->idesc->ctx = ctx;
  }
  p->udesc = *p->idesc;
  const attn_desc *ud = &p->udesc;
  p->materialize = (p->nx > 0 && (key_dependent(ud) || kpm != NULL)) ||
                   (kpm != NULL && ud->bool_mask != NULL);
  if (p->materialize && ud->variant != ATTN_VARIANT_EXACT)
    return attn_fail(ctx, ATTN_ERR_UNSUPPORTED,
                     "desc: variant %d with combined masks (key_padding_mask with a bool mask, or "
                     "key masks with add_bias_kv/add_zero_attn) needs ATTN_VARIANT_EXACT",
                     (int)ud->variant);
  if (p->materialize) {
    /* Resolve the options on the real keys with the mask module itself. */
    attn_plan fake;
    memset(&fake, 0, sizeof fake);
    fake.ctx = ctx;
    fake.desc = *ud;
    fake.dtype = dt;
    fake.B = B;
    fake.H = H;
    fake.Hkv = m->Hkv;
    fake.Sq = Sq;
    fake.Sk = Sk;
    if ((st = attn_mask_init(&p->mask, &fake)) != ATTN_OK) return st;
    p->mask.softcap = 0; /* the kernel applies it to the raw scores */
    p->mask.has_transform = p->mask.alibi != NULL || p->mask.add_mask != NULL;
    bool per_head = ud->alibi != NULL || (ud->bool_mask && ud->bool_mask->shape[1] > 1) ||
                    (ud->add_mask && ud->add_mask->shape[1] > 1);
    p->Hm = per_head ? H : 1;
  }

  /* Workspace. */
  for (int i = 0; i < 3; i++) p->in_order[i] = rows_of(B, i == 0 ? Sq : Sk, p->in_sb[i], p->in_ss[i]);
  p->out_order = rows_of(B, Sq, p->out_sb, p->out_ss);
  int64_t n[6] = {0};
  n[0] = place(p->in_order[0], B, Sq, m->E, &p->buf_sb[0], &p->buf_ss[0]);
  for (int i = 1; i < 3; i++) {
    /* Appended rows break a batch-major single GEMM, not a sequence-major one. */
    row_order o = p->in_order[i] == ROWS_SEQ_MAJOR ? ROWS_SEQ_MAJOR : ROWS_BATCH_MAJOR;
    if (!attn_mul_ok(B * Skx, m->Ekv, &n[i]))
      return attn_fail(ctx, ATTN_ERR_OVERFLOW, "key: projected size overflows");
    place(o, B, Skx, m->Ekv, &p->buf_sb[i], &p->buf_ss[i]);
  }
  n[3] = place(p->out_order == ROWS_SEQ_MAJOR ? ROWS_SEQ_MAJOR : ROWS_BATCH_MAJOR, B, Sq, m->E,
               &p->ao_sb, &p->ao_ss);
  const int64_t wdims[4] = {B, H, Sq, Skx};
  const int64_t mdims[4] = {B, p->Hm, Sq, Skx};
  size_t bytes;
  if (p->avg_weights && !attn_bytes_ok(wdims, 4, 1, &bytes))
    return attn_fail(ctx, ATTN_ERR_OVERFLOW, "weights: per-head workspace overflows");
  n[4] = p->avg_weights ? B * H * Sq * Skx : 0;
  if (p->materialize && !attn_bytes_ok(mdims, 4, 1, &bytes))
    return attn_fail(ctx, ATTN_ERR_OVERFLOW, "masks: combined mask overflows");
  n[5] = p->materialize ? B * p->Hm * Sq * Skx : 0;
  int64_t total = 0, off[6];
  for (int i = 0; i < 6; i++) {
    off[i] = total;
    int64_t r = (n[i] + 15) / 16 * 16;
    if (n[i] < 0 || !attn_add_ok(total, r, &total))
      return attn_fail(ctx, ATTN_ERR_OVERFLOW, "workspace size overflows");
  }
  if (!attn_bytes_ok(&total, 1, es, &bytes))
    return attn_fail(ctx, ATTN_ERR_OVERFLOW, "workspace size overflows");
  p->ws = attn_alloc(ctx, bytes);
  if (p->ws == NULL)
    return attn_fail(ctx, ATTN_ERR_NO_MEMORY,
                     "attn_mha_plan_create: cannot allocate %zu bytes of workspace", bytes);
  p->ws_bytes = bytes;
  for (int i = 0; i < 3; i++) p->buf[i] = at(p->ws, off[i], es);
  p->ao = at(p->ws, off[3], es);
  p->wh = p->avg_weights ? at(p->ws, off[4], es) : NULL;
  p->mm = p->materialize ? at(p->ws, off[5], es) : NULL;
  /* The add_zero_attn rows are zeroed once here; execute never writes them. */
  if (p->nx > 0) memset(p->buf[1], 0, (size_t)((char *)p->ao - (char *)p->buf[1]));

  /* Head views of the workspace: split without copying. */
  const int64_t D = m->D;
  const int64_t qs[4] = {B, H, Sq, D}, qst[4] = {p->buf_sb[0], D, p->buf_ss[0], 1};
  const int64_t ks[4] = {B, m->Hkv, Skx, D}, kst[4] = {p->buf_sb[1], D, p->buf_ss[1], 1};
  const int64_t vst[4] = {p->buf_sb[2], D, p->buf_ss[2], 1};
  const int64_t ost[4] = {p->ao_sb, D, p->ao_ss, 1};
  if ((st = attn_tensor_wrap(ctx, dt, 4, qs, qst, p->buf[0], &p->tq)) != ATTN_OK ||
      (st = attn_tensor_wrap(ctx, dt, 4, ks, kst, p->buf[1], &p->tk)) != ATTN_OK ||
      (st = attn_tensor_wrap(ctx, dt, 4, ks, vst, p->buf[2], &p->tv)) != ATTN_OK ||
      (st = attn_tensor_wrap(ctx, dt, 4, qs, ost, p->ao, &p->to)) != ATTN_OK)
    return st;
  if (p->avg_weights && (st = attn_tensor_wrap(ctx, dt, 4, wdims, NULL, p->wh, &p->tw)) != ATTN_OK)
    return st;

  /* The attention's own options. */
  attn_desc *id = p->idesc;
  if (p->materialize) {
    if ((st = attn_tensor_wrap(ctx, dt, 4, mdims, NULL, p->mm, &p->tmask)) != ATTN_OK) return st;
    id->causal = ATTN_CAUSAL_NONE;
    id->win_left = id->win_right = ATTN_WINDOW_UNBOUNDED;
    id->key_lengths = NULL;
    id->n_key_lengths = 0;
    id->bool_mask = NULL;
    id->alibi = NULL;
    id->n_alibi = 0;
    id->add_mask = p->tmask;
  } else if (kpm != NULL) {
    /* kpm [B, S_k] seen as a bool mask [B, 1, S_q, S_k] broadcast over rows. */
    const int64_t s[4] = {B, 1, Sq, Sk}, str[4] = {kpm->strides[0], 0, 0, kpm->strides[1]};
    if ((st = attn_tensor_wrap(ctx, ATTN_DTYPE_U8, 4, s, str, kpm->data, &p->tkpm)) != ATTN_OK)
      return st;
    id->bool_mask = p->tkpm;
  }
  const attn_tensor *aw = weights == NULL ? NULL : p->avg_weights ? p->tw : weights;
  if ((st = attn_plan_create(ctx, id, p->tq, p->tk, p->tv, p->to, aw, NULL, &p->aplan)) != ATTN_OK)
    return st;

  attn_tmeta_record(&p->meta[M_QUERY], query);
  attn_tmeta_record(&p->meta[M_KEY], key);
  attn_tmeta_record(&p->meta[M_VALUE], value);
  attn_tmeta_record(&p->meta[M_KPM], kpm);
  attn_tmeta_record(&p->meta[M_OUT], out);
  attn_tmeta_record(&p->meta[M_WEIGHTS], weights);
  return ATTN_OK;
}

attn_status attn_mha_plan_create(attn_mha *mha, const attn_desc *desc, const attn_tensor *query,
                                 const attn_tensor *key, const attn_tensor *value,
                                 const attn_tensor *key_padding_mask, const attn_tensor *out,
                                 const attn_tensor *weights, attn_mha_plan **plan) {
  if (mha == NULL) return ATTN_ERR_NULL_ARG;
  attn_context *ctx = mha->ctx;
  attn_clear_error(ctx);
  ATTN_CHECK_NULL(ctx, plan);
  attn_mha_plan *p = attn_calloc(ctx, sizeof *p);
  if (p == NULL) return attn_fail(ctx, ATTN_ERR_NO_MEMORY, "attn_mha_plan_create: out of memory");
  p->ctx = ctx;
  p->mha = mha;
  attn_status st = build(p, desc, query, key, value, key_padding_mask, out, weights);
  if (st != ATTN_OK) {
    char msg[ATTN_ERRMSG_LEN];
    memcpy(msg, ctx->last_error, sizeof msg);
    attn_mha_plan_destroy(p);
    memcpy(ctx->last_error, msg, sizeof msg);
    return st;
  }
  *plan = p;
  return ATTN_OK;
}

/* ---- execute ------------------------------------------------------------- */

/* Additive mask [B, Hm, S_q, S_k'] from the caller's options on the real keys
 * (mask module), the key padding mask, and 0 for the appended keys. */
#define DEFINE_MATERIALIZE(T, SUFFIX)                                                            \
  static void materialize_##SUFFIX(attn_mha_plan *p, const attn_tensor *kpm) {                  \
    const int64_t Sq = p->Sq, Sk = p->Sk, Skx = p->Skx;                                         \
    T *mm = p->mm;                                                                               \
    for (int64_t b = 0; b < p->B; b++)                                                           \
      for (int64_t h = 0; h < p->Hm; h++)                                                        \
        for (int64_t i = 0; i < Sq; i++) {                                                       \
          T *row = mm + ((b * p->Hm + h) * Sq + i) * Skx;                                        \
          for (int64_t j = 0; j < Skx; j++) row[j] = 0;                                          \
          attn_mask_apply_##SUFFIX(&p->mask, ATTN_TILE_PARTIAL, b, h, i, 1, 0, Sk, row, Skx);    \
          if (kpm != NULL) {                                                                     \
            const uint8_t *k = (const uint8_t *)kpm->data + b * kpm->strides[0];                 \
            for (int64_t j = 0; j < Sk; j++)                                                     \
              if (k[j * kpm->strides[1]] == 0) row[j] = (T)-INFINITY;                            \
          }                                                                                      \
        }                                                                                        \
  }
DEFINE_MATERIALIZE(float, f32)
DEFINE_MATERIALIZE(double, f64)

/* weights[b, i, j] = mean over h of wh[b, h, i, j] */
#define DEFINE_AVERAGE(T, SUFFIX)                                                                \
  static void average_##SUFFIX(const attn_mha_plan *p, attn_tensor *w) {                        \
    const int64_t H = p->mha->H, Sq = p->Sq, Skx = p->Skx;                                      \
    const T *wh = p->wh;                                                                         \
    T *o = w->data;                                                                              \
    for (int64_t b = 0; b < p->B; b++)                                                           \
      for (int64_t i = 0; i < Sq; i++) {                                                         \
        T *row = o + b * w->strides[0] + i * w->strides[1];                                      \
        for (int64_t j = 0; j < Skx; j++) row[j] = 0;                                            \
        for (int64_t h = 0; h < H; h++) {                                                        \
          const T *src = wh + ((b * H + h) * Sq + i) * Skx;                                      \
          for (int64_t j = 0; j < Skx; j++) row[j] += src[j];                                    \
        }                                                                                        \
        for (int64_t j = 0; j < Skx; j++) row[j] /= (T)H;                                        \
      }                                                                                          \
  }
DEFINE_AVERAGE(float, f32)
DEFINE_AVERAGE(double, f64)

attn_status attn_mha_plan_execute(attn_mha_plan *p, const attn_tensor *query,
                                  const attn_tensor *key, const attn_tensor *value,
                                  const attn_tensor *key_padding_mask, attn_tensor *out,
                                  attn_tensor *weights) {
  if (p == NULL) return ATTN_ERR_NULL_ARG;
  attn_context *ctx = p->ctx;
  attn_clear_error(ctx);
  const attn_tensor *ts[M_COUNT] = {query, key, value, key_padding_mask, out, weights};
  bool required[M_COUNT] = {false};
  required[M_QUERY] = required[M_KEY] = required[M_VALUE] = required[M_OUT] = true;
  attn_status mst = attn_tmeta_check_all(ctx, p->meta, ts, meta_names, required, M_COUNT);
  if (mst != ATTN_OK) return mst;

  const attn_mha *m = p->mha;
  const attn_dtype dt = m->dt;
  const size_t es = attn_dtype_size(dt);
  const int64_t B = p->B, E = m->E, Ekv = m->Ekv;
  const attn_mha_weights *w = &m->w;

  /* Projection weights (row-major [out, in]) and biases. */
  const void *W[3];
  int64_t ldw[3];
  if (w->in_proj_weight != NULL) {
    const attn_tensor *t = w->in_proj_weight;
    for (int i = 0; i < 3; i++) {
      W[i] = cat(t->data, (i == 0 ? 0 : E + (i - 1) * Ekv) * t->strides[0], es);
      ldw[i] = t->strides[0];
    }
  } else {
    const attn_tensor *t[3] = {w->q_proj_weight, w->k_proj_weight, w->v_proj_weight};
    for (int i = 0; i < 3; i++) {
      W[i] = t[i]->data;
      ldw[i] = t[i]->shape[0] > 1 ? t[i]->strides[0] : t[i]->shape[1];
    }
  }
  const void *bias[3] = {NULL, NULL, NULL};
  if (w->in_proj_bias != NULL)
    for (int i = 0; i < 3; i++)
      bias[i] = cat(w->in_proj_bias->data, i == 0 ? 0 : E + (i - 1) * Ekv, es);

  const attn_tensor *in[3] = {query, key, value};
  const int64_t K[3] = {E, m->kdim, m->vdim}, N[3] = {E, Ekv, Ekv};
  for (int i = 0; i < 3; i++) {
    int64_t S = i == 0 ? p->Sq : p->Sk;
    if (ldw[i] < K[i]) ldw[i] = K[i]; /* a single-row weight */
    attn_status pst = project(ctx, dt, B, S, in[i]->data, p->in_sb[i], p->in_ss[i], W[i], ldw[i],
                              N[i], K[i], bias[i], p->buf[i], p->buf_sb[i], p->buf_ss[i]);
    if (pst != ATTN_OK) return pst;
  }
  if (m->bias_kv) {
    for (int64_t b = 0; b < B; b++) {
      memcpy(at(p->buf[1], b * p->buf_sb[1] + p->Sk * p->buf_ss[1], es), w->bias_k->data,
             (size_t)Ekv * es);
      memcpy(at(p->buf[2], b * p->buf_sb[2] + p->Sk * p->buf_ss[2], es), w->bias_v->data,
             (size_t)Ekv * es);
    }
  }
  /* add_zero_attn rows stay as zeroed at plan time: nothing writes them. */

  if (p->materialize) {
    attn_mask_bind(&p->mask, &p->udesc);
    attn_status cst = attn_mask_check(&p->mask, ctx);
    if (cst != ATTN_OK) return cst;
    p->mask.has_transform = p->mask.alibi != NULL || p->mask.add_mask != NULL;
    if (dt == ATTN_DTYPE_F32)
      materialize_f32(p, key_padding_mask);
    else
      materialize_f64(p, key_padding_mask);
  } else if (p->tkpm != NULL) {
    p->tkpm->data = key_padding_mask->data;
  }

  attn_tensor *aw = weights == NULL ? NULL : p->avg_weights ? p->tw : weights;
  attn_status st = attn_plan_execute(p->aplan, p->tq, p->tk, p->tv, p->to, aw, NULL);
  if (st != ATTN_OK) return st;
  if (p->avg_weights) {
    if (dt == ATTN_DTYPE_F32)
      average_f32(p, weights);
    else
      average_f64(p, weights);
  }

  /* out = merge(O) · W_oᵀ + b_o, reading the merged heads in place. */
  const attn_tensor *wo = w->out_proj_weight;
  int64_t ldo = E > 1 ? wo->strides[0] : E;
  const void *bo = w->out_proj_bias ? w->out_proj_bias->data : NULL;
  return project(ctx, dt, B, p->Sq, p->ao, p->ao_sb, p->ao_ss, wo->data, ldo, E, E, bo, out->data,
                 p->out_sb, p->out_ss);
}

/* Multi-head execute: three projection GEMMs into the workspace, the
 * appended bias/zero key rows, the combined mask if any, the inner attention
 * on head views of the workspace, then one GEMM for the out-projection
 * reading the merged heads in place. The plan is only read: every buffer is
 * in the run's workspace (the plan's own, or the caller's). */
#include <inttypes.h>
#include <math.h>
#include <string.h>

#include "heads/mha_internal.h"
#include "kernels/vmath.h"

static const char *const meta_names[M_COUNT] = {"query", "key", "value", "key_padding_mask",
                                                "out", "weights"};

static inline void *at(void *base, int64_t off, size_t es) { return (char *)base + off * (int64_t)es; }
static inline const void *cat(const void *base, int64_t off, size_t es) {
  return (const char *)base + off * (int64_t)es;
}

#define ATTN_TMPL_FILE "heads/mha_impl.inc"
#include "core/tmpl.h"

/* dst(b, s) = src(b, s) · Wᵀ + bias for s < S (rows strided (sb, ss) and
 * (dsb, dss)). Runs on the context's pool in fixed chunks of PROJ_ROWS rows
 * per batch item, each a single-threaded GEMM: OpenBLAS's own threads stay
 * asleep (they would spin on the cores the attention kernel needs next), and
 * the result does not depend on the thread count. */
#define PROJ_ROWS ATTN_MHA_PROJ_ROWS

typedef struct proj_job {
  attn_dtype dt;          /* compute type: W, bias and the GEMM */
  attn_dtype sdt, ddt;    /* src and dst storage (16-bit: widened / rounded per chunk) */
  int64_t S, N, K, chunks;
  const void *src, *W, *bias;
  int64_t sb, ss, ldw, dsb, dss;
  void *dst;
  char *conv;             /* per-thread row scratch (16-bit layers) */
  size_t conv_slot;
  int64_t conv_y;         /* offset (elements) of the output rows in a slot */
  bool w_kn;              /* W is [K × N] (dst = src·W), else [N × K] (dst = src·Wᵀ) */
  double beta;            /* 1: add into dst (f32/f64 dst only) */
} proj_job;

static void proj_task(void *arg, int64_t t, int32_t thread) {
  const proj_job *j = arg;
  const size_t es = attn_dtype_size(j->dt);
  const size_t ses = attn_dtype_size(j->sdt), des = attn_dtype_size(j->ddt);
  const int64_t b = t / j->chunks, s0 = (t % j->chunks) * PROJ_ROWS;
  const int64_t rows = attn_min64(PROJ_ROWS, j->S - s0);
  const void *src = cat(j->src, b * j->sb + s0 * j->ss, ses);
  int64_t lda = j->ss;
  void *dst = at(j->dst, b * j->dsb + s0 * j->dss, des);
  int64_t ldd = j->dss;
  float *slot = j->conv ? (float *)(void *)(j->conv + (size_t)thread * j->conv_slot) : NULL;
  if (j->sdt != j->dt) { /* 16-bit rows → f32 scratch */
    const attn_dtype_traits *tr = attn_dtype_info(j->sdt);
    for (int64_t s = 0; s < rows; s++) tr->to_f32(cat(src, s * j->ss, ses), slot + s * j->K, j->K);
    src = slot;
    lda = j->K;
  }
  if (j->ddt != j->dt) { /* f32 scratch rows, rounded into dst below */
    dst = slot + j->conv_y;
    ldd = j->N;
  }
  if (rows == 1) { /* a single row: any leading dimensions will do, BLAS checks them */
    lda = j->K;
    ldd = j->N;
  }
  attn_dtype_info(j->dt)->gemm(false, !j->w_kn, rows, j->N, j->K, 1.0, src, lda, j->W, j->ldw,
                               j->beta, dst, ldd);
  if (j->bias != NULL)
    for (int64_t s = 0; s < rows; s++) {
      if (j->dt == ATTN_DTYPE_F32)
        mha_add_row_f32(j->N, at(dst, s * ldd, es), j->bias);
      else
        mha_add_row_f64(j->N, at(dst, s * ldd, es), j->bias);
    }
  if (j->ddt != j->dt) {
    const attn_dtype_traits *tr = attn_dtype_info(j->ddt);
    void *out = at(j->dst, b * j->dsb + s0 * j->dss, des);
    for (int64_t s = 0; s < rows; s++)
      tr->from_f32((const float *)dst + s * ldd, at(out, s * j->dss, des), j->N);
  }
}

/* The storage of a projection's input and output (ct: the compute type;
 * both ct except at a 16-bit layer's boundary) and its row scratch. */
typedef struct proj_io {
  attn_dtype sdt, ddt;
  char *conv;
  size_t conv_slot;
  int64_t conv_y;
} proj_io;

static attn_status project(attn_context *ctx, attn_dtype dt, const proj_io *io, int64_t B,
                           int64_t S, const void *src, int64_t sb, int64_t ss, const void *W,
                           int64_t ldw, int64_t N, int64_t K, const void *bias, void *dst,
                           int64_t dsb, int64_t dss) {
  proj_job j = {dt,  io->sdt, io->ddt, S,   N,   K,        attn_cdiv64(S, PROJ_ROWS),
                src, W,       bias,    sb,  ss,  ldw,      dsb,
                dss, dst,     io->conv, io->conv_slot, io->conv_y, false, 0.0};
  return attn_parallel_for_cost(ctx, B * j.chunks, 2.0 * (double)B * (double)S * (double)N * (double)K,
                                proj_task, &j);
}

attn_status attn_mha_rows_gemm(attn_context *ctx, attn_dtype dt, int64_t B, int64_t S,
                               const void *src, int64_t sb, int64_t ss, const void *W,
                               int64_t ldw, bool w_kn, int64_t N, int64_t K, double beta,
                               void *dst, int64_t dsb, int64_t dss) {
  proj_job j = {dt,  dt,  dt,  S,   N,   K,    attn_cdiv64(S, PROJ_ROWS),
                src, W,   NULL, sb, ss,  ldw,  dsb,
                dss, dst, NULL, 0,  0,   w_kn, beta};
  return attn_parallel_for_cost(ctx, B * j.chunks, 2.0 * (double)B * (double)S * (double)N * (double)K,
                                proj_task, &j);
}

/* A parameter (rows × cols, row stride ld, storage dt) widened into dense f32. */
static void widen(attn_dtype dt, const void *src, int64_t rows, int64_t cols, int64_t ld,
                  float *dst) {
  const attn_dtype_traits *tr = attn_dtype_info(dt);
  for (int64_t r = 0; r < rows; r++)
    tr->to_f32((const char *)src + (size_t)(r * ld) * attn_dtype_size(dt), dst + r * cols, cols);
}

void attn_mha_in_weights(const attn_mha *m, const void *W[3], int64_t ldw[3],
                         const void *bias[3]) {
  const attn_mha_weights *w = &m->w;
  const size_t ses = attn_dtype_size(m->dt);
  const int64_t E = m->E, Ekv = m->Ekv;
  if (w->in_proj_weight != NULL) {
    const attn_tensor *t = w->in_proj_weight;
    for (int i = 0; i < 3; i++) {
      W[i] = cat(t->data, (i == 0 ? 0 : E + (i - 1) * Ekv) * t->strides[0], ses);
      ldw[i] = t->strides[0];
    }
  } else {
    const attn_tensor *t[3] = {w->q_proj_weight, w->k_proj_weight, w->v_proj_weight};
    for (int i = 0; i < 3; i++) {
      W[i] = t[i]->data;
      ldw[i] = t[i]->shape[0] > 1 ? t[i]->strides[0] : t[i]->shape[1];
    }
  }
  for (int i = 0; i < 3; i++)
    bias[i] = w->in_proj_bias == NULL
                  ? NULL
                  : cat(w->in_proj_bias->data, i == 0 ? 0 : E + (i - 1) * Ekv, ses);
  const int64_t K[3] = {E, m->kdim, m->vdim};
  for (int i = 0; i < 3; i++)
    if (ldw[i] < K[i]) ldw[i] = K[i]; /* a single-row weight */
}

attn_status attn_mha_bind_masks(const attn_mha_plan *p, attn_context *ctx, char *ws,
                                const attn_tensor *kpm, attn_plan *ip, attn_tensor *tmask,
                                attn_tensor *tkpm) {
  *ip = *p->aplan;
  if (p->materialize) {
    attn_mask mask = p->mask;
    attn_mask_bind(&mask, &p->udesc);
    attn_status st = attn_mask_check(&mask, ctx);
    if (st != ATTN_OK) return st;
    mask.has_transform = mask.alibi != NULL || mask.add_mask != NULL; /* softcap: the kernel's */
    void *mm = ws + p->mm_at;
    if (p->mha->ct == ATTN_DTYPE_F32)
      mha_materialize_f32(p, &mask, kpm, mm);
    else
      mha_materialize_f64(p, &mask, kpm, mm);
    *tmask = attn_tensor_view4(p->mha->ct, p->mdims, NULL, mm);
    ip->desc.mask.add_mask = tmask;
  } else if (kpm != NULL) {
    const int64_t str[4] = {kpm->strides[0], 0, 0, kpm->strides[1]};
    *tkpm = attn_tensor_view4(ATTN_DTYPE_U8, p->kpm_shape, str, kpm->data);
    ip->desc.mask.bool_mask = tkpm;
  }
  return ATTN_OK;
}

attn_status attn_mha_run(const attn_mha_plan *p, attn_context *ctx, char *ws, char *acts,
                         const attn_tensor *query, const attn_tensor *key,
                         const attn_tensor *value, const attn_tensor *key_padding_mask,
                         attn_tensor *out, attn_tensor *weights) {
  const attn_tensor *ts[M_COUNT] = {query, key, value, key_padding_mask, out, weights};
  bool required[M_COUNT] = {false};
  required[M_QUERY] = required[M_KEY] = required[M_VALUE] = required[M_OUT] = true;
  attn_status st = attn_tmeta_check_all(ctx, p->meta, ts, meta_names, required, M_COUNT);
  if (st != ATTN_OK) return st;

  const attn_mha *m = p->mha;
  const attn_dtype dt = m->ct; /* everything inside computes in f32/f64 */
  const attn_dtype sdt = m->dt; /* inputs, outputs, parameters */
  const bool half = sdt != dt;
  const bool f32 = dt == ATTN_DTYPE_F32;
  const size_t es = attn_dtype_size(dt);
  const int64_t B = p->B, E = m->E, Ekv = m->Ekv;
  const attn_mha_weights *w = &m->w;
  void *buf[3] = {acts + p->buf_at[0], acts + p->buf_at[1], acts + p->buf_at[2]};

  /* The masks first: borrowed lengths/slopes are re-checked before
   * anything is written. */
  attn_plan ip;
  attn_tensor tmask, tkpm;
  if ((st = attn_mha_bind_masks(p, ctx, ws, key_padding_mask, &ip, &tmask, &tkpm)) != ATTN_OK)
    return st;

  /* Projection weights (row-major [out, in]) and biases. */
  const void *W[3], *bias[3];
  int64_t ldw[3];
  attn_mha_in_weights(m, W, ldw, bias);

  const int64_t K[3] = {E, m->kdim, m->vdim}, N[3] = {E, Ekv, Ekv};
  /* 16-bit layers: the parameters widened to f32 in the workspace (borrowed
   * tensors may change between executes), projections on f32 copies of
   * each chunk of input rows, the result rounded once into out. */
  const attn_tensor *wo = w->out_proj_weight;
  int64_t ldo = E > 1 ? wo->strides[0] : E;
  const void *Wo = wo->data;
  const void *bo = w->out_proj_bias ? w->out_proj_bias->data : NULL;
  proj_io io_in = {dt, dt, NULL, 0, 0}, io_out = {dt, dt, NULL, 0, 0};
  if (half) {
    for (int i = 0; i < 3; i++) {
      float *w32 = (float *)(void *)(ws + p->w32_at[i]);
      widen(sdt, W[i], N[i], K[i], ldw[i], w32);
      W[i] = w32;
      ldw[i] = K[i];
      if (bias[i] != NULL) {
        float *b32 = (float *)(void *)(ws + p->w32_at[4]) + (i == 0 ? 0 : E + (i - 1) * Ekv);
        widen(sdt, bias[i], 1, N[i], N[i], b32);
        bias[i] = b32;
      }
    }
    float *wo32 = (float *)(void *)(ws + p->w32_at[3]);
    widen(sdt, Wo, E, E, ldo, wo32);
    Wo = wo32;
    ldo = E;
    if (bo != NULL) {
      float *bo32 = (float *)(void *)(ws + p->w32_at[5]);
      widen(sdt, bo, 1, E, E, bo32);
      bo = bo32;
    }
    char *conv = ws + p->inner_at + attn_plan_ws_bytes(p->aplan, ctx->num_threads);
    const int64_t Kmax = attn_max64(E, attn_max64(m->kdim, m->vdim));
    io_in = (proj_io){sdt, dt, conv, p->conv_slot, PROJ_ROWS * Kmax};
    io_out = (proj_io){dt, sdt, conv, p->conv_slot, PROJ_ROWS * Kmax};
  }

  const attn_tensor *in[3] = {query, key, value};
  for (int i = 0; i < 3; i++) {
    int64_t S = i == 0 ? p->Sq : p->Sk;
    st = project(ctx, dt, &io_in, B, S, in[i]->data, p->in_sb[i], p->in_ss[i], W[i], ldw[i], N[i],
                 K[i], bias[i], buf[i], p->buf_sb[i], p->buf_ss[i]);
    if (st != ATTN_OK) return st;
  }
  /* Appended keys: bias_k/bias_v, then the add_zero_attn zero row. */
  for (int64_t b = 0; b < B && p->nx > 0; b++)
    for (int i = 1; i < 3; i++) {
      int64_t row = p->Sk;
      if (m->bias_kv) {
        const attn_tensor *bt = i == 1 ? w->bias_k : w->bias_v;
        void *drow = at(buf[i], b * p->buf_sb[i] + row * p->buf_ss[i], es);
        if (half)
          attn_dtype_info(sdt)->to_f32(bt->data, drow, Ekv);
        else
          memcpy(drow, bt->data, (size_t)Ekv * es);
        row++;
      }
      if (m->zero_attn)
        memset(at(buf[i], b * p->buf_sb[i] + row * p->buf_ss[i], es), 0, (size_t)Ekv * es);
    }

  /* The inner attention on views of this run's workspace (ip: a local copy
   * of its plan whose descriptor points at this run's mask buffers). */
  const attn_tensor tq = attn_tensor_view4(dt, p->qshape, p->qstr, buf[0]);
  const attn_tensor tk = attn_tensor_view4(dt, p->kshape, p->kstr, buf[1]);
  const attn_tensor tv = attn_tensor_view4(dt, p->kshape, p->vstr, buf[2]);
  attn_tensor to = attn_tensor_view4(dt, p->qshape, p->ostr, acts + p->ao_at);
  attn_tensor tlse = {.dtype = dt, .rank = 3, .shape = {B, m->H, p->Sq},
                      .strides = {m->H * p->Sq, p->Sq, 1}, .data = acts + p->lse_at};
  attn_tensor tw = attn_tensor_view4(dt, p->wdims, NULL, ws + p->wh_at);
  attn_tensor *aw = weights == NULL ? NULL : p->avg_weights ? &tw : weights;
  const attn_run irun = {ctx, attn_plan_ws_at(p->aplan, ws + p->inner_at)};
  attn_tensor *lse = p->aplan->meta[5].present ? &tlse : NULL;
  if ((st = ip.ops->execute(&ip, &irun, &tq, &tk, &tv, &to, aw, lse)) != ATTN_OK) return st;
  if (p->avg_weights) {
    if (f32)
      mha_average_f32(p, ws + p->wh_at, weights);
    else
      mha_average_f64(p, ws + p->wh_at, weights);
  }

  /* out = merge(O) · W_oᵀ + b_o, reading the merged heads in place. */
  return project(ctx, dt, &io_out, B, p->Sq, acts + p->ao_at, p->ao_sb, p->ao_ss, Wo, ldo, E, E, bo,
                 out->data, p->out_sb, p->out_ss);
}

attn_status attn_mha_plan_execute(attn_mha_plan *p, const attn_tensor *query,
                                  const attn_tensor *key, const attn_tensor *value,
                                  const attn_tensor *key_padding_mask, attn_tensor *out,
                                  attn_tensor *weights) {
  if (p == NULL) return ATTN_ERR_NULL_ARG;
  attn_clear_error(p->ctx);
  return attn_mha_run(p, p->ctx, p->ws, p->ws, query, key, value, key_padding_mask, out, weights);
}

attn_status attn_mha_plan_execute_on(const attn_mha_plan *p, attn_context *ctx, void *workspace,
                                     size_t workspace_size, const attn_tensor *query,
                                     const attn_tensor *key, const attn_tensor *value,
                                     const attn_tensor *key_padding_mask, attn_tensor *out,
                                     attn_tensor *weights) {
  if (p == NULL || ctx == NULL) return ATTN_ERR_NULL_ARG;
  attn_clear_error(ctx);
  const size_t need = attn_mha_plan_workspace_size_on(p, ctx);
  ATTN_CHECK_NULL(ctx, workspace);
  if (workspace_size < need)
    return attn_fail(ctx, ATTN_ERR_INVALID_ARG,
                     "workspace_size: %zu bytes given, this plan on a context of %d threads "
                     "needs %zu (attn_mha_plan_workspace_size_on())",
                     workspace_size, (int)ctx->num_threads, need);
  attn_status st = attn_threadpool_ensure(ctx);
  if (st != ATTN_OK) return st;
  const uintptr_t a = (uintptr_t)workspace;
  char *base = (char *)workspace + ((ATTN_ALIGN - a % ATTN_ALIGN) % ATTN_ALIGN);
  return attn_mha_run(p, ctx, base, base, query, key, value, key_padding_mask, out, weights);
}

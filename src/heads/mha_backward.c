/* The multi-head layer's training step (attn/heads.h, "Training the
 * multi-head layer"): a training forward that keeps its activations in the
 * caller's `saved` buffer, and the backward that reads them.
 *
 * The plan is a training forward plan (mha_plan.c with train: the inner
 * attention writes lse, Q/K/V/merged-O/lse live in `saved`) plus the
 * attention backward (kernels/backward.c) planned on head views of four
 * gradient buffers laid out exactly like the activations: dO like O, dQ like
 * Q, dK/dV like K/V (appended rows included). The backward is then
 *
 *   out-projection:  dW_o, db_o from dout and O;  dO = dout · W_o
 *   attention:       dQ, dK, dV (the inner backward, masks re-bound as the
 *                    forward bound them)
 *   appended rows:   dbias_k, dbias_v = Σ_b dK/dV[b, S_k]
 *   in-projections:  dW, db from dQ/dK/dV and the inputs; dinput = dY · W
 *
 * Weight gradients are sums over all B·S rows. Each is split over blocks of
 * output rows (one task per block, fixed row order within it), bias
 * gradients over blocks of columns, so results do not depend on the thread
 * count. Every GEMM is OpenBLAS's, called inside the pool's tasks as the
 * forward's projections are. */
#include <inttypes.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>

#include "heads/mha_internal.h"
#include "kernels/backward.h"

struct attn_mha_backward_plan {
  attn_context *ctx;
  attn_mha *mha;
  attn_mha_plan *fp;       /* the training forward (activations in `saved`) */
  attn_backward_plan *ibp; /* the attention backward on head views */
  size_t fws_bytes;        /* the forward run's workspace, at the start of ws */
  size_t dao_at, dq_at, dk_at, dv_at; /* gradient buffers in ws (like O, Q, K, V) */
  void *ws;
  size_t ws_bytes;
};

void attn_mha_grads_init(attn_mha_grads *g) {
  if (g == NULL) return;
  memset(g, 0, sizeof *g);
  g->struct_size = sizeof *g;
}

size_t attn_mha_backward_saved_size(const attn_mha_backward_plan *plan) {
  return plan == NULL ? 0 : plan->fp->saved_bytes + ATTN_ALIGN;
}

size_t attn_mha_backward_plan_workspace_size(const attn_mha_backward_plan *plan) {
  if (plan == NULL) return 0;
  return plan->ws_bytes + attn_backward_plan_workspace_size(plan->ibp);
}

void attn_mha_backward_plan_destroy(attn_mha_backward_plan *plan) {
  if (plan == NULL) return;
  attn_context *ctx = plan->ctx;
  attn_backward_plan_destroy(plan->ibp);
  attn_mha_plan_destroy(plan->fp);
  attn_free(ctx, plan->ws, plan->ws_bytes);
  attn_free(ctx, plan, sizeof *plan);
}

/* Head views [B, H(kv), S, D] of an activation-shaped buffer. */
static attn_tensor q_view(const attn_mha_plan *fp, const int64_t *str, void *data) {
  return attn_tensor_view4(fp->mha->ct, fp->qshape, str, data);
}
static attn_tensor k_view(const attn_mha_plan *fp, const int64_t *str, void *data) {
  return attn_tensor_view4(fp->mha->ct, fp->kshape, str, data);
}
static attn_tensor lse_view(const attn_mha_plan *fp, void *data) {
  const int64_t B = fp->B, H = fp->mha->H, Sq = fp->Sq;
  return (attn_tensor){.dtype = fp->mha->ct, .rank = 3, .shape = {B, H, Sq},
                       .strides = {H * Sq, Sq, 1}, .data = data};
}

/* Keep ctx's message, prefixed by `what`. */
static attn_status prefix_error(attn_context *ctx, attn_status st, const char *what) {
  char msg[ATTN_ERRMSG_LEN];
  memcpy(msg, ctx->last_error, sizeof msg);
  return attn_fail(ctx, st, "%s%s", what, msg);
}

attn_status attn_mha_backward_plan_create(attn_mha *mha, const attn_desc *desc,
                                          const attn_tensor *query, const attn_tensor *key,
                                          const attn_tensor *value,
                                          const attn_tensor *key_padding_mask,
                                          const attn_tensor *out, attn_mha_backward_plan **plan) {
  if (mha == NULL) return ATTN_ERR_NULL_ARG;
  attn_context *ctx = mha->ctx;
  attn_clear_error(ctx);
  ATTN_CHECK_NULL(ctx, plan);
  if (mha->dt != mha->ct)
    return attn_fail(ctx, ATTN_ERR_UNSUPPORTED,
                     "mha: a %s layer has no backward yet (f32 and f64 layers have)",
                     attn_dtype_name(mha->dt));
  attn_mha_backward_plan *p = attn_calloc(ctx, sizeof *p);
  if (p == NULL)
    return attn_fail(ctx, ATTN_ERR_NO_MEMORY, "attn_mha_backward_plan_create: out of memory");
  p->ctx = ctx;
  p->mha = mha;
  attn_status st = attn_mha_plan_build(mha, desc, query, key, value, key_padding_mask, out, NULL,
                                       true, &p->fp);
  if (st == ATTN_OK) {
    const attn_mha_plan *fp = p->fp;
    const size_t es = attn_dtype_size(mha->ct);
    /* The forward run's workspace, then the gradient buffers. */
    const size_t fws = attn_mha_ws_bytes(fp, ctx->num_threads);
    p->fws_bytes = fws + (ATTN_ALIGN - fws % ATTN_ALIGN) % ATTN_ALIGN;
    attn_carver c = attn_carver_start();
    p->dao_at = attn_carve(&c, es, fp->B, fp->Sq, mha->E);
    p->dq_at = attn_carve(&c, es, fp->B, fp->Sq, mha->E);
    p->dk_at = attn_carve(&c, es, fp->B, fp->Skx, mha->Ekv);
    p->dv_at = attn_carve(&c, es, fp->B, fp->Skx, mha->Ekv);
    if (!c.ok || fws >= SIZE_MAX / 4 || (size_t)c.bytes > SIZE_MAX / 2 - p->fws_bytes) {
      st = attn_fail(ctx, ATTN_ERR_OVERFLOW, "query: the layer's gradient buffers overflow");
    } else {
      p->ws_bytes = p->fws_bytes + (size_t)c.bytes;
      void *meta_only = p;
      const attn_tensor tdo = q_view(fp, fp->ostr, meta_only);
      const attn_tensor tdq = q_view(fp, fp->qstr, meta_only);
      const attn_tensor tdk = k_view(fp, fp->kstr, meta_only);
      const attn_tensor tdv = k_view(fp, fp->vstr, meta_only);
      st = attn_backward_plan_create(fp->aplan, &tdo, &tdq, &tdk, &tdv, NULL, &p->ibp);
      if (st != ATTN_OK) st = prefix_error(ctx, st, "desc: the attention backward: ");
    }
    if (st == ATTN_OK && (p->ws = attn_calloc(ctx, p->ws_bytes)) == NULL)
      st = attn_fail(ctx, ATTN_ERR_NO_MEMORY,
                     "attn_mha_backward_plan_create: cannot allocate %zu bytes of workspace",
                     p->ws_bytes);
  }
  if (st != ATTN_OK) {
    char msg[ATTN_ERRMSG_LEN];
    memcpy(msg, ctx->last_error, sizeof msg);
    if (p->ws == NULL) p->ws_bytes = 0;
    attn_mha_backward_plan_destroy(p);
    memcpy(ctx->last_error, msg, sizeof msg);
    return st;
  }
  *plan = p;
  return ATTN_OK;
}

/* The aligned start of the caller's `saved`. */
static attn_status saved_base(const attn_mha_backward_plan *p, const void *saved, size_t size,
                              char **base) {
  if (saved == NULL) return attn_fail(p->ctx, ATTN_ERR_NULL_ARG, "saved: must not be NULL");
  const size_t need = attn_mha_backward_saved_size(p);
  if (size < need)
    return attn_fail(p->ctx, ATTN_ERR_INVALID_ARG,
                     "saved_size: %zu bytes given, this plan needs %zu "
                     "(attn_mha_backward_saved_size())", size, need);
  const uintptr_t a = (uintptr_t)saved;
  *base = (char *)(uintptr_t)saved + ((ATTN_ALIGN - a % ATTN_ALIGN) % ATTN_ALIGN);
  return ATTN_OK;
}

attn_status attn_mha_forward_train(attn_mha_backward_plan *plan, const attn_tensor *query,
                                   const attn_tensor *key, const attn_tensor *value,
                                   const attn_tensor *key_padding_mask, attn_tensor *out,
                                   void *saved, size_t saved_size) {
  if (plan == NULL) return ATTN_ERR_NULL_ARG;
  attn_clear_error(plan->ctx);
  char *acts = NULL;
  attn_status st = saved_base(plan, saved, saved_size, &acts);
  if (st != ATTN_OK) return st;
  return attn_mha_run(plan->fp, plan->ctx, plan->ws, acts, query, key, value, key_padding_mask,
                      out, NULL);
}

/* ---- the sums over rows ---------------------------------------------------- */

/* Rows (b, s) of a [B, S, F] operand with (b, s) strides, as one matrix when
 * the order allows: r = b·S + s at r·ld (kind 1) or r = s·B + b at r·ld
 * (kind 2); 0: one matrix per batch item. */
static int flat_rows(int64_t B, int64_t S, int64_t sb, int64_t ss, int64_t F, int64_t *ld) {
  if (B == 1 || S == 1) {
    *ld = attn_max64(B == 1 ? ss : sb, F);
    return 1;
  }
  if (sb == S * ss) {
    *ld = ss;
    return 1;
  }
  if (ss == B * sb) {
    *ld = sb;
    return 2;
  }
  return 0;
}

/* dW[N × K] = Σ_{b,s} dy(b, s)ᵀ · x(b, s): dy rows of N, x rows of K. */
typedef struct wgrad_job {
  attn_dtype dt;
  int64_t B, S, N, K;
  const char *dy, *x;
  int64_t dsb, dss, xsb, xss;
  char *dw;
  int64_t ldw;
} wgrad_job;

#define WGRAD_ROWS 64

static void wgrad_task(void *arg, int64_t t, int32_t thread) {
  (void)thread;
  const wgrad_job *j = arg;
  const attn_dtype_traits *tr = attn_dtype_info(j->dt);
  const size_t es = tr->size;
  const int64_t n0 = t * WGRAD_ROWS, nb = attn_min64(WGRAD_ROWS, j->N - n0);
  char *c = j->dw + (size_t)(n0 * j->ldw) * es;
  const int64_t ldc = nb > 1 ? j->ldw : j->K;
  int64_t lda, ldb;
  const int ka = flat_rows(j->B, j->S, j->dsb, j->dss, j->N, &lda);
  const int kb = flat_rows(j->B, j->S, j->xsb, j->xss, j->K, &ldb);
  if (ka != 0 && ka == kb) {
    tr->gemm(true, false, nb, j->K, j->B * j->S, 1.0, j->dy + (size_t)n0 * es, lda, j->x, ldb,
             0.0, c, ldc);
    return;
  }
  lda = attn_max64(j->dss, j->N);
  ldb = attn_max64(j->xss, j->K);
  for (int64_t b = 0; b < j->B; b++)
    tr->gemm(true, false, nb, j->K, j->S, 1.0, j->dy + (size_t)(b * j->dsb + n0) * es, lda,
             j->x + (size_t)(b * j->xsb) * es, ldb, b == 0 ? 0.0 : 1.0, c, ldc);
}

static attn_status wgrad(attn_context *ctx, attn_dtype dt, int64_t B, int64_t S, int64_t N,
                         int64_t K, const void *dy, int64_t dsb, int64_t dss, const void *x,
                         int64_t xsb, int64_t xss, void *dw, int64_t ldw) {
  wgrad_job j = {dt, B, S, N, K, dy, x, dsb, dss, xsb, xss, dw, ldw};
  return attn_parallel_for_cost(ctx, attn_cdiv64(N, WGRAD_ROWS),
                                2.0 * (double)B * (double)S * (double)N * (double)K, wgrad_task,
                                &j);
}

/* g[c·gs] = Σ_{b,s} y(b, s)[c] for c < N (f64 sums, fixed row order). */
typedef struct colsum_job {
  attn_dtype dt;
  int64_t B, S, N;
  const char *y;
  int64_t sb, ss;
  char *g;
  int64_t gs;
} colsum_job;

#define COLSUM_COLS 256

static void colsum_task(void *arg, int64_t t, int32_t thread) {
  (void)thread;
  const colsum_job *j = arg;
  const bool f32 = j->dt == ATTN_DTYPE_F32;
  const size_t es = f32 ? 4 : 8;
  const int64_t c0 = t * COLSUM_COLS, nc = attn_min64(COLSUM_COLS, j->N - c0);
  double acc[COLSUM_COLS] = {0};
  for (int64_t b = 0; b < j->B; b++)
    for (int64_t s = 0; s < j->S; s++) {
      const char *row = j->y + (size_t)(b * j->sb + s * j->ss + c0) * es;
      for (int64_t c = 0; c < nc; c++)
        acc[c] += f32 ? (double)((const float *)(const void *)row)[c]
                      : ((const double *)(const void *)row)[c];
    }
  for (int64_t c = 0; c < nc; c++) {
    char *dst = j->g + (size_t)((c0 + c) * j->gs) * es;
    if (f32)
      *(float *)(void *)dst = (float)acc[c];
    else
      *(double *)(void *)dst = acc[c];
  }
}

static attn_status colsum(attn_context *ctx, attn_dtype dt, int64_t B, int64_t S, int64_t N,
                          const void *y, int64_t sb, int64_t ss, void *g, int64_t gs) {
  colsum_job j = {dt, B, S, N, y, sb, ss, g, gs};
  return attn_parallel_for(ctx, attn_cdiv64(N, COLSUM_COLS), colsum_task, &j);
}

/* ---- execute-time checks --------------------------------------------------- */

/* A parameter gradient: dtype, rank and shape of the parameter, last dim
 * contiguous, rows not overlapping. */
static attn_status check_pgrad(attn_context *ctx, const char *name, const attn_tensor *g,
                               const attn_tensor *param, attn_dtype dt) {
  if (param == NULL)
    return attn_fail(ctx, ATTN_ERR_INVALID_ARG,
                     "grads.%s: the layer has no %s (leave it NULL)", name, name);
  char want[96], got[96];
  snprintf(want, sizeof want, "grads.%s", name);
  attn_status st = attn_check_tensor(ctx, want, g, param->rank, dt);
  if (st != ATTN_OK) return st;
  for (int i = 0; i < param->rank; i++)
    if (g->shape[i] != param->shape[i])
      return attn_fail(ctx, ATTN_ERR_SHAPE, "grads.%s: shape %s, expected the parameter's %s",
                       name, attn_shape_str(g, got, sizeof got),
                       attn_shape_str(param, want, sizeof want));
  const int r = param->rank;
  const int64_t cols = g->shape[r - 1];
  if (g->strides[r - 1] != 1 && cols > 1)
    return attn_fail(ctx, ATTN_ERR_LAYOUT, "grads.%s: last dim stride %" PRId64 ", must be 1",
                     name, g->strides[r - 1]);
  if (r == 2 && g->shape[0] > 1 && g->strides[0] < cols)
    return attn_fail(ctx, ATTN_ERR_LAYOUT,
                     "grads.%s: rows overlap (row stride %" PRId64 " < %" PRId64 ")", name,
                     g->strides[0], cols);
  return ATTN_OK;
}

static attn_status check_grads(const attn_mha_backward_plan *p, const attn_mha_grads *g) {
  attn_context *ctx = p->ctx;
  if (g->struct_size != sizeof(attn_mha_grads))
    return attn_fail(ctx, ATTN_ERR_INVALID_ARG,
                     "grads.struct_size: %zu, expected %zu (initialise with attn_mha_grads_init())",
                     g->struct_size, sizeof(attn_mha_grads));
  const attn_mha_weights *w = &p->mha->w;
  const struct {
    const char *name;
    const attn_tensor *g, *param;
  } list[] = {{"in_proj_weight", g->in_proj_weight, w->in_proj_weight},
              {"q_proj_weight", g->q_proj_weight, w->q_proj_weight},
              {"k_proj_weight", g->k_proj_weight, w->k_proj_weight},
              {"v_proj_weight", g->v_proj_weight, w->v_proj_weight},
              {"in_proj_bias", g->in_proj_bias, w->in_proj_bias},
              {"out_proj_weight", g->out_proj_weight, w->out_proj_weight},
              {"out_proj_bias", g->out_proj_bias, w->out_proj_bias},
              {"bias_k", g->bias_k, w->bias_k},
              {"bias_v", g->bias_v, w->bias_v}};
  for (size_t i = 0; i < sizeof list / sizeof list[0]; i++) {
    if (list[i].g == NULL) continue;
    attn_status st = check_pgrad(ctx, list[i].name, list[i].g, list[i].param, p->mha->ct);
    if (st != ATTN_OK) return st;
  }
  return ATTN_OK;
}

static bool same_meta(const attn_tensor *a, const attn_tensor *b) {
  if (a->dtype != b->dtype || a->rank != b->rank) return false;
  for (int i = 0; i < a->rank; i++)
    if (a->shape[i] != b->shape[i] || a->strides[i] != b->strides[i]) return false;
  return true;
}

/* dx (may be NULL): an input gradient like the input; sum = it is an
 * earlier output (same data) and receives the sum. */
static attn_status check_dinput(const attn_mha_backward_plan *p, const char *name,
                                const attn_tensor *dx, int i, const attn_tensor *const *earlier,
                                const char *const *earlier_names, int n_earlier, bool *sum,
                                int64_t *sb, int64_t *ss) {
  *sum = false;
  if (dx == NULL) return ATTN_OK;
  const attn_mha *m = p->mha;
  const attn_mha_plan *fp = p->fp;
  const int64_t F[3] = {m->E, m->kdim, m->vdim}, S = i == 0 ? fp->Sq : fp->Sk;
  attn_status st = attn_mha_check_operand(p->ctx, name, dx, m->ct, m->batch_first, fp->B, S,
                                          F[i], sb, ss);
  if (st != ATTN_OK) return st;
  for (int e = 0; e < n_earlier; e++) {
    if (earlier[e] == NULL || earlier[e]->data != dx->data) continue;
    if (!same_meta(earlier[e], dx))
      return attn_fail(p->ctx, ATTN_ERR_INVALID_ARG,
                       "%s: shares its data with %s but not its shape and strides (pass one "
                       "tensor for both to receive the sum)", name, earlier_names[e]);
    *sum = true;
  }
  return ATTN_OK;
}

/* ---- the backward ---------------------------------------------------------- */

attn_status attn_mha_backward_execute(attn_mha_backward_plan *plan, const attn_tensor *query,
                                      const attn_tensor *key, const attn_tensor *value,
                                      const attn_tensor *key_padding_mask,
                                      const attn_tensor *dout, const void *saved,
                                      size_t saved_size, attn_tensor *dquery, attn_tensor *dkey,
                                      attn_tensor *dvalue, const attn_mha_grads *grads) {
  if (plan == NULL) return ATTN_ERR_NULL_ARG;
  attn_context *ctx = plan->ctx;
  attn_clear_error(ctx);
  const attn_mha_plan *fp = plan->fp;
  const attn_mha *m = plan->mha;
  const attn_dtype dt = m->ct;
  const size_t es = attn_dtype_size(dt);
  const int64_t B = fp->B, Sq = fp->Sq, Sk = fp->Sk, E = m->E, Ekv = m->Ekv;

  /* Everything is checked before anything is written. */
  static const char *const names[4] = {"query", "key", "value", "key_padding_mask"};
  const attn_tensor *ins[4] = {query, key, value, key_padding_mask};
  const bool required[4] = {true, true, true, false};
  attn_status st = attn_tmeta_check_all(ctx, fp->meta, ins, names, required, 4);
  if (st != ATTN_OK) return st;
  int64_t do_sb, do_ss;
  if (dout == NULL) return attn_fail(ctx, ATTN_ERR_NULL_ARG, "dout: must not be NULL");
  if ((st = attn_mha_check_operand(ctx, "dout", dout, dt, m->batch_first, B, Sq, E, &do_sb,
                                   &do_ss)) != ATTN_OK)
    return st;
  const char *const dnames[3] = {"dquery", "dkey", "dvalue"};
  attn_tensor *dx[3] = {dquery, dkey, dvalue};
  bool sum[3];
  int64_t dx_sb[3] = {0}, dx_ss[3] = {0};
  for (int i = 0; i < 3; i++)
    if ((st = check_dinput(plan, dnames[i], dx[i], i, (const attn_tensor *const *)dx, dnames, i,
                           &sum[i], &dx_sb[i], &dx_ss[i])) != ATTN_OK)
      return st;
  char *acts = NULL;
  if ((st = saved_base(plan, saved, saved_size, &acts)) != ATTN_OK) return st;
  attn_mha_grads none;
  attn_mha_grads_init(&none);
  const attn_mha_grads *g = grads != NULL ? grads : &none;
  if ((st = check_grads(plan, g)) != ATTN_OK) return st;
  attn_plan ip;
  attn_tensor tmask, tkpm;
  char *ws = plan->ws;
  if ((st = attn_mha_bind_masks(fp, ctx, ws, key_padding_mask, &ip, &tmask, &tkpm)) != ATTN_OK)
    return st;

  char *dao = ws + plan->fws_bytes + plan->dao_at;
  char *dbuf[3] = {ws + plan->fws_bytes + plan->dq_at, ws + plan->fws_bytes + plan->dk_at,
                   ws + plan->fws_bytes + plan->dv_at};
  char *ao = acts + fp->ao_at;
  const attn_tensor *wo = m->w.out_proj_weight;
  const int64_t ldo = attn_max64(wo->strides[0], E);

  /* Out-projection: dW_o = Σ doutᵀ·O, db_o = Σ dout, dO = dout·W_o. */
  if (g->out_proj_weight != NULL &&
      (st = wgrad(ctx, dt, B, Sq, E, E, dout->data, do_sb, do_ss, ao, fp->ao_sb, fp->ao_ss,
                  g->out_proj_weight->data, g->out_proj_weight->strides[0])) != ATTN_OK)
    return st;
  if (g->out_proj_bias != NULL &&
      (st = colsum(ctx, dt, B, Sq, E, dout->data, do_sb, do_ss, g->out_proj_bias->data,
                   g->out_proj_bias->strides[0])) != ATTN_OK)
    return st;
  if ((st = attn_mha_rows_gemm(ctx, dt, B, Sq, dout->data, do_sb, do_ss, wo->data, ldo, true, E,
                               E, 0.0, dao, fp->ao_sb, fp->ao_ss)) != ATTN_OK)
    return st;

  /* The attention backward on head views. */
  {
    const attn_tensor tq = q_view(fp, fp->qstr, acts + fp->buf_at[0]);
    const attn_tensor tk = k_view(fp, fp->kstr, acts + fp->buf_at[1]);
    const attn_tensor tv = k_view(fp, fp->vstr, acts + fp->buf_at[2]);
    const attn_tensor to = q_view(fp, fp->ostr, ao);
    const attn_tensor tl = lse_view(fp, acts + fp->lse_at);
    const attn_tensor tdo = q_view(fp, fp->ostr, dao);
    attn_tensor tdq = q_view(fp, fp->qstr, dbuf[0]);
    attn_tensor tdk = k_view(fp, fp->kstr, dbuf[1]);
    attn_tensor tdv = k_view(fp, fp->vstr, dbuf[2]);
    const bool has_lse = fp->aplan->meta[5].present;
    if ((st = attn_backward_run(plan->ibp, &ip, &tq, &tk, &tv, &to, has_lse ? &tl : NULL, &tdo,
                                &tdq, &tdk, &tdv, NULL)) != ATTN_OK)
      return st;
  }

  /* The appended bias_k / bias_v rows: Σ_b of their gradient rows. */
  if (m->bias_kv) {
    attn_tensor *gb[2] = {g->bias_k, g->bias_v};
    for (int i = 0; i < 2; i++)
      if (gb[i] != NULL &&
          (st = colsum(ctx, dt, B, 1, Ekv, dbuf[1 + i] + (size_t)(Sk * fp->buf_ss[1 + i]) * es,
                       fp->buf_sb[1 + i], 0, gb[i]->data, 1)) != ATTN_OK)
        return st;
  }

  /* In-projections: dW_i = Σ dYᵀ·X, db_i = Σ dY, dX = dY·W_i (real rows only). */
  const void *W[3], *bias[3];
  int64_t ldw[3];
  attn_mha_in_weights(m, W, ldw, bias);
  const int64_t K[3] = {E, m->kdim, m->vdim}, N[3] = {E, Ekv, Ekv};
  const int64_t row0[3] = {0, E, E + Ekv}; /* rows in the packed weight / bias */
  attn_tensor *gsep[3] = {g->q_proj_weight, g->k_proj_weight, g->v_proj_weight};
  const attn_tensor *xin[3] = {query, key, value};
  for (int i = 0; i < 3; i++) {
    const int64_t S = i == 0 ? Sq : Sk;
    void *gw = NULL;
    int64_t ldg = 0;
    if (g->in_proj_weight != NULL) {
      ldg = g->in_proj_weight->strides[0];
      gw = (char *)g->in_proj_weight->data + (size_t)(row0[i] * ldg) * es;
    } else if (gsep[i] != NULL) {
      ldg = gsep[i]->strides[0];
      gw = gsep[i]->data;
    }
    if (gw != NULL &&
        (st = wgrad(ctx, dt, B, S, N[i], K[i], dbuf[i], fp->buf_sb[i], fp->buf_ss[i],
                    xin[i]->data, fp->in_sb[i], fp->in_ss[i], gw, attn_max64(ldg, K[i]))) !=
            ATTN_OK)
      return st;
    const attn_tensor *gb = g->in_proj_bias;
    if (gb != NULL &&
        (st = colsum(ctx, dt, B, S, N[i], dbuf[i], fp->buf_sb[i], fp->buf_ss[i],
                     (char *)gb->data + (size_t)(row0[i] * gb->strides[0]) * es,
                     gb->strides[0])) != ATTN_OK)
      return st;
    if (dx[i] != NULL &&
        (st = attn_mha_rows_gemm(ctx, dt, B, S, dbuf[i], fp->buf_sb[i], fp->buf_ss[i], W[i],
                                 ldw[i], true, K[i], N[i], sum[i] ? 1.0 : 0.0, dx[i]->data,
                                 dx_sb[i], dx_ss[i])) != ATTN_OK)
      return st;
  }
  return ATTN_OK;
}

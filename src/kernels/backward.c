/* The backward pass of exact (and sparse) softmax attention, FlashAttention-2
 * style, deterministic for any thread count.
 *
 * Three parallel passes, each task writing only its own outputs:
 *  1. D[b, h, i] = Σ dout·out (tasks over (b, h)).
 *  2. Tasks over (b, kv head, key chunk). A chunk is the key blocks
 *     kb ≡ c (mod C); the task walks them in order, and for each key block
 *     every query head of the group and every query block the mask keeps:
 *     S = scale·Q Kᵀ, the forward's mask/transforms (MASK_APPLY), P =
 *     e^{S − lse}, dP = dO Vᵀ, dS = P∘(dP − D), then by GEMM
 *     dV_j += Pᵀ dO, dK_j += scale·dSᵀ Q, dQ_i += scale·dS K_j.
 *     dK/dV of a key block are summed in a slot and written once; dQ goes
 *     to dq itself for chunk 0 and to a partial buffer per extra chunk.
 *  3. dq += the partial buffers in chunk order (only when C > 1).
 * C depends only on the shapes (enough tasks for the pool when B·H_kv is
 * small, partial buffers capped at ATTN_BWD_PART_CAP bytes), so the sums'
 * order never depends on the thread count. Five GEMMs per visited tile,
 * no S_q×S_k buffer, no allocation in execute.
 *
 * Scores with weights run the same passes on projected rows:
 *  - Luong general (s = scale·q W kᵀ): pass 0 forms X = q W [S_q × d_k] per
 *    (b, h); pass 2 treats X as the queries and yields dX; pass 4 forms
 *    dq = dX Wᵀ and (on request) dW = Σ_{b,h} qᵀ dX.
 *  - Bahdanau additive (s = vᵀ tanh(W_q q + W_k k + bias)): pass 0 forms
 *    X = q W_qᵀ + bias [S_q × A] and Y = k W_kᵀ [S_k × A]; pass 2 recomputes
 *    each tile's tanh in chunks (as the forward does) and accumulates
 *    dX_i += Σ_j t_ij, dY_j += Σ_i t_ij with t_ij = dS_ij·v∘(1 − tanh²), and
 *    a per-task ∂L/∂v; pass 4 forms dq = dX W_q, dk = dY W_k and (on request)
 *    dW_q = Σ dXᵀ q, dW_k = Σ dYᵀ k, dbias = Σ dX, dv_a = Σ of the tasks'.
 *  Every weight-gradient element is summed over (b, head, row) in one fixed
 *  order by one task, so these too are bitwise identical for any thread
 *  count. */
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "approx/linear.h"
#include "approx/lowrank.h"
#include "blas/gemm.h"
#include "kernels/backward.h"
#include "kernels/exact.h"
#include "kernels/tile.h"
#include "kernels/vmath.h"
#include "mask/mask.h"

/* Bytes of partial dq buffers a plan may hold for extra key chunks. */
#define ATTN_BWD_PART_CAP ((int64_t)16 << 20)
/* Tasks the key-chunk pass aims for when B·H_kv is small. */
#define ATTN_BWD_TASKS 8

enum { BM_Q, BM_K, BM_V, BM_OUT, BM_LSE, BM_DOUT, BM_DQ, BM_DK, BM_DV, BM_DMASK, BM_N };
static const char *const bm_names[BM_N] = {"q",    "k",  "v",  "out", "lse",
                                           "dout", "dq", "dk", "dv",  "dmask"};

/* Weight gradients (attn_backward_plan_set_general_grad, _additive_grads;
 * Linformer's dE, dF in slots 0 and 1 with _lowrank_grads): borrowed
 * tensors, checked when set (a tensor's shape, strides and data pointer
 * never become invalid). */
enum { WG_W, WG_WQ = 0, WG_WK, WG_BIAS, WG_V, WG_N };
/* The f32 copies a 16-bit plan's backward works on (inputs, then outputs). */
enum cv_tensor { CV_Q, CV_K, CV_V, CV_OUT, CV_DOUT, CV_DQ, CV_DK, CV_DV, CV_N };

struct attn_backward_plan {
  attn_context *ctx;
  const attn_plan *fwd;
  const attn_exact *ex; /* the forward's kernel state (score weights) */
  attn_mask mask;       /* the forward's resolved mask; executes bind a copy */
  attn_dims dims;
  double scale;
  attn_score score;
  /* Columns of the rows pass 2 multiplies: the queries' (d_q; d_k for
   * general, A for additive) and the keys' (d_k; A for additive). */
  int64_t qc, kc;
  int64_t A, add_kc; /* additive: attention dim, keys per tanh chunk */
  bool projected;    /* general or additive: pass 2 works on X (and Y) */
  int64_t bq, bk, nqb, nkb, chunks;
  attn_tmeta meta[BM_N];
  struct {
    size_t S, dP, G, dK, dV, Qz, Kz, X;
    size_t Kp, Vk, Kv; /* the tile engine's packed K and V */
  } at;
  /* f32 passes on CPUs with the avx512-f32 tile engine (no dense masks,
   * not additive): pass 2's five GEMMs on its micro-kernel instead of
   * OpenBLAS. dK, dV accumulate transposed (dKᵀ += Qᵀ·dS, dVᵀ += dOᵀ·P),
   * from Qᵀ and dOᵀ transposed once per head in pass 1 (shared QT, dOT). */
  const attn_tile_engine *eng;
  size_t QT_at, dOT_at;
  int64_t lds; /* row stride of the S, dP and G tiles */
  size_t slot_bytes;
  size_t D_at, part_at, shared_bytes; /* shared: D [B·H·S_q], partial dq */
  /* Shared, projected scores: X, dX [B·H·S_q·qc]; additive Y, dY
   * [B·H_kv·S_k·A], v and bias [2A], the tasks' ∂L/∂v [B·H_kv·C·A]. */
  size_t X_at, dX_at, Y_at, dY_at, vb_at, dva_at;
  attn_tensor *wgrad[WG_N]; /* borrowed; NULL: not computed */
  /* 16-bit storage (sdt bf16/f16; dims.dtype is then f32): the f32 copies'
   * offsets in the shared area, in the order of enum cv_tensor. */
  attn_dtype sdt;
  size_t cv_at[CV_N];
  /* Linformer (dims.S_k is then k): K', V', dK', dV', inner key lengths. */
  bool lowrank;
  bool linear; /* elu+1 or Performer: approx/linear.c's passes, no lse */
  size_t lr_at[4], lr_len_at;
  void *workspace;
  size_t workspace_bytes;
  double *dsinks; /* [H] ∂L/∂sinks (attn_backward_plan_set_sink_grad), or NULL */
};

typedef struct bwd_args {
  const attn_backward_plan *bp;
  const attn_mask *mask; /* bound for this execute */
  attn_ws ws;
  const attn_tensor *q, *k, *v, *out, *lse, *dout;
  attn_tensor *dq, *dk, *dv, *dmask;
} bwd_args;

#define ATTN_TMPL_FILE "kernels/backward_impl.inc"
#include "core/tmpl.h"

/* ---- pass 1 and 2 on the tile engine (f32) -------------------------------- */

/* dst[c·ldd + r] = src[r·lds + c] for r < rows, c < cols, in 16 × 16 blocks. */
static void transpose_f32(const float *src, int64_t lds, int64_t rows, int64_t cols, float *dst,
                          int64_t ldd) {
  for (int64_t r0 = 0; r0 < rows; r0 += 16)
    for (int64_t c0 = 0; c0 < cols; c0 += 16) {
      const int64_t r1 = attn_min64(rows, r0 + 16), c1 = attn_min64(cols, c0 + 16);
      for (int64_t c = c0; c < c1; c++)
        for (int64_t r = r0; r < r1; r++) dst[c * ldd + r] = src[r * lds + c];
    }
}

/* Pass 1 with the engine: D, and Qᵀ (X for projected scores), dOᵀ of (b, h),
 * per query block: block qb of Qᵀ is [qc × bq] (row stride bq, so the
 * micro-kernel's rows stay a few hundred bytes apart, not S_q·4). */
static void bwd_rowdot_task_eng(void *argp, int64_t t, int32_t thread) {
  bwd_rowdot_task_f32(argp, t, thread);
  const bwd_args *a = argp;
  const attn_backward_plan *bp = a->bp;
  const attn_dims *d = &bp->dims;
  const int64_t b = t / d->H, h = t % d->H;
  const float *Q = (const float *)a->q->data + attn_off4(a->q, b, h, 0, 0);
  int64_t ldq = a->q->strides[2];
  if (bp->projected) {
    Q = (const float *)(const void *)(a->ws.shared + bp->X_at) + t * d->Sq * bp->qc;
    ldq = bp->qc;
  }
  const int64_t bq = bp->bq, span = bp->nqb * bq;
  float *QT = (float *)(void *)(a->ws.shared + bp->QT_at) + t * bp->qc * span;
  float *dOT = (float *)(void *)(a->ws.shared + bp->dOT_at) + t * d->Dv * span;
  const float *dO = (const float *)a->dout->data + attn_off4(a->dout, b, h, 0, 0);
  const int64_t ldo = a->dout->strides[2];
  for (int64_t qb = 0; qb < bp->nqb; qb++) {
    const int64_t i0 = qb * bq, ni = attn_min64(bq, d->Sq - i0);
    transpose_f32(Q + i0 * ldq, ldq, ni, bp->qc, QT + qb * bp->qc * bq, bq);
    transpose_f32(dO + i0 * ldo, ldo, ni, d->Dv, dOT + qb * d->Dv * bq, bq);
  }
}

/* Pass 2 with the engine: as bwd_kv_task (backward_impl.inc) for f32 plans
 * without dense masks or the additive score. Per key block, K and V are
 * packed once (K as S's and dQ's B operand, V as dP's); per tile
 *   S  = α Q Kᵀ,  P = e^{S − lse} (masks, transforms)
 *   dP = dO Vᵀ,   dS = α P ∘ (dP − D)
 *   dVᵀ += dOᵀ P,  dKᵀ += Qᵀ dS,  dQ += dS K
 * Key tiles start on a 32-key panel of the block: the columns a causal or
 * banded tile adds on the left are masked like any other. */
static void bwd_kv_task_eng(void *argp, int64_t t, int32_t thread) {
  const bwd_args *a = argp;
  const attn_backward_plan *bp = a->bp;
  const attn_tile_engine *e = bp->eng;
  const attn_dims *d = &bp->dims;
  const attn_mask *mask = a->mask;
  const int64_t C = bp->chunks, c = t % C, bkv = t / C;
  const int64_t b = bkv / d->Hkv, kh = bkv % d->Hkv, grp = d->H / d->Hkv;
  const int64_t bq = bp->bq, bk = bp->bk, qc = bp->qc, kc = bp->kc, Dv = d->Dv;
  const float alpha = (float)bp->scale, cap = (float)mask->softcap;
  const int64_t ql = mask->query_len ? mask->query_len[b] : d->Sq;
  const int64_t kvs = attn_tile_vps(e, bk);
  const int64_t lds = bp->lds; /* S, dP, G: rows padded to whole panels */

  char *slot = attn_ws_slot(&a->ws, thread);
  float *S = (float *)(void *)(slot + bp->at.S);
  float *dP = (float *)(void *)(slot + bp->at.dP);
  float *G = (float *)(void *)(slot + bp->at.G);
  float *dKT = (float *)(void *)(slot + bp->at.dK); /* [kc × bk] */
  float *dVT = (float *)(void *)(slot + bp->at.dV); /* [Dv × bk] */
  float *Kp = (float *)(void *)(slot + bp->at.Kp);
  float *Vk = (float *)(void *)(slot + bp->at.Vk);
  float *Kv = (float *)(void *)(slot + bp->at.Kv);
  float *X = (float *)(void *)(a->ws.shared + bp->X_at);
  float *dX = (float *)(void *)(a->ws.shared + bp->dX_at);
  const float *K = (const float *)a->k->data + attn_off4(a->k, b, kh, 0, 0);
  const int64_t ldk = a->k->strides[2];
  const float *V = (const float *)a->v->data + attn_off4(a->v, b, kh, 0, 0);
  const int64_t ldv = a->v->strides[2];
  const float *Dall = (const float *)(const void *)(a->ws.shared + bp->D_at);
  float *part = (float *)(void *)(a->ws.shared + bp->part_at);
  const float *QTall = (const float *)(const void *)(a->ws.shared + bp->QT_at);
  const float *dOTall = (const float *)(const void *)(a->ws.shared + bp->dOT_at);

  /* This chunk's dq target per head: dq itself (chunk 0) or a partial buffer. */
  for (int64_t g = 0; g < grp; g++) {
    const int64_t h = kh * grp + g;
    if (c == 0 && !bp->projected) {
      float *dq = (float *)a->dq->data + attn_off4(a->dq, b, h, 0, 0);
      for (int64_t i = 0; i < d->Sq; i++)
        memset(dq + i * a->dq->strides[2], 0, (size_t)qc * sizeof(float));
    } else {
      float *pq = c == 0 ? dX + (b * d->H + h) * d->Sq * qc
                         : part + (((c - 1) * d->B + b) * d->H + h) * d->Sq * qc;
      memset(pq, 0, (size_t)(d->Sq * qc) * sizeof(float));
    }
  }

  for (int64_t kb = c; kb < bp->nkb; kb += C) {
    const int64_t j0 = kb * bk, nj = attn_min64(bk, d->Sk - j0);
    memset(dKT, 0, (size_t)(kc * bk) * sizeof(float));
    memset(dVT, 0, (size_t)(Dv * bk) * sizeof(float));
    e->pack_k(K + j0 * ldk, ldk, nj, kc, Kp);
    e->pack_k(V + j0 * ldv, ldv, nj, Dv, Vk);
    e->pack_v(K + j0 * ldk, ldk, nj, kc, Kv, kvs);
    for (int64_t g = 0; g < grp; g++) {
      const int64_t h = kh * grp + g, bh = b * d->H + h;
      const float *Q = (const float *)a->q->data + attn_off4(a->q, b, h, 0, 0);
      int64_t ldq = a->q->strides[2];
      if (bp->projected) {
        Q = X + bh * d->Sq * qc;
        ldq = qc;
      }
      const float *dO = (const float *)a->dout->data + attn_off4(a->dout, b, h, 0, 0);
      const int64_t ldo = a->dout->strides[2];
      const attn_tensor *lt = a->lse;
      const float *lse = (const float *)lt->data + b * lt->strides[0] + h * lt->strides[1];
      const float *Dh = Dall + bh * d->Sq;
      const int64_t span = bp->nqb * bq;
      const float *QT = QTall + bh * qc * span, *dOT = dOTall + bh * Dv * span;
      float *dQ;
      int64_t lddq;
      if (c == 0 && !bp->projected) {
        dQ = (float *)a->dq->data + attn_off4(a->dq, b, h, 0, 0);
        lddq = a->dq->strides[2];
      } else {
        dQ = c == 0 ? dX + bh * d->Sq * qc : part + (((c - 1) * d->B + b) * d->H + h) * d->Sq * qc;
        lddq = qc;
      }
      for (int64_t qb = 0; qb < bp->nqb; qb++) {
        const int64_t i0 = qb * bq;
        if (i0 >= ql) break;
        const int64_t ni = attn_min64(bq, ql - i0);
        int64_t lo, hi;
        attn_mask_key_range(mask, b, i0, i0 + ni, &lo, &hi);
        int64_t jt = attn_max64(j0, lo);
        const int64_t je = attn_min64(j0 + nj, hi);
        if (je <= jt) continue;
        jt = j0 + (jt - j0) / e->nr * e->nr; /* the panel the tile starts in */
        const int64_t nt = je - jt, off = jt - j0;
        const attn_tile_class cls = attn_mask_classify(mask, b, h, i0, i0 + ni, jt, je);
        if (cls == ATTN_TILE_SKIP) continue;

        e->mm(ni, nt, kc, Q + i0 * ldq, ldq, Kp + off * kc, kc * e->nr, e->nr, S, lds, alpha,
              false);
        if (cap > 0)
          for (int64_t r = 0; r < ni; r++) memcpy(G + r * lds, S + r * lds, (size_t)nt * sizeof(float));
        if (cls == ATTN_TILE_PARTIAL || mask->has_transform)
          attn_mask_apply_f32(mask, cls, b, h, i0, ni, jt, nt, S, lds);
        for (int64_t r = 0; r < ni; r++) osm_probs_f32(S + r * lds, nt, lse[(i0 + r) * lt->strides[2]]);
        e->mm(ni, nt, Dv, dO + i0 * ldo, ldo, Vk + off * Dv, Dv * e->nr, e->nr, dP, lds, 1.0f,
              false);
        if (cap > 0) { /* dS, the chain rule through cap·tanh(raw/cap), α */
          for (int64_t r = 0; r < ni; r++) {
            float *gr = G + r * lds, *dr = dP + r * lds;
            osm_dscores_f32(S + r * lds, dr, nt, Dh[i0 + r]);
            for (int64_t x = 0; x < nt; x++) gr[x] /= cap;
            attn_vmath_fast()->tanh_f32(gr, nt);
            for (int64_t x = 0; x < nt; x++)
              dr[x] = osm_select_f32(dr[x] != 0.0f, dr[x] * (1.0f - gr[x] * gr[x])) * alpha;
          }
        } else {
          e->dscores(S, dP, ni, nt, lds, Dh + i0, alpha);
        }
        /* P and dS are B operands as they lie (row-major, ld lds). */
        e->mm(Dv, nt, ni, dOT + qb * Dv * bq, bq, S, e->nr, lds, dVT + off, bk, 1.0f, true);
        e->mm(kc, nt, ni, QT + qb * kc * bq, bq, dP, e->nr, lds, dKT + off, bk, 1.0f, true);
        e->mm(ni, qc, nt, dP, lds, Kv + off * e->nr, kvs, e->nr, dQ + i0 * lddq, lddq, 1.0f, true);
      }
    }
    float *dk = (float *)a->dk->data + attn_off4(a->dk, b, kh, j0, 0);
    float *dv = (float *)a->dv->data + attn_off4(a->dv, b, kh, j0, 0);
    transpose_f32(dKT, bk, kc, nj, dk, a->dk->strides[2]);
    transpose_f32(dVT, bk, Dv, nj, dv, a->dv->strides[2]);
  }
}

/* ---- plan ------------------------------------------------------------------ */

static attn_status check_grad(attn_context *ctx, const char *name, const attn_tensor *t,
                              const attn_tmeta *like, const char *like_name) {
  if (t == NULL) return attn_fail(ctx, ATTN_ERR_NULL_ARG, "%s: must not be NULL", name);
  if (t->dtype != like->dtype)
    return attn_fail(ctx, ATTN_ERR_DTYPE, "%s: dtype %s differs from the forward's %s", name,
                     attn_dtype_name(t->dtype), attn_dtype_name(like->dtype));
  attn_status st = attn_check_tensor(ctx, name, t, like->rank, like->dtype);
  if (st != ATTN_OK) return st;
  char what[64];
  snprintf(what, sizeof what, "%s's shape", like_name);
  if ((st = attn_check_dims(ctx, name, t, like->shape, what)) != ATTN_OK) return st;
  if ((st = attn_check_matrix_rows(ctx, name, t)) != ATTN_OK) return st;
  return ATTN_OK;
}

/* Outputs are written by several tasks: every element needs its own memory
 * (the same test as the forward's outputs, on the sorted strides). */
static attn_status check_distinct(attn_context *ctx, const char *name, const attn_tensor *t) {
  int32_t idx[ATTN_MAX_RANK], n = 0;
  for (int32_t i = 0; i < t->rank; i++)
    if (t->shape[i] > 1) idx[n++] = i;
  for (int32_t a = 1; a < n; a++)
    for (int32_t b = a; b > 0 && t->strides[idx[b - 1]] > t->strides[idx[b]]; b--) {
      int32_t x = idx[b];
      idx[b] = idx[b - 1];
      idx[b - 1] = x;
    }
  int64_t span = 1;
  for (int32_t a = 0; a < n; a++) {
    const int64_t s = t->strides[idx[a]];
    if (s < span)
      return attn_fail(ctx, ATTN_ERR_LAYOUT,
                       "%s: stride %" PRId64 " of dim %d makes elements overlap; a gradient "
                       "output needs distinct memory for every element",
                       name, s, (int)idx[a]);
    span += (t->shape[idx[a]] - 1) * s;
  }
  return ATTN_OK;
}

static const attn_support bwd_support = {
    "the backward",
    ATTN_OPT_ALL & ~(ATTN_OPT(ATTN_OPT_VARLEN) | ATTN_OPT(ATTN_OPT_MASS)),
    {[ATTN_OPT_VARLEN] = "the forward plan is a packed variable-length batch, which has no "
                         "backward yet",
     [ATTN_OPT_MASS] = "the forward plan has a key-mass output, which has no backward"},
    "the backward supports f32, f64, bf16 and f16 plans"};

static bool variant_has_backward(attn_variant v) {
  return v == ATTN_VARIANT_EXACT || v == ATTN_VARIANT_LONGFORMER || v == ATTN_VARIANT_BIGBIRD ||
         v == ATTN_VARIANT_BLOCK_SPARSE || v == ATTN_VARIANT_LINFORMER ||
         v == ATTN_VARIANT_LINEAR_ELU || v == ATTN_VARIANT_PERFORMER;
}

static bool variant_is_linear(attn_variant v) {
  return v == ATTN_VARIANT_LINEAR_ELU || v == ATTN_VARIANT_PERFORMER;
}

/* The tensors an execute must match: the forward's q, k, v, out, lse
 * (absent for linear attention) and the gradients'. */
static void record_meta(attn_backward_plan *bp, const attn_plan *f, const attn_tensor *dout,
                        const attn_tensor *dq, const attn_tensor *dk, const attn_tensor *dv,
                        const attn_tensor *dmask) {
  memcpy(bp->meta, f->meta, 4 * sizeof(attn_tmeta)); /* q, k, v, out */
  bp->meta[BM_LSE] = f->meta[5];
  attn_tmeta_record(&bp->meta[BM_DOUT], dout);
  attn_tmeta_record(&bp->meta[BM_DQ], dq);
  attn_tmeta_record(&bp->meta[BM_DK], dk);
  attn_tmeta_record(&bp->meta[BM_DV], dv);
  attn_tmeta_record(&bp->meta[BM_DMASK], dmask);
}

static attn_status setup(attn_backward_plan *bp, const attn_plan *f, const attn_tensor *dout,
                         const attn_tensor *dq, const attn_tensor *dk, const attn_tensor *dv,
                         const attn_tensor *dmask, int64_t tq, int64_t tk) {
  attn_context *ctx = f->ctx;
  attn_status st;
  if (!variant_has_backward(f->desc.variant))
    return attn_fail(ctx, ATTN_ERR_UNSUPPORTED,
                     "forward: variant '%s' has no backward yet (exact, longformer, bigbird, "
                     "block_sparse, linformer, linear_elu and performer do)",
                     f->ops->support.name);
  /* 16-bit storage runs the f32 passes on f32 copies (see conv below; such
   * plans have the dot scores only, so no weights need converting). */
  const attn_exact *ex = f->impl;
  /* Options the forward plan uses that the backward does not differentiate
   * (yet): rejected in one place, naming the option. */
  if ((st = attn_options_check(ctx, &bwd_support,
                               attn_options_used(&f->desc, f->meta[4].present,
                                                 f->meta[5].present))) != ATTN_OK)
    return st;
  /* Softmax variants recompute P from the saved lse; linear attention has
   * none (its forward takes no lse) and recomputes its state. */
  const bool linear = variant_is_linear(f->desc.variant);
  if (!linear && !f->meta[5].present)
    return attn_fail(ctx, ATTN_ERR_INVALID_ARG,
                     "lse: the forward plan was created without lse; the backward needs it");
  const attn_tmeta *fq = &f->meta[0], *fk = &f->meta[1], *fv = &f->meta[2], *fo = &f->meta[3];
  if ((st = check_grad(ctx, "dout", dout, fo, "out")) != ATTN_OK) return st;
  if ((st = check_grad(ctx, "dq", dq, fq, "q")) != ATTN_OK) return st;
  if ((st = check_grad(ctx, "dk", dk, fk, "k")) != ATTN_OK) return st;
  if ((st = check_grad(ctx, "dv", dv, fv, "v")) != ATTN_OK) return st;
  if ((st = check_distinct(ctx, "dq", dq)) != ATTN_OK) return st;
  if ((st = check_distinct(ctx, "dk", dk)) != ATTN_OK) return st;
  if ((st = check_distinct(ctx, "dv", dv)) != ATTN_OK) return st;
  const attn_dims *d = &f->dims;
  if (dmask != NULL) {
    if (f->desc.mask.add_mask == NULL)
      return attn_fail(ctx, ATTN_ERR_INVALID_ARG,
                       "dmask: the forward descriptor has no additive mask to differentiate");
    /* The additive mask's dtype: the compute type (f32 for 16-bit plans). */
    if ((st = attn_check_tensor(ctx, "dmask", dmask, 4, attn_dtype_compute(d->dtype))) != ATTN_OK)
      return st;
    const int64_t want[4] = {d->B, d->H, d->Sq, d->Sk};
    if ((st = attn_check_dims(ctx, "dmask", dmask, want, "[B, H, S_q, S_k]")) != ATTN_OK)
      return st;
    if ((st = attn_check_matrix_rows(ctx, "dmask", dmask)) != ATTN_OK) return st;
    if ((st = check_distinct(ctx, "dmask", dmask)) != ATTN_OK) return st;
  }

  if (linear) { /* its own passes (approx/linear.c), one slot per thread */
    size_t slot;
    int64_t total;
    if ((st = attn_linear_bwd_slot(f, &slot)) != ATTN_OK) return st;
    if (!attn_mul_ok((int64_t)slot, ctx->num_threads, &total))
      return attn_fail(ctx, ATTN_ERR_OVERFLOW, "dq: the backward's workspace size overflows");
    bp->linear = true;
    bp->dims = *d;
    bp->sdt = d->dtype;
    bp->score = f->desc.score.kind;
    bp->slot_bytes = slot;
    bp->workspace_bytes = (size_t)total;
    record_meta(bp, f, dout, dq, dk, dv, dmask);
    return ATTN_OK;
  }
  /* The forward's resolved mask: exact, sparse and Linformer plans start
   * with attn_exact. Linformer's kernel runs on (K', V'): its dims have
   * S_k = k, and the passes run on K', V' and give dK', dV'. */
  bp->ex = ex;
  bp->mask = ex->mask;
  bp->lowrank = f->desc.variant == ATTN_VARIANT_LINFORMER;
  bp->dims = bp->lowrank ? ex->dims : *d;
  d = &bp->dims; /* from here on, the passes' dims */
  bp->sdt = f->dims.dtype;
  bp->dims.dtype = attn_dtype_compute(f->dims.dtype); /* the passes' type */
  bp->scale = f->scale;
  bp->score = ex->score;
  bp->A = ex->A;
  bp->projected = ex->score == ATTN_SCORE_GENERAL || ex->score == ATTN_SCORE_ADDITIVE;
  bp->qc = ex->score == ATTN_SCORE_GENERAL ? d->Dk : ex->score == ATTN_SCORE_ADDITIVE ? ex->A : d->Dq;
  bp->kc = ex->score == ATTN_SCORE_ADDITIVE ? ex->A : d->Dk;
  if (ex->mask.sparse != ATTN_SPARSE_NONE) {
    bp->bq = ex->bq; /* layout-aligned tiles skip whole blocks */
    bp->bk = ex->bk;
  } else {
    /* Two score-sized tiles (P and dP) live at once, so half the forward's
     * query block keeps a thread's tiles in L2 like the forward's one. */
    attn_exact_tiles(d->Sq, d->Sk, d->Dk, d->Dv, &bp->bq, &bp->bk);
    bp->bq = attn_max64(1, attn_min64(bp->bq, attn_max64(64, bp->bq / 2)));
  }
  if (tq > 0) bp->bq = attn_min64(tq, d->Sq);
  if (tk > 0) bp->bk = attn_min64(tk, d->Sk);
  bp->nqb = attn_cdiv64(d->Sq, bp->bq);
  bp->nkb = attn_cdiv64(d->Sk, bp->bk);

  const size_t es = attn_dtype_size(bp->dims.dtype);
  int64_t bh, rowbytes;
  if (!attn_mul_ok(d->B, d->H, &bh) || !attn_mul_ok(bh, d->Sq, &rowbytes) ||
      !attn_mul_ok(rowbytes, bp->qc * (int64_t)es, &rowbytes))
    return attn_fail(ctx, ATTN_ERR_OVERFLOW, "dq: size overflows");
  int64_t C = attn_min64(bp->nkb, attn_cdiv64(ATTN_BWD_TASKS, d->B * d->Hkv));
  while (C > 1 && (C - 1) > ATTN_BWD_PART_CAP / attn_max64(1, rowbytes)) C--;
  bp->chunks = attn_max64(1, C);

  const bool additive = bp->score == ATTN_SCORE_ADDITIVE;
  bp->eng = NULL;
  /* The engine recomputes S with its own rounding, not the forward's: P's
   * rows then sum to 1 within e^{2δ} of the score error δ, as any backward
   * that does not replay the forward's GEMM (see tests/fuzz/README.md). */
  if (bp->dims.dtype == ATTN_DTYPE_F32 && !additive && !bp->mask.has_dense) {
    const attn_tile_engine *e = attn_tile_engine_for(ATTN_DTYPE_F32, d->Dk, d->Dv);
    if (e != NULL && e->mm != NULL && e->dscores != NULL) bp->eng = e;
  }
  const attn_tile_engine *e = bp->eng;
  attn_carver c = attn_carver_start();
  /* The engine reads P and dS rows as B panels of nr: pad rows to panels. */
  bp->lds = e ? attn_cdiv64(bp->bk, e->nr) * e->nr : bp->bk;
  bp->at.S = attn_carve(&c, es, bp->bq, bp->lds, 1);
  bp->at.dP = attn_carve(&c, es, bp->bq, bp->lds, 1);
  bp->at.G = attn_carve(&c, es, bp->mask.softcap > 0 ? bp->bq : 0, bp->lds, 1);
  bp->at.dK = attn_carve(&c, es, bp->bk, bp->kc, 1);
  bp->at.dV = attn_carve(&c, es, bp->bk, d->Dv, 1);
  bp->at.Kp = attn_carve(&c, es, e ? attn_tile_k_elems(e, bp->bk, bp->kc) : 0, 1, 1);
  bp->at.Vk = attn_carve(&c, es, e ? attn_tile_k_elems(e, bp->bk, d->Dv) : 0, 1, 1);
  bp->at.Kv = attn_carve(&c, es, e ? attn_tile_v_elems(e, bp->bk, bp->kc) : 0, 1, 1);
  const bool zero_dead = bp->mask.has_dense && !additive; /* additive skips dS = 0 itself */
  bp->at.Qz = attn_carve(&c, es, zero_dead ? bp->bq : 0, bp->qc, 1);
  bp->at.Kz = attn_carve(&c, es, zero_dead ? bp->bk : 0, bp->kc, 1);
  /* Additive: one row's tanh over a chunk of keys, kc·A ≤ 16384 elements
   * (in L2, as the forward's). */
  bp->add_kc = additive ? attn_max64(1, attn_min64(bp->bk, 16384 / bp->A)) : 0;
  bp->at.X = attn_carve(&c, es, bp->add_kc, bp->A, 1);
  attn_carver sh = attn_carver_start();
  bp->D_at = attn_carve(&sh, es, bh, d->Sq, 1);
  bp->QT_at = attn_carve(&sh, es, e ? bh : 0, bp->qc, bp->nqb * bp->bq);
  bp->dOT_at = attn_carve(&sh, es, e ? bh : 0, d->Dv, bp->nqb * bp->bq);
  bp->part_at = attn_carve(&sh, (size_t)rowbytes, bp->chunks - 1, 1, 1);
  const int64_t nx = bp->projected ? d->Sq : 0, ny = additive ? d->Sk : 0;
  bp->X_at = attn_carve(&sh, es, bh, nx, bp->qc);
  bp->dX_at = attn_carve(&sh, es, bh, nx, bp->qc);
  bp->Y_at = attn_carve(&sh, es, d->B * d->Hkv, ny, bp->A);
  bp->dY_at = attn_carve(&sh, es, d->B * d->Hkv, ny, bp->A);
  bp->vb_at = attn_carve(&sh, es, additive ? 2 : 0, bp->A, 1);
  bp->dva_at = attn_carve(&sh, es, additive ? d->B * d->Hkv : 0, bp->chunks, bp->A);
  /* 16-bit storage: contiguous f32 copies of q, k, v, out, dout (converted
   * before pass 1) and f32 dq, dk, dv (rounded into the outputs after the
   * last pass). Exact inputs, f32 accumulation, one rounding per gradient. */
  const bool conv = attn_dtype_is_16bit(bp->sdt);
  const int64_t nq = conv ? bh : 0, nkv = conv ? d->B * d->Hkv : 0;
  bp->cv_at[CV_Q] = attn_carve(&sh, es, nq, d->Sq, d->Dq);
  bp->cv_at[CV_K] = attn_carve(&sh, es, nkv, d->Sk, d->Dk);
  bp->cv_at[CV_V] = attn_carve(&sh, es, nkv, d->Sk, d->Dv);
  bp->cv_at[CV_OUT] = attn_carve(&sh, es, nq, d->Sq, d->Dv);
  bp->cv_at[CV_DOUT] = attn_carve(&sh, es, nq, d->Sq, d->Dv);
  bp->cv_at[CV_DQ] = attn_carve(&sh, es, nq, d->Sq, d->Dq);
  bp->cv_at[CV_DK] = attn_carve(&sh, es, nkv, d->Sk, d->Dk);
  bp->cv_at[CV_DV] = attn_carve(&sh, es, nkv, d->Sk, d->Dv);
  /* Linformer: K', V', dK', dV' [B, H_kv, k, d] and the inner key lengths. */
  const int64_t nlr = bp->lowrank ? d->B * d->Hkv : 0;
  bp->lr_at[0] = attn_carve(&sh, es, nlr, d->Sk, d->Dk);
  bp->lr_at[1] = attn_carve(&sh, es, nlr, d->Sk, d->Dv);
  bp->lr_at[2] = attn_carve(&sh, es, nlr, d->Sk, d->Dk);
  bp->lr_at[3] = attn_carve(&sh, es, nlr, d->Sk, d->Dv);
  bp->lr_len_at = attn_carve(&sh, sizeof(int64_t), bp->lowrank ? d->B : 0, 1, 1);
  int64_t total;
  if (!c.ok || !sh.ok || !attn_mul_ok(c.bytes, ctx->num_threads, &total) ||
      !attn_add_ok(total, sh.bytes, &total))
    return attn_fail(ctx, ATTN_ERR_OVERFLOW, "dq: the backward's workspace size overflows");
  bp->slot_bytes = (size_t)c.bytes;
  bp->shared_bytes = (size_t)sh.bytes;
  bp->workspace_bytes = (size_t)total;

  record_meta(bp, f, dout, dq, dk, dv, dmask);
  return ATTN_OK;
}

attn_status attn_backward_plan_create(const attn_plan *forward, const attn_tensor *dout,
                                      const attn_tensor *dq, const attn_tensor *dk,
                                      const attn_tensor *dv, const attn_tensor *dmask,
                                      attn_backward_plan **plan) {
  return attn_backward_plan_create_tiled(forward, dout, dq, dk, dv, dmask, 0, 0, plan);
}

attn_status attn_backward_plan_create_tiled(const attn_plan *forward, const attn_tensor *dout,
                                            const attn_tensor *dq, const attn_tensor *dk,
                                            const attn_tensor *dv, const attn_tensor *dmask,
                                            int64_t bq, int64_t bk, attn_backward_plan **plan) {
  if (forward == NULL) return ATTN_ERR_NULL_ARG;
  attn_context *ctx = forward->ctx;
  attn_clear_error(ctx);
  ATTN_CHECK_NULL(ctx, plan);
  attn_backward_plan tmp;
  memset(&tmp, 0, sizeof tmp);
  tmp.ctx = ctx;
  tmp.fwd = forward;
  attn_status st = setup(&tmp, forward, dout, dq, dk, dv, dmask, bq, bk);
  if (st != ATTN_OK) return st;
  if ((st = attn_threadpool_ensure(ctx)) != ATTN_OK) return st;
  attn_backward_plan *p = attn_alloc(ctx, sizeof *p);
  if (p == NULL)
    return attn_fail(ctx, ATTN_ERR_NO_MEMORY, "attn_backward_plan_create: out of memory");
  *p = tmp;
  if (p->workspace_bytes > 0 && (p->workspace = attn_alloc(ctx, p->workspace_bytes)) == NULL) {
    attn_free(ctx, p, sizeof *p);
    return attn_fail(ctx, ATTN_ERR_NO_MEMORY,
                     "attn_backward_plan_create: cannot allocate %zu bytes of workspace",
                     tmp.workspace_bytes);
  }
  *plan = p;
  return ATTN_OK;
}

/* ---- 16-bit storage ------------------------------------------------------- */

typedef struct conv_args {
  const attn_backward_plan *bp;
  const attn_tensor *user[CV_N]; /* the caller's tensors, cv_tensor order */
  const attn_tensor *views;      /* [CV_N] f32 views of the workspace copies */
} conv_args;

/* Rows of tensors ids[0..n) for head (b, h) between the caller's 16-bit
 * tensor and the f32 copy: widened exactly (in) or rounded to nearest even
 * (out). */
static void conv_rows(const conv_args *c, const int *ids, int n, int64_t b, int64_t h, bool in) {
  const attn_dtype_traits *tr = attn_dtype_info(c->bp->sdt);
  for (int x = 0; x < n; x++) {
    const attn_tensor *u = c->user[ids[x]], *v = &c->views[ids[x]];
    const int64_t rows = u->shape[2], cols = u->shape[3];
    for (int64_t i = 0; i < rows; i++) {
      char *ur = (char *)u->data + (size_t)attn_off4(u, b, h, i, 0) * tr->size;
      float *vr = (float *)v->data + attn_off4(v, b, h, i, 0);
      if (in)
        tr->to_f32(ur, vr, cols);
      else
        tr->from_f32(vr, ur, cols);
    }
  }
}

/* Tasks [0, B·H): query-side tensors of (b, h); then [B·H, B·(H + H_kv)):
 * key-side tensors of (b, kv head). */
static void conv_task(const conv_args *c, int64_t t, bool in) {
  const attn_dims *d = &c->bp->dims;
  static const int qin[3] = {CV_Q, CV_OUT, CV_DOUT}, kin[2] = {CV_K, CV_V};
  static const int qout[1] = {CV_DQ}, kout[2] = {CV_DK, CV_DV};
  if (t < d->B * d->H)
    conv_rows(c, in ? qin : qout, in ? 3 : 1, t / d->H, t % d->H, in);
  else
    conv_rows(c, in ? kin : kout, 2, (t - d->B * d->H) / d->Hkv, (t - d->B * d->H) % d->Hkv, in);
}
static void conv_in_task(void *arg, int64_t t, int32_t thread) {
  (void)thread;
  conv_task(arg, t, true);
}
static void conv_out_task(void *arg, int64_t t, int32_t thread) {
  (void)thread;
  conv_task(arg, t, false);
}

/* ∂L/∂sink_h = −Σ_{b,i} e^{sink_h − lse_bhi} · D_bhi: the sink's share of
 * each row's softmax times the row's D = dout·out (in the workspace after
 * pass 1). Rows with lse = −inf or D = 0 add nothing. f64, fixed order. */
static void sink_grad(const attn_backward_plan *bp, const attn_tensor *lse, const double *sinks) {
  const attn_dims *d = &bp->dims;
  const bool f32 = d->dtype == ATTN_DTYPE_F32;
  const char *D = (const char *)bp->workspace + bp->D_at;
  for (int64_t h = 0; h < d->H; h++) {
    double acc = 0;
    for (int64_t b = 0; sinks[h] > -INFINITY && b < d->B; b++)
      for (int64_t i = 0; i < d->Sq; i++) {
        const int64_t r = (b * d->H + h) * d->Sq + i;
        const int64_t lo = b * lse->strides[0] + h * lse->strides[1] + i * lse->strides[2];
        const double l = f32 ? ((const float *)lse->data)[lo] : ((const double *)lse->data)[lo];
        const double Dr = f32 ? ((const float *)(const void *)D)[r] : ((const double *)(const void *)D)[r];
        if (!(l > -INFINITY) || Dr == 0) continue;
        acc -= exp(sinks[h] - l) * Dr;
      }
    bp->dsinks[h] = acc;
  }
}

attn_status attn_backward_plan_set_sink_grad(attn_backward_plan *plan, double *dsinks,
                                             int64_t count) {
  if (plan == NULL) return ATTN_ERR_NULL_ARG;
  attn_context *ctx = plan->ctx;
  attn_clear_error(ctx);
  if (dsinks == NULL) {
    if (count != 0)
      return attn_fail(ctx, ATTN_ERR_NULL_ARG, "dsinks: NULL with count %" PRId64, count);
    plan->dsinks = NULL;
    return ATTN_OK;
  }
  if (plan->fwd->desc.sinks.logits == NULL)
    return attn_fail(ctx, ATTN_ERR_INVALID_ARG,
                     "dsinks: the forward plan has no attention sinks to differentiate");
  if (count != plan->dims.H)
    return attn_fail(ctx, ATTN_ERR_SHAPE,
                     "dsinks: count %" PRId64 ", expected H = %" PRId64 " (one per query head)",
                     count, plan->dims.H);
  plan->dsinks = dsinks;
  return ATTN_OK;
}

/* A weight gradient's checks: dtype, rank, shape, rows BLAS can write (rank
 * ≥ 2) and distinct memory for every element. */
static attn_status check_wgrad(attn_context *ctx, const char *name, const attn_tensor *t,
                               attn_dtype dtype, int32_t rank, const int64_t *want,
                               const char *what) {
  attn_status st = attn_check_tensor(ctx, name, t, rank, dtype);
  if (st != ATTN_OK) return st;
  if ((st = attn_check_dims(ctx, name, t, want, what)) != ATTN_OK) return st;
  if (rank >= 2 && (st = attn_check_matrix_rows(ctx, name, t)) != ATTN_OK) return st;
  return check_distinct(ctx, name, t);
}

/* Store the weight gradients (all checked first: nothing changes on error). */
static attn_status set_wgrads(attn_backward_plan *plan, attn_tensor *const *g) {
  memcpy(plan->wgrad, g, sizeof plan->wgrad);
  return ATTN_OK;
}

attn_status attn_backward_plan_set_general_grad(attn_backward_plan *plan, attn_tensor *dw) {
  if (plan == NULL) return ATTN_ERR_NULL_ARG;
  attn_context *ctx = plan->ctx;
  attn_clear_error(ctx);
  if (plan->score != ATTN_SCORE_GENERAL)
    return attn_fail(ctx, ATTN_ERR_INVALID_ARG,
                     "dw: the forward plan's score is not ATTN_SCORE_GENERAL");
  attn_tensor *g[WG_N] = {dw, NULL, NULL, NULL};
  if (dw != NULL) {
    const int64_t want[2] = {plan->dims.Dq, plan->dims.Dk};
    attn_status st = check_wgrad(ctx, "dw", dw, plan->dims.dtype, 2, want, "general_w's [d_q, d_k]");
    if (st != ATTN_OK) return st;
  }
  return set_wgrads(plan, g);
}

attn_status attn_backward_plan_set_additive_grads(attn_backward_plan *plan, attn_tensor *dw_q,
                                                  attn_tensor *dw_k, attn_tensor *dbias,
                                                  attn_tensor *dv) {
  if (plan == NULL) return ATTN_ERR_NULL_ARG;
  attn_context *ctx = plan->ctx;
  attn_clear_error(ctx);
  if (plan->score != ATTN_SCORE_ADDITIVE)
    return attn_fail(ctx, ATTN_ERR_INVALID_ARG,
                     "dw_q: the forward plan's score is not ATTN_SCORE_ADDITIVE");
  attn_tensor *g[WG_N] = {dw_q, dw_k, dbias, dv};
  if (dw_q == NULL && dw_k == NULL && dbias == NULL && dv == NULL) return set_wgrads(plan, g);
  ATTN_CHECK_NULL(ctx, dw_q);
  ATTN_CHECK_NULL(ctx, dw_k);
  ATTN_CHECK_NULL(ctx, dv);
  const attn_exact *ex = plan->ex;
  if (dbias != NULL && ex->abias == NULL)
    return attn_fail(ctx, ATTN_ERR_INVALID_ARG,
                     "dbias: the forward descriptor's additive score has no bias");
  const attn_dims *d = &plan->dims;
  const int64_t wq[2] = {plan->A, d->Dq}, wk[2] = {plan->A, d->Dk}, a1[1] = {plan->A};
  attn_status st;
  if ((st = check_wgrad(ctx, "dw_q", dw_q, d->dtype, 2, wq, "w_q's [A, d_q]")) != ATTN_OK ||
      (st = check_wgrad(ctx, "dw_k", dw_k, d->dtype, 2, wk, "w_k's [A, d_k]")) != ATTN_OK ||
      (dbias != NULL &&
       (st = check_wgrad(ctx, "dbias", dbias, d->dtype, 1, a1, "bias's [A]")) != ATTN_OK) ||
      (st = check_wgrad(ctx, "dv", dv, d->dtype, 1, a1, "v's [A]")) != ATTN_OK)
    return st;
  return set_wgrads(plan, g);
}

attn_status attn_backward_plan_set_lowrank_grads(attn_backward_plan *plan, attn_tensor *de,
                                                 attn_tensor *df) {
  if (plan == NULL) return ATTN_ERR_NULL_ARG;
  attn_context *ctx = plan->ctx;
  attn_clear_error(ctx);
  if (!plan->lowrank)
    return attn_fail(ctx, ATTN_ERR_INVALID_ARG, "de: the forward plan is not ATTN_VARIANT_LINFORMER");
  attn_tensor *g[WG_N] = {de, df, NULL, NULL};
  if (de == NULL && df == NULL) return set_wgrads(plan, g);
  ATTN_CHECK_NULL(ctx, de);
  ATTN_CHECK_NULL(ctx, df);
  const attn_tensor *e = plan->fwd->desc.lowrank.e;
  if (e == NULL)
    return attn_fail(ctx, ATTN_ERR_INVALID_ARG,
                     "de: the forward's projections are drawn from a seed "
                     "(attn_desc_set_lowrank), not given (attn_desc_set_lowrank_proj): "
                     "they have no gradient");
  attn_status st;
  if ((st = check_wgrad(ctx, "de", de, plan->dims.dtype, e->rank, e->shape, "e's shape")) != ATTN_OK ||
      (st = check_wgrad(ctx, "df", df, plan->dims.dtype, e->rank, e->shape, "f's shape")) != ATTN_OK)
    return st;
  return set_wgrads(plan, g);
}

attn_status attn_backward_execute(attn_backward_plan *plan, const attn_tensor *q,
                                  const attn_tensor *k, const attn_tensor *v,
                                  const attn_tensor *out, const attn_tensor *lse,
                                  const attn_tensor *dout, attn_tensor *dq, attn_tensor *dk,
                                  attn_tensor *dv, attn_tensor *dmask) {
  if (plan == NULL) return ATTN_ERR_NULL_ARG;
  attn_clear_error(plan->ctx);
  return attn_backward_run(plan, plan->fwd, q, k, v, out, lse, dout, dq, dk, dv, dmask);
}

attn_status attn_backward_run(attn_backward_plan *plan, const attn_plan *fwd, const attn_tensor *q,
                              const attn_tensor *k, const attn_tensor *v, const attn_tensor *out,
                              const attn_tensor *lse, const attn_tensor *dout, attn_tensor *dq,
                              attn_tensor *dk, attn_tensor *dv, attn_tensor *dmask) {
  attn_context *ctx = plan->ctx;
  const attn_tensor *ts[BM_N] = {q, k, v, out, lse, dout, dq, dk, dv, dmask};
  const bool required[BM_N] = {true, true, true, true, !plan->linear, true, true, true, true, false};
  attn_status st = attn_tmeta_check_all(ctx, plan->meta, ts, bm_names, required, BM_N);
  if (st != ATTN_OK) return st;
  if (plan->linear) {
    const attn_ws lws = {NULL, plan->workspace, plan->slot_bytes};
    return attn_linear_bwd_run(fwd, ctx, &lws, q, k, v, out, dout, dq, dk, dv);
  }
  attn_mask mask = plan->mask;
  attn_mask_bind(&mask, &fwd->desc);
  char *shared = (char *)plan->workspace;
  if (plan->lowrank) { /* K', V' as the forward formed them; the caller's lengths apply there */
    int64_t *inner = fwd->desc.mask.key_lengths != NULL
                         ? (int64_t *)(void *)(shared + plan->lr_len_at)
                         : NULL;
    if ((st = attn_lowrank_project(fwd, ctx, k, v, shared + plan->lr_at[0],
                                   shared + plan->lr_at[1], inner)) != ATTN_OK)
      return st;
    mask.key_len = inner;
  }
  if ((st = attn_mask_check(&mask, ctx)) != ATTN_OK) return st;
  const attn_desc *fd = &fwd->desc;
  if (plan->dsinks != NULL &&
      (st = attn_check_sinks(ctx, fd->sinks.logits, fd->sinks.n, plan->dims.dtype)) != ATTN_OK)
    return st;

  const attn_dims *d = &plan->dims;
  attn_ws ws = {(char *)plan->workspace, (char *)plan->workspace + plan->shared_bytes,
                plan->slot_bytes};
  bwd_args a = {plan, &mask, ws, q, k, v, out, lse, dout, dq, dk, dv, dmask};
  /* 16-bit storage: the passes run on f32 views of the workspace copies. */
  attn_tensor views[CV_N];
  conv_args cv = {plan, {q, k, v, out, dout, dq, dk, dv}, views};
  if (attn_dtype_is_16bit(plan->sdt)) {
    for (int i = 0; i < CV_N; i++) {
      const bool kv = i == CV_K || i == CV_V || i == CV_DK || i == CV_DV;
      const int64_t shape[4] = {d->B, kv ? d->Hkv : d->H, kv ? d->Sk : d->Sq,
                                cv.user[i]->shape[3]};
      views[i] = attn_tensor_view4(ATTN_DTYPE_F32, shape, NULL, ws.shared + plan->cv_at[i]);
    }
    if ((st = attn_parallel_for(ctx, d->B * (d->H + d->Hkv), conv_in_task, &cv)) != ATTN_OK)
      return st;
    a.q = &views[CV_Q], a.k = &views[CV_K], a.v = &views[CV_V], a.out = &views[CV_OUT];
    a.dout = &views[CV_DOUT], a.dq = &views[CV_DQ], a.dk = &views[CV_DK], a.dv = &views[CV_DV];
  }
  attn_tensor lr[4]; /* Linformer: the passes run on K', V' and give dK', dV' */
  if (plan->lowrank) {
    for (int i = 0; i < 4; i++) {
      const int64_t shape[4] = {d->B, d->Hkv, d->Sk, i % 2 == 0 ? d->Dk : d->Dv};
      lr[i] = attn_tensor_view4(d->dtype, shape, NULL, shared + plan->lr_at[i]);
    }
    a.k = &lr[0], a.v = &lr[1], a.dk = &lr[2], a.dv = &lr[3];
  }
  const bool f32 = d->dtype == ATTN_DTYPE_F32;
  const bool additive = plan->score == ATTN_SCORE_ADDITIVE;
  if (additive) (f32 ? bwd_additive_prepare_f32 : bwd_additive_prepare_f64)(&a);
  if (plan->projected &&
      (st = attn_parallel_for(ctx, d->B * d->H,
                              f32 ? bwd_project_q_task_f32 : bwd_project_q_task_f64, &a)) != ATTN_OK)
    return st;
  if (additive &&
      (st = attn_parallel_for(ctx, d->B * d->Hkv,
                              f32 ? bwd_project_k_task_f32 : bwd_project_k_task_f64, &a)) != ATTN_OK)
    return st;
  /* The tile engine's passes, unless this run's masks are dense after all. */
  const bool eng = plan->eng != NULL && !mask.has_dense;
  if ((st = attn_parallel_for(ctx, d->B * d->H,
                              eng ? bwd_rowdot_task_eng
                                  : f32 ? bwd_rowdot_task_f32 : bwd_rowdot_task_f64,
                              &a)) != ATTN_OK)
    return st;
  if ((st = attn_parallel_for(ctx, d->B * d->Hkv * plan->chunks,
                              eng ? bwd_kv_task_eng : f32 ? bwd_kv_task_f32 : bwd_kv_task_f64,
                              &a)) != ATTN_OK)
    return st;
  if (plan->chunks > 1 &&
      (st = attn_parallel_for(ctx, d->B * d->H, f32 ? bwd_reduce_task_f32 : bwd_reduce_task_f64,
                              &a)) != ATTN_OK)
    return st;
  if (plan->projected &&
      (st = attn_parallel_for(ctx, d->B * d->H,
                              f32 ? bwd_unproject_q_task_f32 : bwd_unproject_q_task_f64, &a)) !=
          ATTN_OK)
    return st;
  if (additive &&
      (st = attn_parallel_for(ctx, d->B * d->Hkv,
                              f32 ? bwd_unproject_k_task_f32 : bwd_unproject_k_task_f64, &a)) !=
          ATTN_OK)
    return st;
  if (plan->lowrank &&
      (st = attn_lowrank_unproject(fwd, ctx, k, v, shared + plan->lr_at[2],
                                   shared + plan->lr_at[3], dk, dv, plan->wgrad[0],
                                   plan->wgrad[1])) != ATTN_OK)
    return st;
  if (plan->projected && plan->wgrad[0] != NULL) {
    const int64_t rows = additive ? plan->A : d->Dq;
    if ((st = attn_parallel_for(ctx, attn_cdiv64(rows, BWD_WROWS),
                                f32 ? bwd_wgrad_task_f32 : bwd_wgrad_task_f64, &a)) != ATTN_OK)
      return st;
  }
  if (attn_dtype_is_16bit(plan->sdt) &&
      (st = attn_parallel_for(ctx, d->B * (d->H + d->Hkv), conv_out_task, &cv)) != ATTN_OK)
    return st;
  if (plan->dsinks != NULL) sink_grad(plan, lse, fd->sinks.logits);
  return ATTN_OK;
}

size_t attn_backward_plan_workspace_size(const attn_backward_plan *plan) {
  return plan == NULL ? 0 : plan->workspace_bytes;
}

void attn_backward_plan_destroy(attn_backward_plan *plan) {
  if (plan == NULL) return;
  attn_context *ctx = plan->ctx;
  attn_free(ctx, plan->workspace, plan->workspace_bytes);
  attn_free(ctx, plan, sizeof *plan);
}

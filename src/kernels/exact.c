/* Exact attention, flash-style: for each (batch, head, query block) and each
 * key block the mask keeps, S = scale·Q Kᵀ by GEMM, mask/bias only where the
 * tile needs it, online softmax (kernels/softmax_impl.inc), O += P V by GEMM;
 * out = O / l, lse = m + log l. Memory is O(threads · tile), never
 * O(S_q·S_k) unless weights are asked for. */
#include <inttypes.h>
#include <math.h>
#include <string.h>

#include "blas/gemm.h"
#include "kernels/exact.h"
#include "kernels/vmath.h"

void attn_exact_tiles(int64_t Sq, int64_t Sk, int64_t Dk, int64_t Dv, int64_t *bq, int64_t *bk) {
  /* Measured on Zen 4 (1 MiB L2/core), 1 thread, S = 2048..4096: d ≤ 64 is best
   * at 256×512 (84 GFLOPS vs 79 at 128×512), d ≤ 128 at 256×256 (90 vs 82 at
   * 128×256); larger d use smaller query blocks to keep tiles in L2. */
  int64_t d = attn_max64(Dk, Dv);
  int64_t q = d <= 128 ? 256 : 64;
  int64_t k = d <= 64 ? 512 : 256;
  *bq = attn_min64(q, Sq);
  *bk = attn_min64(k, Sk);
}

typedef struct exact_args {
  const attn_exact *ex;
  const attn_mask *mask; /* bound for this execute */
  attn_ws ws;
  const attn_tensor *q, *k, *v;
  attn_tensor *out, *weights, *lse;
  attn_tensor *mass; /* per-key mass output or NULL */
  /* Packed batch (ex->nseq > 0): the descriptor's offsets, this execute's
   * lengths (from them, in ws.shared) and its row blocks (b, qb) in order. */
  const int64_t *qoff, *koff, *qlen, *klen, *blk;
} exact_args;

/* Where batch item (or packed sequence) b lives: tensor batch index, first
 * query and key row, lengths. */
typedef struct exact_seq {
  int64_t tb, qr0, kr0, qlen, klen;
} exact_seq;

static inline exact_seq exact_seq_of(const exact_args *a, int64_t b) {
  if (a->qoff == NULL) {
    const exact_seq s = {b, 0, 0, a->ex->dims.Sq, a->ex->dims.Sk};
    return s;
  }
  const exact_seq s = {0, a->qoff[b], a->koff[b], a->qlen[b], a->klen[b]};
  return s;
}

/* Row block `blk` of the call, heaviest (causal: latest) first. */
static inline void exact_block_of(const exact_args *a, int64_t blk, int64_t *b, int64_t *qb) {
  if (a->blk != NULL) {
    *b = a->blk[2 * blk];
    *qb = a->blk[2 * blk + 1];
    return;
  }
  const int64_t B = a->ex->dims.B;
  *qb = a->ex->nqb - 1 - blk / B;
  *b = blk % B;
}

#define ATTN_TMPL_FILE "kernels/exact_impl.inc"
#include "core/tmpl.h"

/* Packed batch: lengths from the offsets, and the row blocks ordered by
 * block index descending (a counting sort; within a level, by sequence):
 * long sequences' late blocks, the heaviest under a causal mask, go first.
 * Returns the number of blocks. */
static int64_t varlen_prepare(const attn_exact *ex, exact_args *a) {
  char *sh = a->ws.shared;
  int64_t *ql = (int64_t *)(void *)(sh + ex->vl_at.qlen);
  int64_t *kl = (int64_t *)(void *)(sh + ex->vl_at.klen);
  int64_t *blk = (int64_t *)(void *)(sh + ex->vl_at.blk);
  int64_t *lev = (int64_t *)(void *)(sh + ex->vl_at.lev);
  const int64_t n = ex->nseq, nlev = ex->vl_nlev;
  memset(lev, 0, (size_t)(nlev + 1) * sizeof(int64_t));
  for (int64_t b = 0; b < n; b++) {
    ql[b] = a->qoff[b + 1] - a->qoff[b];
    kl[b] = a->koff[b + 1] - a->koff[b];
    const int64_t nb = attn_cdiv64(ql[b], ex->bq);
    if (nb > 0) lev[nb - 1]++; /* sequences with exactly nb blocks */
  }
  /* lev[l] ← first slot of level l: levels above l come first. */
  int64_t at = 0, above = 0; /* sequences with more than l blocks */
  for (int64_t l = nlev - 1; l >= 0; l--) {
    above += lev[l];
    lev[l] = at;
    at += above;
  }
  for (int64_t b = 0; b < n; b++)
    for (int64_t qb = 0; qb < attn_cdiv64(ql[b], ex->bq); qb++) {
      const int64_t x = lev[qb]++;
      blk[2 * x] = b;
      blk[2 * x + 1] = qb;
    }
  a->qlen = ql;
  a->klen = kl;
  a->blk = blk;
  return at;
}

attn_status attn_exact_run(const attn_exact *ex, attn_context *ctx, const attn_ws *ws,
                           const attn_mask *mask, const attn_tensor *q, const attn_tensor *k,
                           const attn_tensor *v, attn_tensor *out, attn_tensor *weights,
                           attn_tensor *lse) {
  const attn_dims *d = &ex->dims;
  exact_args a = {ex, mask, *ws, q, k, v, out, weights, lse, ex->mass, NULL, NULL, NULL, NULL,
                  NULL};
  const bool f32 = attn_dtype_compute(d->dtype) == ATTN_DTYPE_F32;
  attn_status st;
  if (ex->sinks != NULL && (st = attn_check_sinks(ctx, ex->sinks, d->H, d->dtype)) != ATTN_OK)
    return st;
  if (ex->mass != NULL && ex->mass->data == NULL)
    return attn_fail(ctx, ATTN_ERR_NULL_ARG, "mass: the tensor's data is NULL");
  int64_t nblocks = d->B * ex->nqb, nb = d->B;
  if (ex->nseq > 0) {
    a.qoff = ex->q_off;
    a.koff = ex->k_off;
    if ((st = attn_check_offsets(ctx, "q_offsets", a.qoff, ex->nseq, d->Sq,
                                 "q's total tokens")) != ATTN_OK ||
        (st = attn_check_offsets(ctx, "k_offsets", a.koff, ex->nseq, d->Sk,
                                 "k's total tokens")) != ATTN_OK)
      return st;
    nblocks = varlen_prepare(ex, &a);
    nb = ex->nseq;
  }
  if (ex->score == ATTN_SCORE_ADDITIVE) {
    if (f32)
      exact_additive_prepare_f32(&a);
    else
      exact_additive_prepare_f64(&a);
    st = attn_parallel_for(ctx, d->B * d->Hkv, f32 ? exact_kproj_task_f32 : exact_kproj_task_f64, &a);
    if (st != ATTN_OK) return st;
  }
  if (ex->prepack) {
    st = attn_parallel_for(ctx, d->B * d->Hkv * ex->nkt, exact_prepack_task_f32, &a);
    if (st != ATTN_OK) return st;
  }
  /* Dense-equivalent FLOPs: only a hint for running tiny calls on the caller. */
  const double flops = 4.0 * (double)d->B * (double)d->H * (double)d->Sq * (double)d->Sk *
                       (double)(d->Dk > d->Dv ? d->Dk : d->Dv);
  if (ex->mass != NULL)
    return attn_parallel_for_cost(ctx, nb * d->Hkv, flops,
                                  f32 ? exact_mass_task_f32 : exact_mass_task_f64, &a);
  return attn_parallel_for_cost(ctx, nblocks * (d->H / ex->gs), flops,
                                f32 ? exact_task_f32 : exact_task_f64, &a);
}

attn_status attn_exact_plan_execute(const attn_plan *p, const attn_run *run, const attn_tensor *q,
                                    const attn_tensor *k, const attn_tensor *v, attn_tensor *out,
                                    attn_tensor *weights, attn_tensor *lse) {
  const attn_exact *ex = p->impl;
  attn_mask mask = ex->mask;
  attn_mask_bind(&mask, &p->desc);
  attn_status st = attn_mask_check(&mask, run->ctx);
  if (st != ATTN_OK) return st;
  if (ex->nseq > 0) { /* per-sequence lengths, filled by attn_exact_run from the offsets */
    mask.query_len = (const int64_t *)(const void *)(run->ws.shared + ex->vl_at.qlen);
    mask.key_len = (const int64_t *)(const void *)(run->ws.shared + ex->vl_at.klen);
  }
  return attn_exact_run(ex, run->ctx, &run->ws, &mask, q, k, v, out, weights, lse);
}

static attn_status check_score_params(attn_context *ctx, const attn_desc *desc,
                                      const attn_dims *dm) {
  const struct attn_desc_score *d = &desc->score;
  attn_status st;
  char buf[96];
  if (d->kind == ATTN_SCORE_GENERAL) {
    if (d->general_w == NULL)
      return attn_fail(ctx, ATTN_ERR_NULL_ARG,
                       "general_w: ATTN_SCORE_GENERAL needs attn_desc_set_general_weight()");
    if ((st = attn_check_tensor(ctx, "general_w", d->general_w, 2, dm->dtype)) != ATTN_OK) return st;
    if (d->general_w->shape[0] != dm->Dq || d->general_w->shape[1] != dm->Dk)
      return attn_fail(ctx, ATTN_ERR_SHAPE,
                       "general_w: shape %s, expected [d_q, d_k] = [%" PRId64 ",%" PRId64 "]",
                       attn_shape_str(d->general_w, buf, sizeof buf), dm->Dq, dm->Dk);
    if ((st = attn_check_matrix_rows(ctx, "general_w", d->general_w)) != ATTN_OK) return st;
  }
  if (d->kind == ATTN_SCORE_ADDITIVE) {
    if (d->wq == NULL)
      return attn_fail(ctx, ATTN_ERR_NULL_ARG,
                       "w_q: ATTN_SCORE_ADDITIVE needs attn_desc_set_additive_weights()");
    if ((st = attn_check_tensor(ctx, "w_q", d->wq, 2, dm->dtype)) != ATTN_OK) return st;
    if ((st = attn_check_tensor(ctx, "w_k", d->wk, 2, dm->dtype)) != ATTN_OK) return st;
    if ((st = attn_check_tensor(ctx, "v", d->v, 1, dm->dtype)) != ATTN_OK) return st;
    if (d->bias != NULL && (st = attn_check_tensor(ctx, "bias", d->bias, 1, dm->dtype)) != ATTN_OK)
      return st;
    if (d->wq->shape[1] != dm->Dq)
      return attn_fail(ctx, ATTN_ERR_SHAPE, "w_q: shape %s, expected [A, d_q = %" PRId64 "]",
                       attn_shape_str(d->wq, buf, sizeof buf), dm->Dq);
    if (d->wk->shape[1] != dm->Dk)
      return attn_fail(ctx, ATTN_ERR_SHAPE, "w_k: shape %s, expected [A, d_k = %" PRId64 "]",
                       attn_shape_str(d->wk, buf, sizeof buf), dm->Dk);
    if ((st = attn_check_matrix_rows(ctx, "w_q", d->wq)) != ATTN_OK) return st;
    if ((st = attn_check_matrix_rows(ctx, "w_k", d->wk)) != ATTN_OK) return st;
  }
  return ATTN_OK;
}

attn_status attn_exact_setup(attn_exact *ex, attn_context *ctx, const attn_desc *desc,
                             const attn_dims *dims, double scale, int64_t bq, int64_t bk) {
  attn_status st = check_score_params(ctx, desc, dims);
  if (st != ATTN_OK) return st;
  const attn_dims *d = dims;
  ex->dims = *dims;
  ex->scale = scale;
  ex->score = desc->score.kind;
  ex->general_w = desc->score.general_w;
  ex->wq = desc->score.wq;
  ex->wk = desc->score.wk;
  ex->av = desc->score.v;
  ex->abias = desc->score.bias;
  attn_exact_tiles(d->Sq, d->Sk, d->Dk, d->Dv, &ex->bq, &ex->bk);
  if (bq > 0) ex->bq = attn_min64(bq, d->Sq);
  if (bk > 0) ex->bk = attn_min64(bk, d->Sk);
  /* GQA: stack a group's query heads into one GEMM (each K/V tile read once
   * per group) unless masks or sparse layouts differ between heads. */
  ex->gs = 1;
  if (d->H > d->Hkv && !ex->mask.has_dense && ex->mask.sparse == ATTN_SPARSE_NONE &&
      ex->mask.max_ranges == 1) {
    ex->gs = d->H / d->Hkv;
    ex->bq = attn_max64(1, attn_min64(ex->bq, attn_cdiv64(ex->bq, ex->gs)));
  }
  /* Serving options. The mass keeps every kept tile's P of a row block
   * (rq × S_k scores) for its epilogue: cap the block so that stays near
   * 256K elements (1 MiB in f32), in L2 with the tiles. 4M elements sent
   * every tile's P to memory: S=4096 d=64 H=8 took 1.13–1.25× the time
   * without the mass, 1.09–1.12× at 256K (bench/README.md). */
  ex->sinks = desc->sinks.logits;
  ex->mass = desc->mass;
  ex->mass_grouped = ex->mass != NULL && ex->mass->shape[1] != d->H;
  ex->nseq = desc->varlen.n;
  ex->q_off = desc->varlen.q_off;
  ex->k_off = desc->varlen.k_off;
  if (ex->mass != NULL) {
    const int64_t cap = ((int64_t)1 << 18) / (ex->gs * (d->Sk + ex->bk));
    ex->bq = attn_max64(1, attn_min64(ex->bq, attn_max64(16, cap)));
    ex->mass_tiles = attn_cdiv64(d->Sk, ex->bk) + ex->mask.max_ranges;
  }
  ex->nqb = attn_cdiv64(d->Sq, ex->bq);
  ex->vl_nlev = ex->nseq > 0 ? ex->nqb : 0;
  /* kc: keys per tanh chunk, so kc·A ≤ 16384 elements (64 KiB in f32) stays
   * in L2; at least 1, at most bk. */
  const int64_t A = ex->score == ATTN_SCORE_ADDITIVE ? ex->wq->shape[0] : 0;
  ex->A = A;
  ex->add_kc = A > 0 ? attn_max64(1, attn_min64(ex->bk, 16384 / A)) : 0;
  ex->qx_cols = ex->score == ATTN_SCORE_GENERAL ? d->Dk : A;
  /* A thread's slot: S [rq×bk], O [rq×Dv], m, l [rq], stacked Q [rq×Dq]
   * (GQA), projected queries [rq×Dk] (general) or [rq×A] (additive), Vz
   * [bk×Dv], additive scratch [kc×A], the key ranges; rq = gs·bq rows. d_k
   * (general) and A (additive) come from the weights, not from q/k/v's
   * sizes, so the carver checks every product. */
  /* es: the compute type's size (scores, state); ss: the storage type's
   * (copies of q/v rows). The engine's packed tiles follow (none for BLAS). */
  const size_t es = attn_dtype_size(attn_dtype_compute(d->dtype));
  const size_t ss = attn_dtype_size(d->dtype);
  const bool dot = ex->score == ATTN_SCORE_DOT || ex->score == ATTN_SCORE_SCALED_DOT;
  ex->eng = dot ? attn_tile_engine_for(d->dtype, d->Dk, d->Dv) : NULL;
  /* Tiny f32 problems: packing 32-key panels costs more than it saves, and
   * OpenBLAS wins (B1 H8 d64: S=16 16 µs vs 29 µs on the AVX-512 engine,
   * even at S=64, ahead from S≈128). Shapes only decide: never threads. */
  if (ex->eng != NULL && d->dtype == ATTN_DTYPE_F32 && d->Sq * d->Sk < 128 * 128) ex->eng = NULL;
  const attn_tile_engine *eng = ex->eng;
  const int64_t rq = ex->gs * ex->bq;
  attn_carver c = attn_carver_start();
  ex->mass_tile = rq * ex->bk;
  ex->at.S = attn_carve(&c, es, rq, ex->bk, ex->mass != NULL ? ex->mass_tiles : 1);
  ex->at.O = attn_carve(&c, es, rq, d->Dv, 1);
  ex->at.M = attn_carve(&c, es, rq, 1, 1);
  ex->at.L = attn_carve(&c, es, rq, 1, 1);
  ex->at.QS = attn_carve(&c, ss, ex->gs > 1 && eng == NULL ? rq : 0, d->Dq, 1);
  ex->at.QX = attn_carve(&c, es, rq, ex->qx_cols, 1);
  ex->at.Vz = attn_carve(&c, ss, ex->bk, d->Dv, 1);
  ex->at.X = attn_carve(&c, es, ex->add_kc, A, 1);
  ex->at.ranges = attn_carve(&c, sizeof(int64_t), 2, ex->mask.max_ranges, 1);
  if (eng != NULL) {
    ex->at.Qp = attn_carve(&c, eng->elem, rq, attn_tile_pad(eng, d->Dq), 1);
    ex->at.Kp = attn_carve(&c, eng->elem, attn_tile_k_elems(eng, ex->bk, d->Dk), 1, 1);
    ex->at.Vp = attn_carve(&c, eng->elem, attn_tile_v_elems(eng, ex->bk, d->Dv), 1, 1);
    ex->at.Pb = attn_carve(&c, sizeof(uint16_t), eng->kpad > 1 ? rq : 0, attn_tile_pad(eng, ex->bk), 1);
    ex->at.Ob = attn_carve(&c, es, d->Dv, 1, 1);
  }
  ex->at.MT = attn_carve(&c, es, ex->mass_tiles, rq, 1);
  ex->at.TJ = attn_carve(&c, sizeof(int64_t), 2, ex->mass_tiles, 1);
  attn_carver sh = attn_carver_start();
  if (ex->nseq > 0) { /* lengths, the row blocks (≤ S_q / bq + one per sequence), levels */
    ex->vl_at.qlen = attn_carve(&sh, sizeof(int64_t), ex->nseq, 1, 1);
    ex->vl_at.klen = attn_carve(&sh, sizeof(int64_t), ex->nseq, 1, 1);
    ex->vl_at.blk = attn_carve(&sh, sizeof(int64_t), 2, ex->nqb + ex->nseq, 1);
    ex->vl_at.lev = attn_carve(&sh, sizeof(int64_t), ex->nqb + 1, 1, 1);
  }
  if (A > 0) {
    ex->kp_at = attn_carve(&sh, es, d->B * d->Hkv, d->Sk, A);
    ex->vb_at = attn_carve(&sh, es, 2, A, 1);
  }
  /* Prepacked K/V: worth it when several query blocks read the same tiles
   * and tiles start at multiples of 32 keys (no left window, no sparse
   * ranges, not a packed batch: packs are per batch item); key tiles must
   * then be whole multiples of 32 but the last. */
  ex->nkt = attn_cdiv64(d->Sk, ex->bk);
  ex->prepack = eng != NULL && eng->nr == 32 && ex->nqb > 1 && ex->nseq == 0 &&
                ex->mask.sparse == ATTN_SPARSE_NONE && ex->mask.left == ATTN_WINDOW_UNBOUNDED &&
                (ex->bk % 32 == 0 || ex->nkt == 1);
  /* ... and when the packs stay modest: they hold every head's K and V at
   * once (32 MiB at S_k = 65536, d = 64, one head), while repacking per
   * query block costs a few percent; long sequences keep O(tile) memory. */
  if (ex->prepack) {
    const double pack_bytes = (double)d->B * (double)d->Hkv * (double)d->Sk *
                              (double)(d->Dk + d->Dv) * (double)eng->elem;
    if (pack_bytes > 24.0 * 1048576.0) ex->prepack = false;
  }
  if (ex->prepack) {
    ex->pk_head = attn_tile_k_elems(eng, d->Sk, d->Dk);
    ex->pv_head = attn_tile_v_elems(eng, d->Sk, d->Dv);
    ex->pk_at = attn_carve(&sh, eng->elem, d->B * d->Hkv, ex->pk_head, 1);
    ex->pv_at = attn_carve(&sh, eng->elem, d->B * d->Hkv, ex->pv_head, 1);
  }
  int64_t total;
  if (!c.ok || !attn_mul_ok(c.bytes, ctx->num_threads, &total))
    return attn_fail(ctx, ATTN_ERR_OVERFLOW, "%s: workspace size overflows (%s = %" PRId64 ")",
                     A > 0 ? "w_q" : "general_w", A > 0 ? "attention dim A" : "d_k",
                     A > 0 ? A : d->Dk);
  if (!sh.ok || !attn_add_ok(total, sh.bytes, &total)) {
    if (A == 0)
      return attn_fail(ctx, ATTN_ERR_OVERFLOW,
                       "k: the packed K and V [B, H_kv, S_k, d] workspace size overflows");
    return attn_fail(ctx, ATTN_ERR_OVERFLOW,
                     "w_k: the K projection [B, H_kv, S_k, A = %" PRId64 "] size overflows", A);
  }
  ex->slot_bytes = (size_t)c.bytes;
  ex->shared_bytes = (size_t)sh.bytes;
  return ATTN_OK;
}

/* What a packed batch cannot take: per-item lengths (the offsets are the
 * lengths), dense [B, H, S_q, S_k] masks, the additive score's per-item K
 * projection. */
static attn_status varlen_options_check(attn_context *ctx, const attn_desc *d) {
  const char *bad = d->mask.key_lengths ? "key_lengths"
                    : d->mask.query_lengths ? "query_lengths"
                    : d->mask.bool_mask ? "bool_mask"
                    : d->mask.add_mask ? "additive_mask"
                    : d->score.kind == ATTN_SCORE_ADDITIVE ? "score" : NULL;
  if (bad == NULL) return ATTN_OK;
  return attn_fail(ctx, ATTN_ERR_UNSUPPORTED,
                   "%s: not supported with a packed batch (attn_desc_set_varlen): the offsets "
                   "give the lengths; dense masks and the additive score are per padded item",
                   bad);
}

attn_status attn_exact_plan_init(attn_plan *p) {
  attn_context *ctx = p->ctx;
  attn_exact *ex = attn_plan_impl_alloc(p, sizeof *ex);
  if (ex == NULL) return ATTN_ERR_NO_MEMORY;
  const attn_dims *d = &p->dims;
  attn_status st;
  const int64_t nseq = p->desc.varlen.n;
  if (nseq > 0 && (st = varlen_options_check(ctx, &p->desc)) != ATTN_OK) return st;
  /* A packed batch is nseq items of at most the totals' lengths. */
  const attn_mask_geom g =
      attn_mask_geom_of(&p->desc, d->dtype, nseq > 0 ? nseq : d->B, d->H, d->Sq, d->Sk);
  if ((st = attn_mask_init(&ex->mask, ctx, &p->desc, &g)) != ATTN_OK ||
      (st = attn_exact_setup(ex, ctx, &p->desc, d, p->scale, 0, 0)) != ATTN_OK)
    return st;
  p->ws_shared = ex->shared_bytes;
  p->ws_slot = ex->slot_bytes;
  return ATTN_OK;
}

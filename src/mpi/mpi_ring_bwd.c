/* The backward pass over the ring (issue 21, item 4). The forward's
 * schedule, tiles and masks are reused as they are: at step t rank r holds
 * the K/V block of rank r − t and runs, for each of the forward's tiles, the
 * single-process backward (attn_backward_execute) with the *global* out and
 * lse rows of its queries — P = exp(s − lse) then is the global softmax,
 * so each tile's dq, dk, dv are exactly its share of the full gradient.
 *
 *  - dq stays home: the tiles' parts are summed into an accumulator.
 *  - K/V travel as in the forward (sent on while the step computes).
 *  - dK/dV travel one step behind their block: during step t a rank sums
 *    its tiles' parts for the block into a fresh buffer while the sum of the
 *    earlier ranks' parts arrives from the left; at the end of the step it
 *    adds the two and sends the result on, in flight during the next step.
 *    After the last step each block's sum goes straight back to its owner
 *    (the forward may stop early: a window reaches only the nearest ranks).
 *
 * Every sum runs in an order fixed by the shapes and the rank count (the
 * incoming sum of ranks r − t .. r − 1, then rank r's tiles in schedule
 * order), so results are bitwise reproducible for a fixed rank count. */
#include <inttypes.h>
#include <string.h>

#include "mpi/mpi_internal.h"

/* Message tags: piece i of a K/V block, of a travelling dK/dV sum, of a
 * sum going home. */
#define TAG_KV 0
#define TAG_DKV 8192
#define TAG_HOME 16384

typedef struct bwd_pp {
  attn_plan *fwd;              /* the tile's geometry (never executed) */
  attn_backward_plan *plan;
  attn_tensor *q, *k, *v, *o, *l, *dout, *dq, *dk, *dv; /* data re-pointed per tile */
} bwd_pp;

struct attn_mpi_backward_plan {
  attn_mpi_plan *fp; /* the forward plan (borrowed: its schedule and K/V buffers) */
  attn_tmeta meta[4]; /* dout, dq, dk, dv */
  bwd_pp *pps;        /* one per forward tile shape (fp->ring.npp) */
  void *mem;
  size_t mem_bytes;
  char *dkv[2];       /* this rank's parts of the step's block (alternating) */
  char *dkv_in;       /* the sum arriving from the left; at the end, this rank's own sum */
  char *part;         /* one tile's dK/dV, block layout */
  char *part_dq;      /* one tile's dq [B, H, chunk, d_q] */
  char *acc_dq;       /* [B, H, S_r, d_q] */
  MPI_Request *reqs;  /* [3 · npieces]: a step's K/V send/receive and dK/dV receive */
  MPI_Request *sreqs; /* [npieces]: the dK/dV send in flight */
};

/* dst rows [drow0, +nrows) += src rows [srow0, +nrows), for each of `outer`
 * (b, h) slices of dst_stride / src_stride rows of D elements. */
static void add_rows(char *dst, int64_t dst_stride, int64_t drow0, const char *src,
                     int64_t src_stride, int64_t srow0, int64_t outer, int64_t nrows, int64_t D,
                     attn_dtype dt) {
  const size_t es = mpi_esize(dt);
  const int64_t n = nrows * D;
  for (int64_t o = 0; o < outer; o++) {
    char *dp = dst + (size_t)((o * dst_stride + drow0) * D) * es;
    const char *sp = src + (size_t)((o * src_stride + srow0) * D) * es;
    if (dt == ATTN_DTYPE_F32) {
      float *d = (float *)(void *)dp;
      const float *s = (const float *)(const void *)sp;
      for (int64_t i = 0; i < n; i++) d[i] += s[i];
    } else {
      double *d = (double *)(void *)dp;
      const double *s = (const double *)(const void *)sp;
      for (int64_t i = 0; i < n; i++) d[i] += s[i];
    }
  }
}

/* ---- setup ----------------------------------------------------------------------------- */

static attn_tensor *wrap(attn_mpi_backward_plan *bp, int32_t rank, const int64_t *shape,
                         const int64_t *strides, attn_status *st) {
  attn_tensor *t = NULL;
  if (*st != ATTN_OK) return NULL;
  *st = attn_tensor_wrap(bp->fp->ctx, bp->fp->d.dtype, rank, shape, strides, bp->mem, &t);
  return t;
}

static attn_status make_pp(attn_mpi_backward_plan *bp, int32_t i) {
  attn_mpi_plan *p = bp->fp;
  ring_pp *fpp = &p->ring.pps[i];
  bwd_pp *pp = &bp->pps[i];
  const attn_dims *d = &p->d;
  const int64_t B = d->B, H = d->H, G = d->Hkv, n = p->ring.nmax, pc = p->ring.chunk;
  const int64_t qs[4] = {B, H, fpp->nq, d->Dq}, ks[4] = {B, G, fpp->nk, d->Dk},
                vs[4] = {B, G, fpp->nk, d->Dv}, os[4] = {B, H, fpp->nq, d->Dv};
  const int64_t kst[4] = {G * n * d->Dk, n * d->Dk, d->Dk, 1},
                vst[4] = {G * n * d->Dv, n * d->Dv, d->Dv, 1},
                dqst[4] = {H * pc * d->Dq, pc * d->Dq, d->Dq, 1};
  attn_status st = ATTN_OK;
  pp->q = wrap(bp, 4, qs, p->meta[0].strides, &st);
  pp->k = wrap(bp, 4, ks, kst, &st);
  pp->v = wrap(bp, 4, vs, vst, &st);
  pp->o = wrap(bp, 4, os, p->meta[3].strides, &st);
  pp->l = wrap(bp, 3, os, p->meta[4].strides, &st);
  pp->dout = wrap(bp, 4, os, bp->meta[0].strides, &st);
  pp->dq = wrap(bp, 4, qs, dqst, &st);
  pp->dk = wrap(bp, 4, ks, kst, &st);
  pp->dv = wrap(bp, 4, vs, vst, &st);
  if (st != ATTN_OK) return st;
  if ((st = attn_plan_create(p->ctx, &fpp->desc, pp->q, pp->k, pp->v, pp->o, NULL, pp->l,
                             &pp->fwd)) != ATTN_OK)
    return st;
  return attn_backward_plan_create(pp->fwd, pp->dout, pp->dq, pp->dk, pp->dv, NULL, &pp->plan);
}

static void plan_free(attn_mpi_backward_plan *bp) {
  if (bp == NULL) return;
  attn_mpi_plan *p = bp->fp;
  attn_context *ctx = p->ctx;
  const int32_t npp = p->ring.npp;
  for (int32_t i = 0; bp->pps != NULL && i < npp; i++) {
    bwd_pp *pp = &bp->pps[i];
    attn_backward_plan_destroy(pp->plan);
    attn_plan_destroy(pp->fwd);
    attn_tensor *ts[9] = {pp->q, pp->k, pp->v, pp->o, pp->l, pp->dout, pp->dq, pp->dk, pp->dv};
    for (int j = 0; j < 9; j++) attn_tensor_destroy(ts[j]);
  }
  mpi_free(ctx, bp->pps, (size_t)(npp + 1) * sizeof *bp->pps);
  mpi_free(ctx, bp->reqs, (size_t)(3 * p->ring.npieces) * sizeof *bp->reqs);
  mpi_free(ctx, bp->sreqs, (size_t)p->ring.npieces * sizeof *bp->sreqs);
  mpi_free(ctx, bp->mem, bp->mem_bytes);
  mpi_free(ctx, bp, sizeof *bp);
}

/* Byte size of `elems` elements rounded up to the alignment; false on overflow. */
static bool part_bytes(int64_t elems, size_t es, size_t *bytes) {
  int64_t b;
  if (elems < 0 || !attn_mul_ok(elems, (int64_t)es, &b) || b > INT64_MAX / 8) return false;
  *bytes = ((size_t)b + ATTN_ALIGN - 1) / ATTN_ALIGN * ATTN_ALIGN;
  return true;
}

static attn_status setup(attn_mpi_backward_plan *bp) {
  attn_mpi_plan *p = bp->fp;
  attn_context *ctx = p->ctx;
  const attn_dims *d = &p->d;
  const ring_state *r = &p->ring;
  const size_t es = mpi_esize(d->dtype);
  size_t blk = 0, pdq = 0, adq = 0;
  int64_t e1, e2;
  if (r->npieces >= TAG_DKV - TAG_KV)
    return mpi_fail(ctx, ATTN_ERR_OVERFLOW, "k: a K/V block of %zu bytes needs too many messages",
                    r->kv_bytes);
  /* The single-process backward has the projected scores; the ring has no
   * way to sum their weight gradients over ranks yet. */
  const attn_score sk = p->score;
  if (sk == ATTN_SCORE_GENERAL || sk == ATTN_SCORE_ADDITIVE)
    return mpi_fail(ctx, ATTN_ERR_UNSUPPORTED,
                    "forward: the ring backward supports ATTN_SCORE_SCALED_DOT and ATTN_SCORE_DOT "
                    "(score %d)", (int)sk);
  if (!part_bytes((int64_t)(r->kv_bytes / es), es, &blk) ||
      !attn_mul_ok(d->B * d->H, r->chunk, &e1) || !attn_mul_ok(e1, d->Dq, &e1) ||
      !part_bytes(e1, es, &pdq) || !attn_mul_ok(d->B * d->H, d->Sq, &e2) ||
      !attn_mul_ok(e2, d->Dq, &e2) || !part_bytes(e2, es, &adq) || blk > SIZE_MAX / 8)
    return mpi_fail(ctx, ATTN_ERR_OVERFLOW, "dq: the workspace size overflows");
  bp->mem_bytes = 4 * blk + pdq + adq;
  if ((bp->mem = mpi_alloc(ctx, bp->mem_bytes)) == NULL ||
      (bp->reqs = mpi_alloc(ctx, (size_t)(3 * r->npieces) * sizeof *bp->reqs)) == NULL ||
      (bp->sreqs = mpi_alloc(ctx, (size_t)r->npieces * sizeof *bp->sreqs)) == NULL ||
      (bp->pps = mpi_alloc(ctx, (size_t)(r->npp + 1) * sizeof *bp->pps)) == NULL)
    return mpi_fail(ctx, ATTN_ERR_NO_MEMORY,
                    "attn_mpi_backward_plan_create: cannot allocate %zu bytes of workspace",
                    bp->mem_bytes);
  char *base = bp->mem;
  bp->dkv[0] = base, bp->dkv[1] = base + blk, bp->dkv_in = base + 2 * blk;
  bp->part = base + 3 * blk, bp->part_dq = base + 4 * blk, bp->acc_dq = base + 4 * blk + pdq;
  for (int32_t i = 0; i < r->npp; i++) {
    attn_status st = make_pp(bp, i);
    if (st != ATTN_OK) return st;
  }
  return ATTN_OK;
}

/* dout, dq, dk, dv against the forward plan's shapes. */
static attn_status validate(const attn_mpi_plan *p, const attn_tensor *dout,
                            const attn_tensor *dq, const attn_tensor *dk, const attn_tensor *dv) {
  attn_context *ctx = p->ctx;
  const attn_dims *d = &p->d;
  const attn_tensor *ts[4] = {dout, dq, dk, dv};
  static const char *const names[4] = {"dout", "dq", "dk", "dv"};
  const int64_t want[4][4] = {{d->B, d->H, d->Sq, d->Dv},
                              {d->B, d->H, d->Sq, d->Dq},
                              {d->B, d->Hkv, d->Sq, d->Dk},
                              {d->B, d->Hkv, d->Sq, d->Dv}};
  for (int i = 0; i < 4; i++) {
    attn_status st = mpi_check4(ctx, names[i], ts[i], d->dtype, i > 0);
    if (st != ATTN_OK) return st;
    for (int x = 0; x < 4; x++)
      if (ts[i]->shape[x] != want[i][x])
        return mpi_fail(ctx, ATTN_ERR_SHAPE,
                        "%s: dim %d is %" PRId64 ", expected %" PRId64
                        " (dout and dq are [B, H, S_r, ·] like out and q, dk and dv "
                        "[B, H_kv, S_r, ·] like k and v)",
                        names[i], x, ts[i]->shape[x], want[i][x]);
  }
  return ATTN_OK;
}

attn_status attn_mpi_backward_plan_create(attn_mpi_plan *forward, const attn_tensor *dout,
                                          const attn_tensor *dq, const attn_tensor *dk,
                                          const attn_tensor *dv, attn_mpi_backward_plan **plan) {
  if (forward == NULL) return ATTN_ERR_NULL_ARG; /* no communicator to tell the others */
  attn_mpi_plan *p = forward;
  attn_context *ctx = p->ctx;
  ctx->last_error[0] = '\0';
  attn_status st = ATTN_OK;
  if (plan == NULL)
    st = mpi_fail(ctx, ATTN_ERR_NULL_ARG, "plan: must not be NULL");
  else if (p->mode != ATTN_MPI_MODE_RING)
    st = mpi_fail(ctx, ATTN_ERR_UNSUPPORTED,
                  "forward: the backward runs over the ring; this plan uses Ulysses (create it "
                  "with cfg.mode = ATTN_MPI_MODE_RING)");
  else if (p->d.dtype != p->cdt)
    st = mpi_fail(ctx, ATTN_ERR_UNSUPPORTED,
                  "forward: the backward over the ring supports f32 and f64 plans (this one "
                  "takes bf16)");
  else if (!p->meta[4].present)
    st = mpi_fail(ctx, ATTN_ERR_INVALID_ARG,
                  "lse: the forward plan was created without lse, which the backward needs");
  else
    st = validate(p, dout, dq, dk, dv);
  attn_mpi_backward_plan *bp = NULL;
  if (st == ATTN_OK) {
    if ((bp = mpi_alloc(ctx, sizeof *bp)) == NULL)
      st = mpi_fail(ctx, ATTN_ERR_NO_MEMORY, "attn_mpi_backward_plan_create: out of memory");
    else
      bp->fp = p;
  }
  st = mpi_agree(p, p->comm, ctx, st);
  if (st == ATTN_OK) {
    mpi_meta_record(&bp->meta[0], dout);
    mpi_meta_record(&bp->meta[1], dq);
    mpi_meta_record(&bp->meta[2], dk);
    mpi_meta_record(&bp->meta[3], dv);
    st = mpi_agree(p, p->comm, ctx, setup(bp)); /* e.g. a score the backward lacks, everywhere */
  }
  if (st != ATTN_OK) {
    plan_free(bp);
    return st;
  }
  *plan = bp;
  return ATTN_OK;
}

void attn_mpi_backward_plan_destroy(attn_mpi_backward_plan *plan) { plan_free(plan); }

/* ---- execute --------------------------------------------------------------------------- */

/* Row `row` of a [B, H, S_r, ·] or [B, H, S_r] tensor (dim 2 is the row). */
static char *row_at(const attn_tensor *t, int64_t row, size_t es) {
  return (char *)t->data + (size_t)(row * t->strides[2]) * es;
}

/* One tile: its backward into the parts, then the parts into dq's
 * accumulator and the step's dK/dV buffer `loc`. */
static attn_status run_tile(attn_mpi_backward_plan *bp, const ring_work *w, const attn_tensor *q,
                            const attn_tensor *out, const attn_tensor *lse,
                            const attn_tensor *dout, const char *kv, char *loc) {
  attn_mpi_plan *p = bp->fp;
  const attn_dims *d = &p->d;
  if (!ring_tile_lengths(p, w)) return ATTN_OK; /* padding only: no gradient */
  const ring_pp *fpp = &p->ring.pps[w->pp];
  bwd_pp *pp = &bp->pps[w->pp];
  const size_t es = mpi_esize(d->dtype);
  const int64_t n = p->ring.nmax, kel = d->B * d->Hkv * n * d->Dk;
  char *kvw = (char *)kv; /* read only: the tensors just do not say const */
  attn_status st;
  if ((st = attn_tensor_set_data(pp->q, row_at(q, w->qrow, es))) != ATTN_OK ||
      (st = attn_tensor_set_data(pp->o, row_at(out, w->qrow, es))) != ATTN_OK ||
      (st = attn_tensor_set_data(pp->l, row_at(lse, w->qrow, es))) != ATTN_OK ||
      (st = attn_tensor_set_data(pp->dout, row_at(dout, w->qrow, es))) != ATTN_OK ||
      (st = attn_tensor_set_data(pp->k, kvw + (size_t)(w->krow * d->Dk) * es)) != ATTN_OK ||
      (st = attn_tensor_set_data(pp->v, kvw + (size_t)(kel + w->krow * d->Dv) * es)) != ATTN_OK ||
      (st = attn_tensor_set_data(pp->dq, bp->part_dq)) != ATTN_OK ||
      (st = attn_tensor_set_data(pp->dk, bp->part + (size_t)(w->krow * d->Dk) * es)) != ATTN_OK ||
      (st = attn_tensor_set_data(pp->dv, bp->part + (size_t)(kel + w->krow * d->Dv) * es)) !=
          ATTN_OK)
    return st;
  if ((st = attn_backward_execute(pp->plan, pp->q, pp->k, pp->v, pp->o, pp->l, pp->dout, pp->dq,
                                  pp->dk, pp->dv, NULL)) != ATTN_OK)
    return st;
  add_rows(bp->acc_dq, d->Sq, w->qrow, bp->part_dq, p->ring.chunk, 0, d->B * d->H, fpp->nq, d->Dq,
           d->dtype);
  const int64_t outer = d->B * d->Hkv;
  add_rows(loc, n, w->krow, bp->part, n, w->krow, outer, fpp->nk, d->Dk, d->dtype);
  add_rows(loc + (size_t)kel * es, n, w->krow, bp->part + (size_t)kel * es, n, w->krow, outer,
           fpp->nk, d->Dv, d->dtype);
  return ATTN_OK;
}

static attn_status run(attn_mpi_backward_plan *bp, const attn_tensor *q, const attn_tensor *k,
                       const attn_tensor *v, const attn_tensor *out, const attn_tensor *lse,
                       const attn_tensor *dout) {
  attn_mpi_plan *p = bp->fp;
  ring_state *r = &p->ring;
  const attn_dims *d = &p->d;
  const size_t es = mpi_esize(d->dtype);
  const int N = p->N, right = (p->rank + 1) % N, left = (p->rank - 1 + N) % N;
  ring_pack_kv(p, k, v, r->kv[0]);
  memset(bp->acc_dq, 0, (size_t)(d->B * d->H * d->Sq * d->Dq) * es);
  attn_status st = ATTN_OK, comm = ATTN_OK;
  int cur = 0, nsreq = 0;
  for (int64_t t = 0; t < r->nsteps; t++) {
    char *loc = bp->dkv[t & 1];
    memset(loc, 0, r->kv_bytes);
    int nreq = 0;
    if (t + 1 < r->nsteps && comm == ATTN_OK) {
      comm = ring_post(p, r->kv[1 - cur], false, left, TAG_KV, bp->reqs, &nreq);
      if (comm == ATTN_OK) comm = ring_post(p, r->kv[cur], true, right, TAG_KV, bp->reqs, &nreq);
    }
    if (t > 0 && comm == ATTN_OK)
      comm = ring_post(p, bp->dkv_in, false, left, TAG_DKV, bp->reqs, &nreq);
    /* A failed tile stops the computing, never the ring (others wait on it). */
    for (int64_t w = r->step_at[t]; w < r->step_at[t + 1]; w++) {
      if (st == ATTN_OK) st = run_tile(bp, &r->work[w], q, out, lse, dout, r->kv[cur], loc);
      if (comm == ATTN_OK) comm = ring_progress(p, nreq, bp->reqs);
    }
    if (comm == ATTN_OK) comm = ring_wait(p, nreq, bp->reqs);
    if (comm == ATTN_OK) comm = ring_wait(p, nsreq, bp->sreqs); /* the other buffer's send */
    nsreq = 0;
    if (comm != ATTN_OK) break;
    /* The earlier ranks' sum for this block, then this rank's parts. */
    if (t > 0) add_rows(loc, 0, 0, bp->dkv_in, 0, 0, 1, 1, (int64_t)(r->kv_bytes / es), d->dtype);
    if (t + 1 < r->nsteps) {
      comm = ring_post(p, loc, true, right, TAG_DKV, bp->sreqs, &nsreq);
    } else if (t == 0) {
      memcpy(bp->dkv_in, loc, r->kv_bytes); /* nobody else touches our block */
    } else {
      /* The block of rank r − t is complete: home it; ours comes from r + t. */
      const int owner = (int)((p->rank - t % N + N) % N), from = (int)((p->rank + t) % N);
      int nh = 0;
      comm = ring_post(p, bp->dkv_in, false, from, TAG_HOME, bp->reqs, &nh);
      if (comm == ATTN_OK) comm = ring_post(p, loc, true, owner, TAG_HOME, bp->reqs, &nh);
      if (comm == ATTN_OK) comm = ring_wait(p, nh, bp->reqs);
    }
    cur = 1 - cur;
  }
  return comm != ATTN_OK ? comm : st;
}

attn_status attn_mpi_backward_execute(attn_mpi_backward_plan *plan, const attn_tensor *q,
                                      const attn_tensor *k, const attn_tensor *v,
                                      const attn_tensor *out, const attn_tensor *lse,
                                      const attn_tensor *dout, attn_tensor *dq, attn_tensor *dk,
                                      attn_tensor *dv) {
  if (plan == NULL) return ATTN_ERR_NULL_ARG;
  attn_mpi_plan *p = plan->fp;
  attn_context *ctx = p->ctx;
  ctx->last_error[0] = '\0';
  const double t0 = MPI_Wtime();
  const attn_tensor *fwd[5] = {q, k, v, out, lse}, *grad[4] = {dout, dq, dk, dv};
  static const char *const fnames[5] = {"q", "k", "v", "out", "lse"},
                           *const gnames[4] = {"dout", "dq", "dk", "dv"};
  attn_status st = mpi_check_tensors(ctx, p->meta, fwd, fnames, 5, 5);
  if (st == ATTN_OK) st = mpi_check_tensors(ctx, plan->meta, grad, gnames, 4, 4);
  if ((st = mpi_execute_checks(p, st)) != ATTN_OK) return st;
  p->stats.wait_seconds = 0;
  p->stats.bytes_sent = 0;
  st = mpi_agree(p, p->comm, ctx, run(plan, q, k, v, out, lse, dout));
  if (st != ATTN_OK) return st;
  /* Everyone succeeded: now write the outputs. */
  const size_t es = mpi_esize(p->d.dtype);
  const int64_t n = p->ring.nmax, kel = p->d.B * p->d.Hkv * n * p->d.Dk;
  mpi_store4(plan->acc_dq, p->d.Sq, p->d.Sq, dq);
  mpi_store4(plan->dkv_in, p->d.Sq, n, dk);
  mpi_store4(plan->dkv_in + (size_t)kel * es, p->d.Sq, n, dv);
  p->stats.seconds = MPI_Wtime() - t0;
  return ATTN_OK;
}

/* Ring attention (Liu et al., 2023): at step t rank r holds the K/V block of
 * rank r − t. It attends its queries to that block with core plans while the
 * block moves on to rank r + 1 and the next one arrives from rank r − 1
 * (MPI_Isend/MPI_Irecv into the other of two buffers, progressed between
 * tiles), and folds each tile's (out, lse) into its accumulator with
 * attn_merge_states().
 *
 * Masks in global coordinates. The global band keeps key j for query i when
 * i − L ≤ j ≤ i + R (causal: R ≤ 0; a window: L, R; none: unbounded). A tile
 * of query rows at global qpos.. and keys at kpos.. sees, in its own
 * coordinates, j − i ∈ [δ − L, δ + R] with δ = qpos − kpos. Dropping the
 * tile's leading keys (when δ > L) or leading rows (when δ < −R) that keep
 * nothing makes both bounds a window of libattn's top-left form
 * (left' = L − δ', right' = R + δ', both ≥ 0), and trailing rows/keys that
 * keep nothing are dropped too; a tile left empty is not run. Key and query
 * lengths (global) become per-tile lengths. Which tiles exist depends only
 * on shapes and the band, so every rank derives the same schedule, and the
 * ring stops after the last step any rank needs (a causal window needs only
 * the ranks within reach). */
#include <inttypes.h>
#include <math.h>
#include <string.h>

#include "mpi/mpi_internal.h"

#define UNB ATTN_WINDOW_UNBOUNDED

typedef struct tile {
  int64_t qrow, qpos, nq, krow, kpos, nk, left, right;
} tile;

/* The tile of query rows [qrow, qrow+nq) (global qpos) × block keys
 * [krow, krow+nk) (global kpos) under band (L, R); false if nothing is kept. */
static bool make_tile(int64_t L, int64_t R, int64_t qrow, int64_t qpos, int64_t nq, int64_t krow,
                      int64_t kpos, int64_t nk, tile *t) {
  if (nq <= 0 || nk <= 0) return false;
  const int64_t delta = qpos - kpos;
  if (L != UNB && delta - L > nk - 1) return false;
  if (R != UNB && delta + R < -(nq - 1)) return false;
  int64_t r0 = 0, r1 = nq, s0 = 0, s1 = nk;
  if (L != UNB) {
    s0 = attn_max64(0, delta - L);
    r1 = attn_min64(nq, nk - delta + L);
  }
  if (R != UNB) {
    r0 = attn_max64(0, -(delta + R));
    s1 = attn_min64(nk, nq + delta + R);
  }
  if (r0 >= r1 || s0 >= s1) return false;
  const int64_t d2 = (qpos + r0) - (kpos + s0);
  t->qrow = qrow + r0, t->qpos = qpos + r0, t->nq = r1 - r0;
  t->krow = krow + s0, t->kpos = kpos + s0, t->nk = s1 - s0;
  t->left = L == UNB ? UNB : L - d2;
  t->right = R == UNB ? UNB : R + d2;
  if (t->left != UNB && t->left >= t->nq - 1) t->left = UNB;
  if (t->right != UNB && t->right >= t->nk - 1) t->right = UNB;
  return true;
}

/* The global band of the descriptor. */
static void band_of(const attn_mpi_plan *p, int64_t *L, int64_t *R) {
  const struct attn_desc_mask *m = &p->udesc->mask;
  *L = m->win_left >= p->S ? UNB : m->win_left;
  *R = m->win_right >= p->S ? UNB : m->win_right;
  if (m->causal != ATTN_CAUSAL_NONE) *R = *R == UNB ? 0 : attn_min64(*R, 0);
}

/* The tiles of rank x at step t (x's queries × the block of rank x − t), in
 * a fixed order; calls fn for each (fn NULL: count). */
typedef void (*tile_fn)(attn_mpi_plan *p, const tile *t, void *user);
static int64_t tiles_of(attn_mpi_plan *p, int32_t x, int64_t t, tile_fn fn, void *user) {
  int64_t L, R, n = 0;
  band_of(p, &L, &R);
  const int32_t src = (int32_t)((x - t % p->N + p->N) % p->N);
  const int64_t chunk = p->ring.chunk;
  for (int a = 0; a < 2; a++) {
    const mpi_seg *qs = &p->segs[2 * x + a];
    for (int64_t c0 = 0; c0 < qs->len; c0 += chunk) {
      const int64_t nq = attn_min64(chunk, qs->len - c0);
      for (int b = 0; b < 2; b++) {
        const mpi_seg *ks = &p->segs[2 * src + b];
        tile tl;
        if (!make_tile(L, R, qs->row + c0, qs->pos + c0, nq, ks->row, ks->pos, ks->len, &tl))
          continue;
        if (fn) fn(p, &tl, user);
        n++;
      }
    }
  }
  return n;
}

/* ---- setup -------------------------------------------------------------------------- */

typedef struct collect {
  int64_t step;
  attn_status st;
} collect;

static attn_tensor *wrap(attn_mpi_plan *p, attn_dtype dt, int32_t rank, const int64_t *shape,
                         const int64_t *strides, attn_status *st) {
  attn_tensor *t = NULL;
  if (*st != ATTN_OK) return NULL;
  *st = attn_tensor_wrap(p->ctx, dt, rank, shape, strides, p->mem, &t);
  return t;
}

static int32_t find_pp(attn_mpi_plan *p, const tile *t) {
  for (int32_t i = 0; i < p->ring.npp; i++) {
    const ring_pp *pp = &p->ring.pps[i];
    if (pp->nq == t->nq && pp->nk == t->nk && pp->left == t->left && pp->right == t->right) return i;
  }
  return -1;
}

/* Count pass: register the distinct tile shapes. */
static void count_pp(attn_mpi_plan *p, const tile *t, void *user) {
  (void)user;
  if (find_pp(p, t) >= 0) return;
  ring_pp *pp = &p->ring.pps[p->ring.npp++];
  pp->nq = t->nq, pp->nk = t->nk, pp->left = t->left, pp->right = t->right;
}

static void record_work(attn_mpi_plan *p, const tile *t, void *user) {
  (void)user;
  ring_work *w = &p->ring.work[p->ring.nwork++];
  w->pp = find_pp(p, t);
  w->qrow = t->qrow, w->qpos = t->qpos, w->krow = t->krow, w->kpos = t->kpos;
}

static attn_status make_pp(attn_mpi_plan *p, ring_pp *pp) {
  attn_context *ctx = p->ctx;
  const attn_dims *d = &p->d;
  const int64_t B = d->B, H = d->H, G = d->Hkv, n = p->ring.nmax, pc = p->ring.chunk;
  attn_status st = ATTN_OK;
  pp->desc = *p->udesc;
  pp->desc.ctx = ctx;
  struct attn_desc_mask *m = &pp->desc.mask;
  m->causal = ATTN_CAUSAL_NONE;
  m->win_left = pp->left;
  m->win_right = pp->right;
  if (p->key_len != NULL) {
    if ((pp->klen = mpi_alloc(ctx, (size_t)B * sizeof(int64_t))) == NULL)
      return mpi_fail(ctx, ATTN_ERR_NO_MEMORY, "attn_mpi_plan_create: out of memory");
    for (int64_t b = 0; b < B; b++) pp->klen[b] = pp->nk;
    m->key_lengths = pp->klen;
  }
  if (p->query_len != NULL) {
    if ((pp->qlen = mpi_alloc(ctx, (size_t)B * sizeof(int64_t))) == NULL)
      return mpi_fail(ctx, ATTN_ERR_NO_MEMORY, "attn_mpi_plan_create: out of memory");
    for (int64_t b = 0; b < B; b++) pp->qlen[b] = pp->nq;
    m->query_lengths = pp->qlen;
  }
  const int64_t qs[4] = {B, H, pp->nq, d->Dq}, ks[4] = {B, G, pp->nk, d->Dk},
                vs[4] = {B, G, pp->nk, d->Dv}, os[4] = {B, H, pp->nq, d->Dv};
  const int64_t kst[4] = {G * n * d->Dk, n * d->Dk, d->Dk, 1}, vst[4] = {G * n * d->Dv, n * d->Dv, d->Dv, 1};
  const int64_t ost[4] = {H * pc * d->Dv, pc * d->Dv, d->Dv, 1}, lst[3] = {H * pc, pc, 1};
  const int64_t S = d->Sq, ast[4] = {H * S * d->Dv, S * d->Dv, d->Dv, 1}, alst[3] = {H * S, S, 1};
  /* q, k, v in the input dtype; the partial result and the accumulator in
   * the compute dtype (bf16 tiles give f32 out and lse). */
  const attn_dtype it = d->dtype, ct = p->cdt;
  pp->q = wrap(p, it, 4, qs, p->meta[0].strides, &st);
  pp->k = wrap(p, it, 4, ks, kst, &st);
  pp->v = wrap(p, it, 4, vs, vst, &st);
  pp->o = wrap(p, ct, 4, os, ost, &st);
  pp->l = wrap(p, ct, 3, os, lst, &st);
  pp->acc_o = wrap(p, ct, 4, os, ast, &st);
  pp->acc_l = wrap(p, ct, 3, os, alst, &st);
  if (st != ATTN_OK) return st;
  if ((st = attn_tensor_set_data(pp->o, p->ring.part_o)) != ATTN_OK ||
      (st = attn_tensor_set_data(pp->l, p->ring.part_l)) != ATTN_OK)
    return st;
  return attn_plan_create(ctx, &pp->desc, pp->q, pp->k, pp->v, pp->o, NULL, pp->l, &pp->plan);
}

/* Byte offset of a part of `bytes`, 64-aligned, overflow-checked. */
static size_t carve(size_t *at, int64_t elems, size_t es, bool *ok) {
  const size_t here = *at;
  int64_t b;
  if (!*ok || elems < 0 || !attn_mul_ok(elems, (int64_t)es, &b) || b > INT64_MAX / 2 ||
      (uint64_t)*at + (uint64_t)b + ATTN_ALIGN > (uint64_t)INT64_MAX / 2) {
    *ok = false;
    return 0;
  }
  *at += ((size_t)b + ATTN_ALIGN - 1) / ATTN_ALIGN * ATTN_ALIGN;
  return here;
}

attn_status ring_setup(attn_mpi_plan *p) {
  attn_context *ctx = p->ctx;
  ring_state *r = &p->ring;
  const attn_dims *d = &p->d;
  const int32_t N = p->N;
  int64_t nmax = 0;
  for (int32_t x = 0; x < N; x++) nmax = attn_max64(nmax, p->rows[x]);
  r->nmax = nmax;
  /* Query tiles of whole 256-row blocks, about eight per step: MPI moves the
   * next block between tiles (MPI_Testall), so more tiles give it more
   * chances when its transport needs the receiver's progress calls. */
  r->chunk = attn_min64(d->Sq, attn_max64(256, (attn_cdiv64(nmax, 8) + 255) / 256 * 256));
  /* The schedule: the last step any rank needs; this rank's tiles. */
  int64_t last = 0, mine = 0;
  for (int64_t t = 0; t < N; t++)
    for (int32_t x = 0; x < N; x++) {
      int64_t n = tiles_of(p, x, t, NULL, NULL);
      if (n > 0) last = attn_max64(last, t);
      if (x == p->rank) mine += n;
    }
  r->nsteps = last + 1;
  /* Distinct tile shapes are at most the tiles themselves. */
  r->pps = mpi_alloc(ctx, (size_t)(mine + 1) * sizeof *r->pps);
  r->work = mpi_alloc(ctx, (size_t)(mine + 1) * sizeof *r->work);
  r->step_at = mpi_alloc(ctx, (size_t)(r->nsteps + 1) * sizeof *r->step_at);
  if (r->pps == NULL || r->work == NULL || r->step_at == NULL)
    return mpi_fail(ctx, ATTN_ERR_NO_MEMORY, "attn_mpi_plan_create: out of memory");
  r->npp_cap = mine + 1;
  r->idle = 0;
  for (int64_t t = 0; t < r->nsteps; t++) {
    r->step_at[t] = r->nwork;
    tiles_of(p, p->rank, t, count_pp, NULL);
    if (tiles_of(p, p->rank, t, record_work, NULL) == 0) r->idle++;
  }
  r->step_at[r->nsteps] = r->nwork;
  /* Workspace: two K/V buffers (input dtype), the accumulator and the
   * partial result (compute dtype). */
  const size_t es = mpi_esize(d->dtype), ces = mpi_esize(p->cdt);
  const int64_t G = d->Hkv, B = d->B, H = d->H, S = d->Sq, pc = r->chunk;
  int64_t kel, vel, t1;
  if (!attn_mul_ok(B * G, nmax, &t1) || !attn_mul_ok(t1, d->Dk, &kel) || !attn_mul_ok(t1, d->Dv, &vel))
    return mpi_fail(ctx, ATTN_ERR_OVERFLOW, "k: the K/V block size overflows");
  size_t at = 0;
  bool ok = true;
  const size_t kv0 = carve(&at, kel + vel, es, &ok), kv1 = carve(&at, kel + vel, es, &ok);
  const size_t ao = carve(&at, B * H * S * d->Dv, ces, &ok), al = carve(&at, B * H * S, ces, &ok);
  const size_t po = carve(&at, B * H * pc * d->Dv, ces, &ok), pl = carve(&at, B * H * pc, ces, &ok);
  if (!ok) return mpi_fail(ctx, ATTN_ERR_OVERFLOW, "q: the workspace size overflows");
  r->kv_bytes = (size_t)(kel + vel) * es;
  r->npieces = (int)((r->kv_bytes + MPI_PIECE - 1) / MPI_PIECE);
  if ((p->mem = mpi_alloc(ctx, at)) == NULL ||
      (r->reqs = mpi_alloc(ctx, (size_t)(2 * r->npieces + 1) * sizeof *r->reqs)) == NULL)
    return mpi_fail(ctx, ATTN_ERR_NO_MEMORY,
                    "attn_mpi_plan_create: cannot allocate %zu bytes of workspace", at);
  p->mem_bytes = at;
  char *base = p->mem;
  r->kv[0] = base + kv0, r->kv[1] = base + kv1;
  r->acc_o = base + ao, r->acc_l = base + al, r->part_o = base + po, r->part_l = base + pl;
  for (int32_t i = 0; i < r->npp; i++) {
    attn_status st = make_pp(p, &r->pps[i]);
    if (st != ATTN_OK) return st;
  }
  return ATTN_OK;
}

void ring_destroy(attn_mpi_plan *p) {
  ring_state *r = &p->ring;
  attn_context *ctx = p->ctx;
  for (int32_t i = 0; r->pps != NULL && i < r->npp; i++) {
    ring_pp *pp = &r->pps[i];
    attn_plan_destroy(pp->plan);
    attn_tensor *ts[7] = {pp->q, pp->k, pp->v, pp->o, pp->l, pp->acc_o, pp->acc_l};
    for (int j = 0; j < 7; j++) attn_tensor_destroy(ts[j]);
    mpi_free(ctx, pp->klen, (size_t)p->d.B * sizeof(int64_t));
    mpi_free(ctx, pp->qlen, (size_t)p->d.B * sizeof(int64_t));
  }
  mpi_free(ctx, r->pps, (size_t)r->npp_cap * sizeof *r->pps);
  mpi_free(ctx, r->work, (size_t)r->npp_cap * sizeof *r->work);
  mpi_free(ctx, r->step_at, (size_t)(r->nsteps + 1) * sizeof *r->step_at);
  mpi_free(ctx, r->reqs, (size_t)(2 * r->npieces + 1) * sizeof *r->reqs);
  memset(r, 0, sizeof *r);
}

/* ---- execute ---------------------------------------------------------------------------- */

bool ring_tile_lengths(attn_mpi_plan *p, const ring_work *w) {
  ring_pp *pp = &p->ring.pps[w->pp];
  if (pp->klen == NULL && pp->qlen == NULL) return true;
  bool any = false;
  for (int64_t b = 0; b < p->d.B; b++) {
    int64_t kl = pp->nk, ql = pp->nq;
    if (pp->klen) pp->klen[b] = kl = attn_max64(0, attn_min64(pp->nk, p->key_len[b] - w->kpos));
    if (pp->qlen) pp->qlen[b] = ql = attn_max64(0, attn_min64(pp->nq, p->query_len[b] - w->qpos));
    any = any || (kl > 0 && ql > 0);
  }
  return any;
}

static attn_status run_tile(attn_mpi_plan *p, const ring_work *w, const attn_tensor *q,
                            const char *kv) {
  ring_pp *pp = &p->ring.pps[w->pp];
  const attn_dims *d = &p->d;
  const size_t es = mpi_esize(d->dtype);
  if (!ring_tile_lengths(p, w)) return ATTN_OK; /* padding only: nothing to add */
  const size_t ces = mpi_esize(p->cdt);
  const size_t kbytes = (size_t)(d->B * d->Hkv * p->ring.nmax * d->Dk) * es;
  attn_status st;
  if ((st = attn_tensor_set_data(pp->q, (char *)q->data + (size_t)(w->qrow * q->strides[2]) * es)) != ATTN_OK ||
      (st = attn_tensor_set_data(pp->k, (char *)kv + (size_t)(w->krow * d->Dk) * es)) != ATTN_OK ||
      (st = attn_tensor_set_data(pp->v, (char *)kv + kbytes + (size_t)(w->krow * d->Dv) * es)) != ATTN_OK ||
      (st = attn_tensor_set_data(pp->acc_o, p->ring.acc_o + (size_t)(w->qrow * d->Dv) * ces)) != ATTN_OK ||
      (st = attn_tensor_set_data(pp->acc_l, p->ring.acc_l + (size_t)w->qrow * ces)) != ATTN_OK)
    return st;
  if ((st = attn_plan_execute(pp->plan, pp->q, pp->k, pp->v, pp->o, NULL, pp->l)) != ATTN_OK)
    return st;
  return attn_merge_states(p->ctx, pp->acc_o, pp->acc_l, pp->o, pp->l, pp->acc_o, pp->acc_l);
}

void ring_pack_kv(const attn_mpi_plan *p, const attn_tensor *k, const attn_tensor *v, char *buf) {
  const attn_dims *d = &p->d;
  const size_t es = mpi_esize(d->dtype);
  const int64_t n = p->ring.nmax;
  const attn_tensor *ts[2] = {k, v};
  const int64_t dims[2] = {d->Dk, d->Dv};
  char *dst = buf;
  for (int w = 0; w < 2; w++) {
    const attn_tensor *t = ts[w];
    for (int64_t b = 0; b < d->B; b++)
      for (int64_t g = 0; g < d->Hkv; g++)
        for (int64_t i = 0; i < d->Sq; i++)
          memcpy(dst + (size_t)(((b * d->Hkv + g) * n + i) * dims[w]) * es,
                 (const char *)t->data + (size_t)attn_off4(t, b, g, i, 0) * es, (size_t)dims[w] * es);
    dst += (size_t)(d->B * d->Hkv * n * dims[w]) * es;
  }
}

attn_status ring_post(attn_mpi_plan *p, char *buf, bool send, int peer, int tag0,
                      MPI_Request *reqs, int *nreq) {
  const size_t bytes = p->ring.kv_bytes;
  for (int i = 0; i < p->ring.npieces; i++) {
    const size_t off = (size_t)i * MPI_PIECE;
    const size_t len = attn_min64((int64_t)MPI_PIECE, (int64_t)(bytes - off));
    const int rc = send ? MPI_Isend(buf + off, (int)len, MPI_BYTE, peer, tag0 + i, p->comm,
                                    &reqs[*nreq])
                        : MPI_Irecv(buf + off, (int)len, MPI_BYTE, peer, tag0 + i, p->comm,
                                    &reqs[*nreq]);
    attn_status st = mpi_check(p->ctx, rc, send ? "MPI_Isend" : "MPI_Irecv");
    if (st != ATTN_OK) return st;
    (*nreq)++;
  }
  if (send) p->stats.bytes_sent += (int64_t)bytes;
  return ATTN_OK;
}

attn_status ring_wait(attn_mpi_plan *p, int n, MPI_Request *reqs) {
  if (n == 0) return ATTN_OK;
  const double t0 = MPI_Wtime();
  attn_status st = mpi_check(p->ctx, MPI_Waitall(n, reqs, MPI_STATUSES_IGNORE), "MPI_Waitall");
  p->stats.wait_seconds += MPI_Wtime() - t0;
  return st;
}

attn_status ring_progress(attn_mpi_plan *p, int n, MPI_Request *reqs) {
  if (n == 0) return ATTN_OK;
  int flag = 0;
  return mpi_check(p->ctx, MPI_Testall(n, reqs, &flag, MPI_STATUSES_IGNORE), "MPI_Testall");
}

attn_status ring_execute(attn_mpi_plan *p, const attn_tensor *q, const attn_tensor *k,
                         const attn_tensor *v, attn_tensor *out, attn_tensor *lse) {
  (void)out, (void)lse;
  ring_state *r = &p->ring;
  const attn_dims *d = &p->d;
  const size_t ces = mpi_esize(p->cdt);
  const int64_t nrow = d->B * d->H * d->Sq;
  ring_pack_kv(p, k, v, r->kv[0]);
  memset(r->acc_o, 0, (size_t)(nrow * d->Dv) * ces);
  for (int64_t i = 0; i < nrow; i++) {
    if (p->cdt == ATTN_DTYPE_F32) ((float *)(void *)r->acc_l)[i] = -INFINITY;
    else ((double *)(void *)r->acc_l)[i] = -INFINITY;
  }
  const int right = (p->rank + 1) % p->N, left = (p->rank - 1 + p->N) % p->N;
  attn_status st = ATTN_OK, comm = ATTN_OK;
  int cur = 0;
  for (int64_t t = 0; t < r->nsteps; t++) {
    int nreq = 0;
    if (t + 1 < r->nsteps && comm == ATTN_OK) {
      comm = ring_post(p, r->kv[1 - cur], false, left, 0, r->reqs, &nreq);
      if (comm == ATTN_OK) comm = ring_post(p, r->kv[cur], true, right, 0, r->reqs, &nreq);
    }
    /* The step's tiles; after each, let MPI move the next block along. A
     * failed tile stops the computing, never the ring (others wait on it). */
    for (int64_t w = r->step_at[t]; w < r->step_at[t + 1]; w++) {
      if (st == ATTN_OK) st = run_tile(p, &r->work[w], q, r->kv[cur]);
      if (comm == ATTN_OK) comm = ring_progress(p, nreq, r->reqs);
    }
    if (comm == ATTN_OK) comm = ring_wait(p, nreq, r->reqs);
    cur = 1 - cur;
  }
  return comm != ATTN_OK ? comm : st;
}

void ring_store(const attn_mpi_plan *p, attn_tensor *out, attn_tensor *lse) {
  mpi_store4(p->ring.acc_o, p->d.Sq, p->d.Sq, out);
  if (lse != NULL) mpi_store3(p->ring.acc_l, p->d.Sq, lse);
}

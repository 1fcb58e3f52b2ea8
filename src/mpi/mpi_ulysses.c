/* Ulysses (Jacobs et al., 2023): an all-to-all turns sequence shards into
 * head shards — rank r receives every rank's rows of its query heads
 * [h0, h0 + nh) (a balanced split of H) and of the K/V heads they read — the
 * local plan runs on the whole sequence for those heads (any option of the
 * descriptor, in global coordinates), and a second all-to-all returns each
 * rank its rows of every head. Per-head data of the descriptor (ALiBi
 * slopes, dense masks, the Swin bias table, a block layout) is sliced to the
 * rank's heads through views of the caller's tensors. */
#include <inttypes.h>
#include <limits.h>
#include <string.h>

#include "mpi/mpi_internal.h"

enum { XQ, XK, XV, XO, XL, NX };

static int64_t head0(int64_t H, int32_t N, int32_t r) { return (int64_t)r * H / N; }

/* A view of t with dim `dim` narrowed to [h0, h0 + nh) when it has H
 * entries there (else t itself is used: it broadcasts). */
static attn_status head_view(attn_mpi_plan *p, const attn_tensor *t, int dim, attn_tensor **view) {
  *view = NULL;
  if (t == NULL || t->shape[dim] != p->d.H || p->d.H == 1) return ATTN_OK;
  int64_t shape[ATTN_MAX_RANK];
  memcpy(shape, t->shape, sizeof shape);
  shape[dim] = p->uly.nh;
  const size_t es = t->dtype == ATTN_DTYPE_U8 ? 1 : mpi_esize(t->dtype);
  return attn_tensor_wrap(p->ctx, t->dtype, t->rank, shape, t->strides,
                          (char *)t->data + (size_t)(p->uly.h0 * t->strides[dim]) * es, view);
}

/* Point the head views at the caller's tensors' current data. */
static attn_status rebind(attn_mpi_plan *p) {
  uly_state *u = &p->uly;
  const attn_tensor *const *src = u->src;
  attn_tensor *dst[4] = {u->mask_b, u->mask_a, u->swin_b, u->layout};
  const int dims[4] = {1, 1, 1, 0};
  for (int i = 0; i < 4; i++) {
    if (dst[i] == NULL) continue;
    const size_t es = src[i]->dtype == ATTN_DTYPE_U8 ? 1 : mpi_esize(src[i]->dtype);
    attn_status st = attn_tensor_set_data(
        dst[i], (char *)src[i]->data + (size_t)(u->h0 * src[i]->strides[dims[i]]) * es);
    if (st != ATTN_OK) return st;
  }
  return ATTN_OK;
}

static bool fits_int(int64_t x) { return x >= 0 && x <= INT_MAX; }

attn_status uly_setup(attn_mpi_plan *p, const attn_desc *desc) {
  uly_state *u = &p->uly;
  attn_context *ctx = p->ctx;
  const attn_dims *d = &p->d;
  const int32_t N = p->N;
  const int64_t B = d->B, H = d->H, G = d->Hkv, gs = H / G, S = p->S, Sr = d->Sq;
  const size_t es = mpi_esize(d->dtype);
  for (int x = 0; x < NX; x++) {
    u->scnt[x] = mpi_alloc(ctx, (size_t)N * sizeof(int));
    u->sdsp[x] = mpi_alloc(ctx, (size_t)N * sizeof(int));
    u->rcnt[x] = mpi_alloc(ctx, (size_t)N * sizeof(int));
    u->rdsp[x] = mpi_alloc(ctx, (size_t)N * sizeof(int));
    u->row[x] = MPI_DATATYPE_NULL;
    if (!u->scnt[x] || !u->sdsp[x] || !u->rcnt[x] || !u->rdsp[x])
      return mpi_fail(ctx, ATTN_ERR_NO_MEMORY, "attn_mpi_plan_create: out of memory");
  }
  u->rh0 = mpi_alloc(ctx, (size_t)N * 4 * sizeof(int64_t));
  if (u->rh0 == NULL) return mpi_fail(ctx, ATTN_ERR_NO_MEMORY, "attn_mpi_plan_create: out of memory");
  u->rnh = u->rh0 + N, u->rg0 = u->rh0 + 2 * N, u->rng = u->rh0 + 3 * N;
  for (int32_t r = 0; r < N; r++) {
    u->rh0[r] = head0(H, N, r);
    u->rnh[r] = head0(H, N, r + 1) - u->rh0[r];
    u->rg0[r] = u->rh0[r] / gs;
    u->rng[r] = (u->rh0[r] + u->rnh[r] - 1) / gs + 1 - u->rg0[r];
  }
  u->h0 = u->rh0[p->rank], u->nh = u->rnh[p->rank], u->g0 = u->rg0[p->rank], u->ng = u->rng[p->rank];
  /* Counts in rows of each exchange. Sequence → heads: to rank x go our
   * rows of x's heads; heads → sequence (out, lse): to rank x go x's rows of
   * our heads. */
  int64_t stot[NX] = {0}, rtot[NX] = {0};
  for (int32_t x = 0; x < N; x++) {
    const int64_t sc[NX] = {B * u->rnh[x] * Sr, B * u->rng[x] * Sr, B * u->rng[x] * Sr,
                            B * u->nh * p->rows[x], B * u->nh * p->rows[x]};
    const int64_t rc[NX] = {B * u->nh * p->rows[x], B * u->ng * p->rows[x], B * u->ng * p->rows[x],
                            B * u->rnh[x] * Sr, B * u->rnh[x] * Sr};
    for (int e = 0; e < NX; e++) {
      if (!fits_int(sc[e]) || !fits_int(rc[e]) || !fits_int(stot[e]) || !fits_int(rtot[e]))
        return mpi_fail(ctx, ATTN_ERR_UNSUPPORTED,
                        "q: the all-to-all counts exceed MPI's int range (use more ranks or the ring)");
      u->scnt[e][x] = (int)sc[e], u->sdsp[e][x] = (int)stot[e];
      u->rcnt[e][x] = (int)rc[e], u->rdsp[e][x] = (int)rtot[e];
      stot[e] += sc[e], rtot[e] += rc[e];
    }
  }
  if (!fits_int(stot[XQ]) || !fits_int(rtot[XQ]) || !fits_int(stot[XO]) || !fits_int(rtot[XO]))
    return mpi_fail(ctx, ATTN_ERR_UNSUPPORTED, "q: the all-to-all counts exceed MPI's int range");
  const MPI_Datatype et = d->dtype == ATTN_DTYPE_F64 ? MPI_DOUBLE : MPI_FLOAT;
  const int64_t width[NX] = {d->Dq, d->Dk, d->Dv, d->Dv, 1};
  for (int e = 0; e < NX; e++) {
    attn_status st = mpi_check(ctx, MPI_Type_contiguous((int)width[e], et, &u->row[e]), "MPI_Type_contiguous");
    if (st == ATTN_OK) st = mpi_check(ctx, MPI_Type_commit(&u->row[e]), "MPI_Type_commit");
    if (st != ATTN_OK) return st;
  }
  /* Staging: the largest send and receive of any exchange (out and lse
   * come back together, lse after out). */
  int64_t sb = 0, rb = 0;
  for (int e = 0; e < XO; e++) {
    sb = attn_max64(sb, stot[e] * width[e]);
    rb = attn_max64(rb, rtot[e] * width[e]);
  }
  sb = attn_max64(sb, stot[XO] * d->Dv + stot[XL]);
  rb = attn_max64(rb, rtot[XO] * d->Dv + rtot[XL]);
  const int64_t nq = B * u->nh * S, nk = B * u->ng * S;
  const int64_t parts[7] = {sb, rb, nq * d->Dq, nk * d->Dk, nk * d->Dv, nq * d->Dv, nq};
  size_t at[7], total = 0;
  for (int i = 0; i < 7; i++) {
    at[i] = total;
    int64_t bytes;
    if (!attn_mul_ok(parts[i], (int64_t)es, &bytes) || (uint64_t)bytes > SIZE_MAX / 4 - total)
      return mpi_fail(ctx, ATTN_ERR_OVERFLOW, "q: the Ulysses workspace size overflows");
    total += ((size_t)bytes + ATTN_ALIGN - 1) / ATTN_ALIGN * ATTN_ALIGN;
  }
  if ((p->mem = mpi_alloc(ctx, total)) == NULL)
    return mpi_fail(ctx, ATTN_ERR_NO_MEMORY,
                    "attn_mpi_plan_create: cannot allocate %zu bytes of workspace", total);
  p->mem_bytes = total;
  char *base = p->mem;
  u->sbuf = base + at[0], u->rbuf = base + at[1], u->qf = base + at[2], u->kf = base + at[3];
  u->vf = base + at[4], u->of = base + at[5], u->lf = base + at[6];
  /* The local problem: our heads over the whole sequence. */
  u->desc = *desc;
  u->desc.ctx = ctx;
  attn_status st;
  if ((st = head_view(p, desc->mask.bool_mask, 1, &u->mask_b)) != ATTN_OK ||
      (st = head_view(p, desc->mask.add_mask, 1, &u->mask_a)) != ATTN_OK ||
      (st = head_view(p, desc->swin.bias, 1, &u->swin_b)) != ATTN_OK ||
      (st = head_view(p, desc->block.layout, 0, &u->layout)) != ATTN_OK)
    return st;
  u->src[0] = desc->mask.bool_mask, u->src[1] = desc->mask.add_mask;
  u->src[2] = desc->swin.bias, u->src[3] = desc->block.layout;
  if (u->mask_b) u->desc.mask.bool_mask = u->mask_b;
  if (u->mask_a) u->desc.mask.add_mask = u->mask_a;
  if (u->swin_b) u->desc.swin.bias = u->swin_b;
  if (u->layout) u->desc.block.layout = u->layout;
  if (desc->mask.alibi != NULL && desc->mask.n_alibi == H) {
    u->desc.mask.alibi = desc->mask.alibi + u->h0;
    u->desc.mask.n_alibi = u->nh;
  }
  const int64_t sq[4] = {B, u->nh, S, d->Dq}, sk[4] = {B, u->ng, S, d->Dk},
                sv[4] = {B, u->ng, S, d->Dv}, so[4] = {B, u->nh, S, d->Dv};
  if ((st = attn_tensor_wrap(ctx, d->dtype, 4, sq, NULL, u->qf, &u->tq)) != ATTN_OK ||
      (st = attn_tensor_wrap(ctx, d->dtype, 4, sk, NULL, u->kf, &u->tk)) != ATTN_OK ||
      (st = attn_tensor_wrap(ctx, d->dtype, 4, sv, NULL, u->vf, &u->tv)) != ATTN_OK ||
      (st = attn_tensor_wrap(ctx, d->dtype, 4, so, NULL, u->of, &u->to)) != ATTN_OK ||
      (st = attn_tensor_wrap(ctx, d->dtype, 3, so, NULL, u->lf, &u->tl)) != ATTN_OK)
    return st;
  return attn_plan_create(ctx, &u->desc, u->tq, u->tk, u->tv, u->to, NULL,
                          p->meta[4].present ? u->tl : NULL, &u->plan);
}

void uly_destroy(attn_mpi_plan *p) {
  uly_state *u = &p->uly;
  attn_context *ctx = p->ctx;
  attn_plan_destroy(u->plan);
  attn_tensor *ts[9] = {u->tq, u->tk, u->tv, u->to, u->tl, u->mask_b, u->mask_a, u->swin_b, u->layout};
  for (int i = 0; i < 9; i++) attn_tensor_destroy(ts[i]);
  for (int x = 0; x < NX; x++) {
    if (u->row[x] != MPI_DATATYPE_NULL && u->row[x] != 0) MPI_Type_free(&u->row[x]);
    mpi_free(ctx, u->scnt[x], (size_t)p->N * sizeof(int));
    mpi_free(ctx, u->sdsp[x], (size_t)p->N * sizeof(int));
    mpi_free(ctx, u->rcnt[x], (size_t)p->N * sizeof(int));
    mpi_free(ctx, u->rdsp[x], (size_t)p->N * sizeof(int));
  }
  mpi_free(ctx, u->rh0, (size_t)p->N * 4 * sizeof(int64_t));
  memset(u, 0, sizeof *u);
}

/* Our rows of heads [h0, h0 + nh) of t ([B, ·, S_r, w], any strides), for
 * every destination, into the send buffer. */
static void pack_rows(const attn_mpi_plan *p, const attn_tensor *t, int e, const int64_t *h0s,
                      const int64_t *nhs, int64_t w) {
  const uly_state *u = &p->uly;
  const size_t es = mpi_esize(p->d.dtype);
  const int64_t Sr = p->d.Sq;
  for (int32_t x = 0; x < p->N; x++) {
    char *dst = u->sbuf + (size_t)u->sdsp[e][x] * (size_t)w * es;
    for (int64_t b = 0; b < p->d.B; b++)
      for (int64_t h = 0; h < nhs[x]; h++)
        for (int64_t i = 0; i < Sr; i++, dst += (size_t)w * es)
          memcpy(dst, (const char *)t->data + (size_t)attn_off4(t, b, h0s[x] + h, i, 0) * es, (size_t)w * es);
  }
}

/* Received [B, nh, S_x, w] blocks from every rank x into [B, nh, S, w] at the
 * global positions of x's rows. */
static void unpack_seq(const attn_mpi_plan *p, int e, int64_t nh, int64_t w, char *dst) {
  const uly_state *u = &p->uly;
  const size_t es = mpi_esize(p->d.dtype);
  const int64_t S = p->S;
  for (int32_t x = 0; x < p->N; x++) {
    const char *src = u->rbuf + (size_t)u->rdsp[e][x] * (size_t)w * es;
    const int64_t Sx = p->rows[x];
    for (int64_t b = 0; b < p->d.B; b++)
      for (int64_t h = 0; h < nh; h++)
        for (int s = 0; s < 2; s++) {
          const mpi_seg *g = &p->segs[2 * x + s];
          if (g->len == 0) continue;
          memcpy(dst + (size_t)(((b * nh + h) * S + g->pos) * w) * es,
                 src + (size_t)(((b * nh + h) * Sx + g->row) * w) * es, (size_t)(g->len * w) * es);
        }
  }
}

static attn_status exchange(attn_mpi_plan *p, int e, size_t send_off, size_t recv_off) {
  uly_state *u = &p->uly;
  const size_t es = mpi_esize(p->d.dtype);
  (void)es;
  const double t0 = MPI_Wtime();
  attn_status st = mpi_check(p->ctx,
                             MPI_Alltoallv(u->sbuf + send_off, u->scnt[e], u->sdsp[e], u->row[e],
                                           u->rbuf + recv_off, u->rcnt[e], u->rdsp[e], u->row[e],
                                           p->comm),
                             "MPI_Alltoallv");
  p->stats.wait_seconds += MPI_Wtime() - t0;
  for (int32_t x = 0; x < p->N; x++)
    if (x != p->rank) {
      int sz = 0;
      MPI_Type_size(u->row[e], &sz);
      p->stats.bytes_sent += (int64_t)u->scnt[e][x] * sz;
    }
  return st;
}

attn_status uly_execute(attn_mpi_plan *p, const attn_tensor *q, const attn_tensor *k,
                        const attn_tensor *v, attn_tensor *out, attn_tensor *lse) {
  (void)out;
  uly_state *u = &p->uly;
  const attn_dims *d = &p->d;
  const size_t es = mpi_esize(d->dtype);
  /* A local failure must not skip a collective (the others would wait):
   * keep exchanging, report at the end. */
  attn_status local = rebind(p), st = ATTN_OK;
  const attn_tensor *in[3] = {q, k, v};
  char *full[3] = {u->qf, u->kf, u->vf};
  const int64_t w[3] = {d->Dq, d->Dk, d->Dv};
  for (int e = XQ; e <= XV && st == ATTN_OK; e++) {
    pack_rows(p, in[e], e, e == XQ ? u->rh0 : u->rg0, e == XQ ? u->rnh : u->rng, w[e]);
    st = exchange(p, e, 0, 0);
    if (st == ATTN_OK) unpack_seq(p, e, e == XQ ? u->nh : u->ng, w[e], full[e]);
  }
  if (local == ATTN_OK && st == ATTN_OK)
    local = attn_plan_execute(u->plan, u->tq, u->tk, u->tv, u->to, NULL, lse != NULL ? u->tl : NULL);
  /* Back: to rank x its rows of our heads, out then lse. */
  const size_t lse_send = (size_t)u->sdsp[XO][p->N - 1] + (size_t)u->scnt[XO][p->N - 1];
  const size_t lse_recv = (size_t)u->rdsp[XO][p->N - 1] + (size_t)u->rcnt[XO][p->N - 1];
  for (int e = XO; e <= XL; e++) {
    if (e == XL && lse == NULL) break;
    const int64_t we = e == XO ? d->Dv : 1;
    const char *src = e == XO ? u->of : u->lf;
    char *dst = u->sbuf + (e == XO ? 0 : lse_send * (size_t)d->Dv * es);
    for (int32_t x = 0; x < p->N; x++)
      for (int64_t b = 0; b < d->B; b++)
        for (int64_t h = 0; h < u->nh; h++)
          for (int s = 0; s < 2; s++) {
            const mpi_seg *g = &p->segs[2 * x + s];
            if (g->len == 0) continue;
            /* rows of x in its local order: run 0 then run 1 */
            memcpy(dst + (size_t)((u->sdsp[e][x] + (b * u->nh + h) * p->rows[x] + g->row) * we) * es,
                   src + (size_t)(((b * u->nh + h) * p->S + g->pos) * we) * es, (size_t)(g->len * we) * es);
          }
    attn_status s2 = exchange(p, e, e == XO ? 0 : lse_send * (size_t)d->Dv * es,
                              e == XO ? 0 : lse_recv * (size_t)d->Dv * es);
    if (st == ATTN_OK) st = s2;
  }
  return st != ATTN_OK ? st : local;
}

/* rbuf now holds, from every rank x, [B, nh_x, S_r, d_v] of its heads (and
 * after them the lse blocks [B, nh_x, S_r]). */
void uly_store(const attn_mpi_plan *p, attn_tensor *out, attn_tensor *lse) {
  const uly_state *u = &p->uly;
  const attn_dims *d = &p->d;
  const size_t es = mpi_esize(d->dtype);
  const int64_t Sr = d->Sq;
  const size_t lse_recv = (size_t)u->rdsp[XO][p->N - 1] + (size_t)u->rcnt[XO][p->N - 1];
  for (int32_t x = 0; x < p->N; x++) {
    const char *src = u->rbuf + (size_t)u->rdsp[XO][x] * (size_t)d->Dv * es;
    const char *lsrc = u->rbuf + (lse_recv * (size_t)d->Dv + (size_t)u->rdsp[XL][x]) * es;
    for (int64_t b = 0; b < d->B; b++)
      for (int64_t h = 0; h < u->rnh[x]; h++)
        for (int64_t i = 0; i < Sr; i++) {
          const int64_t row = (b * u->rnh[x] + h) * Sr + i, hh = u->rh0[x] + h;
          memcpy((char *)out->data + (size_t)attn_off4(out, b, hh, i, 0) * es,
                 src + (size_t)(row * d->Dv) * es, (size_t)d->Dv * es);
          if (lse != NULL)
            memcpy((char *)lse->data +
                       (size_t)(b * lse->strides[0] + hh * lse->strides[1] + i * lse->strides[2]) * es,
                   lsrc + (size_t)row * es, es);
        }
  }
}

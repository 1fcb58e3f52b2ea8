/* MPI plans: configuration, shard layouts, the collective checks that turn
 * any rank's failure or disagreement into the same failure on every rank,
 * and the dispatch to the ring (mpi_ring.c) or Ulysses (mpi_ulysses.c). */
#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mpi/mpi_internal.h"

/* ---- helpers ---------------------------------------------------------------- */

attn_status mpi_fail(attn_context *ctx, attn_status st, const char *fmt, ...) {
  if (ctx != NULL) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(ctx->last_error, sizeof ctx->last_error, fmt, ap);
    va_end(ap);
  }
  return st;
}

void *mpi_alloc(attn_context *ctx, size_t size) {
  if (size == 0 || size > SIZE_MAX - ATTN_ALIGN) return NULL;
  size_t rounded = (size + ATTN_ALIGN - 1) & ~(size_t)(ATTN_ALIGN - 1);
  void *p = ctx->allocator.alloc != NULL
                ? ctx->allocator.alloc(ctx->allocator.user_data, rounded, ATTN_ALIGN)
                : aligned_alloc(ATTN_ALIGN, rounded);
  if (p != NULL) memset(p, 0, size);
  return p;
}

void mpi_free(attn_context *ctx, void *p, size_t size) {
  if (p == NULL) return;
  size_t rounded = (size + ATTN_ALIGN - 1) & ~(size_t)(ATTN_ALIGN - 1);
  if (ctx->allocator.free != NULL)
    ctx->allocator.free(ctx->allocator.user_data, p, rounded);
  else
    free(p);
}

attn_status mpi_check(attn_context *ctx, int rc, const char *call) {
  if (rc == MPI_SUCCESS) return ATTN_OK;
  char text[MPI_MAX_ERROR_STRING] = "";
  int len = 0;
  if (MPI_Error_string(rc, text, &len) != MPI_SUCCESS) snprintf(text, sizeof text, "code %d", rc);
  return mpi_fail(ctx, ATTN_ERR_INTERNAL, "%s failed: %s", call, text);
}

void attn_mpi_config_init(attn_mpi_config *cfg) {
  if (cfg == NULL) return;
  memset(cfg, 0, sizeof *cfg);
  cfg->struct_size = sizeof *cfg;
  cfg->mode = ATTN_MPI_MODE_AUTO;
  cfg->layout = ATTN_MPI_LAYOUT_CONTIGUOUS;
}

attn_status attn_mpi_shard(attn_mpi_layout layout, int64_t seq_len, int32_t nranks,
                           int32_t rank, int64_t start[2], int64_t len[2]) {
  if (start == NULL || len == NULL) return ATTN_ERR_NULL_ARG;
  if (nranks < 1 || rank < 0 || rank >= nranks || seq_len < nranks ||
      seq_len > INT64_MAX / 4 ||
      (layout != ATTN_MPI_LAYOUT_CONTIGUOUS && layout != ATTN_MPI_LAYOUT_ZIGZAG))
    return ATTN_ERR_INVALID_ARG;
  const int64_t N = nranks, r = rank, S = seq_len;
  if (layout == ATTN_MPI_LAYOUT_CONTIGUOUS) {
    const int64_t q = S / N, m = S % N;
    start[0] = r * q + attn_min64(r, m);
    len[0] = q + (r < m);
    start[1] = start[0] + len[0];
    len[1] = 0;
    return ATTN_OK;
  }
  /* 2N chunks; chunk c starts at c·q + min(c, m). */
  const int64_t C = 2 * N, q = S / C, m = S % C;
  const int64_t c0 = r, c1 = C - 1 - r;
  start[0] = c0 * q + attn_min64(c0, m);
  len[0] = q + (c0 < m);
  start[1] = c1 * q + attn_min64(c1, m);
  len[1] = q + (c1 < m);
  return ATTN_OK;
}

/* ---- the collective failure protocol ------------------------------------------ */

attn_status mpi_agree(attn_mpi_plan *p, MPI_Comm comm, attn_context *ctx, attn_status local) {
  (void)p;
  int rank = 0;
  MPI_Comm_rank(comm, &rank);
  struct {
    int ok, rank;
  } in = {local == ATTN_OK ? 1 : 0, rank}, res = {1, 0};
  attn_status st = mpi_check(ctx, MPI_Allreduce(&in, &res, 1, MPI_2INT, MPI_MINLOC, comm),
                             "MPI_Allreduce (status check)");
  if (st != ATTN_OK) return st;
  if (res.ok == 1) return ATTN_OK;
  /* The lowest failing rank tells everyone its status and message. */
  struct {
    int status;
    char msg[ATTN_ERRMSG_LEN];
  } m;
  memset(&m, 0, sizeof m);
  if (rank == res.rank) {
    m.status = (int)local;
    if (ctx != NULL) snprintf(m.msg, sizeof m.msg, "%s", ctx->last_error);
  }
  st = mpi_check(ctx, MPI_Bcast(&m, (int)sizeof m, MPI_BYTE, res.rank, comm),
                 "MPI_Bcast (status check)");
  if (st != ATTN_OK) return st;
  if (local != ATTN_OK) return local; /* keep our own message */
  return mpi_fail(ctx, (attn_status)m.status, "rank %d failed (%s): %s", res.rank,
                  attn_status_string((attn_status)m.status), m.msg);
}

/* ---- local validation ----------------------------------------------------------- */

static const char *dtype_name(attn_dtype dt) {
  switch (dt) {
    case ATTN_DTYPE_F32: return "f32";
    case ATTN_DTYPE_F64: return "f64";
    case ATTN_DTYPE_BF16: return "bf16";
    case ATTN_DTYPE_F16: return "f16";
    case ATTN_DTYPE_U8: return "u8";
    default: return "unknown";
  }
}

attn_status mpi_check4(attn_context *ctx, const char *name, const attn_tensor *t, attn_dtype dt,
                       bool output) {
  if (t == NULL) return mpi_fail(ctx, ATTN_ERR_NULL_ARG, "%s: must not be NULL", name);
  if (t->rank != 4) return mpi_fail(ctx, ATTN_ERR_SHAPE, "%s: rank %d, expected 4", name, (int)t->rank);
  if (t->dtype != dt)
    return mpi_fail(ctx, ATTN_ERR_DTYPE, "%s: dtype %s, expected %s", name, dtype_name(t->dtype),
                    dtype_name(dt));
  if (t->strides[3] != 1 && t->shape[3] != 1)
    return mpi_fail(ctx, ATTN_ERR_LAYOUT, "%s: the last dim must be contiguous (stride %" PRId64 ")",
                    name, t->strides[3]);
  if (output && (t->strides[2] < t->shape[3] || (t->shape[1] > 1 && t->strides[1] == 0) ||
                 (t->shape[0] > 1 && t->strides[0] == 0)))
    return mpi_fail(ctx, ATTN_ERR_LAYOUT, "%s: an output needs distinct memory for every element",
                    name);
  return ATTN_OK;
}

static attn_status validate(attn_context *ctx, const attn_desc *desc, const attn_mpi_config *cfg,
                            const attn_tensor *q, const attn_tensor *k, const attn_tensor *v,
                            const attn_tensor *out, const attn_tensor *lse, attn_dims *d) {
  attn_status st;
  if (desc == NULL) return mpi_fail(ctx, ATTN_ERR_NULL_ARG, "desc: must not be NULL");
  if (cfg != NULL && cfg->struct_size < offsetof(attn_mpi_config, layout) + sizeof cfg->layout)
    return mpi_fail(ctx, ATTN_ERR_INVALID_ARG,
                    "cfg: struct_size %zu is too small (use attn_mpi_config_init())",
                    cfg->struct_size);
  if (cfg != NULL && (cfg->mode < ATTN_MPI_MODE_AUTO || cfg->mode > ATTN_MPI_MODE_ULYSSES))
    return mpi_fail(ctx, ATTN_ERR_INVALID_ARG, "cfg: unknown mode %d", (int)cfg->mode);
  if (cfg != NULL &&
      (cfg->layout != ATTN_MPI_LAYOUT_CONTIGUOUS && cfg->layout != ATTN_MPI_LAYOUT_ZIGZAG))
    return mpi_fail(ctx, ATTN_ERR_INVALID_ARG, "cfg: unknown layout %d", (int)cfg->layout);
  if (q == NULL) return mpi_fail(ctx, ATTN_ERR_NULL_ARG, "q: must not be NULL");
  const attn_dtype dt = q->dtype, cdt = mpi_compute_dtype(dt);
  if (dt != ATTN_DTYPE_F32 && dt != ATTN_DTYPE_F64 && dt != ATTN_DTYPE_BF16)
    return mpi_fail(ctx, ATTN_ERR_DTYPE, "q: dtype %s; expected f32, f64 or bf16", dtype_name(dt));
  /* bf16 inputs: out bf16 or f32 (the compute type). */
  const attn_dtype odt = out != NULL && dt == ATTN_DTYPE_BF16 && out->dtype == cdt ? cdt : dt;
  if ((st = mpi_check4(ctx, "q", q, dt, false)) != ATTN_OK ||
      (st = mpi_check4(ctx, "k", k, dt, false)) != ATTN_OK ||
      (st = mpi_check4(ctx, "v", v, dt, false)) != ATTN_OK ||
      (st = mpi_check4(ctx, "out", out, odt, true)) != ATTN_OK)
    return st;
  d->dtype = dt;
  d->B = q->shape[0];
  d->H = q->shape[1];
  d->Sq = d->Sk = q->shape[2];
  d->Dq = q->shape[3];
  d->Hkv = k->shape[1];
  d->Dk = k->shape[3];
  d->Dv = v->shape[3];
  if (k->shape[0] != d->B || v->shape[0] != d->B || out->shape[0] != d->B)
    return mpi_fail(ctx, ATTN_ERR_SHAPE, "%s: batch differs from q's %" PRId64,
                    k->shape[0] != d->B ? "k" : v->shape[0] != d->B ? "v" : "out", d->B);
  if (k->shape[2] != d->Sq || v->shape[2] != d->Sq || out->shape[2] != d->Sq)
    return mpi_fail(ctx, ATTN_ERR_SHAPE,
                    "%s: %" PRId64 " rows, but q has %" PRId64 " (each rank's q, k, v and out "
                    "hold the same positions of the sequence)",
                    k->shape[2] != d->Sq ? "k" : v->shape[2] != d->Sq ? "v" : "out",
                    k->shape[2] != d->Sq ? k->shape[2] : v->shape[2] != d->Sq ? v->shape[2] : out->shape[2],
                    d->Sq);
  if (v->shape[1] != d->Hkv || d->H % d->Hkv != 0)
    return mpi_fail(ctx, ATTN_ERR_SHAPE, "%s: %" PRId64 " key/value heads do not fit q's %" PRId64,
                    v->shape[1] != d->Hkv ? "v" : "k", v->shape[1] != d->Hkv ? v->shape[1] : d->Hkv,
                    d->H);
  if (out->shape[1] != d->H || out->shape[3] != d->Dv)
    return mpi_fail(ctx, ATTN_ERR_SHAPE, "out: shape must be [B, H, S_r, d_v] of q and v");
  const bool projected = desc->score.kind == ATTN_SCORE_GENERAL || desc->score.kind == ATTN_SCORE_ADDITIVE;
  if (!projected && d->Dk != d->Dq)
    return mpi_fail(ctx, ATTN_ERR_SHAPE, "k: head dim %" PRId64 " differs from q's %" PRId64, d->Dk, d->Dq);
  if (lse != NULL) {
    if (lse->rank != 3 || lse->dtype != cdt)
      return mpi_fail(ctx, lse->rank != 3 ? ATTN_ERR_SHAPE : ATTN_ERR_DTYPE,
                      "lse: expected rank 3 [B, H, S_r] of dtype %s", dtype_name(cdt));
    if (lse->shape[0] != d->B || lse->shape[1] != d->H || lse->shape[2] != d->Sq)
      return mpi_fail(ctx, ATTN_ERR_SHAPE, "lse: shape must be [B, H, S_r] of q");
    if ((lse->shape[2] > 1 && lse->strides[2] == 0) || (lse->shape[1] > 1 && lse->strides[1] == 0) ||
        (lse->shape[0] > 1 && lse->strides[0] == 0))
      return mpi_fail(ctx, ATTN_ERR_LAYOUT, "lse: an output needs distinct memory for every element");
  }
  return ATTN_OK;
}

/* ---- the signature every rank must share ----------------------------------------- */

enum {
  SIG_STATUS, SIG_VERSION, SIG_DTYPE, SIG_B, SIG_H, SIG_HKV, SIG_DQ, SIG_DK, SIG_DV, SIG_MODE,
  SIG_LAYOUT, SIG_VARIANT, SIG_SCORE, SIG_SCALE, SIG_CAUSAL, SIG_WL, SIG_WR, SIG_KLEN, SIG_QLEN,
  SIG_ALIBI, SIG_SOFTCAP, SIG_BOOL, SIG_ADD, SIG_LSE, SIG_EXTRA, SIG_ROWS, SIG_N
};
static const char *const sig_names[SIG_N] = {
    "status", "library version", "dtype", "batch B", "heads H", "key/value heads H_kv",
    "d_q", "d_k", "d_v", "cfg mode", "cfg layout", "variant", "score kind", "scale", "causal",
    "window left", "window right", "key_lengths", "query_lengths", "alibi slopes", "softcap",
    "bool_mask", "additive_mask", "lse (present)", "variant settings", "rows"};

static uint64_t fnv(uint64_t h, const void *data, size_t n) {
  const unsigned char *c = data;
  for (size_t i = 0; i < n; i++) h = (h ^ c[i]) * 1099511628211ULL;
  return h;
}
static int64_t bits_of(double x) {
  int64_t b;
  memcpy(&b, &x, sizeof b);
  return b;
}
static int64_t hash_lengths(const int64_t *a, int64_t n) {
  if (a == NULL) return -1;
  return (int64_t)(fnv(14695981039346656037ULL, a, (size_t)n * sizeof *a) >> 1);
}

static void signature(int64_t *s, const attn_desc *dd, const attn_mpi_config *cfg,
                      const attn_dims *d, attn_dtype out_dtype, const attn_tensor *lse,
                      int64_t rows) {
  s[SIG_VERSION] = ATTN_VERSION_NUMBER;
  s[SIG_DTYPE] = d->dtype * 16 + out_dtype;
  s[SIG_B] = d->B, s[SIG_H] = d->H, s[SIG_HKV] = d->Hkv;
  s[SIG_DQ] = d->Dq, s[SIG_DK] = d->Dk, s[SIG_DV] = d->Dv;
  s[SIG_MODE] = cfg->mode, s[SIG_LAYOUT] = cfg->layout;
  s[SIG_VARIANT] = dd->variant, s[SIG_SCORE] = dd->score.kind, s[SIG_SCALE] = bits_of(dd->score.scale);
  const struct attn_desc_mask *m = &dd->mask;
  s[SIG_CAUSAL] = m->causal, s[SIG_WL] = m->win_left, s[SIG_WR] = m->win_right;
  s[SIG_KLEN] = hash_lengths(m->key_lengths, m->n_key_lengths);
  s[SIG_QLEN] = hash_lengths(m->query_lengths, m->n_query_lengths);
  s[SIG_ALIBI] = m->alibi ? (int64_t)(fnv(1469598103934665603ULL, m->alibi, (size_t)m->n_alibi * 8) >> 1) : -1;
  s[SIG_SOFTCAP] = bits_of(m->softcap);
  s[SIG_BOOL] = m->bool_mask != NULL, s[SIG_ADD] = m->add_mask != NULL;
  s[SIG_LSE] = lse != NULL;
  uint64_t h = 1469598103934665603ULL;
  h = fnv(h, &dd->swin.h, sizeof dd->swin.h * 4);
  h = fnv(h, &dd->block.size, sizeof(int64_t) * 4);
  h = fnv(h, &dd->block.seed, sizeof dd->block.seed);
  h = fnv(h, &dd->global.n, sizeof dd->global.n);
  if (dd->global.idx) h = fnv(h, dd->global.idx, (size_t)dd->global.n * sizeof(int64_t));
  h = fnv(h, &dd->features, sizeof dd->features);
  h = fnv(h, &dd->lowrank.rank, sizeof dd->lowrank.rank);
  s[SIG_EXTRA] = (int64_t)(h >> 1);
  s[SIG_ROWS] = rows;
}

/* Why the ring cannot run desc (NULL: it can). */
static const char *ring_unsupported(const attn_desc *d) {
  if (d->variant != ATTN_VARIANT_EXACT) return "variant: the ring runs exact attention only";
  if (d->mask.alibi != NULL) return "alibi: not supported by the ring (use Ulysses)";
  if (d->mask.bool_mask != NULL) return "bool_mask: not supported by the ring (use Ulysses)";
  if (d->mask.add_mask != NULL) return "additive_mask: not supported by the ring (use Ulysses)";
  if (d->mask.causal == ATTN_CAUSAL_BOTTOM_RIGHT &&
      (d->mask.key_lengths != NULL || d->mask.query_lengths != NULL))
    return "causal: BOTTOM_RIGHT with key/query lengths is not supported by the ring (use "
           "Ulysses or TOP_LEFT)";
  return NULL;
}

static const char *ulysses_unsupported(const attn_desc *d, const attn_dims *dims, int32_t N) {
  if (dims->H < N) return "mode: Ulysses needs at least as many heads as ranks";
  if (dims->dtype == ATTN_DTYPE_BF16) return "q: bf16 runs over the ring only (Ulysses: f32, f64)";
  switch (d->variant) {
    case ATTN_VARIANT_EXACT:
    case ATTN_VARIANT_SWIN:
    case ATTN_VARIANT_LONGFORMER:
    case ATTN_VARIANT_BLOCK_SPARSE:
    case ATTN_VARIANT_LINEAR_ELU: return NULL;
    default:
      return "variant: BigBird's, Performer's and Linformer's random draws depend on the head "
             "count; not supported over MPI";
  }
}

/* Compare the gathered signatures; the same verdict on every rank. */
static attn_status compare(attn_mpi_plan *p, const int64_t *all, attn_context *ctx,
                           const attn_mpi_config *cfg) {
  const int32_t N = p->N;
  for (int32_t r = 1; r < N; r++)
    for (int f = SIG_VERSION; f < SIG_ROWS; f++)
      if (all[r * SIG_N + f] != all[f])
        return mpi_fail(ctx, ATTN_ERR_MISMATCH,
                        "ranks disagree: rank %d has %s = %" PRId64 ", rank 0 has %" PRId64
                        " (every rank must pass the same shapes but S_r, dtype, descriptor "
                        "and config)",
                        (int)r, sig_names[f], all[r * SIG_N + f], all[f]);
  int64_t S = 0;
  for (int32_t r = 0; r < N; r++) {
    p->rows[r] = all[r * SIG_N + SIG_ROWS];
    S += p->rows[r];
  }
  p->S = S;
  if (S < N) return mpi_fail(ctx, ATTN_ERR_SHAPE, "q: %" PRId64 " tokens over %d ranks", S, (int)N);
  for (int32_t r = 0; r < N; r++) {
    int64_t start[2], len[2];
    if (cfg->layout == ATTN_MPI_LAYOUT_ZIGZAG) {
      attn_mpi_shard(ATTN_MPI_LAYOUT_ZIGZAG, S, N, r, start, len);
      if (len[0] + len[1] != p->rows[r])
        return mpi_fail(ctx, ATTN_ERR_SHAPE,
                        "q: rank %d holds %" PRId64 " rows; the zig-zag layout of %" PRId64
                        " tokens over %d ranks gives it %" PRId64 " (see attn_mpi_shard())",
                        (int)r, p->rows[r], S, (int)N, len[0] + len[1]);
    } else {
      start[0] = r == 0 ? 0 : p->segs[2 * (r - 1)].pos + p->rows[r - 1];
      len[0] = p->rows[r];
      start[1] = start[0] + len[0];
      len[1] = 0;
    }
    p->segs[2 * r] = (mpi_seg){0, start[0], len[0]};
    p->segs[2 * r + 1] = (mpi_seg){len[0], start[1], len[1]};
  }
  const attn_desc *d = p->udesc;
  const struct attn_desc_mask *m = &d->mask;
  const int64_t *lens[2] = {m->key_lengths, m->query_lengths};
  const int64_t nlens[2] = {m->n_key_lengths, m->n_query_lengths};
  for (int i = 0; i < 2; i++) {
    if (lens[i] == NULL) continue;
    if (nlens[i] != p->d.B)
      return mpi_fail(ctx, ATTN_ERR_SHAPE, "%s: %" PRId64 " lengths given, batch is %" PRId64,
                      i ? "query_lengths" : "key_lengths", nlens[i], p->d.B);
    for (int64_t b = 0; b < p->d.B; b++)
      if (lens[i][b] < 0 || lens[i][b] > S)
        return mpi_fail(ctx, ATTN_ERR_INVALID_ARG,
                        "%s: lengths[%" PRId64 "] = %" PRId64 " is outside [0, S = %" PRId64 "]",
                        i ? "query_lengths" : "key_lengths", b, lens[i][b], S);
  }
  /* The mode. */
  const char *why_ring = ring_unsupported(d);
  const char *why_uly = ulysses_unsupported(d, &p->d, N);
  attn_mpi_mode mode = cfg->mode;
  if (mode == ATTN_MPI_MODE_AUTO) {
    const bool even = p->d.H % N == 0 && (p->d.Hkv % N == 0 || N % p->d.Hkv == 0);
    if (why_uly == NULL && (even || why_ring != NULL))
      mode = ATTN_MPI_MODE_ULYSSES;
    else if (why_ring == NULL)
      mode = ATTN_MPI_MODE_RING;
    else
      return mpi_fail(ctx, ATTN_ERR_UNSUPPORTED, "%s", why_ring);
  }
  if (mode == ATTN_MPI_MODE_RING && why_ring != NULL)
    return mpi_fail(ctx, ATTN_ERR_UNSUPPORTED, "%s", why_ring);
  if (mode == ATTN_MPI_MODE_ULYSSES && why_uly != NULL)
    return mpi_fail(ctx, ATTN_ERR_UNSUPPORTED, "%s", why_uly);
  p->mode = mode;
  return ATTN_OK;
}

/* ---- plans ------------------------------------------------------------------------ */

/* attn_tmeta_record is hidden in libattn: the same record here. */
void mpi_meta_record(attn_tmeta *m, const attn_tensor *t) {
  memset(m, 0, sizeof *m);
  if (t == NULL) return;
  m->present = true;
  m->dtype = t->dtype;
  m->rank = t->rank;
  memcpy(m->shape, t->shape, sizeof m->shape);
  memcpy(m->strides, t->strides, sizeof m->strides);
}

static void plan_free(attn_mpi_plan *p) {
  if (p == NULL) return;
  attn_context *ctx = p->ctx;
  ring_destroy(p);
  uly_destroy(p);
  mpi_free(ctx, p->mem, p->mem_bytes);
  mpi_free(ctx, p->rows, (size_t)p->N * sizeof *p->rows);
  mpi_free(ctx, p->segs, (size_t)p->N * 2 * sizeof *p->segs);
  if (p->comm != MPI_COMM_NULL) MPI_Comm_free(&p->comm);
  mpi_free(ctx, p, sizeof *p);
}

attn_status attn_mpi_plan_create(attn_context *ctx, MPI_Comm comm, const attn_desc *desc,
                                 const attn_mpi_config *cfg, const attn_tensor *q,
                                 const attn_tensor *k, const attn_tensor *v,
                                 const attn_tensor *out, const attn_tensor *lse,
                                 attn_mpi_plan **plan) {
  /* Local-only failures: nobody else can be told. */
  int inited = 0;
  MPI_Initialized(&inited);
  if (!inited) return mpi_fail(ctx, ATTN_ERR_INVALID_ARG, "comm: MPI is not initialised");
  if (comm == MPI_COMM_NULL) return mpi_fail(ctx, ATTN_ERR_NULL_ARG, "comm: MPI_COMM_NULL");
  MPI_Comm dup = MPI_COMM_NULL;
  int rc = MPI_Comm_dup(comm, &dup);
  if (rc != MPI_SUCCESS) return mpi_check(ctx, rc, "MPI_Comm_dup");
  MPI_Comm_set_errhandler(dup, MPI_ERRORS_RETURN);
  int N = 1, rank = 0;
  MPI_Comm_size(dup, &N);
  MPI_Comm_rank(dup, &rank);

  /* Everything below is agreed on collectively. */
  attn_status st = ATTN_OK;
  if (ctx == NULL)
    st = ATTN_ERR_NULL_ARG; /* no message buffer: the others get the status */
  else
    ctx->last_error[0] = '\0';
  if (st == ATTN_OK && plan == NULL) st = mpi_fail(ctx, ATTN_ERR_NULL_ARG, "plan: must not be NULL");
  if (st == ATTN_OK && attn_version_number() != ATTN_VERSION_NUMBER)
    st = mpi_fail(ctx, ATTN_ERR_UNSUPPORTED,
                  "libattn_mpi %s needs libattn %s exactly, found %s (they come from one build)",
                  ATTN_VERSION_STRING, ATTN_VERSION_STRING, attn_version_string());
  attn_mpi_config c;
  attn_mpi_config_init(&c);
  if (cfg != NULL && cfg->struct_size >= sizeof c) {
    c.mode = cfg->mode;
    c.layout = cfg->layout;
  }
  attn_dims d;
  memset(&d, 0, sizeof d);
  if (st == ATTN_OK) st = validate(ctx, desc, cfg, q, k, v, out, lse, &d);
  attn_mpi_plan *p = NULL;
  if (st == ATTN_OK) {
    p = mpi_alloc(ctx, sizeof *p);
    if (p != NULL) {
      p->ctx = ctx;
      p->comm = MPI_COMM_NULL;
      p->N = N;
      p->rank = rank;
      p->rows = mpi_alloc(ctx, (size_t)N * sizeof *p->rows);
      p->segs = mpi_alloc(ctx, (size_t)N * 2 * sizeof *p->segs);
    }
    if (p == NULL || p->rows == NULL || p->segs == NULL)
      st = mpi_fail(ctx, ATTN_ERR_NO_MEMORY, "attn_mpi_plan_create: out of memory");
  }
  int64_t *all = NULL;
  if (st == ATTN_OK && (all = mpi_alloc(ctx, (size_t)N * SIG_N * sizeof *all)) == NULL)
    st = mpi_fail(ctx, ATTN_ERR_NO_MEMORY, "attn_mpi_plan_create: out of memory");
  st = mpi_agree(p, dup, ctx, st);
  if (st == ATTN_OK) {
    int64_t sig[SIG_N] = {0};
    signature(sig, desc, &c, &d, out->dtype, lse, d.Sq);
    st = mpi_check(ctx, MPI_Allgather(sig, SIG_N, MPI_INT64_T, all, SIG_N, MPI_INT64_T, dup),
                   "MPI_Allgather (argument check)");
    if (st == ATTN_OK) {
      p->d = d;
      p->cdt = mpi_compute_dtype(d.dtype);
      p->udesc = desc;
      p->score = desc->score.kind;
      p->layout = c.layout;
      st = compare(p, all, ctx, &c); /* the same verdict everywhere */
    }
    /* An MPI failure is local: make it collective. */
    st = mpi_agree(p, dup, ctx, st);
  }
  if (all != NULL) mpi_free(ctx, all, (size_t)N * SIG_N * sizeof *all);
  if (st == ATTN_OK) {
    p->comm = dup;
    dup = MPI_COMM_NULL;
    p->key_len = desc->mask.key_lengths;
    p->query_len = desc->mask.query_lengths;
    mpi_meta_record(&p->meta[0], q);
    mpi_meta_record(&p->meta[1], k);
    mpi_meta_record(&p->meta[2], v);
    mpi_meta_record(&p->meta[3], out);
    mpi_meta_record(&p->meta[4], lse);
    st = p->mode == ATTN_MPI_MODE_RING ? ring_setup(p) : uly_setup(p, desc);
    st = mpi_agree(p, p->comm, ctx, st);
  }
  if (st != ATTN_OK) {
    plan_free(p);
    if (dup != MPI_COMM_NULL) MPI_Comm_free(&dup);
    return st;
  }
  p->udesc = NULL; /* the caller may destroy the descriptor now, as for attn_plan_create() */
  p->stats.mode = p->mode;
  p->stats.ranks = p->N;
  p->stats.rank = p->rank;
  p->stats.seq_len = p->S;
  p->stats.steps = p->mode == ATTN_MPI_MODE_RING ? p->ring.nsteps : 0;
  p->stats.idle_steps = p->mode == ATTN_MPI_MODE_RING ? p->ring.idle : 0;
  *plan = p;
  return ATTN_OK;
}

/* attn_tmeta_matches is hidden in libattn: the same test here. */
static bool meta_matches(const attn_tmeta *m, const attn_tensor *t) {
  if (!m->present) return t == NULL;
  if (t == NULL || t->data == NULL || t->dtype != m->dtype || t->rank != m->rank) return false;
  for (int32_t i = 0; i < t->rank; i++)
    if (t->shape[i] != m->shape[i] || t->strides[i] != m->strides[i]) return false;
  return true;
}

attn_status mpi_check_tensors(attn_context *ctx, const attn_tmeta *metas,
                              const attn_tensor *const *ts, const char *const *names, int n,
                              int required) {
  for (int i = 0; i < n; i++) {
    if (i < required && ts[i] == NULL)
      return mpi_fail(ctx, ATTN_ERR_NULL_ARG, "%s: must not be NULL", names[i]);
    if (!meta_matches(&metas[i], ts[i]))
      return mpi_fail(ctx, ATTN_ERR_MISMATCH, "%s: %s", names[i],
                      !metas[i].present ? "the plan was created without it; pass NULL"
                      : ts[i] == NULL   ? "the plan was created with it; pass it"
                                        : "dtype/shape/strides differ from the plan's tensor");
  }
  return ATTN_OK;
}

attn_status mpi_execute_checks(attn_mpi_plan *p, attn_status local) {
  attn_context *ctx = p->ctx;
  attn_status st = local;
  const int64_t *lens[2] = {p->key_len, p->query_len};
  for (int i = 0; i < 2 && st == ATTN_OK; i++)
    for (int64_t b = 0; lens[i] != NULL && b < p->d.B; b++)
      if (lens[i][b] < 0 || lens[i][b] > p->S) {
        st = mpi_fail(ctx, ATTN_ERR_INVALID_ARG,
                      "%s: lengths[%" PRId64 "] = %" PRId64 " is outside [0, S = %" PRId64 "]",
                      i ? "query_lengths" : "key_lengths", b, lens[i][b], p->S);
        break;
      }
  st = mpi_agree(p, p->comm, ctx, st);
  if (st != ATTN_OK) return st;
  /* The borrowed lengths must agree (their contents may change per execute). */
  if (p->key_len != NULL || p->query_len != NULL) {
    int64_t h[4] = {hash_lengths(p->key_len, p->d.B), hash_lengths(p->query_len, p->d.B)}, r[4];
    h[2] = -h[0], h[3] = -h[1];
    st = mpi_check(ctx, MPI_Allreduce(h, r, 4, MPI_INT64_T, MPI_MAX, p->comm), "MPI_Allreduce");
    if (st == ATTN_OK && (r[0] != -r[2] || r[1] != -r[3]))
      st = mpi_fail(ctx, ATTN_ERR_MISMATCH, "%s: the ranks' lengths differ",
                    r[0] != -r[2] ? "key_lengths" : "query_lengths");
    st = mpi_agree(p, p->comm, ctx, st);
  }
  return st;
}

attn_status attn_mpi_plan_execute(attn_mpi_plan *p, const attn_tensor *q, const attn_tensor *k,
                                  const attn_tensor *v, attn_tensor *out, attn_tensor *lse) {
  if (p == NULL) return ATTN_ERR_NULL_ARG;
  attn_context *ctx = p->ctx;
  ctx->last_error[0] = '\0';
  const double t0 = MPI_Wtime();
  /* Local checks, then agreement (nothing is sent before everyone is fine). */
  const attn_tensor *ts[5] = {q, k, v, out, lse};
  static const char *const names[5] = {"q", "k", "v", "out", "lse"};
  attn_status st = mpi_check_tensors(ctx, p->meta, ts, names, 5, 4);
  if ((st = mpi_execute_checks(p, st)) != ATTN_OK) return st;
  p->stats.wait_seconds = 0;
  p->stats.bytes_sent = 0;
  st = p->mode == ATTN_MPI_MODE_RING ? ring_execute(p, q, k, v, out, lse)
                                     : uly_execute(p, q, k, v, out, lse);
  st = mpi_agree(p, p->comm, ctx, st);
  if (st != ATTN_OK) return st;
  /* Everyone succeeded: now write the outputs. */
  if (p->mode == ATTN_MPI_MODE_RING)
    ring_store(p, out, lse);
  else
    uly_store(p, out, lse);
  p->stats.seconds = MPI_Wtime() - t0;
  return ATTN_OK;
}

attn_status attn_mpi_plan_stats(const attn_mpi_plan *p, attn_mpi_stats *stats) {
  if (p == NULL || stats == NULL) return ATTN_ERR_NULL_ARG;
  if (stats->struct_size < offsetof(attn_mpi_stats, ranks))
    return mpi_fail(p->ctx, ATTN_ERR_INVALID_ARG, "stats: struct_size %zu is too small",
                    stats->struct_size);
  const size_t n = stats->struct_size < sizeof *stats ? stats->struct_size : sizeof *stats;
  attn_mpi_stats s = p->stats;
  s.struct_size = stats->struct_size;
  memcpy(stats, &s, n);
  return ATTN_OK;
}

void attn_mpi_plan_destroy(attn_mpi_plan *plan) { plan_free(plan); }

/* ---- output stores -------------------------------------------------------------------- */

/* f32 → bf16, round to nearest even (NaN stays NaN). */
static uint16_t to_bf16(float x) {
  uint32_t u;
  memcpy(&u, &x, sizeof u);
  if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40u);
  u += 0x7fffu + ((u >> 16) & 1u);
  return (uint16_t)(u >> 16);
}

void mpi_store4(const char *src, int64_t n, int64_t stride, attn_tensor *dst) {
  const bool bf16 = dst->dtype == ATTN_DTYPE_BF16;
  const size_t es = mpi_esize(dst->dtype), ses = bf16 ? sizeof(float) : es;
  const int64_t B = dst->shape[0], H = dst->shape[1], D = dst->shape[3];
  for (int64_t b = 0; b < B; b++)
    for (int64_t h = 0; h < H; h++)
      for (int64_t i = 0; i < n; i++) {
        char *d = (char *)dst->data + (size_t)attn_off4(dst, b, h, i, 0) * es;
        const char *s = src + (size_t)(((b * H + h) * stride + i) * D) * ses;
        if (!bf16) {
          memcpy(d, s, (size_t)D * es);
          continue;
        }
        for (int64_t x = 0; x < D; x++) {
          float f;
          memcpy(&f, s + (size_t)x * sizeof f, sizeof f);
          const uint16_t h16 = to_bf16(f);
          memcpy(d + (size_t)x * 2, &h16, 2);
        }
      }
}

void mpi_store3(const char *src, int64_t n, attn_tensor *dst) {
  const size_t es = mpi_esize(dst->dtype);
  const int64_t B = dst->shape[0], H = dst->shape[1];
  for (int64_t b = 0; b < B; b++)
    for (int64_t h = 0; h < H; h++)
      for (int64_t i = 0; i < n; i++)
        memcpy((char *)dst->data +
                   (size_t)(b * dst->strides[0] + h * dst->strides[1] + i * dst->strides[2]) * es,
               src + (size_t)((b * H + h) * n + i) * es, es);
}

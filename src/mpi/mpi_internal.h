/* libattn_mpi internals. The component links libattn.so and calls only its
 * public functions (plans, attn_merge_states, tensors); it includes
 * core/internal.h for the layouts of the structs it reads (the descriptor's
 * settings, a tensor's metadata, the context's allocator and message buffer),
 * which is why it must come from the same build as libattn (plan creation
 * checks the version). Not installed. */
#ifndef ATTN_MPI_INTERNAL_H
#define ATTN_MPI_INTERNAL_H

#include <mpi.h>

#include "attn/mpi.h"
#include "core/internal.h"

/* ---- small helpers (mpi_util.c): this library's own copies of what the
 * core keeps hidden ---------------------------------------------------------- */
attn_status mpi_fail(attn_context *ctx, attn_status st, const char *fmt, ...) ATTN_PRINTF(3, 4);
void *mpi_alloc(attn_context *ctx, size_t size);
void mpi_free(attn_context *ctx, void *p, size_t size);
/* An MPI return code as a status (ATTN_ERR_INTERNAL naming the call). */
attn_status mpi_check(attn_context *ctx, int rc, const char *call);
static inline size_t mpi_esize(attn_dtype dt) {
  return dt == ATTN_DTYPE_F64 ? 8 : dt == ATTN_DTYPE_BF16 ? 2 : 4;
}
/* The type the plan computes and accumulates in: f32 for bf16 inputs. */
static inline attn_dtype mpi_compute_dtype(attn_dtype dt) {
  return dt == ATTN_DTYPE_BF16 ? ATTN_DTYPE_F32 : dt;
}

/* A run of a rank's rows: local rows [row, row + len) are global positions
 * [pos, pos + len). */
typedef struct mpi_seg {
  int64_t row, pos, len;
} mpi_seg;

/* One local tile computation of a ring step: query rows [qrow, qrow + nq)
 * (global qpos..) against rows [krow, krow + nk) of the K/V block held
 * (global kpos..), run by core plan `pp` (which fixes nq, nk and the band). */
typedef struct ring_work {
  int32_t pp;
  int64_t qrow, qpos, krow, kpos;
} ring_work;

/* A core plan for one tile shape and band, with the tensors it executes on
 * (metadata fixed, data re-pointed per tile) and the accumulator views its
 * result merges into. */
typedef struct ring_pp {
  int64_t nq, nk, left, right; /* band in the tile's coordinates (UNBOUNDED = none) */
  attn_desc desc;              /* the user's settings, mask options replaced */
  int64_t *klen, *qlen;        /* [B] per-tile lengths (or NULL), rewritten per tile */
  attn_plan *plan;
  attn_tensor *q, *k, *v, *o, *l; /* o, l: the partial result (workspace) */
  attn_tensor *acc_o, *acc_l;     /* rows of the accumulator */
} ring_pp;

typedef struct ring_state {
  int64_t nmax;      /* most rows of any rank: K/V block row stride */
  int64_t chunk;     /* query rows per tile at most (progress granularity) */
  int64_t nsteps;    /* ring steps run */
  int64_t idle;      /* of which without a tile for this rank */
  int32_t npp;
  int64_t npp_cap;   /* entries allocated in pps and work */
  ring_pp *pps;
  int64_t nwork;
  ring_work *work;   /* [nwork], by step */
  int64_t *step_at;  /* [nsteps + 1]: work of step t is [step_at[t], step_at[t+1]) */
  size_t kv_bytes;   /* one K/V buffer: [B, H_kv, nmax, d_k] then [B, H_kv, nmax, d_v] */
  int npieces;       /* messages per block (≤ 1 GiB each) */
  MPI_Request *reqs; /* [2 · npieces] */
  char *kv[2];       /* the two K/V buffers */
  char *acc_o, *acc_l, *part_o, *part_l; /* accumulator [B,H,S_r,·], partial [B,H,chunk,·] */
} ring_state;

typedef struct uly_state {
  int64_t h0, nh, g0, ng;   /* this rank's query heads [h0, h0+nh), K/V heads [g0, g0+ng) */
  int64_t *rh0, *rnh, *rg0, *rng; /* every rank's, [N] each */
  int *scnt[5], *sdsp[5], *rcnt[5], *rdsp[5]; /* alltoallv counts (rows) for q, k, v, out, lse */
  MPI_Datatype row[5];      /* a row of d_q, d_k, d_v, d_v elements, and 1 element */
  char *sbuf, *rbuf;        /* staging, sized for the largest exchange */
  char *qf, *kf, *vf, *of, *lf; /* the head shard over the whole sequence */
  attn_desc desc;           /* the user's settings with per-head data sliced */
  attn_tensor *tq, *tk, *tv, *to, *tl; /* over qf.. (lf only with lse) */
  attn_tensor *mask_b, *mask_a, *swin_b, *layout; /* head slices of borrowed tensors (or NULL) */
  const attn_tensor *src[4]; /* the borrowed tensors they slice (their data is re-read per execute) */
  attn_plan *plan;
} uly_state;

struct attn_mpi_plan {
  attn_context *ctx;
  MPI_Comm comm;
  int32_t N, rank;
  attn_mpi_mode mode;
  attn_mpi_layout layout;
  attn_dims d;            /* B, H, Hkv, Dq, Dk, Dv, dtype (of q, k, v); Sq = Sk = this rank's S_r */
  attn_dtype cdt;         /* compute dtype: lse, accumulators (f32 for bf16 inputs) */
  int64_t S;              /* global length */
  const attn_desc *udesc; /* the caller's descriptor: read during creation only */
  attn_score score;       /* the descriptor's score kind */
  const int64_t *key_len, *query_len; /* the user's global lengths ([B] or NULL) */
  int64_t *rows;          /* [N] every rank's S_r */
  mpi_seg *segs;          /* [N][2] every rank's runs */
  attn_tmeta meta[5];     /* q, k, v, out, lse */
  ring_state ring;
  uly_state uly;
  void *mem;              /* one allocation for workspace buffers */
  size_t mem_bytes;
  attn_mpi_stats stats;
};

/* The collective failure protocol: every rank contributes its local status
 * (0 = fine); the lowest failing rank's status and message reach everyone.
 * Returns the status this rank must return (its own when it failed). */
attn_status mpi_agree(attn_mpi_plan *p, MPI_Comm comm, attn_context *ctx, attn_status local);

attn_status ring_setup(attn_mpi_plan *p);
attn_status ring_execute(attn_mpi_plan *p, const attn_tensor *q, const attn_tensor *k,
                         const attn_tensor *v, attn_tensor *out, attn_tensor *lse);
/* Write the result of the last execute into out/lse (after the agreement). */
void ring_store(const attn_mpi_plan *p, attn_tensor *out, attn_tensor *lse);
void ring_destroy(attn_mpi_plan *p);

attn_status uly_setup(attn_mpi_plan *p, const attn_desc *desc);
attn_status uly_execute(attn_mpi_plan *p, const attn_tensor *q, const attn_tensor *k,
                        const attn_tensor *v, attn_tensor *out, attn_tensor *lse);
void uly_store(const attn_mpi_plan *p, attn_tensor *out, attn_tensor *lse);
void uly_destroy(attn_mpi_plan *p);

/* Own K and V (any strides) into a block buffer [B, H_kv, nmax, d_k] then
 * [B, H_kv, nmax, d_v]. */
void ring_pack_kv(const attn_mpi_plan *p, const attn_tensor *k, const attn_tensor *v, char *buf);
/* Set the per-tile key/query lengths of w's core plan from the global ones;
 * false when the tile keeps no (query, key) pair (padding only). */
bool ring_tile_lengths(attn_mpi_plan *p, const ring_work *w);

/* Block-sized messages go as pieces of at most MPI_PIECE bytes (counts
 * stay ints). ring_post posts the pieces of ring.kv_bytes at buf to or from
 * peer (tags tag0 + piece) into reqs[*nreq..], counting sent bytes in the
 * stats; ring_wait waits for n requests, counting the time as waiting;
 * ring_progress lets MPI move them between tiles. */
#define MPI_PIECE ((size_t)1 << 30)
attn_status ring_post(attn_mpi_plan *p, char *buf, bool send, int peer, int tag0,
                      MPI_Request *reqs, int *nreq);
attn_status ring_wait(attn_mpi_plan *p, int n, MPI_Request *reqs);
attn_status ring_progress(attn_mpi_plan *p, int n, MPI_Request *reqs);

/* Validation shared by plan creation and the executes (mpi_plan.c). */
attn_status mpi_check4(attn_context *ctx, const char *name, const attn_tensor *t, attn_dtype dt,
                       bool output);
void mpi_meta_record(attn_tmeta *m, const attn_tensor *t);
/* Each ts[i] against metas[i] (the first `required` must be non-NULL). */
attn_status mpi_check_tensors(attn_context *ctx, const attn_tmeta *metas,
                              const attn_tensor *const *ts, const char *const *names, int n,
                              int required);
/* Agree on `local`, then check the borrowed lengths (range, and the same on
 * every rank) collectively. */
attn_status mpi_execute_checks(attn_mpi_plan *p, attn_status local);

/* Copy accumulator-typed rows [B, H, stride, dv] (dense; the first n of
 * each head's rows) into a strided rank-4 tensor (f32 accumulators into a
 * bf16 tensor: rounded to nearest even), and [B, H, n] into a rank-3 one. */
void mpi_store4(const char *src, int64_t n, int64_t stride, attn_tensor *dst);
void mpi_store3(const char *src, int64_t n, attn_tensor *dst);

#endif

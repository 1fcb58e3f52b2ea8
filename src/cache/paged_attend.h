/* Attention of a ragged batch against a paged KV cache: the plan's state,
 * shared by paged_attend.c and the template paged_impl.inc. */
#ifndef ATTN_PAGED_ATTEND_H
#define ATTN_PAGED_ATTEND_H

#include "cache/paged_internal.h"
#include "mask/mask.h"

/* Key positions per split chunk and per tile: chunks sit at absolute
 * multiples of ATTN_PG_CHUNK (as the contiguous cache's), so the split and
 * the merge order depend on nothing but the positions. */
#define ATTN_PG_CHUNK 512
/* Up to this many queries per row: split-KV decode; beyond: query blocks. */
#define ATTN_PG_SPLIT_MAX_N 16
/* Stacked query rows (G heads × queries) per task of the blocked path. */
#define ATTN_PG_BLOCK_ROWS 128
/* Bytes of partial states one wave of the split path may hold. */
#define ATTN_PG_PARTIAL_BUDGET ((size_t)16 << 20)

struct attn_paged_plan {
  attn_context *ctx;
  attn_paged_cache *cache;
  attn_desc desc; /* copy */
  attn_mask mask; /* resolved at plan time; executes bind a copy */
  attn_dtype dtype;
  int64_t N, H, Hkv, G, n, Dk, Dv;
  double scale;
  attn_tmeta meta[3]; /* q, out, lse */
  bool split;
  bool simd;    /* f32/bf16 rows, R ≤ ATTN_KV_SIMD_ROWS, AVX-512: attend_simd.c loops on blocks */
  const struct attn_kvq_ops *qops; /* f16/int8/int4 rows, few rows: attend_q.c loops on views */
  int64_t bq;   /* queries per task: n (split) or a block */
  int64_t R;    /* stacked rows per task: G · bq */
  int64_t bk;   /* key tile */
  int64_t wave; /* split: chunks per (row, kv head) whose partials fit at once */
  attn_to_f32_fn widen; /* bf16 → f32 for the gather step (NULL: the storage's own) */
  /* Slot: Qs [R·Dk], S [R·bk], O [R·Dv], M, L [R], Kf [bk·Dk], Vf [bk·Dv]
   * (a key tile gathered from its blocks, converted to T), Qd (qops'
   * scratch). Shared: the
   * split path's partials [N·Hkv·wave] and accumulators [N·Hkv], then the
   * call's key lengths, query counts and sequence ids [N] each. */
  struct {
    size_t Qs, S, O, M, L, Kf, Vf, Qd;
  } at;
  size_t slot_bytes;
  struct {
    size_t M, L;
  } pat;
  size_t part_bytes, part_at, acc_at, klen_at, qcnt_at, seq_at, shared_bytes;
  /* Per-key mass (desc's key mass: [N, H or H_kv, max_seq_len]): every
   * query row's lse [N·H·n] in the shared area, for the second pass. */
  attn_tensor *mass;
  bool mass_grouped;
  size_t mass_lse_at;
  void *workspace;
  size_t workspace_bytes;
};

typedef struct pg_args {
  const struct attn_paged_plan *plan;
  const attn_mask *mask; /* bound for this execute */
  attn_ws ws;
  const attn_tensor *q;
  attn_tensor *out, *lse;
  const int64_t *klen, *seq; /* [count] */
  int64_t count;
  int64_t w, wn; /* split: current wave, chunks in it */
  bool last_wave;
} pg_args;

#endif

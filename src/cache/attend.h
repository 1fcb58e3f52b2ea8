/* Attention of new queries against a KV cache: the plan's state, shared by
 * attend.c and the kernel templates in attend_impl.inc. */
#ifndef ATTN_KV_ATTEND_H
#define ATTN_KV_ATTEND_H

#include "cache/kvcache_internal.h"
#include "mask/mask.h"

/* Key positions per chunk of the split (decode) path and per tile of the
 * blocked path. Chunks are aligned to absolute multiples of ATTN_KV_CHUNK,
 * so their boundaries depend on nothing but the positions. */
#define ATTN_KV_CHUNK 512
/* Up to this many queries per item, a task holds all n queries of a head
 * group and the key range is split into chunks (flash-decoding); beyond,
 * tasks are query blocks that walk their keys in order (flash-attention). */
#define ATTN_KV_SPLIT_MAX_N 16
/* Stacked query rows (G heads × queries) per task of the blocked path. */
#define ATTN_KV_BLOCK_ROWS 128

struct attn_kvcache_plan {
  attn_context *ctx;
  attn_kvcache *cache;
  attn_desc desc; /* copy */
  attn_mask mask; /* resolved at plan time; executes bind a copy */
  attn_dtype dtype;
  int64_t B, H, Hkv, G, n, Dk, Dv;
  double scale;
  attn_tmeta meta[3]; /* q, out, lse */
  bool split;
  bool simd;     /* f32, R ≤ ATTN_KV_SIMD_ROWS, AVX-512: attend_simd.c loops */
  int64_t bq;    /* queries per task: n (split) or a block */
  int64_t R;     /* stacked rows per task: G · bq */
  int64_t bk;    /* key tile */
  int64_t wave;  /* split: chunks per (b, kv head) whose partials fit at once */
  attn_to_f32_fn widen; /* bf16 → f32: the storage row's converter, or its AVX-512 form */
  const struct attn_kvq_ops *qops; /* f16/int8/int4, R ≤ ATTN_KV_SIMD_ROWS: attend_q.c loops */
  /* Workspace (byte offsets): a thread's slot holds Qs [R·Dk], S [R·bk],
   * O [R·Dv], M, L [R], for storages other than native K and V tiles
   * widened/dequantized to f32 (the GEMM path), and with qops the scores
   * loop's folded queries Qd;
   * the shared area holds the split path's partial states (O, M, L each)
   * [B·Hkv·wave] then its accumulators [B·Hkv]. */
  struct {
    size_t Qs, S, O, M, L, Kf, Vf, Qd;
  } at;
  size_t slot_bytes;
  struct {
    size_t M, L; /* within one partial state (O at 0) */
  } pat;
  size_t part_bytes, part_at, acc_at, shared_bytes;
  /* Per-key mass. Decode path: each kept tile's p rows [B·Hkv][R][mass_cap]
   * (by position − first) and the partial's max after it [B·Hkv][tiles][R].
   * Blocked path: every query row's lse [B][H][n], for a second pass. */
  attn_tensor *mass;     /* borrowed from the descriptor, or NULL */
  bool mass_grouped;     /* mass rows per KV head */
  int64_t mass_cap, mass_tiles;
  size_t mass_p_at, mass_m_at, mass_lse_at;
  void *workspace;
  size_t workspace_bytes;
};

typedef struct kv_args {
  const struct attn_kvcache_plan *plan;
  const attn_mask *mask; /* bound for this execute */
  attn_ws ws;
  const attn_tensor *q;
  attn_tensor *out, *lse;
  int64_t w;   /* split: current wave */
  int64_t wn;  /* split: chunks in this wave */
  bool last_wave;
  attn_tensor *mass; /* per-key mass output or NULL */
} kv_args;

/* The step tensors of a cache plan (contiguous or paged): q [rows, H, n,
 * d_k] and out [rows, H, n, d_v] in dtype, lse [rows, H, n]; H a multiple
 * of H_kv. rows < 0: any number of rows. rows_name ("B", "N") is used in
 * messages. The one checker for both caches. */
typedef struct attn_kv_step {
  int64_t rows, H, n;
} attn_kv_step;
attn_status attn_kv_check_step(attn_context *ctx, attn_dtype dtype, int64_t rows, int64_t Hkv,
                               int64_t Dk, int64_t Dv, const attn_tensor *q,
                               const attn_tensor *out, const attn_tensor *lse,
                               const char *rows_name, attn_kv_step *s);

/* The descriptor's sink logits (if any) for a cache plan of H query heads:
 * one per head, finite or −inf (ATTN_ERR_SHAPE / INVALID_ARG naming "sinks"). */
attn_status attn_kv_check_sinks(attn_context *ctx, const attn_desc *desc, int64_t H,
                                attn_dtype dt);

/* A per-key mass tensor for a cache plan: rank 3, dtype dt, shape
 * [rows, H or Hkv, len], contiguous (ATTN_ERR_DTYPE/SHAPE/LAYOUT naming
 * "mass"; shape_doc and cache_name go into the messages). */
attn_status attn_kv_check_mass(attn_context *ctx, const attn_tensor *m, attn_dtype dt,
                               int64_t rows, int64_t H, int64_t Hkv, int64_t len,
                               const char *shape_doc, const char *cache_name);

/* Stored key positions [*lo, *hi) that query rows [i0, i1) of item b may keep. */
void attn_kv_key_range(const struct attn_kvcache_plan *p, const attn_mask *mask, int64_t b,
                       int64_t i0, int64_t i1, int64_t *lo, int64_t *hi);

#endif

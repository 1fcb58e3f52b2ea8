/* The multi-head layer's state, shared by its three stages:
 *   mha_config.c  the layer: config, weights, create/destroy
 *   mha_plan.c    a plan: shapes, masks, workspace layout, the inner attention plan
 *   mha_exec.c    execute: projections, masks, attention, out-projection
 * (and mha_impl.inc, the typed loops of execute). */
#ifndef ATTN_MHA_INTERNAL_H
#define ATTN_MHA_INTERNAL_H

#include "core/internal.h"
#include "mask/mask.h"

struct attn_mha {
  attn_context *ctx;
  attn_dtype dt; /* storage: inputs, outputs, parameters */
  attn_dtype ct; /* compute: projections, attention, weights output (f32 for bf16/f16) */
  int64_t E, H, Hkv, D, Ekv, kdim, vdim;
  bool bias, bias_kv, zero_attn, batch_first;
  attn_mha_weights w; /* borrowed tensors */
};

/* How the rows (b, s) of a [B, S, F] operand are laid out for GEMM. */
typedef enum row_order {
  ROWS_BATCH_MAJOR = 0, /* row (b, s) at (b·S + s)·r: one GEMM */
  ROWS_SEQ_MAJOR = 1,   /* row (b, s) at (s·B + b)·r: one GEMM */
  ROWS_PER_BATCH = 2    /* anything else: one GEMM per batch item */
} row_order;

enum { M_QUERY, M_KEY, M_VALUE, M_KPM, M_OUT, M_WEIGHTS, M_COUNT };

struct attn_mha_plan {
  attn_context *ctx;
  attn_mha *mha;
  int64_t B, Sq, Sk, Skx, nx; /* Skx = Sk + nx appended keys */
  attn_tmeta meta[M_COUNT];
  /* operand strides (b, s) as the caller gave them */
  int64_t in_sb[3], in_ss[3], out_sb, out_ss;
  row_order in_order[3], out_order;
  /* Workspace (byte offsets): projected Q, K, V, the merged attention output,
   * per-head weights (averaged case), the combined mask; each with (b, s)
   * strides in elements; then the inner attention plan's workspace. */
  size_t buf_at[3], ao_at, wh_at, mm_at, inner_at;
  /* Training plans (mha_backward.c) keep the activations the backward reads
   * (Q, K, V, the merged attention output, and lse [B, H, S_q]) in the
   * caller's `saved` buffer instead: buf_at, ao_at and lse_at are then
   * offsets into it, of saved_bytes in all. */
  bool train;
  size_t lse_at, saved_bytes;
  /* 16-bit layers: the parameters widened to f32 at each execute (W_q, W_k,
   * W_v, W_o, in-projection bias, out bias), and per thread (after the inner
   * plan's workspace) conv_slot bytes of row scratch. */
  size_t w32_at[6];
  size_t conv_slot;
  int64_t buf_sb[3], buf_ss[3], ao_sb, ao_ss;
  bool avg_weights;
  /* Combined mask (see mha_plan.c): the user's options resolved on the real
   * keys by the mask module, bound to a copy at every execute. */
  bool materialize;
  int64_t Hm;
  attn_desc udesc; /* copy of the caller's descriptor (defaults if NULL) */
  attn_mask mask;
  /* The inner attention over head views of the workspace. Its descriptor's
   * mask tensors are re-pointed at each execute's buffers in a local copy. */
  attn_desc *idesc;
  attn_plan *aplan;
  int64_t qshape[4], qstr[4], kshape[4], kstr[4], vstr[4], ostr[4], wdims[4], mdims[4];
  int64_t kpm_shape[4];
  void *ws; /* the plan's own workspace, for attn_mha_plan_execute() */
  size_t ws_bytes;
};

/* Rows per projection task (mha_exec.c): the projections run on the
 * context's pool in chunks of this many rows per batch item. */
#define ATTN_MHA_PROJ_ROWS 64

/* Check a [B, S, F] operand (batch-first or sequence-first; B, S < 0: any)
 * and return its (b, s) strides. */
attn_status attn_mha_check_operand(attn_context *ctx, const char *name, const attn_tensor *t,
                                   attn_dtype dt, bool batch_first, int64_t B, int64_t S,
                                   int64_t F, int64_t *sb, int64_t *ss);
/* attn_mha_plan_create(), or with train a training plan: no weights output,
 * the inner attention writes lse, the activations live in `saved`. */
attn_status attn_mha_plan_build(attn_mha *mha, const attn_desc *desc, const attn_tensor *query,
                                const attn_tensor *key, const attn_tensor *value,
                                const attn_tensor *kpm, const attn_tensor *out,
                                const attn_tensor *weights, bool train, attn_mha_plan **plan);
/* One forward run of p on ctx: ws is the run's aligned workspace, acts where
 * the activations go (ws itself unless p->train). */
attn_status attn_mha_run(const attn_mha_plan *p, attn_context *ctx, char *ws, char *acts,
                         const attn_tensor *query, const attn_tensor *key,
                         const attn_tensor *value, const attn_tensor *kpm, attn_tensor *out,
                         attn_tensor *weights);
/* A local copy *ip of p's attention plan whose descriptor points at this
 * run's masks: the combined mask (checked, then materialized into ws) or
 * the key padding mask as a bool-mask view (tmask, tkpm: storage for the
 * views, alive while ip is used). */
attn_status attn_mha_bind_masks(const attn_mha_plan *p, attn_context *ctx, char *ws,
                                const attn_tensor *kpm, attn_plan *ip, attn_tensor *tmask,
                                attn_tensor *tkpm);
/* dst(b, s) = src(b, s) · op(W) (+ beta·dst) for s < S, f32/f64 rows with
 * (b, s) strides, on ctx's pool in fixed chunks of rows: W is [K × N] if
 * w_kn, else [N × K] (used transposed). */
attn_status attn_mha_rows_gemm(attn_context *ctx, attn_dtype dt, int64_t B, int64_t S,
                               const void *src, int64_t sb, int64_t ss, const void *W,
                               int64_t ldw, bool w_kn, int64_t N, int64_t K, double beta,
                               void *dst, int64_t dsb, int64_t dss);
/* The weight pointers and leading dimensions of the three input projections
 * (storage dtype; rows [out, in]) and their biases (NULL without bias). */
void attn_mha_in_weights(const attn_mha *m, const void *W[3], int64_t ldw[3],
                         const void *bias[3]);

/* Rows of a [B, S, ·] operand with strides (sb, ss): which GEMM shape fits. */
row_order attn_mha_rows_of(int64_t B, int64_t S, int64_t sb, int64_t ss);
/* Bytes of workspace for running p on a context of `threads` threads. */
size_t attn_mha_ws_bytes(const attn_mha_plan *p, int32_t threads);

#endif

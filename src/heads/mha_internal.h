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

/* Rows of a [B, S, ·] operand with strides (sb, ss): which GEMM shape fits. */
row_order attn_mha_rows_of(int64_t B, int64_t S, int64_t sb, int64_t ss);
/* Bytes of workspace for running p on a context of `threads` threads. */
size_t attn_mha_ws_bytes(const attn_mha_plan *p, int32_t threads);

#endif

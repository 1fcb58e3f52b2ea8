/* Internal definitions shared by every module. Not installed. */
#ifndef ATTN_INTERNAL_H
#define ATTN_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "attn/attn.h"

#if defined(__GNUC__) || defined(__clang__)
#define ATTN_PRINTF(a, b) __attribute__((format(printf, a, b)))
#define ATTN_LIKELY(x) __builtin_expect(!!(x), 1)
#define ATTN_UNLIKELY(x) __builtin_expect(!!(x), 0)
#else
#define ATTN_PRINTF(a, b)
#define ATTN_LIKELY(x) (x)
#define ATTN_UNLIKELY(x) (x)
#endif

#define ATTN_ALIGN 64
#define ATTN_ERRMSG_LEN 512

struct attn_threadpool;

struct attn_context {
  attn_allocator allocator;
  int32_t num_threads;
  struct attn_threadpool *pool; /* started lazily by attn_parallel_for() */
  char last_error[ATTN_ERRMSG_LEN];
};

/* ---- errors (core/context.c) --------------------------------------------- */

/* Record a message on ctx (may be NULL) and return status. */
attn_status attn_fail(attn_context *ctx, attn_status status, const char *fmt, ...) ATTN_PRINTF(3, 4);
void attn_clear_error(attn_context *ctx);

/* Validate a pointer argument: returns ATTN_ERR_NULL_ARG naming it. */
#define ATTN_CHECK_NULL(ctx, ptr)                                                 \
  do {                                                                            \
    if (ATTN_UNLIKELY((ptr) == NULL))                                             \
      return attn_fail((ctx), ATTN_ERR_NULL_ARG, "%s: must not be NULL", #ptr);   \
  } while (0)

/* ---- memory (core/alloc.c) ------------------------------------------------ */

/* 64-byte aligned allocation through ctx's hooks; NULL on failure or size 0. */
void *attn_alloc(attn_context *ctx, size_t size);
void *attn_calloc(attn_context *ctx, size_t size);
void attn_free(attn_context *ctx, void *ptr, size_t size);

/* ---- checked arithmetic ---------------------------------------------------- */

static inline bool attn_mul_ok(int64_t a, int64_t b, int64_t *r) {
  return !__builtin_mul_overflow(a, b, r);
}
static inline bool attn_add_ok(int64_t a, int64_t b, int64_t *r) {
  return !__builtin_add_overflow(a, b, r);
}
/* Product of n non-negative dims times elem_size, as a byte count that fits
 * both int64_t and size_t. */
bool attn_bytes_ok(const int64_t *dims, int n, size_t elem_size, size_t *bytes);

static inline int64_t attn_min64(int64_t a, int64_t b) { return a < b ? a : b; }
static inline int64_t attn_max64(int64_t a, int64_t b) { return a > b ? a : b; }
/* ⌈a / b⌉ for a ≥ 0, b ≥ 1, without overflow near INT64_MAX. */
static inline int64_t attn_cdiv64(int64_t a, int64_t b) { return a / b + (a % b != 0); }

/* ---- tensors (core/tensor.c) ---------------------------------------------- */

struct attn_tensor {
  attn_context *ctx;
  attn_dtype dtype;
  int32_t rank;
  int64_t shape[ATTN_MAX_RANK];
  int64_t strides[ATTN_MAX_RANK];
  void *data;
  size_t owned_bytes; /* > 0 when data is owned */
};

size_t attn_dtype_size(attn_dtype dtype); /* 0 for unknown */
const char *attn_dtype_name(attn_dtype dtype);

/* Formats "[2,8,128,64]" into buf. */
const char *attn_shape_str(const attn_tensor *t, char *buf, size_t len);

/* Checks for a tensor argument named `name`: not NULL, rank, dtype. */
attn_status attn_check_tensor(attn_context *ctx, const char *name, const attn_tensor *t,
                              int32_t rank, attn_dtype dtype);

/* A matrix handed to BLAS as (pointer, leading dimension): the columns must
 * be contiguous (col_stride 1, unless there is one column), rows must not
 * overlap (row_stride ≥ cols; BLAS rejects a smaller leading dimension even
 * for one row) → ATTN_ERR_LAYOUT; rows, cols and row_stride must fit BLAS's
 * int → ATTN_ERR_UNSUPPORTED. The message names `name`. */
attn_status attn_check_matrix(attn_context *ctx, const char *name, int64_t rows, int64_t cols,
                              int64_t row_stride, int64_t col_stride);
/* The same for the last two dims of a tensor of rank ≥ 2. */
attn_status attn_check_matrix_rows(attn_context *ctx, const char *name, const attn_tensor *t);

/* Element offset of index (i0..i3) for a rank-4 tensor. */
static inline int64_t attn_off4(const attn_tensor *t, int64_t a, int64_t b, int64_t c, int64_t d) {
  return a * t->strides[0] + b * t->strides[1] + c * t->strides[2] + d * t->strides[3];
}

/* Largest element offset + 1 (checked for overflow at create/wrap). */
bool attn_tensor_extent(const attn_tensor *t, int64_t *extent);

/* ---- descriptor (core/desc.c) --------------------------------------------- */

struct attn_desc {
  attn_context *ctx;
  attn_variant variant;
  attn_score score;
  double scale; /* 0 = default for the score kind */
  attn_causal causal;
  int64_t win_left, win_right; /* ATTN_WINDOW_UNBOUNDED = none */
  const int64_t *key_lengths;
  int64_t n_key_lengths;
  const int64_t *query_lengths;
  int64_t n_query_lengths;
  const attn_tensor *bool_mask;
  const attn_tensor *add_mask;
  const double *alibi;
  int64_t n_alibi;
  double softcap; /* 0 = off */
  const attn_tensor *general_w;
  const attn_tensor *add_wq, *add_wk, *add_bias, *add_v;
  /* Swin */
  int64_t swin_h, swin_w, swin_window, swin_shift;
  const attn_tensor *swin_bias;
  /* Longformer */
  const int64_t *global_idx;
  int64_t n_global;
  /* BigBird / block-sparse */
  int64_t block;
  int64_t bb_window, bb_global, bb_random;
  uint64_t bb_seed;
  const attn_tensor *layout;
  /* Performer */
  int64_t features;
  uint64_t feature_seed;
  /* Linformer */
  int64_t rank;
  uint64_t rank_seed;
  const attn_tensor *lr_e, *lr_f;
};

/* ---- plans (core/plan.c) -------------------------------------------------- */

struct attn_plan;

typedef struct attn_plan_ops {
  const char *name;
  attn_status (*execute)(struct attn_plan *plan, const attn_tensor *q, const attn_tensor *k,
                         const attn_tensor *v, attn_tensor *out, attn_tensor *weights,
                         attn_tensor *lse);
  void (*destroy)(struct attn_plan *plan); /* frees impl; may be NULL */
  /* Optional: sparse variants' block layout, Performer's feature redraw. */
  attn_status (*block_layout)(const struct attn_plan *plan, uint8_t *buf, size_t *size);
  attn_status (*redraw)(struct attn_plan *plan, uint64_t seed);
} attn_plan_ops;

/* Metadata of a tensor bound to a plan, for execute-time matching. */
typedef struct attn_tmeta {
  bool present;
  attn_dtype dtype;
  int32_t rank;
  int64_t shape[ATTN_MAX_RANK];
  int64_t strides[ATTN_MAX_RANK];
} attn_tmeta;

/* Record t's metadata (t may be NULL: not present); does it still match? A
 * match also needs non-NULL data. */
void attn_tmeta_record(attn_tmeta *m, const attn_tensor *t);
bool attn_tmeta_matches(const attn_tmeta *m, const attn_tensor *t);
/* Execute-time check of n tensors against their plan-time metadata: a
 * required one must be non-NULL (ATTN_ERR_NULL_ARG), each must be present
 * exactly when it was and match it (ATTN_ERR_MISMATCH); names[i] in messages. */
attn_status attn_tmeta_check_all(attn_context *ctx, const attn_tmeta *meta,
                                 const attn_tensor *const *ts, const char *const *names,
                                 const bool *required, int n);

struct attn_plan {
  attn_context *ctx;
  attn_desc desc; /* a copy; borrowed arrays/tensors stay the caller's */
  attn_dtype dtype;
  int64_t B, H, Hkv, Sq, Sk, Dq, Dk, Dv;
  double scale; /* resolved */
  attn_tmeta meta[6]; /* q, k, v, out, weights, lse */
  const attn_plan_ops *ops;
  void *impl;        /* variant state */
  void *workspace;   /* allocated at plan time */
  size_t workspace_bytes;
  size_t impl_bytes; /* for the allocator's free() */
};

/* Variant initialisers: validate the variant's options against the plan's
 * shapes, allocate workspace/impl through plan->ctx and set plan->ops.
 * On failure they free what they allocated and return the status (message set). */
attn_status attn_exact_plan_init(struct attn_plan *plan);
attn_status attn_swin_plan_init(struct attn_plan *plan);
attn_status attn_sparse_plan_init(struct attn_plan *plan);  /* Longformer, BigBird, block-sparse */
attn_status attn_linear_plan_init(struct attn_plan *plan);  /* elu+1, Performer */
attn_status attn_lowrank_plan_init(struct attn_plan *plan); /* Linformer */

/* ---- threads (core/threadpool.c) ------------------------------------------ */

/* Calls fn(arg, task, thread) for task in [0, ntasks) on the context's threads
 * (thread in [0, num_threads)). Tasks are handed out dynamically, so a task
 * must write only its own outputs and use only workspace slot `thread`:
 * results then do not depend on the thread count. OpenBLAS is single-threaded
 * for the duration and restored afterwards. */
typedef void (*attn_task_fn)(void *arg, int64_t task, int32_t thread);
attn_status attn_parallel_for(attn_context *ctx, int64_t ntasks, attn_task_fn fn, void *arg);
/* Start the context's workers if not running (plans call this at creation so
 * execute never allocates). */
attn_status attn_threadpool_ensure(attn_context *ctx);
void attn_threadpool_destroy(struct attn_threadpool *pool, attn_context *ctx);

#endif /* ATTN_INTERNAL_H */

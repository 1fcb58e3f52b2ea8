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
  int64_t spin_ns; /* pool spin policy: < 0 never, 0 adaptive, > 0 fixed (attn_context_options) */
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

/* ---- dtypes: one traits row per element type (core/dtype.c) ---------------
 *
 * The one way libattn is generic over types:
 *  - data that differs per type (size, name, the type kernels compute in,
 *    converters between a storage type and f32, the BLAS GEMM) is a row of
 *    this table, ggml-style, so type-agnostic code asks the row instead of
 *    branching on the dtype;
 *  - loops that must run in the compute type are written once in a
 *    template file (*_impl.inc) and stamped out for f32 and f64 by
 *    core/tmpl.h (see there). A storage type that is not a compute type
 *    (bf16 today, f16/int8 next) adds a row with converters, not a copy of
 *    a loop. */
typedef void (*attn_to_f32_fn)(const void *src, float *dst, int64_t n);
typedef void (*attn_from_f32_fn)(const float *src, void *dst, int64_t n);
/* C = alpha·op(A)·op(B) + beta·C on elements of the row's compute type. */
typedef void (*attn_gemm_fn)(bool ta, bool tb, int64_t M, int64_t N, int64_t K, double alpha,
                             const void *A, int64_t lda, const void *B, int64_t ldb,
                             double beta, void *C, int64_t ldc);

typedef struct attn_dtype_traits {
  const char *name;     /* "f32" */
  size_t size;          /* bytes per stored element; 0: not a valid dtype */
  attn_dtype compute;   /* the type kernels compute in (0: not computable) */
  attn_to_f32_fn to_f32;     /* storage → f32 (storage-only types) */
  attn_from_f32_fn from_f32; /* f32 → storage, round to nearest even */
  attn_gemm_fn gemm;    /* compute types only */
} attn_dtype_traits;

/* The row of a public dtype; a row of size 0 for values outside the enum. */
const attn_dtype_traits *attn_dtype_info(attn_dtype dtype);
/* bfloat16 storage (the KV cache's; the same converters as the
 * ATTN_DTYPE_BF16 row). */
extern const attn_dtype_traits attn_bf16_traits;

/* A 16-bit storage dtype (bf16, f16): computed in f32. */
static inline bool attn_dtype_is_16bit(attn_dtype dt) {
  return dt == ATTN_DTYPE_BF16 || dt == ATTN_DTYPE_F16;
}
/* The compute type of a plan's storage dtype (f32 for 16-bit storage). */
static inline attn_dtype attn_dtype_compute(attn_dtype dt) {
  return attn_dtype_is_16bit(dt) ? ATTN_DTYPE_F32 : dt;
}

size_t attn_dtype_size(attn_dtype dtype); /* 0 for unknown */
const char *attn_dtype_name(attn_dtype dtype);

/* f32 → bfloat16, round to nearest even (NaN stays a quiet NaN). */
static inline uint16_t attn_f32_to_bf16(float f) {
  union {
    float f;
    uint32_t u;
  } x = {f};
  if ((x.u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((x.u >> 16) | 0x40u);
  x.u += 0x7fffu + ((x.u >> 16) & 1u);
  return (uint16_t)(x.u >> 16);
}

/* bfloat16 → f32 (exact). */
static inline float attn_bf16_to_f32(uint16_t h) {
  union {
    uint32_t u;
    float f;
  } x = {(uint32_t)h << 16};
  return x.f;
}

/* IEEE binary16 → f32 (exact, subnormals included). */
static inline float attn_f16_to_f32(uint16_t h) {
  const uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
  uint32_t e = (h >> 10) & 0x1fu, m = h & 0x3ffu, u;
  if (e == 0x1f) {
    u = sign | 0x7f800000u | (m << 13); /* inf, NaN */
  } else if (e != 0) {
    u = sign | ((e + 112u) << 23) | (m << 13);
  } else if (m == 0) {
    u = sign;
  } else { /* subnormal: normalise */
    e = 113;
    while (!(m & 0x400u)) {
      m <<= 1;
      e--;
    }
    u = sign | (e << 23) | ((m & 0x3ffu) << 13);
  }
  union {
    uint32_t u;
    float f;
  } x = {u};
  return x.f;
}

/* f32 → IEEE binary16, round to nearest even; overflow gives ±inf, NaN a
 * quiet NaN. */
static inline uint16_t attn_f32_to_f16(float f) {
  union {
    float f;
    uint32_t u;
  } x = {f};
  const uint16_t sign = (uint16_t)((x.u >> 16) & 0x8000u);
  const uint32_t a = x.u & 0x7fffffffu;
  if (a > 0x7f800000u) return (uint16_t)(sign | 0x7e00u | ((a >> 13) & 0x3ffu));
  if (a >= 0x477ff000u) return (uint16_t)(sign | 0x7c00u); /* ≥ 65520: inf */
  if (a >= 0x38800000u) {                                  /* normal f16 */
    uint32_t r = a - 0x38000000u;                          /* rebias 127 → 15 */
    r += 0xfffu + ((r >> 13) & 1u);
    return (uint16_t)(sign | (r >> 13));
  }
  if (a < 0x33000000u) return sign; /* below half the smallest subnormal */
  /* subnormal: value = m·2^(e−150) with the implicit bit; shift to 2^-24 units */
  const uint32_t e = a >> 23, m = (a & 0x7fffffu) | 0x800000u;
  const uint32_t shift = 126u - e; /* 14..24 */
  uint32_t q = m >> shift, rem = m & ((1u << shift) - 1u), half = 1u << (shift - 1);
  if (rem > half || (rem == half && (q & 1u))) q++;
  return (uint16_t)(sign | q);
}

/* ---- workspace carving (core/alloc.c) ---------------------------------------
 * Every plan lays its scratch out with a carver: each part is a product of
 * up to three counts times an element size, placed at a 64-byte aligned byte
 * offset; any overflow leaves ok false (and the caller reports it). */
typedef struct attn_carver {
  int64_t bytes; /* end of the last part (a multiple of 64) */
  bool ok;
} attn_carver;

static inline attn_carver attn_carver_start(void) { return (attn_carver){0, true}; }
/* Reserve a·b·c elements of elem bytes; returns the part's byte offset. */
size_t attn_carve(attn_carver *c, size_t elem, int64_t a, int64_t b, int64_t cnt);

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

/* A borrowed rank-4 view built on the stack (no allocation): for kernels that
 * hand slices of their workspace to other kernels. strides NULL: contiguous. */
attn_tensor attn_tensor_view4(attn_dtype dtype, const int64_t shape[4], const int64_t *strides,
                              void *data);

/* Formats "[2,8,128,64]" into buf. */
const char *attn_shape_str(const attn_tensor *t, char *buf, size_t len);

/* Checks for a tensor argument named `name`: not NULL, rank, dtype. */
attn_status attn_check_tensor(attn_context *ctx, const char *name, const attn_tensor *t,
                              int32_t rank, attn_dtype dtype);

/* t (not NULL) must have ref's dtype: ATTN_ERR_DTYPE naming both tensors
 * and both dtypes. */
attn_status attn_check_dtype_pair(attn_context *ctx, const char *name, const attn_tensor *t,
                                  const char *ref_name, const attn_tensor *ref);

/* t's dims against want[] (−1: any); ATTN_ERR_SHAPE naming t, its shape and
 * `what` it should match. The one shape checker. */
attn_status attn_check_dims(attn_context *ctx, const char *name, const attn_tensor *t,
                            const int64_t *want, const char *what);

/* A matrix handed to BLAS as (pointer, leading dimension): the columns must
 * be contiguous (col_stride 1, unless there is one column), rows must not
 * overlap (row_stride ≥ cols; BLAS rejects a smaller leading dimension even
 * for one row) → ATTN_ERR_LAYOUT; rows, cols and row_stride must fit BLAS's
 * int → ATTN_ERR_UNSUPPORTED. The message names `name`. */
attn_status attn_check_matrix(attn_context *ctx, const char *name, int64_t rows, int64_t cols,
                              int64_t row_stride, int64_t col_stride);
/* The same for the last two dims of a tensor of rank ≥ 2. */
attn_status attn_check_matrix_rows(attn_context *ctx, const char *name, const attn_tensor *t);

/* An output written element by element needs distinct memory for every
 * element (no stride 0 on a dim > 1, no overlapping rows): ATTN_ERR_LAYOUT
 * naming `name` otherwise. */
attn_status attn_check_distinct(attn_context *ctx, const char *name, const attn_tensor *t);

/* Element offset of index (i0..i3) for a rank-4 tensor. */
static inline int64_t attn_off4(const attn_tensor *t, int64_t a, int64_t b, int64_t c, int64_t d) {
  return a * t->strides[0] + b * t->strides[1] + c * t->strides[2] + d * t->strides[3];
}

/* Largest element offset + 1 (checked for overflow at create/wrap). */
bool attn_tensor_extent(const attn_tensor *t, int64_t *extent);

/* ---- descriptor (core/desc.c) ---------------------------------------------
 * Grouped by concern: how scores are formed, which keys each query keeps
 * (the mask module reads only `mask`), and each variant's own knobs. */

struct attn_desc {
  attn_context *ctx;
  attn_variant variant;
  struct attn_desc_score {
    attn_score kind;
    double scale; /* 0 = the kind's default (attn_default_scale) */
    const attn_tensor *general_w;             /* Luong general: W [d_q, d_k] */
    const attn_tensor *wq, *wk, *bias, *v;    /* Bahdanau additive */
  } score;
  struct attn_desc_mask {
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
  } mask;
  struct {
    int64_t h, w, window, shift;
    const attn_tensor *bias;
  } swin;
  struct { /* Longformer */
    const int64_t *idx;
    int64_t n;
  } global;
  struct { /* BigBird / block-sparse */
    int64_t size;
    int64_t window, global, random;
    uint64_t seed;
    const attn_tensor *layout;
  } block;
  struct { /* Performer */
    int64_t count;
    uint64_t seed;
  } features;
  struct { /* packed variable-length batch (attn_desc_set_varlen) */
    const int64_t *q_off, *k_off; /* [n + 1] each; k_off = q_off for self-attention */
    int64_t n;                    /* sequences; 0 = off */
  } varlen;
  struct { /* attention sinks (attn_desc_set_sinks) */
    const double *logits; /* [H] or NULL */
    int64_t n;
  } sinks;
  attn_tensor *mass; /* per-key attention mass output (attn_desc_set_key_mass) or NULL */
  struct { /* Linformer */
    int64_t rank;
    uint64_t seed;
    const attn_tensor *e, *f;
  } lowrank;
};

/* Packed-batch offsets: off[0] = 0, non-decreasing, off[n] = total (total < 0:
 * not checked); ATTN_ERR_INVALID_ARG naming `name` otherwise. */
attn_status attn_check_offsets(attn_context *ctx, const char *name, const int64_t *off, int64_t n,
                               int64_t total, const char *total_name);
/* Sink logits: not NaN, not above dtype dt's range (−inf = no sink);
 * ATTN_ERR_INVALID_ARG naming "sinks" otherwise. */
attn_status attn_check_sinks(attn_context *ctx, const double *logits, int64_t n, attn_dtype dt);

/* 1/√d_k for the scaled dot product, 1 for every other score. */
double attn_default_scale(attn_score score, int64_t d_k);

/* ---- options and the variant table (core/variants.c) -----------------------
 * What a call asks for, as bits; each consumer (a plan variant, the KV cache)
 * states what it supports, and attn_options_check() rejects the rest in one
 * place, naming the option and the consumer. */
typedef enum attn_option {
  ATTN_OPT_CAUSAL_TL,      /* causal, top-left */
  ATTN_OPT_CAUSAL_BR,      /* causal, bottom-right */
  ATTN_OPT_WINDOW,
  ATTN_OPT_KEY_LENGTHS,
  ATTN_OPT_QUERY_LENGTHS,
  ATTN_OPT_BOOL_MASK,
  ATTN_OPT_ADD_MASK,
  ATTN_OPT_ALIBI,
  ATTN_OPT_SOFTCAP,
  ATTN_OPT_SCALE,          /* an explicit score scale */
  ATTN_OPT_SCORE_GENERAL,
  ATTN_OPT_SCORE_ADDITIVE,
  ATTN_OPT_WEIGHTS,
  ATTN_OPT_LSE,
  ATTN_OPT_VARLEN,         /* packed variable-length batch */
  ATTN_OPT_SINKS,          /* per-head sink logits */
  ATTN_OPT_MASS,           /* per-key attention mass output */
  ATTN_OPT_COUNT
} attn_option;
#define ATTN_OPT(o) (1u << (o))
#define ATTN_OPT_ALL ((1u << ATTN_OPT_COUNT) - 1u)

/* A consumer's support row: the options it takes, and for options it
 * rejects an optional reason (the message is "<option>: <reason>", or
 * "<option>: not supported by <name>"). */
typedef struct attn_support {
  const char *name;
  uint32_t supported;
  const char *why[ATTN_OPT_COUNT];
  /* 16-bit storage (bf16, f16): NULL when supported, else the reason. */
  const char *no_16bit;
} attn_support;

/* The options desc asks for (with a weights / lse output or not). */
uint32_t attn_options_used(const attn_desc *desc, bool weights, bool lse);
/* ATTN_ERR_UNSUPPORTED for the first used option s does not support. */
attn_status attn_options_check(attn_context *ctx, const attn_support *s, uint32_t used);

/* The dtype rules of a consumer: 16-bit storage dtypes need support for
 * them (s->no_16bit) and a dot-product score; ATTN_ERR_UNSUPPORTED names
 * the variant or the score. */
attn_status attn_dtype_check(attn_context *ctx, const attn_support *s, const attn_desc *desc,
                             attn_dtype dtype);

/* ---- plans (core/plan.c) -------------------------------------------------- */

struct attn_plan;

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

/* Shapes of one attention call. */
typedef struct attn_dims {
  attn_dtype dtype;
  int64_t B, H, Hkv, Sq, Sk, Dq, Dk, Dv;
} attn_dims;

/* One call's scratch: a region shared by the call's tasks, then one slot per
 * thread of the executing context. Plans size both at creation; execute
 * carves nothing and allocates nothing. */
typedef struct attn_ws {
  char *shared;
  char *slots;
  size_t slot_bytes;
} attn_ws;
static inline char *attn_ws_slot(const attn_ws *w, int32_t thread) {
  return w->slots + (size_t)thread * w->slot_bytes;
}

/* One execute: the context whose threads run it (and which receives the
 * error message) and its workspace. The plan itself is read-only. */
typedef struct attn_run {
  attn_context *ctx;
  attn_ws ws;
} attn_run;

typedef attn_status attn_execute_sig(const struct attn_plan *plan, const attn_run *run,
                                     const attn_tensor *q, const attn_tensor *k,
                                     const attn_tensor *v, attn_tensor *out,
                                     attn_tensor *weights, attn_tensor *lse);
typedef attn_execute_sig *attn_execute_fn;

/* A row of the variant table: how to build, run and tear down a plan of this
 * variant, and the options it supports (checked before init). */
typedef struct attn_variant_ops {
  attn_variant id;
  attn_support support;
  /* Validate the variant's own options against p's shapes and set p->impl,
   * p->ws_shared, p->ws_slot (and p->consts); on failure free what was
   * allocated and return the status (message set). */
  attn_status (*init)(struct attn_plan *p);
  attn_execute_fn execute;
  void (*destroy)(struct attn_plan *p); /* frees what init allocated beyond impl */
  /* Optional: sparse variants' block layout, Performer's feature redraw. */
  attn_status (*block_layout)(const struct attn_plan *plan, uint8_t *buf, size_t *size);
  attn_status (*redraw)(struct attn_plan *plan, uint64_t seed);
} attn_variant_ops;

/* The table row of a variant (NULL for values outside the enum). */
const attn_variant_ops *attn_variant_find(attn_variant v);

struct attn_plan {
  attn_context *ctx;
  attn_desc desc; /* a copy; borrowed arrays/tensors stay the caller's */
  const attn_variant_ops *ops;
  attn_dims dims;
  double scale; /* resolved */
  attn_tmeta meta[6]; /* q, k, v, out, weights, lse */
  void *impl;        /* variant state, read-only once made (but by redraw) */
  size_t impl_bytes; /* for the allocator's free() */
  size_t ws_shared, ws_slot; /* workspace layout (bytes; multiples of 64) */
  void *workspace;   /* the plan's own, for attn_plan_execute() */
  size_t workspace_bytes;
};

/* The kernels' entry for plans built on other plans (multi-head): execute on
 * an explicit run (context + workspace of attn_plan_ws_bytes(p, threads)). */
size_t attn_plan_ws_bytes(const struct attn_plan *p, int32_t threads);
attn_ws attn_plan_ws_at(const struct attn_plan *p, void *base);

/* The variant state of a plan, zeroed and attached to p (freed with the
 * plan); NULL with the message set when out of memory. */
void *attn_plan_impl_alloc(struct attn_plan *p, size_t bytes);

/* Each variant's functions; core/variants.c lists them in the table with
 * what each supports. */
attn_status attn_exact_plan_init(struct attn_plan *p);
attn_status attn_swin_plan_init(struct attn_plan *p);
attn_status attn_sparse_plan_init(struct attn_plan *p); /* Longformer, BigBird, block-sparse */
attn_status attn_linear_plan_init(struct attn_plan *p); /* elu+1, Performer */
attn_status attn_lowrank_plan_init(struct attn_plan *p); /* Linformer */
attn_execute_sig attn_exact_plan_execute, attn_swin_plan_execute, attn_linear_plan_execute,
    attn_lowrank_plan_execute;
void attn_sparse_plan_destroy(struct attn_plan *p);
void attn_linear_plan_destroy(struct attn_plan *p);
void attn_lowrank_plan_destroy(struct attn_plan *p);
attn_status attn_sparse_block_layout(const struct attn_plan *p, uint8_t *buf, size_t *size);
attn_status attn_performer_redraw(struct attn_plan *p, uint64_t seed);

/* ---- threads (core/threadpool.c) ------------------------------------------ */

/* Calls fn(arg, task, thread) for task in [0, ntasks) on the context's threads
 * (thread in [0, num_threads)). Tasks are handed out dynamically, so a task
 * must write only its own outputs and use only workspace slot `thread`:
 * results then do not depend on the thread count. OpenBLAS is single-threaded
 * for the duration and restored afterwards. */
typedef void (*attn_task_fn)(void *arg, int64_t task, int32_t thread);
attn_status attn_parallel_for(attn_context *ctx, int64_t ntasks, attn_task_fn fn, void *arg);
/* The same with the job's estimated cost in FLOPs: a job too small to pay
 * for waking the workers (or for any dispatch at all) runs on the calling
 * thread alone. Results do not depend on it (tasks are independent). */
attn_status attn_parallel_for_cost(attn_context *ctx, int64_t ntasks, double flops,
                                   attn_task_fn fn, void *arg);
/* Start the context's workers if not running (plans call this at creation so
 * execute never allocates). */
attn_status attn_threadpool_ensure(attn_context *ctx);
void attn_threadpool_destroy(struct attn_threadpool *pool, attn_context *ctx);

#endif /* ATTN_INTERNAL_H */

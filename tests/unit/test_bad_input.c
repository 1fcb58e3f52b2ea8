/* Bad input to every public function: the exact status, no output written
 * (canaries in out/weights/lse and in every `*out` handle pointer), nothing
 * leaked, and — where a context is reachable — a fresh message naming the
 * offending argument. Table-driven; the test prints how many cases ran.
 *
 * Three tables:
 *  - BAD_CASES: one call each (an X-macro list: name, status, message, call);
 *  - META_ROWS: tensor metadata for attn_tensor_create()/attn_tensor_wrap();
 *  - MUTATIONS: one of q/k/v/out/weights/lse replaced by a wrong tensor,
 *    each row run through attn_plan_create(), attn_forward() and
 *    attn_plan_execute() (where it must give ATTN_ERR_MISMATCH).
 * A new variant or module adds rows; nothing else changes. */
#define _POSIX_C_SOURCE 200809L /* setenv, strdup */
#include <float.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/internal.h"
#include "testutil.h"

/* ---- fixture ---------------------------------------------------------------- */

enum { B_ = 2, H_ = 2, SQ = 5, SK = 6, D_ = 4 };
#define ARENA_BYTES (64 * 1024)
#define CANARY_BYTE 0xA5
#define NOCTX NULL /* no context reachable (NULL ctx/handle): status only */
#define CAP_BYTES ((size_t)256 << 20)

static void *const HANDLE_CANARY = (void *)(uintptr_t)0xC0FFEE00u;

/* Allocator: counts outstanding bytes and refuses anything above CAP_BYTES,
 * so "too big to allocate" is a deterministic ATTN_ERR_NO_MEMORY. */
typedef struct cap_alloc {
  int64_t outstanding;
} cap_alloc;

static void *cap_alloc_fn(void *user, size_t size, size_t alignment) {
  cap_alloc *c = user;
  if (size > CAP_BYTES) return NULL;
  void *p = aligned_alloc(alignment, (size + alignment - 1) / alignment * alignment);
  if (p) c->outstanding += (int64_t)size;
  return p;
}

static void cap_free_fn(void *user, void *ptr, size_t size) {
  cap_alloc *c = user;
  c->outstanding -= (int64_t)size;
  free(ptr);
}

#define MAX_EXTRA 48

typedef struct fx {
  cap_alloc alloc;
  attn_context *ctx;
  attn_desc *desc;
  attn_tensor *q, *k, *v, *out, *w, *lse;
  attn_plan *plan;    /* made with weights and lse */
  attn_plan *plan_nw; /* made without weights and lse */
  attn_context_options opts;
  /* handles a failing call must leave alone */
  attn_context *hc;
  attn_tensor *ht;
  attn_desc *hd;
  attn_plan *hp;
  attn_backward_plan *hb;
  /* scratch tensors made by T(); destroyed at teardown */
  attn_tensor *extra[MAX_EXTRA];
  int nextra;
  int64_t len2[2], len_neg[2], len_big_k[2], len_big_q[2];
  double slopes2[2], slopes_nan[2], slopes_inf[2];
  int64_t idx2[2], idx_neg[2];
  uint8_t buf[64];
  size_t size;
  _Alignas(64) unsigned char in_arena[ARENA_BYTES];  /* q, k, v data */
  _Alignas(64) unsigned char out_arena[ARENA_BYTES]; /* everything writable */
  unsigned char *out_next;
} fx;

static unsigned char *arena_take(fx *f, size_t bytes) {
  unsigned char *p = f->out_next;
  size_t used = (size_t)(p - f->out_arena) + ((bytes + 63) & ~(size_t)63);
  if (used > ARENA_BYTES) fail_msg("test arena exhausted");
  f->out_next = f->out_arena + used;
  return p;
}

/* A wrapped tensor of the given metadata in the canary arena. Dims beyond
 * rank are ignored; strides NULL = contiguous. Memory for huge metadata is
 * not reserved: such tensors are only handed to functions that read no data
 * (plan creation, setters). */
static attn_tensor *TS(fx *f, attn_dtype dt, int32_t rank, int64_t d0, int64_t d1, int64_t d2,
                       int64_t d3, const int64_t *strides) {
  int64_t shape[4] = {d0, d1, d2, d3};
  attn_tensor *t = NULL;
  int64_t extent = 1, dense = 1; /* dense: the contiguous stride of dim i */
  for (int i = rank - 1; i >= 0 && i < 4; i--) {
    int64_t s = strides ? strides[i] : dense;
    extent += (shape[i] - 1) * (s < 0 ? 0 : s);
    if (shape[i] > 0 && dense <= ARENA_BYTES) dense *= shape[i];
    if (extent > ARENA_BYTES / 8 || extent < 0) extent = 1; /* huge: metadata only */
  }
  unsigned char *mem = arena_take(f, (size_t)extent * 8);
  attn_status st = attn_tensor_wrap(f->ctx, dt, rank, shape, strides, mem, &t);
  if (st != ATTN_OK) fail_msg("fixture: cannot wrap a test tensor: %s", attn_context_last_error(f->ctx));
  if (f->nextra == MAX_EXTRA) fail_msg("fixture: too many scratch tensors");
  f->extra[f->nextra++] = t;
  return t;
}
#define T(f, dt, rank, d0, d1, d2, d3) TS((f), (dt), (rank), (d0), (d1), (d2), (d3), NULL)

static void must(attn_status st) {
  if (st != ATTN_OK) fail_msg("fixture call failed unexpectedly: status %d", (int)st);
}

static attn_tensor *in_tensor(fx *f, size_t off, int64_t S) {
  int64_t shape[4] = {B_, H_, S, D_};
  attn_tensor *t = NULL;
  must(attn_tensor_wrap(f->ctx, ATTN_DTYPE_F32, 4, shape, NULL, f->in_arena + off, &t));
  return t;
}

static void fx_init(fx *f) {
  memset(f, 0, sizeof *f);
  memset(f->out_arena, CANARY_BYTE, sizeof f->out_arena);
  f->out_next = f->out_arena;
  uint64_t seed = 7;
  float *in = (float *)f->in_arena;
  for (size_t i = 0; i < ARENA_BYTES / 4; i++) in[i] = (float)tu_uniform(&seed, -1, 1);

  attn_context_options o;
  attn_context_options_init(&o);
  o.num_threads = 1;
  o.allocator.alloc = cap_alloc_fn;
  o.allocator.free = cap_free_fn;
  o.allocator.user_data = &f->alloc;
  must(attn_context_create(&o, &f->ctx));
  attn_context_options_init(&f->opts);
  must(attn_desc_create(f->ctx, &f->desc));
  f->q = in_tensor(f, 0, SQ);
  f->k = in_tensor(f, 4096, SK);
  f->v = in_tensor(f, 8192, SK);
  f->out = T(f, ATTN_DTYPE_F32, 4, B_, H_, SQ, D_);
  f->w = T(f, ATTN_DTYPE_F32, 4, B_, H_, SQ, SK);
  f->lse = T(f, ATTN_DTYPE_F32, 3, B_, H_, SQ, 0);
  must(attn_plan_create(f->ctx, f->desc, f->q, f->k, f->v, f->out, f->w, f->lse, &f->plan));
  must(attn_plan_create(f->ctx, f->desc, f->q, f->k, f->v, f->out, NULL, NULL, &f->plan_nw));
  f->hc = HANDLE_CANARY;
  f->ht = HANDLE_CANARY;
  f->hd = HANDLE_CANARY;
  f->hp = HANDLE_CANARY;
  f->hb = HANDLE_CANARY;
  f->len2[0] = 3, f->len2[1] = 6;
  f->len_neg[0] = 1, f->len_neg[1] = -1;
  f->len_big_k[0] = 6, f->len_big_k[1] = 7;
  f->len_big_q[0] = 6, f->len_big_q[1] = 5;
  f->slopes2[0] = 0.5, f->slopes2[1] = 0.25;
  f->slopes_nan[0] = 0.5, f->slopes_nan[1] = NAN;
  f->slopes_inf[0] = INFINITY, f->slopes_inf[1] = 0.25;
  f->idx2[0] = 0, f->idx2[1] = 3;
  f->idx_neg[0] = 0, f->idx_neg[1] = -2;
  f->size = sizeof f->buf;
  memset(f->buf, CANARY_BYTE, sizeof f->buf);
  /* A stale message: a case must write its own. */
  snprintf(f->ctx->last_error, sizeof f->ctx->last_error, "(stale message)");
}

static int n_cases, n_failed;

/* A case that fails is reported and counted; the test fails at the end, so
 * one run lists every failing case. */
#define CASE_FAIL(...)        \
  do {                        \
    print_error(__VA_ARGS__); \
    print_error("\n");        \
    n_failed++;               \
  } while (0)

/* Checks every canary, then frees everything and checks for leaks. */
static void fx_check_and_free(fx *f, const char *name) {
  for (size_t i = 0; i < ARENA_BYTES; i++)
    if (f->out_arena[i] != CANARY_BYTE) {
      CASE_FAIL("%s: output memory written at byte %zu", name, i);
      break;
    }
  for (size_t i = 0; i < sizeof f->buf; i++)
    if (f->buf[i] != CANARY_BYTE) {
      CASE_FAIL("%s: block-layout buffer written", name);
      break;
    }
  if (f->size != sizeof f->buf) CASE_FAIL("%s: *size changed on failure", name);
  if (f->hc != HANDLE_CANARY || f->ht != HANDLE_CANARY || f->hd != HANDLE_CANARY ||
      f->hp != HANDLE_CANARY || f->hb != HANDLE_CANARY)
    {
    if (f->hb != HANDLE_CANARY) attn_backward_plan_destroy(f->hb);
    CASE_FAIL("%s: an *out handle was written on failure", name);
    /* Release what a wrongly successful call made. */
    if (f->hp != HANDLE_CANARY) attn_plan_destroy(f->hp);
    if (f->ht != HANDLE_CANARY) attn_tensor_destroy(f->ht);
    if (f->hd != HANDLE_CANARY) attn_desc_destroy(f->hd);
    if (f->hc != HANDLE_CANARY) attn_context_destroy(f->hc);
  }
  attn_plan_destroy(f->plan);
  attn_plan_destroy(f->plan_nw);
  attn_tensor_destroy(f->q);
  attn_tensor_destroy(f->k);
  attn_tensor_destroy(f->v);
  for (int i = 0; i < f->nextra; i++) attn_tensor_destroy(f->extra[i]);
  attn_desc_destroy(f->desc);
  attn_context_destroy(f->ctx);
  if (f->alloc.outstanding != 0)
    CASE_FAIL("%s: %lld bytes leaked", name, (long long)f->alloc.outstanding);
}

static void check_result(fx *f, const char *name, attn_status got, attn_status want,
                         const char *msg) {
  n_cases++;
  if (got != want)
    CASE_FAIL("%s: status %d (%s), expected %d (%s); message: %s", name, (int)got,
              attn_status_string(got), (int)want, attn_status_string(want),
              attn_context_last_error(f->ctx));
  else if (msg != NULL && strstr(attn_context_last_error(f->ctx), msg) == NULL)
    CASE_FAIL("%s: message \"%s\" does not name \"%s\"", name, attn_context_last_error(f->ctx),
              msg);
}

/* Helpers the case expressions use. */
static attn_status P(fx *f) {
  return attn_plan_create(f->ctx, f->desc, f->q, f->k, f->v, f->out, f->w, f->lse, &f->hp);
}
static attn_status F(fx *f) {
  return attn_forward(f->ctx, f->desc, f->q, f->k, f->v, f->out, f->w, f->lse);
}
static attn_status E(fx *f) { return attn_plan_execute(f->plan, f->q, f->k, f->v, f->out, f->w, f->lse); }

static attn_status set_data_on_owned(fx *f) {
  attn_tensor *t = NULL;
  const int64_t shape[1] = {4};
  must(attn_tensor_create(f->ctx, ATTN_DTYPE_F32, 1, shape, &t));
  attn_status st = attn_tensor_set_data(t, f->out_arena);
  attn_tensor_destroy(t);
  return st;
}

/* Additive score whose attention dim A makes the per-thread workspace
 * (128-row query tile × A) overflow int64: q [1,1,128,4], A = 2^56. */
static attn_status additive_workspace_overflow(fx *f) {
  const int64_t A = (int64_t)1 << 56;
  must(attn_desc_set_score(f->desc, ATTN_SCORE_ADDITIVE));
  must(attn_desc_set_additive_weights(f->desc, T(f, ATTN_DTYPE_F32, 2, A, D_, 0, 0),
                                      T(f, ATTN_DTYPE_F32, 2, A, D_, 0, 0), NULL,
                                      T(f, ATTN_DTYPE_F32, 1, A, 0, 0, 0)));
  attn_tensor *q = T(f, ATTN_DTYPE_F32, 4, 1, 1, 128, D_);
  attn_tensor *k = T(f, ATTN_DTYPE_F32, 4, 1, 1, 8, D_);
  attn_tensor *o = T(f, ATTN_DTYPE_F32, 4, 1, 1, 128, D_);
  return attn_plan_create(f->ctx, f->desc, q, k, k, o, NULL, NULL, &f->hp);
}

/* Additive score with a short query block (S_q = 1) but a long K projection
 * B·H_kv·S_k·A: either the element count (kp) or its byte count overflows. */
static attn_status additive_kproj_overflow(fx *f, int64_t A, int64_t Sk) {
  must(attn_desc_set_score(f->desc, ATTN_SCORE_ADDITIVE));
  must(attn_desc_set_additive_weights(f->desc, T(f, ATTN_DTYPE_F32, 2, A, D_, 0, 0),
                                      T(f, ATTN_DTYPE_F32, 2, A, D_, 0, 0), NULL,
                                      T(f, ATTN_DTYPE_F32, 1, A, 0, 0, 0)));
  attn_tensor *q = T(f, ATTN_DTYPE_F32, 4, 1, 1, 1, D_);
  attn_tensor *k = T(f, ATTN_DTYPE_F32, 4, 1, 1, Sk, D_);
  attn_tensor *o = T(f, ATTN_DTYPE_F32, 4, 1, 1, 1, D_);
  return attn_plan_create(f->ctx, f->desc, q, k, k, o, NULL, NULL, &f->hp);
}

/* A = 2^24: K·W_kᵀ needs B·H_kv·S_k·A floats = 1.6 GB > the test allocator's cap. */
static attn_status additive_workspace_too_big(fx *f) {
  const int64_t A = (int64_t)1 << 24;
  must(attn_desc_set_score(f->desc, ATTN_SCORE_ADDITIVE));
  must(attn_desc_set_additive_weights(f->desc, T(f, ATTN_DTYPE_F32, 2, A, D_, 0, 0),
                                      T(f, ATTN_DTYPE_F32, 2, A, D_, 0, 0), NULL,
                                      T(f, ATTN_DTYPE_F32, 1, A, 0, 0, 0)));
  return P(f);
}

static attn_status plan_with_out_strides(fx *f, int target, const int64_t *strides) {
  attn_tensor *t = target == 3   ? TS(f, ATTN_DTYPE_F32, 4, B_, H_, SQ, D_, strides)
                   : target == 4 ? TS(f, ATTN_DTYPE_F32, 4, B_, H_, SQ, SK, strides)
                                 : TS(f, ATTN_DTYPE_F32, 3, B_, H_, SQ, 0, strides);
  return attn_plan_create(f->ctx, f->desc, f->q, f->k, f->v, target == 3 ? t : f->out,
                          target == 4 ? t : f->w, target == 5 ? t : f->lse, &f->hp);
}

/* ---- backward (backward.h) ---- */

/* Gradient tensors of the fixture's shapes in the canary arena. */
static attn_tensor *GQ(fx *f) { return T(f, ATTN_DTYPE_F32, 4, B_, H_, SQ, D_); }
static attn_tensor *GK(fx *f) { return T(f, ATTN_DTYPE_F32, 4, B_, H_, SK, D_); }

/* attn_backward_plan_create on plan with one tensor replaced (which: 0 dout,
 * 1 dq, 2 dk, 3 dv, 4 dmask; NULL replacement = that tensor NULL). */
static attn_status BP(fx *f, const attn_plan *plan, int which, attn_tensor *t) {
  attn_tensor *ts[5] = {GQ(f), GQ(f), GK(f), GK(f), NULL};
  ts[which] = t;
  return attn_backward_plan_create(plan, ts[0], ts[1], ts[2], ts[3], ts[4], &f->hb);
}

/* A forward plan of the fixture's tensors with lse, on a descriptor the
 * caller configured; its backward plan with the fixture's gradients. */
static attn_status BP_desc(fx *f) {
  attn_plan *p = NULL;
  must(attn_plan_create(f->ctx, f->desc, f->q, f->k, f->v, f->out, NULL, f->lse, &p));
  attn_status st = BP(f, p, 0, GQ(f));
  attn_plan_destroy(p);
  return st;
}

/* An additive mask [1, 1, S_q, S_k] in the forward; dmask as given. */
static attn_status BP_dmask(fx *f, attn_tensor *dmask) {
  must(attn_desc_set_additive_mask(f->desc, T(f, ATTN_DTYPE_F32, 4, 1, 1, SQ, SK)));
  attn_plan *p = NULL;
  must(attn_plan_create(f->ctx, f->desc, f->q, f->k, f->v, f->out, NULL, f->lse, &p));
  attn_status st = BP(f, p, 4, dmask);
  attn_plan_destroy(p);
  return st;
}

/* A valid backward plan on f->plan, executed with one tensor replaced (which:
 * 0 q … 4 lse, 5 dout … 9 dmask). */
static attn_status BE(fx *f, int which, attn_tensor *t, bool replace) {
  attn_backward_plan *bp = NULL;
  attn_tensor *ts[10] = {f->q, f->k, f->v, f->out, f->lse, GQ(f), GQ(f), GK(f), GK(f), NULL};
  must(attn_backward_plan_create(f->plan, ts[5], ts[6], ts[7], ts[8], NULL, &bp));
  if (replace) ts[which] = t;
  attn_status st = attn_backward_execute(bp, ts[0], ts[1], ts[2], ts[3], ts[4], ts[5], ts[6],
                                         ts[7], ts[8], ts[9]);
  attn_backward_plan_destroy(bp);
  return st;
}

/* The weight-gradient setters on a backward plan of a general (score 2) or
 * additive (score 3, A = 4, no bias) forward of the fixture's tensors, with
 * one gradient replaced (which: 0 dw or dw_q, 1 dw_k, 2 dbias, 3 dv). */
static attn_status BW(fx *f, int score, int which, attn_tensor *t) {
  const attn_dtype F = ATTN_DTYPE_F32;
  must(attn_desc_set_score(f->desc, (attn_score)score));
  if (score == ATTN_SCORE_GENERAL)
    must(attn_desc_set_general_weight(f->desc, T(f, F, 2, D_, D_, 0, 0)));
  else
    must(attn_desc_set_additive_weights(f->desc, T(f, F, 2, 4, D_, 0, 0), T(f, F, 2, 4, D_, 0, 0),
                                        NULL, T(f, F, 1, 4, 0, 0, 0)));
  attn_plan *p = NULL;
  attn_backward_plan *bp = NULL;
  must(attn_plan_create(f->ctx, f->desc, f->q, f->k, f->v, f->out, NULL, f->lse, &p));
  must(attn_backward_plan_create(p, GQ(f), GQ(f), GK(f), GK(f), NULL, &bp));
  attn_tensor *g[4] = {T(f, F, 2, 4, D_, 0, 0), T(f, F, 2, 4, D_, 0, 0), NULL,
                       T(f, F, 1, 4, 0, 0, 0)};
  if (score == ATTN_SCORE_GENERAL) g[0] = T(f, F, 2, D_, D_, 0, 0);
  g[which] = t;
  attn_status st = score == ATTN_SCORE_GENERAL
                       ? attn_backward_plan_set_general_grad(bp, g[0])
                       : attn_backward_plan_set_additive_grads(bp, g[0], g[1], g[2], g[3]);
  attn_backward_plan_destroy(bp);
  attn_plan_destroy(p);
  return st;
}

/* attn_backward_plan_set_lowrank_grads with [3, S_k] gradients on the
 * backward of the fixture's exact plan, or (linformer) of a Linformer plan
 * with seeded projections (k = 3). */
static attn_status BL(fx *f, bool linformer, int which, attn_tensor *t) {
  (void)which, (void)t;
  attn_plan *p = f->plan;
  if (linformer) {
    must(attn_desc_set_variant(f->desc, ATTN_VARIANT_LINFORMER));
    must(attn_desc_set_lowrank(f->desc, 3, 1));
    must(attn_plan_create(f->ctx, f->desc, f->q, f->k, f->v, f->out, NULL, f->lse, &p));
  }
  attn_backward_plan *bp = NULL;
  must(attn_backward_plan_create(p, GQ(f), GQ(f), GK(f), GK(f), NULL, &bp));
  attn_status st = attn_backward_plan_set_lowrank_grads(bp, T(f, ATTN_DTYPE_F32, 2, 3, SK, 0, 0),
                                                        T(f, ATTN_DTYPE_F32, 2, 3, SK, 0, 0));
  attn_backward_plan_destroy(bp);
  if (linformer) attn_plan_destroy(p);
  return st;
}

/* attn_backward_plan_set_general_grad on the fixture's (scaled-dot) plan. */
static attn_status BW_dot(fx *f) {
  attn_backward_plan *bp = NULL;
  must(attn_backward_plan_create(f->plan, GQ(f), GQ(f), GK(f), GK(f), NULL, &bp));
  attn_status st = attn_backward_plan_set_general_grad(bp, T(f, ATTN_DTYPE_F32, 2, D_, D_, 0, 0));
  attn_backward_plan_destroy(bp);
  return st;
}

/* Key lengths valid at plan time, changed past S_k before the backward runs. */
static attn_status BE_lengths_changed(fx *f) {
  must(attn_desc_set_key_lengths(f->desc, f->len2, 2));
  attn_plan *p = NULL;
  attn_backward_plan *bp = NULL;
  attn_tensor *dq = GQ(f), *dk = GK(f), *dv = GK(f), *dout = GQ(f);
  must(attn_plan_create(f->ctx, f->desc, f->q, f->k, f->v, f->out, NULL, f->lse, &p));
  must(attn_backward_plan_create(p, dout, dq, dk, dv, NULL, &bp));
  f->len2[1] = SK + 1;
  attn_status st = attn_backward_execute(bp, f->q, f->k, f->v, f->out, f->lse, dout, dq, dk, dv, NULL);
  attn_backward_plan_destroy(bp);
  attn_plan_destroy(p);
  return st;
}

/* attn_merge_states: out_a = out_b = q (inputs), lse inputs wrapped in the
 * input arena (lse_a at 16 KiB, lse_b at 20 KiB; `poison` writes NaN or +inf
 * into element 3 of one of them), outputs in the canary arena. */
static attn_tensor *lse_in(fx *f, size_t off, double poison) {
  int64_t shape[3] = {B_, H_, SQ};
  attn_tensor *t = NULL;
  if (poison != 0) ((float *)(f->in_arena + off))[3] = (float)poison;
  must(attn_tensor_wrap(f->ctx, ATTN_DTYPE_F32, 3, shape, NULL, f->in_arena + off, &t));
  if (f->nextra == MAX_EXTRA) fail_msg("fixture: too many scratch tensors");
  f->extra[f->nextra++] = t;
  return t;
}
static attn_status MG(fx *f, const attn_tensor *oa, const attn_tensor *la, const attn_tensor *ob,
                      const attn_tensor *lb, attn_tensor *o, attn_tensor *l) {
  return attn_merge_states(f->ctx, oa, la, ob, lb, o, l);
}
#define LA(f) lse_in((f), 16384, 0)
#define LB(f) lse_in((f), 20480, 0)

/* out one element past out_a in the same buffer: overlapping, not in place. */
static attn_status merge_shifted_alias(fx *f) {
  attn_tensor *oa = TS(f, ATTN_DTYPE_F32, 4, B_, H_, SQ, D_, NULL);
  int64_t shape[4] = {B_, H_, SQ, D_};
  attn_tensor *o = NULL;
  must(attn_tensor_wrap(f->ctx, ATTN_DTYPE_F32, 4, shape, NULL, (float *)attn_tensor_data(oa) + 1, &o));
  f->extra[f->nextra++] = o;
  return attn_merge_states(f->ctx, oa, LA(f), f->q, LB(f), o, f->lse);
}
/* lse written into out's memory. */
static attn_status merge_lse_over_out(fx *f) {
  int64_t shape[3] = {B_, H_, SQ};
  attn_tensor *l = NULL;
  must(attn_tensor_wrap(f->ctx, ATTN_DTYPE_F32, 3, shape, NULL, attn_tensor_data(f->out), &l));
  f->extra[f->nextra++] = l;
  return attn_merge_states(f->ctx, f->q, LA(f), f->q, LB(f), f->out, l);
}

/* ---- serving: packed batches, sinks, the per-key mass ---- */

static int64_t vl_good[3] = {0, 2, SQ}, vl_kgood[3] = {0, 4, SK}, vl_dec[3] = {0, 4, 3};
static int64_t vl_short[3] = {0, 2, SQ - 1}, vl_first[3] = {1, 2, SQ};

/* A packed plan (batch dim 1) on the fixture's memory with offsets qo/ko. */
static attn_status varlen_plan(fx *f, const int64_t *qo, const int64_t *ko, attn_plan **out) {
  must(attn_desc_set_varlen(f->desc, qo, ko, 2));
  attn_tensor *q = T(f, ATTN_DTYPE_F32, 4, 1, H_, SQ, D_), *k = T(f, ATTN_DTYPE_F32, 4, 1, H_, SK, D_);
  attn_tensor *o = T(f, ATTN_DTYPE_F32, 4, 1, H_, SQ, D_);
  return attn_plan_create(f->ctx, f->desc, q, k, k, o, NULL, NULL, out);
}

/* Offsets valid at plan creation, broken (decreasing or short) before execute. */
static attn_status varlen_exec_after_change(fx *f, int which) {
  static int64_t qo[3], ko[3];
  memcpy(qo, vl_good, sizeof qo);
  memcpy(ko, vl_kgood, sizeof ko);
  attn_plan *p = NULL;
  attn_tensor *q = T(f, ATTN_DTYPE_F32, 4, 1, H_, SQ, D_), *k = T(f, ATTN_DTYPE_F32, 4, 1, H_, SK, D_);
  attn_tensor *o = T(f, ATTN_DTYPE_F32, 4, 1, H_, SQ, D_);
  must(attn_desc_set_varlen(f->desc, qo, ko, 2));
  must(attn_plan_create(f->ctx, f->desc, q, k, k, o, NULL, NULL, &p));
  if (which == 0) qo[1] = SQ + 1; /* decreasing */
  else ko[2] = SK - 1;           /* last ≠ total */
  attn_status st = attn_plan_execute(p, q, k, k, o, NULL, NULL);
  attn_plan_destroy(p);
  return st;
}

static double sk_good[2] = {0.5, -1.0}, sk_nan[2] = {0.5, NAN}, sk_inf[2] = {INFINITY, 0};

/* Sinks valid at plan creation, NaN before execute: nothing written. */
static attn_status sinks_exec_after_nan(fx *f) {
  static double lg[2];
  memcpy(lg, sk_good, sizeof lg);
  attn_plan *p = NULL;
  must(attn_desc_set_sinks(f->desc, lg, H_));
  must(attn_plan_create(f->ctx, f->desc, f->q, f->k, f->v, f->out, f->w, f->lse, &p));
  lg[1] = NAN;
  attn_status st = attn_plan_execute(p, f->q, f->k, f->v, f->out, f->w, f->lse);
  attn_plan_destroy(p);
  return st;
}

static attn_status mass_plan(fx *f, attn_tensor *mass) {
  must(attn_desc_set_key_mass(f->desc, mass));
  return P(f);
}

#define F32 ATTN_DTYPE_F32
#define F64 ATTN_DTYPE_F64
#define U8 ATTN_DTYPE_U8
#define OPT(field, value) (f->opts.field = (value), attn_context_create(&f->opts, &f->hc))
#define SHP(...) ((const int64_t[]){__VA_ARGS__})
#define STR(...) ((const int64_t[]){__VA_ARGS__})

/* A KV cache (B_, 1 kv head, d = D_) with this storage, dtype, group size,
 * mode and capacity; must fail, leaving the handle alone. */
static attn_status KVC(fx *f, attn_kvcache_storage st, attn_dtype dt, int64_t group,
                       attn_kvcache_mode mode, int64_t cap) {
  attn_kvcache_config cfg;
  attn_kvcache_config_init(&cfg);
  cfg.batch = B_;
  cfg.capacity = cap;
  cfg.d_k = D_;
  cfg.dtype = dt;
  cfg.mode = mode;
  cfg.storage = st;
  cfg.group_size = group;
  attn_kvcache *c = HANDLE_CANARY;
  attn_status r = attn_kvcache_create(f->ctx, &cfg, &c);
  if (c != HANDLE_CANARY) {
    CASE_FAIL("attn_kvcache_create wrote *out on failure");
    if (r == ATTN_OK) attn_kvcache_destroy(c);
  }
  return r;
}

/* A valid cache of storage st, then: how 0 = attn_kvcache_view (float
 * views, into f->ht twice), 1 = attn_kvcache_view_raw(NULL), 2 = a raw view
 * with a bad struct_size (whose other bytes must stay untouched). */
static attn_status kv_view(fx *f, attn_kvcache_storage st, int how) {
  attn_kvcache_config cfg;
  attn_kvcache_config_init(&cfg);
  cfg.capacity = 8;
  cfg.d_k = 32;
  cfg.storage = st;
  attn_kvcache *c = NULL;
  must(attn_kvcache_create(f->ctx, &cfg, &c));
  snprintf(f->ctx->last_error, sizeof f->ctx->last_error, "(stale message)");
  attn_status r;
  if (how == 0) {
    attn_tensor *v = HANDLE_CANARY;
    r = attn_kvcache_view(c, &f->ht, &v);
    if (v != HANDLE_CANARY) CASE_FAIL("attn_kvcache_view wrote *v on failure");
  } else if (how == 1) {
    r = attn_kvcache_view_raw(c, NULL);
  } else {
    attn_kvcache_raw raw;
    memset(&raw, CANARY_BYTE, sizeof raw);
    raw.struct_size = sizeof raw - 8;
    r = attn_kvcache_view_raw(c, &raw);
    const unsigned char *b = (const unsigned char *)&raw + sizeof raw.struct_size;
    for (size_t i = 0; i < sizeof raw - sizeof raw.struct_size; i++)
      if (b[i] != CANARY_BYTE) {
        CASE_FAIL("attn_kvcache_view_raw wrote the struct on failure");
        break;
      }
  }
  /* Keep the message past destroy (destroy does not touch it). */
  attn_kvcache_destroy(c);
  return r;
}

/* A valid ring cache of storage st, then keep_first = 2 (quantized
 * storages have no kept-first store: unsupported, keep stays 0). */
static attn_status kv_keep(fx *f, attn_kvcache_storage st) {
  attn_kvcache_config cfg;
  attn_kvcache_config_init(&cfg);
  cfg.capacity = 8;
  cfg.d_k = 32;
  cfg.mode = ATTN_KVCACHE_RING;
  cfg.storage = st;
  cfg.group_size = 8;
  attn_kvcache *c = NULL;
  must(attn_kvcache_create(f->ctx, &cfg, &c));
  const attn_status r = attn_kvcache_set_keep_first(c, 2);
  attn_kvcache_destroy(c);
  return r;
}

/* name, expected status, substring of the message (NOCTX: none reachable), call */
#define BAD_CASES(X)                                                                              \
  /* ---- context ---- */                                                                         \
  X(context_create_out_null, ATTN_ERR_NULL_ARG, NOCTX, attn_context_create(NULL, NULL))           \
  X(context_create_opts_out_null, ATTN_ERR_NULL_ARG, NOCTX, attn_context_create(&f->opts, NULL))  \
  X(context_threads_negative, ATTN_ERR_INVALID_ARG, NOCTX, OPT(num_threads, -1))                  \
  X(context_threads_1025, ATTN_ERR_INVALID_ARG, NOCTX, OPT(num_threads, 1025))                    \
  X(context_threads_int_min, ATTN_ERR_INVALID_ARG, NOCTX, OPT(num_threads, INT32_MIN))            \
  X(context_alloc_without_free, ATTN_ERR_INVALID_ARG, NOCTX, OPT(allocator.alloc, cap_alloc_fn))  \
  X(context_free_without_alloc, ATTN_ERR_INVALID_ARG, NOCTX, OPT(allocator.free, cap_free_fn))    \
  X(context_struct_size_0, ATTN_ERR_INVALID_ARG, NOCTX, OPT(struct_size, 0))                      \
  X(context_struct_size_small, ATTN_ERR_INVALID_ARG, NOCTX, OPT(struct_size, 8))                  \
  X(context_struct_size_future, ATTN_ERR_INVALID_ARG, NOCTX,                                      \
    OPT(struct_size, sizeof(attn_context_options) + 8))                                           \
  /* ---- tensors: NULLs and set_data ---- */                                                     \
  X(tensor_create_ctx_null, ATTN_ERR_NULL_ARG, NOCTX,                                             \
    attn_tensor_create(NULL, F32, 1, SHP(4), &f->ht))                                             \
  X(tensor_create_shape_null, ATTN_ERR_NULL_ARG, "shape",                                         \
    attn_tensor_create(f->ctx, F32, 1, NULL, &f->ht))                                             \
  X(tensor_create_out_null, ATTN_ERR_NULL_ARG, "out", attn_tensor_create(f->ctx, F32, 1, SHP(4), NULL)) \
  X(tensor_wrap_ctx_null, ATTN_ERR_NULL_ARG, NOCTX,                                               \
    attn_tensor_wrap(NULL, F32, 1, SHP(4), NULL, f->out_arena, &f->ht))                           \
  X(tensor_wrap_shape_null, ATTN_ERR_NULL_ARG, "shape",                                           \
    attn_tensor_wrap(f->ctx, F32, 1, NULL, NULL, f->out_arena, &f->ht))                           \
  X(tensor_wrap_data_null, ATTN_ERR_NULL_ARG, "data",                                             \
    attn_tensor_wrap(f->ctx, F32, 1, SHP(4), NULL, NULL, &f->ht))                                 \
  X(tensor_wrap_out_null, ATTN_ERR_NULL_ARG, "out",                                               \
    attn_tensor_wrap(f->ctx, F32, 1, SHP(4), NULL, f->out_arena, NULL))                           \
  X(tensor_set_data_null_tensor, ATTN_ERR_NULL_ARG, NOCTX, attn_tensor_set_data(NULL, f->out_arena)) \
  X(tensor_set_data_null_data, ATTN_ERR_NULL_ARG, "data", attn_tensor_set_data(f->q, NULL))       \
  X(tensor_set_data_owned, ATTN_ERR_INVALID_ARG, "owns", set_data_on_owned(f))                    \
  /* ---- descriptor ---- */                                                                      \
  X(desc_create_ctx_null, ATTN_ERR_NULL_ARG, NOCTX, attn_desc_create(NULL, &f->hd))               \
  X(desc_create_out_null, ATTN_ERR_NULL_ARG, "out", attn_desc_create(f->ctx, NULL))               \
  X(set_variant_null, ATTN_ERR_NULL_ARG, NOCTX, attn_desc_set_variant(NULL, ATTN_VARIANT_EXACT))  \
  X(set_variant_negative, ATTN_ERR_INVALID_ARG, "variant", attn_desc_set_variant(f->desc, (attn_variant)-1)) \
  X(set_variant_past_end, ATTN_ERR_INVALID_ARG, "variant", attn_desc_set_variant(f->desc, (attn_variant)8)) \
  X(set_variant_int_max, ATTN_ERR_INVALID_ARG, "variant",                                         \
    attn_desc_set_variant(f->desc, (attn_variant)INT_MAX))                                        \
  X(set_score_null, ATTN_ERR_NULL_ARG, NOCTX, attn_desc_set_score(NULL, ATTN_SCORE_DOT))          \
  X(set_score_negative, ATTN_ERR_INVALID_ARG, "score", attn_desc_set_score(f->desc, (attn_score)-1)) \
  X(set_score_past_end, ATTN_ERR_INVALID_ARG, "score", attn_desc_set_score(f->desc, (attn_score)4)) \
  X(set_scale_null, ATTN_ERR_NULL_ARG, NOCTX, attn_desc_set_scale(NULL, 1.0))                     \
  X(set_scale_zero, ATTN_ERR_INVALID_ARG, "scale", attn_desc_set_scale(f->desc, 0.0))             \
  X(set_scale_negative_zero, ATTN_ERR_INVALID_ARG, "scale", attn_desc_set_scale(f->desc, -0.0))   \
  X(set_scale_negative, ATTN_ERR_INVALID_ARG, "scale", attn_desc_set_scale(f->desc, -1.0))        \
  X(set_scale_nan, ATTN_ERR_INVALID_ARG, "scale", attn_desc_set_scale(f->desc, NAN))              \
  X(set_scale_inf, ATTN_ERR_INVALID_ARG, "scale", attn_desc_set_scale(f->desc, INFINITY))         \
  X(set_scale_minus_inf, ATTN_ERR_INVALID_ARG, "scale", attn_desc_set_scale(f->desc, -INFINITY))  \
  X(set_causal_null, ATTN_ERR_NULL_ARG, NOCTX, attn_desc_set_causal(NULL, ATTN_CAUSAL_TOP_LEFT))   \
  X(set_causal_negative, ATTN_ERR_INVALID_ARG, "causal", attn_desc_set_causal(f->desc, (attn_causal)-1)) \
  X(set_causal_past_end, ATTN_ERR_INVALID_ARG, "causal", attn_desc_set_causal(f->desc, (attn_causal)3)) \
  X(set_window_null, ATTN_ERR_NULL_ARG, NOCTX, attn_desc_set_window(NULL, 1, 1))                  \
  X(set_window_left_negative, ATTN_ERR_INVALID_ARG, "left", attn_desc_set_window(f->desc, -1, 0)) \
  X(set_window_right_negative, ATTN_ERR_INVALID_ARG, "right", attn_desc_set_window(f->desc, 0, -1)) \
  X(set_window_left_int64_min, ATTN_ERR_INVALID_ARG, "left",                                      \
    attn_desc_set_window(f->desc, INT64_MIN, INT64_MAX))                                          \
  X(set_key_lengths_null_desc, ATTN_ERR_NULL_ARG, NOCTX, attn_desc_set_key_lengths(NULL, f->len2, 2)) \
  X(set_key_lengths_null_count2, ATTN_ERR_NULL_ARG, "key_lengths",                                \
    attn_desc_set_key_lengths(f->desc, NULL, 2))                                                  \
  X(set_key_lengths_count0, ATTN_ERR_INVALID_ARG, "key_lengths",                                  \
    attn_desc_set_key_lengths(f->desc, f->len2, 0))                                               \
  X(set_key_lengths_count_negative, ATTN_ERR_INVALID_ARG, "key_lengths",                          \
    attn_desc_set_key_lengths(f->desc, f->len2, -1))                                              \
  X(set_key_lengths_negative_entry, ATTN_ERR_INVALID_ARG, "key_lengths",                          \
    attn_desc_set_key_lengths(f->desc, f->len_neg, 2))                                            \
  X(set_query_lengths_null_desc, ATTN_ERR_NULL_ARG, NOCTX, attn_desc_set_query_lengths(NULL, f->len2, 2)) \
  X(set_query_lengths_null_count2, ATTN_ERR_NULL_ARG, "query_lengths",                            \
    attn_desc_set_query_lengths(f->desc, NULL, 2))                                                \
  X(set_query_lengths_count0, ATTN_ERR_INVALID_ARG, "query_lengths",                              \
    attn_desc_set_query_lengths(f->desc, f->len2, 0))                                             \
  X(set_query_lengths_count_negative, ATTN_ERR_INVALID_ARG, "query_lengths",                      \
    attn_desc_set_query_lengths(f->desc, f->len2, INT64_MIN))                                     \
  X(set_query_lengths_negative_entry, ATTN_ERR_INVALID_ARG, "query_lengths",                      \
    attn_desc_set_query_lengths(f->desc, f->len_neg, 2))                                          \
  X(set_bool_mask_null_desc, ATTN_ERR_NULL_ARG, NOCTX, attn_desc_set_bool_mask(NULL, NULL))       \
  X(set_bool_mask_rank3, ATTN_ERR_SHAPE, "bool_mask",                                             \
    attn_desc_set_bool_mask(f->desc, T(f, U8, 3, H_, SQ, SK, 0)))                                 \
  X(set_bool_mask_f32, ATTN_ERR_DTYPE, "bool_mask",                                               \
    attn_desc_set_bool_mask(f->desc, T(f, F32, 4, B_, H_, SQ, SK)))                               \
  X(set_additive_mask_null_desc, ATTN_ERR_NULL_ARG, NOCTX, attn_desc_set_additive_mask(NULL, NULL)) \
  X(set_additive_mask_rank2, ATTN_ERR_SHAPE, "additive_mask",                                     \
    attn_desc_set_additive_mask(f->desc, T(f, F32, 2, SQ, SK, 0, 0)))                             \
  X(set_additive_mask_u8, ATTN_ERR_DTYPE, "additive_mask",                                        \
    attn_desc_set_additive_mask(f->desc, T(f, U8, 4, B_, H_, SQ, SK)))                            \
  X(set_alibi_null_desc, ATTN_ERR_NULL_ARG, NOCTX, attn_desc_set_alibi(NULL, f->slopes2, 2))      \
  X(set_alibi_null_slopes, ATTN_ERR_NULL_ARG, "slopes", attn_desc_set_alibi(f->desc, NULL, 2))    \
  X(set_alibi_count0, ATTN_ERR_INVALID_ARG, "slopes", attn_desc_set_alibi(f->desc, f->slopes2, 0)) \
  X(set_alibi_count_negative, ATTN_ERR_INVALID_ARG, "count",                                      \
    attn_desc_set_alibi(f->desc, f->slopes2, -2))                                                 \
  X(set_alibi_nan_slope, ATTN_ERR_INVALID_ARG, "slopes[1]",                                       \
    attn_desc_set_alibi(f->desc, f->slopes_nan, 2))                                               \
  X(set_alibi_inf_slope, ATTN_ERR_INVALID_ARG, "slopes[0]",                                       \
    attn_desc_set_alibi(f->desc, f->slopes_inf, 2))                                               \
  X(set_softcap_null, ATTN_ERR_NULL_ARG, NOCTX, attn_desc_set_softcap(NULL, 30.0))                \
  X(set_softcap_zero, ATTN_ERR_INVALID_ARG, "cap", attn_desc_set_softcap(f->desc, 0.0))           \
  X(set_softcap_negative, ATTN_ERR_INVALID_ARG, "cap", attn_desc_set_softcap(f->desc, -5.0))      \
  X(set_softcap_nan, ATTN_ERR_INVALID_ARG, "cap", attn_desc_set_softcap(f->desc, NAN))            \
  X(set_softcap_inf, ATTN_ERR_INVALID_ARG, "cap", attn_desc_set_softcap(f->desc, INFINITY))       \
  X(set_general_weight_null_desc, ATTN_ERR_NULL_ARG, NOCTX, attn_desc_set_general_weight(NULL, NULL)) \
  X(set_general_weight_rank3, ATTN_ERR_SHAPE, "w:",                                               \
    attn_desc_set_general_weight(f->desc, T(f, F32, 3, 1, D_, D_, 0)))                            \
  X(set_general_weight_rank1, ATTN_ERR_SHAPE, "w:",                                               \
    attn_desc_set_general_weight(f->desc, T(f, F32, 1, D_, 0, 0, 0)))                             \
  X(set_additive_weights_null_desc, ATTN_ERR_NULL_ARG, NOCTX,                                     \
    attn_desc_set_additive_weights(NULL, f->q, f->q, NULL, f->q))                                 \
  X(set_additive_weights_wq_null, ATTN_ERR_NULL_ARG, "w_q",                                       \
    attn_desc_set_additive_weights(f->desc, NULL, T(f, F32, 2, 3, D_, 0, 0), NULL,                \
                                   T(f, F32, 1, 3, 0, 0, 0)))                                     \
  X(set_additive_weights_wk_null, ATTN_ERR_NULL_ARG, "w_k",                                       \
    attn_desc_set_additive_weights(f->desc, T(f, F32, 2, 3, D_, 0, 0), NULL, NULL,                \
                                   T(f, F32, 1, 3, 0, 0, 0)))                                     \
  X(set_additive_weights_v_null, ATTN_ERR_NULL_ARG, "v",                                          \
    attn_desc_set_additive_weights(f->desc, T(f, F32, 2, 3, D_, 0, 0), T(f, F32, 2, 3, D_, 0, 0), \
                                   NULL, NULL))                                                   \
  X(set_additive_weights_wq_rank1, ATTN_ERR_SHAPE, "w_q",                                         \
    attn_desc_set_additive_weights(f->desc, T(f, F32, 1, 3, 0, 0, 0), T(f, F32, 2, 3, D_, 0, 0),  \
                                   NULL, T(f, F32, 1, 3, 0, 0, 0)))                               \
  X(set_additive_weights_wk_rank3, ATTN_ERR_SHAPE, "w_k",                                         \
    attn_desc_set_additive_weights(f->desc, T(f, F32, 2, 3, D_, 0, 0), T(f, F32, 3, 1, 3, D_, 0), \
                                   NULL, T(f, F32, 1, 3, 0, 0, 0)))                               \
  X(set_additive_weights_v_rank2, ATTN_ERR_SHAPE, "v:",                                           \
    attn_desc_set_additive_weights(f->desc, T(f, F32, 2, 3, D_, 0, 0), T(f, F32, 2, 3, D_, 0, 0), \
                                   NULL, T(f, F32, 2, 3, 1, 0, 0)))                               \
  X(set_additive_weights_bias_rank2, ATTN_ERR_SHAPE, "bias",                                      \
    attn_desc_set_additive_weights(f->desc, T(f, F32, 2, 3, D_, 0, 0), T(f, F32, 2, 3, D_, 0, 0), \
                                   T(f, F32, 2, 3, 1, 0, 0), T(f, F32, 1, 3, 0, 0, 0)))           \
  X(set_additive_weights_attention_dims_differ, ATTN_ERR_SHAPE, "w_q's A",                        \
    attn_desc_set_additive_weights(f->desc, T(f, F32, 2, 3, D_, 0, 0), T(f, F32, 2, 5, D_, 0, 0), \
                                   NULL, T(f, F32, 1, 3, 0, 0, 0)))                               \
  /* ---- long-sequence options (approx.h) ---- */                                                \
  X(set_swin_null, ATTN_ERR_NULL_ARG, NOCTX, attn_desc_set_swin(NULL, 4, 4, 2, 1))                \
  X(set_swin_grid_h_zero, ATTN_ERR_INVALID_ARG, "grid_h", attn_desc_set_swin(f->desc, 0, 4, 2, 0)) \
  X(set_swin_grid_w_negative, ATTN_ERR_INVALID_ARG, "grid_w", attn_desc_set_swin(f->desc, 4, -4, 2, 0)) \
  X(set_swin_window_zero, ATTN_ERR_INVALID_ARG, "window", attn_desc_set_swin(f->desc, 4, 4, 0, 0)) \
  X(set_swin_shift_negative, ATTN_ERR_INVALID_ARG, "shift", attn_desc_set_swin(f->desc, 4, 4, 2, -1)) \
  X(set_swin_shift_equals_window, ATTN_ERR_INVALID_ARG, "shift",                                  \
    attn_desc_set_swin(f->desc, 4, 4, 2, 2))                                                      \
  X(set_swin_grid_overflows, ATTN_ERR_OVERFLOW, "grid_h",                                         \
    attn_desc_set_swin(f->desc, INT64_C(1) << 40, INT64_C(1) << 40, 7, 3))                        \
  X(set_swin_bias_null_desc, ATTN_ERR_NULL_ARG, NOCTX, attn_desc_set_swin_bias(NULL, NULL))       \
  X(set_swin_bias_rank3, ATTN_ERR_SHAPE, "table",                                                 \
    attn_desc_set_swin_bias(f->desc, T(f, F32, 3, 9, H_, 1, 0)))                                  \
  X(set_global_tokens_null_desc, ATTN_ERR_NULL_ARG, NOCTX, attn_desc_set_global_tokens(NULL, f->idx2, 2)) \
  X(set_global_tokens_null_indices, ATTN_ERR_NULL_ARG, "indices",                                 \
    attn_desc_set_global_tokens(f->desc, NULL, 2))                                                \
  X(set_global_tokens_count0, ATTN_ERR_INVALID_ARG, "indices",                                    \
    attn_desc_set_global_tokens(f->desc, f->idx2, 0))                                             \
  X(set_global_tokens_count_negative, ATTN_ERR_INVALID_ARG, "count",                              \
    attn_desc_set_global_tokens(f->desc, f->idx2, -3))                                            \
  X(set_global_tokens_negative_index, ATTN_ERR_INVALID_ARG, "indices[1]",                         \
    attn_desc_set_global_tokens(f->desc, f->idx_neg, 2))                                          \
  X(set_block_size_null, ATTN_ERR_NULL_ARG, NOCTX, attn_desc_set_block_size(NULL, 16))            \
  X(set_block_size_zero, ATTN_ERR_INVALID_ARG, "block", attn_desc_set_block_size(f->desc, 0))     \
  X(set_block_size_negative, ATTN_ERR_INVALID_ARG, "block", attn_desc_set_block_size(f->desc, INT64_MIN)) \
  X(set_bigbird_null, ATTN_ERR_NULL_ARG, NOCTX, attn_desc_set_bigbird(NULL, 1, 1, 1, 0))          \
  X(set_bigbird_window_negative, ATTN_ERR_INVALID_ARG, "window_blocks",                           \
    attn_desc_set_bigbird(f->desc, -1, 1, 1, 0))                                                  \
  X(set_bigbird_global_negative, ATTN_ERR_INVALID_ARG, "global_blocks",                           \
    attn_desc_set_bigbird(f->desc, 1, -1, 1, 0))                                                  \
  X(set_bigbird_random_negative, ATTN_ERR_INVALID_ARG, "random_blocks",                           \
    attn_desc_set_bigbird(f->desc, 1, 1, INT64_MIN, 0))                                           \
  X(set_block_layout_null_desc, ATTN_ERR_NULL_ARG, NOCTX, attn_desc_set_block_layout(NULL, NULL)) \
  X(set_block_layout_rank2, ATTN_ERR_SHAPE, "layout",                                             \
    attn_desc_set_block_layout(f->desc, T(f, U8, 2, 1, 1, 0, 0)))                                 \
  X(set_block_layout_f32, ATTN_ERR_SHAPE, "layout",                                               \
    attn_desc_set_block_layout(f->desc, T(f, F32, 3, 1, 1, 1, 0)))                                \
  X(set_features_null, ATTN_ERR_NULL_ARG, NOCTX, attn_desc_set_features(NULL, 16, 1))             \
  X(set_features_zero, ATTN_ERR_INVALID_ARG, "num_features", attn_desc_set_features(f->desc, 0, 1)) \
  X(set_features_negative, ATTN_ERR_INVALID_ARG, "num_features",                                  \
    attn_desc_set_features(f->desc, -64, 1))                                                      \
  X(set_lowrank_null, ATTN_ERR_NULL_ARG, NOCTX, attn_desc_set_lowrank(NULL, 8, 1))                \
  X(set_lowrank_zero, ATTN_ERR_INVALID_ARG, "rank", attn_desc_set_lowrank(f->desc, 0, 1))         \
  X(set_lowrank_negative, ATTN_ERR_INVALID_ARG, "rank", attn_desc_set_lowrank(f->desc, -1, 1))    \
  X(set_lowrank_proj_null_desc, ATTN_ERR_NULL_ARG, NOCTX, attn_desc_set_lowrank_proj(NULL, NULL, NULL)) \
  X(set_lowrank_proj_e_only, ATTN_ERR_NULL_ARG, "f:",                                             \
    attn_desc_set_lowrank_proj(f->desc, T(f, F32, 2, 3, SK, 0, 0), NULL))                         \
  X(set_lowrank_proj_f_only, ATTN_ERR_NULL_ARG, "e:",                                             \
    attn_desc_set_lowrank_proj(f->desc, NULL, T(f, F32, 2, 3, SK, 0, 0)))                         \
  X(set_lowrank_proj_rank1, ATTN_ERR_SHAPE, "e:",                                                 \
    attn_desc_set_lowrank_proj(f->desc, T(f, F32, 1, 3, 0, 0, 0), T(f, F32, 1, 3, 0, 0, 0)))      \
  X(set_lowrank_proj_ranks_differ, ATTN_ERR_SHAPE, "f:",                                          \
    attn_desc_set_lowrank_proj(f->desc, T(f, F32, 2, 3, SK, 0, 0), T(f, F32, 3, H_, 3, SK, 0)))   \
  /* ---- plan creation: arguments and descriptor against shapes ---- */                          \
  X(plan_ctx_null, ATTN_ERR_NULL_ARG, NOCTX,                                                      \
    attn_plan_create(NULL, f->desc, f->q, f->k, f->v, f->out, NULL, NULL, &f->hp))                \
  X(plan_desc_null, ATTN_ERR_NULL_ARG, "desc",                                                    \
    attn_plan_create(f->ctx, NULL, f->q, f->k, f->v, f->out, NULL, NULL, &f->hp))                 \
  X(plan_q_null, ATTN_ERR_NULL_ARG, "q:",                                                         \
    attn_plan_create(f->ctx, f->desc, NULL, f->k, f->v, f->out, NULL, NULL, &f->hp))              \
  X(plan_k_null, ATTN_ERR_NULL_ARG, "k:",                                                         \
    attn_plan_create(f->ctx, f->desc, f->q, NULL, f->v, f->out, NULL, NULL, &f->hp))              \
  X(plan_v_null, ATTN_ERR_NULL_ARG, "v:",                                                         \
    attn_plan_create(f->ctx, f->desc, f->q, f->k, NULL, f->out, NULL, NULL, &f->hp))              \
  X(plan_out_null, ATTN_ERR_NULL_ARG, "out:",                                                     \
    attn_plan_create(f->ctx, f->desc, f->q, f->k, f->v, NULL, NULL, NULL, &f->hp))                \
  X(plan_plan_null, ATTN_ERR_NULL_ARG, "plan",                                                    \
    attn_plan_create(f->ctx, f->desc, f->q, f->k, f->v, f->out, NULL, NULL, NULL))                \
  X(plan_key_lengths_count_not_batch, ATTN_ERR_SHAPE, "key_lengths",                              \
    (must(attn_desc_set_key_lengths(f->desc, f->len2, 1)), P(f)))                                 \
  X(plan_key_length_past_sk, ATTN_ERR_INVALID_ARG, "key_lengths",                                 \
    (must(attn_desc_set_key_lengths(f->desc, f->len_big_k, 2)), P(f)))                            \
  X(plan_query_lengths_count_not_batch, ATTN_ERR_SHAPE, "query_lengths",                          \
    (must(attn_desc_set_query_lengths(f->desc, f->len2, 1)), P(f)))           \
  X(plan_query_length_past_sq, ATTN_ERR_INVALID_ARG, "query_lengths",                             \
    (must(attn_desc_set_query_lengths(f->desc, f->len_big_q, 2)), P(f)))                          \
  X(plan_alibi_count_not_heads, ATTN_ERR_SHAPE, "alibi",                                          \
    (must(attn_desc_set_alibi(f->desc, f->slopes2, 1)), P(f)))                                    \
  X(plan_bool_mask_wrong_sk, ATTN_ERR_SHAPE, "bool_mask",                                         \
    (must(attn_desc_set_bool_mask(f->desc, T(f, U8, 4, B_, H_, SQ, SK - 1))), P(f)))              \
  X(plan_bool_mask_wrong_batch, ATTN_ERR_SHAPE, "bool_mask",                                      \
    (must(attn_desc_set_bool_mask(f->desc, T(f, U8, 4, 3, 1, SQ, SK))), P(f)))                    \
  X(plan_bool_mask_broadcast_sq, ATTN_ERR_SHAPE, "bool_mask",                                     \
    (must(attn_desc_set_bool_mask(f->desc, T(f, U8, 4, 1, 1, 1, SK))), P(f)))                     \
  X(plan_additive_mask_f64_for_f32, ATTN_ERR_DTYPE, "additive_mask",                              \
    (must(attn_desc_set_additive_mask(f->desc, T(f, F64, 4, 1, H_, SQ, SK))), P(f)))              \
  X(plan_additive_mask_wrong_sq, ATTN_ERR_SHAPE, "additive_mask",                                 \
    (must(attn_desc_set_additive_mask(f->desc, T(f, F32, 4, 1, 1, SK, SK))), P(f)))               \
  X(plan_general_without_weight, ATTN_ERR_NULL_ARG, "general_w",                                  \
    (must(attn_desc_set_score(f->desc, ATTN_SCORE_GENERAL)), P(f)))                               \
  X(plan_general_weight_wrong_shape, ATTN_ERR_SHAPE, "general_w",                                 \
    (must(attn_desc_set_score(f->desc, ATTN_SCORE_GENERAL)),                                      \
     must(attn_desc_set_general_weight(f->desc, T(f, F32, 2, D_, D_ + 1, 0, 0))), P(f)))          \
  X(plan_general_weight_f64, ATTN_ERR_DTYPE, "general_w",                                         \
    (must(attn_desc_set_score(f->desc, ATTN_SCORE_GENERAL)),                                      \
     must(attn_desc_set_general_weight(f->desc, T(f, F64, 2, D_, D_, 0, 0))), P(f)))              \
  X(plan_general_weight_noncontiguous, ATTN_ERR_LAYOUT, "general_w",                              \
    (must(attn_desc_set_score(f->desc, ATTN_SCORE_GENERAL)),                                      \
     must(attn_desc_set_general_weight(f->desc, TS(f, F32, 2, D_, D_, 0, 0, STR(1, D_)))), P(f))) \
  X(plan_additive_without_weights, ATTN_ERR_NULL_ARG, "w_q",                                      \
    (must(attn_desc_set_score(f->desc, ATTN_SCORE_ADDITIVE)), P(f)))                              \
  X(plan_additive_wq_wrong_dq, ATTN_ERR_SHAPE, "w_q",                                             \
    (must(attn_desc_set_score(f->desc, ATTN_SCORE_ADDITIVE)),                                     \
     must(attn_desc_set_additive_weights(f->desc, T(f, F32, 2, 3, D_ + 1, 0, 0),                  \
                                         T(f, F32, 2, 3, D_, 0, 0), NULL, T(f, F32, 1, 3, 0, 0, 0))), \
     P(f)))                                                                                       \
  X(plan_additive_wk_wrong_dk, ATTN_ERR_SHAPE, "w_k",                                             \
    (must(attn_desc_set_score(f->desc, ATTN_SCORE_ADDITIVE)),                                     \
     must(attn_desc_set_additive_weights(f->desc, T(f, F32, 2, 3, D_, 0, 0),                      \
                                         T(f, F32, 2, 3, 2, 0, 0), NULL, T(f, F32, 1, 3, 0, 0, 0))), \
     P(f)))                                                                                       \
  X(plan_additive_wq_f64, ATTN_ERR_DTYPE, "w_q",                                                  \
    (must(attn_desc_set_score(f->desc, ATTN_SCORE_ADDITIVE)),                                     \
     must(attn_desc_set_additive_weights(f->desc, T(f, F64, 2, 3, D_, 0, 0),                      \
                                         T(f, F32, 2, 3, D_, 0, 0), NULL, T(f, F32, 1, 3, 0, 0, 0))), \
     P(f)))                                                                                       \
  X(plan_additive_bias_f64, ATTN_ERR_DTYPE, "bias",                                               \
    (must(attn_desc_set_score(f->desc, ATTN_SCORE_ADDITIVE)),                                     \
     must(attn_desc_set_additive_weights(f->desc, T(f, F32, 2, 3, D_, 0, 0),                      \
                                         T(f, F32, 2, 3, D_, 0, 0), T(f, F64, 1, 3, 0, 0, 0),     \
                                         T(f, F32, 1, 3, 0, 0, 0))),                              \
     P(f)))                                                                                       \
  /* A attention dims beyond BLAS's int are refused before any size is computed. */ \
  X(plan_additive_workspace_overflows, ATTN_ERR_UNSUPPORTED, "w_q", additive_workspace_overflow(f))  \
  X(plan_additive_workspace_too_big, ATTN_ERR_NO_MEMORY, "workspace", additive_workspace_too_big(f)) \
  X(plan_additive_kproj_elements_overflow, ATTN_ERR_UNSUPPORTED, "w_q",                           \
    additive_kproj_overflow(f, INT64_C(1) << 50, INT64_C(1) << 14))                                \
  X(plan_additive_workspace_bytes_overflow, ATTN_ERR_UNSUPPORTED, "w_q",                          \
    additive_kproj_overflow(f, INT64_C(1) << 55, 64))                                             \
  X(plan_out_batch_stride_zero, ATTN_ERR_LAYOUT, "out:",                                          \
    plan_with_out_strides(f, 3, STR(0, SQ * D_, D_, 1)))                                          \
  X(plan_out_rows_overlap, ATTN_ERR_LAYOUT, "out:",                                               \
    plan_with_out_strides(f, 3, STR(H_ * SQ * D_, SQ * D_, 0, 1)))                                \
  X(plan_weights_head_stride_zero, ATTN_ERR_LAYOUT, "weights:",                                   \
    plan_with_out_strides(f, 4, STR(H_ * SQ * SK, 0, SK, 1)))                                     \
  X(plan_lse_row_stride_zero, ATTN_ERR_LAYOUT, "lse:", plan_with_out_strides(f, 5, STR(H_ * SQ, SQ, 0))) \
  /* ---- execute ---- */                                                                         \
  X(execute_plan_null, ATTN_ERR_NULL_ARG, NOCTX,                                                  \
    attn_plan_execute(NULL, f->q, f->k, f->v, f->out, f->w, f->lse))                              \
  X(execute_q_null, ATTN_ERR_NULL_ARG, "q:", attn_plan_execute(f->plan, NULL, f->k, f->v, f->out, f->w, f->lse)) \
  X(execute_k_null, ATTN_ERR_NULL_ARG, "k:", attn_plan_execute(f->plan, f->q, NULL, f->v, f->out, f->w, f->lse)) \
  X(execute_v_null, ATTN_ERR_NULL_ARG, "v:", attn_plan_execute(f->plan, f->q, f->k, NULL, f->out, f->w, f->lse)) \
  X(execute_out_null, ATTN_ERR_NULL_ARG, "out:",                                                  \
    attn_plan_execute(f->plan, f->q, f->k, f->v, NULL, f->w, f->lse))                             \
  X(execute_weights_missing, ATTN_ERR_MISMATCH, "weights",                                        \
    attn_plan_execute(f->plan, f->q, f->k, f->v, f->out, NULL, f->lse))                           \
  X(execute_lse_missing, ATTN_ERR_MISMATCH, "lse",                                                \
    attn_plan_execute(f->plan, f->q, f->k, f->v, f->out, f->w, NULL))                             \
  X(execute_weights_unplanned, ATTN_ERR_MISMATCH, "weights",                                      \
    attn_plan_execute(f->plan_nw, f->q, f->k, f->v, f->out, f->w, NULL))                          \
  X(execute_lse_unplanned, ATTN_ERR_MISMATCH, "lse",                                              \
    attn_plan_execute(f->plan_nw, f->q, f->k, f->v, f->out, NULL, f->lse))                        \
  X(execute_q_k_swapped, ATTN_ERR_MISMATCH, "q:",                                                 \
    attn_plan_execute(f->plan, f->k, f->q, f->v, f->out, f->w, f->lse))                           \
  X(execute_out_is_q, ATTN_ERR_MISMATCH, "k:",                                                    \
    attn_plan_execute(f->plan_nw, f->q, f->q, f->v, f->out, NULL, NULL))                          \
  /* ---- one-shot ---- */                                                                        \
  X(forward_ctx_null, ATTN_ERR_NULL_ARG, NOCTX, attn_forward(NULL, f->desc, f->q, f->k, f->v, f->out, NULL, NULL)) \
  X(forward_desc_null, ATTN_ERR_NULL_ARG, "desc", attn_forward(f->ctx, NULL, f->q, f->k, f->v, f->out, NULL, NULL)) \
  X(forward_q_null, ATTN_ERR_NULL_ARG, "q:", attn_forward(f->ctx, f->desc, NULL, f->k, f->v, f->out, NULL, NULL)) \
  X(forward_out_null, ATTN_ERR_NULL_ARG, "out:", attn_forward(f->ctx, f->desc, f->q, f->k, f->v, NULL, NULL, NULL)) \
  X(forward_key_length_past_sk, ATTN_ERR_INVALID_ARG, "key_lengths",                              \
    (must(attn_desc_set_key_lengths(f->desc, f->len_big_k, 2)), F(f)))                            \
  /* ---- merging partial results ---- */                                                        \
  X(merge_ctx_null, ATTN_ERR_NULL_ARG, NOCTX,                                                     \
    attn_merge_states(NULL, f->q, LA(f), f->q, LB(f), f->out, f->lse))                            \
  X(merge_out_a_null, ATTN_ERR_NULL_ARG, "out_a", MG(f, NULL, LA(f), f->q, LB(f), f->out, f->lse)) \
  X(merge_lse_a_null, ATTN_ERR_NULL_ARG, "lse_a", MG(f, f->q, NULL, f->q, LB(f), f->out, f->lse)) \
  X(merge_out_b_null, ATTN_ERR_NULL_ARG, "out_b", MG(f, f->q, LA(f), NULL, LB(f), f->out, f->lse)) \
  X(merge_lse_b_null, ATTN_ERR_NULL_ARG, "lse_b", MG(f, f->q, LA(f), f->q, NULL, f->out, f->lse)) \
  X(merge_out_null, ATTN_ERR_NULL_ARG, "out", MG(f, f->q, LA(f), f->q, LB(f), NULL, f->lse))      \
  X(merge_out_a_u8, ATTN_ERR_DTYPE, "out_a",                                                      \
    MG(f, T(f, U8, 4, B_, H_, SQ, D_), LA(f), f->q, LB(f), f->out, f->lse))                       \
  X(merge_lse_b_f64, ATTN_ERR_DTYPE, "lse_b",                                                     \
    MG(f, f->q, LA(f), f->q, T(f, F64, 3, B_, H_, SQ, 0), f->out, f->lse))                        \
  X(merge_out_f64, ATTN_ERR_DTYPE, "out",                                                         \
    MG(f, f->q, LA(f), f->q, LB(f), T(f, F64, 4, B_, H_, SQ, D_), f->lse))                        \
  X(merge_out_a_rank3, ATTN_ERR_SHAPE, "out_a",                                                   \
    MG(f, T(f, F32, 3, B_, H_, SQ, 0), LA(f), f->q, LB(f), f->out, f->lse))                       \
  X(merge_lse_a_rank4, ATTN_ERR_SHAPE, "lse_a",                                                   \
    MG(f, f->q, T(f, F32, 4, B_, H_, SQ, 1), f->q, LB(f), f->out, f->lse))                        \
  X(merge_out_b_seq6, ATTN_ERR_SHAPE, "out_b",                                                    \
    MG(f, f->q, LA(f), T(f, F32, 4, B_, H_, SQ + 1, D_), LB(f), f->out, f->lse))                  \
  X(merge_lse_b_heads1, ATTN_ERR_SHAPE, "lse_b",                                                  \
    MG(f, f->q, LA(f), f->q, T(f, F32, 3, B_, 1, SQ, 0), f->out, f->lse))                         \
  X(merge_out_dim3, ATTN_ERR_SHAPE, "out",                                                        \
    MG(f, f->q, LA(f), f->q, LB(f), T(f, F32, 4, B_, H_, SQ, D_ - 1), f->lse))                    \
  X(merge_lse_batch1, ATTN_ERR_SHAPE, "lse",                                                      \
    MG(f, f->q, LA(f), f->q, LB(f), f->out, T(f, F32, 3, 1, H_, SQ, 0)))                          \
  X(merge_out_head_stride_zero, ATTN_ERR_LAYOUT, "out",                                           \
    MG(f, f->q, LA(f), f->q, LB(f), TS(f, F32, 4, B_, H_, SQ, D_, STR(SQ * D_, 0, D_, 1)), f->lse)) \
  X(merge_lse_rows_overlap, ATTN_ERR_LAYOUT, "lse",                                               \
    MG(f, f->q, LA(f), f->q, LB(f), f->out, TS(f, F32, 3, B_, H_, SQ, 0, STR(H_ * SQ, SQ, 0))))   \
  X(merge_out_overlaps_out_a_shifted, ATTN_ERR_LAYOUT, "out_a",                                   \
    merge_shifted_alias(f))                                                                       \
  X(merge_lse_is_out, ATTN_ERR_LAYOUT, "lse",                                                     \
    merge_lse_over_out(f))                                                                        \
  X(merge_lse_a_nan, ATTN_ERR_INVALID_ARG, "lse_a",                                               \
    MG(f, f->q, lse_in(f, 16384, NAN), f->q, LB(f), f->out, f->lse))                              \
  X(merge_lse_b_plus_inf, ATTN_ERR_INVALID_ARG, "lse_b",                                          \
    MG(f, f->q, LA(f), f->q, lse_in(f, 20480, INFINITY), f->out, f->lse))                         \
  /* ---- serving: packed batches, sinks, per-key mass ---- */                                     \
  X(set_varlen_null_desc, ATTN_ERR_NULL_ARG, NOCTX, attn_desc_set_varlen(NULL, vl_good, NULL, 2))   \
  X(set_varlen_q_null, ATTN_ERR_NULL_ARG, "q_offsets", attn_desc_set_varlen(f->desc, NULL, NULL, 2)) \
  X(set_varlen_n_negative, ATTN_ERR_INVALID_ARG, "n_seqs",                                        \
    attn_desc_set_varlen(f->desc, vl_good, NULL, -1))                                             \
  X(set_varlen_clear_with_offsets, ATTN_ERR_INVALID_ARG, "n_seqs",                                \
    attn_desc_set_varlen(f->desc, vl_good, NULL, 0))                                              \
  X(set_varlen_decreasing, ATTN_ERR_INVALID_ARG, "q_offsets",                                     \
    attn_desc_set_varlen(f->desc, vl_dec, NULL, 2))                                               \
  X(set_varlen_k_decreasing, ATTN_ERR_INVALID_ARG, "k_offsets",                                   \
    attn_desc_set_varlen(f->desc, vl_good, vl_dec, 2))                                            \
  X(set_varlen_first_not_0, ATTN_ERR_INVALID_ARG, "q_offsets",                                    \
    attn_desc_set_varlen(f->desc, vl_first, NULL, 2))                                             \
  X(plan_varlen_batch_2, ATTN_ERR_SHAPE, "batch dim 1",                                           \
    (must(attn_desc_set_varlen(f->desc, vl_good, vl_kgood, 2)), P(f)))                            \
  X(plan_varlen_last_not_total, ATTN_ERR_INVALID_ARG, "q_offsets",                                \
    varlen_plan(f, vl_short, vl_kgood, &f->hp))                                                   \
  X(plan_varlen_k_last_not_total, ATTN_ERR_INVALID_ARG, "k_offsets",                              \
    varlen_plan(f, vl_good, vl_good, &f->hp))                                                     \
  X(plan_varlen_key_lengths, ATTN_ERR_UNSUPPORTED, "key_lengths",                                 \
    (must(attn_desc_set_key_lengths(f->desc, f->len2, 2)), varlen_plan(f, vl_good, vl_kgood, &f->hp))) \
  X(plan_varlen_longformer, ATTN_ERR_UNSUPPORTED, "varlen",                                       \
    (must(attn_desc_set_variant(f->desc, ATTN_VARIANT_LONGFORMER)),                               \
     varlen_plan(f, vl_good, vl_kgood, &f->hp)))                                                  \
  X(execute_varlen_decreasing, ATTN_ERR_INVALID_ARG, "q_offsets", varlen_exec_after_change(f, 0)) \
  X(execute_varlen_last_not_total, ATTN_ERR_INVALID_ARG, "k_offsets",                             \
    varlen_exec_after_change(f, 1))                                                               \
  X(set_sinks_null_desc, ATTN_ERR_NULL_ARG, NOCTX, attn_desc_set_sinks(NULL, sk_good, 2))         \
  X(set_sinks_null_logits, ATTN_ERR_NULL_ARG, "logits", attn_desc_set_sinks(f->desc, NULL, 2))    \
  X(set_sinks_count_negative, ATTN_ERR_INVALID_ARG, "count", attn_desc_set_sinks(f->desc, sk_good, -1)) \
  X(set_sinks_nan, ATTN_ERR_INVALID_ARG, "sinks", attn_desc_set_sinks(f->desc, sk_nan, 2))         \
  X(set_sinks_inf, ATTN_ERR_INVALID_ARG, "sinks", attn_desc_set_sinks(f->desc, sk_inf, 2))         \
  X(plan_sinks_count_not_h, ATTN_ERR_SHAPE, "sinks",                                              \
    (must(attn_desc_set_sinks(f->desc, sk_good, 1)), P(f)))                                       \
  X(execute_sinks_nan, ATTN_ERR_INVALID_ARG, "sinks", sinks_exec_after_nan(f))                    \
  X(set_key_mass_null_desc, ATTN_ERR_NULL_ARG, NOCTX, attn_desc_set_key_mass(NULL, NULL))         \
  X(set_key_mass_rank4, ATTN_ERR_SHAPE, "mass", attn_desc_set_key_mass(f->desc, f->out))          \
  X(plan_mass_wrong_keys, ATTN_ERR_SHAPE, "mass", mass_plan(f, T(f, F32, 3, B_, H_, SK + 1, 0)))   \
  X(plan_mass_wrong_heads, ATTN_ERR_SHAPE, "mass", mass_plan(f, T(f, F32, 3, B_, H_ + 1, SK, 0)))  \
  X(plan_mass_wrong_batch, ATTN_ERR_SHAPE, "mass", mass_plan(f, T(f, F32, 3, 1, H_, SK, 0)))       \
  X(plan_mass_f64, ATTN_ERR_DTYPE, "mass", mass_plan(f, T(f, F64, 3, B_, H_, SK, 0)))              \
  X(plan_mass_strided_keys, ATTN_ERR_LAYOUT, "mass",                                              \
    mass_plan(f, TS(f, F32, 3, B_, H_, SK, 0, STR(H_ * SK * 2, SK * 2, 2))))                       \
  X(plan_mass_overlapping, ATTN_ERR_LAYOUT, "mass",                                               \
    mass_plan(f, TS(f, F32, 3, B_, H_, SK, 0, STR(0, SK, 1))))                                    \
  X(plan_mass_linformer, ATTN_ERR_UNSUPPORTED, "key_mass",                                        \
    (must(attn_desc_set_variant(f->desc, ATTN_VARIANT_LINFORMER)),                                \
     must(attn_desc_set_key_mass(f->desc, T(f, F32, 3, B_, H_, SK, 0))),                          \
     attn_plan_create(f->ctx, f->desc, f->q, f->k, f->v, f->out, NULL, f->lse, &f->hp)))          \
  /* ---- plan queries ---- */                                                                    \
  X(block_layout_plan_null, ATTN_ERR_NULL_ARG, NOCTX, attn_plan_block_layout(NULL, f->buf, &f->size)) \
  X(block_layout_size_null, ATTN_ERR_NULL_ARG, "size", attn_plan_block_layout(f->plan, f->buf, NULL)) \
  X(block_layout_of_exact_plan, ATTN_ERR_UNSUPPORTED, "block layout",                             \
    attn_plan_block_layout(f->plan, f->buf, &f->size))                                            \
  X(redraw_plan_null, ATTN_ERR_NULL_ARG, NOCTX, attn_plan_redraw_features(NULL, 1))               \
  X(redraw_exact_plan, ATTN_ERR_UNSUPPORTED, "random features", attn_plan_redraw_features(f->plan, 1)) \
  /* ---- KV cache storages ---- */                                                              \
  X(kvcache_int8_with_f64, ATTN_ERR_DTYPE, "cfg.storage",                                         \
    KVC(f, ATTN_KVCACHE_STORE_INT8, ATTN_DTYPE_F64, 0, ATTN_KVCACHE_LINEAR, 8))                  \
  X(kvcache_int4_with_f64, ATTN_ERR_DTYPE, "cfg.storage",                                         \
    KVC(f, ATTN_KVCACHE_STORE_INT4, ATTN_DTYPE_F64, 0, ATTN_KVCACHE_LINEAR, 8))                  \
  X(kvcache_f16_with_f64, ATTN_ERR_DTYPE, "cfg.storage",                                          \
    KVC(f, ATTN_KVCACHE_STORE_F16, ATTN_DTYPE_F64, 0, ATTN_KVCACHE_LINEAR, 8))                   \
  X(kvcache_storage_5, ATTN_ERR_INVALID_ARG, "cfg.storage",                                       \
    KVC(f, (attn_kvcache_storage)5, ATTN_DTYPE_F32, 0, ATTN_KVCACHE_LINEAR, 8))                  \
  X(kvcache_group_not_dividing_d, ATTN_ERR_INVALID_ARG, "cfg.group_size",                         \
    KVC(f, ATTN_KVCACHE_STORE_INT4, ATTN_DTYPE_F32, 3, ATTN_KVCACHE_LINEAR, 8))                  \
  X(kvcache_group_negative, ATTN_ERR_INVALID_ARG, "cfg.group_size",                               \
    KVC(f, ATTN_KVCACHE_STORE_INT8, ATTN_DTYPE_F32, -4, ATTN_KVCACHE_LINEAR, 8))                 \
  X(kvcache_group_not_dividing_ring, ATTN_ERR_INVALID_ARG, "cfg.group_size",                      \
    KVC(f, ATTN_KVCACHE_STORE_INT8, ATTN_DTYPE_F32, 4, ATTN_KVCACHE_RING, 6))                    \
  X(kvcache_view_int4_as_floats, ATTN_ERR_UNSUPPORTED, "int4", kv_view(f, ATTN_KVCACHE_STORE_INT4, 0)) \
  X(kvcache_view_int8_as_floats, ATTN_ERR_UNSUPPORTED, "int8", kv_view(f, ATTN_KVCACHE_STORE_INT8, 0)) \
  X(kvcache_view_raw_null, ATTN_ERR_NULL_ARG, "raw", kv_view(f, ATTN_KVCACHE_STORE_INT4, 1))      \
  X(kvcache_view_raw_struct_size, ATTN_ERR_INVALID_ARG, "raw.struct_size",                        \
    kv_view(f, ATTN_KVCACHE_STORE_INT4, 2))                                                       \
  X(kvcache_view_raw_cache_null, ATTN_ERR_NULL_ARG, NOCTX, attn_kvcache_view_raw(NULL, NULL)) \
  X(kvcache_keep_first_int8, ATTN_ERR_UNSUPPORTED, "int8", kv_keep(f, ATTN_KVCACHE_STORE_INT8)) \
  X(kvcache_keep_first_int4, ATTN_ERR_UNSUPPORTED, "int4", kv_keep(f, ATTN_KVCACHE_STORE_INT4)) \
  /* ---- backward ---- */                                                                        \
  X(backward_forward_null, ATTN_ERR_NULL_ARG, NOCTX, BP(f, NULL, 0, GQ(f)))                       \
  X(backward_out_null, ATTN_ERR_NULL_ARG, "plan",                                                 \
    attn_backward_plan_create(f->plan, GQ(f), GQ(f), GK(f), GK(f), NULL, NULL))                   \
  X(backward_dout_null, ATTN_ERR_NULL_ARG, "dout", BP(f, f->plan, 0, NULL))                       \
  X(backward_dq_null, ATTN_ERR_NULL_ARG, "dq", BP(f, f->plan, 1, NULL))                           \
  X(backward_dk_null, ATTN_ERR_NULL_ARG, "dk", BP(f, f->plan, 2, NULL))                           \
  X(backward_dv_null, ATTN_ERR_NULL_ARG, "dv", BP(f, f->plan, 3, NULL))                           \
  X(backward_forward_without_lse, ATTN_ERR_INVALID_ARG, "lse", BP(f, f->plan_nw, 0, GQ(f)))       \
  X(backward_dout_shape, ATTN_ERR_SHAPE, "dout", BP(f, f->plan, 0, T(f, F32, 4, B_, H_, SQ + 1, D_))) \
  X(backward_dout_rank, ATTN_ERR_SHAPE, "dout", BP(f, f->plan, 0, T(f, F32, 3, B_, H_, SQ, 0)))  \
  X(backward_dq_shape, ATTN_ERR_SHAPE, "dq", BP(f, f->plan, 1, T(f, F32, 4, B_, H_, SQ, D_ + 1))) \
  X(backward_dk_shape, ATTN_ERR_SHAPE, "dk", BP(f, f->plan, 2, T(f, F32, 4, B_, 1, SK, D_)))      \
  X(backward_dv_shape, ATTN_ERR_SHAPE, "dv", BP(f, f->plan, 3, T(f, F32, 4, B_, H_, SQ, D_)))     \
  X(backward_dout_dtype, ATTN_ERR_DTYPE, "dout", BP(f, f->plan, 0, T(f, F64, 4, B_, H_, SQ, D_))) \
  X(backward_dk_dtype, ATTN_ERR_DTYPE, "dk", BP(f, f->plan, 2, T(f, U8, 4, B_, H_, SK, D_)))      \
  X(backward_dq_last_dim_strided, ATTN_ERR_LAYOUT, "dq",                                          \
    BP(f, f->plan, 1, TS(f, F32, 4, B_, H_, SQ, D_, STR(H_ * SQ * D_ * 2, SQ * D_ * 2, D_ * 2, 2)))) \
  X(backward_dk_rows_overlap, ATTN_ERR_LAYOUT, "dk",                                              \
    BP(f, f->plan, 2, TS(f, F32, 4, B_, H_, SK, D_, STR(H_ * D_, D_, 0, 1))))                     \
  X(backward_dmask_without_additive_mask, ATTN_ERR_INVALID_ARG, "dmask",                          \
    BP(f, f->plan, 4, T(f, F32, 4, B_, H_, SQ, SK)))                                              \
  X(backward_dmask_shape, ATTN_ERR_SHAPE, "dmask",                                                \
    BP_dmask(f, T(f, F32, 4, 1, 1, SQ, SK)))                                                      \
  X(backward_lowrank_grads_of_exact, ATTN_ERR_INVALID_ARG, "de", BL(f, false, 0, NULL))           \
  X(backward_lowrank_grads_seeded, ATTN_ERR_INVALID_ARG, "de", BL(f, true, 0, NULL))              \
  X(backward_general_grad_of_dot_score, ATTN_ERR_INVALID_ARG, "dw", BW_dot(f))                    \
  X(backward_general_grad_shape, ATTN_ERR_SHAPE, "dw",                                            \
    BW(f, ATTN_SCORE_GENERAL, 0, T(f, F32, 2, D_, D_ + 1, 0, 0)))                                \
  X(backward_general_grad_dtype, ATTN_ERR_DTYPE, "dw",                                            \
    BW(f, ATTN_SCORE_GENERAL, 0, T(f, F64, 2, D_, D_, 0, 0)))                                     \
  X(backward_additive_grads_dw_k_null, ATTN_ERR_NULL_ARG, "dw_k", BW(f, ATTN_SCORE_ADDITIVE, 1, NULL)) \
  X(backward_additive_grads_dw_q_shape, ATTN_ERR_SHAPE, "dw_q",                                   \
    BW(f, ATTN_SCORE_ADDITIVE, 0, T(f, F32, 2, 5, D_, 0, 0)))                                     \
  X(backward_additive_grads_dbias_without_bias, ATTN_ERR_INVALID_ARG, "dbias",                    \
    BW(f, ATTN_SCORE_ADDITIVE, 2, T(f, F32, 1, 4, 0, 0, 0)))                                      \
  X(backward_additive_grads_dv_rank, ATTN_ERR_SHAPE, "dv",                                        \
    BW(f, ATTN_SCORE_ADDITIVE, 3, T(f, F32, 2, 4, 1, 0, 0)))                                      \
  X(backward_mass_unsupported, ATTN_ERR_UNSUPPORTED, "key_mass",                                 \
    (must(attn_desc_set_key_mass(f->desc, T(f, F32, 3, B_, H_, SK, 0))), BP_desc(f)))             \
  X(backward_execute_null, ATTN_ERR_NULL_ARG, NOCTX,                                              \
    attn_backward_execute(NULL, f->q, f->k, f->v, f->out, f->lse, GQ(f), GQ(f), GK(f), GK(f), NULL)) \
  X(backward_execute_lse_null, ATTN_ERR_NULL_ARG, "lse", BE(f, 4, NULL, true))                    \
  X(backward_execute_q_null, ATTN_ERR_NULL_ARG, "q:", BE(f, 0, NULL, true))                       \
  X(backward_execute_dout_shape, ATTN_ERR_MISMATCH, "dout",                                       \
    BE(f, 5, T(f, F32, 4, B_, H_, SQ + 1, D_), true))                                             \
  X(backward_execute_dq_dtype, ATTN_ERR_MISMATCH, "dq", BE(f, 6, T(f, F64, 4, B_, H_, SQ, D_), true)) \
  X(backward_execute_dmask_unplanned, ATTN_ERR_MISMATCH, "dmask",                                 \
    BE(f, 9, T(f, F32, 4, B_, H_, SQ, SK), true))                                                 \
  X(backward_execute_key_length_changed, ATTN_ERR_INVALID_ARG, "key_lengths", BE_lengths_changed(f))

#define X_FN(name, want, msg, expr) \
  static attn_status case_##name(fx *f) { return (expr); }
BAD_CASES(X_FN)
#undef X_FN

typedef struct bad_case {
  const char *name;
  attn_status (*call)(fx *f);
  attn_status want;
  const char *msg;
} bad_case;

static const bad_case bad_cases[] = {
#define X_ROW(name, want, msg, expr) {#name, case_##name, want, msg},
    BAD_CASES(X_ROW)
#undef X_ROW
};

static void every_bad_call_fails_cleanly(void **state) {
  (void)state;
  fx *f = malloc(sizeof *f);
  n_failed = 0;
  for (size_t i = 0; i < sizeof bad_cases / sizeof bad_cases[0]; i++) {
    const bad_case *c = &bad_cases[i];
    fx_init(f);
    attn_status st = c->call(f);
    check_result(f, c->name, st, c->want, c->msg);
    fx_check_and_free(f, c->name);
  }
  free(f);
  assert_int_equal(n_failed, 0);
}

/* ---- tensor metadata --------------------------------------------------------- */

#define NA ((attn_status)-1) /* row does not apply to this function */

typedef struct meta_row {
  const char *name;
  attn_dtype dt;
  int32_t rank;
  int64_t shape[4];
  bool has_strides;
  int64_t strides[4];
  attn_status want_create, want_wrap;
  const char *msg;
} meta_row;

#define P40 (INT64_C(1) << 40)
static const meta_row meta_rows[] = {
    {"dtype_zero", (attn_dtype)0, 1, {4}, false, {0}, ATTN_ERR_DTYPE, ATTN_ERR_DTYPE, "dtype"},
    {"dtype_past_end", (attn_dtype)6, 1, {4}, false, {0}, ATTN_ERR_DTYPE, ATTN_ERR_DTYPE, "dtype"},
    {"dtype_negative", (attn_dtype)-1, 1, {4}, false, {0}, ATTN_ERR_DTYPE, ATTN_ERR_DTYPE, "dtype"},
    {"rank_zero", F32, 0, {4}, false, {0}, ATTN_ERR_SHAPE, ATTN_ERR_SHAPE, "rank"},
    {"rank_five", F32, 5, {1, 1, 1, 1}, false, {0}, ATTN_ERR_SHAPE, ATTN_ERR_SHAPE, "rank"},
    {"rank_negative", F32, -1, {4}, false, {0}, ATTN_ERR_SHAPE, ATTN_ERR_SHAPE, "rank"},
    {"rank_int_max", F32, INT32_MAX, {4}, false, {0}, ATTN_ERR_SHAPE, ATTN_ERR_SHAPE, "rank"},
    {"dim_zero", F32, 2, {0, 4}, false, {0}, ATTN_ERR_SHAPE, ATTN_ERR_SHAPE, "shape[0]"},
    {"dim_negative", F32, 3, {2, 2, -1}, false, {0}, ATTN_ERR_SHAPE, ATTN_ERR_SHAPE, "shape[2]"},
    {"dim_int64_min", F64, 4, {1, 1, 1, INT64_MIN}, false, {0}, ATTN_ERR_SHAPE, ATTN_ERR_SHAPE, "shape[3]"},
    {"dims_2p40_x_2p40", F32, 2, {P40, P40}, false, {0}, ATTN_ERR_OVERFLOW, ATTN_ERR_OVERFLOW, "overflow"},
    {"dims_2p40_x_2p40_u8", U8, 4, {1, P40, P40, 1}, false, {0}, ATTN_ERR_OVERFLOW, ATTN_ERR_OVERFLOW, "overflow"},
    {"dim_int64_max_f32", F32, 1, {INT64_MAX}, false, {0}, ATTN_ERR_OVERFLOW, ATTN_ERR_OVERFLOW, "overflow"},
    {"bytes_2p63_f64", F64, 3, {INT64_C(1) << 31, INT64_C(1) << 31, 2}, false, {0}, ATTN_ERR_OVERFLOW,
     ATTN_ERR_OVERFLOW, "overflow"},
    {"dims_3_x_2p62", F32, 2, {3, INT64_C(1) << 62}, false, {0}, ATTN_ERR_OVERFLOW, ATTN_ERR_OVERFLOW, "overflow"},
    /* Valid metadata but no memory for it: create fails cleanly, wrap is fine. */
    {"create_2p63_bytes", U8, 1, {INT64_MAX}, false, {0}, ATTN_ERR_NO_MEMORY, NA, "allocate"},
    {"create_1tib", F32, 4, {1024, 1024, 1024, 256}, false, {0}, ATTN_ERR_NO_MEMORY, NA, "allocate"},
    /* Strides (wrap only). */
    {"stride_negative", F32, 1, {4}, true, {-1}, NA, ATTN_ERR_LAYOUT, "strides[0]"},
    {"stride_negative_inner", F32, 2, {4, 4}, true, {4, -1}, NA, ATTN_ERR_LAYOUT, "strides[1]"},
    {"stride_int64_min", F64, 2, {2, 2}, true, {INT64_MIN, 1}, NA, ATTN_ERR_LAYOUT, "strides[0]"},
    {"stride_reaches_int64_max", U8, 1, {2}, true, {INT64_MAX}, NA, ATTN_ERR_OVERFLOW, "strides"},
    {"stride_times_dim_overflows", F32, 1, {3}, true, {INT64_MAX}, NA, ATTN_ERR_OVERFLOW, "strides"},
    {"strides_sum_overflows", F32, 2, {2, 2}, true, {INT64_C(1) << 62, INT64_C(1) << 62}, NA,
     ATTN_ERR_OVERFLOW, "strides"},
    {"stride_byte_extent_overflows", F32, 1, {2}, true, {INT64_C(1) << 61}, NA, ATTN_ERR_OVERFLOW, "strides"},
    {"stride_2p40_rows", F64, 2, {P40, 4}, true, {P40, 1}, NA, ATTN_ERR_OVERFLOW, "strides"},
};

static void every_bad_tensor_is_rejected(void **state) {
  (void)state;
  fx *f = malloc(sizeof *f);
  char name[128];
  n_failed = 0;
  for (size_t i = 0; i < sizeof meta_rows / sizeof meta_rows[0]; i++) {
    const meta_row *r = &meta_rows[i];
    for (int wrap = 0; wrap < 2; wrap++) {
      attn_status want = wrap ? r->want_wrap : r->want_create;
      if (want == NA) continue;
      snprintf(name, sizeof name, "tensor_%s_%s", wrap ? "wrap" : "create", r->name);
      fx_init(f);
      attn_status st = wrap ? attn_tensor_wrap(f->ctx, r->dt, r->rank, r->shape,
                                               r->has_strides ? r->strides : NULL, f->out_arena, &f->ht)
                            : attn_tensor_create(f->ctx, r->dt, r->rank, r->shape, &f->ht);
      check_result(f, name, st, want, r->msg);
      fx_check_and_free(f, name);
    }
  }
  free(f);
  assert_int_equal(n_failed, 0);
}

/* ---- q/k/v/out/weights/lse mutations ------------------------------------------ */

enum { TQ, TK, TV, TOUT, TW, TLSE };
static const char *const tnames[6] = {"q:", "k:", "v:", "out:", "weights", "lse"};

typedef struct mutation {
  const char *name;
  int target;
  attn_dtype dt;
  int32_t rank;
  int64_t shape[4];
  bool has_strides;
  int64_t strides[4];
  attn_status want; /* from attn_plan_create() and attn_forward() */
  const char *msg;
} mutation;

static const mutation mutations[] = {
    {"q_rank3", TQ, F32, 3, {B_, H_, SQ}, false, {0}, ATTN_ERR_SHAPE, "q:"},
    {"q_rank2", TQ, F32, 2, {B_ * H_ * SQ, D_}, false, {0}, ATTN_ERR_SHAPE, "q:"},
    {"q_u8", TQ, U8, 4, {B_, H_, SQ, D_}, false, {0}, ATTN_ERR_DTYPE, "q:"},
    {"q_f64_others_f32", TQ, F64, 4, {B_, H_, SQ, D_}, false, {0}, ATTN_ERR_DTYPE, "k:"},
    {"q_batch3", TQ, F32, 4, {3, H_, SQ, D_}, false, {0}, ATTN_ERR_SHAPE, "q's batch"},
    {"q_heads3_not_multiple_of_hkv", TQ, F32, 4, {B_, 3, SQ, D_}, false, {0}, ATTN_ERR_SHAPE, "heads"},
    {"q_head_dim5", TQ, F32, 4, {B_, H_, SQ, D_ + 1}, false, {0}, ATTN_ERR_SHAPE, "head dim"},
    {"q_last_dim_strided", TQ, F32, 4, {B_, H_, SQ, D_}, true, {H_ * SQ * D_ * 2, SQ * D_ * 2, D_ * 2, 2},
     ATTN_ERR_LAYOUT, "q:"},
    {"k_rank3", TK, F32, 3, {B_, H_, SK}, false, {0}, ATTN_ERR_SHAPE, "k:"},
    {"k_f64", TK, F64, 4, {B_, H_, SK, D_}, false, {0}, ATTN_ERR_DTYPE, "k:"},
    {"k_batch1", TK, F32, 4, {1, H_, SK, D_}, false, {0}, ATTN_ERR_SHAPE, "k:"},
    {"k_heads3_v_heads2", TK, F32, 4, {B_, 3, SK, D_}, false, {0}, ATTN_ERR_SHAPE, "v:"},
    {"k_head_dim3", TK, F32, 4, {B_, H_, SK, D_ - 1}, false, {0}, ATTN_ERR_SHAPE, "k:"},
    {"k_last_dim_strided", TK, F32, 4, {B_, H_, SK, D_}, true, {H_ * SK * D_ * 3, SK * D_ * 3, D_ * 3, 3},
     ATTN_ERR_LAYOUT, "k:"},
    {"v_rank1", TV, F32, 1, {B_ * H_ * SK * D_}, false, {0}, ATTN_ERR_SHAPE, "v:"},
    {"v_f64", TV, F64, 4, {B_, H_, SK, D_}, false, {0}, ATTN_ERR_DTYPE, "v:"},
    {"v_seq7", TV, F32, 4, {B_, H_, SK + 1, D_}, false, {0}, ATTN_ERR_SHAPE, "v:"},
    {"v_heads1", TV, F32, 4, {B_, 1, SK, D_}, false, {0}, ATTN_ERR_SHAPE, "v:"},
    {"v_batch3", TV, F32, 4, {3, H_, SK, D_}, false, {0}, ATTN_ERR_SHAPE, "v:"},
    {"v_head_dim3_out_4", TV, F32, 4, {B_, H_, SK, D_ - 1}, false, {0}, ATTN_ERR_SHAPE, "out:"},
    {"v_last_dim_strided", TV, F32, 4, {B_, H_, SK, D_}, true, {H_ * SK * D_ * 2, SK * D_ * 2, D_ * 2, 2},
     ATTN_ERR_LAYOUT, "v:"},
    {"out_rank3", TOUT, F32, 3, {B_, H_, SQ}, false, {0}, ATTN_ERR_SHAPE, "out:"},
    {"out_f64", TOUT, F64, 4, {B_, H_, SQ, D_}, false, {0}, ATTN_ERR_DTYPE, "out:"},
    {"out_seq6", TOUT, F32, 4, {B_, H_, SQ + 1, D_}, false, {0}, ATTN_ERR_SHAPE, "out:"},
    {"out_heads1", TOUT, F32, 4, {B_, 1, SQ, D_}, false, {0}, ATTN_ERR_SHAPE, "out:"},
    {"out_batch1", TOUT, F32, 4, {1, H_, SQ, D_}, false, {0}, ATTN_ERR_SHAPE, "out:"},
    {"out_dim3", TOUT, F32, 4, {B_, H_, SQ, D_ - 1}, false, {0}, ATTN_ERR_SHAPE, "out:"},
    {"out_last_dim_strided", TOUT, F32, 4, {B_, H_, SQ, D_}, true, {H_ * SQ * D_ * 2, SQ * D_ * 2, D_ * 2, 2},
     ATTN_ERR_LAYOUT, "out:"},
    {"weights_rank3", TW, F32, 3, {B_, H_, SQ}, false, {0}, ATTN_ERR_SHAPE, "weights:"},
    {"weights_f64", TW, F64, 4, {B_, H_, SQ, SK}, false, {0}, ATTN_ERR_DTYPE, "weights:"},
    {"weights_sk5", TW, F32, 4, {B_, H_, SQ, SK - 1}, false, {0}, ATTN_ERR_SHAPE, "weights:"},
    {"weights_sq_sk_swapped", TW, F32, 4, {B_, H_, SK, SQ}, false, {0}, ATTN_ERR_SHAPE, "weights:"},
    {"weights_last_dim_strided", TW, F32, 4, {B_, H_, SQ, SK}, true, {H_ * SQ * SK * 2, SQ * SK * 2, SK * 2, 2},
     ATTN_ERR_LAYOUT, "weights:"},
    {"lse_rank4", TLSE, F32, 4, {B_, H_, SQ, 1}, false, {0}, ATTN_ERR_SHAPE, "lse:"},
    {"lse_f64", TLSE, F64, 3, {B_, H_, SQ}, false, {0}, ATTN_ERR_DTYPE, "lse:"},
    {"lse_sq6", TLSE, F32, 3, {B_, H_, SQ + 1}, false, {0}, ATTN_ERR_SHAPE, "lse:"},
    {"lse_heads1", TLSE, F32, 3, {B_, 1, SQ}, false, {0}, ATTN_ERR_SHAPE, "lse:"},
    /* 16-bit dtypes (issue 15): only q, k, v of one 16-bit type, out in it
     * or f32, weights/lse f32; anything else names the tensor and q. */
    {"q_bf16_others_f32", TQ, ATTN_DTYPE_BF16, 4, {B_, H_, SQ, D_}, false, {0}, ATTN_ERR_DTYPE,
     "k: dtype f32, expected bf16 (q is bf16)"},
    {"k_bf16", TK, ATTN_DTYPE_BF16, 4, {B_, H_, SK, D_}, false, {0}, ATTN_ERR_DTYPE,
     "k: dtype bf16, expected f32 (q is f32)"},
    {"v_f16", TV, ATTN_DTYPE_F16, 4, {B_, H_, SK, D_}, false, {0}, ATTN_ERR_DTYPE, "v: dtype f16"},
    {"out_bf16_q_f32", TOUT, ATTN_DTYPE_BF16, 4, {B_, H_, SQ, D_}, false, {0}, ATTN_ERR_DTYPE,
     "out: dtype bf16"},
    {"weights_bf16", TW, ATTN_DTYPE_BF16, 4, {B_, H_, SQ, SK}, false, {0}, ATTN_ERR_DTYPE,
     "weights: dtype bf16"},
    {"lse_f16", TLSE, ATTN_DTYPE_F16, 3, {B_, H_, SQ}, false, {0}, ATTN_ERR_DTYPE, "lse: dtype f16"},
};

static void every_wrong_tensor_is_rejected_by_plan_forward_and_execute(void **state) {
  (void)state;
  fx *f = malloc(sizeof *f);
  char name[160];
  n_failed = 0;
  for (size_t i = 0; i < sizeof mutations / sizeof mutations[0]; i++) {
    const mutation *m = &mutations[i];
    for (int fn = 0; fn < 3; fn++) { /* plan_create, forward, execute */
      static const char *const fnames[3] = {"plan_create", "forward", "execute"};
      snprintf(name, sizeof name, "%s_%s", fnames[fn], m->name);
      fx_init(f);
      attn_tensor *bad = TS(f, m->dt, m->rank, m->shape[0], m->shape[1], m->shape[2], m->shape[3],
                            m->has_strides ? m->strides : NULL);
      attn_tensor **slot[6] = {&f->q, &f->k, &f->v, &f->out, &f->w, &f->lse};
      attn_tensor *keep = *slot[m->target];
      *slot[m->target] = bad;
      attn_status st = fn == 0 ? P(f) : fn == 1 ? F(f) : E(f);
      *slot[m->target] = keep;
      if (fn == 2)
        check_result(f, name, st, ATTN_ERR_MISMATCH, tnames[m->target]);
      else
        check_result(f, name, st, m->want, m->msg);
      fx_check_and_free(f, name);
    }
  }
  free(f);
  assert_int_equal(n_failed, 0);
}

/* Not statuses, but the same promise: NULL and out-of-range arguments of the
 * void/accessor functions are harmless and give the documented values. */
static void null_handles_and_accessors_are_safe(void **state) {
  (void)state;
  attn_context_destroy(NULL);
  attn_tensor_destroy(NULL);
  attn_desc_destroy(NULL);
  attn_plan_destroy(NULL);
  attn_context_options_init(NULL);
  assert_non_null(attn_context_last_error(NULL));
  assert_int_equal(attn_context_num_threads(NULL), 0);
  assert_int_equal((int)attn_tensor_dtype(NULL), 0);
  assert_int_equal(attn_tensor_rank(NULL), 0);
  assert_int_equal(attn_tensor_dim(NULL, 0), -1);
  assert_int_equal(attn_tensor_stride(NULL, 0), -1);
  assert_int_equal(attn_tensor_numel(NULL), 0);
  assert_null(attn_tensor_data(NULL));
  assert_int_equal(attn_plan_workspace_size(NULL), 0);
  /* paged KV cache (paged.h): NULL handles are refused or read as empty */
  int64_t id = -9, cnt = -9;
  attn_paged_config_init(NULL);
  attn_paged_destroy(NULL);
  attn_paged_plan_destroy(NULL);
  assert_int_equal(attn_paged_create(NULL, NULL, NULL), ATTN_ERR_NULL_ARG);
  assert_int_equal(attn_paged_seq_create(NULL, &id), ATTN_ERR_NULL_ARG);
  assert_int_equal(attn_paged_seq_free(NULL, 0), ATTN_ERR_NULL_ARG);
  assert_int_equal(attn_paged_fork(NULL, 0, &id), ATTN_ERR_NULL_ARG);
  assert_int_equal(attn_paged_append(NULL, 0, NULL, NULL), ATTN_ERR_NULL_ARG);
  assert_int_equal(attn_paged_truncate(NULL, 0, 0), ATTN_ERR_NULL_ARG);
  assert_int_equal(attn_paged_block_table(NULL, 0, NULL, 0, &cnt), ATTN_ERR_NULL_ARG);
  assert_int_equal(attn_paged_plan_create(NULL, NULL, NULL, NULL, NULL, NULL, NULL), ATTN_ERR_NULL_ARG);
  assert_int_equal(attn_paged_plan_execute(NULL, 0, NULL, NULL, NULL, NULL, NULL), ATTN_ERR_NULL_ARG);
  assert_int_equal(id, -9);
  assert_int_equal(cnt, -9);
  assert_int_equal(attn_paged_seq_length(NULL, 0), -1);
  assert_int_equal(attn_paged_free_blocks(NULL), 0);
  assert_int_equal(attn_paged_num_blocks(NULL), 0);
  assert_int_equal(attn_paged_block_size(NULL), 0);
  assert_int_equal(attn_paged_num_seqs(NULL), 0);
  assert_int_equal(attn_paged_memory_size(NULL), 0);
  assert_int_equal(attn_paged_memory_used(NULL), 0);
  assert_int_equal(attn_paged_plan_workspace_size(NULL), 0);
  assert_string_equal(attn_status_string((attn_status)-1), "unknown status");
  assert_string_equal(attn_status_string((attn_status)1000), "unknown status");
  fx *f = malloc(sizeof *f);
  fx_init(f);
  assert_int_equal(attn_tensor_dim(f->q, -1), -1);
  assert_int_equal(attn_tensor_dim(f->q, 4), -1);
  assert_int_equal(attn_tensor_stride(f->q, INT32_MIN), -1);
  assert_int_equal(attn_tensor_dim(f->lse, 3), -1);
  fx_check_and_free(f, "accessors");
  free(f);
}

/* The other side of the contract: valid values are accepted (a validator
 * that rejects everything would pass the tables above), NULL clears, and
 * the pure functions give what the header says. */
static void valid_values_are_accepted(void **state) {
  (void)state;
  fx *f = malloc(sizeof *f);
  fx_init(f);
  attn_desc *d = f->desc;
  int64_t shape1[1] = {4};
  attn_tensor *owned = NULL;
  assert_int_equal(attn_tensor_create(f->ctx, F32, 1, shape1, &owned), ATTN_OK);
  attn_tensor_destroy(owned);
  const attn_status ok[] = {
      attn_desc_set_variant(d, ATTN_VARIANT_LINFORMER), attn_desc_set_variant(d, ATTN_VARIANT_EXACT),
      attn_desc_set_score(d, ATTN_SCORE_ADDITIVE), attn_desc_set_score(d, ATTN_SCORE_SCALED_DOT),
      attn_desc_set_scale(d, 1e-300), attn_desc_set_scale(d, 1e300),
      attn_desc_set_causal(d, ATTN_CAUSAL_BOTTOM_RIGHT), attn_desc_set_causal(d, ATTN_CAUSAL_NONE),
      attn_desc_set_window(d, 0, 0), attn_desc_set_window(d, ATTN_WINDOW_UNBOUNDED, ATTN_WINDOW_UNBOUNDED),
      attn_desc_set_key_lengths(d, f->len2, 2), attn_desc_set_key_lengths(d, NULL, 0),
      attn_desc_set_query_lengths(d, f->len2, 2), attn_desc_set_query_lengths(d, NULL, 0),
      attn_desc_set_bool_mask(d, T(f, U8, 4, 1, 1, SQ, SK)), attn_desc_set_bool_mask(d, NULL),
      attn_desc_set_additive_mask(d, T(f, F64, 4, B_, H_, SQ, SK)), attn_desc_set_additive_mask(d, NULL),
      attn_desc_set_alibi(d, f->slopes2, 2), attn_desc_set_alibi(d, NULL, 0),
      attn_desc_set_softcap(d, 50.0), attn_desc_set_general_weight(d, T(f, F32, 2, D_, D_, 0, 0)),
      attn_desc_set_general_weight(d, NULL),
      attn_desc_set_additive_weights(d, T(f, F32, 2, 3, D_, 0, 0), T(f, F32, 2, 3, D_, 0, 0),
                                     T(f, F32, 1, 3, 0, 0, 0), T(f, F32, 1, 3, 0, 0, 0)),
      attn_desc_set_swin(d, 7, 5, 3, 1), attn_desc_set_swin_bias(d, T(f, F32, 2, 25, H_, 0, 0)),
      attn_desc_set_swin_bias(d, NULL), attn_desc_set_global_tokens(d, f->idx2, 2),
      attn_desc_set_global_tokens(d, NULL, 0), attn_desc_set_block_size(d, 1),
      attn_desc_set_bigbird(d, 0, 0, 0, UINT64_MAX), attn_desc_set_block_layout(d, T(f, U8, 3, 1, 2, 2, 0)),
      attn_desc_set_block_layout(d, NULL), attn_desc_set_features(d, 1, 0), attn_desc_set_lowrank(d, 1, 0),
      attn_desc_set_lowrank_proj(d, T(f, F32, 2, 3, SK, 0, 0), T(f, F32, 2, 3, SK, 0, 0)),
      attn_desc_set_lowrank_proj(d, NULL, NULL), attn_tensor_set_data(f->q, f->in_arena),
  };
  for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++)
    if (ok[i] != ATTN_OK) fail_msg("valid call %zu rejected: %s", i, attn_context_last_error(f->ctx));
  print_message("%zu valid calls accepted\n", sizeof ok / sizeof ok[0]);
  fx_check_and_free(f, "valid values");
  free(f);

  /* Status strings: every code has its own text; versions agree. */
  for (int a = 0; a <= ATTN_ERR_INTERNAL; a++) {
    assert_string_not_equal(attn_status_string((attn_status)a), "unknown status");
    for (int b = 0; b < a; b++)
      assert_string_not_equal(attn_status_string((attn_status)a), attn_status_string((attn_status)b));
  }
  assert_int_equal(attn_version_number(), ATTN_VERSION_NUMBER);
  assert_string_equal(attn_version_string(), ATTN_VERSION_STRING);

  /* num_threads 0: $ATTN_NUM_THREADS if it is a number in 1..1024, else the cores. */
  const char *old = getenv("ATTN_NUM_THREADS");
  char *saved = old ? strdup(old) : NULL;
  static const struct { const char *env; int32_t want; } envs[] = {
      {"3", 3}, {"1024", 1024}, {"0", -1}, {"1025", -1}, {"2x", -1}, {"", -1}};
  for (size_t i = 0; i < sizeof envs / sizeof envs[0]; i++) {
    setenv("ATTN_NUM_THREADS", envs[i].env, 1);
    attn_context *ctx = NULL;
    assert_int_equal(attn_context_create(NULL, &ctx), ATTN_OK);
    int32_t n = attn_context_num_threads(ctx);
    if (envs[i].want > 0) assert_int_equal(n, envs[i].want);
    else assert_true(n >= 1 && n <= 1024);
    attn_context_destroy(ctx);
  }
  if (saved) setenv("ATTN_NUM_THREADS", saved, 1);
  else unsetenv("ATTN_NUM_THREADS");
  free(saved);
}

static int print_count(void **state) {
  (void)state;
  print_message("%d bad-input cases checked\n", n_cases);
  return n_cases >= 150 ? 0 : -1;
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(every_bad_call_fails_cleanly),
      cmocka_unit_test(every_bad_tensor_is_rejected),
      cmocka_unit_test(every_wrong_tensor_is_rejected_by_plan_forward_and_execute),
      cmocka_unit_test(null_handles_and_accessors_are_safe),
      cmocka_unit_test(valid_values_are_accepted),
  };
  return cmocka_run_group_tests(tests, NULL, print_count);
}

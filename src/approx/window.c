/* Swin 2-D window attention. Tokens lie row-major on a grid_h × grid_w grid,
 * padded at the bottom/right to multiples of the window M (padded tokens are
 * never attended to and produce nothing). With a shift s the padded grid is
 * rolled by −s on both axes, partitioned into M×M windows and rolled back; in
 * the rolled frame, Swin labels each axis' positions [0, Hp−M), [Hp−M, Hp−s),
 * [Hp−s, Hp) and tokens with different labels do not see each other.
 *
 * Per (batch, head, window) task: gather the window's tokens into a
 * contiguous per-thread slot, S = scale·Q Kᵀ (GEMM), add the relative
 * position bias and the region mask, softmax with the vector exp, O = P V
 * (GEMM), scatter back. Cost O(S·M²·d); memory O(threads·M²·(M² + d)).
 *
 * (1-D sliding-window attention is ATTN_VARIANT_EXACT with a window: the
 * exact kernel visits only the key tiles of the band; see mask/mask.c.) */
#include <inttypes.h>
#include <math.h>
#include <string.h>

#include "blas/gemm.h"
#include "core/internal.h"
#include "kernels/vmath.h"

typedef struct swin_impl {
  int64_t gh, gw, M, shift;
  int64_t Hp, Wp, nwx, nwin; /* padded grid, windows per row, windows */
  int64_t n;                 /* M² tokens per window (at most) */
  size_t slot_elems;         /* per-thread slot, in elements of the dtype */
} swin_impl;

typedef struct swin_args {
  attn_plan *plan;
  const attn_tensor *q, *k, *v;
  attn_tensor *out, *weights, *lse;
  const void *bias; /* table data or NULL */
  int64_t bias_s0, bias_s1;
} swin_args;

/* Swin's region label of rolled-frame position x on an axis of padded length P. */
static inline int64_t swin_region(int64_t x, int64_t P, int64_t M, int64_t s) {
  return x < P - M ? 0 : x < P - s ? 1 : 2;
}

/* Fill the window's token list: original index, in-window position a·M + c
 * and region label; returns the number of (non-padded) tokens. */
static int64_t swin_window_tokens(const swin_impl *im, int64_t win, int64_t *tok, int64_t *loc,
                                  int64_t *reg) {
  const int64_t wy = win / im->nwx, wx = win % im->nwx, M = im->M, s = im->shift;
  int64_t n = 0;
  for (int64_t a = 0; a < M; a++)
    for (int64_t c = 0; c < M; c++) {
      const int64_t ys = wy * M + a, xs = wx * M + c;
      const int64_t y = (ys + s) % im->Hp, x = (xs + s) % im->Wp;
      if (y >= im->gh || x >= im->gw) continue; /* padding */
      tok[n] = y * im->gw + x;
      loc[n] = a * M + c;
      reg[n] = s > 0 ? 3 * swin_region(ys, im->Hp, M, s) + swin_region(xs, im->Wp, M, s) : 0;
      n++;
    }
  return n;
}

#define T float
#define SUFFIX f32
#define GEMM attn_sgemm
#define VMAX(x, n) vm->max_f32((x), (n))
#define VEXPSUM(x, n, m) vm->exp_sub_sum_f32((x), (n), (m))
#define LOG logf
#include "approx/swin_impl.inc"
#undef T
#undef SUFFIX
#undef GEMM
#undef VMAX
#undef VEXPSUM
#undef LOG

#define T double
#define SUFFIX f64
#define GEMM attn_dgemm
#define VMAX(x, n) attn_max_f64((x), (n))
#define VEXPSUM(x, n, m) attn_exp_sub_sum_f64((x), (n), (m))
#define LOG log
#include "approx/swin_impl.inc"
#undef T
#undef SUFFIX
#undef GEMM
#undef VMAX
#undef VEXPSUM
#undef LOG

static attn_status swin_execute(attn_plan *p, const attn_tensor *q, const attn_tensor *k,
                                const attn_tensor *v, attn_tensor *out, attn_tensor *weights,
                                attn_tensor *lse) {
  const swin_impl *im = p->impl;
  const attn_tensor *bt = p->desc.swin_bias;
  swin_args a = {p, q, k, v, out, weights, lse, bt ? bt->data : NULL, bt ? bt->strides[0] : 0,
                 bt ? bt->strides[1] : 0};
  return attn_parallel_for(p->ctx, p->B * p->H * im->nwin,
                           p->dtype == ATTN_DTYPE_F32 ? swin_task_f32 : swin_task_f64, &a);
}

static const attn_plan_ops swin_ops = {"swin", swin_execute, NULL, NULL, NULL};

/* Options the Swin path does not implement. */
static attn_status swin_reject_options(attn_plan *p) {
  attn_context *ctx = p->ctx;
  const attn_desc *d = &p->desc;
  const char *what = NULL;
  if (d->score != ATTN_SCORE_SCALED_DOT && d->score != ATTN_SCORE_DOT)
    what = "score: Swin supports ATTN_SCORE_SCALED_DOT and ATTN_SCORE_DOT only";
  else if (d->causal != ATTN_CAUSAL_NONE)
    what = "causal: Swin window attention is not causal";
  else if (d->win_left != ATTN_WINDOW_UNBOUNDED || d->win_right != ATTN_WINDOW_UNBOUNDED)
    what = "window: Swin uses attn_desc_set_swin(), not a 1-D window";
  else if (d->key_lengths != NULL || d->query_lengths != NULL)
    what = "key_lengths/query_lengths: not supported with Swin";
  else if (d->bool_mask != NULL || d->add_mask != NULL)
    what = "bool_mask/additive_mask: not supported with Swin";
  else if (d->alibi != NULL || d->softcap > 0.0)
    what = "alibi/softcap: not supported with Swin";
  return what ? attn_fail(ctx, ATTN_ERR_UNSUPPORTED, "%s", what) : ATTN_OK;
}

attn_status attn_swin_plan_init(attn_plan *p) {
  attn_context *ctx = p->ctx;
  const attn_desc *d = &p->desc;
  attn_status st;
  char buf[96];
  if (d->swin_window < 1)
    return attn_fail(ctx, ATTN_ERR_INVALID_ARG,
                     "swin: ATTN_VARIANT_SWIN needs attn_desc_set_swin() (grid and window)");
  if ((st = swin_reject_options(p)) != ATTN_OK) return st;
  const int64_t S = d->swin_h * d->swin_w, M = d->swin_window;
  if (p->Sq != S || p->Sk != S)
    return attn_fail(ctx, ATTN_ERR_SHAPE,
                     "q: S_q = %" PRId64 ", S_k = %" PRId64 " must both equal grid_h*grid_w = %"
                     PRId64 "*%" PRId64 " = %" PRId64, p->Sq, p->Sk, d->swin_h, d->swin_w, S);
  if (d->swin_bias != NULL) {
    const attn_tensor *t = d->swin_bias;
    if ((st = attn_check_tensor(ctx, "table", t, 2, p->dtype)) != ATTN_OK) return st;
    int64_t rows = (2 * M - 1) * (2 * M - 1);
    if (t->shape[0] != rows || t->shape[1] != p->H)
      return attn_fail(ctx, ATTN_ERR_SHAPE,
                       "table: shape %s, expected [(2*window-1)^2, H] = [%" PRId64 ",%" PRId64 "]",
                       attn_shape_str(t, buf, sizeof buf), rows, p->H);
  }
  swin_impl tmp = {0};
  tmp.gh = d->swin_h;
  tmp.gw = d->swin_w;
  tmp.M = M;
  tmp.shift = d->swin_shift;
  /* Slot: Q, K [n×d_k], V, O [n×d_v], S [n×n] for n = M² tokens, then the
   * token / position / region lists (3n int64); parts rounded to 16 elements. */
  const int64_t es = (int64_t)attn_dtype_size(p->dtype);
  int64_t parts[6], slot = 0, total;
  bool ok = attn_mul_ok(M, M, &tmp.n) && attn_mul_ok(tmp.n, tmp.n, &parts[4]) &&
            attn_mul_ok(tmp.n, p->Dk, &parts[0]) && attn_mul_ok(tmp.n, p->Dv, &parts[2]) &&
            attn_mul_ok(tmp.n, 24, &parts[5]);
  for (int i = 0; ok && i < 6; i++) {
    if (i == 1) parts[1] = parts[0];
    if (i == 3) parts[3] = parts[2];
    if (i == 5) parts[5] = attn_cdiv64(parts[5], es);
    ok = attn_add_ok(slot, (parts[i] + 15) / 16 * 16, &slot);
  }
  if (!ok)
    return attn_fail(ctx, ATTN_ERR_OVERFLOW, "window: workspace for %" PRId64 "x%" PRId64
                     " windows overflows", M, M);
  tmp.Hp = attn_cdiv64(tmp.gh, M) * M;
  tmp.Wp = attn_cdiv64(tmp.gw, M) * M;
  tmp.nwx = tmp.Wp / M;
  tmp.nwin = (tmp.Hp / M) * tmp.nwx;
  tmp.slot_elems = (size_t)slot;
  size_t bytes;
  if (!attn_mul_ok(slot, ctx->num_threads, &total) || !attn_bytes_ok(&total, 1, (size_t)es, &bytes))
    return attn_fail(ctx, ATTN_ERR_OVERFLOW, "workspace size overflows");
  swin_impl *im = attn_alloc(ctx, sizeof *im);
  void *ws = attn_alloc(ctx, bytes);
  if (im == NULL || ws == NULL) {
    attn_free(ctx, im, sizeof *im);
    attn_free(ctx, ws, bytes);
    return attn_fail(ctx, ATTN_ERR_NO_MEMORY, "attn_plan_create: cannot allocate %zu bytes of workspace",
                     bytes);
  }
  *im = tmp;
  p->impl = im;
  p->impl_bytes = sizeof *im;
  p->workspace = ws;
  p->workspace_bytes = bytes;
  p->ops = &swin_ops;
  return ATTN_OK;
}

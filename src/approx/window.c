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
  struct {                   /* byte offsets in a thread's slot */
    size_t Q, K, V, O, S, ML, tok;
  } at;
} swin_impl;

typedef struct swin_args {
  const attn_plan *plan;
  attn_ws ws;
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

#define ATTN_TMPL_FILE "approx/swin_impl.inc"
#include "core/tmpl.h"

attn_status attn_swin_plan_execute(const attn_plan *p, const attn_run *run, const attn_tensor *q,
                                   const attn_tensor *k, const attn_tensor *v, attn_tensor *out,
                                   attn_tensor *weights, attn_tensor *lse) {
  const swin_impl *im = p->impl;
  const attn_tensor *bt = p->desc.swin.bias;
  swin_args a = {p, run->ws, q, k, v, out, weights, lse, bt ? bt->data : NULL,
                 bt ? bt->strides[0] : 0, bt ? bt->strides[1] : 0};
  return attn_parallel_for(run->ctx, p->dims.B * p->dims.H * im->nwin,
                           p->dims.dtype == ATTN_DTYPE_F32 ? swin_task_f32 : swin_task_f64, &a);
}

attn_status attn_swin_plan_init(attn_plan *p) {
  attn_context *ctx = p->ctx;
  const attn_desc *d = &p->desc;
  const attn_dims *dm = &p->dims;
  attn_status st;
  char buf[96];
  if (d->swin.window < 1)
    return attn_fail(ctx, ATTN_ERR_INVALID_ARG,
                     "swin: ATTN_VARIANT_SWIN needs attn_desc_set_swin() (grid and window)");
  const int64_t S = d->swin.h * d->swin.w, M = d->swin.window;
  if (dm->Sq != S || dm->Sk != S)
    return attn_fail(ctx, ATTN_ERR_SHAPE,
                     "q: S_q = %" PRId64 ", S_k = %" PRId64 " must both equal grid_h*grid_w = %"
                     PRId64 "*%" PRId64 " = %" PRId64, dm->Sq, dm->Sk, d->swin.h, d->swin.w, S);
  if (d->swin.bias != NULL) {
    const attn_tensor *t = d->swin.bias;
    if ((st = attn_check_tensor(ctx, "table", t, 2, dm->dtype)) != ATTN_OK) return st;
    int64_t rows = (2 * M - 1) * (2 * M - 1);
    if (t->shape[0] != rows || t->shape[1] != dm->H)
      return attn_fail(ctx, ATTN_ERR_SHAPE,
                       "table: shape %s, expected [(2*window-1)^2, H] = [%" PRId64 ",%" PRId64 "]",
                       attn_shape_str(t, buf, sizeof buf), rows, dm->H);
  }
  swin_impl tmp;
  memset(&tmp, 0, sizeof tmp);
  tmp.gh = d->swin.h;
  tmp.gw = d->swin.w;
  tmp.M = M;
  tmp.shift = d->swin.shift;
  /* Slot: Q, K [n×d_k], V, O [n×d_v], S [n×n] for n = M² tokens, the rows'
   * softmax state (2n), the token / position / region lists (3n int64). */
  const size_t es = attn_dtype_size(dm->dtype);
  attn_carver c = attn_carver_start();
  if (!attn_mul_ok(M, M, &tmp.n)) c.ok = false;
  tmp.at.Q = attn_carve(&c, es, tmp.n, dm->Dk, 1);
  tmp.at.K = attn_carve(&c, es, tmp.n, dm->Dk, 1);
  tmp.at.V = attn_carve(&c, es, tmp.n, dm->Dv, 1);
  tmp.at.O = attn_carve(&c, es, tmp.n, dm->Dv, 1);
  tmp.at.S = attn_carve(&c, es, tmp.n, tmp.n, 1);
  tmp.at.ML = attn_carve(&c, es, 2, tmp.n, 1);
  tmp.at.tok = attn_carve(&c, sizeof(int64_t), 3, tmp.n, 1);
  int64_t total;
  if (!c.ok || !attn_mul_ok(c.bytes, ctx->num_threads, &total))
    return attn_fail(ctx, ATTN_ERR_OVERFLOW, "window: workspace for %" PRId64 "x%" PRId64
                     " windows overflows", M, M);
  tmp.Hp = attn_cdiv64(tmp.gh, M) * M;
  tmp.Wp = attn_cdiv64(tmp.gw, M) * M;
  tmp.nwx = tmp.Wp / M;
  tmp.nwin = (tmp.Hp / M) * tmp.nwx;
  swin_impl *im = attn_plan_impl_alloc(p, sizeof *im);
  if (im == NULL) return ATTN_ERR_NO_MEMORY;
  *im = tmp;
  p->ws_slot = (size_t)c.bytes;
  return ATTN_OK;
}

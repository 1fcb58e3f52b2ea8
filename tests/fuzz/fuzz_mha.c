/* libFuzzer target: the multi-head layer's training step (attn/heads.h:
 * attn_mha_forward_train, attn_mha_backward_execute) on small shapes. The
 * input picks the dtype (f32, f64; bf16/f16 must be refused with
 * ATTN_ERR_UNSUPPORTED), E, H, H_kv, kdim/vdim (packed or separate
 * weights), bias, add_bias_kv, add_zero_attn, sequence order, self or cross
 * attention, padded rows, a key padding mask, causal (either alignment),
 * which gradients are wanted, the thread count and the data. Traps when:
 *  - plan creation fails with an unknown status or no message, or a
 *    16-bit layer is not refused with ATTN_ERR_UNSUPPORTED;
 *  - the training forward's out differs from attn_mha_plan_execute's
 *    (bitwise), either call allocates, or anything leaks;
 *  - a gradient is not finite (every input is), or differs from the same
 *    step on a 1-thread context (bitwise);
 *  - db_o differs from Σ_rows dout, or (without add_zero_attn, when every
 *    query row keeps a key) db_v + dbias_v differs from
 *    Σ_{b,i} Σ_{h of the group} (dout·W_o)[b, i, h·D + d] — softmax rows sum
 *    to one — by more than 64·(rows·E + S_k' + 16)·u·Σ|terms|. */
#include <math.h>

#include "fuzz_common.h"

#define N_CTX 2
static const int32_t kThreads[N_CTX] = {3, 1};
static fz_alloc g_alloc[N_CTX];
static attn_context *g_ctx[N_CTX];
static int64_t g_baseline[N_CTX];

enum { P_IN, P_Q, P_K, P_V, P_INB, P_OUT, P_OUTB, P_BK, P_BV, P_N };

typedef struct cfg {
  attn_dtype dt;
  int64_t E, H, Hkv, D, Ekv, kdim, vdim, B, Sq, Sk, pad;
  bool bias, bias_kv, zero_attn, batch_first, self, packed, kpm, want[P_N], want_dx;
  int causal;
} cfg;

static size_t esize(attn_dtype dt) {
  return dt == ATTN_DTYPE_F64 ? 8 : dt == ATTN_DTYPE_F32 ? 4 : dt == ATTN_DTYPE_U8 ? 1 : 2;
}

/* The contexts, each with its pool started (a plan starts it; its memory
 * stays with the context and is the leak check's baseline). */
static void start_contexts(void) { fz_start_contexts(N_CTX, kThreads, g_alloc, g_ctx, g_baseline); }

static double ld(const void *p, attn_dtype dt, int64_t i) {
  return dt == ATTN_DTYPE_F64 ? ((const double *)p)[i] : ((const float *)p)[i];
}

/* Tensors and their memory, freed together. */
typedef struct pool {
  attn_tensor *t[64];
  void *mem[64];
  int n;
} pool;

static attn_tensor *mk(pool *pl, attn_context *ctx, attn_dtype dt, int32_t rank,
                       const int64_t *shape, const int64_t *strides, size_t elems,
                       uint64_t *seed) {
  void *mem = calloc(elems + 1, esize(dt));
  if (mem == NULL) abort();
  for (size_t i = 0; seed != NULL && i < elems; i++) {
    *seed ^= *seed << 13, *seed ^= *seed >> 7, *seed ^= *seed << 17;
    const double x = 2.0 * (double)(*seed >> 11) / 9007199254740992.0 - 1.0;
    if (dt == ATTN_DTYPE_F64)
      ((double *)mem)[i] = x;
    else if (dt == ATTN_DTYPE_F32)
      ((float *)mem)[i] = (float)x;
    else
      ((uint16_t *)mem)[i] = 0x3C00; /* 1.0 in f16; some value in bf16 */
  }
  attn_tensor *t = NULL;
  FZ_CHECK(attn_tensor_wrap(ctx, dt, rank, shape, strides, mem, &t) == ATTN_OK, "wrap: %s",
           attn_context_last_error(ctx));
  pl->t[pl->n] = t;
  pl->mem[pl->n++] = mem;
  return t;
}

static void pool_free(pool *pl) {
  for (int i = 0; i < pl->n; i++) {
    attn_tensor_destroy(pl->t[i]);
    free(pl->mem[i]);
  }
  pl->n = 0;
}

/* A [B, S, F] operand in the layer's order, rows padded by c->pad. */
static attn_tensor *seq(pool *pl, attn_context *ctx, const cfg *c, int64_t S, int64_t F,
                        uint64_t *seed) {
  const int64_t row = F + c->pad;
  int64_t shape[3], strides[3] = {0, row, 1};
  if (c->batch_first)
    shape[0] = c->B, shape[1] = S, strides[0] = S * row;
  else
    shape[0] = S, shape[1] = c->B, strides[0] = c->B * row;
  shape[2] = F;
  return mk(pl, ctx, c->dt, 3, shape, strides, (size_t)(c->B * S * row), seed);
}

static void parse(fz *f, cfg *c) {
  memset(c, 0, sizeof *c);
  const uint8_t d = fz_u8(f);
  c->dt = d % 8 == 0 ? ATTN_DTYPE_BF16 : d % 8 == 1 ? ATTN_DTYPE_F16
        : d % 2 ? ATTN_DTYPE_F64 : ATTN_DTYPE_F32;
  c->H = fz_range(f, 1, 4);
  c->D = fz_range(f, 1, 4);
  c->E = c->H * c->D;
  int64_t divs[4], nd = 0;
  for (int64_t x = 1; x <= c->H; x++)
    if (c->H % x == 0) divs[nd++] = x;
  c->Hkv = divs[fz_u8(f) % nd];
  c->Ekv = c->Hkv * c->D;
  c->self = fz_bool(f);
  c->kdim = c->self || fz_bool(f) ? c->E : fz_range(f, 1, 6);
  c->vdim = c->self || fz_bool(f) ? c->E : fz_range(f, 1, 6);
  c->packed = c->kdim == c->E && c->vdim == c->E && c->Hkv == c->H && fz_bool(f);
  c->bias = fz_bool(f);
  c->bias_kv = fz_bool(f);
  c->zero_attn = fz_bool(f);
  c->batch_first = fz_bool(f);
  c->B = fz_range(f, 1, 3);
  c->Sq = fz_range(f, 1, 7);
  c->Sk = c->self ? c->Sq : fz_range(f, 1, 7);
  c->pad = fz_range(f, 0, 2);
  c->kpm = fz_bool(f);
  c->causal = (int)(fz_u8(f) % 3); /* none, top-left, bottom-right */
  const uint8_t w = fz_u8(f);
  for (int i = 0; i < P_N; i++) c->want[i] = (w >> (i % 8)) & 1 || i == P_OUTB;
  c->want_dx = c->self || fz_bool(f); /* cross attention: sometimes no dkey, dvalue */
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (g_ctx[0] == NULL) start_contexts();
  fz f = {data, size};
  cfg c;
  parse(&f, &c);
  const uint64_t seed0 = fz_u64(&f) | 1;
  if (getenv("FUZZ_MHA_VERBOSE"))
    fprintf(stderr,
            "dt %d E %lld H %lld Hkv %lld kdim %lld vdim %lld B %lld Sq %lld Sk %lld pad %lld "
            "bias %d bias_kv %d zero %d bf %d self %d packed %d kpm %d causal %d dx %d\n",
            (int)c.dt, (long long)c.E, (long long)c.H, (long long)c.Hkv, (long long)c.kdim,
            (long long)c.vdim, (long long)c.B, (long long)c.Sq, (long long)c.Sk,
            (long long)c.pad, c.bias, c.bias_kv, c.zero_attn, c.batch_first, c.self, c.packed,
            c.kpm, c.causal, c.want_dx);
  const int ci = (int)(fz_u8(&f) % N_CTX);
  attn_context *ctx = g_ctx[ci];
  pool pl = {.n = 0};
  uint64_t seed = seed0;

  /* Parameters (PyTorch layouts) and the layer. */
  const int64_t E = c.E, Ekv = c.Ekv;
  const int64_t shp[P_N][3] = {{E + 2 * Ekv, E}, {E, E}, {Ekv, c.kdim}, {Ekv, c.vdim},
                               {E + 2 * Ekv},    {E, E}, {E},          {1, 1, Ekv},
                               {1, 1, Ekv}};
  const int32_t rank[P_N] = {2, 2, 2, 2, 1, 2, 1, 3, 3};
  bool has[P_N] = {false};
  has[P_IN] = c.packed;
  has[P_Q] = has[P_K] = has[P_V] = !c.packed;
  has[P_INB] = has[P_OUTB] = c.bias;
  has[P_OUT] = true;
  has[P_BK] = has[P_BV] = c.bias_kv;
  attn_tensor *p[P_N] = {NULL}, *g[2][P_N] = {{NULL}};
  for (int i = 0; i < P_N; i++) {
    if (!has[i]) continue;
    int64_t n = 1, st[3];
    for (int r = rank[i] - 1; r >= 0; r--) st[r] = n, n *= shp[i][r];
    p[i] = mk(&pl, ctx, c.dt, rank[i], shp[i], st, (size_t)n, &seed);
    for (int k = 0; k < 2 && c.want[i]; k++)
      g[k][i] = mk(&pl, ctx, c.dt, rank[i], shp[i], st, (size_t)n, NULL);
  }
  attn_mha_config cf;
  attn_mha_config_init(&cf);
  cf.embed_dim = E, cf.num_heads = c.H, cf.num_kv_heads = c.Hkv, cf.kdim = c.kdim;
  cf.vdim = c.vdim, cf.bias = c.bias, cf.add_bias_kv = c.bias_kv;
  cf.add_zero_attn = c.zero_attn, cf.batch_first = c.batch_first, cf.dtype = c.dt;
  attn_mha_weights w;
  attn_mha_weights_init(&w);
  w.in_proj_weight = p[P_IN], w.q_proj_weight = p[P_Q], w.k_proj_weight = p[P_K];
  w.v_proj_weight = p[P_V], w.in_proj_bias = p[P_INB], w.out_proj_weight = p[P_OUT];
  w.out_proj_bias = p[P_OUTB], w.bias_k = p[P_BK], w.bias_v = p[P_BV];
  attn_mha *m = NULL;
  attn_status st = attn_mha_create(ctx, &cf, &w, &m);
  FZ_CHECK(st == ATTN_OK, "mha_create: %s", attn_context_last_error(ctx));

  attn_tensor *q = seq(&pl, ctx, &c, c.Sq, E, &seed);
  attn_tensor *k = c.self ? q : seq(&pl, ctx, &c, c.Sk, c.kdim, &seed);
  attn_tensor *v = c.self ? q : seq(&pl, ctx, &c, c.Sk, c.vdim, &seed);
  attn_tensor *out = seq(&pl, ctx, &c, c.Sq, E, NULL), *out2 = seq(&pl, ctx, &c, c.Sq, E, NULL);
  attn_tensor *dout = seq(&pl, ctx, &c, c.Sq, E, &seed);
  attn_tensor *dx[2][3];
  for (int r = 0; r < 2; r++) {
    dx[r][0] = seq(&pl, ctx, &c, c.Sq, E, NULL);
    dx[r][1] = c.self ? dx[r][0] : c.want_dx ? seq(&pl, ctx, &c, c.Sk, c.kdim, NULL) : NULL;
    dx[r][2] = c.self ? dx[r][0] : c.want_dx ? seq(&pl, ctx, &c, c.Sk, c.vdim, NULL) : NULL;
  }
  attn_tensor *kpm = NULL;
  if (c.kpm) {
    const int64_t s[2] = {c.B, c.Sk}, str[2] = {c.Sk, 1};
    kpm = mk(&pl, ctx, ATTN_DTYPE_U8, 2, s, str, (size_t)(c.B * c.Sk), NULL);
    uint8_t *km = attn_tensor_data(kpm);
    for (int64_t i = 0; i < c.B * c.Sk; i++) km[i] = (uint8_t)(fz_u8(&f) & 1);
  }
  attn_desc *desc = NULL;
  FZ_CHECK(attn_desc_create(ctx, &desc) == ATTN_OK, "desc");
  if (c.causal)
    attn_desc_set_causal(desc, c.causal == 1 ? ATTN_CAUSAL_TOP_LEFT : ATTN_CAUSAL_BOTTOM_RIGHT);

  attn_mha_plan *fp = NULL;
  attn_mha_backward_plan *bp = NULL, *bp1 = NULL;
  attn_mha *m1 = NULL;
  void *saved = NULL;
  st = attn_mha_plan_create(m, desc, q, k, v, kpm, out, NULL, &fp);
  FZ_CHECK(fz_status_known(st), "mha plan status %d", (int)st);
  if (st == ATTN_OK) {
    st = attn_mha_backward_plan_create(m, desc, q, k, v, kpm, out, &bp);
    FZ_CHECK(fz_status_known(st), "backward plan status %d", (int)st);
    FZ_CHECK(st == ATTN_OK || attn_context_last_error(ctx)[0] != '\0', "no message");
    if (c.dt == ATTN_DTYPE_BF16 || c.dt == ATTN_DTYPE_F16)
      FZ_CHECK(st == ATTN_ERR_UNSUPPORTED && bp == NULL, "16-bit layer: status %d", (int)st);
    else
      FZ_CHECK(st == ATTN_OK, "backward plan: %s", attn_context_last_error(ctx));
  }
  if (bp != NULL) {
    const size_t n = attn_mha_backward_saved_size(bp);
    saved = malloc(n);
    if (saved == NULL) abort();
    attn_mha_grads gr[2];
    for (int r = 0; r < 2; r++) {
      attn_mha_grads_init(&gr[r]);
      gr[r].in_proj_weight = g[r][P_IN], gr[r].q_proj_weight = g[r][P_Q];
      gr[r].k_proj_weight = g[r][P_K], gr[r].v_proj_weight = g[r][P_V];
      gr[r].in_proj_bias = g[r][P_INB], gr[r].out_proj_weight = g[r][P_OUT];
      gr[r].out_proj_bias = g[r][P_OUTB], gr[r].bias_k = g[r][P_BK], gr[r].bias_v = g[r][P_BV];
    }
    FZ_CHECK(attn_mha_plan_execute(fp, q, k, v, kpm, out2, NULL) == ATTN_OK, "forward: %s",
             attn_context_last_error(ctx));
    /* Warm once (the pool starts on first use), then count allocations. */
    for (int rep = 0; rep < 2; rep++) {
      const int64_t allocs = g_alloc[ci].count;
      FZ_CHECK(attn_mha_forward_train(bp, q, k, v, kpm, out, saved, n) == ATTN_OK,
               "forward_train: %s", attn_context_last_error(ctx));
      FZ_CHECK(attn_mha_backward_execute(bp, q, k, v, kpm, dout, saved, n, dx[0][0], dx[0][1],
                                         dx[0][2], &gr[0]) == ATTN_OK,
               "backward: %s", attn_context_last_error(ctx));
      FZ_CHECK(rep == 0 || g_alloc[ci].count == allocs, "the training step allocated");
    }
    const size_t es = esize(c.dt);
    const int64_t on = attn_tensor_dim(out, 0) * attn_tensor_stride(out, 0);
    FZ_CHECK(memcmp(attn_tensor_data(out), attn_tensor_data(out2), (size_t)on * es) == 0,
             "training forward's out differs from the forward's");
    /* The same step on the other context: bitwise equal, all finite. */
    attn_context *ctx1 = g_ctx[1 - ci];
    /* The layer, desc and tensors belong to ctx; a layer on ctx1 with the
     * same weights gives its plan ctx1's threads. */
    FZ_CHECK(attn_mha_create(ctx1, &cf, &w, &m1) == ATTN_OK, "mha_create ctx1");
    FZ_CHECK(attn_mha_backward_plan_create(m1, desc, q, k, v, kpm, out, &bp1) == ATTN_OK,
             "backward plan ctx1: %s", attn_context_last_error(ctx1));
    if (bp1 != NULL) {
      FZ_CHECK(attn_mha_forward_train(bp1, q, k, v, kpm, out2, saved, n) == ATTN_OK, "train ctx1");
      FZ_CHECK(attn_mha_backward_execute(bp1, q, k, v, kpm, dout, saved, n, dx[1][0], dx[1][1],
                                         dx[1][2], &gr[1]) == ATTN_OK,
               "backward ctx1");
      const attn_tensor *a[3 + P_N], *b[3 + P_N];
      for (int i = 0; i < 3; i++) a[i] = dx[0][i], b[i] = dx[1][i];
      for (int i = 0; i < P_N; i++) a[3 + i] = g[0][i], b[3 + i] = g[1][i];
      for (int i = 0; i < 3 + P_N; i++) {
        if (a[i] == NULL) continue;
        const int64_t len = attn_tensor_dim(a[i], 0) * attn_tensor_stride(a[i], 0);
        FZ_CHECK(memcmp(attn_tensor_data(a[i]), attn_tensor_data(b[i]), (size_t)len * es) == 0,
                 "gradient %d: %d threads and %d differ", i, kThreads[ci], kThreads[1 - ci]);
        for (int64_t e = 0; e < len; e++)
          FZ_CHECK(isfinite(ld(attn_tensor_data(a[i]), c.dt, e)), "gradient %d not finite", i);
      }
    }
    /* db_o = Σ_rows dout, and the softmax identity for db_v + dbias_v. */
    const double u = c.dt == ATTN_DTYPE_F64 ? 0x1p-53 : 0x1p-24;
    const int64_t rows = c.B * c.Sq, Skx = c.Sk + c.bias_kv + c.zero_attn;
    const void *dd = attn_tensor_data(dout);
    const int64_t dsb = c.batch_first ? attn_tensor_stride(dout, 0) : attn_tensor_stride(dout, 1);
    const int64_t dss = c.batch_first ? attn_tensor_stride(dout, 1) : attn_tensor_stride(dout, 0);
    if (g[0][P_OUTB] != NULL) {
      for (int64_t e = 0; e < E; e++) {
        double s = 0, sa = 0;
        for (int64_t b = 0; b < c.B; b++)
          for (int64_t i = 0; i < c.Sq; i++) {
            const double x = ld(dd, c.dt, b * dsb + i * dss + e);
            s += x, sa += fabs(x);
          }
        const double got = ld(attn_tensor_data(g[0][P_OUTB]), c.dt, e);
        FZ_CHECK(fabs(got - s) <= 64.0 * (double)(rows + 16) * u * sa + 1e-300,
                 "db_o[%lld] = %.17g, Σ dout = %.17g", (long long)e, got, s);
      }
    }
    /* Does every query row keep a real key (or an appended one)? */
    bool rows_keep = true;
    for (int64_t b = 0; b < c.B && !(c.bias_kv || c.zero_attn); b++)
      for (int64_t i = 0; i < c.Sq; i++) {
        const int64_t last = c.causal == 1 ? i : c.causal == 2 ? i + c.Sk - c.Sq : c.Sk - 1;
        bool any = false;
        for (int64_t j = 0; j <= last && j < c.Sk; j++)
          any |= !c.kpm || ((const uint8_t *)attn_tensor_data(kpm))[b * c.Sk + j] != 0;
        rows_keep &= any;
      }
    if (g[0][P_INB] != NULL && !c.zero_attn && rows_keep && (!c.bias_kv || g[0][P_BV] != NULL)) {
      const void *wo = attn_tensor_data(p[P_OUT]);
      const int64_t grp = c.H / c.Hkv;
      for (int64_t kv = 0; kv < Ekv; kv++) {
        const int64_t gh = kv / c.D, d = kv % c.D;
        double s = 0, sa = 0;
        for (int64_t b = 0; b < c.B; b++)
          for (int64_t i = 0; i < c.Sq; i++)
            for (int64_t h = gh * grp; h < (gh + 1) * grp; h++)
              for (int64_t e = 0; e < E; e++) {
                const double x = ld(dd, c.dt, b * dsb + i * dss + e) * ld(wo, c.dt, e * E + h * c.D + d);
                s += x, sa += fabs(x);
              }
        double got = ld(attn_tensor_data(g[0][P_INB]), c.dt, E + Ekv + kv);
        if (c.bias_kv) got += ld(attn_tensor_data(g[0][P_BV]), c.dt, kv);
        FZ_CHECK(fabs(got - s) <= 64.0 * (double)(rows * E + Skx + 16) * u * sa + 1e-300,
                 "db_v + dbias_v [%lld] = %.17g, Σ dO = %.17g (bound %.3g)", (long long)kv, got,
                 s, 64.0 * (double)(rows * E + Skx + 16) * u * sa);
      }
    }
  }
  free(saved);
  attn_mha_backward_plan_destroy(bp1);
  attn_mha_destroy(m1);
  attn_mha_backward_plan_destroy(bp);
  attn_mha_plan_destroy(fp);
  attn_desc_destroy(desc);
  attn_mha_destroy(m);
  pool_free(&pl);
  for (int i = 0; i < N_CTX; i++) {
    FZ_CHECK(g_alloc[i].outstanding == g_baseline[i], "leak: %lld bytes outstanding on ctx %d",
             (long long)(g_alloc[i].outstanding - g_baseline[i]), i);
  }
  return 0;
}

/* attn_mha against an independent f64 reference written here: projections
 * and out-projection by plain loops, GQA by *repeating* K/V heads into a
 * full-H problem, masks expanded to dense [B][H][S_q][S_k'] arrays, then
 * tests/common/reference.c for the attention itself. Also: zero allocations in
 * execute, no leaks under allocation failure, bad input → documented status,
 * argument named, outputs untouched. (Equality with PyTorch itself is
 * tests/oracle/test_mha_torch.py.) */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "testutil.h"

typedef struct mcase {
  int64_t E, H, Hkv, B, Sq, Sk, kdim, vdim;
  bool bias, bias_kv, zero_attn, batch_first, self, packed, kpm, causal, bool_mask, add_mask;
  bool pad_rows; /* query/out rows padded: per-batch GEMM path */
  int weights;   /* 0, 3 (averaged), 4 (per head) */
  attn_dtype dt;
} mcase;

/* Dense logical [B][S][F] stored in the layer's layout (optionally padded rows). */
static attn_tensor *seq_tensor(attn_context *ctx, attn_dtype dt, const double *x, int64_t B,
                               int64_t S, int64_t F, bool batch_first, int64_t pad) {
  int64_t shape[3], strides[3];
  int64_t row = F + pad;
  if (batch_first) {
    shape[0] = B; shape[1] = S;
    strides[0] = S * row + pad; strides[1] = row;
  } else {
    shape[0] = S; shape[1] = B;
    strides[0] = B * row + pad; strides[1] = row;
  }
  shape[2] = F;
  strides[2] = 1;
  size_t n = (size_t)(shape[0] * strides[0] + 64);
  size_t es = dt == ATTN_DTYPE_F64 ? 8 : tu_is_16bit(dt) ? 2 : 4;
  void *mem = calloc(n, es);
  for (int64_t b = 0; b < B; b++)
    for (int64_t s = 0; s < S; s++)
      for (int64_t f = 0; f < F; f++) {
        int64_t off = (batch_first ? b * strides[0] + s * strides[1] : s * strides[0] + b * strides[1]) + f;
        double v = x ? x[(b * S + s) * F + f] : NAN;
        tu_store(mem, dt, off, v);
      }
  attn_tensor *t = NULL;
  assert_int_equal(attn_tensor_wrap(ctx, dt, 3, shape, strides, mem, &t), ATTN_OK);
  return t;
}

static void read_seq(const attn_tensor *t, bool batch_first, double *dst) {
  int64_t d0 = attn_tensor_dim(t, 0), d1 = attn_tensor_dim(t, 1), F = attn_tensor_dim(t, 2);
  int64_t B = batch_first ? d0 : d1, S = batch_first ? d1 : d0;
  for (int64_t b = 0; b < B; b++)
    for (int64_t s = 0; s < S; s++)
      for (int64_t f = 0; f < F; f++) {
        int64_t i0 = batch_first ? b : s, i1 = batch_first ? s : b;
        int64_t off = i0 * attn_tensor_stride(t, 0) + i1 * attn_tensor_stride(t, 1) + f;
        dst[(b * S + s) * F + f] = tu_load(attn_tensor_data(t), attn_tensor_dtype(t), off);
      }
}

static void free_t(attn_tensor *t) {
  if (t == NULL) return;
  void *m = attn_tensor_data(t);
  attn_tensor_destroy(t);
  free(m);
}

/* y[r][n] = Σ_k x[r][k] W[n][k] + b[n] */
static void linear(const double *x, int64_t R, int64_t K, const double *W, int64_t N,
                   const double *b, double *y) {
  for (int64_t r = 0; r < R; r++)
    for (int64_t n = 0; n < N; n++) {
      double s = b ? b[n] : 0;
      for (int64_t k = 0; k < K; k++) s += x[r * K + k] * W[n * K + k];
      y[r * N + n] = s;
    }
}

typedef struct mdata {
  double *xq, *xk, *xv, *wq, *wk, *wv, *bin, *wo, *bo, *bk, *bv;
  uint8_t *kpm;    /* [B][Sk] 1 = attend */
  uint8_t *bmask;  /* [1][H][Sq][Sk] */
  double *amask;   /* [B][1][Sq][Sk] */
} mdata;

/* The layer by definition, in f64. out [B][Sq][E]; w [B][H][Sq][Skx]. */
static void reference_mha(const mcase *c, const mdata *d, double *out, double *w) {
  const int64_t E = c->E, H = c->H, D = E / H, Ekv = c->Hkv * D, B = c->B, Sq = c->Sq, Sk = c->Sk;
  const int64_t nx = c->bias_kv + c->zero_attn, Skx = Sk + nx;
  double *Q = malloc((size_t)(B * Sq * E) * 8), *K = calloc((size_t)(B * Skx * Ekv), 8);
  double *V = calloc((size_t)(B * Skx * Ekv), 8);
  double *Kp = malloc((size_t)(B * Sk * Ekv) * 8), *Vp = malloc((size_t)(B * Sk * Ekv) * 8);
  linear(d->xq, B * Sq, E, d->wq, E, d->bin, Q);
  linear(d->xk, B * Sk, c->kdim, d->wk, Ekv, d->bin ? d->bin + E : NULL, Kp);
  linear(d->xv, B * Sk, c->vdim, d->wv, Ekv, d->bin ? d->bin + E + Ekv : NULL, Vp);
  for (int64_t b = 0; b < B; b++) {
    memcpy(K + b * Skx * Ekv, Kp + b * Sk * Ekv, (size_t)(Sk * Ekv) * 8);
    memcpy(V + b * Skx * Ekv, Vp + b * Sk * Ekv, (size_t)(Sk * Ekv) * 8);
    if (c->bias_kv) {
      memcpy(K + (b * Skx + Sk) * Ekv, d->bk, (size_t)Ekv * 8);
      memcpy(V + (b * Skx + Sk) * Ekv, d->bv, (size_t)Ekv * 8);
    } /* zero_attn rows stay 0 */
  }
  /* Heads, with K/V heads repeated to H: g = h / (H / Hkv). */
  size_t nq = (size_t)(B * H * Sq * D), nk = (size_t)(B * H * Skx * D);
  double *q = malloc(nq * 8), *k = malloc(nk * 8), *v = malloc(nk * 8), *o = malloc(nq * 8);
  int64_t group = H / c->Hkv;
  for (int64_t b = 0; b < B; b++)
    for (int64_t h = 0; h < H; h++) {
      for (int64_t s = 0; s < Sq; s++)
        for (int64_t e = 0; e < D; e++) q[((b * H + h) * Sq + s) * D + e] = Q[(b * Sq + s) * E + h * D + e];
      for (int64_t s = 0; s < Skx; s++)
        for (int64_t e = 0; e < D; e++) {
          k[((b * H + h) * Skx + s) * D + e] = K[(b * Skx + s) * Ekv + (h / group) * D + e];
          v[((b * H + h) * Skx + s) * D + e] = V[(b * Skx + s) * Ekv + (h / group) * D + e];
        }
    }
  /* Masks on the real keys; appended keys always attended. */
  size_t nm = (size_t)(B * H * Sq * Skx);
  uint8_t *keep = malloc(nm);
  double *add = calloc(nm, 8);
  for (int64_t b = 0; b < B; b++)
    for (int64_t h = 0; h < H; h++)
      for (int64_t i = 0; i < Sq; i++)
        for (int64_t j = 0; j < Skx; j++) {
          size_t m = (size_t)(((b * H + h) * Sq + i) * Skx + j);
          keep[m] = 1;
          if (j >= Sk) continue;
          if (c->kpm && !d->kpm[b * Sk + j]) keep[m] = 0;
          if (c->causal && j > i) keep[m] = 0;
          if (c->bool_mask && !d->bmask[(h * Sq + i) * Sk + j]) keep[m] = 0;
          if (c->add_mask) add[m] = d->amask[(b * Sq + i) * Sk + j];
        }
  ref_problem p;
  ref_problem_init(&p, B, H, Sq, Skx, D);
  p.bool_mask = keep;
  p.add_mask = add;
  ref_attention(&p, q, k, v, o, w, NULL, NULL);
  double *M = malloc((size_t)(B * Sq * E) * 8);
  for (int64_t b = 0; b < B; b++)
    for (int64_t h = 0; h < H; h++)
      for (int64_t s = 0; s < Sq; s++)
        for (int64_t e = 0; e < D; e++) M[(b * Sq + s) * E + h * D + e] = o[((b * H + h) * Sq + s) * D + e];
  linear(M, B * Sq, E, d->wo, E, d->bo, out);
  free(Q); free(K); free(V); free(Kp); free(Vp); free(q); free(k); free(v); free(o);
  free(keep); free(add); free(M);
}

static attn_tensor *mat(attn_context *ctx, attn_dtype dt, const double *x, int32_t rank, int64_t a,
                        int64_t b, int64_t c) {
  int64_t s[3] = {a, b, c};
  return tu_tensor(ctx, dt, x, rank, rank == 1 ? s + 2 : rank == 2 ? s + 1 : s);
}

/* Runs a case on ctx and compares with the reference; returns max error. */
static double run(attn_context *ctx, const mcase *c, uint64_t seed, tu_counter *counter) {
  const attn_dtype dt = c->dt;
  /* 16-bit layers compute in f32: masks and weights outputs are f32. */
  const bool half = tu_is_16bit(dt);
  const attn_dtype ct = half ? ATTN_DTYPE_F32 : dt;
  const int64_t E = c->E, H = c->H, D = E / H, Ekv = c->Hkv * D, B = c->B, Sq = c->Sq;
  const int64_t Sk = c->self ? c->Sq : c->Sk;
  const int64_t kd = c->self || !c->kdim ? E : c->kdim, vd = c->self || !c->vdim ? E : c->vdim;
  mcase cc = *c;
  cc.Sk = Sk;
  cc.kdim = kd;
  cc.vdim = vd;
  const int64_t Skx = Sk + c->bias_kv + c->zero_attn;
  mdata d;
  memset(&d, 0, sizeof d);
  d.xq = tu_random((size_t)(B * Sq * E), &seed);
  d.xk = c->self ? d.xq : tu_random((size_t)(B * Sk * kd), &seed);
  d.xv = c->self ? d.xq : tu_random((size_t)(B * Sk * vd), &seed);
  d.wq = tu_random((size_t)(E * E), &seed);
  d.wk = tu_random((size_t)(Ekv * kd), &seed);
  d.wv = tu_random((size_t)(Ekv * vd), &seed);
  d.wo = tu_random((size_t)(E * E), &seed);
  for (int64_t i = 0; i < E * E; i++) { d.wq[i] *= 0.4; d.wo[i] *= 0.4; }
  if (c->bias) {
    d.bin = tu_random((size_t)(E + 2 * Ekv), &seed);
    d.bo = tu_random((size_t)E, &seed);
  }
  if (c->bias_kv) {
    d.bk = tu_random((size_t)Ekv, &seed);
    d.bv = tu_random((size_t)Ekv, &seed);
  }
  if (c->kpm) {
    d.kpm = malloc((size_t)(B * Sk));
    for (int64_t b = 0; b < B; b++)
      for (int64_t j = 0; j < Sk; j++) d.kpm[b * Sk + j] = j < Sk - (b % 3) || j == 0;
  }
  if (half) { /* the reference sees the values the layer stores */
    double *arrs[] = {d.xq, c->self ? NULL : d.xk, c->self ? NULL : d.xv, d.wq, d.wk, d.wv, d.wo,
                      d.bin, d.bo, d.bk, d.bv};
    const int64_t lens[] = {B * Sq * E, B * Sk * kd, B * Sk * vd, E * E, Ekv * kd, Ekv * vd, E * E,
                            E + 2 * Ekv, E, Ekv, Ekv};
    for (size_t a = 0; a < sizeof arrs / sizeof arrs[0]; a++)
      for (int64_t i = 0; arrs[a] && i < lens[a]; i++)
        arrs[a][i] = dt == ATTN_DTYPE_BF16 ? tu_round_bf16(arrs[a][i]) : tu_round_f16(arrs[a][i]);
  }
  if (c->bool_mask) {
    d.bmask = malloc((size_t)(H * Sq * Sk));
    for (int64_t i = 0; i < H * Sq * Sk; i++) d.bmask[i] = tu_uniform(&seed, 0, 1) < 0.7 || i % Sk == 0;
  }
  if (c->add_mask) {
    d.amask = tu_random((size_t)(B * Sq * Sk), &seed);
    for (int64_t i = 0; i < B * Sq * Sk; i++)
      if (i % Sk != 0 && tu_uniform(&seed, 0, 1) < 0.2) d.amask[i] = -INFINITY;
  }

  /* Tensors. */
  double *wpack = NULL;
  attn_mha_weights w;
  attn_mha_weights_init(&w);
  attn_tensor *tw[9] = {NULL};
  if (c->packed) {
    wpack = malloc((size_t)((E + 2 * Ekv) * E) * 8);
    memcpy(wpack, d.wq, (size_t)(E * E) * 8);
    memcpy(wpack + E * E, d.wk, (size_t)(Ekv * E) * 8);
    memcpy(wpack + E * E + Ekv * E, d.wv, (size_t)(Ekv * E) * 8);
    w.in_proj_weight = tw[0] = mat(ctx, dt, wpack, 2, 0, E + 2 * Ekv, E);
  } else {
    w.q_proj_weight = tw[1] = mat(ctx, dt, d.wq, 2, 0, E, E);
    w.k_proj_weight = tw[2] = mat(ctx, dt, d.wk, 2, 0, Ekv, kd);
    w.v_proj_weight = tw[3] = mat(ctx, dt, d.wv, 2, 0, Ekv, vd);
  }
  w.out_proj_weight = tw[4] = mat(ctx, dt, d.wo, 2, 0, E, E);
  if (c->bias) {
    w.in_proj_bias = tw[5] = mat(ctx, dt, d.bin, 1, 0, 0, E + 2 * Ekv);
    w.out_proj_bias = tw[6] = mat(ctx, dt, d.bo, 1, 0, 0, E);
  }
  if (c->bias_kv) {
    w.bias_k = tw[7] = mat(ctx, dt, d.bk, 3, 1, 1, Ekv);
    w.bias_v = tw[8] = mat(ctx, dt, d.bv, 3, 1, 1, Ekv);
  }
  attn_mha_config cfg;
  attn_mha_config_init(&cfg);
  cfg.embed_dim = E;
  cfg.num_heads = H;
  cfg.num_kv_heads = c->Hkv;
  cfg.kdim = kd;
  cfg.vdim = vd;
  cfg.bias = c->bias;
  cfg.add_bias_kv = c->bias_kv;
  cfg.add_zero_attn = c->zero_attn;
  cfg.batch_first = c->batch_first;
  cfg.dtype = dt;
  attn_mha *layer = NULL;
  attn_status st = attn_mha_create(ctx, &cfg, &w, &layer);
  if (st != ATTN_OK) fail_msg("create: %s", attn_context_last_error(ctx));

  int64_t pad = c->pad_rows ? 3 : 0;
  attn_tensor *tq = seq_tensor(ctx, dt, d.xq, B, Sq, E, c->batch_first, pad);
  attn_tensor *tk = c->self ? tq : seq_tensor(ctx, dt, d.xk, B, Sk, kd, c->batch_first, 0);
  attn_tensor *tv = c->self ? tq : seq_tensor(ctx, dt, d.xv, B, Sk, vd, c->batch_first, 0);
  attn_tensor *to = seq_tensor(ctx, dt, NULL, B, Sq, E, c->batch_first, pad);
  attn_tensor *tkpm = NULL, *tbm = NULL, *tam = NULL, *tww = NULL;
  if (c->kpm) {
    int64_t s[2] = {B, Sk};
    double *tmp = malloc((size_t)(B * Sk) * 8);
    for (int64_t i = 0; i < B * Sk; i++) tmp[i] = d.kpm[i];
    tkpm = tu_tensor(ctx, ATTN_DTYPE_U8, tmp, 2, s);
    free(tmp);
  }
  attn_desc *desc = NULL;
  assert_int_equal(attn_desc_create(ctx, &desc), ATTN_OK);
  if (c->causal) assert_int_equal(attn_desc_set_causal(desc, ATTN_CAUSAL_TOP_LEFT), ATTN_OK);
  if (c->bool_mask) {
    double *tmp = malloc((size_t)(H * Sq * Sk) * 8);
    for (int64_t i = 0; i < H * Sq * Sk; i++) tmp[i] = d.bmask[i];
    int64_t s[4] = {1, H, Sq, Sk};
    tbm = tu_tensor(ctx, ATTN_DTYPE_U8, tmp, 4, s);
    free(tmp);
    assert_int_equal(attn_desc_set_bool_mask(desc, tbm), ATTN_OK);
  }
  if (c->add_mask) {
    int64_t s[4] = {B, 1, Sq, Sk};
    tam = tu_tensor(ctx, ct, d.amask, 4, s);
    assert_int_equal(attn_desc_set_additive_mask(desc, tam), ATTN_OK);
  }
  if (c->weights == 3) {
    int64_t s[3] = {B, Sq, Skx};
    tww = tu_tensor(ctx, ct, NULL, 3, s);
  } else if (c->weights == 4) {
    int64_t s[4] = {B, H, Sq, Skx};
    tww = tu_tensor(ctx, ct, NULL, 4, s);
  }
  attn_mha_plan *plan = NULL;
  st = attn_mha_plan_create(layer, desc, tq, tk, tv, tkpm, to, tww, &plan);
  if (st != ATTN_OK) fail_msg("plan: %s", attn_context_last_error(ctx));
  assert_true(attn_mha_plan_workspace_size(plan) > 0);
  int64_t allocs_before = counter ? counter->allocs : 0;
  assert_int_equal(attn_mha_plan_execute(plan, tq, tk, tv, tkpm, to, tww), ATTN_OK);
  assert_int_equal(attn_mha_plan_execute(plan, tq, tk, tv, tkpm, to, tww), ATTN_OK);
  if (counter) assert_int_equal(counter->allocs, allocs_before); /* execute allocates nothing */

  size_t no = (size_t)(B * Sq * E), nw = (size_t)(B * H * Sq * Skx);
  double *ro = malloc(no * 8), *rw = malloc(nw * 8), *go = malloc(no * 8), *gw = malloc(nw * 8);
  reference_mha(&cc, &d, ro, rw);
  read_seq(to, c->batch_first, go);
  bool f64 = dt == ATTN_DTYPE_F64;
  double max_err, e;
  /* 16-bit: the f32 computation's error plus out's one rounding (unit
   * roundoff 2⁻⁸ bf16, 2⁻¹¹ f16) relative to |out|. */
  const double r16 = dt == ATTN_DTYPE_BF16 ? ldexp(1, -8) : dt == ATTN_DTYPE_F16 ? ldexp(1, -11) : 0;
  size_t bad = tu_violations(go, ro, NULL, no, f64 ? 1e-11 : 2e-5 + r16, f64 ? 1e-12 : 2e-5, &max_err);
  if (bad)
    fail_msg("out: %zu of %zu off (max %g): E%lld H%lld/%lld B%lld Sq%lld Sk%lld kd%lld vd%lld "
             "bias%d kv%d zero%d bf%d self%d packed%d kpm%d causal%d bm%d am%d w%d %s",
             bad, no, max_err, (long long)E, (long long)H, (long long)c->Hkv, (long long)B,
             (long long)Sq, (long long)Sk, (long long)kd, (long long)vd, c->bias, c->bias_kv,
             c->zero_attn, c->batch_first, c->self, c->packed, c->kpm, c->causal, c->bool_mask,
             c->add_mask, c->weights,
             f64 ? "f64" : dt == ATTN_DTYPE_BF16 ? "bf16" : dt == ATTN_DTYPE_F16 ? "f16" : "f32");
  if (c->weights) {
    tu_read(tww, gw);
    if (c->weights == 3) { /* average the reference over heads */
      for (int64_t b = 0; b < B; b++)
        for (int64_t i = 0; i < Sq * Skx; i++) {
          double s = 0;
          for (int64_t h = 0; h < H; h++) s += rw[(b * H + h) * Sq * Skx + i];
          rw[b * Sq * Skx + i] = s / (double)H;
        }
      nw = (size_t)(B * Sq * Skx);
    }
    assert_int_equal(tu_violations(gw, rw, NULL, nw, f64 ? 1e-11 : 1e-5, f64 ? 1e-13 : 1e-6, &e), 0);
  }
  attn_mha_plan_destroy(plan);
  attn_mha_destroy(layer);
  attn_desc_destroy(desc);
  if (!c->self) { free_t(tk); free_t(tv); }
  free_t(tq); free_t(to); free_t(tkpm); free_t(tbm); free_t(tam); free_t(tww);
  for (int i = 0; i < 9; i++) free_t(tw[i]);
  if (!c->self) { free(d.xk); free(d.xv); }
  free(d.xq); free(d.wq); free(d.wk); free(d.wv); free(d.wo); free(d.bin); free(d.bo);
  free(d.bk); free(d.bv); free(d.kpm); free(d.bmask); free(d.amask); free(wpack);
  free(ro); free(rw); free(go); free(gw);
  return max_err;
}

static mcase base(attn_dtype dt) {
  mcase c;
  memset(&c, 0, sizeof c);
  c.E = 32; c.H = 4; c.Hkv = 4; c.B = 2; c.Sq = 9; c.Sk = 13; /* kdim = vdim = 0: E */
  c.bias = true; c.packed = true; c.dt = dt;
  return c;
}

static void layer_matches_reference(void **state) {
  (void)state;
  attn_context *ctx = NULL;
  assert_int_equal(attn_context_create(NULL, &ctx), ATTN_OK);
  for (int f = 0; f < 2; f++) {
    attn_dtype dt = f ? ATTN_DTYPE_F32 : ATTN_DTYPE_F64;
    for (int bf = 0; bf < 2; bf++) {
      mcase c = base(dt);
      c.batch_first = bf;
      run(ctx, &c, 1, NULL);                       /* cross, packed */
      c.self = true; c.weights = 3; run(ctx, &c, 2, NULL);
      c = base(dt); c.batch_first = bf;
      c.packed = false; c.kdim = 20; c.vdim = 44; c.weights = 4; run(ctx, &c, 3, NULL);
      c.bias = false; c.kpm = true; run(ctx, &c, 4, NULL);
      c = base(dt); c.batch_first = bf; c.self = true; c.causal = true; c.kpm = true;
      c.weights = 4; run(ctx, &c, 5, NULL);
      c = base(dt); c.batch_first = bf; c.bias_kv = true; c.zero_attn = true; c.kpm = true;
      c.bool_mask = true; c.add_mask = true; c.weights = 3; run(ctx, &c, 6, NULL);
      c = base(dt); c.batch_first = bf; c.zero_attn = true; c.causal = true; c.self = true;
      run(ctx, &c, 7, NULL);
      c = base(dt); c.batch_first = bf; c.pad_rows = true; c.bias_kv = true; c.weights = 4;
      run(ctx, &c, 8, NULL); /* per-batch GEMM path */
      c = base(dt); c.batch_first = bf; c.kpm = true; c.bool_mask = true; run(ctx, &c, 9, NULL);
      c = base(dt); c.batch_first = bf; c.B = 1; c.Sq = 1; c.Sk = 1; c.weights = 3;
      run(ctx, &c, 10, NULL); /* single rows */
    }
  }
  /* several tiles */
  mcase c = base(ATTN_DTYPE_F32);
  c.E = 64; c.H = 4; c.Hkv = 4; c.Sq = 300; c.Sk = 700; c.B = 1; c.kpm = true; c.causal = false;
  run(ctx, &c, 11, NULL);
  attn_context_destroy(ctx);
}

/* bf16 and f16 layers (parameters, inputs and out in 16 bits, f32 inside)
 * against the f64 reference on the same rounded values: out within 2⁻⁸
 * (bf16) or 2⁻¹¹ (f16) of |out| plus the f32 error; weights outputs (f32)
 * within the f32 bounds. Packed and separate weights, bias_kv and
 * zero_attn rows, key padding and masks, GQA, both layouts. */
static void half_layers_match_reference(void **state) {
  (void)state;
  attn_context *ctx = NULL;
  assert_int_equal(attn_context_create(NULL, &ctx), ATTN_OK);
  const attn_dtype dts[2] = {ATTN_DTYPE_BF16, ATTN_DTYPE_F16};
  for (int f = 0; f < 2; f++)
    for (int bf = 0; bf < 2; bf++) {
      mcase c = base(dts[f]);
      c.batch_first = bf;
      run(ctx, &c, 21, NULL);
      c.self = true; c.weights = 3; c.causal = true; run(ctx, &c, 22, NULL);
      c = base(dts[f]); c.batch_first = bf;
      c.packed = false; c.kdim = 20; c.vdim = 44; c.weights = 4; c.kpm = true; run(ctx, &c, 23, NULL);
      c = base(dts[f]); c.batch_first = bf; c.bias_kv = true; c.zero_attn = true; c.kpm = true;
      c.bool_mask = true; c.add_mask = true; c.weights = 3; run(ctx, &c, 24, NULL);
      c = base(dts[f]); c.batch_first = bf; c.pad_rows = true; c.Hkv = 2; run(ctx, &c, 25, NULL);
    }
  mcase c = base(ATTN_DTYPE_BF16); /* several projection chunks and tiles */
  c.E = 64; c.Sq = 150; c.Sk = 300; c.B = 1; c.causal = true;
  run(ctx, &c, 26, NULL);
  attn_context_destroy(ctx);
}

static void gqa_and_mqa_match_repeated_heads(void **state) {
  (void)state;
  attn_context *ctx = NULL;
  assert_int_equal(attn_context_create(NULL, &ctx), ATTN_OK);
  static const int64_t hkv[] = {1, 2, 4};
  for (int f = 0; f < 2; f++)
    for (int i = 0; i < 3; i++) {
      mcase c = base(f ? ATTN_DTYPE_F32 : ATTN_DTYPE_F64);
      c.E = 64; c.H = 8; c.Hkv = hkv[i]; c.Sq = 33; c.Sk = 70;
      c.weights = 4; c.batch_first = i % 2;
      run(ctx, &c, 20 + (uint64_t)i, NULL);
      c.packed = false; c.kdim = 24; c.vdim = 16; c.bias_kv = true; c.zero_attn = true;
      c.kpm = true; c.causal = true; c.weights = 3;
      run(ctx, &c, 30 + (uint64_t)i, NULL);
    }
  attn_context_destroy(ctx);
}

static void execute_allocates_nothing_and_nothing_leaks(void **state) {
  (void)state;
  tu_counter cnt = {0, 0, 0, 0};
  attn_context *ctx = tu_counting_context(&cnt, 2);
  assert_non_null(ctx);
  mcase c = base(ATTN_DTYPE_F32);
  c.bias_kv = true; c.kpm = true; c.bool_mask = true; c.weights = 3; c.Hkv = 2;
  run(ctx, &c, 40, &cnt); /* asserts no allocation between plan and end of execute */
  c = base(ATTN_DTYPE_F64);
  c.kpm = true; c.weights = 4;
  run(ctx, &c, 41, &cnt);
  attn_context_destroy(ctx);
  assert_int_equal(cnt.outstanding_bytes, 0);
}

/* ---- bad input ----------------------------------------------------------- */

typedef struct fixture {
  attn_context *ctx;
  attn_tensor *w_in, *b_in, *wo, *bo, *q, *k, *out, *kpm, *wts;
  attn_mha_config cfg;
  attn_mha_weights w;
} fixture;

static void fixture_make(fixture *f, tu_counter *cnt) {
  memset(f, 0, sizeof *f);
  if (cnt) f->ctx = tu_counting_context(cnt, 1);
  else assert_int_equal(attn_context_create(NULL, &f->ctx), ATTN_OK);
  uint64_t seed = 99;
  double *r = tu_random(3 * 16 * 16, &seed);
  f->w_in = mat(f->ctx, ATTN_DTYPE_F32, r, 2, 0, 48, 16);
  f->b_in = mat(f->ctx, ATTN_DTYPE_F32, r, 1, 0, 0, 48);
  f->wo = mat(f->ctx, ATTN_DTYPE_F32, r, 2, 0, 16, 16);
  f->bo = mat(f->ctx, ATTN_DTYPE_F32, r, 1, 0, 0, 16);
  f->q = mat(f->ctx, ATTN_DTYPE_F32, r, 3, 5, 2, 16);   /* [S=5, B=2, E] */
  f->k = mat(f->ctx, ATTN_DTYPE_F32, r, 3, 7, 2, 16);
  f->out = mat(f->ctx, ATTN_DTYPE_F32, NULL, 3, 5, 2, 16);
  double ones[14] = {1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1};
  f->kpm = mat(f->ctx, ATTN_DTYPE_U8, ones, 2, 0, 2, 7);
  f->wts = mat(f->ctx, ATTN_DTYPE_F32, NULL, 3, 2, 5, 7);
  free(r);
  attn_mha_config_init(&f->cfg);
  f->cfg.embed_dim = 16;
  f->cfg.num_heads = 4;
  attn_mha_weights_init(&f->w);
  f->w.in_proj_weight = f->w_in;
  f->w.in_proj_bias = f->b_in;
  f->w.out_proj_weight = f->wo;
  f->w.out_proj_bias = f->bo;
}

static void fixture_free(fixture *f) {
  free_t(f->w_in); free_t(f->b_in); free_t(f->wo); free_t(f->bo); free_t(f->q); free_t(f->k);
  free_t(f->out); free_t(f->kpm); free_t(f->wts);
  attn_context_destroy(f->ctx);
}

#define EXPECT_CREATE(f, status, word)                                             \
  do {                                                                             \
    attn_mha *m_ = (attn_mha *)0x1;                                                \
    assert_int_equal(attn_mha_create((f)->ctx, &(f)->cfg, &(f)->w, &m_), status);  \
    assert_ptr_equal(m_, (attn_mha *)0x1);                                         \
    if (!strstr(attn_context_last_error((f)->ctx), word))                          \
      fail_msg("message '%s' does not name '%s'", attn_context_last_error((f)->ctx), word); \
  } while (0)

static void bad_config_and_weights_are_rejected(void **state) {
  (void)state;
  fixture f;
  fixture_make(&f, NULL);
  attn_mha *m = NULL;
  assert_int_equal(attn_mha_create(NULL, &f.cfg, &f.w, &m), ATTN_ERR_NULL_ARG);
  assert_int_equal(attn_mha_create(f.ctx, NULL, &f.w, &m), ATTN_ERR_NULL_ARG);
  assert_non_null(strstr(attn_context_last_error(f.ctx), "cfg"));
  assert_int_equal(attn_mha_create(f.ctx, &f.cfg, NULL, &m), ATTN_ERR_NULL_ARG);
  assert_non_null(strstr(attn_context_last_error(f.ctx), "weights"));
  assert_int_equal(attn_mha_create(f.ctx, &f.cfg, &f.w, NULL), ATTN_ERR_NULL_ARG);
  assert_non_null(strstr(attn_context_last_error(f.ctx), "out"));

  f.cfg.num_heads = 3; /* 16 % 3 */
  EXPECT_CREATE(&f, ATTN_ERR_INVALID_ARG, "embed_dim");
  f.cfg.num_heads = 0;
  EXPECT_CREATE(&f, ATTN_ERR_INVALID_ARG, "num_heads");
  f.cfg.num_heads = 4;
  f.cfg.num_kv_heads = 3; /* 4 % 3 */
  EXPECT_CREATE(&f, ATTN_ERR_INVALID_ARG, "num_kv_heads");
  f.cfg.num_kv_heads = 2; /* GQA: in_proj_weight must be [16 + 2·8, 16] */
  EXPECT_CREATE(&f, ATTN_ERR_SHAPE, "in_proj_weight");
  f.cfg.num_kv_heads = 0;
  f.cfg.embed_dim = 0;
  EXPECT_CREATE(&f, ATTN_ERR_INVALID_ARG, "embed_dim");
  f.cfg.embed_dim = 16;
  f.cfg.dtype = ATTN_DTYPE_U8;
  EXPECT_CREATE(&f, ATTN_ERR_DTYPE, "dtype");
  f.cfg.dtype = ATTN_DTYPE_F64; /* weights are f32 */
  EXPECT_CREATE(&f, ATTN_ERR_DTYPE, "in_proj_weight");
  f.cfg.dtype = ATTN_DTYPE_F32;
  f.cfg.struct_size = 8;
  EXPECT_CREATE(&f, ATTN_ERR_INVALID_ARG, "struct_size");
  f.cfg.struct_size = sizeof f.cfg;
  f.cfg.kdim = 8; /* packed weights need kdim = E */
  EXPECT_CREATE(&f, ATTN_ERR_INVALID_ARG, "in_proj_weight");
  f.cfg.kdim = 0;
  f.w.out_proj_weight = NULL;
  EXPECT_CREATE(&f, ATTN_ERR_NULL_ARG, "out_proj_weight");
  f.w.out_proj_weight = f.w_in; /* [48, 16] instead of [16, 16] */
  EXPECT_CREATE(&f, ATTN_ERR_SHAPE, "out_proj_weight");
  f.w.out_proj_weight = f.wo;
  f.w.in_proj_bias = f.bo; /* [16] instead of [48] */
  EXPECT_CREATE(&f, ATTN_ERR_SHAPE, "in_proj_bias");
  f.w.in_proj_bias = NULL;
  EXPECT_CREATE(&f, ATTN_ERR_NULL_ARG, "in_proj_bias");
  f.cfg.bias = 0; /* then biases must not be given */
  f.w.in_proj_bias = NULL;
  EXPECT_CREATE(&f, ATTN_ERR_INVALID_ARG, "out_proj_bias");
  f.cfg.bias = 1;
  f.w.in_proj_bias = f.b_in;
  f.cfg.add_bias_kv = 1;
  EXPECT_CREATE(&f, ATTN_ERR_NULL_ARG, "bias_k");
  f.cfg.add_bias_kv = 0;
  f.w.q_proj_weight = f.wo; /* packed and separate together */
  EXPECT_CREATE(&f, ATTN_ERR_INVALID_ARG, "in_proj_weight");
  f.w.in_proj_weight = NULL; /* separate, but k/v missing */
  EXPECT_CREATE(&f, ATTN_ERR_NULL_ARG, "k_proj_weight");
  f.w.in_proj_weight = f.w_in;
  f.w.q_proj_weight = NULL;
  /* a good layer at last */
  assert_int_equal(attn_mha_create(f.ctx, &f.cfg, &f.w, &m), ATTN_OK);
  attn_mha_destroy(m);
  attn_mha_destroy(NULL);
  fixture_free(&f);
}

static void bad_plan_and_execute_input_is_rejected(void **state) {
  (void)state;
  fixture f;
  fixture_make(&f, NULL);
  attn_mha *m = NULL;
  assert_int_equal(attn_mha_create(f.ctx, &f.cfg, &f.w, &m), ATTN_OK);
  attn_mha_plan *p = (attn_mha_plan *)0x1;
#define EXPECT_PLAN(status, word, ...)                                                      \
  do {                                                                                      \
    assert_int_equal(attn_mha_plan_create(m, __VA_ARGS__, &p), status);                     \
    assert_ptr_equal(p, (attn_mha_plan *)0x1);                                              \
    if (!strstr(attn_context_last_error(f.ctx), word))                                      \
      fail_msg("message '%s' does not name '%s'", attn_context_last_error(f.ctx), word);    \
  } while (0)
  EXPECT_PLAN(ATTN_ERR_NULL_ARG, "query", NULL, NULL, f.k, f.k, NULL, f.out, NULL);
  EXPECT_PLAN(ATTN_ERR_NULL_ARG, "value", NULL, f.q, f.k, NULL, NULL, f.out, NULL);
  EXPECT_PLAN(ATTN_ERR_NULL_ARG, "out", NULL, f.q, f.k, f.k, NULL, NULL, NULL);
  EXPECT_PLAN(ATTN_ERR_SHAPE, "out", NULL, f.q, f.k, f.k, NULL, f.k, NULL); /* S_q 7 ≠ 5 */
  EXPECT_PLAN(ATTN_ERR_SHAPE, "query", NULL, f.wo, f.k, f.k, NULL, f.out, NULL); /* rank 2 */
  EXPECT_PLAN(ATTN_ERR_SHAPE, "key_padding_mask", NULL, f.q, f.q, f.q, f.kpm, f.out, NULL); /* S_k 5 */
  attn_tensor *kpm_f32 = mat(f.ctx, ATTN_DTYPE_F32, NULL, 2, 0, 2, 7);
  EXPECT_PLAN(ATTN_ERR_DTYPE, "key_padding_mask", NULL, f.q, f.k, f.k, kpm_f32, f.out, NULL);
  free_t(kpm_f32);
  EXPECT_PLAN(ATTN_ERR_SHAPE, "weights", NULL, f.q, f.k, f.k, NULL, f.out, f.out);
  attn_tensor *k_b3 = mat(f.ctx, ATTN_DTYPE_F32, NULL, 3, 7, 3, 16); /* batch 3 ≠ 2 */
  EXPECT_PLAN(ATTN_ERR_SHAPE, "key", NULL, f.q, k_b3, k_b3, NULL, f.out, NULL);
  assert_int_equal(attn_mha_plan_create(NULL, NULL, f.q, f.k, f.k, NULL, f.out, NULL, &p), ATTN_ERR_NULL_ARG);

  /* a good plan, then execute with wrong tensors: outputs untouched */
  assert_int_equal(attn_mha_plan_create(m, NULL, f.q, f.k, f.k, f.kpm, f.out, f.wts, &p), ATTN_OK);
  float *o = attn_tensor_data(f.out), *wt = attn_tensor_data(f.wts);
  for (int i = 0; i < 160; i++) o[i] = 42.0f;
  for (int i = 0; i < 70; i++) wt[i] = 42.0f;
  assert_int_equal(attn_mha_plan_execute(p, f.q, k_b3, f.k, f.kpm, f.out, f.wts), ATTN_ERR_MISMATCH);
  assert_non_null(strstr(attn_context_last_error(f.ctx), "key"));
  assert_int_equal(attn_mha_plan_execute(p, f.q, f.k, f.k, NULL, f.out, f.wts), ATTN_ERR_MISMATCH);
  assert_non_null(strstr(attn_context_last_error(f.ctx), "key_padding_mask"));
  assert_int_equal(attn_mha_plan_execute(p, f.q, f.k, f.k, f.kpm, NULL, f.wts), ATTN_ERR_NULL_ARG);
  assert_non_null(strstr(attn_context_last_error(f.ctx), "out"));
  assert_int_equal(attn_mha_plan_execute(p, f.q, f.k, f.k, f.kpm, f.out, NULL), ATTN_ERR_MISMATCH);
  assert_non_null(strstr(attn_context_last_error(f.ctx), "weights"));
  assert_int_equal(attn_mha_plan_execute(NULL, f.q, f.k, f.k, f.kpm, f.out, f.wts), ATTN_ERR_NULL_ARG);
  for (int i = 0; i < 160; i++) assert_true(o[i] == 42.0f);
  for (int i = 0; i < 70; i++) assert_true(wt[i] == 42.0f);
  assert_int_equal(attn_mha_plan_execute(p, f.q, f.k, f.k, f.kpm, f.out, f.wts), ATTN_OK);
  attn_mha_plan_destroy(p);
  attn_mha_plan_destroy(NULL);
  assert_int_equal(attn_mha_plan_workspace_size(NULL), 0);
  free_t(k_b3);
  attn_mha_destroy(m);
  fixture_free(&f);
}

static void allocation_failure_is_clean(void **state) {
  (void)state;
  for (int64_t fail = 1; fail < 40; fail++) {
    tu_counter cnt = {0, 0, 0, 0};
    fixture f;
    fixture_make(&f, &cnt);
    f.cfg.add_bias_kv = 0;
    attn_mha *m = NULL;
    assert_int_equal(attn_mha_create(f.ctx, &f.cfg, &f.w, &m), ATTN_OK);
    cnt.fail_at = cnt.allocs + fail;
    attn_mha_plan *p = (attn_mha_plan *)0x1;
    attn_status st = attn_mha_plan_create(m, NULL, f.q, f.k, f.k, f.kpm, f.out, f.wts, &p);
    if (st == ATTN_OK) {
      attn_mha_plan_destroy(p);
    } else {
      assert_int_equal(st, ATTN_ERR_NO_MEMORY);
      assert_ptr_equal(p, (attn_mha_plan *)0x1);
    }
    attn_mha_destroy(m);
    free_t(f.w_in); free_t(f.b_in); free_t(f.wo); free_t(f.bo); free_t(f.q); free_t(f.k);
    free_t(f.out); free_t(f.kpm); free_t(f.wts);
    attn_context_destroy(f.ctx);
    assert_int_equal(cnt.outstanding_bytes, 0);
    if (st == ATTN_OK) break;
  }
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(layer_matches_reference),
      cmocka_unit_test(half_layers_match_reference),
      cmocka_unit_test(gqa_and_mqa_match_repeated_heads),
      cmocka_unit_test(execute_allocates_nothing_and_nothing_leaks),
      cmocka_unit_test(bad_config_and_weights_are_rejected),
      cmocka_unit_test(bad_plan_and_execute_input_is_rejected),
      cmocka_unit_test(allocation_failure_is_clean),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}

/* Sparse variants (Longformer, BigBird, block-sparse) against the naive f64
 * reference with the equivalent dense keep predicate written here; BigBird's
 * layout against an independent implementation of the documented PRNG; the
 * kernel's visited keys against the kept structure; bad input. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/exact.h"
#include "testutil.h"

typedef struct run_opts {
  attn_dtype dt;
  bool bshd, want_w, want_lse;
  attn_plan **keep_plan; /* non-NULL: hand the plan back instead of destroying it */
} run_opts;

/* Execute desc on random data shaped like p and compare with ref_attention(p). */
static void run_check(attn_context *ctx, const attn_desc *d, const ref_problem *p,
                      const run_opts *o, uint64_t seed, const char *what) {
  size_t nq = (size_t)(p->B * p->H * p->Sq * p->Dk), nk = (size_t)(p->B * p->Hkv * p->Sk * p->Dk);
  size_t nv = (size_t)(p->B * p->Hkv * p->Sk * p->Dv), no = (size_t)(p->B * p->H * p->Sq * p->Dv);
  size_t nw = (size_t)(p->B * p->H * p->Sq * p->Sk), nl = (size_t)(p->B * p->H * p->Sq);
  double *q = tu_random(nq, &seed), *k = tu_random(nk, &seed), *v = tu_random(nv, &seed);
  for (size_t i = 0; i < nq; i++) q[i] *= 3.0; /* peaky softmax */
  double *ro = malloc(no * 8), *rw = malloc(nw * 8), *rl = malloc(nl * 8), *rb = malloc(no * 8);
  double *go = malloc(no * 8), *gw = malloc(nw * 8), *gl = malloc(nl * 8);
  ref_attention(p, q, k, v, ro, rw, rl, rb);
  attn_tensor *tq = tu_tensor4(ctx, o->dt, q, p->B, p->H, p->Sq, p->Dk, o->bshd);
  attn_tensor *tk = tu_tensor4(ctx, o->dt, k, p->B, p->Hkv, p->Sk, p->Dk, o->bshd);
  attn_tensor *tv = tu_tensor4(ctx, o->dt, v, p->B, p->Hkv, p->Sk, p->Dv, o->bshd);
  attn_tensor *to = tu_tensor4(ctx, o->dt, NULL, p->B, p->H, p->Sq, p->Dv, o->bshd);
  attn_tensor *tw = o->want_w ? tu_tensor4(ctx, o->dt, NULL, p->B, p->H, p->Sq, p->Sk, false) : NULL;
  int64_t ls[3] = {p->B, p->H, p->Sq};
  attn_tensor *tl = o->want_lse ? tu_tensor(ctx, o->dt, NULL, 3, ls) : NULL;
  attn_plan *plan = NULL;
  if (attn_plan_create(ctx, d, tq, tk, tv, to, tw, tl, &plan) != ATTN_OK)
    fail_msg("%s: plan: %s", what, attn_context_last_error(ctx));
  assert_int_equal(attn_plan_execute(plan, tq, tk, tv, to, tw, tl), ATTN_OK);
  assert_int_equal(attn_plan_execute(plan, tq, tk, tv, to, tw, tl), ATTN_OK);
  bool f64 = o->dt == ATTN_DTYPE_F64;
  double rtol = f64 ? 1e-12 : 1e-5, atol = f64 ? 1e-13 : 1e-6, err;
  tu_read(to, go);
  size_t bad = tu_violations(go, ro, rb, no, rtol, atol, &err);
  if (bad) fail_msg("%s: out: %zu of %zu off (max err %g)", what, bad, no, err);
  if (tw) {
    tu_read(tw, gw);
    bad = tu_violations(gw, rw, NULL, nw, f64 ? 1e-11 : 1e-4, f64 ? 1e-13 : 1e-6, &err);
    if (bad) fail_msg("%s: weights: %zu of %zu off (max err %g)", what, bad, nw, err);
  }
  if (tl) {
    tu_read(tl, gl);
    for (size_t r = 0; r < nl; r++) {
      if (isinf(rl[r])) {
        assert_true(isinf(gl[r]) && gl[r] < 0);
      } else if (!(fabs(gl[r] - rl[r]) <= (f64 ? 1e-12 : 1e-5) * (1 + fabs(rl[r])))) {
        fail_msg("%s: lse[%zu] %g, want %g", what, r, gl[r], rl[r]);
      }
    }
  }
  if (o->keep_plan)
    *o->keep_plan = plan;
  else
    attn_plan_destroy(plan);
  tu_tensor_free(tq); tu_tensor_free(tk); tu_tensor_free(tv); tu_tensor_free(to);
  tu_tensor_free(tw); tu_tensor_free(tl);
  free(q); free(k); free(v); free(ro); free(rw); free(rl); free(rb); free(go); free(gw); free(gl);
}

/* ---- Longformer ------------------------------------------------------------ */

typedef struct lf_keep {
  const uint8_t *global; /* [S] */
  int64_t left, right;   /* −1 = unbounded */
  const int64_t *klen, *qlen;
  int64_t S;
  bool bottom_right;
} lf_keep;

/* Local band around the aligned row, or a global row, or a global key. Causal
 * and lengths are the reference's own (ref_problem.causal, key_len). */
static bool lf_pred(void *user, int64_t b, int64_t h, int64_t i, int64_t j) {
  (void)h;
  const lf_keep *u = user;
  int64_t ia = i;
  if (u->bottom_right) ia += (u->klen ? u->klen[b] : u->S) - (u->qlen ? u->qlen[b] : u->S);
  bool local = (u->left < 0 || j >= ia - u->left) && (u->right < 0 || j <= ia + u->right);
  return local || u->global[i] || u->global[j];
}

static void longformer_case(attn_context *ctx, int64_t B, int64_t H, int64_t Hkv, int64_t S,
                            int64_t D, int64_t left, int64_t right, const int64_t *gidx,
                            int64_t ng, int causal, const int64_t *klen, const run_opts *o,
                            uint64_t seed) {
  uint8_t *g = calloc((size_t)S, 1);
  for (int64_t x = 0; x < ng; x++) g[gidx[x]] = 1;
  lf_keep u = {g, left, right, klen, NULL, S, causal == ATTN_CAUSAL_BOTTOM_RIGHT};
  ref_problem p;
  ref_problem_init(&p, B, H, S, S, D);
  p.Hkv = Hkv;
  p.causal = causal;
  p.key_len = klen;
  p.keep = lf_pred;
  p.keep_user = &u;
  attn_desc *d;
  assert_int_equal(attn_desc_create(ctx, &d), ATTN_OK);
  assert_int_equal(attn_desc_set_variant(d, ATTN_VARIANT_LONGFORMER), ATTN_OK);
  assert_int_equal(attn_desc_set_causal(d, (attn_causal)causal), ATTN_OK);
  assert_int_equal(attn_desc_set_window(d, left < 0 ? ATTN_WINDOW_UNBOUNDED : left,
                                        right < 0 ? ATTN_WINDOW_UNBOUNDED : right), ATTN_OK);
  assert_int_equal(attn_desc_set_global_tokens(d, gidx, ng), ATTN_OK);
  if (klen) assert_int_equal(attn_desc_set_key_lengths(d, klen, B), ATTN_OK);
  char what[160];
  snprintf(what, sizeof what, "longformer S%lld w(%lld,%lld) ng%lld causal%d klen%d %s",
           (long long)S, (long long)left, (long long)right, (long long)ng, causal, klen != NULL,
           o->dt == ATTN_DTYPE_F64 ? "f64" : "f32");
  run_check(ctx, d, &p, o, seed, what);
  attn_desc_destroy(d);
  free(g);
}

static void longformer_matches_dense_mask(void **state) {
  (void)state;
  attn_context *ctx = tu_context(2);
  const int64_t g1[] = {0, 77, 78, 140, 301};   /* adjacent, scattered, last */
  const int64_t g2[] = {250, 3, 131};           /* unsorted */
  const int64_t klen[] = {302, 190};
  for (int causal = 0; causal < 3; causal++)
    for (int dt = 1; dt <= 2; dt++) {
      run_opts o = {(attn_dtype)dt, causal == 1, causal != 1, true, NULL};
      longformer_case(ctx, 1, 2, 2, 302, 16, 20, 20, g1, 5, causal, NULL, &o, 10 + (uint64_t)causal);
      longformer_case(ctx, 2, 4, 2, 302, 24, 33, 5, g2, 3, causal, NULL, &o, 20 + (uint64_t)causal);
      longformer_case(ctx, 2, 2, 1, 302, 8, 7, 40, g1, 5, causal, klen, &o, 30 + (uint64_t)causal);
      longformer_case(ctx, 1, 1, 1, 700, 16, 64, 64, g2, 3, causal, NULL, &o, 40 + (uint64_t)causal);
      /* No globals: a plain sliding window; one-sided windows. */
      longformer_case(ctx, 1, 2, 2, 333, 16, 50, 0, NULL, 0, causal, NULL, &o, 50);
      longformer_case(ctx, 1, 1, 1, 333, 16, -1, 9, g2, 3, causal, NULL, &o, 60);
    }
  attn_context_destroy(ctx);
}

/* ---- block-sparse ---------------------------------------------------------- */

typedef struct lay_keep {
  const uint8_t *lay; /* [Hl][nqb][nkb] */
  int64_t Hl, nqb, nkb, block;
} lay_keep;

static bool lay_pred(void *user, int64_t b, int64_t h, int64_t i, int64_t j) {
  (void)b;
  const lay_keep *u = user;
  int64_t hh = u->Hl == 1 ? 0 : h;
  return u->lay[(hh * u->nqb + i / u->block) * u->nkb + j / u->block] != 0;
}

static void blocksparse_case(attn_context *ctx, int64_t B, int64_t H, int64_t Sq, int64_t Sk,
                             int64_t D, int64_t block, bool shared, double density, int causal,
                             const run_opts *o, uint64_t seed) {
  int64_t nqb = (Sq + block - 1) / block, nkb = (Sk + block - 1) / block, Hl = shared ? 1 : H;
  size_t n = (size_t)(Hl * nqb * nkb);
  uint8_t *lay = malloc(n);
  double *ld = malloc(n * 8);
  for (size_t x = 0; x < n; x++) {
    lay[x] = tu_uniform(&seed, 0, 1) < density ? (uint8_t)(1 + x % 7) : 0; /* any non-zero keeps */
    ld[x] = lay[x];
  }
  int64_t lshape[3] = {Hl, nqb, nkb};
  attn_tensor *tl = NULL;
  assert_int_equal(attn_tensor_wrap(ctx, ATTN_DTYPE_U8, 3, lshape, NULL, lay, &tl), ATTN_OK);
  lay_keep u = {lay, Hl, nqb, nkb, block};
  ref_problem p;
  ref_problem_init(&p, B, H, Sq, Sk, D);
  p.causal = causal;
  p.keep = lay_pred;
  p.keep_user = &u;
  attn_desc *d;
  assert_int_equal(attn_desc_create(ctx, &d), ATTN_OK);
  assert_int_equal(attn_desc_set_variant(d, ATTN_VARIANT_BLOCK_SPARSE), ATTN_OK);
  assert_int_equal(attn_desc_set_causal(d, (attn_causal)causal), ATTN_OK);
  assert_int_equal(attn_desc_set_block_size(d, block), ATTN_OK);
  assert_int_equal(attn_desc_set_block_layout(d, tl), ATTN_OK);
  char what[160];
  snprintf(what, sizeof what, "blocksparse Sq%lld Sk%lld b%lld shared%d density%.2f causal%d",
           (long long)Sq, (long long)Sk, (long long)block, shared, density, causal);
  attn_plan *plan = NULL;
  run_opts o2 = *o;
  o2.keep_plan = &plan;
  run_check(ctx, d, &p, &o2, seed, what);
  /* The layout read back equals the user's, expanded to [H, nqb, nkb], 0/1. */
  size_t sz = 0;
  assert_int_equal(attn_plan_block_layout(plan, NULL, &sz), ATTN_OK);
  assert_int_equal(sz, (size_t)(H * nqb * nkb));
  uint8_t *back = malloc(sz);
  assert_int_equal(attn_plan_block_layout(plan, back, &sz), ATTN_OK);
  for (int64_t h = 0; h < H; h++)
    for (int64_t x = 0; x < nqb * nkb; x++)
      assert_int_equal(back[h * nqb * nkb + x], lay[(shared ? 0 : h) * nqb * nkb + x] != 0);
  /* The kernel visits only kept blocks: the key ranges of each query tile
   * cover exactly the blocks its rows keep (tiles are one block row here). */
  const attn_exact *ex = (const attn_exact *)((const struct attn_plan *)plan)->impl;
  int64_t *ranges = malloc((size_t)ex->mask.max_ranges * 2 * sizeof *ranges);
  for (int64_t h = 0; h < H; h++)
    for (int64_t i0 = 0; i0 < Sq; i0 += ex->bq) {
      int64_t nr = attn_mask_key_ranges(&ex->mask, 0, h, i0, attn_min64(i0 + ex->bq, Sq), ranges);
      assert_true(nr <= ex->mask.max_ranges);
      int64_t visited = 0, kept = 0;
      for (int64_t r = 0; r < nr; r++) visited += ranges[2 * r + 1] - ranges[2 * r];
      for (int64_t j = 0; j < Sk; j++) {
        bool any = false;
        for (int64_t i = i0; i < attn_min64(i0 + ex->bq, Sq); i++)
          any = any || (lay_pred(&u, 0, h, i, j) && (causal == 0 || j <= i + (causal == 2 ? Sk - Sq : 0)));
        kept += any;
      }
      if (causal == 0) assert_int_equal(visited, kept);
      assert_true(visited >= kept);
      assert_true(visited <= kept + ex->bq); /* causal: rows of one tile end at different keys */
    }
  free(ranges);
  /* Borrowed layout: new contents apply at the next execute. */
  memset(lay, 1, n);
  for (size_t x = 0; x < n; x += 3) lay[x] = 0;
  run_opts o3 = *o;
  o3.keep_plan = NULL;
  run_check(ctx, d, &p, &o3, seed + 1, what); /* fresh plan on new contents */
  free(back);
  attn_plan_destroy(plan);
  attn_tensor_destroy(tl);
  attn_desc_destroy(d);
  free(lay);
  free(ld);
}

static void blocksparse_matches_dense_mask(void **state) {
  (void)state;
  attn_context *ctx = tu_context(2);
  for (int causal = 0; causal < 3; causal++)
    for (int dt = 1; dt <= 2; dt++) {
      run_opts o = {(attn_dtype)dt, dt == 2, causal == 0, true, NULL};
      blocksparse_case(ctx, 1, 2, 200, 200, 16, 32, false, 0.3, causal, &o, 1);
      blocksparse_case(ctx, 2, 3, 150, 230, 12, 16, true, 0.5, causal, &o, 2);
      blocksparse_case(ctx, 1, 2, 333, 333, 16, 64, false, 0.2, causal, &o, 3);
      blocksparse_case(ctx, 1, 1, 77, 91, 8, 5, false, 0.4, causal, &o, 4);    /* tiny blocks */
      blocksparse_case(ctx, 1, 1, 700, 700, 8, 300, false, 0.6, causal, &o, 5); /* huge blocks */
      blocksparse_case(ctx, 1, 2, 100, 100, 8, 16, false, 0.0, causal, &o, 6);  /* all dropped */
      blocksparse_case(ctx, 1, 2, 100, 100, 8, 16, true, 1.0, causal, &o, 7);   /* all kept */
    }
  attn_context_destroy(ctx);
}

/* The same contents read at execute: change the layout between executes of one plan. */
static void blocksparse_layout_contents_read_at_execute(void **state) {
  (void)state;
  attn_context *ctx = tu_context(2);
  int64_t S = 96, D = 8, b = 32, n = 3;
  uint64_t seed = 3;
  double *x = tu_random((size_t)(S * D), &seed);
  attn_tensor *t = tu_tensor4(ctx, ATTN_DTYPE_F64, x, 1, 1, S, D, false);
  attn_tensor *o = tu_tensor4(ctx, ATTN_DTYPE_F64, NULL, 1, 1, S, D, false);
  uint8_t lay[9];
  memset(lay, 1, sizeof lay);
  int64_t ls[3] = {1, n, n};
  attn_tensor *tl;
  assert_int_equal(attn_tensor_wrap(ctx, ATTN_DTYPE_U8, 3, ls, NULL, lay, &tl), ATTN_OK);
  attn_desc *d;
  assert_int_equal(attn_desc_create(ctx, &d), ATTN_OK);
  assert_int_equal(attn_desc_set_variant(d, ATTN_VARIANT_BLOCK_SPARSE), ATTN_OK);
  assert_int_equal(attn_desc_set_block_size(d, b), ATTN_OK);
  assert_int_equal(attn_desc_set_block_layout(d, tl), ATTN_OK);
  attn_plan *plan;
  assert_int_equal(attn_plan_create(ctx, d, t, t, t, o, NULL, NULL, &plan), ATTN_OK);
  memset(lay, 0, sizeof lay);
  for (int r = 0; r < 3; r++) lay[r * 3 + r] = 1; /* block diagonal */
  assert_int_equal(attn_plan_execute(plan, t, t, t, o, NULL, NULL), ATTN_OK);
  double *got = malloc((size_t)(S * D) * 8), *ref = malloc((size_t)(S * D) * 8);
  tu_read(o, got);
  lay_keep u = {lay, 1, n, n, b};
  ref_problem p;
  ref_problem_init(&p, 1, 1, S, S, D);
  p.keep = lay_pred;
  p.keep_user = &u;
  ref_attention(&p, x, x, x, ref, NULL, NULL, NULL);
  double err;
  assert_int_equal(tu_violations(got, ref, NULL, (size_t)(S * D), 1e-12, 1e-13, &err), 0);
  attn_plan_destroy(plan);
  attn_desc_destroy(d);
  attn_tensor_destroy(tl);
  tu_tensor_free(t); tu_tensor_free(o);
  free(x); free(got); free(ref);
  attn_context_destroy(ctx);
}

/* ---- BigBird --------------------------------------------------------------- */

/* The PRNG and draw exactly as documented at attn_desc_set_bigbird(). */
static uint64_t t_mix(uint64_t z) {
  z ^= z >> 30;
  z *= 0xBF58476D1CE4E5B9ULL;
  z ^= z >> 27;
  z *= 0x94D049BB133111EBULL;
  z ^= z >> 31;
  return z;
}

static uint8_t *t_bigbird(int64_t H, int64_t nqb, int64_t nkb, int64_t w, int64_t g, int64_t r,
                          uint64_t seed) {
  uint8_t *L = calloc((size_t)(H * nqb * nkb), 1);
  for (int64_t h = 0; h < H; h++)
    for (int64_t q = 0; q < nqb; q++) {
      uint8_t *row = L + (h * nqb + q) * nkb;
      for (int64_t c = 0; c < nkb; c++)
        row[c] = q < g || c < g || (c >= q - w && c <= q + w);
      if (q < g) continue;
      uint64_t s = t_mix(seed ^ t_mix((uint64_t)(h * nqb + q) + 1));
      for (int64_t t = 0; t < r; t++) {
        uint64_t nfree = 0;
        for (int64_t c = 0; c < nkb; c++) nfree += row[c] == 0;
        if (nfree == 0) break;
        uint64_t u;
        do {
          s += 0x9E3779B97F4A7C15ULL;
          u = t_mix(s);
        } while (u < (UINT64_MAX - nfree + 1) % nfree);
        uint64_t kth = u % nfree;
        for (int64_t c = 0; c < nkb; c++)
          if (row[c] == 0 && kth-- == 0) {
            row[c] = 1;
            break;
          }
      }
    }
  return L;
}

static uint8_t *bigbird_readback(attn_context *ctx, int64_t H, int64_t S, int64_t block,
                                 int64_t w, int64_t g, int64_t r, uint64_t seed, size_t *sz) {
  attn_tensor *t = tu_tensor4(ctx, ATTN_DTYPE_F32, NULL, 1, H, S, 4, false);
  attn_desc *d;
  assert_int_equal(attn_desc_create(ctx, &d), ATTN_OK);
  assert_int_equal(attn_desc_set_variant(d, ATTN_VARIANT_BIGBIRD), ATTN_OK);
  assert_int_equal(attn_desc_set_block_size(d, block), ATTN_OK);
  assert_int_equal(attn_desc_set_bigbird(d, w, g, r, seed), ATTN_OK);
  attn_plan *plan;
  assert_int_equal(attn_plan_create(ctx, d, t, t, t, t, NULL, NULL, &plan), ATTN_OK);
  *sz = 0;
  assert_int_equal(attn_plan_block_layout(plan, NULL, sz), ATTN_OK);
  uint8_t *buf = malloc(*sz);
  assert_int_equal(attn_plan_block_layout(plan, buf, sz), ATTN_OK);
  attn_plan_destroy(plan);
  attn_desc_destroy(d);
  tu_tensor_free(t);
  return buf;
}

static void bigbird_layout_follows_documented_prng(void **state) {
  (void)state;
  attn_context *ctx = tu_context(2);
  const struct { int64_t H, S, b, w, g, r; uint64_t seed; } cs[] = {
      {2, 1000, 64, 1, 1, 3, 42}, {3, 333, 16, 2, 2, 5, 7}, {1, 100, 10, 0, 0, 4, 1},
      {2, 130, 64, 0, 1, 9, 99} /* more randoms than free blocks */};
  for (size_t c = 0; c < sizeof cs / sizeof cs[0]; c++) {
    size_t sz;
    uint8_t *got = bigbird_readback(ctx, cs[c].H, cs[c].S, cs[c].b, cs[c].w, cs[c].g, cs[c].r,
                                    cs[c].seed, &sz);
    int64_t nb = (cs[c].S + cs[c].b - 1) / cs[c].b;
    assert_int_equal(sz, (size_t)(cs[c].H * nb * nb));
    uint8_t *want = t_bigbird(cs[c].H, nb, nb, cs[c].w, cs[c].g, cs[c].r, cs[c].seed);
    assert_memory_equal(got, want, sz);
    /* Structure: every non-global row has window ∪ global plus exactly
     * min(r, free) random blocks. */
    for (int64_t h = 0; h < cs[c].H; h++)
      for (int64_t q = cs[c].g; q < nb; q++) {
        int64_t base = 0, kept = 0;
        for (int64_t k = 0; k < nb; k++) {
          bool structural = k < cs[c].g || (k >= q - cs[c].w && k <= q + cs[c].w);
          base += structural;
          kept += got[(h * nb + q) * nb + k];
          if (structural) assert_int_equal(got[(h * nb + q) * nb + k], 1);
        }
        assert_int_equal(kept - base, attn_min64(cs[c].r, nb - base));
      }
    free(got);
    free(want);
  }
  attn_context_destroy(ctx);
}

static void bigbird_layout_reproducible_and_seed_dependent(void **state) {
  (void)state;
  attn_context *ctx = tu_context(2);
  size_t s1, s2, s3;
  uint8_t *a = bigbird_readback(ctx, 4, 2048, 64, 1, 1, 3, 1234, &s1);
  uint8_t *b = bigbird_readback(ctx, 4, 2048, 64, 1, 1, 3, 1234, &s2);
  uint8_t *c = bigbird_readback(ctx, 4, 2048, 64, 1, 1, 3, 1235, &s3);
  assert_int_equal(s1, s2);
  assert_memory_equal(a, b, s1);
  assert_true(memcmp(a, c, s1) != 0);
  /* Heads draw differently too. */
  size_t per = s1 / 4;
  assert_true(memcmp(a, a + per, per) != 0);
  free(a); free(b); free(c);
  attn_context_destroy(ctx);
}

static void bigbird_matches_dense_mask(void **state) {
  (void)state;
  attn_context *ctx = tu_context(2);
  const struct { int64_t B, H, Hkv, Sq, Sk, D, b, w, g, r; int causal; } cs[] = {
      {1, 2, 2, 300, 300, 16, 32, 1, 1, 2, 0}, {2, 4, 2, 250, 250, 8, 24, 0, 2, 3, 1},
      {1, 2, 1, 170, 230, 16, 16, 2, 1, 1, 2}, {1, 1, 1, 500, 500, 32, 64, 1, 1, 2, 0},
      {1, 2, 2, 90, 90, 8, 7, 1, 0, 4, 0}};
  for (size_t c = 0; c < sizeof cs / sizeof cs[0]; c++)
    for (int dt = 1; dt <= 2; dt++) {
      int64_t nqb = (cs[c].Sq + cs[c].b - 1) / cs[c].b, nkb = (cs[c].Sk + cs[c].b - 1) / cs[c].b;
      uint8_t *lay = t_bigbird(cs[c].H, nqb, nkb, cs[c].w, cs[c].g, cs[c].r, 77 + c);
      lay_keep u = {lay, cs[c].H, nqb, nkb, cs[c].b};
      ref_problem p;
      ref_problem_init(&p, cs[c].B, cs[c].H, cs[c].Sq, cs[c].Sk, cs[c].D);
      p.Hkv = cs[c].Hkv;
      p.causal = cs[c].causal;
      p.keep = lay_pred;
      p.keep_user = &u;
      attn_desc *d;
      assert_int_equal(attn_desc_create(ctx, &d), ATTN_OK);
      assert_int_equal(attn_desc_set_variant(d, ATTN_VARIANT_BIGBIRD), ATTN_OK);
      assert_int_equal(attn_desc_set_causal(d, (attn_causal)cs[c].causal), ATTN_OK);
      assert_int_equal(attn_desc_set_block_size(d, cs[c].b), ATTN_OK);
      assert_int_equal(attn_desc_set_bigbird(d, cs[c].w, cs[c].g, cs[c].r, 77 + c), ATTN_OK);
      run_opts o = {(attn_dtype)dt, c % 2 == 1, true, true, NULL};
      char what[64];
      snprintf(what, sizeof what, "bigbird case %zu dt %d", c, dt);
      run_check(ctx, d, &p, &o, 500 + c, what);
      attn_desc_destroy(d);
      free(lay);
    }
  attn_context_destroy(ctx);
}

/* ---- threads, allocation ----------------------------------------------------- */

static void sparse_bitwise_identical_across_threads_and_no_alloc_in_execute(void **state) {
  (void)state;
  int64_t B = 1, H = 2, S = 517, D = 16;
  uint64_t seed = 8;
  double *x = tu_random((size_t)(B * H * S * D), &seed);
  const int64_t gidx[] = {5, 300};
  float *first[2] = {NULL, NULL};
  size_t no = (size_t)(B * H * S * D);
  for (int32_t th = 1; th <= 3; th++)
    for (int var = 0; var < 2; var++) {
      tu_counter cnt = {0};
      attn_context *ctx = tu_counting_context(&cnt, th);
      attn_tensor *t = tu_tensor4(ctx, ATTN_DTYPE_F32, x, B, H, S, D, false);
      attn_tensor *o = tu_tensor4(ctx, ATTN_DTYPE_F32, NULL, B, H, S, D, false);
      attn_desc *d;
      assert_int_equal(attn_desc_create(ctx, &d), ATTN_OK);
      if (var == 0) {
        assert_int_equal(attn_desc_set_variant(d, ATTN_VARIANT_LONGFORMER), ATTN_OK);
        assert_int_equal(attn_desc_set_window(d, 40, 40), ATTN_OK);
        assert_int_equal(attn_desc_set_global_tokens(d, gidx, 2), ATTN_OK);
      } else {
        assert_int_equal(attn_desc_set_variant(d, ATTN_VARIANT_BIGBIRD), ATTN_OK);
        assert_int_equal(attn_desc_set_block_size(d, 32), ATTN_OK);
        assert_int_equal(attn_desc_set_bigbird(d, 1, 1, 2, 5), ATTN_OK);
      }
      attn_plan *plan;
      assert_int_equal(attn_plan_create(ctx, d, t, t, t, o, NULL, NULL, &plan), ATTN_OK);
      int64_t before = cnt.allocs;
      for (int r = 0; r < 3; r++) assert_int_equal(attn_plan_execute(plan, t, t, t, o, NULL, NULL), ATTN_OK);
      assert_int_equal(cnt.allocs, before);
      if (th == 1) {
        first[var] = malloc(no * 4);
        memcpy(first[var], attn_tensor_data(o), no * 4);
      } else {
        assert_memory_equal(first[var], attn_tensor_data(o), no * 4);
      }
      attn_plan_destroy(plan);
      attn_desc_destroy(d);
      tu_tensor_free(t);
      tu_tensor_free(o);
      attn_context_destroy(ctx);
      assert_int_equal(cnt.outstanding_bytes, 0);
    }
  free(first[0]);
  free(first[1]);
  free(x);
}

/* Every allocation of plan creation failing in turn: a clean status, no leak. */
static void sparse_plan_survives_allocation_failures(void **state) {
  (void)state;
  const int64_t gidx[] = {1, 2};
  for (int var = 0; var < 3; var++)
    for (int64_t fail = 1; fail < 40; fail++) {
      tu_counter cnt = {0};
      cnt.fail_at = 0;
      attn_context *ctx = tu_counting_context(&cnt, 2);
      attn_tensor *t = tu_tensor4(ctx, ATTN_DTYPE_F32, NULL, 1, 2, 100, 8, false);
      uint8_t lay[16];
      memset(lay, 1, sizeof lay);
      int64_t ls[3] = {1, 4, 4};
      attn_tensor *tl;
      assert_int_equal(attn_tensor_wrap(ctx, ATTN_DTYPE_U8, 3, ls, NULL, lay, &tl), ATTN_OK);
      attn_desc *d;
      assert_int_equal(attn_desc_create(ctx, &d), ATTN_OK);
      attn_variant vs[3] = {ATTN_VARIANT_LONGFORMER, ATTN_VARIANT_BIGBIRD, ATTN_VARIANT_BLOCK_SPARSE};
      assert_int_equal(attn_desc_set_variant(d, vs[var]), ATTN_OK);
      assert_int_equal(attn_desc_set_window(d, 5, 5), ATTN_OK);
      assert_int_equal(attn_desc_set_global_tokens(d, gidx, 2), ATTN_OK);
      assert_int_equal(attn_desc_set_block_size(d, 25), ATTN_OK);
      assert_int_equal(attn_desc_set_block_layout(d, tl), ATTN_OK);
      attn_plan *plan = NULL;
      cnt.fail_at = cnt.allocs + fail;
      attn_status st = attn_plan_create(ctx, d, t, t, t, t, NULL, NULL, &plan);
      cnt.fail_at = 0;
      if (st == ATTN_OK) {
        attn_plan_destroy(plan);
      } else {
        assert_true(st == ATTN_ERR_NO_MEMORY || st == ATTN_ERR_THREAD);
        assert_null(plan);
      }
      attn_desc_destroy(d);
      attn_tensor_destroy(tl);
      tu_tensor_free(t);
      attn_context_destroy(ctx);
      assert_int_equal(cnt.outstanding_bytes, 0);
      if (st == ATTN_OK) break;
    }
}

/* ---- bad input ------------------------------------------------------------- */

static void expect_plan_fails(attn_context *ctx, attn_desc *d, attn_tensor *q, attn_tensor *k,
                              attn_tensor *o, attn_status want, const char *needle) {
  size_t n = (size_t)attn_tensor_numel(o);
  float *out = attn_tensor_data(o);
  for (size_t i = 0; i < n; i++) out[i] = 12345.0f;
  attn_plan *plan = NULL;
  attn_status st = attn_forward(ctx, d, q, k, k, o, NULL, NULL);
  if (st != want)
    fail_msg("status %d (%s), want %d; message: %s", (int)st, attn_status_string(st), (int)want,
             attn_context_last_error(ctx));
  if (strstr(attn_context_last_error(ctx), needle) == NULL)
    fail_msg("message '%s' does not name '%s'", attn_context_last_error(ctx), needle);
  for (size_t i = 0; i < n; i++) assert_true(out[i] == 12345.0f);
  assert_int_equal(attn_plan_create(ctx, d, q, k, k, o, NULL, NULL, &plan), want);
  assert_null(plan);
}

static void bad_input_gives_documented_status(void **state) {
  (void)state;
  attn_context *ctx = tu_context(2);
  int64_t S = 100;
  attn_tensor *q = tu_tensor4(ctx, ATTN_DTYPE_F32, NULL, 1, 2, S, 8, false);
  attn_tensor *k2 = tu_tensor4(ctx, ATTN_DTYPE_F32, NULL, 1, 2, S + 5, 8, false);
  attn_tensor *o = tu_tensor4(ctx, ATTN_DTYPE_F32, NULL, 1, 2, S, 8, false);
  attn_desc *d;
  assert_int_equal(attn_desc_create(ctx, &d), ATTN_OK);

  /* Longformer */
  assert_int_equal(attn_desc_set_variant(d, ATTN_VARIANT_LONGFORMER), ATTN_OK);
  expect_plan_fails(ctx, d, q, q, o, ATTN_ERR_INVALID_ARG, "window"); /* no band */
  assert_int_equal(attn_desc_set_window(d, 0, 0), ATTN_OK);
  expect_plan_fails(ctx, d, q, q, o, ATTN_ERR_INVALID_ARG, "window"); /* empty band */
  assert_int_equal(attn_desc_set_window(d, 8, 8), ATTN_OK);
  const int64_t g_big[] = {3, S};
  assert_int_equal(attn_desc_set_global_tokens(d, g_big, 2), ATTN_OK);
  expect_plan_fails(ctx, d, q, q, o, ATTN_ERR_INVALID_ARG, "indices[1]");
  const int64_t g_dup[] = {3, 50, 3};
  assert_int_equal(attn_desc_set_global_tokens(d, g_dup, 3), ATTN_OK);
  expect_plan_fails(ctx, d, q, q, o, ATTN_ERR_INVALID_ARG, "repeated");
  const int64_t g_neg[] = {-1};
  assert_int_equal(attn_desc_set_global_tokens(d, g_neg, 1), ATTN_ERR_INVALID_ARG);
  assert_int_equal(attn_desc_set_global_tokens(d, NULL, 2), ATTN_ERR_NULL_ARG);
  const int64_t g_ok[] = {3};
  assert_int_equal(attn_desc_set_global_tokens(d, g_ok, 1), ATTN_OK);
  expect_plan_fails(ctx, d, q, k2, o, ATTN_ERR_SHAPE, "S_q = S_k");
  assert_int_equal(attn_forward(ctx, d, q, q, q, o, NULL, NULL), ATTN_OK);

  /* Block-sparse */
  assert_int_equal(attn_desc_set_variant(d, ATTN_VARIANT_BLOCK_SPARSE), ATTN_OK);
  expect_plan_fails(ctx, d, q, q, o, ATTN_ERR_NULL_ARG, "layout");
  assert_int_equal(attn_desc_set_block_size(d, 0), ATTN_ERR_INVALID_ARG);
  assert_int_equal(attn_desc_set_block_size(d, 30), ATTN_OK); /* 4 blocks */
  uint8_t lay[2 * 4 * 5];
  memset(lay, 1, sizeof lay);
  const int64_t bad_shapes[][3] = {{2, 4, 5}, {2, 3, 4}, {3, 4, 4}};
  for (int s = 0; s < 3; s++) {
    attn_tensor *tl;
    assert_int_equal(attn_tensor_wrap(ctx, ATTN_DTYPE_U8, 3, bad_shapes[s], NULL, lay, &tl), ATTN_OK);
    assert_int_equal(attn_desc_set_block_layout(d, tl), ATTN_OK);
    expect_plan_fails(ctx, d, q, q, o, ATTN_ERR_SHAPE, "layout");
    attn_tensor_destroy(tl);
  }
  {
    int64_t r2[2] = {4, 4};
    attn_tensor *tl;
    assert_int_equal(attn_tensor_wrap(ctx, ATTN_DTYPE_U8, 2, r2, NULL, lay, &tl), ATTN_OK);
    assert_int_equal(attn_desc_set_block_layout(d, tl), ATTN_ERR_SHAPE); /* rank 2 */
    attn_tensor_destroy(tl);
  }
  /* A correct layout works, and the readback checks its buffer. */
  {
    const int64_t ok[3] = {1, 4, 4};
    attn_tensor *tl;
    assert_int_equal(attn_tensor_wrap(ctx, ATTN_DTYPE_U8, 3, ok, NULL, lay, &tl), ATTN_OK);
    assert_int_equal(attn_desc_set_block_layout(d, tl), ATTN_OK);
    attn_plan *plan;
    assert_int_equal(attn_plan_create(ctx, d, q, q, q, o, NULL, NULL, &plan), ATTN_OK);
    uint8_t small[31];
    memset(small, 0xAB, sizeof small);
    size_t sz = sizeof small;
    assert_int_equal(attn_plan_block_layout(plan, small, &sz), ATTN_ERR_INVALID_ARG);
    assert_int_equal(sz, 32);
    assert_non_null(strstr(attn_context_last_error(ctx), "size"));
    for (size_t i = 0; i < sizeof small; i++) assert_int_equal(small[i], 0xAB);
    assert_int_equal(attn_plan_block_layout(plan, small, NULL), ATTN_ERR_NULL_ARG);
    attn_plan_destroy(plan);
    attn_desc_set_block_layout(d, NULL);
    attn_tensor_destroy(tl);
  }

  /* BigBird */
  assert_int_equal(attn_desc_set_variant(d, ATTN_VARIANT_BIGBIRD), ATTN_OK);
  assert_int_equal(attn_desc_set_bigbird(d, -1, 0, 0, 1), ATTN_ERR_INVALID_ARG);
  assert_int_equal(attn_desc_set_bigbird(d, 0, -1, 0, 1), ATTN_ERR_INVALID_ARG);
  assert_int_equal(attn_desc_set_bigbird(d, 0, 0, -1, 1), ATTN_ERR_INVALID_ARG);
  assert_int_equal(attn_desc_set_bigbird(d, 1, 5, 1, 1), ATTN_OK); /* 5 > 4 blocks */
  expect_plan_fails(ctx, d, q, q, o, ATTN_ERR_INVALID_ARG, "global_blocks");
  assert_int_equal(attn_desc_set_bigbird(d, 1, 1, 1, 1), ATTN_OK);
  assert_int_equal(attn_forward(ctx, d, q, q, q, o, NULL, NULL), ATTN_OK);

  /* Exact plans have no block layout. */
  assert_int_equal(attn_desc_set_variant(d, ATTN_VARIANT_EXACT), ATTN_OK);
  {
    attn_plan *plan;
    assert_int_equal(attn_plan_create(ctx, d, q, q, q, o, NULL, NULL, &plan), ATTN_OK);
    size_t sz = 0;
    assert_int_equal(attn_plan_block_layout(plan, NULL, &sz), ATTN_ERR_UNSUPPORTED);
    attn_plan_destroy(plan);
  }
  attn_desc_destroy(d);
  tu_tensor_free(q); tu_tensor_free(k2); tu_tensor_free(o);
  attn_context_destroy(ctx);
}

/* Longformer's blocked form: a block is 1 iff some (i, j) in it is kept. */
static void longformer_block_layout_covers_kept_pairs(void **state) {
  (void)state;
  attn_context *ctx = tu_context(1);
  int64_t S = 203, b = 16, nb = (S + b - 1) / b;
  const int64_t gidx[] = {40, 150, 151};
  uint8_t g[203] = {0};
  for (int x = 0; x < 3; x++) g[gidx[x]] = 1;
  attn_tensor *t = tu_tensor4(ctx, ATTN_DTYPE_F32, NULL, 1, 2, S, 4, false);
  for (int causal = 0; causal < 2; causal++) {
    attn_desc *d;
    assert_int_equal(attn_desc_create(ctx, &d), ATTN_OK);
    assert_int_equal(attn_desc_set_variant(d, ATTN_VARIANT_LONGFORMER), ATTN_OK);
    assert_int_equal(attn_desc_set_causal(d, causal ? ATTN_CAUSAL_TOP_LEFT : ATTN_CAUSAL_NONE), ATTN_OK);
    assert_int_equal(attn_desc_set_window(d, 20, 3), ATTN_OK);
    assert_int_equal(attn_desc_set_global_tokens(d, gidx, 3), ATTN_OK);
    assert_int_equal(attn_desc_set_block_size(d, b), ATTN_OK);
    attn_plan *plan;
    assert_int_equal(attn_plan_create(ctx, d, t, t, t, t, NULL, NULL, &plan), ATTN_OK);
    size_t sz = 0;
    assert_int_equal(attn_plan_block_layout(plan, NULL, &sz), ATTN_OK);
    assert_int_equal(sz, (size_t)(2 * nb * nb));
    uint8_t *lay = malloc(sz);
    assert_int_equal(attn_plan_block_layout(plan, lay, &sz), ATTN_OK);
    lf_keep u = {g, 20, 3, NULL, NULL, S, false};
    for (int64_t r = 0; r < nb; r++)
      for (int64_t c = 0; c < nb; c++) {
        bool any = false;
        for (int64_t i = r * b; i < attn_min64(S, r * b + b) && !any; i++)
          for (int64_t j = c * b; j < attn_min64(S, c * b + b) && !any; j++)
            any = lf_pred(&u, 0, 0, i, j) && (!causal || j <= i);
        assert_int_equal(lay[r * nb + c], any);
        assert_int_equal(lay[nb * nb + r * nb + c], any);
      }
    free(lay);
    attn_plan_destroy(plan);
    attn_desc_destroy(d);
  }
  tu_tensor_free(t);
  attn_context_destroy(ctx);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(longformer_matches_dense_mask),
      cmocka_unit_test(blocksparse_matches_dense_mask),
      cmocka_unit_test(blocksparse_layout_contents_read_at_execute),
      cmocka_unit_test(bigbird_layout_follows_documented_prng),
      cmocka_unit_test(bigbird_layout_reproducible_and_seed_dependent),
      cmocka_unit_test(bigbird_matches_dense_mask),
      cmocka_unit_test(sparse_bitwise_identical_across_threads_and_no_alloc_in_execute),
      cmocka_unit_test(sparse_plan_survives_allocation_failures),
      cmocka_unit_test(bad_input_gives_documented_status),
      cmocka_unit_test(longformer_block_layout_covers_kept_pairs),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}

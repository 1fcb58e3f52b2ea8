/* Paged KV cache: ragged batches of sequences decoded in one call, chunked
 * prefill, forks with copy-on-write, rollback, windows, ALiBi, softcap and
 * GQA give what the naive f64 reference gives over each sequence's tokens
 * (kept on the side), and what the contiguous cache gives for the same
 * tokens; results are bitwise identical for 1..4 threads; execute and
 * append allocate nothing; bad input gives the documented status and
 * changes nothing; several caller threads decode different sequences of one
 * pool at once (run under TSan by tools/ci/tsan.sh). */
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "testutil.h"

#define MAXS 8
#define MAXL 2048

typedef struct model {
  attn_context *ctx;
  attn_paged_cache *pc;
  attn_dtype dt;
  int64_t Hkv, Dk, Dv, bs;
  double *K[MAXS], *V[MAXS]; /* [Hkv][MAXL][D] doubles, what each sequence holds */
  int64_t len[MAXS];
  int64_t maxlen; /* the cache's max_seq_len */
  uint64_t rng;
} model;

static void model_init(model *m, attn_context *ctx, attn_dtype dt, int64_t Hkv, int64_t Dk,
                       int64_t Dv, int64_t bs, int64_t nblocks, attn_kvcache_storage st) {
  memset(m, 0, sizeof *m);
  m->ctx = ctx;
  m->dt = dt;
  m->Hkv = Hkv;
  m->Dk = Dk;
  m->Dv = Dv;
  m->bs = bs;
  m->rng = 0x9e3779b97f4a7c15ull;
  attn_paged_config cfg;
  attn_paged_config_init(&cfg);
  cfg.heads_kv = Hkv;
  cfg.d_k = Dk;
  cfg.d_v = Dv;
  cfg.block_size = bs;
  cfg.num_blocks = nblocks;
  cfg.max_seqs = MAXS;
  cfg.max_seq_len = nblocks * bs < MAXL ? nblocks * bs : MAXL;
  m->maxlen = cfg.max_seq_len;
  cfg.dtype = dt;
  cfg.storage = st;
  assert_int_equal(attn_paged_create(ctx, &cfg, &m->pc), ATTN_OK);
  for (int s = 0; s < MAXS; s++) {
    m->K[s] = calloc((size_t)(Hkv * MAXL * Dk), sizeof(double));
    m->V[s] = calloc((size_t)(Hkv * MAXL * Dv), sizeof(double));
    m->len[s] = -1;
  }
}

static void model_free(model *m) {
  attn_paged_destroy(m->pc);
  for (int s = 0; s < MAXS; s++) {
    free(m->K[s]);
    free(m->V[s]);
  }
}

static int64_t model_new(model *m) {
  int64_t s = -1;
  assert_int_equal(attn_paged_seq_create(m->pc, &s), ATTN_OK);
  m->len[s] = 0;
  return s;
}

static int64_t model_fork(model *m, int64_t src) {
  int64_t s = -1;
  assert_int_equal(attn_paged_fork(m->pc, src, &s), ATTN_OK);
  memcpy(m->K[s], m->K[src], (size_t)(m->Hkv * MAXL * m->Dk) * sizeof(double));
  memcpy(m->V[s], m->V[src], (size_t)(m->Hkv * MAXL * m->Dv) * sizeof(double));
  m->len[s] = m->len[src];
  return s;
}

/* bf16-exact values (few mantissa bits) so every storage holds them exactly. */
static double rnd(model *m) { return round(tu_uniform(&m->rng, -1, 1) * 64.0) / 64.0; }

/* k_new/v_new [Hkv, n, D] of random rows, appended to seq and the model. */
static attn_status model_append(model *m, int64_t s, int64_t n) {
  const int64_t ks[3] = {m->Hkv, n, m->Dk}, vs[3] = {m->Hkv, n, m->Dv};
  double *k = malloc((size_t)(m->Hkv * n * m->Dk + 1) * sizeof(double));
  double *v = malloc((size_t)(m->Hkv * n * m->Dv + 1) * sizeof(double));
  for (int64_t i = 0; i < m->Hkv * n * m->Dk; i++) k[i] = rnd(m);
  for (int64_t i = 0; i < m->Hkv * n * m->Dv; i++) v[i] = rnd(m);
  attn_tensor *tk = tu_tensor(m->ctx, m->dt, k, 3, ks), *tv = tu_tensor(m->ctx, m->dt, v, 3, vs);
  attn_status st = attn_paged_append(m->pc, s, tk, tv);
  if (st == ATTN_OK && s >= 0 && s < MAXS) {
    for (int64_t h = 0; h < m->Hkv; h++)
      for (int64_t r = 0; r < n; r++) {
        memcpy(m->K[s] + (h * MAXL + m->len[s] + r) * m->Dk, k + (h * n + r) * m->Dk,
               (size_t)m->Dk * sizeof(double));
        memcpy(m->V[s] + (h * MAXL + m->len[s] + r) * m->Dv, v + (h * n + r) * m->Dv,
               (size_t)m->Dv * sizeof(double));
      }
    m->len[s] += n;
  }
  tu_tensor_free(tk);
  tu_tensor_free(tv);
  free(k);
  free(v);
  return st;
}

typedef struct opts {
  int64_t H, n;        /* query heads, queries per row (plan) */
  int causal;          /* 0 or 2 */
  int64_t left;        /* window, −1 none */
  bool alibi;
  double softcap;
  bool sinks; /* kSinks below as attention-sink logits */
  int mass;   /* per-key mass output: 0 none, 1 per head, 2 per KV head */
} opts;

/* Sink logits for up to 8 heads; head 1 has none (−inf). */
static const double kSinks[8] = {0.5, -INFINITY, 0.0, -0.25, 1.0, -0.5, 0.75, 0.25};

static attn_desc *make_desc(attn_context *ctx, const opts *o, double *slopes) {
  attn_desc *d = NULL;
  assert_int_equal(attn_desc_create(ctx, &d), ATTN_OK);
  assert_int_equal(attn_desc_set_causal(d, o->causal == 2 ? ATTN_CAUSAL_BOTTOM_RIGHT : ATTN_CAUSAL_NONE), ATTN_OK);
  if (o->left >= 0) assert_int_equal(attn_desc_set_window(d, o->left, 0), ATTN_OK);
  if (o->alibi) {
    for (int64_t h = 0; h < o->H; h++) slopes[h] = pow(2.0, -8.0 * (double)(h + 1) / (double)o->H);
    assert_int_equal(attn_desc_set_alibi(d, slopes, o->H), ATTN_OK);
  }
  if (o->softcap > 0) assert_int_equal(attn_desc_set_softcap(d, o->softcap), ATTN_OK);
  if (o->sinks) assert_int_equal(attn_desc_set_sinks(d, kSinks, o->H), ATTN_OK);
  return d;
}

/* Reference for row b: sequence s, nq queries q[b] (dense [H][n][Dk]). */
static void ref_row(const model *m, const opts *o, const double *slopes, int64_t s, int64_t nq,
                    const double *q, double *out, double *lse, double *weights) {
  const int64_t L = m->len[s];
  ref_problem p;
  ref_problem_init(&p, 1, o->H, nq, L, m->Dk);
  p.Hkv = m->Hkv;
  p.Dv = m->Dv;
  p.causal = o->causal;
  p.left = o->left;
  p.right = o->left >= 0 ? 0 : -1;
  p.alibi = o->alibi ? slopes : NULL;
  p.softcap = o->softcap;
  p.sink = o->sinks ? kSinks : NULL;
  double *k = malloc((size_t)(m->Hkv * (L + 1) * m->Dk) * sizeof(double));
  double *v = malloc((size_t)(m->Hkv * (L + 1) * m->Dv) * sizeof(double));
  for (int64_t h = 0; h < m->Hkv; h++) {
    memcpy(k + h * L * m->Dk, m->K[s] + h * MAXL * m->Dk, (size_t)(L * m->Dk) * sizeof(double));
    memcpy(v + h * L * m->Dv, m->V[s] + h * MAXL * m->Dv, (size_t)(L * m->Dv) * sizeof(double));
  }
  double *qq = malloc((size_t)(o->H * nq * m->Dk + 1) * sizeof(double));
  for (int64_t h = 0; h < o->H; h++)
    memcpy(qq + h * nq * m->Dk, q + h * o->n * m->Dk, (size_t)(nq * m->Dk) * sizeof(double));
  ref_attention(&p, qq, k, v, out, weights, lse, NULL);
  free(qq);
  free(k);
  free(v);
}

/* One call over rows seqs[0..count) with counts (NULL: n each); checks
 * against the reference, and that 1..4 threads give the same bits. Returns
 * the f64 outputs [N][H][n][Dv] (caller frees) for further comparisons. */
static double *check_call(model *m, const opts *o, int64_t count, const int64_t *seqs,
                          const int64_t *counts, double tol) {
  const int64_t N = count, H = o->H, n = o->n, Dk = m->Dk, Dv = m->Dv;
  double slopes[64];
  attn_desc *d = make_desc(m->ctx, o, slopes);
  double *q = malloc((size_t)(N * H * n * Dk) * sizeof(double));
  for (int64_t i = 0; i < N * H * n * Dk; i++) q[i] = tu_uniform(&m->rng, -1, 1);
  attn_tensor *tq = tu_tensor4(m->ctx, m->dt, q, N, H, n, Dk, false);
  double *got = malloc((size_t)(N * H * n * Dv) * sizeof(double));
  double *gotl = malloc((size_t)(N * H * n) * sizeof(double));
  void *first = NULL, *first_mass = NULL;
  size_t obytes = (size_t)(N * H * n * Dv) * (m->dt == ATTN_DTYPE_F64 ? 8u : 4u);
  const int64_t maxlen = m->maxlen, mh = o->mass == 2 ? m->Hkv : H;
  const size_t nmass = (size_t)(N * mh * maxlen);
  double *gotm = o->mass ? malloc(nmass * sizeof(double)) : NULL;
  for (int32_t th = 1; th <= 4; th++) {
    attn_context *c = tu_context(th);
    attn_tensor *to = tu_tensor4(c, m->dt, NULL, N, H, n, Dv, false);
    const int64_t ls[3] = {N, H, n}, ms[3] = {N, mh, maxlen};
    attn_tensor *tl = tu_tensor(c, m->dt, NULL, 3, ls);
    attn_tensor *tm = o->mass ? tu_tensor(c, m->dt, NULL, 3, ms) : NULL;
    if (tm) assert_int_equal(attn_desc_set_key_mass(d, tm), ATTN_OK);
    attn_paged_plan *plan = NULL;
    assert_int_equal(attn_paged_plan_create(c, m->pc, d, tq, to, tl, &plan), ATTN_OK);
    attn_status st = attn_paged_plan_execute(plan, count, seqs, tq, to, tl, counts);
    if (st != ATTN_OK) print_message("%s\n", attn_context_last_error(c));
    assert_int_equal(st, ATTN_OK);
    const size_t mbytes = nmass * (m->dt == ATTN_DTYPE_F64 ? 8u : 4u);
    if (th == 1) {
      first = malloc(obytes);
      memcpy(first, attn_tensor_data(to), obytes);
      tu_read(to, got);
      tu_read(tl, gotl);
      if (tm) {
        first_mass = malloc(mbytes);
        memcpy(first_mass, attn_tensor_data(tm), mbytes);
        tu_read(tm, gotm);
      }
    } else {
      assert_memory_equal(first, attn_tensor_data(to), obytes);
      if (tm) assert_memory_equal(first_mass, attn_tensor_data(tm), mbytes);
    }
    attn_paged_plan_destroy(plan);
    if (tm) assert_int_equal(attn_desc_set_key_mass(d, NULL), ATTN_OK);
    tu_tensor_free(tm);
    tu_tensor_free(to);
    tu_tensor_free(tl);
    attn_context_destroy(c);
  }
  for (int64_t b = 0; b < N; b++) {
    const int64_t nq = counts ? counts[b] : n;
    double *ro = calloc((size_t)(H * n * Dv + 1), sizeof(double));
    double *rl = calloc((size_t)(H * n + 1), sizeof(double));
    const int64_t L = m->len[seqs[b]];
    double *rw = gotm ? calloc((size_t)(H * n * L + 1), sizeof(double)) : NULL;
    if (nq > 0) ref_row(m, o, slopes, seqs[b], nq, q + b * H * n * Dk, ro, rl, rw);
    if (gotm) { /* the mass: column sums of the weights (per head or KV head), 0 past L */
      double *want = calloc((size_t)(mh * maxlen), sizeof(double));
      for (int64_t h = 0; h < H; h++)
        for (int64_t i = 0; i < nq; i++)
          for (int64_t j = 0; j < L; j++)
            want[(o->mass == 2 ? h / (H / m->Hkv) : h) * maxlen + j] += rw[(h * nq + i) * L + j];
      double err;
      const size_t bad = tu_violations(gotm + b * mh * maxlen, want, NULL, (size_t)(mh * maxlen),
                                       tol, tol, &err);
      if (bad) print_message("row %ld: %zu mass values off, max err %g\n", (long)b, bad, err);
      assert_int_equal(bad, 0);
      free(want);
    }
    free(rw);
    for (int64_t h = 0; h < H; h++)
      for (int64_t i = 0; i < n; i++) {
        const double *g = got + ((b * H + h) * n + i) * Dv;
        const double gl = gotl[(b * H + h) * n + i];
        if (i >= nq) { /* rows past the count: out 0, lse −inf */
          for (int64_t x = 0; x < Dv; x++) assert_true(g[x] == 0.0);
          assert_true(isinf(gl) && gl < 0);
          continue;
        }
        double err;
        size_t bad = tu_violations(g, ro + (h * nq + i) * Dv, NULL, (size_t)Dv, tol, tol, &err);
        if (bad) print_message("row %ld (seq %ld len %ld) head %ld q %ld: err %g\n", (long)b,
                               (long)seqs[b], (long)m->len[seqs[b]], (long)h, (long)i, err);
        assert_int_equal(bad, 0);
        const double rlse = rl[h * nq + i];
        if (isinf(rlse)) assert_true(isinf(gl));
        else assert_true(fabs(gl - rlse) <= tol * (1 + fabs(rlse)));
      }
    free(ro);
    free(rl);
  }
  free(first);
  free(first_mass);
  free(gotm);
  free(q);
  free(gotl);
  tu_tensor_free(tq);
  attn_desc_destroy(d);
  return got;
}

static double tol_of(attn_dtype dt) { return dt == ATTN_DTYPE_F64 ? 1e-10 : 2e-5; }

/* ---- ragged decode, GQA, speculative n > 1, both dtypes --------------------- */

static void ragged(attn_dtype dt, attn_kvcache_storage st, int64_t bs) {
  attn_context *ctx = tu_context(1);
  model m;
  model_init(&m, ctx, dt, 2, 16, 8, bs, 4096 / bs + 64, st);
  const int64_t lens[5] = {1, 17, 600, 1100, 64};
  int64_t seqs[5];
  for (int i = 0; i < 5; i++) {
    seqs[i] = model_new(&m);
    /* in several appends so blocks of different sequences interleave */
    for (int64_t done = 0; done < lens[i];) {
      int64_t k = lens[i] - done < 37 ? lens[i] - done : 37;
      assert_int_equal(model_append(&m, seqs[i], k), ATTN_OK);
      done += k;
    }
  }
  const double tol = tol_of(dt);
  opts o = {8, 1, 2, -1, false, 0, false, 0};
  free(check_call(&m, &o, 5, seqs, NULL, tol));
  opts o3 = {8, 3, 2, -1, false, 0, false, 0}; /* speculative: 3 queries, ragged counts */
  const int64_t counts[5] = {1, 3, 2, 0, 3};
  free(check_call(&m, &o3, 5, seqs, counts, tol));
  opts mqa = {4, 1, 2, -1, false, 0, false, 0};
  free(check_call(&m, &mqa, 3, seqs + 2, NULL, tol));
  /* the same sequence in two rows; rows in any order */
  const int64_t dup[3] = {seqs[3], seqs[0], seqs[3]};
  free(check_call(&m, &o, 3, dup, NULL, tol));
  model_free(&m);
  attn_context_destroy(ctx);
}
static void test_ragged_f32(void **s) { (void)s; ragged(ATTN_DTYPE_F32, ATTN_KVCACHE_STORE_NATIVE, 16); }
static void test_ragged_f64(void **s) { (void)s; ragged(ATTN_DTYPE_F64, ATTN_KVCACHE_STORE_NATIVE, 64); }
static void test_ragged_bf16(void **s) { (void)s; ragged(ATTN_DTYPE_F32, ATTN_KVCACHE_STORE_BF16, 32); }
static void test_ragged_block1(void **s) { (void)s; ragged(ATTN_DTYPE_F64, ATTN_KVCACHE_STORE_NATIVE, 1); }
/* f16 holds the model's values exactly too (quantized storages: test_paged_quant). */
static void test_ragged_f16(void **s) { (void)s; ragged(ATTN_DTYPE_F32, ATTN_KVCACHE_STORE_F16, 16); }

/* ---- masks: window, ALiBi, softcap, no causal -------------------------------- */

static void test_masks(void **state) {
  (void)state;
  for (int dti = 0; dti < 2; dti++) {
    attn_dtype dt = dti ? ATTN_DTYPE_F64 : ATTN_DTYPE_F32;
    attn_context *ctx = tu_context(1);
    model m;
    model_init(&m, ctx, dt, 2, 16, 16, 32, 200, ATTN_KVCACHE_STORE_NATIVE);
    int64_t seqs[3];
    const int64_t lens[3] = {700, 90, 1500};
    for (int i = 0; i < 3; i++) {
      seqs[i] = model_new(&m);
      assert_int_equal(model_append(&m, seqs[i], lens[i]), ATTN_OK);
    }
    const double tol = tol_of(dt);
    opts w = {4, 2, 2, 37, false, 0, false, 0};
    free(check_call(&m, &w, 3, seqs, NULL, tol));
    opts wide = {4, 1, 2, 600, true, 0, false, 0}; /* window across chunk boundaries + ALiBi */
    free(check_call(&m, &wide, 3, seqs, NULL, tol));
    opts cap = {4, 1, 2, -1, true, 5.0, false, 0};
    free(check_call(&m, &cap, 3, seqs, NULL, tol));
    opts none = {4, 1, 0, -1, false, 0, false, 0};
    free(check_call(&m, &none, 3, seqs, NULL, tol));
    /* Sinks on the split-KV decode path and on the blocked (prefill) path,
     * with ragged query counts. */
    opts sk = {4, 2, 2, 37, true, 0, true, 0};
    free(check_call(&m, &sk, 3, seqs, NULL, tol));
    opts skp = {4, 24, 2, -1, false, 3.0, true, 0};
    const int64_t counts[3] = {24, 5, 17};
    free(check_call(&m, &skp, 3, seqs, counts, tol));
    /* The per-key mass on both paths, per head and per KV head, with sinks. */
    opts ms1 = {4, 2, 2, 300, true, 0, true, 1};
    free(check_call(&m, &ms1, 3, seqs, NULL, tol));
    opts ms2 = {4, 24, 2, -1, false, 0, false, 2};
    free(check_call(&m, &ms2, 3, seqs, counts, tol));
    model_free(&m);
    attn_context_destroy(ctx);
  }
}

/* ---- chunked prefill (n > 16: the blocked path) ------------------------------ */

static void test_chunked_prefill(void **state) {
  (void)state;
  for (int dti = 0; dti < 2; dti++) {
    attn_dtype dt = dti ? ATTN_DTYPE_F64 : ATTN_DTYPE_F32;
    attn_context *ctx = tu_context(1);
    model m;
    model_init(&m, ctx, dt, 2, 16, 16, 16, 400, ATTN_KVCACHE_STORE_NATIVE);
    int64_t a = model_new(&m), b = model_new(&m);
    /* prompt of 700 in chunks of 64: append the chunk, attend it */
    opts o = {8, 64, 2, -1, false, 0, false, 0};
    for (int64_t done = 0; done < 700; done += 64) {
      int64_t k = 700 - done < 64 ? 700 - done : 64;
      assert_int_equal(model_append(&m, a, k), ATTN_OK);
      const int64_t cnt[1] = {k};
      free(check_call(&m, &o, 1, &a, cnt, tol_of(dt)));
    }
    /* two sequences' chunks in one call, one with a window */
    assert_int_equal(model_append(&m, b, 50), ATTN_OK);
    assert_int_equal(model_append(&m, a, 20), ATTN_OK);
    const int64_t two[2] = {a, b}, cnt2[2] = {20, 50};
    free(check_call(&m, &o, 2, two, cnt2, tol_of(dt)));
    opts ow = {8, 64, 2, 100, true, 0, false, 0};
    free(check_call(&m, &ow, 2, two, cnt2, tol_of(dt)));
    model_free(&m);
    attn_context_destroy(ctx);
  }
}

/* ---- forks, copy-on-write, rollback, free ------------------------------------ */

static void test_fork_cow(void **state) {
  (void)state;
  attn_context *ctx = tu_context(1);
  model m;
  model_init(&m, ctx, ATTN_DTYPE_F64, 2, 8, 8, 16, 64, ATTN_KVCACHE_STORE_NATIVE);
  int64_t a = model_new(&m);
  assert_int_equal(model_append(&m, a, 40), ATTN_OK); /* 3 blocks, the last partial */
  const int64_t free0 = attn_paged_free_blocks(m.pc);
  const size_t used0 = attn_paged_memory_used(m.pc);
  int64_t b = model_fork(&m, a), c = model_fork(&m, a);
  assert_int_equal(attn_paged_free_blocks(m.pc), free0); /* forks share every block */
  assert_int_equal(attn_paged_memory_used(m.pc), used0);
  assert_int_equal(attn_paged_seq_length(m.pc, b), 40);
  int64_t ta[8], tb[8], na, nb;
  assert_int_equal(attn_paged_block_table(m.pc, a, ta, 8, &na), ATTN_OK);
  assert_int_equal(attn_paged_block_table(m.pc, b, tb, 8, &nb), ATTN_OK);
  assert_int_equal(na, 3);
  assert_memory_equal(ta, tb, sizeof ta[0] * 3);
  /* a write after the fork: b copies its shared last block, a is unchanged */
  assert_int_equal(model_append(&m, b, 5), ATTN_OK);
  assert_int_equal(attn_paged_free_blocks(m.pc), free0 - 1);
  assert_int_equal(attn_paged_block_table(m.pc, b, tb, 8, &nb), ATTN_OK);
  assert_true(tb[2] != ta[2] && tb[0] == ta[0] && tb[1] == ta[1]);
  assert_int_equal(model_append(&m, a, 30), ATTN_OK); /* a's last block: still shared with c */
  assert_int_equal(model_append(&m, c, 1), ATTN_OK);
  opts o = {4, 1, 2, -1, false, 0, false, 0};
  const int64_t all[3] = {a, b, c};
  free(check_call(&m, &o, 3, all, NULL, 1e-10));
  /* rollback a into the shared prefix, then write: b and c are unchanged */
  assert_int_equal(attn_paged_truncate(m.pc, a, 20), ATTN_OK);
  m.len[a] = 20;
  assert_int_equal(model_append(&m, a, 9), ATTN_OK);
  free(check_call(&m, &o, 3, all, NULL, 1e-10));
  /* speculative rollback on b: append 4, attend them, drop them */
  assert_int_equal(model_append(&m, b, 4), ATTN_OK);
  opts o4 = {4, 4, 2, -1, false, 0, false, 0};
  free(check_call(&m, &o4, 1, &b, NULL, 1e-10));
  assert_int_equal(attn_paged_truncate(m.pc, b, m.len[b] - 4), ATTN_OK);
  m.len[b] -= 4;
  free(check_call(&m, &o, 3, all, NULL, 1e-10));
  /* freeing every sequence returns every block */
  assert_int_equal(attn_paged_seq_free(m.pc, a), ATTN_OK);
  assert_int_equal(attn_paged_seq_free(m.pc, b), ATTN_OK);
  assert_int_equal(attn_paged_num_seqs(m.pc), 1);
  free(check_call(&m, &o, 1, &c, NULL, 1e-10));
  assert_int_equal(attn_paged_seq_free(m.pc, c), ATTN_OK);
  assert_int_equal(attn_paged_free_blocks(m.pc), 64);
  assert_int_equal(attn_paged_memory_used(m.pc), 0);
  model_free(&m);
  attn_context_destroy(ctx);
}

/* ---- paged = contiguous ------------------------------------------------------ */

static void test_paged_equals_contiguous(void **state) {
  (void)state;
  attn_context *ctx = tu_context(2);
  const int64_t Hkv = 2, H = 8, D = 32, L = 1300;
  model m;
  model_init(&m, ctx, ATTN_DTYPE_F32, Hkv, D, D, 64, 64, ATTN_KVCACHE_STORE_NATIVE);
  int64_t s = model_new(&m);
  assert_int_equal(model_append(&m, s, L), ATTN_OK);
  attn_kvcache_config cfg;
  attn_kvcache_config_init(&cfg);
  cfg.heads_kv = Hkv;
  cfg.capacity = L;
  cfg.d_k = D;
  attn_kvcache *kc = NULL;
  assert_int_equal(attn_kvcache_create(ctx, &cfg, &kc), ATTN_OK);
  double *kk = malloc((size_t)(Hkv * L * D) * sizeof(double)), *vv = malloc((size_t)(Hkv * L * D) * sizeof(double));
  for (int64_t h = 0; h < Hkv; h++) {
    memcpy(kk + h * L * D, m.K[s] + h * MAXL * D, (size_t)(L * D) * sizeof(double));
    memcpy(vv + h * L * D, m.V[s] + h * MAXL * D, (size_t)(L * D) * sizeof(double));
  }
  attn_tensor *tk = tu_tensor4(ctx, ATTN_DTYPE_F32, kk, 1, Hkv, L, D, false);
  attn_tensor *tv = tu_tensor4(ctx, ATTN_DTYPE_F32, vv, 1, Hkv, L, D, false);
  assert_int_equal(attn_kvcache_append(kc, tk, tv, NULL), ATTN_OK);
  for (int64_t n = 1; n <= 40; n += 39) {
    double *q = tu_random((size_t)(H * n * D), &m.rng);
    attn_tensor *tq = tu_tensor4(ctx, ATTN_DTYPE_F32, q, 1, H, n, D, false);
    attn_tensor *o1 = tu_tensor4(ctx, ATTN_DTYPE_F32, NULL, 1, H, n, D, false);
    attn_tensor *o2 = tu_tensor4(ctx, ATTN_DTYPE_F32, NULL, 1, H, n, D, false);
    attn_desc *d = NULL;
    assert_int_equal(attn_desc_create(ctx, &d), ATTN_OK);
    assert_int_equal(attn_desc_set_causal(d, ATTN_CAUSAL_BOTTOM_RIGHT), ATTN_OK);
    attn_kvcache_plan *kp = NULL;
    attn_paged_plan *pp = NULL;
    assert_int_equal(attn_kvcache_plan_create(kc, d, tq, o1, NULL, &kp), ATTN_OK);
    assert_int_equal(attn_paged_plan_create(ctx, m.pc, d, tq, o2, NULL, &pp), ATTN_OK);
    assert_int_equal(attn_kvcache_plan_execute(kp, tq, o1, NULL, NULL), ATTN_OK);
    assert_int_equal(attn_paged_plan_execute(pp, 1, &s, tq, o2, NULL, NULL), ATTN_OK);
    double *a = malloc((size_t)(H * n * D) * sizeof(double)), *b = malloc((size_t)(H * n * D) * sizeof(double));
    tu_read(o1, a);
    tu_read(o2, b);
    double err;
    assert_int_equal(tu_violations(b, a, NULL, (size_t)(H * n * D), 1e-5, 1e-6, &err), 0);
    free(a);
    free(b);
    free(q);
    attn_kvcache_plan_destroy(kp);
    attn_paged_plan_destroy(pp);
    attn_desc_destroy(d);
    tu_tensor_free(tq);
    tu_tensor_free(o1);
    tu_tensor_free(o2);
  }
  free(kk);
  free(vv);
  tu_tensor_free(tk);
  tu_tensor_free(tv);
  attn_kvcache_destroy(kc);
  model_free(&m);
  attn_context_destroy(ctx);
}

/* ---- out of blocks, capacity ------------------------------------------------- */

static void test_out_of_blocks(void **state) {
  (void)state;
  attn_context *ctx = tu_context(1);
  model m;
  model_init(&m, ctx, ATTN_DTYPE_F32, 1, 4, 4, 8, 4, ATTN_KVCACHE_STORE_NATIVE);
  int64_t a = model_new(&m);
  assert_int_equal(model_append(&m, a, 20), ATTN_OK); /* 3 blocks */
  assert_int_equal(model_append(&m, a, 13), ATTN_ERR_CAPACITY); /* needs 2, 1 free */
  assert_int_equal(attn_paged_seq_length(m.pc, a), 20);
  assert_int_equal(attn_paged_free_blocks(m.pc), 1);
  int64_t b = model_fork(&m, a);
  assert_int_equal(model_append(&m, b, 4), ATTN_OK); /* copy of the last block: the last free */
  assert_int_equal(attn_paged_free_blocks(m.pc), 0);
  assert_int_equal(model_append(&m, a, 1), ATTN_OK); /* a's last block is its own again */
  assert_int_equal(model_append(&m, a, 4), ATTN_ERR_CAPACITY); /* a needs a new block */
  assert_int_equal(attn_paged_seq_length(m.pc, a), 21);
  int64_t c = model_fork(&m, a);
  assert_int_equal(model_append(&m, c, 1), ATTN_ERR_CAPACITY); /* copy-on-write needs a block */
  assert_int_equal(attn_paged_seq_length(m.pc, c), 21);
  opts o = {2, 1, 2, -1, false, 0, false, 0};
  const int64_t all[3] = {a, b, c};
  free(check_call(&m, &o, 3, all, NULL, 2e-5));
  model_free(&m);
  attn_context_destroy(ctx);
}

/* ---- bad input ----------------------------------------------------------------- */

static void test_bad_input(void **state) {
  (void)state;
  attn_context *ctx = tu_context(1);
  model m;
  model_init(&m, ctx, ATTN_DTYPE_F32, 2, 4, 4, 8, 16, ATTN_KVCACHE_STORE_NATIVE);
  attn_paged_config cfg;
  attn_paged_config_init(&cfg);
  attn_paged_cache *pc = NULL;
  assert_int_equal(attn_paged_create(ctx, &cfg, &pc), ATTN_ERR_INVALID_ARG); /* d_k 0 */
  assert_non_null(strstr(attn_context_last_error(ctx), "cfg.d_k"));
  cfg.d_k = 4;
  assert_int_equal(attn_paged_create(ctx, &cfg, &pc), ATTN_ERR_INVALID_ARG); /* num_blocks 0 */
  cfg.num_blocks = 4;
  cfg.block_size = 0;
  assert_int_equal(attn_paged_create(ctx, &cfg, &pc), ATTN_ERR_INVALID_ARG);
  cfg.block_size = 8;
  cfg.max_seq_len = 33;
  assert_int_equal(attn_paged_create(ctx, &cfg, &pc), ATTN_ERR_INVALID_ARG); /* > pool */
  cfg.max_seq_len = 0;
  cfg.dtype = ATTN_DTYPE_F64;
  cfg.storage = ATTN_KVCACHE_STORE_BF16;
  assert_int_equal(attn_paged_create(ctx, &cfg, &pc), ATTN_ERR_DTYPE);
  cfg.storage = (attn_kvcache_storage)7;
  assert_int_equal(attn_paged_create(ctx, &cfg, &pc), ATTN_ERR_INVALID_ARG);
  cfg.storage = ATTN_KVCACHE_STORE_NATIVE;
  cfg.struct_size = 3;
  assert_int_equal(attn_paged_create(ctx, &cfg, &pc), ATTN_ERR_INVALID_ARG);
  cfg.struct_size = sizeof cfg;
  cfg.num_blocks = INT64_MAX / 2;
  assert_true(attn_paged_create(ctx, &cfg, &pc) != ATTN_OK);
  assert_null(pc);
  assert_int_equal(attn_paged_create(NULL, &cfg, &pc), ATTN_ERR_NULL_ARG);
  assert_int_equal(attn_paged_create(ctx, NULL, &pc), ATTN_ERR_NULL_ARG);

  int64_t a = model_new(&m), x = -5;
  assert_int_equal(model_append(&m, a, 10), ATTN_OK);
  const int64_t free0 = attn_paged_free_blocks(m.pc);
  /* sequence ids out of range, freed, freed twice */
  assert_int_equal(model_append(&m, 99, 1), ATTN_ERR_INVALID_ARG);
  assert_non_null(strstr(attn_context_last_error(ctx), "seq"));
  assert_int_equal(model_append(&m, -1, 1), ATTN_ERR_INVALID_ARG);
  assert_int_equal(model_append(&m, 3, 1), ATTN_ERR_INVALID_ARG); /* never created */
  int64_t b = model_fork(&m, a);
  assert_int_equal(attn_paged_seq_free(m.pc, b), ATTN_OK);
  m.len[b] = -1;
  assert_int_equal(attn_paged_seq_free(m.pc, b), ATTN_ERR_INVALID_ARG); /* twice */
  assert_non_null(strstr(attn_context_last_error(ctx), "not live"));
  assert_int_equal(model_append(&m, b, 1), ATTN_ERR_INVALID_ARG); /* to a freed sequence */
  assert_int_equal(attn_paged_truncate(m.pc, b, 0), ATTN_ERR_INVALID_ARG);
  assert_int_equal(attn_paged_fork(m.pc, b, &x), ATTN_ERR_INVALID_ARG);
  assert_int_equal(x, -5);
  assert_int_equal(attn_paged_seq_free(m.pc, 1000), ATTN_ERR_INVALID_ARG);
  assert_int_equal(attn_paged_seq_length(m.pc, b), -1);
  assert_int_equal(attn_paged_seq_length(m.pc, 1000), -1);
  assert_int_equal(attn_paged_seq_length(NULL, 0), -1);
  /* lengths past capacity: truncate beyond, append beyond max_seq_len */
  assert_int_equal(attn_paged_truncate(m.pc, a, 11), ATTN_ERR_INVALID_ARG);
  assert_int_equal(attn_paged_truncate(m.pc, a, -1), ATTN_ERR_INVALID_ARG);
  assert_int_equal(model_append(&m, a, MAXL), ATTN_ERR_CAPACITY);
  /* shapes and dtypes of appended rows */
  {
    const int64_t s3[3] = {2, 3, 4}, bad3[3] = {1, 3, 4}, badd[3] = {2, 3, 5}, s4[4] = {1, 2, 3, 4};
    attn_tensor *k = tu_tensor(ctx, ATTN_DTYPE_F32, NULL, 3, s3);
    attn_tensor *kh = tu_tensor(ctx, ATTN_DTYPE_F32, NULL, 3, bad3);
    attn_tensor *kd = tu_tensor(ctx, ATTN_DTYPE_F32, NULL, 3, badd);
    attn_tensor *k64 = tu_tensor(ctx, ATTN_DTYPE_F64, NULL, 3, s3);
    attn_tensor *k4 = tu_tensor(ctx, ATTN_DTYPE_F32, NULL, 4, s4);
    const int64_t s2[3] = {2, 2, 4};
    attn_tensor *v2 = tu_tensor(ctx, ATTN_DTYPE_F32, NULL, 3, s2);
    assert_int_equal(attn_paged_append(m.pc, a, kh, k), ATTN_ERR_SHAPE);
    assert_int_equal(attn_paged_append(m.pc, a, kd, k), ATTN_ERR_SHAPE);
    assert_int_equal(attn_paged_append(m.pc, a, k, v2), ATTN_ERR_SHAPE);
    assert_non_null(strstr(attn_context_last_error(ctx), "v_new"));
    assert_int_equal(attn_paged_append(m.pc, a, k64, k64), ATTN_ERR_DTYPE);
    assert_int_equal(attn_paged_append(m.pc, a, k4, k), ATTN_ERR_SHAPE);
    assert_int_equal(attn_paged_append(m.pc, a, NULL, k), ATTN_ERR_NULL_ARG);
    assert_int_equal(attn_paged_append(NULL, a, k, k), ATTN_ERR_NULL_ARG);
    tu_tensor_free(k);
    tu_tensor_free(kh);
    tu_tensor_free(kd);
    tu_tensor_free(k64);
    tu_tensor_free(k4);
    tu_tensor_free(v2);
  }
  /* block table queries */
  int64_t ids[4], cnt = 0;
  assert_int_equal(attn_paged_block_table(m.pc, a, ids, 1, &cnt), ATTN_ERR_CAPACITY);
  assert_int_equal(cnt, 2);
  assert_int_equal(attn_paged_block_table(m.pc, a, ids, -1, &cnt), ATTN_ERR_INVALID_ARG);
  assert_int_equal(attn_paged_block_table(m.pc, a, NULL, 4, &cnt), ATTN_ERR_NULL_ARG);
  assert_int_equal(attn_paged_block_table(m.pc, 77, ids, 4, &cnt), ATTN_ERR_INVALID_ARG);
  /* nothing changed */
  assert_int_equal(attn_paged_seq_length(m.pc, a), 10);
  assert_int_equal(attn_paged_free_blocks(m.pc), free0);
  assert_int_equal(attn_paged_num_seqs(m.pc), 1);

  /* plans */
  attn_desc *d = NULL;
  assert_int_equal(attn_desc_create(ctx, &d), ATTN_OK);
  assert_int_equal(attn_desc_set_causal(d, ATTN_CAUSAL_BOTTOM_RIGHT), ATTN_OK);
  attn_tensor *q = tu_tensor4(ctx, ATTN_DTYPE_F32, NULL, 2, 4, 1, 4, false);
  attn_tensor *out = tu_tensor4(ctx, ATTN_DTYPE_F32, NULL, 2, 4, 1, 4, false);
  attn_tensor *q3 = tu_tensor4(ctx, ATTN_DTYPE_F32, NULL, 2, 3, 1, 4, false);
  attn_tensor *q64 = tu_tensor4(ctx, ATTN_DTYPE_F64, NULL, 2, 4, 1, 4, false);
  attn_tensor *o2 = tu_tensor4(ctx, ATTN_DTYPE_F32, NULL, 2, 4, 2, 4, false);
  attn_paged_plan *p = NULL;
  assert_int_equal(attn_paged_plan_create(ctx, m.pc, d, q3, out, NULL, &p), ATTN_ERR_SHAPE);
  assert_int_equal(attn_paged_plan_create(ctx, m.pc, d, q64, out, NULL, &p), ATTN_ERR_DTYPE);
  assert_int_equal(attn_paged_plan_create(ctx, m.pc, d, q, o2, NULL, &p), ATTN_ERR_SHAPE);
  assert_int_equal(attn_paged_plan_create(ctx, NULL, d, q, out, NULL, &p), ATTN_ERR_NULL_ARG);
  assert_int_equal(attn_paged_plan_create(NULL, m.pc, d, q, out, NULL, &p), ATTN_ERR_NULL_ARG);
  /* Sinks: a logit per query head (3 for 4 heads fails); a logit turned NaN
   * after planning fails the execute and writes nothing. */
  double sk[4] = {0.5, 0.5, 0.5, 0.5};
  assert_int_equal(attn_desc_set_sinks(d, sk, 3), ATTN_OK);
  assert_int_equal(attn_paged_plan_create(ctx, m.pc, d, q, out, NULL, &p), ATTN_ERR_SHAPE);
  assert_non_null(strstr(attn_context_last_error(ctx), "sinks"));
  assert_int_equal(attn_desc_set_sinks(d, sk, 4), ATTN_OK);
  assert_int_equal(attn_paged_plan_create(ctx, m.pc, d, q, out, NULL, &p), ATTN_OK);
  {
    const int64_t one[1] = {a};
    float *o = attn_tensor_data(out);
    for (int i = 0; i < 32; i++) o[i] = 7.0f;
    sk[2] = NAN;
    assert_int_equal(attn_paged_plan_execute(p, 1, one, q, out, NULL, NULL), ATTN_ERR_INVALID_ARG);
    assert_non_null(strstr(attn_context_last_error(ctx), "sinks"));
    for (int i = 0; i < 32; i++) assert_true(o[i] == 7.0f);
    sk[2] = 0.5;
    assert_int_equal(attn_paged_plan_execute(p, 1, one, q, out, NULL, NULL), ATTN_OK);
  }
  attn_paged_plan_destroy(p);
  p = NULL;
  assert_int_equal(attn_desc_set_sinks(d, NULL, 0), ATTN_OK);
  /* The key mass: [N, H or H_kv, max_seq_len] of the plan's dtype. */
  {
    const int64_t bad[3] = {2, 4, m.maxlen + 1}, good[3] = {2, 4, m.maxlen};
    attn_tensor *mb = tu_tensor(ctx, ATTN_DTYPE_F32, NULL, 3, bad);
    attn_tensor *m64 = tu_tensor(ctx, ATTN_DTYPE_F64, NULL, 3, good);
    assert_int_equal(attn_desc_set_key_mass(d, mb), ATTN_OK);
    assert_int_equal(attn_paged_plan_create(ctx, m.pc, d, q, out, NULL, &p), ATTN_ERR_SHAPE);
    assert_non_null(strstr(attn_context_last_error(ctx), "mass"));
    assert_int_equal(attn_desc_set_key_mass(d, m64), ATTN_OK);
    assert_int_equal(attn_paged_plan_create(ctx, m.pc, d, q, out, NULL, &p), ATTN_ERR_DTYPE);
    assert_null(p);
    assert_int_equal(attn_desc_set_key_mass(d, NULL), ATTN_OK);
    tu_tensor_free(mb);
    tu_tensor_free(m64);
  }
  attn_desc *tl = NULL;
  assert_int_equal(attn_desc_create(ctx, &tl), ATTN_OK);
  assert_int_equal(attn_desc_set_causal(tl, ATTN_CAUSAL_TOP_LEFT), ATTN_OK);
  assert_int_equal(attn_paged_plan_create(ctx, m.pc, tl, q, out, NULL, &p), ATTN_ERR_UNSUPPORTED);
  assert_null(p);
  assert_int_equal(attn_paged_plan_create(ctx, m.pc, d, q, out, NULL, &p), ATTN_OK);
  /* execute: nothing written on failure */
  float *od = attn_tensor_data(out);
  for (int i = 0; i < 2 * 4 * 4; i++) od[i] = 123.0f;
  int64_t ids2[2] = {a, 7};
  assert_int_equal(attn_paged_plan_execute(p, 2, ids2, q, out, NULL, NULL), ATTN_ERR_INVALID_ARG);
  assert_non_null(strstr(attn_context_last_error(ctx), "seq_ids[1]"));
  ids2[1] = -3;
  assert_int_equal(attn_paged_plan_execute(p, 2, ids2, q, out, NULL, NULL), ATTN_ERR_INVALID_ARG);
  ids2[1] = b; /* freed */
  assert_int_equal(attn_paged_plan_execute(p, 2, ids2, q, out, NULL, NULL), ATTN_ERR_INVALID_ARG);
  ids2[1] = a;
  assert_int_equal(attn_paged_plan_execute(p, 3, ids2, q, out, NULL, NULL), ATTN_ERR_INVALID_ARG);
  assert_int_equal(attn_paged_plan_execute(p, -1, ids2, q, out, NULL, NULL), ATTN_ERR_INVALID_ARG);
  assert_int_equal(attn_paged_plan_execute(p, 1, NULL, q, out, NULL, NULL), ATTN_ERR_NULL_ARG);
  const int64_t badc[2] = {1, 2};
  assert_int_equal(attn_paged_plan_execute(p, 2, ids2, q, out, NULL, badc), ATTN_ERR_INVALID_ARG);
  assert_non_null(strstr(attn_context_last_error(ctx), "query_counts[1]"));
  assert_int_equal(attn_paged_plan_execute(p, 2, ids2, q3, out, NULL, NULL), ATTN_ERR_MISMATCH);
  assert_int_equal(attn_paged_plan_execute(p, 2, ids2, q, out, out, NULL), ATTN_ERR_MISMATCH);
  assert_int_equal(attn_paged_plan_execute(NULL, 2, ids2, q, out, NULL, NULL), ATTN_ERR_NULL_ARG);
  for (int i = 0; i < 2 * 4 * 4; i++) assert_true(od[i] == 123.0f);
  /* count 0 writes nothing either, and is fine */
  assert_int_equal(attn_paged_plan_execute(p, 0, NULL, q, out, NULL, NULL), ATTN_OK);
  for (int i = 0; i < 2 * 4 * 4; i++) assert_true(od[i] == 123.0f);
  /* count 1: row 1 untouched */
  assert_int_equal(attn_paged_plan_execute(p, 1, ids2, q, out, NULL, NULL), ATTN_OK);
  for (int i = 16; i < 32; i++) assert_true(od[i] == 123.0f);
  assert_true(attn_paged_plan_workspace_size(p) > 0);
  assert_int_equal(attn_paged_plan_workspace_size(NULL), 0);
  attn_paged_plan_destroy(p);
  attn_paged_plan_destroy(NULL);
  attn_paged_destroy(NULL);
  assert_int_equal(attn_paged_free_blocks(NULL), 0);
  assert_int_equal(attn_paged_memory_size(NULL), 0);
  assert_true(attn_paged_memory_size(m.pc) > attn_paged_memory_used(m.pc));
  assert_int_equal(attn_paged_block_size(m.pc), 8);
  assert_int_equal(attn_paged_num_blocks(m.pc), 16);
  tu_tensor_free(q);
  tu_tensor_free(out);
  tu_tensor_free(q3);
  tu_tensor_free(q64);
  tu_tensor_free(o2);
  attn_desc_destroy(d);
  attn_desc_destroy(tl);
  model_free(&m);
  attn_context_destroy(ctx);
}

/* ---- no allocation after creation; no leaks ---------------------------------- */

static void test_no_alloc(void **state) {
  (void)state;
  tu_counter cnt = {0};
  attn_context *ctx = tu_counting_context(&cnt, 2);
  attn_paged_config cfg;
  attn_paged_config_init(&cfg);
  cfg.heads_kv = 2;
  cfg.d_k = 16;
  cfg.num_blocks = 64;
  cfg.block_size = 16;
  attn_paged_cache *pc = NULL;
  assert_int_equal(attn_paged_create(ctx, &cfg, &pc), ATTN_OK);
  const int64_t ks[3] = {2, 100, 16};
  attn_tensor *k = NULL, *v = NULL, *q = NULL, *out = NULL;
  assert_int_equal(attn_tensor_create(ctx, ATTN_DTYPE_F32, 3, ks, &k), ATTN_OK);
  assert_int_equal(attn_tensor_create(ctx, ATTN_DTYPE_F32, 3, ks, &v), ATTN_OK);
  const int64_t qs[4] = {4, 8, 1, 16};
  assert_int_equal(attn_tensor_create(ctx, ATTN_DTYPE_F32, 4, qs, &q), ATTN_OK);
  assert_int_equal(attn_tensor_create(ctx, ATTN_DTYPE_F32, 4, qs, &out), ATTN_OK);
  attn_desc *d = NULL;
  assert_int_equal(attn_desc_create(ctx, &d), ATTN_OK);
  attn_paged_plan *p = NULL;
  assert_int_equal(attn_paged_plan_create(ctx, pc, d, q, out, NULL, &p), ATTN_OK);
  const int64_t before = cnt.allocs;
  int64_t s[4];
  for (int i = 0; i < 4; i++) {
    assert_int_equal(attn_paged_seq_create(pc, &s[i]), ATTN_OK);
    assert_int_equal(attn_paged_append(pc, s[i], k, v), ATTN_OK);
  }
  int64_t f;
  assert_int_equal(attn_paged_fork(pc, s[0], &f), ATTN_OK);
  assert_int_equal(attn_paged_append(pc, f, k, v), ATTN_OK);
  for (int r = 0; r < 3; r++) assert_int_equal(attn_paged_plan_execute(p, 4, s, q, out, NULL, NULL), ATTN_OK);
  assert_int_equal(attn_paged_truncate(pc, s[1], 3), ATTN_OK);
  assert_int_equal(attn_paged_seq_free(pc, f), ATTN_OK);
  assert_int_equal(cnt.allocs, before);
  attn_paged_plan_destroy(p);
  attn_paged_destroy(pc);
  attn_desc_destroy(d);
  attn_tensor_destroy(k);
  attn_tensor_destroy(v);
  attn_tensor_destroy(q);
  attn_tensor_destroy(out);
  attn_context_destroy(ctx);
  assert_int_equal(cnt.outstanding_bytes, 0);
}

/* ---- several caller threads on one pool ---------------------------------------
 * Each thread has its own context and plan and owns one sequence: it appends
 * to it under the shared lock (mutations are serialised) and decodes it
 * without the lock, concurrently with the other threads' appends and
 * decodes. The outputs must equal a single-threaded replay. */

typedef struct worker {
  attn_paged_cache *pc;
  pthread_mutex_t *lock;
  int64_t seq;
  attn_tensor *k, *v, *q;
  float result[8 * 16];
  int ok;
} worker;

static void *worker_main(void *arg) {
  worker *w = arg;
  attn_context *ctx = NULL;
  attn_context_options o;
  attn_context_options_init(&o);
  o.num_threads = 2;
  if (attn_context_create(&o, &ctx) != ATTN_OK) return NULL;
  attn_tensor *out = NULL;
  const int64_t os[4] = {1, 8, 1, 16};
  attn_desc *d = NULL;
  attn_paged_plan *p = NULL;
  w->ok = attn_tensor_create(ctx, ATTN_DTYPE_F32, 4, os, &out) == ATTN_OK &&
          attn_desc_create(ctx, &d) == ATTN_OK &&
          attn_desc_set_causal(d, ATTN_CAUSAL_BOTTOM_RIGHT) == ATTN_OK &&
          attn_paged_plan_create(ctx, w->pc, d, w->q, out, NULL, &p) == ATTN_OK;
  for (int step = 0; step < 20 && w->ok; step++) {
    pthread_mutex_lock(w->lock);
    w->ok = attn_paged_append(w->pc, w->seq, w->k, w->v) == ATTN_OK;
    pthread_mutex_unlock(w->lock);
    if (w->ok) w->ok = attn_paged_plan_execute(p, 1, &w->seq, w->q, out, NULL, NULL) == ATTN_OK;
  }
  if (w->ok) memcpy(w->result, attn_tensor_data(out), sizeof w->result);
  attn_paged_plan_destroy(p);
  attn_desc_destroy(d);
  attn_tensor_destroy(out);
  attn_context_destroy(ctx);
  return NULL;
}

static void test_caller_threads(void **state) {
  (void)state;
  attn_context *ctx = tu_context(1);
  attn_paged_config cfg;
  attn_paged_config_init(&cfg);
  cfg.heads_kv = 2;
  cfg.d_k = 16;
  cfg.num_blocks = 256;
  cfg.block_size = 16;
  attn_paged_cache *pc = NULL;
  assert_int_equal(attn_paged_create(ctx, &cfg, &pc), ATTN_OK);
  pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
  enum { NW = 4 };
  worker w[NW];
  pthread_t th[NW];
  uint64_t rng = 7;
  int64_t prompt;
  assert_int_equal(attn_paged_seq_create(pc, &prompt), ATTN_OK);
  const int64_t ps[3] = {2, 40, 16};
  double *pk = tu_random(2 * 40 * 16, &rng);
  attn_tensor *tpk = tu_tensor(ctx, ATTN_DTYPE_F32, pk, 3, ps);
  assert_int_equal(attn_paged_append(pc, prompt, tpk, tpk), ATTN_OK); /* a shared prefix */
  for (int i = 0; i < NW; i++) {
    memset(&w[i], 0, sizeof w[i]);
    w[i].pc = pc;
    w[i].lock = &lock;
    assert_int_equal(attn_paged_fork(pc, prompt, &w[i].seq), ATTN_OK);
    const int64_t ks[3] = {2, 3, 16};
    double *k = tu_random(2 * 3 * 16, &rng), *v = tu_random(2 * 3 * 16, &rng), *q = tu_random(8 * 16, &rng);
    w[i].k = tu_tensor(ctx, ATTN_DTYPE_F32, k, 3, ks);
    w[i].v = tu_tensor(ctx, ATTN_DTYPE_F32, v, 3, ks);
    w[i].q = tu_tensor4(ctx, ATTN_DTYPE_F32, q, 1, 8, 1, 16, false);
    free(k);
    free(v);
    free(q);
  }
  for (int i = 0; i < NW; i++) assert_int_equal(pthread_create(&th[i], NULL, worker_main, &w[i]), 0);
  for (int i = 0; i < NW; i++) pthread_join(th[i], NULL);
  /* replay one thread at a time on fresh forks: the same results */
  for (int i = 0; i < NW; i++) {
    assert_true(w[i].ok);
    float got[8 * 16];
    memcpy(got, w[i].result, sizeof got);
    assert_int_equal(attn_paged_seq_free(pc, w[i].seq), ATTN_OK);
    assert_int_equal(attn_paged_fork(pc, prompt, &w[i].seq), ATTN_OK);
    worker_main(&w[i]);
    assert_true(w[i].ok);
    assert_memory_equal(got, w[i].result, sizeof got);
    tu_tensor_free(w[i].k);
    tu_tensor_free(w[i].v);
    tu_tensor_free(w[i].q);
  }
  free(pk);
  tu_tensor_free(tpk);
  attn_paged_destroy(pc);
  attn_context_destroy(ctx);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_ragged_f32),      cmocka_unit_test(test_ragged_f64),
      cmocka_unit_test(test_ragged_bf16),     cmocka_unit_test(test_ragged_block1),
      cmocka_unit_test(test_ragged_f16),
      cmocka_unit_test(test_masks),           cmocka_unit_test(test_chunked_prefill),
      cmocka_unit_test(test_fork_cow),        cmocka_unit_test(test_paged_equals_contiguous),
      cmocka_unit_test(test_out_of_blocks),   cmocka_unit_test(test_bad_input),
      cmocka_unit_test(test_no_alloc),        cmocka_unit_test(test_caller_threads),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}

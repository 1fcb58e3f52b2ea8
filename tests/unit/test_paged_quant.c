/* Paged KV cache with the contiguous cache's compact storages (f16, int8,
 * int4): every sequence has a mirror, a contiguous cache of the same
 * storage and group size that receives the same appends and rollbacks
 * (a fork copies its source's mirror byte for byte). The contiguous cache
 * is checked against the naive f64 reference in test_kvquant; here the
 * paged plan must give what the mirrors give, for ragged decode batches
 * (the hand-vectorised loops on views of block runs), speculative and
 * prefill chunks (GEMM on dequantized tiles), forks with copy-on-write of
 * a block holding a partial K group, and rollbacks into completed K groups
 * (whose rows return to the residual). Results are bitwise identical for
 * 1 and 3 threads. ctest runs this with ATTN_CPU=avx2 and =generic too. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cache/kvcache_internal.h"
#include "cache/paged_internal.h"
#include "testutil.h"

#define MAXS 8
#define MAXL 1024

typedef struct qmodel {
  attn_context *ctx;
  attn_paged_cache *pc;
  attn_kvcache *mir[MAXS]; /* one contiguous cache per live sequence */
  attn_kvcache_storage st;
  int64_t Hkv, Dk, Dv, bs, G;
  uint64_t rng;
} qmodel;

static void qm_init(qmodel *m, attn_kvcache_storage st, int64_t Hkv, int64_t Dk, int64_t Dv,
                    int64_t bs, int64_t G, int64_t nblocks) {
  memset(m, 0, sizeof *m);
  m->ctx = tu_context(1);
  m->st = st;
  m->Hkv = Hkv;
  m->Dk = Dk;
  m->Dv = Dv;
  m->bs = bs;
  m->G = G;
  m->rng = 0x2545f4914f6cdd1dull ^ (uint64_t)st;
  attn_paged_config cfg;
  attn_paged_config_init(&cfg);
  cfg.heads_kv = Hkv;
  cfg.d_k = Dk;
  cfg.d_v = Dv;
  cfg.block_size = bs;
  cfg.num_blocks = nblocks;
  cfg.max_seqs = MAXS;
  cfg.max_seq_len = nblocks * bs < MAXL ? nblocks * bs : MAXL;
  cfg.storage = st;
  cfg.group_size = G;
  attn_status s = attn_paged_create(m->ctx, &cfg, &m->pc);
  if (s != ATTN_OK) print_message("%s\n", attn_context_last_error(m->ctx));
  assert_int_equal(s, ATTN_OK);
}

static attn_kvcache *mirror_new(qmodel *m) {
  attn_kvcache_config cfg;
  attn_kvcache_config_init(&cfg);
  cfg.heads_kv = m->Hkv;
  cfg.capacity = MAXL;
  cfg.d_k = m->Dk;
  cfg.d_v = m->Dv;
  cfg.storage = m->st;
  cfg.group_size = m->G;
  attn_kvcache *c = NULL;
  assert_int_equal(attn_kvcache_create(m->ctx, &cfg, &c), ATTN_OK);
  return c;
}

static void qm_free(qmodel *m) {
  for (int s = 0; s < MAXS; s++) attn_kvcache_destroy(m->mir[s]);
  attn_paged_destroy(m->pc);
  attn_context_destroy(m->ctx);
}

static int64_t qm_new(qmodel *m) {
  int64_t s = -1;
  assert_int_equal(attn_paged_seq_create(m->pc, &s), ATTN_OK);
  m->mir[s] = mirror_new(m);
  return s;
}

static int64_t qm_fork(qmodel *m, int64_t src) {
  int64_t s = -1;
  assert_int_equal(attn_paged_fork(m->pc, src, &s), ATTN_OK);
  attn_kvcache *d = mirror_new(m);
  const attn_kvcache *f = m->mir[src];
  memcpy(d->k, f->k, f->k_bytes);
  memcpy(d->v, f->v, f->v_bytes);
  if (f->store->quant) {
    memcpy(d->ks, f->ks, f->ks_bytes);
    memcpy(d->vs, f->vs, f->vs_bytes);
    memcpy(d->kres, f->kres, f->kres_bytes);
  }
  d->len[0] = f->len[0];
  m->mir[s] = d;
  return s;
}

static void qm_drop(qmodel *m, int64_t s) {
  assert_int_equal(attn_paged_seq_free(m->pc, s), ATTN_OK);
  attn_kvcache_destroy(m->mir[s]);
  m->mir[s] = NULL;
}

/* n random positions appended to seq and its mirror; K channels carry
 * offsets (as real keys do), so the per-channel groups matter. */
static void qm_append(qmodel *m, int64_t s, int64_t n) {
  const int64_t nk = m->Hkv * n * m->Dk, nv = m->Hkv * n * m->Dv;
  double *k = malloc((size_t)(nk + 1) * sizeof(double)), *v = malloc((size_t)(nv + 1) * sizeof(double));
  for (int64_t i = 0; i < nk; i++) k[i] = tu_uniform(&m->rng, -1, 1) + 0.25 * (double)(i % m->Dk % 5);
  for (int64_t i = 0; i < nv; i++) v[i] = tu_uniform(&m->rng, -1, 1);
  const int64_t ks[3] = {m->Hkv, n, m->Dk}, vs[3] = {m->Hkv, n, m->Dv};
  attn_tensor *tk = tu_tensor(m->ctx, ATTN_DTYPE_F32, k, 3, ks);
  attn_tensor *tv = tu_tensor(m->ctx, ATTN_DTYPE_F32, v, 3, vs);
  attn_tensor *mk = tu_tensor4(m->ctx, ATTN_DTYPE_F32, k, 1, m->Hkv, n, m->Dk, false);
  attn_tensor *mv = tu_tensor4(m->ctx, ATTN_DTYPE_F32, v, 1, m->Hkv, n, m->Dv, false);
  attn_status st = attn_paged_append(m->pc, s, tk, tv);
  if (st != ATTN_OK) print_message("%s\n", attn_context_last_error(m->ctx));
  assert_int_equal(st, ATTN_OK);
  assert_int_equal(attn_kvcache_append(m->mir[s], mk, mv, NULL), ATTN_OK);
  tu_tensor_free(tk);
  tu_tensor_free(tv);
  tu_tensor_free(mk);
  tu_tensor_free(mv);
  free(k);
  free(v);
}

static void qm_truncate(qmodel *m, int64_t s, int64_t len) {
  assert_int_equal(attn_paged_truncate(m->pc, s, len), ATTN_OK);
  assert_int_equal(attn_kvcache_truncate(m->mir[s], &len), ATTN_OK);
}

/* A desc: causal bottom-right, optionally a window, ALiBi and softcap. */
static attn_desc *make_desc(attn_context *ctx, bool masks, int64_t H, double *slopes) {
  attn_desc *d = NULL;
  assert_int_equal(attn_desc_create(ctx, &d), ATTN_OK);
  assert_int_equal(attn_desc_set_causal(d, ATTN_CAUSAL_BOTTOM_RIGHT), ATTN_OK);
  if (masks) {
    for (int64_t h = 0; h < H; h++) slopes[h] = 0.02 * (double)(h + 1);
    assert_int_equal(attn_desc_set_window(d, 200, 0), ATTN_OK);
    assert_int_equal(attn_desc_set_alibi(d, slopes, H), ATTN_OK);
    assert_int_equal(attn_desc_set_softcap(d, 20.0), ATTN_OK);
  }
  return d;
}

/* Rows seqs[0..count) with n queries of H heads each: the paged plan (1
 * and 3 threads, same bits) against each row's mirror. */
static void check(qmodel *m, int64_t count, const int64_t *seqs, int64_t H, int64_t n,
                  bool masks) {
  const int64_t Dk = m->Dk, Dv = m->Dv;
  double slopes[32];
  attn_desc *d = make_desc(m->ctx, masks, H, slopes);
  double *q = tu_random((size_t)(count * H * n * Dk), &m->rng);
  attn_tensor *tq = tu_tensor4(m->ctx, ATTN_DTYPE_F32, q, count, H, n, Dk, false);
  const size_t no = (size_t)(count * H * n * Dv);
  double *got = malloc(no * sizeof(double)), *lse = malloc((size_t)(count * H * n) * sizeof(double));
  float *first = malloc(no * sizeof(float));
  for (int32_t th = 1; th <= 3; th += 2) {
    attn_context *c = tu_context(th);
    attn_tensor *to = tu_tensor4(c, ATTN_DTYPE_F32, NULL, count, H, n, Dv, false);
    const int64_t ls[3] = {count, H, n};
    attn_tensor *tl = tu_tensor(c, ATTN_DTYPE_F32, NULL, 3, ls);
    attn_paged_plan *p = NULL;
    attn_status st = attn_paged_plan_create(c, m->pc, d, tq, to, tl, &p);
    if (st == ATTN_OK) st = attn_paged_plan_execute(p, count, seqs, tq, to, tl, NULL);
    if (st != ATTN_OK) print_message("%s\n", attn_context_last_error(c));
    assert_int_equal(st, ATTN_OK);
    if (th == 1) {
      memcpy(first, attn_tensor_data(to), no * sizeof(float));
      tu_read(to, got);
      tu_read(tl, lse);
    } else {
      assert_memory_equal(first, attn_tensor_data(to), no * sizeof(float));
    }
    attn_paged_plan_destroy(p);
    tu_tensor_free(to);
    tu_tensor_free(tl);
    attn_context_destroy(c);
  }
  for (int64_t b = 0; b < count; b++) {
    attn_tensor *q1 = tu_tensor4(m->ctx, ATTN_DTYPE_F32, q + b * H * n * Dk, 1, H, n, Dk, false);
    attn_tensor *o1 = tu_tensor4(m->ctx, ATTN_DTYPE_F32, NULL, 1, H, n, Dv, false);
    const int64_t ls[3] = {1, H, n};
    attn_tensor *l1 = tu_tensor(m->ctx, ATTN_DTYPE_F32, NULL, 3, ls);
    attn_kvcache_plan *kp = NULL;
    assert_int_equal(attn_kvcache_plan_create(m->mir[seqs[b]], d, q1, o1, l1, &kp), ATTN_OK);
    assert_int_equal(attn_kvcache_plan_execute(kp, q1, o1, l1, NULL), ATTN_OK);
    double *want = malloc((size_t)(H * n * Dv) * sizeof(double));
    double *wl = malloc((size_t)(H * n) * sizeof(double));
    tu_read(o1, want);
    tu_read(l1, wl);
    double err, errl;
    const size_t bad = tu_violations(got + b * H * n * Dv, want, NULL, (size_t)(H * n * Dv), 1e-5,
                                     1e-5, &err);
    const size_t badl = tu_violations(lse + b * H * n, wl, NULL, (size_t)(H * n), 1e-5, 1e-5, &errl);
    if (bad || badl)
      print_message("%s: row %ld (seq %ld, length %ld) n %ld: %zu out (max err %g), %zu lse off\n",
                    attn_kv_store_row(m->st)->name, (long)b, (long)seqs[b],
                    (long)attn_paged_seq_length(m->pc, seqs[b]), (long)n, bad, err, badl);
    assert_int_equal(bad, 0);
    assert_int_equal(badl, 0);
    free(want);
    free(wl);
    attn_kvcache_plan_destroy(kp);
    tu_tensor_free(q1);
    tu_tensor_free(o1);
    tu_tensor_free(l1);
  }
  free(first);
  free(got);
  free(lse);
  free(q);
  tu_tensor_free(tq);
  attn_desc_destroy(d);
}

static const attn_kvcache_storage kStores[3] = {ATTN_KVCACHE_STORE_F16, ATTN_KVCACHE_STORE_INT8,
                                                ATTN_KVCACHE_STORE_INT4};

/* ---- ragged batches: decode (G·n ≤ 8: the vector loops), speculative and
 * prefill chunks (GEMM), with and without window/ALiBi/softcap ---------------- */

static void test_ragged(void **state) {
  (void)state;
  for (int si = 0; si < 3; si++) {
    qmodel m;
    qm_init(&m, kStores[si], 2, 64, 32, 32, 16, 96);
    const int64_t lens[4] = {1, 47, 300, tu_quick() ? 400 : 700};
    int64_t seqs[4];
    for (int i = 0; i < 4; i++) seqs[i] = qm_new(&m);
    /* appended in turns, so the sequences' blocks interleave in the pool */
    for (int64_t done = 0; done < lens[3]; done += 29)
      for (int i = 0; i < 4; i++)
        if (done < lens[i]) qm_append(&m, seqs[i], lens[i] - done < 29 ? lens[i] - done : 29);
    check(&m, 4, seqs, 8, 1, false); /* G = 4 rows per kv head: vector loops */
    check(&m, 4, seqs, 8, 1, true);
    check(&m, 3, seqs + 1, 4, 2, false); /* 4 rows */
    check(&m, 3, seqs + 1, 8, 12, true);  /* speculative: split path, GEMM */
    check(&m, 2, seqs + 2, 8, 40, false); /* prefill chunk: blocked path */
    qm_free(&m);
  }
}

/* ---- forks, copy-on-write, rollback into completed K groups ------------------ */

static void test_fork_rollback(void **state) {
  (void)state;
  for (int si = 0; si < 3; si++) {
    qmodel m;
    qm_init(&m, kStores[si], 2, 32, 32, 16, 8, 48);
    const int64_t a = qm_new(&m);
    qm_append(&m, a, 45); /* 3 blocks; the last holds one K group and 5 residual rows */
    const int64_t free0 = attn_paged_free_blocks(m.pc);
    const int64_t b = qm_fork(&m, a), c = qm_fork(&m, a);
    assert_int_equal(attn_paged_free_blocks(m.pc), free0);
    qm_append(&m, b, 3); /* completes b's group: copy of the shared last block */
    assert_int_equal(attn_paged_free_blocks(m.pc), free0 - 1);
    qm_append(&m, a, 30);
    qm_append(&m, c, 2);
    const int64_t all[3] = {a, b, c};
    check(&m, 3, all, 4, 1, false);
    /* rollback a into a completed group of the prefix it shares with c, then
     * write past it: c reads the same */
    qm_truncate(&m, a, 21);
    qm_append(&m, a, 12);
    check(&m, 3, all, 4, 1, false);
    check(&m, 3, all, 4, 5, true);
    /* rollback to a group boundary and to zero, then refill */
    qm_truncate(&m, b, 40);
    qm_append(&m, b, 3);
    qm_truncate(&m, c, 0);
    qm_append(&m, c, 17);
    check(&m, 3, all, 4, 1, false);
    /* a fork of a fork after its rollback, both written */
    const int64_t d = qm_fork(&m, a);
    qm_append(&m, d, 7);
    qm_append(&m, a, 1);
    const int64_t four[4] = {a, b, c, d};
    check(&m, 4, four, 8, 1, false);
    qm_drop(&m, a);
    qm_drop(&m, b);
    qm_drop(&m, c);
    qm_drop(&m, d);
    assert_int_equal(attn_paged_free_blocks(m.pc), 48);
    assert_int_equal(attn_paged_memory_used(m.pc), 0);
    qm_free(&m);
  }
}

/* ---- sizes and bad configurations --------------------------------------------- */

static void test_config(void **state) {
  (void)state;
  attn_context *ctx = tu_context(1);
  attn_paged_config cfg;
  attn_paged_config_init(&cfg);
  assert_int_equal(cfg.group_size, 0);
  cfg.heads_kv = 2;
  cfg.d_k = 128;
  cfg.block_size = 64;
  cfg.num_blocks = 32;
  size_t bytes[5];
  for (int st = 0; st < 5; st++) {
    cfg.storage = (attn_kvcache_storage)st;
    attn_paged_cache *pc = NULL;
    assert_int_equal(attn_paged_create(ctx, &cfg, &pc), ATTN_OK);
    int64_t s;
    assert_int_equal(attn_paged_seq_create(pc, &s), ATTN_OK);
    double *x = tu_random((size_t)(2 * 64 * 128), &(uint64_t){7});
    const int64_t sh[3] = {2, 64, 128};
    attn_tensor *t = tu_tensor(ctx, ATTN_DTYPE_F32, x, 3, sh);
    assert_int_equal(attn_paged_append(pc, s, t, t), ATTN_OK);
    bytes[st] = attn_paged_memory_used(pc); /* one block */
    tu_tensor_free(t);
    free(x);
    attn_paged_destroy(pc);
  }
  /* per element, scales included (G = 64 at d = 128): f32 4, bf16/f16 2,
   * int8 1 + 4/64, int4 0.5 + 4/64 */
  const size_t elems = 2 * 64 * 256;
  assert_int_equal(bytes[ATTN_KVCACHE_STORE_NATIVE], elems * 4);
  assert_int_equal(bytes[ATTN_KVCACHE_STORE_BF16], elems * 2);
  assert_int_equal(bytes[ATTN_KVCACHE_STORE_F16], elems * 2);
  assert_int_equal(bytes[ATTN_KVCACHE_STORE_INT8], elems + elems / 16);
  assert_int_equal(bytes[ATTN_KVCACHE_STORE_INT4], elems / 2 + elems / 16);

  attn_paged_cache *pc = NULL;
  cfg.storage = ATTN_KVCACHE_STORE_INT8;
  cfg.group_size = 48; /* divides neither d_v nor the block */
  assert_int_equal(attn_paged_create(ctx, &cfg, &pc), ATTN_ERR_INVALID_ARG);
  assert_non_null(strstr(attn_context_last_error(ctx), "group_size"));
  cfg.group_size = 128; /* divides d_v, not the block of 64 */
  assert_int_equal(attn_paged_create(ctx, &cfg, &pc), ATTN_ERR_INVALID_ARG);
  assert_non_null(strstr(attn_context_last_error(ctx), "block_size"));
  cfg.group_size = -1;
  assert_int_equal(attn_paged_create(ctx, &cfg, &pc), ATTN_ERR_INVALID_ARG);
  cfg.group_size = 0;
  cfg.block_size = 24; /* default group: 8, the largest power of two dividing both */
  assert_int_equal(attn_paged_create(ctx, &cfg, &pc), ATTN_OK);
  assert_int_equal(pc->gs, 8);
  attn_paged_destroy(pc);
  pc = NULL;
  cfg.dtype = ATTN_DTYPE_F64;
  assert_int_equal(attn_paged_create(ctx, &cfg, &pc), ATTN_ERR_DTYPE);
  cfg.storage = ATTN_KVCACHE_STORE_F16;
  assert_int_equal(attn_paged_create(ctx, &cfg, &pc), ATTN_ERR_DTYPE);
  cfg.dtype = ATTN_DTYPE_F32;
  cfg.storage = (attn_kvcache_storage)9;
  assert_int_equal(attn_paged_create(ctx, &cfg, &pc), ATTN_ERR_INVALID_ARG);
  assert_null(pc);
  attn_context_destroy(ctx);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_ragged),
      cmocka_unit_test(test_fork_rollback),
      cmocka_unit_test(test_config),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}

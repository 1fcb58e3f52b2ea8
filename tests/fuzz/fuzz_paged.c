/* libFuzzer target: the paged KV cache driven by a program of operations
 * (create a sequence, append, fork, truncate, free, decode a ragged batch,
 * prefill a chunk) read from the input, with ids, lengths and counts that
 * are often out of range, on pools of arbitrary (often invalid) shapes.
 * A shadow model keeps every sequence's rows. Traps when:
 *  - a status is not the one the model predicts (out of range or freed ids
 *    → INVALID_ARG, too few free blocks or past max_seq_len → CAPACITY);
 *  - a failing call changes anything (lengths, block tables, free blocks)
 *    or writes an output;
 *  - the free-block count is not num_blocks minus the distinct blocks the
 *    live sequences' tables reference;
 *  - an execute differs from the naive f64 reference over the sequence's
 *    rows by more than 1e-4 (f32) / 1e-9 (f64) relative (the data are
 *    multiples of 1/64 in [−1, 1], exact in f32, f64, bf16 and f16
 *    storage, dims ≤ 9; int8 storage: 0.05, int4: 1.0, which only catches
 *    gross errors, its quantization error being up to 1/15 per element), with
 *    sink logits or not; its per-key mass (per head or per KV head, when
 *    asked) differs from the column sums of the reference weights by as
 *    much; or a 2-thread context does not give the same bits as a 1-thread
 *    one;
 *  - anything leaks. */
#include <math.h>

#include "fuzz_common.h"
#include "testutil.h"

#define MAXS 5
#define MAXL 400

static fz_alloc g_alloc;
static attn_context *g_ctx, *g_ctx2;
static int64_t g_base = -1;

typedef struct shadow {
  int64_t Hkv, Dk, Dv, bs, nblocks, max_seqs, max_len;
  attn_dtype dt;
  attn_kvcache_storage storage;
  int64_t len[MAXS]; /* −1 free */
  double K[MAXS][3][MAXL][9], V[MAXS][3][MAXL][9];
} shadow;
static shadow g_sh;

static void snapshot(attn_paged_cache *pc, const shadow *s, int64_t *lens, int64_t tabs[MAXS][MAXL],
                     int64_t *nfree) {
  for (int64_t i = 0; i < s->max_seqs; i++) {
    lens[i] = attn_paged_seq_length(pc, i);
    int64_t cnt = 0;
    if (lens[i] >= 0)
      FZ_CHECK(attn_paged_block_table(pc, i, tabs[i], MAXL, &cnt) == ATTN_OK, "block table");
  }
  *nfree = attn_paged_free_blocks(pc);
}

/* Lengths and tables match the model; free blocks = pool − distinct in use. */
static void check_invariants(attn_paged_cache *pc, const shadow *s) {
  static uint8_t used[MAXL * 8];
  memset(used, 0, sizeof used);
  int64_t distinct = 0;
  for (int64_t i = 0; i < s->max_seqs; i++) {
    FZ_CHECK(attn_paged_seq_length(pc, i) == s->len[i], "seq %lld length %lld, model %lld",
             (long long)i, (long long)attn_paged_seq_length(pc, i), (long long)s->len[i]);
    if (s->len[i] < 0) continue;
    int64_t ids[MAXL], cnt = -1;
    FZ_CHECK(attn_paged_block_table(pc, i, ids, MAXL, &cnt) == ATTN_OK, "block table");
    FZ_CHECK(cnt == (s->len[i] + s->bs - 1) / s->bs, "seq %lld: %lld blocks", (long long)i, (long long)cnt);
    for (int64_t b = 0; b < cnt; b++) {
      FZ_CHECK(ids[b] >= 0 && ids[b] < s->nblocks, "block id %lld", (long long)ids[b]);
      if (!used[ids[b]]) distinct++;
      used[ids[b]] = 1;
    }
  }
  FZ_CHECK(attn_paged_free_blocks(pc) == s->nblocks - distinct, "free %lld, expected %lld",
           (long long)attn_paged_free_blocks(pc), (long long)(s->nblocks - distinct));
}

static bool live(const shadow *s, int64_t id) { return id >= 0 && id < s->max_seqs && s->len[id] >= 0; }

static int64_t pick_id(fz *f, const shadow *s) {
  return fz_u8(f) % 8 == 0 ? fz_i64(f) : (int64_t)(fz_u8(f) % (uint64_t)s->max_seqs);
}

/* Blocks an append of n would need (new ones plus a copy of a shared last block). */
static int64_t blocks_needed(attn_paged_cache *pc, const shadow *s, int64_t id, int64_t n) {
  const int64_t len = s->len[id], have = (len + s->bs - 1) / s->bs, need = (len + n + s->bs - 1) / s->bs;
  int64_t extra = 0;
  if (len % s->bs != 0) {
    int64_t mine[MAXL], cnt, other[MAXL], oc, last;
    attn_paged_block_table(pc, id, mine, MAXL, &cnt);
    last = mine[have - 1];
    for (int64_t j = 0; j < s->max_seqs && !extra; j++) {
      if (j == id || s->len[j] < 0) continue;
      attn_paged_block_table(pc, j, other, MAXL, &oc);
      for (int64_t b = 0; b < oc; b++)
        if (other[b] == last) extra = 1;
    }
  }
  return need - have + extra;
}

static attn_status op_append(fz *f, attn_paged_cache *pc, shadow *s) {
  const int64_t id = pick_id(f, s), n = fz_range(f, 1, 24); /* tensors have dims >= 1 */
  const int64_t ks[3] = {s->Hkv, n, s->Dk}, vs[3] = {s->Hkv, n, s->Dv};
  double k[3 * 24 * 9 + 1], v[3 * 24 * 9 + 1];
  for (int64_t i = 0; i < s->Hkv * n * s->Dk; i++) k[i] = (double)((int)fz_range(f, 0, 128) - 64) / 64.0;
  for (int64_t i = 0; i < s->Hkv * n * s->Dv; i++) v[i] = (double)((int)fz_range(f, 0, 128) - 64) / 64.0;
  attn_tensor *tk = tu_tensor(g_ctx, s->dt, k, 3, ks), *tv = tu_tensor(g_ctx, s->dt, v, 3, vs);
  FZ_CHECK(tk && tv, "tensors");
  attn_status want = ATTN_OK;
  if (!live(s, id)) want = ATTN_ERR_INVALID_ARG;
  else if (s->len[id] + n > s->max_len || blocks_needed(pc, s, id, n) > attn_paged_free_blocks(pc))
    want = n == 0 ? ATTN_OK : ATTN_ERR_CAPACITY;
  attn_status st = attn_paged_append(pc, id, tk, tv);
  FZ_CHECK(st == want, "append(%lld, %lld): %d, expected %d: %s", (long long)id, (long long)n,
           (int)st, (int)want, attn_context_last_error(g_ctx));
  if (st == ATTN_OK) {
    for (int64_t h = 0; h < s->Hkv; h++)
      for (int64_t r = 0; r < n; r++) {
        for (int64_t x = 0; x < s->Dk; x++) s->K[id][h][s->len[id] + r][x] = k[(h * n + r) * s->Dk + x];
        for (int64_t x = 0; x < s->Dv; x++) s->V[id][h][s->len[id] + r][x] = v[(h * n + r) * s->Dv + x];
      }
    s->len[id] += n;
  }
  tu_tensor_free(tk);
  tu_tensor_free(tv);
  return st;
}

/* A call over `count` rows; compare with the reference and the 2-thread plan. */
static void op_execute(fz *f, attn_paged_cache *pc, shadow *s) {
  const int64_t N = fz_range(f, 1, 3), n = fz_u8(f) % 4 == 0 ? fz_range(f, 17, 30) : fz_range(f, 1, 4);
  const int64_t G = fz_range(f, 1, 3), H = G * s->Hkv;
  const bool causal = fz_bool(f), lse_on = fz_bool(f);
  const int64_t left = fz_bool(f) ? fz_range(f, 0, 40) : -1;
  const bool sinks_on = fz_u8(f) % 3 == 0;
  const int mass = fz_u8(f) % 3; /* 0 none, 1 per head, 2 per KV head */
  double sinks[9];
  for (int64_t h = 0; h < H; h++)
    sinks[h] = fz_u8(f) % 5 == 0 ? -INFINITY : (double)((int)fz_range(f, 0, 64) - 32) / 16.0;
  attn_desc *d = NULL;
  FZ_CHECK(attn_desc_create(g_ctx, &d) == ATTN_OK, "desc");
  if (causal) attn_desc_set_causal(d, ATTN_CAUSAL_BOTTOM_RIGHT);
  if (left >= 0) attn_desc_set_window(d, left, causal ? 0 : left);
  if (sinks_on) FZ_CHECK(attn_desc_set_sinks(d, sinks, H) == ATTN_OK, "sinks");
  const int64_t mh = mass == 2 ? s->Hkv : H, ms[3] = {N, mh, s->max_len};
  attn_tensor *m1 = mass ? tu_tensor(g_ctx, s->dt, NULL, 3, ms) : NULL;
  attn_tensor *m2 = mass ? tu_tensor(g_ctx, s->dt, NULL, 3, ms) : NULL;
  double q[3 * 9 * 30 * 9];
  for (int64_t i = 0; i < N * H * n * s->Dk; i++) q[i] = (double)((int)fz_range(f, 0, 128) - 64) / 64.0;
  attn_tensor *tq = tu_tensor4(g_ctx, s->dt, q, N, H, n, s->Dk, false);
  attn_tensor *o1 = tu_tensor4(g_ctx, s->dt, NULL, N, H, n, s->Dv, false);
  attn_tensor *o2 = tu_tensor4(g_ctx, s->dt, NULL, N, H, n, s->Dv, false);
  const int64_t ls[3] = {N, H, n};
  attn_tensor *l1 = lse_on ? tu_tensor(g_ctx, s->dt, NULL, 3, ls) : NULL;
  attn_tensor *l2 = lse_on ? tu_tensor(g_ctx, s->dt, NULL, 3, ls) : NULL;
  attn_paged_plan *p1 = NULL, *p2 = NULL;
  if (m1) attn_desc_set_key_mass(d, m1);
  attn_status st1 = attn_paged_plan_create(g_ctx, pc, d, tq, o1, l1, &p1);
  if (m2) attn_desc_set_key_mass(d, m2);
  attn_status st2 = attn_paged_plan_create(g_ctx2, pc, d, tq, o2, l2, &p2);
  FZ_CHECK(st1 == st2, "plan statuses differ");
  if (st1 != ATTN_OK) {
    FZ_CHECK(st1 == ATTN_ERR_NO_MEMORY && p1 == NULL, "plan: %s", attn_context_last_error(g_ctx));
    goto out;
  }
  const int64_t count = fz_u8(f) % 6 == 0 ? fz_i64(f) : fz_range(f, 0, N);
  int64_t ids[3], cnts[3];
  const bool use_counts = fz_bool(f);
  attn_status want = count < 0 || count > N ? ATTN_ERR_INVALID_ARG : ATTN_OK;
  for (int64_t b = 0; b < 3; b++) {
    ids[b] = pick_id(f, s);
    cnts[b] = fz_u8(f) % 8 == 0 ? fz_i64(f) : fz_range(f, 0, n);
    if (want == ATTN_OK && b < count) {
      const int64_t nb = use_counts ? cnts[b] : n;
      if (!live(s, ids[b]) || nb < 0 || nb > n || nb > s->len[ids[b]]) want = ATTN_ERR_INVALID_ARG;
    }
  }
  const size_t es = s->dt == ATTN_DTYPE_F64 ? 8 : 4, ob = (size_t)(N * H * n * s->Dv) * es;
  memset(attn_tensor_data(o1), 0x5a, ob);
  memset(attn_tensor_data(o2), 0x5a, ob);
  const int64_t before = g_alloc.count;
  attn_status st = attn_paged_plan_execute(p1, count, ids, tq, o1, l1, use_counts ? cnts : NULL);
  FZ_CHECK(g_alloc.count == before, "execute allocated");
  FZ_CHECK(st == want, "execute: %d, expected %d: %s", (int)st, (int)want, attn_context_last_error(g_ctx));
  FZ_CHECK(attn_paged_plan_execute(p2, count, ids, tq, o2, l2, use_counts ? cnts : NULL) == st, "2 threads");
  FZ_CHECK(memcmp(attn_tensor_data(o1), attn_tensor_data(o2), ob) == 0, "1 vs 2 threads differ");
  const size_t mb = (size_t)(N * mh * s->max_len) * es;
  if (m1 && st == ATTN_OK)
    FZ_CHECK(memcmp(attn_tensor_data(m1), attn_tensor_data(m2), mb) == 0, "mass: 1 vs 2 threads differ");
  if (st != ATTN_OK) {
    for (size_t i = 0; i < ob; i++) FZ_CHECK(((uint8_t *)attn_tensor_data(o1))[i] == 0x5a, "written on failure");
    goto out;
  }
  double got[3 * 9 * 30 * 9];
  tu_read(o1, got);
  for (int64_t b = 0; b < count; b++) {
    const int64_t sid = ids[b], L = s->len[sid], nb = use_counts ? cnts[b] : n;
    if (nb == 0) continue;
    /* An L-row problem with the queries at rows L − nb + i: with top-left
     * alignment a row index is the absolute position. */
    ref_problem p;
    ref_problem_init(&p, 1, H, L, L, s->Dk);
    p.Hkv = s->Hkv;
    p.Dv = s->Dv;
    p.causal = causal ? 1 : 0;
    p.left = left;
    p.right = left >= 0 ? (causal ? 0 : left) : -1;
    static double rk[3 * MAXL * 9], rv[3 * MAXL * 9], rq[9 * MAXL * 9], ro[9 * MAXL * 9];
    memset(rq, 0, sizeof rq);
    for (int64_t h = 0; h < s->Hkv; h++)
      for (int64_t j = 0; j < L; j++) {
        for (int64_t x = 0; x < s->Dk; x++) rk[(h * L + j) * s->Dk + x] = s->K[sid][h][j][x];
        for (int64_t x = 0; x < s->Dv; x++) rv[(h * L + j) * s->Dv + x] = s->V[sid][h][j][x];
      }
    for (int64_t h = 0; h < H; h++)
      for (int64_t i = 0; i < nb; i++)
        for (int64_t x = 0; x < s->Dk; x++)
          rq[(h * L + L - nb + i) * s->Dk + x] = q[((b * H + h) * n + i) * s->Dk + x];
    p.sink = sinks_on ? sinks : NULL;
    double *rw = mass ? malloc((size_t)(H * L * L) * sizeof(double)) : NULL;
    ref_attention(&p, rq, rk, rv, ro, rw, NULL, NULL);
    const double tol = s->dt == ATTN_DTYPE_F64                   ? 1e-9
                       : s->storage == ATTN_KVCACHE_STORE_INT8 ? 0.05
                       : s->storage == ATTN_KVCACHE_STORE_INT4 ? 1.0
                                                               : 1e-4;
    if (mass) { /* column sums of the reference weights of the row's queries */
      double *gm = malloc((size_t)(mh * s->max_len) * sizeof(double));
      double all[3 * 9 * MAXL];
      tu_read(m1, all);
      for (int64_t x = 0; x < mh * s->max_len; x++) gm[x] = 0;
      for (int64_t h = 0; h < H; h++)
        for (int64_t i = 0; i < nb; i++)
          for (int64_t j = 0; j < L; j++)
            gm[(mass == 2 ? h / G : h) * s->max_len + j] += rw[(h * L + L - nb + i) * L + j];
      for (int64_t x = 0; x < mh * s->max_len; x++) {
        const double g = all[b * mh * s->max_len + x];
        FZ_CHECK(fabs(g - gm[x]) <= tol * (1 + fabs(gm[x])), "row %lld mass[%lld] = %g vs %g",
                 (long long)b, (long long)x, g, gm[x]);
      }
      free(gm);
    }
    free(rw);
    for (int64_t h = 0; h < H; h++)
      for (int64_t i = 0; i < n; i++)
        for (int64_t x = 0; x < s->Dv; x++) {
          const double g = got[((b * H + h) * n + i) * s->Dv + x];
          const double r = i < nb ? ro[(h * L + L - nb + i) * s->Dv + x] : 0.0;
          FZ_CHECK(fabs(g - r) <= tol * (1 + fabs(r)), "row %lld head %lld q %lld: %g vs %g",
                   (long long)b, (long long)h, (long long)i, g, r);
        }
  }
out:
  attn_paged_plan_destroy(p1);
  attn_paged_plan_destroy(p2);
  tu_tensor_free(tq);
  tu_tensor_free(o1);
  tu_tensor_free(o2);
  tu_tensor_free(l1);
  tu_tensor_free(l2);
  tu_tensor_free(m1);
  tu_tensor_free(m2);
  attn_desc_destroy(d);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (g_ctx == NULL) {
    g_alloc.cap = (size_t)64 << 20;
    g_ctx = fz_context(&g_alloc, 1);
    g_ctx2 = fz_context(&g_alloc, 2);
    /* Start both contexts' thread pools (kept for the context's life) with
     * one throwaway plan each, so the leak baseline includes them. */
    attn_paged_config c0;
    attn_paged_config_init(&c0);
    c0.d_k = 1;
    c0.num_blocks = 1;
    attn_paged_cache *pc0 = NULL;
    attn_desc *d0 = NULL;
    const int64_t one[4] = {1, 1, 1, 1};
    attn_tensor *t0 = NULL;
    if (attn_paged_create(g_ctx, &c0, &pc0) != ATTN_OK || attn_desc_create(g_ctx, &d0) != ATTN_OK ||
        attn_tensor_create(g_ctx, ATTN_DTYPE_F32, 4, one, &t0) != ATTN_OK)
      abort();
    attn_context *cs[2] = {g_ctx, g_ctx2};
    for (int i = 0; i < 2; i++) {
      attn_paged_plan *p0 = NULL;
      if (attn_paged_plan_create(cs[i], pc0, d0, t0, t0, NULL, &p0) != ATTN_OK) abort();
      attn_paged_plan_destroy(p0);
    }
    attn_tensor_destroy(t0);
    attn_desc_destroy(d0);
    attn_paged_destroy(pc0);
  }
  fz f = {data, size};
  shadow *s = &g_sh;
  memset(s, 0, sizeof *s);
  attn_paged_config cfg;
  attn_paged_config_init(&cfg);
  const bool wild = fz_u8(&f) % 8 == 0;
  cfg.heads_kv = wild ? fz_i64(&f) : fz_range(&f, 1, 3);
  cfg.d_k = wild ? fz_i64(&f) : fz_range(&f, 1, 9);
  cfg.d_v = wild ? fz_i64(&f) : fz_range(&f, 0, 9);
  cfg.block_size = wild ? fz_i64(&f) : fz_range(&f, 1, 9);
  cfg.num_blocks = wild ? fz_i64(&f) : fz_range(&f, 1, 40);
  cfg.max_seqs = wild ? fz_i64(&f) : fz_range(&f, 1, MAXS);
  cfg.max_seq_len = wild ? fz_i64(&f) : fz_range(&f, 0, MAXL);
  cfg.dtype = fz_bool(&f) ? ATTN_DTYPE_F64 : ATTN_DTYPE_F32;
  const uint8_t sto = fz_u8(&f); /* native 2/3 of the time, else bf16, f16, int8, int4 */
  cfg.storage = (attn_kvcache_storage)(sto % 3 != 0 ? 0 : 1 + (sto / 3) % 4);
  if (wild && fz_bool(&f)) cfg.storage = (attn_kvcache_storage)fz_i64(&f);
  if (fz_u8(&f) % 4 == 0) cfg.group_size = wild ? fz_i64(&f) : fz_range(&f, 0, 9);
  if (g_base < 0) g_base = g_alloc.outstanding;
  attn_paged_cache *pc = (attn_paged_cache *)(uintptr_t)0x1;
  attn_status st = attn_paged_create(g_ctx, &cfg, &pc);
  FZ_CHECK(fz_status_known(st), "status %d", (int)st);
  if (st != ATTN_OK) {
    FZ_CHECK(pc == (attn_paged_cache *)(uintptr_t)0x1, "out written on failure");
    FZ_CHECK(attn_context_last_error(g_ctx)[0] != '\0', "no message");
    FZ_CHECK(g_alloc.outstanding == g_base, "leak");
    return 0;
  }
  /* Only pools the shadow can mirror go on to the program. */
  const int64_t pool_pos = cfg.num_blocks * cfg.block_size;
  s->Hkv = cfg.heads_kv;
  s->Dk = cfg.d_k;
  s->Dv = cfg.d_v ? cfg.d_v : cfg.d_k;
  s->bs = cfg.block_size;
  s->nblocks = cfg.num_blocks;
  s->max_seqs = cfg.max_seqs;
  s->max_len = cfg.max_seq_len ? cfg.max_seq_len : pool_pos;
  s->dt = cfg.dtype;
  s->storage = cfg.storage;
  if (s->Hkv > 3 || s->Dk > 9 || s->Dv > 9 || s->max_seqs > MAXS || s->max_len > MAXL ||
      s->nblocks > MAXL) {
    attn_paged_destroy(pc);
    FZ_CHECK(g_alloc.outstanding == g_base, "leak");
    return 0;
  }
  for (int i = 0; i < MAXS; i++) s->len[i] = -1;
  for (int step = 0; step < 48 && f.n > 0; step++) {
    const uint8_t op = fz_u8(&f) % 7;
    int64_t lens0[MAXS], tabs0[MAXS][MAXL], free0;
    snapshot(pc, s, lens0, tabs0, &free0);
    attn_status want = ATTN_OK, got;
    int64_t id, out = -7;
    switch (op) {
      case 0: /* create */
        want = ATTN_ERR_CAPACITY;
        for (int64_t i = 0; i < s->max_seqs; i++)
          if (s->len[i] < 0) want = ATTN_OK;
        got = attn_paged_seq_create(pc, &out);
        FZ_CHECK(got == want, "create: %d", (int)got);
        if (got == ATTN_OK) {
          FZ_CHECK(out >= 0 && out < s->max_seqs && s->len[out] < 0, "id %lld", (long long)out);
          s->len[out] = 0;
        }
        break;
      case 1:
      case 2: got = op_append(&f, pc, s); break;
      case 3: /* fork */
        id = pick_id(&f, s);
        want = !live(s, id) ? ATTN_ERR_INVALID_ARG : ATTN_ERR_CAPACITY;
        if (live(s, id))
          for (int64_t i = 0; i < s->max_seqs; i++)
            if (s->len[i] < 0) want = ATTN_OK;
        got = attn_paged_fork(pc, id, &out);
        FZ_CHECK(got == want, "fork(%lld): %d, expected %d", (long long)id, (int)got, (int)want);
        if (got == ATTN_OK) {
          memcpy(s->K[out], s->K[id], sizeof s->K[0]);
          memcpy(s->V[out], s->V[id], sizeof s->V[0]);
          s->len[out] = s->len[id];
        } else {
          FZ_CHECK(out == -7, "fork wrote *dst on failure");
        }
        break;
      case 4: { /* truncate */
        id = pick_id(&f, s);
        const int64_t to = fz_u8(&f) % 4 == 0 ? fz_i64(&f) : fz_range(&f, 0, 60);
        want = live(s, id) && to >= 0 && to <= s->len[id] ? ATTN_OK : ATTN_ERR_INVALID_ARG;
        got = attn_paged_truncate(pc, id, to);
        FZ_CHECK(got == want, "truncate: %d", (int)got);
        if (got == ATTN_OK) s->len[id] = to;
        break;
      }
      case 5: /* free */
        id = pick_id(&f, s);
        want = live(s, id) ? ATTN_OK : ATTN_ERR_INVALID_ARG;
        got = attn_paged_seq_free(pc, id);
        FZ_CHECK(got == want, "free: %d", (int)got);
        if (got == ATTN_OK) s->len[id] = -1;
        break;
      default: op_execute(&f, pc, s); got = ATTN_ERR_INVALID_ARG; /* never mutates */ break;
    }
    /* A failing mutation changed nothing; every state matches the model. */
    int64_t lens1[MAXS], tabs1[MAXS][MAXL], free1;
    snapshot(pc, s, lens1, tabs1, &free1);
    bool same = free1 == free0 && memcmp(lens0, lens1, sizeof(int64_t) * (size_t)s->max_seqs) == 0;
    for (int64_t i = 0; same && i < s->max_seqs; i++)
      if (lens1[i] > 0)
        same = memcmp(tabs0[i], tabs1[i], sizeof(int64_t) * (size_t)((lens1[i] + s->bs - 1) / s->bs)) == 0;
    if (got != ATTN_OK) FZ_CHECK(same, "a failing call (or an execute) changed the cache");
    check_invariants(pc, s);
  }
  attn_paged_destroy(pc);
  FZ_CHECK(g_alloc.outstanding == g_base, "leak: %lld bytes", (long long)(g_alloc.outstanding - g_base));
  return 0;
}

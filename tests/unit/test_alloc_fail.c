/* Allocation-failure injection (SQLite's loop): for every function that
 * allocates, fail its k-th allocation for k = 1, 2, ... until the call
 * succeeds without a failure. Each failing run must return
 * ATTN_ERR_NO_MEMORY with a message, leave the *out handle alone, leak
 * nothing (the counting allocator's outstanding bytes return to 0 once the
 * fixture is destroyed) and leave the context usable: the same call made
 * again right after, with no failure, succeeds and its result executes
 * without allocating.
 *
 * One row per operation. A new create function or variant adds one row:
 * OP_ROW for anything with a create/destroy pair, PLAN_ROW for a plan whose
 * descriptor a small function configures. */
#include <stdlib.h>
#include <string.h>

#include "testutil.h"

enum { B_ = 2, H_ = 4, HKV = 2, SQ = 70, SK = 90, D_ = 16 };

typedef struct af_fx {
  tu_counter *cnt;
  attn_context *ctx;
  attn_desc *desc;
  attn_dtype dt;
  attn_tensor *q, *k, *v, *out, *w, *lse;
  attn_tensor *bool_mask, *add_mask, *gw, *wq, *wk, *ab, *av;
  int64_t key_len[B_], query_len[B_];
  double slopes[H_];
  bool want_w, want_lse;
  /* Backward rows: the forward plan (made by configure) and the gradients. */
  attn_plan *fwd;
  attn_tensor *dout, *dq, *dk, *dv, *dmask;
  attn_paged_cache *pc; /* paged rows: two sequences of SK positions */
  attn_tensor *pq, *pout; /* paged decode rows: [B_, H_, 1, D_] */
  attn_tensor *mass;
  int64_t q_off[4], k_off[4];
  double sinks[H_];
} af_fx;

typedef struct af_row {
  const char *name;
  int32_t threads;
  attn_dtype dt;
  /* Plan rows: configure the descriptor (may be NULL). */
  void (*configure)(af_fx *f);
  /* The call under test: creates one object into *handle. */
  attn_status (*op)(af_fx *f, void **handle);
  void (*destroy)(void *handle);
  /* Optional: use the object once (must not allocate). */
  void (*use)(af_fx *f, void *handle);
} af_row;

/* ---- the failing allocator ------------------------------------------------- */

/* testutil's counting hooks, so contexts can be created (and their creation
 * fail-injected) with attn_context_create() here. */
static attn_status af_context(tu_counter *c, int32_t threads, attn_context **out) {
  attn_context_options o;
  attn_context_options_init(&o);
  o.num_threads = threads;
  o.allocator.alloc = tu_counting_alloc;
  o.allocator.free = tu_counting_free;
  o.allocator.user_data = c;
  return attn_context_create(&o, out);
}

/* ---- fixture ------------------------------------------------------------- */

static attn_tensor *rand4(af_fx *f, int64_t a, int64_t b, int64_t c, int64_t d, uint64_t seed) {
  double *x = tu_random((size_t)(a * b * c * d), &seed);
  attn_tensor *t = tu_tensor4(f->ctx, f->dt, x, a, b, c, d, false);
  free(x);
  assert_non_null(t);
  return t;
}

static attn_tensor *rand_n(af_fx *f, int32_t rank, const int64_t *shape, uint64_t seed) {
  int64_t n = 1;
  for (int32_t i = 0; i < rank; i++) n *= shape[i];
  double *x = tu_random((size_t)n, &seed);
  attn_tensor *t = tu_tensor(f->ctx, f->dt, x, rank, shape);
  free(x);
  assert_non_null(t);
  return t;
}

static void fx_setup(af_fx *f, tu_counter *cnt, const af_row *row) {
  memset(f, 0, sizeof *f);
  f->cnt = cnt;
  f->dt = row->dt ? row->dt : ATTN_DTYPE_F32;
  assert_int_equal(af_context(cnt, row->threads, &f->ctx), ATTN_OK);
  assert_int_equal(attn_desc_create(f->ctx, &f->desc), ATTN_OK);
  f->q = rand4(f, B_, H_, SQ, D_, 1);
  f->k = rand4(f, B_, HKV, SK, D_, 2);
  f->v = rand4(f, B_, HKV, SK, D_, 3);
  f->out = rand4(f, B_, H_, SQ, D_, 4);
  if (row->configure) row->configure(f);
}

static void fx_teardown(af_fx *f) {
  attn_plan_destroy(f->fwd);
  attn_tensor *ts[] = {f->q, f->k, f->v, f->out, f->w, f->lse, f->bool_mask, f->add_mask,
                       f->gw, f->wq, f->wk, f->ab, f->av, f->mass,
                       f->dout, f->dq, f->dk, f->dv, f->dmask};
  for (size_t i = 0; i < sizeof ts / sizeof ts[0]; i++) tu_tensor_free(ts[i]);
  tu_tensor_free(f->pq);
  tu_tensor_free(f->pout);
  attn_paged_destroy(f->pc);
  attn_desc_destroy(f->desc);
  attn_context_destroy(f->ctx);
}

/* ---- descriptor configurations (plan rows) --------------------------------- */

static void cfg_weights_lse(af_fx *f) {
  f->w = rand4(f, B_, H_, SQ, SK, 5);
  int64_t ls[3] = {B_, H_, SQ};
  f->lse = rand_n(f, 3, ls, 6);
}
static void cfg_causal(af_fx *f) {
  assert_int_equal(attn_desc_set_causal(f->desc, ATTN_CAUSAL_BOTTOM_RIGHT), ATTN_OK);
}
static void cfg_window_lengths(af_fx *f) {
  f->key_len[0] = 50, f->key_len[1] = SK;
  f->query_len[0] = SQ, f->query_len[1] = 33;
  assert_int_equal(attn_desc_set_window(f->desc, 8, 3), ATTN_OK);
  assert_int_equal(attn_desc_set_key_lengths(f->desc, f->key_len, B_), ATTN_OK);
  assert_int_equal(attn_desc_set_query_lengths(f->desc, f->query_len, B_), ATTN_OK);
}
static void cfg_masks(af_fx *f) {
  int64_t bs[4] = {1, H_, SQ, SK}, as[4] = {B_, 1, SQ, SK};
  attn_dtype keep = f->dt;
  f->dt = ATTN_DTYPE_U8;
  f->bool_mask = rand_n(f, 4, bs, 7); /* non-zero almost everywhere */
  f->dt = keep;
  f->add_mask = rand_n(f, 4, as, 8);
  assert_int_equal(attn_desc_set_bool_mask(f->desc, f->bool_mask), ATTN_OK);
  assert_int_equal(attn_desc_set_additive_mask(f->desc, f->add_mask), ATTN_OK);
}
static void cfg_alibi_softcap(af_fx *f) {
  for (int h = 0; h < H_; h++) f->slopes[h] = 1.0 / (1 << h);
  assert_int_equal(attn_desc_set_alibi(f->desc, f->slopes, H_), ATTN_OK);
  assert_int_equal(attn_desc_set_softcap(f->desc, 20.0), ATTN_OK);
}
static void cfg_general(af_fx *f) {
  int64_t s[2] = {D_, D_};
  f->gw = rand_n(f, 2, s, 9);
  assert_int_equal(attn_desc_set_score(f->desc, ATTN_SCORE_GENERAL), ATTN_OK);
  assert_int_equal(attn_desc_set_general_weight(f->desc, f->gw), ATTN_OK);
}
static void cfg_additive(af_fx *f) {
  int64_t s2[2] = {8, D_}, s1[1] = {8};
  f->wq = rand_n(f, 2, s2, 10);
  f->wk = rand_n(f, 2, s2, 11);
  f->ab = rand_n(f, 1, s1, 12);
  f->av = rand_n(f, 1, s1, 13);
  assert_int_equal(attn_desc_set_score(f->desc, ATTN_SCORE_ADDITIVE), ATTN_OK);
  assert_int_equal(attn_desc_set_additive_weights(f->desc, f->wq, f->wk, f->ab, f->av), ATTN_OK);
}
/* A packed batch of 3 sequences (one without keys) with causal, sinks and
 * the per-key mass: q, k, v, out become [1, ·, total, D]. */
static void cfg_varlen_sinks_mass(af_fx *f) {
  const int64_t qo[4] = {0, 30, 31, SQ}, ko[4] = {0, 50, 50, SK};
  memcpy(f->q_off, qo, sizeof qo);
  memcpy(f->k_off, ko, sizeof ko);
  tu_tensor_free(f->q); tu_tensor_free(f->k); tu_tensor_free(f->v); tu_tensor_free(f->out);
  f->q = rand4(f, 1, H_, SQ, D_, 21);
  f->k = rand4(f, 1, HKV, SK, D_, 22);
  f->v = rand4(f, 1, HKV, SK, D_, 23);
  f->out = rand4(f, 1, H_, SQ, D_, 24);
  int64_t ms[3] = {1, HKV, SK};
  f->mass = rand_n(f, 3, ms, 25);
  for (int h = 0; h < H_; h++) f->sinks[h] = 0.5 * h;
  assert_int_equal(attn_desc_set_causal(f->desc, ATTN_CAUSAL_BOTTOM_RIGHT), ATTN_OK);
  assert_int_equal(attn_desc_set_varlen(f->desc, f->q_off, f->k_off, 3), ATTN_OK);
  assert_int_equal(attn_desc_set_sinks(f->desc, f->sinks, H_), ATTN_OK);
  assert_int_equal(attn_desc_set_key_mass(f->desc, f->mass), ATTN_OK);
}
static void cfg_sinks_mass(af_fx *f) {
  int64_t ms[3] = {B_, H_, SK};
  f->mass = rand_n(f, 3, ms, 26);
  for (int h = 0; h < H_; h++) f->sinks[h] = 1.0 - h;
  cfg_window_lengths(f);
  assert_int_equal(attn_desc_set_sinks(f->desc, f->sinks, H_), ATTN_OK);
  assert_int_equal(attn_desc_set_key_mass(f->desc, f->mass), ATTN_OK);
}
static void cfg_everything(af_fx *f) {
  cfg_weights_lse(f);
  cfg_causal(f);
  cfg_window_lengths(f);
  cfg_masks(f);
  cfg_alibi_softcap(f);
}

/* Backward: the forward plan with lse over every mask, and the gradients
 * (the additive mask's too). */
static void cfg_backward(af_fx *f) {
  cfg_everything(f);
  tu_tensor_free(f->w); /* the backward's forward needs lse, not weights */
  f->w = NULL;
  f->dout = rand4(f, B_, H_, SQ, D_, 14);
  f->dq = rand4(f, B_, H_, SQ, D_, 15);
  f->dk = rand4(f, B_, HKV, SK, D_, 16);
  f->dv = rand4(f, B_, HKV, SK, D_, 17);
  f->dmask = rand4(f, B_, H_, SQ, SK, 18);
  assert_int_equal(attn_plan_create(f->ctx, f->desc, f->q, f->k, f->v, f->out, NULL, f->lse,
                                    &f->fwd),
                   ATTN_OK);
  assert_int_equal(attn_plan_execute(f->fwd, f->q, f->k, f->v, f->out, NULL, f->lse), ATTN_OK);
}

/* ---- operations ---------------------------------------------------------------- */

static attn_status op_context(af_fx *f, void **h) {
  return af_context(f->cnt, 3, (attn_context **)h);
}
static void destroy_context(void *h) { attn_context_destroy(h); }

static attn_status op_tensor_create(af_fx *f, void **h) {
  int64_t s[4] = {B_, H_, SQ, D_};
  return attn_tensor_create(f->ctx, f->dt, 4, s, (attn_tensor **)h);
}
static attn_status op_tensor_wrap(af_fx *f, void **h) {
  int64_t s[4] = {B_, H_, SQ, D_};
  return attn_tensor_wrap(f->ctx, f->dt, 4, s, NULL, attn_tensor_data(f->out), (attn_tensor **)h);
}
static void destroy_tensor(void *h) { attn_tensor_destroy(h); }

static attn_status op_desc(af_fx *f, void **h) { return attn_desc_create(f->ctx, (attn_desc **)h); }
static void destroy_desc(void *h) { attn_desc_destroy(h); }

static attn_status op_plan(af_fx *f, void **h) {
  return attn_plan_create(f->ctx, f->desc, f->q, f->k, f->v, f->out, f->w, f->lse,
                          (attn_plan **)h);
}
static void destroy_plan(void *h) { attn_plan_destroy(h); }
static void use_plan(af_fx *f, void *h) {
  int64_t before = f->cnt->allocs;
  assert_int_equal(attn_plan_execute(h, f->q, f->k, f->v, f->out, f->w, f->lse), ATTN_OK);
  assert_int_equal(f->cnt->allocs, before); /* execute allocates nothing */
}

/* ---- paged KV cache ---------------------------------------------------------- */

static attn_status paged_create(af_fx *f, attn_kvcache_storage storage, void **h) {
  attn_paged_config cfg;
  attn_paged_config_init(&cfg);
  cfg.heads_kv = HKV;
  cfg.d_k = D_;
  cfg.block_size = 16;
  cfg.num_blocks = 32;
  cfg.max_seqs = 4;
  cfg.dtype = f->dt;
  cfg.storage = storage;
  return attn_paged_create(f->ctx, &cfg, (attn_paged_cache **)h);
}
static attn_status op_paged_create(af_fx *f, void **h) {
  return paged_create(f, ATTN_KVCACHE_STORE_NATIVE, h);
}
/* int8: scales and a per-sequence K residual, all allocated at create. */
static attn_status op_paged_create_int8(af_fx *f, void **h) {
  return paged_create(f, ATTN_KVCACHE_STORE_INT8, h);
}
static void destroy_paged(void *h) { attn_paged_destroy(h); }
/* Sequences, appends (with copy-on-write), rollback and frees allocate nothing. */
static void use_paged(af_fx *f, void *h) {
  int64_t before = f->cnt->allocs, s, t;
  const int64_t shape[3] = {HKV, SK, D_};
  attn_tensor *k = NULL;
  assert_int_equal(attn_tensor_wrap(f->ctx, f->dt, 3, shape, NULL, attn_tensor_data(f->k), &k), ATTN_OK);
  before = f->cnt->allocs;
  assert_int_equal(attn_paged_seq_create(h, &s), ATTN_OK);
  assert_int_equal(attn_paged_append(h, s, k, k), ATTN_OK);
  assert_int_equal(attn_paged_fork(h, s, &t), ATTN_OK);
  assert_int_equal(attn_paged_append(h, t, k, k), ATTN_OK);
  assert_int_equal(attn_paged_truncate(h, s, 5), ATTN_OK);
  assert_int_equal(attn_paged_seq_free(h, t), ATTN_OK);
  assert_int_equal(f->cnt->allocs, before);
  attn_tensor_destroy(k);
}
/* Plan rows: a pool holding two sequences of the fixture's SK keys. */
static void fill_paged(af_fx *f, attn_kvcache_storage storage) {
  assert_int_equal(paged_create(f, storage, (void **)&f->pc), ATTN_OK);
  const int64_t shape[3] = {HKV, SK, D_};
  attn_tensor *k = NULL;
  assert_int_equal(attn_tensor_wrap(f->ctx, f->dt, 3, shape, NULL, attn_tensor_data(f->k), &k), ATTN_OK);
  int64_t s;
  for (int i = 0; i < 2; i++) {
    assert_int_equal(attn_paged_seq_create(f->pc, &s), ATTN_OK);
    assert_int_equal(attn_paged_append(f->pc, s, k, k), ATTN_OK);
  }
  attn_tensor_destroy(k);
  f->pq = rand4(f, B_, H_, 1, D_, 9);
  f->pout = rand4(f, B_, H_, 1, D_, 10);
}
static void cfg_paged(af_fx *f) { fill_paged(f, ATTN_KVCACHE_STORE_NATIVE); }
/* int8 rows: the decode plan takes the quantized loops' scratch. */
static void cfg_paged_int8(af_fx *f) { fill_paged(f, ATTN_KVCACHE_STORE_INT8); }
static void cfg_paged_causal(af_fx *f) {
  cfg_paged(f);
  assert_int_equal(attn_desc_set_causal(f->desc, ATTN_CAUSAL_BOTTOM_RIGHT), ATTN_OK);
  cfg_alibi_softcap(f);
}
static attn_status op_paged_plan(af_fx *f, void **h) { /* prefill: n = SQ queries */
  return attn_paged_plan_create(f->ctx, f->pc, f->desc, f->q, f->out, NULL, (attn_paged_plan **)h);
}
static attn_status op_paged_decode_plan(af_fx *f, void **h) {
  return attn_paged_plan_create(f->ctx, f->pc, f->desc, f->pq, f->pout, NULL, (attn_paged_plan **)h);
}
static void destroy_paged_plan(void *h) { attn_paged_plan_destroy(h); }
static void use_paged_plan(af_fx *f, void *h) {
  const int64_t seqs[2] = {1, 0};
  int64_t before = f->cnt->allocs;
  attn_paged_plan *p = h;
  const bool decode = attn_paged_plan_execute(p, 2, seqs, f->pq, f->pout, NULL, NULL) == ATTN_OK;
  if (!decode) assert_int_equal(attn_paged_plan_execute(p, 2, seqs, f->q, f->out, NULL, NULL), ATTN_OK);
  assert_int_equal(f->cnt->allocs, before); /* execute allocates nothing */
}

/* attn_forward allocates and frees its plan: it creates nothing that lasts. */
static attn_status op_forward(af_fx *f, void **h) {
  attn_status st = attn_forward(f->ctx, f->desc, f->q, f->k, f->v, f->out, f->w, f->lse);
  if (st == ATTN_OK) *h = f; /* a non-canary marker: nothing to destroy */
  return st;
}

/* KV cache with a reduced storage: create, append every row of k/v, plan
 * (decode: one query; prefill: all SQ queries). The bundle is test memory;
 * everything in it comes from the context's allocator. */
typedef struct kv_bundle {
  attn_kvcache *cache;
  attn_kvcache_plan *plan;
  attn_tensor *q, *out;
} kv_bundle;

static void destroy_kv(void *h) {
  kv_bundle *k = h;
  attn_kvcache_plan_destroy(k->plan);
  attn_kvcache_destroy(k->cache);
  attn_tensor_destroy(k->q);
  attn_tensor_destroy(k->out);
  free(k);
}

static attn_status kv_op(af_fx *f, void **h, attn_kvcache_storage storage, attn_kvcache_mode mode,
                         bool grow, int64_t n) {
  kv_bundle *k = calloc(1, sizeof *k);
  assert_non_null(k);
  attn_kvcache_config cfg;
  attn_kvcache_config_init(&cfg);
  cfg.batch = B_;
  cfg.heads_kv = HKV;
  cfg.capacity = grow ? 16 : 96;
  cfg.d_k = D_;
  cfg.mode = mode;
  cfg.grow = grow;
  cfg.storage = storage;
  cfg.group_size = 8;
  const int64_t qs[4] = {B_, H_, n, D_};
  attn_status st = attn_kvcache_create(f->ctx, &cfg, &k->cache);
  if (st == ATTN_OK) st = attn_kvcache_append(k->cache, f->k, f->v, NULL);
  if (st == ATTN_OK) st = attn_tensor_create(f->ctx, ATTN_DTYPE_F32, 4, qs, &k->q);
  if (st == ATTN_OK) st = attn_tensor_create(f->ctx, ATTN_DTYPE_F32, 4, qs, &k->out);
  if (st == ATTN_OK) st = attn_kvcache_plan_create(k->cache, f->desc, k->q, k->out, NULL, &k->plan);
  if (st != ATTN_OK) {
    destroy_kv(k);
    return st;
  }
  *h = k;
  return ATTN_OK;
}
static void use_kv(af_fx *f, void *h) {
  kv_bundle *k = h;
  int64_t before = f->cnt->allocs;
  /* A ring cache appends in place; execute never allocates. */
  if (attn_kvcache_capacity(k->cache) == 96)
    assert_int_equal(attn_kvcache_append(k->cache, f->k, f->v, NULL), ATTN_OK);
  assert_int_equal(attn_kvcache_plan_execute(k->plan, k->q, k->out, NULL, NULL), ATTN_OK);
  assert_int_equal(f->cnt->allocs, before);
}
static attn_status op_kv_int8_decode(af_fx *f, void **h) {
  return kv_op(f, h, ATTN_KVCACHE_STORE_INT8, ATTN_KVCACHE_RING, false, 1);
}
static attn_status op_kv_int4_prefill(af_fx *f, void **h) {
  return kv_op(f, h, ATTN_KVCACHE_STORE_INT4, ATTN_KVCACHE_RING, false, SQ);
}
static attn_status op_kv_f16_decode(af_fx *f, void **h) {
  return kv_op(f, h, ATTN_KVCACHE_STORE_F16, ATTN_KVCACHE_RING, false, 1);
}
static attn_status op_kv_int8_grow(af_fx *f, void **h) {
  return kv_op(f, h, ATTN_KVCACHE_STORE_INT8, ATTN_KVCACHE_LINEAR, true, 1);
}

static attn_status op_backward(af_fx *f, void **h) {
  return attn_backward_plan_create(f->fwd, f->dout, f->dq, f->dk, f->dv, f->dmask,
                                   (attn_backward_plan **)h);
}
static void destroy_backward(void *h) { attn_backward_plan_destroy(h); }
static void use_backward(af_fx *f, void *h) {
  int64_t before = f->cnt->allocs;
  assert_int_equal(attn_backward_execute(h, f->q, f->k, f->v, f->out, f->lse, f->dout, f->dq,
                                         f->dk, f->dv, f->dmask),
                   ATTN_OK);
  assert_int_equal(f->cnt->allocs, before); /* execute allocates nothing */
}

#define OP_ROW(name, threads, dt, op, destroy) {name, threads, dt, NULL, op, destroy, NULL}
#define PLAN_ROW(name, threads, dt, cfg) {name, threads, dt, cfg, op_plan, destroy_plan, use_plan}

static const af_row rows[] = {
    OP_ROW("context_create", 1, 0, op_context, destroy_context),
    OP_ROW("tensor_create", 1, ATTN_DTYPE_F32, op_tensor_create, destroy_tensor),
    OP_ROW("tensor_create_f64", 1, ATTN_DTYPE_F64, op_tensor_create, destroy_tensor),
    OP_ROW("tensor_wrap", 1, ATTN_DTYPE_F32, op_tensor_wrap, destroy_tensor),
    OP_ROW("desc_create", 1, 0, op_desc, destroy_desc),
    PLAN_ROW("plan_exact", 1, ATTN_DTYPE_F32, NULL),
    PLAN_ROW("plan_exact_threads3", 3, ATTN_DTYPE_F32, NULL), /* starts the pool */
    PLAN_ROW("plan_exact_f64_threads2", 2, ATTN_DTYPE_F64, NULL),
    PLAN_ROW("plan_weights_lse", 1, ATTN_DTYPE_F32, cfg_weights_lse),
    PLAN_ROW("plan_causal_bottom_right", 2, ATTN_DTYPE_F32, cfg_causal),
    PLAN_ROW("plan_window_lengths", 1, ATTN_DTYPE_F64, cfg_window_lengths),
    PLAN_ROW("plan_masks", 2, ATTN_DTYPE_F32, cfg_masks),
    PLAN_ROW("plan_alibi_softcap", 1, ATTN_DTYPE_F32, cfg_alibi_softcap),
    PLAN_ROW("plan_general", 2, ATTN_DTYPE_F64, cfg_general),
    PLAN_ROW("plan_additive", 2, ATTN_DTYPE_F32, cfg_additive),
    PLAN_ROW("plan_everything", 3, ATTN_DTYPE_F32, cfg_everything),
    PLAN_ROW("plan_varlen_sinks_mass", 2, ATTN_DTYPE_F32, cfg_varlen_sinks_mass),
    PLAN_ROW("plan_sinks_mass_f64", 3, ATTN_DTYPE_F64, cfg_sinks_mass),
    {"forward_varlen_sinks_mass", 1, ATTN_DTYPE_F64, cfg_varlen_sinks_mass, op_forward, NULL, NULL},
    {"forward_everything", 3, ATTN_DTYPE_F32, cfg_everything, op_forward, NULL, NULL},
    {"forward_additive", 1, ATTN_DTYPE_F64, cfg_additive, op_forward, NULL, NULL},
    {"kvcache_int8_ring_decode", 2, ATTN_DTYPE_F32, cfg_causal, op_kv_int8_decode, destroy_kv, use_kv},
    {"kvcache_int4_ring_prefill", 1, ATTN_DTYPE_F32, cfg_causal, op_kv_int4_prefill, destroy_kv, use_kv},
    {"kvcache_f16_ring_decode", 3, ATTN_DTYPE_F32, cfg_causal, op_kv_f16_decode, destroy_kv, use_kv},
    {"kvcache_int8_grow", 2, ATTN_DTYPE_F32, cfg_causal, op_kv_int8_grow, destroy_kv, use_kv},
    {"backward_everything", 3, ATTN_DTYPE_F32, cfg_backward, op_backward, destroy_backward,
     use_backward},
    {"backward_f64", 1, ATTN_DTYPE_F64, cfg_backward, op_backward, destroy_backward,
     use_backward},
    /* 16-bit plans (their tile engine's scratch joins the workspace). */
    OP_ROW("tensor_create_bf16", 1, ATTN_DTYPE_BF16, op_tensor_create, destroy_tensor),
    PLAN_ROW("plan_exact_bf16_threads2", 2, ATTN_DTYPE_BF16, NULL),
    PLAN_ROW("plan_causal_f16", 1, ATTN_DTYPE_F16, cfg_causal),
    {"forward_bf16_causal", 3, ATTN_DTYPE_BF16, cfg_causal, op_forward, NULL, NULL},
    {"paged_create", 1, ATTN_DTYPE_F32, NULL, op_paged_create, destroy_paged, use_paged},
    {"paged_create_f64", 1, ATTN_DTYPE_F64, NULL, op_paged_create, destroy_paged, use_paged},
    {"paged_plan_prefill", 2, ATTN_DTYPE_F32, cfg_paged_causal, op_paged_plan, destroy_paged_plan, use_paged_plan},
    {"paged_plan_decode", 3, ATTN_DTYPE_F64, cfg_paged, op_paged_decode_plan, destroy_paged_plan, use_paged_plan},
    {"paged_create_int8", 1, ATTN_DTYPE_F32, NULL, op_paged_create_int8, destroy_paged, use_paged},
    {"paged_plan_decode_int8", 2, ATTN_DTYPE_F32, cfg_paged_int8, op_paged_decode_plan, destroy_paged_plan, use_paged_plan},
};

static void *const HANDLE_CANARY = (void *)(uintptr_t)0xC0FFEE00u;

/* One row: k = 1, 2, ... until the call succeeds with no injected failure. */
static int run_row(const af_row *row) {
  int failures_seen = 0;
  for (int64_t k = 1;; k++) {
    if (k > 10000) fail_msg("%s: still failing after 10000 allocations", row->name);
    tu_counter cnt = {0};
    af_fx f;
    fx_setup(&f, &cnt, row);
    int64_t base = cnt.allocs;
    cnt.fail_at = base + k;
    void *h = HANDLE_CANARY;
    attn_status st = row->op(&f, &h);
    int64_t made = cnt.allocs - base; /* allocation attempts during the call */
    cnt.fail_at = 0;
    bool injected = k <= made;
    if (st == ATTN_OK) {
      if (injected)
        fail_msg("%s: allocation %lld of %lld failed but the call returned ATTN_OK", row->name,
                 (long long)k, (long long)made);
      if (h == HANDLE_CANARY) fail_msg("%s: ATTN_OK but *out not set", row->name);
      if (row->use) row->use(&f, h);
      if (row->destroy) row->destroy(h);
    } else {
      if (st != ATTN_ERR_NO_MEMORY)
        fail_msg("%s: allocation %lld failed: status %d (%s), expected ATTN_ERR_NO_MEMORY (%s)",
                 row->name, (long long)k, (int)st, attn_status_string(st),
                 attn_context_last_error(f.ctx));
      if (!injected) fail_msg("%s: failed with no allocation failure injected", row->name);
      if (h != HANDLE_CANARY) fail_msg("%s: *out written on failure (k = %lld)", row->name, (long long)k);
      if (row->op != op_context && attn_context_last_error(f.ctx)[0] == '\0')
        fail_msg("%s: no message after ATTN_ERR_NO_MEMORY (k = %lld)", row->name, (long long)k);
      /* The context is still good: the same call now succeeds. */
      h = HANDLE_CANARY;
      st = row->op(&f, &h);
      if (st != ATTN_OK)
        fail_msg("%s: retry after failure %lld: %s", row->name, (long long)k,
                 attn_context_last_error(f.ctx));
      if (row->use) row->use(&f, h);
      if (row->destroy) row->destroy(h);
      failures_seen++;
    }
    fx_teardown(&f);
    if (cnt.outstanding_bytes != 0)
      fail_msg("%s: %lld bytes leaked with allocation %lld failed", row->name,
               (long long)cnt.outstanding_bytes, (long long)k);
    if (cnt.allocs - (injected ? 1 : 0) != cnt.frees)
      fail_msg("%s: %lld allocations, %lld frees (k = %lld)", row->name, (long long)cnt.allocs,
               (long long)cnt.frees, (long long)k);
    if (!injected) break;
  }
  if (failures_seen == 0) fail_msg("%s: the call never allocates: nothing was tested", row->name);
  return failures_seen;
}

static void every_allocation_failure_is_clean(void **state) {
  (void)state;
  int total = 0;
  for (size_t i = 0; i < sizeof rows / sizeof rows[0]; i++) {
    int n = run_row(&rows[i]);
    print_message("%-26s %d allocation points failed cleanly\n", rows[i].name, n);
    total += n;
  }
  print_message("%zu operations, %d injected failures\n", sizeof rows / sizeof rows[0], total);
}

/* Calls documented to allocate nothing cannot fail for memory: run them
 * under an allocator that fails every allocation, and check they succeed
 * without asking it for anything. */
static void allocation_free_calls_never_allocate(void **state) {
  (void)state;
  for (int di = 0; di < 2; di++) {
    tu_counter cnt = {0};
    af_row row = {"merge", 2, di ? ATTN_DTYPE_F64 : ATTN_DTYPE_F32, cfg_weights_lse, NULL, NULL, NULL};
    af_fx f;
    fx_setup(&f, &cnt, &row);
    int64_t ls[3] = {B_, H_, SQ};
    attn_tensor *lb = rand_n(&f, 3, ls, 21);
    const int64_t before = cnt.allocs;
    cnt.fail_at = before + 1; /* every allocation from now on fails */
    /* attn_merge_states, in place into out (q as the other side). */
    assert_int_equal(attn_merge_states(f.ctx, f.out, f.lse, f.q, lb, f.out, f.lse), ATTN_OK);
    assert_int_equal(cnt.allocs, before);
    cnt.fail_at = 0;
    tu_tensor_free(lb);
    fx_teardown(&f);
    assert_int_equal(cnt.outstanding_bytes, 0);
  }
  print_message("attn_merge_states: no allocation, f32 and f64\n");
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(every_allocation_failure_is_clean),
      cmocka_unit_test(allocation_free_calls_never_allocate),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}

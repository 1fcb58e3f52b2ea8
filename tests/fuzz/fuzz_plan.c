/* libFuzzer target: descriptor setters and plan creation from arbitrary
 * metadata. Dims and strides reach the int64 extremes, dtypes/ranks/enums go
 * out of range, every setter gets arbitrary values (variants included), and
 * allocations sometimes fail. Only statuses are checked (plus: known status,
 * *out untouched and a message on failure, no leak); nothing is executed.
 * A plan that is created also gets a backward plan (every variant's setup).
 *
 * q/k/v/out/weights/lse point at a small dummy buffer whatever their
 * metadata says: plan creation reads no tensor data (attn.h). Everything a
 * setter or the plan does read — lengths, slopes, indices, and the data of
 * masks, layouts, weights and projections — is backed by real memory of the
 * full claimed extent (tensors too large for that are not passed at all). */
#include "core/internal.h" /* attn_clear_error: each check sees a fresh message */
#include "fuzz_common.h"

#define N_CTX 3
static const int32_t kThreads[N_CTX] = {1, 2, 5};
static fz_alloc g_alloc[N_CTX];
static attn_context *g_ctx[N_CTX];
static int64_t g_baseline[N_CTX];
static _Alignas(64) uint8_t g_dummy[256];
static void *const CANARY = (void *)(uintptr_t)0xC0FFEE00u;

/* FUZZ_PLAN_STATS=1: print how often plan creation returned each status
 * (to see that the fuzzer gets past validation, not just into it). */
static int64_t g_plan_status[16];
static void print_stats(void) {
  for (int i = 0; i < 13; i++)
    if (g_plan_status[i])
      fprintf(stderr, "plan_create %-22s %lld\n", attn_status_string((attn_status)i),
              (long long)g_plan_status[i]);
}

/* Per-iteration owned memory, freed at the end. */
#define MAX_OWNED 64
typedef struct iter {
  fz in;
  attn_context *ctx;
  void *owned[MAX_OWNED];
  int nowned;
  attn_tensor *tensors[MAX_OWNED];
  int ntensors;
  int64_t B, H, Hkv, Sq, Sk, Dq, Dk, Dv;
} iter;

static void *own(iter *it, size_t bytes) {
  if (it->nowned == MAX_OWNED) return NULL;
  void *p = calloc(1, bytes ? bytes : 1);
  if (p == NULL) abort();
  it->owned[it->nowned++] = p;
  return p;
}

static int64_t pick_dim(iter *it) {
  fz *f = &it->in;
  return fz_u8(f) % 4 ? fz_range(f, 1, 70) : fz_i64(f);
}

static attn_dtype pick_dtype(fz *f) {
  uint8_t x = fz_u8(f);
  if (x < 150) return ATTN_DTYPE_F32;
  if (x < 210) return ATTN_DTYPE_F64;
  if (x < 222) return ATTN_DTYPE_BF16;
  if (x < 230) return ATTN_DTYPE_F16;
  if (x < 245) return ATTN_DTYPE_U8;
  return (attn_dtype)(int)(int8_t)fz_u8(f);
}

static size_t dsize(attn_dtype dt) {
  return dt == ATTN_DTYPE_F64                                ? 8
         : dt == ATTN_DTYPE_U8                               ? 1
         : dt == ATTN_DTYPE_BF16 || dt == ATTN_DTYPE_F16 ? 2
                                                             : 4;
}

/* Wrap a tensor: shape given, strides contiguous / [B,S,H,D]-style / fuzzed.
 * `backed`: data is read by someone, so give it real memory of its extent
 * (returns NULL when that would exceed 1 MiB). The wrap's own status is
 * checked like any other call. */
static attn_tensor *make_tensor(iter *it, attn_dtype dt, int32_t rank, const int64_t *shape,
                                bool backed) {
  fz *f = &it->in;
  int64_t strides[ATTN_MAX_RANK] = {0};
  const int64_t *sp = NULL;
  uint8_t layout = fz_u8(f) % 8;
  int r = rank < 0 ? 0 : rank > ATTN_MAX_RANK ? ATTN_MAX_RANK : rank;
  if (layout == 1 && r == 4) { /* [d0, d2, d1, d3] memory (wrapping: the library checks) */
    strides[3] = 1;
    strides[1] = shape[3];
    strides[2] = (int64_t)((uint64_t)shape[1] * (uint64_t)shape[3]);
    strides[0] = (int64_t)((uint64_t)shape[2] * (uint64_t)strides[2]);
    sp = strides;
  } else if (layout == 2) { /* broadcast leading dims */
    uint64_t s = 1;
    for (int i = r - 1; i >= 0; i--) {
      strides[i] = i < r / 2 ? 0 : (int64_t)s;
      s *= (uint64_t)shape[i];
    }
    sp = strides;
  } else if (layout >= 6) {
    for (int i = 0; i < r; i++) strides[i] = fz_bool(f) ? fz_range(f, 0, 200) : fz_i64(f);
    sp = strides;
  }
  void *data = g_dummy;
  if (backed) {
    /* Real memory for the claimed extent, if it is small and well defined. */
    int64_t cs[ATTN_MAX_RANK], last = 0, prod = 1;
    bool ok = true;
    for (int i = r - 1; i >= 0 && ok; i--) {
      cs[i] = prod;
      ok = shape[i] >= 1 && !__builtin_mul_overflow(prod, shape[i], &prod);
    }
    for (int i = 0; i < r && ok; i++) {
      int64_t st = sp ? sp[i] : cs[i], step;
      ok = st >= 0 && !__builtin_mul_overflow(shape[i] - 1, st, &step) &&
           !__builtin_add_overflow(last, step, &last);
    }
    if (!ok || last >= (1 << 17)) return NULL;
    data = own(it, (size_t)(last + 1) * dsize(dt));
    if (data == NULL) return NULL;
  }
  attn_tensor *t = CANARY;
  attn_clear_error(it->ctx);
  attn_status st = attn_tensor_wrap(it->ctx, dt, rank, shape, sp, data, &t);
  FZ_CHECK(fz_status_known(st), "wrap: status %d", (int)st);
  if (st != ATTN_OK) {
    FZ_CHECK(t == CANARY, "wrap wrote *out on failure");
    FZ_CHECK(attn_context_last_error(it->ctx)[0] != '\0', "wrap failed without a message");
    return NULL;
  }
  if (it->ntensors < MAX_OWNED) it->tensors[it->ntensors++] = t;
  else attn_tensor_destroy(t), t = NULL;
  return t;
}

/* Tensor with one of a few shapes related to the problem, or fuzzed. */
static attn_tensor *aux_tensor(iter *it, attn_dtype dt, int32_t rank, int64_t d0, int64_t d1,
                               int64_t d2, int64_t d3) {
  fz *f = &it->in;
  int64_t shape[4] = {d0, d1, d2, d3};
  if (fz_u8(f) % 4 == 0) {
    rank = (int32_t)fz_range(f, 0, 5);
    for (int i = 0; i < 4; i++) shape[i] = fz_bool(f) ? shape[i] : pick_dim(it);
  }
  if (fz_u8(f) % 8 == 0) dt = pick_dtype(f);
  return make_tensor(it, dt, rank, shape, true);
}

static int64_t *len_array(iter *it, int64_t *count) {
  fz *f = &it->in;
  /* Arrays are read for `count` entries: keep them real (≤ 64). */
  *count = fz_bool(f) && it->B <= 64 ? it->B : fz_range(f, -2, 40);
  if (fz_u8(f) % 16 == 0) return NULL;
  int64_t n = *count > 0 ? *count : 1;
  int64_t *a = own(it, (size_t)n * sizeof *a);
  if (a == NULL) return NULL;
  for (int64_t i = 0; i < n; i++) a[i] = fz_bool(f) ? fz_range(f, 0, 80) : fz_i64(f);
  return a;
}

static void check_setter(iter *it, attn_status st) {
  FZ_CHECK(fz_status_known(st), "setter: status %d", (int)st);
  if (st != ATTN_OK && st != ATTN_ERR_NULL_ARG)
    FZ_CHECK(attn_context_last_error(it->ctx)[0] != '\0', "setter failed without a message");
}

static void apply_setter(iter *it, attn_desc *d, attn_dtype dt) {
  fz *f = &it->in;
  uint8_t op = fz_u8(f) % 27;
  attn_status st = ATTN_OK;
  int64_t n;
  attn_clear_error(it->ctx);
  switch (op) {
    case 0: st = attn_desc_set_variant(d, (attn_variant)(int)(int8_t)fz_u8(f)); break;
    case 1: st = attn_desc_set_variant(d, (attn_variant)(fz_u8(f) % 8)); break;
    case 2: st = attn_desc_set_score(d, (attn_score)(int)(int8_t)fz_u8(f)); break;
    case 3: st = attn_desc_set_scale(d, fz_f64(f)); break;
    case 4: st = attn_desc_set_causal(d, (attn_causal)(int)(int8_t)(fz_u8(f) % 5 - 1)); break;
    case 5: {
      int64_t l = fz_bool(f) ? ATTN_WINDOW_UNBOUNDED : fz_i64(f);
      int64_t r = fz_bool(f) ? ATTN_WINDOW_UNBOUNDED : fz_i64(f);
      st = attn_desc_set_window(d, l, r);
      break;
    }
    case 6: {
      int64_t *a = len_array(it, &n);
      st = attn_desc_set_key_lengths(d, a, a ? n : 0);
      break;
    }
    case 7: {
      int64_t *a = len_array(it, &n);
      st = attn_desc_set_query_lengths(d, a, a ? n : 0);
      break;
    }
    case 8:
      st = attn_desc_set_bool_mask(d, aux_tensor(it, ATTN_DTYPE_U8, 4, fz_bool(f) ? 1 : it->B,
                                                  fz_bool(f) ? 1 : it->H, it->Sq, it->Sk));
      break;
    case 9:
      st = attn_desc_set_additive_mask(d, aux_tensor(it, dt, 4, fz_bool(f) ? 1 : it->B,
                                                      fz_bool(f) ? 1 : it->H, it->Sq, it->Sk));
      break;
    case 10: {
      n = fz_bool(f) && it->H <= 64 ? it->H : fz_range(f, -2, 40);
      double *s = NULL;
      if (fz_u8(f) % 16) {
        s = own(it, (size_t)(n > 0 ? n : 1) * sizeof *s);
        for (int64_t i = 0; s && i < (n > 0 ? n : 1); i++) s[i] = fz_bool(f) ? 0.25 : fz_f64(f);
      }
      st = attn_desc_set_alibi(d, s, s ? n : 0);
      break;
    }
    case 11: st = attn_desc_set_softcap(d, fz_f64(f)); break;
    case 12: st = attn_desc_set_general_weight(d, aux_tensor(it, dt, 2, it->Dq, it->Dk, 0, 0)); break;
    case 13: {
      int64_t A = fz_bool(f) ? fz_range(f, 1, 16) : pick_dim(it);
      attn_tensor *wq = aux_tensor(it, dt, 2, A, it->Dq, 0, 0);
      attn_tensor *wk = aux_tensor(it, dt, 2, A, it->Dk, 0, 0);
      attn_tensor *b = fz_bool(f) ? aux_tensor(it, dt, 1, A, 0, 0, 0) : NULL;
      attn_tensor *v = aux_tensor(it, dt, 1, A, 0, 0, 0);
      st = attn_desc_set_additive_weights(d, wq, wk, b, v);
      break;
    }
    case 14:
      st = attn_desc_set_swin(d, pick_dim(it), pick_dim(it), pick_dim(it), fz_i64(f));
      break;
    case 15: {
      int64_t w = fz_range(f, 1, 8);
      st = attn_desc_set_swin_bias(d, aux_tensor(it, dt, 2, (2 * w - 1) * (2 * w - 1), it->H, 0, 0));
      break;
    }
    case 16: {
      int64_t *a = len_array(it, &n);
      st = attn_desc_set_global_tokens(d, a, a ? n : 0);
      break;
    }
    case 17: st = attn_desc_set_block_size(d, fz_bool(f) ? fz_range(f, 1, 70) : fz_i64(f)); break;
    case 18: st = attn_desc_set_bigbird(d, fz_i64(f), fz_i64(f), fz_i64(f), fz_u64(f)); break;
    case 19: {
      int64_t b = fz_range(f, 1, 70);
      st = attn_desc_set_block_layout(d, aux_tensor(it, ATTN_DTYPE_U8, 3, fz_bool(f) ? 1 : it->H,
                                                     it->Sq / b + (it->Sq % b != 0),
                                                     it->Sk / b + (it->Sk % b != 0), 0));
      break;
    }
    case 20: st = attn_desc_set_features(d, fz_bool(f) ? fz_range(f, 1, 300) : fz_i64(f), fz_u64(f)); break;
    case 21: st = attn_desc_set_lowrank(d, fz_bool(f) ? fz_range(f, 1, 80) : fz_i64(f), fz_u64(f)); break;
    case 22: {
      int64_t k = fz_range(f, 1, 16);
      bool per_head = fz_bool(f);
      attn_tensor *e = per_head ? aux_tensor(it, dt, 3, it->Hkv, k, it->Sk, 0)
                                : aux_tensor(it, dt, 2, k, it->Sk, 0, 0);
      attn_tensor *ff = fz_u8(f) % 8 ? (per_head ? aux_tensor(it, dt, 3, it->Hkv, k, it->Sk, 0)
                                                 : aux_tensor(it, dt, 2, k, it->Sk, 0, 0))
                                     : NULL;
      st = attn_desc_set_lowrank_proj(d, e, ff);
      break;
    }
    case 23: { /* packed batch: offsets read for n + 1 entries */
      n = fz_bool(f) ? fz_range(f, 1, 4) : fz_range(f, -2, 40);
      int64_t *qo = NULL, *ko = NULL;
      if (fz_u8(f) % 16) {
        qo = own(it, (size_t)(n > 0 ? n + 1 : 1) * sizeof *qo);
        ko = fz_bool(f) ? own(it, (size_t)(n > 0 ? n + 1 : 1) * sizeof *ko) : NULL;
        for (int64_t i = 0; qo && i <= (n > 0 ? n : 0); i++) {
          /* Offsets that fit the totals (when the totals are small), or anything. */
          const bool small = it->Sq >= 0 && it->Sq < (1 << 20) && it->Sk >= 0 && it->Sk < (1 << 20);
          qo[i] = fz_bool(f) && small ? (i * it->Sq) / (n > 0 ? n : 1) : fz_i64(f);
          if (ko) ko[i] = fz_bool(f) && small ? (i * it->Sk) / (n > 0 ? n : 1) : fz_i64(f);
        }
      }
      st = attn_desc_set_varlen(d, qo, ko, qo ? n : 0);
      break;
    }
    case 24: {
      n = fz_bool(f) && it->H <= 64 ? it->H : fz_range(f, -2, 40);
      double *s = NULL;
      if (fz_u8(f) % 16) {
        s = own(it, (size_t)(n > 0 ? n : 1) * sizeof *s);
        for (int64_t i = 0; s && i < (n > 0 ? n : 1); i++) s[i] = fz_bool(f) ? 0.5 : fz_f64(f);
      }
      st = attn_desc_set_sinks(d, s, s ? n : 0);
      break;
    }
    case 25:
      st = attn_desc_set_key_mass(d, aux_tensor(it, dt, 3, it->B, fz_bool(f) ? it->H : it->Hkv, it->Sk, 0));
      break;
    default: /* NULL descriptor: every setter must cope */
      st = attn_desc_set_scale(NULL, 1.0);
      FZ_CHECK(st == ATTN_ERR_NULL_ARG, "NULL desc: status %d", (int)st);
      return;
  }
  check_setter(it, st);
}

static void start_pools(void) { fz_start_contexts(N_CTX, kThreads, g_alloc, g_ctx, g_baseline); }

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (g_ctx[0] == NULL) {
    start_pools();
    if (getenv("FUZZ_PLAN_STATS")) atexit(print_stats);
  }
  iter it;
  memset(&it, 0, sizeof it);
  it.in.p = data;
  it.in.n = size;
  fz *f = &it.in;
  int ci = fz_u8(f) % N_CTX;
  fz_alloc *a = &g_alloc[ci];
  it.ctx = g_ctx[ci];
  a->fail_every = fz_u8(f) % 8 == 0 ? fz_range(f, 1, 6) : 0;
  a->count = 0;

  attn_desc *d = CANARY;
  attn_status st = attn_desc_create(it.ctx, &d);
  FZ_CHECK(st == ATTN_OK || st == ATTN_ERR_NO_MEMORY, "desc_create: %d", (int)st);
  if (st != ATTN_OK) {
    FZ_CHECK(d == CANARY, "desc_create wrote *out on failure");
    d = NULL;
  }

  /* Problem dims, then the six tensors with (mostly) matching metadata. */
  it.B = pick_dim(&it), it.H = pick_dim(&it), it.Sq = pick_dim(&it), it.Sk = pick_dim(&it);
  it.Hkv = fz_bool(f) ? it.H : fz_bool(f) ? 1 : pick_dim(&it);
  it.Dq = pick_dim(&it);
  it.Dk = fz_u8(f) % 4 ? it.Dq : pick_dim(&it);
  it.Dv = fz_bool(f) ? it.Dq : pick_dim(&it);
  attn_dtype dt = pick_dtype(f);
  int64_t shapes[6][4] = {{it.B, it.H, it.Sq, it.Dq},  {it.B, it.Hkv, it.Sk, it.Dk},
                          {it.B, it.Hkv, it.Sk, it.Dv}, {it.B, it.H, it.Sq, it.Dv},
                          {it.B, it.H, it.Sq, it.Sk},  {it.B, it.H, it.Sq, 0}};
  int32_t ranks[6] = {4, 4, 4, 4, 4, 3};
  int perturb = fz_u8(f) % 12; /* < 6: one tensor gets a wrong dim/rank/dtype */
  attn_tensor *ts[6] = {0};
  bool present[6] = {true, true, true, true, fz_u8(f) % 4 == 0, fz_bool(f)};
  for (int i = 0; i < 6; i++) {
    if (!present[i]) continue;
    attn_dtype tdt = dt;
    /* 16-bit plans take f32 weights/lse (and, with a coin, an f32 out). */
    if ((dt == ATTN_DTYPE_BF16 || dt == ATTN_DTYPE_F16) && (i >= 4 || (i == 3 && fz_bool(f))))
      tdt = ATTN_DTYPE_F32;
    if (i == perturb) {
      uint8_t what = fz_u8(f) % 3;
      if (what == 0) shapes[i][fz_u8(f) % 4] = pick_dim(&it);
      else if (what == 1) ranks[i] = (int32_t)fz_range(f, -1, 5);
      else tdt = pick_dtype(f);
    }
    ts[i] = make_tensor(&it, tdt, ranks[i], shapes[i], false);
  }

  int nops = fz_u8(f) % 12;
  for (int i = 0; i < nops && d != NULL; i++) apply_setter(&it, d, dt);
  if (d != NULL && fz_u8(f) % 4 == 0) { /* an owned tensor of fuzzed metadata */
    int64_t shape[4] = {pick_dim(&it), pick_dim(&it), pick_dim(&it), pick_dim(&it)};
    attn_tensor *t = CANARY;
    st = attn_tensor_create(it.ctx, pick_dtype(f), (int32_t)fz_range(f, 0, 5), shape, &t);
    FZ_CHECK(fz_status_known(st), "tensor_create: %d", (int)st);
    if (st == ATTN_OK) attn_tensor_destroy(t);
    else FZ_CHECK(t == CANARY, "tensor_create wrote *out on failure");
  }

  attn_plan *plan = CANARY;
  attn_clear_error(it.ctx);
  st = attn_plan_create(it.ctx, d, ts[0], ts[1], ts[2], ts[3], ts[4], ts[5], &plan);
  FZ_CHECK(fz_status_known(st), "plan_create: %d", (int)st);
  g_plan_status[st]++;
  if (st == ATTN_OK) {
    FZ_CHECK(plan != NULL && plan != CANARY, "plan_create: OK without a plan");
    (void)attn_plan_workspace_size(plan);
    uint8_t buf[16];
    size_t bsz = sizeof buf;
    st = attn_plan_block_layout(plan, buf, &bsz);
    FZ_CHECK(fz_status_known(st), "block_layout: %d", (int)st);
    st = attn_plan_redraw_features(plan, fz_u64(f));
    FZ_CHECK(fz_status_known(st), "redraw: %d", (int)st);
    /* Execute with weights present where the plan has none (or the reverse):
     * must be refused before any data is touched. */
    attn_tensor *wrong_w = ts[4] ? NULL : ts[3];
    st = attn_plan_execute(plan, ts[0], ts[1], ts[2], ts[3], wrong_w, ts[5]);
    FZ_CHECK(st == ATTN_ERR_MISMATCH, "execute with a wrong weights tensor: %d", (int)st);
    /* Its backward, gradients of the inputs' metadata (dout = out): every
     * variant's setup (workspace sizes of projected scores, Linformer,
     * 16-bit copies, linear attention) on arbitrary dims. Only planned. */
    attn_backward_plan *bp = (attn_backward_plan *)CANARY;
    attn_clear_error(it.ctx);
    st = attn_backward_plan_create(plan, ts[3], ts[0], ts[1], ts[2], NULL, &bp);
    FZ_CHECK(fz_status_known(st), "backward_plan_create: %d", (int)st);
    if (st == ATTN_OK) {
      FZ_CHECK(bp != NULL && bp != (attn_backward_plan *)CANARY, "backward: OK without a plan");
      attn_backward_plan_destroy(bp);
    } else {
      FZ_CHECK(bp == (attn_backward_plan *)CANARY, "backward_plan_create wrote *out on failure");
      FZ_CHECK(attn_context_last_error(it.ctx)[0] != '\0', "backward failed without a message");
    }
    attn_plan_destroy(plan);
  } else {
    FZ_CHECK(plan == CANARY, "plan_create wrote *out on failure");
    FZ_CHECK(attn_context_last_error(it.ctx)[0] != '\0', "plan_create failed without a message");
  }

  attn_desc_destroy(d);
  for (int i = 0; i < it.ntensors; i++) attn_tensor_destroy(it.tensors[i]);
  for (int i = 0; i < it.nowned; i++) free(it.owned[i]);
  a->fail_every = 0;
  FZ_CHECK(a->outstanding == g_baseline[ci], "leak: %lld bytes outstanding, %lld expected",
           (long long)a->outstanding, (long long)g_baseline[ci]);
  return 0;
}

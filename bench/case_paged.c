/* attn-bench cases "paged_decode" and "paged_prefill": the paged KV cache
 * against the same work on contiguous caches, measured in the same process.
 *
 * paged_decode: --seqs N sequences whose lengths are spread log-uniformly
 * over 512..S_k (--Sk), H/H_kv heads, head dim D, block size --block. One
 * call decodes one new query per sequence (a ragged batch). bytes = the
 * K/V rows read (Σ len·H_kv·2·D·sizeof), so frac_bw is the fraction of the
 * measured read bandwidth. contig_ms: the same N decode steps on N
 * contiguous caches (one attn_kvcache of batch 1 per sequence, executed one
 * after the other); extra speed_vs_contig = contig_ms / ms. Both copies of
 * the K/V stay in memory; the two are timed A, B, A, B and the lower median
 * of each pair is reported (ms, contig_ms). Also the prefix
 * sharing numbers: one sequence holding an 8192-token prompt uses
 * one_seq_bytes of blocks; it and 15 forks of it use forked_bytes;
 * fork_mem_ratio = forked_bytes / one_seq_bytes. max_err: paged vs
 * contiguous outputs. --kv-storage bf16|f16|int8|int4 stores both the pool
 * and the contiguous caches in that format (f32 only); bytes are then each
 * position's share of its blocks (rows and scales), JSON adds kv_storage
 * and kv_bytes (the pool's blocks in use).
 *
 * paged_prefill: a chunk of S_q (--Sq) new tokens of one sequence attends to
 * an S_k-token (--Sk) paged prefix plus itself (bottom-right causal).
 * gflops count 4·H·D·(S_q·S_k + S_q(S_q+1)/2); contig_ms is the same chunk on
 * a contiguous cache (attn_kvcache) holding the same tokens; extra
 * gflops_vs_contig = contig_ms / ms. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "attn/attn.h"
#include "bench.h"

#define STAGE 4096 /* staging rows per append */

/* Times of two ways of doing the same work on a shared, noisy machine:
 * A, B, A, B (each a median of reps after its warm-up), the lower of each
 * pair, so a load change during the run does not land on one side only. */
static void time_pair(int (*a)(void *), int (*b)(void *), void *arg, int32_t reps, double *ms_a,
                      double *ms_b) {
  *ms_a = bench_time_ms(a, arg, reps);
  *ms_b = bench_time_ms(b, arg, reps);
  *ms_a = fmin(*ms_a, bench_time_ms(a, arg, reps));
  *ms_b = fmin(*ms_b, bench_time_ms(b, arg, reps));
}

static void add_field(bench_result *r, const char *name, double v) {
  if (r->nfields < 8) {
    r->field_names[r->nfields] = name;
    r->field_values[r->nfields++] = v;
  }
}

/* Rows [0, n) of the staging tensor st [1, Hkv, STAGE, D] as [Hkv, n, D]. */
static attn_tensor *stage_view(attn_context *ctx, const attn_tensor *st, int64_t n) {
  const int64_t Hkv = attn_tensor_dim(st, 1), D = attn_tensor_dim(st, 3);
  const int64_t shape[3] = {Hkv, n, D}, strides[3] = {STAGE * D, D, 1};
  attn_tensor *t = NULL;
  if (attn_tensor_wrap(ctx, attn_tensor_dtype(st), 3, shape, strides, attn_tensor_data(st), &t) != ATTN_OK)
    return NULL;
  return t;
}

static int paged_fill(attn_context *ctx, attn_paged_cache *pc, int64_t seq, int64_t len,
                      const attn_tensor *kn, const attn_tensor *vn) {
  for (int64_t p = 0; p < len; p += STAGE) {
    const int64_t n = len - p < STAGE ? len - p : STAGE;
    attn_tensor *k = stage_view(ctx, kn, n), *v = stage_view(ctx, vn, n);
    int rc = k && v && attn_paged_append(pc, seq, k, v) == ATTN_OK ? 0 : 1;
    attn_tensor_destroy(k);
    attn_tensor_destroy(v);
    if (rc) return 1;
  }
  return 0;
}

static int contig_fill(attn_kvcache *kc, int64_t len, const attn_tensor *kn, const attn_tensor *vn) {
  for (int64_t p = 0; p < len; p += STAGE) {
    int64_t n = len - p < STAGE ? len - p : STAGE;
    if (attn_kvcache_append(kc, kn, vn, &n) != ATTN_OK) return 1;
  }
  return 0;
}

static attn_paged_cache *make_pool(attn_context *ctx, const bench_opts *o, int64_t blocks,
                                   int64_t seqs) {
  attn_paged_config cfg;
  attn_paged_config_init(&cfg);
  cfg.heads_kv = o->Hkv;
  cfg.d_k = o->D;
  cfg.block_size = o->block;
  cfg.num_blocks = blocks;
  cfg.max_seqs = seqs;
  cfg.dtype = o->dtype;
  cfg.storage = (attn_kvcache_storage)o->kv_storage;
  attn_paged_cache *pc = NULL;
  return attn_paged_create(ctx, &cfg, &pc) == ATTN_OK ? pc : NULL;
}

static attn_kvcache *make_contig(attn_context *ctx, const bench_opts *o, int64_t cap) {
  attn_kvcache_config cfg;
  attn_kvcache_config_init(&cfg);
  cfg.heads_kv = o->Hkv;
  cfg.capacity = cap;
  cfg.d_k = o->D;
  cfg.dtype = o->dtype;
  cfg.storage = (attn_kvcache_storage)o->kv_storage;
  attn_kvcache *kc = NULL;
  return attn_kvcache_create(ctx, &cfg, &kc) == ATTN_OK ? kc : NULL;
}

/* ---- paged_decode ------------------------------------------------------------ */

int bench_case_paged_decode(attn_context *ctx, const bench_opts *o, bench_result *r);
int bench_case_paged_prefill(attn_context *ctx, const bench_opts *o, bench_result *r);

typedef struct pd_run {
  attn_paged_plan *plan;
  int64_t count;
  const int64_t *seqs;
  attn_tensor *q, *out;
  /* contiguous */
  int64_t n;
  attn_kvcache_plan **cplans;
  attn_tensor **cq, **cout;
} pd_run;

static int pd_paged(void *arg) {
  pd_run *d = arg;
  return attn_paged_plan_execute(d->plan, d->count, d->seqs, d->q, d->out, NULL, NULL) == ATTN_OK ? 0 : 1;
}

static int pd_contig(void *arg) {
  pd_run *d = arg;
  for (int64_t i = 0; i < d->n; i++)
    if (attn_kvcache_plan_execute(d->cplans[i], d->cq[i], d->cout[i], NULL, NULL) != ATTN_OK) return 1;
  return 0;
}

/* Prefix sharing: blocks of one 8192-token prompt vs it and 15 forks. */
static int fork_memory(attn_context *ctx, const bench_opts *o, const attn_tensor *kn,
                       const attn_tensor *vn, bench_result *r) {
  const int64_t P = 8192, nfork = 16;
  attn_paged_cache *pc = make_pool(ctx, o, (P + o->block - 1) / o->block + 2 * nfork, nfork);
  int64_t s = -1, f;
  int rc = 1;
  if (pc == NULL || attn_paged_seq_create(pc, &s) != ATTN_OK || paged_fill(ctx, pc, s, P, kn, vn))
    goto done;
  const double one = (double)attn_paged_memory_used(pc);
  for (int64_t i = 1; i < nfork; i++)
    if (attn_paged_fork(pc, s, &f) != ATTN_OK) goto done;
  const double all = (double)attn_paged_memory_used(pc);
  add_field(r, "one_seq_bytes", one);
  add_field(r, "forked_bytes", all);
  add_field(r, "fork_mem_ratio", all / one);
  rc = 0;
done:
  attn_paged_destroy(pc);
  return rc;
}

int bench_case_paged_decode(attn_context *ctx, const bench_opts *o, bench_result *r) {
  const int64_t N = o->seqs > 0 ? o->seqs : 16, H = o->H, Hkv = o->Hkv, D = o->D, bs = o->block;
  const int64_t Lmax = o->Sk, Lmin = Lmax < 512 ? Lmax : 512;
  const size_t es = o->dtype == ATTN_DTYPE_F64 ? 8 : 4;
  int rc = 1;
  int64_t *lens = calloc((size_t)N, sizeof *lens), *seqs = calloc((size_t)N, sizeof *seqs);
  attn_kvcache **caches = calloc((size_t)N, sizeof *caches);
  attn_kvcache_plan **cplans = calloc((size_t)N, sizeof *cplans);
  attn_tensor **cq = calloc((size_t)N, sizeof *cq), **cout = calloc((size_t)N, sizeof *cout);
  attn_tensor *kn = bench_tensor(ctx, o->dtype, 1, Hkv, STAGE, D, 21);
  attn_tensor *vn = bench_tensor(ctx, o->dtype, 1, Hkv, STAGE, D, 22);
  attn_tensor *q = bench_tensor(ctx, o->dtype, N, H, 1, D, 23);
  attn_tensor *out = bench_tensor(ctx, o->dtype, N, H, 1, D, 24);
  attn_paged_cache *pc = NULL;
  attn_paged_plan *plan = NULL;
  attn_desc *desc = NULL;
  if (!lens || !seqs || !caches || !cplans || !cq || !cout || !kn || !vn || !q || !out) goto done;
  if (bs < 1 || N < 1) {
    fprintf(stderr, "paged_decode: --block and --seqs must be >= 1\n");
    goto done;
  }
  int64_t blocks = 0;
  double bytes = 0;
  for (int64_t i = 0; i < N; i++) {
    const double f = N > 1 ? (double)i / (double)(N - 1) : 1.0;
    lens[i] = (int64_t)llround((double)Lmin * pow((double)Lmax / (double)Lmin, f));
    blocks += (lens[i] + bs - 1) / bs;
    bytes += (double)lens[i] * (double)Hkv * 2.0 * (double)D * (double)es;
  }
  if (attn_desc_create(ctx, &desc) != ATTN_OK ||
      attn_desc_set_causal(desc, ATTN_CAUSAL_BOTTOM_RIGHT) != ATTN_OK)
    goto done;
  pc = make_pool(ctx, o, blocks, N);
  if (pc == NULL) goto done;
  for (int64_t i = 0; i < N; i++)
    if (attn_paged_seq_create(pc, &seqs[i]) != ATTN_OK ||
        paged_fill(ctx, pc, seqs[i], lens[i], kn, vn) != 0)
      goto done;
  if (attn_paged_plan_create(ctx, pc, desc, q, out, NULL, &plan) != ATTN_OK) goto done;
  /* The same work on per-sequence contiguous caches (same tokens). */
  for (int64_t i = 0; i < N; i++) {
    const int64_t qs[4] = {1, H, 1, D};
    const int64_t qst[4] = {H * D, D, D, 1};
    char *qb = (char *)attn_tensor_data(q) + (size_t)(i * H * D) * es;
    caches[i] = make_contig(ctx, o, lens[i]);
    if (caches[i] == NULL || contig_fill(caches[i], lens[i], kn, vn) != 0 ||
        attn_tensor_wrap(ctx, o->dtype, 4, qs, qst, qb, &cq[i]) != ATTN_OK ||
        (cout[i] = bench_tensor(ctx, o->dtype, 1, H, 1, D, 25)) == NULL ||
        attn_kvcache_plan_create(caches[i], desc, cq[i], cout[i], NULL, &cplans[i]) != ATTN_OK)
      goto done;
  }
  if (o->kv_storage != ATTN_KVCACHE_STORE_NATIVE) {
    /* Bytes read: each position's share of its block (rows and scales). */
    const double per_pos = (double)attn_paged_memory_used(pc) / ((double)blocks * (double)bs);
    bytes = 0;
    for (int64_t i = 0; i < N; i++) bytes += (double)lens[i] * per_pos;
    r->kv_storage = bench_storage_name((attn_kvcache_storage)o->kv_storage, o->dtype);
    r->kv_bytes = (double)attn_paged_memory_used(pc);
  }
  pd_run d = {plan, N, seqs, q, out, N, cplans, cq, cout};
  double cms;
  time_pair(pd_paged, pd_contig, &d, o->reps, &r->ms, &cms);
  r->bytes = bytes;
  double positions = 0;
  for (int64_t i = 0; i < N; i++) positions += (double)lens[i];
  r->flops = 4.0 * (double)H * (double)D * positions;
  add_field(r, "contig_ms", cms);
  r->extra = cms / r->ms;
  r->extra_name = "speed_vs_contig";
  /* paged vs contiguous outputs */
  double mx = 0, ref = 0;
  for (int64_t i = 0; i < N; i++)
    for (int64_t x = 0; x < H * D; x++) {
      double a, b;
      if (o->dtype == ATTN_DTYPE_F64) {
        a = ((const double *)attn_tensor_data(out))[i * H * D + x];
        b = ((const double *)attn_tensor_data(cout[i]))[x];
      } else {
        a = ((const float *)attn_tensor_data(out))[i * H * D + x];
        b = ((const float *)attn_tensor_data(cout[i]))[x];
      }
      mx = fmax(mx, fabs(a - b));
      ref = fmax(ref, fabs(b));
    }
  r->has_err = true;
  r->max_err = r->mean_err = ref > 0 ? mx / ref : mx;
  attn_paged_plan_destroy(plan);
  plan = NULL;
  attn_paged_destroy(pc);
  pc = NULL;
  for (int64_t i = 0; i < N; i++) { /* free before the prefix-sharing pool */
    attn_kvcache_plan_destroy(cplans[i]);
    attn_kvcache_destroy(caches[i]);
    cplans[i] = NULL;
    caches[i] = NULL;
  }
  if (fork_memory(ctx, o, kn, vn, r) != 0) goto done;
  rc = 0;
done:
  if (rc != 0) fprintf(stderr, "paged_decode: %s\n", attn_context_last_error(ctx));
  for (int64_t i = 0; cplans && i < N; i++) {
    attn_kvcache_plan_destroy(cplans[i]);
    attn_kvcache_destroy(caches[i]);
    attn_tensor_destroy(cq[i]);
    attn_tensor_destroy(cout[i]);
  }
  attn_paged_plan_destroy(plan);
  attn_paged_destroy(pc);
  attn_desc_destroy(desc);
  attn_tensor_destroy(kn);
  attn_tensor_destroy(vn);
  attn_tensor_destroy(q);
  attn_tensor_destroy(out);
  free(lens);
  free(seqs);
  free(caches);
  free(cplans);
  free(cq);
  free(cout);
  return rc;
}

/* ---- paged_prefill ----------------------------------------------------------- */

typedef struct pp_run {
  attn_paged_plan *plan;
  int64_t seq;
  attn_kvcache_plan *cplan;
  attn_tensor *q, *out, *cout;
} pp_run;

static int pp_paged(void *arg) {
  pp_run *d = arg;
  return attn_paged_plan_execute(d->plan, 1, &d->seq, d->q, d->out, NULL, NULL) == ATTN_OK ? 0 : 1;
}

static int pp_contig(void *arg) {
  pp_run *d = arg;
  return attn_kvcache_plan_execute(d->cplan, d->q, d->cout, NULL, NULL) == ATTN_OK ? 0 : 1;
}

int bench_case_paged_prefill(attn_context *ctx, const bench_opts *o, bench_result *r) {
  const int64_t H = o->H, Hkv = o->Hkv, D = o->D, C = o->Sq, P = o->Sk, bs = o->block;
  int rc = 1;
  attn_tensor *kn = bench_tensor(ctx, o->dtype, 1, Hkv, STAGE, D, 31);
  attn_tensor *vn = bench_tensor(ctx, o->dtype, 1, Hkv, STAGE, D, 32);
  attn_tensor *q = bench_tensor(ctx, o->dtype, 1, H, C, D, 33);
  attn_tensor *out = bench_tensor(ctx, o->dtype, 1, H, C, D, 34);
  attn_tensor *cout = bench_tensor(ctx, o->dtype, 1, H, C, D, 35);
  attn_paged_cache *pc = NULL;
  attn_kvcache *kc = NULL;
  attn_desc *desc = NULL;
  pp_run d = {0};
  if (!kn || !vn || !q || !out || !cout || bs < 1) goto done;
  if (attn_desc_create(ctx, &desc) != ATTN_OK ||
      attn_desc_set_causal(desc, ATTN_CAUSAL_BOTTOM_RIGHT) != ATTN_OK)
    goto done;
  pc = make_pool(ctx, o, (P + C + bs - 1) / bs, 1);
  kc = make_contig(ctx, o, P + C);
  if (pc == NULL || kc == NULL || attn_paged_seq_create(pc, &d.seq) != ATTN_OK ||
      paged_fill(ctx, pc, d.seq, P + C, kn, vn) != 0 || contig_fill(kc, P + C, kn, vn) != 0 ||
      attn_paged_plan_create(ctx, pc, desc, q, out, NULL, &d.plan) != ATTN_OK ||
      attn_kvcache_plan_create(kc, desc, q, cout, NULL, &d.cplan) != ATTN_OK)
    goto done;
  d.q = q;
  d.out = out;
  d.cout = cout;
  double cms;
  time_pair(pp_paged, pp_contig, &d, o->reps, &r->ms, &cms);
  r->flops = 4.0 * (double)H * (double)D * ((double)C * (double)P + (double)C * (double)(C + 1) / 2.0);
  add_field(r, "contig_ms", cms);
  add_field(r, "contig_gflops", r->flops / (cms * 1e6));
  r->extra = cms / r->ms;
  r->extra_name = "gflops_vs_contig";
  r->has_err = true;
  bench_rel_error(out, cout, &r->max_err, &r->mean_err);
  rc = 0;
done:
  if (rc != 0) fprintf(stderr, "paged_prefill: %s\n", attn_context_last_error(ctx));
  attn_paged_plan_destroy(d.plan);
  attn_kvcache_plan_destroy(d.cplan);
  attn_paged_destroy(pc);
  attn_kvcache_destroy(kc);
  attn_desc_destroy(desc);
  attn_tensor_destroy(kn);
  attn_tensor_destroy(vn);
  attn_tensor_destroy(q);
  attn_tensor_destroy(out);
  attn_tensor_destroy(cout);
  return rc;
}

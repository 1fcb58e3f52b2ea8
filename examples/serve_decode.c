/* Continuous batching over a paged KV cache (one attention layer).
 *
 * Requests arrive at random steps with prompts of random length; a quarter
 * of them continue a shared system prompt (they are forks of one prefilled
 * sequence, so its blocks are stored once). Every step the loop
 *   1. admits arrivals while sequence ids and blocks allow,
 *   2. prefills waiting prompts in chunks of up to CHUNK tokens, at most
 *      PREFILL_CHUNKS per step (append the chunk's K/V, attend the chunk to
 *      its prefix plus itself),
 *   3. decodes one token for every running sequence in ONE call over the
 *      ragged batch (each row its own sequence and length),
 *   4. frees the blocks of finished sequences.
 * It prints tokens/s, the batch size and the cache use, and checks itself:
 * every 25 steps one sequence's decode output is recomputed on a contiguous
 * KV cache holding the same tokens (exit status 1 if they differ).
 *
 * There is no model here: a token's K, V and query rows are a deterministic
 * function of (request, position), so the check can rebuild them.
 *
 * The second argument picks the cache's storage: f32 (default), bf16, f16,
 * int8 or int4 (the check then uses a contiguous cache of that storage).
 *
 *   build/examples/serve_decode [steps [storage]]      (default 200 f32) */
#define _POSIX_C_SOURCE 199309L
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "attn/attn.h"

enum { H = 8, HKV = 2, D = 64, BLOCK = 16, BLOCKS = 1536, MAX_SEQS = 24, CHUNK = 64,
       SYSTEM = 96, MAX_LEN = 1024, PREFILL_CHUNKS = 3,
       GROUP = 16 /* int8/int4: positions per K scale (divides BLOCK) */ };

#define CHECK(call)                                                                   \
  do {                                                                                \
    attn_status st_ = (call);                                                         \
    if (st_ != ATTN_OK) {                                                             \
      fprintf(stderr, "%s:%d: %s: %s\n", __FILE__, __LINE__, #call,                   \
              attn_context_last_error(ctx));                                          \
      exit(1);                                                                        \
    }                                                                                 \
  } while (0)

typedef struct request {
  int64_t seq;        /* cache sequence id, −1 before admission */
  uint32_t uid;       /* content of its own tokens */
  int shared;         /* continues the system prompt */
  int64_t prompt;     /* tokens to prefill (after the shared part) */
  int64_t gen;        /* tokens to generate */
  int64_t done_pf, done_gen;
} request;

/* Deterministic row of a token: uid 0 is the system prompt. */
static float val(uint32_t uid, int64_t pos, int what, int64_t h, int64_t x) {
  uint64_t z = ((uint64_t)uid * 0x9E3779B97F4A7C15ull) ^ ((uint64_t)pos << 20) ^
               ((uint64_t)what << 58) ^ ((uint64_t)h << 12) ^ (uint64_t)x;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  z ^= z >> 31;
  return (float)((double)(z >> 11) / 9007199254740992.0 * 2.0 - 1.0);
}
static attn_kvcache_storage g_storage = ATTN_KVCACHE_STORE_NATIVE;

static uint32_t owner(const request *r, int64_t pos) { return r->shared && pos < SYSTEM ? 0 : r->uid; }

/* k, v [HKV, n, D] for positions [p0, p0 + n) of request r. */
static void fill_kv(const request *r, int64_t p0, int64_t n, float *k, float *v) {
  for (int64_t h = 0; h < HKV; h++)
    for (int64_t i = 0; i < n; i++)
      for (int64_t x = 0; x < D; x++) {
        k[(h * n + i) * D + x] = val(owner(r, p0 + i), p0 + i, 0, h, x);
        v[(h * n + i) * D + x] = val(owner(r, p0 + i), p0 + i, 1, h, x);
      }
}

static double now_s(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

/* Rebuild request r's tokens in a contiguous cache and attend query qrow
 * ([H, D]) there; compare with the paged result got ([H, D]). */
static int check_against_contiguous(attn_context *ctx, const attn_desc *desc, const request *r,
                                    int64_t len, const float *qrow, const float *got) {
  attn_kvcache_config cfg;
  attn_kvcache_config_init(&cfg);
  cfg.heads_kv = HKV;
  cfg.capacity = len;
  cfg.d_k = D;
  cfg.storage = g_storage;
  cfg.group_size = GROUP; /* int8/int4: the paged cache's group, so the same codes */
  attn_kvcache *kc = NULL;
  CHECK(attn_kvcache_create(ctx, &cfg, &kc));
  float *k = malloc(sizeof(float) * (size_t)(HKV * len * D));
  float *v = malloc(sizeof(float) * (size_t)(HKV * len * D));
  float out[H * D];
  fill_kv(r, 0, len, k, v);
  const int64_t ks[4] = {1, HKV, len, D}, qs[4] = {1, H, 1, D};
  attn_tensor *tk = NULL, *tv = NULL, *tq = NULL, *to = NULL;
  CHECK(attn_tensor_wrap(ctx, ATTN_DTYPE_F32, 4, ks, NULL, k, &tk));
  CHECK(attn_tensor_wrap(ctx, ATTN_DTYPE_F32, 4, ks, NULL, v, &tv));
  CHECK(attn_tensor_wrap(ctx, ATTN_DTYPE_F32, 4, qs, NULL, (void *)qrow, &tq));
  CHECK(attn_tensor_wrap(ctx, ATTN_DTYPE_F32, 4, qs, NULL, out, &to));
  CHECK(attn_kvcache_append(kc, tk, tv, NULL));
  attn_kvcache_plan *p = NULL;
  CHECK(attn_kvcache_plan_create(kc, desc, tq, to, NULL, &p));
  CHECK(attn_kvcache_plan_execute(p, tq, to, NULL, NULL));
  double err = 0;
  for (int i = 0; i < H * D; i++) err = fmax(err, fabs((double)out[i] - (double)got[i]));
  attn_kvcache_plan_destroy(p);
  attn_tensor_destroy(tk);
  attn_tensor_destroy(tv);
  attn_tensor_destroy(tq);
  attn_tensor_destroy(to);
  attn_kvcache_destroy(kc);
  free(k);
  free(v);
  return err < 1e-5 ? 0 : (fprintf(stderr, "paged vs contiguous: max |diff| %.3g\n", err), 1);
}

int main(int argc, char **argv) {
  const int steps = argc > 1 ? atoi(argv[1]) : 200;
  static const char *const names[5] = {"f32", "bf16", "f16", "int8", "int4"};
  static const attn_kvcache_storage stores[5] = {
      ATTN_KVCACHE_STORE_NATIVE, ATTN_KVCACHE_STORE_BF16, ATTN_KVCACHE_STORE_F16,
      ATTN_KVCACHE_STORE_INT8, ATTN_KVCACHE_STORE_INT4};
  int si = 0;
  if (argc > 2) {
    for (si = 0; si < 5 && strcmp(argv[2], names[si]) != 0; si++) continue;
    if (si == 5) {
      fprintf(stderr, "serve_decode: storage must be f32, bf16, f16, int8 or int4\n");
      return 2;
    }
    g_storage = stores[si];
  }
  attn_context *ctx = NULL;
  attn_context_options co;
  attn_context_options_init(&co);
  co.num_threads = 2;
  if (attn_context_create(&co, &ctx) != ATTN_OK) return 1;

  attn_paged_config cfg;
  attn_paged_config_init(&cfg);
  cfg.heads_kv = HKV;
  cfg.d_k = D;
  cfg.block_size = BLOCK;
  cfg.num_blocks = BLOCKS;
  cfg.max_seqs = MAX_SEQS;
  cfg.max_seq_len = MAX_LEN;
  cfg.storage = g_storage;
  cfg.group_size = GROUP;
  attn_paged_cache *pc = NULL;
  CHECK(attn_paged_create(ctx, &cfg, &pc));

  /* Plans: decode (up to MAX_SEQS rows, 1 query) and prefill (1 row, CHUNK queries). */
  attn_desc *desc = NULL;
  CHECK(attn_desc_create(ctx, &desc));
  CHECK(attn_desc_set_causal(desc, ATTN_CAUSAL_BOTTOM_RIGHT));
  static float qd[MAX_SEQS * H * D], od[MAX_SEQS * H * D], qp[H * CHUNK * D], op[H * CHUNK * D];
  static float kbuf[HKV * CHUNK * D], vbuf[HKV * CHUNK * D];
  const int64_t qds[4] = {MAX_SEQS, H, 1, D}, qps[4] = {1, H, CHUNK, D};
  attn_tensor *tqd, *tod, *tqp, *top;
  CHECK(attn_tensor_wrap(ctx, ATTN_DTYPE_F32, 4, qds, NULL, qd, &tqd));
  CHECK(attn_tensor_wrap(ctx, ATTN_DTYPE_F32, 4, qds, NULL, od, &tod));
  CHECK(attn_tensor_wrap(ctx, ATTN_DTYPE_F32, 4, qps, NULL, qp, &tqp));
  CHECK(attn_tensor_wrap(ctx, ATTN_DTYPE_F32, 4, qps, NULL, op, &top));
  attn_paged_plan *decode = NULL, *prefill = NULL;
  CHECK(attn_paged_plan_create(ctx, pc, desc, tqd, tod, NULL, &decode));
  CHECK(attn_paged_plan_create(ctx, pc, desc, tqp, top, NULL, &prefill));

  /* The shared system prompt: prefilled once, forked by shared requests. */
  request sys = {-1, 0, 1, SYSTEM, 0, 0, 0};
  CHECK(attn_paged_seq_create(pc, &sys.seq));
  for (int64_t p = 0; p < SYSTEM; p += CHUNK) {
    const int64_t n = SYSTEM - p < CHUNK ? SYSTEM - p : CHUNK, s3[3] = {HKV, n, D};
    attn_tensor *tk, *tv;
    fill_kv(&sys, p, n, kbuf, vbuf);
    CHECK(attn_tensor_wrap(ctx, ATTN_DTYPE_F32, 3, s3, NULL, kbuf, &tk));
    CHECK(attn_tensor_wrap(ctx, ATTN_DTYPE_F32, 3, s3, NULL, vbuf, &tv));
    CHECK(attn_paged_append(pc, sys.seq, tk, tv));
    attn_tensor_destroy(tk);
    attn_tensor_destroy(tv);
  }

  enum { MAXREQ = 4096 };
  static request req[MAXREQ];
  int nreq = 0, finished = 0, failures = 0;
  uint64_t rng = 12345;
  double t0 = now_s(), batch_sum = 0;
  int64_t tokens = 0, peak_used = 0, forks = 0;
  for (int step = 0; step < steps; step++) {
    /* 1. arrivals (about one every other step) and admission */
    rng = rng * 6364136223846793005ull + 1442695040888963407ull;
    if ((rng >> 33) % 2 == 0 && nreq < MAXREQ) {
      request *r = &req[nreq];
      r->seq = -1;
      r->uid = (uint32_t)nreq + 1;
      r->shared = (rng >> 40) % 4 == 0;
      r->prompt = 16 + (int64_t)((rng >> 20) % 300);
      r->gen = 8 + (int64_t)((rng >> 45) % 64);
      r->done_pf = r->done_gen = 0;
      nreq++;
    }
    for (int i = 0; i < nreq; i++) {
      request *r = &req[i];
      if (r->seq >= 0 || r->done_gen >= r->gen) continue;
      const int64_t need = (r->prompt + r->gen) / BLOCK + 2; /* a simple reservation */
      if (attn_paged_free_blocks(pc) < need + 8 || attn_paged_num_seqs(pc) >= MAX_SEQS) break;
      if (r->shared) {
        CHECK(attn_paged_fork(pc, sys.seq, &r->seq));
        forks++;
      } else {
        CHECK(attn_paged_seq_create(pc, &r->seq));
      }
    }
    /* 2. chunked prefill: up to PREFILL_CHUNKS chunks per step, oldest prompts first */
    int budget = PREFILL_CHUNKS;
    for (int i = 0; i < nreq && budget > 0; i++) {
      request *r = &req[i];
      const int64_t base = r->shared ? SYSTEM : 0;
      if (r->seq < 0 || r->done_pf >= r->prompt) continue;
      const int64_t p0 = base + r->done_pf;
      const int64_t n = r->prompt - r->done_pf < CHUNK ? r->prompt - r->done_pf : CHUNK;
      const int64_t s3[3] = {HKV, n, D};
      attn_tensor *tk, *tv;
      fill_kv(r, p0, n, kbuf, vbuf);
      CHECK(attn_tensor_wrap(ctx, ATTN_DTYPE_F32, 3, s3, NULL, kbuf, &tk));
      CHECK(attn_tensor_wrap(ctx, ATTN_DTYPE_F32, 3, s3, NULL, vbuf, &tv));
      attn_status st = attn_paged_append(pc, r->seq, tk, tv);
      attn_tensor_destroy(tk);
      attn_tensor_destroy(tv);
      if (st == ATTN_ERR_CAPACITY) break; /* out of blocks: nothing was written; retry later */
      CHECK(st);
      for (int64_t h = 0; h < H; h++)
        for (int64_t q = 0; q < n; q++)
          for (int64_t x = 0; x < D; x++) qp[(h * CHUNK + q) * D + x] = val(r->uid, p0 + q, 2, h, x);
      CHECK(attn_paged_plan_execute(prefill, 1, &r->seq, tqp, top, NULL, &n));
      r->done_pf += n;
      tokens += n;
      budget--;
    }
    /* 3. one decode call for every running sequence */
    int64_t ids[MAX_SEQS], count = 0;
    int rows[MAX_SEQS];
    for (int i = 0; i < nreq && count < MAX_SEQS; i++) {
      request *r = &req[i];
      if (r->seq < 0 || r->done_pf < r->prompt || r->done_gen >= r->gen) continue;
      const int64_t pos = attn_paged_seq_length(pc, r->seq), s3[3] = {HKV, 1, D};
      attn_tensor *tk, *tv;
      fill_kv(r, pos, 1, kbuf, vbuf);
      CHECK(attn_tensor_wrap(ctx, ATTN_DTYPE_F32, 3, s3, NULL, kbuf, &tk));
      CHECK(attn_tensor_wrap(ctx, ATTN_DTYPE_F32, 3, s3, NULL, vbuf, &tv));
      attn_status st = attn_paged_append(pc, r->seq, tk, tv);
      attn_tensor_destroy(tk);
      attn_tensor_destroy(tv);
      if (st == ATTN_ERR_CAPACITY) continue; /* this one waits a step */
      CHECK(st);
      for (int64_t h = 0; h < H; h++)
        for (int64_t x = 0; x < D; x++) qd[(count * H + h) * D + x] = val(r->uid, pos, 2, h, x);
      rows[count] = i;
      ids[count++] = r->seq;
    }
    if (count > 0) CHECK(attn_paged_plan_execute(decode, count, ids, tqd, tod, NULL, NULL));
    batch_sum += (double)count;
    tokens += count;
    if (count > 0 && step % 25 == 0) { /* self-check: row 0 against a contiguous cache */
      const request *r = &req[rows[0]];
      failures += check_against_contiguous(ctx, desc, r, attn_paged_seq_length(pc, r->seq), qd, od);
    }
    const int64_t used = (int64_t)attn_paged_memory_used(pc);
    if (used > peak_used) peak_used = used;
    /* 4. finished sequences give their blocks back */
    for (int64_t c = 0; c < count; c++) {
      request *r = &req[rows[c]];
      if (++r->done_gen == r->gen) {
        CHECK(attn_paged_seq_free(pc, r->seq));
        r->seq = -1;
        finished++;
      }
    }
    if (step % 50 == 0 || step == steps - 1)
      printf("step %4d: batch %2lld, %3lld live sequences, cache %5.1f MiB used of %.1f MiB "
             "(%lld/%lld blocks free)\n",
             step, (long long)count, (long long)attn_paged_num_seqs(pc), (double)used / 1048576.0,
             (double)attn_paged_memory_size(pc) / 1048576.0, (long long)attn_paged_free_blocks(pc),
             (long long)attn_paged_num_blocks(pc));
  }
  const double secs = now_s() - t0;
  printf("%d requests (%lld forked from a %d-token system prompt), %d finished; %lld tokens in "
         "%.2f s = %.0f tokens/s; mean decode batch %.1f; peak cache use %.1f MiB\n",
         nreq, (long long)forks, SYSTEM, finished, (long long)tokens, secs, (double)tokens / secs,
         batch_sum / (steps > 0 ? steps : 1), (double)peak_used / 1048576.0);
  printf("storage %s; self-check against contiguous caches: %s\n", names[si],
         failures ? "FAILED" : "ok");

  attn_paged_plan_destroy(decode);
  attn_paged_plan_destroy(prefill);
  attn_tensor_destroy(tqd);
  attn_tensor_destroy(tod);
  attn_tensor_destroy(tqp);
  attn_tensor_destroy(top);
  attn_desc_destroy(desc);
  attn_paged_destroy(pc);
  attn_context_destroy(ctx);
  return failures ? 1 : 0;
}

/* The context's own worker threads. One job at a time: the calling thread
 * publishes (fn, arg, ntasks), workers and the caller take task indices from
 * an atomic counter, and the caller waits until all are done. Which thread
 * runs a task never changes its result, so output is identical for any
 * thread count. OpenBLAS is held at one thread for the duration of a job. */
#include <pthread.h>
#include <stdatomic.h>
#include <unistd.h>

#include "blas/gemm.h"
#include "core/internal.h"

struct attn_threadpool {
  pthread_mutex_t mu;
  pthread_cond_t wake;  /* workers wait for a new generation */
  pthread_cond_t done;  /* the caller waits for workers to finish */
  int32_t nworkers;     /* started workers (threads 1..nworkers) */
  pid_t pid;            /* process that started them (a forked child has none) */
  uint64_t generation;
  int32_t active;       /* workers still inside the current job */
  bool stop;
  attn_task_fn fn;
  void *arg;
  int64_t ntasks;
  atomic_int_fast64_t next;
  pthread_t *threads;
  size_t threads_bytes;
};

typedef struct worker_arg {
  struct attn_threadpool *pool;
  int32_t id;
} worker_arg;

static void run_tasks(struct attn_threadpool *pool, int32_t id) {
  for (;;) {
    int64_t t = atomic_fetch_add_explicit(&pool->next, 1, memory_order_relaxed);
    if (t >= pool->ntasks) break;
    pool->fn(pool->arg, t, id);
  }
}

static void *worker_main(void *p) {
  struct attn_threadpool *pool = ((worker_arg *)p)->pool;
  int32_t id = ((worker_arg *)p)->id;
  uint64_t seen = 0;
  pthread_mutex_lock(&pool->mu);
  for (;;) {
    while (!pool->stop && pool->generation == seen) pthread_cond_wait(&pool->wake, &pool->mu);
    if (pool->stop) break;
    seen = pool->generation;
    pthread_mutex_unlock(&pool->mu);
    run_tasks(pool, id);
    pthread_mutex_lock(&pool->mu);
    if (--pool->active == 0) pthread_cond_signal(&pool->done);
  }
  pthread_mutex_unlock(&pool->mu);
  return NULL;
}

/* worker_arg blocks live right after the pthread_t array. */
static attn_status pool_start(attn_context *ctx) {
  int32_t nw = ctx->num_threads - 1;
  struct attn_threadpool *pool = attn_calloc(ctx, sizeof *pool);
  if (pool == NULL) return attn_fail(ctx, ATTN_ERR_NO_MEMORY, "thread pool: out of memory");
  pool->threads_bytes = (size_t)nw * (sizeof(pthread_t) + sizeof(worker_arg));
  pool->threads = attn_calloc(ctx, pool->threads_bytes);
  if (pool->threads == NULL) {
    attn_free(ctx, pool, sizeof *pool);
    return attn_fail(ctx, ATTN_ERR_NO_MEMORY, "thread pool: out of memory");
  }
  pthread_mutex_init(&pool->mu, NULL);
  pthread_cond_init(&pool->wake, NULL);
  pthread_cond_init(&pool->done, NULL);
  pool->pid = getpid();
  worker_arg *args = (worker_arg *)(pool->threads + nw);
  for (int32_t i = 0; i < nw; i++) {
    args[i].pool = pool;
    args[i].id = i + 1;
    if (pthread_create(&pool->threads[i], NULL, worker_main, &args[i]) != 0) {
      ctx->pool = pool;
      attn_threadpool_destroy(pool, ctx);
      ctx->pool = NULL;
      return attn_fail(ctx, ATTN_ERR_THREAD, "thread pool: cannot start worker %d of %d",
                       (int)i + 1, (int)nw);
    }
    pool->nworkers = i + 1;
  }
  ctx->pool = pool;
  return ATTN_OK;
}

void attn_threadpool_destroy(struct attn_threadpool *pool, attn_context *ctx) {
  if (pool == NULL) return;
  if (pool->pid == getpid()) {
    pthread_mutex_lock(&pool->mu);
    pool->stop = true;
    pthread_cond_broadcast(&pool->wake);
    pthread_mutex_unlock(&pool->mu);
    for (int32_t i = 0; i < pool->nworkers; i++) pthread_join(pool->threads[i], NULL);
    pthread_cond_destroy(&pool->wake);
    pthread_cond_destroy(&pool->done);
    pthread_mutex_destroy(&pool->mu);
  }
  /* In a forked child the workers do not exist: just release the memory. */
  attn_free(ctx, pool->threads, pool->threads_bytes);
  attn_free(ctx, pool, sizeof *pool);
}

attn_status attn_threadpool_ensure(attn_context *ctx) {
  if (ctx->num_threads <= 1) return ATTN_OK;
  if (ctx->pool != NULL && ctx->pool->pid != getpid()) {
    attn_threadpool_destroy(ctx->pool, ctx); /* inherited through fork(): restart */
    ctx->pool = NULL;
  }
  return ctx->pool == NULL ? pool_start(ctx) : ATTN_OK;
}

/* OpenBLAS's thread count is process-wide, and several contexts may be inside
 * a parallel region at once (one per caller thread). The first to enter
 * saves the caller's count and sets 1; the last to leave restores it. With a
 * plain save/set/restore per call, one caller restored the count while
 * another was still inside, whose GEMMs then ran on OpenBLAS's threads:
 * oversubscription, and different bits with OpenBLAS's AVX2 kernels (their
 * threaded sgemm does not round like the single-threaded one), breaking the
 * thread-count-independent results (tests/test_threads.c under valgrind).
 * This counter is the library's only process-wide state; it mirrors the
 * process-wide setting it guards. */
static pthread_mutex_t blas_mu = PTHREAD_MUTEX_INITIALIZER;
static int blas_refs, blas_saved;

static void blas_enter(void) {
  pthread_mutex_lock(&blas_mu);
  if (blas_refs++ == 0) {
    blas_saved = attn_blas_get_threads();
    if (blas_saved != 1) attn_blas_set_threads(1);
  }
  pthread_mutex_unlock(&blas_mu);
}

static void blas_leave(void) {
  pthread_mutex_lock(&blas_mu);
  if (--blas_refs == 0 && blas_saved != 1) attn_blas_set_threads(blas_saved);
  pthread_mutex_unlock(&blas_mu);
}

attn_status attn_parallel_for(attn_context *ctx, int64_t ntasks, attn_task_fn fn, void *arg) {
  if (ntasks <= 0) return ATTN_OK;
  if (ctx->num_threads > 1 && ntasks > 1) {
    /* Normally a no-op: plans start the pool. Only after fork() does this start one. */
    attn_status st = attn_threadpool_ensure(ctx);
    if (st != ATTN_OK) return st;
  }
  blas_enter();

  if (ctx->num_threads <= 1 || ntasks == 1) {
    for (int64_t t = 0; t < ntasks; t++) fn(arg, t, 0);
  } else {
    struct attn_threadpool *pool = ctx->pool;
    pthread_mutex_lock(&pool->mu);
    pool->fn = fn;
    pool->arg = arg;
    pool->ntasks = ntasks;
    atomic_store(&pool->next, 0);
    pool->active = pool->nworkers;
    pool->generation++;
    pthread_cond_broadcast(&pool->wake);
    pthread_mutex_unlock(&pool->mu);
    run_tasks(pool, 0);
    pthread_mutex_lock(&pool->mu);
    while (pool->active > 0) pthread_cond_wait(&pool->done, &pool->mu);
    pthread_mutex_unlock(&pool->mu);
  }
  blas_leave();
  return ATTN_OK;
}

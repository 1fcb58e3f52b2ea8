/* The context's own worker threads. One job at a time: the calling thread
 * writes (fn, arg, base, ntasks) and publishes the job by storing a new
 * generation into `state` = (generation << 32) | next task index. Workers and
 * the caller claim tasks by compare-and-swap on `state`, so a claim succeeds
 * only for the live job; the caller returns when every *task* has completed,
 * not when every worker has checked in, so a worker the OS (or hypervisor)
 * has descheduled never holds the caller up — it wakes later, finds nothing
 * to claim and goes back to waiting. Which thread runs a task never changes
 * its result, so output is identical for any thread count. OpenBLAS is held
 * at one thread for the duration of a job.
 *
 * Latency: small calls (a decode step, a control-loop tick) last a few
 * microseconds, less than a futex wake-up (≈ 55 µs here). So workers spin on
 * `state` after a job before sleeping on `wake`, and the caller spins as long
 * for the last task before sleeping on `done`. How long is the context's
 * spin policy (attn_context_set_spin(), read at every job):
 *  - adaptive (default): spin twice the longest of the last 8 gaps between jobs, at
 *    least ATTN_SPIN_NS and at most ATTN_SPIN_MAX_NS; when jobs come further
 *    apart than that, spin only ATTN_SPIN_NS. A control loop calling every
 *    few milliseconds finds its workers awake (and pays a core's worth of
 *    spinning between calls); a server with back-to-back jobs or rare calls
 *    spins 50 µs after each.
 *  - fixed: spin exactly that long; never: sleep at once.
 * Jobs too small to pay for a wake-up run on the caller alone
 * (attn_parallel_for_cost). */
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <time.h>
#include <unistd.h>

#include "blas/gemm.h"
#include "core/internal.h"

struct attn_threadpool {
  pthread_mutex_t mu;
  pthread_cond_t wake;  /* sleeping workers wait for a new generation */
  pthread_cond_t done;  /* a sleeping caller waits for the last task */
  int32_t nworkers;     /* started workers (threads 1..nworkers) */
  pid_t pid;            /* process that started them (a forked child has none) */
  /* The job, written before `state` publishes it; fn, arg and base are read
   * only after a successful claim, which pins the job (it cannot end while a
   * claimed task runs, nor be replaced while a task is unclaimed). */
  attn_task_fn fn;
  void *arg;
  int64_t base;                  /* task index offset of this batch */
  atomic_uint_fast32_t ntasks;   /* tasks in this batch (≤ ATTN_BATCH) */
  atomic_uint_fast64_t state;    /* (generation << 32) | next unclaimed task */
  atomic_uint_fast32_t completed;
  atomic_int sleepers;           /* workers asleep on `wake` */
  atomic_bool caller_sleeping;   /* the caller is asleep on `done` */
  atomic_bool stop;
  atomic_int_fast64_t spin_ns;   /* how long idle workers spin now (policy applied) */
  int64_t last_publish_ns;       /* adaptive: when the previous job was published */
  int64_t gaps[8];               /* adaptive: the last gaps between publishes (a call may be several jobs) */
  uint32_t gap_next;
  pthread_t *threads;
  size_t threads_bytes;
};

typedef struct worker_arg {
  struct attn_threadpool *pool;
  int32_t id;
} worker_arg;

#define ATTN_SPIN_NS 50000                /* 50 µs */
#define ATTN_SPIN_MAX_NS 5000000          /* adaptive spinning covers gaps up to 5 ms */
/* Jobs cheaper than this run on the caller: dispatch would cost more. */
#define ATTN_TINY_FLOPS 2e5
/* Jobs cheaper than this run on the caller when every worker sleeps: at
 * ≈ 50 GFLOPS per core it is ≈ 80 µs, about a wake-up and a half. */
#define ATTN_WAKE_FLOPS 4e6
#define ATTN_BATCH ((int64_t)1 << 31)     /* tasks per published job */

static inline void cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#endif
}

static int64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

typedef bool (*pool_cond)(struct attn_threadpool *pool, uint64_t arg);

/* Spin until cond holds or the pool's spin time passes; true if it holds. */
static bool spin_until(struct attn_threadpool *pool, pool_cond cond, uint64_t arg) {
  const int64_t budget = atomic_load_explicit(&pool->spin_ns, memory_order_relaxed);
  if (budget <= 0) return cond(pool, arg);
  int64_t deadline = 0;
  for (uint32_t i = 0;; i++) {
    if (cond(pool, arg)) return true;
    if ((i & 63) == 63) {
      int64_t t = now_ns();
      if (deadline == 0)
        deadline = t + budget;
      else if (t > deadline)
        return false;
    }
    cpu_relax();
  }
}

static uint64_t generation_of(uint64_t state) { return state >> 32; }

static bool new_job_or_stop(struct attn_threadpool *pool, uint64_t seen) {
  return generation_of(atomic_load(&pool->state)) != seen || atomic_load(&pool->stop);
}

static bool all_tasks_done(struct attn_threadpool *pool, uint64_t n) {
  return atomic_load_explicit(&pool->completed, memory_order_acquire) == n;
}

/* Claim and run tasks of generation gen until none is left. */
static void run_tasks(struct attn_threadpool *pool, uint64_t gen, int32_t id) {
  for (;;) {
    uint64_t s = atomic_load_explicit(&pool->state, memory_order_acquire);
    if (generation_of(s) != gen) return; /* that job is over */
    uint32_t n = (uint32_t)atomic_load_explicit(&pool->ntasks, memory_order_relaxed);
    if ((uint32_t)s >= n) return;        /* every task is claimed */
    if (!atomic_compare_exchange_weak_explicit(&pool->state, &s, s + 1, memory_order_acq_rel,
                                               memory_order_acquire))
      continue;
    pool->fn(pool->arg, pool->base + (int64_t)(uint32_t)s, id);
    /* seq_cst pairs with the caller's caller_sleeping store (no lost wake-up). */
    if (atomic_fetch_add(&pool->completed, 1) + 1 == n && atomic_load(&pool->caller_sleeping)) {
      pthread_mutex_lock(&pool->mu);
      pthread_cond_signal(&pool->done);
      pthread_mutex_unlock(&pool->mu);
    }
  }
}

static void *worker_main(void *p) {
  struct attn_threadpool *pool = ((worker_arg *)p)->pool;
  int32_t id = ((worker_arg *)p)->id;
  uint64_t seen = 0;
  for (;;) {
    if (!spin_until(pool, new_job_or_stop, seen)) {
      pthread_mutex_lock(&pool->mu);
      atomic_fetch_add(&pool->sleepers, 1); /* seq_cst: the caller sees us or we see its job */
      while (!new_job_or_stop(pool, seen)) pthread_cond_wait(&pool->wake, &pool->mu);
      atomic_fetch_sub(&pool->sleepers, 1);
      pthread_mutex_unlock(&pool->mu);
    }
    if (atomic_load(&pool->stop)) break;
    seen = generation_of(atomic_load(&pool->state));
    run_tasks(pool, seen, id);
  }
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
  atomic_store(&pool->spin_ns, ctx->spin_ns > 0 ? ctx->spin_ns : ctx->spin_ns < 0 ? 0 : ATTN_SPIN_NS);
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
    atomic_store(&pool->stop, true);
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
 * thread-count-independent results (tests/unit/test_threads.c under valgrind).
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
  return attn_parallel_for_cost(ctx, ntasks, INFINITY, fn, arg);
}

/* Run on the caller alone? Tiny jobs always; small ones when waking the
 * workers would cost more than they save. */
static bool run_serial(const attn_context *ctx, int64_t ntasks, double flops) {
  if (ctx->num_threads <= 1 || ntasks == 1 || flops < ATTN_TINY_FLOPS) return true;
  const struct attn_threadpool *pool = ctx->pool;
  return flops < ATTN_WAKE_FLOPS && pool != NULL && pool->pid == getpid() &&
         atomic_load_explicit(&pool->sleepers, memory_order_relaxed) == pool->nworkers;
}

attn_status attn_parallel_for_cost(attn_context *ctx, int64_t ntasks, double flops,
                                   attn_task_fn fn, void *arg) {
  if (ntasks <= 0) return ATTN_OK;
  const bool serial = run_serial(ctx, ntasks, flops);
  if (!serial) {
    /* Normally a no-op: plans start the pool. Only after fork() does this start one. */
    attn_status st = attn_threadpool_ensure(ctx);
    if (st != ATTN_OK) return st;
  }
  blas_enter();

  if (serial) {
    for (int64_t t = 0; t < ntasks; t++) fn(arg, t, 0);
  } else {
    struct attn_threadpool *pool = ctx->pool;
    for (int64_t base = 0; base < ntasks; base += ATTN_BATCH) {
      uint32_t n = (uint32_t)attn_min64(ATTN_BATCH, ntasks - base);
      /* Close the previous job before writing this one's fields: a worker
       * still holding that job's state (gen, i ≥ its task count) could
       * otherwise read this job's larger task count and claim index i of
       * the old generation — running a task of this job outside it and
       * counting it twice (a lost completion: the caller waited forever).
       * With the index set past any task count its CAS fails instead. */
      atomic_store(&pool->state, (atomic_load(&pool->state) & ~(uint64_t)0xffffffffu) |
                                     (uint64_t)0xffffffffu);
      pool->fn = fn;
      pool->arg = arg;
      pool->base = base;
      atomic_store_explicit(&pool->ntasks, n, memory_order_relaxed);
      atomic_store_explicit(&pool->completed, 0, memory_order_relaxed);
      int64_t spin = ctx->spin_ns < 0 ? 0 : ctx->spin_ns;
      if (ctx->spin_ns == 0) {
        /* Adaptive: cover the longest recent gap between jobs (one execute
         * may publish several jobs; the gap that matters is between calls). */
        const int64_t t = now_ns();
        pool->gaps[pool->gap_next++ % 8] = t - pool->last_publish_ns;
        pool->last_publish_ns = t;
        int64_t gap = 0;
        for (int i = 0; i < 8; i++) gap = pool->gaps[i] > gap ? pool->gaps[i] : gap;
        spin = gap <= ATTN_SPIN_MAX_NS / 2 ? 2 * gap : ATTN_SPIN_NS;
        if (spin < ATTN_SPIN_NS) spin = ATTN_SPIN_NS;
      }
      atomic_store_explicit(&pool->spin_ns, spin, memory_order_relaxed);
      uint64_t gen = generation_of(atomic_load(&pool->state)) + 1;
      atomic_store(&pool->state, gen << 32); /* publish (seq_cst, see sleepers) */
      if (atomic_load(&pool->sleepers) > 0) {
        pthread_mutex_lock(&pool->mu);
        pthread_cond_broadcast(&pool->wake);
        pthread_mutex_unlock(&pool->mu);
      }
      run_tasks(pool, gen, 0);
      if (!spin_until(pool, all_tasks_done, n)) {
        pthread_mutex_lock(&pool->mu);
        atomic_store(&pool->caller_sleeping, true);
        while (!all_tasks_done(pool, n)) pthread_cond_wait(&pool->done, &pool->mu);
        atomic_store(&pool->caller_sleeping, false);
        pthread_mutex_unlock(&pool->mu);
      }
    }
  }
  blas_leave();
  return ATTN_OK;
}

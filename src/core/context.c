/* Context lifecycle and the last-error message. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/internal.h"

#define ATTN_MAX_THREADS 1024
#define ATTN_MAX_SPIN_US 1000000

void attn_context_options_init(attn_context_options *opts) {
  if (opts == NULL) return;
  memset(opts, 0, sizeof *opts);
  opts->struct_size = sizeof *opts;
}

static int32_t default_threads(void) {
  const char *env = getenv("ATTN_NUM_THREADS");
  if (env != NULL && *env != '\0') {
    char *end = NULL;
    long n = strtol(env, &end, 10);
    if (end != NULL && *end == '\0' && n >= 1 && n <= ATTN_MAX_THREADS) return (int32_t)n;
  }
  long cores = sysconf(_SC_NPROCESSORS_ONLN);
  if (cores < 1) cores = 1;
  if (cores > ATTN_MAX_THREADS) cores = ATTN_MAX_THREADS;
  return (int32_t)cores;
}

/* $ATTN_SPIN_US: the context's initial spin policy (−1 never, 0 adaptive,
 * 1..1000000 fixed µs); anything else keeps the adaptive default. */
static int32_t default_spin_us(void) {
  const char *env = getenv("ATTN_SPIN_US");
  if (env != NULL && *env != '\0') {
    char *end = NULL;
    long n = strtol(env, &end, 10);
    if (end != NULL && *end == '\0' && n >= -1 && n <= ATTN_MAX_SPIN_US) return (int32_t)n;
  }
  return 0;
}

attn_status attn_context_create(const attn_context_options *opts, attn_context **out) {
  if (out == NULL) return ATTN_ERR_NULL_ARG;
  attn_context_options o;
  attn_context_options_init(&o);
  if (opts != NULL) {
    if (opts->struct_size < offsetof(attn_context_options, allocator) + sizeof(attn_allocator) ||
        opts->struct_size > sizeof o)
      return ATTN_ERR_INVALID_ARG;
    memcpy(&o, opts, opts->struct_size);
  }
  if (o.num_threads < 0 || o.num_threads > ATTN_MAX_THREADS) return ATTN_ERR_INVALID_ARG;
  if ((o.allocator.alloc == NULL) != (o.allocator.free == NULL)) return ATTN_ERR_INVALID_ARG;

  attn_context tmp;
  memset(&tmp, 0, sizeof tmp);
  tmp.allocator = o.allocator;
  attn_context *ctx = attn_alloc(&tmp, sizeof *ctx);
  if (ctx == NULL) return ATTN_ERR_NO_MEMORY;
  *ctx = tmp;
  ctx->num_threads = o.num_threads > 0 ? o.num_threads : default_threads();
  const int32_t spin = default_spin_us();
  ctx->spin_ns = spin < 0 ? -1 : (int64_t)spin * 1000;
  *out = ctx;
  return ATTN_OK;
}

void attn_context_destroy(attn_context *ctx) {
  if (ctx == NULL) return;
  attn_threadpool_destroy(ctx->pool, ctx);
  ctx->pool = NULL;
  attn_free(ctx, ctx, sizeof *ctx);
}

const char *attn_context_last_error(const attn_context *ctx) {
  if (ctx == NULL) return "attn_context_last_error: ctx is NULL";
  return ctx->last_error;
}

attn_status attn_context_set_spin(attn_context *ctx, int32_t spin_us) {
  if (ctx == NULL) return ATTN_ERR_NULL_ARG;
  if (spin_us < -1 || spin_us > ATTN_MAX_SPIN_US)
    return attn_fail(ctx, ATTN_ERR_INVALID_ARG, "spin_us: %d is outside [-1, %d]", (int)spin_us,
                     ATTN_MAX_SPIN_US);
  ctx->spin_ns = spin_us < 0 ? -1 : (int64_t)spin_us * 1000;
  attn_clear_error(ctx);
  return ATTN_OK;
}

int32_t attn_context_num_threads(const attn_context *ctx) {
  return ctx == NULL ? 0 : ctx->num_threads;
}

attn_status attn_fail(attn_context *ctx, attn_status status, const char *fmt, ...) {
  if (ctx != NULL) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(ctx->last_error, sizeof ctx->last_error, fmt, ap);
    va_end(ap);
  }
  return status;
}

void attn_clear_error(attn_context *ctx) {
  if (ctx != NULL) ctx->last_error[0] = '\0';
}

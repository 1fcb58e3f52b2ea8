/* Aligned allocation through the context's hooks. Every byte the library
 * allocates goes through here, so allocator hooks see (and can fail) all of it. */
#include <stdlib.h>
#include <string.h>

#include "core/internal.h"

void *attn_alloc(attn_context *ctx, size_t size) {
  if (size == 0) return NULL;
  /* Round up so default aligned_alloc's size-multiple rule holds. */
  if (size > SIZE_MAX - (ATTN_ALIGN - 1)) return NULL;
  size_t rounded = (size + ATTN_ALIGN - 1) & ~(size_t)(ATTN_ALIGN - 1);
  if (ctx != NULL && ctx->allocator.alloc != NULL)
    return ctx->allocator.alloc(ctx->allocator.user_data, rounded, ATTN_ALIGN);
  return aligned_alloc(ATTN_ALIGN, rounded);
}

void *attn_calloc(attn_context *ctx, size_t size) {
  void *p = attn_alloc(ctx, size);
  if (p != NULL) memset(p, 0, size);
  return p;
}

void attn_free(attn_context *ctx, void *ptr, size_t size) {
  if (ptr == NULL) return;
  size_t rounded = (size + ATTN_ALIGN - 1) & ~(size_t)(ATTN_ALIGN - 1);
  if (ctx != NULL && ctx->allocator.free != NULL)
    ctx->allocator.free(ctx->allocator.user_data, ptr, rounded);
  else
    free(ptr);
}

bool attn_bytes_ok(const int64_t *dims, int n, size_t elem_size, size_t *bytes) {
  int64_t total = (int64_t)elem_size;
  for (int i = 0; i < n; i++) {
    if (dims[i] < 0 || !attn_mul_ok(total, dims[i], &total)) return false;
  }
  if ((uint64_t)total > (uint64_t)SIZE_MAX) return false;
  *bytes = (size_t)total;
  return true;
}

size_t attn_carve(attn_carver *c, size_t elem, int64_t a, int64_t b, int64_t cnt) {
  const size_t at = (size_t)c->bytes;
  int64_t n = (int64_t)elem;
  if (!c->ok || a < 0 || b < 0 || cnt < 0 || !attn_mul_ok(n, a, &n) || !attn_mul_ok(n, b, &n) ||
      !attn_mul_ok(n, cnt, &n) || !attn_add_ok(n, ATTN_ALIGN - 1, &n) ||
      !attn_add_ok(c->bytes, n / ATTN_ALIGN * ATTN_ALIGN, &c->bytes) ||
      (uint64_t)c->bytes > (uint64_t)SIZE_MAX / 2) {
    c->ok = false;
    return 0;
  }
  return at;
}

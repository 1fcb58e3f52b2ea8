/* A public struct that grew must not break binaries built against the old
 * header. attn_kvcache_config gained group_size in 0.2 (64 → 72 bytes); a
 * 0.1 binary allocates 64 and calls attn_kvcache_config_init, bound to
 * version ATTN_0.1. This loads the built libattn.so like such a binary would
 * (dlvsym picks the version) and checks that:
 *   - ATTN_0.1's init writes exactly 0.1's bytes (a canary right after the
 *     0.1 struct survives) and sets struct_size to 64;
 *   - attn_kvcache_create accepts that struct and makes a working cache;
 *   - ATTN_0.2's init (what new binaries get) writes sizeof, with
 *     group_size = 0, and is the default version dlsym returns.
 *   usage: test_struct_growth path/to/libattn.so */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "attn/attn.h"

static int failures = 0;
#define CHECK(cond, ...)                      \
  do {                                        \
    if (!(cond)) {                            \
      fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__); \
      fprintf(stderr, __VA_ARGS__);           \
      fputc('\n', stderr);                   \
      failures++;                             \
    }                                         \
  } while (0)

/* 0.1's layout, as its header declared it. */
typedef struct config_0_1 {
  size_t struct_size;
  int64_t batch, heads_kv, capacity, d_k, d_v;
  attn_dtype dtype;
  attn_kvcache_mode mode;
  int32_t grow;
  attn_kvcache_storage storage;
} config_0_1;

typedef void (*init_fn)(void *);

/* Bytes of canary[n] no longer 0xA5. */
static int clobbered_bytes(const unsigned char *canary, size_t n) {
  int c = 0;
  for (size_t i = 0; i < n; i++) c += canary[i] != 0xA5;
  return c;
}
typedef attn_status (*ctx_create_fn)(const attn_context_options *, attn_context **);
typedef void (*ctx_destroy_fn)(attn_context *);
typedef attn_status (*kv_create_fn)(attn_context *, const void *, attn_kvcache **);
typedef void (*kv_destroy_fn)(attn_kvcache *);
typedef int64_t (*kv_capacity_fn)(const attn_kvcache *);

/* dlsym/dlvsym return void *; ISO C has no cast from that to a function
 * pointer, POSIX guarantees the representation: copy the bytes. */
static void load(void *lib, const char *name, const char *version, void *fn_out, size_t size) {
  void *p = version != NULL ? dlvsym(lib, name, version) : dlsym(lib, name);
  memset(fn_out, 0, size);
  if (p != NULL && size == sizeof p) memcpy(fn_out, &p, sizeof p);
}
#define LOAD(fn, name, version) load(lib, name, version, &(fn), sizeof(fn))

int main(int argc, char **argv) {
  if (argc != 2) {
    fprintf(stderr, "usage: %s path/to/libattn.so\n", argv[0]);
    return 2;
  }
  void *lib = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
  if (lib == NULL) {
    fprintf(stderr, "dlopen %s: %s\n", argv[1], dlerror());
    return 1;
  }
  init_fn init_01, init_02, init_default;
  LOAD(init_01, "attn_kvcache_config_init", "ATTN_0.1");
  LOAD(init_02, "attn_kvcache_config_init", "ATTN_0.2");
  LOAD(init_default, "attn_kvcache_config_init", NULL);
  CHECK(init_01 != NULL, "no attn_kvcache_config_init@ATTN_0.1");
  CHECK(init_02 != NULL, "no attn_kvcache_config_init@ATTN_0.2");
  CHECK(init_default == init_02, "dlsym does not return the ATTN_0.2 version");
  CHECK(sizeof(config_0_1) == 64, "0.1's struct is %zu bytes, expected 64", sizeof(config_0_1));
  if (init_01 == NULL || init_02 == NULL) return 1;

  /* 0.1 binary: its struct, then a canary. */
  struct {
    config_0_1 cfg;
    unsigned char canary[64];
  } old;
  memset(&old, 0xA5, sizeof old);
  init_01(&old.cfg);
  int clobbered = clobbered_bytes(old.canary, sizeof old.canary);
  CHECK(clobbered == 0, "ATTN_0.1 init wrote %d bytes past the 0.1 struct", clobbered);
  CHECK(old.cfg.struct_size == sizeof(config_0_1), "struct_size %zu, expected %zu",
        old.cfg.struct_size, sizeof(config_0_1));
  CHECK(old.cfg.batch == 1 && old.cfg.heads_kv == 1 && old.cfg.dtype == ATTN_DTYPE_F32 &&
            old.cfg.mode == ATTN_KVCACHE_LINEAR && old.cfg.storage == ATTN_KVCACHE_STORE_NATIVE,
        "ATTN_0.1 init: wrong defaults");

  ctx_create_fn ctx_create;
  ctx_destroy_fn ctx_destroy;
  kv_create_fn kv_create;
  kv_destroy_fn kv_destroy;
  kv_capacity_fn kv_capacity;
  LOAD(ctx_create, "attn_context_create", NULL);
  LOAD(ctx_destroy, "attn_context_destroy", NULL);
  LOAD(kv_create, "attn_kvcache_create", NULL);
  LOAD(kv_destroy, "attn_kvcache_destroy", NULL);
  LOAD(kv_capacity, "attn_kvcache_capacity", NULL);
  CHECK(ctx_create && ctx_destroy && kv_create && kv_destroy && kv_capacity, "missing symbols");
  if (!(ctx_create && ctx_destroy && kv_create && kv_destroy && kv_capacity)) return 1;
  attn_context *ctx = NULL;
  CHECK(ctx_create(NULL, &ctx) == ATTN_OK, "attn_context_create failed");
  if (ctx == NULL) return 1;
  old.cfg.capacity = 32;
  old.cfg.d_k = 16;
  attn_kvcache *cache = NULL;
  CHECK(kv_create(ctx, &old.cfg, &cache) == ATTN_OK, "create with a 0.1 struct failed");
  if (cache != NULL) {
    CHECK(kv_capacity(cache) == 32, "capacity %lld", (long long)kv_capacity(cache));
    kv_destroy(cache);
  }

  /* 0.2 binary: the whole struct. */
  struct {
    attn_kvcache_config cfg;
    unsigned char canary[64];
  } cur;
  memset(&cur, 0xA5, sizeof cur);
  init_02(&cur.cfg);
  clobbered = clobbered_bytes(cur.canary, sizeof cur.canary);
  CHECK(clobbered == 0, "ATTN_0.2 init wrote %d bytes past the struct", clobbered);
  CHECK(cur.cfg.struct_size == sizeof cur.cfg, "struct_size %zu, expected %zu",
        cur.cfg.struct_size, sizeof cur.cfg);
  CHECK(cur.cfg.group_size == 0, "group_size default %lld", (long long)cur.cfg.group_size);
  cur.cfg.capacity = 32;
  cur.cfg.d_k = 16;
  cache = NULL;
  CHECK(kv_create(ctx, &cur.cfg, &cache) == ATTN_OK, "create with a 0.2 struct failed");
  if (cache != NULL) kv_destroy(cache);
  ctx_destroy(ctx);
  dlclose(lib);
  if (failures == 0) printf("attn_kvcache_config: 0.1 and 0.2 callers both safe\n");
  return failures == 0 ? 0 : 1;
}

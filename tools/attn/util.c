/* Helpers shared by the subcommands: messages, option parsing, numbers,
 * clocks, files, random numbers. */
#include "cli.h"

#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

void cli_err(const char *cmd, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  fprintf(stderr, "attn%s%s: ", cmd ? " " : "", cmd ? cmd : "");
  vfprintf(stderr, fmt, ap);
  fputc('\n', stderr);
  va_end(ap);
}

attn_context *cli_context(const cli_global *g, const char *cmd) {
  attn_context_options o;
  attn_context_options_init(&o);
  o.num_threads = g->threads;
  attn_context *ctx = NULL;
  attn_status st = attn_context_create(&o, &ctx);
  if (st != ATTN_OK) {
    cli_err(cmd, "cannot create a libattn context: %s", attn_status_string(st));
    return NULL;
  }
  return ctx;
}

bool cli_opt_is(const char *arg, const char *name, const char **inline_val) {
  size_t n = strlen(name);
  if (strncmp(arg, name, n) != 0) return false;
  if (arg[n] == '\0') {
    if (inline_val) *inline_val = NULL;
    return true;
  }
  if (arg[n] == '=') {
    if (inline_val) *inline_val = arg + n + 1;
    return true;
  }
  return false;
}

const char *cli_opt_value(const char *cmd, int argc, char **argv, int *i, const char *name,
                          const char *inline_val) {
  if (inline_val != NULL) return inline_val;
  if (*i + 1 >= argc) {
    cli_err(cmd, "%s needs a value (see attn %s --help)", name, cmd ? cmd : "");
    return NULL;
  }
  return argv[++*i];
}

bool cli_parse_i64(const char *s, int64_t lo, int64_t hi, int64_t *out) {
  if (s == NULL || *s == '\0') return false;
  char *end = NULL;
  errno = 0;
  long long v = strtoll(s, &end, 10);
  if (errno != 0 || end == s || *end != '\0' || v < lo || v > hi) return false;
  *out = (int64_t)v;
  return true;
}

bool cli_parse_u64(const char *s, uint64_t *out) {
  if (s == NULL || *s == '\0' || *s == '-') return false;
  char *end = NULL;
  errno = 0;
  unsigned long long v = strtoull(s, &end, 0);
  if (errno != 0 || end == s || *end != '\0') return false;
  *out = (uint64_t)v;
  return true;
}

bool cli_parse_f64(const char *s, double *out) {
  if (s == NULL || *s == '\0') return false;
  char *end = NULL;
  errno = 0;
  double v = strtod(s, &end);
  if (errno == ERANGE || end == s || *end != '\0' || isnan(v)) return false;
  *out = v;
  return true;
}

int64_t cli_parse_i64_list(const char *s, int64_t lo, int64_t hi, int64_t *out, int64_t cap) {
  if (s == NULL || *s == '\0') return -1;
  int64_t n = 0;
  const char *p = s;
  for (;;) {
    const char *comma = strchr(p, ',');
    size_t len = comma ? (size_t)(comma - p) : strlen(p);
    char buf[64];
    if (len == 0 || len >= sizeof buf || n >= cap) return -1;
    memcpy(buf, p, len);
    buf[len] = '\0';
    if (!cli_parse_i64(buf, lo, hi, &out[n])) return -1;
    n++;
    if (!comma) break;
    p = comma + 1;
  }
  return n;
}

int64_t cli_parse_f64_list(const char *s, double *out, int64_t cap) {
  if (s == NULL || *s == '\0') return -1;
  int64_t n = 0;
  const char *p = s;
  for (;;) {
    const char *comma = strchr(p, ',');
    size_t len = comma ? (size_t)(comma - p) : strlen(p);
    char buf[64];
    if (len == 0 || len >= sizeof buf || n >= cap) return -1;
    memcpy(buf, p, len);
    buf[len] = '\0';
    if (!cli_parse_f64(buf, &out[n])) return -1;
    n++;
    if (!comma) break;
    p = comma + 1;
  }
  return n;
}

double cli_now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

double cli_peak_rss_mib(void) {
  struct rusage ru;
  if (getrusage(RUSAGE_SELF, &ru) != 0) return 0.0;
  return (double)ru.ru_maxrss / 1024.0; /* Linux: KiB */
}

int cli_mkdir_p(const char *path) {
  char buf[4096];
  size_t n = strlen(path);
  if (n == 0 || n >= sizeof buf) {
    errno = ENAMETOOLONG;
    return -1;
  }
  memcpy(buf, path, n + 1);
  for (size_t i = 1; i <= n; i++) {
    if (buf[i] == '/' || buf[i] == '\0') {
      char saved = buf[i];
      buf[i] = '\0';
      if (mkdir(buf, 0777) != 0 && errno != EEXIST) return -1;
      struct stat st;
      if (stat(buf, &st) != 0) return -1;
      if (!S_ISDIR(st.st_mode)) {
        errno = ENOTDIR;
        return -1;
      }
      buf[i] = saved;
    }
  }
  return 0;
}

bool cli_exe_dir(char *buf, size_t n) {
  if (n < 2) return false;
  ssize_t len = readlink("/proc/self/exe", buf, n - 1);
  if (len <= 0) return false;
  buf[len] = '\0';
  char *slash = strrchr(buf, '/');
  if (slash == NULL) return false;
  *slash = '\0';
  return true;
}

bool cli_find_in_path(const char *name, char *buf, size_t n) {
  const char *path = getenv("PATH");
  if (path == NULL || *path == '\0') path = "/usr/local/bin:/usr/bin:/bin";
  const char *p = path;
  for (;;) {
    const char *colon = strchr(p, ':');
    size_t len = colon ? (size_t)(colon - p) : strlen(p);
    if (len == 0) {
      p = colon ? colon + 1 : p + len;
      if (!colon) break;
      continue;
    }
    int w = snprintf(buf, n, "%.*s/%s", (int)len, p, name);
    if (w > 0 && (size_t)w < n && access(buf, X_OK) == 0) {
      struct stat st;
      if (stat(buf, &st) == 0 && S_ISREG(st.st_mode)) return true;
    }
    if (!colon) break;
    p = colon + 1;
  }
  return false;
}

void cli_rng_seed(cli_rng *r, uint64_t seed) {
  r->s = seed;
  r->have_spare = false;
  r->spare = 0.0;
}

static uint64_t splitmix64(uint64_t *s) {
  uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

double cli_rng_uniform(cli_rng *r) { return (double)(splitmix64(&r->s) >> 11) * 0x1.0p-53; }

double cli_rng_normal(cli_rng *r) {
  if (r->have_spare) {
    r->have_spare = false;
    return r->spare;
  }
  double u1, u2;
  do u1 = cli_rng_uniform(r);
  while (u1 <= 0.0);
  u2 = cli_rng_uniform(r);
  double m = sqrt(-2.0 * log(u1));
  r->spare = m * sin(6.283185307179586 * u2);
  r->have_spare = true;
  return m * cos(6.283185307179586 * u2);
}

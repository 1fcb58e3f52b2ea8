/* The attn command: shared declarations for main.c and the subcommands. */
#ifndef ATTN_TOOLS_CLI_H
#define ATTN_TOOLS_CLI_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "attn/attn.h"

/* Exit codes (documented in `attn --help` and tools/README.md). */
enum {
  CLI_EXIT_OK = 0,      /* success */
  CLI_EXIT_RUNTIME = 1, /* the library returned an error, or a run failed */
  CLI_EXIT_USAGE = 2,   /* bad command line */
  CLI_EXIT_IO = 3       /* a file could not be read/written, or is not a valid input file */
};

#define CLI_EXIT_TABLE                                                              \
  "Exit status:\n"                                                                  \
  "  0  success\n"                                                                  \
  "  1  runtime error: the library rejected the inputs or failed (its message is\n" \
  "     printed), or a benchmark run failed\n"                                      \
  "  2  usage error: unknown option, missing or malformed argument\n"               \
  "  3  I/O error or bad file: cannot read/write a file, or a .npy input is\n"      \
  "     malformed, truncated, Fortran-ordered or of an unsupported dtype\n"

/* Options that apply to every subcommand. */
typedef struct cli_global {
  int32_t threads; /* 0 = library default ($ATTN_NUM_THREADS or online cores) */
  const char *argv0;
} cli_global;

/* The subcommands: `attn <name>` is cmd_<name>() in cmd_<name>.c. */
int cmd_demo(const cli_global *g, int argc, char **argv);
int cmd_bench(const cli_global *g, int argc, char **argv);
int cmd_run(const cli_global *g, int argc, char **argv);

/* ---- util.c ---------------------------------------------------------------- */

/* Print "attn <cmd>: message\n" to stderr. */
void cli_err(const char *cmd, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;

/* Create a context with g->threads; on failure prints and returns NULL. */
attn_context *cli_context(const cli_global *g, const char *cmd);

/* Option parsing: argv[*i] is "--name" or "--name=value". cli_opt_is() says
 * whether it is this option (and sets *inline_val to the text after '=' or
 * NULL); cli_opt_value() returns the value (inline or the next argument,
 * advancing *i) or NULL after printing a usage error. */
bool cli_opt_is(const char *arg, const char *name, const char **inline_val);
const char *cli_opt_value(const char *cmd, int argc, char **argv, int *i, const char *name,
                          const char *inline_val);

/* Strict number parsing: the whole string must be a number in range. */
bool cli_parse_i64(const char *s, int64_t lo, int64_t hi, int64_t *out);
bool cli_parse_u64(const char *s, uint64_t *out);
bool cli_parse_f64(const char *s, double *out);
/* Comma-separated list, at most cap items; returns the count or -1. */
int64_t cli_parse_i64_list(const char *s, int64_t lo, int64_t hi, int64_t *out, int64_t cap);
int64_t cli_parse_f64_list(const char *s, double *out, int64_t cap);

/* Monotonic clock in seconds. */
double cli_now(void);
/* Peak resident set size of this process in MiB (0 if unknown). */
double cli_peak_rss_mib(void);
/* Create a directory and its parents (like mkdir -p). 0 or -1 with errno. */
int cli_mkdir_p(const char *path);
/* Directory of the running executable (from /proc/self/exe) into buf. */
bool cli_exe_dir(char *buf, size_t n);
/* Is there an executable `name` on $PATH? Writes its path into buf. */
bool cli_find_in_path(const char *name, char *buf, size_t n);

/* Deterministic random numbers (splitmix64): uniform [0,1) and N(0,1). */
typedef struct cli_rng {
  uint64_t s;
  bool have_spare;
  double spare;
} cli_rng;
void cli_rng_seed(cli_rng *r, uint64_t seed);
double cli_rng_uniform(cli_rng *r);
double cli_rng_normal(cli_rng *r);

#endif

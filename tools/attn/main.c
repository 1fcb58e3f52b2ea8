/* attn: the command-line front door of libattn.
 *   attn [--threads N] demo|bench|run [options]
 * Global options come before the subcommand (--threads may also follow it). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"

static void usage(FILE *f) {
  fprintf(f,
          "Usage: attn [--threads N] <command> [options]\n"
          "       attn --version | --help\n"
          "\n"
          "libattn's command-line tool: see every attention variant work, benchmark\n"
          "them, and run attention on your own NumPy arrays.\n"
          "\n"
          "Commands:\n"
          "  demo    run every variant on a built-in workload, print a table (time,\n"
          "          GFLOP/s, error against exact attention, memory) and write PNG\n"
          "          pictures of each variant's attention pattern\n"
          "  bench   run attn-bench sweeps with a progress bar; write CSV/JSON and\n"
          "          gnuplot PNG plots\n"
          "  run     attention on .npy files: --q --k --v in, -o out (plus weights, lse)\n"
          "\n"
          "Global options:\n"
          "  --threads N   worker threads for libattn (default: $ATTN_NUM_THREADS, else\n"
          "                the online cores)\n"
          "  --version     print the attn and libattn versions\n"
          "  -h, --help    this text; `attn <command> --help` for a command's options\n"
          "\n" CLI_EXIT_TABLE);
}

static void version(void) {
  printf("attn %s\n", ATTN_VERSION_STRING);
  printf("libattn %s (run time), headers %s\n", attn_version_string(), ATTN_VERSION_STRING);
  if (attn_version_number() / 10000 != ATTN_VERSION_NUMBER / 10000)
    printf("warning: the library's major version differs from the headers attn was built with\n");
}

int main(int argc, char **argv) {
  cli_global g = {0, argv[0]};
  int i = 1;
  for (; i < argc; i++) {
    const char *a = argv[i], *val = NULL;
    if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
      usage(stdout);
      return CLI_EXIT_OK;
    }
    if (strcmp(a, "--version") == 0 || strcmp(a, "-V") == 0) {
      version();
      return CLI_EXIT_OK;
    }
    if (cli_opt_is(a, "--threads", &val)) {
      const char *v = cli_opt_value(NULL, argc, argv, &i, "--threads", val);
      int64_t n;
      if (v == NULL) return CLI_EXIT_USAGE;
      if (!cli_parse_i64(v, 1, 1024, &n)) {
        cli_err(NULL, "--threads: '%s' is not a number from 1 to 1024", v);
        return CLI_EXIT_USAGE;
      }
      g.threads = (int32_t)n;
      continue;
    }
    if (a[0] == '-') {
      cli_err(NULL, "unknown option '%s' (try attn --help)", a);
      return CLI_EXIT_USAGE;
    }
    break;
  }
  if (i >= argc) {
    usage(stderr);
    return CLI_EXIT_USAGE;
  }
  const char *cmd = argv[i];
  int sub_argc = argc - i;
  char **sub_argv = argv + i;
  if (strcmp(cmd, "demo") == 0) return cmd_demo(&g, sub_argc, sub_argv);
  if (strcmp(cmd, "bench") == 0) return cmd_bench(&g, sub_argc, sub_argv);
  if (strcmp(cmd, "run") == 0) return cmd_run(&g, sub_argc, sub_argv);
  if (strcmp(cmd, "help") == 0) {
    usage(stdout);
    return CLI_EXIT_OK;
  }
  cli_err(NULL, "unknown command '%s' (commands: demo, bench, run; try attn --help)", cmd);
  return CLI_EXIT_USAGE;
}

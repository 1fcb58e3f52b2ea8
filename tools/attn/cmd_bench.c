/* attn bench: drive the attn-bench executable over sweeps (one process per
 * (S, causal) group with all its cases; cases it does not list are skipped,
 * a failing case does not stop the others), show progress on stderr as its
 * --json lines arrive, write CSV and JSON, and plot through gnuplot when it
 * is installed. */
#if !defined(_POSIX_C_SOURCE) || _POSIX_C_SOURCE < 200809L
#undef _POSIX_C_SOURCE
#define _POSIX_C_SOURCE 200809L
#endif

#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include "cli.h"

#define CMD "bench"
#define MAX_CASES 32
#define MAX_SIZES 32

/* The JSON fields of the benchmark contract (bench/README.md), in CSV column order. */
static const char *const num_fields[] = {"B",     "H",         "Hkv",          "Sq",
                                         "Sk",    "D",         "threads",      "ms",
                                         "gflops", "sgemm_gflops", "frac_sgemm", "gbps",
                                         "read_gbps", "frac_bw", "max_err",    "mean_err",
                                         "peak_rss_mb"};
#define NF ((int)(sizeof num_fields / sizeof num_fields[0]))
enum { F_B, F_H, F_HKV, F_SQ, F_SK, F_D, F_THREADS, F_MS, F_GFLOPS, F_SGEMM, F_FRAC_SGEMM, F_GBPS,
       F_READ_GBPS, F_FRAC_BW, F_MAX_ERR, F_MEAN_ERR, F_RSS };

typedef struct record {
  char name[48]; /* "case" */
  char dtype[8];
  bool causal;
  bool has[NF];
  double val[NF];
  char *raw; /* the JSON line as attn-bench printed it */
} record;

typedef struct point {
  const char *name;
  bool causal;
  int64_t S;
} point;

/* Default sweeps: case, causal, largest S worth running (unfused naive and
 * Bahdanau scores are O(S²) memory / slow). */
typedef struct sweep_case {
  const char *name;
  bool causal;
  int64_t max_S;
  bool quick;
} sweep_case;

static const sweep_case default_cases[] = {
    {"sdpa", false, INT64_MAX, true},        {"sdpa", true, INT64_MAX, true},
    {"naive", false, 1024, false},           {"masked", false, INT64_MAX, false},
    {"additive", false, 1024, false},        {"mha", false, INT64_MAX, false},
    {"decode", false, INT64_MAX, false},     {"window", false, INT64_MAX, true},
    {"swin", false, INT64_MAX, true},        {"longformer", false, INT64_MAX, true},
    {"bigbird", false, INT64_MAX, true},     {"blocksparse", false, INT64_MAX, false},
    {"linear_elu", false, INT64_MAX, true},  {"performer", false, INT64_MAX, true},
    {"linformer", false, INT64_MAX, true},
};
static const int64_t default_sizes[] = {256, 512, 1024, 2048, 4096};
static const int64_t quick_sizes[] = {256, 512, 1024};

/* ---- a minimal JSON reader for attn-bench's flat objects ---------------------- */

typedef struct jcur {
  const char *p;
} jcur;

static void jws(jcur *c) {
  while (*c->p == ' ' || *c->p == '\t' || *c->p == '\r' || *c->p == '\n') c->p++;
}

static bool jstring(jcur *c, char *out, size_t n) {
  jws(c);
  if (*c->p != '"') return false;
  c->p++;
  size_t k = 0;
  while (*c->p && *c->p != '"') {
    char ch = *c->p++;
    if (ch == '\\') {
      if (!*c->p) return false;
      ch = *c->p++;
      if (ch == 'u') { /* keep \uXXXX out of names: replace by '?' */
        for (int i = 0; i < 4; i++)
          if (!isxdigit((unsigned char)*c->p++)) return false;
        ch = '?';
      } else if (ch == 'n') ch = ' ';
      else if (ch == 't') ch = ' ';
    }
    if (out && k + 1 < n) out[k++] = ch;
  }
  if (*c->p != '"') return false;
  c->p++;
  if (out && n) out[k] = '\0';
  return true;
}

static bool jskip(jcur *c, int depth);

static bool jskip(jcur *c, int depth) {
  jws(c);
  if (depth > 32) return false;
  if (*c->p == '"') return jstring(c, NULL, 0);
  if (*c->p == '{' || *c->p == '[') {
    char close = *c->p == '{' ? '}' : ']';
    bool obj = *c->p == '{';
    c->p++;
    jws(c);
    if (*c->p == close) {
      c->p++;
      return true;
    }
    for (;;) {
      if (obj) {
        if (!jstring(c, NULL, 0)) return false;
        jws(c);
        if (*c->p++ != ':') return false;
      }
      if (!jskip(c, depth + 1)) return false;
      jws(c);
      if (*c->p == ',') {
        c->p++;
        continue;
      }
      if (*c->p == close) {
        c->p++;
        return true;
      }
      return false;
    }
  }
  const char *s = c->p;
  while (*c->p && strchr(",}] \t\r\n", *c->p) == NULL) c->p++;
  return c->p > s;
}

/* Parse one line into r. Returns false if it is not a JSON object. */
static bool parse_record(const char *line, record *r) {
  memset(r, 0, sizeof *r);
  jcur c = {line};
  jws(&c);
  if (*c.p != '{') return false;
  c.p++;
  jws(&c);
  if (*c.p == '}') return false;
  for (;;) {
    char key[64];
    if (!jstring(&c, key, sizeof key)) return false;
    jws(&c);
    if (*c.p++ != ':') return false;
    jws(&c);
    if (strcmp(key, "case") == 0) {
      if (!jstring(&c, r->name, sizeof r->name)) return false;
    } else if (strcmp(key, "dtype") == 0) {
      if (!jstring(&c, r->dtype, sizeof r->dtype)) return false;
    } else if (strcmp(key, "causal") == 0) {
      if (strncmp(c.p, "true", 4) == 0) r->causal = true, c.p += 4;
      else if (strncmp(c.p, "false", 5) == 0) c.p += 5;
      else if (!jskip(&c, 0)) return false;
    } else {
      int f = -1;
      for (int i = 0; i < NF; i++)
        if (strcmp(key, num_fields[i]) == 0) f = i;
      const char *s = c.p;
      if (!jskip(&c, 0)) return false;
      if (f >= 0 && *s != 'n' && *s != '"') {
        char *end = NULL;
        double v = strtod(s, &end);
        if (end != s && isfinite(v)) {
          r->val[f] = v;
          r->has[f] = true;
        }
      }
    }
    jws(&c);
    if (*c.p == ',') {
      c.p++;
      continue;
    }
    if (*c.p == '}') break;
    return false;
  }
  return r->name[0] != '\0';
}

/* ---- running attn-bench --------------------------------------------------------- */

static bool find_bench(const char *given, char *buf, size_t n) {
  const char *env = getenv("ATTN_BENCH");
  if (given != NULL || (env != NULL && *env != '\0')) {
    snprintf(buf, n, "%s", given ? given : env);
    return access(buf, X_OK) == 0;
  }
  char dir[4096];
  if (cli_exe_dir(dir, sizeof dir)) {
    /* installed side by side, or the build tree (build/tools/attn, build/bench/attn-bench) */
    const char *rel[] = {"attn-bench", "../bench/attn-bench", "bench/attn-bench"};
    for (size_t i = 0; i < sizeof rel / sizeof rel[0]; i++) {
      int w = snprintf(buf, n, "%s/%s", dir, rel[i]);
      if (w > 0 && (size_t)w < n && access(buf, X_OK) == 0) return true;
    }
  }
  return cli_find_in_path("attn-bench", buf, n);
}

/* Run argv; call on_line(arg, line) for every line of its stdout as it
 * arrives (lines longer than 64 KiB are cut); keep the start of its stderr.
 * Returns 0 (and the exit code, or 128+signal, in *status) or -1. */
typedef void (*line_fn)(void *arg, char *line);

static int run_child(char *const argv[], line_fn on_line, void *arg, int *status, char *err,
                     size_t errlen) {
  int po[2];
  FILE *errf = tmpfile();
  if (errf == NULL || pipe(po) != 0) {
    if (errf) fclose(errf);
    return -1;
  }
  fflush(NULL);
  pid_t pid = fork();
  if (pid < 0) {
    close(po[0]);
    close(po[1]);
    fclose(errf);
    return -1;
  }
  if (pid == 0) {
    dup2(po[1], 1);
    dup2(fileno(errf), 2);
    close(po[0]);
    close(po[1]);
    execv(argv[0], argv);
    fprintf(stderr, "cannot run %s: %s\n", argv[0], strerror(errno));
    _exit(127);
  }
  close(po[1]);
  const size_t linecap = 65536;
  char *line = malloc(linecap);
  size_t len = 0;
  char buf[4096];
  ssize_t got;
  while ((got = read(po[0], buf, sizeof buf)) != 0) {
    if (got < 0) {
      if (errno == EINTR) continue;
      break;
    }
    for (ssize_t i = 0; i < got; i++) {
      if (buf[i] == '\n') {
        if (line != NULL) {
          line[len] = '\0';
          on_line(arg, line);
        }
        len = 0;
      } else if (line != NULL && len + 1 < linecap) {
        line[len++] = buf[i];
      }
    }
  }
  if (line != NULL && len > 0) {
    line[len] = '\0';
    on_line(arg, line);
  }
  free(line);
  close(po[0]);
  int ws = 0;
  while (waitpid(pid, &ws, 0) < 0 && errno == EINTR) {
  }
  *status = WIFEXITED(ws) ? WEXITSTATUS(ws) : WIFSIGNALED(ws) ? 128 + WTERMSIG(ws) : 255;
  rewind(errf);
  size_t n = fread(err, 1, errlen - 1, errf);
  err[n] = '\0';
  fclose(errf);
  return 0;
}

static void progress(bool tty, int done, int total, const char *label) {
  if (!tty) {
    if (label) fprintf(stderr, "[%d/%d] %s\n", done, total, label);
    return;
  }
  const int width = 30;
  int filled = total ? done * width / total : width;
  fprintf(stderr, "\r[");
  for (int i = 0; i < width; i++) fputc(i < filled ? '#' : '.', stderr);
  fprintf(stderr, "] %3d/%d %-36.36s", done, total, label ? label : "done");
  if (!label) fputc('\n', stderr);
  fflush(stderr);
}

/* `attn-bench --list`: the first word of each line is a case name. */
typedef struct case_list {
  char names[64][32];
  int n;
} case_list;

static void on_list_line(void *arg, char *line) {
  case_list *cl = arg;
  while (*line == ' ' || *line == '\t') line++;
  if (*line == '\0' || *line == '#' || cl->n >= 64) return;
  size_t n = strcspn(line, " \t");
  if (n == 0 || n >= sizeof cl->names[0]) return;
  memcpy(cl->names[cl->n], line, n);
  cl->names[cl->n][n] = '\0';
  cl->n++;
}

/* The line of attn-bench's stderr that names `name` (else its first line). */
static void err_line_for(const char *err, const char *name, char *out, size_t n) {
  const char *pick = err;
  for (const char *l = err; *l; l = strchr(l, '\n') ? strchr(l, '\n') + 1 : l + strlen(l)) {
    size_t len = strcspn(l, "\n");
    const char *hit = strstr(l, name);
    if (hit != NULL && (size_t)(hit - l) < len) {
      pick = l;
      break;
    }
  }
  snprintf(out, n, "%.*s", (int)strcspn(pick, "\n"), pick);
}

static bool case_listed(const case_list *cl, const char *name) {
  for (int i = 0; i < cl->n; i++)
    if (strcmp(cl->names[i], name) == 0) return true;
  return false;
}

/* State shared with the line callback while a group runs. */
typedef struct sweep {
  record *recs;
  int nrec, cap;
  point *pts;
  bool *done;
  int np, ndone;
  bool tty;
} sweep;

static void on_bench_line(void *arg, char *line) {
  sweep *sw = arg;
  while (*line == ' ' || *line == '\t') line++;
  if (*line != '{' || sw->nrec >= sw->cap) return;
  record *r = &sw->recs[sw->nrec];
  if (!parse_record(line, r)) return;
  r->raw = strdup(line);
  if (r->raw == NULL) return;
  sw->nrec++;
  /* mark the point it answers */
  for (int p = 0; p < sw->np; p++) {
    if (sw->done[p] || strcmp(sw->pts[p].name, r->name) != 0 || sw->pts[p].causal != r->causal ||
        !r->has[F_SQ] || (int64_t)r->val[F_SQ] != sw->pts[p].S)
      continue;
    sw->done[p] = true;
    sw->ndone++;
    char label[96];
    snprintf(label, sizeof label, "%s%s S=%" PRId64 " %.3f ms", r->name, r->causal ? " causal" : "",
             sw->pts[p].S, r->has[F_MS] ? r->val[F_MS] : 0.0);
    progress(sw->tty, sw->ndone, sw->np, label);
    break;
  }
}

/* ---- outputs ---------------------------------------------------------------------- */

static int write_csv(const char *path, record *recs, int n) {
  FILE *f = fopen(path, "w");
  if (f == NULL) return -1;
  fprintf(f, "case,causal,dtype");
  for (int i = 0; i < NF; i++) fprintf(f, ",%s", num_fields[i]);
  fputc('\n', f);
  for (int r = 0; r < n; r++) {
    fprintf(f, "%s,%s,%s", recs[r].name, recs[r].causal ? "true" : "false", recs[r].dtype);
    for (int i = 0; i < NF; i++) {
      if (recs[r].has[i]) fprintf(f, ",%.9g", recs[r].val[i]);
      else fputc(',', f);
    }
    fputc('\n', f);
  }
  return fclose(f);
}

static int write_json(const char *path, record *recs, int n) {
  FILE *f = fopen(path, "w");
  if (f == NULL) return -1;
  fprintf(f, "[\n");
  for (int r = 0; r < n; r++) fprintf(f, "  %s%s\n", recs[r].raw, r + 1 < n ? "," : "");
  fprintf(f, "]\n");
  return fclose(f);
}

static int cmp_rec(const void *a, const void *b) {
  const record *x = a, *y = b;
  int c = strcmp(x->name, y->name);
  if (c) return c;
  if (x->causal != y->causal) return x->causal ? 1 : -1;
  return (x->val[F_SQ] > y->val[F_SQ]) - (x->val[F_SQ] < y->val[F_SQ]);
}

/* Write bench.dat (one gnuplot index block per series) and plots.gp, then run
 * gnuplot in dir. Returns 0 plotted, 1 skipped (no gnuplot), -1 error. */
static int make_plots(const char *dir, record *recs, int n, const char *title, char *msg, size_t ml) {
  char path[4096];
  qsort(recs, (size_t)n, sizeof *recs, cmp_rec);
  int w = snprintf(path, sizeof path, "%s/bench.dat", dir);
  if (w < 0 || (size_t)w >= sizeof path) {
    snprintf(msg, ml, "%s: path too long", dir);
    return -1;
  }
  FILE *f = fopen(path, "w");
  if (f == NULL) {
    snprintf(msg, ml, "%s: cannot write: %s", path, strerror(errno));
    return -1;
  }
  char series[64][64];
  int ns = 0;
  for (int r = 0; r < n && ns < 64; r++) {
    bool first = r == 0 || strcmp(recs[r].name, recs[r - 1].name) != 0 ||
                 recs[r].causal != recs[r - 1].causal;
    if (first) {
      if (r > 0) fprintf(f, "\n\n");
      snprintf(series[ns], sizeof series[ns], "%s%s", recs[r].name, recs[r].causal ? " (causal)" : "");
      fprintf(f, "# %s\n# S ms frac_sgemm gflops\n", series[ns]);
      ns++;
    }
    fprintf(f, "%.0f ", recs[r].has[F_SQ] ? recs[r].val[F_SQ] : 0.0);
    if (recs[r].has[F_MS]) fprintf(f, "%.9g ", recs[r].val[F_MS]);
    else fprintf(f, "? ");
    if (recs[r].has[F_FRAC_SGEMM]) fprintf(f, "%.9g ", recs[r].val[F_FRAC_SGEMM]);
    else fprintf(f, "? ");
    if (recs[r].has[F_GFLOPS]) fprintf(f, "%.9g\n", recs[r].val[F_GFLOPS]);
    else fprintf(f, "?\n");
  }
  if (fclose(f) != 0) {
    snprintf(msg, ml, "%s: write error", path);
    return -1;
  }
  w = snprintf(path, sizeof path, "%s/plots.gp", dir);
  if (w < 0 || (size_t)w >= sizeof path) {
    snprintf(msg, ml, "%s: path too long", dir);
    return -1;
  }
  f = fopen(path, "w");
  if (f == NULL) {
    snprintf(msg, ml, "%s: cannot write: %s", path, strerror(errno));
    return -1;
  }
  fprintf(f,
          "# Written by `attn bench`; run `gnuplot plots.gp` in this folder to redraw.\n"
          "if (strstrt(GPVAL_TERMINALS, 'pngcairo') > 0) {\n"
          "  set terminal pngcairo size 1000,640 noenhanced font ',10'\n"
          "} else {\n"
          "  set terminal png size 1000,640 noenhanced\n"
          "}\n"
          "set datafile missing '?'\n"
          "set key outside right top\n"
          "set grid\n"
          "set output 'time_vs_S.png'\n"
          "set title 'libattn: time per call vs sequence length (log-log) -- %s'\n"
          "set xlabel 'S (sequence length)'\n"
          "set ylabel 'time per call (ms)'\n"
          "set logscale xy\n",
          title);
  for (int pass = 0; pass < 2; pass++) {
    if (pass == 1)
      fprintf(f,
              "set output 'frac_sgemm_vs_S.png'\n"
              "set title 'libattn: fraction of OpenBLAS sgemm peak (dense-equivalent FLOPs) -- %s'\n"
              "set ylabel 'gflops / sgemm_gflops'\n"
              "unset logscale y\n"
              "set yrange [0:*]\n",
              title);
    fprintf(f, "plot ");
    for (int s = 0; s < ns; s++) {
      char esc[160];
      size_t k = 0;
      for (const char *c = series[s]; *c && k + 2 < sizeof esc; c++) {
        if (*c == '\'') esc[k++] = '\'';
        esc[k++] = *c;
      }
      esc[k] = '\0';
      fprintf(f, "%s'bench.dat' index %d using 1:%d with linespoints title '%s'", s ? ", \\\n     " : "",
              s, pass == 0 ? 2 : 3, esc);
    }
    fprintf(f, "\n");
  }
  if (fclose(f) != 0) {
    snprintf(msg, ml, "%s: write error", path);
    return -1;
  }

  char gp[4096];
  const char *env = getenv("GNUPLOT");
  if (env != NULL && *env != '\0') snprintf(gp, sizeof gp, "%s", env);
  else if (!cli_find_in_path("gnuplot", gp, sizeof gp)) {
    snprintf(msg, ml, "gnuplot not found: plots skipped (data and script are in %s/; install "
                      "gnuplot and run `gnuplot plots.gp` there)", dir);
    return 1;
  }
  fflush(NULL);
  pid_t pid = fork();
  if (pid < 0) {
    snprintf(msg, ml, "cannot start gnuplot: %s", strerror(errno));
    return -1;
  }
  if (pid == 0) {
    if (chdir(dir) != 0) _exit(126);
    char *const av[] = {gp, (char *)"plots.gp", NULL};
    execv(gp, av);
    _exit(127);
  }
  int ws = 0;
  while (waitpid(pid, &ws, 0) < 0 && errno == EINTR) {
  }
  if (!WIFEXITED(ws) || WEXITSTATUS(ws) != 0) {
    snprintf(msg, ml, "gnuplot failed (status %d) on %s/plots.gp", WIFEXITED(ws) ? WEXITSTATUS(ws) : -1,
             dir);
    return -1;
  }
  w = snprintf(msg, ml, "plots: %s/time_vs_S.png, %s/frac_sgemm_vs_S.png", dir, dir);
  return w < 0 ? -1 : 0;
}

/* ---- the command -------------------------------------------------------------------- */

static void bench_usage(FILE *f) {
  fprintf(f,
          "Usage: attn bench [--quick] [--case NAME]... [--S N,N,...] [--causal]\n"
          "                  [--csv F] [--json F] [--plots DIR] [--out DIR] [--no-plots]\n"
          "                  [--reps N] [--B N] [--H N] [--D N] [--dtype f32|f64]\n"
          "                  [--bench PATH] [--threads N]\n"
          "\n"
          "Runs attn-bench (found via --bench, $ATTN_BENCH, next to this program, in\n"
          "../bench/, or on $PATH) with --json, once per (S, causal) with all that\n"
          "group's cases (so its sgemm/bandwidth probes run once per group), shows a\n"
          "progress bar on stderr, prints a summary and writes:\n"
          "  CSV   one row per point with the contract's fields (default OUT/bench.csv)\n"
          "  JSON  an array of attn-bench's objects (default OUT/bench.json)\n"
          "  plots time vs S (log-log) and fraction of sgemm peak vs S per variant, as\n"
          "        PNG through gnuplot when it is installed (else says they were\n"
          "        skipped); the data and gnuplot script stay in the plots folder\n"
          "OUT is attn-bench-out unless --out is given.\n"
          "\n"
          "Default sweep: every case of the benchmark contract (sdpa, sdpa causal,\n"
          "naive, masked, additive, mha, decode, window, swin, longformer, bigbird,\n"
          "blocksparse, linear_elu, performer, linformer) at S = 256..4096.\n"
          "--quick: sdpa, sdpa causal, window, swin, longformer, bigbird, linear_elu,\n"
          "performer, linformer at S = 256, 512, 1024.\n"
          "Cases missing from `attn-bench --list` (e.g. an older attn-bench) are listed\n"
          "as skipped; a case that fails or crashes makes the exit status 1.\n"
          "\n"
          "Options:\n"
          "  --case NAME    run this case (repeatable; replaces the default list)\n"
          "  --causal       with --case: also pass --causal\n"
          "  --S LIST       sequence lengths, comma-separated\n"
          "  --reps N       timed repeats per point (default 5)\n"
          "  --B/--H/--D N  batch, heads, head dim passed to attn-bench\n"
          "  --dtype T      f32 or f64\n"
          "  --bench PATH   the attn-bench executable\n"
          "  --threads N    threads passed to attn-bench\n"
          "\n" CLI_EXIT_TABLE);
}

int cmd_bench(const cli_global *g0, int argc, char **argv) {
  cli_global g = *g0;
  const char *csv = NULL, *json = NULL, *plots = NULL, *outdir = "attn-bench-out", *bench = NULL;
  const char *dtype = NULL;
  bool quick = false, no_plots = false, causal = false;
  const char *user_cases[MAX_CASES];
  int nuser = 0;
  int64_t sizes[MAX_SIZES], nsizes = 0, reps = 5, B = 0, H = 0, D = 0;
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i], *val = NULL, *v;
    if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
      bench_usage(stdout);
      return CLI_EXIT_OK;
    }
#define VAL(name)                                                                               \
  if ((v = cli_opt_value(CMD, argc, argv, &i, name, val)) == NULL) return CLI_EXIT_USAGE;
    if (strcmp(a, "--quick") == 0) quick = true;
    else if (strcmp(a, "--no-plots") == 0) no_plots = true;
    else if (strcmp(a, "--causal") == 0) causal = true;
    else if (cli_opt_is(a, "--csv", &val)) {
      VAL("--csv");
      csv = v;
    } else if (cli_opt_is(a, "--json", &val)) {
      VAL("--json");
      json = v;
    } else if (cli_opt_is(a, "--plots", &val)) {
      VAL("--plots");
      plots = v;
    } else if (cli_opt_is(a, "--out", &val)) {
      VAL("--out");
      outdir = v;
    } else if (cli_opt_is(a, "--bench", &val)) {
      VAL("--bench");
      bench = v;
    } else if (cli_opt_is(a, "--dtype", &val)) {
      VAL("--dtype");
      if (strcmp(v, "f32") != 0 && strcmp(v, "f64") != 0) {
        cli_err(CMD, "--dtype: '%s' is not f32 or f64", v);
        return CLI_EXIT_USAGE;
      }
      dtype = v;
    } else if (cli_opt_is(a, "--case", &val)) {
      VAL("--case");
      if (nuser >= MAX_CASES) {
        cli_err(CMD, "too many --case options (at most %d)", MAX_CASES);
        return CLI_EXIT_USAGE;
      }
      user_cases[nuser++] = v;
    } else if (cli_opt_is(a, "--S", &val)) {
      VAL("--S");
      if ((nsizes = cli_parse_i64_list(v, 1, INT64_MAX / 2, sizes, MAX_SIZES)) < 0) {
        cli_err(CMD, "--S: '%s' is not a comma-separated list of lengths", v);
        return CLI_EXIT_USAGE;
      }
    } else if (cli_opt_is(a, "--reps", &val) || cli_opt_is(a, "--B", &val) ||
               cli_opt_is(a, "--H", &val) || cli_opt_is(a, "--D", &val) ||
               cli_opt_is(a, "--threads", &val)) {
      char name[16];
      snprintf(name, sizeof name, "%.*s", (int)strcspn(a, "="), a);
      VAL(name);
      int64_t n;
      if (!cli_parse_i64(v, 1, 1 << 20, &n)) {
        cli_err(CMD, "%s: '%s' is not a positive number", name, v);
        return CLI_EXIT_USAGE;
      }
      if (strcmp(name, "--reps") == 0) reps = n;
      else if (strcmp(name, "--B") == 0) B = n;
      else if (strcmp(name, "--H") == 0) H = n;
      else if (strcmp(name, "--D") == 0) D = n;
      else g.threads = (int32_t)n;
    } else {
      cli_err(CMD, "unknown option '%s' (try attn bench --help)", a);
      return CLI_EXIT_USAGE;
    }
#undef VAL
  }

  char exe[4096];
  if (!find_bench(bench, exe, sizeof exe)) {
    if (bench != NULL || getenv("ATTN_BENCH"))
      cli_err(CMD, "%s: not an executable file", exe);
    else
      cli_err(CMD,
              "attn-bench not found next to attn, in ../bench/ or on $PATH; build it "
              "(cmake -DATTN_BUILD_BENCH=ON) or set ATTN_BENCH=/path/to/attn-bench");
    return CLI_EXIT_IO;
  }

  /* The list of points. */
  if (nsizes == 0) {
    const int64_t *src = quick ? quick_sizes : default_sizes;
    nsizes = quick ? (int64_t)(sizeof quick_sizes / sizeof quick_sizes[0])
                   : (int64_t)(sizeof default_sizes / sizeof default_sizes[0]);
    memcpy(sizes, src, sizeof(int64_t) * (size_t)nsizes);
  }
  point pts[MAX_CASES * 2 * MAX_SIZES];
  int np = 0;
  if (nuser > 0) {
    for (int c = 0; c < nuser; c++)
      for (int64_t s = 0; s < nsizes; s++) pts[np++] = (point){user_cases[c], causal, sizes[s]};
  } else {
    for (size_t c = 0; c < sizeof default_cases / sizeof default_cases[0]; c++) {
      const sweep_case *sc = &default_cases[c];
      if (quick && !sc->quick) continue;
      for (int64_t s = 0; s < nsizes; s++)
        if (sizes[s] <= sc->max_S) pts[np++] = (point){sc->name, sc->causal, sizes[s]};
    }
  }

  /* Output paths. */
  char csv_path[4096], json_path[4096], plot_dir[4096];
  snprintf(csv_path, sizeof csv_path, "%s", csv ? csv : "");
  snprintf(json_path, sizeof json_path, "%s", json ? json : "");
  snprintf(plot_dir, sizeof plot_dir, "%s", plots ? plots : outdir);
  if (!csv) snprintf(csv_path, sizeof csv_path, "%s/bench.csv", outdir);
  if (!json) snprintf(json_path, sizeof json_path, "%s/bench.json", outdir);
  if ((!csv || !json || (!plots && !no_plots)) && cli_mkdir_p(outdir) != 0) {
    cli_err(CMD, "%s: cannot create: %s", outdir, strerror(errno));
    return CLI_EXIT_IO;
  }
  if (!no_plots && cli_mkdir_p(plot_dir) != 0) {
    cli_err(CMD, "%s: cannot create: %s", plot_dir, strerror(errno));
    return CLI_EXIT_IO;
  }

  record *recs = calloc((size_t)np * 4 + 1, sizeof *recs);
  bool *done = calloc((size_t)np + 1, sizeof *done);
  if (recs == NULL || done == NULL) {
    free(recs);
    free(done);
    cli_err(CMD, "out of memory");
    return CLI_EXIT_RUNTIME;
  }
  int nskipped = 0, nfailed = 0, status = 0;
  char skipped[2048] = "", errbuf[4096];
  const bool tty = isatty(2);
  sweep sw = {recs, 0, np * 4, pts, done, np, 0, tty};

  /* Which cases this attn-bench has: unknown ones are "not built" here. */
  case_list cl;
  memset(&cl, 0, sizeof cl);
  char *list_av[] = {exe, (char *)"--list", NULL};
  if (run_child(list_av, on_list_line, &cl, &status, errbuf, sizeof errbuf) != 0 || status != 0 ||
      cl.n == 0) {
    cli_err(CMD, "%s --list failed (status %d): %.200s", exe, status, errbuf);
    free(recs);
    free(done);
    return CLI_EXIT_RUNTIME;
  }
  for (int p = 0; p < np; p++) {
    if (case_listed(&cl, pts[p].name)) continue;
    done[p] = true;
    sw.ndone++;
    nskipped++;
    size_t used = strlen(skipped);
    if (used + 64 < sizeof skipped && (p == 0 || strcmp(pts[p - 1].name, pts[p].name) != 0 ||
                                       pts[p - 1].causal != pts[p].causal))
      snprintf(skipped + used, sizeof skipped - used, "%s%s%s", used ? ", " : "", pts[p].name,
               pts[p].causal ? " (causal)" : "");
  }
  fprintf(stderr, "attn bench: %d point%s (%d not in this attn-bench) with %s\n", np,
          np == 1 ? "" : "s", nskipped, exe);

  /* One attn-bench run per (S, causal) with all its cases: the machine
   * probes (sgemm peak, read bandwidth) run once per group, not per point. */
  bool *grouped = calloc((size_t)np + 1, sizeof *grouped);
  if (grouped == NULL) {
    free(recs);
    free(done);
    cli_err(CMD, "out of memory");
    return CLI_EXIT_RUNTIME;
  }
  for (int p0 = 0; p0 < np; p0++) {
    if (done[p0] || grouped[p0]) continue;
    char sbuf[32], rbuf[32], tbuf[32], bbuf[32], hbuf[32], dbuf[32];
    char *av[2 * MAX_CASES + 32];
    int ac = 0, ingroup = 0;
    av[ac++] = exe;
    for (int p = p0; p < np; p++) {
      if (done[p] || grouped[p] || pts[p].S != pts[p0].S || pts[p].causal != pts[p0].causal) continue;
      bool dup = false;
      for (int a2 = 2; a2 < ac; a2 += 2)
        if (strcmp(av[a2], pts[p].name) == 0) dup = true;
      grouped[p] = true;
      if (dup || ingroup >= MAX_CASES) continue;
      av[ac++] = (char *)"--case";
      av[ac++] = (char *)pts[p].name;
      ingroup++;
    }
    snprintf(sbuf, sizeof sbuf, "%" PRId64, pts[p0].S);
    av[ac++] = (char *)"--S";
    av[ac++] = sbuf;
    snprintf(rbuf, sizeof rbuf, "%" PRId64, reps);
    av[ac++] = (char *)"--reps";
    av[ac++] = rbuf;
    if (g.threads > 0) {
      snprintf(tbuf, sizeof tbuf, "%d", (int)g.threads);
      av[ac++] = (char *)"--threads";
      av[ac++] = tbuf;
    }
    if (B > 0) {
      snprintf(bbuf, sizeof bbuf, "%" PRId64, B);
      av[ac++] = (char *)"--B";
      av[ac++] = bbuf;
    }
    if (H > 0) {
      snprintf(hbuf, sizeof hbuf, "%" PRId64, H);
      av[ac++] = (char *)"--H";
      av[ac++] = hbuf;
    }
    if (D > 0) {
      snprintf(dbuf, sizeof dbuf, "%" PRId64, D);
      av[ac++] = (char *)"--D";
      av[ac++] = dbuf;
    }
    if (dtype) {
      av[ac++] = (char *)"--dtype";
      av[ac++] = (char *)dtype;
    }
    if (pts[p0].causal) av[ac++] = (char *)"--causal";
    av[ac++] = (char *)"--json";
    av[ac] = NULL;

    char label[96];
    snprintf(label, sizeof label, "S=%" PRId64 "%s: %d case%s...", pts[p0].S,
             pts[p0].causal ? " causal" : "", ingroup, ingroup == 1 ? "" : "s");
    progress(tty, sw.ndone, np, label);
    if (run_child(av, on_bench_line, &sw, &status, errbuf, sizeof errbuf) != 0) {
      if (tty) fputc('\n', stderr);
      cli_err(CMD, "cannot run %s: %s", exe, strerror(errno));
      free(grouped);
      free(done);
      for (int r = 0; r < sw.nrec; r++) free(recs[r].raw);
      free(recs);
      return CLI_EXIT_RUNTIME;
    }
    /* Points of this group without a result: failed, or not built. */
    for (int p = p0; p < np; p++) {
      if (!grouped[p] || done[p] || pts[p].S != pts[p0].S || pts[p].causal != pts[p0].causal)
        continue;
      done[p] = true;
      sw.ndone++;
      char plabel[96];
      snprintf(plabel, sizeof plabel, "%s%s S=%" PRId64, pts[p].name, pts[p].causal ? " causal" : "",
               pts[p].S);
      bool not_built = strstr(errbuf, "not built") != NULL || strstr(errbuf, "unsupported") != NULL ||
                       strstr(errbuf, "UNSUPPORTED") != NULL;
      if (not_built) {
        nskipped++;
        size_t used = strlen(skipped);
        if (used + 64 < sizeof skipped)
          snprintf(skipped + used, sizeof skipped - used, "%s%s", used ? ", " : "", plabel);
        continue;
      }
      nfailed++;
      char how[48];
      if (status > 128) snprintf(how, sizeof how, "killed by signal %d", status - 128);
      else if (status == 0) snprintf(how, sizeof how, "no JSON output");
      else snprintf(how, sizeof how, "exit status %d", status);
      char why[300];
      err_line_for(errbuf, pts[p].name, why, sizeof why);
      if (tty) fputc('\n', stderr);
      cli_err(CMD, "%s failed (%s)%s%s", plabel, how, why[0] ? ": " : "", why);
    }
  }
  free(grouped);
  free(done);
  int nrec = sw.nrec;
  progress(tty, np, np, NULL);

  /* Summary table. */
  printf("%-14s %-6s %7s %10s %9s %8s %9s\n", "case", "causal", "S", "ms", "GFLOP/s", "of sgemm",
         "max err");
  for (int r = 0; r < nrec; r++) {
    const record *x = &recs[r];
    char ms[16] = "-", gf[16] = "-", fr[16] = "-", er[16] = "-";
    if (x->has[F_MS]) snprintf(ms, sizeof ms, "%.3f", x->val[F_MS]);
    if (x->has[F_GFLOPS]) snprintf(gf, sizeof gf, "%.1f", x->val[F_GFLOPS]);
    if (x->has[F_FRAC_SGEMM]) snprintf(fr, sizeof fr, "%.0f%%", 100.0 * x->val[F_FRAC_SGEMM]);
    if (x->has[F_MAX_ERR]) snprintf(er, sizeof er, "%.2e", x->val[F_MAX_ERR]);
    printf("%-14s %-6s %7.0f %10s %9s %8s %9s\n", x->name, x->causal ? "yes" : "no",
           x->has[F_SQ] ? x->val[F_SQ] : 0.0, ms, gf, fr, er);
  }
  if (nskipped) printf("skipped (not in this attn-bench / not built): %s\n", skipped);

  int rc = CLI_EXIT_OK;
  if (write_csv(csv_path, recs, nrec) != 0) {
    cli_err(CMD, "%s: cannot write: %s", csv_path, strerror(errno));
    rc = CLI_EXIT_IO;
  } else {
    printf("CSV:  %s\n", csv_path);
  }
  if (write_json(json_path, recs, nrec) != 0) {
    cli_err(CMD, "%s: cannot write: %s", json_path, strerror(errno));
    rc = CLI_EXIT_IO;
  } else {
    printf("JSON: %s\n", json_path);
  }
  if (no_plots) {
    printf("plots: skipped (--no-plots)\n");
  } else if (nrec == 0) {
    printf("plots: skipped (no results)\n");
  } else {
    char title[160], msg[8192];
    snprintf(title, sizeof title, "B=%.0f H=%.0f D=%.0f, %s, %.0f thread(s)",
             recs[0].has[F_B] ? recs[0].val[F_B] : 0.0, recs[0].has[F_H] ? recs[0].val[F_H] : 0.0,
             recs[0].has[F_D] ? recs[0].val[F_D] : 0.0, recs[0].dtype[0] ? recs[0].dtype : "f32",
             recs[0].has[F_THREADS] ? recs[0].val[F_THREADS] : 0.0);
    int pr = make_plots(plot_dir, recs, nrec, title, msg, sizeof msg);
    if (pr < 0) {
      cli_err(CMD, "%s", msg);
      if (rc == CLI_EXIT_OK) rc = CLI_EXIT_RUNTIME;
    } else {
      printf("%s\n", msg);
    }
  }
  if (nfailed > 0 && rc == CLI_EXIT_OK) rc = CLI_EXIT_RUNTIME;
  if (nrec == 0 && rc == CLI_EXIT_OK) {
    cli_err(CMD, "no results: every point was skipped");
    rc = CLI_EXIT_RUNTIME;
  }
  for (int r = 0; r < nrec; r++) free(recs[r].raw);
  free(recs);
  return rc;
}

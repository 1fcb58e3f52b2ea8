/* attn bench: drive the attn-bench executable over sweeps (one process per
 * point, so a case that is not built or fails does not stop the sweep), show
 * progress on stderr, collect its --json lines, write CSV and JSON, and plot
 * through gnuplot when it is installed. */
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

/* The JSON fields of the benchmark contract (design.md), in CSV column order. */
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

typedef struct child_out {
  char *out;  /* stdout */
  size_t outlen;
  char err[1024]; /* first bytes of stderr */
  int status;     /* exit code, or 128+signal */
} child_out;

/* Run argv, collecting stdout and the start of stderr. */
static int run_child(char *const argv[], child_out *co) {
  memset(co, 0, sizeof *co);
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
  size_t cap = 4096;
  co->out = malloc(cap);
  char buf[4096];
  ssize_t got;
  while ((got = read(po[0], buf, sizeof buf)) != 0) {
    if (got < 0) {
      if (errno == EINTR) continue;
      break;
    }
    if (co->out != NULL && co->outlen + (size_t)got + 1 > cap) {
      while (co->outlen + (size_t)got + 1 > cap) cap *= 2;
      char *nb = realloc(co->out, cap);
      if (nb == NULL) {
        free(co->out);
        co->out = NULL;
      } else {
        co->out = nb;
      }
    }
    if (co->out != NULL) {
      memcpy(co->out + co->outlen, buf, (size_t)got);
      co->outlen += (size_t)got;
    }
  }
  close(po[0]);
  if (co->out != NULL) co->out[co->outlen] = '\0';
  int ws = 0;
  while (waitpid(pid, &ws, 0) < 0 && errno == EINTR) {
  }
  co->status = WIFEXITED(ws) ? WEXITSTATUS(ws) : WIFSIGNALED(ws) ? 128 + WTERMSIG(ws) : 255;
  rewind(errf);
  size_t n = fread(co->err, 1, sizeof co->err - 1, errf);
  co->err[n] = '\0';
  fclose(errf);
  return 0;
}

static void progress(bool tty, int done, int total, const char *label) {
  if (!tty) {
    if (label) fprintf(stderr, "[%d/%d] %s\n", done + 1, total, label);
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
          "Runs attn-bench (found via --bench, $ATTN_BENCH, next to this program, or\n"
          "on $PATH) once per sweep point with --json, shows a progress bar on stderr,\n"
          "prints a summary and writes:\n"
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
          "A point that attn-bench reports as not built is listed as skipped.\n"
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
  if (recs == NULL) {
    cli_err(CMD, "out of memory");
    return CLI_EXIT_RUNTIME;
  }
  int nrec = 0, nskipped = 0, nfailed = 0;
  char skipped[2048] = "";
  const bool tty = isatty(2);
  fprintf(stderr, "attn bench: %d point%s with %s\n", np, np == 1 ? "" : "s", exe);
  for (int p = 0; p < np; p++) {
    char label[96];
    snprintf(label, sizeof label, "%s%s S=%" PRId64, pts[p].name, pts[p].causal ? " causal" : "",
             pts[p].S);
    progress(tty, p, np, label);
    char sbuf[32], rbuf[32], tbuf[32], bbuf[32], hbuf[32], dbuf[32];
    char *av[32];
    int ac = 0;
    av[ac++] = exe;
    av[ac++] = (char *)"--case";
    av[ac++] = (char *)pts[p].name;
    snprintf(sbuf, sizeof sbuf, "%" PRId64, pts[p].S);
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
    if (pts[p].causal) av[ac++] = (char *)"--causal";
    av[ac++] = (char *)"--json";
    av[ac] = NULL;

    child_out co;
    if (run_child(av, &co) != 0) {
      if (tty) fputc('\n', stderr);
      cli_err(CMD, "cannot run %s: %s", exe, strerror(errno));
      free(recs);
      return CLI_EXIT_RUNTIME;
    }
    int got = 0;
    for (char *line = co.out, *next; line && *line; line = next) {
      next = strchr(line, '\n');
      if (next) *next++ = '\0';
      while (*line == ' ' || *line == '\t') line++;
      if (*line != '{') continue;
      if (nrec >= np * 4) break;
      if (!parse_record(line, &recs[nrec])) continue;
      recs[nrec].raw = strdup(line);
      if (recs[nrec].raw == NULL) continue;
      nrec++;
      got++;
    }
    free(co.out);
    if (co.status != 0 || got == 0) {
      char first[200];
      snprintf(first, sizeof first, "%.*s", (int)strcspn(co.err, "\n"), co.err);
      bool not_built = strstr(co.err, "not built") != NULL || strstr(co.err, "unsupported") != NULL ||
                       strstr(co.err, "UNSUPPORTED") != NULL || strstr(co.err, "unknown case") != NULL;
      if (not_built) {
        nskipped++;
        size_t used = strlen(skipped);
        if (used + 64 < sizeof skipped)
          snprintf(skipped + used, sizeof skipped - used, "%s%s", used ? ", " : "", label);
      } else {
        nfailed++;
        if (tty) fputc('\n', stderr);
        char how[48];
        if (co.status > 128) snprintf(how, sizeof how, "killed by signal %d", co.status - 128);
        else if (co.status == 0) snprintf(how, sizeof how, "no JSON output");
        else snprintf(how, sizeof how, "exit status %d", co.status);
        cli_err(CMD, "%s failed (%s)%s%s", label, how, first[0] ? ": " : "", first);
      }
    }
  }
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
  if (nskipped) printf("skipped (not built): %s\n", skipped);

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

/* attn run: attention on NumPy .npy / .npz files, so results can be checked
 * against another framework. Any file argument may be an .npz archive
 * ("A.npz" = its member named after the option, e.g. q for --q, or its only
 * member; "A.npz:NAME" = member NAME); outputs given the same .npz path are
 * written as members out / weights / lse of one archive. Inputs rank 4 [B,H,S,D] or rank 3 [H,S,D] (B = 1);
 * outputs have the rank of q. Errors: bad files exit 3 with the parser's
 * message; the library's own messages (shape mismatches, bad options) are
 * passed through and exit 1. */
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "npy.h"
#include "npz.h"

#define CMD "run"
#define MAX_LIST 4096

static void run_usage(FILE *f) {
  fprintf(f,
          "Usage: attn run --variant NAME --q Q.npy --k K.npy --v V.npy -o OUT.npy\n"
          "                [--weights W.npy] [--lse L.npy] [options]\n"
          "       attn run --variant NAME --in IN.npz -o OUT.npz [--weights OUT.npz] ...\n"
          "\n"
          "Computes attention on NumPy arrays with libattn and writes the result as\n"
          ".npy, to compare with another framework. q, k, v: float32, float64 or\n"
          "float16 (all the same), C order, rank 4 [B, H, S, D] or rank 3 [H, S, D]\n"
          "(B = 1); k and v may have fewer heads than q (GQA). OUT has q's dtype and\n"
          "rank: [B, H, S_q, D_v]; weights [B, H, S_q, S_k]; lse [B, H, S_q] (float32\n"
          "for float16 inputs, which compute in float32; masks are then float32).\n"
          "\n"
          ".npz archives (np.savez / np.savez_compressed): every file argument may be\n"
          "A.npz (its member named after the option: q, k, v, bool_mask, ...; or its\n"
          "only member) or A.npz:NAME. --in A.npz = --q A.npz --k A.npz --v A.npz.\n"
          "Outputs with the same .npz path go into one archive as members out,\n"
          "weights and lse (A.npz:NAME names the member).\n"
          "\n"
          "Variants (--variant):\n"
          "  exact (sdpa)   softmax attention; the mask options below apply\n"
          "  causal         exact with --causal top-left (unless --causal is given)\n"
          "  window         exact with a sliding window (needs --window L R)\n"
          "  longformer     --window L R band plus --global tokens\n"
          "  bigbird        --block N and --bigbird W G R SEED\n"
          "  blocksparse    --block N and --layout L.npy (u8/bool [H|1, nbq, nbk])\n"
          "  swin           --swin GRID_H GRID_W M SHIFT (S = GRID_H*GRID_W)\n"
          "  linear_elu     linear attention, phi = elu + 1\n"
          "  performer      --features M SEED\n"
          "  linformer      --rank K SEED [--proj E.npy F.npy]\n"
          "\n");
  fprintf(f,
          "Options:\n"
          "  --causal [top-left|bottom-right]  causal mask (default alignment top-left)\n"
          "  --window L R           keep i-L <= j <= i+R (L or R may be 'inf')\n"
          "  --scale X              score scale (default 1/sqrt(d) for scaled dot)\n"
          "  --score scaled_dot|dot|general|additive\n"
          "  --general-weight W.npy           [d_q, d_k] for --score general\n"
          "  --additive-weights WQ.npy WK.npy V.npy [--additive-bias B.npy]\n"
          "  --softcap C            s <- C*tanh(s/C)\n"
          "  --key-lengths a,b,...  padding: key j kept if j < len[b] (one per batch)\n"
          "  --query-lengths a,b,.. rows i >= len[b] give 0\n"
          "  --alibi s1,s2,...      ALiBi slopes, one per query head\n"
          "  --bool-mask M.npy      bool/u8 [S_q,S_k], [H|1,S_q,S_k] or [B|1,H|1,S_q,S_k];\n"
          "                         true = attend\n"
          "  --additive-mask M.npy  float, same shapes; added to the scores\n"
          "  --global i,j,...       Longformer global token indices\n"
          "  --block N              block size (BigBird, block-sparse)\n"
          "  --bigbird W G R SEED   window blocks, global blocks, random blocks, seed\n"
          "  --layout L.npy         block-sparse layout, non-zero = attend\n"
          "  --swin H W M SHIFT     Swin grid, window size, shift\n"
          "  --swin-bias T.npy      Swin relative position bias [(2M-1)^2, H]\n"
          "  --features M SEED      Performer random features\n"
          "  --rank K SEED          Linformer projected length\n"
          "  --proj E.npy F.npy     Linformer projections [K, S_k] or [H_kv, K, S_k]\n"
          "  --varlen a,b,...       packed batch: q, k, v are [T, H, D]; sequence s owns\n"
          "                         rows a_s..a_{s+1}-1 (offsets from 0 to T); outputs\n"
          "                         are packed too: out [T_q, H, D_v], lse [H, T_q],\n"
          "                         weights [H, T_q, T_k], mass [H, T_k]\n"
          "  --varlen-k a,b,...     key offsets (cross-attention; default: --varlen's)\n"
          "  --sinks s1,s2,...      sink logits, one per query head (no value)\n"
          "  --mass M.npy           write the per-key attention mass [B, H, S_k]\n"
          "  --mass-group M.npy     the same summed over each KV group [B, H_kv, S_k]\n"
          "  --dout D.npy           the backward too: dout = dL/dout (out's shape and\n"
          "                         dtype); writes --dq, --dk, --dv (any of them; q's,\n"
          "                         k's, v's shapes and dtype). Not with --varlen or\n"
          "                         --mass\n"
          "  --dq G.npy, --dk G.npy, --dv G.npy  where the gradients go\n"
          "  --threads N            libattn worker threads\n"
          "\n" CLI_EXIT_TABLE);
}

typedef struct run_opts {
  const char *variant, *q, *k, *v, *out, *weights, *lse, *in;
  attn_causal causal;
  bool causal_set;
  bool window_set;
  int64_t win_l, win_r;
  double scale, softcap;
  int score; /* -1 = default */
  int64_t key_len[MAX_LIST], nkey_len;
  int64_t query_len[MAX_LIST], nquery_len;
  double alibi[MAX_LIST];
  int64_t nalibi;
  const char *bool_mask, *add_mask, *layout, *swin_bias, *general_w;
  const char *add_wq, *add_wk, *add_v, *add_bias, *proj_e, *proj_f;
  int64_t global[MAX_LIST], nglobal;
  int64_t block;
  bool bigbird_set;
  int64_t bb_w, bb_g, bb_r;
  uint64_t bb_seed;
  bool swin_set;
  int64_t swin_h, swin_w, swin_m, swin_shift;
  bool features_set;
  int64_t features;
  uint64_t features_seed;
  bool rank_set;
  int64_t rank;
  uint64_t rank_seed;
  int64_t vl_q[MAX_LIST], nvl_q, vl_k[MAX_LIST], nvl_k;
  double sinks[MAX_LIST];
  int64_t nsinks;
  const char *mass;
  bool mass_group;
  const char *dout, *dq, *dk, *dv; /* the backward: dout in, gradients out */
} run_opts;

/* ---- option parsing ---------------------------------------------------------- */

static bool need_args(int argc, int i, int n, const char *name) {
  if (i + n >= argc) {
    cli_err(CMD, "%s needs %d value%s (see attn run --help)", name, n, n == 1 ? "" : "s");
    return false;
  }
  return true;
}

static bool parse_window_side(const char *s, int64_t *out) {
  if (strcmp(s, "inf") == 0 || strcmp(s, "none") == 0 || strcmp(s, "-1") == 0) {
    *out = ATTN_WINDOW_UNBOUNDED;
    return true;
  }
  return cli_parse_i64(s, 0, INT64_MAX - 1, out);
}

static int parse_args(int argc, char **argv, run_opts *o, cli_global *g) {
  memset(o, 0, sizeof *o);
  o->score = -1;
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i], *val = NULL, *v = NULL;
#define VALUE(name)                                                       \
  do {                                                                    \
    if ((v = cli_opt_value(CMD, argc, argv, &i, name, val)) == NULL) return CLI_EXIT_USAGE; \
  } while (0)
#define BAD(name)                                                   \
  do {                                                              \
    cli_err(CMD, "%s: invalid value '%s'", name, v ? v : "");       \
    return CLI_EXIT_USAGE;                                          \
  } while (0)
    if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
      run_usage(stdout);
      return -1;
    } else if (cli_opt_is(a, "--variant", &val)) {
      VALUE("--variant");
      o->variant = v;
    } else if (cli_opt_is(a, "--in", &val)) {
      VALUE("--in");
      o->in = v;
    } else if (cli_opt_is(a, "--q", &val)) {
      VALUE("--q");
      o->q = v;
    } else if (cli_opt_is(a, "--k", &val)) {
      VALUE("--k");
      o->k = v;
    } else if (cli_opt_is(a, "--v", &val)) {
      VALUE("--v");
      o->v = v;
    } else if (strcmp(a, "-o") == 0 || cli_opt_is(a, "--out", &val)) {
      VALUE("-o");
      o->out = v;
    } else if (cli_opt_is(a, "--weights", &val)) {
      VALUE("--weights");
      o->weights = v;
    } else if (cli_opt_is(a, "--lse", &val)) {
      VALUE("--lse");
      o->lse = v;
    } else if (cli_opt_is(a, "--dout", &val)) {
      VALUE("--dout");
      o->dout = v;
    } else if (cli_opt_is(a, "--dq", &val)) {
      VALUE("--dq");
      o->dq = v;
    } else if (cli_opt_is(a, "--dk", &val)) {
      VALUE("--dk");
      o->dk = v;
    } else if (cli_opt_is(a, "--dv", &val)) {
      VALUE("--dv");
      o->dv = v;
    } else if (cli_opt_is(a, "--threads", &val)) {
      int64_t n;
      VALUE("--threads");
      if (!cli_parse_i64(v, 1, 1024, &n)) BAD("--threads");
      g->threads = (int32_t)n;
    } else if (cli_opt_is(a, "--causal", &val)) {
      o->causal_set = true;
      o->causal = ATTN_CAUSAL_TOP_LEFT;
      const char *al = val;
      if (al == NULL && i + 1 < argc && argv[i + 1][0] != '-') al = argv[++i];
      if (al != NULL) {
        if (strcmp(al, "top-left") == 0) o->causal = ATTN_CAUSAL_TOP_LEFT;
        else if (strcmp(al, "bottom-right") == 0) o->causal = ATTN_CAUSAL_BOTTOM_RIGHT;
        else if (strcmp(al, "none") == 0) o->causal = ATTN_CAUSAL_NONE;
        else {
          cli_err(CMD, "--causal: '%s' is not top-left, bottom-right or none", al);
          return CLI_EXIT_USAGE;
        }
      }
    } else if (strcmp(a, "--window") == 0) {
      if (!need_args(argc, i, 2, a)) return CLI_EXIT_USAGE;
      v = argv[i + 1];
      if (!parse_window_side(argv[i + 1], &o->win_l)) BAD("--window L");
      v = argv[i + 2];
      if (!parse_window_side(argv[i + 2], &o->win_r)) BAD("--window R");
      o->window_set = true;
      i += 2;
    } else if (cli_opt_is(a, "--scale", &val)) {
      VALUE("--scale");
      if (!cli_parse_f64(v, &o->scale)) BAD("--scale");
    } else if (cli_opt_is(a, "--softcap", &val)) {
      VALUE("--softcap");
      if (!cli_parse_f64(v, &o->softcap)) BAD("--softcap");
    } else if (cli_opt_is(a, "--score", &val)) {
      VALUE("--score");
      if (strcmp(v, "scaled_dot") == 0 || strcmp(v, "scaled-dot") == 0) o->score = ATTN_SCORE_SCALED_DOT;
      else if (strcmp(v, "dot") == 0) o->score = ATTN_SCORE_DOT;
      else if (strcmp(v, "general") == 0) o->score = ATTN_SCORE_GENERAL;
      else if (strcmp(v, "additive") == 0) o->score = ATTN_SCORE_ADDITIVE;
      else BAD("--score");
    } else if (cli_opt_is(a, "--key-lengths", &val)) {
      VALUE("--key-lengths");
      if ((o->nkey_len = cli_parse_i64_list(v, 0, INT64_MAX, o->key_len, MAX_LIST)) < 0)
        BAD("--key-lengths");
    } else if (cli_opt_is(a, "--query-lengths", &val)) {
      VALUE("--query-lengths");
      if ((o->nquery_len = cli_parse_i64_list(v, 0, INT64_MAX, o->query_len, MAX_LIST)) < 0)
        BAD("--query-lengths");
    } else if (cli_opt_is(a, "--alibi", &val)) {
      VALUE("--alibi");
      if ((o->nalibi = cli_parse_f64_list(v, o->alibi, MAX_LIST)) < 0) BAD("--alibi");
    } else if (cli_opt_is(a, "--global", &val)) {
      VALUE("--global");
      if ((o->nglobal = cli_parse_i64_list(v, 0, INT64_MAX, o->global, MAX_LIST)) < 0) BAD("--global");
    } else if (cli_opt_is(a, "--varlen", &val)) {
      VALUE("--varlen");
      if ((o->nvl_q = cli_parse_i64_list(v, 0, INT64_MAX, o->vl_q, MAX_LIST)) < 2) BAD("--varlen");
    } else if (cli_opt_is(a, "--varlen-k", &val)) {
      VALUE("--varlen-k");
      if ((o->nvl_k = cli_parse_i64_list(v, 0, INT64_MAX, o->vl_k, MAX_LIST)) < 2) BAD("--varlen-k");
    } else if (cli_opt_is(a, "--sinks", &val)) {
      VALUE("--sinks");
      if ((o->nsinks = cli_parse_f64_list(v, o->sinks, MAX_LIST)) < 1) BAD("--sinks");
    } else if (cli_opt_is(a, "--mass", &val)) {
      VALUE("--mass");
      o->mass = v;
      o->mass_group = false;
    } else if (cli_opt_is(a, "--mass-group", &val)) {
      VALUE("--mass-group");
      o->mass = v;
      o->mass_group = true;
    } else if (cli_opt_is(a, "--bool-mask", &val)) {
      VALUE("--bool-mask");
      o->bool_mask = v;
    } else if (cli_opt_is(a, "--additive-mask", &val)) {
      VALUE("--additive-mask");
      o->add_mask = v;
    } else if (cli_opt_is(a, "--layout", &val)) {
      VALUE("--layout");
      o->layout = v;
    } else if (cli_opt_is(a, "--swin-bias", &val)) {
      VALUE("--swin-bias");
      o->swin_bias = v;
    } else if (cli_opt_is(a, "--general-weight", &val)) {
      VALUE("--general-weight");
      o->general_w = v;
    } else if (cli_opt_is(a, "--additive-bias", &val)) {
      VALUE("--additive-bias");
      o->add_bias = v;
    } else if (strcmp(a, "--additive-weights") == 0) {
      if (!need_args(argc, i, 3, a)) return CLI_EXIT_USAGE;
      o->add_wq = argv[i + 1];
      o->add_wk = argv[i + 2];
      o->add_v = argv[i + 3];
      i += 3;
    } else if (strcmp(a, "--proj") == 0) {
      if (!need_args(argc, i, 2, a)) return CLI_EXIT_USAGE;
      o->proj_e = argv[i + 1];
      o->proj_f = argv[i + 2];
      i += 2;
    } else if (cli_opt_is(a, "--block", &val)) {
      VALUE("--block");
      if (!cli_parse_i64(v, 1, INT64_MAX, &o->block)) BAD("--block");
    } else if (strcmp(a, "--bigbird") == 0) {
      if (!need_args(argc, i, 4, a)) return CLI_EXIT_USAGE;
      v = argv[i + 1];
      if (!cli_parse_i64(v, 0, INT64_MAX, &o->bb_w)) BAD("--bigbird W");
      v = argv[i + 2];
      if (!cli_parse_i64(v, 0, INT64_MAX, &o->bb_g)) BAD("--bigbird G");
      v = argv[i + 3];
      if (!cli_parse_i64(v, 0, INT64_MAX, &o->bb_r)) BAD("--bigbird R");
      v = argv[i + 4];
      if (!cli_parse_u64(v, &o->bb_seed)) BAD("--bigbird SEED");
      o->bigbird_set = true;
      i += 4;
    } else if (strcmp(a, "--swin") == 0) {
      if (!need_args(argc, i, 4, a)) return CLI_EXIT_USAGE;
      v = argv[i + 1];
      if (!cli_parse_i64(v, 1, INT64_MAX, &o->swin_h)) BAD("--swin GRID_H");
      v = argv[i + 2];
      if (!cli_parse_i64(v, 1, INT64_MAX, &o->swin_w)) BAD("--swin GRID_W");
      v = argv[i + 3];
      if (!cli_parse_i64(v, 1, INT64_MAX, &o->swin_m)) BAD("--swin M");
      v = argv[i + 4];
      if (!cli_parse_i64(v, 0, INT64_MAX, &o->swin_shift)) BAD("--swin SHIFT");
      o->swin_set = true;
      i += 4;
    } else if (strcmp(a, "--features") == 0) {
      if (!need_args(argc, i, 2, a)) return CLI_EXIT_USAGE;
      v = argv[i + 1];
      if (!cli_parse_i64(v, 1, INT64_MAX, &o->features)) BAD("--features M");
      v = argv[i + 2];
      if (!cli_parse_u64(v, &o->features_seed)) BAD("--features SEED");
      o->features_set = true;
      i += 2;
    } else if (strcmp(a, "--rank") == 0) {
      if (!need_args(argc, i, 2, a)) return CLI_EXIT_USAGE;
      v = argv[i + 1];
      if (!cli_parse_i64(v, 1, INT64_MAX, &o->rank)) BAD("--rank K");
      v = argv[i + 2];
      if (!cli_parse_u64(v, &o->rank_seed)) BAD("--rank SEED");
      o->rank_set = true;
      i += 2;
    } else {
      cli_err(CMD, "unknown option '%s' (try attn run --help)", a);
      return CLI_EXIT_USAGE;
    }
#undef VALUE
#undef BAD
  }
  if (o->variant == NULL) o->variant = "exact";
  if (o->nvl_k > 0 && o->nvl_q == 0) {
    cli_err(CMD, "--varlen-k needs --varlen");
    return CLI_EXIT_USAGE;
  }
  if (o->nvl_k > 0 && o->nvl_k != o->nvl_q) {
    cli_err(CMD, "--varlen-k: %lld offsets, --varlen has %lld", (long long)o->nvl_k,
            (long long)o->nvl_q);
    return CLI_EXIT_USAGE;
  }
  if (o->in != NULL) {
    if (!npz_is_npz_path(o->in)) {
      cli_err(CMD, "--in: '%s' is not an .npz archive", o->in);
      return CLI_EXIT_USAGE;
    }
    if (!o->q) o->q = o->in;
    if (!o->k) o->k = o->in;
    if (!o->v) o->v = o->in;
  }
  const char *missing = !o->q ? "--q" : !o->k ? "--k" : !o->v ? "--v" : !o->out ? "-o" : NULL;
  if (missing != NULL) {
    cli_err(CMD, "%s is required (see attn run --help)", missing);
    return CLI_EXIT_USAGE;
  }
  return 0;
}

/* ---- files to tensors ----------------------------------------------------------- */

/* "A.npz:NAME" -> archive "A.npz", *member NAME; "A.npz" -> *member NULL.
 * Returns 1 for an .npz spec, 0 for anything else (a .npy path). */
static int npz_spec(const char *spec, char *archive, size_t cap, const char **member) {
  *member = NULL;
  const char *cut = NULL;
  for (const char *p = spec; (p = strchr(p, ':')) != NULL; p++)
    if (p - spec >= 4 && p[1] != '\0') {
      char ext[5];
      memcpy(ext, p - 4, 4);
      ext[4] = '\0';
      for (int i = 0; i < 4; i++) ext[i] = (char)(ext[i] >= 'A' && ext[i] <= 'Z' ? ext[i] + 32 : ext[i]);
      if (strcmp(ext, ".npz") == 0) cut = p;
    }
  size_t n = cut ? (size_t)(cut - spec) : strlen(spec);
  if (n >= cap) n = cap - 1;
  memcpy(archive, spec, n);
  archive[n] = '\0';
  if (!npz_is_npz_path(archive)) return 0;
  if (cut) *member = cut + 1;
  return 1;
}

/* The member an option reads from a bare A.npz: "--bool-mask" -> "bool_mask",
 * "--proj E" -> "proj_e" (lower case, dashes to underscores). */
static void default_member(const char *what, char *out, size_t cap) {
  size_t o = 0;
  for (const char *p = what; *p && o + 1 < cap; p++) {
    if (o == 0 && *p == '-') continue;
    char c = *p == '-' || *p == ' ' ? '_' : *p;
    out[o++] = (char)(c >= 'A' && c <= 'Z' ? c + 32 : c);
  }
  out[o] = '\0';
}

typedef struct loaded {
  npy_array a[16];
  attn_tensor *t[16];
  int n;
} loaded;

static void loaded_free(loaded *l) {
  for (int i = 0; i < l->n; i++) {
    attn_tensor_destroy(l->t[i]);
    npy_free(&l->a[i]);
  }
  l->n = 0;
}

static attn_dtype to_attn(npy_dtype d) {
  return d == NPY_F32   ? ATTN_DTYPE_F32
         : d == NPY_F64 ? ATTN_DTYPE_F64
         : d == NPY_F16 ? ATTN_DTYPE_F16
                        : ATTN_DTYPE_U8;
}

/* KIND_DATA: q, k, v (float32, float64 or float16); KIND_FLOAT: auxiliary
 * float inputs (float32 or float64); KIND_BOOL: masks and layouts. */
enum { KIND_FLOAT, KIND_BOOL, KIND_DATA };

/* Load `path` and wrap it as a tensor of rank `want_rank`, padding the shape
 * with leading 1s from rank min_rank..want_rank. Returns CLI_EXIT_* or 0. */
static int load_as(attn_context *ctx, loaded *l, const char *what, const char *path, int kind,
                   int32_t min_rank, int32_t want_rank, attn_tensor **out, int32_t *file_rank) {
  char err[640];
  npy_array *a = &l->a[l->n];
  char archive[4096], member[64];
  const char *name = NULL;
  int rc_load;
  if (npz_spec(path, archive, sizeof archive, &name)) {
    if (name == NULL) default_member(what, member, sizeof member);
    rc_load = npz_load(archive, name ? name : member, name == NULL, a, err, sizeof err);
  } else {
    rc_load = npy_load(path, a, err, sizeof err);
  }
  if (rc_load != 0) {
    cli_err(CMD, "%s: %s", what, err);
    return CLI_EXIT_IO;
  }
  l->t[l->n] = NULL;
  l->n++;
  npy_dtype dt = a->h.dtype;
  if (kind == KIND_FLOAT && dt != NPY_F32 && dt != NPY_F64) {
    cli_err(CMD, "%s: %s: dtype %s; expected float32 or float64", what, path, npy_dtype_name(dt));
    return CLI_EXIT_IO;
  }
  if (kind == KIND_DATA && dt != NPY_F32 && dt != NPY_F64 && dt != NPY_F16) {
    cli_err(CMD, "%s: %s: dtype %s; expected float32, float64 or float16", what, path,
            npy_dtype_name(dt));
    return CLI_EXIT_IO;
  }
  if (kind == KIND_BOOL && dt != NPY_U8 && dt != NPY_BOOL) {
    cli_err(CMD, "%s: %s: dtype %s; expected bool or uint8 (non-zero = attend)", what, path,
            npy_dtype_name(dt));
    return CLI_EXIT_IO;
  }
  if (a->h.rank < min_rank || a->h.rank > want_rank) {
    char shp[128];
    size_t o = 0;
    shp[0] = '\0';
    for (int32_t i = 0; i < a->h.rank; i++)
      o += (size_t)snprintf(shp + o, sizeof shp - o, "%s%" PRId64, i ? "," : "", a->h.shape[i]);
    if (min_rank == want_rank)
      cli_err(CMD, "%s: %s: shape [%s] has rank %d; expected rank %d", what, path, shp,
              (int)a->h.rank, (int)want_rank);
    else
      cli_err(CMD, "%s: %s: shape [%s] has rank %d; expected rank %d to %d", what, path, shp,
              (int)a->h.rank, (int)min_rank, (int)want_rank);
    return CLI_EXIT_IO;
  }
  for (int32_t i = 0; i < a->h.rank; i++)
    if (a->h.shape[i] == 0) {
      cli_err(CMD, "%s: %s: dimension %d is 0 (empty array)", what, path, (int)i);
      return CLI_EXIT_IO;
    }
  int64_t shape[4];
  int32_t pad = want_rank - a->h.rank;
  for (int32_t i = 0; i < want_rank; i++) shape[i] = i < pad ? 1 : a->h.shape[i - pad];
  attn_status st = attn_tensor_wrap(ctx, to_attn(dt), want_rank, shape, NULL, a->data, out);
  if (st != ATTN_OK) {
    cli_err(CMD, "%s: %s: %s", what, path, attn_context_last_error(ctx));
    return CLI_EXIT_RUNTIME;
  }
  l->t[l->n - 1] = *out;
  if (file_rank) *file_rank = a->h.rank;
  return 0;
}

/* Convert a float tensor's data in place to dtype `dt` when the file's dtype
 * differs (masks/weights saved as float64 used with float32 q). Only for
 * auxiliary inputs; q, k, v must match each other as given. */
static int convert_to(attn_context *ctx, loaded *l, attn_tensor **t, attn_dtype dt, const char *what) {
  if (attn_tensor_dtype(*t) == dt) return 0;
  int idx = -1;
  for (int i = 0; i < l->n; i++)
    if (l->t[i] == *t) idx = i;
  if (idx < 0) return CLI_EXIT_RUNTIME;
  npy_array *a = &l->a[idx];
  int64_t n = a->h.numel;
  int32_t rank = attn_tensor_rank(*t);
  int64_t shape[4];
  for (int32_t i = 0; i < rank; i++) shape[i] = attn_tensor_dim(*t, i);
  attn_tensor *nt = NULL;
  if (attn_tensor_create(ctx, dt, rank, shape, &nt) != ATTN_OK) {
    cli_err(CMD, "%s: %s", what, attn_context_last_error(ctx));
    return CLI_EXIT_RUNTIME;
  }
  if (dt == ATTN_DTYPE_F32) {
    const double *s = a->data;
    float *d = attn_tensor_data(nt);
    for (int64_t i = 0; i < n; i++) d[i] = (float)s[i];
  } else {
    const float *s = a->data;
    double *d = attn_tensor_data(nt);
    for (int64_t i = 0; i < n; i++) d[i] = s[i];
  }
  attn_tensor_destroy(*t);
  l->t[idx] = nt;
  *t = nt;
  return 0;
}

/* ---- the command ---------------------------------------------------------------- */

typedef struct variant_name {
  const char *name;
  attn_variant v;
  bool causal;
} variant_name;

static const variant_name variants[] = {
    {"exact", ATTN_VARIANT_EXACT, false},       {"sdpa", ATTN_VARIANT_EXACT, false},
    {"causal", ATTN_VARIANT_EXACT, true},       {"window", ATTN_VARIANT_EXACT, false},
    {"swin", ATTN_VARIANT_SWIN, false},         {"longformer", ATTN_VARIANT_LONGFORMER, false},
    {"bigbird", ATTN_VARIANT_BIGBIRD, false},   {"blocksparse", ATTN_VARIANT_BLOCK_SPARSE, false},
    {"block-sparse", ATTN_VARIANT_BLOCK_SPARSE, false},
    {"linear_elu", ATTN_VARIANT_LINEAR_ELU, false}, {"linear", ATTN_VARIANT_LINEAR_ELU, false},
    {"performer", ATTN_VARIANT_PERFORMER, false}, {"linformer", ATTN_VARIANT_LINFORMER, false},
};

#define LIBCHECK(call)                                                              \
  do {                                                                              \
    attn_status st_ = (call);                                                       \
    if (st_ != ATTN_OK) {                                                           \
      cli_err(CMD, "%s (%s)", attn_context_last_error(ctx), attn_status_string(st_)); \
      rc = CLI_EXIT_RUNTIME;                                                        \
      goto done;                                                                    \
    }                                                                               \
  } while (0)

#define LOAD(...)                               \
  do {                                          \
    int r_ = load_as(ctx, &l, __VA_ARGS__);     \
    if (r_ != 0) {                              \
      rc = r_;                                  \
      goto done;                                \
    }                                           \
  } while (0)

int cmd_run(const cli_global *g0, int argc, char **argv) {
  cli_global g = *g0;
  run_opts *o = malloc(sizeof *o);
  if (o == NULL) {
    cli_err(CMD, "out of memory");
    return CLI_EXIT_RUNTIME;
  }
  int prc = parse_args(argc, argv, o, &g);
  if (prc != 0) {
    free(o);
    return prc < 0 ? CLI_EXIT_OK : prc;
  }
  const variant_name *vn = NULL;
  for (size_t i = 0; i < sizeof variants / sizeof variants[0]; i++)
    if (strcmp(o->variant, variants[i].name) == 0) vn = &variants[i];
  if (vn == NULL) {
    cli_err(CMD,
            "--variant: unknown '%s' (exact, causal, window, swin, longformer, bigbird, "
            "blocksparse, linear_elu, performer, linformer)",
            o->variant);
    free(o);
    return CLI_EXIT_USAGE;
  }
  if (strcmp(vn->name, "window") == 0 && !o->window_set) {
    cli_err(CMD, "--variant window needs --window L R");
    free(o);
    return CLI_EXIT_USAGE;
  }
  if (vn->v == ATTN_VARIANT_SWIN && !o->swin_set) {
    cli_err(CMD, "--variant swin needs --swin GRID_H GRID_W M SHIFT");
    free(o);
    return CLI_EXIT_USAGE;
  }

  attn_context *ctx = cli_context(&g, CMD);
  if (ctx == NULL) {
    free(o);
    return CLI_EXIT_RUNTIME;
  }
  int rc = CLI_EXIT_OK;
  loaded l;
  memset(&l, 0, sizeof l);
  attn_desc *d = NULL;
  attn_plan *plan = NULL;
  attn_tensor *q = NULL, *k = NULL, *v = NULL, *out = NULL, *w = NULL, *lse = NULL;
  attn_tensor *tmp = NULL, *dout = NULL, *grads[3] = {NULL, NULL, NULL};
  attn_backward_plan *bwd = NULL;
  int32_t qrank = 4;

  attn_tensor *views[5] = {NULL, NULL, NULL, NULL, NULL}; /* packed: q, k, v, out as [1, H, T, D]; mass */
  attn_tensor *out_packed = NULL;
  const bool packed = o->nvl_q > 0;
  LOAD("--q", o->q, KIND_DATA, 3, packed ? 3 : 4, &q, &qrank);
  LOAD("--k", o->k, KIND_DATA, 3, packed ? 3 : 4, &k, NULL);
  LOAD("--v", o->v, KIND_DATA, 3, packed ? 3 : 4, &v, NULL);
  if (packed) { /* [T, H, D] files seen as [1, H, T, D] */
    attn_tensor **ts[3] = {&q, &k, &v};
    for (int i = 0; i < 3; i++) {
      attn_tensor *t = *ts[i];
      const int64_t T = attn_tensor_dim(t, 0), Hh = attn_tensor_dim(t, 1), D = attn_tensor_dim(t, 2);
      const int64_t sh[4] = {1, Hh, T, D}, st[4] = {T * Hh * D, D, Hh * D, 1};
      LIBCHECK(attn_tensor_wrap(ctx, attn_tensor_dtype(t), 4, sh, st, attn_tensor_data(t), &views[i]));
      *ts[i] = views[i];
    }
  }
  /* dt: q's (and out's) dtype; ct: the compute type (weights, lse, masks). */
  const attn_dtype qdt = attn_tensor_dtype(q);
  const attn_dtype dt = qdt == ATTN_DTYPE_F16 ? ATTN_DTYPE_F32 : qdt;
  const int64_t B = attn_tensor_dim(q, 0), H = attn_tensor_dim(q, 1), Sq = attn_tensor_dim(q, 2);
  const int64_t Sk = attn_tensor_dim(k, 2), Dv = attn_tensor_dim(v, 3), Hkv = attn_tensor_dim(k, 1);

  LIBCHECK(attn_desc_create(ctx, &d));
  LIBCHECK(attn_desc_set_variant(d, vn->v));
  if (vn->causal && !o->causal_set) LIBCHECK(attn_desc_set_causal(d, ATTN_CAUSAL_TOP_LEFT));
  if (o->causal_set) LIBCHECK(attn_desc_set_causal(d, o->causal));
  if (o->window_set) LIBCHECK(attn_desc_set_window(d, o->win_l, o->win_r));
  if (o->score >= 0) LIBCHECK(attn_desc_set_score(d, (attn_score)o->score));
  if (o->scale != 0.0) LIBCHECK(attn_desc_set_scale(d, o->scale));
  if (o->softcap != 0.0) LIBCHECK(attn_desc_set_softcap(d, o->softcap));
  if (o->nkey_len > 0) LIBCHECK(attn_desc_set_key_lengths(d, o->key_len, o->nkey_len));
  if (o->nquery_len > 0) LIBCHECK(attn_desc_set_query_lengths(d, o->query_len, o->nquery_len));
  if (o->nalibi > 0) LIBCHECK(attn_desc_set_alibi(d, o->alibi, o->nalibi));
  if (packed)
    LIBCHECK(attn_desc_set_varlen(d, o->vl_q, o->nvl_k > 0 ? o->vl_k : NULL, o->nvl_q - 1));
  if (o->nsinks > 0) LIBCHECK(attn_desc_set_sinks(d, o->sinks, o->nsinks));
  if (o->nglobal > 0) LIBCHECK(attn_desc_set_global_tokens(d, o->global, o->nglobal));
  if (o->block > 0) LIBCHECK(attn_desc_set_block_size(d, o->block));
  if (o->bigbird_set) LIBCHECK(attn_desc_set_bigbird(d, o->bb_w, o->bb_g, o->bb_r, o->bb_seed));
  if (o->swin_set)
    LIBCHECK(attn_desc_set_swin(d, o->swin_h, o->swin_w, o->swin_m, o->swin_shift));
  if (o->features_set) LIBCHECK(attn_desc_set_features(d, o->features, o->features_seed));
  if (o->rank_set) LIBCHECK(attn_desc_set_lowrank(d, o->rank, o->rank_seed));
  if (o->bool_mask) {
    LOAD("--bool-mask", o->bool_mask, KIND_BOOL, 2, 4, &tmp, NULL);
    LIBCHECK(attn_desc_set_bool_mask(d, tmp));
  }
  if (o->add_mask) {
    LOAD("--additive-mask", o->add_mask, KIND_FLOAT, 2, 4, &tmp, NULL);
    if ((rc = convert_to(ctx, &l, &tmp, dt, "--additive-mask")) != 0) goto done;
    LIBCHECK(attn_desc_set_additive_mask(d, tmp));
  }
  if (o->layout) {
    LOAD("--layout", o->layout, KIND_BOOL, 2, 3, &tmp, NULL);
    LIBCHECK(attn_desc_set_block_layout(d, tmp));
  }
  if (o->swin_bias) {
    LOAD("--swin-bias", o->swin_bias, KIND_FLOAT, 2, 2, &tmp, NULL);
    if ((rc = convert_to(ctx, &l, &tmp, dt, "--swin-bias")) != 0) goto done;
    LIBCHECK(attn_desc_set_swin_bias(d, tmp));
  }
  if (o->general_w) {
    LOAD("--general-weight", o->general_w, KIND_FLOAT, 2, 2, &tmp, NULL);
    if ((rc = convert_to(ctx, &l, &tmp, dt, "--general-weight")) != 0) goto done;
    LIBCHECK(attn_desc_set_general_weight(d, tmp));
    if (o->score < 0) LIBCHECK(attn_desc_set_score(d, ATTN_SCORE_GENERAL));
  }
  if (o->add_wq) {
    attn_tensor *wq = NULL, *wk = NULL, *av = NULL, *ab = NULL;
    LOAD("--additive-weights WQ", o->add_wq, KIND_FLOAT, 2, 2, &wq, NULL);
    if ((rc = convert_to(ctx, &l, &wq, dt, "--additive-weights WQ")) != 0) goto done;
    LOAD("--additive-weights WK", o->add_wk, KIND_FLOAT, 2, 2, &wk, NULL);
    if ((rc = convert_to(ctx, &l, &wk, dt, "--additive-weights WK")) != 0) goto done;
    LOAD("--additive-weights V", o->add_v, KIND_FLOAT, 1, 1, &av, NULL);
    if ((rc = convert_to(ctx, &l, &av, dt, "--additive-weights V")) != 0) goto done;
    if (o->add_bias) {
      LOAD("--additive-bias", o->add_bias, KIND_FLOAT, 1, 1, &ab, NULL);
      if ((rc = convert_to(ctx, &l, &ab, dt, "--additive-bias")) != 0) goto done;
    }
    LIBCHECK(attn_desc_set_additive_weights(d, wq, wk, ab, av));
    if (o->score < 0) LIBCHECK(attn_desc_set_score(d, ATTN_SCORE_ADDITIVE));
  } else if (o->add_bias) {
    cli_err(CMD, "--additive-bias needs --additive-weights");
    rc = CLI_EXIT_USAGE;
    goto done;
  }
  if (o->proj_e) {
    attn_tensor *e = NULL, *f = NULL;
    LOAD("--proj E", o->proj_e, KIND_FLOAT, 2, 3, &e, NULL);
    if ((rc = convert_to(ctx, &l, &e, dt, "--proj E")) != 0) goto done;
    LOAD("--proj F", o->proj_f, KIND_FLOAT, 2, 3, &f, NULL);
    if ((rc = convert_to(ctx, &l, &f, dt, "--proj F")) != 0) goto done;
    LIBCHECK(attn_desc_set_lowrank_proj(d, e, f));
  }

  /* Outputs: the library validates every shape against q, k, v and names the
   * mismatch; the output tensors are only created when the shapes are sane. */
  const int64_t osh[4] = {B, H, Sq, Dv}, wsh[4] = {B, H, Sq, Sk}, lsh[3] = {B, H, Sq};
  const int64_t msh[3] = {B, o->mass_group ? Hkv : H, Sk};
  if (packed) { /* out written [T_q, H, D_v] */
    const int64_t psh[4] = {1, Sq, H, Dv}, st[4] = {Sq * H * Dv, Dv, H * Dv, 1};
    LIBCHECK(attn_tensor_create(ctx, qdt, 4, psh, &out_packed));
    LIBCHECK(attn_tensor_wrap(ctx, qdt, 4, osh, st, attn_tensor_data(out_packed), &views[3]));
    out = views[3];
  } else {
    LIBCHECK(attn_tensor_create(ctx, qdt, 4, osh, &out));
  }
  if (o->mass) {
    LIBCHECK(attn_tensor_create(ctx, dt, 3, msh, &views[4]));
    LIBCHECK(attn_desc_set_key_mass(d, views[4]));
  }
  if (o->weights) LIBCHECK(attn_tensor_create(ctx, dt, 4, wsh, &w));
  const bool linear = vn->v == ATTN_VARIANT_LINEAR_ELU || vn->v == ATTN_VARIANT_PERFORMER;
  if (o->lse || (o->dout && !linear)) LIBCHECK(attn_tensor_create(ctx, dt, 3, lsh, &lse));
  LIBCHECK(attn_plan_create(ctx, d, q, k, v, out, w, lse, &plan));
  LIBCHECK(attn_plan_execute(plan, q, k, v, out, w, lse));

  /* The backward: dout in (out's shape), dq, dk, dv in q's, k's, v's. */
  if (o->dout == NULL && (o->dq || o->dk || o->dv)) {
    cli_err(CMD, "--dq/--dk/--dv need --dout");
    rc = CLI_EXIT_USAGE;
    goto done;
  }
  if (o->dout != NULL) {
    if (packed || o->mass) {
      cli_err(CMD, "--dout: the backward of %s is not available", packed ? "--varlen" : "--mass");
      rc = CLI_EXIT_USAGE;
      goto done;
    }
    int32_t drank = 4;
    LOAD("--dout", o->dout, KIND_DATA, 3, 4, &dout, &drank);
    attn_tensor *const in3[3] = {q, k, v};
    for (int i = 0; i < 3; i++) {
      const int64_t gsh[4] = {attn_tensor_dim(in3[i], 0), attn_tensor_dim(in3[i], 1),
                              attn_tensor_dim(in3[i], 2), attn_tensor_dim(in3[i], 3)};
      LIBCHECK(attn_tensor_create(ctx, qdt, 4, gsh, &grads[i]));
    }
    LIBCHECK(attn_backward_plan_create(plan, dout, grads[0], grads[1], grads[2], NULL, &bwd));
    LIBCHECK(attn_backward_execute(bwd, q, k, v, out, lse, dout, grads[0], grads[1], grads[2],
                                   NULL));
  }

  /* Write with q's rank: rank-3 input [H,S,D] gives rank-3 outputs. */
  {
    const npy_dtype nd = dt == ATTN_DTYPE_F32 ? NPY_F32 : NPY_F64;
    const npy_dtype od = qdt == ATTN_DTYPE_F16 ? NPY_F16 : nd;
    const int drop = qrank == 3 ? 1 : 0;
    char err[640];
    static const char *const out_names[7] = {"out", "weights", "lse", "mass", "dq", "dk", "dv"};
    bool written[7] = {false, false, false, false, false, false, false};
    const int64_t posh[4] = {1, Sq, H, Dv};
    int64_t gsh[3][4];
    for (int i = 0; i < 3; i++)
      for (int x = 0; x < 4; x++) gsh[i][x] = grads[i] ? attn_tensor_dim(grads[i], x) : 0;
    struct {
      const char *path;
      attn_tensor *t;
      const int64_t *shape;
      int32_t rank;
    } outs[7] = {{o->out, packed ? out_packed : out, packed ? posh : osh, 4},
                 {o->weights, w, wsh, 4}, {o->lse, lse, lsh, 3}, {o->mass, views[4], msh, 3},
                 {o->dq, grads[0], gsh[0], 4}, {o->dk, grads[1], gsh[1], 4},
                 {o->dv, grads[2], gsh[2], 4}};
    for (int i = 0; i < 7; i++) {
      if (outs[i].path == NULL || written[i]) continue;
      char archive[4096], other[4096];
      const char *name = NULL, *oname = NULL;
      if (npz_spec(outs[i].path, archive, sizeof archive, &name)) {
        /* every output aimed at this archive becomes one of its members */
        npz_member mem[7];
        int nm = 0;
        for (int j = i; j < 7; j++) {
          if (outs[j].path == NULL || !npz_spec(outs[j].path, other, sizeof other, &oname) ||
              strcmp(other, archive) != 0)
            continue;
          mem[nm].name = oname ? oname : out_names[j];
          mem[nm].dtype = j == 0 || j >= 4 ? od : nd; /* out and gradients: q's dtype */
          mem[nm].rank = outs[j].rank - drop;
          mem[nm].shape = outs[j].shape + drop;
          mem[nm].data = attn_tensor_data(outs[j].t);
          nm++;
          written[j] = true;
        }
        if (npz_save(archive, mem, nm, err, sizeof err) != 0) {
          cli_err(CMD, "%s", err);
          rc = CLI_EXIT_IO;
          goto done;
        }
        continue;
      }
      if (npy_save(outs[i].path, i == 0 || i >= 4 ? od : nd, outs[i].rank - drop, outs[i].shape + drop,
                   attn_tensor_data(outs[i].t), err, sizeof err) != 0) {
        cli_err(CMD, "%s", err);
        rc = CLI_EXIT_IO;
        goto done;
      }
    }
  }

done:
  attn_backward_plan_destroy(bwd);
  for (int i = 0; i < 3; i++) attn_tensor_destroy(grads[i]);
  attn_plan_destroy(plan);
  attn_desc_destroy(d);
  if (!packed) attn_tensor_destroy(out);
  attn_tensor_destroy(out_packed);
  for (int i = 0; i < 5; i++) attn_tensor_destroy(views[i]);
  attn_tensor_destroy(w);
  attn_tensor_destroy(lse);
  loaded_free(&l);
  attn_context_destroy(ctx);
  free(o);
  return rc;
}

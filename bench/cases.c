/* The case registry: one line per case. Cases live in bench/case_*.c, either
 * as a `const bench_case` object or as a bench_case_fn listed here. */
#include "bench.h"

extern const bench_case bench_case_sdpa, bench_case_naive, bench_case_mha;
extern const bench_case bench_case_masked, bench_case_additive; /* case_masked.c */
extern const bench_case bench_case_subnormal;                    /* case_subnormal.c */
extern const bench_case bench_case_sdpa_bwd;                     /* case_backward.c */
extern const bench_case bench_case_mha_bwd;                      /* case_mha_bwd.c */

/* case_sparse.c */
int bench_case_window(attn_context *, const bench_opts *, bench_result *);
int bench_case_swin(attn_context *, const bench_opts *, bench_result *);
int bench_case_longformer(attn_context *, const bench_opts *, bench_result *);
int bench_case_bigbird(attn_context *, const bench_opts *, bench_result *);
int bench_case_blocksparse(attn_context *, const bench_opts *, bench_result *);
static const bench_case window_case = {"window", bench_case_window, "1-D sliding window +-w (exact kernel), --window w (default 256)"};
static const bench_case swin_case = {"swin", bench_case_swin, "Swin shifted 2-D windows, squarest grid, M=--window if <=32 else 7"};
static const bench_case longformer_case = {"longformer", bench_case_longformer, "Longformer band +-w plus 4 global tokens"};
static const bench_case bigbird_case = {"bigbird", bench_case_bigbird, "BigBird block --block (64): 1 window, 1 global, 3 random"};
static const bench_case blocksparse_case = {"blocksparse", bench_case_blocksparse, "block-sparse layout: diagonal +-1 and 2 scattered blocks per row"};

/* case_linear.c */
int bench_case_linear_elu(attn_context *, const bench_opts *, bench_result *);
int bench_case_performer(attn_context *, const bench_opts *, bench_result *);
int bench_case_linformer(attn_context *, const bench_opts *, bench_result *);
static const bench_case linear_elu_case = {"linear_elu", bench_case_linear_elu, "linear attention, phi = elu+1, O(S)"};
static const bench_case performer_case = {"performer", bench_case_performer, "Performer FAVOR+, m = --features (default 256)"};
static const bench_case linformer_case = {"linformer", bench_case_linformer, "Linformer, k = --rank (default 256, capped at S_k), segment-mean E = F"};

/* case_decode.c */
int bench_case_decode(attn_context *, const bench_opts *, bench_result *);
static const bench_case decode_case = {"decode", bench_case_decode, "S_q = 1 vs a KV cache of S_k keys: GB/s of K/V read (extra: bf16-storage speed-up)"};

/* case_paged.c */
int bench_case_paged_decode(attn_context *, const bench_opts *, bench_result *);
int bench_case_paged_prefill(attn_context *, const bench_opts *, bench_result *);
static const bench_case paged_decode_case = {"paged_decode", bench_case_paged_decode, "--seqs N sequences (lengths log-spread over 512..S_k) decoded in one call from a paged cache of --block B; contig_ms = the same on per-sequence contiguous caches; fork_mem_ratio"};
static const bench_case paged_prefill_case = {"paged_prefill", bench_case_paged_prefill, "chunked prefill: S_q new tokens onto an S_k-token paged prefix (--block B), contig_ms = the same on a contiguous cache"};
/* case_varlen.c */
int bench_case_varlen(attn_context *, const bench_opts *, bench_result *);
static const bench_case varlen_case = {"varlen", bench_case_varlen, "packed batch of 8 sequences (64..2048) vs the padded 8x2048 batch: gflops (useful), padded_gflops"};

const bench_case *const bench_cases[] = {
    &bench_case_sdpa,  &bench_case_naive, &bench_case_masked, &bench_case_additive,
    &bench_case_mha,   &decode_case,      &window_case,
    &swin_case,        &longformer_case,  &bigbird_case,   &blocksparse_case,
    &linear_elu_case,  &performer_case,   &linformer_case,   &bench_case_subnormal,
    &bench_case_sdpa_bwd, &bench_case_mha_bwd,
    &paged_decode_case, &paged_prefill_case,
    &varlen_case,
};
const int bench_ncases = (int)(sizeof bench_cases / sizeof bench_cases[0]);

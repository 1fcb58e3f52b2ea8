/* The case registry: one line per case. Cases live in bench/case_*.c. */
#include "bench.h"

extern const bench_case bench_case_sdpa, bench_case_naive, bench_case_mha;

const bench_case *const bench_cases[] = {
    &bench_case_sdpa,
    &bench_case_naive,
    &bench_case_mha,
};
const int bench_ncases = (int)(sizeof bench_cases / sizeof bench_cases[0]);

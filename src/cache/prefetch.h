/* Software prefetch for the decode loops that stream a cache's rows
 * (attend_simd.c for f32/bf16, attend_q_impl.inc for f16/int8/int4).
 *
 * The caches are read once, front to back, from DRAM; the hardware
 * prefetchers restart at every 4 KiB page and know nothing of the next run
 * or tile, so each row is asked for ATTN_KV_PREFETCH rows before it is used.
 * Measured (bench/README.md, issues 17 and 19): paged decode of 16 ragged
 * sequences, f32, d 128, went from 66 to 54 ms, int8 decode from 7.9 to
 * 4.3 ms; 8, 16, 24, 32 and 64 rows were within noise of each other, and
 * L2-only hints (T1, T2) no better than T0. */
#ifndef ATTN_CACHE_PREFETCH_H
#define ATTN_CACHE_PREFETCH_H

#include <stddef.h>
#include <stdint.h>

#ifndef ATTN_KV_PREFETCH
#define ATTN_KV_PREFETCH 16
#endif

/* Prefetch (for reading, into L1) `bytes` from row + ATTN_KV_PREFETCH·
 * row_bytes. The address is computed as an integer: it may lie past the end
 * of the caller's rows, which is harmless since prefetches never fault. */
static inline void attn_kv_prefetch_ahead(const void *row, size_t row_bytes, size_t bytes) {
  const uintptr_t at = (uintptr_t)row + (uintptr_t)ATTN_KV_PREFETCH * row_bytes;
  for (size_t o = 0; o < bytes; o += 64) __builtin_prefetch((const void *)(at + o), 0, 3);
}

#endif

/* libFuzzer target: the attn command's .npy parser (tools/npy.c) on arbitrary
 * bytes. It must never read outside the buffer, overflow, or accept a header
 * whose data does not fit in the input. Seeds: tests/fuzz/corpus/npy/.
 * The parser's source is included directly so the target builds on its own:
 *   clang -fsanitize=fuzzer,address,undefined tests/fuzz/fuzz_npy.c */
#include "../../tools/npy.c"

#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  /* An exact-size heap copy so ASan sees any read past the end. */
  uint8_t *copy = malloc(size ? size : 1);
  if (copy == NULL) return 0;
  if (size) memcpy(copy, data, size);
  npy_header h;
  char err[256];
  if (npy_parse(copy, size, &h, err, sizeof err) == 0) {
    if (h.rank < 0 || h.rank > NPY_MAX_RANK || h.data_offset > size ||
        h.data_bytes > size - h.data_offset || h.itemsize != npy_itemsize(h.dtype))
      abort();
    /* touch the data the header promises, as the loader would */
    volatile uint8_t sink = 0;
    for (size_t i = 0; i < h.data_bytes; i++) sink ^= copy[h.data_offset + i];
    (void)sink;
  } else if (err[0] == '\0') {
    abort(); /* every failure explains itself */
  }
  /* the prefix entry point with a longer claimed file must agree on headers */
  if (size >= 12) {
    npy_header h2;
    (void)npy_parse_prefix(copy, size, (uint64_t)size + 4096, &h2, err, sizeof err);
  }
  free(copy);
  return 0;
}

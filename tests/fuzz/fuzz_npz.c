/* libFuzzer target: the attn command's .npz reader (tools/npz.c over
 * tools/npy.c) on arbitrary bytes. It must never read outside the buffer,
 * overflow, or accept a member whose data does not match its header; every
 * failure explains itself. Seeds: tests/fuzz/corpus/npz/ (np.savez and
 * np.savez_compressed archives). fuzz_npz.cmake adds tools/npy.c and zlib. */
#include "../../tools/npz.c" /* npy.c comes from fuzz_npz.cmake */

#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  uint8_t *copy = malloc(size ? size : 1); /* exact size: ASan sees overreads */
  if (copy == NULL) return 0;
  if (size) memcpy(copy, data, size);
  static const char *const names[3] = {"q", NULL, "k.npy"};
  for (int i = 0; i < 3; i++) {
    npy_array a;
    char err[256] = "";
    if (npz_load_memory(copy, size, names[i], i == 0, &a, err, sizeof err) == 0) {
      if (a.h.rank < 0 || a.h.rank > NPY_MAX_RANK || a.h.itemsize != npy_itemsize(a.h.dtype) ||
          (a.h.data_bytes > 0 && a.data == NULL))
        abort();
      volatile uint8_t sink = 0;
      for (size_t j = 0; j < a.h.data_bytes; j++) sink ^= ((const uint8_t *)a.data)[j];
      (void)sink;
      npy_free(&a);
    } else if (err[0] == '\0') {
      abort();
    }
  }
  free(copy);
  return 0;
}

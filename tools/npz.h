/* NumPy .npz reader and writer for the attn command: a zip archive of .npy
 * members (np.savez / np.savez_compressed).
 *
 * Reading: the central directory (zip64 records too, as numpy writes them),
 * members stored (method 0) or deflated (method 8, through zlib), CRC-32
 * checked; every offset and size is checked against the bytes that are really
 * there, and a deflated member may not claim more than deflate's maximum
 * expansion of its compressed size. Encrypted, multi-disk and other
 * compression methods are refused with a message saying so. Each member is
 * then parsed by npy.c (npy_load_memory), with the same checks as a .npy file.
 *
 * Writing: stored members (what np.savez writes), no zip64 (members and the
 * archive below 4 GiB), through a temporary file renamed into place. */
#ifndef ATTN_TOOLS_NPZ_H
#define ATTN_TOOLS_NPZ_H

#include <stddef.h>
#include <stdint.h>

#include "npy.h"

/* Find and load member `name` ("q" matches "q.npy" or "q") of the archive held
 * in memory (buf, len). name NULL: the archive must have exactly one member;
 * fallback_single: when no member is called name, a sole member is taken.
 * Returns 0, or -1 with a message (a is zeroed). Reads nothing outside buf. */
int npz_load_memory(const void *buf, size_t len, const char *name, int fallback_single,
                    npy_array *a, char *err, size_t errlen);

/* As npz_load_memory(), reading the file at path (messages name it). */
int npz_load(const char *path, const char *name, int fallback_single, npy_array *a, char *err,
             size_t errlen);

/* One member to write: name without ".npy", C-order native data. */
typedef struct npz_member {
  const char *name;
  npy_dtype dtype;
  int32_t rank;
  const int64_t *shape;
  const void *data;
} npz_member;

/* Write n members (n >= 1, distinct names) as a .npz archive at path.
 * Returns 0 or -1 with a message; a failed write leaves no file behind. */
int npz_save(const char *path, const npz_member *members, int n, char *err, size_t errlen);

/* True when path names a .npz archive ("x.npz", any case). */
int npz_is_npz_path(const char *path);

#endif

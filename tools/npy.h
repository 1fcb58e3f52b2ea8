/* NumPy .npy reader and writer for the attn command (format versions 1.0,
 * 2.0 and 3.0; see numpy.lib.format).
 *
 * Supported element types: float32, float64 (data), uint8 and bool (masks,
 * block layouts), in either byte order (converted to native on load); C order
 * only. Everything else is rejected with a message that says what was found.
 *
 * The parser never trusts the header: the header length, the shape product
 * (overflow-checked) and the data size are all checked against the bytes that
 * are really there before anything is allocated. */
#ifndef ATTN_TOOLS_NPY_H
#define ATTN_TOOLS_NPY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define NPY_MAX_RANK 8

typedef enum npy_dtype {
  NPY_INVALID = 0,
  NPY_F32 = 1,
  NPY_F64 = 2,
  NPY_U8 = 3,
  NPY_BOOL = 4,
  NPY_F16 = 5 /* IEEE binary16 ('<f2' / 'e'): attn run's 16-bit q, k, v, out */
} npy_dtype;

typedef struct npy_header {
  npy_dtype dtype;
  bool swap;            /* stored in the other byte order than this machine's */
  int32_t rank;         /* 0..NPY_MAX_RANK (0 = a scalar) */
  int64_t shape[NPY_MAX_RANK];
  int64_t numel;        /* product of the shape (1 for a scalar) */
  size_t itemsize;      /* bytes per element */
  size_t data_offset;   /* bytes from the start of the file to the data */
  size_t data_bytes;    /* numel * itemsize */
  int32_t version;      /* 1, 2 or 3 */
} npy_header;

typedef struct npy_array {
  npy_header h;
  void *data; /* numel*itemsize bytes, native byte order, 64-byte aligned; owned */
} npy_array;

/* Parse a whole .npy file held in memory (buf, len): the magic, the version,
 * the header dict, and that at least data_bytes follow the header (extra
 * trailing bytes are allowed, as np.load allows them). Reads nothing outside
 * buf[0..len). Returns 0, or -1 with a one-line message in err (errlen ≥ 1;
 * err may be NULL when errlen is 0). h is written only on success. */
int npy_parse(const void *buf, size_t len, npy_header *h, char *err, size_t errlen);

/* As npy_parse(), but buf holds only the first buflen bytes of a file that is
 * file_len bytes long (buflen ≤ file_len): used by npy_load() to parse the
 * header before reading the data. Fails if the header is not all in buf. */
int npy_parse_prefix(const void *buf, size_t buflen, uint64_t file_len, npy_header *h, char *err,
                     size_t errlen);

/* Read a .npy file. On success a->data is owned (free with npy_free()); the
 * message names the file on failure. Returns 0 or -1. a is zeroed on failure. */
int npy_load(const char *path, npy_array *a, char *err, size_t errlen);

/* Free the data of a loaded array; safe on a zeroed or freed array. */
void npy_free(npy_array *a);

/* Write data (native byte order, C order) as a version 1.0 .npy file.
 * rank 0..NPY_MAX_RANK, each dim ≥ 0. The file is written to path.tmp-XXXX
 * first and renamed, so a failed write leaves no half-written file behind.
 * Returns 0 or -1 with a message. */
int npy_save(const char *path, npy_dtype dtype, int32_t rank, const int64_t *shape,
             const void *data, char *err, size_t errlen);

/* As npy_load(), from a whole .npy held in memory (buf, len): parse, then copy
 * the data into a->data (owned, native byte order, 64-byte aligned). Used for
 * the members of .npz archives. Returns 0 or -1 with a message (no file name). */
int npy_load_memory(const void *buf, size_t len, npy_array *a, char *err, size_t errlen);

/* Bytes npy_encode_header() may write: the longest version 1.0 header. */
#define NPY_HEADER_MAX 640

/* The version 1.0 header (magic, version, length, dict, padding to 64 bytes)
 * for an array of this dtype/shape, into out (NPY_HEADER_MAX bytes): *out_len
 * gets its length and *data_bytes the size of the data that follows. data is
 * only checked for NULL when there is data. Returns 0 or -1 with a message. */
int npy_encode_header(npy_dtype dtype, int32_t rank, const int64_t *shape, const void *data,
                      unsigned char *out, size_t *out_len, size_t *data_bytes, char *err,
                      size_t errlen);

/* "float32", "float64", "uint8", "bool" (or "invalid"). */
const char *npy_dtype_name(npy_dtype dtype);

/* Bytes per element (0 for NPY_INVALID). */
size_t npy_itemsize(npy_dtype dtype);

#endif

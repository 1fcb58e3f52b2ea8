/* .npy reader/writer: see npy.h. The header is a Python dict literal,
 *   {'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }
 * parsed here by a small recursive-descent reader that accepts exactly the
 * three keys numpy writes (any order, ' or " quotes, optional trailing comma,
 * (n,) and () tuples) and nothing else. */
#if !defined(_POSIX_C_SOURCE) || _POSIX_C_SOURCE < 200809L
#undef _POSIX_C_SOURCE
#define _POSIX_C_SOURCE 200809L
#endif

#include "npy.h"

#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* Longest header accepted (numpy itself refuses more than 10000 bytes unless
 * told otherwise; a shape of rank ≤ 8 never needs more than ~300). */
#define NPY_MAX_HEADER 65536u

static const unsigned char npy_magic[6] = {0x93, 'N', 'U', 'M', 'P', 'Y'};

static void seterr(char *err, size_t errlen, const char *fmt, ...) {
  if (err == NULL || errlen == 0) return;
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(err, errlen, fmt, ap);
  va_end(ap);
}

static bool host_little_endian(void) {
  const uint16_t one = 1;
  unsigned char b;
  memcpy(&b, &one, 1);
  return b == 1;
}

const char *npy_dtype_name(npy_dtype dtype) {
  switch (dtype) {
    case NPY_F32: return "float32";
    case NPY_F64: return "float64";
    case NPY_U8: return "uint8";
    case NPY_BOOL: return "bool";
    case NPY_F16: return "float16";
    default: return "invalid";
  }
}

size_t npy_itemsize(npy_dtype dtype) {
  switch (dtype) {
    case NPY_F32: return 4;
    case NPY_F64: return 8;
    case NPY_F16: return 2;
    case NPY_U8:
    case NPY_BOOL: return 1;
    default: return 0;
  }
}

/* ---- the header dict ------------------------------------------------------ */

typedef struct cursor {
  const char *p, *end;
  char *err;
  size_t errlen;
} cursor;

static void skip_ws(cursor *c) {
  while (c->p < c->end && (*c->p == ' ' || *c->p == '\t' || *c->p == '\n' || *c->p == '\r'))
    c->p++;
}

/* Printable description of the next few header bytes, for messages. */
static const char *near_text(const cursor *c, char *buf, size_t n) {
  size_t i = 0;
  const char *p = c->p;
  if (p >= c->end) return "end of header";
  while (p < c->end && i + 1 < n && i < 12) {
    char ch = *p++;
    buf[i++] = (ch >= 32 && ch < 127) ? ch : '?';
  }
  buf[i] = '\0';
  return buf;
}

static int expect_char(cursor *c, char ch, const char *what) {
  skip_ws(c);
  if (c->p < c->end && *c->p == ch) {
    c->p++;
    return 0;
  }
  char near[16];
  seterr(c->err, c->errlen, "bad header dict: expected '%c' %s, found \"%s\"", ch, what,
         near_text(c, near, sizeof near));
  return -1;
}

/* A quoted string (no escapes: numpy never writes any in these fields). */
static int parse_string(cursor *c, char *out, size_t outlen, const char *what) {
  skip_ws(c);
  if (c->p >= c->end || (*c->p != '\'' && *c->p != '"')) {
    char near[16];
    seterr(c->err, c->errlen, "bad header dict: expected a quoted %s, found \"%s\"", what,
           near_text(c, near, sizeof near));
    return -1;
  }
  char q = *c->p++;
  size_t n = 0;
  while (c->p < c->end && *c->p != q) {
    char ch = *c->p++;
    if (ch == '\\' || (unsigned char)ch < 32 || (unsigned char)ch >= 127) {
      seterr(c->err, c->errlen, "bad header dict: unexpected character in %s", what);
      return -1;
    }
    if (n + 1 >= outlen) {
      seterr(c->err, c->errlen, "bad header dict: %s is too long", what);
      return -1;
    }
    out[n++] = ch;
  }
  if (c->p >= c->end) {
    seterr(c->err, c->errlen, "bad header dict: unterminated string in %s", what);
    return -1;
  }
  c->p++;
  out[n] = '\0';
  return 0;
}

static bool match_word(cursor *c, const char *w) {
  size_t n = strlen(w);
  if ((size_t)(c->end - c->p) < n || memcmp(c->p, w, n) != 0) return false;
  const char *after = c->p + n;
  if (after < c->end && ((*after >= 'a' && *after <= 'z') || (*after >= 'A' && *after <= 'Z') ||
                         (*after >= '0' && *after <= '9') || *after == '_'))
    return false;
  c->p = after;
  return true;
}

static int parse_bool(cursor *c, bool *out) {
  skip_ws(c);
  if (match_word(c, "True")) {
    *out = true;
    return 0;
  }
  if (match_word(c, "False")) {
    *out = false;
    return 0;
  }
  char near[16];
  seterr(c->err, c->errlen, "bad header dict: 'fortran_order' must be True or False, found \"%s\"",
         near_text(c, near, sizeof near));
  return -1;
}

static int parse_shape(cursor *c, int64_t *shape, int32_t *rank) {
  if (expect_char(c, '(', "to open the 'shape' tuple") != 0) return -1;
  int32_t n = 0;
  for (;;) {
    skip_ws(c);
    if (c->p < c->end && *c->p == ')') {
      c->p++;
      break;
    }
    if (c->p < c->end && *c->p == '-') {
      seterr(c->err, c->errlen, "bad header dict: shape[%d] is negative", (int)n);
      return -1;
    }
    if (c->p >= c->end || *c->p < '0' || *c->p > '9') {
      char near[16];
      seterr(c->err, c->errlen, "bad header dict: expected an integer in 'shape', found \"%s\"",
             near_text(c, near, sizeof near));
      return -1;
    }
    int64_t v = 0;
    while (c->p < c->end && *c->p >= '0' && *c->p <= '9') {
      int d = *c->p++ - '0';
      if (v > (INT64_MAX - d) / 10) {
        seterr(c->err, c->errlen, "bad header dict: shape[%d] does not fit in 64 bits", (int)n);
        return -1;
      }
      v = v * 10 + d;
    }
    if (c->p < c->end && (*c->p == 'L' || *c->p == 'l')) c->p++; /* Python 2 longs */
    if (n >= NPY_MAX_RANK) {
      seterr(c->err, c->errlen, "shape has more than %d dimensions", NPY_MAX_RANK);
      return -1;
    }
    shape[n++] = v;
    skip_ws(c);
    if (c->p < c->end && *c->p == ',') {
      c->p++;
      continue;
    }
    if (c->p < c->end && *c->p == ')') {
      c->p++;
      break;
    }
    char near[16];
    seterr(c->err, c->errlen, "bad header dict: expected ',' or ')' in 'shape', found \"%s\"",
           near_text(c, near, sizeof near));
    return -1;
  }
  *rank = n;
  return 0;
}

/* Map a descr like '<f4' to a dtype; explain what is unsupported. */
static int parse_descr(const char *d, npy_header *h, char *err, size_t errlen) {
  const bool le = host_little_endian();
  char order = d[0];
  const char *t = d;
  if (order == '<' || order == '>' || order == '|' || order == '=') t = d + 1;
  else order = '=';
  npy_dtype dt = NPY_INVALID;
  if (strcmp(t, "f4") == 0) dt = NPY_F32;
  else if (strcmp(t, "f8") == 0) dt = NPY_F64;
  else if (strcmp(t, "f2") == 0 || strcmp(t, "e") == 0) dt = NPY_F16;
  else if (strcmp(t, "u1") == 0) dt = NPY_U8;
  else if (strcmp(t, "b1") == 0) dt = NPY_BOOL;
  if (dt == NPY_INVALID) {
    static const struct { const char *code, *name; } known[] = {
        {"i1", "int8"},    {"i2", "int16"},      {"i4", "int32"},       {"i8", "int64"},
        {"u2", "uint16"},  {"u4", "uint32"},     {"u8", "uint64"},
        {"f16", "float128"}, {"c8", "complex64"}, {"c16", "complex128"}, {"O", "object"},
        {"V", "void/structured"}};
    const char *name = NULL;
    for (size_t i = 0; i < sizeof known / sizeof known[0]; i++)
      if (strcmp(t, known[i].code) == 0) name = known[i].name;
    if (name == NULL && (t[0] == 'U' || t[0] == 'S')) name = "string";
    if (name == NULL && (t[0] == 'M' || t[0] == 'm')) name = "datetime/timedelta";
    if (name == NULL && t[0] == 'V') name = "void/structured";
    seterr(err, errlen,
           "dtype '%s'%s%s%s is not supported: use float32 or float64 (or float16 for q, k, "
           "v) for data, bool or uint8 for masks and layouts",
           d, name ? " (" : "", name ? name : "", name ? ")" : "");
    return -1;
  }
  h->dtype = dt;
  h->itemsize = npy_itemsize(dt);
  h->swap = h->itemsize > 1 && ((order == '<' && !le) || (order == '>' && le));
  return 0;
}

static int parse_dict(const char *txt, size_t n, npy_header *h, char *err, size_t errlen) {
  cursor c = {txt, txt + n, err, errlen};
  bool have_descr = false, have_fortran = false, have_shape = false, fortran = false;
  char descr[32] = "";
  if (expect_char(&c, '{', "at the start of the header") != 0) return -1;
  for (;;) {
    skip_ws(&c);
    if (c.p < c.end && *c.p == '}') {
      c.p++;
      break;
    }
    char key[32];
    if (parse_string(&c, key, sizeof key, "key") != 0) return -1;
    if (expect_char(&c, ':', "after a key") != 0) return -1;
    if (strcmp(key, "descr") == 0) {
      if (have_descr) goto dup;
      skip_ws(&c);
      if (c.p < c.end && *c.p == '[') {
        seterr(err, errlen,
               "structured dtype (a list 'descr') is not supported: use float32 or float64");
        return -1;
      }
      if (parse_string(&c, descr, sizeof descr, "'descr'") != 0) return -1;
      have_descr = true;
    } else if (strcmp(key, "fortran_order") == 0) {
      if (have_fortran) goto dup;
      if (parse_bool(&c, &fortran) != 0) return -1;
      have_fortran = true;
    } else if (strcmp(key, "shape") == 0) {
      if (have_shape) goto dup;
      if (parse_shape(&c, h->shape, &h->rank) != 0) return -1;
      have_shape = true;
    } else {
      seterr(err, errlen, "bad header dict: unexpected key '%s'", key);
      return -1;
    }
    skip_ws(&c);
    if (c.p < c.end && *c.p == ',') {
      c.p++;
      continue;
    }
    if (expect_char(&c, '}', "or ',' after a value") != 0) return -1;
    break;
    dup:
    seterr(err, errlen, "bad header dict: key '%s' appears twice", key);
    return -1;
  }
  skip_ws(&c);
  while (c.p < c.end && *c.p == '\0') c.p++; /* some writers pad with NULs */
  if (c.p != c.end) {
    char near[16];
    seterr(err, errlen, "bad header dict: unexpected \"%s\" after the closing '}'",
           near_text(&c, near, sizeof near));
    return -1;
  }
  if (!have_descr || !have_fortran || !have_shape) {
    seterr(err, errlen, "bad header dict: missing key '%s'",
           !have_descr ? "descr" : !have_fortran ? "fortran_order" : "shape");
    return -1;
  }
  if (parse_descr(descr, h, err, errlen) != 0) return -1;
  if (fortran && h->rank > 1) {
    seterr(err, errlen,
           "Fortran-order (column-major) array: only C order is supported; save "
           "np.ascontiguousarray(a) instead");
    return -1;
  }
  return 0;
}

/* ---- the file layout ------------------------------------------------------ */

int npy_parse_prefix(const void *buf, size_t buflen, uint64_t file_len, npy_header *h, char *err,
                     size_t errlen) {
  const unsigned char *b = buf;
  if (buf == NULL && buflen > 0) {
    seterr(err, errlen, "no data");
    return -1;
  }
  if (buflen > file_len) buflen = (size_t)file_len;
  if (file_len < 6 || memcmp(b, npy_magic, 6) != 0) {
    seterr(err, errlen, "not a .npy file (bad magic: expected \\x93NUMPY)");
    return -1;
  }
  if (file_len < 8) {
    seterr(err, errlen, "truncated: the file ends inside the version field");
    return -1;
  }
  if (buflen < 8) {
    seterr(err, errlen, "internal: header prefix not read");
    return -1;
  }
  int major = b[6], minor = b[7];
  if ((major != 1 && major != 2 && major != 3) || minor != 0) {
    seterr(err, errlen, "unsupported .npy format version %d.%d (known: 1.0, 2.0, 3.0)", major,
           minor);
    return -1;
  }
  size_t lenbytes = major == 1 ? 2 : 4;
  if (file_len < 8 + lenbytes) {
    seterr(err, errlen, "truncated: the file ends inside the header length field");
    return -1;
  }
  if (buflen < 8 + lenbytes) {
    seterr(err, errlen, "internal: header prefix not read");
    return -1;
  }
  uint64_t hlen = (uint64_t)b[8] | ((uint64_t)b[9] << 8);
  if (lenbytes == 4) hlen |= ((uint64_t)b[10] << 16) | ((uint64_t)b[11] << 24);
  uint64_t start = 8 + lenbytes;
  if (hlen > file_len - start) {
    seterr(err, errlen,
           "header length %" PRIu64 " runs past the end of the file (%" PRIu64
           " bytes after the length field): truncated or corrupt",
           hlen, file_len - start);
    return -1;
  }
  if (hlen > NPY_MAX_HEADER) {
    seterr(err, errlen, "header length %" PRIu64 " is larger than the %u bytes accepted", hlen,
           NPY_MAX_HEADER);
    return -1;
  }
  if (buflen < start + hlen) {
    seterr(err, errlen, "internal: header not read");
    return -1;
  }
  npy_header tmp;
  memset(&tmp, 0, sizeof tmp);
  tmp.version = major;
  if (parse_dict((const char *)b + start, (size_t)hlen, &tmp, err, errlen) != 0) return -1;

  int64_t numel = 1;
  for (int32_t i = 0; i < tmp.rank; i++) {
    int64_t d = tmp.shape[i];
    if (d != 0 && numel > INT64_MAX / d) {
      seterr(err, errlen, "shape product overflows 64 bits");
      return -1;
    }
    numel *= d;
  }
  if ((uint64_t)numel > (uint64_t)SIZE_MAX / tmp.itemsize ||
      (uint64_t)numel > (uint64_t)INT64_MAX / tmp.itemsize) {
    seterr(err, errlen, "shape product times the item size (%zu bytes) overflows", tmp.itemsize);
    return -1;
  }
  tmp.numel = numel;
  tmp.data_bytes = (size_t)numel * tmp.itemsize;
  tmp.data_offset = (size_t)(start + hlen);
  uint64_t avail = file_len - tmp.data_offset;
  if ((uint64_t)tmp.data_bytes > avail) {
    char shp[160];
    size_t o = 0;
    shp[0] = '\0';
    for (int32_t i = 0; i < tmp.rank && o < sizeof shp; i++)
      o += (size_t)snprintf(shp + o, sizeof shp - o, "%s%" PRId64, i ? "," : "", tmp.shape[i]);
    seterr(err, errlen,
           "truncated: shape [%s] of %s needs %zu data bytes, the file has %" PRIu64, shp,
           npy_dtype_name(tmp.dtype), tmp.data_bytes, avail);
    return -1;
  }
  *h = tmp;
  return 0;
}

int npy_parse(const void *buf, size_t len, npy_header *h, char *err, size_t errlen) {
  return npy_parse_prefix(buf, len, (uint64_t)len, h, err, errlen);
}

static void byteswap(void *data, size_t n, size_t itemsize) {
  unsigned char *p = data;
  for (size_t i = 0; i < n; i++, p += itemsize)
    for (size_t a = 0, z = itemsize - 1; a < z; a++, z--) {
      unsigned char t = p[a];
      p[a] = p[z];
      p[z] = t;
    }
}

/* Native byte order and 0/1 bools for freshly read data. */
static void npy_normalise(npy_header *h, void *data) {
  if (h->swap) byteswap(data, (size_t)h->numel, h->itemsize);
  h->swap = false;
  if (h->dtype == NPY_BOOL) {
    /* numpy bools are 0/1 bytes; normalise anything else to 1 (true = attend). */
    unsigned char *p = data;
    for (size_t i = 0; i < h->data_bytes; i++) p[i] = p[i] != 0;
  }
}

static void *npy_alloc_data(size_t bytes) {
  size_t cap = bytes ? bytes : 1;
  cap = (cap + 63) / 64 * 64;
  void *data = NULL;
  if (posix_memalign(&data, 64, cap) != 0) return NULL;
  return data;
}

int npy_load_memory(const void *buf, size_t len, npy_array *a, char *err, size_t errlen) {
  memset(a, 0, sizeof *a);
  npy_header h;
  if (npy_parse(buf, len, &h, err, errlen) != 0) return -1;
  void *data = npy_alloc_data(h.data_bytes);
  if (data == NULL) {
    seterr(err, errlen, "out of memory for %zu bytes of data", h.data_bytes);
    return -1;
  }
  if (h.data_bytes) memcpy(data, (const unsigned char *)buf + h.data_offset, h.data_bytes);
  npy_normalise(&h, data);
  a->h = h;
  a->data = data;
  return 0;
}

void npy_free(npy_array *a) {
  if (a == NULL) return;
  free(a->data);
  memset(a, 0, sizeof *a);
}

int npy_load(const char *path, npy_array *a, char *err, size_t errlen) {
  memset(a, 0, sizeof *a);
  FILE *f = fopen(path, "rb");
  if (f == NULL) {
    seterr(err, errlen, "%s: cannot open: %s", path, strerror(errno));
    return -1;
  }
  char msg[256];
  unsigned char *head = NULL;
  void *data = NULL;
  struct stat st;
  if (fstat(fileno(f), &st) != 0 || !S_ISREG(st.st_mode)) {
    seterr(err, errlen, "%s: not a regular file", path);
    goto fail;
  }
  uint64_t flen = (uint64_t)st.st_size;
  /* The header is at most 12 + NPY_MAX_HEADER bytes: read that much (or the
   * whole file if smaller), parse it, then read exactly the data. */
  size_t want = flen < 12u + NPY_MAX_HEADER ? (size_t)flen : 12u + NPY_MAX_HEADER;
  head = malloc(want ? want : 1);
  if (head == NULL) {
    seterr(err, errlen, "%s: out of memory", path);
    goto fail;
  }
  if (fread(head, 1, want, f) != want) {
    seterr(err, errlen, "%s: read error", path);
    goto fail;
  }
  npy_header h;
  if (npy_parse_prefix(head, want, flen, &h, msg, sizeof msg) != 0) {
    seterr(err, errlen, "%s: %s", path, msg);
    goto fail;
  }
  if ((data = npy_alloc_data(h.data_bytes)) == NULL) {
    seterr(err, errlen, "%s: out of memory for %zu bytes of data", path, h.data_bytes);
    goto fail;
  }
  if (fseek(f, (long)h.data_offset, SEEK_SET) != 0 ||
      fread(data, 1, h.data_bytes, f) != h.data_bytes) {
    seterr(err, errlen, "%s: read error in the data", path);
    goto fail;
  }
  npy_normalise(&h, data);
  free(head);
  fclose(f);
  a->h = h;
  a->data = data;
  return 0;
fail:
  free(head);
  free(data);
  fclose(f);
  return -1;
}

int npy_encode_header(npy_dtype dtype, int32_t rank, const int64_t *shape, const void *data,
                      unsigned char *out, size_t *out_len, size_t *data_bytes, char *err,
                      size_t errlen) {
  size_t isz = npy_itemsize(dtype);
  if (isz == 0 || rank < 0 || rank > NPY_MAX_RANK || (rank > 0 && shape == NULL)) {
    seterr(err, errlen, "invalid dtype or rank for writing");
    return -1;
  }
  uint64_t numel = 1;
  for (int32_t i = 0; i < rank; i++) {
    if (shape[i] < 0 || (shape[i] != 0 && numel > UINT64_MAX / (uint64_t)shape[i])) {
      seterr(err, errlen, "invalid shape for writing");
      return -1;
    }
    numel *= (uint64_t)shape[i];
  }
  if (numel > SIZE_MAX / isz) {
    seterr(err, errlen, "array too large");
    return -1;
  }
  size_t nbytes = (size_t)numel * isz;
  if (nbytes > 0 && data == NULL) {
    seterr(err, errlen, "no data to write");
    return -1;
  }

  char dict[512];
  const char *code = dtype == NPY_F32   ? "f4"
                     : dtype == NPY_F64 ? "f8"
                     : dtype == NPY_F16 ? "f2"
                     : dtype == NPY_U8  ? "u1"
                                        : "b1";
  char order = isz == 1 ? '|' : host_little_endian() ? '<' : '>';
  int n = snprintf(dict, sizeof dict, "{'descr': '%c%s', 'fortran_order': False, 'shape': (", order,
                   code);
  for (int32_t i = 0; i < rank; i++)
    n += snprintf(dict + n, sizeof dict - (size_t)n, "%" PRId64 "%s", shape[i],
                  (rank == 1 || i + 1 < rank) ? ", " : "");
  if (rank == 1) n -= 1; /* "(5,)" as numpy writes it */
  n += snprintf(dict + n, sizeof dict - (size_t)n, "), }");
  /* Pad with spaces so that magic + version + length + header is a multiple
   * of 64 bytes (numpy's alignment), ending with '\n'. */
  size_t total = 10 + (size_t)n + 1;
  size_t padded = (total + 63) / 64 * 64;
  size_t hlen = padded - 10;
  unsigned char pre[10] = {0x93, 'N', 'U', 'M', 'P', 'Y', 1, 0, (unsigned char)(hlen & 0xff),
                           (unsigned char)(hlen >> 8)};
  memcpy(out, pre, 10);
  memcpy(out + 10, dict, (size_t)n);
  memset(out + 10 + n, ' ', hlen - (size_t)n - 1);
  out[padded - 1] = '\n';
  *out_len = padded;
  *data_bytes = nbytes;
  return 0;
}

int npy_save(const char *path, npy_dtype dtype, int32_t rank, const int64_t *shape,
             const void *data, char *err, size_t errlen) {
  unsigned char head[NPY_HEADER_MAX];
  size_t head_len = 0, nbytes = 0;
  char msg[256];
  if (npy_encode_header(dtype, rank, shape, data, head, &head_len, &nbytes, msg, sizeof msg) != 0) {
    seterr(err, errlen, "%s: %s", path, msg);
    return -1;
  }

  size_t plen = strlen(path);
  char *tmp = malloc(plen + 16);
  if (tmp == NULL) {
    seterr(err, errlen, "%s: out of memory", path);
    return -1;
  }
  snprintf(tmp, plen + 16, "%s.tmp-XXXXXX", path);
  int fd = mkstemp(tmp);
  if (fd < 0) {
    seterr(err, errlen, "%s: cannot create: %s", path, strerror(errno));
    free(tmp);
    return -1;
  }
  FILE *f = fdopen(fd, "wb");
  if (f == NULL) {
    seterr(err, errlen, "%s: cannot write: %s", path, strerror(errno));
    close(fd);
    unlink(tmp);
    free(tmp);
    return -1;
  }
  bool ok = fwrite(head, 1, head_len, f) == head_len;
  ok = ok && (nbytes == 0 || fwrite(data, 1, nbytes, f) == nbytes);
  int saved = errno;
  if (fclose(f) != 0) ok = false;
  if (!ok) {
    seterr(err, errlen, "%s: write error: %s", path, strerror(saved ? saved : errno));
    unlink(tmp);
    free(tmp);
    return -1;
  }
  /* mkstemp makes the file 0600; give it the usual permissions. */
  mode_t um = umask(0);
  umask(um);
  chmod(tmp, 0666 & ~um);
  if (rename(tmp, path) != 0) {
    seterr(err, errlen, "%s: cannot write: %s", path, strerror(errno));
    unlink(tmp);
    free(tmp);
    return -1;
  }
  free(tmp);
  return 0;
}

/* .npz (zip of .npy) reader/writer: see npz.h. Zip layout (APPNOTE.TXT):
 * [local header + data]... central directory... [zip64 EOCD + locator] EOCD.
 * The reader trusts only the central directory for sizes and offsets (the
 * local header gives the data offset: its name and extra lengths). */
#if !defined(_POSIX_C_SOURCE) || _POSIX_C_SOURCE < 200809L
#undef _POSIX_C_SOURCE
#define _POSIX_C_SOURCE 200809L
#endif

#include "npz.h"

#include <errno.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#define SIG_LOCAL 0x04034b50u
#define SIG_CENTRAL 0x02014b50u
#define SIG_EOCD 0x06054b50u
#define SIG_EOCD64 0x06064b50u
#define SIG_LOCATOR64 0x07064b50u
#define NPZ_MAX_MEMBERS 4096

static void seterr(char *err, size_t errlen, const char *fmt, ...) {
  if (err == NULL || errlen == 0) return;
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(err, errlen, fmt, ap);
  va_end(ap);
}

static uint32_t rd16(const unsigned char *p) { return (uint32_t)p[0] | (uint32_t)p[1] << 8; }
static uint32_t rd32(const unsigned char *p) { return rd16(p) | rd16(p + 2) << 16; }
static uint64_t rd64(const unsigned char *p) { return (uint64_t)rd32(p) | (uint64_t)rd32(p + 4) << 32; }
static void wr16(unsigned char *p, uint32_t v) {
  p[0] = (unsigned char)v;
  p[1] = (unsigned char)(v >> 8);
}
static void wr32(unsigned char *p, uint32_t v) {
  wr16(p, v & 0xffffu);
  wr16(p + 2, v >> 16);
}

int npz_is_npz_path(const char *path) {
  size_t n = path ? strlen(path) : 0;
  return n >= 4 && strcasecmp(path + n - 4, ".npz") == 0;
}

/* A central directory entry, sizes resolved through zip64 extras. */
typedef struct cd_entry {
  const unsigned char *name;
  size_t name_len;
  uint32_t flags, method, crc;
  uint64_t csize, usize, local_off;
} cd_entry;

/* Does member name (name_len bytes) match the wanted name ("q" ~ "q.npy")? */
static bool name_matches(const cd_entry *e, const char *want) {
  size_t w = strlen(want);
  if (e->name_len == w && memcmp(e->name, want, w) == 0) return true;
  return e->name_len == w + 4 && memcmp(e->name, want, w) == 0 &&
         memcmp(e->name + w, ".npy", 4) == 0;
}

/* Parse the entry at *pos of the central directory [cd, cd_end). */
static int read_cd_entry(const unsigned char *b, size_t *pos, size_t cd_end, cd_entry *e,
                         char *err, size_t errlen) {
  size_t p = *pos;
  if (cd_end - p < 46 || rd32(b + p) != SIG_CENTRAL) {
    seterr(err, errlen, "corrupt zip: bad central directory entry at byte %zu", p);
    return -1;
  }
  e->flags = rd16(b + p + 8);
  e->method = rd16(b + p + 10);
  e->crc = rd32(b + p + 16);
  e->csize = rd32(b + p + 20);
  e->usize = rd32(b + p + 24);
  size_t nlen = rd16(b + p + 28), xlen = rd16(b + p + 30), clen = rd16(b + p + 32);
  uint32_t disk = rd16(b + p + 34);
  e->local_off = rd32(b + p + 42);
  if (cd_end - p - 46 < nlen + xlen + clen) {
    seterr(err, errlen, "corrupt zip: central directory entry runs past its end");
    return -1;
  }
  e->name = b + p + 46;
  e->name_len = nlen;
  /* zip64 extra (id 1): the 0xFFFFFFFF fields, in the order usize, csize, offset. */
  const unsigned char *x = b + p + 46 + nlen, *xend = x + xlen;
  while (xend - x >= 4) {
    uint32_t id = rd16(x), sz = rd16(x + 2);
    if ((size_t)(xend - x - 4) < sz) {
      seterr(err, errlen, "corrupt zip: extra field runs past its entry");
      return -1;
    }
    if (id == 1) {
      const unsigned char *f = x + 4, *fend = x + 4 + sz;
      uint64_t *fields[3] = {&e->usize, &e->csize, &e->local_off};
      for (int i = 0; i < 3; i++) {
        if (*fields[i] != 0xffffffffu) continue;
        if (fend - f < 8) {
          seterr(err, errlen, "corrupt zip: zip64 extra field too short");
          return -1;
        }
        *fields[i] = rd64(f);
        f += 8;
      }
    }
    x += 4 + sz;
  }
  if (disk != 0 && disk != 0xffffu) {
    seterr(err, errlen, "multi-disk zip archives are not supported");
    return -1;
  }
  *pos = p + 46 + nlen + xlen + clen;
  return 0;
}

/* Locate the central directory: [*cd_off, *cd_off + *cd_size), *count entries. */
static int find_cd(const unsigned char *b, size_t len, size_t *cd_off, size_t *cd_size,
                   uint64_t *count, char *err, size_t errlen) {
  if (len < 22) {
    seterr(err, errlen, "not a .npz file (%zu bytes; too short for a zip archive)", len);
    return -1;
  }
  size_t lo = len - 22 > 65535 ? len - 22 - 65535 : 0, e = len - 22 + 1;
  bool found = false;
  while (e-- > lo)
    if (rd32(b + e) == SIG_EOCD && e + 22 + rd16(b + e + 20) <= len) {
      found = true;
      break;
    }
  if (!found) {
    seterr(err, errlen, "not a .npz file (no zip end-of-central-directory record)");
    return -1;
  }
  uint64_t n = rd16(b + e + 10), size = rd32(b + e + 12), off = rd32(b + e + 16);
  if (rd16(b + e + 4) != 0 || rd16(b + e + 6) != 0) {
    seterr(err, errlen, "multi-disk zip archives are not supported");
    return -1;
  }
  if (n == 0xffffu || size == 0xffffffffu || off == 0xffffffffu) {
    /* zip64: the locator sits just before the EOCD and points at the zip64 EOCD. */
    if (e < 20 || rd32(b + e - 20) != SIG_LOCATOR64) {
      seterr(err, errlen, "corrupt zip: zip64 sizes without a zip64 locator");
      return -1;
    }
    uint64_t z = rd64(b + e - 20 + 8);
    if (z > len || len - z < 56 || rd32(b + z) != SIG_EOCD64) {
      seterr(err, errlen, "corrupt zip: bad zip64 end-of-central-directory record");
      return -1;
    }
    n = rd64(b + z + 32);
    size = rd64(b + z + 40);
    off = rd64(b + z + 48);
  }
  if (off > len || size > len - off) {
    seterr(err, errlen, "corrupt zip: the central directory (%llu bytes at %llu) is past the end "
           "of the file (%zu bytes)", (unsigned long long)size, (unsigned long long)off, len);
    return -1;
  }
  if (n > NPZ_MAX_MEMBERS) {
    seterr(err, errlen, "%llu members; at most %d are read", (unsigned long long)n,
           NPZ_MAX_MEMBERS);
    return -1;
  }
  *cd_off = (size_t)off;
  *cd_size = (size_t)size;
  *count = n;
  return 0;
}

/* The member's bytes, inflated if needed: *out points into b (stored) or at a
 * malloc'd buffer returned in *owned. */
static int member_bytes(const unsigned char *b, size_t len, const cd_entry *e,
                        const unsigned char **out, unsigned char **owned, char *err,
                        size_t errlen) {
  *owned = NULL;
  if (e->flags & 1u) {
    seterr(err, errlen, "encrypted members are not supported");
    return -1;
  }
  if (e->method != 0 && e->method != 8) {
    seterr(err, errlen, "compression method %u is not supported (stored or deflated only)",
           (unsigned)e->method);
    return -1;
  }
  if (e->local_off > len || len - e->local_off < 30 || rd32(b + e->local_off) != SIG_LOCAL) {
    seterr(err, errlen, "corrupt zip: no local header at byte %llu",
           (unsigned long long)e->local_off);
    return -1;
  }
  size_t start = (size_t)e->local_off + 30 + rd16(b + e->local_off + 26) +
                 rd16(b + e->local_off + 28);
  if (start > len || e->csize > len - start) {
    seterr(err, errlen, "corrupt zip: member data (%llu bytes) runs past the end of the file",
           (unsigned long long)e->csize);
    return -1;
  }
  const unsigned char *data = b + start;
  if (e->method == 0) {
    if (e->csize != e->usize) {
      seterr(err, errlen, "corrupt zip: stored member with sizes %llu and %llu",
             (unsigned long long)e->csize, (unsigned long long)e->usize);
      return -1;
    }
    *out = data;
  } else {
    /* deflate expands at most ~1032:1; a bigger claim is a lie (or a bomb). */
    if (e->usize == 0 || e->usize > e->csize * 1032u + 64u || e->usize > SIZE_MAX - 1) {
      seterr(err, errlen, "corrupt zip: deflated member claims %llu bytes from %llu",
             (unsigned long long)e->usize, (unsigned long long)e->csize);
      return -1;
    }
    unsigned char *buf = malloc((size_t)e->usize);
    if (buf == NULL) {
      seterr(err, errlen, "out of memory for %llu bytes", (unsigned long long)e->usize);
      return -1;
    }
    z_stream zs;
    memset(&zs, 0, sizeof zs);
    if (inflateInit2(&zs, -MAX_WBITS) != Z_OK) {
      free(buf);
      seterr(err, errlen, "zlib: cannot start inflating");
      return -1;
    }
    /* zlib counts in uInt: feed and drain in chunks. */
    uint64_t in_left = e->csize, out_left = e->usize;
    const unsigned char *in = data;
    unsigned char *o = buf;
    int zr = Z_OK;
    while (zr == Z_OK) {
      if (zs.avail_in == 0 && in_left > 0) {
        zs.next_in = (unsigned char *)(uintptr_t)in;
        zs.avail_in = in_left > 0x40000000u ? 0x40000000u : (uInt)in_left;
        in += zs.avail_in;
        in_left -= zs.avail_in;
      }
      if (zs.avail_out == 0 && out_left > 0) {
        zs.next_out = o;
        zs.avail_out = out_left > 0x40000000u ? 0x40000000u : (uInt)out_left;
        o += zs.avail_out;
        out_left -= zs.avail_out;
      }
      zr = inflate(&zs, Z_NO_FLUSH);
      if (zr == Z_BUF_ERROR && (zs.avail_in > 0 || in_left > 0) &&
          (zs.avail_out > 0 || out_left > 0))
        zr = Z_OK; /* progress still possible */
    }
    uint64_t total = zs.total_out;
    inflateEnd(&zs);
    if (zr != Z_STREAM_END || total != e->usize) {
      free(buf);
      seterr(err, errlen, "corrupt deflated member (zlib: %s after %llu of %llu bytes)",
             zr == Z_STREAM_END ? "stream ended early" : zr == Z_DATA_ERROR ? "bad data"
                                                                             : "truncated",
             (unsigned long long)total, (unsigned long long)e->usize);
      return -1;
    }
    *out = buf;
    *owned = buf;
  }
  /* CRC-32 of the uncompressed bytes (zlib's crc32, in uInt chunks). */
  uLong crc = crc32(0L, Z_NULL, 0);
  const unsigned char *c = *out;
  for (uint64_t left = e->usize; left > 0;) {
    uInt n = left > 0x40000000u ? 0x40000000u : (uInt)left;
    crc = crc32(crc, c, n);
    c += n;
    left -= n;
  }
  if ((uint32_t)crc != e->crc) {
    free(*owned);
    *owned = NULL;
    seterr(err, errlen, "CRC-32 mismatch (data %08x, directory %08x): the member is corrupt",
           (unsigned)crc, (unsigned)e->crc);
    return -1;
  }
  return 0;
}

int npz_load_memory(const void *buf, size_t len, const char *name, int fallback_single,
                    npy_array *a, char *err, size_t errlen) {
  memset(a, 0, sizeof *a);
  const unsigned char *b = buf;
  if (b == NULL) {
    seterr(err, errlen, "no data");
    return -1;
  }
  size_t cd_off, cd_size;
  uint64_t count;
  if (find_cd(b, len, &cd_off, &cd_size, &count, err, errlen) != 0) return -1;
  size_t pos = cd_off, cd_end = cd_off + cd_size;
  cd_entry e, hit, first;
  memset(&hit, 0, sizeof hit);
  memset(&first, 0, sizeof first);
  int hits = 0;
  char names[256];
  size_t nn = 0;
  names[0] = '\0';
  for (uint64_t i = 0; i < count; i++) {
    if (read_cd_entry(b, &pos, cd_end, &e, err, errlen) != 0) return -1;
    if (nn < sizeof names - 1)
      nn += (size_t)snprintf(names + nn, sizeof names - nn, "%s%.*s", i ? ", " : "",
                             (int)(e.name_len > 64 ? 64 : e.name_len), (const char *)e.name);
    if (i == 0) first = e;
    if (name == NULL || name_matches(&e, name)) {
      hit = e;
      hits++;
    }
  }
  if (count == 0) {
    seterr(err, errlen, "the archive has no members");
    return -1;
  }
  if (name == NULL && hits != 1) {
    seterr(err, errlen, "%llu members (%s): name one with FILE.npz:NAME",
           (unsigned long long)count, names);
    return -1;
  }
  if (hits == 0 && fallback_single && count == 1) {
    hit = first;
    hits = 1;
  }
  if (hits == 0) {
    seterr(err, errlen, "no member '%s' (members: %s)", name, names);
    return -1;
  }
  if (hits > 1) {
    seterr(err, errlen, "member '%s' appears %d times", name, hits);
    return -1;
  }
  const unsigned char *bytes;
  unsigned char *owned;
  char msg[256];
  if (member_bytes(b, len, &hit, &bytes, &owned, msg, sizeof msg) != 0) {
    seterr(err, errlen, "member '%.*s': %s", (int)(hit.name_len > 64 ? 64 : hit.name_len),
           (const char *)hit.name, msg);
    return -1;
  }
  int rc = npy_load_memory(bytes, (size_t)hit.usize, a, msg, sizeof msg);
  if (rc != 0)
    seterr(err, errlen, "member '%.*s': %s", (int)(hit.name_len > 64 ? 64 : hit.name_len),
           (const char *)hit.name, msg);
  free(owned);
  return rc;
}

int npz_load(const char *path, const char *name, int fallback_single, npy_array *a, char *err,
             size_t errlen) {
  memset(a, 0, sizeof *a);
  FILE *f = fopen(path, "rb");
  if (f == NULL) {
    seterr(err, errlen, "%s: cannot open: %s", path, strerror(errno));
    return -1;
  }
  struct stat st;
  unsigned char *buf = NULL;
  int rc = -1;
  char msg[384];
  if (fstat(fileno(f), &st) != 0 || !S_ISREG(st.st_mode)) {
    seterr(err, errlen, "%s: not a regular file", path);
  } else if ((uint64_t)st.st_size > SIZE_MAX) {
    seterr(err, errlen, "%s: too large", path);
  } else if ((buf = malloc(st.st_size ? (size_t)st.st_size : 1)) == NULL) {
    seterr(err, errlen, "%s: out of memory", path);
  } else if (fread(buf, 1, (size_t)st.st_size, f) != (size_t)st.st_size) {
    seterr(err, errlen, "%s: read error", path);
  } else if (npz_load_memory(buf, (size_t)st.st_size, name, fallback_single, a, msg,
                                     sizeof msg) != 0) {
    seterr(err, errlen, "%s: %s", path, msg);
  } else {
    rc = 0;
  }
  free(buf);
  fclose(f);
  return rc;
}

int npz_save(const char *path, const npz_member *members, int n, char *err, size_t errlen) {
  if (members == NULL || n < 1 || n > NPZ_MAX_MEMBERS) {
    seterr(err, errlen, "%s: nothing to write", path);
    return -1;
  }
  size_t cd_cap = 0;
  for (int i = 0; i < n; i++) {
    size_t nl = members[i].name ? strlen(members[i].name) : 0;
    if (nl == 0 || nl > 200) {
      seterr(err, errlen, "%s: member %d: bad name", path, i);
      return -1;
    }
    for (int j = 0; j < i; j++)
      if (strcmp(members[i].name, members[j].name) == 0) {
        seterr(err, errlen, "%s: member '%s' given twice", path, members[i].name);
        return -1;
      }
    cd_cap += 46 + nl + 4;
  }
  unsigned char *cd = malloc(cd_cap);
  size_t plen = strlen(path);
  char *tmp = malloc(plen + 16);
  if (cd == NULL || tmp == NULL) {
    free(cd);
    free(tmp);
    seterr(err, errlen, "%s: out of memory", path);
    return -1;
  }
  snprintf(tmp, plen + 16, "%s.tmp-XXXXXX", path);
  int fd = mkstemp(tmp);
  FILE *f = fd >= 0 ? fdopen(fd, "wb") : NULL;
  if (f == NULL) {
    seterr(err, errlen, "%s: cannot create: %s", path, strerror(errno));
    if (fd >= 0) {
      close(fd);
      unlink(tmp);
    }
    free(cd);
    free(tmp);
    return -1;
  }
  bool ok = true;
  uint64_t off = 0;
  size_t cdn = 0;
  const uint32_t dos_date = (0u << 9) | (1u << 5) | 1u; /* 1980-01-01 */
  char msg[256] = "";
  for (int i = 0; ok && i < n; i++) {
    const npz_member *m = &members[i];
    unsigned char head[NPY_HEADER_MAX];
    size_t hl = 0, nbytes = 0;
    if (npy_encode_header(m->dtype, m->rank, m->shape, m->data, head, &hl, &nbytes, msg,
                          sizeof msg) != 0) {
      ok = false;
      break;
    }
    uint64_t size = (uint64_t)hl + nbytes;
    if (size >= 0xffffffffu || off + size + 100 >= 0xffffffffu) {
      snprintf(msg, sizeof msg, "member '%s' is too large for a zip without zip64", m->name);
      ok = false;
      break;
    }
    uLong crc = crc32(crc32(0L, Z_NULL, 0), head, (uInt)hl);
    const unsigned char *d = m->data;
    for (size_t left = nbytes; left > 0;) {
      uInt c = left > 0x40000000u ? 0x40000000u : (uInt)left;
      crc = crc32(crc, d, c);
      d += c;
      left -= c;
    }
    char fname[210];
    int fl = snprintf(fname, sizeof fname, "%s.npy", m->name);
    unsigned char lh[30];
    memset(lh, 0, sizeof lh);
    wr32(lh, SIG_LOCAL);
    wr16(lh + 4, 20);
    wr16(lh + 12, dos_date);
    wr32(lh + 14, (uint32_t)crc);
    wr32(lh + 18, (uint32_t)size);
    wr32(lh + 22, (uint32_t)size);
    wr16(lh + 26, (uint32_t)fl);
    ok = fwrite(lh, 1, 30, f) == 30 && fwrite(fname, 1, (size_t)fl, f) == (size_t)fl &&
         fwrite(head, 1, hl, f) == hl && (nbytes == 0 || fwrite(m->data, 1, nbytes, f) == nbytes);
    unsigned char *c = cd + cdn;
    memset(c, 0, 46);
    wr32(c, SIG_CENTRAL);
    wr16(c + 4, 0x0314); /* made by: unix, 2.0 */
    wr16(c + 6, 20);
    wr16(c + 14, dos_date);
    wr32(c + 16, (uint32_t)crc);
    wr32(c + 20, (uint32_t)size);
    wr32(c + 24, (uint32_t)size);
    wr16(c + 28, (uint32_t)fl);
    wr32(c + 38, 0100644u << 16);
    wr32(c + 42, (uint32_t)off);
    memcpy(c + 46, fname, (size_t)fl);
    cdn += 46 + (size_t)fl;
    off += 30 + (uint64_t)fl + size;
    if (!ok) snprintf(msg, sizeof msg, "write error: %s", strerror(errno));
  }
  if (ok) {
    unsigned char eocd[22];
    memset(eocd, 0, sizeof eocd);
    wr32(eocd, SIG_EOCD);
    wr16(eocd + 8, (uint32_t)n);
    wr16(eocd + 10, (uint32_t)n);
    wr32(eocd + 12, (uint32_t)cdn);
    wr32(eocd + 16, (uint32_t)off);
    ok = fwrite(cd, 1, cdn, f) == cdn && fwrite(eocd, 1, 22, f) == 22;
    if (!ok) snprintf(msg, sizeof msg, "write error: %s", strerror(errno));
  }
  if (fclose(f) != 0 && ok) {
    ok = false;
    snprintf(msg, sizeof msg, "write error: %s", strerror(errno));
  }
  if (ok) {
    mode_t um = umask(0);
    umask(um);
    chmod(tmp, 0666 & ~um);
    if (rename(tmp, path) != 0) {
      ok = false;
      snprintf(msg, sizeof msg, "cannot write: %s", strerror(errno));
    }
  }
  if (!ok) {
    unlink(tmp);
    seterr(err, errlen, "%s: %s", path, msg);
  }
  free(cd);
  free(tmp);
  return ok ? 0 : -1;
}

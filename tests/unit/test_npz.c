/* The attn command's .npz reader/writer (tools/npz.c). Archives are built
 * byte by byte here (local headers, central directory, EOCD; deflate through
 * zlib), independently of npz_save: stored and deflated members, zip64 extra
 * fields, name lookup; every truncation and random corruptions fail cleanly
 * with a message and never read outside the buffer (ASan in CI). Also
 * npz_save -> npz_load round trips through real files. */
#define _POSIX_C_SOURCE 200809L

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <zlib.h>

#include "npz.h"
#include "testutil.h"

static void put16(unsigned char *p, uint32_t v) {
  p[0] = (unsigned char)v;
  p[1] = (unsigned char)(v >> 8);
}
static void put32(unsigned char *p, uint32_t v) {
  put16(p, v & 0xffff);
  put16(p + 2, v >> 16);
}
static void put64(unsigned char *p, uint64_t v) {
  put32(p, (uint32_t)v);
  put32(p + 4, (uint32_t)(v >> 32));
}

/* A float32 [2, 3] .npy with values base + i. */
static size_t make_npy(unsigned char *buf, float base) {
  const char *dict = "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }";
  size_t dl = strlen(dict), hl = (10 + dl + 1 + 63) / 64 * 64 - 10;
  memcpy(buf, "\x93NUMPY\x01\x00", 8);
  put16(buf + 8, (uint32_t)hl);
  memset(buf + 10, ' ', hl);
  memcpy(buf + 10, dict, dl);
  buf[10 + hl - 1] = '\n';
  for (int i = 0; i < 6; i++) {
    float f = base + (float)i;
    memcpy(buf + 10 + hl + 4 * i, &f, 4);
  }
  return 10 + hl + 24;
}

typedef struct member {
  const char *name;
  const unsigned char *data;
  size_t len;
  int deflate, zip64;
} member;

/* A zip archive of the members (stored or raw-deflated; zip64 extras in the
 * central directory when asked). Returns its length. */
static size_t build_zip(unsigned char *out, size_t cap, const member *m, int n) {
  size_t pos = 0, offs[8], csz[8];
  unsigned char comp[8][512];
  uint32_t crcs[8];
  assert_true(n <= 8);
  for (int i = 0; i < n; i++) {
    const unsigned char *payload = m[i].data;
    size_t plen = m[i].len;
    if (m[i].deflate) {
      z_stream zs;
      memset(&zs, 0, sizeof zs);
      assert_int_equal(deflateInit2(&zs, 9, Z_DEFLATED, -15, 8, Z_DEFAULT_STRATEGY), Z_OK);
      zs.next_in = (unsigned char *)(uintptr_t)m[i].data;
      zs.avail_in = (uInt)m[i].len;
      zs.next_out = comp[i];
      zs.avail_out = sizeof comp[i];
      assert_int_equal(deflate(&zs, Z_FINISH), Z_STREAM_END);
      plen = zs.total_out;
      deflateEnd(&zs);
      payload = comp[i];
    }
    crcs[i] = (uint32_t)crc32(0, m[i].data, (uInt)m[i].len);
    csz[i] = plen;
    size_t nl = strlen(m[i].name);
    assert_true(pos + 30 + nl + plen <= cap);
    offs[i] = pos;
    unsigned char *h = out + pos;
    memset(h, 0, 30);
    put32(h, 0x04034b50);
    put16(h + 4, 20);
    put16(h + 8, m[i].deflate ? 8 : 0);
    put32(h + 14, crcs[i]);
    put32(h + 18, (uint32_t)plen);
    put32(h + 22, (uint32_t)m[i].len);
    put16(h + 26, (uint32_t)nl);
    memcpy(h + 30, m[i].name, nl);
    memcpy(h + 30 + nl, payload, plen);
    pos += 30 + nl + plen;
  }
  size_t cd = pos;
  for (int i = 0; i < n; i++) {
    size_t nl = strlen(m[i].name), xl = m[i].zip64 ? 4 + 24 : 0;
    assert_true(pos + 46 + nl + xl <= cap);
    unsigned char *c = out + pos;
    memset(c, 0, 46);
    put32(c, 0x02014b50);
    put16(c + 6, 20);
    put16(c + 10, m[i].deflate ? 8 : 0);
    put32(c + 16, crcs[i]);
    put32(c + 20, m[i].zip64 ? 0xffffffffu : (uint32_t)csz[i]);
    put32(c + 24, m[i].zip64 ? 0xffffffffu : (uint32_t)m[i].len);
    put16(c + 28, (uint32_t)nl);
    put16(c + 30, (uint32_t)xl);
    put32(c + 42, m[i].zip64 ? 0xffffffffu : (uint32_t)offs[i]);
    memcpy(c + 46, m[i].name, nl);
    if (m[i].zip64) {
      unsigned char *x = c + 46 + nl;
      put16(x, 1);
      put16(x + 2, 24);
      put64(x + 4, m[i].len);
      put64(x + 12, csz[i]);
      put64(x + 20, offs[i]);
    }
    pos += 46 + nl + xl;
  }
  assert_true(pos + 22 <= cap);
  unsigned char *e = out + pos;
  memset(e, 0, 22);
  put32(e, 0x06054b50);
  put16(e + 8, (uint32_t)n);
  put16(e + 10, (uint32_t)n);
  put32(e + 12, (uint32_t)(pos - cd));
  put32(e + 16, (uint32_t)cd);
  return pos + 22;
}

static void expect_values(const npy_array *a, float base) {
  assert_int_equal(a->h.dtype, NPY_F32);
  assert_int_equal(a->h.rank, 2);
  assert_int_equal(a->h.shape[0], 2);
  assert_int_equal(a->h.shape[1], 3);
  const float *f = a->data;
  for (int i = 0; i < 6; i++) assert_true(f[i] == base + (float)i);
}

static void expect_fail(const unsigned char *zip, size_t len, const char *name, const char *sub) {
  npy_array a;
  char err[256] = "";
  assert_int_equal(npz_load_memory(zip, len, name, 0, &a, err, sizeof err), -1);
  assert_null(a.data);
  if (strstr(err, sub) == NULL) fail_msg("message '%s' lacks '%s'", err, sub);
}

static void stored_deflated_and_zip64_members_load(void **state) {
  (void)state;
  unsigned char n1[256], n2[256], zip[2048];
  size_t l1 = make_npy(n1, 1.0f), l2 = make_npy(n2, 10.0f);
  for (int variant = 0; variant < 4; variant++) {
    member m[2] = {{"q.npy", n1, l1, variant & 1, variant & 2},
                   {"k", n2, l2, !(variant & 1), 0}};
    size_t len = build_zip(zip, sizeof zip, m, 2);
    npy_array a;
    char err[256] = "";
    if (npz_load_memory(zip, len, "q", 0, &a, err, sizeof err) != 0)
      fail_msg("variant %d: %s", variant, err);
    expect_values(&a, 1.0f);
    npy_free(&a);
    assert_int_equal(npz_load_memory(zip, len, "q.npy", 0, &a, err, sizeof err), 0);
    expect_values(&a, 1.0f);
    npy_free(&a);
    assert_int_equal(npz_load_memory(zip, len, "k", 0, &a, err, sizeof err), 0);
    expect_values(&a, 10.0f);
    npy_free(&a);
    expect_fail(zip, len, "v", "no member 'v' (members: q.npy, k)");
    expect_fail(zip, len, NULL, "2 members");
    /* fallback to a sole member only when there is one */
    assert_int_equal(npz_load_memory(zip, len, "v", 1, &a, err, sizeof err), -1);
  }
  member one = {"whatever.npy", n1, l1, 0, 0};
  size_t len = build_zip(zip, sizeof zip, &one, 1);
  npy_array a;
  char err[256];
  assert_int_equal(npz_load_memory(zip, len, NULL, 0, &a, err, sizeof err), 0);
  npy_free(&a);
  assert_int_equal(npz_load_memory(zip, len, "q", 1, &a, err, sizeof err), 0);
  expect_values(&a, 1.0f);
  npy_free(&a);
}

static void broken_archives_say_what_is_wrong(void **state) {
  (void)state;
  unsigned char n1[256], zip[2048], bad[2048];
  size_t l1 = make_npy(n1, 1.0f);
  member m = {"q.npy", n1, l1, 0, 0};
  size_t len = build_zip(zip, sizeof zip, &m, 1);
  size_t cd = len - 22 - 46 - 5;
  expect_fail(zip, 10, "q", "too short");
  memcpy(bad, zip, len);
  bad[len - 22] = 'X';
  expect_fail(bad, len, "q", "end-of-central-directory");
  memcpy(bad, zip, len);
  put32(bad + len - 6, (uint32_t)len);
  expect_fail(bad, len, "q", "past the end");
  memcpy(bad, zip, len);
  put16(bad + len - 22 + 4, 1);
  expect_fail(bad, len, "q", "multi-disk");
  memcpy(bad, zip, len);
  put16(bad + cd + 10, 14);
  expect_fail(bad, len, "q", "compression method 14");
  memcpy(bad, zip, len);
  put16(bad + cd + 8, 1);
  expect_fail(bad, len, "q", "encrypted");
  memcpy(bad, zip, len);
  bad[30 + 5 + 70] ^= 0x40;
  expect_fail(bad, len, "q", "CRC-32");
  memcpy(bad, zip, len);
  put32(bad + cd + 42, 3);
  expect_fail(bad, len, "q", "no local header");
  memcpy(bad, zip, len);
  put32(bad + cd + 20, 5000);
  put32(bad + cd + 24, 5000);
  expect_fail(bad, len, "q", "runs past the end");
  memcpy(bad, zip, len);
  put32(bad + cd + 24, 7);
  expect_fail(bad, len, "q", "stored member");
  memcpy(bad, zip, len);
  put16(bad + len - 22 + 10, 0xffff);
  expect_fail(bad, len, "q", "zip64");
  /* deflated: a size claim beyond deflate's ratio, and a garbage stream */
  member d = {"q.npy", n1, l1, 1, 0};
  size_t dl = build_zip(zip, sizeof zip, &d, 1);
  size_t dcd = dl - 22 - 46 - 5;
  memcpy(bad, zip, dl);
  put32(bad + dcd + 24, 0x7fffffff);
  expect_fail(bad, dl, "q", "claims");
  memcpy(bad, zip, dl);
  memset(bad + 35, 0xff, dcd - 35);
  expect_fail(bad, dl, "q", "corrupt deflated member");
  /* a member that is not a .npy */
  member junk = {"q.npy", (const unsigned char *)"hello world", 11, 0, 0};
  len = build_zip(zip, sizeof zip, &junk, 1);
  expect_fail(zip, len, "q", "member 'q.npy': not a .npy file");
  /* no members */
  len = build_zip(zip, sizeof zip, NULL, 0);
  expect_fail(zip, len, "q", "no members");
}

static void every_truncation_and_corruption_fails_cleanly(void **state) {
  (void)state;
  unsigned char n1[256], n2[256], zip[2048];
  size_t l1 = make_npy(n1, 1.0f), l2 = make_npy(n2, 2.0f);
  member m[2] = {{"q.npy", n1, l1, 1, 1}, {"k.npy", n2, l2, 0, 0}};
  size_t len = build_zip(zip, sizeof zip, m, 2);
  for (size_t cut = 0; cut < len; cut++) {
    unsigned char *copy = malloc(cut ? cut : 1); /* exact size: ASan sees overreads */
    memcpy(copy, zip, cut);
    npy_array a;
    char err[256] = "";
    int rc = npz_load_memory(copy, cut, "q", 0, &a, err, sizeof err);
    if (rc == 0) npy_free(&a);
    else assert_true(err[0] != '\0');
    free(copy);
  }
  uint64_t s = 12345;
  for (int trial = 0; trial < 3000; trial++) {
    unsigned char *copy = malloc(len);
    memcpy(copy, zip, len);
    for (int f = 0; f < 1 + trial % 4; f++) {
      s = s * 6364136223846793005ull + 1442695040888963407ull;
      copy[(s >> 33) % len] = (unsigned char)(s >> 20);
    }
    npy_array a;
    char err[256] = "";
    if (npz_load_memory(copy, len, trial % 2 ? "k" : "q", trial % 3 == 0, &a, err, sizeof err) == 0)
      npy_free(&a);
    else
      assert_true(err[0] != '\0');
    free(copy);
  }
}

static void save_then_load_round_trips(void **state) {
  (void)state;
  char dir[] = "/tmp/attn-test-npz-XXXXXX";
  assert_non_null(mkdtemp(dir));
  char path[256];
  snprintf(path, sizeof path, "%s/x.npz", dir);
  double big[2 * 3 * 4 * 5];
  for (int i = 0; i < 120; i++) big[i] = 0.5 * i - 7.0;
  unsigned char mask[6] = {1, 0, 1, 1, 0, 1};
  const int64_t s1[4] = {2, 3, 4, 5}, s2[2] = {2, 3};
  npz_member mem[2] = {{"out", NPY_F64, 4, s1, big}, {"mask", NPY_U8, 2, s2, mask}};
  char err[256];
  assert_int_equal(npz_save(path, mem, 2, err, sizeof err), 0);
  npy_array a;
  assert_int_equal(npz_load(path, "out", 0, &a, err, sizeof err), 0);
  assert_int_equal(a.h.dtype, NPY_F64);
  assert_int_equal(a.h.rank, 4);
  assert_memory_equal(a.data, big, sizeof big);
  npy_free(&a);
  assert_int_equal(npz_load(path, "mask", 0, &a, err, sizeof err), 0);
  assert_int_equal(a.h.dtype, NPY_U8);
  assert_memory_equal(a.data, mask, sizeof mask);
  npy_free(&a);
  /* bad requests write nothing */
  npz_member dup[2] = {mem[0], mem[0]};
  char path2[300];
  snprintf(path2, sizeof path2, "%s/y.npz", dir);
  assert_int_equal(npz_save(path2, dup, 2, err, sizeof err), -1);
  assert_non_null(strstr(err, "given twice"));
  assert_int_equal(access(path2, F_OK), -1);
  assert_int_equal(npz_save(path2, mem, 0, err, sizeof err), -1);
  npz_member noname = {"", NPY_F64, 4, s1, big};
  assert_int_equal(npz_save(path2, &noname, 1, err, sizeof err), -1);
  assert_int_equal(npz_load("/nonexistent/x.npz", "q", 0, &a, err, sizeof err), -1);
  assert_non_null(strstr(err, "cannot open"));
  assert_true(npz_is_npz_path("a.NPZ") && npz_is_npz_path("b.npz") && !npz_is_npz_path("c.npy") &&
              !npz_is_npz_path("npz") && !npz_is_npz_path(NULL));
  unlink(path);
  rmdir(dir);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(stored_deflated_and_zip64_members_load),
      cmocka_unit_test(broken_archives_say_what_is_wrong),
      cmocka_unit_test(every_truncation_and_corruption_fails_cleanly),
      cmocka_unit_test(save_then_load_round_trips),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}

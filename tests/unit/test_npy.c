/* The attn command's .npy parser (tools/npy.c): headers built byte by byte
 * here, independently of the writer: versions 1/2/3, dict spellings, dtypes
 * and byte orders, and every way a file can be broken — each must fail with
 * the right message, never read outside the buffer (every truncation of a
 * valid file and random corruptions are tried; run under ASan in CI). Also
 * writer → reader round trips through real files. */
#define _POSIX_C_SOURCE 200809L

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "testutil.h"
#include "npy.h"

/* A .npy file in memory: magic, version, header length, dict padded with
 * spaces to a 64-byte boundary plus '\n', then `data_bytes` bytes of data. */
static size_t build(unsigned char *buf, size_t cap, int version, const char *dict,
                    size_t data_bytes) {
  size_t pre = version == 1 ? 10 : 12, dl = strlen(dict);
  size_t total = pre + dl + 1;
  size_t hl = dl + 1 + (64 - total % 64) % 64;
  assert_true(pre + hl + data_bytes <= cap);
  memcpy(buf, "\x93NUMPY", 6);
  buf[6] = (unsigned char)version;
  buf[7] = 0;
  if (version == 1) {
    buf[8] = (unsigned char)(hl & 0xff);
    buf[9] = (unsigned char)(hl >> 8);
  } else {
    for (int i = 0; i < 4; i++) buf[8 + i] = (unsigned char)(hl >> (8 * i));
  }
  memcpy(buf + pre, dict, dl);
  memset(buf + pre + dl, ' ', hl - dl - 1);
  buf[pre + hl - 1] = '\n';
  for (size_t i = 0; i < data_bytes; i++) buf[pre + hl + i] = (unsigned char)(i * 7 + 1);
  return pre + hl + data_bytes;
}

static unsigned char buf[1 << 16];

static void expect_fail(const char *dict, size_t data_bytes, const char *needle) {
  size_t n = build(buf, sizeof buf, 1, dict, data_bytes);
  npy_header h;
  memset(&h, 0xAB, sizeof h);
  npy_header canary = h;
  char err[256] = "";
  assert_int_equal(npy_parse(buf, n, &h, err, sizeof err), -1);
  if (strstr(err, needle) == NULL) fail_msg("dict %s: message '%s' lacks '%s'", dict, err, needle);
  assert_memory_equal(&h, &canary, sizeof h); /* untouched on failure */
}

static void valid_headers_parse(void **state) {
  (void)state;
  struct {
    int version;
    const char *dict;
    npy_dtype dt;
    int32_t rank;
    int64_t shape[4];
  } cases[] = {
      {1, "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3, 4, 5), }", NPY_F32, 4, {2, 3, 4, 5}},
      {2, "{'descr': '<f8', 'fortran_order': False, 'shape': (7,), }", NPY_F64, 1, {7}},
      {3, "{\"shape\": (3, 4), \"fortran_order\": False, \"descr\": \"|u1\"}", NPY_U8, 2, {3, 4}},
      {1, "{'descr':'|b1','fortran_order':False,'shape':(1,1,2)}", NPY_BOOL, 3, {1, 1, 2}},
      {1, "{'descr': '<f4', 'fortran_order': False, 'shape': (), }", NPY_F32, 0, {0}},
      {1, "{'descr': '<f8', 'fortran_order': True, 'shape': (6,), }", NPY_F64, 1, {6}},
      {1, "{'descr': '<f4', 'fortran_order': False, 'shape': (2L, 3L), }", NPY_F32, 2, {2, 3}},
      {1, "  { 'descr' : '<f4' ,\t'fortran_order' : False , 'shape' : ( 2 , 3 ) }  ", NPY_F32, 2, {2, 3}},
      {1, "{'descr': '<f4', 'fortran_order': False, 'shape': (0, 3), }", NPY_F32, 2, {0, 3}},
  };
  for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
    int64_t numel = 1;
    for (int32_t i = 0; i < cases[c].rank; i++) numel *= cases[c].shape[i];
    size_t isz = npy_itemsize(cases[c].dt);
    size_t n = build(buf, sizeof buf, cases[c].version, cases[c].dict, (size_t)numel * isz);
    npy_header h;
    char err[256] = "";
    if (npy_parse(buf, n, &h, err, sizeof err) != 0) fail_msg("%s: %s", cases[c].dict, err);
    assert_int_equal(h.version, cases[c].version);
    assert_int_equal(h.dtype, cases[c].dt);
    assert_int_equal(h.rank, cases[c].rank);
    for (int32_t i = 0; i < h.rank; i++) assert_int_equal(h.shape[i], cases[c].shape[i]);
    assert_int_equal(h.numel, numel);
    assert_int_equal(h.itemsize, isz);
    assert_int_equal(h.data_bytes, (size_t)numel * isz);
    assert_int_equal(h.data_offset, n - (size_t)numel * isz);
    assert_int_equal(h.data_offset % 64, 0);
  }
}

static void byte_order_is_detected(void **state) {
  (void)state;
  const uint16_t one = 1;
  const bool le = *(const unsigned char *)&one == 1;
  const char *dicts[3] = {"{'descr': '<f8', 'fortran_order': False, 'shape': (2,), }",
                          "{'descr': '>f8', 'fortran_order': False, 'shape': (2,), }",
                          "{'descr': '=f8', 'fortran_order': False, 'shape': (2,), }"};
  const bool want_swap[3] = {!le, le, false};
  for (int i = 0; i < 3; i++) {
    size_t n = build(buf, sizeof buf, 1, dicts[i], 16);
    npy_header h;
    char err[256];
    assert_int_equal(npy_parse(buf, n, &h, err, sizeof err), 0);
    assert_int_equal(h.swap, want_swap[i]);
  }
}

static void broken_headers_say_what_is_wrong(void **state) {
  (void)state;
  expect_fail("[1, 2]", 0, "expected '{'");
  expect_fail("{'descr': '<f4', 'fortran_order': False}", 64, "missing key 'shape'");
  expect_fail("{'fortran_order': False, 'shape': (2,)}", 64, "missing key 'descr'");
  expect_fail("{'descr': '<f4', 'shape': (2,)}", 64, "missing key 'fortran_order'");
  expect_fail("{'descr': '<f4', 'fortran_order': False, 'shape': (2,), 'x': 1}", 64, "unexpected key 'x'");
  expect_fail("{'descr': '<f4', 'descr': '<f4', 'fortran_order': False, 'shape': (2,)}", 64, "twice");
  expect_fail("{'descr': '<f4', 'fortran_order': False, 'shape': (2, -3)}", 64, "negative");
  expect_fail("{'descr': '<f4', 'fortran_order': False, 'shape': (2, a)}", 64, "expected an integer");
  expect_fail("{'descr': '<f4', 'fortran_order': False, 'shape': (2 3)}", 64, "expected ',' or ')'");
  expect_fail("{'descr': '<f4', 'fortran_order': False, 'shape': [2, 3]}", 64, "expected '('");
  expect_fail("{'descr': '<f4', 'fortran_order': 0, 'shape': (2,)}", 64, "True or False");
  expect_fail("{'descr': '<f4', 'fortran_order': Falsey, 'shape': (2,)}", 64, "True or False");
  expect_fail("{'descr': '<f4', 'fortran_order': False, 'shape': (2,)} junk", 64, "after the closing");
  expect_fail("{'descr': '<f4', 'fortran_order': False, 'shape': (2,)", 64, "bad header dict");
  expect_fail("{'descr': '<f4, 'fortran_order': False, 'shape': (2,)}", 64, "bad header dict");
  expect_fail("{'descr': <f4, 'fortran_order': False, 'shape': (2,)}", 64, "quoted 'descr'");
  expect_fail("{'descr': 'a\\'b', 'fortran_order': False, 'shape': (2,)}", 64, "unexpected character");
  expect_fail("{'descr': '<f4', 'fortran_order': False, 'shape': (1, 1, 1, 1, 1, 1, 1, 1, 1)}", 64,
              "more than 8");
  expect_fail("{'descr': '<f4', 'fortran_order': False, 'shape': (99999999999999999999,)}", 64,
              "does not fit");
  expect_fail("{'descr': '<f4', 'fortran_order': False, 'shape': (4294967296, 4294967296)}", 64,
              "overflow");
  expect_fail("{'descr': '<f8', 'fortran_order': False, 'shape': (2305843009213693952,)}", 64,
              "overflow");
  expect_fail("{'descr': '<f4', 'fortran_order': True, 'shape': (2, 3)}", 64, "Fortran");
}

static void unsupported_dtypes_are_named(void **state) {
  (void)state;
  struct { const char *descr, *name; } cases[] = {
      {"<i8", "int64"},     {"<i4", "int32"},      {"|i1", "int8"},       {"<u2", "uint16"},
      {"<f16", "float128"}, {"<c8", "complex64"},  {"<c16", "complex128"}, {"|O", "object"},
      {"<U5", "string"},    {"|S3", "string"},     {"<M8[ns]", "datetime"}, {"|V8", "structured"},
      {"<x9", "not supported"}};
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    char dict[128];
    snprintf(dict, sizeof dict, "{'descr': '%s', 'fortran_order': False, 'shape': (2,)}", cases[i].descr);
    expect_fail(dict, 64, cases[i].name);
    expect_fail(dict, 64, "float32 or float64");
  }
  expect_fail("{'descr': [('a', '<f4')], 'fortran_order': False, 'shape': (2,)}", 64, "structured");
}

static void broken_layouts_are_rejected(void **state) {
  (void)state;
  const char *dict = "{'descr': '<f4', 'fortran_order': False, 'shape': (4, 4), }";
  size_t n = build(buf, sizeof buf, 1, dict, 64);
  npy_header h;
  char err[256];
  /* bad magic */
  buf[3] = 'X';
  assert_int_equal(npy_parse(buf, n, &h, err, sizeof err), -1);
  assert_non_null(strstr(err, "bad magic"));
  buf[3] = 'M';
  /* bad version */
  buf[6] = 4;
  assert_int_equal(npy_parse(buf, n, &h, err, sizeof err), -1);
  assert_non_null(strstr(err, "version 4.0"));
  buf[6] = 1;
  buf[7] = 1;
  assert_int_equal(npy_parse(buf, n, &h, err, sizeof err), -1);
  assert_non_null(strstr(err, "version 1.1"));
  buf[7] = 0;
  /* header length past the end */
  unsigned char l0 = buf[8], l1 = buf[9];
  buf[8] = 0xff;
  buf[9] = 0xff;
  assert_int_equal(npy_parse(buf, n, &h, err, sizeof err), -1);
  assert_non_null(strstr(err, "runs past the end"));
  buf[8] = l0;
  buf[9] = l1;
  /* data short by one byte */
  assert_int_equal(npy_parse(buf, n - 1, &h, err, sizeof err), -1);
  assert_non_null(strstr(err, "truncated"));
  assert_non_null(strstr(err, "[4,4]"));
  /* extra trailing bytes are fine (np.load ignores them too) */
  assert_int_equal(npy_parse(buf, n, &h, err, sizeof err), 0);
  /* NULL/empty */
  assert_int_equal(npy_parse(NULL, 0, &h, err, sizeof err), -1);
  assert_int_equal(npy_parse(buf, 0, &h, NULL, 0), -1);
  /* v2 with a 4-byte length that overflows 32-bit arithmetic */
  size_t n2 = build(buf, sizeof buf, 2, dict, 64);
  buf[8] = buf[9] = buf[10] = buf[11] = 0xff;
  assert_int_equal(npy_parse(buf, n2, &h, err, sizeof err), -1);
  assert_non_null(strstr(err, "runs past the end"));
}

/* Every prefix of a valid file fails cleanly (with a message) except the
 * whole file; reads stay inside the buffer (the copy is exactly n bytes on
 * the heap, so ASan catches any overrun). */
static void every_truncation_fails_cleanly(void **state) {
  (void)state;
  for (int version = 1; version <= 3; version++) {
    size_t n = build(buf, sizeof buf, version,
                     "{'descr': '<f8', 'fortran_order': False, 'shape': (3, 5), }", 120);
    for (size_t len = 0; len <= n; len++) {
      unsigned char *copy = malloc(len ? len : 1);
      assert_non_null(copy);
      memcpy(copy, buf, len);
      npy_header h;
      char err[256] = "";
      int rc = npy_parse(copy, len, &h, err, sizeof err);
      if (len == n) {
        assert_int_equal(rc, 0);
      } else {
        assert_int_equal(rc, -1);
        assert_true(err[0] != '\0');
      }
      free(copy);
    }
  }
}

/* Random corruptions of the header never crash and either parse to a
 * consistent header or fail with a message. */
static void random_corruptions_never_crash(void **state) {
  (void)state;
  uint64_t s = 12345;
  size_t n = build(buf, sizeof buf, 1,
                   "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3, 4), }", 96);
  unsigned char *copy = malloc(n);
  assert_non_null(copy);
  for (int iter = 0; iter < 20000; iter++) {
    memcpy(copy, buf, n);
    int flips = 1 + iter % 4;
    for (int f = 0; f < flips; f++) {
      s = s * 6364136223846793005ull + 1442695040888963407ull;
      size_t pos = (size_t)(s >> 33) % 80; /* magic .. header */
      copy[pos] = (unsigned char)(s >> 17);
    }
    s = s * 6364136223846793005ull + 1442695040888963407ull;
    size_t len = (iter % 3 == 0) ? (size_t)(s >> 33) % (n + 1) : n;
    npy_header h;
    char err[256] = "";
    if (npy_parse(copy, len, &h, err, sizeof err) == 0) {
      assert_true(h.data_offset + h.data_bytes <= len);
      assert_true(h.rank >= 0 && h.rank <= NPY_MAX_RANK);
    } else {
      assert_true(err[0] != '\0');
    }
  }
  free(copy);
}

static void save_then_load_round_trips(void **state) {
  (void)state;
  char path[] = "/tmp/attn_test_npy_XXXXXX";
  int fd = mkstemp(path);
  assert_true(fd >= 0);
  close(fd);
  char err[256];
  /* f32 rank 4, f64 rank 1, u8 rank 3, bool scalar-ish, f64 rank 0 */
  float f[2 * 3 * 4 * 5];
  for (int i = 0; i < 120; i++) f[i] = (float)i * 0.25f - 7.0f;
  const int64_t s4[4] = {2, 3, 4, 5};
  assert_int_equal(npy_save(path, NPY_F32, 4, s4, f, err, sizeof err), 0);
  npy_array a;
  assert_int_equal(npy_load(path, &a, err, sizeof err), 0);
  assert_int_equal(a.h.dtype, NPY_F32);
  assert_int_equal(a.h.rank, 4);
  for (int i = 0; i < 4; i++) assert_int_equal(a.h.shape[i], s4[i]);
  assert_memory_equal(a.data, f, sizeof f);
  assert_int_equal((uintptr_t)a.data % 64, 0);
  assert_int_equal(a.h.data_offset % 64, 0);
  npy_free(&a);
  npy_free(&a); /* safe twice */

  double d[7] = {1, -2, 3.5, 1e300, -0.0, 5e-324, 42};
  const int64_t s1[1] = {7};
  assert_int_equal(npy_save(path, NPY_F64, 1, s1, d, err, sizeof err), 0);
  assert_int_equal(npy_load(path, &a, err, sizeof err), 0);
  assert_int_equal(a.h.rank, 1);
  assert_memory_equal(a.data, d, sizeof d);
  npy_free(&a);

  uint8_t m[12] = {0, 1, 2, 255, 0, 0, 1, 1, 0, 1, 0, 1};
  const int64_t s3[3] = {1, 3, 4};
  assert_int_equal(npy_save(path, NPY_BOOL, 3, s3, m, err, sizeof err), 0);
  assert_int_equal(npy_load(path, &a, err, sizeof err), 0);
  assert_int_equal(a.h.dtype, NPY_BOOL);
  for (int i = 0; i < 12; i++) assert_int_equal(((uint8_t *)a.data)[i], m[i] != 0);
  npy_free(&a);

  double scalar = 3.25;
  assert_int_equal(npy_save(path, NPY_F64, 0, NULL, &scalar, err, sizeof err), 0);
  assert_int_equal(npy_load(path, &a, err, sizeof err), 0);
  assert_int_equal(a.h.rank, 0);
  assert_int_equal(a.h.numel, 1);
  assert_true(*(double *)a.data == 3.25);
  npy_free(&a);

  /* bad writer input: nothing written, message */
  const int64_t neg[1] = {-1};
  assert_int_equal(npy_save(path, NPY_F32, 1, neg, f, err, sizeof err), -1);
  assert_int_equal(npy_save(path, NPY_INVALID, 1, s1, f, err, sizeof err), -1);
  assert_int_equal(npy_save("/nonexistent-dir/x.npy", NPY_F32, 1, s1, f, err, sizeof err), -1);
  assert_non_null(strstr(err, "/nonexistent-dir/x.npy"));
  unlink(path);
}

static void load_converts_big_endian(void **state) {
  (void)state;
  char path[] = "/tmp/attn_test_npy_be_XXXXXX";
  int fd = mkstemp(path);
  assert_true(fd >= 0);
  size_t n = build(buf, sizeof buf, 1, "{'descr': '>f4', 'fortran_order': False, 'shape': (2,), }", 0);
  const unsigned char be[8] = {0x3f, 0x80, 0x00, 0x00, 0xc0, 0x40, 0x00, 0x00}; /* 1.0, -3.0 */
  memcpy(buf + n, be, 8);
  assert_int_equal(write(fd, buf, n + 8), (ssize_t)(n + 8));
  close(fd);
  npy_array a;
  char err[256];
  assert_int_equal(npy_load(path, &a, err, sizeof err), 0);
  const float *p = a.data;
  assert_true(p[0] == 1.0f && p[1] == -3.0f);
  assert_false(a.h.swap);
  npy_free(&a);
  unlink(path);
}

static void load_names_the_file(void **state) {
  (void)state;
  npy_array a;
  char err[256];
  assert_int_equal(npy_load("/nonexistent/q.npy", &a, err, sizeof err), -1);
  assert_non_null(strstr(err, "/nonexistent/q.npy"));
  assert_null(a.data);
  assert_int_equal(npy_load("/tmp", &a, err, sizeof err), -1);
  assert_non_null(strstr(err, "not a regular file"));
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(valid_headers_parse),
      cmocka_unit_test(byte_order_is_detected),
      cmocka_unit_test(broken_headers_say_what_is_wrong),
      cmocka_unit_test(unsupported_dtypes_are_named),
      cmocka_unit_test(broken_layouts_are_rejected),
      cmocka_unit_test(every_truncation_fails_cleanly),
      cmocka_unit_test(random_corruptions_never_crash),
      cmocka_unit_test(save_then_load_round_trips),
      cmocka_unit_test(load_converts_big_endian),
      cmocka_unit_test(load_names_the_file),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}

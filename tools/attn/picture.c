/* Heat maps: an RGB canvas, a 5×7 bitmap font for the captions, a
 * perceptual colour ramp, and libpng for the file (no compression code of
 * our own). */
#include "picture.h"

#include <errno.h>
#include <math.h>
#include <png.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "attn/attn.h"

static void seterr(char *err, size_t errlen, const char *fmt, ...) {
  if (err == NULL || errlen == 0) return;
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(err, errlen, fmt, ap);
  va_end(ap);
}

/* ---- canvas ------------------------------------------------------------------ */

typedef struct canvas {
  int w, h;
  unsigned char *rgb;
} canvas;

static void fill_rect(canvas *c, int x0, int y0, int w, int h, const unsigned char col[3]) {
  for (int y = y0; y < y0 + h; y++) {
    if (y < 0 || y >= c->h) continue;
    for (int x = x0; x < x0 + w; x++) {
      if (x < 0 || x >= c->w) continue;
      unsigned char *p = c->rgb + 3 * ((size_t)y * (size_t)c->w + (size_t)x);
      p[0] = col[0];
      p[1] = col[1];
      p[2] = col[2];
    }
  }
}

/* ---- 5×7 font: 7 rows per glyph, bit 4 = leftmost column ----------------------- */

typedef struct glyph {
  char ch;
  unsigned char rows[7];
} glyph;

static const glyph font[] = {
    {'A', {0x0E, 0x11, 0x11, 0x1F, 0x11, 0x11, 0x11}}, {'B', {0x1E, 0x11, 0x11, 0x1E, 0x11, 0x11, 0x1E}},
    {'C', {0x0E, 0x11, 0x10, 0x10, 0x10, 0x11, 0x0E}}, {'D', {0x1E, 0x11, 0x11, 0x11, 0x11, 0x11, 0x1E}},
    {'E', {0x1F, 0x10, 0x10, 0x1E, 0x10, 0x10, 0x1F}}, {'F', {0x1F, 0x10, 0x10, 0x1E, 0x10, 0x10, 0x10}},
    {'G', {0x0E, 0x11, 0x10, 0x17, 0x11, 0x11, 0x0F}}, {'H', {0x11, 0x11, 0x11, 0x1F, 0x11, 0x11, 0x11}},
    {'I', {0x0E, 0x04, 0x04, 0x04, 0x04, 0x04, 0x0E}}, {'J', {0x07, 0x02, 0x02, 0x02, 0x02, 0x12, 0x0C}},
    {'K', {0x11, 0x12, 0x14, 0x18, 0x14, 0x12, 0x11}}, {'L', {0x10, 0x10, 0x10, 0x10, 0x10, 0x10, 0x1F}},
    {'M', {0x11, 0x1B, 0x15, 0x15, 0x11, 0x11, 0x11}}, {'N', {0x11, 0x11, 0x19, 0x15, 0x13, 0x11, 0x11}},
    {'O', {0x0E, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0E}}, {'P', {0x1E, 0x11, 0x11, 0x1E, 0x10, 0x10, 0x10}},
    {'Q', {0x0E, 0x11, 0x11, 0x11, 0x15, 0x12, 0x0D}}, {'R', {0x1E, 0x11, 0x11, 0x1E, 0x14, 0x12, 0x11}},
    {'S', {0x0F, 0x10, 0x10, 0x0E, 0x01, 0x01, 0x1E}}, {'T', {0x1F, 0x04, 0x04, 0x04, 0x04, 0x04, 0x04}},
    {'U', {0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0E}}, {'V', {0x11, 0x11, 0x11, 0x11, 0x11, 0x0A, 0x04}},
    {'W', {0x11, 0x11, 0x11, 0x15, 0x15, 0x15, 0x0A}}, {'X', {0x11, 0x11, 0x0A, 0x04, 0x0A, 0x11, 0x11}},
    {'Y', {0x11, 0x11, 0x0A, 0x04, 0x04, 0x04, 0x04}}, {'Z', {0x1F, 0x01, 0x02, 0x04, 0x08, 0x10, 0x1F}},
    {'0', {0x0E, 0x11, 0x13, 0x15, 0x19, 0x11, 0x0E}}, {'1', {0x04, 0x0C, 0x04, 0x04, 0x04, 0x04, 0x0E}},
    {'2', {0x0E, 0x11, 0x01, 0x02, 0x04, 0x08, 0x1F}}, {'3', {0x1F, 0x02, 0x04, 0x02, 0x01, 0x11, 0x0E}},
    {'4', {0x02, 0x06, 0x0A, 0x12, 0x1F, 0x02, 0x02}}, {'5', {0x1F, 0x10, 0x1E, 0x01, 0x01, 0x11, 0x0E}},
    {'6', {0x06, 0x08, 0x10, 0x1E, 0x11, 0x11, 0x0E}}, {'7', {0x1F, 0x01, 0x02, 0x04, 0x08, 0x08, 0x08}},
    {'8', {0x0E, 0x11, 0x11, 0x0E, 0x11, 0x11, 0x0E}}, {'9', {0x0E, 0x11, 0x11, 0x0F, 0x01, 0x02, 0x0C}},
    {' ', {0, 0, 0, 0, 0, 0, 0}},                      {'-', {0x00, 0x00, 0x00, 0x1F, 0x00, 0x00, 0x00}},
    {'_', {0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x1F}}, {'.', {0x00, 0x00, 0x00, 0x00, 0x00, 0x0C, 0x0C}},
    {',', {0x00, 0x00, 0x00, 0x00, 0x0C, 0x04, 0x08}}, {':', {0x00, 0x0C, 0x0C, 0x00, 0x0C, 0x0C, 0x00}},
    {'=', {0x00, 0x00, 0x1F, 0x00, 0x1F, 0x00, 0x00}}, {'+', {0x00, 0x04, 0x04, 0x1F, 0x04, 0x04, 0x00}},
    {'/', {0x00, 0x01, 0x02, 0x04, 0x08, 0x10, 0x00}}, {'(', {0x02, 0x04, 0x08, 0x08, 0x08, 0x04, 0x02}},
    {')', {0x08, 0x04, 0x02, 0x02, 0x02, 0x04, 0x08}}, {'|', {0x04, 0x04, 0x04, 0x04, 0x04, 0x04, 0x04}},
    {'>', {0x08, 0x04, 0x02, 0x01, 0x02, 0x04, 0x08}}, {'<', {0x02, 0x04, 0x08, 0x10, 0x08, 0x04, 0x02}},
    {'[', {0x0E, 0x08, 0x08, 0x08, 0x08, 0x08, 0x0E}}, {']', {0x0E, 0x02, 0x02, 0x02, 0x02, 0x02, 0x0E}},
    {'%', {0x18, 0x19, 0x02, 0x04, 0x08, 0x13, 0x03}}, {'*', {0x00, 0x04, 0x15, 0x0E, 0x15, 0x04, 0x00}},
    {'#', {0x0A, 0x0A, 0x1F, 0x0A, 0x1F, 0x0A, 0x0A}}, {'\'', {0x04, 0x04, 0x08, 0x00, 0x00, 0x00, 0x00}},
    {'?', {0x0E, 0x11, 0x01, 0x02, 0x04, 0x00, 0x04}}, {'!', {0x04, 0x04, 0x04, 0x04, 0x04, 0x00, 0x04}},
};

static const glyph *find_glyph(char ch) {
  if (ch >= 'a' && ch <= 'z') ch = (char)(ch - 'a' + 'A'); /* capitals only */
  for (size_t i = 0; i < sizeof font / sizeof font[0]; i++)
    if (font[i].ch == ch) return &font[i];
  return &font[sizeof font / sizeof font[0] - 2]; /* '?' */
}

/* Draw text with its top-left at (x, y), each font pixel scale×scale. */
static void draw_text(canvas *c, int x, int y, int scale, const char *s, const unsigned char col[3]) {
  for (; *s; s++, x += 6 * scale) {
    const glyph *g = find_glyph(*s);
    for (int r = 0; r < 7; r++)
      for (int b = 0; b < 5; b++)
        if (g->rows[r] & (0x10 >> b)) fill_rect(c, x + b * scale, y + r * scale, scale, scale, col);
  }
}

static int text_width(const char *s, int scale) { return (int)strlen(s) * 6 * scale; }

/* ---- colour ramps --------------------------------------------------------------- */

/* viridis sampled at 10 points (matplotlib's), interpolated linearly */
static const unsigned char viridis[10][3] = {
    {68, 1, 84},    {72, 40, 120},  {62, 74, 137},  {49, 104, 142}, {38, 130, 142},
    {31, 158, 137}, {53, 183, 121}, {109, 205, 89}, {180, 222, 44}, {253, 231, 37}};
/* blue – light grey – red for signed values (coolwarm's ends) */
static const unsigned char diverging[3][3] = {{59, 76, 192}, {221, 221, 221}, {180, 4, 38}};
static const unsigned char masked_grey[3] = {40, 40, 40};

static void ramp(const unsigned char (*pts)[3], int npts, double t, unsigned char out[3]) {
  if (!(t > 0.0)) t = 0.0;
  if (t > 1.0) t = 1.0;
  double x = t * (npts - 1);
  int i = (int)x;
  if (i >= npts - 1) i = npts - 2;
  double f = x - i;
  for (int ch = 0; ch < 3; ch++)
    out[ch] = (unsigned char)lround((1.0 - f) * pts[i][ch] + f * pts[i + 1][ch]);
}

/* ---- PNG through libpng ------------------------------------------------------------ */

static void png_error_cb(png_structp png, png_const_charp msg) {
  char *buf = png_get_error_ptr(png);
  if (buf != NULL) snprintf(buf, 200, "%s", msg);
  png_longjmp(png, 1);
}

static void png_warn_cb(png_structp png, png_const_charp msg) {
  (void)png;
  (void)msg;
}

static int write_png(const char *path, const canvas *c, const char *title, const char *subtitle,
                     char *err, size_t errlen) {
  FILE *f = fopen(path, "wb");
  if (f == NULL) {
    seterr(err, errlen, "%s: cannot create: %s", path, strerror(errno));
    return -1;
  }
  char pngmsg[200] = "";
  png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, pngmsg, png_error_cb, png_warn_cb);
  png_infop info = png ? png_create_info_struct(png) : NULL;
  png_bytep *volatile rows = NULL;
  if (png == NULL || info == NULL) {
    png_destroy_write_struct(&png, NULL);
    fclose(f);
    remove(path);
    seterr(err, errlen, "%s: libpng could not start", path);
    return -1;
  }
  if (setjmp(png_jmpbuf(png))) {
    png_destroy_write_struct(&png, &info);
    free(rows);
    fclose(f);
    remove(path);
    seterr(err, errlen, "%s: libpng: %s", path, pngmsg);
    return -1;
  }
  png_init_io(png, f);
  png_set_IHDR(png, info, (png_uint_32)c->w, (png_uint_32)c->h, 8, PNG_COLOR_TYPE_RGB,
               PNG_INTERLACE_NONE, PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
  char software[64];
  snprintf(software, sizeof software, "attn demo (libattn %s)", attn_version_string());
  png_text text[3];
  memset(text, 0, sizeof text);
  text[0].compression = PNG_TEXT_COMPRESSION_NONE;
  text[0].key = (png_charp) "Title";
  text[0].text = (png_charp)title;
  text[1].compression = PNG_TEXT_COMPRESSION_NONE;
  text[1].key = (png_charp) "Description";
  text[1].text = (png_charp)subtitle;
  text[2].compression = PNG_TEXT_COMPRESSION_NONE;
  text[2].key = (png_charp) "Software";
  text[2].text = software;
  png_set_text(png, info, text, 3);
  png_write_info(png, info);
  rows = malloc(sizeof(png_bytep) * (size_t)c->h);
  if (rows == NULL) png_error(png, "out of memory");
  for (int y = 0; y < c->h; y++) rows[y] = c->rgb + (size_t)y * 3 * (size_t)c->w;
  png_write_image(png, rows);
  png_write_end(png, NULL);
  png_destroy_write_struct(&png, &info);
  free(rows);
  if (fclose(f) != 0) {
    remove(path);
    seterr(err, errlen, "%s: write error: %s", path, strerror(errno));
    return -1;
  }
  return 0;
}

int picture_heatmap_png(const char *path, const char *title, const char *subtitle,
                        const double *vals, int64_t rows, int64_t cols, char *err, size_t errlen) {
  return picture_heatmap_bar_png(path, title, subtitle, vals, rows, cols, NULL, NULL, err, errlen);
}

int picture_heatmap_bar_png(const char *path, const char *title, const char *subtitle,
                            const double *vals, int64_t rows, int64_t cols, const double *bar,
                            const char *bar_label, char *err, size_t errlen) {
  if (rows < 1 || cols < 1 || rows > 4096 || cols > 4096) {
    seterr(err, errlen, "%s: picture size %lldx%lld out of range", path, (long long)rows,
           (long long)cols);
    return -1;
  }
  /* Cells of `cell` pixels so the matrix is about 384 px on its long side. */
  int64_t longest = rows > cols ? rows : cols;
  int cell = (int)(384 / longest);
  if (cell < 1) cell = 1;
  const int margin = 16, title_h = 14, sub_h = 7, gap = 8;
  int mw = (int)cols * cell, mh = (int)rows * cell;
  int bar_w = 14;
  int w = margin + mw + 12 + bar_w + 36;
  int tw = text_width(title, 2) + 2 * margin, sw = text_width(subtitle, 1) + 2 * margin;
  if (w < tw) w = tw;
  if (w < sw) w = sw;
  int top = margin + title_h + 6 + sub_h + gap + 7 + 4; /* title, subtitle, "key ->" */
  const int bar_h = 48, bar_gap = 8 + 7 + 4; /* the bar strip under "QUERY I DOWN" */
  int h = top + mh + 4 + 7 + margin + (bar ? bar_gap + bar_h + 4 + 7 : 0);
  canvas c = {w, h, calloc((size_t)w * (size_t)h, 3)};
  if (c.rgb == NULL) {
    seterr(err, errlen, "%s: out of memory", path);
    return -1;
  }
  const unsigned char white[3] = {255, 255, 255}, ink[3] = {20, 20, 20}, soft[3] = {90, 90, 90};
  fill_rect(&c, 0, 0, w, h, white);
  draw_text(&c, margin, margin, 2, title, ink);
  draw_text(&c, margin, margin + title_h + 6, 1, subtitle, soft);
  int mx = margin, my = top;
  draw_text(&c, mx, my - 11, 1, "KEY J ->", soft);

  bool signed_vals = false;
  for (int64_t i = 0; i < rows * cols; i++)
    if (vals[i] < 0.0) signed_vals = true;
  for (int64_t i = 0; i < rows; i++) {
    double m = 0.0;
    for (int64_t j = 0; j < cols; j++) {
      double a = fabs(vals[i * cols + j]);
      if (isfinite(a) && a > m) m = a;
    }
    for (int64_t j = 0; j < cols; j++) {
      double v = vals[i * cols + j];
      unsigned char col[3];
      if (v == 0.0 || !isfinite(v) || m == 0.0) {
        memcpy(col, masked_grey, 3);
      } else if (signed_vals) {
        ramp(diverging, 3, 0.5 + 0.5 * v / m, col);
      } else {
        ramp(viridis, 10, v / m, col);
      }
      fill_rect(&c, mx + (int)j * cell, my + (int)i * cell, cell, cell, col);
    }
  }
  draw_text(&c, mx, my + mh + 4, 1, "QUERY I DOWN", soft);
  if (bar != NULL) { /* one bar per key column, heights scaled to the largest */
    const int by = my + mh + bar_gap;
    double bm = 0.0;
    for (int64_t j = 0; j < cols; j++)
      if (isfinite(bar[j]) && bar[j] > bm) bm = bar[j];
    const unsigned char frame[3] = {200, 200, 200}, fillc[3] = {68, 1, 84};
    fill_rect(&c, mx, by + bar_h, mw, 1, frame);
    for (int64_t j = 0; j < cols && bm > 0.0; j++) {
      int hh = isfinite(bar[j]) && bar[j] > 0 ? (int)lround(bar[j] / bm * bar_h) : 0;
      fill_rect(&c, mx + (int)j * cell, by + bar_h - hh, cell > 1 ? cell - 1 : 1, hh, fillc);
    }
    draw_text(&c, mx, by + bar_h + 4, 1, bar_label ? bar_label : "", soft);
  }

  /* colour bar: top = row max (1), bottom = 0 or -max */
  int bx = mx + mw + 12;
  for (int y = 0; y < mh; y++) {
    double t = 1.0 - (double)y / (mh > 1 ? mh - 1 : 1);
    unsigned char col[3];
    if (signed_vals) ramp(diverging, 3, t, col);
    else ramp(viridis, 10, t, col);
    fill_rect(&c, bx, my + y, bar_w, 1, col);
  }
  draw_text(&c, bx + bar_w + 3, my, 1, "1", ink);
  draw_text(&c, bx + bar_w + 3, my + mh - 7, 1, signed_vals ? "-1" : "0", ink);

  int rc = write_png(path, &c, title, subtitle, err, errlen);
  free(c.rgb);
  return rc;
}

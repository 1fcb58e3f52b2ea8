/* Heat-map pictures of attention weights, written as PNG through libpng. */
#ifndef ATTN_TOOLS_PICTURE_H
#define ATTN_TOOLS_PICTURE_H

#include <stddef.h>
#include <stdint.h>

/* Write a rows×cols matrix (row-major) as a labelled PNG heat map.
 *  title    first caption line (the file name, drawn large) and PNG "Title"
 *  subtitle second caption line (what is shown) and PNG "Description"
 * Each row is scaled by its largest |value| (so every query's pattern shows,
 * whatever its spread); non-negative matrices use a viridis ramp, matrices
 * with negative entries a blue–white–red ramp; exact zeros (masked keys) are
 * drawn dark grey. Returns 0, or -1 with a message in err. */
int picture_heatmap_png(const char *path, const char *title, const char *subtitle,
                        const double *vals, int64_t rows, int64_t cols, char *err, size_t errlen);

/* The same with a bar chart of bar[cols] (non-negative, e.g. the per-key
 * attention mass) under the matrix, one bar per key column, scaled to its
 * largest value; bar NULL: none. */
int picture_heatmap_bar_png(const char *path, const char *title, const char *subtitle,
                            const double *vals, int64_t rows, int64_t cols, const double *bar,
                            const char *bar_label, char *err, size_t errlen);

#endif

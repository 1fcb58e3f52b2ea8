/* Templates over the compute type: the one way libattn writes a loop once
 * for f32 and f64.
 *
 * A template is a file (name_impl.inc) written in terms of
 *   T             the compute type (float, double)
 *   FN(name)      name_f32 / name_f64: the instance's function names
 *   GEMM          attn_sgemm / attn_dgemm
 *   VMAX(x, n), VEXPSUM(x, n, m), VTANH(x, n)   vector math (kernels/vmath.h)
 *   MASK_APPLY    attn_mask_apply_f32 / _f64
 *   EXP, LOG, TANH  scalar libm
 *   T_DTYPE       ATTN_DTYPE_F32 / ATTN_DTYPE_F64
 *   T_BITS        32 / 64, for #if around code only one type has (SIMD)
 * and instantiated for both types by two lines:
 *
 *   #define ATTN_TMPL_FILE "kernels/exact_impl.inc"
 *   #include "core/tmpl.h"
 *
 * Storage types that are not compute types (bf16, f16, int8) are rows of the
 * dtype traits table (core/internal.h) with converters into T's registers or
 * scratch; the template's loops never change for them. */
#ifndef ATTN_TMPL_FILE
#error "define ATTN_TMPL_FILE before including core/tmpl.h"
#endif

#define ATTN_TMPL_CAT2_(a, b) a##_##b
#define ATTN_TMPL_CAT_(a, b) ATTN_TMPL_CAT2_(a, b)
#define FN(name) ATTN_TMPL_CAT_(name, SUFFIX)

/* ---- f32 ---- */
#define T float
#define SUFFIX f32
#define T_DTYPE ATTN_DTYPE_F32
#define T_BITS 32
#define GEMM attn_sgemm
#define VMAX(x, n) attn_vmath_fast()->max_f32((x), (n))
#define VEXPSUM(x, n, m) attn_vmath_fast()->exp_sub_sum_f32((x), (n), (m))
#define VTANH(x, n) attn_vmath_fast()->tanh_f32((x), (n))
#define MASK_APPLY attn_mask_apply_f32
#define EXP expf
#define LOG logf
#define TANH tanhf
#include ATTN_TMPL_FILE
#undef T
#undef SUFFIX
#undef T_DTYPE
#undef T_BITS
#undef GEMM
#undef VMAX
#undef VEXPSUM
#undef VTANH
#undef MASK_APPLY
#undef EXP
#undef LOG
#undef TANH

/* ---- f64 ---- */
#define T double
#define SUFFIX f64
#define T_DTYPE ATTN_DTYPE_F64
#define T_BITS 64
#define GEMM attn_dgemm
#define VMAX(x, n) attn_max_f64((x), (n))
#define VEXPSUM(x, n, m) attn_exp_sub_sum_f64((x), (n), (m))
#define VTANH(x, n) attn_tanh_f64((x), (n))
#define MASK_APPLY attn_mask_apply_f64
#define EXP exp
#define LOG log
#define TANH tanh
#include ATTN_TMPL_FILE
#undef T
#undef SUFFIX
#undef T_DTYPE
#undef T_BITS
#undef GEMM
#undef VMAX
#undef VEXPSUM
#undef VTANH
#undef MASK_APPLY
#undef EXP
#undef LOG
#undef TANH

#undef FN
#undef ATTN_TMPL_CAT_
#undef ATTN_TMPL_CAT2_
#undef ATTN_TMPL_FILE

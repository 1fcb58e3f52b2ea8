//! Raw declarations of libattn's C API (`include/attn/attn.h`, `attn/approx.h`,
//! `attn/backward.h`, `attn/heads.h`, `attn/kvcache.h`, `attn/paged.h`),
//! written by hand (no bindgen). Every function is `unsafe`; use the `attn`
//! crate for a safe API. A new C function is one new line in the `extern` block.
#![allow(non_camel_case_types)]

use std::os::raw::{c_char, c_int, c_void};

/// Opaque `attn_context`.
#[repr(C)]
pub struct attn_context {
    _private: [u8; 0],
}
/// Opaque `attn_tensor`.
#[repr(C)]
pub struct attn_tensor {
    _private: [u8; 0],
}
/// Opaque `attn_desc`.
#[repr(C)]
pub struct attn_desc {
    _private: [u8; 0],
}
/// Opaque `attn_plan`.
#[repr(C)]
pub struct attn_plan {
    _private: [u8; 0],
}

/// Opaque `attn_backward_plan` (backward.h).
#[repr(C)]
pub struct attn_backward_plan {
    _private: [u8; 0],
}

/// Opaque `attn_mha` (heads.h).
#[repr(C)]
pub struct attn_mha {
    _private: [u8; 0],
}
/// Opaque `attn_mha_plan` (heads.h).
#[repr(C)]
pub struct attn_mha_plan {
    _private: [u8; 0],
}
/// Opaque `attn_mha_backward_plan` (heads.h): training steps of an `attn_mha`.
#[repr(C)]
pub struct attn_mha_backward_plan {
    _private: [u8; 0],
}
/// Opaque `attn_kvcache` (kvcache.h).
#[repr(C)]
pub struct attn_kvcache {
    _private: [u8; 0],
}
/// Opaque `attn_kvcache_plan` (kvcache.h).
#[repr(C)]
pub struct attn_kvcache_plan {
    _private: [u8; 0],
}
/// Opaque `attn_paged_cache` (paged.h).
#[repr(C)]
pub struct attn_paged_cache {
    _private: [u8; 0],
}
/// Opaque `attn_paged_plan` (paged.h).
#[repr(C)]
pub struct attn_paged_plan {
    _private: [u8; 0],
}

/// `attn_status` (C enum: int-sized). Values are ABI.
pub type attn_status = c_int;
pub const ATTN_OK: attn_status = 0;
pub const ATTN_ERR_NULL_ARG: attn_status = 1;
pub const ATTN_ERR_INVALID_ARG: attn_status = 2;
pub const ATTN_ERR_SHAPE: attn_status = 3;
pub const ATTN_ERR_DTYPE: attn_status = 4;
pub const ATTN_ERR_LAYOUT: attn_status = 5;
pub const ATTN_ERR_OVERFLOW: attn_status = 6;
pub const ATTN_ERR_NO_MEMORY: attn_status = 7;
pub const ATTN_ERR_UNSUPPORTED: attn_status = 8;
pub const ATTN_ERR_CAPACITY: attn_status = 9;
pub const ATTN_ERR_MISMATCH: attn_status = 10;
pub const ATTN_ERR_THREAD: attn_status = 11;
pub const ATTN_ERR_INTERNAL: attn_status = 12;

pub type attn_dtype = c_int;
pub const ATTN_DTYPE_F32: attn_dtype = 1;
pub const ATTN_DTYPE_F64: attn_dtype = 2;
pub const ATTN_DTYPE_U8: attn_dtype = 3;
pub const ATTN_DTYPE_BF16: attn_dtype = 4;
pub const ATTN_DTYPE_F16: attn_dtype = 5;

pub type attn_variant = c_int;
pub const ATTN_VARIANT_EXACT: attn_variant = 0;
pub const ATTN_VARIANT_SWIN: attn_variant = 1;
pub const ATTN_VARIANT_LONGFORMER: attn_variant = 2;
pub const ATTN_VARIANT_BIGBIRD: attn_variant = 3;
pub const ATTN_VARIANT_BLOCK_SPARSE: attn_variant = 4;
pub const ATTN_VARIANT_LINEAR_ELU: attn_variant = 5;
pub const ATTN_VARIANT_PERFORMER: attn_variant = 6;
pub const ATTN_VARIANT_LINFORMER: attn_variant = 7;

pub type attn_score = c_int;
pub const ATTN_SCORE_SCALED_DOT: attn_score = 0;
pub const ATTN_SCORE_DOT: attn_score = 1;
pub const ATTN_SCORE_GENERAL: attn_score = 2;
pub const ATTN_SCORE_ADDITIVE: attn_score = 3;

pub type attn_causal = c_int;
pub const ATTN_CAUSAL_NONE: attn_causal = 0;
pub const ATTN_CAUSAL_TOP_LEFT: attn_causal = 1;
pub const ATTN_CAUSAL_BOTTOM_RIGHT: attn_causal = 2;

pub const ATTN_MAX_RANK: i32 = 4;
pub const ATTN_WINDOW_UNBOUNDED: i64 = i64::MAX;

pub type attn_kvcache_mode = c_int;
pub const ATTN_KVCACHE_LINEAR: attn_kvcache_mode = 0;
pub const ATTN_KVCACHE_RING: attn_kvcache_mode = 1;

pub type attn_kvcache_storage = c_int;
pub const ATTN_KVCACHE_STORE_NATIVE: attn_kvcache_storage = 0;
pub const ATTN_KVCACHE_STORE_BF16: attn_kvcache_storage = 1;
pub const ATTN_KVCACHE_STORE_F16: attn_kvcache_storage = 2;
pub const ATTN_KVCACHE_STORE_INT8: attn_kvcache_storage = 3;
pub const ATTN_KVCACHE_STORE_INT4: attn_kvcache_storage = 4;

/// `attn_allocator`: optional allocation hooks.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct attn_allocator {
    pub alloc: Option<unsafe extern "C" fn(*mut c_void, usize, usize) -> *mut c_void>,
    pub free: Option<unsafe extern "C" fn(*mut c_void, *mut c_void, usize)>,
    pub user_data: *mut c_void,
}

/// `attn_context_options`; initialise with `attn_context_options_init`.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct attn_context_options {
    pub struct_size: usize,
    pub num_threads: i32,
    pub allocator: attn_allocator,
}

/// `attn_mha_config` (heads.h); initialise with `attn_mha_config_init`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct attn_mha_config {
    pub struct_size: usize,
    pub embed_dim: i64,
    pub num_heads: i64,
    pub num_kv_heads: i64,
    pub kdim: i64,
    pub vdim: i64,
    pub bias: i32,
    pub add_bias_kv: i32,
    pub add_zero_attn: i32,
    pub batch_first: i32,
    pub dtype: attn_dtype,
}

/// `attn_mha_weights` (heads.h): borrowed tensors; initialise with `attn_mha_weights_init`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct attn_mha_weights {
    pub struct_size: usize,
    pub in_proj_weight: *const attn_tensor,
    pub q_proj_weight: *const attn_tensor,
    pub k_proj_weight: *const attn_tensor,
    pub v_proj_weight: *const attn_tensor,
    pub in_proj_bias: *const attn_tensor,
    pub out_proj_weight: *const attn_tensor,
    pub out_proj_bias: *const attn_tensor,
    pub bias_k: *const attn_tensor,
    pub bias_v: *const attn_tensor,
}

/// `attn_mha_grads` (heads.h): where `attn_mha_backward_execute` writes the
/// parameter gradients (NULL = not wanted); initialise with `attn_mha_grads_init`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct attn_mha_grads {
    pub struct_size: usize,
    pub in_proj_weight: *mut attn_tensor,
    pub q_proj_weight: *mut attn_tensor,
    pub k_proj_weight: *mut attn_tensor,
    pub v_proj_weight: *mut attn_tensor,
    pub in_proj_bias: *mut attn_tensor,
    pub out_proj_weight: *mut attn_tensor,
    pub out_proj_bias: *mut attn_tensor,
    pub bias_k: *mut attn_tensor,
    pub bias_v: *mut attn_tensor,
}

/// `attn_kvcache_config` (kvcache.h); initialise with `attn_kvcache_config_init`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct attn_kvcache_config {
    pub struct_size: usize,
    pub batch: i64,
    pub heads_kv: i64,
    pub capacity: i64,
    pub d_k: i64,
    pub d_v: i64,
    pub dtype: attn_dtype,
    pub mode: attn_kvcache_mode,
    pub grow: i32,
    pub storage: attn_kvcache_storage,
    pub group_size: i64,
}

/// `attn_kvcache_raw` (kvcache.h); initialise with `attn_kvcache_raw_init`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct attn_kvcache_raw {
    pub struct_size: usize,
    pub storage: attn_kvcache_storage,
    pub dtype: attn_dtype,
    pub batch: i64,
    pub heads_kv: i64,
    pub capacity: i64,
    pub d_k: i64,
    pub d_v: i64,
    pub group_size: i64,
    pub k_row_bytes: i64,
    pub v_row_bytes: i64,
    pub k: *const c_void,
    pub v: *const c_void,
    pub k_groups: i64,
    pub k_scales: *const u16,
    pub v_scales: *const u16,
    pub k_residual: *const f32,
    pub total_bytes: i64,
}

/// `attn_paged_config` (paged.h); initialise with `attn_paged_config_init`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct attn_paged_config {
    pub struct_size: usize,
    pub heads_kv: i64,
    pub d_k: i64,
    pub d_v: i64,
    pub block_size: i64,
    pub num_blocks: i64,
    pub max_seqs: i64,
    pub max_seq_len: i64,
    pub dtype: attn_dtype,
    pub storage: attn_kvcache_storage,
    pub group_size: i64,
}

extern "C" {
    // version, status
    pub fn attn_version_number() -> u32;
    pub fn attn_version_string() -> *const c_char;
    pub fn attn_status_string(status: attn_status) -> *const c_char;

    // context
    pub fn attn_context_options_init(opts: *mut attn_context_options);
    pub fn attn_context_create(opts: *const attn_context_options, out: *mut *mut attn_context) -> attn_status;
    pub fn attn_context_destroy(ctx: *mut attn_context);
    pub fn attn_context_last_error(ctx: *const attn_context) -> *const c_char;
    pub fn attn_context_num_threads(ctx: *const attn_context) -> i32;

    // tensors
    pub fn attn_tensor_create(ctx: *mut attn_context, dtype: attn_dtype, rank: i32, shape: *const i64, out: *mut *mut attn_tensor) -> attn_status;
    pub fn attn_tensor_wrap(ctx: *mut attn_context, dtype: attn_dtype, rank: i32, shape: *const i64, strides: *const i64, data: *mut c_void, out: *mut *mut attn_tensor) -> attn_status;
    pub fn attn_tensor_destroy(t: *mut attn_tensor);
    pub fn attn_tensor_dtype(t: *const attn_tensor) -> attn_dtype;
    pub fn attn_tensor_rank(t: *const attn_tensor) -> i32;
    pub fn attn_tensor_dim(t: *const attn_tensor, axis: i32) -> i64;
    pub fn attn_tensor_stride(t: *const attn_tensor, axis: i32) -> i64;
    pub fn attn_tensor_numel(t: *const attn_tensor) -> i64;
    pub fn attn_tensor_data(t: *const attn_tensor) -> *mut c_void;
    pub fn attn_tensor_set_data(t: *mut attn_tensor, data: *mut c_void) -> attn_status;

    // descriptor
    pub fn attn_desc_create(ctx: *mut attn_context, out: *mut *mut attn_desc) -> attn_status;
    pub fn attn_desc_destroy(desc: *mut attn_desc);
    pub fn attn_desc_set_variant(desc: *mut attn_desc, variant: attn_variant) -> attn_status;
    pub fn attn_desc_set_score(desc: *mut attn_desc, score: attn_score) -> attn_status;
    pub fn attn_desc_set_scale(desc: *mut attn_desc, scale: f64) -> attn_status;
    pub fn attn_desc_set_causal(desc: *mut attn_desc, causal: attn_causal) -> attn_status;
    pub fn attn_desc_set_window(desc: *mut attn_desc, left: i64, right: i64) -> attn_status;
    pub fn attn_desc_set_key_lengths(desc: *mut attn_desc, lengths: *const i64, count: i64) -> attn_status;
    pub fn attn_desc_set_query_lengths(desc: *mut attn_desc, lengths: *const i64, count: i64) -> attn_status;
    pub fn attn_desc_set_bool_mask(desc: *mut attn_desc, mask: *const attn_tensor) -> attn_status;
    pub fn attn_desc_set_additive_mask(desc: *mut attn_desc, mask: *const attn_tensor) -> attn_status;
    pub fn attn_desc_set_alibi(desc: *mut attn_desc, slopes: *const f64, count: i64) -> attn_status;
    pub fn attn_desc_set_softcap(desc: *mut attn_desc, cap: f64) -> attn_status;
    pub fn attn_desc_set_varlen(desc: *mut attn_desc, q_offsets: *const i64, k_offsets: *const i64, n_seqs: i64) -> attn_status;
    pub fn attn_desc_set_sinks(desc: *mut attn_desc, logits: *const f64, count: i64) -> attn_status;
    pub fn attn_desc_set_key_mass(desc: *mut attn_desc, mass: *mut attn_tensor) -> attn_status;
    pub fn attn_desc_set_general_weight(desc: *mut attn_desc, w: *const attn_tensor) -> attn_status;
    pub fn attn_desc_set_additive_weights(desc: *mut attn_desc, w_q: *const attn_tensor, w_k: *const attn_tensor, bias: *const attn_tensor, v: *const attn_tensor) -> attn_status;

    // long-sequence variants (approx.h)
    pub fn attn_desc_set_swin(desc: *mut attn_desc, grid_h: i64, grid_w: i64, window: i64, shift: i64) -> attn_status;
    pub fn attn_desc_set_swin_bias(desc: *mut attn_desc, table: *const attn_tensor) -> attn_status;
    pub fn attn_desc_set_global_tokens(desc: *mut attn_desc, indices: *const i64, count: i64) -> attn_status;
    pub fn attn_desc_set_block_size(desc: *mut attn_desc, block: i64) -> attn_status;
    pub fn attn_desc_set_bigbird(desc: *mut attn_desc, window_blocks: i64, global_blocks: i64, random_blocks: i64, seed: u64) -> attn_status;
    pub fn attn_desc_set_block_layout(desc: *mut attn_desc, layout: *const attn_tensor) -> attn_status;
    pub fn attn_plan_block_layout(plan: *const attn_plan, buf: *mut u8, size: *mut usize) -> attn_status;
    pub fn attn_desc_set_features(desc: *mut attn_desc, num_features: i64, seed: u64) -> attn_status;
    pub fn attn_plan_redraw_features(plan: *mut attn_plan, seed: u64) -> attn_status;
    pub fn attn_desc_set_lowrank(desc: *mut attn_desc, rank: i64, seed: u64) -> attn_status;
    pub fn attn_desc_set_lowrank_proj(desc: *mut attn_desc, e: *const attn_tensor, f: *const attn_tensor) -> attn_status;

    // plans
    pub fn attn_plan_create(ctx: *mut attn_context, desc: *const attn_desc, q: *const attn_tensor, k: *const attn_tensor, v: *const attn_tensor, out: *const attn_tensor, weights: *const attn_tensor, lse: *const attn_tensor, plan: *mut *mut attn_plan) -> attn_status;
    pub fn attn_plan_execute(plan: *mut attn_plan, q: *const attn_tensor, k: *const attn_tensor, v: *const attn_tensor, out: *mut attn_tensor, weights: *mut attn_tensor, lse: *mut attn_tensor) -> attn_status;
    pub fn attn_plan_workspace_size(plan: *const attn_plan) -> usize;
    pub fn attn_plan_destroy(plan: *mut attn_plan);
    // backward pass (backward.h)
    pub fn attn_backward_plan_create(forward: *const attn_plan, dout: *const attn_tensor, dq: *const attn_tensor, dk: *const attn_tensor, dv: *const attn_tensor, dmask: *const attn_tensor, plan: *mut *mut attn_backward_plan) -> attn_status;
    pub fn attn_backward_execute(plan: *mut attn_backward_plan, q: *const attn_tensor, k: *const attn_tensor, v: *const attn_tensor, out: *const attn_tensor, lse: *const attn_tensor, dout: *const attn_tensor, dq: *mut attn_tensor, dk: *mut attn_tensor, dv: *mut attn_tensor, dmask: *mut attn_tensor) -> attn_status;
    pub fn attn_backward_plan_set_sink_grad(plan: *mut attn_backward_plan, dsinks: *mut f64, count: i64) -> attn_status;
    pub fn attn_backward_plan_set_general_grad(plan: *mut attn_backward_plan, dw: *mut attn_tensor) -> attn_status;
    pub fn attn_backward_plan_set_additive_grads(plan: *mut attn_backward_plan, dw_q: *mut attn_tensor, dw_k: *mut attn_tensor, dbias: *mut attn_tensor, dv: *mut attn_tensor) -> attn_status;
    pub fn attn_backward_plan_set_lowrank_grads(plan: *mut attn_backward_plan, de: *mut attn_tensor, df: *mut attn_tensor) -> attn_status;
    pub fn attn_backward_plan_workspace_size(plan: *const attn_backward_plan) -> usize;
    pub fn attn_backward_plan_destroy(plan: *mut attn_backward_plan);
    pub fn attn_forward(ctx: *mut attn_context, desc: *const attn_desc, q: *const attn_tensor, k: *const attn_tensor, v: *const attn_tensor, out: *mut attn_tensor, weights: *mut attn_tensor, lse: *mut attn_tensor) -> attn_status;

    pub fn attn_merge_states(ctx: *mut attn_context, out_a: *const attn_tensor, lse_a: *const attn_tensor, out_b: *const attn_tensor, lse_b: *const attn_tensor, out: *mut attn_tensor, lse: *mut attn_tensor) -> attn_status;

    // multi-head (heads.h)
    pub fn attn_heads_split_view(ctx: *mut attn_context, x: *const attn_tensor, num_heads: i64, out: *mut *mut attn_tensor) -> attn_status;
    pub fn attn_heads_merge_view(ctx: *mut attn_context, x: *const attn_tensor, out: *mut *mut attn_tensor) -> attn_status;
    pub fn attn_heads_split(ctx: *mut attn_context, x: *const attn_tensor, out: *mut attn_tensor) -> attn_status;
    pub fn attn_heads_merge(ctx: *mut attn_context, x: *const attn_tensor, out: *mut attn_tensor) -> attn_status;
    pub fn attn_mha_config_init(cfg: *mut attn_mha_config);
    pub fn attn_mha_weights_init(w: *mut attn_mha_weights);
    pub fn attn_mha_create(ctx: *mut attn_context, cfg: *const attn_mha_config, weights: *const attn_mha_weights, out: *mut *mut attn_mha) -> attn_status;
    pub fn attn_mha_destroy(mha: *mut attn_mha);
    pub fn attn_mha_plan_create(mha: *mut attn_mha, desc: *const attn_desc, query: *const attn_tensor, key: *const attn_tensor, value: *const attn_tensor, key_padding_mask: *const attn_tensor, out: *const attn_tensor, weights: *const attn_tensor, plan: *mut *mut attn_mha_plan) -> attn_status;
    pub fn attn_mha_plan_execute(plan: *mut attn_mha_plan, query: *const attn_tensor, key: *const attn_tensor, value: *const attn_tensor, key_padding_mask: *const attn_tensor, out: *mut attn_tensor, weights: *mut attn_tensor) -> attn_status;
    pub fn attn_mha_plan_workspace_size(plan: *const attn_mha_plan) -> usize;
    pub fn attn_mha_plan_destroy(plan: *mut attn_mha_plan);
    // training the multi-head layer (heads.h, since 0.2.0)
    pub fn attn_mha_grads_init(g: *mut attn_mha_grads);
    pub fn attn_mha_backward_plan_create(mha: *mut attn_mha, desc: *const attn_desc, query: *const attn_tensor, key: *const attn_tensor, value: *const attn_tensor, key_padding_mask: *const attn_tensor, out: *const attn_tensor, plan: *mut *mut attn_mha_backward_plan) -> attn_status;
    pub fn attn_mha_backward_saved_size(plan: *const attn_mha_backward_plan) -> usize;
    pub fn attn_mha_forward_train(plan: *mut attn_mha_backward_plan, query: *const attn_tensor, key: *const attn_tensor, value: *const attn_tensor, key_padding_mask: *const attn_tensor, out: *mut attn_tensor, saved: *mut c_void, saved_size: usize) -> attn_status;
    pub fn attn_mha_backward_execute(plan: *mut attn_mha_backward_plan, query: *const attn_tensor, key: *const attn_tensor, value: *const attn_tensor, key_padding_mask: *const attn_tensor, dout: *const attn_tensor, saved: *const c_void, saved_size: usize, dquery: *mut attn_tensor, dkey: *mut attn_tensor, dvalue: *mut attn_tensor, grads: *const attn_mha_grads) -> attn_status;
    pub fn attn_mha_backward_plan_workspace_size(plan: *const attn_mha_backward_plan) -> usize;
    pub fn attn_mha_backward_plan_destroy(plan: *mut attn_mha_backward_plan);

    // KV cache (kvcache.h)
    pub fn attn_kvcache_config_init(cfg: *mut attn_kvcache_config);
    pub fn attn_kvcache_create(ctx: *mut attn_context, cfg: *const attn_kvcache_config, out: *mut *mut attn_kvcache) -> attn_status;
    pub fn attn_kvcache_destroy(cache: *mut attn_kvcache);
    pub fn attn_kvcache_append(cache: *mut attn_kvcache, k_new: *const attn_tensor, v_new: *const attn_tensor, counts: *const i64) -> attn_status;
    pub fn attn_kvcache_truncate(cache: *mut attn_kvcache, lengths: *const i64) -> attn_status;
    pub fn attn_kvcache_set_keep_first(cache: *mut attn_kvcache, n: i64) -> attn_status;
    pub fn attn_kvcache_length(cache: *const attn_kvcache, b: i64) -> i64;
    pub fn attn_kvcache_first(cache: *const attn_kvcache, b: i64) -> i64;
    pub fn attn_kvcache_capacity(cache: *const attn_kvcache) -> i64;
    pub fn attn_kvcache_memory_size(cache: *const attn_kvcache) -> usize;
    pub fn attn_kvcache_view(cache: *mut attn_kvcache, k: *mut *mut attn_tensor, v: *mut *mut attn_tensor) -> attn_status;
    pub fn attn_kvcache_raw_init(raw: *mut attn_kvcache_raw);
    pub fn attn_kvcache_view_raw(cache: *const attn_kvcache, raw: *mut attn_kvcache_raw) -> attn_status;
    pub fn attn_kvcache_plan_create(cache: *mut attn_kvcache, desc: *const attn_desc, q: *const attn_tensor, out: *const attn_tensor, lse: *const attn_tensor, plan: *mut *mut attn_kvcache_plan) -> attn_status;
    pub fn attn_kvcache_plan_execute(plan: *mut attn_kvcache_plan, q: *const attn_tensor, out: *mut attn_tensor, lse: *mut attn_tensor, query_counts: *const i64) -> attn_status;
    pub fn attn_kvcache_plan_workspace_size(plan: *const attn_kvcache_plan) -> usize;
    pub fn attn_kvcache_plan_destroy(plan: *mut attn_kvcache_plan);
    // paged KV cache (paged.h)
    pub fn attn_paged_config_init(cfg: *mut attn_paged_config);
    pub fn attn_paged_create(ctx: *mut attn_context, cfg: *const attn_paged_config, out: *mut *mut attn_paged_cache) -> attn_status;
    pub fn attn_paged_destroy(cache: *mut attn_paged_cache);
    pub fn attn_paged_seq_create(cache: *mut attn_paged_cache, seq: *mut i64) -> attn_status;
    pub fn attn_paged_seq_free(cache: *mut attn_paged_cache, seq: i64) -> attn_status;
    pub fn attn_paged_fork(cache: *mut attn_paged_cache, src: i64, dst: *mut i64) -> attn_status;
    pub fn attn_paged_append(cache: *mut attn_paged_cache, seq: i64, k_new: *const attn_tensor, v_new: *const attn_tensor) -> attn_status;
    pub fn attn_paged_truncate(cache: *mut attn_paged_cache, seq: i64, length: i64) -> attn_status;
    pub fn attn_paged_seq_length(cache: *const attn_paged_cache, seq: i64) -> i64;
    pub fn attn_paged_block_table(cache: *const attn_paged_cache, seq: i64, ids: *mut i64, cap: i64, count: *mut i64) -> attn_status;
    pub fn attn_paged_free_blocks(cache: *const attn_paged_cache) -> i64;
    pub fn attn_paged_num_blocks(cache: *const attn_paged_cache) -> i64;
    pub fn attn_paged_block_size(cache: *const attn_paged_cache) -> i64;
    pub fn attn_paged_num_seqs(cache: *const attn_paged_cache) -> i64;
    pub fn attn_paged_memory_size(cache: *const attn_paged_cache) -> usize;
    pub fn attn_paged_memory_used(cache: *const attn_paged_cache) -> usize;
    pub fn attn_paged_plan_create(ctx: *mut attn_context, cache: *mut attn_paged_cache, desc: *const attn_desc, q: *const attn_tensor, out: *const attn_tensor, lse: *const attn_tensor, plan: *mut *mut attn_paged_plan) -> attn_status;
    pub fn attn_paged_plan_execute(plan: *mut attn_paged_plan, count: i64, seq_ids: *const i64, q: *const attn_tensor, out: *mut attn_tensor, lse: *mut attn_tensor, query_counts: *const i64) -> attn_status;
    pub fn attn_paged_plan_workspace_size(plan: *const attn_paged_plan) -> usize;
    pub fn attn_paged_plan_destroy(plan: *mut attn_paged_plan);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::CStr;

    #[test]
    fn links_and_reports_a_version() {
        let n = unsafe { attn_version_number() };
        let s = unsafe { CStr::from_ptr(attn_version_string()) }.to_str().unwrap();
        let want = format!("{}.{}.{}", n / 10000, n / 100 % 100, n % 100);
        assert_eq!(s, want);
    }

    #[test]
    fn options_struct_matches_the_c_layout() {
        // init writes struct_size = sizeof(attn_context_options) as C sees it.
        let mut o = std::mem::MaybeUninit::<attn_context_options>::zeroed();
        let o = unsafe {
            attn_context_options_init(o.as_mut_ptr());
            o.assume_init()
        };
        assert_eq!(o.struct_size, std::mem::size_of::<attn_context_options>());
        assert_eq!(o.num_threads, 0);
        assert!(o.allocator.alloc.is_none() && o.allocator.free.is_none());
    }

    #[test]
    fn mha_structs_match_the_c_layout() {
        let mut c = std::mem::MaybeUninit::<attn_mha_config>::zeroed();
        let c = unsafe {
            attn_mha_config_init(c.as_mut_ptr());
            c.assume_init()
        };
        assert_eq!(c.struct_size, std::mem::size_of::<attn_mha_config>());
        assert_eq!((c.num_kv_heads, c.kdim, c.vdim, c.bias, c.batch_first, c.dtype), (0, 0, 0, 1, 0, ATTN_DTYPE_F32));
        let mut w = std::mem::MaybeUninit::<attn_mha_weights>::zeroed();
        let w = unsafe {
            attn_mha_weights_init(w.as_mut_ptr());
            w.assume_init()
        };
        assert_eq!(w.struct_size, std::mem::size_of::<attn_mha_weights>());
        assert!(w.in_proj_weight.is_null() && w.bias_v.is_null());
        let mut g = std::mem::MaybeUninit::<attn_mha_grads>::zeroed();
        let g = unsafe {
            attn_mha_grads_init(g.as_mut_ptr());
            g.assume_init()
        };
        assert_eq!(g.struct_size, std::mem::size_of::<attn_mha_grads>());
        assert!(g.in_proj_weight.is_null() && g.bias_v.is_null());
    }

    #[test]
    fn kvcache_config_matches_the_c_layout() {
        let mut c = std::mem::MaybeUninit::<attn_kvcache_config>::zeroed();
        let c = unsafe {
            attn_kvcache_config_init(c.as_mut_ptr());
            c.assume_init()
        };
        assert_eq!(c.struct_size, std::mem::size_of::<attn_kvcache_config>());
        assert_eq!((c.batch, c.heads_kv, c.capacity, c.d_k, c.d_v), (1, 1, 0, 0, 0));
        assert_eq!((c.dtype, c.mode, c.grow, c.storage), (ATTN_DTYPE_F32, ATTN_KVCACHE_LINEAR, 0, ATTN_KVCACHE_STORE_NATIVE));
        assert_eq!(c.group_size, 0);
    }

    #[test]
    fn kvcache_raw_matches_the_c_layout() {
        let mut r = std::mem::MaybeUninit::<attn_kvcache_raw>::zeroed();
        let r = unsafe {
            attn_kvcache_raw_init(r.as_mut_ptr());
            r.assume_init()
        };
        assert_eq!(r.struct_size, std::mem::size_of::<attn_kvcache_raw>());
        assert!(r.k.is_null() && r.k_residual.is_null());
    }
}

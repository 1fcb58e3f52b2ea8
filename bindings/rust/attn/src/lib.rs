//! Safe Rust API for libattn: attention mechanisms as GEMM calls into BLAS.
//!
//! ```
//! use attn::{Causal, Context, Desc, Dims};
//! # fn main() -> Result<(), attn::Error> {
//! let ctx = Context::new()?;
//! let mut desc = Desc::new(&ctx)?;
//! desc.causal(Causal::TopLeft)?;
//! let dims = Dims::new(1, 2, 8, 8, 4); // batch, heads, seq_q, seq_k, head_dim
//! let q = vec![0.5f32; dims.q_len()];
//! let mut out = vec![0.0f32; dims.out_len()];
//! attn::attention(&desc, &dims, &q, &q, &q, &mut out)?;
//! // Every value is 0.5, so every convex combination of them is too.
//! assert!(out.iter().all(|&o| (o - 0.5).abs() < 1e-6));
//! # Ok(()) }
//! ```
//!
//! Ownership follows the C API and is enforced by lifetimes: a [`Desc`]
//! borrows its [`Context`] and every slice given to a setter; a [`Plan`]
//! borrows its `Desc`. Data is passed as slices (never copied) with a
//! [`Layout`] (shape + strides in elements) checked against the slice length.
//! Failures are [`Error`]s carrying the [`Status`] and the context's message.
//!
//! Compatible with Rust 1.63 (Debian 12).

use attn_sys as sys;
use std::ffi::CStr;
use std::fmt;
use std::marker::PhantomData;
use std::os::raw::c_void;
use std::ptr::{self, NonNull};

pub use sys::ATTN_WINDOW_UNBOUNDED as WINDOW_UNBOUNDED;

/// The libattn major version this crate speaks (libattn.so.0).
pub const EXPECTED_MAJOR: u32 = 0;

// ---------------------------------------------------------------------------
// Errors

/// `attn_status` codes other than OK.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    NullArg,
    InvalidArg,
    Shape,
    DType,
    Layout,
    Overflow,
    NoMemory,
    Unsupported,
    Capacity,
    Mismatch,
    Thread,
    Internal,
    /// A code this crate does not know (a newer library).
    Unknown(i32),
}

impl Status {
    /// The C value.
    pub fn code(self) -> i32 {
        match self {
            Status::NullArg => sys::ATTN_ERR_NULL_ARG,
            Status::InvalidArg => sys::ATTN_ERR_INVALID_ARG,
            Status::Shape => sys::ATTN_ERR_SHAPE,
            Status::DType => sys::ATTN_ERR_DTYPE,
            Status::Layout => sys::ATTN_ERR_LAYOUT,
            Status::Overflow => sys::ATTN_ERR_OVERFLOW,
            Status::NoMemory => sys::ATTN_ERR_NO_MEMORY,
            Status::Unsupported => sys::ATTN_ERR_UNSUPPORTED,
            Status::Capacity => sys::ATTN_ERR_CAPACITY,
            Status::Mismatch => sys::ATTN_ERR_MISMATCH,
            Status::Thread => sys::ATTN_ERR_THREAD,
            Status::Internal => sys::ATTN_ERR_INTERNAL,
            Status::Unknown(c) => c,
        }
    }

    fn from_code(code: i32) -> Status {
        match code {
            sys::ATTN_ERR_NULL_ARG => Status::NullArg,
            sys::ATTN_ERR_INVALID_ARG => Status::InvalidArg,
            sys::ATTN_ERR_SHAPE => Status::Shape,
            sys::ATTN_ERR_DTYPE => Status::DType,
            sys::ATTN_ERR_LAYOUT => Status::Layout,
            sys::ATTN_ERR_OVERFLOW => Status::Overflow,
            sys::ATTN_ERR_NO_MEMORY => Status::NoMemory,
            sys::ATTN_ERR_UNSUPPORTED => Status::Unsupported,
            sys::ATTN_ERR_CAPACITY => Status::Capacity,
            sys::ATTN_ERR_MISMATCH => Status::Mismatch,
            sys::ATTN_ERR_THREAD => Status::Thread,
            sys::ATTN_ERR_INTERNAL => Status::Internal,
            c => Status::Unknown(c),
        }
    }

    /// `attn_status_string`: the static description.
    pub fn text(self) -> String {
        unsafe { cstr(sys::attn_status_string(self.code())) }
    }
}

/// A failed call: the status, the C function (or the binding's check) and
/// the context's message naming the bad argument (may be empty).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Error {
    pub status: Status,
    pub function: &'static str,
    pub message: String,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let detail = if self.message.is_empty() { self.status.text() } else { self.message.clone() };
        write!(f, "{}: {} ({:?}: {})", self.function, detail, self.status, self.status.text())
    }
}

impl std::error::Error for Error {}

pub type Result<T> = std::result::Result<T, Error>;

unsafe fn cstr(p: *const std::os::raw::c_char) -> String {
    if p.is_null() {
        String::new()
    } else {
        CStr::from_ptr(p).to_string_lossy().into_owned()
    }
}

fn check(ctx: *const sys::attn_context, st: sys::attn_status, function: &'static str) -> Result<()> {
    if st == sys::ATTN_OK {
        return Ok(());
    }
    let message = if ctx.is_null() { String::new() } else { unsafe { cstr(sys::attn_context_last_error(ctx)) } };
    Err(Error { status: Status::from_code(st), function, message })
}

fn binding_error(status: Status, function: &'static str, message: String) -> Error {
    Error { status, function, message }
}

/// The loaded library's version, e.g. "0.1.0".
pub fn version() -> String {
    unsafe { cstr(sys::attn_version_string()) }
}

/// MAJOR*10000 + MINOR*100 + PATCH of the loaded library.
pub fn version_number() -> u32 {
    unsafe { sys::attn_version_number() }
}

fn check_major() -> Result<()> {
    let n = version_number();
    if n / 10000 != EXPECTED_MAJOR {
        return Err(binding_error(
            Status::Unsupported,
            "attn::Context::new",
            format!("libattn {} has major {}; this crate needs major {}", version(), n / 10000, EXPECTED_MAJOR),
        ));
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Enums

macro_rules! c_enum {
    ($(#[$m:meta])* $name:ident { $($variant:ident = $value:path),* $(,)? }) => {
        $(#[$m])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub enum $name { $($variant),* }
        impl $name {
            fn code(self) -> std::os::raw::c_int { match self { $($name::$variant => $value),* } }
        }
    };
}

c_enum!(
    /// Which algorithm (`attn_variant`).
    Variant {
        Exact = sys::ATTN_VARIANT_EXACT,
        Swin = sys::ATTN_VARIANT_SWIN,
        Longformer = sys::ATTN_VARIANT_LONGFORMER,
        BigBird = sys::ATTN_VARIANT_BIGBIRD,
        BlockSparse = sys::ATTN_VARIANT_BLOCK_SPARSE,
        LinearElu = sys::ATTN_VARIANT_LINEAR_ELU,
        Performer = sys::ATTN_VARIANT_PERFORMER,
        Linformer = sys::ATTN_VARIANT_LINFORMER,
    }
);
c_enum!(
    /// Score function (`attn_score`).
    Score {
        ScaledDot = sys::ATTN_SCORE_SCALED_DOT,
        Dot = sys::ATTN_SCORE_DOT,
        General = sys::ATTN_SCORE_GENERAL,
        Additive = sys::ATTN_SCORE_ADDITIVE,
    }
);
c_enum!(
    /// Causal masking and its alignment (`attn_causal`).
    Causal {
        None = sys::ATTN_CAUSAL_NONE,
        TopLeft = sys::ATTN_CAUSAL_TOP_LEFT,
        BottomRight = sys::ATTN_CAUSAL_BOTTOM_RIGHT,
    }
);

/// Element types a tensor can hold. Sealed: f32, f64 (data), [`Bf16`] and
/// [`F16`] (16-bit storage of q, k, v, out) and u8 (masks).
pub trait Element: Copy + private::Sealed {
    #[doc(hidden)]
    const DTYPE: sys::attn_dtype;
}
/// Element types attention computes in: f32 and f64.
pub trait Float: Element {}
mod private {
    pub trait Sealed {}
    impl Sealed for f32 {}
    impl Sealed for f64 {}
    impl Sealed for u8 {}
    impl Sealed for super::Bf16 {}
    impl Sealed for super::F16 {}
}
impl Element for f32 {
    const DTYPE: sys::attn_dtype = sys::ATTN_DTYPE_F32;
}
impl Element for f64 {
    const DTYPE: sys::attn_dtype = sys::ATTN_DTYPE_F64;
}
impl Element for u8 {
    const DTYPE: sys::attn_dtype = sys::ATTN_DTYPE_U8;
}
impl Float for f32 {}
impl Float for f64 {}
/// bfloat16: the top 16 bits of an IEEE f32 (8-bit significand, f32's range).
#[repr(transparent)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Bf16(pub u16);
impl Bf16 {
    /// Round to nearest even (NaN stays a quiet NaN).
    pub fn from_f32(x: f32) -> Bf16 {
        let u = x.to_bits();
        if (u & 0x7fff_ffff) > 0x7f80_0000 {
            return Bf16(((u >> 16) | 0x40) as u16);
        }
        Bf16((u.wrapping_add(0x7fff + ((u >> 16) & 1)) >> 16) as u16)
    }
    /// Exact.
    pub fn to_f32(self) -> f32 {
        f32::from_bits((self.0 as u32) << 16)
    }
}

/// IEEE binary16 (11-bit significand, largest finite 65504).
#[repr(transparent)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct F16(pub u16);
impl F16 {
    /// Round to nearest even; overflow gives ±inf, NaN a quiet NaN.
    pub fn from_f32(x: f32) -> F16 {
        let u = x.to_bits();
        let sign = ((u >> 16) & 0x8000) as u16;
        let a = u & 0x7fff_ffff;
        if a > 0x7f80_0000 {
            return F16(sign | 0x7e00 | ((a >> 13) & 0x3ff) as u16);
        }
        if a >= 0x477f_f000 {
            return F16(sign | 0x7c00);
        }
        if a >= 0x3880_0000 {
            let r = a - 0x3800_0000;
            let r = r + 0xfff + ((r >> 13) & 1);
            return F16(sign | (r >> 13) as u16);
        }
        if a < 0x3300_0000 {
            return F16(sign);
        }
        let e = a >> 23;
        let m = (a & 0x7f_ffff) | 0x80_0000;
        let shift = 126 - e;
        let mut q = m >> shift;
        let rem = m & ((1 << shift) - 1);
        let half = 1 << (shift - 1);
        if rem > half || (rem == half && (q & 1) == 1) {
            q += 1;
        }
        F16(sign | q as u16)
    }
    /// Exact.
    pub fn to_f32(self) -> f32 {
        let h = self.0 as u32;
        let sign = if h & 0x8000 != 0 { -1.0f32 } else { 1.0 };
        let e = ((h >> 10) & 0x1f) as i32;
        let m = (h & 0x3ff) as f32;
        match e {
            0 => sign * m * (2.0f32).powi(-24),
            31 => {
                if m == 0.0 {
                    sign * f32::INFINITY
                } else {
                    f32::NAN
                }
            }
            _ => sign * (1024.0 + m) * (2.0f32).powi(e - 25),
        }
    }
}

impl Element for Bf16 {
    const DTYPE: sys::attn_dtype = sys::ATTN_DTYPE_BF16;
}
impl Element for F16 {
    const DTYPE: sys::attn_dtype = sys::ATTN_DTYPE_F16;
}
/// 16-bit storage types of q, k, v (and out): computed in f32 (attn.h).
pub trait Half: Element {}
impl Half for Bf16 {}
impl Half for F16 {}

/// Element type of boolean masks and block layouts: u8 (non-zero = keep).
pub trait Byte: Element {}
impl Byte for u8 {}

// ---------------------------------------------------------------------------
// Context

/// `attn_context`: worker threads, allocator, last error. Use it from one
/// thread at a time (it is `Send`, not `Sync`).
pub struct Context {
    raw: NonNull<sys::attn_context>,
}

unsafe impl Send for Context {}

impl Context {
    /// A context with the default thread count ($ATTN_NUM_THREADS or the cores).
    pub fn new() -> Result<Context> {
        Context::with_threads(0)
    }

    /// A context with `threads` threads (0 = default; 1..=1024).
    pub fn with_threads(threads: i32) -> Result<Context> {
        check_major()?;
        let mut opts = std::mem::MaybeUninit::<sys::attn_context_options>::zeroed();
        let mut raw = ptr::null_mut();
        let st = unsafe {
            sys::attn_context_options_init(opts.as_mut_ptr());
            let mut opts = opts.assume_init();
            opts.num_threads = threads;
            sys::attn_context_create(&opts, &mut raw)
        };
        check(ptr::null(), st, "attn_context_create")?;
        Ok(Context { raw: NonNull::new(raw).expect("attn_context_create returned OK and NULL") })
    }

    /// Threads compute calls use.
    pub fn num_threads(&self) -> i32 {
        unsafe { sys::attn_context_num_threads(self.raw.as_ptr()) }
    }

    /// The message of the last failing call ("" if none).
    pub fn last_error(&self) -> String {
        unsafe { cstr(sys::attn_context_last_error(self.raw.as_ptr())) }
    }

    fn ptr(&self) -> *mut sys::attn_context {
        self.raw.as_ptr()
    }
}

impl Drop for Context {
    fn drop(&mut self) {
        unsafe { sys::attn_context_destroy(self.raw.as_ptr()) }
    }
}

// ---------------------------------------------------------------------------
// Layouts and tensors

/// Shape and strides (in elements) of a tensor over a slice.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    pub shape: Vec<i64>,
    pub strides: Vec<i64>,
}

impl Layout {
    /// C-contiguous (row-major) layout of `shape`.
    pub fn contiguous(shape: &[i64]) -> Layout {
        let mut strides = vec![1i64; shape.len()];
        for i in (0..shape.len().saturating_sub(1)).rev() {
            strides[i] = strides[i + 1].saturating_mul(shape[i + 1]);
        }
        Layout { shape: shape.to_vec(), strides }
    }

    /// Any strides (elements, ≥ 0; 0 broadcasts).
    pub fn strided(shape: &[i64], strides: &[i64]) -> Layout {
        Layout { shape: shape.to_vec(), strides: strides.to_vec() }
    }

    /// [B, S, H, D] memory seen as the logical [B, H, S, D] (no copy).
    pub fn bshd(b: i64, s: i64, h: i64, d: i64) -> Layout {
        Layout::strided(&[b, h, s, d], &[s * h * d, d, h * d, 1])
    }

    /// Elements a slice needs to hold this layout (largest offset + 1).
    /// Errors name `what` for bad ranks/dims/strides and for overflow.
    fn extent(&self, what: &'static str) -> Result<usize> {
        let bad = |status, msg: String| Err(binding_error(status, "attn layout check", format!("{}: {}", what, msg)));
        if self.shape.is_empty() || self.shape.len() > sys::ATTN_MAX_RANK as usize || self.shape.len() != self.strides.len() {
            return bad(Status::Shape, format!("rank {} (strides {}), expected 1..4 with one stride per dim", self.shape.len(), self.strides.len()));
        }
        let mut last: i64 = 0;
        for (&n, &s) in self.shape.iter().zip(self.strides.iter()) {
            if n < 1 {
                return bad(Status::Shape, format!("shape {:?} has a dim < 1", self.shape));
            }
            if s < 0 {
                return bad(Status::Layout, format!("strides {:?} has a negative stride", self.strides));
            }
            match (n - 1).checked_mul(s).and_then(|step| last.checked_add(step)) {
                Some(v) => last = v,
                None => return bad(Status::Overflow, format!("shape {:?} with strides {:?} overflows", self.shape, self.strides)),
            }
        }
        usize::try_from(last).ok().and_then(|l| l.checked_add(1)).map_or_else(
            || bad(Status::Overflow, format!("shape {:?} does not fit in memory", self.shape)),
            Ok,
        )
    }
}

/// A C tensor handle (attn_tensor_wrap) whose data pointer the owner sets.
struct Handle {
    raw: NonNull<sys::attn_tensor>,
    extent: usize,
}

impl Handle {
    fn wrap<T: Element>(ctx: &Context, layout: &Layout, data: *mut T, what: &'static str) -> Result<Handle> {
        let extent = layout.extent(what)?;
        let mut raw = ptr::null_mut();
        let st = unsafe {
            sys::attn_tensor_wrap(
                ctx.ptr(),
                T::DTYPE,
                layout.shape.len() as i32,
                layout.shape.as_ptr(),
                layout.strides.as_ptr(),
                data as *mut c_void,
                &mut raw,
            )
        };
        check(ctx.ptr(), st, "attn_tensor_wrap")?;
        Ok(Handle { raw: NonNull::new(raw).expect("attn_tensor_wrap returned OK and NULL"), extent })
    }

    /// A handle over a borrowed slice, checked to hold the layout.
    fn over<T: Element>(ctx: &Context, data: &[T], layout: &Layout, what: &'static str) -> Result<Handle> {
        let h = Handle::wrap(ctx, layout, data.as_ptr() as *mut T, what)?;
        h.check_len(data.len(), what)?;
        Ok(h)
    }

    fn check_len(&self, len: usize, what: &'static str) -> Result<()> {
        if len < self.extent {
            return Err(binding_error(
                Status::Shape,
                "attn slice check",
                format!("{}: slice has {} elements, its layout needs {}", what, len, self.extent),
            ));
        }
        Ok(())
    }
}

impl Drop for Handle {
    fn drop(&mut self) {
        unsafe { sys::attn_tensor_destroy(self.raw.as_ptr()) }
    }
}

// ---------------------------------------------------------------------------
// Descriptor

/// `attn_desc`: what to compute (default: exact scaled-dot attention).
///
/// Setters map 1:1 to `attn_desc_set_*` and return `&mut Self` for chaining
/// with `?`. Slices given to setters are borrowed for `'a` (the C side reads
/// them at execute time); while a [`Plan`] borrows the descriptor it cannot
/// be changed.
pub struct Desc<'a> {
    ctx: &'a Context,
    raw: NonNull<sys::attn_desc>,
    tensors: Vec<(&'static str, Handle)>,
    _borrows: PhantomData<&'a [u8]>,
}

/// One scalar setter per line: name, C function, (arg: type as C type).
macro_rules! scalar_setters {
    ($($(#[$m:meta])* $name:ident => $cfn:ident($($arg:ident: $ty:ty => $conv:expr),*);)*) => {
        $(
            $(#[$m])*
            pub fn $name(&mut self, $($arg: $ty),*) -> Result<&mut Self> {
                let st = unsafe { sys::$cfn(self.raw.as_ptr(), $($conv),*) };
                check(self.ctx.ptr(), st, stringify!($cfn))?;
                Ok(self)
            }
        )*
    };
}

/// One slice setter per line: name, C function, element type (pointer + count).
macro_rules! slice_setters {
    ($($(#[$m:meta])* $name:ident => $cfn:ident(&[$ty:ty]);)*) => {
        $(
            $(#[$m])*
            pub fn $name(&mut self, values: &'a [$ty]) -> Result<&mut Self> {
                let (p, n) = if values.is_empty() { (ptr::null(), 0) } else { (values.as_ptr(), values.len() as i64) };
                let st = unsafe { sys::$cfn(self.raw.as_ptr(), p, n) };
                check(self.ctx.ptr(), st, stringify!($cfn))?;
                Ok(self)
            }
        )*
    };
}

/// One tensor setter per line: name, C function, element trait.
macro_rules! tensor_setters {
    ($($(#[$m:meta])* $name:ident => $cfn:ident<$bound:path>;)*) => {
        $(
            $(#[$m])*
            pub fn $name<T: $bound>(&mut self, data: &'a [T], layout: &Layout) -> Result<&mut Self> {
                let h = Handle::over(self.ctx, data, layout, stringify!($name))?;
                let st = unsafe { sys::$cfn(self.raw.as_ptr(), h.raw.as_ptr()) };
                check(self.ctx.ptr(), st, stringify!($cfn))?;
                self.keep(stringify!($name), vec![h]);
                Ok(self)
            }
        )*
    };
}

fn window_bound(v: Option<i64>) -> i64 {
    v.unwrap_or(sys::ATTN_WINDOW_UNBOUNDED)
}

impl<'a> Desc<'a> {
    pub fn new(ctx: &'a Context) -> Result<Desc<'a>> {
        let mut raw = ptr::null_mut();
        let st = unsafe { sys::attn_desc_create(ctx.ptr(), &mut raw) };
        check(ctx.ptr(), st, "attn_desc_create")?;
        Ok(Desc {
            ctx,
            raw: NonNull::new(raw).expect("attn_desc_create returned OK and NULL"),
            tensors: Vec::new(),
            _borrows: PhantomData,
        })
    }

    pub fn context(&self) -> &'a Context {
        self.ctx
    }

    fn keep(&mut self, name: &'static str, handles: Vec<Handle>) {
        // No plan can be borrowing the descriptor here (&mut self), so the
        // handles an earlier call of this setter gave C can go.
        self.tensors.retain(|(n, _)| *n != name);
        for h in handles {
            self.tensors.push((name, h));
        }
    }

    scalar_setters! {
        /// Select the algorithm.
        variant => attn_desc_set_variant(v: Variant => v.code());
        /// Select the score function.
        score => attn_desc_set_score(s: Score => s.code());
        /// Score scale (finite, > 0).
        scale => attn_desc_set_scale(scale: f64 => scale);
        /// Causal masking and its alignment.
        causal => attn_desc_set_causal(c: Causal => c.code());
        /// Sliding window i'-left ≤ j ≤ i'+right; None = unbounded on that side.
        window => attn_desc_set_window(left: Option<i64> => window_bound(left), right: Option<i64> => window_bound(right));
        /// Logit softcap: s ← cap·tanh(s/cap).
        softcap => attn_desc_set_softcap(cap: f64 => cap);
        /// Swin grid, window and shift (ATTN_VARIANT_SWIN).
        swin => attn_desc_set_swin(grid_h: i64 => grid_h, grid_w: i64 => grid_w, window: i64 => window, shift: i64 => shift);
        /// Block size for BigBird and block-sparse.
        block_size => attn_desc_set_block_size(block: i64 => block);
        /// BigBird window/global/random blocks and the seed.
        bigbird => attn_desc_set_bigbird(window_blocks: i64 => window_blocks, global_blocks: i64 => global_blocks, random_blocks: i64 => random_blocks, seed: u64 => seed);
        /// Performer feature count and seed.
        features => attn_desc_set_features(num_features: i64 => num_features, seed: u64 => seed);
        /// Linformer projected length and seed.
        lowrank => attn_desc_set_lowrank(rank: i64 => rank, seed: u64 => seed);
    }

    slice_setters! {
        /// Per-batch key lengths (padding); empty clears.
        key_lengths => attn_desc_set_key_lengths(&[i64]);
        /// Per-batch query lengths; empty clears.
        query_lengths => attn_desc_set_query_lengths(&[i64]);
        /// ALiBi slopes, one per query head; empty clears.
        alibi => attn_desc_set_alibi(&[f64]);
        /// Longformer global token indices; empty clears.
        global_tokens => attn_desc_set_global_tokens(&[i64]);
        /// Sink logits, one per query head (an extra softmax logit with no value); empty clears.
        sinks => attn_desc_set_sinks(&[f64]);
    }

    /// Packed variable-length batch: sequence s owns rows q_offsets[s]..q_offsets[s+1]
    /// of q and k_offsets' rows of k, v (None: q's offsets). Use Dims with batch 1,
    /// seq_q/seq_k the totals and bshd = true for the [T, H, D] layout. Empty clears.
    pub fn varlen(&mut self, q_offsets: &'a [i64], k_offsets: Option<&'a [i64]>) -> Result<&mut Self> {
        let n = q_offsets.len().saturating_sub(1) as i64;
        if let Some(k) = k_offsets {
            if k.len() != q_offsets.len() {
                return Err(binding_error(Status::InvalidArg, "attn_desc_set_varlen",
                    format!("k_offsets: {} offsets, q_offsets has {}", k.len(), q_offsets.len())));
            }
        }
        let qp = if n > 0 { q_offsets.as_ptr() } else { ptr::null() };
        let kp = match k_offsets { Some(k) if n > 0 => k.as_ptr(), _ => ptr::null() };
        let st = unsafe { sys::attn_desc_set_varlen(self.raw.as_ptr(), qp, kp, n) };
        check(self.ctx.ptr(), st, "attn_desc_set_varlen")?;
        Ok(self)
    }

    /// Per-key attention mass output, [B, H, S_k] (per head) or [B, H_kv, S_k]
    /// (per KV group), written by every execute of plans made from this
    /// descriptor. Borrowed mutably for the descriptor's lifetime: read it
    /// once the descriptor (and its plans) are dropped.
    pub fn key_mass<T: Float>(&mut self, mass: &'a mut [T], layout: &Layout) -> Result<&mut Self> {
        let h = Handle::wrap(self.ctx, layout, mass.as_mut_ptr(), "mass")?;
        h.check_len(mass.len(), "mass")?;
        let st = unsafe { sys::attn_desc_set_key_mass(self.raw.as_ptr(), h.raw.as_ptr()) };
        check(self.ctx.ptr(), st, "attn_desc_set_key_mass")?;
        self.keep("key_mass", vec![h]);
        Ok(self)
    }

    tensor_setters! {
        /// Boolean mask, u8 [B|1, H|1, S_q, S_k]: non-zero = attend.
        bool_mask => attn_desc_set_bool_mask<Byte>;
        /// Additive float mask [B|1, H|1, S_q, S_k] in q's dtype.
        additive_mask => attn_desc_set_additive_mask<Float>;
        /// Luong general W [d_q, d_k].
        general_weight => attn_desc_set_general_weight<Float>;
        /// Swin relative position bias table [(2w-1)², H].
        swin_bias => attn_desc_set_swin_bias<Float>;
        /// Block-sparse layout, u8 [H|1, ⌈S_q/b⌉, ⌈S_k/b⌉].
        block_layout => attn_desc_set_block_layout<Byte>;
    }

    /// Bahdanau parameters w_q [A, d_q], w_k [A, d_k], bias [A] (optional), v [A].
    pub fn additive_weights<T: Float>(
        &mut self,
        w_q: (&'a [T], &Layout),
        w_k: (&'a [T], &Layout),
        bias: Option<(&'a [T], &Layout)>,
        v: (&'a [T], &Layout),
    ) -> Result<&mut Self> {
        let hq = Handle::over(self.ctx, w_q.0, w_q.1, "w_q")?;
        let hk = Handle::over(self.ctx, w_k.0, w_k.1, "w_k")?;
        let hb = match bias {
            Some((d, l)) => Some(Handle::over(self.ctx, d, l, "bias")?),
            None => None,
        };
        let hv = Handle::over(self.ctx, v.0, v.1, "v")?;
        let bp = hb.as_ref().map_or(ptr::null(), |h| h.raw.as_ptr() as *const _);
        let st = unsafe { sys::attn_desc_set_additive_weights(self.raw.as_ptr(), hq.raw.as_ptr(), hk.raw.as_ptr(), bp, hv.raw.as_ptr()) };
        check(self.ctx.ptr(), st, "attn_desc_set_additive_weights")?;
        let mut hs = vec![hq, hk, hv];
        hs.extend(hb);
        self.keep("additive_weights", hs);
        Ok(self)
    }

    /// Linformer projections E and F: [k, S_k] or [H_kv, k, S_k].
    pub fn lowrank_proj<T: Float>(&mut self, e: (&'a [T], &Layout), f: (&'a [T], &Layout)) -> Result<&mut Self> {
        let he = Handle::over(self.ctx, e.0, e.1, "e")?;
        let hf = Handle::over(self.ctx, f.0, f.1, "f")?;
        let st = unsafe { sys::attn_desc_set_lowrank_proj(self.raw.as_ptr(), he.raw.as_ptr(), hf.raw.as_ptr()) };
        check(self.ctx.ptr(), st, "attn_desc_set_lowrank_proj")?;
        self.keep("lowrank_proj", vec![he, hf]);
        Ok(self)
    }
}

impl Drop for Desc<'_> {
    fn drop(&mut self) {
        unsafe { sys::attn_desc_destroy(self.raw.as_ptr()) }
        // self.tensors drop after: the descriptor no longer refers to them.
    }
}

// ---------------------------------------------------------------------------
// Plans

/// Attention dimensions and the memory order of q, k, v and out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Dims {
    pub batch: i64,
    pub heads: i64,
    pub kv_heads: i64,
    pub seq_q: i64,
    pub seq_k: i64,
    pub head_dim: i64,
    pub value_dim: i64,
    /// true: q, k, v, out are [B, S, H, D] in memory; false: [B, H, S, D].
    pub bshd: bool,
}

impl Dims {
    /// batch, heads (= kv heads), seq_q, seq_k, head_dim (= value dim), [B,H,S,D].
    pub fn new(batch: i64, heads: i64, seq_q: i64, seq_k: i64, head_dim: i64) -> Dims {
        Dims { batch, heads, kv_heads: heads, seq_q, seq_k, head_dim, value_dim: head_dim, bshd: false }
    }
    /// Grouped-query / multi-query: `kv_heads` divides `heads`.
    pub fn kv_heads(mut self, kv_heads: i64) -> Dims {
        self.kv_heads = kv_heads;
        self
    }
    pub fn value_dim(mut self, value_dim: i64) -> Dims {
        self.value_dim = value_dim;
        self
    }
    /// Memory order [B, S, H, D] for q, k, v and out.
    pub fn bshd(mut self) -> Dims {
        self.bshd = true;
        self
    }

    fn layout(&self, h: i64, s: i64, d: i64) -> Layout {
        if self.bshd {
            Layout::bshd(self.batch, s, h, d)
        } else {
            Layout::contiguous(&[self.batch, h, s, d])
        }
    }
    pub fn q_layout(&self) -> Layout {
        self.layout(self.heads, self.seq_q, self.head_dim)
    }
    pub fn k_layout(&self) -> Layout {
        self.layout(self.kv_heads, self.seq_k, self.head_dim)
    }
    pub fn v_layout(&self) -> Layout {
        self.layout(self.kv_heads, self.seq_k, self.value_dim)
    }
    pub fn out_layout(&self) -> Layout {
        self.layout(self.heads, self.seq_q, self.value_dim)
    }
    /// weights: [B, H, S_q, S_k] contiguous.
    pub fn weights_layout(&self) -> Layout {
        Layout::contiguous(&[self.batch, self.heads, self.seq_q, self.seq_k])
    }
    /// lse: [B, H, S_q] contiguous.
    pub fn lse_layout(&self) -> Layout {
        Layout::contiguous(&[self.batch, self.heads, self.seq_q])
    }
    fn len(&self, dims: &[i64]) -> usize {
        dims.iter().fold(1usize, |a, &d| a.saturating_mul(usize::try_from(d).unwrap_or(0)))
    }
    pub fn q_len(&self) -> usize {
        self.len(&[self.batch, self.heads, self.seq_q, self.head_dim])
    }
    pub fn k_len(&self) -> usize {
        self.len(&[self.batch, self.kv_heads, self.seq_k, self.head_dim])
    }
    pub fn v_len(&self) -> usize {
        self.len(&[self.batch, self.kv_heads, self.seq_k, self.value_dim])
    }
    pub fn out_len(&self) -> usize {
        self.len(&[self.batch, self.heads, self.seq_q, self.value_dim])
    }
    pub fn weights_len(&self) -> usize {
        self.len(&[self.batch, self.heads, self.seq_q, self.seq_k])
    }
    pub fn lse_len(&self) -> usize {
        self.len(&[self.batch, self.heads, self.seq_q])
    }
}

const NAMES: [&str; 6] = ["q", "k", "v", "out", "weights", "lse"];

/// `attn_plan`: a descriptor bound to layouts and a dtype, with its workspace.
/// `execute` runs it on slices (no allocation in libattn, none here).
pub struct Plan<'p, T: Float> {
    desc: &'p Desc<'p>,
    raw: NonNull<sys::attn_plan>,
    handles: Vec<Option<Handle>>, // q, k, v, out, weights, lse
    _t: PhantomData<T>,
}

impl<'p, T: Float> Plan<'p, T> {
    /// A plan for the layouts in `dims`, with optional weights/lse outputs.
    pub fn new(desc: &'p Desc<'p>, dims: &Dims, weights: bool, lse: bool) -> Result<Plan<'p, T>> {
        let w = dims.weights_layout();
        let l = dims.lse_layout();
        Plan::with_layouts(
            desc,
            [&dims.q_layout(), &dims.k_layout(), &dims.v_layout(), &dims.out_layout()],
            if weights { Some(&w) } else { None },
            if lse { Some(&l) } else { None },
        )
    }

    /// A plan for arbitrary layouts of q, k, v, out (logical [B, H, S, D]).
    pub fn with_layouts(desc: &'p Desc<'p>, qkvo: [&Layout; 4], weights: Option<&Layout>, lse: Option<&Layout>) -> Result<Plan<'p, T>> {
        let ctx = desc.ctx;
        let layouts = [Some(qkvo[0]), Some(qkvo[1]), Some(qkvo[2]), Some(qkvo[3]), weights, lse];
        let mut handles = Vec::with_capacity(6);
        for (i, l) in layouts.iter().enumerate() {
            handles.push(match l {
                // The data pointer is set at execute; plan creation reads only metadata.
                Some(l) => Some(Handle::wrap::<T>(ctx, l, NonNull::<T>::dangling().as_ptr(), NAMES[i])?),
                None => None,
            });
        }
        let p = |i: usize| handles[i].as_ref().map_or(ptr::null(), |h: &Handle| h.raw.as_ptr() as *const _);
        let mut raw = ptr::null_mut();
        let st = unsafe { sys::attn_plan_create(ctx.ptr(), desc.raw.as_ptr(), p(0), p(1), p(2), p(3), p(4), p(5), &mut raw) };
        check(ctx.ptr(), st, "attn_plan_create")?;
        Ok(Plan { desc, raw: NonNull::new(raw).expect("attn_plan_create returned OK and NULL"), handles, _t: PhantomData })
    }

    /// Bytes of workspace the plan holds.
    pub fn workspace_size(&self) -> usize {
        unsafe { sys::attn_plan_workspace_size(self.raw.as_ptr()) }
    }

    /// Run on these slices (each long enough for its layout; weights/lse
    /// given exactly when the plan was made with them). On error nothing is
    /// written.
    pub fn execute(&mut self, q: &[T], k: &[T], v: &[T], out: &mut [T], weights: Option<&mut [T]>, lse: Option<&mut [T]>) -> Result<()> {
        let ptrs: [Option<(*mut T, usize)>; 6] = [
            Some((q.as_ptr() as *mut T, q.len())),
            Some((k.as_ptr() as *mut T, k.len())),
            Some((v.as_ptr() as *mut T, v.len())),
            Some((out.as_mut_ptr(), out.len())),
            weights.map(|w| (w.as_mut_ptr(), w.len())),
            lse.map(|l| (l.as_mut_ptr(), l.len())),
        ];
        let ctx = self.desc.ctx;
        for i in 0..6 {
            match (&self.handles[i], ptrs[i]) {
                (Some(h), Some((_, len))) => h.check_len(len, NAMES[i])?,
                (None, None) => {}
                (Some(_), None) => {
                    return Err(binding_error(Status::Mismatch, "attn::Plan::execute", format!("{}: the plan was created with {}; pass it", NAMES[i], NAMES[i])))
                }
                (None, Some(_)) => {
                    return Err(binding_error(Status::Mismatch, "attn::Plan::execute", format!("{}: the plan was created without {}; pass None", NAMES[i], NAMES[i])))
                }
            }
        }
        for i in 0..6 {
            if let (Some(h), Some((p, _))) = (&self.handles[i], ptrs[i]) {
                let st = unsafe { sys::attn_tensor_set_data(h.raw.as_ptr(), p as *mut c_void) };
                check(ctx.ptr(), st, "attn_tensor_set_data")?;
            }
        }
        let p = |i: usize| self.handles[i].as_ref().map_or(ptr::null_mut(), |h| h.raw.as_ptr());
        let st = unsafe { sys::attn_plan_execute(self.raw.as_ptr(), p(0), p(1), p(2), p(3), p(4), p(5)) };
        check(ctx.ptr(), st, "attn_plan_execute")
    }

    /// Sparse plans: the block layout, u8 [H, ⌈S_q/b⌉, ⌈S_k/b⌉] flattened.
    pub fn block_layout(&self) -> Result<Vec<u8>> {
        let ctx = self.desc.ctx;
        let mut size = 0usize;
        let st = unsafe { sys::attn_plan_block_layout(self.raw.as_ptr(), ptr::null_mut(), &mut size) };
        if st != sys::ATTN_OK && !(st == sys::ATTN_ERR_INVALID_ARG && size > 0) {
            check(ctx.ptr(), st, "attn_plan_block_layout")?;
        }
        let mut buf = vec![0u8; size];
        let st = unsafe { sys::attn_plan_block_layout(self.raw.as_ptr(), buf.as_mut_ptr(), &mut size) };
        check(ctx.ptr(), st, "attn_plan_block_layout")?;
        buf.truncate(size);
        Ok(buf)
    }

    /// Performer: redraw the random features from `seed`.
    pub fn redraw_features(&mut self, seed: u64) -> Result<()> {
        let st = unsafe { sys::attn_plan_redraw_features(self.raw.as_ptr(), seed) };
        check(self.desc.ctx.ptr(), st, "attn_plan_redraw_features")
    }
}

impl<T: Float> Drop for Plan<'_, T> {
    fn drop(&mut self) {
        unsafe { sys::attn_plan_destroy(self.raw.as_ptr()) }
    }
}

const TRAIN_NAMES: [&str; 9] = ["q", "k", "v", "out", "lse", "dout", "dq", "dk", "dv"];

/// The weight gradients of [`BackwardGrads`] (its `sinks` aside), in this
/// order: the general score's W, the additive score's w_q, w_k, bias, v,
/// Linformer's E, F.
const WGRAD_NAMES: [&str; 7] = ["general_weight", "additive_w_q", "additive_w_k", "additive_bias", "additive_v", "lowrank_e", "lowrank_f"];

/// Where [`TrainPlan::backward_with`] writes the gradients of the
/// descriptor's own parameters (backward.h), besides dq, dk, dv. Each field
/// is an output slice, or `None` when that gradient is not wanted (the
/// [`Default`]). Gradients are overwritten, not accumulated into. The weight
/// gradients are contiguous (row-major) with exactly the element count of
/// the weight given to the descriptor (whatever that weight's strides), in
/// the plan's element type; `sinks` is f64 for every plan.
///
/// The slices are borrowed for one call only: the binding hands them to the
/// C backward plan (`attn_backward_plan_set_*_grad*`) right before the
/// execute and takes them back (sets them to NULL) right after it, so the C
/// plan never keeps a pointer to them.
///
/// ```
/// use attn::{BackwardGrads, Context, Desc, Dims, TrainPlan};
/// # fn main() -> Result<(), attn::Error> {
/// let ctx = Context::new()?;
/// let sinks = [0.0f64; 2];
/// let mut desc = Desc::new(&ctx)?;
/// desc.sinks(&sinks)?;
/// let dims = Dims::new(1, 2, 3, 3, 4);
/// let mut plan = TrainPlan::<f64>::new(&desc, &dims)?;
/// let x = vec![0.25f64; dims.q_len()];
/// let (mut out, mut lse) = (vec![0.0; dims.out_len()], vec![0.0; dims.lse_len()]);
/// plan.forward(&x, &x, &x, &mut out, &mut lse)?;
/// let dout = vec![1.0f64; dims.out_len()];
/// let (mut dq, mut dk, mut dv) = (vec![0.0; dims.q_len()], vec![0.0; dims.k_len()], vec![0.0; dims.v_len()]);
/// let mut dsinks = [0.0f64; 2];
/// let mut grads = BackwardGrads { sinks: Some(&mut dsinks), ..Default::default() };
/// plan.backward_with(&x, &x, &x, &out, &lse, &dout, &mut dq, &mut dk, &mut dv, &mut grads)?;
/// // A larger sink logit takes mass from values that are all 0.25: L falls.
/// assert!(dsinks.iter().all(|&g| g < 0.0));
/// # Ok(()) }
/// ```
pub struct BackwardGrads<'g, T> {
    /// ∂L/∂sinks: H values (one per query head), f64. The descriptor must
    /// have sinks ([`Desc::sinks`]); a head whose sink is −inf gets 0.
    pub sinks: Option<&'g mut [f64]>,
    /// ∂L/∂W of [`Score::General`] ([`Desc::general_weight`]), [d_q, d_k].
    pub general_weight: Option<&'g mut [T]>,
    /// ∂L/∂w_q of [`Score::Additive`] ([`Desc::additive_weights`]), [A, d_q].
    /// `additive_w_q`, `additive_w_k` and `additive_v` are given together.
    pub additive_w_q: Option<&'g mut [T]>,
    /// ∂L/∂w_k of the additive score, [A, d_k].
    pub additive_w_k: Option<&'g mut [T]>,
    /// ∂L/∂bias of the additive score, `[A]`; only when the descriptor has
    /// a bias, and only with the other additive gradients.
    pub additive_bias: Option<&'g mut [T]>,
    /// ∂L/∂v of the additive score, `[A]`.
    pub additive_v: Option<&'g mut [T]>,
    /// ∂L/∂E of [`Variant::Linformer`] with given projections
    /// ([`Desc::lowrank_proj`]; not with seeded ones), E's shape. Given
    /// together with `lowrank_f`; not together with the score gradients
    /// (the C plan has one set of weight-gradient slots).
    pub lowrank_e: Option<&'g mut [T]>,
    /// ∂L/∂F of Linformer with given projections, F's shape.
    pub lowrank_f: Option<&'g mut [T]>,
}

impl<'g, T> Default for BackwardGrads<'g, T> {
    /// No gradient wanted.
    fn default() -> Self {
        BackwardGrads { sinks: None, general_weight: None, additive_w_q: None, additive_w_k: None, additive_bias: None, additive_v: None, lowrank_e: None, lowrank_f: None }
    }
}

impl<'g, T> BackwardGrads<'g, T> {
    /// Pointer and length of each weight gradient, in `WGRAD_NAMES` order.
    fn raw(&mut self) -> [Option<(*mut c_void, usize)>; 7] {
        fn r<T>(s: &mut Option<&mut [T]>) -> Option<(*mut c_void, usize)> {
            s.as_mut().map(|s| (s.as_mut_ptr() as *mut c_void, s.len()))
        }
        [
            r(&mut self.general_weight),
            r(&mut self.additive_w_q),
            r(&mut self.additive_w_k),
            r(&mut self.additive_bias),
            r(&mut self.additive_v),
            r(&mut self.lowrank_e),
            r(&mut self.lowrank_f),
        ]
    }
}

/// A forward plan with lse and its backward (`attn_backward_plan`, backward.h):
/// `forward` computes out and lse, `backward` the gradients dq, dk, dv of a
/// loss from dout = ∂L/∂out (FlashAttention-2 style, deterministic for any
/// thread count, no allocation), and [`backward_with`](TrainPlan::backward_with)
/// also the gradients of the descriptor's sinks, score weights (general,
/// additive) and given Linformer projections ([`BackwardGrads`]). Gradients
/// have the layouts of q, k, v; dout the layout of out. What the backward
/// supports is listed in backward.h (variants exact, longformer, bigbird,
/// block_sparse, linformer; every score); anything else gives
/// `Status::Unsupported` here.
pub struct TrainPlan<'p, T: Float> {
    fwd: Plan<'p, T>,
    raw: NonNull<sys::attn_backward_plan>,
    handles: Vec<Handle>, // q, k, v, out, lse, dout, dq, dk, dv
    /// Weight-gradient handles (WGRAD_NAMES), contiguous in the shape of
    /// the descriptor's weight; None where the descriptor has none.
    wgrads: [Option<Handle>; 7],
    heads: i64,
}

impl<'p, T: Float> TrainPlan<'p, T> {
    /// Plans for the layouts in `dims` (lse [B, H, S_q] contiguous).
    pub fn new(desc: &'p Desc<'p>, dims: &Dims) -> Result<TrainPlan<'p, T>> {
        let fwd = Plan::<T>::new(desc, dims, false, true)?;
        let ctx = desc.ctx;
        let layouts = [dims.q_layout(), dims.k_layout(), dims.v_layout(), dims.out_layout(), dims.lse_layout(), dims.out_layout(), dims.q_layout(), dims.k_layout(), dims.v_layout()];
        let mut handles = Vec::with_capacity(9);
        for (i, l) in layouts.iter().enumerate() {
            handles.push(Handle::wrap::<T>(ctx, l, NonNull::<T>::dangling().as_ptr(), TRAIN_NAMES[i])?);
        }
        // The descriptor's weights (it cannot change while the plan borrows
        // it); additive_weights keeps w_q, w_k, v, then the bias if given.
        let kept = |name: &str| desc.tensors.iter().filter(|(n, _)| *n == name).map(|(_, h)| h).collect::<Vec<&Handle>>();
        let (g, a, lr) = (kept("general_weight"), kept("additive_weights"), kept("lowrank_proj"));
        let weights: [Option<&Handle>; 7] = [g.first().copied(), a.first().copied(), a.get(1).copied(), a.get(3).copied(), a.get(2).copied(), lr.first().copied(), lr.get(1).copied()];
        let mut wgrads: [Option<Handle>; 7] = Default::default();
        for (i, w) in weights.iter().enumerate() {
            if let Some(w) = w {
                let l = Layout::contiguous(&layout_of(w.raw.as_ptr()).shape);
                wgrads[i] = Some(Handle::wrap::<T>(ctx, &l, NonNull::<T>::dangling().as_ptr(), WGRAD_NAMES[i])?);
            }
        }
        let mut raw = ptr::null_mut();
        let h = |i: usize| handles[i].raw.as_ptr() as *const sys::attn_tensor;
        let st = unsafe { sys::attn_backward_plan_create(fwd.raw.as_ptr(), h(5), h(6), h(7), h(8), ptr::null(), &mut raw) };
        check(ctx.ptr(), st, "attn_backward_plan_create")?;
        Ok(TrainPlan { fwd, raw: NonNull::new(raw).expect("attn_backward_plan_create returned OK and NULL"), handles, wgrads, heads: dims.heads })
    }

    /// Bytes of workspace the backward plan holds (the forward's: `forward_plan().workspace_size()`).
    pub fn workspace_size(&self) -> usize {
        unsafe { sys::attn_backward_plan_workspace_size(self.raw.as_ptr()) }
    }

    /// The forward plan.
    pub fn forward_plan(&self) -> &Plan<'p, T> {
        &self.fwd
    }

    /// out and lse for q, k, v.
    pub fn forward(&mut self, q: &[T], k: &[T], v: &[T], out: &mut [T], lse: &mut [T]) -> Result<()> {
        self.fwd.execute(q, k, v, out, None, Some(lse))
    }

    /// dq, dk, dv (overwritten) from the forward's inputs, its out and lse, and dout.
    #[allow(clippy::too_many_arguments)]
    pub fn backward(&mut self, q: &[T], k: &[T], v: &[T], out: &[T], lse: &[T], dout: &[T], dq: &mut [T], dk: &mut [T], dv: &mut [T]) -> Result<()> {
        self.backward_with(q, k, v, out, lse, dout, dq, dk, dv, &mut BackwardGrads::default())
    }

    /// [`backward`](TrainPlan::backward) that also overwrites the
    /// gradients asked for in `grads` (sinks, score weights, Linformer
    /// projections; `None` fields are not computed).
    ///
    /// Every slice is checked before the C plan is touched: a weight
    /// gradient must have exactly its weight's element count and a sink
    /// gradient H values ([`Status::Shape`] otherwise), and a weight the
    /// descriptor does not have is [`Status::InvalidArg`]; the library
    /// then rejects gradients the forward cannot have (e.g. general on an
    /// additive plan: [`Status::InvalidArg`]). The gradient slices are set
    /// on the C backward plan for this call only and unset before it
    /// returns, whatever the outcome. On error nothing is written; the
    /// library's message is in the returned [`Error`] (the unsetting calls
    /// clear [`Context::last_error`]).
    #[allow(clippy::too_many_arguments)]
    pub fn backward_with(&mut self, q: &[T], k: &[T], v: &[T], out: &[T], lse: &[T], dout: &[T], dq: &mut [T], dk: &mut [T], dv: &mut [T], grads: &mut BackwardGrads<'_, T>) -> Result<()> {
        const F: &str = "attn::TrainPlan::backward_with";
        let ptrs: [(*mut T, usize); 9] = [
            (q.as_ptr() as *mut T, q.len()),
            (k.as_ptr() as *mut T, k.len()),
            (v.as_ptr() as *mut T, v.len()),
            (out.as_ptr() as *mut T, out.len()),
            (lse.as_ptr() as *mut T, lse.len()),
            (dout.as_ptr() as *mut T, dout.len()),
            (dq.as_mut_ptr(), dq.len()),
            (dk.as_mut_ptr(), dk.len()),
            (dv.as_mut_ptr(), dv.len()),
        ];
        let ctx = self.fwd.desc.ctx;
        for (i, (_, len)) in ptrs.iter().enumerate() {
            self.handles[i].check_len(*len, TRAIN_NAMES[i])?;
        }
        // The extra gradients: checked completely before anything is set.
        let g = grads.raw();
        for (i, gi) in g.iter().enumerate() {
            if let Some((_, len)) = gi {
                match &self.wgrads[i] {
                    None => {
                        let what = ["a general weight (Desc::general_weight)", "additive weights (Desc::additive_weights)", "additive weights (Desc::additive_weights)", "an additive bias (Desc::additive_weights)", "additive weights (Desc::additive_weights)", "given Linformer projections (Desc::lowrank_proj)", "given Linformer projections (Desc::lowrank_proj)"][i];
                        return Err(binding_error(Status::InvalidArg, F, format!("grads.{}: the descriptor has no {}", WGRAD_NAMES[i], what)));
                    }
                    Some(h) if *len != h.extent => {
                        let shape = layout_of(h.raw.as_ptr()).shape;
                        return Err(binding_error(Status::Shape, F, format!("grads.{}: slice has {} elements, the weight {:?} has {}", WGRAD_NAMES[i], len, shape, h.extent)));
                    }
                    Some(_) => {}
                }
            }
        }
        let sinks = grads.sinks.as_mut().map(|s| (s.as_mut_ptr(), s.len()));
        if let Some((_, n)) = sinks {
            if n as i64 != self.heads {
                return Err(binding_error(Status::Shape, F, format!("grads.sinks: slice has {} elements, expected H = {} (one per query head)", n, self.heads)));
            }
        }
        let (general, additive, lowrank) = (g[0].is_some(), g[1..5].iter().any(Option::is_some), g[5..7].iter().any(Option::is_some));
        if lowrank && (general || additive) {
            return Err(binding_error(Status::InvalidArg, F, "grads.lowrank_e: Linformer and score-weight gradients cannot be computed in one call (the backward plan has one set of weight-gradient slots)".to_string()));
        }
        for (i, (p, _)) in ptrs.iter().enumerate() {
            let st = unsafe { sys::attn_tensor_set_data(self.handles[i].raw.as_ptr(), *p as *mut c_void) };
            check(ctx.ptr(), st, "attn_tensor_set_data")?;
        }
        let mut wh = [ptr::null_mut(); 7];
        for (i, gi) in g.iter().enumerate() {
            if let (Some((p, _)), Some(h)) = (gi, &self.wgrads[i]) {
                check(ctx.ptr(), unsafe { sys::attn_tensor_set_data(h.raw.as_ptr(), *p) }, "attn_tensor_set_data")?;
                wh[i] = h.raw.as_ptr();
            }
        }
        // Set, execute, unset: the C plan holds the gradient buffers only
        // during this call. The result (and the context's message, which
        // the unsetting calls clear) is taken before unsetting.
        let bp = self.raw.as_ptr();
        let mut set = [false; 4]; // sinks, general, additive, lowrank
        let mut res = Ok(());
        if let Some((p, n)) = sinks {
            res = check(ctx.ptr(), unsafe { sys::attn_backward_plan_set_sink_grad(bp, p, n as i64) }, "attn_backward_plan_set_sink_grad");
            set[0] = res.is_ok();
        }
        if res.is_ok() && general {
            res = check(ctx.ptr(), unsafe { sys::attn_backward_plan_set_general_grad(bp, wh[0]) }, "attn_backward_plan_set_general_grad");
            set[1] = res.is_ok();
        }
        if res.is_ok() && additive {
            res = check(ctx.ptr(), unsafe { sys::attn_backward_plan_set_additive_grads(bp, wh[1], wh[2], wh[3], wh[4]) }, "attn_backward_plan_set_additive_grads");
            set[2] = res.is_ok();
        }
        if res.is_ok() && lowrank {
            res = check(ctx.ptr(), unsafe { sys::attn_backward_plan_set_lowrank_grads(bp, wh[5], wh[6]) }, "attn_backward_plan_set_lowrank_grads");
            set[3] = res.is_ok();
        }
        if res.is_ok() {
            let h = |i: usize| self.handles[i].raw.as_ptr();
            let st = unsafe { sys::attn_backward_execute(bp, h(0), h(1), h(2), h(3), h(4), h(5), h(6), h(7), h(8), ptr::null_mut()) };
            res = check(ctx.ptr(), st, "attn_backward_execute");
        }
        // Unsetting a gradient the plan accepted cannot fail.
        unsafe {
            if set[0] {
                sys::attn_backward_plan_set_sink_grad(bp, ptr::null_mut(), 0);
            }
            if set[1] {
                sys::attn_backward_plan_set_general_grad(bp, ptr::null_mut());
            }
            if set[2] {
                sys::attn_backward_plan_set_additive_grads(bp, ptr::null_mut(), ptr::null_mut(), ptr::null_mut(), ptr::null_mut());
            }
            if set[3] {
                sys::attn_backward_plan_set_lowrank_grads(bp, ptr::null_mut(), ptr::null_mut());
            }
        }
        res
    }
}

impl<T: Float> Drop for TrainPlan<'_, T> {
    fn drop(&mut self) {
        // The backward plan borrows the forward plan: destroy it first (the
        // forward plan is a field, dropped after this).
        unsafe { sys::attn_backward_plan_destroy(self.raw.as_ptr()) }
    }
}

/// One-shot attention: plan, execute, drop. `out` is written in `dims`' layout.
pub fn attention<T: Float>(desc: &Desc<'_>, dims: &Dims, q: &[T], k: &[T], v: &[T], out: &mut [T]) -> Result<()> {
    let mut plan = Plan::<T>::new(desc, dims, false, false)?;
    plan.execute(q, k, v, out, None, None)
}

/// One-shot attention that also returns the weights [B,H,S_q,S_k] and lse [B,H,S_q].
#[allow(clippy::too_many_arguments)]
pub fn attention_with_stats<T: Float>(desc: &Desc<'_>, dims: &Dims, q: &[T], k: &[T], v: &[T], out: &mut [T], weights: &mut [T], lse: &mut [T]) -> Result<()> {
    let mut plan = Plan::<T>::new(desc, dims, true, true)?;
    plan.execute(q, k, v, out, Some(weights), Some(lse))
}

/// One-shot attention on 16-bit q, k, v (`T` = [`Bf16`] or [`F16`]) into
/// `out` of type `O`, which must be `T` or `f32` (others: [`Status::DType`]
/// from the library, naming out and q); optional weights and lse are f32.
/// Accumulation is f32; error bounds in attn.h (attn_plan_create).
#[allow(clippy::too_many_arguments)]
pub fn attention_half<T: Half, O: Element>(desc: &Desc<'_>, dims: &Dims, q: &[T], k: &[T], v: &[T], out: &mut [O], weights: Option<&mut [f32]>, lse: Option<&mut [f32]>) -> Result<()> {
    let ctx = desc.ctx;
    let wl = dims.weights_layout();
    let ll = dims.lse_layout();
    let hq = Handle::over(ctx, q, &dims.q_layout(), "q")?;
    let hk = Handle::over(ctx, k, &dims.k_layout(), "k")?;
    let hv = Handle::over(ctx, v, &dims.v_layout(), "v")?;
    let ho = Handle::over(ctx, &*out, &dims.out_layout(), "out")?;
    let hw = match &weights {
        Some(w) => Some(Handle::over(ctx, &**w, &wl, "weights")?),
        None => None,
    };
    let hl = match &lse {
        Some(l) => Some(Handle::over(ctx, &**l, &ll, "lse")?),
        None => None,
    };
    let opt = |h: &Option<Handle>| h.as_ref().map_or(ptr::null_mut(), |h| h.raw.as_ptr());
    let st = unsafe {
        sys::attn_forward(ctx.ptr(), desc.raw.as_ptr(), hq.raw.as_ptr(), hk.raw.as_ptr(), hv.raw.as_ptr(), ho.raw.as_ptr(), opt(&hw), opt(&hl))
    };
    check(ctx.ptr(), st, "attn_forward")
}

// ---------------------------------------------------------------------------
// Merging partial results

/// `attn_merge_states`: merge attention results of the same queries over two
/// disjoint key sets, (out_a, lse_a) and (out_b, lse_b), into the union's
/// (out, lse). The outs share `out_layout` ([B, H, S, d_v], any strides) and
/// the lses `lse_layout` ([B, H, S]). A side with lse −inf kept no key (its
/// out is not read); both −inf gives 0 and −inf.
#[allow(clippy::too_many_arguments)]
pub fn merge_states<T: Float>(ctx: &Context, out_a: &[T], lse_a: &[T], out_b: &[T], lse_b: &[T], out: &mut [T], lse: &mut [T], out_layout: &Layout, lse_layout: &Layout) -> Result<()> {
    let ha = Handle::over(ctx, out_a, out_layout, "out_a")?;
    let hla = Handle::over(ctx, lse_a, lse_layout, "lse_a")?;
    let hb = Handle::over(ctx, out_b, out_layout, "out_b")?;
    let hlb = Handle::over(ctx, lse_b, lse_layout, "lse_b")?;
    let ho = Handle::wrap(ctx, out_layout, out.as_mut_ptr(), "out")?;
    ho.check_len(out.len(), "out")?;
    let hl = Handle::wrap(ctx, lse_layout, lse.as_mut_ptr(), "lse")?;
    hl.check_len(lse.len(), "lse")?;
    let st = unsafe { sys::attn_merge_states(ctx.ptr(), ha.raw.as_ptr(), hla.raw.as_ptr(), hb.raw.as_ptr(), hlb.raw.as_ptr(), ho.raw.as_ptr(), hl.raw.as_ptr()) };
    check(ctx.ptr(), st, "attn_merge_states")
}

/// [`merge_states`] in place: (out_a, lse_a) becomes the union's result.
pub fn merge_states_into<T: Float>(ctx: &Context, out_a: &mut [T], lse_a: &mut [T], out_b: &[T], lse_b: &[T], out_layout: &Layout, lse_layout: &Layout) -> Result<()> {
    let ha = Handle::wrap(ctx, out_layout, out_a.as_mut_ptr(), "out_a")?;
    ha.check_len(out_a.len(), "out_a")?;
    let hla = Handle::wrap(ctx, lse_layout, lse_a.as_mut_ptr(), "lse_a")?;
    hla.check_len(lse_a.len(), "lse_a")?;
    let hb = Handle::over(ctx, out_b, out_layout, "out_b")?;
    let hlb = Handle::over(ctx, lse_b, lse_layout, "lse_b")?;
    let st = unsafe { sys::attn_merge_states(ctx.ptr(), ha.raw.as_ptr(), hla.raw.as_ptr(), hb.raw.as_ptr(), hlb.raw.as_ptr(), ha.raw.as_ptr(), hla.raw.as_ptr()) };
    check(ctx.ptr(), st, "attn_merge_states")
}

// ---------------------------------------------------------------------------
// Multi-head attention (heads.h)

/// Read a C tensor's shape and strides back into a [`Layout`].
fn layout_of(t: *const sys::attn_tensor) -> Layout {
    let rank = unsafe { sys::attn_tensor_rank(t) };
    let shape = (0..rank).map(|a| unsafe { sys::attn_tensor_dim(t, a) }).collect::<Vec<_>>();
    let strides = (0..rank).map(|a| unsafe { sys::attn_tensor_stride(t, a) }).collect::<Vec<_>>();
    Layout { shape, strides }
}

/// A heads.h view call: wrap x, let C make the view, read its layout back.
fn view_call<T: Float>(ctx: &Context, x: &[T], layout: &Layout, function: &'static str, call: impl FnOnce(*const sys::attn_tensor, *mut *mut sys::attn_tensor) -> sys::attn_status) -> Result<Layout> {
    let h = Handle::over(ctx, x, layout, "x")?;
    let mut view = ptr::null_mut();
    check(ctx.ptr(), call(h.raw.as_ptr(), &mut view), function)?;
    let l = layout_of(view);
    unsafe { sys::attn_tensor_destroy(view) };
    Ok(l)
}

/// `attn_heads_split_view`: the layout under which `x` ([B, S, H·D], last dim
/// contiguous) reads as [B, H, S, D] — the same slice, no copy. Use it as
/// q/k/v layout of a [`Plan`].
pub fn heads_split_view<T: Float>(ctx: &Context, x: &[T], layout: &Layout, num_heads: i64) -> Result<Layout> {
    view_call(ctx, x, layout, "attn_heads_split_view", |t, out| unsafe { sys::attn_heads_split_view(ctx.ptr(), t, num_heads, out) })
}

/// `attn_heads_merge_view`: the layout under which `x` ([B, H, S, D] with the
/// heads of a row side by side) reads as [B, S, H·D]; `Status::Layout`
/// otherwise (copy with [`heads_merge`]).
pub fn heads_merge_view<T: Float>(ctx: &Context, x: &[T], layout: &Layout) -> Result<Layout> {
    view_call(ctx, x, layout, "attn_heads_merge_view", |t, out| unsafe { sys::attn_heads_merge_view(ctx.ptr(), t, out) })
}

fn copy_call<T: Float>(ctx: &Context, x: (&[T], &Layout), out: (&mut [T], &Layout), function: &'static str, call: unsafe extern "C" fn(*mut sys::attn_context, *const sys::attn_tensor, *mut sys::attn_tensor) -> sys::attn_status) -> Result<()> {
    let hx = Handle::over(ctx, x.0, x.1, "x")?;
    let ho = Handle::wrap(ctx, out.1, out.0.as_mut_ptr(), "out")?;
    ho.check_len(out.0.len(), "out")?;
    check(ctx.ptr(), unsafe { call(ctx.ptr(), hx.raw.as_ptr(), ho.raw.as_ptr()) }, function)
}

/// `attn_heads_split`: copy x [B, S, H·D] into out [B, H, S, D] (any strides).
pub fn heads_split<T: Float>(ctx: &Context, x: &[T], x_layout: &Layout, out: &mut [T], out_layout: &Layout) -> Result<()> {
    copy_call(ctx, (x, x_layout), (out, out_layout), "attn_heads_split", sys::attn_heads_split)
}

/// `attn_heads_merge`: copy x [B, H, S, D] into out [B, S, H·D] (any strides).
pub fn heads_merge<T: Float>(ctx: &Context, x: &[T], x_layout: &Layout, out: &mut [T], out_layout: &Layout) -> Result<()> {
    copy_call(ctx, (x, x_layout), (out, out_layout), "attn_heads_merge", sys::attn_heads_merge)
}

/// Configuration of an [`Mha`] layer (`attn_mha_config`, minus the dtype,
/// which is the layer's element type). [`MhaConfig::new`] starts from the
/// library's defaults.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MhaConfig {
    pub embed_dim: i64,
    pub num_heads: i64,
    /// 0 = num_heads; 1 = multi-query.
    pub num_kv_heads: i64,
    /// Key input features; 0 = embed_dim.
    pub kdim: i64,
    /// Value input features; 0 = embed_dim.
    pub vdim: i64,
    pub bias: bool,
    pub add_bias_kv: bool,
    pub add_zero_attn: bool,
    /// Inputs/outputs [B, S, ·] (true) or [S, B, ·] (false, PyTorch's default).
    pub batch_first: bool,
}

impl MhaConfig {
    /// `attn_mha_config_init`'s defaults with E and H set.
    pub fn new(embed_dim: i64, num_heads: i64) -> MhaConfig {
        let c = raw_config();
        MhaConfig {
            embed_dim,
            num_heads,
            num_kv_heads: c.num_kv_heads,
            kdim: c.kdim,
            vdim: c.vdim,
            bias: c.bias != 0,
            add_bias_kv: c.add_bias_kv != 0,
            add_zero_attn: c.add_zero_attn != 0,
            batch_first: c.batch_first != 0,
        }
    }

    fn kv_features(&self) -> i64 {
        let hkv = if self.num_kv_heads == 0 { self.num_heads } else { self.num_kv_heads };
        if self.num_heads > 0 {
            hkv.saturating_mul(self.embed_dim / self.num_heads)
        } else {
            0
        }
    }
    fn kdim_or_e(&self) -> i64 {
        if self.kdim == 0 { self.embed_dim } else { self.kdim }
    }
    fn vdim_or_e(&self) -> i64 {
        if self.vdim == 0 { self.embed_dim } else { self.vdim }
    }
    /// Keys attention sees for `seq_k` input keys (+1 per appended bias/zero row).
    pub fn attended_keys(&self, seq_k: i64) -> i64 {
        seq_k + self.add_bias_kv as i64 + self.add_zero_attn as i64
    }

    /// PyTorch shapes of the nine parameters, in `attn_mha_weights` order
    /// (the names in `MHA_PARAMS`).
    fn param_shapes(&self) -> [Vec<i64>; 9] {
        let (e, ekv) = (self.embed_dim, self.kv_features());
        let in_rows = e.saturating_add(ekv.saturating_mul(2));
        [
            vec![in_rows, e],
            vec![e, e],
            vec![ekv, self.kdim_or_e()],
            vec![ekv, self.vdim_or_e()],
            vec![in_rows],
            vec![e, e],
            vec![e],
            vec![1, 1, ekv],
            vec![1, 1, ekv],
        ]
    }
}

/// The parameters' names (PyTorch's), in `attn_mha_weights` / `attn_mha_grads` order.
const MHA_PARAMS: [&str; 9] = ["in_proj_weight", "q_proj_weight", "k_proj_weight", "v_proj_weight", "in_proj_bias", "out_proj_weight", "out_proj_bias", "bias_k", "bias_v"];

fn raw_config() -> sys::attn_mha_config {
    let mut c = std::mem::MaybeUninit::<sys::attn_mha_config>::zeroed();
    unsafe {
        sys::attn_mha_config_init(c.as_mut_ptr());
        c.assume_init()
    }
}

/// The layer's parameters: borrowed slices in PyTorch's layout (row-major
/// [out_features, in_features]), named as in nn.MultiheadAttention. Unused
/// ones stay `None`. With E_kv = H_kv·E/H: in_proj_weight [E + 2·E_kv, E] or
/// q/k/v_proj_weight [E, E] / [E_kv, kdim] / [E_kv, vdim]; in_proj_bias
/// [E + 2·E_kv]; out_proj_weight [E, E]; out_proj_bias [E]; bias_k, bias_v
/// [1, 1, E_kv].
#[derive(Clone, Copy, Debug)]
pub struct MhaWeights<'a, T> {
    pub in_proj_weight: Option<&'a [T]>,
    pub q_proj_weight: Option<&'a [T]>,
    pub k_proj_weight: Option<&'a [T]>,
    pub v_proj_weight: Option<&'a [T]>,
    pub in_proj_bias: Option<&'a [T]>,
    pub out_proj_weight: Option<&'a [T]>,
    pub out_proj_bias: Option<&'a [T]>,
    pub bias_k: Option<&'a [T]>,
    pub bias_v: Option<&'a [T]>,
}

impl<'a, T> Default for MhaWeights<'a, T> {
    fn default() -> Self {
        MhaWeights { in_proj_weight: None, q_proj_weight: None, k_proj_weight: None, v_proj_weight: None, in_proj_bias: None, out_proj_weight: None, out_proj_bias: None, bias_k: None, bias_v: None }
    }
}

/// One weight: its slice, the C struct field it goes to, its name and PyTorch shape.
type WeightRow<'a, 'f, T> = (Option<&'a [T]>, &'f mut *const sys::attn_tensor, &'static str, Vec<i64>);

/// `attn_mha`: PyTorch's nn.MultiheadAttention (dropout 0) with grouped K/V
/// heads. Borrows its context and its weight slices for `'a` (the C layer
/// reads them at every execute, so they cannot change while it exists).
///
/// ```no_run
/// use attn::{Context, Mha, MhaConfig, MhaDims, MhaWeights, WeightsOut};
/// # fn main() -> Result<(), attn::Error> {
/// let ctx = Context::new()?;
/// let cfg = MhaConfig { batch_first: true, ..MhaConfig::new(4, 2) };
/// let (w_in, b_in, w_out, b_out) = (vec![0.1f32; 48], vec![0.0f32; 12], vec![0.1f32; 16], vec![0.0f32; 4]);
/// let weights = MhaWeights { in_proj_weight: Some(&w_in), in_proj_bias: Some(&b_in), out_proj_weight: Some(&w_out), out_proj_bias: Some(&b_out), ..Default::default() };
/// let layer = Mha::<f32>::new(&ctx, &cfg, &weights)?;
/// let x = vec![0.5f32; 2 * 3 * 4]; // [B=2, S=3, E=4]
/// let keep = vec![1u8, 1, 0, 1, 1, 1]; // key_padding_mask: NON-ZERO = ATTEND
/// let mut out = vec![0.0f32; x.len()];
/// let mut avg = vec![0.0f32; 2 * 3 * 3];
/// layer.forward(None, &MhaDims { batch: 2, seq_q: 3, seq_k: 3 }, &x, &x, &x, Some(&keep), &mut out, WeightsOut::Averaged(&mut avg))?;
/// # Ok(()) }
/// ```
///
/// The weights must outlive the layer:
/// ```compile_fail
/// use attn::{Context, Mha, MhaConfig, MhaWeights};
/// let ctx = Context::new().unwrap();
/// let layer;
/// {
///     let w = vec![0.1f32; 16];
///     layer = Mha::<f32>::new(&ctx, &MhaConfig::new(4, 2), &MhaWeights { out_proj_weight: Some(&w), ..Default::default() });
/// }
/// drop(layer);
/// ```
pub struct Mha<'a, T: Float> {
    ctx: &'a Context,
    raw: NonNull<sys::attn_mha>,
    cfg: MhaConfig,
    _weights: Vec<Handle>, // destroyed after the layer (see Drop)
    _borrows: PhantomData<&'a [T]>,
}

impl<'a, T: Float> Mha<'a, T> {
    pub fn new(ctx: &'a Context, cfg: &MhaConfig, weights: &MhaWeights<'a, T>) -> Result<Mha<'a, T>> {
        let mut c = raw_config();
        c.embed_dim = cfg.embed_dim;
        c.num_heads = cfg.num_heads;
        c.num_kv_heads = cfg.num_kv_heads;
        c.kdim = cfg.kdim;
        c.vdim = cfg.vdim;
        c.bias = cfg.bias as i32;
        c.add_bias_kv = cfg.add_bias_kv as i32;
        c.add_zero_attn = cfg.add_zero_attn as i32;
        c.batch_first = cfg.batch_first as i32;
        c.dtype = T::DTYPE;
        let mut w = std::mem::MaybeUninit::<sys::attn_mha_weights>::zeroed();
        let mut w = unsafe {
            sys::attn_mha_weights_init(w.as_mut_ptr());
            w.assume_init()
        };
        let e = cfg.embed_dim;
        let hkv = if cfg.num_kv_heads == 0 { cfg.num_heads } else { cfg.num_kv_heads };
        let valid = e >= 1 && cfg.num_heads >= 1 && e % cfg.num_heads == 0 && hkv >= 1 && cfg.num_heads % hkv == 0 && cfg.kdim >= 0 && cfg.vdim >= 0;
        let mut handles = Vec::new();
        if valid {
            // One row per weight: slice, its field, PyTorch shape. (An invalid
            // configuration passes none and lets the library name the problem.)
            let [s0, s1, s2, s3, s4, s5, s6, s7, s8] = cfg.param_shapes();
            let table: [WeightRow<'a, '_, T>; 9] = [
                (weights.in_proj_weight, &mut w.in_proj_weight, MHA_PARAMS[0], s0),
                (weights.q_proj_weight, &mut w.q_proj_weight, MHA_PARAMS[1], s1),
                (weights.k_proj_weight, &mut w.k_proj_weight, MHA_PARAMS[2], s2),
                (weights.v_proj_weight, &mut w.v_proj_weight, MHA_PARAMS[3], s3),
                (weights.in_proj_bias, &mut w.in_proj_bias, MHA_PARAMS[4], s4),
                (weights.out_proj_weight, &mut w.out_proj_weight, MHA_PARAMS[5], s5),
                (weights.out_proj_bias, &mut w.out_proj_bias, MHA_PARAMS[6], s6),
                (weights.bias_k, &mut w.bias_k, MHA_PARAMS[7], s7),
                (weights.bias_v, &mut w.bias_v, MHA_PARAMS[8], s8),
            ];
            for (slice, field, name, shape) in table {
                if let Some(s) = slice {
                    let l = Layout::contiguous(&shape);
                    let h = Handle::over(ctx, s, &l, name)?;
                    if s.len() != h.extent {
                        return Err(binding_error(Status::Shape, "attn::Mha::new", format!("{}: slice has {} elements, shape {:?} needs {}", name, s.len(), shape, h.extent)));
                    }
                    *field = h.raw.as_ptr();
                    handles.push(h);
                }
            }
        }
        let mut raw = ptr::null_mut();
        let st = unsafe { sys::attn_mha_create(ctx.ptr(), &c, &w, &mut raw) };
        check(ctx.ptr(), st, "attn_mha_create")?;
        Ok(Mha { ctx, raw: NonNull::new(raw).expect("attn_mha_create returned OK and NULL"), cfg: *cfg, _weights: handles, _borrows: PhantomData })
    }

    pub fn config(&self) -> &MhaConfig {
        &self.cfg
    }

    /// Layout of a [seq, feature] input/output for `batch` items: [B, S, F]
    /// if batch_first, else [S, B, F] (contiguous).
    pub fn seq_layout(&self, batch: i64, seq: i64, features: i64) -> Layout {
        if self.cfg.batch_first {
            Layout::contiguous(&[batch, seq, features])
        } else {
            Layout::contiguous(&[seq, batch, features])
        }
    }

    /// Plan for contiguous inputs of these sizes (see [`MhaDims`]).
    pub fn plan<'p>(&'p self, desc: Option<&'p Desc<'p>>, dims: &MhaDims, key_padding_mask: bool, weights: NeedWeights) -> Result<MhaPlan<'p, T>> {
        let (b, l, s, e) = (dims.batch, dims.seq_q, dims.seq_k, self.cfg.embed_dim);
        let sx = self.cfg.attended_keys(s);
        let q = self.seq_layout(b, l, e);
        let kpm = Layout::contiguous(&[b, s]);
        let w = match weights {
            NeedWeights::No => None,
            NeedWeights::Averaged => Some(Layout::contiguous(&[b, l, sx])),
            NeedWeights::PerHead => Some(Layout::contiguous(&[b, self.cfg.num_heads, l, sx])),
        };
        self.plan_with_layouts(
            desc,
            [&q, &self.seq_layout(b, s, self.cfg.kdim_or_e()), &self.seq_layout(b, s, self.cfg.vdim_or_e()), &q],
            if key_padding_mask { Some(&kpm) } else { None },
            w.as_ref(),
        )
    }

    /// Plan for any layouts of query, key, value, out (rank 3, last dim
    /// contiguous), key_padding_mask (u8 [B, S]) and weights ([B, L, S'] or
    /// [B, H, L, S']).
    pub fn plan_with_layouts<'p>(&'p self, desc: Option<&'p Desc<'p>>, qkvo: [&Layout; 4], key_padding_mask: Option<&Layout>, weights: Option<&Layout>) -> Result<MhaPlan<'p, T>> {
        let ctx = self.ctx;
        let mut handles: [Option<Handle>; 6] = Default::default();
        let layouts = [Some(qkvo[0]), Some(qkvo[1]), Some(qkvo[2]), key_padding_mask, Some(qkvo[3]), weights];
        for (i, l) in layouts.iter().enumerate() {
            if let Some(l) = l {
                // Data pointers are set at execute; plan creation reads only metadata.
                handles[i] = Some(if i == 3 {
                    Handle::wrap::<u8>(ctx, l, NonNull::<u8>::dangling().as_ptr(), MHA_NAMES[i])?
                } else {
                    Handle::wrap::<T>(ctx, l, NonNull::<T>::dangling().as_ptr(), MHA_NAMES[i])?
                });
            }
        }
        let p = |i: usize| handles[i].as_ref().map_or(ptr::null(), |h: &Handle| h.raw.as_ptr() as *const _);
        let d = desc.map_or(ptr::null(), |d| d.raw.as_ptr() as *const _);
        let mut raw = ptr::null_mut();
        let st = unsafe { sys::attn_mha_plan_create(self.raw.as_ptr(), d, p(0), p(1), p(2), p(3), p(4), p(5), &mut raw) };
        check(ctx.ptr(), st, "attn_mha_plan_create")?;
        Ok(MhaPlan { mha: self, raw: NonNull::new(raw).expect("attn_mha_plan_create returned OK and NULL"), handles, _desc: PhantomData })
    }

    /// One-shot forward (plan, execute, drop), like nn.MultiheadAttention's
    /// forward: `weights` receives the averaged or per-head probabilities.
    /// key_padding_mask: u8 [B, S], **non-zero = attend** (PyTorch: True = ignore).
    #[allow(clippy::too_many_arguments)]
    pub fn forward(&self, desc: Option<&Desc<'_>>, dims: &MhaDims, query: &[T], key: &[T], value: &[T], key_padding_mask: Option<&[u8]>, out: &mut [T], weights: WeightsOut<'_, T>) -> Result<()> {
        let (need, w) = match weights {
            WeightsOut::None => (NeedWeights::No, None),
            WeightsOut::Averaged(w) => (NeedWeights::Averaged, Some(w)),
            WeightsOut::PerHead(w) => (NeedWeights::PerHead, Some(w)),
        };
        let mut plan = self.plan(desc, dims, key_padding_mask.is_some(), need)?;
        plan.execute(query, key, value, key_padding_mask, out, w)
    }
}

impl<T: Float> Drop for Mha<'_, T> {
    fn drop(&mut self) {
        unsafe { sys::attn_mha_destroy(self.raw.as_ptr()) }
        // self._weights drop after: the layer no longer refers to them.
    }
}

/// Sizes of an MHA problem: batch, query length L, key length S (before any
/// appended bias/zero key).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MhaDims {
    pub batch: i64,
    pub seq_q: i64,
    pub seq_k: i64,
}

/// Which attention weights an [`MhaPlan`] writes (PyTorch's need_weights /
/// average_attn_weights): none, [B, L, S'] averaged over heads, or [B, H, L, S'].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NeedWeights {
    No,
    Averaged,
    PerHead,
}

/// The weights output of [`Mha::forward`].
pub enum WeightsOut<'w, T> {
    None,
    Averaged(&'w mut [T]),
    PerHead(&'w mut [T]),
}

const MHA_NAMES: [&str; 6] = ["query", "key", "value", "key_padding_mask", "out", "weights"];

/// `attn_mha_plan`: the layer bound to layouts, with its workspace. Borrows
/// the layer and the descriptor it was made with.
pub struct MhaPlan<'p, T: Float> {
    mha: &'p Mha<'p, T>,
    raw: NonNull<sys::attn_mha_plan>,
    handles: [Option<Handle>; 6], // query, key, value, key_padding_mask, out, weights
    _desc: PhantomData<&'p Desc<'p>>,
}

impl<'p, T: Float> MhaPlan<'p, T> {
    /// Bytes of workspace the plan holds.
    pub fn workspace_size(&self) -> usize {
        unsafe { sys::attn_mha_plan_workspace_size(self.raw.as_ptr()) }
    }

    /// Run on these slices (self-attention: pass the same slice three times).
    /// key_padding_mask and weights exactly when the plan was made with them.
    /// On error nothing is written.
    pub fn execute(&mut self, query: &[T], key: &[T], value: &[T], key_padding_mask: Option<&[u8]>, out: &mut [T], weights: Option<&mut [T]>) -> Result<()> {
        let ptrs: [Option<(*mut c_void, usize)>; 6] = [
            Some((query.as_ptr() as *mut c_void, query.len())),
            Some((key.as_ptr() as *mut c_void, key.len())),
            Some((value.as_ptr() as *mut c_void, value.len())),
            key_padding_mask.map(|m| (m.as_ptr() as *mut c_void, m.len())),
            Some((out.as_mut_ptr() as *mut c_void, out.len())),
            weights.map(|w| (w.as_mut_ptr() as *mut c_void, w.len())),
        ];
        let ctx = self.mha.ctx;
        for i in 0..6 {
            match (&self.handles[i], ptrs[i]) {
                (Some(h), Some((_, len))) => h.check_len(len, MHA_NAMES[i])?,
                (None, None) => {}
                (Some(_), None) => return Err(binding_error(Status::Mismatch, "attn::MhaPlan::execute", format!("{}: the plan was created with it; pass it", MHA_NAMES[i]))),
                (None, Some(_)) => return Err(binding_error(Status::Mismatch, "attn::MhaPlan::execute", format!("{}: the plan was created without it; pass None", MHA_NAMES[i]))),
            }
        }
        for i in 0..6 {
            if let (Some(h), Some((p, _))) = (&self.handles[i], ptrs[i]) {
                check(ctx.ptr(), unsafe { sys::attn_tensor_set_data(h.raw.as_ptr(), p) }, "attn_tensor_set_data")?;
            }
        }
        let p = |i: usize| self.handles[i].as_ref().map_or(ptr::null_mut(), |h| h.raw.as_ptr());
        let st = unsafe { sys::attn_mha_plan_execute(self.raw.as_ptr(), p(0), p(1), p(2), p(3), p(4), p(5)) };
        check(ctx.ptr(), st, "attn_mha_plan_execute")
    }
}

impl<T: Float> Drop for MhaPlan<'_, T> {
    fn drop(&mut self) {
        unsafe { sys::attn_mha_plan_destroy(self.raw.as_ptr()) }
    }
}

// ---------------------------------------------------------------------------
// Training the multi-head layer (heads.h: attn_mha_backward_plan)

/// Where [`MhaTrainPlan::backward`] writes the parameter gradients: one
/// optional mutable slice per parameter, with the names of [`MhaWeights`]
/// and the parameter's shape (contiguous, exactly its element count; a
/// slice of another length is [`Status::Shape`]). `None` = that gradient is
/// not wanted. Gradients are overwritten, not accumulated into. Give only
/// parameters the layer has (`in_proj_weight` for a packed layer,
/// `q/k/v_proj_weight` for a separate one, `bias_k`/`bias_v` with
/// add_bias_kv); others are [`Status::InvalidArg`] from the library.
#[derive(Debug)]
pub struct MhaGrads<'g, T> {
    /// ∂L/∂in_proj_weight, [E + 2·E_kv, E].
    pub in_proj_weight: Option<&'g mut [T]>,
    /// ∂L/∂q_proj_weight, [E, E].
    pub q_proj_weight: Option<&'g mut [T]>,
    /// ∂L/∂k_proj_weight, [E_kv, kdim].
    pub k_proj_weight: Option<&'g mut [T]>,
    /// ∂L/∂v_proj_weight, [E_kv, vdim].
    pub v_proj_weight: Option<&'g mut [T]>,
    /// ∂L/∂in_proj_bias, [E + 2·E_kv].
    pub in_proj_bias: Option<&'g mut [T]>,
    /// ∂L/∂out_proj_weight, [E, E].
    pub out_proj_weight: Option<&'g mut [T]>,
    /// ∂L/∂out_proj_bias, `[E]`.
    pub out_proj_bias: Option<&'g mut [T]>,
    /// ∂L/∂bias_k, [1, 1, E_kv].
    pub bias_k: Option<&'g mut [T]>,
    /// ∂L/∂bias_v, [1, 1, E_kv].
    pub bias_v: Option<&'g mut [T]>,
}

impl<'g, T> Default for MhaGrads<'g, T> {
    /// No gradient wanted.
    fn default() -> Self {
        MhaGrads { in_proj_weight: None, q_proj_weight: None, k_proj_weight: None, v_proj_weight: None, in_proj_bias: None, out_proj_weight: None, out_proj_bias: None, bias_k: None, bias_v: None }
    }
}

impl<'g, T> MhaGrads<'g, T> {
    /// Pointer and length of each slice, in `attn_mha_grads` order (`MHA_PARAMS`).
    fn raw(&mut self) -> [Option<(*mut c_void, usize)>; 9] {
        fn r<T>(s: &mut Option<&mut [T]>) -> Option<(*mut c_void, usize)> {
            s.as_mut().map(|s| (s.as_mut_ptr() as *mut c_void, s.len()))
        }
        [
            r(&mut self.in_proj_weight),
            r(&mut self.q_proj_weight),
            r(&mut self.k_proj_weight),
            r(&mut self.v_proj_weight),
            r(&mut self.in_proj_bias),
            r(&mut self.out_proj_weight),
            r(&mut self.out_proj_bias),
            r(&mut self.bias_k),
            r(&mut self.bias_v),
        ]
    }
}

const MHA_TRAIN_NAMES: [&str; 9] = ["query", "key", "value", "key_padding_mask", "out", "dout", "dquery", "dkey", "dvalue"];

impl<'a, T: Float> Mha<'a, T> {
    /// Training steps (`attn_mha_backward_plan`) for contiguous inputs of
    /// these sizes, laid out as for [`Mha::plan`]: query/out [B, L, E],
    /// key [B, S, kdim], value [B, S, vdim] (or [S, B, ·] unless
    /// batch_first), key_padding_mask u8 [B, S] when `key_padding_mask`.
    /// `desc`: attention options the attention backward supports (None =
    /// plain scaled-dot); others are [`Status::Unsupported`].
    pub fn train_plan<'p>(&'p self, desc: Option<&'p Desc<'p>>, dims: &MhaDims, key_padding_mask: bool) -> Result<MhaTrainPlan<'p, T>> {
        let (b, l, s, e) = (dims.batch, dims.seq_q, dims.seq_k, self.cfg.embed_dim);
        let q = self.seq_layout(b, l, e);
        let kpm = Layout::contiguous(&[b, s]);
        self.train_plan_with_layouts(
            desc,
            [&q, &self.seq_layout(b, s, self.cfg.kdim_or_e()), &self.seq_layout(b, s, self.cfg.vdim_or_e()), &q],
            if key_padding_mask { Some(&kpm) } else { None },
        )
    }

    /// Training steps for any layouts of query, key, value, out (rank 3,
    /// last dim contiguous) and key_padding_mask (u8 [B, S]). The input
    /// gradients dquery, dkey, dvalue take the layouts of query, key, value;
    /// dout the layout of out.
    pub fn train_plan_with_layouts<'p>(&'p self, desc: Option<&'p Desc<'p>>, qkvo: [&Layout; 4], key_padding_mask: Option<&Layout>) -> Result<MhaTrainPlan<'p, T>> {
        let ctx = self.ctx;
        // query, key, value, key_padding_mask, out, dout, dquery, dkey, dvalue
        let layouts = [Some(qkvo[0]), Some(qkvo[1]), Some(qkvo[2]), key_padding_mask, Some(qkvo[3]), Some(qkvo[3]), Some(qkvo[0]), Some(qkvo[1]), Some(qkvo[2])];
        let mut handles: [Option<Handle>; 9] = Default::default();
        for (i, l) in layouts.iter().enumerate() {
            if let Some(l) = l {
                // Data pointers are set at each call; plan creation reads only metadata.
                handles[i] = Some(if i == 3 {
                    Handle::wrap::<u8>(ctx, l, NonNull::<u8>::dangling().as_ptr(), MHA_TRAIN_NAMES[i])?
                } else {
                    Handle::wrap::<T>(ctx, l, NonNull::<T>::dangling().as_ptr(), MHA_TRAIN_NAMES[i])?
                });
            }
        }
        let mut grads = Vec::with_capacity(9);
        for (shape, name) in self.cfg.param_shapes().iter().zip(MHA_PARAMS.iter()) {
            grads.push(Handle::wrap::<T>(ctx, &Layout::contiguous(shape), NonNull::<T>::dangling().as_ptr(), name)?);
        }
        let p = |i: usize| handles[i].as_ref().map_or(ptr::null(), |h: &Handle| h.raw.as_ptr() as *const _);
        let d = desc.map_or(ptr::null(), |d| d.raw.as_ptr() as *const _);
        let mut raw = ptr::null_mut();
        let st = unsafe { sys::attn_mha_backward_plan_create(self.raw.as_ptr(), d, p(0), p(1), p(2), p(3), p(4), &mut raw) };
        check(ctx.ptr(), st, "attn_mha_backward_plan_create")?;
        let raw = NonNull::new(raw).expect("attn_mha_backward_plan_create returned OK and NULL");
        let saved_size = unsafe { sys::attn_mha_backward_saved_size(raw.as_ptr()) };
        let self_attention = qkvo[0] == qkvo[1] && qkvo[0] == qkvo[2];
        Ok(MhaTrainPlan { mha: self, raw, handles, grads, saved: vec![0u8; saved_size], forwarded: false, self_attention, _desc: PhantomData })
    }
}

/// `attn_mha_backward_plan`: training steps of an [`Mha`] layer (f32/f64)
/// for fixed shapes. Borrows the layer and the descriptor it was made with,
/// and owns the `saved` activations one step needs
/// ([`MhaTrainPlan::saved_size`] bytes).
///
/// A step is [`forward`](MhaTrainPlan::forward) (out, bitwise what the
/// layer's [`MhaPlan`] writes, with the activations kept) then
/// [`backward`](MhaTrainPlan::backward) on the same inputs with dout =
/// ∂L/∂out: the input gradients (each optional) and the parameter gradients
/// of [`MhaGrads`]. Self-attention (query = key = value = x) uses
/// [`backward_self`](MhaTrainPlan::backward_self), whose dx receives the sum
/// dquery + dkey + dvalue, as autograd gives for an input used three times.
/// Results are bitwise identical for any thread count; neither call
/// allocates. The layer's weights are borrowed immutably while the layer
/// lives, so they hold the same values for both calls.
///
/// ```
/// use attn::{Context, Mha, MhaConfig, MhaDims, MhaGrads, MhaWeights};
/// # fn main() -> Result<(), attn::Error> {
/// let ctx = Context::new()?;
/// let cfg = MhaConfig { batch_first: true, ..MhaConfig::new(4, 2) };
/// let (w_in, b_in, w_out, b_out) = (vec![0.1f64; 48], vec![0.0f64; 12], vec![0.1f64; 16], vec![0.0f64; 4]);
/// let weights = MhaWeights { in_proj_weight: Some(&w_in), in_proj_bias: Some(&b_in), out_proj_weight: Some(&w_out), out_proj_bias: Some(&b_out), ..Default::default() };
/// let layer = Mha::<f64>::new(&ctx, &cfg, &weights)?;
/// let mut step = layer.train_plan(None, &MhaDims { batch: 2, seq_q: 3, seq_k: 3 }, false)?;
/// let x = vec![0.5f64; 2 * 3 * 4]; // [B=2, S=3, E=4]
/// let mut out = vec![0.0f64; x.len()];
/// step.forward(&x, &x, &x, None, &mut out)?;
/// let dout = vec![1.0f64; out.len()]; // L = Σ out
/// let (mut dx, mut d_w_in, mut d_b_out) = (vec![0.0f64; x.len()], vec![0.0f64; 48], vec![0.0f64; 4]);
/// let mut grads = MhaGrads { in_proj_weight: Some(&mut d_w_in), out_proj_bias: Some(&mut d_b_out), ..Default::default() };
/// step.backward_self(&x, None, &dout, Some(&mut dx), &mut grads)?;
/// assert!(d_b_out.iter().all(|&g| g == 6.0)); // B·L rows of dout
/// # Ok(()) }
/// ```
///
/// A plan cannot outlive its layer:
/// ```compile_fail
/// use attn::{Context, Mha, MhaConfig, MhaDims, MhaWeights};
/// let ctx = Context::new().unwrap();
/// let w = vec![0.1f64; 64];
/// let weights = MhaWeights { in_proj_weight: Some(&w[..48]), out_proj_weight: Some(&w[48..]), ..Default::default() };
/// let step;
/// {
///     let layer = Mha::<f64>::new(&ctx, &MhaConfig { bias: false, ..MhaConfig::new(4, 2) }, &weights).unwrap();
///     step = layer.train_plan(None, &MhaDims { batch: 1, seq_q: 2, seq_k: 2 }, false).unwrap();
/// }
/// drop(step);
/// ```
pub struct MhaTrainPlan<'p, T: Float> {
    mha: &'p Mha<'p, T>,
    raw: NonNull<sys::attn_mha_backward_plan>,
    handles: [Option<Handle>; 9], // MHA_TRAIN_NAMES
    grads: Vec<Handle>,           // MHA_PARAMS, contiguous parameter shapes
    saved: Vec<u8>,
    forwarded: bool, // saved holds a successful forward's activations
    self_attention: bool, // query, key and value have one layout
    _desc: PhantomData<&'p Desc<'p>>,
}

impl<'p, T: Float> MhaTrainPlan<'p, T> {
    /// Bytes of workspace the plan holds (its attention plans' included).
    pub fn workspace_size(&self) -> usize {
        unsafe { sys::attn_mha_backward_plan_workspace_size(self.raw.as_ptr()) }
    }

    /// Bytes of the `saved` activations the plan owns (one step in flight).
    pub fn saved_size(&self) -> usize {
        self.saved.len()
    }

    fn handle(&self, i: usize) -> *mut sys::attn_tensor {
        self.handles[i].as_ref().map_or(ptr::null_mut(), |h| h.raw.as_ptr())
    }

    /// Check the slices at handle positions `at` (present exactly when the
    /// plan has that operand, long enough), then point the handles at them.
    fn bind(&self, at: &[usize], ptrs: &[Option<(*mut c_void, usize)>], function: &'static str) -> Result<()> {
        for (&i, p) in at.iter().zip(ptrs) {
            match (&self.handles[i], p) {
                (Some(h), Some((_, len))) => h.check_len(*len, MHA_TRAIN_NAMES[i])?,
                (None, None) => {}
                (Some(_), None) => return Err(binding_error(Status::Mismatch, function, format!("{}: the plan was created with it; pass it", MHA_TRAIN_NAMES[i]))),
                (None, Some(_)) => return Err(binding_error(Status::Mismatch, function, format!("{}: the plan was created without it; pass None", MHA_TRAIN_NAMES[i]))),
            }
        }
        for (&i, p) in at.iter().zip(ptrs) {
            if let (Some(h), Some((p, _))) = (&self.handles[i], p) {
                check(self.mha.ctx.ptr(), unsafe { sys::attn_tensor_set_data(h.raw.as_ptr(), *p) }, "attn_tensor_set_data")?;
            }
        }
        Ok(())
    }

    /// `attn_mha_forward_train`: the layer's output for these inputs (as
    /// [`MhaPlan::execute`] without weights), keeping the activations for
    /// [`backward`](MhaTrainPlan::backward). key_padding_mask (u8 [B, S],
    /// **non-zero = attend**) exactly when the plan was made with it. On
    /// error nothing is written to `out`.
    pub fn forward(&mut self, query: &[T], key: &[T], value: &[T], key_padding_mask: Option<&[u8]>, out: &mut [T]) -> Result<()> {
        let ptrs = [
            Some((query.as_ptr() as *mut c_void, query.len())),
            Some((key.as_ptr() as *mut c_void, key.len())),
            Some((value.as_ptr() as *mut c_void, value.len())),
            key_padding_mask.map(|m| (m.as_ptr() as *mut c_void, m.len())),
            Some((out.as_mut_ptr() as *mut c_void, out.len())),
        ];
        self.bind(&[0, 1, 2, 3, 4], &ptrs, "attn::MhaTrainPlan::forward")?;
        self.forwarded = false;
        let (saved, n) = (self.saved.as_mut_ptr() as *mut c_void, self.saved.len());
        let st = unsafe { sys::attn_mha_forward_train(self.raw.as_ptr(), self.handle(0), self.handle(1), self.handle(2), self.handle(3), self.handle(4), saved, n) };
        check(self.mha.ctx.ptr(), st, "attn_mha_forward_train")?;
        self.forwarded = true;
        Ok(())
    }

    /// `attn_mha_backward_execute`: the gradients of the last
    /// [`forward`](MhaTrainPlan::forward), which must have run on the same
    /// query, key, value and key_padding_mask, from `dout` = ∂L/∂out (out's
    /// layout). Writes (overwrites) ∂L/∂query, ∂L/∂key, ∂L/∂value into the
    /// given slices (layouts of query, key, value; None = not wanted) and
    /// the parameter gradients given in `grads`. For self-attention use
    /// [`backward_self`](MhaTrainPlan::backward_self). On error nothing is
    /// written.
    #[allow(clippy::too_many_arguments)]
    pub fn backward(&mut self, query: &[T], key: &[T], value: &[T], key_padding_mask: Option<&[u8]>, dout: &[T], dquery: Option<&mut [T]>, dkey: Option<&mut [T]>, dvalue: Option<&mut [T]>, grads: &mut MhaGrads<'_, T>) -> Result<()> {
        let x = |s: &[T]| (s.as_ptr() as *mut c_void, s.len());
        let dx = |s: Option<&mut [T]>| s.map(|s| (s.as_mut_ptr() as *mut c_void, s.len()));
        self.run_backward([x(query), x(key), x(value)], key_padding_mask, dout, [dx(dquery), dx(dkey), dx(dvalue)], grads, "attn::MhaTrainPlan::backward")
    }

    /// [`backward`](MhaTrainPlan::backward) for self-attention: `x` was
    /// passed as query, key and value to [`forward`](MhaTrainPlan::forward),
    /// and `dx` (x's layout; None = not wanted) receives ∂L/∂x, the sum of
    /// the query, key and value gradients. The plan's query, key and value
    /// layouts must be one layout (else [`Status::Mismatch`]).
    pub fn backward_self(&mut self, x: &[T], key_padding_mask: Option<&[u8]>, dout: &[T], dx: Option<&mut [T]>, grads: &mut MhaGrads<'_, T>) -> Result<()> {
        const F: &str = "attn::MhaTrainPlan::backward_self";
        if !self.self_attention {
            return Err(binding_error(Status::Mismatch, F, "query, key, value: the plan was created with different layouts for them (not self-attention); use backward".to_string()));
        }
        let xp = (x.as_ptr() as *mut c_void, x.len());
        let dxp = dx.map(|s| (s.as_mut_ptr() as *mut c_void, s.len()));
        // The same memory and metadata for dquery, dkey and dvalue: the
        // library writes their sum.
        self.run_backward([xp, xp, xp], key_padding_mask, dout, [dxp, dxp, dxp], grads, F)
    }

    fn run_backward(&mut self, x: [(*mut c_void, usize); 3], key_padding_mask: Option<&[u8]>, dout: &[T], dx: [Option<(*mut c_void, usize)>; 3], grads: &mut MhaGrads<'_, T>, function: &'static str) -> Result<()> {
        if !self.forwarded {
            return Err(binding_error(Status::InvalidArg, function, "saved: no activations; run forward on these inputs first".to_string()));
        }
        // Everything is checked before any handle is pointed anywhere.
        for (j, d) in dx.iter().enumerate() {
            if let (Some(h), Some((_, len))) = (&self.handles[6 + j], d) {
                h.check_len(*len, MHA_TRAIN_NAMES[6 + j])?;
            }
        }
        let g = grads.raw();
        for (i, gi) in g.iter().enumerate() {
            if let Some((_, len)) = gi {
                if *len != self.grads[i].extent {
                    let shapes = self.mha.cfg.param_shapes();
                    return Err(binding_error(Status::Shape, function, format!("grads.{}: slice has {} elements, the parameter {:?} has {}", MHA_PARAMS[i], len, shapes[i], self.grads[i].extent)));
                }
            }
        }
        let ins = [Some(x[0]), Some(x[1]), Some(x[2]), key_padding_mask.map(|m| (m.as_ptr() as *mut c_void, m.len())), Some((dout.as_ptr() as *mut c_void, dout.len()))];
        self.bind(&[0, 1, 2, 3, 5], &ins, function)?;
        let ctx = self.mha.ctx;
        let mut dxh = [ptr::null_mut(); 3];
        for (j, d) in dx.iter().enumerate() {
            if let Some((p, _)) = d {
                let h = self.handle(6 + j);
                check(ctx.ptr(), unsafe { sys::attn_tensor_set_data(h, *p) }, "attn_tensor_set_data")?;
                dxh[j] = h;
            }
        }
        let mut cg = std::mem::MaybeUninit::<sys::attn_mha_grads>::zeroed();
        let mut cg = unsafe {
            sys::attn_mha_grads_init(cg.as_mut_ptr());
            cg.assume_init()
        };
        let fields: [&mut *mut sys::attn_tensor; 9] = [
            &mut cg.in_proj_weight,
            &mut cg.q_proj_weight,
            &mut cg.k_proj_weight,
            &mut cg.v_proj_weight,
            &mut cg.in_proj_bias,
            &mut cg.out_proj_weight,
            &mut cg.out_proj_bias,
            &mut cg.bias_k,
            &mut cg.bias_v,
        ];
        for (i, field) in fields.into_iter().enumerate() {
            if let Some((p, _)) = g[i] {
                let h = self.grads[i].raw.as_ptr();
                check(ctx.ptr(), unsafe { sys::attn_tensor_set_data(h, p) }, "attn_tensor_set_data")?;
                *field = h;
            }
        }
        let st = unsafe {
            sys::attn_mha_backward_execute(
                self.raw.as_ptr(),
                self.handle(0),
                self.handle(1),
                self.handle(2),
                self.handle(3),
                self.handle(5),
                self.saved.as_ptr() as *const c_void,
                self.saved.len(),
                dxh[0],
                dxh[1],
                dxh[2],
                &cg,
            )
        };
        check(ctx.ptr(), st, "attn_mha_backward_execute")
    }
}

impl<T: Float> Drop for MhaTrainPlan<'_, T> {
    fn drop(&mut self) {
        unsafe { sys::attn_mha_backward_plan_destroy(self.raw.as_ptr()) }
        // The handles drop after: the plan no longer refers to them.
    }
}

// ---------------------------------------------------------------------------
// KV cache (kvcache.h)

c_enum!(
    /// Storage mode of a [`KvCache`] (`attn_kvcache_mode`).
    KvCacheMode {
        Linear = sys::ATTN_KVCACHE_LINEAR,
        Ring = sys::ATTN_KVCACHE_RING,
    }
);
c_enum!(
    /// How a [`KvCache`] stores K and V rows (`attn_kvcache_storage`).
    KvStorage {
        Native = sys::ATTN_KVCACHE_STORE_NATIVE,
        Bf16 = sys::ATTN_KVCACHE_STORE_BF16,
        F16 = sys::ATTN_KVCACHE_STORE_F16,
        Int8 = sys::ATTN_KVCACHE_STORE_INT8,
        Int4 = sys::ATTN_KVCACHE_STORE_INT4,
    }
);

impl KvStorage {
    fn from_code(c: std::os::raw::c_int) -> KvStorage {
        match c {
            sys::ATTN_KVCACHE_STORE_BF16 => KvStorage::Bf16,
            sys::ATTN_KVCACHE_STORE_F16 => KvStorage::F16,
            sys::ATTN_KVCACHE_STORE_INT8 => KvStorage::Int8,
            sys::ATTN_KVCACHE_STORE_INT4 => KvStorage::Int4,
            _ => KvStorage::Native,
        }
    }
}

/// Configuration of a [`KvCache`] (`attn_kvcache_config`, minus the dtype,
/// which is the cache's element type). [`KvCacheConfig::new`] starts from the
/// library's defaults.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KvCacheConfig {
    pub batch: i64,
    pub heads_kv: i64,
    /// Positions stored per batch item.
    pub capacity: i64,
    pub d_k: i64,
    /// 0 = d_k.
    pub d_v: i64,
    pub mode: KvCacheMode,
    /// Linear mode: appends past capacity reallocate instead of failing.
    pub grow: bool,
    /// `Bf16`, `F16`, `Int8`, `Int4`: f32 caches only; no float views
    /// (see [`KvCache::view_raw`]).
    pub storage: KvStorage,
    /// `Int8`/`Int4`: positions per K scale and channels per V scale
    /// (must divide d_v); 0 = the library's default.
    pub group_size: i64,
}

impl KvCacheConfig {
    /// `attn_kvcache_config_init`'s defaults (B = 1, H_kv = 1, linear, native)
    /// with capacity and d_k set.
    pub fn new(capacity: i64, d_k: i64) -> KvCacheConfig {
        let mut c = std::mem::MaybeUninit::<sys::attn_kvcache_config>::zeroed();
        let c = unsafe {
            sys::attn_kvcache_config_init(c.as_mut_ptr());
            c.assume_init()
        };
        KvCacheConfig {
            batch: c.batch,
            heads_kv: c.heads_kv,
            capacity,
            d_k,
            d_v: c.d_v,
            mode: if c.mode == sys::ATTN_KVCACHE_RING { KvCacheMode::Ring } else { KvCacheMode::Linear },
            grow: c.grow != 0,
            storage: KvStorage::from_code(c.storage),
            group_size: c.group_size,
        }
    }
    fn d_v_or_k(&self) -> i64 {
        if self.d_v == 0 { self.d_k } else { self.d_v }
    }
}

/// `attn_kvcache`: the keys and values of every position a batch of
/// sequences has produced, for step-by-step decoding. Borrows its context.
///
/// Appending and rolling back take `&self`, so plans (which borrow the cache
/// and cannot outlive it) stay usable between appends; while a [`KvView`] of
/// the storage is alive they return `Status::InvalidArg` instead of changing
/// memory the view's slices show. On any error the cache is unchanged.
///
/// ```no_run
/// use attn::{Causal, Context, Desc, KvCache, KvCacheConfig};
/// # fn main() -> Result<(), attn::Error> {
/// let ctx = Context::new()?;
/// let cache = KvCache::<f32>::new(&ctx, &KvCacheConfig { heads_kv: 2, ..KvCacheConfig::new(1024, 64) })?;
/// let mut desc = Desc::new(&ctx)?;
/// desc.causal(Causal::BottomRight)?;
/// let mut step = cache.plan(&desc, 8, 1, false)?; // H = 8 query heads, 1 new token
/// let (k, v, q) = (vec![0.1f32; 2 * 64], vec![0.2f32; 2 * 64], vec![0.3f32; 8 * 64]);
/// let mut out = vec![0.0f32; 8 * 64];
/// for _ in 0..10 {
///     cache.append(&k, &v, 1, None)?;
///     step.execute(&q, &mut out, None, None)?;
/// }
/// # Ok(()) }
/// ```
///
/// A plan cannot outlive its cache:
/// ```compile_fail
/// use attn::{Context, Desc, KvCache, KvCacheConfig};
/// let ctx = Context::new().unwrap();
/// let desc = Desc::new(&ctx).unwrap();
/// let plan;
/// {
///     let cache = KvCache::<f32>::new(&ctx, &KvCacheConfig::new(16, 4)).unwrap();
///     plan = cache.plan(&desc, 1, 1, false).unwrap();
/// }
/// drop(plan);
/// ```
pub struct KvCache<'c, T: Float> {
    ctx: &'c Context,
    raw: NonNull<sys::attn_kvcache>,
    cfg: KvCacheConfig,
    views: std::cell::Cell<usize>, // live KvViews
    _t: PhantomData<T>,
}

impl<'c, T: Float> KvCache<'c, T> {
    pub fn new(ctx: &'c Context, cfg: &KvCacheConfig) -> Result<KvCache<'c, T>> {
        let mut c = std::mem::MaybeUninit::<sys::attn_kvcache_config>::zeroed();
        let mut c = unsafe {
            sys::attn_kvcache_config_init(c.as_mut_ptr());
            c.assume_init()
        };
        c.batch = cfg.batch;
        c.heads_kv = cfg.heads_kv;
        c.capacity = cfg.capacity;
        c.d_k = cfg.d_k;
        c.d_v = cfg.d_v;
        c.dtype = T::DTYPE;
        c.mode = cfg.mode.code();
        c.grow = cfg.grow as i32;
        c.storage = cfg.storage.code();
        c.group_size = cfg.group_size;
        let mut raw = ptr::null_mut();
        let st = unsafe { sys::attn_kvcache_create(ctx.ptr(), &c, &mut raw) };
        check(ctx.ptr(), st, "attn_kvcache_create")?;
        let mut cfg = *cfg;
        cfg.d_v = cfg.d_v_or_k();
        Ok(KvCache { ctx, raw: NonNull::new(raw).expect("attn_kvcache_create returned OK and NULL"), cfg, views: std::cell::Cell::new(0), _t: PhantomData })
    }

    /// The configuration (d_v resolved).
    pub fn config(&self) -> &KvCacheConfig {
        &self.cfg
    }

    fn mutable(&self, function: &'static str) -> Result<()> {
        if self.views.get() > 0 {
            return Err(binding_error(Status::InvalidArg, function, "cache: a KvView of it is alive; drop the view before changing the cache".to_string()));
        }
        Ok(())
    }

    fn per_item<'a>(&self, values: Option<&'a [i64]>, what: &'static str, function: &'static str) -> Result<*const i64> {
        match values {
            None => Ok(ptr::null()),
            Some(v) if v.len() as i64 == self.cfg.batch => Ok(v.as_ptr()),
            Some(v) => Err(binding_error(Status::InvalidArg, function, format!("{}: {} values, the cache has batch {}", what, v.len(), self.cfg.batch))),
        }
    }

    /// Contiguous [B, H_kv, n, d] layout of `n` new rows of width `d`.
    pub fn rows_layout(&self, n: i64, d: i64) -> Layout {
        Layout::contiguous(&[self.cfg.batch, self.cfg.heads_kv, n, d])
    }

    /// `attn_kvcache_append` of contiguous k_new [B, H_kv, n, d_k] and
    /// v_new [B, H_kv, n, d_v]; `counts`: rows per batch item (0..=n), None = n each.
    pub fn append(&self, k_new: &[T], v_new: &[T], n: i64, counts: Option<&[i64]>) -> Result<()> {
        let (kl, vl) = (self.rows_layout(n, self.cfg.d_k), self.rows_layout(n, self.cfg.d_v));
        self.append_with_layouts((k_new, &kl), (v_new, &vl), counts)
    }

    /// `attn_kvcache_append` with any layouts (logical [B, H_kv, n, d]).
    pub fn append_with_layouts(&self, k_new: (&[T], &Layout), v_new: (&[T], &Layout), counts: Option<&[i64]>) -> Result<()> {
        self.mutable("attn::KvCache::append")?;
        let c = self.per_item(counts, "counts", "attn::KvCache::append")?;
        let hk = Handle::over(self.ctx, k_new.0, k_new.1, "k_new")?;
        let hv = Handle::over(self.ctx, v_new.0, v_new.1, "v_new")?;
        let st = unsafe { sys::attn_kvcache_append(self.raw.as_ptr(), hk.raw.as_ptr(), hv.raw.as_ptr(), c) };
        check(self.ctx.ptr(), st, "attn_kvcache_append")
    }

    /// `attn_kvcache_truncate`: roll item b back to `lengths[b]` positions.
    pub fn truncate(&self, lengths: &[i64]) -> Result<()> {
        self.mutable("attn::KvCache::truncate")?;
        let l = self.per_item(Some(lengths), "lengths", "attn::KvCache::truncate")?;
        check(self.ctx.ptr(), unsafe { sys::attn_kvcache_truncate(self.raw.as_ptr(), l) }, "attn_kvcache_truncate")
    }

    /// `attn_kvcache_set_keep_first`: a ring cache keeps positions 0..n−1 for
    /// good (StreamingLLM's sink tokens); call on an empty cache.
    pub fn set_keep_first(&self, n: i64) -> Result<()> {
        self.mutable("attn::KvCache::set_keep_first")?;
        check(self.ctx.ptr(), unsafe { sys::attn_kvcache_set_keep_first(self.raw.as_ptr(), n) }, "attn_kvcache_set_keep_first")
    }

    /// Empty the cache (every length 0).
    pub fn reset(&self) -> Result<()> {
        self.truncate(&vec![0; self.cfg.batch as usize])
    }

    /// Positions item `b` has received (its next position); None if b is out of range.
    pub fn length(&self, b: i64) -> Option<i64> {
        let n = unsafe { sys::attn_kvcache_length(self.raw.as_ptr(), b) };
        if n < 0 { None } else { Some(n) }
    }
    /// The oldest position item `b` still stores; None if b is out of range.
    pub fn first(&self, b: i64) -> Option<i64> {
        let n = unsafe { sys::attn_kvcache_first(self.raw.as_ptr(), b) };
        if n < 0 { None } else { Some(n) }
    }
    /// Every item's length.
    pub fn lengths(&self) -> Vec<i64> {
        (0..self.cfg.batch).map(|b| self.length(b).unwrap_or(-1)).collect()
    }
    /// Every item's oldest stored position.
    pub fn firsts(&self) -> Vec<i64> {
        (0..self.cfg.batch).map(|b| self.first(b).unwrap_or(-1)).collect()
    }
    /// Positions per item the storage holds now (grows with `grow`).
    pub fn capacity(&self) -> i64 {
        unsafe { sys::attn_kvcache_capacity(self.raw.as_ptr()) }
    }
    /// Bytes the cache holds.
    pub fn memory_size(&self) -> usize {
        unsafe { sys::attn_kvcache_memory_size(self.raw.as_ptr()) }
    }

    /// `attn_kvcache_view`: the storage as slices (no copy), K
    /// [B, H_kv, capacity, d_k] and V [B, H_kv, capacity, d_v] contiguous.
    /// While the view lives, append/truncate return an error. bf16 storage:
    /// `Status::Unsupported`.
    pub fn view(&self) -> Result<KvView<'_, 'c, T>> {
        let (mut k, mut v) = (ptr::null_mut(), ptr::null_mut());
        let st = unsafe { sys::attn_kvcache_view(self.raw.as_ptr(), &mut k, &mut v) };
        check(self.ctx.ptr(), st, "attn_kvcache_view")?;
        let (kl, vl) = (layout_of(k), layout_of(v));
        let (kp, vp) = unsafe { (sys::attn_tensor_data(k) as *const T, sys::attn_tensor_data(v) as *const T) };
        unsafe {
            sys::attn_tensor_destroy(k);
            sys::attn_tensor_destroy(v);
        }
        let n = |l: &Layout| l.shape.iter().product::<i64>() as usize;
        // The cache owns this memory; it does not change while the view
        // lives (mutation is refused) and the view cannot outlive the cache.
        let (ks, vs) = unsafe { (std::slice::from_raw_parts(kp, n(&kl)), std::slice::from_raw_parts(vp, n(&vl))) };
        self.views.set(self.views.get() + 1);
        Ok(KvView { cache: self, k: ks, v: vs, k_layout: kl, v_layout: vl })
    }

    /// `attn_kvcache_view_raw`: the stored bytes with their scales (any
    /// storage, no copy). While the view lives, append/truncate return an
    /// error.
    pub fn view_raw(&self) -> Result<KvRawView<'_, 'c, T>> {
        let mut r = std::mem::MaybeUninit::<sys::attn_kvcache_raw>::zeroed();
        let mut r = unsafe {
            sys::attn_kvcache_raw_init(r.as_mut_ptr());
            r.assume_init()
        };
        let st = unsafe { sys::attn_kvcache_view_raw(self.raw.as_ptr(), &mut r) };
        check(self.ctx.ptr(), st, "attn_kvcache_view_raw")?;
        let (b, h, c) = (r.batch as usize, r.heads_kv as usize, r.capacity as usize);
        // The cache owns this memory; it does not change while the view
        // lives (mutation is refused) and the view cannot outlive the cache.
        let bytes = |p: *const std::os::raw::c_void, row: i64| unsafe { std::slice::from_raw_parts(p as *const u8, b * h * c * row as usize) };
        let quant = r.group_size > 0;
        let (ks, vs, kr) = if quant {
            let g = r.group_size as usize;
            unsafe {
                (
                    std::slice::from_raw_parts(r.k_scales, b * h * r.k_groups as usize * 2 * r.d_k as usize),
                    std::slice::from_raw_parts(r.v_scales, b * h * c * (r.d_v as usize / g) * 2),
                    std::slice::from_raw_parts(r.k_residual, b * h * g * r.d_k as usize),
                )
            }
        } else {
            (&[][..], &[][..], &[][..])
        };
        self.views.set(self.views.get() + 1);
        Ok(KvRawView { cache: self, raw: r, k: bytes(r.k, r.k_row_bytes), v: bytes(r.v, r.v_row_bytes), k_scales: ks, v_scales: vs, k_residual: kr })
    }

    /// A plan for `n` new queries of `heads` heads in contiguous
    /// [B, H, n, d] q/out (and [B, H, n] lse when `lse`).
    pub fn plan<'p>(&'p self, desc: &'p Desc<'p>, heads: i64, n: i64, lse: bool) -> Result<KvPlan<'p, T>> {
        let b = self.cfg.batch;
        let l = Layout::contiguous(&[b, heads, n]);
        self.plan_with_layouts(desc, &Layout::contiguous(&[b, heads, n, self.cfg.d_k]), &Layout::contiguous(&[b, heads, n, self.cfg.d_v]), if lse { Some(&l) } else { None })
    }

    /// `attn_kvcache_plan_create` for any layouts of q [B, H, n, d_k],
    /// out [B, H, n, d_v] and lse [B, H, n] (last dims of q/out contiguous).
    pub fn plan_with_layouts<'p>(&'p self, desc: &'p Desc<'p>, q: &Layout, out: &Layout, lse: Option<&Layout>) -> Result<KvPlan<'p, T>> {
        let layouts = [Some(q), Some(out), lse];
        let mut handles: [Option<Handle>; 3] = Default::default();
        for (i, l) in layouts.iter().enumerate() {
            if let Some(l) = l {
                // The data pointer is set at execute; plan creation reads only metadata.
                handles[i] = Some(Handle::wrap::<T>(self.ctx, l, NonNull::<T>::dangling().as_ptr(), KV_NAMES[i])?);
            }
        }
        let p = |i: usize| handles[i].as_ref().map_or(ptr::null(), |h: &Handle| h.raw.as_ptr() as *const _);
        let mut raw = ptr::null_mut();
        let st = unsafe { sys::attn_kvcache_plan_create(self.raw.as_ptr(), desc.raw.as_ptr(), p(0), p(1), p(2), &mut raw) };
        check(self.ctx.ptr(), st, "attn_kvcache_plan_create")?;
        Ok(KvPlan { cache: self, raw: NonNull::new(raw).expect("attn_kvcache_plan_create returned OK and NULL"), handles, _desc: PhantomData })
    }
}

impl<T: Float> Drop for KvCache<'_, T> {
    fn drop(&mut self) {
        unsafe { sys::attn_kvcache_destroy(self.raw.as_ptr()) }
    }
}

/// Read-only slices of a [`KvCache`]'s storage (see [`KvCache::view`]).
/// The slices borrow the view, so they cannot outlive it (and the cache
/// refuses changes while it lives):
/// ```compile_fail
/// use attn::{Context, KvCache, KvCacheConfig};
/// let ctx = Context::new().unwrap();
/// let cache = KvCache::<f32>::new(&ctx, &KvCacheConfig::new(16, 4)).unwrap();
/// let k = cache.view().unwrap().k();
/// cache.append(&[0.0; 4], &[0.0; 4], 1, None).unwrap();
/// println!("{}", k[0]);
/// ```
pub struct KvView<'v, 'c, T: Float> {
    cache: &'v KvCache<'c, T>,
    k: &'v [T],
    v: &'v [T],
    k_layout: Layout,
    v_layout: Layout,
}

impl<'v, 'c, T: Float> KvView<'v, 'c, T> {
    /// K storage, [B, H_kv, capacity, d_k] contiguous.
    pub fn k(&self) -> &[T] {
        self.k
    }
    /// V storage, [B, H_kv, capacity, d_v] contiguous.
    pub fn v(&self) -> &[T] {
        self.v
    }
    pub fn k_layout(&self) -> &Layout {
        &self.k_layout
    }
    pub fn v_layout(&self) -> &Layout {
        &self.v_layout
    }
    /// Storage row of position `pos` of item `b` (pos mod capacity), or None
    /// if the item does not store that position ([first, length)).
    pub fn row(&self, b: i64, pos: i64) -> Option<i64> {
        let (first, len) = (self.cache.first(b)?, self.cache.length(b)?);
        if pos < first || pos >= len {
            return None;
        }
        Some(pos % self.k_layout.shape[2])
    }
    /// The key of position `pos` of item `b`, head `h` (None if not stored).
    pub fn key(&self, b: i64, h: i64, pos: i64) -> Option<&[T]> {
        self.row_of(self.k, &self.k_layout, b, h, pos)
    }
    /// The value of position `pos` of item `b`, head `h` (None if not stored).
    pub fn value(&self, b: i64, h: i64, pos: i64) -> Option<&[T]> {
        self.row_of(self.v, &self.v_layout, b, h, pos)
    }
    fn row_of<'s>(&'s self, data: &'s [T], l: &Layout, b: i64, h: i64, pos: i64) -> Option<&'s [T]> {
        if h < 0 || h >= l.shape[1] {
            return None;
        }
        let r = self.row(b, pos)?;
        let off = (b * l.strides[0] + h * l.strides[1] + r * l.strides[2]) as usize;
        Some(&data[off..off + l.shape[3] as usize])
    }
}

impl<T: Float> Drop for KvView<'_, '_, T> {
    fn drop(&mut self) {
        self.cache.views.set(self.cache.views.get() - 1);
    }
}

/// The stored bytes of a [`KvCache`] with their scales (see
/// [`KvCache::view_raw`] and `attn_kvcache_raw` in kvcache.h).
pub struct KvRawView<'v, 'c, T: Float> {
    cache: &'v KvCache<'c, T>,
    raw: sys::attn_kvcache_raw,
    k: &'v [u8],
    v: &'v [u8],
    k_scales: &'v [u16],
    v_scales: &'v [u16],
    k_residual: &'v [f32],
}

/// IEEE half bits to f32.
fn half_to_f32(h: u16) -> f32 {
    let (e, m) = (((h >> 10) & 0x1f) as i32, (h & 0x3ff) as f32);
    let v = match e {
        0 => m * (2.0f32).powi(-24),
        31 => if m == 0.0 { f32::INFINITY } else { f32::NAN },
        _ => (1024.0 + m) * (2.0f32).powi(e - 25),
    };
    if h & 0x8000 != 0 { -v } else { v }
}

impl<'v, 'c, T: Float> KvRawView<'v, 'c, T> {
    pub fn storage(&self) -> KvStorage {
        KvStorage::from_code(self.raw.storage)
    }
    /// G (int8/int4), else 0.
    pub fn group_size(&self) -> i64 {
        self.raw.group_size
    }
    /// K rows, [B, H_kv, capacity] rows of `k_row_bytes()` bytes.
    pub fn k_bytes(&self) -> &[u8] {
        self.k
    }
    /// V rows, [B, H_kv, capacity] rows of `v_row_bytes()` bytes.
    pub fn v_bytes(&self) -> &[u8] {
        self.v
    }
    pub fn k_row_bytes(&self) -> i64 {
        self.raw.k_row_bytes
    }
    pub fn v_row_bytes(&self) -> i64 {
        self.raw.v_row_bytes
    }
    /// Half-float (scale, min) per K channel: [B, H_kv, k_groups, 2, d_k] (int only).
    pub fn k_scales(&self) -> &[u16] {
        self.k_scales
    }
    /// Half-float (scale, min) per V group: [B, H_kv, capacity, d_v / G, 2] (int only).
    pub fn v_scales(&self) -> &[u16] {
        self.v_scales
    }
    /// f32 K rows of the newest incomplete group: [B, H_kv, G, d_k] (int only).
    pub fn k_residual(&self) -> &[f32] {
        self.k_residual
    }
    /// Bytes of rows, scales and residual.
    pub fn total_bytes(&self) -> i64 {
        self.raw.total_bytes
    }
    /// The key (`is_k`) or value of position `pos` of item `b`, head `h`,
    /// decoded to f32 as attention reads it (None if not stored).
    pub fn decode(&self, is_k: bool, b: i64, h: i64, pos: i64) -> Option<Vec<f32>> {
        let r = &self.raw;
        let (first, len) = (self.cache.first(b)?, self.cache.length(b)?);
        if h < 0 || h >= r.heads_kv || pos < first || pos >= len {
            return None;
        }
        let d = if is_k { r.d_k } else { r.d_v } as usize;
        let rb = if is_k { r.k_row_bytes } else { r.v_row_bytes } as usize;
        let bh = (b * r.heads_kv + h) as usize;
        let row = (pos % r.capacity) as usize;
        let bytes = &(if is_k { self.k } else { self.v })[(bh * r.capacity as usize + row) * rb..][..rb];
        let half = |i: usize| half_to_f32(u16::from_le_bytes([bytes[2 * i], bytes[2 * i + 1]]));
        let code = |x: usize| -> f32 {
            if r.storage == sys::ATTN_KVCACHE_STORE_INT8 {
                bytes[x] as f32
            } else {
                let byte = bytes[x / 32 * 16 + x % 16];
                (if x % 32 >= 16 { byte >> 4 } else { byte & 15 }) as f32
            }
        };
        let g = r.group_size as usize;
        Some(match r.storage {
            sys::ATTN_KVCACHE_STORE_BF16 => (0..d).map(|x| f32::from_bits((u16::from_le_bytes([bytes[2 * x], bytes[2 * x + 1]]) as u32) << 16)).collect(),
            sys::ATTN_KVCACHE_STORE_F16 => (0..d).map(half).collect(),
            sys::ATTN_KVCACHE_STORE_NATIVE => {
                let es = if T::DTYPE == sys::ATTN_DTYPE_F64 { 8 } else { 4 };
                (0..d).map(|x| if es == 8 { f64::from_le_bytes(bytes[8 * x..8 * x + 8].try_into().unwrap()) as f32 } else { f32::from_le_bytes(bytes[4 * x..4 * x + 4].try_into().unwrap()) }).collect()
            }
            _ if is_k => {
                let p = pos as usize;
                if pos >= len / r.group_size * r.group_size {
                    self.k_residual[(bh * g + p % g) * d..][..d].to_vec()
                } else {
                    let sc = &self.k_scales[(bh * r.k_groups as usize + (p / g) % r.k_groups as usize) * 2 * d..][..2 * d];
                    (0..d).map(|x| half_to_f32(sc[x]) * code(x) + half_to_f32(sc[d + x])).collect()
                }
            }
            _ => {
                let ng = d / g;
                let sc = &self.v_scales[(bh * r.capacity as usize + row) * ng * 2..][..ng * 2];
                (0..d).map(|x| half_to_f32(sc[x / g * 2]) * code(x) + half_to_f32(sc[x / g * 2 + 1])).collect()
            }
        })
    }
}

impl<T: Float> Drop for KvRawView<'_, '_, T> {
    fn drop(&mut self) {
        self.cache.views.set(self.cache.views.get() - 1);
    }
}

const KV_NAMES: [&str; 3] = ["q", "out", "lse"];

/// `attn_kvcache_plan`: new queries attending to a cache. Borrows the cache
/// and the descriptor it was made with.
pub struct KvPlan<'p, T: Float> {
    cache: &'p KvCache<'p, T>,
    raw: NonNull<sys::attn_kvcache_plan>,
    handles: [Option<Handle>; 3], // q, out, lse
    _desc: PhantomData<&'p Desc<'p>>,
}

impl<'p, T: Float> KvPlan<'p, T> {
    /// Bytes of workspace the plan holds.
    pub fn workspace_size(&self) -> usize {
        unsafe { sys::attn_kvcache_plan_workspace_size(self.raw.as_ptr()) }
    }

    /// `attn_kvcache_plan_execute`: out (and lse, exactly when the plan has
    /// it) for the queries against the cache's current contents.
    /// `query_counts`: queries per item (pass the append's counts), None = n
    /// each. On error nothing is written.
    pub fn execute(&mut self, q: &[T], out: &mut [T], lse: Option<&mut [T]>, query_counts: Option<&[i64]>) -> Result<()> {
        let ptrs: [Option<(*mut c_void, usize)>; 3] = [
            Some((q.as_ptr() as *mut c_void, q.len())),
            Some((out.as_mut_ptr() as *mut c_void, out.len())),
            lse.map(|l| (l.as_mut_ptr() as *mut c_void, l.len())),
        ];
        let ctx = self.cache.ctx;
        for i in 0..3 {
            match (&self.handles[i], ptrs[i]) {
                (Some(h), Some((_, len))) => h.check_len(len, KV_NAMES[i])?,
                (None, None) => {}
                (Some(_), None) => return Err(binding_error(Status::Mismatch, "attn::KvPlan::execute", format!("{}: the plan was created with it; pass it", KV_NAMES[i]))),
                (None, Some(_)) => return Err(binding_error(Status::Mismatch, "attn::KvPlan::execute", format!("{}: the plan was created without it; pass None", KV_NAMES[i]))),
            }
        }
        let c = self.cache.per_item(query_counts, "query_counts", "attn::KvPlan::execute")?;
        for i in 0..3 {
            if let (Some(h), Some((p, _))) = (&self.handles[i], ptrs[i]) {
                check(ctx.ptr(), unsafe { sys::attn_tensor_set_data(h.raw.as_ptr(), p) }, "attn_tensor_set_data")?;
            }
        }
        let p = |i: usize| self.handles[i].as_ref().map_or(ptr::null_mut(), |h| h.raw.as_ptr());
        let st = unsafe { sys::attn_kvcache_plan_execute(self.raw.as_ptr(), p(0), p(1), p(2), c) };
        check(ctx.ptr(), st, "attn_kvcache_plan_execute")
    }
}

impl<T: Float> Drop for KvPlan<'_, T> {
    fn drop(&mut self) {
        unsafe { sys::attn_kvcache_plan_destroy(self.raw.as_ptr()) }
    }
}

// ---------------------------------------------------------------------------
// Paged KV cache (paged.h)

/// Configuration of a [`PagedCache`] (`attn_paged_config`, minus the dtype,
/// which is the cache's element type). [`PagedConfig::new`] starts from the
/// C defaults.
#[derive(Clone, Copy, Debug)]
pub struct PagedConfig {
    pub heads_kv: i64,
    pub d_k: i64,
    /// 0 = d_k.
    pub d_v: i64,
    pub block_size: i64,
    pub num_blocks: i64,
    pub max_seqs: i64,
    /// 0 = num_blocks · block_size.
    pub max_seq_len: i64,
    /// Native, or (f32 caches) Bf16, F16, Int8, Int4: the contiguous cache's formats.
    pub storage: KvStorage,
    /// Int8/Int4: positions per K scale and channels per V scale; must divide
    /// d_v and block_size. 0 = the library's default.
    pub group_size: i64,
}

impl PagedConfig {
    /// `attn_paged_config_init`'s defaults with the required fields set.
    pub fn new(num_blocks: i64, d_k: i64) -> PagedConfig {
        let mut c = std::mem::MaybeUninit::<sys::attn_paged_config>::zeroed();
        let c = unsafe {
            sys::attn_paged_config_init(c.as_mut_ptr());
            c.assume_init()
        };
        PagedConfig { heads_kv: c.heads_kv, d_k, d_v: 0, block_size: c.block_size, num_blocks, max_seqs: c.max_seqs, max_seq_len: 0, storage: KvStorage::Native, group_size: 0 }
    }
}

/// `attn_paged_cache`: a pool of fixed-size blocks shared by many sequences,
/// each with its own block table; forks share blocks (copy-on-write).
/// Mutating methods take `&mut self`, so Rust's borrow rules give the
/// serialisation paged.h asks of callers; plans borrow the cache shared.
///
/// ```
/// use attn::{Causal, Context, Desc, PagedCache, PagedConfig};
/// let ctx = Context::new()?;
/// let mut cache = PagedCache::<f32>::new(&ctx, &PagedConfig { heads_kv: 1, block_size: 4, ..PagedConfig::new(8, 2) })?;
/// let s = cache.create_seq()?;
/// cache.append(s, &[1.0, 0.0, 0.0, 1.0], &[1.0, 2.0, 3.0, 4.0], 2)?; // 2 positions
/// let t = cache.fork(s)?;
/// let mut desc = Desc::new(&ctx)?;
/// desc.causal(Causal::BottomRight)?;
/// let mut plan = cache.plan(&ctx, &desc, 2, 1, 1, false)?;
/// let mut out = [0.0f32; 4];
/// plan.execute(&[s, t], &[0.0, 0.0, 0.0, 0.0], &mut out, None, None)?;
/// assert!((out[0] - 2.0).abs() < 1e-6 && (out[1] - 3.0).abs() < 1e-6);
/// # Ok::<(), attn::Error>(())
/// ```
pub struct PagedCache<'c, T: Float> {
    ctx: &'c Context,
    raw: NonNull<sys::attn_paged_cache>,
    cfg: PagedConfig,
    _t: PhantomData<T>,
}

impl<'c, T: Float> PagedCache<'c, T> {
    pub fn new(ctx: &'c Context, cfg: &PagedConfig) -> Result<PagedCache<'c, T>> {
        let mut c = std::mem::MaybeUninit::<sys::attn_paged_config>::zeroed();
        let mut c = unsafe {
            sys::attn_paged_config_init(c.as_mut_ptr());
            c.assume_init()
        };
        c.heads_kv = cfg.heads_kv;
        c.d_k = cfg.d_k;
        c.d_v = cfg.d_v;
        c.block_size = cfg.block_size;
        c.num_blocks = cfg.num_blocks;
        c.max_seqs = cfg.max_seqs;
        c.max_seq_len = cfg.max_seq_len;
        c.dtype = T::DTYPE;
        c.storage = cfg.storage.code();
        c.group_size = cfg.group_size;
        let mut raw = ptr::null_mut();
        let st = unsafe { sys::attn_paged_create(ctx.ptr(), &c, &mut raw) };
        check(ctx.ptr(), st, "attn_paged_create")?;
        let mut cfg = *cfg;
        if cfg.d_v == 0 {
            cfg.d_v = cfg.d_k;
        }
        Ok(PagedCache { ctx, raw: NonNull::new(raw).expect("attn_paged_create returned OK and NULL"), cfg, _t: PhantomData })
    }

    /// The configuration (d_v resolved).
    pub fn config(&self) -> &PagedConfig {
        &self.cfg
    }
    /// `attn_paged_seq_create`: a new empty sequence's id.
    pub fn create_seq(&mut self) -> Result<i64> {
        let mut s = -1;
        check(self.ctx.ptr(), unsafe { sys::attn_paged_seq_create(self.raw.as_ptr(), &mut s) }, "attn_paged_seq_create")?;
        Ok(s)
    }
    /// `attn_paged_seq_free`.
    pub fn free_seq(&mut self, seq: i64) -> Result<()> {
        check(self.ctx.ptr(), unsafe { sys::attn_paged_seq_free(self.raw.as_ptr(), seq) }, "attn_paged_seq_free")
    }
    /// `attn_paged_fork`: a new sequence sharing every block of `src`.
    pub fn fork(&mut self, src: i64) -> Result<i64> {
        let mut s = -1;
        check(self.ctx.ptr(), unsafe { sys::attn_paged_fork(self.raw.as_ptr(), src, &mut s) }, "attn_paged_fork")?;
        Ok(s)
    }
    /// `attn_paged_append` of contiguous k_new [H_kv, n, d_k], v_new [H_kv, n, d_v].
    pub fn append(&mut self, seq: i64, k_new: &[T], v_new: &[T], n: i64) -> Result<()> {
        let kl = Layout::contiguous(&[self.cfg.heads_kv, n, self.cfg.d_k]);
        let vl = Layout::contiguous(&[self.cfg.heads_kv, n, self.cfg.d_v]);
        let hk = Handle::over(self.ctx, k_new, &kl, "k_new")?;
        let hv = Handle::over(self.ctx, v_new, &vl, "v_new")?;
        let st = unsafe { sys::attn_paged_append(self.raw.as_ptr(), seq, hk.raw.as_ptr(), hv.raw.as_ptr()) };
        check(self.ctx.ptr(), st, "attn_paged_append")
    }
    /// `attn_paged_truncate`.
    pub fn truncate(&mut self, seq: i64, length: i64) -> Result<()> {
        check(self.ctx.ptr(), unsafe { sys::attn_paged_truncate(self.raw.as_ptr(), seq, length) }, "attn_paged_truncate")
    }
    /// Length of `seq`; None if the id is not live.
    pub fn length(&self, seq: i64) -> Option<i64> {
        let n = unsafe { sys::attn_paged_seq_length(self.raw.as_ptr(), seq) };
        if n < 0 { None } else { Some(n) }
    }
    /// `attn_paged_block_table`: the block ids of `seq`, in position order.
    pub fn block_table(&self, seq: i64) -> Result<Vec<i64>> {
        let mut count = 0;
        let st = unsafe { sys::attn_paged_block_table(self.raw.as_ptr(), seq, ptr::null_mut(), 0, &mut count) };
        if st != sys::ATTN_ERR_CAPACITY {
            check(self.ctx.ptr(), st, "attn_paged_block_table")?;
        }
        let mut ids = vec![0i64; count as usize];
        let st = unsafe { sys::attn_paged_block_table(self.raw.as_ptr(), seq, ids.as_mut_ptr(), count, &mut count) };
        check(self.ctx.ptr(), st, "attn_paged_block_table")?;
        Ok(ids)
    }
    pub fn free_blocks(&self) -> i64 {
        unsafe { sys::attn_paged_free_blocks(self.raw.as_ptr()) }
    }
    pub fn num_blocks(&self) -> i64 {
        unsafe { sys::attn_paged_num_blocks(self.raw.as_ptr()) }
    }
    pub fn num_seqs(&self) -> i64 {
        unsafe { sys::attn_paged_num_seqs(self.raw.as_ptr()) }
    }
    pub fn memory_size(&self) -> usize {
        unsafe { sys::attn_paged_memory_size(self.raw.as_ptr()) }
    }
    pub fn memory_used(&self) -> usize {
        unsafe { sys::attn_paged_memory_used(self.raw.as_ptr()) }
    }

    /// `attn_paged_plan_create` on context `ctx` (its threads and errors; one
    /// per caller thread) for up to `rows` sequences of `n` queries of
    /// `heads` heads: contiguous q [rows, H, n, d_k], out [rows, H, n, d_v],
    /// lse [rows, H, n] when `lse`.
    pub fn plan<'p>(&'p self, ctx: &'p Context, desc: &'p Desc<'p>, rows: i64, heads: i64, n: i64, lse: bool) -> Result<PagedPlan<'p, T>> {
        let ls = [Layout::contiguous(&[rows, heads, n, self.cfg.d_k]), Layout::contiguous(&[rows, heads, n, self.cfg.d_v]), Layout::contiguous(&[rows, heads, n])];
        let mut handles: [Option<Handle>; 3] = Default::default();
        for i in 0..3 {
            if i < 2 || lse {
                handles[i] = Some(Handle::wrap::<T>(ctx, &ls[i], NonNull::<T>::dangling().as_ptr(), KV_NAMES[i])?);
            }
        }
        let p = |i: usize| handles[i].as_ref().map_or(ptr::null(), |h: &Handle| h.raw.as_ptr() as *const _);
        let mut raw = ptr::null_mut();
        let st = unsafe { sys::attn_paged_plan_create(ctx.ptr(), self.raw.as_ptr(), desc.raw.as_ptr(), p(0), p(1), p(2), &mut raw) };
        check(ctx.ptr(), st, "attn_paged_plan_create")?;
        Ok(PagedPlan { ctx, raw: NonNull::new(raw).expect("attn_paged_plan_create returned OK and NULL"), handles, _cache: PhantomData, _t: PhantomData })
    }
}

impl<T: Float> Drop for PagedCache<'_, T> {
    fn drop(&mut self) {
        unsafe { sys::attn_paged_destroy(self.raw.as_ptr()) }
    }
}

/// `attn_paged_plan`: a ragged batch against a [`PagedCache`]. Borrows the
/// cache (no mutation while the plan lives) and the descriptor.
pub struct PagedPlan<'p, T: Float> {
    ctx: &'p Context,
    raw: NonNull<sys::attn_paged_plan>,
    handles: [Option<Handle>; 3],
    _cache: PhantomData<&'p PagedCache<'p, T>>,
    _t: PhantomData<T>,
}

impl<'p, T: Float> PagedPlan<'p, T> {
    /// Bytes of workspace the plan holds.
    pub fn workspace_size(&self) -> usize {
        unsafe { sys::attn_paged_plan_workspace_size(self.raw.as_ptr()) }
    }

    /// `attn_paged_plan_execute`: rows 0..seqs.len() of q/out (the plan's
    /// full shapes) against sequences `seqs`; `query_counts` one per row or
    /// None (n each). On error nothing is written.
    pub fn execute(&mut self, seqs: &[i64], q: &[T], out: &mut [T], lse: Option<&mut [T]>, query_counts: Option<&[i64]>) -> Result<()> {
        let ptrs: [Option<(*mut c_void, usize)>; 3] = [
            Some((q.as_ptr() as *mut c_void, q.len())),
            Some((out.as_mut_ptr() as *mut c_void, out.len())),
            lse.map(|l| (l.as_mut_ptr() as *mut c_void, l.len())),
        ];
        for i in 0..3 {
            match (&self.handles[i], ptrs[i]) {
                (Some(h), Some((_, len))) => h.check_len(len, KV_NAMES[i])?,
                (None, None) => {}
                (Some(_), None) => return Err(binding_error(Status::Mismatch, "attn::PagedPlan::execute", format!("{}: the plan was created with it; pass it", KV_NAMES[i]))),
                (None, Some(_)) => return Err(binding_error(Status::Mismatch, "attn::PagedPlan::execute", format!("{}: the plan was created without it; pass None", KV_NAMES[i]))),
            }
        }
        if let Some(c) = query_counts {
            if c.len() != seqs.len() {
                return Err(binding_error(Status::InvalidArg, "attn::PagedPlan::execute", format!("query_counts: {} values for {} rows", c.len(), seqs.len())));
            }
        }
        for i in 0..3 {
            if let (Some(h), Some((p, _))) = (&self.handles[i], ptrs[i]) {
                check(self.ctx.ptr(), unsafe { sys::attn_tensor_set_data(h.raw.as_ptr(), p) }, "attn_tensor_set_data")?;
            }
        }
        let p = |i: usize| self.handles[i].as_ref().map_or(ptr::null_mut(), |h| h.raw.as_ptr());
        let c = query_counts.map_or(ptr::null(), |c| c.as_ptr());
        let st = unsafe { sys::attn_paged_plan_execute(self.raw.as_ptr(), seqs.len() as i64, seqs.as_ptr(), p(0), p(1), p(2), c) };
        check(self.ctx.ptr(), st, "attn_paged_plan_execute")
    }
}

impl<T: Float> Drop for PagedPlan<'_, T> {
    fn drop(&mut self) {
        unsafe { sys::attn_paged_plan_destroy(self.raw.as_ptr()) }
    }
}

//! Tests of the safe crate against a naive f64 reference written here.
//! Run with the built library: ATTN_LIB_DIR=build LD_LIBRARY_PATH=build cargo test --offline
//!
//! Variants the library does not build yet report Status::Unsupported: their
//! tests print "NOT BUILT YET" and return early; they check the result
//! automatically once the variant lands.

use attn::{Causal, Context, Desc, Dims, Error, Layout, Plan, Score, Status, Variant};

/// Deterministic pseudo-random numbers in [-1, 1) (xorshift64*).
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let x = self.0.wrapping_mul(0x2545_F491_4F6C_DD1D);
        (x >> 11) as f64 / (1u64 << 52) as f64 - 1.0
    }
    fn vec(&mut self, n: usize) -> Vec<f64> {
        (0..n).map(|_| self.next()).collect()
    }
}

#[derive(Clone, Default)]
struct RefOpts {
    causal: Option<Causal>,
    scale: Option<f64>,
    key_lengths: Option<Vec<i64>>,
    /// [S_q][S_k] keep matrix shared by all batches/heads.
    keep: Option<Vec<bool>>,
}

struct RefOut {
    out: Vec<f64>,     // [B,H,Sq,Dv]
    weights: Vec<f64>, // [B,H,Sq,Sk]
    lse: Vec<f64>,     // [B,H,Sq]
    bound: Vec<f64>,   // Σ_j p_ij |v_j| per out element
}

/// Naive attention on logical [B,H,S,D] data read through `at(tensor, b, h, s, d)`.
fn reference(d: &Dims, q: &[f64], k: &[f64], v: &[f64], o: &RefOpts) -> RefOut {
    let (b_, h_, hk, sq, sk, dk, dv) = (d.batch as usize, d.heads as usize, d.kv_heads as usize, d.seq_q as usize, d.seq_k as usize, d.head_dim as usize, d.value_dim as usize);
    let g = h_ / hk;
    let ql = d.q_layout();
    let kl = d.k_layout();
    let vl = d.v_layout();
    let at = |l: &Layout, x: &[f64], i: [usize; 4]| {
        let off: i64 = (0..4).map(|a| i[a] as i64 * l.strides[a]).sum();
        x[off as usize]
    };
    let scale = o.scale.unwrap_or(1.0 / (dk as f64).sqrt());
    let mut r = RefOut { out: vec![0.0; b_ * h_ * sq * dv], weights: vec![0.0; b_ * h_ * sq * sk], lse: vec![f64::NEG_INFINITY; b_ * h_ * sq], bound: vec![0.0; b_ * h_ * sq * dv] };
    for b in 0..b_ {
        for h in 0..h_ {
            for i in 0..sq {
                let ia = i as i64 + if o.causal == Some(Causal::BottomRight) { sk as i64 - sq as i64 } else { 0 };
                let mut s = vec![f64::NEG_INFINITY; sk];
                for (j, sj) in s.iter_mut().enumerate() {
                    let mut keep = match o.causal {
                        Some(Causal::TopLeft) | Some(Causal::BottomRight) => j as i64 <= ia,
                        _ => true,
                    };
                    if let Some(kl_) = &o.key_lengths {
                        keep &= (j as i64) < kl_[b];
                    }
                    if let Some(m) = &o.keep {
                        keep &= m[i * sk + j];
                    }
                    if keep {
                        let dot: f64 = (0..dk).map(|x| at(&ql, q, [b, h, i, x]) * at(&kl, k, [b, h / g, j, x])).sum();
                        *sj = dot * scale;
                    }
                }
                let m = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                if m == f64::NEG_INFINITY {
                    continue;
                }
                let l: f64 = s.iter().map(|x| (x - m).exp()).sum();
                let row = (b * h_ + h) * sq + i;
                r.lse[row] = m + l.ln();
                for j in 0..sk {
                    let p = (s[j] - m).exp() / l;
                    r.weights[row * sk + j] = p;
                    for x in 0..dv {
                        let vv = at(&vl, v, [b, h / g, j, x]);
                        r.out[row * dv + x] += p * vv;
                        r.bound[row * dv + x] += p * vv.abs();
                    }
                }
            }
        }
    }
    r
}

/// Read `out` (in dims' out layout) back as logical [B,H,Sq,Dv].
fn logical_out<T: Copy + Into<f64>>(d: &Dims, out: &[T]) -> Vec<f64> {
    let l = d.out_layout();
    let mut r = Vec::with_capacity(d.out_len());
    for b in 0..d.batch {
        for h in 0..d.heads {
            for i in 0..d.seq_q {
                for x in 0..d.value_dim {
                    let off = b * l.strides[0] + h * l.strides[1] + i * l.strides[2] + x * l.strides[3];
                    r.push(out[off as usize].into());
                }
            }
        }
    }
    r
}

/// The tolerance: |got − ref| ≤ rel·Σ_j p_ij|v_j| + abs.
fn assert_close(got: &[f64], want: &[f64], bound: &[f64], rel: f64, abs: f64, what: &str) {
    assert_eq!(got.len(), want.len());
    for i in 0..got.len() {
        assert!(!got[i].is_nan(), "{}[{}] is NaN", what, i);
        let tol = rel * bound[i] + abs;
        assert!((got[i] - want[i]).abs() <= tol, "{}[{}]: got {} want {} (tol {})", what, i, got[i], want[i], tol);
    }
}

fn ctx() -> Context {
    Context::with_threads(2).expect("context")
}

#[test]
fn version_major_matches_the_crate() {
    assert_eq!(attn::version_number() / 10000, attn::EXPECTED_MAJOR);
    assert!(attn::version().starts_with(&format!("{}.", attn::EXPECTED_MAJOR)));
}

#[test]
fn exact_matches_reference_over_shapes_causal_and_layouts() {
    let ctx = ctx();
    let shapes: [(i64, i64, i64, i64, i64, i64, i64); 5] = [
        (1, 1, 1, 1, 1, 1, 1),
        (2, 3, 3, 7, 7, 5, 5),
        (2, 4, 2, 9, 20, 8, 3), // GQA, cross, d_v != d_k
        (1, 4, 1, 17, 17, 64, 64),
        (1, 2, 2, 12, 5, 4, 4), // S_q > S_k
    ];
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    for &(b, h, hk, sq, sk, d, dv) in shapes.iter() {
        for causal in [Causal::None, Causal::TopLeft, Causal::BottomRight] {
            for bshd in [false, true] {
                let mut dims = Dims::new(b, h, sq, sk, d).kv_heads(hk).value_dim(dv);
                if bshd {
                    dims = dims.bshd();
                }
                let (q, k, v) = (rng.vec(dims.q_len()), rng.vec(dims.k_len()), rng.vec(dims.v_len()));
                let want = reference(&dims, &q, &k, &v, &RefOpts { causal: Some(causal), ..Default::default() });
                let mut desc = Desc::new(&ctx).unwrap();
                desc.causal(causal).unwrap();
                // f64
                let mut out = vec![0.0f64; dims.out_len()];
                let mut w = vec![0.0f64; dims.weights_len()];
                let mut lse = vec![0.0f64; dims.lse_len()];
                attn::attention_with_stats(&desc, &dims, &q, &k, &v, &mut out, &mut w, &mut lse).unwrap();
                assert_close(&logical_out(&dims, &out), &want.out, &want.bound, 1e-12, 1e-13, "out f64");
                assert_close(&w, &want.weights, &vec![1.0; w.len()], 1e-12, 1e-13, "weights f64");
                for (g, r) in lse.iter().zip(want.lse.iter()) {
                    assert!((g == r) || (g - r).abs() <= 1e-12 * r.abs().max(1.0), "lse {} vs {}", g, r);
                }
                // f32
                let (qf, kf, vf): (Vec<f32>, Vec<f32>, Vec<f32>) = (q.iter().map(|&x| x as f32).collect(), k.iter().map(|&x| x as f32).collect(), v.iter().map(|&x| x as f32).collect());
                let want32 = reference(&dims, &qf.iter().map(|&x| x as f64).collect::<Vec<_>>(), &kf.iter().map(|&x| x as f64).collect::<Vec<_>>(), &vf.iter().map(|&x| x as f64).collect::<Vec<_>>(), &RefOpts { causal: Some(causal), ..Default::default() });
                let mut outf = vec![0.0f32; dims.out_len()];
                attn::attention(&desc, &dims, &qf, &kf, &vf, &mut outf).unwrap();
                assert_close(&logical_out(&dims, &outf), &want32.out, &want32.bound, 1e-5, 1e-6, "out f32");
            }
        }
    }
}

#[test]
fn fully_masked_rows_give_zero_and_minus_inf() {
    let ctx = ctx();
    let dims = Dims::new(1, 2, 6, 3, 4);
    let mut rng = Rng(7);
    let (q, k, v) = (rng.vec(dims.q_len()), rng.vec(dims.k_len()), rng.vec(dims.v_len()));
    let mut desc = Desc::new(&ctx).unwrap();
    desc.causal(Causal::BottomRight).unwrap();
    let (mut out, mut w, mut lse) = (vec![9.0; dims.out_len()], vec![9.0; dims.weights_len()], vec![9.0; dims.lse_len()]);
    attn::attention_with_stats(&desc, &dims, &q, &k, &v, &mut out, &mut w, &mut lse).unwrap();
    for h in 0..2 {
        for i in 0..3 {
            let row = h * 6 + i;
            assert_eq!(lse[row], f64::NEG_INFINITY);
            assert!(out[row * 4..row * 4 + 4].iter().all(|&x| x == 0.0));
            assert!(w[row * 3..row * 3 + 3].iter().all(|&x| x == 0.0));
        }
    }
    assert!(out.iter().chain(w.iter()).chain(lse.iter()).all(|x| !x.is_nan()));
}

#[test]
fn masks_key_lengths_bool_mask_scale_and_dot_score() {
    let ctx = ctx();
    let dims = Dims::new(2, 2, 5, 9, 8);
    let mut rng = Rng(11);
    let (q, k, v) = (rng.vec(dims.q_len()), rng.vec(dims.k_len()), rng.vec(dims.v_len()));
    let lens = [4i64, 9];
    let mask: Vec<u8> = (0..5 * 9).map(|i| (i % 3 != 1) as u8).collect();
    let keep: Vec<bool> = mask.iter().map(|&m| m != 0).collect();
    let mask_layout = Layout::strided(&[1, 1, 5, 9], &[0, 0, 9, 1]);
    let mut desc = Desc::new(&ctx).unwrap();
    desc.key_lengths(&lens).unwrap().bool_mask(&mask, &mask_layout).unwrap().scale(0.3).unwrap();
    let want = reference(&dims, &q, &k, &v, &RefOpts { key_lengths: Some(lens.to_vec()), keep: Some(keep), scale: Some(0.3), ..Default::default() });
    let mut out = vec![0.0; dims.out_len()];
    attn::attention(&desc, &dims, &q, &k, &v, &mut out).unwrap();
    assert_close(&out, &want.out, &want.bound, 1e-12, 1e-13, "masked out");

    let mut dot = Desc::new(&ctx).unwrap();
    dot.score(Score::Dot).unwrap();
    let want = reference(&dims, &q, &k, &v, &RefOpts { scale: Some(1.0), ..Default::default() });
    attn::attention(&dot, &dims, &q, &k, &v, &mut out).unwrap();
    assert_close(&out, &want.out, &want.bound, 1e-12, 1e-13, "dot out");
}

#[test]
fn plan_executes_many_times_on_new_slices() {
    let ctx = ctx();
    let mut desc = Desc::new(&ctx).unwrap();
    desc.causal(Causal::TopLeft).unwrap();
    let dims = Dims::new(1, 2, 16, 16, 8).bshd();
    let mut plan = Plan::<f32>::new(&desc, &dims, false, false).unwrap();
    let mut rng = Rng(13);
    for _ in 0..3 {
        let (q, k, v) = (rng.vec(dims.q_len()), rng.vec(dims.k_len()), rng.vec(dims.v_len()));
        let to32 = |x: &Vec<f64>| x.iter().map(|&a| a as f32).collect::<Vec<f32>>();
        let (qf, kf, vf) = (to32(&q), to32(&k), to32(&v));
        let back = |x: &Vec<f32>| x.iter().map(|&a| a as f64).collect::<Vec<f64>>();
        let want = reference(&dims, &back(&qf), &back(&kf), &back(&vf), &RefOpts { causal: Some(Causal::TopLeft), ..Default::default() });
        let mut out = vec![0.0f32; dims.out_len()];
        plan.execute(&qf, &kf, &vf, &mut out, None, None).unwrap();
        assert_close(&logical_out(&dims, &out), &want.out, &want.bound, 1e-5, 1e-6, "plan out");
    }
}

fn expect_err<T: std::fmt::Debug>(r: Result<T, Error>, status: Status, needle: &str) -> Error {
    let e = r.expect_err("call should fail");
    assert_eq!(e.status, status, "{}", e);
    assert!(e.message.contains(needle), "message {:?} should name {:?}", e.message, needle);
    assert!(e.to_string().contains(&e.status.text()));
    e
}

#[test]
fn errors_carry_status_and_message_and_leave_out_untouched() {
    let ctx = ctx();
    let desc = Desc::new(&ctx).unwrap();
    let dims = Dims::new(1, 2, 5, 5, 4);
    let q = vec![0.5f32; dims.q_len()];

    // A k with another batch: the library names k.
    let mut out = vec![7.0f32; dims.out_len()];
    let bad = Layout::contiguous(&[2, 2, 5, 4]);
    let r = Plan::<f32>::with_layouts(&desc, [&dims.q_layout(), &bad, &bad, &dims.out_layout()], None, None);
    expect_err(r.map(|_| ()), Status::Shape, "k:");

    // Slices shorter than their layout are refused before C sees them.
    let short = vec![0.0f32; dims.q_len() - 1];
    expect_err(attn::attention(&desc, &dims, &short, &q, &q, &mut out), Status::Shape, "q: slice has");
    assert!(out.iter().all(|&x| x == 7.0));

    // Non-contiguous last dim.
    let strided = Layout::strided(&[1, 2, 5, 4], &[80, 40, 8, 2]);
    let r = Plan::<f32>::with_layouts(&desc, [&strided, &dims.k_layout(), &dims.v_layout(), &dims.out_layout()], None, None);
    expect_err(r.map(|_| ()), Status::Layout, "q:");

    // Bad scalars and setter arguments.
    let lens = [9i64]; // declared before d2: the descriptor borrows it
    let mut d2 = Desc::new(&ctx).unwrap();
    expect_err(d2.scale(f64::NAN).map(|_| ()), Status::InvalidArg, "scale");
    expect_err(d2.window(Some(-1), None).map(|_| ()), Status::InvalidArg, "left");
    d2.key_lengths(&lens).unwrap();
    expect_err(attn::attention(&d2, &dims, &q, &q, &q, &mut out), Status::InvalidArg, "key_lengths");
    assert!(out.iter().all(|&x| x == 7.0));

    // weights passed to a plan made without them.
    let mut plan = Plan::<f32>::new(&desc, &dims, false, false).unwrap();
    let mut w = vec![0.0f32; dims.weights_len()];
    expect_err(plan.execute(&q, &q, &q, &mut out, Some(&mut w), None), Status::Mismatch, "weights");

    // A bad thread count: no context exists to carry a message.
    let e = Context::with_threads(-1).err().expect("threads -1 must fail");
    assert_eq!(e.status, Status::InvalidArg);
}

#[test]
fn results_do_not_depend_on_thread_count() {
    let dims = Dims::new(2, 4, 130, 130, 32);
    let mut rng = Rng(17);
    let q: Vec<f32> = rng.vec(dims.q_len()).iter().map(|&x| x as f32).collect();
    let run = |threads| {
        let ctx = Context::with_threads(threads).unwrap();
        let mut desc = Desc::new(&ctx).unwrap();
        desc.causal(Causal::TopLeft).unwrap();
        let mut out = vec![0.0f32; dims.out_len()];
        attn::attention(&desc, &dims, &q, &q, &q, &mut out).unwrap();
        out
    };
    assert_eq!(run(1), run(2));
}

/// Run a variant; None (and a NOT BUILT YET note) while the library reports Unsupported.
fn run_variant(desc: &Desc<'_>, dims: &Dims, q: &[f64], k: &[f64], v: &[f64]) -> Option<Vec<f64>> {
    let mut out = vec![0.0; dims.out_len()];
    match attn::attention(desc, dims, q, k, v, &mut out) {
        Ok(()) => Some(out),
        Err(e) if e.status == Status::Unsupported => {
            eprintln!("NOT BUILT YET (libattn reports Unsupported: {}) -- skipping", e.message);
            None
        }
        Err(e) => panic!("{}", e),
    }
}

#[test]
fn variant_block_sparse_matches_masked_reference_once_built() {
    let ctx = ctx();
    let dims = Dims::new(1, 1, 12, 12, 4);
    let mut rng = Rng(19);
    let (q, k, v) = (rng.vec(dims.q_len()), rng.vec(dims.k_len()), rng.vec(dims.v_len()));
    let layout: Vec<u8> = vec![1, 0, 1, 1, 1, 0, 0, 1, 1]; // [1, 3, 3] blocks of 4
    let ll = Layout::contiguous(&[1, 3, 3]);
    let mut desc = Desc::new(&ctx).unwrap();
    desc.variant(Variant::BlockSparse).unwrap().block_size(4).unwrap().block_layout(&layout, &ll).unwrap();
    if let Some(out) = run_variant(&desc, &dims, &q, &k, &v) {
        let keep: Vec<bool> = (0..144).map(|x| layout[(x / 12 / 4) * 3 + (x % 12) / 4] != 0).collect();
        let want = reference(&dims, &q, &k, &v, &RefOpts { keep: Some(keep), ..Default::default() });
        assert_close(&out, &want.out, &want.bound, 1e-12, 1e-13, "block-sparse out");
    }
}

#[test]
fn variant_longformer_matches_window_plus_global_once_built() {
    let ctx = ctx();
    let dims = Dims::new(1, 2, 16, 16, 4);
    let mut rng = Rng(23);
    let (q, k, v) = (rng.vec(dims.q_len()), rng.vec(dims.k_len()), rng.vec(dims.v_len()));
    let global = [0i64, 9];
    let mut desc = Desc::new(&ctx).unwrap();
    desc.variant(Variant::Longformer).unwrap().window(Some(2), Some(2)).unwrap().global_tokens(&global).unwrap();
    if let Some(out) = run_variant(&desc, &dims, &q, &k, &v) {
        let g = |x: usize| global.contains(&(x as i64));
        let keep: Vec<bool> = (0..256).map(|x| (x / 16, x % 16)).map(|(i, j)| (i as i64 - j as i64).abs() <= 2 || g(i) || g(j)).collect();
        let want = reference(&dims, &q, &k, &v, &RefOpts { keep: Some(keep), ..Default::default() });
        assert_close(&out, &want.out, &want.bound, 1e-12, 1e-13, "longformer out");
    }
}

#[test]
fn variant_performer_is_deterministic_once_built() {
    let ctx = ctx();
    let dims = Dims::new(1, 1, 8, 8, 4);
    let mut rng = Rng(29);
    let (q, k, v) = (rng.vec(dims.q_len()), rng.vec(dims.k_len()), rng.vec(dims.v_len()));
    let mut desc = Desc::new(&ctx).unwrap();
    desc.variant(Variant::Performer).unwrap().features(32, 5).unwrap();
    if let Some(a) = run_variant(&desc, &dims, &q, &k, &v) {
        let b = run_variant(&desc, &dims, &q, &k, &v).unwrap();
        assert_eq!(a, b);
        assert!(a.iter().all(|x| x.is_finite()));
    }
}

//! Tests of the safe crate against a naive f64 reference written here.
//! Run with the built library: ATTN_LIB_DIR=build LD_LIBRARY_PATH=build cargo test --offline
//!
//! Every long-sequence variant on main is checked against a reference
//! computed here from approx.h's definitions (Unsupported is a failure).

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
    /// Keep matrix [S_q][S_k] shared by all batches/heads, or [H][S_q][S_k].
    keep: Option<Vec<bool>>,
    /// Additive score bias [H][S_q][S_k] (Swin's relative position bias).
    bias: Option<Vec<f64>>,
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
                        keep &= if m.len() == sq * sk { m[i * sk + j] } else { m[(h * sq + i) * sk + j] };
                    }
                    if keep {
                        let dot: f64 = (0..dk).map(|x| at(&ql, q, [b, h, i, x]) * at(&kl, k, [b, h / g, j, x])).sum();
                        *sj = dot * scale + o.bias.as_ref().map_or(0.0, |t| t[(h * sq + i) * sk + j]);
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

/// Run a variant (f64, dims' layouts); any error, Unsupported included, fails.
fn run_variant(desc: &Desc<'_>, dims: &Dims, q: &[f64], k: &[f64], v: &[f64]) -> Vec<f64> {
    let mut out = vec![0.0; dims.out_len()];
    attn::attention(desc, dims, q, k, v, &mut out).unwrap_or_else(|e| panic!("{}", e));
    out
}

fn inputs(dims: &Dims, seed: u64) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let mut rng = Rng(seed);
    (rng.vec(dims.q_len()), rng.vec(dims.k_len()), rng.vec(dims.v_len()))
}

/// Dense keep [H][S_q][S_k] from a block layout [H][nq][nk] of block b.
fn keep_from_blocks(layout: &[u8], h: usize, sq: usize, sk: usize, b: usize) -> Vec<bool> {
    let (nq, nk) = ((sq + b - 1) / b, (sk + b - 1) / b);
    let mut keep = Vec::with_capacity(h * sq * sk);
    for hh in 0..h {
        for i in 0..sq {
            for j in 0..sk {
                keep.push(layout[(hh * nq + i / b) * nk + j / b] != 0);
            }
        }
    }
    keep
}

#[test]
fn variant_block_sparse_matches_masked_reference() {
    let ctx = ctx();
    let layout: Vec<u8> = vec![1, 0, 1, 1, 1, 0, 0, 1, 1, /* head 1 */ 0, 1, 0, 0, 0, 0, 1, 1, 1]; // [2, 3, 3]
    for &(heads, causal) in [(1i64, Causal::None), (2, Causal::TopLeft)].iter() {
        let dims = Dims::new(1, 2, 11, 11, 4);
        let (q, k, v) = inputs(&dims, 19 + heads as u64);
        let ll = Layout::contiguous(&[heads, 3, 3]);
        let lay = &layout[..(heads * 9) as usize];
        let mut desc = Desc::new(&ctx).unwrap();
        desc.variant(Variant::BlockSparse).unwrap().block_size(4).unwrap().block_layout(lay, &ll).unwrap().causal(causal).unwrap();
        let out = run_variant(&desc, &dims, &q, &k, &v);
        let per_head: Vec<u8> = if heads == 1 { layout[..9].repeat(2) } else { layout.clone() };
        let keep = keep_from_blocks(&per_head, 2, 11, 11, 4);
        let want = reference(&dims, &q, &k, &v, &RefOpts { keep: Some(keep), causal: Some(causal), ..Default::default() });
        assert_close(&out, &want.out, &want.bound, 1e-12, 1e-13, "block-sparse out");
    }
}

#[test]
fn variant_longformer_matches_window_plus_global() {
    let ctx = ctx();
    let dims = Dims::new(1, 2, 16, 16, 4);
    let (q, k, v) = inputs(&dims, 23);
    let global = [0i64, 9];
    for &causal in [Causal::None, Causal::TopLeft].iter() {
        let mut desc = Desc::new(&ctx).unwrap();
        desc.variant(Variant::Longformer).unwrap().window(Some(2), Some(1)).unwrap().global_tokens(&global).unwrap().causal(causal).unwrap();
        let out = run_variant(&desc, &dims, &q, &k, &v);
        let g = |x: usize| global.contains(&(x as i64));
        let keep: Vec<bool> = (0..256).map(|x| (x / 16, x % 16)).map(|(i, j)| (j + 2 >= i && j <= i + 1) || g(i) || g(j)).collect();
        let want = reference(&dims, &q, &k, &v, &RefOpts { keep: Some(keep), causal: Some(causal), ..Default::default() });
        assert_close(&out, &want.out, &want.bound, 1e-12, 1e-13, "longformer out");
    }
}

fn mix(mut z: u64) -> u64 {
    z ^= z >> 30;
    z = z.wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z ^= z >> 27;
    z = z.wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// BigBird's layout [H][nq][nk] as approx.h defines it.
fn bigbird_layout(h: usize, nq: usize, nk: usize, wb: usize, gb: usize, rb: usize, seed: u64) -> Vec<u8> {
    let mut lay = vec![0u8; h * nq * nk];
    for hh in 0..h {
        for r in 0..nq {
            let row = &mut lay[(hh * nq + r) * nk..(hh * nq + r + 1) * nk];
            for (c, x) in row.iter_mut().enumerate() {
                *x = (r < gb || c < gb || (c as i64 - r as i64).abs() <= wb as i64) as u8;
            }
            if r < gb {
                continue;
            }
            let mut s = mix(seed ^ mix((hh * nq + r) as u64 + 1));
            for _ in 0..rb {
                let free: Vec<usize> = (0..nk).filter(|&c| row[c] == 0).collect();
                let n = free.len() as u64;
                if n == 0 {
                    break;
                }
                let threshold = n.wrapping_neg() % n; // 2^64 mod n
                let u = loop {
                    s = s.wrapping_add(0x9E37_79B9_7F4A_7C15);
                    let u = mix(s);
                    if u >= threshold {
                        break u;
                    }
                };
                row[free[(u % n) as usize]] = 1;
            }
        }
    }
    lay
}

#[test]
fn variant_bigbird_layout_follows_the_documented_generator_and_output_matches() {
    let ctx = ctx();
    let (b, sq) = (4usize, 30usize);
    let dims = Dims::new(1, 3, sq as i64, sq as i64, 4);
    let (q, k, v) = inputs(&dims, 29);
    for &(wb, gb, rb, seed) in [(1usize, 1usize, 2usize, 42u64), (0, 0, 1, 7), (1, 2, 10, 1 << 63)].iter() {
        let mut desc = Desc::new(&ctx).unwrap();
        desc.variant(Variant::BigBird).unwrap().block_size(b as i64).unwrap().bigbird(wb as i64, gb as i64, rb as i64, seed).unwrap();
        let mut plan = Plan::<f64>::new(&desc, &dims, false, false).unwrap();
        let layout = plan.block_layout().unwrap();
        let nb = (sq + b - 1) / b;
        assert_eq!(layout, bigbird_layout(3, nb, nb, wb, gb, rb, seed), "layout for {:?}", (wb, gb, rb, seed));
        let mut out = vec![0.0; dims.out_len()];
        plan.execute(&q, &k, &v, &mut out, None, None).unwrap();
        let want = reference(&dims, &q, &k, &v, &RefOpts { keep: Some(keep_from_blocks(&layout, 3, sq, sq, b)), ..Default::default() });
        assert_close(&out, &want.out, &want.bound, 1e-12, 1e-13, "bigbird out");
    }
}

/// Swin keep [S][S] and bias [H][S][S] from the definition: pad to multiples
/// of w, roll by -shift, w×w windows, three cuts per axis when shifted.
fn swin_terms(gh: usize, gw: usize, w: usize, shift: usize, table: Option<&[f64]>, heads: usize) -> (Vec<bool>, Option<Vec<f64>>) {
    let s = gh * gw;
    let (ph, pw) = ((gh + w - 1) / w * w, (gw + w - 1) / w * w);
    let cut = |r: usize, p: usize| if shift == 0 || r < p - w { 0 } else if r < p - shift { 1 } else { 2 };
    let pos = |t: usize| ((t / gw + ph - shift) % ph, (t % gw + pw - shift) % pw);
    let tag = |t: usize| {
        let (y, x) = pos(t);
        (y / w, x / w, cut(y, ph), cut(x, pw))
    };
    let keep: Vec<bool> = (0..s * s).map(|x| tag(x / s) == tag(x % s)).collect();
    let bias = table.map(|t| {
        let mut bias = vec![0.0; heads * s * s];
        for h in 0..heads {
            for i in 0..s {
                for j in 0..s {
                    let ((yi, xi), (yj, xj)) = (pos(i), pos(j));
                    let dy = (yi % w) as i64 - (yj % w) as i64 + w as i64 - 1;
                    let dx = (xi % w) as i64 - (xj % w) as i64 + w as i64 - 1;
                    bias[(h * s + i) * s + j] = t[(dy as usize * (2 * w - 1) + dx as usize) * heads + h];
                }
            }
        }
        bias
    });
    (keep, bias)
}

#[test]
fn variant_swin_matches_per_window_reference_with_shift_padding_and_bias() {
    let ctx = ctx();
    for &(gh, gw, w, shift) in [(4usize, 6usize, 2usize, 0usize), (4, 6, 2, 1), (5, 7, 3, 1), (8, 8, 4, 2)].iter() {
        for &with_bias in [false, true].iter() {
            let heads = 2usize;
            let s = (gh * gw) as i64;
            let dims = Dims::new(1, heads as i64, s, s, 4);
            let (q, k, v) = inputs(&dims, (gh * 100 + gw * 10 + shift) as u64);
            let table = Rng(w as u64 + 3).vec((2 * w - 1) * (2 * w - 1) * heads);
            let tl = Layout::contiguous(&[((2 * w - 1) * (2 * w - 1)) as i64, heads as i64]);
            let mut desc = Desc::new(&ctx).unwrap();
            desc.variant(Variant::Swin).unwrap().swin(gh as i64, gw as i64, w as i64, shift as i64).unwrap();
            if with_bias {
                desc.swin_bias(&table, &tl).unwrap();
            }
            let out = run_variant(&desc, &dims, &q, &k, &v);
            let (keep, bias) = swin_terms(gh, gw, w, shift, if with_bias { Some(&table) } else { None }, heads);
            let want = reference(&dims, &q, &k, &v, &RefOpts { keep: Some(keep), bias, ..Default::default() });
            assert_close(&out, &want.out, &want.bound, 1e-12, 1e-13, "swin out");
        }
    }
}

#[test]
fn variant_linear_elu_matches_the_feature_map_formula() {
    let ctx = ctx();
    let dims = Dims::new(2, 2, 12, 12, 4).kv_heads(1);
    let (q, k, v) = inputs(&dims, 31);
    let phi = |x: f64| if x > 0.0 { x + 1.0 } else { x.exp() };
    for &causal in [Causal::None, Causal::TopLeft].iter() {
        let mut desc = Desc::new(&ctx).unwrap();
        desc.variant(Variant::LinearElu).unwrap().causal(causal).unwrap();
        let out = run_variant(&desc, &dims, &q, &k, &v);
        // Dense quadratic form Σ_j (φ(q_i)·φ(k_j)) v_j / Σ_j φ(q_i)·φ(k_j), no associativity.
        for b in 0..2usize {
            for h in 0..2usize {
                for i in 0..12usize {
                    let (mut num, mut den) = (vec![0.0; 4], 0.0);
                    for j in 0..12usize {
                        if causal == Causal::TopLeft && j > i {
                            continue;
                        }
                        let a: f64 = (0..4).map(|x| phi(q[((b * 2 + h) * 12 + i) * 4 + x]) * phi(k[(b * 12 + j) * 4 + x])).sum();
                        den += a;
                        for x in 0..4 {
                            num[x] += a * v[(b * 12 + j) * 4 + x];
                        }
                    }
                    for x in 0..4 {
                        let got = out[((b * 2 + h) * 12 + i) * 4 + x];
                        assert!((got - num[x] / den).abs() <= 1e-10 * (num[x] / den).abs() + 1e-12, "linear elu [{},{},{},{}]: {} vs {}", b, h, i, x, got, num[x] / den);
                    }
                }
            }
        }
    }
}

#[test]
fn variant_performer_is_deterministic_and_redraw_equals_a_fresh_plan() {
    let ctx = ctx();
    let dims = Dims::new(1, 1, 8, 8, 4);
    let (q, k, v) = inputs(&dims, 37);
    let fresh = |seed: u64| {
        let mut desc = Desc::new(&ctx).unwrap();
        desc.variant(Variant::Performer).unwrap().features(32, seed).unwrap();
        run_variant(&desc, &dims, &q, &k, &v)
    };
    let (a, b) = (fresh(5), fresh(6));
    assert_eq!(a, fresh(5));
    assert_ne!(a, b);
    assert!(a.iter().all(|x| x.is_finite()));
    let mut desc = Desc::new(&ctx).unwrap();
    desc.variant(Variant::Performer).unwrap().features(32, 5).unwrap();
    let mut plan = Plan::<f64>::new(&desc, &dims, false, false).unwrap();
    let mut out = vec![0.0; dims.out_len()];
    plan.redraw_features(6).unwrap();
    plan.execute(&q, &k, &v, &mut out, None, None).unwrap();
    assert_eq!(out, b);
    plan.redraw_features(5).unwrap();
    plan.execute(&q, &k, &v, &mut out, None, None).unwrap();
    assert_eq!(out, a);
    // Weights are never formed by linear attention.
    let e = Plan::<f64>::new(&desc, &dims, true, false).err().expect("weights must be refused");
    assert_eq!(e.status, Status::Unsupported);
}

#[test]
fn variant_linformer_is_exact_attention_on_projected_keys_and_values() {
    let ctx = ctx();
    let (sq, sk, r) = (6usize, 10usize, 3usize);
    let dims = Dims::new(2, 2, sq as i64, sk as i64, 4);
    let (q, k, v) = inputs(&dims, 41);
    let mut rng = Rng(43);
    let (e, f) = (rng.vec(r * sk), rng.vec(r * sk));
    let pl = Layout::contiguous(&[r as i64, sk as i64]);
    let mut desc = Desc::new(&ctx).unwrap();
    desc.variant(Variant::Linformer).unwrap().lowrank_proj((&e, &pl), (&f, &pl)).unwrap();
    let out = run_variant(&desc, &dims, &q, &k, &v);
    // K' = E·K, V' = F·V per (batch, head), then exact attention on them.
    let proj = |p: &[f64], x: &[f64]| {
        let mut y = vec![0.0; 2 * 2 * r * 4];
        for bh in 0..4 {
            for rr in 0..r {
                for d in 0..4 {
                    y[(bh * r + rr) * 4 + d] = (0..sk).map(|s| p[rr * sk + s] * x[(bh * sk + s) * 4 + d]).sum();
                }
            }
        }
        y
    };
    let pd = Dims::new(2, 2, sq as i64, r as i64, 4);
    let want = reference(&pd, &q, &proj(&e, &k), &proj(&f, &v), &RefOpts::default());
    assert_close(&out, &want.out, &want.bound, 1e-12, 1e-13, "linformer out");
}

/// bf16 and f16 q, k, v against the f64 reference on the same rounded
/// inputs: |out − ref| ≤ c·u·Σ_j p_ij|v_j| with c·u = 2·2⁻⁸ (bf16) and 2⁻¹¹
/// (f16), attn.h's bounds; f32 out and f32 weights/lse; wrong out dtype is
/// Status::DType naming out.
#[test]
fn half_precision_matches_reference_on_rounded_inputs() {
    let c = ctx();
    let mut desc = Desc::new(&c).unwrap();
    desc.causal(Causal::TopLeft).unwrap();
    let dims = Dims::new(2, 4, 13, 21, 16).kv_heads(2);
    let (q, k, v) = inputs(&dims, 15);
    let q: Vec<f64> = q.iter().map(|x| 3.0 * x).collect();
    // bf16
    let (qb, kb, vb): (Vec<attn::Bf16>, Vec<attn::Bf16>, Vec<attn::Bf16>) = (
        q.iter().map(|&x| attn::Bf16::from_f32(x as f32)).collect(),
        k.iter().map(|&x| attn::Bf16::from_f32(x as f32)).collect(),
        v.iter().map(|&x| attn::Bf16::from_f32(x as f32)).collect(),
    );
    let back = |x: &[attn::Bf16]| x.iter().map(|h| h.to_f32() as f64).collect::<Vec<f64>>();
    let r = reference(&dims, &back(&qb), &back(&kb), &back(&vb), &RefOpts { causal: Some(Causal::TopLeft), ..Default::default() });
    let mut out = vec![attn::Bf16(0); dims.out_len()];
    let mut lse = vec![0f32; dims.lse_len()];
    attn::attention_half(&desc, &dims, &qb, &kb, &vb, &mut out, None, Some(&mut lse)).unwrap_or_else(|e| panic!("{}", e));
    let got: Vec<f64> = back(&out);
    assert_close(&logical_out(&dims, &got), &r.out, &r.bound, 2.0 / 256.0, 1e-6, "bf16 out");
    for i in 0..lse.len() {
        assert!((lse[i] as f64 - r.lse[i]).abs() <= 1e-4 * (1.0 + r.lse[i].abs()), "lse[{}]", i);
    }
    let mut out32 = vec![0f32; dims.out_len()];
    attn::attention_half(&desc, &dims, &qb, &kb, &vb, &mut out32, None, None).unwrap();
    assert_close(&logical_out(&dims, &out32), &r.out, &r.bound, 2.0 / 256.0, 1e-6, "bf16→f32 out");
    // f16
    let (qh, kh, vh): (Vec<attn::F16>, Vec<attn::F16>, Vec<attn::F16>) = (
        q.iter().map(|&x| attn::F16::from_f32(x as f32)).collect(),
        k.iter().map(|&x| attn::F16::from_f32(x as f32)).collect(),
        v.iter().map(|&x| attn::F16::from_f32(x as f32)).collect(),
    );
    let backh = |x: &[attn::F16]| x.iter().map(|h| h.to_f32() as f64).collect::<Vec<f64>>();
    let r = reference(&dims, &backh(&qh), &backh(&kh), &backh(&vh), &RefOpts { causal: Some(Causal::TopLeft), ..Default::default() });
    let mut outh = vec![attn::F16(0); dims.out_len()];
    attn::attention_half(&desc, &dims, &qh, &kh, &vh, &mut outh, None, None).unwrap_or_else(|e| panic!("{}", e));
    assert_close(&logical_out(&dims, &backh(&outh)), &r.out, &r.bound, 1.0 / 2048.0, 1e-6, "f16 out");
    // f16 out for bf16 inputs: a dtype error naming out, out untouched
    let mut bad = vec![attn::F16(0x1234); dims.out_len()];
    expect_err(attn::attention_half(&desc, &dims, &qb, &kb, &vb, &mut bad, None, None), Status::DType, "out:");
    assert!(bad.iter().all(|h| h.0 == 0x1234));
    assert_eq!(attn::Bf16::from_f32(1.00390625).0, 0x3f80); // tie to even
    assert_eq!(attn::F16::from_f32(65520.0).0, 0x7c00); // overflow to inf
    assert_eq!(attn::F16::from_f32(5.960464477539063e-8).0, 1); // smallest subnormal
}

//! TrainPlan::backward_with (attn_backward_plan_set_sink_grad, _general_grad,
//! _additive_grads, _lowrank_grads): the gradients of the descriptor's own
//! parameters against central finite differences of L = Σ dout·out computed
//! with the binding's forward, in f64; and the errors a bad call returns.
//!
//! The descriptor borrows its parameters immutably, so every loss
//! evaluation builds a fresh descriptor and plan over the perturbed values.

use attn::{BackwardGrads, Causal, Context, Desc, Dims, Layout, Score, Status, TrainPlan, Variant};

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let x = self.0.wrapping_mul(0x2545_F491_4F6C_DD1D);
        (x >> 11) as f64 / (1u64 << 52) as f64 - 1.0
    }
    fn vec(&mut self, n: usize, scale: f64) -> Vec<f64> {
        (0..n).map(|_| scale * self.next()).collect()
    }
}

/// The additive score's attention dim and Linformer's projected length.
const A: usize = 4;
const K: usize = 2;

#[derive(Clone, Copy, Debug, PartialEq)]
enum Kind {
    Sinks,
    General,
    Additive,
    Linformer,
}

/// The forward's inputs and dout.
struct Inputs {
    dims: Dims,
    q: Vec<f64>,
    k: Vec<f64>,
    v: Vec<f64>,
    dout: Vec<f64>,
}

impl Inputs {
    fn new(dims: Dims, rng: &mut Rng) -> Inputs {
        Inputs { dims, q: rng.vec(dims.q_len(), 1.0), k: rng.vec(dims.k_len(), 1.0), v: rng.vec(dims.v_len(), 1.0), dout: rng.vec(dims.out_len(), 1.0) }
    }
}

fn dims_of(kind: Kind) -> Dims {
    match kind {
        Kind::Sinks => Dims::new(2, 3, 4, 5, 3).kv_heads(1).value_dim(2),
        Kind::General => Dims::new(2, 2, 3, 4, 3),
        Kind::Additive => Dims::new(1, 2, 3, 4, 3).kv_heads(1).value_dim(2),
        Kind::Linformer => Dims::new(2, 2, 3, 5, 3),
    }
}

/// Parameter count of `kind` (the packed vector `p` of `eval`).
fn n_params(kind: Kind, dims: &Dims) -> usize {
    let (h, d, sk) = (dims.heads as usize, dims.head_dim as usize, dims.seq_k as usize);
    match kind {
        Kind::Sinks => h,
        Kind::General => d * d,
        Kind::Additive => 2 * A * d + 2 * A,
        Kind::Linformer => 2 * K * sk,
    }
}

/// A descriptor of `kind` over the packed parameters `p` (sinks; general W
/// [d, d]; additive w_q [A, d], w_k [A, d], bias [A], v [A]; Linformer E, F
/// [K, S_k]).
fn desc_of<'a>(ctx: &'a Context, kind: Kind, dims: &Dims, p: &'a [f64]) -> Result<Desc<'a>, attn::Error> {
    let (d, sk) = (dims.head_dim, dims.seq_k);
    let mut desc = Desc::new(ctx)?;
    match kind {
        Kind::Sinks => {
            desc.causal(Causal::BottomRight)?.sinks(p)?;
        }
        Kind::General => {
            desc.score(Score::General)?.general_weight(p, &Layout::contiguous(&[d, d]))?;
        }
        Kind::Additive => {
            let n = A * d as usize;
            let (wq, r) = p.split_at(n);
            let (wk, r) = r.split_at(n);
            let (bias, v) = r.split_at(A);
            let (w, a) = (Layout::contiguous(&[A as i64, d]), Layout::contiguous(&[A as i64]));
            desc.score(Score::Additive)?.additive_weights((wq, &w), (wk, &w), Some((bias, &a)), (v, &a))?;
        }
        Kind::Linformer => {
            let (e, f) = p.split_at(K * sk as usize);
            let l = Layout::contiguous(&[K as i64, sk]);
            desc.variant(Variant::Linformer)?.lowrank_proj((e, &l), (f, &l))?;
        }
    }
    Ok(desc)
}

/// Where `kind`'s gradients go in a packed gradient vector.
fn grads_of<'g>(kind: Kind, dims: &Dims, g: &'g mut [f64]) -> BackwardGrads<'g, f64> {
    let d = dims.head_dim as usize;
    match kind {
        Kind::Sinks => BackwardGrads { sinks: Some(g), ..Default::default() },
        Kind::General => BackwardGrads { general_weight: Some(g), ..Default::default() },
        Kind::Additive => {
            let (wq, r) = g.split_at_mut(A * d);
            let (wk, r) = r.split_at_mut(A * d);
            let (bias, v) = r.split_at_mut(A);
            BackwardGrads { additive_w_q: Some(wq), additive_w_k: Some(wk), additive_bias: Some(bias), additive_v: Some(v), ..Default::default() }
        }
        Kind::Linformer => {
            let (e, f) = g.split_at_mut(g.len() / 2);
            BackwardGrads { lowrank_e: Some(e), lowrank_f: Some(f), ..Default::default() }
        }
    }
}

/// L = Σ dout·out with the binding's forward, and (grad = Some) the
/// parameters' gradient from backward_with into `grad`.
fn eval(ctx: &Context, kind: Kind, x: &Inputs, p: &[f64], grad: Option<&mut [f64]>) -> f64 {
    let dims = x.dims;
    let desc = desc_of(ctx, kind, &dims, p).unwrap();
    let mut plan = TrainPlan::<f64>::new(&desc, &dims).unwrap();
    let mut out = vec![0.0; dims.out_len()];
    let mut lse = vec![0.0; dims.lse_len()];
    plan.forward(&x.q, &x.k, &x.v, &mut out, &mut lse).unwrap();
    let loss = out.iter().zip(&x.dout).map(|(a, b)| a * b).sum();
    if let Some(g) = grad {
        let (mut dq, mut dk, mut dv) = (vec![0.0; dims.q_len()], vec![0.0; dims.k_len()], vec![0.0; dims.v_len()]);
        let mut bg = grads_of(kind, &dims, g);
        plan.backward_with(&x.q, &x.k, &x.v, &out, &lse, &x.dout, &mut dq, &mut dk, &mut dv, &mut bg).unwrap();
    }
    loss
}

/// Relative normwise error max|g − fd| / max|fd| of `kind`'s gradient
/// against central differences (h = 1e-6).
fn fd_error(kind: Kind, seed: u64) -> f64 {
    let ctx = Context::with_threads(2).unwrap();
    let dims = dims_of(kind);
    let mut rng = Rng(seed);
    let x = Inputs::new(dims, &mut rng);
    let n = n_params(kind, &dims);
    let mut p = rng.vec(n, 0.6);
    let mut g = vec![f64::NAN; n];
    eval(&ctx, kind, &x, &p, Some(&mut g));
    let h = 1e-6;
    let (mut num, mut den) = (0.0f64, 0.0f64);
    for e in 0..n {
        let p0 = p[e];
        p[e] = p0 + h;
        let lp = eval(&ctx, kind, &x, &p, None);
        p[e] = p0 - h;
        let lm = eval(&ctx, kind, &x, &p, None);
        p[e] = p0;
        let fd = (lp - lm) / (2.0 * h);
        assert!(g[e].is_finite(), "{kind:?}: gradient {e} is {}", g[e]);
        num = num.max((g[e] - fd).abs());
        den = den.max(fd.abs());
    }
    assert!(den > 1e-3, "{kind:?}: degenerate test, max |fd| = {den:e}");
    let err = num / den;
    println!("backward_with {kind:?}: {n} parameters, relative normwise error vs finite differences {err:.3e}");
    err
}

#[test]
fn sink_gradient_matches_finite_differences() {
    let err = fd_error(Kind::Sinks, 0x1234_5678_9abc_def1);
    assert!(err <= 1e-6, "sinks: relative error {err:e}");
}

#[test]
fn general_weight_gradient_matches_finite_differences() {
    let err = fd_error(Kind::General, 0x2545_f491_4f6c_dd1d);
    assert!(err <= 1e-6, "general: relative error {err:e}");
}

#[test]
fn additive_weight_gradients_match_finite_differences() {
    let err = fd_error(Kind::Additive, 0x9e37_79b9_7f4a_7c15);
    assert!(err <= 1e-6, "additive: relative error {err:e}");
}

#[test]
fn linformer_projection_gradients_match_finite_differences() {
    let err = fd_error(Kind::Linformer, 0x0bad_cafe_f00d_1234);
    assert!(err <= 1e-6, "linformer: relative error {err:e}");
}

/// A plan of `kind`, the forward's results, and zeroed dq, dk, dv; `f`
/// runs with them and checks what it likes.
fn with_plan(kind: Kind, f: impl FnOnce(&mut TrainPlan<f64>, &Inputs, &[f64], &[f64], &mut [f64], &mut [f64], &mut [f64])) {
    let ctx = Context::with_threads(1).unwrap();
    let dims = dims_of(kind);
    let mut rng = Rng(7);
    let x = Inputs::new(dims, &mut rng);
    let p = rng.vec(n_params(kind, &dims), 0.6);
    let desc = desc_of(&ctx, kind, &dims, &p).unwrap();
    let mut plan = TrainPlan::<f64>::new(&desc, &dims).unwrap();
    let (mut out, mut lse) = (vec![0.0; dims.out_len()], vec![0.0; dims.lse_len()]);
    plan.forward(&x.q, &x.k, &x.v, &mut out, &mut lse).unwrap();
    let (mut dq, mut dk, mut dv) = (vec![0.0; dims.q_len()], vec![0.0; dims.k_len()], vec![0.0; dims.v_len()]);
    f(&mut plan, &x, &out, &lse, &mut dq, &mut dk, &mut dv);
}

#[test]
fn wrong_length_gradient_buffers_are_errors() {
    for kind in [Kind::Sinks, Kind::General, Kind::Additive, Kind::Linformer] {
        with_plan(kind, |plan, x, out, lse, dq, dk, dv| {
            let dims = dims_of(kind);
            // One element short of the packed vector: the last gradient is short.
            let mut g = vec![0.0; n_params(kind, &dims) - 1];
            let mut bg = match kind {
                Kind::Linformer => {
                    let (e, f) = g.split_at_mut(K * dims.seq_k as usize);
                    BackwardGrads { lowrank_e: Some(e), lowrank_f: Some(f), ..Default::default() }
                }
                _ => grads_of(kind, &dims, &mut g),
            };
            let err = plan.backward_with(&x.q, &x.k, &x.v, out, lse, &x.dout, dq, dk, dv, &mut bg).unwrap_err();
            assert_eq!(err.status, Status::Shape, "{kind:?}: {err}");
            assert!(err.message.contains("grads."), "{kind:?}: {err}");
            assert!(dq.iter().all(|&a| a == 0.0), "{kind:?}: dq written on error");
            assert!(g.iter().all(|&a| a == 0.0), "{kind:?}: gradient written on error");
        });
    }
}

#[test]
fn gradients_the_plan_cannot_have_are_errors() {
    with_plan(Kind::General, |plan, x, out, lse, dq, dk, dv| {
        // No sinks in the descriptor: the library refuses them.
        let mut s = vec![0.0; 2];
        let err = plan.backward_with(&x.q, &x.k, &x.v, out, lse, &x.dout, dq, dk, dv, &mut BackwardGrads { sinks: Some(&mut s), ..Default::default() }).unwrap_err();
        assert_eq!(err.status, Status::InvalidArg, "{err}");
        assert!(err.message.contains("dsinks"), "{err}");
        // No additive weights in the descriptor: the binding refuses them.
        let mut a = vec![0.0; 12];
        let err = plan.backward_with(&x.q, &x.k, &x.v, out, lse, &x.dout, dq, dk, dv, &mut BackwardGrads { additive_w_q: Some(&mut a), ..Default::default() }).unwrap_err();
        assert_eq!(err.status, Status::InvalidArg, "{err}");
        assert!(dq.iter().all(|&a| a == 0.0));
        // The plan is left as it was: a plain backward works.
        plan.backward(&x.q, &x.k, &x.v, out, lse, &x.dout, dq, dk, dv).unwrap();
        assert!(dq.iter().any(|&a| a != 0.0));
    });
    with_plan(Kind::Additive, |plan, x, out, lse, dq, dk, dv| {
        // The additive gradients come together (w_q, w_k, v).
        let mut a = vec![0.0; 12];
        let err = plan.backward_with(&x.q, &x.k, &x.v, out, lse, &x.dout, dq, dk, dv, &mut BackwardGrads { additive_w_q: Some(&mut a), ..Default::default() }).unwrap_err();
        assert_eq!(err.status, Status::NullArg, "{err}");
    });
}

#[test]
fn gradient_buffers_are_released_after_the_call() {
    with_plan(Kind::Sinks, |plan, x, out, lse, dq, dk, dv| {
        let mut s = vec![f64::NAN; 3];
        plan.backward_with(&x.q, &x.k, &x.v, out, lse, &x.dout, dq, dk, dv, &mut BackwardGrads { sinks: Some(&mut s), ..Default::default() }).unwrap();
        assert!(s.iter().all(|g| g.is_finite()));
        // A later plain backward does not write to the earlier buffer.
        s.iter_mut().for_each(|g| *g = f64::NAN);
        plan.backward(&x.q, &x.k, &x.v, out, lse, &x.dout, dq, dk, dv).unwrap();
        assert!(s.iter().all(|g| g.is_nan()));
    });
}

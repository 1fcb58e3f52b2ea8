//! MhaTrainPlan (attn_mha_backward_plan): every gradient (inputs and
//! parameters) against central finite differences of L = Σ dout·out, where
//! out comes from the layer's ordinary forward (Mha::plan + MhaPlan::execute),
//! in f64; and the errors a bad call returns.

use attn::{Causal, Context, Desc, Layout, Mha, MhaConfig, MhaDims, MhaGrads, MhaWeights, NeedWeights, Status};

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

const NAMES: [&str; 9] = ["in_proj_weight", "q_proj_weight", "k_proj_weight", "v_proj_weight", "in_proj_bias", "out_proj_weight", "out_proj_bias", "bias_k", "bias_v"];

/// The layer's parameters in MhaWeights order (None = the layer has none).
struct Params([Option<Vec<f64>>; 9]);

impl Params {
    fn random(cfg: &MhaConfig, rng: &mut Rng) -> Params {
        let e = cfg.embed_dim as usize;
        let hkv = if cfg.num_kv_heads == 0 { cfg.num_heads } else { cfg.num_kv_heads } as usize;
        let ekv = hkv * e / cfg.num_heads as usize;
        let (kd, vd) = (if cfg.kdim == 0 { e } else { cfg.kdim as usize }, if cfg.vdim == 0 { e } else { cfg.vdim as usize });
        let packed = kd == e && vd == e;
        let mut p = |on: bool, n: usize, fan: usize| if on { Some(rng.vec(n).iter().map(|x| x / (fan as f64).sqrt()).collect::<Vec<_>>()) } else { None };
        Params([
            p(packed, (e + 2 * ekv) * e, e),
            p(!packed, e * e, e),
            p(!packed, ekv * kd, kd),
            p(!packed, ekv * vd, vd),
            p(cfg.bias, e + 2 * ekv, 4),
            p(true, e * e, e),
            p(cfg.bias, e, 4),
            p(cfg.add_bias_kv, ekv, 1),
            p(cfg.add_bias_kv, ekv, 1),
        ])
    }
    fn weights(&self) -> MhaWeights<'_, f64> {
        let w = |i: usize| self.0[i].as_deref();
        MhaWeights {
            in_proj_weight: w(0),
            q_proj_weight: w(1),
            k_proj_weight: w(2),
            v_proj_weight: w(3),
            in_proj_bias: w(4),
            out_proj_weight: w(5),
            out_proj_bias: w(6),
            bias_k: w(7),
            bias_v: w(8),
        }
    }
    /// Zeroed gradient buffers of the same shapes.
    fn zeros_like(&self) -> Params {
        Params(self.0.clone().map(|p| p.map(|v| vec![0.0; v.len()])))
    }
    fn grads(&mut self) -> MhaGrads<'_, f64> {
        let [a, b, c, d, e, f, g, h, i] = &mut self.0;
        MhaGrads {
            in_proj_weight: a.as_deref_mut(),
            q_proj_weight: b.as_deref_mut(),
            k_proj_weight: c.as_deref_mut(),
            v_proj_weight: d.as_deref_mut(),
            in_proj_bias: e.as_deref_mut(),
            out_proj_weight: f.as_deref_mut(),
            out_proj_bias: g.as_deref_mut(),
            bias_k: h.as_deref_mut(),
            bias_v: i.as_deref_mut(),
        }
    }
}

struct Problem {
    cfg: MhaConfig,
    dims: MhaDims,
    causal: bool,
    params: Params,
    query: Vec<f64>,
    key: Vec<f64>,
    value: Vec<f64>,
    kpm: Option<Vec<u8>>,
    dout: Vec<f64>,
}

impl Problem {
    fn new(cfg: MhaConfig, dims: MhaDims, causal: bool, kpm: bool, self_attn: bool, seed: u64) -> Problem {
        let mut rng = Rng(seed);
        let params = Params::random(&cfg, &mut rng);
        let e = cfg.embed_dim as usize;
        let (kd, vd) = (if cfg.kdim == 0 { e } else { cfg.kdim as usize }, if cfg.vdim == 0 { e } else { cfg.vdim as usize });
        let (b, l, s) = (dims.batch as usize, dims.seq_q as usize, dims.seq_k as usize);
        let query = rng.vec(b * l * e);
        let (key, value) = if self_attn { (query.clone(), query.clone()) } else { (rng.vec(b * s * kd), rng.vec(b * s * vd)) };
        // Non-zero = attend; one padded key per batch item, never all of them.
        let kpm = if kpm { Some((0..b * s).map(|x| (x % s != (x / s) % s) as u8).collect()) } else { None };
        let dout = rng.vec(b * l * e);
        Problem { cfg, dims, causal, params, query, key, value, kpm, dout }
    }

    fn desc<'c>(&self, ctx: &'c Context) -> Desc<'c> {
        let mut desc = Desc::new(ctx).unwrap();
        if self.causal {
            desc.causal(Causal::TopLeft).unwrap();
        }
        desc
    }

    /// out of the layer's ordinary forward (a fresh layer on the current
    /// parameters: the layer borrows them immutably).
    fn forward(&self, ctx: &Context, query: &[f64], key: &[f64], value: &[f64]) -> Vec<f64> {
        let layer = Mha::<f64>::new(ctx, &self.cfg, &self.params.weights()).unwrap();
        let desc = self.desc(ctx);
        let mut plan = layer.plan(Some(&desc), &self.dims, self.kpm.is_some(), NeedWeights::No).unwrap();
        let mut out = vec![0.0; self.dout.len()];
        plan.execute(query, key, value, self.kpm.as_deref(), &mut out, None).unwrap();
        out
    }

    fn loss(&self, ctx: &Context, query: &[f64], key: &[f64], value: &[f64]) -> f64 {
        self.forward(ctx, query, key, value).iter().zip(&self.dout).map(|(o, d)| o * d).sum()
    }
}

const H: f64 = 1e-5;

fn central(mut at: impl FnMut(f64) -> f64, x0: f64) -> f64 {
    let lp = at(x0 + H);
    let lm = at(x0 - H);
    at(x0);
    (lp - lm) / (2.0 * H)
}

/// ‖got − fd‖ / ‖fd‖ (normwise relative error).
fn rel_err(got: &[f64], fd: &[f64]) -> f64 {
    let num: f64 = got.iter().zip(fd).map(|(g, f)| (g - f) * (g - f)).sum::<f64>().sqrt();
    let den: f64 = fd.iter().map(|f| f * f).sum::<f64>().sqrt();
    assert!(den > 0.0, "zero finite-difference gradient");
    num / den
}

fn check(case: &str, what: &str, got: &[f64], fd: &[f64]) {
    let err = rel_err(got, fd);
    println!("{case}: {what:<16} n={:<3} rel err {err:.2e}", got.len());
    assert!(err <= 1e-6, "{case}: {what}: relative normwise error {err:e} > 1e-6");
}

/// FD of every parameter the layer has, against `grads`.
fn check_params(ctx: &Context, p: &mut Problem, grads: &Params, case: &str, x: (&[f64], &[f64], &[f64])) {
    for i in 0..9 {
        let n = match &p.params.0[i] {
            Some(v) => v.len(),
            None => continue,
        };
        let mut fd = vec![0.0; n];
        for (e, f) in fd.iter_mut().enumerate() {
            let x0 = p.params.0[i].as_ref().unwrap()[e];
            *f = central(
                |v| {
                    p.params.0[i].as_mut().unwrap()[e] = v;
                    p.loss(ctx, x.0, x.1, x.2)
                },
                x0,
            );
        }
        check(case, NAMES[i], grads.0[i].as_ref().unwrap(), &fd);
    }
}

fn cross_attention_case(case: &str, cfg: MhaConfig, dims: MhaDims, causal: bool, kpm: bool, seed: u64) {
    let ctx = Context::with_threads(2).unwrap();
    let mut p = Problem::new(cfg, dims, causal, kpm, false, seed);
    let mut g = p.params.zeros_like();
    let (mut dq, mut dk, mut dv) = (vec![f64::NAN; p.query.len()], vec![f64::NAN; p.key.len()], vec![f64::NAN; p.value.len()]);
    {
        let layer = Mha::<f64>::new(&ctx, &p.cfg, &p.params.weights()).unwrap();
        let desc = p.desc(&ctx);
        let mut step = layer.train_plan(Some(&desc), &p.dims, p.kpm.is_some()).unwrap();
        assert!(step.workspace_size() > 0 && step.saved_size() > 0);
        let mut out = vec![f64::NAN; p.dout.len()];
        step.forward(&p.query, &p.key, &p.value, p.kpm.as_deref(), &mut out).unwrap();
        // attn_mha_forward_train's out is bitwise the ordinary forward's.
        assert_eq!(out, p.forward(&ctx, &p.query, &p.key, &p.value), "{case}: training forward != forward");
        step.backward(&p.query, &p.key, &p.value, p.kpm.as_deref(), &p.dout, Some(&mut dq), Some(&mut dk), Some(&mut dv), &mut g.grads()).unwrap();

        // Not wanted = not written; the rest bitwise as before (overwritten, not accumulated).
        let mut dk2 = vec![f64::NAN; dk.len()];
        let mut ob = vec![7.0; p.cfg.embed_dim as usize];
        step.backward(&p.query, &p.key, &p.value, p.kpm.as_deref(), &p.dout, None, Some(&mut dk2), None, &mut MhaGrads { out_proj_bias: Some(&mut ob), ..Default::default() }).unwrap();
        assert_eq!(dk2, dk, "{case}: dkey alone");
        assert_eq!(Some(&ob), g.0[6].as_ref(), "{case}: out_proj_bias alone");
    }
    let (q0, k0, v0) = (p.query.clone(), p.key.clone(), p.value.clone());
    let fd_input = |which: usize| -> Vec<f64> {
        let mut x = [q0.clone(), k0.clone(), v0.clone()];
        (0..x[which].len())
            .map(|e| {
                let x0 = x[which][e];
                central(
                    |v| {
                        x[which][e] = v;
                        p.loss(&ctx, &x[0], &x[1], &x[2])
                    },
                    x0,
                )
            })
            .collect()
    };
    check(case, "dquery", &dq, &fd_input(0));
    check(case, "dkey", &dk, &fd_input(1));
    check(case, "dvalue", &dv, &fd_input(2));
    check_params(&ctx, &mut p, &g, case, (&q0, &k0, &v0));
}

#[test]
fn packed_layer_with_biases_matches_finite_differences() {
    // E=4, H=2, B=2, S=3, sequence-first, packed in_proj with biases, a key padding mask.
    cross_attention_case("packed", MhaConfig::new(4, 2), MhaDims { batch: 2, seq_q: 3, seq_k: 3 }, false, true, 11);
}

#[test]
fn kdim_vdim_bias_kv_zero_attn_gqa_matches_finite_differences() {
    // Separate q/k/v weights (kdim 3, vdim 5), bias_k/bias_v, a zero key,
    // multi-query K/V (H_kv = 1), batch-first, S_k ≠ S_q, causal.
    let cfg = MhaConfig { kdim: 3, vdim: 5, add_bias_kv: true, add_zero_attn: true, num_kv_heads: 1, batch_first: true, ..MhaConfig::new(4, 2) };
    cross_attention_case("kdim/vdim+bias_kv", cfg, MhaDims { batch: 2, seq_q: 3, seq_k: 4 }, true, false, 12);
}

#[test]
fn self_attention_sums_the_three_input_gradients() {
    let case = "self-attention";
    let ctx = Context::with_threads(2).unwrap();
    let cfg = MhaConfig { add_bias_kv: true, ..MhaConfig::new(4, 2) };
    let mut p = Problem::new(cfg, MhaDims { batch: 2, seq_q: 3, seq_k: 3 }, true, true, false, 13);
    let mut g = p.params.zeros_like();
    let x = p.query.clone();
    let mut dx = vec![f64::NAN; x.len()];
    {
        let layer = Mha::<f64>::new(&ctx, &p.cfg, &p.params.weights()).unwrap();
        let desc = p.desc(&ctx);
        let mut step = layer.train_plan(Some(&desc), &p.dims, true).unwrap();
        let mut out = vec![0.0; x.len()];
        step.forward(&x, &x, &x, p.kpm.as_deref(), &mut out).unwrap();
        step.backward_self(&x, p.kpm.as_deref(), &p.dout, Some(&mut dx), &mut g.grads()).unwrap();
        // The sum equals the three separate gradients added up.
        let (mut dq, mut dk, mut dv) = (vec![0.0; x.len()], vec![0.0; x.len()], vec![0.0; x.len()]);
        step.backward(&x, &x, &x, p.kpm.as_deref(), &p.dout, Some(&mut dq), Some(&mut dk), Some(&mut dv), &mut MhaGrads::default()).unwrap();
        for i in 0..x.len() {
            let s = dq[i] + dk[i] + dv[i];
            assert!((dx[i] - s).abs() <= 1e-12 * (1.0 + s.abs()), "{case}: dx[{i}] = {} vs dq+dk+dv = {s}", dx[i]);
        }
    }
    let fd: Vec<f64> = {
        let mut xs = x.clone();
        (0..xs.len())
            .map(|e| {
                let x0 = xs[e];
                central(
                    |v| {
                        xs[e] = v;
                        p.loss(&ctx, &xs, &xs, &xs)
                    },
                    x0,
                )
            })
            .collect()
    };
    check(case, "dx (q+k+v)", &dx, &fd);
    check_params(&ctx, &mut p, &g, case, (&x, &x, &x));
}

#[test]
fn bad_calls_return_errors_and_write_nothing() {
    let ctx = Context::with_threads(1).unwrap();
    let p = Problem::new(MhaConfig::new(4, 2), MhaDims { batch: 2, seq_q: 3, seq_k: 3 }, false, false, false, 14);
    let layer = Mha::<f64>::new(&ctx, &p.cfg, &p.params.weights()).unwrap();
    let mut step = layer.train_plan(None, &p.dims, false).unwrap();
    let mut g = p.params.zeros_like();
    let mut dq = vec![7.0; p.query.len()];

    // backward before any forward: no activations to read.
    let e = step.backward(&p.query, &p.key, &p.value, None, &p.dout, Some(&mut dq), None, None, &mut g.grads()).unwrap_err();
    assert_eq!(e.status, Status::InvalidArg, "{e}");
    assert!(e.message.contains("forward"), "{e}");

    let mut out = vec![0.0; p.dout.len()];
    // A key padding mask the plan was made without.
    let kpm = vec![1u8; 6];
    let e = step.forward(&p.query, &p.key, &p.value, Some(&kpm), &mut out).unwrap_err();
    assert_eq!(e.status, Status::Mismatch, "{e}");
    step.forward(&p.query, &p.key, &p.value, None, &mut out).unwrap();

    // A dout slice too short for out's layout.
    let e = step.backward(&p.query, &p.key, &p.value, None, &p.dout[..5], Some(&mut dq), None, None, &mut g.grads()).unwrap_err();
    assert_eq!(e.status, Status::Shape, "{e}");
    assert!(e.message.contains("dout"), "{e}");

    // A parameter gradient of the wrong length.
    let mut bias = vec![7.0; 13]; // in_proj_bias is [12]
    let e = step.backward(&p.query, &p.key, &p.value, None, &p.dout, Some(&mut dq), None, None, &mut MhaGrads { in_proj_bias: Some(&mut bias), ..Default::default() }).unwrap_err();
    assert_eq!(e.status, Status::Shape, "{e}");
    assert!(e.message.contains("in_proj_bias"), "{e}");

    // A gradient for a parameter a packed layer does not have: the library's error.
    let mut wq = vec![7.0; 16];
    let e = step.backward(&p.query, &p.key, &p.value, None, &p.dout, Some(&mut dq), None, None, &mut MhaGrads { q_proj_weight: Some(&mut wq), ..Default::default() }).unwrap_err();
    assert_eq!(e.status, Status::InvalidArg, "{e}");
    assert_eq!(e.function, "attn_mha_backward_execute", "{e}");
    assert!(e.message.contains("q_proj_weight"), "{e}");

    assert!(dq.iter().chain(&bias).chain(&wq).all(|&v| v == 7.0), "an output was written by a failing call");
    assert!(g.0.iter().flatten().flatten().all(|&v| v == 0.0), "a gradient was written by a failing call");

    // backward_self on a cross-attention plan (key layout ≠ query layout).
    let dims = MhaDims { batch: 2, seq_q: 3, seq_k: 4 };
    let mut cross = layer.train_plan(None, &dims, false).unwrap();
    let kv = vec![0.5; 2 * 4 * 4];
    cross.forward(&p.query, &kv, &kv, None, &mut out).unwrap();
    let e = cross.backward_self(&p.query, None, &p.dout, Some(&mut dq), &mut MhaGrads::default()).unwrap_err();
    assert_eq!(e.status, Status::Mismatch, "{e}");

    // A layout the library rejects at plan time (last dim not contiguous).
    let q = Layout::strided(&[2, 3, 4], &[24, 8, 2]);
    let c = Layout::contiguous(&[2, 3, 4]);
    let e = layer.train_plan_with_layouts(None, [&q, &c, &c, &c], None).map(|_| ()).unwrap_err();
    assert_eq!(e.status, Status::Layout, "{e}");
    assert_eq!(e.function, "attn_mha_backward_plan_create", "{e}");
}

#[test]
fn f32_layer_trains_too() {
    let ctx = Context::with_threads(2).unwrap();
    let w: Vec<f32> = (0..48 + 16).map(|i| ((i * 37 % 17) as f32 - 8.0) / 20.0).collect();
    let weights = MhaWeights { in_proj_weight: Some(&w[..48]), out_proj_weight: Some(&w[48..]), ..Default::default() };
    let layer = Mha::<f32>::new(&ctx, &MhaConfig { bias: false, batch_first: true, ..MhaConfig::new(4, 2) }, &weights).unwrap();
    let dims = MhaDims { batch: 1, seq_q: 2, seq_k: 2 };
    let mut step = layer.train_plan(None, &dims, false).unwrap();
    let x: Vec<f32> = (0..8).map(|i| i as f32 / 8.0).collect();
    let mut out = vec![0.0f32; 8];
    step.forward(&x, &x, &x, None, &mut out).unwrap();
    let mut want = vec![0.0f32; 8];
    layer.plan(None, &dims, false, NeedWeights::No).unwrap().execute(&x, &x, &x, None, &mut want, None).unwrap();
    assert_eq!(out, want);
    let (mut dx, mut dwo) = (vec![0.0f32; 8], vec![0.0f32; 16]);
    step.backward_self(&x, None, &[1.0; 8], Some(&mut dx), &mut MhaGrads { out_proj_weight: Some(&mut dwo), ..Default::default() }).unwrap();
    assert!(dx.iter().chain(&dwo).all(|v| v.is_finite()) && dwo.iter().any(|&v| v != 0.0));
}

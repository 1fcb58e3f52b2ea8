//! attn::Mha and the head split/merge functions against a naive f64
//! reference written here (heads.h's formulas).

use attn::{Causal, Context, Desc, Layout, Mha, MhaConfig, MhaDims, MhaWeights, NeedWeights, Status, WeightsOut};

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

fn ctx() -> Context {
    Context::with_threads(2).expect("context")
}

#[test]
fn split_view_reads_the_same_slice_as_heads_and_merge_view_undoes_it() {
    let ctx = ctx();
    let (b, s, h, d) = (2i64, 5i64, 3i64, 4i64);
    let x = Rng(1).vec((b * s * h * d) as usize);
    let xl = Layout::contiguous(&[b, s, h * d]);
    let v = attn::heads_split_view(&ctx, &x, &xl, h).unwrap();
    assert_eq!(v.shape, vec![b, h, s, d]);
    assert_eq!(v.strides, vec![s * h * d, d, h * d, 1]); // {x.stride(0), D, x.stride(1), 1}
    let back = attn::heads_merge_view(&ctx, &x, &v).unwrap();
    assert_eq!(back, xl);
    // Contiguous [B, H, S, D]: heads are not side by side, no merge view.
    let e = attn::heads_merge_view(&ctx, &x, &Layout::contiguous(&[b, h, s, d])).unwrap_err();
    assert_eq!(e.status, Status::Layout);
    assert!(e.message.contains("x"), "{}", e);
    let e = attn::heads_split_view(&ctx, &x, &xl, 5).unwrap_err(); // 5 does not divide 12
    assert_eq!(e.status, Status::Shape);
}

#[test]
fn split_and_merge_copies_move_the_right_elements() {
    let ctx = ctx();
    let (b, s, h, d) = (2usize, 3usize, 2usize, 3usize);
    let x = Rng(2).vec(b * s * h * d);
    let xl = Layout::contiguous(&[b as i64, s as i64, (h * d) as i64]);
    let ol = Layout::contiguous(&[b as i64, h as i64, s as i64, d as i64]);
    let mut split = vec![0.0; x.len()];
    attn::heads_split(&ctx, &x, &xl, &mut split, &ol).unwrap();
    for bb in 0..b {
        for hh in 0..h {
            for ss in 0..s {
                for dd in 0..d {
                    assert_eq!(split[((bb * h + hh) * s + ss) * d + dd], x[(bb * s + ss) * h * d + hh * d + dd]);
                }
            }
        }
    }
    let mut merged = vec![7.0; x.len()];
    attn::heads_merge(&ctx, &split, &ol, &mut merged, &xl).unwrap();
    assert_eq!(merged, x);
    // A mismatched out shape: the library names out, nothing is written.
    let mut bad = vec![7.0; x.len()];
    let e = attn::heads_merge(&ctx, &split, &ol, &mut bad, &Layout::contiguous(&[b as i64, s as i64, 3])).unwrap_err();
    assert_eq!(e.status, Status::Shape);
    assert!(bad.iter().all(|&v| v == 7.0));
}

struct Weights {
    in_proj_weight: Option<Vec<f64>>,
    q: Option<Vec<f64>>,
    k: Option<Vec<f64>>,
    v: Option<Vec<f64>>,
    in_proj_bias: Option<Vec<f64>>,
    out_proj_weight: Vec<f64>,
    out_proj_bias: Option<Vec<f64>>,
    bias_k: Option<Vec<f64>>,
    bias_v: Option<Vec<f64>>,
}

impl Weights {
    fn random(cfg: &MhaConfig, rng: &mut Rng) -> Weights {
        let e = cfg.embed_dim as usize;
        let hkv = if cfg.num_kv_heads == 0 { cfg.num_heads } else { cfg.num_kv_heads } as usize;
        let ekv = hkv * e / cfg.num_heads as usize;
        let (kd, vd) = (if cfg.kdim == 0 { e } else { cfg.kdim as usize }, if cfg.vdim == 0 { e } else { cfg.vdim as usize });
        let packed = kd == e && vd == e;
        let mut scaled = |n: usize, fan: usize| rng.vec(n).iter().map(|x| x / (fan as f64).sqrt()).collect::<Vec<_>>();
        Weights {
            in_proj_weight: if packed { Some(scaled((e + 2 * ekv) * e, e)) } else { None },
            q: if packed { None } else { Some(scaled(e * e, e)) },
            k: if packed { None } else { Some(scaled(ekv * kd, kd)) },
            v: if packed { None } else { Some(scaled(ekv * vd, vd)) },
            in_proj_bias: if cfg.bias { Some(scaled(e + 2 * ekv, 4)) } else { None },
            out_proj_weight: scaled(e * e, e),
            out_proj_bias: if cfg.bias { Some(scaled(e, 4)) } else { None },
            bias_k: if cfg.add_bias_kv { Some(scaled(ekv, 1)) } else { None },
            bias_v: if cfg.add_bias_kv { Some(scaled(ekv, 1)) } else { None },
        }
    }
    fn borrow(&self) -> MhaWeights<'_, f64> {
        MhaWeights {
            in_proj_weight: self.in_proj_weight.as_deref(),
            q_proj_weight: self.q.as_deref(),
            k_proj_weight: self.k.as_deref(),
            v_proj_weight: self.v.as_deref(),
            in_proj_bias: self.in_proj_bias.as_deref(),
            out_proj_weight: Some(&self.out_proj_weight),
            out_proj_bias: self.out_proj_bias.as_deref(),
            bias_k: self.bias_k.as_deref(),
            bias_v: self.bias_v.as_deref(),
        }
    }
}

/// y[n] = Σ_f W[n][f] x[f] + bias[n] for W row-major [N, F].
fn linear(w: &[f64], rows: std::ops::Range<usize>, f: usize, x: &[f64], bias: Option<&[f64]>) -> Vec<f64> {
    rows.map(|n| (0..f).map(|i| w[n * f + i] * x[i]).sum::<f64>() + bias.map_or(0.0, |b| b[n])).collect()
}

/// heads.h's layer in f64: returns out (in the config's layout) and the
/// per-head weights [B][H][L][S'].
#[allow(clippy::too_many_arguments)]
fn mha_reference(cfg: &MhaConfig, w: &Weights, d: &MhaDims, query: &[f64], key: &[f64], value: &[f64], kpm: Option<&[u8]>, causal: bool) -> (Vec<f64>, Vec<f64>) {
    let (e, h) = (cfg.embed_dim as usize, cfg.num_heads as usize);
    let hkv = if cfg.num_kv_heads == 0 { h } else { cfg.num_kv_heads as usize };
    let dh = e / h;
    let ekv = hkv * dh;
    let (kd, vd) = (if cfg.kdim == 0 { e } else { cfg.kdim as usize }, if cfg.vdim == 0 { e } else { cfg.vdim as usize });
    let (b_, l_, s_) = (d.batch as usize, d.seq_q as usize, d.seq_k as usize);
    let row = |x: &[f64], b: usize, s: usize, n: usize, f: usize| -> Vec<f64> {
        let off = if cfg.batch_first { (b * n + s) * f } else { (s * b_ + b) * f };
        x[off..off + f].to_vec()
    };
    let bias_part = |lo: usize, hi: usize| w.in_proj_bias.as_ref().map(|bb| bb[lo..hi].to_vec());
    let (wq, wk, wv): (Vec<f64>, Vec<f64>, Vec<f64>) = match &w.in_proj_weight {
        Some(p) => (p[..e * e].to_vec(), p[e * e..(e + ekv) * e].to_vec(), p[(e + ekv) * e..].to_vec()),
        None => (w.q.clone().unwrap(), w.k.clone().unwrap(), w.v.clone().unwrap()),
    };
    let (bq, bk, bv) = (bias_part(0, e), bias_part(e, e + ekv), bias_part(e + ekv, e + 2 * ekv));
    let sx = cfg.attended_keys(d.seq_k) as usize;
    let mut out = vec![0.0; b_ * l_ * e];
    let mut probs = vec![0.0; b_ * h * l_ * sx];
    for b in 0..b_ {
        let qs: Vec<Vec<f64>> = (0..l_).map(|i| linear(&wq, 0..e, e, &row(query, b, i, l_, e), bq.as_deref())).collect();
        let mut ks: Vec<Vec<f64>> = (0..s_).map(|j| linear(&wk, 0..ekv, kd, &row(key, b, j, s_, kd), bk.as_deref())).collect();
        let mut vs: Vec<Vec<f64>> = (0..s_).map(|j| linear(&wv, 0..ekv, vd, &row(value, b, j, s_, vd), bv.as_deref())).collect();
        if cfg.add_bias_kv {
            ks.push(w.bias_k.clone().unwrap());
            vs.push(w.bias_v.clone().unwrap());
        }
        if cfg.add_zero_attn {
            ks.push(vec![0.0; ekv]);
            vs.push(vec![0.0; ekv]);
        }
        let mut merged = vec![vec![0.0; e]; l_];
        for hh in 0..h {
            let g = hh / (h / hkv);
            for i in 0..l_ {
                let kept = |j: usize| j >= s_ || (kpm.map_or(true, |m| m[b * s_ + j] != 0) && (!causal || j <= i));
                let s: Vec<f64> = (0..sx).map(|j| if kept(j) { (0..dh).map(|x| qs[i][hh * dh + x] * ks[j][g * dh + x]).sum::<f64>() / (dh as f64).sqrt() } else { f64::NEG_INFINITY }).collect();
                let m = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let z: f64 = s.iter().map(|x| (x - m).exp()).sum();
                for j in 0..sx {
                    let p = (s[j] - m).exp() / z;
                    probs[((b * h + hh) * l_ + i) * sx + j] = p;
                    for x in 0..dh {
                        merged[i][hh * dh + x] += p * vs[j][g * dh + x];
                    }
                }
            }
        }
        for (i, m) in merged.iter().enumerate() {
            let y = linear(&w.out_proj_weight, 0..e, e, m, w.out_proj_bias.as_deref());
            let off = if cfg.batch_first { (b * l_ + i) * e } else { (i * b_ + b) * e };
            out[off..off + e].copy_from_slice(&y);
        }
    }
    (out, probs)
}

fn assert_close(got: &[f64], want: &[f64], tol: f64, what: &str) {
    assert_eq!(got.len(), want.len(), "{}", what);
    for (i, (g, w)) in got.iter().zip(want.iter()).enumerate() {
        assert!((g - w).abs() <= tol * (1.0 + w.abs()), "{}[{}]: got {} want {}", what, i, g, w);
    }
}

#[test]
fn mha_matches_reference_over_configurations() {
    let ctx = ctx();
    struct Case {
        cfg: MhaConfig,
        self_attn: bool,
        kpm: bool,
        causal: bool,
        need: NeedWeights,
    }
    let base = MhaConfig::new(12, 3);
    let cases = [
        Case { cfg: base, self_attn: true, kpm: false, causal: false, need: NeedWeights::Averaged },
        Case { cfg: MhaConfig { batch_first: true, ..base }, self_attn: false, kpm: true, causal: false, need: NeedWeights::PerHead },
        Case { cfg: MhaConfig { num_kv_heads: 1, ..MhaConfig::new(12, 4) }, self_attn: false, kpm: false, causal: false, need: NeedWeights::PerHead },
        Case { cfg: MhaConfig { num_kv_heads: 2, batch_first: true, ..MhaConfig::new(16, 4) }, self_attn: true, kpm: true, causal: true, need: NeedWeights::Averaged },
        Case { cfg: MhaConfig { kdim: 5, vdim: 7, bias: false, ..base }, self_attn: false, kpm: false, causal: false, need: NeedWeights::No },
        Case { cfg: MhaConfig { add_bias_kv: true, add_zero_attn: true, ..base }, self_attn: false, kpm: true, causal: false, need: NeedWeights::PerHead },
    ];
    for (n, c) in cases.iter().enumerate() {
        let mut rng = Rng(100 + n as u64);
        let w = Weights::random(&c.cfg, &mut rng);
        let layer = Mha::<f64>::new(&ctx, &c.cfg, &w.borrow()).unwrap_or_else(|e| panic!("case {}: {}", n, e));
        let dims = MhaDims { batch: 2, seq_q: 4, seq_k: if c.self_attn { 4 } else { 6 } };
        let (b, l, s) = (2usize, 4usize, dims.seq_k as usize);
        let e = c.cfg.embed_dim as usize;
        let (kd, vd) = (if c.cfg.kdim == 0 { e } else { c.cfg.kdim as usize }, if c.cfg.vdim == 0 { e } else { c.cfg.vdim as usize });
        let query = rng.vec(b * l * e);
        let (key, value) = if c.self_attn { (query.clone(), query.clone()) } else { (rng.vec(b * s * kd), rng.vec(b * s * vd)) };
        let kpm: Vec<u8> = (0..b * s).map(|x| (x != s - 1 && x != s + 1) as u8).collect(); // non-zero = attend
        let kpm_opt = if c.kpm { Some(&kpm[..]) } else { None };
        let mut desc = Desc::new(&ctx).unwrap();
        if c.causal {
            desc.causal(Causal::TopLeft).unwrap();
        }
        let (want, probs) = mha_reference(&c.cfg, &w, &dims, &query, &key, &value, kpm_opt, c.causal);
        let sx = c.cfg.attended_keys(dims.seq_k) as usize;
        let h = c.cfg.num_heads as usize;
        let mut out = vec![f64::NAN; want.len()];
        let mut weights = vec![f64::NAN; b * h * l * sx];
        let wout = match c.need {
            NeedWeights::No => WeightsOut::None,
            NeedWeights::Averaged => WeightsOut::Averaged(&mut weights[..b * l * sx]),
            NeedWeights::PerHead => WeightsOut::PerHead(&mut weights[..]),
        };
        layer.forward(Some(&desc), &dims, &query, &key, &value, kpm_opt, &mut out, wout).unwrap_or_else(|e| panic!("case {}: {}", n, e));
        assert_close(&out, &want, 1e-12, &format!("case {} out", n));
        match c.need {
            NeedWeights::PerHead => assert_close(&weights, &probs, 1e-12, &format!("case {} weights", n)),
            NeedWeights::Averaged => {
                let avg: Vec<f64> = (0..b * l * sx).map(|x| (0..h).map(|hh| probs[((x / (l * sx)) * h + hh) * l * sx + x % (l * sx)]).sum::<f64>() / h as f64).collect();
                assert_close(&weights[..b * l * sx], &avg, 1e-12, &format!("case {} averaged weights", n));
            }
            NeedWeights::No => {}
        }
    }
}

#[test]
fn mha_plan_runs_many_times_in_f32_and_rejects_mismatches() {
    let ctx = ctx();
    let cfg = MhaConfig { batch_first: true, ..MhaConfig::new(8, 2) };
    let mut rng = Rng(7);
    let w = Weights::random(&cfg, &mut rng);
    let w32: Vec<Vec<f32>> = [w.in_proj_weight.as_ref().unwrap(), w.in_proj_bias.as_ref().unwrap(), &w.out_proj_weight, w.out_proj_bias.as_ref().unwrap()].iter().map(|v| v.iter().map(|&x| x as f32).collect()).collect();
    let weights = MhaWeights { in_proj_weight: Some(&w32[0][..]), in_proj_bias: Some(&w32[1][..]), out_proj_weight: Some(&w32[2][..]), out_proj_bias: Some(&w32[3][..]), ..Default::default() };
    let layer = Mha::<f32>::new(&ctx, &cfg, &weights).unwrap();
    let dims = MhaDims { batch: 2, seq_q: 5, seq_k: 5 };
    let mut plan = layer.plan(None, &dims, false, NeedWeights::No).unwrap();
    assert!(plan.workspace_size() > 0);
    for _ in 0..3 {
        let x: Vec<f32> = rng.vec(2 * 5 * 8).iter().map(|&v| v as f32).collect();
        let mut out = vec![0.0f32; x.len()];
        plan.execute(&x, &x, &x, None, &mut out, None).unwrap();
        let x64: Vec<f64> = x.iter().map(|&v| v as f64).collect();
        let w64 = Weights { in_proj_weight: Some(w32[0].iter().map(|&v| v as f64).collect()), q: None, k: None, v: None, in_proj_bias: Some(w32[1].iter().map(|&v| v as f64).collect()), out_proj_weight: w32[2].iter().map(|&v| v as f64).collect(), out_proj_bias: Some(w32[3].iter().map(|&v| v as f64).collect()), bias_k: None, bias_v: None };
        let (want, _) = mha_reference(&cfg, &w64, &dims, &x64, &x64, &x64, None, false);
        let got: Vec<f64> = out.iter().map(|&v| v as f64).collect();
        assert_close(&got, &want, 2e-5, "f32 out");
    }
    // Wrong slice length / a mask the plan was made without: refused, out untouched.
    let x = vec![0.5f32; 2 * 5 * 8];
    let mut out = vec![9.0f32; x.len()];
    let e = plan.execute(&x[1..], &x, &x, None, &mut out, None).unwrap_err();
    assert_eq!(e.status, Status::Shape);
    assert!(e.message.contains("query"), "{}", e);
    let e = plan.execute(&x, &x, &x, Some(&[1u8; 10]), &mut out, None).unwrap_err();
    assert_eq!(e.status, Status::Mismatch);
    assert!(out.iter().all(|&v| v == 9.0));
    // A bad key padding mask shape is named by the library.
    let bad = layer.plan_with_layouts(None, [&layer.seq_layout(2, 5, 8); 4], Some(&Layout::contiguous(&[2, 4])), None).err().expect("kpm shape");
    assert_eq!(bad.status, Status::Shape);
    assert!(bad.message.contains("key_padding_mask"), "{}", bad);
}

#[test]
fn mha_create_reports_bad_configurations_and_weights() {
    let ctx = ctx();
    let cfg = MhaConfig::new(8, 2);
    let w = Weights::random(&cfg, &mut Rng(9));
    let e = Mha::<f64>::new(&ctx, &MhaConfig::new(8, 3), &w.borrow()).err().expect("E % H");
    assert_eq!(e.status, Status::InvalidArg);
    let e = Mha::<f64>::new(&ctx, &MhaConfig { bias: false, ..cfg }, &w.borrow()).err().expect("bias given with bias=false");
    assert_eq!(e.status, Status::InvalidArg);
    assert!(e.message.contains("in_proj_bias"), "{}", e);
    let short = &w.out_proj_weight[1..];
    let e = Mha::<f64>::new(&ctx, &cfg, &MhaWeights { out_proj_weight: Some(short), ..w.borrow() }).err().expect("short weight");
    assert_eq!(e.status, Status::Shape);
    assert!(e.message.contains("out_proj_weight"), "{}", e);
    let e = Mha::<f64>::new(&ctx, &cfg, &MhaWeights { out_proj_weight: None, ..w.borrow() }).err().expect("missing weight");
    assert_eq!(e.status, Status::NullArg);
}

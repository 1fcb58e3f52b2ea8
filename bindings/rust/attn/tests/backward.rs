//! TrainPlan (backward.h) against central finite differences of the loss
//! L = Σ dout·out computed with the same plan's forward, in f64.

use attn::{Causal, Context, Desc, Dims, Status, TrainPlan, Variant};

fn rng(state: &mut u64) -> f64 {
    *state ^= *state >> 12;
    *state ^= *state << 25;
    *state ^= *state >> 27;
    let x = state.wrapping_mul(0x2545_F491_4F6C_DD1D);
    (x >> 11) as f64 / (1u64 << 52) as f64 - 1.0
}

fn loss(p: &mut TrainPlan<f64>, q: &[f64], k: &[f64], v: &[f64], dout: &[f64], out: &mut [f64], lse: &mut [f64]) -> f64 {
    p.forward(q, k, v, out, lse).unwrap();
    out.iter().zip(dout).map(|(a, b)| a * b).sum()
}

#[test]
fn gradients_match_finite_differences() {
    let ctx = Context::with_threads(2).unwrap();
    let mut desc = Desc::new(&ctx).unwrap();
    desc.causal(Causal::BottomRight).unwrap();
    let dims = Dims::new(2, 4, 5, 7, 3).kv_heads(2).value_dim(4).bshd();
    let mut plan = TrainPlan::<f64>::new(&desc, &dims).unwrap();
    assert!(plan.workspace_size() > 0);
    let mut s = 0x1234_5678_9abc_def1u64;
    let mut gen = |n: usize| (0..n).map(|_| rng(&mut s)).collect::<Vec<f64>>();
    let (mut q, mut k, mut v) = (gen(dims.q_len()), gen(dims.k_len()), gen(dims.v_len()));
    let dout = gen(dims.out_len());
    let mut out = vec![0.0; dims.out_len()];
    let mut lse = vec![0.0; dims.lse_len()];
    let (mut dq, mut dk, mut dv) = (vec![0.0; dims.q_len()], vec![0.0; dims.k_len()], vec![0.0; dims.v_len()]);
    plan.forward(&q, &k, &v, &mut out, &mut lse).unwrap();
    plan.backward(&q, &k, &v, &out, &lse, &dout, &mut dq, &mut dk, &mut dv).unwrap();
    let h = 1e-5;
    for which in 0..3 {
        let n = [q.len(), k.len(), v.len()][which];
        let mut worst = 0.0f64;
        let mut scale = 0.0f64;
        for e in 0..n {
            let x0 = [&q, &k, &v][which][e];
            let mut at = |x: f64| {
                match which {
                    0 => q[e] = x,
                    1 => k[e] = x,
                    _ => v[e] = x,
                }
                loss(&mut plan, &q, &k, &v, &dout, &mut out, &mut lse)
            };
            let lp = at(x0 + h);
            let lm = at(x0 - h);
            at(x0);
            let fd = (lp - lm) / (2.0 * h);
            let g = [&dq, &dk, &dv][which][e];
            worst = worst.max((g - fd).abs());
            scale = scale.max(fd.abs());
        }
        assert!(worst <= 1e-6 * scale.max(1e-12), "gradient {which}: max error {worst:e}, scale {scale:e}");
    }
}

#[test]
fn rejected_plans_and_short_slices() {
    let ctx = Context::with_threads(1).unwrap();
    let mut desc = Desc::new(&ctx).unwrap();
    desc.variant(Variant::LinearElu).unwrap();
    let dims = Dims::new(1, 2, 4, 4, 3);
    // Linear attention has no lse: the forward plan itself is rejected.
    assert!(TrainPlan::<f32>::new(&desc, &dims).is_err());
    let desc = Desc::new(&ctx).unwrap();
    let mut plan = TrainPlan::<f32>::new(&desc, &dims).unwrap();
    let x = vec![0.5f32; dims.q_len()];
    let mut g = vec![0.0f32; dims.q_len()];
    let (mut gk, mut gv) = (vec![0.0f32; dims.k_len()], vec![0.0f32; dims.v_len()]);
    let lse = vec![0.0f32; dims.lse_len()];
    let short = vec![0.0f32; 3];
    let err = plan.backward(&x, &x, &x, &x, &lse, &short, &mut g, &mut gk, &mut gv).unwrap_err();
    assert_eq!(err.status, Status::Shape, "{err}");
    assert!(g.iter().all(|&a| a == 0.0));
}

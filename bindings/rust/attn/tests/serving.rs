//! Packed variable-length batches, sinks and the per-key mass through the safe
//! crate, against a naive f64 reference written here.
//! Run with the built library: ATTN_LIB_DIR=build LD_LIBRARY_PATH=build cargo test --offline

use attn::{Context, Desc, Dims, Layout, Plan, Status};

fn rand_vec(seed: &mut u64, n: usize) -> Vec<f64> {
    (0..n)
        .map(|_| {
            *seed ^= *seed >> 12;
            *seed ^= *seed << 25;
            *seed ^= *seed >> 27;
            (seed.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 52) as f64 - 1.0
        })
        .collect()
}

#[test]
fn varlen_sinks_mass_match_reference() {
    let (h, hkv, d) = (4usize, 2usize, 8usize);
    let qo: Vec<i64> = vec![0, 5, 5, 22, 31];
    let ko: Vec<i64> = vec![0, 7, 10, 27, 57];
    let (tq, tk) = (31usize, 57usize);
    let mut seed = 12345u64;
    let q = rand_vec(&mut seed, tq * h * d);
    let k = rand_vec(&mut seed, tk * hkv * d);
    let v = rand_vec(&mut seed, tk * hkv * d);
    let sinks = vec![0.5, -1.0, 2.0, f64::NEG_INFINITY];
    let mut mass = vec![0.0f64; hkv * tk];
    let mut out = vec![0.0f64; tq * h * d];
    let mut lse = vec![0.0f64; h * tq];
    let ctx = Context::new().unwrap();
    {
        let mut desc = Desc::new(&ctx).unwrap();
        desc.varlen(&qo, Some(&ko)).unwrap();
        desc.sinks(&sinks).unwrap();
        desc.key_mass(&mut mass, &Layout::contiguous(&[1, hkv as i64, tk as i64])).unwrap();
        let dims = Dims { batch: 1, heads: h as i64, kv_heads: hkv as i64, seq_q: tq as i64, seq_k: tk as i64,
                          head_dim: d as i64, value_dim: d as i64, bshd: true };
        let mut plan: Plan<f64> = Plan::new(&desc, &dims, false, true).unwrap();
        plan.execute(&q, &k, &v, &mut out, None, Some(&mut lse)).unwrap();
    }
    let mut want_mass = vec![0.0f64; hkv * tk];
    let scale = 1.0 / (d as f64).sqrt();
    for s in 0..4 {
        for hh in 0..h {
            let kh = hh / (h / hkv);
            for i in qo[s] as usize..qo[s + 1] as usize {
                let keys: Vec<usize> = (ko[s] as usize..ko[s + 1] as usize).collect();
                let sc: Vec<f64> = keys.iter().map(|&j| (0..d).map(|x| q[(i * h + hh) * d + x] * k[(j * hkv + kh) * d + x]).sum::<f64>() * scale).collect();
                let m = sc.iter().cloned().fold(sinks[hh], f64::max);
                let m = if m.is_finite() { m } else { 0.0 };
                let tot: f64 = sc.iter().map(|x| (x - m).exp()).sum::<f64>() + (sinks[hh] - m).exp();
                let want_lse = if tot > 0.0 { m + tot.ln() } else { f64::NEG_INFINITY };
                let got = lse[hh * tq + i];
                assert!(got == want_lse || (got - want_lse).abs() <= 1e-10 * (1.0 + want_lse.abs()), "lse {} vs {}", got, want_lse);
                for x in 0..d {
                    let mut o = 0.0;
                    for (c, &j) in keys.iter().enumerate() {
                        o += (sc[c] - m).exp() / tot * v[(j * hkv + kh) * d + x];
                    }
                    assert!((out[(i * h + hh) * d + x] - o).abs() <= 1e-10, "out {} vs {}", out[(i * h + hh) * d + x], o);
                }
                for (c, &j) in keys.iter().enumerate() {
                    want_mass[kh * tk + j] += (sc[c] - m).exp() / tot;
                }
            }
        }
    }
    for (g, w) in mass.iter().zip(want_mass.iter()) {
        assert!((g - w).abs() <= 1e-10 * (1.0 + w.abs()), "mass {} vs {}", g, w);
    }
}

#[test]
fn bad_offsets_and_nan_sinks_are_refused() {
    let bad = [0i64, 4, 3];
    let nan = [0.0, f64::NAN];
    let ctx = Context::new().unwrap();
    let mut desc = Desc::new(&ctx).unwrap();
    let e = match desc.varlen(&bad, None) { Err(e) => e, Ok(_) => panic!("accepted decreasing offsets") };
    assert_eq!(e.status, Status::InvalidArg);
    assert!(e.message.contains("q_offsets"), "{}", e.message);
    let e = match desc.sinks(&nan) { Err(e) => e, Ok(_) => panic!("accepted a NaN sink") };
    assert_eq!(e.status, Status::InvalidArg);
    assert!(e.message.contains("sinks"), "{}", e.message);
}

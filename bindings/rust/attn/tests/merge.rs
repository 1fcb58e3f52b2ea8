//! attn::merge_states: attention over keys [0, p) and [p, S_k) merged
//! equals attention over all keys (the library's own exact result, itself
//! checked against a reference in attention.rs), in place too; both sides
//! empty give 0 and -inf.

use attn::{attention_with_stats, merge_states, merge_states_into, Context, Desc, Dims, Layout};

fn data(n: usize, seed: u64) -> Vec<f64> {
    let mut s = seed;
    (0..n)
        .map(|_| {
            s ^= s >> 12;
            s ^= s << 25;
            s ^= s >> 27;
            (s.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 52) as f64 - 1.0
        })
        .collect()
}

/// Keys [j0, j1) of k [B=1, H, S, D] as a dense [1, H, j1 - j0, D] copy.
fn keys(k: &[f64], h: usize, s: usize, d: usize, j0: usize, j1: usize) -> Vec<f64> {
    let mut out = Vec::new();
    for hh in 0..h {
        out.extend_from_slice(&k[(hh * s + j0) * d..(hh * s + j1) * d]);
    }
    out
}

#[test]
fn split_merge_equals_whole() {
    let ctx = Context::new().unwrap();
    let desc = Desc::new(&ctx).unwrap();
    let (h, sq, sk, d) = (2usize, 3usize, 8usize, 4usize);
    let q = data(h * sq * d, 1);
    let k = data(h * sk * d, 2);
    let v = data(h * sk * d, 3);
    let dims = Dims::new(1, h as i64, sq as i64, sk as i64, d as i64);
    let (mut want, mut ww, mut wl) = (vec![0.0; h * sq * d], vec![0.0; h * sq * sk], vec![0.0; h * sq]);
    attention_with_stats(&desc, &dims, &q, &k, &v, &mut want, &mut ww, &mut wl).unwrap();
    let ol = Layout::contiguous(&[1, h as i64, sq as i64, d as i64]);
    let ll = Layout::contiguous(&[1, h as i64, sq as i64]);
    for p in 1..sk {
        let mut part = |j0: usize, j1: usize| {
            let n = j1 - j0;
            let dm = Dims::new(1, h as i64, sq as i64, n as i64, d as i64);
            let (mut o, mut w, mut l) = (vec![0.0; h * sq * d], vec![0.0; h * sq * n], vec![0.0; h * sq]);
            attention_with_stats(&desc, &dm, &q, &keys(&k, h, sk, d, j0, j1), &keys(&v, h, sk, d, j0, j1), &mut o, &mut w, &mut l).unwrap();
            (o, l)
        };
        let (oa, la) = part(0, p);
        let (ob, lb) = part(p, sk);
        let (mut o, mut l) = (vec![0.0; h * sq * d], vec![0.0; h * sq]);
        merge_states(&ctx, &oa, &la, &ob, &lb, &mut o, &mut l, &ol, &ll).unwrap();
        for (g, w) in o.iter().zip(want.iter()).chain(l.iter().zip(wl.iter())) {
            assert!((g - w).abs() <= 1e-12 * (1.0 + w.abs()), "split {}: {} vs {}", p, g, w);
        }
        let (mut oa2, mut la2) = (oa.clone(), la.clone());
        merge_states_into(&ctx, &mut oa2, &mut la2, &ob, &lb, &ol, &ll).unwrap();
        assert_eq!(oa2, o);
        assert_eq!(la2, l);
    }
    // both sides empty: 0 and -inf, whatever the outs hold
    let nan = vec![f64::NAN; h * sq * d];
    let empty = vec![f64::NEG_INFINITY; h * sq];
    let (mut o, mut l) = (vec![1.0; h * sq * d], vec![1.0; h * sq]);
    merge_states(&ctx, &nan, &empty, &nan, &empty, &mut o, &mut l, &ol, &ll).unwrap();
    assert!(o.iter().all(|x| *x == 0.0));
    assert!(l.iter().all(|x| *x == f64::NEG_INFINITY));
    // a NaN lse is refused and nothing is written
    let mut bad = empty.clone();
    bad[1] = f64::NAN;
    let err = merge_states(&ctx, &nan, &bad, &nan, &empty, &mut o, &mut l, &ol, &ll).unwrap_err();
    assert!(format!("{}", err).contains("lse_a"), "{}", err);
    assert!(o.iter().all(|x| *x == 0.0));
}

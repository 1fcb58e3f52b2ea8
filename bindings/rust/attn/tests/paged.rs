//! attn::PagedCache against a naive f64 reference written here: a ragged
//! batch of sequences decoded in one call gives, per row, causal attention
//! of its queries over that sequence's rows; a fork shares blocks and a
//! write after the fork does not change the other sequence; out of blocks
//! is Status::Capacity with nothing changed; a freed id is InvalidArg.

use attn::{Causal, Context, Desc, PagedCache, PagedConfig, Status};

const HKV: usize = 2;
const H: usize = 4;
const D: usize = 8;

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 52) as f64 - 1.0
    }
    fn vec(&mut self, n: usize) -> Vec<f64> {
        (0..n).map(|_| self.next()).collect()
    }
}

/// Rows of one sequence: k[h][t][x], v[h][t][x].
#[derive(Clone, Default)]
struct Rows {
    k: Vec<Vec<Vec<f64>>>,
    v: Vec<Vec<Vec<f64>>>,
}

fn append(cache: &mut PagedCache<f64>, rows: &mut Rows, rng: &mut Rng, seq: i64, n: usize) -> Result<(), attn::Error> {
    let k = rng.vec(HKV * n * D);
    let v = rng.vec(HKV * n * D);
    cache.append(seq, &k, &v, n as i64)?;
    if rows.k.is_empty() {
        rows.k = vec![vec![]; HKV];
        rows.v = vec![vec![]; HKV];
    }
    for h in 0..HKV {
        for t in 0..n {
            rows.k[h].push(k[(h * n + t) * D..(h * n + t + 1) * D].to_vec());
            rows.v[h].push(v[(h * n + t) * D..(h * n + t + 1) * D].to_vec());
        }
    }
    Ok(())
}

/// Causal attention of query q (head h, the newest position) over rows.
fn reference(rows: &Rows, h: usize, q: &[f64]) -> Vec<f64> {
    let kh = h / (H / HKV);
    let scale = 1.0 / (D as f64).sqrt();
    let s: Vec<f64> = rows.k[kh].iter().map(|k| scale * k.iter().zip(q).map(|(a, b)| a * b).sum::<f64>()).collect();
    let m = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let p: Vec<f64> = s.iter().map(|x| (x - m).exp()).collect();
    let l: f64 = p.iter().sum();
    (0..D).map(|x| rows.v[kh].iter().zip(&p).map(|(v, w)| v[x] * w).sum::<f64>() / l).collect()
}

fn check(cache: &PagedCache<f64>, ctx: &Context, rows: &[&Rows], seqs: &[i64], rng: &mut Rng) {
    let mut desc = Desc::new(ctx).unwrap();
    desc.causal(Causal::BottomRight).unwrap();
    let n = seqs.len();
    let mut plan = cache.plan(ctx, &desc, n as i64, H as i64, 1, false).unwrap();
    let q = rng.vec(n * H * D);
    let mut out = vec![0.0; n * H * D];
    plan.execute(seqs, &q, &mut out, None, None).unwrap();
    for b in 0..n {
        for h in 0..H {
            let want = reference(rows[b], h, &q[(b * H + h) * D..(b * H + h + 1) * D]);
            for x in 0..D {
                let got = out[(b * H + h) * D + x];
                assert!((got - want[x]).abs() < 1e-10, "row {} head {}: {} vs {}", b, h, got, want[x]);
            }
        }
    }
}

#[test]
fn ragged_batch_forks_and_errors() {
    let ctx = Context::new().unwrap();
    let mut rng = Rng(0x1234_5678_9abc_def1);
    let mut cache = PagedCache::<f64>::new(&ctx, &PagedConfig { heads_kv: HKV as i64, block_size: 8, max_seqs: 4, ..PagedConfig::new(40, D as i64) }).unwrap();
    let (a, b) = (cache.create_seq().unwrap(), cache.create_seq().unwrap());
    let (mut ra, mut rb) = (Rows::default(), Rows::default());
    append(&mut cache, &mut ra, &mut rng, a, 100).unwrap();
    append(&mut cache, &mut rb, &mut rng, b, 13).unwrap();
    check(&cache, &ctx, &[&ra, &rb], &[a, b], &mut rng);

    let free = cache.free_blocks();
    let c = cache.fork(b).unwrap();
    let mut rc = rb.clone();
    assert_eq!(cache.free_blocks(), free);
    assert_eq!(cache.block_table(c).unwrap(), cache.block_table(b).unwrap());
    append(&mut cache, &mut rc, &mut rng, c, 2).unwrap(); // copies the shared last block
    assert_eq!(cache.free_blocks(), free - 1);
    check(&cache, &ctx, &[&rb, &rc, &ra], &[b, c, a], &mut rng);

    // out of blocks: nothing changes
    let err = append(&mut cache, &mut ra.clone(), &mut rng, a, 200).unwrap_err();
    assert_eq!(err.status, Status::Capacity);
    assert_eq!(cache.length(a), Some(100));
    // freed twice, appended after free
    cache.free_seq(c).unwrap();
    assert_eq!(cache.free_seq(c).unwrap_err().status, Status::InvalidArg);
    assert_eq!(cache.length(c), None);
    assert!(append(&mut cache, &mut Rows::default(), &mut rng, c, 1).is_err());
    cache.truncate(a, 50).unwrap();
    ra.k.iter_mut().for_each(|r| r.truncate(50));
    ra.v.iter_mut().for_each(|r| r.truncate(50));
    check(&cache, &ctx, &[&ra, &rb], &[a, b], &mut rng);
    assert_eq!(cache.num_seqs(), 2);
    assert!(cache.memory_used() > 0 && cache.memory_size() > cache.memory_used());
}

/// f16/int8/int4 blocks hold what a contiguous cache of the same storage
/// holds (the same quantizer), so a paged plan gives what the contiguous
/// one gives, forks and a rollback into a completed K group included.
#[test]
fn compact_storages_equal_the_contiguous_cache() {
    use attn::{KvCache, KvCacheConfig, KvStorage};
    let ctx = Context::new().unwrap();
    let mut rng = Rng(0x0bad_cafe_f00d_1234);
    let mut f32s = |n: usize| rng.vec(n).into_iter().map(|x| x as f32).collect::<Vec<f32>>();
    for storage in [KvStorage::F16, KvStorage::Int8, KvStorage::Int4] {
        let cfg = PagedConfig { heads_kv: HKV as i64, block_size: 16, max_seqs: 4, storage, group_size: 4, ..PagedConfig::new(16, D as i64) };
        let mut pc = PagedCache::<f32>::new(&ctx, &cfg).unwrap();
        let (k1, v1, k2, v2) = (f32s(HKV * 37 * D), f32s(HKV * 37 * D), f32s(HKV * 6 * D), f32s(HKV * 6 * D));
        let a = pc.create_seq().unwrap();
        pc.append(a, &k1, &v1, 37).unwrap();
        let b = pc.fork(a).unwrap();
        pc.append(b, &k2, &v2, 6).unwrap(); // copies the shared last block
        pc.truncate(a, 30).unwrap(); // into the completed group 28..32
        pc.append(a, &k2, &v2, 6).unwrap();
        let kcfg = KvCacheConfig { heads_kv: HKV as i64, storage, group_size: 4, ..KvCacheConfig::new(64, D as i64) };
        let (ka, kb) = (KvCache::<f32>::new(&ctx, &kcfg).unwrap(), KvCache::<f32>::new(&ctx, &kcfg).unwrap());
        for kc in [&ka, &kb] {
            kc.append(&k1, &v1, 37, None).unwrap();
        }
        kb.append(&k2, &v2, 6, None).unwrap();
        ka.truncate(&[30]).unwrap();
        ka.append(&k2, &v2, 6, None).unwrap();
        let mut desc = Desc::new(&ctx).unwrap();
        desc.causal(Causal::BottomRight).unwrap();
        let q = f32s(2 * H * D);
        let mut out = vec![0.0f32; 2 * H * D];
        let mut plan = pc.plan(&ctx, &desc, 2, H as i64, 1, false).unwrap();
        plan.execute(&[a, b], &q, &mut out, None, None).unwrap();
        for (row, kc) in [&ka, &kb].into_iter().enumerate() {
            let mut want = vec![0.0f32; H * D];
            let mut kp = kc.plan(&desc, H as i64, 1, false).unwrap();
            kp.execute(&q[row * H * D..(row + 1) * H * D], &mut want, None, None).unwrap();
            for x in 0..H * D {
                let got = out[row * H * D + x];
                assert!((got - want[x]).abs() <= 1e-5 * (1.0 + want[x].abs()), "{:?} row {} [{}]: {} vs {}", storage, row, x, got, want[x]);
            }
        }
    }
}

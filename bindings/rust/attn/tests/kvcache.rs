//! attn::KvCache against a naive f64 reference written here: a sequence fed
//! through the cache (prefill, then decode steps, with rollbacks and unequal
//! batch lengths) must give at every position what attention over the whole
//! sequence gives there: causal (linear cache) or a sliding window (ring).

use attn::{Causal, Context, Desc, Float, KvCache, KvCacheConfig, KvCacheMode, KvStorage, Layout, Status};

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

/// f32/f64 to and from f64 (the reference's type).
trait Num: Float + std::fmt::Debug {
    fn of(x: f64) -> Self;
    fn f(self) -> f64;
    const REL: f64;
}
impl Num for f32 {
    fn of(x: f64) -> f32 {
        x as f32
    }
    fn f(self) -> f64 {
        self as f64
    }
    const REL: f64 = 1e-5;
}
impl Num for f64 {
    fn of(x: f64) -> f64 {
        x
    }
    fn f(self) -> f64 {
        self
    }
    const REL: f64 = 1e-12;
}

/// A whole sequence: q [B,H,T,Dk], k [B,Hkv,T,Dk], v [B,Hkv,T,Dv] (f64,
/// contiguous) and each item's length.
struct Seq {
    b: usize,
    h: usize,
    hkv: usize,
    t: usize,
    dk: usize,
    dv: usize,
    lens: Vec<i64>,
    q: Vec<f64>,
    k: Vec<f64>,
    v: Vec<f64>,
}

impl Seq {
    fn new(seed: u64, b: usize, h: usize, hkv: usize, t: usize, dk: usize, dv: usize, lens: &[i64]) -> Seq {
        let mut r = Rng(seed);
        let q = r.vec(b * h * t * dk).iter().map(|x| 2.0 * x).collect(); // peakier softmax
        let k = r.vec(b * hkv * t * dk);
        let v = r.vec(b * hkv * t * dv);
        let lens = if lens.is_empty() { vec![t as i64; b] } else { lens.to_vec() };
        Seq { b, h, hkv, t, dk, dv, lens, q, k, v }
    }

    /// Reference for query position `i` of item `b`, head `h`: keys p with
    /// max(0, i − left) ≤ p ≤ i (left = None: no window), scale·q·k, ALiBi
    /// s −= slope·(i − p). Returns (out, lse, Σ p|v|).
    fn reference(&self, b: usize, h: usize, i: usize, left: Option<usize>, slopes: Option<&[f64]>) -> (Vec<f64>, f64, Vec<f64>) {
        let g = self.h / self.hkv;
        let hk = h / g;
        let lo = left.map_or(0, |l| i.saturating_sub(l));
        let scale = 1.0 / (self.dk as f64).sqrt();
        let qi = &self.q[((b * self.h + h) * self.t + i) * self.dk..][..self.dk];
        let s: Vec<f64> = (lo..=i)
            .map(|p| {
                let kp = &self.k[((b * self.hkv + hk) * self.t + p) * self.dk..][..self.dk];
                let dot: f64 = qi.iter().zip(kp).map(|(a, c)| a * c).sum();
                dot * scale - slopes.map_or(0.0, |sl| sl[h] * (i - p) as f64)
            })
            .collect();
        let m = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let l: f64 = s.iter().map(|x| (x - m).exp()).sum();
        let (mut out, mut bound) = (vec![0.0; self.dv], vec![0.0; self.dv]);
        for (j, p) in (lo..=i).enumerate() {
            let w = (s[j] - m).exp() / l;
            let vp = &self.v[((b * self.hkv + hk) * self.t + p) * self.dv..][..self.dv];
            for x in 0..self.dv {
                out[x] += w * vp[x];
                bound[x] += w * vp[x].abs();
            }
        }
        (out, m + l.ln(), bound)
    }

    /// Rows [pos_b, pos_b + counts_b) of x ([B, heads, T, d]) as a contiguous
    /// [B, heads, n, d] block, junk beyond the counts.
    fn rows<T: Num>(&self, x: &[f64], heads: usize, d: usize, pos: &[i64], counts: &[i64], n: usize) -> Vec<T> {
        let mut r = vec![T::of(1e3); self.b * heads * n * d];
        for b in 0..self.b {
            for h in 0..heads {
                for i in 0..counts[b] as usize {
                    let src = ((b * heads + h) * self.t + pos[b] as usize + i) * d;
                    let dst = ((b * heads + h) * n + i) * d;
                    for x_ in 0..d {
                        r[dst + x_] = T::of(x[src + x_]);
                    }
                }
            }
        }
        r
    }
}

struct Feed {
    prefill: usize,
    step: usize,
    spec: usize, // > 0: before each later step, append spec junk tokens, attend, roll back
}

/// Feeds the sequence through `cache` and checks every position of every
/// item against the reference. Returns the largest error seen.
fn feed_and_check<T: Num>(seq: &Seq, cache: &KvCache<'_, T>, desc: &Desc<'_>, f: &Feed, left: Option<usize>, slopes: Option<&[f64]>) -> f64 {
    let (bn, h) = (seq.b, seq.h);
    let mut pre = cache.plan(desc, h as i64, f.prefill as i64, true).expect("prefill plan");
    let mut stp = cache.plan(desc, h as i64, f.step as i64, true).expect("step plan");
    let mut spc = if f.spec > 0 { Some(cache.plan(desc, h as i64, f.spec as i64, true).expect("spec plan")) } else { None };
    let mut pos = vec![0i64; bn];
    let mut junk = Rng(99);
    let mut max_err = 0.0f64;
    let mut first = true;
    while (0..bn).any(|b| pos[b] < seq.lens[b]) {
        if let (false, Some(plan)) = (first, spc.as_mut()) {
            let n = f.spec;
            let counts: Vec<i64> = (0..bn).map(|b| if pos[b] < seq.lens[b] && pos[b] as usize + n <= seq.t { n as i64 } else { 0 }).collect();
            let j = Seq::new(junk.0 ^ 7, bn, h, seq.hkv, seq.t, seq.dk, seq.dv, &seq.lens);
            junk.next();
            let (k, v, q) = (j.rows::<T>(&j.k, seq.hkv, seq.dk, &pos, &counts, n), j.rows::<T>(&j.v, seq.hkv, seq.dv, &pos, &counts, n), j.rows::<T>(&j.q, h, seq.dk, &pos, &counts, n));
            cache.append(&k, &v, n as i64, Some(&counts)).expect("spec append");
            let mut o = vec![T::of(0.0); bn * h * n * seq.dv];
            let mut l = vec![T::of(0.0); bn * h * n];
            plan.execute(&q, &mut o, Some(&mut l), Some(&counts)).expect("spec execute");
            cache.truncate(&pos).expect("rollback");
            assert_eq!(cache.lengths(), pos);
        }
        let n = if first { f.prefill } else { f.step };
        let plan = if first { &mut pre } else { &mut stp };
        first = false;
        let counts: Vec<i64> = (0..bn).map(|b| (seq.lens[b] - pos[b]).min(n as i64)).collect();
        let all = counts.iter().all(|&c| c == n as i64);
        let (k, v, q) = (seq.rows::<T>(&seq.k, seq.hkv, seq.dk, &pos, &counts, n), seq.rows::<T>(&seq.v, seq.hkv, seq.dv, &pos, &counts, n), seq.rows::<T>(&seq.q, h, seq.dk, &pos, &counts, n));
        let c = if all { None } else { Some(&counts[..]) };
        cache.append(&k, &v, n as i64, c).expect("append");
        let mut o = vec![T::of(f64::NAN); bn * h * n * seq.dv];
        let mut l = vec![T::of(f64::NAN); bn * h * n];
        plan.execute(&q, &mut o, Some(&mut l), c).expect("execute");
        for b in 0..bn {
            for hh in 0..h {
                for i in 0..n {
                    let row = (b * h + hh) * n + i;
                    let got = &o[row * seq.dv..][..seq.dv];
                    if i as i64 >= counts[b] {
                        assert!(got.iter().all(|x| x.f() == 0.0) && l[row].f() == f64::NEG_INFINITY, "no query: out 0, lse -inf");
                        continue;
                    }
                    let t = pos[b] as usize + i;
                    let (want, lse, bound) = seq.reference(b, hh, t, left, slopes);
                    for x in 0..seq.dv {
                        let err = (got[x].f() - want[x]).abs();
                        assert!(err <= T::REL * bound[x] + T::REL * 0.1, "item {} head {} pos {} [{}]: {:?} vs {} (err {:e})", b, hh, t, x, got[x], want[x], err);
                        max_err = max_err.max(err);
                    }
                    assert!((l[row].f() - lse).abs() <= T::REL * (1.0 + lse.abs()), "lse item {} head {} pos {}: {:?} vs {}", b, hh, t, l[row], lse);
                }
            }
            pos[b] += counts[b];
        }
        assert_eq!(cache.lengths(), pos);
    }
    max_err
}

fn ctx() -> Context {
    Context::with_threads(2).expect("context")
}

fn config(seq: &Seq, capacity: i64) -> KvCacheConfig {
    KvCacheConfig { batch: seq.b as i64, heads_kv: seq.hkv as i64, d_v: seq.dv as i64, ..KvCacheConfig::new(capacity, seq.dk as i64) }
}

fn causal_desc(ctx: &Context) -> Desc<'_> {
    let mut d = Desc::new(ctx).unwrap();
    d.causal(Causal::BottomRight).unwrap();
    d
}

#[test]
fn decode_steps_equal_full_causal_attention() {
    let ctx = ctx();
    let desc = causal_desc(&ctx);
    // f32 past one 512-key chunk of the decode split, d_v ≠ d_k.
    let seq = Seq::new(1, 1, 2, 2, 560, 16, 8, &[]);
    let cache = KvCache::<f32>::new(&ctx, &config(&seq, 560)).unwrap();
    feed_and_check(&seq, &cache, &desc, &Feed { prefill: 530, step: 1, spec: 0 }, None, None);
    let seq = Seq::new(2, 1, 3, 3, 70, 8, 8, &[]);
    let cache = KvCache::<f64>::new(&ctx, &config(&seq, 70)).unwrap();
    feed_and_check(&seq, &cache, &desc, &Feed { prefill: 10, step: 1, spec: 0 }, None, None);
}

#[test]
fn gqa_and_mqa_decode() {
    let ctx = ctx();
    let desc = causal_desc(&ctx);
    for &(h, hkv) in &[(8usize, 2usize), (4, 1)] {
        let seq = Seq::new(3, 2, h, hkv, 40, 16, 16, &[]);
        let cache = KvCache::<f32>::new(&ctx, &config(&seq, 40)).unwrap();
        feed_and_check(&seq, &cache, &desc, &Feed { prefill: 9, step: 2, spec: 0 }, None, None);
    }
}

#[test]
fn unequal_batch_lengths() {
    let ctx = ctx();
    let desc = causal_desc(&ctx);
    let seq = Seq::new(4, 3, 4, 2, 45, 8, 8, &[45, 12, 30]);
    let cache = KvCache::<f32>::new(&ctx, &config(&seq, 45)).unwrap();
    feed_and_check(&seq, &cache, &desc, &Feed { prefill: 20, step: 3, spec: 0 }, None, None);
    assert_eq!(cache.lengths(), vec![45, 12, 30]);
}

#[test]
fn rollback_of_speculative_tokens() {
    let ctx = ctx();
    let desc = causal_desc(&ctx);
    let seq = Seq::new(5, 2, 2, 1, 36, 8, 8, &[36, 25]);
    let cache = KvCache::<f64>::new(&ctx, &config(&seq, 44)).unwrap();
    feed_and_check(&seq, &cache, &desc, &Feed { prefill: 6, step: 2, spec: 4 }, None, None);
}

#[test]
fn ring_equals_window_attention() {
    let ctx = ctx();
    let desc = causal_desc(&ctx);
    let seq = Seq::new(6, 2, 2, 2, 60, 8, 8, &[60, 37]);
    let cfg = KvCacheConfig { mode: KvCacheMode::Ring, ..config(&seq, 16) };
    let cache = KvCache::<f32>::new(&ctx, &cfg).unwrap();
    feed_and_check(&seq, &cache, &desc, &Feed { prefill: 1, step: 1, spec: 0 }, Some(15), None);
    assert_eq!(cache.firsts(), vec![60 - 16, 37 - 16]);
    // Window 10 with ALiBi, rollbacks of 3: capacity 10 + 3 keeps it exact.
    let slopes = [0.5, 0.125];
    let mut d = causal_desc(&ctx);
    d.window(Some(9), Some(0)).unwrap().alibi(&slopes).unwrap();
    let cfg = KvCacheConfig { mode: KvCacheMode::Ring, ..config(&seq, 13) };
    let cache = KvCache::<f32>::new(&ctx, &cfg).unwrap();
    feed_and_check(&seq, &cache, &d, &Feed { prefill: 1, step: 1, spec: 3 }, Some(9), Some(&slopes));
}

#[test]
fn growth_keeps_contents_and_plans() {
    let ctx = ctx();
    let desc = causal_desc(&ctx);
    let seq = Seq::new(7, 2, 2, 1, 80, 8, 8, &[80, 50]);
    let cache = KvCache::<f32>::new(&ctx, &KvCacheConfig { grow: true, ..config(&seq, 4) }).unwrap();
    feed_and_check(&seq, &cache, &desc, &Feed { prefill: 5, step: 3, spec: 0 }, None, None);
    assert!(cache.capacity() >= 80);
}

#[test]
fn views_show_the_storage_and_block_changes_while_alive() {
    let ctx = ctx();
    let seq = Seq::new(8, 2, 2, 2, 11, 4, 3, &[]);
    let cfg = KvCacheConfig { mode: KvCacheMode::Ring, ..config(&seq, 4) };
    let cache = KvCache::<f64>::new(&ctx, &cfg).unwrap();
    let (pos, all) = (vec![0i64, 0], vec![11i64, 11]);
    cache.append(&seq.rows::<f64>(&seq.k, 2, 4, &pos, &all, 11), &seq.rows::<f64>(&seq.v, 2, 3, &pos, &all, 11), 11, None).unwrap();
    {
        let view = cache.view().unwrap();
        assert_eq!(view.k_layout(), &Layout::contiguous(&[2, 2, 4, 4]));
        assert_eq!(view.v_layout(), &Layout::contiguous(&[2, 2, 4, 3]));
        for b in 0..2 {
            for h in 0..2 {
                for p in 7..11i64 {
                    let k = view.key(b, h, p).unwrap();
                    let want = &seq.k[((b as usize * 2 + h as usize) * 11 + p as usize) * 4..][..4];
                    assert_eq!(k, want);
                    assert_eq!(view.row(b, p), Some(p % 4));
                    let v = view.value(b, h, p).unwrap();
                    assert_eq!(v, &seq.v[((b as usize * 2 + h as usize) * 11 + p as usize) * 3..][..3]);
                }
                assert!(view.key(b, h, 6).is_none(), "evicted position");
                assert!(view.key(b, h, 11).is_none(), "not yet appended");
            }
        }
        // No copy: a second view is the same memory.
        assert_eq!(cache.view().unwrap().k().as_ptr(), view.k().as_ptr());
        let e = cache.append(&[0.0; 16], &[0.0; 12], 1, None).unwrap_err();
        assert_eq!(e.status, Status::InvalidArg);
        assert!(e.message.contains("KvView"), "{}", e);
        assert!(cache.truncate(&[10, 10]).is_err());
        assert_eq!(cache.lengths(), vec![11, 11]);
    }
    cache.truncate(&[10, 10]).unwrap();
    assert_eq!(cache.lengths(), vec![10, 10]);
}

#[test]
fn append_past_capacity_fails_and_leaves_the_cache_unchanged() {
    let ctx = ctx();
    let seq = Seq::new(9, 2, 2, 1, 6, 4, 4, &[]);
    let cache = KvCache::<f32>::new(&ctx, &config(&seq, 8)).unwrap();
    let (pos, all) = (vec![0i64, 0], vec![6i64, 6]);
    let (k, v) = (seq.rows::<f32>(&seq.k, 1, 4, &pos, &all, 6), seq.rows::<f32>(&seq.v, 1, 4, &pos, &all, 6));
    cache.append(&k, &v, 6, None).unwrap();
    let before = cache.view().unwrap().k().to_vec();
    let e = cache.append(&k, &v, 6, None).unwrap_err();
    assert_eq!(e.status, Status::Capacity);
    assert_eq!(e.function, "attn_kvcache_append");
    assert!(e.message.contains("k_new") && e.message.contains("do not fit"), "{}", e);
    assert_eq!(cache.lengths(), vec![6, 6]);
    assert_eq!(cache.view().unwrap().k(), &before[..]);
    // Per-item counts that fit go through.
    cache.append(&k, &v, 6, Some(&[2, 0])).unwrap();
    assert_eq!(cache.lengths(), vec![8, 6]);
    // Bad counts: the library names them; a wrong count of values is caught here.
    let e = cache.append(&k, &v, 6, Some(&[0, 7])).unwrap_err();
    assert_eq!((e.status, e.message.contains("counts[1]")), (Status::InvalidArg, true), "{}", e);
    let e = cache.append(&k, &v, 6, Some(&[0])).unwrap_err();
    assert_eq!(e.status, Status::InvalidArg);
    assert!(e.message.contains("counts"), "{}", e);
    // Slices shorter than their layout never reach C.
    let e = cache.append(&k[..5], &v, 6, None).unwrap_err();
    assert_eq!(e.status, Status::Shape);
    let e = cache.truncate(&[8, 7]).unwrap_err();
    assert_eq!(e.status, Status::InvalidArg);
    assert!(e.message.contains("lengths[1]"), "{}", e);
    assert_eq!(cache.lengths(), vec![8, 6]);
    cache.reset().unwrap();
    assert_eq!(cache.lengths(), vec![0, 0]);
}

#[test]
fn bad_config_plan_and_execute_errors() {
    let ctx = ctx();
    let e = KvCache::<f32>::new(&ctx, &KvCacheConfig::new(0, 4)).err().unwrap();
    assert_eq!(e.status, Status::InvalidArg);
    assert!(e.message.contains("cfg.capacity"), "{}", e);
    let e = KvCache::<f64>::new(&ctx, &KvCacheConfig { storage: KvStorage::Bf16, ..KvCacheConfig::new(4, 4) }).err().unwrap();
    assert_eq!(e.status, Status::DType);
    let bf = KvCache::<f32>::new(&ctx, &KvCacheConfig { storage: KvStorage::Bf16, ..KvCacheConfig::new(4, 4) }).unwrap();
    let e = bf.view().err().unwrap();
    assert_eq!(e.status, Status::Unsupported);
    assert!(e.message.contains("bf16"), "{}", e);

    let cache = KvCache::<f32>::new(&ctx, &KvCacheConfig { heads_kv: 2, ..KvCacheConfig::new(4, 4) }).unwrap();
    let desc = causal_desc(&ctx);
    let e = cache.plan(&desc, 3, 1, false).err().unwrap(); // 3 heads over 2 K/V heads
    assert_eq!(e.status, Status::Shape);
    let mut plan = cache.plan(&desc, 2, 1, false).unwrap();
    assert!(plan.workspace_size() > 0);
    let q = vec![0.5f32; 8];
    let mut out = vec![7.0f32; 8];
    let e = plan.execute(&q, &mut out, Some(&mut [0.0; 2]), None).unwrap_err();
    assert_eq!(e.status, Status::Mismatch);
    let e = plan.execute(&q[..7], &mut out, None, None).unwrap_err();
    assert_eq!(e.status, Status::Shape);
    let e = plan.execute(&q, &mut out, None, Some(&[2])).unwrap_err();
    assert_eq!(e.status, Status::InvalidArg);
    assert!(out.iter().all(|&x| x == 7.0));
    // An empty cache: every query keeps no key, out 0.
    plan.execute(&q, &mut out, None, None).unwrap();
    assert!(out.iter().all(|&x| x == 0.0));
}

/// f16/int8/int4 storages: one decode step against exact attention computed
/// here over what `view_raw().decode()` reads back (the kernel's own error),
/// and against the original f32 data (the storage's error); bad config.
#[test]
fn quantized_storages_decode_their_contents() {
    let ctx = ctx();
    let (hkv, h, d, n) = (2usize, 4usize, 32usize, 80usize);
    let mut s = 12345u64;
    let mut rnd = || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        (s >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0
    };
    let k: Vec<f32> = (0..hkv * n * d).map(|_| rnd() as f32).collect();
    let v: Vec<f32> = (0..hkv * n * d).map(|_| rnd() as f32).collect();
    let q: Vec<f32> = (0..h * d).map(|_| rnd() as f32).collect();
    for (st, tol) in [(KvStorage::F16, 3e-3), (KvStorage::Int8, 3e-2), (KvStorage::Int4, 3e-1)] {
        let cfg = KvCacheConfig { heads_kv: hkv as i64, storage: st, group_size: 16, ..KvCacheConfig::new(n as i64, d as i64) };
        let cache = KvCache::<f32>::new(&ctx, &cfg).unwrap();
        cache.append(&k, &v, n as i64, None).unwrap();
        let desc = causal_desc(&ctx);
        let mut plan = cache.plan(&desc, h as i64, 1, false).unwrap();
        let mut out = vec![0.0f32; h * d];
        plan.execute(&q, &mut out, None, None).unwrap();
        let raw = cache.view_raw().unwrap();
        assert_eq!(raw.storage(), st);
        assert!(raw.total_bytes() > 0);
        let scale = 1.0 / (d as f64).sqrt();
        for qh in 0..h {
            let kh = qh / (h / hkv);
            for (decoded, bound) in [(true, 1e-4), (false, tol)] {
                let row = |is_k: bool, p: usize| -> Vec<f64> {
                    if decoded {
                        raw.decode(is_k, 0, kh as i64, p as i64).unwrap().iter().map(|&x| x as f64).collect()
                    } else {
                        let src = if is_k { &k } else { &v };
                        src[(kh * n + p) * d..][..d].iter().map(|&x| x as f64).collect()
                    }
                };
                let s: Vec<f64> = (0..n).map(|p| row(true, p).iter().zip(&q[qh * d..][..d]).map(|(a, b)| a * *b as f64).sum::<f64>() * scale).collect();
                let m = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let w: Vec<f64> = s.iter().map(|x| (x - m).exp()).collect();
                let sum: f64 = w.iter().sum();
                for x in 0..d {
                    let want: f64 = (0..n).map(|p| w[p] * row(false, p)[x]).sum::<f64>() / sum;
                    let got = out[qh * d + x] as f64;
                    assert!((got - want).abs() <= bound, "{:?} decoded={} head {} x {}: {} vs {}", st, decoded, qh, x, got, want);
                }
            }
        }
        let e = cache.view().err().unwrap();
        assert_eq!(e.status, Status::Unsupported);
    }
    let e = KvCache::<f64>::new(&ctx, &KvCacheConfig { storage: KvStorage::Int8, ..KvCacheConfig::new(4, 4) }).err().unwrap();
    assert_eq!(e.status, Status::DType);
    assert!(e.message.contains("cfg.storage"), "{}", e);
    let e = KvCache::<f32>::new(&ctx, &KvCacheConfig { storage: KvStorage::Int4, group_size: 3, ..KvCacheConfig::new(4, 4) }).err().unwrap();
    assert_eq!(e.status, Status::InvalidArg);
    assert!(e.message.contains("cfg.group_size"), "{}", e);
}

package attn

// KVCache against a per-position float64 reference written here: a sequence
// fed through the cache (prefill, decode steps, rollbacks, unequal batch
// lengths) gives at every position what attention over the whole sequence
// gives there: causal (linear cache) or a sliding window (ring).

import (
	"math"
	"strings"
	"testing"
)

// kvSeq is q [B,H,T,Dk], k [B,Hkv,T,Dk], v [B,Hkv,T,Dv] (contiguous) and
// each item's length.
type kvSeq struct {
	B, H, Hkv, T, Dk, Dv int
	lens                 []int64
	q, k, v              []float64
}

func newKVSeq(seed uint64, B, H, Hkv, T, Dk, Dv int, lens []int64) *kvSeq {
	r := rng(seed)
	s := &kvSeq{B: B, H: H, Hkv: Hkv, T: T, Dk: Dk, Dv: Dv, lens: lens}
	s.q = r.vec(B * H * T * Dk)
	for i := range s.q {
		s.q[i] *= 2 // peakier softmax
	}
	s.k = r.vec(B * Hkv * T * Dk)
	s.v = r.vec(B * Hkv * T * Dv)
	if s.lens == nil {
		s.lens = make([]int64, B)
		for b := range s.lens {
			s.lens[b] = int64(T)
		}
	}
	return s
}

// ref: query position i of item b, head h over keys max(0, i-left) ≤ p ≤ i
// (left < 0: no window), ALiBi s -= slope·(i-p). Returns out, lse, Σ p|v|.
func (s *kvSeq) ref(b, h, i, left int, slopes []float64) (out []float64, lse float64, bound []float64) {
	hk := h / (s.H / s.Hkv)
	lo := 0
	if left >= 0 && i-left > 0 {
		lo = i - left
	}
	scale := 1 / math.Sqrt(float64(s.Dk))
	sc := make([]float64, i-lo+1)
	m := math.Inf(-1)
	for p := lo; p <= i; p++ {
		dot := 0.0
		for x := 0; x < s.Dk; x++ {
			dot += s.q[((b*s.H+h)*s.T+i)*s.Dk+x] * s.k[((b*s.Hkv+hk)*s.T+p)*s.Dk+x]
		}
		sc[p-lo] = dot * scale
		if slopes != nil {
			sc[p-lo] -= slopes[h] * float64(i-p)
		}
		m = math.Max(m, sc[p-lo])
	}
	l := 0.0
	for _, x := range sc {
		l += math.Exp(x - m)
	}
	out, bound = make([]float64, s.Dv), make([]float64, s.Dv)
	for p := lo; p <= i; p++ {
		w := math.Exp(sc[p-lo]-m) / l
		for x := 0; x < s.Dv; x++ {
			vv := s.v[((b*s.Hkv+hk)*s.T+p)*s.Dv+x]
			out[x] += w * vv
			bound[x] += w * math.Abs(vv)
		}
	}
	return out, m + math.Log(l), bound
}

// rows: rows [pos_b, pos_b+counts_b) of x ([B, heads, T, d]) as a contiguous
// [B, heads, n, d] block, junk beyond the counts.
func kvRows[T Float](s *kvSeq, x []float64, heads, d int, pos, counts []int64, n int) []T {
	r := make([]T, s.B*heads*n*d)
	for i := range r {
		r[i] = 1e3
	}
	for b := 0; b < s.B; b++ {
		for h := 0; h < heads; h++ {
			for i := 0; i < int(counts[b]); i++ {
				for y := 0; y < d; y++ {
					r[((b*heads+h)*n+i)*d+y] = T(x[((b*heads+h)*s.T+int(pos[b])+i)*d+y])
				}
			}
		}
	}
	return r
}

type kvFeed struct{ prefill, step, spec int }

// feedKV feeds s through c (spec > 0: before each later step append spec junk
// tokens, attend them, roll back) and checks every position.
func feedKV[T Float](t *testing.T, s *kvSeq, c *KVCache, desc *Desc, f kvFeed, left int, slopes []float64, rel float64) {
	t.Helper()
	plans := map[int]*KVPlan{}
	planFor := func(n int) *KVPlan {
		if plans[n] == nil {
			pl, err := NewKVPlan(c, desc, int64(s.H), int64(n), true)
			if err != nil {
				t.Fatal(err)
			}
			plans[n] = pl
		}
		return plans[n]
	}
	defer func() {
		for _, p := range plans {
			p.Close()
		}
	}()
	pos := make([]int64, s.B)
	more := func() bool {
		for b := range pos {
			if pos[b] < s.lens[b] {
				return true
			}
		}
		return false
	}
	seed := uint64(1000)
	for first := true; more(); first = false {
		if !first && f.spec > 0 {
			n := f.spec
			counts := make([]int64, s.B)
			for b := range counts {
				if pos[b] < s.lens[b] && int(pos[b])+n <= s.T {
					counts[b] = int64(n)
				}
			}
			seed++
			j := newKVSeq(seed, s.B, s.H, s.Hkv, s.T, s.Dk, s.Dv, s.lens)
			if err := KVAppend(c, kvRows[T](j, j.k, s.Hkv, s.Dk, pos, counts, n), kvRows[T](j, j.v, s.Hkv, s.Dv, pos, counts, n), int64(n), counts); err != nil {
				t.Fatal(err)
			}
			o, l := make([]T, s.B*s.H*n*s.Dv), make([]T, s.B*s.H*n)
			if err := KVExecute(planFor(n), kvRows[T](j, j.q, s.H, s.Dk, pos, counts, n), o, l, counts); err != nil {
				t.Fatal(err)
			}
			if err := c.Truncate(pos); err != nil {
				t.Fatal(err)
			}
		}
		n := f.step
		if first {
			n = f.prefill
		}
		counts := make([]int64, s.B)
		var cs []int64
		for b := range counts {
			counts[b] = s.lens[b] - pos[b]
			if counts[b] > int64(n) {
				counts[b] = int64(n)
			}
			if counts[b] != int64(n) {
				cs = counts
			}
		}
		if err := KVAppend(c, kvRows[T](s, s.k, s.Hkv, s.Dk, pos, counts, n), kvRows[T](s, s.v, s.Hkv, s.Dv, pos, counts, n), int64(n), cs); err != nil {
			t.Fatal(err)
		}
		o, l := make([]T, s.B*s.H*n*s.Dv), make([]T, s.B*s.H*n)
		if err := KVExecute(planFor(n), kvRows[T](s, s.q, s.H, s.Dk, pos, counts, n), o, l, cs); err != nil {
			t.Fatal(err)
		}
		for b := 0; b < s.B; b++ {
			for h := 0; h < s.H; h++ {
				for i := 0; i < n; i++ {
					row := (b*s.H+h)*n + i
					if int64(i) >= counts[b] {
						if !math.IsInf(float64(l[row]), -1) || o[row*s.Dv] != 0 {
							t.Fatalf("item %d row %d beyond counts: out %v lse %v, want 0 and -inf", b, i, o[row*s.Dv], l[row])
						}
						continue
					}
					p := int(pos[b]) + i
					want, wl, bound := s.ref(b, h, p, left, slopes)
					for x := 0; x < s.Dv; x++ {
						if got := float64(o[row*s.Dv+x]); math.Abs(got-want[x]) > rel*bound[x]+rel/10 {
							t.Fatalf("item %d head %d pos %d [%d]: %v, want %v", b, h, p, x, got, want[x])
						}
					}
					if math.Abs(float64(l[row])-wl) > rel*(1+math.Abs(wl)) {
						t.Fatalf("lse item %d head %d pos %d: %v, want %v", b, h, p, l[row], wl)
					}
				}
			}
			pos[b] += counts[b]
		}
		if got := c.Lengths(); !equalInts(got, pos) {
			t.Fatalf("lengths %v, want %v", got, pos)
		}
	}
}

func equalInts(a, b []int64) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func newKV(t *testing.T, ctx *Context, s *kvSeq, dt DType, capacity int64, mod func(*KVCacheConfig)) *KVCache {
	t.Helper()
	cfg := NewKVCacheConfig(capacity, int64(s.Dk))
	cfg.Batch, cfg.HeadsKV, cfg.DV, cfg.DType = int64(s.B), int64(s.Hkv), int64(s.Dv), dt
	if mod != nil {
		mod(&cfg)
	}
	c, err := NewKVCache(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return c
}

func causalDesc(t *testing.T, ctx *Context) *Desc {
	d := newDesc(t, ctx)
	if err := d.SetCausal(CausalBottomRight); err != nil {
		t.Fatal(err)
	}
	return d
}

func TestKVDecodeEqualsFullCausalAttention(t *testing.T) {
	ctx := newCtx(t)
	d := causalDesc(t, ctx)
	s := newKVSeq(1, 1, 2, 2, 560, 16, 8, nil) // past one 512-key decode chunk, d_v ≠ d_k
	feedKV[float32](t, s, newKV(t, ctx, s, F32, 560, nil), d, kvFeed{530, 1, 0}, -1, nil, 1e-5)
	s = newKVSeq(2, 1, 3, 3, 60, 8, 8, nil)
	feedKV[float64](t, s, newKV(t, ctx, s, F64, 60, nil), d, kvFeed{10, 1, 0}, -1, nil, 1e-12)
}

func TestKVGQAAndUnequalLengths(t *testing.T) {
	ctx := newCtx(t)
	d := causalDesc(t, ctx)
	s := newKVSeq(3, 2, 8, 2, 40, 16, 16, nil)
	feedKV[float32](t, s, newKV(t, ctx, s, F32, 40, nil), d, kvFeed{9, 2, 0}, -1, nil, 1e-5)
	s = newKVSeq(4, 3, 4, 1, 45, 8, 8, []int64{45, 12, 30})
	c := newKV(t, ctx, s, F32, 45, nil)
	feedKV[float32](t, s, c, d, kvFeed{20, 3, 0}, -1, nil, 1e-5)
	if got := c.Lengths(); !equalInts(got, []int64{45, 12, 30}) {
		t.Fatalf("lengths %v", got)
	}
}

func TestKVRollbackRingAndGrowth(t *testing.T) {
	ctx := newCtx(t)
	d := causalDesc(t, ctx)
	s := newKVSeq(5, 2, 2, 1, 36, 8, 8, []int64{36, 25})
	feedKV[float64](t, s, newKV(t, ctx, s, F64, 44, nil), d, kvFeed{6, 2, 4}, -1, nil, 1e-12)

	// Ring of 16: window attention with left = 15, no window in the desc.
	s = newKVSeq(6, 2, 2, 2, 60, 8, 8, []int64{60, 37})
	ring := newKV(t, ctx, s, F32, 16, func(c *KVCacheConfig) { c.Mode = KVCacheRing })
	feedKV[float32](t, s, ring, d, kvFeed{1, 1, 0}, 15, nil, 1e-5)
	if got := ring.Firsts(); !equalInts(got, []int64{44, 21}) {
		t.Fatalf("firsts %v", got)
	}
	// Window 10 + ALiBi in the desc, rollbacks of 3: capacity 13 keeps it exact.
	slopes := []float64{0.5, 0.125}
	dw := causalDesc(t, ctx)
	if err := dw.SetWindow(9, 0); err != nil {
		t.Fatal(err)
	}
	if err := dw.SetAlibi(slopes); err != nil {
		t.Fatal(err)
	}
	ring = newKV(t, ctx, s, F32, 13, func(c *KVCacheConfig) { c.Mode = KVCacheRing })
	feedKV[float32](t, s, ring, dw, kvFeed{1, 1, 3}, 9, slopes, 1e-5)

	s = newKVSeq(7, 2, 2, 1, 80, 8, 8, []int64{80, 50})
	grow := newKV(t, ctx, s, F32, 4, func(c *KVCacheConfig) { c.Grow = true })
	feedKV[float32](t, s, grow, d, kvFeed{5, 3, 0}, -1, nil, 1e-5)
	if grow.Capacity() < 80 {
		t.Fatalf("capacity %d after growth", grow.Capacity())
	}
}

func TestKVViewIsTheStorage(t *testing.T) {
	ctx := newCtx(t)
	s := newKVSeq(8, 2, 2, 2, 11, 4, 3, nil)
	c := newKV(t, ctx, s, F64, 4, func(c *KVCacheConfig) { c.Mode = KVCacheRing })
	pos, all := []int64{0, 0}, []int64{11, 11}
	if err := KVAppend(c, kvRows[float64](s, s.k, 2, 4, pos, all, 11), kvRows[float64](s, s.v, 2, 3, pos, all, 11), 11, nil); err != nil {
		t.Fatal(err)
	}
	k, v, kl, vl, err := KVView[float64](c)
	if err != nil {
		t.Fatal(err)
	}
	if len(k) != 2*2*4*4 || len(v) != 2*2*4*3 || kl.Shape[2] != 4 || vl.Shape[3] != 3 {
		t.Fatalf("view shapes %v %v", kl, vl)
	}
	for b := 0; b < 2; b++ {
		for h := 0; h < 2; h++ {
			for p := 7; p < 11; p++ { // ring: position p in row p % 4
				for x := 0; x < 4; x++ {
					if got, want := k[int64(b)*kl.Strides[0]+int64(h)*kl.Strides[1]+int64(p%4)*kl.Strides[2]+int64(x)], s.k[((b*2+h)*11+p)*4+x]; got != want {
						t.Fatalf("k[%d,%d] pos %d: %v want %v", b, h, p, got, want)
					}
				}
				for x := 0; x < 3; x++ {
					if got, want := v[int64(b)*vl.Strides[0]+int64(h)*vl.Strides[1]+int64(p%4)*vl.Strides[2]+int64(x)], s.v[((b*2+h)*11+p)*3+x]; got != want {
						t.Fatalf("v[%d,%d] pos %d: %v want %v", b, h, p, got, want)
					}
				}
			}
		}
	}
	// No copy: a later append shows through the same slice.
	one := []float64{9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9}
	if err := KVAppend(c, one, one[:12], 1, nil); err != nil {
		t.Fatal(err)
	}
	if k[11%4*4] != 9 {
		t.Fatalf("view does not show the append: %v", k[:16])
	}
	if _, _, _, _, err := KVView[float32](c); StatusOf(err) != StatusDType {
		t.Fatalf("view with the wrong element type: %v", err)
	}
	bf := newKV(t, ctx, s, F32, 4, func(c *KVCacheConfig) { c.Storage = KVStoreBF16 })
	if _, _, _, _, err := KVView[float32](bf); StatusOf(err) != StatusUnsupported || !strings.Contains(err.Error(), "bf16") {
		t.Fatalf("bf16 view: %v", err)
	}
}

func TestKVErrorsLeaveTheCacheUnchanged(t *testing.T) {
	ctx := newCtx(t)
	s := newKVSeq(9, 2, 2, 1, 6, 4, 4, nil)
	c := newKV(t, ctx, s, F32, 8, nil)
	pos, all := []int64{0, 0}, []int64{6, 6}
	k, v := kvRows[float32](s, s.k, 1, 4, pos, all, 6), kvRows[float32](s, s.v, 1, 4, pos, all, 6)
	if err := KVAppend(c, k, v, 6, nil); err != nil {
		t.Fatal(err)
	}
	kv, _, _, _, _ := KVView[float32](c)
	before := append([]float32(nil), kv...)
	err := KVAppend(c, k, v, 6, nil)
	var e *Error
	if StatusOf(err) != StatusCapacity || !strings.Contains(err.Error(), "k_new") || !strings.Contains(err.Error(), "do not fit") {
		t.Fatalf("append past capacity: %v", err)
	}
	if e, _ = err.(*Error); e.Func != "attn_kvcache_append" {
		t.Fatalf("func %q", e.Func)
	}
	if !equalInts(c.Lengths(), []int64{6, 6}) {
		t.Fatalf("lengths changed: %v", c.Lengths())
	}
	for i := range before {
		if kv[i] != before[i] {
			t.Fatalf("storage changed at %d", i)
		}
	}
	if err := KVAppend(c, k, v, 6, []int64{2, 0}); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		err    error
		status Status
		msg    string
	}{
		{KVAppend(c, k, v, 6, []int64{0, 7}), StatusInvalidArg, "counts[1]"},
		{KVAppend(c, k, v, 6, []int64{0}), StatusInvalidArg, "counts"},
		{KVAppend(c, k[:5], v, 6, nil), StatusShape, "k_new"},
		{KVAppend(c, []float64{1, 2, 3, 4, 5, 6, 7, 8}, []float64{1, 2, 3, 4, 5, 6, 7, 8}, 1, nil), StatusDType, "k_new"},
		{c.Truncate([]int64{8, 7}), StatusInvalidArg, "lengths[1]"},
		{c.Truncate([]int64{1}), StatusInvalidArg, "lengths"},
	} {
		if StatusOf(tc.err) != tc.status || !strings.Contains(tc.err.Error(), tc.msg) {
			t.Fatalf("got %v, want status %d naming %q", tc.err, tc.status, tc.msg)
		}
	}
	if !equalInts(c.Lengths(), []int64{8, 6}) {
		t.Fatalf("lengths %v", c.Lengths())
	}

	if _, err := NewKVCache(ctx, NewKVCacheConfig(0, 4)); StatusOf(err) != StatusInvalidArg || !strings.Contains(err.Error(), "cfg.capacity") {
		t.Fatalf("capacity 0: %v", err)
	}
	d := causalDesc(t, ctx)
	if pl, err := NewKVPlan(c, d, 3, 1, false); err != nil { // 3 heads over 1 K/V head is fine
		t.Fatal(err)
	} else {
		pl.Close()
	}
	c2 := newKV(t, ctx, &kvSeq{B: 1, Hkv: 2, Dk: 4, Dv: 4}, F32, 4, nil)
	if _, err := NewKVPlan(c2, d, 3, 1, false); StatusOf(err) != StatusShape {
		t.Fatalf("3 heads over 2 K/V heads: %v", err)
	}
	pl, err := NewKVPlan(c2, d, 2, 1, false)
	if err != nil {
		t.Fatal(err)
	}
	defer pl.Close()
	if pl.WorkspaceSize() <= 0 {
		t.Fatal("no workspace")
	}
	q, out := []float32{1, 1, 1, 1, 1, 1, 1, 1}, []float32{7, 7, 7, 7, 7, 7, 7, 7}
	for _, tc := range []struct {
		err    error
		status Status
	}{
		{KVExecute(pl, q, out, []float32{0, 0}, nil), StatusMismatch},
		{KVExecute(pl, q[:7], out, nil, nil), StatusShape},
		{KVExecute(pl, q, out, nil, []int64{2}), StatusInvalidArg},
		{KVExecute(pl, []float64{1, 1, 1, 1, 1, 1, 1, 1}, []float64{0, 0, 0, 0, 0, 0, 0, 0}, nil, nil), StatusDType},
	} {
		if StatusOf(tc.err) != tc.status {
			t.Fatalf("got %v, want status %d", tc.err, tc.status)
		}
	}
	for _, x := range out {
		if x != 7 {
			t.Fatalf("out written on error: %v", out)
		}
	}
	// Closing the cache first is safe: the plan keeps the C cache until it closes.
	c2.Close()
	if err := KVExecute(pl, q, out, nil, nil); err != nil { // empty cache: out 0
		t.Fatal(err)
	}
	for _, x := range out {
		if x != 0 {
			t.Fatalf("empty cache: out %v", out)
		}
	}
	if err := KVAppend(c2, q, q, 1, nil); StatusOf(err) != StatusNullArg {
		t.Fatalf("append after Close: %v", err)
	}
}

// F16/Int8/Int4 storages: a decode step equals attention over what
// KVViewRaw().Decode reads back (the kernel's own error) and is close to
// attention over the original data (the storage's error); bad config.
func TestKVQuantizedStorages(t *testing.T) {
	ctx := newCtx(t)
	d := causalDesc(t, ctx)
	for _, tc := range []struct {
		st  KVStorage
		tol float64
	}{{KVStoreF16, 3e-3}, {KVStoreInt8, 3e-2}, {KVStoreInt4, 3e-1}} {
		s := newKVSeq(7, 1, 4, 2, 70, 32, 32, nil)
		c := newKV(t, ctx, s, F32, 70, func(cfg *KVCacheConfig) { cfg.Storage, cfg.GroupSize = tc.st, 16 })
		all := []int64{0}
		if err := KVAppend(c, kvRows[float32](s, s.k, s.Hkv, s.Dk, all, []int64{70}, 70),
			kvRows[float32](s, s.v, s.Hkv, s.Dv, all, []int64{70}, 70), 70, nil); err != nil {
			t.Fatal(err)
		}
		pl, err := NewKVPlan(c, d, int64(s.H), 1, false)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(pl.Close)
		q := kvRows[float32](s, s.q, s.H, s.Dk, []int64{69}, []int64{1}, 1)
		out := make([]float32, s.H*s.Dv)
		if err := KVExecute(pl, q, out, nil, nil); err != nil {
			t.Fatal(err)
		}
		raw, err := KVViewRaw(c)
		if err != nil {
			t.Fatal(err)
		}
		if raw.Storage != tc.st || raw.TotalBytes <= 0 {
			t.Fatalf("raw view: storage %d, %d bytes", raw.Storage, raw.TotalBytes)
		}
		dec := *s
		dec.k, dec.v = make([]float64, len(s.k)), make([]float64, len(s.v))
		for h := 0; h < s.Hkv; h++ {
			for p := 0; p < 70; p++ {
				for x, v := range raw.Decode(true, 0, int64(h), int64(p), 70) {
					dec.k[(h*s.T+p)*s.Dk+x] = float64(v)
				}
				for x, v := range raw.Decode(false, 0, int64(h), int64(p), 70) {
					dec.v[(h*s.T+p)*s.Dv+x] = float64(v)
				}
			}
		}
		for h := 0; h < s.H; h++ {
			want, _, bound := dec.ref(0, h, 69, -1, nil)
			orig, _, _ := s.ref(0, h, 69, -1, nil)
			for x := range want {
				got := float64(out[h*s.Dv+x])
				if math.Abs(got-want[x]) > 1e-5*bound[x]+1e-6 {
					t.Fatalf("storage %d head %d x %d: %g vs decoded %g", tc.st, h, x, got, want[x])
				}
				if math.Abs(got-orig[x]) > tc.tol {
					t.Fatalf("storage %d head %d x %d: %g vs original %g", tc.st, h, x, got, orig[x])
				}
			}
		}
		if _, _, _, _, err := KVView[float32](c); err == nil || !strings.Contains(err.Error(), "attn_kvcache_view_raw") {
			t.Fatalf("float view of storage %d: %v", tc.st, err)
		}
	}
	cfg := NewKVCacheConfig(4, 64)
	cfg.DType, cfg.Storage = F64, KVStoreInt8
	if _, err := NewKVCache(ctx, cfg); err == nil || !strings.Contains(err.Error(), "cfg.storage") {
		t.Fatalf("f64 int8 cache: %v", err)
	}
	cfg.DType, cfg.Storage, cfg.GroupSize = F32, KVStoreInt4, 48
	if _, err := NewKVCache(ctx, cfg); err == nil || !strings.Contains(err.Error(), "cfg.group_size") {
		t.Fatalf("group 48 of d 64: %v", err)
	}
}

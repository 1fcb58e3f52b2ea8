package attn

// Tests against a naive float64 reference written here. Run against a build
// tree: PKG_CONFIG_PATH=build/bindings-pkgconfig LD_LIBRARY_PATH=build go test
// (CTest: go_bindings, with GODEBUG=cgocheck=2 to check the pointer rules).
// Every long-sequence variant on main is checked against a reference written
// here from approx.h's definitions (StatusUnsupported is a failure).

import (
	"math"
	"runtime"
	"strings"
	"testing"
)

type rng uint64

func (r *rng) next() float64 {
	*r ^= *r >> 12
	*r ^= *r << 25
	*r ^= *r >> 27
	x := uint64(*r) * 0x2545F4914F6CDD1D
	return float64(x>>11)/float64(uint64(1)<<52) - 1
}

func (r *rng) vec(n int) []float64 {
	v := make([]float64, n)
	for i := range v {
		v[i] = r.next()
	}
	return v
}

type refOpts struct {
	causal     Causal
	scale      float64 // 0: 1/sqrt(d)
	keyLengths []int64
	keep       func(i, j int) bool
	keepH      func(h, i, j int) bool    // per-head keep (BigBird, block layouts)
	bias       func(h, i, j int) float64 // added to the score (Swin's table)
}

// reference: out, lse, bound (Σ p|v|) as logical [B,H,Sq,Dv] / [B,H,Sq].
func reference(d Dims, q, k, v []float64, o refOpts) (out, lse, bound []float64) {
	d = d.norm()
	B, H, Hk, Sq, Sk, Dk, Dv := int(d.Batch), int(d.Heads), int(d.KVHeads), int(d.SeqQ), int(d.SeqK), int(d.HeadDim), int(d.ValueDim)
	g := H / Hk
	ql, kl, vl := d.QLayout(), d.KLayout(), d.VLayout()
	at := func(l Layout, x []float64, i ...int) float64 {
		off := int64(0)
		for a := range i {
			off += int64(i[a]) * l.Strides[a]
		}
		return x[off]
	}
	scale := o.scale
	if scale == 0 {
		scale = 1 / math.Sqrt(float64(Dk))
	}
	out = make([]float64, B*H*Sq*Dv)
	bound = make([]float64, B*H*Sq*Dv)
	lse = make([]float64, B*H*Sq)
	for b := 0; b < B; b++ {
		for h := 0; h < H; h++ {
			for i := 0; i < Sq; i++ {
				row := (b*H+h)*Sq + i
				ia := i
				if o.causal == CausalBottomRight {
					ia += Sk - Sq
				}
				s := make([]float64, Sk)
				m := math.Inf(-1)
				for j := 0; j < Sk; j++ {
					keep := o.causal == CausalNone || j <= ia
					if o.keyLengths != nil && int64(j) >= o.keyLengths[b] {
						keep = false
					}
					if o.keep != nil && !o.keep(i, j) {
						keep = false
					}
					if o.keepH != nil && !o.keepH(h, i, j) {
						keep = false
					}
					s[j] = math.Inf(-1)
					if keep {
						dot := 0.0
						for x := 0; x < Dk; x++ {
							dot += at(ql, q, b, h, i, x) * at(kl, k, b, h/g, j, x)
						}
						s[j] = dot * scale
						if o.bias != nil {
							s[j] += o.bias(h, i, j)
						}
						m = math.Max(m, s[j])
					}
				}
				lse[row] = math.Inf(-1)
				if math.IsInf(m, -1) {
					continue
				}
				l := 0.0
				for j := 0; j < Sk; j++ {
					l += math.Exp(s[j] - m)
				}
				lse[row] = m + math.Log(l)
				for j := 0; j < Sk; j++ {
					p := math.Exp(s[j]-m) / l
					for x := 0; x < Dv; x++ {
						vv := at(vl, v, b, h/g, j, x)
						out[row*Dv+x] += p * vv
						bound[row*Dv+x] += p * math.Abs(vv)
					}
				}
			}
		}
	}
	return
}

// logical reads out (in dims' out layout) as [B,H,Sq,Dv].
func logical[T Float](d Dims, out []T) []float64 {
	d = d.norm()
	l := d.OutLayout()
	r := make([]float64, 0, d.OutLen())
	for b := int64(0); b < d.Batch; b++ {
		for h := int64(0); h < d.Heads; h++ {
			for i := int64(0); i < d.SeqQ; i++ {
				for x := int64(0); x < d.ValueDim; x++ {
					r = append(r, float64(out[b*l.Strides[0]+h*l.Strides[1]+i*l.Strides[2]+x*l.Strides[3]]))
				}
			}
		}
	}
	return r
}

func assertClose(t *testing.T, what string, got, want, bound []float64, rel, abs float64) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("%s: %d values, want %d", what, len(got), len(want))
	}
	for i := range got {
		if math.IsNaN(got[i]) || math.Abs(got[i]-want[i]) > rel*bound[i]+abs {
			t.Fatalf("%s[%d] = %g, want %g (tol %g)", what, i, got[i], want[i], rel*bound[i]+abs)
		}
	}
}

func to32(x []float64) []float32 {
	r := make([]float32, len(x))
	for i, v := range x {
		r[i] = float32(v)
	}
	return r
}

func back(x []float32) []float64 {
	r := make([]float64, len(x))
	for i, v := range x {
		r[i] = float64(v)
	}
	return r
}

func newCtx(t *testing.T) *Context {
	t.Helper()
	ctx, err := NewContext(2)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(ctx.Close)
	return ctx
}

func newDesc(t *testing.T, ctx *Context) *Desc {
	t.Helper()
	d, err := NewDesc(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(d.Close)
	return d
}

func TestVersionMajor(t *testing.T) {
	if VersionNumber()/10000 != ExpectedMajor {
		t.Fatalf("library %s, package expects major %d", Version(), ExpectedMajor)
	}
	if !strings.HasPrefix(Version(), "0.") {
		t.Fatalf("version %q", Version())
	}
}

func TestExactMatchesReference(t *testing.T) {
	ctx := newCtx(t)
	shapes := []Dims{
		{Batch: 1, Heads: 1, SeqQ: 1, SeqK: 1, HeadDim: 1},
		{Batch: 2, Heads: 3, SeqQ: 7, SeqK: 7, HeadDim: 5},
		{Batch: 2, Heads: 4, KVHeads: 2, SeqQ: 9, SeqK: 20, HeadDim: 8, ValueDim: 3},
		{Batch: 1, Heads: 4, KVHeads: 1, SeqQ: 17, SeqK: 17, HeadDim: 64},
		{Batch: 1, Heads: 2, SeqQ: 12, SeqK: 5, HeadDim: 4},
	}
	r := rng(0x9E3779B97F4A7C15)
	for _, base := range shapes {
		for _, causal := range []Causal{CausalNone, CausalTopLeft, CausalBottomRight} {
			for _, bshd := range []bool{false, true} {
				dims := base
				dims.BSHD = bshd
				q, k, v := r.vec(dims.QLen()), r.vec(dims.KLen()), r.vec(dims.VLen())
				desc := newDesc(t, ctx)
				if err := desc.SetCausal(causal); err != nil {
					t.Fatal(err)
				}
				want, wlse, bound := reference(dims, q, k, v, refOpts{causal: causal})
				out := make([]float64, dims.OutLen())
				w := make([]float64, dims.WeightsLen())
				lse := make([]float64, dims.LseLen())
				if err := AttentionStats(desc, dims, q, k, v, out, w, lse); err != nil {
					t.Fatal(err)
				}
				assertClose(t, "out f64", logical(dims, out), want, bound, 1e-12, 1e-13)
				for i := range lse {
					if !(lse[i] == wlse[i] || math.Abs(lse[i]-wlse[i]) <= 1e-12*math.Max(1, math.Abs(wlse[i]))) {
						t.Fatalf("lse[%d] = %g, want %g", i, lse[i], wlse[i])
					}
				}
				q32, k32, v32 := to32(q), to32(k), to32(v)
				want32, _, bound32 := reference(dims, back(q32), back(k32), back(v32), refOpts{causal: causal})
				out32 := make([]float32, dims.OutLen())
				if err := Attention(desc, dims, q32, k32, v32, out32); err != nil {
					t.Fatal(err)
				}
				assertClose(t, "out f32", logical(dims, out32), want32, bound32, 1e-5, 1e-6)
			}
		}
	}
}

func TestFullyMaskedRowsGiveZeroAndMinusInf(t *testing.T) {
	ctx := newCtx(t)
	desc := newDesc(t, ctx)
	if err := desc.SetCausal(CausalBottomRight); err != nil {
		t.Fatal(err)
	}
	dims := Dims{Batch: 1, Heads: 1, SeqQ: 5, SeqK: 2, HeadDim: 3}
	r := rng(3)
	q, k, v := to32(r.vec(dims.QLen())), to32(r.vec(dims.KLen())), to32(r.vec(dims.VLen()))
	out, w, lse := make([]float32, dims.OutLen()), make([]float32, dims.WeightsLen()), make([]float32, dims.LseLen())
	if err := AttentionStats(desc, dims, q, k, v, out, w, lse); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 3; i++ {
		if !math.IsInf(float64(lse[i]), -1) || out[i*3] != 0 || w[i*2] != 0 {
			t.Fatalf("row %d: lse %g out %g w %g", i, lse[i], out[i*3], w[i*2])
		}
	}
}

func TestMasksFromTensorsAndCopiedArrays(t *testing.T) {
	ctx := newCtx(t)
	desc := newDesc(t, ctx)
	dims := Dims{Batch: 2, Heads: 2, SeqQ: 5, SeqK: 9, HeadDim: 8}
	mask, err := NewTensor(ctx, U8, 1, 1, 5, 9)
	if err != nil {
		t.Fatal(err)
	}
	defer mask.Close()
	mb := mask.Bytes()
	for i := range mb {
		if i%3 != 1 {
			mb[i] = 1
		}
	}
	lens := []int64{4, 9}
	if err := desc.SetKeyLengths(lens); err != nil {
		t.Fatal(err)
	}
	lens[0] = 1 // the descriptor copied the array: this does not change it
	if err := desc.SetBoolMask(mask); err != nil {
		t.Fatal(err)
	}
	if err := desc.SetScale(0.3); err != nil {
		t.Fatal(err)
	}
	runtime.GC() // nothing the descriptor uses may be collected
	r := rng(11)
	q, k, v := r.vec(dims.QLen()), r.vec(dims.KLen()), r.vec(dims.VLen())
	want, _, bound := reference(dims, q, k, v, refOpts{scale: 0.3, keyLengths: []int64{4, 9},
		keep: func(i, j int) bool { return (i*9+j)%3 != 1 }})
	out := make([]float64, dims.OutLen())
	if err := Attention(desc, dims, q, k, v, out); err != nil {
		t.Fatal(err)
	}
	assertClose(t, "masked out", out, want, bound, 1e-12, 1e-13)
}

func TestPlanOnSlicesAndOnTensors(t *testing.T) {
	ctx := newCtx(t)
	desc := newDesc(t, ctx)
	if err := desc.SetCausal(CausalTopLeft); err != nil {
		t.Fatal(err)
	}
	dims := Dims{Batch: 1, Heads: 2, SeqQ: 16, SeqK: 16, HeadDim: 8}
	pl, err := NewPlan(desc, F32, dims, false, false)
	if err != nil {
		t.Fatal(err)
	}
	defer pl.Close()
	desc.Close() // plans stay valid after their descriptor is closed
	r := rng(13)
	for rep := 0; rep < 3; rep++ {
		q, k, v := to32(r.vec(dims.QLen())), to32(r.vec(dims.KLen())), to32(r.vec(dims.VLen()))
		want, _, bound := reference(dims, back(q), back(k), back(v), refOpts{causal: CausalTopLeft})
		out := make([]float32, dims.OutLen())
		if err := Execute(pl, q, k, v, out, nil, nil); err != nil {
			t.Fatal(err)
		}
		assertClose(t, "plan out", back(out), want, bound, 1e-5, 1e-6)
	}
	// The same plan on libattn-allocated tensors.
	var ts [4]*Tensor
	for i := range ts {
		if ts[i], err = NewTensor(ctx, F32, 1, 2, 16, 8); err != nil {
			t.Fatal(err)
		}
		defer ts[i].Close()
	}
	for i := 0; i < 3; i++ {
		copy(ts[i].Float32(), to32(r.vec(dims.QLen())))
	}
	if err := pl.ExecuteTensors(ts[0], ts[1], ts[2], ts[3], nil, nil); err != nil {
		t.Fatal(err)
	}
	want, _, bound := reference(dims, back(ts[0].Float32()), back(ts[1].Float32()), back(ts[2].Float32()), refOpts{causal: CausalTopLeft})
	assertClose(t, "tensor out", back(ts[3].Float32()), want, bound, 1e-5, 1e-6)
}

func expectErr(t *testing.T, err error, st Status, needle string) {
	t.Helper()
	if err == nil {
		t.Fatalf("expected %v, got nil", st)
	}
	e, ok := err.(*Error)
	if !ok || e.Status != st || !strings.Contains(e.Message, needle) {
		t.Fatalf("expected status %d with %q in the message, got %v", st, needle, err)
	}
	if !strings.Contains(err.Error(), st.String()) {
		t.Fatalf("error text %q lacks the status text", err.Error())
	}
}

func TestErrors(t *testing.T) {
	ctx := newCtx(t)
	desc := newDesc(t, ctx)
	dims := Dims{Batch: 1, Heads: 2, SeqQ: 5, SeqK: 5, HeadDim: 4}
	q := make([]float32, dims.QLen())
	out := make([]float32, dims.OutLen())
	for i := range out {
		out[i] = 7
	}
	untouched := func() {
		for _, x := range out {
			if x != 7 {
				t.Fatal("out was written on error")
			}
		}
	}

	bad := Contiguous(2, 2, 5, 4)
	_, err := NewPlanLayouts(desc, F32, [4]Layout{dims.QLayout(), bad, bad, dims.OutLayout()}, nil, nil)
	expectErr(t, err, StatusShape, "k:")

	expectErr(t, Attention(desc, dims, q[:3], q, q, out), StatusShape, "q: slice has 3")
	untouched()

	strided := Layout{Shape: []int64{1, 2, 5, 4}, Strides: []int64{80, 40, 8, 2}}
	_, err = NewPlanLayouts(desc, F32, [4]Layout{strided, dims.KLayout(), dims.VLayout(), dims.OutLayout()}, nil, nil)
	expectErr(t, err, StatusLayout, "q:")

	expectErr(t, desc.SetScale(math.NaN()), StatusInvalidArg, "scale")
	expectErr(t, desc.SetVariant(Variant(99)), StatusInvalidArg, "variant")

	d2 := newDesc(t, ctx)
	if err := d2.SetKeyLengths([]int64{9}); err != nil {
		t.Fatal(err)
	}
	expectErr(t, Attention(d2, dims, q, q, q, out), StatusInvalidArg, "key_lengths")
	untouched()

	pl, err := NewPlan(desc, F32, dims, false, false)
	if err != nil {
		t.Fatal(err)
	}
	defer pl.Close()
	w := make([]float32, dims.WeightsLen())
	expectErr(t, Execute(pl, q, q, q, out, w, nil), StatusMismatch, "weights")
	q64 := make([]float64, dims.QLen())
	expectErr(t, Execute(pl, q64, q64, q64, make([]float64, dims.OutLen()), nil, nil), StatusDType, "dtype")

	if _, err := NewContext(-1); StatusOf(err) != StatusInvalidArg {
		t.Fatalf("NewContext(-1): %v", err)
	}
}

func TestThreadCountDoesNotChangeResults(t *testing.T) {
	dims := Dims{Batch: 2, Heads: 4, SeqQ: 130, SeqK: 130, HeadDim: 32}
	r := rng(17)
	q := to32(r.vec(dims.QLen()))
	run := func(threads int) []float32 {
		ctx, err := NewContext(threads)
		if err != nil {
			t.Fatal(err)
		}
		defer ctx.Close()
		desc, _ := NewDesc(ctx)
		defer desc.Close()
		_ = desc.SetCausal(CausalTopLeft)
		out := make([]float32, dims.OutLen())
		if err := Attention(desc, dims, q, q, q, out); err != nil {
			t.Fatal(err)
		}
		return out
	}
	a, b := run(1), run(2)
	for i := range a {
		if a[i] != b[i] {
			t.Fatalf("out[%d]: %g with 1 thread, %g with 2", i, a[i], b[i])
		}
	}
}

// Finalizers free what the user forgot to Close, without crashing.
func TestFinalizersReleaseForgottenObjects(t *testing.T) {
	for i := 0; i < 20; i++ {
		ctx, _ := NewContext(1)
		desc, _ := NewDesc(ctx)
		_ = desc.SetKeyLengths([]int64{3})
		pl, err := NewPlan(desc, F64, Dims{Batch: 1, Heads: 1, SeqQ: 4, SeqK: 4, HeadDim: 2}, false, false)
		if err != nil {
			t.Fatal(err)
		}
		_ = pl
	}
	runtime.GC()
	runtime.GC()
}

func runVariant(t *testing.T, desc *Desc, dims Dims, q, k, v []float64) []float64 {
	t.Helper()
	out := make([]float64, dims.OutLen())
	if err := Attention(desc, dims, q, k, v, out); err != nil {
		t.Fatal(err) // StatusUnsupported included: every variant is on main
	}
	return out
}

func must(t *testing.T, errs ...error) {
	t.Helper()
	for _, err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
}

func inputs(dims Dims, seed uint64) (q, k, v []float64) {
	r := rng(seed)
	return r.vec(dims.QLen()), r.vec(dims.KLen()), r.vec(dims.VLen())
}

func TestVariantLongformer(t *testing.T) {
	ctx := newCtx(t)
	global := []int64{0, 9}
	dims := Dims{Batch: 1, Heads: 2, SeqQ: 16, SeqK: 16, HeadDim: 4}
	q, k, v := inputs(dims, 23)
	for _, causal := range []Causal{CausalNone, CausalTopLeft} {
		desc := newDesc(t, ctx)
		must(t, desc.SetVariant(VariantLongformer), desc.SetWindow(2, 1), desc.SetGlobalTokens(global), desc.SetCausal(causal))
		out := runVariant(t, desc, dims, q, k, v)
		g := func(x int) bool { return x == 0 || x == 9 }
		want, _, bound := reference(dims, q, k, v, refOpts{causal: causal, keep: func(i, j int) bool {
			return (j >= i-2 && j <= i+1) || g(i) || g(j)
		}})
		assertClose(t, "longformer out", out, want, bound, 1e-12, 1e-13)
	}
}

func TestVariantBlockSparse(t *testing.T) {
	ctx := newCtx(t)
	lay, err := NewTensor(ctx, U8, 2, 3, 3)
	if err != nil {
		t.Fatal(err)
	}
	defer lay.Close()
	copy(lay.Bytes(), []byte{1, 0, 1, 1, 1, 0, 0, 1, 1, 0, 1, 0, 0, 0, 0, 1, 1, 1})
	dims := Dims{Batch: 1, Heads: 2, SeqQ: 11, SeqK: 11, HeadDim: 4}
	q, k, v := inputs(dims, 19)
	for _, causal := range []Causal{CausalNone, CausalTopLeft} {
		desc := newDesc(t, ctx)
		must(t, desc.SetVariant(VariantBlockSparse), desc.SetBlockSize(4), desc.SetBlockLayout(lay), desc.SetCausal(causal))
		out := runVariant(t, desc, dims, q, k, v)
		lb := lay.Bytes()
		want, _, bound := reference(dims, q, k, v, refOpts{causal: causal, keepH: func(h, i, j int) bool { return lb[h*9+(i/4)*3+j/4] != 0 }})
		assertClose(t, "block-sparse out", out, want, bound, 1e-12, 1e-13)
	}
}

func mix(z uint64) uint64 {
	z ^= z >> 30
	z *= 0xBF58476D1CE4E5B9
	z ^= z >> 27
	z *= 0x94D049BB133111EB
	return z ^ (z >> 31)
}

// bigbirdLayout is BigBird's layout [H][nq][nk] as approx.h defines it.
func bigbirdLayout(H, nq, nk, wb, gb, rb int, seed uint64) []byte {
	lay := make([]byte, H*nq*nk)
	for h := 0; h < H; h++ {
		for r := 0; r < nq; r++ {
			row := lay[(h*nq+r)*nk : (h*nq+r+1)*nk]
			for c := range row {
				if r < gb || c < gb || (c-r <= wb && r-c <= wb) {
					row[c] = 1
				}
			}
			if r < gb {
				continue
			}
			s := mix(seed ^ mix(uint64(h*nq+r)+1))
			for t := 0; t < rb; t++ {
				var free []int
				for c := range row {
					if row[c] == 0 {
						free = append(free, c)
					}
				}
				n := uint64(len(free))
				if n == 0 {
					break
				}
				threshold := -n % n // 2^64 mod n
				var u uint64
				for {
					s += 0x9E3779B97F4A7C15
					if u = mix(s); u >= threshold {
						break
					}
				}
				row[free[u%n]] = 1
			}
		}
	}
	return lay
}

func TestVariantBigBirdLayoutAndOutput(t *testing.T) {
	ctx := newCtx(t)
	const b, S, H = 4, 30, 3
	dims := Dims{Batch: 1, Heads: H, SeqQ: S, SeqK: S, HeadDim: 4}
	q, k, v := inputs(dims, 29)
	for _, c := range []struct {
		wb, gb, rb int
		seed       uint64
	}{{1, 1, 2, 42}, {0, 0, 1, 7}, {1, 2, 10, 1 << 63}} {
		desc := newDesc(t, ctx)
		must(t, desc.SetVariant(VariantBigBird), desc.SetBlockSize(b), desc.SetBigBird(int64(c.wb), int64(c.gb), int64(c.rb), c.seed))
		pl, err := NewPlan(desc, F64, dims, false, false)
		if err != nil {
			t.Fatal(err)
		}
		lay, err := pl.BlockLayout()
		if err != nil {
			t.Fatal(err)
		}
		nb := (S + b - 1) / b
		want := bigbirdLayout(H, nb, nb, c.wb, c.gb, c.rb, c.seed)
		if string(lay) != string(want) {
			t.Fatalf("layout for %+v:\n got %v\nwant %v", c, lay, want)
		}
		out := make([]float64, dims.OutLen())
		must(t, Execute(pl, q, k, v, out, nil, nil))
		pl.Close()
		ref, _, bound := reference(dims, q, k, v, refOpts{keepH: func(h, i, j int) bool { return lay[(h*nb+i/b)*nb+j/b] != 0 }})
		assertClose(t, "bigbird out", out, ref, bound, 1e-12, 1e-13)
	}
}

func TestVariantSwinShiftPaddingBias(t *testing.T) {
	ctx := newCtx(t)
	for _, c := range [][4]int{{4, 6, 2, 0}, {4, 6, 2, 1}, {5, 7, 3, 1}, {8, 8, 4, 2}} {
		gh, gw, w, shift := c[0], c[1], c[2], c[3]
		for _, withBias := range []bool{false, true} {
			const H = 2
			S := gh * gw
			dims := Dims{Batch: 1, Heads: H, SeqQ: int64(S), SeqK: int64(S), HeadDim: 4}
			q, k, v := inputs(dims, uint64(gh*100+gw*10+shift))
			desc := newDesc(t, ctx)
			must(t, desc.SetVariant(VariantSwin), desc.SetSwin(int64(gh), int64(gw), int64(w), int64(shift)))
			n := (2*w - 1) * (2*w - 1)
			table, err := NewTensor(ctx, F64, int64(n), H)
			if err != nil {
				t.Fatal(err)
			}
			r := rng(uint64(w) + 3)
			copy(table.Float64(), r.vec(n*H))
			if withBias {
				must(t, desc.SetSwinBias(table))
			}
			out := runVariant(t, desc, dims, q, k, v)
			// The definition: pad to multiples of w, roll by -shift, w×w windows,
			// three cuts per axis when shifted, bias by in-window offsets.
			ph, pw := (gh+w-1)/w*w, (gw+w-1)/w*w
			pos := func(x int) (int, int) { return (x/gw + ph - shift) % ph, (x%gw + pw - shift) % pw }
			cut := func(r, p int) int {
				switch {
				case shift == 0 || r < p-w:
					return 0
				case r < p-shift:
					return 1
				}
				return 2
			}
			tag := func(x int) [4]int { y, xx := pos(x); return [4]int{y / w, xx / w, cut(y, ph), cut(xx, pw)} }
			opts := refOpts{keep: func(i, j int) bool { return tag(i) == tag(j) }}
			if withBias {
				tb := table.Float64()
				opts.bias = func(h, i, j int) float64 {
					yi, xi := pos(i)
					yj, xj := pos(j)
					return tb[((yi%w-yj%w+w-1)*(2*w-1)+(xi%w-xj%w+w-1))*H+h]
				}
			}
			want, _, bound := reference(dims, q, k, v, opts)
			assertClose(t, "swin out", out, want, bound, 1e-12, 1e-13)
			desc.Close()
			table.Close()
		}
	}
}

func TestVariantLinearEluFormula(t *testing.T) {
	ctx := newCtx(t)
	dims := Dims{Batch: 2, Heads: 2, KVHeads: 1, SeqQ: 12, SeqK: 12, HeadDim: 4}
	q, k, v := inputs(dims, 31)
	phi := func(x float64) float64 {
		if x > 0 {
			return x + 1
		}
		return math.Exp(x)
	}
	for _, causal := range []Causal{CausalNone, CausalTopLeft} {
		desc := newDesc(t, ctx)
		must(t, desc.SetVariant(VariantLinearElu), desc.SetCausal(causal))
		out := runVariant(t, desc, dims, q, k, v)
		// The dense quadratic form, no associativity.
		for b := 0; b < 2; b++ {
			for h := 0; h < 2; h++ {
				for i := 0; i < 12; i++ {
					num, den := make([]float64, 4), 0.0
					for j := 0; j < 12; j++ {
						if causal == CausalTopLeft && j > i {
							continue
						}
						a := 0.0
						for x := 0; x < 4; x++ {
							a += phi(q[((b*2+h)*12+i)*4+x]) * phi(k[(b*12+j)*4+x])
						}
						den += a
						for x := 0; x < 4; x++ {
							num[x] += a * v[(b*12+j)*4+x]
						}
					}
					for x := 0; x < 4; x++ {
						got, want := out[((b*2+h)*12+i)*4+x], num[x]/den
						if math.Abs(got-want) > 1e-10*math.Abs(want)+1e-12 {
							t.Fatalf("linear elu [%d,%d,%d,%d]: %g want %g", b, h, i, x, got, want)
						}
					}
				}
			}
		}
	}
}

func TestVariantPerformerRedraw(t *testing.T) {
	ctx := newCtx(t)
	dims := Dims{Batch: 1, Heads: 1, SeqQ: 8, SeqK: 8, HeadDim: 4}
	q, k, v := inputs(dims, 37)
	fresh := func(seed uint64) []float64 {
		desc := newDesc(t, ctx)
		must(t, desc.SetVariant(VariantPerformer), desc.SetFeatures(32, seed))
		return runVariant(t, desc, dims, q, k, v)
	}
	same := func(a, b []float64) bool {
		for i := range a {
			if a[i] != b[i] {
				return false
			}
		}
		return true
	}
	a, b := fresh(5), fresh(6)
	if !same(a, fresh(5)) || same(a, b) {
		t.Fatal("performer: same seed must give the same output, another seed another one")
	}
	desc := newDesc(t, ctx)
	must(t, desc.SetVariant(VariantPerformer), desc.SetFeatures(32, 5))
	pl, err := NewPlan(desc, F64, dims, false, false)
	if err != nil {
		t.Fatal(err)
	}
	defer pl.Close()
	out := make([]float64, dims.OutLen())
	must(t, pl.RedrawFeatures(6), Execute(pl, q, k, v, out, nil, nil))
	if !same(out, b) {
		t.Fatal("redraw(6) differs from a plan created with seed 6")
	}
	must(t, pl.RedrawFeatures(5), Execute(pl, q, k, v, out, nil, nil))
	if !same(out, a) {
		t.Fatal("redraw(5) differs from a plan created with seed 5")
	}
	_, err = NewPlan(desc, F64, dims, true, false)
	expectErr(t, err, StatusUnsupported, "weights")
}

func TestVariantLinformerIsExactAttentionOnProjections(t *testing.T) {
	ctx := newCtx(t)
	const Sq, Sk, R = 6, 10, 3
	dims := Dims{Batch: 2, Heads: 2, SeqQ: Sq, SeqK: Sk, HeadDim: 4}
	q, k, v := inputs(dims, 41)
	var ef [2]*Tensor
	r := rng(43)
	for i := range ef {
		var err error
		if ef[i], err = NewTensor(ctx, F64, R, Sk); err != nil {
			t.Fatal(err)
		}
		defer ef[i].Close()
		copy(ef[i].Float64(), r.vec(R*Sk))
	}
	desc := newDesc(t, ctx)
	must(t, desc.SetVariant(VariantLinformer), desc.SetLowrankProj(ef[0], ef[1]))
	out := runVariant(t, desc, dims, q, k, v)
	proj := func(p, x []float64) []float64 {
		y := make([]float64, 4*R*4)
		for bh := 0; bh < 4; bh++ {
			for rr := 0; rr < R; rr++ {
				for d := 0; d < 4; d++ {
					for s := 0; s < Sk; s++ {
						y[(bh*R+rr)*4+d] += p[rr*Sk+s] * x[(bh*Sk+s)*4+d]
					}
				}
			}
		}
		return y
	}
	pd := Dims{Batch: 2, Heads: 2, SeqQ: Sq, SeqK: R, HeadDim: 4}
	want, _, bound := reference(pd, q, proj(ef[0].Float64(), k), proj(ef[1].Float64(), v), refOpts{})
	assertClose(t, "linformer out", out, want, bound, 1e-12, 1e-13)
}

// TestHalfMatchesReferenceOnRoundedInputs: Bfloat16 and Float16 q, k, v
// against the float64 reference on the same rounded inputs, within attn.h's
// bounds (bf16: 2·2⁻⁸·Σ p|v|; f16: 2⁻¹¹·Σ p|v|); a float32 out; a bad
// combination is StatusDType.
func TestHalfMatchesReferenceOnRoundedInputs(t *testing.T) {
	ctx := newCtx(t)
	desc := newDesc(t, ctx)
	if err := desc.SetCausal(CausalTopLeft); err != nil {
		t.Fatal(err)
	}
	dims := Dims{Batch: 2, Heads: 4, KVHeads: 2, SeqQ: 11, SeqK: 19, HeadDim: 16}
	r := rng(15)
	q, k, v := r.vec(dims.QLen()), r.vec(dims.KLen()), r.vec(dims.VLen())
	for i := range q {
		q[i] *= 3
	}
	bf := func(x []float64) ([]Bfloat16, []float64) {
		h, f := make([]Bfloat16, len(x)), make([]float64, len(x))
		for i := range x {
			h[i] = ToBfloat16(float32(x[i]))
			f[i] = float64(h[i].Float32())
		}
		return h, f
	}
	hf := func(x []float64) ([]Float16, []float64) {
		h, f := make([]Float16, len(x)), make([]float64, len(x))
		for i := range x {
			h[i] = ToFloat16(float32(x[i]))
			f[i] = float64(h[i].Float32())
		}
		return h, f
	}
	qb, qbf := bf(q)
	kb, kbf := bf(k)
	vb, vbf := bf(v)
	want, _, bound := reference(dims, qbf, kbf, vbf, refOpts{causal: CausalTopLeft})
	out := make([]Bfloat16, dims.OutLen())
	lse := make([]float32, dims.LseLen())
	if err := AttentionHalf(desc, dims, qb, kb, vb, out, lse); err != nil {
		t.Fatal(err)
	}
	got := make([]float32, len(out))
	for i := range out {
		got[i] = out[i].Float32()
	}
	assertClose(t, "bf16 out", logical(dims, got), want, bound, 2.0/256, 1e-6)
	o32 := make([]float32, dims.OutLen())
	if err := AttentionHalfF32(desc, dims, qb, kb, vb, o32, nil); err != nil {
		t.Fatal(err)
	}
	assertClose(t, "bf16->f32 out", logical(dims, o32), want, bound, 2.0/256, 1e-6)

	qh, qhf := hf(q)
	kh, khf := hf(k)
	vh, vhf := hf(v)
	want, _, bound = reference(dims, qhf, khf, vhf, refOpts{causal: CausalTopLeft})
	outh := make([]Float16, dims.OutLen())
	if err := AttentionHalf(desc, dims, qh, kh, vh, outh, nil); err != nil {
		t.Fatal(err)
	}
	for i := range outh {
		got[i] = outh[i].Float32()
	}
	assertClose(t, "f16 out", logical(dims, got), want, bound, 1.0/2048, 1e-6)

	// A too-short slice is caught before C; an additive-score plan is unsupported.
	if err := AttentionHalf(desc, dims, qb[:3], kb, vb, out, nil); err == nil || err.(*Error).Status != StatusShape {
		t.Fatalf("short q: %v", err)
	}
	if err := desc.SetScore(ScoreGeneral); err != nil {
		t.Fatal(err)
	}
	err := AttentionHalf(desc, dims, qb, kb, vb, out, nil)
	if err == nil || err.(*Error).Status != StatusUnsupported && err.(*Error).Status != StatusNullArg {
		t.Fatalf("general score in bf16: %v", err)
	}
	if ToBfloat16(1.00390625) != 0x3f80 || ToFloat16(65520) != 0x7c00 || ToFloat16(5.960464477539063e-8) != 1 {
		t.Fatal("converters round wrongly")
	}
}

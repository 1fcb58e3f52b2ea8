package attn

// Tests against a naive float64 reference written here. Run against a build
// tree: PKG_CONFIG_PATH=build/bindings-pkgconfig LD_LIBRARY_PATH=build go test
// (CTest: go_bindings, with GODEBUG=cgocheck=2 to check the pointer rules).
// Variants the library does not build yet report StatusUnsupported: their
// tests t.Skip("NOT BUILT YET ...") and check results once the variant lands.

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
					s[j] = math.Inf(-1)
					if keep {
						dot := 0.0
						for x := 0; x < Dk; x++ {
							dot += at(ql, q, b, h, i, x) * at(kl, k, b, h/g, j, x)
						}
						s[j] = dot * scale
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
	err := Attention(desc, dims, q, k, v, out)
	if StatusOf(err) == StatusUnsupported {
		t.Skipf("NOT BUILT YET (libattn reports UNSUPPORTED: %v)", err)
	}
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func TestVariantLongformerOnceBuilt(t *testing.T) {
	ctx := newCtx(t)
	desc := newDesc(t, ctx)
	global := []int64{0, 9}
	for _, err := range []error{desc.SetVariant(VariantLongformer), desc.SetWindow(2, 2), desc.SetGlobalTokens(global)} {
		if err != nil {
			t.Fatal(err)
		}
	}
	dims := Dims{Batch: 1, Heads: 2, SeqQ: 16, SeqK: 16, HeadDim: 4}
	r := rng(23)
	q, k, v := r.vec(dims.QLen()), r.vec(dims.KLen()), r.vec(dims.VLen())
	out := runVariant(t, desc, dims, q, k, v)
	g := func(x int) bool { return x == 0 || x == 9 }
	want, _, bound := reference(dims, q, k, v, refOpts{keep: func(i, j int) bool {
		return (i-j <= 2 && j-i <= 2) || g(i) || g(j)
	}})
	assertClose(t, "longformer out", out, want, bound, 1e-12, 1e-13)
}

func TestVariantBlockSparseOnceBuilt(t *testing.T) {
	ctx := newCtx(t)
	desc := newDesc(t, ctx)
	lay, err := NewTensor(ctx, U8, 1, 3, 3)
	if err != nil {
		t.Fatal(err)
	}
	defer lay.Close()
	copy(lay.Bytes(), []byte{1, 0, 1, 1, 1, 0, 0, 1, 1})
	for _, err := range []error{desc.SetVariant(VariantBlockSparse), desc.SetBlockSize(4), desc.SetBlockLayout(lay)} {
		if err != nil {
			t.Fatal(err)
		}
	}
	dims := Dims{Batch: 1, Heads: 1, SeqQ: 12, SeqK: 12, HeadDim: 4}
	r := rng(19)
	q, k, v := r.vec(dims.QLen()), r.vec(dims.KLen()), r.vec(dims.VLen())
	out := runVariant(t, desc, dims, q, k, v)
	lb := lay.Bytes()
	want, _, bound := reference(dims, q, k, v, refOpts{keep: func(i, j int) bool { return lb[(i/4)*3+j/4] != 0 }})
	assertClose(t, "block-sparse out", out, want, bound, 1e-12, 1e-13)
}

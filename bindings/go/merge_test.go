package attn

// MergeStates: attention over keys [0, p) and [p, S_k) merged equals the
// naive reference over all keys (reference() in attn_test.go); in place
// into outA; both sides empty give 0 and -Inf; a NaN lse is refused.

import (
	"math"
	"strings"
	"testing"
)

func TestMergeStatesSplitEverywhere(t *testing.T) {
	ctx, err := NewContext(1)
	if err != nil {
		t.Fatal(err)
	}
	defer ctx.Close()
	desc, err := NewDesc(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer desc.Close()
	const H, Sq, Sk, D = 2, 3, 7, 4
	r := rng(11)
	q, k, v := r.vec(H*Sq*D), r.vec(H*Sk*D), r.vec(H*Sk*D)
	whole := Dims{Batch: 1, Heads: H, SeqQ: Sq, SeqK: Sk, HeadDim: D}
	want, wantLse := make([]float64, H*Sq*D), make([]float64, H*Sq)
	if err := AttentionStats(desc, whole, q, k, v, want, make([]float64, H*Sq*Sk), wantLse); err != nil {
		t.Fatal(err)
	}
	ol := Layout{Shape: []int64{1, H, Sq, D}, Strides: []int64{H * Sq * D, Sq * D, D, 1}}
	ll := Layout{Shape: []int64{1, H, Sq}, Strides: []int64{H * Sq, Sq, 1}}
	part := func(j0, j1 int) ([]float64, []float64) {
		n := j1 - j0
		var ks, vs []float64
		for h := 0; h < H; h++ {
			ks = append(ks, k[(h*Sk+j0)*D:(h*Sk+j1)*D]...)
			vs = append(vs, v[(h*Sk+j0)*D:(h*Sk+j1)*D]...)
		}
		o, l := make([]float64, H*Sq*D), make([]float64, H*Sq)
		dm := Dims{Batch: 1, Heads: H, SeqQ: Sq, SeqK: int64(n), HeadDim: D}
		if err := AttentionStats(desc, dm, q, ks, vs, o, make([]float64, H*Sq*n), l); err != nil {
			t.Fatal(err)
		}
		return o, l
	}
	for p := 1; p < Sk; p++ {
		oa, la := part(0, p)
		ob, lb := part(p, Sk)
		if err := MergeStates(ctx, oa, la, ob, lb, oa, la, ol, ll); err != nil { // in place
			t.Fatal(err)
		}
		for i := range want {
			if math.Abs(oa[i]-want[i]) > 1e-12 {
				t.Fatalf("split %d: out[%d] = %g, want %g", p, i, oa[i], want[i])
			}
		}
		for i := range wantLse {
			if math.Abs(la[i]-wantLse[i]) > 1e-12*(1+math.Abs(wantLse[i])) {
				t.Fatalf("split %d: lse[%d] = %g, want %g", p, i, la[i], wantLse[i])
			}
		}
	}
	nan, empty := make([]float64, H*Sq*D), make([]float64, H*Sq)
	for i := range nan {
		nan[i] = math.NaN()
	}
	for i := range empty {
		empty[i] = math.Inf(-1)
	}
	o, l := make([]float64, H*Sq*D), make([]float64, H*Sq)
	if err := MergeStates(ctx, nan, empty, nan, empty, o, l, ol, ll); err != nil {
		t.Fatal(err)
	}
	for i := range o {
		if o[i] != 0 {
			t.Fatalf("both empty: out[%d] = %g", i, o[i])
		}
	}
	for i := range l {
		if !math.IsInf(l[i], -1) {
			t.Fatalf("both empty: lse[%d] = %g", i, l[i])
		}
	}
	bad := append([]float64(nil), empty...)
	bad[2] = math.NaN()
	err = MergeStates(ctx, nan, bad, nan, empty, o, l, ol, ll)
	if err == nil || !strings.Contains(err.Error(), "lse_a") {
		t.Fatalf("NaN lse: err = %v", err)
	}
}

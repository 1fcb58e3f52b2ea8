package attn

// Packed variable-length batches, sinks and the per-key mass against a naive
// float64 reference written here.

import (
	"math"
	"strings"
	"testing"
)

func TestVarlenSinksMass(t *testing.T) {
	const h, hkv, d = 4, 2, 8
	qo := []int64{0, 5, 5, 22, 31}
	ko := []int64{0, 7, 10, 27, 57}
	tq, tk := int64(31), int64(57)
	r := rng(99)
	q, k, v := r.vec(int(tq*h*d)), r.vec(int(tk*hkv*d)), r.vec(int(tk*hkv*d))
	sinks := []float64{0.5, -1, 2, math.Inf(-1)}
	ctx, err := NewContext(2)
	if err != nil {
		t.Fatal(err)
	}
	defer ctx.Close()
	desc, err := NewDesc(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer desc.Close()
	mass, err := NewTensor(ctx, F64, 1, hkv, tk)
	if err != nil {
		t.Fatal(err)
	}
	defer mass.Close()
	for _, e := range []error{desc.SetVarlen(qo, ko), desc.SetSinks(sinks), desc.SetKeyMass(mass)} {
		if e != nil {
			t.Fatal(e)
		}
	}
	dims := Dims{Batch: 1, Heads: h, KVHeads: hkv, SeqQ: tq, SeqK: tk, HeadDim: d, BSHD: true}
	pl, err := NewPlan(desc, F64, dims, false, true)
	if err != nil {
		t.Fatal(err)
	}
	defer pl.Close()
	out, lse := make([]float64, tq*h*d), make([]float64, h*tq)
	if err := Execute(pl, q, k, v, out, nil, lse); err != nil {
		t.Fatal(err)
	}
	want := make([]float64, hkv*tk)
	scale := 1 / math.Sqrt(d)
	for s := 0; s < 4; s++ {
		for hh := 0; hh < h; hh++ {
			kh := hh / (h / hkv)
			for i := qo[s]; i < qo[s+1]; i++ {
				sc := []float64{}
				m := sinks[hh]
				for j := ko[s]; j < ko[s+1]; j++ {
					x := 0.0
					for c := 0; c < d; c++ {
						x += q[(int(i)*h+hh)*d+c] * k[(int(j)*hkv+kh)*d+c]
					}
					sc = append(sc, x*scale)
					m = math.Max(m, x*scale)
				}
				if math.IsInf(m, -1) {
					m = 0
				}
				tot := math.Exp(sinks[hh] - m)
				for _, x := range sc {
					tot += math.Exp(x - m)
				}
				wl := math.Inf(-1)
				if tot > 0 {
					wl = m + math.Log(tot)
				}
				if g := lse[int64(hh)*tq+i]; g != wl && math.Abs(g-wl) > 1e-10*(1+math.Abs(wl)) {
					t.Fatalf("lse[%d][%d] = %g, want %g", hh, i, g, wl)
				}
				for c := 0; c < d; c++ {
					o := 0.0
					for n, x := range sc {
						o += math.Exp(x-m) / tot * v[(int(ko[s])+n)*hkv*d+kh*d+c]
					}
					if g := out[(int(i)*h+hh)*d+c]; math.Abs(g-o) > 1e-10 {
						t.Fatalf("out = %g, want %g", g, o)
					}
				}
				for n, x := range sc {
					want[int64(kh)*tk+ko[s]+int64(n)] += math.Exp(x-m) / tot
				}
			}
		}
	}
	for i, g := range mass.Float64() {
		if math.Abs(g-want[i]) > 1e-10*(1+want[i]) {
			t.Fatalf("mass[%d] = %g, want %g", i, g, want[i])
		}
	}
}

func TestVarlenBadOffsets(t *testing.T) {
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
	err = desc.SetVarlen([]int64{0, 4, 3}, nil)
	if StatusOf(err) != StatusInvalidArg || !strings.Contains(err.Error(), "q_offsets") {
		t.Fatalf("decreasing offsets: %v", err)
	}
	err = desc.SetSinks([]float64{0, math.NaN()})
	if StatusOf(err) != StatusInvalidArg || !strings.Contains(err.Error(), "sinks") {
		t.Fatalf("NaN sink: %v", err)
	}
	cfg := NewKVCacheConfig(8, 4)
	cache, err := NewKVCache(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer cache.Close()
	if err := cache.SetKeepFirst(2); StatusOf(err) != StatusInvalidArg {
		t.Fatalf("keep_first on a linear cache: %v", err)
	}
}

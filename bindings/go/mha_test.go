package attn

// Head split/merge and the MHA layer against a float64 reference written
// here from heads.h's formulas.

import (
	"fmt"
	"math"
	"reflect"
	"runtime"
	"testing"
)

func TestHeadsViewsAndCopies(t *testing.T) {
	ctx := newCtx(t)
	const B, S, H, D = 2, 5, 3, 4
	xl := Contiguous(B, S, H*D)
	v, err := HeadsSplitView(ctx, F64, xl, H)
	if err != nil {
		t.Fatal(err)
	}
	if want := (Layout{Shape: []int64{B, H, S, D}, Strides: []int64{S * H * D, D, H * D, 1}}); !reflect.DeepEqual(v, want) {
		t.Fatalf("split view %v, want %v", v, want)
	}
	back, err := HeadsMergeView(ctx, F64, v)
	if err != nil || !reflect.DeepEqual(back, xl) {
		t.Fatalf("merge view %v (%v), want %v", back, err, xl)
	}
	_, err = HeadsMergeView(ctx, F64, Contiguous(B, H, S, D))
	expectErr(t, err, StatusLayout, "x")
	_, err = HeadsSplitView(ctx, F64, xl, 5)
	expectErr(t, err, StatusShape, "")

	r := rng(2)
	x := r.vec(B * S * H * D)
	split := make([]float64, len(x))
	ol := Contiguous(B, H, S, D)
	must(t, HeadsSplit(ctx, x, xl, split, ol))
	for b := 0; b < B; b++ {
		for h := 0; h < H; h++ {
			for s := 0; s < S; s++ {
				for d := 0; d < D; d++ {
					if split[((b*H+h)*S+s)*D+d] != x[(b*S+s)*H*D+h*D+d] {
						t.Fatalf("split [%d,%d,%d,%d]", b, h, s, d)
					}
				}
			}
		}
	}
	merged := make([]float64, len(x))
	must(t, HeadsMerge(ctx, split, ol, merged, xl))
	if !reflect.DeepEqual(merged, x) {
		t.Fatal("merge(split(x)) != x")
	}
	bad := make([]float64, len(x))
	for i := range bad {
		bad[i] = 7
	}
	expectErr(t, HeadsMerge(ctx, split, ol, bad, Contiguous(B, S, 3)), StatusShape, "")
	for _, y := range bad {
		if y != 7 {
			t.Fatal("out written on error")
		}
	}
}

// mhaWeights: random parameters in Tensors of the layer's shapes.
type mhaWeights struct {
	w    MhaWeights
	data map[string][]float64
}

func newMhaWeights(t *testing.T, ctx *Context, cfg MhaConfig, r *rng) mhaWeights {
	t.Helper()
	e := cfg.EmbedDim
	hkv := cfg.NumKVHeads
	if hkv == 0 {
		hkv = cfg.NumHeads
	}
	ekv := hkv * e / cfg.NumHeads
	kd, vd := cfg.KDim, cfg.VDim
	if kd == 0 {
		kd = e
	}
	if vd == 0 {
		vd = e
	}
	mw := mhaWeights{data: map[string][]float64{}}
	mk := func(name string, fan int64, shape ...int64) *Tensor {
		tt, err := NewTensor(ctx, F64, shape...)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(tt.Close)
		d := tt.Float64()
		for i := range d {
			d[i] = r.next() / math.Sqrt(float64(fan))
		}
		mw.data[name] = d
		return tt
	}
	if kd == e && vd == e {
		mw.w.InProjWeight = mk("in", e, e+2*ekv, e)
	} else {
		mw.w.QProjWeight = mk("q", e, e, e)
		mw.w.KProjWeight = mk("k", kd, ekv, kd)
		mw.w.VProjWeight = mk("v", vd, ekv, vd)
	}
	mw.w.OutProjWeight = mk("out", e, e, e)
	if cfg.Bias {
		mw.w.InProjBias = mk("in_bias", 4, e+2*ekv)
		mw.w.OutProjBias = mk("out_bias", 4, e)
	}
	if cfg.AddBiasKV {
		mw.w.BiasK = mk("bias_k", 1, 1, 1, ekv)
		mw.w.BiasV = mk("bias_v", 1, 1, 1, ekv)
	}
	return mw
}

// mhaReference returns out (in the config's layout) and per-head weights [B][H][L][S'].
func mhaReference(cfg MhaConfig, w map[string][]float64, d MhaDims, query, key, value []float64, kpm []byte, causal bool) ([]float64, []float64) {
	E, H := int(cfg.EmbedDim), int(cfg.NumHeads)
	Hkv := int(cfg.NumKVHeads)
	if Hkv == 0 {
		Hkv = H
	}
	Dh := E / H
	Ekv := Hkv * Dh
	kd, vd := int(cfg.KDim), int(cfg.VDim)
	if kd == 0 {
		kd = E
	}
	if vd == 0 {
		vd = E
	}
	B, L, S := int(d.Batch), int(d.SeqQ), int(d.SeqK)
	Sx := int(cfg.AttendedKeys(d.SeqK))
	row := func(x []float64, b, s, n, f int) []float64 {
		off := (s*B + b) * f
		if cfg.BatchFirst {
			off = (b*n + s) * f
		}
		return x[off : off+f]
	}
	// y[n] = Σ_i W[n0+n][i] x[i] + bias[n0+n]
	linear := func(W []float64, n0, N, F int, x, bias []float64) []float64 {
		y := make([]float64, N)
		for n := 0; n < N; n++ {
			for i := 0; i < F; i++ {
				y[n] += W[(n0+n)*F+i] * x[i]
			}
			if bias != nil {
				y[n] += bias[n0+n]
			}
		}
		return y
	}
	var Wq, Wk, Wv []float64
	var q0, k0, v0 int
	if in, ok := w["in"]; ok {
		Wq, Wk, Wv, q0, k0, v0 = in, in, in, 0, E, E+Ekv
	} else {
		Wq, Wk, Wv = w["q"], w["k"], w["v"]
	}
	bias := w["in_bias"]
	var bq, bk, bv []float64
	if bias != nil {
		bq, bk, bv = bias[:E], bias[E:E+Ekv], bias[E+Ekv:]
	}
	out := make([]float64, B*L*E)
	probs := make([]float64, B*H*L*Sx)
	for b := 0; b < B; b++ {
		qs, ks, vs := make([][]float64, L), make([][]float64, 0, Sx), make([][]float64, 0, Sx)
		for i := 0; i < L; i++ {
			qs[i] = linear(Wq, q0, E, E, row(query, b, i, L, E), shift(bq, q0))
		}
		for j := 0; j < S; j++ {
			ks = append(ks, linear(Wk, k0, Ekv, kd, row(key, b, j, S, kd), shift(bk, k0)))
			vs = append(vs, linear(Wv, v0, Ekv, vd, row(value, b, j, S, vd), shift(bv, v0)))
		}
		if cfg.AddBiasKV {
			ks, vs = append(ks, w["bias_k"]), append(vs, w["bias_v"])
		}
		if cfg.AddZeroAttn {
			ks, vs = append(ks, make([]float64, Ekv)), append(vs, make([]float64, Ekv))
		}
		merged := make([][]float64, L)
		for i := range merged {
			merged[i] = make([]float64, E)
		}
		for h := 0; h < H; h++ {
			g := h / (H / Hkv)
			for i := 0; i < L; i++ {
				s := make([]float64, Sx)
				m := math.Inf(-1)
				for j := 0; j < Sx; j++ {
					s[j] = math.Inf(-1)
					if j < S && ((kpm != nil && kpm[b*S+j] == 0) || (causal && j > i)) {
						continue
					}
					dot := 0.0
					for x := 0; x < Dh; x++ {
						dot += qs[i][h*Dh+x] * ks[j][g*Dh+x]
					}
					s[j] = dot / math.Sqrt(float64(Dh))
					m = math.Max(m, s[j])
				}
				z := 0.0
				for j := range s {
					z += math.Exp(s[j] - m)
				}
				for j := range s {
					p := math.Exp(s[j]-m) / z
					probs[((b*H+h)*L+i)*Sx+j] = p
					for x := 0; x < Dh; x++ {
						merged[i][h*Dh+x] += p * vs[j][g*Dh+x]
					}
				}
			}
		}
		for i := 0; i < L; i++ {
			y := linear(w["out"], 0, E, E, merged[i], w["out_bias"])
			off := (i*B + b) * E
			if cfg.BatchFirst {
				off = (b*L + i) * E
			}
			copy(out[off:off+E], y)
		}
	}
	return out, probs
}

// shift re-bases a bias slice so that linear's index n0+n reads bias[n].
func shift(b []float64, n0 int) []float64 {
	if b == nil {
		return nil
	}
	s := make([]float64, n0+len(b))
	copy(s[n0:], b)
	return s
}

func TestMhaMatchesReference(t *testing.T) {
	ctx := newCtx(t)
	base := NewMhaConfig(12, 3)
	base.DType = F64
	with := func(f func(*MhaConfig)) MhaConfig { c := base; f(&c); return c }
	cases := []struct {
		cfg               MhaConfig
		self, kpm, causal bool
		need              NeedWeights
	}{
		{base, true, false, false, WeightsAveraged},
		{with(func(c *MhaConfig) { c.BatchFirst = true }), false, true, false, WeightsPerHead},
		{with(func(c *MhaConfig) { c.EmbedDim, c.NumHeads, c.NumKVHeads = 12, 4, 1 }), false, false, false, WeightsPerHead},
		{with(func(c *MhaConfig) { c.EmbedDim, c.NumHeads, c.NumKVHeads, c.BatchFirst = 16, 4, 2, true }), true, true, true, WeightsAveraged},
		{with(func(c *MhaConfig) { c.KDim, c.VDim, c.Bias = 5, 7, false }), false, false, false, WeightsNone},
		{with(func(c *MhaConfig) { c.AddBiasKV, c.AddZeroAttn = true, true }), false, true, false, WeightsPerHead},
	}
	for n, c := range cases {
		t.Run(fmt.Sprint(n), func(t *testing.T) {
			r := rng(100 + n)
			mw := newMhaWeights(t, ctx, c.cfg, &r)
			layer, err := NewMha(ctx, c.cfg, mw.w)
			if err != nil {
				t.Fatal(err)
			}
			defer layer.Close()
			dims := MhaDims{Batch: 2, SeqQ: 4, SeqK: 6}
			if c.self {
				dims.SeqK = 4
			}
			B, L, S, E := 2, 4, int(dims.SeqK), int(c.cfg.EmbedDim)
			kd, vd := E, E
			if c.cfg.KDim != 0 {
				kd, vd = int(c.cfg.KDim), int(c.cfg.VDim)
			}
			query := r.vec(B * L * E)
			key, value := query, query
			if !c.self {
				key, value = r.vec(B*S*kd), r.vec(B*S*vd)
			}
			var kpm []byte
			if c.kpm {
				kpm = make([]byte, B*S)
				for i := range kpm {
					if i != S-1 && i != S+1 {
						kpm[i] = 1 // non-zero = attend
					}
				}
			}
			desc := newDesc(t, ctx)
			if c.causal {
				must(t, desc.SetCausal(CausalTopLeft))
			}
			want, probs := mhaReference(c.cfg, mw.data, dims, query, key, value, kpm, c.causal)
			H, Sx := int(c.cfg.NumHeads), int(c.cfg.AttendedKeys(dims.SeqK))
			out := make([]float64, len(want))
			var weights []float64
			switch c.need {
			case WeightsAveraged:
				weights = make([]float64, B*L*Sx)
			case WeightsPerHead:
				weights = make([]float64, B*H*L*Sx)
			}
			must(t, MhaForward(layer, desc, dims, query, key, value, kpm, out, weights, c.need == WeightsPerHead))
			ones := func(n int) []float64 {
				o := make([]float64, n)
				for i := range o {
					o[i] = 1
				}
				return o
			}
			assertClose(t, "mha out", out, want, ones(len(want)), 1e-12, 1e-12)
			switch c.need {
			case WeightsPerHead:
				assertClose(t, "mha weights", weights, probs, ones(len(probs)), 1e-12, 1e-13)
			case WeightsAveraged:
				avg := make([]float64, B*L*Sx)
				for b := 0; b < B; b++ {
					for h := 0; h < H; h++ {
						for x := 0; x < L*Sx; x++ {
							avg[b*L*Sx+x] += probs[(b*H+h)*L*Sx+x] / float64(H)
						}
					}
				}
				assertClose(t, "mha averaged weights", weights, avg, ones(len(avg)), 1e-12, 1e-13)
			}
		})
	}
}

func TestMhaPlanErrorsAndLifetimes(t *testing.T) {
	ctx := newCtx(t)
	cfg := NewMhaConfig(8, 2)
	cfg.BatchFirst = true
	cfg.DType = F64
	r := rng(7)
	mw := newMhaWeights(t, ctx, cfg, &r)

	bad := cfg
	bad.NumHeads = 3
	_, err := NewMha(ctx, bad, mw.w)
	expectErr(t, err, StatusInvalidArg, "")
	noBias := cfg
	noBias.Bias = false
	_, err = NewMha(ctx, noBias, mw.w)
	expectErr(t, err, StatusInvalidArg, "in_proj_bias")
	missing := mw.w
	missing.OutProjWeight = nil
	_, err = NewMha(ctx, cfg, missing)
	expectErr(t, err, StatusNullArg, "out_proj_weight")

	layer, err := NewMha(ctx, cfg, mw.w)
	if err != nil {
		t.Fatal(err)
	}
	dims := MhaDims{Batch: 2, SeqQ: 5, SeqK: 5}
	pl, err := NewMhaPlan(layer, nil, dims, false, WeightsNone)
	if err != nil {
		t.Fatal(err)
	}
	if pl.WorkspaceSize() <= 0 {
		t.Fatal("workspace size")
	}
	_, err = NewMhaPlanLayouts(layer, nil, [4]Layout{layer.SeqLayout(2, 5, 8), layer.SeqLayout(2, 5, 8), layer.SeqLayout(2, 5, 8), layer.SeqLayout(2, 5, 8)}, &Layout{Shape: []int64{2, 4}, Strides: []int64{4, 1}}, nil)
	expectErr(t, err, StatusShape, "key_padding_mask")

	x := r.vec(2 * 5 * 8)
	out := make([]float64, len(x))
	for i := range out {
		out[i] = 9
	}
	expectErr(t, ExecuteMha(pl, x[1:], x, x, nil, out, nil), StatusShape, "query")
	expectErr(t, ExecuteMha(pl, x, x, x, make([]byte, 10), out, nil), StatusMismatch, "key_padding_mask")
	expectErr(t, ExecuteMha(pl, to32(x), to32(x), to32(x), nil, to32(out), nil), StatusDType, "dtype")
	for _, y := range out {
		if y != 9 {
			t.Fatal("out written on error")
		}
	}
	// Closing the layer first is safe: C's layer lives until its last plan is closed.
	layer.Close()
	layer.Close()
	runtime.GC()
	must(t, ExecuteMha(pl, x, x, x, nil, out, nil))
	want, _ := mhaReference(cfg, mw.data, dims, x, x, x, nil, false)
	ones := make([]float64, len(want))
	for i := range ones {
		ones[i] = 1
	}
	assertClose(t, "out after layer.Close", out, want, ones, 1e-12, 1e-12)
	pl.Close()
	if layer.p != nil {
		t.Fatal("the C layer should be destroyed after its last plan")
	}
	_, err = NewMhaPlan(layer, nil, dims, false, WeightsNone)
	expectErr(t, err, StatusNullArg, "closed")
}

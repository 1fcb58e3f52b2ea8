package attn

// MhaTrainPlan (attn_mha_backward_plan): every gradient (inputs and
// parameters) against central finite differences of L = Σ dout·out, where
// out comes from the layer's ordinary forward (NewMhaPlan + ExecuteMha), in
// float64; and the errors a bad call returns.

import (
	"math"
	"reflect"
	"testing"
)

// mhaParamKeys: newMhaWeights' data keys in MhaGrads / attn_mha_grads order.
var mhaParamKeys = [9]string{"in", "q", "k", "v", "in_bias", "out", "out_bias", "bias_k", "bias_v"}

type mhaTrainCase struct {
	name     string
	cfg      MhaConfig
	dims     MhaDims
	causal   bool
	kpm      bool
	selfAttn bool // query = key = value = x; dquery = dkey = dvalue = dx
	seed     uint64
}

// relErr is ‖got − fd‖ / ‖fd‖.
func relErr(t *testing.T, got, fd []float64) float64 {
	t.Helper()
	var num, den float64
	for i := range fd {
		num += (got[i] - fd[i]) * (got[i] - fd[i])
		den += fd[i] * fd[i]
	}
	if den == 0 {
		t.Fatal("zero finite-difference gradient")
	}
	return math.Sqrt(num / den)
}

func runMhaTrainCase(t *testing.T, c mhaTrainCase) {
	ctx := newCtx(t)
	cfg := c.cfg
	cfg.DType = F64
	r := rng(c.seed)
	mw := newMhaWeights(t, ctx, cfg, &r)
	layer, err := NewMha(ctx, cfg, mw.w)
	if err != nil {
		t.Fatal(err)
	}
	defer layer.Close()
	var desc *Desc
	if c.causal {
		desc = newDesc(t, ctx)
		must(t, desc.SetCausal(CausalTopLeft))
	}
	e := int(cfg.EmbedDim)
	kd, vd := int(cfg.KDim), int(cfg.VDim)
	if kd == 0 {
		kd = e
	}
	if vd == 0 {
		vd = e
	}
	B, L, S := int(c.dims.Batch), int(c.dims.SeqQ), int(c.dims.SeqK)
	query := r.vec(B * L * e)
	key, value := query, query
	if !c.selfAttn {
		key, value = r.vec(B*S*kd), r.vec(B*S*vd)
	}
	var kpm []byte
	if c.kpm { // NON-ZERO = ATTEND; one padded key per batch item
		kpm = make([]byte, B*S)
		for x := range kpm {
			if x%S != (x/S)%S {
				kpm[x] = 1
			}
		}
	}
	dout := r.vec(B * L * e)

	step, err := NewMhaTrainPlan(layer, desc, c.dims, c.kpm)
	if err != nil {
		t.Fatal(err)
	}
	defer step.Close()
	if step.WorkspaceSize() <= 0 || step.SavedSize() <= 0 {
		t.Fatal("no workspace or saved size")
	}
	fwd, err := NewMhaPlan(layer, desc, c.dims, c.kpm, WeightsNone)
	if err != nil {
		t.Fatal(err)
	}
	defer fwd.Close()
	out := make([]float64, B*L*e)
	loss := func(q, k, v []float64) float64 {
		must(t, ExecuteMha(fwd, q, k, v, kpm, out, nil))
		s := 0.0
		for i := range out {
			s += out[i] * dout[i]
		}
		return s
	}

	trainOut := make([]float64, len(out))
	must(t, ForwardMha(step, query, key, value, kpm, trainOut))
	loss(query, key, value)
	if !reflect.DeepEqual(trainOut, out) {
		t.Fatalf("%s: the training forward's out differs from ExecuteMha's", c.name)
	}

	grads := MhaGrads[float64]{}
	gs := map[string]*[]float64{"in": &grads.InProjWeight, "q": &grads.QProjWeight, "k": &grads.KProjWeight,
		"v": &grads.VProjWeight, "in_bias": &grads.InProjBias, "out": &grads.OutProjWeight,
		"out_bias": &grads.OutProjBias, "bias_k": &grads.BiasK, "bias_v": &grads.BiasV}
	for name, p := range mw.data {
		*gs[name] = make([]float64, len(p))
	}
	var dq, dk, dv []float64
	if c.selfAttn {
		dq = make([]float64, len(query))
		dk, dv = dq, dq // one slice for all three: receives the sum
	} else {
		dq, dk, dv = make([]float64, len(query)), make([]float64, len(key)), make([]float64, len(value))
	}
	must(t, BackwardMha(step, query, key, value, kpm, dout, dq, dk, dv, &grads))

	const h = 1e-5
	central := func(x []float64, i int, f func() float64) float64 {
		x0 := x[i]
		x[i] = x0 + h
		lp := f()
		x[i] = x0 - h
		lm := f()
		x[i] = x0
		return (lp - lm) / (2 * h)
	}
	check := func(what string, got []float64, fd []float64) {
		err := relErr(t, got, fd)
		t.Logf("%s: %-16s n=%-3d rel err %.2e", c.name, what, len(got), err)
		if err > 1e-6 {
			t.Errorf("%s: %s: relative normwise error %.3e > 1e-6", c.name, what, err)
		}
	}
	inputs := []struct {
		name string
		x    []float64
		dx   []float64
	}{{"dquery", query, dq}, {"dkey", key, dk}, {"dvalue", value, dv}}
	if c.selfAttn {
		inputs = inputs[:1]
		inputs[0].name = "dx (q+k+v)"
	}
	for _, in := range inputs {
		fd := make([]float64, len(in.x))
		for i := range fd {
			fd[i] = central(in.x, i, func() float64 { return loss(query, key, value) })
		}
		check(in.name, in.dx, fd)
	}
	// Parameters: the layer reads its weight Tensors at every execute.
	for i, name := range mhaParamKeys {
		w, ok := mw.data[name]
		if !ok {
			if (*gs[name]) != nil {
				t.Fatalf("%s: gradient %s allocated for an absent parameter", c.name, name)
			}
			continue
		}
		fd := make([]float64, len(w))
		for j := range fd {
			fd[j] = central(w, j, func() float64 { return loss(query, key, value) })
		}
		check(mhaParams[i], *gs[name], fd)
	}
}

func TestMhaTrainFiniteDifferences(t *testing.T) {
	for _, c := range []mhaTrainCase{
		// E=4, H=2, B=2, S=3, sequence-first, packed in_proj with biases, a key padding mask.
		{name: "packed", cfg: NewMhaConfig(4, 2), dims: MhaDims{Batch: 2, SeqQ: 3, SeqK: 3}, kpm: true, seed: 21},
		// Separate q/k/v weights (kdim 3, vdim 5), bias_k/bias_v, a zero key,
		// multi-query K/V, batch-first, S_k ≠ S_q, causal.
		{name: "kdim/vdim+bias_kv", cfg: func() MhaConfig {
			c := NewMhaConfig(4, 2)
			c.KDim, c.VDim, c.AddBiasKV, c.AddZeroAttn, c.NumKVHeads, c.BatchFirst = 3, 5, true, true, 1, true
			return c
		}(), dims: MhaDims{Batch: 2, SeqQ: 3, SeqK: 4}, causal: true, seed: 22},
		// Self-attention: one dx slice for dquery, dkey and dvalue gets their sum.
		{name: "self-attention", cfg: func() MhaConfig {
			c := NewMhaConfig(4, 2)
			c.AddBiasKV = true
			return c
		}(), dims: MhaDims{Batch: 2, SeqQ: 3, SeqK: 3}, causal: true, kpm: true, selfAttn: true, seed: 23},
	} {
		c := c
		t.Run(c.name, func(t *testing.T) { runMhaTrainCase(t, c) })
	}
}

func TestMhaTrainErrors(t *testing.T) {
	ctx := newCtx(t)
	cfg := NewMhaConfig(4, 2)
	cfg.DType = F64
	r := rng(31)
	mw := newMhaWeights(t, ctx, cfg, &r)
	layer, err := NewMha(ctx, cfg, mw.w)
	if err != nil {
		t.Fatal(err)
	}
	defer layer.Close()
	dims := MhaDims{Batch: 2, SeqQ: 3, SeqK: 3}
	step, err := NewMhaTrainPlan(layer, nil, dims, false)
	if err != nil {
		t.Fatal(err)
	}
	defer step.Close()
	x, dout := r.vec(24), r.vec(24)
	dq := make([]float64, 24)
	for i := range dq {
		dq[i] = 7
	}
	untouched := func(what string, s []float64) {
		t.Helper()
		for _, v := range s {
			if v != 7 {
				t.Fatalf("%s written by a failing call", what)
			}
		}
	}

	// BackwardMha before any ForwardMha: no activations.
	expectErr(t, BackwardMha(step, x, x, x, nil, dout, dq, nil, nil, nil), StatusInvalidArg, "ForwardMha")
	out := make([]float64, 24)
	expectErr(t, ForwardMha(step, x, x, x, make([]byte, 6), out), StatusMismatch, "key_padding_mask")
	expectErr(t, ForwardMha(step, to32(x), to32(x), to32(x), nil, make([]float32, 24)), StatusDType, "")
	must(t, ForwardMha(step, x, x, x, nil, out))

	// A dout slice too short for out's layout.
	expectErr(t, BackwardMha(step, x, x, x, nil, dout[:5], dq, nil, nil, nil), StatusShape, "dout")
	// A parameter gradient of the wrong length (in_proj_bias is [12]).
	bias := make([]float64, 13)
	for i := range bias {
		bias[i] = 7
	}
	expectErr(t, BackwardMha(step, x, x, x, nil, dout, dq, nil, nil, &MhaGrads[float64]{InProjBias: bias}), StatusShape, "in_proj_bias")
	// A gradient for a parameter a packed layer does not have: the library's error.
	wq := make([]float64, 16)
	for i := range wq {
		wq[i] = 7
	}
	err = BackwardMha(step, x, x, x, nil, dout, dq, nil, nil, &MhaGrads[float64]{QProjWeight: wq})
	expectErr(t, err, StatusInvalidArg, "q_proj_weight")
	if e := err.(*Error); e.Func != "attn_mha_backward_execute" {
		t.Fatalf("error from %s, want the library's", e.Func)
	}
	// Outputs overlapping an input or each other.
	expectErr(t, BackwardMha(step, x, x, x, nil, dout, x, nil, nil, nil), StatusInvalidArg, "dquery: overlaps query")
	buf := make([]float64, 30)
	expectErr(t, BackwardMha(step, x, x, x, nil, dout, buf[:24], buf[6:30], nil, nil), StatusInvalidArg, "dkey: overlaps dquery")
	expectErr(t, BackwardMha(step, x, x, x, nil, dout, dq, nil, nil, &MhaGrads[float64]{OutProjBias: dq[:4]}), StatusInvalidArg, "grads.out_proj_bias: overlaps dquery")
	untouched("dquery", dq)
	untouched("in_proj_bias", bias)
	untouched("q_proj_weight", wq)

	// One slice for dquery and dkey on a cross-attention plan (key layout ≠
	// query layout): the library refuses the shared memory.
	cross, err := NewMhaTrainPlan(layer, nil, MhaDims{Batch: 2, SeqQ: 3, SeqK: 4}, false)
	if err != nil {
		t.Fatal(err)
	}
	defer cross.Close()
	kv := r.vec(32)
	must(t, ForwardMha(cross, x, kv, kv, nil, out))
	shared := make([]float64, 32)
	expectErr(t, BackwardMha(cross, x, kv, kv, nil, dout, shared[:24], shared, nil, nil), StatusInvalidArg, "")

	// 16-bit layers have no training step.
	bcfg := NewMhaConfig(4, 2)
	bcfg.DType, bcfg.Bias = BF16, false
	w16, err := NewTensor(ctx, BF16, 12, 4)
	if err != nil {
		t.Fatal(err)
	}
	defer w16.Close()
	o16, err := NewTensor(ctx, BF16, 4, 4)
	if err != nil {
		t.Fatal(err)
	}
	defer o16.Close()
	l16, err := NewMha(ctx, bcfg, MhaWeights{InProjWeight: w16, OutProjWeight: o16})
	if err != nil {
		t.Fatal(err)
	}
	defer l16.Close()
	_, err = NewMhaTrainPlan(l16, nil, dims, false)
	expectErr(t, err, StatusUnsupported, "")

	// Closing the layer before its training plan is safe.
	layer.Close()
	must(t, ForwardMha(step, x, x, x, nil, out))
}

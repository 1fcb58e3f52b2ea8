package attn

import (
	"math"
	"testing"
)

// TrainPlan's gradients against central finite differences of the loss
// L = Σ dout·out computed with the same plan's forward, in f64.
func TestBackwardFiniteDifferences(t *testing.T) {
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
	if err := desc.SetCausal(CausalBottomRight); err != nil {
		t.Fatal(err)
	}
	dims := Dims{Batch: 2, Heads: 4, KVHeads: 2, SeqQ: 5, SeqK: 7, HeadDim: 3, ValueDim: 4, BSHD: true}
	tp, err := NewTrainPlan(desc, F64, dims)
	if err != nil {
		t.Fatal(err)
	}
	defer tp.Close()
	if tp.WorkspaceSize() <= 0 {
		t.Fatal("no workspace")
	}
	seed := rng(0x9e3779b97f4a7c15)
	r := &seed
	q, k, v := r.vec(dims.QLen()), r.vec(dims.KLen()), r.vec(dims.VLen())
	dout := r.vec(dims.OutLen())
	out, lse := make([]float64, dims.OutLen()), make([]float64, dims.LseLen())
	dq, dk, dv := make([]float64, dims.QLen()), make([]float64, dims.KLen()), make([]float64, dims.VLen())
	if err := Forward(tp, q, k, v, out, lse); err != nil {
		t.Fatal(err)
	}
	if err := Backward(tp, q, k, v, out, lse, dout, dq, dk, dv); err != nil {
		t.Fatal(err)
	}
	loss := func() float64 {
		if err := Forward(tp, q, k, v, out, lse); err != nil {
			t.Fatal(err)
		}
		s := 0.0
		for i := range out {
			s += out[i] * dout[i]
		}
		return s
	}
	const h = 1e-5
	for which, x := range [][]float64{q, k, v} {
		g := [][]float64{dq, dk, dv}[which]
		worst, scale := 0.0, 0.0
		for e := range x {
			x0 := x[e]
			x[e] = x0 + h
			lp := loss()
			x[e] = x0 - h
			lm := loss()
			x[e] = x0
			fd := (lp - lm) / (2 * h)
			worst = math.Max(worst, math.Abs(g[e]-fd))
			scale = math.Max(scale, math.Abs(fd))
		}
		if worst > 1e-6*math.Max(scale, 1e-12) {
			t.Errorf("gradient %d: max error %g, scale %g", which, worst, scale)
		}
	}
	// A short slice is rejected before anything is written.
	for i := range dq {
		dq[i] = 0
	}
	if err := Backward(tp, q, k, v, out, lse, dout[:3], dq, dk, dv); err == nil {
		t.Error("short dout accepted")
	}
	for _, x := range dq {
		if x != 0 {
			t.Fatal("dq written on error")
		}
	}
}

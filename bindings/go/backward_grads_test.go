package attn

import (
	"math"
	"strings"
	"testing"
)

// BackwardWith (attn_backward_plan_set_sink_grad, _general_grad,
// _additive_grads, _lowrank_grads): the gradients of the descriptor's own
// parameters against central finite differences of L = Σ dout·out computed
// with the binding's Forward, in f64; and the errors a bad call returns.
// Every loss evaluation builds a fresh descriptor and plan over the
// perturbed parameters (SetSinks copies its values at the call).

// The additive score's attention dim and Linformer's projected length.
const (
	gradA = 4
	gradK = 2
)

type gradKind int

const (
	kindSinks gradKind = iota
	kindGeneral
	kindAdditive
	kindLinformer
)

var kindNames = [4]string{"sinks", "general", "additive", "linformer"}

func (k gradKind) String() string { return kindNames[k] }

func gradDims(kind gradKind) Dims {
	switch kind {
	case kindSinks:
		return Dims{Batch: 2, Heads: 3, KVHeads: 1, SeqQ: 4, SeqK: 5, HeadDim: 3, ValueDim: 2}
	case kindGeneral:
		return Dims{Batch: 2, Heads: 2, SeqQ: 3, SeqK: 4, HeadDim: 3}
	case kindAdditive:
		return Dims{Batch: 1, Heads: 2, KVHeads: 1, SeqQ: 3, SeqK: 4, HeadDim: 3, ValueDim: 2}
	}
	return Dims{Batch: 2, Heads: 2, SeqQ: 3, SeqK: 5, HeadDim: 3}
}

// gradShapes are the shapes of kind's parameters, packed in this order into
// one vector: sinks [H]; general W [d, d]; additive w_q [A, d], w_k [A, d],
// bias [A], v [A]; Linformer E, F [K, S_k].
func gradShapes(kind gradKind, d Dims) [][]int64 {
	switch kind {
	case kindSinks:
		return [][]int64{{d.Heads}}
	case kindGeneral:
		return [][]int64{{d.HeadDim, d.HeadDim}}
	case kindAdditive:
		return [][]int64{{gradA, d.HeadDim}, {gradA, d.HeadDim}, {gradA}, {gradA}}
	}
	return [][]int64{{gradK, d.SeqK}, {gradK, d.SeqK}}
}

func numel(shape []int64) int {
	n := 1
	for _, x := range shape {
		n *= int(x)
	}
	return n
}

// split cuts a packed vector into kind's parameters (views, no copy).
func split(kind gradKind, d Dims, p []float64) [][]float64 {
	var parts [][]float64
	for _, s := range gradShapes(kind, d) {
		n := numel(s)
		parts = append(parts, p[:n:n])
		p = p[n:]
	}
	return parts
}

type gradInputs struct {
	kind          gradKind
	dims          Dims
	shapes        [][]int64
	q, k, v, dout []float64
	nParams       int
	params        []float64
	out, lse      []float64
	dq, dk, dv    []float64
}

func newGradInputs(kind gradKind, seed uint64) *gradInputs {
	d := gradDims(kind)
	r := rng(seed)
	x := &gradInputs{dims: d, kind: kind, shapes: gradShapes(kind, d)}
	x.q, x.k, x.v, x.dout = r.vec(d.QLen()), r.vec(d.KLen()), r.vec(d.VLen()), r.vec(d.OutLen())
	for _, s := range x.shapes {
		x.nParams += numel(s)
	}
	x.params = r.vec(x.nParams)
	for i := range x.params {
		x.params[i] *= 0.6
	}
	x.out, x.lse = make([]float64, d.OutLen()), make([]float64, d.LseLen())
	x.dq, x.dk, x.dv = make([]float64, d.QLen()), make([]float64, d.KLen()), make([]float64, d.VLen())
	return x
}

// plan builds kind's descriptor over p and a TrainPlan for it, runs the
// forward into x.out, x.lse and returns the plan and a function closing
// everything (the plan, then the descriptor, then the weight tensors).
func (x *gradInputs) plan(t *testing.T, ctx *Context, p []float64) (*TrainPlan, func()) {
	t.Helper()
	var tensors []*Tensor
	parts := split(x.kind, x.dims, p)
	if x.kind != kindSinks {
		for i, s := range x.shapes {
			w, err := NewTensor(ctx, F64, s...)
			if err != nil {
				t.Fatal(err)
			}
			copy(w.Float64(), parts[i])
			tensors = append(tensors, w)
		}
	}
	desc, err := NewDesc(ctx)
	if err != nil {
		t.Fatal(err)
	}
	switch x.kind {
	case kindSinks:
		err = desc.SetCausal(CausalBottomRight)
		if err == nil {
			err = desc.SetSinks(parts[0])
		}
	case kindGeneral:
		err = desc.SetScore(ScoreGeneral)
		if err == nil {
			err = desc.SetGeneralWeight(tensors[0])
		}
	case kindAdditive:
		err = desc.SetScore(ScoreAdditive)
		if err == nil {
			err = desc.SetAdditiveWeights(tensors[0], tensors[1], tensors[2], tensors[3])
		}
	case kindLinformer:
		err = desc.SetVariant(VariantLinformer)
		if err == nil {
			err = desc.SetLowrankProj(tensors[0], tensors[1])
		}
	}
	if err != nil {
		t.Fatal(err)
	}
	tp, err := NewTrainPlan(desc, F64, x.dims)
	if err != nil {
		t.Fatal(err)
	}
	if err := Forward(tp, x.q, x.k, x.v, x.out, x.lse); err != nil {
		t.Fatal(err)
	}
	return tp, func() {
		tp.Close()
		desc.Close()
		for _, w := range tensors {
			w.Close()
		}
	}
}

func (x *gradInputs) loss() float64 {
	s := 0.0
	for i := range x.out {
		s += x.out[i] * x.dout[i]
	}
	return s
}

// grads points kind's BackwardGrads fields at the packed vector g.
func (x *gradInputs) grads(g []float64) *BackwardGrads[float64] {
	parts := split(x.kind, x.dims, g)
	switch x.kind {
	case kindSinks:
		return &BackwardGrads[float64]{Sinks: parts[0]}
	case kindGeneral:
		return &BackwardGrads[float64]{GeneralWeight: parts[0]}
	case kindAdditive:
		return &BackwardGrads[float64]{AdditiveWQ: parts[0], AdditiveWK: parts[1], AdditiveBias: parts[2], AdditiveV: parts[3]}
	}
	return &BackwardGrads[float64]{LowrankE: parts[0], LowrankF: parts[1]}
}

// fdError is the relative normwise error max|g − fd| / max|fd| of kind's
// gradient from BackwardWith against central differences (h = 1e-6).
func fdError(t *testing.T, kind gradKind, seed uint64) float64 {
	ctx, err := NewContext(2)
	if err != nil {
		t.Fatal(err)
	}
	defer ctx.Close()
	x := newGradInputs(kind, seed)
	g := make([]float64, x.nParams)
	for i := range g {
		g[i] = math.NaN()
	}
	tp, done := x.plan(t, ctx, x.params)
	err = BackwardWith(tp, x.q, x.k, x.v, x.out, x.lse, x.dout, x.dq, x.dk, x.dv, x.grads(g))
	done()
	if err != nil {
		t.Fatal(err)
	}
	lossAt := func() float64 {
		_, done := x.plan(t, ctx, x.params)
		defer done()
		return x.loss()
	}
	const h = 1e-6
	num, den := 0.0, 0.0
	for e := range x.params {
		p0 := x.params[e]
		x.params[e] = p0 + h
		lp := lossAt()
		x.params[e] = p0 - h
		lm := lossAt()
		x.params[e] = p0
		fd := (lp - lm) / (2 * h)
		if math.IsNaN(g[e]) || math.IsInf(g[e], 0) {
			t.Fatalf("%v: gradient %d is %g", kind, e, g[e])
		}
		num = math.Max(num, math.Abs(g[e]-fd))
		den = math.Max(den, math.Abs(fd))
	}
	if den < 1e-3 {
		t.Fatalf("%v: degenerate test, max |fd| = %g", kind, den)
	}
	rel := num / den
	t.Logf("BackwardWith %v: %d parameters, relative normwise error vs finite differences %.3e", kind, x.nParams, rel)
	return rel
}

func TestBackwardWithSinkGradient(t *testing.T) {
	if e := fdError(t, kindSinks, 0x123456789abcdef1); e > 1e-6 {
		t.Errorf("sinks: relative error %g", e)
	}
}

func TestBackwardWithGeneralGradient(t *testing.T) {
	if e := fdError(t, kindGeneral, 0x2545f4914f6cdd1d); e > 1e-6 {
		t.Errorf("general: relative error %g", e)
	}
}

func TestBackwardWithAdditiveGradients(t *testing.T) {
	if e := fdError(t, kindAdditive, 0x9e3779b97f4a7c15); e > 1e-6 {
		t.Errorf("additive: relative error %g", e)
	}
}

func TestBackwardWithLinformerGradients(t *testing.T) {
	if e := fdError(t, kindLinformer, 0x0badcafef00d1234); e > 1e-6 {
		t.Errorf("linformer: relative error %g", e)
	}
}

func allZero(xs []float64) bool {
	for _, x := range xs {
		if x != 0 {
			return false
		}
	}
	return true
}

// A gradient slice one element short is StatusShape, for every kind,
// before anything is written.
func TestBackwardWithWrongLength(t *testing.T) {
	ctx, err := NewContext(1)
	if err != nil {
		t.Fatal(err)
	}
	defer ctx.Close()
	for _, kind := range []gradKind{kindSinks, kindGeneral, kindAdditive, kindLinformer} {
		x := newGradInputs(kind, 7)
		tp, done := x.plan(t, ctx, x.params)
		g := make([]float64, x.nParams)
		bg := x.grads(g)
		switch kind { // the last gradient one short
		case kindSinks:
			bg.Sinks = bg.Sinks[:len(bg.Sinks)-1]
		case kindGeneral:
			bg.GeneralWeight = bg.GeneralWeight[:len(bg.GeneralWeight)-1]
		case kindAdditive:
			bg.AdditiveV = bg.AdditiveV[:len(bg.AdditiveV)-1]
		case kindLinformer:
			bg.LowrankF = bg.LowrankF[:len(bg.LowrankF)-1]
		}
		err := BackwardWith(tp, x.q, x.k, x.v, x.out, x.lse, x.dout, x.dq, x.dk, x.dv, bg)
		done()
		if StatusOf(err) != StatusShape || !strings.Contains(err.Error(), "grads.") {
			t.Errorf("%v: short gradient: %v", kind, err)
		}
		if !allZero(x.dq) || !allZero(g) {
			t.Errorf("%v: written on error", kind)
		}
	}
}

func TestBackwardWithRejectedGradients(t *testing.T) {
	ctx, err := NewContext(1)
	if err != nil {
		t.Fatal(err)
	}
	defer ctx.Close()
	x := newGradInputs(kindGeneral, 11)
	tp, done := x.plan(t, ctx, x.params)
	defer done()
	// No sinks in the descriptor: the library refuses them (its message kept).
	err = BackwardWith(tp, x.q, x.k, x.v, x.out, x.lse, x.dout, x.dq, x.dk, x.dv, &BackwardGrads[float64]{Sinks: make([]float64, 2)})
	if StatusOf(err) != StatusInvalidArg || !strings.Contains(err.Error(), "dsinks") {
		t.Errorf("sinks without sinks: %v", err)
	}
	// No additive weights in the descriptor: the binding refuses them.
	err = BackwardWith(tp, x.q, x.k, x.v, x.out, x.lse, x.dout, x.dq, x.dk, x.dv, &BackwardGrads[float64]{AdditiveWQ: make([]float64, 12)})
	if StatusOf(err) != StatusInvalidArg {
		t.Errorf("additive on a general plan: %v", err)
	}
	// A gradient overlapping an operand.
	err = BackwardWith(tp, x.q, x.k, x.v, x.out, x.lse, x.dout, x.dq, x.dk, x.dv, &BackwardGrads[float64]{GeneralWeight: x.dq[:9]})
	if StatusOf(err) != StatusInvalidArg || !strings.Contains(err.Error(), "overlaps dq") {
		t.Errorf("overlap: %v", err)
	}
	if !allZero(x.dq) {
		t.Fatal("dq written on error")
	}
	// The plan is as it was: a plain Backward works.
	if err := Backward(tp, x.q, x.k, x.v, x.out, x.lse, x.dout, x.dq, x.dk, x.dv); err != nil {
		t.Fatal(err)
	}
	if allZero(x.dq) {
		t.Error("no dq")
	}
}

// After BackwardWith returns, the C plan no longer writes to its buffers.
func TestBackwardWithReleasesBuffers(t *testing.T) {
	ctx, err := NewContext(1)
	if err != nil {
		t.Fatal(err)
	}
	defer ctx.Close()
	x := newGradInputs(kindSinks, 13)
	tp, done := x.plan(t, ctx, x.params)
	defer done()
	s := []float64{math.NaN(), math.NaN(), math.NaN()}
	if err := BackwardWith(tp, x.q, x.k, x.v, x.out, x.lse, x.dout, x.dq, x.dk, x.dv, &BackwardGrads[float64]{Sinks: s}); err != nil {
		t.Fatal(err)
	}
	for i := range s {
		if math.IsNaN(s[i]) {
			t.Fatal("sink gradient not written")
		}
		s[i] = math.NaN()
	}
	if err := Backward(tp, x.q, x.k, x.v, x.out, x.lse, x.dout, x.dq, x.dk, x.dv); err != nil {
		t.Fatal(err)
	}
	if err := BackwardWith(tp, x.q, x.k, x.v, x.out, x.lse, x.dout, x.dq, x.dk, x.dv, nil); err != nil {
		t.Fatal(err)
	}
	for _, g := range s {
		if !math.IsNaN(g) {
			t.Fatal("a later backward wrote to an earlier call's buffer")
		}
	}
}

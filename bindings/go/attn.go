// Package attn is the Go binding of libattn: attention mechanisms as GEMM
// calls into BLAS behind a stable C ABI.
//
//	ctx, _ := attn.NewContext(0)
//	defer ctx.Close()
//	desc, _ := attn.NewDesc(ctx)
//	defer desc.Close()
//	desc.SetCausal(attn.CausalTopLeft)
//	dims := attn.Dims{Batch: 1, Heads: 2, SeqQ: 8, SeqK: 8, HeadDim: 4}
//	out := make([]float32, dims.OutLen())
//	err := attn.Attention(desc, dims, q, k, v, out)
//
// # Go memory and cgo's pointer rules
//
// C may not keep a Go pointer after a call returns. libattn tensors made with
// attn_tensor_wrap remember their data pointer, so this package never wraps Go
// memory in a handle that outlives a call. Instead:
//
//   - Plan.Execute and Attention take Go slices. One C helper call points the
//     plan's own tensor handles at the slices, executes, and points them back
//     at a static placeholder before returning: no copy, no allocation, and
//     C holds no Go pointer afterwards. Each slice is a separate argument (a
//     Go array of pointers may not be passed to C).
//
//   - Tensor is memory allocated by libattn (C memory). Its Float32/Float64/
//     Bytes views are Go slices over C memory, so masks, weights and reusable
//     buffers can be held by descriptors and plans as long as needed.
//
//   - Arrays given to descriptor setters (key lengths, ALiBi slopes, global
//     tokens) are copied into C memory owned by the descriptor, freed when the
//     descriptor and every plan made from it are closed.
//
//   - Mha weights are Tensors (C memory): the layer borrows them for its
//     whole life. MhaPlan execution takes Go slices like Plan.Execute, and
//     so do ForwardMha/BackwardMha of an MhaTrainPlan (inputs, gradients and
//     the plan's own saved-activations buffer, all for one call only).
//
//   - Backward and BackwardWith of a TrainPlan take Go slices the same way.
//     The extra gradients of BackwardWith (BackwardGrads: sinks, score
//     weights, Linformer projections) are set on the C backward plan
//     (attn_backward_plan_set_*) inside that one helper call, right before
//     the execute, and unset (NULL) right after it, so the plan never keeps
//     a Go pointer between calls.
//
//   - KVCache appends copy Go slices into the cache (C memory) in one helper
//     call, like Plan.Execute; KVView returns Go slices over the cache's C
//     memory. Per-item counts and lengths are passed as plain call arguments.
//
// Every object has Close() and a finalizer as a safety net; runtime.KeepAlive
// keeps an object alive across the C calls that use its handle. Objects made
// from a Context must be used from one goroutine at a time (libattn's rule).
package attn

/*
#cgo pkg-config: attn
#cgo CFLAGS: -DATTN_EXPERIMENTAL
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <attn/attn.h>

// A non-NULL address for plan tensors between executes (never dereferenced:
// plan creation reads only metadata, and execute always sets real data first).
static double attn_go_placeholder_[8];
static void *attn_go_placeholder(void) { return attn_go_placeholder_; }

// Run a plan on caller memory for the duration of this one call.
static attn_status attn_go_execute(attn_plan *plan, attn_tensor *tq, attn_tensor *tk,
                                   attn_tensor *tv, attn_tensor *to, attn_tensor *tw,
                                   attn_tensor *tl, void *q, void *k, void *v, void *o,
                                   void *w, void *l) {
  attn_tensor *ts[6] = {tq, tk, tv, to, tw, tl};
  void *ps[6] = {q, k, v, o, w, l};
  attn_status st = ATTN_OK;
  for (int i = 0; i < 6 && st == ATTN_OK; i++)
    if (ts[i] != NULL) st = attn_tensor_set_data(ts[i], ps[i]);
  if (st == ATTN_OK) st = attn_plan_execute(plan, tq, tk, tv, to, tw, tl);
  for (int i = 0; i < 6; i++)
    if (ts[i] != NULL) attn_tensor_set_data(ts[i], attn_go_placeholder_);
  return st;
}

// Run a backward plan on caller memory for the duration of this one call
// (q, k, v, out, lse, dout, dq, dk, dv).
static attn_status attn_go_backward_execute(attn_backward_plan *plan, attn_tensor *t0,
                                            attn_tensor *t1, attn_tensor *t2, attn_tensor *t3,
                                            attn_tensor *t4, attn_tensor *t5, attn_tensor *t6,
                                            attn_tensor *t7, attn_tensor *t8, void *p0, void *p1,
                                            void *p2, void *p3, void *p4, void *p5, void *p6,
                                            void *p7, void *p8) {
  attn_tensor *ts[9] = {t0, t1, t2, t3, t4, t5, t6, t7, t8};
  void *ps[9] = {p0, p1, p2, p3, p4, p5, p6, p7, p8};
  attn_status st = ATTN_OK;
  for (int i = 0; i < 9 && st == ATTN_OK; i++) st = attn_tensor_set_data(ts[i], ps[i]);
  if (st == ATTN_OK) st = attn_backward_execute(plan, t0, t1, t2, t3, t4, t5, t6, t7, t8, NULL);
  for (int i = 0; i < 9; i++) attn_tensor_set_data(ts[i], attn_go_placeholder_);
  return st;
}

// A backward with backward.h's extra gradients, on caller memory for the
// duration of this one call. ts: 16 handles (a Go array of C pointers): q, k,
// v, out, lse, dout, dq, dk, dv, then the weight gradients general dw,
// additive dw_q, dw_k, dbias, dv, Linformer de, df (NULL = not wanted);
// p0..p8, g0..g6 their data (separate arguments: Go memory passed to C may
// not hold Go pointers). Each attn_backward_plan_set_* is called right before
// the execute only when one of its gradients is wanted, and undone (NULL)
// right after it, whatever the outcome: the plan keeps neither the caller's
// memory (dsinks included) nor these handles past the call. On failure
// *failed says which step failed (0 set_data, 1 sinks, 2 general,
// 3 additive, 4 lowrank, 5 execute) and msg receives the context's message,
// which the undoing calls clear.
static attn_status attn_go_backward_grads(attn_backward_plan *plan, attn_context *ctx,
                                          attn_tensor *const *ts, double *dsinks, int64_t nsinks,
                                          void *p0, void *p1, void *p2, void *p3, void *p4,
                                          void *p5, void *p6, void *p7, void *p8, void *g0,
                                          void *g1, void *g2, void *g3, void *g4, void *g5,
                                          void *g6, int *failed, char *msg, size_t msg_size) {
  void *ps[16] = {p0, p1, p2, p3, p4, p5, p6, p7, p8, g0, g1, g2, g3, g4, g5, g6};
  int set[4] = {0, 0, 0, 0}; // sinks, general, additive, lowrank
  attn_status st = ATTN_OK;
  *failed = 0;
  for (int i = 0; i < 16 && st == ATTN_OK; i++)
    if (ts[i] != NULL) st = attn_tensor_set_data(ts[i], ps[i]);
  if (st == ATTN_OK && dsinks != NULL) {
    *failed = 1;
    st = attn_backward_plan_set_sink_grad(plan, dsinks, nsinks);
    set[0] = st == ATTN_OK;
  }
  if (st == ATTN_OK && ts[9] != NULL) {
    *failed = 2;
    st = attn_backward_plan_set_general_grad(plan, ts[9]);
    set[1] = st == ATTN_OK;
  }
  if (st == ATTN_OK && (ts[10] != NULL || ts[11] != NULL || ts[12] != NULL || ts[13] != NULL)) {
    *failed = 3;
    st = attn_backward_plan_set_additive_grads(plan, ts[10], ts[11], ts[12], ts[13]);
    set[2] = st == ATTN_OK;
  }
  if (st == ATTN_OK && (ts[14] != NULL || ts[15] != NULL)) {
    *failed = 4;
    st = attn_backward_plan_set_lowrank_grads(plan, ts[14], ts[15]);
    set[3] = st == ATTN_OK;
  }
  if (st == ATTN_OK) {
    *failed = 5;
    st = attn_backward_execute(plan, ts[0], ts[1], ts[2], ts[3], ts[4], ts[5], ts[6], ts[7],
                               ts[8], NULL);
  }
  if (st != ATTN_OK && msg_size > 0) {
    const char *m = attn_context_last_error(ctx);
    snprintf(msg, msg_size, "%s", m != NULL ? m : "");
  }
  if (set[0]) attn_backward_plan_set_sink_grad(plan, NULL, 0);
  if (set[1]) attn_backward_plan_set_general_grad(plan, NULL);
  if (set[2]) attn_backward_plan_set_additive_grads(plan, NULL, NULL, NULL, NULL);
  if (set[3]) attn_backward_plan_set_lowrank_grads(plan, NULL, NULL);
  for (int i = 0; i < 16; i++)
    if (ts[i] != NULL) attn_tensor_set_data(ts[i], attn_go_placeholder_);
  return st;
}

// Run an MHA plan on caller memory for the duration of this one call
// (query, key, value, key_padding_mask, out, weights; NULL handles skipped).
static attn_status attn_go_mha_execute(attn_mha_plan *plan, attn_tensor *tq, attn_tensor *tk,
                                       attn_tensor *tv, attn_tensor *tm, attn_tensor *to,
                                       attn_tensor *tw, void *q, void *k, void *v, void *m,
                                       void *o, void *w) {
  attn_tensor *ts[6] = {tq, tk, tv, tm, to, tw};
  void *ps[6] = {q, k, v, m, o, w};
  attn_status st = ATTN_OK;
  for (int i = 0; i < 6 && st == ATTN_OK; i++)
    if (ts[i] != NULL) st = attn_tensor_set_data(ts[i], ps[i]);
  if (st == ATTN_OK) st = attn_mha_plan_execute(plan, tq, tk, tv, tm, to, tw);
  for (int i = 0; i < 6; i++)
    if (ts[i] != NULL) attn_tensor_set_data(ts[i], attn_go_placeholder_);
  return st;
}

// A training step of an MHA layer on caller memory for the duration of one
// call. ts: the plan's handles, a Go array of C pointers (NULL = absent or
// not wanted); the data pointers are separate arguments, since Go memory
// passed to C may not hold Go pointers.
// Forward: ts = query, key, value, key_padding_mask, out.
static attn_status attn_go_mha_forward_train(attn_mha_backward_plan *plan, attn_tensor *const *ts,
                                             void *saved, size_t saved_size, void *q, void *k,
                                             void *v, void *m, void *o) {
  void *ps[5] = {q, k, v, m, o};
  attn_status st = ATTN_OK;
  for (int i = 0; i < 5 && st == ATTN_OK; i++)
    if (ts[i] != NULL) st = attn_tensor_set_data(ts[i], ps[i]);
  if (st == ATTN_OK)
    st = attn_mha_forward_train(plan, ts[0], ts[1], ts[2], ts[3], ts[4], saved, saved_size);
  for (int i = 0; i < 5; i++)
    if (ts[i] != NULL) attn_tensor_set_data(ts[i], attn_go_placeholder_);
  return st;
}

// Backward: ts = query, key, value, key_padding_mask, dout, dquery, dkey,
// dvalue, then the nine parameter gradients in attn_mha_grads order.
static attn_status attn_go_mha_backward(attn_mha_backward_plan *plan, attn_tensor *const *ts,
                                        const void *saved, size_t saved_size, void *q, void *k,
                                        void *v, void *m, void *dout, void *dq, void *dk,
                                        void *dv, void *g0, void *g1, void *g2, void *g3,
                                        void *g4, void *g5, void *g6, void *g7, void *g8) {
  void *ps[17] = {q, k, v, m, dout, dq, dk, dv, g0, g1, g2, g3, g4, g5, g6, g7, g8};
  attn_status st = ATTN_OK;
  for (int i = 0; i < 17 && st == ATTN_OK; i++)
    if (ts[i] != NULL) st = attn_tensor_set_data(ts[i], ps[i]);
  if (st == ATTN_OK) {
    attn_mha_grads g;
    attn_mha_grads_init(&g);
    attn_tensor **fields[9] = {&g.in_proj_weight, &g.q_proj_weight, &g.k_proj_weight,
                               &g.v_proj_weight,  &g.in_proj_bias,  &g.out_proj_weight,
                               &g.out_proj_bias,  &g.bias_k,        &g.bias_v};
    for (int i = 0; i < 9; i++) *fields[i] = ts[8 + i];
    st = attn_mha_backward_execute(plan, ts[0], ts[1], ts[2], ts[3], ts[4], saved, saved_size,
                                   ts[5], ts[6], ts[7], &g);
  }
  for (int i = 0; i < 17; i++)
    if (ts[i] != NULL) attn_tensor_set_data(ts[i], attn_go_placeholder_);
  return st;
}

// attn_heads_split (merge = 0) or attn_heads_merge (merge = 1) on caller
// memory for the duration of this one call.
static attn_status attn_go_heads_copy(int merge, attn_context *ctx, attn_tensor *tx,
                                      attn_tensor *to, void *x, void *o) {
  attn_status st = attn_tensor_set_data(tx, x);
  if (st == ATTN_OK) st = attn_tensor_set_data(to, o);
  if (st == ATTN_OK) st = merge ? attn_heads_merge(ctx, tx, to) : attn_heads_split(ctx, tx, to);
  attn_tensor_set_data(tx, attn_go_placeholder_);
  attn_tensor_set_data(to, attn_go_placeholder_);
  return st;
}
// attn_merge_states on caller memory for the duration of this one call.
static attn_status attn_go_merge(attn_context *ctx, attn_tensor *ta, attn_tensor *tla,
                                 attn_tensor *tb, attn_tensor *tlb, attn_tensor *to,
                                 attn_tensor *tl, void *a, void *la, void *b, void *lb,
                                 void *o, void *l) {
  attn_tensor *ts[6] = {ta, tla, tb, tlb, to, tl};
  void *ps[6] = {a, la, b, lb, o, l};
  attn_status st = ATTN_OK;
  for (int i = 0; i < 6 && st == ATTN_OK; i++) st = attn_tensor_set_data(ts[i], ps[i]);
  if (st == ATTN_OK) st = attn_merge_states(ctx, ta, tla, tb, tlb, to, tl);
  for (int i = 0; i < 6; i++) attn_tensor_set_data(ts[i], attn_go_placeholder_);
  return st;
}

// Append caller memory to a KV cache for the duration of this one call.
static attn_status attn_go_kv_append(attn_kvcache *cache, attn_tensor *tk, attn_tensor *tv,
                                     void *k, void *v, const int64_t *counts) {
  attn_status st = attn_tensor_set_data(tk, k);
  if (st == ATTN_OK) st = attn_tensor_set_data(tv, v);
  if (st == ATTN_OK) st = attn_kvcache_append(cache, tk, tv, counts);
  attn_tensor_set_data(tk, attn_go_placeholder_);
  attn_tensor_set_data(tv, attn_go_placeholder_);
  return st;
}

// Run a KV-cache plan on caller memory for the duration of this one call
// (lse handle may be NULL).
static attn_status attn_go_kv_execute(attn_kvcache_plan *plan, attn_tensor *tq, attn_tensor *to,
                                      attn_tensor *tl, void *q, void *o, void *l,
                                      const int64_t *counts) {
  attn_tensor *ts[3] = {tq, to, tl};
  void *ps[3] = {q, o, l};
  attn_status st = ATTN_OK;
  for (int i = 0; i < 3 && st == ATTN_OK; i++)
    if (ts[i] != NULL) st = attn_tensor_set_data(ts[i], ps[i]);
  if (st == ATTN_OK) st = attn_kvcache_plan_execute(plan, tq, to, tl, counts);
  for (int i = 0; i < 3; i++)
    if (ts[i] != NULL) attn_tensor_set_data(ts[i], attn_go_placeholder_);
  return st;
}
// Append caller memory to a paged cache's sequence for this one call.
static attn_status attn_go_paged_append(attn_paged_cache *cache, int64_t seq, attn_tensor *tk,
                                        attn_tensor *tv, void *k, void *v) {
  attn_status st = attn_tensor_set_data(tk, k);
  if (st == ATTN_OK) st = attn_tensor_set_data(tv, v);
  if (st == ATTN_OK) st = attn_paged_append(cache, seq, tk, tv);
  attn_tensor_set_data(tk, attn_go_placeholder_);
  attn_tensor_set_data(tv, attn_go_placeholder_);
  return st;
}

// Run a paged plan on caller memory for this one call (lse handle may be NULL).
static attn_status attn_go_paged_execute(attn_paged_plan *plan, int64_t count, const int64_t *seqs,
                                         attn_tensor *tq, attn_tensor *to, attn_tensor *tl,
                                         void *q, void *o, void *l, const int64_t *counts) {
  attn_tensor *ts[3] = {tq, to, tl};
  void *ps[3] = {q, o, l};
  attn_status st = ATTN_OK;
  for (int i = 0; i < 3 && st == ATTN_OK; i++)
    if (ts[i] != NULL) st = attn_tensor_set_data(ts[i], ps[i]);
  if (st == ATTN_OK) st = attn_paged_plan_execute(plan, count, seqs, tq, to, tl, counts);
  for (int i = 0; i < 3; i++)
    if (ts[i] != NULL) attn_tensor_set_data(ts[i], attn_go_placeholder_);
  return st;
}
*/
import "C"

import (
	"errors"
	"fmt"
	"math"
	"runtime"
	"sync"
	"unsafe"
)

// ExpectedMajor is the libattn ABI major this package speaks (libattn.so.0).
const ExpectedMajor = 0

// WindowUnbounded: no limit on that side of SetWindow.
const WindowUnbounded int64 = math.MaxInt64

// Status is an attn_status code.
type Status int

const (
	StatusOK          Status = C.ATTN_OK
	StatusNullArg     Status = C.ATTN_ERR_NULL_ARG
	StatusInvalidArg  Status = C.ATTN_ERR_INVALID_ARG
	StatusShape       Status = C.ATTN_ERR_SHAPE
	StatusDType       Status = C.ATTN_ERR_DTYPE
	StatusLayout      Status = C.ATTN_ERR_LAYOUT
	StatusOverflow    Status = C.ATTN_ERR_OVERFLOW
	StatusNoMemory    Status = C.ATTN_ERR_NO_MEMORY
	StatusUnsupported Status = C.ATTN_ERR_UNSUPPORTED
	StatusCapacity    Status = C.ATTN_ERR_CAPACITY
	StatusMismatch    Status = C.ATTN_ERR_MISMATCH
	StatusThread      Status = C.ATTN_ERR_THREAD
	StatusInternal    Status = C.ATTN_ERR_INTERNAL
)

// String is attn_status_string.
func (s Status) String() string { return C.GoString(C.attn_status_string(C.attn_status(s))) }

// Error is a failed call: status, function and the context's message naming
// the bad argument (may be empty).
type Error struct {
	Status  Status
	Func    string
	Message string
}

func (e *Error) Error() string {
	detail := e.Message
	if detail == "" {
		detail = e.Status.String()
	}
	return fmt.Sprintf("%s: %s (status %d: %s)", e.Func, detail, int(e.Status), e.Status.String())
}

// StatusOf returns the Status carried by err (StatusOK for nil, -1 for other errors).
func StatusOf(err error) Status {
	var e *Error
	if err == nil {
		return StatusOK
	}
	if errors.As(err, &e) {
		return e.Status
	}
	return -1
}

// DType is an element type.
type DType int

const (
	F32 DType = C.ATTN_DTYPE_F32
	F64 DType = C.ATTN_DTYPE_F64
	U8  DType = C.ATTN_DTYPE_U8
	// BF16 is bfloat16 storage (q, k, v, out): the top 16 bits of a float32.
	BF16 DType = C.ATTN_DTYPE_BF16
	// F16 is IEEE binary16 storage (q, k, v, out).
	F16 DType = C.ATTN_DTYPE_F16
)

func (d DType) size() int64 {
	switch d {
	case F32:
		return 4
	case F64:
		return 8
	case U8:
		return 1
	case BF16, F16:
		return 2
	}
	return 0
}

// Variant selects the algorithm.
type Variant int

const (
	VariantExact       Variant = C.ATTN_VARIANT_EXACT
	VariantSwin        Variant = C.ATTN_VARIANT_SWIN
	VariantLongformer  Variant = C.ATTN_VARIANT_LONGFORMER
	VariantBigBird     Variant = C.ATTN_VARIANT_BIGBIRD
	VariantBlockSparse Variant = C.ATTN_VARIANT_BLOCK_SPARSE
	VariantLinearElu   Variant = C.ATTN_VARIANT_LINEAR_ELU
	VariantPerformer   Variant = C.ATTN_VARIANT_PERFORMER
	VariantLinformer   Variant = C.ATTN_VARIANT_LINFORMER
)

// Score selects the score function.
type Score int

const (
	ScoreScaledDot Score = C.ATTN_SCORE_SCALED_DOT
	ScoreDot       Score = C.ATTN_SCORE_DOT
	ScoreGeneral   Score = C.ATTN_SCORE_GENERAL
	ScoreAdditive  Score = C.ATTN_SCORE_ADDITIVE
)

// Causal selects causal masking and its alignment.
type Causal int

const (
	CausalNone        Causal = C.ATTN_CAUSAL_NONE
	CausalTopLeft     Causal = C.ATTN_CAUSAL_TOP_LEFT
	CausalBottomRight Causal = C.ATTN_CAUSAL_BOTTOM_RIGHT
)

// Version is the loaded library's version string.
func Version() string { return C.GoString(C.attn_version_string()) }

// VersionNumber is MAJOR*10000 + MINOR*100 + PATCH of the loaded library.
func VersionNumber() int { return int(C.attn_version_number()) }

func checkMajor() error {
	if n := VersionNumber(); n/10000 != ExpectedMajor {
		return &Error{Status: StatusUnsupported, Func: "attn.NewContext",
			Message: fmt.Sprintf("libattn %s has major %d; this package needs major %d", Version(), n/10000, ExpectedMajor)}
	}
	return nil
}

// ---------------------------------------------------------------------------

// Context owns libattn's worker threads and last error message.
type Context struct {
	p *C.attn_context
}

// NewContext makes a context with `threads` threads (0: $ATTN_NUM_THREADS or the cores).
func NewContext(threads int) (*Context, error) {
	if err := checkMajor(); err != nil {
		return nil, err
	}
	var opts C.attn_context_options
	C.attn_context_options_init(&opts)
	opts.num_threads = C.int32_t(threads)
	var p *C.attn_context
	if st := C.attn_context_create(&opts, &p); st != C.ATTN_OK {
		return nil, &Error{Status: Status(st), Func: "attn_context_create"}
	}
	c := &Context{p: p}
	runtime.SetFinalizer(c, (*Context).Close)
	return c, nil
}

// Close destroys the context; objects made from it must be closed first.
func (c *Context) Close() {
	if c.p != nil {
		C.attn_context_destroy(c.p)
		c.p = nil
	}
}

// NumThreads is the number of threads compute calls use.
func (c *Context) NumThreads() int {
	defer runtime.KeepAlive(c)
	return int(C.attn_context_num_threads(c.p))
}

// LastError is the message of the last failing call ("" if none).
func (c *Context) LastError() string {
	defer runtime.KeepAlive(c)
	return C.GoString(C.attn_context_last_error(c.p))
}

func (c *Context) check(st C.attn_status, fn string) error {
	if st == C.ATTN_OK {
		return nil
	}
	return &Error{Status: Status(st), Func: fn, Message: C.GoString(C.attn_context_last_error(c.p))}
}

func errClosed(what string) error {
	return &Error{Status: StatusNullArg, Func: "attn", Message: what + ": already closed"}
}

// ---------------------------------------------------------------------------

// Layout is a shape and strides in elements (logical [B, H, S, D] for attention operands).
type Layout struct {
	Shape   []int64
	Strides []int64
}

// Contiguous is the row-major layout of shape.
func Contiguous(shape ...int64) Layout {
	strides := make([]int64, len(shape))
	s := int64(1)
	for i := len(shape) - 1; i >= 0; i-- {
		strides[i] = s
		s *= shape[i]
	}
	return Layout{Shape: append([]int64(nil), shape...), Strides: strides}
}

// BSHD is [B, S, H, D] memory seen as the logical [B, H, S, D].
func BSHD(b, s, h, d int64) Layout {
	return Layout{Shape: []int64{b, h, s, d}, Strides: []int64{s * h * d, d, h * d, 1}}
}

// extent: elements a slice needs for l (largest offset + 1), checked.
func (l Layout) extent(what string) (int64, error) {
	bad := func(st Status, msg string) (int64, error) {
		return 0, &Error{Status: st, Func: "attn layout check", Message: what + ": " + msg}
	}
	if len(l.Shape) < 1 || len(l.Shape) > 4 || len(l.Strides) != len(l.Shape) {
		return bad(StatusShape, fmt.Sprintf("rank %d with %d strides, expected 1..4 and one stride per dim", len(l.Shape), len(l.Strides)))
	}
	last := int64(0)
	for i, n := range l.Shape {
		s := l.Strides[i]
		if n < 1 {
			return bad(StatusShape, fmt.Sprintf("shape %v has a dim < 1", l.Shape))
		}
		if s < 0 {
			return bad(StatusLayout, fmt.Sprintf("strides %v has a negative stride", l.Strides))
		}
		if s != 0 && n-1 > (math.MaxInt64-last)/s {
			return bad(StatusOverflow, fmt.Sprintf("shape %v with strides %v overflows", l.Shape, l.Strides))
		}
		last += (n - 1) * s
	}
	return last + 1, nil
}

// handle is an attn_tensor the package owns.
type handle struct {
	p      *C.attn_tensor
	extent int64
}

func wrap(ctx *Context, dt DType, l Layout, data unsafe.Pointer, what string) (*handle, error) {
	ext, err := l.extent(what)
	if err != nil {
		return nil, err
	}
	var p *C.attn_tensor
	st := C.attn_tensor_wrap(ctx.p, C.attn_dtype(dt), C.int32_t(len(l.Shape)),
		(*C.int64_t)(unsafe.Pointer(&l.Shape[0])), (*C.int64_t)(unsafe.Pointer(&l.Strides[0])),
		data, &p)
	runtime.KeepAlive(ctx)
	if err := ctx.check(st, "attn_tensor_wrap"); err != nil {
		return nil, err
	}
	return &handle{p: p, extent: ext}, nil
}

func (h *handle) destroy() {
	if h != nil && h.p != nil {
		C.attn_tensor_destroy(h.p)
		h.p = nil
	}
}

// Tensor is a tensor whose memory libattn allocated (C memory, zero-filled,
// 64-byte aligned, contiguous). Its slice views stay valid until Close.
type Tensor struct {
	ctx   *Context
	h     *handle
	dtype DType
	shape []int64
}

// NewTensor allocates a zero-filled contiguous tensor.
func NewTensor(ctx *Context, dtype DType, shape ...int64) (*Tensor, error) {
	if len(shape) == 0 {
		return nil, &Error{Status: StatusShape, Func: "attn.NewTensor", Message: "shape: rank 0, expected 1..4"}
	}
	var p *C.attn_tensor
	st := C.attn_tensor_create(ctx.p, C.attn_dtype(dtype), C.int32_t(len(shape)),
		(*C.int64_t)(unsafe.Pointer(&shape[0])), &p)
	runtime.KeepAlive(ctx)
	if err := ctx.check(st, "attn_tensor_create"); err != nil {
		return nil, err
	}
	n := int64(C.attn_tensor_numel(p))
	t := &Tensor{ctx: ctx, h: &handle{p: p, extent: n}, dtype: dtype, shape: append([]int64(nil), shape...)}
	runtime.SetFinalizer(t, (*Tensor).Close)
	return t, nil
}

// Shape returns a copy of the tensor's shape.
func (t *Tensor) Shape() []int64 { return append([]int64(nil), t.shape...) }

func (t *Tensor) view(dt DType) unsafe.Pointer {
	if t.h == nil || t.h.p == nil {
		panic("attn: Tensor used after Close")
	}
	if t.dtype != dt {
		panic(fmt.Sprintf("attn: tensor has dtype %d, not %d", t.dtype, dt))
	}
	return unsafe.Pointer(C.attn_tensor_data(t.h.p))
}

// Float32 is the tensor's memory as a slice (F32 tensors; valid until Close).
func (t *Tensor) Float32() []float32 {
	return unsafe.Slice((*float32)(t.view(F32)), t.h.extent)
}

// Float64 is the tensor's memory as a slice (F64 tensors; valid until Close).
func (t *Tensor) Float64() []float64 {
	return unsafe.Slice((*float64)(t.view(F64)), t.h.extent)
}

// Bytes is the tensor's memory as a slice (U8 tensors, masks; valid until Close).
func (t *Tensor) Bytes() []byte {
	return unsafe.Slice((*byte)(t.view(U8)), t.h.extent)
}

// Close frees the tensor. Do not close a tensor a live descriptor uses.
func (t *Tensor) Close() {
	t.h.destroy()
}

// ---------------------------------------------------------------------------

// borrowed holds what the C descriptor borrows: C copies of Go arrays and the
// tensors given to setters. Shared by a Desc and its plans; freed when the
// last of them is closed.
type borrowed struct {
	mu      sync.Mutex
	refs    int
	cmem    []unsafe.Pointer
	tensors map[string][]*Tensor
}

func (b *borrowed) acquire() { b.mu.Lock(); b.refs++; b.mu.Unlock() }

func (b *borrowed) release() {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.refs--; b.refs == 0 {
		for _, p := range b.cmem {
			C.free(p)
		}
		b.cmem = nil
		b.tensors = nil
	}
}

// Desc says what to compute (default: exact scaled-dot attention). Setters
// map 1:1 to attn_desc_set_*.
type Desc struct {
	ctx  *Context
	p    *C.attn_desc
	keep *borrowed
}

// NewDesc makes a descriptor with the defaults.
func NewDesc(ctx *Context) (*Desc, error) {
	var p *C.attn_desc
	st := C.attn_desc_create(ctx.p, &p)
	runtime.KeepAlive(ctx)
	if err := ctx.check(st, "attn_desc_create"); err != nil {
		return nil, err
	}
	d := &Desc{ctx: ctx, p: p, keep: &borrowed{refs: 1, tensors: map[string][]*Tensor{}}}
	runtime.SetFinalizer(d, (*Desc).Close)
	return d, nil
}

// Close destroys the descriptor. Plans made from it stay valid.
func (d *Desc) Close() {
	if d.p != nil {
		C.attn_desc_destroy(d.p)
		d.p = nil
		d.keep.release()
	}
}

func (d *Desc) done(st C.attn_status, fn string) error {
	runtime.KeepAlive(d)
	return d.ctx.check(st, fn)
}

// cArray copies a Go slice into C memory the descriptor keeps (NULL for empty).
func cArray[T int64 | float64](d *Desc, xs []T) (unsafe.Pointer, C.int64_t) {
	if len(xs) == 0 {
		return nil, 0
	}
	var zero T
	n := C.size_t(len(xs)) * C.size_t(unsafe.Sizeof(zero))
	p := C.malloc(n)
	C.memcpy(p, unsafe.Pointer(&xs[0]), n)
	d.keep.mu.Lock()
	d.keep.cmem = append(d.keep.cmem, p)
	d.keep.mu.Unlock()
	return p, C.int64_t(len(xs))
}

func (d *Desc) holdTensors(name string, ts ...*Tensor) {
	d.keep.mu.Lock()
	d.keep.tensors[name] = ts
	d.keep.mu.Unlock()
}

func tp(t *Tensor) *C.attn_tensor {
	if t == nil || t.h == nil {
		return nil
	}
	return t.h.p
}

func (d *Desc) SetVariant(v Variant) error {
	return d.done(C.attn_desc_set_variant(d.p, C.attn_variant(v)), "attn_desc_set_variant")
}
func (d *Desc) SetScore(s Score) error {
	return d.done(C.attn_desc_set_score(d.p, C.attn_score(s)), "attn_desc_set_score")
}
func (d *Desc) SetScale(scale float64) error {
	return d.done(C.attn_desc_set_scale(d.p, C.double(scale)), "attn_desc_set_scale")
}
func (d *Desc) SetCausal(c Causal) error {
	return d.done(C.attn_desc_set_causal(d.p, C.attn_causal(c)), "attn_desc_set_causal")
}

// SetWindow keeps keys i'-left ≤ j ≤ i'+right (WindowUnbounded: no limit).
func (d *Desc) SetWindow(left, right int64) error {
	return d.done(C.attn_desc_set_window(d.p, C.int64_t(left), C.int64_t(right)), "attn_desc_set_window")
}
func (d *Desc) SetKeyLengths(lengths []int64) error {
	p, n := cArray(d, lengths)
	return d.done(C.attn_desc_set_key_lengths(d.p, (*C.int64_t)(p), n), "attn_desc_set_key_lengths")
}
func (d *Desc) SetQueryLengths(lengths []int64) error {
	p, n := cArray(d, lengths)
	return d.done(C.attn_desc_set_query_lengths(d.p, (*C.int64_t)(p), n), "attn_desc_set_query_lengths")
}

// SetBoolMask: U8 tensor [B|1, H|1, S_q, S_k], non-zero = attend; nil clears.
func (d *Desc) SetBoolMask(mask *Tensor) error {
	d.holdTensors("bool_mask", mask)
	return d.done(C.attn_desc_set_bool_mask(d.p, tp(mask)), "attn_desc_set_bool_mask")
}
func (d *Desc) SetAdditiveMask(mask *Tensor) error {
	d.holdTensors("additive_mask", mask)
	return d.done(C.attn_desc_set_additive_mask(d.p, tp(mask)), "attn_desc_set_additive_mask")
}
func (d *Desc) SetAlibi(slopes []float64) error {
	p, n := cArray(d, slopes)
	return d.done(C.attn_desc_set_alibi(d.p, (*C.double)(p), n), "attn_desc_set_alibi")
}
func (d *Desc) SetSoftcap(c float64) error {
	return d.done(C.attn_desc_set_softcap(d.p, C.double(c)), "attn_desc_set_softcap")
}

// SetVarlen: a packed variable-length batch. Sequence s owns rows
// qOffsets[s]..qOffsets[s+1] of q and kOffsets' rows of k and v (nil: q's);
// plans then take batch 1 and the totals as S_q, S_k (BSHD(1, T, H, D) is the
// [T, H, D] layout). The offsets are copied; nil qOffsets clears.
func (d *Desc) SetVarlen(qOffsets, kOffsets []int64) error {
	if len(qOffsets) == 0 {
		return d.done(C.attn_desc_set_varlen(d.p, nil, nil, 0), "attn_desc_set_varlen")
	}
	if kOffsets != nil && len(kOffsets) != len(qOffsets) {
		return &Error{Status: StatusInvalidArg, Func: "attn_desc_set_varlen",
			Message: fmt.Sprintf("k_offsets: %d offsets, q_offsets has %d", len(kOffsets), len(qOffsets))}
	}
	qp, n := cArray(d, qOffsets)
	kp, _ := cArray(d, kOffsets)
	return d.done(C.attn_desc_set_varlen(d.p, (*C.int64_t)(qp), (*C.int64_t)(kp), n-1), "attn_desc_set_varlen")
}

// SetSinks: one sink logit per query head (an extra softmax logit with no value); nil clears.
func (d *Desc) SetSinks(logits []float64) error {
	p, n := cArray(d, logits)
	return d.done(C.attn_desc_set_sinks(d.p, (*C.double)(p), n), "attn_desc_set_sinks")
}

// SetKeyMass: the per-key attention mass output, a tensor [B, H, S_k] (per
// head) or [B, H_kv, S_k] (per KV group) written by every execute; nil clears.
func (d *Desc) SetKeyMass(mass *Tensor) error {
	d.holdTensors("key_mass", mass)
	return d.done(C.attn_desc_set_key_mass(d.p, tp(mass)), "attn_desc_set_key_mass")
}

func (d *Desc) SetGeneralWeight(w *Tensor) error {
	d.holdTensors("general_weight", w)
	return d.done(C.attn_desc_set_general_weight(d.p, tp(w)), "attn_desc_set_general_weight")
}
func (d *Desc) SetAdditiveWeights(wq, wk, bias, v *Tensor) error {
	d.holdTensors("additive_weights", wq, wk, bias, v)
	return d.done(C.attn_desc_set_additive_weights(d.p, tp(wq), tp(wk), tp(bias), tp(v)), "attn_desc_set_additive_weights")
}

// Long-sequence variants (approx.h).

func (d *Desc) SetSwin(gridH, gridW, window, shift int64) error {
	return d.done(C.attn_desc_set_swin(d.p, C.int64_t(gridH), C.int64_t(gridW), C.int64_t(window), C.int64_t(shift)), "attn_desc_set_swin")
}
func (d *Desc) SetSwinBias(table *Tensor) error {
	d.holdTensors("swin_bias", table)
	return d.done(C.attn_desc_set_swin_bias(d.p, tp(table)), "attn_desc_set_swin_bias")
}
func (d *Desc) SetGlobalTokens(indices []int64) error {
	p, n := cArray(d, indices)
	return d.done(C.attn_desc_set_global_tokens(d.p, (*C.int64_t)(p), n), "attn_desc_set_global_tokens")
}
func (d *Desc) SetBlockSize(block int64) error {
	return d.done(C.attn_desc_set_block_size(d.p, C.int64_t(block)), "attn_desc_set_block_size")
}
func (d *Desc) SetBigBird(windowBlocks, globalBlocks, randomBlocks int64, seed uint64) error {
	return d.done(C.attn_desc_set_bigbird(d.p, C.int64_t(windowBlocks), C.int64_t(globalBlocks), C.int64_t(randomBlocks), C.uint64_t(seed)), "attn_desc_set_bigbird")
}
func (d *Desc) SetBlockLayout(layout *Tensor) error {
	d.holdTensors("block_layout", layout)
	return d.done(C.attn_desc_set_block_layout(d.p, tp(layout)), "attn_desc_set_block_layout")
}
func (d *Desc) SetFeatures(numFeatures int64, seed uint64) error {
	return d.done(C.attn_desc_set_features(d.p, C.int64_t(numFeatures), C.uint64_t(seed)), "attn_desc_set_features")
}
func (d *Desc) SetLowrank(rank int64, seed uint64) error {
	return d.done(C.attn_desc_set_lowrank(d.p, C.int64_t(rank), C.uint64_t(seed)), "attn_desc_set_lowrank")
}
func (d *Desc) SetLowrankProj(e, f *Tensor) error {
	d.holdTensors("lowrank_proj", e, f)
	return d.done(C.attn_desc_set_lowrank_proj(d.p, tp(e), tp(f)), "attn_desc_set_lowrank_proj")
}

// ---------------------------------------------------------------------------

// Dims are attention dimensions; KVHeads and ValueDim default to Heads and
// HeadDim when 0. BSHD: q, k, v, out are [B, S, H, D] in memory.
type Dims struct {
	Batch, Heads, KVHeads, SeqQ, SeqK, HeadDim, ValueDim int64
	BSHD                                                 bool
}

func (d Dims) norm() Dims {
	if d.KVHeads == 0 {
		d.KVHeads = d.Heads
	}
	if d.ValueDim == 0 {
		d.ValueDim = d.HeadDim
	}
	return d
}

func (d Dims) layout(h, s, x int64) Layout {
	if d.BSHD {
		return BSHD(d.Batch, s, h, x)
	}
	return Contiguous(d.Batch, h, s, x)
}

func (d Dims) QLayout() Layout   { d = d.norm(); return d.layout(d.Heads, d.SeqQ, d.HeadDim) }
func (d Dims) KLayout() Layout   { d = d.norm(); return d.layout(d.KVHeads, d.SeqK, d.HeadDim) }
func (d Dims) VLayout() Layout   { d = d.norm(); return d.layout(d.KVHeads, d.SeqK, d.ValueDim) }
func (d Dims) OutLayout() Layout { d = d.norm(); return d.layout(d.Heads, d.SeqQ, d.ValueDim) }
func (d Dims) WeightsLayout() Layout {
	return Contiguous(d.Batch, d.Heads, d.SeqQ, d.SeqK)
}
func (d Dims) LseLayout() Layout { return Contiguous(d.Batch, d.Heads, d.SeqQ) }

func (d Dims) QLen() int       { d = d.norm(); return int(d.Batch * d.Heads * d.SeqQ * d.HeadDim) }
func (d Dims) KLen() int       { d = d.norm(); return int(d.Batch * d.KVHeads * d.SeqK * d.HeadDim) }
func (d Dims) VLen() int       { d = d.norm(); return int(d.Batch * d.KVHeads * d.SeqK * d.ValueDim) }
func (d Dims) OutLen() int     { d = d.norm(); return int(d.Batch * d.Heads * d.SeqQ * d.ValueDim) }
func (d Dims) WeightsLen() int { return int(d.Batch * d.Heads * d.SeqQ * d.SeqK) }
func (d Dims) LseLen() int     { return int(d.Batch * d.Heads * d.SeqQ) }

var operandNames = [6]string{"q", "k", "v", "out", "weights", "lse"}

// Plan is a descriptor bound to layouts and a dtype, with its workspace.
type Plan struct {
	desc    *Desc
	keep    *borrowed
	p       *C.attn_plan
	dtype   DType
	handles [6]*handle
}

// NewPlan makes a plan for dims' layouts, with optional weights/lse outputs.
func NewPlan(desc *Desc, dtype DType, dims Dims, weights, lse bool) (*Plan, error) {
	var w, l *Layout
	if weights {
		x := dims.WeightsLayout()
		w = &x
	}
	if lse {
		x := dims.LseLayout()
		l = &x
	}
	return NewPlanLayouts(desc, dtype, [4]Layout{dims.QLayout(), dims.KLayout(), dims.VLayout(), dims.OutLayout()}, w, l)
}

// NewPlanLayouts makes a plan for arbitrary layouts of q, k, v, out.
func NewPlanLayouts(desc *Desc, dtype DType, qkvo [4]Layout, weights, lse *Layout) (*Plan, error) {
	if desc.p == nil {
		return nil, errClosed("desc")
	}
	layouts := [6]*Layout{&qkvo[0], &qkvo[1], &qkvo[2], &qkvo[3], weights, lse}
	pl := &Plan{desc: desc, keep: desc.keep, dtype: dtype}
	var cp [6]*C.attn_tensor
	for i, l := range layouts {
		if l == nil {
			continue
		}
		h, err := wrap(desc.ctx, dtype, *l, C.attn_go_placeholder(), operandNames[i])
		if err != nil {
			pl.destroyHandles()
			return nil, err
		}
		pl.handles[i] = h
		cp[i] = h.p
	}
	st := C.attn_plan_create(desc.ctx.p, desc.p, cp[0], cp[1], cp[2], cp[3], cp[4], cp[5], &pl.p)
	runtime.KeepAlive(desc)
	if err := desc.ctx.check(st, "attn_plan_create"); err != nil {
		pl.destroyHandles()
		return nil, err
	}
	desc.keep.acquire()
	runtime.SetFinalizer(pl, (*Plan).Close)
	return pl, nil
}

func (pl *Plan) destroyHandles() {
	for i := range pl.handles {
		pl.handles[i].destroy()
		pl.handles[i] = nil
	}
}

// Close destroys the plan.
func (pl *Plan) Close() {
	if pl.p != nil {
		C.attn_plan_destroy(pl.p)
		pl.p = nil
		pl.destroyHandles()
		pl.keep.release()
	}
}

// WorkspaceSize is the bytes of workspace the plan holds.
func (pl *Plan) WorkspaceSize() int {
	defer runtime.KeepAlive(pl)
	return int(C.attn_plan_workspace_size(pl.p))
}

// Float is the element type attention computes in.
type Float interface{ ~float32 | ~float64 }

func dtypeOf[T Float]() DType {
	var z T
	if unsafe.Sizeof(z) == 4 {
		return F32
	}
	return F64
}

func ptrOf[T Float](xs []T) unsafe.Pointer {
	if len(xs) == 0 {
		return nil
	}
	return unsafe.Pointer(&xs[0])
}

// Execute runs the plan on Go slices (no copy; weights/lse nil exactly when
// the plan was made without them). Each slice must hold its layout.
func Execute[T Float](pl *Plan, q, k, v, out, weights, lse []T) error {
	if pl.p == nil {
		return errClosed("plan")
	}
	if dt := dtypeOf[T](); dt != pl.dtype {
		return &Error{Status: StatusDType, Func: "attn.Execute", Message: fmt.Sprintf("slices have dtype %d, the plan %d", dt, pl.dtype)}
	}
	slices := [6][]T{q, k, v, out, weights, lse}
	for i, h := range pl.handles {
		switch {
		case h == nil && slices[i] != nil:
			return &Error{Status: StatusMismatch, Func: "attn.Execute", Message: operandNames[i] + ": the plan was created without it; pass nil"}
		case h != nil && slices[i] == nil:
			return &Error{Status: StatusMismatch, Func: "attn.Execute", Message: operandNames[i] + ": the plan was created with it; pass it"}
		case h != nil && int64(len(slices[i])) < h.extent:
			return &Error{Status: StatusShape, Func: "attn.Execute", Message: fmt.Sprintf("%s: slice has %d elements, its layout needs %d", operandNames[i], len(slices[i]), h.extent)}
		}
	}
	hp := func(i int) *C.attn_tensor {
		if pl.handles[i] == nil {
			return nil
		}
		return pl.handles[i].p
	}
	st := C.attn_go_execute(pl.p, hp(0), hp(1), hp(2), hp(3), hp(4), hp(5),
		ptrOf(q), ptrOf(k), ptrOf(v), ptrOf(out), ptrOf(weights), ptrOf(lse))
	runtime.KeepAlive(pl)
	runtime.KeepAlive(slices)
	return pl.desc.ctx.check(st, "attn_plan_execute")
}

var trainNames = [9]string{"q", "k", "v", "out", "lse", "dout", "dq", "dk", "dv"}

// TrainPlan is a forward plan with an lse output and its backward
// (attn_backward_plan, backward.h): Forward computes out and lse, Backward
// the gradients dq, dk, dv of a loss from dout = ∂L/∂out (FlashAttention-2
// style, deterministic for any thread count, no allocation), and
// BackwardWith also the gradients of the descriptor's sinks, score weights
// (general, additive) and given Linformer projections (BackwardGrads).
// Gradients have the layouts of q, k, v; dout the layout of out. What the
// backward supports is listed in backward.h (variants exact, longformer,
// bigbird, block_sparse, linformer; every score); others give
// StatusUnsupported.
type TrainPlan struct {
	fwd     *Plan
	p       *C.attn_backward_plan
	handles [9]*handle
	// wgrads are the weight-gradient handles (wgradNames order), contiguous
	// in the shapes the descriptor's weights had at NewTrainPlan; nil where
	// it had none. Their data is set for one BackwardWith call at a time.
	wgrads [7]*handle
	heads  int64
}

// wgradNames are BackwardGrads' weight gradients, in the order of
// TrainPlan.wgrads and of attn_go_backward_grads' handles 9..15.
var wgradNames = [7]string{"GeneralWeight", "AdditiveWQ", "AdditiveWK", "AdditiveBias", "AdditiveV", "LowrankE", "LowrankF"}

// NewTrainPlan makes the forward and backward plans for dims' layouts.
func NewTrainPlan(desc *Desc, dtype DType, dims Dims) (*TrainPlan, error) {
	fwd, err := NewPlan(desc, dtype, dims, false, true)
	if err != nil {
		return nil, err
	}
	tp := &TrainPlan{fwd: fwd, heads: dims.Heads}
	layouts := [9]Layout{dims.QLayout(), dims.KLayout(), dims.VLayout(), dims.OutLayout(), dims.LseLayout(),
		dims.OutLayout(), dims.QLayout(), dims.KLayout(), dims.VLayout()}
	for i, l := range layouts {
		h, err := wrap(desc.ctx, dtype, l, C.attn_go_placeholder(), trainNames[i])
		if err != nil {
			tp.closeAll()
			return nil, err
		}
		tp.handles[i] = h
	}
	// The shapes of the weights the plan was made with (a later setter call
	// does not change the plan): SetAdditiveWeights keeps wq, wk, bias, v.
	desc.keep.mu.Lock()
	at := func(name string, i int) *Tensor {
		if ts := desc.keep.tensors[name]; i < len(ts) {
			return ts[i]
		}
		return nil
	}
	weights := [7]*Tensor{at("general_weight", 0), at("additive_weights", 0), at("additive_weights", 1),
		at("additive_weights", 2), at("additive_weights", 3), at("lowrank_proj", 0), at("lowrank_proj", 1)}
	desc.keep.mu.Unlock()
	for i, w := range weights {
		if w == nil || len(w.shape) == 0 {
			continue
		}
		h, err := wrap(desc.ctx, dtype, Contiguous(w.shape...), C.attn_go_placeholder(), wgradNames[i])
		if err != nil {
			tp.closeAll()
			return nil, err
		}
		tp.wgrads[i] = h
	}
	st := C.attn_backward_plan_create(fwd.p, tp.handles[5].p, tp.handles[6].p, tp.handles[7].p,
		tp.handles[8].p, nil, &tp.p)
	runtime.KeepAlive(fwd)
	if err := desc.ctx.check(st, "attn_backward_plan_create"); err != nil {
		tp.closeAll()
		return nil, err
	}
	runtime.SetFinalizer(tp, (*TrainPlan).Close)
	return tp, nil
}

func (tp *TrainPlan) closeAll() {
	if tp.p != nil {
		C.attn_backward_plan_destroy(tp.p) // before the forward plan it borrows
		tp.p = nil
	}
	for i := range tp.handles {
		tp.handles[i].destroy()
		tp.handles[i] = nil
	}
	for i := range tp.wgrads {
		tp.wgrads[i].destroy()
		tp.wgrads[i] = nil
	}
	if tp.fwd != nil {
		tp.fwd.Close()
		tp.fwd = nil
	}
}

// Close destroys the backward plan, then the forward plan.
func (tp *TrainPlan) Close() { tp.closeAll() }

// WorkspaceSize is the bytes of workspace the backward plan holds.
func (tp *TrainPlan) WorkspaceSize() int {
	defer runtime.KeepAlive(tp)
	return int(C.attn_backward_plan_workspace_size(tp.p))
}

// Forward computes out and lse for q, k, v.
func Forward[T Float](tp *TrainPlan, q, k, v, out, lse []T) error {
	if tp.p == nil {
		return errClosed("train plan")
	}
	return Execute(tp.fwd, q, k, v, out, nil, lse)
}

// Backward overwrites dq, dk, dv with the gradients, from the forward's
// inputs, its out and lse, and dout.
func Backward[T Float](tp *TrainPlan, q, k, v, out, lse, dout, dq, dk, dv []T) error {
	if tp.p == nil {
		return errClosed("train plan")
	}
	if dt := dtypeOf[T](); dt != tp.fwd.dtype {
		return &Error{Status: StatusDType, Func: "attn.Backward", Message: fmt.Sprintf("slices have dtype %d, the plan %d", dt, tp.fwd.dtype)}
	}
	slices := [9][]T{q, k, v, out, lse, dout, dq, dk, dv}
	for i, h := range tp.handles {
		if int64(len(slices[i])) < h.extent {
			return &Error{Status: StatusShape, Func: "attn.Backward", Message: fmt.Sprintf("%s: slice has %d elements, its layout needs %d", trainNames[i], len(slices[i]), h.extent)}
		}
	}
	hp := func(i int) *C.attn_tensor { return tp.handles[i].p }
	st := C.attn_go_backward_execute(tp.p, hp(0), hp(1), hp(2), hp(3), hp(4), hp(5), hp(6), hp(7), hp(8),
		ptrOf(q), ptrOf(k), ptrOf(v), ptrOf(out), ptrOf(lse), ptrOf(dout), ptrOf(dq), ptrOf(dk), ptrOf(dv))
	runtime.KeepAlive(tp)
	runtime.KeepAlive(slices)
	return tp.fwd.desc.ctx.check(st, "attn_backward_execute")
}

// BackwardGrads says where BackwardWith writes the gradients of the
// descriptor's own parameters (backward.h), besides dq, dk, dv: Go slices,
// nil when that gradient is not wanted. Gradients are overwritten, not
// accumulated into. The weight gradients are contiguous (row-major), with
// exactly the element count of the weight Tensor the descriptor had when
// the TrainPlan was made, in the plan's element type; Sinks is float64 for
// every plan. The slices are handed to the C backward plan for one call only
// (see BackwardWith).
type BackwardGrads[T Float] struct {
	// Sinks receives ∂L/∂sinks: H values (one per query head). The
	// descriptor must have sinks (SetSinks); a head whose sink is −inf gets 0.
	Sinks []float64
	// GeneralWeight receives ∂L/∂W of ScoreGeneral (SetGeneralWeight), [d_q, d_k].
	GeneralWeight []T
	// AdditiveWQ receives ∂L/∂w_q of ScoreAdditive (SetAdditiveWeights),
	// [A, d_q]. AdditiveWQ, AdditiveWK and AdditiveV are given together.
	AdditiveWQ []T
	// AdditiveWK receives ∂L/∂w_k of the additive score, [A, d_k].
	AdditiveWK []T
	// AdditiveBias receives ∂L/∂bias of the additive score, [A]: only when
	// the descriptor has a bias, and only with the other additive gradients.
	AdditiveBias []T
	// AdditiveV receives ∂L/∂v of the additive score, [A].
	AdditiveV []T
	// LowrankE receives ∂L/∂E of VariantLinformer with given projections
	// (SetLowrankProj; not seeded ones), E's shape. Given together with
	// LowrankF, and not together with the score-weight gradients (the C plan
	// has one set of weight-gradient slots).
	LowrankE []T
	// LowrankF receives ∂L/∂F of Linformer with given projections, F's shape.
	LowrankF []T
}

func (g *BackwardGrads[T]) weights() [7][]T {
	if g == nil {
		return [7][]T{}
	}
	return [7][]T{g.GeneralWeight, g.AdditiveWQ, g.AdditiveWK, g.AdditiveBias, g.AdditiveV, g.LowrankE, g.LowrankF}
}

// named is a slice's byte range with its name (overlap checks).
type named struct {
	name   string
	lo, hi uintptr
}

// wgradFuncs name the steps of attn_go_backward_grads (its *failed values).
var wgradFuncs = [6]string{"attn_tensor_set_data", "attn_backward_plan_set_sink_grad",
	"attn_backward_plan_set_general_grad", "attn_backward_plan_set_additive_grads",
	"attn_backward_plan_set_lowrank_grads", "attn_backward_execute"}

// BackwardWith is Backward that also overwrites the gradients asked for in
// grads (nil: none, as Backward).
//
// Every slice is checked before the C plan is touched: a weight gradient
// must have exactly its weight's element count and Sinks H values
// (StatusShape), a weight the descriptor did not have is StatusInvalidArg,
// and a gradient slice may not overlap another operand (StatusInvalidArg);
// the library then rejects gradients the forward cannot have (e.g. Sinks
// without SetSinks: StatusInvalidArg). On error nothing is written; the
// message is in the returned error (not in Context.LastError).
//
// cgo pointer rules: the gradient slices are Go memory. One C helper call
// points the plan's own tensor handles at them (and at the operands), calls
// attn_backward_plan_set_* right before the execute, then unsets them (NULL)
// and points the handles back at a static placeholder before returning, so
// the C plan holds no Go pointer (and no handle) after the call.
func BackwardWith[T Float](tp *TrainPlan, q, k, v, out, lse, dout, dq, dk, dv []T, grads *BackwardGrads[T]) error {
	const fn = "attn.BackwardWith"
	if tp.p == nil {
		return errClosed("train plan")
	}
	if dt := dtypeOf[T](); dt != tp.fwd.dtype {
		return &Error{Status: StatusDType, Func: fn, Message: fmt.Sprintf("slices have dtype %d, the plan %d", dt, tp.fwd.dtype)}
	}
	slices := [9][]T{q, k, v, out, lse, dout, dq, dk, dv}
	for i, h := range tp.handles {
		if int64(len(slices[i])) < h.extent {
			return &Error{Status: StatusShape, Func: fn, Message: fmt.Sprintf("%s: slice has %d elements, its layout needs %d", trainNames[i], len(slices[i]), h.extent)}
		}
	}
	gs := grads.weights()
	var sinks []float64
	if grads != nil {
		sinks = grads.Sinks
	}
	for i, g := range gs {
		switch h := tp.wgrads[i]; {
		case g == nil:
		case h == nil:
			what := [7]string{"a general weight (SetGeneralWeight)", "additive weights (SetAdditiveWeights)",
				"additive weights (SetAdditiveWeights)", "an additive bias (SetAdditiveWeights)",
				"additive weights (SetAdditiveWeights)", "given Linformer projections (SetLowrankProj)",
				"given Linformer projections (SetLowrankProj)"}[i]
			return &Error{Status: StatusInvalidArg, Func: fn, Message: fmt.Sprintf("grads.%s: the plan's descriptor has no %s", wgradNames[i], what)}
		case int64(len(g)) != h.extent:
			return &Error{Status: StatusShape, Func: fn, Message: fmt.Sprintf("grads.%s: slice has %d elements, the weight %v has %d",
				wgradNames[i], len(g), layoutOf(h.p).Shape, h.extent)}
		}
	}
	if sinks != nil && int64(len(sinks)) != tp.heads {
		return &Error{Status: StatusShape, Func: fn, Message: fmt.Sprintf("grads.Sinks: slice has %d elements, expected H = %d (one per query head)", len(sinks), tp.heads)}
	}
	score := gs[0] != nil || gs[1] != nil || gs[2] != nil || gs[3] != nil || gs[4] != nil
	if score && (gs[5] != nil || gs[6] != nil) {
		return &Error{Status: StatusInvalidArg, Func: fn, Message: "grads.LowrankE: Linformer and score-weight gradients cannot be computed in one call (the backward plan has one set of weight-gradient slots)"}
	}
	// The gradients may not overlap the operands or each other.
	var ops []named
	for i, x := range slices {
		lo, hi := span(x)
		ops = append(ops, named{trainNames[i], lo, hi})
	}
	lo, hi := span(sinks)
	outs := []named{{"grads.Sinks", lo, hi}}
	for i, g := range gs {
		lo, hi := span(g)
		outs = append(outs, named{"grads." + wgradNames[i], lo, hi})
	}
	for j, o := range outs {
		if o.lo == o.hi {
			continue
		}
		for _, x := range append(ops, outs[:j]...) {
			if o.lo < x.hi && x.lo < o.hi {
				return &Error{Status: StatusInvalidArg, Func: fn, Message: o.name + ": overlaps " + x.name}
			}
		}
	}
	var ts [16]*C.attn_tensor
	for i, h := range tp.handles {
		ts[i] = h.p
	}
	for i, g := range gs {
		if g != nil {
			ts[9+i] = tp.wgrads[i].p
		}
	}
	var dsinks *C.double
	if sinks != nil {
		dsinks = (*C.double)(unsafe.Pointer(&sinks[0]))
	}
	var failed C.int
	var msg [512]byte
	st := C.attn_go_backward_grads(tp.p, tp.fwd.desc.ctx.p, &ts[0], dsinks, C.int64_t(len(sinks)),
		ptrOf(q), ptrOf(k), ptrOf(v), ptrOf(out), ptrOf(lse), ptrOf(dout), ptrOf(dq), ptrOf(dk), ptrOf(dv),
		ptrOf(gs[0]), ptrOf(gs[1]), ptrOf(gs[2]), ptrOf(gs[3]), ptrOf(gs[4]), ptrOf(gs[5]), ptrOf(gs[6]),
		&failed, (*C.char)(unsafe.Pointer(&msg[0])), C.size_t(len(msg)))
	runtime.KeepAlive(tp)
	runtime.KeepAlive(slices)
	runtime.KeepAlive(gs)
	runtime.KeepAlive(sinks)
	if st != C.ATTN_OK {
		return &Error{Status: Status(st), Func: wgradFuncs[failed], Message: C.GoString((*C.char)(unsafe.Pointer(&msg[0])))}
	}
	return nil
}

// ExecuteTensors runs the plan on libattn-allocated tensors (weights/lse may be nil).
func (pl *Plan) ExecuteTensors(q, k, v, out, weights, lse *Tensor) error {
	if pl.p == nil {
		return errClosed("plan")
	}
	st := C.attn_plan_execute(pl.p, tp(q), tp(k), tp(v), tp(out), tp(weights), tp(lse))
	runtime.KeepAlive(pl)
	runtime.KeepAlive([]*Tensor{q, k, v, out, weights, lse})
	return pl.desc.ctx.check(st, "attn_plan_execute")
}

// BlockLayout: the block layout of a sparse plan, U8 [H, ⌈S_q/b⌉, ⌈S_k/b⌉] flattened.
func (pl *Plan) BlockLayout() ([]byte, error) {
	defer runtime.KeepAlive(pl)
	var size C.size_t
	st := C.attn_plan_block_layout(pl.p, nil, &size)
	if st != C.ATTN_OK && !(st == C.ATTN_ERR_INVALID_ARG && size > 0) {
		return nil, pl.desc.ctx.check(st, "attn_plan_block_layout")
	}
	buf := C.malloc(size + 1)
	defer C.free(buf)
	st = C.attn_plan_block_layout(pl.p, (*C.uint8_t)(buf), &size)
	if err := pl.desc.ctx.check(st, "attn_plan_block_layout"); err != nil {
		return nil, err
	}
	return C.GoBytes(buf, C.int(size)), nil
}

// RedrawFeatures redraws a Performer plan's random features from seed.
func (pl *Plan) RedrawFeatures(seed uint64) error {
	st := C.attn_plan_redraw_features(pl.p, C.uint64_t(seed))
	runtime.KeepAlive(pl)
	return pl.desc.ctx.check(st, "attn_plan_redraw_features")
}

// Attention is one-shot attention on Go slices in dims' layouts.
func Attention[T Float](desc *Desc, dims Dims, q, k, v, out []T) error {
	pl, err := NewPlan(desc, dtypeOf[T](), dims, false, false)
	if err != nil {
		return err
	}
	defer pl.Close()
	return Execute(pl, q, k, v, out, nil, nil)
}

// AttentionStats is Attention that also writes weights [B,H,S_q,S_k] and lse [B,H,S_q].
func AttentionStats[T Float](desc *Desc, dims Dims, q, k, v, out, weights, lse []T) error {
	pl, err := NewPlan(desc, dtypeOf[T](), dims, true, true)
	if err != nil {
		return err
	}
	defer pl.Close()
	return Execute(pl, q, k, v, out, weights, lse)
}

// Bfloat16 is one bfloat16 value (bits). Computed in float32.
type Bfloat16 uint16

// Float16 is one IEEE binary16 value (bits). Computed in float32.
type Float16 uint16

// Half is a 16-bit storage type of q, k, v (and out).
type Half interface{ Bfloat16 | Float16 }

// ToBfloat16 rounds x to bfloat16 (nearest even; NaN stays a quiet NaN).
func ToBfloat16(x float32) Bfloat16 {
	u := math.Float32bits(x)
	if u&0x7fffffff > 0x7f800000 {
		return Bfloat16(u>>16 | 0x40)
	}
	return Bfloat16((u + 0x7fff + (u>>16)&1) >> 16)
}

// Float32 is b exactly.
func (b Bfloat16) Float32() float32 { return math.Float32frombits(uint32(b) << 16) }

// ToFloat16 rounds x to binary16 (nearest even; overflow gives ±inf).
func ToFloat16(x float32) Float16 {
	u := math.Float32bits(x)
	sign := uint16(u>>16) & 0x8000
	a := u & 0x7fffffff
	switch {
	case a > 0x7f800000:
		return Float16(sign | 0x7e00 | uint16(a>>13)&0x3ff)
	case a >= 0x477ff000:
		return Float16(sign | 0x7c00)
	case a >= 0x38800000:
		r := a - 0x38000000
		r += 0xfff + (r>>13)&1
		return Float16(sign | uint16(r>>13))
	case a < 0x33000000:
		return Float16(sign)
	}
	e := a >> 23
	m := a&0x7fffff | 0x800000
	shift := 126 - e
	q := m >> shift
	rem, half := m&(1<<shift-1), uint32(1)<<(shift-1)
	if rem > half || (rem == half && q&1 == 1) {
		q++
	}
	return Float16(sign | uint16(q))
}

// Float32 is h exactly.
func (h Float16) Float32() float32 {
	sign := float32(1)
	if h&0x8000 != 0 {
		sign = -1
	}
	e, m := int(h>>10)&0x1f, float32(h&0x3ff)
	switch e {
	case 0:
		return sign * m * float32(math.Ldexp(1, -24))
	case 31:
		if m == 0 {
			return sign * float32(math.Inf(1))
		}
		return float32(math.NaN())
	}
	return sign * (1024 + m) * float32(math.Ldexp(1, e-25))
}

func halfDType[T Half]() DType {
	var z T
	if _, ok := any(z).(Bfloat16); ok {
		return BF16
	}
	return F16
}

func ptrOfAny[T any](xs []T) unsafe.Pointer {
	if len(xs) == 0 {
		return nil
	}
	return unsafe.Pointer(&xs[0])
}

// attentionHalf: one plan over q, k, v of dtype dt, out of odt, f32 lse.
func attentionHalf(desc *Desc, dims Dims, dt, odt DType, q, k, v, out unsafe.Pointer,
	lens [4]int, lse []float32) error {
	if desc.p == nil {
		return errClosed("desc")
	}
	layouts := [5]Layout{dims.QLayout(), dims.KLayout(), dims.VLayout(), dims.OutLayout(), dims.LseLayout()}
	dts := [5]DType{dt, dt, dt, odt, F32}
	var hs [5]*handle
	defer func() {
		for _, h := range hs {
			h.destroy()
		}
	}()
	var cp [6]*C.attn_tensor
	for i := 0; i < 5; i++ {
		if i == 4 && lse == nil {
			break
		}
		h, err := wrap(desc.ctx, dts[i], layouts[i], C.attn_go_placeholder(), operandNames[[5]int{0, 1, 2, 3, 5}[i]])
		if err != nil {
			return err
		}
		hs[i] = h
		n := int64(len(lse))
		if i < 4 {
			n = int64(lens[i])
		}
		if n < h.extent {
			return &Error{Status: StatusShape, Func: "attn.AttentionHalf", Message: fmt.Sprintf("%s: slice has %d elements, its layout needs %d", operandNames[[5]int{0, 1, 2, 3, 5}[i]], n, h.extent)}
		}
		cp[[5]int{0, 1, 2, 3, 5}[i]] = h.p
	}
	var p *C.attn_plan
	st := C.attn_plan_create(desc.ctx.p, desc.p, cp[0], cp[1], cp[2], cp[3], nil, cp[5], &p)
	if err := desc.ctx.check(st, "attn_plan_create"); err != nil {
		return err
	}
	defer C.attn_plan_destroy(p)
	st = C.attn_go_execute(p, cp[0], cp[1], cp[2], cp[3], nil, cp[5], q, k, v, out, nil, ptrOfAny(lse))
	runtime.KeepAlive(desc)
	return desc.ctx.check(st, "attn_plan_execute")
}

// AttentionHalf is one-shot attention on 16-bit q, k, v (Bfloat16 or
// Float16) into out of the same type, in dims' layouts; lse (float32
// [B,H,S_q]) may be nil. Accumulation is float32 (bounds in attn.h).
func AttentionHalf[T Half](desc *Desc, dims Dims, q, k, v, out []T, lse []float32) error {
	dt := halfDType[T]()
	err := attentionHalf(desc, dims, dt, dt, ptrOfAny(q), ptrOfAny(k), ptrOfAny(v), ptrOfAny(out),
		[4]int{len(q), len(k), len(v), len(out)}, lse)
	runtime.KeepAlive([][]T{q, k, v, out})
	runtime.KeepAlive(lse)
	return err
}

// AttentionHalfF32 is AttentionHalf writing a float32 out.
func AttentionHalfF32[T Half](desc *Desc, dims Dims, q, k, v []T, out, lse []float32) error {
	dt := halfDType[T]()
	err := attentionHalf(desc, dims, dt, F32, ptrOfAny(q), ptrOfAny(k), ptrOfAny(v), ptrOfAny(out),
		[4]int{len(q), len(k), len(v), len(out)}, lse)
	runtime.KeepAlive([][]T{q, k, v})
	runtime.KeepAlive(out)
	runtime.KeepAlive(lse)
	return err
}

// ---------------------------------------------------------------------------
// Multi-head attention (heads.h)

// layoutOf reads a C tensor's shape and strides.
func layoutOf(t *C.attn_tensor) Layout {
	rank := int(C.attn_tensor_rank(t))
	l := Layout{Shape: make([]int64, rank), Strides: make([]int64, rank)}
	for a := 0; a < rank; a++ {
		l.Shape[a] = int64(C.attn_tensor_dim(t, C.int32_t(a)))
		l.Strides[a] = int64(C.attn_tensor_stride(t, C.int32_t(a)))
	}
	return l
}

func viewCall(ctx *Context, dtype DType, x Layout, fn string, call func(*C.attn_tensor, **C.attn_tensor) C.attn_status) (Layout, error) {
	h, err := wrap(ctx, dtype, x, C.attn_go_placeholder(), "x")
	if err != nil {
		return Layout{}, err
	}
	defer h.destroy()
	var v *C.attn_tensor
	st := call(h.p, &v)
	runtime.KeepAlive(ctx)
	if err := ctx.check(st, fn); err != nil {
		return Layout{}, err
	}
	defer C.attn_tensor_destroy(v)
	return layoutOf(v), nil
}

// HeadsSplitView (attn_heads_split_view) is the layout under which memory
// laid out as x ([B, S, H·D], last dim contiguous) reads as [B, H, S, D]: the
// same slice or Tensor, no copy. Use it as a q/k/v layout in NewPlanLayouts.
func HeadsSplitView(ctx *Context, dtype DType, x Layout, numHeads int64) (Layout, error) {
	return viewCall(ctx, dtype, x, "attn_heads_split_view", func(t *C.attn_tensor, out **C.attn_tensor) C.attn_status {
		return C.attn_heads_split_view(ctx.p, t, C.int64_t(numHeads), out)
	})
}

// HeadsMergeView (attn_heads_merge_view) is the layout under which x
// ([B, H, S, D], heads of a row side by side) reads as [B, S, H·D];
// StatusLayout otherwise (copy with HeadsMerge).
func HeadsMergeView(ctx *Context, dtype DType, x Layout) (Layout, error) {
	return viewCall(ctx, dtype, x, "attn_heads_merge_view", func(t *C.attn_tensor, out **C.attn_tensor) C.attn_status {
		return C.attn_heads_merge_view(ctx.p, t, out)
	})
}

func headsCopy[T Float](merge int, fn string, ctx *Context, x []T, xl Layout, out []T, ol Layout) error {
	dt := dtypeOf[T]()
	hx, err := wrap(ctx, dt, xl, C.attn_go_placeholder(), "x")
	if err != nil {
		return err
	}
	defer hx.destroy()
	ho, err := wrap(ctx, dt, ol, C.attn_go_placeholder(), "out")
	if err != nil {
		return err
	}
	defer ho.destroy()
	for _, c := range []struct {
		name string
		n    int
		h    *handle
	}{{"x", len(x), hx}, {"out", len(out), ho}} {
		if int64(c.n) < c.h.extent {
			return &Error{Status: StatusShape, Func: fn, Message: fmt.Sprintf("%s: slice has %d elements, its layout needs %d", c.name, c.n, c.h.extent)}
		}
	}
	st := C.attn_go_heads_copy(C.int(merge), ctx.p, hx.p, ho.p, ptrOf(x), ptrOf(out))
	runtime.KeepAlive(ctx)
	runtime.KeepAlive(x)
	runtime.KeepAlive(out)
	return ctx.check(st, fn)
}

// HeadsSplit (attn_heads_split) copies x [B, S, H·D] into out [B, H, S, D] (any strides).
func HeadsSplit[T Float](ctx *Context, x []T, xl Layout, out []T, ol Layout) error {
	return headsCopy(0, "attn_heads_split", ctx, x, xl, out, ol)
}

// HeadsMerge (attn_heads_merge) copies x [B, H, S, D] into out [B, S, H·D] (any strides).
func HeadsMerge[T Float](ctx *Context, x []T, xl Layout, out []T, ol Layout) error {
	return headsCopy(1, "attn_heads_merge", ctx, x, xl, out, ol)
}

// MergeStates (attn_merge_states) merges attention results of the same
// queries over two disjoint key sets, (outA, lseA) and (outB, lseB), into the
// union's (out, lse). The outs share layout ol ([B, H, S, d_v], any strides)
// and the lses ll ([B, H, S]). out may be outA or outB and lse lseA or lseB
// (in place). A side with lse -Inf kept no key (its out is not read); both
// -Inf give 0 and -Inf.
func MergeStates[T Float](ctx *Context, outA, lseA, outB, lseB, out, lse []T, ol, ll Layout) error {
	const fn = "attn_merge_states"
	dt := dtypeOf[T]()
	names := [6]string{"out_a", "lse_a", "out_b", "lse_b", "out", "lse"}
	slices := [6][]T{outA, lseA, outB, lseB, out, lse}
	var hs [6]*handle
	for i := range hs {
		l := ol
		if i%2 == 1 {
			l = ll
		}
		h, err := wrap(ctx, dt, l, C.attn_go_placeholder(), names[i])
		if err != nil {
			return err
		}
		defer h.destroy()
		if int64(len(slices[i])) < h.extent {
			return &Error{Status: StatusShape, Func: fn, Message: fmt.Sprintf("%s: slice has %d elements, its layout needs %d", names[i], len(slices[i]), h.extent)}
		}
		hs[i] = h
	}
	st := C.attn_go_merge(ctx.p, hs[0].p, hs[1].p, hs[2].p, hs[3].p, hs[4].p, hs[5].p,
		ptrOf(outA), ptrOf(lseA), ptrOf(outB), ptrOf(lseB), ptrOf(out), ptrOf(lse))
	runtime.KeepAlive(ctx)
	runtime.KeepAlive(slices)
	return ctx.check(st, fn)
}

// MhaConfig is attn_mha_config. Start from NewMhaConfig (the library's defaults).
type MhaConfig struct {
	EmbedDim, NumHeads int64
	NumKVHeads         int64 // 0 = NumHeads; 1 = multi-query
	KDim, VDim         int64 // 0 = EmbedDim
	Bias               bool  // in_proj_bias and out_proj_bias exist (default true)
	AddBiasKV          bool
	AddZeroAttn        bool
	BatchFirst         bool // [B, S, ·] inputs/outputs; false: [S, B, ·] (PyTorch's default)
	DType              DType
}

// NewMhaConfig is attn_mha_config_init's defaults with E and H set.
func NewMhaConfig(embedDim, numHeads int64) MhaConfig {
	var c C.attn_mha_config
	C.attn_mha_config_init(&c)
	return MhaConfig{EmbedDim: embedDim, NumHeads: numHeads, NumKVHeads: int64(c.num_kv_heads),
		KDim: int64(c.kdim), VDim: int64(c.vdim), Bias: c.bias != 0, AddBiasKV: c.add_bias_kv != 0,
		AddZeroAttn: c.add_zero_attn != 0, BatchFirst: c.batch_first != 0, DType: DType(c.dtype)}
}

// AttendedKeys is S' = seqK plus the appended bias/zero keys.
func (c MhaConfig) AttendedKeys(seqK int64) int64 {
	if c.AddBiasKV {
		seqK++
	}
	if c.AddZeroAttn {
		seqK++
	}
	return seqK
}

func b32(b bool) C.int32_t {
	if b {
		return 1
	}
	return 0
}

// MhaWeights are the layer's parameters, PyTorch names and layouts
// ([out_features, in_features]), as Tensors of the layer's dtype (C memory:
// the layer borrows them for its life; do not Close them before the layer).
// Unused ones stay nil.
type MhaWeights struct {
	InProjWeight, QProjWeight, KProjWeight, VProjWeight  *Tensor
	InProjBias, OutProjWeight, OutProjBias, BiasK, BiasV *Tensor
}

// Mha is attn_mha: nn.MultiheadAttention (dropout 0) with grouped K/V heads.
type Mha struct {
	ctx     *Context
	p       *C.attn_mha
	cfg     MhaConfig
	weights MhaWeights // keeps the borrowed tensors reachable
	mu      sync.Mutex
	refs    int  // the Mha itself + open plans: C's layer outlives its plans
	closed  bool // Close was called (its reference is gone)
}

// NewMha makes a layer.
func NewMha(ctx *Context, cfg MhaConfig, w MhaWeights) (*Mha, error) {
	var c C.attn_mha_config
	C.attn_mha_config_init(&c)
	c.embed_dim, c.num_heads, c.num_kv_heads = C.int64_t(cfg.EmbedDim), C.int64_t(cfg.NumHeads), C.int64_t(cfg.NumKVHeads)
	c.kdim, c.vdim = C.int64_t(cfg.KDim), C.int64_t(cfg.VDim)
	c.bias, c.add_bias_kv, c.add_zero_attn, c.batch_first = b32(cfg.Bias), b32(cfg.AddBiasKV), b32(cfg.AddZeroAttn), b32(cfg.BatchFirst)
	c.dtype = C.attn_dtype(cfg.DType)
	var cw C.attn_mha_weights
	C.attn_mha_weights_init(&cw)
	// One row per weight: the Tensor and the C field it goes to.
	for _, row := range []struct {
		t     *Tensor
		field **C.attn_tensor
	}{
		{w.InProjWeight, &cw.in_proj_weight}, {w.QProjWeight, &cw.q_proj_weight},
		{w.KProjWeight, &cw.k_proj_weight}, {w.VProjWeight, &cw.v_proj_weight},
		{w.InProjBias, &cw.in_proj_bias}, {w.OutProjWeight, &cw.out_proj_weight},
		{w.OutProjBias, &cw.out_proj_bias}, {w.BiasK, &cw.bias_k}, {w.BiasV, &cw.bias_v},
	} {
		*row.field = tp(row.t)
	}
	var p *C.attn_mha
	st := C.attn_mha_create(ctx.p, &c, &cw, &p)
	runtime.KeepAlive(ctx)
	runtime.KeepAlive(w)
	if err := ctx.check(st, "attn_mha_create"); err != nil {
		return nil, err
	}
	m := &Mha{ctx: ctx, p: p, cfg: cfg, weights: w, refs: 1}
	runtime.SetFinalizer(m, (*Mha).Close)
	return m, nil
}

// Config is the layer's configuration.
func (m *Mha) Config() MhaConfig { return m.cfg }

func (m *Mha) release() {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.refs--; m.refs == 0 {
		C.attn_mha_destroy(m.p)
		m.p = nil
	}
}

// Close releases the layer (freed once its plans are closed too).
func (m *Mha) Close() {
	m.mu.Lock()
	already := m.closed
	m.closed = true
	m.mu.Unlock()
	if !already {
		runtime.SetFinalizer(m, nil)
		m.release()
	}
}

// SeqLayout is a contiguous [B, S, F] (BatchFirst) or [S, B, F] layout.
func (m *Mha) SeqLayout(batch, seq, features int64) Layout {
	if m.cfg.BatchFirst {
		return Contiguous(batch, seq, features)
	}
	return Contiguous(seq, batch, features)
}

// MhaDims: batch, query length L and key length S (before appended keys).
type MhaDims struct{ Batch, SeqQ, SeqK int64 }

// NeedWeights selects the weights an MhaPlan writes (PyTorch's need_weights /
// average_attn_weights).
type NeedWeights int

const (
	WeightsNone     NeedWeights = iota // no weights output
	WeightsAveraged                    // [B, L, S'] averaged over heads
	WeightsPerHead                     // [B, H, L, S']
)

var mhaNames = [6]string{"query", "key", "value", "key_padding_mask", "out", "weights"}

// MhaPlan is attn_mha_plan: the layer bound to layouts, with its workspace.
type MhaPlan struct {
	mha     *Mha
	keep    *borrowed // the descriptor's borrowed arrays/tensors, or nil
	p       *C.attn_mha_plan
	handles [6]*handle
}

// NewMhaPlan plans the layer for contiguous inputs of these sizes. desc may
// be nil (plain scaled-dot attention). keyPaddingMask: a U8 [B, S] mask will
// be passed (NON-ZERO = ATTEND, the opposite of PyTorch).
func NewMhaPlan(m *Mha, desc *Desc, dims MhaDims, keyPaddingMask bool, need NeedWeights) (*MhaPlan, error) {
	e, kd, vd := m.cfg.EmbedDim, m.cfg.KDim, m.cfg.VDim
	if kd == 0 {
		kd = e
	}
	if vd == 0 {
		vd = e
	}
	q := m.SeqLayout(dims.Batch, dims.SeqQ, e)
	var kpm, w *Layout
	if keyPaddingMask {
		l := Contiguous(dims.Batch, dims.SeqK)
		kpm = &l
	}
	sx := m.cfg.AttendedKeys(dims.SeqK)
	switch need {
	case WeightsAveraged:
		l := Contiguous(dims.Batch, dims.SeqQ, sx)
		w = &l
	case WeightsPerHead:
		l := Contiguous(dims.Batch, m.cfg.NumHeads, dims.SeqQ, sx)
		w = &l
	}
	return NewMhaPlanLayouts(m, desc, [4]Layout{q, m.SeqLayout(dims.Batch, dims.SeqK, kd), m.SeqLayout(dims.Batch, dims.SeqK, vd), q}, kpm, w)
}

// planMade counts a new plan of the layer (it keeps the layer alive) and
// holds what its descriptor borrows; planGone undoes both.
func (m *Mha) planMade(keep *borrowed) {
	m.mu.Lock()
	m.refs++
	m.mu.Unlock()
	if keep != nil {
		keep.acquire()
	}
}

func (m *Mha) planGone(keep *borrowed) {
	if keep != nil {
		keep.release()
	}
	m.release()
}

// mhaDesc is the C descriptor of desc (nil: none) and what it borrows.
func mhaDesc(desc *Desc) (*C.attn_desc, *borrowed, error) {
	if desc == nil {
		return nil, nil, nil
	}
	if desc.p == nil {
		return nil, nil, errClosed("desc")
	}
	return desc.p, desc.keep, nil
}

// wrapOperands makes placeholder tensors of the layer's dtype for the
// non-nil layouts (index 3, the key padding mask, is U8) into handles.
func (m *Mha) wrapOperands(layouts []*Layout, names []string, handles []*handle) error {
	for i, l := range layouts {
		if l == nil {
			continue
		}
		dt := m.cfg.DType
		if i == 3 {
			dt = U8
		}
		h, err := wrap(m.ctx, dt, *l, C.attn_go_placeholder(), names[i])
		if err != nil {
			return err
		}
		handles[i] = h
	}
	return nil
}

// NewMhaPlanLayouts plans for any layouts of query, key, value, out (rank 3,
// last dim contiguous), the key padding mask (U8 [B, S]) and weights.
func NewMhaPlanLayouts(m *Mha, desc *Desc, qkvo [4]Layout, keyPaddingMask, weights *Layout) (*MhaPlan, error) {
	if m.p == nil || m.closed {
		return nil, errClosed("mha")
	}
	pl := &MhaPlan{mha: m}
	dp, keep, err := mhaDesc(desc)
	if err != nil {
		return nil, err
	}
	pl.keep = keep
	layouts := [6]*Layout{&qkvo[0], &qkvo[1], &qkvo[2], keyPaddingMask, &qkvo[3], weights}
	if err := m.wrapOperands(layouts[:], mhaNames[:], pl.handles[:]); err != nil {
		pl.destroyHandles()
		return nil, err
	}
	var cp [6]*C.attn_tensor
	for i, h := range pl.handles {
		if h != nil {
			cp[i] = h.p
		}
	}
	st := C.attn_mha_plan_create(m.p, dp, cp[0], cp[1], cp[2], cp[3], cp[4], cp[5], &pl.p)
	runtime.KeepAlive(m)
	runtime.KeepAlive(desc)
	if err := m.ctx.check(st, "attn_mha_plan_create"); err != nil {
		pl.destroyHandles()
		return nil, err
	}
	m.planMade(pl.keep)
	runtime.SetFinalizer(pl, (*MhaPlan).Close)
	return pl, nil
}

func (pl *MhaPlan) destroyHandles() {
	for i := range pl.handles {
		pl.handles[i].destroy()
		pl.handles[i] = nil
	}
}

// Close destroys the plan.
func (pl *MhaPlan) Close() {
	if pl.p != nil {
		C.attn_mha_plan_destroy(pl.p)
		pl.p = nil
		pl.destroyHandles()
		pl.mha.planGone(pl.keep)
	}
}

// WorkspaceSize is the bytes of workspace the plan holds.
func (pl *MhaPlan) WorkspaceSize() int {
	defer runtime.KeepAlive(pl)
	return int(C.attn_mha_plan_workspace_size(pl.p))
}

// ExecuteMha runs the plan on Go slices (no copy). Self-attention: pass the
// same slice as query, key and value. keyPaddingMask (NON-ZERO = ATTEND) and
// weights are nil exactly when the plan was made without them.
func ExecuteMha[T Float](pl *MhaPlan, query, key, value []T, keyPaddingMask []byte, out, weights []T) error {
	if pl.p == nil {
		return errClosed("mha plan")
	}
	if dt := dtypeOf[T](); dt != pl.mha.cfg.DType {
		return &Error{Status: StatusDType, Func: "attn.ExecuteMha", Message: fmt.Sprintf("slices have dtype %d, the layer %d", dt, pl.mha.cfg.DType)}
	}
	lens := [6]int{len(query), len(key), len(value), len(keyPaddingMask), len(out), len(weights)}
	given := [6]bool{query != nil, key != nil, value != nil, keyPaddingMask != nil, out != nil, weights != nil}
	for i, h := range pl.handles {
		switch {
		case h == nil && given[i]:
			return &Error{Status: StatusMismatch, Func: "attn.ExecuteMha", Message: mhaNames[i] + ": the plan was created without it; pass nil"}
		case h != nil && !given[i]:
			return &Error{Status: StatusMismatch, Func: "attn.ExecuteMha", Message: mhaNames[i] + ": the plan was created with it; pass it"}
		case h != nil && int64(lens[i]) < h.extent:
			return &Error{Status: StatusShape, Func: "attn.ExecuteMha", Message: fmt.Sprintf("%s: slice has %d elements, its layout needs %d", mhaNames[i], lens[i], h.extent)}
		}
	}
	hp := func(i int) *C.attn_tensor {
		if pl.handles[i] == nil {
			return nil
		}
		return pl.handles[i].p
	}
	var mp unsafe.Pointer
	if len(keyPaddingMask) > 0 {
		mp = unsafe.Pointer(&keyPaddingMask[0])
	}
	st := C.attn_go_mha_execute(pl.p, hp(0), hp(1), hp(2), hp(3), hp(4), hp(5),
		ptrOf(query), ptrOf(key), ptrOf(value), mp, ptrOf(out), ptrOf(weights))
	runtime.KeepAlive(pl)
	runtime.KeepAlive(query)
	runtime.KeepAlive(key)
	runtime.KeepAlive(value)
	runtime.KeepAlive(keyPaddingMask)
	runtime.KeepAlive(out)
	runtime.KeepAlive(weights)
	return pl.mha.ctx.check(st, "attn_mha_plan_execute")
}

// MhaForward is a one-shot forward like nn.MultiheadAttention's: weights
// (nil for none) gets the probabilities averaged over heads [B, L, S'], or
// per head [B, H, L, S'] when perHead.
func MhaForward[T Float](m *Mha, desc *Desc, dims MhaDims, query, key, value []T, keyPaddingMask []byte, out, weights []T, perHead bool) error {
	need := WeightsNone
	if weights != nil {
		need = WeightsAveraged
		if perHead {
			need = WeightsPerHead
		}
	}
	pl, err := NewMhaPlan(m, desc, dims, keyPaddingMask != nil, need)
	if err != nil {
		return err
	}
	defer pl.Close()
	return ExecuteMha(pl, query, key, value, keyPaddingMask, out, weights)
}

// ---------------------------------------------------------------------------
// Training the multi-head layer (heads.h: attn_mha_backward_plan)

// mhaParams are the parameters' names (PyTorch's), in attn_mha_weights /
// attn_mha_grads order.
var mhaParams = [9]string{"in_proj_weight", "q_proj_weight", "k_proj_weight", "v_proj_weight",
	"in_proj_bias", "out_proj_weight", "out_proj_bias", "bias_k", "bias_v"}

// paramShapes are the PyTorch shapes of the nine parameters (mhaParams order).
func (c MhaConfig) paramShapes() [9][]int64 {
	e, hkv, kd, vd := c.EmbedDim, c.NumKVHeads, c.KDim, c.VDim
	if hkv == 0 {
		hkv = c.NumHeads
	}
	if kd == 0 {
		kd = e
	}
	if vd == 0 {
		vd = e
	}
	ekv := int64(0)
	if c.NumHeads > 0 {
		ekv = hkv * (e / c.NumHeads)
	}
	return [9][]int64{{e + 2*ekv, e}, {e, e}, {ekv, kd}, {ekv, vd}, {e + 2*ekv}, {e, e}, {e}, {1, 1, ekv}, {1, 1, ekv}}
}

// MhaGrads says where BackwardMha writes the parameter gradients: Go slices
// with the names of MhaWeights, each holding exactly its parameter's
// elements (contiguous, PyTorch's layout), or nil when that gradient is not
// wanted. Gradients are overwritten, not accumulated into. Give only
// parameters the layer has (InProjWeight for a packed layer, Q/K/VProjWeight
// for a separate one, BiasK/BiasV with AddBiasKV): others are
// StatusInvalidArg from the library.
type MhaGrads[T Float] struct {
	InProjWeight  []T // [E + 2·E_kv, E]
	QProjWeight   []T // [E, E]
	KProjWeight   []T // [E_kv, kdim]
	VProjWeight   []T // [E_kv, vdim]
	InProjBias    []T // [E + 2·E_kv]
	OutProjWeight []T // [E, E]
	OutProjBias   []T // [E]
	BiasK         []T // [1, 1, E_kv]
	BiasV         []T // [1, 1, E_kv]
}

func (g *MhaGrads[T]) slices() [9][]T {
	if g == nil {
		return [9][]T{}
	}
	return [9][]T{g.InProjWeight, g.QProjWeight, g.KProjWeight, g.VProjWeight, g.InProjBias,
		g.OutProjWeight, g.OutProjBias, g.BiasK, g.BiasV}
}

var mhaTrainNames = [9]string{"query", "key", "value", "key_padding_mask", "out", "dout", "dquery", "dkey", "dvalue"}

// MhaTrainPlan is attn_mha_backward_plan: training steps of an F32/F64 Mha
// layer for fixed shapes. A step is ForwardMha (the layer's output, bitwise
// what ExecuteMha writes, with the activations kept in the plan's own saved
// buffer) then BackwardMha on the same inputs with dout = ∂L/∂out: the input
// gradients and the parameter gradients of MhaGrads. Results are bitwise
// identical for any thread count; neither call allocates. The weights'
// Tensors must hold the same values for both calls.
type MhaTrainPlan struct {
	mha       *Mha
	keep      *borrowed // the descriptor's borrowed arrays/tensors, or nil
	p         *C.attn_mha_backward_plan
	handles   [9]*handle // mhaTrainNames
	grads     [9]*handle // mhaParams, contiguous parameter shapes
	saved     []byte     // the activations of one step (Go memory, passed per call)
	forwarded bool       // saved holds a successful ForwardMha's activations
}

// NewMhaTrainPlan plans training steps for contiguous inputs of these sizes,
// laid out as for NewMhaPlan. desc may be nil (plain scaled-dot attention);
// options the attention backward does not support, and BF16/F16 layers,
// give StatusUnsupported. keyPaddingMask: a U8 [B, S] mask will be passed
// (NON-ZERO = ATTEND, the opposite of PyTorch).
func NewMhaTrainPlan(m *Mha, desc *Desc, dims MhaDims, keyPaddingMask bool) (*MhaTrainPlan, error) {
	e, kd, vd := m.cfg.EmbedDim, m.cfg.KDim, m.cfg.VDim
	if kd == 0 {
		kd = e
	}
	if vd == 0 {
		vd = e
	}
	q := m.SeqLayout(dims.Batch, dims.SeqQ, e)
	var kpm *Layout
	if keyPaddingMask {
		l := Contiguous(dims.Batch, dims.SeqK)
		kpm = &l
	}
	return NewMhaTrainPlanLayouts(m, desc, [4]Layout{q, m.SeqLayout(dims.Batch, dims.SeqK, kd), m.SeqLayout(dims.Batch, dims.SeqK, vd), q}, kpm)
}

// NewMhaTrainPlanLayouts plans training steps for any layouts of query,
// key, value, out (rank 3, last dim contiguous) and the key padding mask
// (U8 [B, S]). dquery, dkey, dvalue take the layouts of query, key, value;
// dout the layout of out.
func NewMhaTrainPlanLayouts(m *Mha, desc *Desc, qkvo [4]Layout, keyPaddingMask *Layout) (*MhaTrainPlan, error) {
	if m.p == nil || m.closed {
		return nil, errClosed("mha")
	}
	pl := &MhaTrainPlan{mha: m}
	dp, keep, err := mhaDesc(desc)
	if err != nil {
		return nil, err
	}
	pl.keep = keep
	layouts := [9]*Layout{&qkvo[0], &qkvo[1], &qkvo[2], keyPaddingMask, &qkvo[3], &qkvo[3], &qkvo[0], &qkvo[1], &qkvo[2]}
	if err := m.wrapOperands(layouts[:], mhaTrainNames[:], pl.handles[:]); err != nil {
		pl.destroyHandles()
		return nil, err
	}
	for i, shape := range m.cfg.paramShapes() {
		h, err := wrap(m.ctx, m.cfg.DType, Contiguous(shape...), C.attn_go_placeholder(), mhaParams[i])
		if err != nil {
			pl.destroyHandles()
			return nil, err
		}
		pl.grads[i] = h
	}
	hp := func(i int) *C.attn_tensor {
		if pl.handles[i] == nil {
			return nil
		}
		return pl.handles[i].p
	}
	st := C.attn_mha_backward_plan_create(m.p, dp, hp(0), hp(1), hp(2), hp(3), hp(4), &pl.p)
	runtime.KeepAlive(m)
	runtime.KeepAlive(desc)
	if err := m.ctx.check(st, "attn_mha_backward_plan_create"); err != nil {
		pl.destroyHandles()
		return nil, err
	}
	pl.saved = make([]byte, int(C.attn_mha_backward_saved_size(pl.p)))
	m.planMade(pl.keep)
	runtime.SetFinalizer(pl, (*MhaTrainPlan).Close)
	return pl, nil
}

func (pl *MhaTrainPlan) destroyHandles() {
	for i := range pl.handles {
		pl.handles[i].destroy()
		pl.handles[i] = nil
	}
	for i := range pl.grads {
		pl.grads[i].destroy()
		pl.grads[i] = nil
	}
}

// Close destroys the plan (the layer is freed with its last plan).
func (pl *MhaTrainPlan) Close() {
	if pl.p != nil {
		C.attn_mha_backward_plan_destroy(pl.p)
		pl.p = nil
		pl.destroyHandles()
		pl.saved = nil
		pl.mha.planGone(pl.keep)
	}
}

// WorkspaceSize is the bytes of workspace the plan holds (its attention plans' included).
func (pl *MhaTrainPlan) WorkspaceSize() int {
	defer runtime.KeepAlive(pl)
	return int(C.attn_mha_backward_plan_workspace_size(pl.p))
}

// SavedSize is the bytes of activations one step keeps (the plan's own buffer).
func (pl *MhaTrainPlan) SavedSize() int { return len(pl.saved) }

func (pl *MhaTrainPlan) handlePtrs(at []int) [17]*C.attn_tensor {
	var ts [17]*C.attn_tensor
	for j, i := range at {
		if pl.handles[i] != nil {
			ts[j] = pl.handles[i].p
		}
	}
	return ts
}

// checkOperands: each slice present exactly when the plan has that operand
// (optional ones may be nil) and long enough for its layout.
func (pl *MhaTrainPlan) checkOperands(fn string, at []int, lens []int, given []bool, optional []bool) error {
	for j, i := range at {
		h := pl.handles[i]
		switch {
		case h == nil && given[j]:
			return &Error{Status: StatusMismatch, Func: fn, Message: mhaTrainNames[i] + ": the plan was created without it; pass nil"}
		case h != nil && !given[j] && !optional[j]:
			return &Error{Status: StatusMismatch, Func: fn, Message: mhaTrainNames[i] + ": the plan was created with it; pass it"}
		case h != nil && given[j] && int64(lens[j]) < h.extent:
			return &Error{Status: StatusShape, Func: fn, Message: fmt.Sprintf("%s: slice has %d elements, its layout needs %d", mhaTrainNames[i], lens[j], h.extent)}
		}
	}
	return nil
}

func bytesPtr(b []byte) unsafe.Pointer {
	if len(b) == 0 {
		return nil
	}
	return unsafe.Pointer(&b[0])
}

// ForwardMha (attn_mha_forward_train) writes the layer's output for these
// inputs into out (as ExecuteMha without weights) and keeps the activations
// for BackwardMha. keyPaddingMask (NON-ZERO = ATTEND) is nil exactly when the
// plan was made without it. Self-attention: pass the same slice as query,
// key and value. On error nothing is written to out.
func ForwardMha[T Float](pl *MhaTrainPlan, query, key, value []T, keyPaddingMask []byte, out []T) error {
	const fn = "attn.ForwardMha"
	if pl.p == nil {
		return errClosed("mha train plan")
	}
	if dt := dtypeOf[T](); dt != pl.mha.cfg.DType {
		return &Error{Status: StatusDType, Func: fn, Message: fmt.Sprintf("slices have dtype %d, the layer %d", dt, pl.mha.cfg.DType)}
	}
	at := []int{0, 1, 2, 3, 4}
	if err := pl.checkOperands(fn, at,
		[]int{len(query), len(key), len(value), len(keyPaddingMask), len(out)},
		[]bool{query != nil, key != nil, value != nil, keyPaddingMask != nil, out != nil},
		[]bool{false, false, false, false, false}); err != nil {
		return err
	}
	ts := pl.handlePtrs(at)
	pl.forwarded = false
	st := C.attn_go_mha_forward_train(pl.p, &ts[0], bytesPtr(pl.saved), C.size_t(len(pl.saved)),
		ptrOf(query), ptrOf(key), ptrOf(value), bytesPtr(keyPaddingMask), ptrOf(out))
	runtime.KeepAlive(pl)
	runtime.KeepAlive(query)
	runtime.KeepAlive(key)
	runtime.KeepAlive(value)
	runtime.KeepAlive(keyPaddingMask)
	runtime.KeepAlive(out)
	if err := pl.mha.ctx.check(st, "attn_mha_forward_train"); err != nil {
		return err
	}
	pl.forwarded = true
	return nil
}

// span is the byte range of a slice's elements (empty for an empty slice).
func span[T Float](xs []T) (lo, hi uintptr) {
	if len(xs) == 0 {
		return 0, 0
	}
	lo = uintptr(unsafe.Pointer(&xs[0]))
	return lo, lo + uintptr(len(xs))*unsafe.Sizeof(xs[0])
}

// BackwardMha (attn_mha_backward_execute) computes the gradients of the last
// ForwardMha, which must have run on the same query, key, value and
// keyPaddingMask, from dout = ∂L/∂out (out's layout). dquery, dkey, dvalue
// (the layouts of query, key, value; nil = not wanted) and the non-nil
// slices of grads (nil = no parameter gradients) are overwritten.
//
// Self-attention: pass the same slice as dquery, dkey and dvalue (the plan's
// query, key and value layouts being equal) and it receives their sum, as
// autograd gives for an input used three times. Otherwise the outputs must
// not overlap each other or the inputs (StatusInvalidArg). On error nothing
// is written.
func BackwardMha[T Float](pl *MhaTrainPlan, query, key, value []T, keyPaddingMask []byte, dout, dquery, dkey, dvalue []T, grads *MhaGrads[T]) error {
	const fn = "attn.BackwardMha"
	if pl.p == nil {
		return errClosed("mha train plan")
	}
	if dt := dtypeOf[T](); dt != pl.mha.cfg.DType {
		return &Error{Status: StatusDType, Func: fn, Message: fmt.Sprintf("slices have dtype %d, the layer %d", dt, pl.mha.cfg.DType)}
	}
	if !pl.forwarded {
		return &Error{Status: StatusInvalidArg, Func: fn, Message: "saved: no activations; run ForwardMha on these inputs first"}
	}
	at := []int{0, 1, 2, 3, 5, 6, 7, 8}
	if err := pl.checkOperands(fn, at,
		[]int{len(query), len(key), len(value), len(keyPaddingMask), len(dout), len(dquery), len(dkey), len(dvalue)},
		[]bool{query != nil, key != nil, value != nil, keyPaddingMask != nil, dout != nil, dquery != nil, dkey != nil, dvalue != nil},
		[]bool{false, false, false, false, false, true, true, true}); err != nil {
		return err
	}
	gs := grads.slices()
	for i, g := range gs {
		if g != nil && int64(len(g)) != pl.grads[i].extent {
			return &Error{Status: StatusShape, Func: fn, Message: fmt.Sprintf("grads.%s: slice has %d elements, the parameter %v has %d",
				mhaParams[i], len(g), pl.mha.cfg.paramShapes()[i], pl.grads[i].extent)}
		}
	}
	// Outputs may not overlap the inputs or each other, except dquery, dkey
	// and dvalue starting at one address (the library then checks that their
	// layouts agree and writes the sum).
	ins := [4][]T{query, key, value, dout}
	inNames := [4]string{"query", "key", "value", "dout"}
	outs := append([][]T{dquery, dkey, dvalue}, gs[:]...)
	outName := func(j int) string {
		if j < 3 {
			return mhaTrainNames[6+j]
		}
		return "grads." + mhaParams[j-3]
	}
	for j, o := range outs {
		lo, hi := span(o)
		if lo == hi {
			continue
		}
		for i, x := range ins {
			if xlo, xhi := span(x); lo < xhi && xlo < hi {
				return &Error{Status: StatusInvalidArg, Func: fn, Message: outName(j) + ": overlaps " + inNames[i]}
			}
		}
		for k := 0; k < j; k++ {
			if klo, khi := span(outs[k]); lo < khi && klo < hi && !(j < 3 && lo == klo) {
				return &Error{Status: StatusInvalidArg, Func: fn, Message: outName(j) + ": overlaps " + outName(k)}
			}
		}
	}
	ts := pl.handlePtrs([]int{0, 1, 2, 3, 5, 6, 7, 8})
	for j, o := range []([]T){dquery, dkey, dvalue} {
		if o == nil {
			ts[5+j] = nil
		}
	}
	for i, g := range gs {
		if g != nil {
			ts[8+i] = pl.grads[i].p
		}
	}
	st := C.attn_go_mha_backward(pl.p, &ts[0], bytesPtr(pl.saved), C.size_t(len(pl.saved)),
		ptrOf(query), ptrOf(key), ptrOf(value), bytesPtr(keyPaddingMask), ptrOf(dout),
		ptrOf(dquery), ptrOf(dkey), ptrOf(dvalue),
		ptrOf(gs[0]), ptrOf(gs[1]), ptrOf(gs[2]), ptrOf(gs[3]), ptrOf(gs[4]), ptrOf(gs[5]),
		ptrOf(gs[6]), ptrOf(gs[7]), ptrOf(gs[8]))
	runtime.KeepAlive(pl)
	runtime.KeepAlive(query)
	runtime.KeepAlive(key)
	runtime.KeepAlive(value)
	runtime.KeepAlive(keyPaddingMask)
	runtime.KeepAlive(dout)
	runtime.KeepAlive(dquery)
	runtime.KeepAlive(dkey)
	runtime.KeepAlive(dvalue)
	runtime.KeepAlive(gs)
	return pl.mha.ctx.check(st, "attn_mha_backward_execute")
}

// ---------------------------------------------------------------------------
// KV cache (kvcache.h)

// KVCacheMode is the storage mode of a KVCache.
type KVCacheMode int

const (
	KVCacheLinear KVCacheMode = C.ATTN_KVCACHE_LINEAR // positions 0..capacity-1 (StatusCapacity when full, unless Grow)
	KVCacheRing   KVCacheMode = C.ATTN_KVCACHE_RING   // the last capacity positions
)

// KVStorage is how a KVCache stores K and V rows.
type KVStorage int

const (
	KVStoreNative KVStorage = C.ATTN_KVCACHE_STORE_NATIVE // the cache's dtype
	KVStoreBF16   KVStorage = C.ATTN_KVCACHE_STORE_BF16   // bfloat16 (F32 caches; no views)
	KVStoreF16    KVStorage = C.ATTN_KVCACHE_STORE_F16    // IEEE half (F32 caches; KVViewRaw)
	KVStoreInt8   KVStorage = C.ATTN_KVCACHE_STORE_INT8   // 8-bit codes + half scales (F32; KVViewRaw)
	KVStoreInt4   KVStorage = C.ATTN_KVCACHE_STORE_INT4   // 4-bit codes + half scales (F32; KVViewRaw)
)

// KVCacheConfig is attn_kvcache_config. Start from NewKVCacheConfig.
type KVCacheConfig struct {
	Batch, HeadsKV, Capacity int64
	DK, DV                   int64 // DV 0 = DK
	DType                    DType // F32 (default) or F64
	Mode                     KVCacheMode
	Grow                     bool // linear mode: reallocate instead of StatusCapacity
	Storage                  KVStorage
	GroupSize                int64 // Int8/Int4: positions per K scale, channels per V scale; 0 = default
}

// NewKVCacheConfig is attn_kvcache_config_init's defaults with capacity and d_k set.
func NewKVCacheConfig(capacity, dk int64) KVCacheConfig {
	var c C.attn_kvcache_config
	C.attn_kvcache_config_init(&c)
	return KVCacheConfig{Batch: int64(c.batch), HeadsKV: int64(c.heads_kv), Capacity: capacity,
		DK: dk, DV: int64(c.d_v), DType: DType(c.dtype), Mode: KVCacheMode(c.mode),
		Grow: c.grow != 0, Storage: KVStorage(c.storage), GroupSize: int64(c.group_size)}
}

// KVCache is attn_kvcache: the keys and values of every position a batch of
// sequences has produced, for step-by-step decoding. A failing call leaves
// it unchanged. Closing it before its plans is safe (the C cache is
// destroyed with its last plan).
type KVCache struct {
	ctx    *Context
	p      *C.attn_kvcache
	cfg    KVCacheConfig
	mu     sync.Mutex
	refs   int  // the cache itself + open plans
	closed bool // Close was called
}

// NewKVCache makes an empty cache.
func NewKVCache(ctx *Context, cfg KVCacheConfig) (*KVCache, error) {
	var c C.attn_kvcache_config
	C.attn_kvcache_config_init(&c)
	c.batch, c.heads_kv, c.capacity = C.int64_t(cfg.Batch), C.int64_t(cfg.HeadsKV), C.int64_t(cfg.Capacity)
	c.d_k, c.d_v = C.int64_t(cfg.DK), C.int64_t(cfg.DV)
	c.dtype, c.mode, c.grow = C.attn_dtype(cfg.DType), C.attn_kvcache_mode(cfg.Mode), b32(cfg.Grow)
	c.storage = C.attn_kvcache_storage(cfg.Storage)
	c.group_size = C.int64_t(cfg.GroupSize)
	var p *C.attn_kvcache
	st := C.attn_kvcache_create(ctx.p, &c, &p)
	runtime.KeepAlive(ctx)
	if err := ctx.check(st, "attn_kvcache_create"); err != nil {
		return nil, err
	}
	if cfg.DV == 0 {
		cfg.DV = cfg.DK
	}
	kc := &KVCache{ctx: ctx, p: p, cfg: cfg, refs: 1}
	runtime.SetFinalizer(kc, (*KVCache).Close)
	return kc, nil
}

// Config is the cache's configuration (DV resolved).
func (c *KVCache) Config() KVCacheConfig { return c.cfg }

func (c *KVCache) release() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.refs--; c.refs == 0 {
		C.attn_kvcache_destroy(c.p)
		c.p = nil
	}
}

// Close releases the cache (freed once its plans are closed too). Views
// become invalid.
func (c *KVCache) Close() {
	c.mu.Lock()
	already := c.closed
	c.closed = true
	c.mu.Unlock()
	if !already {
		runtime.SetFinalizer(c, nil)
		c.release()
	}
}

func (c *KVCache) open() error {
	if c.p == nil || c.closed {
		return errClosed("kv cache")
	}
	return nil
}

// perItem checks a per-batch-item array (C reads exactly Batch values).
func (c *KVCache) perItem(xs []int64, what, fn string) (*C.int64_t, error) {
	if xs == nil {
		return nil, nil
	}
	if int64(len(xs)) != c.cfg.Batch {
		return nil, &Error{Status: StatusInvalidArg, Func: fn, Message: fmt.Sprintf("%s: %d values, the cache has batch %d", what, len(xs), c.cfg.Batch)}
	}
	return (*C.int64_t)(unsafe.Pointer(&xs[0])), nil
}

// RowsLayout is the contiguous [B, H_kv, n, d] layout of n new rows of width d.
func (c *KVCache) RowsLayout(n, d int64) Layout { return Contiguous(c.cfg.Batch, c.cfg.HeadsKV, n, d) }

// KVAppend appends contiguous kNew [B, H_kv, n, d_k] and vNew [B, H_kv, n, d_v]
// (copied into the cache). counts: rows per batch item (0..n), nil = n each.
func KVAppend[T Float](c *KVCache, kNew, vNew []T, n int64, counts []int64) error {
	return KVAppendLayouts(c, kNew, c.RowsLayout(n, c.cfg.DK), vNew, c.RowsLayout(n, c.cfg.DV), counts)
}

// KVAppendLayouts is KVAppend with any layouts (logical [B, H_kv, n, d]).
func KVAppendLayouts[T Float](c *KVCache, kNew []T, kl Layout, vNew []T, vl Layout, counts []int64) error {
	const fn = "attn_kvcache_append"
	if err := c.open(); err != nil {
		return err
	}
	cp, err := c.perItem(counts, "counts", fn)
	if err != nil {
		return err
	}
	dt := dtypeOf[T]()
	hk, err := wrap(c.ctx, dt, kl, C.attn_go_placeholder(), "k_new")
	if err != nil {
		return err
	}
	defer hk.destroy()
	hv, err := wrap(c.ctx, dt, vl, C.attn_go_placeholder(), "v_new")
	if err != nil {
		return err
	}
	defer hv.destroy()
	for _, x := range []struct {
		name string
		n    int
		h    *handle
	}{{"k_new", len(kNew), hk}, {"v_new", len(vNew), hv}} {
		if int64(x.n) < x.h.extent {
			return &Error{Status: StatusShape, Func: fn, Message: fmt.Sprintf("%s: slice has %d elements, its layout needs %d", x.name, x.n, x.h.extent)}
		}
	}
	st := C.attn_go_kv_append(c.p, hk.p, hv.p, ptrOf(kNew), ptrOf(vNew), cp)
	runtime.KeepAlive(c)
	runtime.KeepAlive(kNew)
	runtime.KeepAlive(vNew)
	runtime.KeepAlive(counts)
	return c.ctx.check(st, fn)
}

// Truncate rolls item b back to lengths[b] positions (attn_kvcache_truncate).
func (c *KVCache) Truncate(lengths []int64) error {
	if err := c.open(); err != nil {
		return err
	}
	if lengths == nil {
		return &Error{Status: StatusNullArg, Func: "attn_kvcache_truncate", Message: "lengths: nil"}
	}
	lp, err := c.perItem(lengths, "lengths", "attn_kvcache_truncate")
	if err != nil {
		return err
	}
	st := C.attn_kvcache_truncate(c.p, lp)
	runtime.KeepAlive(c)
	runtime.KeepAlive(lengths)
	return c.ctx.check(st, "attn_kvcache_truncate")
}

// SetKeepFirst: a ring cache keeps positions 0..n-1 for good (StreamingLLM's
// sink tokens), besides its last capacity positions. Call on an empty cache.
func (c *KVCache) SetKeepFirst(n int64) error {
	if err := c.open(); err != nil {
		return err
	}
	st := C.attn_kvcache_set_keep_first(c.p, C.int64_t(n))
	runtime.KeepAlive(c)
	return c.ctx.check(st, "attn_kvcache_set_keep_first")
}

// Reset empties the cache.
func (c *KVCache) Reset() error { return c.Truncate(make([]int64, c.cfg.Batch)) }

// Length is the number of positions item b has received (-1 if b is out of range).
func (c *KVCache) Length(b int64) int64 {
	defer runtime.KeepAlive(c)
	return int64(C.attn_kvcache_length(c.p, C.int64_t(b)))
}

// First is the oldest position item b still stores (-1 if b is out of range).
func (c *KVCache) First(b int64) int64 {
	defer runtime.KeepAlive(c)
	return int64(C.attn_kvcache_first(c.p, C.int64_t(b)))
}

// Lengths is every item's length.
func (c *KVCache) Lengths() []int64 {
	r := make([]int64, c.cfg.Batch)
	for b := range r {
		r[b] = c.Length(int64(b))
	}
	return r
}

// Firsts is every item's oldest stored position.
func (c *KVCache) Firsts() []int64 {
	r := make([]int64, c.cfg.Batch)
	for b := range r {
		r[b] = c.First(int64(b))
	}
	return r
}

// Capacity is the positions per item the storage holds now.
func (c *KVCache) Capacity() int64 {
	defer runtime.KeepAlive(c)
	return int64(C.attn_kvcache_capacity(c.p))
}

// MemorySize is the bytes the cache holds.
func (c *KVCache) MemorySize() int {
	defer runtime.KeepAlive(c)
	return int(C.attn_kvcache_memory_size(c.p))
}

// KVRaw is attn_kvcache_raw: the cache's stored bytes and scales as Go
// slices over its C memory (no copy; read only; invalid once the cache grows
// or is closed). KScales, VScales (half-float bits) and KResidual are nil
// unless the storage is Int8/Int4; see kvcache.h for the layout.
type KVRaw struct {
	Storage                KVStorage
	GroupSize, KGroups     int64
	KRowBytes, VRowBytes   int64
	K, V                   []byte
	KScales, VScales       []uint16
	KResidual              []float32
	TotalBytes             int64
	batch, heads, capacity int64
	dk, dv                 int64
}

// KVViewRaw is attn_kvcache_view_raw.
func KVViewRaw(c *KVCache) (*KVRaw, error) {
	if err := c.open(); err != nil {
		return nil, err
	}
	var r C.attn_kvcache_raw
	C.attn_kvcache_raw_init(&r)
	st := C.attn_kvcache_view_raw(c.p, &r)
	runtime.KeepAlive(c)
	if err := c.ctx.check(st, "attn_kvcache_view_raw"); err != nil {
		return nil, err
	}
	B, H, Cp := int64(r.batch), int64(r.heads_kv), int64(r.capacity)
	out := &KVRaw{Storage: KVStorage(r.storage), GroupSize: int64(r.group_size), KGroups: int64(r.k_groups),
		KRowBytes: int64(r.k_row_bytes), VRowBytes: int64(r.v_row_bytes), TotalBytes: int64(r.total_bytes),
		batch: B, heads: H, capacity: Cp, dk: int64(r.d_k), dv: int64(r.d_v)}
	out.K = unsafe.Slice((*byte)(r.k), B*H*Cp*out.KRowBytes)
	out.V = unsafe.Slice((*byte)(r.v), B*H*Cp*out.VRowBytes)
	if out.GroupSize > 0 {
		G := out.GroupSize
		out.KScales = unsafe.Slice((*uint16)(unsafe.Pointer(r.k_scales)), B*H*out.KGroups*2*out.dk)
		out.VScales = unsafe.Slice((*uint16)(unsafe.Pointer(r.v_scales)), B*H*Cp*(out.dv/G)*2)
		out.KResidual = unsafe.Slice((*float32)(unsafe.Pointer(r.k_residual)), B*H*G*out.dk)
	}
	return out, nil
}

func halfToFloat(h uint16) float32 {
	e, m := int((h>>10)&0x1f), float64(h&0x3ff)
	var v float64
	switch e {
	case 0:
		v = math.Ldexp(m, -24)
	case 31:
		if m == 0 {
			v = math.Inf(1)
		} else {
			v = math.NaN()
		}
	default:
		v = math.Ldexp(1024+m, e-25)
	}
	if h&0x8000 != 0 {
		v = -v
	}
	return float32(v)
}

// Decode returns the key (isK) or value row of position pos (stored by item
// b, whose current length is length) of head h as float32, as attention
// reads it. Only F32 caches with F16/Int8/Int4/BF16 storage.
func (r *KVRaw) Decode(isK bool, b, h, pos, length int64) []float32 {
	d, rb, src := r.dv, r.VRowBytes, r.V
	if isK {
		d, rb, src = r.dk, r.KRowBytes, r.K
	}
	bh, row := b*r.heads+h, pos%r.capacity
	bytes := src[(bh*r.capacity+row)*rb:][:rb]
	out := make([]float32, d)
	code := func(x int64) float32 {
		if r.Storage == KVStoreInt8 {
			return float32(bytes[x])
		}
		by := bytes[x/32*16+x%16]
		if x%32 >= 16 {
			return float32(by >> 4)
		}
		return float32(by & 15)
	}
	G := r.GroupSize
	for x := int64(0); x < d; x++ {
		switch r.Storage {
		case KVStoreBF16:
			out[x] = math.Float32frombits(uint32(uint16(bytes[2*x])|uint16(bytes[2*x+1])<<8) << 16)
		case KVStoreF16:
			out[x] = halfToFloat(uint16(bytes[2*x]) | uint16(bytes[2*x+1])<<8)
		case KVStoreNative:
			out[x] = math.Float32frombits(uint32(bytes[4*x]) | uint32(bytes[4*x+1])<<8 | uint32(bytes[4*x+2])<<16 | uint32(bytes[4*x+3])<<24)
		default:
			if isK && pos >= length/G*G {
				out[x] = r.KResidual[(bh*G+pos%G)*d+x]
			} else if isK {
				sc := r.KScales[(bh*r.KGroups+(pos/G)%r.KGroups)*2*d:]
				out[x] = halfToFloat(sc[x])*code(x) + halfToFloat(sc[d+x])
			} else {
				sc := r.VScales[((bh*r.capacity+row)*(d/G)+x/G)*2:]
				out[x] = halfToFloat(sc[0])*code(x) + halfToFloat(sc[1])
			}
		}
	}
	return out
}

// KVView returns the storage as Go slices over the cache's C memory (no
// copy): k [B, H_kv, capacity, d_k] and v [B, H_kv, capacity, d_v],
// contiguous. Row r of item b holds position r (linear) or the position p
// with p % capacity == r (ring); valid for p in [First(b), Length(b)). Read
// only; they show later appends and are invalid once the cache grows or is
// closed. StatusUnsupported for bf16 storage.
func KVView[T Float](c *KVCache) (k, v []T, kl, vl Layout, err error) {
	if err = c.open(); err != nil {
		return
	}
	if dt := dtypeOf[T](); dt != c.cfg.DType {
		err = &Error{Status: StatusDType, Func: "attn.KVView", Message: fmt.Sprintf("slices of dtype %d, the cache has %d", dt, c.cfg.DType)}
		return
	}
	var tk, tv *C.attn_tensor
	st := C.attn_kvcache_view(c.p, &tk, &tv)
	runtime.KeepAlive(c)
	if err = c.ctx.check(st, "attn_kvcache_view"); err != nil {
		return
	}
	kl, vl = layoutOf(tk), layoutOf(tv)
	numel := func(l Layout) int64 { return l.Shape[0] * l.Shape[1] * l.Shape[2] * l.Shape[3] }
	k = unsafe.Slice((*T)(C.attn_tensor_data(tk)), numel(kl))
	v = unsafe.Slice((*T)(C.attn_tensor_data(tv)), numel(vl))
	C.attn_tensor_destroy(tk)
	C.attn_tensor_destroy(tv)
	return
}

var kvNames = [3]string{"q", "out", "lse"}

// KVPlan is attn_kvcache_plan: new queries attending to a cache, with its
// workspace. It keeps the cache (and the descriptor's borrowed arrays) alive.
type KVPlan struct {
	cache   *KVCache
	keep    *borrowed
	p       *C.attn_kvcache_plan
	handles [3]*handle // q, out, lse
}

// NewKVPlan plans n new queries of `heads` heads in contiguous [B, H, n, d]
// q/out (and [B, H, n] lse when lse). desc: causal CausalBottomRight for a
// decoder, window/ALiBi/softcap in the cache's absolute positions.
func NewKVPlan(c *KVCache, desc *Desc, heads, n int64, lse bool) (*KVPlan, error) {
	b := c.cfg.Batch
	var l *Layout
	if lse {
		x := Contiguous(b, heads, n)
		l = &x
	}
	return NewKVPlanLayouts(c, desc, Contiguous(b, heads, n, c.cfg.DK), Contiguous(b, heads, n, c.cfg.DV), l)
}

// NewKVPlanLayouts plans for any layouts of q [B, H, n, d_k], out [B, H, n, d_v]
// (last dims contiguous) and lse [B, H, n] (nil: none).
func NewKVPlanLayouts(c *KVCache, desc *Desc, q, out Layout, lse *Layout) (*KVPlan, error) {
	if err := c.open(); err != nil {
		return nil, err
	}
	if desc == nil {
		return nil, &Error{Status: StatusNullArg, Func: "attn_kvcache_plan_create", Message: "desc: nil (use NewDesc; SetCausal(CausalBottomRight) for a decoder)"}
	}
	if desc.p == nil {
		return nil, errClosed("desc")
	}
	pl := &KVPlan{cache: c, keep: desc.keep}
	layouts := [3]*Layout{&q, &out, lse}
	var cp [3]*C.attn_tensor
	for i, l := range layouts {
		if l == nil {
			continue
		}
		h, err := wrap(c.ctx, c.cfg.DType, *l, C.attn_go_placeholder(), kvNames[i])
		if err != nil {
			pl.destroyHandles()
			return nil, err
		}
		pl.handles[i] = h
		cp[i] = h.p
	}
	st := C.attn_kvcache_plan_create(c.p, desc.p, cp[0], cp[1], cp[2], &pl.p)
	runtime.KeepAlive(c)
	runtime.KeepAlive(desc)
	if err := c.ctx.check(st, "attn_kvcache_plan_create"); err != nil {
		pl.destroyHandles()
		return nil, err
	}
	c.mu.Lock()
	c.refs++
	c.mu.Unlock()
	pl.keep.acquire()
	runtime.SetFinalizer(pl, (*KVPlan).Close)
	return pl, nil
}

func (pl *KVPlan) destroyHandles() {
	for i := range pl.handles {
		pl.handles[i].destroy()
		pl.handles[i] = nil
	}
}

// Close destroys the plan.
func (pl *KVPlan) Close() {
	if pl.p != nil {
		C.attn_kvcache_plan_destroy(pl.p)
		pl.p = nil
		pl.destroyHandles()
		pl.keep.release()
		pl.cache.release()
	}
}

// WorkspaceSize is the bytes of workspace the plan holds.
func (pl *KVPlan) WorkspaceSize() int {
	defer runtime.KeepAlive(pl)
	return int(C.attn_kvcache_plan_workspace_size(pl.p))
}

// KVExecute attends the queries q to the cache's current contents, writing
// out (and lse: nil exactly when the plan has none). queryCounts: queries per
// item (pass the append's counts), nil = n each. On error nothing is written.
func KVExecute[T Float](pl *KVPlan, q, out, lse []T, queryCounts []int64) error {
	const fn = "attn_kvcache_plan_execute"
	if pl.p == nil {
		return errClosed("kv plan")
	}
	if dt := dtypeOf[T](); dt != pl.cache.cfg.DType {
		return &Error{Status: StatusDType, Func: "attn.KVExecute", Message: fmt.Sprintf("slices have dtype %d, the cache %d", dt, pl.cache.cfg.DType)}
	}
	slices := [3][]T{q, out, lse}
	for i, h := range pl.handles {
		switch {
		case h == nil && slices[i] != nil:
			return &Error{Status: StatusMismatch, Func: "attn.KVExecute", Message: kvNames[i] + ": the plan was created without it; pass nil"}
		case h != nil && slices[i] == nil:
			return &Error{Status: StatusMismatch, Func: "attn.KVExecute", Message: kvNames[i] + ": the plan was created with it; pass it"}
		case h != nil && int64(len(slices[i])) < h.extent:
			return &Error{Status: StatusShape, Func: "attn.KVExecute", Message: fmt.Sprintf("%s: slice has %d elements, its layout needs %d", kvNames[i], len(slices[i]), h.extent)}
		}
	}
	cp, err := pl.cache.perItem(queryCounts, "query_counts", fn)
	if err != nil {
		return err
	}
	var tl *C.attn_tensor
	if pl.handles[2] != nil {
		tl = pl.handles[2].p
	}
	st := C.attn_go_kv_execute(pl.p, pl.handles[0].p, pl.handles[1].p, tl, ptrOf(q), ptrOf(out), ptrOf(lse), cp)
	runtime.KeepAlive(pl)
	runtime.KeepAlive(slices)
	runtime.KeepAlive(queryCounts)
	return pl.cache.ctx.check(st, fn)
}

// ---------------------------------------------------------------------------
// Paged KV cache (paged.h)

// PagedConfig is attn_paged_config. Start from NewPagedConfig.
type PagedConfig struct {
	HeadsKV, DK, DV      int64 // DV 0 = DK
	BlockSize, NumBlocks int64
	MaxSeqs, MaxSeqLen   int64 // MaxSeqLen 0 = NumBlocks·BlockSize
	DType                DType
	Storage              KVStorage // Native; BF16, F16, Int8, Int4 (F32 only)
	GroupSize            int64     // Int8/Int4: divides DV and BlockSize; 0 = default
}

// NewPagedConfig is attn_paged_config_init's defaults with num_blocks and d_k set.
func NewPagedConfig(numBlocks, dk int64) PagedConfig {
	var c C.attn_paged_config
	C.attn_paged_config_init(&c)
	return PagedConfig{HeadsKV: int64(c.heads_kv), DK: dk, BlockSize: int64(c.block_size),
		NumBlocks: numBlocks, MaxSeqs: int64(c.max_seqs), DType: DType(c.dtype), Storage: KVStorage(c.storage)}
}

// PagedCache is attn_paged_cache: a pool of fixed-size blocks shared by many
// sequences, each with its own block table; forks share blocks
// (copy-on-write). Its mutating methods (CreateSeq, FreeSeq, Fork, Append,
// Truncate) take the cache's own lock, so goroutines may call them
// concurrently; plans (one per goroutine, each on its own Context) read
// without it. Mutating a sequence that a running Execute reads is the
// caller's race to avoid (see paged.h).
type PagedCache struct {
	ctx    *Context
	p      *C.attn_paged_cache
	cfg    PagedConfig
	mu     sync.Mutex // serialises mutations (paged.h) and guards refs/closed
	refs   int
	closed bool
}

// NewPagedCache makes an empty pool.
func NewPagedCache(ctx *Context, cfg PagedConfig) (*PagedCache, error) {
	var c C.attn_paged_config
	C.attn_paged_config_init(&c)
	c.heads_kv, c.d_k, c.d_v = C.int64_t(cfg.HeadsKV), C.int64_t(cfg.DK), C.int64_t(cfg.DV)
	c.block_size, c.num_blocks = C.int64_t(cfg.BlockSize), C.int64_t(cfg.NumBlocks)
	c.max_seqs, c.max_seq_len = C.int64_t(cfg.MaxSeqs), C.int64_t(cfg.MaxSeqLen)
	c.dtype, c.storage = C.attn_dtype(cfg.DType), C.attn_kvcache_storage(cfg.Storage)
	c.group_size = C.int64_t(cfg.GroupSize)
	var p *C.attn_paged_cache
	st := C.attn_paged_create(ctx.p, &c, &p)
	runtime.KeepAlive(ctx)
	if err := ctx.check(st, "attn_paged_create"); err != nil {
		return nil, err
	}
	if cfg.DV == 0 {
		cfg.DV = cfg.DK
	}
	pc := &PagedCache{ctx: ctx, p: p, cfg: cfg, refs: 1}
	runtime.SetFinalizer(pc, (*PagedCache).Close)
	return pc, nil
}

// Config is the configuration (DV resolved).
func (c *PagedCache) Config() PagedConfig { return c.cfg }

func (c *PagedCache) release() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.refs--; c.refs == 0 {
		C.attn_paged_destroy(c.p)
		c.p = nil
	}
}

// Close releases the cache (freed once its plans are closed too).
func (c *PagedCache) Close() {
	c.mu.Lock()
	already := c.closed
	c.closed = true
	c.mu.Unlock()
	if !already {
		runtime.SetFinalizer(c, nil)
		c.release()
	}
}

// locked runs f under the cache's lock if the cache is open.
func (c *PagedCache) locked(f func() C.attn_status, fn string) error {
	c.mu.Lock()
	if c.p == nil || c.closed {
		c.mu.Unlock()
		return errClosed("paged cache")
	}
	st := f()
	err := c.ctx.check(st, fn) // the message is on the cache's context: read it under the lock
	c.mu.Unlock()
	runtime.KeepAlive(c)
	return err
}

// CreateSeq starts an empty sequence and returns its id.
func (c *PagedCache) CreateSeq() (int64, error) {
	var s C.int64_t = -1
	err := c.locked(func() C.attn_status { return C.attn_paged_seq_create(c.p, &s) }, "attn_paged_seq_create")
	return int64(s), err
}

// FreeSeq frees a sequence (its blocks lose a reference).
func (c *PagedCache) FreeSeq(seq int64) error {
	return c.locked(func() C.attn_status { return C.attn_paged_seq_free(c.p, C.int64_t(seq)) }, "attn_paged_seq_free")
}

// Fork makes a new sequence sharing every block of src and returns its id.
func (c *PagedCache) Fork(src int64) (int64, error) {
	var s C.int64_t = -1
	err := c.locked(func() C.attn_status { return C.attn_paged_fork(c.p, C.int64_t(src), &s) }, "attn_paged_fork")
	return int64(s), err
}

// Truncate rolls seq back to length positions.
func (c *PagedCache) Truncate(seq, length int64) error {
	return c.locked(func() C.attn_status { return C.attn_paged_truncate(c.p, C.int64_t(seq), C.int64_t(length)) }, "attn_paged_truncate")
}

// Length is seq's length (-1 if the id is not live).
func (c *PagedCache) Length(seq int64) int64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return int64(C.attn_paged_seq_length(c.p, C.int64_t(seq)))
}

// BlockTable is seq's block ids in position order.
func (c *PagedCache) BlockTable(seq int64) ([]int64, error) {
	n := c.Length(seq)
	if n < 0 {
		n = 0
	}
	ids := make([]int64, (n+c.cfg.BlockSize-1)/c.cfg.BlockSize+1)
	var count C.int64_t
	err := c.locked(func() C.attn_status {
		return C.attn_paged_block_table(c.p, C.int64_t(seq), (*C.int64_t)(unsafe.Pointer(&ids[0])), C.int64_t(len(ids)), &count)
	}, "attn_paged_block_table")
	if err != nil {
		return nil, err
	}
	return ids[:count], nil
}

// FreeBlocks is the number of free blocks.
func (c *PagedCache) FreeBlocks() int64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return int64(C.attn_paged_free_blocks(c.p))
}

// NumSeqs is the number of live sequences.
func (c *PagedCache) NumSeqs() int64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return int64(C.attn_paged_num_seqs(c.p))
}

// MemoryUsed is the bytes of blocks in use (shared blocks once).
func (c *PagedCache) MemoryUsed() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return int(C.attn_paged_memory_used(c.p))
}

// MemorySize is the bytes the cache holds.
func (c *PagedCache) MemorySize() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return int(C.attn_paged_memory_size(c.p))
}

// PagedAppend appends contiguous kNew [H_kv, n, d_k], vNew [H_kv, n, d_v]
// to sequence seq (copied into the cache).
func PagedAppend[T Float](c *PagedCache, seq int64, kNew, vNew []T, n int64) error {
	const fn = "attn_paged_append"
	if dt := dtypeOf[T](); dt != c.cfg.DType {
		return &Error{Status: StatusDType, Func: "attn.PagedAppend", Message: fmt.Sprintf("slices of dtype %d, the cache has %d", dt, c.cfg.DType)}
	}
	hk, err := wrap(c.ctx, c.cfg.DType, Contiguous(c.cfg.HeadsKV, n, c.cfg.DK), C.attn_go_placeholder(), "k_new")
	if err != nil {
		return err
	}
	defer hk.destroy()
	hv, err := wrap(c.ctx, c.cfg.DType, Contiguous(c.cfg.HeadsKV, n, c.cfg.DV), C.attn_go_placeholder(), "v_new")
	if err != nil {
		return err
	}
	defer hv.destroy()
	if int64(len(kNew)) < hk.extent || int64(len(vNew)) < hv.extent {
		return &Error{Status: StatusShape, Func: fn, Message: fmt.Sprintf("k_new/v_new: %d/%d elements, the layouts need %d/%d", len(kNew), len(vNew), hk.extent, hv.extent)}
	}
	err = c.locked(func() C.attn_status {
		return C.attn_go_paged_append(c.p, C.int64_t(seq), hk.p, hv.p, ptrOf(kNew), ptrOf(vNew))
	}, fn)
	runtime.KeepAlive(kNew)
	runtime.KeepAlive(vNew)
	return err
}

// PagedPlan is attn_paged_plan: a ragged batch of up to N sequences' new
// queries against a PagedCache, on its own Context.
type PagedPlan struct {
	cache   *PagedCache
	ctx     *Context
	keep    *borrowed
	p       *C.attn_paged_plan
	handles [3]*handle
	dt      DType
}

// NewPagedPlan plans up to `rows` sequences of n queries of `heads` heads in
// contiguous q [rows, H, n, d_k], out [rows, H, n, d_v] (and lse [rows, H, n]
// when lse) on context ctx (one per goroutine).
func NewPagedPlan(ctx *Context, c *PagedCache, desc *Desc, rows, heads, n int64, lse bool) (*PagedPlan, error) {
	const fn = "attn_paged_plan_create"
	if desc == nil || desc.p == nil {
		return nil, &Error{Status: StatusNullArg, Func: fn, Message: "desc: nil or closed"}
	}
	c.mu.Lock()
	if c.p == nil || c.closed {
		c.mu.Unlock()
		return nil, errClosed("paged cache")
	}
	c.refs++
	c.mu.Unlock()
	pl := &PagedPlan{cache: c, ctx: ctx, keep: desc.keep, dt: c.cfg.DType}
	layouts := [3]Layout{Contiguous(rows, heads, n, c.cfg.DK), Contiguous(rows, heads, n, c.cfg.DV), Contiguous(rows, heads, n)}
	var cp [3]*C.attn_tensor
	for i := range layouts {
		if i == 2 && !lse {
			continue
		}
		h, err := wrap(ctx, c.cfg.DType, layouts[i], C.attn_go_placeholder(), kvNames[i])
		if err != nil {
			pl.destroyHandles()
			c.release()
			return nil, err
		}
		pl.handles[i] = h
		cp[i] = h.p
	}
	st := C.attn_paged_plan_create(ctx.p, c.p, desc.p, cp[0], cp[1], cp[2], &pl.p)
	runtime.KeepAlive(desc)
	if err := ctx.check(st, fn); err != nil {
		pl.destroyHandles()
		c.release()
		return nil, err
	}
	pl.keep.acquire()
	runtime.SetFinalizer(pl, (*PagedPlan).Close)
	return pl, nil
}

func (pl *PagedPlan) destroyHandles() {
	for i := range pl.handles {
		pl.handles[i].destroy()
		pl.handles[i] = nil
	}
}

// Close destroys the plan.
func (pl *PagedPlan) Close() {
	if pl.p != nil {
		C.attn_paged_plan_destroy(pl.p)
		pl.p = nil
		pl.destroyHandles()
		pl.keep.release()
		pl.cache.release()
	}
}

// PagedExecute attends rows 0..len(seqs)-1 of q (the plan's full shape) to
// sequences seqs, writing out (and lse: nil exactly when the plan has none).
// queryCounts: one per row, nil = n each. On error nothing is written.
func PagedExecute[T Float](pl *PagedPlan, seqs []int64, q, out, lse []T, queryCounts []int64) error {
	const fn = "attn_paged_plan_execute"
	if pl.p == nil {
		return errClosed("paged plan")
	}
	if dt := dtypeOf[T](); dt != pl.dt {
		return &Error{Status: StatusDType, Func: "attn.PagedExecute", Message: fmt.Sprintf("slices have dtype %d, the cache %d", dt, pl.dt)}
	}
	slices := [3][]T{q, out, lse}
	for i, h := range pl.handles {
		switch {
		case h == nil && slices[i] != nil:
			return &Error{Status: StatusMismatch, Func: "attn.PagedExecute", Message: kvNames[i] + ": the plan was created without it; pass nil"}
		case h != nil && slices[i] == nil:
			return &Error{Status: StatusMismatch, Func: "attn.PagedExecute", Message: kvNames[i] + ": the plan was created with it; pass it"}
		case h != nil && int64(len(slices[i])) < h.extent:
			return &Error{Status: StatusShape, Func: "attn.PagedExecute", Message: fmt.Sprintf("%s: slice has %d elements, its layout needs %d", kvNames[i], len(slices[i]), h.extent)}
		}
	}
	if queryCounts != nil && len(queryCounts) != len(seqs) {
		return &Error{Status: StatusInvalidArg, Func: fn, Message: fmt.Sprintf("query_counts: %d values for %d rows", len(queryCounts), len(seqs))}
	}
	var sp, cp *C.int64_t
	if len(seqs) > 0 {
		sp = (*C.int64_t)(unsafe.Pointer(&seqs[0]))
	}
	if queryCounts != nil && len(queryCounts) > 0 {
		cp = (*C.int64_t)(unsafe.Pointer(&queryCounts[0]))
	}
	var tl *C.attn_tensor
	if pl.handles[2] != nil {
		tl = pl.handles[2].p
	}
	st := C.attn_go_paged_execute(pl.p, C.int64_t(len(seqs)), sp, pl.handles[0].p, pl.handles[1].p, tl,
		ptrOf(q), ptrOf(out), ptrOf(lse), cp)
	runtime.KeepAlive(pl)
	runtime.KeepAlive(slices)
	runtime.KeepAlive(seqs)
	runtime.KeepAlive(queryCounts)
	return pl.ctx.check(st, fn)
}

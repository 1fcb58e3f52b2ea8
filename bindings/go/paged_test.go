package attn

// PagedCache against a float64 reference written here: several goroutines,
// each with its own Context and PagedPlan, extend and decode their own fork
// of a shared prompt concurrently (mutations go through the cache's lock);
// every decode equals causal attention over that sequence's rows. Also
// copy-on-write, out of blocks (StatusCapacity, nothing changed) and a
// freed id (StatusInvalidArg).

import (
	"errors"
	"math"
	"sync"
	"testing"
)

const pgHkv, pgH, pgD = 2, 4, 8

type pgRows struct{ k, v [pgHkv][][]float64 }

func (r *pgRows) add(k, v []float64, n int) {
	for h := 0; h < pgHkv; h++ {
		for t := 0; t < n; t++ {
			r.k[h] = append(r.k[h], append([]float64(nil), k[(h*n+t)*pgD:(h*n+t+1)*pgD]...))
			r.v[h] = append(r.v[h], append([]float64(nil), v[(h*n+t)*pgD:(h*n+t+1)*pgD]...))
		}
	}
}

func (r *pgRows) clone() *pgRows {
	c := &pgRows{}
	for h := 0; h < pgHkv; h++ {
		c.k[h] = append([][]float64(nil), r.k[h]...)
		c.v[h] = append([][]float64(nil), r.v[h]...)
	}
	return c
}

// ref: causal attention of query q (head h, newest position) over r.
func (r *pgRows) ref(h int, q []float64) []float64 {
	kh := h / (pgH / pgHkv)
	s := make([]float64, len(r.k[kh]))
	m := math.Inf(-1)
	for j, k := range r.k[kh] {
		for x := range k {
			s[j] += k[x] * q[x]
		}
		s[j] /= math.Sqrt(pgD)
		m = math.Max(m, s[j])
	}
	out := make([]float64, pgD)
	l := 0.0
	for j := range s {
		p := math.Exp(s[j] - m)
		l += p
		for x := range out {
			out[x] += p * r.v[kh][j][x]
		}
	}
	for x := range out {
		out[x] /= l
	}
	return out
}

func TestPagedConcurrentDecode(t *testing.T) {
	ctx, err := NewContext(1)
	if err != nil {
		t.Fatal(err)
	}
	defer ctx.Close()
	cfg := NewPagedConfig(256, pgD)
	cfg.HeadsKV, cfg.BlockSize, cfg.MaxSeqs, cfg.DType = pgHkv, 8, 8, F64
	cache, err := NewPagedCache(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer cache.Close()
	r := rng(7)
	prompt, _ := cache.CreateSeq()
	base := &pgRows{}
	k, v := r.vec(pgHkv*21*pgD), r.vec(pgHkv*21*pgD)
	if err := PagedAppend(cache, prompt, k, v, 21); err != nil {
		t.Fatal(err)
	}
	base.add(k, v, 21)
	const workers = 4
	var wg sync.WaitGroup
	errs := make([]error, workers)
	for w := 0; w < workers; w++ {
		seq, err := cache.Fork(prompt)
		if err != nil {
			t.Fatal(err)
		}
		wg.Add(1)
		go func(w int, seq int64) {
			defer wg.Done()
			wr := rng(100 + uint64(w))
			rows := base.clone()
			c, err := NewContext(2)
			if err != nil {
				errs[w] = err
				return
			}
			defer c.Close()
			desc, _ := NewDesc(c)
			defer desc.Close()
			desc.SetCausal(CausalBottomRight)
			plan, err := NewPagedPlan(c, cache, desc, 1, pgH, 1, false)
			if err != nil {
				errs[w] = err
				return
			}
			defer plan.Close()
			for step := 0; step < 10; step++ {
				k, v := wr.vec(pgHkv*pgD), wr.vec(pgHkv*pgD)
				if err := PagedAppend(cache, seq, k, v, 1); err != nil {
					errs[w] = err
					return
				}
				rows.add(k, v, 1)
				q, out := wr.vec(pgH*pgD), make([]float64, pgH*pgD)
				if err := PagedExecute(plan, []int64{seq}, q, out, nil, nil); err != nil {
					errs[w] = err
					return
				}
				for h := 0; h < pgH; h++ {
					want := rows.ref(h, q[h*pgD:(h+1)*pgD])
					for x := range want {
						if math.Abs(out[h*pgD+x]-want[x]) > 1e-10 {
							errs[w] = errors.New("decode differs from the reference")
							return
						}
					}
				}
			}
		}(w, seq)
	}
	wg.Wait()
	for w, err := range errs {
		if err != nil {
			t.Fatalf("worker %d: %v", w, err)
		}
	}
	// The prompt itself is unchanged by its forks' writes.
	c2, _ := NewContext(1)
	defer c2.Close()
	desc, _ := NewDesc(c2)
	defer desc.Close()
	desc.SetCausal(CausalBottomRight)
	plan, err := NewPagedPlan(c2, cache, desc, 1, pgH, 1, false)
	if err != nil {
		t.Fatal(err)
	}
	defer plan.Close()
	q, out := r.vec(pgH*pgD), make([]float64, pgH*pgD)
	if err := PagedExecute(plan, []int64{prompt}, q, out, nil, nil); err != nil {
		t.Fatal(err)
	}
	for h := 0; h < pgH; h++ {
		want := base.ref(h, q[h*pgD:(h+1)*pgD])
		for x := range want {
			if math.Abs(out[h*pgD+x]-want[x]) > 1e-10 {
				t.Fatalf("prompt changed by a fork's write: head %d", h)
			}
		}
	}
}

func TestPagedErrors(t *testing.T) {
	ctx, _ := NewContext(1)
	defer ctx.Close()
	cfg := NewPagedConfig(4, pgD)
	cfg.HeadsKV, cfg.BlockSize, cfg.MaxSeqs, cfg.DType = pgHkv, 8, 2, F64
	cache, err := NewPagedCache(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer cache.Close()
	r := rng(3)
	s, _ := cache.CreateSeq()
	if err := PagedAppend(cache, s, r.vec(pgHkv*30*pgD), r.vec(pgHkv*30*pgD), 30); err != nil {
		t.Fatal(err)
	}
	free := cache.FreeBlocks()
	f, _ := cache.Fork(s)
	if cache.FreeBlocks() != free {
		t.Fatal("a fork used blocks")
	}
	err = PagedAppend(cache, f, r.vec(pgHkv*3*pgD), r.vec(pgHkv*3*pgD), 3)
	var e *Error
	if !errors.As(err, &e) || e.Status != StatusCapacity {
		t.Fatalf("out of blocks: %v", err)
	}
	if cache.Length(f) != 30 || cache.FreeBlocks() != free {
		t.Fatal("a failing append changed the cache")
	}
	if err := cache.FreeSeq(f); err != nil {
		t.Fatal(err)
	}
	if err := cache.FreeSeq(f); !errors.As(err, &e) || e.Status != StatusInvalidArg {
		t.Fatalf("freed twice: %v", err)
	}
	if cache.NumSeqs() != 1 || cache.MemoryUsed() <= 0 {
		t.Fatal("bookkeeping")
	}
}

// F16/Int8/Int4 blocks hold what a KVCache of the same storage holds (the
// same quantizer): a paged decode equals the contiguous one, a fork and a
// rollback into a completed K group included.
func TestPagedCompactStorages(t *testing.T) {
	ctx, err := NewContext(1)
	if err != nil {
		t.Fatal(err)
	}
	defer ctx.Close()
	r := rng(11)
	f32 := func(n int) []float32 {
		out := make([]float32, n)
		for i, x := range r.vec(n) {
			out[i] = float32(x)
		}
		return out
	}
	for _, storage := range []KVStorage{KVStoreF16, KVStoreInt8, KVStoreInt4} {
		cfg := NewPagedConfig(16, pgD)
		cfg.HeadsKV, cfg.BlockSize, cfg.MaxSeqs, cfg.Storage, cfg.GroupSize = pgHkv, 16, 4, storage, 4
		pc, err := NewPagedCache(ctx, cfg)
		if err != nil {
			t.Fatal(err)
		}
		k1, v1, k2, v2 := f32(pgHkv*37*pgD), f32(pgHkv*37*pgD), f32(pgHkv*6*pgD), f32(pgHkv*6*pgD)
		a, _ := pc.CreateSeq()
		must := func(err error) {
			if err != nil {
				t.Fatal(err)
			}
		}
		must(PagedAppend(pc, a, k1, v1, 37))
		b, err := pc.Fork(a)
		must(err)
		must(PagedAppend(pc, b, k2, v2, 6)) // copies the shared last block
		must(pc.Truncate(a, 30))            // into the completed group 28..32
		must(PagedAppend(pc, a, k2, v2, 6))
		kcfg := NewKVCacheConfig(64, pgD)
		kcfg.HeadsKV, kcfg.Storage, kcfg.GroupSize = pgHkv, storage, 4
		var kc [2]*KVCache
		for i := range kc {
			kc[i], err = NewKVCache(ctx, kcfg)
			must(err)
			must(KVAppend(kc[i], k1, v1, 37, nil))
		}
		must(kc[0].Truncate([]int64{30}))
		must(KVAppend(kc[0], k2, v2, 6, nil))
		must(KVAppend(kc[1], k2, v2, 6, nil))
		desc, _ := NewDesc(ctx)
		desc.SetCausal(CausalBottomRight)
		q, out := f32(2*pgH*pgD), make([]float32, 2*pgH*pgD)
		plan, err := NewPagedPlan(ctx, pc, desc, 2, pgH, 1, false)
		must(err)
		must(PagedExecute(plan, []int64{a, b}, q, out, nil, nil))
		for row := range kc {
			want := make([]float32, pgH*pgD)
			kp, err := NewKVPlan(kc[row], desc, pgH, 1, false)
			must(err)
			must(KVExecute(kp, q[row*pgH*pgD:(row+1)*pgH*pgD], want, nil, nil))
			for x := range want {
				if d := math.Abs(float64(out[row*pgH*pgD+x] - want[x])); d > 1e-5*(1+math.Abs(float64(want[x]))) {
					t.Fatalf("storage %d row %d [%d]: %g vs %g", storage, row, x, out[row*pgH*pgD+x], want[x])
				}
			}
			kp.Close()
			kc[row].Close()
		}
		plan.Close()
		desc.Close()
		pc.Close()
	}
}

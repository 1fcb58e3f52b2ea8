package attn_test

import (
	"fmt"

	attn "example.invalid/libattn/bindings/go"
)

// Causal self-attention on Go slices (no copies): every query attends to
// itself and the keys before it, so with all values equal to 1 every output is 1.
func ExampleAttention() {
	ctx, err := attn.NewContext(1)
	if err != nil {
		panic(err)
	}
	defer ctx.Close()
	desc, err := attn.NewDesc(ctx)
	if err != nil {
		panic(err)
	}
	defer desc.Close()
	if err := desc.SetCausal(attn.CausalTopLeft); err != nil {
		panic(err)
	}
	dims := attn.Dims{Batch: 1, Heads: 2, SeqQ: 4, SeqK: 4, HeadDim: 3}
	q := make([]float32, dims.OutLen())
	v := make([]float32, dims.OutLen())
	for i := range q {
		q[i] = float32(i%5) * 0.1
		v[i] = 1
	}
	out := make([]float32, dims.OutLen())
	if err := attn.Attention(desc, dims, q, q, v, out); err != nil {
		panic(err)
	}
	fmt.Printf("%d outputs, out[0] = %.3f, out[last] = %.3f\n", len(out), out[0], out[len(out)-1])
	// Output: 24 outputs, out[0] = 1.000, out[last] = 1.000
}

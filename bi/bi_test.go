package bi_test

import (
	"fmt"
	"math"
	"math/rand/v2"
	"testing"

	"github.com/ggufprune/ggufprune/bi"
)

func TestCosine(t *testing.T) {
	for _, c := range []struct {
		a, b []float32
		want float64
	}{
		{[]float32{1, 0}, []float32{1, 0}, 1},
		{[]float32{1, 0}, []float32{0, 3}, 0},
		{[]float32{1, 2}, []float32{-2, -4}, -1},
		{[]float32{3, 4}, []float32{4, 3}, 24.0 / 25},
		{[]float32{0, 0}, []float32{0, 0}, 1},
		{[]float32{0, 0}, []float32{1, 0}, 0},
	} {
		if got := bi.Cosine(c.a, c.b); math.Abs(got-c.want) > 1e-12 {
			t.Errorf("Cosine(%v, %v) = %v, want %v", c.a, c.b, got, c.want)
		}
	}
}

// The accumulator gives BI and angular distance from block inputs and outputs.
func TestAccumulator(t *testing.T) {
	const nEmbd, nTok = 4, 3
	in := []float32{1, 0, 0, 0, 0, 1, 0, 0, 1, 1, 0, 0}
	same := append([]float32(nil), in...)                    // block 0: identity
	orth := []float32{0, 1, 0, 0, 1, 0, 0, 0, 1, -1, 0, 0}   // block 1: orthogonal to its input
	flip := []float32{0, -1, 0, 0, -1, 0, 0, 0, -1, 1, 0, 0} // block 2: opposite of its input
	acc := bi.NewAccumulator(3)
	for chunk := 0; chunk < 2; chunk++ {
		acc.Observe(-1, in, nEmbd, nTok)
		acc.Observe(0, same, nEmbd, nTok)
		acc.Observe(1, orth, nEmbd, nTok)
		acc.Observe(2, flip, nEmbd, nTok)
	}
	if err := acc.Err(); err != nil {
		t.Fatal(err)
	}
	want := []bi.BlockScore{{Index: 0, BI: 0, Angular: 0}, {Index: 1, BI: 1, Angular: 0.5}, {Index: 2, BI: 2, Angular: 1}}
	got := acc.Scores()
	for i := range want {
		if math.Abs(got[i].BI-want[i].BI) > 1e-12 || math.Abs(got[i].Angular-want[i].Angular) > 1e-7 {
			t.Errorf("block %d: %+v, want %+v", i, got[i], want[i])
		}
	}
	if acc.Tokens() != 2*nTok {
		t.Fatalf("tokens %d", acc.Tokens())
	}
	// Out-of-order boundaries are an error, not a wrong score.
	bad := bi.NewAccumulator(2)
	bad.Observe(0, in, nEmbd, nTok)
	if bad.Err() == nil {
		t.Fatal("missing embedding input accepted")
	}
}

func ExampleAccumulator() {
	acc := bi.NewAccumulator(2)
	h0 := []float32{1, 0, 0, 1} // two tokens of two dimensions: the embeddings
	h1 := []float32{1, 0, 0, 1} // block 0 changes nothing
	h2 := []float32{0, 1, 1, 1} // block 1 turns the first token by 90°, the second by 45°
	acc.Observe(-1, h0, 2, 2)
	acc.Observe(0, h1, 2, 2)
	acc.Observe(1, h2, 2, 2)
	for _, s := range acc.Scores() {
		fmt.Printf("block %d: BI %.4f angular %.4f\n", s.Index, s.BI, s.Angular)
	}
	// Output:
	// block 0: BI 0.0000 angular 0.0000
	// block 1: BI 0.6464 angular 0.3750
}

func BenchmarkAccumulator(b *testing.B) {
	for _, nEmbd := range []int{128, 4096} {
		b.Run(fmt.Sprint(nEmbd), func(b *testing.B) {
			const nTok = 256
			rng := rand.New(rand.NewPCG(1, 1))
			h := make([]float32, nEmbd*nTok)
			for i := range h {
				h[i] = float32(rng.NormFloat64())
			}
			acc := bi.NewAccumulator(1)
			b.SetBytes(int64(4 * len(h)))
			for i := 0; i < b.N; i++ {
				acc.Observe(-1, h, nEmbd, nTok)
				acc.Observe(0, h, nEmbd, nTok)
			}
		})
	}
}

package bi_test

import (
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"reflect"
	"slices"
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

func scores(bis ...float64) []bi.BlockScore {
	s := make([]bi.BlockScore, len(bis))
	for i, v := range bis {
		s[i] = bi.BlockScore{Index: i, BI: v}
	}
	return s
}

func TestSelect(t *testing.T) {
	s := scores(0.001, 0.5, 0.01, 0.3, 0.02, 0.9, 0.0)
	p := bi.Protect{First: 1, Last: 1}
	if got := bi.Candidates(s, p); !reflect.DeepEqual(got, []int{2, 4, 3, 1, 5}) {
		t.Fatalf("candidates %v", got)
	}
	got, err := bi.SelectCount(s, 2, p)
	if err != nil || !reflect.DeepEqual(got, []int{2, 4}) {
		t.Fatalf("SelectCount = %v, %v", got, err)
	}
	if _, err := bi.SelectCount(s, 6, p); err == nil {
		t.Fatal("removing more blocks than unprotected accepted")
	}
	if got, _ := bi.SelectCount(s, 1, bi.Protect{}); !reflect.DeepEqual(got, []int{6}) {
		t.Fatalf("unprotected: %v", got)
	}
	// Protected blocks are never chosen, whatever their scores.
	rng := rand.New(rand.NewPCG(1, 2))
	for trial := 0; trial < 200; trial++ {
		n := 3 + rng.IntN(30)
		bis := make([]float64, n)
		for i := range bis {
			bis[i] = rng.Float64()
		}
		p := bi.Protect{First: 1 + rng.IntN(2), Last: 1 + rng.IntN(2)}
		k := 1 + rng.IntN(n)
		got, err := bi.SelectCount(scores(bis...), k, p)
		if err != nil {
			continue
		}
		for _, b := range got {
			if b < p.First || b >= n-p.Last {
				t.Fatalf("protected block %d chosen (%+v, n %d)", b, p, n)
			}
		}
	}
}

func TestSelectSize(t *testing.T) {
	s := scores(0.5, 0.1, 0.2, 0.05, 0.9)
	size := func(removed []int) (int64, error) { return int64(1000 - 100*len(removed)), nil }
	p := bi.Protect{First: 1, Last: 1}
	got, err := bi.SelectSize(s, 800, size, p)
	if err != nil || !reflect.DeepEqual(got, []int{1, 3}) {
		t.Fatalf("SelectSize = %v, %v", got, err)
	}
	_, err = bi.SelectSize(s, 500, size, p)
	var ue *bi.UnreachableError
	if !errors.As(err, &ue) || ue.Smallest != 700 {
		t.Fatalf("unreachable: %v", err)
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

// A check passes over candidates whose removal with the others is invalid:
// here blocks 1 and 3 may not both go.
func TestSelectValid(t *testing.T) {
	s := scores(0.5, 0.1, 0.2, 0.05, 0.9, 0.3)
	p := bi.Protect{First: 1, Last: 1}
	notBoth := func(removed []int) error {
		if slices.Contains(removed, 1) && slices.Contains(removed, 3) {
			return fmt.Errorf("1 and 3: %w", bi.ErrInvalidRemoval)
		}
		return nil
	}
	got, err := bi.SelectCountBy(s, 2, p, bi.ByBI, notBoth)
	if err != nil || !reflect.DeepEqual(got, []int{2, 3}) {
		t.Fatalf("SelectCountBy = %v, %v", got, err)
	}
	if _, err := bi.SelectCountBy(s, 4, p, bi.ByBI, notBoth); !errors.Is(err, bi.ErrInvalidRemoval) {
		t.Fatalf("4 of 4 candidates: %v", err)
	}
	other := errors.New("broken")
	if _, err := bi.SelectCountBy(s, 2, p, bi.ByBI, func([]int) error { return other }); !errors.Is(err, other) {
		t.Fatalf("other errors: %v", err)
	}
	size := func(removed []int) (int64, error) {
		if err := notBoth(removed); err != nil {
			return 0, err
		}
		return int64(1000 - 100*len(removed)), nil
	}
	got, err = bi.SelectSizeBy(s, 800, size, p, bi.ByBI)
	if err != nil || !reflect.DeepEqual(got, []int{2, 3}) {
		t.Fatalf("SelectSizeBy = %v, %v", got, err)
	}
}

package selection_test

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"reflect"
	"slices"
	"testing"

	"github.com/ggufprune/ggufprune/bi"
	"github.com/ggufprune/ggufprune/prune/selection"
)

func scores(bis ...float64) []bi.BlockScore {
	s := make([]bi.BlockScore, len(bis))
	for i, v := range bis {
		s[i] = bi.BlockScore{Index: i, BI: v}
	}
	return s
}

// byCount is a problem of removing k of the blocks.
func byCount(n, k int, p selection.Protect) selection.Problem {
	return selection.Problem{Blocks: n, Count: k, Protect: p}
}

func TestSelect(t *testing.T) {
	s := scores(0.001, 0.5, 0.01, 0.3, 0.02, 0.9, 0.0)
	p := selection.Protect{First: 1, Last: 1}
	var order []int
	for _, b := range selection.Rank(s, selection.ByBI) {
		if !p.Protected(b, len(s)) {
			order = append(order, b)
		}
	}
	if !reflect.DeepEqual(order, []int{2, 4, 3, 1, 5}) {
		t.Fatalf("candidates %v", order)
	}
	got, err := selection.FromScores(s, selection.ByBI, byCount(len(s), 2, p))
	if err != nil || !reflect.DeepEqual(got, []int{2, 4}) {
		t.Fatalf("2 blocks = %v, %v", got, err)
	}
	if _, err := selection.FromScores(s, selection.ByBI, byCount(len(s), 6, p)); err == nil {
		t.Fatal("removing more blocks than unprotected accepted")
	}
	if got, _ := selection.FromScores(s, selection.ByBI, byCount(len(s), 1, selection.Protect{})); !reflect.DeepEqual(got, []int{6}) {
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
		p := selection.Protect{First: 1 + rng.IntN(2), Last: 1 + rng.IntN(2)}
		k := 1 + rng.IntN(n)
		got, err := selection.FromScores(scores(bis...), selection.ByBI, byCount(n, k, p))
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
	p := selection.Protect{First: 1, Last: 1}
	got, err := selection.FromScores(s, selection.ByBI, selection.Problem{Blocks: len(s), TargetSize: 800, Size: size, Protect: p})
	if err != nil || !reflect.DeepEqual(got, []int{1, 3}) {
		t.Fatalf("by size = %v, %v", got, err)
	}
	_, err = selection.FromScores(s, selection.ByBI, selection.Problem{Blocks: len(s), TargetSize: 500, Size: size, Protect: p})
	var se *selection.SizeError
	if !errors.As(err, &se) || se.Smallest != 700 {
		t.Fatalf("unreachable: %v", err)
	}
}

// A check passes over candidates whose removal with the others is invalid:
// here blocks 1 and 3 may not both go.
func TestSelectValid(t *testing.T) {
	s := scores(0.5, 0.1, 0.2, 0.05, 0.9, 0.3)
	p := selection.Protect{First: 1, Last: 1}
	notBoth := func(removed []int) error {
		if slices.Contains(removed, 1) && slices.Contains(removed, 3) {
			return fmt.Errorf("1 and 3: %w", selection.ErrInvalidRemoval)
		}
		return nil
	}
	count := func(k int, valid func([]int) error) selection.Problem {
		return selection.Problem{Blocks: len(s), Count: k, Protect: p, Valid: valid}
	}
	got, err := selection.FromScores(s, selection.ByBI, count(2, notBoth))
	if err != nil || !reflect.DeepEqual(got, []int{2, 3}) {
		t.Fatalf("2 blocks = %v, %v", got, err)
	}
	if _, err := selection.FromScores(s, selection.ByBI, count(4, notBoth)); !errors.Is(err, selection.ErrInvalidRemoval) {
		t.Fatalf("4 of 4 candidates: %v", err)
	}
	other := errors.New("broken")
	if _, err := selection.FromScores(s, selection.ByBI, count(2, func([]int) error { return other })); !errors.Is(err, other) {
		t.Fatalf("other errors: %v", err)
	}
	size := func(removed []int) (int64, error) { return int64(1000 - 100*len(removed)), nil }
	got, err = selection.FromScores(s, selection.ByBI, selection.Problem{Blocks: len(s), TargetSize: 800, Size: size, Protect: p, Valid: notBoth})
	if err != nil || !reflect.DeepEqual(got, []int{2, 3}) {
		t.Fatalf("by size = %v, %v", got, err)
	}
}

// Every method is registered once, under its own name, and found by it.
func TestRegistry(t *testing.T) {
	seen := map[string]bool{}
	for _, m := range selection.Methods() {
		if seen[m.Name] || m.Help == "" || m.Cost == "" || m.Choose == nil {
			t.Fatalf("method %+v: duplicate or incomplete", m)
		}
		seen[m.Name] = true
		if got, err := selection.Parse(m.Name); err != nil || got != m {
			t.Fatalf("Parse(%q) = %v, %v", m.Name, got, err)
		}
	}
	if len(seen) != 8 {
		t.Fatalf("%d methods", len(seen))
	}
	if _, err := selection.Parse("nope"); err == nil {
		t.Fatal("unknown method accepted")
	}
}

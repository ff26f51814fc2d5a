package prune_test

import (
	"context"
	"errors"
	"path/filepath"
	"slices"
	"testing"

	"github.com/ggufprune/ggufprune/gguf/surgery"
	"github.com/ggufprune/ggufprune/internal/fixture"
	"github.com/ggufprune/ggufprune/internal/units"
	"github.com/ggufprune/ggufprune/llamacpp/arch"
	"github.com/ggufprune/ggufprune/prune"
	"github.com/ggufprune/ggufprune/prune/runner"
	"github.com/ggufprune/ggufprune/prune/selection"
)

func TestSizes(t *testing.T) {
	for in, want := range map[string]int64{"3GiB": 3 << 30, "2.5GB": 2.5e9, "70%": 700, "123": 123, "1.5 MiB": 1.5 * (1 << 20)} {
		got, err := units.ParseSize(in, 1000)
		if err != nil || got != want {
			t.Errorf("%q: %d, %v", in, got, err)
		}
	}
	for _, bad := range []string{"", "GB", "-1GB", "x%", "NaN", "nan%", "1e19", "9223372036854775807", "Inf", "0.1"} {
		if _, err := units.ParseSize(bad, 1000); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
	for in, want := range map[string]int{"3": 3, "25%": 4, "1%": 1} {
		if got, err := selection.ParseCount(in, 16); err != nil || got != want {
			t.Errorf("%q: %d, %v", in, got, err)
		}
	}
	for _, bad := range []string{"nan%", "NaN", "0", "-2", "100%", "0%", "x"} {
		if got, err := selection.ParseCount(bad, 16); err == nil {
			t.Errorf("%q accepted as %d", bad, got)
		}
	}
}

// A hybrid whose attention blocks both score BI 0: removing both would
// leave llama.cpp without an attention block (it aborts), so selection
// takes the next candidate instead of the second one.
func TestSelectPassesOverInvalidRemovals(t *testing.T) {
	ctx := context.Background()
	src := filepath.Join(t.TempDir(), "granitehybrid.gguf")
	if err := fixture.RandomModel(src, fixture.Asset(t, "models/stories260K.gguf"), spec("granitehybrid", 6, 2, 5)); err != nil {
		t.Fatal(err)
	}
	m, err := prune.Open(src)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	cal, err := runner.CalibrationFile(fixture.Asset(t, "text/tinystories/tinystories_val_first100.txt"))
	if err != nil {
		t.Fatal(err)
	}
	rep, _, err := m.Score(ctx, prune.ScoreOptions{Calibration: cal, Run: runner.Options{Ctx: 64, Chunks: 2, Threads: 2}})
	if err != nil {
		t.Fatal(err)
	}
	next := -1 // the lowest-BI block other than 2 and 5, blocks 0 protected
	for _, b := range rep.Blocks {
		if b.Index != 0 && b.Index != 2 && b.Index != 5 && (next < 0 || b.BI < rep.Blocks[next].BI) {
			next = b.Index
		}
	}
	if rep.Blocks[2].BI != 0 || rep.Blocks[5].BI != 0 {
		t.Fatalf("planted blocks score %g and %g", rep.Blocks[2].BI, rep.Blocks[5].BI)
	}
	got, err := m.Select(rep, prune.Selection{Count: 2, Protect: selection.Protect{First: 1}})
	if want := []int{2, next}; err != nil || !slices.Equal(got, slices.Sorted(slices.Values(want))) {
		t.Fatalf("selected %v (%v), want %v", got, err, want)
	}
	// The search methods pass over it too.
	for _, method := range []*selection.Method{selection.BI, selection.BIIterative, selection.Greedy, selection.Angular} {
		res, err := m.Choose(ctx, method, prune.Selection{Count: 2, Protect: selection.Protect{First: 1}}, cal, runner.Options{Ctx: 64, Chunks: 1, Threads: 2})
		if err != nil {
			t.Fatalf("%s: %v", method, err)
		}
		if _, err := m.Plan(res.Removed, surgery.Options{Force: true}); err != nil || len(res.Removed) != 2 {
			t.Fatalf("%s chose %v: %v", method, res.Removed, err)
		}
	}
	// One attention block and one recurrent block must stay: 4 of 6 can
	// go, not 5.
	if got, err := m.Select(rep, prune.Selection{Count: 4}); err != nil || len(got) != 4 {
		t.Fatalf("removing 4 of 6: %v, %v", got, err)
	}
	if _, err := m.Select(rep, prune.Selection{Count: 5}); !errors.Is(err, arch.ErrRule) {
		t.Fatalf("removing 5 of 6: %v", err)
	}
}

package prune_test

import (
	"context"
	"path/filepath"
	"reflect"
	"testing"

	"github.com/ggufprune/ggufprune/internal/fixture"
	"github.com/ggufprune/ggufprune/prune"
	"github.com/ggufprune/ggufprune/prune/runner"
	"github.com/ggufprune/ggufprune/prune/selection"
)

// Every method finds two planted identity blocks (zero attention output and
// FFN down projection: they return their input) in a real model: their BI
// is 0, removing them changes no prediction, and they are consecutive.
func TestMethodsFindIdentityBlocks(t *testing.T) {
	dir := t.TempDir()
	planted := filepath.Join(dir, "planted.gguf")
	if err := fixture.IdentityBlocks(fixture.Asset(t, "models/story16-f16.gguf"), planted, []int{6, 7}); err != nil {
		t.Fatal(err)
	}
	m, err := prune.Open(planted)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	cal, err := runner.CalibrationFile(fixture.Asset(t, "text/gutenberg/pg11.txt"))
	if err != nil {
		t.Fatal(err)
	}
	o := runner.Options{Ctx: 64, Chunks: 3, Threads: 2}
	sel := prune.Selection{Count: 2, Protect: selection.Protect{First: 1, Last: 1}}
	for _, method := range selection.Methods() {
		s, err := m.Choose(context.Background(), method, sel, cal, o)
		if err != nil {
			t.Fatalf("%s: %v", method, err)
		}
		if !reflect.DeepEqual(s.Removed, []int{6, 7}) || s.Cost.Passes < 1 || s.Cost.Tokens < 3*64 {
			t.Fatalf("%s chose %v (steps %v, cost %+v)", method, s.Removed, s.Steps, s.Cost)
		}
		t.Logf("%-12s %v cost %d passes %d tokens %.2fs, loss %g", method, s.Removed, s.Cost.Passes, s.Cost.Tokens, s.Cost.Seconds, s.Loss)
		if method == selection.KLDGreedy && s.Loss != 0 {
			t.Fatalf("KLD of the model without identity blocks: %g", s.Loss)
		}
	}
	// A size target: the fewest blocks that reach it.
	s, err := m.Choose(context.Background(), selection.Greedy, prune.Selection{TargetSize: m.Size() - 1, Protect: selection.Protect{First: 1, Last: 1}}, cal, o)
	if err != nil || len(s.Removed) != 1 || (s.Removed[0] != 6 && s.Removed[0] != 7) {
		t.Fatalf("target size: %+v, %v", s, err)
	}
}

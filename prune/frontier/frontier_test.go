package frontier_test

import (
	"context"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ggufprune/ggufprune/internal/fixture"
	"github.com/ggufprune/ggufprune/prune"
	"github.com/ggufprune/ggufprune/prune/eval"
	"github.com/ggufprune/ggufprune/prune/frontier"
	"github.com/ggufprune/ggufprune/prune/runner"
	"github.com/ggufprune/ggufprune/prune/selection"
)

// storyGrid is the smallest grid that has pruning and quantizing in it:
// story16 with 0 and 1 blocks removed, in F16 and Q8_0, on short texts.
func storyGrid(t *testing.T, keep string) (*prune.Model, frontier.Options) {
	t.Helper()
	m, err := prune.Open(fixture.Asset(t, "models/story16-f16.gguf"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	cal, err := runner.CalibrationFile(fixture.Asset(t, "text/gutenberg/pg1342.txt"))
	if err != nil {
		t.Fatal(err)
	}
	text, err := runner.TextFile(fixture.Asset(t, "text/unseen/gutenberg_tails.txt"))
	if err != nil {
		t.Fatal(err)
	}
	return m, frontier.Options{
		Types: []string{"F16", "Q8_0"}, Remove: []int{0, 1}, Protect: selection.Protect{First: 1, Last: 1},
		Calibration: cal, EvalText: text, Run: runner.Options{Ctx: 64, Chunks: 2, Threads: 1},
		Keep: keep, Speed: eval.SpeedOptions{Prompt: 32, Generate: 8, Runs: 1},
	}
}

func TestFrontierStory16(t *testing.T) {
	keep := t.TempDir()
	m, o := storyGrid(t, keep)
	var made, reused int
	o.Progress = func(e frontier.Event) {
		t.Logf("%s %d/%d %s reused %v took %v", e.Stage, e.Done, e.Total, e.File, e.Reused, e.Took)
		if e.Stage == frontier.StageMake {
			if e.Reused {
				reused++
			} else {
				made++
			}
		}
	}
	res, err := frontier.Run(context.Background(), m, o)
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Candidates) != 4 || made != 4 || reused != 0 {
		t.Fatalf("%d candidates, %d made, %d reused; want 4, 4, 0", len(res.Candidates), made, reused)
	}
	// The unpruned model, once scored, loses the block BI ranks lowest.
	cal, _ := runner.CalibrationFile(fixture.Asset(t, "text/gutenberg/pg1342.txt"))
	rep, _, err := m.Score(context.Background(), prune.ScoreOptions{Calibration: cal, Run: o.Run})
	if err != nil {
		t.Fatal(err)
	}
	want, err := m.Select(rep, prune.Selection{Count: 1, Protect: o.Protect})
	if err != nil {
		t.Fatal(err)
	}
	mtimes := map[string]time.Time{}
	for _, c := range res.Candidates {
		st, err := os.Stat(c.File)
		if err != nil {
			t.Fatalf("%s %v: %v", c.Type, c.Removed, err)
		}
		mtimes[c.File] = st.ModTime()
		if c.Bytes != st.Size() {
			t.Errorf("%s: %d bytes reported, the file has %d", c.File, c.Bytes, st.Size())
		}
		if filepath.Dir(c.File) != keep {
			t.Errorf("%s is not in the keep folder %s", c.File, keep)
		}
		switch {
		case c.Blocks == 0 && len(c.Removed) != 0, c.Blocks == 1 && !slices.Equal(c.Removed, want):
			t.Errorf("%s %s: removed %v, want %v for %d blocks", c.File, c.Type, c.Removed, want, c.Blocks)
		}
		if c.Blocks == 0 && c.Type == "F16" {
			// The F16 model quantized to F16 is the original: no divergence.
			if c.KLD > 1e-6 || c.SameTop != 1 || math.Abs(c.PPL-res.Base.PPL) > 1e-6*res.Base.PPL {
				t.Errorf("unpruned F16: KLD %g, same top %g, PPL %g (base %g); want 0, 1, the base's", c.KLD, c.SameTop, c.PPL, res.Base.PPL)
			}
			if !c.Pareto {
				t.Errorf("unpruned F16 (KLD %g) is not on the front", c.KLD)
			}
		}
		if c.Blocks == 1 && !(c.KLD > 1e-3) {
			t.Errorf("%s: KLD %g with a block removed", c.File, c.KLD)
		}
		if !(c.PPTPS > 0 && c.TGTPS > 0) {
			t.Errorf("%s: speed %g / %g tok/s", c.File, c.PPTPS, c.TGTPS)
		}
	}
	if !slices.IsSortedFunc(res.Candidates, func(a, b frontier.Candidate) int { return int(a.Bytes - b.Bytes) }) {
		t.Error("candidates not sorted by size")
	}
	checkPareto(t, res.Candidates)
	// The base's perplexity is that of an independent perplexity run.
	ev, err := eval.Evaluate(context.Background(), []string{m.Path}, o.EvalText, o.Run)
	if err != nil {
		t.Fatal(err)
	}
	if math.Abs(ev[0].PPL-res.Base.PPL) > 1e-6*ev[0].PPL {
		t.Errorf("base PPL %g, perplexity run %g", res.Base.PPL, ev[0].PPL)
	}

	// A rerun with the same folder makes nothing again.
	made, reused = 0, 0
	res2, err := frontier.Run(context.Background(), m, o)
	if err != nil {
		t.Fatal(err)
	}
	if made != 0 || reused != 4 {
		t.Fatalf("rerun: %d made, %d reused; want 0, 4", made, reused)
	}
	for i, c := range res2.Candidates {
		st, err := os.Stat(c.File)
		if err != nil {
			t.Fatal(err)
		}
		if !c.Reused || !st.ModTime().Equal(mtimes[c.File]) {
			t.Errorf("rerun: %s reused %v, modified %v (was %v)", c.File, c.Reused, st.ModTime(), mtimes[c.File])
		}
		if c.KLD != res.Candidates[i].KLD {
			t.Errorf("rerun: %s KLD %g, first run %g", c.File, c.KLD, res.Candidates[i].KLD)
		}
	}

	// A file that no longer matches its sidecar is made again.
	victim := res2.Candidates[len(res2.Candidates)-1].File
	if err := os.WriteFile(victim, []byte("not a model"), 0o644); err != nil {
		t.Fatal(err)
	}
	made, reused = 0, 0
	o.NoSpeed = true
	if _, err := frontier.Run(context.Background(), m, o); err != nil {
		t.Fatal(err)
	}
	if made != 1 || reused != 3 {
		t.Errorf("after spoiling %s: %d made, %d reused; want 1, 3", victim, made, reused)
	}
}

// checkPareto recomputes the front by brute force: a candidate is on it
// when no other is at most as large and at most as divergent, and better in
// one.
func checkPareto(t *testing.T, cs []frontier.Candidate) {
	t.Helper()
	for i, a := range cs {
		dominated := false
		for j, b := range cs {
			if i != j && b.Bytes <= a.Bytes && b.KLD <= a.KLD && (b.Bytes < a.Bytes || b.KLD < a.KLD) {
				dominated = true
			}
		}
		if a.Pareto == dominated {
			t.Errorf("candidate %d (%d bytes, KLD %g): Pareto %v, dominated %v", i, a.Bytes, a.KLD, a.Pareto, dominated)
		}
	}
}

func TestMarkParetoBruteForce(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 7))
	for trial := 0; trial < 200; trial++ {
		cs := make([]frontier.Candidate, 1+rng.IntN(12))
		for i := range cs {
			// Few distinct values, so that ties in size and divergence occur.
			cs[i].Bytes = int64(1 + rng.IntN(5))
			cs[i].KLD = float64(rng.IntN(4)) / 8
		}
		frontier.MarkPareto(cs)
		checkPareto(t, cs)
		if t.Failed() {
			t.Fatalf("trial %d: %+v", trial, cs)
		}
	}
}

func TestRecommend(t *testing.T) {
	cs := []frontier.Candidate{{Bytes: 100, KLD: 0}, {Bytes: 60, KLD: 0.02}, {Bytes: 50, KLD: 0.02}, {Bytes: 40, KLD: 0.3}}
	for _, tc := range []struct {
		target int64
		want   int64 // bytes of the recommendation (0: none)
	}{{100, 100}, {99, 50}, {50, 50}, {45, 40}, {39, 0}} {
		r := frontier.Recommend(cs, tc.target)
		switch {
		case r == nil && tc.want != 0, r != nil && r.Bytes != tc.want:
			t.Errorf("target %d: got %+v, want the candidate of %d bytes", tc.target, r, tc.want)
		}
	}
}

func TestGridSkipsTypes(t *testing.T) {
	m, o := storyGrid(t, "")
	o.Types = []string{"Q4_0", "Q8_0", "IQ2_XXS", "Q8_0"}
	o.NoImatrix = true
	g, err := frontier.NewGrid(m, o)
	if err != nil {
		t.Fatal(err)
	}
	var skipped []string
	for _, s := range g.Skipped {
		skipped = append(skipped, s.Type)
	}
	// story16's FFN rows (344) are not whole Q4_0 blocks and Q4_0 has no
	// fallback; IQ2_XXS needs an importance matrix.
	if len(g.Types) != 1 || g.Types[0].Name != "Q8_0" || !slices.Equal(skipped, []string{"Q4_0", "IQ2_XXS"}) {
		t.Errorf("types %v, skipped %v; want Q8_0, and Q4_0 and IQ2_XXS skipped", g.Types, skipped)
	}
	if len(g.Candidates) != 2 || g.Cost.Models != 3 || g.Cost.ScoringPasses != 1 {
		t.Errorf("%d candidates, cost %+v", len(g.Candidates), g.Cost)
	}
	o.Remove = []int{15}
	if _, err := frontier.NewGrid(m, o); err == nil {
		t.Error("removing 15 of 16 blocks with 2 protected: no error")
	}
	o.Remove, o.Experts = []int{0}, []int{2}
	if _, err := frontier.NewGrid(m, o); err == nil || !strings.Contains(err.Error(), "not a mixture of experts") {
		t.Errorf("experts of a dense model: %v", err)
	}
}

// The expert axis on moe8: with 0 and 2 experts removed per block (and 1
// block), the experts each candidate loses are those an independent
// scoring pass ranks lowest by REAP (none from the removed block), and
// every candidate's size is its file's; the Q4_K_M files are quantized with
// the importance matrix cut like the experts.
func TestFrontierExperts(t *testing.T) {
	m, err := prune.Open(fixture.Asset(t, "models/moe8-f16.gguf"))
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	cal, err := runner.CalibrationFile(fixture.Asset(t, "text/gutenberg/pg1342.txt"))
	if err != nil {
		t.Fatal(err)
	}
	text, err := runner.TextFile(fixture.Asset(t, "text/unseen/gutenberg_tails.txt"))
	if err != nil {
		t.Fatal(err)
	}
	o := frontier.Options{
		Types: []string{"Q4_K_M"}, Remove: []int{0, 1}, Experts: []int{0, 2}, Protect: selection.Protect{First: 1, Last: 1},
		Calibration: cal, EvalText: text, Run: runner.Options{Ctx: 64, Chunks: 2, Threads: 1}, NoSpeed: true,
		Keep: t.TempDir(),
	}
	res, err := frontier.Run(context.Background(), m, o)
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Candidates) != 4 {
		t.Fatalf("%d candidates", len(res.Candidates))
	}
	rep, _, err := m.Score(context.Background(), prune.ScoreOptions{Calibration: cal, Run: o.Run, Experts: true})
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range res.Candidates {
		st, err := os.Stat(c.File)
		if err != nil || st.Size() != c.Bytes {
			t.Fatalf("%s: %v, %d bytes reported", c.File, err, c.Bytes)
		}
		if c.Experts == 0 {
			if len(c.ExpertsRemoved) != 0 {
				t.Fatalf("%s: experts removed %v", c.File, c.ExpertsRemoved)
			}
			continue
		}
		want, err := m.SelectExperts(rep, prune.ExpertSelection{Count: 2}, c.Removed)
		if err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(c.ExpertsRemoved, want) || len(want) != 8-len(c.Removed) {
			t.Fatalf("%s: removed %v, want %v", c.File, c.ExpertsRemoved, want)
		}
		if math.IsNaN(c.KLD) || c.KLD <= 0 {
			t.Fatalf("%s: KLD %g", c.File, c.KLD)
		}
	}
}

package prune_test

import (
	"context"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/ggufprune/ggufprune/bi"
	"github.com/ggufprune/ggufprune/gguf/surgery"
	"github.com/ggufprune/ggufprune/internal/fixture"
	"github.com/ggufprune/ggufprune/prune"
	"github.com/ggufprune/ggufprune/prune/eval"
	"github.com/ggufprune/ggufprune/prune/runner"
)

// Per generated mixture-of-experts architecture: every expert of every
// MoE block is scored; the lowest-scoring expert of each is removed (the
// multi-token-prediction block of glm4moe, which has no scores, loses one
// too, by its router); the file loads and decodes, and so does its Q8_0;
// where masking router logits computes removal (softmax gating without a
// routing bias), the masked run equals the written file, and elsewhere
// masking is refused.
func TestExpertArchitectures(t *testing.T) {
	ctx := context.Background()
	tok := fixture.Asset(t, "models/stories260K.gguf")
	cal, err := runner.CalibrationFile(fixture.Asset(t, "text/tinystories/tinystories_val_first100.txt"))
	if err != nil {
		t.Fatal(err)
	}
	text, err := runner.TextFile(fixture.Asset(t, "text/unseen/tinystories_last50.txt"))
	if err != nil {
		t.Fatal(err)
	}
	o := runner.Options{Ctx: 64, Chunks: 2, Threads: 2}
	tested := 0
	for _, c := range archs {
		t.Run(c.Arch, func(t *testing.T) {
			dir := t.TempDir()
			src := filepath.Join(dir, c.Arch+".gguf")
			if err := fixture.RandomModel(src, tok, c.ModelSpec); err != nil {
				t.Fatal(err)
			}
			m, err := prune.Open(src)
			if err != nil {
				t.Fatal(err)
			}
			defer m.Close()
			if m.MoE == nil {
				return
			}
			tested++
			out := filepath.Join(dir, "experts.gguf")
			res, err := prune.Run(ctx, m, prune.Options{Experts: prune.ExpertSelection{Count: 1}, Calibration: cal, Run: o, Write: prune.WriteOptions{Output: out}})
			if err != nil {
				t.Fatal(err)
			}
			if res.ExpertCount != m.MoE.Experts-1 || len(res.ExpertsRemoved) != len(m.MoE.MoEBlocks) || res.ExpertMethod != "reap" {
				t.Fatalf("%d experts left, removed %v, method %q", res.ExpertCount, res.ExpertsRemoved, res.ExpertMethod)
			}
			scored := map[int]bool{}
			for _, be := range res.Scores.Experts {
				scored[be.Block] = true
				want := be.Lowest(bi.ExpertMetrics[0], 1, nil)
				if !slices.Equal(res.ExpertsRemoved[be.Block], want) {
					t.Fatalf("block %d: removed %v, lowest %v", be.Block, res.ExpertsRemoved[be.Block], want)
				}
			}
			for _, b := range m.MoE.MoEBlocks {
				if !scored[b] && !slices.Contains(m.MTPBlocks(), b) {
					t.Fatalf("MoE block %d has no scores", b)
				}
			}
			finite(t, ctx, text, out)
			q := filepath.Join(dir, "q8.gguf")
			if _, err := prune.Run(ctx, m, prune.Options{Write: prune.WriteOptions{Output: q, Quantize: q8(t), Plan: surgery.Options{Experts: res.ExpertsRemoved}}}); err != nil {
				t.Fatal(err)
			}
			finite(t, ctx, text, q)
			if err := prune.CheckExperts(src, res.ExpertsRemoved); err != nil {
				if !strings.Contains(err.Error(), "masking experts would not compute") {
					t.Fatalf("masking refused: %v", err)
				}
				t.Logf("masking refused: %v", err)
				return
			}
			rs, err := eval.Compare(ctx, eval.Base{Model: out}, []string{src}, text, runner.Options{Ctx: 64, Chunks: 2, Threads: 2, SkipExperts: res.ExpertsRemoved})
			if err != nil {
				t.Fatal(err)
			}
			if k := rs[1].KLD; k.KLD > 1e-3 || k.SameTop < 0.99 {
				t.Fatalf("masked run against the file: KLD %g, same top %.4f", k.KLD, k.SameTop)
			}
		})
	}
	if tested < 8 {
		t.Fatalf("%d generated mixture-of-experts architectures", tested)
	}
}

// A generated model with a planted dead expert, one its routing bias keeps
// the router from ever selecting: every metric scores it 0, it is the one
// removed from every block (the random routers of these models leave other
// experts unused too, scored 0 as well: ties go to the lower index, and the
// dead expert is expert 0), and the file without it computes the
// original's logits.
func TestDeadExpert(t *testing.T) {
	ctx := context.Background()
	tok := fixture.Asset(t, "models/stories260K.gguf")
	cal, err := runner.CalibrationFile(fixture.Asset(t, "text/tinystories/tinystories_val_first100.txt"))
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range []string{"gpt-oss", "glm4moe"} {
		t.Run(a, func(t *testing.T) {
			dir := t.TempDir()
			s := spec(a, 6)
			s.DeadExperts = []int{0}
			src := filepath.Join(dir, a+".gguf")
			if err := fixture.RandomModel(src, tok, s); err != nil {
				t.Fatal(err)
			}
			m, err := prune.Open(src)
			if err != nil {
				t.Fatal(err)
			}
			defer m.Close()
			for _, metric := range []string{"reap", "frequency", "gate", "norm"} {
				out := filepath.Join(dir, metric+".gguf")
				res, err := prune.Run(ctx, m, prune.Options{Experts: prune.ExpertSelection{Count: 1, Metric: metric}, Calibration: cal,
					Run: runner.Options{Ctx: 64, Chunks: 2, Threads: 2}, Write: prune.WriteOptions{Output: out}})
				if err != nil {
					t.Fatal(err)
				}
				for _, be := range res.Scores.Experts {
					if d := be.Experts[0]; d.REAP != 0 || d.Frequency != 0 || d.Gate != 0 || d.Norm != 0 || d.Tokens != 0 {
						t.Fatalf("block %d: dead expert scored %+v", be.Block, d)
					}
					if !slices.Equal(res.ExpertsRemoved[be.Block], []int{0}) {
						t.Fatalf("%s: block %d lost %v; scores %+v", metric, be.Block, res.ExpertsRemoved[be.Block], be)
					}
				}
				if worst := maxRelDiff(t, src, out, 64); worst > 1e-5 {
					t.Fatalf("%s: logits without the dead expert differ by %g relative", metric, worst)
				}
			}
		})
	}
}

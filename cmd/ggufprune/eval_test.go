package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ggufprune/ggufprune/internal/fixture"
)

type evalJSON struct {
	Model  string
	PPL    float64
	Tokens int
	KLD    *struct {
		KLD     float64 `json:"kld"`
		SameTop float64 `json:"same_top"`
		PPLBase float64 `json:"ppl_base"`
	}
}

// eval --base compares models with the original in one pass; a model against
// itself diverges by nothing; the logits file round-trips; prune --eval
// reports the output's divergence.
func TestEvalBase(t *testing.T) {
	dir := t.TempDir()
	in := model(t, "story16-f16.gguf")
	pruned := filepath.Join(dir, "p.gguf")
	runCLI(t, "prune", "-m", in, "--layers", "6", "-o", pruned).ok(t)
	text := fixture.Asset(t, "text/unseen/gutenberg_tails.txt")
	logits := filepath.Join(dir, "base.logits")
	r := runCLI(t, "eval", "--base", in, "-m", in, "-m", pruned, "-f", text, "-c", "128", "--chunks", "3", "--kl-divergence-base", logits, "--json").ok(t)
	var rs []evalJSON
	decode(t, r.stdout, &rs)
	if len(rs) != 3 || rs[0].KLD != nil || rs[1].KLD.KLD != 0 || rs[1].KLD.SameTop != 1 || rs[2].KLD.KLD <= 0 || rs[2].KLD.PPLBase != rs[0].PPL {
		t.Fatalf("%s", r.stdout)
	}
	r = runCLI(t, "eval", "--kl-divergence-base", logits, "-m", pruned, "--json").ok(t)
	var fromFile []evalJSON
	decode(t, r.stdout, &fromFile)
	if len(fromFile) != 2 || fromFile[1].PPL != rs[2].PPL {
		t.Fatalf("%s", r.stdout)
	}
	r = runCLI(t, "eval", "--base", in, "-m", pruned, "-f", text, "-c", "128", "--chunks", "3").ok(t)
	if !strings.Contains(r.stdout, "mean KLD") || !strings.Contains(r.stdout, "median") {
		t.Fatal(r.stdout)
	}
	runCLI(t, "eval", "--kl-divergence-base", logits, "-m", pruned, "-f", text).fails(t, 2, "-f is not used")
	runCLI(t, "eval", "--base", in, "-m", pruned, "-f", text, "--kl-divergence-base", logits).fails(t, 1, "exists")
	os.WriteFile(logits, []byte("_logits_"), 0o644)
	runCLI(t, "eval", "--kl-divergence-base", logits, "-m", pruned).fails(t, 1, "not a llama-perplexity logits file")

	out := filepath.Join(dir, "q.gguf")
	r = runCLI(t, "prune", "-m", in, "--layers", "5", "-o", out, "--eval", text, "-c", "128", "--chunks", "3", "--json").ok(t)
	var sum struct{ Eval []evalJSON }
	decode(t, r.stdout, &sum)
	if len(sum.Eval) != 2 || sum.Eval[1].KLD == nil || sum.Eval[1].KLD.KLD <= 0 || sum.Eval[0].Tokens != 3*63 {
		t.Fatalf("%s", r.stdout)
	}
}

// Task accuracy through the command line, and a bad task file.
func TestEvalTasks(t *testing.T) {
	dir := t.TempDir()
	hs := filepath.Join(dir, "hs.txt")
	os.WriteFile(hs, []byte("Once upon a time, there was a little girl named Lily.\n2\nzq vex plor.\nkettle grint wob.\nShe loved to play outside in the sun.\nfrump the of.\n"), 0o644)
	m := model(t, "story16-f16.gguf")
	r := runCLI(t, "eval", "--hellaswag", hs, "-m", m, "-m", m, "-c", "128", "--json").ok(t)
	var rs []struct {
		Kind     string
		Tasks    int
		Correct  int
		Accuracy float64
	}
	decode(t, r.stdout, &rs)
	if len(rs) != 2 || rs[0].Kind != "hellaswag" || rs[0].Tasks != 1 || rs[0].Accuracy != 1 {
		t.Fatalf("%s", r.stdout)
	}
	runCLI(t, "eval", "--hellaswag", hs, "-m", m, "--winogrande", hs).fails(t, 2, "one of")
	runCLI(t, "eval", "--tasks", "3", "-m", m, "-f", hs).fails(t, 2, "--tasks goes with")
	os.WriteFile(hs, []byte("ctx\n9\na\nb\nc\nd\n"), 0o644)
	runCLI(t, "eval", "--hellaswag", hs, "-m", m).fails(t, 1, "gold ending")
}

// eval --skip gives the perplexity of the model without those blocks, as the
// written file gives it; prune --method and --heal run through the command.
func TestSkipMethodHeal(t *testing.T) {
	dir := t.TempDir()
	in := model(t, "story16-f16.gguf")
	text := fixture.Asset(t, "text/unseen/tinystories_last50.txt")
	pruned := filepath.Join(dir, "p.gguf")
	runCLI(t, "prune", "-m", in, "--layers", "3,9-10", "-o", pruned).ok(t)
	a := runCLI(t, "eval", "-m", pruned, "-f", text, "-c", "128", "--chunks", "4", "--json").ok(t)
	b := runCLI(t, "eval", "-m", in, "--skip", "3,9-10", "-f", text, "-c", "128", "--chunks", "4", "--json").ok(t)
	var ra, rb []evalJSON
	decode(t, a.stdout, &ra)
	decode(t, b.stdout, &rb)
	if ra[0].PPL != rb[0].PPL {
		t.Fatalf("perplexity %v of the file, %v skipping", ra[0].PPL, rb[0].PPL)
	}
	runCLI(t, "eval", "-m", in, "--skip", "16", "-f", text, "-c", "128").fails(t, 1, "not one of the 16 blocks")

	calib := fixture.Asset(t, "text/gutenberg/pg11.txt")
	r := runCLI(t, "prune", "-m", in, "-f", calib, "-c", "64", "--chunks", "2", "--remove", "2", "--method", "ppl", "--dry-run", "--json").ok(t)
	var sum struct {
		Method  string
		Removed []int
		Search  struct {
			Steps []struct{ Block int }
			Cost  struct{ Passes int }
		}
	}
	decode(t, r.stdout, &sum)
	if sum.Method != "ppl" || len(sum.Removed) != 2 || len(sum.Search.Steps) != 2 || sum.Search.Cost.Passes != 15 {
		t.Fatalf("%s", r.stdout)
	}
	runCLI(t, "prune", "-m", in, "--remove", "2", "--method", "sleb", "--dry-run").fails(t, 2, "unknown method")
	runCLI(t, "prune", "-m", in, "--remove", "2", "--method", "greedy", "--plot", filepath.Join(dir, "x.svg"), "--dry-run").fails(t, 2, "--plot")

	healed := filepath.Join(dir, "h.gguf")
	r = runCLI(t, "prune", "-m", in, "--layers", "4-5", "--heal", "--heal-maps", "1", "--heal-fit", "output", "-f", calib, "-c", "64", "--chunks", "4", "-o", healed, "--json").ok(t)
	var hs struct {
		Heal struct {
			Runs []struct {
				Block    int
				Tensors  []string
				Residual float64
				Form     string
			}
			Cost struct{ Passes int }
		}
	}
	decode(t, r.stdout, &hs)
	if len(hs.Heal.Runs) != 1 || hs.Heal.Runs[0].Block != 3 || hs.Heal.Runs[0].Tensors[0] != "blk.3.ffn_down.weight" || hs.Heal.Runs[0].Form != "output" || hs.Heal.Runs[0].Residual >= 1 || hs.Heal.Cost.Passes != 2 {
		t.Fatalf("%s", r.stdout)
	}
	r = runCLI(t, "prune", "-m", in, "--layers", "0,4-5", "--heal", "--dry-run").ok(t)
	if !strings.Contains(r.stdout, "would heal") || !strings.Contains(r.stdout, "not healed") {
		t.Fatal(r.stdout)
	}
	runCLI(t, "eval", "-m", healed, "-f", text, "-c", "128", "--chunks", "2").ok(t)
}

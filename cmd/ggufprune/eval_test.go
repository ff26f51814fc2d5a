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

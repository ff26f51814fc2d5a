package prune_test

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/ggufprune/ggufprune/gguf/blocks"
	"github.com/ggufprune/ggufprune/gguf/surgery"
	"github.com/ggufprune/ggufprune/internal/fixture"
	"github.com/ggufprune/ggufprune/llamacpp"
	"github.com/ggufprune/ggufprune/llamacpp/arch"
	"github.com/ggufprune/ggufprune/prune"
	"github.com/ggufprune/ggufprune/prune/eval"
	"github.com/ggufprune/ggufprune/prune/runner"
	"github.com/ggufprune/ggufprune/prune/selection"
)

// archCase is one generated architecture and what the test shows of it.
// The table of architectures in docs/architectures.md is rendered from these (see
// TestArchitectureTable), so the two cannot drift.
type archCase struct {
	fixture.ModelSpec
	What string // the generated model, for docs/architectures.md
	// NoScore is why score refuses the architecture, by name ("" when it
	// scores): capture needs one hidden state per token at every block
	// boundary.
	NoScore string
	// Middle is the refusal of removing block 1 alone ("" when it is
	// written); Forced says what --force then does: "warns" (written,
	// loads, with a warning that kept blocks changed kind) or "refused"
	// (the file would not load).
	Middle, Forced string
	// Invalid are blocks whose removal is refused with InvalidWhy (a rule
	// llama.cpp would abort on).
	Invalid    []int
	InvalidWhy string
	// MTP are the multi-token-prediction blocks, which a decode does not
	// run and no removal may touch.
	MTP []int
}

func spec(arch string, blocks int, identity ...int) fixture.ModelSpec {
	return fixture.ModelSpec{Arch: arch, Blocks: blocks, Embd: 64, FF: 128, Heads: 4, KVHeads: 2, Ctx: 256, Identity: identity}
}

const wholeRuns = "whole runs of"

var archs = []archCase{
	{ModelSpec: spec("llama", 6, 2, 3), What: "attention, gated FFN"},
	{ModelSpec: spec("mistral3", 6, 2, 3), What: "llama's blocks"},
	{ModelSpec: spec("qwen2", 6, 2, 3), What: "biases on Q, K, V"},
	{ModelSpec: spec("qwen3", 6, 2, 3), What: "Q and K norms per head"},
	{ModelSpec: spec("qwen3moe", 6, 2, 3), What: "4 experts, 2 used"},
	{ModelSpec: spec("granite", 6, 2, 3), What: "llama's blocks with four scales"},
	{ModelSpec: spec("olmo2", 6, 2, 3), What: "norms after attention and FFN"},
	{ModelSpec: spec("starcoder2", 6, 2, 3), What: "layer norms and biases, ungated FFN"},
	{ModelSpec: spec("phi3", 6, 2, 3), What: "fused QKV and gate-and-up projections"},
	{ModelSpec: spec("cohere2", 10, 1, 2, 3, 4), What: "parallel attention and FFN; global attention every 4th block",
		Middle: wholeRuns + " 4", Forced: "warns"},
	// llama.cpp gives exaone4 sliding windows only with 64 blocks.
	{ModelSpec: spec("exaone4", 10, 1, 2, 3, 4), What: "post-norms, Q and K norms (no sliding window below 64 blocks)"},
	{ModelSpec: spec("gemma2", 6, 2, 3), What: "sandwich norms; sliding window every 2nd block; tied output",
		Middle: wholeRuns + " 2", Forced: "warns", Invalid: []int{1, 2, 3, 4, 5}, InvalidWhy: "attention-pattern"},
	{ModelSpec: spec("gemma3", 12, 1, 2, 3, 4, 5, 6), What: "gemma2's with Q and K norms; global attention every 6th block",
		Middle: wholeRuns + " 6", Forced: "warns"},
	{ModelSpec: spec("smollm3", 8, 2, 3, 4, 5), What: "no RoPE in every 4th block",
		Middle: wholeRuns + " 4", Forced: "warns"},
	{ModelSpec: spec("gpt-oss", 6, 2, 3), What: "attention sinks, biased experts; sliding window every 2nd block",
		Middle: wholeRuns + " 2", Forced: "warns"},
	{ModelSpec: spec("deepseek2", 6, 2, 3), What: "low-rank attention; 2 dense blocks, then experts with a shared expert"},
	{ModelSpec: spec("glm4moe", 6, 2, 3), What: "1 dense block, then experts with a shared expert; the last block is multi-token prediction", MTP: []int{5}},
	{ModelSpec: spec("llama4", 8, 1, 2, 3, 4), What: "experts every 2nd block, no RoPE every 4th",
		Middle: wholeRuns + " 4", Forced: "refused", Invalid: []int{3, 4, 5, 6, 7}, InvalidWhy: "attention-pattern"},
	{ModelSpec: spec("qwen3next", 8, 1, 2, 3, 4), What: "gated delta-net, full attention every 4th block; experts with a gated shared expert",
		Middle: wholeRuns + " 4", Forced: "refused", Invalid: []int{3, 4, 5, 6, 7}, InvalidWhy: "hybrid-kinds"},
	{ModelSpec: spec("granitehybrid", 6, 2, 3), What: "mamba2 or attention (per-layer KV heads), gated FFN",
		Invalid: []int{2, 5}, InvalidWhy: "hybrid-kinds"},
	{ModelSpec: func() fixture.ModelSpec { s := spec("granitehybrid", 6, 2, 3); s.Experts = 4; return s }(), What: "granitehybrid's mixture-of-experts form: 4 experts, 2 used, and a shared expert",
		Invalid: []int{2, 5}, InvalidWhy: "hybrid-kinds"},
	{ModelSpec: spec("nemotron_h", 6, 2, 3), What: "mamba2, attention or FFN-only blocks (per-layer KV heads and FFN widths)",
		Invalid: []int{1, 3}, InvalidWhy: "hybrid-kinds"},
	{ModelSpec: spec("nemotron_h_moe", 6, 2, 3), What: "nemotron_h whose FFN blocks are mixtures of experts: 4 ReLU² experts (sigmoid routing, selection bias), 2 used, a shared expert",
		Invalid: []int{1, 3}, InvalidWhy: "hybrid-kinds"},
	{ModelSpec: spec("falcon-h1", 6, 2, 3), What: "attention and mamba2 in parallel, gated FFN"},
	{ModelSpec: spec("lfm2", 6, 2, 3), What: "short convolutions or attention (per-layer KV heads), gated FFN", NoScore: "no block outputs named",
		Invalid: []int{2, 5}, InvalidWhy: "hybrid-kinds"},
	// Identity blocks need n_ff ≥ 5.41·n_embd (fixture.gemma3nIdentityFFN).
	{ModelSpec: func() fixture.ModelSpec { s := spec("gemma3n", 10, 1, 2, 3, 4, 5); s.FF = 512; return s }(),
		What:    "AltUp (4 residual streams), LAuReL, per-layer inputs whose global tensors hold a slice per block; global attention every 5th block",
		NoScore: "4 residual streams", Middle: wholeRuns + " 5", Forced: "warns"},
}

// Per architecture: the generated model decodes; its identity blocks score
// BI 0 and are the ones removed (or, where score refuses the architecture,
// are removed by index); the pruned file computes the original's logits,
// and pruned to Q8_0 it loads and decodes; an ordinary middle block is
// removed, or refused before anything is written (and, forced, written
// with a warning or refused where llama.cpp would not load it); removals
// llama.cpp would abort on are refused.
func TestArchitectures(t *testing.T) {
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
	for _, c := range archs {
		t.Run(c.Arch, func(t *testing.T) {
			dir := t.TempDir()
			src := filepath.Join(dir, c.Arch+".gguf")
			if err := fixture.RandomModel(src, tok, c.ModelSpec); err != nil {
				t.Fatal(err)
			}
			finite(t, ctx, text, src)
			m, err := prune.Open(src)
			if err != nil {
				t.Fatal(err)
			}
			defer m.Close()
			out := filepath.Join(dir, "pruned.gguf")
			var res *prune.Result
			if c.NoScore != "" {
				_, _, err := m.Score(ctx, prune.ScoreOptions{Calibration: cal, Run: o})
				if !errors.Is(err, llamacpp.ErrCapture) || !strings.Contains(err.Error(), c.Arch) {
					t.Fatalf("score: %v", err)
				}
				res, err = prune.Run(ctx, m, prune.Options{Layers: c.Identity, Write: prune.WriteOptions{Output: out}})
				if err != nil {
					t.Fatal(err)
				}
			} else {
				rep, _, err := m.Score(ctx, prune.ScoreOptions{Calibration: cal, Run: o})
				if err != nil {
					t.Fatal(err)
				}
				if len(rep.Blocks) != m.ScoredBlocks() {
					t.Fatalf("%d blocks scored of %d", len(rep.Blocks), m.ScoredBlocks())
				}
				for _, b := range rep.Blocks {
					if planted := slices.Contains(c.Identity, b.Index); planted != (b.BI == 0) {
						t.Fatalf("block %d: BI %g", b.Index, b.BI)
					}
				}
				// Index-pattern architectures refuse blocks chosen one by
				// one unless forced; the planted run is a whole period.
				res, err = prune.Run(ctx, m, prune.Options{Select: prune.Selection{Count: len(c.Identity), Protect: selection.Protect{First: 1, Last: 1}},
					Calibration: cal, Run: o, Write: prune.WriteOptions{Output: out, Plan: surgery.Options{Force: c.Middle != ""}}})
				if err != nil {
					t.Fatal(err)
				}
			}
			if !reflect.DeepEqual(res.Removed, c.Identity) || len(res.Warnings) != 0 {
				t.Fatalf("removed %v, warnings %q", res.Removed, res.Warnings)
			}
			if worst := maxRelDiff(t, src, out, 64); worst > 1e-4 {
				t.Fatalf("pruned logits differ by %g relative", worst)
			}
			// The same removal, quantized to Q8_0 on the way.
			q := filepath.Join(dir, "q8.gguf")
			if _, err := prune.Run(ctx, m, prune.Options{Layers: res.Removed, Write: prune.WriteOptions{Output: q, Quantize: q8(t)}}); err != nil {
				t.Fatal(err)
			}
			finite(t, ctx, text, q)
			if c.Invalid != nil {
				bad := filepath.Join(dir, "invalid.gguf")
				_, err := prune.Run(ctx, m, prune.Options{Layers: c.Invalid, Write: prune.WriteOptions{Output: bad, Plan: surgery.Options{Force: true}}})
				if !errors.Is(err, arch.ErrRule) || !strings.Contains(err.Error(), c.InvalidWhy) {
					t.Fatalf("removing %v: %v", c.Invalid, err)
				}
				if _, serr := os.Stat(bad); !os.IsNotExist(serr) {
					t.Fatalf("refused, yet %s: %v", bad, serr)
				}
			}
			if !slices.Equal(m.MTPBlocks(), c.MTP) {
				t.Fatalf("multi-token-prediction blocks %v", m.MTPBlocks())
			}
			for _, mtp := range m.MTPBlocks() {
				if _, err := prune.Run(ctx, m, prune.Options{Layers: []int{mtp}, Write: prune.WriteOptions{DryRun: true}}); err == nil || !strings.Contains(err.Error(), "multi-token-prediction") {
					t.Fatalf("removing multi-token-prediction block %d: %v", mtp, err)
				}
			}
			// An ordinary middle block.
			middle := filepath.Join(dir, "middle.gguf")
			_, err = prune.Run(ctx, m, prune.Options{Layers: []int{1}, Write: prune.WriteOptions{Output: middle}})
			if c.Middle != "" {
				if !errors.Is(err, arch.ErrIndexPattern) || !strings.Contains(err.Error(), c.Middle) {
					t.Fatalf("removing block 1: %v", err)
				}
				if _, serr := os.Stat(middle); !os.IsNotExist(serr) {
					t.Fatalf("refused, yet %s: %v", middle, serr)
				}
				forced(t, ctx, m, c, middle)
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			finite(t, ctx, text, middle)
		})
	}
}

// forced removes block 1 with force: written with a warning, and loads, or
// refused with the pattern's valid removals where llama.cpp would not load
// the result.
func forced(t *testing.T, ctx context.Context, m *prune.Model, c archCase, out string) {
	t.Helper()
	res, err := prune.Run(ctx, m, prune.Options{Layers: []int{1}, Write: prune.WriteOptions{Output: out, Plan: surgery.Options{Force: true}}})
	switch c.Forced {
	case "warns":
		if err != nil {
			t.Fatal(err)
		}
		if len(res.Warnings) != 1 || !strings.Contains(res.Warnings[0], "changes its kind") {
			t.Fatalf("forced: warnings %q", res.Warnings)
		}
		lm, err := llamacpp.LoadModel(out, llamacpp.ModelParams{})
		if err != nil {
			t.Fatal(err)
		}
		lm.Close()
	case "refused":
		if !errors.Is(err, arch.ErrIndexPattern) || !strings.Contains(err.Error(), "would not load") || !strings.Contains(err.Error(), c.Middle) {
			t.Fatalf("forced: %v", err)
		}
		if _, serr := os.Stat(out); !os.IsNotExist(serr) {
			t.Fatalf("refused, yet %s: %v", out, serr)
		}
	default:
		t.Fatalf("forced: %q is neither warns nor refused", c.Forced)
	}
}

// finite evaluates the models and fails on a perplexity that is not finite.
func finite(t *testing.T, ctx context.Context, text *runner.Text, models ...string) {
	t.Helper()
	rs, err := eval.Evaluate(ctx, models, text, runner.Options{Ctx: 64, Chunks: 2})
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range rs {
		if math.IsNaN(r.PPL) || math.IsInf(r.PPL, 0) {
			t.Fatalf("%s: perplexity %v", r.Model, r.PPL)
		}
	}
}

func q8(t *testing.T) llamacpp.QuantType {
	q, ok := llamacpp.LookupQuantType("Q8_0")
	if !ok {
		t.Fatal("no Q8_0")
	}
	return q
}

// maxRelDiff decodes the same tokens with two models and returns the
// largest logit difference relative to the largest logit.
func maxRelDiff(t *testing.T, a, b string, n int) float64 {
	t.Helper()
	logits := func(path string) [][]float32 {
		lm, err := llamacpp.LoadModel(path, llamacpp.ModelParams{})
		if err != nil {
			t.Fatal(err)
		}
		defer lm.Close()
		c, err := lm.NewContext(llamacpp.ContextParams{NCtx: n, Threads: 2})
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		toks, _ := lm.Tokenize("Once upon a time, there was a little girl who liked to play in the park with her dog.", true)
		if err := c.Decode(toks, 0, 0); err != nil {
			t.Fatal(err)
		}
		var out [][]float32
		for i := range toks {
			l, _ := c.Logits(i)
			out = append(out, l)
		}
		return out
	}
	return fixture.MaxRelDiff(logits(a), logits(b))
}

var updateREADME = flag.Bool("update-readme", false, "rewrite the table of architectures in docs/architectures.md from archs")

// The table of architectures in docs/architectures.md is archs, rendered: this test fails
// when they differ (go test ./prune -run ArchitectureTable -update-readme
// rewrites it).
func TestArchitectureTable(t *testing.T) {
	const begin, end = "<!-- architectures: generated from prune/arch_test.go -->\n", "<!-- end of architectures -->\n"
	path := filepath.Join(fixture.Root(), "docs", "architectures.md")
	readme, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	before, rest, ok := strings.Cut(string(readme), begin)
	_, after, ok2 := strings.Cut(rest, end)
	if !ok || !ok2 {
		t.Fatalf("docs/architectures.md has no %q … %q section", begin, end)
	}
	want := archTable()
	if *updateREADME {
		if err := os.WriteFile(path, []byte(before+begin+want+end+after), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	if got, _, _ := strings.Cut(rest, end); got != want {
		t.Fatalf("docs/architectures.md's table of architectures is not archs; run go test ./prune -run ArchitectureTable -update-readme\ngot:\n%s\nwant:\n%s", got, want)
	}
}

// archTable renders archs as Markdown.
func archTable() string {
	var b strings.Builder
	b.WriteString("| architecture | generated model | score | planted identity blocks | block 1 alone | refused |\n|---|---|---|---|---|---|\n")
	for _, c := range archs {
		score := "yes"
		if c.NoScore != "" {
			score = "refused: " + c.NoScore
		}
		identity := "removed, same logits; Q8_0 loads"
		if c.NoScore != "" {
			identity = "removed by index, same logits; Q8_0 loads"
		}
		identity = fmt.Sprintf("%d of %d: %s", len(c.Identity), c.Blocks, identity)
		if len(c.Identity) == 0 {
			identity = "—"
		}
		middle := "removed; loads"
		switch {
		case c.Middle != "" && c.Forced == "warns":
			middle = "refused: " + c.Middle + "; forced: written with a warning, loads"
		case c.Middle != "":
			middle = "refused: " + c.Middle + "; forced: refused, would not load"
		}
		var refused []string
		if c.MTP != nil {
			refused = append(refused, fmt.Sprintf("removing %s (multi-token prediction)", blocks.FormatList(c.MTP)))
		}
		if c.Invalid != nil {
			refused = append(refused, fmt.Sprintf("removing %s (rule %s: llama.cpp would abort)", blocks.FormatList(c.Invalid), c.InvalidWhy))
		}
		fmt.Fprintf(&b, "| %s | %d blocks: %s | %s | %s | %s | %s |\n", c.Arch, c.Blocks, c.What, score, identity, middle, strings.Join(refused, "; "))
	}
	return b.String()
}

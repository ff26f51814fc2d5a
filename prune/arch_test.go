package prune_test

import (
	"context"
	"errors"
	"math"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/ggufprune/ggufprune/gguf"
	"github.com/ggufprune/ggufprune/internal/fixture"
	"github.com/ggufprune/ggufprune/llamacpp"
	"github.com/ggufprune/ggufprune/prune"
)

// archs are the architectures generated so far, each with two planted
// identity blocks.
var archs = []fixture.ModelSpec{
	{Arch: "llama", Blocks: 6, Embd: 64, FF: 128, Heads: 4, KVHeads: 2, Ctx: 256, Identity: []int{2, 3}},
	{Arch: "qwen2", Blocks: 6, Embd: 64, FF: 128, Heads: 4, KVHeads: 2, Ctx: 256, Identity: []int{2, 3}},
	{Arch: "qwen3", Blocks: 6, Embd: 64, FF: 128, Heads: 4, KVHeads: 2, Ctx: 256, Identity: []int{2, 3}},
	{Arch: "mistral3", Blocks: 6, Embd: 64, FF: 128, Heads: 4, KVHeads: 2, Ctx: 256, Identity: []int{2, 3}},
	{Arch: "granite", Blocks: 6, Embd: 64, FF: 128, Heads: 4, KVHeads: 2, Ctx: 256, Identity: []int{2, 3}},
	{Arch: "olmo2", Blocks: 6, Embd: 64, FF: 128, Heads: 4, KVHeads: 2, Ctx: 256, Identity: []int{2, 3}},
	{Arch: "starcoder2", Blocks: 6, Embd: 64, FF: 128, Heads: 4, KVHeads: 2, Ctx: 256, Identity: []int{2, 3}},
	// Sliding-window and global attention alternate: runs of 2.
	{Arch: "gemma2", Blocks: 6, Embd: 64, FF: 128, Heads: 4, KVHeads: 2, Ctx: 256, Identity: []int{2, 3}},
	{Arch: "qwen3moe", Blocks: 6, Embd: 64, FF: 128, Heads: 4, KVHeads: 2, Ctx: 256, Identity: []int{2, 3}},
	// Two dense blocks, then mixture-of-experts blocks: removing block 1
	// (in the dense lead) must shorten the lead.
	{Arch: "deepseek2", Blocks: 6, Embd: 64, FF: 128, Heads: 4, KVHeads: 4, Ctx: 256, Identity: []int{2, 3}},
	// Every 6th block has global attention, the others a sliding window.
	{Arch: "gemma3", Blocks: 12, Embd: 64, FF: 128, Heads: 4, KVHeads: 2, Ctx: 256, Identity: []int{1, 2, 3, 4, 5, 6}},
	// Every 4th block has global attention.
	{Arch: "cohere2", Blocks: 10, Embd: 64, FF: 128, Heads: 4, KVHeads: 2, Ctx: 256, Identity: []int{1, 2, 3, 4}},
	{Arch: "exaone4", Blocks: 10, Embd: 64, FF: 128, Heads: 4, KVHeads: 2, Ctx: 256, Identity: []int{1, 2, 3, 4}},
	// Every 4th block has no RoPE: only whole runs of 4 keep the pattern.
	{Arch: "smollm3", Blocks: 8, Embd: 64, FF: 128, Heads: 4, KVHeads: 2, Ctx: 256, Identity: []int{2, 3, 4, 5}},
}

// Per architecture: the generated model decodes; its identity blocks score
// BI 0 and are the ones removed; the pruned file computes the original's
// logits; an ordinary middle block can be removed; the result quantizes to
// Q8_0 and loads.
func TestArchitectures(t *testing.T) {
	ctx := context.Background()
	tok := fixture.Asset(t, "models/stories260K.gguf")
	cal, err := prune.CalibrationFile(fixture.Asset(t, "text/tinystories/tinystories_val_first100.txt"))
	if err != nil {
		t.Fatal(err)
	}
	o := prune.RunOptions{Ctx: 64, Chunks: 2, Threads: 2}
	for _, spec := range archs {
		t.Run(spec.Arch, func(t *testing.T) {
			dir := t.TempDir()
			src := filepath.Join(dir, spec.Arch+".gguf")
			if err := fixture.RandomModel(src, tok, spec); err != nil {
				t.Fatal(err)
			}
			m, err := prune.Open(src)
			if err != nil {
				t.Fatal(err)
			}
			defer m.Close()
			rep, _, err := m.Score(ctx, cal, o, false)
			if err != nil {
				t.Fatal(err)
			}
			for _, b := range rep.Blocks {
				if planted := slices.Contains(spec.Identity, b.Index); planted != (b.BI == 0) {
					t.Fatalf("block %d: BI %g", b.Index, b.BI)
				}
			}
			// Index-pattern architectures refuse blocks chosen one by one
			// unless forced; the planted run is a whole period.
			indexed := m.CheckSelectable(false) != nil
			out := filepath.Join(dir, "pruned.gguf")
			res, err := prune.Run(ctx, m, prune.Options{Select: prune.Selection{Count: len(spec.Identity), Protect: prune.Protect{First: 1, Last: 1}},
				Calibration: cal, Run: o, Write: prune.WriteOptions{Output: out, Force: indexed}})
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(res.Removed, spec.Identity) {
				t.Fatalf("removed %v", res.Removed)
			}
			if worst := maxRelDiff(t, src, out, 64); worst > 1e-4 {
				t.Fatalf("pruned logits differ by %g relative", worst)
			}
			// An ordinary middle block: written, or (index patterns) refused
			// before anything is written, saying which removals keep it.
			middle := filepath.Join(dir, "middle.gguf")
			_, err = prune.Run(ctx, m, prune.Options{Layers: []int{1}, Write: prune.WriteOptions{Output: middle}})
			if indexed {
				if !errors.Is(err, gguf.ErrIndexPattern) || !strings.Contains(err.Error(), "whole runs of") {
					t.Fatalf("removing block 1: %v", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			q := filepath.Join(dir, "q8.gguf")
			if _, err := prune.Run(ctx, m, prune.Options{Layers: []int{1}, Write: prune.WriteOptions{Output: q, Quantize: q8(t)}}); err != nil {
				t.Fatal(err)
			}
			text, _ := prune.TextFile(fixture.Asset(t, "text/unseen/tinystories_last50.txt"))
			rs, err := prune.Evaluate(ctx, []string{src, middle, q}, text, prune.RunOptions{Ctx: 64, Chunks: 2})
			if err != nil {
				t.Fatal(err)
			}
			for _, r := range rs {
				if math.IsNaN(r.PPL) || math.IsInf(r.PPL, 0) {
					t.Fatalf("%s: perplexity %v", r.Model, r.PPL)
				}
			}
		})
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
	x, y := logits(a), logits(b)
	var worst float64
	for i := range x {
		var d, s float64
		for j := range x[i] {
			d = math.Max(d, math.Abs(float64(x[i][j]-y[i][j])))
			s = math.Max(s, math.Abs(float64(x[i][j])))
		}
		worst = math.Max(worst, d/s)
	}
	return worst
}

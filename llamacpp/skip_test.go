package llamacpp_test

import (
	"context"
	"fmt"
	"math"
	"path/filepath"
	"testing"

	"github.com/ggufprune/ggufprune/internal/fixture"
	"github.com/ggufprune/ggufprune/llamacpp"
	"github.com/ggufprune/ggufprune/prune/eval"
)

// Skipping blocks at run time computes what the file without those blocks
// computes: the same logits (1e-5 relative) and perplexity (1e-6), for
// several sets of blocks, the first and the last among them.
func TestSkipEqualsPrunedFile(t *testing.T) {
	evalText := text(t, "text/unseen/tinystories_last50.txt", 40000)
	for _, c := range []struct {
		model string
		sets  [][]int
	}{
		{"story16-f16.gguf", [][]int{{5}, {2, 4, 5, 6}, {0}, {15}, {1, 2, 3}, {8, 14, 15}}},
		{"stories260K.gguf", [][]int{{2}, {4}, {1, 3}}},
	} {
		src := fixture.Asset(t, "models/"+c.model)
		m := load(t, src)
		toks, err := m.Tokenize(evalText, true)
		if err != nil {
			t.Fatal(err)
		}
		const nCtx = 128
		chunks, _ := m.Chunks(toks, nCtx, 3)
		skipCtx, err := m.NewContext(llamacpp.ContextParams{NCtx: nCtx, Threads: 2, Capture: true})
		if err != nil {
			t.Fatal(err)
		}
		for _, set := range c.sets {
			t.Run(fmt.Sprintf("%s-%v", c.model, set), func(t *testing.T) {
				pruned := filepath.Join(t.TempDir(), "p.gguf")
				fixture.WritePruned(t, src, pruned, set...)
				pm := load(t, pruned)
				pctx := newCtx(t, pm, nCtx, false)
				if err := skipCtx.SetSkip(set); err != nil {
					t.Fatal(err)
				}
				var worst float64
				for _, ch := range chunks {
					for _, cx := range []*llamacpp.Context{skipCtx, pctx} {
						cx.ClearMemory()
						if err := cx.Decode(ch, 0, nCtx/2); err != nil {
							t.Fatal(err)
						}
					}
					for i := nCtx / 2; i < nCtx; i++ {
						a, err := skipCtx.Logits(i)
						if err != nil {
							t.Fatal(err)
						}
						b, _ := pctx.Logits(i)
						var diff, scale float64
						for j := range a {
							diff = math.Max(diff, math.Abs(float64(a[j]-b[j])))
							scale = math.Max(scale, math.Abs(float64(b[j])))
						}
						worst = math.Max(worst, diff/scale)
					}
				}
				if worst > 1e-5 {
					t.Fatalf("logits differ by %g relative", worst)
				}
				p1, err := eval.Perplexity(context.Background(), skipCtx, toks, 3, nil)
				if err != nil {
					t.Fatal(err)
				}
				p2, _ := eval.Perplexity(context.Background(), pctx, toks, 3, nil)
				if math.Abs(p1.PPL/p2.PPL-1) > 1e-6 {
					t.Fatalf("perplexity %v skipping, %v pruned", p1.PPL, p2.PPL)
				}
				t.Logf("logits within %.1g; perplexity %.6f", worst, p1.PPL)
			})
		}
		skipCtx.SetSkip(nil)
		if err := skipCtx.SetSkip([]int{99}); err == nil {
			t.Fatal("skipping a block the model does not have")
		}
		skipCtx.Close()
	}
}

// A context that stops after the last block still captures every boundary
// (the same hidden states as a full decode) and has no logits.
func TestNoHead(t *testing.T) {
	m := load(t, fixture.Asset(t, "models/story16-f16.gguf"))
	toks, _ := m.Tokenize(text(t, "text/unseen/tinystories_last50.txt", 5000), true)
	run := func(noHead bool) [][]float32 {
		c := newCtx(t, m, 64, true)
		var got [][]float32
		c.CaptureHidden(func(b int, h []float32, nEmbd, nTokens int) { got = append(got, append([]float32(nil), h...)) })
		if err := c.SetNoHead(noHead); err != nil {
			t.Fatal(err)
		}
		if err := c.Decode(toks[:64], 0, 0); err != nil {
			t.Fatal(err)
		}
		if _, err := c.Logits(0); noHead == (err == nil) {
			t.Fatalf("no head %v: logits error %v", noHead, err)
		}
		return got
	}
	full, cut := run(false), run(true)
	if len(full) != 17 || len(cut) != 17 {
		t.Fatalf("%d and %d boundaries", len(full), len(cut))
	}
	for i := range full {
		for j := range full[i] {
			if full[i][j] != cut[i][j] {
				t.Fatalf("boundary %d differs", i)
			}
		}
	}
}

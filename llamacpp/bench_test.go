package llamacpp_test

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	"github.com/ggufprune/ggufprune/bi"
	"github.com/ggufprune/ggufprune/internal/fixture"
	"github.com/ggufprune/ggufprune/llamacpp"
	"github.com/ggufprune/ggufprune/prune/eval"
)

// BenchmarkScoreCapture decodes the same chunks of the deepest shipped model
// as scoring does (hidden-state capture into BI accumulators, no output
// head) and as llama-perplexity does (no callback, logits for the second
// half of each chunk), alternating, and reports both rates and their ratio
// (target ≥ 1.0: scoring costs no more than a perplexity pass).
func BenchmarkScoreCapture(b *testing.B) {
	m := load(b, fixture.Asset(b, "models/story16-f16.gguf"))
	benchCapture(b, m, 256, 16, captureOptions{})
}

// BenchmarkScoreExperts is BenchmarkScoreCapture on the shipped
// mixture-of-experts model with its experts scored too (score --experts:
// the routing of every MoE block captured into expert accumulators)
// (target ≥ 1/1.1: scoring experts costs at most 1.1× a plain decode).
func BenchmarkScoreExperts(b *testing.B) {
	m := load(b, fixture.Asset(b, "models/moe8-f16.gguf"))
	benchCapture(b, m, 256, 16, captureOptions{Experts: true})
}

// captureOptions say what benchCapture captures besides hidden states.
type captureOptions struct {
	Experts bool // the routing of every mixture-of-experts block
}

// BenchmarkPerplexity is the rate of eval on the deepest shared model.
func BenchmarkPerplexity(b *testing.B) {
	m := load(b, fixture.Asset(b, "models/story16-f16.gguf"))
	const nCtx, nChunks = 256, 16
	tokens, err := m.Tokenize(text(b, "text/unseen/gutenberg_tails.txt", 200000), true)
	if err != nil {
		b.Fatal(err)
	}
	ctx := newCtx(b, m, nCtx, false)
	b.ResetTimer()
	start := time.Now()
	for i := 0; i < b.N; i++ {
		if _, err := eval.Perplexity(context.Background(), ctx, tokens, nChunks, nil); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N*nCtx*nChunks)/time.Since(start).Seconds(), "tok/s")
}

// BenchmarkScoreCaptureWide is BenchmarkScoreCapture on a random-weight llama
// 8 blocks × 1024 wide (GQA 16/4 heads, FFN 2816) with a 32,000-token
// vocabulary (llama-2-tiny-random's tokenizer), the ratio of a real model:
// there the output head is a real share of the work, and scoring skips it.
func BenchmarkScoreCaptureWide(b *testing.B) {
	path := filepath.Join(b.TempDir(), "wide.gguf")
	spec := fixture.ModelSpec{Blocks: 8, Embd: 1024, FF: 2816, Heads: 16, KVHeads: 4, Ctx: 512}
	if err := fixture.RandomModel(path, fixture.Asset(b, "models/llama-2-tiny-random.gguf"), spec); err != nil {
		b.Fatal(err)
	}
	m := load(b, path)
	benchCapture(b, m, 256, 4, captureOptions{})
}

// benchCapture decodes nChunks chunks of nCtx tokens of Pride and Prejudice
// with hidden-state capture into BI accumulators and without any callback,
// alternating, and reports both rates and their ratio.
func benchCapture(b *testing.B, m *llamacpp.Model, nCtx, nChunks int, o captureOptions) {
	tokens, err := m.Tokenize(text(b, "text/gutenberg/pg1342.txt", 200000), true)
	if err != nil {
		b.Fatal(err)
	}
	chunks, err := m.Chunks(tokens, nCtx, nChunks)
	if err != nil {
		b.Fatal(err)
	}
	capture := newCtx(b, m, nCtx, true)
	if err := capture.SetNoHead(true); err != nil {
		b.Fatal(err)
	}
	plain := newCtx(b, m, nCtx, false)
	var tCapture, tPlain time.Duration
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		acc := bi.NewAccumulator(m.Info().NLayer)
		capture.CaptureHidden(acc.Observe)
		if o.Experts {
			capture.CaptureExperts(bi.NewExpertAccumulator().Observe)
		}
		start := time.Now()
		if err := llamacpp.Scan(context.Background(), capture, chunks, nil); err != nil {
			b.Fatal(err)
		}
		tCapture += time.Since(start)
		start = time.Now()
		for _, ch := range chunks {
			plain.ClearMemory()
			if err := plain.Decode(ch, 0, nCtx/2); err != nil {
				b.Fatal(err)
			}
		}
		tPlain += time.Since(start)
	}
	n := float64(b.N * nCtx * len(chunks))
	b.ReportMetric(n/tCapture.Seconds(), "capture-tok/s")
	b.ReportMetric(n/tPlain.Seconds(), "plain-tok/s")
	b.ReportMetric(tPlain.Seconds()/tCapture.Seconds(), "capture/plain")
}

package eval_test

import (
	"context"
	"encoding/binary"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ggufprune/ggufprune/internal/fixture"
	"github.com/ggufprune/ggufprune/llamacpp"
	"github.com/ggufprune/ggufprune/prune/eval"
	"github.com/ggufprune/ggufprune/prune/runner"
)

// prunedCopy writes story16 without the given blocks into dir.
func prunedCopy(t *testing.T, src, dir string, remove ...int) string {
	out := filepath.Join(dir, "pruned.gguf")
	fixture.WritePruned(t, src, out, remove...)
	return out
}

// refKLD computes, independently of bi, the mean per-token KL divergence of
// model from base and the share of same top tokens over the scored positions
// of the given chunks: float64 log-softmax of each model's logits.
func refKLD(t *testing.T, basePath, modelPath string, chunks [][]int32, orig []int32) (kld, same float64) {
	t.Helper()
	logProbs := func(path string) [][]float64 {
		lm, err := llamacpp.LoadModel(path, llamacpp.ModelParams{})
		if err != nil {
			t.Fatal(err)
		}
		defer lm.Close()
		n := len(chunks[0])
		c, err := lm.NewContext(llamacpp.ContextParams{NCtx: n, Threads: 2})
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		var out [][]float64
		for _, ch := range chunks {
			c.ClearMemory()
			if err := c.Decode(ch, 0, n/2); err != nil {
				t.Fatal(err)
			}
			for i := n / 2; i < n-1; i++ {
				z, err := c.Logits(i)
				if err != nil {
					t.Fatal(err)
				}
				m := math.Inf(-1)
				for _, v := range z {
					m = math.Max(m, float64(v))
				}
				var s float64
				for _, v := range z {
					s += math.Exp(float64(v) - m)
				}
				lp := make([]float64, len(z))
				for j, v := range z {
					lp[j] = float64(v) - m - math.Log(s)
				}
				out = append(out, lp)
			}
		}
		return out
	}
	p, q := logProbs(basePath), logProbs(modelPath)
	argmax := func(v []float64) int {
		best := 0
		for i := range v {
			if v[i] > v[best] {
				best = i
			}
		}
		return best
	}
	for k := range p {
		var d float64
		for i := range p[k] {
			d += math.Exp(p[k][i]) * (p[k][i] - q[k][i])
		}
		kld += d
		if argmax(p[k]) == argmax(q[k]) {
			same++
		}
	}
	return kld / float64(len(p)), same / float64(len(p))
}

// A model against itself diverges by nothing; against a copy with a block
// removed the divergence and top-token agreement are those computed
// independently from both models' logits; perplexities are those of eval.
func TestCompare(t *testing.T) {
	ctx := context.Background()
	src := fixture.Asset(t, "models/story16-f16.gguf")
	dir := t.TempDir()
	pruned := prunedCopy(t, src, dir, 5)
	textPath := fixture.Asset(t, "text/unseen/gutenberg_tails.txt")
	text, err := runner.TextFile(textPath)
	if err != nil {
		t.Fatal(err)
	}
	o := runner.Options{Ctx: 128, Chunks: 3, Threads: 2}
	rs, err := eval.Compare(ctx, eval.Base{Model: src}, []string{src, pruned}, text, o)
	if err != nil {
		t.Fatal(err)
	}
	self, other := rs[1].KLD, rs[2].KLD
	if self.KLD != 0 || self.SameTop != 1 || self.KLDPct.Max != 0 || self.DpRMS != 0 || rs[1].PPL != rs[0].PPL {
		t.Fatalf("a model against itself: %+v", self)
	}
	if rs[0].Tokens != 3*63 || self.Tokens != rs[0].Tokens {
		t.Fatalf("tokens %d, %d", rs[0].Tokens, self.Tokens)
	}
	ev, err := eval.Evaluate(ctx, []string{src, pruned}, text, o)
	if err != nil {
		t.Fatal(err)
	}
	for i, want := range ev {
		if got := rs[i+1].PPL; math.Abs(got/want.PPL-1) > 1e-6 {
			t.Errorf("%s: perplexity %v compared, %v evaluated", want.Model, got, want.PPL)
		}
	}
	// The independent computation, on the same chunks.
	lm, err := llamacpp.LoadModel(src, llamacpp.ModelParams{VocabOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(textPath)
	toks, _ := lm.Tokenize(string(b), true)
	chunks, _ := lm.Chunks(toks, 128, 3)
	lm.Close()
	wantKLD, wantSame := refKLD(t, src, pruned, chunks, toks)
	if math.Abs(other.KLD/wantKLD-1) > 1e-5 || other.SameTop != wantSame || other.KLD <= 0 {
		t.Fatalf("KLD %v, same top %v; computed independently %v, %v", other.KLD, other.SameTop, wantKLD, wantSame)
	}
	if other.PPLBase != rs[0].PPL && math.Abs(other.PPLBase/rs[0].PPL-1) > 1e-9 {
		t.Fatalf("base perplexity %v and %v", other.PPLBase, rs[0].PPL)
	}
	t.Logf("block 5 removed: KLD %.5f ± %.5f, same top %.2f%%, ln(PPL/PPL base) %.4f ± %.4f", other.KLD, other.KLDErr, 100*other.SameTop, other.LnPPLRatio, other.LnPPLRatioErr)
}

// The base's log-probabilities written in llama-perplexity's format read
// back as a base that gives (within the file's 16-bit rounding) what the
// base model gives; the file's layout is the documented one; damaged files
// are refused naming the file.
func TestLogitsFile(t *testing.T) {
	ctx := context.Background()
	src := fixture.Asset(t, "models/story16-f16.gguf")
	dir := t.TempDir()
	pruned := prunedCopy(t, src, dir, 4)
	text, err := runner.TextFile(fixture.Asset(t, "text/unseen/gutenberg_tails.txt"))
	if err != nil {
		t.Fatal(err)
	}
	o := runner.Options{Ctx: 64, Chunks: 4, Threads: 2}
	file := filepath.Join(dir, "base.logits")
	exact, err := eval.Compare(ctx, eval.Base{Model: src, LogitsOut: file}, []string{pruned}, text, o)
	if err != nil {
		t.Fatal(err)
	}
	fromFile, err := eval.Compare(ctx, eval.Base{LogitsIn: file}, []string{pruned}, nil, runner.Options{Chunks: 4, Threads: 2})
	if err != nil {
		t.Fatal(err)
	}
	a, b := exact[1].KLD, fromFile[1].KLD
	if math.Abs(a.PPL/b.PPL-1) > 1e-6 || math.Abs(fromFile[0].PPL/exact[0].PPL-1) > 1e-3 || math.Abs(a.KLD-b.KLD) > 2e-3 || math.Abs(a.SameTop-b.SameTop) > 0.02 {
		t.Fatalf("exact base %+v\nfile base %+v", a, b)
	}
	// The layout, read here byte by byte.
	raw, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	nVocab := 512
	nv := 2*((nVocab+1)/2) + 4
	if string(raw[:8]) != "_logits_" || binary.LittleEndian.Uint32(raw[8:]) != 64 || binary.LittleEndian.Uint32(raw[12:]) != uint32(nVocab) || binary.LittleEndian.Uint32(raw[16:]) != 4 {
		t.Fatalf("header % x", raw[:20])
	}
	if want := 20 + 4*64*4 + 4*(64-1-32)*nv*2; len(raw) != want {
		t.Fatalf("%d bytes, want %d", len(raw), want)
	}
	// Damaged files.
	for name, data := range map[string][]byte{
		"truncated":   raw[:len(raw)-1],
		"long":        append(append([]byte(nil), raw...), 0),
		"magic":       append([]byte("_logitz_"), raw[8:]...),
		"short":       raw[:12],
		"huge-chunks": append(append(append([]byte(nil), raw[:16]...), 0xff, 0xff, 0xff, 0x7f), raw[20:]...),
	} {
		p := filepath.Join(dir, name)
		os.WriteFile(p, data, 0o644)
		_, err := eval.Compare(ctx, eval.Base{LogitsIn: p}, []string{pruned}, nil, runner.Options{})
		if err == nil || !strings.Contains(err.Error(), p) || !strings.Contains(err.Error(), "not a llama-perplexity logits file") {
			t.Errorf("%s: %v", name, err)
		}
	}
	// Another vocabulary is refused.
	other := fixture.Asset(t, "models/TinyStories-656K-Q8_0.gguf")
	if _, err := eval.Compare(ctx, eval.Base{LogitsIn: file}, []string{other}, nil, runner.Options{}); err == nil || !strings.Contains(err.Error(), "vocabulary") {
		t.Fatalf("another vocabulary: %v", err)
	}
}

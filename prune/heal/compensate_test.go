package heal

import (
	"context"
	"math"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/ggufprune/ggufprune/gguf"
	"github.com/ggufprune/ggufprune/gguf/blocks"
	"github.com/ggufprune/ggufprune/internal/fixture"
	"github.com/ggufprune/ggufprune/llamacpp"
	"github.com/ggufprune/ggufprune/prune/runner"
)

// noEpsilon writes a copy of the model whose RMS norms have an ε of 1e-12:
// scaling the stream then changes nothing a norm reads, and the folded
// compensation equals the stream scaled at the cut to float rounding.
func noEpsilon(t *testing.T, src, archName string) string {
	t.Helper()
	dst := filepath.Join(t.TempDir(), "eps.gguf")
	if err := fixture.Rewrite(src, dst, fixture.EditKV(archName+".attention.layer_norm_rms_epsilon", gguf.Float32(1e-12))); err != nil {
		t.Fatal(err)
	}
	return dst
}

// compensatedLogits are secondHalfLogits of tokens on the model at path with
// the blocks skipped and, when comp is not nil, its stream scaled at each
// cut (Compensation.Watch).
func compensatedLogits(t *testing.T, path string, skip []int, comp *Compensation, tokens []int32) [][]float32 {
	t.Helper()
	var names []string
	var fn llamacpp.WatchFunc
	if comp != nil {
		names, fn = comp.Watch()
	}
	return secondHalfLogits(t, path, skip, names, fn, tokens)
}

// Compensation's α is the ratio of the stream's mean norms around the cut,
// computed here from the hidden states the BI capture hands over (another
// path through the shim than compensation's watch); the compensated file
// computes what the model with the run skipped and its stream multiplied by
// α at the cut computes (the theory of the fold, done the other way round),
// and differs from plain removal by far more; only output projections after
// the cut are rewritten, never the embeddings (TestCompensateTied).
func TestCompensate(t *testing.T) {
	ctx := context.Background()
	// F32: the fold is exact to float rounding; ε ≈ 0: the norms see no scale.
	src := noEpsilon(t, fixture.Asset(t, "models/stories260K.gguf"), "llama")
	m, err := gguf.OpenModel(src)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	cal := tinyStories(t)
	o := runner.Options{Ctx: 128, Chunks: 8, Threads: 2}
	removed := []int{1, 2}
	c, err := Compensate(ctx, m, removed, cal, o, CompensateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(c.Cuts) != 1 || c.Cost.Passes != 1 || c.Cost.Tokens != 8*128 {
		t.Fatalf("%+v %+v", c.Cuts, c.Cost)
	}
	for _, name := range c.Tensors {
		b, rest, _, _ := blocks.Split(name)
		if b < 3 || (rest != "attn_output.weight" && rest != "ffn_down.weight") {
			t.Fatalf("compensation rewrites %s", name)
		}
	}
	if len(c.Tensors) != 4 || len(c.Data()) != 4 {
		t.Fatalf("tensors %v", c.Tensors)
	}

	// α from the hidden states.
	lm, err := llamacpp.LoadModel(src, llamacpp.ModelParams{})
	if err != nil {
		t.Fatal(err)
	}
	toks, _ := cal.Text.Tokens(lm, 8*128)
	chunks, _ := lm.Chunks(toks, 128, 8)
	hc, err := lm.NewContext(llamacpp.ContextParams{NCtx: 128, Threads: 2, Capture: true})
	if err != nil {
		t.Fatal(err)
	}
	sums := map[int]float64{}
	count := map[int]int{}
	hc.CaptureHidden(func(block int, h []float32, nEmbd, nTokens int) {
		for r := 0; r < nTokens; r++ {
			var s float64
			for _, v := range h[r*nEmbd : (r+1)*nEmbd] {
				s += float64(v) * float64(v)
			}
			sums[block] += math.Sqrt(s)
		}
		count[block] += nTokens
	})
	for _, ch := range chunks {
		hc.ClearMemory()
		if err := hc.Decode(ch, 0, 0); err != nil {
			t.Fatal(err)
		}
	}
	hc.Close()
	lm.Close()
	// CaptureHidden's block b is the stream after block b: the cut of
	// blocks 1-2 goes from the output of block 0 to that of block 2.
	want := (sums[2] / float64(count[2])) / (sums[0] / float64(count[0]))
	if got := c.Cuts[0].Alpha; math.Abs(got-want) > 1e-9*want || got <= 1 {
		t.Fatalf("alpha %v, from the hidden states %v", got, want)
	}
	if s := c.Scales[3]; math.Abs(s-1/want) > 1e-9 || c.Scales[0] != 0 {
		t.Fatalf("scales %v", c.Scales)
	}

	// The file against the run-time scaling, and against plain removal.
	compensated, plain := writeRemoval(t, m, removed, c.Data()), writeRemoval(t, m, removed, nil)
	logitsOf := func(path string, skip []int, comp *Compensation) [][]float32 {
		return compensatedLogits(t, path, skip, comp, chunks[1])
	}
	file, runtime, unscaled := logitsOf(compensated, nil, nil), logitsOf(src, removed, c), logitsOf(plain, nil, nil)
	worst := fixture.MaxRelDiff(runtime, file)
	apart := fixture.MaxRelDiff(unscaled, file)
	t.Logf("alpha %.5f; compensated file against run-time scaling %.3g, against plain removal %.3g", c.Cuts[0].Alpha, worst, apart)
	// Float rounding (the file holds W/α in float32, the run scales the
	// stream) and what is left of ε: 1.0e-4 measured (1.1e-3 with the
	// model's own ε of 1e-5). An α off by 1 % is told apart.
	if worst > 5e-4 {
		t.Fatalf("compensated file and run-time scaling differ by %g relative", worst)
	}
	off := *c
	off.Cuts = slices.Clone(c.Cuts)
	off.Cuts[0].Alpha *= 1.01
	if d := fixture.MaxRelDiff(logitsOf(src, removed, &off), file); d < 4*5e-4 {
		t.Fatalf("an alpha off by 1%% differs from the file by only %g", d)
	} else {
		t.Logf("alpha off by 1%%: %.3g", d)
	}
	if apart < 100*worst || apart < 1e-2 {
		t.Fatalf("compensation changes the logits by only %g relative", apart)
	}

	// A healed run is not compensated, nor one starting at block 0; a later
	// run is, from its own cut.
	cuts, tensors, err := PlanCompensation(m, []int{2}, map[int]bool{2: true})
	if err != nil || len(tensors) != 0 || cuts[0].Alpha != 1 || cuts[0].Note == "" {
		t.Fatalf("healed run: %+v %v %v", cuts, tensors, err)
	}
	c0, err := Compensate(ctx, m, []int{0, 3}, cal, o, CompensateOptions{})
	if err != nil || c0.Cuts[0].Alpha != 1 || c0.Cuts[0].Note == "" || !(c0.Cuts[1].Alpha > 0) || len(c0.Scales) != 1 || len(c0.Data()) != 2 {
		t.Fatalf("block 0: %+v %v", c0, err)
	}
}

// Compensation refuses blocks with a tensor it does not know (an FFN
// output norm: scaling ffn_down would not scale what the block adds), and
// says so before running anything.
func TestCompensatePlan(t *testing.T) {
	post := withPostNorm(t, 3)
	pm, err := gguf.OpenModel(post)
	if err != nil {
		t.Fatal(err)
	}
	defer pm.Close()
	if _, _, err := PlanCompensation(pm, []int{1}, nil); err == nil || !strings.Contains(err.Error(), "blk.3.post_ffw_norm.weight") {
		t.Fatalf("post-FFN norm after the cut: %v", err)
	}
	// Before the cut it does not matter.
	_, tensors, err := PlanCompensation(pm, []int{3}, nil)
	if err != nil || !slices.Contains(tensors, "blk.4.ffn_down.weight") || len(tensors) != 2 {
		t.Fatalf("post-FFN norm before the cut: %v %v", tensors, err)
	}
	if _, _, err := PlanCompensation(pm, nil, nil); err == nil {
		t.Fatal("nothing removed: no error")
	}
}

// With the output head tied to the token embeddings (no output.weight),
// compensation leaves the embeddings' bytes as they are, and the file still
// computes the run-time scaling.
func TestCompensateTied(t *testing.T) {
	ctx := context.Background()
	tied := filepath.Join(t.TempDir(), "tied.gguf")
	err := fixture.Rewrite(noEpsilon(t, fixture.Asset(t, "models/stories260K.gguf"), "llama"), tied, func(kvs []gguf.KV, ts []gguf.WriterTensor) ([]gguf.KV, []gguf.WriterTensor) {
		return kvs, slices.DeleteFunc(ts, func(w gguf.WriterTensor) bool { return w.Info.Name == "output.weight" })
	})
	if err != nil {
		t.Fatal(err)
	}
	m, err := gguf.OpenModel(tied)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	if _, ok := m.Tensor("output.weight"); ok {
		t.Fatal("the fixture has an output head of its own")
	}
	cal := tinyStories(t)
	removed := []int{2}
	c, err := Compensate(ctx, m, removed, cal, runner.Options{Ctx: 128, Chunks: 4, Threads: 2}, CompensateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := c.Data()["token_embd.weight"]; ok || len(c.Data()) != 4 {
		t.Fatalf("rewritten: %v", c.Tensors)
	}
	out := writeRemoval(t, m, removed, c.Data())
	om, err := gguf.OpenModel(out)
	if err != nil {
		t.Fatal(err)
	}
	defer om.Close()
	read := func(m *gguf.Model, name string) []byte {
		tt, ok := m.Tensor(name)
		if !ok {
			t.Fatalf("%s: no %s", m.Name(), name)
		}
		return fixture.TensorBytes(t, m, tt)
	}
	if !slices.Equal(read(m, "token_embd.weight"), read(om, "token_embd.weight")) {
		t.Fatal("the tied embeddings changed")
	}
	logits := func(path string, skip []int, comp *Compensation) [][]float32 {
		return compensatedLogits(t, path, skip, comp, syntheticTokens(64))
	}
	if d := fixture.MaxRelDiff(logits(tied, removed, c), logits(out, nil, nil)); d > 1e-4 {
		t.Fatalf("tied: compensated file and run-time scaling differ by %g relative", d)
	}
}

// A mixture of experts (a generated qwen3moe: 4 experts, 2 used) is
// compensated through its experts' down projections, and its file computes
// the stream scaled at the cut; the router is not touched.
func TestCompensateExperts(t *testing.T) {
	ctx := context.Background()
	gen := filepath.Join(t.TempDir(), "qwen3moe.gguf")
	spec := fixture.ModelSpec{Arch: "qwen3moe", Blocks: 5, Embd: 64, FF: 128, Heads: 4, KVHeads: 2, Ctx: 256}
	if err := fixture.RandomModel(gen, fixture.Asset(t, "models/stories260K.gguf"), spec); err != nil {
		t.Fatal(err)
	}
	src := noEpsilon(t, gen, "qwen3moe")
	m, err := gguf.OpenModel(src)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	cal := tinyStories(t)
	removed := []int{2}
	c, err := Compensate(ctx, m, removed, cal, runner.Options{Ctx: 64, Chunks: 4, Threads: 2}, CompensateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(c.Tensors, "blk.3.ffn_down_exps.weight") || !slices.Contains(c.Tensors, "blk.4.attn_output.weight") || slices.ContainsFunc(c.Tensors, func(n string) bool { return strings.Contains(n, "gate_inp") }) {
		t.Fatalf("rewritten: %v", c.Tensors)
	}
	out := writeRemoval(t, m, removed, c.Data())
	logits := func(path string, skip []int, comp *Compensation) [][]float32 {
		return compensatedLogits(t, path, skip, comp, syntheticTokens(64))
	}
	file := logits(out, nil, nil)
	d, apart := fixture.MaxRelDiff(logits(src, removed, c), file), fixture.MaxRelDiff(logits(src, removed, nil), file)
	t.Logf("alpha %.4f; file against the stream scaled at run time %.3g, against plain removal %.3g", c.Cuts[0].Alpha, d, apart)
	if d > 5e-4 || apart < 100*d {
		t.Fatalf("compensated file and run-time scaling differ by %g relative (plain removal %g)", d, apart)
	}
}

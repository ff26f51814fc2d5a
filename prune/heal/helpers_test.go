package heal

import (
	"math"
	"path/filepath"
	"slices"
	"strconv"
	"testing"

	"gonum.org/v1/gonum/mat"

	"github.com/ggufprune/ggufprune/gguf"
	"github.com/ggufprune/ggufprune/gguf/surgery"
	"github.com/ggufprune/ggufprune/internal/fixture"
	"github.com/ggufprune/ggufprune/llamacpp"
	"github.com/ggufprune/ggufprune/prune/runner"
)

// tinyStories is the shipped TinyStories calibration text.
func tinyStories(t *testing.T) runner.Calibration {
	t.Helper()
	cal, err := runner.CalibrationFile(fixture.Asset(t, "text/tinystories/tinystories_val_first100.txt"))
	if err != nil {
		t.Fatal(err)
	}
	return cal
}

// writeRemoval writes m without the blocks, with the tensors of data
// replaced, and returns the file's path.
func writeRemoval(t *testing.T, m *gguf.Model, removed []int, data map[string][]byte) string {
	t.Helper()
	plan, err := surgery.PlanRemoval(m, removed, surgery.Options{})
	if err != nil {
		t.Fatal(err)
	}
	for name, d := range data {
		if err := plan.ReplaceData(name, d); err != nil {
			t.Fatal(err)
		}
	}
	path := filepath.Join(t.TempDir(), "out.gguf")
	if _, err := plan.Write(path, surgery.OneFile); err != nil {
		t.Fatal(err)
	}
	return path
}

// secondHalfLogits decodes tokens in one chunk on the model at path with
// the blocks skipped and the watch applied (none without names), and
// returns the logits of the second half of the tokens.
func secondHalfLogits(t *testing.T, path string, skip []int, names []string, fn llamacpp.WatchFunc, tokens []int32) [][]float32 {
	t.Helper()
	lm, err := llamacpp.LoadModel(path, llamacpp.ModelParams{})
	if err != nil {
		t.Fatal(err)
	}
	defer lm.Close()
	c, err := lm.NewContext(llamacpp.ContextParams{NCtx: len(tokens), Threads: 2, Capture: true})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.SetSkip(skip); err != nil {
		t.Fatal(err)
	}
	if len(names) > 0 {
		if err := c.Watch(names, fn); err != nil {
			t.Fatal(err)
		}
	}
	half := len(tokens) / 2
	if err := c.Decode(tokens, 0, half); err != nil {
		t.Fatal(err)
	}
	var out [][]float32
	for i := half; i < len(tokens); i++ {
		l, err := c.Logits(i)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, l)
	}
	return out
}

// syntheticTokens are n token ids below 400 (inside stories260K's
// vocabulary), with no text behind them.
func syntheticTokens(n int) []int32 {
	toks := make([]int32, n)
	for i := range toks {
		toks[i] = int32(1 + (i*37)%400)
	}
	return toks
}

// withPostNorm writes a copy of stories260K whose block b also has an FFN
// output norm (post_ffw_norm, a copy of its ffn_norm), and returns its path.
func withPostNorm(t *testing.T, b int) string {
	t.Helper()
	post := filepath.Join(t.TempDir(), "post.gguf")
	from := "blk." + strconv.Itoa(b) + ".ffn_norm.weight"
	err := fixture.Rewrite(fixture.Asset(t, "models/stories260K.gguf"), post, func(kvs []gguf.KV, ts []gguf.WriterTensor) ([]gguf.KV, []gguf.WriterTensor) {
		for _, w := range ts {
			if w.Info.Name == from {
				w.Info.Name = "blk." + strconv.Itoa(b) + ".post_ffw_norm.weight"
				return kvs, append(ts, w)
			}
		}
		return kvs, ts
	})
	if err != nil {
		t.Fatal(err)
	}
	return post
}

// calibrationChunks are the first n chunks of size tokens of the
// calibration text, tokenized by the model at path.
func calibrationChunks(t *testing.T, path string, cal runner.Calibration, n, size int) [][]int32 {
	t.Helper()
	lm, err := llamacpp.LoadModel(path, llamacpp.ModelParams{VocabOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer lm.Close()
	toks, err := cal.Text.Tokens(lm, n*size)
	if err != nil {
		t.Fatal(err)
	}
	chunks, err := lm.Chunks(toks, size, n)
	if err != nil {
		t.Fatal(err)
	}
	return chunks
}

// capture decodes the chunks on the model at path with the blocks skipped,
// and returns the graph tensors of names, every chunk's rows in order; the
// tensors of applied are handed to fn instead (which may change them).
func capture(t *testing.T, path string, chunks [][]int32, skip []int, names, applied []string, fn llamacpp.WatchFunc) map[string][]float32 {
	t.Helper()
	lm, err := llamacpp.LoadModel(path, llamacpp.ModelParams{})
	if err != nil {
		t.Fatal(err)
	}
	defer lm.Close()
	c, err := lm.NewContext(llamacpp.ContextParams{NCtx: len(chunks[0]), Threads: 2, Capture: true})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.SetSkip(skip); err != nil {
		t.Fatal(err)
	}
	got := map[string][]float32{}
	collect := map[string]bool{}
	for _, n := range names {
		collect[n] = true
	}
	err = c.Watch(append(slices.Clone(names), applied...), func(name string, x []float32, cols, rows int) {
		if collect[name] {
			got[name] = append(got[name], x...)
		} else {
			fn(name, x, cols, rows)
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, ch := range chunks {
		c.ClearMemory()
		if err := c.Decode(ch, 0, 0); err != nil {
			t.Fatal(err)
		}
	}
	return got
}

// ridgeSolution is the T that minimises ‖R - X·T‖² + λ‖T‖², solved by QR
// of [X; √λ I] against [R; 0], not by the normal equations the fits use.
func ridgeSolution(t *testing.T, X, R *mat.Dense, lambda float64) *mat.Dense {
	t.Helper()
	n, p := X.Dims()
	_, d := R.Dims()
	aug, rhs := mat.NewDense(n+p, p, nil), mat.NewDense(n+p, d, nil)
	aug.Slice(0, n, 0, p).(*mat.Dense).Copy(X)
	rhs.Slice(0, n, 0, d).(*mat.Dense).Copy(R)
	for k := 0; k < p; k++ {
		aug.Set(n+k, k, math.Sqrt(lambda))
	}
	var T mat.Dense
	if err := T.Solve(aug, rhs); err != nil {
		t.Fatal(err)
	}
	return &T
}

// relDiff is ‖a - b‖₂ / ‖b‖₂.
func relDiff(a, b mat.Matrix) float64 {
	var diff mat.Dense
	diff.Sub(a, b)
	return mat.Norm(&diff, 2) / mat.Norm(b, 2)
}

// healedFile writes m with the blocks removed and the healing's tensors,
// and returns it, its logits of the second half of tokens, and their
// largest relative differences from the maps applied at run time
// (h.Watch, on src with the blocks skipped) and from plain removal.
func healedFile(t *testing.T, m *gguf.Model, src string, removed []int, h *Healing, tokens []int32) (path string, file [][]float32, runtime, plain float64) {
	t.Helper()
	path = writeRemoval(t, m, removed, h.Tensors())
	names, watch := h.Watch()
	file = secondHalfLogits(t, path, nil, nil, nil, tokens)
	runtime = fixture.MaxRelDiff(secondHalfLogits(t, src, removed, names, watch, tokens), file)
	plain = fixture.MaxRelDiff(secondHalfLogits(t, src, removed, nil, nil, tokens), file)
	return path, file, runtime, plain
}

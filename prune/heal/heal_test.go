package heal

import (
	"context"
	"fmt"
	"math"
	"path/filepath"
	"strings"
	"testing"

	"gonum.org/v1/gonum/mat"

	"github.com/ggufprune/ggufprune/gguf"
	"github.com/ggufprune/ggufprune/gguf/surgery"
	"github.com/ggufprune/ggufprune/internal/fixture"
	"github.com/ggufprune/ggufprune/llamacpp"
	"github.com/ggufprune/ggufprune/prune/eval"
	"github.com/ggufprune/ggufprune/prune/runner"
)

// activations collects, independently of Heal, block i's FFN input residual
// Y and FFN output M, and block b's output L, over the chunks of the unpruned
// model (nothing removed before i).
func activations(t *testing.T, path string, chunks [][]int32, i, b int) (M, R *mat.Dense) {
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
	d := lm.Info().NEmbd
	var ms, ys, ls []float32
	c.Watch([]string{fmt.Sprintf("ffn_inp-%d", i), fmt.Sprintf("ffn_out-%d", i), fmt.Sprintf("l_out-%d", b)}, func(name string, x []float32, _, _ int) {
		switch {
		case strings.HasPrefix(name, "ffn_inp"):
			ys = append(ys, x...)
		case strings.HasPrefix(name, "ffn_out"):
			ms = append(ms, x...)
		default:
			ls = append(ls, x...)
		}
	})
	for _, ch := range chunks {
		c.ClearMemory()
		if err := c.Decode(ch, 0, 0); err != nil {
			t.Fatal(err)
		}
	}
	n := len(ms) / d
	M, R = mat.NewDense(n, d, nil), mat.NewDense(n, d, nil)
	for r := 0; r < n; r++ {
		for j := 0; j < d; j++ {
			M.Set(r, j, float64(ms[r*d+j]))
			R.Set(r, j, float64(ls[r*d+j])-float64(ys[r*d+j]))
		}
	}
	return M, R
}

// The fitted map is the ridge least-squares solution computed here
// directly (QR of [M; √λ I] against [L - Y; 0]); the healed file computes
// what the unhealed model computes with the map applied at run time to
// block i's FFN output (1e-4 relative); healing lowers the perplexity of a
// removal on unseen text.
func TestHeal(t *testing.T) {
	ctx := context.Background()
	src := fixture.Asset(t, "models/stories260K.gguf") // F32: the fold is exact to float rounding
	m, err := gguf.OpenModel(src)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	cal := tinyStories(t)
	// 64 chunks: with a few, a 64 × 64 map overfits the calibration.
	o := runner.Options{Ctx: 128, Chunks: 64, Threads: 2}
	h, err := Heal(ctx, m, []int{2}, cal, o, Options{})
	if err != nil {
		t.Fatal(err)
	}
	run := h.Runs[0]
	if run.Block != 1 || run.Tensors[0] != "blk.1.ffn_down.weight" || run.Residual <= 0 || run.Residual >= 1 || h.Cost.Passes != 2 {
		t.Fatalf("%+v %+v", run, h.Cost)
	}
	// The independent solution.
	lm, _ := llamacpp.LoadModel(src, llamacpp.ModelParams{VocabOnly: true})
	toks, _ := cal.Text.Tokens(lm, 64*128)
	chunks, _ := lm.Chunks(toks, 128, 64)
	lm.Close()
	M, R := activations(t, src, chunks, 1, 2)
	_, d := M.Dims()
	n, _ := M.Dims()
	aug := mat.NewDense(n+d, d, nil)
	rhs := mat.NewDense(n+d, d, nil)
	aug.Slice(0, n, 0, d).(*mat.Dense).Copy(M)
	rhs.Slice(0, n, 0, d).(*mat.Dense).Copy(R)
	sq := math.Sqrt(run.Ridge)
	for j := 0; j < d; j++ {
		aug.Set(n+j, j, sq)
	}
	var want mat.Dense
	if err := want.Solve(aug, rhs); err != nil {
		t.Fatal(err)
	}
	got := h.maps[1]
	var diff mat.Dense
	diff.Sub(got, &want)
	if rel := mat.Norm(&diff, 2) / mat.Norm(&want, 2); rel > 1e-6 {
		t.Fatalf("T differs from the least-squares solution by %g relative", rel)
	}

	// The healed file against the map applied at run time.
	healed := writeRemoval(t, m, []int{2}, h.Tensors())
	logitsOf := func(path string, skip []int, T *mat.Dense) [][]float32 {
		if T == nil {
			return secondHalfLogits(t, path, skip, nil, nil, chunks[0])
		}
		return secondHalfLogits(t, path, skip, []string{"ffn_out-1"}, func(_ string, x []float32, cols, rows int) {
			for r := 0; r < rows; r++ {
				row := x[r*cols : (r+1)*cols]
				out := make([]float32, cols)
				for j := 0; j < cols; j++ {
					var s float64
					for k := 0; k < cols; k++ {
						s += float64(row[k]) * T.At(k, j)
					}
					out[j] = float32(s)
				}
				copy(row, out)
			}
		}, chunks[0])
	}
	// An F32 file holds the map rounded to float32: the healed file must
	// compute what the run-time map computes with T so rounded (1e-4
	// relative), and differ from the full-precision map by no more than
	// that rounding itself does (which depends on the CPU's SIMD path:
	// 2.3e-4 with AVX-512 on stories260K's block 1, 2e-5 elsewhere).
	r, c := got.Dims()
	t32 := mat.NewDense(r, c, nil)
	for i := 0; i < r; i++ {
		for j := 0; j < c; j++ {
			t32.Set(i, j, float64(float32(got.At(i, j))))
		}
	}
	file, full, rounded := logitsOf(healed, nil, nil), logitsOf(src, []int{2}, got), logitsOf(src, []int{2}, t32)
	worst := fixture.MaxRelDiff(rounded, file)
	if worst > 1e-4 {
		t.Fatalf("healed file and run-time map (T in float32) differ by %g relative", worst)
	}
	// Folding rounds W_down·T to float32 as well, a second rounding of the
	// same order as rounding T (3.2× it on one CI machine): a wrong fold
	// (a transposed or misplaced map) differs by 1e-2 or more.
	if worst, rounding := fixture.MaxRelDiff(full, file), fixture.MaxRelDiff(full, rounded); worst > 5*rounding+2e-5 {
		t.Fatalf("healed file and run-time map (T in float64) differ by %g relative, more than rounding T to float32 does (%g)", worst, rounding)
	}

	// Healing helps on text the calibration did not see.
	plain := writeRemoval(t, m, []int{2}, nil)
	text, _ := runner.TextFile(fixture.Asset(t, "text/unseen/tinystories_last50.txt"))
	rs, err := eval.Evaluate(ctx, []string{src, plain, healed}, text, runner.Options{Ctx: 128, Chunks: 32})
	if err != nil {
		t.Fatal(err)
	}
	if rs[2].PPL >= rs[1].PPL {
		t.Fatalf("perplexity: original %.4f, removed %.4f, healed %.4f", rs[0].PPL, rs[1].PPL, rs[2].PPL)
	}
	t.Logf("perplexity: original %.4f, block 2 removed %.4f, healed %.4f (residual %.3f, %v)", rs[0].PPL, rs[1].PPL, rs[2].PPL, run.Residual, worst)
}

// A run at block 0 is left unhealed and said so; a post-FFN norm is refused.
func TestHealPlan(t *testing.T) {
	m, err := gguf.OpenModel(fixture.Asset(t, "models/stories260K.gguf"))
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	runs, err := Plan(m, []int{0, 1, 3})
	if err != nil || len(runs) != 2 || runs[0].Note == "" || runs[1].Block != 2 || runs[1].Type != "F32" {
		t.Fatalf("%+v %v", runs, err)
	}
	post := withPostNorm(t, 2)
	pm, err := gguf.OpenModel(post)
	if err != nil {
		t.Fatal(err)
	}
	defer pm.Close()
	if _, err := Plan(pm, []int{3}); err == nil || !strings.Contains(err.Error(), "post_ffw_norm") {
		t.Fatalf("post-FFN norm: %v", err)
	}
}

// A quantized FFN down projection is quantized again by ggml in its own type,
// and the healed file loads and evaluates.
func TestHealQuantized(t *testing.T) {
	ctx := context.Background()
	src := fixture.Asset(t, "models/TinyStories-656K-Q8_0.gguf")
	m, err := gguf.OpenModel(src)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	cal := tinyStories(t)
	h, err := Heal(ctx, m, []int{1}, cal, runner.Options{Ctx: 128, Chunks: 16, Threads: 2}, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if r := h.Runs[0]; r.Block != 0 || r.Type != "Q8_0" || len(h.Tensors()) != 1 {
		t.Fatalf("%+v", h.Runs)
	}
	plan, _ := surgery.PlanRemoval(m, []int{1}, surgery.Options{})
	for name, data := range h.Tensors() {
		if err := plan.ReplaceData(name, data); err != nil {
			t.Fatal(err)
		}
	}
	out := filepath.Join(t.TempDir(), "healed.gguf")
	if _, err := plan.Write(out, surgery.OneFile); err != nil {
		t.Fatal(err)
	}
	g, err := gguf.OpenModel(out)
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	for _, tn := range g.AllTensors() {
		if tn.Name == "blk.0.ffn_down.weight" && tn.Type != gguf.TypeQ8_0 {
			t.Fatalf("healed ffn_down is %v", tn.Type)
		}
	}
	text, _ := runner.TextFile(fixture.Asset(t, "text/tinystories/tinystories_val_first100.txt")) // the 656K vocabulary lacks some characters of the unseen text
	rs, err := eval.Evaluate(ctx, []string{out}, text, runner.Options{Ctx: 128, Chunks: 4})
	if err != nil || math.IsNaN(rs[0].PPL) {
		t.Fatalf("%v %v", rs, err)
	}
}

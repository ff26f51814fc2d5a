package heal

import (
	"context"
	"fmt"
	"math"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"gonum.org/v1/gonum/mat"

	"github.com/ggufprune/ggufprune/gguf"
	"github.com/ggufprune/ggufprune/gguf/surgery"
	"github.com/ggufprune/ggufprune/internal/fixture"
	"github.com/ggufprune/ggufprune/prune/eval"
	"github.com/ggufprune/ggufprune/prune/runner"
)

// activations collects, independently of Heal, block i's FFN input residual
// Y and FFN output M, and block b's output L, over the chunks of the unpruned
// model (nothing removed before i).
func activations(t *testing.T, path string, chunks [][]int32, i, b int) (M, R *mat.Dense) {
	t.Helper()
	inp, out, lo := fmt.Sprintf("ffn_inp-%d", i), fmt.Sprintf("ffn_out-%d", i), fmt.Sprintf("l_out-%d", b)
	got := capture(t, path, chunks, nil, []string{inp, out, lo}, nil, nil)
	ms, ys, ls := got[out], got[inp], got[lo]
	tokens := 0
	for _, ch := range chunks {
		tokens += len(ch)
	}
	d := len(ms) / tokens
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
	h, err := Heal(ctx, m, []int{2}, cal, o, Options{Form: Output})
	if err != nil {
		t.Fatal(err)
	}
	run := h.Runs[0]
	if run.Block != 1 || run.Tensors[0] != "blk.1.ffn_down.weight" || run.Form != "output" || run.Residual <= 0 || run.Residual >= 1 || h.Cost.Passes != 2 {
		t.Fatalf("%+v %+v", run, h.Cost)
	}
	// The independent solution.
	chunks := calibrationChunks(t, src, cal, 64, 128)
	M, R := activations(t, src, chunks, 1, 2)
	got := h.maps[1].T
	if rel := relDiff(got, ridgeSolution(t, M, R, run.Ridge)); rel > 1e-6 {
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
	runs, err := Plan(m, []int{0, 1, 3}, 0)
	if err != nil || len(runs) != 2 || runs[0].Note == "" || runs[1].Block != 2 || runs[1].Type != "F32" {
		t.Fatalf("%+v %v", runs, err)
	}
	post := withPostNorm(t, 2)
	pm, err := gguf.OpenModel(post)
	if err != nil {
		t.Fatal(err)
	}
	defer pm.Close()
	if _, err := Plan(pm, []int{3}, 0); err == nil || !strings.Contains(err.Error(), "post_ffw_norm") {
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

// With Options.After, the block after the run gets a second map: the
// least-squares solution computed here from activations captured
// independently (block 2 skipped, the first map applied at run time), a
// written file that computes both maps as the run-time skipping does, and a
// residual on the held-out chunks below the one-map healing's.
func TestHealAfter(t *testing.T) {
	ctx := context.Background()
	src := fixture.Asset(t, "models/stories260K.gguf")
	m, err := gguf.OpenModel(src)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	runs, err := Plan(m, []int{0, 1, 3}, 1)
	if err != nil || len(runs[0].After) != 0 || len(runs[1].After) != 1 || runs[1].After[0].Block != 4 || runs[1].After[0].Tensors[0] != "blk.4.ffn_down.weight" {
		t.Fatalf("plan: %+v %v", runs, err)
	}
	cal := tinyStories(t)
	o := runner.Options{Ctx: 128, Chunks: 32, Threads: 2}
	h, err := Heal(ctx, m, []int{2}, cal, o, Options{After: 1, Form: Output})
	if err != nil {
		t.Fatal(err)
	}
	run := h.Runs[0]
	if len(run.After) != 1 || run.After[0].Block != 3 || h.maps[3] == nil || h.Cost.Passes != 4 || run.After[0].Residual <= 0 || run.After[0].Residual >= 1 {
		t.Fatalf("%+v %+v", run, h.Cost)
	}
	if _, ok := h.Tensors()["blk.3.ffn_down.weight"]; !ok {
		t.Fatal("blk.3.ffn_down.weight not rewritten")
	}

	// The second map, solved here: block 3's FFN input and output with
	// block 2 skipped and the first map applied, against the unpruned
	// model's output of block 3.
	chunks := calibrationChunks(t, src, cal, 32, 128)
	work := capture(t, src, chunks, []int{2}, []string{"ffn_inp-3", "ffn_out-3"}, []string{"ffn_out-1"}, func(_ string, x []float32, cols, rows int) {
		applyMap(x, h.maps[1].T, cols, rows)
	})
	base := capture(t, src, chunks, nil, []string{"l_out-3"}, nil, nil)
	d := 64
	n := len(work["ffn_out-3"]) / d
	X, R := mat.NewDense(n, d, nil), mat.NewDense(n, d, nil)
	for r := 0; r < n; r++ {
		for j := 0; j < d; j++ {
			X.Set(r, j, float64(work["ffn_out-3"][r*d+j]))
			R.Set(r, j, float64(base["l_out-3"][r*d+j])-float64(work["ffn_inp-3"][r*d+j]))
		}
	}
	// The ridge the fit chose, as λ = r·tr(MᵀM)/d, is not reported for
	// the second map: solve at the ridges it may have chosen and take the
	// closest.
	best := math.Inf(1)
	var xx mat.Dense
	xx.Mul(X.T(), X)
	for _, r := range Ridges {
		best = math.Min(best, relDiff(h.maps[3].T, ridgeSolution(t, X, R, r*mat.Trace(&xx)/float64(d))))
	}
	if best > 1e-5 {
		t.Fatalf("the second map differs from the least-squares solution by %g relative", best)
	}

	// The file against both maps applied at run time (the maps in float32,
	// as the file holds them folded).
	_, file, worst, _ := healedFile(t, m, src, []int{2}, h, chunks[0])
	if worst > 1e-3 {
		t.Fatalf("healed file and run-time maps differ by %g relative", worst)
	}
	first := map[string][]byte{"blk.1.ffn_down.weight": h.Tensors()["blk.1.ffn_down.weight"]}
	onlyFirst := secondHalfLogits(t, writeRemoval(t, m, []int{2}, first), nil, nil, nil, chunks[0])
	if d := fixture.MaxRelDiff(onlyFirst, file); d < 1e-2 {
		t.Fatalf("the second map changes the logits by only %g", d)
	}
	t.Logf("residual of the map before the run %.3f (held out %.3f); block 3's map leaves %.3f of what remained", run.Residual, run.HeldOut, run.After[0].Residual)
}

// A mixture of experts (a generated qwen3moe: 4 experts of 64, 2 used,
// whose FFN output the graph names ffn_moe_out) is healed through every
// expert's down projection, before the run and after it. Its output is
// linear in its experts' down
// projections: the refit changes every expert's projection at once, on
// the activations of the experts each token is routed to, weighted by
// their gate weights. The change equals the least-squares solution
// computed here from the routing, the activations and the mixture's
// output captured independently (first checking that the gate-weighted
// sum of the experts' projections of the activations is that output); the
// written file computes what the change applied at run time computes.
func TestHealExperts(t *testing.T) {
	ctx := context.Background()
	src := filepath.Join(t.TempDir(), "qwen3moe.gguf")
	const d, nExpert, pe = 64, 4, 64
	spec := fixture.ModelSpec{Arch: "qwen3moe", Blocks: 5, Embd: d, FF: 128, Heads: 4, KVHeads: 2, Ctx: 256}
	if err := fixture.RandomModel(src, fixture.Asset(t, "models/stories260K.gguf"), spec); err != nil {
		t.Fatal(err)
	}
	m, err := gguf.OpenModel(src)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	removed := []int{2}
	cal, o := tinyStories(t), runner.Options{Ctx: 64, Chunks: 64, Threads: 2}
	h, err := Heal(ctx, m, removed, cal, o, Options{After: 1})
	if err != nil {
		t.Fatal(err)
	}
	var rewritten []string
	for name := range h.Tensors() {
		rewritten = append(rewritten, name)
	}
	slices.Sort(rewritten)
	bm := h.maps[1]
	if !slices.Equal(rewritten, []string{"blk.1.ffn_down_exps.weight", "blk.3.ffn_down_exps.weight"}) || bm.output != "ffn_moe_out-1" || h.Runs[0].Form != "projection" || bm.experts == nil {
		t.Fatalf("rewritten %v, output %q, form %q", rewritten, bm.output, h.Runs[0].Form)
	}
	if !slices.ContainsFunc(h.Warnings, func(w string) bool { return strings.Contains(w, "mixture of experts") }) {
		t.Fatalf("no warning of maps fitted on the routed experts: %v", h.Warnings)
	}
	out, err := Heal(ctx, m, removed, cal, o, Options{Form: Output})
	if err != nil {
		t.Fatal(err)
	}
	if out.Runs[0].Form != "output" || h.Runs[0].Residual >= out.Runs[0].Residual {
		t.Fatalf("the refitted experts leave %.4f of the gap, the output's map (%s) %.4f", h.Runs[0].Residual, out.Runs[0].Form, out.Runs[0].Residual)
	}

	// The independent solution, from the routing captured (the argsort
	// handed over as floats) and the experts' projections read here.
	chunks := calibrationChunks(t, src, cal, 64, 64)
	names := []string{bm.hidden, bm.experts.ids, bm.experts.weights, "ffn_moe_out-1", "ffn_inp-1", "l_out-2"}
	got := capture(t, src, chunks, nil, names, nil, nil)
	ids, w, act, M := got[bm.experts.ids], got[bm.experts.weights], got[bm.hidden], got["ffn_moe_out-1"]
	n := len(M) / d
	const used = 2
	if len(ids) != n*nExpert || len(w) != n*used || len(act) != n*used*pe {
		t.Fatalf("captured %d ids, %d weights, %d activations for %d tokens", len(ids), len(w), len(act), n)
	}
	dt, _ := m.Tensor("blk.1.ffn_down_exps.weight")
	down, err := tensorFloats(m, dt, nil)
	if err != nil {
		t.Fatal(err)
	}
	X, R := mat.NewDense(n, nExpert*pe, nil), mat.NewDense(n, d, nil)
	var diff2, norm2 float64
	for r := 0; r < n; r++ {
		sum := make([]float64, d) // Σ_k w_k · W_{e_k} h_k
		for k := 0; k < used; k++ {
			e, wk, hk := int(ids[r*nExpert+k]), float64(w[r*used+k]), act[(r*used+k)*pe:(r*used+k+1)*pe]
			for c := 0; c < pe; c++ {
				X.Set(r, e*pe+c, X.At(r, e*pe+c)+wk*float64(hk[c]))
			}
			for j := 0; j < d; j++ {
				var s float64
				for c := 0; c < pe; c++ {
					s += float64(down[(e*d+j)*pe+c]) * float64(hk[c])
				}
				sum[j] += wk * s
			}
		}
		for j := 0; j < d; j++ {
			i := r*d + j
			diff2 += (sum[j] - float64(M[i])) * (sum[j] - float64(M[i]))
			norm2 += float64(M[i]) * float64(M[i])
			R.Set(r, j, float64(got["l_out-2"][i])-float64(got["ffn_inp-1"][i])-float64(M[i]))
		}
	}
	if diff2 > 1e-4*norm2 {
		t.Fatalf("the gate-weighted experts' projections of the activations differ from the mixture's output by %g relative", math.Sqrt(diff2/norm2))
	}
	if rel := relDiff(bm.T, ridgeSolution(t, X, R, h.Runs[0].Ridge)); rel > 1e-6 {
		t.Fatalf("the experts' change differs from the least-squares solution by %g relative", rel)
	}

	// The file against the maps applied at run time, and against plain
	// removal.
	_, _, dr, apart := healedFile(t, m, src, removed, h, syntheticTokens(64))
	t.Logf("H: %s spread by %s and %s; residual %.3f (output map %.3f), after %.3f; file against the maps at run time %.3g, against plain removal %.3g", bm.hidden, bm.experts.ids, bm.experts.weights, h.Runs[0].Residual, out.Runs[0].Residual, h.Runs[0].After[0].Residual, dr, apart)
	if dr > 1e-3 || apart < 10*dr {
		t.Fatalf("healed file and run-time maps differ by %g relative (plain removal %g)", dr, apart)
	}
}

// The ridge chosen on held-out tokens never goes below the floor a mixture
// of experts' map gets: on a well-determined fit (many tokens, little
// noise) the held-out residual favours the smallest ridge, which the floor
// rules out.
func TestChooseRidgeFloor(t *testing.T) {
	const d, n = 8, 400
	train, held := newFit(d, d), newFit(d, d)
	for c, f := range []*fit{train, held} {
		M, Y, L := make([]float32, n*d), make([]float32, n*d), make([]float32, n*d)
		for k := range M {
			M[k] = float32(math.Sin(float64(k*7+c*13)) + 0.1*math.Cos(float64(k*k%97)))
		}
		for r := 0; r < n; r++ {
			for j := 0; j < d; j++ { // L - Y = M·T with T a fixed permutation, and a little noise
				L[r*d+j] = M[r*d+(j+3)%d] + 0.001*float32(math.Sin(float64(r*d+j)))
			}
		}
		f.add(M, M, Y, L, n, true)
	}
	free, err := chooseRidge(train, held, 0)
	if err != nil || free >= ExpertRidgeFloor {
		t.Fatalf("without a floor: %g, %v", free, err)
	}
	floored, err := chooseRidge(train, held, ExpertRidgeFloor)
	if err != nil || floored < ExpertRidgeFloor || !slices.Contains(Ridges, floored) {
		t.Fatalf("with the floor: %g, %v", floored, err)
	}
}

// Projection (the default) refits block 1's FFN down projection on its
// input, the SwiGLU activation the graph names ffn_swiglu-1 (172 wide on
// stories260K, the map of the output 64): the change is the ridge
// least-squares solution computed here from activations captured
// independently (QR of [H; √λ I] against [L - Y - M; 0]); the file
// computes what the change applied at run time computes; it leaves less of
// the gap than the output's map on the same chunks, and heals unseen text
// better than plain removal.
func TestHealProjection(t *testing.T) {
	ctx := context.Background()
	src := fixture.Asset(t, "models/stories260K.gguf")
	m, err := gguf.OpenModel(src)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	cal := tinyStories(t)
	o := runner.Options{Ctx: 128, Chunks: 64, Threads: 2}
	h, err := Heal(ctx, m, []int{2}, cal, o, Options{})
	if err != nil {
		t.Fatal(err)
	}
	run := h.Runs[0]
	if run.Form != "projection" || h.maps[1].hidden != "ffn_swiglu-1" || !slices.Equal(run.Tensors, []string{"blk.1.ffn_down.weight"}) || run.Residual <= 0 || run.Residual >= 1 {
		t.Fatalf("%+v (hidden %q)", run, h.maps[1].hidden)
	}
	out, err := Heal(ctx, m, []int{2}, cal, o, Options{Form: Output})
	if err != nil {
		t.Fatal(err)
	}
	if run.Residual >= out.Runs[0].Residual {
		t.Fatalf("the refitted projection leaves %.4f of the gap, the output's map %.4f", run.Residual, out.Runs[0].Residual)
	}

	// The independent solution.
	chunks := calibrationChunks(t, src, cal, 64, 128)
	got := capture(t, src, chunks, nil, []string{"ffn_swiglu-1", "ffn_out-1", "ffn_inp-1", "l_out-2"}, nil, nil)
	const d, p = 64, 172
	n := len(got["ffn_out-1"]) / d
	if len(got["ffn_swiglu-1"]) != n*p {
		t.Fatalf("captured %d activations for %d tokens", len(got["ffn_swiglu-1"]), n)
	}
	H, R := mat.NewDense(n, p, float32s64(got["ffn_swiglu-1"])), mat.NewDense(n, d, nil)
	for r := 0; r < n; r++ {
		for j := 0; j < d; j++ {
			i := r*d + j
			R.Set(r, j, float64(got["l_out-2"][i])-float64(got["ffn_inp-1"][i])-float64(got["ffn_out-1"][i]))
		}
	}
	if rel := relDiff(h.maps[1].T, ridgeSolution(t, H, R, run.Ridge)); rel > 1e-6 {
		t.Fatalf("the projection's change differs from the least-squares solution by %g relative", rel)
	}

	// The file against the change applied at run time, and against plain
	// removal.
	healed, _, worst, apart := healedFile(t, m, src, []int{2}, h, chunks[0])
	if worst > 1e-3 || apart < 100*worst {
		t.Fatalf("healed file and run-time change differ by %g relative (plain removal %g)", worst, apart)
	}
	plain := writeRemoval(t, m, []int{2}, nil)
	text, _ := runner.TextFile(fixture.Asset(t, "text/unseen/tinystories_last50.txt"))
	rs, err := eval.Evaluate(ctx, []string{src, plain, healed, writeRemoval(t, m, []int{2}, out.Tensors())}, text, runner.Options{Ctx: 128, Chunks: 32})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("perplexity: original %.4f, block 2 removed %.4f, projection refitted %.4f, output mapped %.4f (residuals %.3f, %.3f)", rs[0].PPL, rs[1].PPL, rs[2].PPL, rs[3].PPL, run.Residual, out.Runs[0].Residual)
	if rs[2].PPL >= rs[1].PPL {
		t.Fatalf("perplexity: removed %.4f, healed %.4f", rs[1].PPL, rs[2].PPL)
	}
}

// Package heal repairs the gap a removed run of blocks leaves: a linear map
// fitted by least squares on calibration text (ReplaceMe) and folded into
// the FFN down projection of the block before the run, and magnitude
// compensation (Prune&Comp) folded into the output projections of the
// blocks after it. It measures, fits, solves and folds; the pipeline writes
// the rewritten tensors.
package heal

import (
	"context"
	"fmt"
	"math"
	"time"

	"gonum.org/v1/gonum/mat"

	"github.com/ggufprune/ggufprune/gguf"
	"github.com/ggufprune/ggufprune/gguf/blocks"
	"github.com/ggufprune/ggufprune/gguf/imatrix"
	"github.com/ggufprune/ggufprune/llamacpp"
	"github.com/ggufprune/ggufprune/llamacpp/arch"
	"github.com/ggufprune/ggufprune/prune/runner"
)

// Training-free healing (ReplaceMe, Shopkhoev et al. 2025, least-squares
// variant). For a removed run of blocks a…b, block i = a-1 is the last kept
// block before it. On the calibration text, with M the FFN output of block
// i (graph tensor ffn_out-i, before the residual add), Y the residual
// after its attention (ffn_inp-i, so that block i's output is Y + M) and L
// the output of block b in the unpruned model (l_out-b),
//
//	T = (MᵀM + λI)⁻¹ Mᵀ(L - Y)        (Cholesky, float64 sums)
//
// makes block i's output Y + M·T approximate block b's output. Since
// M = H·Wᵀ with W the FFN down projection (ggml: n_embd rows of n_ff), the
// map folds into it: W' = Tᵀ·W, so M·T = H·W'ᵀ. Runs are healed in order,
// each fitted on the model with the earlier runs removed and healed (at run
// time: skipped, and their FFN outputs multiplied by their T).

// DefaultRidge is λ relative to the mean diagonal of MᵀM: λ = r·tr(MᵀM)/d,
// used when no chunk is held out (fewer than 4 chunks). MᵀM spans many
// orders of magnitude (a few directions of the residual stream carry most
// of its energy), so a small ridge is mostly a numerical safeguard: on
// story16, 1e-4 loses most of the gain, 1e-8 some of it; on a small
// calibration a larger one keeps the map from fitting noise.
const DefaultRidge = 1e-10

// Ridges are the relative ridges a fit chooses from, by the residual on
// the held-out chunks of the map fitted on the others, when none is given.
var Ridges = []float64{1e-10, 1e-8, 1e-6, 1e-4, 1e-3, 1e-2, 1e-1}

// chooseRidge is the ridge of Ridges whose map, fitted on train, leaves the
// least of the gap on held (DefaultRidge without held-out tokens).
func chooseRidge(train, held *fit) (float64, error) {
	if held.tokens == 0 {
		return DefaultRidge, nil
	}
	best, bestRes := 0.0, math.Inf(1)
	for _, r := range Ridges {
		T, _, _, err := train.solve(r)
		if err != nil {
			continue // degenerate at this ridge; a larger one may not be
		}
		if res := held.residual(T); res < bestRes {
			best, bestRes = r, res
		}
	}
	if best == 0 {
		return 0, fmt.Errorf("the FFN outputs on the calibration are degenerate (MᵀM + λI is not positive definite at any ridge)")
	}
	return best, nil
}

// HealedRun is one removed run and what healing did for it.
type HealedRun struct {
	First   int      `json:"first"`             // the run's blocks, in the input's numbering
	Last    int      `json:"last"`              //
	Block   int      `json:"block"`             // the kept block whose FFN down projection absorbs the map (-1: none)
	Tensors []string `json:"tensors,omitempty"` // tensors rewritten (input names)
	Type    string   `json:"type,omitempty"`    // their type, kept (quantized types are quantized again by ggml)
	Ridge   float64  `json:"ridge,omitempty"`   // λ
	// Residual is Σ‖L - Y - M·T‖² / Σ‖L - Y - M‖²: the share of the gap
	// plain removal leaves that remains after healing, on the calibration.
	Residual float64 `json:"residual"`
	// HeldOut is Residual on the held-out calibration chunks (every 4th,
	// with 4 chunks or more) of the map fitted on the others: above 1,
	// healing makes text it was not fitted on worse than plain removal.
	HeldOut float64 `json:"held_out_residual,omitempty"`
	Note    string  `json:"note,omitempty"` // why the run is not healed
}

// Healing is the result of Model.Heal.
type Healing struct {
	Runs []HealedRun `json:"runs"`
	Cost runner.Cost `json:"cost"`
	// Warnings say when the healing is not to be trusted: a calibration
	// too uniform for the width of the map, or a map that does worse than
	// plain removal on the held-out chunks.
	Warnings []string `json:"warnings,omitempty"`

	maps map[int]*mat.Dense // block i → T
	data map[string][]byte  // tensor (input name) → new data
}

// Tensors are the new data of the rewritten tensors, by input name.
func (h *Healing) Tensors() map[string][]byte { return h.data }

// runsOf splits sorted blocks into runs of consecutive blocks.
func runsOf(removed []int) [][2]int {
	var runs [][2]int
	for _, b := range removed {
		if n := len(runs); n > 0 && runs[n-1][1] == b-1 {
			runs[n-1][1] = b
			continue
		}
		runs = append(runs, [2]int{b, b})
	}
	return runs
}

// Plan says, without running anything, which tensors healing the
// removal of these blocks would rewrite, or why a run cannot be healed.
func Plan(m *gguf.Model, removed []int) ([]HealedRun, error) {
	var out []HealedRun
	has := m.Tensor
	for _, r := range runsOf(removed) {
		h := HealedRun{First: r[0], Last: r[1], Block: r[0] - 1}
		if h.Block < 0 {
			h.Block, h.Note = -1, "the run starts at block 0: no block before it to absorb the map"
			out = append(out, h)
			continue
		}
		for _, post := range arch.FFNPostNorms {
			if _, ok := has(blocks.Name(h.Block, post)); ok {
				return nil, fmt.Errorf("%s: block %d normalises its FFN output before the residual add (%s): the healing map does not fold into its weights exactly; prune without healing", m.Name(), h.Block, post)
			}
		}
		if _, ok := has(blocks.Name(h.Block, arch.FFNDownExpert)); ok {
			return nil, fmt.Errorf("%s: block %d is a mixture of experts; healing folds into dense FFN down projections only", m.Name(), h.Block)
		}
		down, ok := has(blocks.Name(h.Block, arch.FFNDown))
		if !ok || len(down.Dims) != 2 {
			return nil, fmt.Errorf("%s: block %d has no 2-D ffn_down.weight to fold the healing map into", m.Name(), h.Block)
		}
		h.Tensors = []string{down.Name}
		if _, ok := has(blocks.Name(h.Block, arch.FFNDownBias)); ok {
			h.Tensors = append(h.Tensors, blocks.Name(h.Block, arch.FFNDownBias))
		}
		h.Type = down.Type.String()
		out = append(out, h)
	}
	return out, nil
}

// Options say how healing fits and folds its maps.
type Options struct {
	Ridge   float64         // the relative ridge (0: chosen on the held-out chunks among Ridges)
	Imatrix *imatrix.Matrix // the model's importance matrix: quantized types are quantized again weighted by it
}

// Heal fits the healing map of every run of removed blocks of m on the
// calibration, and computes the rewritten FFN down projections (in their
// own type).
func Heal(ctx context.Context, m *gguf.Model, removed []int, cal runner.Calibration, o runner.Options, opt Options) (*Healing, error) {
	if _, err := Plan(m, removed); err != nil {
		return nil, err
	}
	if err := checkRidge(opt.Ridge); err != nil {
		return nil, err
	}
	start := time.Now()
	lm, err := runner.Load(m.Name(), m, o)
	if err != nil {
		return nil, err
	}
	defer lm.Close()
	chunks, _, err := runner.CalibrationChunks(ctx, lm, cal, o)
	if err != nil {
		return nil, err
	}
	f, err := NewFitter(lm, m, chunks, o)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	h, err := f.Fit(ctx, removed, opt.Ridge)
	if err != nil {
		return nil, err
	}
	// A map of width d fitted on fewer distinct tokens is fitted on hidden
	// states that barely differ: it can fit the calibration almost exactly
	// and still wreck every other text.
	if n, d := distinctTokens(chunks), lm.Info().NEmbd; n < d {
		h.Warnings = append([]string{fmt.Sprintf("the calibration %s has %d distinct tokens, fewer than the %d columns of the healing map: the fit is underdetermined and may make other text worse; heal on more varied text", cal, n, d)}, h.Warnings...)
	}
	// Fold each map into its block's FFN down projection.
	for _, run := range h.Runs {
		if run.Block < 0 || h.maps[run.Block] == nil {
			continue
		}
		for _, name := range run.Tensors {
			data, err := foldMap(m, name, h.maps[run.Block], opt.Imatrix)
			if err != nil {
				return nil, err
			}
			h.data[name] = data
		}
	}
	h.Cost.Seconds = time.Since(start).Seconds()
	return h, nil
}

func checkRidge(ridge float64) error {
	if ridge < 0 || math.IsNaN(ridge) || math.IsInf(ridge, 0) {
		return fmt.Errorf("the healing ridge %g must be a positive finite number (0: chosen on held-out calibration chunks)", ridge)
	}
	return nil
}

// Fitter fits healing maps on calibration chunks with a model loaded once:
// Heal fits one removal; a selection that compares the healed losses of
// many (selection's heal method) fits each on the same model.
type Fitter struct {
	// Only, when set, restricts fits to the chunks it accepts (by index):
	// a selection fits on some chunks and measures on the others.
	Only       func(ci int) bool
	m          *gguf.Model
	archName   string
	chunks     [][]int32
	o          runner.Options
	work, base *llamacpp.Context
	d          int
}

// NewFitter makes the two capturing contexts a fit decodes with: one runs
// the model without the removed blocks (up to the block that absorbs the
// map), the other the whole model (up to the run's last block).
func NewFitter(lm *llamacpp.Model, m *gguf.Model, chunks [][]int32, o runner.Options) (*Fitter, error) {
	archName, err := m.Architecture()
	if err != nil {
		return nil, err
	}
	f := &Fitter{m: m, archName: archName, chunks: chunks, o: o, d: lm.Info().NEmbd}
	newCtx := func() (*llamacpp.Context, error) {
		return lm.NewContext(llamacpp.ContextParams{NCtx: o.CtxSize(), Threads: o.Threads, Capture: true})
	}
	if f.work, err = newCtx(); err != nil {
		return nil, err
	}
	if f.base, err = newCtx(); err != nil {
		f.work.Close()
		return nil, err
	}
	return f, nil
}

// Close frees the contexts.
func (f *Fitter) Close() {
	f.work.Close()
	f.base.Close()
}

// Fit fits the map of every run of removed blocks (Plan must accept them),
// in order, each on the model with the earlier runs removed and healed;
// ridge is relative (0: chosen on the held-out chunks). The maps are not folded: Watch
// applies them at run time.
func (f *Fitter) Fit(ctx context.Context, removed []int, ridge float64) (*Healing, error) {
	runs, err := Plan(f.m, removed)
	if err != nil {
		return nil, err
	}
	if err := checkRidge(ridge); err != nil {
		return nil, err
	}
	start := time.Now()
	chunks, work, base, d, o := f.chunks, f.work, f.base, f.d, f.o
	h := &Healing{Runs: runs, maps: map[int]*mat.Dense{}, data: map[string][]byte{}}
	defer work.Watch(nil, nil)
	defer base.Watch(nil, nil)
	defer work.SetSkip(nil)
	defer work.SetStopAfter(-2)
	defer base.SetStopAfter(-2)
	for ri := range h.Runs {
		run := &h.Runs[ri]
		if run.Block < 0 {
			continue
		}
		var skip []int
		for _, b := range removed {
			if b < run.First {
				skip = append(skip, b)
			}
		}
		train, held := newFit(d), newFit(d)
		i := run.Block
		var Y, M []float32
		watchNames := []string{fmt.Sprintf("ffn_inp-%d", i), fmt.Sprintf("ffn_out-%d", i)}
		for j := range h.maps {
			watchNames = append(watchNames, fmt.Sprintf("ffn_out-%d", j))
		}
		if err := work.SetSkip(skip); err != nil {
			return nil, err
		}
		if err := work.SetStopAfter(i); err != nil {
			return nil, err
		}
		err := work.Watch(watchNames, func(name string, data []float32, nCols, nRows int) {
			var blk int
			switch {
			case name == watchNames[0]:
				Y = append(Y[:0], data...)
			case name == watchNames[1]:
				M = append(M[:0], data...)
			default:
				// An earlier healed block: its FFN output times its map.
				fmt.Sscanf(name, "ffn_out-%d", &blk)
				applyMap(data, h.maps[blk], nCols, nRows)
			}
		})
		if err != nil {
			return nil, err
		}
		var L []float32
		out := fmt.Sprintf("%s-%d", arch.Boundaries(f.archName).BlockOutput, run.Last)
		if err := base.Watch([]string{out}, func(_ string, data []float32, _, _ int) { L = append(L[:0], data...) }); err != nil {
			return nil, err
		}
		if err := base.SetStopAfter(run.Last); err != nil {
			return nil, err
		}
		progress := o.ProgressFunc(fmt.Sprintf("healing blocks %d-%d", run.First, run.Last), "chunks", o.CtxSize())
		for ci, ch := range chunks {
			if err := ctx.Err(); err != nil {
				return nil, err
			}
			if f.Only != nil && !f.Only(ci) {
				continue
			}
			Y, M, L = Y[:0], M[:0], L[:0]
			if err := runner.DecodeFrom(work, ch, 0); err != nil {
				return nil, err
			}
			if err := runner.DecodeFrom(base, ch, 0); err != nil {
				return nil, err
			}
			if len(Y) != len(ch)*d || len(M) != len(Y) || len(L) != len(Y) {
				return nil, fmt.Errorf("%s: the graph did not hand over ffn_inp-%d, ffn_out-%d and %s for every token; this architecture cannot be healed", f.m.Name(), i, i, out)
			}
			if heldOut(ci, len(chunks)) {
				held.add(M, Y, L, len(ch))
			} else {
				train.add(M, Y, L, len(ch))
			}
			h.Cost.Tokens += 2 * int64(len(ch))
			if progress != nil {
				progress(ci+1, len(chunks))
			}
		}
		h.Cost.Passes += 2
		// The map written is fitted on every chunk; the held-out check fits
		// one on the others and measures it on the held-out chunks. Without
		// a ridge given, the ridge is the one of Ridges whose map fitted on
		// the other chunks leaves the least on the held-out ones.
		all := train.plus(held)
		if all.mm == 0 {
			// Block i adds nothing to the stream on the calibration (its
			// FFN output is zero, an identity block): there is no output to
			// map, and the run is removed as it is.
			run.Note = fmt.Sprintf("block %d's FFN output is zero on the calibration: there is nothing to map; removed without healing", i)
			run.Tensors, run.Type = nil, ""
			continue
		}
		r := ridge
		if r == 0 {
			if r, err = chooseRidge(train, held); err != nil {
				return nil, fmt.Errorf("%s: healing blocks %d-%d: %w", f.m.Name(), run.First, run.Last, err)
			}
		}
		T, lambda, residual, err := all.solve(r)
		if err != nil {
			return nil, fmt.Errorf("%s: healing blocks %d-%d: %w", f.m.Name(), run.First, run.Last, err)
		}
		h.maps[i] = T
		run.Ridge, run.Residual = lambda, residual
		if held.tokens > 0 {
			Tt, _, _, err := train.solve(r)
			if err != nil {
				return nil, fmt.Errorf("%s: healing blocks %d-%d on the chunks not held out: %w", f.m.Name(), run.First, run.Last, err)
			}
			run.HeldOut = held.residual(Tt)
			if run.HeldOut > 1 {
				h.Warnings = append(h.Warnings, fmt.Sprintf("healing blocks %d-%d makes the held-out calibration chunks worse than plain removal (%.0f%% of the gap remains where %.1f%% remains on the chunks it was fitted on): the healed file may be worse than the plain one; evaluate both (--eval) or prune without --heal", run.First, run.Last, 100*run.HeldOut, 100*run.Residual))
			}
		}
	}
	h.Cost.Seconds = time.Since(start).Seconds()
	return h, nil
}

// Watch is what applies the maps at run time, on a capturing context that
// skips the removed blocks: the graph tensors to watch (the FFN outputs of
// the blocks that absorb a map) and the function that multiplies each by
// its map (see llamacpp.Context.Watch).
func (h *Healing) Watch() ([]string, llamacpp.WatchFunc) {
	names := map[string]*mat.Dense{}
	var list []string
	for b, T := range h.maps {
		n := fmt.Sprintf("ffn_out-%d", b)
		names[n] = T
		list = append(list, n)
	}
	return list, func(name string, data []float32, nCols, nRows int) {
		if T := names[name]; T != nil {
			applyMap(data, T, nCols, nRows)
		}
	}
}

// applyMap replaces rows x (nRows of nCols) by x·T in place.
func applyMap(data []float32, T *mat.Dense, nCols, nRows int) {
	var out mat.Dense
	out.Mul(mat.NewDense(nRows, nCols, float32s64(data)), T)
	for i, v := range out.RawMatrix().Data {
		data[i] = float32(v)
	}
}

// foldMap returns the data of tensor name (W: rows of the embedding size,
// or a bias vector) with the map folded in: W' = Tᵀ·W, in W's type.
func foldMap(m *gguf.Model, name string, T *mat.Dense, im *imatrix.Matrix) ([]byte, error) {
	return rewriteTensor(m, name, nil, im, func(w []float32) {
		d, _ := T.Dims()
		cols := len(w) / d // n_ff for the weight, 1 for a bias
		var W2 mat.Dense
		W2.Mul(T.T(), mat.NewDense(d, cols, float32s64(w)))
		for i, v := range W2.RawMatrix().Data {
			w[i] = float32(v)
		}
	})
}

// rewriteTensor returns tensor name's data (raw, or the model's when raw
// is nil) dequantized, changed by edit, and quantized again in the tensor's
// own type, weighted by the importance matrix's entry for it when there is
// one.
func rewriteTensor(m *gguf.Model, name string, raw []byte, im *imatrix.Matrix, edit func(w []float32)) ([]byte, error) {
	t, _ := m.Tensor(name) // a name from Plan or PlanCompensation
	if raw == nil {
		raw = make([]byte, t.Size)
		if _, err := m.TensorData(t).ReadAt(raw, 0); err != nil {
			return nil, fmt.Errorf("%s: tensor %s: %w", m.Name(), name, err)
		}
	}
	w, err := llamacpp.Dequantize(t.Type, raw, int(t.Elements()))
	if err != nil {
		return nil, fmt.Errorf("%s: tensor %s: %w", m.Name(), name, err)
	}
	edit(w)
	cols := int(t.Dims[0]) // ggml's rows are along the first dimension
	var weights []float32
	if im != nil {
		for _, e := range im.Entries {
			if e.Name == name && e.NMat() == 1 && e.NIn == cols {
				weights = e.Means()
			}
		}
	}
	return llamacpp.QuantizeRows(t.Type, w, cols, weights)
}

// float32s64 converts to float64.
func float32s64(x []float32) []float64 {
	y := make([]float64, len(x))
	for i, v := range x {
		y[i] = float64(v)
	}
	return y
}

// heldOut says whether chunk ci of n is held out of the fit that checks
// healing on text it was not fitted on: every 4th, with 4 chunks or more.
func heldOut(ci, n int) bool { return n >= 4 && ci%4 == 3 }

// distinctTokens counts the distinct tokens of the chunks.
func distinctTokens(chunks [][]int32) int {
	seen := map[int32]bool{}
	for _, ch := range chunks {
		for _, t := range ch {
			seen[t] = true
		}
	}
	return len(seen)
}

// fit accumulates the normal equations of min_T ‖(L - Y) - M·T‖².
type fit struct {
	d      int
	A, B   *mat.Dense // MᵀM, Mᵀ(L - Y)
	rr     float64    // Σ‖L - Y‖²
	mr, mm float64    // Σ⟨M, L - Y⟩, Σ‖M‖²: the plain removal's residual
	tokens int
}

// plus is the fit of both fits' tokens.
func (f *fit) plus(g *fit) *fit {
	s := newFit(f.d)
	s.A.Add(f.A, g.A)
	s.B.Add(f.B, g.B)
	s.rr, s.mr, s.mm, s.tokens = f.rr+g.rr, f.mr+g.mr, f.mm+g.mm, f.tokens+g.tokens
	return s
}

// residual is Σ‖R - M·T‖² / Σ‖R - M‖² on the fit's tokens, for a map T
// fitted elsewhere: ‖R - MT‖² = ‖R‖² - 2 tr(TᵀB) + tr(TᵀAT).
func (f *fit) residual(T *mat.Dense) float64 {
	var AT mat.Dense
	AT.Mul(f.A, T)
	healed := f.rr - 2*frob(T, f.B) + frob(T, &AT)
	plain := f.rr - 2*f.mr + f.mm
	if plain <= 0 {
		return 0
	}
	return math.Max(0, healed) / plain
}

func newFit(d int) *fit {
	return &fit{d: d, A: mat.NewDense(d, d, nil), B: mat.NewDense(d, d, nil)}
}

// add accumulates one chunk of n tokens.
func (f *fit) add(M, Y, L []float32, n int) {
	f.tokens += n
	Mm := mat.NewDense(n, f.d, nil)
	R := mat.NewDense(n, f.d, nil)
	for t := 0; t < n; t++ {
		for j := 0; j < f.d; j++ {
			mv := float64(M[t*f.d+j])
			rv := float64(L[t*f.d+j]) - float64(Y[t*f.d+j])
			Mm.Set(t, j, mv)
			R.Set(t, j, rv)
			f.rr += rv * rv
			f.mr += mv * rv
			f.mm += mv * mv
		}
	}
	var a, b mat.Dense
	a.Mul(Mm.T(), Mm)
	b.Mul(Mm.T(), R)
	f.A.Add(f.A, &a)
	f.B.Add(f.B, &b)
}

// solve returns T = (A + λI)⁻¹ B with λ = ridge·tr(A)/d, λ, and the
// residual Σ‖R - M·T‖² / Σ‖R - M‖².
func (f *fit) solve(ridge float64) (*mat.Dense, float64, float64, error) {
	lambda := ridge * mat.Trace(f.A) / float64(f.d)
	sym := mat.NewSymDense(f.d, nil)
	for r := 0; r < f.d; r++ {
		for c := r; c < f.d; c++ {
			v := (f.A.At(r, c) + f.A.At(c, r)) / 2
			if r == c {
				v += lambda
			}
			sym.SetSym(r, c, v)
		}
	}
	var ch mat.Cholesky
	if !ch.Factorize(sym) {
		return nil, 0, 0, fmt.Errorf("the FFN outputs on the calibration are degenerate (MᵀM + λI is not positive definite)")
	}
	T := mat.NewDense(f.d, f.d, nil)
	if err := ch.SolveTo(T, f.B); err != nil {
		return nil, 0, 0, err
	}
	return T, lambda, f.residual(T), nil
}

// frob is Σ_ij X_ij Y_ij = tr(XᵀY).
func frob(x, y mat.Matrix) float64 {
	r, c := x.Dims()
	var s float64
	for i := 0; i < r; i++ {
		for j := 0; j < c; j++ {
			s += x.At(i, j) * y.At(i, j)
		}
	}
	return s
}

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
	"slices"
	"strings"
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

// ExpertRidgeFloor is the smallest relative ridge chosen for the map of a
// mixture of experts' output. Its held-out chunks come from the same text
// as the fit, and route to the same experts: on moe8 (blocks 2-3 removed,
// 32 chunks of a Gutenberg book) they chose 1e-10, and the map made
// TinyStories text far worse than plain removal (perplexity 13.4 → 32.2);
// at 0.01 it removes 25 % of the increase there and 34 % on Gutenberg text
// (docs/healing.md). The experts' refitted projections need it too: fitted
// on 64 chunks of the same book, the ridge chosen without a floor (1e-4)
// removes 89 % of the increase on Gutenberg text and 12 % on TinyStories
// text, 0.01 removes 85 % and 57 %; on a calibration of both kinds, 88 and
// 92 % without the floor, 84 and 88 % with it.
const ExpertRidgeFloor = 1e-2

// Ridges are the relative ridges a fit chooses from, by the residual on
// the held-out chunks of the map fitted on the others, when none is given.
var Ridges = []float64{1e-10, 1e-8, 1e-6, 1e-4, 1e-3, 1e-2, 1e-1}

// chooseRidge is the ridge of Ridges (from floor on) whose map, fitted on
// train, leaves the least of the gap on held (DefaultRidge without
// held-out tokens).
func chooseRidge(train, held *fit, floor float64) (float64, error) {
	if held.tokens == 0 {
		return max(DefaultRidge, floor), nil
	}
	best, bestRes := 0.0, math.Inf(1)
	for _, r := range Ridges {
		if r < floor {
			continue
		}
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
	// Form is what the map is fitted on: "projection" (the down projection
	// refitted on its input) or "output" (a map of the FFN output).
	Form string `json:"form,omitempty"`
	// Residual is Σ‖L - Y - M·T‖² / Σ‖L - Y - M‖²: the share of the gap
	// plain removal leaves that remains after healing, on the calibration.
	Residual float64 `json:"residual"`
	// HeldOut is Residual on the held-out calibration chunks (every 4th,
	// with 4 chunks or more) of the map fitted on the others: above 1,
	// healing makes text it was not fitted on worse than plain removal.
	HeldOut float64 `json:"held_out_residual,omitempty"`
	Note    string  `json:"note,omitempty"` // why the run is not healed
	// After are the kept blocks after the run that absorb maps of their
	// own (Options.After), in order: each block's output is fitted to the
	// unpruned model's output of the same block, correcting what the maps
	// before it left.
	After []AfterMap `json:"after,omitempty"`
}

// AfterMap is a map in a kept block after a removed run.
type AfterMap struct {
	Block   int      `json:"block"`
	Tensors []string `json:"tensors"`
	Form    string   `json:"form,omitempty"` // as HealedRun.Form
	// Residual is the share of what remained of the gap at this block's
	// output (with the maps before it applied) that remains with its map,
	// on the calibration.
	Residual float64 `json:"residual,omitempty"`
}

// Healing is the result of Model.Heal.
type Healing struct {
	Runs []HealedRun `json:"runs"`
	Cost runner.Cost `json:"cost"`
	// Warnings say when the healing is not to be trusted: a calibration
	// too uniform for the width of the map, or a map that does worse than
	// plain removal on the held-out chunks.
	Warnings []string `json:"warnings,omitempty"`

	maps map[int]*blockMap // block i → its map
	data map[string][]byte // tensor (input name) → new data
}

// blockMap is one fitted map of a block's FFN output.
type blockMap struct {
	// T is the d×d map of the FFN output M (M·T), or, with hidden set, the
	// p×d change of the down projection: M + H·T, H the projection's p
	// inputs (the FFN's activation), so that W' = W + Tᵀ. For a mixture
	// of experts (experts set), H is the routed experts' activations
	// spread to their experts' columns (routing.spread) and T stacks one
	// change per expert.
	T       *mat.Dense
	output  string   // the graph tensor of the FFN output
	hidden  string   // the graph tensor of H ("": T maps the output)
	experts *routing // the routing H is spread by (nil: a dense projection)
}

// routing is how a mixture of experts (llama-graph.cpp build_moe_ffn)
// routes each token: to nUsed of nExpert experts, the nExpert-wide argsort
// of the router's probabilities (graph tensor ffn_moe_argsort) listing
// them first, each expert's FFN output multiplied by a gate weight (the
// last of ffn_moe_weights, _softmax, _norm, _scaled) and the products
// summed. The expert FFNs' down projections (ffn_down_exps, nExpert
// matrices of d rows of p) read the activations of the experts chosen,
// [p, nUsed, n_tokens]. So the mixture's output is linear in the stacked
// projections: M = X·Wᵀ with W the d × nExpert·p matrix of all of them
// side by side and X the activations spread, row t holding w_k·h_{t,k} in
// the p columns of its k-th expert.
type routing struct {
	ids, weights string // the graph tensors of the argsort and the gate weights
	nExpert, p   int
}

// spread returns X (n rows of nExpert·p) from the experts' activations h
// (n·nUsed rows of p), the argsort ids (n rows of nExpert) and the gate
// weights w (n·nUsed), or false where they do not fit together.
func (r *routing) spread(h, ids, w []float32, n int) ([]float32, bool) {
	if n <= 0 || len(w)%n != 0 || len(ids) != n*r.nExpert {
		return nil, false
	}
	nUsed := len(w) / n
	if nUsed < 1 || nUsed > r.nExpert || len(h) != n*nUsed*r.p {
		return nil, false
	}
	X := make([]float32, n*r.nExpert*r.p)
	for t := 0; t < n; t++ {
		for k := 0; k < nUsed; k++ {
			e := int(ids[t*r.nExpert+k])
			if e < 0 || e >= r.nExpert || float32(e) != ids[t*r.nExpert+k] {
				return nil, false
			}
			row := X[(t*r.nExpert+e)*r.p : (t*r.nExpert+e+1)*r.p]
			wk := w[t*nUsed+k]
			for c, v := range h[(t*nUsed+k)*r.p : (t*nUsed+k+1)*r.p] {
				row[c] += wk * v
			}
		}
	}
	return X, true
}

// Tensors are the new data of the rewritten tensors, by input name.
func (h *Healing) Tensors() map[string][]byte { return h.data }

// folds are the maps fitted, each with the block it sits in and the
// tensors it folds into.
func (h *Healing) folds() []AfterMap {
	var out []AfterMap
	for _, run := range h.Runs {
		for _, f := range append([]AfterMap{{Block: run.Block, Tensors: run.Tensors}}, run.After...) {
			if len(f.Tensors) > 0 && h.maps[f.Block] != nil {
				out = append(out, f)
			}
		}
	}
	return out
}

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
// removal of these blocks would rewrite, or why a run cannot be healed;
// up to after kept blocks after each run absorb maps of their own where
// they can (see Options.After).
func Plan(m *gguf.Model, removed []int, after int) ([]HealedRun, error) {
	var out []HealedRun
	n, err := m.BlockCount()
	if err != nil {
		return nil, err
	}
	isRemoved := map[int]bool{}
	for _, b := range removed {
		isRemoved[b] = true
	}
	for _, r := range runsOf(removed) {
		h := HealedRun{First: r[0], Last: r[1], Block: r[0] - 1}
		if h.Block < 0 {
			h.Block, h.Note = -1, "the run starts at block 0: no block before it to absorb the map"
		} else {
			tensors, typ, err := foldTensors(m, h.Block)
			if err != nil {
				return nil, err
			}
			h.Tensors, h.Type = tensors, typ
		}
		// The blocks after the run, up to the one that absorbs the next
		// run's map (fitted on its raw output, which would replace this).
		for j := r[1] + 1; j < n && j <= r[1]+after && !isRemoved[j+1]; j++ {
			tensors, _, err := foldTensors(m, j)
			if err != nil {
				break
			}
			h.After = append(h.After, AfterMap{Block: j, Tensors: tensors})
		}
		out = append(out, h)
	}
	return out, nil
}

// foldTensors are the tensors of block i a healing map folds into (its FFN
// down projection and bias), and their type, or why it cannot.
func foldTensors(m *gguf.Model, i int) ([]string, string, error) {
	has := m.Tensor
	for _, post := range arch.FFNPostNorms {
		if _, ok := has(blocks.Name(i, post)); ok {
			return nil, "", fmt.Errorf("%s: block %d normalises its FFN output before the residual add (%s): the healing map does not fold into its weights exactly; prune without healing", m.Name(), i, post)
		}
	}
	if exps, ok := has(blocks.Name(i, arch.FFNDownExpert)); ok {
		// A mixture of experts: its FFN output is the gate-weighted sum of
		// the routed experts' down projections (and a shared expert's),
		// linear in each, so the map folds into every expert alike. Only
		// blocks whose every tensor is known to read the stream or write
		// to it that way (as compensation knows them) are healed.
		for _, t := range m.AllTensors() {
			b, rest, ok, _ := blocks.Split(t.Name)
			if !ok || b != i {
				continue
			}
			if base, _, _ := strings.Cut(rest, "."); !compensationReaders[base] && !compensationWriters[rest] {
				return nil, "", fmt.Errorf("%s: block %d has %s, which healing does not know (it may add to the FFN output otherwise than through the experts' down projections); prune without --heal", m.Name(), i, t.Name)
			}
		}
		tensors := []string{exps.Name}
		if _, ok := has(blocks.Name(i, "ffn_down_shexp.weight")); ok {
			tensors = append(tensors, blocks.Name(i, "ffn_down_shexp.weight"))
		}
		return tensors, exps.Type.String(), nil
	}
	down, ok := has(blocks.Name(i, arch.FFNDown))
	if !ok || len(down.Dims) != 2 {
		return nil, "", fmt.Errorf("%s: block %d has no 2-D ffn_down.weight to fold the healing map into", m.Name(), i)
	}
	tensors := []string{down.Name}
	if _, ok := has(blocks.Name(i, arch.FFNDownBias)); ok {
		tensors = append(tensors, blocks.Name(i, arch.FFNDownBias))
	}
	return tensors, down.Type.String(), nil
}

// Form is what a healing map is fitted on.
type Form int

const (
	// Projection refits a block's FFN down projection W (d rows of p) on
	// its input H, the FFN's activation: its change Δ minimises
	// ‖L - Y - M - H·Δ‖² + λ‖Δ‖² and folds as W' = W + Δᵀ. H is p = n_ff
	// wide (2.7 times d on story16), and M = H·Wᵀ is in its span, so the
	// fit does at least as well as Output's on the same tokens. A mixture
	// of experts refits every routed expert's projection at once (p =
	// n_expert·n_ff_exp: its output is linear in them, see routing).
	// Blocks whose FFN is wider than MaxProjectionWidth, or whose input
	// the graph does not hand over or does not multiply out to the FFN
	// output (a shared expert, expert biases), get Output's map.
	Projection Form = iota
	// Output maps the FFN output: M·T with T d×d (ReplaceMe's map).
	Output
)

// MaxProjectionWidth is the widest FFN (n_ff, or n_expert·n_ff_exp for a
// mixture of experts) whose down projection Projection refits: its normal
// equations take p² float64s several times over (0.7 GB at 4096) and a
// Cholesky factorization of p³/3 per ridge.
const MaxProjectionWidth = 4096

// Forms are the forms by name, as the CLI and JSON spell them.
var Forms = map[string]Form{"projection": Projection, "output": Output}

func (f Form) String() string {
	for n, v := range Forms {
		if v == f {
			return n
		}
	}
	return fmt.Sprintf("Form(%d)", int(f))
}

// Options say how healing fits and folds its maps.
type Options struct {
	Ridge float64 // the relative ridge (0: chosen on the held-out chunks among Ridges)
	Form  Form    // what the maps are fitted on (default Projection)
	// After gives up to this many kept blocks after each run a map of
	// their own, fitted in order with the maps before them applied, so
	// that each block's output approaches the unpruned model's output of
	// that block: several kept blocks share the repair instead of one. A
	// map is kept only where it does better than none on the held-out
	// chunks.
	After   int
	Imatrix *imatrix.Matrix // the model's importance matrix: quantized types are quantized again weighted by it
}

// Heal fits the healing map of every run of removed blocks of m on the
// calibration, and computes the rewritten FFN down projections (in their
// own type).
func Heal(ctx context.Context, m *gguf.Model, removed []int, cal runner.Calibration, o runner.Options, opt Options) (*Healing, error) {
	if _, err := Plan(m, removed, opt.After); err != nil {
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
	f.Form = opt.Form
	h, err := f.Fit(ctx, removed, opt.Ridge, opt.After)
	if err != nil {
		return nil, err
	}
	// A map of width d fitted on fewer distinct tokens is fitted on hidden
	// states that barely differ: it can fit the calibration almost exactly
	// and still wreck every other text.
	// (A refitted projection is wider than d, but its ridge shrinks towards
	// the original projection in the directions the calibration does not
	// span: story16's 344-wide fits on 214 distinct tokens hold out well.)
	if n, d := distinctTokens(chunks), lm.Info().NEmbd; n < d {
		h.Warnings = append([]string{fmt.Sprintf("the calibration %s has %d distinct tokens, fewer than the %d columns of the healing map: the fit is underdetermined and may make other text worse; heal on more varied text", cal, n, d)}, h.Warnings...)
	}
	// A map of a mixture of experts is fitted on the outputs of the experts
	// the calibration routes to: on moe8, maps fitted on a Gutenberg book
	// made TinyStories text far worse (perplexity 13.4 → 32.2 with two
	// blocks removed, before ExpertRidgeFloor; 12.9 with it) while
	// Gutenberg text gained (docs/healing.md).
	for _, f := range h.folds() {
		if strings.HasSuffix(f.Tensors[0], arch.FFNDownExpert) {
			h.Warnings = append(h.Warnings, "healing maps folded into the experts of a mixture of experts are fitted on the experts the calibration routes to and can make other kinds of text much worse (measured on moe8); calibrate on text like the model's use and evaluate the result (--eval) against plain removal")
			break
		}
	}
	// Fold each map into its block's FFN down projection.
	for _, f := range h.folds() {
		for _, name := range f.Tensors {
			data, err := foldMap(m, name, h.maps[f.Block], opt.Imatrix)
			if err != nil {
				return nil, err
			}
			if data != nil {
				h.data[name] = data
			}
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
	Only func(ci int) bool
	// Form is what the maps are fitted on (Options.Form).
	Form       Form
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
// ridge is relative (0: chosen on the held-out chunks); up to after kept
// blocks after each run get maps too (see Options.After). The maps are not
// folded: Watch applies them at run time.
func (f *Fitter) Fit(ctx context.Context, removed []int, ridge float64, after int) (*Healing, error) {
	runs, err := Plan(f.m, removed, after)
	if err != nil {
		return nil, err
	}
	if err := checkRidge(ridge); err != nil {
		return nil, err
	}
	start := time.Now()
	h := &Healing{Runs: runs, maps: map[int]*blockMap{}, data: map[string][]byte{}}
	defer f.work.Watch(nil, nil)
	defer f.base.Watch(nil, nil)
	defer f.work.SetSkip(nil)
	defer f.work.SetStopAfter(-2)
	defer f.base.SetStopAfter(-2)
	for ri := range h.Runs {
		run := &h.Runs[ri]
		var skip []int
		for _, b := range removed {
			if b <= run.Last {
				skip = append(skip, b)
			}
		}
		if run.Block >= 0 {
			m, err := f.fitMap(ctx, h, skip, run.Block, run.Last, ridge)
			if err != nil {
				return nil, fmt.Errorf("%s: healing blocks %d-%d: %w", f.m.Name(), run.First, run.Last, err)
			}
			run.Ridge, run.Residual, run.HeldOut = m.ridge, m.residual, m.heldOut
			if m.blockMap != nil {
				run.Form = m.form()
				run.Tensors = m.rewrites(run.Tensors)
			}
			if m.blockMap == nil {
				// Block i adds nothing to the stream on the calibration (its
				// FFN output is zero, an identity block): there is no output
				// to map, and the run is removed as it is.
				run.Note = fmt.Sprintf("block %d's FFN output is zero on the calibration: there is nothing to map; removed without healing", run.Block)
				run.Tensors, run.Type = nil, ""
			} else {
				h.maps[run.Block] = m.blockMap
				if run.HeldOut > 1 {
					h.Warnings = append(h.Warnings, fmt.Sprintf("healing blocks %d-%d makes the held-out calibration chunks worse than plain removal (%.0f%% of the gap remains where %.1f%% remains on the chunks it was fitted on): the healed file may be worse than the plain one; evaluate both (--eval) or prune without --heal", run.First, run.Last, 100*run.HeldOut, 100*run.Residual))
				}
			}
		}
		// The blocks after the run (Plan chose them), in order.
		kept := run.After[:0]
		for _, a := range run.After {
			m, err := f.fitMap(ctx, h, skip, a.Block, a.Block, ridge)
			if err != nil {
				return nil, fmt.Errorf("%s: healing block %d after blocks %d-%d: %w", f.m.Name(), a.Block, run.First, run.Last, err)
			}
			if m.blockMap == nil || m.heldOut >= 1 {
				break // nothing to gain on text it was not fitted on
			}
			h.maps[a.Block] = m.blockMap
			a.Residual, a.Form, a.Tensors = m.residual, m.form(), m.rewrites(a.Tensors)
			kept = append(kept, a)
		}
		run.After = kept
	}
	h.Cost.Seconds = time.Since(start).Seconds()
	return h, nil
}

// fitted is one map and how well it fits.
type fitted struct {
	*blockMap                // nil: block i's FFN output is zero
	ridge, residual, heldOut float64
}

// sumIs reports whether y + m equals l, to float32 rounding: m is the FFN
// output whose residual add gives the block's output l.
func sumIs(y, m, l []float32) bool {
	var diff, norm float64
	for k := range l {
		e := float64(y[k]) + float64(m[k]) - float64(l[k])
		diff += e * e
		norm += float64(l[k]) * float64(l[k])
	}
	return diff <= 1e-8*norm
}

// hiddenActivations are the graph tensors that may hold the input of a
// block's FFN down projection: llama-graph.cpp build_ffn names it after
// its activation (ffn_swiglu, or ffn_silu then ffn_gate_par, …). The one
// whose product with the projection is the FFN output is the one.
var hiddenActivations = []string{"ffn_swiglu", "ffn_silu", "ffn_geglu", "ffn_gelu", "ffn_act", "ffn_relu", "ffn_sqr(relu)", "ffn_reglu", "ffn_gate_par"}

// projection is a block's FFN down projection as floats, d rows of p
// (nil W where the block has none Projection refits), and its bias (nil
// without one). For a mixture of experts W holds every expert's
// projection side by side (d rows of nExpert·p) and reads the activations
// spread by experts.
type projection struct {
	W, bias []float32
	p       int
	experts *routing
}

// moeActivations and moeWeights are the graph tensors that may hold a
// mixture of experts' activations and gate weights (llama-graph.cpp
// build_moe_ffn; it names the activation again ffn_moe_weighted after the
// experts' outputs are weighted). The ones whose spread product with the
// projections is the mixture's output are the ones.
var (
	moeActivations = []string{"ffn_moe_swiglu", "ffn_moe_silu", "ffn_moe_geglu", "ffn_moe_gelu", "ffn_moe_swiglu_oai", "ffn_moe_reglu", "ffn_moe_relu", "ffn_moe_relu_sqr", "ffn_moe_weighted"}
	moeWeights     = []string{"ffn_moe_weights_scaled", "ffn_moe_weights_norm", "ffn_moe_weights_softmax", "ffn_moe_weights"} // the last refinement first
)

// downProjection reads block i's FFN down projection (a dense one, or a
// mixture of experts' stacked ones without biases), or none where the
// block has neither or it is wider than MaxProjectionWidth.
func (f *Fitter) downProjection(i int) (projection, error) {
	if t, ok := f.m.Tensor(blocks.Name(i, arch.FFNDownExpert)); ok {
		// ggml's [p, d, nExpert]: expert e's row j is at (e·d + j)·p.
		if _, biased := f.m.Tensor(blocks.Name(i, "ffn_down_exps.bias")); biased || len(t.Dims) != 3 || int(t.Dims[1]) != f.d || t.Dims[0]*t.Dims[2] > MaxProjectionWidth {
			return projection{}, nil
		}
		w, err := tensorFloats(f.m, t, nil)
		if err != nil {
			return projection{}, err
		}
		p, nExpert := int(t.Dims[0]), int(t.Dims[2])
		W := make([]float32, len(w))
		for e := 0; e < nExpert; e++ {
			for j := 0; j < f.d; j++ {
				copy(W[(j*nExpert+e)*p:(j*nExpert+e+1)*p], w[(e*f.d+j)*p:(e*f.d+j+1)*p])
			}
		}
		return projection{W: W, p: nExpert * p, experts: &routing{ids: fmt.Sprintf("ffn_moe_argsort-%d", i), nExpert: nExpert, p: p}}, nil
	}
	t, ok := f.m.Tensor(blocks.Name(i, arch.FFNDown))
	if !ok || len(t.Dims) != 2 || int(t.Dims[1]) != f.d || t.Dims[0] > MaxProjectionWidth {
		return projection{}, nil
	}
	W, err := tensorFloats(f.m, t, nil)
	if err != nil {
		return projection{}, err
	}
	var bias []float32
	if b, ok := f.m.Tensor(blocks.Name(i, arch.FFNDownBias)); ok {
		if bias, err = tensorFloats(f.m, b, nil); err != nil {
			return projection{}, err
		}
	}
	return projection{W: W, bias: bias, p: int(t.Dims[0])}, nil
}

// isProjection reports whether m = h·Wᵀ + bias for the n rows of h (p
// wide), to the rounding of the activations ggml converts for the product
// (a relative error of 1e-3 in the squared norm).
func isProjection(h, m, W, bias []float32, p, d, n int) bool {
	var diff, norm float64
	for t := 0; t < n; t++ {
		ht := h[t*p : (t+1)*p]
		for j := 0; j < d; j++ {
			s := 0.0
			if bias != nil {
				s = float64(bias[j])
			}
			for k, w := range W[j*p : (j+1)*p] {
				s += float64(w) * float64(ht[k])
			}
			e := s - float64(m[t*d+j])
			diff += e * e
			norm += float64(m[t*d+j]) * float64(m[t*d+j])
		}
	}
	return diff <= 1e-3*norm
}

// fitMap fits the map of block i's FFN output, with the blocks in skip
// removed and the maps fitted so far applied, so that block i's output
// approaches block target's output in the unpruned model. Where the block
// has a down projection (dense, or a mixture of experts' stacked ones)
// whose input the graph hands over, and f.Form is Projection, the map
// refits the projection itself on that input (p wide, more than the
// output's d); else it maps the output.
func (f *Fitter) fitMap(ctx context.Context, h *Healing, skip []int, i, target int, ridge float64) (fitted, error) {
	chunks, work, base, d, o := f.chunks, f.work, f.base, f.d, f.o
	var proj projection
	if f.Form == Projection {
		var err error
		if proj, err = f.downProjection(i); err != nil {
			return fitted{}, err
		}
	}
	p := proj.p
	// Block i's FFN output is ffn_out-i in most graphs; a mixture of
	// experts without a shared expert names it ffn_moe_out-i (its ffn_out
	// is the sum with the residual, renamed l_out). The one whose sum with
	// the FFN input is the block's output is the one (checked every chunk).
	blockOut := fmt.Sprintf("%s-%d", arch.Boundaries(f.archName).BlockOutput, i)
	cands := []string{fmt.Sprintf("ffn_out-%d", i), fmt.Sprintf("ffn_moe_out-%d", i)}
	var Y, Lw []float32
	Ms := make([][]float32, len(cands))
	watchNames := []string{fmt.Sprintf("ffn_inp-%d", i), blockOut}
	watchNames = append(watchNames, cands...)
	// The candidates for H (and a mixture's routing), captured on the
	// first chunk, which decides the form, and only those chosen after it.
	var inputs []string
	switch {
	case proj.experts != nil:
		for _, a := range append(append(slices.Clone(moeActivations), moeWeights...), "ffn_moe_argsort") {
			inputs = append(inputs, fmt.Sprintf("%s-%d", a, i))
		}
	case p > 0:
		for _, a := range hiddenActivations {
			inputs = append(inputs, fmt.Sprintf("%s-%d", a, i))
		}
	}
	watchNames = append(watchNames, inputs...)
	captured := map[string][]float32{}
	chosen := map[string]bool{}
	applied, apply := h.watch(i)
	watchNames = append(watchNames, applied...)
	if err := work.SetSkip(skip); err != nil {
		return fitted{}, err
	}
	if err := work.SetStopAfter(i); err != nil {
		return fitted{}, err
	}
	output, hidden := "", ""
	var experts *routing
	var train, held *fit
	own := map[string]bool{}
	for _, n := range watchNames[:len(watchNames)-len(applied)] {
		own[n] = true
	}
	err := work.Watch(watchNames, func(name string, data []float32, nCols, nRows int) {
		switch {
		case !own[name]:
		case name == watchNames[0]:
			Y = append(Y[:0], data...)
		case name == blockOut:
			Lw = append(Lw[:0], data...)
		case name == cands[0]:
			Ms[0] = append(Ms[0][:0], data...)
		case name == cands[1]:
			Ms[1] = append(Ms[1][:0], data...)
		case train == nil || chosen[name]:
			captured[name] = append(captured[name][:0], data...)
		}
		apply(name, data, nCols, nRows)
	})
	if err != nil {
		return fitted{}, err
	}
	var L []float32
	out := fmt.Sprintf("%s-%d", arch.Boundaries(f.archName).BlockOutput, target)
	if err := base.Watch([]string{out}, func(_ string, data []float32, _, _ int) { L = append(L[:0], data...) }); err != nil {
		return fitted{}, err
	}
	if err := base.SetStopAfter(target); err != nil {
		return fitted{}, err
	}
	// input is H of the chunk's n tokens (n rows of p), or false where the
	// graph did not hand it over.
	input := func(n int) ([]float32, bool) {
		if experts != nil {
			return experts.spread(captured[hidden], captured[experts.ids], captured[experts.weights], n)
		}
		H := captured[hidden]
		return H, len(H) == n*p
	}
	progress := o.ProgressFunc(fmt.Sprintf("healing: fitting block %d", i), "chunks", o.CtxSize())
	for ci, ch := range chunks {
		if err := ctx.Err(); err != nil {
			return fitted{}, err
		}
		if f.Only != nil && !f.Only(ci) {
			continue
		}
		Y, Lw, L = Y[:0], Lw[:0], L[:0]
		for k := range Ms {
			Ms[k] = Ms[k][:0]
		}
		clear(captured)
		if err := runner.DecodeFrom(work, ch, 0); err != nil {
			return fitted{}, err
		}
		if err := runner.DecodeFrom(base, ch, 0); err != nil {
			return fitted{}, err
		}
		var M []float32
		for k, cand := range cands {
			if (output == "" || output == cand) && len(Ms[k]) == len(Y) && len(Lw) == len(Y) && sumIs(Y, Ms[k], Lw) {
				M, output = Ms[k], cand
				break
			}
		}
		if len(Y) != len(ch)*d || M == nil || len(L) != len(Y) {
			return fitted{}, fmt.Errorf("the graph did not hand over block %d's FFN input and an FFN output (ffn_out or ffn_moe_out) whose sum is the block's output %s, and %s, for every token; this architecture cannot be healed", i, blockOut, out)
		}
		if train == nil {
			// The first chunk decides the form: the projection's input
			// where one candidate multiplies out to the FFN output.
			n := len(ch)
			if proj.experts != nil {
				r := *proj.experts
			find:
				for _, a := range moeActivations {
					for _, w := range moeWeights {
						r.weights = fmt.Sprintf("%s-%d", w, i)
						act := fmt.Sprintf("%s-%d", a, i)
						if X, ok := r.spread(captured[act], captured[r.ids], captured[r.weights], n); ok && isProjection(X, M, proj.W, nil, p, d, n) {
							hidden, experts = act, &r
							break find
						}
					}
				}
			} else {
				for _, a := range hiddenActivations {
					name := fmt.Sprintf("%s-%d", a, i)
					if H := captured[name]; len(H) == n*p && isProjection(H, M, proj.W, proj.bias, p, d, n) {
						hidden = name
					}
				}
			}
			width := d
			if hidden != "" {
				width = p
				chosen[hidden] = true
				if experts != nil {
					chosen[experts.ids], chosen[experts.weights] = true, true
				}
			}
			train, held = newFit(width, d), newFit(width, d)
		}
		acc := train
		if heldOut(ci, len(chunks)) {
			acc = held
		}
		if hidden != "" {
			H, ok := input(len(ch))
			if !ok {
				return fitted{}, fmt.Errorf("the graph did not hand over block %d's FFN activation %s (and routing) for every token", i, hidden)
			}
			acc.add(H, M, Y, L, len(ch), false)
		} else {
			acc.add(M, M, Y, L, len(ch), true)
		}
		h.Cost.Tokens += 2 * int64(len(ch))
		if progress != nil {
			progress(ci+1, len(chunks))
		}
	}
	h.Cost.Passes += 2
	if train == nil {
		return fitted{}, fmt.Errorf("no calibration chunk to fit block %d's map on", i)
	}
	// The map written is fitted on every chunk; the held-out check fits
	// one on the others and measures it on the held-out chunks. Without
	// a ridge given, the ridge is the one of Ridges whose map fitted on
	// the other chunks leaves the least on the held-out ones.
	all := train.plus(held)
	if all.xx == 0 {
		return fitted{}, nil
	}
	r := ridge
	if r == 0 {
		var err error
		floor := 0.0
		if _, moe := f.m.Tensor(blocks.Name(i, arch.FFNDownExpert)); moe {
			floor = ExpertRidgeFloor
		}
		if r, err = chooseRidge(train, held, floor); err != nil {
			return fitted{}, err
		}
	}
	T, lambda, residual, err := all.solve(r)
	if err != nil {
		return fitted{}, err
	}
	res := fitted{blockMap: &blockMap{T: T, output: output, hidden: hidden, experts: experts}, ridge: lambda, residual: residual}
	if held.tokens > 0 {
		Tt, _, _, err := train.solve(r)
		if err != nil {
			return fitted{}, fmt.Errorf("on the chunks not held out: %w", err)
		}
		res.heldOut = held.residual(Tt)
	}
	return res, nil
}

// Watch is what applies the maps at run time, on a capturing context that
// skips the removed blocks: the graph tensors to watch (the FFN outputs of
// the blocks that absorb a map, and the activations a refitted projection
// reads) and the function that applies each map (see
// llamacpp.Context.Watch).
func (h *Healing) Watch() ([]string, llamacpp.WatchFunc) { return h.watch(-1) }

// watch is Watch without block except's map.
func (h *Healing) watch(except int) ([]string, llamacpp.WatchFunc) {
	outputs := map[string]*blockMap{}
	inputs := map[string][]float32{} // what refitted projections read, by graph tensor
	var list []string
	for b, bm := range h.maps {
		if b == except {
			continue
		}
		outputs[bm.output] = bm
		list = append(list, bm.output)
		for _, n := range bm.inputs() {
			inputs[n] = nil
			list = append(list, n)
		}
	}
	return list, func(name string, data []float32, nCols, nRows int) {
		if H, ok := inputs[name]; ok {
			inputs[name] = append(H[:0], data...)
		}
		if bm := outputs[name]; bm != nil {
			bm.apply(data, inputs, nCols, nRows)
		}
	}
}

// inputs are the graph tensors the map reads besides the FFN output.
func (bm *blockMap) inputs() []string {
	switch {
	case bm.experts != nil:
		return []string{bm.hidden, bm.experts.ids, bm.experts.weights}
	case bm.hidden != "":
		return []string{bm.hidden}
	}
	return nil
}

// form names the map's form as the JSON does.
func (bm *blockMap) form() string {
	if bm.hidden != "" {
		return Projection.String()
	}
	return Output.String()
}

// rewrites are the tensors of the block the map rewrites, of those Plan
// names: a refitted projection keeps its bias (and a mixture of experts'
// shared expert, which the routed experts' refit leaves as it is).
func (bm *blockMap) rewrites(tensors []string) []string {
	if bm.hidden == "" {
		return tensors
	}
	return slices.DeleteFunc(slices.Clone(tensors), func(n string) bool {
		return strings.HasSuffix(n, ".bias") || bm.experts != nil && !strings.HasSuffix(n, arch.FFNDownExpert)
	})
}

// apply applies the map to the FFN output rows (nRows of nCols) in place:
// M·T, or M + H·T with the rows of H the projection's input (read from
// the captured inputs, spread by a mixture's routing).
func (bm *blockMap) apply(data []float32, inputs map[string][]float32, nCols, nRows int) {
	if bm.hidden == "" {
		applyMap(data, bm.T, nCols, nRows)
		return
	}
	p, _ := bm.T.Dims()
	H, ok := inputs[bm.hidden], true
	if bm.experts != nil {
		H, ok = bm.experts.spread(H, inputs[bm.experts.ids], inputs[bm.experts.weights], nRows)
	}
	if !ok || len(H) != nRows*p {
		return // not handed over: the decode fails its own checks
	}
	var out mat.Dense
	out.Mul(mat.NewDense(nRows, p, float32s64(H)), bm.T)
	for i, v := range out.RawMatrix().Data {
		data[i] += float32(v)
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
// or a bias vector) with the map folded in: W' = Tᵀ·W for a map of the
// output, W' = W + Tᵀ for a change of the projection (its bias is kept), in
// W's type. A stacked expert tensor (n_ff × n_embd × experts) holds one
// such W per expert, each folded alike.
func foldMap(m *gguf.Model, name string, bm *blockMap, im *imatrix.Matrix) ([]byte, error) {
	t, _ := m.Tensor(name)
	T := bm.T
	if bm.hidden != "" {
		if strings.HasSuffix(name, ".bias") {
			return nil, nil
		}
		if r := bm.experts; r != nil {
			// Expert e's row j is at (e·d + j)·r.p; its change is T's rows
			// e·r.p … (e+1)·r.p - 1.
			return rewriteTensor(m, name, nil, im, func(w []float32) {
				_, d := T.Dims()
				for e := 0; e < r.nExpert; e++ {
					for j := 0; j < d; j++ {
						for k := 0; k < r.p; k++ {
							w[(e*d+j)*r.p+k] += float32(T.At(e*r.p+k, j))
						}
					}
				}
			})
		}
		return rewriteTensor(m, name, nil, im, func(w []float32) {
			p, d := T.Dims()
			for j := 0; j < d; j++ {
				for k := 0; k < p; k++ {
					w[j*p+k] += float32(T.At(k, j))
				}
			}
		})
	}
	d, _ := T.Dims()
	cols := 1 // a bias: one value per row
	if len(t.Dims) >= 2 && int(t.Dims[1]) == d && !strings.HasSuffix(name, ".bias") {
		cols = int(t.Dims[0]) // n_ff
	}
	return rewriteTensor(m, name, nil, im, func(w []float32) {
		for off := 0; off+d*cols <= len(w); off += d * cols {
			part := w[off : off+d*cols]
			var W2 mat.Dense
			W2.Mul(T.T(), mat.NewDense(d, cols, float32s64(part)))
			for i, v := range W2.RawMatrix().Data {
				part[i] = float32(v)
			}
		}
	})
}

// rewriteTensor returns tensor name's data (raw, or the model's when raw
// is nil) dequantized, changed by edit, and quantized again in the tensor's
// own type, weighted by the importance matrix's entry for it when there is
// one.
func rewriteTensor(m *gguf.Model, name string, raw []byte, im *imatrix.Matrix, edit func(w []float32)) ([]byte, error) {
	t, _ := m.Tensor(name) // a name from Plan or PlanCompensation
	w, err := tensorFloats(m, t, raw)
	if err != nil {
		return nil, err
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

// tensorFloats is tensor t's data (raw, or the model's when raw is nil)
// dequantized.
func tensorFloats(m *gguf.Model, t gguf.ModelTensor, raw []byte) ([]float32, error) {
	if raw == nil {
		raw = make([]byte, t.Size)
		if _, err := m.TensorData(t).ReadAt(raw, 0); err != nil {
			return nil, fmt.Errorf("%s: tensor %s: %w", m.Name(), t.Name, err)
		}
	}
	w, err := llamacpp.Dequantize(t.Type, raw, int(t.Elements()))
	if err != nil {
		return nil, fmt.Errorf("%s: tensor %s: %w", m.Name(), t.Name, err)
	}
	return w, nil
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

// fit accumulates the normal equations of min_T ‖R - X·T‖², X the p-wide
// inputs of the map and R its d-wide target: for a map of the FFN output,
// X = M and R = L - Y; for a refitted down projection, X = H and
// R = L - Y - M (T is then the projection's change).
type fit struct {
	p, d   int
	A, B   *mat.Dense // XᵀX, XᵀR
	rr     float64    // Σ‖R‖²
	plain  float64    // Σ‖R - X·T₀‖², the plain removal's residual (T₀ = I for the output's map, 0 for the projection's change)
	xx     float64    // Σ‖X‖²
	tokens int
}

func newFit(p, d int) *fit {
	return &fit{p: p, d: d, A: mat.NewDense(p, p, nil), B: mat.NewDense(p, d, nil)}
}

// plus is the fit of both fits' tokens.
func (f *fit) plus(g *fit) *fit {
	s := newFit(f.p, f.d)
	s.A.Add(f.A, g.A)
	s.B.Add(f.B, g.B)
	s.rr, s.plain, s.xx, s.tokens = f.rr+g.rr, f.plain+g.plain, f.xx+g.xx, f.tokens+g.tokens
	return s
}

// residual is Σ‖R - X·T‖² / Σ‖R - X·T₀‖² on the fit's tokens, for a map T
// fitted elsewhere: ‖R - XT‖² = ‖R‖² - 2 tr(TᵀB) + tr(TᵀAT).
func (f *fit) residual(T *mat.Dense) float64 {
	var AT mat.Dense
	AT.Mul(f.A, T)
	healed := f.rr - 2*frob(T, f.B) + frob(T, &AT)
	if f.plain <= 0 {
		return 0
	}
	return math.Max(0, healed) / f.plain
}

// add accumulates one chunk of n tokens: X the map's inputs (p wide), M,
// Y and L block i's FFN output and input and the target (d wide); output
// says the map is of the FFN output (X = M), else of the projection.
func (f *fit) add(X, M, Y, L []float32, n int, output bool) {
	f.tokens += n
	Xm := mat.NewDense(n, f.p, float32s64(X[:n*f.p]))
	R := mat.NewDense(n, f.d, nil)
	for t := 0; t < n; t++ {
		for j := 0; j < f.d; j++ {
			k := t*f.d + j
			mv, rv := float64(M[k]), float64(L[k])-float64(Y[k])
			if !output {
				rv -= mv
				f.plain += rv * rv
			} else {
				f.plain += (rv - mv) * (rv - mv)
			}
			R.Set(t, j, rv)
			f.rr += rv * rv
		}
	}
	for _, v := range Xm.RawMatrix().Data {
		f.xx += v * v
	}
	var a, b mat.Dense
	a.Mul(Xm.T(), Xm)
	b.Mul(Xm.T(), R)
	f.A.Add(f.A, &a)
	f.B.Add(f.B, &b)
}

// solve returns T = (A + λI)⁻¹ B with λ = ridge·tr(A)/p, λ, and the
// residual Σ‖R - X·T‖² / Σ‖R - X·T₀‖².
func (f *fit) solve(ridge float64) (*mat.Dense, float64, float64, error) {
	lambda := ridge * mat.Trace(f.A) / float64(f.p)
	sym := mat.NewSymDense(f.p, nil)
	for r := 0; r < f.p; r++ {
		for c := r; c < f.p; c++ {
			v := (f.A.At(r, c) + f.A.At(c, r)) / 2
			if r == c {
				v += lambda
			}
			sym.SetSym(r, c, v)
		}
	}
	var ch mat.Cholesky
	if !ch.Factorize(sym) {
		return nil, 0, 0, fmt.Errorf("the FFN outputs on the calibration are degenerate (XᵀX + λI is not positive definite)")
	}
	T := mat.NewDense(f.p, f.d, nil)
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

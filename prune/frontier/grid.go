package frontier

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/ggufprune/ggufprune/internal/atomicfile"
	"github.com/ggufprune/ggufprune/llamacpp"
	"github.com/ggufprune/ggufprune/prune"
	"github.com/ggufprune/ggufprune/prune/eval"
)

// ErrOptions is wrapped by the error of options that cannot make a grid (a
// count of blocks out of range, no types, no evaluation text): the caller's
// mistake, found before any work.
var ErrOptions = errors.New("frontier: invalid options")

// DefaultTypes are the quantization types of a grid when Options.Types is
// empty: the ones people run on laptops, from nearly lossless to small.
var DefaultTypes = []string{"Q8_0", "Q6_K", "Q5_K_M", "Q4_K_M", "Q3_K_M", "IQ4_XS"}

// Level is one way of pruning the model: blocks removed (chosen by BI),
// healed or not, experts removed from every MoE block. The grid crosses
// every level with every type.
type Level struct {
	Blocks  int  `json:"blocks"`
	Healed  bool `json:"healed"`
	Experts int  `json:"experts"`
}

func (l Level) pruned() bool { return l.Blocks > 0 || l.Experts > 0 }

// tag names the level in file names: r2, r2h, r2-e4.
func (l Level) tag() string {
	s := fmt.Sprintf("r%d", l.Blocks)
	if l.Healed {
		s += "h"
	}
	if l.Experts > 0 {
		s += fmt.Sprintf("-e%d", l.Experts)
	}
	return s
}

// Skip is a type, or a type at one level, left out of the grid, and why.
type Skip struct {
	Type   string `json:"type"`
	Level  *Level `json:"level,omitempty"` // nil: at every level
	Reason string `json:"reason"`
}

// Grid is what a frontier will build and measure, worked out from the
// model's header before any work: the levels, the types that apply, and what
// it costs.
type Grid struct {
	Levels     []Level              `json:"levels"`
	Types      []llamacpp.QuantType `json:"-"`
	Candidates []Spec               `json:"candidates"` // without the blocks, chosen once scored
	Skipped    []Skip               `json:"skipped,omitempty"`
	Cost       Cost                 `json:"cost"`
}

// Cost is the work of a grid, counted before it starts.
type Cost struct {
	Files         int `json:"files"`          // candidate files to write (pruned and quantized)
	ScoringPasses int `json:"scoring_passes"` // passes over the calibration that score blocks (and collect the imatrix)
	HealingFits   int `json:"healing_fits"`   // levels healed, each fitted on the calibration
	ComparePasses int `json:"compare_passes"` // passes over the evaluation text, the base and the candidates side by side
	Models        int `json:"models"`         // models run in the comparison: the base and every candidate
	SpeedTests    int `json:"speed_tests"`    // models whose speed is measured
}

// Spec is one candidate: a level and a quantization type. Removed is filled
// in once the blocks are chosen.
type Spec struct {
	Level
	Type           string        `json:"type"`
	Removed        []int         `json:"removed"`
	ExpertsRemoved map[int][]int `json:"experts_removed,omitempty"`
}

// FileName is the candidate's file in a keep folder, from the model's
// name, the level and the type: MODEL-r2h-Q4_K_M.gguf.
func (s Spec) FileName(model string) string {
	base := strings.TrimSuffix(filepath.Base(model), filepath.Ext(model))
	return fmt.Sprintf("%s-%s-%s.gguf", base, s.tag(), s.Type)
}

// NewGrid works out the grid Options ask for on m: the levels, the types
// that apply to m (a type whose rows do not fit and that has no fallback,
// or one that needs an importance matrix when there is none, is skipped
// with the reason), and the cost. It reads only headers; nothing is run
// or written.
func NewGrid(m *prune.Model, o Options) (*Grid, error) {
	if err := o.check(m); err != nil {
		return nil, err
	}
	g := &Grid{}
	names := o.Types
	if len(names) == 0 {
		names = DefaultTypes
	}
	seen := map[string]bool{}
	haveImatrix := o.Imatrix != nil || !o.NoImatrix
	for _, name := range names {
		q, ok := llamacpp.LookupQuantType(name)
		if !ok {
			return nil, fmt.Errorf("%w: unknown quantization type %q; one of %s", ErrOptions, name, strings.Join(llamacpp.QuantTypeNames(), ", "))
		}
		if seen[q.Name] {
			continue
		}
		seen[q.Name] = true
		switch err := q.Fits(m.GGUF); {
		case errors.Is(err, llamacpp.ErrNoFallback):
			g.Skipped = append(g.Skipped, Skip{Type: q.Name, Reason: err.Error()})
			continue
		case err != nil:
			return nil, err
		}
		if q.NeedImatrix && !haveImatrix {
			g.Skipped = append(g.Skipped, Skip{Type: q.Name, Reason: q.Name + " needs an importance matrix, and none is given or computed"})
			continue
		}
		g.Types = append(g.Types, q)
	}
	if len(g.Types) == 0 {
		return nil, fmt.Errorf("%w: none of the types %s applies to %s (%s)", ErrOptions, strings.Join(names, ","), m.Path, g.Skipped[0].Reason)
	}
	for _, k := range o.removals() {
		for _, e := range o.experts() {
			g.Levels = append(g.Levels, Level{Blocks: k, Experts: e})
			if o.Heal && k > 0 {
				g.Levels = append(g.Levels, Level{Blocks: k, Experts: e, Healed: true})
			}
		}
	}
	for _, l := range g.Levels {
		for _, q := range g.Types {
			g.Candidates = append(g.Candidates, Spec{Level: l, Type: q.Name})
		}
		if l.Healed {
			g.Cost.HealingFits++
		}
	}
	g.Cost.Files = len(g.Candidates)
	if o.needScores() || o.computesImatrix() {
		g.Cost.ScoringPasses = 1
	}
	g.Cost.Models = len(g.Candidates) + 1
	g.Cost.ComparePasses = 1
	if o.PerPass > 0 {
		g.Cost.ComparePasses = (len(g.Candidates) + o.PerPass - 1) / o.PerPass
	}
	if !o.NoSpeed {
		g.Cost.SpeedTests = len(g.Candidates) + 1
	}
	return g, nil
}

// removals are the block counts, ascending, each once; none given: {0}.
func (o Options) removals() []int {
	if len(o.Remove) == 0 {
		return []int{0}
	}
	r := slices.Clone(o.Remove)
	slices.Sort(r)
	return slices.Compact(r)
}

// experts are the expert counts, ascending, each once; none given: {0}.
func (o Options) experts() []int {
	if len(o.Experts) == 0 {
		return []int{0}
	}
	r := slices.Clone(o.Experts)
	slices.Sort(r)
	return slices.Compact(r)
}

func (o Options) needScores() bool {
	return slices.ContainsFunc(o.removals(), func(k int) bool { return k > 0 }) || o.needExperts()
}

// needExperts says whether experts are scored: some level removes them.
func (o Options) needExperts() bool {
	return slices.ContainsFunc(o.Experts, func(e int) bool { return e > 0 })
}

func (o Options) computesImatrix() bool { return o.Imatrix == nil && !o.NoImatrix }

// check refuses options that cannot work on m, before any work.
func (o Options) check(m *prune.Model) error {
	if o.EvalText == nil {
		return fmt.Errorf("%w: no evaluation text", ErrOptions)
	}
	if err := o.Run.Check(); err != nil {
		return fmt.Errorf("%w: %w", ErrOptions, err)
	}
	most := m.ScoredBlocks() - o.Protect.First - o.Protect.Last
	for _, k := range o.Remove {
		if k < 0 || k > most {
			return fmt.Errorf("%w: remove %d blocks: %s has %d blocks that can go (%d scored, %d and %d protected at the start and the end)", ErrOptions, k, m.Path, max(most, 0), m.ScoredBlocks(), o.Protect.First, o.Protect.Last)
		}
	}
	for _, e := range o.Experts {
		if e < 0 {
			return fmt.Errorf("%w: remove %d experts: a count is not negative", ErrOptions, e)
		}
		if e > 0 && m.MoE == nil {
			return fmt.Errorf("%w: remove %d experts: %s is not a mixture of experts", ErrOptions, e, m.Path)
		}
		if e > 0 && m.MoE != nil && m.MoE.Experts-e < max(m.MoE.Used, 1) {
			return fmt.Errorf("%w: remove %d experts: %s has %d per block and routes each token to %d", ErrOptions, e, m.Path, m.MoE.Experts, m.MoE.Used)
		}
	}
	if o.PerPass < 0 {
		return fmt.Errorf("%w: %d candidates per comparison pass", ErrOptions, o.PerPass)
	}
	if o.Imatrix != nil {
		if err := o.Imatrix.CheckModel(m.GGUF); err != nil {
			return fmt.Errorf("%s: %w", o.ImatrixName, err)
		}
	}
	for _, dir := range []string{o.Keep, o.WorkDir} {
		if dir == "" {
			continue
		}
		if st, err := os.Stat(dir); err != nil {
			return err
		} else if !st.IsDir() {
			return fmt.Errorf("%s: not a folder", dir)
		}
		// The folder takes new files (checked with a temporary file).
		if err := atomicfile.CheckOutput(filepath.Join(dir, ".frontier-check"), true); err != nil {
			return err
		}
	}
	return eval.CheckText(m.Path, m.GGUF, o.EvalText, o.Run)
}

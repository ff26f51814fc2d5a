package prune

import (
	"context"
	"errors"
	"fmt"

	"github.com/ggufprune/ggufprune/gguf/surgery"
	"github.com/ggufprune/ggufprune/llamacpp/arch"
	"github.com/ggufprune/ggufprune/prune/heal"
	"github.com/ggufprune/ggufprune/prune/runner"
	"github.com/ggufprune/ggufprune/prune/selection"
)

// Selection says how many blocks to remove by score. Give one of Count and
// TargetSize.
type Selection struct {
	Count      int   // remove this many blocks (see selection.ParseCount for "25%")
	TargetSize int64 // or the fewest blocks that bring the output to at most this many bytes
	Protect    selection.Protect
	// Sharding is how the output will be written, which TargetSize counts.
	Sharding surgery.Sharding
	// HealMaps and HealForm are how healing will heal the removal
	// (Options.HealMaps, Options.HealForm), which the heal method measures.
	HealMaps int
	HealForm heal.Form
}

func (s Selection) empty() bool { return s.Count <= 0 && s.TargetSize <= 0 }

// CheckSelectable refuses, unless forced, choosing blocks one by one on an
// architecture whose block kinds follow from the block index (see
// arch.PatternError): the choice would almost never keep the pattern, and
// the refusal must come before the slow scoring.
func (m *Model) CheckSelectable(o surgery.Options) error {
	if o.Force {
		return nil
	}
	if period, what := arch.IndexPeriod(m.GGUF); period > 1 {
		return fmt.Errorf("%s: %s derives %s from the block index, so blocks chosen one by one by score would change the kind of the blocks after them; remove whole runs of %d consecutive blocks, given as a list: %w",
			m.Path, m.Arch, what, period, arch.ErrIndexPattern)
	}
	return nil
}

// problem is what a selection of the model must reach: llama.cpp must run
// the model without the blocks chosen (see trialPlan), and sizes are those
// of the output as s writes it.
func (m *Model) problem(s Selection) selection.Problem {
	return selection.Problem{
		Blocks: m.ScoredBlocks(), Protect: s.Protect, Count: s.Count, TargetSize: s.TargetSize,
		Valid: func(removed []int) error {
			_, err := m.trialPlan(removed)
			if errors.Is(err, selection.ErrInvalidRemoval) {
				return err
			}
			return nil
		},
		Size: func(removed []int) (int64, error) {
			p, err := m.trialPlan(removed)
			if err != nil {
				return 0, err
			}
			return p.Size(s.Sharding)
		},
	}
}

// Select chooses blocks to remove from a report's scores as s says, lowest
// first (by the report's metric). The blocks come back in ascending order.
func (m *Model) Select(rep *ScoreReport, s Selection) ([]int, error) {
	method, err := rep.method()
	if err != nil {
		return nil, err
	}
	return selection.FromScores(rep.Blocks, method.Key, m.problem(s))
}

// Choose chooses blocks to remove with a method on the calibration (see
// selection.Methods): until s.Count blocks are chosen, or until the output
// would be at most s.TargetSize bytes. Blocks s.Protect protects are never
// chosen.
func (m *Model) Choose(ctx context.Context, method *selection.Method, s Selection, cal runner.Calibration, o runner.Options) (*selection.Search, error) {
	meas, err := selection.NewMeasurer(ctx, m.Path, m.GGUF, cal, o)
	if err != nil {
		return nil, err
	}
	defer meas.Close()
	meas.HealAfter, meas.HealForm = healAfter(s.HealMaps), s.HealForm
	return selection.Choose(ctx, meas, method, m.problem(s))
}

// trialPlan plans a removal a selection tries (ascending blocks). A removal
// llama.cpp would abort on breaks a rule, which more removals only break
// further: its error wraps selection.ErrInvalidRemoval, and selections pass
// over the block that made it so. Forced: CheckSelectable refused
// index-pattern architectures before scoring, or the caller forces; Run
// plans the final choice.
func (m *Model) trialPlan(removed []int) (*surgery.Plan, error) {
	p, err := m.Plan(removed, surgery.Options{Force: true})
	if errors.Is(err, arch.ErrRule) {
		return nil, fmt.Errorf("%w: %w", selection.ErrInvalidRemoval, err)
	}
	return p, err
}

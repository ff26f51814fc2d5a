// Package selection chooses the blocks to remove: a registry of methods
// (name → how it ranks or searches, its cost, whether it needs labels), and
// one engine that takes candidates, lowest first, passing over those whose
// removal llama.cpp would refuse, until the count or the target size is
// reached. Protected blocks are decided in one place (Protect).
package selection

import (
	"context"
	"errors"
	"fmt"
	"math"
	"slices"
	"sort"
	"strconv"
	"strings"

	"github.com/ggufprune/ggufprune/bi"
	"github.com/ggufprune/ggufprune/internal/units"
	"github.com/ggufprune/ggufprune/prune/runner"
)

// Protect says which blocks may never be removed.
type Protect struct {
	First int // the first First blocks (ShortGPT keeps block 0: it does the most work)
	Last  int // the last Last blocks (the one before the output head)
}

// Protected reports whether block b of n is protected.
func (p Protect) Protected(b, n int) bool { return b < p.First || b >= n-p.Last }

// Key is what blocks are ranked by: lower is more redundant.
type Key func(bi.BlockScore) float64

// ByBI ranks blocks by Block Influence (ShortGPT).
func ByBI(s bi.BlockScore) float64 { return s.BI }

// ByLoss ranks blocks by the loss measured with the block skipped.
func ByLoss(s bi.BlockScore) float64 { return s.Loss }

// Rank orders blocks by key, lowest first, ties by index.
func Rank(scores []bi.BlockScore, key Key) []int {
	c := slices.Clone(scores)
	sort.SliceStable(c, func(i, j int) bool {
		if ki, kj := key(c[i]), key(c[j]); ki != kj {
			return ki < kj
		}
		return c[i].Index < c[j].Index
	})
	out := make([]int, len(c))
	for i, s := range c {
		out[i] = s.Index
	}
	return out
}

// ErrInvalidRemoval, wrapped by the error of Problem.Valid, marks blocks
// that cannot be removed together (the model would not load or run without
// them): the selection passes over the candidate that made the set invalid
// and goes on with the next.
var ErrInvalidRemoval = errors.New("blocks that cannot be removed together")

// Problem is what a selection must reach and what it may not do.
type Problem struct {
	Blocks     int // the blocks chosen from: 0 … Blocks-1
	Protect    Protect
	Count      int   // remove this many blocks,
	TargetSize int64 // or the fewest that bring Size to at most this
	// Valid, when not nil, refuses a removal (ascending blocks) with an
	// error wrapping ErrInvalidRemoval; any other error stops the selection.
	Valid func(removed []int) error
	// Size is the output's size without the blocks (ascending); needed
	// with TargetSize.
	Size func(removed []int) (int64, error)

	passed error // why a candidate was first passed over
}

// Candidates are the blocks that are not protected, ascending.
func (p *Problem) Candidates() []int {
	var c []int
	for b := 0; b < p.Blocks; b++ {
		if !p.Protect.Protected(b, p.Blocks) {
			c = append(c, b)
		}
	}
	return c
}

func (p *Problem) check() error {
	c := len(p.Candidates())
	switch {
	case p.Count <= 0 && p.TargetSize <= 0:
		return errors.New("a selection needs a block count or a target size")
	case p.TargetSize > 0 && p.Count <= 0 && p.Size == nil:
		return errors.New("a selection by size needs the output's size")
	case c == 0:
		return fmt.Errorf("no block may be removed (the first %d and last %d are protected)", p.Protect.First, p.Protect.Last)
	case p.Count > c:
		return fmt.Errorf("cannot remove %d of %d blocks: only %d are not protected (first %d, last %d)", p.Count, p.Blocks, c, p.Protect.First, p.Protect.Last)
	}
	return nil
}

// valid says whether llama.cpp would run the model without removed; it
// keeps the first reason a removal was invalid.
func (p *Problem) valid(removed []int) (bool, error) {
	if p.Valid == nil {
		return true, nil
	}
	err := p.Valid(slices.Sorted(slices.Values(removed)))
	if errors.Is(err, ErrInvalidRemoval) {
		if p.passed == nil {
			p.passed = err
		}
		return false, nil
	}
	return err == nil, err
}

// done says whether the blocks removed are enough.
func (p *Problem) done(removed []int) (bool, error) {
	if p.Count > 0 {
		return len(removed) >= p.Count, nil
	}
	sz, err := p.Size(slices.Sorted(slices.Values(removed)))
	return sz <= p.TargetSize, err
}

// Step is one block chosen, with the value it was chosen by (its score, or
// the loss of the model with the blocks so far removed).
type Step struct {
	Block int     `json:"block"`
	Value float64 `json:"value"`
}

// Engine chooses blocks for one method: the measurements it may run and
// the choice so far.
type Engine struct {
	Measure *Measurer // nil when choosing from a score report
	Problem *Problem
	Removed []int
	Steps   []Step
}

// TakeRanked takes blocks in order (lowest first), each one that keeps the
// removal valid, until the problem is solved. value says what each was
// chosen by.
func (e *Engine) TakeRanked(order []int, value func(b int) float64) error {
	for _, b := range order {
		if e.Problem.Protect.Protected(b, e.Problem.Blocks) || slices.Contains(e.Removed, b) {
			continue
		}
		if ok, err := e.Problem.valid(append(slices.Clone(e.Removed), b)); err != nil {
			return err
		} else if !ok {
			continue
		}
		e.Removed = append(e.Removed, b)
		e.Steps = append(e.Steps, Step{b, value(b)})
		if ok, err := e.Problem.done(e.Removed); err != nil || ok {
			return err
		}
	}
	return nil
}

// TakeEach takes one block at a time until the problem is solved: next
// says, given the blocks removed so far and the candidates that keep the
// removal valid, which to take next (false: none).
func (e *Engine) TakeEach(next func(removed, candidates []int) (Step, bool, error)) error {
	for {
		var cands []int
		for _, c := range e.Problem.Candidates() {
			if slices.Contains(e.Removed, c) {
				continue
			}
			if ok, err := e.Problem.valid(append(slices.Clone(e.Removed), c)); err != nil {
				return err
			} else if ok {
				cands = append(cands, c)
			}
		}
		if len(cands) == 0 {
			return nil
		}
		st, found, err := next(slices.Clone(e.Removed), cands)
		if err != nil || !found {
			return err
		}
		e.Removed = append(e.Removed, st.Block)
		e.Steps = append(e.Steps, st)
		if ok, err := e.Problem.done(e.Removed); err != nil || ok {
			return err
		}
	}
}

// ValidRun says whether the n blocks from first on may be removed together.
func (e *Engine) ValidRun(first, n int) (bool, error) {
	run := blockRange(first, n)
	for _, b := range run {
		if e.Problem.Protect.Protected(b, e.Problem.Blocks) {
			return false, nil
		}
	}
	return e.Problem.valid(run)
}

// Search is what a method chose, and at what cost.
type Search struct {
	Method  string      `json:"method"`
	Removed []int       `json:"removed"`
	Steps   []Step      `json:"steps,omitempty"`
	Cost    runner.Cost `json:"cost"`
	Loss    float64     `json:"loss,omitempty"` // calibration loss of the model without Removed (loss methods)
}

// Choose chooses blocks with method m on the measurer's calibration.
func Choose(ctx context.Context, meas *Measurer, m *Method, p Problem) (*Search, error) {
	if err := p.check(); err != nil {
		return nil, err
	}
	e := &Engine{Measure: meas, Problem: &p}
	if err := m.Choose(ctx, e); err != nil {
		return nil, err
	}
	if err := e.finish(m.Name); err != nil {
		return nil, err
	}
	res := &Search{Method: m.Name, Removed: e.Removed, Steps: e.Steps}
	if m.Loss != NoLoss {
		var err error
		if res.Loss, err = meas.Loss(ctx, res.Removed, m.Loss); err != nil {
			return nil, err
		}
	}
	res.Cost = meas.Cost()
	return res, nil
}

// FromScores chooses blocks by scores already measured (a score report),
// lowest key first, as the engine takes them. The blocks come back
// ascending.
func FromScores(scores []bi.BlockScore, key Key, p Problem) ([]int, error) {
	if err := p.check(); err != nil {
		return nil, err
	}
	e := &Engine{Problem: &p}
	byIndex := map[int]float64{}
	for _, s := range scores {
		byIndex[s.Index] = key(s)
	}
	if err := e.TakeRanked(Rank(scores, key), func(b int) float64 { return byIndex[b] }); err != nil {
		return nil, err
	}
	if err := e.finish("the scores"); err != nil {
		return nil, err
	}
	return e.Removed, nil
}

// finish checks that the choice solves the problem and sorts it.
func (e *Engine) finish(by string) error {
	ok, err := e.Problem.done(e.Removed)
	if err != nil {
		return err
	}
	if !ok {
		if e.Problem.Count > 0 {
			if e.Problem.passed != nil {
				return fmt.Errorf("%s found only %d of the %d blocks asked for that can be removed together: %w", by, len(e.Removed), e.Problem.Count, e.Problem.passed)
			}
			return fmt.Errorf("%s found only %d of the %d blocks asked for", by, len(e.Removed), e.Problem.Count)
		}
		smallest, _ := e.Problem.Size(slices.Sorted(slices.Values(e.Removed)))
		return &SizeError{Target: e.Problem.TargetSize, Smallest: smallest}
	}
	slices.Sort(e.Removed)
	return nil
}

// blockRange is the n blocks from first on.
func blockRange(first, n int) []int {
	out := make([]int, n)
	for i := range out {
		out[i] = first + i
	}
	return out
}

// SizeError is a target size that cannot be reached without removing
// protected blocks.
type SizeError struct{ Target, Smallest int64 }

func (e *SizeError) Error() string {
	return fmt.Sprintf("the target size of %d bytes cannot be reached without removing protected blocks: the smallest reachable size is %s (%d bytes)", e.Target, units.HumanBytes(e.Smallest), e.Smallest)
}

// ParseCount reads a number of blocks, "N", or a percentage of n blocks,
// "P%" (rounded, at least one).
func ParseCount(s string, n int) (int, error) {
	if p, ok := strings.CutSuffix(strings.TrimSpace(s), "%"); ok {
		f, err := strconv.ParseFloat(p, 64)
		if err != nil || !(f > 0 && f < 100) { // NaN too
			return 0, fmt.Errorf("%s: a percentage must be between 0 and 100", s)
		}
		k := int(math.Round(f / 100 * float64(n)))
		return max(k, 1), nil
	}
	k, err := strconv.Atoi(strings.TrimSpace(s))
	if err != nil || k <= 0 {
		return 0, fmt.Errorf("%s: give a positive number of blocks or a percentage like 25%%", s)
	}
	return k, nil
}

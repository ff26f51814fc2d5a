package prune

import (
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"

	"github.com/ggufprune/ggufprune/bi"
	"github.com/ggufprune/ggufprune/gguf"
)

// Selection says how many blocks to remove by score, lowest BI first
// (ShortGPT). Give one of Count and TargetSize.
type Selection struct {
	Count      int   // remove this many blocks (see ParseCount for "25%")
	TargetSize int64 // or the fewest blocks that bring the output to at most this many bytes
	Protect    bi.Protect
}

func (s Selection) empty() bool { return s.Count <= 0 && s.TargetSize <= 0 }

// CheckSelectable refuses, unless force, choosing blocks one by one on an
// architecture whose block kinds follow from the block index (see
// gguf.PatternError): the choice would almost never keep the pattern, and
// the refusal must come before the slow scoring.
func (m *Model) CheckSelectable(force bool) error {
	if force {
		return nil
	}
	if period, what := gguf.IndexPeriod(m.GGUF); period > 1 {
		return fmt.Errorf("%s: %s derives %s from the block index, so blocks chosen one by one by score would change the kind of the blocks after them; remove whole runs of %d consecutive blocks, given as a list: %w",
			m.Path, m.Arch, what, period, gguf.ErrIndexPattern)
	}
	return nil
}

// Select chooses blocks to remove from the scores as s says; keepSplit
// says how the output is written, for sizes. The blocks come back in
// ascending order.
func (m *Model) Select(rep *ScoreReport, s Selection, keepSplit bool) ([]int, error) {
	if s.Count > 0 {
		return bi.SelectCountBy(rep.Blocks, s.Count, s.Protect, rep.key(), func(removed []int) error {
			if _, err := m.trialPlan(removed); errors.Is(err, bi.ErrInvalidRemoval) {
				return err
			}
			return nil
		})
	}
	if s.TargetSize <= 0 {
		return nil, errors.New("prune: a selection needs a block count or a target size")
	}
	remove, err := bi.SelectSizeBy(rep.Blocks, s.TargetSize, func(removed []int) (int64, error) {
		p, err := m.trialPlan(removed)
		if err != nil {
			return 0, err
		}
		return p.Size(keepSplit)
	}, s.Protect, rep.key())
	var ue *bi.UnreachableError
	if errors.As(err, &ue) {
		return nil, &SizeError{Target: s.TargetSize, Smallest: ue.Smallest}
	}
	return remove, err
}

// trialPlan plans a removal a selection tries (ascending blocks). A removal
// llama.cpp would abort on breaks a rule, which more removals only break
// further: its error wraps bi.ErrInvalidRemoval, and selections pass over
// the block that made it so. Forced: CheckSelectable refused index-pattern
// architectures before scoring, or the caller forces; Run plans the final
// choice.
func (m *Model) trialPlan(removed []int) (*gguf.Plan, error) {
	p, err := m.Plan(removed, true)
	if errors.Is(err, gguf.ErrLlamaRule) {
		return nil, fmt.Errorf("%w: %w", bi.ErrInvalidRemoval, err)
	}
	return p, err
}

// SizeError is a target size that cannot be reached without removing
// protected blocks.
type SizeError struct{ Target, Smallest int64 }

func (e *SizeError) Error() string {
	return fmt.Sprintf("the target size of %d bytes cannot be reached without removing protected blocks: the smallest reachable size is %s (%d bytes)", e.Target, HumanBytes(e.Smallest), e.Smallest)
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

var sizeUnits = []struct {
	suffix string
	mult   float64
}{
	{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"GiB", 1 << 30}, {"TiB", 1 << 40},
	{"KB", 1e3}, {"MB", 1e6}, {"GB", 1e9}, {"TB", 1e12},
	{"K", 1 << 10}, {"M", 1 << 20}, {"G", 1 << 30}, {"T", 1 << 40}, {"B", 1},
}

// ParseSize reads a size: bytes, with a unit (3GiB, 2.5GB, 800MiB), or a
// percentage of whole (70%).
func ParseSize(s string, whole int64) (int64, error) {
	t := strings.TrimSpace(s)
	mult := 1.0
	if p, ok := strings.CutSuffix(t, "%"); ok {
		t, mult = p, float64(whole)/100
	} else {
		for _, u := range sizeUnits {
			if p, ok := strings.CutSuffix(t, u.suffix); ok {
				t, mult = strings.TrimSpace(p), u.mult
				break
			}
		}
	}
	f, err := strconv.ParseFloat(t, 64)
	// NaN fails every comparison; a size must fit in an int64 (8 EiB).
	if err != nil || !(f > 0) || !(f*mult < math.MaxInt64/2) || f*mult < 1 {
		return 0, fmt.Errorf("%q: give bytes (1 to 4 EiB), a size like 3GiB or 2.5GB, or a percentage like 70%%", s)
	}
	return int64(f * mult), nil
}

// HumanBytes writes a byte count with a binary unit: "11.60 MiB".
func HumanBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.2f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}

package bi

import (
	"errors"
	"fmt"
	"sort"
)

// Protect says which blocks may never be removed.
type Protect struct {
	First int // the first First blocks (ShortGPT keeps block 0: it does the most work)
	Last  int // the last Last blocks (the one before the output head)
}

func (p Protect) set(n int) []bool {
	prot := make([]bool, n)
	for i := 0; i < n; i++ {
		if i < p.First || i >= n-p.Last {
			prot[i] = true
		}
	}
	return prot
}

// Key is what blocks are ranked by: lower is more redundant.
type Key func(BlockScore) float64

// ByBI ranks blocks by Block Influence (ShortGPT).
func ByBI(s BlockScore) float64 { return s.BI }

// ByAngular ranks blocks by angular distance.
func ByAngular(s BlockScore) float64 { return s.Angular }

// ByLoss ranks blocks by the loss measured with the block skipped.
func ByLoss(s BlockScore) float64 { return s.Loss }

// Candidates orders the removable blocks from most to least redundant:
// lowest BI first, ties by index.
func Candidates(scores []BlockScore, p Protect) []int { return CandidatesBy(scores, p, ByBI) }

// CandidatesBy orders the removable blocks by key, lowest first, ties by index.
func CandidatesBy(scores []BlockScore, p Protect, key Key) []int {
	prot := p.set(len(scores))
	var c []BlockScore
	for _, s := range scores {
		if !prot[s.Index] {
			c = append(c, s)
		}
	}
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

// SelectCount chooses the k removable blocks with the lowest BI (ShortGPT),
// returned in ascending index order.
func SelectCount(scores []BlockScore, k int, p Protect) ([]int, error) {
	return SelectCountBy(scores, k, p, ByBI, nil)
}

// ErrInvalidRemoval, wrapped by the error of a check given to a selection,
// marks blocks that cannot be removed together (the model would not load
// or run without them): the selection passes over the candidate that made
// the set invalid and goes on with the next.
var ErrInvalidRemoval = errors.New("bi: blocks that cannot be removed together")

// SelectCountBy chooses the k removable blocks with the lowest key: each
// candidate in turn, lowest first, joins the removal unless valid (when not
// nil) says the removal with it is invalid (ErrInvalidRemoval).
func SelectCountBy(scores []BlockScore, k int, p Protect, key Key, valid func(removed []int) error) ([]int, error) {
	c := CandidatesBy(scores, p, key)
	if k <= 0 {
		return nil, fmt.Errorf("bi: asked to remove %d blocks", k)
	}
	if k > len(c) {
		return nil, fmt.Errorf("bi: cannot remove %d of %d blocks: only %d are not protected (first %d, last %d)", k, len(scores), len(c), p.First, p.Last)
	}
	var out []int
	var passed error
	for _, b := range c {
		try := append(append([]int(nil), out...), b)
		sort.Ints(try)
		if valid != nil {
			if err := valid(try); errors.Is(err, ErrInvalidRemoval) {
				passed = cmpOr(passed, err)
				continue
			} else if err != nil {
				return nil, err
			}
		}
		if out = try; len(out) == k {
			return out, nil
		}
	}
	return nil, fmt.Errorf("bi: only %d of the %d blocks asked for can be removed together: %w", len(out), k, passed)
}

func cmpOr(a, b error) error {
	if a != nil {
		return a
	}
	return b
}

// SelectSize removes the fewest blocks, lowest BI first, that bring the
// size to at most target. size(removed) gives the size with those blocks
// removed. If no removable set reaches the target, the error says the
// smallest size that can be reached.
func SelectSize(scores []BlockScore, target int64, size func(removed []int) (int64, error), p Protect) ([]int, error) {
	return SelectSizeBy(scores, target, size, p, ByBI)
}

// SelectSizeBy is SelectSize with blocks ranked by key. A candidate whose
// removal size refuses with ErrInvalidRemoval is passed over.
func SelectSizeBy(scores []BlockScore, target int64, size func(removed []int) (int64, error), p Protect, key Key) ([]int, error) {
	c := CandidatesBy(scores, p, key)
	var removed []int
	smallest := int64(-1)
	for _, b := range c {
		removed = append(removed, b)
		sorted := append([]int(nil), removed...)
		sort.Ints(sorted)
		s, err := size(sorted)
		if errors.Is(err, ErrInvalidRemoval) {
			removed = removed[:len(removed)-1]
			continue
		}
		if err != nil {
			return nil, err
		}
		smallest = s
		if s <= target {
			return sorted, nil
		}
	}
	if smallest < 0 {
		return nil, fmt.Errorf("bi: no block may be removed (first %d and last %d are protected)", p.First, p.Last)
	}
	return nil, &UnreachableError{Target: target, Smallest: smallest}
}

// UnreachableError is a size target that cannot be met without removing
// protected blocks.
type UnreachableError struct {
	Target, Smallest int64
}

func (e *UnreachableError) Error() string {
	return fmt.Sprintf("target size %d bytes cannot be reached without removing protected blocks; the smallest reachable size is %d bytes", e.Target, e.Smallest)
}

package bi

import (
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

// Candidates orders the removable blocks from most to least redundant:
// lowest BI first, ties by index.
func Candidates(scores []BlockScore, p Protect) []int {
	prot := p.set(len(scores))
	var c []BlockScore
	for _, s := range scores {
		if !prot[s.Index] {
			c = append(c, s)
		}
	}
	sort.SliceStable(c, func(i, j int) bool {
		if c[i].BI != c[j].BI {
			return c[i].BI < c[j].BI
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
	c := Candidates(scores, p)
	if k <= 0 {
		return nil, fmt.Errorf("bi: asked to remove %d blocks", k)
	}
	if k > len(c) {
		return nil, fmt.Errorf("bi: cannot remove %d of %d blocks: only %d are not protected (first %d, last %d)", k, len(scores), len(c), p.First, p.Last)
	}
	out := append([]int(nil), c[:k]...)
	sort.Ints(out)
	return out, nil
}

// SelectSize removes the fewest blocks, lowest BI first, that bring the
// size to at most target. size(removed) gives the size with those blocks
// removed. If no removable set reaches the target, the error says the
// smallest size that can be reached.
func SelectSize(scores []BlockScore, target int64, size func(removed []int) (int64, error), p Protect) ([]int, error) {
	c := Candidates(scores, p)
	var removed []int
	smallest := int64(-1)
	for _, b := range c {
		removed = append(removed, b)
		sorted := append([]int(nil), removed...)
		sort.Ints(sorted)
		s, err := size(sorted)
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

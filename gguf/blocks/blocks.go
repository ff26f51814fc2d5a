// Package blocks is the numbering of a model's blocks in tensor names
// (blk.N.…, as gguf-py and llama.cpp name them): splitting and making names,
// lists of block indices ("3,5-7"), and Map, the one renumbering of a
// removal, which surgery, importance matrices and the rules share.
package blocks

import (
	"fmt"
	"sort"
	"strconv"
	"strings"
)

// Map says which blocks of a model go and where each kept block goes:
// kept blocks are renumbered contiguously, in order. Surgery, importance
// matrices, plots and reports all use it, so that renumbering is written
// once.
type Map struct {
	newIndex []int // per old block: its new index, or -1 when removed
	removed  []int // old indices, ascending
	kept     []int // old indices, ascending: kept[new] = old
}

// NewMap maps the n blocks of a model from which the given blocks are
// removed (in any order; duplicates count once).
func NewMap(n int, remove []int) (*Map, error) {
	gone := make([]bool, n)
	for _, b := range remove {
		if b < 0 || b >= n {
			if n == 0 {
				return nil, fmt.Errorf("block %d is out of range (the model has no blocks)", b)
			}
			return nil, fmt.Errorf("block %d is out of range (the model has blocks 0-%d)", b, n-1)
		}
		gone[b] = true
	}
	m := &Map{newIndex: make([]int, n)}
	for b := 0; b < n; b++ {
		if gone[b] {
			m.newIndex[b] = -1
			m.removed = append(m.removed, b)
			continue
		}
		m.newIndex[b] = len(m.kept)
		m.kept = append(m.kept, b)
	}
	return m, nil
}

// Before is the number of blocks before removal.
func (m *Map) Before() int { return len(m.newIndex) }

// After is the number of blocks kept.
func (m *Map) After() int { return len(m.kept) }

// Removed are the removed blocks' old indices, ascending.
func (m *Map) Removed() []int { return append([]int(nil), m.removed...) }

// Kept are the kept blocks' old indices, ascending: Kept()[i] is the old
// index of new block i.
func (m *Map) Kept() []int { return append([]int(nil), m.kept...) }

// NewIndex is the new index of old block b, or -1 when it is removed.
func (m *Map) NewIndex(b int) int { return m.newIndex[b] }

// Rename gives the name a tensor (or importance-matrix entry) of the old
// model has in the new one: "blk.N.rest" becomes "blk.M.rest" with M the new
// index of N; names outside blocks stay. keep is false for a removed block.
func (m *Map) Rename(name string) (newName string, keep bool, err error) {
	nb, rest, keep, moved, err := m.move(name)
	switch {
	case err != nil || !keep:
		return "", false, err
	case !moved:
		return name, true, nil // the same name: not a new string per tensor
	}
	return Name(nb, rest), true, nil
}

// AppendRename is Rename for callers that rename many tensors without a
// string for each: it appends the new name to b when it differs from name
// (moved), and returns b as it was otherwise.
func (m *Map) AppendRename(b []byte, name string) (_ []byte, keep, moved bool, err error) {
	nb, rest, keep, moved, err := m.move(name)
	if err != nil || !moved {
		return b, keep, false, err
	}
	b = append(b, "blk."...)
	b = strconv.AppendInt(b, int64(nb), 10)
	b = append(b, '.')
	return append(b, rest...), true, true, nil
}

// move says where a tensor goes: to block nb (as blk.nb.rest) when moved,
// nowhere when not kept.
func (m *Map) move(name string) (nb int, rest string, keep, moved bool, err error) {
	b, rest, isBlock, err := Split(name)
	if err != nil {
		return 0, "", false, false, err
	}
	if !isBlock {
		return 0, "", true, false, nil
	}
	if b >= len(m.newIndex) {
		return 0, "", false, false, fmt.Errorf("%q belongs to block %d but there are %d blocks", name, b, len(m.newIndex))
	}
	nb = m.newIndex[b]
	return nb, rest, nb >= 0, nb >= 0 && nb != b, nil
}

// Name is the name of tensor rest of block b: "blk.B.rest".
func Name(b int, rest string) string { return "blk." + strconv.Itoa(b) + "." + rest }

// Split splits "blk.N.rest". Names outside blocks return isBlock
// false; a "blk." name without a plain decimal block number is an error.
func Split(name string) (block int, rest string, isBlock bool, err error) {
	s, ok := strings.CutPrefix(name, "blk.")
	if !ok {
		return 0, "", false, nil
	}
	num, rest, ok := strings.Cut(s, ".")
	b, perr := strconv.Atoi(num)
	if !ok || perr != nil || !plainNumber(num) {
		return 0, "", false, fmt.Errorf("tensor %q: cannot read its block number", name)
	}
	return b, rest, true, nil
}

// plainNumber reports whether s is a number as strconv.Itoa writes a
// non-negative one: digits, without a sign or leading zeros (checked
// without making that string: names are split once for every tensor).
func plainNumber(s string) bool {
	if s == "" || (s[0] == '0' && len(s) > 1) {
		return false
	}
	for i := range len(s) {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return true
}

// Of returns the block index of a tensor name, or -1 outside blocks.
func Of(name string) int {
	b, _, ok, err := Split(name)
	if !ok || err != nil {
		return -1
	}
	return b
}

// MaxIndex bounds the indices ParseList accepts: no model has
// that many blocks (llama.cpp takes 512), and a bound keeps a hostile list
// from taking memory and time (the fuzz target's inputs stay cheap).
const MaxIndex = 1 << 12

// ParseList parses "3,5-7" into sorted, unique block indices.
func ParseList(s string) ([]int, error) {
	type span struct{ lo, hi int }
	var spans []span
	for _, part := range strings.Split(s, ",") {
		part = strings.TrimSpace(part)
		if part == "" {
			return nil, fmt.Errorf("block list %q: empty item", s)
		}
		lo, hi, isRange := strings.Cut(part, "-")
		a, err1 := strconv.Atoi(strings.TrimSpace(lo))
		b := a
		var err2 error
		if isRange {
			b, err2 = strconv.Atoi(strings.TrimSpace(hi))
		}
		if err1 != nil || err2 != nil || a < 0 || b < a {
			return nil, fmt.Errorf("block list %q: %q is not an index or an ascending range like 5-7", s, part)
		}
		if b >= MaxIndex {
			return nil, fmt.Errorf("block list %q: block %d is past any model's blocks (at most %d)", s, b, MaxIndex-1)
		}
		spans = append(spans, span{a, b})
	}
	// Merge the spans before expanding them: the result is at most
	// MaxIndex indices, however many items the list has.
	sort.Slice(spans, func(i, j int) bool { return spans[i].lo < spans[j].lo })
	var out []int
	next := 0 // the lowest index not yet in out
	for _, sp := range spans {
		for i := max(sp.lo, next); i <= sp.hi; i++ {
			out = append(out, i)
		}
		next = max(next, sp.hi+1)
	}
	return out, nil
}

// FormatList writes sorted indices compactly: [3 5 6 7] is "3,5-7".
func FormatList(blocks []int) string {
	var parts []string
	for i := 0; i < len(blocks); {
		j := i
		for j+1 < len(blocks) && blocks[j+1] == blocks[j]+1 {
			j++
		}
		if j > i {
			parts = append(parts, fmt.Sprintf("%d-%d", blocks[i], blocks[j]))
		} else {
			parts = append(parts, strconv.Itoa(blocks[i]))
		}
		i = j + 1
	}
	return strings.Join(parts, ",")
}

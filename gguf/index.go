package gguf

import (
	"hash/maphash"
	"math/bits"
	"strings"
)

// maxTensors bounds the tensors of one file (or one write): positions in a
// nameIndex are 32-bit. Such a header alone would take over 128 GiB.
const maxTensors = 1<<32 - 2

// nameIndex finds names in constant time: an open-addressing hash table
// (linear probing, at most three quarters full) of positions in a list that
// its user owns and reads through nameAt. It costs 5 to 11 bytes a name
// (6 when reserved for a known count), where a map[string]int costs 50 to
// 80: a file of 10^6 tensors is legal, and each tensor's lookup (an
// importance matrix finds every entry's counts by name) must not scan them
// all.
type nameIndex struct {
	seed  maphash.Seed
	slots []uint32 // 1 + a position; 0 is an empty slot
	n     int      // names added
}

// home is the slot where the probe for name starts: the hash scaled to the
// table (of any size, not only powers of two, so that a reserved table is
// no larger than it needs).
func (x *nameIndex) home(name string) int {
	hi, _ := bits.Mul64(maphash.String(x.seed, name), uint64(len(x.slots)))
	return int(hi)
}

// next is the slot after i, wrapping around.
func (x *nameIndex) next(i int) int {
	if i++; i == len(x.slots) {
		return 0
	}
	return i
}

// find returns the position of name.
func (x *nameIndex) find(name string, nameAt func(int) string) (int, bool) {
	if len(x.slots) == 0 {
		return 0, false
	}
	for i := x.home(name); ; i = x.next(i) {
		s := x.slots[i]
		if s == 0 {
			return 0, false
		}
		if nameAt(int(s-1)) == name {
			return int(s - 1), true
		}
	}
}

// add indexes name at position pos. When an equal name is indexed already,
// it returns that one's position and false, and adds nothing.
func (x *nameIndex) add(name string, pos int, nameAt func(int) string) (int, bool) {
	if 4*(x.n+1) > 3*len(x.slots) {
		x.grow(nameAt)
	}
	for i := x.home(name); ; i = x.next(i) {
		s := x.slots[i]
		if s == 0 {
			x.slots[i] = uint32(pos + 1)
			x.n++
			return pos, true
		}
		if nameAt(int(s-1)) == name {
			return int(s - 1), false
		}
	}
}

// reserve makes an empty index room for n names, two thirds full: adding
// them never grows it (which would hold the old and the new table at once),
// and a missing name is found missing in a few comparisons (at three
// quarters full, linear probing compares a miss with 7 names on average).
func (x *nameIndex) reserve(n int) {
	if n > 0 {
		x.seed = maphash.MakeSeed()
		x.slots = make([]uint32, max(16, n+n/2+1))
	}
}

// grow doubles the table: it grows with the names added, never with a
// count a file declares.
func (x *nameIndex) grow(nameAt func(int) string) {
	old := x.slots
	if old == nil {
		x.seed = maphash.MakeSeed()
	}
	x.slots = make([]uint32, max(16, 2*len(old)))
	for _, s := range old {
		if s == 0 {
			continue
		}
		i := x.home(nameAt(int(s - 1)))
		for x.slots[i] != 0 {
			i = x.next(i)
		}
		x.slots[i] = s
	}
}

// strtab keeps the short strings of a header in few allocations: each is a
// substring of a chunk that is never written again where it lies (a
// strings.Builder only appends). One allocation per name would cost its
// size class and twice the allocations (bytes read, then the string).
type strtab struct {
	b    strings.Builder
	size int // bytes of the chunks so far
}

// strtabMax is the longest string a strtab keeps: longer ones (templates,
// long values) are allocated on their own.
const strtabMax = 256

// add returns b as a string kept in the table (len(b) <= strtabMax).
func (s *strtab) add(b []byte) string {
	if s.b.Cap()-s.b.Len() < len(b) {
		// Chunks grow with what was kept, from 4 KiB to 1 MiB: a small file
		// takes little, a large one few allocations and little waste.
		c := min(max(s.size, 4<<10), 1<<20)
		s.b = strings.Builder{}
		s.b.Grow(c)
		s.size += c
	}
	start := s.b.Len()
	s.b.Write(b)
	return s.b.String()[start:]
}

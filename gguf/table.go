package gguf

import (
	"fmt"
	"iter"
	"slices"
	"strings"
)

// tensorTable holds a file's tensor infos as columns, with no TensorInfo
// for each (64 bytes before its name and dims): the names one after another
// in one string, the dims in one slice, a type and an offset each. A tensor
// costs its name's bytes, its dims, 12 bytes and its index slot; a header
// of 10^6 tiny tensors is legal, and each tensor must cost tens of bytes,
// not hundreds. TensorInfo values are made when asked for (at), their Name
// and Dims views of the columns; sizes are computed again from dims and
// type, which the reader checked.
type tensorTable struct {
	names    Names
	dims     []uint64 // every tensor's dims, one after another
	dimSpans spans
	types    []uint8 // TensorType: every known type is below 256 (TestTypesFitAByte)
	offsets  []uint64
	index    nameIndex
}

// reserve makes room for n tensors with names and dims of the given total
// lengths, counted by a first reading of the tensor infos: every column is
// allocated once, at its size (growing by doubling would copy each and hold
// up to twice its room at the peak).
func (t *tensorTable) reserve(n int, names, dims uint64) {
	t.names.Reserve(n, names)
	t.dims = make([]uint64, 0, dims)
	t.dimSpans.grow(n)
	t.types = make([]uint8, 0, n)
	t.offsets = make([]uint64, 0, n)
	t.index.reserve(n)
}

// add appends a tensor read by the decoder. It returns false when the
// table has a tensor of the same name (the file is refused: the table is
// left as it is), and an error when the tensor does not fit the room
// reserved (the file changed between the two readings).
func (t *tensorTable) add(r *rawTensor) (isNew bool, err error) {
	if len(t.types) == cap(t.types) || t.names.b.Cap()-t.names.b.Len() < len(r.name) || cap(t.dims)-len(t.dims) < r.nDims {
		return false, fmt.Errorf("more tensor infos than were counted")
	}
	// The index compares the new name with those of the table: it is
	// written first, its end not yet recorded (a duplicate fails the file).
	start := t.names.b.Len()
	t.names.b.Write(r.name)
	if _, isNew := t.index.add(t.names.b.String()[start:], len(t.types), t.nameAt); !isNew {
		return false, nil
	}
	t.names.spans.add(len(r.name))
	t.dims = append(t.dims, r.dims[:r.nDims]...)
	t.dimSpans.add(r.nDims)
	t.types = append(t.types, uint8(r.typ))
	t.offsets = append(t.offsets, r.offset)
	return true, nil
}

func (t *tensorTable) len() int { return len(t.types) }

// nameAt is the name of tensor i.
func (t *tensorTable) nameAt(i int) string { return t.names.At(i) }

// at is the info of tensor i.
func (t *tensorTable) at(i int) TensorInfo {
	start, end := t.dimSpans.span(i)
	dims := t.dims[start:end:end] // capacity cut: append copies
	typ := TensorType(t.types[i])
	return TensorInfo{Name: t.nameAt(i), Dims: dims, Type: typ, Offset: t.offsets[i], Size: checkedSize(typ, dims)}
}

// all yields the tensors in order.
func (t *tensorTable) all() iter.Seq2[int, TensorInfo] {
	return func(yield func(int, TensorInfo) bool) {
		for i := range t.len() {
			if !yield(i, t.at(i)) {
				return
			}
		}
	}
}

// find returns the position of a tensor.
func (t *tensorTable) find(name string) (int, bool) { return t.index.find(name, t.nameAt) }

// checkedSize is the size of a tensor whose type and shape tensorSize
// accepted.
func checkedSize(typ TensorType, dims []uint64) uint64 {
	tt := tensorTypes[typ]
	elems := uint64(1)
	for _, n := range dims {
		elems *= n
	}
	return elems / tt.blockSize * tt.bytesBlock
}

// Names are short strings (tensor names) kept one after another in one
// allocation: 1.5 bytes a name besides its bytes (spans), where a []string
// costs 16 and each string an allocation of its size class. A File keeps
// its tensors' names so, a surgery plan the names it gives the tensors it
// renames. Each name's bytes are never written again where they lie, so
// that the strings At hands out stay as they are.
type Names struct {
	b     strings.Builder
	spans spans
}

// Reserve makes room for n more names of the given bytes in all: adding
// them allocates nothing more.
func (ns *Names) Reserve(n int, bytes uint64) {
	ns.b.Grow(int(bytes))
	ns.spans.grow(n)
}

// Add appends a name of at most MaxTensorName bytes, given as bytes so
// that a name made in a buffer is not first allocated as a string. A
// longer one is a bug of the caller: a name's length is kept in a byte.
func (ns *Names) Add(name []byte) {
	if len(name) > MaxTensorName {
		panic(fmt.Sprintf("gguf: name %.80q added to Names is longer than %d bytes", name, MaxTensorName))
	}
	ns.b.Write(name)
	ns.spans.add(len(name))
}

// Len is the number of names.
func (ns *Names) Len() int { return len(ns.spans.lens) }

// At is name i.
func (ns *Names) At(i int) string {
	start, end := ns.spans.span(i)
	return ns.b.String()[start:end]
}

// spans are where the short fields of a table (names, dims), laid one
// after another, start and end: a byte an entry, its length, and where
// each group of spanGroup entries starts, 1.5 bytes an entry in all (a
// uint32 end an entry would be 4, and could not pass 4 GiB). An entry
// starts at its group's start plus the lengths before it in the group.
type spans struct {
	lens []uint8  // per entry, its length
	base []uint64 // per group, where its first entry starts
	end  uint64   // where the last entry ends
}

const spanGroup = 16

// grow makes room for n more entries.
func (s *spans) grow(n int) {
	s.lens = slices.Grow(s.lens, n)
	s.base = slices.Grow(s.base, n/spanGroup+1)
}

// add appends an entry of n <= 255 units.
func (s *spans) add(n int) {
	if len(s.lens)%spanGroup == 0 {
		s.base = append(s.base, s.end)
	}
	s.lens = append(s.lens, uint8(n))
	s.end += uint64(n)
}

// span is where entry i starts and ends.
func (s *spans) span(i int) (start, end uint64) {
	g := i / spanGroup
	start = s.base[g]
	for _, n := range s.lens[g*spanGroup : i] {
		start += uint64(n)
	}
	return start, start + uint64(s.lens[i])
}

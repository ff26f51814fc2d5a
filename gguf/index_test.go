package gguf

import (
	"bytes"
	"fmt"
	"io"
	"reflect"
	"testing"
)

// manyTensorFile is a file of one-value F32 tensors named "t.<i>.weight"
// for i in [from, to), with the given metadata.
func manyTensorFile(tb testing.TB, from, to int, kvs ...KV) *File {
	tb.Helper()
	data := bytes.NewReader(make([]byte, 4))
	ts := make([]WriterTensor, 0, to-from)
	for i := from; i < to; i++ {
		ts = append(ts, WriterTensor{Info: TensorInfo{Name: fmt.Sprintf("t.%d.weight", i), Dims: []uint64{1}, Type: TypeF32, Size: 4}, Data: io.NewSectionReader(data, 0, 4)})
	}
	var buf bytes.Buffer
	if _, err := Write(&buf, 3, append(kvs, KV{Key: KeyAlignment, Value: Uint32(4)}), ts); err != nil {
		tb.Fatal(err)
	}
	f, err := NewFile(bytes.NewReader(buf.Bytes()), int64(buf.Len()))
	if err != nil {
		tb.Fatal(err)
	}
	return f
}

// Finding a tensor by name takes a few comparisons whatever the number of
// tensors: an importance matrix finds each entry's counts by name
// (File.Tensor), which a scan made quadratic (10^6 entries: minutes).
// Counted, not timed: 10^5 lookups, hits and misses, on 10^5 tensors.
func TestTensorLookupIsIndexed(t *testing.T) {
	const n = 100_000
	f := manyTensorFile(t, 0, n)
	compares := 0
	nameAt := func(i int) string { compares++; return f.tensors.nameAt(i) }
	for i, ti := range f.AllTensors() {
		if j, ok := f.tensors.index.find(ti.Name, nameAt); !ok || j != i {
			t.Fatalf("%s found at %d, %v", ti.Name, j, ok)
		}
	}
	for i := range n {
		if j, ok := f.tensors.index.find(fmt.Sprintf("t.%d.bias", i), nameAt); ok {
			t.Fatalf("t.%d.bias found at %d", i, j)
		}
	}
	// A scan compares n/2 names a hit and n a miss: 10^10 in all.
	if compares > 4*2*n {
		t.Fatalf("%d name comparisons for %d lookups", compares, 2*n)
	}
	t.Logf("%.2f comparisons a lookup; index of %d slots for %d tensors", float64(compares)/(2*n), len(f.tensors.index.slots), n)

	// Tensor is the index's answer.
	for _, i := range []int{0, 1, n / 2, n - 1} {
		want := f.TensorAt(i)
		if ti, ok := f.Tensor(want.Name); !ok || !reflect.DeepEqual(ti, want) {
			t.Fatalf("Tensor(%q) = %v, %v", want.Name, ti, ok)
		}
	}
	if _, ok := f.Tensor("t.1.bias"); ok {
		t.Fatal("a missing tensor found")
	}
	// So is the model's, across shards: each shard's index, then the
	// position of the shard's first tensor in the model.
	shard := func(no, from, to int) *File {
		return manyTensorFile(t, from, to, KV{Key: KeySplitNo, Value: Uint16(uint16(no))}, KV{Key: KeySplitCount, Value: Uint16(2)}, KV{Key: KeySplitTensorsCount, Value: Int32(1000)})
	}
	m, err := NewModel(shard(0, 0, 400), shard(1, 400, 1000))
	if err != nil {
		t.Fatal(err)
	}
	for _, i := range []int{0, 399, 400, 999} {
		name := fmt.Sprintf("t.%d.weight", i)
		if mt, ok := m.Tensor(name); !ok || !reflect.DeepEqual(mt, m.TensorAt(i)) || mt.Name != name || mt.Shard != min(i/400, 1) {
			t.Fatalf("model tensor %s: %+v %v", name, mt, ok)
		}
	}
	if _, err := NewModel(shard(0, 0, 500), shard(1, 499, 999)); err == nil {
		t.Fatal("a tensor in two shards accepted")
	}
}

// The index refuses a duplicate and grows past its first tables.
func TestNameIndex(t *testing.T) {
	names := []string{}
	nameAt := func(i int) string { return names[i] }
	var x nameIndex
	for i := range 1000 {
		names = append(names, fmt.Sprint("n", i))
		if _, isNew := x.add(names[i], i, nameAt); !isNew {
			t.Fatalf("%s is a duplicate", names[i])
		}
	}
	names = append(names, "n500")
	if j, isNew := x.add("n500", 1000, nameAt); isNew || j != 500 {
		t.Fatalf("duplicate n500: %d %v", j, isNew)
	}
	if x.n != 1000 || 4*x.n > 3*len(x.slots) {
		t.Fatalf("%d names in %d slots", x.n, len(x.slots))
	}
	// Reserved for a count, it takes them all without growing.
	var r nameIndex
	r.reserve(1000)
	slots := len(r.slots)
	for i := range 1000 {
		if _, isNew := r.add(names[i], i, nameAt); !isNew {
			t.Fatalf("%s is a duplicate", names[i])
		}
	}
	if len(r.slots) != slots || 2*len(r.slots) > 3*1000+16 {
		t.Fatalf("reserved %d slots, then %d, for 1000 names", slots, len(r.slots))
	}
	for i := range 1000 {
		if j, ok := r.find(names[i], nameAt); !ok || j != i {
			t.Fatalf("%s found at %d, %v", names[i], j, ok)
		}
	}
	var empty nameIndex
	if _, ok := empty.find("a", nameAt); ok {
		t.Fatal("found in an empty index")
	}
}

// BenchmarkTensorLookup finds tensors by name in a file of 10^5.
func BenchmarkTensorLookup(b *testing.B) {
	f := manyTensorFile(b, 0, 100_000)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, ok := f.Tensor(f.tensors.nameAt(i % f.NumTensors())); !ok {
			b.Fatal("not found")
		}
	}
}

// Every known tensor type fits the byte a table keeps for it.
func TestTypesFitAByte(t *testing.T) {
	for typ := range tensorTypes {
		if typ > 0xff {
			t.Fatalf("type %v is %d", typ, uint32(typ))
		}
	}
}

// A table hands out what was written, across the groups of its spans.
func TestTensorTable(t *testing.T) {
	f := manyTensorFile(t, 0, 3*spanGroup+5)
	for i := range f.NumTensors() {
		want := fmt.Sprintf("t.%d.weight", i)
		if ti := f.TensorAt(i); ti.Name != want || len(ti.Dims) != 1 || cap(ti.Dims) != 1 || ti.Dims[0] != 1 || ti.Type != TypeF32 || ti.Size != 4 || ti.Offset != uint64(4*i) {
			t.Fatalf("tensor %d: %+v", i, ti)
		}
	}
	var s spans
	var end uint64
	for i := range 5 * spanGroup {
		s.add(i % 256)
		if start, e := s.span(i); start != end || e != end+uint64(i%256) {
			t.Fatalf("entry %d: %d to %d, want %d to %d", i, start, e, end, end+uint64(i%256))
		}
		end += uint64(i % 256)
	}
	if start, e := s.span(2*spanGroup + 3); start != 2*spanGroup*(2*spanGroup-1)/2+3*(2*spanGroup)+3 || e != start+2*spanGroup+3 {
		t.Fatalf("entry %d again: %d to %d", 2*spanGroup+3, start, e)
	}
}

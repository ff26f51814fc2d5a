// Package gguf is the GGUF container (the file format of ggml and llama.cpp)
// and nothing else: it reads, writes and edits files without loading tensor
// data into memory, and knows no policy of llama.cpp (see llamacpp/arch).
//
// A File is one parsed .gguf file over an io.ReaderAt; a Model is the logical
// model of one file or of a split set NAME-0000i-of-0000n.gguf. Tensor data is
// handed out as io.SectionReader views and copied by ranges when writing.
package gguf

import (
	"bufio"
	"cmp"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"iter"
	"os"
	"slices"
)

// Magic is the first four bytes of every GGUF file ("GGUF").
const Magic = 0x46554747

// DefaultAlignment is the alignment of tensor data when general.alignment is absent.
const DefaultAlignment = 32

// MaxTensorName is the longest tensor name llama.cpp accepts (GGML_MAX_NAME - 1).
const MaxTensorName = 63

// maxDims is GGML_MAX_DIMS.
const maxDims = 4

// maxArrayDepth bounds nested arrays so that a hostile file cannot recurse without end.
const maxArrayDepth = 16

var (
	// ErrFormat is wrapped by every error about a malformed file.
	ErrFormat = errors.New("gguf: malformed file")
	// ErrUnsupported is wrapped by errors about valid files this package does not handle.
	ErrUnsupported = errors.New("gguf: unsupported file")
)

// FormatError reports a malformed file: what is wrong and where.
type FormatError struct {
	Offset int64  // byte offset in the file
	Msg    string // what is wrong
}

func (e *FormatError) Error() string { return fmt.Sprintf("gguf: %s at byte 0x%x", e.Msg, e.Offset) }
func (e *FormatError) Unwrap() error { return ErrFormat }

// TensorInfo describes one tensor: its name, shape, type and where its data lies.
// A File hands them out made from its tables (TensorAt, AllTensors): their
// Name and Dims are views of those tables, Dims with its capacity cut to its
// length so that append copies it. Copy Dims (slices.Clone) to change it.
type TensorInfo struct {
	Name   string
	Dims   []uint64   // ne[0], ne[1], …: ne[0] is the contiguous dimension
	Type   TensorType //
	Offset uint64     // relative to the start of the data section
	Size   uint64     // bytes of data, computed from Dims and Type
}

// Elements is the number of elements of the tensor.
func (t *TensorInfo) Elements() uint64 {
	n := uint64(1)
	for _, d := range t.Dims {
		n *= d
	}
	return n
}

// File is one parsed GGUF file. Its tensor infos are held as columns and
// handed out one at a time (NumTensors, TensorAt, AllTensors), indexed by
// name (Tensor).
type File struct {
	Version    uint32
	KV         []KV
	Alignment  uint64
	DataOffset int64 // start of the data section
	Size       int64 // file size

	r       io.ReaderAt
	closer  io.Closer
	name    string
	tensors tensorTable
}

// Name is the path the file was opened from, or "" for NewFile.
func (f *File) Name() string { return f.name }

// Open opens and parses the named file.
func Open(path string) (*File, error) {
	// Stat before opening: opening a FIFO blocks until a writer comes.
	if st, err := os.Stat(path); err != nil {
		return nil, err
	} else if !st.Mode().IsRegular() {
		return nil, fmt.Errorf("%s: not a regular file (%v)", path, st.Mode().Type())
	}
	fp, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	st, err := fp.Stat()
	if err != nil {
		fp.Close()
		return nil, err
	}
	if !st.Mode().IsRegular() {
		fp.Close()
		return nil, fmt.Errorf("%s: not a regular file", path)
	}
	f, err := NewFile(fp, st.Size())
	if err != nil {
		fp.Close()
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	f.closer = fp
	f.name = path
	return f, nil
}

// Close closes the file if it was opened by Open. It is safe to call twice.
func (f *File) Close() error {
	if f.closer == nil {
		return nil
	}
	err := f.closer.Close()
	f.closer = nil
	return err
}

// NewFile parses a GGUF file of the given size read through r. Every count,
// length and offset is checked against size before anything is allocated.
func NewFile(r io.ReaderAt, size int64) (*File, error) {
	d := newDecoder(r, size)
	f, err := d.metadata(r)
	if err != nil {
		return nil, err
	}
	// The tensor infos are most of a large header: a file of 10^6 tiny
	// tensors is legal. They are read twice: first each is checked and the
	// bytes of the names and the dims are counted, keeping nothing; then the
	// tables are made at their size and filled (a lying count or a cut file
	// fails before anything is allocated for it, and nothing grows by
	// copying). The second reading checks all again: the file may have
	// changed between the two.
	infos := d.off
	var nameBytes, dims uint64
	var t rawTensor
	for i := range d.nTensors {
		if err := d.tensorInfo(&t, i, f.Alignment); err != nil {
			return nil, err
		}
		nameBytes += uint64(len(t.name))
		dims += uint64(t.nDims)
	}
	end := d.off
	d.seek(infos)
	f.tensors.reserve(int(d.nTensors), nameBytes, dims)
	for i := range d.nTensors {
		at := d.off
		if err := d.tensorInfo(&t, i, f.Alignment); err != nil {
			return nil, err
		}
		isNew, err := f.tensors.add(&t)
		if err != nil {
			return nil, &FormatError{at, fmt.Sprintf("tensor %d: %v: the file changed while being read", i, err)}
		}
		if !isNew {
			return nil, &FormatError{at, fmt.Sprintf("duplicate tensor name %q", t.name)}
		}
	}
	if d.off != end {
		return nil, &FormatError{d.off, "the tensor infos changed while being read"}
	}

	f.DataOffset = int64(alignUp(uint64(d.off), f.Alignment))
	if f.DataOffset > size {
		if f.tensors.len() > 0 {
			return nil, &FormatError{d.off, "file ends before its data section"}
		}
		// A file without tensors may end right after its header.
		f.DataOffset = size
	}
	if err := f.checkLayout(); err != nil {
		return nil, err
	}
	return f, nil
}

// metadata reads a file's header up to its tensor infos: version, counts,
// metadata and alignment. It leaves the decoder at the first tensor info,
// and d.nTensors says how many follow.
func (d *decoder) metadata(r io.ReaderAt) (*File, error) {
	size := d.size
	f := &File{r: r, Size: size}

	magic := d.u32()
	if d.err != nil {
		return nil, &FormatError{0, "file too short for a GGUF header"}
	}
	if magic != Magic {
		return nil, &FormatError{0, fmt.Sprintf("bad magic %q, not a GGUF file", le32bytes(magic))}
	}
	f.Version = d.u32()
	switch {
	case d.err != nil:
		return nil, d.err
	case f.Version == 2 || f.Version == 3:
	case f.Version == 1:
		return nil, fmt.Errorf("%w: GGUF version 1 (32-bit counts) is obsolete; convert the model again", ErrUnsupported)
	case f.Version&0xffff == 0 && f.Version>>16 != 0:
		return nil, fmt.Errorf("%w: big-endian GGUF (version bytes %08x); only little-endian files are supported", ErrUnsupported, f.Version)
	default:
		return nil, fmt.Errorf("%w: GGUF version %d", ErrUnsupported, f.Version)
	}
	nTensors := d.u64()
	nKV := d.u64()
	if d.err != nil {
		return nil, d.err
	}
	// A tensor info takes at least 24 bytes and a key-value pair 13.
	if nTensors > uint64(d.remaining())/24 {
		return nil, &FormatError{8, fmt.Sprintf("tensor count %d cannot fit in a %d-byte file", nTensors, size)}
	}
	if nTensors > maxTensors {
		return nil, fmt.Errorf("%w: %d tensors (at most %d)", ErrUnsupported, nTensors, uint64(maxTensors))
	}
	if nKV > uint64(d.remaining())/13 {
		return nil, &FormatError{16, fmt.Sprintf("metadata count %d cannot fit in a %d-byte file", nKV, size)}
	}
	d.nTensors = nTensors

	seen := make(map[string]bool)
	for i := uint64(0); i < nKV; i++ {
		at := d.off
		key := d.str("metadata key")
		typ := ValueType(d.u32())
		if d.err != nil {
			return nil, d.err
		}
		if seen[key] {
			return nil, &FormatError{at, fmt.Sprintf("duplicate metadata key %q", key)}
		}
		seen[key] = true
		v := d.value(typ, 0, key)
		if d.err != nil {
			return nil, d.err
		}
		f.KV = append(f.KV, KV{key, v})
	}

	f.Alignment = DefaultAlignment
	if v, ok := f.Get(KeyAlignment); ok {
		a, isInt := v.Int()
		if v.Type() != TypeUint32 || !isInt || a == 0 || a&(a-1) != 0 {
			return nil, &FormatError{0, fmt.Sprintf("general.alignment must be a power-of-two uint32, got %v %v", v.Type(), v)}
		}
		f.Alignment = uint64(a)
	}

	return f, nil
}

// rawTensor is a tensor info as the decoder reads it, before it goes into a
// table: its name is the decoder's buffer, valid until the next read.
type rawTensor struct {
	name   []byte
	dims   [maxDims]uint64
	nDims  int
	typ    TensorType
	offset uint64
	size   uint64
}

// tensorInfo reads and checks the info of tensor i into t.
func (d *decoder) tensorInfo(t *rawTensor, i, alignment uint64) error {
	at := d.off
	t.name = d.name()
	nDims := d.u32()
	if d.err != nil {
		return d.err
	}
	if len(t.name) > MaxTensorName {
		return &FormatError{at, fmt.Sprintf("tensor %d name %.80q is longer than %d bytes", i, t.name, MaxTensorName)}
	}
	if nDims == 0 || nDims > maxDims {
		return &FormatError{at, fmt.Sprintf("tensor %q has %d dimensions (1 to %d allowed)", t.name, nDims, maxDims)}
	}
	t.nDims = int(nDims)
	for j := range t.nDims {
		t.dims[j] = d.u64()
	}
	t.typ = TensorType(d.u32())
	t.offset = d.u64()
	if d.err != nil {
		return d.err
	}
	var err error
	if t.size, err = tensorSize(t.typ, t.dims[:t.nDims]); err != nil {
		return &FormatError{at, fmt.Sprintf("tensor %q: %v", t.name, err)}
	}
	if t.offset%alignment != 0 {
		return &FormatError{at, fmt.Sprintf("tensor %q offset %d is not a multiple of the alignment %d", t.name, t.offset, alignment)}
	}
	return nil
}

// checkLayout checks that every tensor lies inside the file and none overlap.
func (f *File) checkLayout() error {
	dataLen := uint64(f.Size - f.DataOffset)
	var end uint64
	prev := -1
	for i := range f.tensors.inOffsetOrder() {
		t := f.tensors.at(i)
		if t.Offset > dataLen || t.Size > dataLen-t.Offset {
			return &FormatError{f.DataOffset + int64(min(t.Offset, dataLen)), fmt.Sprintf("tensor %q data (%d bytes at data offset %d) runs past the end of the file", t.Name, t.Size, t.Offset)}
		}
		if prev >= 0 && t.Offset < end {
			return &FormatError{f.DataOffset + int64(t.Offset), fmt.Sprintf("tensor %q overlaps tensor %q", t.Name, f.tensors.nameAt(prev))}
		}
		end, prev = t.Offset+t.Size, i
	}
	return nil
}

// inOffsetOrder yields the positions of the tensors in data order. Writers
// lay them out in order (ours and llama.cpp's do), and then it costs
// nothing; another order costs 4 bytes a tensor, sorted.
func (t *tensorTable) inOffsetOrder() iter.Seq[int] {
	return func(yield func(int) bool) {
		offs := t.offsets
		sorted := true
		for i := 1; i < len(offs) && sorted; i++ {
			sorted = offs[i-1] <= offs[i]
		}
		if sorted {
			for i := range offs {
				if !yield(i) {
					return
				}
			}
			return
		}
		order := make([]uint32, len(offs)) // at most maxTensors
		for i := range order {
			order[i] = uint32(i)
		}
		slices.SortStableFunc(order, func(a, b uint32) int { return cmp.Compare(offs[a], offs[b]) })
		for _, i := range order {
			if !yield(int(i)) {
				return
			}
		}
	}
}

// Get returns the value of a metadata key.
func (f *File) Get(key string) (Value, bool) { return lookup(f.KV, key) }

func lookup(kvs []KV, key string) (Value, bool) {
	for _, kv := range kvs {
		if kv.Key == key {
			return kv.Value, true
		}
	}
	return Value{}, false
}

// NumTensors is the number of tensors of the file.
func (f *File) NumTensors() int { return f.tensors.len() }

// TensorAt is the info of tensor i (0 <= i < NumTensors), in file order.
func (f *File) TensorAt(i int) TensorInfo { return f.tensors.at(i) }

// AllTensors yields the position and info of every tensor, in file order.
func (f *File) AllTensors() iter.Seq2[int, TensorInfo] { return f.tensors.all() }

// TensorData returns a view of a tensor's bytes.
func (f *File) TensorData(t TensorInfo) *io.SectionReader {
	return io.NewSectionReader(f.r, f.DataOffset+int64(t.Offset), int64(t.Size))
}

// Tensor returns the info of the tensor with the given name, in constant
// time (through the index built when the file was parsed).
func (f *File) Tensor(name string) (TensorInfo, bool) {
	if i, ok := f.tensors.find(name); ok {
		return f.tensors.at(i), true
	}
	return TensorInfo{}, false
}

// tensorSize computes the bytes of a tensor, refusing unknown types, rows that
// are not whole blocks, and sizes that overflow.
func tensorSize(typ TensorType, dims []uint64) (uint64, error) {
	if !typ.Known() {
		return 0, fmt.Errorf("unknown or removed tensor type %d", uint32(typ))
	}
	const limit = 1 << 62
	elems := uint64(1)
	for _, n := range dims {
		if n > limit || (n != 0 && elems > limit/n) {
			return 0, fmt.Errorf("shape %v is too large", dims)
		}
		elems *= n
	}
	bs := typ.BlockSize()
	if dims[0]%bs != 0 {
		return 0, fmt.Errorf("row length %d is not a multiple of the %v block size %d", dims[0], typ, bs)
	}
	blocks := elems / bs
	if blocks > limit/typ.BlockBytes() {
		return 0, fmt.Errorf("shape %v is too large", dims)
	}
	return blocks * typ.BlockBytes(), nil
}

func alignUp(n, align uint64) uint64 { return n + (align-n%align)%align }

func le32bytes(v uint32) string {
	var b [4]byte
	binary.LittleEndian.PutUint32(b[:], v)
	return string(b[:])
}

// decoder reads the header sequentially with a sticky error.
type decoder struct {
	r    *bufio.Reader
	off  int64
	size int64
	err  error
	buf  [8]byte
	ra   io.ReaderAt
	strs strtab          // the short strings of the header
	sbuf [strtabMax]byte // a short string as read

	nTensors uint64 // the tensor count of the header
}

func newDecoder(r io.ReaderAt, size int64) *decoder {
	return &decoder{r: bufio.NewReaderSize(io.NewSectionReader(r, 0, size), 64<<10), ra: r, size: size}
}

// seek makes the decoder read on from byte off (with its buffer).
func (d *decoder) seek(off int64) {
	d.r.Reset(io.NewSectionReader(d.ra, off, d.size-off))
	d.off = off
}

func (d *decoder) remaining() int64 { return d.size - d.off }

func (d *decoder) fail(msg string) {
	if d.err == nil {
		d.err = &FormatError{d.off, msg}
	}
}

func (d *decoder) read(n int) []byte {
	if d.err != nil {
		return d.buf[:n]
	}
	if _, err := io.ReadFull(d.r, d.buf[:n]); err != nil {
		if err == io.EOF || err == io.ErrUnexpectedEOF {
			d.fail("unexpected end of file")
		} else {
			d.err = err
		}
		clear(d.buf[:n])
		return d.buf[:n]
	}
	d.off += int64(n)
	return d.buf[:n]
}

func (d *decoder) u32() uint32 { return binary.LittleEndian.Uint32(d.read(4)) }
func (d *decoder) u64() uint64 { return binary.LittleEndian.Uint64(d.read(8)) }

// bytes reads n bytes that the caller has checked against the remaining size,
// in chunks so that the allocation follows the data actually read.
func (d *decoder) bytes(n uint64) []byte {
	const chunk = 1 << 20
	var b []byte
	for uint64(len(b)) < n && d.err == nil {
		c := min(n-uint64(len(b)), chunk)
		start := len(b)
		b = append(b, make([]byte, c)...)
		if _, err := io.ReadFull(d.r, b[start:]); err != nil {
			d.fail("unexpected end of file")
			return nil
		}
		d.off += int64(c)
	}
	return b
}

func (d *decoder) str(what string) string {
	at := d.off
	n := d.u64()
	if d.err != nil {
		return ""
	}
	if n > uint64(d.remaining()) {
		d.err = &FormatError{at, fmt.Sprintf("%s length %d runs past the end of the file", what, n)}
		return ""
	}
	if n <= strtabMax {
		b := d.sbuf[:n]
		if _, err := io.ReadFull(d.r, b); err != nil {
			d.fail("unexpected end of file")
			return ""
		}
		d.off += int64(n)
		return d.strs.add(b)
	}
	return string(d.bytes(n))
}

// name reads a tensor name into the decoder's buffer (a longer one, which
// the caller refuses, into a slice of its own), keeping nothing.
func (d *decoder) name() []byte {
	at := d.off
	n := d.u64()
	if d.err != nil {
		return nil
	}
	if n > uint64(d.remaining()) {
		d.err = &FormatError{at, fmt.Sprintf("tensor name length %d runs past the end of the file", n)}
		return nil
	}
	if n > strtabMax {
		return d.bytes(n)
	}
	b := d.sbuf[:n]
	if _, err := io.ReadFull(d.r, b); err != nil {
		d.fail("unexpected end of file")
		return nil
	}
	d.off += int64(n)
	return b
}

func (d *decoder) value(typ ValueType, depth int, key string) Value {
	if !typ.valid() {
		d.fail(fmt.Sprintf("key %q has invalid value type %d", key, uint32(typ)))
		return Value{}
	}
	switch typ {
	case TypeString:
		return Value{typ: TypeString, str: d.str(fmt.Sprintf("value of %q: string", key))}
	case TypeArray:
		a := d.array(depth+1, key)
		return Value{typ: TypeArray, arr: a}
	}
	sz := typ.scalarSize()
	b := d.read(sz)
	var buf [8]byte
	copy(buf[:], b)
	return Value{typ: typ, bits: binary.LittleEndian.Uint64(buf[:])}
}

func (d *decoder) array(depth int, key string) *Array {
	at := d.off
	if depth > maxArrayDepth {
		d.fail(fmt.Sprintf("key %q nests arrays deeper than %d", key, maxArrayDepth))
		return nil
	}
	elem := ValueType(d.u32())
	n := d.u64()
	if d.err != nil {
		return nil
	}
	if !elem.valid() {
		d.err = &FormatError{at, fmt.Sprintf("key %q: array of invalid type %d", key, uint32(elem))}
		return nil
	}
	minSize := uint64(elem.scalarSize())
	switch elem {
	case TypeString:
		minSize = 8
	case TypeArray:
		minSize = 12
	}
	if n > uint64(d.remaining())/minSize {
		d.err = &FormatError{at, fmt.Sprintf("key %q: array of %d %v elements runs past the end of the file", key, n, elem)}
		return nil
	}
	a := &Array{elem: elem, n: int(n)}
	switch elem {
	case TypeString:
		for i := uint64(0); i < n && d.err == nil; i++ {
			a.strs = append(a.strs, d.str(fmt.Sprintf("key %q element %d", key, i)))
		}
	case TypeArray:
		for i := uint64(0); i < n && d.err == nil; i++ {
			if sub := d.array(depth+1, key); sub != nil {
				a.arrays = append(a.arrays, *sub)
			}
		}
	default:
		a.raw = d.bytes(n * minSize)
	}
	return a
}

// valueOffset is the byte offset of a key's value, after its type.
func (f *File) valueOffset(key string) (int64, bool) {
	off := int64(4 + 4 + 8 + 8)
	for _, kv := range f.KV {
		off += 8 + int64(len(kv.Key)) + 4
		if kv.Key == key {
			return off, true
		}
		off += kv.Value.encodedSize()
	}
	return 0, false
}

// SetUint32InPlace overwrites the value of an existing uint32 metadata key
// of a file in place: the file's layout does not change.
func SetUint32InPlace(path, key string, v uint32) error {
	fp, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return err
	}
	defer fp.Close()
	st, err := fp.Stat()
	if err != nil {
		return err
	}
	f, err := NewFile(fp, st.Size())
	if err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	old, ok := f.Get(key)
	off, _ := f.valueOffset(key)
	if !ok || old.Type() != TypeUint32 {
		return fmt.Errorf("%s: %s is not a uint32 key of the file", path, key)
	}
	var b [4]byte
	binary.LittleEndian.PutUint32(b[:], v)
	if _, err := fp.WriteAt(b[:], off); err != nil {
		return err
	}
	return fp.Close()
}

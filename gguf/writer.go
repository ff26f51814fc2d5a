package gguf

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"iter"
	"os"
	"slices"
)

// WriterTensor is one tensor to write: its info (Offset is recomputed) and a
// view of exactly Info.Size bytes of data.
type WriterTensor struct {
	Info TensorInfo
	Data *io.SectionReader
}

// TensorSource hands the writer the tensors of a file one at a time, in file
// order: Info as often as asked, Data once, when its bytes are copied (a
// view of exactly Info(i).Size bytes, which the writer is done with before
// it asks for the next, so that a source may hand out one view again and
// again). A writer of many tensors (a plan keeping 10^6 of them) need not
// hold a WriterTensor for each. A source that renames tensors may also have
// a method SourceName(i int) string, the name tensor i has where its data is
// read, for errors about reading it.
type TensorSource interface {
	Len() int
	Info(i int) TensorInfo
	Data(i int) *io.SectionReader
}

// WriterTensors is the TensorSource of a slice.
type WriterTensors []WriterTensor

func (ts WriterTensors) Len() int                     { return len(ts) }
func (ts WriterTensors) Info(i int) TensorInfo        { return ts[i].Info }
func (ts WriterTensors) Data(i int) *io.SectionReader { return ts[i].Data }

// infoSource is the TensorSource of tensor infos alone, to lay them out.
type infoSource []TensorInfo

func (ts infoSource) Len() int                     { return len(ts) }
func (ts infoSource) Info(i int) TensorInfo        { return ts[i] }
func (ts infoSource) Data(i int) *io.SectionReader { return nil }

// Layout is where a file's parts go, computed before anything is written.
// The tensors' offsets are not kept: each is the previous one's end, aligned
// (offsets), so that laying out 10^6 tensors costs nothing a tensor.
type Layout struct {
	Alignment  uint64
	DataOffset int64 // start of the data section
	Size       int64 // total file size
}

// offsets yields each tensor of src and its offset relative to DataOffset,
// in order.
func (l *Layout) offsets(src TensorSource) iter.Seq2[TensorInfo, uint64] {
	return func(yield func(TensorInfo, uint64) bool) {
		var off uint64
		for i := range src.Len() {
			t := src.Info(i)
			if !yield(t, off) {
				return
			}
			off += alignUp(t.Size, l.Alignment)
		}
	}
}

// ComputeLayout lays out a file: header, tensors in the given order, each
// padded to the alignment given by general.alignment (default 32).
func ComputeLayout(kvs []KV, tensors []TensorInfo) (*Layout, error) {
	return LayoutOf(kvs, infoSource(tensors))
}

// LayoutOf is ComputeLayout of the tensors of a source (only their infos
// are asked for).
func LayoutOf(kvs []KV, src TensorSource) (*Layout, error) {
	l := &Layout{Alignment: DefaultAlignment}
	if v, ok := lookup(kvs, KeyAlignment); ok {
		a, _ := v.Int()
		if v.Type() != TypeUint32 || a <= 0 || a&(a-1) != 0 {
			return nil, fmt.Errorf("gguf: general.alignment must be a power-of-two uint32, got %v", v)
		}
		l.Alignment = uint64(a)
	}
	n := int64(4 + 4 + 8 + 8)
	for _, kv := range kvs {
		n += 8 + int64(len(kv.Key)) + 4 + kv.Value.encodedSize()
	}
	var end uint64
	for t, off := range l.offsets(src) {
		n += 8 + int64(len(t.Name)) + 4 + 8*int64(len(t.Dims)) + 4 + 8
		end = off + alignUp(t.Size, l.Alignment)
	}
	l.DataOffset = int64(alignUp(uint64(n), l.Alignment))
	if src.Len() == 0 {
		// No data section: no padding to reach it. A header-only file of
		// general.alignment 2^31 would otherwise be written as 2 GiB, and
		// the reader takes such a file ending right after its header.
		l.DataOffset = n
	}
	l.Size = l.DataOffset + int64(end)
	return l, nil
}

// Write streams a GGUF file to w: header, metadata in the given order, tensor
// infos and tensor data in the given order, with exact alignment padding.
// Tensor bytes are copied from their sources by ranges (copy_file_range when
// both ends are files), so memory does not grow with the model.
func Write(w io.Writer, version uint32, kvs []KV, tensors []WriterTensor) (*Layout, error) {
	for _, t := range tensors {
		if t.Data.Size() != int64(t.Info.Size) {
			return nil, fmt.Errorf("gguf: tensor %q: data is %d bytes, info says %d", t.Info.Name, t.Data.Size(), t.Info.Size)
		}
	}
	return WriteFrom(w, version, kvs, WriterTensors(tensors))
}

// WriteFrom is Write of the tensors of a source: the writer keeps only their
// offsets (Layout), whatever their number.
func WriteFrom(w io.Writer, version uint32, kvs []KV, src TensorSource) (*Layout, error) {
	if err := checkWritable(kvs, src); err != nil {
		return nil, err
	}
	l, err := LayoutOf(kvs, src)
	if err != nil {
		return nil, err
	}
	e := &encoder{w: bufio.NewWriterSize(w, 1<<20)}
	e.u32(Magic)
	e.u32(version)
	e.u64(uint64(src.Len()))
	e.u64(uint64(len(kvs)))
	for _, kv := range kvs {
		e.str(kv.Key)
		e.u32(uint32(kv.Value.typ))
		e.value(kv.Value)
	}
	for t, off := range l.offsets(src) {
		e.str(t.Name)
		e.u32(uint32(len(t.Dims)))
		for _, d := range t.Dims {
			e.u64(d)
		}
		e.u32(uint32(t.Type))
		e.u64(off)
	}
	if src.Len() > 0 {
		e.pad(l.Alignment)
	}
	srcNames, _ := src.(interface{ SourceName(i int) string })
	for i := range src.Len() {
		t, data := src.Info(i), src.Data(i)
		if data.Size() != int64(t.Size) && e.err == nil {
			e.err = fmt.Errorf("gguf: tensor %q: data is %d bytes, info says %d", t.Name, data.Size(), t.Size)
		}
		name := t.Name
		if srcNames != nil {
			name = srcNames.SourceName(i)
		}
		e.copyFrom(w, name, data)
		e.pad(l.Alignment)
	}
	if e.err == nil {
		e.err = e.w.Flush()
	}
	if e.err == nil && e.n != l.Size {
		e.err = fmt.Errorf("gguf: wrote %d bytes, layout says %d", e.n, l.Size)
	}
	return l, e.err
}

// CheckWritten reads back a file that WriteFrom wrote as l and checks that
// a reader sees what was written: its metadata keys, and every tensor's
// name, shape, type, size and offset. It decodes the tensors one at a time
// and keeps none, so that checking a header of 10^6 tensors does not hold a
// second copy of it.
func CheckWritten(r io.ReaderAt, l *Layout, kvs []KV, src TensorSource) error {
	d := newDecoder(r, l.Size)
	f, err := d.metadata(r)
	if err != nil {
		return fmt.Errorf("written file does not read back: %w", err)
	}
	if len(f.KV) != len(kvs) || d.nTensors != uint64(src.Len()) {
		return fmt.Errorf("written file has %d keys and %d tensors, want %d and %d", len(f.KV), d.nTensors, len(kvs), src.Len())
	}
	for i, kv := range f.KV {
		if kv.Key != kvs[i].Key || kv.Value.Type() != kvs[i].Value.Type() {
			return fmt.Errorf("written key %d is %s (%v), want %s (%v)", i, kv.Key, kv.Value.Type(), kvs[i].Key, kvs[i].Value.Type())
		}
	}
	var t rawTensor
	i := 0
	for want, off := range l.offsets(src) {
		if err := d.tensorInfo(&t, uint64(i), f.Alignment); err != nil {
			return fmt.Errorf("written file does not read back: %w", err)
		}
		dims := t.dims[:t.nDims]
		if string(t.name) != want.Name || t.typ != want.Type || t.size != want.Size || !slices.Equal(dims, want.Dims) || t.offset != off {
			return fmt.Errorf("written tensor %d is %q (%v %v, %d bytes at %d), want %q (%v %v, %d bytes at %d)", i, t.name, t.typ, dims, t.size, t.offset, want.Name, want.Type, want.Dims, want.Size, off)
		}
		i++
	}
	at := int64(alignUp(uint64(d.off), f.Alignment))
	if i == 0 {
		at = d.off // no tensors: no padding
	}
	if at != l.DataOffset {
		return fmt.Errorf("written data section starts at byte %d, want %d", at, l.DataOffset)
	}
	return nil
}

// checkWritable refuses what a reader (ours or llama.cpp's) would refuse.
func checkWritable(kvs []KV, src TensorSource) error {
	keys := make(map[string]bool, len(kvs))
	for _, kv := range kvs {
		if keys[kv.Key] {
			return fmt.Errorf("gguf: duplicate metadata key %q", kv.Key)
		}
		keys[kv.Key] = true
	}
	if src.Len() > maxTensors {
		return fmt.Errorf("gguf: %d tensors (at most %d)", src.Len(), maxTensors)
	}
	var names nameIndex
	names.reserve(src.Len())
	nameAt := func(i int) string { return src.Info(i).Name }
	for i := range src.Len() {
		t := src.Info(i)
		if _, isNew := names.add(t.Name, i, nameAt); !isNew {
			return fmt.Errorf("gguf: duplicate tensor name %q", t.Name)
		}
		if len(t.Name) > MaxTensorName {
			return fmt.Errorf("gguf: tensor name %q is longer than %d bytes", t.Name, MaxTensorName)
		}
		if len(t.Dims) == 0 || len(t.Dims) > maxDims {
			return fmt.Errorf("gguf: tensor %q has %d dimensions", t.Name, len(t.Dims))
		}
		if size, err := tensorSize(t.Type, t.Dims); err != nil || size != t.Size {
			return fmt.Errorf("gguf: tensor %q: size %d does not match shape %v of type %v (%v)", t.Name, t.Size, t.Dims, t.Type, err)
		}
	}
	return nil
}

// encoder writes through a buffer with a sticky error and a byte count.
type encoder struct {
	w            *bufio.Writer
	n            int64
	err          error
	buf          [8]byte
	noKernelCopy bool // copyFileRange said it cannot: do not ask for every tensor
}

func (e *encoder) write(b []byte) {
	if e.err != nil {
		return
	}
	n, err := e.w.Write(b)
	e.n += int64(n)
	e.err = err
}

func (e *encoder) u32(v uint32) { binary.LittleEndian.PutUint32(e.buf[:], v); e.write(e.buf[:4]) }
func (e *encoder) u64(v uint64) { binary.LittleEndian.PutUint64(e.buf[:], v); e.write(e.buf[:8]) }

func (e *encoder) str(s string) {
	e.u64(uint64(len(s)))
	if e.err == nil {
		n, err := e.w.WriteString(s)
		e.n += int64(n)
		e.err = err
	}
}

func (e *encoder) value(v Value) {
	switch v.typ {
	case TypeString:
		e.str(v.str)
	case TypeArray:
		e.array(v.arr)
	default:
		binary.LittleEndian.PutUint64(e.buf[:], v.bits)
		e.write(e.buf[:v.typ.scalarSize()])
	}
}

func (e *encoder) array(a *Array) {
	e.u32(uint32(a.elem))
	e.u64(uint64(a.n))
	switch a.elem {
	case TypeString:
		for _, s := range a.strs {
			e.str(s)
		}
	case TypeArray:
		for i := range a.arrays {
			e.array(&a.arrays[i])
		}
	default:
		e.write(a.raw)
	}
}

var zeros [256]byte

func (e *encoder) pad(align uint64) {
	for p := int((align - uint64(e.n)%align) % align); p > 0; {
		k := min(p, len(zeros))
		e.write(zeros[:k])
		p -= k
	}
}

// errNoKernelCopy says that the kernel cannot copy between two files: the
// writer copies through its buffer instead.
var errNoKernelCopy = errors.New("gguf: no in-kernel copy between these files")

// copyFrom copies a tensor's bytes to the destination: in the kernel when
// both ends are files and it can (copyFileRange, on Linux), otherwise
// through the write buffer, so that memory is that one buffer whatever the
// tensors. A source that ends early (a file truncated while it is copied)
// fails at once, naming it, the byte and the tensor.
func (e *encoder) copyFrom(dst io.Writer, tensor string, src *io.SectionReader) {
	if e.err != nil {
		return
	}
	outer, off, n := src.Outer()
	var done int64
	if df, ok := dst.(*os.File); ok && !e.noKernelCopy {
		if sf, ok := outer.(*os.File); ok {
			if e.err = e.w.Flush(); e.err != nil {
				return
			}
			copied, err := copyFileRange(df, sf, off, n, e.n)
			e.n += copied
			if !errors.Is(err, errNoKernelCopy) {
				e.err = copyError(tensor, outer, off, n, copied, err)
				return
			}
			e.noKernelCopy = true
		}
	}
	for done < n && e.err == nil {
		if e.w.Available() == 0 {
			if e.err = e.w.Flush(); e.err != nil {
				return
			}
		}
		b := e.w.AvailableBuffer()
		b = b[:min(int64(cap(b)), n-done)]
		k, err := outer.ReadAt(b, off+done)
		if k == 0 && err == nil {
			err = io.ErrNoProgress // a broken ReaderAt: do not spin
		}
		e.write(b[:k]) // in place: b is the free end of the buffer
		done += int64(k)
		if err != nil && done < n {
			if err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			e.err = copyError(tensor, outer, off, n, done, err)
		}
	}
}

// copyError says what went wrong copying bytes [off, off+n) of src, a
// tensor's data, after done of them.
func copyError(tensor string, src io.ReaderAt, off, n, done int64, err error) error {
	if err == nil {
		return nil
	}
	name := "the tensor data source"
	if f, ok := src.(interface{ Name() string }); ok {
		name = f.Name()
	}
	if errors.Is(err, io.ErrUnexpectedEOF) {
		_, isFile := src.(*os.File)
		return &sourceEnded{name, tensor, isFile, off, n, done}
	}
	return fmt.Errorf("gguf: copying tensor %s from %s (bytes %d to %d): %w", tensor, name, off, off+n, err)
}

// sourceEnded is tensor data that ended before its size: the input file was
// cut (or rewritten) after it was opened. It wraps io.ErrUnexpectedEOF.
type sourceEnded struct {
	source, tensor string
	isFile         bool  // off is a byte of the file source (not of a reader that computes the tensor)
	off, n, done   int64 // the tensor's bytes [off, off+n) of source, of which done were copied
}

func (e *sourceEnded) Error() string {
	if e.isFile {
		return fmt.Sprintf("gguf: %s ended at byte %d while copying tensor %s (bytes %d to %d): was it truncated or replaced while being copied?", e.source, e.off+e.done, e.tensor, e.off, e.off+e.n)
	}
	return fmt.Sprintf("gguf: %s ended after %d of the %d bytes of tensor %s: was it truncated or replaced while being copied?", e.source, e.done, e.n, e.tensor)
}

func (e *sourceEnded) Unwrap() error { return io.ErrUnexpectedEOF }

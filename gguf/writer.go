package gguf

import (
	"bufio"
	"encoding/binary"
	"fmt"
	"io"
	"os"
	"sort"
)

// WriterTensor is one tensor to write: its info (Offset is recomputed) and a
// view of exactly Info.Size bytes of data.
type WriterTensor struct {
	Info TensorInfo
	Data *io.SectionReader
}

// Layout is where a file's parts go, computed before anything is written.
type Layout struct {
	Alignment  uint64
	DataOffset int64    // start of the data section
	Offsets    []uint64 // tensor offsets relative to DataOffset
	Size       int64    // total file size
}

// ComputeLayout lays out a file: header, tensors in the given order, each
// padded to the alignment given by general.alignment (default 32).
func ComputeLayout(kvs []KV, tensors []TensorInfo) (*Layout, error) {
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
	for _, t := range tensors {
		n += 8 + int64(len(t.Name)) + 4 + 8*int64(len(t.Dims)) + 4 + 8
	}
	l.DataOffset = int64(alignUp(uint64(n), l.Alignment))
	var off uint64
	for _, t := range tensors {
		l.Offsets = append(l.Offsets, off)
		off += alignUp(t.Size, l.Alignment)
	}
	l.Size = l.DataOffset + int64(off)
	return l, nil
}

// Write streams a GGUF file to w: header, metadata in the given order, tensor
// infos and tensor data in the given order, with exact alignment padding.
// Tensor bytes are copied from their sources by ranges (copy_file_range when
// both ends are files), so memory does not grow with the model.
func Write(w io.Writer, version uint32, kvs []KV, tensors []WriterTensor) (*Layout, error) {
	infos := make([]TensorInfo, len(tensors))
	for i, t := range tensors {
		infos[i] = t.Info
		if t.Data.Size() != int64(t.Info.Size) {
			return nil, fmt.Errorf("gguf: tensor %q: data is %d bytes, info says %d", t.Info.Name, t.Data.Size(), t.Info.Size)
		}
	}
	if err := checkWritable(kvs, infos); err != nil {
		return nil, err
	}
	l, err := ComputeLayout(kvs, infos)
	if err != nil {
		return nil, err
	}
	e := &encoder{w: bufio.NewWriterSize(w, 1<<20)}
	e.u32(Magic)
	e.u32(version)
	e.u64(uint64(len(infos)))
	e.u64(uint64(len(kvs)))
	for _, kv := range kvs {
		e.str(kv.Key)
		e.u32(uint32(kv.Value.typ))
		e.value(kv.Value)
	}
	for i, t := range infos {
		e.str(t.Name)
		e.u32(uint32(len(t.Dims)))
		for _, d := range t.Dims {
			e.u64(d)
		}
		e.u32(uint32(t.Type))
		e.u64(l.Offsets[i])
	}
	e.pad(l.Alignment)
	for _, t := range tensors {
		e.copyFrom(w, t.Data)
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

// checkWritable refuses what a reader (ours or llama.cpp's) would refuse.
func checkWritable(kvs []KV, infos []TensorInfo) error {
	keys := make(map[string]bool, len(kvs))
	for _, kv := range kvs {
		if keys[kv.Key] {
			return fmt.Errorf("gguf: duplicate metadata key %q", kv.Key)
		}
		keys[kv.Key] = true
	}
	names := make(map[string]bool, len(infos))
	for _, t := range infos {
		if names[t.Name] {
			return fmt.Errorf("gguf: duplicate tensor name %q", t.Name)
		}
		names[t.Name] = true
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
	w   *bufio.Writer
	n   int64
	err error
	buf [8]byte
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

// copyFrom copies a tensor's bytes to the destination. When both ends are
// files the kernel may copy them (copyFileRange, on Linux); otherwise they
// stream through a fixed buffer.
func (e *encoder) copyFrom(dst io.Writer, src *io.SectionReader) {
	if e.err != nil {
		return
	}
	if e.err = e.w.Flush(); e.err != nil {
		return
	}
	outer, off, n := src.Outer()
	if df, ok := dst.(*os.File); ok {
		if sf, ok := outer.(*os.File); ok {
			copied, err := copyFileRange(df, sf, off, n, e.n)
			e.n += copied
			if err == nil || copied > 0 {
				e.err = err
				return
			}
			// Not supported between these files: fall through to a plain copy.
		}
	}
	copied, err := io.CopyBuffer(e.w, io.NewSectionReader(outer, off, n), make([]byte, 1<<20))
	e.n += copied
	e.err = err
}

// sortedByOffset returns pointers to the tensors in data order.
func sortedByOffset(ts []TensorInfo) []*TensorInfo {
	order := make([]*TensorInfo, len(ts))
	for i := range ts {
		order[i] = &ts[i]
	}
	sort.SliceStable(order, func(i, j int) bool { return order[i].Offset < order[j].Offset })
	return order
}

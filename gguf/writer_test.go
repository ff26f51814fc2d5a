package gguf_test

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"github.com/ggufprune/ggufprune/gguf"
)

// A source that ends early (the input truncated while it is copied) fails
// at the first tensor it cuts, naming the file, the byte and the tensor,
// with one buffer of memory: it was ignored, and every later tensor copied
// through a fresh 1 MiB buffer (297 s and 5.8 GB on a large model). Written
// to a writer that is not a file, the bytes go through the write buffer, as
// they do when the kernel cannot copy (surgery's tests take the kernel's
// way).
func TestWriteShortSourceFailsAtOnce(t *testing.T) {
	const n, size = 64, 64 << 10
	in := filepath.Join(t.TempDir(), "in.gguf")
	var ts []gguf.WriterTensor
	for i := range n {
		ts = append(ts, tinyTensor(fmt.Sprintf("t%02d", i), gguf.TypeF32, size/4))
	}
	b := encode(t, 3, nil, ts)
	if err := os.WriteFile(in, b, 0o644); err != nil {
		t.Fatal(err)
	}
	f, err := gguf.Open(in)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	// Cut the file in the middle of tensor 10.
	cut := f.DataOffset + int64(f.TensorAt(10).Offset) + size/2
	if err := os.Truncate(in, cut); err != nil {
		t.Fatal(err)
	}
	for i := range ts {
		ts[i] = gguf.WriterTensor{Info: f.TensorAt(i), Data: f.TensorData(f.TensorAt(i))}
	}

	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	_, err = gguf.Write(io.Discard, 3, nil, ts)
	runtime.ReadMemStats(&after)
	want := fmt.Sprintf("%s ended at byte %d while copying tensor t10 (bytes %d to %d): was it truncated", in, cut, cut-size/2, cut+size/2)
	if err == nil || !strings.Contains(err.Error(), want) || !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Fatalf("got %v, want %q", err, want)
	}
	if alloc := after.TotalAlloc - before.TotalAlloc; alloc > 2<<20 {
		t.Fatalf("%d bytes allocated: more than the write buffer", alloc)
	}
}

// Copied through the buffer too, a source that reads short by its nature
// (not an *os.File: a reader whose data ends) fails the same way.
func TestWriteShortReaderAt(t *testing.T) {
	ts := []gguf.WriterTensor{
		tinyTensor("a", gguf.TypeF32, 8),
		{Info: gguf.TensorInfo{Name: "b", Dims: []uint64{8}, Type: gguf.TypeF32, Size: 32}, Data: io.NewSectionReader(bytes.NewReader(make([]byte, 20)), 0, 32)},
	}
	_, err := gguf.Write(io.Discard, 3, nil, ts)
	if err == nil || !strings.Contains(err.Error(), "the tensor data source ended after 20 of the 32 bytes of tensor b: was it truncated") || !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Fatalf("got %v", err)
	}
}

// A file without tensors has no data section, so no padding to reach one:
// a header-only file of general.alignment 2^30 is written as its header
// (it was 1 GiB of zeros; the fuzzer stalled on it), and reads back.
func TestNoTensorsNoPadding(t *testing.T) {
	kvs := []gguf.KV{{Key: "general.alignment", Value: gguf.Uint32(1 << 30)}, {Key: "general.name", Value: gguf.String("x")}}
	b := encode(t, 3, kvs, nil)
	if len(b) > 1024 {
		t.Fatalf("%d bytes for a header-only file", len(b))
	}
	f, err := parse(t, b)
	if err != nil || f.NumTensors() != 0 || len(f.KV) != 2 {
		t.Fatalf("%v", err)
	}
	if again := encode(t, f.Version, f.KV, nil); !bytes.Equal(again, b) {
		t.Fatal("does not write back the same")
	}
}

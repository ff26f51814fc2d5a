package gguf_test

import (
	"bytes"
	"encoding/binary"
	"errors"
	"math"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"github.com/ggufprune/ggufprune/gguf"
	"github.com/ggufprune/ggufprune/internal/atomicfile"
	"github.com/ggufprune/ggufprune/internal/fixture"
)

// Reading a file and writing it back unchanged gives the same bytes, through
// memory and through a file (copy_file_range).
func TestRoundTripSharedModels(t *testing.T) {
	for _, name := range fixture.Models {
		t.Run(name, func(t *testing.T) {
			path := fixture.Asset(t, "models/"+name)
			orig, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			f, err := gguf.Open(path)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			var ts []gguf.WriterTensor
			for _, ti := range f.AllTensors() {
				ts = append(ts, gguf.WriterTensor{Info: ti, Data: f.TensorData(ti)})
			}
			if got := encode(t, f.Version, f.KV, ts); !bytes.Equal(got, orig) {
				t.Fatalf("round trip through memory differs (%d vs %d bytes)", len(got), len(orig))
			}
			out := filepath.Join(t.TempDir(), "copy.gguf")
			err = atomicfile.Write(out, func(w *os.File) error {
				_, err := gguf.Write(w, f.Version, f.KV, ts)
				return err
			})
			if err != nil {
				t.Fatal(err)
			}
			got, _ := os.ReadFile(out)
			if !bytes.Equal(got, orig) {
				t.Fatalf("round trip through a file differs")
			}
			if err := f.Close(); err != nil || f.Close() != nil {
				t.Fatal("Close twice failed")
			}
		})
	}
}

// Every metadata value type, nested arrays included, survives a round trip.
func TestAllValueTypes(t *testing.T) {
	strs, _ := gguf.NewArray(gguf.TypeString, []gguf.Value{gguf.String("a"), gguf.String(""), gguf.String("ünï")})
	inner1, _ := gguf.NewArray(gguf.TypeInt16, []gguf.Value{gguf.Int16(-2), gguf.Int16(7)})
	inner2, _ := gguf.NewArray(gguf.TypeInt16, []gguf.Value{gguf.Int16(300)})
	nested, _ := gguf.NewArray(gguf.TypeArray, []gguf.Value{inner1, inner2})
	floats, _ := gguf.NewArray(gguf.TypeFloat64, []gguf.Value{gguf.Float64(math.Pi), gguf.Float64(-1)})
	kvs := []gguf.KV{
		{Key: "u8", Value: gguf.Uint8(250)}, {Key: "i8", Value: gguf.Int8(-5)},
		{Key: "u16", Value: gguf.Uint16(65000)}, {Key: "i16", Value: gguf.Int16(-30000)},
		{Key: "u32", Value: gguf.Uint32(4e9)}, {Key: "i32", Value: gguf.Int32(-2e9)},
		{Key: "f32", Value: gguf.Float32(1.5)}, {Key: "bool", Value: gguf.Bool(true)},
		{Key: "str", Value: gguf.String("héllo")}, {Key: "strs", Value: strs},
		{Key: "u64", Value: gguf.Uint64(1 << 63)}, {Key: "i64", Value: gguf.Int64(-1 << 62)},
		{Key: "f64", Value: gguf.Float64(-2.25)}, {Key: "nested", Value: nested}, {Key: "f64s", Value: floats},
	}
	for _, version := range []uint32{2, 3} {
		b := encode(t, version, kvs, nil)
		f, err := parse(t, b)
		if err != nil {
			t.Fatal(err)
		}
		if f.Version != version || len(f.KV) != len(kvs) {
			t.Fatalf("version %d, %d keys", f.Version, len(f.KV))
		}
		for i, kv := range f.KV {
			if kv.Key != kvs[i].Key || kv.Value.Type() != kvs[i].Value.Type() || kv.Value.String() != kvs[i].Value.String() {
				t.Errorf("key %d: got %s %v %v, want %s %v %v", i, kv.Key, kv.Value.Type(), kv.Value, kvs[i].Key, kvs[i].Value.Type(), kvs[i].Value)
			}
		}
		if !bytes.Equal(encode(t, version, f.KV, nil), b) {
			t.Fatal("second round trip differs")
		}
	}
	f, _ := parse(t, encode(t, 3, kvs, nil))
	v, _ := f.Get("nested")
	a, _ := v.Array()
	sub, _ := a.Index(0).Array()
	if n, _ := sub.Index(0).Int(); a.Len() != 2 || sub.Len() != 2 || n != -2 {
		t.Fatalf("nested array read back as %v", v)
	}
	if u, _ := f.Get("u64"); u.String() != "9223372036854775808" {
		t.Fatalf("u64 = %v", u)
	}
	if x, _ := f.Get("f32"); func() float64 { v, _ := x.Float(); return v }() != 1.5 {
		t.Fatalf("f32 = %v", x)
	}
}

// The ggml type table gives the sizes ggml computes (checked against ggml
// itself in the llamacpp tests); here, the shapes it refuses.
func TestTensorShapes(t *testing.T) {
	kvs := []gguf.KV{{Key: "general.architecture", Value: gguf.String("llama")}}
	good := tinyTensor("a", gguf.TypeQ4_K, 256, 2)
	b := encode(t, 3, kvs, []gguf.WriterTensor{good})
	f, err := parse(t, b)
	if err != nil {
		t.Fatal(err)
	}
	if f.TensorAt(0).Size != 2*144 {
		t.Fatalf("Q4_K 256x2 is %d bytes", f.TensorAt(0).Size)
	}
	if len(gguf.TensorTypes()) != 32 {
		t.Fatalf("%d tensor types known", len(gguf.TensorTypes()))
	}
}

func tinyTensor(name string, typ gguf.TensorType, dims ...uint64) gguf.WriterTensor {
	n := dims[0] / typ.BlockSize() * typ.BlockBytes()
	for _, d := range dims[1:] {
		n *= d
	}
	data := make([]byte, n)
	return gguf.WriterTensor{Info: gguf.TensorInfo{Name: name, Dims: dims, Type: typ, Size: n}, Data: newSection(data)}
}

// base is a small valid file used to derive corrupt ones.
func base(t testing.TB) []byte {
	kvs := []gguf.KV{
		{Key: "general.architecture", Value: gguf.String("llama")},
		{Key: "llama.block_count", Value: gguf.Uint32(1)},
	}
	return encode(t, 3, kvs, []gguf.WriterTensor{tinyTensor("blk.0.w", gguf.TypeF32, 8, 2), tinyTensor("x", gguf.TypeF16, 16)})
}

// Offsets in base: header 24, key 1 at 24.
const (
	offVersion  = 4
	offNTensors = 8
	offNKV      = 16
	offFirstKey = 24
)

func put32(b []byte, off int, v uint32) []byte {
	c := bytes.Clone(b)
	binary.LittleEndian.PutUint32(c[off:], v)
	return c
}

func put64(b []byte, off int, v uint64) []byte {
	c := bytes.Clone(b)
	binary.LittleEndian.PutUint64(c[off:], v)
	return c
}

// tensorInfoOffset finds the tensor info of a name in an encoded file.
func tensorInfoOffset(b []byte, name string) int {
	return bytes.Index(b, append(binary.LittleEndian.AppendUint64(nil, uint64(len(name))), name...))
}

func TestMalformed(t *testing.T) {
	b := base(t)
	ti := tensorInfoOffset(b, "x")        // x: name len(8) name(1) ndims(4) ne0(8) type(4) offset(8)
	tiW := tensorInfoOffset(b, "blk.0.w") // blk.0.w: name len(8) name(7) ndims(4) ne0 ne1 type offset
	cases := []struct {
		name string
		data []byte
		want string
		is   error
	}{
		{"empty", nil, "too short", gguf.ErrFormat},
		{"bad magic", append([]byte("GGML"), b[4:]...), "bad magic", gguf.ErrFormat},
		{"version 1", put32(b, offVersion, 1), "version 1", gguf.ErrUnsupported},
		{"version 9", put32(b, offVersion, 9), "version 9", gguf.ErrUnsupported},
		{"big-endian", put32(b, offVersion, 0x03000000), "big-endian", gguf.ErrUnsupported},
		{"2^60 tensors", put64(b, offNTensors, 1<<60), "tensor count", gguf.ErrFormat},
		{"2^60 keys", put64(b, offNKV, 1<<60), "metadata count", gguf.ErrFormat},
		{"1 TB key", put64(b, offFirstKey, 1<<40), "metadata key length", gguf.ErrFormat},
		{"bad value type", put32(b, offFirstKey+8+len("general.architecture"), 13), "invalid value type", gguf.ErrFormat},
		{"unknown tensor type", put32(b, ti+8+1+4+8, 4), "unknown or removed tensor type 4", gguf.ErrFormat},
		{"zero dims", put32(b, ti+8+1, 0), "0 dimensions", gguf.ErrFormat},
		{"five dims", put32(b, ti+8+1, 5), "5 dimensions", gguf.ErrFormat},
		{"offset past end", put64(b, ti+8+1+4+8+4, 1<<20), "runs past the end", gguf.ErrFormat},
		{"misaligned offset", put64(b, ti+8+1+4+8+4, 8), "not a multiple of the alignment", gguf.ErrFormat},
		{"overlap", put64(b, ti+8+1+4+8+4, 32), "overlaps", gguf.ErrFormat},
		{"huge shape", put64(b, tiW+8+7+4, 1<<62), "too large", gguf.ErrFormat},
		{"truncated data", b[:len(b)-40], "runs past the end", gguf.ErrFormat},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := parse(t, c.data)
			if err == nil {
				t.Fatal("accepted")
			}
			if !errors.Is(err, c.is) || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("error %q, want %q (%v)", err, c.want, c.is)
			}
		})
	}
}

func TestDuplicates(t *testing.T) {
	kvs := []gguf.KV{{Key: "a", Value: gguf.Uint8(1)}, {Key: "b", Value: gguf.Uint8(2)}}
	b := encode(t, 3, kvs, []gguf.WriterTensor{tinyTensor("t1", gguf.TypeF32, 8), tinyTensor("t2", gguf.TypeF32, 8)})
	if _, err := parse(t, bytes.Replace(b, []byte("\x01\x00\x00\x00\x00\x00\x00\x00b"), []byte("\x01\x00\x00\x00\x00\x00\x00\x00a"), 1)); err == nil || !strings.Contains(err.Error(), `duplicate metadata key "a"`) {
		t.Fatalf("duplicate key: %v", err)
	}
	if _, err := parse(t, bytes.Replace(b, []byte("t2"), []byte("t1"), 1)); err == nil || !strings.Contains(err.Error(), `duplicate tensor name "t1"`) {
		t.Fatalf("duplicate tensor: %v", err)
	}
	if _, err := gguf.Write(new(bytes.Buffer), 3, append(kvs, kvs[0]), nil); err == nil {
		t.Fatal("writer accepted a duplicate key")
	}
}

// Every prefix of a valid file is refused with an error, never a panic.
func TestTruncatedEverywhere(t *testing.T) {
	b := base(t)
	for n := 0; n < len(b); n++ {
		if _, err := parse(t, b[:n]); err == nil {
			t.Fatalf("prefix of %d of %d bytes accepted", n, len(b))
		}
	}
}

// A header claiming 2^60 tensors or a 1 TB string fails fast with a small allocation.
func TestHostileCountsAllocateLittle(t *testing.T) {
	b := base(t)
	for _, bad := range [][]byte{put64(b, offNTensors, 1<<60), put64(b, offFirstKey, 1<<40), put64(b, offNKV, 1<<59)} {
		var before, after runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&before)
		if _, err := parse(t, bad); err == nil {
			t.Fatal("accepted")
		}
		runtime.ReadMemStats(&after)
		if d := after.TotalAlloc - before.TotalAlloc; d > 1<<20 {
			t.Fatalf("refusing a hostile header allocated %d bytes", d)
		}
	}
}

func TestAlignment(t *testing.T) {
	kvs := []gguf.KV{{Key: "general.alignment", Value: gguf.Uint32(64)}}
	b := encode(t, 3, kvs, []gguf.WriterTensor{tinyTensor("a", gguf.TypeF32, 3), tinyTensor("b", gguf.TypeF32, 5)})
	f, err := parse(t, b)
	if err != nil {
		t.Fatal(err)
	}
	if f.Alignment != 64 || f.DataOffset%64 != 0 || f.TensorAt(1).Offset != 64 || len(b)%64 != 0 {
		t.Fatalf("alignment %d, data at %d, second tensor at %d, size %d", f.Alignment, f.DataOffset, f.TensorAt(1).Offset, len(b))
	}
	bad := []gguf.KV{{Key: "general.alignment", Value: gguf.Uint32(48)}}
	if _, err := gguf.Write(new(bytes.Buffer), 3, bad, nil); err == nil {
		t.Fatal("alignment 48 accepted by the writer")
	}
	c := bytes.Replace(b, binary.LittleEndian.AppendUint32(nil, 64), binary.LittleEndian.AppendUint32(nil, 48), 1)
	if _, err := parse(t, c); err == nil || !strings.Contains(err.Error(), "general.alignment") {
		t.Fatalf("alignment 48: %v", err)
	}
}

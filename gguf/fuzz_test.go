package gguf_test

import (
	"bytes"
	"flag"
	"os"
	"path/filepath"
	"reflect"
	"testing"

	"github.com/ggufprune/ggufprune/gguf"
	"github.com/ggufprune/ggufprune/gguf/surgery"
	"github.com/ggufprune/ggufprune/internal/fixture"
	"github.com/ggufprune/ggufprune/llamacpp/arch"
)

var update = flag.Bool("update", false, "rewrite the seed corpus in testdata/")

// seeds are small valid files of every shape the reader handles.
func seeds(t testing.TB) map[string][]byte {
	inner, _ := gguf.NewArray(gguf.TypeUint8, []gguf.Value{gguf.Uint8(1), gguf.Uint8(2)})
	nested, _ := gguf.NewArray(gguf.TypeArray, []gguf.Value{inner, inner})
	kvs, ts := fixture.Build(fixture.Spec{Arch: "llama", Blocks: 2, Embd: 32, PerLayer: map[string][]int{"feed_forward_length": {1, 2}}})
	q := fixture.Spec{Arch: "llama", Blocks: 1, Embd: 256, Type: gguf.TypeQ4_K}
	qkvs, qts := fixture.Build(q)
	// A model with the metadata the checks before llama.cpp read.
	toks, _ := gguf.NewArray(gguf.TypeString, []gguf.Value{gguf.String("a"), gguf.String("b"), gguf.String(""), gguf.String("d")})
	scores, _ := gguf.NewArray(gguf.TypeFloat32, []gguf.Value{gguf.Float32(0), gguf.Float32(-1), gguf.Float32(-2), gguf.Float32(-3)})
	kvHeads, _ := gguf.NewArray(gguf.TypeUint32, []gguf.Value{gguf.Uint32(2), gguf.Uint32(2)})
	vkvs, vts := fixture.Build(fixture.Spec{Arch: "llama", Blocks: 2, Embd: 32, Extra: []gguf.KV{
		{Key: "llama.attention.head_count", Value: gguf.Uint32(4)}, {Key: "llama.attention.head_count_kv", Value: kvHeads},
		{Key: "llama.expert_count", Value: gguf.Uint32(4)},
		{Key: "llama.expert_used_count", Value: gguf.Uint32(2)}, {Key: "tokenizer.ggml.model", Value: gguf.String("llama")},
		{Key: "tokenizer.ggml.tokens", Value: toks}, {Key: "tokenizer.ggml.scores", Value: scores},
	}})
	return map[string][]byte{
		"tiny-v3.gguf":    encode(t, 3, kvs, ts),
		"tiny-v2.gguf":    encode(t, 2, kvs, ts),
		"tiny-q4k.gguf":   encode(t, 3, qkvs, qts),
		"vocab.gguf":      encode(t, 3, vkvs, vts),
		"nested.gguf":     encode(t, 3, []gguf.KV{{Key: "n", Value: nested}, {Key: "general.alignment", Value: gguf.Uint32(64)}}, nil),
		"no-tensors.gguf": encode(t, 3, []gguf.KV{{Key: "general.architecture", Value: gguf.String("llama")}}, nil),
		"split-0001.gguf": encode(t, 3, append(kvs, gguf.KV{Key: gguf.KeySplitNo, Value: gguf.Uint16(0)}, gguf.KV{Key: gguf.KeySplitCount, Value: gguf.Uint16(2)}), ts[:3]),
	}
}

// The seed corpus in testdata/ is what seeds() makes (go test -run SeedCorpus -update rewrites it).
func TestSeedCorpus(t *testing.T) {
	for name, b := range seeds(t) {
		path := filepath.Join("testdata", name)
		if *update {
			if err := os.WriteFile(path, b, 0o644); err != nil {
				t.Fatal(err)
			}
		}
		got, err := os.ReadFile(path)
		if err != nil || !bytes.Equal(got, b) {
			t.Fatalf("%s is out of date (run go test ./gguf -run SeedCorpus -update): %v", path, err)
		}
		if _, err := parse(t, got); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
	}
}

func FuzzNewFile(f *testing.F) {
	files, _ := filepath.Glob(filepath.Join("testdata", "*.gguf"))
	for _, p := range files {
		b, err := os.ReadFile(p)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
		f.Add(b[:len(b)/2])
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		file, err := gguf.NewFile(bytes.NewReader(b), int64(len(b)))
		if err != nil {
			return
		}
		// Whatever the reader accepts, the writer writes and the reader reads back the same.
		var ts []gguf.WriterTensor
		for _, t := range file.AllTensors() {
			ts = append(ts, gguf.WriterTensor{Info: t, Data: file.TensorData(t)})
		}
		var buf bytes.Buffer
		if _, err := gguf.Write(&buf, file.Version, file.KV, ts); err != nil {
			t.Fatalf("accepted file does not write back: %v", err)
		}
		again, err := gguf.NewFile(bytes.NewReader(buf.Bytes()), int64(buf.Len()))
		if err != nil {
			t.Fatalf("written file does not read back: %v", err)
		}
		if len(again.KV) != len(file.KV) || again.NumTensors() != file.NumTensors() {
			t.Fatal("written file differs")
		}
		for i, a := range again.AllTensors() {
			b := file.TensorAt(i)
			if a.Name != b.Name || a.Type != b.Type || a.Size != b.Size || !reflect.DeepEqual(a.Dims, b.Dims) {
				t.Fatalf("tensor %d differs", i)
			}
		}
		// The checks before llama.cpp, and surgery, on any accepted file
		// refuse cleanly or pass.
		arch.CheckGGML(file)
		if m, err := gguf.NewModel(file); err == nil {
			arch.CheckModel(m, arch.Run)
			arch.CheckBlocks(m)
			arch.MappedAlignmentOK(m)
			if plan, err := surgery.PlanRemoval(m, []int{0}, surgery.Options{}); err == nil {
				plan.Size(surgery.OneFile)
				plan.CheckLlama()
			}
			m.Stats()
		}
	})
}

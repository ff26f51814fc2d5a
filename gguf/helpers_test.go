package gguf_test

import (
	"bytes"
	"path/filepath"
	"testing"

	"github.com/ggufprune/ggufprune/gguf"
	"github.com/ggufprune/ggufprune/internal/fixture"
)

// encode writes a file to memory.
func encode(t testing.TB, version uint32, kvs []gguf.KV, ts []gguf.WriterTensor) []byte {
	t.Helper()
	var buf bytes.Buffer
	if _, err := gguf.Write(&buf, version, kvs, ts); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// synthetic writes a synthetic model into a temporary folder and opens it.
func synthetic(t testing.TB, s fixture.Spec) (*gguf.Model, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "in.gguf")
	if err := fixture.Write(path, s); err != nil {
		t.Fatal(err)
	}
	m, err := gguf.OpenModel(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	return m, path
}

func parse(t testing.TB, b []byte) (*gguf.File, error) {
	t.Helper()
	return gguf.NewFile(bytes.NewReader(b), int64(len(b)))
}

// tensorBytes reads a tensor's data whole (test files are small).
func tensorBytes(t testing.TB, m *gguf.Model, mt *gguf.ModelTensor) []byte {
	t.Helper()
	d := m.TensorData(mt)
	b := make([]byte, d.Size())
	if _, err := d.ReadAt(b, 0); err != nil {
		t.Fatal(err)
	}
	return b
}

package gguf_test

import (
	"bytes"
	"testing"

	"github.com/ggufprune/ggufprune/gguf"
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

func parse(t testing.TB, b []byte) (*gguf.File, error) {
	t.Helper()
	return gguf.NewFile(bytes.NewReader(b), int64(len(b)))
}

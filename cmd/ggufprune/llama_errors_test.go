package main

import (
	"path/filepath"
	"testing"

	"github.com/ggufprune/ggufprune/gguf"
	"github.com/ggufprune/ggufprune/internal/fixture"
)

// When llama.cpp refuses a file, the error says why, as llama.cpp logged it,
// without -v: here a tensor the loader requires is missing.
func TestLoadFailureSaysWhy(t *testing.T) {
	path := filepath.Join(t.TempDir(), "missing.gguf")
	if err := fixture.Rewrite(model(t, "stories260K.gguf"), path, func(kvs []gguf.KV, ts []gguf.WriterTensor) ([]gguf.KV, []gguf.WriterTensor) {
		var out []gguf.WriterTensor
		for _, w := range ts {
			if w.Info.Name != "blk.1.attn_k.weight" {
				out = append(out, w)
			}
		}
		return kvs, out
	}); err != nil {
		t.Fatal(err)
	}
	text := fixture.Asset(t, "text/tinystories/tinystories_val_first100.txt")
	runCLI(t, "eval", "-m", path, "-f", text, "-c", "128", "--chunks", "2").fails(t, 1, "missing tensor 'blk.1.attn_k.weight'")
}

package eval

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// synthLogits writes a logits file of nChunk chunks of nCtx tokens over a
// vocabulary of nVocab, from made-up logits, and returns its bytes.
func synthLogits(t *testing.T, nCtx, nVocab, nChunk int) []byte {
	t.Helper()
	tokens := make([]int32, nCtx*nChunk)
	for i := range tokens {
		tokens[i] = int32(i % nVocab)
	}
	var b bytes.Buffer
	lw, err := newLogitsWriter(&b, nCtx, nVocab, tokens)
	if err != nil {
		t.Fatal(err)
	}
	logits := make([]float32, nVocab)
	for c := 0; c < nChunk*(nCtx-1-nCtx/2); c++ {
		for i := range logits {
			logits[i] = float32((i*7+c)%11) - 5
		}
		if err := lw.record(logits); err != nil {
			t.Fatal(err)
		}
	}
	if err := lw.flush(); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

// readAll reads every chunk of a logits file.
func readAll(path string) error {
	lr, err := openLogits(path)
	if err != nil {
		return err
	}
	defer lr.Close()
	dst := make([][]float32, lr.scored())
	for k := range dst {
		dst[k] = make([]float32, lr.nVocab)
	}
	for c := 0; c < lr.nChunk; c++ {
		if err := lr.chunk(dst); err != nil {
			return err
		}
		for _, row := range dst {
			for _, v := range row {
				if math.IsNaN(float64(v)) || math.IsInf(float64(v), 0) || v > 1e-3 {
					return os.ErrInvalid
				}
			}
		}
	}
	return nil
}

func TestLogitsFileRefusals(t *testing.T) {
	dir := t.TempDir()
	write := func(name string, b []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	const nCtx, nVocab, nChunk = 8, 5, 3
	good := synthLogits(t, nCtx, nVocab, nChunk)
	if err := readAll(write("good", good)); err != nil {
		t.Fatalf("a good file: %v", err)
	}
	// A FIFO is refused without opening it: opening would block, and this
	// test with it.
	fifo := filepath.Join(dir, "fifo")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := openLogits(fifo); err == nil || !strings.Contains(err.Error(), fifo+": not a regular file (a FIFO)") {
		t.Errorf("FIFO: %v", err)
	}
	// A context of 2 (or 1) has no scored positions: 2^29 chunks of only
	// tokens would otherwise pass the size check.
	for _, ctx := range []int32{1, 2} {
		chunks := int32(1 << 29 / ctx)
		b := []byte(logitsMagic)
		for _, v := range []int32{ctx, nVocab, chunks} {
			b = binary.LittleEndian.AppendUint32(b, uint32(v))
		}
		p := write("ctx2", append(b, make([]byte, 4*int(ctx)*3)...))
		if _, err := openLogits(p); err == nil || !strings.Contains(err.Error(), p+": not a llama-perplexity logits file: a context of "+fmt.Sprint(ctx)+" tokens has no scored positions") {
			t.Errorf("context %d: %v", ctx, err)
		}
	}
	// Records llama-perplexity cannot write are refused by chunk and position.
	rec := 2 * recordLen(nVocab)
	first := 20 + 4*nCtx*nChunk
	perChunk := (nCtx - 1 - nCtx/2) * rec
	nan, inf := math.Float32bits(float32(math.NaN())), math.Float32bits(float32(math.Inf(1)))
	for _, c := range []struct {
		name        string
		at          int // byte offset of the value changed
		bits        uint32
		chunk, want string
	}{
		{"nan-scale", first, nan, "chunk 1 of 3, position 4", "scale NaN"},
		{"inf-scale", first + perChunk + rec, inf, "chunk 2 of 3, position 5", "scale +Inf"},
		{"neg-scale", first + 2*perChunk, math.Float32bits(-1e-4), "chunk 3 of 3, position 4", "scale -0.0001"},
		{"huge-scale", first, math.Float32bits(1e35), "chunk 1 of 3, position 4", "scale 1e+35"},
		{"nan-min", first + 4, nan, "chunk 1 of 3, position 4", "minimum log-probability NaN"},
		{"inf-min", first + 4, math.Float32bits(float32(math.Inf(-1))), "chunk 1 of 3, position 4", "minimum log-probability -Inf"},
		{"positive-min", first + 4, math.Float32bits(0.5), "chunk 1 of 3, position 4", "minimum log-probability 0.5"},
	} {
		b := bytes.Clone(good)
		binary.LittleEndian.PutUint32(b[c.at:], c.bits)
		p := write(c.name, b)
		err := readAll(p)
		if err == nil || !strings.HasPrefix(err.Error(), p+": "+c.chunk+": ") || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v", c.name, err)
		}
	}
}

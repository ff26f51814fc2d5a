package main

import (
	"bytes"
	"encoding/binary"
	"math"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ggufprune/ggufprune/gguf/imatrix"
	"github.com/ggufprune/ggufprune/internal/fixture"
)

// Input files other than models and texts (score reports, logits files,
// importance matrices) are checked as regular files before they are opened,
// bounded in size, checked against the counts they declare before anything
// is allocated for them, and named in every error: exit status 1, little
// memory, no output written.
func TestInputFilesRefused(t *testing.T) {
	const limit = time.Minute // a refusal takes well under a second
	const bound = 128 << 20   // peak memory of a refusal
	dir := t.TempDir()
	src := model(t, "stories260K.gguf")
	text := fixture.Asset(t, "text/tinystories/tinystories_val_first100.txt")
	out := filepath.Join(dir, "out.gguf")

	// Good inputs of each kind, made by the command itself, which it reads back.
	scores, imFile, logits := filepath.Join(dir, "scores.json"), filepath.Join(dir, "full.imatrix"), filepath.Join(dir, "base.logits")
	runCLI(t, "score", "-m", src, "-f", text, "-c", "64", "--chunks", "2", "-o", scores, "--imatrix-out", imFile).ok(t)
	runCLI(t, "eval", "--base", src, "-m", src, "-f", text, "-c", "64", "--chunks", "2", "--kl-divergence-base", logits).ok(t)
	runCLI(t, "eval", "--kl-divergence-base", logits, "-m", src, "--json").ok(t)
	runCLI(t, "prune", "-m", src, "--scores", scores, "--remove", "1", "--dry-run").ok(t)
	im, err := imatrix.Read(imFile)
	if err != nil {
		t.Fatal(err)
	}

	bad := t.TempDir() // the bad inputs, apart from the outputs' folder
	write := func(name string, b []byte) string {
		p := filepath.Join(bad, name)
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	fifo := filepath.Join(bad, "input.fifo")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	fifoDat := filepath.Join(bad, "imatrix.dat") // a FIFO named as a legacy imatrix
	if err := syscall.Mkfifo(fifoDat, 0o600); err != nil {
		t.Fatal(err)
	}

	// A score report past the bound: a sparse file, refused by its size
	// before a byte of it is read.
	huge := filepath.Join(bad, "huge.json")
	if err := os.WriteFile(huge, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(huge, 16<<20+1); err != nil {
		t.Fatal(err)
	}

	// A logits file whose header says a 2-token context: no scored
	// positions, so 2^28 chunks of two tokens each passed the size check.
	hdr := []byte("_logits_")
	for _, v := range []uint32{2, 512, 1 << 28} {
		hdr = binary.LittleEndian.AppendUint32(hdr, v)
	}
	ctx2 := write("ctx2.logits", append(hdr, make([]byte, 4096)...))

	// Logits files with a record llama-perplexity cannot write: a NaN
	// scale in the first record, an infinite one in the second chunk.
	raw, err := os.ReadFile(logits)
	if err != nil {
		t.Fatal(err)
	}
	records := 20 + 4*64*2                        // past the header and the tokens of 2 chunks of 64
	perChunk := (64 - 1 - 32) * (2*512/2 + 4) * 2 // 31 records of 516 uint16
	nanLogits := bytes.Clone(raw)
	binary.LittleEndian.PutUint32(nanLogits[records:], math.Float32bits(float32(math.NaN())))
	nanFile := write("nan.logits", nanLogits)
	infLogits := bytes.Clone(raw)
	binary.LittleEndian.PutUint32(infLogits[records+perChunk+2*(2*512/2+4)*2:], math.Float32bits(float32(math.Inf(1))))
	infFile := write("inf.logits", infLogits)

	// A legacy .dat imatrix cut in the middle of an entry's values, and
	// imatrices (both formats) with a NaN value.
	dat := filepath.Join(dir, "full.dat")
	legacy := *im
	legacy.Legacy = true
	if err := legacy.Write(dat); err != nil {
		t.Fatal(err)
	}
	datRaw, err := os.ReadFile(dat)
	if err != nil {
		t.Fatal(err)
	}
	os.Remove(dat)
	e0 := im.Entries[0]
	cutAt := 4 + 4 + len(e0.Name) + 8 + 4*len(e0.Sums) + 4 + len(im.Entries[1].Name) + 8 + 100
	cut := write("cut.dat", datRaw[:cutAt])
	nanIm := *im
	nanIm.Entries = append([]imatrix.Entry(nil), im.Entries...)
	sums := append([]float32(nil), nanIm.Entries[1].Sums...)
	sums[5] = float32(math.NaN())
	nanIm.Entries[1].Sums = sums
	nanGGUF, nanDat := filepath.Join(bad, "nan.imatrix"), filepath.Join(bad, "nan.dat")
	if err := nanIm.Write(nanGGUF); err != nil {
		t.Fatal(err)
	}
	nanIm.Legacy = true
	if err := nanIm.Write(nanDat); err != nil {
		t.Fatal(err)
	}
	e1 := im.Entries[1].Name

	before := fixture.DirNames(t, dir)
	for _, c := range []struct {
		args []string
		want []string // in stderr
	}{
		{[]string{"eval", "--kl-divergence-base", fifo, "-m", src}, []string{fifo + ": not a regular file (a FIFO)"}},
		{[]string{"prune", "-m", src, "--scores", fifo, "--remove", "1", "-o", out}, []string{fifo + ": not a regular file (a FIFO)"}},
		{[]string{"prune", "-m", src, "--scores", "/dev/zero", "--remove", "1", "-o", out}, []string{"/dev/zero: not a regular file (a character device)"}},
		{[]string{"prune", "-m", src, "--layers", "1", "--quantize", "Q8_0", "--imatrix", fifo, "-o", out}, []string{fifo + ": not a regular file (a FIFO)"}},
		{[]string{"quantize", "--imatrix", fifo, src, out, "Q8_0"}, []string{fifo + ": not a regular file (a FIFO)"}},
		{[]string{"inspect", fifoDat}, []string{fifoDat + ": not a regular file (a FIFO)"}},
		{[]string{"prune", "-m", src, "--scores", huge, "--remove", "1", "-o", out}, []string{huge + ": too large: 16777217 bytes, more than the 16 MiB such a file may hold (a score report of 512 blocks at most)"}},
		{[]string{"eval", "--kl-divergence-base", ctx2, "-m", src}, []string{ctx2 + ": not a llama-perplexity logits file: a context of 2 tokens has no scored positions"}},
		{[]string{"eval", "--kl-divergence-base", nanFile, "-m", src, "--json"}, []string{nanFile + ": chunk 1 of 2, position 32: a record with scale NaN"}},
		{[]string{"eval", "--kl-divergence-base", infFile, "-m", src}, []string{infFile + ": chunk 2 of 2, position 34: a record with scale +Inf"}},
		{[]string{"quantize", "--imatrix", cut, src, out, "Q8_0"}, []string{cut + ": legacy .dat imatrix of ", `entry 1 (name "` + e1 + `") needs `, " bytes for its ", " values, 100 left: the file is truncated"}},
		{[]string{"prune", "-m", src, "--layers", "1", "--quantize", "Q8_0", "--imatrix", cut, "-o", out}, []string{cut + ": legacy .dat imatrix of ", "the file is truncated"}},
		{[]string{"quantize", "--imatrix", nanGGUF, src, out, "Q8_0"}, []string{nanGGUF + `: entry "` + e1 + `": value 5 of `, " is NaN; an importance matrix holds sums of squares"}},
		{[]string{"prune", "-m", src, "--layers", "1", "--quantize", "Q8_0", "--imatrix", nanDat, "-o", out}, []string{nanDat + `: entry "` + e1 + `": value 5 of `, " is NaN"}},
	} {
		r, rss := runCLIWithin(t, limit, c.args...)
		name := strings.Join(c.args, " ")
		if r.code != 1 || rss > bound || r.stdout != "" {
			t.Errorf("%s: exit %d (want 1), %d MiB, stdout %q, stderr %q", name, r.code, rss>>20, r.stdout, r.stderr)
			continue
		}
		for _, w := range c.want {
			if !strings.Contains(r.stderr, w) {
				t.Errorf("%s: stderr %q lacks %q", name, r.stderr, w)
			}
		}
	}
	if after := fixture.DirNames(t, dir); strings.Join(after, ",") != strings.Join(before, ",") {
		t.Fatalf("written: %v, before: %v", after, before)
	}
}

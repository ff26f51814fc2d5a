package runner

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"unicode/utf8"

	"github.com/ggufprune/ggufprune/llamacpp"
)

// MaxTextBytes is the most of a text file read whole. With a chunk count,
// only the beginning the chunks need is read, whatever the file's size.
const MaxTextBytes = 256 << 20

// ErrTextTooLarge is wrapped by the error of a text file larger than
// MaxTextBytes read whole: give a chunk count.
var ErrTextTooLarge = errors.New("the text file is larger than can be read whole")

// Text is a text to run a model on: a file, read only as far as the chunks
// asked for need, or a string.
type Text struct {
	Name string // the file, or the name given to a string
	path string
	data []byte // a string's bytes
	size int64
}

// TextFile opens a text file for a model. It refuses what cannot be text
// before any work: something other than a regular file (a FIFO, a device:
// checked without opening it, which could block), an empty file, or bytes
// that are not UTF-8 at its start (the rest is checked as it is read).
func TextFile(path string) (*Text, error) {
	st, err := os.Stat(path)
	if err != nil {
		return nil, err
	}
	if !st.Mode().IsRegular() {
		return nil, fmt.Errorf("%s: not a regular file (%v)", path, st.Mode().Type())
	}
	if st.Size() == 0 {
		return nil, fmt.Errorf("%s: the text file is empty", path)
	}
	t := &Text{Name: path, path: path, size: st.Size()}
	head, _, err := t.read(1 << 20)
	if err != nil {
		return nil, err
	}
	if err := checkUTF8(head, 0); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return t, nil
}

// read returns the first n bytes of the text (fewer at its end) and whether
// that is all of it.
func (t *Text) read(n int64) ([]byte, bool, error) {
	n = min(n, t.size)
	if t.data != nil {
		return t.data[:n], n == t.size, nil
	}
	f, err := os.Open(t.path)
	if err != nil {
		return nil, false, err
	}
	defer f.Close()
	b := make([]byte, n)
	got, err := io.ReadFull(f, b)
	if err != nil && err != io.ErrUnexpectedEOF {
		return nil, false, fmt.Errorf("%s: %w", t.Name, err)
	}
	return b[:got], int64(got) == t.size, nil
}

// lookahead is how many tokens past the last one needed are tokenized, so
// that where the read text was cut cannot change a needed token.
const lookahead = 64

// Tokens tokenizes the text with BOS, as llama-perplexity does: all of it
// when need is 0, else at least need tokens when the text has them,
// reading only as much of the file as that takes.
func (t *Text) Tokens(lm *llamacpp.Model, need int) ([]int32, error) {
	if need <= 0 && t.size > MaxTextBytes {
		return nil, fmt.Errorf("%s: %d bytes, more than %d MiB: %w (give a chunk count to read only its beginning)", t.Name, t.size, MaxTextBytes>>20, ErrTextTooLarge)
	}
	n := t.size
	if need > 0 {
		n = int64(need)*8 + 4096
	}
	checked := 0 // bytes already checked for UTF-8
	for {
		b, all, err := t.read(n)
		if err != nil {
			return nil, err
		}
		if !all {
			b = cutAtBoundary(b)
		}
		if err := checkUTF8(b[checked:], checked); err != nil {
			return nil, fmt.Errorf("%s: %w", t.Name, err)
		}
		checked = len(b)
		toks, err := lm.Tokenize(string(b), true)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", t.Name, err)
		}
		if all || len(toks) >= need+lookahead {
			return toks, nil
		}
		if n >= MaxTextBytes {
			return nil, fmt.Errorf("%s: the first %d MiB hold only %d tokens, fewer than the %d needed: %w", t.Name, n>>20, len(toks), need, ErrTextTooLarge)
		}
		n = min(n*4, MaxTextBytes)
	}
}

// cutAtBoundary cuts a piece read from the middle of a text after its last
// line break, else after its last space, else at its last whole UTF-8
// character, so that no word is cut.
func cutAtBoundary(b []byte) []byte {
	if i := bytes.LastIndexByte(b, '\n'); i > 0 {
		return b[:i+1]
	}
	if i := bytes.LastIndexByte(b, ' '); i > 0 {
		return b[:i+1]
	}
	for i := len(b); i > 0 && i > len(b)-utf8.UTFMax; i-- {
		if utf8.RuneStart(b[i-1]) {
			return b[:i-1]
		}
	}
	return b
}

// checkUTF8 reports the first byte that is not UTF-8; base is the offset
// of b in the text. A character cut by the end of b is not an error: b is
// a piece of a text read in pieces, and the next piece completes it.
func checkUTF8(b []byte, base int) error { return utf8Error(b, base, false) }

// CheckUTF8 reports the first byte of b that is not UTF-8, at its offset
// from base, for a file read whole (such as a task file): a character cut
// by the end of b is an error too.
func CheckUTF8(b []byte, base int) error { return utf8Error(b, base, true) }

func utf8Error(b []byte, base int, whole bool) error {
	if utf8.Valid(b) {
		return nil
	}
	off := 0
	for off < len(b) {
		r, n := utf8.DecodeRune(b[off:])
		if r == utf8.RuneError && n <= 1 {
			break
		}
		off += n
	}
	if !whole && len(b)-off < utf8.UTFMax && !utf8.FullRune(b[off:]) {
		return nil // a character cut by the end of what was read
	}
	return fmt.Errorf("not UTF-8 text (invalid byte 0x%02x at offset %d)", b[off], base+off)
}

// Calibration is where scoring tokens come from: a text, or (when Text is
// nil) text the model writes itself, top-40 sampling seeded by Seed.
type Calibration struct {
	Text *Text
	Seed uint64
}

// CalibrationFile opens a calibration text (see TextFile).
func CalibrationFile(path string) (Calibration, error) {
	t, err := TextFile(path)
	return Calibration{Text: t}, err
}

// SelfGenerated reports whether the model writes its own calibration text.
func (c Calibration) SelfGenerated() bool { return c.Text == nil }

// String names the calibration in reports.
func (c Calibration) String() string {
	if c.SelfGenerated() {
		return fmt.Sprintf("self-generated (seed %d)", c.Seed)
	}
	return c.Text.Name
}

// CalibrationChunks tokenizes and cuts the calibration text as
// llama-perplexity does, or lets the model write it. It returns the chunks
// to decode (each starting with BOS) and the text's own tokens of each
// chunk (the next-token targets).
func CalibrationChunks(ctx context.Context, lm *llamacpp.Model, cal Calibration, o Options) (chunks, targets [][]int32, err error) {
	var tokens []int32
	if !cal.SelfGenerated() {
		if tokens, err = cal.Text.Tokens(lm, o.Chunks*o.CtxSize()); err != nil {
			return nil, nil, err
		}
		if chunks, err = lm.Chunks(tokens, o.CtxSize(), o.Chunks); err != nil {
			return nil, nil, fmt.Errorf("%s: %w", cal.Text.Name, err)
		}
	} else if tokens, chunks, err = selfCalibration(ctx, lm, cal, o); err != nil {
		return nil, nil, err
	}
	for i := range chunks {
		targets = append(targets, tokens[i*o.CtxSize():(i+1)*o.CtxSize()])
	}
	return chunks, targets, nil
}

// selfCalibration lets the model write its calibration text.
func selfCalibration(ctx context.Context, lm *llamacpp.Model, cal Calibration, o Options) ([]int32, [][]int32, error) {
	n := o.Chunks
	if n == 0 {
		n = SelfCalibrationChunks
	}
	o.Notifyf("no calibration text given: the model writes %d chunks of %d tokens itself (seed %d)", n, o.CtxSize(), cal.Seed)
	lctx, err := NewContext(lm, Options{Ctx: o.Ctx, Threads: o.Threads}, Plain)
	if err != nil {
		return nil, nil, err
	}
	defer lctx.Close()
	tokens, err := llamacpp.Generate(ctx, lctx, n*o.CtxSize(), llamacpp.SampleParams{Seed: cal.Seed}, o.ProgressFunc("generating", "tokens", 1))
	if err != nil {
		return nil, nil, err
	}
	chunks, err := lm.Chunks(tokens, o.CtxSize(), n)
	return tokens, chunks, err
}

// SelfCalibrationChunks is how many chunks of text a model writes for its
// own calibration when RunOptions.Chunks does not say.
const SelfCalibrationChunks = 8

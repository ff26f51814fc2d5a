package prune

import (
	"bytes"
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

// TextString is a text given as a string; name names it in reports.
func TextString(name, s string) (*Text, error) {
	if s == "" {
		return nil, fmt.Errorf("%s: the text is empty", name)
	}
	if err := checkUTF8([]byte(s), 0); err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	return &Text{Name: name, data: []byte(s), size: int64(len(s))}, nil
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

// tokens tokenizes the text with BOS, as llama-perplexity does: all of it
// when need is 0, else at least need tokens when the text has them,
// reading only as much of the file as that takes.
func (t *Text) tokens(lm *llamacpp.Model, need int) ([]int32, error) {
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
// of b in the text.
func checkUTF8(b []byte, base int) error {
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
	if len(b)-off < utf8.UTFMax && !utf8.FullRune(b[off:]) {
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

package prune

import (
	"fmt"
	"os"
	"unicode/utf8"
)

// ReadText reads a text file for a model, refusing what cannot be text: an
// empty file, or bytes that are not UTF-8 (the error gives the offset).
func ReadText(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", err
	}
	if err := checkText(b); err != nil {
		return "", fmt.Errorf("%s: %w", path, err)
	}
	return string(b), nil
}

func checkText(b []byte) error {
	if len(b) == 0 {
		return fmt.Errorf("the text file is empty")
	}
	if !utf8.Valid(b) {
		off := 0
		for off < len(b) {
			r, n := utf8.DecodeRune(b[off:])
			if r == utf8.RuneError && n <= 1 {
				break
			}
			off += n
		}
		return fmt.Errorf("not UTF-8 text (invalid byte 0x%02x at offset %d)", b[off], off)
	}
	return nil
}

// checkEvalText checks a text given as a string.
func checkEvalText(text, name string) error {
	if err := checkText([]byte(text)); err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	return nil
}

// Calibration is where scoring tokens come from: a text, or (when Text is
// empty) text the model writes itself, top-40 sampling seeded by Seed.
type Calibration struct {
	Name string // the text's file, for reports
	Text string
	Seed uint64
}

// CalibrationFile reads a calibration text (see ReadText).
func CalibrationFile(path string) (Calibration, error) {
	text, err := ReadText(path)
	return Calibration{Name: path, Text: text}, err
}

// SelfGenerated reports whether the model writes its own calibration text.
func (c Calibration) SelfGenerated() bool { return c.Text == "" }

// String names the calibration in reports.
func (c Calibration) String() string {
	if c.SelfGenerated() {
		return fmt.Sprintf("self-generated (seed %d)", c.Seed)
	}
	return c.Name
}

package gguf_test

import (
	"bytes"
	"io"
)

func newSection(b []byte) *io.SectionReader {
	return io.NewSectionReader(bytes.NewReader(b), 0, int64(len(b)))
}

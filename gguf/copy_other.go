//go:build !linux

package gguf

import (
	"errors"
	"os"
)

var errNoKernelCopy = errors.New("gguf: no in-kernel copy on this system")

// copyFileRange has no kernel copy to use outside Linux: the caller streams
// the bytes through a buffer.
func copyFileRange(dst, src *os.File, off, n, at int64) (int64, error) {
	return 0, errNoKernelCopy
}

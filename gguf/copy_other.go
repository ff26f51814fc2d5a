//go:build !linux

package gguf

import "os"

// copyFileRange has no kernel copy to use outside Linux: the caller streams
// the bytes through its buffer.
func copyFileRange(dst, src *os.File, off, n, at int64) (int64, error) {
	return 0, errNoKernelCopy
}

package gguf

import (
	"errors"
	"fmt"
	"io"
	"os"

	"golang.org/x/sys/unix"
)

// copyFileRange copies n bytes at src offset off to dst's current position,
// which is at byte at of dst, in the kernel (copy_file_range), and starts
// writing them back to disk (sync_file_range) so that the final fsync does not
// have to write the whole file at the end. It returns 0 and errNoKernelCopy
// when the kernel cannot copy between these files, so that the caller copies
// itself, and io.ErrUnexpectedEOF when src ends before the n bytes: no copy
// of any kind would find them.
func copyFileRange(dst, src *os.File, off, n, at int64) (int64, error) {
	var done int64
	for done < n {
		c, err := unix.CopyFileRange(int(src.Fd()), &off, int(dst.Fd()), nil, int(min(n-done, 1<<30)), 0)
		if err != nil {
			if done == 0 && (errors.Is(err, unix.EXDEV) || errors.Is(err, unix.ENOSYS) || errors.Is(err, unix.EINVAL) || errors.Is(err, unix.EOPNOTSUPP)) {
				return 0, fmt.Errorf("%w: %w", errNoKernelCopy, err)
			}
			return done, err
		}
		if c == 0 {
			return done, io.ErrUnexpectedEOF
		}
		done += int64(c)
	}
	if done > 0 {
		unix.SyncFileRange(int(dst.Fd()), at, done, unix.SYNC_FILE_RANGE_WRITE)
	}
	return done, nil
}

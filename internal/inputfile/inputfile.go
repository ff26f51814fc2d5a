// Package inputfile is the one way input files other than models and texts
// (score reports, logits files, importance matrices) are opened: checked as a
// regular file before they are opened, bounded in size by what they may
// legitimately hold, and named in every error about them.
package inputfile

import (
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"syscall"
)

// NoLimit is the maxBytes of a file whose reader bounds itself: it checks
// every count the file declares against the file's size before allocating.
const NoLimit = -1

// ErrNotRegular is wrapped by the error of a path that is not a regular file
// (a FIFO, a device, a socket, a folder).
var ErrNotRegular = errors.New("not a regular file")

// ErrTooLarge is wrapped by the error of a file larger than its kind of file
// may be.
var ErrTooLarge = errors.New("too large")

// Open opens a file for reading after checking, without opening it, that it
// is a regular file: opening a FIFO blocks until a writer comes, and a device
// such as /dev/zero never ends. A file of more than maxBytes is refused
// (NoLimit: any size). The returned FileInfo is that of the opened file.
func Open(path string, maxBytes int64) (*os.File, os.FileInfo, error) {
	st, err := os.Stat(path)
	if err != nil {
		return nil, nil, err
	}
	if err := check(path, st, maxBytes); err != nil {
		return nil, nil, err
	}
	// O_NONBLOCK: should a FIFO replace the file between the check and the
	// open, the open returns at once instead of waiting for a writer, and the
	// check of the opened file refuses it. Reads of a regular file ignore it.
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		return nil, nil, err
	}
	if st, err = f.Stat(); err == nil {
		err = check(path, st, maxBytes)
	}
	if err != nil {
		f.Close()
		return nil, nil, err
	}
	return f, st, nil
}

func check(path string, st os.FileInfo, maxBytes int64) error {
	if !st.Mode().IsRegular() {
		return fmt.Errorf("%s: %w (%v)", path, ErrNotRegular, kind(st.Mode()))
	}
	if maxBytes >= 0 && st.Size() > maxBytes {
		return fmt.Errorf("%s: %w: %d bytes, more than the %s such a file may hold", path, ErrTooLarge, st.Size(), human(maxBytes))
	}
	return nil
}

// kind names a file mode's type as people know it.
func kind(m os.FileMode) string {
	switch {
	case m&os.ModeNamedPipe != 0:
		return "a FIFO"
	case m&os.ModeCharDevice != 0:
		return "a character device"
	case m&os.ModeDevice != 0:
		return "a block device"
	case m&os.ModeSocket != 0:
		return "a socket"
	case m.IsDir():
		return "a folder"
	}
	return m.Type().String()
}

// human writes a limit in the largest binary unit that divides it.
func human(n int64) string {
	for _, u := range []struct {
		shift uint
		name  string
	}{{30, "GiB"}, {20, "MiB"}, {10, "KiB"}} {
		if n >= 1<<u.shift && n%(1<<u.shift) == 0 {
			return fmt.Sprintf("%d %s", n>>u.shift, u.name)
		}
	}
	return fmt.Sprintf("%d bytes", n)
}

// ReadAll reads a whole file of at most maxBytes (NoLimit: any size), checked
// as Open checks it. It reads at most maxBytes+1 bytes, so that a file that
// grows after the check is still refused rather than read without bound.
func ReadAll(path string, maxBytes int64) ([]byte, error) {
	f, _, err := Open(path, maxBytes)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var r io.Reader = f
	if maxBytes >= 0 && maxBytes < math.MaxInt64 {
		r = io.LimitReader(f, maxBytes+1)
	}
	b, err := io.ReadAll(r)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if maxBytes >= 0 && int64(len(b)) > maxBytes {
		return nil, fmt.Errorf("%s: %w: it grew past the %s such a file may hold while it was read", path, ErrTooLarge, human(maxBytes))
	}
	return b, nil
}

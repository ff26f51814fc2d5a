package atomicfile

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
)

// ErrOutputExists is wrapped by the error of an output file that exists
// when replacing it was not asked for.
var ErrOutputExists = errors.New("the output file exists")

// CheckOutput checks, before any work, that a file can be written at path:
// a name of a file (not "-", not a folder), in a folder that exists and
// takes new files, not an existing file unless overwrite, and never anything
// but a regular file.
func CheckOutput(path string, overwrite bool) error {
	switch {
	case path == "":
		return errors.New("no output file given")
	case path == "-":
		return errors.New(`output "-": outputs are files; standard output is not one`)
	case os.IsPathSeparator(path[len(path)-1]):
		return fmt.Errorf("output %s: names a folder, not a file", path)
	}
	dir := filepath.Dir(path)
	if st, err := os.Stat(dir); err != nil {
		return fmt.Errorf("output %s: its folder: %w", path, err)
	} else if !st.IsDir() {
		return fmt.Errorf("output %s: %s is not a folder", path, dir)
	}
	st, err := os.Lstat(path)
	switch {
	case errors.Is(err, os.ErrNotExist):
		return canCreate(path)
	case err != nil:
		return fmt.Errorf("output %s: %w", path, err)
	case st.IsDir():
		return fmt.Errorf("output %s: is a folder", path)
	case st.Mode()&os.ModeSymlink != 0:
		if target, err := os.Stat(path); err == nil && !target.Mode().IsRegular() {
			return fmt.Errorf("output %s: exists and is not a regular file (%v)", path, target.Mode().Type())
		}
	case !st.Mode().IsRegular():
		return fmt.Errorf("output %s: exists and is not a regular file (%v)", path, st.Mode().Type())
	}
	if !overwrite {
		return fmt.Errorf("output %s: %w", path, ErrOutputExists)
	}
	return canCreate(path)
}

// canCreate checks that the folder of path takes the temporary file a write
// makes there, by making one and removing it. Permissions alone do not tell:
// a read-only file system, a folder that vanished (a working folder removed
// still reads as a folder), no inodes left, or an access control list all
// refuse it, and without this check they are found only once the work is
// done. The file is registered as any temporary file is, so that an
// interrupt meanwhile removes it.
func canCreate(path string) error {
	p, err := createNext(path, "output "+path)
	if err != nil {
		return err
	}
	p.Abort()
	return nil
}

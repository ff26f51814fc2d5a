//go:build !(linux || darwin || freebsd || netbsd || openbsd)

package atomicfile

// FreeSpace cannot be told on this system.
func FreeSpace(dir string) (bytes int64, ok bool) { return 0, false }

package inputfile

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// What is not a regular file is refused by its stat, without opening it (a
// FIFO without a writer would block the open forever), naming it and its kind.
func TestRefusesNonRegular(t *testing.T) {
	dir := t.TempDir()
	fifo := filepath.Join(dir, "fifo")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct{ path, kind string }{
		{fifo, "a FIFO"},
		{dir, "a folder"},
		{"/dev/zero", "a character device"},
	} {
		if _, _, err := Open(c.path, 1<<20); !errors.Is(err, ErrNotRegular) || !strings.HasPrefix(err.Error(), c.path+": ") || !strings.Contains(err.Error(), c.kind) {
			t.Errorf("Open(%s): %v", c.path, err)
		}
		if _, err := ReadAll(c.path, NoLimit); !errors.Is(err, ErrNotRegular) || !strings.Contains(err.Error(), c.path) {
			t.Errorf("ReadAll(%s): %v", c.path, err)
		}
	}
	// A link to a FIFO is a FIFO.
	link := filepath.Join(dir, "link")
	if err := os.Symlink(fifo, link); err != nil {
		t.Fatal(err)
	}
	if _, err := ReadAll(link, 10); !errors.Is(err, ErrNotRegular) {
		t.Errorf("ReadAll(link to a FIFO): %v", err)
	}
	if _, err := ReadAll(filepath.Join(dir, "missing"), 10); !errors.Is(err, os.ErrNotExist) || !strings.Contains(err.Error(), "missing") {
		t.Errorf("missing file: %v", err)
	}
}

func TestSizeBound(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "f.json")
	data := []byte(strings.Repeat("x", 2048))
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
	for _, limit := range []int64{2048, 4096, NoLimit} {
		b, err := ReadAll(path, limit)
		if err != nil || string(b) != string(data) {
			t.Fatalf("limit %d: %d bytes, %v", limit, len(b), err)
		}
		f, st, err := Open(path, limit)
		if err != nil || st.Size() != 2048 || !st.Mode().IsRegular() {
			t.Fatalf("Open, limit %d: %v", limit, err)
		}
		f.Close()
	}
	_, err := ReadAll(path, 1024)
	if !errors.Is(err, ErrTooLarge) || err.Error() != path+": too large: 2048 bytes, more than the 1 KiB such a file may hold" {
		t.Fatalf("too large: %v", err)
	}
	if _, _, err := Open(path, 2047); !errors.Is(err, ErrTooLarge) || !strings.Contains(err.Error(), "2047 bytes") {
		t.Fatalf("too large: %v", err)
	}
	empty := filepath.Join(dir, "empty")
	os.WriteFile(empty, nil, 0o644)
	if b, err := ReadAll(empty, 0); err != nil || len(b) != 0 {
		t.Fatalf("empty: %q, %v", b, err)
	}
}

func TestHuman(t *testing.T) {
	for n, want := range map[int64]string{16 << 20: "16 MiB", 1 << 30: "1 GiB", 3 << 10: "3 KiB", 1536: "1536 bytes", 1000: "1000 bytes"} {
		if got := human(n); got != want {
			t.Errorf("human(%d) = %q, want %q", n, got, want)
		}
	}
}

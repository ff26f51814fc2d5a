package atomicfile

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"sort"
	"testing"
)

func names(t *testing.T, dir string) []string {
	t.Helper()
	es, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range es {
		out = append(out, e.Name())
	}
	sort.Strings(out)
	return out
}

// A written file appears whole with Mode; a failed write leaves the old
// contents and no temporary file.
func TestWrite(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "out")
	if err := Write(path, func(f *os.File) error { _, err := f.WriteString("new"); return err }); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(path); string(b) != "new" {
		t.Fatalf("contents %q", b)
	}
	// A new file gets 0666 less the umask; a replaced one keeps its mode.
	if st, _ := os.Stat(path); st.Mode().Perm()&0o066 == 0o066 || st.Mode().Perm()&0o600 != 0o600 {
		t.Fatalf("new file mode %v", st.Mode())
	}
	os.Chmod(path, 0o600)
	if err := Write(path, func(f *os.File) error { _, err := f.WriteString("new"); return err }); err != nil {
		t.Fatal(err)
	}
	if st, _ := os.Stat(path); st.Mode().Perm() != 0o600 {
		t.Fatalf("a 0600 file became %v", st.Mode())
	}
	boom := errors.New("boom")
	err := Write(path, func(f *os.File) error { f.WriteString("half"); return boom })
	if !errors.Is(err, boom) {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(path); string(b) != "new" {
		t.Fatalf("a failed write changed the file to %q", b)
	}
	if got := names(t, dir); !reflect.DeepEqual(got, []string{"out"}) {
		t.Fatalf("left behind: %v", got)
	}
}

// A set is renamed only when every file was written.
func TestWriteSet(t *testing.T) {
	dir := t.TempDir()
	paths := []string{filepath.Join(dir, "a"), filepath.Join(dir, "b")}
	err := WriteSet(paths, func(i int, f *os.File) error {
		if i == 1 {
			return errors.New("second fails")
		}
		_, err := f.WriteString("a")
		return err
	})
	if err == nil || len(names(t, dir)) != 0 {
		t.Fatalf("%v, left %v", err, names(t, dir))
	}
	if err := WriteSet(paths, func(i int, f *os.File) error { _, err := f.WriteString("x"); return err }); err != nil {
		t.Fatal(err)
	}
	if got := names(t, dir); !reflect.DeepEqual(got, []string{"a", "b"}) {
		t.Fatalf("%v", got)
	}
}

// Pending files written by name (as llama.cpp writes) commit; temporary
// files and uncommitted ones are removed by Abort and by RemovePending.
func TestPendingAndRemovePending(t *testing.T) {
	dir := t.TempDir()
	p, err := Create(filepath.Join(dir, "q.gguf"))
	if err != nil {
		t.Fatal(err)
	}
	p.CloseFile()
	if err := os.WriteFile(p.Name(), []byte("by name"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := p.Commit(); err != nil {
		t.Fatal(err)
	}
	p.Abort() // after Commit: nothing
	if b, _ := os.ReadFile(filepath.Join(dir, "q.gguf")); string(b) != "by name" {
		t.Fatalf("%q", b)
	}
	tmp, err := Temp(dir, ".inter-")
	if err != nil {
		t.Fatal(err)
	}
	if err := tmp.Commit(); err == nil {
		t.Fatal("a temporary file committed")
	}
	p2, _ := Create(filepath.Join(dir, "r.gguf"))
	tmp2, _ := Temp(dir, ".inter-")
	removed := RemovePending()
	sort.Strings(removed)
	want := []string{tmp.Name(), p2.Name(), tmp2.Name()} // tmp: a refused Commit leaves it to Abort
	sort.Strings(want)
	if !reflect.DeepEqual(removed, want) {
		t.Fatalf("removed %v, want %v", removed, want)
	}
	if got := names(t, dir); !reflect.DeepEqual(got, []string{"q.gguf"}) {
		t.Fatalf("left behind: %v", got)
	}
}

// Paths that are not regular files are never replaced; after Shutdown no
// file is created.
func TestRefusals(t *testing.T) {
	dir := t.TempDir()
	if err := Write(dir, func(*os.File) error { return nil }); err == nil {
		t.Fatal("a folder was replaced")
	}
	if err := Write("/dev/null", func(*os.File) error { return nil }); err == nil {
		t.Fatal("a device was replaced")
	}
	p, _ := Create(filepath.Join(dir, "a"))
	if removed := Shutdown(); len(removed) != 1 || removed[0] != p.Name() {
		t.Fatalf("shutdown removed %v", removed)
	}
	defer func() { pendingMu.Lock(); shutdown = false; pendingMu.Unlock() }()
	if _, err := Create(filepath.Join(dir, "b")); !errors.Is(err, ErrShutdown) {
		t.Fatalf("create after shutdown: %v", err)
	}
	if got := names(t, dir); len(got) != 0 {
		t.Fatalf("left %v", got)
	}
}

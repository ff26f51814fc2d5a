package atomicfile

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"sort"
	"strings"
	"syscall"
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

// readOnlyFolder is a folder that refuses new files: a folder without write
// permission, or for root (whom permissions do not stop) /sys, which refuses
// new files to anyone.
func readOnlyFolder(t *testing.T) string {
	t.Helper()
	if os.Geteuid() != 0 {
		dir := t.TempDir()
		os.Chmod(dir, 0o555)
		t.Cleanup(func() { os.Chmod(dir, 0o755) })
		return dir
	}
	if f, err := os.CreateTemp("/sys", "x"); err == nil {
		f.Close()
		os.Remove(f.Name())
		t.Skip("running as root where /sys takes new files: no folder refuses them")
	}
	return "/sys"
}

// A folder that takes no new file is refused before any work, naming the
// output and the folder (not a temporary file), and checking leaves nothing.
func TestCheckOutputFolderTakesNoFile(t *testing.T) {
	ro := readOnlyFolder(t)
	out := filepath.Join(ro, "out.gguf")
	for _, overwrite := range []bool{false, true} {
		err := CheckOutput(out, overwrite)
		if err == nil || !strings.Contains(err.Error(), "output "+out+": cannot create a file in its folder "+ro) || strings.Contains(err.Error(), ".tmp-") {
			t.Fatalf("%v", err)
		}
	}
	_, err := Create(out)
	if err == nil || !strings.HasPrefix(err.Error(), out+": cannot create a file in its folder "+ro+": ") || strings.Contains(err.Error(), ".tmp-") {
		t.Fatalf("Create: %v", err)
	}
	if err := Write(out, func(*os.File) error { return nil }); err == nil || !strings.HasPrefix(err.Error(), out+": ") {
		t.Fatalf("Write: %v", err)
	}

	// A working folder that was removed still reads as a folder.
	dir := t.TempDir()
	t.Chdir(dir)
	if err := os.Remove(dir); err != nil {
		t.Fatal(err)
	}
	err = CheckOutput("out.gguf", false)
	if err == nil || !strings.Contains(err.Error(), "output out.gguf: cannot create a file in its folder .: ") || !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("removed folder: %v", err)
	}

	// A folder that takes files: checked, and nothing is left behind.
	dir = t.TempDir()
	if err := CheckOutput(filepath.Join(dir, "out.gguf"), false); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(dir, "old"), []byte("x"), 0o644)
	if err := CheckOutput(filepath.Join(dir, "old"), true); err != nil {
		t.Fatal(err)
	}
	if got := names(t, dir); !reflect.DeepEqual(got, []string{"old"}) {
		t.Fatalf("left behind: %v", got)
	}
}

// Errors about the temporary file name the output instead.
func TestErrorsNameTheOutput(t *testing.T) {
	dir := t.TempDir()
	out := filepath.Join(dir, "out.gguf")
	err := Write(out, func(f *os.File) error {
		return &os.PathError{Op: "write", Path: f.Name(), Err: syscall.ENOSPC}
	})
	if err == nil || err.Error() != "write "+out+": no space left on device" || !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("%v", err)
	}
	err = Write(out, func(f *os.File) error {
		return fmt.Errorf("tensor 3: %w", &os.PathError{Op: "write", Path: f.Name(), Err: syscall.EIO})
	})
	if err == nil || !strings.HasPrefix(err.Error(), out+": tensor 3: write ") || !errors.Is(err, syscall.EIO) {
		t.Fatalf("%v", err)
	}
	if got := names(t, dir); len(got) != 0 {
		t.Fatalf("left behind: %v", got)
	}
}

// Package atomicfile writes files so that a path holds either its old
// contents or the whole new file, never a part: the data goes to a temporary
// file in the same folder, which is synced and then renamed into place, and
// the folder is synced so that the rename survives a crash. It is the one
// place in the project where output files are created.
package atomicfile

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
)

// ErrShutdown is returned by Create and Temp once Shutdown has run.
var ErrShutdown = errors.New("atomicfile: the process is shutting down")

// pending holds every temporary file not yet committed or removed, so that
// RemovePending can clean up after an interrupt.
var (
	pendingMu sync.Mutex
	pending   = map[*Pending]func(){} // each with its OnPending release
	onPending func(name string) (release func())
	shutdown  bool
)

// OnPending sets a function told of every temporary file as it is made; the
// function it returns is called when the file is committed or removed. A
// process that can die without running Go code (inside C) uses it to keep
// its own list of files to remove.
func OnPending(fn func(name string) (release func())) {
	pendingMu.Lock()
	onPending = fn
	pendingMu.Unlock()
}

// Pending is a file being written under a temporary name in the folder of
// its final path.
type Pending struct {
	path string   // the final path ("" for a temporary file that is never committed)
	name string   // the temporary file
	f    *os.File // nil once closed
	done bool
}

// Create starts writing path: it creates an empty temporary file
// ".BASE.tmp-*" next to it. A path that exists and is not a regular file
// (a folder, a device, a FIFO) is refused: the rename would replace it.
// Errors name path, not the temporary file, which the user never named.
func Create(path string) (*Pending, error) {
	if st, err := os.Stat(path); err == nil && !st.Mode().IsRegular() {
		return nil, fmt.Errorf("%s exists and is not a regular file (%v)", path, st.Mode().Type())
	}
	return createNext(path, path)
}

// createNext creates the temporary file of path (see Create); errors begin
// with what.
func createNext(path, what string) (*Pending, error) {
	dir := filepath.Dir(path)
	p, err := create(path, dir, "."+filepath.Base(path)+".tmp-")
	if err != nil && !errors.Is(err, ErrShutdown) {
		err = fmt.Errorf("%s: cannot create a file in its folder %s: %w", what, dir, err)
	}
	return p, err
}

// Temp creates a temporary file "prefix*" in dir for an intermediate
// result that is never renamed into place. Remove it with Abort.
func Temp(dir, prefix string) (*Pending, error) {
	p, err := create("", dir, prefix)
	if err != nil && !errors.Is(err, ErrShutdown) {
		err = fmt.Errorf("cannot create a temporary file in %s: %w", dir, err)
	}
	return p, err
}

// create makes a new temporary file with the permissions a new file gets
// (0666 less the umask), registered for cleanup. The lock is held from
// creation to registration, so that Shutdown misses none. Its error is
// only why the folder took no file (such as EACCES), without the temporary
// name, which the user never gave: callers say what the file was for.
func create(path, dir, prefix string) (*Pending, error) {
	pendingMu.Lock()
	defer pendingMu.Unlock()
	if shutdown {
		return nil, ErrShutdown
	}
	for try := 0; ; try++ {
		name := filepath.Join(dir, prefix+strconv.FormatUint(rand.Uint64()%1e12, 10))
		f, err := os.OpenFile(name, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o666)
		if errors.Is(err, os.ErrExist) && try < 100 {
			continue
		}
		if err != nil {
			var pe *os.PathError
			if errors.As(err, &pe) {
				err = pe.Err
			}
			return nil, err
		}
		p := &Pending{path: path, name: name, f: f}
		release := func() {}
		if onPending != nil {
			release = onPending(name)
		}
		pending[p] = release
		return p, nil
	}
}

func (p *Pending) forget() {
	pendingMu.Lock()
	if release, ok := pending[p]; ok {
		release()
		delete(pending, p)
	}
	pendingMu.Unlock()
}

// File is the open temporary file.
func (p *Pending) File() *os.File { return p.f }

// Name is the temporary file's path, for writers that open it by name (such
// as llama.cpp's quantizer); CloseFile first.
func (p *Pending) Name() string { return p.name }

// CloseFile closes the temporary file without committing it.
func (p *Pending) CloseFile() error {
	if p.f == nil {
		return nil
	}
	err := p.f.Close()
	p.f = nil
	return err
}

// named makes an error about the temporary file name the final path, the
// one the user gave (the temporary file is removed once writing fails).
func (p *Pending) named(err error) error {
	if p.path == "" || !strings.Contains(err.Error(), p.name) {
		return err
	}
	if pe, ok := err.(*os.PathError); ok && pe.Path == p.name {
		return &os.PathError{Op: pe.Op, Path: p.path, Err: pe.Err}
	}
	return fmt.Errorf("%s: %w", p.path, err)
}

// renamed is the error of the rename that puts the file in place.
func (p *Pending) renamed(err error) error {
	var le *os.LinkError
	if errors.As(err, &le) {
		err = le.Err
	}
	return fmt.Errorf("%s: cannot put the written file in place: %w", p.path, err)
}

// sync makes the temporary file durable. A file that replaces another
// takes the other's permissions; a new one keeps those it was made with.
func (p *Pending) sync() error {
	f := p.f
	if f == nil {
		var err error
		if f, err = os.OpenFile(p.name, os.O_RDWR, 0); err != nil {
			return err
		}
	}
	var err error
	if st, serr := os.Stat(p.path); serr == nil && p.path != "" {
		if !st.Mode().IsRegular() {
			err = fmt.Errorf("%s exists and is not a regular file (%v)", p.path, st.Mode().Type())
		} else {
			err = f.Chmod(st.Mode().Perm())
		}
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	p.f = nil
	return err
}

// Commit renames the synced temporary file to its path and syncs the folder.
// On failure the temporary file is removed.
func (p *Pending) Commit() error {
	if p.done {
		return errors.New("atomicfile: commit after commit or abort")
	}
	if p.path == "" {
		return errors.New("atomicfile: a temporary file has no final path")
	}
	if err := p.sync(); err != nil {
		p.Abort()
		return p.named(err)
	}
	if err := os.Rename(p.name, p.path); err != nil {
		p.Abort()
		return p.renamed(err)
	}
	p.done = true
	p.forget()
	syncDir(filepath.Dir(p.path))
	return nil
}

// Abort closes and removes the temporary file. It does nothing after Commit
// or a first Abort.
func (p *Pending) Abort() {
	if p.done {
		return
	}
	p.CloseFile()
	os.Remove(p.name)
	p.done = true
	p.forget()
}

// Write writes one file atomically: path is either written whole or left as
// it was.
func Write(path string, write func(*os.File) error) error {
	return WriteSet([]string{path}, func(_ int, f *os.File) error { return write(f) })
}

// WriteSet writes several files, each through a temporary file in its folder;
// all are renamed into place only when every one was written and synced.
func WriteSet(paths []string, write func(i int, f *os.File) error) (err error) {
	ps := make([]*Pending, 0, len(paths))
	defer func() {
		if err != nil {
			for _, p := range ps {
				p.Abort()
			}
		}
	}()
	for i, path := range paths {
		p, err := Create(path)
		if err != nil {
			return err
		}
		ps = append(ps, p)
		if err := write(i, p.f); err != nil {
			return p.named(err)
		}
		if err := p.sync(); err != nil {
			return p.named(err)
		}
	}
	for i, p := range ps {
		if err := os.Rename(p.name, p.path); err != nil {
			// Shards already renamed stay: report which.
			if i > 0 {
				return fmt.Errorf("%w (after %d of %d files were in place)", p.renamed(err), i, len(ps))
			}
			return p.renamed(err)
		}
		p.done = true
		p.forget()
	}
	seen := map[string]bool{}
	for _, path := range paths {
		if d := filepath.Dir(path); !seen[d] {
			seen[d] = true
			syncDir(d)
		}
	}
	return nil
}

// syncDir makes a rename in dir durable. Some systems cannot sync a folder;
// the rename has happened either way.
func syncDir(dir string) {
	if d, err := os.Open(dir); err == nil {
		d.Sync()
		d.Close()
	}
}

// RemovePending removes every temporary file that was neither committed nor
// aborted, and returns their names: what an interrupted process must not
// leave behind.
func RemovePending() []string {
	pendingMu.Lock()
	ps := make([]*Pending, 0, len(pending))
	for p := range pending {
		ps = append(ps, p)
	}
	pendingMu.Unlock()
	return removeAll(ps)
}

// Shutdown removes every pending temporary file and makes later Create and
// Temp calls fail: what a process does when a signal ends it. Files still
// being written are unlinked, not closed: their writers carry on into
// nothing until the process exits.
func Shutdown() []string {
	pendingMu.Lock()
	shutdown = true
	var names []string
	for p, release := range pending {
		os.Remove(p.name)
		release()
		names = append(names, p.name)
	}
	clear(pending)
	pendingMu.Unlock()
	return names
}

func removeAll(ps []*Pending) []string {
	var names []string
	for _, p := range ps {
		names = append(names, p.name)
		p.Abort()
	}
	return names
}

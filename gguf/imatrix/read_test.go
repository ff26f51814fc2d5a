package imatrix

import (
	"encoding/binary"
	"math"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"syscall"
	"testing"
)

func testMatrix() *Matrix {
	im := &Matrix{Datasets: []string{"d"}, ChunkCount: 3, ChunkSize: 64}
	for _, name := range []string{"blk.0.attn_q.weight", "blk.0.ffn_down.weight", "blk.1.attn_q.weight"} {
		im.Entries = append(im.Entries, Entry{Name: name, NIn: 256, Sums: make([]float32, 256), Counts: []float32{8}})
	}
	for i := range im.Entries {
		for j := range im.Entries[i].Sums {
			im.Entries[i].Sums[j] = float32(i + j)
		}
	}
	return im
}

func TestReadRefusesNonRegular(t *testing.T) {
	fifo := filepath.Join(t.TempDir(), "im.dat")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{fifo, "/dev/zero", t.TempDir()} {
		if _, err := Read(p); err == nil || !strings.HasPrefix(err.Error(), p+": not a regular file") {
			t.Errorf("%s: %v", p, err)
		}
	}
}

// A truncated legacy file says so, naming the entry it ends in; lengths are
// checked against the bytes left before anything is allocated for them.
func TestReadLegacyTruncated(t *testing.T) {
	dir := t.TempDir()
	full := filepath.Join(dir, "im.dat")
	im := testMatrix()
	im.Legacy = true
	if err := im.Write(full); err != nil {
		t.Fatal(err)
	}
	back, err := Read(full)
	if err != nil || !reflect.DeepEqual(back.Entries, im.Entries) || back.ChunkCount != 3 || !reflect.DeepEqual(back.Datasets, []string{"d"}) {
		t.Fatalf("read back: %v", err)
	}
	raw, _ := os.ReadFile(full)
	entry := 4 + len("blk.0.attn_q.weight") + 8 + 4*256 // the first entry's bytes
	for _, c := range []struct {
		cut  int
		want string
	}{
		{4 + entry + 4 + 10, `entry 1 needs 21 bytes for its name, 10 left: the file is truncated`},
		{4 + entry + 4 + 21 + 8 + 100, `entry 1 (name "blk.0.ffn_down.weight") needs 1024 bytes for its 256 values, 100 left: the file is truncated`},
		{4 + entry + 2, `entry 1 needs 4 bytes for its name length, 2 left: the file is truncated`},
		{4 + entry + 4 + 21 + 4, `entry 1 (name "blk.0.ffn_down.weight") needs 8 bytes for its call and value counts, 4 left: the file is truncated`},
		{4 + 30, `entry 0 (name "blk.0.attn_q.weight") needs 8 bytes for its call and value counts, 7 left: the file is truncated`},
		{4 + 10, `not an imatrix file (GGUF or legacy .dat), or a truncated one: entry 0 of 3 needs 19 bytes for its name, 6 left`},
	} {
		p := filepath.Join(dir, "cut.dat")
		os.WriteFile(p, raw[:c.cut], 0o644)
		if _, err := Read(p); err == nil || !strings.HasPrefix(err.Error(), p+": ") || !strings.HasSuffix(err.Error(), c.want) {
			t.Errorf("cut at %d: %v", c.cut, err)
		}
	}
	// An entry count or lengths far beyond the file: refused, nothing
	// allocated for them.
	p := filepath.Join(dir, "lie.dat")
	lie := append(binary.LittleEndian.AppendUint32(nil, 1<<30), raw[4:]...)
	os.WriteFile(p, lie, 0o644)
	if _, err := Read(p); err == nil || !strings.Contains(err.Error(), "legacy .dat imatrix of 1073741824 entries: entry 3 ") || !strings.HasSuffix(err.Error(), "the file is truncated") {
		t.Errorf("entry count: %v", err)
	}
	lie = append([]byte(nil), raw...)
	binary.LittleEndian.PutUint32(lie[4+4+19+4:], 1<<30) // nval of entry 0
	os.WriteFile(p, lie, 0o644)
	if _, err := Read(p); err == nil || !strings.Contains(err.Error(), "needs 4294967296 bytes for its 1073741824 values") {
		t.Errorf("value count: %v", err)
	}
	text := filepath.Join(dir, "notes.txt")
	os.WriteFile(text, []byte("some notes, not an imatrix\n"), 0o644)
	if _, err := Read(text); err == nil || !strings.HasPrefix(err.Error(), text+": not an imatrix file") {
		t.Errorf("text: %v", err)
	}
}

// Values that cannot be sums of squares are refused naming the file and the
// entry, in both formats.
func TestReadRefusesBadValues(t *testing.T) {
	dir := t.TempDir()
	for _, c := range []struct {
		name string
		edit func(im *Matrix)
		want string
	}{
		{"nan", func(im *Matrix) { im.Entries[1].Sums[7] = float32(math.NaN()) }, `entry "blk.0.ffn_down.weight": value 7 of 256 is NaN`},
		{"inf", func(im *Matrix) { im.Entries[2].Sums[0] = float32(math.Inf(1)) }, `entry "blk.1.attn_q.weight": value 0 of 256 is +Inf`},
		{"negative", func(im *Matrix) { im.Entries[0].Sums[255] = -2 }, `entry "blk.0.attn_q.weight": value 255 of 256 is -`},
		{"nan-count", func(im *Matrix) { im.Entries[0].Counts[0] = float32(math.NaN()) }, `entry "blk.0.attn_q.weight": count 0 of 1 is NaN`},
	} {
		for _, ext := range []string{".gguf", ".dat"} {
			if ext == ".dat" && c.name == "nan-count" {
				continue // the legacy format stores an integer call count
			}
			im := testMatrix()
			c.edit(im)
			p := filepath.Join(dir, c.name+ext)
			if err := im.Write(p); err != nil {
				t.Fatal(err)
			}
			_, err := Read(p)
			if err == nil || !strings.HasPrefix(err.Error(), p+": "+c.want) || !strings.Contains(err.Error(), "; an importance matrix holds sums of squares and counts of rows (finite, not negative)") {
				t.Errorf("%s%s: %v", c.name, ext, err)
			}
		}
	}
}

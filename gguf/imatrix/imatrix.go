// Package imatrix reads, writes, prunes and collects importance matrices (llama.cpp's imatrix), in
// both of llama.cpp's formats: GGUF and the legacy .dat.
package imatrix

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"sort"
	"strings"

	"github.com/ggufprune/ggufprune/gguf"
	"github.com/ggufprune/ggufprune/gguf/blocks"
	"github.com/ggufprune/ggufprune/internal/atomicfile"
	"github.com/ggufprune/ggufprune/internal/inputfile"
)

// Importance matrices (imatrix) are the mean squared activations at the input
// of each weight matrix, which llama.cpp's quantizer uses to weight the
// rounding error of each column. llama.cpp writes them in two formats: a
// GGUF file (general.type "imatrix", a NAME.in_sum2 and a NAME.counts F32
// tensor per weight) and the legacy binary .dat format.

// Keys of the GGUF format.
const (
	KeyDatasets   = "imatrix.datasets"
	KeyChunkCount = "imatrix.chunk_count"
	KeyChunkSize  = "imatrix.chunk_size"
)

// ErrMismatch is wrapped by the errors of an importance matrix that
// does not belong to a model (another model's, or not pruned with it).
var ErrMismatch = errors.New("the importance matrix does not match the model")

// Matrix is an importance matrix.
type Matrix struct {
	Entries    []Entry // sorted by name
	Datasets   []string
	ChunkCount int
	ChunkSize  int
	Legacy     bool // read from (or to be written in) the legacy .dat format
}

// Entry is the statistics of one weight: for each of NMat matrices
// (experts; 1 for a plain weight), the sums of squared activations of its NIn
// input columns and the number of activation rows summed.
type Entry struct {
	Name   string
	NIn    int
	Sums   []float32 // NMat rows of NIn
	Counts []float32 // NMat
}

// NMat is the number of matrices (experts) of the entry.
func (e *Entry) NMat() int { return len(e.Counts) }

// Means returns the mean squared activation of each column, as llama.cpp's
// quantizer reads them: sums divided by counts, 1 where a matrix saw no input.
func (e *Entry) Means() []float32 {
	out := make([]float32, len(e.Sums))
	for m, c := range e.Counts {
		for i := 0; i < e.NIn; i++ {
			if c > 0 {
				out[m*e.NIn+i] = e.Sums[m*e.NIn+i] / c
			} else {
				out[m*e.NIn+i] = 1
			}
		}
	}
	return out
}

// Is reports whether a parsed GGUF file is an importance matrix.
func Is(f *gguf.File) bool {
	v, ok := f.Get(gguf.KeyType)
	s, _ := v.Str()
	return ok && s == "imatrix"
}

// Read reads an importance matrix in either format. What is not a regular
// file is refused without opening it (a FIFO would block the open); every
// count the file declares is checked against its size before allocating for
// it; values that cannot be sums of squares (NaN, infinite, negative) are
// refused naming the entry, before llama.cpp's quantizer sees them.
func Read(path string) (*Matrix, error) {
	// No size bound of its own: the GGUF reader and readLegacy check every
	// count against the file's size, so memory follows the file.
	fp, st, err := inputfile.Open(path, inputfile.NoLimit)
	if err != nil {
		return nil, err
	}
	defer fp.Close()
	var im *Matrix
	var magic [4]byte
	if _, err := fp.ReadAt(magic[:], 0); err == nil && binary.LittleEndian.Uint32(magic[:]) == gguf.Magic {
		f, err := gguf.NewFile(fp, st.Size())
		if err != nil {
			return nil, fmt.Errorf("%s: %w", path, err)
		}
		if im, err = fromGGUF(f); err != nil {
			return nil, fmt.Errorf("%s: %w", path, err)
		}
	} else if im, err = readLegacy(bufio.NewReader(fp), st.Size()); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if err := im.checkValues(); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return im, nil
}

// FromGGUF is the importance matrix of a GGUF file already parsed (by
// gguf.Open), checked as Read checks it, its errors naming the file: for a
// caller that parsed the file for another reason (inspect, which reads
// models and importance matrices alike), so that a header of many tensors
// is not parsed twice.
func FromGGUF(f *gguf.File) (*Matrix, error) {
	im, err := fromGGUF(f)
	if err == nil {
		err = im.checkValues()
	}
	if err != nil {
		return nil, fmt.Errorf("%s: %w", f.Name(), err)
	}
	return im, nil
}

// checkValues checks that every sum and count is a finite number, not
// negative: sums of squared activations and numbers of rows cannot be
// anything else, and llama.cpp's quantizer fails on them far from the file.
func (im *Matrix) checkValues() error {
	for _, e := range im.Entries {
		for _, v := range []struct {
			what string
			vals []float32
		}{{"value", e.Sums}, {"count", e.Counts}} {
			for i, x := range v.vals {
				if !(x >= 0) || math.IsInf(float64(x), 1) {
					return fmt.Errorf("entry %q: %s %d of %d is %v; an importance matrix holds sums of squares and counts of rows (finite, not negative)", e.Name, v.what, i, len(v.vals), x)
				}
			}
		}
	}
	return nil
}

func fromGGUF(f *gguf.File) (*Matrix, error) {
	if !Is(f) {
		return nil, errors.New("a GGUF file but not an imatrix (general.type is not \"imatrix\")")
	}
	im := &Matrix{}
	if v, ok := f.Get(KeyDatasets); ok {
		if a, ok := v.Array(); ok && a.Elem() == gguf.TypeString {
			for i := 0; i < a.Len(); i++ {
				s, _ := a.Index(i).Str()
				im.Datasets = append(im.Datasets, s)
			}
		}
	}
	if n, ok := gguf.IntKey(f, KeyChunkCount); ok {
		im.ChunkCount = int(n)
	}
	if n, ok := gguf.IntKey(f, KeyChunkSize); ok {
		im.ChunkSize = int(n)
	}
	readF32 := func(t gguf.TensorInfo) ([]float32, error) {
		if t.Type != gguf.TypeF32 {
			return nil, fmt.Errorf("tensor %q is %v, want F32", t.Name, t.Type)
		}
		b := make([]byte, t.Size)
		if _, err := f.TensorData(t).ReadAt(b, 0); err != nil {
			return nil, err
		}
		out := make([]float32, len(b)/4)
		for i := range out {
			out[i] = math.Float32frombits(binary.LittleEndian.Uint32(b[4*i:]))
		}
		return out, nil
	}
	for _, t := range f.AllTensors() {
		name, ok := strings.CutSuffix(t.Name, ".in_sum2")
		if !ok {
			if !strings.HasSuffix(t.Name, ".counts") {
				return nil, fmt.Errorf("unexpected tensor %q in an imatrix", t.Name)
			}
			continue
		}
		ct, ok := f.Tensor(name + ".counts")
		if !ok {
			return nil, fmt.Errorf("tensor %q has no %s.counts", t.Name, name)
		}
		sums, err := readF32(t)
		if err != nil {
			return nil, err
		}
		counts, err := readF32(ct)
		if err != nil {
			return nil, err
		}
		if len(t.Dims) < 1 || len(counts) == 0 || uint64(len(counts))*t.Dims[0] != uint64(len(sums)) {
			return nil, fmt.Errorf("%s: %d sums do not match %d counts", name, len(sums), len(counts))
		}
		im.Entries = append(im.Entries, Entry{Name: name, NIn: int(t.Dims[0]), Sums: sums, Counts: counts})
	}
	im.sort()
	return im, nil
}

func (im *Matrix) sort() {
	sort.Slice(im.Entries, func(i, j int) bool { return im.Entries[i].Name < im.Entries[j].Name })
}

// readLegacy reads the .dat format: int32 entry count; per entry an
// int32 name length, the name, int32 ncall, int32 nval and nval float32
// means × ncall; then optionally int32 last chunk and a dataset name. Every
// length is checked against the bytes left in the file (size in all) before
// it is allocated.
func readLegacy(r *bufio.Reader, size int64) (*Matrix, error) {
	// Reads fail only when the file shrinks while it is read: every read
	// is first checked against the bytes left.
	var readErr error
	i32 := func() int32 {
		var v int32
		if err := binary.Read(r, binary.LittleEndian, &v); err != nil && readErr == nil {
			readErr = err
		}
		return v
	}
	if size < 4 {
		return nil, fmt.Errorf("not an imatrix file (GGUF or legacy .dat): %d bytes", size)
	}
	n := i32()
	left := size - 4
	if readErr != nil {
		return nil, readErr
	}
	if n <= 0 {
		return nil, fmt.Errorf("not an imatrix file (GGUF or legacy .dat): it starts with an entry count of %d", n)
	}
	// Nothing is allocated for the entry count: entries are read one by one,
	// each length checked against the bytes left before it is allocated.
	truncated := func(i int32, name []byte, what string, need int64) error {
		if name == nil && i == 0 {
			// Not even one name read: as likely another kind of file.
			return fmt.Errorf("not an imatrix file (GGUF or legacy .dat), or a truncated one: entry 0 of %d needs %d bytes for %s, %d left", n, need, what, left)
		}
		who := fmt.Sprintf("entry %d", i)
		if name != nil {
			who = fmt.Sprintf("entry %d (name %q)", i, name)
		}
		return fmt.Errorf("legacy .dat imatrix of %d entries: %s needs %d bytes for %s, %d left: the file is truncated", n, who, need, what, left)
	}
	im := &Matrix{Legacy: true}
	for i := int32(0); i < n; i++ {
		if left < 4 {
			return nil, truncated(i, nil, "its name length", 4)
		}
		l := i32()
		left -= 4
		if readErr != nil {
			return nil, fmt.Errorf("legacy .dat imatrix: entry %d: %w", i, readErr)
		}
		if l <= 0 {
			return nil, fmt.Errorf("legacy .dat imatrix: entry %d: name length %d (not an imatrix file?)", i, l)
		}
		if int64(l) > left {
			return nil, truncated(i, nil, "its name", int64(l))
		}
		name := make([]byte, l)
		if _, err := io.ReadFull(r, name); err != nil {
			return nil, fmt.Errorf("legacy .dat imatrix: entry %d: %w", i, err)
		}
		left -= int64(l)
		if left < 8 {
			return nil, truncated(i, name, "its call and value counts", 8)
		}
		ncall, nval := i32(), i32()
		left -= 8
		if readErr != nil {
			return nil, fmt.Errorf("legacy .dat imatrix: entry %d (name %q): %w", i, name, readErr)
		}
		if nval <= 0 {
			return nil, fmt.Errorf("legacy .dat imatrix: entry %d (name %q): value count %d (not an imatrix file?)", i, name, nval)
		}
		if 4*int64(nval) > left {
			return nil, truncated(i, name, fmt.Sprintf("its %d values", nval), 4*int64(nval))
		}
		vals := make([]float32, nval)
		if err := binary.Read(r, binary.LittleEndian, vals); err != nil {
			return nil, fmt.Errorf("legacy .dat imatrix: entry %d (name %q): %w", i, name, err)
		}
		left -= 4 * int64(nval)
		// Stored as mean × ncall; keep them as sums over ncall "rows".
		count := float32(max(ncall, 1))
		im.Entries = append(im.Entries, Entry{Name: string(name), NIn: int(nval), Sums: vals, Counts: []float32{count}})
	}
	// The optional tail: the last chunk and the dataset's name.
	if left >= 4 {
		im.ChunkCount = int(i32())
		left -= 4
		if left >= 4 {
			if l := i32(); readErr == nil && l > 0 && int64(l) <= left-4 {
				name := make([]byte, l)
				if _, err := io.ReadFull(r, name); err == nil {
					im.Datasets = []string{string(name)}
				}
			}
		}
	}
	im.sort()
	return im, nil
}

// Write writes the imatrix to path atomically, in the legacy format when
// im.Legacy is set or path ends in .dat, else as GGUF.
func (im *Matrix) Write(path string) error {
	return atomicfile.Write(path, func(f *os.File) error {
		if im.Legacy || strings.HasSuffix(path, ".dat") {
			return im.writeLegacy(f)
		}
		return im.writeGGUF(f)
	})
}

func (im *Matrix) writeGGUF(w io.Writer) error {
	ds := make([]gguf.Value, len(im.Datasets))
	for i, d := range im.Datasets {
		ds[i] = gguf.String(d)
	}
	dsv, _ := gguf.NewArray(gguf.TypeString, ds)
	kvs := []gguf.KV{
		{Key: gguf.KeyType, Value: gguf.String("imatrix")},
		{Key: KeyDatasets, Value: dsv},
		{Key: KeyChunkCount, Value: gguf.Uint32(uint32(im.ChunkCount))},
		{Key: KeyChunkSize, Value: gguf.Uint32(uint32(im.ChunkSize))},
	}
	var ts []gguf.WriterTensor
	for _, e := range im.Entries {
		ts = append(ts,
			f32Tensor(e.Name+".in_sum2", e.Sums, uint64(e.NIn), uint64(e.NMat())),
			f32Tensor(e.Name+".counts", e.Counts, 1, uint64(e.NMat())))
	}
	_, err := gguf.Write(w, 3, kvs, ts)
	return err
}

func f32Tensor(name string, v []float32, dims ...uint64) gguf.WriterTensor {
	b := make([]byte, 4*len(v))
	for i, x := range v {
		binary.LittleEndian.PutUint32(b[4*i:], math.Float32bits(x))
	}
	return gguf.WriterTensor{
		Info: gguf.TensorInfo{Name: name, Dims: dims, Type: gguf.TypeF32, Size: uint64(len(b))},
		Data: io.NewSectionReader(bytes.NewReader(b), 0, int64(len(b))),
	}
}

// writeLegacy writes the .dat format as llama.cpp's imatrix tool does: means
// × ncall, where ncall is the number of chunks the largest count spans.
func (im *Matrix) writeLegacy(w io.Writer) error {
	bw := bufio.NewWriter(w)
	put := func(v any) { binary.Write(bw, binary.LittleEndian, v) }
	put(int32(len(im.Entries)))
	chunk := float32(max(im.ChunkSize, 1))
	for _, e := range im.Entries {
		put(int32(len(e.Name)))
		bw.WriteString(e.Name)
		if im.Legacy {
			// Read from .dat: the sums are the stored values, the count is ncall.
			put(int32(e.Counts[0]))
			put(int32(len(e.Sums)))
			put(e.Sums)
			continue
		}
		var maxCount float32
		for _, c := range e.Counts {
			maxCount = max(maxCount, c)
		}
		ncall := int32(math.Ceil(float64(maxCount / chunk)))
		put(ncall)
		put(int32(len(e.Sums)))
		means := e.Means()
		for i := range means {
			means[i] *= float32(ncall)
		}
		put(means)
	}
	put(int32(im.ChunkCount))
	ds := ""
	if len(im.Datasets) > 0 {
		ds = im.Datasets[0]
	}
	put(int32(len(ds)))
	bw.WriteString(ds)
	return bw.Flush()
}

// Prune returns the imatrix of the model that bm makes: entries of removed
// blocks are dropped and the others renumbered like the model's blocks.
// Values are unchanged.
func (im *Matrix) Prune(bm *blocks.Map) (*Matrix, error) {
	out := *im
	out.Entries = nil
	for _, e := range im.Entries {
		name, keep, err := bm.Rename(e.Name)
		if err != nil {
			return nil, fmt.Errorf("imatrix entry %w", err)
		}
		if !keep {
			continue
		}
		e.Name = name
		out.Entries = append(out.Entries, e)
	}
	out.sort()
	return &out, nil
}

// Blocks is the number of blocks the entries cover (highest blk.N + 1).
func (im *Matrix) Blocks() int {
	n := 0
	for _, e := range im.Entries {
		n = max(n, blocks.Of(e.Name)+1)
	}
	return n
}

// CheckModel checks that the imatrix covers the model's blocks and that every
// entry names a weight of the model with as many input columns (times
// experts) as the imatrix has values.
func (im *Matrix) CheckModel(m *gguf.Model) error {
	if n, err := m.BlockCount(); err == nil && im.Blocks() != n {
		return fmt.Errorf("the imatrix covers %d blocks but %s has %d (an imatrix must be pruned with its model): %w", im.Blocks(), m.Name(), n, ErrMismatch)
	}
	for _, e := range im.Entries {
		t, ok := m.Tensor(e.Name)
		if !ok {
			return fmt.Errorf("imatrix entry %q names no tensor of %s (was the imatrix made for another model, or not pruned with it?): %w", e.Name, m.Name(), ErrMismatch)
		}
		want := t.Dims[0]
		if len(t.Dims) > 2 {
			want *= t.Dims[2]
		}
		if uint64(len(e.Sums)) != want {
			return fmt.Errorf("imatrix entry %q has %d values, tensor %s needs %d: %w", e.Name, len(e.Sums), e.Name, want, ErrMismatch)
		}
	}
	return nil
}

// Accumulator collects an importance matrix as llama.cpp's imatrix
// tool does: for every weight matrix multiplication, the sum over activation
// rows of the squared input of each column, and the number of rows; for
// expert (MUL_MAT_ID) weights, per expert, counting the rows routed to it.
type Accumulator struct {
	entries map[string]*Entry
}

// NewAccumulator makes an empty accumulator.
func NewAccumulator() *Accumulator {
	return &Accumulator{entries: map[string]*Entry{}}
}

// Observe takes the input x of one multiplication by weight: nSlots×nTokens
// rows of nIn floats. For expert weights ids holds, per token, the nExpertUsed
// experts chosen, and row (slot k % nSlots, token t) goes to expert ids[t][k].
func (a *Accumulator) Observe(weight string, x []float32, nIn, nSlots, nTokens int, ids []int32, nExpertUsed, nExperts int) {
	nMat := 1
	if ids != nil {
		nMat = nExperts
	}
	e := a.entries[weight]
	if e == nil || e.NIn != nIn || e.NMat() != nMat {
		e = &Entry{Name: weight, NIn: nIn, Sums: make([]float32, nIn*nMat), Counts: make([]float32, nMat)}
		a.entries[weight] = e
	}
	add := func(mat int, row []float32) {
		sums := e.Sums[mat*nIn : (mat+1)*nIn]
		for j, v := range row {
			sums[j] += v * v
		}
		e.Counts[mat]++
	}
	if ids == nil {
		for r := 0; r < nSlots*nTokens; r++ {
			add(0, x[r*nIn:(r+1)*nIn])
		}
		return
	}
	for t := 0; t < nTokens; t++ {
		for k := 0; k < nExpertUsed; k++ {
			ex := int(ids[t*nExpertUsed+k])
			if ex < 0 || ex >= nExperts {
				continue
			}
			r := t*nSlots + k%nSlots
			add(ex, x[r*nIn:(r+1)*nIn])
		}
	}
}

// Matrix returns what was collected, with the dataset name and the chunks.
func (a *Accumulator) Matrix(dataset string, chunks, chunkSize int) *Matrix {
	im := &Matrix{Datasets: []string{dataset}, ChunkCount: chunks, ChunkSize: chunkSize}
	for _, e := range a.entries {
		im.Entries = append(im.Entries, *e)
	}
	im.sort()
	return im
}

// DropExperts returns the imatrix without the statistics of removed
// experts: experts lists, by block (the model's numbering before any
// renaming), the experts removed; every entry of such a block that holds
// one matrix per expert (the stacked ffn_*_exps weights) keeps the rows of
// the other experts, in order. Entries of one matrix (attention, shared
// experts, the router) are unchanged. Apply it before Prune renames
// blocks.
func (im *Matrix) DropExperts(experts map[int][]int) (*Matrix, error) {
	out := *im
	out.Entries = make([]Entry, len(im.Entries))
	copy(out.Entries, im.Entries)
	for i, e := range out.Entries {
		gone, ok := experts[blocks.Of(e.Name)]
		if !ok || e.NMat() <= 1 || blocks.Of(e.Name) < 0 {
			continue
		}
		drop := make([]bool, e.NMat())
		for _, x := range gone {
			if x < 0 || x >= e.NMat() || drop[x] {
				return nil, fmt.Errorf("imatrix entry %q holds %d experts: expert %d is not one of them, or is given twice: %w", e.Name, e.NMat(), x, ErrMismatch)
			}
			drop[x] = true
		}
		kept := Entry{Name: e.Name, NIn: e.NIn}
		for x := range e.NMat() {
			if !drop[x] {
				kept.Sums = append(kept.Sums, e.Sums[x*e.NIn:(x+1)*e.NIn]...)
				kept.Counts = append(kept.Counts, e.Counts[x])
			}
		}
		out.Entries[i] = kept
	}
	return &out, nil
}

package gguf

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"

	"github.com/ggufprune/ggufprune/internal/atomicfile"
)

// notPerLayer lists arrays under the architecture prefix that are not
// per-layer even when their length happens to equal the block count.
var notPerLayer = map[string]bool{
	"rope.dimension_sections":   true,
	"classifier.output_labels":  true,
	"rope.scaling.short_factor": true,
	"rope.scaling.long_factor":  true,
}

// Plan is block surgery worked out and checked, ready to write.
type Plan struct {
	Model            *Model
	Map              *BlockMap
	Removed          []int // old block indices, ascending
	BlockCountBefore int
	BlockCountAfter  int
	KV               []KV          // the first shard's metadata after surgery
	Tensors          []ModelTensor // kept tensors, renamed, in source order
	sources          []*ModelTensor
	replaced         map[string][]byte            // new data of kept tensors, by source name
	cut              map[string]*io.SectionReader // block-sized global tensors without the removed blocks' slices

	// Broken is set when a forced removal changes the kind of kept blocks
	// (an index-pattern architecture): llama.cpp loads the file, but its
	// blocks do not compute what they did.
	Broken *PatternError
}

// ReplaceData makes the plan write new data for a kept tensor, named as in
// the input: the same type and shape, so the same size (healing rewrites
// the tensors it folds into). Every other tensor is still copied unchanged.
func (p *Plan) ReplaceData(name string, data []byte) error {
	for _, src := range p.sources {
		if src.Name != name {
			continue
		}
		if uint64(len(data)) != src.Size {
			return fmt.Errorf("%s: new data of tensor %s is %d bytes, not %d", p.Model.Name(), name, len(data), src.Size)
		}
		if p.replaced == nil {
			p.replaced = map[string][]byte{}
		}
		p.replaced[name] = data
		return nil
	}
	return fmt.Errorf("%s: tensor %s is not kept by the plan", p.Model.Name(), name)
}

// data is the bytes tensor i of the plan is written from.
func (p *Plan) data(i int) *io.SectionReader {
	if d, ok := p.replaced[p.sources[i].Name]; ok {
		return io.NewSectionReader(bytes.NewReader(d), 0, int64(len(d)))
	}
	if d, ok := p.cut[p.sources[i].Name]; ok {
		return io.NewSectionReader(d, 0, d.Size())
	}
	return p.Model.TensorData(p.sources[i])
}

// ErrIndexPattern is wrapped by the errors of removals that would change
// the kind of kept blocks in an architecture that derives it from the block
// index (see PatternError).
var ErrIndexPattern = errors.New("removal breaks the architecture's block pattern")

// PatternError is a removal refused because the architecture derives a
// block's kind from its index: kept blocks would change kind.
type PatternError struct {
	Model        string
	Architecture string
	What         string // what the index decides
	Period       int    // remove whole runs of Period blocks to keep the pattern
	Removed      []int
	Block, To    int // a kept block that would move, and its new index
	// Valid says which removals keep the pattern (whole periods when empty).
	Valid string
}

func (e *PatternError) Error() string {
	return fmt.Sprintf("%s: %s derives %s from the block index; removing %s moves block %d to index %d and changes its kind. Removing %s keeps the pattern",
		e.Model, e.Architecture, e.What, FormatBlockList(e.Removed), e.Block, e.To, e.valid())
}

func (e *PatternError) valid() string {
	if e.Valid != "" {
		return e.Valid
	}
	return fmt.Sprintf("whole runs of %d consecutive blocks (a multiple of %d before every kept block)", e.Period, e.Period)
}

func (e *PatternError) Unwrap() error { return ErrIndexPattern }

// PlanRemoval works out the removal of the given blocks: which tensors go,
// how the rest are renamed, and the new metadata. It refuses removing every
// block, indices out of range, multi-token-prediction blocks, and (unless
// force) removals that break an architecture's index-derived layer pattern
// (a *PatternError).
func PlanRemoval(m *Model, remove []int, force bool) (*Plan, error) {
	arch, err := m.Architecture()
	if err != nil {
		return nil, err
	}
	n, err := m.BlockCount()
	if err != nil {
		return nil, err
	}
	bm, err := NewBlockMap(n, remove)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", m.Name(), err)
	}
	p := &Plan{Model: m, Map: bm, Removed: bm.Removed(), BlockCountBefore: n, BlockCountAfter: bm.After()}
	if len(p.Removed) == 0 {
		return nil, fmt.Errorf("%s: no blocks to remove", m.Name())
	}
	if bm.After() == 0 {
		return nil, fmt.Errorf("%s: removing all %d blocks would leave no model", m.Name(), n)
	}
	if mtp := MTPBlocks(m, n); len(mtp) > 0 {
		for _, b := range p.Removed {
			if b >= mtp[0] {
				return nil, fmt.Errorf("%s: block %d is a multi-token-prediction block (%s.nextn_predict_layers = %d: blocks %s) and cannot be removed", m.Name(), b, arch, len(mtp), FormatBlockList(mtp))
			}
		}
	}
	if check, ok := removalChecks[arch]; ok {
		if err := check(m, bm); err != nil {
			return nil, fmt.Errorf("%s: removing %s: %w", m.Name(), FormatBlockList(p.Removed), err)
		}
	}
	if perr := patternBroken(m, arch, bm, p.Removed); perr != nil {
		if !force {
			return nil, perr
		}
		if err := sameBlockLayout(m, bm, perr); err != nil {
			return nil, err
		}
		p.Broken = perr
	}

	// Metadata: block_count, the counts of leading blocks of a kind, and
	// every per-layer array under the arch prefix.
	kept := bm.Kept()
	prefix := arch + "."
	for _, kv := range m.KV() {
		switch {
		case kv.Key == prefix+"block_count":
			kv.Value = withCount(kv.Value, len(kept))
		case leadingCounts[strings.TrimPrefix(kv.Key, prefix)] && strings.HasPrefix(kv.Key, prefix):
			// The first `lead` blocks are of another kind (dense before
			// mixture-of-experts blocks in deepseek2, glm4moe, …): removing
			// some of them shortens the lead, so that every kept block keeps
			// its kind.
			if lead, ok := kv.Value.Int(); ok && lead > 0 {
				gone := 0
				for _, b := range p.Removed {
					if int64(b) < lead {
						gone++
					}
				}
				kv.Value = withCount(kv.Value, int(lead)-gone)
			}
		case strings.HasPrefix(kv.Key, prefix) && !notPerLayer[strings.TrimPrefix(kv.Key, prefix)]:
			if a, ok := kv.Value.Array(); ok && a.Len() == n {
				kv.Value = a.Slice(kept)
			}
		}
		p.KV = append(p.KV, kv)
	}
	for key, value := range pinnedDefaults[arch] {
		if _, ok := m.Get(prefix + key); !ok {
			p.KV = append(p.KV, KV{Key: prefix + key, Value: value(n)})
		}
	}

	// Tensors: drop removed blocks, renumber the rest.
	for i := range m.Tensors {
		t := &m.Tensors[i]
		name, keep, err := bm.Rename(t.Name)
		if err != nil {
			return nil, fmt.Errorf("%s: tensor %w (%s)", m.Name(), err, prefix+"block_count")
		}
		if !keep {
			continue
		}
		nt := *t
		nt.Name = name
		p.Tensors = append(p.Tensors, nt)
		p.sources = append(p.sources, t)
	}
	for _, bt := range blockSized[arch] {
		i := slices.IndexFunc(p.Tensors, func(t ModelTensor) bool { return t.Name == bt.name })
		if i < 0 {
			continue
		}
		info, data, err := cutBlocks(m, p.sources[i], bt.dim, bm)
		if err != nil {
			return nil, err
		}
		p.Tensors[i].TensorInfo = info
		if p.cut == nil {
			p.cut = map[string]*io.SectionReader{}
		}
		p.cut[p.sources[i].Name] = data
	}
	return p, nil
}

// sameBlockLayout refuses a forced removal after which a kept block sits at
// an index where llama.cpp expects other tensors (names or shapes): in
// index-pattern architectures the loader asks each index for the tensors of
// its kind (qwen3next's linear-attention vs attention blocks, llama4's dense
// vs MoE blocks), and such a file does not load.
func sameBlockLayout(m *Model, bm *BlockMap, perr *PatternError) error {
	layout := map[int]map[string]string{}
	for _, t := range m.Tensors {
		if b, rest, ok, _ := SplitBlockName(t.Name); ok {
			if layout[b] == nil {
				layout[b] = map[string]string{}
			}
			layout[b][rest] = fmt.Sprint(t.Dims)
		}
	}
	for _, b := range bm.Kept() {
		to := bm.NewIndex(b)
		if to == b || maps.Equal(layout[b], layout[to]) {
			continue
		}
		return fmt.Errorf("%s: removing %s moves block %d to index %d, where %s's loader expects the tensors of another kind of block (%s), so llama.cpp would not load the file; this is refused even when forced. Removing %s keeps the pattern: %w",
			perr.Model, FormatBlockList(perr.Removed), b, to, perr.Architecture, perr.What, perr.valid(), ErrIndexPattern)
	}
	return nil
}

// withCount returns an integer value of the same type holding n.
func withCount(v Value, n int) Value {
	v.bits = uint64(n)
	if sz := v.typ.scalarSize(); sz < 8 {
		v.bits &= 1<<(8*sz) - 1
	}
	return v
}

// Outputs are the files a plan writes: one, or one per source shard with keepSplit.
func (p *Plan) Outputs(out string, keepSplit bool) []string {
	n := len(p.Model.Shards)
	if !keepSplit || n == 1 {
		return []string{out}
	}
	prefix := strings.TrimSuffix(out, ".gguf")
	if sm := splitName.FindStringSubmatch(filepath.Base(out)); sm != nil {
		prefix = filepath.Join(filepath.Dir(out), sm[1])
	}
	paths := make([]string, n)
	for i := range paths {
		paths[i] = SplitPath(prefix, i, n)
	}
	return paths
}

// fileParts is what goes into one output file.
type fileParts struct {
	kvs     []KV
	tensors []WriterTensor
}

func (p *Plan) parts(keepSplit bool) []fileParts {
	m := p.Model
	if !keepSplit || len(m.Shards) == 1 {
		var fp fileParts
		for _, kv := range p.KV {
			if len(m.Shards) > 1 && strings.HasPrefix(kv.Key, "split.") {
				continue
			}
			fp.kvs = append(fp.kvs, kv)
		}
		for i, t := range p.Tensors {
			fp.tensors = append(fp.tensors, WriterTensor{t.TensorInfo, p.data(i)})
		}
		return []fileParts{fp}
	}
	parts := make([]fileParts, len(m.Shards))
	for i, t := range p.Tensors {
		s := t.Shard
		parts[s].tensors = append(parts[s].tensors, WriterTensor{t.TensorInfo, p.data(i)})
	}
	for i := range parts {
		kvs := p.KV
		if i > 0 {
			kvs = m.Shards[i].KV
		}
		for _, kv := range kvs {
			if kv.Key == KeySplitTensorsCount {
				kv.Value = withCount(kv.Value, len(p.Tensors))
			}
			parts[i].kvs = append(parts[i].kvs, kv)
		}
	}
	return parts
}

// Size is the total size of the files the plan writes.
func (p *Plan) Size(keepSplit bool) (int64, error) {
	var total int64
	for _, fp := range p.parts(keepSplit) {
		infos := make([]TensorInfo, len(fp.tensors))
		for i, t := range fp.tensors {
			infos[i] = t.Info
		}
		l, err := ComputeLayout(fp.kvs, infos)
		if err != nil {
			return 0, err
		}
		total += l.Size
	}
	return total, nil
}

// Write writes the pruned model to out (or to its shards with keepSplit).
// Every file goes through a temporary file in the output's folder, is re-read
// and checked against the plan, synced, and only then renamed into place;
// nothing is written over an input file.
func (p *Plan) Write(out string, keepSplit bool) ([]string, error) {
	paths := p.Outputs(out, keepSplit)
	for _, path := range paths {
		if p.Model.SameFile(path) {
			return nil, fmt.Errorf("%s: output would overwrite an input file", path)
		}
	}
	parts := p.parts(keepSplit)
	version := p.Model.Shards[0].Version
	return paths, atomicfile.WriteSet(paths, func(i int, f *os.File) error {
		l, err := Write(f, version, parts[i].kvs, parts[i].tensors)
		if err != nil {
			return fmt.Errorf("%s: %w", paths[i], err)
		}
		return verifyWritten(paths[i], f, l, parts[i])
	})
}

// WriteFile writes the pruned model as one file into f, an open, empty
// file that the caller owns (an intermediate result; Write is for outputs),
// and checks what it wrote.
func (p *Plan) WriteFile(f *os.File) error {
	fp := p.parts(false)[0]
	l, err := Write(f, p.Model.Shards[0].Version, fp.kvs, fp.tensors)
	if err != nil {
		return fmt.Errorf("%s: %w", f.Name(), err)
	}
	return verifyWritten(f.Name(), f, l, fp)
}

// verifyWritten re-reads a written file and checks it holds what was planned.
func verifyWritten(path string, f *os.File, l *Layout, fp fileParts) error {
	got, err := NewFile(f, l.Size)
	if err != nil {
		return fmt.Errorf("%s: written file does not read back: %w", path, err)
	}
	if len(got.KV) != len(fp.kvs) || len(got.Tensors) != len(fp.tensors) {
		return fmt.Errorf("%s: written file has %d keys and %d tensors, want %d and %d", path, len(got.KV), len(got.Tensors), len(fp.kvs), len(fp.tensors))
	}
	for i, t := range got.Tensors {
		want := fp.tensors[i].Info
		if t.Name != want.Name || t.Type != want.Type || t.Size != want.Size || t.Offset != l.Offsets[i] {
			return fmt.Errorf("%s: written tensor %d is %q (%v, %d bytes at %d), want %q", path, i, t.Name, t.Type, t.Size, t.Offset, want.Name)
		}
	}
	return nil
}

// MaxBlockIndex bounds the indices ParseBlockList accepts: no model has
// that many blocks (llama.cpp takes 512), and a bound keeps a hostile list
// from taking memory and time (the fuzz target's inputs stay cheap).
const MaxBlockIndex = 1 << 12

// ParseBlockList parses "3,5-7" into sorted, unique block indices.
func ParseBlockList(s string) ([]int, error) {
	type span struct{ lo, hi int }
	var spans []span
	for _, part := range strings.Split(s, ",") {
		part = strings.TrimSpace(part)
		if part == "" {
			return nil, fmt.Errorf("block list %q: empty item", s)
		}
		lo, hi, isRange := strings.Cut(part, "-")
		a, err1 := strconv.Atoi(strings.TrimSpace(lo))
		b := a
		var err2 error
		if isRange {
			b, err2 = strconv.Atoi(strings.TrimSpace(hi))
		}
		if err1 != nil || err2 != nil || a < 0 || b < a {
			return nil, fmt.Errorf("block list %q: %q is not an index or an ascending range like 5-7", s, part)
		}
		if b >= MaxBlockIndex {
			return nil, fmt.Errorf("block list %q: block %d is past any model's blocks (at most %d)", s, b, MaxBlockIndex-1)
		}
		spans = append(spans, span{a, b})
	}
	// Merge the spans before expanding them: the result is at most
	// MaxBlockIndex indices, however many items the list has.
	sort.Slice(spans, func(i, j int) bool { return spans[i].lo < spans[j].lo })
	var out []int
	next := 0 // the lowest index not yet in out
	for _, sp := range spans {
		for i := max(sp.lo, next); i <= sp.hi; i++ {
			out = append(out, i)
		}
		next = max(next, sp.hi+1)
	}
	return out, nil
}

// FormatBlockList writes sorted indices compactly: [3 5 6 7] is "3,5-7".
func FormatBlockList(blocks []int) string {
	var parts []string
	for i := 0; i < len(blocks); {
		j := i
		for j+1 < len(blocks) && blocks[j+1] == blocks[j]+1 {
			j++
		}
		if j > i {
			parts = append(parts, fmt.Sprintf("%d-%d", blocks[i], blocks[j]))
		} else {
			parts = append(parts, strconv.Itoa(blocks[i]))
		}
		i = j + 1
	}
	return strings.Join(parts, ",")
}

// MTPBlocks are the multi-token-prediction blocks of a model of n blocks
// ({arch}.nextn_predict_layers at the end), which cannot be removed.
func MTPBlocks(m *Model, n int) []int {
	k := archInt(m, "nextn_predict_layers", 0)
	var out []int
	for b := max(0, n-k); b < n; b++ {
		out = append(out, b)
	}
	return out
}

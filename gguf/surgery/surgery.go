// Package surgery plans and writes block removals: which tensors go, how
// the rest are renamed, which metadata changes (block counts, per-layer
// arrays, leading counts, pinned defaults, block-sized tensors), and the
// streaming, atomic, verified rewrite that copies every kept tensor's bytes
// unchanged. What llama.cpp requires of each architecture comes from
// llamacpp/arch.
package surgery

import (
	"bytes"
	"fmt"
	"io"
	"iter"
	"maps"
	"os"
	"slices"
	"sort"
	"strings"

	"github.com/ggufprune/ggufprune/gguf"
	"github.com/ggufprune/ggufprune/gguf/blocks"
	"github.com/ggufprune/ggufprune/internal/atomicfile"
	"github.com/ggufprune/ggufprune/llamacpp/arch"
)

// Sharding is how the plan of a split model is written.
type Sharding int

const (
	OneFile   Sharding = iota // one file, whatever the input's shards
	KeepSplit                 // as many shards as the input, named like them
)

// Options say how a removal is planned.
type Options struct {
	// Force removes blocks even where the architecture derives block kinds
	// from the index (the plan's Broken then says what changed); removals
	// llama.cpp would not load or would abort on are refused all the same.
	Force bool
	// Experts are experts to remove, by block (input numbering): the
	// stacked expert tensors, the router's rows and the per-expert biases
	// keep only the others. llama.cpp has one expert count, so every
	// mixture-of-experts block must lose as many.
	Experts map[int][]int
}

// Plan is block surgery worked out and checked, ready to write.
type Plan struct {
	Model            *gguf.Model
	Map              *blocks.Map
	Removed          []int // old block indices, ascending
	BlockCountBefore int
	BlockCountAfter  int
	KV               []gguf.KV // the first shard's metadata after surgery

	// dropped are the positions in Model of the tensors of removed blocks,
	// ascending (the kept ones are the others, in order: fewer to hold),
	// and names the names the kept ones are written with where they change
	// (moved to another block; an empty name where they stay). Their infos
	// are made when asked for (Tensors, writing), so that a plan adds a few
	// bytes a tensor and the bytes of the new names to its model, not a
	// copy of each tensor (a header of 10^6 tensors is legal). The new
	// names are made once: the writer asks for each several times, and a
	// string each time would be garbage enough to let the heap grow to
	// twice its live size before a collection.
	dropped []uint32
	names   gguf.Names // one a kept tensor

	replaced map[string][]byte    // new data of kept tensors, by source name
	cut      map[string]cutTensor // block-sized global tensors without the removed blocks' slices, by name

	// Broken is set when a forced removal changes the kind of kept blocks
	// (an index-pattern architecture): llama.cpp loads the file, but its
	// blocks do not compute what they did.
	Broken *arch.PatternError
	// KindsKept, with Broken, are the original's sliding-window kinds of
	// every block (arch.SWAKinds): the plan writes the kept blocks' kinds
	// to {arch}.attention.sliding_window_pattern, which the newer llama.cpp
	// reads instead of the period, so that there the kept blocks compute
	// as in the original.
	KindsKept []bool
	// Warnings say where the output may compute otherwise than the
	// original in some llama.cpp (see arch.PinnedDefaults).
	Warnings []string
}

// cutTensor is a block-sized tensor as written: its new shape and data.
type cutTensor struct {
	info gguf.TensorInfo
	data *io.SectionReader
}

// ReplaceData makes the plan write new data for a kept tensor, named as in
// the input: the same type and shape, so the same size (healing rewrites
// the tensors it folds into). Every other tensor is still copied unchanged.
func (p *Plan) ReplaceData(name string, data []byte) error {
	src, ok := p.Model.Tensor(name)
	if _, keep, _ := p.Map.Rename(name); !ok || !keep {
		return fmt.Errorf("%s: tensor %s is not kept by the plan", p.Model.Name(), name)
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

// Tensors yields the infos of the kept tensors as the plan writes them:
// renamed, in source order, block-sized ones with their new shape. They are
// made one at a time (a plan holds only the dropped tensors' positions and
// the new names).
func (p *Plan) Tensors() iter.Seq[gguf.TensorInfo] {
	return func(yield func(gguf.TensorInfo) bool) {
		for k := range p.names.Len() {
			if !yield(p.info(k)) {
				return
			}
		}
	}
}

// pos is the position in Model of kept tensor k: k and the dropped tensors
// before it. dropped[j]-j, the kept tensors before dropped[j], does not
// decrease along dropped, so the first j with dropped[j]-j > k is how many
// dropped tensors come before kept tensor k.
func (p *Plan) pos(k int) int {
	return k + sort.Search(len(p.dropped), func(j int) bool { return int(p.dropped[j])-j > k })
}

// info is the info kept tensor k is written with.
func (p *Plan) info(k int) gguf.TensorInfo {
	t := p.Model.TensorAt(p.pos(k)).TensorInfo
	if c, ok := p.cut[t.Name]; ok {
		return c.info
	}
	if name := p.names.At(k); name != "" {
		t.Name = name
	}
	return t
}

// data sets view to the bytes kept tensor k is written from.
func (p *Plan) data(k int, view *io.SectionReader) {
	src := p.Model.TensorAt(p.pos(k))
	if d, ok := p.replaced[src.Name]; ok {
		*view = *io.NewSectionReader(bytes.NewReader(d), 0, int64(len(d)))
	} else if c, ok := p.cut[src.Name]; ok {
		*view = *io.NewSectionReader(c.data.Outer()) // a view of its own, with the slices reader as its source
	} else {
		*view = *p.Model.TensorData(src)
	}
}

// planTensors are kept tensors k of a plan, from <= k < to, that go into
// one file, handed to the writer one at a time. Their data is one view,
// set again for each tensor (the writer is done with a view before it asks
// for the next): a view each would be garbage of 48 bytes a tensor.
type planTensors struct {
	p        *Plan
	from, to int
	view     *io.SectionReader
}

func (ts planTensors) Len() int                   { return ts.to - ts.from }
func (ts planTensors) Info(i int) gguf.TensorInfo { return ts.p.info(ts.from + i) }
func (ts planTensors) Data(i int) *io.SectionReader {
	ts.p.data(ts.from+i, ts.view)
	return ts.view
}

// SourceName is the name tensor i has in the input, for the writer's errors
// about reading its data.
func (ts planTensors) SourceName(i int) string {
	return ts.p.Model.TensorAt(ts.p.pos(ts.from + i)).Name
}

// PlanRemoval works out the removal of the given blocks: which tensors go,
// how the rest are renamed, and the new metadata. It refuses removing every
// block, indices out of range, multi-token-prediction blocks, and (unless
// o.Force) removals that break an architecture's index-derived layer
// pattern (an *arch.PatternError).
func PlanRemoval(m *gguf.Model, remove []int, o Options) (*Plan, error) {
	name, err := m.Architecture()
	if err != nil {
		return nil, err
	}
	n, err := m.BlockCount()
	if err != nil {
		return nil, err
	}
	bm, err := blocks.NewMap(n, remove)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", m.Name(), err)
	}
	p := &Plan{Model: m, Map: bm, Removed: bm.Removed(), BlockCountBefore: n, BlockCountAfter: bm.After()}
	if len(p.Removed) == 0 && len(o.Experts) == 0 {
		return nil, fmt.Errorf("%s: no blocks to remove", m.Name())
	}
	if bm.After() == 0 {
		return nil, fmt.Errorf("%s: removing all %d blocks would leave no model", m.Name(), n)
	}
	if mtp := arch.MTPBlocks(m, n); len(mtp) > 0 {
		for _, b := range p.Removed {
			if b >= mtp[0] {
				return nil, fmt.Errorf("%s: block %d is a multi-token-prediction block (%s.%s = %d: blocks %s) and cannot be removed", m.Name(), b, name, gguf.KeyNextNPredictLayers, len(mtp), blocks.FormatList(mtp))
			}
		}
	}
	if why := arch.UncheckedRules(name); why != "" {
		if !o.Force {
			return nil, fmt.Errorf("%s: %s; removing blocks could change what kept blocks compute or make the file not load (--force removes them anyway)", m.Name(), why)
		}
		p.Warnings = append(p.Warnings, fmt.Sprintf("forced: %s; check the output in the llama.cpp you run", why))
	}
	if len(p.Removed) > 0 {
		if err := arch.CheckRemoval(m, bm); err != nil {
			return nil, fmt.Errorf("%s: removing %s: %w", m.Name(), blocks.FormatList(p.Removed), err)
		}
	}
	if perr := arch.BrokenPattern(m, bm); perr != nil {
		if !o.Force {
			return nil, perr
		}
		if err := sameBlockLayout(m, bm, perr); err != nil {
			return nil, err
		}
		p.Broken = perr
		p.KindsKept = arch.SWAKinds(m)
	}

	// Metadata: block_count, the counts of leading blocks of a kind, and
	// every per-layer array under the arch prefix.
	kept := bm.Kept()
	// Newer llama.cpp reads some per-layer arrays (sliding-window kinds,
	// step35's clamps) over the main stack only, without the trailing
	// multi-token-prediction blocks, which are never removed.
	mtp := len(arch.MTPBlocks(m, n))
	keptMain := kept[:len(kept)-mtp]
	prefix := name + "."
	for _, kv := range m.KV() {
		switch {
		case p.KindsKept != nil && kv.Key == prefix+arch.KeySlidingWindowPattern:
			continue // a period, replaced by the kept blocks' kinds below
		case kv.Key == prefix+gguf.KeyBlockCount:
			kv.Value = kv.Value.WithCount(len(kept))
		case arch.LeadingCount(strings.TrimPrefix(kv.Key, prefix)) && strings.HasPrefix(kv.Key, prefix):
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
				kv.Value = kv.Value.WithCount(int(lead) - gone)
			}
		case (strings.HasPrefix(kv.Key, prefix) && arch.PerLayer(strings.TrimPrefix(kv.Key, prefix))) || arch.UnprefixedPerLayer(name, kv.Key):
			if a, ok := kv.Value.Array(); ok && a.Len() == n {
				kv.Value = a.Slice(kept)
			} else if ok && mtp > 0 && a.Len() == n-mtp {
				kv.Value = a.Slice(keptMain)
			}
		}
		p.KV = append(p.KV, kv)
	}
	if p.KindsKept != nil {
		kinds := make([]gguf.Value, len(kept))
		for i, b := range kept {
			kinds[i] = gguf.Bool(p.KindsKept[b])
		}
		v, err := gguf.NewArray(gguf.TypeBool, kinds)
		if err != nil {
			return nil, err
		}
		p.KV = append(p.KV, gguf.KV{Key: prefix + arch.KeySlidingWindowPattern, Value: v})
	}
	newExperts, err := checkExperts(m, name, bm, o.Experts)
	if err != nil {
		return nil, err
	}
	if newExperts > 0 {
		for i, kv := range p.KV {
			if kv.Key == prefix+gguf.KeyExpertCount {
				p.KV[i].Value = kv.Value.WithCount(newExperts)
			}
		}
	}
	pinned, warnings := arch.PinnedDefaults(m, n)
	p.KV = append(p.KV, pinned...)
	p.Warnings = append(p.Warnings, warnings...)

	// Tensors: drop removed blocks, renumber the rest. A first pass checks
	// every name and counts what the plan keeps, a second keeps it, in
	// tables of exactly their size (growing them would copy each and hold
	// up to twice its room at the peak).
	var nKept int
	var nameBytes uint64
	var buf []byte
	for _, t := range m.AllTensors() {
		var keep bool
		buf, keep, _, err = bm.AppendRename(buf[:0], t.Name)
		if err != nil {
			return nil, fmt.Errorf("%s: tensor %w (%s)", m.Name(), err, prefix+gguf.KeyBlockCount)
		}
		if keep {
			nKept++
			nameBytes += uint64(len(buf))
		}
	}
	p.dropped = make([]uint32, 0, m.NumTensors()-nKept)
	p.names.Reserve(nKept, nameBytes)
	for i, t := range m.AllTensors() {
		var keep bool
		buf, keep, _, _ = bm.AppendRename(buf[:0], t.Name)
		if keep {
			p.names.Add(buf)
		} else {
			p.dropped = append(p.dropped, uint32(i)) // a model has at most 2^32-2 tensors (gguf.NewModel)
		}
	}
	for b, gone := range o.Experts {
		if err := p.cutExperts(b, gone, newExperts+len(gone)); err != nil {
			return nil, err
		}
	}
	for _, bt := range arch.BlockSized(name) {
		t, ok := m.Tensor(bt.Name)
		if !ok {
			continue
		}
		if _, keep, _ := bm.Rename(t.Name); !keep {
			continue
		}
		info, data, err := cutBlocks(m, t, bt.Dim, bm)
		if err != nil {
			return nil, err
		}
		if p.cut == nil {
			p.cut = map[string]cutTensor{}
		}
		p.cut[t.Name] = cutTensor{info, data}
	}
	return p, nil
}

// sameBlockLayout refuses a forced removal after which a kept block sits at
// an index where llama.cpp expects other tensors (names or shapes): in
// index-pattern architectures the loader asks each index for the tensors of
// its kind (qwen3next's linear-attention vs attention blocks, llama4's dense
// vs MoE blocks), and such a file does not load.
func sameBlockLayout(m *gguf.Model, bm *blocks.Map, perr *arch.PatternError) error {
	layout := map[int]map[string]string{}
	for _, t := range m.AllTensors() {
		if b, rest, ok, _ := blocks.Split(t.Name); ok {
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
			perr.Model, blocks.FormatList(perr.Removed), b, to, perr.Architecture, perr.What, perr.ValidRemovals(), arch.ErrIndexPattern)
	}
	return nil
}

// Outputs are the files a plan writes: one, or one per source shard when
// it keeps the split.
func (p *Plan) Outputs(out string, s Sharding) []string {
	n := len(p.Model.Shards)
	if s != KeepSplit || n == 1 {
		return []string{out}
	}
	prefix, ok := gguf.SplitPrefix(out)
	if !ok {
		prefix = strings.TrimSuffix(out, ".gguf")
	}
	paths := make([]string, n)
	for i := range paths {
		paths[i] = gguf.SplitPath(prefix, i, n)
	}
	return paths
}

// fileParts is what goes into one output file.
type fileParts struct {
	kvs     []gguf.KV
	tensors planTensors
}

func (p *Plan) parts(s Sharding) []fileParts {
	m := p.Model
	if s != KeepSplit || len(m.Shards) == 1 {
		var fp fileParts
		for _, kv := range p.KV {
			if len(m.Shards) > 1 && strings.HasPrefix(kv.Key, "split.") {
				continue
			}
			fp.kvs = append(fp.kvs, kv)
		}
		fp.tensors = planTensors{p, 0, p.names.Len(), new(io.SectionReader)}
		return []fileParts{fp}
	}
	// The model's tensors are shard by shard, and so are the kept ones: each
	// shard's are a run of them.
	parts := make([]fileParts, len(m.Shards))
	k := 0
	for i := range parts {
		from := k
		for k < p.names.Len() && m.TensorAt(p.pos(k)).Shard == i {
			k++
		}
		parts[i].tensors = planTensors{p, from, k, new(io.SectionReader)}
	}
	for i := range parts {
		kvs := p.KV
		if i > 0 {
			kvs = m.Shards[i].KV
		}
		for _, kv := range kvs {
			if kv.Key == gguf.KeySplitTensorsCount {
				kv.Value = kv.Value.WithCount(p.names.Len())
			}
			parts[i].kvs = append(parts[i].kvs, kv)
		}
	}
	return parts
}

// Size is the total size of the files the plan writes.
func (p *Plan) Size(s Sharding) (int64, error) {
	var total int64
	for _, fp := range p.parts(s) {
		l, err := gguf.LayoutOf(fp.kvs, fp.tensors)
		if err != nil {
			return 0, err
		}
		total += l.Size
	}
	return total, nil
}

// Write writes the pruned model to out (or to its shards with KeepSplit).
// Every file goes through a temporary file in the output's folder, is re-read
// and checked against the plan, synced, and only then renamed into place;
// nothing is written over an input file.
func (p *Plan) Write(out string, s Sharding) ([]string, error) {
	paths := p.Outputs(out, s)
	for _, path := range paths {
		if p.Model.SameFile(path) {
			return nil, fmt.Errorf("%s: output would overwrite an input file", path)
		}
	}
	parts := p.parts(s)
	version := p.Model.Shards[0].Version
	return paths, atomicfile.WriteSet(paths, func(i int, f *os.File) error {
		l, err := gguf.WriteFrom(f, version, parts[i].kvs, parts[i].tensors)
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
	fp := p.parts(OneFile)[0]
	l, err := gguf.WriteFrom(f, p.Model.Shards[0].Version, fp.kvs, fp.tensors)
	if err != nil {
		return fmt.Errorf("%s: %w", f.Name(), err)
	}
	return verifyWritten(f.Name(), f, l, fp)
}

// verifyWritten re-reads a written file and checks it holds what was planned.
func verifyWritten(path string, f *os.File, l *gguf.Layout, fp fileParts) error {
	if err := gguf.CheckWritten(f, l, fp.kvs, fp.tensors); err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	return nil
}

// CheckLlama checks what the plan would write against the rules of
// llama.cpp (arch.CheckFile): a pruned file llama.cpp would abort on is
// refused before it is written.
func (p *Plan) CheckLlama() error {
	return arch.CheckFile("the pruned "+p.Model.Name(), p.KV, p.Tensors(), arch.Load)
}

// cutBlocks plans the removal of the removed blocks' slices of a
// block-sized global tensor: its new shape and a reader of its new data.
func cutBlocks(m *gguf.Model, t gguf.ModelTensor, dim int, bm *blocks.Map) (gguf.TensorInfo, *io.SectionReader, error) {
	n := bm.Before()
	info := t.TensorInfo
	if dim >= len(info.Dims) || info.Dims[dim]%uint64(n) != 0 {
		return info, nil, fmt.Errorf("%s: tensor %s has shape %v, not a multiple of the %d blocks along dimension %d", m.Name(), t.Name, info.Dims, n, dim)
	}
	per := info.Dims[dim] / uint64(n) // values (dim 0) or rows of one block's slice
	// One block's slice is a run of bytes, repeated for every index of the
	// dimensions above dim.
	var chunk uint64
	if dim == 0 {
		bs := info.Type.BlockSize()
		if bs == 0 || per%bs != 0 {
			return info, nil, fmt.Errorf("%s: tensor %s: a block's slice of %d values does not fill whole %v blocks", m.Name(), t.Name, per, info.Type)
		}
		chunk = per / bs * info.Type.BlockBytes()
	} else {
		chunk = info.Size / info.Dims[dim] * per
		for _, d := range info.Dims[dim+1:] {
			chunk /= d
		}
	}
	dims := slices.Clone(info.Dims)
	dims[dim] = per * uint64(bm.After())
	info.Dims = dims
	info.Size = info.Size / uint64(n) * uint64(bm.After())
	g := &blockSlices{src: m.TensorData(t), name: m.Shards[t.Shard].Name(), chunk: int64(chunk), n: n, kept: bm.Kept()}
	return info, io.NewSectionReader(g, 0, int64(info.Size)), nil
}

// blockSlices reads a block-sized tensor without the removed blocks'
// slices: its data is chunks of one block's slice each, n per period, of
// which the kept ones are read in order.
type blockSlices struct {
	src   *io.SectionReader
	name  string // of the file src reads
	chunk int64
	n     int
	kept  []int
}

// Name is the file the slices are read from, for the writer's errors.
func (g *blockSlices) Name() string { return g.name }

func (g *blockSlices) ReadAt(b []byte, off int64) (int, error) {
	done := 0
	for done < len(b) {
		o := off + int64(done)
		idx, within := o/g.chunk, o%g.chunk
		period, k := idx/int64(len(g.kept)), idx%int64(len(g.kept))
		src := (period*int64(g.n)+int64(g.kept[k]))*g.chunk + within
		m := min(int64(len(b)-done), g.chunk-within)
		r, err := g.src.ReadAt(b[done:done+int(m)], src)
		done += r
		if err != nil {
			return done, err
		}
	}
	return done, nil
}

// checkExperts checks an expert removal (experts by input block) and
// returns the new expert count (0: no experts removed). llama.cpp has one
// expert count for every block (load_hparams: {arch}.expert_count), so each
// block with a router must lose as many, and routes each token to
// expert_used_count of them, which must remain.
func checkExperts(m *gguf.Model, arch string, bm *blocks.Map, experts map[int][]int) (int, error) {
	if len(experts) == 0 {
		return 0, nil
	}
	kv := gguf.ArchKV{Getter: m, Arch: arch}
	n := kv.Int(gguf.KeyExpertCount, 0)
	if n == 0 {
		return 0, fmt.Errorf("%s: %s has no experts (no %s)", m.Name(), arch, kv.Key(gguf.KeyExpertCount))
	}
	groups := max(kv.Int("expert_group_count", 0), 1)
	if n%groups != 0 {
		return 0, fmt.Errorf("%s: its %d experts do not split into %d equal groups (%s)", m.Name(), n, groups, kv.Key("expert_group_count"))
	}
	gone := -1
	for b := range bm.Before() {
		_, router := m.Tensor(blocks.Name(b, "ffn_gate_inp.weight"))
		list, listed := experts[b]
		switch {
		case listed && !router:
			return 0, fmt.Errorf("%s: block %d has no router (ffn_gate_inp): it is not a mixture-of-experts block", m.Name(), b)
		case listed && bm.NewIndex(b) < 0:
			return 0, fmt.Errorf("%s: block %d is removed; its experts cannot be removed too", m.Name(), b)
		case router && bm.NewIndex(b) >= 0 && !listed:
			return 0, fmt.Errorf("%s: block %d is a mixture-of-experts block with no experts to remove; llama.cpp has one expert count, so every such block must lose as many", m.Name(), b)
		case !listed:
			continue
		}
		seen := map[int]bool{}
		for _, e := range list {
			if e < 0 || e >= n || seen[e] {
				return 0, fmt.Errorf("%s: block %d: expert %d is not one of the %d, or is given twice", m.Name(), b, e, n)
			}
			seen[e] = true
		}
		if groups > 1 {
			// Experts are grouped by index (llama-graph.cpp build_moe_ffn
			// reshapes them to [n/groups, groups]): every group must lose
			// as many to stay groups of equal size.
			per := make([]int, groups)
			for _, e := range list {
				per[e/(n/groups)]++
			}
			for g, c := range per {
				if c != per[0] {
					return 0, fmt.Errorf("%s: block %d loses %d experts of group 0 and %d of group %d; the %d expert groups (%s) must each lose as many", m.Name(), b, per[0], c, g, groups, kv.Key("expert_group_count"))
				}
			}
		}
		if gone >= 0 && len(list) != gone {
			return 0, fmt.Errorf("%s: block %d loses %d experts, another block %d; llama.cpp has one expert count, so every block must lose as many", m.Name(), b, len(list), gone)
		}
		gone = len(list)
	}
	left := n - gone
	used := kv.Int(gguf.KeyExpertUsedCount, 0)
	if left < max(used, 1) {
		return 0, fmt.Errorf("%s: removing %d of %d experts leaves %d, fewer than the %d each token is routed to (%s)", m.Name(), gone, n, left, used, kv.Key(gguf.KeyExpertUsedCount))
	}
	if groups > 1 {
		// build_moe_ffn scores each group by its top 2 experts
		// (ggml_argsort_top_k(…, 2) asserts the group holds 2), then
		// routes each token among the experts of expert_group_used_count
		// groups.
		perGroup := left / groups
		if perGroup < 2 {
			return 0, fmt.Errorf("%s: removing %d of %d experts leaves %d in each of the %d groups (%s); llama.cpp scores a group by its 2 best experts and aborts on fewer", m.Name(), gone, n, perGroup, groups, kv.Key("expert_group_count"))
		}
		if gu := kv.Int("expert_group_used_count", 0); gu > 0 && used > gu*perGroup {
			return 0, fmt.Errorf("%s: removing %d of %d experts leaves %d in each group; the %d groups a token uses (%s) hold fewer than the %d it is routed to (%s)", m.Name(), gone, n, perGroup, gu, kv.Key("expert_group_used_count"), used, kv.Key(gguf.KeyExpertUsedCount))
		}
	}
	return left, nil
}

// cutExperts plans the tensors of block b (input numbering) without the
// experts gone: the stacked expert tensors (ffn_*_exps, and their biases),
// the router's rows (ffn_gate_inp) and biases, and the selection bias
// (exp_probs_b). The expert axis is the outermost one of each (ggml: the
// last dimension), so an expert is a run of bytes: they are copied, never
// converted.
func (p *Plan) cutExperts(b int, gone []int, experts int) error {
	m := p.Model
	for _, t := range m.AllTensors() {
		tb, rest, ok, _ := blocks.Split(t.Name)
		if !ok || tb != b || !(strings.Contains(rest, "_exps.") || strings.HasPrefix(rest, "ffn_gate_inp.") || strings.HasPrefix(rest, "exp_probs_b.")) {
			continue
		}
		last := len(t.Dims) - 1
		n := t.Dims[last]
		if n != uint64(experts) {
			return fmt.Errorf("%s: tensor %s has shape %v: its last dimension is not the %d experts", m.Name(), t.Name, t.Dims, experts)
		}
		if last == 0 && t.Type.BlockSize() != 1 {
			return fmt.Errorf("%s: tensor %s holds one value per expert in %v, whose values are not separable", m.Name(), t.Name, t.Type)
		}
		if t.Size%n != 0 {
			return fmt.Errorf("%s: tensor %s of %d bytes does not hold %d equal experts", m.Name(), t.Name, t.Size, n)
		}
		var kept []int
		for e := range int(n) {
			if !slices.Contains(gone, e) {
				kept = append(kept, e)
			}
		}
		info := t.TensorInfo
		if name, _, _ := p.Map.Rename(t.Name); name != "" {
			info.Name = name
		}
		dims := slices.Clone(info.Dims)
		dims[last] = uint64(len(kept))
		info.Dims = dims
		info.Size = t.Size / n * uint64(len(kept))
		g := &blockSlices{src: m.TensorData(t), name: m.Shards[t.Shard].Name(), chunk: int64(t.Size / n), n: int(n), kept: kept}
		if p.cut == nil {
			p.cut = map[string]cutTensor{}
		}
		p.cut[t.Name] = cutTensor{info, io.NewSectionReader(g, 0, int64(info.Size))}
	}
	return nil
}

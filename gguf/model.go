package gguf

import (
	"fmt"
	"io"
	"iter"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
)

// Split metadata keys (llama.cpp's gguf-split).
const (
	KeySplitNo           = "split.no"
	KeySplitCount        = "split.count"
	KeySplitTensorsCount = "split.tensors.count"
)

var splitName = regexp.MustCompile(`^(.*)-(\d{5})-of-(\d{5})\.gguf$`)

// SplitPath is the name of shard i (0-based) of n for a split set with the given prefix.
func SplitPath(prefix string, i, n int) string {
	return fmt.Sprintf("%s-%05d-of-%05d.gguf", prefix, i+1, n)
}

// Model is the logical model of a GGUF file or of a split set, made by
// OpenModel or NewModel. Its tensors are its shards', in order, handed out
// one at a time (NumTensors, TensorAt, AllTensors): the model holds no
// copy of them, nor anything per tensor.
type Model struct {
	Shards []*File

	first []int // per shard, the position of its first tensor in the model; then the count of all
}

// ModelTensor is a tensor of a model and the shard its data is in.
type ModelTensor struct {
	TensorInfo
	Shard int
}

// OpenModel opens a GGUF file; a path named NAME-0000i-of-0000n.gguf opens
// the whole split set (any shard's name may be given).
func OpenModel(path string) (*Model, error) {
	m := &Model{}
	paths := []string{path}
	if sm := splitName.FindStringSubmatch(filepath.Base(path)); sm != nil {
		n, _ := strconv.Atoi(sm[3])
		if n < 1 {
			return nil, fmt.Errorf("%s: split count 0 in the file name", path)
		}
		prefix := filepath.Join(filepath.Dir(path), sm[1])
		paths = paths[:0]
		for i := 0; i < n; i++ {
			paths = append(paths, SplitPath(prefix, i, n))
		}
	}
	for _, p := range paths {
		f, err := Open(p)
		if err != nil {
			m.Close()
			return nil, err
		}
		m.Shards = append(m.Shards, f)
	}
	if err := m.init(); err != nil {
		m.Close()
		return nil, err
	}
	return m, nil
}

// NewModel makes a model of already opened shards, in order.
func NewModel(shards ...*File) (*Model, error) {
	m := &Model{Shards: shards}
	return m, m.init()
}

func (m *Model) init() error {
	n := len(m.Shards)
	m.first = make([]int, n+1)
	for i, f := range m.Shards {
		m.first[i+1] = m.first[i] + f.NumTensors()
		if n == 1 {
			if v, ok := f.Get(KeySplitCount); ok {
				if c, _ := v.Int(); c > 1 {
					return fmt.Errorf("%s: shard of a %d-file split set; open it by its NAME-0000i-of-%05d.gguf name", f.name, c, c)
				}
			}
			continue
		}
		no, okNo := IntKey(f, KeySplitNo)
		cnt, okCnt := IntKey(f, KeySplitCount)
		if !okNo || !okCnt || no != int64(i) || cnt != int64(n) {
			return fmt.Errorf("%s: split keys say shard %d of %d, the name says %d of %d", f.name, no, cnt, i+1, n)
		}
	}
	total := m.first[n]
	if total > maxTensors {
		// Positions in a model are 32-bit where one is kept per tensor (a plan's).
		return fmt.Errorf("%s: %w: %d tensors in %d shards (at most %d)", m.Name(), ErrUnsupported, total, n, uint64(maxTensors))
	}
	if n > 1 {
		want, ok := IntKey(m.Shards[0], KeySplitTensorsCount)
		if !ok || want != int64(total) {
			return fmt.Errorf("%s: split.tensors.count is %d but the %d shards hold %d tensors", m.Shards[0].name, want, n, total)
		}
		// Each shard's names are unique (NewFile); look each up in the
		// shards before it through their indexes.
		for s, f := range m.Shards {
			for _, t := range f.AllTensors() {
				for _, g := range m.Shards[:s] {
					if _, ok := g.tensors.find(t.Name); ok {
						return fmt.Errorf("%s: tensor %q is in two shards", f.name, t.Name)
					}
				}
			}
		}
	}
	return nil
}

// Close closes every shard.
func (m *Model) Close() error {
	var first error
	for _, f := range m.Shards {
		if err := f.Close(); err != nil && first == nil {
			first = err
		}
	}
	return first
}

// Name is the path of the first shard.
func (m *Model) Name() string { return m.Shards[0].name }

// KV is the model's metadata: the first shard's.
func (m *Model) KV() []KV { return m.Shards[0].KV }

// Get returns a metadata value of the first shard.
func (m *Model) Get(key string) (Value, bool) { return m.Shards[0].Get(key) }

// Size is the total size of the model's files.
func (m *Model) Size() int64 {
	var n int64
	for _, f := range m.Shards {
		n += f.Size
	}
	return n
}

// NumTensors is the number of tensors of the model, in all its shards.
func (m *Model) NumTensors() int { return m.first[len(m.first)-1] }

// TensorAt is tensor i of the model (0 <= i < NumTensors): the shards'
// tensors in order, shard by shard.
func (m *Model) TensorAt(i int) ModelTensor {
	s := m.shardOf(i)
	return ModelTensor{m.Shards[s].TensorAt(i - m.first[s]), s}
}

// shardOf is the shard of tensor i: the last whose first tensor is at or
// before i (shards without tensors are passed over).
func (m *Model) shardOf(i int) int {
	if len(m.Shards) == 1 {
		return 0
	}
	return sort.Search(len(m.Shards), func(s int) bool { return m.first[s+1] > i })
}

// AllTensors yields the position and the tensor of every tensor of the
// model, in order.
func (m *Model) AllTensors() iter.Seq2[int, ModelTensor] {
	return func(yield func(int, ModelTensor) bool) {
		for s, f := range m.Shards {
			for j, t := range f.AllTensors() {
				if !yield(m.first[s]+j, ModelTensor{t, s}) {
					return
				}
			}
		}
	}
}

// Tensor returns the tensor of a name, in constant time (through its
// shard's index).
func (m *Model) Tensor(name string) (ModelTensor, bool) {
	for s, f := range m.Shards {
		if i, ok := f.tensors.find(name); ok {
			return ModelTensor{f.TensorAt(i), s}, true
		}
	}
	return ModelTensor{}, false
}

// TensorData returns a view of a tensor's bytes.
func (m *Model) TensorData(t ModelTensor) *io.SectionReader {
	return m.Shards[t.Shard].TensorData(t.TensorInfo)
}

// Architecture is general.architecture.
func (m *Model) Architecture() (string, error) {
	v, ok := m.Get(KeyArchitecture)
	s, isStr := v.Str()
	if !ok || !isStr || s == "" {
		return "", fmt.Errorf("%s: general.architecture is missing or not a string", m.Name())
	}
	return s, nil
}

// BlockCount is {arch}.block_count.
func (m *Model) BlockCount() (int, error) {
	arch, err := m.Architecture()
	if err != nil {
		return 0, err
	}
	key := arch + "." + KeyBlockCount
	v, ok := m.Get(key)
	n, isInt := v.Int()
	if !ok || !isInt || n < 0 || n > 1<<20 {
		return 0, fmt.Errorf("%s: %s is missing or not a valid count (%v)", m.Name(), key, v)
	}
	if n == 0 {
		return 0, fmt.Errorf("%s: %s is 0: the model has no blocks", m.Name(), key)
	}
	return int(n), nil
}

// SameFile reports whether path names one of the model's files.
func (m *Model) SameFile(path string) bool {
	st, err := os.Stat(path)
	if err != nil {
		return false
	}
	for _, f := range m.Shards {
		if fi, err := os.Stat(f.name); err == nil && os.SameFile(fi, st) {
			return true
		}
	}
	return false
}

// SplitPrefix is the prefix of a split set's shard name: "dir/NAME" of
// "dir/NAME-00001-of-00003.gguf"; ok is false for another name.
func SplitPrefix(path string) (prefix string, ok bool) {
	if sm := splitName.FindStringSubmatch(filepath.Base(path)); sm != nil {
		return filepath.Join(filepath.Dir(path), sm[1]), true
	}
	return "", false
}

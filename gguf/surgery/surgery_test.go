package surgery_test

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"runtime"
	"slices"
	"strings"
	"testing"

	parser "github.com/gpustack/gguf-parser-go"

	"github.com/ggufprune/ggufprune/gguf"
	"github.com/ggufprune/ggufprune/gguf/blocks"
	"github.com/ggufprune/ggufprune/gguf/surgery"
	"github.com/ggufprune/ggufprune/internal/fixture"
	"github.com/ggufprune/ggufprune/llamacpp/arch"
)

// A pruned real model is read by an independent parser: block count, tensor
// names and offsets agree, and every kept tensor has its source's bytes.
func TestPruneReadByIndependentParser(t *testing.T) {
	for _, c := range []struct {
		model  string
		remove []int
	}{
		{"story16-f16.gguf", []int{3, 5, 6, 7}},
		{"story16-f16.gguf", []int{14}},
		{"stories260K.gguf", []int{1, 3}},
		{"TinyStories-656K-Q8_0.gguf", []int{1}},
	} {
		t.Run(c.model, func(t *testing.T) {
			src, err := gguf.OpenModel(fixture.Asset(t, "models/"+c.model))
			if err != nil {
				t.Fatal(err)
			}
			defer src.Close()
			n, _ := src.BlockCount()
			plan, err := surgery.PlanRemoval(src, c.remove, surgery.Options{})
			if err != nil {
				t.Fatal(err)
			}
			out := filepath.Join(t.TempDir(), "out.gguf")
			if _, err := plan.Write(out, surgery.OneFile); err != nil {
				t.Fatal(err)
			}
			size, _ := plan.Size(surgery.OneFile)
			if st, _ := os.Stat(out); st.Size() != size {
				t.Fatalf("file is %d bytes, plan said %d", st.Size(), size)
			}

			pf, err := parser.ParseGGUFFile(out)
			if err != nil {
				t.Fatalf("gguf-parser-go: %v", err)
			}
			if got := pf.Architecture().BlockCount; got != uint64(n-len(c.remove)) {
				t.Fatalf("gguf-parser-go block count %d, want %d", got, n-len(c.remove))
			}
			got, err := gguf.OpenModel(out)
			if err != nil {
				t.Fatal(err)
			}
			defer got.Close()
			if len(pf.TensorInfos) != got.NumTensors() {
				t.Fatalf("gguf-parser-go sees %d tensors, we %d", len(pf.TensorInfos), got.NumTensors())
			}
			if pf.TensorDataStartOffset != got.Shards[0].DataOffset {
				t.Fatalf("gguf-parser-go data section at %d, we %d", pf.TensorDataStartOffset, got.Shards[0].DataOffset)
			}
			for i, ti := range pf.TensorInfos {
				if gt := got.TensorAt(i); ti.Name != gt.Name || ti.Offset != gt.Offset {
					t.Fatalf("tensor %d: gguf-parser-go %s@%d, we %s@%d", i, ti.Name, ti.Offset, gt.Name, gt.Offset)
				}
			}

			// Map every output tensor back to its source and compare bytes.
			removed := map[int]bool{}
			for _, b := range c.remove {
				removed[b] = true
			}
			oldOf := map[int]int{}
			for b, k := 0, 0; b < n; b++ {
				if !removed[b] {
					oldOf[k] = b
					k++
				}
			}
			kept := 0
			for _, st := range src.AllTensors() {
				if b := blocks.Of(st.Name); b < 0 || !removed[b] {
					kept++
				}
			}
			if kept != got.NumTensors() {
				t.Fatalf("%d tensors written, %d kept", got.NumTensors(), kept)
			}
			for _, gt := range got.AllTensors() {
				name := gt.Name
				if b := blocks.Of(name); b >= 0 {
					name = fmt.Sprintf("blk.%d.%s", oldOf[b], strings.SplitN(name, ".", 3)[2])
				}
				st, ok := src.Tensor(name)
				if !ok {
					t.Fatalf("%s has no source %s", gt.Name, name)
				}
				if !reflect.DeepEqual(gt.Dims, st.Dims) || gt.Type != st.Type || !bytes.Equal(fixture.TensorBytes(t, got, gt), fixture.TensorBytes(t, src, st)) {
					t.Fatalf("%s differs from its source %s", gt.Name, name)
				}
			}
			// Metadata: only block_count changed.
			arch, _ := src.Architecture()
			for i, kv := range got.KV() {
				want := src.KV()[i]
				if kv.Key == arch+".block_count" {
					if v, _ := kv.Value.Int(); int(v) != n-len(c.remove) || kv.Value.Type() != want.Value.Type() {
						t.Fatalf("block_count %v", kv.Value)
					}
					continue
				}
				if kv.Key != want.Key || kv.Value.String() != want.Value.String() {
					t.Fatalf("key %s changed", kv.Key)
				}
			}
		})
	}
}

func findTensor(t *testing.T, m *gguf.Model, name string) gguf.ModelTensor {
	t.Helper()
	mt, ok := m.Tensor(name)
	if !ok {
		t.Fatalf("%s has no tensor %s", m.Name(), name)
	}
	return mt
}

func arrayInts(t *testing.T, m *gguf.Model, key string) []int64 {
	t.Helper()
	v, ok := m.Get(key)
	if !ok {
		t.Fatalf("%s missing", key)
	}
	a, ok := v.Array()
	if !ok {
		t.Fatalf("%s is not an array", key)
	}
	var out []int64
	for i := 0; i < a.Len(); i++ {
		n, _ := a.Index(i).Int()
		out = append(out, n)
	}
	return out
}

func pruneTo(t *testing.T, m *gguf.Model, remove []int, o surgery.Options, s surgery.Sharding) *gguf.Model {
	t.Helper()
	plan, err := surgery.PlanRemoval(m, remove, o)
	if err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(t.TempDir(), "out.gguf")
	paths, err := plan.Write(out, s)
	if err != nil {
		t.Fatal(err)
	}
	got, err := gguf.OpenModel(paths[0])
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { got.Close() })
	return got
}

// Per-layer arrays are sliced to the kept blocks; other arrays and scalars stay.
func TestPerLayerArrays(t *testing.T) {
	m, _ := fixture.Synthetic(t, fixture.Spec{
		Arch: "llama", Blocks: 6,
		PerLayer: map[string][]int{
			"attention.head_count_kv":          {10, 11, 12, 13, 14, 15},
			"feed_forward_length":              {20, 21, 22, 23, 24, 25},
			"attention.sliding_window_pattern": {1, 0, 1, 0, 1, 0},
			"rope.dimension_sections":          {1, 2, 3, 4, 5, 6}, // not per-layer though 6 long
			"other":                            {1, 2, 3},          // wrong length: not per-layer
		},
		Extra: []gguf.KV{{Key: "llama.attention.head_count", Value: gguf.Uint32(8)}},
	})
	got := pruneTo(t, m, []int{1, 4}, surgery.Options{}, surgery.OneFile)
	for key, want := range map[string][]int64{
		"llama.attention.head_count_kv":          {10, 12, 13, 15},
		"llama.feed_forward_length":              {20, 22, 23, 25},
		"llama.attention.sliding_window_pattern": {1, 1, 0, 0},
		"llama.rope.dimension_sections":          {1, 2, 3, 4, 5, 6},
		"llama.other":                            {1, 2, 3},
	} {
		if g := arrayInts(t, got, key); !reflect.DeepEqual(g, want) {
			t.Errorf("%s = %v, want %v", key, g, want)
		}
	}
	if n, _ := got.BlockCount(); n != 4 {
		t.Fatalf("block count %d", n)
	}
	if v, _ := got.Get("llama.attention.head_count"); v.String() != "8" {
		t.Fatalf("scalar changed: %v", v)
	}
	// Blocks are renumbered contiguously, in order.
	var names []string
	for _, tn := range got.AllTensors() {
		if b := blocks.Of(tn.Name); b >= 0 {
			names = append(names, tn.Name)
		}
	}
	if len(names) != 4*len(fixture.BlockTensors) || names[0] != "blk.0.attn_norm.weight" || names[len(names)-1] != "blk.3.ffn_down.weight" {
		t.Fatalf("block tensors %v", names)
	}
	// Block 1 of the output is block 2 of the input.
	if !bytes.Equal(fixture.TensorBytes(t, got, findTensor(t, got, "blk.1.attn_q.weight")), fixture.TensorBytes(t, m, findTensor(t, m, "blk.2.attn_q.weight"))) {
		t.Fatal("blk.1 is not the old blk.2")
	}
}

// Multi-token-prediction blocks cannot be removed and stay last.
func TestMTPBlocks(t *testing.T) {
	m, _ := fixture.Synthetic(t, fixture.Spec{Arch: "glm4moe", Blocks: 6, Extra: []gguf.KV{{Key: "glm4moe.nextn_predict_layers", Value: gguf.Uint32(2)}}})
	for _, b := range []int{4, 5} {
		if _, err := surgery.PlanRemoval(m, []int{b}, surgery.Options{Force: true}); err == nil || !strings.Contains(err.Error(), "multi-token-prediction") {
			t.Fatalf("removing MTP block %d: %v", b, err)
		}
	}
	got := pruneTo(t, m, []int{1, 2}, surgery.Options{}, surgery.OneFile)
	if n, _ := got.BlockCount(); n != 4 {
		t.Fatal(n)
	}
	if v, _ := got.Get("glm4moe.nextn_predict_layers"); v.String() != "2" {
		t.Fatalf("nextn_predict_layers %v", v)
	}
	// The MTP blocks (old 4 and 5) are now 2 and 3, still last.
	if !bytes.Equal(fixture.TensorBytes(t, got, findTensor(t, got, "blk.2.attn_q.weight")), fixture.TensorBytes(t, m, findTensor(t, m, "blk.4.attn_q.weight"))) {
		t.Fatal("MTP block moved")
	}
}

func TestPlanErrors(t *testing.T) {
	m, path := fixture.Synthetic(t, fixture.Spec{Arch: "llama", Blocks: 3})
	for _, c := range []struct {
		remove []int
		want   string
	}{
		{[]int{0, 1, 2}, "removing all 3 blocks"},
		{[]int{3}, "block 3 is out of range"},
		{nil, "no blocks to remove"},
	} {
		if _, err := surgery.PlanRemoval(m, c.remove, surgery.Options{}); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%v: %v, want %q", c.remove, err, c.want)
		}
	}
	plan, _ := surgery.PlanRemoval(m, []int{1}, surgery.Options{})
	before, _ := os.ReadFile(path)
	if _, err := plan.Write(path, surgery.OneFile); err == nil || !strings.Contains(err.Error(), "overwrite an input") {
		t.Fatalf("writing over the input: %v", err)
	}
	link := filepath.Join(t.TempDir(), "link.gguf")
	os.Link(path, link)
	if _, err := plan.Write(link, surgery.OneFile); err == nil {
		t.Fatal("writing over a hard link of the input accepted")
	}
	if after, _ := os.ReadFile(path); !bytes.Equal(before, after) {
		t.Fatal("input changed")
	}
}

// Architectures that derive layer kinds from the block index refuse removals
// that shift the pattern, allow whole periods, and allow anything with force.
func TestIndexPatternArchitectures(t *testing.T) {
	window := []gguf.KV{{Key: "gemma3.attention.sliding_window", Value: gguf.Uint32(512)}}
	m, _ := fixture.Synthetic(t, fixture.Spec{Arch: "gemma3", Blocks: 12, Extra: window})
	if _, err := surgery.PlanRemoval(m, []int{3}, surgery.Options{}); err == nil || !strings.Contains(err.Error(), "runs of 6 consecutive blocks") {
		t.Fatalf("gemma3 removing 3: %v", err)
	}
	if _, err := surgery.PlanRemoval(m, []int{2, 3, 4, 5, 6, 7}, surgery.Options{}); err != nil {
		t.Fatalf("gemma3 removing a whole period: %v", err)
	}
	if _, err := surgery.PlanRemoval(m, []int{3}, surgery.Options{Force: true}); err != nil {
		t.Fatalf("gemma3 with force: %v", err)
	}
	// The pinned llama.cpp reads no per-layer pattern: an array changes
	// nothing. Without a sliding window there is no pattern.
	m2, _ := fixture.Synthetic(t, fixture.Spec{Arch: "gemma3", Blocks: 12, Extra: window, PerLayer: map[string][]int{"attention.sliding_window_pattern": {1, 1, 1, 1, 1, 0, 1, 1, 1, 1, 1, 0}}})
	if _, err := surgery.PlanRemoval(m2, []int{3}, surgery.Options{}); !errors.Is(err, arch.ErrIndexPattern) {
		t.Fatalf("gemma3 with a per-layer pattern: %v", err)
	}
	m4, _ := fixture.Synthetic(t, fixture.Spec{Arch: "gemma3", Blocks: 12})
	if _, err := surgery.PlanRemoval(m4, []int{3}, surgery.Options{}); err != nil {
		t.Fatalf("gemma3 without a sliding window: %v", err)
	}
	m3, _ := fixture.Synthetic(t, fixture.Spec{Arch: "qwen3next", Blocks: 8, Extra: []gguf.KV{{Key: "qwen3next.full_attention_interval", Value: gguf.Uint32(2)}}})
	// The pinned loader ignores full_attention_interval: the period is 4.
	if _, err := surgery.PlanRemoval(m3, []int{2, 3}, surgery.Options{}); err == nil || !strings.Contains(err.Error(), "runs of 4 consecutive blocks") {
		t.Fatalf("qwen3next removing 2 blocks: %v", err)
	}
	if _, err := surgery.PlanRemoval(m3, []int{2, 3, 4, 5}, surgery.Options{}); err != nil {
		t.Fatalf("qwen3next removing a period of 4: %v", err)
	}
}

// Split sets are read as one model and pruned into one file or into shards.
func TestSplitModels(t *testing.T) {
	src, _ := fixture.Synthetic(t, fixture.Spec{Arch: "llama", Blocks: 5, PerLayer: map[string][]int{"feed_forward_length": {1, 2, 3, 4, 5}}})
	dir := t.TempDir()
	paths, err := fixture.Split(src, filepath.Join(dir, "m"), 3)
	if err != nil {
		t.Fatal(err)
	}
	m, err := gguf.OpenModel(paths[1]) // any shard's name opens the set
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	if len(m.Shards) != 3 || m.NumTensors() != src.NumTensors() {
		t.Fatalf("%d shards, %d tensors", len(m.Shards), m.NumTensors())
	}
	if _, err := parser.ParseGGUFFile(paths[0]); err != nil {
		t.Fatalf("gguf-parser-go rejects our split: %v", err)
	}

	merged := pruneTo(t, m, []int{2}, surgery.Options{}, surgery.OneFile)
	if len(merged.Shards) != 1 || merged.NumTensors() != src.NumTensors()-len(fixture.BlockTensors) {
		t.Fatalf("merged: %d shards, %d tensors", len(merged.Shards), merged.NumTensors())
	}
	for _, kv := range merged.KV() {
		if strings.HasPrefix(kv.Key, "split.") {
			t.Fatalf("merged output keeps %s", kv.Key)
		}
	}
	if g := arrayInts(t, merged, "llama.feed_forward_length"); !reflect.DeepEqual(g, []int64{1, 2, 4, 5}) {
		t.Fatalf("feed_forward_length %v", g)
	}

	kept := pruneTo(t, m, []int{2}, surgery.Options{}, surgery.KeepSplit)
	if len(kept.Shards) != 3 || kept.NumTensors() != merged.NumTensors() {
		t.Fatalf("keep-split: %d shards, %d tensors", len(kept.Shards), kept.NumTensors())
	}
	for i, f := range kept.Shards {
		if !strings.HasSuffix(f.Name(), fmt.Sprintf("out-%05d-of-00003.gguf", i+1)) {
			t.Fatalf("shard %d named %s", i, f.Name())
		}
		if v, _ := f.Get(gguf.KeySplitTensorsCount); v.String() != fmt.Sprint(merged.NumTensors()) {
			t.Fatalf("shard %d split.tensors.count %v", i, v)
		}
	}
	for i, mt := range merged.AllTensors() {
		if kt := kept.TensorAt(i); mt.Name != kt.Name || !bytes.Equal(fixture.TensorBytes(t, merged, mt), fixture.TensorBytes(t, kept, kt)) {
			t.Fatalf("tensor %d differs between merged and split outputs", i)
		}
	}
	pf, err := parser.ParseGGUFFile(kept.Shards[0].Name())
	if err != nil || pf.Architecture().BlockCount != 4 || len(pf.TensorInfos) != kept.NumTensors() {
		t.Fatalf("gguf-parser-go on the pruned split: %v", err)
	}

	// A missing shard is an error naming it.
	os.Remove(paths[2])
	if _, err := gguf.OpenModel(paths[0]); err == nil || !strings.Contains(err.Error(), "00003-of-00003") {
		t.Fatalf("missing shard: %v", err)
	}
}

// A write that fails leaves neither the output nor a temporary file.
func TestFailedWriteLeavesNothing(t *testing.T) {
	dir := t.TempDir()
	in := filepath.Join(dir, "in.gguf")
	if err := fixture.Write(in, fixture.Spec{Arch: "llama", Blocks: 4}); err != nil {
		t.Fatal(err)
	}
	m, err := gguf.OpenModel(in)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	plan, err := surgery.PlanRemoval(m, []int{1}, surgery.Options{})
	if err != nil {
		t.Fatal(err)
	}
	// The source shrinks after it was opened: copying its data fails.
	st, _ := os.Stat(in)
	if err := os.Truncate(in, st.Size()-600); err != nil {
		t.Fatal(err)
	}
	outDir := t.TempDir()
	if _, err := plan.Write(filepath.Join(outDir, "out.gguf"), surgery.OneFile); err == nil {
		t.Fatal("write from a truncated source succeeded")
	}
	if names := fixture.DirNames(t, outDir); len(names) != 0 {
		t.Fatalf("left behind: %v", names)
	}
}

// An input truncated between planning and writing fails at the first
// tensor it cuts, promptly and with one buffer of memory, naming the input,
// the byte and the tensor as the input names it; nothing is left behind.
// (The kernel copy's "source ended" at a tensor's first byte was taken for
// "cannot copy here", and the fallback copied nothing without an error
// through a fresh 1 MiB buffer for every later tensor.)
func TestTruncatedInputFailsAtOnce(t *testing.T) {
	for _, within := range []uint64{0, 1000} {
		t.Run(fmt.Sprint(within), func(t *testing.T) {
			dir := t.TempDir()
			in := filepath.Join(dir, "in.gguf")
			if err := fixture.Write(in, fixture.Spec{Arch: "llama", Blocks: 8, BlockBytes: 1 << 20}); err != nil {
				t.Fatal(err)
			}
			m, err := gguf.OpenModel(in)
			if err != nil {
				t.Fatal(err)
			}
			defer m.Close()
			plan, err := surgery.PlanRemoval(m, []int{1}, surgery.Options{})
			if err != nil {
				t.Fatal(err)
			}
			// Cut the input in a tensor that moves (block 4 becomes 3).
			victim, _ := m.Tensor("blk.4.attn_q.weight")
			cut := m.Shards[0].DataOffset + int64(victim.Offset+within)
			if err := os.Truncate(in, cut); err != nil {
				t.Fatal(err)
			}
			outDir := t.TempDir()
			var before, after runtime.MemStats
			runtime.ReadMemStats(&before)
			_, err = plan.Write(filepath.Join(outDir, "out.gguf"), surgery.OneFile)
			runtime.ReadMemStats(&after)
			want := fmt.Sprintf("%s ended at byte %d while copying tensor blk.4.attn_q.weight", in, cut)
			if err == nil || !strings.Contains(err.Error(), want) || !strings.Contains(err.Error(), "truncated") || !errors.Is(err, io.ErrUnexpectedEOF) {
				t.Errorf("got %v, want %q", err, want)
			}
			if alloc := after.TotalAlloc - before.TotalAlloc; alloc > 4<<20 {
				t.Errorf("%d bytes allocated writing %d tensors", alloc, m.NumTensors())
			}
			if names := fixture.DirNames(t, outDir); len(names) != 0 {
				t.Errorf("left behind: %v", names)
			}
		})
	}
}

func TestBlockLists(t *testing.T) {
	for in, want := range map[string][]int{"3,5-7": {3, 5, 6, 7}, "7,1,1": {1, 7}, " 2 - 3 ": {2, 3}} {
		got, err := blocks.ParseList(in)
		if err != nil || !reflect.DeepEqual(got, want) {
			t.Errorf("%q: %v %v", in, got, err)
		}
		if in == "3,5-7" && blocks.FormatList(got) != in {
			t.Errorf("format %v = %q", got, blocks.FormatList(got))
		}
	}
	for _, bad := range []string{"", "a", "5-3", "-1", "1,,2", "1-"} {
		if _, err := blocks.ParseList(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

// Removing blocks inside a dense lead (leading_dense_block_count) shortens
// the lead, so that no mixture-of-experts block moves into a dense slot.
func TestLeadingDenseBlocks(t *testing.T) {
	for _, c := range []struct {
		remove []int
		lead   int64
	}{{[]int{1}, 2}, {[]int{5}, 3}, {[]int{0, 1, 2}, 0}, {[]int{2, 6}, 2}} {
		kvs, ts := fixture.Build(fixture.Spec{Arch: "deepseek2", Blocks: 8, Extra: []gguf.KV{{Key: "deepseek2.leading_dense_block_count", Value: gguf.Uint32(3)}}})
		var buf bytes.Buffer
		if _, err := gguf.Write(&buf, 3, kvs, ts); err != nil {
			t.Fatal(err)
		}
		f, err := gguf.NewFile(bytes.NewReader(buf.Bytes()), int64(buf.Len()))
		if err != nil {
			t.Fatal(err)
		}
		m, _ := gguf.NewModel(f)
		plan, err := surgery.PlanRemoval(m, c.remove, surgery.Options{})
		if err != nil {
			t.Fatal(err)
		}
		for _, kv := range plan.KV {
			if kv.Key == "deepseek2.leading_dense_block_count" {
				if n, _ := kv.Value.Int(); n != c.lead {
					t.Errorf("removing %v: lead %d, want %d", c.remove, n, c.lead)
				}
			}
		}
	}
}

// gemma3n's per-layer input tensors hold a slice per block: removing blocks
// cuts those slices out (along the rows' values of a quantized tensor, and
// along the rows of another), checked byte for byte against slicing done
// here.
func TestBlockSizedTensors(t *testing.T) {
	const nBlocks, vocab, embd, per = 10, 3, 8, 256
	q8 := uint64(per*nBlocks/32) * 34 // a Q8_0 row: 34 bytes per 32 values
	kvs := []gguf.KV{
		{Key: "general.architecture", Value: gguf.String("gemma3n")},
		{Key: "gemma3n.block_count", Value: gguf.Uint32(nBlocks)},
	}
	seq := func(n uint64, seed byte) []byte {
		b := make([]byte, n)
		for i := range b {
			b[i] = byte(i*7) + seed
		}
		return b
	}
	tok, proj := seq(q8*vocab, 1), seq(2*embd*per*nBlocks, 2)
	ts := []gguf.WriterTensor{
		{Info: gguf.TensorInfo{Name: "per_layer_token_embd.weight", Dims: []uint64{per * nBlocks, vocab}, Type: gguf.TypeQ8_0, Size: uint64(len(tok))}, Data: io.NewSectionReader(bytes.NewReader(tok), 0, int64(len(tok)))},
		{Info: gguf.TensorInfo{Name: "per_layer_model_proj.weight", Dims: []uint64{embd, per * nBlocks}, Type: gguf.TypeF16, Size: uint64(len(proj))}, Data: io.NewSectionReader(bytes.NewReader(proj), 0, int64(len(proj)))},
	}
	for b := range nBlocks {
		d := seq(4*embd, byte(b))
		ts = append(ts, gguf.WriterTensor{Info: gguf.TensorInfo{Name: blocks.Name(b, "attn_norm.weight"), Dims: []uint64{embd}, Type: gguf.TypeF32, Size: uint64(len(d))}, Data: io.NewSectionReader(bytes.NewReader(d), 0, int64(len(d)))})
	}
	path := filepath.Join(t.TempDir(), "in.gguf")
	f, _ := os.Create(path)
	if _, err := gguf.Write(f, 3, kvs, ts); err != nil {
		t.Fatal(err)
	}
	f.Close()
	m, err := gguf.OpenModel(path)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	// Blocks 1-5 go: 6-9 keep their kinds at 1-4.
	plan, err := surgery.PlanRemoval(m, []int{1, 2, 3, 4, 5}, surgery.Options{})
	if err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(t.TempDir(), "out.gguf")
	if _, err := plan.Write(out, surgery.OneFile); err != nil {
		t.Fatal(err)
	}
	pm, err := gguf.OpenModel(out)
	if err != nil {
		t.Fatal(err)
	}
	defer pm.Close()
	kept := []int{0, 6, 7, 8, 9}
	var wantTok, wantProj []byte
	chunk := q8 / nBlocks
	for r := range uint64(vocab) {
		for _, b := range kept {
			wantTok = append(wantTok, tok[r*q8+uint64(b)*chunk:][:chunk]...)
		}
	}
	rows := uint64(2 * embd * per)
	for _, b := range kept {
		wantProj = append(wantProj, proj[uint64(b)*rows:][:rows]...)
	}
	for _, c := range []struct {
		name string
		dims []uint64
		want []byte
	}{
		{"per_layer_token_embd.weight", []uint64{per * 5, vocab}, wantTok},
		{"per_layer_model_proj.weight", []uint64{embd, per * 5}, wantProj},
	} {
		pt, ok := pm.Tensor(c.name)
		if !ok || !slices.Equal(pt.Dims, c.dims) {
			t.Fatalf("%s: %v", c.name, pt)
		}
		got, _ := io.ReadAll(pm.TensorData(pt))
		if !bytes.Equal(got, c.want) {
			t.Fatalf("%s: the kept blocks' slices differ", c.name)
		}
	}
	// Removing one block moves the global-attention blocks.
	if _, err := surgery.PlanRemoval(m, []int{2}, surgery.Options{}); !errors.Is(err, arch.ErrIndexPattern) || !strings.Contains(err.Error(), "side of blocks 10 and 20") {
		t.Fatalf("removing 2: %v", err)
	}
}

// gemma3n's kinds: the period of 5, the sparsity of blocks 0-9, the KV
// sharing of blocks 20 on, the caches of blocks 18 and 19.
func TestGemma3nPattern(t *testing.T) {
	m, _ := fixture.Synthetic(t, fixture.Spec{Arch: "gemma3n", Blocks: 30})
	for _, c := range []struct {
		remove []int
		ok     bool
	}{
		{[]int{20, 21, 22, 23, 24}, true},
		{[]int{25, 26, 27, 28, 29}, true},
		{[]int{21, 22, 23, 24, 25}, true},
		{[]int{10, 11, 12, 13, 14}, false}, // 20-24 lose their sharing
		{[]int{5, 6, 7, 8, 9}, false},      // 10-14 become sparse
		{[]int{14, 15, 16, 17, 18}, false}, // 19 would be 14
		{[]int{20}, false},
	} {
		_, err := surgery.PlanRemoval(m, c.remove, surgery.Options{})
		if (err == nil) != c.ok || (err != nil && !errors.Is(err, arch.ErrIndexPattern)) {
			t.Errorf("removing %v: %v", c.remove, err)
		}
	}
}

// A forced removal that changes the sliding-window kind of kept blocks, in
// an architecture whose newer loader reads the kinds from an array, writes
// the kept blocks' original kinds there (set_swa_pattern's: block i slides
// unless i mod period is period-1), replacing a scalar period; a file that
// has the array keeps it cut with the blocks; an unforced whole-period
// removal writes none.
func TestForcedRemovalWritesKinds(t *testing.T) {
	window := gguf.KV{Key: "gemma3.attention.sliding_window", Value: gguf.Uint32(512)}
	period := gguf.KV{Key: "gemma3.attention.sliding_window_pattern", Value: gguf.Uint32(6)}
	m, _ := fixture.Synthetic(t, fixture.Spec{Arch: "gemma3", Blocks: 12, Extra: []gguf.KV{window, period}})
	p, err := surgery.PlanRemoval(m, []int{3}, surgery.Options{Force: true})
	if err != nil {
		t.Fatal(err)
	}
	var got []bool
	n := 0
	for _, kv := range p.KV {
		if kv.Key != "gemma3.attention.sliding_window_pattern" {
			continue
		}
		n++
		a, ok := kv.Value.Array()
		if !ok || a.Elem() != gguf.TypeBool {
			t.Fatalf("%s is %v, not a bool array", kv.Key, kv.Value)
		}
		for i := range a.Len() {
			v, _ := a.Index(i).Int()
			got = append(got, v != 0)
		}
	}
	var want []bool
	for _, b := range []int{0, 1, 2, 4, 5, 6, 7, 8, 9, 10, 11} {
		want = append(want, b%6 != 5)
	}
	if n != 1 || !slices.Equal(got, want) {
		t.Fatalf("%d keys, kinds %v, want %v", n, got, want)
	}
	if p.Broken == nil || p.KindsKept == nil {
		t.Fatalf("broken %v, kinds %v", p.Broken, p.KindsKept)
	}
	whole, err := surgery.PlanRemoval(m, []int{2, 3, 4, 5, 6, 7}, surgery.Options{})
	if err != nil || whole.KindsKept != nil {
		t.Fatalf("whole period: %v, kinds %v", err, whole.KindsKept)
	}
	arr, _ := fixture.Synthetic(t, fixture.Spec{Arch: "gemma3", Blocks: 12, Extra: []gguf.KV{window}, PerLayer: map[string][]int{"attention.sliding_window_pattern": {1, 1, 1, 1, 1, 0, 1, 1, 1, 1, 1, 0}}})
	p, err = surgery.PlanRemoval(arr, []int{3}, surgery.Options{Force: true})
	if err != nil || p.KindsKept != nil {
		t.Fatalf("a file with the array: %v, kinds %v", err, p.KindsKept)
	}
}

package arch_test

import (
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ggufprune/ggufprune/gguf"
	"github.com/ggufprune/ggufprune/internal/fixture"
	"github.com/ggufprune/ggufprune/llamacpp/arch"
)

// LlamaCase is a crafted variant of stories260K that llama.cpp would abort
// on, with the rule that must refuse it.
type llamaCase struct {
	name string
	rule string
	msg  string // part of the error
	edit fixture.Edit
}

func arrayOf(typ gguf.ValueType, vals ...gguf.Value) gguf.Value {
	a, _ := gguf.NewArray(typ, vals)
	return a
}

// tokens edits the vocabulary of stories260K (512 tokens).
func tokens(edit func([]string) []string) fixture.Edit {
	return func(kvs []gguf.KV, ts []gguf.WriterTensor) ([]gguf.KV, []gguf.WriterTensor) {
		for i, kv := range kvs {
			if kv.Key != "tokenizer.ggml.tokens" {
				continue
			}
			a, _ := kv.Value.Array()
			var toks []string
			for j := 0; j < a.Len(); j++ {
				s, _ := a.Index(j).Str()
				toks = append(toks, s)
			}
			var vs []gguf.Value
			for _, s := range edit(toks) {
				vs = append(vs, gguf.String(s))
			}
			kvs[i].Value = arrayOf(gguf.TypeString, vs...)
		}
		return kvs, ts
	}
}

// tensorShape gives a tensor another shape and empty-or-matching data.
func tensorShape(name string, dims ...uint64) fixture.Edit {
	return func(kvs []gguf.KV, ts []gguf.WriterTensor) ([]gguf.KV, []gguf.WriterTensor) {
		for i := range ts {
			if ts[i].Info.Name == name {
				ts[i].Info.Dims = dims
				n := uint64(4)
				for _, d := range dims {
					n *= d
				}
				ts[i].Info.Size = n
				ts[i].Data = io.NewSectionReader(zeroReader{}, 0, int64(n))
			}
		}
		return kvs, ts
	}
}

type zeroReader struct{}

func (zeroReader) ReadAt(p []byte, _ int64) (int, error) {
	clear(p)
	return len(p), nil
}

// LlamaCases covers every rule of arch.Rules with a crafted file; the
// known crashes of llama.cpp come first.
var llamaCases = []llamaCase{
	{"zero dimension", "tensor-dims", "blk.0.attn_q.weight has shape [64 0]", tensorShape("blk.0.attn_q.weight", 64, 0)},
	{"block count 0", "block-count", "llama.block_count is 0", fixture.EditKV("llama.block_count", gguf.Uint32(0))},
	{"duplicated token", "vocabulary", `tokens 3 and 300 are both`, tokens(func(t []string) []string { t[300] = t[3]; return t })},
	{"tokens as integers", "vocabulary", "tokenizer.ggml.tokens is an array of 2 uint32", fixture.EditKV("tokenizer.ggml.tokens", fixture.Uint32s(1, 2))},
	{"experts used without experts", "experts", "llama.expert_used_count is 2 but llama.expert_count is 0", fixture.EditKV("llama.expert_used_count", gguf.Uint32(2))},
	{"1000 experts", "experts", "llama.expert_count is 1000", fixture.EditKV("llama.expert_count", gguf.Uint32(1000))},
	{"zero in per-layer KV heads", "head-counts", "block 2 has 8 attention heads and 0 KV heads", fixture.EditKV("llama.attention.head_count_kv", fixture.Uint32s(4, 4, 0, 4, 4))},
	{"empty metadata key", "metadata-key", "empty key", func(kvs []gguf.KV, ts []gguf.WriterTensor) ([]gguf.KV, []gguf.WriterTensor) {
		return append(kvs, gguf.KV{Key: "", Value: gguf.Uint32(1)}), ts
	}},
	{"uncomputable type", "tensor-type", "is I32", func(kvs []gguf.KV, ts []gguf.WriterTensor) ([]gguf.KV, []gguf.WriterTensor) {
		for i := range ts {
			if ts[i].Info.Name == "blk.0.attn_q.weight" {
				ts[i].Info.Type = gguf.TypeI32
			}
		}
		return kvs, ts
	}},
	{"4-D expert tensor", "expert-tensor-dims", "at most 3 dimensions", func(kvs []gguf.KV, ts []gguf.WriterTensor) ([]gguf.KV, []gguf.WriterTensor) {
		return tensorShape("blk.0.ffn_up_exps.weight", 64, 2, 2, 2)(kvs, append(ts, gguf.WriterTensor{Info: gguf.TensorInfo{Name: "blk.0.ffn_up_exps.weight", Type: gguf.TypeF32}}))
	}},
	{"F16 rope frequencies", "f32-tensors", "rope_freqs.weight is F16", func(kvs []gguf.KV, ts []gguf.WriterTensor) ([]gguf.KV, []gguf.WriterTensor) {
		info := gguf.TensorInfo{Name: "rope_freqs.weight", Type: gguf.TypeF16, Dims: []uint64{4}, Size: 8}
		return kvs, append(ts, gguf.WriterTensor{Info: info, Data: io.NewSectionReader(zeroReader{}, 0, 8)})
	}},
	{"block count past the tensors", "blocks-present", "blocks 5-8 have no tensors", fixture.EditKV("llama.block_count", gguf.Uint32(9))},
	{"block count over the limit", "block-count", "llama.cpp takes 1 to 512 blocks", fixture.EditKV("llama.block_count", gguf.Uint32(600))},
	{"float head counts", "head-counts", "array of float32", fixture.EditKV("llama.attention.head_count", arrayOf(gguf.TypeFloat32, gguf.Float32(8), gguf.Float32(8), gguf.Float32(8), gguf.Float32(8), gguf.Float32(8)))},
	{"uneven per-layer heads", "head-counts", "block 1 has 4 attention heads", fixture.EditKV("llama.attention.head_count", fixture.Uint32s(8, 4, 8, 8, 8))},
	{"heads not a multiple of KV heads", "head-counts", "not a multiple of 3 KV heads", fixture.EditKV("llama.attention.head_count_kv", gguf.Uint32(3))},
	{"odd RoPE dimension", "head-size", "llama.rope.dimension_count 7 differs", fixture.EditKV("llama.rope.dimension_count", gguf.Uint32(7))},
	{"value length", "head-size", "llama.attention.value_length 16 differs", fixture.EditKV("llama.attention.value_length", gguf.Uint32(16))},
	{"experts in groups", "experts", "do not fit", func(kvs []gguf.KV, ts []gguf.WriterTensor) ([]gguf.KV, []gguf.WriterTensor) {
		kvs = fixture.SetKV(kvs, "llama.expert_count", gguf.Uint32(8))
		kvs = fixture.SetKV(kvs, "llama.expert_used_count", gguf.Uint32(2))
		kvs = fixture.SetKV(kvs, "llama.expert_group_count", gguf.Uint32(3))
		return kvs, ts
	}},
	{"rope scaling type", "enum-values", `llama.rope.scaling.type is "cubic"`, fixture.EditKV("llama.rope.scaling.type", gguf.String("cubic"))},
	{"pooling type", "enum-values", "llama.pooling_type is 9", fixture.EditKV("llama.pooling_type", gguf.Uint32(9))},
	{"gating function", "enum-values", "llama.expert_gating_func is 7", fixture.EditKV("llama.expert_gating_func", gguf.Uint32(7))},
	{"short scores", "vocabulary", "tokenizer.ggml.scores is an array of 1 float32", fixture.EditKV("tokenizer.ggml.scores", arrayOf(gguf.TypeFloat32, gguf.Float32(0)))},
	{"token types as strings", "vocabulary", "tokenizer.ggml.token_type is an array of 1 string", fixture.EditKV("tokenizer.ggml.token_type", arrayOf(gguf.TypeString, gguf.String("x")))},
	{"merges as integers", "vocabulary", "tokenizer.ggml.merges is an array of 2 uint32", fixture.EditKV("tokenizer.ggml.merges", fixture.Uint32s(1, 2))},
	{"end of sequence past the vocabulary", "vocabulary", "end-of-sequence token is 11", func(kvs []gguf.KV, ts []gguf.WriterTensor) ([]gguf.KV, []gguf.WriterTensor) {
		kvs = fixture.SetKV(kvs, "tokenizer.ggml.model", gguf.String("gpt2"))
		kvs = fixture.SetKV(kvs, "tokenizer.ggml.eos_token_id", gguf.Uint32(9999))
		var kept []gguf.KV
		for _, kv := range kvs {
			if kv.Key != "tokenizer.ggml.scores" && kv.Key != "tokenizer.ggml.token_type" {
				kept = append(kept, kv)
			}
		}
		return tokens(func(t []string) []string { return t[:8] })(kept, ts)
	}},
	{"sliding window without a global block", "attention-pattern", "gemma3 with a sliding window needs at least 6", asArch("gemma3", gguf.KV{Key: "gemma3.attention.sliding_window", Value: gguf.Uint32(64)})},
	// Found generating deepseek2 models: grouped KV heads abort in ggml_set_rows.
	{"decompressed low-rank attention with grouped KV heads", "low-rank-attention", "block 0 has 4 KV heads and 8 attention heads", asArch("deepseek2")},
	// Found generating nemotron_h: a dense file without
	// expert_feed_forward_length is a division by zero in load_tensors.
	{"norm of another width", "tensor-shapes", "tensor blk.1.ffn_norm.weight has shape [32]; llama.cpp expects [64]", tensorShape("blk.1.ffn_norm.weight", 32)},
	{"FFN of another width", "tensor-shapes", "tensor blk.3.ffn_up.weight has shape [48 172]; llama.cpp expects 64", tensorShape("blk.3.ffn_up.weight", 48, 172)},
	{"every block multi-token prediction", "mtp-blocks", "glm4moe.nextn_predict_layers is 5 but glm4moe.block_count is 5", asArch("glm4moe", gguf.KV{Key: "glm4moe.nextn_predict_layers", Value: gguf.Uint32(5)})},
	{"more MTP blocks than blocks", "mtp-blocks", "glm4moe.nextn_predict_layers is 9 but glm4moe.block_count is 5", asArch("glm4moe", gguf.KV{Key: "glm4moe.nextn_predict_layers", Value: gguf.Uint32(9)})},
	{"dense nemotron_h", "experts", "nemotron_h without nemotron_h.expert_feed_forward_length divides by nemotron_h.expert_used_count", asArch("nemotron_h")},
	// Found pruning generated hybrids: each kind keeps a cache, which
	// aborts when empty.
	{"hybrid without recurrent blocks", "hybrid-kinds", "its 5 blocks have 5 with attention and 0 recurrent; granitehybrid needs at least one of each", asArch("granitehybrid")},
	{"hybrid without attention blocks", "hybrid-kinds", "its 5 blocks have 0 with attention and 5 recurrent; lfm2 needs", asArch("lfm2", gguf.KV{Key: "lfm2.attention.head_count_kv", Value: gguf.Uint32(0)})},
	{"absorbed low-rank attention with 4 KV heads", "low-rank-attention", "block 0 has 4 KV heads; deepseek2 with deepseek2.attention.key_length_mla needs 1", asArch("deepseek2",
		gguf.KV{Key: "deepseek2.attention.key_length_mla", Value: gguf.Uint32(8)}, gguf.KV{Key: "deepseek2.attention.value_length_mla", Value: gguf.Uint32(8)})},
	{"no tokenizer", "tokenizer-model", `tokenizer.ggml.model is "none"`, fixture.EditKV("tokenizer.ggml.model", gguf.String("none"))},
}

// asArch renames stories260K's architecture (and its keys) and adds kvs.
func asArch(arch string, extra ...gguf.KV) func([]gguf.KV, []gguf.WriterTensor) ([]gguf.KV, []gguf.WriterTensor) {
	return func(kvs []gguf.KV, ts []gguf.WriterTensor) ([]gguf.KV, []gguf.WriterTensor) {
		var out []gguf.KV
		for _, kv := range kvs {
			kv.Key = strings.Replace(kv.Key, "llama.", arch+".", 1)
			if kv.Key == "general.architecture" {
				kv.Value = gguf.String(arch)
			}
			out = append(out, kv)
		}
		for _, kv := range extra {
			out = fixture.SetKV(out, kv.Key, kv.Value)
		}
		return out, ts
	}
}

// Crafted writes the case's variant of stories260K into dir.
func crafted(t testing.TB, dir string, c llamaCase) string {
	t.Helper()
	path := filepath.Join(dir, strings.ReplaceAll(c.name, " ", "-")+".gguf")
	if err := fixture.Rewrite(fixture.Asset(t, "models/stories260K.gguf"), path, c.edit); err != nil {
		t.Fatalf("%s: %v", c.name, err)
	}
	return path
}

// Every rule refuses its crafted file with its own message; the real models
// pass every rule; every rule has a case.
func TestLlamaRules(t *testing.T) {
	dir := t.TempDir()
	covered := map[string]bool{}
	for _, c := range llamaCases {
		covered[c.rule] = true
		t.Run(c.name, func(t *testing.T) {
			m, err := gguf.OpenModel(crafted(t, dir, c))
			if err != nil {
				t.Fatal(err)
			}
			defer m.Close()
			err = arch.CheckModel(m, arch.Run)
			var re *arch.RuleError
			if !errors.As(err, &re) || re.Rule != c.rule || !strings.Contains(err.Error(), c.msg) || !errors.Is(err, arch.ErrRule) || !strings.Contains(err.Error(), m.Name()) {
				t.Fatalf("got %v, want rule %q with %q", err, c.rule, c.msg)
			}
		})
	}
	for _, r := range arch.Rules {
		if !covered[r.Name] {
			t.Errorf("rule %q has no crafted file", r.Name)
		}
	}
	for _, name := range fixture.Models {
		m, err := gguf.OpenModel(fixture.Asset(t, "models/"+name))
		if err != nil {
			t.Fatal(err)
		}
		if err := arch.CheckModel(m, arch.Run); err != nil {
			t.Errorf("%s: %v", name, err)
		}
		if !arch.MappedAlignmentOK(m) {
			t.Errorf("%s: tensors not 32-byte aligned", name)
		}
		m.Close()
	}
}

// A legal alignment below ggml's 32 bytes is recognised, so that llama.cpp
// reads the file instead of mapping it.
func TestMappedAlignment(t *testing.T) {
	path := filepath.Join(t.TempDir(), "align8.gguf")
	if err := fixture.Rewrite(fixture.Asset(t, "models/stories260K.gguf"), path, func(kvs []gguf.KV, ts []gguf.WriterTensor) ([]gguf.KV, []gguf.WriterTensor) {
		// An odd-length key makes the header end off a 32-byte boundary.
		return fixture.SetKV(append(kvs, gguf.KV{Key: "x.pad", Value: gguf.String("abc")}), "general.alignment", gguf.Uint32(8)), ts
	}); err != nil {
		t.Fatal(err)
	}
	m, err := gguf.OpenModel(path)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	if arch.MappedAlignmentOK(m) {
		t.Fatalf("data offset %d: every tensor 32-byte aligned; the test needs one that is not", m.Shards[0].DataOffset)
	}
	if err := arch.CheckModel(m, arch.Run); err != nil {
		t.Fatal(err)
	}
	os.Remove(path)
}

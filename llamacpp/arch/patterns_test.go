package arch_test

import (
	"errors"
	"math"
	"strings"
	"testing"

	"github.com/ggufprune/ggufprune/gguf"
	"github.com/ggufprune/ggufprune/gguf/surgery"
	"github.com/ggufprune/ggufprune/internal/fixture"
	"github.com/ggufprune/ggufprune/llamacpp/arch"
)

// The layer rules read from the pinned llama.cpp: removals that keep every
// block's kind pass, the others are refused (index patterns unless forced;
// files llama.cpp would not load or would abort on, forced too).
func TestLayerRules(t *testing.T) {
	u32 := func(key string, v uint32) gguf.KV { return gguf.KV{Key: key, Value: gguf.Uint32(v)} }
	for _, c := range []struct {
		name   string
		arch   string
		blocks int
		extra  []gguf.KV
		flags  map[string][]int
		remove []int
		force  bool
		want   string // "" accepted, "pattern" an index-pattern refusal, else a refusal containing it
	}{
		{"olmo2 without a window", "olmo2", 8, nil, nil, []int{1}, false, ""},
		{"olmo2 with a window", "olmo2", 8, []gguf.KV{u32("olmo2.attention.sliding_window", 4096)}, nil, []int{1}, false, "pattern"},
		{"olmo2 with a window, a period", "olmo2", 8, []gguf.KV{u32("olmo2.attention.sliding_window", 4096)}, nil, []int{0, 1, 2, 3}, false, ""},
		{"exaone4 of 10 blocks has no window", "exaone4", 10, nil, nil, []int{1}, false, ""},
		{"exaone4 of 64 blocks", "exaone4", 64, nil, nil, []int{60, 61, 62, 63}, false, "only with exactly 64 blocks"},
		{"gemma2 27B", "gemma2", 46, []gguf.KV{u32("gemma2.attention.head_count", 4), u32("gemma2.attention.key_length", 32)}, nil, []int{44, 45}, false, "is the 27B model"},
		{"gemma2 of 46 blocks with equal scales", "gemma2", 46, []gguf.KV{u32("gemma2.attention.head_count", 4)}, nil, []int{44, 45}, false, ""},
		{"gemma3 27B without a window", "gemma3", 62, []gguf.KV{u32("gemma3.attention.head_count", 4), u32("gemma3.attention.key_length", 32)}, nil, []int{61}, false, "is the 27B model"},
		{"afmoe", "afmoe", 8, nil, nil, []int{1}, false, "pattern"},
		{"afmoe, a period", "afmoe", 8, nil, nil, []int{4, 5, 6, 7}, false, ""},
		{"smallthinker", "smallthinker", 12, []gguf.KV{u32("smallthinker.attention.sliding_window", 4096)}, nil, []int{1}, false, "pattern"},
		{"smallthinker, a period", "smallthinker", 12, []gguf.KV{u32("smallthinker.attention.sliding_window", 4096)}, nil, []int{4, 5, 6, 7}, false, ""},
		{"smallthinker down to 4 blocks", "smallthinker", 8, []gguf.KV{u32("smallthinker.attention.sliding_window", 4096)}, nil, []int{4, 5, 6, 7}, false, "pattern"},
		{"ernie4_5-moe, MoE every 2nd block", "ernie4_5-moe", 8, []gguf.KV{u32("ernie4_5-moe.interleave_moe_layer_step", 2)}, nil, []int{1}, false, "pattern"},
		{"ernie4_5-moe, MoE in every block", "ernie4_5-moe", 8, []gguf.KV{u32("ernie4_5-moe.interleave_moe_layer_step", 1)}, nil, []int{1}, false, ""},
		{"nomic-bert-moe", "nomic-bert-moe", 6, []gguf.KV{u32("nomic-bert-moe.moe_every_n_layers", 2)}, nil, []int{1}, false, "pattern"},
		{"rwkv6", "rwkv6", 12, []gguf.KV{u32("rwkv6.rescale_every_n_layers", 6)}, nil, []int{1}, false, "pattern"},
		{"rwkv6, a period", "rwkv6", 12, []gguf.KV{u32("rwkv6.rescale_every_n_layers", 6)}, nil, []int{0, 1, 2, 3, 4, 5}, false, ""},
		{"gemma-embedding", "gemma-embedding", 12, nil, nil, []int{1}, false, "pattern"},
		{"qwen3vl inside the deepstack", "qwen3vl", 8, []gguf.KV{u32("qwen3vl.n_deepstack_layers", 3)}, nil, []int{1}, false, "from block 3 on"},
		{"qwen3vl after the deepstack", "qwen3vl", 8, []gguf.KV{u32("qwen3vl.n_deepstack_layers", 3)}, nil, []int{3, 5}, false, ""},
		{"minicpm3", "minicpm3", 6, nil, nil, []int{1}, false, "1.4/√(block count)"},
		{"minicpm3 forced", "minicpm3", 6, nil, nil, []int{1}, true, ""},
		{"deepseek2 Lite to 26", "deepseek2", 27, nil, nil, []int{1}, false, ""},
		{"deepseek2 Lite to 25", "deepseek2", 27, nil, nil, []int{1, 2}, true, "is the Lite model"},
		{"deepseek2 to 27", "deepseek2", 30, nil, nil, []int{1, 2, 3}, false, "is the Lite model"},
		{"deepseek2 to 48 blocks, Lite vocabulary", "deepseek2", 49, []gguf.KV{u32("deepseek2.vocab_size", 128256)}, nil, []int{1}, true, "48 blocks and a 128,256-token vocabulary"},
		{"deepseek2 to 48 blocks, other vocabulary", "deepseek2", 49, []gguf.KV{u32("deepseek2.vocab_size", 32000)}, nil, []int{1}, false, ""},
		{"deepseek2 to 48 main blocks and an MTP block", "deepseek2", 50, []gguf.KV{u32("deepseek2.vocab_size", 128256), u32("deepseek2.nextn_predict_layers", 1)}, nil, []int{1}, true, "48 blocks and a 128,256-token vocabulary"},
		{"command-r below 64 blocks", "command-r", 64, nil, nil, []int{1}, true, "only with 64 blocks or more"},
		{"command-r above 64 blocks", "command-r", 66, nil, nil, []int{1}, false, ""},
		{"command-r below 64", "command-r", 40, nil, nil, []int{1}, false, ""},
		{"baichuan", "baichuan", 32, nil, nil, []int{1}, true, "only with 32 or 40 blocks"},
		{"rwkv7 block 0", "rwkv7", 4, nil, nil, []int{0}, true, "value-residual source"},
		{"rwkv7 block 1", "rwkv7", 4, nil, nil, []int{1}, false, ""},
		{"t5", "t5", 4, nil, nil, []int{1}, true, "enc.blk.N"},
		{"solar skip source", "solar", 6, nil, map[string][]int{"attention.block_skip_connection.0": {0, 1, 0, 0, 0, 0}, "attention.block_skip_connection.2": {0, 0, 0, 1, 0, 0}}, []int{1}, true, "leaves it unset"},
		{"solar skip source and user", "solar", 6, nil, map[string][]int{"attention.block_skip_connection.0": {0, 1, 0, 0, 0, 0}, "attention.block_skip_connection.2": {0, 0, 0, 1, 0, 0}}, []int{1, 3}, false, ""},
	} {
		t.Run(c.name, func(t *testing.T) {
			m, _ := fixture.Synthetic(t, fixture.Spec{Arch: c.arch, Blocks: c.blocks, Extra: c.extra, PerLayer: c.flags})
			_, err := surgery.PlanRemoval(m, c.remove, surgery.Options{Force: c.force})
			switch {
			case c.want == "" && err != nil:
				t.Fatalf("refused: %v", err)
			case c.want == "pattern" && !errors.Is(err, arch.ErrIndexPattern):
				t.Fatalf("want a pattern refusal, got %v", err)
			case c.want != "" && c.want != "pattern" && (err == nil || !strings.Contains(err.Error(), c.want)):
				t.Fatalf("want %q, got %v", c.want, err)
			}
		})
	}
}

// minicpm's residual scale defaults to 1.4/√(block count): the plan writes
// the original's value when the file has none, and keeps one it has.
func TestPinnedDefaults(t *testing.T) {
	m, _ := fixture.Synthetic(t, fixture.Spec{Arch: "minicpm", Blocks: 6})
	plan, err := surgery.PlanRemoval(m, []int{1}, surgery.Options{})
	if err != nil {
		t.Fatal(err)
	}
	var got float64
	for _, kv := range plan.KV {
		if kv.Key == "minicpm.residual_scale" {
			got, _ = kv.Value.Float()
		}
	}
	if want := float64(float32(1.4 / math.Sqrt(6))); got != want {
		t.Fatalf("residual scale %v, want %v", got, want)
	}
	m2, _ := fixture.Synthetic(t, fixture.Spec{Arch: "minicpm", Blocks: 6, Extra: []gguf.KV{{Key: "minicpm.residual_scale", Value: gguf.Float32(0.25)}}})
	plan, _ = surgery.PlanRemoval(m2, []int{1}, surgery.Options{})
	n := 0
	for _, kv := range plan.KV {
		if kv.Key == "minicpm.residual_scale" {
			n++
			if v, _ := kv.Value.Float(); v != 0.25 {
				t.Fatalf("residual scale %v, want the file's 0.25", v)
			}
		}
	}
	if n != 1 {
		t.Fatalf("%d residual scales", n)
	}
}

// deepseek2 without a gating function: the pruned file names the one the
// newer llama.cpp computes the original with (sigmoid for GLM-4.7 Lite's 48
// blocks and 154,880 tokens, and a warning that the pinned one differs;
// softmax otherwise); a file that names one keeps it.
func TestPinnedGating(t *testing.T) {
	for _, c := range []struct {
		blocks  int
		extra   []gguf.KV
		want    int64
		warning bool
	}{
		{48, []gguf.KV{{Key: "deepseek2.vocab_size", Value: gguf.Uint32(154880)}}, 2, true},
		{49, []gguf.KV{{Key: "deepseek2.vocab_size", Value: gguf.Uint32(154880)}, {Key: "deepseek2.nextn_predict_layers", Value: gguf.Uint32(1)}}, 2, true},
		{48, []gguf.KV{{Key: "deepseek2.vocab_size", Value: gguf.Uint32(32000)}}, 1, false},
		{30, nil, 1, false},
		{48, []gguf.KV{{Key: "deepseek2.vocab_size", Value: gguf.Uint32(154880)}, {Key: "deepseek2.expert_gating_func", Value: gguf.Uint32(3)}}, 3, false},
	} {
		m, _ := fixture.Synthetic(t, fixture.Spec{Arch: "deepseek2", Blocks: c.blocks, Extra: c.extra})
		plan, err := surgery.PlanRemoval(m, []int{2}, surgery.Options{})
		if err != nil {
			t.Fatal(err)
		}
		var got []int64
		for _, kv := range plan.KV {
			if kv.Key == "deepseek2.expert_gating_func" {
				v, _ := kv.Value.Int()
				got = append(got, v)
			}
		}
		if len(got) != 1 || got[0] != c.want || (len(plan.Warnings) > 0) != c.warning {
			t.Fatalf("%d blocks %v: gating %v, warnings %q", c.blocks, c.extra, got, plan.Warnings)
		}
	}
}

// apertus's xIELU arrays carry no architecture prefix, and are cut with the
// blocks all the same (llama.cpp refuses them at another length).
func TestUnprefixedPerLayer(t *testing.T) {
	vals := func(v ...float32) gguf.Value {
		var vs []gguf.Value
		for _, x := range v {
			vs = append(vs, gguf.Float32(x))
		}
		a, _ := gguf.NewArray(gguf.TypeFloat32, vs)
		return a
	}
	m, _ := fixture.Synthetic(t, fixture.Spec{Arch: "apertus", Blocks: 4, Extra: []gguf.KV{
		{Key: "xielu.alpha_n", Value: vals(1, 2, 3, 4)}, {Key: "xielu.eps", Value: vals(5, 6, 7, 8)}, {Key: "other.array", Value: vals(1, 2, 3, 4)},
	}})
	plan, err := surgery.PlanRemoval(m, []int{1}, surgery.Options{})
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{"xielu.alpha_n": "[float32×3: 1 3 4]", "xielu.eps": "[float32×3: 5 7 8]", "other.array": "[float32×4: 1 2 3 4]"}
	for _, kv := range plan.KV {
		if w, ok := want[kv.Key]; ok {
			if got := kv.Value.String(); got != w {
				t.Errorf("%s = %s, want %s", kv.Key, got, w)
			}
			delete(want, kv.Key)
		}
	}
	if len(want) != 0 {
		t.Fatalf("missing %v", want)
	}
}

// qwen35 and qwen35moe (known to newer llama.cpp only, so removals are
// forced): a removal that moves a block across the full-attention period is
// flagged, a whole period or a file with a recurrent_layers array (cut with
// the blocks) is not.
func TestNewerPatterns(t *testing.T) {
	u32 := func(key string, v uint32) gguf.KV { return gguf.KV{Key: key, Value: gguf.Uint32(v)} }
	for _, c := range []struct {
		arch    string
		extra   []gguf.KV
		flags   map[string][]int
		remove  []int
		broken  bool
		kindLen int // length of the cut recurrent_layers array, when there is one
	}{
		{"qwen35", nil, nil, []int{1}, true, 0},
		{"qwen35", nil, nil, []int{0, 1, 2, 3}, false, 0},
		{"qwen35moe", []gguf.KV{u32("qwen35moe.full_attention_interval", 2)}, nil, []int{1}, true, 0},
		{"qwen35moe", []gguf.KV{u32("qwen35moe.full_attention_interval", 2)}, nil, []int{2, 3}, false, 0},
		{"qwen35", nil, map[string][]int{"attention.recurrent_layers": {1, 1, 1, 0, 1, 1, 1, 0}}, []int{1}, false, 7},
	} {
		m, _ := fixture.Synthetic(t, fixture.Spec{Arch: c.arch, Blocks: 8, Extra: c.extra, PerLayer: c.flags})
		plan, err := surgery.PlanRemoval(m, c.remove, surgery.Options{Force: true})
		if err != nil {
			t.Fatalf("%s %v: %v", c.arch, c.remove, err)
		}
		if (plan.Broken != nil) != c.broken {
			t.Errorf("%s %v: broken %v, want %v", c.arch, c.remove, plan.Broken, c.broken)
		}
		for _, kv := range plan.KV {
			if kv.Key == c.arch+".attention.recurrent_layers" {
				if a, _ := kv.Value.Array(); a.Len() != c.kindLen {
					t.Errorf("%s: recurrent_layers of %d, want %d", c.arch, a.Len(), c.kindLen)
				}
			}
		}
	}
}

// An array over the main stack (the blocks before the multi-token
// prediction ones, as newer llama.cpp reads some) is cut with the blocks
// too; one over every block as before.
func TestMainStackArrays(t *testing.T) {
	m, _ := fixture.Synthetic(t, fixture.Spec{Arch: "glm4moe", Blocks: 5,
		Extra:    []gguf.KV{{Key: "glm4moe.nextn_predict_layers", Value: gguf.Uint32(1)}},
		PerLayer: map[string][]int{"attention.sliding_window_pattern": {1, 0, 1, 0}, "feed_forward_length": {10, 11, 12, 13, 14}}})
	plan, err := surgery.PlanRemoval(m, []int{1}, surgery.Options{})
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{"glm4moe.attention.sliding_window_pattern": "[uint32×3: 1 1 0]", "glm4moe.feed_forward_length": "[uint32×4: 10 12 13 14]"}
	for _, kv := range plan.KV {
		if w, ok := want[kv.Key]; ok {
			if got := kv.Value.String(); got != w {
				t.Errorf("%s = %s, want %s", kv.Key, got, w)
			}
			delete(want, kv.Key)
		}
	}
	if len(want) != 0 {
		t.Fatalf("missing %v", want)
	}
}

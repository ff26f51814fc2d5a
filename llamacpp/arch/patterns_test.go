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

// The layer rules read from the newest llama.cpp's source for
// architectures the linked one cannot run: removals that keep every kept
// block's kind pass without --force, the others are refused as for the
// pinned architectures; architectures whose rules were not read need
// --force.
func TestNewerRules(t *testing.T) {
	u32 := func(key string, v uint32) gguf.KV { return gguf.KV{Key: key, Value: gguf.Uint32(v)} }
	window := func(arch string) gguf.KV { return u32(arch+".attention.sliding_window", 512) }
	for _, c := range []struct {
		name   string
		arch   string
		blocks int
		extra  []gguf.KV
		flags  map[string][]int
		remove []int
		want   string // "" accepted, "pattern" an index-pattern refusal, else a refusal containing it
	}{
		{"step35", "step35", 6, nil, map[string][]int{"attention.sliding_window_pattern": {1, 0, 1, 0, 1, 0}}, []int{1}, ""},
		{"jais2", "jais2", 4, nil, nil, []int{1}, ""},
		{"kimi-linear", "kimi-linear", 6, []gguf.KV{u32("kimi-linear.leading_dense_block_count", 1)}, map[string][]int{"attention.head_count_kv": {0, 0, 0, 4, 0, 4}}, []int{1}, ""},
		{"a newer architecture whose rules were not read", "hy_v3", 4, nil, nil, []int{1}, "--force"},
		{"an architecture no llama.cpp knows", "nosucharch", 4, nil, nil, []int{1}, "--force"},
		{"cohere2moe, a period of 4", "cohere2moe", 9, []gguf.KV{u32("cohere2moe.attention.sliding_window_pattern", 4), u32("cohere2moe.nextn_predict_layers", 1)}, nil, []int{1}, "pattern"},
		{"cohere2moe, a whole period", "cohere2moe", 9, []gguf.KV{u32("cohere2moe.attention.sliding_window_pattern", 4), u32("cohere2moe.nextn_predict_layers", 1)}, nil, []int{4, 5, 6, 7}, ""},
		{"cohere2moe, an array of kinds", "cohere2moe", 9, []gguf.KV{u32("cohere2moe.nextn_predict_layers", 1)}, map[string][]int{"attention.sliding_window_pattern": {0, 1, 1, 1, 0, 1, 1, 1}}, []int{1}, ""},
		{"exaone-moe without the key (period 4)", "exaone-moe", 8, nil, nil, []int{1}, "pattern"},
		{"exaone-moe ignores an array", "exaone-moe", 8, nil, map[string][]int{"attention.sliding_window_pattern": {1, 1, 1, 1, 1, 1, 1, 1}}, []int{1}, "pattern"},
		{"exaone-moe, a whole period", "exaone-moe", 8, nil, nil, []int{0, 1, 2, 3}, ""},
		{"plamo3 without a window", "plamo3", 8, nil, nil, []int{1}, ""},
		{"plamo3 with a window (period 8)", "plamo3", 16, []gguf.KV{window("plamo3")}, nil, []int{1}, "pattern"},
		{"plamo3, a whole period", "plamo3", 16, []gguf.KV{window("plamo3")}, nil, []int{0, 1, 2, 3, 4, 5, 6, 7}, ""},
		{"modern-bert (period 3, full first)", "modern-bert", 9, []gguf.KV{window("modern-bert")}, nil, []int{1}, "pattern"},
		{"modern-bert, block 0's period", "modern-bert", 9, []gguf.KV{window("modern-bert")}, nil, []int{0, 1, 2}, ""},
		{"mellum, a scalar period", "mellum", 8, []gguf.KV{window("mellum"), u32("mellum.attention.sliding_window_pattern", 4)}, nil, []int{1}, "pattern"},
		{"mellum, an array", "mellum", 8, []gguf.KV{window("mellum")}, map[string][]int{"attention.sliding_window_pattern": {1, 1, 1, 0, 1, 1, 1, 0}}, []int{1}, ""},
		{"gemma4 keeping a kind of each", "gemma4", 8, nil, map[string][]int{"attention.sliding_window_pattern": {1, 1, 1, 0, 1, 1, 1, 0}}, []int{1}, ""},
		{"gemma4 left with sliding windows only", "gemma4", 8, nil, map[string][]int{"attention.sliding_window_pattern": {1, 1, 1, 0, 1, 1, 1, 0}}, []int{3, 7}, "only one kind"},
		{"gemma4 shared caches, an earlier block", "gemma4", 8, []gguf.KV{u32("gemma4.attention.shared_kv_layers", 2)}, map[string][]int{"attention.sliding_window_pattern": {1, 1, 1, 0, 1, 0, 1, 0}}, []int{1}, ""},
		{"gemma4 shared caches, a source", "gemma4", 8, []gguf.KV{u32("gemma4.attention.shared_kv_layers", 2)}, map[string][]int{"attention.sliding_window_pattern": {1, 1, 1, 0, 1, 0, 1, 0}}, []int{4}, "reuse the keys and values of blocks 4 and 5"},
		{"gemma4 shared caches, a sharing block", "gemma4", 8, []gguf.KV{u32("gemma4.attention.shared_kv_layers", 2)}, map[string][]int{"attention.sliding_window_pattern": {1, 1, 1, 0, 1, 0, 1, 0}}, []int{7}, "removing block 7"},
		{"gemma4-assistant (every block drafts)", "gemma4-assistant", 4, []gguf.KV{u32("gemma4-assistant.nextn_predict_layers", 4)}, nil, []int{1}, "multi-token-prediction"},
		{"glm-dsa, a shared block", "glm-dsa", 8, nil, map[string][]int{"attention.indexer.types": {1, 1, 1, 0, 0, 0, 1, 0}}, []int{3}, ""},
		{"glm-dsa, a full block with its shared ones", "glm-dsa", 8, nil, map[string][]int{"attention.indexer.types": {1, 1, 1, 0, 0, 0, 1, 0}}, []int{2, 3, 4, 5}, ""},
		{"glm-dsa, a full block alone", "glm-dsa", 8, nil, map[string][]int{"attention.indexer.types": {1, 1, 1, 0, 0, 0, 1, 0}}, []int{2}, "reuses the sparse-attention selection of block 2"},
		{"glm-dsa without types, kinds moved", "glm-dsa", 8, nil, nil, []int{3}, "moves block 6 to index 5"},
		{"glm-dsa without types, the end", "glm-dsa", 8, nil, nil, []int{4, 5, 6, 7}, ""},
		{"glm-dsa without types, a source", "glm-dsa", 8, nil, nil, []int{3, 4, 5, 6}, "reuses the sparse-attention selection of block 6"},
		{"mistral4 to 27 blocks (Lite)", "mistral4", 28, nil, nil, []int{1}, "is the Lite model"},
		{"mistral4 to 40 blocks", "mistral4", 41, nil, nil, []int{1}, ""},
	} {
		t.Run(c.name, func(t *testing.T) {
			m, _ := fixture.Synthetic(t, fixture.Spec{Arch: c.arch, Blocks: c.blocks, Extra: c.extra, PerLayer: c.flags})
			plan, err := surgery.PlanRemoval(m, c.remove, surgery.Options{})
			switch {
			case c.want == "" && err != nil:
				t.Fatalf("refused: %v", err)
			case c.want == "" && len(plan.Warnings) > 0:
				t.Fatalf("warnings: %v", plan.Warnings)
			case c.want == "pattern" && !errors.Is(err, arch.ErrIndexPattern):
				t.Fatalf("want a pattern refusal, got %v", err)
			case c.want != "" && c.want != "pattern" && (err == nil || !strings.Contains(err.Error(), c.want)):
				t.Fatalf("want %q, got %v", c.want, err)
			}
		})
	}
}

// mistral4 without a gating function gets the one the newer llama.cpp
// derives from the block count and vocabulary, with no warning (the linked
// llama.cpp cannot run it anyway).
func TestMistral4Gating(t *testing.T) {
	m, _ := fixture.Synthetic(t, fixture.Spec{Arch: "mistral4", Blocks: 48, Extra: []gguf.KV{{Key: "mistral4.vocab_size", Value: gguf.Uint32(154880)}}})
	plan, err := surgery.PlanRemoval(m, []int{2}, surgery.Options{})
	if err != nil {
		t.Fatal(err)
	}
	for _, kv := range plan.KV {
		if kv.Key == "mistral4.expert_gating_func" {
			if v, _ := kv.Value.Int(); v != 2 || len(plan.Warnings) != 0 {
				t.Fatalf("gating %d, warnings %v", v, plan.Warnings)
			}
			return
		}
	}
	t.Fatal("no mistral4.expert_gating_func written")
}

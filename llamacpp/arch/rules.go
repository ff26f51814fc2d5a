package arch

import (
	"errors"
	"fmt"
	"iter"
	"strconv"
	"strings"

	"github.com/ggufprune/ggufprune/gguf"
	"github.com/ggufprune/ggufprune/gguf/blocks"
)

// llama.cpp treats a model it cannot make sense of as a programming error: its
// loader and graph builder assert (GGML_ASSERT, abort) or divide by zero on
// values a downloaded file may well hold, and the whole process dies. The
// rules below are those conditions, read from the pinned llama.cpp and ggml
// sources (ollama v0.17.4: gguf.cpp, llama-model-loader.cpp, llama-model.cpp
// load_hparams, llama-hparams.cpp, llama-vocab.cpp, llama-graph.cpp,
// ggml.c), each stated on the GGUF metadata and tensor infos so that a file
// can be refused with a clear message before llama.cpp opens it. Conditions
// llama.cpp reports as a C++ exception are not here: the shim catches those.

// ErrRule is wrapped by the error of a file that breaks a Rule.
var ErrRule = errors.New("llama.cpp would abort on this file")

// Rule is one condition a model file must meet for llama.cpp to load
// and run it without aborting the process.
type Rule struct {
	Name  string // short name, in errors and tests
	Where string // where llama.cpp or ggml asserts
	// File marks rules of ggml's GGUF reader itself, which apply to every
	// GGUF file ggml opens (importance matrices too); Run marks rules that
	// matter only when the model is run (tokenized, decoded), not when it is
	// only read or quantized.
	File, Run bool
	check     func(v *ruleView) error
}

// RuleError is a file that breaks a Rule.
type RuleError struct {
	File string
	Rule string
	Msg  string
}

func (e *RuleError) Error() string {
	return fmt.Sprintf("%s: %s (llama.cpp would abort the process on this file; rule %q)", e.File, e.Msg, e.Rule)
}

func (e *RuleError) Unwrap() error { return ErrRule }

// Limits of the pinned llama.cpp.
const (
	MaxLayers     = 512 // LLAMA_MAX_LAYERS (llama-hparams.h)
	MaxExperts    = 512 // LLAMA_MAX_EXPERTS
	ggmlAlignment = 32  // TENSOR_ALIGNMENT (ggml-impl.h): mapped tensor data must start at such an offset
)

// ruleView is what the rules read: metadata and tensor infos. The infos
// are handed out one at a time, as a model's or a plan's are made, not
// copied: a header of 10^6 tensors is legal.
type ruleView struct {
	kvs     []gguf.KV
	tensors iter.Seq[gguf.TensorInfo]
	arch    string
	n       int // block count, once the block-count rule passed
}

func (v *ruleView) get(key string) (gguf.Value, bool) { return gguf.Metadata(v.kvs).Get(key) }

// Get makes a ruleView metadata.
func (v *ruleView) Get(key string) (gguf.Value, bool) { return v.get(key) }
func (v *ruleView) archKey(key string) string         { return v.arch + "." + key }
func (v *ruleView) getArch(key string) (gguf.Value, bool) {
	return v.get(v.archKey(key))
}

// u32 reads an optional uint32 scalar of the architecture (def when absent).
func (v *ruleView) u32(key string, def int64) (int64, error) {
	val, ok := v.getArch(key)
	if !ok {
		return def, nil
	}
	if val.Type() != gguf.TypeUint32 {
		return 0, fmt.Errorf("%s is %v, not a uint32", v.archKey(key), val.Type())
	}
	n, _ := val.Int()
	return n, nil
}

// u32s reads optional uint32 scalars of the architecture (0 when absent).
func (v *ruleView) u32s(keys ...string) ([]int64, error) {
	out := make([]int64, len(keys))
	for i, k := range keys {
		n, err := v.u32(k, 0)
		if err != nil {
			return nil, err
		}
		out[i] = n
	}
	return out, nil
}

// heads reads the attention and KV head counts per block; KV heads default
// to the heads (llama.cpp's default: no grouping). Both are nil without
// head_count.
func (v *ruleView) heads() (heads, kv []int64, err error) {
	if heads, err = v.perLayer(gguf.KeyHeadCount); err != nil {
		return nil, nil, err
	}
	if kv, err = v.perLayer(gguf.KeyHeadCountKV); err != nil {
		return nil, nil, err
	}
	if kv == nil {
		kv = heads
	}
	return heads, kv, nil
}

// perLayer reads a uint32 scalar or a per-layer integer array of the
// architecture: one value per block (nil when absent).
func (v *ruleView) perLayer(key string) ([]int64, error) {
	val, ok := v.getArch(key)
	if !ok {
		return nil, nil
	}
	full := v.archKey(key)
	if a, ok := val.Array(); ok {
		// llama.cpp's get_arr asserts the element type instead of reporting it.
		if a.Elem() != gguf.TypeUint32 && a.Elem() != gguf.TypeInt32 {
			return nil, fmt.Errorf("%s is an array of %v; llama.cpp asserts on anything but uint32 or int32 elements", full, a.Elem())
		}
		if a.Len() != v.n {
			return nil, fmt.Errorf("%s has %d elements for %d blocks", full, a.Len(), v.n)
		}
		out := make([]int64, a.Len())
		for i := range out {
			out[i], _ = a.Index(i).Int()
			if out[i] < 0 {
				return nil, fmt.Errorf("%s[%d] is %d", full, i, out[i])
			}
		}
		return out, nil
	}
	n, isInt := val.Int()
	if !isInt || n < 0 {
		return nil, fmt.Errorf("%s is %v %v, not a count", full, val.Type(), val)
	}
	out := make([]int64, v.n)
	for i := range out {
		out[i] = n
	}
	return out, nil
}

// uniformAttention are the architectures whose graph sizes every block's
// attention from block 0's head counts: a per-layer head count that is zero
// or differs from block 0's makes ggml assert when the context is made.
// (Hybrid architectures such as granitehybrid, falcon-h1, lfm2 or nemotron_h
// give recurrent blocks zero KV heads on purpose.)
var uniformAttention = setOf("llama", "mistral3", "qwen2", "qwen2moe", "qwen3", "qwen3moe", "gemma", "gemma2", "gemma3",
	"phi3", "granite", "granitemoe", "deepseek2", "glm4moe", "gpt-oss", "olmo2", "cohere2", "starcoder2", "exaone4",
	"smollm3", "llama4")

// hybrids are the hybrid architectures whose blocks are either attention
// ('a') or recurrent ('r') (or neither, 0), as load_hparams derives it from
// the block index i, head_count_kv and feed_forward_length (falcon-h1's
// blocks are both, and need no rule); rule says how, in errors.
var hybrids = map[string]struct {
	kind func(i int, kv, ff int64) byte
	rule string
}{
	"granitehybrid":  {recurrentWithoutKV, "head_count_kv 0 marks a recurrent block"},
	"jamba":          {recurrentWithoutKV, "head_count_kv 0 marks a recurrent block"},
	"plamo2":         {recurrentWithoutKV, "head_count_kv 0 marks a recurrent block"},
	"lfm2":           {recurrentWithoutKV, "head_count_kv 0 marks a convolution block"},
	"lfm2moe":        {recurrentWithoutKV, "head_count_kv 0 marks a convolution block"},
	"nemotron_h":     {nemotronKind, nemotronRule},
	"nemotron_h_moe": {nemotronKind, nemotronRule},
	"qwen3next": {func(i int, _, _ int64) byte {
		if (i+1)%4 != 0 {
			return 'r'
		}
		return 'a'
	}, "every 4th block has attention, the others are recurrent"},
}

const nemotronRule = "head_count_kv and feed_forward_length 0 mark a recurrent block, head_count_kv above 0 an attention block"

func recurrentWithoutKV(_ int, kv, _ int64) byte {
	if kv == 0 {
		return 'r'
	}
	return 'a'
}

func nemotronKind(_ int, kv, ff int64) byte {
	switch {
	case ff > 0:
		return 0
	case kv == 0:
		return 'r'
	}
	return 'a'
}

// headSizeEqual are the architectures whose graph asserts that the value
// head size equals the key head size, and (the second set) that the RoPE
// dimension equals it too (models/*.cpp).
var (
	valueEqualsKey = setOf("llama", "mistral3", "granite", "granitemoe", "qwen2", "qwen2moe", "qwen3", "qwen3moe",
		"glm4moe", "phi3", "llama4", "gemma2", "gemma3", "gpt-oss")
	ropeEqualsKey = setOf("llama", "mistral3", "granite", "granitemoe", "qwen2", "qwen2moe", "qwen3", "qwen3moe", "llama4", "gpt-oss")
)

func setOf(names ...string) map[string]bool {
	m := make(map[string]bool, len(names))
	for _, n := range names {
		m[n] = true
	}
	return m
}

// Rules is the one table of conditions llama.cpp asserts on. The
// architecture rules of block surgery (indexPatterns, MTPBlocks) work on
// the same metadata.
var Rules = []Rule{
	{Name: "metadata-key", File: true, Where: "gguf.cpp gguf_kv: GGML_ASSERT(!key.empty())", check: func(v *ruleView) error {
		for i, kv := range v.kvs {
			if kv.Key == "" {
				return fmt.Errorf("metadata entry %d has an empty key", i)
			}
		}
		return nil
	}},
	{Name: "tensor-dims", File: true, Where: "gguf.cpp: INT64_MAX/ne[j] (SIGFPE); ggml.c ggml_mul_mat: !ggml_is_transposed", check: func(v *ruleView) error {
		for t := range v.tensors {
			for j, d := range t.Dims {
				if d == 0 {
					return fmt.Errorf("tensor %s has shape %v: dimension %d is 0", t.Name, t.Dims, j)
				}
			}
		}
		return nil
	}},
	{Name: "tensor-type", Where: "ggml-cpu: types without a CPU dot product or row getter", check: func(v *ruleView) error {
		for t := range v.tensors {
			switch t.Type {
			case gguf.TypeQ8_1, gguf.TypeQ8_K, gguf.TypeI8, gguf.TypeI16, gguf.TypeI32, gguf.TypeI64, gguf.TypeF64:
				if strings.HasSuffix(t.Name, ".weight") {
					return fmt.Errorf("tensor %s is %v, a type ggml's CPU backend cannot compute with", t.Name, t.Type)
				}
			}
		}
		return nil
	}},
	{Name: "expert-tensor-dims", Where: "ggml.c ggml_mul_mat_id: GGML_ASSERT(as->ne[3] == 1)", check: func(v *ruleView) error {
		for t := range v.tensors {
			if strings.HasSuffix(t.Name, "_exps.weight") && len(t.Dims) > 3 && t.Dims[3] != 1 {
				return fmt.Errorf("expert tensor %s has shape %v: at most 3 dimensions", t.Name, t.Dims)
			}
		}
		return nil
	}},
	{Name: "f32-tensors", Where: "ggml.c ggml_rope_impl, ggml_soft_max_add_sinks: GGML_ASSERT(type == GGML_TYPE_F32)", check: func(v *ruleView) error {
		for t := range v.tensors {
			base := t.Name
			if _, rest, ok, _ := blocks.Split(t.Name); ok {
				base = rest
			}
			switch base {
			case "rope_freqs.weight", "rope_factors_long.weight", "rope_factors_short.weight", "attn_sinks.weight", "attn_sinks":
				if t.Type != gguf.TypeF32 {
					return fmt.Errorf("tensor %s is %v; llama.cpp needs F32 there", t.Name, t.Type)
				}
			}
		}
		return nil
	}},
	{Name: "block-count", Where: "llama-hparams.cpp n_head(): GGML_ABORT for 0 blocks; per-layer arrays of LLAMA_MAX_LAYERS", check: func(v *ruleView) error {
		key := v.archKey(gguf.KeyBlockCount)
		val, ok := v.get(key)
		if !ok {
			return fmt.Errorf("%s is missing", key)
		}
		n, isInt := val.Int()
		if val.Type() != gguf.TypeUint32 || !isInt {
			return fmt.Errorf("%s is %v, not a uint32", key, val.Type())
		}
		if n < 1 || n > MaxLayers {
			return fmt.Errorf("%s is %d; llama.cpp takes 1 to %d blocks", key, n, MaxLayers)
		}
		v.n = int(n)
		return nil
	}},
	{Name: "blocks-present", Where: "llama-model.cpp load_tensors (a missing block's tensors are required)", check: func(v *ruleView) error {
		return checkBlocksPresent(v.tensors, v.n, v.archKey(gguf.KeyBlockCount))
	}},
	{Name: "mtp-blocks", Where: "llama-model.cpp load_tensors (glm4moe, …): the last nextn_predict_layers blocks are multi-token prediction; with none left for the decode the graph has no block and ggml asserts \"tensor buffer not set\"", check: func(v *ruleView) error {
		val, ok := v.getArch(gguf.KeyNextNPredictLayers)
		if !ok {
			return nil
		}
		k, isInt := val.Int()
		if !isInt || k < 0 {
			return fmt.Errorf("%s is %v %v, not a count", v.archKey(gguf.KeyNextNPredictLayers), val.Type(), val)
		}
		if k >= int64(v.n) {
			return fmt.Errorf("%s is %d but %s is %d: every block would be a multi-token-prediction block, and a decode would run none", v.archKey(gguf.KeyNextNPredictLayers), k, v.archKey(gguf.KeyBlockCount), v.n)
		}
		return nil
	}},
	{Name: "head-counts", Where: "ggml.c ggml_set_rows / ggml_reshape / ggml_can_mul_mat (head counts by block)", check: func(v *ruleView) error {
		heads, kv, err := v.heads()
		if err != nil {
			return err
		}
		if _, err := v.perLayer(gguf.KeyFeedForwardLength); err != nil {
			return err
		}
		uniform := uniformAttention[v.arch]
		for i := range heads {
			if uniform && (heads[i] == 0 || kv[i] == 0) {
				return fmt.Errorf("block %d has %d attention heads and %d KV heads (%s, %s); %s needs both above 0", i, heads[i], kv[i], v.archKey(gguf.KeyHeadCount), v.archKey(gguf.KeyHeadCountKV), v.arch)
			}
			if uniform && (heads[i] != heads[0] || kv[i] != kv[0]) {
				return fmt.Errorf("block %d has %d attention heads and %d KV heads, block 0 has %d and %d; %s sizes every block like block 0", i, heads[i], kv[i], heads[0], kv[0], v.arch)
			}
			if heads[i] > 0 && kv[i] > 0 && heads[i]%kv[i] != 0 {
				return fmt.Errorf("block %d: %d attention heads are not a multiple of %d KV heads (%s)", i, heads[i], kv[i], v.archKey(gguf.KeyHeadCountKV))
			}
		}
		return nil
	}},
	{Name: "tensor-shapes", Where: "llama-model.cpp load_tensors create_tensor: a tensor whose shape is not the one the hyperparameters give is refused (\"wrong shape\"): such a file does not load", check: func(v *ruleView) error {
		if !uniformAttention[v.arch] {
			return nil
		}
		embd, err := v.u32(gguf.KeyEmbeddingLength, 0)
		if err != nil || embd == 0 {
			return err
		}
		for t := range v.tensors {
			base := t.Name
			if _, rest, ok, _ := blocks.Split(t.Name); ok {
				base = rest
			}
			dim := -1 // the dimension that must be the embedding length
			switch base {
			case "token_embd.weight", "attn_q.weight", "attn_k.weight", "attn_v.weight", "ffn_up.weight", "ffn_gate.weight":
				dim = 0
			case "output_norm.weight", "attn_norm.weight", "ffn_norm.weight":
				if len(t.Dims) != 1 || t.Dims[0] != uint64(embd) {
					return fmt.Errorf("tensor %s has shape %v; llama.cpp expects [%d] (%s): a tensor of another model?", t.Name, t.Dims, embd, v.archKey(gguf.KeyEmbeddingLength))
				}
			}
			if dim >= 0 && (len(t.Dims) <= dim || t.Dims[dim] != uint64(embd)) {
				return fmt.Errorf("tensor %s has shape %v; llama.cpp expects %d (%s) in dimension %d: a tensor of another model?", t.Name, t.Dims, embd, v.archKey(gguf.KeyEmbeddingLength), dim)
			}
		}
		return nil
	}},
	{Name: "head-size", Where: "models/*.cpp: GGML_ASSERT(n_embd_head == n_embd_head_k / n_rot); ggml-cpu rope: n_dims <= ne0, even", check: func(v *ruleView) error {
		heads, err := v.perLayer(gguf.KeyHeadCount)
		if err != nil || len(heads) == 0 || heads[0] == 0 {
			return err
		}
		embd, err := v.u32(gguf.KeyEmbeddingLength, 0)
		if err != nil {
			return err
		}
		keyLen, err := v.u32("attention.key_length", embd/heads[0])
		if err != nil {
			return err
		}
		valLen, err := v.u32("attention.value_length", keyLen)
		if err != nil {
			return err
		}
		rot, err := v.u32("rope.dimension_count", keyLen)
		if err != nil {
			return err
		}
		if valueEqualsKey[v.arch] && valLen != keyLen {
			return fmt.Errorf("%s %d differs from %s %d; %s needs them equal", v.archKey("attention.value_length"), valLen, v.archKey("attention.key_length"), keyLen, v.arch)
		}
		if ropeEqualsKey[v.arch] && rot != keyLen {
			return fmt.Errorf("%s %d differs from the head size %d; %s needs them equal", v.archKey("rope.dimension_count"), rot, keyLen, v.arch)
		}
		if rot%2 != 0 || (v.arch != "deepseek2" && rot > keyLen) {
			return fmt.Errorf("%s %d must be even and at most the head size %d", v.archKey("rope.dimension_count"), rot, keyLen)
		}
		return nil
	}},
	{Name: "low-rank-attention", Where: "models/deepseek2.cpp: the KV cache holds head_count_kv heads of key_length; ggml_set_rows asserts the graph's K and V rows fit them", check: func(v *ruleView) error {
		if v.arch != "deepseek2" {
			return nil
		}
		heads, kv, err := v.heads()
		if err != nil || len(heads) == 0 {
			return err
		}
		mla, err := v.u32s("attention.key_length_mla", "attention.value_length_mla")
		if err != nil {
			return err
		}
		kMLA, vMLA := mla[0], mla[1]
		if kMLA == 0 || vMLA == 0 {
			// Decompressed attention: one K and V head per query head.
			for i := range heads {
				if kv[i] != heads[i] {
					return fmt.Errorf("block %d has %d KV heads and %d attention heads; %s without %s and %s needs them equal", i, kv[i], heads[i], v.arch, v.archKey("attention.key_length_mla"), v.archKey("attention.value_length_mla"))
				}
			}
			return nil
		}
		// Absorbed attention: one shared head holding the compressed KV
		// (kv_lora_rank) and the RoPE part.
		sizes, err := v.u32s("attention.kv_lora_rank", "rope.dimension_count", "attention.key_length", "attention.value_length")
		if err != nil {
			return err
		}
		rank, rot, keyLen, valLen := sizes[0], sizes[1], sizes[2], sizes[3]
		for i := range kv {
			if kv[i] != 1 {
				return fmt.Errorf("block %d has %d KV heads; %s with %s needs 1", i, kv[i], v.arch, v.archKey("attention.key_length_mla"))
			}
		}
		if keyLen != rank+rot || valLen != rank {
			return fmt.Errorf("%s %d and %s %d must be %s + %s (%d) and %s (%d) in %s with %s", v.archKey("attention.key_length"), keyLen, v.archKey("attention.value_length"), valLen,
				v.archKey("attention.kv_lora_rank"), v.archKey("rope.dimension_count"), rank+rot, v.archKey("attention.kv_lora_rank"), rank, v.arch, v.archKey("attention.key_length_mla"))
		}
		return nil
	}},
	{Name: "experts", Where: "llama-model.cpp load_hparams: GGML_ASSERT on n_expert, n_expert_used, expert groups; load_tensors: nemotron_h's n_ff / n_expert_used", check: func(v *ruleView) error {
		e, err := v.u32(gguf.KeyExpertCount, 0)
		if err != nil {
			return err
		}
		u, err := v.u32(gguf.KeyExpertUsedCount, 0)
		if err != nil {
			return err
		}
		g, err := v.u32("expert_group_count", 0)
		if err != nil {
			return err
		}
		gu, err := v.u32("expert_group_used_count", 0)
		if err != nil {
			return err
		}
		ek, uk := v.archKey(gguf.KeyExpertCount), v.archKey(gguf.KeyExpertUsedCount)
		switch {
		case e > MaxExperts:
			return fmt.Errorf("%s is %d; llama.cpp takes at most %d experts", ek, e, MaxExperts)
		case u > e:
			return fmt.Errorf("%s is %d but %s is %d: a block cannot use more experts than it has", uk, u, ek, e)
		case e == 0 && g != 0:
			return fmt.Errorf("%s is %d without experts", v.archKey("expert_group_count"), g)
		case e > 0 && u == 0:
			return fmt.Errorf("%s is 0 with %d experts", uk, e)
		case e > 0 && g >= e:
			return fmt.Errorf("%s %d must be below %s %d", v.archKey("expert_group_count"), g, ek, e)
		case e > 0 && g > 1 && (e%g != 0 || gu < 1 || gu >= g):
			return fmt.Errorf("%d experts in %d groups with %d used (%s) do not fit", e, g, gu, v.archKey("expert_group_used_count"))
		}
		if (v.arch == "glm4moe" || v.arch == "gpt-oss") && (e == 0 || u == 0) {
			return fmt.Errorf("%s needs %s and %s above 0 (they are %d and %d)", v.arch, ek, uk, e, u)
		}
		// load_tensors sizes experts as n_ff_exp, or n_ff / n_expert_used
		// without it: a division by zero (SIGFPE) in dense files.
		if v.arch == "nemotron_h" || v.arch == "nemotron_h_moe" {
			if ffExp, err := v.u32("expert_feed_forward_length", 0); err != nil || (ffExp == 0 && u == 0) {
				if err != nil {
					return err
				}
				return fmt.Errorf("%s without %s divides by %s, which is 0 (llama-model.cpp load_tensors); the pinned llama.cpp needs one of them above 0", v.arch, v.archKey("expert_feed_forward_length"), uk)
			}
		}
		return nil
	}},
	{Name: "enum-values", Where: "llama-model.cpp: rope scaling type; llama-graph.cpp: pooling type, expert gating function", check: func(v *ruleView) error {
		if val, ok := v.getArch("rope.scaling.type"); ok {
			s, _ := val.Str()
			switch s {
			case "none", "linear", "yarn", "longrope":
			default:
				return fmt.Errorf("%s is %v; llama.cpp knows none, linear, yarn and longrope", v.archKey("rope.scaling.type"), val)
			}
		}
		if p, err := v.u32("pooling_type", 0); err != nil {
			return err
		} else if p > 4 && p != 0xFFFFFFFF {
			return fmt.Errorf("%s is %d; llama.cpp knows 0 to 4", v.archKey("pooling_type"), p)
		}
		if g, err := v.u32("expert_gating_func", 0); err != nil {
			return err
		} else if g > 3 {
			return fmt.Errorf("%s is %d; llama.cpp knows 0 to 3", v.archKey("expert_gating_func"), g)
		}
		if val, ok := v.getArch("attention.temperature_scale"); ok && v.arch == "deepseek2" {
			if f, _ := val.Float(); f != 0 {
				if n, err := v.u32("attention.temperature_length", 0); err != nil || n == 0 {
					return fmt.Errorf("%s is set but %s is 0 or missing", v.archKey("attention.temperature_scale"), v.archKey("attention.temperature_length"))
				}
			}
		}
		return nil
	}},
	{Name: "hybrid-kinds", Where: "llama-memory-hybrid.cpp: a hybrid model's attention cache or recurrent state with no layers gets no buffer (GGML_ASSERT(buffer) in ggml-backend.cpp)", check: func(v *ruleView) error {
		h, ok := hybrids[v.arch]
		if !ok {
			return nil
		}
		_, kv, err := v.heads()
		if err != nil {
			return err
		}
		ff, err := v.perLayer(gguf.KeyFeedForwardLength)
		if err != nil {
			return err
		}
		var attn, recr int
		for i := 0; i < v.n; i++ {
			var kvi, ffi int64
			if i < len(kv) {
				kvi = kv[i]
			}
			if i < len(ff) {
				ffi = ff[i]
			}
			switch h.kind(i, kvi, ffi) {
			case 'a':
				attn++
			case 'r':
				recr++
			}
		}
		if attn == 0 || recr == 0 {
			return fmt.Errorf("its %d blocks have %d with attention and %d recurrent; %s needs at least one of each (%s)", v.n, attn, recr, v.arch, h.rule)
		}
		return nil
	}},
	{Name: "attention-pattern", Where: "llama-kv-cache-iswa.cpp: a cache with no layers gets no buffer (GGML_ASSERT(buffer) in ggml-backend.cpp)", check: func(v *ruleView) error {
		// Sliding-window architectures keep two KV caches, one for the
		// global-attention blocks and one for the others; a model too
		// short to have both leaves one empty.
		p := swaPatterns[v.arch]
		period := swaPeriod(v, v.arch, v.n)
		if !p.cache || period == 0 {
			return nil
		}
		need := period // the global block is the last of the period
		if p.first {
			need = 2
		}
		if v.n < need {
			return fmt.Errorf("%s has %d blocks; %s with a sliding window needs at least %d, so that it keeps a global-attention block and a sliding-window one", v.archKey(gguf.KeyBlockCount), v.n, v.arch, need)
		}
		return nil
	}},
	{Name: "vocabulary", Where: "gguf.cpp gguf_get_arr_str: string elements; llama-vocab.cpp: unique tokens, scores and types read unchecked", check: checkVocabulary},
	{Name: "tokenizer-model", Where: "llama-vocab.cpp: tokenizing a vocabulary of type none aborts", Run: true, check: func(v *ruleView) error {
		val, _ := v.get("tokenizer.ggml.model")
		if s, _ := val.Str(); s == "none" || s == "no_vocab" {
			return fmt.Errorf("tokenizer.ggml.model is %q: the model has no tokenizer to run text through", s)
		}
		return nil
	}},
}

// checkBlocksPresent refuses tensors named for blocks past n and blocks
// with no tensor at all. key names the block count in messages.
func checkBlocksPresent(tensors iter.Seq[gguf.TensorInfo], n int, key string) error {
	have := make([]bool, n)
	for t := range tensors {
		b, _, ok, err := blocks.Split(t.Name)
		if err != nil {
			return err
		}
		if !ok {
			continue
		}
		if b >= n {
			return fmt.Errorf("tensor %s belongs to block %d but %s is %d", t.Name, b, key, n)
		}
		have[b] = true
	}
	var missing []int
	for b, ok := range have {
		if !ok {
			missing = append(missing, b)
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("%s is %d but blocks %s have no tensors", key, n, blocks.FormatList(missing))
	}
	return nil
}

// defaultEOS is llama.cpp's end-of-sequence token of each tokenizer model,
// used when the metadata's id is missing or out of range (llama-vocab.cpp).
var defaultEOS = map[string]int64{"llama": 2, "gpt2": 11, "t5": 1, "bert": 102, "plamo2": 2}

func checkVocabulary(v *ruleView) error {
	const key = "tokenizer.ggml.tokens"
	val, ok := v.get(key)
	if !ok {
		return nil // llama.cpp refuses a model without a vocabulary with an exception
	}
	toks, isArr := val.Array()
	if !isArr || toks.Elem() != gguf.TypeString {
		return fmt.Errorf("%s is %v, not an array of strings", key, describe(val))
	}
	n := toks.Len()
	if n == 0 || n >= 1<<31 {
		return fmt.Errorf("%s has %d tokens", key, n)
	}
	seen := make(map[string]int, n)
	for i := 0; i < n; i++ {
		s, _ := toks.Index(i).Str()
		if s == "" {
			s = "[EMPTY_" + strconv.Itoa(i) + "]" // llama.cpp's name for an empty token
		}
		if j, dup := seen[s]; dup {
			return fmt.Errorf("%s: tokens %d and %d are both %q; llama.cpp asserts that every token is distinct", key, j, i, s)
		}
		seen[s] = i
	}
	for _, a := range []struct {
		key   string
		elems []gguf.ValueType
	}{
		{"tokenizer.ggml.scores", []gguf.ValueType{gguf.TypeFloat32}},
		{"tokenizer.ggml.token_type", []gguf.ValueType{gguf.TypeInt32, gguf.TypeUint32}},
	} {
		val, ok := v.get(a.key)
		if !ok {
			continue
		}
		arr, isArr := val.Array()
		if !isArr || (arr.Elem() != a.elems[0] && (len(a.elems) < 2 || arr.Elem() != a.elems[1])) || arr.Len() != n {
			return fmt.Errorf("%s is %v; llama.cpp reads it unchecked as %v × %d (one per token)", a.key, describe(val), a.elems[0], n)
		}
	}
	if val, ok := v.get("tokenizer.ggml.merges"); ok {
		if arr, isArr := val.Array(); !isArr || arr.Elem() != gguf.TypeString {
			return fmt.Errorf("tokenizer.ggml.merges is %v, not an array of strings", describe(val))
		}
	}
	model, _ := v.get("tokenizer.ggml.model")
	ms, _ := model.Str()
	eos, hasDefault := defaultEOS[ms]
	if val, ok := v.get("tokenizer.ggml.eos_token_id"); ok {
		if id, isInt := val.Int(); isInt && id >= 0 && id < int64(n) {
			eos, hasDefault = id, true
		}
	}
	if hasDefault && eos >= int64(n) {
		return fmt.Errorf("the end-of-sequence token is %d (the %s tokenizer's default; tokenizer.ggml.eos_token_id is missing or out of range) but there are %d tokens", eos, ms, n)
	}
	return nil
}

// describe names a value's type, with the element type of arrays.
func describe(v gguf.Value) string {
	if a, ok := v.Array(); ok {
		return fmt.Sprintf("an array of %d %v", a.Len(), a.Elem())
	}
	return "a " + v.Type().String()
}

// Purpose is what a file is checked for: some rules matter only when a
// model runs (is tokenized, decoded), not when it is read or quantized.
type Purpose int

const (
	Load Purpose = iota // read or quantized: every rule but those marked Run
	Run                 // run: every rule
)

// CheckModel checks the model against every Rule that applies to purpose
// and returns the first broken one as a *RuleError.
func CheckModel(m *gguf.Model, purpose Purpose) error {
	arch, err := m.Architecture()
	if err != nil {
		return err
	}
	return checkLlama(m.Name(), &ruleView{kvs: m.KV(), tensors: infos(m), arch: arch}, purpose)
}

// CheckFile checks a file about to be written, given by its metadata and
// tensor infos (name names it in errors), as CheckModel checks a model: a
// file llama.cpp would abort on is refused before it is written. The rules
// range over tensors as often as they need.
func CheckFile(name string, kvs []gguf.KV, tensors iter.Seq[gguf.TensorInfo], purpose Purpose) error {
	kv, err := gguf.NewArchKV(gguf.Metadata(kvs))
	if err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	return checkLlama(name, &ruleView{kvs: kvs, tensors: tensors, arch: kv.Arch}, purpose)
}

// infos yields the tensor infos of a model, one at a time.
func infos(m *gguf.Model) iter.Seq[gguf.TensorInfo] {
	return func(yield func(gguf.TensorInfo) bool) {
		for _, t := range m.AllTensors() {
			if !yield(t.TensorInfo) {
				return
			}
		}
	}
}

// CheckGGML checks a GGUF file against the rules of ggml's own GGUF reader
// (the Rules marked File), for files that are not models.
func CheckGGML(f *gguf.File) error {
	tensors := func(yield func(gguf.TensorInfo) bool) {
		for _, t := range f.AllTensors() {
			if !yield(t) {
				return
			}
		}
	}
	return checkRules(f.Name(), &ruleView{kvs: f.KV, tensors: tensors}, func(r Rule) bool { return r.File })
}

// CheckBlocks refuses a model whose block count does not match its
// tensors: tensors of blocks past the count, or blocks without tensors.
func CheckBlocks(m *gguf.Model) error {
	n, err := m.BlockCount()
	if err != nil {
		return err
	}
	arch, _ := m.Architecture()
	if err := checkBlocksPresent(infos(m), n, arch+"."+gguf.KeyBlockCount); err != nil {
		return fmt.Errorf("%s: %w", m.Name(), err)
	}
	return nil
}

func checkLlama(name string, v *ruleView, purpose Purpose) error {
	return checkRules(name, v, func(r Rule) bool { return purpose == Run || !r.Run })
}

func checkRules(name string, v *ruleView, use func(Rule) bool) error {
	for _, r := range Rules {
		if !use(r) {
			continue
		}
		if err := r.check(v); err != nil {
			return &RuleError{File: name, Rule: r.Name, Msg: err.Error()}
		}
		if r.Name == "block-count" && v.n == 0 {
			break
		}
	}
	return nil
}

// MappedAlignmentOK reports whether every tensor's data starts at a file
// offset ggml can use from a memory map (a multiple of 32 bytes). A legal
// file with general.alignment below 32 may not; llama.cpp must then read it
// into memory instead of mapping it.
func MappedAlignmentOK(m *gguf.Model) bool {
	for _, t := range m.AllTensors() {
		if (uint64(m.Shards[t.Shard].DataOffset)+t.Offset)%ggmlAlignment != 0 {
			return false
		}
	}
	return true
}

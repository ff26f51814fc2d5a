package arch

import (
	"errors"
	"fmt"
	"math"

	"github.com/ggufprune/ggufprune/gguf"
	"github.com/ggufprune/ggufprune/gguf/blocks"
)

// The layer rules of block surgery: what llama.cpp's loader and graphs
// (llama-model.cpp load_hparams, load_tensors, create_memory; models/*.cpp)
// derive from a block's index or from the block count, and so what a
// removal must rewrite, keep, or refuse. Read from the pinned llama.cpp
// (ollama v0.17.4); each entry names where.

// swaPattern is the sliding-window layout load_hparams gives an
// architecture (set_swa_pattern): every period-th block has global
// attention, the others a sliding window.
type swaPattern struct {
	period int
	first  bool // the first block of each period is global (set_swa_pattern(n, true)); else the last
	window bool // only when {arch}.attention.sliding_window is above 0
	count  int  // only with exactly this many blocks
	noZero bool // on unless {arch}.attention.sliding_window is present and 0
	cache  bool // the model keeps KV caches (one per kind): too few blocks leave one empty
}

// swaPatterns is the one table of sliding-window layouts, read by the
// index patterns and by the rule attention-pattern.
var swaPatterns = map[string]swaPattern{
	"gemma2":          {period: 2, cache: true},
	"gpt-oss":         {period: 2, cache: true},
	"cohere2":         {period: 4, cache: true},
	"gemma3n":         {period: 5, cache: true},
	"gemma3":          {period: 6, window: true, cache: true},
	"olmo2":           {period: 4, window: true, cache: true}, // OLMo 3
	"afmoe":           {period: 4, window: true, cache: true},
	"smallthinker":    {period: 4, first: true, window: true, cache: true},
	"exaone4":         {period: 4, count: 64, cache: true},    // the 32B
	"llama4":          {period: 4, noZero: true, cache: true}, // chunked attention
	"gemma-embedding": {period: 6},                            // an encoder: no gguf.KV cache
}

// swaPeriod is the architecture's sliding-window period in a file of n
// blocks, 0 when it has none.
func swaPeriod(md gguf.Getter, arch string, n int) int {
	p, ok := swaPatterns[arch]
	if !ok {
		return 0
	}
	w, found := md.Get(arch + "." + gguf.KeySlidingWindow)
	size, _ := w.Int()
	switch {
	case p.window && (!found || size <= 0), p.count != 0 && n != p.count, p.noZero && found && size == 0:
		return 0
	}
	return p.period
}

// swa is the index-pattern period of a sliding-window architecture.
func swa(arch string) func(*gguf.Model) int {
	return func(m *gguf.Model) int { return swaPeriod(m, arch, blockCount(m)) }
}

// indexPattern describes an architecture whose layer kind (sliding-window or
// global attention, MoE or dense, recurrent or attention, RoPE or not) follows
// from the block index (or the block count) with no per-layer metadata array.
// Removing blocks then changes the kind of later blocks unless the removal
// keeps every kept block's kind.
type indexPattern struct {
	what string // what the index decides
	// period is the period of the kinds in this file: the kind of block i
	// is i mod period. 0 turns the pattern off (no sliding window, ...); 1
	// with kind is a pattern without a period.
	period func(m *gguf.Model) int
	// kind, when set, is what the loader and graph make of block i of n
	// blocks, for patterns that are more than a position in a period.
	kind func(m *gguf.Model, i, n int) string
	// valid says which removals keep the pattern (default: whole runs of
	// the period).
	valid func(m *gguf.Model, period int) string
}

// indexPatterns is the one table of such architectures.
var indexPatterns = map[string]indexPattern{
	// set_swa_pattern(2); a 46-block gemma2 is the 27B, whose query scale
	// comes from the block count.
	"gemma2": {what: "sliding-window vs global attention (every 2nd block is global)", period: swa("gemma2"),
		kind: gemmaKind(46, swa("gemma2")), valid: gemmaValid(46)},
	// set_swa_pattern(6) when sliding_window > 0 (no per-layer array is
	// read); 62 blocks are the 27B.
	"gemma3": {what: "sliding-window vs global attention (every 6th block is global)", period: gemma3Period,
		kind: gemmaKind(62, gemma3Period), valid: gemmaValid(62)},
	"gemma3n": {what: "sliding-window vs global attention (every 5th block is global), activation sparsity (blocks 0-9) and KV sharing (blocks 20 and on reuse the caches of blocks 18 and 19)",
		period: swa("gemma3n"), kind: gemma3nKind, valid: fixedValid("whole runs of 5 consecutive blocks that keep every block on its side of blocks 10 and 20, and keep blocks 18 and 19 where blocks 20 and on remain")},
	"cohere2": {what: "sliding-window vs global attention (every 4th block is global)", period: swa("cohere2")},
	"gpt-oss": {what: "sliding-window vs full attention (alternating blocks)", period: swa("gpt-oss")},
	// Sliding windows only with exactly 64 blocks (the 32B).
	// Sliding windows only with exactly 64 blocks (the 32B).
	"exaone4": {what: "sliding-window vs global attention (every 4th block is global, only in the 64-block model)", period: swa("exaone4"),
		kind:  func(_ *gguf.Model, i, n int) string { return fmt.Sprint(i%4, n == 64) },
		valid: fixedValid("no removal: llama.cpp gives exaone4 sliding-window attention only with exactly 64 blocks")},
	"llama4":  {what: "NoPE blocks (every 4th) and MoE interleaving", period: llama4Period},
	"smollm3": {what: "NoPE blocks (every 4th block has no RoPE)", period: fixedPeriod(4)},
	// The pinned loader ignores full_attention_interval: "(i + 1) % 4 != 0"
	// is recurrent.
	"qwen3next": {what: "linear vs full attention (every 4th block is full)", period: fixedPeriod(4)},
	// Known only to newer llama.cpp (models/qwen35.cpp, qwen35moe.cpp
	// load_arch_hparams): an attention.recurrent_layers array names the
	// recurrent blocks (and is cut with them); without it every
	// full_attention_interval-th block (default 4) has full attention.
	"qwen35":    {what: "linear vs full attention (every full_attention_interval-th block is full)", period: recurrentPeriod("qwen35")},
	"qwen35moe": {what: "linear vs full attention (every full_attention_interval-th block is full)", period: recurrentPeriod("qwen35moe")},
	// Known only to newer llama.cpp: a sliding-window period read as a
	// scalar (see newerSWAs).
	"cohere2moe":  newerSWAPattern("cohere2moe"),
	"exaone-moe":  newerSWAPattern("exaone-moe"),
	"plamo3":      newerSWAPattern("plamo3"),
	"modern-bert": newerSWAPattern("modern-bert"),
	"mellum":      newerSWAPattern("mellum"),
	// OLMo 3: set_swa_pattern(4) when sliding_window > 0.
	"olmo2": {what: "sliding-window vs global attention (every 4th block is global)", period: swa("olmo2")},
	// NoPE every 4th block (n_no_rope_layer_step keeps its default 4).
	"afmoe": {what: "NoPE blocks and, with a sliding window, global attention (every 4th block)", period: fixedPeriod(4)},
	// set_swa_pattern(4, true): the first block of each period is global
	// and has no RoPE, unless the model has exactly 4 blocks (the graph
	// then gives every block RoPE).
	"smallthinker": {what: "global attention without RoPE (the first of every 4 blocks)", period: swa("smallthinker"),
		kind: func(_ *gguf.Model, i, n int) string { return fmt.Sprint(i%4, n == 4 && i == 0) }},
	"ernie4_5-moe":    {what: "MoE blocks (every interleave_moe_layer_step-th)", period: keyPeriod("interleave_moe_layer_step")},
	"nomic-bert-moe":  {what: "MoE blocks (every moe_every_n_layers-th)", period: keyPeriod("moe_every_n_layers")},
	"nomic-bert":      {what: "MoE blocks (every moe_every_n_layers-th)", period: keyPeriod("moe_every_n_layers")},
	"rwkv6":           {what: "halving the hidden state (every rescale_every_n_layers-th block)", period: keyPeriod("rescale_every_n_layers")},
	"gemma-embedding": {what: "sliding-window vs global attention (every 6th block is global)", period: swa("gemma-embedding")},
	// Image features are added to the first n_deepstack_layers blocks.
	"qwen3vl":    {what: "where image features are added (the first n_deepstack_layers blocks)", period: ifKey("n_deepstack_layers"), kind: deepstackKind, valid: deepstackValid},
	"qwen3vlmoe": {what: "where image features are added (the first n_deepstack_layers blocks)", period: ifKey("n_deepstack_layers"), kind: deepstackKind, valid: deepstackValid},
	// models/minicpm3.cpp: scale_res = 1.4/sqrt(n_layer), no key.
	"minicpm3": {what: "the residual scale of every block (1.4/√block count)", period: fixedPeriod(1),
		kind:  func(_ *gguf.Model, _, n int) string { return fmt.Sprint(n) },
		valid: fixedValid("no removal: minicpm3 scales every block's residual by 1.4/√(block count), with no key to keep it")},
}

// newerSWA is a sliding-window layout that newer llama.cpp versions read
// as a period from {arch}.attention.sliding_window_pattern
// (models/<arch>.cpp load_arch_hparams: get_key_or_arr(…, swa_period,
// false), then set_swa_pattern).
type newerSWA struct {
	def    int  // the period when the key is absent (0: such a file does not load)
	first  bool // the first block of each period has full attention (set_swa_pattern(p, true)); else the last
	window bool // only with {arch}.attention.sliding_window above 0
	// array: an array in the key is read as the blocks' kinds (and cut
	// with them, so that removals keep every kind); else an array is
	// ignored and def applies, so no array can restore moved kinds.
	array bool
}

var newerSWAs = map[string]newerSWA{
	// Full attention (and no RoPE past the leading dense blocks) where
	// il % P == 0; an array of the main stack's kinds is read instead.
	"cohere2moe": {first: true, array: true},
	// [SWA with RoPE ×3, full without RoPE], period 4 unless a scalar says.
	"exaone-moe": {def: 4},
	// set_swa_pattern(P), P = 8 unless a scalar says, with a window only.
	"plamo3": {def: 8, window: true},
	// set_swa_pattern(P, true), P = 3 unless a scalar says (symmetric
	// windows of an encoder).
	"modern-bert": {def: 3, first: true, window: true},
	// A scalar period or an array of the main stack's kinds, with a window.
	"mellum": {window: true, array: true},
}

// newerSWAPattern is the index pattern of such a layout: each block's kind
// (full attention or not) at its index; multi-token-prediction blocks
// never slide.
func newerSWAPattern(arch string) indexPattern {
	l := newerSWAs[arch]
	period := func(m *gguf.Model) int {
		if l.window && archInt(m, gguf.KeySlidingWindow, 0) <= 0 {
			return 0
		}
		v, found := m.Get(arch + "." + KeySlidingWindowPattern)
		if !found {
			return l.def
		}
		if _, isArray := v.Array(); isArray {
			if l.array {
				return 0 // the kinds, cut with the blocks
			}
			return l.def
		}
		p, _ := v.Int()
		return int(p)
	}
	kind := func(m *gguf.Model, i, n int) string {
		p := period(m)
		switch {
		case i >= n-archInt(m, gguf.KeyNextNPredictLayers, 0):
			return "multi-token prediction"
		case p <= 1:
			return "full"
		case l.first && i%p == 0, !l.first && i%p == p-1:
			return "full"
		}
		return "sliding window"
	}
	which := "last"
	if l.first {
		which = "first"
	}
	valid := "whole runs of the period (a multiple of it before every kept block)"
	if !l.array {
		valid += "; llama.cpp ignores an array in " + KeySlidingWindowPattern + " for " + arch + ", so no forced removal keeps the kinds"
	}
	return indexPattern{what: "sliding-window vs full attention (the " + which + " block of every attention.sliding_window_pattern blocks is full)",
		period: period, kind: kind, valid: fixedValid(valid)}
}

func fixedPeriod(p int) func(*gguf.Model) int { return func(*gguf.Model) int { return p } }

func fixedValid(s string) func(*gguf.Model, int) string {
	return func(*gguf.Model, int) string { return s }
}

// keyPeriod is the period a key gives (off below 2).
func keyPeriod(key string) func(*gguf.Model) int {
	return func(m *gguf.Model) int {
		if p := archInt(m, key, 0); p > 1 {
			return p
		}
		return 0
	}
}

// recurrentPeriod is the period of full-attention blocks of an architecture
// that reads them from {arch}.attention.recurrent_layers when present
// (then a removal keeps every block's kind) and else from
// full_attention_interval (default 4).
func recurrentPeriod(arch string) func(*gguf.Model) int {
	return func(m *gguf.Model) int {
		if _, ok := m.Get(arch + ".attention.recurrent_layers"); ok {
			return 0
		}
		return archInt(m, "full_attention_interval", 4)
	}
}

// ifKey turns a pattern without a period on when the key is above 0.
func ifKey(key string) func(*gguf.Model) int {
	return func(m *gguf.Model) int { return min(archInt(m, key, 0), 1) }
}

func blockCount(m *gguf.Model) int {
	n, _ := m.BlockCount()
	return n
}

// gemmaKind: the position in the period, and, in the 27B models (n27
// blocks), the query scale llama.cpp derives from the block count
// (load_hparams: f_attention_scale for LLM_TYPE_27B), unless both scales
// agree.
func gemmaKind(n27 int, period func(*gguf.Model) int) func(m *gguf.Model, i, n int) string {
	return func(m *gguf.Model, i, n int) string {
		return fmt.Sprint(i%max(period(m), 1), gemmaQueryScale(m, n, n27))
	}
}

// gemma3Period: 6 with a sliding window; without one, only the 27B's query
// scale follows from the block count.
func gemma3Period(m *gguf.Model) int {
	if p := swaPeriod(m, "gemma3", blockCount(m)); p > 0 {
		return p
	}
	if blockCount(m) == 62 {
		return 1
	}
	return 0
}

func gemmaValid(n27 int) func(*gguf.Model, int) string {
	return func(m *gguf.Model, period int) string {
		n := blockCount(m)
		if n == n27 && gemmaQueryScale(m, n, n27) != gemmaQueryScale(m, n-1, n27) {
			return fmt.Sprintf("no removal: a %d-block %s is the 27B model, whose query scale llama.cpp takes from the block count", n27, mustArch(m))
		}
		return defaultValid(period)
	}
}

func gemmaQueryScale(m *gguf.Model, n, n27 int) float64 {
	embd, heads := archInt(m, gguf.KeyEmbeddingLength, 0), archInt(m, gguf.KeyHeadCount, 0)
	if heads == 0 {
		return 0
	}
	head := archInt(m, gguf.KeyKeyLength, embd/heads)
	if n == n27 {
		return 1 / math.Sqrt(float64(embd/heads))
	}
	return 1 / math.Sqrt(float64(head))
}

func mustArch(m *gguf.Model) string {
	a, _ := m.Architecture()
	return a
}

func deepstackKind(m *gguf.Model, i, _ int) string {
	if i < archInt(m, "n_deepstack_layers", 0) {
		return fmt.Sprint("deepstack ", i)
	}
	return ""
}

func deepstackValid(m *gguf.Model, _ int) string {
	return fmt.Sprintf("removals from block %d on (the first %d blocks receive image features)", archInt(m, "n_deepstack_layers", 0), archInt(m, "n_deepstack_layers", 0))
}

func defaultValid(period int) string {
	return fmt.Sprintf("whole runs of %d consecutive blocks (a multiple of %d before every kept block)", period, period)
}

// gemma3nKind is what gemma3n's loader and graph derive from the index
// (llama-model.cpp load_hparams: set_swa_pattern(5), n_layer_kv_from_start
// 20 and the KV reuse of blocks 18 and 19; models.h: n_layer_sparsity 10).
func gemma3nKind(_ *gguf.Model, i, n int) string {
	k := fmt.Sprintf("global=%v sparse=%v shared=%v", i%5 == 4, i < 10, i >= 20)
	if n > 20 && (i == 18 || i == 19) {
		k += fmt.Sprintf(" kv-source-%d", i)
	}
	return k
}

// archInt reads an architecture key of m (see gguf.ArchKV.Int).
func archInt(m *gguf.Model, key string, def int) int {
	kv, err := gguf.NewArchKV(m)
	if err != nil {
		return def
	}
	return kv.Int(key, def)
}

// llama4Period: NoPE every 4th block with chunked attention (the sliding
// window), and MoE every interleave_moe_layer_step-th block.
func llama4Period(m *gguf.Model) int {
	step := archInt(m, "interleave_moe_layer_step", 1)
	if swaPeriod(m, "llama4", blockCount(m)) == 0 {
		return step
	}
	return lcm(4, step)
}

func lcm(a, b int) int {
	x, y := a, b
	for y != 0 {
		x, y = y, x%y
	}
	return a / x * b
}

// IndexPeriod is the period of the architecture's index-derived block
// pattern in this file (see PatternError), with what the index decides; 0
// when removals cannot change any block's kind, 1 for a pattern without a
// period.
func IndexPeriod(m *gguf.Model) (period int, what string) {
	arch, err := m.Architecture()
	if err != nil {
		return 0, ""
	}
	pat, ok := indexPatterns[arch]
	if !ok {
		return 0, ""
	}
	if p := pat.period(m); p > 1 || (p == 1 && pat.kind != nil) {
		return p, pat.what
	}
	return 0, ""
}

// BrokenPattern returns the pattern error of a removal (bm) that changes a
// kept block's kind, or nil.
func BrokenPattern(m *gguf.Model, bm *blocks.Map) *PatternError {
	period, what := IndexPeriod(m)
	if period == 0 {
		return nil
	}
	arch := mustArch(m)
	removed := bm.Removed()
	pat := indexPatterns[arch]
	for _, b := range bm.Kept() {
		to := bm.NewIndex(b)
		moved := (b-to)%period != 0
		if pat.kind != nil {
			moved = pat.kind(m, b, bm.Before()) != pat.kind(m, to, bm.After())
		}
		if moved {
			valid := defaultValid(period)
			if pat.valid != nil {
				valid = pat.valid(m, period)
			}
			return &PatternError{Model: m.Name(), Architecture: arch, What: what, Period: period, Removed: removed, Block: b, To: to, Valid: valid}
		}
	}
	return nil
}

// leadingCounts are scalars under the architecture prefix that count the
// first blocks of a model that are of another kind (llama-model.cpp
// load_hparams and load_tensors: "i < n_layer_dense_lead"; deepseek,
// deepseek2, dots1, glm4moe, bailingmoe2, afmoe, ernie4_5-moe, lfm2moe).
var leadingCounts = map[string]bool{gguf.KeyLeadingDenseBlockCount: true}

// LeadingCount reports whether an architecture key (without its prefix)
// counts the first blocks of a model that are of another kind: removing
// some of them shortens the count.
func LeadingCount(key string) bool { return leadingCounts[key] }

// notPerLayer lists arrays under the architecture prefix that are not
// per-layer even when their length happens to equal the block count.
var notPerLayer = map[string]bool{
	"rope.dimension_sections":   true,
	"classifier.output_labels":  true,
	"rope.scaling.short_factor": true,
	"rope.scaling.long_factor":  true,
}

// unprefixedPerLayer are per-layer keys read without the architecture
// prefix: apertus's xIELU parameters (llama-arch.cpp "xielu.alpha_n", …;
// llama-model.cpp load_hparams: get_key_or_arr(…, n_layer), which refuses
// an array of another length).
var unprefixedPerLayer = map[string]map[string]bool{
	"apertus": {"xielu.alpha_n": true, "xielu.alpha_p": true, "xielu.beta": true, "xielu.eps": true},
}

// UnprefixedPerLayer reports whether the architecture reads key (a whole
// key, without its prefix) as one value per block.
func UnprefixedPerLayer(arch, key string) bool { return unprefixedPerLayer[arch][key] }

// PerLayer reports whether an array under the architecture prefix (key
// without it) of one element per block holds a value per block, to be cut
// with the blocks.
func PerLayer(key string) bool { return !notPerLayer[key] }

// pinned is the effective value of a key the original file lacks, and,
// when llama.cpp versions disagree on it, a warning saying so.
type pinned struct {
	value   gguf.Value
	warning string
}

// pinnedDefaults are scalars whose default, when the file has none, follows
// from the block count (and the vocabulary): the plan writes the original's
// effective value, so that the pruned file computes as the original does.
var pinnedDefaults = map[string]map[string]func(m *gguf.Model, n int) pinned{
	// load_hparams: f_residual_scale = 1.4/sqrt(n_layer) unless set.
	"minicpm": {"residual_scale": func(_ *gguf.Model, n int) pinned {
		return pinned{value: gguf.Float32(float32(1.4 / math.Sqrt(float64(n))))}
	}},
	"deepseek2": {"expert_gating_func": deepseekGating},
	"mistral4":  {"expert_gating_func": deepseekGating},
}

// Expert gating functions (llama-hparams.h llama_expert_gating_func_type).
const (
	gatingSoftmax = 1
	gatingSigmoid = 2
)

// deepseekGating is deepseek2's gating function when the file names none.
// The pinned llama.cpp always takes softmax (load_hparams: "for
// compatibility with existing DeepSeek V2 and V2.5 GGUFs"); the newer one
// (models/deepseek2.cpp load_arch_hparams) takes sigmoid for 47 or 48
// blocks, not counting multi-token prediction, with a 154,880-token
// vocabulary (GLM-4.7 Lite). The pruned file says what the newer llama.cpp
// computes the original with, and warns where the pinned one differs.
func deepseekGating(m *gguf.Model, n int) pinned {
	main := n - archInt(m, gguf.KeyNextNPredictLayers, 0)
	sigmoid := (main == 47 || main == 48) && vocabSize(m) == 154880
	if sigmoid && mustArch(m) != "deepseek2" {
		return pinned{value: gguf.Uint32(gatingSigmoid)} // only the newer llama.cpp runs it
	}
	if sigmoid {
		return pinned{gguf.Uint32(gatingSigmoid), fmt.Sprintf("%s names no deepseek2.expert_gating_func: llama.cpp since its models/ split gates a %d-block model with a 154,880-token vocabulary by sigmoid, the pinned one (ollama v0.17.4) by softmax; the pruned file says sigmoid, as the newer llama.cpp computes the original, so the pinned one computes it differently from the original", m.Name(), main)}
	}
	return pinned{value: gguf.Uint32(gatingSoftmax)}
}

// vocabSize is the vocabulary size llama.cpp reads: {arch}.vocab_size,
// else the number of tokens.
func vocabSize(m *gguf.Model) int {
	if n := archInt(m, "vocab_size", 0); n > 0 {
		return n
	}
	if v, ok := m.Get("tokenizer.ggml.tokens"); ok {
		if a, ok := v.Array(); ok {
			return a.Len()
		}
	}
	return 0
}

// PinnedDefaults are the keys, absent from m (of n blocks), whose default
// llama.cpp derives from the block count: a pruned file must carry the
// original's effective value. The warnings say where llama.cpp versions
// disagree on that value.
func PinnedDefaults(m *gguf.Model, n int) (kvs []gguf.KV, warnings []string) {
	arch := mustArch(m)
	for key, value := range pinnedDefaults[arch] {
		if _, ok := m.Get(arch + "." + key); !ok {
			p := value(m, n)
			kvs = append(kvs, gguf.KV{Key: arch + "." + key, Value: p.value})
			if p.warning != "" {
				warnings = append(warnings, p.warning)
			}
		}
	}
	return kvs, warnings
}

// CheckRemoval refuses a removal (bm) after which llama.cpp would not load
// the file or would abort, whatever the caller forces.
func CheckRemoval(m *gguf.Model, bm *blocks.Map) error {
	if check, ok := removalChecks[mustArch(m)]; ok {
		return check(m, bm)
	}
	return nil
}

// removalChecks refuse removals after which llama.cpp would not load the
// file or would abort, with force too.
var removalChecks = map[string]func(m *gguf.Model, bm *blocks.Map) error{
	// load_hparams: is_lite = n_layer 26 or 27 decides which query tensors
	// and keys are read.
	"deepseek2": deepseekLite,
	// mistral4 is deepseek2 to the newer llama.cpp (models.h:
	// llama_model_mistral4 reuses llama_model_deepseek2's loader and graph).
	"mistral4": deepseekLite,
	// models/gemma4.cpp and llama-model.cpp create_memory.
	"gemma4":  gemma4Removal,
	"glm-dsa": glmIndexer,
	// command-r with 64 blocks or more has query and key norms
	// (llama-model.cpp load_tensors: n_layer >= 64): across 64 the loader
	// would ask for tensors the file lacks, or find tensors it does not want.
	"command-r": func(m *gguf.Model, bm *blocks.Map) error {
		if (bm.Before() >= 64) != (bm.After() >= 64) {
			return fmt.Errorf("command-r loads query and key norms only with 64 blocks or more (llama-model.cpp load_tensors); going from %d to %d blocks makes the file not load", bm.Before(), bm.After())
		}
		return nil
	},
	// models/baichuan.cpp aborts unless the model is the 7B (32 blocks)
	// or 13B (40 blocks).
	"baichuan": func(m *gguf.Model, bm *blocks.Map) error {
		return fmt.Errorf("llama.cpp runs baichuan only with 32 or 40 blocks (its graph aborts otherwise)")
	},
	// rwkv7's block 0 is the value-residual source of every later block,
	// with tensors of other shapes.
	"rwkv7":  keepFirst,
	"arwkv7": keepFirst,
	// Encoder-decoder models keep their blocks as enc.blk.N and dec.blk.N.
	"t5":               encDec,
	"t5encoder":        encDec,
	"wavtokenizer-dec": encDec,
	// solar: a block flagged in block_skip_connection.0 (.1) saves the
	// hidden state that the next block flagged in .2 (.3) adds back.
	"solar": solarSkips,
}

// deepseekLite: the loader takes deepseek2 with 26 or 27 blocks for the
// Lite model (pinned llama-model.cpp load_hparams: is_lite), whose
// attention has other tensors and keys.
func deepseekLite(m *gguf.Model, bm *blocks.Map) error {
	name := mustArch(m)
	lite := func(n int) bool { return n == 26 || n == 27 }
	if lite(bm.Before()) != lite(bm.After()) {
		return fmt.Errorf("%s with 26 or 27 blocks is the Lite model, whose attention has other tensors (llama-model.cpp: is_lite); %d blocks would make llama.cpp look for the tensors of the other kind", name, bm.After())
	}
	// The newer llama.cpp (models/deepseek2.cpp load_arch_hparams) also
	// takes 48 blocks, not counting multi-token prediction, with a
	// 128,256-token vocabulary for the Lite model.
	mtp, vocab := archInt(m, gguf.KeyNextNPredictLayers, 0), vocabSize(m)
	newer := func(n int) bool { main := n - mtp; return lite(main) || (main == 48 && vocab == 128256) }
	if newer(bm.Before()) != newer(bm.After()) {
		return fmt.Errorf("the newer llama.cpp (models/deepseek2.cpp: is_lite) takes %s with 48 blocks and a 128,256-token vocabulary for the Lite model, whose attention has other tensors; going from %d to %d blocks would make it look for the tensors of the other kind", name, bm.Before(), bm.After())
	}
	return nil
}

// gemma4Removal (newer llama.cpp only): with shared_kv_layers = s, the last
// s blocks compute no keys and values of their own and read those of
// blocks n-s-2 (sliding window) and n-s-1 (full attention)
// (llama-model.cpp create_memory: reuse; GGML_ASSERT(n_layer_kv_from_start
// >= 2)); removing an earlier block keeps both indices relative to the end.
// The kinds come from the sliding_window_pattern array (cut with the
// blocks); without a sliding-window block the cache asserts
// (is_swa_any), without a full one rope_freqs is never loaded.
func gemma4Removal(m *gguf.Model, bm *blocks.Map) error {
	n := bm.Before()
	if shared := archInt(m, "attention.shared_kv_layers", 0); shared > 0 {
		kvfs := n - shared
		for _, b := range bm.Removed() {
			if b >= kvfs-2 {
				return fmt.Errorf("gemma4's last %d blocks (%d-%d) reuse the keys and values of blocks %d and %d (attention.shared_kv_layers; llama-model.cpp create_memory); removing block %d would change what they read", shared, kvfs, n-1, kvfs-2, kvfs-1, b)
			}
		}
	}
	kinds := archFlags(m, KeySlidingWindowPattern)
	if len(kinds) != n {
		return nil
	}
	var slide, full bool
	for _, b := range bm.Kept() {
		slide, full = slide || kinds[b], full || !kinds[b]
	}
	if !slide || !full {
		return fmt.Errorf("gemma4 needs a sliding-window block and a full-attention block (its KV cache asserts is_swa_any; rope_freqs is loaded with the first full block): removing %s leaves only one kind", blocks.FormatList(bm.Removed()))
	}
	return nil
}

// archFlags reads an array of flags (bool or integer) under the
// architecture prefix; nil when absent or not an array.
func archFlags(m *gguf.Model, key string) []bool {
	v, ok := m.Get(mustArch(m) + "." + key)
	a, isArr := v.Array()
	if !ok || !isArr {
		return nil
	}
	out := make([]bool, a.Len())
	for i := range out {
		n, _ := a.Index(i).Int()
		out[i] = n != 0
	}
	return out
}

// glmIndexer (newer llama.cpp only, models/glm-dsa.cpp): a block of
// attention.indexer.types 1 computes the sparse attention's top-k, a block
// of 0 reuses the nearest earlier such block's (the graph asserts there is
// one). Without the key the kinds follow the index (GLM_DSA_DEFAULT_INDEXER_TYPES:
// blocks 0 and 1, then every 4th from block 2), and one version takes all
// blocks as full below a 2^20-token context: a removal must then keep every
// kept block's kind at its new index, which satisfies both.
func glmIndexer(m *gguf.Model, bm *blocks.Map) error {
	main := bm.Before() - archInt(m, gguf.KeyNextNPredictLayers, 0)
	table := func(i int) bool { return i < 2 || (i < 78 && (i-2)%4 == 0) }
	kinds := archFlags(m, "attention.indexer.types")
	if kinds == nil {
		for _, b := range bm.Kept() {
			if to := bm.NewIndex(b); b < main && table(b) != table(to) {
				return fmt.Errorf("glm-dsa without attention.indexer.types takes each block's indexer kind from its index (models/glm-dsa.cpp: GLM_DSA_DEFAULT_INDEXER_TYPES); removing %s moves block %d to index %d and changes its kind", blocks.FormatList(bm.Removed()), b, to)
			}
		}
		kinds = make([]bool, main)
		for i := range kinds {
			kinds[i] = table(i)
		}
	}
	source := -1 // the nearest earlier full block
	for b := 0; b < min(main, len(kinds)); b++ {
		if kinds[b] {
			source = b
			continue
		}
		if bm.NewIndex(b) >= 0 && (source < 0 || bm.NewIndex(source) < 0) {
			return fmt.Errorf("glm-dsa's block %d reuses the sparse-attention selection of block %d (attention.indexer.types; models/glm-dsa.cpp asserts a shared block follows a full one); removing block %d and keeping block %d leaves it none", b, source, source, b)
		}
	}
	return nil
}

func keepFirst(m *gguf.Model, bm *blocks.Map) error {
	if bm.NewIndex(0) < 0 {
		return fmt.Errorf("%s's block 0 is the value-residual source of every later block, with tensors of other shapes; it cannot be removed", mustArch(m))
	}
	return nil
}

func encDec(m *gguf.Model, _ *blocks.Map) error {
	return fmt.Errorf("%s keeps its blocks as enc.blk.N and dec.blk.N; ggufprune removes blk.N blocks only", mustArch(m))
}

func solarSkips(m *gguf.Model, bm *blocks.Map) error {
	flags := func(k int) []bool { return archFlags(m, fmt.Sprintf("attention.block_skip_connection.%d", k)) }
	for k := 0; k < 2; k++ {
		save, use := flags(k), flags(k+2)
		last := -1
		for i := 0; i < len(use) && i < len(save); i++ {
			if save[i] {
				last = i
			}
			if use[i] && last >= 0 && bm.NewIndex(i) >= 0 && bm.NewIndex(last) < 0 {
				return fmt.Errorf("solar's block %d adds back the hidden state block %d saves (attention.block_skip_connection.%d and .%d); removing block %d and keeping block %d leaves it unset", i, last, k, k+2, last, i)
			}
		}
	}
	return nil
}

// blockSized are the global tensors (outside blk.N) whose size follows the
// block count (llama-model.cpp load_tensors): one slice per block along a
// dimension, in block order. Removing blocks cuts their slices out.
var blockSized = map[string][]BlockSizedTensor{
	// Per-layer inputs: 256 values per block (n_embd_altup); the graph's
	// view of block il is slice il (models/gemma3n-iswa.cpp).
	"gemma3n": {{"per_layer_token_embd.weight", 0}, {"per_layer_model_proj.weight", 1}},
	// Gemma 4 E2B and E4B: embedding_length_per_layer_input values per
	// block, sliced alike (models/gemma4.cpp: ggml_view_2d_slice(…, il)).
	"gemma4": {{"per_layer_token_embd.weight", 0}, {"per_layer_model_proj.weight", 1}},
}

// BlockSizedTensor is a global tensor with one slice per block along Dim.
type BlockSizedTensor struct {
	Name string
	Dim  int // the dimension holding one slice per block
}

// BlockSized are the architecture's block-sized global tensors.
func BlockSized(arch string) []BlockSizedTensor { return blockSized[arch] }

// MTPBlocks are the multi-token-prediction blocks of a model of n blocks
// ({arch}.nextn_predict_layers at the end), which cannot be removed.
func MTPBlocks(m *gguf.Model, n int) []int {
	k := archInt(m, gguf.KeyNextNPredictLayers, 0)
	var out []int
	for b := max(0, n-k); b < n; b++ {
		out = append(out, b)
	}
	return out
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
		e.Model, e.Architecture, e.What, blocks.FormatList(e.Removed), e.Block, e.To, e.ValidRemovals())
}

// ValidRemovals says which removals keep the pattern.
func (e *PatternError) ValidRemovals() string {
	if e.Valid != "" {
		return e.Valid
	}
	return fmt.Sprintf("whole runs of %d consecutive blocks (a multiple of %d before every kept block)", e.Period, e.Period)
}

func (e *PatternError) Unwrap() error { return ErrIndexPattern }

// KeySlidingWindowPattern is {arch}.attention.sliding_window_pattern: in
// the newer llama.cpp (llama-model.cpp load_swa_pattern), an array of one
// kind per block (true: sliding window) that replaces the period, read by
// gemma2, gemma3, cohere2 and openai-moe (gpt-oss) among others. The
// pinned llama.cpp does not read it (it sets each pattern in code), nor do
// the versions between that read the key as a scalar with
// get_key_or_arr(…, required=false), which ignore an array.
const KeySlidingWindowPattern = "attention.sliding_window_pattern"

// swaArrayArchs are the architectures whose blocks differ by index only in
// their sliding window, and whose newer loader reads the kinds from
// KeySlidingWindowPattern (models/gemma2.cpp, gemma3.cpp, cohere2.cpp,
// openai-moe.cpp: load_swa_pattern). The 27B gemma2 (46 blocks) and gemma3
// (62 blocks) also take their query scale from the block count, which no
// array restores.
var swaArrayArchs = map[string]int{"gemma2": 46, "gemma3": 62, "cohere2": 0, "gpt-oss": 0}

// SWAKinds is the sliding-window kind of every block of m (true: sliding
// window) as set_swa_pattern(period) gives it (block i slides unless
// i mod period is period-1), for an architecture whose kinds the newer
// llama.cpp reads from KeySlidingWindowPattern, when the file has no such
// array (one it has is cut with the blocks); nil otherwise. A forced
// removal writes the kept blocks' kinds there, so that the newer llama.cpp
// computes each kept block as the original does.
func SWAKinds(m *gguf.Model) []bool {
	name, err := m.Architecture()
	if err != nil {
		return nil
	}
	size27, ok := swaArrayArchs[name]
	if !ok {
		return nil
	}
	n := blockCount(m)
	if v, found := m.Get(name + "." + KeySlidingWindowPattern); found {
		if _, isArray := v.Array(); isArray {
			return nil
		}
	}
	if n == size27 {
		return nil
	}
	period := indexPatterns[name].period(m)
	if period <= 1 {
		return nil
	}
	kinds := make([]bool, n)
	for i := range kinds {
		kinds[i] = i%period < period-1
	}
	return kinds
}

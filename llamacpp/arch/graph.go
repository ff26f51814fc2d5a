package arch

// BoundaryNames are the graph names of a model's block boundaries, which
// capture reads: the embeddings (the input of block 0) and the block
// outputs (the residual stream after block N, named NAME-N).
type BoundaryNames struct {
	Embeddings  string
	BlockOutput string
}

// DefaultBoundaries are the names llama.cpp's graphs give block boundaries
// (llama-graph.cpp build_inp_embd: "inp_embd"; models/*.cpp: cb(cur, "l_out", il)).
var DefaultBoundaries = BoundaryNames{"inp_embd", "l_out"}

// boundaries are the architectures whose graph names them otherwise
// (models/*.cpp, cb(cur, name, il)). lfm2's graph names no block output.
var boundaries = map[string]BoundaryNames{
	"qwen3next":      {"model.embed_tokens", "post_moe"},   // models/qwen3next.cpp
	"nemotron_h":     {"inp_embd", "nemotron_h_block_out"}, // models/nemotron-h.cpp; its "l_out" is an FFN block's FFN output
	"nemotron_h_moe": {"inp_embd", "nemotron_h_block_out"}, // the same graph (models/nemotron-h.cpp)
}

// Boundaries are the graph names of the architecture's block boundaries.
func Boundaries(arch string) BoundaryNames {
	if b, ok := boundaries[arch]; ok {
		return b
	}
	return DefaultBoundaries
}

// Tensors healing reads (llama-arch.cpp LLM_TENSOR_FFN_*): it folds its map
// into a block's dense FFN down projection and its bias, which add the FFN
// output to the residual stream unnormalised, except in blocks that
// normalise the FFN output first (FFNPostNorms: gemma2/3's post_ffw_norm,
// olmo2's post_ffn_norm, …) or have experts.
const (
	FFNDown       = "ffn_down.weight"
	FFNDownBias   = "ffn_down.bias"
	FFNDownExpert = "ffn_down_exps.weight"
)

// FFNPostNorms are the per-block tensors of an FFN output norm.
var FFNPostNorms = []string{"post_ffw_norm.weight", "ffn_post_norm.weight", "post_ffn_norm.weight"}

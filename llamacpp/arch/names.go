package arch

// pinnedArchitectures are the architectures the pinned llama.cpp knows
// (llama-arch.cpp LLM_ARCH_NAMES of ollama v0.17.4): the rules of this
// package are read from its loader and graphs.
var pinnedArchitectures = setOf("clip", "llama", "llama4", "deci", "falcon", "grok", "gpt2", "gptj", "gptneox", "mpt",
	"baichuan", "starcoder", "refact", "bert", "nomic-bert", "nomic-bert-moe", "neo-bert", "jina-bert-v2", "jina-bert-v3",
	"bloom", "stablelm", "qwen", "qwen2", "qwen2moe", "qwen2vl", "qwen3", "qwen3moe", "qwen3next", "qwen3vl", "qwen3vlmoe",
	"phi2", "phi3", "phimoe", "plamo", "plamo2", "codeshell", "orion", "internlm2", "minicpm", "minicpm3", "gemma", "gemma2",
	"gemma3", "gemma3n", "gemma-embedding", "starcoder2", "mamba", "mamba2", "jamba", "falcon-h1", "xverse", "command-r",
	"cohere2", "dbrx", "olmo", "olmo2", "olmoe", "openelm", "arctic", "deepseek", "deepseek2", "chatglm", "glm4", "glm4moe",
	"bitnet", "t5", "t5encoder", "jais", "nemotron", "nemotron_h", "nemotron_h_moe", "exaone", "exaone4", "rwkv6",
	"rwkv6qwen2", "rwkv7", "arwkv7", "granite", "granitemoe", "granitehybrid", "chameleon", "solar", "wavtokenizer-dec",
	"plm", "bailingmoe", "bailingmoe2", "dots1", "arcee", "afmoe", "ernie4_5", "ernie4_5-moe", "hunyuan-moe",
	"hunyuan-dense", "smollm3", "gpt-oss", "lfm2", "lfm2moe", "dream", "smallthinker", "llada", "llada-moe", "seed_oss",
	"grovemoe", "apertus", "minimax-m2", "cogvlm", "rnd1", "pangu-embedded", "mistral3")

// newerArchitectures are architectures a newer llama.cpp knows and the
// pinned one does not (llama-arch.cpp LLM_ARCH_NAMES of ggml-org/llama.cpp,
// late 2026): files users bring today, which ggufprune can read but whose
// layer rules it has not read yet.
var newerArchitectures = setOf("cohere2moe", "deepseek2-ocr", "deepseek32", "deepseek4", "dflash", "eagle3", "eurobert",
	"exaone-moe", "gemma4", "gemma4-assistant", "glm-dsa", "hunyuan_vl", "hy_v3", "jais2", "kimi-linear", "laguna",
	"llama-embed", "maincoder", "mellum", "mimo2", "mistral4", "modern-bert", "paddleocr", "plamo3", "qwen35", "qwen35moe",
	"step35", "talkie")

// Known reports whether the pinned llama.cpp knows the architecture: it can
// run it, and this package's rules cover it.
func Known(arch string) bool { return pinnedArchitectures[arch] }

// Unknown says, for an architecture the pinned llama.cpp does not know,
// what is known of it ("" for a known one).
func Unknown(arch string) string {
	switch {
	case Known(arch):
		return ""
	case newerArchitectures[arch] && indexPatterns[arch].period != nil:
		return "architecture " + arch + " is known to newer llama.cpp versions but not to the one ggufprune links (ollama v0.17.4), which cannot run it; of its rules only the layer pattern read from the newer source is checked"
	case newerArchitectures[arch]:
		return "architecture " + arch + " is known to newer llama.cpp versions but not to the one ggufprune links (ollama v0.17.4), which cannot run it; its layer rules (what llama.cpp derives from each block's index or the block count) are not checked"
	}
	return "architecture " + arch + " is not known to the llama.cpp ggufprune links (ollama v0.17.4) nor to the newer ones it knows of: it cannot run it, and its layer rules are not checked"
}

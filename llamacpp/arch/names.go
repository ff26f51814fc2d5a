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

// newerRules are the architectures of newerArchitectures whose layer rules
// were read from the newest llama.cpp's source (models/<arch>.cpp:
// load_arch_hparams, load_arch_tensors and the graph; the versions are in
// docs/llama-rules.md): removals are checked as for the pinned ones, though
// the linked llama.cpp cannot run them.
var newerRules = setOf("cohere2moe", "deepseek32", "eurobert", "exaone-moe", "gemma4", "gemma4-assistant", "glm-dsa", "jais2",
	"kimi-linear", "llama-embed", "maincoder", "mellum", "mimo2", "mistral4", "modern-bert", "plamo3", "qwen35", "qwen35moe",
	"step35")

// Known reports whether the pinned llama.cpp knows the architecture: it can
// run it, and this package's rules cover it.
func Known(arch string) bool { return pinnedArchitectures[arch] }

// Unknown says, for an architecture the pinned llama.cpp does not know,
// what is known of it ("" for a known one).
func Unknown(arch string) string {
	switch {
	case Known(arch):
		return ""
	case newerRules[arch]:
		return "architecture " + arch + " is known to newer llama.cpp versions but not to the one ggufprune links (ollama v0.17.4), which cannot run it; its layer rules are read from the newer llama.cpp's source and checked"
	case newerArchitectures[arch]:
		return "architecture " + arch + " is known to newer llama.cpp versions but not to the one ggufprune links (ollama v0.17.4), which cannot run it; its layer rules (what llama.cpp derives from each block's index or the block count) are not checked"
	}
	return "architecture " + arch + " is not known to the llama.cpp ggufprune links (ollama v0.17.4) nor to the newer ones it knows of: it cannot run it, and its layer rules are not checked"
}

// UncheckedRules says why removals from a file of this architecture cannot
// be checked ("" when its layer rules are known, from the pinned llama.cpp
// or the newer one's source).
func UncheckedRules(arch string) string {
	if Known(arch) || newerRules[arch] {
		return ""
	}
	return Unknown(arch)
}

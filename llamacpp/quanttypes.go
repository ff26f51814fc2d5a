package llamacpp

import (
	"sort"
	"strings"

	"github.com/ggufprune/ggufprune/gguf"
	"github.com/ggufprune/ggufprune/gguf/imatrix"
)

// QuantType is a quantization llama-quantize offers.
type QuantType struct {
	Name        string
	ftype       int32
	base        gguf.TensorType // the type most weights get
	NeedImatrix bool            // llama-quantize refuses it without an importance matrix
	Desc        string
}

// QuantTypes are the types llama.cpp's llama-quantize accepts, in its order.
var QuantTypes = []QuantType{
	{"Q4_0", 2, gguf.TypeQ4_0, false, "4.34G, +0.4685 ppl @ Llama-3-8B"},
	{"Q4_1", 3, gguf.TypeQ4_1, false, "4.78G, +0.4511 ppl @ Llama-3-8B"},
	{"MXFP4_MOE", 38, gguf.TypeMXFP4, false, "MXFP4 for MoE experts"},
	{"Q5_0", 8, gguf.TypeQ5_0, false, "5.21G, +0.1316 ppl @ Llama-3-8B"},
	{"Q5_1", 9, gguf.TypeQ5_1, false, "5.65G, +0.1062 ppl @ Llama-3-8B"},
	{"IQ2_XXS", 19, gguf.TypeIQ2_XXS, true, "2.06 bpw"},
	{"IQ2_XS", 20, gguf.TypeIQ2_XS, true, "2.31 bpw"},
	{"IQ2_S", 28, gguf.TypeIQ2_S, true, "2.5 bpw"},
	{"IQ2_M", 29, gguf.TypeIQ2_S, false, "2.7 bpw"},
	{"IQ1_S", 24, gguf.TypeIQ1_S, true, "1.56 bpw"},
	{"IQ1_M", 31, gguf.TypeIQ1_M, true, "1.75 bpw"},
	{"TQ1_0", 36, gguf.TypeTQ1_0, false, "1.69 bpw ternarization"},
	{"TQ2_0", 37, gguf.TypeTQ2_0, false, "2.06 bpw ternarization"},
	{"Q2_K", 10, gguf.TypeQ2_K, false, "2.96G, +3.5199 ppl @ Llama-3-8B"},
	{"Q2_K_S", 21, gguf.TypeQ2_K, true, "2.96G, +3.1836 ppl @ Llama-3-8B"},
	{"IQ3_XXS", 23, gguf.TypeIQ3_XXS, false, "3.06 bpw"},
	{"IQ3_S", 26, gguf.TypeIQ3_S, false, "3.44 bpw"},
	{"IQ3_M", 27, gguf.TypeIQ3_S, false, "3.66 bpw"},
	{"Q3_K", 12, gguf.TypeQ3_K, false, "alias for Q3_K_M"},
	{"IQ3_XS", 22, gguf.TypeIQ3_S, false, "3.3 bpw"},
	{"Q3_K_S", 11, gguf.TypeQ3_K, false, "3.41G, +1.6321 ppl @ Llama-3-8B"},
	{"Q3_K_M", 12, gguf.TypeQ3_K, false, "3.74G, +0.6569 ppl @ Llama-3-8B"},
	{"Q3_K_L", 13, gguf.TypeQ3_K, false, "4.03G, +0.5562 ppl @ Llama-3-8B"},
	{"IQ4_NL", 25, gguf.TypeIQ4_NL, false, "4.50 bpw non-linear quantization"},
	{"IQ4_XS", 30, gguf.TypeIQ4_XS, false, "4.25 bpw non-linear quantization"},
	{"Q4_K", 15, gguf.TypeQ4_K, false, "alias for Q4_K_M"},
	{"Q4_K_S", 14, gguf.TypeQ4_K, false, "4.37G, +0.2689 ppl @ Llama-3-8B"},
	{"Q4_K_M", 15, gguf.TypeQ4_K, false, "4.58G, +0.1754 ppl @ Llama-3-8B"},
	{"Q5_K", 17, gguf.TypeQ5_K, false, "alias for Q5_K_M"},
	{"Q5_K_S", 16, gguf.TypeQ5_K, false, "5.21G, +0.1049 ppl @ Llama-3-8B"},
	{"Q5_K_M", 17, gguf.TypeQ5_K, false, "5.33G, +0.0569 ppl @ Llama-3-8B"},
	{"Q6_K", 18, gguf.TypeQ6_K, false, "6.14G, +0.0217 ppl @ Llama-3-8B"},
	{"Q8_0", 7, gguf.TypeQ8_0, false, "7.96G, +0.0026 ppl @ Llama-3-8B"},
	{"F16", 1, gguf.TypeF16, false, "14.00G, +0.0020 ppl @ Mistral-7B"},
	{"BF16", 32, gguf.TypeBF16, false, "14.00G, -0.0050 ppl @ Mistral-7B"},
	{"F32", 0, gguf.TypeF32, false, "26.00G @ 7B"},
	{"COPY", -1, 0, false, "only copy tensors, no quantizing"},
}

// LookupQuantType finds a type by name, in any case.
func LookupQuantType(name string) (QuantType, bool) {
	for _, q := range QuantTypes {
		if strings.EqualFold(q.Name, name) {
			return q, true
		}
	}
	return QuantType{}, false
}

// noFallback are the types for which llama.cpp has no fallback when a
// tensor's rows are not whole blocks (llama-quant.cpp throws). Where a
// K-quant's own fallback is that type, quantizing to the K-quant with every
// fitting tensor overridden to the type gives it one: the tensors that do not
// fit fall back exactly as they would in a K-quant (to F16 at worst).
var noFallback = map[gguf.TensorType]struct {
	proxy   int32 // ftype of a K-quant whose fallback is this type, or 0
	ggmlTyp int32
}{
	gguf.TypeQ4_0:   {0, 2},
	gguf.TypeQ4_1:   {0, 3},
	gguf.TypeQ5_0:   {14, 6},  // Q4_K_S: Q4_K falls back to Q5_0
	gguf.TypeQ5_1:   {16, 7},  // Q5_K_S: Q5_K falls back to Q5_1
	gguf.TypeQ8_0:   {18, 8},  // Q6_K falls back to Q8_0
	gguf.TypeIQ4_NL: {30, 20}, // IQ4_XS falls back to IQ4_NL
	gguf.TypeMXFP4:  {0, 39},
}

// QuantizeParams are the options of Quantize.
type QuantizeParams struct {
	Type    QuantType
	Threads int             // 0: all cores
	Imatrix *imatrix.Matrix // optional importance matrix, checked against the model
	// ImatrixName names the importance matrix (its file) in errors about it.
	ImatrixName string
	// Progress, when not nil, is called after each tensor with the number
	// done and the total.
	Progress func(done, total int)
}

// QuantTypeNames lists the type names, for help texts.
func QuantTypeNames() []string {
	var names []string
	for _, q := range QuantTypes {
		names = append(names, q.Name)
	}
	sort.Strings(names)
	return names
}

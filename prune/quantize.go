package prune

import (
	"io"

	"github.com/ggufprune/ggufprune/gguf"
	"github.com/ggufprune/ggufprune/internal/atomicfile"
	"github.com/ggufprune/ggufprune/llamacpp"
)

// QuantTypes are the quantization types of llama.cpp's quantizer.
func QuantTypes() []llamacpp.QuantType { return llamacpp.QuantTypes }

// LookupQuantType finds a quantization type by name (Q4_K_M, …).
func LookupQuantType(name string) (llamacpp.QuantType, bool) { return llamacpp.LookupQuantType(name) }

// QuantTypeNames lists the names of the quantization types.
func QuantTypeNames() []string { return llamacpp.QuantTypeNames() }

// QuantizeOptions say how Quantize quantizes.
type QuantizeOptions struct {
	Params    llamacpp.QuantizeParams // type, threads, importance matrix, progress
	Overwrite bool                    // replace out if it exists
}

// QuantizeResult is what Quantize wrote.
type QuantizeResult struct {
	Output             string
	Type               string
	BytesBefore, After int64
}

// Quantize quantizes the model in file in into out with llama.cpp's
// quantizer (as llama-quantize), through a temporary file renamed into
// place when complete.
func Quantize(in, out string, o QuantizeOptions) (*QuantizeResult, error) {
	if err := atomicfile.CheckOutput(out, o.Overwrite); err != nil {
		return nil, err
	}
	if err := llamacpp.Quantize(in, out, o.Params); err != nil {
		return nil, err
	}
	sizes := make([]int64, 2)
	for i, p := range []string{in, out} {
		m, err := gguf.OpenModel(p)
		if err != nil {
			return nil, err
		}
		sizes[i] = m.Size()
		m.Close()
	}
	return &QuantizeResult{Output: out, Type: o.Params.Type.Name, BytesBefore: sizes[0], After: sizes[1]}, nil
}

// LogTo sends llama.cpp's own log to w (nil: quiet, the default). It is
// process-wide, as llama.cpp's log is.
func LogTo(w io.Writer) { llamacpp.Log.SetOutput(w) }

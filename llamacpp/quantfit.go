package llamacpp

import (
	"errors"
	"fmt"
	"strings"

	"github.com/ggufprune/ggufprune/gguf"
)

// ErrNoFallback is wrapped by the error of a type a model cannot take: a
// weight's rows are not whole blocks of the type, and llama.cpp has no
// fallback type for it (nor ggufprune a K-quant to go through, see
// noFallback).
var ErrNoFallback = errors.New("llamacpp: no fallback type for rows that are not whole blocks")

// Fits reports whether llama.cpp's quantizer can quantize the model m to q,
// as Quantize would find before any work: nil, or an error wrapping
// ErrNoFallback that names the first weight that cannot take q. It reads
// only the header. Whether q needs an importance matrix is q.NeedImatrix.
func (q QuantType) Fits(m *gguf.Model) error {
	_, _, err := q.ftypeFor(m)
	return err
}

// ftypeFor is the file type llama.cpp's quantizer is asked for to quantize m
// to q, and the tensor type every fitting weight is overridden to (-1:
// none): a type without a fallback goes through the K-quant whose fallback
// it is, with every weight that fits overridden to it.
func (q QuantType) ftypeFor(m *gguf.Model) (ftype, override int32, err error) {
	ftype, override = q.ftype, -1
	nf, ok := noFallback[q.base]
	if !ok {
		return ftype, override, nil
	}
	for _, t := range m.AllTensors() {
		if len(t.Dims) >= 2 && strings.HasSuffix(t.Name, ".weight") && t.Dims[0]%q.base.BlockSize() != 0 {
			if nf.proxy == 0 {
				return 0, 0, &FitError{Path: m.Name(), Tensor: t.Name, Rows: int64(t.Dims[0]), Type: q}
			}
			return nf.proxy, nf.ggmlTyp, nil
		}
	}
	return ftype, override, nil
}

// FitError is a type a model's weight cannot take: its rows are not whole
// blocks of the type, and llama.cpp has no fallback for it. It unwraps to
// ErrNoFallback.
type FitError struct {
	Path, Tensor string
	Rows         int64
	Type         QuantType
}

func (e *FitError) Error() string {
	return fmt.Sprintf("%s: tensor %s has rows of %d, not a multiple of the %v block size %d, and llama.cpp has no fallback type for %s (K-quants such as Q4_K_M and Q6_K fall back to a type that fits)",
		e.Path, e.Tensor, e.Rows, e.Type.base, e.Type.base.BlockSize(), e.Type.Name)
}

func (e *FitError) Unwrap() error { return ErrNoFallback }

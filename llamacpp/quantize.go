package llamacpp

/*
#include <stdlib.h>
#include "shim.h"
*/
import "C"

import (
	"fmt"
	"path/filepath"
	"strings"
	"unsafe"

	"github.com/ggufprune/ggufprune/gguf"
	"github.com/ggufprune/ggufprune/gguf/imatrix"
	"github.com/ggufprune/ggufprune/internal/atomicfile"
	"github.com/ggufprune/ggufprune/llamacpp/arch"
)

// Quantize writes a quantized copy of in to out with llama.cpp's own
// quantizer (llama_model_quantize). Tensors whose rows are not whole blocks
// of the type get llama.cpp's fallback type; where it has none, the error
// names the tensor before any work. The output goes through a temporary file
// in its folder: a failure leaves neither it nor the output behind.
func Quantize(in, out string, p QuantizeParams) error {
	initBackend()
	m, err := gguf.OpenModel(in)
	if err != nil {
		return err
	}
	defer m.Close()
	if m.SameFile(out) {
		return fmt.Errorf("%s: output would overwrite the input", out)
	}
	if err := arch.CheckModel(m, arch.Load); err != nil {
		return err
	}
	q := p.Type
	if q.NeedImatrix && p.Imatrix == nil {
		return &Error{"quantizing to " + q.Name, in, fmt.Sprintf("%s needs an importance matrix: without one llama.cpp's %s quality collapses", q.Name, q.Name), ErrQuantize}
	}
	if p.Imatrix != nil {
		if err := p.Imatrix.CheckModel(m); err != nil {
			return imatrixError(p.ImatrixName, err)
		}
		if err := checkGridWeights(p.Imatrix, q); err != nil {
			return imatrixError(p.ImatrixName, fmt.Errorf("quantizing %s to %s: %w", in, q.Name, err))
		}
	}
	ftype, override, err := q.ftypeFor(m)
	if err != nil {
		return err
	}

	// llama.cpp reports a full disk as "basic_ios::clear: iostream error":
	// check the space before, and say what happened after.
	need := estimateSize(m, q)
	free, known := atomicfile.FreeSpace(filepath.Dir(out))
	if known && free < need {
		return &Error{"quantizing to " + q.Name, in, fmt.Sprintf("the output needs about %d MiB, and the disk of %s has %d MiB free", need>>20, filepath.Dir(out), free>>20), ErrQuantize}
	}
	pending, err := atomicfile.Create(out)
	if err != nil {
		return err
	}
	defer pending.Abort() // nothing after Commit; after a failure, the temporary file goes
	pending.CloseFile()   // llama.cpp writes it by name
	tmpName := pending.Name()

	// The imatrix crosses as C arrays: names, value pointers and lengths.
	var names []*C.char
	var values []*C.float
	var lens []C.int64_t
	if p.Imatrix != nil {
		for _, e := range p.Imatrix.Entries {
			means := e.Means()
			v := (*C.float)(C.malloc(C.size_t(4 * len(means))))
			copy(unsafe.Slice((*float32)(unsafe.Pointer(v)), len(means)), means)
			names = append(names, C.CString(e.Name))
			values = append(values, v)
			lens = append(lens, C.int64_t(len(means)))
		}
	}
	defer func() {
		for i := range names {
			C.free(unsafe.Pointer(names[i]))
			C.free(unsafe.Pointer(values[i]))
		}
	}()
	cNames := cArray(names)
	cValues := cArray(values)
	cLens := cArray(lens)
	defer C.free(cNames)
	defer C.free(cValues)
	defer C.free(cLens)

	cin, cout := C.CString(in), C.CString(tmpName)
	defer C.free(unsafe.Pointer(cin))
	defer C.free(unsafe.Pointer(cout))
	eb := newErrBuf()
	defer eb.free()
	if p.Progress != nil {
		Log.setProgress(p.Progress)
		defer Log.setProgress(nil)
	}
	rc := C.gp_quantize(cin, cout, C.int32_t(max(ftype, 0)), C.int32_t(p.Threads), C.bool(q.ftype < 0), C.int32_t(override),
		(**C.char)(cNames), (**C.float)(cValues), (*C.int64_t)(cLens), C.int32_t(len(names)), eb.p)
	if rc != 0 {
		msg := strings.TrimSpace(eb.msg())
		if free, known := atomicfile.FreeSpace(filepath.Dir(out)); known && free < 1<<20 {
			msg = fmt.Sprintf("no space left on the disk of %s (llama.cpp: %s)", filepath.Dir(out), msg)
		}
		return &Error{"quantizing to " + q.Name, in, msg, ErrQuantize}
	}
	// Check what llama.cpp wrote before it takes the output's name.
	check, err := gguf.OpenModel(tmpName)
	if err != nil {
		return fmt.Errorf("%s: llama.cpp wrote a file that does not read back: %w", out, err)
	}
	check.Close()
	if override >= 0 {
		// llama.cpp labelled the file with the K-quant it went through.
		if err := gguf.SetUint32InPlace(tmpName, "general.file_type", uint32(q.ftype)); err != nil {
			return err
		}
	}
	return pending.Commit()
}

// estimateSize is a generous estimate of the quantized file's size: weights
// at the type's size (K-quant mixes give some tensors more bits: a third is
// added), everything else as it is.
func estimateSize(m *gguf.Model, q QuantType) int64 {
	var n float64
	per := float64(q.base.BlockBytes()) / float64(q.base.BlockSize())
	for _, t := range m.AllTensors() {
		if q.ftype >= 0 && len(t.Dims) >= 2 && strings.HasSuffix(t.Name, ".weight") {
			n += float64(t.Elements()) * max(per*4/3, 0)
		} else {
			n += float64(t.Size)
		}
	}
	return int64(n) + m.Shards[0].DataOffset
}

// cArray copies a Go slice of C values into C memory (nil-safe for empty slices).
func cArray[T any](s []T) unsafe.Pointer {
	var zero T
	p := C.malloc(C.size_t(max(1, len(s))) * C.size_t(unsafe.Sizeof(zero)))
	copy(unsafe.Slice((*T)(p), len(s)), s)
	return p
}

// gridGroups are the grid types of ggml's quantizer (ggml-quants.c
// quantize_row_iq*_impl) and how many consecutive weights each grid point
// covers. Each group's values are chosen by their importance: a group whose
// importances are all 0 matches no grid point, and ggml prints "Oops: found
// point … not on grid" and aborts the process.
var gridGroups = map[gguf.TensorType]int{
	gguf.TypeIQ2_XXS: 8, gguf.TypeIQ2_XS: 8, gguf.TypeIQ2_S: 8,
	gguf.TypeIQ1_S: 8, gguf.TypeIQ1_M: 8,
	gguf.TypeIQ3_XXS: 4, gguf.TypeIQ3_S: 4,
}

// checkGridWeights refuses, for a grid type, an importance matrix with a
// group of columns whose importances are all 0 (or not above 0).
func checkGridWeights(im *imatrix.Matrix, q QuantType) error {
	g, ok := gridGroups[q.base]
	if !ok {
		return nil
	}
	for _, e := range im.Entries {
		means := e.Means()
		for mat := 0; mat < e.NMat(); mat++ {
			row := means[mat*e.NIn : (mat+1)*e.NIn]
			for c := 0; c+g <= len(row); c += g {
				zero := true
				for _, v := range row[c : c+g] {
					if v > 0 {
						zero = false
						break
					}
				}
				if zero {
					which := ""
					if e.NMat() > 1 {
						which = fmt.Sprintf(" of expert %d", mat)
					}
					return fmt.Errorf("imatrix entry %q: columns %d-%d%s have importance 0: llama.cpp's %s quantizer finds no grid point for such a group of %d weights and aborts (ggml-quants.c); use an importance matrix collected on more text, or another type", e.Name, c, c+g-1, which, q.Name, g)
				}
			}
		}
	}
	return nil
}

// imatrixError names the importance matrix's file, when known, in an error
// about it.
func imatrixError(name string, err error) error {
	if name == "" {
		return err
	}
	return fmt.Errorf("%s: %w", name, err)
}

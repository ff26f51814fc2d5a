package llamacpp

// #include <stdbool.h>
// #include <stdint.h>
import "C"

import (
	"fmt"
	"io"
	"os"
	"runtime/cgo"
	"strings"
	"unsafe"

	"github.com/ggufprune/ggufprune/bi"
	"github.com/ggufprune/ggufprune/internal/atomicfile"
)

// The functions here are called from C (shim.cpp) on the thread that is in a
// llama.cpp call made from Go.

//export goLog
func goLog(level C.int, text *C.char) {
	w, progress := Log.sinks()
	line := C.GoString(text)
	if w != nil {
		io.WriteString(w, line)
	}
	// llama_model_quantize logs "[  12/ 147] blk.1.attn_q.weight - …" per tensor.
	var done, total int
	if progress != nil && strings.HasPrefix(line, "[") {
		if n, _ := fmt.Sscanf(strings.ReplaceAll(line, " ", ""), "[%d/%d]", &done, &total); n == 2 {
			progress(done, total)
		}
	}
}

//export goAbort
func goAbort(msg *C.char) {
	// ggml is about to abort the process: take the temporary files with it
	// and exit with the status that says llama.cpp crashed.
	atomicfile.RemovePending()
	fmt.Fprintf(os.Stderr, "ggufprune: llama.cpp aborted: %s\nggufprune: this is a bug of ggufprune's checks: please report it with the file's metadata (ggufprune inspect)\n", strings.TrimSpace(C.GoString(msg)))
	os.Exit(ExitCrash)
}

//export goHiddenState
func goHiddenState(h C.uintptr_t, isEmbd C.bool, block C.int, data *C.float, nEmbd, nTokens C.int) {
	c := cgo.Handle(h).Value().(*Context)
	c.blocks++
	b := int(block)
	if isEmbd {
		b = bi.EmbeddingBoundary
	}
	if c.hidden != nil {
		c.hidden(b, unsafe.Slice((*float32)(unsafe.Pointer(data)), int(nEmbd)*int(nTokens)), int(nEmbd), int(nTokens))
	}
}

//export goWatched
func goWatched(h C.uintptr_t, name *C.char, data *C.float, nCols, nRows C.int) {
	c := cgo.Handle(h).Value().(*Context)
	if c.watch != nil {
		c.watch(C.GoString(name), unsafe.Slice((*float32)(unsafe.Pointer(data)), int(nCols)*int(nRows)), int(nCols), int(nRows))
	}
}

//export goExperts
func goExperts(h C.uintptr_t, block C.int, ids *C.int32_t, weights, norms *C.float, nUsed, nTokens, nExperts C.int) {
	c := cgo.Handle(h).Value().(*Context)
	if c.experts == nil {
		return
	}
	n := int(nUsed) * int(nTokens)
	c.experts(int(block), unsafe.Slice((*int32)(unsafe.Pointer(ids)), n),
		unsafe.Slice((*float32)(unsafe.Pointer(weights)), n), unsafe.Slice((*float32)(unsafe.Pointer(norms)), n),
		int(nUsed), int(nTokens), int(nExperts))
}

//export goMatmulInput
func goMatmulInput(h C.uintptr_t, weight *C.char, data *C.float, nIn, nSlots, nTokens C.int, ids *C.int32_t, nExpertUsed, nExperts C.int) {
	c := cgo.Handle(h).Value().(*Context)
	if c.matmul == nil {
		return
	}
	x := unsafe.Slice((*float32)(unsafe.Pointer(data)), int(nIn)*int(nSlots)*int(nTokens))
	var idv []int32
	if ids != nil {
		idv = unsafe.Slice((*int32)(unsafe.Pointer(ids)), int(nExpertUsed)*int(nTokens))
	}
	c.matmul(C.GoString(weight), x, int(nIn), int(nSlots), int(nTokens), idv, int(nExpertUsed), int(nExperts))
}

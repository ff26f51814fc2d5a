package llamacpp

// #include <stdint.h>
import "C"

import (
	"runtime/cgo"
	"unsafe"
)

// The functions here are called from C (shim.cpp) on the thread that is in a
// llama.cpp call made from Go.

//export goLog
func goLog(level C.int, text *C.char) {
	logMu.Lock()
	w := logOutput
	logMu.Unlock()
	if w != nil {
		w.Write([]byte(C.GoString(text)))
	}
}

//export goHiddenState
func goHiddenState(h C.uintptr_t, block C.int, data *C.float, nEmbd, nTokens C.int) {
	c := cgo.Handle(h).Value().(*Context)
	c.blocks++
	if c.hidden != nil {
		c.hidden(int(block), unsafe.Slice((*float32)(unsafe.Pointer(data)), int(nEmbd)*int(nTokens)), int(nEmbd), int(nTokens))
	}
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

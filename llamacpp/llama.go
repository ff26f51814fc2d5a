// Package llamacpp runs GGUF models in llama.cpp (linked through cgo from the
// ollama module): loading, tokenizing, decoding with capture of the hidden
// state at every block boundary, watches and skips, generation, and
// quantization. It is the only package of the project that uses cgo; its
// API hides C. Perplexity and other measurements are prune/eval's; what
// llama.cpp requires of a file is llamacpp/arch's.
package llamacpp

/*
#cgo CXXFLAGS: -std=c++17
#cgo CPPFLAGS: -I${SRCDIR}/../third_party/llama.cpp/include -I${SRCDIR}/../third_party/ggml/include
#include <stdlib.h>
#include "shim.h"
*/
import "C"

import (
	"encoding/binary"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"runtime"
	"runtime/cgo"
	"sync"
	"unsafe"

	"github.com/ggufprune/ggufprune/gguf"
	"github.com/ggufprune/ggufprune/internal/atomicfile"
	"github.com/ggufprune/ggufprune/llamacpp/arch"

	// llama.cpp, ggml and ggml's CPU backend, as cgo packages.
	_ "github.com/ollama/ollama/llama/llama.cpp/src"
)

//go:generate sh ../scripts/link-third-party.sh

var initOnce sync.Once

// initBackend starts llama.cpp's backends once, and with them the handlers
// that turn a crash inside llama.cpp into exit status ExitCrash.
func initBackend() { initOnce.Do(func() { C.gp_init() }) }

// ExitCrash is the exit status of a process in which llama.cpp aborted or
// faulted: a value of a model that this package's checks let through. The
// process's temporary files are removed first.
const ExitCrash = C.GP_EXIT_CRASH

var pendingMu sync.Mutex

func init() {
	// Temporary files are registered with the shim too, so that a crash
	// inside llama.cpp, which ends the process without running Go code,
	// still removes them.
	atomicfile.OnPending(func(name string) func() {
		cname := C.CString(name)
		defer C.free(unsafe.Pointer(cname))
		pendingMu.Lock()
		slot := C.gp_pending_add(cname)
		pendingMu.Unlock()
		return func() {
			pendingMu.Lock()
			C.gp_pending_remove(slot)
			pendingMu.Unlock()
		}
	})
}

// testCrash makes llama.cpp's side crash: 0 through ggml's abort, 1 by a
// division by zero, 2 through std::terminate. For tests of ExitCrash.
func testCrash(kind int) { initBackend(); C.gp_test_crash(C.int(kind)) }

var (
	gpuOnce  sync.Once
	gpuCount int
)

// gpuDevices loads ggml's dynamic GPU backends, once: libggml-cuda.so and
// the like next to the executable, or the one named by GGML_BACKEND_PATH.
func gpuDevices() int {
	gpuOnce.Do(func() {
		dir := "."
		if exe, err := os.Executable(); err == nil {
			dir = filepath.Dir(exe)
		}
		cdir := C.CString(dir)
		defer C.free(unsafe.Pointer(cdir))
		gpuCount = int(C.gp_load_backends(cdir))
	})
	return gpuCount
}

// Log is the hook of llama.cpp's and ggml's log. llama.cpp has one log
// callback for the whole process, so this is one object: quiet unless an
// output is set; quantization reads its progress from the same lines.
var Log = &LogHook{}

// LogHook sends llama.cpp's log lines to an output and to the progress
// parser of a running quantization.
type LogHook struct {
	mu       sync.Mutex
	output   io.Writer
	progress func(done, total int)
}

// SetOutput sends llama.cpp's and ggml's log to w (nil: keep them quiet,
// the default).
func (l *LogHook) SetOutput(w io.Writer) {
	initBackend()
	l.mu.Lock()
	defer l.mu.Unlock()
	l.output = w
	l.forward()
}

// setProgress installs (or, with nil, removes) the quantization progress parser.
func (l *LogHook) setProgress(fn func(done, total int)) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.progress = fn
	l.forward()
}

func (l *LogHook) forward() { C.gp_set_log(C.bool(l.output != nil || l.progress != nil)) }

func (l *LogHook) sinks() (io.Writer, func(done, total int)) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.output, l.progress
}

// errBuf is C memory for an error message.
type errBuf struct{ p *C.char }

func newErrBuf() errBuf      { return errBuf{(*C.char)(C.calloc(C.GP_ERRLEN, 1))} }
func (b errBuf) free()       { C.free(unsafe.Pointer(b.p)) }
func (b errBuf) msg() string { return C.GoString(b.p) }

// Model is a model loaded in llama.cpp. Close frees it; contexts made from
// it keep it alive until they are closed too.
type Model struct {
	mu       sync.Mutex
	c        *C.struct_llama_model
	path     string
	info     Info
	contexts int  // open contexts
	closed   bool // Close was called
}

// LoadModel loads a GGUF model. The file is first read by this project's gguf
// reader (unless p.Header is that reading already), so that a malformed file
// is refused with a clear error before llama.cpp opens it.
func LoadModel(path string, p ModelParams) (*Model, error) {
	initBackend()
	gm := p.Header
	if gm == nil {
		var err error
		if gm, err = gguf.OpenModel(path); err != nil {
			return nil, err
		}
		defer gm.Close()
	}
	archName, err := gm.Architecture()
	if err != nil {
		return nil, err
	}
	if why := arch.Unknown(archName); why != "" {
		how := " (blocks can still be removed by list: prune --layers … --force)"
		if arch.UncheckedRules(archName) == "" {
			how = " (blocks can still be removed by list: prune --layers …)"
		}
		return nil, &Error{"loading model", path, why + how, ErrLoad}
	}
	// Refuse what llama.cpp would abort on, before it sees the file.
	if err := arch.CheckModel(gm, arch.Run); err != nil {
		return nil, err
	}
	if !arch.MappedAlignmentOK(gm) {
		// ggml asserts that mapped tensor data is 32-byte aligned; a legal
		// file with a smaller general.alignment is read into memory instead.
		p.NoMmap = true
	}
	nBlocks, _ := gm.BlockCount()
	mtp := len(arch.MTPBlocks(gm, nBlocks))
	cpath := C.CString(path)
	defer C.free(unsafe.Pointer(cpath))
	eb := newErrBuf()
	defer eb.free()
	if p.GPULayers > 0 && gpuDevices() == 0 {
		return nil, &Error{"loading model", path, fmt.Sprintf("%d GPU layers asked for, but this build has no GPU backend (put a ggml GPU backend library such as libggml-cuda.so next to the executable or name it in GGML_BACKEND_PATH; see docs/building.md)", p.GPULayers), ErrNoGPU}
	}
	m := &Model{path: path}
	if C.gp_model_load(cpath, C.int(p.GPULayers), C.bool(!p.NoMmap), C.bool(p.VocabOnly), &m.c, eb.p) != 0 {
		return nil, &Error{"loading model", path, eb.msg(), ErrLoad}
	}
	vocab := C.llama_model_get_vocab(m.c)
	m.info = Info{
		Architecture: archName,
		NLayer:       int(C.llama_model_n_layer(m.c)),
		NMTP:         mtp,
		NEmbd:        int(C.llama_model_n_embd(m.c)),
		NVocab:       int(C.llama_vocab_n_tokens(vocab)),
		NCtxTrain:    int(C.llama_model_n_ctx_train(m.c)),
		BOS:          int32(C.llama_vocab_bos(vocab)),
		EOS:          int32(C.llama_vocab_eos(vocab)),
		AddBOS:       bool(C.llama_vocab_get_add_bos(vocab)),
	}
	runtime.SetFinalizer(m, (*Model).Close)
	return m, nil
}

// Close frees the model once its contexts are closed. It is safe to call twice.
func (m *Model) Close() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.closed = true
	m.freeLocked()
	return nil
}

func (m *Model) freeLocked() {
	if m.c != nil && m.closed && m.contexts == 0 {
		C.gp_model_free(m.c)
		m.c = nil
		runtime.SetFinalizer(m, nil)
	}
}

// closedError is the error of a method called after Close.
func closedError(op, path, what string) error {
	return &Error{op, path, "the " + what + " is closed", ErrClosed}
}

// Path is the model's file.
func (m *Model) Path() string { return m.path }

// Info returns facts about the model.
func (m *Model) Info() Info { return m.info }

// Tokenize turns text into tokens, with the tokenizer's BOS when addBOS and
// the tokenizer adds one. Text the vocabulary cannot represent is an error
// naming the character and its byte offset.
func (m *Model) Tokenize(text string, addBOS bool) ([]int32, error) {
	if m.closed {
		return nil, closedError("tokenizing", m.path, "model")
	}
	if len(text) > 1<<31-1 {
		return nil, &Error{"tokenizing", m.path, "text is longer than 2 GiB", ErrTokenize}
	}
	ctext := C.CString(text)
	defer C.free(unsafe.Pointer(ctext))
	eb := newErrBuf()
	defer eb.free()
	n := len(text) + 2
	for {
		buf := (*C.int32_t)(C.malloc(C.size_t(n) * 4))
		var got C.int32_t
		rc := C.gp_tokenize(m.c, ctext, C.int32_t(len(text)), C.bool(addBOS), buf, C.int32_t(n), &got, eb.p)
		if rc != 0 {
			C.free(unsafe.Pointer(buf))
			return nil, m.tokenizeError(text, eb.msg())
		}
		if int(got) <= n {
			out := make([]int32, int(got))
			copy(out, unsafe.Slice((*int32)(unsafe.Pointer(buf)), int(got)))
			C.free(unsafe.Pointer(buf))
			return out, nil
		}
		C.free(unsafe.Pointer(buf))
		n = int(got)
	}
}

// tokenizeError finds the first character the vocabulary cannot tokenize on
// its own, so that the error says what and where.
func (m *Model) tokenizeError(text, msg string) error {
	eb := newErrBuf()
	defer eb.free()
	var buf [64]C.int32_t
	for off, r := range text {
		s := string(r)
		cs := C.CString(s)
		var got C.int32_t
		rc := C.gp_tokenize(m.c, cs, C.int32_t(len(s)), false, &buf[0], C.int32_t(len(buf)), &got, eb.p)
		C.free(unsafe.Pointer(cs))
		if rc != 0 {
			return &Error{"tokenizing", m.path, fmt.Sprintf("the vocabulary cannot represent the character %q (U+%04X) at byte %d of the text (%s)", r, r, off, msg), ErrTokenize}
		}
	}
	return &Error{"tokenizing", m.path, msg, ErrTokenize}
}

// Context is a llama.cpp context of one model. Close frees it.
type Context struct {
	c       *C.gp_ctx
	model   *Model
	nCtx    int
	handle  cgo.Handle
	hidden  HiddenFunc
	matmul  MatmulFunc
	experts ExpertsFunc
	blocks  int // block boundaries seen in the last decode
	capture bool
	skip    []int // blocks skipped at run time
	noHead  bool  // decodes stop after the last block: no logits
	watch   WatchFunc
}

// NewContext makes a context for decoding chunks of up to p.NCtx tokens.
func (m *Model) NewContext(p ContextParams) (*Context, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return nil, closedError("creating context", m.path, "model")
	}
	if p.NCtx <= 0 {
		return nil, &Error{"creating context", m.path, fmt.Sprintf("context size %d must be positive", p.NCtx), ErrContext}
	}
	if p.NCtx > m.info.NCtxTrain && m.info.NCtxTrain > 0 {
		return nil, &Error{"creating context", m.path, fmt.Sprintf("context size %d is larger than the model's training context %d", p.NCtx, m.info.NCtxTrain), ErrContext}
	}
	threads := p.Threads
	if threads <= 0 {
		threads = runtime.NumCPU()
	}
	threads = min(threads, 4*runtime.NumCPU(), 512) // 512: GGML_MAX_N_THREADS
	c := &Context{model: m, nCtx: p.NCtx, capture: p.Capture}
	c.handle = cgo.NewHandle(c)
	eb := newErrBuf()
	defer eb.free()
	if C.gp_ctx_new(m.c, C.int32_t(p.NCtx), C.int32_t(threads), C.bool(p.Capture), C.uintptr_t(c.handle), &c.c, eb.p) != 0 {
		c.handle.Delete()
		return nil, &Error{"creating context", m.path, eb.msg(), ErrContext}
	}
	if b := arch.Boundaries(m.info.Architecture); p.Capture && b != arch.DefaultBoundaries {
		cembd, cout := C.CString(b.Embeddings), C.CString(b.BlockOutput)
		defer C.free(unsafe.Pointer(cembd))
		defer C.free(unsafe.Pointer(cout))
		if C.gp_ctx_set_boundaries(c.c, cembd, cout, eb.p) != 0 {
			c.Close()
			return nil, &Error{"creating context", m.path, eb.msg(), ErrContext}
		}
	}
	m.contexts++
	runtime.SetFinalizer(c, (*Context).Close)
	return c, nil
}

// Close frees the context (and its model, when that was closed and this was
// its last context). It is safe to call twice.
func (c *Context) Close() error {
	if c.c != nil {
		C.gp_ctx_free(c.c)
		c.c = nil
		c.handle.Delete()
		runtime.SetFinalizer(c, nil)
		m := c.model
		m.mu.Lock()
		m.contexts--
		m.freeLocked()
		m.mu.Unlock()
	}
	return nil
}

// NCtx is the context size.
func (c *Context) NCtx() int { return c.nCtx }

// Model is the context's model.
func (c *Context) Model() *Model { return c.model }

// CaptureHidden sets the function that receives block-boundary hidden states
// in the following decodes (nil stops capturing). The context must have been
// made with Capture.
func (c *Context) CaptureHidden(fn HiddenFunc) error { c.hidden = fn; return c.setCapture() }

// CaptureMatmul sets the function that receives the inputs of every block
// weight's matrix multiplication (for importance matrices), or nil.
func (c *Context) CaptureMatmul(fn MatmulFunc) error { c.matmul = fn; return c.setCapture() }

// CaptureExperts sets the function that receives the routing of every
// mixture-of-experts block (see ExpertsFunc) in the following decodes, or
// nil. The context must have been made with Capture.
func (c *Context) CaptureExperts(fn ExpertsFunc) error {
	if c.c == nil {
		return closedError("capturing experts", c.model.path, "context")
	}
	if !c.capture && fn != nil {
		return &Error{"capturing experts", c.model.path, "capture needs a context made with ContextParams.Capture", ErrCapture}
	}
	c.experts = fn
	C.gp_ctx_set_experts(c.c, C.bool(fn != nil))
	return nil
}

func (c *Context) setCapture() error {
	if c.c == nil {
		return closedError("setting capture", c.model.path, "context")
	}
	if !c.capture && (c.hidden != nil || c.matmul != nil) {
		return &Error{"setting capture", c.model.path, "capture needs a context made with ContextParams.Capture", ErrCapture}
	}
	C.gp_ctx_set_capture(c.c, C.bool(c.hidden != nil), C.bool(c.matmul != nil))
	return nil
}

// SetSkip makes the following decodes behave as if the given blocks were
// removed from the model: when block N of the set has produced its output
// (graph tensor l_out-N), the output is replaced by the block's input, kept
// from the boundary before. Empty or nil ends skipping. The context must
// have been made with Capture, and the architecture must name its block
// boundaries (Decode fails otherwise).
func (c *Context) SetSkip(blocks []int) error {
	if c.c == nil {
		return closedError("skipping blocks", c.model.path, "context")
	}
	if !c.capture {
		return &Error{"skipping blocks", c.model.path, "skipping needs a context made with ContextParams.Capture", ErrCapture}
	}
	run := c.model.info.RunBlocks()
	cb := make([]C.int32_t, 0, len(blocks))
	for _, b := range blocks {
		if b < 0 || b >= run {
			return &Error{"skipping blocks", c.model.path, fmt.Sprintf("block %d is not one of the %d blocks a decode runs", b, run), ErrCapture}
		}
		cb = append(cb, C.int32_t(b))
	}
	c.skip = append(c.skip[:0], blocks...)
	p := (*C.int32_t)(cArray(cb))
	defer C.free(unsafe.Pointer(p))
	C.gp_ctx_set_skip(c.c, p, C.int32_t(len(cb)), C.int32_t(run))
	return nil
}

// Watch hands the graph tensors of the given names (such as "ffn_out-5",
// the FFN output of block 5 before the residual add) to fn in the
// following decodes, which may change them; nil names stop watching. The
// context must have been made with Capture.
func (c *Context) Watch(names []string, fn WatchFunc) error {
	if c.c == nil {
		return closedError("watching tensors", c.model.path, "context")
	}
	if !c.capture {
		return &Error{"watching tensors", c.model.path, "watching needs a context made with ContextParams.Capture", ErrCapture}
	}
	c.watch = fn
	cs := make([]*C.char, len(names))
	for i, n := range names {
		cs[i] = C.CString(n)
	}
	defer func() {
		for _, p := range cs {
			C.free(unsafe.Pointer(p))
		}
	}()
	p := cArray(cs)
	defer C.free(p)
	C.gp_ctx_set_watch(c.c, (**C.char)(p), C.int32_t(len(cs)))
	return nil
}

// Dequantize converts the data of a tensor of a ggml type (any, quantized
// or not) into n floats, with ggml's own conversion.
func Dequantize(typ gguf.TensorType, data []byte, n int) ([]float32, error) {
	initBackend()
	out := make([]float32, n)
	if n == 0 {
		return out, nil
	}
	if typ == gguf.TypeF32 { // ggml has no conversion from its own float type
		if len(data) < 4*n {
			return nil, &Error{"converting F32 to float", "", "short data", ErrQuantize}
		}
		for i := range out {
			out[i] = math.Float32frombits(binary.LittleEndian.Uint32(data[4*i:]))
		}
		return out, nil
	}
	eb := newErrBuf()
	defer eb.free()
	src := C.CBytes(data)
	defer C.free(src)
	dst := (*C.float)(C.malloc(C.size_t(4 * n)))
	defer C.free(unsafe.Pointer(dst))
	if C.gp_dequantize(C.int32_t(typ), src, dst, C.int64_t(n), eb.p) != 0 {
		return nil, &Error{"converting " + typ.String() + " to float", "", eb.msg(), ErrQuantize}
	}
	copy(out, unsafe.Slice((*float32)(unsafe.Pointer(dst)), n))
	return out, nil
}

// QuantizeRows converts rows of floats into a ggml type (any, quantized or
// not) with ggml's own quantizer, weighted by an importance matrix of one
// value per column when one is given.
func QuantizeRows(typ gguf.TensorType, rows []float32, nCols int, imatrix []float32) ([]byte, error) {
	initBackend()
	if nCols <= 0 || len(rows)%nCols != 0 || uint64(nCols)%typ.BlockSize() != 0 {
		return nil, &Error{"quantizing to " + typ.String(), "", fmt.Sprintf("rows of %d do not fit the type", nCols), ErrQuantize}
	}
	nRows := len(rows) / nCols
	size := uint64(nRows) * (uint64(nCols) / typ.BlockSize() * typ.BlockBytes())
	if typ == gguf.TypeF32 {
		out := make([]byte, 4*len(rows))
		for i, v := range rows {
			binary.LittleEndian.PutUint32(out[4*i:], math.Float32bits(v))
		}
		return out, nil
	}
	eb := newErrBuf()
	defer eb.free()
	src := (*C.float)(C.malloc(C.size_t(4 * max(1, len(rows)))))
	defer C.free(unsafe.Pointer(src))
	copy(unsafe.Slice((*float32)(unsafe.Pointer(src)), len(rows)), rows)
	dst := C.malloc(C.size_t(max(1, size)))
	defer C.free(dst)
	var im *C.float
	if imatrix != nil {
		im = (*C.float)(C.malloc(C.size_t(4 * len(imatrix))))
		defer C.free(unsafe.Pointer(im))
		copy(unsafe.Slice((*float32)(unsafe.Pointer(im)), len(imatrix)), imatrix)
	}
	var written C.size_t
	if C.gp_quantize_rows(C.int32_t(typ), src, dst, C.int64_t(nRows), C.int64_t(nCols), im, &written, eb.p) != 0 {
		return nil, &Error{"quantizing to " + typ.String(), "", eb.msg(), ErrQuantize}
	}
	if uint64(written) != size {
		return nil, &Error{"quantizing to " + typ.String(), "", fmt.Sprintf("ggml wrote %d bytes, %d expected", written, size), ErrQuantize}
	}
	return C.GoBytes(dst, C.int(size)), nil
}

// SetNoHead makes the following decodes stop after the last block's output:
// the output head (the largest matrix of many models) is not computed, and
// there are no logits. For hidden-state capture only.
func (c *Context) SetNoHead(on bool) error {
	if c.c == nil {
		return closedError("setting the output head", c.model.path, "context")
	}
	if !c.capture {
		return &Error{"setting the output head", c.model.path, "stopping after the last block needs a context made with ContextParams.Capture", ErrCapture}
	}
	c.noHead = on
	stop := -2
	if on {
		stop = c.model.info.RunBlocks() - 1
	}
	C.gp_ctx_set_stop(c.c, C.int32_t(stop))
	return nil
}

// SetStopAfter makes the following decodes stop after block b's output
// (b < 0: never): nothing after it is computed, and there are no logits.
func (c *Context) SetStopAfter(b int) error {
	if c.c == nil {
		return closedError("setting where decodes stop", c.model.path, "context")
	}
	if !c.capture {
		return &Error{"setting where decodes stop", c.model.path, "stopping early needs a context made with ContextParams.Capture", ErrCapture}
	}
	c.noHead = b >= 0
	if b < 0 {
		b = -2
	}
	C.gp_ctx_set_stop(c.c, C.int32_t(b))
	return nil
}

// ClearMemory empties the KV cache, so that the next decode starts a new sequence.
func (c *Context) ClearMemory() error {
	if c.c == nil {
		return closedError("clearing memory", c.model.path, "context")
	}
	C.gp_memory_clear(c.c)
	return nil
}

// Decode runs tokens at positions pos, pos+1, … of the sequence, keeping
// logits for the tokens from index logitsFrom on. With hidden-state capture
// every token's logits are needed (or the last block keeps only the output
// rows), so logitsFrom must then be 0.
func (c *Context) Decode(tokens []int32, pos, logitsFrom int) error {
	if c.c == nil {
		return closedError("decoding", c.model.path, "context")
	}
	if len(tokens) == 0 || pos < 0 || pos+len(tokens) > c.nCtx {
		return &Error{"decoding", c.model.path, fmt.Sprintf("%d tokens at position %d do not fit a context of %d", len(tokens), pos, c.nCtx), ErrDecode}
	}
	if c.hidden != nil && logitsFrom != 0 {
		return &Error{"decoding", c.model.path, "hidden-state capture needs logits for every token (logitsFrom 0)", ErrCapture}
	}
	eb := newErrBuf()
	defer eb.free()
	ctoks := (*C.int32_t)(C.malloc(C.size_t(len(tokens)) * 4))
	defer C.free(unsafe.Pointer(ctoks))
	copy(unsafe.Slice((*int32)(unsafe.Pointer(ctoks)), len(tokens)), tokens)
	c.blocks = 0
	if rc := C.gp_decode(c.c, ctoks, C.int32_t(len(tokens)), C.int32_t(pos), C.int32_t(logitsFrom), eb.p); rc != 0 {
		if rc == C.GP_CAPTURE_FAILED {
			return &Error{"capturing hidden states", c.model.path, fmt.Sprintf("the %s graph: %s", c.model.info.Architecture, eb.msg()), ErrCapture}
		}
		return &Error{"decoding", c.model.path, eb.msg(), ErrDecode}
	}
	if run := c.model.info.RunBlocks(); c.hidden != nil && c.blocks != run+1 {
		return &Error{"capturing hidden states", c.model.path, fmt.Sprintf("the %s graph gave %d of the %d block boundaries (the embeddings and %[5]s-0…%[5]s-%[4]d); this architecture does not name its block outputs %[5]s-N", c.model.info.Architecture, c.blocks, run+1, run-1, arch.Boundaries(c.model.info.Architecture).BlockOutput), ErrCapture}
	}
	return nil
}

// Logits returns a copy of the logits of the token at index i of the last
// decode.
func (c *Context) Logits(i int) ([]float32, error) {
	v, err := c.logitsView(i)
	if err != nil {
		return nil, err
	}
	return append([]float32(nil), v...), nil
}

// LogitsInto copies the logits of the token at index i of the last decode
// into dst, which must hold one per vocabulary token.
func (c *Context) LogitsInto(i int, dst []float32) error {
	v, err := c.logitsView(i)
	if err != nil {
		return err
	}
	if len(dst) != len(v) {
		return &Error{"reading logits", c.model.path, fmt.Sprintf("a buffer of %d for %d logits", len(dst), len(v)), ErrDecode}
	}
	copy(dst, v)
	return nil
}

// logitsView is Logits without the copy: a view into llama.cpp's memory,
// valid until the next decode or Close. It never leaves the package.
func (c *Context) logitsView(i int) ([]float32, error) {
	if c.c == nil {
		return nil, closedError("reading logits", c.model.path, "context")
	}
	if c.noHead {
		return nil, &Error{"reading logits", c.model.path, "the context stops after the last block (SetNoHead): there are no logits", ErrDecode}
	}
	p := C.gp_logits(c.c, C.int32_t(i))
	if p == nil {
		return nil, &Error{"reading logits", c.model.path, fmt.Sprintf("no logits for token %d of the last decode", i), ErrDecode}
	}
	return unsafe.Slice((*float32)(unsafe.Pointer(p)), c.model.info.NVocab), nil
}

// typeInfo is ggml's own layout of a tensor type, for checking other tables.
func typeInfo(t uint32) (name string, blockSize, typeSize int64, ok bool) {
	var bs C.int64_t
	buf := make([]byte, 64)
	ts := C.gp_type_size(C.int32_t(t), &bs, (*C.char)(unsafe.Pointer(&buf[0])), C.size_t(len(buf)))
	if ts <= 0 {
		return "", 0, 0, false
	}
	return C.GoString((*C.char)(unsafe.Pointer(&buf[0]))), int64(bs), int64(ts), true
}

// readGGUF reads a file's header with ggml's GGUF reader, the one llama.cpp
// loads models and importance matrices with: a check that llama.cpp accepts
// a file this project wrote.
func readGGUF(path string) (GGUFInfo, error) {
	initBackend()
	f, err := gguf.Open(path)
	if err != nil {
		return GGUFInfo{}, err
	}
	err = arch.CheckGGML(f)
	f.Close()
	if err != nil {
		return GGUFInfo{}, err
	}
	cpath := C.CString(path)
	defer C.free(unsafe.Pointer(cpath))
	eb := newErrBuf()
	defer eb.free()
	var nt, nkv C.int64_t
	buf := make([]byte, 64)
	if C.gp_gguf_read(cpath, &nt, &nkv, (*C.char)(unsafe.Pointer(&buf[0])), C.size_t(len(buf)), eb.p) != 0 {
		return GGUFInfo{}, &Error{"reading GGUF with ggml", path, eb.msg(), ErrGGUF}
	}
	return GGUFInfo{Tensors: int(nt), KV: int(nkv), GeneralType: C.GoString((*C.char)(unsafe.Pointer(&buf[0])))}, nil
}

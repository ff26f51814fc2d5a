//go:build !cgo

package llamacpp

import (
	"io"

	"github.com/ggufprune/ggufprune/gguf"
)

// Without cgo there is no llama.cpp: the types exist so that the rest of the
// project compiles, and every entry point returns ErrNoLlama.

// Model is a model loaded in llama.cpp (unavailable in this build).
type Model struct{}

// Context is a llama.cpp context (unavailable in this build).
type Context struct{}

// Log is the hook of llama.cpp's log (nothing to hook in this build).
var Log = &LogHook{}

// LogHook would send llama.cpp's log to an output.
type LogHook struct{}

func (*LogHook) SetOutput(io.Writer)                        {}
func LoadModel(string, ModelParams) (*Model, error)         { return nil, ErrNoLlama }
func (m *Model) Close() error                               { return nil }
func (m *Model) Info() Info                                 { return Info{} }
func (m *Model) Path() string                               { return "" }
func (m *Model) Tokenize(string, bool) ([]int32, error)     { return nil, ErrNoLlama }
func (m *Model) NewContext(ContextParams) (*Context, error) { return nil, ErrNoLlama }
func (c *Context) Close() error                             { return nil }
func (c *Context) NCtx() int                                { return 0 }
func (c *Context) Model() *Model                            { return nil }
func (c *Context) CaptureHidden(HiddenFunc) error           { return ErrNoLlama }
func (c *Context) CaptureMatmul(MatmulFunc) error           { return ErrNoLlama }
func (c *Context) CaptureExperts(ExpertsFunc) error         { return ErrNoLlama }
func (c *Context) ClearMemory() error                       { return ErrNoLlama }
func (c *Context) Decode([]int32, int, int) error           { return ErrNoLlama }
func (c *Context) Logits(int) ([]float32, error)            { return nil, ErrNoLlama }
func Quantize(string, string, QuantizeParams) error         { return ErrNoLlama }
func (c *Context) logitsView(int) ([]float32, error)        { return nil, ErrNoLlama }
func (c *Context) LogitsInto(int, []float32) error          { return ErrNoLlama }

// ExitCrash is the exit status of a process in which llama.cpp crashed
// (never, in this build).
const ExitCrash = 3

func testCrash(int)                                                           {}
func (c *Context) SetSkip([]int) error                                        { return ErrNoLlama }
func (c *Context) SetNoHead(bool) error                                       { return ErrNoLlama }
func (c *Context) Watch([]string, WatchFunc) error                            { return ErrNoLlama }
func Dequantize(gguf.TensorType, []byte, int) ([]float32, error)              { return nil, ErrNoLlama }
func QuantizeRows(gguf.TensorType, []float32, int, []float32) ([]byte, error) { return nil, ErrNoLlama }
func (c *Context) SetStopAfter(int) error                                     { return ErrNoLlama }

func readGGUF(string) (GGUFInfo, error)                    { return GGUFInfo{}, ErrNoLlama }
func typeInfo(uint32) (name string, bs, ts int64, ok bool) { return "", 0, 0, false }

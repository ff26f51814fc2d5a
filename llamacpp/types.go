package llamacpp

import (
	"errors"
	"fmt"

	"github.com/ggufprune/ggufprune/gguf"
)

// ErrNoLlama is returned by every llama.cpp feature of a build without cgo.
var ErrNoLlama = errors.New("llamacpp: ggufprune was built without llama.cpp (CGO_ENABLED=0); build it with make")

// The kinds of failure an *Error unwraps to, for errors.Is.
var (
	ErrClosed   = errors.New("llamacpp: used after Close")
	ErrLoad     = errors.New("llamacpp: loading the model failed")
	ErrNoGPU    = errors.New("llamacpp: no GPU backend")
	ErrTokenize = errors.New("llamacpp: tokenizing failed")
	ErrContext  = errors.New("llamacpp: creating a context failed")
	ErrDecode   = errors.New("llamacpp: decoding failed")
	ErrCapture  = errors.New("llamacpp: capturing hidden states failed")
	ErrQuantize = errors.New("llamacpp: quantizing failed")
	ErrGGUF     = errors.New("llamacpp: ggml cannot read the GGUF file")
)

// Error is a failure reported by llama.cpp, or a misuse of this package
// (use after Close, a context too large). errors.Is(err, Kind) tells which.
type Error struct {
	Op   string // what was being done
	Path string // the model file, if any
	Msg  string // llama.cpp's message
	Kind error  // one of the Err* kinds above
}

func (e *Error) Unwrap() error { return e.Kind }

func (e *Error) Error() string {
	if e.Path != "" {
		return fmt.Sprintf("%s: %s: %s", e.Path, e.Op, e.Msg)
	}
	return fmt.Sprintf("%s: %s", e.Op, e.Msg)
}

// ModelParams are the options of LoadModel.
type ModelParams struct {
	GPULayers int         // layers to offload to a GPU backend; 0 on a CPU build
	NoMmap    bool        // read the file instead of mapping it
	Header    *gguf.Model // the file already opened by the caller; nil: LoadModel reads its header
	VocabOnly bool        // load only the vocabulary: enough to tokenize, no weights
}

// Info holds facts about a loaded model.
type Info struct {
	Architecture string
	NLayer       int
	NMTP         int // trailing multi-token-prediction blocks: counted in NLayer, not run by a decode
	NEmbd        int
	NVocab       int
	NCtxTrain    int
	BOS, EOS     int32
	AddBOS       bool // the tokenizer adds BOS to a text
}

// HiddenFunc receives one block boundary's hidden state during a decode:
// block bi.EmbeddingBoundary is the input of block 0 (the token embeddings,
// graph tensor inp_embd) and block i the output of block i (l_out-i), before
// the final norm. h holds nTokens rows of nEmbd floats and is valid only
// during the call.
type HiddenFunc func(block int, h []float32, nEmbd, nTokens int)

// WatchFunc receives a watched graph tensor during a decode: data holds
// nRows rows of nCols floats and may be changed (the rest of the graph then
// computes with the change). Valid only during the call. An I32 tensor
// (such as ffn_moe_argsort-N, the experts each token is routed to) is
// handed over as floats, exact below 2^24, and changes to it are not
// written back.
type WatchFunc func(name string, data []float32, nCols, nRows int)

// ExpertsFunc receives the routing of one mixture-of-experts block during a
// decode: for each of nTokens tokens, the nUsed experts it was routed to
// (ids, of nExperts), the gate weights that multiply their outputs
// (after the model's own normalisation and scaling) and the L2 norms of
// those outputs (the expert FFN's result, with its bias when it has one).
// The slices are read-only and valid only during the call.
type ExpertsFunc func(block int, ids []int32, weights, norms []float32, nUsed, nTokens, nExperts int)

// MatmulFunc receives the input of one weight matrix multiplication: x holds
// nTokens rows of nIn floats (times nSlots for expert matmuls, whose expert
// ids has nSlots entries per token). Valid only during the call.
type MatmulFunc func(weight string, x []float32, nIn, nSlots, nTokens int, ids []int32, nExpertUsed, nExperts int)

// ContextParams are the options of NewContext.
type ContextParams struct {
	NCtx    int  // tokens per decode; also the batch and micro-batch size
	Threads int  // CPU threads; 0 means runtime.NumCPU()
	Capture bool // install the eval callback (needed for CaptureHidden and CaptureMatmul)
}

// GGUFInfo is what ggml's own GGUF reader found in a file.
type GGUFInfo struct {
	Tensors     int
	KV          int
	GeneralType string // general.type, e.g. "model" or "imatrix"
}

// RunBlocks is the number of blocks a decode runs, and so the number of
// block outputs a capture sees: NLayer less the multi-token-prediction blocks.
func (i Info) RunBlocks() int { return i.NLayer - i.NMTP }

// Package runner runs models in llama.cpp over text as llama-perplexity
// does: the options of a run, texts and calibration, chunks and the scored
// window of each chunk, contexts that skip blocks. Scoring, selection,
// healing and evaluation all run models through it.
package runner

import (
	"errors"
	"fmt"
	"runtime"

	"github.com/ggufprune/ggufprune/gguf"
	"github.com/ggufprune/ggufprune/llamacpp"
)

// Options are how models run in llama.cpp. The zero value runs on all
// CPU cores with chunks of DefaultCtx tokens.
type Options struct {
	Ctx       int  // tokens per chunk (0: DefaultCtx); at most the model's training context
	Chunks    int  // use at most this many chunks of the text (0: all)
	Threads   int  // CPU threads (0: all cores)
	GPULayers int  // layers to offload to a GPU backend
	NoMmap    bool // read the model into memory instead of mapping it
	// Skip makes Evaluate and Compare run the models (not Compare's base) as
	// if these blocks were removed, without writing a file (run-time
	// skipping; see llamacpp.Context.SetSkip).
	Skip []int
	// SkipExperts makes models run as if these experts (by block) were
	// removed, by masking their router logits (graph tensor ffn_moe_logits)
	// to -Inf: with softmax gating, as Mixtral-style models route, the
	// kept experts then get exactly the weights they get in the file
	// without the others.
	SkipExperts map[int][]int

	// Progress, when not nil, is told of long work: the stage ("scoring",
	// "perplexity", "generating", "quantizing"), what it counts ("chunks",
	// "tokens", "tensors"), how many tokens one step is (0: not tokens),
	// and how far it is.
	Progress func(stage, unit string, tokensPerStep, done, total int)
	// Notify, when not nil, receives messages about choices made for the
	// caller (such as self-generated calibration text).
	Notify func(msg string)
}

// MaxThreads is the most CPU threads a model runs on: 4 per core (ggml's
// threads spin at every synchronisation, so more only slow it down).
func MaxThreads() int { return 4 * runtime.NumCPU() }

// DefaultCtx is the chunk size when Options.Ctx is 0.
const DefaultCtx = 256

// CtxSize is the chunk size: Ctx, or DefaultCtx when 0.
func (o Options) CtxSize() int {
	if o.Ctx == 0 {
		return DefaultCtx
	}
	return o.Ctx
}

// ProgressFunc is the progress callback of one stage (nil without Progress).
func (o Options) ProgressFunc(stage, unit string, tokensPerStep int) func(done, total int) {
	if o.Progress == nil {
		return nil
	}
	return func(done, total int) { o.Progress(stage, unit, tokensPerStep, done, total) }
}

// Notifyf sends a message to Notify, if set.
func (o Options) Notifyf(format string, args ...any) {
	if o.Notify != nil {
		o.Notify(fmt.Sprintf(format, args...))
	}
}

// ErrContextTooLarge is wrapped by the error of a chunk size larger than the
// model's training context.
var ErrContextTooLarge = errors.New("the context is larger than the model's training context")

// Check refuses options that cannot work, before any model is loaded.
func (o Options) Check() error {
	switch {
	case o.Ctx != 0 && o.Ctx < 2:
		return fmt.Errorf("-c %d: the context size must be at least 2", o.Ctx)
	case o.Chunks < 0:
		return fmt.Errorf("--chunks %d: the chunk count must not be negative", o.Chunks)
	case o.Threads < 0 || o.Threads > MaxThreads():
		return fmt.Errorf("-t %d: the thread count must be between 0 (all cores) and %d", o.Threads, MaxThreads())
	case o.GPULayers < 0:
		return fmt.Errorf("-ngl %d: the GPU layer count must not be negative", o.GPULayers)
	}
	return nil
}

// Load loads a model in llama.cpp and checks that the chunk size fits it.
// header, when not nil, is the model's file already opened.
func Load(path string, header *gguf.Model, o Options) (*llamacpp.Model, error) {
	if err := o.Check(); err != nil {
		return nil, err
	}
	lm, err := llamacpp.LoadModel(path, llamacpp.ModelParams{GPULayers: o.GPULayers, NoMmap: o.NoMmap, Header: header})
	if err != nil {
		return nil, err
	}
	if n := lm.Info().NCtxTrain; n > 0 && o.CtxSize() > n {
		lm.Close()
		return nil, &ContextError{Path: path, Ctx: o.CtxSize(), Train: n}
	}
	return lm, nil
}

// ContextError is a chunk size larger than a model's training context.
type ContextError struct {
	Path       string
	Ctx, Train int
}

func (e *ContextError) Error() string {
	return fmt.Sprintf("the context size %d is larger than the training context of %s (%d)", e.Ctx, e.Path, e.Train)
}

func (e *ContextError) Unwrap() error { return ErrContextTooLarge }

// ContextKind is what a context made by NewContext does besides decoding.
type ContextKind int

const (
	// Plain decodes; it skips o.Skip (installing the eval callback) when
	// blocks are to be skipped.
	Plain ContextKind = iota
	// Capture installs the eval callback, for captures, watches and skips.
	Capture
)

// NewContext makes a context of o's chunk size and threads that skips
// o.Skip (see llamacpp.Context.SetSkip).
func NewContext(lm *llamacpp.Model, o Options, kind ContextKind) (*llamacpp.Context, error) {
	c, err := lm.NewContext(llamacpp.ContextParams{NCtx: o.CtxSize(), Threads: o.Threads, Capture: kind == Capture || len(o.Skip) > 0 || len(o.SkipExperts) > 0})
	if err != nil {
		return nil, err
	}
	if len(o.SkipExperts) > 0 {
		masked := map[string][]int{}
		var names []string
		for b, experts := range o.SkipExperts {
			name := fmt.Sprintf("ffn_moe_logits-%d", b)
			names, masked[name] = append(names, name), experts
		}
		inf := float32(-1e30)
		err := c.Watch(names, func(name string, x []float32, nExperts, nTokens int) {
			for t := range nTokens {
				for _, e := range masked[name] {
					x[t*nExperts+e] = inf
				}
			}
		})
		if err != nil {
			c.Close()
			return nil, err
		}
	}
	if len(o.Skip) > 0 {
		if err := c.SetSkip(o.Skip); err != nil {
			c.Close()
			return nil, fmt.Errorf("%s: %w", lm.Path(), err)
		}
	}
	return c, nil
}

// Window is the scored part of a chunk, as llama-perplexity scores it: the
// logits of positions First … First+Count-1 predict the tokens after them.
// It is the second half of the chunk, so that every scored token has at
// least half a chunk of context.
type Window struct{ First, Count int }

// ScoredWindow is the scored window of a chunk of n tokens: positions n/2 to
// n-2 (the last position predicts no token of the chunk).
func ScoredWindow(n int) Window { return Window{First: n / 2, Count: n - 1 - n/2} }

// DecodeFrom decodes a chunk from an empty cache with logits from position
// first on.
func DecodeFrom(c *llamacpp.Context, chunk []int32, first int) error {
	if err := c.ClearMemory(); err != nil {
		return err
	}
	return c.Decode(chunk, 0, first)
}

// Cost is what a search or a fit took.
type Cost struct {
	Passes  int     `json:"passes"`  // decodes of the whole calibration text
	Tokens  int64   `json:"tokens"`  // tokens decoded
	Seconds float64 `json:"seconds"` // wall time
}

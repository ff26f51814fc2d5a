package prune

import (
	"errors"
	"fmt"
	"runtime"

	"github.com/ggufprune/ggufprune/gguf"
	"github.com/ggufprune/ggufprune/llamacpp"
)

// Model is an input model, opened once: its header is read and checked by
// Open, and every stage works from that reading.
type Model struct {
	Path   string
	GGUF   *gguf.Model
	Arch   string
	Blocks int // {arch}.block_count

	fingerprint string
}

// Open reads a GGUF model's header (a split set from any shard's name).
// No tensor data is read.
func Open(path string) (*Model, error) {
	g, err := gguf.OpenModel(path)
	if err != nil {
		return nil, err
	}
	m := &Model{Path: path, GGUF: g}
	if m.Arch, err = g.Architecture(); err == nil {
		if m.Blocks, err = g.BlockCount(); err == nil {
			err = gguf.CheckBlocks(g)
		}
	}
	if err != nil {
		g.Close()
		return nil, err
	}
	return m, nil
}

// Close closes the model's files.
func (m *Model) Close() error { return m.GGUF.Close() }

// Size is the total size of the model's files.
func (m *Model) Size() int64 { return m.GGUF.Size() }

// MTPBlocks are the model's multi-token-prediction blocks (the last
// {arch}.nextn_predict_layers): a decode does not run them, so they have no
// score and are never removed.
func (m *Model) MTPBlocks() []int { return gguf.MTPBlocks(m.GGUF, m.Blocks) }

// ScoredBlocks is the number of blocks a decode runs, and so scores: all
// but the multi-token-prediction blocks.
func (m *Model) ScoredBlocks() int { return m.Blocks - len(m.MTPBlocks()) }

// Fingerprint identifies the model's contents (see gguf.Model.Fingerprint),
// computed once.
func (m *Model) Fingerprint() (string, error) {
	if m.fingerprint == "" {
		fp, err := m.GGUF.Fingerprint()
		if err != nil {
			return "", err
		}
		m.fingerprint = fp
	}
	return m.fingerprint, nil
}

// RunOptions are how models run in llama.cpp. The zero value runs on all
// CPU cores with chunks of DefaultCtx tokens.
type RunOptions struct {
	Ctx       int  // tokens per chunk (0: DefaultCtx); at most the model's training context
	Chunks    int  // use at most this many chunks of the text (0: all)
	Threads   int  // CPU threads (0: all cores)
	GPULayers int  // layers to offload to a GPU backend
	NoMmap    bool // read the model into memory instead of mapping it
	// Skip makes Evaluate and Compare run the models (not Compare's base) as
	// if these blocks were removed, without writing a file (run-time
	// skipping; see llamacpp.Context.SetSkip).
	Skip []int

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

// DefaultCtx is the chunk size when RunOptions.Ctx is 0.
const DefaultCtx = 256

func (o RunOptions) ctx() int {
	if o.Ctx == 0 {
		return DefaultCtx
	}
	return o.Ctx
}

func (o RunOptions) progress(stage, unit string, tokensPerStep int) func(done, total int) {
	if o.Progress == nil {
		return nil
	}
	return func(done, total int) { o.Progress(stage, unit, tokensPerStep, done, total) }
}

func (o RunOptions) notify(format string, args ...any) {
	if o.Notify != nil {
		o.Notify(fmt.Sprintf(format, args...))
	}
}

// ErrContextTooLarge is wrapped by the error of a chunk size larger than the
// model's training context.
var ErrContextTooLarge = errors.New("the context is larger than the model's training context")

// Check refuses options that cannot work, before any model is loaded.
func (o RunOptions) Check() error {
	switch {
	case o.Ctx != 0 && o.Ctx < 2:
		return fmt.Errorf("the context size %d must be at least 2", o.Ctx)
	case o.Chunks < 0:
		return fmt.Errorf("the chunk count %d must not be negative", o.Chunks)
	case o.Threads < 0 || o.Threads > MaxThreads():
		return fmt.Errorf("the thread count %d must be between 0 (all cores) and %d", o.Threads, MaxThreads())
	case o.GPULayers < 0:
		return fmt.Errorf("the GPU layer count %d must not be negative", o.GPULayers)
	}
	return nil
}

// load loads a model in llama.cpp and checks that the chunk size fits it.
// header, when not nil, is the model's file already opened.
func load(path string, header *gguf.Model, o RunOptions) (*llamacpp.Model, error) {
	if err := o.Check(); err != nil {
		return nil, err
	}
	lm, err := llamacpp.LoadModel(path, llamacpp.ModelParams{GPULayers: o.GPULayers, NoMmap: o.NoMmap, Header: header})
	if err != nil {
		return nil, err
	}
	if n := lm.Info().NCtxTrain; n > 0 && o.ctx() > n {
		lm.Close()
		return nil, &ContextError{Path: path, Ctx: o.ctx(), Train: n}
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

// load loads the model in llama.cpp from its open header.
func (m *Model) load(o RunOptions) (*llamacpp.Model, error) { return load(m.Path, m.GGUF, o) }

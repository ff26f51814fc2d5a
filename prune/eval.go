package prune

import (
	"context"
	"fmt"

	"github.com/ggufprune/ggufprune/bi"
	"github.com/ggufprune/ggufprune/llamacpp"
)

// EvalResult is the perplexity of one model on a text, and how far its
// predictions are from a base model's when it was compared with one.
type EvalResult struct {
	Model  string       `json:"model"`
	PPL    float64      `json:"ppl"`
	Tokens int          `json:"tokens"` // tokens scored
	Chunks int          `json:"chunks"`
	KLD    *bi.KLDStats `json:"kld,omitempty"` // against the base (Compare)
}

// Evaluate computes the perplexity of each model on the same text, exactly
// as llama.cpp's llama-perplexity does (see llamacpp.Perplexity).
func Evaluate(ctx context.Context, paths []string, text *Text, o RunOptions) ([]EvalResult, error) {
	var rs []EvalResult
	for _, path := range paths {
		r, err := perplexity(ctx, path, text, o)
		if err != nil {
			return nil, err
		}
		rs = append(rs, r)
	}
	return rs, nil
}

func perplexity(ctx context.Context, path string, text *Text, o RunOptions) (EvalResult, error) {
	lm, err := load(path, nil, o)
	if err != nil {
		return EvalResult{}, err
	}
	defer lm.Close()
	tokens, err := text.tokens(lm, o.Chunks*o.ctx())
	if err != nil {
		return EvalResult{}, err
	}
	lctx, err := newSkippingContext(lm, o)
	if err != nil {
		return EvalResult{}, err
	}
	defer lctx.Close()
	r, err := llamacpp.Perplexity(ctx, lctx, tokens, o.Chunks, o.progress("perplexity", "chunks", o.ctx()))
	if err != nil {
		return EvalResult{}, fmt.Errorf("%s on %s: %w", path, text.Name, err)
	}
	return EvalResult{Model: path, PPL: r.PPL, Tokens: r.Tokens, Chunks: r.Chunks}, nil
}

// Percentiles are those of bi.KLDStats.
type Percentiles = bi.Percentiles

// newSkippingContext makes a context that skips o.Skip (a plain one when
// nothing is skipped).
func newSkippingContext(lm *llamacpp.Model, o RunOptions) (*llamacpp.Context, error) {
	c, err := lm.NewContext(llamacpp.ContextParams{NCtx: o.ctx(), Threads: o.Threads, Capture: len(o.Skip) > 0})
	if err != nil {
		return nil, err
	}
	if len(o.Skip) > 0 {
		if err := c.SetSkip(o.Skip); err != nil {
			c.Close()
			return nil, fmt.Errorf("%s: %w", lm.Path(), err)
		}
	}
	return c, nil
}

// Package eval measures models as llama.cpp users do: perplexity as
// llama-perplexity computes it, comparison with a base model (KL
// divergence, same top token) from a run or a llama-perplexity logits file,
// and task accuracy (HellaSwag, WinoGrande, multiple choice).
package eval

import (
	"context"
	"fmt"
	"math"

	"github.com/ggufprune/ggufprune/bi"
	"github.com/ggufprune/ggufprune/gguf"
	"github.com/ggufprune/ggufprune/llamacpp"
	"github.com/ggufprune/ggufprune/prune/runner"
)

// Result is the perplexity of one model on a text, and how far its
// predictions are from a base model's when it was compared with one.
type Result struct {
	Model  string       `json:"model"`
	PPL    float64      `json:"ppl"`
	Tokens int          `json:"tokens"` // tokens scored
	Chunks int          `json:"chunks"`
	KLD    *bi.KLDStats `json:"kld,omitempty"` // against the base (Compare)
}

// Evaluate computes the perplexity of each model on the same text, exactly
// as llama.cpp's llama-perplexity does (see Perplexity).
func Evaluate(ctx context.Context, paths []string, text *runner.Text, o runner.Options) ([]Result, error) {
	var rs []Result
	for _, path := range paths {
		r, err := perplexity(ctx, path, text, o)
		if err != nil {
			return nil, err
		}
		rs = append(rs, r)
	}
	return rs, nil
}

func perplexity(ctx context.Context, path string, text *runner.Text, o runner.Options) (Result, error) {
	lm, err := runner.Load(path, nil, o)
	if err != nil {
		return Result{}, err
	}
	defer lm.Close()
	tokens, err := text.Tokens(lm, o.Chunks*o.CtxSize())
	if err != nil {
		return Result{}, err
	}
	lctx, err := runner.NewContext(lm, o, runner.Plain)
	if err != nil {
		return Result{}, err
	}
	defer lctx.Close()
	r, err := Perplexity(ctx, lctx, tokens, o.Chunks, o.ProgressFunc("perplexity", "chunks", o.CtxSize()))
	if err != nil {
		return Result{}, fmt.Errorf("%s on %s: %w", path, text.Name, err)
	}
	return Result{Model: path, PPL: r.PPL, Tokens: r.Tokens, Chunks: r.Chunks}, nil
}

// PerplexityResult is the outcome of Perplexity.
type PerplexityResult struct {
	PPL    float64 // exp(NLL)
	NLL    float64 // mean negative log-likelihood per scored token
	Tokens int     // tokens scored
	Chunks int
}

// Perplexity computes perplexity exactly as llama.cpp's llama-perplexity
// does: the text's tokens (with BOS) are cut into chunks of the context
// size, each chunk starts with BOS and a cleared KV cache, and only the
// scored window of every chunk (its second half, runner.ScoredWindow)
// counts, each token from the logits of the one before:
//
//	PPL = exp(-(1/N) Σ log softmax(z_i)[t_(i+1)])    (float64 sums, bi.LogProb)
//
// Like llama-perplexity it needs at least two chunks of text. progress,
// when not nil, is called after every chunk. It stops between chunks when
// cx is cancelled.
func Perplexity(cx context.Context, ctx *llamacpp.Context, tokens []int32, maxChunks int, progress func(done, total int)) (PerplexityResult, error) {
	nCtx := ctx.NCtx()
	if len(tokens) < 2*nCtx {
		return PerplexityResult{}, fmt.Errorf("perplexity needs at least %d tokens (2 × context %d), the text has %d: %w", 2*nCtx, nCtx, len(tokens), llamacpp.ErrShortText)
	}
	chunks, err := ctx.Model().Chunks(tokens, nCtx, maxChunks)
	if err != nil {
		return PerplexityResult{}, err
	}
	w := runner.ScoredWindow(nCtx)
	logits := make([]float32, ctx.Model().Info().NVocab)
	var nll float64
	count := 0
	for ci, chunk := range chunks {
		if err := cx.Err(); err != nil {
			return PerplexityResult{}, err
		}
		if err := runner.DecodeFrom(ctx, chunk, w.First); err != nil {
			return PerplexityResult{}, err
		}
		// Logits at position i predict the original token i+1 (not the BOS substitute).
		orig := tokens[ci*nCtx : (ci+1)*nCtx]
		for k := 0; k < w.Count; k++ {
			i := w.First + k
			if err := ctx.LogitsInto(i, logits); err != nil {
				return PerplexityResult{}, err
			}
			nll -= bi.LogProb(logits, int(orig[i+1]))
			count++
		}
		if progress != nil {
			progress(ci+1, len(chunks))
		}
	}
	return PerplexityResult{PPL: math.Exp(nll / float64(count)), NLL: nll / float64(count), Tokens: count, Chunks: len(chunks)}, nil
}

// CheckText tokenizes an evaluation text with the model's vocabulary
// alone (path; header, when not nil, its file already open) (no weights are loaded) and refuses a text too short to evaluate.
func CheckText(path string, header *gguf.Model, text *runner.Text, o runner.Options) error {
	lm, err := llamacpp.LoadModel(path, llamacpp.ModelParams{VocabOnly: true, Header: header})
	if err != nil {
		return err
	}
	defer lm.Close()
	toks, err := text.Tokens(lm, o.Chunks*o.CtxSize())
	if err != nil {
		return err
	}
	if n := o.CtxSize(); len(toks) < 2*n {
		return fmt.Errorf("%s: evaluating needs at least %d tokens (2 × context %d), the text has %d: %w", text.Name, 2*n, n, len(toks), llamacpp.ErrShortText)
	}
	return nil
}

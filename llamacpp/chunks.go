package llamacpp

import (
	"context"
	"errors"
	"fmt"
	"math"
)

// ErrShortText is wrapped by the errors of a text too short for the chunks
// asked for: give more text or smaller chunks.
var ErrShortText = errors.New("the text is too short")

// Chunks cuts tokens into whole chunks of nCtx tokens, at most maxChunks of
// them (all when maxChunks <= 0), as llama-perplexity does: when the
// tokenizer adds BOS, the first token of every chunk is replaced by BOS.
// The chunks are copies; tokens is not changed.
func (m *Model) Chunks(tokens []int32, nCtx, maxChunks int) ([][]int32, error) {
	n := len(tokens) / nCtx
	if n == 0 {
		return nil, fmt.Errorf("%d tokens are fewer than one chunk of %d: %w", len(tokens), nCtx, ErrShortText)
	}
	if maxChunks > 0 && maxChunks < n {
		n = maxChunks
	}
	chunks := make([][]int32, n)
	for i := range chunks {
		chunks[i] = append([]int32(nil), tokens[i*nCtx:(i+1)*nCtx]...)
		if info := m.Info(); info.AddBOS {
			chunks[i][0] = info.BOS
		}
	}
	return chunks, nil
}

// PerplexityResult is the outcome of Perplexity.
type PerplexityResult struct {
	PPL    float64 // exp(NLL)
	NLL    float64 // mean negative log-likelihood per scored token
	Tokens int     // tokens scored
	Chunks int
}

// Perplexity computes perplexity exactly as llama.cpp's llama-perplexity
// does: the text's tokens (with BOS, see Tokenize) are cut into chunks of the
// context size, each chunk starts with BOS and a cleared KV cache, and only
// the second half of every chunk is scored, each token from the logits of
// the one before. Like llama-perplexity it needs at least two chunks of text.
// progress, when not nil, is called after every chunk. It stops between
// chunks when cx is cancelled.
func Perplexity(cx context.Context, ctx *Context, tokens []int32, maxChunks int, progress func(done, total int)) (PerplexityResult, error) {
	nCtx := ctx.NCtx()
	if len(tokens) < 2*nCtx {
		return PerplexityResult{}, fmt.Errorf("perplexity needs at least %d tokens (2 × context %d), the text has %d: %w", 2*nCtx, nCtx, len(tokens), ErrShortText)
	}
	chunks, err := ctx.Model().Chunks(tokens, nCtx, maxChunks)
	if err != nil {
		return PerplexityResult{}, err
	}
	first := nCtx / 2
	var nll float64
	count := 0
	for ci, chunk := range chunks {
		if err := cx.Err(); err != nil {
			return PerplexityResult{}, err
		}
		if err := ctx.ClearMemory(); err != nil {
			return PerplexityResult{}, err
		}
		if err := ctx.Decode(chunk, 0, first); err != nil {
			return PerplexityResult{}, err
		}
		// Logits at position i predict the original token i+1 (not the BOS substitute).
		orig := tokens[ci*nCtx : (ci+1)*nCtx]
		for i := first; i < nCtx-1; i++ {
			logits, err := ctx.logitsView(i)
			if err != nil {
				return PerplexityResult{}, err
			}
			nll -= logSoftmax(logits, orig[i+1])
			count++
		}
		if progress != nil {
			progress(ci+1, len(chunks))
		}
	}
	return PerplexityResult{PPL: math.Exp(nll / float64(count)), NLL: nll / float64(count), Tokens: count, Chunks: len(chunks)}, nil
}

// logSoftmax is log p(tok) from logits, computed as llama-perplexity does
// (float max, double sum of float exponentials).
func logSoftmax(logits []float32, tok int32) float64 {
	maxLogit := logits[0]
	for _, l := range logits[1:] {
		maxLogit = max(maxLogit, l)
	}
	var sum float64
	for _, l := range logits {
		sum += float64(float32(math.Exp(float64(l - maxLogit))))
	}
	return float64(logits[tok]-maxLogit) - math.Log(sum)
}

// Scan decodes each chunk from a cleared KV cache with logits for every
// token, so that the capture functions set on ctx see every token of every
// chunk. progress, when not nil, is called after every chunk. It stops
// between chunks when cx is cancelled.
func Scan(cx context.Context, ctx *Context, chunks [][]int32, progress func(done, total int)) error {
	for i, chunk := range chunks {
		if err := cx.Err(); err != nil {
			return err
		}
		if err := ctx.ClearMemory(); err != nil {
			return err
		}
		if err := ctx.Decode(chunk, 0, 0); err != nil {
			return err
		}
		if progress != nil {
			progress(i+1, len(chunks))
		}
	}
	return nil
}

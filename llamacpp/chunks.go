package llamacpp

import (
	"context"
	"errors"
	"fmt"
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

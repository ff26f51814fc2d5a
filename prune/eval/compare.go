package eval

import (
	"context"
	"fmt"
	"math"

	"github.com/ggufprune/ggufprune/bi"
	"github.com/ggufprune/ggufprune/internal/atomicfile"
	"github.com/ggufprune/ggufprune/llamacpp"
	"github.com/ggufprune/ggufprune/prune/runner"
)

// Base is what Compare measures models against: the original model, run
// alongside them, or the log-probabilities llama.cpp's llama-perplexity
// saved of it (--kl-divergence-base).
type Base struct {
	Model     string // the base model to run
	LogitsIn  string // or a llama-perplexity --kl-divergence-base file to read instead
	LogitsOut string // with Model: also write its log-probabilities in that format
	Overwrite bool   // replace LogitsOut if it exists
}

func (b Base) name() string {
	if b.Model != "" {
		return b.Model
	}
	return b.LogitsIn
}

// Compare runs the base and every model on the same chunks of the text in
// one pass, as llama-perplexity --kl-divergence does (the text is tokenized
// by the base model, or the tokens come from the logits file; each chunk
// starts from an empty cache with BOS; the second half of every chunk is
// scored), and returns the base's perplexity and, for each model, its
// perplexity and its divergence from the base (bi.KLDStats). Memory holds
// one chunk of base log-probabilities, whatever the length of the text.
//
// The base's log-probabilities are exact when the base model runs here;
// read from a logits file they carry its 16-bit rounding and leave out what
// lies more than 16 nats below the most likely token, as llama-perplexity
// does. text is not used with a logits file.
func Compare(ctx context.Context, base Base, models []string, text *runner.Text, o runner.Options) ([]Result, error) {
	if (base.Model == "") == (base.LogitsIn == "") {
		return nil, fmt.Errorf("compare: give a base model or a base logits file")
	}
	if base.LogitsOut != "" {
		if base.Model == "" {
			return nil, fmt.Errorf("compare: a logits file is written from a base model")
		}
		if err := atomicfile.CheckOutput(base.LogitsOut, base.Overwrite); err != nil {
			return nil, err
		}
	}
	var lr *logitsReader
	if base.LogitsIn != "" {
		var err error
		if lr, err = openLogits(base.LogitsIn); err != nil {
			return nil, err
		}
		defer lr.Close()
		o.Ctx = lr.nCtx
	}
	nCtx := o.CtxSize()
	var lms []*llamacpp.Model
	defer func() {
		for _, lm := range lms {
			lm.Close()
		}
	}()
	paths := models
	if base.Model != "" {
		paths = append([]string{base.Model}, models...)
	}
	for _, p := range paths {
		lm, err := runner.Load(p, nil, o)
		if err != nil {
			return nil, err
		}
		lms = append(lms, lm)
	}
	first := lms[0]
	nVocab := first.Info().NVocab
	if lr != nil && lr.nVocab != nVocab {
		return nil, fmt.Errorf("%s holds a vocabulary of %d tokens, %s has %d: they are not the same model family", lr.name, lr.nVocab, paths[0], nVocab)
	}
	for i, lm := range lms {
		if n := lm.Info().NVocab; n != nVocab {
			return nil, fmt.Errorf("%s has a vocabulary of %d tokens, %s of %d: models compared must share one", paths[i], n, paths[0], nVocab)
		}
	}

	// The tokens: from the base model's tokenizer, or the file.
	var tokens []int32
	if lr != nil {
		tokens = lr.tokens
	} else {
		var err error
		if text == nil {
			return nil, fmt.Errorf("compare: no text")
		}
		if tokens, err = text.Tokens(first, o.Chunks*nCtx); err != nil {
			return nil, err
		}
		if len(tokens) < 2*nCtx {
			return nil, fmt.Errorf("%s: comparing needs at least %d tokens (2 × context %d), the text has %d: %w", text.Name, 2*nCtx, nCtx, len(tokens), llamacpp.ErrShortText)
		}
	}
	chunks, err := first.Chunks(tokens, nCtx, o.Chunks)
	if err != nil {
		return nil, err
	}

	var lw *logitsWriter
	var pending *atomicfile.Pending
	if base.LogitsOut != "" {
		if pending, err = atomicfile.Create(base.LogitsOut); err != nil {
			return nil, err
		}
		defer pending.Abort()
		if lw, err = newLogitsWriter(pending.File(), nCtx, nVocab, tokens[:len(chunks)*nCtx]); err != nil {
			return nil, err
		}
	}

	ctxs := make([]*llamacpp.Context, len(lms))
	for i, lm := range lms {
		mo := o
		if i == 0 && base.Model != "" {
			mo.Skip, mo.SkipExperts = nil, nil // the base runs whole
		}
		if ctxs[i], err = runner.NewContext(lm, mo, runner.Plain); err != nil {
			return nil, err
		}
		defer ctxs[i].Close()
	}
	w := runner.ScoredWindow(nCtx)
	half, scored := w.First, w.Count
	baseLP := make([][]float32, scored)
	for k := range baseLP {
		baseLP[k] = make([]float32, nVocab)
	}
	logits := make([]float32, nVocab)
	floor := float32(math.Inf(-1))
	if lr != nil {
		floor = logitsFloor
	}
	accs := make([]bi.KLDAccumulator, len(models))
	var baseNLL float64
	progress := o.ProgressFunc("comparing", "chunks", nCtx)
	for ci, chunk := range chunks {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		orig := tokens[ci*nCtx : (ci+1)*nCtx]
		models := ctxs
		if lr != nil {
			if err := lr.chunk(baseLP); err != nil {
				return nil, err
			}
		} else {
			bc := ctxs[0]
			models = ctxs[1:]
			if err := runner.DecodeFrom(bc, chunk, half); err != nil {
				return nil, err
			}
			for k := range baseLP {
				if err := bc.LogitsInto(half+k, logits); err != nil {
					return nil, err
				}
				if lw != nil {
					if err := lw.record(logits); err != nil {
						return nil, err
					}
				}
				bi.LogSoftmax(baseLP[k], logits)
			}
		}
		for k := range baseLP {
			baseNLL -= float64(baseLP[k][orig[half+k+1]])
		}
		for m, mc := range models {
			if err := runner.DecodeFrom(mc, chunk, half); err != nil {
				return nil, err
			}
			for k := range baseLP {
				if err := mc.LogitsInto(half+k, logits); err != nil {
					return nil, err
				}
				accs[m].Observe(baseLP[k], floor, logits, int(orig[half+k+1]))
			}
		}
		if progress != nil {
			progress(ci+1, len(chunks))
		}
	}
	if lw != nil {
		if err := lw.flush(); err != nil {
			return nil, err
		}
		if err := pending.Commit(); err != nil {
			return nil, err
		}
	}
	n := len(chunks) * scored
	out := []Result{{Model: base.name(), PPL: math.Exp(baseNLL / float64(n)), Tokens: n, Chunks: len(chunks)}}
	for m, path := range models {
		st := accs[m].Stats()
		out = append(out, Result{Model: path, PPL: st.PPL, Tokens: n, Chunks: len(chunks), KLD: &st})
	}
	return out, nil
}

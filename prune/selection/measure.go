package selection

import (
	"context"
	"fmt"
	"math"
	"time"

	"github.com/ggufprune/ggufprune/bi"
	"github.com/ggufprune/ggufprune/gguf"
	"github.com/ggufprune/ggufprune/llamacpp"
	"github.com/ggufprune/ggufprune/prune/heal"
	"github.com/ggufprune/ggufprune/prune/runner"
)

// baseCacheLimit bounds the memory of the whole model's log-probabilities
// kept for the KL-divergence loss; past it they are computed again in every
// pass (which then costs twice as much).
const baseCacheLimit = 512 << 20

// Measurer runs a model on the calibration chunks with blocks skipped, and
// measures what the methods rank by: Block Influence, the angular distance
// of runs, the calibration loss. It counts what it costs.
type Measurer struct {
	lm     *llamacpp.Model
	lctx   *llamacpp.Context // captures and skips
	base   *llamacpp.Context // the whole model, for the KL-divergence loss without a cache
	chunks [][]int32
	orig   [][]int32 // the chunks' tokens before BOS substitution (targets)
	o      runner.Options
	cache  [][][]float32 // per chunk, per scored position: the whole model's log-probabilities
	cost   runner.Cost
	start  time.Time
	logits []float32
	header *gguf.Model
	fitter *heal.Fitter // made by the first HealedLoss
	only   func(ci int) bool
	// HealAfter is how many kept blocks after each run HealedLoss heals
	// with maps too (heal.Options.After), and HealForm what the maps are
	// fitted on (heal.Options.Form).
	HealAfter int
	HealForm  heal.Form
}

// NewMeasurer loads the model (path; header, when not nil, its file already
// open) and cuts the calibration into chunks.
func NewMeasurer(ctx context.Context, path string, header *gguf.Model, cal runner.Calibration, o runner.Options) (*Measurer, error) {
	lm, err := runner.Load(path, header, o)
	if err != nil {
		return nil, err
	}
	s := &Measurer{lm: lm, o: o, start: time.Now(), header: header}
	if s.chunks, s.orig, err = runner.CalibrationChunks(ctx, lm, cal, o); err != nil {
		s.Close()
		return nil, err
	}
	if s.lctx, err = runner.NewContext(lm, runner.Options{Ctx: o.Ctx, Threads: o.Threads}, runner.Capture); err != nil {
		s.Close()
		return nil, err
	}
	n := lm.Info().NVocab
	s.logits = make([]float32, n)
	return s, nil
}

// Close frees the model and its contexts.
func (s *Measurer) Close() {
	if s.lctx != nil {
		s.lctx.Close()
	}
	if s.base != nil {
		s.base.Close()
	}
	if s.fitter != nil {
		s.fitter.Close()
	}
	s.lm.Close()
}

// Blocks is the number of blocks a decode runs: the blocks measured.
func (s *Measurer) Blocks() int { return s.lm.Info().RunBlocks() }

// Chunks is the number of calibration chunks, and Tokens their tokens.
func (s *Measurer) Chunks() int { return len(s.chunks) }

// Tokens is the number of calibration tokens of one pass.
func (s *Measurer) Tokens() int64 {
	var n int64
	for _, ch := range s.chunks {
		n += int64(len(ch))
	}
	return n
}

// Cost is what the measurements so far took.
func (s *Measurer) Cost() runner.Cost {
	c := s.cost
	c.Seconds = time.Since(s.start).Seconds()
	return c
}

// pass decodes every chunk with skip skipped, logits from position first
// on, calling each(chunk) after each decode.
func (s *Measurer) pass(ctx context.Context, skip []int, first int, what string, each func(ci int) error) error {
	if err := s.lctx.SetSkip(skip); err != nil {
		return err
	}
	progress := s.o.ProgressFunc(what, "chunks", s.o.CtxSize())
	for ci, ch := range s.chunks {
		if err := ctx.Err(); err != nil {
			return err
		}
		if s.only != nil && !s.only(ci) {
			continue
		}
		if err := runner.DecodeFrom(s.lctx, ch, first); err != nil {
			return err
		}
		if err := each(ci); err != nil {
			return err
		}
		s.cost.Tokens += int64(len(ch))
		if progress != nil {
			progress(ci+1, len(s.chunks))
		}
	}
	s.cost.Passes++
	return nil
}

// BI scores every block with skip skipped (skipped blocks score 0).
func (s *Measurer) BI(ctx context.Context, skip []int) ([]bi.BlockScore, error) {
	acc := bi.NewAccumulator(s.Blocks())
	if err := s.hiddenPass(ctx, skip, "scoring", acc.Observe, acc.Err); err != nil {
		return nil, err
	}
	return acc.Scores(), nil
}

// RunDistances measures the angular distance of every run of n blocks
// (Gromov et al.): element l is that of blocks l … l+n-1.
func (s *Measurer) RunDistances(ctx context.Context, n int) ([]float64, error) {
	acc := bi.NewRunAccumulator(s.Blocks(), n)
	if err := s.hiddenPass(ctx, nil, "measuring runs", acc.Observe, acc.Err); err != nil {
		return nil, err
	}
	return acc.Distances(), nil
}

// hiddenPass hands every block boundary's hidden states of one pass (with
// skip skipped, without the output head) to observe; errf reports what the
// observer found wrong.
func (s *Measurer) hiddenPass(ctx context.Context, skip []int, what string, observe llamacpp.HiddenFunc, errf func() error) error {
	if err := s.lctx.CaptureHidden(observe); err != nil {
		return err
	}
	defer s.lctx.CaptureHidden(nil)
	if err := s.lctx.SetNoHead(true); err != nil {
		return err
	}
	defer s.lctx.SetNoHead(false)
	if err := s.pass(ctx, skip, 0, what, func(int) error { return errf() }); err != nil {
		return err
	}
	return errf()
}

// Loss is the calibration loss of the model without skip, on the scored
// positions of every chunk (its second half, as perplexity scores): the
// mean NLL of the next token, or the mean KL divergence from the whole
// model's next-token distribution.
func (s *Measurer) Loss(ctx context.Context, skip []int, kind Loss) (float64, error) {
	if kind == KLD {
		if err := s.prepareBase(ctx); err != nil {
			return 0, err
		}
	}
	w := runner.ScoredWindow(s.o.CtxSize())
	half := w.First
	var sum float64
	var count int
	var acc bi.KLDAccumulator
	err := s.pass(ctx, skip, half, "measuring", func(ci int) error {
		var base [][]float32
		if kind == KLD {
			var err error
			if base, err = s.baseLogProbs(ci); err != nil {
				return err
			}
		}
		for k := 0; k < w.Count; k++ {
			if err := s.lctx.LogitsInto(half+k, s.logits); err != nil {
				return err
			}
			next := s.orig[ci][half+k+1]
			if kind == KLD {
				acc.Observe(base[k], float32(math.Inf(-1)), s.logits, int(next))
				continue
			}
			sum -= bi.LogProb(s.logits, int(next))
			count++
		}
		return nil
	})
	if err != nil {
		return 0, err
	}
	if kind == KLD {
		return acc.Stats().KLD, nil
	}
	return sum / float64(count), nil
}

// HealedLoss is the calibration loss of the model without the removed
// blocks, healed as prune --heal heals them (heal.Fitter.Fit, the maps
// applied at run time), on chunks the maps were not fitted on, and the
// healing's residuals by run.
func (s *Measurer) HealedLoss(ctx context.Context, removed []int, kind Loss) (float64, *heal.Healing, error) {
	if s.header == nil {
		return 0, nil, fmt.Errorf("healing needs the model's header")
	}
	if s.fitter == nil {
		f, err := heal.NewFitter(s.lm, s.header, s.chunks, s.o)
		if err != nil {
			return 0, nil, err
		}
		s.fitter = f
	}
	s.fitter.Form = s.HealForm
	// Fitted on three chunks of every four and measured on the fourth: a
	// loss measured on the chunks the maps were fitted on favours the
	// removals whose maps fit the calibration best, not those that heal
	// text it did not see (with 16 chunks of story16, the first choice was
	// then block 1, which healed worse on unseen text than BI's block 2).
	// With fewer than 4 chunks, every chunk serves both.
	if len(s.chunks) >= 4 {
		s.fitter.Only = func(ci int) bool { return ci%4 != 3 }
	}
	h, err := s.fitter.Fit(ctx, removed, 0, s.HealAfter)
	if err != nil {
		return 0, nil, err
	}
	if kind == KLD {
		// The whole model's log-probabilities of every chunk, before the
		// pass over some of them.
		if err := s.prepareBase(ctx); err != nil {
			return 0, nil, err
		}
	}
	if len(s.chunks) >= 4 {
		s.only = func(ci int) bool { return ci%4 == 3 }
		defer func() { s.only = nil }()
	}
	s.cost.Passes += h.Cost.Passes
	s.cost.Tokens += h.Cost.Tokens
	names, fn := h.Watch()
	if err := s.lctx.Watch(names, fn); err != nil {
		return 0, nil, err
	}
	defer s.lctx.Watch(nil, nil)
	l, err := s.Loss(ctx, removed, kind)
	return l, h, err
}

// prepareBase keeps the whole model's log-probabilities of every scored
// position when they fit in baseCacheLimit; else it makes a second context
// that computes them again in every pass.
func (s *Measurer) prepareBase(ctx context.Context) error {
	if s.cache != nil || s.base != nil {
		return nil
	}
	w := runner.ScoredWindow(s.o.CtxSize())
	vocab := s.lm.Info().NVocab
	if int64(len(s.chunks))*int64(w.Count)*int64(vocab)*4 > baseCacheLimit {
		var err error
		s.base, err = runner.NewContext(s.lm, runner.Options{Ctx: s.o.Ctx, Threads: s.o.Threads}, runner.Plain)
		return err
	}
	cache := make([][][]float32, len(s.chunks))
	err := s.pass(ctx, nil, w.First, "measuring the whole model", func(ci int) error {
		cache[ci] = make([][]float32, w.Count)
		for k := range cache[ci] {
			if err := s.lctx.LogitsInto(w.First+k, s.logits); err != nil {
				return err
			}
			cache[ci][k] = make([]float32, vocab)
			bi.LogSoftmax(cache[ci][k], s.logits)
		}
		return nil
	})
	s.cache = cache
	return err
}

// baseLogProbs returns the whole model's log-probabilities of chunk ci.
func (s *Measurer) baseLogProbs(ci int) ([][]float32, error) {
	if s.cache != nil {
		return s.cache[ci], nil
	}
	n := s.o.CtxSize()
	w := runner.ScoredWindow(n)
	if err := runner.DecodeFrom(s.base, s.chunks[ci], w.First); err != nil {
		return nil, err
	}
	s.cost.Tokens += int64(n)
	out := make([][]float32, w.Count)
	for k := range out {
		if err := s.base.LogitsInto(w.First+k, s.logits); err != nil {
			return nil, err
		}
		out[k] = make([]float32, len(s.logits))
		bi.LogSoftmax(out[k], s.logits)
	}
	return out, nil
}

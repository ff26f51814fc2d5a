package prune

import (
	"context"
	"errors"
	"fmt"
	"math"
	"slices"
	"time"

	"github.com/ggufprune/ggufprune/bi"
	"github.com/ggufprune/ggufprune/gguf"
	"github.com/ggufprune/ggufprune/llamacpp"
)

// Method is a way of choosing the blocks to remove.
type Method string

// The methods. All but bi and angular measure "the model without blocks S"
// on the calibration text by skipping S at run time (no file is written).
const (
	// MethodBI is ShortGPT: the blocks of lowest Block Influence, in one pass.
	MethodBI Method = "bi"
	// MethodAngular is Gromov et al.: the run of k consecutive blocks whose
	// input and output hidden states are closest in angular distance.
	MethodAngular Method = "angular"
	// MethodBIIterative removes the lowest-BI block, scores the rest again
	// with it skipped, and repeats (k passes).
	MethodBIIterative Method = "bi-iterative"
	// MethodPPL measures the calibration loss (mean NLL) with each block
	// skipped alone and removes the k cheapest (one pass per block).
	MethodPPL Method = "ppl"
	// MethodGreedy is SLEB: one block at a time, each time the one whose
	// removal costs the least calibration loss given those already removed.
	MethodGreedy Method = "greedy"
	// MethodKLD is MethodPPL with the loss the KL divergence from the whole
	// model's next-token distributions (it needs no labels).
	MethodKLD Method = "kld"
	// MethodKLDGreedy is MethodGreedy with the KL-divergence loss.
	MethodKLDGreedy Method = "kld-greedy"
)

// Methods lists every method.
var Methods = []Method{MethodBI, MethodAngular, MethodBIIterative, MethodPPL, MethodGreedy, MethodKLD, MethodKLDGreedy}

// ParseMethod reads a method's name.
func ParseMethod(s string) (Method, error) {
	for _, m := range Methods {
		if string(m) == s {
			return m, nil
		}
	}
	return "", fmt.Errorf("unknown method %q (one of %v)", s, Methods)
}

// lossKind is what a loss method measures.
func (m Method) lossKind() lossKind {
	switch m {
	case MethodKLD, MethodKLDGreedy:
		return lossKLD
	}
	return lossNLL
}

// Cost is what a search took.
type Cost struct {
	Passes  int     `json:"passes"`  // decodes of the whole calibration text
	Tokens  int64   `json:"tokens"`  // tokens decoded
	Seconds float64 `json:"seconds"` // wall time
}

// Step is one block chosen by an iterative method, with the value it was
// chosen by (BI, or the loss of the model with the blocks so far removed).
type Step struct {
	Block int     `json:"block"`
	Value float64 `json:"value"`
}

// Search is what a method chose, and at what cost.
type Search struct {
	Method  Method  `json:"method"`
	Removed []int   `json:"removed"`
	Steps   []Step  `json:"steps,omitempty"`
	Cost    Cost    `json:"cost"`
	Loss    float64 `json:"loss,omitempty"` // calibration loss of the model without Removed (loss methods)
}

type lossKind int

const (
	lossNLL lossKind = iota
	lossKLD
)

// baseCacheLimit bounds the memory of the whole model's log-probabilities
// kept for the KL-divergence loss; past it they are computed again in every
// pass (which then costs twice as much).
const baseCacheLimit = 512 << 20

// searcher runs the model on the calibration chunks with blocks skipped.
type searcher struct {
	m      *Model
	lm     *llamacpp.Model
	lctx   *llamacpp.Context // captures and skips
	base   *llamacpp.Context // the whole model, for the KL-divergence loss without a cache
	chunks [][]int32
	orig   [][]int32 // the chunks' tokens before BOS substitution (targets)
	o      RunOptions
	cache  [][][]float32 // per chunk, per scored position: the whole model's log-probabilities
	cost   Cost
	start  time.Time
	logits []float32
}

func (m *Model) newSearcher(ctx context.Context, cal Calibration, o RunOptions) (*searcher, error) {
	lm, err := m.load(o)
	if err != nil {
		return nil, err
	}
	s := &searcher{m: m, lm: lm, o: o, start: time.Now()}
	if s.chunks, s.orig, err = calibrationChunks(ctx, lm, cal, o); err != nil {
		s.Close()
		return nil, err
	}
	if s.lctx, err = lm.NewContext(llamacpp.ContextParams{NCtx: o.ctx(), Threads: o.Threads, Capture: true}); err != nil {
		s.Close()
		return nil, err
	}
	n := lm.Info().NVocab
	s.logits = make([]float32, n)
	return s, nil
}

func (s *searcher) Close() {
	if s.lctx != nil {
		s.lctx.Close()
	}
	if s.base != nil {
		s.base.Close()
	}
	s.lm.Close()
}

func (s *searcher) runBlocks() int { return s.lm.Info().RunBlocks() }

func (s *searcher) finish() Cost {
	c := s.cost
	c.Seconds = time.Since(s.start).Seconds()
	return c
}

// pass decodes every chunk with skip skipped, logits from position first
// on, calling each(chunk) after each decode.
func (s *searcher) pass(ctx context.Context, skip []int, first int, what string, each func(ci int) error) error {
	if err := s.lctx.SetSkip(skip); err != nil {
		return err
	}
	progress := s.o.progress(what, "chunks", s.o.ctx())
	for ci, ch := range s.chunks {
		if err := ctx.Err(); err != nil {
			return err
		}
		if err := decodeFrom(s.lctx, ch, first); err != nil {
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

// biScores scores every block with skip skipped (skipped blocks score 0).
func (s *searcher) biScores(ctx context.Context, skip []int) ([]bi.BlockScore, error) {
	acc := bi.NewAccumulator(s.runBlocks())
	if err := s.hiddenPass(ctx, skip, "scoring", acc.Observe, acc.Err); err != nil {
		return nil, err
	}
	return acc.Scores(), nil
}

// runDistances measures every run of n blocks (Gromov et al.).
func (s *searcher) runDistances(ctx context.Context, n int) ([]float64, error) {
	acc := bi.NewRunAccumulator(s.runBlocks(), n)
	if err := s.hiddenPass(ctx, nil, "measuring runs", acc.Observe, acc.Err); err != nil {
		return nil, err
	}
	return acc.Distances(), nil
}

// hiddenPass hands every block boundary's hidden states of one pass (with
// skip skipped, without the output head) to observe; errf reports what the
// observer found wrong.
func (s *searcher) hiddenPass(ctx context.Context, skip []int, what string, observe llamacpp.HiddenFunc, errf func() error) error {
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

// loss is the calibration loss of the model without skip, on the scored
// positions of every chunk (its second half, as perplexity scores): the
// mean NLL of the next token, or the mean KL divergence from the whole
// model's next-token distribution.
func (s *searcher) loss(ctx context.Context, skip []int, kind lossKind) (float64, error) {
	if kind == lossKLD {
		if err := s.prepareBase(ctx); err != nil {
			return 0, err
		}
	}
	n := s.o.ctx()
	half := n / 2
	var sum float64
	var count int
	var acc bi.KLDAccumulator
	err := s.pass(ctx, skip, half, "measuring", func(ci int) error {
		var base [][]float32
		if kind == lossKLD {
			var err error
			if base, err = s.baseLogProbs(ci); err != nil {
				return err
			}
		}
		for k := 0; k < n-1-half; k++ {
			if err := s.lctx.LogitsInto(half+k, s.logits); err != nil {
				return err
			}
			next := s.orig[ci][half+k+1]
			if kind == lossKLD {
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
	if kind == lossKLD {
		return acc.Stats().KLD, nil
	}
	return sum / float64(count), nil
}

// prepareBase keeps the whole model's log-probabilities of every scored
// position when they fit in baseCacheLimit; else it makes a second context
// that computes them again in every pass.
func (s *searcher) prepareBase(ctx context.Context) error {
	if s.cache != nil || s.base != nil {
		return nil
	}
	n := s.o.ctx()
	scored := n - 1 - n/2
	vocab := s.lm.Info().NVocab
	if int64(len(s.chunks))*int64(scored)*int64(vocab)*4 > baseCacheLimit {
		var err error
		s.base, err = s.lm.NewContext(llamacpp.ContextParams{NCtx: n, Threads: s.o.Threads})
		return err
	}
	cache := make([][][]float32, len(s.chunks))
	err := s.pass(ctx, nil, n/2, "measuring the whole model", func(ci int) error {
		cache[ci] = make([][]float32, scored)
		for k := range cache[ci] {
			if err := s.lctx.LogitsInto(n/2+k, s.logits); err != nil {
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
func (s *searcher) baseLogProbs(ci int) ([][]float32, error) {
	if s.cache != nil {
		return s.cache[ci], nil
	}
	n := s.o.ctx()
	if err := decodeFrom(s.base, s.chunks[ci], n/2); err != nil {
		return nil, err
	}
	s.cost.Tokens += int64(n)
	out := make([][]float32, n-1-n/2)
	for k := range out {
		if err := s.base.LogitsInto(n/2+k, s.logits); err != nil {
			return nil, err
		}
		out[k] = make([]float32, len(s.logits))
		bi.LogSoftmax(out[k], s.logits)
	}
	return out, nil
}

// Choose chooses blocks to remove with a method on the calibration: until
// sel.Count blocks are chosen, or until the output would be at most
// sel.TargetSize bytes (keepSplit says how it is written). Blocks
// sel.Protect protects are never chosen.
func (m *Model) Choose(ctx context.Context, method Method, sel Selection, keepSplit bool, cal Calibration, o RunOptions) (*Search, error) {
	s, err := m.newSearcher(ctx, cal, o)
	if err != nil {
		return nil, err
	}
	defer s.Close()
	run := s.runBlocks()
	prot := make([]bool, run)
	for i := range prot {
		prot[i] = i < sel.Protect.First || i >= run-sel.Protect.Last
	}
	var candidates []int
	for b := 0; b < run; b++ {
		if !prot[b] {
			candidates = append(candidates, b)
		}
	}
	if len(candidates) == 0 {
		return nil, fmt.Errorf("no block may be removed (the first %d and last %d are protected)", sel.Protect.First, sel.Protect.Last)
	}
	// valid says whether llama.cpp would run the model without these
	// blocks (see trialPlan): choices that fail are passed over.
	valid := func(removed []int) bool {
		_, err := m.trialPlan(slices.Sorted(slices.Values(removed)))
		return !errors.Is(err, bi.ErrInvalidRemoval)
	}
	// done says whether the blocks chosen so far are enough.
	size := func(removed []int) (int64, error) {
		plan, err := gguf.PlanRemoval(m.GGUF, removed, true)
		if err != nil {
			return 0, err
		}
		return plan.Size(keepSplit)
	}
	done := func(removed []int) (bool, error) {
		if sel.Count > 0 {
			return len(removed) >= sel.Count, nil
		}
		sz, err := size(slices.Sorted(slices.Values(removed)))
		return sz <= sel.TargetSize, err
	}
	if sel.Count > len(candidates) {
		return nil, fmt.Errorf("cannot remove %d of %d blocks: only %d are not protected (first %d, last %d)", sel.Count, run, len(candidates), sel.Protect.First, sel.Protect.Last)
	}
	res := &Search{Method: method}
	switch method {
	case MethodBI, MethodPPL, MethodKLD:
		// One ranking, then the lowest first.
		scores := make([]bi.BlockScore, run)
		key := bi.ByLoss
		if method == MethodBI {
			if scores, err = s.biScores(ctx, nil); err != nil {
				return nil, err
			}
			key = bi.ByBI
		} else {
			for i := range scores {
				scores[i].Index = i
			}
			for _, c := range candidates {
				if scores[c].Loss, err = s.loss(ctx, []int{c}, method.lossKind()); err != nil {
					return nil, err
				}
			}
		}
		for _, b := range bi.CandidatesBy(scores, sel.Protect, key) {
			if !valid(append(slices.Clone(res.Removed), b)) {
				continue
			}
			res.Removed = append(res.Removed, b)
			res.Steps = append(res.Steps, Step{b, key(scores[b])})
			if ok, err := done(res.Removed); err != nil || ok {
				break
			}
		}
	case MethodAngular:
		for n := 1; n <= len(candidates); n++ {
			if sel.Count > 0 && n != sel.Count {
				continue
			}
			d, err := s.runDistances(ctx, n)
			if err != nil {
				return nil, err
			}
			best := -1
			for l := 0; l+n <= run; l++ {
				if slices.ContainsFunc(prot[l:l+n], func(p bool) bool { return p }) || !valid(blockRange(l, n)) {
					continue
				}
				if best < 0 || d[l] < d[best] {
					best = l
				}
			}
			if best < 0 {
				continue
			}
			res.Removed = blockRange(best, n)
			res.Steps = []Step{{best, d[best]}}
			if ok, err := done(res.Removed); err != nil || ok {
				break
			}
		}
	case MethodBIIterative, MethodGreedy, MethodKLDGreedy:
		for {
			var best Step
			found := false
			if method == MethodBIIterative {
				scores, err := s.biScores(ctx, res.Removed)
				if err != nil {
					return nil, err
				}
				for _, c := range candidates {
					if !slices.Contains(res.Removed, c) && (!found || scores[c].BI < best.Value) && valid(append(slices.Clone(res.Removed), c)) {
						best, found = Step{c, scores[c].BI}, true
					}
				}
			} else {
				for _, c := range candidates {
					if slices.Contains(res.Removed, c) || !valid(append(slices.Clone(res.Removed), c)) {
						continue
					}
					l, err := s.loss(ctx, append(slices.Clone(res.Removed), c), method.lossKind())
					if err != nil {
						return nil, err
					}
					if !found || l < best.Value {
						best, found = Step{c, l}, true
					}
				}
			}
			if !found {
				break
			}
			res.Removed = append(res.Removed, best.Block)
			res.Steps = append(res.Steps, best)
			if ok, err := done(res.Removed); err != nil {
				return nil, err
			} else if ok {
				break
			}
		}
	default:
		return nil, fmt.Errorf("unknown method %q", method)
	}
	if ok, err := done(res.Removed); err != nil {
		return nil, err
	} else if !ok {
		if sel.Count > 0 {
			return nil, fmt.Errorf("%s found only %d blocks to remove", method, len(res.Removed))
		}
		smallest, _ := size(slices.Sorted(slices.Values(res.Removed)))
		return nil, &SizeError{Target: sel.TargetSize, Smallest: smallest}
	}
	slices.Sort(res.Removed)
	if method.isLoss() {
		if res.Loss, err = s.loss(ctx, res.Removed, method.lossKind()); err != nil {
			return nil, err
		}
	}
	res.Cost = s.finish()
	return res, nil
}

// blockRange is the n blocks from first on.
func blockRange(first, n int) []int {
	out := make([]int, n)
	for i := range out {
		out[i] = first + i
	}
	return out
}

func (m Method) isLoss() bool {
	switch m {
	case MethodPPL, MethodGreedy, MethodKLD, MethodKLDGreedy:
		return true
	}
	return false
}

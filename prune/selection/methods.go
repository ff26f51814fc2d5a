package selection

import (
	"cmp"
	"context"
	"fmt"
	"slices"
	"strings"
)

// Method is a way of choosing the blocks to remove.
type Method struct {
	Name string
	Help string // what it does, in one line (--help, the docs)
	Cost string // how many passes over the calibration text it takes
	// Loss is the loss it measures with blocks skipped at run time (no
	// file is written); NoLoss for methods that read hidden states. NLL
	// needs the text's next tokens (labels), KLD only the whole model.
	Loss Loss
	// Key, when set, ranks blocks by scores measured once per block: such
	// scores are what `score --metric NAME` reports and what
	// `prune --scores` reads back.
	Key Key
	// Choose chooses blocks through the engine.
	Choose func(ctx context.Context, e *Engine) error
}

// Loss is what a loss method measures.
type Loss int

const (
	NoLoss Loss = iota
	NLL         // mean negative log-likelihood of the next token
	KLD         // mean KL divergence from the whole model's next-token distribution
)

var registry []*Method

// Register adds a method (archive/zip's RegisterCompressor style); it
// panics on a name already taken. It returns m, so that a method can be
// named by its variable.
func Register(m *Method) *Method {
	if _, ok := Lookup(m.Name); ok {
		panic("selection: method " + m.Name + " registered twice")
	}
	registry = append(registry, m)
	return m
}

// Methods lists every method, in the order registered.
func Methods() []*Method { return slices.Clone(registry) }

// Names lists the methods' names.
func Names() []string {
	var out []string
	for _, m := range registry {
		out = append(out, m.Name)
	}
	return out
}

// ScoreNames lists the names of the methods whose scores are measured
// once per block (score --metric, prune --scores).
func ScoreNames() []string {
	var out []string
	for _, m := range registry {
		if m.Key != nil {
			out = append(out, m.Name)
		}
	}
	return out
}

// Lookup finds a method by name.
func Lookup(name string) (*Method, bool) {
	for _, m := range registry {
		if m.Name == name {
			return m, true
		}
	}
	return nil, false
}

// Parse finds a method by name, or says which there are.
func Parse(name string) (*Method, error) {
	if m, ok := Lookup(name); ok {
		return m, nil
	}
	return nil, fmt.Errorf("unknown method %q (one of %s)", name, strings.Join(Names(), ", "))
}

// The methods. All but bi and angular measure "the model without blocks S"
// on the calibration text by skipping S at run time.
var (
	// BI is ShortGPT: the blocks of lowest Block Influence, in one pass.
	// It is the default.
	BI = Register(&Method{
		Name: "bi", Help: "ShortGPT: the lowest Block Influence, in one pass", Cost: "1 pass",
		Key: ByBI,
		Choose: func(ctx context.Context, e *Engine) error {
			scores, err := e.Measure.BI(ctx, nil)
			if err != nil {
				return err
			}
			return e.TakeRanked(Rank(scores, ByBI), func(b int) float64 { return scores[b].BI })
		},
	})
	// Angular is Gromov et al.: the run of k consecutive blocks whose input
	// and output hidden states are closest in angular distance.
	Angular = Register(&Method{
		Name: "angular", Help: "Gromov et al.: the run of consecutive blocks of least angular distance", Cost: "1 pass (per run length with a target size)",
		Choose: chooseRun,
	})
	// BIIterative removes the lowest-BI block, scores the rest again with
	// it skipped, and repeats.
	BIIterative = Register(&Method{
		Name: "bi-iterative", Help: "the lowest BI, scored again after each removal", Cost: "k passes",
		Choose: func(ctx context.Context, e *Engine) error {
			return e.TakeEach(func(removed, cands []int) (Step, bool, error) {
				scores, err := e.Measure.BI(ctx, removed)
				if err != nil {
					return Step{}, false, err
				}
				best := cands[0]
				for _, c := range cands {
					if scores[c].BI < scores[best].BI {
						best = c
					}
				}
				return Step{best, scores[best].BI}, true, nil
			})
		},
	})
	// PPL measures the calibration loss (mean NLL) with each block skipped
	// alone and removes the cheapest.
	PPL = Register(&Method{
		Name: "ppl", Help: "the least calibration loss with the block skipped alone", Cost: "1 pass per block",
		Loss: NLL, Key: ByLoss, Choose: chooseByLoss(NLL),
	})
	// Greedy is SLEB: one block at a time, each time the one whose removal
	// costs the least calibration loss given those already removed.
	Greedy = Register(&Method{
		Name: "greedy", Help: "SLEB: one block at a time, the least calibration loss with those removed", Cost: "about k × blocks passes",
		Loss: NLL, Choose: chooseGreedy(NLL),
	})
	// KLDMethod is PPL with the loss the KL divergence from the whole
	// model's next-token distributions (it needs no labels).
	KLDMethod = Register(&Method{
		Name: "kld", Help: "the least KL divergence from the whole model with the block skipped alone", Cost: "1 pass per block, and 1",
		Loss: KLD, Key: ByLoss, Choose: chooseByLoss(KLD),
	})
	// KLDGreedy is Greedy with the KL-divergence loss.
	KLDGreedy = Register(&Method{
		Name: "kld-greedy", Help: "greedy with the KL divergence from the whole model", Cost: "about k × blocks passes, and 1",
		Loss: KLD, Choose: chooseGreedy(KLD),
	})
)

// Healed chooses, greedily, the blocks whose removal heals best: each
// time the candidate of least calibration KL divergence with the blocks
// already chosen, all removed and healed (prune --heal's least-squares
// maps, fitted for that removal and applied at run time). The first step
// measures every candidate; later steps only the healedShortlist best of
// the first (a removal that heals badly alone rarely heals well beside
// others, and each measure is a fit of every run and a pass).
var Healed = Register(&Method{
	Name: "heal", Help: "greedy by the KL divergence of the model with the blocks removed and healed (for --heal)",
	Cost: "about blocks + k × 8 fits (2 passes per removed run) and passes", Loss: KLD, Choose: chooseHealed,
})

// healedShortlist is how many of the first step's best candidates later
// steps of Healed measure.
const healedShortlist = 8

func chooseHealed(ctx context.Context, e *Engine) error {
	var first map[int]float64
	return e.TakeEach(func(removed, cands []int) (Step, bool, error) {
		if first != nil {
			cands = slices.Clone(cands)
			slices.SortStableFunc(cands, func(a, b int) int { return cmp.Compare(first[a], first[b]) })
			cands = cands[:min(len(cands), healedShortlist)]
		}
		var best Step
		losses := map[int]float64{}
		for i, c := range cands {
			try := append(slices.Clone(removed), c)
			slices.Sort(try)
			l, _, err := e.Measure.HealedLoss(ctx, try, KLD)
			if err != nil {
				return Step{}, false, err
			}
			losses[c] = l
			if i == 0 || l < best.Value {
				best = Step{c, l}
			}
		}
		if first == nil {
			first = losses
		}
		return best, true, nil
	})
}

// chooseByLoss ranks every candidate by the loss with it skipped alone.
func chooseByLoss(kind Loss) func(ctx context.Context, e *Engine) error {
	return func(ctx context.Context, e *Engine) error {
		loss := map[int]float64{}
		for _, c := range e.Problem.Candidates() {
			l, err := e.Measure.Loss(ctx, []int{c}, kind)
			if err != nil {
				return err
			}
			loss[c] = l
		}
		order := e.Problem.Candidates()
		slices.SortStableFunc(order, func(a, b int) int {
			switch {
			case loss[a] < loss[b]:
				return -1
			case loss[a] > loss[b]:
				return 1
			}
			return a - b
		})
		return e.TakeRanked(order, func(b int) float64 { return loss[b] })
	}
}

// chooseGreedy takes, each time, the candidate of least loss with the
// blocks already removed.
func chooseGreedy(kind Loss) func(ctx context.Context, e *Engine) error {
	return func(ctx context.Context, e *Engine) error {
		return e.TakeEach(func(removed, cands []int) (Step, bool, error) {
			var best Step
			for i, c := range cands {
				l, err := e.Measure.Loss(ctx, append(slices.Clone(removed), c), kind)
				if err != nil {
					return Step{}, false, err
				}
				if i == 0 || l < best.Value {
					best = Step{c, l}
				}
			}
			return best, true, nil
		})
	}
}

// chooseRun is Angular: for the run length asked for (or each length
// until the target size is reached), the valid run of least distance.
func chooseRun(ctx context.Context, e *Engine) error {
	p := e.Problem
	for n := 1; n <= len(p.Candidates()); n++ {
		if p.Count > 0 && n != p.Count {
			continue
		}
		d, err := e.Measure.RunDistances(ctx, n)
		if err != nil {
			return err
		}
		best := -1
		for l := 0; l+n <= p.Blocks; l++ {
			ok, err := e.ValidRun(l, n)
			if err != nil {
				return err
			}
			if ok && (best < 0 || d[l] < d[best]) {
				best = l
			}
		}
		if best < 0 {
			continue
		}
		e.Removed, e.Steps = blockRange(best, n), []Step{{best, d[best]}}
		if ok, err := p.done(e.Removed); err != nil || ok {
			return err
		}
	}
	return nil
}

// String is the method's name.
func (m *Method) String() string { return m.Name }

package bi

import (
	"fmt"
	"math"
	"slices"
	"sort"
)

// Expert metrics of a mixture-of-experts block, from its routing on
// calibration text. For expert e of a block, over the T tokens the block
// saw, with X_e the tokens routed to e, g_e(x) the gate weight that
// multiplies e's output for token x (after the model's own normalisation),
// and f_e(x) that output:
//
//	reap_e      = (1/|X_e|) Σ_{x∈X_e} g_e(x)·‖f_e(x)‖₂   (REAP, Lasby et al. 2025)
//	frequency_e = |X_e| / T
//	gate_e      = (1/T) Σ_{x∈X_e} g_e(x)                  (0 for tokens not routed to e)
//	norm_e      = (1/|X_e|) Σ_{x∈X_e} ‖f_e(x)‖₂
//
// An expert no token reached has every metric 0. Sums are float64.
type ExpertScore struct {
	Expert    int     `json:"expert"`
	REAP      float64 `json:"reap"`
	Frequency float64 `json:"frequency"`
	Gate      float64 `json:"gate"`
	Norm      float64 `json:"norm"`
	Tokens    int64   `json:"tokens"` // |X_e|
}

// BlockExperts is the expert scores of one mixture-of-experts block.
type BlockExperts struct {
	Block   int           `json:"block"`
	Tokens  int64         `json:"tokens"` // T
	Experts []ExpertScore `json:"experts"`
}

// ExpertMetric is one of the expert metrics, by name.
type ExpertMetric struct {
	Name string
	Help string
	Of   func(ExpertScore) float64
}

// ExpertMetrics are the expert metrics, the default (reap) first.
var ExpertMetrics = []ExpertMetric{
	{"reap", "mean over routed tokens of gate weight × L2 norm of the expert's output (REAP)", func(s ExpertScore) float64 { return s.REAP }},
	{"frequency", "share of tokens routed to the expert", func(s ExpertScore) float64 { return s.Frequency }},
	{"gate", "mean gate weight over all tokens (0 where not routed)", func(s ExpertScore) float64 { return s.Gate }},
	{"norm", "mean L2 norm of the expert's output over routed tokens", func(s ExpertScore) float64 { return s.Norm }},
}

// LookupExpertMetric finds an expert metric by name.
func LookupExpertMetric(name string) (ExpertMetric, bool) {
	for _, m := range ExpertMetrics {
		if m.Name == name {
			return m, true
		}
	}
	return ExpertMetric{}, false
}

// ExpertMetricNames are the names of the expert metrics.
func ExpertMetricNames() []string {
	var out []string
	for _, m := range ExpertMetrics {
		out = append(out, m.Name)
	}
	return out
}

// Lowest returns the n experts of b with the lowest metric, ascending by
// (metric, expert index), in ascending expert order; within returns
// whether an expert may be taken (nil: all may).
func (b BlockExperts) Lowest(m ExpertMetric, n int, within func(expert int) bool) []int {
	order := slices.Clone(b.Experts)
	sort.SliceStable(order, func(i, j int) bool {
		vi, vj := m.Of(order[i]), m.Of(order[j])
		if vi != vj {
			return vi < vj
		}
		return order[i].Expert < order[j].Expert
	})
	var out []int
	for _, s := range order {
		if len(out) == n {
			break
		}
		if within == nil || within(s.Expert) {
			out = append(out, s.Expert)
		}
	}
	slices.Sort(out)
	return out
}

// Check refuses expert scores no measurement gives: an expert of every
// index once, finite non-negative metrics, a frequency in [0, 1] that
// agrees with the token counts.
func (b BlockExperts) Check(experts int) error {
	if len(b.Experts) != experts {
		return fmt.Errorf("block %d has scores of %d experts, the model %d", b.Block, len(b.Experts), experts)
	}
	if b.Tokens < 0 {
		return fmt.Errorf("block %d: token count %d is negative", b.Block, b.Tokens)
	}
	for i, s := range b.Experts {
		if s.Expert != i {
			return fmt.Errorf("block %d: expert entry %d is malformed (expert %d)", b.Block, i, s.Expert)
		}
		for _, v := range []float64{s.REAP, s.Frequency, s.Gate, s.Norm} {
			if !(v >= 0) || math.IsInf(v, 0) {
				return fmt.Errorf("block %d expert %d: score %g is not a finite non-negative number", b.Block, i, v)
			}
		}
		if s.Frequency > 1 || s.Tokens < 0 || s.Tokens > b.Tokens {
			return fmt.Errorf("block %d expert %d: %d of %d tokens (frequency %g) is not a share", b.Block, i, s.Tokens, b.Tokens, s.Frequency)
		}
	}
	return nil
}

// ExpertAccumulator streams the routing of mixture-of-experts blocks
// through (llamacpp.ExpertsFunc) and keeps per-expert float64 sums.
type ExpertAccumulator struct {
	blocks map[int]*expertSums
	err    error
}

type expertSums struct {
	tokens               int64
	count                []int64
	reap, gate, normSums []float64
}

// NewExpertAccumulator makes an empty accumulator.
func NewExpertAccumulator() *ExpertAccumulator {
	return &ExpertAccumulator{blocks: map[int]*expertSums{}}
}

// Observe takes the routing of one block for nTokens tokens: ids, weights
// and norms hold nUsed entries per token (see the type's metrics).
func (a *ExpertAccumulator) Observe(block int, ids []int32, weights, norms []float32, nUsed, nTokens, nExperts int) {
	if a.err != nil {
		return
	}
	s := a.blocks[block]
	if s == nil {
		s = &expertSums{count: make([]int64, nExperts), reap: make([]float64, nExperts),
			gate: make([]float64, nExperts), normSums: make([]float64, nExperts)}
		a.blocks[block] = s
	}
	if len(s.count) != nExperts {
		a.err = fmt.Errorf("block %d routed among %d experts, then among %d", block, len(s.count), nExperts)
		return
	}
	s.tokens += int64(nTokens)
	for i := 0; i < nUsed*nTokens; i++ {
		e := int(ids[i])
		if e < 0 || e >= nExperts {
			a.err = fmt.Errorf("block %d routed a token to expert %d of %d", block, e, nExperts)
			return
		}
		g, n := float64(weights[i]), float64(norms[i])
		s.count[e]++
		s.reap[e] += g * n
		s.gate[e] += g
		s.normSums[e] += n
	}
}

// Err is the first inconsistency Observe met.
func (a *ExpertAccumulator) Err() error { return a.err }

// Blocks is the blocks observed, ascending.
func (a *ExpertAccumulator) Blocks() []int {
	var out []int
	for b := range a.blocks {
		out = append(out, b)
	}
	slices.Sort(out)
	return out
}

// Scores is the metrics of every expert of every block observed, by block.
func (a *ExpertAccumulator) Scores() []BlockExperts {
	var out []BlockExperts
	for _, b := range a.Blocks() {
		s := a.blocks[b]
		be := BlockExperts{Block: b, Tokens: s.tokens}
		for e := range s.count {
			es := ExpertScore{Expert: e, Tokens: s.count[e]}
			if c := float64(s.count[e]); c > 0 {
				es.REAP, es.Norm = s.reap[e]/c, s.normSums[e]/c
			}
			if s.tokens > 0 {
				es.Frequency = float64(s.count[e]) / float64(s.tokens)
				es.Gate = s.gate[e] / float64(s.tokens)
			}
			be.Experts = append(be.Experts, es)
		}
		out = append(out, be)
	}
	return out
}

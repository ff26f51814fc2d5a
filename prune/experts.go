package prune

import (
	"fmt"
	"io"
	"math"
	"slices"
	"strings"

	"github.com/ggufprune/ggufprune/bi"
	"github.com/ggufprune/ggufprune/internal/units"
	"github.com/ggufprune/ggufprune/llamacpp"
	"github.com/ggufprune/ggufprune/prune/selection"

	"github.com/ggufprune/ggufprune/gguf"
	"github.com/ggufprune/ggufprune/gguf/blocks"
	"github.com/ggufprune/ggufprune/gguf/surgery"
)

// ParseExpertList reads experts by block: "BLOCKS:EXPERTS[;BLOCKS:EXPERTS…]",
// each side a list of indices and inclusive ranges ("0-7:0,5" removes
// experts 0 and 5 from blocks 0 to 7).
func ParseExpertList(s string) (map[int][]int, error) {
	out := map[int][]int{}
	for _, part := range strings.Split(s, ";") {
		blockList, expertList, ok := strings.Cut(strings.TrimSpace(part), ":")
		if !ok {
			return nil, fmt.Errorf("expert list %q: %q is not BLOCKS:EXPERTS (e.g. 0-7:0,5)", s, part)
		}
		bs, err := blocks.ParseList(blockList)
		if err != nil {
			return nil, fmt.Errorf("expert list %q: %w", s, err)
		}
		es, err := blocks.ParseList(expertList)
		if err != nil {
			return nil, fmt.Errorf("expert list %q: %w", s, err)
		}
		for _, b := range bs {
			if _, dup := out[b]; dup {
				return nil, fmt.Errorf("expert list %q: block %d is given twice", s, b)
			}
			out[b] = es
		}
	}
	return out, nil
}

// CheckExperts checks that the model at path can lose these experts (see
// surgery.Options.Experts) and that masking them at run time computes what
// removing them does: the masked run is that of a file llama.cpp loads.
// Masking sets router logits to -1e30, which matches removal for softmax
// gating over unbiased logits (llama-graph.cpp build_moe_ffn), not for
// sigmoid gating or a selection bias (exp_probs_b), which add to the
// probabilities after the logits.
func CheckExperts(path string, experts map[int][]int) error {
	g, err := gguf.OpenModel(path)
	if err != nil {
		return err
	}
	defer g.Close()
	if _, err := surgery.PlanRemoval(g, nil, surgery.Options{Experts: experts, Force: true}); err != nil {
		return err
	}
	kv, err := gguf.NewArchKV(g)
	if err != nil {
		return err
	}
	if f := kv.Int("expert_gating_func", 1); f != 1 {
		return fmt.Errorf("%s: %s is %d, not softmax: masking experts would not compute what removing them does; remove them (prune --expert-list) and evaluate the file", path, kv.Key("expert_gating_func"), f)
	}
	for _, t := range g.AllTensors() {
		if _, rest, ok, _ := blocks.Split(t.Name); ok && (strings.HasPrefix(rest, "exp_probs_b.") || strings.HasPrefix(rest, "ffn_gate_inp.bias")) {
			return fmt.Errorf("%s: tensor %s biases the routing: masking experts would not compute what removing them does; remove them (prune --expert-list) and evaluate the file", path, t.Name)
		}
	}
	return nil
}

// ExpertSelection says how many experts to remove from every
// mixture-of-experts block by score. Give one of Count and TargetSize.
type ExpertSelection struct {
	Count      int   // remove this many experts from every MoE block
	TargetSize int64 // or the fewest per block that bring the output to at most this many bytes
	// Metric ranks the experts of a block, lowest removed first (a
	// bi.ExpertMetrics name; "": DefaultExpertMetric).
	Metric string
}

// DefaultExpertMetric is the expert metric used when none is given: the
// one that measured best (docs/experts.md).
const DefaultExpertMetric = "reap"

func (s ExpertSelection) empty() bool { return s.Count <= 0 && s.TargetSize <= 0 }

func (s ExpertSelection) metric() (bi.ExpertMetric, error) {
	name := s.Metric
	if name == "" {
		name = DefaultExpertMetric
	}
	m, ok := bi.LookupExpertMetric(name)
	if !ok {
		return m, fmt.Errorf("unknown expert method %q (one of %s)", name, strings.Join(bi.ExpertMetricNames(), ", "))
	}
	return m, nil
}

// ParseExpertCount reads a number of experts to remove from every block,
// "N" or "P%" of the model's experts per block (rounded, at least 1).
func (m *Model) ParseExpertCount(v string) (int, error) {
	if m.MoE == nil {
		return 0, fmt.Errorf("%s: %s has no experts (no %s.%s)", m.Path, m.Arch, m.Arch, gguf.KeyExpertCount)
	}
	n, err := selection.ParseCount(v, m.MoE.Experts)
	if err != nil {
		return 0, fmt.Errorf("%s: give a positive number of experts or a percentage like 25%%", v)
	}
	return n, nil
}

// SelectExperts chooses the experts to remove from every mixture-of-experts
// block from a report's expert scores, as s says: in each block the
// lowest by the metric (ties: the lower index). With expert groups
// ({arch}.expert_group_count), every group loses as many. Blocks in
// removeBlocks (input numbering) are being removed and lose none.
// Multi-token-prediction blocks, which a decode does not run and so have
// no scores, lose the experts with the smallest router rows (L2 norm of
// their ffn_gate_inp row: the experts whose logits are the smallest for
// inputs of a given norm): llama.cpp has one expert count, so they must
// lose as many.
func (m *Model) SelectExperts(rep *ScoreReport, s ExpertSelection, removeBlocks []int) (map[int][]int, error) {
	if m.MoE == nil {
		return nil, fmt.Errorf("%s: %s has no experts (no %s.%s)", m.Path, m.Arch, m.Arch, gguf.KeyExpertCount)
	}
	if !rep.HasExperts() {
		return nil, fmt.Errorf("the scores of %s hold no expert scores (score --experts makes them)", rep.Model)
	}
	metric, err := s.metric()
	if err != nil {
		return nil, err
	}
	if err := rep.checkExperts(m); err != nil {
		return nil, err
	}
	choose := func(count int) (map[int][]int, error) {
		return m.lowestExperts(rep, metric, count, removeBlocks)
	}
	if s.Count > 0 {
		return choose(s.Count)
	}
	// The fewest experts per block that reach the target size.
	moe := m.MoE
	groups := max(moe.Groups, 1)
	for count := groups; moe.Experts-count >= max(moe.Used, 1); count += groups {
		gone, err := choose(count)
		if err != nil {
			return nil, err
		}
		p, err := m.Plan(removeBlocks, surgery.Options{Experts: gone, Force: true})
		if err != nil {
			return nil, err
		}
		size, err := p.Size(surgery.OneFile)
		if err != nil {
			return nil, err
		}
		if size <= s.TargetSize {
			return gone, nil
		}
	}
	return nil, fmt.Errorf("%s: the target size of %d bytes (%s) cannot be reached by removing experts: keeping the %d each token is routed to is larger", m.Path, s.TargetSize, units.HumanBytes(s.TargetSize), max(moe.Used, 1))
}

// lowestExperts is count experts of every MoE block not removed, lowest
// by the metric, count/groups in every group.
func (m *Model) lowestExperts(rep *ScoreReport, metric bi.ExpertMetric, count int, removeBlocks []int) (map[int][]int, error) {
	moe := m.MoE
	groups := max(moe.Groups, 1)
	if count%groups != 0 {
		return nil, fmt.Errorf("%s: its %d experts are in %d groups that must lose as many each: remove a multiple of %d", m.Path, moe.Experts, groups, groups)
	}
	if left := moe.Experts - count; left < max(moe.Used, 1) {
		return nil, fmt.Errorf("%s: removing %d of %d experts leaves %d, fewer than the %d each token is routed to", m.Path, count, moe.Experts, left, moe.Used)
	}
	per := moe.Experts / groups
	lowest := func(be bi.BlockExperts) []int {
		var out []int
		for g := range groups {
			out = append(out, be.Lowest(metric, count/groups, func(e int) bool { return e/per == g })...)
		}
		slices.Sort(out)
		return out
	}
	gone := map[int][]int{}
	scored := map[int]bool{}
	for _, be := range rep.Experts {
		scored[be.Block] = true
		if !slices.Contains(removeBlocks, be.Block) {
			gone[be.Block] = lowest(be)
		}
	}
	for _, b := range moe.MoEBlocks {
		if scored[b] || slices.Contains(removeBlocks, b) {
			continue
		}
		norms, err := m.routerRowNorms(b)
		if err != nil {
			return nil, err
		}
		be := bi.BlockExperts{Block: b}
		for e, n := range norms {
			be.Experts = append(be.Experts, bi.ExpertScore{Expert: e, Norm: n})
		}
		gone[b] = lowest(be)
	}
	return gone, nil
}

// routerRowNorms is the L2 norm of every expert's row of block b's router
// (blk.b.ffn_gate_inp.weight, [n_embd, n_expert]).
func (m *Model) routerRowNorms(b int) ([]float64, error) {
	name := blocks.Name(b, "ffn_gate_inp.weight")
	t, ok := m.GGUF.Tensor(name)
	if !ok || len(t.Dims) != 2 || t.Dims[1] != uint64(m.MoE.Experts) {
		return nil, fmt.Errorf("%s: block %d has no router %s of %d experts", m.Path, b, name, m.MoE.Experts)
	}
	data, err := io.ReadAll(m.GGUF.TensorData(t))
	if err != nil {
		return nil, fmt.Errorf("%s: reading %s: %w", m.Path, name, err)
	}
	d := int(t.Dims[0])
	x, err := llamacpp.Dequantize(t.Type, data, d*m.MoE.Experts)
	if err != nil {
		return nil, fmt.Errorf("%s: %s: %w", m.Path, name, err)
	}
	out := make([]float64, m.MoE.Experts)
	for e := range out {
		var ss float64
		for _, v := range x[e*d : (e+1)*d] {
			ss += float64(v) * float64(v)
		}
		out[e] = math.Sqrt(ss)
	}
	return out, nil
}

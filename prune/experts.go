package prune

import (
	"fmt"
	"strings"

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

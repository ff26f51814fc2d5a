package arch

import (
	"strings"

	"github.com/ggufprune/ggufprune/gguf"
	"github.com/ggufprune/ggufprune/gguf/blocks"
)

// MoE is the mixture-of-experts structure of a model, as llama.cpp reads it
// (llama-model.cpp load_hparams: {arch}.expert_count, expert_used_count,
// expert_shared_count, expert_group_count; load_tensors: a block with a
// router, ffn_gate_inp, runs its experts, stacked in ffn_*_exps tensors
// with the expert axis outermost; shared experts are ffn_*_shexp).
type MoE struct {
	Experts        int   `json:"experts"`                 // experts of every MoE block
	Used           int   `json:"used"`                    // experts each token is routed to
	Shared         int   `json:"shared,omitempty"`        // shared experts (expert_shared_count)
	Groups         int   `json:"groups,omitempty"`        // expert groups (expert_group_count)
	MoEBlocks      []int `json:"moe_blocks"`              // blocks with a router
	DenseBlocks    []int `json:"dense_blocks,omitempty"`  // blocks without one (a dense lead, interleaving)
	SharedBlocks   []int `json:"shared_blocks,omitempty"` // blocks with shared-expert tensors
	ExpertBytes    int64 `json:"expert_bytes"`            // bytes of the stacked expert tensors
	ModelBytes     int64 `json:"model_bytes"`             // bytes of every tensor
	BytesPerExpert int64 `json:"bytes_per_expert"`        // of one expert in every MoE block: what removing one saves
}

// MoEOf is the model's mixture-of-experts structure, nil for a dense model.
func MoEOf(m *gguf.Model) *MoE {
	kv, err := gguf.NewArchKV(m)
	if err != nil {
		return nil
	}
	experts := kv.Int(gguf.KeyExpertCount, 0)
	if experts == 0 {
		return nil
	}
	n, _ := m.BlockCount()
	moe := &MoE{Experts: experts, Used: kv.Int(gguf.KeyExpertUsedCount, 0),
		Shared: kv.Int("expert_shared_count", 0), Groups: kv.Int("expert_group_count", 0)}
	router := make([]bool, n)
	shared := make([]bool, n)
	for _, t := range m.AllTensors() {
		moe.ModelBytes += int64(t.Size)
		b, rest, ok, _ := blocks.Split(t.Name)
		if !ok || b >= n {
			continue
		}
		switch {
		case strings.HasPrefix(rest, "ffn_gate_inp."):
			router[b] = true
		case strings.Contains(rest, "_exps."):
			moe.ExpertBytes += int64(t.Size)
		case strings.Contains(rest, "_shexp."):
			shared[b] = true
		}
	}
	for b := 0; b < n; b++ {
		if router[b] {
			moe.MoEBlocks = append(moe.MoEBlocks, b)
		} else {
			moe.DenseBlocks = append(moe.DenseBlocks, b)
		}
		if shared[b] {
			moe.SharedBlocks = append(moe.SharedBlocks, b)
		}
	}
	if len(moe.MoEBlocks) > 0 {
		moe.BytesPerExpert = moe.ExpertBytes / int64(experts)
	}
	return moe
}

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
// surgery.Options.Experts), before experts are masked at run time or
// removed: the masked run is that of a file llama.cpp loads.
func CheckExperts(path string, experts map[int][]int) error {
	g, err := gguf.OpenModel(path)
	if err != nil {
		return err
	}
	defer g.Close()
	_, err = surgery.PlanRemoval(g, nil, surgery.Options{Experts: experts, Force: true})
	return err
}

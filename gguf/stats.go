package gguf

import (
	"sort"

	"github.com/ggufprune/ggufprune/gguf/blocks"
)

// BlockStats sums the tensors of one block.
type BlockStats struct {
	Index   int    `json:"index"`
	Tensors int    `json:"tensors"`
	Bytes   uint64 `json:"bytes"`
	Params  uint64 `json:"params"`
}

// TypeStats sums the tensors of one tensor type.
type TypeStats struct {
	Type    string `json:"type"`
	Tensors int    `json:"tensors"`
	Bytes   uint64 `json:"bytes"`
	Params  uint64 `json:"params"`
}

// Stats summarises a model's tensors.
type Stats struct {
	Params      uint64       `json:"params"`
	TensorBytes uint64       `json:"tensor_bytes"`
	Types       []TypeStats  `json:"types"`
	Blocks      []BlockStats `json:"blocks"`
}

// Stats sums parameters and bytes per block and per tensor type. There is
// one row per block of the block count (CheckBlocks refuses tensors named
// for blocks past it); their tensors count in the totals only.
func (m *Model) Stats() Stats {
	var s Stats
	n, _ := m.BlockCount()
	byType := map[TensorType]*TypeStats{}
	for _, t := range m.AllTensors() {
		el := t.Elements()
		s.Params += el
		s.TensorBytes += t.Size
		ts := byType[t.Type]
		if ts == nil {
			ts = &TypeStats{Type: t.Type.String()}
			byType[t.Type] = ts
		}
		ts.Tensors++
		ts.Bytes += t.Size
		ts.Params += el
	}
	s.Blocks = make([]BlockStats, n)
	for i := range s.Blocks {
		s.Blocks[i].Index = i
	}
	for _, t := range m.AllTensors() {
		if b := blocks.Of(t.Name); b >= 0 && b < n {
			s.Blocks[b].Tensors++
			s.Blocks[b].Bytes += t.Size
			s.Blocks[b].Params += t.Elements()
		}
	}
	for _, ts := range byType {
		s.Types = append(s.Types, *ts)
	}
	sort.Slice(s.Types, func(i, j int) bool { return s.Types[i].Bytes > s.Types[j].Bytes })
	return s
}

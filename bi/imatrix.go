package bi

import (
	"sort"

	"github.com/ggufprune/ggufprune/gguf"
)

// ImatrixAccumulator collects an importance matrix as llama.cpp's imatrix
// tool does: for every weight matrix multiplication, the sum over activation
// rows of the squared input of each column, and the number of rows; for
// expert (MUL_MAT_ID) weights, per expert, counting the rows routed to it.
type ImatrixAccumulator struct {
	entries map[string]*gguf.ImatrixEntry
}

// NewImatrixAccumulator makes an empty accumulator.
func NewImatrixAccumulator() *ImatrixAccumulator {
	return &ImatrixAccumulator{entries: map[string]*gguf.ImatrixEntry{}}
}

// Observe takes the input x of one multiplication by weight: nSlots×nTokens
// rows of nIn floats. For expert weights ids holds, per token, the nExpertUsed
// experts chosen, and row (slot k % nSlots, token t) goes to expert ids[t][k].
func (a *ImatrixAccumulator) Observe(weight string, x []float32, nIn, nSlots, nTokens int, ids []int32, nExpertUsed, nExperts int) {
	nMat := 1
	if ids != nil {
		nMat = nExperts
	}
	e := a.entries[weight]
	if e == nil || e.NIn != nIn || e.NMat() != nMat {
		e = &gguf.ImatrixEntry{Name: weight, NIn: nIn, Sums: make([]float32, nIn*nMat), Counts: make([]float32, nMat)}
		a.entries[weight] = e
	}
	add := func(mat int, row []float32) {
		sums := e.Sums[mat*nIn : (mat+1)*nIn]
		for j, v := range row {
			sums[j] += v * v
		}
		e.Counts[mat]++
	}
	if ids == nil {
		for r := 0; r < nSlots*nTokens; r++ {
			add(0, x[r*nIn:(r+1)*nIn])
		}
		return
	}
	for t := 0; t < nTokens; t++ {
		for k := 0; k < nExpertUsed; k++ {
			ex := int(ids[t*nExpertUsed+k])
			if ex < 0 || ex >= nExperts {
				continue
			}
			r := t*nSlots + k%nSlots
			add(ex, x[r*nIn:(r+1)*nIn])
		}
	}
}

// Imatrix returns what was collected, with the dataset name and the chunks.
func (a *ImatrixAccumulator) Imatrix(dataset string, chunks, chunkSize int) *gguf.Imatrix {
	im := &gguf.Imatrix{Datasets: []string{dataset}, ChunkCount: chunks, ChunkSize: chunkSize}
	for _, e := range a.entries {
		im.Entries = append(im.Entries, *e)
	}
	sort.Slice(im.Entries, func(i, j int) bool { return im.Entries[i].Name < im.Entries[j].Name })
	return im
}

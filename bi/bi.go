// Package bi holds the metrics only: Block Influence (ShortGPT, Men et al.
// 2024) and angular distance from hidden states, the float64 log-softmax,
// and the KL divergence of next-token distributions with its percentiles.
// Choosing blocks by them is prune/selection's.
//
// For block i with input h_in_i and output h_out_i (one vector per token):
//
//	BI_i      = 1 - mean over tokens of cos(h_in_i, h_out_i)
//	angular_i = mean over tokens of arccos(cos(h_in_i, h_out_i)) / π
//
// h_in_0 is the token embedding (the input of block 0) and h_in_i = h_out_{i-1}.
// The last block's output is taken before the model's final norm. Cosines are
// computed and summed in float64. A block that returns its input unchanged
// has BI 0; a block whose output is orthogonal to its input has BI 1.
package bi

import (
	"fmt"
	"math"
)

// EmbeddingBoundary is the number of the block boundary before block 0:
// the token embeddings (llama.cpp's graph tensor inp_embd). Boundary i ≥ 0 is
// the output of block i (l_out-i). This is the one definition of the
// numbering; llamacpp hands boundaries over with it.
const EmbeddingBoundary = -1

// Cosine is the cosine similarity of a and b, computed in float64. Two zero
// vectors are identical (1); a zero and a non-zero vector are unrelated (0).
func Cosine(a, b []float32) float64 {
	if len(a) != len(b) {
		panic(fmt.Sprintf("bi: Cosine of vectors of lengths %d and %d", len(a), len(b)))
	}
	var dot, na, nb float64
	for i, x := range a {
		y := float64(b[i])
		dot += float64(x) * y
		na += float64(x) * float64(x)
		nb += y * y
	}
	switch {
	case na == 0 && nb == 0:
		return 1
	case na == 0 || nb == 0:
		return 0
	}
	c := dot / (math.Sqrt(na) * math.Sqrt(nb))
	return max(-1, min(1, c))
}

// BlockScore is the score of one block.
type BlockScore struct {
	Index   int     `json:"index"`
	BI      float64 `json:"bi"`
	Angular float64 `json:"angular"`
	// Loss is the calibration loss of the model with this block skipped
	// (mean NLL for the ppl metric, mean KL divergence from the whole model
	// for kld); absent for bi.
	Loss float64 `json:"loss,omitempty"`
}

// Accumulator streams hidden states through and keeps only per-block sums:
// its memory is one hidden state, whatever the number of chunks.
type Accumulator struct {
	nBlocks int
	sumCos  []float64
	sumAng  []float64
	tokens  int64 // tokens seen per block
	prev    []float32
	next    int // the block boundary expected next
	err     error
}

// NewAccumulator accumulates scores for a model of nBlocks blocks.
func NewAccumulator(nBlocks int) *Accumulator {
	return &Accumulator{nBlocks: nBlocks, sumCos: make([]float64, nBlocks), sumAng: make([]float64, nBlocks), next: EmbeddingBoundary}
}

// Observe takes the hidden state at one block boundary: EmbeddingBoundary
// is the input of block 0, block i the output of block i. Boundaries must
// come in order EmbeddingBoundary, 0, 1, …, nBlocks-1 for every chunk. h holds nTokens rows of nEmbd.
func (a *Accumulator) Observe(block int, h []float32, nEmbd, nTokens int) {
	if a.err != nil {
		return
	}
	if len(h) != nEmbd*nTokens {
		panic(fmt.Sprintf("bi: hidden state of %d floats for %d tokens of %d", len(h), nTokens, nEmbd))
	}
	if block != a.next {
		a.err = fmt.Errorf("bi: got block boundary %d, expected %d", block, a.next)
		return
	}
	if block >= 0 {
		if len(a.prev) != len(h) {
			a.err = fmt.Errorf("bi: block %d output has %d floats, its input %d", block, len(h), len(a.prev))
			return
		}
		var sc, sa float64
		for t := 0; t < nTokens; t++ {
			c := Cosine(a.prev[t*nEmbd:(t+1)*nEmbd], h[t*nEmbd:(t+1)*nEmbd])
			sc += c
			sa += math.Acos(c) / math.Pi
		}
		a.sumCos[block] += sc
		a.sumAng[block] += sa
		if block == 0 {
			a.tokens += int64(nTokens)
		}
	}
	a.prev = append(a.prev[:0], h...)
	a.next++
	if a.next == a.nBlocks {
		a.next = EmbeddingBoundary
	}
}

// Err reports boundaries that came out of order.
func (a *Accumulator) Err() error { return a.err }

// Tokens is the number of tokens scored so far.
func (a *Accumulator) Tokens() int64 { return a.tokens }

// Scores returns BI and angular distance per block.
func (a *Accumulator) Scores() []BlockScore {
	s := make([]BlockScore, a.nBlocks)
	for i := range s {
		s[i].Index = i
		if a.tokens > 0 {
			s[i].BI = 1 - a.sumCos[i]/float64(a.tokens)
			s[i].Angular = a.sumAng[i] / float64(a.tokens)
		}
	}
	return s
}

// RunAccumulator measures runs of n consecutive blocks as Gromov et al.
// (2024) do: for the run of blocks l … l+n-1, the mean over tokens of the
// angular distance between the run's input and its output,
//
//	d(l, n) = mean over tokens of arccos(cos(h_in_l, h_out_(l+n-1))) / π
//
// with cosines in float64. It keeps the last n+1 boundaries of a chunk.
type RunAccumulator struct {
	nBlocks, n int
	ring       [][]float32
	sum        []float64
	tokens     int64
	next       int
	err        error
}

// NewRunAccumulator measures the runs of n of nBlocks blocks.
func NewRunAccumulator(nBlocks, n int) *RunAccumulator {
	if n < 1 || n > nBlocks {
		panic(fmt.Sprintf("bi: runs of %d of %d blocks", n, nBlocks))
	}
	return &RunAccumulator{nBlocks: nBlocks, n: n, ring: make([][]float32, n+1), sum: make([]float64, nBlocks-n+1), next: EmbeddingBoundary}
}

// Observe takes the hidden state at one block boundary, in order, as
// Accumulator.Observe does.
func (a *RunAccumulator) Observe(block int, h []float32, nEmbd, nTokens int) {
	if a.err != nil {
		return
	}
	if block != a.next {
		a.err = fmt.Errorf("bi: got block boundary %d, expected %d", block, a.next)
		return
	}
	idx := block + 1 // 0 is the embeddings
	slot := idx % (a.n + 1)
	a.ring[slot] = append(a.ring[slot][:0], h...)
	if idx >= a.n {
		in := a.ring[(idx-a.n)%(a.n+1)]
		if len(in) != len(h) {
			a.err = fmt.Errorf("bi: boundaries of %d and %d floats", len(in), len(h))
			return
		}
		var s float64
		for t := 0; t < nTokens; t++ {
			s += math.Acos(Cosine(in[t*nEmbd:(t+1)*nEmbd], h[t*nEmbd:(t+1)*nEmbd])) / math.Pi
		}
		a.sum[idx-a.n] += s
		if idx == a.n {
			a.tokens += int64(nTokens)
		}
	}
	a.next++
	if a.next == a.nBlocks {
		a.next = EmbeddingBoundary
	}
}

// Err reports boundaries that came out of order.
func (a *RunAccumulator) Err() error { return a.err }

// Distances are d(l, n) for every first block l of a run (0 … nBlocks-n).
func (a *RunAccumulator) Distances() []float64 {
	d := make([]float64, len(a.sum))
	for i, s := range a.sum {
		if a.tokens > 0 {
			d[i] = s / float64(a.tokens)
		}
	}
	return d
}

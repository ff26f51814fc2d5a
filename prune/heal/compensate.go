package heal

import (
	"context"
	"fmt"
	"math"
	"strings"
	"time"

	"github.com/ggufprune/ggufprune/gguf"
	"github.com/ggufprune/ggufprune/gguf/blocks"
	"github.com/ggufprune/ggufprune/gguf/imatrix"
	"github.com/ggufprune/ggufprune/llamacpp"
	"github.com/ggufprune/ggufprune/llamacpp/arch"
	"github.com/ggufprune/ggufprune/prune/runner"
)

// Magnitude compensation (Prune&Comp, Chen et al. 2025, arXiv:2507.18212).
// Removing a run of blocks a…b leaves the residual stream smaller than the
// blocks after it were trained on: they receive h(a-1), not h(b). With
// N(i) the mean L2 norm of the stream after block i of the whole model on
// the calibration (float64 sums), the cut's
//
//	α = N(b) / N(a-1)
//
// scales the stream at the cut back to its magnitude. Every block and the
// output head read the stream through a norm (RMSNorm or LayerNorm), which
// does not see a common scale, so scaling the stream at the cut by α
// computes what scaling the output projections of every kept block after
// it (attn_output and ffn_down, their biases; the experts' ffn_down_exps
// and ffn_down_shexp) by 1/α computes, up to the norms' ε: that is the fold, and the token embeddings (perhaps tied to the
// output head) are never touched. Cuts compound: a block after several
// cuts is scaled by 1/Π α. A run that healing maps is not compensated: its
// least-squares map already restores the stream's magnitude (α within 2 %
// of 1 on story16, and compensating it too changes perplexity by under
// 0.5 %, up or down), nor is a run starting at block 0, whose output is not
// the embeddings grown by a factor.

// compensationReaders are the per-block tensors that read the residual
// stream (through the block's norms) without writing to it; compensation
// refuses a block with any tensor that is neither one of these nor an
// output projection, since it cannot know whether that tensor adds to the
// stream (llama-arch.cpp LLM_TENSOR_ATTN_*, LLM_TENSOR_FFN_*).
var compensationReaders = map[string]bool{
	"attn_norm": true, "attn_q": true, "attn_k": true, "attn_v": true, "attn_qkv": true,
	"attn_q_norm": true, "attn_k_norm": true, "attn_rot_embd": true, "rope_freqs": true,
	"ffn_norm": true, "ffn_gate": true, "ffn_up": true,
	// Experts: the router and the experts' inputs read the normalised
	// stream; only their down projections write to it.
	"ffn_gate_inp": true, "exp_probs_b": true, "ffn_gate_exps": true, "ffn_up_exps": true,
	"ffn_gate_up_exps": true, "ffn_gate_shexp": true, "ffn_up_shexp": true, "ffn_gate_inp_shexp": true,
}

// compensationWriters are the output projections compensation scales: what
// a block adds to the stream is linear in each (the experts' outputs are
// summed with gate weights computed from the normalised stream).
var compensationWriters = map[string]bool{
	"attn_output.weight": true, "attn_output.bias": true, arch.FFNDown: true, arch.FFNDownBias: true,
	arch.FFNDownExpert: true, "ffn_down_shexp.weight": true,
}

// Cut is one removed run and its compensation.
type Cut struct {
	First int `json:"first"` // the run's blocks, in the input's numbering
	Last  int `json:"last"`
	// Alpha is N(Last)/N(First-1), the stream's magnitude the run added
	// (1, with a Note, for a run left as it is).
	Alpha float64 `json:"alpha"`
	Note  string  `json:"note,omitempty"`
}

// Compensation is the result of Compensate.
type Compensation struct {
	Cuts []Cut `json:"cuts"`
	// Scales are the factors of the kept blocks' output projections, by
	// block (input numbering); blocks before the first cut are not listed.
	Scales  map[int]float64 `json:"scales"`
	Tensors []string        `json:"tensors"` // tensors rewritten (input names)
	Cost    runner.Cost     `json:"cost"`

	data        map[string][]byte
	blockOutput string // the graph's name of a block's output (arch.Boundaries)
}

// Data are the new data of the rewritten tensors, by input name.
func (c *Compensation) Data() map[string][]byte { return c.data }

// PlanCompensation says, without running anything, which tensors
// compensating the removal of these blocks rewrites (blocks after the first
// cut, except those of runs in healed), or why it cannot.
func PlanCompensation(m *gguf.Model, removed []int, healed map[int]bool) ([]Cut, []string, error) {
	if len(removed) == 0 {
		return nil, nil, fmt.Errorf("%s: compensation needs removed blocks", m.Name())
	}
	if _, ok := m.Tensor("output_norm.weight"); !ok {
		return nil, nil, fmt.Errorf("%s: no output_norm.weight: compensation needs the output head to read the stream through a norm", m.Name())
	}
	var cuts []Cut
	for _, r := range runsOf(removed) {
		c := Cut{First: r[0], Last: r[1]}
		switch {
		case healed[r[0]]:
			c.Alpha, c.Note = 1, "healed: its map restores the stream's magnitude"
		case r[0] == 0:
			// Block 0 turns the embeddings into the stream the others
			// read: their norm (a 30th of block 0's output on
			// TinyStories-656K) says nothing of the magnitude it adds,
			// and scaling by it made perplexity 200 times worse there.
			c.Alpha, c.Note = 1, "the run starts at block 0, whose output is not a scaled copy of the embeddings: compensation would mislead the blocks after it"
		}
		cuts = append(cuts, c)
	}
	isRemoved := map[int]bool{}
	for _, b := range removed {
		isRemoved[b] = true
	}
	first := -1 // the first block of the first run compensated
	for _, c := range cuts {
		if c.Alpha == 0 {
			first = c.First
			break
		}
	}
	if first < 0 {
		return cuts, nil, nil // every run healed
	}
	nBlocks, err := m.BlockCount()
	if err != nil {
		return nil, nil, err
	}
	var tensors []string
	for _, t := range m.AllTensors() {
		b, rest, ok, _ := blocks.Split(t.Name) // names the model's checks accepted
		if !ok || b <= first || isRemoved[b] {
			continue
		}
		base, _, _ := strings.Cut(rest, ".")
		switch {
		case compensationReaders[base]:
		case compensationWriters[rest]:
			tensors = append(tensors, t.Name)
		default:
			return nil, nil, fmt.Errorf("%s: block %d has %s, which compensation does not know (it may add to the residual stream, or normalise an output before it does): prune without --compensate", m.Name(), b, t.Name)
		}
	}
	// Every kept block after the cut must have both projections.
	for b := first + 1; b < nBlocks; b++ {
		if isRemoved[b] {
			continue
		}
		_, attn := m.Tensor(blocks.Name(b, "attn_output.weight"))
		_, dense := m.Tensor(blocks.Name(b, arch.FFNDown))
		_, experts := m.Tensor(blocks.Name(b, arch.FFNDownExpert))
		if !attn || !(dense || experts) {
			return nil, nil, fmt.Errorf("%s: block %d has no attn_output.weight or no FFN down projection: compensation scales the attention and FFN output projections of every block after a cut", m.Name(), b)
		}
	}
	return cuts, tensors, nil
}

// CompensateOptions say how Compensate measures and rewrites.
type CompensateOptions struct {
	// Healed are the first blocks of the runs healing maps: they are not
	// compensated.
	Healed map[int]bool
	// Data is tensor data already rewritten (healing's), by input name:
	// compensation scales it instead of the model's.
	Data    map[string][]byte
	Imatrix *imatrix.Matrix // quantized types are quantized again weighted by it
}

// Compensate measures the stream's mean norm after every block of m on the
// calibration, computes every cut's α and rewrites the output projections
// of the kept blocks after each cut (in their own type).
func Compensate(ctx context.Context, m *gguf.Model, removed []int, cal runner.Calibration, o runner.Options, opt CompensateOptions) (*Compensation, error) {
	cuts, tensors, err := PlanCompensation(m, removed, opt.Healed)
	if err != nil {
		return nil, err
	}
	start := time.Now()
	c := &Compensation{Cuts: cuts, Scales: map[int]float64{}, Tensors: tensors, data: map[string][]byte{}}
	if len(tensors) == 0 {
		return c, nil
	}
	norms, tokens, err := streamNorms(ctx, m, cal, o)
	if err != nil {
		return nil, err
	}
	archName, _ := m.Architecture() // streamNorms read it
	c.blockOutput = arch.Boundaries(archName).BlockOutput
	c.Cost.Passes, c.Cost.Tokens = 1, tokens
	isRemoved := map[int]bool{}
	for _, b := range removed {
		isRemoved[b] = true
	}
	nBlocks := len(norms) - 1
	scale := 1.0
	ci := 0
	for b := 0; b < nBlocks; b++ {
		if isRemoved[b] {
			continue
		}
		for ci < len(c.Cuts) && c.Cuts[ci].Last < b {
			cut := &c.Cuts[ci]
			if cut.Alpha == 0 {
				before, after := norms[cut.First], norms[cut.Last+1] // norms[i+1] is after block i
				if !(before > 0) || !(after > 0) {
					return nil, fmt.Errorf("%s: the stream around blocks %d-%d has a mean norm of %g and %g on the calibration: nothing to compensate by", m.Name(), cut.First, cut.Last, before, after)
				}
				cut.Alpha = after / before
			}
			scale /= cut.Alpha
			ci++
		}
		if ci > 0 && scale != 1 {
			c.Scales[b] = scale
		}
	}
	for _, name := range tensors {
		s, ok := c.Scales[blocks.Of(name)]
		if !ok {
			continue
		}
		data, err := scaleTensor(m, name, opt.Data[name], s, opt.Imatrix)
		if err != nil {
			return nil, err
		}
		c.data[name] = data
	}
	c.Cost.Seconds = time.Since(start).Seconds()
	return c, nil
}

// streamNorms decodes the calibration with the whole model and returns
// N(i-1) at index i: index 0 the embeddings' mean L2 norm per token, index
// i+1 that of the stream after block i (float64 sums).
func streamNorms(ctx context.Context, m *gguf.Model, cal runner.Calibration, o runner.Options) ([]float64, int64, error) {
	archName, err := m.Architecture()
	if err != nil {
		return nil, 0, err
	}
	lm, err := runner.Load(m.Name(), m, o)
	if err != nil {
		return nil, 0, err
	}
	defer lm.Close()
	chunks, _, err := runner.CalibrationChunks(ctx, lm, cal, o)
	if err != nil {
		return nil, 0, err
	}
	lctx, err := runner.NewContext(lm, o, runner.Capture)
	if err != nil {
		return nil, 0, err
	}
	defer lctx.Close()
	n, err := m.BlockCount()
	if err != nil {
		return nil, 0, err
	}
	bn := arch.Boundaries(archName)
	index := map[string]int{bn.Embeddings: 0}
	names := []string{bn.Embeddings}
	for i := 0; i < n; i++ {
		name := fmt.Sprintf("%s-%d", bn.BlockOutput, i)
		index[name] = i + 1
		names = append(names, name)
	}
	sums := make([]float64, n+1)
	counts := make([]int64, n+1)
	err = lctx.Watch(names, func(name string, data []float32, nCols, nRows int) {
		i := index[name]
		for r := 0; r < nRows; r++ {
			var s float64
			for _, v := range data[r*nCols : (r+1)*nCols] {
				s += float64(v) * float64(v)
			}
			sums[i] += math.Sqrt(s)
		}
		counts[i] += int64(nRows)
	})
	if err != nil {
		return nil, 0, err
	}
	progress := o.ProgressFunc("measuring the stream", "chunks", o.CtxSize())
	var tokens int64
	for ci, ch := range chunks {
		if err := ctx.Err(); err != nil {
			return nil, 0, err
		}
		if err := runner.DecodeFrom(lctx, ch, 0); err != nil {
			return nil, 0, err
		}
		tokens += int64(len(ch))
		if progress != nil {
			progress(ci+1, len(chunks))
		}
	}
	norms := make([]float64, n+1)
	for i := range norms {
		if counts[i] == 0 {
			return nil, 0, fmt.Errorf("%s: the graph did not hand over %s: this architecture cannot be compensated", m.Name(), names[i])
		}
		norms[i] = sums[i] / float64(counts[i])
	}
	return norms, tokens, nil
}

// scaleTensor returns tensor name's data (raw, or the model's when raw is
// nil) multiplied by s, in the tensor's type.
func scaleTensor(m *gguf.Model, name string, raw []byte, s float64, im *imatrix.Matrix) ([]byte, error) {
	return rewriteTensor(m, name, raw, im, func(w []float32) {
		for i, v := range w {
			w[i] = float32(float64(v) * s)
		}
	})
}

// Watch is what the compensation computes, done at run time the other way
// round, on a capturing context that skips the removed blocks: the stream
// after the last kept block before each compensated cut is multiplied by
// the cut's α (the graph tensors to watch, and the function). It equals
// the folded file up to the norms' ε, which makes it an independent check
// of the fold.
func (c *Compensation) Watch() ([]string, llamacpp.WatchFunc) {
	alphas := map[string]float32{}
	var names []string
	for _, cut := range c.Cuts {
		if cut.Note != "" {
			continue
		}
		n := fmt.Sprintf("%s-%d", c.blockOutput, cut.First-1)
		alphas[n] = float32(cut.Alpha)
		names = append(names, n)
	}
	return names, func(name string, data []float32, _, _ int) {
		if a, ok := alphas[name]; ok {
			for i := range data {
				data[i] *= a
			}
		}
	}
}

package prune

import (
	"context"
	"fmt"
	"os"
	"path/filepath"

	"github.com/ggufprune/ggufprune/gguf"
	"github.com/ggufprune/ggufprune/gguf/blocks"
	"github.com/ggufprune/ggufprune/gguf/imatrix"
	"github.com/ggufprune/ggufprune/gguf/surgery"
	"github.com/ggufprune/ggufprune/internal/atomicfile"
	"github.com/ggufprune/ggufprune/llamacpp"
	"github.com/ggufprune/ggufprune/llamacpp/arch"
	"github.com/ggufprune/ggufprune/prune/eval"
	"github.com/ggufprune/ggufprune/prune/heal"
	"github.com/ggufprune/ggufprune/prune/selection"
)

// WriteOptions say how a plan is written.
type WriteOptions struct {
	Output    string           // the output file (with surgery.KeepSplit: named like its first shard)
	Sharding  surgery.Sharding // write a split input as one file, or as as many shards
	Plan      surgery.Options  // how the removal is planned (forced or not)
	DryRun    bool             // plan and size only; write nothing
	Overwrite bool             // replace output files that exist (they keep their permissions)

	// Quantize, when its Name is set, quantizes the pruned model into
	// Output (one file; the pruned intermediate is a temporary file).
	Quantize        llamacpp.QuantType
	QuantizeThreads int

	// Imatrix is the input model's importance matrix (ImatrixName its
	// file): pruned with the model, used by Quantize, and written to
	// ImatrixOut when that is set.
	Imatrix     *imatrix.Matrix
	ImatrixName string
	ImatrixOut  string

	// Progress, when not nil, is told how many tensors are quantized.
	Progress func(done, total int)
}

// Result is what a prune did, as the prune command prints it.
type Result struct {
	Model   string   `json:"model"`
	Outputs []string `json:"outputs,omitempty"`
	Method  string   `json:"method"`
	Removed []int    `json:"removed"`
	// ExpertsRemoved are the experts removed, by block (input numbering),
	// and ExpertCount the experts of every MoE block after.
	ExpertsRemoved map[int][]int `json:"experts_removed,omitempty"`
	ExpertCount    int           `json:"expert_count,omitempty"`
	// ExpertMethod is the metric the experts were chosen by (absent when
	// they were given as a list).
	ExpertMethod     string            `json:"expert_method,omitempty"`
	BlockCountBefore int               `json:"block_count_before"`
	BlockCountAfter  int               `json:"block_count_after"`
	BytesBefore      int64             `json:"bytes_before"`
	BytesAfter       int64             `json:"bytes_after"`
	DryRun           bool              `json:"dry_run"`
	Quantized        string            `json:"quantized,omitempty"`
	ImatrixOut       string            `json:"imatrix_out,omitempty"`
	Scores           *ScoreReport      `json:"scores,omitempty"`
	Search           *selection.Search `json:"search,omitempty"` // methods other than bi: the choice's steps and cost
	Heal             *heal.Healing     `json:"heal,omitempty"`   // what healing rewrote
	// Compensation is what magnitude compensation measured and rewrote.
	Compensation *heal.Compensation `json:"compensation,omitempty"`
	Eval         []eval.Result      `json:"eval,omitempty"`
	// Warnings are what the output does not keep of the original (a forced
	// removal that changed the kind of kept blocks).
	Warnings []string `json:"warnings,omitempty"`
}

// Plan works out the removal of the given blocks (see surgery.PlanRemoval)
// and checks that llama.cpp would load the result (arch.Rules): forced too,
// a file llama.cpp would abort on is never written.
func (m *Model) Plan(remove []int, o surgery.Options) (*surgery.Plan, error) {
	plan, err := surgery.PlanRemoval(m.GGUF, remove, o)
	if err != nil {
		return nil, err
	}
	if err := plan.CheckLlama(); err != nil {
		return nil, err
	}
	return plan, nil
}

// Write writes the plan as o says and reports what it wrote. Every file goes
// through a temporary file next to it and is renamed into place only when
// complete; a failure leaves no output and no temporary file.
func (m *Model) Write(ctx context.Context, plan *surgery.Plan, o WriteOptions) (*Result, error) {
	quantize := o.Quantize.Name != ""
	if quantize && o.Sharding == surgery.KeepSplit {
		return nil, fmt.Errorf("a quantized output is one file; it cannot keep the input's split")
	}
	if err := o.check(plan); err != nil {
		return nil, err
	}
	after, err := plan.Size(o.sharding())
	if err != nil {
		return nil, err
	}
	res := &Result{
		Model: m.Path, Removed: plan.Removed,
		BlockCountBefore: plan.BlockCountBefore, BlockCountAfter: plan.BlockCountAfter,
		BytesBefore: m.Size(), BytesAfter: after, DryRun: o.DryRun,
	}
	if len(o.Plan.Experts) > 0 {
		res.ExpertsRemoved = o.Plan.Experts
		if v, ok := gguf.Metadata(plan.KV).Get(m.Arch + "." + gguf.KeyExpertCount); ok {
			n, _ := v.Int()
			res.ExpertCount = int(n)
		}
	}
	res.Warnings = append(res.Warnings, plan.Warnings...)
	if b := plan.Broken; b != nil {
		w := fmt.Sprintf("forced: %s derives %s from the block index, and removing %s moves block %d to index %d, which changes its kind; llama.cpp loads the output, but it does not compute what the original computes without those blocks",
			b.Architecture, b.What, blocks.FormatList(b.Removed), b.Block, b.To)
		if plan.KindsKept != nil {
			w += fmt.Sprintf(". The kept blocks' kinds are written to %s.%s, which the newer llama.cpp reads instead (load_swa_pattern): there the output computes exactly that", b.Architecture, arch.KeySlidingWindowPattern)
		}
		res.Warnings = append(res.Warnings, w)
	}
	var im *imatrix.Matrix
	if o.Imatrix != nil {
		im = o.Imatrix
		if len(o.Plan.Experts) > 0 {
			if im, err = im.DropExperts(o.Plan.Experts); err != nil {
				return nil, fmt.Errorf("%s: %w", o.ImatrixName, err)
			}
		}
		if im, err = im.Prune(plan.Map); err != nil {
			return nil, fmt.Errorf("%s: %w", o.ImatrixName, err)
		}
	}
	if o.DryRun {
		return res, nil
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if !quantize {
		if res.Outputs, err = plan.Write(o.Output, o.Sharding); err != nil {
			return nil, err
		}
	} else {
		if err := m.writeQuantized(plan, o, im); err != nil {
			return nil, err
		}
		st, err := os.Stat(o.Output)
		if err != nil {
			return nil, err
		}
		res.Outputs, res.BytesAfter, res.Quantized = []string{o.Output}, st.Size(), o.Quantize.Name
	}
	if o.ImatrixOut != "" && im != nil {
		if err := im.Write(o.ImatrixOut); err != nil {
			return nil, err
		}
		res.ImatrixOut = o.ImatrixOut
	}
	return res, nil
}

// sharding is how the plan is written: a quantized output is one file.
func (o WriteOptions) sharding() surgery.Sharding {
	if o.Quantize.Name != "" {
		return surgery.OneFile
	}
	return o.Sharding
}

// check refuses outputs that cannot be written (see atomicfile.CheckOutput).
func (o WriteOptions) check(plan *surgery.Plan) error {
	if o.DryRun {
		return nil
	}
	outs := plan.Outputs(o.Output, o.sharding())
	if o.ImatrixOut != "" {
		outs = append(outs, o.ImatrixOut)
	}
	for _, out := range outs {
		if plan.Model.SameFile(out) {
			return fmt.Errorf("%s: output would overwrite an input file", out)
		}
		if err := atomicfile.CheckOutput(out, o.Overwrite); err != nil {
			return err
		}
	}
	return nil
}

// writeQuantized writes the pruned model to a temporary file next to the
// output, quantizes it into the output, and removes it whatever happens.
func (m *Model) writeQuantized(plan *surgery.Plan, o WriteOptions, im *imatrix.Matrix) error {
	if plan.Model.SameFile(o.Output) {
		return fmt.Errorf("%s: output would overwrite an input file", o.Output)
	}
	tmp, err := atomicfile.Temp(filepath.Dir(o.Output), "."+filepath.Base(o.Output)+".pruned-")
	if err != nil {
		return err
	}
	defer tmp.Abort()
	if err := plan.WriteFile(tmp.File()); err != nil {
		return err
	}
	tmp.CloseFile()
	return llamacpp.Quantize(tmp.Name(), o.Output, llamacpp.QuantizeParams{
		Type: o.Quantize, Threads: o.QuantizeThreads, Imatrix: im, ImatrixName: o.ImatrixName, Progress: o.Progress,
	})
}

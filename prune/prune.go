// Package prune is ggufprune's pipeline as a library: open a GGUF model once,
// score its blocks on calibration text (Block Influence, ShortGPT), choose
// the blocks to remove, write the smaller model (plain, split, or quantized
// with its importance matrix), and evaluate it. The ggufprune command only
// parses flags, calls this package and prints its results.
//
// The stages are separate verbs (Open, Model.Score, Model.Select,
// Model.Plan, Model.Write, Evaluate) that return plain values; Run chains
// them as the prune command does. Long work takes a context.Context and
// stops between chunks when it is cancelled; progress is a callback.
package prune

import (
	"context"
	"errors"
	"fmt"

	"github.com/ggufprune/ggufprune/bi"
	"github.com/ggufprune/ggufprune/gguf"
	"github.com/ggufprune/ggufprune/llamacpp"
)

// Options say what Run does. Exactly one way of choosing blocks is given:
// Layers, or Remove/TargetSize over scores.
type Options struct {
	// Blocks to remove as given (ParseBlockList reads "3,5-7"); no scoring.
	Layers []int
	// Choose blocks by score: see Selection. Ignored with Layers.
	Select Selection
	// Where scores come from when blocks are chosen by score: a report
	// (checked against the model), else the calibration.
	Scores      *ScoreReport
	ScoresFile  string // the report's file, for the method's name
	Calibration Calibration
	Run         RunOptions

	Write WriteOptions

	// EvalText, when not empty, is evaluated on the input and the output
	// after writing (perplexity); EvalName names it in reports.
	EvalText, EvalName string
}

// Run prunes m as Options say: choose the blocks (scoring when needed), plan
// and write the output, evaluate. Everything that can be refused is checked
// before scoring.
func Run(ctx context.Context, m *Model, o Options) (*Result, error) {
	if len(o.Layers) == 0 && o.Select.empty() {
		return nil, errors.New("prune: no blocks given and no selection asked for")
	}
	if o.Write.Imatrix != nil {
		if err := o.Write.Imatrix.CheckModel(m.GGUF); err != nil {
			return nil, fmt.Errorf("%s: %w", o.Write.ImatrixName, err)
		}
	}
	if o.EvalText != "" && !o.Write.DryRun {
		if err := checkEvalText(o.EvalText, o.EvalName); err != nil {
			return nil, err
		}
	}
	remove := o.Layers
	var rep *ScoreReport
	method := MethodLayers
	if len(o.Layers) == 0 {
		if err := m.CheckSelectable(o.Write.Force); err != nil {
			return nil, err
		}
		switch {
		case o.Scores != nil:
			if err := o.Scores.Check(m); err != nil {
				return nil, err
			}
			rep, method = o.Scores, "bi (scores from "+o.ScoresFile+")"
		default:
			var err error
			if rep, _, err = m.Score(ctx, o.Calibration, o.Run, false); err != nil {
				return nil, err
			}
			method = "bi"
			if o.Calibration.SelfGenerated() {
				method = "bi (self-calibrated)"
			}
		}
		var err error
		if remove, err = m.Select(rep, o.Select, o.Write.KeepSplit); err != nil {
			return nil, err
		}
	}
	plan, err := m.Plan(remove, o.Write.Force)
	if err != nil {
		return nil, err
	}
	res, err := m.Write(ctx, plan, o.Write)
	if err != nil {
		return nil, err
	}
	res.Method, res.Scores = method, rep
	if o.EvalText != "" && !o.Write.DryRun {
		if res.Eval, err = Evaluate(ctx, []string{m.Path, res.Outputs[0]}, o.EvalText, o.EvalName, o.Run); err != nil {
			return nil, err
		}
	}
	return res, nil
}

// MethodLayers is Result.Method when the blocks were given.
const MethodLayers = "layers"

// Protect is re-exported for callers that only import this package.
type Protect = bi.Protect

// ParseBlockList reads a list of 0-based block indices and inclusive
// ranges such as "3,5-7".
func ParseBlockList(s string) ([]int, error) { return gguf.ParseBlockList(s) }

// LogOutput sends llama.cpp's own log to w (nil: quiet, the default). It is
// process-wide, as llama.cpp's log is.
var LogOutput = llamacpp.Log.SetOutput

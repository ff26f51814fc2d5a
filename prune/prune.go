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
	// Method chooses the blocks (default MethodBI). With Scores, the report's
	// metric must be the method's.
	Method Method
	// Where scores come from when blocks are chosen by score: a report
	// (checked against the model), else the calibration.
	Scores      *ScoreReport
	ScoresFile  string // the report's file, for the method's name
	Calibration Calibration
	Run         RunOptions

	Write WriteOptions

	// Heal fits and folds the healing map of every removed run (see
	// Model.Heal) on the calibration; Ridge is its relative ridge (0:
	// DefaultRidge).
	Heal  bool
	Ridge float64

	// EvalText, when not nil, is evaluated on the input before writing and
	// on the output after (perplexity).
	EvalText *Text
}

// Run prunes m as Options say: choose the blocks (scoring when needed), plan
// and write the output, evaluate. Everything that can be refused is checked
// before scoring.
func Run(ctx context.Context, m *Model, o Options) (*Result, error) {
	if len(o.Layers) == 0 && o.Select.empty() {
		return nil, errors.New("prune: no blocks given and no selection asked for")
	}
	// Everything that can be refused is checked before scoring, which may
	// take long, and before anything is written.
	if !o.Write.DryRun {
		if o.Write.Output != "" && m.GGUF.SameFile(o.Write.Output) {
			return nil, fmt.Errorf("%s: output would overwrite an input file", o.Write.Output)
		}
		if err := CheckOutput(o.Write.Output, o.Write.Overwrite); err != nil {
			return nil, err
		}
		if o.Write.ImatrixOut != "" {
			if err := CheckOutput(o.Write.ImatrixOut, o.Write.Overwrite); err != nil {
				return nil, err
			}
		}
	}
	if t := o.Select.TargetSize; len(o.Layers) == 0 && o.Select.Count <= 0 && t >= m.Size() {
		return nil, fmt.Errorf("%s is %s, already at most the target size %s (%d bytes): no block needs to go", m.Path, HumanBytes(m.Size()), HumanBytes(t), t)
	}
	if o.Write.Imatrix != nil {
		if err := o.Write.Imatrix.CheckModel(m.GGUF); err != nil {
			return nil, fmt.Errorf("%s: %w", o.Write.ImatrixName, err)
		}
	}
	remove := o.Layers
	var rep *ScoreReport
	var search *Search
	method := MethodLayers
	if len(o.Layers) == 0 {
		if err := m.CheckSelectable(o.Write.Force); err != nil {
			return nil, err
		}
		choose := o.Method
		if choose == "" {
			choose = MethodBI
			if o.Scores != nil {
				choose = Method(o.Scores.Metric)
			}
		}
		switch {
		case o.Scores != nil:
			if err := o.Scores.Check(m); err != nil {
				return nil, err
			}
			if string(choose) != o.Scores.Metric {
				return nil, fmt.Errorf("%s holds scores of metric %s, not of method %s", o.ScoresFile, o.Scores.Metric, choose)
			}
			rep, method = o.Scores, o.Scores.Metric+" (scores from "+o.ScoresFile+")"
		case choose == MethodBI:
			var err error
			if rep, _, err = m.Score(ctx, o.Calibration, o.Run, false); err != nil {
				return nil, err
			}
			method = string(MethodBI)
		default:
			var err error
			if search, err = m.Choose(ctx, choose, o.Select, o.Write.KeepSplit, o.Calibration, o.Run); err != nil {
				return nil, err
			}
			remove, method = search.Removed, string(choose)
		}
		if o.Scores == nil && o.Calibration.SelfGenerated() {
			method += " (self-calibrated)"
		}
		if rep != nil {
			var err error
			if remove, err = m.Select(rep, o.Select, o.Write.KeepSplit); err != nil {
				return nil, err
			}
		}
	}
	plan, err := m.Plan(remove, o.Write.Force)
	if err != nil {
		return nil, err
	}
	var healing *Healing
	if o.Heal {
		if o.Write.DryRun {
			// What healing would rewrite, without running it.
			runs, err := m.HealPlan(plan.Removed)
			if err != nil {
				return nil, err
			}
			healing = &Healing{Runs: runs}
		} else {
			if healing, err = m.Heal(ctx, plan.Removed, o.Calibration, o.Run, o.Ridge, o.Write.Imatrix); err != nil {
				return nil, err
			}
			for name, data := range healing.Tensors() {
				if err := plan.ReplaceData(name, data); err != nil {
					return nil, err
				}
			}
		}
	}
	// The evaluation text is checked before anything is written, so that a
	// text the evaluation refuses (too short, say) fails the run with
	// nothing written.
	if o.EvalText != nil && !o.Write.DryRun {
		if err := m.checkEvalText(o.EvalText, o.Run); err != nil {
			return nil, err
		}
	}
	res, err := m.Write(ctx, plan, o.Write)
	if err != nil {
		return nil, err
	}
	res.Method, res.Scores, res.Search, res.Heal = method, rep, search, healing
	if o.EvalText != nil && !o.Write.DryRun {
		// Input and output in one pass: perplexity of both, and the
		// output's divergence from the input.
		if res.Eval, err = Compare(ctx, Base{Model: m.Path}, res.Outputs[:1], o.EvalText, o.Run); err != nil {
			return nil, err
		}
	}
	return res, nil
}

// checkEvalText tokenizes the evaluation text with the model's vocabulary
// alone (no weights are loaded) and refuses a text too short to evaluate.
func (m *Model) checkEvalText(text *Text, o RunOptions) error {
	lm, err := llamacpp.LoadModel(m.Path, llamacpp.ModelParams{VocabOnly: true, Header: m.GGUF})
	if err != nil {
		return err
	}
	defer lm.Close()
	toks, err := text.tokens(lm, o.Chunks*o.ctx())
	if err != nil {
		return err
	}
	if n := o.ctx(); len(toks) < 2*n {
		return fmt.Errorf("%s: evaluating needs at least %d tokens (2 × context %d), the text has %d: %w", text.Name, 2*n, n, len(toks), llamacpp.ErrShortText)
	}
	return nil
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

// Package prune is ggufprune's pipeline: open a GGUF model once, score its
// blocks on calibration text, choose the blocks to remove, plan, heal and
// write the smaller model (plain, split, or quantized with its importance
// matrix), and evaluate it. Each stage's work lives in its own package
// (runner, selection, heal, eval; gguf/surgery, gguf/imatrix); this one
// chains them. The ggufprune command only parses flags, calls this package
// and prints its results.
//
// The stages are separate verbs (Open, Model.Score, Model.Select,
// Model.Choose, Model.Plan, Model.Write) that return plain values; Run
// chains them as the prune command does. Long work takes a context.Context
// and stops between chunks when it is cancelled; progress is a callback.
package prune

import (
	"context"
	"errors"
	"fmt"

	"github.com/ggufprune/ggufprune/gguf"
	"github.com/ggufprune/ggufprune/internal/atomicfile"
	"github.com/ggufprune/ggufprune/internal/units"
	"github.com/ggufprune/ggufprune/prune/eval"
	"github.com/ggufprune/ggufprune/prune/heal"
	"github.com/ggufprune/ggufprune/prune/runner"
	"github.com/ggufprune/ggufprune/prune/selection"
)

// Options say what Run does. Exactly one way of choosing blocks is given:
// Layers, or Remove/TargetSize over scores.
type Options struct {
	// Blocks to remove as given (ParseBlockList reads "3,5-7"); no scoring.
	Layers []int
	// Choose blocks by score: see Selection. Ignored with Layers.
	Select Selection
	// Experts chooses experts to remove from every mixture-of-experts
	// block by their scores (the report's, or a scoring pass on the
	// calibration); Write.Plan.Experts gives them as a list instead.
	Experts ExpertSelection
	// Method chooses the blocks (nil: selection.BI, or the report's). With
	// Scores, the report's metric must be the method's.
	Method *selection.Method
	// Where scores come from when blocks are chosen by score: a report
	// (checked against the model), else the calibration.
	Scores      *ScoreReport
	ScoresFile  string // the report's file, for the method's name
	Calibration runner.Calibration
	Run         runner.Options

	Write WriteOptions

	// Heal fits and folds the healing map of every removed run (see
	// heal.Heal) on the calibration; Ridge is its relative ridge (0:
	// chosen on held-out calibration chunks among heal.Ridges).
	Heal  bool
	Ridge float64
	// HealMaps is how many maps heal each removed run: 1, the map before
	// it only (ReplaceMe); n, also maps in the n-1 kept blocks after it
	// (heal.Options.After); 0, DefaultHealMaps.
	HealMaps int
	// HealForm is what the healing maps are fitted on (heal.Options.Form;
	// default heal.Projection).
	HealForm heal.Form
	// Compensate scales the output projections of the kept blocks after
	// every removed run not healed by the stream's lost magnitude,
	// measured on the calibration (see heal.Compensate).
	Compensate bool

	// EvalText, when not nil, is evaluated on the input before writing and
	// on the output after (perplexity).
	EvalText *runner.Text
}

// DefaultHealMaps is how many maps heal each removed run unless
// Options.HealMaps says otherwise (docs/healing.md measures 1 to 3).
const DefaultHealMaps = 2

// healAfter is heal.Options.After for Options.HealMaps.
func healAfter(maps int) int {
	if maps == 0 {
		maps = DefaultHealMaps
	}
	return maps - 1
}

// Run prunes m as Options say: choose the blocks (scoring when needed), plan
// and write the output, evaluate. Everything that can be refused is checked
// before scoring.
func Run(ctx context.Context, m *Model, o Options) (*Result, error) {
	expertsByScore := !o.Experts.empty()
	experts := len(o.Write.Plan.Experts) > 0 || expertsByScore
	if len(o.Layers) == 0 && o.Select.empty() && !experts {
		return nil, errors.New("prune: no blocks or experts given and no selection asked for")
	}
	if expertsByScore {
		if len(o.Write.Plan.Experts) > 0 {
			return nil, errors.New("prune: experts are given as a list or chosen by score, not both")
		}
		if o.Heal || o.Compensate {
			return nil, errors.New("prune: healing and compensation do not go with removing experts yet")
		}
		if o.Experts.TargetSize > 0 && !o.Select.empty() {
			return nil, errors.New("prune: a target size is reached by removing blocks or experts, not both")
		}
		if m.MoE == nil {
			return nil, fmt.Errorf("%s: %s has no experts to remove (no %s.%s)", m.Path, m.Arch, m.Arch, gguf.KeyExpertCount)
		}
		if _, err := o.Experts.metric(); err != nil {
			return nil, err
		}
		if o.Scores != nil && !o.Scores.HasExperts() {
			return nil, fmt.Errorf("%s holds no expert scores (score --experts makes them)", o.ScoresFile)
		}
		if t := o.Experts.TargetSize; t > 0 && t >= m.Size() {
			return nil, fmt.Errorf("%s is %s, already at most the target size %s (%d bytes): no expert needs to go", m.Path, units.HumanBytes(m.Size()), units.HumanBytes(t), t)
		}
	}
	// Everything that can be refused is checked before scoring, which may
	// take long, and before anything is written.
	if !o.Write.DryRun {
		if o.Write.Output != "" && m.GGUF.SameFile(o.Write.Output) {
			return nil, fmt.Errorf("%s: output would overwrite an input file", o.Write.Output)
		}
		if err := atomicfile.CheckOutput(o.Write.Output, o.Write.Overwrite); err != nil {
			return nil, err
		}
		if o.Write.ImatrixOut != "" {
			if err := atomicfile.CheckOutput(o.Write.ImatrixOut, o.Write.Overwrite); err != nil {
				return nil, err
			}
		}
	}
	if t := o.Select.TargetSize; len(o.Layers) == 0 && o.Select.Count <= 0 && t >= m.Size() {
		return nil, fmt.Errorf("%s is %s, already at most the target size %s (%d bytes): no block needs to go", m.Path, units.HumanBytes(m.Size()), units.HumanBytes(t), t)
	}
	if o.Write.Imatrix != nil {
		if err := o.Write.Imatrix.CheckModel(m.GGUF); err != nil {
			return nil, fmt.Errorf("%s: %w", o.Write.ImatrixName, err)
		}
	}
	remove := o.Layers
	var rep *ScoreReport
	var search *selection.Search
	method := MethodLayers
	if len(o.Layers) == 0 && experts && o.Select.empty() {
		method = MethodExperts
	} else if len(o.Layers) == 0 {
		if err := m.CheckSelectable(o.Write.Plan); err != nil {
			return nil, err
		}
		if o.Scores != nil {
			if err := o.Scores.Check(m); err != nil {
				return nil, err
			}
		}
		choose := o.Method
		if choose == nil {
			choose = selection.BI
			if o.Scores != nil {
				choose, _ = selection.Lookup(o.Scores.Metric)
			}
		}
		if choose == selection.Healed && !o.Heal {
			return nil, fmt.Errorf("method %s chooses the blocks that heal best: give --heal (Options.Heal) with it", choose.Name)
		}
		sel := o.Select
		sel.Sharding = o.Write.sharding()
		sel.HealMaps, sel.HealForm = o.HealMaps, o.HealForm
		switch {
		case o.Scores != nil:
			if choose.Name != o.Scores.Metric {
				return nil, fmt.Errorf("%s holds scores of metric %s, not of method %s", o.ScoresFile, o.Scores.Metric, choose.Name)
			}
			rep, method = o.Scores, o.Scores.Metric+" (scores from "+o.ScoresFile+")"
		case choose == selection.BI:
			// BI's scores come in one pass: the report is part of the result.
			var err error
			if rep, _, err = m.Score(ctx, ScoreOptions{Calibration: o.Calibration, Run: o.Run, Experts: expertsByScore}); err != nil {
				return nil, err
			}
			method = choose.Name
		default:
			var err error
			if search, err = m.Choose(ctx, choose, sel, o.Calibration, o.Run); err != nil {
				return nil, err
			}
			remove, method = search.Removed, choose.Name
		}
		if o.Scores == nil && o.Calibration.SelfGenerated() {
			method += " (self-calibrated)"
		}
		if rep != nil {
			var err error
			if remove, err = m.Select(rep, sel); err != nil {
				return nil, err
			}
		}
	}
	var expertMethod string
	if expertsByScore {
		if rep == nil && o.Scores != nil {
			if err := o.Scores.Check(m); err != nil {
				return nil, err
			}
			rep = o.Scores
		}
		if rep == nil || !rep.HasExperts() {
			var err error
			if rep, _, err = m.Score(ctx, ScoreOptions{Calibration: o.Calibration, Run: o.Run, Experts: true}); err != nil {
				return nil, err
			}
		}
		gone, err := m.SelectExperts(rep, o.Experts, remove)
		if err != nil {
			return nil, err
		}
		o.Write.Plan.Experts = gone
		metric, _ := o.Experts.metric()
		expertMethod = metric.Name
		if o.Scores != nil {
			expertMethod += " (scores from " + o.ScoresFile + ")"
		} else if o.Calibration.SelfGenerated() {
			expertMethod += " (self-calibrated)"
		}
	}
	plan, err := m.Plan(remove, o.Write.Plan)
	if err != nil {
		return nil, err
	}
	var healing *heal.Healing
	if o.Heal {
		if o.Write.DryRun {
			// What healing would rewrite, without running it.
			runs, err := heal.Plan(m.GGUF, plan.Removed, healAfter(o.HealMaps))
			if err != nil {
				return nil, err
			}
			healing = &heal.Healing{Runs: runs}
		} else {
			if healing, err = heal.Heal(ctx, m.GGUF, plan.Removed, o.Calibration, o.Run, heal.Options{Ridge: o.Ridge, After: healAfter(o.HealMaps), Form: o.HealForm, Imatrix: o.Write.Imatrix}); err != nil {
				return nil, err
			}
			for name, data := range healing.Tensors() {
				if err := plan.ReplaceData(name, data); err != nil {
					return nil, err
				}
			}
		}
	}
	var comp *heal.Compensation
	if o.Compensate {
		if len(plan.Removed) == 0 {
			return nil, errors.New("prune: --compensate needs blocks removed")
		}
		healed := map[int]bool{}
		if healing != nil {
			for _, r := range healing.Runs {
				if len(r.Tensors) > 0 || len(r.After) > 0 {
					healed[r.First] = true
				}
			}
		}
		if o.Write.DryRun {
			cuts, tensors, err := heal.PlanCompensation(m.GGUF, plan.Removed, healed)
			if err != nil {
				return nil, err
			}
			comp = &heal.Compensation{Cuts: cuts, Tensors: tensors}
		} else {
			var data map[string][]byte
			if healing != nil {
				data = healing.Tensors()
			}
			comp, err = heal.Compensate(ctx, m.GGUF, plan.Removed, o.Calibration, o.Run, heal.CompensateOptions{Healed: healed, Data: data, Imatrix: o.Write.Imatrix})
			if err != nil {
				return nil, err
			}
			for name, d := range comp.Data() {
				if err := plan.ReplaceData(name, d); err != nil {
					return nil, err
				}
			}
		}
	}
	// The evaluation text is checked before anything is written, so that a
	// text the evaluation refuses (too short, say) fails the run with
	// nothing written.
	if o.EvalText != nil && !o.Write.DryRun {
		if err := eval.CheckText(m.Path, m.GGUF, o.EvalText, o.Run); err != nil {
			return nil, err
		}
	}
	res, err := m.Write(ctx, plan, o.Write)
	if err != nil {
		return nil, err
	}
	res.Method, res.Scores, res.Search, res.Heal, res.ExpertMethod = method, rep, search, healing, expertMethod
	res.Compensation = comp
	if healing != nil {
		res.Warnings = append(res.Warnings, healing.Warnings...)
	}
	if o.EvalText != nil && !o.Write.DryRun {
		// Input and output in one pass: perplexity of both, and the
		// output's divergence from the input.
		if res.Eval, err = eval.Compare(ctx, eval.Base{Model: m.Path}, res.Outputs[:1], o.EvalText, o.Run); err != nil {
			return nil, err
		}
	}
	return res, nil
}

// MethodLayers is Result.Method when the blocks were given, and
// MethodExperts when only experts were (Options.Write.Plan.Experts).
const (
	MethodLayers  = "layers"
	MethodExperts = "experts"
)

// Package frontier answers which is better at a given size, quantizing
// harder or removing blocks (and experts): it builds a grid of real files
// (blocks removed by BI × experts removed × quantization type), compares
// each with the original in one pass over an evaluation text (size,
// perplexity, KL divergence, same top token) and measures its speed, and
// marks the Pareto front of size against KL divergence.
//
// It chains the prune pipeline (Model.Score, Select, Run; Quantize) and
// the measurements of prune/eval (Compare with the original as the base,
// whose log-probabilities serve every candidate; Speed), and returns plain
// values; the frontier command prints them.
package frontier

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/ggufprune/ggufprune/gguf/imatrix"
	"github.com/ggufprune/ggufprune/gguf/surgery"
	"github.com/ggufprune/ggufprune/internal/atomicfile"
	"github.com/ggufprune/ggufprune/llamacpp"
	"github.com/ggufprune/ggufprune/prune"
	"github.com/ggufprune/ggufprune/prune/eval"
	"github.com/ggufprune/ggufprune/prune/runner"
	"github.com/ggufprune/ggufprune/prune/selection"
)

// Options say which grid Run builds and how it measures it. EvalText is
// required; the zero value of every other field works.
type Options struct {
	// Types are the quantization types, by llama-quantize's names (none:
	// DefaultTypes). A type the model's tensors cannot take, or one that
	// needs an importance matrix when there is none, is skipped with the
	// reason (Grid.Skipped). COPY keeps the tensors as they are.
	Types []string
	// Remove are the numbers of blocks to remove, lowest BI first on the
	// calibration (0: the model unpruned; none: {0}). Protect keeps blocks.
	Remove  []int
	Protect selection.Protect
	// Heal adds, for every count of blocks above 0, the same removal healed
	// (prune.Options.Heal) on the calibration, Ridge its relative ridge.
	Heal  bool
	Ridge float64
	// Experts are the numbers of experts to remove from every MoE block
	// (0: none; none given: {0}), the lowest by ExpertMetric (a
	// bi.ExpertMetrics name; "": prune.DefaultExpertMetric), scored in the
	// same pass as the blocks (prune.Model.SelectExperts); blocks removed
	// lose none.
	Experts      []int
	ExpertMetric string

	// Calibration scores the blocks, heals, and (without Imatrix) gives the
	// importance matrix collected in the same pass.
	Calibration runner.Calibration
	// EvalText is the text every candidate is compared with the original on.
	EvalText *runner.Text
	// Run says how models run: context, chunks (of the calibration and of
	// the evaluation text), threads, progress of each pass.
	Run runner.Options

	// Imatrix is the input model's importance matrix (ImatrixName its
	// file), pruned with each level and used by every quantization. Without
	// it, one is collected in the scoring pass, unless NoImatrix.
	Imatrix     *imatrix.Matrix
	ImatrixName string
	NoImatrix   bool

	// Keep is a folder that keeps the candidate files (MODEL-r2-Q4_K_M.gguf,
	// each with a FILE.gguf.json sidecar saying how it was made), the scores
	// and the computed importance matrix; a rerun with the same folder reuses
	// whatever was made from the same model the same way. Without it the
	// files are temporary files in WorkDir (default os.TempDir()), removed
	// when Run returns.
	Keep    string
	WorkDir string

	// Speed says how each file's speed is measured (eval.Speed); NoSpeed
	// measures none.
	Speed   eval.SpeedOptions
	NoSpeed bool

	// TargetSize, when above 0, makes Run recommend the candidate of lowest
	// KL divergence that is at most this many bytes.
	TargetSize int64
	// PerPass is how many candidates run beside the base in one comparison
	// pass (0: all): every candidate's model is loaded for its pass, so a
	// grid of large models may need several, each running the base again.
	PerPass int

	// Progress, when not nil, is told of every step (see Event).
	Progress func(Event)
}

// Stage is a stage of Run.
type Stage string

const (
	StageScore   Stage = "scoring"   // the scoring pass (BI and the importance matrix)
	StageMake    Stage = "making"    // a candidate file written (or reused from Keep)
	StageCompare Stage = "comparing" // the comparison pass(es)
	StageSpeed   Stage = "speed"     // a speed test of the base or a candidate
)

// Event is a step of Run, for progress.
type Event struct {
	Stage       Stage
	Done, Total int           // steps of the stage done, and in all
	Spec        *Spec         // the candidate of the step (nil: the base, or the whole stage)
	File        string        // its file
	Reused      bool          // a kept file (or the kept scores) reused, not made
	Took        time.Duration // this step
	Left        time.Duration // the rest of the stage, estimated from its steps so far (0: none left or no estimate yet)
}

// Result is a measured grid.
type Result struct {
	Model       string      `json:"model"`
	Calibration string      `json:"calibration"`
	EvalText    string      `json:"eval"`
	Ctx         int         `json:"ctx"`
	Tokens      int         `json:"tokens"`  // evaluation tokens scored
	Imatrix     string      `json:"imatrix"` // what guided the quantizations
	Base        Base        `json:"base"`
	Candidates  []Candidate `json:"candidates"` // by size, then KL divergence
	Skipped     []Skip      `json:"skipped,omitempty"`
	TargetSize  int64       `json:"target_size,omitempty"`
	// Recommended is the candidate of lowest KL divergence that fits
	// TargetSize (nil without one, or when none fits).
	Recommended *Candidate `json:"recommended,omitempty"`
	Seconds     float64    `json:"seconds"`
}

// Base is the original model, as measured beside the candidates.
type Base struct {
	Bytes int64   `json:"bytes"`
	PPL   float64 `json:"ppl"`
	PPTPS float64 `json:"pp_tps,omitempty"`
	TGTPS float64 `json:"tg_tps,omitempty"`
}

// Candidate is one measured file of the grid.
type Candidate struct {
	Spec
	Bytes   int64   `json:"bytes"`
	PPL     float64 `json:"ppl"`
	KLD     float64 `json:"kld"` // mean KL divergence from the original's next-token distribution
	KLDErr  float64 `json:"kld_err"`
	SameTop float64 `json:"same_top"` // share of tokens whose most likely next token is the original's (0 to 1)
	PPTPS   float64 `json:"pp_tps,omitempty"`
	TGTPS   float64 `json:"tg_tps,omitempty"`
	// Pareto: no other candidate is at most as large and at most as far
	// from the original (KLD), and better in one of the two.
	Pareto bool   `json:"pareto"`
	File   string `json:"file,omitempty"` // where it is kept (Options.Keep)
	Reused bool   `json:"reused,omitempty"`
}

// Run builds the grid Options ask for on m and measures it: one scoring
// pass on the calibration (BI, and the importance matrix unless one is
// given), each candidate written (pruned through prune.Run, quantized with
// llama.cpp's quantizer), the original and every candidate compared in one
// pass over the evaluation text (eval.Compare: the original's
// log-probabilities of a chunk serve every candidate), and each file's speed
// (eval.Speed). It stops between steps when ctx is cancelled; temporary
// files are removed whatever ends it, finished files in Keep stay.
func Run(ctx context.Context, m *prune.Model, o Options) (*Result, error) {
	start := time.Now()
	g, err := NewGrid(m, o)
	if err != nil {
		return nil, err
	}
	fp, err := m.Fingerprint()
	if err != nil {
		return nil, err
	}
	work := o.WorkDir
	switch {
	case o.Keep != "":
		work = o.Keep
	case work == "":
		work = os.TempDir()
	}
	var temps []*atomicfile.Pending
	defer func() {
		for _, t := range temps {
			t.Abort()
		}
	}()
	// temp reserves a temporary file's name in work for a file written by
	// name (the pruned model, a quantized candidate), removed when Run
	// returns or when the process is stopped (atomicfile.Shutdown).
	temp := func(prefix string) (*atomicfile.Pending, error) {
		t, err := atomicfile.Temp(work, prefix)
		if err != nil {
			return nil, err
		}
		t.CloseFile()
		temps = append(temps, t)
		return t, nil
	}
	emit := func(e Event) {
		if o.Progress != nil {
			o.Progress(e)
		}
	}

	// The scoring pass: BI for every count of blocks, and the importance
	// matrix.
	im, imName := o.Imatrix, o.ImatrixName
	var rep *prune.ScoreReport
	if g.Cost.ScoringPasses > 0 {
		key := scoreKey{Fingerprint: fp, Calibration: o.Calibration.String(), Ctx: o.Run.CtxSize(), Chunks: o.Run.Chunks, Imatrix: o.computesImatrix(), Experts: o.needExperts()}
		var cim *imatrix.Matrix
		t0 := time.Now()
		reused := false
		if o.Keep != "" {
			rep, cim = readScores(o.Keep, m, key)
			reused = rep != nil
		}
		if rep == nil {
			if rep, cim, err = m.Score(ctx, prune.ScoreOptions{Calibration: o.Calibration, Run: o.Run, Imatrix: key.Imatrix, Experts: key.Experts}); err != nil {
				return nil, err
			}
			if o.Keep != "" {
				if err := writeScores(o.Keep, m, key, rep, cim); err != nil {
					return nil, err
				}
			}
		}
		if key.Imatrix {
			im, imName = cim, "computed on "+o.Calibration.String()
			if o.Keep != "" {
				imName = ImatrixFile(o.Keep, m.Path)
			}
		}
		emit(Event{Stage: StageScore, Done: 1, Total: 1, Reused: reused, Took: time.Since(t0)})
	}
	imSource := o.imatrixSource()

	// The blocks (and experts) of every level.
	specs := slices.Clone(g.Candidates)
	type levelWork struct {
		removed []int
		experts map[int][]int
	}
	levels := map[Level]levelWork{}
	for _, l := range g.Levels {
		lw := levelWork{removed: []int{}} // [] in JSON, not null
		if l.Blocks > 0 {
			if lw.removed, err = m.Select(rep, prune.Selection{Count: l.Blocks, Protect: o.Protect}); err != nil {
				return nil, fmt.Errorf("removing %d blocks: %w", l.Blocks, err)
			}
		}
		if l.Experts > 0 {
			if lw.experts, err = m.SelectExperts(rep, prune.ExpertSelection{Count: l.Experts, Metric: o.ExpertMetric}, lw.removed); err != nil {
				return nil, fmt.Errorf("removing %d experts: %w", l.Experts, err)
			}
		}
		levels[l] = lw
	}
	for i := range specs {
		lw := levels[specs[i].Level]
		specs[i].Removed, specs[i].ExpertsRemoved = lw.removed, lw.experts
	}

	// The files, level by level: each level is pruned once (into a
	// temporary file), then quantized to every type.
	files := make([]string, len(specs))
	reused := make([]bool, len(specs))
	done, made := 0, 0
	var makeTime time.Duration
	for _, l := range g.Levels {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		lw := levels[l]
		healing := ""
		if l.Healed {
			healing = fmt.Sprintf("%s (ctx %d, chunks %d, ridge %g)", o.Calibration.String(), o.Run.CtxSize(), o.Run.Chunks, o.Ridge)
		}
		var todo []int
		for i, s := range specs {
			if s.Level != l {
				continue
			}
			if o.Keep != "" {
				path := filepath.Join(o.Keep, s.FileName(m.Path))
				if reusable(path, sidecar{Fingerprint: fp, Spec: s, Imatrix: imSource, Healing: healing}) {
					files[i], reused[i] = path, true
					done++
					emit(Event{Stage: StageMake, Done: done, Total: len(specs), Spec: &specs[i], File: path, Reused: true})
					continue
				}
			}
			todo = append(todo, i)
		}
		if len(todo) == 0 {
			continue
		}
		t0 := time.Now()
		src, srcIm := m.Path, im
		var pruned *atomicfile.Pending
		if l.pruned() {
			if pruned, err = temp("." + strings.TrimSuffix(specs[todo[0]].FileName(m.Path), "-"+specs[todo[0]].Type+".gguf") + ".pruned-"); err != nil {
				return nil, err
			}
			po := prune.Options{Layers: lw.removed, Heal: l.Healed, Ridge: o.Ridge, Calibration: o.Calibration, Run: o.Run,
				Write: prune.WriteOptions{Output: pruned.Name(), Overwrite: true, Plan: surgery.Options{Experts: lw.experts}}}
			po.Write.Imatrix, po.Write.ImatrixName = im, imName // healing requantizes weighted by it
			if _, err := prune.Run(ctx, m, po); err != nil {
				return nil, err
			}
			src, srcIm = pruned.Name(), nil
			if im != nil {
				// The imatrix of the pruned file: the removed experts' rows
				// dropped, the removed blocks' entries dropped and the rest
				// renumbered.
				plan, err := m.Plan(lw.removed, surgery.Options{Experts: lw.experts})
				if err != nil {
					return nil, err
				}
				srcIm = im
				if lw.experts != nil {
					if srcIm, err = srcIm.DropExperts(lw.experts); err != nil {
						return nil, fmt.Errorf("%s: %w", imName, err)
					}
				}
				if srcIm, err = srcIm.Prune(plan.Map); err != nil {
					return nil, fmt.Errorf("%s: %w", imName, err)
				}
			}
		}
		for n, i := range todo {
			if err := ctx.Err(); err != nil {
				return nil, err
			}
			if n > 0 {
				t0 = time.Now()
			}
			s := specs[i]
			q, _ := llamacpp.LookupQuantType(s.Type)
			out := ""
			if o.Keep != "" {
				out = filepath.Join(o.Keep, s.FileName(m.Path))
			} else {
				t, err := temp("." + strings.TrimSuffix(s.FileName(m.Path), ".gguf") + "-")
				if err != nil {
					return nil, err
				}
				out = t.Name()
			}
			if o.Keep != "" {
				// A sidecar left from another make of this name must not
				// describe the new file if this one is stopped midway.
				if err := os.Remove(sidecarPath(out)); err != nil && !errors.Is(err, os.ErrNotExist) {
					return nil, err
				}
			}
			p := llamacpp.QuantizeParams{Type: q, Threads: o.Run.Threads, Imatrix: srcIm, ImatrixName: imName}
			if _, err := prune.Quantize(src, out, prune.QuantizeOptions{Params: p, Overwrite: true}); err != nil {
				return nil, err
			}
			if o.Keep != "" {
				if err := writeSidecar(out, sidecar{Model: m.Path, Fingerprint: fp, Spec: s, Imatrix: imSource, Healing: healing}); err != nil {
					return nil, err
				}
			}
			files[i] = out
			done++
			made++
			took := time.Since(t0)
			makeTime += took
			emit(Event{Stage: StageMake, Done: done, Total: len(specs), Spec: &specs[i], File: out, Took: took,
				Left: makeTime / time.Duration(made) * time.Duration(len(specs)-done)})
		}
		if pruned != nil {
			pruned.Abort() // every type is made: the disk space goes back now
		}
	}

	// One comparison pass (or PerPass candidates a pass).
	per := o.PerPass
	if per <= 0 {
		per = len(files)
	}
	res := &Result{Model: m.Path, Calibration: o.Calibration.String(), EvalText: o.EvalText.Name, Ctx: o.Run.CtxSize(),
		Imatrix: imSource, Skipped: g.Skipped, TargetSize: o.TargetSize, Base: Base{Bytes: m.Size()}}
	cands := make([]Candidate, len(specs))
	passes := (len(files) + per - 1) / per
	for p := 0; p < passes; p++ {
		t0 := time.Now()
		lo, hi := p*per, min((p+1)*per, len(files))
		rs, err := eval.Compare(ctx, eval.Base{Model: m.Path}, files[lo:hi], o.EvalText, o.Run)
		if err != nil {
			return nil, err
		}
		if p == 0 {
			res.Base.PPL, res.Tokens = rs[0].PPL, rs[0].Tokens
		}
		for j, r := range rs[1:] {
			i := lo + j
			st, err := os.Stat(files[i])
			if err != nil {
				return nil, err
			}
			c := Candidate{Spec: specs[i], Bytes: st.Size(), PPL: r.PPL, Reused: reused[i]}
			if r.KLD != nil {
				c.KLD, c.KLDErr, c.SameTop = r.KLD.KLD, r.KLD.KLDErr, r.KLD.SameTop
			}
			if o.Keep != "" {
				c.File = files[i]
			}
			cands[i] = c
		}
		emit(Event{Stage: StageCompare, Done: p + 1, Total: passes, Took: time.Since(t0),
			Left: time.Since(t0) * time.Duration(passes-p-1)})
	}

	// Speed: the base, then every candidate.
	if !o.NoSpeed {
		var speedTime time.Duration
		total := len(files) + 1
		for k := 0; k < total; k++ {
			t0 := time.Now()
			path, spec := m.Path, (*Spec)(nil)
			if k > 0 {
				path, spec = files[k-1], &specs[k-1]
			}
			sp, err := eval.Speed(ctx, path, o.Speed, o.Run)
			if err != nil {
				return nil, err
			}
			if k == 0 {
				res.Base.PPTPS, res.Base.TGTPS = sp.PromptTPS, sp.GenTPS
			} else {
				cands[k-1].PPTPS, cands[k-1].TGTPS = sp.PromptTPS, sp.GenTPS
			}
			took := time.Since(t0)
			speedTime += took
			emit(Event{Stage: StageSpeed, Done: k + 1, Total: total, Spec: spec, File: path, Took: took,
				Left: speedTime / time.Duration(k+1) * time.Duration(total-k-1)})
		}
	}

	slices.SortStableFunc(cands, func(a, b Candidate) int {
		return cmp.Or(cmp.Compare(a.Bytes, b.Bytes), cmp.Compare(a.KLD, b.KLD))
	})
	MarkPareto(cands)
	if o.TargetSize > 0 {
		res.Recommended = Recommend(cands, o.TargetSize)
	}
	res.Candidates = cands
	res.Seconds = time.Since(start).Seconds()
	return res, nil
}

// imatrixSource says what guides the quantizations, in results and
// sidecars: a given file, one computed on the calibration, or none.
func (o Options) imatrixSource() string {
	switch {
	case o.Imatrix != nil:
		return "file " + o.ImatrixName
	case o.NoImatrix:
		return "none"
	}
	return fmt.Sprintf("computed on %s (ctx %d, chunks %d)", o.Calibration.String(), o.Run.CtxSize(), o.Run.Chunks)
}

// MarkPareto sets Pareto on the candidates on the front of size against KL
// divergence: those that no other candidate dominates (at most as large,
// at most as far from the original, and better in one). Candidates of
// equal size and KL divergence are both on it or both off. The order of
// cs does not matter.
func MarkPareto(cs []Candidate) {
	order := make([]int, len(cs))
	for i := range order {
		order[i] = i
	}
	slices.SortFunc(order, func(a, b int) int {
		return cmp.Or(cmp.Compare(cs[a].Bytes, cs[b].Bytes), cmp.Compare(cs[a].KLD, cs[b].KLD))
	})
	// Sweep by size: a candidate is on the front when its divergence is
	// the lowest of its size and below that of every smaller file.
	best := 0.0
	first := true
	for i := 0; i < len(order); {
		j := i
		for j < len(order) && cs[order[j]].Bytes == cs[order[i]].Bytes {
			j++
		}
		low := cs[order[i]].KLD // the lowest of this size (sorted)
		for _, k := range order[i:j] {
			cs[k].Pareto = cs[k].KLD == low && (first || low < best)
		}
		if first || low < best {
			best, first = low, false
		}
		i = j
	}
}

// Recommend is the candidate of lowest KL divergence at most target bytes
// (the smaller of a tie), or nil when none is that small. It is on the
// Pareto front.
func Recommend(cs []Candidate, target int64) *Candidate {
	var best *Candidate
	for i := range cs {
		c := &cs[i]
		if c.Bytes > target {
			continue
		}
		if best == nil || c.KLD < best.KLD || (c.KLD == best.KLD && c.Bytes < best.Bytes) {
			best = c
		}
	}
	if best == nil {
		return nil
	}
	r := *best
	return &r
}

package prune

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"os"
	"slices"
	"strings"

	"github.com/ggufprune/ggufprune/bi"
	"github.com/ggufprune/ggufprune/gguf"
	"github.com/ggufprune/ggufprune/gguf/blocks"
	"github.com/ggufprune/ggufprune/gguf/imatrix"
	"github.com/ggufprune/ggufprune/internal/atomicfile"
	"github.com/ggufprune/ggufprune/internal/inputfile"
	"github.com/ggufprune/ggufprune/llamacpp"
	"github.com/ggufprune/ggufprune/llamacpp/arch"
	"github.com/ggufprune/ggufprune/prune/runner"
	"github.com/ggufprune/ggufprune/prune/selection"
)

// ScoreReport is the scores of every block of a model, as the score command
// prints it with --json and as prune --scores reads it back.
type ScoreReport struct {
	Model       string          `json:"model"`
	Fingerprint string          `json:"fingerprint"`
	Metric      string          `json:"metric"`
	Calibration string          `json:"calibration"`
	Tokens      int64           `json:"tokens"`
	Ctx         int             `json:"ctx"`
	Chunks      int             `json:"chunks"`
	Blocks      []bi.BlockScore `json:"blocks"`
	// Experts are the expert scores of every mixture-of-experts block
	// (score --experts), measured in the same pass.
	Experts []bi.BlockExperts `json:"experts,omitempty"`

	// lossGiven says, for a report read from JSON, which blocks carry a
	// loss: decoding gives 0 for a loss that is absent (see check).
	lossGiven []bool
}

// UnmarshalJSON reads a report as WriteFile writes it, and notes which
// blocks carry a loss.
func (r *ScoreReport) UnmarshalJSON(b []byte) error {
	type plain ScoreReport // without this method
	var p plain
	if err := json.Unmarshal(b, &p); err != nil {
		return err
	}
	var given struct {
		Blocks []struct {
			Loss *float64 `json:"loss"`
		} `json:"blocks"`
	}
	if err := json.Unmarshal(b, &given); err != nil {
		return err
	}
	*r = ScoreReport(p)
	r.lossGiven = make([]bool, len(given.Blocks))
	for i, g := range given.Blocks {
		r.lossGiven[i] = g.Loss != nil
	}
	return nil
}

// method is the selection method whose scores the report holds.
func (r *ScoreReport) method() (*selection.Method, error) {
	m, ok := selection.Lookup(r.Metric)
	if !ok || m.Key == nil {
		return nil, fmt.Errorf("not a score file of ggufprune (metric %q, %d blocks)", r.Metric, len(r.Blocks))
	}
	return m, nil
}

// ScoreOptions say how Score scores.
type ScoreOptions struct {
	Calibration runner.Calibration
	Run         runner.Options
	// Imatrix also collects, in the same pass, the importance matrix
	// llama.cpp's llama-imatrix would.
	Imatrix bool
	// Experts also scores every expert of every mixture-of-experts block
	// (bi.ExpertScore), in the same pass.
	Experts bool
}

// Score runs the model on the calibration and scores every block it runs
// (BI and angular distance), and collects an importance matrix when asked.
func (m *Model) Score(ctx context.Context, so ScoreOptions) (*ScoreReport, *imatrix.Matrix, error) {
	cal, o := so.Calibration, so.Run
	fp, err := m.Fingerprint()
	if err != nil {
		return nil, nil, err
	}
	lm, err := m.load(o)
	if err != nil {
		return nil, nil, err
	}
	defer lm.Close()
	chunks, _, err := runner.CalibrationChunks(ctx, lm, cal, o)
	if err != nil {
		return nil, nil, err
	}
	lctx, err := runner.NewContext(lm, runner.Options{Ctx: o.Ctx, Threads: o.Threads}, runner.Capture)
	if err != nil {
		return nil, nil, err
	}
	defer lctx.Close()
	acc := bi.NewAccumulator(lm.Info().RunBlocks())
	if err := lctx.CaptureHidden(acc.Observe); err != nil {
		return nil, nil, err
	}
	// Scores need hidden states only: the output head is not computed.
	if err := lctx.SetNoHead(true); err != nil {
		return nil, nil, err
	}
	var imAcc *imatrix.Accumulator
	if so.Imatrix {
		imAcc = imatrix.NewAccumulator()
		if err := lctx.CaptureMatmul(imAcc.Observe); err != nil {
			return nil, nil, err
		}
	}
	var expAcc *bi.ExpertAccumulator
	if so.Experts {
		if m.MoE == nil {
			return nil, nil, fmt.Errorf("%s: %s has no experts to score (no %s.%s)", m.Path, m.Arch, m.Arch, gguf.KeyExpertCount)
		}
		expAcc = bi.NewExpertAccumulator()
		if err := lctx.CaptureExperts(expAcc.Observe); err != nil {
			return nil, nil, err
		}
	}
	if err := llamacpp.Scan(ctx, lctx, chunks, o.ProgressFunc("scoring", "chunks", o.CtxSize())); err != nil {
		return nil, nil, err
	}
	if err := acc.Err(); err != nil {
		return nil, nil, err
	}
	rep := &ScoreReport{
		Model: m.Path, Fingerprint: fp, Metric: selection.BI.Name, Calibration: cal.String(),
		Tokens: acc.Tokens(), Ctx: o.CtxSize(), Chunks: len(chunks), Blocks: acc.Scores(),
	}
	if expAcc != nil {
		if err := expAcc.Err(); err != nil {
			return nil, nil, fmt.Errorf("%s: %w", m.Path, err)
		}
		rep.Experts = expAcc.Scores()
		if err := rep.checkExperts(m); err != nil {
			return nil, nil, fmt.Errorf("%s: scoring experts: %w", m.Path, err)
		}
	}
	var im *imatrix.Matrix
	if imAcc != nil {
		im = imAcc.Matrix(cal.String(), len(chunks), o.CtxSize())
	}
	return rep, im, nil
}

// Ranks gives each block its rank by the report's metric, 1 for the lowest
// (most redundant).
func (r *ScoreReport) Ranks() map[int]int {
	rank := make(map[int]int, len(r.Blocks))
	m, err := r.method()
	if err != nil {
		return rank
	}
	for i, b := range selection.Rank(r.Blocks, m.Key) {
		rank[b] = i + 1
	}
	return rank
}

// WriteFile writes the report as indented JSON, atomically.
func (r *ScoreReport) WriteFile(path string) error {
	return atomicfile.Write(path, func(f *os.File) error {
		enc := json.NewEncoder(f)
		enc.SetIndent("", "  ")
		return enc.Encode(r)
	})
}

// ReadScoreReport reads a score report and checks that it was made for m.
func ReadScoreReport(path string, m *Model) (*ScoreReport, error) {
	// A report holds at most arch.MaxLayers block entries of an index and
	// three numbers (under 200 bytes each as the score command indents them)
	// and a header of a few paths: well under 1 MiB. 32 KiB a block leaves
	// room for any formatting a person or a tool may give it, and bounds what
	// a wrong file (a model, a log) costs before it is refused.
	const maxBytes = arch.MaxLayers * 32 << 10 // 16 MiB
	b, err := inputfile.ReadAll(path, maxBytes)
	if err != nil {
		if errors.Is(err, inputfile.ErrTooLarge) {
			return nil, fmt.Errorf("%w (a score report of %d blocks at most)", err, arch.MaxLayers)
		}
		return nil, err
	}
	var rep ScoreReport
	if err := json.Unmarshal(b, &rep); err != nil {
		return nil, fmt.Errorf("%s: not a score JSON file: %w", path, err)
	}
	if err := rep.check(m); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return &rep, nil
}

// Check checks that the report was made for m (by fingerprint) and holds
// one well-formed score per scored block.
func (r *ScoreReport) Check(m *Model) error { return r.check(m) }

func (r *ScoreReport) check(m *Model) error {
	method, err := r.method()
	if err != nil || len(r.Blocks) == 0 {
		return fmt.Errorf("not a score file of ggufprune (metric %q, %d blocks)", r.Metric, len(r.Blocks))
	}
	fp, err := m.Fingerprint()
	if err != nil {
		return err
	}
	if r.Fingerprint != fp {
		return fmt.Errorf("the scores were made for another model (%s, fingerprint %.12s…), not for %s (%.12s…)", r.Model, r.Fingerprint, m.Path, fp)
	}
	for i, s := range r.Blocks {
		if s.Index != i {
			return fmt.Errorf("block entry %d is malformed (index %d)", i, s.Index)
		}
		if err := checkBlockScore(s); err != nil {
			return fmt.Errorf("block %d: %w", i, err)
		}
	}
	if err := r.checkLosses(method); err != nil {
		return err
	}
	if len(r.Experts) > 0 {
		if err := r.checkExperts(m); err != nil {
			return err
		}
	}
	if scored := m.ScoredBlocks(); len(r.Blocks) != scored {
		return fmt.Errorf("%d block scores for a model of %d scored blocks", len(r.Blocks), scored)
	}
	return nil
}

// checkBlockScore refuses scores no measurement gives: BI is 1 minus a mean
// of cosines, in [0, 2]; the angular distance a mean of arccos/π, in [0, 1]
// (bi.Cosine clamps to [-1, 1], and a mean of such values stays in range
// in float64); a loss, when there is one, is a finite mean.
func checkBlockScore(s bi.BlockScore) error {
	switch {
	case !(s.BI >= 0 && s.BI <= 2):
		return fmt.Errorf("BI %g is not in [0, 2]", s.BI)
	case !(s.Angular >= 0 && s.Angular <= 1):
		return fmt.Errorf("angular distance %g is not in [0, 1]", s.Angular)
	case math.IsNaN(s.Loss) || math.IsInf(s.Loss, 0):
		return fmt.Errorf("loss %g is not a finite number", s.Loss)
	}
	return nil
}

// checkLosses refuses a report of a metric that ranks by loss (ppl, kld)
// whose blocks carry no loss: read as 0, every block would tie and the
// ties, not the scores, would choose. A mean NLL is never 0 (every scored
// token would have probability 1), so every block of a ppl report must
// carry one. A KL divergence is exactly 0 for a block that changes nothing
// when skipped (an identity block), and the report leaves such a loss out
// (bi.BlockScore's omitempty): a kld report may omit some, but not all. A
// report built in memory (not read) is not checked.
func (r *ScoreReport) checkLosses(method *selection.Method) error {
	if method.Loss == selection.NoLoss || r.lossGiven == nil {
		return nil
	}
	var missing []int
	for i := range r.Blocks {
		if i >= len(r.lossGiven) || !r.lossGiven[i] {
			missing = append(missing, i)
		}
	}
	switch {
	case len(missing) == len(r.Blocks):
		return fmt.Errorf("a %s score report whose blocks carry no loss (%s ranks by loss)", r.Metric, r.Metric)
	case len(missing) > 0 && method.Loss == selection.NLL:
		return fmt.Errorf("a %s score report with no loss for block %d (%d of its %d blocks carry none; %s ranks by loss)", r.Metric, missing[0], len(missing), len(r.Blocks), r.Metric)
	}
	return nil
}

// ScoreLoss scores every block by the calibration loss of the model with
// that block skipped (a method that ranks by loss: selection.PPL, mean NLL;
// selection.KLDMethod, KL divergence from the whole model), beside its BI
// and angular distance. Protected blocks are measured too.
func (m *Model) ScoreLoss(ctx context.Context, method *selection.Method, cal runner.Calibration, o runner.Options) (*ScoreReport, error) {
	if method.Loss == selection.NoLoss || method.Key == nil {
		return nil, fmt.Errorf("method %s has no scores by loss (one of %s)", method.Name, strings.Join(lossScores(), ", "))
	}
	fp, err := m.Fingerprint()
	if err != nil {
		return nil, err
	}
	meas, err := selection.NewMeasurer(ctx, m.Path, m.GGUF, cal, o)
	if err != nil {
		return nil, err
	}
	defer meas.Close()
	scores, err := meas.BI(ctx, nil)
	if err != nil {
		return nil, err
	}
	for i := range scores {
		if scores[i].Loss, err = meas.Loss(ctx, []int{i}, method.Loss); err != nil {
			return nil, err
		}
	}
	return &ScoreReport{Model: m.Path, Fingerprint: fp, Metric: method.Name, Calibration: cal.String(),
		Tokens: meas.Tokens(), Ctx: o.CtxSize(), Chunks: meas.Chunks(), Blocks: scores}, nil
}

// lossScores are the methods whose scores ScoreLoss measures.
func lossScores() []string {
	var out []string
	for _, m := range selection.Methods() {
		if m.Loss != selection.NoLoss && m.Key != nil {
			out = append(out, m.Name)
		}
	}
	return out
}

// checkExperts checks that the report's expert scores are those of m's
// mixture-of-experts blocks: one entry per MoE block, in order, each with
// a well-formed score per expert.
func (r *ScoreReport) checkExperts(m *Model) error {
	if m.MoE == nil {
		return fmt.Errorf("expert scores for a model without experts")
	}
	// A decode runs every MoE block but the multi-token-prediction ones.
	var run []int
	for _, b := range m.MoE.MoEBlocks {
		if !slices.Contains(m.MTPBlocks(), b) {
			run = append(run, b)
		}
	}
	if len(r.Experts) != len(run) {
		return fmt.Errorf("expert scores of %d blocks, but the model runs %d mixture-of-experts blocks %s", len(r.Experts), len(run), blocks.FormatList(run))
	}
	for i, be := range r.Experts {
		if be.Block != run[i] {
			return fmt.Errorf("expert scores of block %d, where the model's mixture-of-experts block %d is expected", be.Block, run[i])
		}
		if err := be.Check(m.MoE.Experts); err != nil {
			return err
		}
	}
	return nil
}

// HasExperts reports whether the report holds expert scores.
func (r *ScoreReport) HasExperts() bool { return len(r.Experts) > 0 }

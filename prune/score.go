package prune

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"os"
	"sort"

	"github.com/ggufprune/ggufprune/bi"
	"github.com/ggufprune/ggufprune/gguf"
	"github.com/ggufprune/ggufprune/internal/atomicfile"
	"github.com/ggufprune/ggufprune/llamacpp"
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
}

// MetricBI is ScoreReport.Metric of Block Influence scores. A report of
// metric "ppl" or "kld" (ScoreLoss) also holds each block's loss.
const MetricBI = "bi"

// key is what the report's blocks are ranked by.
func (r *ScoreReport) key() bi.Key {
	if r.Metric == MetricBI {
		return bi.ByBI
	}
	return bi.ByLoss
}

// SelfCalibrationChunks is how many chunks of text a model writes for its
// own calibration when RunOptions.Chunks does not say.
const SelfCalibrationChunks = 8

// Score runs the model on the calibration and scores every block it runs
// (BI and angular distance). With imatrix it also collects, in the same
// pass, the importance matrix llama.cpp's llama-imatrix would.
func (m *Model) Score(ctx context.Context, cal Calibration, o RunOptions, imatrix bool) (*ScoreReport, *gguf.Imatrix, error) {
	fp, err := m.Fingerprint()
	if err != nil {
		return nil, nil, err
	}
	lm, err := m.load(o)
	if err != nil {
		return nil, nil, err
	}
	defer lm.Close()
	chunks, _, err := calibrationChunks(ctx, lm, cal, o)
	if err != nil {
		return nil, nil, err
	}
	lctx, err := lm.NewContext(llamacpp.ContextParams{NCtx: o.ctx(), Threads: o.Threads, Capture: true})
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
	var imAcc *gguf.ImatrixAccumulator
	if imatrix {
		imAcc = gguf.NewImatrixAccumulator()
		if err := lctx.CaptureMatmul(imAcc.Observe); err != nil {
			return nil, nil, err
		}
	}
	if err := llamacpp.Scan(ctx, lctx, chunks, o.progress("scoring", "chunks", o.ctx())); err != nil {
		return nil, nil, err
	}
	if err := acc.Err(); err != nil {
		return nil, nil, err
	}
	rep := &ScoreReport{
		Model: m.Path, Fingerprint: fp, Metric: MetricBI, Calibration: cal.String(),
		Tokens: acc.Tokens(), Ctx: o.ctx(), Chunks: len(chunks), Blocks: acc.Scores(),
	}
	var im *gguf.Imatrix
	if imAcc != nil {
		im = imAcc.Imatrix(cal.String(), len(chunks), o.ctx())
	}
	return rep, im, nil
}

// calibrationChunks tokenizes and cuts the calibration text as
// llama-perplexity does, or lets the model write it. It returns the chunks
// to decode (each starting with BOS) and the text's own tokens of each
// chunk (the next-token targets).
func calibrationChunks(ctx context.Context, lm *llamacpp.Model, cal Calibration, o RunOptions) (chunks, targets [][]int32, err error) {
	var tokens []int32
	if !cal.SelfGenerated() {
		if tokens, err = cal.Text.tokens(lm, o.Chunks*o.ctx()); err != nil {
			return nil, nil, err
		}
		if chunks, err = lm.Chunks(tokens, o.ctx(), o.Chunks); err != nil {
			return nil, nil, fmt.Errorf("%s: %w", cal.Text.Name, err)
		}
	} else if tokens, chunks, err = selfCalibration(ctx, lm, cal, o); err != nil {
		return nil, nil, err
	}
	for i := range chunks {
		targets = append(targets, tokens[i*o.ctx():(i+1)*o.ctx()])
	}
	return chunks, targets, nil
}

// selfCalibration lets the model write its calibration text.
func selfCalibration(ctx context.Context, lm *llamacpp.Model, cal Calibration, o RunOptions) ([]int32, [][]int32, error) {
	n := o.Chunks
	if n == 0 {
		n = SelfCalibrationChunks
	}
	o.notify("no calibration text given: the model writes %d chunks of %d tokens itself (seed %d)", n, o.ctx(), cal.Seed)
	lctx, err := lm.NewContext(llamacpp.ContextParams{NCtx: o.ctx(), Threads: o.Threads})
	if err != nil {
		return nil, nil, err
	}
	defer lctx.Close()
	tokens, err := llamacpp.Generate(ctx, lctx, n*o.ctx(), llamacpp.SampleParams{Seed: cal.Seed}, o.progress("generating", "tokens", 1))
	if err != nil {
		return nil, nil, err
	}
	chunks, err := lm.Chunks(tokens, o.ctx(), n)
	return tokens, chunks, err
}

// Ranks gives each block its rank by the report's metric, 1 for the lowest
// (most redundant).
func (r *ScoreReport) Ranks() map[int]int {
	order := append([]bi.BlockScore(nil), r.Blocks...)
	key := r.key()
	sort.SliceStable(order, func(i, j int) bool { return key(order[i]) < key(order[j]) })
	rank := make(map[int]int, len(order))
	for i, b := range order {
		rank[b.Index] = i + 1
	}
	return rank
}

// WriteFile writes the report as indented JSON, atomically.
func (r *ScoreReport) WriteFile(path string) error {
	return atomicfile.Write(path, func(f *os.File) error { return WriteJSON(f, r) })
}

// WriteJSON writes v as indented JSON, the format of every JSON output.
func WriteJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// ReadScoreReport reads a score report and checks that it was made for m.
func ReadScoreReport(path string, m *Model) (*ScoreReport, error) {
	b, err := os.ReadFile(path)
	if err != nil {
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
	if (r.Metric != MetricBI && r.Metric != string(MethodPPL) && r.Metric != string(MethodKLD)) || len(r.Blocks) == 0 {
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
		if s.Index != i || math.IsNaN(s.BI) {
			return fmt.Errorf("block entry %d is malformed", i)
		}
	}
	if scored := m.ScoredBlocks(); len(r.Blocks) != scored {
		return fmt.Errorf("%d block scores for a model of %d scored blocks", len(r.Blocks), scored)
	}
	return nil
}

// ScoreLoss scores every block by the calibration loss of the model with
// that block skipped (method MethodPPL: mean NLL; MethodKLD: KL divergence
// from the whole model), beside its BI and angular distance. Protected
// blocks are measured too.
func (m *Model) ScoreLoss(ctx context.Context, method Method, cal Calibration, o RunOptions) (*ScoreReport, error) {
	if method != MethodPPL && method != MethodKLD {
		return nil, fmt.Errorf("scores by loss are of method %s or %s, not %s", MethodPPL, MethodKLD, method)
	}
	fp, err := m.Fingerprint()
	if err != nil {
		return nil, err
	}
	s, err := m.newSearcher(ctx, cal, o)
	if err != nil {
		return nil, err
	}
	defer s.Close()
	scores, err := s.biScores(ctx, nil)
	if err != nil {
		return nil, err
	}
	for i := range scores {
		if scores[i].Loss, err = s.loss(ctx, []int{i}, method.lossKind()); err != nil {
			return nil, err
		}
	}
	var tokens int64
	for _, ch := range s.chunks {
		tokens += int64(len(ch))
	}
	return &ScoreReport{Model: m.Path, Fingerprint: fp, Metric: string(method), Calibration: cal.String(),
		Tokens: tokens, Ctx: o.ctx(), Chunks: len(s.chunks), Blocks: scores}, nil
}

package main

import (
	"fmt"
	"io"
	"os"
	"sort"
	"text/tabwriter"

	"github.com/ggufprune/ggufprune/bi"
	"github.com/ggufprune/ggufprune/gguf"
	"github.com/ggufprune/ggufprune/llamacpp"
	"github.com/urfave/cli/v2"
)

func scoreCommand() *cli.Command {
	return commandUsageErrors(&cli.Command{
		Name:  "score",
		Usage: "score every block's Block Influence on calibration text",
		Description: "Runs the model in llama.cpp on the text, captures the hidden state before and after every\n" +
			"block, and prints BI = 1 - mean cos(h_in, h_out) and the angular distance per block (low = redundant).",
		Flags: append(runFlags(256),
			&cli.StringFlag{Name: "model", Aliases: []string{"m"}, Usage: "model `FILE.gguf`", Required: true},
			&cli.StringFlag{Name: "file", Aliases: []string{"f"}, Usage: "calibration text `FILE` (UTF-8); without it the model calibrates on text it writes itself"},
			&cli.Uint64Flag{Name: "seed", Value: 1, Usage: "`SEED` of self-generated calibration text"},
			&cli.StringFlag{Name: "output", Aliases: []string{"o"}, Usage: "also write the scores as JSON to `FILE`"},
			&cli.StringFlag{Name: "plot", Usage: "draw BI per block to `FILE`.svg or .png"},
			&cli.StringFlag{Name: "imatrix-out", Usage: "in the same pass, collect an importance matrix for quantization and write it to `FILE` (GGUF; .dat: legacy format)"},
			&cli.BoolFlag{Name: "json", Usage: "print the scores as JSON instead of a table"},
		),
		Action: runScore,
	})
}

// scoreReport is the JSON of score, also read back by prune --scores.
type scoreReport struct {
	Model       string          `json:"model"`
	Fingerprint string          `json:"fingerprint"`
	Metric      string          `json:"metric"`
	Calibration string          `json:"calibration"`
	Tokens      int64           `json:"tokens"`
	Ctx         int             `json:"ctx"`
	Chunks      int             `json:"chunks"`
	Blocks      []bi.BlockScore `json:"blocks"`
}

func runScore(c *cli.Context) error {
	o, err := runOptionsFrom(c)
	if err != nil {
		return err
	}
	if p := c.String("plot"); p != "" && !validPlotName(p) {
		return usagef("--plot %s: the file must end in .svg or .png", p)
	}
	src, err := calibrationFrom(c)
	if err != nil {
		return err
	}
	rep, im, err := scoreModel(c.String("model"), o, src, c.String("imatrix-out") != "", c.App.ErrWriter)
	if err != nil {
		return err
	}
	if out := c.String("imatrix-out"); out != "" {
		if err := im.Write(out); err != nil {
			return err
		}
	}
	if out := c.String("output"); out != "" {
		if err := writeJSONFile(out, rep); err != nil {
			return err
		}
	}
	if plot := c.String("plot"); plot != "" {
		if err := plotScores(plot, rep, nil); err != nil {
			return err
		}
	}
	if c.Bool("json") {
		return printJSON(c.App.Writer, rep)
	}
	printScores(c.App.Writer, rep, nil)
	return nil
}

// calibration is where scoring tokens come from: a text file, or text the
// model writes itself.
type calibration struct {
	file string // "" for self-generated text
	text string
	seed uint64
}

func (cal calibration) name() string {
	if cal.file == "" {
		return fmt.Sprintf("self-generated (seed %d)", cal.seed)
	}
	return cal.file
}

func calibrationFrom(c *cli.Context) (calibration, error) {
	cal := calibration{file: c.String("file"), seed: c.Uint64("seed")}
	if cal.file == "" {
		return cal, nil
	}
	var err error
	cal.text, err = readText(cal.file)
	return cal, err
}

// selfCalibrationChunks is how many chunks of text a model writes for its
// own calibration when --chunks does not say.
const selfCalibrationChunks = 8

// calibrationTokens returns the chunks to score on.
func calibrationTokens(m *llamacpp.Model, o runOptions, cal calibration, stderr io.Writer) ([][]int32, error) {
	if cal.file != "" {
		tokens, err := m.Tokenize(cal.text, true)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", cal.file, err)
		}
		chunks, err := m.Chunks(tokens, o.nCtx, o.chunks)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", cal.file, err)
		}
		return chunks, nil
	}
	n := o.chunks
	if n == 0 {
		n = selfCalibrationChunks
	}
	fmt.Fprintf(stderr, "no calibration text given: the model writes %d chunks of %d tokens itself (seed %d)\n", n, o.nCtx, cal.seed)
	ctx, err := m.NewContext(llamacpp.ContextParams{NCtx: o.nCtx, Threads: o.threads})
	if err != nil {
		return nil, err
	}
	defer ctx.Close()
	bar := newProgress(stderr, "generating", "tokens", 1)
	tokens, err := llamacpp.Generate(ctx, n*o.nCtx, llamacpp.SampleParams{Seed: cal.seed}, bar.update)
	if err != nil {
		return nil, err
	}
	return m.Chunks(tokens, o.nCtx, n)
}

// scoreModel loads a model and scores every block on the calibration; with
// imatrix it also collects an importance matrix in the same pass.
func scoreModel(path string, o runOptions, cal calibration, imatrix bool, stderr io.Writer) (*scoreReport, *gguf.Imatrix, error) {
	fp, err := fingerprint(path)
	if err != nil {
		return nil, nil, err
	}
	m, err := loadModel(path, o)
	if err != nil {
		return nil, nil, err
	}
	defer m.Close()
	chunks, err := calibrationTokens(m, o, cal, stderr)
	if err != nil {
		return nil, nil, err
	}
	ctx, err := m.NewContext(llamacpp.ContextParams{NCtx: o.nCtx, Threads: o.threads, Capture: true})
	if err != nil {
		return nil, nil, err
	}
	defer ctx.Close()
	// Multi-token-prediction blocks are not run by a decode: they get no score
	// (and prune never removes them).
	acc := bi.NewAccumulator(m.Info().RunBlocks())
	if err := ctx.CaptureHidden(acc.Observe); err != nil {
		return nil, nil, err
	}
	var imAcc *bi.ImatrixAccumulator
	if imatrix {
		imAcc = bi.NewImatrixAccumulator()
		if err := ctx.CaptureMatmul(imAcc.Observe); err != nil {
			return nil, nil, err
		}
	}
	bar := newProgress(stderr, "scoring", "chunks", o.nCtx)
	if err := llamacpp.Scan(ctx, chunks, bar.update); err != nil {
		return nil, nil, err
	}
	if err := acc.Err(); err != nil {
		return nil, nil, err
	}
	rep := &scoreReport{
		Model: path, Fingerprint: fp, Metric: "bi", Calibration: cal.name(),
		Tokens: acc.Tokens(), Ctx: o.nCtx, Chunks: len(chunks), Blocks: acc.Scores(),
	}
	var im *gguf.Imatrix
	if imAcc != nil {
		im = imAcc.Imatrix(cal.name(), len(chunks), o.nCtx)
	}
	return rep, im, nil
}

func fingerprint(path string) (string, error) {
	gm, err := gguf.OpenModel(path)
	if err != nil {
		return "", err
	}
	defer gm.Close()
	return gm.Fingerprint()
}

// printScores prints the block table; removed blocks are marked.
func printScores(w io.Writer, rep *scoreReport, removed []int) {
	rank := ranks(rep.Blocks)
	gone := map[int]bool{}
	for _, b := range removed {
		gone[b] = true
	}
	fmt.Fprintf(w, "model %s, calibration %s: %d tokens in %d chunks of %d\n", rep.Model, rep.Calibration, rep.Tokens, rep.Chunks, rep.Ctx)
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "block\tBI\tangular\trank\t")
	for _, b := range rep.Blocks {
		mark := ""
		if gone[b.Index] {
			mark = "removed"
		}
		fmt.Fprintf(tw, "%d\t%.6f\t%.6f\t%d\t%s\n", b.Index, b.BI, b.Angular, rank[b.Index], mark)
	}
	tw.Flush()
}

// ranks gives each block its rank by BI, 1 for the lowest (most redundant).
func ranks(blocks []bi.BlockScore) map[int]int {
	order := append([]bi.BlockScore(nil), blocks...)
	sort.SliceStable(order, func(i, j int) bool { return order[i].BI < order[j].BI })
	r := make(map[int]int, len(order))
	for i, b := range order {
		r[b.Index] = i + 1
	}
	return r
}

func writeJSONFile(path string, v any) error {
	return gguf.CreateAtomic(path, func(f *os.File) error { return printJSON(f, v) })
}

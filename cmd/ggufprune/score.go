package main

import (
	"fmt"
	"io"
	"math"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"

	"github.com/ggufprune/ggufprune/gguf/imatrix"
	"github.com/ggufprune/ggufprune/internal/atomicfile"
	"github.com/ggufprune/ggufprune/internal/plots"
	"github.com/ggufprune/ggufprune/prune"
	"github.com/ggufprune/ggufprune/prune/runner"
	"github.com/ggufprune/ggufprune/prune/selection"
	"github.com/urfave/cli/v2"
)

func scoreCommand() *cli.Command {
	return commandUsageErrors(&cli.Command{
		Name:  "score",
		Usage: "score every block's Block Influence (and every expert) on calibration text",
		Description: "Runs the model in llama.cpp on the text, captures the hidden state before and after every\n" +
			"block, and prints BI = 1 - mean cos(h_in, h_out) and the angular distance per block (low = redundant).\n" +
			"With --experts, the same pass also scores every expert of every mixture-of-experts block from its\n" +
			"routing: REAP (mean gate weight × output norm over the tokens routed to it), frequency, gate, norm.",
		Flags: append(runFlags(256),
			&cli.StringFlag{Name: "model", Aliases: []string{"m"}, Usage: "model `FILE.gguf`"},
			&cli.StringFlag{Name: "file", Aliases: []string{"f"}, Usage: "calibration text `FILE` (UTF-8); without it the model calibrates on text it writes itself"},
			&cli.StringFlag{Name: "metric", Value: selection.BI.Name, Usage: "`METRIC`: " + metricHelp()},
			&cli.Uint64Flag{Name: "seed", Value: 1, Usage: "`SEED` of self-generated calibration text"},
			&cli.StringFlag{Name: "output", Aliases: []string{"o"}, Usage: "also write the scores as JSON to `FILE`"},
			&cli.StringFlag{Name: "plot", Usage: "draw BI per block to `FILE`.svg or .png (with --experts: a heatmap of REAP per block and expert)"},
			&cli.BoolFlag{Name: "experts", Usage: "also score every expert of every mixture-of-experts block (reap, frequency, gate, norm), in the same pass"},
			&cli.StringFlag{Name: "imatrix-out", Usage: "in the same pass, collect an importance matrix for quantization and write it to `FILE` (GGUF; .dat: legacy format)"},
			&cli.BoolFlag{Name: "json", Usage: "print the scores as JSON instead of a table"},
			overwriteFlag,
		),
		Action: runScore,
	})
}

func runScore(c *cli.Context) error {
	if err := requireFlags(c, "model"); err != nil {
		return err
	}
	o, err := runOptionsFrom(c)
	if err != nil {
		return err
	}
	if p := c.String("plot"); p != "" && !plots.ValidName(p) {
		return usagef("--plot %s: the file must end in .svg or .png", p)
	}
	if err := checkOutputs(c, "output", "plot", "imatrix-out"); err != nil {
		return err
	}
	metric, ok := selection.Lookup(c.String("metric"))
	if !ok || metric.Key == nil {
		return usagef("--metric %s: one of %s", c.String("metric"), strings.Join(selection.ScoreNames(), ", "))
	}
	if metric != selection.BI && c.IsSet("imatrix-out") {
		return usagef("score: --imatrix-out is collected with --metric %s", selection.BI.Name)
	}
	if metric != selection.BI && c.Bool("experts") {
		return usagef("score: --experts are scored with --metric %s", selection.BI.Name)
	}
	verboseLog(c)
	cal, err := calibrationFrom(c)
	if err != nil {
		return err
	}
	m, err := prune.Open(c.String("model"))
	if err != nil {
		return err
	}
	defer m.Close()
	var rep *prune.ScoreReport
	var im *imatrix.Matrix
	if metric == selection.BI {
		rep, im, err = m.Score(c.Context, prune.ScoreOptions{Calibration: cal, Run: o, Imatrix: c.String("imatrix-out") != "", Experts: c.Bool("experts")})
	} else {
		rep, err = m.ScoreLoss(c.Context, metric, cal, o)
	}
	if err != nil {
		return withFlags(c, err)
	}
	if out := c.String("imatrix-out"); out != "" {
		if err := im.Write(out); err != nil {
			return err
		}
	}
	if out := c.String("output"); out != "" {
		if err := rep.WriteFile(out); err != nil {
			return err
		}
	}
	if plot := c.String("plot"); plot != "" {
		var err error
		if rep.HasExperts() {
			err = plots.Experts(plot, rep, nil)
		} else {
			err = plots.Scores(plot, rep, nil)
		}
		if err != nil {
			return err
		}
	}
	if c.Bool("json") {
		return printJSON(c.App.Writer, rep)
	}
	printScores(c.App.Writer, rep, nil)
	if rep.HasExperts() {
		fmt.Fprintln(c.App.Writer)
		printExperts(c.App.Writer, rep, nil)
	}
	return nil
}

// overwriteFlag lets a command replace output files that exist.
var overwriteFlag = &cli.BoolFlag{Name: "overwrite", Usage: "replace output files that exist (they keep their permissions); without it an existing output is an error"}

// checkOutputs checks, before any work, that the files the named flags give
// can be written (see atomicfile.CheckOutput).
func checkOutputs(c *cli.Context, flags ...string) error {
	for _, f := range flags {
		if p := c.String(f); p == "-" {
			return usagef("--%s -: outputs are files; standard output is not one", f)
		} else if p != "" {
			if err := atomicfile.CheckOutput(p, c.Bool("overwrite")); err != nil {
				return withFlags(c, fmt.Errorf("--%s: %w", f, err))
			}
		}
	}
	return nil
}

// calibrationFrom reads -f, or asks for self-generated text seeded by --seed.
func calibrationFrom(c *cli.Context) (runner.Calibration, error) {
	if f := c.String("file"); f != "" {
		return runner.CalibrationFile(f)
	}
	return runner.Calibration{Seed: c.Uint64("seed")}, nil
}

// printScores prints the block table; removed blocks are marked.
func printScores(w io.Writer, rep *prune.ScoreReport, removed []int) {
	rank := rep.Ranks()
	gone := map[int]bool{}
	for _, b := range removed {
		gone[b] = true
	}
	fmt.Fprintf(w, "model %s, calibration %s: %d tokens in %d chunks of %d\n", rep.Model, rep.Calibration, rep.Tokens, rep.Chunks, rep.Ctx)
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	loss := rep.Metric != selection.BI.Name
	if loss {
		fmt.Fprintf(tw, "block\tBI\tangular\t%s loss skipped\trank\t\n", rep.Metric)
	} else {
		fmt.Fprintln(tw, "block\tBI\tangular\trank\t")
	}
	for _, b := range rep.Blocks {
		mark := ""
		if gone[b.Index] {
			mark = "removed"
		}
		if loss {
			fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%d\t%s\n", b.Index, scoreNum(b.BI), scoreNum(b.Angular), scoreNum(b.Loss), rank[b.Index], mark)
		} else {
			fmt.Fprintf(tw, "%d\t%s\t%s\t%d\t%s\n", b.Index, scoreNum(b.BI), scoreNum(b.Angular), rank[b.Index], mark)
		}
	}
	tw.Flush()
}

// printExperts prints, per mixture-of-experts block, every expert's REAP
// score and the share of tokens routed to it; removed experts (by block)
// are marked with *.
func printExperts(w io.Writer, rep *prune.ScoreReport, removed map[int][]int) {
	if len(rep.Experts) == 0 {
		return
	}
	title := "expert scores: REAP (share of tokens routed), a row per block, a column per expert"
	if len(removed) > 0 {
		title += "; * removed"
	}
	fmt.Fprintln(w, title)
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', tabwriter.AlignRight)
	fmt.Fprint(tw, "block \\ expert\t")
	for e := range rep.Experts[0].Experts {
		fmt.Fprintf(tw, "%d\t", e)
	}
	fmt.Fprintln(tw)
	for _, be := range rep.Experts {
		fmt.Fprintf(tw, "%d\t", be.Block)
		for _, s := range be.Experts {
			mark := ""
			if slices.Contains(removed[be.Block], s.Expert) {
				mark = "*"
			}
			fmt.Fprintf(tw, "%s%.4g (%.2f)\t", mark, s.REAP, s.Frequency)
		}
		fmt.Fprintln(tw)
	}
	tw.Flush()
}

// scoreNum writes a score with 6 decimals, or with 6 significant digits
// when it is that large: a report's loss is any finite number, and %f
// would write 1e300 with 300 digits.
func scoreNum(v float64) string {
	if math.Abs(v) < 1e6 {
		return strconv.FormatFloat(v, 'f', 6, 64)
	}
	return strconv.FormatFloat(v, 'g', 6, 64)
}

// metricHelp describes the metrics of score reports, from the registry.
func metricHelp() string {
	var parts []string
	for _, m := range selection.Methods() {
		if m.Key != nil {
			parts = append(parts, fmt.Sprintf("%s (%s)", m.Name, m.Help))
		}
	}
	return strings.Join(parts, ", ")
}

package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"text/tabwriter"

	"github.com/ggufprune/ggufprune/bi"
	"github.com/ggufprune/ggufprune/gguf"
	"github.com/ggufprune/ggufprune/llamacpp"
	"github.com/urfave/cli/v2"
)

func pruneCommand() *cli.Command {
	return commandUsageErrors(&cli.Command{
		Name:  "prune",
		Usage: "remove blocks: given ones (--layers) or the least influential (--remove, --target-size)",
		Description: "Removes transformer blocks, renumbers the rest (blk.N) contiguously, fixes {arch}.block_count\n" +
			"and every per-layer metadata array, and copies every kept tensor's bytes unchanged. The output is\n" +
			"written to a temporary file next to it, checked, synced and renamed; the input is never changed.\n\n" +
			"Say what to remove with exactly one of --layers, --remove or --target-size. The last two score\n" +
			"the blocks (on -f text, or read a score --json file with --scores, or, with neither, on text the\n" +
			"model writes itself) and remove the lowest Block Influence first (ShortGPT). The first and last\n" +
			"blocks are protected by default.",
		Flags: append(runFlags(256),
			&cli.StringFlag{Name: "model", Aliases: []string{"m"}, Usage: "input `IN.gguf` (a split set's first shard opens the whole set)", Required: true},
			&cli.StringFlag{Name: "output", Aliases: []string{"o"}, Usage: "output `OUT.gguf` (never one of the input files)"},
			&cli.StringFlag{Name: "layers", Usage: "blocks to remove: 0-based `LIST` of indices and inclusive ranges, e.g. 3,5-7"},
			&cli.StringFlag{Name: "remove", Usage: "remove `N` blocks, or P% of the blocks (rounded), lowest BI first"},
			&cli.StringFlag{Name: "target-size", Usage: "remove the fewest blocks that bring the output to `SIZE`: bytes, 3GiB, 2.5GB, 800MiB or 70% (of the input)"},
			&cli.StringFlag{Name: "file", Aliases: []string{"f"}, Usage: "calibration text `FILE` for scoring"},
			&cli.StringFlag{Name: "scores", Usage: "use the scores in `FILE` (from score -o or --json) instead of scoring"},
			&cli.Uint64Flag{Name: "seed", Value: 1, Usage: "`SEED` of self-generated calibration text (no -f, no --scores)"},
			&cli.IntFlag{Name: "keep-first", Value: 1, Usage: "never remove the first `N` blocks"},
			&cli.IntFlag{Name: "keep-last", Value: 1, Usage: "never remove the last `N` blocks"},
			&cli.StringFlag{Name: "plot", Usage: "draw BI per block with the removed blocks marked to `FILE`.svg or .png"},
			&cli.StringFlag{Name: "eval", Usage: "after writing, compute perplexity of the input and the output on `TEXT` (a file)"},
			&cli.StringFlag{Name: "quantize", Usage: "quantize the pruned model to `TYPE` (see quantize --help) in the same step: one output file"},
			&cli.StringFlag{Name: "imatrix", Usage: "importance matrix `FILE` of the input model: pruned with it for --quantize and --imatrix-out"},
			&cli.StringFlag{Name: "imatrix-out", Usage: "write the imatrix of the pruned model (removed blocks dropped, the rest renumbered) to `FILE`"},
			&cli.BoolFlag{Name: "dry-run", Usage: "print the plan and write nothing"},
			&cli.BoolFlag{Name: "force", Usage: "remove blocks even where the architecture derives layer kinds from the block index"},
			&cli.BoolFlag{Name: "keep-split", Usage: "write a split input as the same number of shards (OUT-0000i-of-0000n.gguf) instead of one file"},
			&cli.BoolFlag{Name: "json", Usage: "print the summary as JSON"},
		),
		Action: runPrune,
	})
}

// pruneSummary is what prune prints.
type pruneSummary struct {
	Model            string       `json:"model"`
	Outputs          []string     `json:"outputs,omitempty"`
	Method           string       `json:"method"`
	Removed          []int        `json:"removed"`
	BlockCountBefore int          `json:"block_count_before"`
	BlockCountAfter  int          `json:"block_count_after"`
	BytesBefore      int64        `json:"bytes_before"`
	BytesAfter       int64        `json:"bytes_after"`
	DryRun           bool         `json:"dry_run"`
	Quantized        string       `json:"quantized,omitempty"`
	ImatrixOut       string       `json:"imatrix_out,omitempty"`
	Scores           *scoreReport `json:"scores,omitempty"`
	Eval             []evalResult `json:"eval,omitempty"`
}

func runPrune(c *cli.Context) error {
	if c.NArg() > 0 {
		return usagef("prune: unexpected arguments %v (the model is given with -m)", c.Args().Slice())
	}
	out := c.String("output")
	dryRun := c.Bool("dry-run")
	if out == "" && !dryRun {
		return usagef("prune: -o OUT.gguf is required (or --dry-run)")
	}
	how := 0
	for _, f := range []string{"layers", "remove", "target-size"} {
		if c.IsSet(f) {
			how++
		}
	}
	if how != 1 {
		return usagef("prune: give exactly one of --layers, --remove and --target-size")
	}
	if c.IsSet("layers") && (c.IsSet("file") || c.IsSet("scores")) {
		return usagef("prune: --layers needs no scores; -f and --scores go with --remove or --target-size")
	}
	if c.IsSet("file") && c.IsSet("scores") {
		return usagef("prune: give -f or --scores, not both")
	}
	if c.IsSet("imatrix") && !c.IsSet("imatrix-out") && !c.IsSet("quantize") {
		return usagef("prune: --imatrix is used by --quantize or --imatrix-out; give one of them")
	}
	if c.IsSet("imatrix-out") && !c.IsSet("imatrix") {
		return usagef("prune: --imatrix-out needs the input model's imatrix (--imatrix)")
	}
	if c.IsSet("quantize") && c.Bool("keep-split") {
		return usagef("prune: --quantize writes one file; it does not go with --keep-split")
	}
	if c.IsSet("plot") && c.IsSet("layers") {
		return usagef("prune: --plot draws scores; --layers has none (use score --plot)")
	}
	if p := c.String("plot"); p != "" && !validPlotName(p) {
		return usagef("--plot %s: the file must end in .svg or .png", p)
	}
	o, err := runOptionsFrom(c)
	if err != nil {
		return err
	}
	// Everything that can be refused is checked before scoring, which may take long.
	var qp llamacpp.QuantizeParams
	if typ := c.String("quantize"); typ != "" {
		if qp, err = quantizeParams(typ, "", o.threads); err != nil {
			return err
		}
		qp.Progress = newProgress(c.App.ErrWriter, "quantizing", "tensors", 0).update
	}
	evalText := ""
	if p := c.String("eval"); p != "" {
		if evalText, err = readText(p); err != nil {
			return err
		}
	}
	path := c.String("model")
	m, err := gguf.OpenModel(path)
	if err != nil {
		return err
	}
	defer m.Close()
	nBlocks, err := m.BlockCount()
	if err != nil {
		return err
	}
	var fullImatrix *gguf.Imatrix
	if p := c.String("imatrix"); p != "" {
		if fullImatrix, err = gguf.ReadImatrix(p); err != nil {
			return err
		}
		if err := fullImatrix.CheckModel(m); err != nil {
			return fmt.Errorf("%s: %w", p, err)
		}
	}

	var remove []int
	var rep *scoreReport
	method := "layers"
	if c.IsSet("layers") {
		if remove, err = gguf.ParseBlockList(c.String("layers")); err != nil {
			return usageError{err}
		}
	} else {
		if rep, method, err = pruneScores(c, m, path, o); err != nil {
			return err
		}
		protect, err := protection(c)
		if err != nil {
			return err
		}
		if remove, err = chooseBlocks(c, m, rep, protect); err != nil {
			return err
		}
	}

	plan, err := gguf.PlanRemoval(m, remove, c.Bool("force"))
	if err != nil {
		return err
	}
	var im *gguf.Imatrix
	if fullImatrix != nil {
		if im, err = fullImatrix.Prune(plan.Removed, nBlocks); err != nil {
			return fmt.Errorf("%s: %w", c.String("imatrix"), err)
		}
	}
	var sum *pruneSummary
	if qp.Type.Name != "" {
		qp.Imatrix = im
		sum, err = pruneAndQuantize(plan, out, qp, dryRun)
	} else {
		sum, err = applyPlan(plan, out, c.Bool("keep-split"), dryRun)
	}
	if err != nil {
		return err
	}
	if p := c.String("imatrix-out"); p != "" && !dryRun {
		if err := im.Write(p); err != nil {
			return err
		}
		sum.ImatrixOut = p
	}
	sum.Method, sum.Scores = method, rep
	if p := c.String("plot"); p != "" && rep != nil {
		if err := plotScores(p, rep, sum.Removed); err != nil {
			return err
		}
	}
	if evalText != "" && !dryRun {
		if sum.Eval, err = evalPair(path, sum.Outputs[0], c.String("eval"), evalText, o, c); err != nil {
			return err
		}
	}
	if c.Bool("json") {
		return printJSON(c.App.Writer, sum)
	}
	if rep != nil {
		printScores(c.App.Writer, rep, sum.Removed)
		fmt.Fprintln(c.App.Writer)
	}
	printPruneSummary(c.App.Writer, sum)
	return nil
}

// pruneScores reads the --scores file, or scores the model on -f text or on
// text it writes itself.
func pruneScores(c *cli.Context, m *gguf.Model, path string, o runOptions) (*scoreReport, string, error) {
	if file := c.String("scores"); file != "" {
		rep, err := readScores(file, m)
		return rep, "bi (scores from " + file + ")", err
	}
	cal, err := calibrationFrom(c)
	if err != nil {
		return nil, "", err
	}
	rep, _, err := scoreModel(path, o, cal, false, c.App.ErrWriter)
	if err != nil {
		return nil, "", err
	}
	if cal.file == "" {
		return rep, "bi (self-calibrated)", nil
	}
	return rep, "bi", nil
}

// readScores reads a score report and checks that it was made for this model.
func readScores(file string, m *gguf.Model) (*scoreReport, error) {
	b, err := os.ReadFile(file)
	if err != nil {
		return nil, err
	}
	var rep scoreReport
	if err := json.Unmarshal(b, &rep); err != nil {
		return nil, fmt.Errorf("%s: not a score JSON file: %w", file, err)
	}
	if rep.Metric != "bi" || len(rep.Blocks) == 0 {
		return nil, fmt.Errorf("%s: not a score file of ggufprune (metric %q, %d blocks)", file, rep.Metric, len(rep.Blocks))
	}
	fp, err := m.Fingerprint()
	if err != nil {
		return nil, err
	}
	if rep.Fingerprint != fp {
		return nil, fmt.Errorf("%s: the scores were made for another model (%s, fingerprint %.12s…), not for %s (%.12s…)", file, rep.Model, rep.Fingerprint, m.Name(), fp)
	}
	n, _ := m.BlockCount()
	scored := n - len(gguf.MTPBlocks(m, n)) // multi-token-prediction blocks have no score
	for i, s := range rep.Blocks {
		if s.Index != i || math.IsNaN(s.BI) {
			return nil, fmt.Errorf("%s: block entry %d is malformed", file, i)
		}
	}
	if len(rep.Blocks) != scored {
		return nil, fmt.Errorf("%s: %d block scores for a model of %d scored blocks", file, len(rep.Blocks), scored)
	}
	return &rep, nil
}

// protection is the blocks prune may not choose: the first and last ones
// asked for. Multi-token-prediction blocks have no score, so they are never
// candidates (and PlanRemoval refuses them too).
func protection(c *cli.Context) (bi.Protect, error) {
	p := bi.Protect{First: c.Int("keep-first"), Last: c.Int("keep-last")}
	if p.First < 0 || p.Last < 0 {
		return p, usagef("--keep-first and --keep-last must not be negative")
	}
	return p, nil
}

// chooseBlocks applies --remove or --target-size to the scores.
func chooseBlocks(c *cli.Context, m *gguf.Model, rep *scoreReport, p bi.Protect) ([]int, error) {
	n := len(rep.Blocks)
	if s := c.String("remove"); s != "" {
		k, err := parseCount(s, n)
		if err != nil {
			return nil, usageError{err}
		}
		return bi.SelectCount(rep.Blocks, k, p)
	}
	target, err := parseSize(c.String("target-size"), m.Size())
	if err != nil {
		return nil, usageError{err}
	}
	keepSplit := c.Bool("keep-split")
	remove, err := bi.SelectSize(rep.Blocks, target, func(removed []int) (int64, error) {
		plan, err := gguf.PlanRemoval(m, removed, true)
		if err != nil {
			return 0, err
		}
		return plan.Size(keepSplit)
	}, p)
	var ue *bi.UnreachableError
	if errors.As(err, &ue) {
		return nil, fmt.Errorf("--target-size %s (%d bytes) cannot be reached without removing protected blocks: the smallest reachable size is %s (%d bytes)", c.String("target-size"), target, humanBytes(ue.Smallest), ue.Smallest)
	}
	return remove, err
}

// parseCount reads "N" or "P%" of n blocks.
func parseCount(s string, n int) (int, error) {
	if p, ok := strings.CutSuffix(strings.TrimSpace(s), "%"); ok {
		f, err := strconv.ParseFloat(p, 64)
		if err != nil || f <= 0 || f >= 100 {
			return 0, fmt.Errorf("--remove %s: a percentage must be between 0 and 100", s)
		}
		k := int(math.Round(f / 100 * float64(n)))
		return max(k, 1), nil
	}
	k, err := strconv.Atoi(strings.TrimSpace(s))
	if err != nil || k <= 0 {
		return 0, fmt.Errorf("--remove %s: give a positive number of blocks or a percentage like 25%%", s)
	}
	return k, nil
}

var sizeUnits = []struct {
	suffix string
	mult   float64
}{
	{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"GiB", 1 << 30}, {"TiB", 1 << 40},
	{"KB", 1e3}, {"MB", 1e6}, {"GB", 1e9}, {"TB", 1e12},
	{"K", 1 << 10}, {"M", 1 << 20}, {"G", 1 << 30}, {"T", 1 << 40}, {"B", 1},
}

// parseSize reads a size in bytes, with a unit, or as a percentage of whole.
func parseSize(s string, whole int64) (int64, error) {
	t := strings.TrimSpace(s)
	mult := 1.0
	if p, ok := strings.CutSuffix(t, "%"); ok {
		t, mult = p, float64(whole)/100
	} else {
		for _, u := range sizeUnits {
			if p, ok := strings.CutSuffix(t, u.suffix); ok {
				t, mult = strings.TrimSpace(p), u.mult
				break
			}
		}
	}
	f, err := strconv.ParseFloat(t, 64)
	if err != nil || f <= 0 || math.IsInf(f, 0) {
		return 0, fmt.Errorf("--target-size %q: give bytes, a size like 3GiB or 2.5GB, or a percentage like 70%%", s)
	}
	return int64(f * mult), nil
}

// applyPlan writes a plan (unless dryRun) and summarises it.
func applyPlan(plan *gguf.Plan, out string, keepSplit, dryRun bool) (*pruneSummary, error) {
	after, err := plan.Size(keepSplit)
	if err != nil {
		return nil, err
	}
	sum := &pruneSummary{
		Model: plan.Model.Name(), Removed: plan.Removed,
		BlockCountBefore: plan.BlockCountBefore, BlockCountAfter: plan.BlockCountAfter,
		BytesBefore: plan.Model.Size(), BytesAfter: after, DryRun: dryRun,
	}
	if dryRun {
		return sum, nil
	}
	if sum.Outputs, err = plan.Write(out, keepSplit); err != nil {
		return nil, err
	}
	return sum, nil
}

// pruneAndQuantize writes the pruned model to a temporary file next to the
// output, quantizes it into the output, and removes it whatever happens.
func pruneAndQuantize(plan *gguf.Plan, out string, qp llamacpp.QuantizeParams, dryRun bool) (*pruneSummary, error) {
	sum, err := applyPlan(plan, "", false, true)
	if err != nil || dryRun {
		return sum, err
	}
	tmp, err := os.CreateTemp(filepath.Dir(out), "."+filepath.Base(out)+".pruned-*.gguf")
	if err != nil {
		return nil, err
	}
	tmp.Close()
	defer os.Remove(tmp.Name())
	if _, err := plan.Write(tmp.Name(), false); err != nil {
		return nil, err
	}
	if err := llamacpp.Quantize(tmp.Name(), out, qp); err != nil {
		return nil, err
	}
	st, err := os.Stat(out)
	if err != nil {
		return nil, err
	}
	sum.DryRun, sum.Outputs, sum.BytesAfter, sum.Quantized = false, []string{out}, st.Size(), qp.Type.Name
	return sum, nil
}

// evalPair computes perplexity of the input and output models on a text.
func evalPair(in, out, textPath, text string, o runOptions, c *cli.Context) ([]evalResult, error) {
	var rs []evalResult
	for _, p := range []string{in, out} {
		r, err := evalModel(p, o, textPath, text, c)
		if err != nil {
			return nil, err
		}
		rs = append(rs, r)
	}
	return rs, nil
}

func printPruneSummary(w io.Writer, s *pruneSummary) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "model\t%s\n", s.Model)
	fmt.Fprintf(tw, "method\t%s\n", s.Method)
	fmt.Fprintf(tw, "removed blocks\t%s (%d of %d)\n", gguf.FormatBlockList(s.Removed), len(s.Removed), s.BlockCountBefore)
	fmt.Fprintf(tw, "blocks\t%d -> %d\n", s.BlockCountBefore, s.BlockCountAfter)
	fmt.Fprintf(tw, "size\t%s -> %s (%.1f%%)\n", humanBytes(s.BytesBefore), humanBytes(s.BytesAfter), 100*float64(s.BytesAfter)/float64(s.BytesBefore))
	if s.DryRun {
		fmt.Fprintf(tw, "dry run\tnothing written\n")
	}
	for _, o := range s.Outputs {
		fmt.Fprintf(tw, "wrote\t%s\n", o)
	}
	if s.Quantized != "" {
		fmt.Fprintf(tw, "quantized\t%s\n", s.Quantized)
	}
	if s.ImatrixOut != "" {
		fmt.Fprintf(tw, "imatrix\t%s (pruned with the model)\n", s.ImatrixOut)
	}
	if len(s.Eval) == 2 {
		fmt.Fprintf(tw, "perplexity\t%.4f -> %.4f (%+.1f%%, %d tokens)\n", s.Eval[0].PPL, s.Eval[1].PPL, 100*(s.Eval[1].PPL/s.Eval[0].PPL-1), s.Eval[0].Tokens)
	}
	tw.Flush()
}

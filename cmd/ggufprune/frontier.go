package main

import (
	"errors"
	"fmt"
	"io"
	"maps"
	"math"
	"path/filepath"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/ggufprune/ggufprune/bi"

	"github.com/ggufprune/ggufprune/gguf/blocks"
	"github.com/ggufprune/ggufprune/gguf/imatrix"
	"github.com/ggufprune/ggufprune/internal/plots"
	"github.com/ggufprune/ggufprune/internal/units"
	"github.com/ggufprune/ggufprune/prune"
	"github.com/ggufprune/ggufprune/prune/frontier"
	"github.com/ggufprune/ggufprune/prune/runner"
	"github.com/ggufprune/ggufprune/prune/selection"
	"github.com/urfave/cli/v2"
)

func frontierCommand() *cli.Command {
	return commandUsageErrors(&cli.Command{
		Name:  "frontier",
		Usage: "which is better at a given size: quantizing harder or removing blocks; measures a grid of real files",
		Description: "Builds every candidate of a grid (blocks removed by BI × experts removed × quantization type), each a real file:\n" +
			"pruned as prune does (healed too with --heal), quantized with llama.cpp's quantizer and an importance\n" +
			"matrix (--imatrix, or collected in the scoring pass on -f). Compares every file with the original in\n" +
			"one pass over --eval TEXT (size, perplexity, mean KL divergence, same top token), measures its speed\n" +
			"here (prompt and generation tokens/s, as llama-bench's pp and tg tests), prints the table by size and\n" +
			"marks the Pareto front (no other file is smaller and closer to the original).\n\n" +
			"--keep DIR keeps the files (MODEL-r2-Q4_K_M.gguf, with a .json sidecar) and the scores; a rerun with\n" +
			"the same DIR reuses what it finds there made the same way from the same model.",
		Flags: append(runFlags(256),
			&cli.StringFlag{Name: "model", Aliases: []string{"m"}, Usage: "the original `MODEL.gguf`"},
			&cli.StringFlag{Name: "file", Aliases: []string{"f"}, Usage: "calibration text `FILE`: scores the blocks, heals, gives the importance matrix"},
			&cli.Uint64Flag{Name: "seed", Value: 1, Usage: "`SEED` of self-generated calibration text (no -f)"},
			&cli.StringFlag{Name: "eval", Usage: "evaluation `TEXT` file every candidate is compared with the original on"},
			&cli.StringFlag{Name: "types", Value: strings.Join(frontier.DefaultTypes, ","), Usage: "quantization `TYPES` (see quantize --help); COPY keeps the tensors as they are"},
			&cli.StringFlag{Name: "remove", Value: "0", Usage: "numbers of blocks to remove, `N,P%,…` (0: unpruned), lowest BI first"},
			&cli.StringFlag{Name: "experts", Usage: "numbers of experts to remove from each mixture-of-experts block, `N,P%,…` (0: none), lowest --expert-method score first"},
			&cli.StringFlag{Name: "expert-method", Usage: "how experts are ranked (`METRIC`): " + strings.Join(bi.ExpertMetricNames(), ", ") + " (default " + prune.DefaultExpertMetric + ")"},
			&cli.BoolFlag{Name: "heal", Usage: "also heal every pruned level (both in the grid)"},
			&cli.Float64Flag{Name: "ridge", Usage: "healing's ridge `R`, relative to the mean diagonal of MᵀM (default: per run, the one of 1e-10 … 0.1 that heals held-out calibration chunks best)"},
			&cli.IntFlag{Name: "keep-first", Value: 1, Usage: "never remove the first `N` blocks"},
			&cli.IntFlag{Name: "keep-last", Value: 1, Usage: "never remove the last `N` blocks"},
			&cli.StringFlag{Name: "imatrix", Usage: "importance matrix `FILE` of the model (default: collected in the scoring pass)"},
			&cli.BoolFlag{Name: "no-imatrix", Usage: "quantize without an importance matrix"},
			&cli.StringFlag{Name: "target-size", Usage: "recommend the best candidate of at most `SIZE` (3GiB, 800MiB, 70%) and the command that makes it"},
			&cli.StringFlag{Name: "keep", Usage: "keep the candidate files in `DIR` (and reuse them on a rerun)"},
			&cli.BoolFlag{Name: "no-speed", Usage: "do not measure speed"},
			&cli.IntFlag{Name: "per-pass", Usage: "compare at most `N` candidates per pass beside the original (0: all in one pass)"},
			&cli.StringFlag{Name: "plot", Usage: "draw size against KL divergence to `FILE`.svg or .png"},
			&cli.BoolFlag{Name: "json", Usage: "print the result as JSON"},
			overwriteFlag,
		),
		Action: runFrontier,
	})
}

func runFrontier(c *cli.Context) error {
	if c.NArg() > 0 {
		return usagef("frontier: unexpected arguments %v (the model is given with -m)", c.Args().Slice())
	}
	if err := requireFlags(c, "model", "eval"); err != nil {
		return err
	}
	if c.IsSet("imatrix") && c.Bool("no-imatrix") {
		return usagef("frontier: give --imatrix or --no-imatrix, not both")
	}
	if r := c.Float64("ridge"); c.IsSet("ridge") && (!c.Bool("heal") || !(r > 0) || math.IsInf(r, 0)) {
		return usagef("frontier: --ridge is a positive finite number for --heal")
	}
	if p := c.String("plot"); p != "" && !plots.ValidName(p) {
		return usagef("--plot %s: the file must end in .svg or .png", p)
	}
	if n := c.Int("per-pass"); n < 0 {
		return usagef("--per-pass %d: must not be negative", n)
	}
	if c.Int("keep-first") < 0 || c.Int("keep-last") < 0 {
		return usagef("--keep-first and --keep-last must not be negative")
	}
	types := strings.Split(c.String("types"), ",")
	for i, t := range types {
		types[i] = strings.TrimSpace(t)
		if _, ok := prune.LookupQuantType(types[i]); !ok {
			return usagef("--types: unknown quantization type %q; one of %s", types[i], strings.Join(prune.QuantTypeNames(), ", "))
		}
	}
	run, err := runOptionsFrom(c)
	if err != nil {
		return err
	}
	verboseLog(c)
	if err := checkOutputs(c, "plot"); err != nil {
		return err
	}
	o := frontier.Options{Types: types, Heal: c.Bool("heal"), Ridge: c.Float64("ridge"), Run: run, NoImatrix: c.Bool("no-imatrix"),
		Keep: c.String("keep"), NoSpeed: c.Bool("no-speed"), PerPass: c.Int("per-pass"),
		Protect: selection.Protect{First: c.Int("keep-first"), Last: c.Int("keep-last")}}
	if o.EvalText, err = runner.TextFile(c.String("eval")); err != nil {
		return err
	}
	if o.Calibration, err = calibrationFrom(c); err != nil {
		return err
	}
	if p := c.String("imatrix"); p != "" {
		if o.Imatrix, err = imatrix.Read(p); err != nil {
			return err
		}
		o.ImatrixName = p
	}
	m, err := prune.Open(c.String("model"))
	if err != nil {
		return err
	}
	defer m.Close()
	if o.Remove, err = parseCounts(c.String("remove"), m.ScoredBlocks()); err != nil {
		return usagef("--remove %v", err)
	}
	if most := m.ScoredBlocks() - c.Int("keep-first") - c.Int("keep-last"); slices.Max(o.Remove) > max(most, 0) {
		return usagef("--remove %s: %s has %d blocks that can go (%d scored, --keep-first %d, --keep-last %d)", c.String("remove"), m.Path, max(most, 0), m.ScoredBlocks(), c.Int("keep-first"), c.Int("keep-last"))
	}
	if v := c.String("experts"); v != "" {
		if m.MoE == nil {
			return usagef("--experts %s: %s is not a mixture of experts", v, m.Path)
		}
		if o.Experts, err = parseCounts(v, m.MoE.Experts); err != nil {
			return usagef("--experts %v", err)
		}
		if left := m.MoE.Experts - slices.Max(o.Experts); left < max(m.MoE.Used, 1) {
			return usagef("--experts %s: %s has %d experts per block and routes each token to %d", v, m.Path, m.MoE.Experts, m.MoE.Used)
		}
	}
	if v := c.String("expert-method"); v != "" {
		if _, ok := bi.LookupExpertMetric(v); !ok {
			return usagef("--expert-method %s: one of %s", v, strings.Join(bi.ExpertMetricNames(), ", "))
		}
		o.ExpertMetric = v
	}
	if v := c.String("target-size"); v != "" {
		if o.TargetSize, err = units.ParseSize(v, m.Size()); err != nil {
			return usagef("--target-size %w", err)
		}
	}
	stderr := c.App.ErrWriter
	o.Progress = func(e frontier.Event) { printFrontierEvent(stderr, m.Path, e) }

	g, err := frontier.NewGrid(m, o)
	if err != nil {
		return frontierError(c, err)
	}
	printFrontierCost(stderr, m, g)
	res, err := frontier.Run(c.Context, m, o)
	if err != nil {
		return frontierError(c, err)
	}
	if p := c.String("plot"); p != "" {
		if err := plots.Frontier(p, res); err != nil {
			return err
		}
	}
	out := frontierJSON{Result: res}
	if res.Recommended != nil {
		out.Recommended = &recommendation{Candidate: *res.Recommended, Command: recommendCommand(c, m, o, *res.Recommended)}
	}
	if c.Bool("json") {
		return printJSON(c.App.Writer, out)
	}
	printFrontier(c.App.Writer, out)
	return nil
}

// frontierError makes the library's refusals of the options usage errors.
func frontierError(c *cli.Context, err error) error {
	if errors.Is(err, frontier.ErrOptions) {
		return usageError{err}
	}
	return withFlags(c, err)
}

// parseCounts reads "0,2,25%": each a count (0 allowed) or a percentage of n.
func parseCounts(s string, n int) ([]int, error) {
	var out []int
	for _, part := range strings.Split(s, ",") {
		part = strings.TrimSpace(part)
		if part == "0" {
			out = append(out, 0)
			continue
		}
		k, err := selection.ParseCount(part, n)
		if err != nil {
			return nil, err
		}
		out = append(out, k)
	}
	return out, nil
}

// frontierJSON is the result as --json prints it: the recommendation with
// the command that makes it.
type frontierJSON struct {
	*frontier.Result
	Recommended *recommendation `json:"recommended,omitempty"`
}

type recommendation struct {
	frontier.Candidate
	Command string `json:"command"`
}

func printFrontierCost(w io.Writer, m *prune.Model, g *frontier.Grid) {
	for _, s := range g.Skipped {
		where := "skipped"
		if s.Level != nil {
			where = fmt.Sprintf("skipped at %d blocks removed", s.Level.Blocks)
		}
		fmt.Fprintf(w, "ggufprune: %s %s: %s\n", s.Type, where, s.Reason)
	}
	var ts []string
	for _, t := range g.Types {
		ts = append(ts, t.Name)
	}
	fmt.Fprintf(w, "frontier of %s: %d candidates (%d levels × %s), %d scoring pass, %d healing fits, %d comparison pass(es) of %d models, %d speed tests\n",
		m.Path, len(g.Candidates), len(g.Levels), strings.Join(ts, ","), g.Cost.ScoringPasses, g.Cost.HealingFits, g.Cost.ComparePasses, g.Cost.Models, g.Cost.SpeedTests)
}

func printFrontierEvent(w io.Writer, model string, e frontier.Event) {
	name := filepath.Base(model)
	if e.Spec != nil {
		name = e.Spec.FileName(model)
	}
	left := ""
	if e.Left >= time.Second {
		left = fmt.Sprintf("; about %v left", e.Left.Round(time.Second))
	}
	switch {
	case e.Stage == frontier.StageScore && e.Reused:
		fmt.Fprintf(w, "scores and importance matrix reused from the keep folder\n")
	case e.Stage == frontier.StageScore:
		fmt.Fprintf(w, "scored in %.1f s\n", e.Took.Seconds())
	case e.Stage == frontier.StageMake && e.Reused:
		fmt.Fprintf(w, "[%d/%d] reused %s\n", e.Done, e.Total, e.File)
	case e.Stage == frontier.StageMake:
		fmt.Fprintf(w, "[%d/%d] made %s in %.1f s%s\n", e.Done, e.Total, name, e.Took.Seconds(), left)
	case e.Stage == frontier.StageCompare:
		fmt.Fprintf(w, "comparison pass %d/%d in %.1f s%s\n", e.Done, e.Total, e.Took.Seconds(), left)
	case e.Stage == frontier.StageSpeed:
		fmt.Fprintf(w, "[%d/%d] speed of %s in %.1f s%s\n", e.Done, e.Total, name, e.Took.Seconds(), left)
	}
}

func printFrontier(w io.Writer, r frontierJSON) {
	fmt.Fprintf(w, "frontier of %s on %s (%d tokens, ctx %d), calibration %s, imatrix %s\n", r.Model, r.EvalText, r.Tokens, r.Ctx, r.Calibration, r.Imatrix)
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintf(tw, "size\t%% of base\tremoved\texperts\thealed\ttype\tPPL\tmean KLD\tsame top\tpp tok/s\ttg tok/s\tfront\t\n")
	speed := func(v float64) string {
		if v == 0 {
			return "-"
		}
		return fmt.Sprintf("%.0f", v)
	}
	fmt.Fprintf(tw, "%s\t100.0\t(base)\t\t\t\t%.4f\t\t\t%s\t%s\t\t\n", units.HumanBytes(r.Base.Bytes), r.Base.PPL, speed(r.Base.PPTPS), speed(r.Base.TGTPS))
	for _, c := range r.Candidates {
		removed := "-"
		if len(c.Removed) > 0 {
			removed = blocks.FormatList(c.Removed)
		}
		healed, front, experts := "", "", "-"
		if c.Healed {
			healed = "yes"
		}
		if c.Pareto {
			front = "*"
		}
		if c.Experts > 0 {
			experts = fmt.Sprintf("%d/block", c.Experts)
		}
		fmt.Fprintf(tw, "%s\t%.1f\t%s\t%s\t%s\t%s\t%.4f\t%.6f\t%.2f %%\t%s\t%s\t%s\t\n", units.HumanBytes(c.Bytes), 100*float64(c.Bytes)/float64(r.Base.Bytes),
			removed, experts, healed, c.Type, c.PPL, c.KLD, 100*c.SameTop, speed(c.PPTPS), speed(c.TGTPS), front)
	}
	tw.Flush()
	fmt.Fprintln(w, "* on the Pareto front: no other candidate is smaller and closer to the original (mean KLD)")
	if r.TargetSize > 0 {
		if r.Recommended == nil {
			fmt.Fprintf(w, "no candidate is at most %s (%d bytes)\n", units.HumanBytes(r.TargetSize), r.TargetSize)
		} else {
			c := r.Recommended
			removed := "no blocks removed"
			if len(c.Removed) > 0 {
				removed = "blocks " + blocks.FormatList(c.Removed) + " removed"
				if c.Healed {
					removed += " and healed"
				}
			}
			if c.Experts > 0 {
				removed += fmt.Sprintf(", %d experts removed from every MoE block", c.Experts)
			}
			fmt.Fprintf(w, "recommended for %s: %s, %s (%s, mean KLD %.6f, PPL %.4f)\n    %s\n", units.HumanBytes(r.TargetSize), c.Type, removed, units.HumanBytes(c.Bytes), c.KLD, c.PPL, c.Command)
		}
	}
	for _, c := range r.Candidates {
		if c.File != "" {
			fmt.Fprintf(w, "files kept in %s\n", filepath.Dir(c.File))
			break
		}
	}
}

// recommendCommand is the command line that makes the candidate: quantize
// for the unpruned model, prune --layers … --expert-list … --quantize
// otherwise, with the
// importance matrix the frontier used (a computed one is made by score
// --imatrix-out first, unless the keep folder holds it).
func recommendCommand(c *cli.Context, m *prune.Model, o frontier.Options, cand frontier.Candidate) string {
	model := c.String("model")
	out := cand.FileName(model)
	runArgs := func() []string {
		a := calibrationArgs(c)
		a = append(a, "-c", fmt.Sprint(o.Run.CtxSize()))
		if o.Run.Chunks > 0 {
			a = append(a, "--chunks", fmt.Sprint(o.Run.Chunks))
		}
		return a
	}
	var pre []string
	im := ""
	switch {
	case o.Imatrix != nil:
		im = o.ImatrixName
	case o.NoImatrix:
	case o.Keep != "":
		im = frontier.ImatrixFile(o.Keep, m.Path)
	default:
		im = strings.TrimSuffix(filepath.Base(model), filepath.Ext(model)) + ".imatrix"
		pre = append(append([]string{"ggufprune", "score", "-m", model}, runArgs()...), "--imatrix-out", im, "&&")
	}
	var args []string
	if len(cand.Removed) == 0 && len(cand.ExpertsRemoved) == 0 {
		args = []string{"ggufprune", "quantize"}
		if im != "" {
			args = append(args, "--imatrix", im)
		}
		args = append(args, model, out, cand.Type)
	} else {
		args = []string{"ggufprune", "prune", "-m", model}
		if len(cand.Removed) > 0 {
			args = append(args, "--layers", blocks.FormatList(cand.Removed))
		}
		if len(cand.ExpertsRemoved) > 0 {
			// The experts chosen, as a list: the same file whatever scores
			// a rerun would measure.
			var parts []string
			for _, b := range slices.Sorted(maps.Keys(cand.ExpertsRemoved)) {
				parts = append(parts, fmt.Sprintf("%d:%s", b, blocks.FormatList(cand.ExpertsRemoved[b])))
			}
			args = append(args, "--expert-list", strings.Join(parts, ";"))
		}
		if cand.Healed {
			args = append(append(args, runArgs()...), "--heal")
			if o.Ridge > 0 {
				args = append(args, "--ridge", fmt.Sprint(o.Ridge))
			}
		}
		args = append(args, "--quantize", cand.Type)
		if im != "" {
			args = append(args, "--imatrix", im)
		}
		args = append(args, "-o", out)
	}
	var q []string
	for _, a := range append(pre, args...) {
		q = append(q, shellQuote(a))
	}
	return strings.Join(q, " ")
}

// calibrationArgs are the flags that give the calibration again.
func calibrationArgs(c *cli.Context) []string {
	if f := c.String("file"); f != "" {
		return []string{"-f", f}
	}
	return []string{"--seed", fmt.Sprint(c.Uint64("seed"))}
}

// shellQuote quotes a word for a POSIX shell when it needs it.
func shellQuote(s string) string {
	if s == "&&" {
		return s
	}
	safe := s != ""
	for _, r := range s {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("-_./,:%+=@", r)) {
			safe = false
			break
		}
	}
	if safe {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

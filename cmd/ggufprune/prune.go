package main

import (
	"fmt"
	"io"
	"maps"
	"math"
	"slices"
	"strings"
	"text/tabwriter"

	"github.com/ggufprune/ggufprune/bi"
	"github.com/ggufprune/ggufprune/gguf/blocks"
	"github.com/ggufprune/ggufprune/gguf/imatrix"
	"github.com/ggufprune/ggufprune/gguf/surgery"
	"github.com/ggufprune/ggufprune/internal/plots"
	"github.com/ggufprune/ggufprune/internal/units"
	"github.com/ggufprune/ggufprune/prune"
	"github.com/ggufprune/ggufprune/prune/heal"
	"github.com/ggufprune/ggufprune/prune/runner"
	"github.com/ggufprune/ggufprune/prune/selection"
	"github.com/urfave/cli/v2"
)

func pruneCommand() *cli.Command {
	return commandUsageErrors(&cli.Command{
		Name:  "prune",
		Usage: "remove blocks (--layers, --remove, --target-size) or experts (--experts, --expert-list)",
		Description: "Removes transformer blocks, renumbers the rest (blk.N) contiguously, fixes {arch}.block_count\n" +
			"and every per-layer metadata array, and copies every kept tensor's bytes unchanged. The output is\n" +
			"written to a temporary file next to it, checked, synced and renamed; the input is never changed.\n\n" +
			"Say what to remove with exactly one of --layers, --remove or --target-size. The last two score\n" +
			"the blocks (on -f text, or read a score --json file with --scores, or, with neither, on text the\n" +
			"model writes itself) and remove the lowest Block Influence first (ShortGPT). The first and last\n" +
			"blocks are protected by default.\n\n" +
			"In mixture-of-experts models, --experts removes the lowest-scoring experts of every MoE block\n" +
			"(--expert-method, default reap; see docs/experts.md), alone or with blocks, in the same write.",
		Flags: append(runFlags(256),
			&cli.StringFlag{Name: "model", Aliases: []string{"m"}, Usage: "input `IN.gguf` (a split set's first shard opens the whole set)"},
			&cli.StringFlag{Name: "output", Aliases: []string{"o"}, Usage: "output `OUT.gguf` (never one of the input files)"},
			&cli.StringFlag{Name: "layers", Usage: "blocks to remove: 0-based `LIST` of indices and inclusive ranges, e.g. 3,5-7"},
			&cli.StringFlag{Name: "expert-list", Usage: "experts to remove from mixture-of-experts blocks, `BLOCKS:EXPERTS[;…]`, e.g. 0-7:0,5 (every MoE block loses as many); alone or with a way of removing blocks"},
			&cli.StringFlag{Name: "experts", Usage: "remove `N` experts, or P% of them, from every mixture-of-experts block, lowest --expert-method score first; auto: the fewest that bring the output to --target-size"},
			&cli.StringFlag{Name: "expert-method", Usage: "how experts are ranked (`METRIC`): " + strings.Join(bi.ExpertMetricNames(), ", ") + " (default " + prune.DefaultExpertMetric + "; see docs/experts.md)"},
			&cli.StringFlag{Name: "remove", Usage: "remove `N` blocks, or P% of the blocks (rounded), lowest BI first"},
			&cli.StringFlag{Name: "target-size", Usage: "remove the fewest blocks that bring the output to `SIZE`: bytes, 3GiB, 2.5GB, 800MiB or 70% (of the input)"},
			&cli.StringFlag{Name: "file", Aliases: []string{"f"}, Usage: "calibration text `FILE` for scoring"},
			&cli.StringFlag{Name: "scores", Usage: "use the scores in `FILE` (from score -o or --json) instead of scoring"},
			&cli.StringFlag{Name: "method", Usage: "how blocks are chosen (`METHOD`): " + strings.Join(selection.Names(), ", ") + " (default " + selection.BI.Name + "; see docs/methods.md); with --scores, the report's metric"},
			&cli.Uint64Flag{Name: "seed", Value: 1, Usage: "`SEED` of self-generated calibration text (no -f, no --scores)"},
			&cli.IntFlag{Name: "keep-first", Value: 1, Usage: "never remove the first `N` blocks"},
			&cli.IntFlag{Name: "keep-last", Value: 1, Usage: "never remove the last `N` blocks"},
			&cli.StringFlag{Name: "plot", Usage: "draw BI per block with the removed blocks marked to `FILE`.svg or .png"},
			&cli.StringFlag{Name: "eval", Usage: "after writing, compute perplexity of the input and the output on `TEXT` (a file)"},
			&cli.StringFlag{Name: "quantize", Usage: "quantize the pruned model to `TYPE` (see quantize --help) in the same step: one output file"},
			&cli.StringFlag{Name: "imatrix", Usage: "importance matrix `FILE` of the input model: pruned with it for --quantize and --imatrix-out"},
			&cli.StringFlag{Name: "imatrix-out", Usage: "write the imatrix of the pruned model (removed blocks dropped, the rest renumbered) to `FILE`"},
			&cli.BoolFlag{Name: "heal", Usage: "repair each removed run inside the block before it and the one after it (--heal-maps): their FFN down projections refitted by least squares on the calibration text (-f, or self-generated; see --heal-fit)"},
			&cli.BoolFlag{Name: "compensate", Usage: "scale the output projections of the kept blocks after each removed run (not healed) so that the residual stream keeps its magnitude, measured on the calibration text (-f, or self-generated)"},
			&cli.IntFlag{Name: "heal-maps", Value: prune.DefaultHealMaps, Usage: "healing maps per removed run: `N` = 1 fits the one in the block before the run, N > 1 also ones in the N-1 kept blocks after it"},
			&cli.StringFlag{Name: "heal-fit", Value: "projection", Usage: "what healing fits (`FORM`): projection refits each mapped block's FFN down projection on its input (the FFN's activation; a mixture of experts' routed experts' projections together; FFNs wider than 4096 in all, or with a shared expert, get output's map), output maps the FFN output (ReplaceMe)"},
			&cli.Float64Flag{Name: "ridge", Usage: "healing's ridge `R`, relative to the mean diagonal of MᵀM (default: per run, the one of 1e-10 … 0.1 that heals held-out calibration chunks best)"},
			&cli.BoolFlag{Name: "dry-run", Usage: "print the plan and write nothing"},
			&cli.BoolFlag{Name: "force", Usage: "remove blocks even where the architecture derives layer kinds from the block index"},
			&cli.BoolFlag{Name: "keep-split", Usage: "write a split input as the same number of shards (OUT-0000i-of-0000n.gguf) instead of one file"},
			&cli.BoolFlag{Name: "json", Usage: "print the summary as JSON"},
			overwriteFlag,
		),
		Action: runPrune,
	})
}

func runPrune(c *cli.Context) error {
	if c.NArg() > 0 {
		return usagef("prune: unexpected arguments %v (the model is given with -m)", c.Args().Slice())
	}
	if err := requireFlags(c, "model"); err != nil {
		return err
	}
	out := c.String("output")
	dryRun := c.Bool("dry-run")
	if out == "" && !dryRun {
		return usagef("prune: -o OUT.gguf is required (or --dry-run)")
	}
	if out == "-" {
		return usagef("prune: -o -: outputs are files; standard output is not one")
	}
	expertsAuto := c.String("experts") == "auto"
	expertsByScore := c.IsSet("experts")
	if expertsAuto && !c.IsSet("target-size") {
		return usagef("prune: --experts auto removes the fewest experts that reach --target-size; give --target-size")
	}
	how := 0
	for _, f := range []string{"layers", "remove", "target-size"} {
		if c.IsSet(f) && !(f == "target-size" && expertsAuto) {
			how++
		}
	}
	if how > 1 || (how == 0 && !c.IsSet("expert-list") && !expertsByScore) {
		return usagef("prune: give exactly one of --layers, --remove and --target-size, or experts to remove (--experts, --expert-list), or both")
	}
	if expertsByScore && c.IsSet("expert-list") {
		return usagef("prune: give --experts or --expert-list, not both")
	}
	if c.IsSet("expert-method") && !expertsByScore {
		return usagef("prune: --expert-method ranks the experts --experts removes")
	}
	healing, compensate := c.Bool("heal"), c.Bool("compensate")
	if (c.IsSet("expert-list") || expertsByScore) && (healing || compensate) {
		return usagef("prune: removing experts does not go with --heal or --compensate yet")
	}
	// Healing and compensation calibrate on -f even with blocks given.
	calibrates := healing || compensate
	if c.IsSet("layers") && !expertsByScore && (c.IsSet("scores") || (c.IsSet("file") && !calibrates)) {
		return usagef("prune: --layers needs no scores; -f and --scores go with --remove, --target-size or --experts (and -f with --heal or --compensate)")
	}
	if c.IsSet("file") && c.IsSet("scores") && !calibrates {
		return usagef("prune: give -f or --scores, not both (with --heal or --compensate, -f is their calibration)")
	}
	if n := c.Int("heal-maps"); c.IsSet("heal-maps") && (!healing || n < 1 || n > 64) {
		return usagef("prune: --heal-maps is a number of maps from 1 to 64, for --heal")
	}
	healForm, ok := heal.Forms[c.String("heal-fit")]
	if c.IsSet("heal-fit") && (!healing || !ok) {
		return usagef("prune: --heal-fit is projection or output, for --heal")
	}
	if r := c.Float64("ridge"); c.IsSet("ridge") && (!healing || !(r > 0) || math.IsInf(r, 0)) {
		return usagef("prune: --ridge is a positive finite number for --heal")
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
	var method *selection.Method
	if v := c.String("method"); v != "" {
		var err error
		if method, err = selection.Parse(v); err != nil {
			return usagef("--method %v", err)
		}
		if c.IsSet("layers") {
			return usagef("prune: --method chooses blocks; --layers gives them")
		}
		if c.IsSet("plot") && method != selection.BI && !c.IsSet("scores") {
			return usagef("prune: --plot draws per-block scores; --method %s has none (score --metric %s, then --scores, has)", method, strings.Join(lossMetrics(), " or "))
		}
	}
	if p := c.String("plot"); p != "" && !plots.ValidName(p) {
		return usagef("--plot %s: the file must end in .svg or .png", p)
	}
	run, err := runOptionsFrom(c)
	if err != nil {
		return err
	}
	verboseLog(c)
	// Everything that can be refused is checked before scoring, which may take long.
	if !dryRun {
		// -o is checked by prune.Run, after the check that it is not the input.
		if err := checkOutputs(c, "plot", "imatrix-out"); err != nil {
			return err
		}
	}
	o := prune.Options{Run: run, Method: method, Heal: healing, HealMaps: int(c.Int("heal-maps")), HealForm: healForm, Compensate: compensate, Ridge: c.Float64("ridge"), Write: prune.WriteOptions{
		Output: out, Plan: surgery.Options{Force: c.Bool("force")}, DryRun: dryRun,
		ImatrixOut: c.String("imatrix-out"), Overwrite: c.Bool("overwrite"),
	}}
	if c.Bool("keep-split") {
		o.Write.Sharding = surgery.KeepSplit
	}
	if typ := c.String("quantize"); typ != "" {
		q, ok := prune.LookupQuantType(typ)
		if !ok {
			return unknownQuantType(typ)
		}
		o.Write.Quantize, o.Write.QuantizeThreads = q, run.Threads
		o.Write.Progress = newProgress(c.App.ErrWriter, "quantizing", "tensors", 0).update
	}
	if p := c.String("eval"); p != "" {
		if o.EvalText, err = runner.TextFile(p); err != nil {
			return err
		}
	}
	if p := c.String("imatrix"); p != "" {
		if o.Write.Imatrix, err = imatrix.Read(p); err != nil {
			return err
		}
		o.Write.ImatrixName = p
	}
	m, err := prune.Open(c.String("model"))
	if err != nil {
		return err
	}
	defer m.Close()
	if calibrates {
		if o.Calibration, err = calibrationFrom(c); err != nil {
			return err
		}
	}
	if expertsByScore {
		if o.Experts, err = expertSelectionFrom(c, m); err != nil {
			return err
		}
	}
	if v := c.String("expert-list"); v != "" {
		if o.Write.Plan.Experts, err = prune.ParseExpertList(v); err != nil {
			return usageError{err}
		}
	}
	if c.IsSet("layers") {
		if o.Layers, err = blocks.ParseList(c.String("layers")); err != nil {
			return usageError{err}
		}
	} else if how > 0 {
		if o.Select, err = selectionFrom(c, m); err != nil {
			return err
		}
	}
	// Scores for blocks chosen by score and for experts, from one report
	// or one pass.
	if (how > 0 && !c.IsSet("layers")) || expertsByScore {
		if file := c.String("scores"); file != "" {
			if o.Scores, err = prune.ReadScoreReport(file, m); err != nil {
				return err
			}
			o.ScoresFile = file
		} else if !calibrates {
			if o.Calibration, err = calibrationFrom(c); err != nil {
				return err
			}
		}
	}
	res, err := prune.Run(c.Context, m, o)
	if err != nil {
		return withFlags(c, err)
	}
	for _, w := range res.Warnings {
		fmt.Fprintf(c.App.ErrWriter, "ggufprune: warning: %s: %s\n", res.Model, w)
	}
	if p := c.String("plot"); p != "" && res.Scores != nil {
		draw := plots.Scores
		if res.ExpertMethod != "" && len(res.Removed) == 0 {
			draw = func(p string, rep *prune.ScoreReport, _ []int) error {
				return plots.Experts(p, rep, res.ExpertsRemoved)
			}
		}
		if err := draw(p, res.Scores, res.Removed); err != nil {
			return err
		}
	}
	if c.Bool("json") {
		return printJSON(c.App.Writer, res)
	}
	if res.Scores != nil {
		printScores(c.App.Writer, res.Scores, res.Removed)
		fmt.Fprintln(c.App.Writer)
		if res.ExpertMethod != "" {
			printExperts(c.App.Writer, res.Scores, res.ExpertsRemoved)
			fmt.Fprintln(c.App.Writer)
		}
	}
	printPruneSummary(c.App.Writer, res)
	return nil
}

// expertSelectionFrom reads --experts (with --target-size for auto) and
// --expert-method.
func expertSelectionFrom(c *cli.Context, m *prune.Model) (prune.ExpertSelection, error) {
	s := prune.ExpertSelection{Metric: c.String("expert-method")}
	if s.Metric != "" {
		if _, ok := bi.LookupExpertMetric(s.Metric); !ok {
			return s, usagef("--expert-method %s: one of %s", s.Metric, strings.Join(bi.ExpertMetricNames(), ", "))
		}
	}
	if m.MoE == nil {
		return s, fmt.Errorf("%s: --experts: %s has no experts (it is not a mixture of experts)", m.Path, m.Arch)
	}
	var err error
	if v := c.String("experts"); v == "auto" {
		if s.TargetSize, err = units.ParseSize(c.String("target-size"), m.Size()); err != nil {
			return s, usagef("--target-size %w", err)
		}
	} else if s.Count, err = m.ParseExpertCount(v); err != nil {
		return s, usagef("--experts %w", err)
	}
	return s, nil
}

// selectionFrom reads --remove or --target-size and the protected blocks.
func selectionFrom(c *cli.Context, m *prune.Model) (prune.Selection, error) {
	s := prune.Selection{Protect: selection.Protect{First: c.Int("keep-first"), Last: c.Int("keep-last")}}
	if s.Protect.First < 0 || s.Protect.Last < 0 {
		return s, usagef("--keep-first and --keep-last must not be negative")
	}
	var err error
	if v := c.String("remove"); v != "" {
		if s.Count, err = selection.ParseCount(v, m.ScoredBlocks()); err != nil {
			return s, usagef("--remove %w", err)
		}
		return s, nil
	}
	if c.String("experts") == "auto" {
		return s, nil
	}
	if s.TargetSize, err = units.ParseSize(c.String("target-size"), m.Size()); err != nil {
		return s, usagef("--target-size %w", err)
	}
	return s, nil
}

func printPruneSummary(w io.Writer, s *prune.Result) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "model\t%s\n", s.Model)
	fmt.Fprintf(tw, "method\t%s\n", s.Method)
	if len(s.Removed) > 0 || len(s.ExpertsRemoved) == 0 {
		fmt.Fprintf(tw, "removed blocks\t%s (%d of %d)\n", blocks.FormatList(s.Removed), len(s.Removed), s.BlockCountBefore)
	}
	if len(s.ExpertsRemoved) > 0 {
		var parts []string
		for _, b := range slices.Sorted(maps.Keys(s.ExpertsRemoved)) {
			parts = append(parts, fmt.Sprintf("%d:%s", b, blocks.FormatList(s.ExpertsRemoved[b])))
		}
		fmt.Fprintf(tw, "removed experts\t%s (%d left in each MoE block)\n", strings.Join(parts, " "), s.ExpertCount)
		if s.ExpertMethod != "" {
			fmt.Fprintf(tw, "expert method\t%s\n", s.ExpertMethod)
		}
	}
	fmt.Fprintf(tw, "blocks\t%d -> %d\n", s.BlockCountBefore, s.BlockCountAfter)
	fmt.Fprintf(tw, "size\t%s -> %s (%.1f%%)\n", units.HumanBytes(s.BytesBefore), units.HumanBytes(s.BytesAfter), 100*float64(s.BytesAfter)/float64(s.BytesBefore))
	if s.DryRun {
		fmt.Fprintf(tw, "dry run\tnothing written\n")
	}
	for _, o := range s.Outputs {
		fmt.Fprintf(tw, "wrote\t%s\n", o)
	}
	if s.Search != nil {
		fmt.Fprintf(tw, "search\t%d passes over the calibration, %d tokens, %.1f s\n", s.Search.Cost.Passes, s.Search.Cost.Tokens, s.Search.Cost.Seconds)
		var steps []string
		for _, st := range s.Search.Steps {
			steps = append(steps, fmt.Sprintf("%d (%.5g)", st.Block, st.Value))
		}
		fmt.Fprintf(tw, "steps\t%s\n", strings.Join(steps, ", "))
	}
	if s.Heal != nil {
		for _, r := range s.Heal.Runs {
			switch {
			case r.Note != "":
				fmt.Fprintf(tw, "not healed\tblocks %d-%d: %s\n", r.First, r.Last, r.Note)
			case s.DryRun:
				fmt.Fprintf(tw, "would heal\tblocks %d-%d into %s (%s)\n", r.First, r.Last, strings.Join(r.Tensors, ", "), r.Type)
			default:
				heldOut := ""
				if r.HeldOut > 0 {
					heldOut = fmt.Sprintf(", %.1f%% on held-out chunks", 100*r.HeldOut)
				}
				fmt.Fprintf(tw, "healed\tblocks %d-%d into %s (%s, %s fit): %.1f%% of the removal's gap remains on the calibration%s (ridge %.3g)\n", r.First, r.Last, strings.Join(r.Tensors, ", "), r.Type, r.Form, 100*r.Residual, heldOut, r.Ridge)
			}
			for _, a := range r.After {
				if s.DryRun {
					fmt.Fprintf(tw, "would heal\tblock %d after blocks %d-%d into %s\n", a.Block, r.First, r.Last, strings.Join(a.Tensors, ", "))
				} else {
					fmt.Fprintf(tw, "healed\tblock %d after blocks %d-%d into %s (%s fit): %.1f%% of what remained of the gap remains\n", a.Block, r.First, r.Last, strings.Join(a.Tensors, ", "), a.Form, 100*a.Residual)
				}
			}
		}
		if !s.DryRun {
			fmt.Fprintf(tw, "healing\t%d passes, %d tokens, %.1f s\n", s.Heal.Cost.Passes, s.Heal.Cost.Tokens, s.Heal.Cost.Seconds)
		}
	}
	if s.Compensation != nil {
		printCompensation(tw, s.Compensation, s.DryRun)
	}
	if s.Quantized != "" {
		fmt.Fprintf(tw, "quantized\t%s\n", s.Quantized)
	}
	if s.ImatrixOut != "" {
		fmt.Fprintf(tw, "imatrix\t%s (pruned with the model)\n", s.ImatrixOut)
	}
	if len(s.Eval) == 2 {
		fmt.Fprintf(tw, "perplexity\t%.4f -> %.4f (%+.1f%%, %d tokens)\n", s.Eval[0].PPL, s.Eval[1].PPL, 100*(s.Eval[1].PPL/s.Eval[0].PPL-1), s.Eval[0].Tokens)
		if k := s.Eval[1].KLD; k != nil {
			fmt.Fprintf(tw, "KL divergence\t%.6f ± %.6f from the input; same top token %.2f ± %.2f %%\n", k.KLD, k.KLDErr, 100*k.SameTop, 100*k.SameTopErr)
		}
	}
	tw.Flush()
}

// lossMetrics are the score metrics measured by loss (score --metric).
func lossMetrics() []string {
	var out []string
	for _, m := range selection.Methods() {
		if m.Key != nil && m.Loss != selection.NoLoss {
			out = append(out, m.Name)
		}
	}
	return out
}

// printCompensation prints every cut's α and the scales of the blocks
// after them, or with a dry run the tensors compensation would rewrite.
func printCompensation(w io.Writer, comp *heal.Compensation, dryRun bool) {
	for _, cut := range comp.Cuts {
		switch {
		case cut.Note != "":
			fmt.Fprintf(w, "not compensated\tblocks %d-%d: %s\n", cut.First, cut.Last, cut.Note)
		case !dryRun:
			fmt.Fprintf(w, "compensated\tblocks %d-%d: the stream loses %.1f%% of its mean norm there (alpha %.4f)\n", cut.First, cut.Last, 100*(1-1/cut.Alpha), cut.Alpha)
		}
	}
	if dryRun {
		fmt.Fprintf(w, "would scale\t%d tensors: %s\n", len(comp.Tensors), strings.Join(comp.Tensors, ", "))
		return
	}
	var bs []int
	for b := range comp.Scales {
		bs = append(bs, b)
	}
	slices.Sort(bs)
	var parts []string
	for _, b := range bs {
		parts = append(parts, fmt.Sprintf("%d: %.4f", b, comp.Scales[b]))
	}
	fmt.Fprintf(w, "scaled\tattn_output and ffn_down of blocks %s\n", strings.Join(parts, ", "))
	fmt.Fprintf(w, "compensation\t%d passes, %d tokens, %.1f s\n", comp.Cost.Passes, comp.Cost.Tokens, comp.Cost.Seconds)
}

package main

import (
	"fmt"
	"io"
	"text/tabwriter"

	"github.com/ggufprune/ggufprune/bi"
	"github.com/ggufprune/ggufprune/gguf/blocks"
	"github.com/ggufprune/ggufprune/prune"
	"github.com/ggufprune/ggufprune/prune/eval"
	"github.com/ggufprune/ggufprune/prune/runner"
	"github.com/urfave/cli/v2"
)

func evalCommand() *cli.Command {
	return commandUsageErrors(&cli.Command{
		Name:  "eval",
		Usage: "perplexity of one or more models on the same text, and their divergence from a base model",
		Description: "Computes perplexity as llama.cpp's llama-perplexity does (chunks of -c tokens, BOS at the\n" +
			"start of each, the second half of each chunk scored), so the numbers compare with it.\n" +
			"Give -m several times to compare models (e.g. before and after pruning) on the same tokens.\n\n" +
			"With --base ORIG.gguf the original runs beside them in one pass, and each model's next-token\n" +
			"distributions are compared with the original's, as llama-perplexity --kl-divergence does:\n" +
			"KL divergence, same top token, Δp. --kl-divergence-base FILE writes the original's\n" +
			"log-probabilities in llama-perplexity's format (with --base), or reads such a file as the base\n" +
			"(without it; the tokens come from the file, -f is not needed).\n\n" +
			"--hellaswag, --winogrande or --multiple-choice FILE measure task accuracy instead, with\n" +
			"llama-perplexity's file formats, task draws and scoring rules.",
		Flags: append(runFlags(512),
			&cli.StringSliceFlag{Name: "model", Aliases: []string{"m"}, Usage: "model `FILE.gguf` (repeat for several)"},
			&cli.StringFlag{Name: "file", Aliases: []string{"f"}, Usage: "evaluation text `FILE` (UTF-8)"},
			&cli.StringFlag{Name: "base", Usage: "the original model `ORIG.gguf`: compare every -m model with it"},
			&cli.StringFlag{Name: "kl-divergence-base", Usage: "llama-perplexity's logits `FILE`: written from --base, or read as the base without it"},
			&cli.StringFlag{Name: "hellaswag", Usage: "task accuracy on a HellaSwag `FILE` (llama-perplexity's format: 6 lines a task)"},
			&cli.StringFlag{Name: "winogrande", Usage: "task accuracy on a WinoGrande CSV `FILE` (index,sentence,option1,option2,answer)"},
			&cli.StringFlag{Name: "multiple-choice", Usage: "task accuracy on a multiple-choice `FILE` (llama-perplexity's binary format)"},
			&cli.StringFlag{Name: "skip", Usage: "run the -m models as if the blocks of `LIST` (e.g. 3,5-7) were removed, without writing a file"},
			&cli.StringFlag{Name: "skip-experts", Usage: "run the -m models as if the experts of `BLOCKS:EXPERTS[;…]` (e.g. 0-7:0,5) were removed, by masking their router logits"},
			&cli.IntFlag{Name: "tasks", Usage: "evaluate `N` tasks drawn as llama-perplexity draws them (default: 400 for HellaSwag, all for the others)"},
			&cli.BoolFlag{Name: "json", Usage: "print [{model, ppl, tokens, chunks, kld}] as JSON"},
			overwriteFlag,
		),
		Action: runEval,
	})
}

func runEval(c *cli.Context) error {
	if err := requireFlags(c, "model"); err != nil {
		return err
	}
	var kinds []eval.TaskKind
	for _, k := range []eval.TaskKind{eval.HellaSwag, eval.WinoGrande, eval.MultipleChoice} {
		if c.IsSet(string(k)) {
			kinds = append(kinds, k)
		}
	}
	if len(kinds) > 0 {
		return runTasks(c, kinds)
	}
	if c.IsSet("tasks") {
		return usagef("eval: --tasks goes with --hellaswag, --winogrande or --multiple-choice")
	}
	readBase := c.IsSet("kl-divergence-base") && !c.IsSet("base")
	if !readBase {
		if err := requireFlags(c, "file"); err != nil {
			return err
		}
	} else if c.IsSet("file") {
		return usagef("eval: the tokens come from --kl-divergence-base %s; -f is not used with it (give --base to write that file instead)", c.String("kl-divergence-base"))
	}
	o, err := runOptionsFrom(c)
	if err != nil {
		return err
	}
	if v := c.String("skip"); v != "" {
		if o.Skip, err = blocks.ParseList(v); err != nil {
			return usagef("--skip %v", err)
		}
	}
	if v := c.String("skip-experts"); v != "" {
		if o.SkipExperts, err = prune.ParseExpertList(v); err != nil {
			return usagef("--skip-experts %v", err)
		}
		for _, m := range c.StringSlice("model") {
			if err := prune.CheckExperts(m, o.SkipExperts); err != nil {
				return err
			}
		}
	}
	if c.IsSet("base") {
		if err := checkOutputs(c, "kl-divergence-base"); err != nil {
			return err
		}
	}
	verboseLog(c)
	var text *runner.Text
	if !readBase {
		if text, err = runner.TextFile(c.String("file")); err != nil {
			return err
		}
	}
	var results []eval.Result
	if c.IsSet("base") || readBase {
		base := eval.Base{Model: c.String("base"), Overwrite: c.Bool("overwrite")}
		if readBase {
			base.LogitsIn = c.String("kl-divergence-base")
		} else {
			base.LogitsOut = c.String("kl-divergence-base")
		}
		results, err = eval.Compare(c.Context, base, c.StringSlice("model"), text, o)
	} else {
		results, err = eval.Evaluate(c.Context, c.StringSlice("model"), text, o)
	}
	if err != nil {
		return withFlags(c, err)
	}
	if c.Bool("json") {
		return printJSON(c.App.Writer, results)
	}
	return printEval(c.App.Writer, results)
}

// printEval prints perplexities, with the divergence from the base where
// models were compared with one (the base is the first row).
func printEval(w io.Writer, results []eval.Result) error {
	compared := len(results) > 1 && results[1].KLD != nil
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	if !compared {
		fmt.Fprintln(tw, "model\tperplexity\ttokens scored\tchunks")
		for _, r := range results {
			fmt.Fprintf(tw, "%s\t%.4f\t%d\t%d\n", r.Model, r.PPL, r.Tokens, r.Chunks)
		}
		return tw.Flush()
	}
	fmt.Fprintln(tw, "model\tperplexity\tln(PPL/PPL base)\tmean KLD\tsame top\tRMS Δp\ttokens scored\tchunks")
	for i, r := range results {
		if i == 0 {
			fmt.Fprintf(tw, "%s (base)\t%.4f\t\t\t\t\t%d\t%d\n", r.Model, r.PPL, r.Tokens, r.Chunks)
			continue
		}
		k := r.KLD
		fmt.Fprintf(tw, "%s\t%.4f ± %.4f\t%.5f ± %.5f\t%.6f ± %.6f\t%.2f ± %.2f %%\t%.3f ± %.3f %%\t%d\t%d\n", r.Model, r.PPL, k.PPLErr,
			k.LnPPLRatio, k.LnPPLRatioErr, k.KLD, k.KLDErr, 100*k.SameTop, 100*k.SameTopErr, 100*k.DpRMS, 100*k.DpRMSErr, r.Tokens, r.Chunks)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	// llama-perplexity's percentiles, one model a column.
	fmt.Fprintln(w)
	tw = tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprint(tw, "KLD / Δp")
	for _, r := range results[1:] {
		fmt.Fprintf(tw, "\t%s KLD\tΔp", r.Model)
	}
	fmt.Fprintln(tw)
	rows := []struct {
		name string
		get  func(p bi.Percentiles) float64
	}{
		{"max", func(p bi.Percentiles) float64 { return p.Max }},
		{"99.9%", func(p bi.Percentiles) float64 { return p.P99_9 }},
		{"99%", func(p bi.Percentiles) float64 { return p.P99 }},
		{"95%", func(p bi.Percentiles) float64 { return p.P95 }},
		{"90%", func(p bi.Percentiles) float64 { return p.P90 }},
		{"median", func(p bi.Percentiles) float64 { return p.Median }},
		{"10%", func(p bi.Percentiles) float64 { return p.P10 }},
		{"5%", func(p bi.Percentiles) float64 { return p.P5 }},
		{"1%", func(p bi.Percentiles) float64 { return p.P1 }},
		{"0.1%", func(p bi.Percentiles) float64 { return p.P0_1 }},
		{"min", func(p bi.Percentiles) float64 { return p.Min }},
	}
	for _, row := range rows {
		fmt.Fprint(tw, row.name)
		for _, r := range results[1:] {
			fmt.Fprintf(tw, "\t%.6f\t%+.3f%%", row.get(r.KLD.KLDPct), 100*row.get(r.KLD.DpPct))
		}
		fmt.Fprintln(tw)
	}
	return tw.Flush()
}

// runTasks evaluates task accuracy.
func runTasks(c *cli.Context, kinds []eval.TaskKind) error {
	if len(kinds) > 1 {
		return usagef("eval: give one of --hellaswag, --winogrande and --multiple-choice")
	}
	for _, f := range []string{"file", "base", "kl-divergence-base"} {
		if c.IsSet(f) {
			return usagef("eval: --%s does not go with --%s", f, kinds[0])
		}
	}
	n := c.Int("tasks")
	if n < 0 {
		return usagef("--tasks %d: must not be negative", n)
	}
	if c.IsSet("skip") || c.IsSet("skip-experts") {
		return usagef("eval: --skip and --skip-experts go with perplexity and --base, not with --%s", kinds[0])
	}
	if !c.IsSet("tasks") {
		n = eval.DefaultTasks(kinds[0])
	}
	o, err := runOptionsFrom(c)
	if err != nil {
		return err
	}
	verboseLog(c)
	results, err := eval.EvaluateTasks(c.Context, kinds[0], c.String(string(kinds[0])), n, c.StringSlice("model"), o)
	if err != nil {
		return withFlags(c, err)
	}
	if c.Bool("json") {
		return printJSON(c.App.Writer, results)
	}
	tw := tabwriter.NewWriter(c.App.Writer, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "model\t%s tasks\taccuracy\t95%% interval\tchance\n", kinds[0])
	for _, r := range results {
		fmt.Fprintf(tw, "%s\t%d of %d\t%.2f ± %.2f %%\t[%.2f%%, %.2f%%]\t%.2f %%\n", r.Model, r.Tasks, r.FileTasks, 100*r.Accuracy, 100*r.StdErr, 100*r.Low, 100*r.High, 100*r.Chance)
	}
	return tw.Flush()
}

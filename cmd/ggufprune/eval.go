package main

import (
	"fmt"
	"text/tabwriter"

	"github.com/ggufprune/ggufprune/prune"
	"github.com/urfave/cli/v2"
)

func evalCommand() *cli.Command {
	return commandUsageErrors(&cli.Command{
		Name:  "eval",
		Usage: "perplexity of one or more models on the same text",
		Description: "Computes perplexity as llama.cpp's llama-perplexity does (chunks of -c tokens, BOS at the\n" +
			"start of each, the second half of each chunk scored), so the numbers compare with it.\n" +
			"Give -m several times to compare models (e.g. before and after pruning) on the same tokens.",
		Flags: append(runFlags(512),
			&cli.StringSliceFlag{Name: "model", Aliases: []string{"m"}, Usage: "model `FILE.gguf` (repeat for several)"},
			&cli.StringFlag{Name: "file", Aliases: []string{"f"}, Usage: "evaluation text `FILE` (UTF-8)"},
			&cli.BoolFlag{Name: "json", Usage: "print [{model, ppl, tokens}] as JSON"},
		),
		Action: runEval,
	})
}

func runEval(c *cli.Context) error {
	if err := requireFlags(c, "model", "file"); err != nil {
		return err
	}
	o, err := runOptionsFrom(c)
	if err != nil {
		return err
	}
	verboseLog(c)
	text, err := prune.TextFile(c.String("file"))
	if err != nil {
		return err
	}
	results, err := prune.Evaluate(c.Context, c.StringSlice("model"), text, o)
	if err != nil {
		return withFlags(c, err)
	}
	if c.Bool("json") {
		return printJSON(c.App.Writer, results)
	}
	tw := tabwriter.NewWriter(c.App.Writer, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "model\tperplexity\ttokens scored\tchunks")
	for _, r := range results {
		fmt.Fprintf(tw, "%s\t%.4f\t%d\t%d\n", r.Model, r.PPL, r.Tokens, r.Chunks)
	}
	return tw.Flush()
}

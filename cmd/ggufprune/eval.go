package main

import (
	"fmt"
	"text/tabwriter"

	"github.com/ggufprune/ggufprune/llamacpp"
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
			&cli.StringSliceFlag{Name: "model", Aliases: []string{"m"}, Usage: "model `FILE.gguf` (repeat for several)", Required: true},
			&cli.StringFlag{Name: "file", Aliases: []string{"f"}, Usage: "evaluation text `FILE` (UTF-8)", Required: true},
			&cli.BoolFlag{Name: "json", Usage: "print [{model, ppl, tokens}] as JSON"},
		),
		Action: runEval,
	})
}

type evalResult struct {
	Model  string  `json:"model"`
	PPL    float64 `json:"ppl"`
	Tokens int     `json:"tokens"`
	Chunks int     `json:"chunks"`
}

func runEval(c *cli.Context) error {
	o, err := runOptionsFrom(c)
	if err != nil {
		return err
	}
	text, err := readText(c.String("file"))
	if err != nil {
		return err
	}
	var results []evalResult
	for _, path := range c.StringSlice("model") {
		r, err := evalModel(path, o, c.String("file"), text, c)
		if err != nil {
			return err
		}
		results = append(results, r)
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

func evalModel(path string, o runOptions, textName, text string, c *cli.Context) (evalResult, error) {
	m, err := loadModel(path, o)
	if err != nil {
		return evalResult{}, err
	}
	defer m.Close()
	tokens, err := m.Tokenize(text, true)
	if err != nil {
		return evalResult{}, fmt.Errorf("%s: %w", textName, err)
	}
	ctx, err := m.NewContext(llamacpp.ContextParams{NCtx: o.nCtx, Threads: o.threads})
	if err != nil {
		return evalResult{}, err
	}
	defer ctx.Close()
	bar := newProgress(c.App.ErrWriter, "perplexity", "chunks", o.nCtx)
	r, err := llamacpp.Perplexity(ctx, tokens, o.chunks, bar.update)
	if err != nil {
		return evalResult{}, fmt.Errorf("%s on %s: %w", path, textName, err)
	}
	return evalResult{Model: path, PPL: r.PPL, Tokens: r.Tokens, Chunks: r.Chunks}, nil
}

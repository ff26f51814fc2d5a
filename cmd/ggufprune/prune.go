package main

import (
	"fmt"
	"io"
	"text/tabwriter"

	"github.com/ggufprune/ggufprune/gguf"
	"github.com/urfave/cli/v2"
)

func pruneCommand() *cli.Command {
	return commandUsageErrors(&cli.Command{
		Name:  "prune",
		Usage: "write a copy of a model without some of its blocks",
		Description: "Removes the given transformer blocks, renumbers the rest (blk.N) contiguously, fixes\n" +
			"{arch}.block_count and every per-layer metadata array, and copies every kept tensor's bytes\n" +
			"unchanged. The output is written to a temporary file next to it, checked, and renamed.",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "model", Aliases: []string{"m"}, Usage: "input `IN.gguf` (a split set's first shard opens the whole set)", Required: true},
			&cli.StringFlag{Name: "output", Aliases: []string{"o"}, Usage: "output `OUT.gguf` (never one of the input files)"},
			&cli.StringFlag{Name: "layers", Usage: "blocks to remove: 0-based `LIST` of indices and inclusive ranges, e.g. 3,5-7"},
			&cli.BoolFlag{Name: "dry-run", Usage: "print the plan and write nothing"},
			&cli.BoolFlag{Name: "force", Usage: "remove blocks even where the architecture derives layer kinds from the block index"},
			&cli.BoolFlag{Name: "keep-split", Usage: "write a split input as the same number of shards (OUT-0000i-of-0000n.gguf) instead of one file"},
			&cli.BoolFlag{Name: "json", Usage: "print the summary as JSON"},
		},
		Action: runPrune,
	})
}

// pruneSummary is what prune prints.
type pruneSummary struct {
	Model            string   `json:"model"`
	Outputs          []string `json:"outputs,omitempty"`
	Removed          []int    `json:"removed"`
	BlockCountBefore int      `json:"block_count_before"`
	BlockCountAfter  int      `json:"block_count_after"`
	BytesBefore      int64    `json:"bytes_before"`
	BytesAfter       int64    `json:"bytes_after"`
	DryRun           bool     `json:"dry_run"`
}

func runPrune(c *cli.Context) error {
	if c.NArg() > 0 {
		return usagef("prune: unexpected arguments %v (the model is given with -m)", c.Args().Slice())
	}
	out := c.String("output")
	if out == "" && !c.Bool("dry-run") {
		return usagef("prune: -o OUT.gguf is required (or --dry-run)")
	}
	if !c.IsSet("layers") {
		return usagef("prune: say which blocks to remove with --layers")
	}
	remove, err := gguf.ParseBlockList(c.String("layers"))
	if err != nil {
		return usageError{err}
	}
	m, err := gguf.OpenModel(c.String("model"))
	if err != nil {
		return err
	}
	defer m.Close()
	plan, err := gguf.PlanRemoval(m, remove, c.Bool("force"))
	if err != nil {
		return err
	}
	sum, err := applyPlan(plan, out, c.Bool("keep-split"), c.Bool("dry-run"))
	if err != nil {
		return err
	}
	if c.Bool("json") {
		return printJSON(c.App.Writer, sum)
	}
	printPruneSummary(c.App.Writer, sum)
	return nil
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

func printPruneSummary(w io.Writer, s *pruneSummary) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "model\t%s\n", s.Model)
	fmt.Fprintf(tw, "removed blocks\t%s (%d of %d)\n", gguf.FormatBlockList(s.Removed), len(s.Removed), s.BlockCountBefore)
	fmt.Fprintf(tw, "blocks\t%d -> %d\n", s.BlockCountBefore, s.BlockCountAfter)
	fmt.Fprintf(tw, "size\t%s -> %s (%.1f%%)\n", humanBytes(s.BytesBefore), humanBytes(s.BytesAfter), 100*float64(s.BytesAfter)/float64(s.BytesBefore))
	if s.DryRun {
		fmt.Fprintf(tw, "dry run\tnothing written\n")
	}
	for _, o := range s.Outputs {
		fmt.Fprintf(tw, "wrote\t%s\n", o)
	}
	tw.Flush()
}

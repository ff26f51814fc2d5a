package main

import (
	"fmt"
	"strings"

	"github.com/ggufprune/ggufprune/gguf/imatrix"
	"github.com/ggufprune/ggufprune/internal/atomicfile"
	"github.com/ggufprune/ggufprune/internal/units"
	"github.com/ggufprune/ggufprune/llamacpp"
	"github.com/ggufprune/ggufprune/prune"
	"github.com/urfave/cli/v2"
)

func quantizeCommand() *cli.Command {
	var types strings.Builder
	for _, q := range prune.QuantTypes() {
		need := ""
		if q.NeedImatrix {
			need = " (needs --imatrix)"
		}
		fmt.Fprintf(&types, "  %-10s %s%s\n", q.Name, q.Desc, need)
	}
	return commandUsageErrors(&cli.Command{
		Name:      "quantize",
		Usage:     "quantize a model with llama.cpp's quantizer (as llama-quantize)",
		ArgsUsage: "IN.gguf OUT.gguf TYPE",
		Description: "Writes OUT.gguf with the weights of IN.gguf quantized to TYPE by llama.cpp's llama_model_quantize.\n" +
			"Tensors whose rows are not whole blocks of the type get llama.cpp's fallback type; types without a\n" +
			"fallback are refused naming the tensor. An importance matrix (--imatrix, GGUF or legacy .dat, from\n" +
			"llama-imatrix or from score --imatrix-out, pruned with prune --imatrix-out) guides the rounding.\n\n" +
			"TYPE is one of:\n" + types.String(),
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "imatrix", Usage: "importance matrix `FILE` for the model being quantized"},
			&cli.IntFlag{Name: "threads", Aliases: []string{"t"}, Usage: "threads (`N`; 0: all cores)"},
			&cli.BoolFlag{Name: "verbose", Aliases: []string{"v"}, Usage: "show llama.cpp's log (per-tensor progress) on stderr"},
			overwriteFlag,
		},
		Action: runQuantize,
	})
}

func runQuantize(c *cli.Context) error {
	if c.NArg() != 3 {
		return usagef("quantize: expected IN.gguf OUT.gguf TYPE, got %d arguments", c.NArg())
	}
	in, out, typ := c.Args().Get(0), c.Args().Get(1), c.Args().Get(2)
	q, ok := prune.LookupQuantType(typ)
	if !ok {
		return unknownQuantType(typ)
	}
	if t := c.Int("threads"); t < 0 {
		return usagef("-t %d: must not be negative", t)
	}
	if err := atomicfile.CheckOutput(out, c.Bool("overwrite")); err != nil {
		return withFlags(c, err) // before any work: the imatrix may be slow to read
	}
	verboseLog(c)
	p := llamacpp.QuantizeParams{Type: q, Threads: capThreads(c, c.Int("threads")), Progress: newProgress(c.App.ErrWriter, "quantizing", "tensors", 0).update}
	if path := c.String("imatrix"); path != "" {
		im, err := imatrix.Read(path)
		if err != nil {
			return err
		}
		p.Imatrix, p.ImatrixName = im, path
	}
	r, err := prune.Quantize(in, out, prune.QuantizeOptions{Params: p, Overwrite: c.Bool("overwrite")})
	if err != nil {
		return withFlags(c, err)
	}
	fmt.Fprintf(c.App.Writer, "wrote %s: %s, %s -> %s (%.1f%%)\n", r.Output, r.Type, units.HumanBytes(r.BytesBefore), units.HumanBytes(r.After), 100*float64(r.After)/float64(r.BytesBefore))
	return nil
}

func unknownQuantType(typ string) error {
	return usagef("unknown quantization type %q; one of %s", typ, strings.Join(prune.QuantTypeNames(), ", "))
}

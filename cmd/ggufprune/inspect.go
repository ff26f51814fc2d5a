package main

import (
	"fmt"
	"strings"
	"text/tabwriter"

	"github.com/ggufprune/ggufprune/gguf"
	"github.com/ggufprune/ggufprune/gguf/blocks"
	"github.com/ggufprune/ggufprune/gguf/imatrix"
	"github.com/ggufprune/ggufprune/internal/units"
	"github.com/ggufprune/ggufprune/llamacpp/arch"
	"github.com/urfave/cli/v2"
)

func inspectCommand() *cli.Command {
	return commandUsageErrors(&cli.Command{
		Name:      "inspect",
		Usage:     "summarise a GGUF model (or split set, or imatrix file)",
		ArgsUsage: "MODEL.gguf",
		Description: "Prints the GGUF version, architecture, block count, tensor count, alignment, file size,\n" +
			"parameter count, a histogram of tensor types and a per-block table. Reads only the header.",
		Flags: []cli.Flag{
			&cli.BoolFlag{Name: "json", Usage: "print a JSON object instead of tables"},
		},
		Action: runInspect,
	})
}

type inspectReport struct {
	Path         string `json:"path"`
	GGUFVersion  uint32 `json:"gguf_version"`
	Architecture string `json:"architecture"`
	// Unknown says why llama.cpp (the linked one) cannot run the
	// architecture and its layer rules are not checked; empty when known.
	Unknown string `json:"unknown_architecture,omitempty"`
	// MoE is the mixture-of-experts structure (experts, blocks, bytes),
	// absent for a dense model.
	MoE         *arch.MoE         `json:"moe,omitempty"`
	BlockCount  int               `json:"block_count"`
	TensorCount int               `json:"tensor_count"`
	Alignment   uint64            `json:"alignment"`
	FileSize    int64             `json:"file_size"`
	Files       int               `json:"files"`
	Params      uint64            `json:"params"`
	Types       []gguf.TypeStats  `json:"types"`
	Blocks      []gguf.BlockStats `json:"blocks"`
}

func runInspect(c *cli.Context) error {
	path, err := oneArg(c, "MODEL.gguf")
	if err != nil {
		return err
	}
	// One parse of the header serves a model and an importance matrix in
	// GGUF alike: a header of 10^6 tensors costs its memory once.
	m, err := gguf.OpenModel(path)
	if err != nil {
		// Not a model: a legacy importance matrix (.dat) is not GGUF, and
		// one named like a shard of a split set does not open as a set.
		if isImatrixFile(path) {
			im, err := imatrix.Read(path)
			if err != nil {
				return err
			}
			return inspectImatrix(c, path, im)
		}
		return err
	}
	defer m.Close()
	if len(m.Shards) == 1 && imatrix.Is(m.Shards[0]) {
		im, err := imatrix.FromGGUF(m.Shards[0])
		if err != nil {
			return err
		}
		return inspectImatrix(c, path, im)
	}
	archName, err := m.Architecture()
	if err != nil {
		return err
	}
	n, err := m.BlockCount()
	if err != nil {
		return err
	}
	if err := arch.CheckBlocks(m); err != nil {
		return err
	}
	st := m.Stats()
	r := inspectReport{
		Path: path, GGUFVersion: m.Shards[0].Version, Architecture: archName, Unknown: arch.Unknown(archName), MoE: arch.MoEOf(m), BlockCount: n,
		TensorCount: m.NumTensors(), Alignment: m.Shards[0].Alignment, FileSize: m.Size(),
		Files: len(m.Shards), Params: st.Params, Types: st.Types, Blocks: st.Blocks,
	}
	if c.Bool("json") {
		return printJSON(c.App.Writer, r)
	}
	w := tabwriter.NewWriter(c.App.Writer, 0, 4, 2, ' ', 0)
	fmt.Fprintf(w, "file\t%s (%d file(s), %s)\n", path, r.Files, units.HumanBytes(r.FileSize))
	fmt.Fprintf(w, "gguf version\t%d\n", r.GGUFVersion)
	fmt.Fprintf(w, "architecture\t%s\n", r.Architecture)
	if r.Unknown != "" {
		fmt.Fprintf(w, "not known\t%s\n", r.Unknown)
	}
	fmt.Fprintf(w, "blocks\t%d\n", r.BlockCount)
	if e := r.MoE; e != nil {
		fmt.Fprintf(w, "experts\t%d, %d used per token", e.Experts, e.Used)
		if e.Shared > 0 {
			fmt.Fprintf(w, ", %d shared", e.Shared)
		}
		if e.Groups > 0 {
			fmt.Fprintf(w, ", in %d groups", e.Groups)
		}
		fmt.Fprintf(w, "\n")
		fmt.Fprintf(w, "MoE blocks\t%s", blocks.FormatList(e.MoEBlocks))
		if len(e.DenseBlocks) > 0 {
			fmt.Fprintf(w, " (dense: %s)", blocks.FormatList(e.DenseBlocks))
		}
		fmt.Fprintf(w, "\n")
		fmt.Fprintf(w, "expert weights\t%s of %s (%.1f%%), %s per expert across the MoE blocks\n", units.HumanBytes(e.ExpertBytes), units.HumanBytes(e.ModelBytes), 100*float64(e.ExpertBytes)/float64(max(e.ModelBytes, 1)), units.HumanBytes(e.BytesPerExpert))
	}
	fmt.Fprintf(w, "tensors\t%d\n", r.TensorCount)
	fmt.Fprintf(w, "alignment\t%d\n", r.Alignment)
	fmt.Fprintf(w, "parameters\t%d (%s)\n", r.Params, humanCount(r.Params))
	fmt.Fprintln(w)
	fmt.Fprintln(w, "type\ttensors\tbytes\tparams")
	for _, t := range r.Types {
		fmt.Fprintf(w, "%s\t%d\t%d\t%d\n", t.Type, t.Tensors, t.Bytes, t.Params)
	}
	fmt.Fprintln(w)
	fmt.Fprintln(w, "block\ttensors\tbytes\tparams")
	for _, b := range r.Blocks {
		fmt.Fprintf(w, "%d\t%d\t%d\t%d\n", b.Index, b.Tensors, b.Bytes, b.Params)
	}
	return w.Flush()
}

func humanCount(n uint64) string {
	switch {
	case n >= 1e9:
		return fmt.Sprintf("%.2fB", float64(n)/1e9)
	case n >= 1e6:
		return fmt.Sprintf("%.2fM", float64(n)/1e6)
	case n >= 1e3:
		return fmt.Sprintf("%.1fK", float64(n)/1e3)
	}
	return fmt.Sprint(n)
}

// isImatrixFile recognises importance matrices: GGUF files whose general.type
// is "imatrix", and .dat files (llama.cpp's legacy format).
func isImatrixFile(path string) bool {
	f, err := gguf.Open(path)
	if err != nil {
		return strings.HasSuffix(path, ".dat")
	}
	defer f.Close()
	return imatrix.Is(f)
}

type imatrixReport struct {
	Path       string   `json:"path"`
	Imatrix    bool     `json:"imatrix"`
	Format     string   `json:"format"`
	Entries    int      `json:"entries"`
	BlockCount int      `json:"block_count"`
	Datasets   []string `json:"datasets"`
	ChunkCount int      `json:"chunk_count"`
	ChunkSize  int      `json:"chunk_size"`
	Experts    int      `json:"experts"`
}

func inspectImatrix(c *cli.Context, path string, im *imatrix.Matrix) error {
	r := imatrixReport{Path: path, Imatrix: true, Format: "gguf", Entries: len(im.Entries), BlockCount: im.Blocks(),
		Datasets: im.Datasets, ChunkCount: im.ChunkCount, ChunkSize: im.ChunkSize, Experts: 1}
	if im.Legacy {
		r.Format = "legacy"
	}
	for _, e := range im.Entries {
		r.Experts = max(r.Experts, e.NMat())
	}
	if c.Bool("json") {
		return printJSON(c.App.Writer, r)
	}
	w := tabwriter.NewWriter(c.App.Writer, 0, 4, 2, ' ', 0)
	fmt.Fprintf(w, "file\t%s\n", path)
	fmt.Fprintf(w, "kind\timportance matrix (%s format)\n", r.Format)
	fmt.Fprintf(w, "entries\t%d weights over %d blocks (up to %d experts per weight)\n", r.Entries, r.BlockCount, r.Experts)
	fmt.Fprintf(w, "datasets\t%s\n", strings.Join(r.Datasets, ", "))
	fmt.Fprintf(w, "chunks\t%d of %d tokens\n", r.ChunkCount, r.ChunkSize)
	return w.Flush()
}

package prune_test

import (
	"context"
	"fmt"
	"log"
	"os"
	"path/filepath"

	"github.com/ggufprune/ggufprune/gguf/surgery"
	"github.com/ggufprune/ggufprune/prune"
	"github.com/ggufprune/ggufprune/prune/runner"
	"github.com/ggufprune/ggufprune/prune/selection"
)

// Score a model's blocks on a text, choose the most redundant one (the first
// and last blocks are protected), and write the model without it.
func Example() {
	ctx := context.Background()
	m, err := prune.Open("../testdata/models/stories260K.gguf")
	if err != nil {
		log.Fatal(err)
	}
	defer m.Close()

	cal, err := runner.CalibrationFile("../testdata/text/tinystories/tinystories_val_first100.txt")
	if err != nil {
		log.Fatal(err)
	}
	rep, _, err := m.Score(ctx, prune.ScoreOptions{Calibration: cal, Run: runner.Options{Ctx: 128, Chunks: 8}})
	if err != nil {
		log.Fatal(err)
	}
	remove, err := m.Select(rep, prune.Selection{Count: 1, Protect: selection.Protect{First: 1, Last: 1}})
	if err != nil {
		log.Fatal(err)
	}
	plan, err := m.Plan(remove, surgery.Options{})
	if err != nil {
		log.Fatal(err)
	}
	dir, err := os.MkdirTemp("", "example")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)
	res, err := m.Write(ctx, plan, prune.WriteOptions{Output: filepath.Join(dir, "pruned.gguf")})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("scored %d tokens; removed blocks %v: %d -> %d blocks\n", rep.Tokens, res.Removed, res.BlockCountBefore, res.BlockCountAfter)
	// Output: scored 1024 tokens; removed blocks [3]: 5 -> 4 blocks
}

// Run does what the prune command does: here, remove given blocks and
// compare perplexity before and after.
func ExampleRun() {
	ctx := context.Background()
	m, err := prune.Open("../testdata/models/stories260K.gguf")
	if err != nil {
		log.Fatal(err)
	}
	defer m.Close()
	text, err := runner.TextFile("../testdata/text/unseen/tinystories_last50.txt")
	if err != nil {
		log.Fatal(err)
	}
	dir, err := os.MkdirTemp("", "example")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)
	res, err := prune.Run(ctx, m, prune.Options{
		Layers:   []int{2},
		Write:    prune.WriteOptions{Output: filepath.Join(dir, "pruned.gguf")},
		Run:      runner.Options{Ctx: 128, Chunks: 4},
		EvalText: text,
	})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("method %s, removed %v, %d tokens scored\n", res.Method, res.Removed, res.Eval[0].Tokens)
	fmt.Println("perplexity rose:", res.Eval[1].PPL > res.Eval[0].PPL)
	// Output:
	// method layers, removed [2], 252 tokens scored
	// perplexity rose: true
}

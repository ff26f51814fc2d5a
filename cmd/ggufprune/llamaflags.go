package main

import (
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/ggufprune/ggufprune/gguf/imatrix"
	"github.com/ggufprune/ggufprune/internal/atomicfile"
	"github.com/ggufprune/ggufprune/llamacpp"
	"github.com/ggufprune/ggufprune/llamacpp/arch"
	"github.com/ggufprune/ggufprune/prune"
	"github.com/ggufprune/ggufprune/prune/runner"
	"github.com/ggufprune/ggufprune/prune/selection"
	"github.com/urfave/cli/v2"
)

// Flags shared by the commands that run a model.
func runFlags(defaultCtx int) []cli.Flag {
	return []cli.Flag{
		&cli.IntFlag{Name: "ctx-size", Aliases: []string{"c"}, Value: defaultCtx, Usage: "tokens per chunk (`N`); at most the model's training context"},
		&cli.IntFlag{Name: "chunks", Usage: "use at most `N` chunks of the text (0: all)"},
		&cli.IntFlag{Name: "threads", Aliases: []string{"t"}, Usage: "CPU threads (`N`; 0: all cores)"},
		&cli.IntFlag{Name: "gpu-layers", Aliases: []string{"ngl"}, Usage: "layers to offload to a GPU (`N`), passed to llama.cpp; needs a GPU build"},
		&cli.BoolFlag{Name: "no-mmap", Usage: "read the model into memory instead of mapping it"},
		&cli.BoolFlag{Name: "verbose", Aliases: []string{"v"}, Usage: "show llama.cpp's log on stderr"},
	}
}

// runOptionsFrom reads the run flags into the library's options, with
// progress bars and notes on stderr.
func runOptionsFrom(c *cli.Context) (runner.Options, error) {
	o := runner.Options{Ctx: c.Int("ctx-size"), Chunks: c.Int("chunks"), Threads: c.Int("threads"), GPULayers: c.Int("gpu-layers"), NoMmap: c.Bool("no-mmap")}
	if o.Ctx == 0 {
		return o, usagef("-c 0: the context size must be at least 2")
	}
	if o.Threads > 0 {
		o.Threads = capThreads(c, o.Threads)
	}
	// The one check of these values is the library's.
	if err := o.Check(); err != nil {
		return o, usagef("%v", err)
	}
	stderr := c.App.ErrWriter
	var bar *progress
	o.Progress = func(stage, unit string, tokensPerStep, done, total int) {
		if bar == nil || bar.what != stage {
			bar = newProgress(stderr, stage, unit, tokensPerStep)
		}
		bar.update(done, total)
	}
	o.Notify = func(msg string) { fmt.Fprintln(stderr, msg) }
	return o, nil
}

// capThreads caps a thread count at runner.MaxThreads, and says so.
func capThreads(c *cli.Context, n int) int {
	if limit := runner.MaxThreads(); n > limit {
		fmt.Fprintf(c.App.ErrWriter, "ggufprune: -t %d: using %d threads (4 per core); more only slow ggml down\n", n, limit)
		return limit
	}
	return n
}

// verboseLog shows llama.cpp's log on stderr when -v was given.
func verboseLog(c *cli.Context) {
	if c.Bool("verbose") {
		prune.LogTo(c.App.ErrWriter)
	}
}

// withFlags adds to a library error the flags that would change the
// outcome, where the command line knows them.
func withFlags(c *cli.Context, err error) error {
	var ce *runner.ContextError
	var se *selection.SizeError
	var pe *arch.PatternError
	switch {
	case err == nil:
		return nil
	case errors.As(err, &ce):
		return usagef("-c %d is larger than the training context of %s (%d)", ce.Ctx, ce.Path, ce.Train)
	case errors.As(err, &se):
		return fmt.Errorf("--target-size %s: %w", c.String("target-size"), err)
	case errors.As(err, &pe):
		return fmt.Errorf("%w, or pass --force to remove them anyway", err)
	case errors.Is(err, arch.ErrIndexPattern):
		return fmt.Errorf("%w (use --layers, or --force to choose by score anyway)", err)
	case errors.Is(err, imatrix.ErrMismatch):
		return fmt.Errorf("%w (prune --imatrix-out writes the imatrix of a pruned model)", err)
	case errors.Is(err, atomicfile.ErrOutputExists):
		return fmt.Errorf("%w (--overwrite replaces it)", err)
	case errors.Is(err, runner.ErrTextTooLarge):
		return fmt.Errorf("%w (--chunks N reads only what N chunks need)", err)
	case errors.Is(err, llamacpp.ErrShortText):
		return fmt.Errorf("%w (give more text or a smaller -c)", err)
	}
	return err
}

// progress draws "what [###...] done/total unit  rate  left" on a terminal,
// and nothing elsewhere.
type progress struct {
	w             io.Writer
	what, unit    string
	tokensPerStep int // > 0: show tokens/s
	start         time.Time
	enabled       bool
}

func newProgress(w io.Writer, what, unit string, tokensPerStep int) *progress {
	return &progress{w: w, what: what, unit: unit, tokensPerStep: tokensPerStep, start: time.Now(), enabled: isTerminal(w)}
}

func (p *progress) update(done, total int) {
	if !p.enabled || total <= 0 || done <= 0 {
		return
	}
	el := time.Since(p.start).Seconds()
	left := time.Duration(float64(total-done) * el / float64(done) * float64(time.Second)).Round(time.Second)
	const width = 24
	bar := []byte(strings.Repeat(".", width))
	for i := 0; i < width*done/total; i++ {
		bar[i] = '#'
	}
	rate := ""
	if p.tokensPerStep > 0 {
		rate = fmt.Sprintf("  %.0f tok/s", float64(done*p.tokensPerStep)/max(el, 1e-9))
	}
	fmt.Fprintf(p.w, "\r%s [%s] %d/%d %s%s  %v left ", p.what, bar, done, total, p.unit, rate, left)
	if done == total {
		fmt.Fprintln(p.w)
	}
}

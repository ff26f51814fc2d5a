package main

import (
	"fmt"
	"io"
	"os"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/ggufprune/ggufprune/llamacpp"
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

type runOptions struct {
	nCtx, chunks, threads, gpuLayers int
	noMmap                           bool
}

func runOptionsFrom(c *cli.Context) (runOptions, error) {
	o := runOptions{nCtx: c.Int("ctx-size"), chunks: c.Int("chunks"), threads: c.Int("threads"), gpuLayers: c.Int("gpu-layers"), noMmap: c.Bool("no-mmap")}
	switch {
	case o.nCtx < 2:
		return o, usagef("-c %d: the context size must be at least 2", o.nCtx)
	case o.chunks < 0:
		return o, usagef("--chunks %d: must not be negative", o.chunks)
	case o.threads < 0:
		return o, usagef("-t %d: must not be negative", o.threads)
	case o.gpuLayers < 0:
		return o, usagef("-ngl %d: must not be negative", o.gpuLayers)
	}
	if c.Bool("verbose") {
		llamacpp.SetLog(c.App.ErrWriter)
	}
	return o, nil
}

// loadModel loads a model and checks that a context of o.nCtx fits it.
func loadModel(path string, o runOptions) (*llamacpp.Model, error) {
	m, err := llamacpp.LoadModel(path, llamacpp.ModelParams{GPULayers: o.gpuLayers, NoMmap: o.noMmap})
	if err != nil {
		return nil, err
	}
	if n := m.Info().NCtxTrain; n > 0 && o.nCtx > n {
		m.Close()
		return nil, usagef("-c %d is larger than the training context of %s (%d)", o.nCtx, path, n)
	}
	return m, nil
}

// readText reads a text file and refuses what cannot be text for a model.
func readText(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", err
	}
	if len(b) == 0 {
		return "", fmt.Errorf("%s: the text file is empty", path)
	}
	if !utf8.Valid(b) {
		off := 0
		for off < len(b) {
			r, n := utf8.DecodeRune(b[off:])
			if r == utf8.RuneError && n <= 1 {
				break
			}
			off += n
		}
		return "", fmt.Errorf("%s: not UTF-8 text (invalid byte 0x%02x at offset %d)", path, b[off], off)
	}
	return string(b), nil
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
